//! `crdb-delta maintain`: table upkeep, so a long-running table stays as cheap to read and to
//! apply to as a fresh one. Per Delta table below a target root:
//!
//! 1. **Compaction**: small files (one per RESOLVED for insert-heavy tables) and files whose
//!    rows are mostly deleted (deletion vectors) are rewritten into files of the target size,
//!    rows in key order (narrow key ranges keep pruning effective); their deletion vectors are
//!    purged. `dataChange` false, operation OPTIMIZE, at most `max_bytes` read per table and run.
//!    A concurrent commit touching the same files wins: the compaction is dropped, never forced
//!    (our own apply re-plans when a compaction wins, see `delta::commit`).
//! 2. **Checkpoint** of the current version.
//! 3. **Log cleanup**: commits older than the table's `delta.logRetentionDuration` (30 days by
//!    default). Our exact progress stays readable: the RESOLVED is in checkpointed `txn`s.
//! 4. **VACUUM** of files unreferenced for longer than the retention (default 7 days), including
//!    deletion-vector files of lost commit races.

use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use deltalake_core::DeltaTable;
use serde::Serialize;

use crate::delta::{self, Commit, CommitKind, Committed, DeltaError, FileEntry, Target};
use crate::records::{Figures, MaintenanceFigures};
use crate::storage::Location;

/// Default VACUUM retention: Delta's own default (7 days), so time travel and readers that
/// started before a compaction keep working.
pub const DEFAULT_RETAIN_HOURS: u64 = 168;

#[derive(Debug, Clone)]
pub struct MaintainOptions {
    pub target_file_size: u64,
    /// Stored bytes one table's compaction may read per run (a memory bound).
    pub max_bytes: u64,
    /// A file with at least this share of its rows deleted is rewritten.
    pub purge_ratio: f64,
    pub retain: Duration,
    /// Log entries older than this are cleaned up; `None`: the table's
    /// `delta.logRetentionDuration` (30 days unless set).
    pub log_retention: Option<Duration>,
    pub compact: bool,
    pub checkpoint: bool,
    pub cleanup: bool,
    pub vacuum: bool,
}

impl Default for MaintainOptions {
    fn default() -> Self {
        Self {
            target_file_size: crate::engine::DEFAULT_TARGET_FILE_SIZE,
            max_bytes: 128 << 20,
            purge_ratio: 0.5,
            retain: Duration::from_secs(DEFAULT_RETAIN_HOURS * 3600),
            log_retention: None,
            compact: true,
            checkpoint: true,
            cleanup: true,
            vacuum: true,
        }
    }
}

/// What upkeep did to one table.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TableUpkeep {
    pub table: String,
    pub files_compacted: u64,
    pub files_written: u64,
    /// Rows dropped with the deletion vectors purged.
    pub rows_purged: u64,
    pub rows_rewritten: u64,
    /// Why a compaction that was planned did not commit (another writer won).
    pub compaction_skipped: Option<String>,
    pub checkpoint_version: Option<u64>,
    /// `delta.checkpointInterval` was missing and set ([`crate::delta::CHECKPOINT_INTERVAL`]).
    pub checkpoint_interval_set: bool,
    pub log_files_deleted: u64,
    pub files_vacuumed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error("Delta table {table}: {source}")]
    Table {
        table: String,
        #[source]
        source: Box<deltalake_core::DeltaTableError>,
    },
    #[error("Delta table {table}: {message}")]
    Rows { table: String, message: String },
}

/// Upkeep of the Delta table at `path` below `target`.
pub async fn maintain_table(
    target: &Location,
    path: &str,
    opts: &MaintainOptions,
) -> Result<TableUpkeep, MaintainError> {
    let t = Target::new(target, path)?;
    let mut report = TableUpkeep {
        table: path.to_owned(),
        ..TableUpkeep::default()
    };
    let Some(mut table) = t.open().await? else {
        return Ok(report);
    };
    let err = |source| MaintainError::Table {
        table: path.to_owned(),
        source: Box::new(source),
    };
    if opts.compact {
        compact(&mut table, path, opts, &mut report).await?;
    }
    // Tables made before new ones got a checkpoint interval of 10 replay up to 99 commits at
    // every open: they get it here.
    if opts.checkpoint
        && let Some(t) = crate::delta::set_checkpoint_interval(&table, path).await?
    {
        table = t;
        report.checkpoint_interval_set = true;
    }
    if opts.checkpoint {
        deltalake_core::protocol::checkpoints::create_checkpoint(&table, None)
            .await
            .map_err(err)?;
        report.checkpoint_version = table.version();
    }
    if opts.cleanup {
        report.log_files_deleted = match opts.log_retention {
            None => deltalake_core::protocol::checkpoints::cleanup_metadata(&table, None)
                .await
                .map_err(err)?,
            Some(keep) => {
                let cutoff = chrono::Utc::now()
                    - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
                deltalake_core::protocol::checkpoints::cleanup_expired_logs_for(
                    table.version().unwrap_or(0) as _,
                    table.log_store().as_ref(),
                    cutoff.timestamp_millis(),
                    None,
                )
                .await
                .map_err(err)?
            }
        } as u64;
    }
    if opts.vacuum {
        // Opened again: the snapshot read before the cleanup may name commits it deleted.
        let table = t.open().await?.ok_or_else(|| MaintainError::Rows {
            table: path.to_owned(),
            message: "the table disappeared during upkeep".into(),
        })?;
        let (_, metrics) = table
            .vacuum()
            .with_retention_period(
                chrono::Duration::from_std(opts.retain).unwrap_or(chrono::Duration::MAX),
            )
            .with_enforce_retention_duration(false)
            .with_mode(deltalake_core::operations::vacuum::VacuumMode::Full)
            .await
            .map_err(err)?;
        report.files_vacuumed = metrics.files_deleted.len() as u64;
    }
    Ok(report)
}

/// Which files to compact: those with most rows deleted, then small ones, up to `max_bytes`.
/// Nothing when that would rewrite a single small file into itself.
fn select(files: Vec<FileEntry>, opts: &MaintainOptions) -> Vec<FileEntry> {
    let deleted = |f: &FileEntry| f.dv.as_ref().map_or(0, |d| d.cardinality.max(0) as u64);
    let heavy = |f: &FileEntry| {
        f.num_records
            .is_some_and(|n| n > 0 && deleted(f) as f64 >= opts.purge_ratio * n as f64)
    };
    let small = |f: &FileEntry| (f.size.max(0) as u64) < opts.target_file_size / 4;
    let (mut picked, rest): (Vec<FileEntry>, Vec<FileEntry>) = files.into_iter().partition(heavy);
    let mut smalls: Vec<FileEntry> = rest.into_iter().filter(small).collect();
    // Neighbouring key ranges together: the output files stay narrow.
    smalls.sort_by(|a, b| {
        let k = |f: &FileEntry| f.key_range.as_ref().map(|r| r.0.to_string());
        k(a).cmp(&k(b))
    });
    if picked.is_empty() && smalls.len() < 2 {
        return Vec::new();
    }
    picked.extend(smalls);
    let mut bytes = 0u64;
    let mut out = Vec::new();
    for f in picked {
        bytes += f.size.max(0) as u64;
        if bytes > opts.max_bytes && !out.is_empty() {
            break;
        }
        out.push(f);
    }
    if out.len() < 2 && out.iter().all(|f| f.dv.is_none()) {
        return Vec::new();
    }
    out
}

async fn compact(
    table: &mut DeltaTable,
    path: &str,
    opts: &MaintainOptions,
    report: &mut TableUpkeep,
) -> Result<(), MaintainError> {
    let (layout, mode) = match delta::layout_of(table, path) {
        Ok((l, m)) => (
            Some(l),
            m.unwrap_or(crdb_delta_core::apply::Mode::AppendOnly),
        ),
        // Not one of our data tables (e.g. `_crdb_delta_resolved`): compacted in file order.
        Err(_) => (None, crdb_delta_core::apply::Mode::AppendOnly),
    };
    let progress = delta::progress(table, path).await?;
    let Some(resolved) = progress.applied else {
        return Ok(());
    };
    let key: Vec<String> = layout.as_ref().map(|l| l.key.clone()).unwrap_or_default();
    let first = key.first().cloned().unwrap_or_default();
    let files = delta::files(table, &first)
        .await
        .map_err(|e| MaintainError::Table {
            table: path.to_owned(),
            source: Box::new(e),
        })?;
    let selected = select(files, opts);
    if selected.is_empty() {
        return Ok(());
    }
    let schema: SchemaRef = table
        .snapshot()
        .map_err(|e| MaintainError::Table {
            table: path.to_owned(),
            source: Box::new(e),
        })?
        .snapshot()
        .arrow_schema();
    let rows_err = |message: String| MaintainError::Rows {
        table: path.to_owned(),
        message,
    };
    let mut batches = Vec::new();
    for f in &selected {
        report.rows_purged += f.dv.as_ref().map_or(0, |d| d.cardinality.max(0) as u64);
        for b in delta::read_live_file(table, f, 65_536).await? {
            batches.push(conform(&b, &schema).map_err(|e| rows_err(e.to_string()))?);
        }
    }
    let all = deltalake_core::arrow::compute::concat_batches(&schema, &batches)
        .map_err(|e| rows_err(e.to_string()))?;
    let sorted = sort_by_key(&all, &key).map_err(|e| rows_err(e.to_string()))?;
    report.rows_rewritten = sorted.num_rows() as u64;
    let mut writer =
        delta::Writer::new(table, opts.target_file_size).map_err(|e| MaintainError::Table {
            table: path.to_owned(),
            source: Box::new(e),
        })?;
    let mut offset = 0;
    while offset < sorted.num_rows() {
        let n = 65_536.min(sorted.num_rows() - offset);
        writer
            .write(sorted.slice(offset, n))
            .await
            .map_err(|e| MaintainError::Table {
                table: path.to_owned(),
                source: Box::new(e),
            })?;
        offset += n;
    }
    let mut adds = writer.finish().await.map_err(|e| MaintainError::Table {
        table: path.to_owned(),
        source: Box::new(e),
    })?;
    for a in &mut adds {
        a.data_change = false;
    }
    let removes = selected
        .iter()
        .map(|f| {
            let mut r = f.remove.clone();
            r.data_change = false;
            r
        })
        .collect();
    let (files_compacted, files_written) = (selected.len() as u64, adds.len() as u64);
    let committed = delta::commit(
        table,
        path,
        Commit {
            adds,
            removes,
            layout: None,
            progress: progress.clone(),
            resolved,
            ends_slices: false,
            figures: Figures::Maintenance(MaintenanceFigures {
                files_compacted,
                files_written,
                rows_purged: report.rows_purged,
            }),
            mode,
            kind: CommitKind::Compact {
                target_size: i64::try_from(opts.target_file_size).unwrap_or(i64::MAX),
            },
        },
        // Maintain writes its own checkpoint once compaction is committed.
        &delta::Checkpoints::Inline,
    )
    .await?;
    match committed {
        Committed::Version(v) => {
            tracing::info!(
                table = path,
                version = v,
                files_compacted,
                files_written,
                "compacted"
            );
            report.files_compacted = files_compacted;
            report.files_written = files_written;
        }
        Committed::Conflict(c) => {
            tracing::info!(table = path, conflict = %c, "compaction dropped: a concurrent commit touched its files");
            report.compaction_skipped = Some(c.to_string());
            report.rows_purged = 0;
            report.rows_rewritten = 0;
        }
    }
    Ok(())
}

/// A batch in the table's current schema: columns an older file lacks become NULL.
fn conform(b: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let cols = schema
        .fields()
        .iter()
        .map(|f| match b.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => deltalake_core::arrow::compute::cast(c, f.data_type()),
            None => Ok(arrow_array::new_null_array(f.data_type(), b.num_rows())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), cols)
}

/// Rows in key order (the key columns' natural order), so compacted files have narrow ranges.
fn sort_by_key(b: &RecordBatch, key: &[String]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    use deltalake_core::arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
    let columns: Vec<SortColumn> = key
        .iter()
        .filter_map(|k| b.column_by_name(k))
        .map(|c| SortColumn {
            values: c.clone(),
            options: None,
        })
        .collect();
    if columns.is_empty() || b.num_rows() == 0 {
        return Ok(b.clone());
    }
    let idx = lexsort_to_indices(&columns, None)?;
    take_record_batch(b, &idx)
}
