//! append_only: every distinct change as a row, in commit order: the full history. The table's
//! rows are never read or changed.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_array::builder::StringBuilder;
use arrow_schema::{DataType, Field};

use crate::apply::change_log::{HlcColumns, NULL, Rows};
use crate::apply::{
    COMMIT_TS, ChangeError, ChangeLog, Counts, FAMILIES, HLC, Keep, Merged, Mode, ModeWriter, OP,
    SOURCE_FILE, ts_type,
};

pub(crate) fn meta_fields(split_families: bool) -> Vec<Field> {
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

pub struct AppendOnly {
    log: ChangeLog,
    /// Changes in commit order, and the position reached.
    order: Vec<u32>,
    pos: usize,
    counts: Counts,
}

impl AppendOnly {
    pub fn new(log: ChangeLog) -> Self {
        let mut order: Vec<u32> = (0..log.changes.len() as u32).collect();
        // History reads naturally in commit order.
        order.sort_by_key(|&i| (log.changes[i as usize].updated, log.changes[i as usize].key));
        Self {
            log,
            order,
            pos: 0,
            counts: Counts::default(),
        }
    }

    fn build(&mut self, start: usize, end: usize) -> Result<RecordBatch, ChangeError> {
        let log = &self.log;
        let schema = log.layout.output_schema(Mode::AppendOnly);
        let mut rows = Rows::with_capacity(log.layout.columns.len(), end - start);
        let mut op = StringBuilder::new();
        let mut meta = HlcColumns::new();
        let mut file = StringBuilder::new();
        let mut fams = StringBuilder::new();
        for &i in &self.order[start..end] {
            let c = &log.changes[i as usize];
            let mut image = vec![Some(NULL); log.layout.columns.len()];
            if log.is_row_delete(c) {
                // A delete carries the key only.
                log.set_key(c, &mut image);
            } else {
                log.apply(c, &mut image);
            }
            rows.push(image.into_iter().map(|s| s.unwrap_or(NULL)));
            let code = log.op_code(c);
            // Every change is a new row; counted by what it did, as a user reads a summary.
            match code {
                "d" => self.counts.deleted += 1,
                "u" => self.counts.updated += 1,
                _ => self.counts.inserted += 1,
            }
            op.append_value(code);
            meta.push(Some(c.updated))?;
            let parts = log.parts(c);
            file.append_value(&*log.stored[parts[0].batch as usize].file);
            let names: Vec<&str> = parts
                .iter()
                .map(|f| log.family_names[f.family as usize].as_str())
                .collect();
            fams.append_value(names.join(","));
        }
        let mut cols = log.gather(&rows, &[])?;
        let (hlc, ts) = meta.finish();
        cols.push(Arc::new(op.finish()));
        cols.push(hlc);
        cols.push(ts);
        cols.push(Arc::new(file.finish()));
        if log.layout.split_families {
            cols.push(Arc::new(fams.finish()));
        }
        Ok(RecordBatch::try_new(schema, cols)?)
    }
}

impl ModeWriter for AppendOnly {
    fn mode(&self) -> Mode {
        Mode::AppendOnly
    }

    fn log(&self) -> &ChangeLog {
        &self.log
    }

    fn reads_table(&self) -> bool {
        false
    }

    fn probe_columns(&self) -> Vec<String> {
        Vec::new()
    }

    fn needs_table_values(&self) -> bool {
        false
    }

    /// History is only appended to: no table row is ever superseded.
    fn hits(&self, _table: &RecordBatch) -> Result<Vec<u32>, ChangeError> {
        Ok(Vec::new())
    }

    fn merge(&mut self, table: &RecordBatch, keep: Keep) -> Result<Merged, ChangeError> {
        let batch = match keep {
            Keep::All => table.clone(),
            Keep::Changed => RecordBatch::new_empty(table.schema()),
        };
        Ok(Merged {
            batch,
            superseded: Vec::new(),
            unresolved: Vec::new(),
        })
    }

    fn next_output(&mut self, batch_rows: usize) -> Result<Option<RecordBatch>, ChangeError> {
        if self.pos >= self.order.len() {
            return Ok(None);
        }
        let end = (self.pos + batch_rows.max(1)).min(self.order.len());
        let b = self.build(self.pos, end)?;
        self.pos = end;
        Ok(Some(b))
    }

    fn counts(&self) -> Counts {
        self.counts
    }
}
