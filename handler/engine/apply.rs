//! One table, one step: the window read, merged by the table's mode, written and committed
//! with the RESOLVED. A stale plan (another writer committed first) is re-planned, never forced.
//!
//! [`apply_table`] reads as its stages: layout → read → merge → create → write → commit.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crdb_delta_core::Hlc;
use crdb_delta_core::apply::{
    self, ChangeError, ChangeLog, Keep, Layout, Mode, ModeWriter, Window,
};
use crdb_delta_core::deletion_vector::DeletionVector;
use crdb_delta_core::format::decode::{DecodeError, DecodeOptions, SliceFilter};
use crdb_delta_core::format::names::ObjectName;
use crdb_delta_core::format::types::ColumnType;
use crdb_delta_core::plan::{Object, Progress, Slices};
use deltalake_core::kernel::{Add, Remove};
use futures::StreamExt;

use super::AbortOnDrop;
use super::ahead::{self, Read, Shared};
use super::carry::Keeper;
use super::faults::{fault, pause};
use super::key_cache::KeyCache;
use super::probe_decode::{self, Learn, Probed, live_rows};
use super::read::SpillUse;
use super::read::{Budget, Reuse, derive_key, learn_expansion, read_window};
use super::slice_cache::SliceCache;
use super::slice_keys::{self, SliceKeys};
use super::slice_spill::SpillWriter;
use super::table::{TableState, replan};
use super::{SyncError, SyncOptions, delta_err};
use crate::config::Storage;
use crate::delta::{self, Commit, Committed, Conflict, DeltaError, FileEntry};
use crate::records::{Figures, TableFigures};
use crate::storage::Location;

fn change_err(table: &str) -> impl Fn(ChangeError) -> SyncError + '_ {
    move |source| SyncError::Change {
        table: table.to_owned(),
        source,
    }
}

/// Applies the step's `files` of one table up to `resolved` in one Delta commit — or, when
/// the interval is too large for one window and no smaller step exists, its next key slice
/// ([`Slices`]): the step loop plans the same RESOLVED again until the last slice lands.
/// While it writes and commits, the table's next step may be read ahead ([`ahead`]).
pub(super) async fn apply_table(
    state: &mut TableState,
    resolved: Hlc,
    files: &[usize],
    shared: &Arc<Shared>,
    budget: &mut Budget<'_>,
) -> Result<(), SyncError> {
    let started = Instant::now();
    let (objects, source, opts) = (&shared.objects, &shared.source, &shared.opts);
    let layout = step_layout(state, files, objects, source, opts).await?;
    let before = layout.clone();
    let dopts = decode_options(&state.name, state.mode, &layout, opts)?;
    // Outside a sliced interval (also when another run finished it) this run's slice files
    // may hold keys a window changes.
    if state.progress.slices.is_none() {
        state.slice_files.clear();
        state.slice_memo = Default::default();
        state.slice_cache = None;
    }
    let (read, slices) = match ahead::take(
        state,
        resolved,
        files,
        &layout,
        &dopts.columns,
        budget.expansion,
    )
    .await
    {
        Some(read) => (read, None),
        None => read_stage(state, resolved, files, shared, budget, &layout, &dopts).await?,
    };
    let Read {
        log,
        pending,
        mut keeper,
    } = read;
    warn_inferred_floats(&state.name, &layout, log.layout(), files, objects, opts);
    // The next step is read while this one writes and commits; it takes the kept rows.
    let next = match slices {
        None => ahead::start(
            shared,
            state,
            ahead::Next {
                resolved,
                pending: pending.clone(),
                layout: log.layout(),
                expansion: budget.expansion,
            },
            &mut keeper,
        ),
        Some(_) => None,
    };
    let mut changes = apply::writer(state.mode, log);
    fault("before-write");
    let exists = state.table.is_some();
    if !exists && !create_table(state, changes.log()).await? {
        return Ok(());
    }
    let (mut adds, removes, new_files) = match write(state, exists, &mut *changes, opts).await? {
        Written::Files {
            adds,
            removes,
            new_files,
        } => (adds, removes, new_files),
        Written::Stale(conflict) => return replan(state, resolved, conflict).await,
    };
    // A slice's new files hold its keys alone: tagged, later steps look them up by its keys.
    if let Some(s) = slices {
        let layout = changes.log().layout();
        let types = layout.key_types();
        slice_keys::tag_new_files(&mut adds, &new_files, &layout.key, &types, s.done, s.of);
    }
    fault("after-write");
    let commit = plan_commit(
        state, exists, &*changes, &before, resolved, pending, slices, adds, removes,
    );
    pause("before-commit").await;
    let progress = commit.progress.clone();
    let table = state.table.as_mut().expect("created above");
    let version = match delta::commit(table, &state.target.path, commit, &opts.checkpoints).await? {
        Committed::Version(v) => v,
        Committed::Conflict(c) => return replan(state, resolved, c).await,
    };
    fault("after-commit");
    if progress.slices.is_some() {
        state.slice_files.extend(new_files);
        state.report.slice_commits += 1;
    } else {
        state.slice_files.clear();
        state.slice_memo = Default::default();
        state.slice_cache = None;
        if let Some(k) = keeper {
            state.carry = k.finish();
        }
    }
    state.ahead = next;
    account(state, &*changes, progress, resolved, version, started);
    Ok(())
}

/// The read stage: the step's window, decoded and finished, and the key slice it holds when
/// the interval is larger than the window (`None`: all of it).
async fn read_stage(
    state: &mut TableState,
    resolved: Hlc,
    files: &[usize],
    shared: &Shared,
    budget: &mut Budget<'_>,
    layout: &Layout,
    dopts: &DecodeOptions,
) -> Result<(Read, Option<Slices>), SyncError> {
    let (objects, source, opts) = (&shared.objects, &shared.source, &shared.opts);
    let max = opts.max_window_bytes;
    let mut slices = match state.progress.slices {
        Some(s) if s.resolved != resolved => {
            return Err(SyncError::Table {
                table: state.name.clone(),
                message: format!(
                    "planned to {resolved} while slices of the interval to {} are pending",
                    s.resolved
                ),
            });
        }
        Some(s) => Some(s),
        None if budget.shrinkable => None,
        None => {
            let weigh = |e: &crdb_delta_core::plan::Expansion| -> u64 {
                files.iter().map(|&i| e.weigh(&objects[i])).sum()
            };
            let planned =
                Slices::plan(resolved, weigh(budget.expansion), max, opts.min_slice_bytes);
            // Sliced by the priors: worth one file's read to count the slices by what the files
            // decode to. Still at least two, so an interval this large is never applied as one
            // pass of the whole window (its peak memory would be several times the window).
            match planned {
                Some(p) => {
                    let cache = slice_cache(state, opts, resolved);
                    learn_expansion(
                        &mut state.report,
                        files,
                        objects,
                        source,
                        dopts,
                        budget.expansion,
                        cache.as_ref(),
                    )
                    .await?;
                    let of = Slices::count(weigh(budget.expansion), max, opts.min_slice_bytes);
                    Some(Slices { of: of.max(2), ..p })
                }
                None => None,
            }
        }
    };
    // Rows the last step kept past its RESOLVED (this step's start), when it is this table's
    // next step with the same column types; taken out, so any early return drops them.
    let mut carried = std::mem::take(&mut state.carry).take(state.progress.applied, &dopts.columns);
    // Read without a limit: a slice past the interval's first (the slice count is fixed
    // then), or an interval that cannot be sliced finer.
    let mut whole = false;
    let mut keeper;
    let (window, pending) = loop {
        // Key slices re-read their interval up to its RESOLVED: nothing is kept from them.
        keeper = slices
            .is_none()
            .then(|| Keeper::new(resolved, dopts.columns.clone(), max / 4));
        let mut window = Window::new(layout.clone(), state.progress.applied, resolved);
        if let Some(s) = slices {
            window = window.with_slice(s.done, s.of);
        }
        // An unsliced read may grow to where slicing would cut it in two.
        let limit = match slices {
            _ if whole => None,
            Some(s) if s.done > 0 => None,
            Some(_) => Some(max),
            None => Some(max.max(opts.min_slice_bytes.saturating_mul(2))),
        };
        let cache = slices.and_then(|_| slice_cache(state, opts, resolved));
        // With a cache: the later slices' rows on local disk, read by this pass, or written by
        // it. The first pass, which decodes every row anyway, writes them; a later pass that
        // decodes under other options (the table it created took the types it inferred, where
        // none were configured) cannot use them, and writes them again. So a first pass that
        // will create the table with no type given leaves it to the second.
        let inferring = state.table.is_none() && dopts.columns.is_empty();
        let spill = match (slices, &cache) {
            (Some(s), Some(c)) => match c.spill() {
                Some(sp) if sp.holds(&s, dopts) => {
                    let c = c.clone();
                    tokio::task::spawn_blocking(move || c.release_files()).await?;
                    Some(SpillUse::Read(sp, s.done))
                }
                _ if s.done + 1 < s.of
                    && s.of - s.done - 1 <= SpillWriter::MAX_SLICES
                    && (s.done > 0 || !inferring)
                    && !c.spill_refused() =>
                {
                    Some(SpillUse::Write(Arc::new(Mutex::new(SpillWriter::new(
                        c.dir(),
                        &layout.key,
                        state.progress.applied,
                        s,
                        dopts,
                        c.budget(),
                    )))))
                }
                _ => None,
            },
            _ => None,
        };
        let writer = spill.as_ref().and_then(SpillUse::writer);
        // A slice past the first has its decoder skip building the other slices' rows (unless
        // the pass writes the spill, which takes every row); the slice count is fixed by then,
        // so no size is measured from it.
        let sliced;
        let dopts = match slices {
            Some(s) if s.done > 0 && writer.is_none() => {
                sliced = DecodeOptions {
                    slice: Some(SliceFilter {
                        index: s.done,
                        of: s.of,
                        lo: state.progress.applied,
                        hi: resolved,
                    }),
                    ..dopts.clone()
                };
                &sliced
            }
            _ => dopts,
        };
        // A file is decoded ahead, while its predecessor is merged in, up to an eighth of the
        // window.
        match read_window(
            &state.name,
            &mut state.report,
            window,
            files,
            objects,
            source,
            dopts,
            budget.expansion,
            limit,
            max / 8,
            Reuse {
                carried: &mut carried,
                keeper: keeper.as_mut(),
                cache: cache.clone(),
                slices: slices.map(|_| (&mut state.slice_memo, max / 8)),
                spill,
            },
            opts.progress.as_ref(),
        )
        .await
        {
            Ok(read) => {
                if let (Some(w), Some(c)) = (writer, cache) {
                    keep_spill(&mut state.report, w, c).await?;
                }
                break read;
            }
            Err(SyncError::WindowOverflow { estimate, .. }) if !budget.shrinkable => {
                // As the estimate says, or twice as fine as before when it says no more; never
                // finer than min_slice_bytes.
                let before = slices.map_or(1, |s| s.of);
                let finest = Slices::count(estimate, 0, opts.min_slice_bytes);
                let of = Slices::count(estimate, max, opts.min_slice_bytes)
                    .max(before.saturating_mul(2))
                    .min(finest);
                if of <= before {
                    tracing::warn!(table = %state.name, %resolved, estimate, "RESOLVED interval larger than the window and sliced as finely as allowed; reading it whole");
                    whole = true;
                } else {
                    tracing::info!(table = %state.name, %resolved, estimate, slices = of, "RESOLVED interval larger than the window; applying it in key slices");
                    slices = Some(Slices {
                        resolved,
                        of,
                        done: 0,
                    });
                }
            }
            Err(e) => return Err(type_locked(e, &state.name, layout, opts)),
        }
    };
    state.report.rows_read += window.rows_read();
    let log = window.finish().map_err(change_err(&state.name))?;
    Ok((
        Read {
            log,
            pending,
            keeper,
        },
        slices,
    ))
}

/// The table's slice cache for its sliced interval to `resolved`, made at the interval's first
/// pass in this process (`None` without `slice_cache_bytes` or, when it is sized from the
/// folder's file system, with nothing to size it from; or when its folder cannot be made: the
/// passes then fetch every file, as without one). One kept for another interval is let go.
fn slice_cache(state: &mut TableState, opts: &SyncOptions, resolved: Hlc) -> Option<SliceCache> {
    if state
        .slice_cache
        .as_ref()
        .is_some_and(|c| c.interval() != resolved)
    {
        state.slice_cache = None;
    }
    if state.slice_cache.is_none() && (opts.slice_cache_bytes > 0 || opts.slice_cache_auto) {
        let root = opts
            .slice_cache_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        // Sized from the disk: shared by the tables a step applies side by side.
        let budget = match opts.slice_cache_bytes {
            0 => super::slice_cache::auto_budget(&root) / opts.tables_at_once.max(1) as u64,
            b => b,
        };
        if budget == 0 {
            tracing::debug!(table = %state.name, folder = %root.display(), "slice cache: none (the folder is in memory, or has little free space); every slice fetches the interval's files");
            return None;
        }
        match SliceCache::new(&root, budget, resolved) {
            Ok(c) => state.slice_cache = Some(c),
            Err(e) => {
                tracing::warn!(table = %state.name, error = %e, "slice cache: no folder in the temporary folder; every slice fetches the interval's files");
            }
        }
    }
    state.slice_cache.clone()
}

/// Keeps the spill a pass wrote in the table's slice cache, for the interval's later slices.
async fn keep_spill(
    report: &mut super::report::TableReport,
    writer: Arc<Mutex<SpillWriter>>,
    cache: SliceCache,
) -> Result<(), SyncError> {
    let Ok(writer) = Arc::try_unwrap(writer) else {
        cache.refuse_spill();
        return Ok(());
    };
    let writer = writer.into_inner().unwrap_or_else(|e| e.into_inner());
    let spill = tokio::task::spawn_blocking(move || writer.finish()).await?;
    match spill {
        Some(spill) => {
            report.bytes_spilled += spill.bytes();
            cache.set_spill(spill);
        }
        None => cache.refuse_spill(),
    }
    Ok(())
}

/// The layout the step starts from: the table's, or for a new table the key (configured or
/// learnt from the files) and whether the feed splits column families. The primary family is
/// set on every step: it is not stored in the table.
async fn step_layout(
    state: &TableState,
    files: &[usize],
    objects: &[Object],
    source: &Location,
    opts: &SyncOptions,
) -> Result<Layout, SyncError> {
    let name = &state.name;
    let cfg = opts.config.table(name);
    let layout = match &state.layout {
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
    Ok(with_primary_family(layout, name, files, objects, opts))
}

/// Family 0 decides row deletes. Unconfigured, it is `primary` (CockroachDB's name for it
/// unless the table names its families) once a file of that family was seen; otherwise it
/// stays unknown and a row is deleted only when every known family reports a delete.
pub(super) fn with_primary_family(
    mut layout: Layout,
    table: &str,
    files: &[usize],
    objects: &[Object],
    opts: &SyncOptions,
) -> Layout {
    let seen_primary = layout.families.contains_key("primary")
        || files.iter().any(|&i| match &objects[i].name {
            ObjectName::Data(d) => d.topic.family() == Some("primary"),
            ObjectName::Resolved(_) => false,
        });
    layout.primary_family = opts
        .config
        .table(table)
        .primary_family
        .clone()
        .or_else(|| (layout.split_families && seen_primary).then(|| "primary".to_owned()));
    layout
}

/// A new column typed `double` from JSON numbers (no SQL type configured) is said: in
/// CockroachDB it may be a DECIMAL, which the values alone cannot tell, and the Delta table keeps
/// the type it is created with.
fn warn_inferred_floats(
    table: &str,
    before: &Layout,
    after: &Layout,
    files: &[usize],
    objects: &[Object],
    opts: &SyncOptions,
) {
    let json = files.iter().any(|&i| {
        matches!(&objects[i].name, ObjectName::Data(d)
            if d.format == crdb_delta_core::format::names::Format::Json)
    });
    if !json {
        return;
    }
    let configured = opts.config.table(table).columns;
    for (column, ty) in &after.columns {
        if matches!(ty, ColumnType::Float32 | ColumnType::Float64)
            && before.index_of(column).is_none()
            && !configured.contains_key(column)
        {
            tracing::warn!(%table, %column, "new column typed double from JSON numbers (no SQL type configured), which the Delta table keeps; if it is a DECIMAL in CockroachDB, configure `tables.{table}.columns.{column}` (or give --crdb-url) and re-create the table");
        }
    }
}

/// A value that does not fit a column the Delta table typed from earlier values (no SQL type
/// configured for it): the error says so and how to get the right type.
fn type_locked(e: SyncError, table: &str, layout: &Layout, opts: &SyncOptions) -> SyncError {
    let SyncError::Decode(d) = e else {
        return e;
    };
    let DecodeError::Value { column, .. } = &d else {
        return SyncError::Decode(d);
    };
    let configured = opts.config.table(table).columns.contains_key(column);
    match layout.columns.iter().find(|(c, _)| c == column) {
        Some((_, ty)) if !configured => SyncError::TypeLocked {
            table: table.to_owned(),
            column: column.clone(),
            delta_type: ty.delta_type(),
            error: Box::new(d),
        },
        _ => SyncError::Decode(d),
    }
}

/// Column types for decoding: the table's win; configured SQL types fix the rest; others are
/// inferred.
pub(super) fn decode_options(
    table: &str,
    mode: Mode,
    layout: &Layout,
    opts: &SyncOptions,
) -> Result<DecodeOptions, SyncError> {
    let mut columns = opts.config.table(table).column_types(table)?;
    for (c, t) in &layout.columns {
        columns.insert(c.clone(), t.clone());
    }
    Ok(DecodeOptions {
        batch_size: opts.batch_size,
        columns,
        primary_key: Some(layout.key.clone()),
        max_line_bytes: opts.max_line_bytes,
        slice: None,
        slice_rows: None,
        // scd2 ends a version from its change's `before` where the changefeed has `diff`.
        before: mode == Mode::Scd2,
    })
}

/// Creates the table on its first step; `false` when there is nothing to create it from yet,
/// or when a concurrent run created it first (the step is then planned again from its log).
async fn create_table(state: &mut TableState, log: &ChangeLog) -> Result<bool, SyncError> {
    if log.is_empty() && log.layout().columns.is_empty() {
        return Ok(false);
    }
    // Appends never supersede a row: their tables stay readable by every reader.
    let dvs = state.storage == Storage::DeletionVectors && state.mode != Mode::AppendOnly;
    let created = state.target.create(log.layout(), state.mode, dvs).await?;
    let p = delta::progress(&created, &state.target.path).await?;
    // Another run got there first: it applied an interval, or slices of one.
    if p.applied.is_some() || p.slices.is_some() {
        tracing::warn!(table = %state.name, "created concurrently by another run; re-planning from its progress");
        state.layout = Some(delta::layout_of(&created, &state.target.path)?.0);
        state.progress = p;
        state.table = Some(created);
        return Ok(false);
    }
    state.table = Some(created);
    Ok(true)
}

/// Table files fetched ahead of the one being merged (their probe columns only).
const FETCH_AHEAD: usize = 4;

/// Deletion vectors: from this many files below [`SyncOptions::rewrite_below`] on, the small
/// files a step probes are rewritten (like Databricks' auto compaction, which also waits for
/// a minimum number of small files; few here, as each one costs every later step a probe).
const SMALL_FILES: usize = 8;

/// What the write stage produced.
enum Written {
    Files {
        adds: Vec<Add>,
        removes: Vec<Remove>,
        /// Paths of the new data files among `adds` that hold only the window's keys.
        new_files: Vec<String>,
    },
    /// A table file vanished while being read (VACUUM): the plan is stale.
    Stale(Conflict),
}

/// Merges the window into the table files that may hold its keys, then writes the mode's new
/// rows; one batch in memory at a time. Rows a file's deletion vector already hides are never
/// seen. A touched file is rewritten whole (copy-on-write) or keeps its bytes and gets the
/// superseded rows added to its deletion vector, the new versions appended (deletion vectors).
async fn write(
    state: &mut TableState,
    exists: bool,
    changes: &mut dyn ModeWriter,
    opts: &SyncOptions,
) -> Result<Written, SyncError> {
    let name = state.name.clone();
    let storage = state.storage;
    let table = state.table.as_mut().expect("created");
    let mut writer = delta::Writer::new(table, opts.target_file_size).map_err(delta_err(&name))?;
    let mut removes = Vec::new();
    let mut adds = Vec::new();
    let mut deleted: Vec<(FileEntry, DeletionVector)> = Vec::new();
    // Key indexes being kept ([`Probed::batches`]): the step waits for them, so the next step
    // finds every index this one learned.
    let mut learning: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let bs = opts.batch_size;
    // Deletion vectors are kept beside the key indexes (see [`super::key_cache`]).
    let dv_cache = opts.key_cache.enabled().then(|| opts.key_cache.clone());
    if changes.reads_table() && exists && !changes.log().is_empty() {
        let layout = changes.log().layout();
        let first_key = layout.key[0].clone();
        // The layout's key columns and types: a hashed index takes the file's key columns in key
        // order and converts them to these types, as the merge does, before it prints and
        // hashes their text.
        let key_types: (Arc<[String]>, Arc<[ColumnType]>) = (
            layout.key.iter().cloned().collect(),
            layout.key_types().into(),
        );
        let probe = changes.probe_columns();
        let mut candidates = delta::files(table, &first_key)
            .await
            .map_err(delta_err(&name))?;
        // Key indexes: learned from and used for a mode whose probe is the key columns alone
        // (see [`super::key_cache`]).
        let table_url = Arc::new(table.table_url().to_string());
        let index = opts.key_cache.enabled().then(|| opts.key_cache.clone());
        let learns = index.as_ref().is_some_and(|cache| {
            cache.retain(
                &table_url,
                &candidates.iter().map(|f| f.path.as_str()).collect(),
            )
        });
        let index = index.filter(|_| probe.starts_with(&layout.key));
        // Probe columns beyond the key (scd2's end and start): read at the rows an index
        // finds.
        let extra: Arc<[String]> = probe[layout.key.len().min(probe.len())..].into();
        // Keys an index holds by their text's hash (several columns, or a type other than
        // integer or text) are looked up by the window's keys hashed alike.
        let hashed = index.is_some()
            && (layout.key.len() > 1
                || !matches!(
                    key_types.1[0],
                    ColumnType::Int32 | ColumnType::Int64 | ColumnType::Text
                ));
        let log = changes.log();
        let keys = Arc::new(log.key_probe(&key_types.1[0], hashed));
        // Looked up always; learned from the table's second step in this process on (its
        // first in the handler).
        let teach = index.clone().filter(|_| learns);
        pause("before-fetch").await;
        // Once small files pile up (the new files of recent steps), the ones this step probes
        // are rewritten even with deletion vectors: their rows merge into this step's new file,
        // instead of every later step probing each of them until a compaction.
        let small = |f: &FileEntry| u64::try_from(f.size).unwrap_or(0) < opts.rewrite_below;
        let rewrite_small = candidates.iter().filter(|f| small(f)).count() >= SMALL_FILES;
        // Files this interval's earlier slices wrote hold only their slices' keys.
        candidates.retain(|f| !state.slice_files.contains(&f.path));
        // A file tagged with the key slice it holds is looked up by that slice's keys alone
        // (a table loaded in slices: each key in one file instead of every file).
        let sliced = SliceKeys::new(&candidates, &key_types.0, &key_types.1, |of| {
            log.key_probes_by_slice(of, &key_types.1[0], hashed, &keys)
        });
        candidates.retain(|f| {
            sliced
                .keys(f, &keys)
                .is_some_and(|k| k.may_hold(f.key_range.as_ref()))
        });
        state.report.table_files_sliced +=
            candidates.iter().filter(|f| sliced.tagged(f)).count() as u64;
        // Decided once per step: whether any change needs the old row's values.
        let needs_values = changes.needs_table_values();
        let table: &deltalake_core::DeltaTable = table;
        // Whether a file is rewritten whole rather than given a deletion vector.
        let rewrites = |f: &FileEntry| match storage {
            Storage::CopyOnWrite => true,
            Storage::DeletionVectors => rewrite_small && small(f),
        };
        // Whether a file merges in one pass over its probe columns (see the loop below).
        let one_pass = |f: &FileEntry| !rewrites(f) && !needs_values;
        // The footer and the probe columns' chunks only, by byte ranges; a few files ahead, in
        // order, so the store's latency overlaps the merge (memory: FETCH_AHEAD probe sets).
        // Their probe columns are decoded on blocking threads, a bounded number of rows ahead
        // of the merge ([`probe_decode`]).
        // Each file's fetch (and decode) is a task of its own, so it goes on while the loop
        // below merges; dropped with the loop, the tasks are aborted.
        let fetch_from = Arc::new(table.clone());
        let dvs_read = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let probe_shared = Arc::new(probe.clone());
        let mut fetches = futures::stream::iter(candidates.into_iter().map(|f| {
            let (table, probe) = (fetch_from.clone(), probe_shared.clone());
            let (name, index, dvs, dvs_read, teach, keys, url, key_types, extra) = (
                name.clone(),
                index.clone(),
                dv_cache.clone(),
                dvs_read.clone(),
                teach.clone(),
                sliced.keys(&f, &keys).unwrap_or_else(|| keys.clone()),
                table_url.clone(),
                key_types.clone(),
                extra.clone(),
            );
            AbortOnDrop(tokio::spawn(async move {
                let size = u64::try_from(f.size).unwrap_or(0);
                let dv = deletion_vector(&table, &f, dvs.as_ref(), &url, &dvs_read).await?;
                // Indexed: the rows of the window's keys, without reading the file.
                // Learned under another key (the config changed in between): not used.
                let known = index
                    .as_ref()
                    .and_then(|c| c.get(&url, &f.path, f.size))
                    .filter(|k| k.is_of(&key_types.0, &key_types.1));
                if let Some(found) = known.and_then(|k| k.lookup(&keys, &dv)) {
                    let (file, decoded) = match found {
                        Ok((keys, rows)) if !extra.is_empty() && !rows.is_empty() => {
                            let file =
                                delta::TableFile::fetch_columns(&table, &f.path, size, &extra)
                                    .await?;
                            let decoded = with_columns_at(&name, &file, keys, &rows, &extra, bs);
                            (file, decoded.map(|b| vec![(b, rows)]))
                        }
                        found => (
                            delta::TableFile::deferred(&table, &f.path)?,
                            found
                                .map(|b| vec![b])
                                .map_err(|e| change_err(&name)(ChangeError::Arrow(e))),
                        ),
                    };
                    return Ok::<_, DeltaError>((f, dv, file, Probed::Ahead(decoded), true));
                }
                let file = delta::TableFile::fetch_columns(&table, &f.path, size, &probe).await?;
                let learn = teach.map(|c| Learn::new(c, &url, &f.path, f.size, &key_types));
                let probed = probe_decode::decode(
                    &name,
                    &file,
                    &f.path,
                    &probe,
                    &dv,
                    bs,
                    probe_decode::AHEAD_ROWS,
                    learn,
                )?;
                Ok((f, dv, file, probed, false))
            }))
        }))
        .buffered(FETCH_AHEAD);
        let gone = |path: String| {
            let version = table.version().unwrap_or(0);
            Written::Stale(Conflict::FileGone { path, version })
        };
        while let Some(fetched) = fetches.next().await {
            let (f, old_dv, mut file, probed, indexed) = match fetched {
                Ok(x) => x,
                Err(DeltaError::FileGone { path, .. }) => return Ok(gone(path)),
                Err(e) => return Err(e.into()),
            };
            state.report.table_files_read += 1;
            state.report.table_files_indexed += u64::from(indexed);
            let rewrite = rewrites(&f);
            // Deletion vectors, small files piled up: a small file this step probes is
            // rewritten whether or not the window changes it. Rewriting only changed ones
            // leaves those a window misses (most, in a table much larger than its windows),
            // and every later step probes them.
            let compact = rewrite && storage == Storage::DeletionVectors;
            let keep = if rewrite { Keep::All } else { Keep::Changed };
            // Merge-on-read of changes that carry whole rows needs the key columns only: one
            // pass merges them (decoded above, or here batch by batch). Otherwise decide from
            // the probe columns first, then stream the whole file through the merge; one batch
            // at a time either way.
            if one_pass(&f) {
                state.report.table_bytes_read += file.stored_bytes();
                let mut dv = old_dv.clone();
                let mut batches = probed.batches(&mut learning)?;
                // Rows the probe columns do not settle (scd2: a key whose change has no
                // `before`), by position: merged below from their whole rows.
                let mut unresolved: Vec<u64> = Vec::new();
                while let Some(b) = batches.next().await {
                    let (live, positions) = b?;
                    let merged = changes.merge_probed(&live).map_err(change_err(&name))?;
                    dv.extend(merged.superseded.iter().map(|&r| positions[r as usize]));
                    unresolved.extend(merged.unresolved.iter().map(|&r| positions[r as usize]));
                    writer.write(merged.batch).await.map_err(delta_err(&name))?;
                }
                if !unresolved.is_empty() {
                    let probed = file.stored_bytes();
                    match file.fetch_all(table).await {
                        Ok(()) => {}
                        Err(DeltaError::FileGone { path, .. }) => return Ok(gone(path)),
                        Err(e) => return Err(e.into()),
                    }
                    state.report.table_bytes_read += file.stored_bytes() - probed;
                    let (merged_dv, batches) =
                        merge_rows(&name, &f.path, &file, &unresolved, bs, changes)?;
                    dv.extend(merged_dv);
                    for b in batches {
                        writer.write(b).await.map_err(delta_err(&name))?;
                    }
                }
                // Nothing of this file superseded: no new deletion vector.
                if dv.cardinality() != old_dv.cardinality() {
                    state.report.files_with_deletion_vectors += 1;
                    deleted.push((f, dv));
                }
                continue;
            }
            // The positions of the rows the window supersedes; a rewrite needs only to know
            // whether there is one.
            let mut hits: Vec<u64> = Vec::new();
            // A rewrite stops at the first hit: its decoder stops with the stream dropped.
            let mut probed = probed.batches(&mut learning)?;
            while let Some(b) = probed.next().await {
                let (live, positions) = b?;
                let hit = changes.hits(&live).map_err(change_err(&name))?;
                hits.extend(hit.iter().map(|&r| positions[r as usize]));
                if rewrite && !hits.is_empty() {
                    break;
                }
            }
            drop(probed);
            if hits.is_empty() && !compact {
                state.report.table_bytes_read += file.stored_bytes();
                continue;
            }
            match file.fetch_all(table).await {
                Ok(()) => {}
                Err(DeltaError::FileGone { path, .. }) => return Ok(gone(path)),
                Err(e) => return Err(e.into()),
            }
            state.report.table_bytes_read += file.stored_bytes();
            let mut dv = old_dv.clone();
            if rewrite {
                let mut first = 0u64;
                for b in file.batches(None, bs)? {
                    let (live, positions) = live_rows(&name, &b?, &old_dv, &mut first)?;
                    let merged = changes.merge(&live, keep).map_err(change_err(&name))?;
                    dv.extend(merged.superseded.iter().map(|&r| positions[r as usize]));
                    writer.write(merged.batch).await.map_err(delta_err(&name))?;
                }
            } else {
                // Merge-on-read keeps the changed rows only: those are all it decodes (each
                // live, as the probe found them).
                let (superseded, batches) = merge_rows(&name, &f.path, &file, &hits, bs, changes)?;
                dv.extend(superseded);
                for b in batches {
                    writer.write(b).await.map_err(delta_err(&name))?;
                }
            }
            if dv.cardinality() == old_dv.cardinality() && !compact {
                // Nothing of this file was superseded.
                continue;
            }
            if rewrite {
                state.report.files_rewritten += 1;
                removes.push(f.remove);
            } else {
                state.report.files_with_deletion_vectors += 1;
                deleted.push((f, dv));
            }
        }
        state.report.deletion_vectors_read += dvs_read.load(std::sync::atomic::Ordering::Relaxed);
    }
    for l in learning {
        kept(l).await;
    }
    // New rows (every change, new keys, or new versions), built and written one batch at a time.
    while let Some(b) = changes.next_output(bs).map_err(change_err(&name))? {
        writer.write(b).await.map_err(delta_err(&name))?;
    }
    adds.extend(writer.finish().await.map_err(delta_err(&name))?);
    // New files hold the window's keys only, unless a copy-on-write rewrite wrote other rows
    // of a touched file into them.
    let new_files = if removes.is_empty() {
        adds.iter().map(|a| a.path.clone()).collect()
    } else {
        Vec::new()
    };
    state.report.bytes_written += adds.iter().map(|a| a.size.max(0) as u64).sum::<u64>();
    if !deleted.is_empty() {
        let dv = delta::deletion_vector_actions(table, &name, deleted).await?;
        state.report.bytes_written += dv.bytes;
        adds.extend(dv.adds);
        removes.extend(dv.removes);
        // Keyed by their ids: if this commit does not land, nothing asks for them.
        if let Some(cache) = &dv_cache {
            let url = table.table_url().to_string();
            for (path, id, vector) in dv.vectors {
                cache.put_deletion_vector(&url, &path, id, vector);
            }
        }
    }
    Ok(Written::Files {
        adds,
        removes,
        new_files,
    })
}

/// Waits for a key index being kept ([`Probed::batches`]). A build that failed only leaves its
/// file unindexed; a panic is a bug, resumed.
async fn kept(learning: tokio::task::JoinHandle<()>) {
    if let Err(e) = learning.await
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Merges a fetched table file at the given row positions (live rows, in file order) under
/// [`Keep::Changed`]: the positions superseded, and the merged batches (one per batch of
/// rows: as many rows as positions at most).
fn merge_rows(
    table: &str,
    path: &str,
    file: &delta::TableFile,
    rows: &[u64],
    batch_size: usize,
    changes: &mut dyn ModeWriter,
) -> Result<(Vec<u64>, Vec<arrow_array::RecordBatch>), SyncError> {
    let mut superseded = Vec::new();
    let mut out = Vec::new();
    let mut at = 0usize;
    for b in file.rows(rows, batch_size)? {
        let b = b?;
        let positions = rows
            .get(at..at + b.num_rows())
            .ok_or_else(|| SyncError::Table {
                table: table.to_owned(),
                message: format!("{path}: more rows read than asked"),
            })?;
        at += b.num_rows();
        let merged = changes
            .merge(&b, Keep::Changed)
            .map_err(change_err(table))?;
        superseded.extend(merged.superseded.iter().map(|&r| positions[r as usize]));
        out.push(merged.batch);
    }
    Ok((superseded, out))
}

/// The key columns an index found at `rows`, joined by the file's `columns` at those rows (the
/// file fetched with them): the probe columns of the rows, as a probe decodes them.
fn with_columns_at(
    table: &str,
    file: &delta::TableFile,
    keys: arrow_array::RecordBatch,
    rows: &[u64],
    columns: &[String],
    batch_size: usize,
) -> Result<arrow_array::RecordBatch, SyncError> {
    let read = file
        .rows_of(Some(columns), rows, batch_size)?
        .collect::<Result<Vec<_>, _>>()?;
    let arrow = |e| change_err(table)(ChangeError::Arrow(e));
    let extra = match read.first() {
        Some(first) => {
            deltalake_core::arrow::compute::concat_batches(&first.schema(), &read).map_err(arrow)?
        }
        None => return Ok(keys),
    };
    if extra.num_rows() != keys.num_rows() {
        return Err(SyncError::Table {
            table: table.to_owned(),
            message: format!(
                "{} rows read at {} positions of an indexed file",
                extra.num_rows(),
                keys.num_rows()
            ),
        });
    }
    let schema = arrow_schema::Schema::new(
        keys.schema()
            .fields()
            .iter()
            .chain(extra.schema().fields())
            .cloned()
            .collect::<Vec<_>>(),
    );
    let mut cols = keys.columns().to_vec();
    cols.extend(extra.columns().iter().cloned());
    arrow_array::RecordBatch::try_new(Arc::new(schema), cols).map_err(arrow)
}

/// A file's deletion vector: the one `cache` holds under the same id, else read (and kept;
/// counted in `read`).
pub(super) async fn deletion_vector(
    table: &deltalake_core::DeltaTable,
    f: &FileEntry,
    cache: Option<&KeyCache>,
    url: &str,
    read: &std::sync::atomic::AtomicU64,
) -> Result<DeletionVector, DeltaError> {
    let id = delta::deletion_vector_id(f);
    if let Some(dv) = cache
        .zip(id.as_deref())
        .and_then(|(c, id)| c.deletion_vector(url, &f.path, id))
    {
        return Ok(dv);
    }
    let dv = delta::read_deletion_vector(table, f).await?;
    if f.dv.is_some() {
        read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let Some((cache, id)) = cache.zip(id) else {
        return Ok(dv);
    };
    cache.put_deletion_vector(url, &f.path, id, dv.clone());
    Ok(dv)
}

/// The commit of a step: its files, the new schema when the layout grew, the progress and the
/// figures (naming files an operator skipped that this step passes over).
#[allow(clippy::too_many_arguments)]
fn plan_commit(
    state: &TableState,
    exists: bool,
    changes: &dyn ModeWriter,
    before: &Layout,
    resolved: Hlc,
    pending: Option<String>,
    slices: Option<Slices>,
    adds: Vec<Add>,
    removes: Vec<Remove>,
) -> Commit {
    let mut new_layout = changes.log().layout().clone();
    new_layout.primary_family = None;
    let counts = changes.counts();
    let skipped_files: Vec<String> = state
        .skipped
        .iter()
        .filter(|(ts, _)| *ts <= resolved && state.progress.applied.is_none_or(|a| *ts > a))
        .map(|(_, p)| p.clone())
        .collect();
    if !skipped_files.is_empty() {
        tracing::warn!(table = %state.name, files = ?skipped_files, "applied without files an operator skipped");
    }
    let figures = TableFigures {
        events: changes.log().len() as u64,
        inserted: counts.inserted,
        updated: counts.updated,
        deleted: counts.deleted,
        duplicates: changes.log().duplicates() as u64,
        files_added: adds.len() as u64,
        files_removed: removes.len() as u64,
        skipped_files,
        slice: slices.map(|s| Slices {
            done: s.done + 1,
            ..s
        }),
    };
    // A slice short of the last keeps the interval's start as the progress; the last one
    // moves it to the RESOLVED, as an unsliced step does.
    let progress = match slices {
        Some(s) if s.done + 1 < s.of => Progress {
            slices: Some(Slices {
                done: s.done + 1,
                ..s
            }),
            ..state.progress.clone()
        },
        _ => Progress {
            applied: Some(resolved),
            pending_from: pending,
            slices: None,
        },
    };
    let ends_slices = slices.is_some() && progress.slices.is_none();
    Commit {
        layout: (exists && !new_layout.same_delta_schema(before))
            .then_some((new_layout, state.mode)),
        adds,
        removes,
        progress,
        resolved,
        ends_slices,
        figures: Figures::Table(figures),
        mode: state.mode,
        kind: delta::CommitKind::Apply,
    }
}

/// After a commit landed: the table's new state and the run's figures.
fn account(
    state: &mut TableState,
    changes: &dyn ModeWriter,
    progress: Progress,
    resolved: Hlc,
    version: u64,
    started: Instant,
) {
    let counts = changes.counts();
    let log = changes.log();
    tracing::info!(
        table = %state.name,
        resolved = %resolved,
        version,
        events = log.len(),
        inserted = counts.inserted,
        updated = counts.updated,
        deleted = counts.deleted,
        "committed"
    );
    let mut layout = log.layout().clone();
    layout.primary_family = None;
    state.conflicts = 0;
    state.layout = Some(layout);
    state.progress = progress;
    let r = &mut state.report;
    r.commits += 1;
    r.events += log.len() as u64;
    r.inserted += counts.inserted;
    r.updated += counts.updated;
    r.deleted += counts.deleted;
    r.versions_ended_from_before += counts.ended_from_before;
    r.duplicates += log.duplicates() as u64;
    r.seconds += started.elapsed().as_secs_f64();
}
