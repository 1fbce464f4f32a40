//! The simulated tables, their values, and how CockroachDB encodes those values.

use std::fmt::Write as _;

use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::json;

use crate::format::types::{ColumnType, SqlType};
use crate::format::values::{
    self, crdb_json_float, format_bytes_hex, format_date, format_time_micros, format_timestamp,
    format_uuid,
};

/// One SQL value.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Decimal text exactly as CockroachDB prints it (`25.00`, `NaN`, `1E+2`).
    Decimal(String),
    Text(String),
    Bytes(Vec<u8>),
    Uuid([u8; 16]),
    /// Days since the epoch.
    Date(i32),
    /// Microseconds since midnight.
    Time(i64),
    /// Microseconds since the epoch (UTC for TIMESTAMPTZ).
    Timestamp(i64),
    /// JSONB in CockroachDB's text form.
    Json(String),
    Array(Vec<Datum>),
}

/// A column of a simulated table.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ColumnDef {
    pub name: String,
    #[serde(rename = "type")]
    pub sql: SqlType,
    pub nullable: bool,
    /// Column family (tables without families use `primary`).
    pub family: String,
}

/// A simulated table.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TableDef {
    pub name: String,
    pub columns: Vec<ColumnDef>,
    pub primary_key: Vec<String>,
    /// Families in declaration order; more than one means `split_column_families` topics.
    pub families: Vec<String>,
    /// Table descriptor version (the file name's schema id).
    pub version: u64,
}

impl TableDef {
    pub fn has_families(&self) -> bool {
        self.families.len() > 1
    }

    pub fn column_index(&self, name: &str) -> usize {
        self.columns
            .iter()
            .position(|c| c.name == name)
            .expect("column exists")
    }

    pub fn key_indices(&self) -> Vec<usize> {
        self.primary_key
            .iter()
            .map(|k| self.column_index(k))
            .collect()
    }

    /// Columns a family's messages carry: JSON `after` has the family's own columns; Parquet adds
    /// the key columns (format spec §4.2, §5). In table order.
    pub fn family_columns(&self, family: &str, with_key: bool) -> Vec<usize> {
        (0..self.columns.len())
            .filter(|&i| {
                self.columns[i].family == family
                    || (with_key && self.primary_key.contains(&self.columns[i].name))
            })
            .collect()
    }

    /// The topic of a family's files.
    pub fn topic(&self, family: &str) -> String {
        if self.has_families() {
            format!("{}+{}", self.name, family)
        } else {
            self.name.clone()
        }
    }

    /// The YCSB `usertable`: `ycsb_key INT8` key (or UUID) and `field0..fieldN STRING`;
    /// `regional`: keyed by `(crdb_region, ycsb_key)`, as a REGIONAL BY ROW table is, with
    /// `crdb_region` the table's last column.
    pub fn usertable(fields: usize, uuid_key: bool, regional: bool) -> Self {
        let key_type = if uuid_key { "UUID" } else { "INT8" };
        let mut columns = vec![col("ycsb_key", key_type, false, "primary")];
        let mut primary_key = vec!["ycsb_key".to_owned()];
        for i in 0..fields {
            columns.push(col(&format!("field{i}"), "STRING", true, "primary"));
        }
        if regional {
            // The last column (CockroachDB adds it to the table), the first of the key.
            columns.push(col(REGION, "ENUM", false, "primary"));
            primary_key.insert(0, REGION.to_owned());
        }
        Self {
            name: "usertable".into(),
            columns,
            primary_key,
            families: vec!["primary".into()],
            version: 1,
        }
    }

    /// A table with three column families; every family has a NOT NULL column, so each change to a
    /// family is a message (an all-NULL family would be a family delete, format spec §5).
    pub fn orders() -> Self {
        let columns = vec![
            col("id", "INT8", false, "primary"),
            col("status", "STRING", false, "primary"),
            col("created", "TIMESTAMPTZ", true, "primary"),
            col("customer", "STRING", false, "details"),
            col("amount", "DECIMAL(12,2)", true, "details"),
            col("note", "STRING", true, "details"),
            col("version", "INT4", false, "audit"),
            col("updated_by", "STRING", true, "audit"),
        ];
        Self {
            name: "orders".into(),
            columns,
            primary_key: vec!["id".into()],
            families: vec!["primary".into(), "details".into(), "audit".into()],
            version: 3,
        }
    }

    /// Every awkward type of format spec §3.6/§4.4, all nullable but the key.
    pub fn kitchen_sink() -> Self {
        let spec = [
            ("id", "UUID"),
            ("b", "BOOL"),
            ("i2", "INT2"),
            ("i4", "INT4"),
            ("i8", "INT8"),
            ("f4", "FLOAT4"),
            ("f8", "FLOAT8"),
            ("dec", "DECIMAL(18,9)"),
            ("dec0", "DECIMAL(10,0)"),
            ("dec_any", "DECIMAL"),
            ("s", "STRING"),
            ("by", "BYTES"),
            ("d", "DATE"),
            ("t", "TIME"),
            ("ts", "TIMESTAMP"),
            ("tstz", "TIMESTAMPTZ"),
            ("iv", "INTERVAL"),
            ("ip", "INET"),
            ("j", "JSONB"),
            ("e", "ENUM"),
            ("ia", "INT8[]"),
            ("sa", "STRING[]"),
        ];
        let columns = spec
            .iter()
            .map(|(n, t)| col(n, t, *n != "id", "primary"))
            .collect();
        Self {
            name: "kitchen_sink".into(),
            columns,
            primary_key: vec!["id".into()],
            families: vec!["primary".into()],
            version: 2,
        }
    }
}

/// The region column CockroachDB adds to a REGIONAL BY ROW table, first in its primary key.
pub const REGION: &str = "crdb_region";

/// The regions a simulated `crdb_region` takes.
pub const REGIONS: [&str; 3] = ["europe-west1", "us-east1", "us-west1"];

fn col(name: &str, sql: &str, nullable: bool, family: &str) -> ColumnDef {
    ColumnDef {
        name: name.into(),
        sql: sql.parse().expect("valid type"),
        nullable,
        family: family.into(),
    }
}

/// A random value of a SQL type.
pub fn random_datum(rng: &mut impl Rng, sql: &SqlType, nullable: bool) -> Datum {
    if nullable && rng.random_bool(0.1) {
        return Datum::Null;
    }
    match sql {
        SqlType::Bool => Datum::Bool(rng.random()),
        SqlType::Int2 => Datum::Int(rng.random::<i16>().into()),
        SqlType::Int4 => Datum::Int(rng.random::<i32>().into()),
        SqlType::Int8 | SqlType::Oid => Datum::Int(if rng.random_bool(0.2) {
            rng.random()
        } else {
            rng.random_range(-1000..1000)
        }),
        // Quarters are exact in binary, so both formats print them identically.
        SqlType::Float4 => Datum::Float(f64::from(rng.random_range(-4000i32..4000)) / 4.0),
        SqlType::Float8 => Datum::Float(match rng.random_range(0..20) {
            0 => f64::NAN,
            1 => f64::INFINITY,
            2 => 100.0,
            3 => 1e-7,
            _ => rng.random_range(-1e6..1e6),
        }),
        SqlType::Decimal {
            precision: Some(p),
            scale,
        } => {
            let max = 10i128.pow((*p).min(18)) - 1;
            Datum::Decimal(values::format_decimal(
                rng.random_range(-max..=max),
                *scale as i8,
            ))
        }
        SqlType::Decimal {
            precision: None, ..
        } => {
            let pick = [
                "NaN",
                "Infinity",
                "-Infinity",
                "4E+2",
                "0.000000000",
                "123456789012345678901234567890.5",
            ];
            Datum::Decimal(if rng.random_bool(0.3) {
                (*pick.choose(rng).expect("non-empty")).to_owned()
            } else {
                values::format_decimal(rng.random_range(-1_000_000..1_000_000), 3)
            })
        }
        SqlType::String => Datum::Text(random_text(rng)),
        SqlType::Bytes => Datum::Bytes((0..rng.random_range(0..8)).map(|_| rng.random()).collect()),
        SqlType::Uuid => Datum::Uuid(rng.random()),
        SqlType::Date => Datum::Date(rng.random_range(-20_000..30_000)),
        SqlType::Time => Datum::Time(rng.random_range(0..86_400_000_000)),
        SqlType::Timestamp | SqlType::TimestampTz => Datum::Timestamp(
            rng.random_range(0i64..4_000_000_000) * 1_000_000 + rng.random_range(0..1_000_000),
        ),
        SqlType::Interval => Datum::Text(
            (*[
                "00:00:00",
                "1 day 02:03:04",
                "1 year 2 mons 3 days 04:05:06.789",
                "-00:00:01.5",
            ]
            .choose(rng)
            .expect("non-empty"))
            .to_owned(),
        ),
        SqlType::Inet => Datum::Text(format!(
            "10.{}.{}.{}",
            rng.random::<u8>(),
            rng.random::<u8>(),
            rng.random::<u8>()
        )),
        SqlType::Jsonb => {
            let v = json!({"n": rng.random_range(0..100), "s": random_text(rng), "tags": ["a", "b"], "z": null});
            Datum::Json(values::crdb_json_text(&v.to_string()).expect("valid JSON"))
        }
        SqlType::Bit => Datum::Text(
            (0..8)
                .map(|_| if rng.random() { '1' } else { '0' })
                .collect(),
        ),
        SqlType::Enum => Datum::Text(
            (*["open", "closed", "pending"]
                .choose(rng)
                .expect("non-empty"))
            .to_owned(),
        ),
        SqlType::TimeTz => Datum::Text("12:34:56+00".into()),
        SqlType::Array(item) => Datum::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_datum(rng, item, true))
                .collect(),
        ),
    }
}

fn random_text(rng: &mut impl Rng) -> String {
    const WORDS: [&str; 12] = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "quote\"d",
        "back\\slash",
        "new\nline",
        "tab\t",
        "café",
        "雪",
        "<&>",
        "x",
    ];
    let n = rng.random_range(1..4);
    (0..n)
        .map(|_| *WORDS.choose(rng).expect("non-empty"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A YCSB-style field value: 100 bytes of printable text (the YCSB default field length).
pub fn ycsb_field(rng: &mut impl Rng) -> Datum {
    Datum::Text(
        (0..100)
            .map(|_| rng.random_range(b'!'..=b'~') as char)
            .collect(),
    )
}

impl Datum {
    /// The value as CockroachDB's JSON encoder writes it (format spec §3.6).
    pub fn write_crdb_json(&self, sql: &SqlType, out: &mut String) {
        match self {
            Datum::Null => out.push_str("null"),
            Datum::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Datum::Int(i) if matches!(sql, SqlType::Oid) => {
                let _ = write!(out, "\"{i}\"");
            }
            Datum::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Datum::Float(f) => out.push_str(&crdb_json_float(*f)),
            Datum::Decimal(d) if matches!(d.as_str(), "NaN" | "Infinity" | "-Infinity") => {
                let _ = write!(out, "\"{d}\"");
            }
            Datum::Decimal(d) => out.push_str(d),
            Datum::Text(s) => values::write_json_string(out, s),
            Datum::Bytes(b) => values::write_json_string(out, &format_bytes_hex(b)),
            Datum::Uuid(u) => values::write_json_string(out, &format_uuid(u)),
            Datum::Date(d) => values::write_json_string(out, &format_date(*d)),
            Datum::Time(t) => values::write_json_string(out, &format_time_micros(*t)),
            Datum::Timestamp(ts) => values::write_json_string(
                out,
                &format_timestamp(*ts, matches!(sql, SqlType::TimestampTz), false),
            ),
            Datum::Json(j) => out.push_str(j),
            Datum::Array(items) => {
                let item_sql = match sql {
                    SqlType::Array(t) => t.as_ref(),
                    other => other,
                };
                out.push('[');
                for (i, d) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    d.write_crdb_json(item_sql, out);
                }
                out.push(']');
            }
        }
    }

    /// The value as CockroachDB's Parquet writer carries text-typed columns (format spec §4.4).
    pub fn parquet_text(&self, sql: &SqlType) -> String {
        match self {
            Datum::Decimal(d) => d.clone(),
            Datum::Text(s) | Datum::Json(s) => s.clone(),
            Datum::Date(d) => format_date(*d),
            Datum::Timestamp(ts) => {
                format_timestamp(*ts, matches!(sql, SqlType::TimestampTz), true)
            }
            other => {
                let mut s = String::new();
                other.write_crdb_json(sql, &mut s);
                s
            }
        }
    }

    /// The canonical JSON of the decoded value (how the connector's Arrow value of the column's
    /// canonical type prints, see `crate::format::canonical`), for ground-truth files.
    pub fn canonical_json(&self, ty: &ColumnType) -> serde_json::Value {
        use serde_json::Value;
        match (self, ty) {
            (Datum::Null, _) => Value::Null,
            (Datum::Bool(b), _) => Value::Bool(*b),
            (Datum::Int(i), _) => json!(i),
            (Datum::Float(f), _) => crate::format::canonical::float_json(*f),
            (Datum::Decimal(d), ColumnType::Decimal(p, s)) => Value::String(
                values::format_decimal(values::parse_decimal(d, *p, *s).expect("decimal fits"), *s),
            ),
            (Datum::Decimal(d), _) => Value::String(d.clone()),
            (Datum::Text(s), _) | (Datum::Json(s), _) => Value::String(s.clone()),
            (Datum::Bytes(b), _) => Value::String(format_bytes_hex(b)),
            (Datum::Uuid(u), _) => Value::String(format_uuid(u)),
            (Datum::Date(d), _) => Value::String(format_date(*d)),
            (Datum::Time(t), _) => Value::String(format_time_micros(*t)),
            (Datum::Timestamp(ts), ColumnType::TimestampTz) => {
                Value::String(crate::format::canonical::timestamp(*ts, true))
            }
            (Datum::Timestamp(ts), _) => {
                Value::String(crate::format::canonical::timestamp(*ts, false))
            }
            (Datum::Array(items), ColumnType::List(item)) => {
                Value::Array(items.iter().map(|d| d.canonical_json(item)).collect())
            }
            (Datum::Array(items), _) => Value::Array(
                items
                    .iter()
                    .map(|d| d.canonical_json(&ColumnType::Text))
                    .collect(),
            ),
        }
    }
}
