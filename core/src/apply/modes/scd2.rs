//! scd2 (SCD type 2): one row per version with its validity interval.
//!
//! The open version of each changed key is ended at the key's first change in the window, and
//! becomes the base of the key's new versions (columns a change does not carry keep the base's
//! values); each change opens a version, ended by the next one; a delete ends the last.
//!
//! Ending a version writes it again whole. Its values come from the table row, or, when the
//! changefeed has `diff`, from the first change's `before` (the row as CockroachDB had it just
//! before, which is the version the table holds open): then only the key, end and start
//! columns of the table are read, as update_delete reads only the key.

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field};

use crate::apply::change_log::{HlcColumns, NULL, Rows, Slot, hlc_columns};
use crate::apply::{
    ChangeError, ChangeLog, Counts, END_AT, END_HLC, Keep, Merged, Mode, ModeWriter, START_AT,
    START_HLC, ts_type,
};

pub(crate) fn meta_fields() -> Vec<Field> {
    vec![
        Field::new(START_HLC, DataType::Utf8, true),
        Field::new(END_HLC, DataType::Utf8, true),
        Field::new(START_AT, ts_type(), true),
        Field::new(END_AT, ts_type(), true),
    ]
}

/// A new version: its column sources, start and end HLC.
type Version = (Vec<Slot>, i128, Option<i128>);

pub struct Scd2 {
    log: ChangeLog,
    /// Key → its first change in the window (where its open version ends), by index.
    first_change: HashMap<u32, usize>,
    /// Open versions taken from the changes' `before`: key → its values' sources.
    before_base: HashMap<u32, Vec<Slot>>,
    /// Whether versions are ended from `before` ([`ModeWriter::merge_probed`]): some key's
    /// first change carries a whole one. Not for a window without any (no `diff`; column
    /// families, whose `before` holds one family), which would pay for the start columns and
    /// then read the rows anyway.
    from_before: bool,
    /// Open versions taken from the table: the bases of new versions.
    bases: Vec<RecordBatch>,
    /// Key → (base batch, row): the version that was open in the table.
    base_of: HashMap<u32, (usize, usize)>,
    counts: Counts,
    /// New versions still to write, and the position reached.
    versions: Option<(Vec<Version>, usize)>,
}

impl Scd2 {
    pub fn new(log: ChangeLog) -> Self {
        let mut first_change = HashMap::new();
        for (i, c) in log.changes.iter().enumerate() {
            first_change.entry(c.key).or_insert(i);
        }
        let from_before = log.has_befores()
            && first_change
                .values()
                .any(|&i| log.before_image(&log.changes[i]).is_some());
        Self {
            log,
            first_change,
            before_base: HashMap::new(),
            from_before,
            bases: Vec::new(),
            base_of: HashMap::new(),
            counts: Counts::default(),
            versions: None,
        }
    }

    /// The HLC of key `k`'s first change in the window.
    fn first_updated(&self, k: u32) -> i128 {
        self.log.changes[self.first_change[&k]].updated
    }

    /// Rows of a table batch that hold the open version of a changed key: (row, key).
    fn open_hits(&self, table: &RecordBatch) -> Result<Vec<(usize, u32)>, ChangeError> {
        let keys = self.log.table_keys(table)?;
        let end = end_column(table);
        Ok(keys
            .iter()
            .enumerate()
            .filter(|(r, _)| end.as_ref().is_none_or(|e| e.is_null(*r)))
            .filter_map(|(r, k)| k.map(|k| (r, k)))
            .collect())
    }

    /// Every new version: (image, start, end).
    fn plan_versions(&mut self) -> Vec<Version> {
        let log = &self.log;
        let ncols = log.layout.columns.len();
        let base0 = log.extra_source();
        let mut versions: Vec<Version> = Vec::new();
        for r in log.ranges_by_key() {
            let key = log.changes[r.start].key;
            let mut image: Option<Vec<Option<Slot>>> = match self.base_of.get(&key) {
                Some(&(b, row)) => Some(vec![Some((base0 + b, row)); ncols]),
                None => self
                    .before_base
                    .get(&key)
                    .map(|img| img.iter().copied().map(Some).collect()),
            };
            let mut open: Option<usize> = None;
            for c in &log.changes[r.clone()] {
                if let Some(v) = open.take() {
                    versions[v].2 = Some(c.updated);
                }
                if log.is_row_delete(c) {
                    image = None;
                    self.counts.deleted += 1;
                    continue;
                }
                let mut img = image.take().unwrap_or_else(|| vec![Some(NULL); ncols]);
                log.apply(c, &mut img);
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
        let schema = self.log.layout.output_schema(Mode::Scd2);
        let base_refs: Vec<&RecordBatch> = self.bases.iter().collect();
        let mut rows = Rows::with_capacity(self.log.layout.columns.len(), chunk.len());
        for v in chunk {
            rows.push(v.0.iter().copied());
        }
        let mut cols = self.log.gather(&rows, &base_refs)?;
        let mut start = HlcColumns::new();
        let mut end = HlcColumns::new();
        for (_, s, e) in chunk {
            start.push(Some(*s))?;
            end.push(*e)?;
        }
        let (sh, sa) = start.finish();
        let (eh, ea) = end.finish();
        cols.extend([sh, eh, sa, ea]);
        self.counts.inserted += chunk.len() as u64;
        Ok(RecordBatch::try_new(schema, cols)?)
    }
}

fn end_column(table: &RecordBatch) -> Option<StringArray> {
    table
        .column_by_name(END_HLC)
        .and_then(|a| a.as_string_opt::<i32>().cloned())
}

impl ModeWriter for Scd2 {
    fn mode(&self) -> Mode {
        Mode::Scd2
    }

    fn log(&self) -> &ChangeLog {
        &self.log
    }

    fn reads_table(&self) -> bool {
        true
    }

    /// The key and the end (which version is open); with `before`, also the start, which is
    /// all an ended version takes from the table then.
    fn probe_columns(&self) -> Vec<String> {
        let mut cols = self.log.layout.key.clone();
        cols.push(END_HLC.to_owned());
        if self.from_before {
            cols.extend([START_HLC.to_owned(), START_AT.to_owned()]);
        }
        cols
    }

    /// An ended version is written again whole: its values come from the table, unless the
    /// changes carry `before` (then [`ModeWriter::merge_probed`] asks for the rows of keys
    /// whose first change has none).
    fn needs_table_values(&self) -> bool {
        !self.from_before
    }

    fn hits(&self, table: &RecordBatch) -> Result<Vec<u32>, ChangeError> {
        Ok(self
            .open_hits(table)?
            .iter()
            .map(|(r, _)| *r as u32)
            .collect())
    }

    /// Ends the open versions of changed keys at the key's first change; they become the base
    /// of the new versions.
    fn merge(&mut self, table: &RecordBatch, keep: Keep) -> Result<Merged, ChangeError> {
        let hits = self.open_hits(table)?;
        let base_idx = self.bases.len();
        if !hits.is_empty() {
            let take_idx = arrow_array::UInt32Array::from(
                hits.iter().map(|(r, _)| *r as u32).collect::<Vec<_>>(),
            );
            self.bases
                .push(arrow_select::take::take_record_batch(table, &take_idx)?);
        }
        let mut end_at: HashMap<usize, i128> = HashMap::new();
        for (i, (r, k)) in hits.iter().enumerate() {
            self.base_of.insert(*k, (base_idx, i));
            end_at.insert(*r, self.first_updated(*k));
            self.counts.updated += 1;
        }
        let kept: Vec<usize> = match keep {
            Keep::All => (0..table.num_rows()).collect(),
            Keep::Changed => hits.iter().map(|(r, _)| *r).collect(),
        };
        let t = self.log.extra_source();
        let ncols = self.log.layout.columns.len();
        let mut rows = Rows::with_capacity(ncols, kept.len());
        for &r in &kept {
            rows.push_same((t, r));
        }
        let mut cols = self.log.gather(&rows, &[table])?;
        let (start_hlc, start_at) = hlc_columns(table, START_HLC, START_AT);
        let (end_hlc, end_at_old) = hlc_columns(table, END_HLC, END_AT);
        let mut start = HlcColumns::new();
        let mut end = HlcColumns::new();
        for &r in &kept {
            start.copy(start_hlc.as_ref(), start_at.as_ref(), r);
            match end_at.get(&r) {
                Some(u) => end.push(Some(*u))?,
                None => end.copy(end_hlc.as_ref(), end_at_old.as_ref(), r),
            }
        }
        let (sh, sa) = start.finish();
        let (eh, ea) = end.finish();
        cols.extend([sh, eh, sa, ea]);
        Ok(Merged {
            batch: RecordBatch::try_new(self.log.layout.output_schema(Mode::Scd2), cols)?,
            superseded: hits.iter().map(|(r, _)| *r as u32).collect(),
            unresolved: Vec::new(),
        })
    }

    /// Ends the open versions of changed keys whose first change carries its `before`, from
    /// it and the table's start columns; other hits are left [`Merged::unresolved`].
    fn merge_probed(&mut self, probe: &RecordBatch) -> Result<Merged, ChangeError> {
        if !self.from_before {
            return self.merge(probe, Keep::Changed);
        }
        let mut rows = Rows::with_capacity(self.log.layout.columns.len(), 0);
        let mut ended: Vec<(usize, i128)> = Vec::new();
        let mut unresolved = Vec::new();
        for (r, k) in self.open_hits(probe)? {
            let first = &self.log.changes[self.first_change[&k]];
            match self.log.before_image(first) {
                Some(image) => {
                    rows.push(image.iter().copied());
                    self.before_base.insert(k, image);
                    ended.push((r, first.updated));
                    self.counts.updated += 1;
                    self.counts.ended_from_before += 1;
                }
                None => unresolved.push(r as u32),
            }
        }
        let mut cols = self.log.gather(&rows, &[])?;
        let (start_hlc, start_at) = hlc_columns(probe, START_HLC, START_AT);
        let mut start = HlcColumns::new();
        let mut end = HlcColumns::new();
        for &(r, u) in &ended {
            start.copy(start_hlc.as_ref(), start_at.as_ref(), r);
            end.push(Some(u))?;
        }
        let (sh, sa) = start.finish();
        let (eh, ea) = end.finish();
        cols.extend([sh, eh, sa, ea]);
        Ok(Merged {
            batch: RecordBatch::try_new(self.log.layout.output_schema(Mode::Scd2), cols)?,
            superseded: ended.iter().map(|&(r, _)| r as u32).collect(),
            unresolved,
        })
    }

    fn next_output(&mut self, batch_rows: usize) -> Result<Option<RecordBatch>, ChangeError> {
        let (versions, pos) = match self.versions.take() {
            Some(cursor) => cursor,
            None => (self.plan_versions(), 0),
        };
        if pos >= versions.len() {
            self.versions = Some((versions, pos));
            return Ok(None);
        }
        let end = (pos + batch_rows.max(1)).min(versions.len());
        let b = self.build_versions(&versions[pos..end])?;
        self.versions = Some((versions, end));
        Ok(Some(b))
    }

    fn counts(&self) -> Counts {
        self.counts
    }
}
