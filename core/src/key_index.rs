//! A table file's key column, sorted, with each row's position in the file: what a step looks
//! the window's keys up in instead of fetching and decoding the file's key column again.
//!
//! Ten thousand random keys fall in the key range of every file of a large table, so key-range
//! pruning leaves every file a candidate and each step would read the whole key column (124 MB
//! at 20M integer keys). A file's bytes never change once written (Delta adds files under new
//! names), so what it holds is learned once: the lookup costs the window's keys times the
//! logarithm of the file's rows, and only the rows it finds are handed to the merge, which
//! still matches keys exactly. Deletion vectors change between steps, so they are applied at
//! each lookup, never stored.
//!
//! Single-column keys of integers or text (UUIDs included) only: the index is the whole probe
//! of such a key, so the merge's input is built from it without reading the file.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{ArrowError, DataType, FieldRef, Schema};

use crate::deletion_vector::DeletionVector;
use crate::plan::KeyProbe;

/// One file's key column, sorted by key (ties by position).
#[derive(Debug)]
pub struct FileKeys {
    field: FieldRef,
    keys: Keys,
    /// The position in the file of each key's row.
    rows: Vec<u32>,
}

#[derive(Debug)]
enum Keys {
    Ints(Vec<i64>),
    /// Sorted bytewise, as [`KeyProbe`]'s strings are.
    Strings(StringArray),
}

impl FileKeys {
    /// From the key column of every row of a file, in file order (`columns`: one array per
    /// decoded batch). `None` when it cannot be indexed: another type, a null key, or more rows
    /// than positions of 32 bits.
    pub fn build(field: FieldRef, columns: &[ArrayRef]) -> Option<Self> {
        let total: usize = columns.iter().map(|c| c.len()).sum();
        u32::try_from(total).ok()?;
        if columns
            .iter()
            .any(|c| c.null_count() > 0 || c.data_type() != field.data_type())
        {
            return None;
        }
        let (keys, rows) = match field.data_type() {
            DataType::Int64 | DataType::Int32 => {
                let mut pairs: Vec<(i64, u32)> = Vec::with_capacity(total);
                for c in columns {
                    let at = pairs.len() as u32;
                    match field.data_type() {
                        DataType::Int64 => {
                            pairs.extend(ints::<Int64Array>(c)?.values().iter().copied().zip(at..))
                        }
                        _ => pairs.extend(
                            ints::<Int32Array>(c)?
                                .values()
                                .iter()
                                .map(|&v| i64::from(v))
                                .zip(at..),
                        ),
                    }
                }
                pairs.sort_unstable();
                let (mut keys, mut rows): (Vec<i64>, Vec<u32>) = pairs.into_iter().unzip();
                keys.shrink_to_fit();
                rows.shrink_to_fit();
                (Keys::Ints(keys), rows)
            }
            DataType::Utf8 => {
                let arrays: Vec<&StringArray> = columns
                    .iter()
                    .map(|c| c.as_any().downcast_ref::<StringArray>())
                    .collect::<Option<_>>()?;
                let mut order: Vec<(&str, u32)> = Vec::with_capacity(total);
                for a in &arrays {
                    let at = order.len() as u32;
                    order.extend(a.iter().map(|v| v.unwrap_or_default()).zip(at..));
                }
                order.sort_unstable();
                let keys: StringArray = order.iter().map(|(k, _)| Some(*k)).collect();
                let rows: Vec<u32> = order.into_iter().map(|(_, r)| r).collect();
                (Keys::Strings(keys), rows)
            }
            _ => return None,
        };
        Some(Self { field, keys, rows })
    }

    /// Rows indexed.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Memory held, in bytes: what a cache of these is budgeted by.
    pub fn bytes(&self) -> u64 {
        let keys = match &self.keys {
            Keys::Ints(k) => k.capacity() * 8,
            Keys::Strings(k) => k.get_array_memory_size(),
        };
        (keys + self.rows.capacity() * 4) as u64
    }

    /// Whether the file's key column is of this field (name and type): an index learned under
    /// another layout is not used.
    pub fn is_of(&self, field: &str) -> bool {
        self.field.name() == field
    }

    /// The rows holding one of the window's keys that `dv` does not hide: a batch of their key
    /// column (the field the index was built from) and their positions in the file, ascending.
    /// `None` when the probe's keys are not of the index's kind (they are then not looked up).
    pub fn lookup(
        &self,
        probe: &KeyProbe,
        dv: &DeletionVector,
    ) -> Option<Result<(RecordBatch, Vec<u64>), ArrowError>> {
        // (position, index into the sorted keys) of every match.
        let mut found: Vec<(u32, usize)> = Vec::new();
        match (&self.keys, probe.ints(), probe.strings()) {
            (Keys::Ints(keys), Some(wanted), _) => {
                equal_ranges(keys.len(), wanted, |i| keys[i], &mut found, &self.rows)
            }
            (Keys::Strings(keys), _, Some(wanted)) => {
                let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
                equal_ranges(
                    keys.len(),
                    &wanted,
                    |i| keys.value(i),
                    &mut found,
                    &self.rows,
                )
            }
            _ => return None,
        }
        found.retain(|&(row, _)| !dv.contains(u64::from(row)));
        found.sort_unstable();
        let column: ArrayRef = match (&self.keys, self.field.data_type()) {
            (Keys::Ints(k), DataType::Int32) => Arc::new(Int32Array::from_iter_values(
                found.iter().map(|&(_, i)| k[i] as i32),
            )),
            (Keys::Ints(k), _) => Arc::new(Int64Array::from_iter_values(
                found.iter().map(|&(_, i)| k[i]),
            )),
            (Keys::Strings(k), _) => Arc::new(StringArray::from_iter_values(
                found.iter().map(|&(_, i)| k.value(i)),
            )),
        };
        let schema = Arc::new(Schema::new(vec![self.field.clone()]));
        Some(
            RecordBatch::try_new(schema, vec![column])
                .map(|b| (b, found.iter().map(|&(r, _)| u64::from(r)).collect())),
        )
    }
}

fn ints<T: 'static>(c: &ArrayRef) -> Option<&T> {
    c.as_any().downcast_ref::<T>()
}

/// For each wanted key (sorted), every index of a sorted key column equal to it: a binary
/// search from where the previous key's search ended, so the window's keys cost their number
/// times the logarithm of the file's rows.
fn equal_ranges<K: Ord + Copy>(
    len: usize,
    wanted: &[K],
    key: impl Fn(usize) -> K,
    found: &mut Vec<(u32, usize)>,
    rows: &[u32],
) {
    if len == 0 {
        return;
    }
    let (lo, hi) = (key(0), key(len - 1));
    let first = wanted.partition_point(|w| *w < lo);
    let mut from = 0usize;
    let mut last = None;
    for &w in &wanted[first..] {
        if w > hi {
            break;
        }
        // A key wanted twice (the first column of composite keys repeats) is found once.
        if last.replace(w) == Some(w) {
            continue;
        }
        let mut i = from + partition(len - from, |j| key(from + j) < w);
        from = i;
        while i < len && key(i) == w {
            found.push((rows[i], i));
            i += 1;
        }
    }
}

/// The first index in `0..len` where `less` is false (`less` is true then false).
fn partition(len: usize, less: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0usize, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if less(mid) { lo = mid + 1 } else { hi = mid }
    }
    lo
}
