//! `sync`: applies a changefeed root to Delta tables, one RESOLVED step at a time.
//!
//! Each step ([`plan::next_step`]) advances every table to the same RESOLVED: its files are
//! decoded file by file into a [`Window`], merged into changes, written as new Parquet files and
//! committed with the RESOLVED in the same Delta commit. When all tables of a step have
//! committed, one row per table goes into `_crdb_delta_resolved` (a Delta table next to them)
//! recording the Delta version of each table at that RESOLVED: a cross-table consistent
//! snapshot. A backlog larger than `max_window_bytes` becomes several steps.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use arrow_array::builder::{Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use crdb_delta_core::Hlc;
use crdb_delta_core::changes::{ChangeError, Changes, Layout, Mode, Window};
use crdb_delta_core::decode::{self, DecodeError, DecodeOptions};
use crdb_delta_core::keys::{self, KeyError, KeyEvidence};
use crdb_delta_core::names::{ObjectName, PartitionFormat};
use crdb_delta_core::plan::{self, Object, Progress};
use deltalake_core::DeltaTable;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use serde::Serialize;
use serde_json::json;

use crate::config::{Config, ConfigError};
use crate::delta::{self, Commit, DeltaError, Target};
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
    #[error("{0} (configure `tables.<name>.primary_key`)")]
    Key(#[from] KeyError),
    #[error("table `{table}`: {message}")]
    Table { table: String, message: String },
    #[error("worker task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
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
    pub files_read: u64,
    pub bytes_read: u64,
    pub rows_read: u64,
    pub seconds: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct SyncReport {
    pub source: String,
    pub target: String,
    pub resolved: Option<Hlc>,
    pub steps: u64,
    /// False when the run stopped at its deadline with RESOLVEDs left to apply.
    pub complete: bool,
    pub tables: BTreeMap<String, TableReport>,
    pub ignored: Vec<String>,
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
            self.resolved.map_or("none".into(), |h| h.to_string())
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
        for i in &self.ignored {
            let _ = writeln!(s, "  ignored: {i}");
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

/// Crash points for the fault-injection tests: `CRDB_DELTA_FAULT=<point>[:<n>]` aborts the
/// process the n-th time (default first) it reaches `<point>` — no unwinding, no cleanup, as a
/// kill would. Points: `before-write`, `after-write` (files uploaded, not committed),
/// `after-commit` (one table committed), `before-record` (all tables committed, the
/// `_crdb_delta_resolved` row not yet written).
pub fn fault(point: &str) {
    static HITS: AtomicUsize = AtomicUsize::new(0);
    let Ok(spec) = std::env::var("CRDB_DELTA_FAULT") else {
        return;
    };
    let (name, n) = match spec.split_once(':') {
        Some((p, n)) => (p.to_owned(), n.parse().unwrap_or(1)),
        None => (spec.clone(), 1),
    };
    if name == point && HITS.fetch_add(1, Ordering::SeqCst) + 1 == n {
        eprintln!("crdb-delta: injected fault at {point} ({spec})");
        std::process::abort();
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
    objects: Vec<Object>,
    ignored: Vec<String>,
    known: Vec<TableState>,
    opts: &SyncOptions,
    started: Instant,
) -> Result<SyncReport, SyncError> {
    let partition = objects
        .first()
        .and_then(|o| ObjectName::parse_relative(&o.path).ok())
        .map(|(_, p)| p);
    let mut states = known;
    for name in plan::tables(&objects) {
        if !states.iter().any(|s| s.name == name) {
            states.push(open_table(target, &name, opts).await?);
        }
    }
    states.sort_by(|a, b| a.name.cmp(&b.name));
    let log = Target::new(target, RESOLVED_LOG)?;
    let mut report = SyncReport {
        source: source.display.clone(),
        target: target.display.clone(),
        complete: true,
        ignored,
        ..SyncReport::default()
    };
    // A crash after the tables' commits but before the record: record it now (the tables have
    // not moved since, so their current versions are the ones at that RESOLVED).
    if let Some(r) = common_resolved(&states, &objects) {
        record_resolved(&log, r, &states, partition, true).await?;
    }
    loop {
        let progress: BTreeMap<String, Progress> = states
            .iter()
            .map(|s| (s.name.clone(), s.progress.clone()))
            .collect();
        let Some(step) = plan::next_step(&objects, &progress, opts.max_window_bytes, opts.until)
        else {
            break;
        };
        if report.steps > 0 && opts.deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(resolved = %step.resolved, "time budget spent; the next run continues from here");
            report.complete = false;
            break;
        }
        if step.bytes > opts.max_window_bytes {
            tracing::warn!(
                resolved = %step.resolved,
                bytes = step.bytes,
                max_window_bytes = opts.max_window_bytes,
                "one RESOLVED interval is larger than max_window_bytes; applying it whole"
            );
        }
        tracing::info!(resolved = %step.resolved, bytes = step.bytes, tables = step.tables.len(), "step");
        for state in &mut states {
            if let Some(files) = step.tables.get(&state.name) {
                apply_table(state, step.resolved, files, &objects, source, opts).await?;
            }
        }
        fault("before-record");
        if common_resolved(&states, &objects) == Some(step.resolved) {
            record_resolved(&log, step.resolved, &states, partition, false).await?;
        }
        report.steps += 1;
    }
    for s in states {
        let mut t = s.report;
        t.target = s.target.path.clone();
        t.mode = Some(s.mode);
        t.resolved = s.progress.applied;
        t.pending_from = s.progress.pending_from.clone();
        t.version = s.table.as_ref().and_then(DeltaTable::version);
        report.events += t.events;
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
async fn read_window(
    state: &mut TableState,
    mut window: Window,
    files: &[usize],
    objects: &[Object],
    source: &Location,
    dopts: &DecodeOptions,
) -> Result<(Window, Option<String>), SyncError> {
    let mut pending = None;
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
        let (w, later) =
            tokio::task::spawn_blocking(move || -> Result<(Window, usize), SyncError> {
                let mut s = decode::decode_bytes(&d, &path, bytes, &dopts)?;
                let mut later = 0;
                for b in s.by_ref() {
                    let o = window.push(b?, d.topic.family(), &path).map_err(|source| {
                        SyncError::Change {
                            table: table.clone(),
                            source,
                        }
                    })?;
                    later += o.later;
                }
                Ok((window, later))
            })
            .await??;
        window = w;
        if later > 0 && pending.is_none() {
            pending = Some(obj.path.clone());
        }
    }
    Ok((window, pending))
}

/// Numeric first-key values of the window, sorted, for min/max pruning of target files.
fn numeric_keys(changes: &Changes) -> Option<Vec<i64>> {
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
    layout.primary_family = cfg
        .primary_family
        .clone()
        .or_else(|| layout.split_families.then(|| "primary".to_owned()));
    // The table's types win; configured SQL types fix the rest; others are inferred.
    let mut columns = configured;
    for (c, t) in &layout.columns {
        columns.insert(c.clone(), t.clone());
    }
    let dopts = DecodeOptions {
        batch_size: opts.batch_size,
        columns,
        primary_key: Some(layout.key.clone()),
    };
    let before = layout.clone();
    let window = Window::new(layout, state.progress.applied, resolved);
    let (window, pending) = read_window(state, window, files, objects, source, &dopts).await?;
    state.report.rows_read += window.rows_read();
    let change_err = |source| SyncError::Change {
        table: name.clone(),
        source,
    };
    let mut changes = window.finish().map_err(change_err)?;
    fault("before-write");

    if !exists {
        if changes.is_empty() && changes.layout().columns.is_empty() {
            // Nothing to create a table from yet.
            return Ok(());
        }
        let created = state.target.create(changes.layout(), state.mode).await?;
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
    if state.mode != Mode::AppendOnly && exists && !changes.is_empty() {
        let keys = numeric_keys(&changes);
        let first_key = changes.layout().key[0].clone();
        let mut probe = changes.layout().key.clone();
        probe.push(crdb_delta_core::changes::END_HLC.to_owned());
        for f in delta::files(table, &first_key)
            .await
            .map_err(delta_err(&name))?
        {
            if !may_hold(&f.key_range, &keys) {
                continue;
            }
            let file = delta::TableFile::fetch(table, &f.path).await?;
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
                let b = rewrite(&mut changes, state.mode, &b?, true)
                    .map_err(change_err)?
                    .expect("always");
                writer.write(b).await.map_err(delta_err(&name))?;
            }
        }
    }
    // New rows (every change, new keys, or new versions), built and written one batch at a time.
    while let Some(b) = changes.next_output(state.mode, bs).map_err(change_err)? {
        writer.write(b).await.map_err(delta_err(&name))?;
    }
    let adds = writer.finish().await.map_err(delta_err(&name))?;
    fault("after-write");

    let mut new_layout = changes.layout().clone();
    new_layout.primary_family = None;
    let mut old_layout = before;
    old_layout.primary_family = None;
    let counts = changes.counts();
    let figures = json!({
        "events": changes.len(),
        "inserted": counts.inserted,
        "updated": counts.updated,
        "deleted": counts.deleted,
        "duplicates": changes.duplicates(),
        "filesAdded": adds.len(),
        "filesRemoved": removes.len(),
    });
    let progress = Progress {
        applied: Some(resolved),
        pending_from: pending,
    };
    let version = delta::commit(
        table,
        &state.target.path,
        Commit {
            adds,
            removes,
            layout: (exists && !same_delta_layout(&new_layout, &old_layout))
                .then(|| (new_layout.clone(), state.mode)),
            progress: progress.clone(),
            resolved,
            figures,
            mode: state.mode,
        },
    )
    .await;
    let version = match version {
        Ok(v) => v,
        Err(e) => {
            // Another writer committed since we read the table: Delta's optimistic check refused
            // ours (our `txn` app id, or a metadata change). Reload and let the next step be
            // planned from what the log says now; give up after a few conflicts in a row.
            let read = table.version();
            let fresh = state.target.open().await?;
            let moved = fresh.as_ref().and_then(DeltaTable::version) > read;
            if let Some(fresh) = fresh.filter(|_| moved) {
                let p = delta::progress(&fresh, &state.target.path).await?;
                // Losing to a run that applied RESOLVEDs is progress; losing again and again to
                // commits that apply nothing of ours (another tool rewriting files) is not.
                if p.applied <= state.progress.applied {
                    state.conflicts += 1;
                    if state.conflicts > MAX_CONFLICTS {
                        return Err(e.into());
                    }
                }
                tracing::warn!(table = %name, %resolved, applied = ?p.applied, error = %e, "concurrent commit; re-planning from the log");
                state.layout = Some(delta::layout_of(&fresh, &state.target.path)?.0);
                state.progress = p;
                state.table = Some(fresh);
                return Ok(());
            }
            return Err(e.into());
        }
    };
    state.conflicts = 0;
    fault("after-commit");
    tracing::info!(
        table = %name,
        resolved = %resolved,
        version,
        events = changes.len(),
        inserted = counts.inserted,
        updated = counts.updated,
        deleted = counts.deleted,
        "committed"
    );
    state.layout = Some(new_layout);
    state.progress = progress;
    let r = &mut state.report;
    r.commits += 1;
    r.events += changes.len() as u64;
    r.inserted += counts.inserted;
    r.updated += counts.updated;
    r.deleted += counts.deleted;
    r.duplicates += changes.duplicates() as u64;
    r.seconds += started.elapsed().as_secs_f64();
    Ok(())
}

/// Whether two layouts give the same Delta schema and properties (JSON columns read back from a
/// table are plain strings, so `ColumnType`s alone would differ on every step).
fn same_delta_layout(a: &Layout, b: &Layout) -> bool {
    let cols = |l: &Layout| -> Vec<(String, arrow_schema::DataType)> {
        l.columns
            .iter()
            .map(|(n, t)| (n.clone(), t.arrow_type()))
            .collect()
    };
    a.key == b.key
        && a.split_families == b.split_families
        && a.families == b.families
        && cols(a) == cols(b)
}

fn rewrite(
    changes: &mut Changes,
    mode: Mode,
    batch: &RecordBatch,
    always: bool,
) -> Result<Option<RecordBatch>, ChangeError> {
    match mode {
        Mode::Scd2 => changes.close_target(batch, always),
        _ => changes.merge_target(batch, always),
    }
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
    // Once more if a concurrent run created the log or wrote to it meanwhile: the second
    // attempt starts from its commit (and finds the record there if it wrote this one).
    match record_resolved_once(log, resolved, states, partition, if_missing).await {
        Err(SyncError::Delta(e)) => {
            tracing::warn!(error = %e, "recording the RESOLVED raced another run; retrying once");
            record_resolved_once(log, resolved, states, partition, if_missing).await
        }
        other => other,
    }
}

async fn record_resolved_once(
    log: &Target,
    resolved: Hlc,
    states: &[TableState],
    partition: Option<PartitionFormat>,
    if_missing: bool,
) -> Result<(), SyncError> {
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
        return Ok(());
    }
    if if_missing && states.iter().all(|s| s.table.is_none()) {
        return Ok(());
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
    .await;
    if let Err(e) = committed {
        // A concurrent run recorded this RESOLVED first (same `txn` app id): that is the record.
        let recorded = match log.open().await? {
            Some(t) => t
                .snapshot()
                .map_err(delta_err(RESOLVED_LOG))?
                .transaction_version(t.log_store().as_ref(), delta::APP_ID)
                .await
                .map_err(delta_err(RESOLVED_LOG))?,
            None => None,
        };
        if recorded.is_none_or(|v| v < resolved.wall) {
            return Err(e.into());
        }
    }
    Ok(())
}
