//! `sync`: applies a changefeed root to Delta tables, one RESOLVED step at a time.
//!
//! Each step ([`plan::next_step`]) advances every table to the same RESOLVED: its files are
//! decoded file by file into a [`Window`], merged into changes, written as new Parquet files and
//! committed with the RESOLVED in the same Delta commit. When all tables of a step have
//! committed, one row per table goes into `_crdb_delta_resolved` (a Delta table next to them)
//! recording the Delta version of each table at that RESOLVED: a cross-table consistent
//! snapshot. A backlog larger than `max_window_bytes` becomes several steps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::builder::{Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use crdb_delta_core::Hlc;
use crdb_delta_core::apply::{self, ChangeError, ChangeLog, Keep, Layout, Mode, Window};
use crdb_delta_core::format::decode::{self, DecodeError, DecodeOptions};
use crdb_delta_core::format::keys::{self, KeyError, KeyEvidence};
use crdb_delta_core::format::names::{ObjectName, PartitionFormat};
use crdb_delta_core::plan::{self, Object, Progress};
use deltalake_core::DeltaTable;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use serde::Serialize;
use serde_json::json;

use crate::config::{Config, ConfigError};
use crate::delta::{self, Commit, Committed, Conflict, DeltaError, Target};
use crate::faults::{fault, pause};
use crate::quarantine::{Action, Quarantine, QuarantineError};
use crate::storage::{Location, StorageError};

/// Default input bytes per commit: peak memory is about 2–3× this plus one target file being
/// rewritten (docs/benchmarks.md), which fits a 2 GB Flex Consumption instance.
pub const DEFAULT_MAX_WINDOW_BYTES: u64 = 256 << 20;
/// Default Parquet file size written.
pub const DEFAULT_TARGET_FILE_SIZE: u64 = 128 << 20;
/// Where the per-RESOLVED table versions are recorded, below the target root.
pub const RESOLVED_LOG: &str = "_crdb_delta_resolved";
/// Refused commits in a row (another writer kept committing first) before a run gives up.
const MAX_CONFLICTS: u32 = 5;
/// Files decoded at most to learn an unconfigured primary key.
const KEY_EVIDENCE_FILES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("table `{table}`: {source}")]
    Change {
        table: String,
        #[source]
        source: ChangeError,
    },
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// KeyError's message already says what to configure.
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("table `{table}`: {message}")]
    Table { table: String, message: String },
    #[error("worker task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Quarantine(#[from] QuarantineError),
    /// Control flow, never shown: a window decoded to more than the budget; the step is
    /// planned again with the corrected estimate (nothing of it was committed).
    #[error("table `{table}`: the step decoded {decoded} bytes, over max_window_bytes")]
    WindowOverflow { table: String, decoded: u64 },
}

impl SyncError {
    /// The changefeed file this error is about, when the file itself is at fault (it cannot be
    /// decoded or applied, now or on any retry): such a file is quarantined and stops only its
    /// table. Storage and other transient errors fail the run instead.
    pub fn poison_file(&self) -> Option<&str> {
        match self {
            Self::Decode(e) => Some(e.file()),
            Self::Change { source, .. } => match source {
                ChangeError::MissingKey { file, .. }
                | ChangeError::Convert { file, .. }
                | ChangeError::Invalid { file, .. } => Some(file),
                ChangeError::Arrow(_) => None,
            },
            _ => None,
        }
    }
}

fn delta_err(table: &str) -> impl Fn(deltalake_core::DeltaTableError) -> SyncError + '_ {
    move |source| {
        SyncError::Delta(DeltaError::Delta {
            table: table.to_owned(),
            source: Box::new(source),
        })
    }
}

/// How to sync.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Mode for tables the config does not set (default update_delete).
    pub mode: Option<Mode>,
    pub config: Config,
    pub max_window_bytes: u64,
    pub batch_size: usize,
    pub target_file_size: u64,
    /// Apply at most up to this RESOLVED.
    pub until: Option<Hlc>,
    /// Start no new step after this instant (a function invocation's time budget): committed
    /// steps stay, the rest is applied by the next run.
    pub deadline: Option<Instant>,
    /// A RESOLVED further ahead of the clock than this is refused ([`plan::refuse_future_resolved`]).
    pub max_resolved_ahead: std::time::Duration,
    /// Longest NDJSON line accepted (decompressed).
    pub max_line_bytes: usize,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            mode: None,
            config: Config::default(),
            max_window_bytes: DEFAULT_MAX_WINDOW_BYTES,
            batch_size: 8192,
            target_file_size: DEFAULT_TARGET_FILE_SIZE,
            until: None,
            deadline: None,
            max_resolved_ahead: std::time::Duration::from_secs(
                plan::DEFAULT_MAX_RESOLVED_AHEAD_SECONDS,
            ),
            max_line_bytes: decode::DEFAULT_MAX_LINE_BYTES,
        }
    }
}

/// What a sync did to one table.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TableReport {
    pub target: String,
    pub mode: Option<Mode>,
    /// The RESOLVED the table is at after the run.
    pub resolved: Option<Hlc>,
    /// The first file that still held newer rows (`Progress::pending_from`).
    pub pending_from: Option<String>,
    pub version: Option<u64>,
    pub commits: u64,
    /// Distinct changes applied (column families merged, duplicates dropped).
    pub events: u64,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub duplicates: u64,
    /// Commits of this table that went stale (another writer) and were planned again.
    pub replans: u64,
    pub files_read: u64,
    pub bytes_read: u64,
    /// Input after decompression (what `max_window_bytes` counts).
    pub decoded_bytes: u64,
    pub rows_read: u64,
    pub seconds: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct SyncReport {
    pub source: String,
    pub target: String,
    pub resolved: Option<Hlc>,
    pub steps: u64,
    /// Table commits planned again because another writer's commit made them stale, plus
    /// steps planned again smaller because they decoded past the window.
    pub replans: u64,
    /// False when the run stopped at its deadline with RESOLVEDs left to apply.
    pub complete: bool,
    pub tables: BTreeMap<String, TableReport>,
    pub ignored: Vec<String>,
    /// RESOLVED objects refused (e.g. far ahead of the clock), with the reason: never applied.
    pub refused: Vec<String>,
    /// Data files written after a RESOLVED that covers them ([`plan::late_files`]): a second
    /// changefeed writing into this root, or a file copied or rewritten later.
    pub late: Vec<String>,
    /// Quarantined files (`crdb-delta quarantine list`): `hold` ones stop their table.
    pub quarantined: Vec<crate::quarantine::Record>,
    pub events: u64,
    pub bytes_read: u64,
    pub seconds: f64,
    pub events_per_s: f64,
    pub mb_per_s: f64,
    /// Peak resident memory of the process so far (Linux `VmHWM`), MiB.
    pub peak_rss_mib: Option<f64>,
}

/// Peak resident set size of this process (Linux), MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

impl SyncReport {
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "sync {} -> {}: {} step(s), at RESOLVED {}",
            self.source,
            self.target,
            self.steps,
            self.resolved.map_or("none".into(), |h| format!(
                "{} ({})",
                h.to_datetime()
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                h
            ))
        );
        for (name, t) in &self.tables {
            let _ = writeln!(
                s,
                "  {name} -> {} ({}): version {}, {} events: +{} ~{} -{} ({} duplicates), {} files, {:.1} MB",
                t.target,
                t.mode.map_or("-".into(), |m| m.to_string()),
                t.version.map_or("-".into(), |v| v.to_string()),
                t.events,
                t.inserted,
                t.updated,
                t.deleted,
                t.duplicates,
                t.files_read,
                t.bytes_read as f64 / 1e6
            );
        }
        if self.resolved.is_none() && self.quarantined.is_empty() && self.refused.is_empty() {
            let _ = writeln!(
                s,
                "  nothing applied: no RESOLVED file in the source yet (the changefeed writes them \
                 with `WITH resolved`); data files wait for the first one"
            );
        }
        for i in &self.ignored {
            let _ = writeln!(s, "  ignored: {i}");
        }
        for r in &self.refused {
            let _ = writeln!(s, "  REFUSED: {r}");
        }
        for l in &self.late {
            let _ = writeln!(s, "  LATE: {l}");
        }
        for q in &self.quarantined {
            let what = match q.action {
                Action::Hold => "STOPPED, file quarantined",
                Action::Skip => "file skipped by an operator",
            };
            let _ = writeln!(s, "  {} {what}: {}: {}", q.table, q.file, q.reason);
        }
        let _ = writeln!(
            s,
            "{:.2} s: {:.0} events/s, {:.1} MB/s, peak RSS {}",
            self.seconds,
            self.events_per_s,
            self.mb_per_s,
            self.peak_rss_mib
                .map_or("-".into(), |m| format!("{m:.0} MiB"))
        );
        s
    }
}

struct TableState {
    name: String,
    target: Target,
    mode: Mode,
    table: Option<DeltaTable>,
    layout: Option<Layout>,
    progress: Progress,
    report: TableReport,
    /// Commits refused in a row because another writer committed first.
    conflicts: u32,
    /// Files of this table an operator chose to skip (`quarantine skip`), by name timestamp:
    /// the commit that passes over them names them.
    skipped: Vec<(Hlc, String)>,
}

/// Lists the changefeed root: changefeed objects sorted by name; anything else is reported.
pub async fn list(source: &Location) -> Result<(Vec<Object>, Vec<String>), SyncError> {
    let metas: Vec<_> = source
        .store
        .list(Some(&source.prefix))
        .try_collect()
        .await
        .map_err(StorageError::from)?;
    Ok(collect_objects(source, metas))
}

fn collect_objects(
    source: &Location,
    metas: Vec<object_store::ObjectMeta>,
) -> (Vec<Object>, Vec<String>) {
    let mut objects = Vec::new();
    let mut ignored = Vec::new();
    for m in metas {
        let Some(rel) = source.relative(&m.location) else {
            continue;
        };
        match ObjectName::parse_relative(&rel) {
            Ok((name, _)) => objects.push(Object {
                name,
                path: rel,
                size: m.size,
                modified: Some(m.last_modified.timestamp_millis()),
            }),
            Err(e) => {
                tracing::warn!(object = %rel, error = %e, "not a changefeed file; skipped");
                ignored.push(e.to_string());
            }
        }
    }
    objects.sort_by_cached_key(|o| o.name.clone());
    (objects, ignored)
}

/// The partition folder (or, flat, the date prefix) of a changefeed path: every object at or
/// after it in name order lives at or after this string.
fn partition_start(path: &str, partition: PartitionFormat) -> String {
    match partition {
        PartitionFormat::Flat => path.chars().take(8).collect(),
        _ => path
            .rsplit_once('/')
            .map_or(String::new(), |(dir, _)| dir.to_owned()),
    }
}

/// Lists only what can still matter: objects from the partition of the oldest applied RESOLVED
/// (or of the oldest file that still held newer rows) on, as recorded by the last step in
/// `_crdb_delta_resolved`. `None` when that is not known: list everything.
async fn bounded_listing(
    source: &Location,
    target: &Location,
    opts: &SyncOptions,
) -> Result<Option<(Vec<Object>, Vec<String>, Vec<TableState>)>, SyncError> {
    let log = Target::new(target, RESOLVED_LOG)?;
    let Some(table) = log.open().await? else {
        return Ok(None);
    };
    let mut history = table.history(Some(1));
    let Some(info) = history
        .next()
        .await
        .transpose()
        .map_err(delta_err(RESOLVED_LOG))?
    else {
        return Ok(None);
    };
    let figures = info
        .info
        .get(delta::COMMIT_KEY)
        .and_then(|v| v.get("figures"));
    let partition = figures
        .and_then(|f| f.get("partition"))
        .and_then(|p| p.as_str())
        .and_then(|p| p.parse::<PartitionFormat>().ok());
    let names: Vec<String> = figures
        .and_then(|f| f.get("tables"))
        .and_then(|t| serde_json::from_value(t.clone()).ok())
        .unwrap_or_default();
    let Some(partition) = partition else {
        return Ok(None);
    };
    let mut start: Option<String> = None;
    let mut opened = Vec::with_capacity(names.len());
    for name in &names {
        // Opened once here and handed to the run, which then does not open them again.
        let state = open_table(target, name, opts).await?;
        if state.table.is_none() {
            return Ok(None);
        }
        let p = &state.progress;
        let key = match (p.applied, p.pending_from.as_deref()) {
            (None, _) | (_, Some(plan::PENDING_ALL)) => return Ok(None),
            (Some(a), pending) => {
                let r = partition_start(&ObjectName::Resolved(a).render(partition), partition);
                match pending {
                    Some(pf) => r.min(partition_start(pf, partition)),
                    None => r,
                }
            }
        };
        start = Some(start.map_or(key.clone(), |s| s.min(key)));
        opened.push(state);
    }
    let Some(start) = start.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let offset = source.child(&start)?;
    let metas: Vec<_> = source
        .store
        .list_with_offset(Some(&source.prefix), &offset)
        .try_collect()
        .await
        .map_err(StorageError::from)?;
    tracing::debug!(from = %start, objects = metas.len(), "bounded listing");
    let (objects, ignored) = collect_objects(source, metas);
    Ok(Some((objects, ignored, opened)))
}

/// Applies everything up to the newest RESOLVED (or `opts.until`).
pub async fn sync(
    source: &Location,
    target: &Location,
    opts: &SyncOptions,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let (objects, ignored, known) = match bounded_listing(source, target, opts).await? {
        Some(listed) => listed,
        None => {
            let (objects, ignored) = list(source).await?;
            (objects, ignored, Vec::new())
        }
    };
    sync_known(source, target, objects, ignored, known, opts, started).await
}

/// [`sync`] over an already known set of objects (sorted by name), e.g. a buffer of
/// BlobCreated events reconciled with a bounded listing. Objects must be changefeed objects of
/// `source`; the plan only uses what is given.
pub async fn sync_listed(
    source: &Location,
    target: &Location,
    objects: Vec<Object>,
    ignored: Vec<String>,
    opts: &SyncOptions,
    started: Instant,
) -> Result<SyncReport, SyncError> {
    sync_known(source, target, objects, ignored, Vec::new(), opts, started).await
}

/// [`sync_listed`], also advancing `known` tables (already opened) that have no file in
/// `objects`.
async fn sync_known(
    source: &Location,
    target: &Location,
    mut objects: Vec<Object>,
    ignored: Vec<String>,
    known: Vec<TableState>,
    opts: &SyncOptions,
    started: Instant,
) -> Result<SyncReport, SyncError> {
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    let tolerance = i64::try_from(opts.max_resolved_ahead.as_nanos()).unwrap_or(i64::MAX);
    let refused: Vec<String> = plan::refuse_future_resolved(&mut objects, now, tolerance)
        .into_iter()
        .map(|r| {
            tracing::error!(object = %r.path, reason = %r.reason, "RESOLVED refused");
            format!("{}: {}", r.path, r.reason)
        })
        .collect();
    let partition = objects
        .first()
        .and_then(|o| ObjectName::parse_relative(&o.path).ok())
        .map(|(_, p)| p);
    // Quarantined files: a held one stops its table (its files leave the plan), a skipped one
    // leaves the plan alone.
    let quarantine = Quarantine::new(target);
    let records = quarantine.list().await?;
    let mut stopped: BTreeSet<String> = records
        .iter()
        .filter(|r| r.action == Action::Hold)
        .map(|r| r.table.clone())
        .collect();
    let mut skipped: BTreeMap<String, Vec<(Hlc, String)>> = BTreeMap::new();
    objects.retain(|o| {
        let ObjectName::Data(d) = &o.name else {
            return true;
        };
        if records
            .iter()
            .any(|r| r.action == Action::Skip && r.file == o.path)
        {
            skipped
                .entry(d.topic.table().to_owned())
                .or_default()
                .push((d.ts, o.path.clone()));
            return false;
        }
        !stopped.contains(d.topic.table())
    });
    for r in records.iter().filter(|r| r.action == Action::Hold) {
        tracing::error!(table = %r.table, file = %r.file, reason = %r.reason, "table stopped: file quarantined (crdb-delta quarantine list|retry|skip)");
    }
    let mut states = known;
    states.retain(|s| !stopped.contains(&s.name));
    let mut expansion = plan::Expansion::default();
    let mut oversized = 0u32;
    // Steps tried in this run: the time budget stops the run between them, never before one.
    let mut attempts = 0u64;
    for name in plan::tables(&objects) {
        if !states.iter().any(|s| s.name == name) {
            states.push(open_table(target, &name, opts).await?);
        }
    }
    states.sort_by(|a, b| a.name.cmp(&b.name));
    for s in &mut states {
        s.skipped = skipped.remove(&s.name).unwrap_or_default();
    }
    for (i, a) in states.iter().enumerate() {
        if let Some(b) = states[i + 1..]
            .iter()
            .find(|b| b.target.path == a.target.path)
        {
            return Err(SyncError::Table {
                table: b.name.clone(),
                message: format!(
                    "maps to the Delta table `{}`, as table `{}` does: give each its own `tables.<name>.target`",
                    a.target.path, a.name
                ),
            });
        }
    }
    let log = Target::new(target, RESOLVED_LOG)?;
    let late: Vec<String> = plan::late_files(&objects)
        .into_iter()
        .map(|l| {
            tracing::error!(file = %l.path, resolved = %l.resolved, written_after_ms = l.written_after_ms, "data file written after a RESOLVED that covers it: a second changefeed may write into this root");
            format!(
                "{} was written {:.1} s after RESOLVED {} (which covers its timestamp): a second changefeed may write into this root, or the file was copied or rewritten; rows of it at or below an applied RESOLVED are not applied",
                l.path,
                l.written_after_ms as f64 / 1000.0,
                l.resolved
            )
        })
        .collect();
    let mut report = SyncReport {
        source: source.display.clone(),
        target: target.display.clone(),
        complete: true,
        ignored,
        refused,
        late,
        quarantined: records,
        ..SyncReport::default()
    };
    // A crash after the tables' commits but before the record: record it now (the tables have
    // not moved since, so their current versions are the ones at that RESOLVED).
    // Never while a table is stopped: the record would leave it out, and later runs' bounded
    // listings (which start from the record) would no longer list its files.
    if stopped.is_empty()
        && let Some(r) = common_resolved(&states, &objects)
    {
        record_resolved(&log, r, &states, partition, true).await?;
    }
    loop {
        let progress: BTreeMap<String, Progress> = states
            .iter()
            .map(|s| (s.name.clone(), s.progress.clone()))
            .collect();
        let Some(step) = plan::next_step_weighed(
            &objects,
            &progress,
            opts.max_window_bytes,
            opts.until,
            &|o| expansion.weigh(o),
        ) else {
            break;
        };
        if attempts > 0 && opts.deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(resolved = %step.resolved, "time budget spent; the next run continues from here");
            report.complete = false;
            break;
        }
        attempts += 1;
        if step.bytes > opts.max_window_bytes && !step.shrinkable {
            // Once per run: a backlog of large intervals would say it at every step.
            if oversized == 0 {
                tracing::warn!(
                    resolved = %step.resolved,
                    bytes = step.bytes,
                    max_window_bytes = opts.max_window_bytes,
                    "one RESOLVED interval is larger than max_window_bytes; applying it whole (said once per run)"
                );
            } else {
                tracing::debug!(resolved = %step.resolved, bytes = step.bytes, "RESOLVED interval larger than max_window_bytes; applied whole");
            }
            oversized += 1;
        }
        check_resolved_content(source, &objects, step.resolved).await?;
        tracing::info!(resolved = %step.resolved, bytes = step.bytes, tables = step.tables.len(), "step");
        let commits_before: u64 = states.iter().map(|s| s.report.commits).sum();
        let mut poisoned = Vec::new();
        let mut budget = Budget {
            expansion: &mut expansion,
            limit: step.shrinkable.then_some(opts.max_window_bytes),
        };
        let mut overflow = false;
        for state in &mut states {
            if let Some(files) = step.tables.get(&state.name) {
                match apply_table(
                    state,
                    step.resolved,
                    files,
                    &objects,
                    source,
                    opts,
                    &mut budget,
                )
                .await
                {
                    Ok(()) => {}
                    Err(SyncError::WindowOverflow { table, decoded }) => {
                        tracing::info!(%table, decoded, resolved = %step.resolved, "window larger than estimated; planning a smaller step");
                        overflow = true;
                        break;
                    }
                    Err(e) => match e.poison_file() {
                        Some(file) => {
                            let reason = e.to_string();
                            tracing::error!(table = %state.name, %file, error = %reason, "table stopped: file quarantined (crdb-delta quarantine list|retry|skip)");
                            let r = quarantine.hold(&state.name, file, &reason).await?;
                            poisoned.push(state.name.clone());
                            report.quarantined.push(r);
                        }
                        None => return Err(e),
                    },
                }
            }
        }
        if overflow && poisoned.is_empty() {
            report.replans += 1;
            continue;
        }
        if !poisoned.is_empty() {
            // The other tables go on; the stopped ones leave this run's plan.
            states.retain(|s| !poisoned.contains(&s.name));
            objects.retain(|o| match &o.name {
                ObjectName::Data(d) => !poisoned.iter().any(|t| t == d.topic.table()),
                ObjectName::Resolved(_) => true,
            });
            stopped.extend(poisoned);
            continue;
        }
        fault("before-record");
        if stopped.is_empty() && common_resolved(&states, &objects) == Some(step.resolved) {
            record_resolved(&log, step.resolved, &states, partition, false).await?;
        }
        // A step whose commits all went stale (re-planned) is an attempt, not a step.
        let committed: u64 = states.iter().map(|s| s.report.commits).sum();
        if committed > commits_before {
            report.steps += 1;
        }
    }
    for s in states {
        let mut t = s.report;
        t.target = s.target.path.clone();
        t.mode = Some(s.mode);
        t.resolved = s.progress.applied;
        t.pending_from = s.progress.pending_from.clone();
        t.version = s.table.as_ref().and_then(DeltaTable::version);
        report.events += t.events;
        report.replans += t.replans;
        report.bytes_read += t.bytes_read;
        report.resolved = report.resolved.max(t.resolved);
        report.tables.insert(s.name, t);
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.events_per_s = report.events as f64 / report.seconds.max(1e-9);
    report.mb_per_s = report.bytes_read as f64 / 1e6 / report.seconds.max(1e-9);
    report.peak_rss_mib = peak_rss_mib();
    Ok(report)
}

/// Reads the RESOLVED object a step applies and refuses one whose content disagrees with its
/// name (a renamed or hand-made object): the name alone decides nothing that is committed.
async fn check_resolved_content(
    source: &Location,
    objects: &[Object],
    resolved: Hlc,
) -> Result<(), SyncError> {
    let Some(obj) = objects
        .iter()
        .find(|o| o.name == ObjectName::Resolved(resolved))
    else {
        return Ok(());
    };
    let bytes = fetch(source, obj).await?;
    decode::resolved::decode_resolved(&obj.path, bytes, Some(resolved))?;
    Ok(())
}

/// The RESOLVED every table is at, when they agree: every existing table applied it and no
/// table still to be created has files at or before it.
fn common_resolved(states: &[TableState], objects: &[Object]) -> Option<Hlc> {
    let first = states
        .iter()
        .find(|s| s.table.is_some())?
        .progress
        .applied?;
    let existing_agree = states
        .iter()
        .filter(|s| s.table.is_some())
        .all(|s| s.progress.applied == Some(first));
    let new_lag = states.iter().filter(|s| s.table.is_none()).any(|s| {
        objects.iter().any(|o| match &o.name {
            ObjectName::Data(d) => d.topic.table() == s.name && d.ts <= first,
            ObjectName::Resolved(_) => false,
        })
    });
    (existing_agree && !new_lag).then_some(first)
}

async fn open_table(
    target: &Location,
    name: &str,
    opts: &SyncOptions,
) -> Result<TableState, SyncError> {
    let cfg = opts.config.table(name);
    let path = opts.config.target_path(name)?;
    let t = Target::new(target, &path)?;
    let mode = cfg
        .mode
        .or(opts.mode)
        .or(opts.config.mode)
        .unwrap_or(Mode::UpdateDelete);
    let table = t.open().await?;
    let (layout, progress) = match &table {
        Some(tb) => {
            let (layout, recorded) = delta::layout_of(tb, &path)?;
            if let Some(m) = recorded
                && m != mode
            {
                return Err(SyncError::Table {
                    table: name.to_owned(),
                    message: format!(
                        "the Delta table at `{path}` was written in mode {m}; refusing to apply mode {mode} to it"
                    ),
                });
            }
            (Some(layout), delta::progress(tb, &path).await?)
        }
        None => (None, Progress::default()),
    };
    tracing::debug!(table = name, target = %path, %mode, applied = ?progress.applied, "table opened");
    Ok(TableState {
        name: name.to_owned(),
        target: t,
        mode,
        table,
        layout,
        progress,
        report: TableReport::default(),
        conflicts: 0,
        skipped: Vec::new(),
    })
}

async fn fetch(source: &Location, obj: &Object) -> Result<bytes::Bytes, SyncError> {
    let path = source.child(&obj.path)?;
    let bytes = source
        .store
        .get(&path)
        .await
        .map_err(StorageError::from)?
        .bytes()
        .await
        .map_err(StorageError::from)?;
    Ok(bytes)
}

/// Learns an unconfigured key from the table's first files.
async fn derive_key(
    state: &TableState,
    objects: &[Object],
    source: &Location,
    opts: &SyncOptions,
) -> Result<Vec<String>, SyncError> {
    let mut evidence: BTreeMap<String, KeyEvidence> = BTreeMap::new();
    let mut last = None;
    let files = objects.iter().filter(|o| match &o.name {
        ObjectName::Data(d) => d.topic.table() == state.name,
        ObjectName::Resolved(_) => false,
    });
    for obj in files.take(KEY_EVIDENCE_FILES) {
        let ObjectName::Data(d) = obj.name.clone() else {
            continue;
        };
        let bytes = fetch(source, obj).await?;
        let path = obj.path.clone();
        let dopts = DecodeOptions {
            batch_size: opts.batch_size,
            max_line_bytes: opts.max_line_bytes,
            ..DecodeOptions::default()
        };
        let family = d.topic.family().unwrap_or_default().to_owned();
        let ev = tokio::task::spawn_blocking(move || -> Result<KeyEvidence, DecodeError> {
            let mut s = decode::decode_bytes(&d, &path, bytes, &dopts)?;
            for b in s.by_ref() {
                b?;
            }
            Ok(s.key_evidence().clone())
        })
        .await??;
        evidence.entry(family).or_default().merge(&ev);
        let all: Vec<&KeyEvidence> = evidence.values().collect();
        match keys::primary_key(&state.name, None, &all) {
            Ok(k) => return Ok(k),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or(KeyError {
            table: state.name.clone(),
            reason: "no data files".into(),
        })
        .into())
}

/// Decodes the step's files of one table into a window (one file in memory at a time).
/// What a step may decode, and what decoding taught about stored vs. decoded sizes.
struct Budget<'a> {
    expansion: &'a mut plan::Expansion,
    /// Decoded bytes one table's window may reach before the step is planned again, smaller;
    /// `None` when no smaller step exists (one RESOLVED interval is read whole).
    limit: Option<u64>,
}

async fn read_window(
    state: &mut TableState,
    mut window: Window,
    files: &[usize],
    objects: &[Object],
    source: &Location,
    dopts: &DecodeOptions,
    budget: &mut Budget<'_>,
) -> Result<(Window, Option<String>), SyncError> {
    let mut pending = None;
    let mut decoded_total = 0u64;
    for &i in files {
        let obj = &objects[i];
        let ObjectName::Data(d) = obj.name.clone() else {
            continue;
        };
        let bytes = fetch(source, obj).await?;
        state.report.files_read += 1;
        state.report.bytes_read += bytes.len() as u64;
        let path = obj.path.clone();
        let dopts = dopts.clone();
        let table = state.name.clone();
        let limit = budget.limit.map(|l| l.saturating_sub(decoded_total));
        let (w, later, decoded, over) = tokio::task::spawn_blocking(
            move || -> Result<(Window, usize, u64, bool), SyncError> {
                let mut s = decode::decode_bytes(&d, &path, bytes, &dopts)?;
                let mut later = 0;
                while let Some(b) = s.next() {
                    let o = window.push(b?, d.topic.family(), &path).map_err(|source| {
                        SyncError::Change {
                            table: table.clone(),
                            source,
                        }
                    })?;
                    later += o.later;
                    if limit.is_some_and(|l| s.input_bytes() > l) {
                        return Ok((window, later, s.input_bytes(), true));
                    }
                }
                Ok((window, later, s.input_bytes(), false))
            },
        )
        .await??;
        window = w;
        decoded_total += decoded;
        state.report.decoded_bytes += decoded;
        if budget.expansion.observe(obj, decoded) || over {
            tracing::debug!(file = %obj.path, stored = obj.size, decoded, "decoded size above the estimate");
        }
        if over {
            return Err(SyncError::WindowOverflow {
                table: state.name.clone(),
                decoded: decoded_total,
            });
        }
        if later > 0 && pending.is_none() {
            pending = Some(obj.path.clone());
        }
    }
    Ok((window, pending))
}

/// Numeric first-key values of the window, sorted, for min/max pruning of target files.
fn numeric_keys(changes: &ChangeLog) -> Option<Vec<i64>> {
    let mut v = Vec::new();
    for k in changes.first_key_values() {
        v.push(k.as_i64()?);
    }
    v.sort_unstable();
    Some(v)
}

fn may_hold(
    range: &Option<(serde_json::Value, serde_json::Value)>,
    keys: &Option<Vec<i64>>,
) -> bool {
    let (Some((lo, hi)), Some(keys)) = (range, keys) else {
        return true;
    };
    let (Some(lo), Some(hi)) = (lo.as_i64(), hi.as_i64()) else {
        return true;
    };
    let i = keys.partition_point(|k| *k < lo);
    i < keys.len() && keys[i] <= hi
}

async fn apply_table(
    state: &mut TableState,
    resolved: Hlc,
    files: &[usize],
    objects: &[Object],
    source: &Location,
    opts: &SyncOptions,
    budget: &mut Budget<'_>,
) -> Result<(), SyncError> {
    let started = Instant::now();
    let name = state.name.clone();
    let cfg = opts.config.table(&name);
    let configured = cfg.column_types(&name)?;
    let exists = state.table.is_some();
    let mut layout = match &state.layout {
        Some(l) => l.clone(),
        None => {
            let key = match &cfg.primary_key {
                Some(k) => k.clone(),
                None => derive_key(state, objects, source, opts).await?,
            };
            let split = objects.iter().any(|o| match &o.name {
                ObjectName::Data(d) => d.topic.table() == name && d.topic.family().is_some(),
                ObjectName::Resolved(_) => false,
            });
            Layout::new(key, split)
        }
    };
    // Family 0 decides row deletes. Unconfigured, it is `primary` (CockroachDB's name for it
    // unless the table names its families) once a file of that family was seen; otherwise it
    // stays unknown and a row is deleted only when every known family reports a delete.
    let seen_primary = layout.families.contains_key("primary")
        || files.iter().any(|&i| match &objects[i].name {
            ObjectName::Data(d) => d.topic.family() == Some("primary"),
            ObjectName::Resolved(_) => false,
        });
    layout.primary_family = cfg
        .primary_family
        .clone()
        .or_else(|| (layout.split_families && seen_primary).then(|| "primary".to_owned()));
    // The table's types win; configured SQL types fix the rest; others are inferred.
    let mut columns = configured;
    for (c, t) in &layout.columns {
        columns.insert(c.clone(), t.clone());
    }
    let dopts = DecodeOptions {
        batch_size: opts.batch_size,
        columns,
        primary_key: Some(layout.key.clone()),
        max_line_bytes: opts.max_line_bytes,
    };
    let before = layout.clone();
    let window = Window::new(layout, state.progress.applied, resolved);
    let (window, pending) =
        read_window(state, window, files, objects, source, &dopts, budget).await?;
    state.report.rows_read += window.rows_read();
    let change_err = |source| SyncError::Change {
        table: name.clone(),
        source,
    };
    let log = window.finish().map_err(change_err)?;
    let mut changes = apply::writer(state.mode, log);
    fault("before-write");

    if !exists {
        if changes.log().is_empty() && changes.log().layout().columns.is_empty() {
            // Nothing to create a table from yet.
            return Ok(());
        }
        let created = state
            .target
            .create(changes.log().layout(), state.mode)
            .await?;
        // A concurrent run may have created it first (and applied steps): then plan again
        // from what its log says instead of applying on top.
        let p = delta::progress(&created, &state.target.path).await?;
        if p.applied.is_some() {
            tracing::warn!(table = %name, "created concurrently by another run; re-planning from its progress");
            state.layout = Some(delta::layout_of(&created, &state.target.path)?.0);
            state.progress = p;
            state.table = Some(created);
            return Ok(());
        }
        state.table = Some(created);
    }
    let table = state.table.as_mut().expect("created above");
    let mut writer = delta::Writer::new(table, opts.target_file_size).map_err(delta_err(&name))?;
    let mut removes = Vec::new();
    let bs = opts.batch_size;
    // update_delete and scd2: copy-on-write of the files that hold changed keys.
    if changes.reads_table() && exists && !changes.log().is_empty() {
        let keys = numeric_keys(changes.log());
        let first_key = changes.log().layout().key[0].clone();
        let probe = changes.probe_columns();
        let candidates = delta::files(table, &first_key)
            .await
            .map_err(delta_err(&name))?;
        pause("before-fetch").await;
        for f in candidates {
            if !may_hold(&f.key_range, &keys) {
                continue;
            }
            let file = match delta::TableFile::fetch(table, &f.path).await {
                Ok(file) => file,
                Err(DeltaError::FileGone { path, .. }) => {
                    let version = table.version().unwrap_or(0);
                    return replan(state, resolved, Conflict::FileGone { path, version }).await;
                }
                Err(e) => return Err(e.into()),
            };
            // Decide from the key columns alone; then stream the file through the merge, one
            // batch at a time.
            let mut touched = false;
            for b in file.batches(Some(&probe), bs)? {
                if changes.touches(&b?).map_err(change_err)? {
                    touched = true;
                    break;
                }
            }
            if !touched {
                continue;
            }
            removes.push(f.remove);
            for b in file.batches(None, bs)? {
                let merged = changes.merge(&b?, Keep::All).map_err(change_err)?;
                writer.write(merged.batch).await.map_err(delta_err(&name))?;
            }
        }
    }
    // New rows (every change, new keys, or new versions), built and written one batch at a time.
    while let Some(b) = changes.next_output(bs).map_err(change_err)? {
        writer.write(b).await.map_err(delta_err(&name))?;
    }
    let adds = writer.finish().await.map_err(delta_err(&name))?;
    fault("after-write");

    let mut new_layout = changes.log().layout().clone();
    new_layout.primary_family = None;
    let mut old_layout = before;
    old_layout.primary_family = None;
    let counts = changes.counts();
    let figures = json!({
        "events": changes.log().len(),
        "inserted": counts.inserted,
        "updated": counts.updated,
        "deleted": counts.deleted,
        "duplicates": changes.log().duplicates(),
        "filesAdded": adds.len(),
        "filesRemoved": removes.len(),
    });
    // Files an operator skipped that this step would have read: named in the commit.
    let passed_over: Vec<&str> = state
        .skipped
        .iter()
        .filter(|(ts, _)| *ts <= resolved && state.progress.applied.is_none_or(|a| *ts > a))
        .map(|(_, p)| p.as_str())
        .collect();
    let mut figures = figures;
    if !passed_over.is_empty() {
        tracing::warn!(table = %name, files = ?passed_over, "applied without files an operator skipped");
        figures["skippedFiles"] = json!(passed_over);
    }
    let progress = Progress {
        applied: Some(resolved),
        pending_from: pending,
    };
    pause("before-commit").await;
    let committed = delta::commit(
        table,
        &state.target.path,
        Commit {
            adds,
            removes,
            layout: (exists && !new_layout.same_delta_schema(&old_layout))
                .then(|| (new_layout.clone(), state.mode)),
            progress: progress.clone(),
            resolved,
            figures,
            mode: state.mode,
        },
    )
    .await?;
    let version = match committed {
        Committed::Version(v) => v,
        Committed::Conflict(c) => return replan(state, resolved, c).await,
    };
    state.conflicts = 0;
    fault("after-commit");
    tracing::info!(
        table = %name,
        resolved = %resolved,
        version,
        events = changes.log().len(),
        inserted = counts.inserted,
        updated = counts.updated,
        deleted = counts.deleted,
        "committed"
    );
    state.layout = Some(new_layout);
    state.progress = progress;
    let r = &mut state.report;
    r.commits += 1;
    r.events += changes.log().len() as u64;
    r.inserted += counts.inserted;
    r.updated += counts.updated;
    r.deleted += counts.deleted;
    r.duplicates += changes.log().duplicates() as u64;
    r.seconds += started.elapsed().as_secs_f64();
    Ok(())
}

/// A step whose plan went stale (another writer committed something it depends on): reload
/// the table and let the step loop plan again from what the log says now. Losing to a run that
/// applied RESOLVEDs is progress; losing again and again to commits that apply nothing of ours
/// (another tool rewriting files) is not, and ends the run after [`MAX_CONFLICTS`].
async fn replan(
    state: &mut TableState,
    resolved: Hlc,
    conflict: Conflict,
) -> Result<(), SyncError> {
    let name = state.name.clone();
    let fresh = state.target.open().await?.ok_or_else(|| SyncError::Table {
        table: name.clone(),
        message: "the Delta table disappeared while applying".into(),
    })?;
    let p = delta::progress(&fresh, &state.target.path).await?;
    if p.applied <= state.progress.applied {
        state.conflicts += 1;
        if state.conflicts > MAX_CONFLICTS {
            return Err(SyncError::Table {
                table: name,
                message: format!(
                    "gave up after {MAX_CONFLICTS} conflicting commits by other writers in a row; last: {conflict}"
                ),
            });
        }
    }
    tracing::warn!(table = %name, %resolved, applied = ?p.applied, %conflict, "concurrent commit; re-planning from the log");
    state.report.replans += 1;
    state.layout = Some(delta::layout_of(&fresh, &state.target.path)?.0);
    state.progress = p;
    state.table = Some(fresh);
    Ok(())
}

fn resolved_log_schema() -> Arc<Schema> {
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

/// Appends one row per table to `_crdb_delta_resolved` for `resolved`, exactly once (its own
/// `txn`). `if_missing`: only when not recorded yet (recovery at start).
async fn record_resolved(
    log: &Target,
    resolved: Hlc,
    states: &[TableState],
    partition: Option<PartitionFormat>,
    if_missing: bool,
) -> Result<(), SyncError> {
    // Again if a concurrent run created the log or wrote to it meanwhile: the next attempt
    // starts from its commit (and finds the record there if it wrote this one).
    const ATTEMPTS: u32 = 3;
    for attempt in 1..=ATTEMPTS {
        match record_resolved_once(log, resolved, states, partition, if_missing).await {
            Ok(true) => return Ok(()),
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

/// One attempt: `Ok(true)` when the record is there (ours or a concurrent run's), `Ok(false)`
/// when another writer's commit made this one stale.
async fn record_resolved_once(
    log: &Target,
    resolved: Hlc,
    states: &[TableState],
    partition: Option<PartitionFormat>,
    if_missing: bool,
) -> Result<bool, SyncError> {
    let schema = resolved_log_schema();
    let mut table = match log.open().await? {
        Some(t) => t,
        None => log.create_with(&schema, vec![]).await?,
    };
    let done = table
        .snapshot()
        .map_err(delta_err(RESOLVED_LOG))?
        .transaction_version(table.log_store().as_ref(), delta::APP_ID)
        .await
        .map_err(delta_err(RESOLVED_LOG))?;
    if done.is_some_and(|v| v >= resolved.wall) {
        return Ok(true);
    }
    if if_missing && states.iter().all(|s| s.table.is_none()) {
        return Ok(true);
    }
    let now = chrono::Utc::now().timestamp_micros();
    let mut r = StringBuilder::new();
    let mut ra = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut tn = StringBuilder::new();
    let mut tp = StringBuilder::new();
    let mut v = Int64Builder::new();
    let mut rec = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    for s in states {
        let Some(t) = &s.table else { continue };
        r.append_value(resolved.to_string());
        ra.append_value(resolved.wall_micros());
        tn.append_value(&s.name);
        tp.append_value(&s.target.path);
        v.append_value(t.version().unwrap_or(0) as i64);
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
            },
            resolved,
            // What the next run's bounded listing needs.
            figures: json!({
                "tables": states.iter().filter(|s| s.table.is_some()).map(|s| &s.name).collect::<Vec<_>>(),
                "partition": partition.map(|p| match p {
                    PartitionFormat::Daily => "daily",
                    PartitionFormat::Hourly => "hourly",
                    PartitionFormat::Flat => "flat",
                }),
            }),
            mode: Mode::AppendOnly,
        },
    )
    .await?;
    if let Committed::Conflict(conflict) = committed {
        tracing::debug!(%resolved, %conflict, "recording the RESOLVED conflicted");
        return Ok(false);
    }
    Ok(true)
}
