//! The connection to CockroachDB (or PostgreSQL, which the tests use for the wire protocol and
//! the standard catalog) and the queries `schema` and `changefeed` send.
//!
//! URL: `postgresql://user[:password]@host:port/database?sslmode=…&sslrootcert=…`, as
//! `cockroach sql --url` takes it. The password comes from the URL or `PGPASSWORD`, nothing
//! else. `sslmode`: `disable` (plain TCP, for a local test server), `prefer` (the default: TLS
//! when the server offers it), `require`, `verify-ca`, `verify-full` (TLS, required). With TLS
//! the server certificate and host name are always verified (rustls has no "encrypt but trust
//! anyone" mode), against `sslrootcert` when given (CockroachDB's `ca.crt`), else the system
//! roots; `sslcert` + `sslkey` add a client certificate (CockroachDB's certificate login).

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::config::SslMode;

use super::schema::{ColumnRow, Family, TableSchema, parse_families};
use super::{CrdbError, Secrets, TableName, redact_url};

/// Seconds to wait for the server when the URL sets no `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An open session.
pub struct Conn {
    client: tokio_postgres::Client,
    /// The URL as it may be shown.
    pub url: String,
    pub secrets: Secrets,
    /// `version()` says CockroachDB.
    pub cockroach: bool,
    pub version: String,
    pub database: String,
}

/// A text row of a simple-protocol query: (column, value) in column order.
pub type TextRow = Vec<(String, Option<String>)>;

struct Tls {
    mode: SslMode,
    root_cert: Option<String>,
    client_cert: Option<(String, String)>,
}

/// Splits our TLS parameters off the URL (tokio-postgres knows only disable/prefer/require).
fn split_url(url: &str) -> Result<(String, Tls), CrdbError> {
    let shown = redact_url(url);
    let bad = |m: String| CrdbError::Invalid(format!("--crdb-url {shown}: {m}"));
    let mut u = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if !matches!(u.scheme(), "postgres" | "postgresql") {
        return Err(bad(
            "expected postgresql://user@host:26257/database?sslmode=…".into(),
        ));
    }
    let mut tls = Tls {
        mode: SslMode::Prefer,
        root_cert: None,
        client_cert: None,
    };
    let (mut cert, mut key) = (None, None);
    let mut rest = Vec::new();
    for (k, v) in u.query_pairs() {
        match k.as_ref() {
            "sslmode" => {
                tls.mode = match v.as_ref() {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" | "verify-ca" | "verify-full" => SslMode::Require,
                    other => return Err(bad(format!("unknown sslmode `{other}`"))),
                }
            }
            "sslrootcert" => tls.root_cert = Some(v.into_owned()),
            "sslcert" => cert = Some(v.into_owned()),
            "sslkey" => key = Some(v.into_owned()),
            _ => rest.push((k.into_owned(), v.into_owned())),
        }
    }
    match (cert, key) {
        (Some(c), Some(k)) => tls.client_cert = Some((c, k)),
        (None, None) => {}
        _ => return Err(bad("sslcert and sslkey go together".into())),
    }
    if rest.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(rest);
    }
    Ok((u.to_string(), tls))
}

fn tls_config(tls: &Tls, shown: &str) -> Result<rustls::ClientConfig, CrdbError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |m: String| CrdbError::Invalid(format!("--crdb-url {shown}: {m}"));
    let mut roots = rustls::RootCertStore::empty();
    match &tls.root_cert {
        Some(path) => {
            for c in CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(format!("sslrootcert {path}: {e}")))?
            {
                let c = c.map_err(|e| bad(format!("sslrootcert {path}: {e}")))?;
                roots
                    .add(c)
                    .map_err(|e| bad(format!("sslrootcert {path}: {e}")))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    // Both ring and aws-lc-rs are compiled in (through reqwest), so the provider is named.
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_root_certificates(roots);
    match &tls.client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad(format!("sslcert {cert}: {e}")))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(format!("sslkey: {e}")))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| bad(format!("sslcert/sslkey: {e}")))
        }
    }
}

/// The message of a tokio-postgres error with its causes (the top one alone is often just
/// "error connecting to server"), scrubbed of secrets.
pub fn error_text(e: &tokio_postgres::Error, secrets: &Secrets) -> String {
    let mut s = match e.as_db_error() {
        Some(db) => {
            let mut m = format!("{}: {}", db.severity(), db.message());
            if let Some(h) = db.hint() {
                m.push_str(&format!(" (hint: {h})"));
            }
            m
        }
        None => e.to_string(),
    };
    if e.as_db_error().is_none() {
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            let t = c.to_string();
            if !s.contains(&t) {
                s.push_str(": ");
                s.push_str(&t);
            }
            cause = c.source();
        }
    }
    secrets.scrub(&s)
}

/// Connects; `PGPASSWORD` fills in a password the URL does not carry.
pub async fn connect(url: &str) -> Result<Conn, CrdbError> {
    let shown = redact_url(url);
    let (plain_url, tls) = split_url(url)?;
    let mut config: tokio_postgres::Config =
        plain_url.parse().map_err(|e: tokio_postgres::Error| {
            CrdbError::Invalid(format!("--crdb-url {shown}: {e}"))
        })?;
    let mut secrets = Secrets::default();
    if config.get_password().is_none()
        && let Ok(pw) = std::env::var("PGPASSWORD")
        && !pw.is_empty()
    {
        config.password(pw);
    }
    if let Some(pw) = config.get_password() {
        secrets.add(&String::from_utf8_lossy(pw));
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    config.ssl_mode(tls.mode);
    config.application_name("crdb-delta");
    let connect_err = |e: tokio_postgres::Error| CrdbError::Connect {
        url: shown.clone(),
        message: error_text(&e, &secrets),
    };
    let client = if tls.mode == SslMode::Disable {
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(connect_err)?;
        spawn_connection(connection, shown.clone(), secrets.clone());
        client
    } else {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(&tls, &shown)?);
        let (client, connection) = config.connect(tls).await.map_err(connect_err)?;
        spawn_connection(connection, shown.clone(), secrets.clone());
        client
    };
    let mut conn = Conn {
        client,
        url: shown,
        secrets,
        cockroach: false,
        version: String::new(),
        database: String::new(),
    };
    let row = conn
        .simple(
            "reading the server version",
            "SELECT version(), current_database()",
        )
        .await?;
    let first = row
        .first()
        .ok_or_else(|| conn.query_err("reading the server version", "no row".into()))?;
    conn.version = first.first().and_then(|c| c.1.clone()).unwrap_or_default();
    conn.database = first.get(1).and_then(|c| c.1.clone()).unwrap_or_default();
    conn.cockroach = conn.version.contains("CockroachDB");
    tracing::info!(url = %conn.url, version = %conn.version, "connected");
    Ok(conn)
}

fn spawn_connection<S, T>(
    connection: tokio_postgres::Connection<S, T>,
    shown: String,
    secrets: Secrets,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(url = %shown, "connection closed: {}", error_text(&e, &secrets));
        }
    });
}

impl Conn {
    fn query_err(&self, what: &str, message: String) -> CrdbError {
        CrdbError::Query {
            url: self.url.clone(),
            what: what.to_owned(),
            message: self.secrets.scrub(&message),
        }
    }

    /// A statement through the simple protocol (no parameters; every value as text). Rows of
    /// every result set, in order.
    pub async fn simple(&self, what: &str, sql: &str) -> Result<Vec<TextRow>, CrdbError> {
        let messages = self
            .client
            .simple_query(sql)
            .await
            .map_err(|e| self.query_err(what, error_text(&e, &self.secrets)))?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(
                    r.columns()
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (c.name().to_owned(), r.get(i).map(str::to_owned)))
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    }

    /// A parameterised query whose columns are all cast to text.
    async fn text_query(
        &self,
        what: &str,
        sql: &str,
        params: &[&str],
    ) -> Result<Vec<Vec<Option<String>>>, CrdbError> {
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = self
            .client
            .query(sql, &params)
            .await
            .map_err(|e| self.query_err(what, error_text(&e, &self.secrets)))?;
        Ok(rows
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.get::<_, Option<String>>(i))
                    .collect()
            })
            .collect())
    }

    /// Keys, types and families of each table, in the order given; the first problem stops it.
    pub async fn read_tables(&self, tables: &[TableName]) -> Result<Vec<TableSchema>, CrdbError> {
        let enums = self.enum_types().await?;
        let mut out = Vec::new();
        for t in tables {
            out.push(self.read_table(t, &enums).await?);
        }
        Ok(out)
    }

    async fn enum_types(&self) -> Result<Vec<String>, CrdbError> {
        let rows = self
            .text_query(
                "listing enum types",
                "SELECT DISTINCT t.typname::text FROM pg_catalog.pg_type t \
                 JOIN pg_catalog.pg_enum e ON e.enumtypid = t.oid",
                &[],
            )
            .await?;
        Ok(rows.into_iter().filter_map(|mut r| r.remove(0)).collect())
    }

    async fn read_table(&self, t: &TableName, enums: &[String]) -> Result<TableSchema, CrdbError> {
        if let Some(db) = &t.database
            && db != &self.database
        {
            return Err(CrdbError::Invalid(format!(
                "table {}: it is in database `{db}`, this connection is to `{}`; put `/{db}` in the URL",
                t.quoted(),
                self.database
            )));
        }
        let what = format!("reading table {}", t.quoted());
        let kind = self
            .text_query(
                &what,
                "SELECT table_type::text FROM information_schema.tables \
                 WHERE table_schema::text = $1::text AND table_name::text = $2::text",
                &[&t.schema, &t.table],
            )
            .await?;
        match kind.first().and_then(|r| r[0].as_deref()) {
            None => {
                return Err(CrdbError::UnknownTable {
                    url: self.url.clone(),
                    database: self.database.clone(),
                    schema: t.schema.clone(),
                    table: t.table.clone(),
                });
            }
            Some("BASE TABLE") => {}
            Some(other) => {
                return Err(CrdbError::Table {
                    table: t.table.clone(),
                    message: format!("is a {other}, not a table: changefeeds watch tables"),
                });
            }
        }
        let crdb_cols = if self.cockroach {
            ", crdb_sql_type::text, is_hidden::text"
        } else {
            ""
        };
        let sql = format!(
            "SELECT column_name::text, data_type::text, udt_name::text, \
             character_maximum_length::text, numeric_precision::text, numeric_scale::text{crdb_cols} \
             FROM information_schema.columns \
             WHERE table_schema::text = $1::text AND table_name::text = $2::text \
             ORDER BY ordinal_position"
        );
        let num = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<u32>().ok());
        let rows: Vec<ColumnRow> = self
            .text_query(&what, &sql, &[&t.schema, &t.table])
            .await?
            .into_iter()
            .map(|r| {
                let udt = r[2].clone().unwrap_or_default();
                ColumnRow {
                    name: r[0].clone().unwrap_or_default(),
                    data_type: r[1].clone().unwrap_or_default(),
                    is_enum: enums.contains(&udt),
                    udt_name: udt,
                    char_max_length: num(&r[3]),
                    numeric_precision: num(&r[4]),
                    numeric_scale: num(&r[5]),
                    crdb_sql_type: r.get(6).cloned().flatten(),
                    hidden: r
                        .get(7)
                        .cloned()
                        .flatten()
                        .is_some_and(|h| h.eq_ignore_ascii_case("yes") || h == "true"),
                }
            })
            .collect();
        let primary_key: Vec<String> = self
            .text_query(
                &what,
                "SELECT k.column_name::text FROM information_schema.table_constraints c \
                 JOIN information_schema.key_column_usage k \
                   ON k.constraint_schema = c.constraint_schema \
                  AND k.constraint_name = c.constraint_name \
                  AND k.table_schema = c.table_schema AND k.table_name = c.table_name \
                 WHERE c.constraint_type = 'PRIMARY KEY' \
                   AND c.table_schema::text = $1::text AND c.table_name::text = $2::text \
                 ORDER BY k.ordinal_position",
                &[&t.schema, &t.table],
            )
            .await?
            .into_iter()
            .filter_map(|mut r| r.remove(0))
            .collect();
        let families = if self.cockroach {
            self.families(t).await?
        } else {
            Vec::new()
        };
        TableSchema::new(&t.table, &rows, primary_key, families, self.cockroach)
    }

    /// The column families of a CockroachDB table, from `SHOW CREATE TABLE`.
    pub async fn families(&self, t: &TableName) -> Result<Vec<Family>, CrdbError> {
        let what = format!("SHOW CREATE TABLE {}", t.quoted());
        let rows = self
            .simple(&what, &format!("SHOW CREATE TABLE {}", t.quoted()))
            .await?;
        let stmt = rows
            .first()
            .and_then(|r| r.iter().find(|(c, _)| c == "create_statement"))
            .and_then(|(_, v)| v.clone())
            .ok_or_else(|| self.query_err(&what, "no create_statement column".into()))?;
        parse_families(&stmt).map_err(|m| CrdbError::Table {
            table: t.table.clone(),
            message: m.to_string(),
        })
    }

    /// `SHOW CHANGEFEED JOB <id>` as text columns.
    pub async fn show_changefeed_job(&self, job: u64) -> Result<TextRow, CrdbError> {
        let what = format!("SHOW CHANGEFEED JOB {job}");
        let mut rows = self.simple(&what, &what).await?;
        if rows.is_empty() {
            return Err(self.query_err(&what, "no such changefeed job".into()));
        }
        Ok(rows.remove(0))
    }

    /// Runs a statement that returns one job id (`CREATE CHANGEFEED`); `shown` is the statement
    /// as it may appear in messages.
    pub async fn run_for_job_id(&self, sql: &str, shown: &str) -> Result<u64, CrdbError> {
        let hint = if self.cockroach {
            String::new()
        } else {
            format!(
                " (the server is not CockroachDB: {})",
                self.version.split(" on ").next().unwrap_or(&self.version)
            )
        };
        let rows = self.simple(shown, sql).await.map_err(|e| match e {
            CrdbError::Query { url, what, message } => CrdbError::Query {
                url,
                what,
                message: format!("{message}{hint}"),
            },
            e => e,
        })?;
        rows.first()
            .and_then(|r| r.first())
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| self.query_err(shown, "the statement returned no job id".into()))
    }

    /// `PAUSE JOB`, `RESUME JOB`, `CANCEL JOB`.
    pub async fn job_command(&self, verb: &str, job: u64) -> Result<(), CrdbError> {
        let sql = format!("{verb} JOB {job}");
        self.simple(&sql, &sql).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_ours_and_the_rest_passes_through() {
        let (u, tls) = split_url(
            "postgresql://root:pw@h:26257/db?sslmode=verify-full&sslrootcert=/c/ca.crt&application_name=x",
        )
        .unwrap();
        assert_eq!(u, "postgresql://root:pw@h:26257/db?application_name=x");
        assert_eq!(tls.mode, SslMode::Require);
        assert_eq!(tls.root_cert.as_deref(), Some("/c/ca.crt"));
        let (u, tls) = split_url("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!(u, "postgres://u@h/db");
        assert_eq!(tls.mode, SslMode::Disable);
        for bad in [
            "mysql://u@h/db",
            "postgresql://u:s3cr3t@h/db?sslmode=bogus",
            "postgresql://u@h/db?sslcert=a",
        ] {
            let e = split_url(bad).err().unwrap().to_string();
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }
}
