//! Spike: can we write deletion vectors through deltalake-core 1.1.3 (no DataFusion) and our
//! own commits, and do readers apply them?
//!
//! 1. Protocol reader 3 / writer 7 with `deletionVectors` in both feature lists: delta-rs' commit
//!    check accepts it (`deletionVectors` is in its writer features), but `CreateBuilder` with
//!    `delta.enableDeletionVectors=true` also lists `invariants`, which delta-rs without
//!    `datafusion` cannot write, so it refuses every later commit
//!    ([`create_builder_dv_table_is_not_writable_without_datafusion`]). Writing version 0
//!    ourselves (protocol + metadata through `CommitBuilder`) gives Databricks' protocol; an
//!    existing reader 1 / writer 2 table is upgraded by delta-rs' `add_feature`.
//! 2. A DV is attached to a live file the way Delta does it: `remove(path, old DV)` +
//!    `add(path, new DV)`, `dataChange` true, in one commit through `CommitBuilder`
//!    (`max_retries` 0, as `delta::commit`). A second delete on the same file commits the
//!    union of its DV and the new rows; an inline (`i`) DV on another file.
//! 3. delta-rs loads the table and its file views expose each file's DV descriptor, which our
//!    codec reads back; Python `deltalake` (`QueryBuilder`, `deletion_vectors()`) returns the
//!    table minus exactly the deleted rows. The Python part runs when `CRDB_DELTA_PYTHON` (or
//!    `.tools/venv/bin/python`) exists.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use crdb_delta::delta::{Target, Writer};
use crdb_delta::storage::Location;
use crdb_delta_core::deletion_vector::{
    DeletionVector, DeletionVectorDescriptor as OurDv, DvFileBuilder, DvLocation, Uuid,
};
use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake_core::kernel::{
    Action, Add, DeletionVectorDescriptor, Protocol, StructType, TableFeatures, new_metadata,
};
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde_json::{Value, json};

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", DataType::Utf8, true),
    ])
}

fn batch(ids: std::ops::Range<i64>) -> RecordBatch {
    let v: Vec<String> = ids.clone().map(|i| format!("v{i}")).collect();
    RecordBatch::try_new(
        Arc::new(schema()),
        vec![
            Arc::new(Int64Array::from_iter_values(ids)) as ArrayRef,
            Arc::new(StringArray::from(v)) as ArrayRef,
        ],
    )
    .unwrap()
}

async fn commit(table: &mut DeltaTable, actions: Vec<Action>) -> u64 {
    let props = CommitProperties::default().with_max_retries(0);
    let done = CommitBuilder::from(props)
        .with_actions(actions)
        .build(
            Some(table.snapshot().unwrap()),
            table.log_store(),
            DeltaOperation::Delete { predicate: None },
        )
        .await
        .unwrap();
    table.update_incremental(None).await.unwrap();
    done.version()
}

/// Appends one data file per id range `[lo, hi)` (one commit).
async fn append_files(table: &mut DeltaTable, ranges: &[(i64, i64)]) -> Vec<Add> {
    let mut adds = Vec::new();
    for &(lo, hi) in ranges {
        let mut w = Writer::new(table, u64::MAX).unwrap();
        w.write(batch(lo..hi)).await.unwrap();
        adds.extend(w.finish().await.unwrap());
    }
    let props = CommitProperties::default().with_max_retries(0);
    CommitBuilder::from(props)
        .with_actions(adds.iter().cloned().map(Action::Add).collect())
        .build(
            Some(table.snapshot().unwrap()),
            table.log_store(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: None,
                predicate: None,
            },
        )
        .await
        .unwrap();
    table.update_incremental(None).await.unwrap();
    adds
}

/// A live file as the snapshot shows it: its re-add (with `tightBounds` false: the rows a DV
/// hides still count in the statistics), its remove, and its current DV.
struct LiveFile {
    add: Add,
    remove: deltalake_core::kernel::Remove,
    dv: Option<DeletionVectorDescriptor>,
}

async fn live_files(table: &DeltaTable) -> Vec<LiveFile> {
    let views: Vec<_> = table
        .snapshot()
        .unwrap()
        .snapshot()
        .file_views(table.log_store().as_ref(), None)
        .try_collect()
        .await
        .unwrap();
    views
        .into_iter()
        .map(|v| {
            let stats = v.stats().map(|s| {
                let mut s: Value = serde_json::from_str(&s).unwrap();
                s["tightBounds"] = json!(false);
                s.to_string()
            });
            LiveFile {
                add: Add {
                    path: v.path().to_string(),
                    partition_values: v.partition_values_map(),
                    size: v.size(),
                    modification_time: v.modification_time(),
                    data_change: true,
                    stats,
                    tags: None,
                    deletion_vector: v.deletion_vector_descriptor(),
                    base_row_id: None,
                    default_row_commit_version: None,
                    clustering_provider: None,
                },
                remove: v.remove_action(true),
                dv: v.deletion_vector_descriptor(),
            }
        })
        .collect()
}

fn to_ours(d: &DeletionVectorDescriptor) -> OurDv {
    serde_json::from_value(serde_json::to_value(d).unwrap()).unwrap()
}

fn to_theirs(d: &OurDv) -> DeletionVectorDescriptor {
    serde_json::from_value(serde_json::to_value(d).unwrap()).unwrap()
}

/// The file's current DV, read through its descriptor in the snapshot.
async fn read_dv(table: &DeltaTable, d: &DeletionVectorDescriptor) -> DeletionVector {
    let ours = to_ours(d);
    match ours.location().unwrap() {
        DvLocation::Inline => ours.read_inline().unwrap(),
        DvLocation::Relative(rel) => {
            let bytes = table
                .object_store()
                .get(&Path::from(rel))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            ours.read_from_file(&bytes).unwrap()
        }
        DvLocation::Absolute(p) => panic!("we never write absolute DVs: {p}"),
    }
}

/// Deletes rows (positions) of one live file: union with its DV, a new `.bin` file (or inline),
/// and `remove(path, old DV)` + `add(path, new DV)` in one commit.
async fn delete_rows(table: &mut DeltaTable, path: &str, rows: &[u64], inline: bool) -> u64 {
    let file = live_files(table)
        .await
        .into_iter()
        .find(|f| f.add.path == path)
        .unwrap();
    let mut dv: DeletionVector = rows.iter().copied().collect();
    if let Some(old) = &file.dv {
        dv.union_with(&read_dv(table, old).await);
    }
    let descriptor = if inline {
        OurDv::inline(&dv).unwrap()
    } else {
        let mut bin = DvFileBuilder::new(Uuid::new_v4(), "").unwrap();
        let d = bin.push(&dv).unwrap();
        table
            .object_store()
            .put(&Path::from(bin.relative_path()), bin.finish().into())
            .await
            .unwrap();
        d
    };
    let add = Add {
        deletion_vector: Some(to_theirs(&descriptor)),
        ..file.add
    };
    commit(table, vec![Action::Remove(file.remove), Action::Add(add)]).await
}

/// Rows of the table as our engine would read them: each file minus its DV.
async fn read_rows(table: &DeltaTable) -> Vec<i64> {
    let mut ids = Vec::new();
    for f in live_files(table).await {
        let dv = match &f.dv {
            Some(d) => read_dv(table, d).await,
            None => DeletionVector::new(),
        };
        let mut row = 0;
        for b in crdb_delta::delta::read_file(table, &f.add.path, 2)
            .await
            .unwrap()
        {
            let mask = dv.keep_mask(row, b.num_rows());
            row += b.num_rows() as u64;
            let kept = deltalake_core::arrow::compute::filter_record_batch(&b, &mask).unwrap();
            ids.extend(kept.column(0).as_primitive::<Int64Type>().values());
        }
    }
    ids.sort_unstable();
    ids
}

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("CRDB_DELTA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/python")
        });
    p.exists().then_some(p)
}

/// What Python `deltalake` reads: the rows (DataFusion SQL), the DVs and the protocol.
fn python_reads(table_dir: &std::path::Path) -> Option<Value> {
    let Some(py) = python() else {
        eprintln!("no Python venv (CRDB_DELTA_PYTHON): skipping the Python deltalake check");
        return None;
    };
    let script = r#"
import json, sys
import pyarrow as pa
from deltalake import DeltaTable, QueryBuilder
dt = DeltaTable(sys.argv[1])
rows = pa.table(QueryBuilder().register("t", dt).execute("select id from t order by id"))
dvs = pa.table(dt.deletion_vectors()).to_pylist()
p = dt.protocol()
try:
    dt.to_pyarrow_table()
    plain = "read"
except Exception as e:
    plain = f"{type(e).__name__}: {e}"
print(json.dumps({
    "ids": rows.column("id").to_pylist(),
    "dvs": {d["filepath"].rsplit("/", 1)[-1]: d["selection_vector"] for d in dvs},
    "protocol": [p.min_reader_version, p.min_writer_version,
                 sorted(p.reader_features or []), sorted(p.writer_features or [])],
    "version": dt.version(),
    "to_pyarrow_table": plain,
}))
"#;
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .arg(table_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("python deltalake: {v}");
    Some(v)
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap()
}

/// The protocol Databricks gives new tables: reader 3 / writer 7, `deletionVectors` only.
fn dv_protocol() -> Protocol {
    serde_json::from_value(json!({
        "minReaderVersion": 3,
        "minWriterVersion": 7,
        "readerFeatures": ["deletionVectors"],
        "writerFeatures": ["deletionVectors"],
    }))
    .unwrap()
}

/// Version 0 written by us (what `CreateBuilder` commits, minus its protocol rewriting):
/// protocol + metadata through `CommitBuilder`.
async fn create_dv_table(target: &Target) -> DeltaTable {
    let kernel: StructType = (&schema()).try_into_kernel().unwrap();
    let metadata = new_metadata(
        &kernel,
        Vec::<String>::new(),
        [("delta.enableDeletionVectors", "true")],
    )
    .unwrap();
    let probe = target.open().await.unwrap();
    assert!(probe.is_none());
    let log_store = DeltaTableBuilder::from_url(target.url.clone())
        .unwrap()
        .with_storage_backend(target.root.clone(), target.url.clone())
        .build_storage()
        .unwrap();
    CommitBuilder::from(CommitProperties::default().with_max_retries(0))
        .with_actions(vec![
            Action::Protocol(dv_protocol()),
            Action::Metadata(metadata.clone()),
        ])
        .build(
            None,
            log_store,
            DeltaOperation::Create {
                mode: SaveMode::ErrorIfExists,
                location: target.url.clone(),
                protocol: dv_protocol(),
                metadata,
            },
        )
        .await
        .unwrap();
    target.open().await.unwrap().unwrap()
}

/// `CreateBuilder` (our `Target::create_with`) with `delta.enableDeletionVectors=true` makes a
/// reader 3 / writer 7 table, but its protocol rewriting (`apply_properties_to_protocol` →
/// `writer_features_for_version(7)`) also lists `invariants` and `appendOnly`, and delta-rs
/// built without `datafusion` does not support `invariants` as a writer: it then refuses every
/// commit to the table it just created.
#[tokio::test]
async fn create_builder_dv_table_is_not_writable_without_datafusion() {
    let dir = tempfile::tempdir().unwrap();
    let root = Location::open(dir.path().to_str().unwrap()).unwrap();
    let target = Target::new(&root, "t").unwrap();
    let table = target
        .create_with(
            &schema(),
            vec![("delta.enableDeletionVectors".into(), "true".into())],
        )
        .await
        .unwrap();
    let p = serde_json::to_value(table.snapshot().unwrap().protocol()).unwrap();
    eprintln!("CreateBuilder protocol: {p}");
    assert_eq!(
        (p["minReaderVersion"].clone(), p["minWriterVersion"].clone()),
        (json!(3), json!(7))
    );
    let mut writer: Vec<String> = serde_json::from_value(p["writerFeatures"].clone()).unwrap();
    writer.sort();
    assert_eq!(writer, ["appendOnly", "deletionVectors", "invariants"]);

    let mut w = Writer::new(&table, u64::MAX).unwrap();
    w.write(batch(0..3)).await.unwrap();
    let adds = w.finish().await.unwrap();
    let err = CommitBuilder::from(CommitProperties::default().with_max_retries(0))
        .with_actions(adds.into_iter().map(Action::Add).collect())
        .build(
            Some(table.snapshot().unwrap()),
            table.log_store(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: None,
                predicate: None,
            },
        )
        .await
        .unwrap_err();
    eprintln!("commit refused: {err:?} / {err}");
    assert!(matches!(
        &err,
        DeltaTableError::Transaction {
            source: TransactionError::UnsupportedTableFeatures(f)
        } if format!("{f:?}") == "[Invariants]"
    ));
}

#[tokio::test]
async fn deletion_vectors_on_a_new_table() {
    let dir = tempfile::tempdir().unwrap();
    let root = Location::open(dir.path().to_str().unwrap()).unwrap();
    let target = Target::new(&root, "t").unwrap();
    let mut table = create_dv_table(&target).await;
    let p = table.snapshot().unwrap().protocol().clone();
    assert_eq!((p.min_reader_version(), p.min_writer_version()), (3, 7));
    assert_eq!(
        serde_json::to_value(&p).unwrap(),
        serde_json::to_value(dv_protocol()).unwrap()
    );

    let adds = append_files(&mut table, &[(0, 5), (5, 10)]).await;
    let (a, b) = (adds[0].path.clone(), adds[1].path.clone());

    // Rows 1 and 3 of file A (ids 1, 3), then row 4 (id 4): the second DV is the union.
    delete_rows(&mut table, &a, &[1, 3], false).await;
    let first = live_files(&table).await;
    let first_dv = first.iter().find(|f| f.add.path == a).unwrap().dv.clone();
    assert_eq!(first_dv.as_ref().unwrap().cardinality, 2);
    delete_rows(&mut table, &a, &[4], false).await;
    // Row 0 of file B (id 5), inline.
    let version = delete_rows(&mut table, &b, &[0], true).await;

    // The log: remove without DV / with the previous DV, add with the new one.
    let log = std::fs::read_to_string(dir.path().join(format!(
        "t/_delta_log/{version:020}.json",
        version = version - 1
    )))
    .unwrap();
    let actions: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let remove = actions.iter().find_map(|a| a.get("remove")).unwrap();
    let add = actions.iter().find_map(|a| a.get("add")).unwrap();
    assert_eq!(remove["path"], add["path"]);
    assert_eq!(
        remove["deletionVector"],
        serde_json::to_value(first_dv.unwrap()).unwrap()
    );
    assert_eq!(add["deletionVector"]["cardinality"], 3);
    assert_eq!(add["dataChange"], true);
    eprintln!("log of the union commit:\n{log}");

    // delta-rs loads it; its file views expose the DVs; our reader applies them.
    let mut reloaded = target.open().await.unwrap().unwrap();
    reloaded.load().await.unwrap();
    let files = live_files(&reloaded).await;
    assert_eq!(files.len(), 2);
    for f in &files {
        let d = f.dv.as_ref().expect("both files carry a DV");
        let expected: Vec<u64> = if f.add.path == a {
            vec![1, 3, 4]
        } else {
            vec![0]
        };
        assert_eq!(
            read_dv(&reloaded, d).await.iter().collect::<Vec<_>>(),
            expected
        );
    }
    assert_eq!(read_rows(&reloaded).await, vec![0, 2, 6, 7, 8, 9]);

    // A checkpoint (delta-rs writes one every 100 commits) keeps the descriptors.
    deltalake_core::checkpoints::create_checkpoint(&reloaded, None)
        .await
        .unwrap();
    let from_checkpoint = target.open().await.unwrap().unwrap();
    let dvs: Vec<_> = live_files(&from_checkpoint)
        .await
        .into_iter()
        .map(|f| f.dv.unwrap().cardinality)
        .collect();
    assert_eq!(dvs.len(), 2);
    assert_eq!(dvs.iter().sum::<i64>(), 4);
    assert_eq!(read_rows(&from_checkpoint).await, vec![0, 2, 6, 7, 8, 9]);
    assert!(
        dir.path()
            .join(format!("t/_delta_log/{version:020}.checkpoint.parquet"))
            .exists()
    );

    if let Some(py) = python_reads(&dir.path().join("t")) {
        assert_eq!(py["ids"], json!([0, 2, 6, 7, 8, 9]));
        assert_eq!(
            py["dvs"][file_name(&a)],
            json!([true, false, true, false, false])
        );
        assert_eq!(
            py["dvs"][file_name(&b)],
            json!([false, true, true, true, true])
        );
        assert_eq!(
            py["protocol"],
            json!([3, 7, ["deletionVectors"], ["deletionVectors"]])
        );
        assert_ne!(py["to_pyarrow_table"], "read");
    }
}

#[tokio::test]
async fn deletion_vectors_after_upgrading_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let root = Location::open(dir.path().to_str().unwrap()).unwrap();
    let target = Target::new(&root, "t").unwrap();
    let mut table = target.create_with(&schema(), vec![]).await.unwrap();
    let p = table.snapshot().unwrap().protocol().clone();
    assert_eq!((p.min_reader_version(), p.min_writer_version()), (1, 2));
    let adds = append_files(&mut table, &[(0, 4)]).await;

    // delta-rs' own upgrade: one protocol action (reader 3 / writer 7, deletionVectors).
    let refused = table
        .clone()
        .add_feature()
        .with_feature(TableFeatures::DeletionVectors)
        .await
        .unwrap_err();
    eprintln!("add_feature without a version increase: {refused}");
    let mut table = table
        .add_feature()
        .with_feature(TableFeatures::DeletionVectors)
        .with_allow_protocol_versions_increase(true)
        .await
        .unwrap();
    let protocol = serde_json::to_value(table.snapshot().unwrap().protocol()).unwrap();
    eprintln!("upgraded protocol: {protocol}");
    assert_eq!(protocol["minReaderVersion"], 3);
    assert_eq!(protocol["minWriterVersion"], 7);
    assert_eq!(protocol["readerFeatures"], json!(["deletionVectors"]));

    delete_rows(&mut table, &adds[0].path, &[0, 2], false).await;
    assert_eq!(read_rows(&table).await, vec![1, 3]);
    // Still writable by delta-rs after the upgrade (the protocol check passes).
    append_files(&mut table, &[(4, 6)]).await;
    assert_eq!(read_rows(&table).await, vec![1, 3, 4, 5]);

    if let Some(py) = python_reads(&dir.path().join("t")) {
        assert_eq!(py["ids"], json!([1, 3, 4, 5]));
        assert_eq!(
            py["dvs"][file_name(&adds[0].path)],
            json!([false, true, false, true])
        );
    }
}
