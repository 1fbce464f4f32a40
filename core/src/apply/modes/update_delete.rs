//! update_delete (SCD type 1): one row per key with its current state.
//!
//! Each changed key's net effect over the window is computed once ([`Final`]); table rows of
//! changed keys are replaced by their new image or dropped, and keys the table did not have
//! become new rows, in key order (one integer or string key by value, see
//! [`crate::apply::Window`]) so new files' key ranges stay tight.

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field};

use crate::apply::change_log::{HlcColumns, NULL, Rows, Slot, hlc_columns};
use crate::apply::{
    COMMIT_TS, ChangeError, ChangeLog, Counts, HLC, Keep, Merged, Mode, ModeWriter, ts_type,
};

pub(crate) fn meta_fields() -> Vec<Field> {
    vec![
        Field::new(HLC, DataType::Utf8, true),
        Field::new(COMMIT_TS, ts_type(), true),
    ]
}

/// The net effect of a window on one key; its image (column → new value, `None` keeps the
/// table's current value) is the key's row of [`UpdateDelete::images`].
#[derive(Debug, Clone, Copy)]
enum Final {
    Delete,
    Image { updated: i128 },
}

pub struct UpdateDelete {
    log: ChangeLog,
    /// Key id → its net effect (`None`: no change of the window has that key); dense, as key
    /// ids are, so the probe path does no hashing.
    finals: Vec<Option<Final>>,
    /// Key id × column → the image's slot, one flat array (no allocation per key).
    images: Vec<Option<Slot>>,
    /// Key id → the table had it (its row was merged).
    matched: Vec<bool>,
    counts: Counts,
    /// New keys still to write, and the position reached.
    inserts: Option<(Vec<u32>, usize)>,
}

impl UpdateDelete {
    pub fn new(log: ChangeLog) -> Self {
        let ncols = log.layout.columns.len();
        let nkeys = log.key_texts.len();
        let mut finals = vec![None; nkeys];
        let mut images = vec![None; nkeys * ncols];
        for r in log.ranges_by_key() {
            let key = log.changes[r.start].key as usize;
            let image = &mut images[key * ncols..(key + 1) * ncols];
            let mut fin: Option<Final> = None;
            for c in &log.changes[r.clone()] {
                if log.is_row_delete(c) {
                    fin = Some(Final::Delete);
                    continue;
                }
                if let Some(Final::Delete) = fin {
                    // Re-inserted after a delete: nothing of the old row survives.
                    image.fill(Some(NULL));
                }
                log.apply(c, image);
                fin = Some(Final::Image { updated: c.updated });
            }
            finals[key] = fin;
        }
        Self {
            log,
            finals,
            images,
            matched: vec![false; nkeys],
            counts: Counts::default(),
            inserts: None,
        }
    }

    fn image(&self, key: u32) -> &[Option<Slot>] {
        let ncols = self.log.layout.columns.len();
        &self.images[key as usize * ncols..(key as usize + 1) * ncols]
    }

    fn build_inserts(&mut self, keys: &[u32]) -> Result<RecordBatch, ChangeError> {
        let mut rows = Rows::with_capacity(self.log.layout.columns.len(), keys.len());
        let mut meta = HlcColumns::new();
        for &k in keys {
            if let Some(Final::Image { updated }) = self.finals[k as usize] {
                rows.push(self.image(k).iter().map(|s| s.unwrap_or(NULL)));
                meta.push(Some(updated))?;
            }
        }
        let mut cols = self.log.gather(&rows, &[])?;
        let (hlc, ts) = meta.finish();
        cols.push(hlc);
        cols.push(ts);
        self.counts.inserted += rows.len() as u64;
        Ok(RecordBatch::try_new(
            self.log.layout.output_schema(Mode::UpdateDelete),
            cols,
        )?)
    }
}

impl ModeWriter for UpdateDelete {
    fn mode(&self) -> Mode {
        Mode::UpdateDelete
    }

    fn log(&self) -> &ChangeLog {
        &self.log
    }

    fn reads_table(&self) -> bool {
        true
    }

    fn probe_columns(&self) -> Vec<String> {
        self.log.layout.key.clone()
    }

    /// Only when some key's new image keeps a column of the table's row (a change of some
    /// column families only).
    fn needs_table_values(&self) -> bool {
        self.finals.iter().enumerate().any(|(k, f)| match f {
            Some(Final::Image { .. }) => self.image(k as u32).iter().any(Option::is_none),
            Some(Final::Delete) | None => false,
        })
    }

    fn hits(&self, table: &RecordBatch) -> Result<Vec<u32>, ChangeError> {
        let keys = self.log.table_keys(table)?;
        Ok((0..keys.len() as u32)
            .filter(|&r| keys[r as usize].is_some_and(|k| self.finals[k as usize].is_some()))
            .collect())
    }

    fn merge(&mut self, table: &RecordBatch, keep: Keep) -> Result<Merged, ChangeError> {
        let keys = self.log.table_keys(table)?;
        let t = self.log.extra_source();
        let ncols = self.log.layout.columns.len();
        let mut rows = Rows::with_capacity(ncols, 0);
        let mut meta_rows: Vec<(usize, Option<i128>)> = Vec::new();
        let mut superseded = Vec::new();
        for (r, k) in keys.iter().enumerate() {
            match k.and_then(|k| self.finals[k as usize].map(|f| (k, f))) {
                None => {
                    if keep == Keep::All {
                        rows.push_same((t, r));
                        meta_rows.push((r, None));
                    }
                }
                Some((k, Final::Delete)) => {
                    self.matched[k as usize] = true;
                    self.counts.deleted += 1;
                    superseded.push(r as u32);
                }
                Some((k, Final::Image { updated })) => {
                    self.matched[k as usize] = true;
                    self.counts.updated += 1;
                    superseded.push(r as u32);
                    rows.push(self.image(k).iter().map(|s| s.unwrap_or((t, r))));
                    meta_rows.push((r, Some(updated)));
                }
            }
        }
        let mut cols = self.log.gather(&rows, &[table])?;
        // Metadata: kept from the table for untouched rows, new for changed ones.
        let (old_hlc, old_ts) = hlc_columns(table, HLC, COMMIT_TS);
        let mut meta = HlcColumns::new();
        for (r, upd) in meta_rows {
            match upd {
                Some(u) => meta.push(Some(u))?,
                None => meta.copy(old_hlc.as_ref(), old_ts.as_ref(), r),
            }
        }
        let (hlc, ts) = meta.finish();
        cols.push(hlc);
        cols.push(ts);
        Ok(Merged {
            batch: RecordBatch::try_new(self.log.layout.output_schema(Mode::UpdateDelete), cols)?,
            superseded,
            unresolved: Vec::new(),
        })
    }

    fn next_output(&mut self, batch_rows: usize) -> Result<Option<RecordBatch>, ChangeError> {
        let (keys, pos) = match self.inserts.take() {
            Some(cursor) => cursor,
            None => {
                // Key ids are in key order already.
                let keys: Vec<u32> = (0..self.finals.len() as u32)
                    .filter(|&k| {
                        !self.matched[k as usize]
                            && matches!(self.finals[k as usize], Some(Final::Image { .. }))
                    })
                    .collect();
                (keys, 0)
            }
        };
        if pos >= keys.len() {
            self.inserts = Some((keys, pos));
            return Ok(None);
        }
        let end = (pos + batch_rows.max(1)).min(keys.len());
        let b = self.build_inserts(&keys[pos..end])?;
        self.inserts = Some((keys, end));
        Ok(Some(b))
    }

    fn counts(&self) -> Counts {
        self.counts
    }
}
