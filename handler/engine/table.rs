//! A table's state during a run: opened (mode, layout, progress), and opened again when a
//! concurrent commit made the current step stale.

use crdb_delta_core::Hlc;
use crdb_delta_core::apply::{Layout, Mode};
use crdb_delta_core::plan::Progress;
use deltalake_core::DeltaTable;

use super::report::TableReport;
use super::{SyncError, SyncOptions};

use crate::config::Storage;
use crate::delta::{self, Conflict, Target};
use crate::storage::Location;

/// Refused commits in a row (another writer kept committing first) before a run gives up.
pub(super) const MAX_CONFLICTS: u32 = 5;

pub(super) struct TableState {
    pub(super) name: String,
    pub(super) target: Target,
    pub(super) mode: Mode,
    /// How superseded rows leave their files (update_delete, scd2).
    pub(super) storage: Storage,
    pub(super) table: Option<DeltaTable>,
    pub(super) layout: Option<Layout>,
    pub(super) progress: Progress,
    pub(super) report: TableReport,
    /// Commits refused in a row because another writer committed first.
    pub(super) conflicts: u32,
    /// Files of this table an operator chose to skip (`quarantine skip`), by name timestamp:
    /// the commit that passes over them names them.
    pub(super) skipped: Vec<(Hlc, String)>,
    /// Data files written by this run's earlier slices of the interval being sliced that hold
    /// those slices' keys only (no copy-on-write rewrite went into them): no later slice
    /// reads them.
    pub(super) slice_files: std::collections::HashSet<String>,
    /// The key slices of the sliced interval's files, for its later slices
    /// ([`super::read::SliceMemo`]).
    pub(super) slice_memo: super::read::SliceMemo,
    /// The sliced interval's files on local disk, for its later slices
    /// ([`super::slice_cache`]); made at its first pass in this run when `slice_cache_bytes`
    /// allows.
    pub(super) slice_cache: Option<super::slice_cache::SliceCache>,
    /// Rows the last step read past its RESOLVED, for the next step ([`super::carry`]).
    pub(super) carry: super::carry::Carry,
    /// The table's next step, being read while this one was written ([`super::ahead`]).
    pub(super) ahead: Option<super::ahead::Ahead>,
}

/// The mode `name` is applied in as configured: its table's, the run's, the config's, else
/// update_delete.
pub(super) fn configured_mode(name: &str, opts: &SyncOptions) -> Mode {
    let table = opts.config.table(name).mode;
    table
        .or(opts.mode)
        .or(opts.config.mode)
        .unwrap_or(Mode::UpdateDelete)
}

pub(super) async fn open_table(
    target: &Location,
    name: &str,
    opts: &SyncOptions,
) -> Result<TableState, SyncError> {
    let cfg = opts.config.table(name);
    let path = opts.config.target_path(name)?;
    let t = Target::new(target, &path)?;
    let mode = configured_mode(name, opts);
    let configured = cfg.storage.or(opts.config.storage);
    let (mut table, derived) = super::table_cache::open(opts.table_cache.as_ref(), &t).await?;
    let opened_at = table.as_ref().and_then(DeltaTable::version);
    // A new table gets deletion vectors (as Databricks makes them) unless configured otherwise;
    // an existing one keeps what its protocol says, and gains the feature only when configured.
    let storage = match (&table, configured) {
        (_, Some(s)) => s,
        (Some(tb), None) if !delta::has_deletion_vectors(tb) => Storage::CopyOnWrite,
        _ => Storage::DeletionVectors,
    };
    if let Some(tb) = table.take() {
        table = Some(
            if storage == Storage::DeletionVectors
                && mode != Mode::AppendOnly
                && !delta::has_deletion_vectors(&tb)
            {
                tracing::info!(table = name, target = %path, "enabling deletion vectors on the table (configured `storage: deletion_vectors`)");
                delta::enable_deletion_vectors(tb, &path).await?
            } else {
                tb
            },
        );
    }
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
            // Kept from the run before, and no commit since (enabling deletion vectors is one).
            let progress = match derived.progress {
                Some(p) if tb.version() == opened_at => p,
                _ => delta::progress(tb, &path).await?,
            };
            (Some(layout), progress)
        }
        None => (None, Progress::default()),
    };
    tracing::debug!(table = name, target = %path, %mode, applied = ?progress.applied, "table opened");
    Ok(TableState {
        name: name.to_owned(),
        target: t,
        mode,
        storage,
        table,
        layout,
        progress,
        report: TableReport::default(),
        conflicts: 0,
        skipped: Vec::new(),
        slice_files: Default::default(),
        slice_memo: Default::default(),
        slice_cache: None,
        carry: Default::default(),
        ahead: None,
    })
}

/// A step whose plan went stale (another writer committed something it depends on): reload
/// the table and let the step loop plan again from what the log says now. Losing to a run that
/// applied RESOLVEDs is progress; losing again and again to commits that apply nothing of ours
/// (another tool rewriting files) is not, and ends the run after [`MAX_CONFLICTS`].
pub(super) async fn replan(
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
    let done = |p: &Progress| (p.applied, p.slices.map(|s| s.done));
    if done(&p) <= done(&state.progress) {
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
    // Another run may have finished the sliced interval, and started slicing the next: files
    // this run wrote for its slices may then hold keys that interval changes.
    state.slice_files.clear();
    state.slice_memo = Default::default();
    state.slice_cache = None;
    state.carry = Default::default();
    state.ahead = None;
    state.layout = Some(delta::layout_of(&fresh, &state.target.path)?.0);
    state.progress = p;
    state.table = Some(fresh);
    Ok(())
}
