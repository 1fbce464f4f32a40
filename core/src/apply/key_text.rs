//! A row's key identity: the JSON array of its key values, `[v1,v2]`, exactly as serde_json
//! prints the array of their canonical values ([`canonical::value`]).
//!
//! Identity follows the key column's type in the layout (the Delta table's type), never how a
//! file happened to write the value: `Window::finish` converts every batch to those types
//! first. So an INT key written `1` in one event and `"1"` in another (or inferred as a number
//! from one file and as text from another, which widens the column to STRING) is one key:
//! compared by integer value in an INT column, by the text `1` in a STRING column. FLOAT keys
//! compare by value with `-0` equal to `0`, as in CockroachDB's key encoding. A JSONB key keeps
//! JSON's distinction between `1` and `"1"`.
//!
//! Every change of a window and every table row probed by text gets one, so the common key
//! types (integers, strings and UUIDs) are printed straight into a reused buffer; the others
//! go through a JSON value.

use std::fmt::Write as _;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;

use crate::format::canonical;

/// The key text of `row`, written into `out` (cleared first, so a loop over rows allocates
/// once); `Err(i)` when key column `i` is NULL there.
pub(crate) fn key_text_into(
    columns: &[ArrayRef],
    row: usize,
    out: &mut String,
) -> Result<(), usize> {
    out.clear();
    out.push('[');
    for (i, a) in columns.iter().enumerate() {
        if a.is_null(row) {
            return Err(i);
        }
        if i > 0 {
            out.push(',');
        }
        match a.data_type() {
            DataType::Int64 => push_int(out, a.as_primitive::<Int64Type>().value(row)),
            DataType::Int32 => push_int(out, a.as_primitive::<Int32Type>().value(row).into()),
            DataType::Utf8 => push_json_string(out, a.as_string::<i32>().value(row)),
            DataType::Float32 | DataType::Float64 => {
                let mut v = canonical::value(a.as_ref(), row);
                if v.as_f64() == Some(0.0) {
                    v = canonical::float_json(0.0);
                }
                let _ = write!(out, "{v}");
            }
            _ => {
                let _ = write!(out, "{}", canonical::value(a.as_ref(), row));
            }
        }
    }
    out.push(']');
    Ok(())
}

/// A key text's 64-bit hash, the same in every process run (a fixed seed): what the key
/// index sorts keys of several columns (or of other types) by. Equal texts hash equal; a
/// collision only makes the index hand the merge a row whose key it then does not match.
pub fn key_hash(text: &str) -> u64 {
    use std::hash::BuildHasher as _;
    foldhash::fast::FixedState::with_seed(0).hash_one(text)
}

/// The key text of a one-integer key, `[v]`.
pub(crate) fn int_key_text(v: i64) -> String {
    let mut out = String::with_capacity(22);
    out.push('[');
    push_int(&mut out, v);
    out.push(']');
    out
}

/// The key text of a one-string key, `["v"]`.
pub(crate) fn string_key_text(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 4);
    out.push('[');
    push_json_string(&mut out, v);
    out.push(']');
    out
}

/// `v`'s decimal digits, as `Display` (and serde_json) print them.
fn push_int(out: &mut String, v: i64) {
    let mut buf = [0u8; 20];
    let n = crate::format::values::digits_before(&mut buf, 20, v.unsigned_abs());
    if v < 0 {
        out.push('-');
    }
    out.push_str(std::str::from_utf8(&buf[n..]).expect("digits are ASCII"));
}

/// `s` as a JSON string, escaped as serde_json escapes it: text needing no escape (the common
/// case: UUIDs, names) is copied as is.
fn push_json_string(out: &mut String, s: &str) {
    if crate::format::values::plain_run(s.as_bytes()) < s.len() {
        let _ = write!(out, "{}", serde_json::Value::from(s));
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{BooleanArray, Float64Array, Int32Array, Int64Array, StringArray};
    use serde_json::Value;

    use super::*;

    /// The key text as first defined: the JSON array of canonical values, printed by serde_json.
    fn by_values(columns: &[ArrayRef], row: usize) -> String {
        let values: Vec<Value> = columns
            .iter()
            .map(|a| {
                let v = canonical::value(a.as_ref(), row);
                let float = matches!(a.data_type(), DataType::Float32 | DataType::Float64);
                if float && v.as_f64() == Some(0.0) {
                    canonical::float_json(0.0)
                } else {
                    v
                }
            })
            .collect();
        Value::Array(values).to_string()
    }

    #[test]
    fn prints_what_serde_json_prints_for_every_common_type() {
        let texts = [
            "plain",
            "",
            "quote \" here",
            "back\\slash",
            "tab\tnew\nline\r",
            "\u{1}\u{1f}\u{7f}",
            "ünïcødé ✓ 😀",
            "0b5f3c1e-2a4d-4e8f-9c7b-1d2e3f405162",
        ];
        let n = texts.len();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(texts.to_vec())),
            Arc::new(Int64Array::from(vec![
                i64::MIN,
                -1,
                0,
                7,
                42,
                1 << 40,
                i64::MAX,
                -90_000,
            ])),
            Arc::new(Int32Array::from(vec![
                i32::MIN,
                -5,
                0,
                1,
                99,
                100_000,
                i32::MAX,
                -1,
            ])),
            Arc::new(Float64Array::from(vec![
                -0.0,
                0.0,
                1.5,
                f64::NAN,
                f64::INFINITY,
                -2e300,
                3.0,
                -0.0,
            ])),
            Arc::new(BooleanArray::from(
                (0..n).map(|i| i % 2 == 0).collect::<Vec<_>>(),
            )),
        ];
        let mut buf = String::new();
        for row in 0..n {
            key_text_into(&columns, row, &mut buf).unwrap();
            assert_eq!(buf, by_values(&columns, row), "row {row}");
            for one in &columns {
                let one = std::slice::from_ref(one);
                key_text_into(one, row, &mut buf).unwrap();
                assert_eq!(buf, by_values(one, row), "row {row}");
            }
        }
    }

    #[test]
    fn a_null_key_column_is_named_by_its_index() {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(StringArray::from(vec![None::<&str>])),
        ];
        let mut buf = String::new();
        assert_eq!(key_text_into(&columns, 0, &mut buf), Err(1));
    }
}
