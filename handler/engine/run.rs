//! The step loop of a run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;

use crdb_delta_core::Hlc;
use crdb_delta_core::format::names::ObjectName;
use crdb_delta_core::plan::{self, Object, Progress};
use deltalake_core::DeltaTable;

use super::AbortOnDrop;
use super::ahead::Shared;
use super::apply::apply_table;
use super::listing::{bounded_listing, check_resolved_content, list, partition_of};
use super::read::Budget;
use super::report::{SyncReport, peak_rss_mib};
use super::resolved_log::{RecordRow, Recorder, ResolvedLog, record_resolved};
use super::schema_refresh;
use super::table::{TableState, open_table};
use super::table_cache::Derived;
use super::{RESOLVED_LOG, SyncError, SyncOptions};

use super::faults::fault;
use crate::delta::Target;
use crate::quarantine::{Action, Quarantine};
use crate::storage::Location;

/// What a table's apply reports back: its name, the outcome, and what it learnt about decoded
/// sizes.
type Outcome = (String, Result<(), SyncError>, plan::Expansion);

/// One table's apply of a step, on a task of its own: owns the table's state and hands it back
/// (`pos`: its place among the run's tables).
async fn apply_task(
    shared: Arc<Shared>,
    pos: usize,
    mut state: TableState,
    resolved: Hlc,
    files: Vec<usize>,
    start: plan::Expansion,
    shrinkable: bool,
) -> (usize, TableState, Outcome) {
    let mut learnt = start;
    let mut budget = Budget {
        expansion: &mut learnt,
        shrinkable,
    };
    let r = apply_table(&mut state, resolved, &files, &shared, &mut budget).await;
    let name = state.name.clone();
    (pos, state, (name, r, learnt))
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
pub(super) async fn sync_known(
    source: &Location,
    target: &Location,
    mut objects: Vec<Object>,
    ignored: Vec<String>,
    known: Vec<TableState>,
    opts: &SyncOptions,
    started: Instant,
) -> Result<SyncReport, SyncError> {
    // `only_tables`: other tables' files leave the plan (and their tables the run), before
    // anything is read for them.
    plan::keep_tables(&mut objects, &|t| opts.config.applies(t));
    // A table whose files show a schema change: its keys and types read again first.
    let refreshed = schema_refresh::refresh(target, &objects, opts).await?;
    let refreshed_opts;
    let (opts, schema_read) = match refreshed {
        Some(r) => {
            refreshed_opts = SyncOptions {
                config: r.config,
                ..opts.clone()
            };
            (&refreshed_opts, r.tables)
        }
        None => (opts, BTreeMap::new()),
    };
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    let tolerance = i64::try_from(opts.max_resolved_ahead.as_nanos()).unwrap_or(i64::MAX);
    let refused: Vec<String> = plan::refuse_future_resolved(&mut objects, now, tolerance)
        .into_iter()
        .map(|r| {
            tracing::error!(object = %r.path, reason = %r.reason, "RESOLVED refused");
            format!("{}: {}", r.path, r.reason)
        })
        .collect();
    let partition = partition_of(&objects);
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
    states.retain(|s| !stopped.contains(&s.name) && opts.config.applies(&s.name));
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
    if let Some(cache) = &opts.carry_cache {
        for s in &mut states {
            s.carry = cache.take(&s.target.path);
        }
    }
    if let Some(caches) = &opts.slice_caches {
        for s in &mut states {
            s.slice_cache = caches.take(&s.target.path);
        }
    }
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
    let mut recorder = Recorder::new(
        ResolvedLog::new(Target::new(target, RESOLVED_LOG)?, opts.checkpoints.clone())
            .with_cache(opts.table_cache.clone()),
    );
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
        schema_read,
        ..SyncReport::default()
    };
    // A crash after the tables' commits but before the record: record it now (the tables have
    // not moved since, so their current versions are the ones at that RESOLVED).
    // Never while a table is stopped: the record would leave it out, and later runs' bounded
    // listings (which start from the record) would no longer list its files.
    // A table of a fanned-out RESOLVED (`opts.record` off) is recorded with the others by the
    // fan-out instead.
    if opts.record
        && stopped.is_empty()
        && let Some(r) = common_resolved(&states, &objects)
    {
        record_resolved(
            recorder.settled().await?,
            r,
            &RecordRow::of(&states),
            partition,
            true,
        )
        .await?;
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
            opts.each_resolved,
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
            // Once per run: a backlog of large intervals would say it at every slice.
            if oversized == 0 {
                tracing::info!(
                    resolved = %step.resolved,
                    bytes = step.bytes,
                    max_window_bytes = opts.max_window_bytes,
                    "one RESOLVED interval is larger than max_window_bytes; applying it in key slices, one commit each (said once per run)"
                );
            }
            oversized += 1;
        }
        check_resolved_content(source, &objects, step.resolved).await?;
        tracing::info!(resolved = %step.resolved, bytes = step.bytes, tables = step.tables.len(), "step");
        opts.report_progress(super::SyncProgress::Step {
            resolved: step.resolved,
            tables: step.tables.len(),
        });
        let commits_before: u64 = states.iter().map(|s| s.report.commits).sum();
        let mut poisoned = Vec::new();
        let mut overflow = false;
        // Every table's apply runs to its end (none is dropped mid-commit), then the outcomes
        // are looked at; the first other error ends the run after all have finished. Each
        // apply is a task of its own, so tables of a step merge on both cores: the step's
        // tables move into their tasks and come back with the outcome.
        let outcomes: Vec<Outcome> = {
            let shared = Arc::new(Shared::new(objects.clone(), source, opts, &step, &progress));
            let (applying, idle): (Vec<_>, Vec<_>) = std::mem::take(&mut states)
                .into_iter()
                .enumerate()
                .partition(|(_, s)| step.tables.contains_key(&s.name));
            let applies = applying.into_iter().map(|(pos, state)| {
                let files = step.tables[&state.name].clone();
                let task = tokio::spawn(apply_task(
                    shared.clone(),
                    pos,
                    state,
                    step.resolved,
                    files,
                    expansion.clone(),
                    step.shrinkable,
                ));
                AbortOnDrop(task)
            });
            let done: Vec<(usize, TableState, Outcome)> = futures::stream::iter(applies)
                .buffer_unordered(opts.tables_at_once.max(1))
                .collect()
                .await;
            let mut back: Vec<(usize, TableState)> = idle;
            let mut outcomes = Vec::with_capacity(done.len());
            for (pos, state, outcome) in done {
                back.push((pos, state));
                outcomes.push(outcome);
            }
            back.sort_by_key(|(pos, _)| *pos);
            states = back.into_iter().map(|(_, s)| s).collect();
            outcomes
        };
        let mut failed = None;
        for (table, outcome, learnt) in outcomes {
            expansion.merge(&learnt);
            match outcome {
                Ok(()) => {}
                Err(SyncError::WindowOverflow { table, decoded, .. }) => {
                    tracing::info!(%table, decoded, resolved = %step.resolved, "window larger than estimated; planning a smaller step");
                    overflow = true;
                }
                Err(e) => match e.poison_file() {
                    Some(file) => {
                        let reason = e.to_string();
                        tracing::error!(%table, %file, error = %reason, "table stopped: file quarantined (crdb-delta quarantine list|retry|skip)");
                        let r = quarantine.hold(&table, file, &reason).await?;
                        poisoned.push(table);
                        report.quarantined.push(r);
                    }
                    None => {
                        failed.get_or_insert(e);
                    }
                },
            }
        }
        if let Some(e) = failed {
            return Err(e);
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
        if opts.record
            && stopped.is_empty()
            && common_resolved(&states, &objects) == Some(step.resolved)
        {
            recorder
                .record_behind(step.resolved, RecordRow::of(&states), partition)
                .await?;
        }
        // A step whose commits all went stale (re-planned) is an attempt, not a step; one that
        // applied a key slice short of its interval's last is a slice, not a step.
        let committed: u64 = states.iter().map(|s| s.report.commits).sum();
        if committed > commits_before && states.iter().all(|s| s.progress.slices.is_none()) {
            report.steps += 1;
        }
    }
    recorder.settled().await?;
    let seen: BTreeMap<String, Vec<String>> = states
        .iter()
        .map(|s| {
            let columns = s
                .layout
                .as_ref()
                .map(|l| l.columns.iter().map(|(c, _)| c.clone()).collect())
                .unwrap_or_default();
            (s.name.clone(), columns)
        })
        .collect();
    // The config as written (not schema.json: CockroachDB lists columns a changefeed never
    // emits, such as virtual computed ones, and tables that have written nothing yet).
    report.config_unused = opts.explicit.as_ref().unwrap_or(&opts.config).unused(&seen);
    for u in &report.config_unused {
        tracing::warn!("config: {u}");
    }
    for mut s in states {
        if let Some(cache) = &opts.carry_cache {
            cache.put(&s.target.path, std::mem::take(&mut s.carry));
        }
        // An interval left part-way: its files and spilled rows for the next run's slices.
        if let (Some(caches), Some(cache), Some(_)) =
            (&opts.slice_caches, s.slice_cache.take(), s.progress.slices)
        {
            caches.put(&s.target.path, cache);
        }
        // The table as of its last commit here, with its progress at that version.
        if let (Some(cache), Some(table)) = (&opts.table_cache, &s.table) {
            let derived = Derived {
                progress: Some(s.progress.clone()),
                record: None,
            };
            cache.keep(&s.target, table, derived).await;
        }
        let mut t = s.report;
        if t.bare_envelope {
            tracing::warn!(table = %s.name, "the changefeed uses envelope=bare: a delete cannot be told from an update to all-NULL, so deleted rows stay with NULL columns (use envelope=wrapped)");
        }
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

/// [`plan::common_resolved`] over the run's tables.
fn common_resolved(states: &[TableState], objects: &[Object]) -> Option<Hlc> {
    let at: Vec<plan::TableAt<'_>> = states
        .iter()
        .map(|s| plan::TableAt {
            name: &s.name,
            exists: s.table.is_some(),
            applied: s.progress.applied,
        })
        .collect();
    plan::common_resolved(&at, objects)
}
