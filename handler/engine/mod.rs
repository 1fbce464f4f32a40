//! The engine: applies a changefeed root to Delta tables, one RESOLVED step at a time.
//!
//! Each step ([`plan::next_step`]) advances every table to the same RESOLVED: its files are
//! decoded file by file into a [`Window`], merged into changes, written as new Parquet files and
//! committed with the RESOLVED in the same Delta commit. When all tables of a step have
//! committed, one row per table goes into `_crdb_delta_resolved` (a Delta table next to them)
//! recording the Delta version of each table at that RESOLVED: a cross-table consistent
//! snapshot. A backlog larger than `max_window_bytes` becomes several steps.
//!
//! One file per stage, in the order a run meets them:
//!
//! | file | stage |
//! |---|---|
//! | [`run`] | the step loop: list, refuse, quarantine, plan a step, apply each table, record |
//! | [`listing`] | listing the root (bounded by the last record), fetching objects |
//! | [`schema_refresh`] | reading a table's schema again from CockroachDB after a schema change |
//! | [`table`] | opening a table (mode, layout, progress) and re-planning after a conflict |
//! | [`table_cache`] | Delta tables kept open between the handler's runs, brought up to date instead of opened |
//! | [`read`] | deriving an unconfigured key; decoding a table's files into a window |
//! | [`slice_cache`] | a sliced interval's files on local disk, so its later slices fetch none again |
//! | [`slice_spill`] | a sliced interval's rows cut by slice on local disk, so each later slice reads its own |
//! | [`apply`] | one table, one step: window → mode writer → files → commit |
//! | [`key_cache`] | table files' key columns kept sorted in memory between steps (looked up, not read) |
//! | [`probe_decode`] | a table file's key columns decoded on both cores, streamed to the merge in file order |
//! | [`warm`] | a table's key indexes learned before its next step (a new handler instance, between a table's first event and its RESOLVED) |
//! | [`slice_keys`] | the window's keys per key slice, for table files tagged with the slice they hold |
//! | [`ahead`] | a table's next step read while this one writes (one RESOLVED per step) |
//! | [`resolved_log`] | the multi-table `_crdb_delta_resolved` record |
//! | [`fan_out`] | the tables a RESOLVED covers, and its record, when each table is applied apart |
//! | [`report`] | what a run did, per table |
//! | [`faults`] | crash and pause points for tests |
//! | [`dry_run`] | `sync --dry-run`: the steps a run would make, nothing read or written |
//!
//! Decisions are made in `crdb_delta_core::plan` (which RESOLVED, which files, which table
//! files may hold a key) and `crdb_delta_core::apply` (what a mode writes); this folder does the
//! I/O around them.

pub mod ahead;
pub mod apply;
pub mod carry;
pub mod dry_run;
pub mod fan_out;
pub mod faults;
pub mod key_cache;
pub mod listing;
pub mod probe_decode;
pub mod read;
pub mod report;
pub mod resolved_log;
pub mod run;
pub mod schema_refresh;
pub mod slice_cache;
pub mod slice_keys;
pub mod slice_spill;
pub mod table;
pub mod table_cache;
pub mod warm;

pub use listing::list;
pub use report::{SyncReport, TableReport, peak_rss_mib};
pub use run::{sync, sync_listed};

use std::time::Instant;

use crdb_delta_core::Hlc;
use crdb_delta_core::apply::{ChangeError, Mode};
use crdb_delta_core::format::decode::{self, DecodeError};
use crdb_delta_core::format::keys::KeyError;
use crdb_delta_core::plan;

use crate::config::{Config, ConfigError};
use crate::delta::DeltaError;
use crate::quarantine::QuarantineError;
use crate::storage::StorageError;

/// Default input bytes per commit: peak memory is about 2–3× this plus one target file being
/// rewritten (docs/benchmarks.md), which fits a 2 GB Flex Consumption instance.
pub const DEFAULT_MAX_WINDOW_BYTES: u64 = 256 << 20;

/// Default Parquet file size written.
pub const DEFAULT_TARGET_FILE_SIZE: u64 = 128 << 20;
/// Deletion vectors: changed files below this are rewritten ([`SyncOptions::rewrite_below`]).
/// The small files of recent steps merge into one until it passes this size; a step rewrites
/// only the small files it probes, each below this size.
pub const DEFAULT_REWRITE_BELOW: u64 = 4 << 20;
/// Tables applied side by side by default: one per core of a Flex Consumption instance.
pub const DEFAULT_TABLES_AT_ONCE: usize = 2;

/// Where the per-RESOLVED table versions are recorded, below the target root.
pub const RESOLVED_LOG: &str = "_crdb_delta_resolved";

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
    /// A value that does not fit a column whose type the Delta table took from earlier values
    /// (no SQL type configured): the type cannot change in place, so the message says how.
    #[error(
        "{error}. Column `{column}` is `{delta_type}` in the Delta table, inferred from earlier \
         values (no SQL type configured), and Delta cannot change it to fit: configure \
         `tables.{table}.columns.{column}` with the column's SQL type (`crdb-delta schema` reads \
         them from CockroachDB), re-create the table, then `crdb-delta quarantine retry` the file"
    )]
    TypeLocked {
        table: String,
        column: String,
        delta_type: String,
        error: Box<DecodeError>,
    },
    #[error("worker task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Quarantine(#[from] QuarantineError),
    /// Reading a changed table's schema from CockroachDB failed: nothing was applied (new
    /// columns would otherwise get types guessed from their values, for good).
    #[error("reading the schema of changed tables from CockroachDB: {0}")]
    Crdb(#[from] crate::crdb::CrdbError),
    /// Control flow, never shown: a window decoded to more than the budget; the step is
    /// planned again with the corrected estimate, or its interval applied in (more) key
    /// slices (nothing of it was committed). `estimate`: what the whole read would decode.
    #[error("table `{table}`: the step decoded {decoded} bytes, over max_window_bytes")]
    WindowOverflow {
        table: String,
        decoded: u64,
        estimate: u64,
    },
}

impl SyncError {
    /// The changefeed file this error is about, when the file itself is at fault (it cannot be
    /// decoded or applied, now or on any retry): such a file is quarantined and stops only its
    /// table. Storage and other transient errors fail the run instead.
    pub fn poison_file(&self) -> Option<&str> {
        match self {
            Self::Decode(e) => Some(e.file()),
            Self::TypeLocked { error, .. } => Some(error.file()),
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

pub(super) fn delta_err(table: &str) -> impl Fn(deltalake_core::DeltaTableError) -> SyncError + '_ {
    let of = DeltaError::of(table);
    move |source| SyncError::Delta(of(source))
}

/// How to sync.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Mode for tables the config does not set (default update_delete).
    pub mode: Option<Mode>,
    pub config: Config,
    pub max_window_bytes: u64,
    /// Smallest key slice (decoded bytes) a RESOLVED interval larger than the window is cut
    /// into ([`plan::Slices::count`]).
    pub min_slice_bytes: u64,
    /// Local disk for a sliced interval's files, so its later slices read them from there
    /// instead of fetching them again ([`slice_cache`]); 0: none (the default).
    pub slice_cache_bytes: u64,
    /// With `slice_cache_bytes` 0: size the slice cache from the folder's file system when a
    /// sliced interval starts ([`slice_cache::auto_budget`]: half its free space on a disk,
    /// shared by the `tables_at_once` tables; none in memory). The handler's default; set by
    /// no config value (an explicit `slice_cache_bytes`, 0 included, turns it off).
    pub slice_cache_auto: bool,
    /// Where the slice cache's folders go; `None`: the system's temporary folder (`TMPDIR`).
    pub slice_cache_dir: Option<std::path::PathBuf>,
    /// Slice caches of intervals a run left part-way, for the next run (the handler's runs);
    /// `None`: each run starts its own.
    pub slice_caches: Option<slice_cache::SliceCaches>,
    /// Deletion vectors: once the table has 8 files smaller than this, a step rewrites the ones
    /// it changes (they merge into its new file rather than pile up).
    pub rewrite_below: u64,
    pub batch_size: usize,
    pub target_file_size: u64,
    /// Apply at most up to this RESOLVED.
    pub until: Option<Hlc>,
    /// One step (one commit per table) per RESOLVED, however small: a Delta version at every
    /// RESOLVED, for time travel to each.
    pub each_resolved: bool,
    /// Start no new step after this instant (a function invocation's time budget): committed
    /// steps stay, the rest is applied by the next run.
    pub deadline: Option<Instant>,
    /// A RESOLVED further ahead of the clock than this is refused ([`plan::refuse_future_resolved`]).
    pub max_resolved_ahead: std::time::Duration,
    /// Longest NDJSON line accepted (decompressed).
    pub max_line_bytes: usize,
    /// Tables of one step applied side by side (default 2: a Flex Consumption instance's
    /// cores). Their windows share the step's `max_window_bytes`.
    pub tables_at_once: usize,
    /// Rows past the last RESOLVED kept from one run to the next (the handler's runs).
    pub carry_cache: Option<carry::CarryCache>,
    /// Table files' key indexes kept from one step (and run) to the next, within
    /// `key_index_bytes`.
    pub key_cache: key_cache::KeyCache,
    /// Delta tables kept open from one run to the next (the handler's runs); `None`: each run
    /// opens them.
    pub table_cache: Option<table_cache::TableCache>,
    /// The config as given, before the target's schema.json went under it: a schema read again
    /// during the run ([`schema_refresh`]) is put under it the same way. `None`: `config` is
    /// taken as the explicit one.
    pub explicit: Option<Config>,
    /// CockroachDB, to read a table's schema again when its files show a new schema id
    /// (`CRDB_DELTA_CRDB_URL`, `sync --crdb-url`); `None`: new columns' types are inferred.
    pub crdb_url: Option<crate::crdb::CrdbUrl>,
    /// Told of each step and each file read (a progress display).
    pub progress: Option<ProgressSink>,
    /// Writes the multi-table `_crdb_delta_resolved` record after each step. Off for one table
    /// of a fanned-out RESOLVED ([`fan_out`]): its run sees one table, and the record of all of
    /// them is written by the apply that finds every table there.
    pub record: bool,
    /// Where a commit's due checkpoint is written: inline, or behind the invocation (`serve`).
    pub checkpoints: crate::checkpoint::Checkpoints,
}

/// What a run tells a progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncProgress {
    /// A step starts: the RESOLVED it applies up to and how many tables it covers.
    Step { resolved: Hlc, tables: usize },
    /// A changefeed file was fetched (stored bytes).
    Read { bytes: u64 },
}

/// A receiver of [`SyncProgress`].
#[derive(Clone)]
pub struct ProgressSink(pub std::sync::Arc<dyn Fn(&SyncProgress) + Send + Sync>);

impl ProgressSink {
    /// Tells the display.
    pub fn tell(&self, event: &SyncProgress) {
        (self.0)(event);
    }
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressSink")
    }
}

impl SyncOptions {
    /// Tells the progress display, if any.
    pub(crate) fn report_progress(&self, event: SyncProgress) {
        if let Some(p) = &self.progress {
            p.tell(&event);
        }
    }
}

impl SyncOptions {
    /// The options a config sets (its byte sizes, per-RESOLVED commits, tables at once, …),
    /// defaults for the rest: one reading of the config for `sync` (whose flags then override)
    /// and the handler.
    pub fn from_config(config: Config) -> Self {
        let key_cache = config
            .key_index_bytes
            .map_or_else(key_cache::KeyCache::default, key_cache::KeyCache::new);
        Self {
            key_cache,
            ..Self::default().with_config(config)
        }
    }

    /// These options with the config's options read again from `config` (e.g. one that now
    /// includes the target's schema.json); everything no config sets (mode, kept rows, the key
    /// cache, where checkpoints go) stays.
    pub fn reconfigured(&self, config: Config) -> Self {
        self.clone().with_config(config)
    }

    /// The options a config sets, from `config` (defaults where it is silent); the rest as
    /// they are. The one list of them: an option added elsewhere is kept by `reconfigured`.
    fn with_config(self, config: Config) -> Self {
        let d = Self::default();
        Self {
            max_window_bytes: config.max_window_bytes.unwrap_or(d.max_window_bytes),
            min_slice_bytes: config.min_slice_bytes.unwrap_or(d.min_slice_bytes),
            slice_cache_bytes: config.slice_cache_bytes.unwrap_or(d.slice_cache_bytes),
            slice_cache_auto: self.slice_cache_auto && config.slice_cache_bytes.is_none(),
            rewrite_below: config.rewrite_files_below.unwrap_or(d.rewrite_below),
            target_file_size: config.target_file_size.unwrap_or(d.target_file_size),
            each_resolved: config.commit_each_resolved.unwrap_or(d.each_resolved),
            max_resolved_ahead: config
                .max_resolved_ahead_seconds
                .map_or(d.max_resolved_ahead, std::time::Duration::from_secs),
            max_line_bytes: config.max_line_bytes.unwrap_or(d.max_line_bytes),
            tables_at_once: config.tables_at_once.unwrap_or(d.tables_at_once),
            config,
            ..self
        }
    }
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            mode: None,
            config: Config::default(),
            max_window_bytes: DEFAULT_MAX_WINDOW_BYTES,
            min_slice_bytes: plan::Slices::MIN_BYTES,
            slice_cache_bytes: 0,
            slice_cache_auto: false,
            slice_cache_dir: None,
            slice_caches: None,
            rewrite_below: DEFAULT_REWRITE_BELOW,
            batch_size: 8192,
            target_file_size: DEFAULT_TARGET_FILE_SIZE,
            until: None,
            each_resolved: false,
            deadline: None,
            max_resolved_ahead: std::time::Duration::from_secs(
                plan::DEFAULT_MAX_RESOLVED_AHEAD_SECONDS,
            ),
            max_line_bytes: decode::DEFAULT_MAX_LINE_BYTES,
            tables_at_once: DEFAULT_TABLES_AT_ONCE,
            carry_cache: None,
            key_cache: key_cache::KeyCache::default(),
            table_cache: None,
            explicit: None,
            crdb_url: None,
            progress: None,
            record: true,
            checkpoints: crate::checkpoint::Checkpoints::Inline,
        }
    }
}

/// A spawned task, aborted when dropped (a dropped read-ahead or fetch, a lost lease, Ctrl-C):
/// it stops like a crash would, which every stage is safe against, instead of going on
/// unsupervised. A panic in it is resumed where it is awaited.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = T;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<T> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| match r {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only `abort`, which runs when this handle is dropped, cancels the task.
            Err(e) => unreachable!("task cancelled while awaited: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reading the config again changes what it sets and keeps the rest, options added
    /// since included (the checkpoints' destination was lost once).
    #[test]
    fn reconfigured_reads_the_config_again_and_keeps_the_rest() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let opts = SyncOptions {
            mode: Some(Mode::Scd2),
            record: false,
            batch_size: 7,
            checkpoints: crate::checkpoint::Checkpoints::Behind(tx),
            ..SyncOptions::default()
        };
        let config: Config =
            serde_json::from_str(r#"{"max_window_bytes": "64MiB", "tables_at_once": 3}"#).unwrap();
        let o = opts.reconfigured(config);
        assert_eq!((o.max_window_bytes, o.tables_at_once), (64 << 20, 3));
        assert_eq!(
            (o.mode, o.record, o.batch_size),
            (Some(Mode::Scd2), false, 7)
        );
        assert!(matches!(
            o.checkpoints,
            crate::checkpoint::Checkpoints::Behind(_)
        ));
        // What the new config is silent on goes back to its default.
        let again = o.reconfigured(Config::default());
        assert_eq!(again.max_window_bytes, DEFAULT_MAX_WINDOW_BYTES);
    }

    #[test]
    fn options_come_from_the_config_defaults_fill_the_rest() {
        let config: Config = serde_json::from_str(
            r#"{"max_window_bytes": "64MiB", "min_slice_bytes": 4096, "target_file_size": "1MiB",
                "commit_each_resolved": true, "max_resolved_ahead_seconds": 5,
                "max_line_bytes": 1000, "tables_at_once": 3}"#,
        )
        .unwrap();
        let o = SyncOptions::from_config(config.clone());
        assert_eq!(
            (o.max_window_bytes, o.min_slice_bytes, o.target_file_size),
            (64 << 20, 4096, 1 << 20)
        );
        assert!(o.each_resolved);
        assert_eq!(o.max_resolved_ahead, std::time::Duration::from_secs(5));
        assert_eq!((o.max_line_bytes, o.tables_at_once), (1000, 3));
        assert_eq!(o.config.tables_at_once, config.tables_at_once);
        let d = SyncOptions::from_config(Config::default());
        let want = SyncOptions::default();
        assert_eq!(
            (d.max_window_bytes, d.tables_at_once, d.each_resolved),
            (want.max_window_bytes, want.tables_at_once, false)
        );
    }
}
