//! Column types: CockroachDB SQL types, and the canonical Arrow/Delta types the connector uses.
//!
//! Both changefeed formats lose type information (JSON has only numbers and strings; Parquet
//! sends dates and timestamps as text and decimals as ASCII under a DECIMAL annotation), so every
//! column is decoded into a [`ColumnType`] chosen by one documented rule: the SQL type from
//! configuration when given, otherwise what the file itself says (see README "Type mapping").

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use arrow_schema::{DataType, Field, TimeUnit};

/// A CockroachDB column type, as written in `CREATE TABLE` (used for configuration hints and by
/// the simulator).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SqlType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    /// `DECIMAL`, `DECIMAL(p)` or `DECIMAL(p,s)`; `None` precision = unconstrained.
    Decimal {
        precision: Option<u32>,
        scale: u32,
    },
    String,
    Bytes,
    Uuid,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    Interval,
    Inet,
    Jsonb,
    Bit,
    Enum,
    Oid,
    Array(Box<SqlType>),
}

/// A SQL type name the connector does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown column type `{0}`")]
pub struct UnknownType(pub String);

impl FromStr for SqlType {
    type Err = UnknownType;
    fn from_str(s: &str) -> Result<Self, UnknownType> {
        let unknown = || UnknownType(s.to_owned());
        let t = s.trim().to_ascii_uppercase();
        if let Some(inner) = t.strip_suffix("[]") {
            return Ok(Self::Array(Box::new(inner.parse().map_err(|_| unknown())?)));
        }
        let (base, args) = match t.split_once('(') {
            Some((b, rest)) => (b.trim(), Some(rest.strip_suffix(')').ok_or_else(unknown)?)),
            None => (t.as_str(), None),
        };
        let ty = match base {
            "BOOL" | "BOOLEAN" => Self::Bool,
            "INT2" | "SMALLINT" => Self::Int2,
            "INT4" => Self::Int4,
            // CockroachDB's INT/INTEGER are 64-bit by default.
            "INT8" | "INT" | "INTEGER" | "BIGINT" => Self::Int8,
            "FLOAT4" | "REAL" => Self::Float4,
            "FLOAT8" | "FLOAT" | "DOUBLE PRECISION" => Self::Float8,
            "DECIMAL" | "NUMERIC" | "DEC" => {
                let nums: Vec<u32> = match args {
                    None => vec![],
                    Some(a) => a
                        .split(',')
                        .map(|n| n.trim().parse().map_err(|_| unknown()))
                        .collect::<Result<_, _>>()?,
                };
                match nums.as_slice() {
                    [] => Self::Decimal {
                        precision: None,
                        scale: 0,
                    },
                    [p] => Self::Decimal {
                        precision: Some(*p),
                        scale: 0,
                    },
                    [p, s] if s <= p => Self::Decimal {
                        precision: Some(*p),
                        scale: *s,
                    },
                    _ => return Err(unknown()),
                }
            }
            "STRING" | "TEXT" | "VARCHAR" | "CHAR" | "CHARACTER" | "CHARACTER VARYING" | "NAME" => {
                Self::String
            }
            "BYTES" | "BYTEA" | "BLOB" => Self::Bytes,
            "UUID" => Self::Uuid,
            "DATE" => Self::Date,
            "TIME" => Self::Time,
            "TIMETZ" => Self::TimeTz,
            "TIMESTAMP" => Self::Timestamp,
            "TIMESTAMPTZ" => Self::TimestampTz,
            "INTERVAL" => Self::Interval,
            "INET" => Self::Inet,
            "JSONB" | "JSON" => Self::Jsonb,
            "BIT" | "VARBIT" => Self::Bit,
            "ENUM" => Self::Enum,
            "OID" => Self::Oid,
            _ => return Err(unknown()),
        };
        // Only the string, bit and decimal types take a length/precision argument.
        if args.is_some() && !matches!(ty, Self::Decimal { .. } | Self::String | Self::Bit) {
            return Err(unknown());
        }
        Ok(ty)
    }
}

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool => f.write_str("BOOL"),
            Self::Int2 => f.write_str("INT2"),
            Self::Int4 => f.write_str("INT4"),
            Self::Int8 => f.write_str("INT8"),
            Self::Float4 => f.write_str("FLOAT4"),
            Self::Float8 => f.write_str("FLOAT8"),
            Self::Decimal {
                precision: None, ..
            } => f.write_str("DECIMAL"),
            Self::Decimal {
                precision: Some(p),
                scale,
            } => write!(f, "DECIMAL({p},{scale})"),
            Self::String => f.write_str("STRING"),
            Self::Bytes => f.write_str("BYTES"),
            Self::Uuid => f.write_str("UUID"),
            Self::Date => f.write_str("DATE"),
            Self::Time => f.write_str("TIME"),
            Self::TimeTz => f.write_str("TIMETZ"),
            Self::Timestamp => f.write_str("TIMESTAMP"),
            Self::TimestampTz => f.write_str("TIMESTAMPTZ"),
            Self::Interval => f.write_str("INTERVAL"),
            Self::Inet => f.write_str("INET"),
            Self::Jsonb => f.write_str("JSONB"),
            Self::Bit => f.write_str("VARBIT"),
            Self::Enum => f.write_str("ENUM"),
            Self::Oid => f.write_str("OID"),
            Self::Array(t) => write!(f, "{t}[]"),
        }
    }
}

impl serde::Serialize for SqlType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SqlType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl SqlType {
    /// The canonical type a column of this SQL type is decoded into (README "Type mapping").
    pub fn column_type(&self) -> ColumnType {
        match self {
            Self::Bool => ColumnType::Boolean,
            Self::Int2 | Self::Int4 => ColumnType::Int32,
            Self::Int8 | Self::Oid => ColumnType::Int64,
            Self::Float4 => ColumnType::Float32,
            Self::Float8 => ColumnType::Float64,
            Self::Decimal {
                precision: Some(p),
                scale,
            } if *p <= 38 => ColumnType::Decimal(*p as u8, *scale as i8),
            // Unconstrained or wider than Delta's 38 digits (and NaN/±Infinity): exact text.
            Self::Decimal { .. } => ColumnType::Text,
            Self::String
            | Self::Uuid
            | Self::Time
            | Self::TimeTz
            | Self::Interval
            | Self::Inet
            | Self::Bit
            | Self::Enum => ColumnType::Text,
            Self::Jsonb => ColumnType::Json,
            Self::Bytes => ColumnType::Binary,
            Self::Date => ColumnType::Date,
            Self::Timestamp => ColumnType::Timestamp,
            Self::TimestampTz => ColumnType::TimestampTz,
            Self::Array(t) => ColumnType::List(Box::new(t.column_type())),
        }
    }
}

/// The canonical column types of a change batch. Each is an Arrow type that Delta (and
/// Databricks Runtime 13.3+) stores natively.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Boolean,
    Int32,
    Int64,
    Float32,
    Float64,
    /// Precision ≤ 38, Arrow `Decimal128`.
    Decimal(u8, i8),
    /// UTF-8 text (also UUID, TIME, INTERVAL, INET, ENUM, unconstrained DECIMAL...).
    Text,
    /// JSON text, formatted as CockroachDB formats JSONB (`{"a": 1}`).
    Json,
    Binary,
    Date,
    /// TIMESTAMP (no zone), microseconds.
    Timestamp,
    /// TIMESTAMPTZ, microseconds, UTC.
    TimestampTz,
    List(Box<ColumnType>),
}

impl ColumnType {
    pub fn arrow_type(&self) -> DataType {
        match self {
            Self::Boolean => DataType::Boolean,
            Self::Int32 => DataType::Int32,
            Self::Int64 => DataType::Int64,
            Self::Float32 => DataType::Float32,
            Self::Float64 => DataType::Float64,
            Self::Decimal(p, s) => DataType::Decimal128(*p, *s),
            Self::Text | Self::Json => DataType::Utf8,
            Self::Binary => DataType::Binary,
            Self::Date => DataType::Date32,
            Self::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Self::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC"))),
            Self::List(t) => DataType::List(Arc::new(Field::new("element", t.arrow_type(), true))),
        }
    }

    /// A CockroachDB SQL spelling that configures this type (`SqlType::column_type` of it
    /// gives it back): what a proposed configuration writes for an inferred column.
    pub fn sql_type(&self) -> String {
        match self {
            Self::Boolean => "BOOL".into(),
            Self::Int32 => "INT4".into(),
            Self::Int64 => "INT8".into(),
            Self::Float32 => "FLOAT4".into(),
            Self::Float64 => "FLOAT8".into(),
            Self::Decimal(p, s) => format!("DECIMAL({p},{s})"),
            Self::Text => "STRING".into(),
            Self::Json => "JSONB".into(),
            Self::Binary => "BYTES".into(),
            Self::Date => "DATE".into(),
            Self::Timestamp => "TIMESTAMP".into(),
            Self::TimestampTz => "TIMESTAMPTZ".into(),
            Self::List(t) => format!("{}[]", t.sql_type()),
        }
    }

    /// The Delta Lake type name (protocol `schemaString` primitive names).
    pub fn delta_type(&self) -> String {
        match self {
            Self::Boolean => "boolean".into(),
            Self::Int32 => "integer".into(),
            Self::Int64 => "long".into(),
            Self::Float32 => "float".into(),
            Self::Float64 => "double".into(),
            Self::Decimal(p, s) => format!("decimal({p},{s})"),
            Self::Text | Self::Json => "string".into(),
            Self::Binary => "binary".into(),
            Self::Date => "date".into(),
            Self::Timestamp => "timestamp_ntz".into(),
            Self::TimestampTz => "timestamp".into(),
            Self::List(t) => format!("array<{}>", t.delta_type()),
        }
    }

    /// Reads the canonical type back from an Arrow type (JSON columns come back as `Text`).
    pub fn from_arrow(dt: &DataType) -> Option<Self> {
        Some(match dt {
            DataType::Boolean => Self::Boolean,
            DataType::Int32 => Self::Int32,
            DataType::Int64 => Self::Int64,
            DataType::Float32 => Self::Float32,
            DataType::Float64 => Self::Float64,
            DataType::Decimal128(p, s) => Self::Decimal(*p, *s),
            DataType::Utf8 => Self::Text,
            DataType::Binary => Self::Binary,
            DataType::Date32 => Self::Date,
            DataType::Timestamp(TimeUnit::Microsecond, None) => Self::Timestamp,
            DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => Self::TimestampTz,
            DataType::List(f) => Self::List(Box::new(Self::from_arrow(f.data_type())?)),
            _ => return None,
        })
    }

    /// The type both `self` and `other` widen to, for JSON columns whose values disagree
    /// across lines or files (an integer column that later shows a fraction becomes double).
    pub fn widen(&self, other: &Self) -> Self {
        use ColumnType::*;
        match (self, other) {
            (a, b) if a == b => a.clone(),
            (Int64, Float64) | (Float64, Int64) => Float64,
            (List(a), List(b)) => List(Box::new(a.widen(b))),
            (Json, _) | (_, Json) => Json,
            _ => Text,
        }
    }
}

/// How the Parquet files write DECIMAL(p, s), decoded without configuration.
///
/// CockroachDB annotates `DECIMAL(p,0)` as `DECIMAL(p,p)` and unconstrained `DECIMAL` with
/// precision 2147483647 (format spec §4.4). An annotation with scale = precision therefore has two
/// readings; the decimal that holds both (`2p` digits, scale `p`) is chosen when it fits in 38
/// digits, exact text otherwise. Configuring the column's SQL type replaces this guess.
pub fn parquet_decimal_type(precision: i32, scale: i32) -> ColumnType {
    match (precision, scale) {
        (p, _) if !(1..=38).contains(&p) => ColumnType::Text,
        (p, s) if s == p => {
            if 2 * p <= 38 {
                ColumnType::Decimal((2 * p) as u8, p as i8)
            } else {
                ColumnType::Text
            }
        }
        (p, s) if (0..p).contains(&s) => ColumnType::Decimal(p as u8, s as i8),
        _ => ColumnType::Text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_type_has_a_sql_spelling_that_gives_it_back() {
        use ColumnType::*;
        for t in [
            Boolean,
            Int32,
            Int64,
            Float32,
            Float64,
            Decimal(12, 2),
            Decimal(38, 0),
            Text,
            Json,
            Binary,
            Date,
            Timestamp,
            TimestampTz,
            List(Box::new(Int64)),
            List(Box::new(Text)),
        ] {
            let sql = t.sql_type();
            let back = sql
                .parse::<SqlType>()
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert_eq!(back.column_type(), t, "{sql}");
        }
    }

    #[test]
    fn sql_type_names_round_trip() {
        for s in [
            "BOOL",
            "INT2",
            "INT4",
            "INT8",
            "FLOAT4",
            "FLOAT8",
            "DECIMAL",
            "DECIMAL(18,9)",
            "STRING",
            "BYTES",
            "UUID",
            "DATE",
            "TIME",
            "TIMETZ",
            "TIMESTAMP",
            "TIMESTAMPTZ",
            "INTERVAL",
            "INET",
            "JSONB",
            "VARBIT",
            "ENUM",
            "OID",
            "INT8[]",
            "STRING[]",
        ] {
            let t: SqlType = s.parse().unwrap();
            assert_eq!(t.to_string(), s);
        }
        assert_eq!(
            "numeric(10)".parse::<SqlType>().unwrap(),
            SqlType::Decimal {
                precision: Some(10),
                scale: 0
            }
        );
        assert_eq!("varchar(20)".parse::<SqlType>().unwrap(), SqlType::String);
        for bad in ["GEOMETRY", "DECIMAL(2,3)", "INT8(3)", "DECIMAL(x)", "MONEY"] {
            assert_eq!(
                bad.parse::<SqlType>().unwrap_err(),
                UnknownType(bad.to_owned())
            );
        }
    }

    #[test]
    fn decimal_annotations() {
        assert_eq!(parquet_decimal_type(18, 9), ColumnType::Decimal(18, 9));
        assert_eq!(parquet_decimal_type(10, 10), ColumnType::Decimal(20, 10));
        assert_eq!(
            parquet_decimal_type(2_147_483_647, 2_147_483_647),
            ColumnType::Text
        );
        assert_eq!(parquet_decimal_type(2_147_483_647, 0), ColumnType::Text);
        assert_eq!(parquet_decimal_type(30, 30), ColumnType::Text);
    }

    #[test]
    fn delta_types() {
        let t = SqlType::Array(Box::new(SqlType::Decimal {
            precision: Some(12),
            scale: 2,
        }))
        .column_type();
        assert_eq!(t.delta_type(), "array<decimal(12,2)>");
        assert_eq!(ColumnType::from_arrow(&t.arrow_type()), Some(t));
        assert_eq!(
            ColumnType::Int64.widen(&ColumnType::Float64),
            ColumnType::Float64
        );
        assert_eq!(ColumnType::Int64.widen(&ColumnType::Text), ColumnType::Text);
    }
}
