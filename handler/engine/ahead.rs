//! Reading a table's next step while this one writes and commits: one RESOLVED at a time (the
//! function's mode), a step's read and its write otherwise take turns on one core.
//!
//! The next step is planned as if this one commits; what was read is used only when the step
//! the loop then plans is that one, from the same progress, with the same layout and column
//! types. Anything else (a conflict, a re-plan, a schema change, a slice) drops it unread, and
//! the step reads as it would have. Reading writes nothing, so a crash or a dropped read leaves
//! nothing behind. Memory: the read-ahead gets what this step leaves of `max_window_bytes`
//! (shared by the step's tables) and gives up, unused, when its window outgrows that.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crdb_delta_core::Hlc;
use crdb_delta_core::apply::{ChangeLog, Layout, Window};
use crdb_delta_core::format::decode::DecodeOptions;
use crdb_delta_core::format::types::ColumnType;
use crdb_delta_core::plan::{self, Object, Progress};

use super::AbortOnDrop;
use super::carry::{Batches, Keeper};
use super::read::{Reuse, read_window};
use super::report::TableReport;
use super::table::TableState;
use super::{SyncError, SyncOptions};
use crate::storage::Location;

/// What every table's apply task of a step reads.
pub(super) struct Shared {
    pub(super) objects: Vec<Object>,
    pub(super) source: Location,
    pub(super) opts: SyncOptions,
    /// Every table's progress as it will be once the step commits, when the next step may be
    /// read ahead (one step per RESOLVED); `None` otherwise.
    pub(super) after: Option<BTreeMap<String, Progress>>,
    /// Decoded bytes each table's read-ahead may hold: what the step leaves of the window,
    /// shared by its tables.
    pub(super) room: u64,
}

impl Shared {
    /// The step's shared inputs; a read-ahead only where every step is one RESOLVED (so the
    /// next one is known from this table's progress alone) and the step leaves room.
    pub(super) fn new(
        objects: Vec<Object>,
        source: &Location,
        opts: &SyncOptions,
        step: &plan::Step,
        progress: &BTreeMap<String, Progress>,
    ) -> Self {
        let room =
            opts.max_window_bytes.saturating_sub(step.bytes) / step.tables.len().max(1) as u64;
        let after = (opts.each_resolved && room > 0).then(|| {
            progress
                .iter()
                .map(|(t, p)| {
                    let applied = p.applied.max(Some(step.resolved));
                    let next = Progress {
                        applied,
                        pending_from: p.pending_from.clone(),
                        slices: None,
                    };
                    (t.clone(), next)
                })
                .collect()
        });
        Self {
            objects,
            source: source.clone(),
            opts: opts.clone(),
            after,
            room,
        }
    }
}

/// A step's window, read and finished: what the write stage starts from.
pub(super) struct Read {
    pub(super) log: ChangeLog,
    /// The first file holding rows past the RESOLVED (the commit's `pending_from`).
    pub(super) pending: Option<String>,
    /// Rows past the RESOLVED, for the table's next step.
    pub(super) keeper: Option<Keeper>,
}

/// What a read-ahead hands over: the read, with its figures and what it learnt of sizes.
struct Ready {
    read: Read,
    report: TableReport,
    learnt: plan::Expansion,
}

/// A table's next step, being read.
pub(super) struct Ahead {
    resolved: Hlc,
    files: Vec<usize>,
    start: Option<Hlc>,
    layout: Layout,
    columns: BTreeMap<String, ColumnType>,
    task: AbortOnDrop<Result<Option<Ready>, SyncError>>,
}

/// What this step passes to its read-ahead.
pub(super) struct Next<'a> {
    /// The RESOLVED this step commits.
    pub(super) resolved: Hlc,
    pub(super) pending: Option<String>,
    /// The table's layout after this step (the window's).
    pub(super) layout: &'a Layout,
    pub(super) expansion: &'a plan::Expansion,
}

/// Starts reading the table's next step, if there is one and it fits the room; takes the
/// step's kept rows (they are the next step's) only then.
pub(super) fn start(
    shared: &Arc<Shared>,
    state: &TableState,
    next: Next<'_>,
    keeper: &mut Option<Keeper>,
) -> Option<Ahead> {
    let after = shared.after.as_ref()?;
    let opts = &shared.opts;
    let mut after = after.clone();
    let start = Some(next.resolved);
    after.insert(
        state.name.clone(),
        Progress {
            applied: start,
            pending_from: next.pending,
            slices: None,
        },
    );
    let weigh = |o: &Object| next.expansion.weigh(o);
    let step = plan::next_step_weighed(
        &shared.objects,
        &after,
        opts.max_window_bytes,
        opts.until,
        true,
        &weigh,
    )?;
    let files = step.tables.get(&state.name)?.clone();
    let bytes: u64 = files.iter().map(|&i| weigh(&shared.objects[i])).sum();
    if files.is_empty() || bytes > shared.room {
        return None;
    }
    let mut layout = next.layout.clone();
    layout.primary_family = None;
    let layout =
        super::apply::with_primary_family(layout, &state.name, &files, &shared.objects, opts);
    let dopts = super::apply::decode_options(&state.name, state.mode, &layout, opts).ok()?;
    let carried = keeper
        .take()
        .map(|k| k.finish().take(start, &dopts.columns))
        .unwrap_or_default();
    let task = tokio::spawn(read_ahead(
        shared.clone(),
        Job {
            name: state.name.clone(),
            resolved: step.resolved,
            window: Window::new(layout.clone(), start, step.resolved),
            files: files.clone(),
            dopts: dopts.clone(),
            carried,
            learnt: next.expansion.clone(),
        },
    ));
    tracing::debug!(table = %state.name, resolved = %step.resolved, files = files.len(), bytes, "reading the next step ahead");
    Some(Ahead {
        resolved: step.resolved,
        files,
        start,
        layout,
        columns: dopts.columns,
        task: AbortOnDrop(task),
    })
}

/// The table's read-ahead, when it read this very step: its read, with its figures added to the
/// table's and its size lessons to `expansion`. `None`: read the step as usual (none was
/// started, it was for another step, outgrew its room, or failed — a failure that is not
/// transient shows again when the step reads).
pub(super) async fn take(
    state: &mut TableState,
    resolved: Hlc,
    files: &[usize],
    layout: &Layout,
    columns: &BTreeMap<String, ColumnType>,
    expansion: &mut plan::Expansion,
) -> Option<Read> {
    let a = state.ahead.take()?;
    let same = a.resolved == resolved
        && a.files == files
        && a.start == state.progress.applied
        && state.progress.slices.is_none()
        && a.layout == *layout
        && a.columns == *columns;
    if !same {
        tracing::debug!(table = %state.name, %resolved, "read-ahead was for another step; dropped");
        return None;
    }
    match a.task.await {
        Ok(Some(ready)) => {
            state.report.add_read(&ready.report);
            state.report.steps_read_ahead += 1;
            expansion.merge(&ready.learnt);
            Some(ready.read)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(table = %state.name, %resolved, error = %e, "read-ahead failed; reading the step again");
            None
        }
    }
}

/// One read-ahead: the next step's window and what reading it needs.
struct Job {
    name: String,
    resolved: Hlc,
    window: Window,
    files: Vec<usize>,
    dopts: DecodeOptions,
    /// The rows this step kept past its RESOLVED.
    carried: HashMap<String, Batches>,
    learnt: plan::Expansion,
}

/// Reads and finishes one window, as [`super::apply`]'s read stage does for an unsliced step,
/// within the room; `None` when it outgrows it.
async fn read_ahead(shared: Arc<Shared>, job: Job) -> Result<Option<Ready>, SyncError> {
    let Job {
        name,
        resolved,
        window,
        files,
        dopts,
        mut carried,
        mut learnt,
    } = job;
    let max = shared.opts.max_window_bytes;
    let mut report = TableReport::default();
    let mut keeper = Keeper::new(resolved, dopts.columns.clone(), max / 4);
    let read = read_window(
        &name,
        &mut report,
        window,
        &files,
        &shared.objects,
        &shared.source,
        &dopts,
        &mut learnt,
        Some(shared.room),
        max / 8,
        Reuse {
            carried: &mut carried,
            keeper: Some(&mut keeper),
            slices: None,
            cache: None,
            spill: None,
        },
        shared.opts.progress.as_ref(),
    )
    .await;
    let (window, pending) = match read {
        Ok(r) => r,
        Err(SyncError::WindowOverflow { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    report.rows_read += window.rows_read();
    let log = tokio::task::spawn_blocking(move || window.finish())
        .await?
        .map_err(|source| SyncError::Change {
            table: name.clone(),
            source,
        })?;
    Ok(Some(Ready {
        read: Read {
            log,
            pending,
            keeper: Some(keeper),
        },
        report,
        learnt,
    }))
}
