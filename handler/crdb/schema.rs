//! Pure: catalog rows and `SHOW CREATE TABLE` text to the per-table configuration `sync` reads
//! (`primary_key`, `primary_family`, `columns`).
//!
//! Types: CockroachDB's `information_schema.columns.crdb_sql_type` is the type as `CREATE TABLE`
//! spells it (`INT8`, `DECIMAL(12,2)`, `STRING`, `TIMESTAMPTZ`, `VARCHAR(20)`, …). PostgreSQL
//! (the test server) has no such column: its `udt_name` plus length/precision/scale give the
//! same names. Every type emitted is checked against [`SqlType`]'s parser, the one `sync` uses;
//! a type it does not know (a spatial type, `VECTOR`, …) is left out, so `sync` infers that
//! column from the files as it would without configuration — and the report says so.
//!
//! Families: `SHOW CREATE TABLE` lists a table's `FAMILY name (cols)` clauses in family-id order
//! (CockroachDB omits the clause when there is a single family), so the first one listed is
//! family 0, the one whose delete removes the row. An unnamed family is called
//! `fam_<id>_<col>_<col>…`, as CockroachDB names it (changefeeds-on-tables-with-column-families).

use std::collections::BTreeMap;

use crdb_delta_core::format::types::SqlType;

use super::CrdbError;
use crate::config::TableConfig;

/// One row of `information_schema.columns`, with the fields both servers have and CockroachDB's
/// `crdb_sql_type` when present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnRow {
    pub name: String,
    /// CockroachDB only.
    pub crdb_sql_type: Option<String>,
    /// `data_type` (`integer`, `ARRAY`, `USER-DEFINED`, …).
    pub data_type: String,
    /// `udt_name` (`int4`, `_int8`, `numeric`, an enum's name, …).
    pub udt_name: String,
    pub char_max_length: Option<u32>,
    pub numeric_precision: Option<u32>,
    pub numeric_scale: Option<u32>,
    /// CockroachDB's `is_hidden` (`rowid`, hash-shard columns).
    pub hidden: bool,
    /// `udt_name` is an enum type.
    pub is_enum: bool,
}

/// A column family as `SHOW CREATE TABLE` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub name: String,
    pub columns: Vec<String>,
}

/// What was read for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    pub table: String,
    /// Primary-key columns in index order.
    pub primary_key: Vec<String>,
    /// Column → SQL type accepted by [`SqlType`], in table order.
    pub columns: Vec<(String, String)>,
    /// Columns left to inference: (column, type as the server named it).
    pub skipped: Vec<(String, String)>,
    /// In family-id order; empty when the server has no families (PostgreSQL) or the table has one.
    pub families: Vec<Family>,
}

impl TableSchema {
    /// Builds and checks a table's schema from its catalog rows.
    pub fn new(
        table: &str,
        rows: &[ColumnRow],
        primary_key: Vec<String>,
        families: Vec<Family>,
        cockroach: bool,
    ) -> Result<Self, CrdbError> {
        let err = |message: String| CrdbError::Table {
            table: table.to_owned(),
            message,
        };
        let hidden_only = !primary_key.is_empty()
            && primary_key
                .iter()
                .all(|k| rows.iter().any(|r| &r.name == k && r.hidden));
        if primary_key.is_empty() || hidden_only {
            return Err(err(format!(
                "no primary key{}. A changefeed then keys its rows by that hidden `rowid`, \
                 which no query of the source shows or matches, so the Delta table cannot be \
                 merged by key. Add a primary key (ALTER TABLE … ALTER PRIMARY KEY USING COLUMNS \
                 (…)), or set `tables.{table}.primary_key` yourself with `mode: append_only`",
                if hidden_only {
                    format!(" other than the hidden `{}`", primary_key.join("`, `"))
                } else if cockroach {
                    " (CockroachDB keys it by a hidden `rowid`)".to_owned()
                } else {
                    " (on CockroachDB such a table is keyed by a hidden `rowid`)".to_owned()
                }
            )));
        }
        for k in &primary_key {
            if !rows.iter().any(|r| &r.name == k) {
                return Err(err(format!(
                    "primary-key column `{k}` is not among the table's columns"
                )));
            }
        }
        let mut columns = Vec::new();
        let mut skipped = Vec::new();
        for r in rows {
            if r.hidden && !primary_key.contains(&r.name) {
                continue;
            }
            match sql_type(r) {
                Ok(t) => columns.push((r.name.clone(), t)),
                Err(UnmappedType(named)) => skipped.push((r.name.clone(), named)),
            }
        }
        Ok(Self {
            table: table.to_owned(),
            primary_key,
            columns,
            skipped,
            families,
        })
    }

    /// The configuration `sync` reads for this table. `primary_family` only when the table has
    /// several families (with one, files carry no family and family 0 is the only one).
    pub fn table_config(&self) -> TableConfig {
        TableConfig {
            primary_key: Some(self.primary_key.clone()),
            primary_family: (self.families.len() > 1).then(|| self.families[0].name.clone()),
            columns: self.columns.iter().cloned().collect(),
            ..TableConfig::default()
        }
    }
}

/// A column type the connector has no mapping for, as the server named it: `sync` infers the
/// column's type from the files instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("type {0} has no mapping here")]
pub struct UnmappedType(pub String);

/// A `SHOW CREATE TABLE` statement whose column families cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateStatementError {
    #[error("no column list in the CREATE TABLE statement")]
    NoColumnList,
    #[error("unbalanced parentheses in the CREATE TABLE statement")]
    Unbalanced,
    #[error("cannot read family clause `{0}`")]
    Family(String),
}

/// The SQL type of a column as `sync` spells it.
pub fn sql_type(row: &ColumnRow) -> Result<String, UnmappedType> {
    let candidate = match &row.crdb_sql_type {
        Some(t) => normalize_crdb(t, row),
        None => postgres_type(row),
    };
    let named = || {
        row.crdb_sql_type
            .clone()
            .unwrap_or_else(|| row.udt_name.clone())
    };
    match candidate {
        Some(t) if t.parse::<SqlType>().is_ok() => Ok(t),
        _ => Err(UnmappedType(named())),
    }
}

/// `crdb_sql_type` → a name [`SqlType`] parses: `COLLATE` dropped (still a string), fractional
/// second precision dropped (`TIMESTAMP(3)`: the Delta type is the same), user-defined enums
/// → `ENUM`.
fn normalize_crdb(t: &str, row: &ColumnRow) -> Option<String> {
    if row.is_enum || row.data_type == "USER-DEFINED" {
        return row.is_enum.then(|| "ENUM".to_owned());
    }
    let mut t = t.trim().to_owned();
    if let Some(i) = t.to_ascii_uppercase().find(" COLLATE ") {
        t.truncate(i);
    }
    let upper = t.to_ascii_uppercase();
    for base in ["TIMESTAMPTZ", "TIMESTAMP", "TIMETZ", "TIME", "INTERVAL"] {
        if let Some(rest) = upper.strip_prefix(base)
            && rest.starts_with('(')
            && let Some(end) = rest.find(')')
        {
            return Some(format!("{base}{}", &rest[end + 1..]));
        }
    }
    Some(t)
}

/// PostgreSQL's `udt_name` (+ length, precision, scale) → the CockroachDB spelling.
fn postgres_type(row: &ColumnRow) -> Option<String> {
    if row.is_enum {
        return Some("ENUM".into());
    }
    if let Some(elem) = row.udt_name.strip_prefix('_') {
        let inner = ColumnRow {
            udt_name: elem.to_owned(),
            // Array columns report no element length/precision in information_schema.
            char_max_length: None,
            numeric_precision: None,
            numeric_scale: None,
            data_type: String::new(),
            ..row.clone()
        };
        return postgres_type(&inner).map(|t| format!("{t}[]"));
    }
    let len = |base: &str| match row.char_max_length {
        Some(n) => format!("{base}({n})"),
        None => base.to_owned(),
    };
    Some(match row.udt_name.as_str() {
        "bool" => "BOOL".into(),
        "int2" => "INT2".into(),
        "int4" => "INT4".into(),
        "int8" => "INT8".into(),
        "float4" => "FLOAT4".into(),
        "float8" => "FLOAT8".into(),
        "numeric" => match (row.numeric_precision, row.numeric_scale) {
            (Some(p), Some(s)) => format!("DECIMAL({p},{s})"),
            (Some(p), None) => format!("DECIMAL({p})"),
            _ => "DECIMAL".into(),
        },
        "text" | "name" => "STRING".into(),
        "varchar" => len("VARCHAR"),
        "bpchar" => len("CHAR"),
        "bytea" => "BYTES".into(),
        "uuid" => "UUID".into(),
        "date" => "DATE".into(),
        "time" => "TIME".into(),
        "timetz" => "TIMETZ".into(),
        "timestamp" => "TIMESTAMP".into(),
        "timestamptz" => "TIMESTAMPTZ".into(),
        "interval" => "INTERVAL".into(),
        "inet" => "INET".into(),
        "json" | "jsonb" => "JSONB".into(),
        "bit" => len("BIT"),
        "varbit" => "VARBIT".into(),
        "oid" => "OID".into(),
        _ => return None,
    })
}

/// The `FAMILY` clauses of a `SHOW CREATE TABLE` statement, in the order listed (family-id
/// order). Empty when there are none (one family, which CockroachDB does not print).
pub fn parse_families(create_statement: &str) -> Result<Vec<Family>, CreateStatementError> {
    let body = table_body(create_statement)?;
    let mut out = Vec::new();
    for element in split_top_level(body) {
        let e = element.trim();
        let Some(rest) = e.strip_prefix("FAMILY") else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('(')) {
            continue; // a column whose name starts with FAMILY (printed quoted anyway)
        }
        let rest = rest.trim_start();
        let (name, cols) = match rest.find('(') {
            Some(0) => (None, rest),
            Some(i) => (Some(unquote(rest[..i].trim())), &rest[i..]),
            None => return Err(CreateStatementError::Family(e.to_owned())),
        };
        let cols = cols
            .strip_prefix('(')
            .and_then(|c| c.trim_end().strip_suffix(')'))
            .ok_or_else(|| CreateStatementError::Family(e.to_owned()))?;
        let columns: Vec<String> = super::split_outside_quotes(cols, ',')
            .iter()
            .map(|c| unquote(c.trim()))
            .filter(|c| !c.is_empty())
            .collect();
        let name = name.unwrap_or_else(|| format!("fam_{}_{}", out.len(), columns.join("_")));
        out.push(Family { name, columns });
    }
    Ok(out)
}

/// The text between `CREATE TABLE name (` and its matching `)`.
fn table_body(stmt: &str) -> Result<&str, CreateStatementError> {
    let start = stmt.find('(').ok_or(CreateStatementError::NoColumnList)?;
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for (i, c) in stmt[start..].char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth -= 1;
                if depth == 0 {
                    return Ok(&stmt[start + 1..start + i]);
                }
            }
            _ => {}
        }
    }
    Err(CreateStatementError::Unbalanced)
}

/// Splits on commas outside parentheses and quotes.
fn split_top_level(body: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut quote, mut from) = (0usize, None::<char>, 0usize);
    for (i, c) in body.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth = depth.saturating_sub(1),
            (None, ',') if depth == 0 => {
                out.push(&body[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    out.push(&body[from..]);
    out
}

/// `"quoted ""name"""` → `quoted "name"`; a bare identifier as is.
fn unquote(s: &str) -> String {
    match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => s.to_owned(),
    }
}

/// Puts what was read into a schema document: each table's key, family and columns are
/// replaced; the tables it already had (so `schema --tables a` then `--tables b` accumulate)
/// and a table's other fields (target, mode, storage) are kept.
pub fn merge_tables(
    existing: crate::config::Config,
    read: BTreeMap<String, TableConfig>,
) -> crate::config::Config {
    let mut c = existing;
    for (name, r) in read {
        let t = c.tables.entry(name).or_default();
        t.primary_key = r.primary_key;
        t.primary_family = r.primary_family;
        t.columns = r.columns;
        t.schema_id = r.schema_id;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, crdb: Option<&str>, udt: &str) -> ColumnRow {
        ColumnRow {
            name: name.into(),
            crdb_sql_type: crdb.map(str::to_owned),
            udt_name: udt.into(),
            ..ColumnRow::default()
        }
    }

    #[test]
    fn postgres_types_map_to_cockroach_spellings() {
        let mut n = col("amount", None, "numeric");
        n.numeric_precision = Some(12);
        n.numeric_scale = Some(2);
        assert_eq!(sql_type(&n).unwrap(), "DECIMAL(12,2)");
        let mut v = col("code", None, "varchar");
        v.char_max_length = Some(20);
        assert_eq!(sql_type(&v).unwrap(), "VARCHAR(20)");
        for (udt, want) in [
            ("int4", "INT4"),
            ("int8", "INT8"),
            ("text", "STRING"),
            ("uuid", "UUID"),
            ("timestamptz", "TIMESTAMPTZ"),
            ("timestamp", "TIMESTAMP"),
            ("jsonb", "JSONB"),
            ("_int8", "INT8[]"),
            ("_text", "STRING[]"),
            ("numeric", "DECIMAL"),
            ("bytea", "BYTES"),
        ] {
            assert_eq!(sql_type(&col("c", None, udt)).unwrap(), want, "{udt}");
        }
        assert_eq!(
            sql_type(&col("g", None, "geometry")).unwrap_err(),
            UnmappedType("geometry".into())
        );
        let mut e = col("status", None, "mood");
        e.is_enum = true;
        e.data_type = "USER-DEFINED".into();
        assert_eq!(sql_type(&e).unwrap(), "ENUM");
    }

    #[test]
    fn cockroach_types_are_normalised_and_checked() {
        for (crdb, want) in [
            ("INT8", Some("INT8")),
            ("DECIMAL(12,2)", Some("DECIMAL(12,2)")),
            ("TIMESTAMPTZ(3)", Some("TIMESTAMPTZ")),
            ("TIMESTAMP(6)", Some("TIMESTAMP")),
            ("STRING COLLATE en_US", Some("STRING")),
            ("VARCHAR(255)", Some("VARCHAR(255)")),
            ("STRING[]", Some("STRING[]")),
            ("GEOGRAPHY(POINT,4326)", None),
            ("VECTOR(3)", None),
        ] {
            let got = sql_type(&col("c", Some(crdb), "x")).ok();
            assert_eq!(got.as_deref(), want, "{crdb}");
        }
    }

    #[test]
    fn tables_without_a_key_are_refused_with_the_reason() {
        let rows = [col("a", Some("INT8"), "int8")];
        let e = TableSchema::new("t", &rows, vec![], vec![], false).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("no primary key") && m.contains("rowid"), "{m}");
        let mut rowid = col("rowid", Some("INT8"), "int8");
        rowid.hidden = true;
        let rows = [col("a", Some("INT8"), "int8"), rowid];
        let m = TableSchema::new("t", &rows, vec!["rowid".into()], vec![], true)
            .unwrap_err()
            .to_string();
        assert!(m.contains("other than the hidden `rowid`"), "{m}");
    }

    #[test]
    fn config_keeps_key_order_and_names_family_zero_only_when_needed() {
        let rows = [
            col("id", Some("INT8"), "int8"),
            col("region", Some("STRING"), "text"),
            col("geo", Some("GEOMETRY"), "geometry"),
        ];
        let fams = vec![
            Family {
                name: "f1".into(),
                columns: vec!["id".into()],
            },
            Family {
                name: "f2".into(),
                columns: vec!["region".into(), "geo".into()],
            },
        ];
        let s = TableSchema::new(
            "t",
            &rows,
            vec!["region".into(), "id".into()],
            fams.clone(),
            true,
        )
        .unwrap();
        assert_eq!(s.skipped, vec![("geo".to_owned(), "GEOMETRY".to_owned())]);
        let c = s.table_config();
        assert_eq!(c.primary_key.unwrap(), ["region", "id"]);
        assert_eq!(c.primary_family.as_deref(), Some("f1"));
        assert_eq!(c.columns.len(), 2);
        let one = TableSchema::new("t", &rows, vec!["id".into()], fams[..1].to_vec(), true)
            .unwrap()
            .table_config();
        assert_eq!(one.primary_family, None);
    }

    #[test]
    fn family_clauses_parse() {
        let stmt = "CREATE TABLE public.t (\n  id INT8 NOT NULL,\n  \"FAMILY x\" STRING NULL,\n  \
                    d DECIMAL(10,2) NULL DEFAULT 1.0,\n  CONSTRAINT t_pkey PRIMARY KEY (id ASC),\n  \
                    FAMILY \"primary\" (id, \"FAMILY x\"),\n  FAMILY (d),\n  FAMILY \"we\"\"ird\" (e)\n)";
        let f = parse_families(stmt).unwrap();
        assert_eq!(
            f,
            vec![
                Family {
                    name: "primary".into(),
                    columns: vec!["id".into(), "FAMILY x".into()]
                },
                Family {
                    name: "fam_1_d".into(),
                    columns: vec!["d".into()]
                },
                Family {
                    name: "we\"ird".into(),
                    columns: vec!["e".into()]
                },
            ]
        );
        assert!(
            parse_families("CREATE TABLE t (id INT8 PRIMARY KEY)")
                .unwrap()
                .is_empty()
        );
        assert!(parse_families("CREATE TABLE t (id INT8").is_err());
    }
}
