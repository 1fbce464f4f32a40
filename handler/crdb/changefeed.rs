//! Pure: the `CREATE CHANGEFEED` statement this tool consumes, the Azure sink URI with its
//! credentials, and `SHOW CHANGEFEED JOB` rows.
//!
//! Statement (CockroachDB docs, create-changefeed.md and changefeed-sinks.md):
//!
//! ```sql
//! CREATE CHANGEFEED FOR TABLE "db"."public"."orders", …
//!   INTO 'azure://<container>/<path>?AZURE_ACCOUNT_NAME=<account>&AZURE_ACCOUNT_KEY=<url-encoded key>'
//!   WITH format = 'json', updated, resolved = '10s', diff, split_column_families,
//!        compression = 'gzip', initial_scan = 'yes'
//! ```
//!
//! - `updated` and `resolved` are what `sync` needs (row versions, and the RESOLVED files that
//!   close each step);
//! - `diff` when asked (`--diff`): each change's previous row (`before` in JSON,
//!   `__crdb__before` in Parquet), which scd2 ends a version from;
//! - `split_column_families` only when a watched table has several families (a changefeed on
//!   such a table fails without it; on single-family tables it is not needed);
//! - `compression = 'gzip'` for JSON only (files `.ndjson.gz`); Parquet files carry their codec;
//! - `initial_scan = 'yes' | 'no'` (`'only'` emits no RESOLVED, so `sync` could apply nothing).
//!
//! Sink authentication, as cloud-storage-authentication.md lists it for Azure: the account key
//! (`AZURE_ACCOUNT_NAME` + `AZURE_ACCOUNT_KEY`, URL-encoded), an app registration
//! (`AUTH=specified` + `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`, `AZURE_TENANT_ID`), or the
//! nodes' own identity (`AUTH=implicit`, self-hosted clusters). The docs describe no SAS-token
//! parameter for Azure, so none is offered. Secrets come from this process's environment and are
//! shown only as `<redacted>`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use crdb_delta_core::Hlc;

use super::{CrdbError, QUERY_VALUE, Secrets, TableName, quote_literal};

/// Changefeed message format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedFormat {
    Json,
    Parquet,
}

impl FeedFormat {
    pub fn parse(s: &str) -> Result<Self, CrdbError> {
        match s {
            "json" | "ndjson" => Ok(Self::Json),
            "parquet" => Ok(Self::Parquet),
            o => Err(CrdbError::Invalid(format!(
                "--format {o}: expected json or parquet"
            ))),
        }
    }
}

/// Where the changefeed writes: an Azure container and a path in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    pub container: String,
    pub path: String,
    /// From the location itself (`abfss://c@<account>.dfs…`, `https://<account>.blob…`).
    pub account: Option<String>,
}

/// Reads a sink location in the forms `sync --source` takes.
pub fn parse_sink(location: &str) -> Result<Sink, CrdbError> {
    let bad =
        |m: &str| CrdbError::Invalid(format!("--sink {}: {m}", crate::storage::redact(location)));
    if location.contains('?') {
        return Err(bad(
            "no query string: credentials come from the environment (AZURE_ACCOUNT_KEY, …)",
        ));
    }
    let url = url::Url::parse(location).map_err(|_| {
        bad("expected azure://<container>/<path>, abfss://<container>@<account>.dfs.core.windows.net/<path> or https://<account>.blob.core.windows.net/<container>/<path>")
    })?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let segments: Vec<String> = url
        .path_segments()
        .map(|s| s.filter(|p| !p.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let account_of = |h: &str| h.split('.').next().map(str::to_owned);
    let (container, path, account) = match url.scheme() {
        "azure" | "az" | "azure-blob" => (host, segments.join("/"), None),
        "abfs" | "abfss" => {
            if url.password().is_some() {
                return Err(bad("no password in the location"));
            }
            (
                url.username().to_owned(),
                segments.join("/"),
                account_of(&host),
            )
        }
        "https" => {
            let mut s = segments.into_iter();
            let c = s.next().unwrap_or_default();
            (c, s.collect::<Vec<_>>().join("/"), account_of(&host))
        }
        _ => {
            return Err(bad(
                "a changefeed writes to Azure storage here (azure://, abfss://, https://)",
            ));
        }
    };
    let ok_container = !container.is_empty()
        && container
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok_container {
        return Err(bad(
            "no valid container name (lowercase letters, digits, `-`)",
        ));
    }
    if path
        .chars()
        .any(|c| c == '\'' || c.is_whitespace() || c == '#')
    {
        return Err(bad("the path may not hold quotes, spaces or `#`"));
    }
    Ok(Sink {
        container,
        path,
        account,
    })
}

/// How CockroachDB authenticates to the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkAuth {
    Key {
        account: String,
        key: String,
    },
    Client {
        account: String,
        client_id: String,
        client_secret: String,
        tenant_id: String,
    },
    Implicit {
        account: String,
    },
}

impl SinkAuth {
    /// From the environment (through `var`). `mode`: `key`, `client`, `implicit`, or `None` to
    /// pick the first whose variables are set (key, then client).
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        mode: Option<&str>,
        account: Option<String>,
    ) -> Result<Self, CrdbError> {
        let get = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| var(n).filter(|v| !v.trim().is_empty()))
                .map(|v| v.trim().to_owned())
        };
        let account = account
            .or_else(|| get(&["AZURE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_NAME"]))
            .ok_or_else(|| {
                CrdbError::Invalid(
                    "no storage account: set AZURE_ACCOUNT_NAME (or give the sink as abfss://<container>@<account>.dfs.core.windows.net/…)".into(),
                )
            })?;
        let key = get(&["AZURE_ACCOUNT_KEY", "AZURE_STORAGE_ACCOUNT_KEY"]);
        let client = (
            get(&["AZURE_CLIENT_ID"]),
            get(&["AZURE_CLIENT_SECRET"]),
            get(&["AZURE_TENANT_ID"]),
        );
        let missing = |what: &str| {
            CrdbError::Invalid(format!(
                "--sink-auth {}: {what} is not set in the environment",
                mode.unwrap_or("auto")
            ))
        };
        match mode {
            Some("key") | None if key.is_some() => Ok(Self::Key {
                account,
                key: key.unwrap_or_default(),
            }),
            Some("key") => Err(missing("AZURE_ACCOUNT_KEY")),
            Some("client") | None => match client {
                (Some(client_id), Some(client_secret), Some(tenant_id)) => Ok(Self::Client {
                    account,
                    client_id,
                    client_secret,
                    tenant_id,
                }),
                _ if mode.is_none() => Err(CrdbError::Invalid(
                    "no sink credentials: set AZURE_ACCOUNT_KEY, or AZURE_CLIENT_ID + AZURE_CLIENT_SECRET + AZURE_TENANT_ID, or pass --sink-auth implicit (the CockroachDB nodes' own identity)".into(),
                )),
                _ => Err(missing("AZURE_CLIENT_ID, AZURE_CLIENT_SECRET or AZURE_TENANT_ID")),
            },
            Some("implicit") => Ok(Self::Implicit { account }),
            Some(other) => Err(CrdbError::Invalid(format!(
                "--sink-auth {other}: expected key, client or implicit"
            ))),
        }
    }

    fn secrets(&self) -> Vec<&str> {
        match self {
            Self::Key { key, .. } => vec![key],
            Self::Client { client_secret, .. } => vec![client_secret],
            Self::Implicit { .. } => vec![],
        }
    }
}

/// A table the changefeed watches, with its number of column families.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedTable {
    pub name: TableName,
    pub families: usize,
}

/// `initial_scan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialScan {
    Yes,
    No,
}

/// Everything the statement is made of.
#[derive(Debug, Clone)]
pub struct ChangefeedSpec {
    pub tables: Vec<FeedTable>,
    pub sink: Sink,
    pub auth: SinkAuth,
    pub format: FeedFormat,
    /// `resolved` interval, e.g. `10s`.
    pub resolved: String,
    /// JSON only: `gzip` (default), `zstd` or none.
    pub compression: Option<String>,
    pub initial_scan: InitialScan,
    /// `diff`: each change carries the row as it was (`before`), so scd2 ends a version
    /// without reading it from the table (README "scd2 at scale").
    pub diff: bool,
}

impl ChangefeedSpec {
    pub fn validate(&self) -> Result<(), CrdbError> {
        let bad = |m: String| Err(CrdbError::Invalid(m));
        if self.tables.is_empty() {
            return bad("no table to watch".into());
        }
        if !valid_interval(&self.resolved) {
            return bad(format!(
                "--resolved {}: expected an interval such as 10s, 500ms or 1m",
                self.resolved
            ));
        }
        match (&self.compression, self.format) {
            (Some(c), FeedFormat::Json) if !matches!(c.as_str(), "gzip" | "zstd") => {
                bad(format!("--compression {c}: expected gzip, zstd or none"))
            }
            (Some(_), FeedFormat::Parquet) => bad(
                "--compression applies to JSON files; Parquet files carry their own codec".into(),
            ),
            _ => Ok(()),
        }
    }

    /// The sink URI; with `redact`, secrets as `<redacted>`.
    pub fn sink_uri(&self, redact: bool) -> String {
        let enc = |v: &str| percent_encoding::utf8_percent_encode(v, QUERY_VALUE).to_string();
        let secret = |v: &str| {
            if redact {
                "<redacted>".to_owned()
            } else {
                enc(v)
            }
        };
        let mut uri = format!("azure://{}", self.sink.container);
        if !self.sink.path.is_empty() {
            uri.push('/');
            uri.push_str(&self.sink.path);
        }
        let query = match &self.auth {
            SinkAuth::Key { account, key } => format!(
                "AZURE_ACCOUNT_NAME={}&AZURE_ACCOUNT_KEY={}",
                enc(account),
                secret(key)
            ),
            SinkAuth::Client {
                account,
                client_id,
                client_secret,
                tenant_id,
            } => format!(
                "AUTH=specified&AZURE_ACCOUNT_NAME={}&AZURE_CLIENT_ID={}&AZURE_CLIENT_SECRET={}&AZURE_TENANT_ID={}",
                enc(account),
                enc(client_id),
                secret(client_secret),
                enc(tenant_id)
            ),
            SinkAuth::Implicit { account } => {
                format!("AUTH=implicit&AZURE_ACCOUNT_NAME={}", enc(account))
            }
        };
        format!("{uri}?{query}")
    }

    fn options(&self) -> Vec<String> {
        let mut o = vec![
            format!(
                "format = {}",
                quote_literal(match self.format {
                    FeedFormat::Json => "json",
                    FeedFormat::Parquet => "parquet",
                })
            ),
            "updated".to_owned(),
            format!("resolved = {}", quote_literal(&self.resolved)),
        ];
        if self.diff {
            o.push("diff".to_owned());
        }
        if self.tables.iter().any(|t| t.families > 1) {
            o.push("split_column_families".to_owned());
        }
        if let (FeedFormat::Json, Some(c)) = (self.format, &self.compression) {
            o.push(format!("compression = {}", quote_literal(c)));
        }
        o.push(format!(
            "initial_scan = {}",
            quote_literal(match self.initial_scan {
                InitialScan::Yes => "yes",
                InitialScan::No => "no",
            })
        ));
        o
    }

    fn render(&self, redact: bool) -> String {
        let tables: Vec<String> = self.tables.iter().map(|t| t.name.quoted()).collect();
        format!(
            "CREATE CHANGEFEED FOR TABLE {} INTO {} WITH {}",
            tables.join(", "),
            quote_literal(&self.sink_uri(redact)),
            self.options().join(", ")
        )
    }

    /// The statement to run (with credentials: never print or log it).
    pub fn statement(&self) -> String {
        self.render(false)
    }

    /// The statement as it may be shown.
    pub fn display_statement(&self) -> String {
        self.render(true)
    }

    pub fn secrets(&self) -> Secrets {
        let mut s = Secrets::default();
        for v in self.auth.secrets() {
            s.add(v);
        }
        s
    }
}

/// `10s`, `500ms`, `1m`, `1h`, `1.5s`.
fn valid_interval(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.parse::<f64>().is_ok_and(|v| v > 0.0)
        && matches!(unit, "ns" | "us" | "ms" | "s" | "m" | "h")
}

/// What this tool records in the target after `changefeed create`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct JobRecord {
    pub job_id: String,
    pub created_at: String,
    /// The statement with its secrets redacted.
    pub statement: String,
    pub tables: Vec<String>,
}

/// Where `changefeed create --target` records the job, below the target root.
pub const JOB_OBJECT: &str = "_crdb_delta/changefeed.json";

/// A `SHOW CHANGEFEED JOB` row, by column name (show-jobs.md "Show changefeed jobs").
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobStatus {
    pub job_id: String,
    pub status: String,
    pub running_status: Option<String>,
    pub high_water: Option<Hlc>,
    pub error: Option<String>,
    pub sink_uri: Option<String>,
    pub full_table_names: Vec<String>,
    pub format: Option<String>,
}

impl JobStatus {
    pub fn from_row(row: &[(String, Option<String>)]) -> Result<Self, CrdbError> {
        let cols: BTreeMap<&str, Option<&str>> = row
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        let get = |k: &str| {
            cols.get(k)
                .copied()
                .flatten()
                .map(str::trim)
                .filter(|v| !v.is_empty() && *v != "NULL")
                .map(str::to_owned)
        };
        let need = |k: &str| {
            get(k).ok_or_else(|| {
                CrdbError::Invalid(format!("SHOW CHANGEFEED JOB: no `{k}` in the row"))
            })
        };
        let high_water = match get("high_water_timestamp") {
            Some(h) => Some(Hlc::parse_decimal(&h).map_err(|e| {
                CrdbError::Invalid(format!("SHOW CHANGEFEED JOB: high_water_timestamp: {e}"))
            })?),
            None => None,
        };
        Ok(Self {
            job_id: need("job_id")?,
            status: need("status")?,
            running_status: get("running_status"),
            high_water,
            error: get("error"),
            // CockroachDB shows it with credentials redacted already; ours again, to be sure.
            sink_uri: get("sink_uri").map(|u| crate::storage::redact(&u)),
            full_table_names: get("full_table_names")
                .map(|a| parse_text_array(&a))
                .unwrap_or_default(),
            format: get("format"),
        })
    }

    /// One line: the job's state and high-water mark beside the target's applied RESOLVED.
    /// `applied`: per Delta table, its applied RESOLVED.
    pub fn lag_line(&self, applied: &[(String, Option<Hlc>)], now: DateTime<Utc>) -> String {
        let at = |h: Hlc| {
            h.to_datetime()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let mut s = format!("changefeed job {} {}", self.job_id, self.status);
        match self.high_water {
            Some(h) => s.push_str(&format!(
                ", high-water {} ({:.1} s ago)",
                at(h),
                secs(now - h.to_datetime())
            )),
            None => s.push_str(", no high-water mark yet"),
        }
        let known: Vec<Hlc> = applied.iter().filter_map(|(_, h)| *h).collect();
        if applied.is_empty() {
            s.push_str("; Delta: no tables yet");
        } else if known.len() < applied.len() {
            s.push_str(&format!(
                "; Delta: {} of {} tables have applied nothing yet",
                applied.len() - known.len(),
                applied.len()
            ));
        } else {
            let oldest = known.iter().copied().min().unwrap_or_default();
            s.push_str(&format!(
                "; Delta applied RESOLVED {} (oldest of {} table{})",
                at(oldest),
                known.len(),
                if known.len() == 1 { "" } else { "s" }
            ));
            if let Some(h) = self.high_water {
                s.push_str(&format!(
                    "; lag {:.1} s",
                    secs(h.to_datetime() - oldest.to_datetime()).max(0.0)
                ));
            }
        }
        if let Some(e) = &self.error {
            s.push_str(&format!("; error: {e}"));
        }
        s
    }
}

fn secs(d: chrono::TimeDelta) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// A PostgreSQL array in text form (`{a,b,"c d"}`) → its elements.
pub fn parse_text_array(s: &str) -> Vec<String> {
    let inner = s
        .trim()
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(s);
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in inner.chars() {
        match (escaped, quoted, c) {
            (true, _, c) => {
                cur.push(c);
                escaped = false;
            }
            (false, true, '\\') => escaped = true,
            (false, _, '"') => quoted = !quoted,
            (false, false, ',') => out.push(std::mem::take(&mut cur)),
            (false, _, c) => cur.push(c),
        }
    }
    if !cur.is_empty() || !out.is_empty() {
        out.push(cur);
    }
    out
}

/// The job id to act on: the one given, or the one recorded in the target.
pub fn job_id(given: Option<&str>) -> Result<Option<u64>, CrdbError> {
    given
        .map(|j| {
            j.trim()
                .parse::<u64>()
                .map_err(|_| CrdbError::Invalid(format!("job id `{j}`: expected a number")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(families: &[usize], format: FeedFormat, compression: Option<&str>) -> ChangefeedSpec {
        ChangefeedSpec {
            tables: families
                .iter()
                .enumerate()
                .map(|(i, f)| FeedTable {
                    name: TableName::parse(&format!("shop.public.t{i}")).unwrap(),
                    families: *f,
                })
                .collect(),
            sink: parse_sink("azure://feeds/crdb/shop").unwrap(),
            auth: SinkAuth::Key {
                account: "acct".into(),
                key: "c2VjcmV0+a2V5/w==".into(),
            },
            format,
            resolved: "10s".into(),
            compression: compression.map(str::to_owned),
            initial_scan: InitialScan::Yes,
            diff: false,
        }
    }

    #[test]
    fn statements_are_exact() {
        let s = spec(&[1], FeedFormat::Json, Some("gzip"));
        s.validate().unwrap();
        assert_eq!(
            s.statement(),
            "CREATE CHANGEFEED FOR TABLE \"shop\".\"public\".\"t0\" INTO \
             'azure://feeds/crdb/shop?AZURE_ACCOUNT_NAME=acct&AZURE_ACCOUNT_KEY=c2VjcmV0%2Ba2V5%2Fw%3D%3D' \
             WITH format = 'json', updated, resolved = '10s', compression = 'gzip', initial_scan = 'yes'"
        );
        assert_eq!(
            s.display_statement(),
            "CREATE CHANGEFEED FOR TABLE \"shop\".\"public\".\"t0\" INTO \
             'azure://feeds/crdb/shop?AZURE_ACCOUNT_NAME=acct&AZURE_ACCOUNT_KEY=<redacted>' \
             WITH format = 'json', updated, resolved = '10s', compression = 'gzip', initial_scan = 'yes'"
        );
        // `diff` asked for: right after `resolved`.
        let mut d = spec(&[1], FeedFormat::Parquet, None);
        d.diff = true;
        assert!(
            d.display_statement().ends_with(
                "WITH format = 'parquet', updated, resolved = '10s', diff, initial_scan = 'yes'"
            ),
            "{}",
            d.display_statement()
        );
        // Several families somewhere: split_column_families; Parquet: no compression option.
        let mut p = spec(&[1, 3], FeedFormat::Parquet, None);
        p.initial_scan = InitialScan::No;
        p.resolved = "500ms".into();
        p.validate().unwrap();
        assert_eq!(
            p.display_statement(),
            "CREATE CHANGEFEED FOR TABLE \"shop\".\"public\".\"t0\", \"shop\".\"public\".\"t1\" INTO \
             'azure://feeds/crdb/shop?AZURE_ACCOUNT_NAME=acct&AZURE_ACCOUNT_KEY=<redacted>' \
             WITH format = 'parquet', updated, resolved = '500ms', split_column_families, initial_scan = 'no'"
        );
        // App registration and implicit identity.
        let mut c = spec(&[2], FeedFormat::Json, None);
        c.sink = parse_sink("abfss://feeds@acct2.dfs.core.windows.net/x").unwrap();
        c.auth = SinkAuth::from_vars(
            |k| {
                match k {
                    "AZURE_CLIENT_ID" => Some("cid"),
                    "AZURE_CLIENT_SECRET" => Some("csecret'x"),
                    "AZURE_TENANT_ID" => Some("tid"),
                    _ => None,
                }
                .map(str::to_owned)
            },
            None,
            c.sink.account.clone(),
        )
        .unwrap();
        assert_eq!(
            c.display_statement(),
            "CREATE CHANGEFEED FOR TABLE \"shop\".\"public\".\"t0\" INTO \
             'azure://feeds/x?AUTH=specified&AZURE_ACCOUNT_NAME=acct2&AZURE_CLIENT_ID=cid&AZURE_CLIENT_SECRET=<redacted>&AZURE_TENANT_ID=tid' \
             WITH format = 'json', updated, resolved = '10s', split_column_families, initial_scan = 'yes'"
        );
        assert!(c.statement().contains("AZURE_CLIENT_SECRET=csecret%27x&"));
        c.auth = SinkAuth::Implicit {
            account: "acct2".into(),
        };
        assert!(
            c.display_statement()
                .contains("'azure://feeds/x?AUTH=implicit&AZURE_ACCOUNT_NAME=acct2'")
        );
    }

    #[test]
    fn secrets_never_reach_the_displayed_statement() {
        let s = spec(&[1], FeedFormat::Json, Some("gzip"));
        let secret = "c2VjcmV0+a2V5/w==";
        assert!(!s.display_statement().contains("c2VjcmV0"));
        assert!(s.statement().contains("c2VjcmV0"));
        let scrubbed = s.secrets().scrub(&s.statement());
        assert!(!scrubbed.contains("c2VjcmV0"), "{scrubbed}");
        assert!(!s.secrets().scrub(secret).contains("c2VjcmV0"));
    }

    #[test]
    fn bad_options_are_refused() {
        for (f, c, r) in [
            (FeedFormat::Json, Some("lz4"), "10s"),
            (FeedFormat::Parquet, Some("gzip"), "10s"),
            (FeedFormat::Json, None, "10"),
            (FeedFormat::Json, None, "1'0s"),
            (FeedFormat::Json, None, "0s"),
        ] {
            let mut s = spec(&[1], f, c);
            s.resolved = r.into();
            assert!(s.validate().is_err(), "{f:?} {c:?} {r}");
        }
        for bad in [
            "/tmp/feed",
            "azure://Bad_Container/x",
            "azure://c/x?sig=1",
            "s3://b/x",
            "azure://c/it's",
        ] {
            assert!(parse_sink(bad).is_err(), "{bad}");
        }
        let s = parse_sink("https://acct.blob.core.windows.net/feeds/a/b").unwrap();
        assert_eq!(
            (s.container.as_str(), s.path.as_str(), s.account.as_deref()),
            ("feeds", "a/b", Some("acct"))
        );
        let none = |_: &str| None;
        let e = SinkAuth::from_vars(none, None, Some("a".into())).unwrap_err();
        assert!(e.to_string().contains("AZURE_ACCOUNT_KEY"), "{e}");
        assert!(SinkAuth::from_vars(none, None, None).is_err());
        assert!(SinkAuth::from_vars(none, Some("key"), Some("a".into())).is_err());
        assert!(SinkAuth::from_vars(none, Some("sas"), Some("a".into())).is_err());
    }

    #[test]
    fn text_arrays_parse() {
        assert_eq!(
            parse_text_array("{online_retail.public.customers}"),
            ["online_retail.public.customers"]
        );
        assert_eq!(
            parse_text_array("{a,\"b,c\",\"d\\\"e\"}"),
            ["a", "b,c", "d\"e"]
        );
        assert!(parse_text_array("{}").is_empty());
    }

    #[test]
    fn lag_line_compares_high_water_with_applied() {
        let job = JobStatus {
            job_id: "7".into(),
            status: "running".into(),
            running_status: None,
            high_water: Some(Hlc::parse_decimal("1741616141951323000.0000000000").unwrap()),
            error: None,
            sink_uri: None,
            full_table_names: vec![],
            format: None,
        };
        let now = job.high_water.unwrap().to_datetime() + chrono::TimeDelta::seconds(2);
        let a = Hlc::parse_decimal("1741616131951323000.0000000000").unwrap();
        let b = Hlc::parse_decimal("1741616136951323000.0000000000").unwrap();
        let line = job.lag_line(&[("x".into(), Some(a)), ("y".into(), Some(b))], now);
        assert_eq!(
            line,
            "changefeed job 7 running, high-water 2025-03-10T14:15:41.951Z (2.0 s ago); \
             Delta applied RESOLVED 2025-03-10T14:15:31.951Z (oldest of 2 tables); lag 10.0 s"
        );
        assert!(
            job.lag_line(&[("x".into(), None)], now)
                .contains("1 of 1 tables have applied nothing yet")
        );
        assert!(job.lag_line(&[], now).contains("no tables yet"));
    }
}
