//! Key slices: which of `of` slices a change row's key falls into, so that one RESOLVED
//! interval too large for a window (an initial scan is as large as the table) can be applied
//! in several commits, each holding every change of its keys and nothing of the others'.
//!
//! The slice must not depend on how a file happened to type a key value: the key identity
//! ([`super::key_text`]) is decided only after every file of the window has been
//! converted to the layout's types, while a slice is chosen file by file, before. So the hash
//! is taken over a coarser form of each value — numbers, and strings that read as numbers,
//! hash as the same `f64` (`1`, `1.0`, `"1"`, `"1.50"` and `"1.5"` alike) — under which values
//! that are one key are always equal. Different keys may share a slice; one key never spans two.
//! FNV-1a keeps the hash the same in every process and release (a crashed run resumes with the
//! slices it started with).

use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow_schema::{ArrowError, DataType};
use arrow_select::take::take_record_batch;
use serde_json::Value;

use crate::format::batch;
use crate::format::canonical;
use crate::format::decode::kept_by;
use crate::format::hlc::Hlc;
use crate::format::types::ColumnType;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn feed(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(FNV_PRIME);
    }
}

fn feed_number(h: &mut u64, f: f64) {
    // -0 is 0, as in CockroachDB's key encoding.
    let f = if f == 0.0 { 0.0 } else { f };
    feed(h, b"n");
    feed(h, &f.to_bits().to_le_bytes());
}

fn feed_text(h: &mut u64, s: &str) {
    match s.trim().parse::<f64>() {
        Ok(f) if f.is_finite() => feed_number(h, f),
        _ => {
            feed(h, b"s");
            feed(h, s.as_bytes());
        }
    }
}

/// The slice (`0..of`) of row `row`'s key, given the key columns as decoded. A NULL key column
/// goes to slice 0, where the window refuses it with the file and row.
pub fn slice_of(key_columns: &[ArrayRef], row: usize, of: u32) -> u32 {
    if of <= 1 || key_columns.iter().any(|a| a.is_null(row)) {
        return 0;
    }
    let mut h = FNV_OFFSET;
    for a in key_columns {
        match a.data_type() {
            DataType::Int64 => feed_number(&mut h, a.as_primitive::<Int64Type>().value(row) as f64),
            DataType::Int32 => {
                feed_number(&mut h, f64::from(a.as_primitive::<Int32Type>().value(row)))
            }
            DataType::Utf8 => feed_text(&mut h, a.as_string::<i32>().value(row)),
            _ => feed_value(&mut h, &canonical::value(a.as_ref(), row)),
        }
        feed(&mut h, b"|");
    }
    (h % u64::from(of)) as u32
}

/// The slice of a one-column key whose value is the integer `v`: [`slice_of`] of it, without
/// an array (a step splits its probe of the window's keys by slice, see
/// [`crate::plan::KeyProbe::by_slice`]).
pub fn int_slice(v: i64, of: u32) -> u32 {
    one_value_slice(of, |h| feed_number(h, v as f64))
}

/// The slice of a one-column key whose value is the text `s` ([`slice_of`] of it).
pub fn text_slice(s: &str, of: u32) -> u32 {
    one_value_slice(of, |h| feed_text(h, s))
}

fn one_value_slice(of: u32, feed_value: impl FnOnce(&mut u64)) -> u32 {
    if of <= 1 {
        return 0;
    }
    let mut h = FNV_OFFSET;
    feed_value(&mut h);
    feed(&mut h, b"|");
    (h % u64::from(of)) as u32
}

fn feed_value(h: &mut u64, v: &Value) {
    match v {
        Value::Number(n) => feed_number(h, n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => feed_text(h, s),
        other => {
            feed(h, b"j");
            feed(h, other.to_string().as_bytes());
        }
    }
}

/// The Delta file tag ([`SliceTag::NAME`]) on a data file written by one slice of a sliced
/// interval and holding only that slice's keys: a warm step then looks a file up by the
/// window's keys of its slice alone, and skips it when the window has none. A file another
/// writer rewrites loses the tag, and is looked up by every key again; the tag names its own
/// file, so one copied onto another file (a compaction keeping its inputs' tags) is ignored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SliceTag {
    /// The key columns the slice was taken over, in key order.
    pub key: Vec<String>,
    pub index: u32,
    pub of: u32,
    /// The file's path in the table, as its add action has it.
    pub file: String,
}

impl SliceTag {
    pub const NAME: &'static str = "crdb_delta.keySlice";

    /// For `file`, of slice `index` of `of` of a table keyed by `key` of `types`; `None` where
    /// a key column's type is not one whose slice is the same before and after the window
    /// converts it (the window slices rows as decoded, a lookup slices keys converted):
    /// integers and text (UUIDs and ENUMs included).
    pub fn new(
        key: &[String],
        types: &[ColumnType],
        index: u32,
        of: u32,
        file: &str,
    ) -> Option<Self> {
        (of > 1 && !key.is_empty() && Self::stable(types)).then(|| Self {
            key: key.to_vec(),
            index,
            of,
            file: file.to_owned(),
        })
    }

    fn stable(types: &[ColumnType]) -> bool {
        types
            .iter()
            .all(|t| matches!(t, ColumnType::Int32 | ColumnType::Int64 | ColumnType::Text))
    }

    /// The tag's value (JSON).
    pub fn value(&self) -> String {
        serde_json::to_string(self).expect("a tag serialises")
    }

    /// From the tags of the file at `path`, when it has a well-formed one naming that file.
    pub fn from_tags(
        tags: &std::collections::HashMap<String, Option<String>>,
        path: &str,
    ) -> Option<Self> {
        let t: Self = serde_json::from_str(tags.get(Self::NAME)?.as_deref()?).ok()?;
        (t.of > 1 && t.index < t.of && t.file == path).then_some(t)
    }

    /// Whether it describes a file of a table keyed by `key` of `types` now.
    pub fn holds_for(&self, key: &[String], types: &[ColumnType]) -> bool {
        self.key == key && Self::stable(types)
    }
}

/// One batch of a sliced interval's pass cut for the interval's later slices `from..of`: for
/// each, the rows a window of that slice needs ([`crate::apply::Window::with_slice`] drops the
/// others), as a decoder under [`crate::format::decode::SliceFilter`] keeps them
/// ([`crate::format::decode::kept_by`]): rows of its key slice, every row outside the interval
/// `(lo, hi]`, and the batch's first row inside it.
/// Slices with no such row are left out. A batch whose key columns or timestamp cannot be
/// read goes whole to every slice (their windows then refuse it as they would have).
pub fn split_for_slices(
    batch: &RecordBatch,
    key: &[String],
    lo: Option<Hlc>,
    hi: Hlc,
    from: u32,
    of: u32,
) -> Result<Vec<(u32, RecordBatch)>, ArrowError> {
    let whole = || (from..of).map(|s| (s, batch.clone())).collect();
    let keys: Option<Vec<ArrayRef>> = key
        .iter()
        .map(|k| batch.column_by_name(k).cloned())
        .collect();
    let updated = batch
        .column_by_name(batch::UPDATED)
        .and_then(|c| c.as_primitive_opt::<Decimal128Type>());
    let (Some(keys), Some(updated)) = (keys, updated) else {
        return Ok(whole());
    };
    let (lo, hi) = (lo.map(Hlc::to_decimal_i128), hi.to_decimal_i128());
    let mut rows: Vec<Vec<u32>> = vec![Vec::new(); (of - from.min(of)) as usize];
    let slices = (0..batch.num_rows()).map(|r| {
        let u = if updated.is_null(r) {
            i128::MIN
        } else {
            updated.value(r)
        };
        super::window::inside(u, lo, hi).then(|| slice_of(&keys, r, of))
    });
    for (r, kept) in kept_by(slices).enumerate() {
        match kept {
            None => rows.iter_mut().for_each(|v| v.push(r as u32)),
            Some(s) => {
                if let Some(v) = s.checked_sub(from).and_then(|i| rows.get_mut(i as usize)) {
                    v.push(r as u32);
                }
            }
        }
    }
    rows.into_iter()
        .zip(from..of)
        .filter(|(v, _)| !v.is_empty())
        .map(|(v, s)| {
            let b = if v.len() == batch.num_rows() {
                batch.clone()
            } else {
                take_record_batch(batch, &UInt32Array::from(v))?
            };
            Ok((s, b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Float64Array, Int32Array, Int64Array, StringArray};

    use super::*;

    fn one(a: ArrayRef, of: u32) -> Vec<u32> {
        (0..a.len())
            .map(|r| slice_of(std::slice::from_ref(&a), r, of))
            .collect()
    }

    #[test]
    fn one_key_one_slice_whatever_the_file_typed_it_as() {
        let ints = one(Arc::new(Int64Array::from(vec![1, 2, 300, -7, 0])), 7);
        let int32 = one(Arc::new(Int32Array::from(vec![1, 2, 300, -7, 0])), 7);
        let floats = one(
            Arc::new(Float64Array::from(vec![1.0, 2.0, 300.0, -7.0, -0.0])),
            7,
        );
        let text = one(
            Arc::new(StringArray::from(vec!["1", "2.0", "300", "-7", "0"])),
            7,
        );
        assert_eq!(ints, int32);
        assert_eq!(ints, floats);
        assert_eq!(ints, text);
        let decimals = one(Arc::new(StringArray::from(vec!["1.50", "1.5"])), 1000);
        assert_eq!(decimals[0], decimals[1]);
    }

    #[test]
    fn keys_spread_over_every_slice_and_composites_use_every_column() {
        let n = 10_000;
        let a: ArrayRef = Arc::new(StringArray::from(
            (0..n).map(|i| format!("user{i:08}")).collect::<Vec<_>>(),
        ));
        let mut counts = [0u32; 8];
        for r in 0..n {
            counts[slice_of(std::slice::from_ref(&a), r, 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 1000 && c < 1500), "{counts:?}");
        // Same first column, different second: not all in one slice.
        let first: ArrayRef = Arc::new(StringArray::from(vec!["eu"; 64]));
        let second: ArrayRef = Arc::new(Int64Array::from((0..64).collect::<Vec<i64>>()));
        let slices: std::collections::BTreeSet<u32> = (0..64)
            .map(|r| slice_of(&[first.clone(), second.clone()], r, 4))
            .collect();
        assert_eq!(slices.len(), 4);
    }

    /// A crashed run resumes with the slices it started with, possibly in a newer release:
    /// the function is fixed (values computed independently, FNV-1a in Python).
    #[test]
    fn the_slice_of_a_key_never_changes() {
        let int: ArrayRef = Arc::new(Int64Array::from(vec![42]));
        let text: ArrayRef = Arc::new(StringArray::from(vec!["user1"]));
        assert_eq!(
            slice_of(std::slice::from_ref(&int), 0, 1 << 30),
            676_143_440
        );
        assert_eq!(slice_of(&[int], 0, 1000), 128);
        assert_eq!(slice_of(&[text], 0, 1000), 776);
    }

    /// A step splits its probe by these; a table file was tagged by `slice_of` over rows.
    #[test]
    fn one_value_slices_are_slice_of() {
        let ints = [0, 1, -7, 42, i64::MAX, i64::MIN, 1 << 53];
        let texts = [
            "user1",
            "1.50",
            " 7 ",
            "8f0c2a4e-0000-4000-8000-000000000000",
            "",
            "é",
        ];
        for of in [1, 2, 7, 1000, 1 << 30] {
            let a: ArrayRef = Arc::new(Int64Array::from(ints.to_vec()));
            for (r, &v) in ints.iter().enumerate() {
                assert_eq!(int_slice(v, of), slice_of(std::slice::from_ref(&a), r, of));
            }
            let a: ArrayRef = Arc::new(StringArray::from(texts.to_vec()));
            for (r, &v) in texts.iter().enumerate() {
                assert_eq!(text_slice(v, of), slice_of(std::slice::from_ref(&a), r, of));
            }
        }
    }

    #[test]
    fn a_slice_tag_reads_back_and_holds_only_for_its_key() {
        use std::collections::HashMap;
        let key = vec!["crdb_region".to_owned(), "id".to_owned()];
        let types = [ColumnType::Text, ColumnType::Int64];
        let tag = SliceTag::new(&key, &types, 3, 18, "part-1.parquet").unwrap();
        let tags = HashMap::from([(SliceTag::NAME.to_owned(), Some(tag.value()))]);
        let back = SliceTag::from_tags(&tags, "part-1.parquet").unwrap();
        assert_eq!(back, tag);
        assert_eq!(
            SliceTag::from_tags(&tags, "part-2.parquet"),
            None,
            "on another file"
        );
        assert!(back.holds_for(&key, &types));
        assert!(!back.holds_for(&key[1..], &types[1..]), "another key");
        assert!(!back.holds_for(&key, &[ColumnType::Text, ColumnType::Timestamp]));
        // Types whose converted text may slice apart from their decoded form: no tag.
        let float = [ColumnType::Text, ColumnType::Float64];
        assert_eq!(SliceTag::new(&key, &float, 0, 2, "f"), None);
        assert_eq!(SliceTag::new(&key, &types, 0, 1, "f"), None, "one slice");
        let read = |v: &str| {
            SliceTag::from_tags(
                &HashMap::from([(SliceTag::NAME.to_owned(), Some(v.to_owned()))]),
                "f",
            )
        };
        assert!(read(r#"{"key":["id"],"index":3,"of":4,"file":"f"}"#).is_some());
        assert_eq!(read(r#"{"key":["id"],"index":4,"of":4,"file":"f"}"#), None);
        assert_eq!(read("3/18"), None);
    }

    #[test]
    fn null_keys_go_to_slice_zero() {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![None, Some(5)]));
        assert_eq!(slice_of(&[a], 0, 9), 0);
    }

    /// Each later slice gets the rows of its keys, every row outside the interval and the
    /// batch's first row inside it; slices with none of them are left out; a batch without its
    /// key column goes whole to every slice.
    #[test]
    fn a_batch_is_split_into_what_each_later_slice_keeps() {
        use arrow_array::Decimal128Array;
        use arrow_schema::{Field, Schema};
        let (lo, hi) = (
            Hlc::parse_decimal("10.0000000000").unwrap(),
            Hlc::parse_decimal("20.0000000000").unwrap(),
        );
        let at = |t: &str| Hlc::parse_decimal(t).unwrap().to_decimal_i128();
        let keys: Vec<i64> = (0..40).collect();
        // Row 0 outside (at lo), rows 1.. inside, row 39 past hi.
        let times: Vec<i128> = (0..40)
            .map(|r| match r {
                0 => at("10.0000000000"),
                39 => at("21.0000000000"),
                _ => at("15.0000000000"),
            })
            .collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new(batch::UPDATED, DataType::Decimal128(38, 10), false),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(keys.clone())),
                Arc::new(
                    Decimal128Array::from(times)
                        .with_precision_and_scale(38, 10)
                        .unwrap(),
                ),
            ],
        )
        .unwrap();
        let key = vec!["id".to_owned()];
        let parts = split_for_slices(&b, &key, Some(lo), hi, 2, 5).unwrap();
        let ids = |b: &RecordBatch| -> Vec<i64> {
            b.column(0).as_primitive::<Int64Type>().values().to_vec()
        };
        let id_col: ArrayRef = Arc::new(Int64Array::from(keys));
        let slice = |r: usize| slice_of(std::slice::from_ref(&id_col), r, 5);
        assert_eq!(parts.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [2, 3, 4]);
        for (s, part) in &parts {
            let want: Vec<i64> = (0..40)
                .filter(|&r| r == 0 || r == 1 || r == 39 || slice(r as usize) == *s)
                .collect();
            assert_eq!(ids(part), want, "slice {s}");
        }
        // Earlier slices' rows are in none of them.
        let all: std::collections::BTreeSet<i64> = parts.iter().flat_map(|(_, p)| ids(p)).collect();
        assert!((2..39).all(|r| all.contains(&r) == (slice(r as usize) >= 2)));
        // Without the key column: whole, to every slice.
        let parts = split_for_slices(&b, &["nope".to_owned()], Some(lo), hi, 3, 5).unwrap();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|(_, p)| p.num_rows() == 40));
    }
}
