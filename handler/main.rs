//! The `crdb-delta` command line. `anyhow` lives here only, at the binary's edge.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use crdb_delta::config::Config;
use crdb_delta::dev::pump::{PumpOptions, pump};
use crdb_delta::dev::simulate::simulate_observed;
use crdb_delta::engine::{SyncOptions, sync};
use crdb_delta::inspect::inspect;
use crdb_delta::quarantine::{Action, Quarantine};
use crdb_delta::serve::{Settings, port_from_env, serve};
use crdb_delta::storage::Location;
use crdb_delta_core::Hlc;
use crdb_delta_core::apply::Mode;
use crdb_delta_core::format::names::{Compression, Format, PartitionFormat};
use crdb_delta_core::sim::{Envelope, SimOptions, TruthStates};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "crdb-delta",
    version,
    about = "CockroachDB changefeeds into Delta Lake tables"
)]
struct Cli {
    /// Log as JSON lines (for log collectors) instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    /// More log lines on stderr: -v our progress, -vv debug, -vvv everything (also
    /// CRDB_DELTA_LOG or RUST_LOG, e.g. `crdb_delta=debug`).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Errors only on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job on local folders: simulate a changefeed, then apply it to Delta tables.
    Demo {
        /// Working folder: new or empty, or one an earlier demo made (its changefeed/, truth/
        /// and delta/ are replaced; nothing else is touched).
        #[arg(long, default_value = "demo")]
        dir: String,
        #[arg(long, value_enum, default_value = "json")]
        format: FormatArg,
    },
    /// Write a deterministic simulated changefeed (and its ground truth).
    Simulate(Box<SimArgs>),
    /// Apply a changefeed root to Delta tables, up to its newest RESOLVED, exactly once.
    Sync(Box<SyncArgs>),
    /// The Azure Functions custom handler (started by the Functions host; settings from the
    /// environment: CRDB_DELTA_SOURCE, CRDB_DELTA_TARGET, …, see function_app/README.md).
    Serve {
        /// Port when FUNCTIONS_CUSTOMHANDLER_PORT (or FUNCTIONS_HTTPWORKER_PORT) is not set: the
        /// local loop. 7072, so `func start` (7071) can run beside it.
        #[arg(long, default_value_t = 7072)]
        port: u16,
    },
    /// Dev loop without Core Tools: list a container and post each new blob to a running
    /// handler as the Functions host forwards an Event Grid BlobCreated event.
    Pump(Box<PumpArgs>),
    /// After deployment: register the Delta target in Unity Catalog (storage credential,
    /// external location, one external table per Delta table); idempotent. Token from
    /// DATABRICKS_TOKEN (never printed).
    UnityCatalog(Box<UcArgs>),
    /// Table upkeep below a target root: compacts small files and files whose rows are mostly
    /// deleted (purging deletion vectors; rows in key order), checkpoints, cleans up expired
    /// log entries and VACUUMs unreferenced files older than the retention. Safe beside a
    /// running sync or handler: a compaction that loses a race is dropped.
    Maintain(Box<MaintainArgs>),
    /// Where each Delta table below a target root stands: the RESOLVED applied (as a wall time,
    /// its age and the exact HLC), the Delta version, the file it resumes from, and any
    /// quarantined file that stops it.
    Status {
        /// The Delta target root (as given to `sync --target` / CRDB_DELTA_TARGET).
        #[arg(long)]
        target: String,
        #[arg(long)]
        json: bool,
        /// Also draw the lag behind CockroachDB at each RESOLVED (from `_crdb_delta_resolved`)
        /// as an SVG line chart into this file.
        #[arg(long)]
        plot: Option<String>,
    },
    /// Files that stopped their table (they cannot be decoded or applied): list them, retry
    /// one (after replacing it or fixing the config), or skip one (the table goes on without
    /// it, and the commit that passes over it names it in its commitInfo).
    Quarantine {
        /// The Delta target root (as given to `sync --target` / CRDB_DELTA_TARGET); before or
        /// after the action.
        #[arg(long, global = true)]
        target: Option<String>,
        #[command(subcommand)]
        action: QuarantineCmd,
    },
    /// Read primary keys (in index order), exact SQL types and column families from CockroachDB
    /// and write the configuration `sync`/`serve` read: to a file (`--out`), or to
    /// `<target>/_crdb_delta/schema.json`, which sync and the handler read at every run. Password
    /// from the URL or PGPASSWORD (never printed).
    Schema(Box<SchemaArgs>),
    /// Create and manage the changefeed this tool consumes (`create`, `show`, `pause`,
    /// `resume`, `cancel`). Sink credentials from the environment (never printed).
    Changefeed {
        #[command(subcommand)]
        action: ChangefeedCmd,
    },
    /// Read a changefeed root and summarise it.
    Inspect {
        /// Changefeed root: a folder or an Azure URL (azure://container/prefix).
        #[arg(long)]
        source: String,
        /// Rows per decoded batch (a memory bound).
        #[arg(long, default_value_t = 8192, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        batch_size: usize,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Print a configuration for `sync --config` instead: each table's key and its columns'
        /// types as SQL types, as read or inferred (notes on the guesses go to stderr).
        #[arg(long, conflicts_with = "json")]
        propose_config: bool,
    },
}

#[derive(Subcommand)]
enum QuarantineCmd {
    /// Every quarantined file: table, file, reason, and whether it holds or is skipped.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Forget the quarantine of a file: the next run reads it again.
    Retry {
        /// The file as `list` shows it (relative to the changefeed root).
        file: String,
    },
    /// Apply its table without this file from now on (its rows are lost to the Delta table).
    Skip {
        /// The file as `list` shows it (relative to the changefeed root).
        file: String,
    },
}

/// `postgresql://user[:password]@host:26257/database?sslmode=verify-full&sslrootcert=ca.crt`
/// (`sslmode=disable` for a local test server). Password: in the URL or PGPASSWORD.
const CRDB_URL_HELP: &str = "CockroachDB SQL URL";

#[derive(Parser)]
struct SchemaArgs {
    #[arg(long, help = CRDB_URL_HELP)]
    crdb_url: String,
    /// Tables: `name`, `schema.name` or `database.schema.name`, comma-separated.
    #[arg(long, required_unless_present = "job", conflicts_with = "job")]
    tables: Option<String>,
    /// The tables of this changefeed job (SHOW CHANGEFEED JOB).
    #[arg(long)]
    job: Option<String>,
    /// Write the configuration to this file.
    #[arg(long, required_unless_present = "target", conflicts_with = "target")]
    out: Option<String>,
    /// Write it to `<target>/_crdb_delta/schema.json` (merged with the tables already there).
    #[arg(long)]
    target: Option<String>,
    /// Print the configuration written instead of the summary.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ChangefeedCmd {
    /// Build the CREATE CHANGEFEED this tool consumes (format, updated, resolved,
    /// split_column_families when needed, compression, initial_scan, the azure:// sink with
    /// credentials from AZURE_ACCOUNT_NAME + AZURE_ACCOUNT_KEY, or AZURE_CLIENT_ID +
    /// AZURE_CLIENT_SECRET + AZURE_TENANT_ID), run it and print (and record) the job id.
    Create(Box<CreateArgs>),
    /// The job's status and high-water mark beside the target's applied RESOLVED: the lag.
    Show {
        #[command(flatten)]
        job: JobArgs,
        #[arg(long)]
        json: bool,
    },
    /// PAUSE JOB.
    Pause(JobArgs),
    /// RESUME JOB.
    Resume(JobArgs),
    /// CANCEL JOB.
    Cancel(JobArgs),
}

#[derive(clap::Args)]
struct JobArgs {
    #[arg(long, help = CRDB_URL_HELP)]
    crdb_url: String,
    /// The job id (default: the one `create --target` recorded in the target).
    #[arg(long)]
    job: Option<String>,
    /// The Delta target root.
    #[arg(long)]
    target: Option<String>,
}

#[derive(Parser)]
struct CreateArgs {
    #[arg(long, help = CRDB_URL_HELP)]
    crdb_url: String,
    /// Tables to watch: `name`, `schema.name` or `database.schema.name`, comma-separated.
    #[arg(long)]
    tables: String,
    /// Where the changefeed writes (what `sync --source` reads): azure://<container>/<path>,
    /// abfss://<container>@<account>.dfs.core.windows.net/<path> or https://….
    #[arg(long)]
    sink: String,
    /// How CockroachDB authenticates to the sink (default: key if AZURE_ACCOUNT_KEY is set,
    /// else client); implicit = the nodes' own identity (self-hosted clusters).
    #[arg(long, value_parser = ["key", "client", "implicit"])]
    sink_auth: Option<String>,
    #[arg(long, default_value = "json", value_parser = ["json", "parquet"])]
    format: String,
    /// The `resolved` interval.
    #[arg(long, default_value = "10s")]
    resolved: String,
    /// JSON files: gzip (default), zstd or none.
    #[arg(long, value_parser = ["gzip", "zstd", "none"])]
    compression: Option<String>,
    /// Start from now, without an initial scan of the existing rows.
    #[arg(long)]
    no_initial_scan: bool,
    /// `WITH diff`: each change carries the row as it was, so scd2 tables end versions without
    /// reading them from the Delta table (README "scd2 at scale"); the files grow by those rows.
    #[arg(long)]
    diff: bool,
    /// Record the job id in `<target>/_crdb_delta/changefeed.json`.
    #[arg(long)]
    target: Option<String>,
    /// Print the statement (credentials redacted) and create nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Parser)]
struct UcArgs {
    /// https://adb-<id>.<n>.azuredatabricks.net
    #[arg(long)]
    workspace_url: String,
    #[arg(long)]
    catalog: String,
    #[arg(long)]
    schema: String,
    /// The Delta target root: abfss://<container>@<account>.dfs.core.windows.net/<root>.
    #[arg(long)]
    target: String,
    /// Resource id of the Databricks access connector (deployment output accessConnectorId).
    #[arg(long)]
    access_connector_id: String,
    /// Tables to register (`name` or `name=path/below/target`); default: every folder below
    /// the target with a `_delta_log` (needs read access to the target with AZURE_* / az login).
    #[arg(long)]
    tables: Option<String>,
    /// SQL warehouse that runs CREATE TABLE.
    #[arg(long)]
    warehouse_id: Option<String>,
    #[arg(long, default_value = "crdb_delta")]
    credential_name: String,
    #[arg(long, default_value = "crdb_delta_target")]
    location_name: String,
    /// Print the requests as JSON and send nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Parser)]
struct PumpArgs {
    /// What to list: `azure://container[/prefix]` (the whole container is what a storage
    /// subscription sees).
    #[arg(long)]
    source: String,
    /// The running handler, `http://127.0.0.1:<port>`.
    #[arg(long)]
    handler: String,
    /// Fan-out: where the answers' `tables` messages go, in turn (as instances taking them
    /// from the queue); repeat for several. Default: `--handler`.
    #[arg(long = "apply-handler")]
    apply_handlers: Vec<String>,
    /// The Event Grid route (BlobCreated) or the queue route (BlobQueue).
    #[arg(long, default_value = "BlobCreated", value_parser = ["BlobCreated", "BlobQueue"])]
    function: String,
    /// One pass, then exit (non-zero if a post failed).
    #[arg(long)]
    once: bool,
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Post every event twice.
    #[arg(long)]
    duplicate: bool,
    /// Post each pass in reverse name order.
    #[arg(long)]
    reverse: bool,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Account named in the events (default: devstoreaccount1, Azurite's).
    #[arg(long, default_value = "devstoreaccount1")]
    account: String,
    /// Blob endpoint named in the events' url (default: AZURITE_BLOB_STORAGE_URL/<account>).
    #[arg(long)]
    endpoint: Option<String>,
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
}

#[derive(Parser)]
struct SyncArgs {
    /// Changefeed root: a folder or an Azure URL (azure://container/prefix).
    #[arg(long)]
    source: String,
    /// Target root: a folder or an Azure URL; each table goes to `<target>/<table>`.
    #[arg(long)]
    target: String,
    /// update_delete, append_only or scd2 (default update_delete; the config may set it per table).
    #[arg(long)]
    mode: Option<Mode>,
    /// JSON configuration (tables' targets, keys, SQL types, modes).
    #[arg(long)]
    config: Option<String>,
    /// CockroachDB SQL URL: a table whose files show a new schema id (a schema change) gets
    /// its keys and exact types read again before it is applied, into the target's
    /// `_crdb_delta/schema.json`. Password: in the URL or PGPASSWORD.
    #[arg(long, env = "CRDB_DELTA_CRDB_URL", hide_env_values = true)]
    crdb_url: Option<String>,
    /// How update_delete and scd2 supersede rows: deletion_vectors (default for new tables) or
    /// copy_on_write (rewrites files; for readers without deletion-vector support). Overrides
    /// the config's `storage`.
    #[arg(long)]
    storage: Option<crdb_delta::config::Storage>,
    /// Take keys and exact SQL types from a simulator manifest (`<truth>/manifest.json`).
    #[arg(long)]
    manifest: Option<String>,
    /// Input bytes per commit (e.g. 256MiB): a larger backlog is applied in several commits.
    #[arg(long, value_parser = crdb_delta::byte_size::parse)]
    max_window_bytes: Option<u64>,
    /// Smallest key slice, in decoded bytes, that a RESOLVED interval larger than the window
    /// (an initial scan) is cut into; default 1MiB
    #[arg(long, value_parser = crdb_delta::byte_size::parse)]
    min_slice_bytes: Option<u64>,
    /// Local disk (in TMPDIR) for the files of an interval applied in key slices (an initial
    /// scan larger than the window): later slices read them from there instead of fetching
    /// them again; default 0, none
    #[arg(long, value_parser = crdb_delta::byte_size::parse)]
    slice_cache_bytes: Option<u64>,
    /// With deletion vectors, once the table has 8 files smaller than this, a step rewrites the
    /// ones it changes, so small files do not pile up between compactions; default 4MiB, 0 never
    #[arg(long, value_parser = crdb_delta::byte_size::parse)]
    rewrite_files_below: Option<u64>,
    /// Memory for table files' key indexes kept between steps (single-column integer or text
    /// keys looked up instead of read); default 512MiB, 0 none
    #[arg(long, value_parser = crdb_delta::byte_size::parse)]
    key_index_bytes: Option<u64>,
    /// Rows per decoded batch (a memory bound).
    #[arg(long, default_value_t = 8192, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    batch_size: usize,
    /// Target Parquet file size written (bytes, or e.g. 128MiB).
    #[arg(long, value_parser = crdb_delta::byte_size::parse)]
    target_file_size: Option<u64>,
    /// Apply at most up to this RESOLVED (`<wall>.<logical>`).
    #[arg(long)]
    until: Option<String>,
    /// One commit per table at every RESOLVED, however small (a Delta version per RESOLVED),
    /// instead of one per --max-window-bytes of backlog.
    #[arg(long)]
    commit_each_resolved: bool,
    /// Tables of one step applied side by side (default 2).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    tables_at_once: Option<usize>,
    /// Refuse RESOLVED objects further than this ahead of the clock (a stray RESOLVED would
    /// make every later event look applied). Default 600.
    #[arg(long)]
    max_resolved_ahead_seconds: Option<u64>,
    /// Start no new RESOLVED step after this many seconds (the rest waits for the next run).
    #[arg(long)]
    max_seconds: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Print the steps a run would apply (per RESOLVED: tables, files, bytes, key slices)
    /// from the listing and the tables' progress; read no data file, write nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args)]
struct MaintainArgs {
    /// The Delta target root (as given to `sync --target` / CRDB_DELTA_TARGET).
    #[arg(long)]
    target: String,
    /// Only these tables (Delta paths below the target); default every table.
    #[arg(long = "table")]
    tables: Vec<String>,
    /// VACUUM keeps files unreferenced for less than this (default 168 = Delta's 7 days).
    #[arg(long, default_value_t = crdb_delta::maintain::DEFAULT_RETAIN_HOURS)]
    retain_hours: u64,
    /// Log entries older than this many hours are cleaned up (default: the table's
    /// `delta.logRetentionDuration`, 30 days unless set). Time travel reaches no further back.
    #[arg(long)]
    log_retention_hours: Option<u64>,
    /// Target Parquet file size of compacted files (bytes, or e.g. 128MiB).
    #[arg(long, value_parser = crdb_delta::byte_size::parse)]
    target_file_size: Option<u64>,
    #[arg(long)]
    no_compact: bool,
    #[arg(long)]
    no_vacuum: bool,
    #[arg(long)]
    json: bool,
}

impl SyncArgs {
    /// The explicit config: the config file, `--storage` and `--manifest`; checked before
    /// anything (the target folder included) is created.
    fn explicit_config(&self) -> Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(s) = self.storage {
            config.storage = Some(s);
        }
        if let Some(m) = &self.manifest {
            let text = std::fs::read_to_string(m).with_context(|| format!("reading {m}"))?;
            let from = Config::from_manifest(
                &serde_json::from_str(&text).with_context(|| format!("reading {m}"))?,
            );
            for (t, c) in from.tables {
                config.tables.entry(t).or_insert(c);
            }
        }
        Ok(config)
    }

    /// The options of a run: the explicit config over the target's schema.json, then the
    /// flags over both.
    async fn options(&self, explicit: Config, target: Option<&Location>) -> Result<SyncOptions> {
        let config = match target {
            // `crdb-delta schema --target` output, under the explicit config (config.rs).
            Some(t) => crdb_delta::config::with_target_schema(&explicit, t).await?,
            None => explicit.clone(),
        };
        // The config's options, then the flags over them.
        let mut opts = SyncOptions::from_config(config);
        opts.explicit = Some(explicit);
        opts.crdb_url = self
            .crdb_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .map(crdb_delta::crdb::CrdbUrl::new);
        opts.mode = self.mode;
        if let Some(v) = self.max_window_bytes {
            opts.max_window_bytes = v;
        }
        if let Some(v) = self.min_slice_bytes {
            opts.min_slice_bytes = v;
        }
        if let Some(v) = self.slice_cache_bytes {
            opts.slice_cache_bytes = v;
        }
        if let Some(v) = self.rewrite_files_below {
            opts.rewrite_below = v;
        }
        if let Some(v) = self.key_index_bytes {
            opts.key_cache = crdb_delta::engine::key_cache::KeyCache::new(v);
        }
        if let Some(v) = self.target_file_size {
            opts.target_file_size = v;
        }
        if let Some(s) = self.max_resolved_ahead_seconds {
            opts.max_resolved_ahead = std::time::Duration::from_secs(s);
        }
        if let Some(n) = self.tables_at_once {
            opts.tables_at_once = n;
        }
        opts.each_resolved |= self.commit_each_resolved;
        opts.batch_size = self.batch_size;
        opts.until = self.until.as_deref().map(Hlc::parse_decimal).transpose()?;
        opts.deadline = self
            .max_seconds
            .map(|s| std::time::Instant::now() + std::time::Duration::from_secs(s));
        Ok(opts)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Json,
    Parquet,
}

#[derive(Parser)]
struct SimArgs {
    /// Changefeed root to write: a folder or an Azure URL.
    #[arg(long)]
    out: String,
    /// Where the ground truth goes (default: `<out>.truth` for folders, `sim-truth` otherwise).
    #[arg(long)]
    truth: Option<String>,
    #[arg(long, value_enum, default_value = "json")]
    format: FormatArg,
    /// JSON: the whole file; Parquet: the column codec.
    #[arg(long, default_value = "none", value_parser = ["none", "gzip", "zstd"])]
    compression: String,
    /// Date folders as CockroachDB's `partition_format` writes them.
    #[arg(long, default_value = "daily", value_parser = ["daily", "hourly", "flat"])]
    partition: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Comma-separated: usertable, orders, kitchen_sink.
    #[arg(
        long,
        default_value = "usertable,orders,kitchen_sink",
        value_delimiter = ','
    )]
    tables: Vec<String>,
    #[arg(long, default_value_t = 10)]
    ycsb_fields: usize,
    /// Key `usertable` by random UUIDs (as `gen_random_uuid()`) instead of sequential integers.
    #[arg(long)]
    uuid_keys: bool,
    /// Key `usertable` by `(crdb_region, ycsb_key)`, as a REGIONAL BY ROW table.
    #[arg(long)]
    region_keys: bool,
    #[arg(long, default_value_t = 100)]
    initial_rows: usize,
    #[arg(long, default_value_t = 6)]
    windows: usize,
    #[arg(long, default_value_t = 200)]
    events_per_window: usize,
    /// Fractions of inserts, updates, deletes.
    #[arg(
        long,
        default_value = "0.3,0.55,0.15",
        value_delimiter = ',',
        num_args = 3
    )]
    mix: Vec<f64>,
    /// Wall time per window (between flushes), milliseconds.
    #[arg(long, default_value_t = 10_000)]
    window_ms: u64,
    /// A RESOLVED file every N windows.
    #[arg(long, default_value_t = 1)]
    resolved_every: usize,
    #[arg(long, default_value_t = 2)]
    aggregators: usize,
    /// `file_size` in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    file_size: usize,
    #[arg(long, default_value_t = 0.02)]
    duplicate_rate: f64,
    /// Window after which the job restarts (0: never).
    #[arg(long, default_value_t = 3)]
    restart_at: usize,
    /// Window at which usertable gets ADD COLUMN with backfill (0: never).
    #[arg(long, default_value_t = 4)]
    schema_change_at: usize,
    /// Window at which usertable drops `field1` with a backfill (0: never).
    #[arg(long, default_value_t = 0)]
    drop_column_at: usize,
    /// Fraction of the next window's events written before this window's RESOLVED.
    #[arg(long, default_value_t = 0.1)]
    straddle: f64,
    #[arg(long)]
    mvcc_timestamp: bool,
    #[arg(long)]
    diff: bool,
    #[arg(long)]
    bare: bool,
    /// Which per-RESOLVED table states the ground truth keeps.
    #[arg(long, default_value = "all", value_parser = ["all", "last", "none"])]
    truth_states: String,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

impl SimArgs {
    fn options(&self) -> Result<SimOptions> {
        let d = SimOptions::default();
        Ok(SimOptions {
            seed: self.seed,
            format: self.format.into(),
            compression: match self.compression.as_str() {
                "none" => Compression::None,
                "gzip" => Compression::Gzip,
                "zstd" => Compression::Zstd,
                other => anyhow::bail!("--compression {other}: expected none, gzip or zstd"),
            },
            partition: self
                .partition
                .parse::<PartitionFormat>()
                .map_err(anyhow::Error::new)?,
            envelope: if self.bare {
                Envelope::Bare
            } else {
                Envelope::Wrapped
            },
            diff: self.diff,
            mvcc_timestamp: self.mvcc_timestamp,
            tables: self.tables.clone(),
            ycsb_fields: self.ycsb_fields,
            uuid_keys: self.uuid_keys,
            region_keys: self.region_keys,
            initial_rows: self.initial_rows,
            windows: self.windows,
            events_per_window: self.events_per_window,
            mix: [self.mix[0], self.mix[1], self.mix[2]],
            window_ms: self.window_ms,
            resolved_every: self.resolved_every,
            aggregators: self.aggregators,
            file_size: self.file_size,
            duplicate_rate: self.duplicate_rate,
            reinsert_rate: d.reinsert_rate,
            restart_at: (self.restart_at > 0).then_some(self.restart_at),
            schema_change_at: (self.schema_change_at > 0).then_some(self.schema_change_at),
            drop_column_at: (self.drop_column_at > 0).then_some(self.drop_column_at),
            straddle: self.straddle,
            truth_states: match self.truth_states.as_str() {
                "all" => TruthStates::All,
                "last" => TruthStates::Last,
                "none" => TruthStates::None,
                other => anyhow::bail!("--truth-states {other}: expected all, last or none"),
            },
            start: d.start,
        })
    }
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Json => Format::Json,
            FormatArg::Parquet => Format::Parquet,
        }
    }
}

async fn run_changefeed(action: ChangefeedCmd) -> Result<String> {
    use crdb_delta::crdb::commands::{
        CreateOptions, changefeed_control, changefeed_create, changefeed_show,
    };
    let control = |verb: &'static str, j: JobArgs| async move {
        changefeed_control(&j.crdb_url, verb, j.job.as_deref(), j.target.as_deref()).await
    };
    Ok(match action {
        ChangefeedCmd::Create(a) => {
            changefeed_create(&CreateOptions {
                url: a.crdb_url,
                tables: a.tables,
                sink: a.sink,
                sink_auth: a.sink_auth,
                format: a.format,
                resolved: a.resolved,
                compression: a.compression,
                initial_scan: !a.no_initial_scan,
                diff: a.diff,
                target: a.target,
                dry_run: a.dry_run,
            })
            .await?
        }
        ChangefeedCmd::Show { job, json } => {
            changefeed_show(
                &job.crdb_url,
                job.job.as_deref(),
                job.target.as_deref(),
                json,
            )
            .await?
        }
        ChangefeedCmd::Pause(j) => control("PAUSE", j).await?,
        ChangefeedCmd::Resume(j) => control("RESUME", j).await?,
        ChangefeedCmd::Cancel(j) => control("CANCEL", j).await?,
    })
}

async fn run_simulate(args: &SimArgs, show: bool) -> Result<crdb_delta_core::sim::SimSummary> {
    let opts = args.options()?;
    // One after the initial scan, then one every `resolved_every` windows and after the last.
    let resolved_files = opts.windows.div_ceil(opts.resolved_every.max(1)) as u64 + 1;
    let out = Location::open(&args.out)?;
    // The local loop: on the emulator the container is made; in Azure its absence is named.
    out.check_container(true).await?;
    let truth = match &args.truth {
        Some(t) => t.clone(),
        None if !args.out.contains("://") => format!("{}.truth", args.out.trim_end_matches('/')),
        None => "sim-truth".into(),
    };
    let truth = Location::open(&truth)?;
    truth.check_container(true).await?;
    let bar = crdb_delta::progress::simulate_bar(resolved_files, show);
    let mut written = 0u64;
    let summary = simulate_observed(opts, &out, &truth, &mut |dest, path, len| {
        if dest == crdb_delta_core::sim::Destination::Changefeed {
            written += len as u64;
            bar.set_message(format!("{:.1} MB", written as f64 / 1e6));
            if path.ends_with(".RESOLVED") {
                bar.inc(1);
            }
        }
    })
    .await
    .with_context(|| format!("simulating into {}", args.out))?;
    bar.finish_and_clear();
    tracing::info!(out = %args.out, truth = %truth.display, data_files = summary.data_files, messages = summary.messages, bytes = summary.bytes, "simulated");
    Ok(summary)
}

/// Refuses a target that would mix with the source or with a table that is not ours, before
/// anything is written: a folder inside the source (our files would look like stray objects
/// there), or a root that is itself a Delta table (tables go *below* the root).
/// `sync --dry-run` output: one line per step (the first 50), or the plan as JSON.
fn print_plan(steps: &[crdb_delta::engine::dry_run::PlannedStep], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(steps)?);
        return Ok(());
    }
    if steps.is_empty() {
        println!("nothing to apply: every table is at the newest RESOLVED (or none is listed yet)");
    }
    const SHOWN: usize = 50;
    for s in steps.iter().take(SHOWN) {
        let tables: Vec<String> = s
            .tables
            .iter()
            .map(|(name, t)| {
                let mut line = format!(
                    "{name}{} {} file(s) {:.1} MB",
                    if t.new { " (new)" } else { "" },
                    t.files,
                    t.stored_bytes as f64 / 1e6
                );
                if let Some(n) = t.slices {
                    line.push_str(&format!(" in {n} key slices"));
                }
                line
            })
            .collect();
        println!(
            "RESOLVED {} ({}): {}",
            s.resolved,
            s.resolved_at,
            tables.join(", ")
        );
    }
    if steps.len() > SHOWN {
        println!("… and {} more step(s)", steps.len() - SHOWN);
    }
    println!(
        "{} step(s); nothing was read or written (--dry-run)",
        steps.len()
    );
    Ok(())
}

fn check_target(source: &Location, target: &str) -> Result<()> {
    if !target.contains("://") {
        let t = std::path::Path::new(target);
        if t.join("_delta_log").is_dir() {
            anyhow::bail!(
                "--target {target} is itself a Delta table; give the folder the tables go below \
                 (each table becomes <target>/<table>)"
            );
        }
        let abs = std::path::absolute(t).with_context(|| format!("resolving {target}"))?;
        if source.url.scheme() == "file" {
            let src = source.url.to_file_path().unwrap_or_default();
            if abs.starts_with(&src) {
                anyhow::bail!(
                    "--target {target} is inside the source {}: keep the Delta tables out of the changefeed root",
                    source.display
                );
            }
        }
    } else if let Ok(t) = Location::open(target)
        && t.is_within(source)
    {
        anyhow::bail!(
            "--target {} is inside the source {}: keep the Delta tables out of the changefeed root",
            crdb_delta::storage::redact(target),
            source.display
        );
    }
    Ok(())
}

/// Marks a folder `demo` made, so a later `demo` may clear what it wrote there — and nothing
/// else: a non-empty folder without it is refused, never emptied.
const DEMO_MARKER: &str = ".crdb-delta-demo";
/// What `demo` writes below its folder (and removes again on the next run).
const DEMO_PARTS: [&str; 3] = ["changefeed", "truth", "delta"];

fn prepare_demo_dir(dir: &str) -> Result<()> {
    let root = std::path::Path::new(dir);
    let marker = root.join(DEMO_MARKER);
    let empty = match std::fs::read_dir(root) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(e).with_context(|| format!("reading {dir}")),
    };
    if !empty && !marker.exists() {
        anyhow::bail!(
            "--dir {dir}: the folder is not empty and was not made by `crdb-delta demo`; \
             choose a new or empty folder (demo only ever deletes what it wrote)"
        );
    }
    for part in DEMO_PARTS {
        match std::fs::remove_dir_all(root.join(part)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("clearing {dir}/{part}")),
        }
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating {dir}"))?;
    std::fs::write(
        &marker,
        "made by `crdb-delta demo`; a later demo may clear changefeed/, truth/ and delta/ here\n",
    )
    .with_context(|| format!("writing {}", marker.display()))?;
    Ok(())
}

/// glibc gives each thread its own malloc arena; with tokio's workers and the blocking pool, a
/// sync step's freed buffers stay spread over many arenas and peak RSS was ~1.6× what the step
/// holds (docs/benchmarks.md). Two arenas keep it close, at the same speed.
/// Threads then share an arena, and one that finds it locked waits in the kernel: hot paths
/// allocate per batch, not per row (the NDJSON decoder's `Store`, the merge's `Rows`, the
/// window's `KeyTexts`; per-row `Vec`s were 0.6–1.5 s of system time in a 2.5 s
/// per-RESOLVED run).
///
/// glibc also maps every block above its mmap threshold (128 KiB, raised only as such blocks
/// are freed) afresh and returns it at free, so each step's column buffers, Parquet pages and
/// output buffers were faulted in page by page again (8% of a per-RESOLVED profile's
/// samples). Blocks up to 64 MiB now come from the arenas and free memory at their top is
/// kept up to 128 MiB: page faults halved, wall 0.86–0.90× per RESOLVED (Parquet) and
/// 0.90–0.92× on an initial load, peak RSS up to 15% higher (docs/benchmarks.md). An
/// explicit `MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` still
/// wins. The deployed build (`scripts/package`, glibc 2.28) gets the same; the static musl
/// build (`--libc musl`) uses jemalloc instead: `ALLOCATOR`.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (var, param, value) in [
        ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 2),
        ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 64 << 20),
        ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, 128 << 20),
    ] {
        if std::env::var_os(var).is_none() {
            // SAFETY: mallopt only adjusts allocator parameters; called before any other
            // thread runs. A value glibc refuses leaves its default (mallopt returns 0).
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}

/// The static build (`scripts/package --libc musl`): musl's malloc hands freed memory back to
/// the kernel at once and faults it in again on the next allocation: 7–12× glibc's page
/// faults, half its speed.
/// jemalloc keeps freed pages for reuse and purges them from a background thread after 100 ms
/// (at 1 s peak RSS was 1.3× glibc's, at 0 it was as slow as musl); two arenas, as
/// `tune_malloc` gives glibc. mimalloc peaked at 1.9–3.7× glibc's RSS
/// (docs/benchmarks.md, `scripts/bench_build.py`).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation (`_RJEM_MALLOC_CONF` overrides them).
#[cfg(target_env = "musl")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: &u8 =
    &b"narenas:2,background_thread:true,dirty_decay_ms:100,muzzy_decay_ms:0\0"[0];

fn main() -> std::process::ExitCode {
    tune_malloc();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run()));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // A user's mistake or a failed run: the message chain, no backtrace (panics, which
            // are bugs, still print theirs with RUST_BACKTRACE).
            eprintln!("{}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `error: <top>` plus each cause whose text the lines before do not already contain
/// (thiserror messages often embed their source).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = format!("error: {e}");
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str("\n  caused by: ");
            out.push_str(&text);
        }
    }
    out
}

/// The stderr log filter: CRDB_DELTA_LOG, else RUST_LOG, else by command and -q/-v. The CLI
/// is quiet by default (its report goes to stdout); the handler logs each invocation.
fn log_filter(cli: &Cli) -> EnvFilter {
    for var in ["CRDB_DELTA_LOG", "RUST_LOG"] {
        if let Ok(f) = EnvFilter::try_from_env(var) {
            return f;
        }
    }
    let ours = "crdb_delta={0},crdb_delta_core={0}";
    let level = match (cli.quiet, cli.verbose, &cli.command) {
        (true, _, _) => "error".to_owned(),
        (false, 0, Command::Serve { .. } | Command::Pump(_)) => {
            "info,buoyant_kernel=warn,deltalake_core=error".to_owned()
        }
        // delta-rs warns when a commit loses a race we then resolve ourselves (delta.rs).
        (false, 0, _) => "warn,deltalake_core=error".to_owned(),
        (false, 1, _) => format!("warn,{}", ours.replace("{0}", "info")),
        (false, 2, _) => format!("info,buoyant_kernel=warn,{}", ours.replace("{0}", "debug")),
        (false, _, _) => "debug".to_owned(),
    };
    EnvFilter::new(level)
}

async fn run() -> Result<()> {
    let cli = Cli::parse();
    use std::io::IsTerminal as _;
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(log_filter(&cli))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if cli.log_json {
        subscriber.json().init();
    } else {
        subscriber.init();
    }
    // Ctrl-C: say what state things are in instead of vanishing (`serve` shuts down gracefully
    // on its own). Stopping anywhere is safe: every commit is whole, a run goes on from the last.
    if !matches!(cli.command, Command::Serve { .. }) {
        tokio::spawn(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "interrupted: what was written so far stays, and every Delta commit is whole \
                     (none is half made); run the command again to go on from there"
                );
                std::process::exit(130);
            }
        });
    }
    let quiet = cli.quiet;
    match cli.command {
        Command::Simulate(args) => {
            let show = crdb_delta::progress::enabled(args.json, quiet);
            let summary = run_simulate(&args, show).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!(
                    "wrote {} data files and {} RESOLVED files ({} messages, {:.1} MB) to {}",
                    summary.data_files,
                    summary.resolved_files,
                    summary.messages,
                    summary.bytes as f64 / 1e6,
                    args.out
                );
            }
        }
        Command::Sync(args) => {
            let explicit = args.explicit_config()?;
            // `/Volumes/<catalog>/<schema>/<volume>/…`: the volume's storage location.
            let source = crdb_delta::unity_catalog::resolve_source(&args.source).await?;
            let source = Location::open_existing(&source)?;
            source.check_container(false).await?;
            check_target(&source, &args.target)?;
            if args.dry_run {
                // A local target that does not exist stays so: every table is new.
                let target = match args.target.contains("://")
                    || std::path::Path::new(&args.target).is_dir()
                {
                    true => Some(Location::open(&args.target)?),
                    false => None,
                };
                let opts = args.options(explicit, target.as_ref()).await?;
                let steps =
                    crdb_delta::engine::dry_run::plan_run(&source, target.as_ref(), &opts).await?;
                print_plan(&steps, args.json)?;
                return Ok(());
            }
            let target = Location::open(&args.target)?;
            target.check_container(true).await?;
            let mut opts = args.options(explicit, Some(&target)).await?;
            let (bar, sink) =
                crdb_delta::progress::sync_spinner(crdb_delta::progress::enabled(args.json, quiet));
            opts.progress = sink;
            let report = sync(&source, &target, &opts).await;
            bar.finish_and_clear();
            let report =
                report.with_context(|| format!("syncing {} into {}", args.source, args.target))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            let held: Vec<String> = report
                .quarantined
                .iter()
                .filter(|q| q.action == Action::Hold)
                .map(|q| format!("table `{}` stopped at {}: {}", q.table, q.file, q.reason))
                .collect();
            if !held.is_empty() {
                anyhow::bail!(
                    "{}\nthe other tables were applied; see `crdb-delta quarantine list --target {}`, then `retry` (after fixing) or `skip` the file",
                    held.join("\n"),
                    crdb_delta::storage::redact(&args.target)
                );
            }
        }
        Command::Maintain(args) => {
            let loc = Location::open_existing(&args.target)?;
            let mut opts = crdb_delta::maintain::MaintainOptions {
                retain: std::time::Duration::from_secs(args.retain_hours.saturating_mul(3600)),
                log_retention: args
                    .log_retention_hours
                    .map(|h| std::time::Duration::from_secs(h.saturating_mul(3600))),
                compact: !args.no_compact,
                vacuum: !args.no_vacuum,
                ..Default::default()
            };
            if let Some(s) = args.target_file_size {
                opts.target_file_size = s;
            }
            let paths: Vec<String> = if args.tables.is_empty() {
                crdb_delta::unity_catalog::discover_tables(&args.target)
                    .await?
                    .into_iter()
                    .map(|(_, p)| p)
                    .collect()
            } else {
                args.tables.clone()
            };
            let mut done = Vec::new();
            for p in &paths {
                done.push(crdb_delta::maintain::maintain_table(&loc, p, &opts).await?);
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                for u in &done {
                    println!(
                        "{}: {} files compacted into {} ({} deleted rows purged){}; checkpoint at version {}; {} log files cleaned; {} files vacuumed",
                        u.table,
                        u.files_compacted,
                        u.files_written,
                        u.rows_purged,
                        u.compaction_skipped
                            .as_ref()
                            .map_or(String::new(), |c| format!(" (compaction dropped: {c})")),
                        u.checkpoint_version.map_or("-".into(), |v| v.to_string()),
                        u.log_files_deleted,
                        u.files_vacuumed
                    );
                }
            }
        }
        Command::Status { target, json, plot } => {
            if let Some(file) = &plot {
                let loc = Location::open_existing(&target)?;
                let points = crdb_delta::status_plot::lag_points(&loc).await?;
                std::fs::write(file, crdb_delta::status_plot::lag_svg(&points))
                    .with_context(|| format!("writing {file}"))?;
                eprintln!("{file}: lag at {} RESOLVED(s)", points.len());
            }
            let rows: Vec<serde_json::Value> = crdb_delta::status::target_status(&target)
                .await?
                .into_iter()
                .map(|t| t.row)
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                println!(
                    "no Delta tables below {}",
                    crdb_delta::storage::redact(&target)
                );
            }
            if !json {
                for r in &rows {
                    let sliced = match r["slices"].as_object() {
                        Some(s) => format!(
                            ", applying the next interval in key slices: {} of {} done",
                            s["done"], s["of"]
                        ),
                        None => String::new(),
                    };
                    println!(
                        "{}: RESOLVED {} ({} s ago), version {}{sliced}{}",
                        r["table"].as_str().unwrap_or("?"),
                        r["resolved_at"].as_str().unwrap_or("none"),
                        r["age_seconds"]
                            .as_i64()
                            .map_or("-".into(), |a| a.to_string()),
                        r["version"],
                        if r["stopped"] == true {
                            ", STOPPED (see `crdb-delta quarantine list`)"
                        } else {
                            ""
                        },
                    );
                    for q in r["quarantined"].as_array().into_iter().flatten() {
                        println!(
                            "  {} {}: {}",
                            q["action"].as_str().unwrap_or("?"),
                            q["file"].as_str().unwrap_or("?"),
                            q["reason"].as_str().unwrap_or("?")
                        );
                    }
                }
            }
        }
        Command::Quarantine { target, action } => {
            let target = target.context("--target <Delta target root> is required")?;
            let target = Location::open_existing(&target)?;
            let q = Quarantine::new(&target);
            match action {
                QuarantineCmd::List { json } => {
                    let records = q.list().await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&records)?);
                    } else if records.is_empty() {
                        println!("no quarantined files");
                    }
                    if !json {
                        for r in records {
                            let what = match r.action {
                                Action::Hold => "holds",
                                Action::Skip => "skipped",
                            };
                            println!(
                                "{} {what} {} (since {}): {}",
                                r.table, r.file, r.at, r.reason
                            );
                        }
                    }
                }
                QuarantineCmd::Retry { file } => {
                    let r = q.retry(&file).await?;
                    println!("{}: {file} will be read again by the next run", r.table);
                }
                QuarantineCmd::Skip { file } => {
                    let r = q.skip(&file).await?;
                    println!(
                        "{}: {file} will be skipped; the commit that passes over it names it (crdbDelta.figures.skippedFiles)",
                        r.table
                    );
                }
            }
        }
        Command::Serve { port } => {
            let started = std::time::Instant::now();
            let mut settings =
                Settings::from_env().context("reading the handler's app settings")?;
            settings.resolve_volume_source().await?;
            let port = port_from_env(port)?;
            tracing::info!(
                port,
                setup_ms = started.elapsed().as_millis() as u64,
                "starting handler"
            );
            serve(settings, port).await?;
        }
        Command::Pump(a) => {
            let endpoint = a.endpoint.clone().unwrap_or_else(|| {
                let base = std::env::var("AZURITE_BLOB_STORAGE_URL")
                    .unwrap_or_else(|_| "http://127.0.0.1:10000".into());
                format!("{}/{}", base.trim_end_matches('/'), a.account)
            });
            let opts = PumpOptions {
                source: a.source.clone(),
                handler: a.handler.clone(),
                apply_handlers: a.apply_handlers.clone(),
                function: a.function.clone(),
                once: a.once,
                interval: std::time::Duration::from_millis(a.interval_ms),
                duplicate: a.duplicate,
                reverse: a.reverse,
                concurrency: a.concurrency,
                account: a.account.clone(),
                endpoint,
                timeout: std::time::Duration::from_secs(a.timeout_s),
            };
            let report = pump(&opts).await?;
            println!("{}", serde_json::to_string(&report)?);
            if report.failed > 0 {
                anyhow::bail!("{} post(s) failed: {:?}", report.failed, report.errors);
            }
        }
        Command::UnityCatalog(a) => {
            use crdb_delta::unity_catalog::{UcOptions, apply, discover_tables, parse_tables};
            let tables = match &a.tables {
                Some(list) => parse_tables(list),
                None => discover_tables(&a.target).await?,
            };
            let opts = UcOptions {
                workspace_url: a.workspace_url.clone(),
                catalog: a.catalog.clone(),
                schema: a.schema.clone(),
                target: a.target.clone(),
                access_connector_id: a.access_connector_id.clone(),
                tables,
                warehouse_id: a.warehouse_id.clone(),
                credential_name: a.credential_name.clone(),
                location_name: a.location_name.clone(),
            };
            if a.dry_run {
                println!("{}", serde_json::to_string_pretty(&opts.plan()?)?);
            } else {
                let token = std::env::var("DATABRICKS_TOKEN")
                    .context("DATABRICKS_TOKEN is not set (a Databricks PAT or OAuth token)")?;
                for o in apply(&opts, &token).await? {
                    println!("{}: {}", o.object, o.result);
                }
            }
        }
        Command::Schema(a) => {
            use crdb_delta::crdb::commands::{SchemaOptions, Tables, schema};
            let report = schema(&SchemaOptions {
                url: a.crdb_url.clone(),
                tables: match (&a.tables, &a.job) {
                    (Some(t), _) => Tables::List(t.clone()),
                    (None, j) => Tables::Job(j.clone().unwrap_or_default()),
                },
                out: a.out.clone(),
                target: a.target.clone(),
            })
            .await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report.document)?);
            } else {
                print!("{report}");
            }
        }
        Command::Changefeed { action } => print!("{}", run_changefeed(action).await?),
        Command::Inspect {
            source,
            batch_size,
            json,
            propose_config,
        } => {
            let loc = Location::open_existing(
                &crdb_delta::unity_catalog::resolve_source(&source).await?,
            )?;
            let summary = inspect(&loc, batch_size)
                .await
                .with_context(|| format!("reading {source}"))?;
            if propose_config {
                let (config, notes) = summary.proposed_config();
                for n in notes {
                    eprintln!("note: {n}");
                }
                println!("{}", serde_json::to_string_pretty(&config)?);
            } else if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{summary}");
            }
        }
        Command::Demo { dir, format } => {
            prepare_demo_dir(&dir)?;
            let out = format!("{dir}/changefeed");
            let args = SimArgs::parse_from([
                "simulate",
                "--out",
                &out,
                "--truth",
                &format!("{dir}/truth"),
                "--format",
                match format {
                    FormatArg::Json => "json",
                    FormatArg::Parquet => "parquet",
                },
            ]);
            let sim = run_simulate(&args, crdb_delta::progress::enabled(false, quiet)).await?;
            println!(
                "simulated {} messages into {out} (ground truth in {dir}/truth)",
                sim.messages
            );
            let target = format!("{dir}/delta");
            let args = SyncArgs::parse_from([
                "sync",
                "--source",
                &out,
                "--target",
                &target,
                "--manifest",
                &format!("{dir}/truth/manifest.json"),
                // Small steps, so the demo commits once per RESOLVED like a live feed.
                "--max-window-bytes",
                "65536",
            ]);
            let report = sync(
                &Location::open(&out)?,
                &Location::open(&target)?,
                &args.options(args.explicit_config()?, None).await?,
            )
            .await?;
            print!("{report}");
            println!(
                "Delta tables in {target}; per-RESOLVED versions in {target}/_crdb_delta_resolved"
            );
        }
    }
    Ok(())
}
