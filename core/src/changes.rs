//! From a window of change rows to what a Delta table mode writes.
//!
//! A [`Window`] collects every change row of one table with `lo < updated ≤ hi` (one RESOLVED
//! step). [`Window::finish`] merges the column-family fragments of one (key, HLC) into one change,
//! drops duplicates and orders each key's changes by HLC. The resulting [`Changes`] then produce
//! what the mode writes:
//!
//! * `append_only`: one row per change ([`Changes::append_rows`]);
//! * `update_delete`: a copy-on-write merge with the current table: [`Changes::merge_target`] on
//!   every target batch that may hold a changed key, then [`Changes::inserts`];
//! * `scd2`: [`Changes::close_target`] ends the open versions of changed keys, then
//!   [`Changes::versions`] writes one row per new version with its validity interval.
//!
//! Everything here is pure: batches in, batches out. Values are never copied one by one; output
//! columns are gathered with Arrow's `interleave` from (source, row) pairs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::builder::{StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::Decimal128Type;
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, new_null_array};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow_select::filter::filter_record_batch;
use arrow_select::interleave::interleave;
use serde_json::Value;

use crate::batch::{self, Op};
use crate::canonical;
use crate::column;
use crate::hlc::Hlc;
use crate::types::ColumnType;

/// How change events become Delta rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// SCD type 1: one row per key with its current state; deletes remove the row.
    UpdateDelete,
    /// Every distinct change as a row: the full history.
    AppendOnly,
    /// SCD type 2: one row per version with its validity interval.
    Scd2,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "update_delete" => Ok(Self::UpdateDelete),
            "append_only" => Ok(Self::AppendOnly),
            "scd2" => Ok(Self::Scd2),
            other => Err(format!(
                "unknown mode `{other}` (update_delete, append_only, scd2)"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::UpdateDelete => "update_delete",
            Self::AppendOnly => "append_only",
            Self::Scd2 => "scd2",
        })
    }
}

/// The HLC of the change that produced the row, as CockroachDB prints it (`<wall>.<logical>`).
pub const HLC: &str = "__crdb_hlc";
/// The change's commit time (the HLC's wall time), UTC.
pub const COMMIT_TS: &str = "__crdb_commit_ts";
/// `c`, `u` or `d` (append_only).
pub const OP: &str = "__crdb_op";
/// The changefeed object the change came from (append_only).
pub const SOURCE_FILE: &str = "__crdb_source_file";
/// Families carried by the change, comma-separated (append_only, split tables): columns of the
/// other families are NULL in that row because the change did not touch them.
pub const FAMILIES: &str = "__crdb_families";
/// Validity interval of an SCD2 version: HLCs and their wall times; the end is NULL while the
/// version is current.
pub const START_HLC: &str = "__crdb_start_hlc";
pub const END_HLC: &str = "__crdb_end_hlc";
pub const START_AT: &str = "__crdb_start_at";
pub const END_AT: &str = "__crdb_end_at";

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")))
}

/// The mode's metadata fields, appended after the data columns.
pub fn meta_fields(mode: Mode, split_families: bool) -> Vec<Field> {
    match mode {
        Mode::UpdateDelete => vec![
            Field::new(HLC, DataType::Utf8, true),
            Field::new(COMMIT_TS, ts_type(), true),
        ],
        Mode::AppendOnly => {
            let mut f = vec![
                Field::new(OP, DataType::Utf8, true),
                Field::new(HLC, DataType::Utf8, true),
                Field::new(COMMIT_TS, ts_type(), true),
                Field::new(SOURCE_FILE, DataType::Utf8, true),
            ];
            if split_families {
                f.push(Field::new(FAMILIES, DataType::Utf8, true));
            }
            f
        }
        Mode::Scd2 => vec![
            Field::new(START_HLC, DataType::Utf8, true),
            Field::new(END_HLC, DataType::Utf8, true),
            Field::new(START_AT, ts_type(), true),
            Field::new(END_AT, ts_type(), true),
        ],
    }
}

/// Why a window could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{file}: row {row}: primary-key column `{column}` is missing or NULL")]
    MissingKey {
        file: String,
        row: usize,
        column: String,
    },
    #[error(
        "{file}: column `{column}`, row {row}: {message} (the Delta table's column type cannot change; configure the column's SQL type or recreate the table)"
    )]
    Convert {
        file: String,
        column: String,
        row: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error(transparent)]
    Arrow(#[from] ArrowError),
}

/// The data layout of one Delta table.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Data columns in Delta order (key columns included).
    pub columns: Vec<(String, ColumnType)>,
    /// Primary-key columns in index order.
    pub key: Vec<String>,
    /// Whether the changefeed splits column families (`table+family` topics).
    pub split_families: bool,
    /// Column family → its non-key data columns, learnt from the files.
    pub families: BTreeMap<String, Vec<String>>,
    /// The family whose delete deletes the row (CockroachDB's family 0 always has a KV, so a
    /// row delete always carries it): a change without it is never a row delete, also in a
    /// window where that family has no file (a delete of another family only NULLs its
    /// columns). When unknown, a row is deleted only when every known family reports a delete.
    pub primary_family: Option<String>,
}

impl Layout {
    pub fn new(key: Vec<String>, split_families: bool) -> Self {
        Self {
            columns: Vec::new(),
            key,
            split_families,
            families: BTreeMap::new(),
            primary_family: None,
        }
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|(n, _)| n == name)
    }

    pub fn data_fields(&self) -> Vec<Field> {
        self.columns
            .iter()
            .map(|(n, t)| Field::new(n, t.arrow_type(), !self.key.contains(n)))
            .collect()
    }

    /// The Delta table's Arrow schema under `mode`.
    pub fn output_schema(&self, mode: Mode) -> SchemaRef {
        let mut f = self.data_fields();
        f.extend(meta_fields(mode, self.split_families));
        Arc::new(Schema::new(f))
    }
}

/// One decoded batch kept for the window, with its columns aligned to the layout.
struct Stored {
    batch: RecordBatch,
    file: Arc<str>,
    /// Layout column → batch column.
    cols: Vec<Option<usize>>,
    /// Layout columns finally cast to the layout type (filled by `finish`).
    arrays: Vec<Option<ArrayRef>>,
}

#[derive(Debug, Clone, Copy)]
struct Frag {
    key: u32,
    updated: i128,
    family: u16,
    op: Op,
    batch: u32,
    row: u32,
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
    keys: HashMap<Arc<str>, u32>,
    key_texts: Vec<Arc<str>>,
    rows_read: u64,
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
            keys: HashMap::new(),
            key_texts: Vec::new(),
            rows_read: 0,
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
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

    /// Adds a change batch (canonical layout, see [`crate::batch`]) of `family` (`None` for a
    /// table without split families) read from `file`.
    pub fn push(
        &mut self,
        batch: RecordBatch,
        family: Option<&str>,
        file: &str,
    ) -> Result<PushOutcome, ChangeError> {
        self.rows_read += batch.num_rows() as u64;
        let invalid = |message: String| ChangeError::Invalid {
            file: file.to_owned(),
            message,
        };
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
            .map(|u| {
                let u = u.unwrap_or(i128::MIN);
                if u > hi {
                    out.later += 1;
                }
                Some(lo.is_none_or(|lo| u > lo) && u <= hi)
            })
            .collect();
        out.taken = mask.true_count();
        if out.taken == 0 {
            return Ok(out);
        }
        let batch = if out.taken == batch.num_rows() {
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
    /// [`key_text`]): only after `finish` converted the stored batches can a key written as a
    /// number in one file and as a string in another be seen to be the same key.
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
        for f in &mut self.frags {
            let s = f.batch as usize;
            // `push` refused NULL keys and conversions keep values, so this cannot fail; the
            // row given is the one within the stored batch.
            let key =
                key_text(&key_arrays[s], f.row as usize).map_err(|i| ChangeError::MissingKey {
                    file: self.stored[s].file.to_string(),
                    row: f.row as usize + 1,
                    column: self.layout.key[i].clone(),
                })?;
            f.key = match self.keys.get(key.as_str()) {
                Some(id) => *id,
                None => {
                    let id = self.key_texts.len() as u32;
                    let k: Arc<str> = Arc::from(key);
                    self.key_texts.push(k.clone());
                    self.keys.insert(k, id);
                    id
                }
            };
        }
        Ok(())
    }

    /// Merges fragments into changes: per key, in HLC order, duplicates dropped.
    pub fn finish(mut self) -> Result<Changes, ChangeError> {
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
        let key_texts = &self.key_texts;
        self.frags.sort_by(|a, b| {
            (
                &*key_texts[a.key as usize],
                a.updated,
                a.family,
                a.batch,
                a.row,
            )
                .cmp(&(
                    &*key_texts[b.key as usize],
                    b.updated,
                    b.family,
                    b.batch,
                    b.row,
                ))
        });
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
        Ok(Changes {
            layout: self.layout,
            family_names: self.family_names,
            family_cols,
            key_cols,
            stored: self.stored,
            frags: self.frags,
            changes,
            keys: self.keys,
            key_texts: self.key_texts,
            primary,
            families_known,
            null_arrays,
            duplicates,
            rows_read: self.rows_read,
            finals: HashMap::new(),
            matched: Vec::new(),
            bases: Vec::new(),
            base_of: HashMap::new(),
            counts: Counts::default(),
            cursor: Cursor::Start,
        })
    }
}

/// A row's key identity: the JSON array of its key values, or the index of a NULL key column.
///
/// Identity follows the key column's type in the layout (the Delta table's type), never how a
/// file happened to write the value: `finish` converts every batch to those types first. So an
/// INT key written `1` in one event and `"1"` in another (or inferred as a number from one file
/// and as text from another, which widens the column to STRING) is one key: compared by integer
/// value in an INT column, by the text `1` in a STRING column. FLOAT keys compare by value with
/// `-0` equal to `0`, as in CockroachDB's key encoding. A JSONB key keeps JSON's distinction
/// between `1` and `"1"`.
fn key_text(columns: &[ArrayRef], row: usize) -> Result<String, usize> {
    let mut values = Vec::with_capacity(columns.len());
    for (i, a) in columns.iter().enumerate() {
        if a.is_null(row) {
            return Err(i);
        }
        let mut v = canonical::value(a.as_ref(), row);
        if matches!(a.data_type(), DataType::Float32 | DataType::Float64) && v.as_f64() == Some(0.0)
        {
            v = canonical::float_json(0.0);
        }
        values.push(v);
    }
    Ok(Value::Array(values).to_string())
}

/// One change: the fragments of one (key, HLC).
#[derive(Debug, Clone)]
struct Change {
    key: u32,
    updated: i128,
    parts: std::ops::Range<u32>,
}

/// Where an output value comes from: `(source, row)` for `interleave`. Source 0 is a one-row
/// NULL array, `1 + i` is stored batch `i`, higher sources are target or base batches.
type Slot = (usize, usize);
const NULL: Slot = (0, 0);

/// The net effect of a window on one key (update_delete).
#[derive(Debug, Clone)]
enum Final {
    Delete,
    /// Column → new value; `None` keeps the table's current value.
    Image {
        image: Vec<Option<Slot>>,
        updated: i128,
    },
}

/// A new SCD2 version: its column sources, start and end HLC.
type Version = (Vec<Slot>, i128, Option<i128>);

/// Where [`Changes::next_output`] is.
enum Cursor {
    Start,
    Append(Vec<u32>, usize),
    Inserts(Vec<u32>, usize),
    Versions(Vec<Version>, usize),
    Done,
}

/// Rows written, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
}

/// The merged changes of a window, ready to be written in one of the modes.
pub struct Changes {
    layout: Layout,
    family_names: Vec<String>,
    /// Family id → layout columns it sets.
    family_cols: Vec<Vec<usize>>,
    key_cols: Vec<usize>,
    stored: Vec<Stored>,
    frags: Vec<Frag>,
    changes: Vec<Change>,
    keys: HashMap<Arc<str>, u32>,
    key_texts: Vec<Arc<str>>,
    primary: Option<u16>,
    families_known: Vec<u16>,
    null_arrays: Vec<ArrayRef>,
    duplicates: usize,
    rows_read: u64,
    finals: HashMap<u32, Final>,
    matched: Vec<bool>,
    bases: Vec<RecordBatch>,
    /// Key → (base batch, row): the version that was open in the table (scd2).
    base_of: HashMap<u32, (usize, usize)>,
    counts: Counts,
    cursor: Cursor,
}

impl Changes {
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

    /// Fragments dropped as duplicates of an identical (key, HLC, family).
    pub fn duplicates(&self) -> usize {
        self.duplicates
    }

    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    fn parts(&self, c: &Change) -> &[Frag] {
        &self.frags[c.parts.start as usize..c.parts.end as usize]
    }

    fn is_row_delete(&self, c: &Change) -> bool {
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
    fn apply(&self, c: &Change, image: &mut [Option<Slot>]) {
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
        let f = parts[0];
        for &col in &self.key_cols {
            image[col] = Some((1 + f.batch as usize, f.row as usize));
        }
    }

    fn ranges_by_key(&self) -> Vec<std::ops::Range<usize>> {
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

    /// Gathers data columns for `rows` (one slot per column per row) from the stored batches and
    /// `extra` sources (target or base batches whose columns follow the layout by name).
    fn gather(
        &self,
        rows: &[Vec<Slot>],
        extra: &[&RecordBatch],
    ) -> Result<Vec<ArrayRef>, ChangeError> {
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
                    None => casted.push(new_null_array(&ty.arrow_type(), b.num_rows())),
                }
            }
            for a in &casted {
                sources.push(a.as_ref());
            }
            let idx: Vec<Slot> = rows.iter().map(|r| r[c]).collect();
            out.push(interleave(&sources, &idx)?);
        }
        Ok(out)
    }

    fn op_code(&self, c: &Change) -> &'static str {
        if self.is_row_delete(c) {
            return "d";
        }
        let parts = self.parts(c);
        parts
            .iter()
            .find(|f| f.op != Op::Delete)
            .map_or("u", |f| f.op.code())
    }

    /// append_only: one row per change, at most `batch_rows` rows per batch.
    pub fn append_rows(&mut self, batch_rows: usize) -> Result<Vec<RecordBatch>, ChangeError> {
        let mut out = Vec::new();
        while let Some(b) = self.next_output(Mode::AppendOnly, batch_rows)? {
            out.push(b);
        }
        Ok(out)
    }

    /// The next batch of what the mode adds after the target was merged (append_only: every
    /// change; update_delete: rows for new keys; scd2: new versions), or `None` when done.
    /// Batches are built one at a time so the output never exists whole in memory.
    pub fn next_output(
        &mut self,
        mode: Mode,
        batch_rows: usize,
    ) -> Result<Option<RecordBatch>, ChangeError> {
        let n = batch_rows.max(1);
        if matches!(self.cursor, Cursor::Start) {
            self.cursor = match mode {
                Mode::AppendOnly => {
                    let mut order: Vec<u32> = (0..self.changes.len() as u32).collect();
                    // History reads naturally in commit order.
                    order.sort_by_key(|&i| {
                        (
                            self.changes[i as usize].updated,
                            self.changes[i as usize].key,
                        )
                    });
                    Cursor::Append(order, 0)
                }
                Mode::UpdateDelete => {
                    self.ensure_finals();
                    let mut keys: Vec<u32> = self
                        .finals
                        .iter()
                        .filter(|(k, f)| {
                            !self.matched[**k as usize] && matches!(f, Final::Image { .. })
                        })
                        .map(|(k, _)| *k)
                        .collect();
                    // Key order (integers numerically) keeps new files' key ranges tight for
                    // min/max pruning.
                    keys.sort_by(|a, b| {
                        let (a, b) = (&self.key_texts[*a as usize], &self.key_texts[*b as usize]);
                        (a.len(), a).cmp(&(b.len(), b))
                    });
                    Cursor::Inserts(keys, 0)
                }
                Mode::Scd2 => Cursor::Versions(self.plan_versions(), 0),
            };
        }
        let cursor = std::mem::replace(&mut self.cursor, Cursor::Done);
        let (batch, next) = match cursor {
            Cursor::Append(order, pos) if pos < order.len() => {
                let end = (pos + n).min(order.len());
                let b = self.build_append(&order[pos..end])?;
                (Some(b), Cursor::Append(order, end))
            }
            Cursor::Inserts(keys, pos) if pos < keys.len() => {
                let end = (pos + n).min(keys.len());
                let b = self.build_inserts(&keys[pos..end])?;
                (Some(b), Cursor::Inserts(keys, end))
            }
            Cursor::Versions(v, pos) if pos < v.len() => {
                let end = (pos + n).min(v.len());
                let b = self.build_versions(&v[pos..end])?;
                (Some(b), Cursor::Versions(v, end))
            }
            _ => (None, Cursor::Done),
        };
        self.cursor = next;
        Ok(batch)
    }

    fn build_append(&mut self, chunk: &[u32]) -> Result<RecordBatch, ChangeError> {
        let schema = self.layout.output_schema(Mode::AppendOnly);
        let mut rows = Vec::with_capacity(chunk.len());
        let mut op = StringBuilder::new();
        let mut hlc = StringBuilder::new();
        let mut ts = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        let mut file = StringBuilder::new();
        let mut fams = StringBuilder::new();
        for &i in chunk {
            let c = &self.changes[i as usize];
            let mut image = vec![Some(NULL); self.layout.columns.len()];
            if self.is_row_delete(c) {
                // A delete carries the key only.
                let f = self.parts(c)[0];
                for &col in &self.key_cols {
                    image[col] = Some((1 + f.batch as usize, f.row as usize));
                }
            } else {
                self.apply(c, &mut image);
            }
            rows.push(image.into_iter().map(|s| s.unwrap_or(NULL)).collect());
            let h = Hlc::from_decimal_i128(c.updated).unwrap_or_default();
            op.append_value(self.op_code(c));
            hlc.append_value(h.to_string());
            ts.append_value(h.wall_micros());
            let parts = self.parts(c);
            file.append_value(&*self.stored[parts[0].batch as usize].file);
            let names: Vec<&str> = parts
                .iter()
                .map(|f| self.family_names[f.family as usize].as_str())
                .collect();
            fams.append_value(names.join(","));
        }
        let mut cols = self.gather(&rows, &[])?;
        cols.push(Arc::new(op.finish()));
        cols.push(Arc::new(hlc.finish()));
        cols.push(Arc::new(ts.finish()));
        cols.push(Arc::new(file.finish()));
        if self.layout.split_families {
            cols.push(Arc::new(fams.finish()));
        }
        self.counts.inserted += chunk.len() as u64;
        Ok(RecordBatch::try_new(schema, cols)?)
    }

    /// update_delete: computes each key's net effect (once, before the first target batch).
    fn ensure_finals(&mut self) {
        if !self.finals.is_empty() || self.changes.is_empty() {
            return;
        }
        let ncols = self.layout.columns.len();
        for r in self.ranges_by_key() {
            let mut fin: Option<Final> = None;
            for c in &self.changes[r.clone()] {
                if self.is_row_delete(c) {
                    fin = Some(Final::Delete);
                    continue;
                }
                let mut image = match fin.take() {
                    // Re-inserted after a delete: nothing of the old row survives.
                    Some(Final::Delete) => vec![Some(NULL); ncols],
                    Some(Final::Image { image, .. }) => image,
                    None => vec![None; ncols],
                };
                self.apply(c, &mut image);
                fin = Some(Final::Image {
                    image,
                    updated: c.updated,
                });
            }
            if let Some(f) = fin {
                self.finals.insert(self.changes[r.start].key, f);
            }
        }
        self.matched = vec![false; self.key_texts.len()];
    }

    /// The first key column's values as canonical JSON, for min/max file pruning.
    pub fn first_key_values(&self) -> Vec<Value> {
        self.key_texts
            .iter()
            .filter_map(|k| match serde_json::from_str::<Value>(k) {
                Ok(Value::Array(mut v)) if !v.is_empty() => Some(v.swap_remove(0)),
                _ => None,
            })
            .collect()
    }

    fn target_keys(&self, target: &RecordBatch) -> Result<Vec<Option<u32>>, ChangeError> {
        // In the layout's key types, like the window's keys (see `key_text`).
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
                let c = target
                    .column_by_name(k)
                    .ok_or_else(|| invalid(format!("the Delta table has no key column `{k}`")))?;
                column::convert(c, &self.layout.columns[i].1)
                    .map_err(|(_, e)| invalid(format!("key column `{k}`: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok((0..target.num_rows())
            .map(|r| {
                key_text(&key_cols, r)
                    .ok()
                    .and_then(|k| self.keys.get(k.as_str()).copied())
            })
            .collect())
    }

    /// update_delete: the target batch with the window applied, or `None` when no row of it
    /// changes (its file stays as is) unless `always` (another batch of its file changed, so the
    /// file is rewritten in the current schema).
    pub fn merge_target(
        &mut self,
        target: &RecordBatch,
        always: bool,
    ) -> Result<Option<RecordBatch>, ChangeError> {
        self.ensure_finals();
        let keys = self.target_keys(target)?;
        if !always
            && keys
                .iter()
                .all(|k| k.is_none_or(|k| !self.finals.contains_key(&k)))
        {
            return Ok(None);
        }
        let t = 1 + self.stored.len();
        let mut rows = Vec::new();
        let mut meta_rows: Vec<(usize, Option<i128>)> = Vec::new();
        for (r, k) in keys.iter().enumerate() {
            let fin = k.and_then(|k| self.finals.get(&k).map(|f| (k, f)));
            match fin {
                None => {
                    rows.push(vec![(t, r); self.layout.columns.len()]);
                    meta_rows.push((r, None));
                }
                Some((k, Final::Delete)) => {
                    self.matched[k as usize] = true;
                    self.counts.deleted += 1;
                }
                Some((k, Final::Image { image, updated })) => {
                    self.matched[k as usize] = true;
                    self.counts.updated += 1;
                    rows.push(image.iter().map(|s| s.unwrap_or((t, r))).collect());
                    meta_rows.push((r, Some(*updated)));
                }
            }
        }
        let mut cols = self.gather(&rows, &[target])?;
        // Metadata: kept from the table for untouched rows, new for changed ones.
        let old_hlc = target
            .column_by_name(HLC)
            .map(|a| a.as_string::<i32>().clone());
        let old_ts = target.column_by_name(COMMIT_TS).and_then(|a| {
            a.as_primitive_opt::<arrow_array::types::TimestampMicrosecondType>()
                .cloned()
        });
        let mut hlc = StringBuilder::new();
        let mut ts = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        for (r, upd) in meta_rows {
            match upd {
                Some(u) => {
                    let h = Hlc::from_decimal_i128(u).unwrap_or_default();
                    hlc.append_value(h.to_string());
                    ts.append_value(h.wall_micros());
                }
                None => {
                    hlc.append_option(
                        old_hlc
                            .as_ref()
                            .and_then(|a| a.is_valid(r).then(|| a.value(r))),
                    );
                    ts.append_option(
                        old_ts
                            .as_ref()
                            .and_then(|a| a.is_valid(r).then(|| a.value(r))),
                    );
                }
            }
        }
        cols.push(Arc::new(hlc.finish()));
        cols.push(Arc::new(ts.finish()));
        Ok(Some(RecordBatch::try_new(
            self.layout.output_schema(Mode::UpdateDelete),
            cols,
        )?))
    }

    /// update_delete: rows for keys the table did not have (after every target batch was merged).
    pub fn inserts(&mut self, batch_rows: usize) -> Result<Vec<RecordBatch>, ChangeError> {
        let mut out = Vec::new();
        while let Some(b) = self.next_output(Mode::UpdateDelete, batch_rows)? {
            out.push(b);
        }
        Ok(out)
    }

    fn build_inserts(&mut self, keys: &[u32]) -> Result<RecordBatch, ChangeError> {
        let mut rows: Vec<Vec<Slot>> = Vec::with_capacity(keys.len());
        let mut hlc = StringBuilder::new();
        let mut ts = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        for k in keys {
            if let Some(Final::Image { image, updated }) = self.finals.get(k) {
                rows.push(image.iter().map(|s| s.unwrap_or(NULL)).collect());
                let h = Hlc::from_decimal_i128(*updated).unwrap_or_default();
                hlc.append_value(h.to_string());
                ts.append_value(h.wall_micros());
            }
        }
        let mut cols = self.gather(&rows, &[])?;
        cols.push(Arc::new(hlc.finish()));
        cols.push(Arc::new(ts.finish()));
        self.counts.inserted += rows.len() as u64;
        Ok(RecordBatch::try_new(
            self.layout.output_schema(Mode::UpdateDelete),
            cols,
        )?)
    }

    /// Whether a target batch may need rewriting: some key of the window appears in it.
    /// (scd2: an open version of one, when the batch has the end column.) The batch needs only
    /// the key columns (and `__crdb_end_hlc`), so a file can be checked without decoding it.
    pub fn touches(&self, target: &RecordBatch) -> Result<bool, ChangeError> {
        let keys = self.target_keys(target)?;
        let end = target
            .column_by_name(END_HLC)
            .map(|a| a.as_string::<i32>().clone());
        Ok(keys
            .iter()
            .enumerate()
            .any(|(r, k)| k.is_some() && end.as_ref().is_none_or(|e| e.is_null(r))))
    }

    /// scd2: the target batch with the open versions of changed keys ended at the key's first
    /// change, or `None` when it holds none (and not `always`). Those versions become the base
    /// of the new ones.
    pub fn close_target(
        &mut self,
        target: &RecordBatch,
        always: bool,
    ) -> Result<Option<RecordBatch>, ChangeError> {
        let keys = self.target_keys(target)?;
        let end = target
            .column_by_name(END_HLC)
            .map(|a| a.as_string::<i32>().clone());
        let open = |r: usize| end.as_ref().is_none_or(|e| e.is_null(r));
        let hits: Vec<(usize, u32)> = keys
            .iter()
            .enumerate()
            .filter_map(|(r, k)| k.filter(|_| open(r)).map(|k| (r, k)))
            .collect();
        if hits.is_empty() && !always {
            return Ok(None);
        }
        let first_change: HashMap<u32, i128> = {
            let mut m = HashMap::new();
            for c in &self.changes {
                m.entry(c.key).or_insert(c.updated);
            }
            m
        };
        let base_idx = self.bases.len();
        if !hits.is_empty() {
            let take_idx = arrow_array::UInt32Array::from(
                hits.iter().map(|(r, _)| *r as u32).collect::<Vec<_>>(),
            );
            let base = arrow_select::take::take_record_batch(target, &take_idx)?;
            self.bases.push(base);
        }
        let mut end_at: HashMap<usize, i128> = HashMap::new();
        for (i, (r, k)) in hits.iter().enumerate() {
            self.base_of.insert(*k, (base_idx, i));
            end_at.insert(*r, first_change[k]);
            self.counts.updated += 1;
        }
        let schema = self.layout.output_schema(Mode::Scd2);
        let t = 1 + self.stored.len();
        let rows: Vec<Vec<Slot>> = (0..target.num_rows())
            .map(|r| vec![(t, r); self.layout.columns.len()])
            .collect();
        let mut cols = self.gather(&rows, &[target])?;
        let start_hlc = target
            .column_by_name(START_HLC)
            .map(|a| a.as_string::<i32>().clone());
        let start_at = target.column_by_name(START_AT).and_then(|a| {
            a.as_primitive_opt::<arrow_array::types::TimestampMicrosecondType>()
                .cloned()
        });
        let end_at_old = target.column_by_name(END_AT).and_then(|a| {
            a.as_primitive_opt::<arrow_array::types::TimestampMicrosecondType>()
                .cloned()
        });
        let mut sh = StringBuilder::new();
        let mut eh = StringBuilder::new();
        let mut sa = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        let mut ea = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        for r in 0..target.num_rows() {
            let s = |a: &Option<arrow_array::StringArray>| {
                a.as_ref()
                    .and_then(|a| a.is_valid(r).then(|| a.value(r).to_owned()))
            };
            let t = |a: &Option<arrow_array::TimestampMicrosecondArray>| {
                a.as_ref().and_then(|a| a.is_valid(r).then(|| a.value(r)))
            };
            sh.append_option(s(&start_hlc));
            sa.append_option(t(&start_at));
            match end_at.get(&r) {
                Some(u) => {
                    let h = Hlc::from_decimal_i128(*u).unwrap_or_default();
                    eh.append_value(h.to_string());
                    ea.append_value(h.wall_micros());
                }
                None => {
                    eh.append_option(s(&end));
                    ea.append_option(t(&end_at_old));
                }
            }
        }
        cols.push(Arc::new(sh.finish()));
        cols.push(Arc::new(eh.finish()));
        cols.push(Arc::new(sa.finish()));
        cols.push(Arc::new(ea.finish()));
        Ok(Some(RecordBatch::try_new(schema, cols)?))
    }

    /// scd2: one row per new version (after every target batch was closed).
    pub fn versions(&mut self, batch_rows: usize) -> Result<Vec<RecordBatch>, ChangeError> {
        let mut out = Vec::new();
        while let Some(b) = self.next_output(Mode::Scd2, batch_rows)? {
            out.push(b);
        }
        Ok(out)
    }

    /// Every new version: (image, start, end).
    fn plan_versions(&mut self) -> Vec<Version> {
        let ncols = self.layout.columns.len();
        let base0 = 1 + self.stored.len();
        let mut versions: Vec<Version> = Vec::new();
        for r in self.ranges_by_key() {
            let key = self.changes[r.start].key;
            let mut image: Option<Vec<Option<Slot>>> = self
                .base_of
                .get(&key)
                .map(|&(b, row)| vec![Some((base0 + b, row)); ncols]);
            let mut open: Option<usize> = None;
            for c in &self.changes[r.clone()] {
                if let Some(v) = open.take() {
                    versions[v].2 = Some(c.updated);
                }
                if self.is_row_delete(c) {
                    image = None;
                    self.counts.deleted += 1;
                    continue;
                }
                let mut img = image.take().unwrap_or_else(|| vec![Some(NULL); ncols]);
                self.apply(c, &mut img);
                versions.push((
                    img.iter().map(|s| s.unwrap_or(NULL)).collect(),
                    c.updated,
                    None,
                ));
                open = Some(versions.len() - 1);
                image = Some(img);
            }
        }
        versions
    }

    fn build_versions(&mut self, chunk: &[Version]) -> Result<RecordBatch, ChangeError> {
        let schema = self.layout.output_schema(Mode::Scd2);
        let bases: Vec<RecordBatch> = self.bases.clone();
        let base_refs: Vec<&RecordBatch> = bases.iter().collect();
        let rows: Vec<Vec<Slot>> = chunk.iter().map(|v| v.0.clone()).collect();
        let mut cols = self.gather(&rows, &base_refs)?;
        let mut sh = StringBuilder::new();
        let mut eh = StringBuilder::new();
        let mut sa = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        let mut ea = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        for (_, start, end) in chunk {
            let s = Hlc::from_decimal_i128(*start).unwrap_or_default();
            sh.append_value(s.to_string());
            sa.append_value(s.wall_micros());
            match end.and_then(Hlc::from_decimal_i128) {
                Some(e) => {
                    eh.append_value(e.to_string());
                    ea.append_value(e.wall_micros());
                }
                None => {
                    eh.append_null();
                    ea.append_null();
                }
            }
        }
        cols.push(Arc::new(sh.finish()));
        cols.push(Arc::new(eh.finish()));
        cols.push(Arc::new(sa.finish()));
        cols.push(Arc::new(ea.finish()));
        self.counts.inserted += chunk.len() as u64;
        Ok(RecordBatch::try_new(schema, cols)?)
    }
}
