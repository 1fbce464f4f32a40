//! A window: every change row of one table with `lo < updated ≤ hi` (one RESOLVED step),
//! gathered file by file, then merged into a [`ChangeLog`].

use std::hash::Hash;
use std::sync::{Arc, OnceLock};

use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, Int64Type};
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, new_null_array};
use arrow_schema::{ArrowError, DataType};
use arrow_select::filter::filter_record_batch;

use super::change_log::{Change, ChangeLog};
use super::key_text::{KeyTexts, key_text_into, push_int_key_text, push_string_key_text};
use super::{ChangeError, Layout};
use crate::format::batch::{self, Op};
use crate::format::column;
use crate::format::hlc::Hlc;
use crate::format::types::ColumnType;

/// One decoded batch kept for the window, with its columns aligned to the layout.
pub(crate) struct Stored {
    batch: RecordBatch,
    pub(crate) file: Arc<str>,
    /// Layout column → batch column.
    cols: Vec<Option<usize>>,
    /// Layout columns finally cast to the layout type (filled by `finish`).
    pub(crate) arrays: Vec<Option<ArrayRef>>,
}

/// One row of one column family: what a file said about one (key, HLC).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frag {
    pub(crate) key: u32,
    pub(crate) updated: i128,
    pub(crate) family: u16,
    pub(crate) op: Op,
    pub(crate) batch: u32,
    pub(crate) row: u32,
}

/// The rows of a change batch with `updated` past `after` (what a window up to `after` leaves
/// for a later one); `None` when there are none. An error when the batch has no `updated`
/// decimals (a window refuses such a batch too).
pub fn later_rows(batch: &RecordBatch, after: Hlc) -> Result<Option<RecordBatch>, ArrowError> {
    let updated = batch
        .column_by_name(batch::UPDATED)
        .and_then(|c| c.as_primitive_opt::<Decimal128Type>())
        .ok_or_else(|| {
            ArrowError::SchemaError(format!("no `{}` decimal column", batch::UPDATED))
        })?;
    let after = after.to_decimal_i128();
    let mask: BooleanArray = updated
        .iter()
        .map(|u| Some(u.is_some_and(|u| u > after)))
        .collect();
    match mask.true_count() {
        0 => Ok(None),
        n if n == batch.num_rows() => Ok(Some(batch.clone())),
        _ => filter_record_batch(batch, &mask).map(Some),
    }
}

/// Which rows of a change batch hold a change's `before` ([`Op::Before`]); `None` when none do
/// (every operation code is one byte, so a batch without a `b` byte has none).
/// Whether a row of timestamp `u` (a decimal HLC; NULL as `i128::MIN`) lies in the interval
/// `(lo, hi]` a window takes.
pub(crate) fn inside(u: i128, lo: Option<i128>, hi: i128) -> bool {
    lo.is_none_or(|lo| u > lo) && u <= hi
}

fn before_rows(batch: &RecordBatch) -> Option<Vec<bool>> {
    let ops = batch.column_by_name(batch::OP)?.as_string_opt::<i32>()?;
    let code = Op::Before.code().as_bytes()[0];
    if !ops.values().contains(&code) {
        return None;
    }
    Some(ops.iter().map(|o| o == Some(Op::Before.code())).collect())
}

/// Each stored batch's key column as a `T`, when the key is one column of that array type.
fn single_key<'a, T>(
    key_arrays: &'a [Vec<ArrayRef>],
    cast: impl Fn(&'a ArrayRef) -> Option<&'a T>,
) -> Option<Vec<&'a T>> {
    let columns: Option<Vec<&T>> = key_arrays
        .iter()
        .map(|a| match a.as_slice() {
            [a] => cast(a),
            _ => None,
        })
        .collect();
    columns.filter(|c| !c.is_empty())
}

/// Numbers the fragments' keys by `value` in the order first seen; returns value → id and the
/// distinct values by id.
fn first_seen<K: Hash + Eq + Copy>(
    frags: &mut [Frag],
    value: impl Fn(&Frag) -> K,
) -> (foldhash::HashMap<K, u32>, Vec<K>) {
    let mut ids: foldhash::HashMap<K, u32> = foldhash::HashMap::default();
    let mut values: Vec<K> = Vec::new();
    for f in frags.iter_mut() {
        let v = value(f);
        f.key = *ids.entry(v).or_insert_with(|| {
            values.push(v);
            (values.len() - 1) as u32
        });
    }
    (ids, values)
}

/// Renumbers key ids in ascending order of `values` (by id), in the fragments and in `ids`;
/// returns the values in the new order. Sorted on `prefix` (an order-preserving 64-bit image
/// of a value) first, the values compared only on a tie: random UUIDs and integers never tie.
fn in_key_order<K: Ord + Clone>(
    frags: &mut [Frag],
    ids: &mut foldhash::HashMap<K, u32>,
    values: &[K],
    prefix: impl Fn(&K) -> u64,
) -> Vec<K> {
    let mut sorted: Vec<(u64, K, u32)> = values
        .iter()
        .enumerate()
        .map(|(k, v)| (prefix(v), v.clone(), k as u32))
        .collect();
    sorted.sort_unstable();
    let mut new_id = vec![0u32; sorted.len()];
    for (i, &(_, _, k)) in sorted.iter().enumerate() {
        new_id[k as usize] = i as u32;
    }
    for f in frags {
        f.key = new_id[f.key as usize];
    }
    for id in ids.values_mut() {
        *id = new_id[*id as usize];
    }
    sorted.into_iter().map(|(_, v, _)| v).collect()
}

/// The first eight bytes of `v`, big-endian (zero-padded): ordered as `v`'s bytes are.
fn text_prefix(v: &str) -> u64 {
    let mut b = [0u8; 8];
    let n = v.len().min(8);
    b[..n].copy_from_slice(&v.as_bytes()[..n]);
    u64::from_be_bytes(b)
}

/// `v` with its sign bit flipped: ordered as `v` is.
fn int_prefix(v: &i64) -> u64 {
    (*v as u64) ^ (1 << 63)
}

/// Rows of one table with `lo < updated ≤ hi`, gathered file by file.
pub struct Window {
    layout: Layout,
    /// Columns `[0, fixed)` exist in the Delta table: their types cannot change.
    fixed: usize,
    lo: Option<Hlc>,
    hi: Hlc,
    family_names: Vec<String>,
    stored: Vec<Stored>,
    frags: Vec<Frag>,
    /// Key id → key text, in key order (filled by `finish`).
    key_texts: KeyTexts,
    /// Integer key → id, when the key is one integer column.
    int_keys: Option<foldhash::HashMap<i64, u32>>,
    rows_read: u64,
    /// `(index, of)`: only rows whose key is in slice `index` of `of` are kept.
    slice: Option<(u32, u32)>,
    /// Rows inside the window (and its slice) that were kept.
    rows_kept: u64,
}

/// What a pushed batch held relative to the window.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PushOutcome {
    /// Rows inside the window.
    pub taken: usize,
    /// Rows newer than the window: their file must be read again for a later RESOLVED.
    pub later: usize,
}

impl Window {
    /// A window over `(lo, hi]` for a table whose existing columns are `layout.columns`.
    pub fn new(layout: Layout, lo: Option<Hlc>, hi: Hlc) -> Self {
        let fixed = layout.columns.len();
        let mut family_names: Vec<String> = layout.families.keys().cloned().collect();
        if family_names.is_empty() {
            family_names.push(String::new());
        }
        Self {
            layout,
            fixed,
            lo,
            hi,
            family_names,
            stored: Vec::new(),
            frags: Vec::new(),
            key_texts: KeyTexts::default(),
            int_keys: None,
            rows_read: 0,
            slice: None,
            rows_kept: 0,
        }
    }

    /// Keeps only the rows whose key falls into slice `index` of `of` ([`super::slice_of`]).
    /// Columns are still learnt from every row's file, so each slice sees the whole
    /// interval's columns and types.
    pub fn with_slice(mut self, index: u32, of: u32) -> Self {
        self.slice = Some((index, of));
        self
    }

    /// The share of the rows read so far that the window kept (1 before any).
    pub fn kept_fraction(&self) -> f64 {
        if self.rows_read == 0 {
            1.0
        } else {
            self.rows_kept as f64 / self.rows_read as f64
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Counts rows a decoder skipped for this window's slice
    /// ([`crate::format::decode::SliceFilter`]) as read: `rows_read` still counts every row of
    /// the files.
    pub fn count_skipped(&mut self, rows: u64) {
        self.rows_read += rows;
    }

    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }

    fn family_id(&mut self, family: &str) -> u16 {
        match self.family_names.iter().position(|f| f == family) {
            Some(i) => i as u16,
            None => {
                self.family_names.push(family.to_owned());
                (self.family_names.len() - 1) as u16
            }
        }
    }

    /// Adds a change batch (canonical layout, see [`crate::format::batch`]) of `family` (`None` for a
    /// table without split families) read from `file`.
    pub fn push(
        &mut self,
        batch: RecordBatch,
        family: Option<&str>,
        file: &str,
    ) -> Result<PushOutcome, ChangeError> {
        let invalid = |message: String| ChangeError::Invalid {
            file: file.to_owned(),
            message,
        };
        // Rows holding a change's `before` ([`Op::Before`]) are not changes: not counted.
        let is_before = before_rows(&batch);
        let counted = |r: usize| is_before.as_ref().is_none_or(|b| !b[r]);
        self.rows_read += (0..batch.num_rows()).filter(|&r| counted(r)).count() as u64;
        let updated = batch
            .column_by_name(batch::UPDATED)
            .ok_or_else(|| invalid("no `updated` column".into()))?
            .as_primitive_opt::<Decimal128Type>()
            .ok_or_else(|| invalid("`updated` is not a decimal".into()))?
            .clone();
        let lo = self.lo.map(Hlc::to_decimal_i128);
        let hi = self.hi.to_decimal_i128();
        let mut out = PushOutcome::default();
        let mask: BooleanArray = updated
            .iter()
            .enumerate()
            .map(|(r, u)| {
                let u = u.unwrap_or(i128::MIN);
                let inside = inside(u, lo, hi);
                if counted(r) {
                    out.later += usize::from(u > hi);
                    out.taken += usize::from(inside);
                }
                Some(inside)
            })
            .collect();
        let inside = mask.true_count();
        if inside == 0 {
            return Ok(out);
        }
        let batch = if inside == batch.num_rows() {
            batch
        } else {
            filter_record_batch(&batch, &mask)?
        };

        let fam_name = family.unwrap_or("");
        let family = self.family_id(fam_name);
        let schema = batch.schema();
        // Learn the columns: new ones are appended; types of existing Delta columns are fixed.
        for field in schema.fields() {
            let name = field.name();
            if batch::is_meta(name) {
                continue;
            }
            // Untyped (seen only as NULL so far): not a column of the table until a value types
            // it; where the table has it already, `finish` gives it the table's type.
            if field.data_type() == &DataType::Null {
                continue;
            }
            let Some(ty) = ColumnType::from_arrow(field.data_type()) else {
                return Err(invalid(format!(
                    "column `{name}` has unsupported type {}",
                    field.data_type()
                )));
            };
            match self.layout.index_of(name) {
                None => self.layout.columns.push((name.clone(), ty)),
                Some(i) if self.layout.columns[i].1.arrow_type() != ty.arrow_type() => {
                    // Columns the Delta table has keep their type: `finish` converts the values
                    // (and names the file and row when one does not fit). New columns widen.
                    if i >= self.fixed {
                        let w = self.layout.columns[i].1.widen(&ty);
                        self.layout.columns[i].1 = w;
                    }
                }
                Some(_) => {}
            }
            if !self.layout.key.contains(name) {
                let cols = self.layout.families.entry(fam_name.to_owned()).or_default();
                if !cols.contains(name) {
                    cols.push(name.clone());
                }
            }
        }
        let key_cols: Vec<usize> = self
            .layout
            .key
            .iter()
            .map(|k| {
                schema.index_of(k).map_err(|_| ChangeError::MissingKey {
                    file: file.to_owned(),
                    row: 0,
                    column: k.clone(),
                })
            })
            .collect::<Result<_, _>>()?;
        let batch = match self.slice {
            Some((index, of)) => {
                let keys: Vec<ArrayRef> =
                    key_cols.iter().map(|&c| batch.column(c).clone()).collect();
                let mask: BooleanArray = (0..batch.num_rows())
                    .map(|r| Some(super::slice_of(&keys, r, of) == index))
                    .collect();
                let kept = mask.true_count();
                let is_before = before_rows(&batch);
                out.taken = (0..batch.num_rows())
                    .filter(|&r| mask.value(r) && is_before.as_ref().is_none_or(|b| !b[r]))
                    .count();
                if kept == 0 {
                    return Ok(out);
                }
                if kept == batch.num_rows() {
                    batch
                } else {
                    filter_record_batch(&batch, &mask)?
                }
            }
            None => batch,
        };
        self.rows_kept += out.taken as u64;
        let ops = batch
            .column_by_name(batch::OP)
            .ok_or_else(|| invalid("no operation column".into()))?
            .as_string::<i32>()
            .clone();
        let updated = batch
            .column_by_name(batch::UPDATED)
            .expect("checked above")
            .as_primitive::<Decimal128Type>()
            .clone();
        let rows_col = batch.column_by_name(batch::SOURCE_ROW).and_then(|c| {
            c.as_primitive_opt::<arrow_array::types::Int64Type>()
                .cloned()
        });
        let batch_id = self.stored.len() as u32;
        for row in 0..batch.num_rows() {
            let file_row = rows_col.as_ref().map_or(row, |r| r.value(row) as usize);
            if let Some(i) = key_cols.iter().position(|&c| batch.column(c).is_null(row)) {
                return Err(ChangeError::MissingKey {
                    file: file.to_owned(),
                    row: file_row,
                    column: self.layout.key[i].clone(),
                });
            }
            let op = Op::from_code(ops.value(row)).ok_or_else(|| {
                invalid(format!(
                    "row {file_row}: unknown operation `{}`",
                    ops.value(row)
                ))
            })?;
            self.frags.push(Frag {
                // Assigned by `finish`, once the key columns have their final types.
                key: 0,
                updated: updated.value(row),
                family,
                op,
                batch: batch_id,
                row: row as u32,
            });
        }
        // Keep the data columns only: the metadata now lives in the fragments.
        let data_idx: Vec<usize> = (0..schema.fields().len())
            .filter(|&i| !batch::is_meta(schema.field(i).name()))
            .collect();
        let batch = batch.project(&data_idx)?;
        let projected = batch.schema();
        let cols: Vec<Option<usize>> = self
            .layout
            .columns
            .iter()
            .map(|(n, _)| projected.index_of(n).ok())
            .collect();
        self.stored.push(Stored {
            batch,
            file: Arc::from(file),
            cols,
            arrays: Vec::new(),
        });
        Ok(out)
    }

    /// Gives every fragment its key id, from the key columns in the layout's types (see
    /// [`super::key_text`]): only after `finish` converted the stored batches can a key written as a
    /// number in one file and as a string in another be seen to be the same key. Ids are
    /// numbered in key order (by value for one integer or string column, by key text otherwise), so the
    /// fragments sort on integers.
    fn assign_keys(&mut self) -> Result<(), ChangeError> {
        let key_idx: Vec<usize> = self
            .layout
            .key
            .iter()
            .map(|k| self.layout.index_of(k).unwrap_or(usize::MAX))
            .collect();
        let mut key_arrays = Vec::with_capacity(self.stored.len());
        for s in &self.stored {
            let arrays = key_idx
                .iter()
                .zip(&self.layout.key)
                .map(|(&i, k)| {
                    s.arrays
                        .get(i)
                        .cloned()
                        .flatten()
                        .ok_or_else(|| ChangeError::MissingKey {
                            file: s.file.to_string(),
                            row: 0,
                            column: k.clone(),
                        })
                })
                .collect::<Result<Vec<ArrayRef>, _>>()?;
            key_arrays.push(arrays);
        }
        if let Some(ints) = single_key(&key_arrays, |a| a.as_primitive_opt::<Int64Type>()) {
            let (mut ids, values) = first_seen(&mut self.frags, |f| {
                ints[f.batch as usize].value(f.row as usize)
            });
            let values = in_key_order(&mut self.frags, &mut ids, &values, int_prefix);
            let mut texts = KeyTexts::with_capacity(values.len(), values.len() * 10);
            for v in values {
                texts.push_with(|s| push_int_key_text(s, v));
            }
            self.key_texts = texts;
            self.int_keys = Some(ids);
            return Ok(());
        }
        if let Some(strings) = single_key(&key_arrays, |a| a.as_string_opt::<i32>()) {
            let (mut ids, values) = first_seen(&mut self.frags, |f| {
                strings[f.batch as usize].value(f.row as usize)
            });
            let values = in_key_order(&mut self.frags, &mut ids, &values, |v| text_prefix(v));
            let bytes = values.iter().map(|v| v.len() + 4).sum();
            let mut texts = KeyTexts::with_capacity(values.len(), bytes);
            for v in values {
                texts.push_with(|s| push_string_key_text(s, v));
            }
            self.key_texts = texts;
            return Ok(());
        }
        self.assign_text_keys(&key_arrays)
    }

    /// [`Self::assign_keys`] for any key: one key text per fragment, looked up by text.
    fn assign_text_keys(&mut self, key_arrays: &[Vec<ArrayRef>]) -> Result<(), ChangeError> {
        let mut keys: foldhash::HashMap<Arc<str>, u32> = foldhash::HashMap::default();
        let mut texts: Vec<Arc<str>> = Vec::new();
        let mut key = String::new();
        for f in &mut self.frags {
            let s = f.batch as usize;
            // `push` refused NULL keys and conversions keep values, so this cannot fail; the
            // row given is the one within the stored batch.
            key_text_into(&key_arrays[s], f.row as usize, &mut key).map_err(|i| {
                ChangeError::MissingKey {
                    file: self.stored[s].file.to_string(),
                    row: f.row as usize + 1,
                    column: self.layout.key[i].clone(),
                }
            })?;
            f.key = match keys.get(key.as_str()) {
                Some(id) => *id,
                None => {
                    let id = texts.len() as u32;
                    let k: Arc<str> = Arc::from(key.as_str());
                    texts.push(k.clone());
                    keys.insert(k, id);
                    id
                }
            };
        }
        // Every text starts with `[`: the eight bytes after it rank most pairs.
        self.key_texts = in_key_order(&mut self.frags, &mut keys, &texts, |t| text_prefix(&t[1..]))
            .into_iter()
            .collect();
        Ok(())
    }

    /// Merges fragments into changes: per key, in HLC order, duplicates dropped.
    pub fn finish(mut self) -> Result<ChangeLog, ChangeError> {
        // Align every stored batch with the final layout (types may have widened).
        for s in &mut self.stored {
            let mut arrays = Vec::with_capacity(self.layout.columns.len());
            for (i, (name, ty)) in self.layout.columns.iter().enumerate() {
                let Some(c) = s.cols.get(i).copied().flatten() else {
                    arrays.push(None);
                    continue;
                };
                let a = s.batch.column(c);
                let a = if a.data_type() == &ty.arrow_type() {
                    a.clone()
                } else {
                    column::convert(a, ty).map_err(|(row, e)| ChangeError::Convert {
                        file: s.file.to_string(),
                        column: name.clone(),
                        row: row + 1,
                        message: e.to_string(),
                    })?
                };
                arrays.push(Some(a));
            }
            s.arrays = arrays;
        }
        self.assign_keys()?;
        // A change's `before` rows stand aside, in the changes' order, one per (key, HLC,
        // family) as the changes' own fragments are.
        let mut befores: Vec<Frag> = Vec::new();
        if self.frags.iter().any(|f| f.op == Op::Before) {
            (befores, self.frags) = self.frags.iter().partition(|f| f.op == Op::Before);
            befores.sort_unstable_by_key(|f| (f.key, f.updated, f.family, f.batch, f.row));
            befores.dedup_by(|b, a| (a.key, a.updated, a.family) == (b.key, b.updated, b.family));
        }
        // Key ids are in key order: the fragments sort on integers (a fragment's batch and row
        // make every tuple distinct).
        self.frags
            .sort_unstable_by_key(|f| (f.key, f.updated, f.family, f.batch, f.row));
        let before = self.frags.len();
        self.frags
            .dedup_by(|b, a| a.key == b.key && a.updated == b.updated && a.family == b.family);
        let duplicates = before - self.frags.len();

        let mut changes = Vec::new();
        let mut i = 0;
        while i < self.frags.len() {
            let mut j = i + 1;
            while j < self.frags.len()
                && self.frags[j].key == self.frags[i].key
                && self.frags[j].updated == self.frags[i].updated
            {
                j += 1;
            }
            changes.push(Change {
                key: self.frags[i].key,
                updated: self.frags[i].updated,
                parts: i as u32..j as u32,
            });
            i = j;
        }
        let primary = self
            .layout
            .primary_family
            .as_ref()
            .and_then(|p| self.family_names.iter().position(|f| f == p))
            .map(|p| p as u16);
        let families_known: Vec<u16> = self
            .layout
            .families
            .keys()
            .filter_map(|f| self.family_names.iter().position(|n| n == f))
            .map(|p| p as u16)
            .collect();
        let null_arrays = self
            .layout
            .columns
            .iter()
            .map(|(_, t)| new_null_array(&t.arrow_type(), 1))
            .collect();
        // A first window that took no row (an empty file, or only rows past the RESOLVED) has
        // no columns yet: empty changes, from which no table is created.
        let key_cols = match self
            .layout
            .key
            .iter()
            .map(|k| self.layout.index_of(k))
            .collect::<Option<Vec<usize>>>()
        {
            Some(cols) => cols,
            None if self.frags.is_empty() => Vec::new(),
            None => {
                return Err(ChangeError::Invalid {
                    file: self
                        .stored
                        .first()
                        .map(|s| s.file.to_string())
                        .unwrap_or_default(),
                    message: format!(
                        "primary-key columns {:?} are not among the table's columns",
                        self.layout.key
                    ),
                });
            }
        };
        let family_cols = self
            .family_names
            .iter()
            .map(|f| {
                let names: Vec<&String> = match self.layout.families.get(f) {
                    Some(cols) if self.layout.split_families => cols.iter().collect(),
                    // Without split families every non-key column belongs to the one family.
                    _ => self
                        .layout
                        .columns
                        .iter()
                        .map(|(n, _)| n)
                        .filter(|n| !self.layout.key.contains(n))
                        .collect(),
                };
                names
                    .into_iter()
                    .filter_map(|n| self.layout.index_of(n))
                    .collect()
            })
            .collect();
        Ok(ChangeLog {
            layout: self.layout,
            family_names: self.family_names,
            family_cols,
            key_cols,
            stored: self.stored,
            frags: self.frags,
            befores,
            changes,
            text_keys: OnceLock::new(),
            key_texts: self.key_texts,
            primary,
            families_known,
            null_arrays,
            duplicates,
            rows_read: self.rows_read,
            int_keys: self.int_keys.map(OnceLock::from).unwrap_or_default(),
            texts_in_order: OnceLock::new(),
        })
    }
}
