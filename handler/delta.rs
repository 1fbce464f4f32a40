//! Delta tables through delta-rs, on our own `object_store` client.
//!
//! Progress lives in the Delta log itself: every commit carries an app transaction
//! (`txn`, app id [`APP_ID`], version = the applied RESOLVED's wall nanoseconds) and, in its
//! commitInfo, the exact RESOLVED HLC and the first file that still held newer rows
//! ([`Progress`]). Readers of the table need nothing else.

use std::sync::{Arc, OnceLock};

use arrow_array::RecordBatch;
use arrow_schema::Schema;
use crdb_delta_core::Hlc;
use crdb_delta_core::apply::{Layout, Mode, SliceTag};
use crdb_delta_core::deletion_vector::{
    DeletionVector, DeletionVectorDescriptor as DvDescriptor, DvFileBuilder, DvLocation,
};
use crdb_delta_core::format::types::ColumnType;
use crdb_delta_core::plan::{Progress, Slices};
use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake_core::kernel::{
    Action, Add, DeletionVectorDescriptor, MetadataExt as _, Protocol, Remove, StructType,
    TableFeatures, Transaction,
};
use deltalake_core::logstore::{
    LogStore, LogStoreFactory, ObjectStoreRef, StorageConfig, default_logstore, logstore_factories,
};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde_json::{Value, json};
use url::Url;

pub use crate::checkpoint::Checkpoints;
pub use crate::file_writer::Writer;
use crate::storage::Location;
pub use crate::table_file::TableFile;

/// App id of our `txn` actions.
pub const APP_ID: &str = "crdb-delta";
/// App id of a second `txn` holding the applied RESOLVED's logical counter: with [`APP_ID`]'s
/// wall time it is the exact RESOLVED, kept by checkpoints (commitInfo is not) so progress
/// survives log cleanup.
pub const APP_ID_LOGICAL: &str = "crdb-delta.logical";
/// App ids of the `txn`s of an interval being applied in key slices ([`Slices`]): `of << 32 |
/// done` (0 once the interval is whole), and the interval's RESOLVED. Checkpoints keep them, as
/// they keep [`APP_ID`].
pub const APP_ID_SLICES: &str = "crdb-delta.slices";
pub const APP_ID_SLICES_WALL: &str = "crdb-delta.slices.wall";
pub const APP_ID_SLICES_LOGICAL: &str = "crdb-delta.slices.logical";
pub use crate::records::COMMIT_KEY;
use crate::records::{CommitRecord, TableProperties};
/// How far back the log is searched for our last commitInfo (other writers, e.g. OPTIMIZE, may
/// have committed since).
const HISTORY_LOOKBACK: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("Delta table {table}: {source}")]
    Delta {
        table: String,
        #[source]
        source: Box<DeltaTableError>,
    },
    #[error("Delta table {table}: {message}")]
    Table { table: String, message: String },
    /// A data file listed in the snapshot we read is gone from storage (VACUUM after a
    /// concurrent compaction): the plan is stale, not the table broken.
    #[error(
        "Delta table {table}: data file `{path}` is gone (removed and vacuumed by another writer)"
    )]
    FileGone { table: String, path: String },
}

impl DeltaError {
    /// Maps delta-rs errors of one table (the one mapping every call site uses).
    pub fn of(table: &str) -> impl Fn(DeltaTableError) -> DeltaError + Copy + '_ {
        move |source| DeltaError::Delta {
            table: table.to_owned(),
            source: Box::new(source),
        }
    }
}

/// The `az` scheme is not known to delta-rs without its Azure crate; we bring our own store, so
/// a plain log store over it is all it needs (Azure's conditional put makes commits atomic).
struct OwnStoreLogStores;

impl LogStoreFactory for OwnStoreLogStores {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> deltalake_core::DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

fn register_schemes() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let f: Arc<dyn LogStoreFactory> = Arc::new(OwnStoreLogStores);
        logstore_factories().insert(Url::parse("az://").expect("static url"), f);
    });
}

/// A Delta table location below a target root.
pub struct Target {
    pub path: String,
    pub url: Url,
    pub root: Arc<dyn object_store::ObjectStore>,
}

impl Target {
    pub fn new(target: &Location, path: &str) -> Result<Self, DeltaError> {
        register_schemes();
        let url = target.child_url(path).map_err(|e| DeltaError::Table {
            table: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_owned(),
            url,
            root: target.root.clone(),
        })
    }

    fn err(&self) -> impl Fn(DeltaTableError) -> DeltaError + '_ {
        DeltaError::of(&self.path)
    }

    fn kernel_schema(&self, schema: &Schema) -> Result<StructType, DeltaError> {
        schema.try_into_kernel().map_err(|e| DeltaError::Table {
            table: self.path.clone(),
            message: format!("schema not representable in Delta: {e}"),
        })
    }

    fn builder(&self) -> Result<DeltaTableBuilder, DeltaError> {
        Ok(DeltaTableBuilder::from_url(self.url.clone())
            .map_err(self.err())?
            .with_storage_backend(self.root.clone(), self.url.clone()))
    }

    /// The table, or `None` when it does not exist yet.
    pub async fn open(&self) -> Result<Option<DeltaTable>, DeltaError> {
        let mut table = self.builder()?.build().map_err(self.err())?;
        // No `_delta_log` entry at all: not created yet (delta-rs reports a missing folder and
        // an empty log differently per store).
        let log = Path::from("_delta_log");
        let store = table.log_store().object_store(None);
        let mut entries = store.list(Some(&log));
        if entries
            .next()
            .await
            .transpose()
            .map_err(|e| self.err()(e.into()))?
            .is_none()
        {
            return Ok(None);
        }
        table.load().await.map_err(self.err())?;
        Ok(Some(table))
    }

    /// Creates the table (version 0, no data) with the layout's schema and our properties;
    /// with deletion vectors enabled (reader 3 / writer 7) when `deletion_vectors`.
    pub async fn create(
        &self,
        layout: &Layout,
        mode: Mode,
        deletion_vectors: bool,
    ) -> Result<DeltaTable, DeltaError> {
        let schema = layout.output_schema(mode);
        let props = properties(layout, mode);
        if deletion_vectors {
            self.create_with_deletion_vectors(&schema, props).await
        } else {
            self.create_with(&schema, props).await
        }
    }

    /// Version 0 with Databricks' protocol for new tables: reader 3 / writer 7 listing
    /// `deletionVectors` (and `timestampNtz` when a column needs it). Committed by us:
    /// delta-rs' `CreateBuilder` also lists `invariants` at writer 7, which delta-rs without
    /// DataFusion then refuses to write to. A concurrent creator wins (its table is opened).
    pub async fn create_with_deletion_vectors(
        &self,
        schema: &Schema,
        properties: Vec<(String, String)>,
    ) -> Result<DeltaTable, DeltaError> {
        let kernel = self.kernel_schema(schema)?;
        let ntz = schema
            .fields()
            .iter()
            .any(|f| matches!(f.data_type(), arrow_schema::DataType::Timestamp(_, None)));
        let mut features = vec!["deletionVectors"];
        if ntz {
            features.push("timestampNtz");
        }
        let protocol: Protocol = serde_json::from_value(json!({
            "minReaderVersion": 3,
            "minWriterVersion": 7,
            "readerFeatures": features,
            "writerFeatures": features,
        }))
        .map_err(|e| DeltaError::Table {
            table: self.path.clone(),
            message: format!("protocol: {e}"),
        })?;
        let mut config: Vec<(String, String)> =
            vec![("delta.enableDeletionVectors".into(), "true".into())];
        config.extend(with_checkpoint_interval(properties));
        let metadata = deltalake_core::kernel::new_metadata(&kernel, Vec::<String>::new(), config)
            .map_err(|e| self.err()(e.into()))?;
        let metadata = metadata
            .with_name(self.path.replace('/', "_"))
            .and_then(|m| m.with_description("CockroachDB changefeed applied by crdb-delta".into()))
            .map_err(|e| self.err()(e.into()))?;
        let log_store = self.builder()?.build_storage().map_err(self.err())?;
        let created = CommitBuilder::from(CommitProperties::default().with_max_retries(0))
            .with_actions(vec![
                Action::Protocol(protocol.clone()),
                Action::Metadata(metadata.clone()),
            ])
            .build(
                None,
                log_store,
                DeltaOperation::Create {
                    mode: SaveMode::ErrorIfExists,
                    location: self.url.clone(),
                    protocol,
                    metadata,
                },
            )
            .await;
        if let Err(e) = created {
            tracing::debug!(table = %self.path, error = %e, "create failed; opening the table another run created");
        }
        self.open().await?.ok_or_else(|| DeltaError::Table {
            table: self.path.clone(),
            message: "creating the table failed".into(),
        })
    }

    /// Creates a table (version 0, no data). A concurrent creator wins silently (`Ignore`).
    pub async fn create_with(
        &self,
        schema: &Schema,
        properties: Vec<(String, String)>,
    ) -> Result<DeltaTable, DeltaError> {
        let kernel = self.kernel_schema(schema)?;
        let log_store = self.builder()?.build_storage().map_err(self.err())?;
        let table = CreateBuilder::new()
            .with_log_store(log_store)
            .with_table_name(self.path.replace('/', "_"))
            .with_comment("CockroachDB changefeed applied by crdb-delta")
            .with_columns(kernel.fields().cloned())
            .with_configuration(
                with_checkpoint_interval(properties)
                    .into_iter()
                    .map(|(k, v)| (k, Some(v))),
            )
            .with_raise_if_key_not_exists(false)
            .with_save_mode(SaveMode::Ignore)
            .await;
        match table {
            Ok(t) => Ok(t),
            // Another creator committed version 0 first: theirs is the table.
            Err(e) => {
                tracing::debug!(table = %self.path, error = %e, "create failed; opening the table another run created");
                match self.open().await? {
                    Some(t) => Ok(t),
                    None => Err(self.err()(e)),
                }
            }
        }
    }
}

/// Our table properties for a layout.
pub fn properties(layout: &Layout, mode: Mode) -> Vec<(String, String)> {
    TableProperties {
        key: layout.key.clone(),
        mode: Some(mode),
        split_families: layout.split_families,
        families: layout.families.clone(),
    }
    .to_configuration()
}

/// The layout recorded in an existing table: data columns from its schema, the rest from our
/// properties.
pub fn layout_of(table: &DeltaTable, name: &str) -> Result<(Layout, Option<Mode>), DeltaError> {
    let bad = |message: String| DeltaError::Table {
        table: name.to_owned(),
        message,
    };
    let snap = table.snapshot().map_err(|e| bad(e.to_string()))?;
    let props = TableProperties::from_configuration(snap.metadata().configuration())
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| {
            bad(format!(
                "not created by crdb-delta (no `{}` property)",
                TableProperties::KEY
            ))
        })?;
    let mode = props.mode;
    let schema = snap.snapshot().arrow_schema();
    let mut layout = Layout::new(props.key, props.split_families);
    layout.families = props.families;
    for f in schema.fields() {
        if crdb_delta_core::format::batch::is_reserved(f.name()) {
            continue;
        }
        let ty = ColumnType::from_arrow(f.data_type()).ok_or_else(|| {
            bad(format!(
                "column `{}` has type {} which crdb-delta does not write",
                f.name(),
                f.data_type()
            ))
        })?;
        layout.columns.push((f.name().clone(), ty));
    }
    Ok((layout, mode))
}

/// The table's progress: the `txn` version says which RESOLVED was applied (the log's own
/// record, updated atomically with the data); our commitInfo adds its exact HLC and where to
/// resume reading.
pub async fn progress(table: &DeltaTable, name: &str) -> Result<Progress, DeltaError> {
    let err = DeltaError::of(name);
    let snap = table.snapshot().map_err(err)?;
    let store = table.log_store();
    let txn = |app: &'static str| snap.transaction_version(store.as_ref(), app);
    let version = txn(APP_ID).await.map_err(err)?;
    let slices = match txn(APP_ID_SLICES).await.map_err(err)? {
        Some(v) if v > 0 => {
            let wall = txn(APP_ID_SLICES_WALL).await.map_err(err)?.unwrap_or(0);
            let logical = txn(APP_ID_SLICES_LOGICAL).await.map_err(err)?.unwrap_or(0);
            Some(Slices {
                resolved: Hlc::new(wall, u32::try_from(logical).unwrap_or(0)),
                of: (v >> 32) as u32,
                done: (v & 0xffff_ffff) as u32,
            })
        }
        _ => None,
    };
    if version.is_none() && slices.is_none() {
        return Ok(Progress::default());
    }
    let mut history = table.history(Some(HISTORY_LOOKBACK));
    while let Some(info) = history.next().await {
        let info = info.map_err(err)?;
        if let Some(CommitRecord { progress: p, .. }) = CommitRecord::from_commit_info(&info.info)
            && p.applied.map(|a| a.wall) == version
            && p.slices == slices
        {
            return Ok(p);
        }
    }
    let Some(version) = version else {
        // The first interval of the table, sliced, its record out of reach: its slices say it all.
        return Ok(Progress {
            slices,
            ..Progress::default()
        });
    };
    // Our commitInfo is gone (log cleanup, or many foreign commits since): the exact RESOLVED
    // is in the checkpointed `txn`s; where reading resumes is not, so every file up to it is
    // read again (rows at or below it are filtered out, so nothing repeats).
    let logical = txn(APP_ID_LOGICAL)
        .await
        .map_err(err)?
        .and_then(|l| u32::try_from(l).ok());
    tracing::warn!(
        table = name,
        version,
        logical = ?logical,
        "no crdb-delta commitInfo in the recent log: re-reading every file up to the applied RESOLVED"
    );
    if logical.is_none() {
        // Last written by a version before the logical `txn`: the RESOLVED is taken as
        // (wall, 0); events at that wall time with a larger logical counter may apply again.
        tracing::warn!(
            table = name,
            version,
            "the applied RESOLVED's logical counter is not recorded (table last written by an older crdb-delta): assuming 0"
        );
    }
    Ok(Progress {
        applied: Some(Hlc::new(version, logical.unwrap_or(0))),
        pending_from: Some(crdb_delta_core::plan::PENDING_ALL.into()),
        slices,
    })
}

/// A file of the table, with what pruning needs.
pub struct FileEntry {
    pub path: String,
    pub size: i64,
    /// Its removal as of the snapshot (carrying its current deletion vector).
    pub remove: Remove,
    /// Its re-add with the same statistics (`tightBounds` false: rows a deletion vector hides
    /// still count), for attaching a new deletion vector.
    pub add: Add,
    /// Its current deletion vector, if rows of it are already deleted.
    pub dv: Option<DeletionVectorDescriptor>,
    /// Rows physically in the file (statistics' `numRecords`), when known.
    pub num_records: Option<u64>,
    /// `(min, max)` of the first key column from the file statistics, when present.
    pub key_range: Option<(Value, Value)>,
    /// The key slice whose keys alone the file holds, from its tag ([`SliceTag`]).
    pub slice: Option<SliceTag>,
}

pub async fn files(table: &DeltaTable, first_key: &str) -> Result<Vec<FileEntry>, DeltaTableError> {
    let snap = table.snapshot()?;
    let views: Vec<_> = snap
        .snapshot()
        .file_views(table.log_store().as_ref(), None)
        .try_collect()
        .await?;
    Ok(views
        .into_iter()
        .map(|v| {
            let stats: Option<Value> = v.stats().and_then(|s| serde_json::from_str(&s).ok());
            let key_range = stats.as_ref().and_then(|s| {
                Some((
                    s.get("minValues")?.get(first_key)?.clone(),
                    s.get("maxValues")?.get(first_key)?.clone(),
                ))
            });
            let num_records = stats
                .as_ref()
                .and_then(|s| s.get("numRecords"))
                .and_then(Value::as_u64);
            let loose = stats.map(|mut s| {
                s["tightBounds"] = json!(false);
                s.to_string()
            });
            let dv = v.deletion_vector_descriptor();
            // Kept on the re-add that attaches a deletion vector: the file's rows stay its own.
            #[allow(deprecated)]
            let tags = v.add_action().tags;
            let path = v.path().to_string();
            let slice = tags.as_ref().and_then(|t| SliceTag::from_tags(t, &path));
            FileEntry {
                path: path.clone(),
                size: v.size(),
                remove: v.remove_action(true),
                add: Add {
                    path: v.path().to_string(),
                    partition_values: v.partition_values_map(),
                    size: v.size(),
                    modification_time: v.modification_time(),
                    data_change: true,
                    stats: loose,
                    tags,
                    deletion_vector: dv.clone(),
                    base_row_id: None,
                    default_row_commit_version: None,
                    clustering_provider: None,
                },
                dv,
                num_records,
                key_range,
                slice,
            }
        })
        .collect())
}

/// Reads one data file of the table whole (tests and small files).
pub async fn read_file(
    table: &DeltaTable,
    path: &str,
    batch_size: usize,
) -> Result<Vec<RecordBatch>, DeltaError> {
    TableFile::fetch(table, path)
        .await?
        .batches(None, batch_size)?
        .collect()
}

/// Whether the table's protocol has deletion vectors (readers must apply them).
pub fn has_deletion_vectors(table: &DeltaTable) -> bool {
    let Ok(snap) = table.snapshot() else {
        return false;
    };
    serde_json::to_value(snap.protocol()).is_ok_and(|p| {
        p["readerFeatures"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "deletionVectors"))
    })
}

/// Adds the `deletionVectors` feature to an existing table (reader 3 / writer 7). Readers
/// without deletion-vector support can no longer read it: done only when configured.
pub async fn enable_deletion_vectors(
    table: DeltaTable,
    name: &str,
) -> Result<DeltaTable, DeltaError> {
    let t = table
        .add_feature()
        .with_feature(TableFeatures::DeletionVectors)
        .with_allow_protocol_versions_increase(true)
        .await
        .map_err(DeltaError::of(name))?;
    Ok(t)
}

/// A deletion-vector descriptor as the other side's type (delta-rs' and ours are the same JSON).
fn via_json<T: serde::de::DeserializeOwned>(d: &impl serde::Serialize) -> Result<T, String> {
    serde_json::from_value(serde_json::to_value(d).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())
}

/// Delta's unique id of a file's deletion vector (`None`: it has none): a vector is never
/// rewritten under its id, so it keys a cache.
pub fn deletion_vector_id(file: &FileEntry) -> Option<String> {
    file.dv
        .as_ref()
        .and_then(|d| via_json::<DvDescriptor>(d).ok())
        .map(|d| d.unique_id())
}

/// The deleted rows of a file: its deletion vector read (from its `.bin` file or inline), or
/// none.
pub async fn read_deletion_vector(
    table: &DeltaTable,
    file: &FileEntry,
) -> Result<DeletionVector, DeltaError> {
    let Some(d) = &file.dv else {
        return Ok(DeletionVector::new());
    };
    let bad = |message: String| DeltaError::Table {
        table: table.table_url().to_string(),
        message: format!("{}: deletion vector: {message}", file.path),
    };
    let ours: DvDescriptor = via_json(d).map_err(bad)?;
    match ours.location().map_err(|e| bad(e.to_string()))? {
        DvLocation::Inline => ours.read_inline().map_err(|e| bad(e.to_string())),
        DvLocation::Relative(rel) => {
            let location = Path::parse(&rel).map_err(|e| bad(e.to_string()))?;
            let bytes = match table.object_store().get(&location).await {
                Ok(got) => got.bytes().await.map_err(|e| bad(e.to_string()))?,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(DeltaError::FileGone {
                        table: table.table_url().to_string(),
                        path: rel,
                    });
                }
                Err(e) => return Err(bad(e.to_string())),
            };
            ours.read_from_file(&bytes).map_err(|e| bad(e.to_string()))
        }
        DvLocation::Absolute(p) => Err(bad(format!(
            "absolute deletion-vector paths are not read: {p}"
        ))),
    }
}

/// What [`deletion_vector_actions`] made.
pub struct DvActions {
    pub adds: Vec<Add>,
    pub removes: Vec<Remove>,
    /// Bytes of the `.bin` file written.
    pub bytes: u64,
    /// Each file's new deletion vector: (path, Delta unique id, vector), for a cache.
    pub vectors: Vec<(String, String, DeletionVector)>,
}

/// Marks rows deleted in live files: one `.bin` file for all of them (written now, referenced
/// by the commit), and per file `remove(path, old DV)` + `add(path, new DV)`; a file whose
/// every row is deleted is only removed. `deleted` holds each file's full set (its old deletion
/// vector included).
pub async fn deletion_vector_actions(
    table: &DeltaTable,
    name: &str,
    deleted: Vec<(FileEntry, DeletionVector)>,
) -> Result<DvActions, DeltaError> {
    let bad = |message: String| DeltaError::Table {
        table: name.to_owned(),
        message: format!("deletion vector: {message}"),
    };
    let mut bin = DvFileBuilder::new(uuid::Uuid::new_v4(), "").map_err(|e| bad(e.to_string()))?;
    let (mut adds, mut removes, mut vectors) = (Vec::new(), Vec::new(), Vec::new());
    for (file, dv) in deleted {
        let all_gone = file.num_records.is_some_and(|n| dv.cardinality() >= n);
        removes.push(file.remove);
        if all_gone {
            continue;
        }
        let d = bin.push(&dv).map_err(|e| bad(e.to_string()))?;
        let theirs: DeletionVectorDescriptor = via_json(&d).map_err(bad)?;
        vectors.push((file.path, d.unique_id(), dv));
        adds.push(Add {
            deletion_vector: Some(theirs),
            ..file.add
        });
    }
    let mut bytes = 0;
    if !bin.is_empty() {
        let path = Path::parse(bin.relative_path()).map_err(|e| bad(e.to_string()))?;
        let written = bin.finish();
        bytes = written.len() as u64;
        table
            .object_store()
            .put(&path, written.into())
            .await
            .map_err(|e| bad(e.to_string()))?;
    }
    Ok(DvActions {
        adds,
        removes,
        bytes,
        vectors,
    })
}

/// The live rows of one data file: its batches minus the rows its deletion vector hides (what
/// any Delta reader returns for it).
pub async fn read_live_file(
    table: &DeltaTable,
    file: &FileEntry,
    batch_size: usize,
) -> Result<Vec<RecordBatch>, DeltaError> {
    let dv = read_deletion_vector(table, file).await?;
    let mut first = 0u64;
    let mut out = Vec::new();
    for b in read_file(table, &file.path, batch_size).await? {
        let (live, _) = dv.live_rows(&b, first).map_err(|e| DeltaError::Table {
            table: table.table_url().to_string(),
            message: format!("{}: {e}", file.path),
        })?;
        first += b.num_rows() as u64;
        out.push(live);
    }
    Ok(out)
}

/// Versions between checkpoints of the tables we create: Spark's and Databricks' default (10)
/// rather than delta-rs' (100). Every open of a table (each handler invocation, each `sync`)
/// replays the commits since the last checkpoint; with one commit per RESOLVED that replay
/// grew to 99 commits before each checkpoint.
pub const CHECKPOINT_INTERVAL: &str = "10";

/// The table property [`CHECKPOINT_INTERVAL`] sets.
pub const CHECKPOINT_INTERVAL_KEY: &str = "delta.checkpointInterval";

/// `properties` plus `delta.checkpointInterval` ([`CHECKPOINT_INTERVAL`]) unless they set it.
fn with_checkpoint_interval(mut properties: Vec<(String, String)>) -> Vec<(String, String)> {
    if !properties.iter().any(|(k, _)| k == CHECKPOINT_INTERVAL_KEY) {
        properties.push((CHECKPOINT_INTERVAL_KEY.into(), CHECKPOINT_INTERVAL.into()));
    }
    properties
}

/// Gives a table made before [`CHECKPOINT_INTERVAL`] was set at creation that interval, unless
/// it has one (set by whoever made it): one metadata commit, once. `None`: nothing to do.
///
/// The commit holds the metadata action alone. delta-rs' `set_tbl_properties` would also move
/// the table to a writer-features protocol listing `invariants`, which delta-rs itself then
/// refuses to write to.
pub async fn set_checkpoint_interval(
    table: &DeltaTable,
    name: &str,
) -> Result<Option<DeltaTable>, DeltaError> {
    let err = DeltaError::of(name);
    let snapshot = table.snapshot().map_err(err)?;
    if snapshot
        .metadata()
        .configuration()
        .contains_key(CHECKPOINT_INTERVAL_KEY)
    {
        return Ok(None);
    }
    let meta = snapshot
        .metadata()
        .clone()
        .add_config_key(CHECKPOINT_INTERVAL_KEY.into(), CHECKPOINT_INTERVAL.into())
        .map_err(|e| err(e.into()))?;
    let operation = DeltaOperation::SetTableProperties {
        properties: [(CHECKPOINT_INTERVAL_KEY.into(), CHECKPOINT_INTERVAL.into())].into(),
    };
    let done = CommitBuilder::default()
        .with_actions(vec![Action::Metadata(meta)])
        .build(Some(snapshot), table.log_store(), operation)
        .await
        .map_err(err)?;
    let mut t = table.clone();
    t.state = Some(done.snapshot());
    Ok(Some(t))
}

/// What one commit applies.
pub struct Commit {
    pub adds: Vec<Add>,
    pub removes: Vec<Remove>,
    /// New schema/properties, when the layout grew.
    pub layout: Option<(Layout, Mode)>,
    /// What the table has applied once this commit lands: moves the `txn`s of an
    /// [`CommitKind::Apply`] commit.
    pub progress: Progress,
    pub resolved: Hlc,
    /// The commit completes an interval that was applied in slices (zeroes their `txn`).
    pub ends_slices: bool,
    pub figures: crate::records::Figures,
    pub mode: Mode,
    pub kind: CommitKind,
}

/// What a commit is, for the log (`operation`) and for readers of our progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitKind {
    /// Applies a RESOLVED: moves the `txn`s.
    Apply,
    /// Rewrites files without changing rows (`dataChange` false, operation OPTIMIZE); the
    /// `txn`s stay, the commitInfo repeats the current progress.
    Compact { target_size: i64 },
}

/// Why a commit did not land: the step must be planned again from the table's new state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// Another run of ours committed (our `txn` moved): it may have applied this step.
    Progress { version: u64 },
    /// A file this commit removes is no longer live: another writer removed it (OPTIMIZE,
    /// auto-compaction, a DELETE), so committing would resurrect or duplicate its rows.
    FileGone { path: String, version: u64 },
    /// Another writer added data files while this commit merges by key: they may hold keys
    /// the plan did not see.
    DataAdded { version: u64 },
    /// Another writer changed the schema, the properties or the protocol.
    Metadata { version: u64 },
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Progress { version } => {
                write!(f, "another crdb-delta run committed version {version}")
            }
            Self::FileGone { path, version } => {
                write!(
                    f,
                    "version {version} removed `{path}`, which this commit rewrites"
                )
            }
            Self::DataAdded { version } => {
                write!(
                    f,
                    "version {version} added data files this commit did not read"
                )
            }
            Self::Metadata { version } => write!(
                f,
                "version {version} changed the schema, properties or protocol"
            ),
        }
    }
}

/// How a commit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    Version(u64),
    Conflict(Conflict),
}

/// Commits that landed since our read, rebased on before giving up (each is a commit that
/// touched nothing we depend on, e.g. a foreign append to an append_only table).
const MAX_REBASES: u32 = 20;

/// What the commits between our read and the table's head did, as far as a commit of ours
/// depends on it (read from their log entries: compaction's `dataChange=false` removes count).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Winners {
    /// Files removed (percent-decoded, as snapshots report them), with the removing version.
    pub removed: Vec<(String, u64)>,
    /// First version that added a data file with `dataChange=true`.
    pub data_added: Option<u64>,
    /// First version with a `metaData` or `protocol` action.
    pub metadata: Option<u64>,
    /// First version with a `txn` of our app id.
    pub ours: Option<u64>,
}

impl Winners {
    /// Folds one commit's log entry (newline-delimited actions) in.
    pub fn add_commit(&mut self, version: u64, entry: &[u8]) -> Result<(), serde_json::Error> {
        for line in entry.split(|b| *b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let action: Value = serde_json::from_slice(line)?;
            if let Some(r) = action.get("remove") {
                if let Some(p) = r.get("path").and_then(Value::as_str) {
                    let p = percent_encoding::percent_decode_str(p).decode_utf8_lossy();
                    self.removed.push((p.into_owned(), version));
                }
            } else if let Some(a) = action.get("add") {
                if a.get("dataChange").and_then(Value::as_bool) != Some(false) {
                    self.data_added.get_or_insert(version);
                }
            } else if action.get("metaData").is_some() || action.get("protocol").is_some() {
                self.metadata.get_or_insert(version);
            } else if let Some(t) = action.get("txn")
                && matches!(
                    t.get("appId").and_then(Value::as_str),
                    Some(APP_ID | APP_ID_SLICES)
                )
            {
                self.ours.get_or_insert(version);
            }
        }
        Ok(())
    }

    /// The conflict these winners are for a commit that removes `removes` and, when
    /// `merges_keys`, decides from the keys of the files it read. `None`: rebase and retry.
    pub fn conflict(&self, removes: &[Remove], merges_keys: bool) -> Option<Conflict> {
        if let Some(version) = self.ours {
            return Some(Conflict::Progress { version });
        }
        if let Some(version) = self.metadata {
            return Some(Conflict::Metadata { version });
        }
        if let Some((path, version)) = self
            .removed
            .iter()
            .find(|(p, _)| removes.iter().any(|r| &r.path == p))
        {
            return Some(Conflict::FileGone {
                path: path.clone(),
                version: *version,
            });
        }
        match self.data_added {
            Some(version) if merges_keys => Some(Conflict::DataAdded { version }),
            _ => None,
        }
    }
}

/// Commits atomically: data files, removals, schema change, and the `txn` that records the
/// RESOLVED. Returns the new version, or the [`Conflict`] that makes the plan stale.
///
/// delta-rs' own conflict checker ignores winning removes with `dataChange=false` (what
/// OPTIMIZE writes), so a copy-on-write commit racing a compaction would land and keep both
/// the compacted and the rewritten copy of each row. So delta-rs never retries here
/// (`max_retries` 0): when another commit wins, we read what it did ([`Winners`]) and either
/// rebase onto it (it touched nothing we depend on) or report the conflict.
pub async fn commit(
    table: &mut DeltaTable,
    name: &str,
    c: Commit,
    checkpoints: &Checkpoints,
) -> Result<Committed, DeltaError> {
    let err = DeltaError::of(name);
    let merges_keys = c.mode != Mode::AppendOnly;
    let mut winners = Winners::default();
    let mut rebases = 0;
    loop {
        let read = table.version().unwrap_or(0);
        match commit_once(table, name, &c).await {
            Ok(v) => {
                checkpoints.after_commit(name, table).await;
                return Ok(Committed::Version(v));
            }
            Err(DeltaError::Delta { source, .. }) if is_lost_race(&source) => {}
            Err(e) => return Err(e),
        }
        table.update_incremental(None).await.map_err(err)?;
        let head = table.version().unwrap_or(read);
        for v in read + 1..=head {
            let entry = table
                .log_store()
                .read_commit_entry(v)
                .await
                .map_err(err)?
                .unwrap_or_default();
            winners
                .add_commit(v, &entry)
                .map_err(|e| DeltaError::Table {
                    table: name.to_owned(),
                    message: format!("log entry of version {v} is not valid JSON: {e}"),
                })?;
        }
        if let Some(conflict) = winners.conflict(&c.removes, merges_keys) {
            tracing::info!(table = name, %conflict, "commit conflicts with a concurrent commit");
            return Ok(Committed::Conflict(conflict));
        }
        rebases += 1;
        if rebases > MAX_REBASES {
            return Err(DeltaError::Table {
                table: name.to_owned(),
                message: format!(
                    "{MAX_REBASES} concurrent commits in a row won the race; giving up this run"
                ),
            });
        }
        tracing::debug!(
            table = name,
            read,
            head,
            "concurrent commit touched nothing ours; rebasing"
        );
    }
}

/// Whether delta-rs refused a commit because another one took the version.
fn is_lost_race(e: &DeltaTableError) -> bool {
    use deltalake_core::kernel::transaction::TransactionError as T;
    matches!(
        e,
        DeltaTableError::VersionAlreadyExists(_)
            | DeltaTableError::Transaction {
                source: T::MaxCommitAttempts(_) | T::VersionAlreadyExists(_) | T::CommitConflict(_)
            }
    )
}

async fn commit_once(table: &mut DeltaTable, name: &str, c: &Commit) -> Result<u64, DeltaError> {
    let err = DeltaError::of(name);
    let mut actions: Vec<Action> = Vec::with_capacity(c.adds.len() + c.removes.len() + 1);
    if let Some((layout, mode)) = &c.layout {
        let schema: Arc<Schema> = layout.output_schema(*mode);
        let kernel: StructType =
            schema
                .as_ref()
                .try_into_kernel()
                .map_err(|e| DeltaError::Table {
                    table: name.to_owned(),
                    message: format!("schema not representable in Delta: {e}"),
                })?;
        let mut meta = table
            .snapshot()
            .map_err(err)?
            .metadata()
            .clone()
            .with_schema(&kernel)
            .map_err(|e| err(e.into()))?;
        for (k, v) in properties(layout, *mode) {
            meta = meta.add_config_key(k, v).map_err(|e| err(e.into()))?;
        }
        actions.push(Action::Metadata(meta));
    }
    let data_change = !c.adds.is_empty() || !c.removes.is_empty();
    actions.extend(c.adds.iter().cloned().map(Action::Add));
    actions.extend(c.removes.iter().cloned().map(Action::Remove));
    let operation = match (c.kind, c.mode, data_change) {
        (CommitKind::Compact { target_size }, _, _) => DeltaOperation::Optimize {
            predicate: None,
            target_size,
        },
        (CommitKind::Apply, Mode::AppendOnly, _) | (CommitKind::Apply, _, false) => {
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: None,
                predicate: None,
            }
        }
        (CommitKind::Apply, Mode::UpdateDelete | Mode::Scd2, true) => {
            DeltaOperation::Update { predicate: None }
        }
    };
    // No log cleanup after each commit: it lists the whole `_delta_log`, a cost that grows with
    // the log for as long as the table's log retention (30 days) keeps it. Upkeep
    // (`maintain`, the CatchUp timer) cleans the log instead.
    // Nor the checkpoint: [`Checkpoints`] writes it, after the commit or behind the invocation.
    let mut props = CommitProperties::default()
        .with_max_retries(0)
        .with_cleanup_expired_logs(Some(false))
        .with_create_checkpoint(false);
    if c.kind == CommitKind::Apply {
        props = match c.progress.slices {
            // A slice: the RESOLVED applied stays; the slices move.
            Some(s) => props
                .with_application_transaction(Transaction::new(
                    APP_ID_SLICES,
                    (i64::from(s.of) << 32) | i64::from(s.done),
                ))
                .with_application_transaction(Transaction::new(APP_ID_SLICES_WALL, s.resolved.wall))
                .with_application_transaction(Transaction::new(
                    APP_ID_SLICES_LOGICAL,
                    i64::from(s.resolved.logical),
                )),
            None => props
                .with_application_transaction(Transaction::new(APP_ID, c.resolved.wall))
                .with_application_transaction(Transaction::new(
                    APP_ID_LOGICAL,
                    i64::from(c.resolved.logical),
                )),
        };
        if c.ends_slices {
            props = props.with_application_transaction(Transaction::new(APP_ID_SLICES, 0));
        }
    }
    let props = props.with_metadata([
        (
            crate::records::COMMIT_KEY.to_owned(),
            serde_json::to_value(crate::records::CommitRecord {
                progress: c.progress.clone(),
                figures: c.figures.clone(),
            })
            .map_err(|e| err(deltalake_core::DeltaTableError::Generic(e.to_string())))?,
        ),
        (
            crate::records::OPERATION_METRICS_KEY.to_owned(),
            serde_json::json!(c.figures.operation_metrics()),
        ),
    ]);
    let snapshot = table.snapshot().map_err(err)?;
    let done = CommitBuilder::from(props)
        .with_actions(actions)
        .build(Some(snapshot), table.log_store(), operation)
        .await
        .map_err(err)?;
    let version = done.version();
    // The state as of our commit, from the commit itself: listing the log again would cost a
    // listing of `_delta_log` per commit. A later writer's commit is met by the next commit's
    // conflict check, as any commit after our read is.
    table.state = Some(done.snapshot());
    Ok(version)
}
