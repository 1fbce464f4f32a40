//! `_crdb_delta_resolved`: one row per table per RESOLVED with the table's Delta version, written
//! once every table of a step committed it (exactly once: its own `txn`).

use std::sync::Arc;

use arrow_array::builder::{Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use crdb_delta_core::Hlc;
use crdb_delta_core::apply::Mode;
use crdb_delta_core::format::names::PartitionFormat;
use crdb_delta_core::plan::Progress;

use super::table::TableState;
use super::table_cache::{self, Derived, TableCache};
use super::{DEFAULT_TARGET_FILE_SIZE, RESOLVED_LOG, SyncError, delta_err};
use crate::records::{Figures, ResolvedLogFigures};

use crate::delta::{self, Checkpoints, Commit, Committed, Target};
use deltalake_core::DeltaTable;

pub(super) fn resolved_log_schema() -> Arc<Schema> {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")));
    Arc::new(Schema::new(vec![
        Field::new("resolved", DataType::Utf8, false),
        Field::new("resolved_at", ts.clone(), false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("table_path", DataType::Utf8, false),
        Field::new("delta_version", DataType::Int64, false),
        Field::new("recorded_at", ts, false),
    ]))
}

/// One table's row of a record: where it is and its Delta version at the RESOLVED.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordRow {
    pub name: String,
    /// The Delta table's path below the target root.
    pub path: String,
    pub version: u64,
}

impl RecordRow {
    /// The rows of a run's tables as they are now (tables not created yet have none).
    pub(super) fn of(states: &[TableState]) -> Vec<Self> {
        states
            .iter()
            .filter_map(|s| {
                s.table.as_ref().map(|t| Self {
                    name: s.name.clone(),
                    path: s.target.path.clone(),
                    version: t.version().unwrap_or(0),
                })
            })
            .collect()
    }
}

/// The record table of one run, opened once: opening replays its log since the last
/// checkpoint, which each step's record would otherwise pay again.
pub struct ResolvedLog {
    target: Target,
    /// As of this run's last record; `None` until opened, and after a failed or stale attempt
    /// (the next one opens it afresh and sees what the other writer did).
    table: Option<DeltaTable>,
    checkpoints: Checkpoints,
    /// The handler's tables kept open between runs: the record table's first open in a run
    /// comes from there, and it goes back after each record.
    cache: Option<TableCache>,
}

impl ResolvedLog {
    pub fn new(target: Target, checkpoints: Checkpoints) -> Self {
        Self {
            target,
            table: None,
            checkpoints,
            cache: None,
        }
    }

    /// Opened from (and kept in) `cache` when given.
    pub fn with_cache(self, cache: Option<TableCache>) -> Self {
        Self { cache, ..self }
    }
}

/// A run's records, each written behind its step: while the next step applies, as no table's
/// commit waits for the record. Each is awaited before the next one starts, so records stay in
/// order. A run that ends before one is written (an error, a crash) leaves the record behind
/// its tables, which the next run's start mends.
pub struct Recorder {
    /// The log, when no record is being written.
    idle: Option<ResolvedLog>,
    writing: Option<tokio::task::JoinHandle<Result<ResolvedLog, SyncError>>>,
}

impl Recorder {
    pub fn new(log: ResolvedLog) -> Self {
        Self {
            idle: Some(log),
            writing: None,
        }
    }

    /// The log, once the record being written (if any) is.
    pub async fn settled(&mut self) -> Result<&mut ResolvedLog, SyncError> {
        let log = self.take().await?;
        Ok(self.idle.insert(log))
    }

    /// The log out of the recorder, once the record being written (if any) is.
    async fn take(&mut self) -> Result<ResolvedLog, SyncError> {
        if let Some(writing) = self.writing.take() {
            return match writing.await {
                Ok(r) => r,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(recording_stopped(e.to_string())),
            };
        }
        self.idle
            .take()
            .ok_or_else(|| recording_stopped("an earlier record failed".into()))
    }

    /// Starts writing the record of `resolved` (after the one being written, if any).
    pub async fn record_behind(
        &mut self,
        resolved: Hlc,
        rows: Vec<RecordRow>,
        partition: Option<PartitionFormat>,
    ) -> Result<(), SyncError> {
        let mut log = self.take().await?;
        self.writing = Some(tokio::spawn(async move {
            record_resolved(&mut log, resolved, &rows, partition, false).await?;
            Ok(log)
        }));
        Ok(())
    }
}

fn recording_stopped(message: String) -> SyncError {
    SyncError::Table {
        table: RESOLVED_LOG.into(),
        message: format!("recording the RESOLVED: {message}"),
    }
}

/// Appends one row per table to `_crdb_delta_resolved` for `resolved`, exactly once (its own
/// `txn`). `if_missing`: only when not recorded yet (recovery at start). A RESOLVED older than
/// the last recorded one is not recorded (the record only moves forward).
pub async fn record_resolved(
    log: &mut ResolvedLog,
    resolved: Hlc,
    rows: &[RecordRow],
    partition: Option<PartitionFormat>,
    if_missing: bool,
) -> Result<(), SyncError> {
    // Again if a concurrent run created the log or wrote to it meanwhile: the next attempt
    // starts from its commit (and finds the record there if it wrote this one).
    const ATTEMPTS: u32 = 3;
    for attempt in 1..=ATTEMPTS {
        let table = log.table.take();
        let attempt_once = record_resolved_once(log, table, resolved, rows, partition, if_missing);
        match attempt_once.await.map(|(done, table)| {
            log.table = table;
            done
        }) {
            Ok(true) => {
                if let (Some(cache), Some(table)) = (&log.cache, &log.table) {
                    cache.keep(&log.target, table, Derived::default()).await;
                }
                return Ok(());
            }
            Ok(false) => {
                tracing::warn!(%resolved, attempt, "recording the RESOLVED raced another writer; retrying")
            }
            Err(SyncError::Delta(e)) if attempt < ATTEMPTS => {
                tracing::warn!(%resolved, attempt, error = %e, "recording the RESOLVED failed; retrying")
            }
            Err(e) => return Err(e),
        }
    }
    Err(SyncError::Table {
        table: RESOLVED_LOG.into(),
        message: format!("recording RESOLVED {resolved} lost {ATTEMPTS} races in a row"),
    })
}

/// One attempt, on `table` if this run has it open: `true` when the record is there (ours or a
/// concurrent run's), `false` when another writer's commit made this one stale; with the table
/// to keep open (none after a stale attempt).
pub(super) async fn record_resolved_once(
    log: &ResolvedLog,
    table: Option<DeltaTable>,
    resolved: Hlc,
    rows: &[RecordRow],
    partition: Option<PartitionFormat>,
    if_missing: bool,
) -> Result<(bool, Option<DeltaTable>), SyncError> {
    let schema = resolved_log_schema();
    let table = match table {
        Some(t) => Some(t),
        None => table_cache::open(log.cache.as_ref(), &log.target).await?.0,
    };
    let mut table = match table {
        Some(t) => t,
        None => log.target.create_with(&schema, vec![]).await?,
    };
    let done = table
        .snapshot()
        .map_err(delta_err(RESOLVED_LOG))?
        .transaction_version(table.log_store().as_ref(), delta::APP_ID)
        .await
        .map_err(delta_err(RESOLVED_LOG))?;
    if done.is_some_and(|v| v >= resolved.wall) {
        return Ok((true, Some(table)));
    }
    if if_missing && rows.is_empty() {
        return Ok((true, Some(table)));
    }
    let now = chrono::Utc::now().timestamp_micros();
    let mut r = StringBuilder::new();
    let mut ra = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut tn = StringBuilder::new();
    let mut tp = StringBuilder::new();
    let mut v = Int64Builder::new();
    let mut rec = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    for row in rows {
        r.append_value(resolved.to_string());
        ra.append_value(resolved.wall_micros());
        tn.append_value(&row.name);
        tp.append_value(&row.path);
        v.append_value(row.version as i64);
        rec.append_value(now);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(r.finish()),
        Arc::new(ra.finish()),
        Arc::new(tn.finish()),
        Arc::new(tp.finish()),
        Arc::new(v.finish()),
        Arc::new(rec.finish()),
    ];
    let batch = RecordBatch::try_new(schema, cols).map_err(|e| SyncError::Table {
        table: RESOLVED_LOG.into(),
        message: e.to_string(),
    })?;
    let mut writer =
        delta::Writer::new(&table, DEFAULT_TARGET_FILE_SIZE).map_err(delta_err(RESOLVED_LOG))?;
    writer.write(batch).await.map_err(delta_err(RESOLVED_LOG))?;
    let adds = writer.finish().await.map_err(delta_err(RESOLVED_LOG))?;
    let committed = delta::commit(
        &mut table,
        RESOLVED_LOG,
        Commit {
            adds,
            removes: vec![],
            layout: None,
            progress: Progress {
                applied: Some(resolved),
                pending_from: None,
                slices: None,
            },
            resolved,
            ends_slices: false,
            // What the next run's bounded listing needs.
            figures: Figures::ResolvedLog(ResolvedLogFigures {
                tables: rows.iter().map(|r| r.name.clone()).collect(),
                partition: partition.map(Into::into),
            }),
            mode: Mode::AppendOnly,
            kind: delta::CommitKind::Apply,
        },
        &log.checkpoints,
    )
    .await?;
    if let Committed::Conflict(conflict) = committed {
        tracing::debug!(%resolved, %conflict, "recording the RESOLVED conflicted");
        return Ok((false, None));
    }
    Ok((true, Some(table)))
}
