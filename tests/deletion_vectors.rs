//! Deletion vectors through the functions the engine uses (`handler/delta.rs`), checked by
//! delta-rs itself, a checkpoint and Python `deltalake`:
//!
//! 1. Protocol reader 3 / writer 7 with `deletionVectors`: `Target::create_with_deletion_vectors`
//!    writes version 0 itself, because `CreateBuilder` with `delta.enableDeletionVectors=true`
//!    also lists `invariants`, which delta-rs without `datafusion` cannot write: it refuses every
//!    later commit ([`create_builder_dv_table_is_not_writable_without_datafusion`]). An existing
//!    reader 1 / writer 2 table is upgraded by `delta::enable_deletion_vectors`.
//! 2. `delta::deletion_vector_actions` attaches a DV the way Delta does it: `remove(path, old
//!    DV)` + `add(path, new DV)`, `dataChange` true, one commit; a second delete on the same file
//!    commits the union.
//! 3. `delta::files` exposes each file's DV, `delta::read_deletion_vector` and
//!    `delta::read_live_file` read it back; Python `deltalake` (`QueryBuilder`,
//!    `deletion_vectors()`) returns the table minus exactly the deleted rows. Python comes from
//!    `CRDB_DELTA_PYTHON` or `.tools/venv` (scripts/test installs it); without it the test fails
//!    unless `CRDB_DELTA_SKIP_PYTHON=1`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use crdb_delta::delta::{self, Target, Writer};
use crdb_delta::storage::Location;
use crdb_delta_core::deletion_vector::DeletionVector;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake_core::kernel::{Action, Add, TableFeatures};
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableError};
use serde_json::{Value, json};

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", DataType::Utf8, true),
    ])
}

fn batch(ids: std::ops::Range<i64>) -> RecordBatch {
    let v: Vec<String> = ids.clone().map(|i| format!("v{i}")).collect();
    batch_of(ids, v)
}

fn batch_of(ids: std::ops::Range<i64>, v: Vec<String>) -> RecordBatch {
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

/// Deletes rows (positions) of one live file, as the engine does: the union with its DV, one
/// `.bin`, `remove` + re-`add`, one commit.
async fn delete_rows(table: &mut DeltaTable, path: &str, rows: &[u64]) -> u64 {
    let file = delta::files(table, "id")
        .await
        .unwrap()
        .into_iter()
        .find(|f| f.path == path)
        .unwrap();
    let mut dv: DeletionVector = rows.iter().copied().collect();
    dv.union_with(&delta::read_deletion_vector(table, &file).await.unwrap());
    let delta::DvActions { adds, removes, .. } =
        delta::deletion_vector_actions(table, "t", vec![(file, dv)])
            .await
            .unwrap();
    let mut actions: Vec<Action> = removes.into_iter().map(Action::Remove).collect();
    actions.extend(adds.into_iter().map(Action::Add));
    commit(table, actions).await
}

/// Rows of the table as any reader sees them: each file minus its DV.
async fn read_rows(table: &DeltaTable) -> Vec<i64> {
    let mut ids = Vec::new();
    for f in delta::files(table, "id").await.unwrap() {
        for b in delta::read_live_file(table, &f, 2).await.unwrap() {
            ids.extend(b.column(0).as_primitive::<Int64Type>().values());
        }
    }
    ids.sort_unstable();
    ids
}

fn python() -> Option<PathBuf> {
    if std::env::var("CRDB_DELTA_SKIP_PYTHON").is_ok_and(|v| v == "1") {
        eprintln!("CRDB_DELTA_SKIP_PYTHON=1: the Python deltalake check is skipped");
        return None;
    }
    let p = std::env::var_os("CRDB_DELTA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/python")
        });
    assert!(
        p.exists(),
        "no Python with deltalake at {} (run scripts/test, set CRDB_DELTA_PYTHON, or CRDB_DELTA_SKIP_PYTHON=1)",
        p.display()
    );
    Some(p)
}

/// What Python `deltalake` reads: the rows (DataFusion SQL), the DVs and the protocol.
fn python_reads(table_dir: &std::path::Path) -> Option<Value> {
    let py = python()?;
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
    let mut table = target
        .create_with_deletion_vectors(&schema(), vec![])
        .await
        .unwrap();
    assert!(delta::has_deletion_vectors(&table));
    let p = table.snapshot().unwrap().protocol().clone();
    assert_eq!((p.min_reader_version(), p.min_writer_version()), (3, 7));
    assert_eq!(
        serde_json::to_value(&p).unwrap(),
        json!({"minReaderVersion": 3, "minWriterVersion": 7,
               "readerFeatures": ["deletionVectors"], "writerFeatures": ["deletionVectors"]})
    );

    let adds = append_files(&mut table, &[(0, 5), (5, 10)]).await;
    let (a, b) = (adds[0].path.clone(), adds[1].path.clone());

    // Rows 1 and 3 of file A (ids 1, 3), then row 4 (id 4): the second DV is the union.
    delete_rows(&mut table, &a, &[1, 3]).await;
    let first = delta::files(&table, "id").await.unwrap();
    let first_dv = first.iter().find(|f| f.path == a).unwrap().dv.clone();
    assert_eq!(first_dv.as_ref().unwrap().cardinality, 2);
    delete_rows(&mut table, &a, &[4]).await;
    // Row 0 of file B (id 5).
    let version = delete_rows(&mut table, &b, &[0]).await;

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
    let files = delta::files(&reloaded, "id").await.unwrap();
    assert_eq!(files.len(), 2);
    for f in &files {
        assert!(f.dv.is_some(), "both files carry a DV");
        let expected: Vec<u64> = if f.path == a { vec![1, 3, 4] } else { vec![0] };
        let dv = delta::read_deletion_vector(&reloaded, f).await.unwrap();
        assert_eq!(dv.iter().collect::<Vec<_>>(), expected);
    }
    assert_eq!(read_rows(&reloaded).await, vec![0, 2, 6, 7, 8, 9]);

    // A checkpoint (delta-rs writes one every 100 commits) keeps the descriptors.
    deltalake_core::checkpoints::create_checkpoint(&reloaded, None)
        .await
        .unwrap();
    let from_checkpoint = target.open().await.unwrap().unwrap();
    let dvs: Vec<_> = delta::files(&from_checkpoint, "id")
        .await
        .unwrap()
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
    let mut table = delta::enable_deletion_vectors(table, "t").await.unwrap();
    let protocol = serde_json::to_value(table.snapshot().unwrap().protocol()).unwrap();
    eprintln!("upgraded protocol: {protocol}");
    assert_eq!(protocol["minReaderVersion"], 3);
    assert_eq!(protocol["minWriterVersion"], 7);
    assert_eq!(protocol["readerFeatures"], json!(["deletionVectors"]));

    delete_rows(&mut table, &adds[0].path, &[0, 2]).await;
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

/// A table of one file of `rows` rows (ids from 0), each with 96 incompressible hex characters of
/// `v` beside 8 bytes of `id`: megabytes, well above the whole-file threshold. Returns the table,
/// its file and the values of `v`.
async fn one_wide_file(
    dir: &tempfile::TempDir,
    rows: i64,
) -> (DeltaTable, delta::FileEntry, Vec<String>) {
    let root = Location::open(dir.path().to_str().unwrap()).unwrap();
    let mut table = Target::new(&root, "t")
        .unwrap()
        .create_with_deletion_vectors(&schema(), vec![])
        .await
        .unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let v: Vec<String> = (0..rows)
        .map(|_| (0..6).map(|_| format!("{:016x}", noise())).collect())
        .collect();
    let mut w = Writer::new(&table, u64::MAX).unwrap();
    w.write(batch_of(0..rows, v.clone())).await.unwrap();
    let adds = w.finish().await.unwrap();
    commit(&mut table, adds.iter().cloned().map(Action::Add).collect()).await;
    let f = delta::files(&table, "id").await.unwrap().remove(0);
    assert!(f.size > 2 << 20, "{}", f.size);
    (table, f, v)
}

/// The first column's values of batches of one text column.
fn texts(batches: impl Iterator<Item = Result<RecordBatch, delta::DeltaError>>) -> Vec<String> {
    batches
        .flat_map(|b| {
            let b = b.unwrap();
            let a = b.column(0).as_string::<i32>().clone();
            a.iter().map(|v| v.unwrap().to_owned()).collect::<Vec<_>>()
        })
        .collect()
}

/// A column chunk that begins before the footer's tail (the last 64 KiB, fetched first) and
/// ends inside it is fetched whole: read through either part alone, every value is there.
#[tokio::test]
async fn a_column_reaching_into_the_fetched_tail_reads_whole() {
    let dir = tempfile::tempdir().unwrap();
    // `v` is the file's last column: its chunk runs up to the footer, through the tail.
    let (table, f, v) = one_wide_file(&dir, 40_000).await;
    let size = u64::try_from(f.size).unwrap();
    let col = vec!["v".to_owned()];
    let part = delta::TableFile::fetch_columns(&table, &f.path, size, &col)
        .await
        .unwrap();
    let read = texts(part.batches(Some(&col), 4096).unwrap());
    assert_eq!(read, v);
    let at = texts(
        part.rows_of(Some(&col), &[0, 1, 39_998, 39_999], 4096)
            .unwrap(),
    );
    assert_eq!(
        at,
        [&v[0], &v[1], &v[39_998], &v[39_999]].map(String::clone)
    );
}

/// The engine reads a candidate file's key column by byte ranges (footer + that column's
/// chunks), not the whole file: same rows as a whole read, far fewer bytes; the rest is fetched
/// only when the whole rows are needed.
#[tokio::test]
async fn key_columns_are_read_by_byte_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let (table, f, _) = one_wide_file(&dir, 60_000).await;
    let size = u64::try_from(f.size).unwrap();
    let key = vec!["id".to_owned()];
    let mut part = delta::TableFile::fetch_columns(&table, &f.path, size, &key)
        .await
        .unwrap();
    let whole = delta::TableFile::fetch(&table, &f.path).await.unwrap();
    let ids = |file: &delta::TableFile| -> Vec<i64> {
        file.batches(Some(&key), 4096)
            .unwrap()
            .flat_map(|b| {
                b.unwrap()
                    .column(0)
                    .as_primitive::<Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    };
    assert_eq!(ids(&part), (0..60_000).collect::<Vec<_>>());
    assert_eq!(ids(&part), ids(&whole));
    assert!(
        part.stored_bytes() * 5 < size,
        "{} of {size} bytes fetched for the key column",
        part.stored_bytes()
    );
    assert!(
        part.batches(None, 4096).is_err(),
        "the rest is not fetched yet"
    );
    part.fetch_all(&table).await.unwrap();
    let rows: usize = part
        .batches(None, 4096)
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum();
    assert_eq!(rows, 60_000);
    assert!(
        part.stored_bytes() > size,
        "the parts fetched first count too"
    );
}
