//! Canonical JSON of change-batch values: one printable form per canonical type, shared by the
//! simulator's ground truth, the `inspect` command and the tests that compare them (also from
//! Python readers of the Delta tables).
//!
//! Numbers print as JSON numbers (NaN/±Infinity as strings); decimals, dates, timestamps
//! (`2019-01-02T03:04:05.5`, zoned with `Z`) and `\x`-hex binary as strings; lists as arrays.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int32Type, Int64Type,
    TimestampMicrosecondType,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use serde_json::{Map, Value, json};

use crate::format::values;

pub fn float_json(f: f64) -> Value {
    if f.is_nan() {
        json!("NaN")
    } else if f.is_infinite() {
        json!(if f > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        json!(f)
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]` (+`Z` when zoned).
pub fn timestamp(micros: i64, zoned: bool) -> String {
    values::format_timestamp(micros, zoned, false)
}

/// The canonical JSON of one value of an Arrow array.
pub fn value(array: &dyn Array, i: usize) -> Value {
    if array.is_null(i) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Boolean => json!(array.as_boolean().value(i)),
        DataType::Int32 => json!(array.as_primitive::<Int32Type>().value(i)),
        DataType::Int64 => json!(array.as_primitive::<Int64Type>().value(i)),
        DataType::Float32 => float_json(f64::from(array.as_primitive::<Float32Type>().value(i))),
        DataType::Float64 => float_json(array.as_primitive::<Float64Type>().value(i)),
        DataType::Decimal128(_, s) => json!(values::format_decimal(
            array.as_primitive::<Decimal128Type>().value(i),
            *s
        )),
        DataType::Utf8 => json!(array.as_string::<i32>().value(i)),
        DataType::Binary => json!(values::format_bytes_hex(array.as_binary::<i32>().value(i))),
        DataType::Date32 => json!(values::format_date(
            array.as_primitive::<Date32Type>().value(i)
        )),
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            json!(timestamp(
                array.as_primitive::<TimestampMicrosecondType>().value(i),
                tz.is_some()
            ))
        }
        DataType::List(_) => {
            let items = array.as_list::<i32>().value(i);
            Value::Array((0..items.len()).map(|j| value(items.as_ref(), j)).collect())
        }
        other => json!(format!("<{other}>")),
    }
}

/// Every row of a batch as a JSON object of the named columns (all columns when `columns` is None).
pub fn rows(batch: &RecordBatch, columns: Option<&[String]>) -> Vec<Map<String, Value>> {
    let schema = batch.schema();
    let picked: Vec<usize> = match columns {
        Some(cols) => cols
            .iter()
            .filter_map(|c| schema.index_of(c).ok())
            .collect(),
        None => (0..schema.fields().len()).collect(),
    };
    (0..batch.num_rows())
        .map(|r| {
            picked
                .iter()
                .map(|&c| {
                    (
                        schema.field(c).name().clone(),
                        value(batch.column(c).as_ref(), r),
                    )
                })
                .collect()
        })
        .collect()
}
