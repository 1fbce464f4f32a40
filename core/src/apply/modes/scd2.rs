//! scd2 (SCD type 2): one row per version with its validity interval.
//!
//! The open version of each changed key is ended at the key's first change in the window, and
//! becomes the base of the key's new versions (columns a change does not carry keep the base's
//! values); each change opens a version, ended by the next one; a delete ends the last.

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field};

use crate::apply::change_log::{HlcColumns, NULL, Slot, hlc_columns};
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
    /// Key → its first change in the window (where its open version ends).
    first_change: HashMap<u32, i128>,
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
        for c in &log.changes {
            first_change.entry(c.key).or_insert(c.updated);
        }
        Self {
            log,
            first_change,
            bases: Vec::new(),
            base_of: HashMap::new(),
            counts: Counts::default(),
            versions: None,
        }
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
            let mut image: Option<Vec<Option<Slot>>> = self
                .base_of
                .get(&key)
                .map(|&(b, row)| vec![Some((base0 + b, row)); ncols]);
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
        let rows: Vec<Vec<Slot>> = chunk.iter().map(|v| v.0.clone()).collect();
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

    fn probe_columns(&self) -> Vec<String> {
        let mut cols = self.log.layout.key.clone();
        cols.push(END_HLC.to_owned());
        cols
    }

    /// Always: a closed version is written again whole, with its end set.
    fn needs_table_values(&self) -> bool {
        true
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
            end_at.insert(*r, self.first_change[k]);
            self.counts.updated += 1;
        }
        let kept: Vec<usize> = match keep {
            Keep::All => (0..table.num_rows()).collect(),
            Keep::Changed => hits.iter().map(|(r, _)| *r).collect(),
        };
        let t = self.log.extra_source();
        let ncols = self.log.layout.columns.len();
        let rows: Vec<Vec<Slot>> = kept.iter().map(|&r| vec![(t, r); ncols]).collect();
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
