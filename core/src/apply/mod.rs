//! From a window of change rows to what a Delta table mode writes.
//!
//! * [`window`]: every change row of one table with `lo < updated ≤ hi` (one RESOLVED step),
//!   gathered file by file; [`Window::finish`] merges the column-family fragments of one
//!   (key, HLC) into one change, drops duplicates and orders each key's changes by HLC.
//! * [`change_log`]: the result, a [`ChangeLog`]: shared by every mode, never mode-specific.
//! * [`key_text`]: a row's key identity, the JSON text of its key values.
//! * [`slice`]: which key slice a change row belongs to, when one interval is applied in
//!   several commits.
//! * [`modes`]: one file per mode, each a [`ModeWriter`] over the change log. [`writer`] holds
//!   the one `match` on [`Mode`]: adding a mode is a file plus an arm there.
//!
//! Everything here is pure: batches in, batches out. Values are never copied one by one; output
//! columns are gathered with Arrow's `interleave` from (source, row) pairs.

pub mod change_log;
mod key_text;
mod layout;
pub mod modes;
pub mod slice;
pub mod window;

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, DataType, Field, TimeUnit};

pub use change_log::ChangeLog;
pub use key_text::key_hash;
pub(crate) use key_text::{KeyTexts, key_text_into};
pub use layout::Layout;
pub use slice::{SliceTag, int_slice, slice_of, split_for_slices, text_slice};
pub use window::{PushOutcome, Window, later_rows};

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

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::UpdateDelete, Mode::AppendOnly, Mode::Scd2];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpdateDelete => "update_delete",
            Self::AppendOnly => "append_only",
            Self::Scd2 => "scd2",
        }
    }
}

/// A mode name that is none of [`Mode::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode `{0}` (update_delete, append_only, scd2)")]
pub struct UnknownMode(pub String);

impl std::str::FromStr for Mode {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, UnknownMode> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMode(s.to_owned()))
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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

pub(crate) fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")))
}

/// The mode's metadata fields, appended after the data columns.
pub fn meta_fields(mode: Mode, split_families: bool) -> Vec<Field> {
    match mode {
        Mode::UpdateDelete => modes::update_delete::meta_fields(),
        Mode::AppendOnly => modes::append_only::meta_fields(split_families),
        Mode::Scd2 => modes::scd2::meta_fields(),
    }
}

/// The writer of `mode` over a window's merged changes: the one place a mode is chosen.
pub fn writer(mode: Mode, log: ChangeLog) -> Box<dyn ModeWriter> {
    match mode {
        Mode::UpdateDelete => Box::new(modes::UpdateDelete::new(log)),
        Mode::AppendOnly => Box::new(modes::AppendOnly::new(log)),
        Mode::Scd2 => Box::new(modes::Scd2::new(log)),
    }
}

/// Why a window could not be built or applied.
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

/// What a window did, by kind: update_delete rows inserted, updated and deleted; append_only
/// changes by operation (each one a new row); scd2 versions opened, closed by a change, and
/// ended by a delete.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    /// scd2: versions ended from their change's `before` (`diff`), their rows not read.
    #[serde(default)]
    pub ended_from_before: u64,
}

/// What a table batch becomes once the window is applied to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Copy-on-write: every row that survives, changed or not (the file is rewritten whole).
    All,
    /// Merge-on-read: only the new versions of the rows the window supersedes (the old rows
    /// are marked deleted where they are).
    Changed,
}

/// A table batch with the window applied.
#[derive(Debug, Clone)]
pub struct Merged {
    /// Under [`Keep::All`] the batch's surviving rows; under [`Keep::Changed`] only the rows
    /// that replace superseded ones.
    pub batch: RecordBatch,
    /// Rows of the table batch (by position) that the window updated, deleted or closed.
    pub superseded: Vec<u32>,
    /// Rows of a batch of probe columns ([`ModeWriter::merge_probed`]) that need the row's
    /// other values: merged again once read whole (neither superseded nor written here).
    pub unresolved: Vec<u32>,
}

/// What a mode writes for one window. The engine asks, per table file, whether the window
/// touches it and merges its batches; then drains the mode's new rows.
pub trait ModeWriter: Send {
    fn mode(&self) -> Mode;
    fn log(&self) -> &ChangeLog;
    /// Whether the table's current rows matter. When not, [`ModeWriter::merge`] is never needed.
    fn reads_table(&self) -> bool;
    /// Columns [`ModeWriter::hits`] needs from a table batch (a file can be checked without
    /// decoding its other columns).
    fn probe_columns(&self) -> Vec<String>;
    /// Whether [`ModeWriter::merge`] under [`Keep::Changed`] needs the table rows' other
    /// columns, or only [`ModeWriter::probe_columns`]: a change that carries the whole row
    /// replaces it without reading it.
    fn needs_table_values(&self) -> bool;
    /// The rows of a table batch the window supersedes: all that [`ModeWriter::merge`] under
    /// [`Keep::Changed`] needs of it (merged alone, they give the same output), so a file can
    /// be read at those rows only.
    fn hits(&self, table: &RecordBatch) -> Result<Vec<u32>, ChangeError>;
    /// A table batch with the window applied (see [`Keep`]).
    fn merge(&mut self, table: &RecordBatch, keep: Keep) -> Result<Merged, ChangeError>;
    /// [`ModeWriter::merge`] under [`Keep::Changed`] of a batch holding only the
    /// [`ModeWriter::probe_columns`] (when [`ModeWriter::needs_table_values`] is false). Rows it
    /// cannot merge from those are returned [`Merged::unresolved`], to be merged again with
    /// their whole rows.
    fn merge_probed(&mut self, probe: &RecordBatch) -> Result<Merged, ChangeError> {
        self.merge(probe, Keep::Changed)
    }
    /// The next batch of new rows (after every table batch was merged): every change
    /// (append_only), rows of keys the table did not have (update_delete), new versions (scd2);
    /// `None` when done. Built one at a time so the output never exists whole in memory.
    fn next_output(&mut self, batch_rows: usize) -> Result<Option<RecordBatch>, ChangeError>;
    fn counts(&self) -> Counts;

    /// Every remaining output batch.
    fn outputs(&mut self, batch_rows: usize) -> Result<Vec<RecordBatch>, ChangeError> {
        let mut out = Vec::new();
        while let Some(b) = self.next_output(batch_rows)? {
            out.push(b);
        }
        Ok(out)
    }
}
