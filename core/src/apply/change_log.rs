//! The merged changes of one window: per key, in HLC order, one change per (key, HLC) with its
//! column-family fragments, duplicates dropped. Shared by every mode; holds no mode's state.

use std::borrow::Cow;
use std::sync::Arc;

use arrow_array::builder::{StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_select::interleave::interleave;
use serde_json::Value;

use super::key_text::{KeyIds, KeyTexts, key_text_into};
use super::window::{Frag, Stored};
use super::{ChangeError, Layout};
use crate::format::batch::Op;
use crate::format::canonical;
use crate::format::column;
use crate::format::hlc::Hlc;
use crate::format::types::ColumnType;
use crate::plan::KeyProbe;

/// One change: the fragments of one (key, HLC).
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) key: u32,
    pub(crate) updated: i128,
    pub(crate) parts: std::ops::Range<u32>,
}

/// Where an output value comes from: `(source, row)` for `interleave`. Source 0 is a one-row
/// NULL array, `1 + i` is stored batch `i`, higher sources are table or base batches.
pub(crate) type Slot = (usize, usize);
pub(crate) const NULL: Slot = (0, 0);

/// Output rows as slots, a row's `ncols` one after another in one buffer: a `Vec` per row
/// was an allocation per output row on the merge thread (freed while other threads
/// allocated: glibc's arenas are shared).
pub(crate) struct Rows {
    ncols: usize,
    slots: Vec<Slot>,
    len: usize,
}

impl Rows {
    pub(crate) fn with_capacity(ncols: usize, rows: usize) -> Self {
        Self {
            ncols,
            slots: Vec::with_capacity(ncols * rows),
            len: 0,
        }
    }

    /// Appends a row of `ncols` slots.
    pub(crate) fn push(&mut self, row: impl IntoIterator<Item = Slot>) {
        let before = self.slots.len();
        self.slots.extend(row);
        debug_assert_eq!(
            self.slots.len() - before,
            self.ncols,
            "a row of every column"
        );
        self.len += 1;
    }

    /// Appends a row whose every column comes from `slot`.
    pub(crate) fn push_same(&mut self, slot: Slot) {
        self.slots.extend(std::iter::repeat_n(slot, self.ncols));
        self.len += 1;
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Column `c`'s slot in every row.
    fn column(&self, c: usize) -> Vec<Slot> {
        self.slots
            .iter()
            .skip(c)
            .step_by(self.ncols)
            .copied()
            .collect()
    }
}

/// The merged changes of a window, ready for a mode's writer (see [`super::writer`]).
pub struct ChangeLog {
    pub(crate) layout: Layout,
    pub(crate) family_names: Vec<String>,
    /// Family id → layout columns it sets.
    pub(crate) family_cols: Vec<Vec<usize>>,
    pub(crate) key_cols: Vec<usize>,
    pub(crate) stored: Vec<Stored>,
    pub(crate) frags: Vec<Frag>,
    /// The changes' `before` rows ([`Op::Before`]), sorted by (key, HLC, family).
    pub(crate) befores: Vec<Frag>,
    pub(crate) changes: Vec<Change>,
    /// Key id → key text, ids in key order.
    pub(crate) key_texts: KeyTexts,
    /// Key text → id, built on first use where the window did not look keys up by text.
    pub(crate) text_keys: std::sync::OnceLock<KeyIds>,
    pub(crate) primary: Option<u16>,
    pub(crate) families_known: Vec<u16>,
    pub(crate) null_arrays: Vec<ArrayRef>,
    pub(crate) duplicates: usize,
    pub(crate) rows_read: u64,
    /// Integer key → key id (a single INT key column): the window's, or built on first use.
    pub(crate) int_keys: std::sync::OnceLock<foldhash::HashMap<i64, u32>>,
    /// Whether every key is one plain text ([`single_text`]) and the ids follow the texts'
    /// order, as the window numbers a one-text key (by value): checked on first use by
    /// [`Self::sorted_text_keys`], which relies on it.
    pub(crate) texts_in_order: std::sync::OnceLock<bool>,
}

impl ChangeLog {
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Distinct changes (after merging families and dropping duplicates).
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Distinct keys changed.
    pub fn keys(&self) -> usize {
        self.key_texts.len()
    }

    /// Fragments dropped as duplicates of an identical (key, HLC, family).
    pub fn duplicates(&self) -> usize {
        self.duplicates
    }

    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }

    /// The changed keys as a probe of table files ([`KeyProbe`]), the key's first column of
    /// type `ty`; with every key's text hashed ([`super::key_hash`]) when `hashed`: what a key
    /// index looks keys up by when they are not one integer or text column.
    pub fn key_probe(&self, ty: &ColumnType, hashed: bool) -> KeyProbe {
        // The first value of a key text that is not one integer or one plain text.
        let first = |k: &str| match serde_json::from_str::<Value>(k) {
            Ok(Value::Array(mut v)) if !v.is_empty() => Some(v.swap_remove(0)),
            _ => None,
        };
        let texts = self.key_texts.iter();
        // As [`KeyProbe::new`] of the first values, without a JSON value per key.
        let probe = match ty {
            ColumnType::Int32 | ColumnType::Int64 => texts
                .filter_map(|k| match single_int(k) {
                    Some(i) => Some(Some(i)),
                    None => first(k).map(|v| v.as_i64()),
                })
                .collect::<Option<Vec<i64>>>()
                .map_or_else(KeyProbe::unknown, KeyProbe::of_ints),
            ColumnType::Text => texts
                .filter_map(|k| match single_text(k) {
                    Some(t) => Some(Some(Cow::Borrowed(t))),
                    None => first(k).map(|v| match v {
                        Value::String(s) => Some(Cow::Owned(s)),
                        _ => None,
                    }),
                })
                .collect::<Option<Vec<Cow<str>>>>()
                .map_or_else(KeyProbe::unknown, KeyProbe::of_texts),
            _ => KeyProbe::unknown(),
        };
        self.with_hashes(probe, 0..self.key_texts.len(), hashed)
    }

    /// The same, one probe per key slice of `of` ([`super::slice_of`]): probe `i` holds the
    /// changed keys of slice `i`, those a file tagged with that slice ([`super::SliceTag`])
    /// can hold; `None` where no changed key falls into the slice. `whole` is this window's
    /// [`Self::key_probe`] of the same `ty` and `hashed`: a key of one column is split from it
    /// by value. Otherwise each key's slice and first value come from the key columns of its
    /// first row, in the layout's types (a key's slice is the same in the types a file decoded
    /// it as, see [`super::slice`]).
    pub fn key_probes_by_slice(
        &self,
        of: u32,
        ty: &ColumnType,
        hashed: bool,
        whole: &KeyProbe,
    ) -> Vec<Option<KeyProbe>> {
        if self.key_cols.len() == 1
            && let Some(split) = whole.by_slice(of)
        {
            return split;
        }
        // Per slice: the first values and ids of its keys.
        let mut parts: Vec<(Vec<Value>, Vec<usize>)> = vec![Default::default(); of.max(1) as usize];
        let mut columns: Vec<Option<Vec<ArrayRef>>> = vec![None; self.stored.len()];
        let mut last = None;
        for c in &self.changes {
            if last == Some(c.key) {
                continue;
            }
            last = Some(c.key);
            let f = self.parts(c)[0];
            let (batch, row) = (f.batch as usize, f.row as usize);
            let keys = columns[batch].get_or_insert_with(|| {
                self.key_cols
                    .iter()
                    .filter_map(|&col| self.stored[batch].arrays[col].clone())
                    .collect()
            });
            let id = c.key as usize;
            if keys.len() == self.key_cols.len() {
                let (first, ids) = &mut parts[super::slice_of(keys, row, of) as usize];
                first.push(canonical::value(keys[0].as_ref(), row));
                ids.push(id);
            } else {
                // Not reached (every stored batch has the key columns); in every slice then.
                return vec![Some(self.key_probe(ty, hashed)); parts.len()];
            }
        }
        parts
            .into_iter()
            .map(|(first, ids)| {
                (!ids.is_empty())
                    .then(|| self.with_hashes(KeyProbe::new(first, ty), ids.into_iter(), hashed))
            })
            .collect()
    }

    /// `probe` with the text hashes of keys `ids` when `hashed`.
    fn with_hashes(
        &self,
        probe: KeyProbe,
        ids: impl Iterator<Item = usize>,
        hashed: bool,
    ) -> KeyProbe {
        if !hashed {
            return probe;
        }
        let mut h: Vec<u64> = ids
            .map(|i| super::key_hash(self.key_texts.get(i)))
            .collect();
        h.sort_unstable();
        h.dedup();
        probe.with_key_hashes(h)
    }

    pub(crate) fn parts(&self, c: &Change) -> &[Frag] {
        &self.frags[c.parts.start as usize..c.parts.end as usize]
    }

    pub(crate) fn is_row_delete(&self, c: &Change) -> bool {
        let parts = self.parts(c);
        if !self.layout.split_families {
            return parts[0].op == Op::Delete;
        }
        if let Some(p) = self.primary {
            return parts.iter().any(|f| f.family == p && f.op == Op::Delete);
        }
        if self.layout.primary_family.is_some() {
            // Named, but no file of it in this window: no change here carries it.
            return false;
        }
        parts.iter().all(|f| f.op == Op::Delete)
            && self
                .families_known
                .iter()
                .all(|k| parts.iter().any(|f| f.family == *k))
    }

    /// Sets the columns the change carries: its families' columns (NULL for a family-level
    /// delete or a column the file no longer has) and the key.
    pub(crate) fn apply(&self, c: &Change, image: &mut [Option<Slot>]) {
        let parts = self.parts(c);
        for f in parts {
            let s = &self.stored[f.batch as usize];
            for &col in &self.family_cols[f.family as usize] {
                image[col] = Some(match (&s.arrays[col], f.op) {
                    (Some(_), Op::Create | Op::Update) => (1 + f.batch as usize, f.row as usize),
                    _ => NULL,
                });
            }
        }
        self.set_key(c, image);
    }

    /// Whether any change carries its `before` (a `diff` changefeed decoded for scd2).
    pub(crate) fn has_befores(&self) -> bool {
        !self.befores.is_empty()
    }

    /// The row as it was before change `c`, from the change's `before` fragments: its families'
    /// columns (NULL for a column the file does not have, as [`Self::apply`] sets them) and the
    /// key. `None` unless every column outside the key is set: a change without `before` (no
    /// `diff`, an insert, a first sight), or one whose fragments do not cover every family.
    pub(crate) fn before_image(&self, c: &Change) -> Option<Vec<Slot>> {
        let at = self
            .befores
            .partition_point(|f| (f.key, f.updated) < (c.key, c.updated));
        let mut image: Vec<Option<Slot>> = vec![None; self.layout.columns.len()];
        for f in self.befores[at..]
            .iter()
            .take_while(|f| (f.key, f.updated) == (c.key, c.updated))
        {
            let s = &self.stored[f.batch as usize];
            for &col in &self.family_cols[f.family as usize] {
                image[col] = Some(match &s.arrays[col] {
                    Some(_) => (1 + f.batch as usize, f.row as usize),
                    None => NULL,
                });
            }
        }
        self.set_key(c, &mut image);
        image.into_iter().collect()
    }

    /// Sets the key columns only (what a delete carries).
    pub(crate) fn set_key(&self, c: &Change, image: &mut [Option<Slot>]) {
        let f = self.parts(c)[0];
        for &col in &self.key_cols {
            image[col] = Some((1 + f.batch as usize, f.row as usize));
        }
    }

    /// The changes grouped by key (they are sorted by key, then HLC).
    pub(crate) fn ranges_by_key(&self) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.changes.len() {
            let mut j = i + 1;
            while j < self.changes.len() && self.changes[j].key == self.changes[i].key {
                j += 1;
            }
            out.push(i..j);
            i = j;
        }
        out
    }

    /// The source index of the first `extra` batch given to [`ChangeLog::gather`].
    pub(crate) fn extra_source(&self) -> usize {
        1 + self.stored.len()
    }

    /// Gathers data columns for `rows` (one slot per column per row) from the stored batches and
    /// `extra` sources (table or base batches whose columns follow the layout by name).
    pub(crate) fn gather(
        &self,
        rows: &Rows,
        extra: &[&RecordBatch],
    ) -> Result<Vec<ArrayRef>, ChangeError> {
        debug_assert_eq!(rows.ncols, self.layout.columns.len());
        let mut out = Vec::with_capacity(self.layout.columns.len());
        for (c, (name, ty)) in self.layout.columns.iter().enumerate() {
            let null = &self.null_arrays[c];
            let mut sources: Vec<&dyn Array> = Vec::with_capacity(1 + self.stored.len());
            sources.push(null.as_ref());
            for s in &self.stored {
                sources.push(s.arrays[c].as_deref().unwrap_or(null.as_ref()));
            }
            let mut casted: Vec<ArrayRef> = Vec::new();
            for b in extra {
                match b.column_by_name(name) {
                    Some(a) if a.data_type() == &ty.arrow_type() => casted.push(a.clone()),
                    Some(a) => casted.push(arrow_cast::cast(a, &ty.arrow_type())?),
                    None => {
                        casted.push(arrow_array::new_null_array(&ty.arrow_type(), b.num_rows()))
                    }
                }
            }
            for a in &casted {
                sources.push(a.as_ref());
            }
            out.push(interleave(&sources, &rows.column(c))?);
        }
        Ok(out)
    }

    /// `c`, `u` or `d`: what the change did to the row.
    pub(crate) fn op_code(&self, c: &Change) -> &'static str {
        if self.is_row_delete(c) {
            return "d";
        }
        self.parts(c)
            .iter()
            .find(|f| f.op != Op::Delete)
            .map_or("u", |f| f.op.code())
    }

    /// The change-log key id of each row of a table batch (`None`: a key the window does not
    /// change), compared in the layout's key types like the window's keys.
    pub(crate) fn table_keys(&self, table: &RecordBatch) -> Result<Vec<Option<u32>>, ChangeError> {
        let key_cols: Vec<ArrayRef> = self
            .layout
            .key
            .iter()
            .zip(&self.key_cols)
            .map(|(k, &i)| {
                let invalid = |message: String| ChangeError::Invalid {
                    file: "target".into(),
                    message,
                };
                let c = table
                    .column_by_name(k)
                    .ok_or_else(|| invalid(format!("the Delta table has no key column `{k}`")))?;
                column::convert(c, &self.layout.columns[i].1)
                    .map_err(|(_, e)| invalid(format!("key column `{k}`: {e}")))
            })
            .collect::<Result<_, _>>()?;
        // One integer key (the common case): compared as integers, no text per table row.
        if let [col] = key_cols.as_slice()
            && let Some(ints) = col.as_primitive_opt::<arrow_array::types::Int64Type>()
        {
            let ids = self.int_keys.get_or_init(|| {
                let mut ids = foldhash::HashMap::with_capacity_and_hasher(
                    self.key_texts.len(),
                    Default::default(),
                );
                ids.extend(self.key_texts.iter().enumerate().filter_map(
                    |(id, k)| match single_int(k) {
                        Some(i) => Some((i, id as u32)),
                        None => match serde_json::from_str::<Value>(k) {
                            Ok(Value::Array(v)) => Some((v.first()?.as_i64()?, id as u32)),
                            _ => None,
                        },
                    },
                ));
                ids
            });
            return Ok(ints
                .iter()
                .map(|k| k.and_then(|k| ids.get(&k).copied()))
                .collect());
        }
        if let [col] = key_cols.as_slice()
            && let Some(ids) = self.sorted_text_keys(col)
        {
            return Ok(ids);
        }
        let text_ids = self.text_keys.get_or_init(|| KeyIds::new(&self.key_texts));
        let mut text = String::new();
        Ok((0..table.num_rows())
            .map(|r| {
                key_text_into(&key_cols, r, &mut text)
                    .ok()
                    .and_then(|()| text_ids.get(&self.key_texts, text.as_str()))
            })
            .collect())
    }

    /// [`Self::table_keys`] of a one-text key column in ascending order, as the files we write
    /// are (by key): the window's keys within the batch's range are found in it by binary
    /// search, where a key text per row, hashed and looked up, was a third of a cold step's CPU
    /// (a 20M-row table's key columns read whole, 10k keys found among them). `None` (looked
    /// up by text) for a batch of few rows or fewer rows than window keys in its range (the
    /// rows a key index found), out of order or with NULLs, or when the window's keys are not
    /// plain texts numbered in their order.
    fn sorted_text_keys(&self, column: &ArrayRef) -> Option<Vec<Option<u32>>> {
        let texts = column.as_string_opt::<i32>()?;
        let n = texts.len();
        if n < MERGED_ROWS || texts.null_count() > 0 {
            return None;
        }
        let in_order = *self.texts_in_order.get_or_init(|| {
            let mut last: Option<&str> = None;
            self.key_texts.iter().all(|k| {
                let t = single_text(k);
                let ordered = t.is_some() && last < t;
                last = t;
                ordered
            })
        });
        if !in_order {
            return None;
        }
        // Key `id`'s text: its key text without `["` and `"]` (every one plain, checked above).
        let key = |id: usize| {
            let k = self.key_texts.get(id);
            &k[2..k.len() - 2]
        };
        let keys = self.key_texts.len();
        let first = crate::key_index::partition(keys, |id| key(id) < texts.value(0));
        let last = crate::key_index::partition(keys, |id| key(id) <= texts.value(n - 1));
        if last.saturating_sub(first) > n || (1..n).any(|i| texts.value(i - 1) > texts.value(i)) {
            return None;
        }
        let mut out = vec![None; n];
        let mut row = 0;
        for id in first..last {
            let t = key(id);
            row += crate::key_index::partition(n - row, |j| texts.value(row + j) < t);
            while row < n && texts.value(row) == t {
                out[row] = Some(id as u32);
                row += 1;
            }
        }
        Some(out)
    }
}

/// Table batches of fewer rows are looked up key by key ([`ChangeLog::table_keys`]).
const MERGED_ROWS: usize = 1024;

/// The integer of a one-integer key text (`[42]`, canonical JSON), without a JSON parse: the
/// common key, looked up once per window key. Anything else is `None` (parsed as JSON).
fn single_int(key: &str) -> Option<i64> {
    key.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// The text of a one-text key (`["…"]`, canonical JSON) that holds no escape, without a JSON
/// parse: a UUID key (`gen_random_uuid()`) is such a text, and parsing 10k of them was 2.6 ms
/// of a warm step. Anything else (an escape, several columns) is `None` (parsed as JSON).
fn single_text(key: &str) -> Option<&str> {
    let text = key.strip_prefix("[\"")?.strip_suffix("\"]")?;
    (!text.contains(['"', '\\'])).then_some(text)
}

/// An HLC kept as its decimal (see [`Hlc::to_decimal_i128`]); every one came from a parsed
/// HLC, so out of range means a corrupt file, never a value to write as 0.
pub(crate) fn hlc_of(updated: i128) -> Result<Hlc, ChangeError> {
    Hlc::from_decimal_i128(updated).ok_or_else(|| ChangeError::Invalid {
        file: "window".into(),
        message: format!("HLC decimal {updated} is out of range"),
    })
}

/// The two columns that carry an HLC: its text and its wall time (UTC); NULL where `None`.
#[derive(Default)]
pub(crate) struct HlcColumns {
    text: StringBuilder,
    at: TimestampMicrosecondBuilder,
}

impl HlcColumns {
    pub(crate) fn new() -> Self {
        Self {
            text: StringBuilder::new(),
            at: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
        }
    }

    pub(crate) fn push(&mut self, updated: Option<i128>) -> Result<(), ChangeError> {
        match updated {
            Some(u) => {
                let h = hlc_of(u)?;
                self.text.append_value(h.decimal_text(&mut [0; 32]));
                self.at.append_value(h.wall_micros());
            }
            None => {
                self.text.append_null();
                self.at.append_null();
            }
        }
        Ok(())
    }

    /// Copies row `r` of existing columns (a table row kept as it was).
    pub(crate) fn copy(
        &mut self,
        text: Option<&StringArray>,
        at: Option<&TimestampMicrosecondArray>,
        r: usize,
    ) {
        self.text
            .append_option(text.and_then(|a| a.is_valid(r).then(|| a.value(r))));
        self.at
            .append_option(at.and_then(|a| a.is_valid(r).then(|| a.value(r))));
    }

    pub(crate) fn finish(mut self) -> (ArrayRef, ArrayRef) {
        (Arc::new(self.text.finish()), Arc::new(self.at.finish()))
    }
}

/// A table batch's HLC text and time columns, when it has them.
pub(crate) fn hlc_columns(
    table: &RecordBatch,
    text: &str,
    at: &str,
) -> (Option<StringArray>, Option<TimestampMicrosecondArray>) {
    (
        table
            .column_by_name(text)
            .and_then(|a| a.as_string_opt::<i32>().cloned()),
        table.column_by_name(at).and_then(|a| {
            a.as_primitive_opt::<arrow_array::types::TimestampMicrosecondType>()
                .cloned()
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever `single_text` takes, it takes as the JSON parse would; the rest it leaves to it.
    #[test]
    fn one_text_keys_without_escapes_are_read_as_the_parse_reads_them() {
        let keys: Vec<Vec<Value>> = vec![
            vec!["0b5f3a8e-6c1d-4f7a-9a2b-3c4d5e6f7a8b".into()],
            vec!["".into()],
            vec!["plain text, with ] and [ and ,".into()],
            vec!["ünïcødé ✓".into()],
            vec!["a \"quoted\" word".into()],
            vec!["back\\slash".into()],
            vec!["line\nbreak and \u{1}".into()],
            vec!["\",\"".into()],
            vec!["a".into(), "b".into()],
            vec!["a".into(), 1.into()],
            vec![1.into(), "a".into()],
            vec![42.into()],
        ];
        let mut taken = 0;
        for key in keys {
            let text = serde_json::to_string(&key).unwrap();
            match single_text(&text) {
                Some(t) => {
                    taken += 1;
                    assert_eq!(key.len(), 1, "{text}");
                    assert_eq!(Some(t), key[0].as_str(), "{text}");
                }
                None => assert!(
                    key.len() != 1 || !key[0].is_string() || text.contains('\\'),
                    "{text} was left to the parse"
                ),
            }
        }
        assert_eq!(taken, 4);
    }
}
