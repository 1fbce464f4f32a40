//! CockroachDB itself as a source of configuration: `crdb-delta schema` reads primary keys, exact
//! SQL types and column families over the PostgreSQL wire protocol and writes the configuration
//! `sync`/`serve` read; `crdb-delta changefeed` creates and manages the changefeed this tool
//! consumes.
//!
//! - [`schema`]: pure — catalog rows to [`crate::config::TableConfig`], `SHOW CREATE TABLE`
//!   parsing (column families), the PostgreSQL type fallback;
//! - [`changefeed`]: pure — the exact `CREATE CHANGEFEED` statement, the Azure sink URI with its
//!   credentials (redacted for display), `SHOW CHANGEFEED JOB` rows;
//! - [`client`]: the connection (tokio-postgres over rustls) and the queries.
//!
//! Secrets: the database password comes from the URL or `PGPASSWORD`, the sink's credentials
//! from the environment. Every message names the database by [`redact_url`] and every error text
//! is scrubbed of the secrets in play ([`Secrets::scrub`]).

pub mod changefeed;
pub mod client;
pub mod commands;
pub mod schema;

use std::fmt::Write as _;

/// What can go wrong talking to CockroachDB (or the PostgreSQL test server).
#[derive(Debug, thiserror::Error)]
pub enum CrdbError {
    /// Bad arguments: nothing was sent.
    #[error("{0}")]
    Invalid(String),
    #[error("connecting to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("{what} on {url}: {message}")]
    Query {
        url: String,
        what: String,
        message: String,
    },
    #[error("table `{table}` does not exist in database `{database}` (schema `{schema}`) on {url}")]
    UnknownTable {
        url: String,
        database: String,
        schema: String,
        table: String,
    },
    #[error("table `{table}`: {message}")]
    Table { table: String, message: String },
    #[error("writing {location}: {message}")]
    Write { location: String, message: String },
}

/// A `postgresql://` URL as it may be shown: the password (`user:password@`) and any
/// `password`/`sslpassword` query parameter replaced by `<redacted>`; other parameters
/// (`sslmode`, `options`, …) kept, since they explain connection failures.
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return crate::storage::redact(url);
    };
    const MARK: &str = "REDACTEDXYZ";
    if u.password().is_some() {
        let _ = u.set_password(Some(MARK));
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let secret = matches!(k.to_ascii_lowercase().as_str(), "password" | "sslpassword");
                (
                    k.into_owned(),
                    if secret {
                        MARK.to_owned()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string().replace(MARK, "<redacted>")
}

/// A `postgresql://` URL that may carry a password: shown (Debug, Display) only through
/// [`redact_url`], so options holding it can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct CrdbUrl(String);

impl CrdbUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL itself, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for CrdbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl std::fmt::Display for CrdbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// Secret strings in play (password, account key, client secret): removed from any text that
/// leaves this module, in case a server or a library echoes one.
#[derive(Debug, Clone, Default)]
pub struct Secrets(Vec<String>);

impl Secrets {
    pub fn add(&mut self, secret: &str) {
        // Very short strings would redact ordinary words; real secrets are long.
        if secret.len() >= 4 && !self.0.iter().any(|s| s == secret) {
            self.0.push(secret.to_owned());
            // Percent-encoded, as it travels in URIs.
            let enc = percent_encoding::utf8_percent_encode(secret, QUERY_VALUE).to_string();
            if enc != secret {
                self.0.push(enc);
            }
        }
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.0 {
            out = out.replace(s.as_str(), "<redacted>");
        }
        out
    }
}

/// Characters escaped in a URI query value: everything but unreserved characters.
pub const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A SQL identifier, always double-quoted (`"` doubled inside), so keywords (`order`, `user`,
/// `primary`) and mixed case survive.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal (`'` doubled inside).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A table as named on the command line: `table`, `schema.table` or `database.schema.table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub database: Option<String>,
    pub schema: String,
    pub table: String,
}

impl TableName {
    /// Parses a dotted name; `"quoted.parts"` keep their dots. Default schema: `public`.
    pub fn parse(s: &str) -> Result<Self, CrdbError> {
        let bad = |m: &str| CrdbError::Invalid(format!("table name `{s}`: {m}"));
        let mut parts = Vec::new();
        let mut cur = String::new();
        let mut chars = s.trim().chars().peekable();
        let mut quoted_part = false;
        while let Some(c) = chars.next() {
            match c {
                '"' => {
                    quoted_part = true;
                    loop {
                        match chars.next() {
                            Some('"') if chars.peek() == Some(&'"') => {
                                chars.next();
                                cur.push('"');
                            }
                            Some('"') => break,
                            Some(c) => cur.push(c),
                            None => return Err(bad("unterminated quote")),
                        }
                    }
                }
                '.' => {
                    parts.push(std::mem::take(&mut cur));
                    quoted_part = false;
                }
                c if c.is_whitespace() => return Err(bad("spaces are only allowed in quotes")),
                // Unquoted identifiers are case-folded, as SQL does.
                c if !quoted_part => cur.push(c.to_ascii_lowercase()),
                c => cur.push(c),
            }
        }
        parts.push(cur);
        if parts.iter().any(String::is_empty) {
            return Err(bad("empty name part"));
        }
        match parts.as_slice() {
            [t] => Ok(Self {
                database: None,
                schema: "public".into(),
                table: t.clone(),
            }),
            [s, t] => Ok(Self {
                database: None,
                schema: s.clone(),
                table: t.clone(),
            }),
            [d, s, t] => Ok(Self {
                database: Some(d.clone()),
                schema: s.clone(),
                table: t.clone(),
            }),
            _ => Err(bad("expected table, schema.table or database.schema.table")),
        }
    }

    /// `"schema"."table"`, or with the database when known.
    pub fn quoted(&self) -> String {
        let mut s = String::new();
        if let Some(d) = &self.database {
            let _ = write!(s, "{}.", quote_ident(d));
        }
        let _ = write!(
            s,
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(&self.table)
        );
        s
    }
}

/// Comma-separated table names.
pub fn parse_tables(list: &str) -> Result<Vec<TableName>, CrdbError> {
    let names: Vec<TableName> = split_outside_quotes(list, ',')
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(TableName::parse)
        .collect::<Result<_, _>>()?;
    if names.is_empty() {
        return Err(CrdbError::Invalid("no table named".into()));
    }
    Ok(names)
}

/// Splits on `sep` where it is not inside double quotes.
pub(crate) fn split_outside_quotes(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        if c == '"' {
            quoted = !quoted;
        }
        if c == sep && !quoted {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        let cases = [
            (
                "postgresql://root:s3cr3tpw@db.example:26257/defaultdb?sslmode=verify-full",
                "postgresql://root:<redacted>@db.example:26257/defaultdb?sslmode=verify-full",
            ),
            (
                "postgres://u@h/db?password=s3cr3tpw&sslmode=disable",
                "postgres://u@h/db?password=<redacted>&sslmode=disable",
            ),
            ("postgresql://u@h:5432/db", "postgresql://u@h:5432/db"),
        ];
        for (given, want) in cases {
            assert_eq!(redact_url(given), want);
            assert!(!redact_url(given).contains("s3cr3tpw"));
        }
        // Not a URL: the storage redaction (query and password dropped) still applies.
        assert!(!redact_url("not a url ?password=s3cr3tpw").contains("s3cr3tpw"));
    }

    #[test]
    fn secrets_are_scrubbed_also_percent_encoded() {
        let mut s = Secrets::default();
        s.add("k+y/==");
        s.add("ab"); // too short to be a secret
        assert_eq!(
            s.scrub("a k+y/== b k%2By%2F%3D%3D c ab"),
            "a <redacted> b <redacted> c ab"
        );
    }

    #[test]
    fn table_names_parse() {
        let t = TableName::parse("Orders").unwrap();
        assert_eq!((t.schema.as_str(), t.table.as_str()), ("public", "orders"));
        let t = TableName::parse("db.s.\"Mixed.Case\"").unwrap();
        assert_eq!(t.database.as_deref(), Some("db"));
        assert_eq!(t.table, "Mixed.Case");
        assert_eq!(t.quoted(), "\"db\".\"s\".\"Mixed.Case\"");
        assert_eq!(TableName::parse("\"a\"\"b\"").unwrap().table, "a\"b");
        for bad in ["", "a..b", "a.b.c.d", "\"open", "a b"] {
            assert!(TableName::parse(bad).is_err(), "{bad}");
        }
        let list = parse_tables("a, s.b ,\"x,y\"").unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[2].table, "x,y");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
