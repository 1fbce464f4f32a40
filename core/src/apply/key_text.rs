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

/// Appends the key text of a one-integer key, `[v]`.
pub(crate) fn push_int_key_text(out: &mut String, v: i64) {
    out.push('[');
    push_int(out, v);
    out.push(']');
}

/// Appends the key text of a one-string key, `["v"]`.
pub(crate) fn push_string_key_text(out: &mut String, v: &str) {
    out.push('[');
    push_json_string(out, v);
    out.push(']');
}

/// Key id → key text, every text in one buffer: a `String` and an `Arc<str>` per key were two
/// allocations per changed key a step, freed while other threads allocated. Also a key probe's
/// sorted texts ([`crate::plan::KeyProbe`]), for the same reason.
#[derive(Debug, Default, Clone)]
pub(crate) struct KeyTexts {
    text: String,
    ends: Vec<usize>,
}

impl KeyTexts {
    pub(crate) fn with_capacity(keys: usize, bytes: usize) -> Self {
        Self {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(keys),
        }
    }

    /// Appends the next id's text, written by `write`.
    pub(crate) fn push_with(&mut self, write: impl FnOnce(&mut String)) {
        write(&mut self.text);
        self.ends.push(self.text.len());
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn get(&self, id: usize) -> &str {
        let start = id.checked_sub(1).map_or(0, |i| self.ends[i]);
        &self.text[start..self.ends[id]]
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).map(|id| self.get(id))
    }
}

/// Key text → key id over [`KeyTexts`], by the text's hash: no copy of the texts (a map keyed
/// by text cost an allocation per changed key a step). Texts that share a hash (possible,
/// never seen) are kept by text, in `shared`.
#[derive(Debug)]
pub(crate) struct KeyIds {
    by_hash: foldhash::HashMap<u64, u32>,
    shared: foldhash::HashMap<String, u32>,
    hash: fn(&str) -> u64,
}

/// In `by_hash`: the texts of this hash are in `shared`.
const SHARED: u32 = u32::MAX;

impl KeyIds {
    pub(crate) fn new(texts: &KeyTexts) -> Self {
        Self::with_hash(texts, key_hash)
    }

    fn with_hash(texts: &KeyTexts, hash: fn(&str) -> u64) -> Self {
        let mut by_hash =
            foldhash::HashMap::with_capacity_and_hasher(texts.len(), Default::default());
        let mut shared = foldhash::HashMap::default();
        for (id, text) in texts.iter().enumerate() {
            let id = id as u32;
            match by_hash.entry(hash(text)) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(id);
                }
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    let other = std::mem::replace(e.get_mut(), SHARED);
                    if other != SHARED {
                        shared.insert(texts.get(other as usize).to_owned(), other);
                    }
                    shared.insert(text.to_owned(), id);
                }
            }
        }
        Self {
            by_hash,
            shared,
            hash,
        }
    }

    /// The id of key text `text` among `texts` (those it was built from).
    pub(crate) fn get(&self, texts: &KeyTexts, text: &str) -> Option<u32> {
        match *self.by_hash.get(&(self.hash)(text))? {
            SHARED => self.shared.get(text).copied(),
            id => (texts.get(id as usize) == text).then_some(id),
        }
    }
}

impl FromIterator<std::sync::Arc<str>> for KeyTexts {
    fn from_iter<I: IntoIterator<Item = std::sync::Arc<str>>>(texts: I) -> Self {
        let mut out = Self::default();
        for t in texts {
            out.push_with(|s| s.push_str(&t));
        }
        out
    }
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

    #[test]
    fn key_texts_are_found_by_id_in_their_one_buffer() {
        let mut texts = KeyTexts::with_capacity(0, 0);
        texts.push_with(|s| push_int_key_text(s, -7));
        texts.push_with(|s| push_string_key_text(s, "a\"b"));
        texts.push_with(|s| push_int_key_text(s, 0));
        assert_eq!(texts.len(), 3);
        assert_eq!(texts.get(0), "[-7]");
        assert_eq!(texts.get(1), r#"["a\"b"]"#);
        assert_eq!(
            texts.iter().collect::<Vec<_>>(),
            ["[-7]", r#"["a\"b"]"#, "[0]"]
        );
        let copied: KeyTexts = texts.iter().map(Arc::<str>::from).collect();
        assert_eq!(
            copied.iter().collect::<Vec<_>>(),
            texts.iter().collect::<Vec<_>>()
        );
        // By hash, and by text where texts share a hash (every text, under a constant one).
        for ids in [KeyIds::new(&texts), KeyIds::with_hash(&texts, |_| 7)] {
            for (id, text) in texts.iter().enumerate() {
                assert_eq!(ids.get(&texts, text), Some(id as u32), "{text}");
            }
            assert_eq!(ids.get(&texts, "[8]"), None);
        }
        let one = KeyIds::with_hash(&texts, |t| u64::from(t == "[0]"));
        assert_eq!(one.get(&texts, "[0]"), Some(2));
        assert_eq!(one.get(&texts, "[-7]"), Some(0));
        assert_eq!(
            one.get(&texts, "[9]"),
            None,
            "same hash as two others, another text"
        );
    }
}
