//! `crdb-delta unity-catalog`: registers the Delta target in Unity Catalog after deployment,
//! because ARM cannot create Unity Catalog objects. Idempotent: an object that already exists
//! (HTTP 409, `*ALREADY_EXISTS`) is reported and kept, so the command can be rerun when tables
//! are added.
//!
//! Requests, as Databricks documents them:
//! - storage credential: `POST /api/2.1/unity-catalog/storage-credentials`
//!   `{name, azure_managed_identity: {access_connector_id}, comment}`
//!   (<https://docs.databricks.com/api/azure/workspace/storagecredentials/create>);
//! - external location: `POST /api/2.1/unity-catalog/external-locations`
//!   `{name, url, credential_name, comment}`
//!   (<https://docs.databricks.com/api/azure/workspace/externallocations/create>);
//! - one external table per Delta table through the SQL Statement Execution API,
//!   `POST /api/2.0/sql/statements` `{warehouse_id, statement, wait_timeout, on_wait_timeout}`
//!   (<https://docs.databricks.com/api/azure/workspace/statementexecution/executestatement>) with
//!   `CREATE TABLE IF NOT EXISTS … USING DELTA LOCATION …`
//!   (<https://learn.microsoft.com/azure/databricks/sql/language-manual/sql-ref-syntax-ddl-create-table-using>):
//!   the schema comes from the Delta log, which `POST /api/2.1/unity-catalog/tables` would need
//!   spelled out column by column.
//!
//! The token (`DATABRICKS_TOKEN`) is sent as `Authorization: Bearer` and never logged or printed.

use serde::Serialize;
use serde_json::{Value, json};

use crate::storage::Location;

#[derive(Debug, thiserror::Error)]
pub enum UcError {
    #[error("{0}")]
    Invalid(String),
    #[error("{method} {path}: {source}")]
    Http {
        method: &'static str,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {path}: HTTP {status}: {message}")]
    Api {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },
    #[error("creating table {table}: statement {state}: {message}")]
    Statement {
        table: String,
        state: String,
        message: String,
    },
    #[error("listing tables below {target}: {message}")]
    Listing { target: String, message: String },
}

/// What to register.
#[derive(Debug, Clone)]
pub struct UcOptions {
    /// `https://adb-….azuredatabricks.net` (any base URL; tests use a local server).
    pub workspace_url: String,
    pub catalog: String,
    pub schema: String,
    /// The Delta target root, `abfss://<container>@<account>.dfs.core.windows.net/<root>`.
    pub target: String,
    /// Resource id of the Databricks access connector.
    pub access_connector_id: String,
    /// `(table name, path below the target)`; `name=path` on the command line maps a table
    /// whose config `target` moved it.
    pub tables: Vec<(String, String)>,
    /// SQL warehouse that runs the CREATE TABLE statements (needed when there are tables).
    pub warehouse_id: Option<String>,
    pub credential_name: String,
    pub location_name: String,
}

/// One request as sent (what `--dry-run` prints).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PlannedRequest {
    pub method: &'static str,
    pub path: String,
    pub body: Value,
    /// The object it creates, for the report.
    pub object: String,
}

/// What happened to one object.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Outcome {
    pub object: String,
    /// `created` or `exists`.
    pub result: String,
}

/// Parses `t1,t2,name=path/below/target`.
pub fn parse_tables(list: &str) -> Vec<(String, String)> {
    list.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| match t.split_once('=') {
            Some((name, path)) => (
                name.trim().to_owned(),
                path.trim().trim_matches('/').to_owned(),
            ),
            None => (t.to_owned(), t.to_owned()),
        })
        .collect()
}

/// A backquoted SQL identifier (`` ` `` doubled inside).
fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A single-quoted SQL string literal.
/// The token travels in a header: only over TLS, except to this machine (tests' local server).
fn check_transport(workspace_url: &str) -> Result<(), UcError> {
    let bad = |m: &str| {
        Err(UcError::Invalid(format!(
            "--workspace-url {}: {m}",
            crate::storage::redact(workspace_url)
        )))
    };
    let Ok(url) = url::Url::parse(workspace_url) else {
        return bad("not a URL (expected https://adb-<id>.<n>.azuredatabricks.net)");
    };
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => bad("the token would be sent in clear; use https://"),
    }
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl UcOptions {
    fn validate(&self) -> Result<(), UcError> {
        let bad = |m: String| Err(UcError::Invalid(m));
        if !self.target.starts_with("abfss://") || !self.target.contains(".dfs.") {
            return bad(format!(
                "--target {}: Unity Catalog needs abfss://<container>@<account>.dfs.core.windows.net/<path>",
                crate::storage::redact(&self.target)
            ));
        }
        if self.target.contains('?') {
            return bad("--target must not carry a query (keys, SAS)".into());
        }
        if !self
            .access_connector_id
            .contains("/providers/Microsoft.Databricks/accessConnectors/")
        {
            return bad(format!(
                "--access-connector-id {}: expected /subscriptions/…/providers/Microsoft.Databricks/accessConnectors/<name>",
                self.access_connector_id
            ));
        }
        if !self.tables.is_empty() && self.warehouse_id.as_deref().is_none_or(str::is_empty) {
            return bad("--warehouse-id is needed to create tables".into());
        }
        Ok(())
    }

    /// The requests, in order: credential, location, then one statement per table.
    pub fn plan(&self) -> Result<Vec<PlannedRequest>, UcError> {
        self.validate()?;
        let root = self.target.trim_end_matches('/');
        let mut out = vec![
            PlannedRequest {
                method: "POST",
                path: "/api/2.1/unity-catalog/storage-credentials".into(),
                body: json!({
                    "name": self.credential_name,
                    "azure_managed_identity": { "access_connector_id": self.access_connector_id },
                    "comment": "crdb-delta: Databricks access connector for the Delta target",
                }),
                object: format!("storage credential {}", self.credential_name),
            },
            PlannedRequest {
                method: "POST",
                path: "/api/2.1/unity-catalog/external-locations".into(),
                body: json!({
                    "name": self.location_name,
                    "url": root,
                    "credential_name": self.credential_name,
                    "comment": "crdb-delta: Delta tables written by the changefeed handler",
                }),
                object: format!("external location {}", self.location_name),
            },
        ];
        for (name, path) in &self.tables {
            let full = format!(
                "{}.{}.{}",
                ident(&self.catalog),
                ident(&self.schema),
                ident(name)
            );
            let location = format!("{root}/{path}");
            out.push(PlannedRequest {
                method: "POST",
                path: "/api/2.0/sql/statements".into(),
                body: json!({
                    "warehouse_id": self.warehouse_id,
                    "statement": format!("CREATE TABLE IF NOT EXISTS {full} USING DELTA LOCATION {}", literal(&location)),
                    "wait_timeout": "50s",
                    "on_wait_timeout": "CANCEL",
                }),
                object: format!("table {}.{}.{name}", self.catalog, self.schema),
            });
        }
        Ok(out)
    }
}

/// The tables below a target root: folders holding a `_delta_log`, in name order (this includes
/// `_crdb_delta_resolved`; `_crdb_delta`, the handler's buffer, has no log).
pub async fn discover_tables(target: &str) -> Result<Vec<(String, String)>, UcError> {
    let err = |message: String| UcError::Listing {
        target: target.to_owned(),
        message,
    };
    let loc = Location::open(target).map_err(|e| err(e.to_string()))?;
    let top = loc
        .store
        .list_with_delimiter(Some(&loc.prefix))
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    for dir in top.common_prefixes {
        let log = dir.clone().join("_delta_log");
        let inner = loc
            .store
            .list_with_delimiter(Some(&log))
            .await
            .map_err(|e| err(e.to_string()))?;
        if !inner.objects.is_empty()
            && let Some(rel) = loc.relative(&dir)
        {
            let name = rel.rsplit('/').next().unwrap_or(&rel).to_owned();
            out.push((name, rel));
        }
    }
    out.sort();
    Ok(out)
}

/// Sends the planned requests. The token is only ever put in the Authorization header.
pub async fn apply(opts: &UcOptions, token: &str) -> Result<Vec<Outcome>, UcError> {
    let plan = opts.plan()?;
    if token.trim().is_empty() {
        return Err(UcError::Invalid("DATABRICKS_TOKEN is empty".into()));
    }
    check_transport(&opts.workspace_url)?;
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .map_err(|source| UcError::Http {
            method: "POST",
            path: String::new(),
            source,
        })?;
    let base = opts.workspace_url.trim_end_matches('/');
    let mut outcomes = Vec::new();
    for req in plan {
        let http = |source| UcError::Http {
            method: req.method,
            path: req.path.clone(),
            source,
        };
        let resp = client
            .post(format!("{base}{}", req.path))
            .bearer_auth(token.trim())
            .json(&req.body)
            .send()
            .await
            .map_err(http)?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let error_code = body["error_code"].as_str().unwrap_or_default();
        let result = if status == 409 || error_code.ends_with("ALREADY_EXISTS") {
            "exists"
        } else if !(200..300).contains(&status) {
            return Err(UcError::Api {
                method: req.method,
                path: req.path,
                status,
                message: body["message"].as_str().unwrap_or(error_code).to_owned(),
            });
        } else if req.path.ends_with("/sql/statements") {
            let state = body["status"]["state"].as_str().unwrap_or("UNKNOWN");
            if state != "SUCCEEDED" {
                return Err(UcError::Statement {
                    table: req.object.clone(),
                    state: state.to_owned(),
                    message: body["status"]["error"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                });
            }
            "created"
        } else {
            "created"
        };
        tracing::info!(object = %req.object, result, "unity catalog");
        outcomes.push(Outcome {
            object: req.object,
            result: result.to_owned(),
        });
    }
    Ok(outcomes)
}

/// A source named as a Unity Catalog volume path, `/Volumes/<catalog>/<schema>/<volume>/<path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePath {
    pub catalog: String,
    pub schema: String,
    pub volume: String,
    /// Below the volume's root, without leading or trailing `/` (may be empty).
    pub path: String,
}

impl VolumePath {
    /// `None` when `s` is not a `/Volumes/…` path; an error when it is one without the three
    /// names.
    pub fn parse(s: &str) -> Option<Result<Self, UcError>> {
        let rest = s.strip_prefix("/Volumes/")?;
        let mut parts = rest.splitn(4, '/');
        let mut next = || parts.next().filter(|p| !p.is_empty()).map(str::to_owned);
        Some(match (next(), next(), next()) {
            (Some(catalog), Some(schema), Some(volume)) => Ok(Self {
                catalog,
                schema,
                volume,
                path: next().unwrap_or_default().trim_matches('/').to_owned(),
            }),
            _ => Err(UcError::Invalid(format!(
                "{s}: a volume path is /Volumes/<catalog>/<schema>/<volume>[/<path>]"
            ))),
        })
    }

    pub fn full_name(&self) -> String {
        format!("{}.{}.{}", self.catalog, self.schema, self.volume)
    }
}

/// A volume's `storage_location` (`abfss://<container>@<account>.dfs.core.windows.net/<dir>`)
/// plus the path below the volume → the location our storage client opens, and
/// `azure://<container>/<dir>/<path>` with its account for messages.
pub fn volume_location(storage_location: &str, path: &str) -> Result<(String, String), UcError> {
    let bad = || {
        UcError::Invalid(format!(
            "volume storage location {}: only Azure (abfss://<container>@<account>.dfs.core.windows.net/…) is supported",
            crate::storage::redact(storage_location)
        ))
    };
    let url = url::Url::parse(storage_location).map_err(|_| bad())?;
    let host = url.host_str().unwrap_or_default();
    let account = host.split('.').next().unwrap_or_default();
    if !matches!(url.scheme(), "abfss" | "abfs")
        || url.username().is_empty()
        || !host.contains(".dfs.")
        || account.is_empty()
        || url.query().is_some()
    {
        return Err(bad());
    }
    let dir = url.path().trim_matches('/');
    let full = [dir, path]
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    let container = url.username();
    let open = format!("abfss://{container}@{host}/{full}");
    let shown = format!("azure://{container}/{full} (account {account})");
    Ok((open.trim_end_matches('/').to_owned(), shown))
}

/// Resolves a `/Volumes/…` source through `GET /api/2.1/unity-catalog/volumes/{full_name}`
/// (<https://docs.databricks.com/api/azure/workspace/volumes/read>) to the location below the
/// volume's `storage_location`. Returns (location to open, text for messages).
pub async fn resolve_volume(
    workspace_url: &str,
    token: &str,
    volume: &VolumePath,
) -> Result<(String, String), UcError> {
    check_transport(workspace_url)?;
    let path = format!("/api/2.1/unity-catalog/volumes/{}", volume.full_name());
    let http = |source| UcError::Http {
        method: "GET",
        path: path.clone(),
        source,
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(http)?;
    let url = format!(
        "{}/api/2.1/unity-catalog/volumes/{}",
        workspace_url.trim_end_matches('/'),
        percent_encoding::utf8_percent_encode(&volume.full_name(), crate::crdb::QUERY_VALUE)
    );
    let resp = client
        .get(url)
        .bearer_auth(token.trim())
        .send()
        .await
        .map_err(http)?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !(200..300).contains(&status) {
        return Err(UcError::Api {
            method: "GET",
            path,
            status,
            message: body["message"]
                .as_str()
                .or(body["error_code"].as_str())
                .unwrap_or_default()
                .to_owned(),
        });
    }
    let storage = body["storage_location"].as_str().ok_or_else(|| {
        UcError::Invalid(format!(
            "volume {}: the answer has no storage_location",
            volume.full_name()
        ))
    })?;
    volume_location(storage, &volume.path)
}

/// A source as given, or, for `/Volumes/…`, the Azure location of that volume path, resolved
/// with `DATABRICKS_HOST` and `DATABRICKS_TOKEN` (never printed).
pub async fn resolve_source(source: &str) -> Result<String, UcError> {
    let Some(volume) = VolumePath::parse(source) else {
        return Ok(source.to_owned());
    };
    let volume = volume?;
    let var = |k: &str| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| {
                UcError::Invalid(format!(
                    "{source} is a Unity Catalog volume: set {k} (DATABRICKS_HOST = https://adb-<id>.<n>.azuredatabricks.net, DATABRICKS_TOKEN = a PAT or OAuth token) to resolve it"
                ))
            })
    };
    let host = var("DATABRICKS_HOST")?;
    let host = if host.contains("://") {
        host
    } else {
        format!("https://{host}")
    };
    let (location, shown) = resolve_volume(&host, &var("DATABRICKS_TOKEN")?, &volume).await?;
    tracing::info!(volume = %source, location = %shown, "resolved Unity Catalog volume");
    Ok(location)
}
