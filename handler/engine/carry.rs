//! Rows past a step's RESOLVED, kept for the table's next step instead of fetching and decoding
//! their file again. A file that straddles RESOLVEDs is otherwise decoded once per step it
//! spans: about twice per file when every RESOLVED is its own step, as in the function.
//!
//! In memory only: after a crash the files are read again, as the committed progress
//! (`pending_from`) says. The rows are used only by the next step of the same table, from
//! exactly the RESOLVED they were kept at, decoded with the same column types, and never in key
//! slices (every slice of an interval reads the rows up to its RESOLVED again).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use crdb_delta_core::Hlc;
use crdb_delta_core::apply::later_rows;
use crdb_delta_core::format::types::ColumnType;

/// One file's kept batches, each with the decoded input bytes it stands for, summed up to it
/// (as the decoder reports them, so a step's budget counts kept rows like read ones).
pub(super) type Batches = Vec<(RecordBatch, u64)>;

/// What one step kept for the next.
#[derive(Default)]
pub(super) struct Carry {
    /// The RESOLVED the rows are past: the next step starts there.
    after: Option<Hlc>,
    columns: BTreeMap<String, ColumnType>,
    files: HashMap<String, Batches>,
}

impl Carry {
    /// The kept files, when the step about to read starts at `applied` with `columns`;
    /// nothing otherwise.
    pub(super) fn take(
        self,
        applied: Option<Hlc>,
        columns: &BTreeMap<String, ColumnType>,
    ) -> HashMap<String, Batches> {
        if self.after.is_some() && self.after == applied && self.columns == *columns {
            self.files
        } else {
            HashMap::new()
        }
    }
}

/// Carries kept between runs of one process (the handler: one run per RESOLVED event), by
/// table path. Each is checked against the table's progress as read at the next run, so
/// another instance's commit in between only makes it unused.
#[derive(Clone, Default)]
pub struct CarryCache(Arc<Mutex<HashMap<String, Carry>>>);

impl std::fmt::Debug for CarryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CarryCache")
    }
}

impl CarryCache {
    pub(super) fn take(&self, table: &str) -> Carry {
        self.0
            .lock()
            .map(|mut m| m.remove(table).unwrap_or_default())
            .unwrap_or_default()
    }

    pub(super) fn put(&self, table: &str, carry: Carry) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(table.to_owned(), carry);
        }
    }
}

/// Gathers a step's rows past its RESOLVED, up to `limit` decoded bytes: a file whose rows do
/// not all fit is dropped whole (it is read again).
pub(super) struct Keeper {
    after: Hlc,
    columns: BTreeMap<String, ColumnType>,
    limit: u64,
    bytes: u64,
    files: HashMap<String, Batches>,
}

impl Keeper {
    pub(super) fn new(after: Hlc, columns: BTreeMap<String, ColumnType>, limit: u64) -> Self {
        Self {
            after,
            columns,
            limit,
            bytes: 0,
            files: HashMap::new(),
        }
    }

    /// The RESOLVED whose later rows are kept.
    pub(super) fn after(&self) -> Hlc {
        self.after
    }

    /// Keeps one file's later rows (from [`LaterOf`]), all or none.
    pub(super) fn keep(&mut self, path: &str, batches: Batches) {
        let bytes = batches.last().map_or(0, |b| b.1);
        if batches.is_empty() || self.bytes + bytes > self.limit {
            return;
        }
        self.bytes += bytes;
        self.files.insert(path.to_owned(), batches);
    }

    pub(super) fn finish(self) -> Carry {
        Carry {
            after: Some(self.after),
            columns: self.columns,
            files: self.files,
        }
    }
}

/// Collects the rows of one file's batches past `after`: fed each batch with the decoded
/// bytes it came from, it keeps the later rows with their share of those bytes. A batch it
/// cannot filter spoils the file: nothing of it is kept, so it is read again.
#[derive(Default)]
pub(super) struct LaterOf {
    kept: Batches,
    bytes: u64,
    spoilt: bool,
}

impl LaterOf {
    pub(super) fn add(&mut self, batch: &RecordBatch, input: u64, after: Hlc) {
        match later_rows(batch, after) {
            Ok(Some(later)) => {
                let share = (input as f64 * later.num_rows() as f64
                    / batch.num_rows().max(1) as f64)
                    .ceil() as u64;
                self.bytes += share;
                self.kept.push((later, self.bytes));
            }
            Ok(None) => {}
            Err(_) => self.spoilt = true,
        }
    }

    /// The kept batches; empty when there were none or the file is spoilt.
    pub(super) fn finish(self) -> Batches {
        if self.spoilt { Vec::new() } else { self.kept }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_only_from_the_resolved_it_was_kept_at_with_the_same_types() {
        let cols: BTreeMap<String, ColumnType> = [("id".into(), ColumnType::Int64)].into();
        let batch = RecordBatch::new_empty(std::sync::Arc::new(arrow_schema::Schema::empty()));
        let carry = |limit| {
            let mut k = Keeper::new(Hlc::new(10, 0), cols.clone(), limit);
            k.keep("a", vec![(batch.clone(), 5)]);
            k.keep("b", vec![(batch.clone(), 6)]);
            k.finish()
        };
        assert_eq!(carry(100).take(Some(Hlc::new(10, 0)), &cols).len(), 2);
        // Over the limit: the file that does not fit is dropped whole.
        assert_eq!(carry(10).take(Some(Hlc::new(10, 0)), &cols).len(), 1);
        assert!(carry(100).take(Some(Hlc::new(9, 0)), &cols).is_empty());
        assert!(carry(100).take(None, &cols).is_empty());
        let other: BTreeMap<String, ColumnType> = [("id".into(), ColumnType::Text)].into();
        assert!(carry(100).take(Some(Hlc::new(10, 0)), &other).is_empty());
        assert!(Carry::default().take(None, &cols).is_empty());
    }
}
