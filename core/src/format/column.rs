//! Building canonical Arrow columns from changefeed values.
//!
//! [`ColumnBuilder`] accepts JSON values (raw text, as the NDJSON decoder sees them) and text
//! values (what Parquet carries for decimals, dates and timestamps); [`convert`] turns an array
//! read from Parquet into its canonical type.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Time64MicrosecondType, Time64NanosecondType};
use arrow_array::{Array, ArrayRef, ListArray};
use arrow_buffer::{NullBufferBuilder, OffsetBuffer};
use arrow_schema::{DataType, Field, TimeUnit};
use serde_json::value::RawValue;

use crate::format::types::ColumnType;
use crate::format::values::{self, not_a};

pub use crate::format::values::ValueError;

/// An Arrow builder for one canonical column type.
pub enum ColumnBuilder {
    Boolean(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    Text(StringBuilder),
    Json(StringBuilder),
    Binary(BinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    TimestampTz(TimestampMicrosecondBuilder),
    List {
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
        child: Box<ColumnBuilder>,
        item: ColumnType,
    },
}

impl ColumnBuilder {
    pub fn new(ty: &ColumnType, capacity: usize) -> Self {
        Self::with_bytes(ty, capacity, capacity * 16)
    }

    /// A builder for `capacity` values whose text (for text, JSON and binary columns) takes
    /// about `bytes`: sized once instead of grown by copying.
    pub fn with_bytes(ty: &ColumnType, capacity: usize, bytes: usize) -> Self {
        match ty {
            ColumnType::Boolean => Self::Boolean(BooleanBuilder::with_capacity(capacity)),
            ColumnType::Int32 => Self::Int32(Int32Builder::with_capacity(capacity)),
            ColumnType::Int64 => Self::Int64(Int64Builder::with_capacity(capacity)),
            ColumnType::Float32 => Self::Float32(Float32Builder::with_capacity(capacity)),
            ColumnType::Float64 => Self::Float64(Float64Builder::with_capacity(capacity)),
            ColumnType::Decimal(p, s) => Self::Decimal(
                Decimal128Builder::with_capacity(capacity)
                    .with_data_type(DataType::Decimal128(*p, *s)),
                *p,
                *s,
            ),
            ColumnType::Text => Self::Text(StringBuilder::with_capacity(capacity, bytes)),
            ColumnType::Json => Self::Json(StringBuilder::with_capacity(capacity, bytes)),
            ColumnType::Binary => Self::Binary(BinaryBuilder::with_capacity(capacity, bytes)),
            ColumnType::Date => Self::Date(Date32Builder::with_capacity(capacity)),
            ColumnType::Timestamp => {
                Self::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity))
            }
            ColumnType::TimestampTz => Self::TimestampTz(
                TimestampMicrosecondBuilder::with_capacity(capacity)
                    .with_data_type(ColumnType::TimestampTz.arrow_type()),
            ),
            ColumnType::List(item) => Self::List {
                offsets: vec![0],
                nulls: NullBufferBuilder::new(capacity),
                child: Box::new(Self::new(item, capacity)),
                item: (**item).clone(),
            },
        }
    }

    pub fn append_null(&mut self) {
        match self {
            Self::Boolean(b) => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::Float32(b) => b.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Decimal(b, ..) => b.append_null(),
            Self::Text(b) | Self::Json(b) => b.append_null(),
            Self::Binary(b) => b.append_null(),
            Self::Date(b) => b.append_null(),
            Self::Timestamp(b) | Self::TimestampTz(b) => b.append_null(),
            Self::List { offsets, nulls, .. } => {
                offsets.push(*offsets.last().expect("offsets start at 0"));
                nulls.append_null();
            }
        }
    }

    /// Appends a value given as text (Parquet strings, unescaped JSON strings).
    pub fn append_text(&mut self, text: &str) -> Result<(), ValueError> {
        match self {
            Self::Boolean(b) => b.append_value(match text {
                "true" | "t" => true,
                "false" | "f" => false,
                _ => return Err(not_a(text, "a BOOL")),
            }),
            Self::Int32(b) => {
                b.append_value(text.parse().map_err(|_| not_a(text, "a 32-bit integer"))?)
            }
            Self::Int64(b) => {
                b.append_value(text.parse().map_err(|_| not_a(text, "a 64-bit integer"))?)
            }
            Self::Float32(b) => b.append_value(values::parse_float(text)? as f32),
            Self::Float64(b) => b.append_value(values::parse_float(text)?),
            Self::Decimal(b, p, s) => b.append_value(values::parse_decimal(text, *p, *s)?),
            Self::Text(b) | Self::Json(b) => b.append_value(text),
            Self::Binary(b) => b.append_value(values::parse_bytes_hex(text)?),
            Self::Date(b) => b.append_value(values::parse_date(text)?),
            Self::Timestamp(b) => b.append_value(values::parse_timestamp(text, false)?),
            Self::TimestampTz(b) => b.append_value(values::parse_timestamp(text, true)?),
            Self::List { .. } => return Err(not_a(text, "an array")),
        }
        Ok(())
    }

    /// [`append_json`](Self::append_json) for a JSON string (`raw`, quotes included) known to
    /// hold no escapes: NDJSON's scanner has checked it, so the text between its quotes is
    /// copied (or converted) as it stands instead of being scanned again.
    pub fn append_plain_json_string(&mut self, raw: &str) -> Result<(), ValueError> {
        let inner = &raw[1..raw.len() - 1];
        match self {
            Self::Text(b) => {
                b.append_value(inner);
                Ok(())
            }
            // JSONB prints the string as JSON; a list refuses it: both as from any raw text.
            Self::Json(_) | Self::List { .. } => self.append_json(raw),
            _ => self.append_text(inner),
        }
    }

    /// Appends a JSON value given as its raw text (from an NDJSON `after` object). After an
    /// error the builder may hold part of the value: the caller drops it (the batch is refused).
    pub fn append_json(&mut self, raw: &str) -> Result<(), ValueError> {
        let raw = raw.trim_ascii(); // JSON whitespace is ASCII: no char decoding per value
        if raw == "null" {
            self.append_null();
            return Ok(());
        }
        let first = raw.as_bytes()[0];
        match self {
            // JSONB: the value itself, whatever its JSON kind, as CockroachDB-formatted text.
            Self::Json(b) => b.append_value(values::crdb_json_text(raw)?),
            Self::Text(b) => match first {
                b'"' => {
                    // Decoded straight into the column's buffer; the row is closed after.
                    values::write_json_string_text(raw, b)?;
                    b.append_value("");
                }
                b'{' | b'[' => b.append_value(values::crdb_json_text(raw)?),
                _ => b.append_value(raw),
            },
            Self::List {
                offsets,
                nulls,
                child,
                ..
            } => {
                if first != b'[' {
                    return Err(not_a(raw, "an array"));
                }
                let items: Vec<&RawValue> =
                    serde_json::from_str(raw).map_err(|e| ValueError::Json {
                        what: "array",
                        message: e.to_string(),
                    })?;
                for item in &items {
                    child.append_json(item.get())?;
                }
                let last = *offsets.last().expect("offsets start at 0");
                offsets.push(last + items.len() as i32);
                nulls.append_non_null();
            }
            _ if first == b'"' => self.append_text(&values::json_string(raw)?)?,
            _ => self.append_text(raw)?,
        }
        Ok(())
    }

    pub fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Boolean(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Float32(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Decimal(b, ..) => Arc::new(b.finish()),
            Self::Text(b) | Self::Json(b) => Arc::new(b.finish()),
            Self::Binary(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::Timestamp(b) | Self::TimestampTz(b) => Arc::new(b.finish()),
            Self::List {
                offsets,
                nulls,
                child,
                item,
            } => {
                let values = child.finish();
                let offsets = OffsetBuffer::new(std::mem::replace(offsets, vec![0]).into());
                let field = Arc::new(Field::new("element", item.arrow_type(), true));
                Arc::new(ListArray::new(field, offsets, values, nulls.finish()))
            }
        }
    }
}

/// Converts an array as the Parquet reader delivers it into the canonical `target` type.
/// An error gives the 0-based index of the offending value.
pub fn convert(array: &ArrayRef, target: &ColumnType) -> Result<ArrayRef, (usize, ValueError)> {
    let dt = array.data_type();
    if *dt == target.arrow_type() {
        return Ok(array.clone());
    }
    let per_value = |f: &dyn Fn(usize, &mut ColumnBuilder) -> Result<(), ValueError>| -> Result<ArrayRef, (usize, ValueError)> {
        let mut b = ColumnBuilder::new(target, array.len());
        for i in 0..array.len() {
            if array.is_null(i) {
                b.append_null();
            } else {
                f(i, &mut b).map_err(|e| (i, e))?;
            }
        }
        Ok(b.finish())
    };
    match (dt, target) {
        // A column seen only as NULL in its file: NULLs of the column's type.
        (DataType::Null, _) => Ok(arrow_array::new_null_array(
            &target.arrow_type(),
            array.len(),
        )),
        (DataType::Utf8, _) => {
            let a = array.as_string::<i32>();
            per_value(&|i, b| b.append_text(a.value(i)))
        }
        (DataType::Binary, ColumnType::Text | ColumnType::Json) => {
            let a = array.as_binary::<i32>();
            per_value(&|i, b| {
                b.append_text(
                    std::str::from_utf8(a.value(i))
                        .map_err(|_| not_a(&String::from_utf8_lossy(a.value(i)), "UTF-8 text"))?,
                )
            })
        }
        (DataType::FixedSizeBinary(16), ColumnType::Text) => {
            let a = array.as_fixed_size_binary();
            per_value(&|i, b| b.append_text(values::uuid_text(a.value(i), &mut [0; 36])))
        }
        (DataType::Time64(TimeUnit::Microsecond), ColumnType::Text) => {
            let a = array.as_primitive::<Time64MicrosecondType>();
            per_value(&|i, b| b.append_text(&values::format_time_micros(a.value(i))))
        }
        (DataType::Time64(TimeUnit::Nanosecond), ColumnType::Text) => {
            let a = array.as_primitive::<Time64NanosecondType>();
            per_value(&|i, b| b.append_text(&values::format_time_micros(a.value(i) / 1000)))
        }
        (DataType::List(_), ColumnType::List(item)) => {
            let list = array.as_list::<i32>();
            let values = convert(list.values(), item)?;
            let field = Arc::new(Field::new("element", item.arrow_type(), true));
            Ok(Arc::new(ListArray::new(
                field,
                list.offsets().clone(),
                values,
                list.nulls().cloned(),
            )))
        }
        (from, _)
            if arrow_cast::can_cast_types(from, &target.arrow_type())
                && lossless_cast(from, target) =>
        {
            arrow_cast::cast(array, &target.arrow_type()).map_err(|e| {
                (
                    0,
                    ValueError::Cast {
                        from: from.to_string(),
                        to: format!("{} ({e})", target.delta_type()),
                    },
                )
            })
        }
        (from, _) => Err((
            0,
            ValueError::Cast {
                from: from.to_string(),
                to: target.delta_type().to_string(),
            },
        )),
    }
}

/// Casts that never lose information (a configured type wider than what the file carries).
fn lossless_cast(from: &DataType, to: &ColumnType) -> bool {
    matches!(
        (from, to),
        (
            DataType::Int32,
            ColumnType::Int64 | ColumnType::Float64 | ColumnType::Text
        ) | (DataType::Int64, ColumnType::Text)
            | (DataType::Float32, ColumnType::Float64)
            | (DataType::Boolean, ColumnType::Text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Decimal128Type, Int64Type};

    #[test]
    fn json_values_into_columns() {
        let mut b = ColumnBuilder::new(&ColumnType::Decimal(18, 9), 4);
        b.append_json("3.140000000").unwrap();
        b.append_json("null").unwrap();
        assert!(
            b.append_json("\"NaN\"")
                .unwrap_err()
                .to_string()
                .contains("NaN")
        );
        let a = b.finish();
        assert_eq!(a.as_primitive::<Decimal128Type>().value(0), 3_140_000_000);
        assert!(a.is_null(1));

        let mut b = ColumnBuilder::new(&ColumnType::List(Box::new(ColumnType::Int64)), 2);
        b.append_json("[1, null, 9223372036854775807]").unwrap();
        b.append_json("null").unwrap();
        b.append_json("[]").unwrap();
        let a = b.finish();
        let l = a.as_list::<i32>();
        assert_eq!(l.value(0).as_primitive::<Int64Type>().value(2), i64::MAX);
        assert!(l.value(0).is_null(1));
        assert!(l.is_null(1) && !l.is_null(2) && l.value(2).is_empty());

        let mut b = ColumnBuilder::new(&ColumnType::Json, 2);
        b.append_json(r#"{"color":"red","brand":"Schwinn"}"#)
            .unwrap();
        b.append_json(r#""just text""#).unwrap();
        let a = b.finish();
        assert_eq!(
            a.as_string::<i32>().value(0),
            r#"{"brand": "Schwinn", "color": "red"}"#
        );
        assert_eq!(a.as_string::<i32>().value(1), r#""just text""#);

        let mut b = ColumnBuilder::new(&ColumnType::Binary, 1);
        b.append_json(r#""\\x6869""#).unwrap();
        assert_eq!(b.finish().as_binary::<i32>().value(0), b"hi");
    }
}
