//! `crdb-delta schema` and `crdb-delta changefeed …`: read, check, then write — nothing is
//! written (no file, no object, no changefeed record) unless every read and check succeeded.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use object_store::ObjectStoreExt as _;

use super::changefeed::{
    ChangefeedSpec, FeedFormat, FeedTable, InitialScan, JOB_OBJECT, JobRecord, JobStatus, SinkAuth,
    parse_sink,
};
use super::client::{Conn, connect};
use super::schema::{TableSchema, merge_tables};
use super::{CrdbError, TableName, parse_tables};
use crate::config::{Config, SCHEMA_OBJECT, load_target_schema};
use crate::storage::Location;

/// Which tables: a list, or those of a changefeed job.
#[derive(Debug, Clone)]
pub enum Tables {
    List(String),
    Job(String),
}

#[derive(Debug, Clone)]
pub struct SchemaOptions {
    pub url: String,
    pub tables: Tables,
    /// Write to this file …
    pub out: Option<String>,
    /// … or into `<target>/_crdb_delta/schema.json`.
    pub target: Option<String>,
}

/// What `schema` read and where it wrote it.
#[derive(Debug)]
pub struct SchemaReport {
    pub server: String,
    pub tables: Vec<TableSchema>,
    pub written: String,
    pub document: Config,
}

/// What `schema` prints: each table's key, typed columns and families, and where it wrote.
impl std::fmt::Display for SchemaReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "read from {}:", self.server)?;
        for t in &self.tables {
            write!(
                f,
                "  {}: key ({}), {} typed column{}",
                t.table,
                t.primary_key.join(", "),
                t.columns.len(),
                if t.columns.len() == 1 { "" } else { "s" }
            )?;
            if t.families.len() > 1 {
                write!(
                    f,
                    ", {} families (family 0: {})",
                    t.families.len(),
                    t.families[0].name
                )?;
            }
            writeln!(f)?;
            for (c, ty) in &t.skipped {
                writeln!(
                    f,
                    "    {c}: type {ty} has no mapping here; sync infers it from the files"
                )?;
            }
        }
        writeln!(f, "wrote {}", self.written)
    }
}

/// Validates a target location without touching it (a local folder is created only on write).
fn check_target(target: &str) -> Result<(), CrdbError> {
    if target.contains("://") {
        Location::open(target).map_err(|e| CrdbError::Invalid(format!("--target: {e}")))?;
    }
    Ok(())
}

fn write_err(location: &str, e: impl std::fmt::Display) -> CrdbError {
    CrdbError::Write {
        location: crate::storage::redact(location),
        message: e.to_string(),
    }
}

async fn put_json(target: &str, object: &str, text: String) -> Result<String, CrdbError> {
    let shown = format!(
        "{}/{object}",
        crate::storage::redact(target).trim_end_matches('/')
    );
    let loc = Location::open(target).map_err(|e| write_err(&shown, e))?;
    let path = loc.child(object).map_err(|e| write_err(&shown, e))?;
    loc.store
        .put(&path, text.into_bytes().into())
        .await
        .map_err(|e| write_err(&shown, e))?;
    Ok(shown)
}

/// The tables a changefeed job watches (`full_table_names`, `database.schema.table`).
async fn job_tables(conn: &Conn, job: &str) -> Result<Vec<TableName>, CrdbError> {
    let id = super::changefeed::job_id(Some(job))?.unwrap_or_default();
    let status = JobStatus::from_row(&conn.show_changefeed_job(id).await?)?;
    if status.full_table_names.is_empty() {
        return Err(CrdbError::Invalid(format!(
            "changefeed job {id} names no tables"
        )));
    }
    status
        .full_table_names
        .iter()
        .map(|n| {
            // As CockroachDB prints them: exact, not case-folded.
            let p: Vec<&str> = n.splitn(3, '.').collect();
            match p.as_slice() {
                [d, s, t] => Ok(TableName {
                    database: Some((*d).to_owned()),
                    schema: (*s).to_owned(),
                    table: (*t).to_owned(),
                }),
                _ => TableName::parse(n),
            }
        })
        .collect()
}

/// `crdb-delta schema`.
pub async fn schema(opts: &SchemaOptions) -> Result<SchemaReport, CrdbError> {
    if opts.out.is_some() == opts.target.is_some() {
        return Err(CrdbError::Invalid(
            "give exactly one of --out FILE or --target ROOT".into(),
        ));
    }
    if let Some(t) = &opts.target {
        check_target(t)?;
    }
    let listed = match &opts.tables {
        Tables::List(l) => Some(parse_tables(l)?),
        Tables::Job(_) => None,
    };
    let conn = connect(&opts.url).await?;
    let names = match (&opts.tables, listed) {
        (_, Some(l)) => l,
        (Tables::Job(j), None) => job_tables(&conn, j).await?,
        (Tables::List(_), None) => unreachable!("parsed above"),
    };
    let tables = conn.read_tables(&names).await?;
    let read: BTreeMap<String, crate::config::TableConfig> = tables
        .iter()
        .map(|t| (t.table.clone(), t.table_config()))
        .collect();
    if read.len() != tables.len() {
        return Err(CrdbError::Invalid(
            "two tables of the same name in different schemas or databases: the changefeed's file names would not tell them apart".into(),
        ));
    }
    let (document, written) = match (&opts.out, &opts.target) {
        (Some(file), _) => {
            let doc = merge_tables(Config::default(), read);
            check_document(&doc)?;
            let text = serde_json::to_string_pretty(&doc).map_err(|e| write_err(file, e))? + "\n";
            let tmp = format!("{file}.tmp{}", std::process::id());
            std::fs::write(&tmp, text)
                .and_then(|()| std::fs::rename(&tmp, file))
                .map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    write_err(file, e)
                })?;
            (doc, file.clone())
        }
        (None, Some(target)) => {
            let existing = match Location::open_existing(target) {
                Ok(loc) => load_target_schema(&loc)
                    .await
                    .map_err(|e| write_err(target, e))?
                    .unwrap_or_default(),
                Err(_) => Config::default(),
            };
            let doc = merge_tables(existing, read);
            check_document(&doc)?;
            let text = serde_json::to_string_pretty(&doc).map_err(|e| write_err(target, e))? + "\n";
            let shown = put_json(target, SCHEMA_OBJECT, text).await?;
            (doc, shown)
        }
        (None, None) => unreachable!("checked above"),
    };
    Ok(SchemaReport {
        server: format!("{} ({})", conn.url, short_version(&conn.version)),
        tables,
        written,
        document,
    })
}

/// The document must be one `sync` accepts (SQL types parse, table paths are valid).
fn check_document(doc: &Config) -> Result<(), CrdbError> {
    let text = serde_json::to_string(doc).map_err(|e| CrdbError::Invalid(e.to_string()))?;
    Config::parse(&text)
        .map(|_| ())
        .map_err(|e| CrdbError::Invalid(format!("the configuration read would not load: {e}")))
}

fn short_version(v: &str) -> &str {
    v.split(" on ").next().unwrap_or(v)
}

#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub url: String,
    pub tables: String,
    pub sink: String,
    /// `key`, `client`, `implicit`; `None`: from what the environment has.
    pub sink_auth: Option<String>,
    pub format: String,
    pub resolved: String,
    /// `None`: gzip for JSON, nothing for Parquet; `Some("none")`: no compression.
    pub compression: Option<String>,
    pub initial_scan: bool,
    /// `WITH diff` ([`ChangefeedSpec::diff`]).
    pub diff: bool,
    pub target: Option<String>,
    pub dry_run: bool,
}

/// `crdb-delta changefeed create`: the statement (printed redacted with `dry_run`), run; the job
/// id recorded in the target when one is given. Returns the lines to print.
pub async fn changefeed_create(opts: &CreateOptions) -> Result<String, CrdbError> {
    let names = parse_tables(&opts.tables)?;
    let sink = parse_sink(&opts.sink)?;
    let auth = SinkAuth::from_vars(
        |k| std::env::var(k).ok(),
        opts.sink_auth.as_deref(),
        sink.account.clone(),
    )?;
    let format = FeedFormat::parse(&opts.format)?;
    let compression = match (opts.compression.as_deref(), format) {
        (Some("none"), _) => None,
        (Some(c), _) => Some(c.to_owned()),
        (None, FeedFormat::Json) => Some("gzip".to_owned()),
        (None, FeedFormat::Parquet) => None,
    };
    if let Some(t) = &opts.target {
        check_target(t)?;
    }
    let mut spec = ChangefeedSpec {
        tables: Vec::new(),
        sink,
        auth,
        format,
        resolved: opts.resolved.clone(),
        compression,
        initial_scan: if opts.initial_scan {
            InitialScan::Yes
        } else {
            InitialScan::No
        },
        diff: opts.diff,
    };
    let conn = connect(&opts.url).await?;
    // Keys are checked too: a table `sync` could not merge is refused before the feed exists.
    let read = conn.read_tables(&names).await?;
    spec.tables = names
        .iter()
        .zip(&read)
        .map(|(n, t)| FeedTable {
            name: TableName {
                database: Some(n.database.clone().unwrap_or_else(|| conn.database.clone())),
                ..n.clone()
            },
            families: t.families.len().max(1),
        })
        .collect();
    spec.validate()?;
    let shown = spec.display_statement();
    if opts.dry_run {
        return Ok(format!("{shown};\n"));
    }
    let job = conn
        .run_for_job_id(&spec.statement(), &shown)
        .await
        .map_err(|e| scrub(e, &spec.secrets()))?;
    let mut out = format!("created changefeed job {job}\n{shown};\n");
    if let Some(target) = &opts.target {
        let record = JobRecord {
            job_id: job.to_string(),
            created_at: chrono::Utc::now().to_rfc3339(),
            statement: shown.clone(),
            tables: spec.tables.iter().map(|t| t.name.quoted()).collect(),
        };
        let text = serde_json::to_string_pretty(&record).map_err(|e| write_err(target, e))? + "\n";
        let at = put_json(target, JOB_OBJECT, text).await?;
        let _ = writeln!(out, "recorded in {at}");
    }
    Ok(out)
}

/// Scrubs secrets out of every text field of an error.
fn scrub(e: CrdbError, s: &super::Secrets) -> CrdbError {
    match e {
        CrdbError::Query { url, what, message } => CrdbError::Query {
            url,
            what: s.scrub(&what),
            message: s.scrub(&message),
        },
        CrdbError::Connect { url, message } => CrdbError::Connect {
            url,
            message: s.scrub(&message),
        },
        CrdbError::Invalid(m) => CrdbError::Invalid(s.scrub(&m)),
        other => other,
    }
}

/// The job to act on: `--job`, else the one `create --target` recorded.
async fn resolve_job(job: Option<&str>, target: Option<&str>) -> Result<u64, CrdbError> {
    if let Some(id) = super::changefeed::job_id(job)? {
        return Ok(id);
    }
    let Some(target) = target else {
        return Err(CrdbError::Invalid(
            "give --job <id>, or --target <root> where `changefeed create --target` recorded it"
                .into(),
        ));
    };
    let shown = format!(
        "{}/{JOB_OBJECT}",
        crate::storage::redact(target).trim_end_matches('/')
    );
    let bad = |m: String| CrdbError::Invalid(format!("{shown}: {m}"));
    let loc = Location::open_existing(target).map_err(|e| bad(format!("{e}; give --job <id>")))?;
    let path = loc.child(JOB_OBJECT).map_err(|e| bad(e.to_string()))?;
    let bytes = match loc.store.get(&path).await {
        Ok(r) => r.bytes().await.map_err(|e| bad(e.to_string()))?,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(bad("no changefeed recorded here; give --job <id>".into()));
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let rec: JobRecord = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    rec.job_id
        .parse()
        .map_err(|_| bad(format!("job id `{}` is not a number", rec.job_id)))
}

/// `crdb-delta changefeed show`: the job's status and high-water mark, beside the target's
/// applied RESOLVED when a target is given.
pub async fn changefeed_show(
    url: &str,
    job: Option<&str>,
    target: Option<&str>,
    json: bool,
) -> Result<String, CrdbError> {
    let id = resolve_job(job, target).await?;
    let conn = connect(url).await?;
    let status = JobStatus::from_row(&conn.show_changefeed_job(id).await?)?;
    let applied: Vec<(String, Option<crdb_delta_core::Hlc>)> = match target {
        Some(t) => crate::status::target_status(t)
            .await
            .map_err(|e| CrdbError::Invalid(e.to_string()))?
            .into_iter()
            .map(|s| (s.table, s.applied))
            .collect(),
        None => Vec::new(),
    };
    if json {
        let v = serde_json::json!({
            "job": status,
            "applied": applied.iter().map(|(t, h)| (t.clone(), h.map(|h| h.to_string()))).collect::<BTreeMap<_, _>>(),
            "line": status.lag_line(&applied, chrono::Utc::now()),
        });
        return Ok(serde_json::to_string_pretty(&v).unwrap_or_default() + "\n");
    }
    let mut line = status.lag_line(&applied, chrono::Utc::now());
    if target.is_none() {
        line.push_str(" (give --target to compare with the Delta tables)");
    }
    Ok(line + "\n")
}

/// `PAUSE JOB`, `RESUME JOB`, `CANCEL JOB`.
pub async fn changefeed_control(
    url: &str,
    verb: &str,
    job: Option<&str>,
    target: Option<&str>,
) -> Result<String, CrdbError> {
    let id = resolve_job(job, target).await?;
    let conn = connect(url).await?;
    conn.job_command(verb, id).await?;
    Ok(format!("{verb} JOB {id}: done\n"))
}
