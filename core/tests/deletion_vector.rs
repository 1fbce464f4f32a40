//! Deletion vectors: round trips through the bitmap, the `.bin` file and inline descriptors, and
//! the two Databricks-written tables of `fixtures_dv` (see its SOURCE.md) decoded and re-encoded
//! byte for byte.

use std::fs;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use crdb_delta_core::deletion_vector::{
    DeletionVector, DeletionVectorDescriptor, DvError, DvFileBuilder, DvLocation, PORTABLE_MAGIC,
    StorageType, Uuid,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::{Rng, SeedableRng};
use roaring::RoaringTreemap;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures_dv")
}

/// Every way we store a DV gives back the same rows.
fn round_trip(dv: &DeletionVector) {
    let bytes = dv.to_bitmap_bytes();
    assert_eq!(&bytes[..4], &PORTABLE_MAGIC.to_le_bytes());
    assert_eq!(&DeletionVector::from_bitmap_bytes(&bytes).unwrap(), dv);

    // Without run containers, our bitmap is the magic followed by exactly the `roaring`
    // crate's own treemap serialization.
    let mut crate_bytes = Vec::new();
    RoaringTreemap::from_bitmaps(dv.treemap().bitmaps().map(|(k, b)| {
        let mut b = b.clone();
        b.remove_run_compression();
        (k, b)
    }))
    .serialize_into(&mut crate_bytes)
    .unwrap();
    assert_eq!(&bytes[4..], &crate_bytes[..]);

    // A file holding it twice, after another DV: offsets point at each size field.
    let other: DeletionVector = [3u64, 4, 5].into_iter().collect();
    let uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    let mut file = DvFileBuilder::new(uuid, "ab").unwrap();
    let d0 = file.push(&other).unwrap();
    let d1 = file.push(dv).unwrap();
    let d2 = file.push(dv).unwrap();
    assert_eq!(
        file.relative_path(),
        "ab/deletion_vector_01234567-89ab-cdef-0123-456789abcdef.bin"
    );
    let bin = file.finish();
    assert_eq!(bin[0], 1);
    assert_eq!(d0.offset, Some(1));
    assert_eq!(d1.offset, Some(1 + 4 + d0.size_in_bytes + 4));
    assert_eq!(
        d2.offset,
        Some(d1.offset.unwrap() + 4 + d1.size_in_bytes + 4)
    );
    assert_eq!(
        bin.len() as i32,
        d2.offset.unwrap() + 4 + d2.size_in_bytes + 4
    );
    assert_eq!(d1.size_in_bytes as usize, bytes.len());
    assert_eq!(d1.cardinality as u64, dv.cardinality());
    assert_eq!(d0.read_from_file(&bin).unwrap(), other);
    assert_eq!(&d1.read_from_file(&bin).unwrap(), dv);
    assert_eq!(&d2.read_from_file(&bin).unwrap(), dv);
    assert_eq!(
        d1.location().unwrap(),
        DvLocation::Relative("ab/deletion_vector_01234567-89ab-cdef-0123-456789abcdef.bin".into())
    );

    // Inline.
    let inline = DeletionVectorDescriptor::inline(dv).unwrap();
    assert_eq!(inline.storage_type, StorageType::Inline);
    assert_eq!(inline.size_in_bytes as usize, bytes.len());
    assert_eq!(inline.path_or_inline_dv.len(), bytes.len().div_ceil(4) * 5);
    assert_eq!(&inline.read_inline().unwrap(), dv);

    // The descriptor's JSON is Delta's.
    let json = serde_json::to_value(&d1).unwrap();
    assert_eq!(json["storageType"], "u");
    assert_eq!(
        serde_json::from_value::<DeletionVectorDescriptor>(json).unwrap(),
        d1
    );
    let json = serde_json::to_value(&inline).unwrap();
    assert!(json.get("offset").is_none());
}

#[test]
fn empty() {
    let dv = DeletionVector::new();
    round_trip(&dv);
    // magic + zero buckets
    assert_eq!(dv.to_bitmap_bytes().len(), 12);
    assert_eq!(dv.keep_mask(0, 3).true_count(), 3);
}

#[test]
fn one_row() {
    for p in [0, 1, 65_535, 65_536, u32::MAX as u64, 1 << 32, u64::MAX] {
        let dv: DeletionVector = [p].into_iter().collect();
        round_trip(&dv);
        assert_eq!(dv.iter().collect::<Vec<_>>(), vec![p]);
    }
}

#[test]
fn dense_ranges() {
    for range in [0..100, 0..100_000, 65_530..70_000, 1_000_000..3_000_000] {
        let mut dv = DeletionVector::new();
        dv.insert_range(range.clone());
        round_trip(&dv);
        assert_eq!(dv.cardinality(), range.end - range.start);
        // `insert_range` builds run containers; we write bitset containers instead: at most
        // 8 KiB per 65,536 rows.
        let buckets = (range.end - 1) / 65_536 - range.start / 65_536 + 1;
        assert!(dv.to_bitmap_bytes().len() as u64 <= 4 + 8 + 4 + 8 + buckets * (8 + 8192));
    }
}

#[test]
fn sparse_beyond_32_bits() {
    let positions = [
        7,
        (1 << 32) - 1,
        1 << 32,
        (1 << 32) + 5,
        (7 << 32) + 65_536,
        (1 << 40) + 3,
        u64::MAX - 1,
    ];
    let dv: DeletionVector = positions.into_iter().collect();
    round_trip(&dv);
    assert_eq!(dv.iter().collect::<Vec<_>>(), positions);
    // One bucket per distinct high half (0, 1, 7, 256, 2^32-1); none for the gaps.
    let bytes = dv.to_bitmap_bytes();
    assert_eq!(u64::from_le_bytes(bytes[4..12].try_into().unwrap()), 5);
}

#[test]
fn random_100k() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let positions: Vec<u64> = (0..100_000)
        .map(|_| rng.random_range(0..5_000_000))
        .collect();
    let dv: DeletionVector = positions.iter().copied().collect();
    round_trip(&dv);
    let mut sorted = positions.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(dv.iter().collect::<Vec<_>>(), sorted);

    // keep_mask over batches covers exactly the complement.
    let mut kept = 0;
    for first in (0..5_000_000u64).step_by(8192) {
        let len = 8192.min(5_000_000 - first) as usize;
        let mask = dv.keep_mask(first, len);
        for (i, keep) in mask.iter().enumerate() {
            assert_eq!(keep.unwrap(), !dv.contains(first + i as u64));
        }
        kept += mask.true_count();
    }
    assert_eq!(kept as u64, 5_000_000 - dv.cardinality());
}

#[test]
fn union_of_two_deletes() {
    let a: DeletionVector = [1u64, 5, 9].into_iter().collect();
    let b: DeletionVector = [5u64, 6, 1 << 33].into_iter().collect();
    let mut u = a.clone();
    u.union_with(&b);
    assert_eq!(u.iter().collect::<Vec<_>>(), vec![1, 5, 6, 9, 1 << 33]);
    round_trip(&u);
}

#[test]
fn corrupt_files_are_refused() {
    let dv: DeletionVector = [1u64, 2, 3].into_iter().collect();
    let mut file = DvFileBuilder::new(Uuid::nil(), "").unwrap();
    let d = file.push(&dv).unwrap();
    let bin = file.finish();

    let mut bad = bin.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert!(matches!(
        d.read_from_file(&bad),
        Err(DvError::Checksum { .. })
    ));
    let mut bad = bin.clone();
    bad[0] = 2;
    assert_eq!(d.read_from_file(&bad), Err(DvError::Version(2)));
    let mut bad = bin.clone();
    bad[12] ^= 0xff; // inside the bitmap: the checksum catches it
    assert!(matches!(
        d.read_from_file(&bad),
        Err(DvError::Checksum { .. })
    ));
    assert!(matches!(
        d.read_from_file(&bin[..bin.len() - 1]),
        Err(DvError::OutOfBounds { .. })
    ));
    let wrong_size = DeletionVectorDescriptor {
        size_in_bytes: d.size_in_bytes - 1,
        ..d.clone()
    };
    assert!(matches!(
        wrong_size.read_from_file(&bin),
        Err(DvError::Size { .. })
    ));
    let wrong_card = DeletionVectorDescriptor {
        cardinality: 4,
        ..d.clone()
    };
    assert!(matches!(
        wrong_card.read_from_file(&bin),
        Err(DvError::Cardinality { .. })
    ));
    assert!(matches!(
        DeletionVector::from_bitmap_bytes(&[0, 0, 0, 0, 0, 0, 0, 0]),
        Err(DvError::Magic(0))
    ));
    assert!(DvFileBuilder::new(Uuid::nil(), "../x").is_err());
    assert!("x".parse::<StorageType>().is_err());
}

/// The `add` actions of a table's log, last one per path.
fn live_adds(table: &Path) -> Vec<Value> {
    let mut logs: Vec<_> = fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    logs.sort();
    let mut live: Vec<Value> = Vec::new();
    for log in logs {
        for line in fs::read_to_string(log).unwrap().lines() {
            let action: Value = serde_json::from_str(line).unwrap();
            if let Some(r) = action.get("remove") {
                live.retain(|a| a["path"] != r["path"]);
            }
            if let Some(a) = action.get("add") {
                live.retain(|l| l["path"] != a["path"]);
                live.push(a.clone());
            }
        }
    }
    live
}

struct FixtureDv {
    table: PathBuf,
    add: Value,
    descriptor: DeletionVectorDescriptor,
    dv: DeletionVector,
}

fn fixture_dvs(name: &str) -> Vec<FixtureDv> {
    let table = fixtures().join(name);
    live_adds(&table)
        .into_iter()
        .filter(|a| a.get("deletionVector").is_some())
        .map(|add| {
            let descriptor: DeletionVectorDescriptor =
                serde_json::from_value(add["deletionVector"].clone()).unwrap();
            let DvLocation::Relative(rel) = descriptor.location().unwrap() else {
                panic!("Databricks writes `u` DVs")
            };
            let dv = descriptor
                .read_from_file(&fs::read(table.join(rel)).unwrap())
                .unwrap();
            FixtureDv {
                table: table.clone(),
                add,
                descriptor,
                dv,
            }
        })
        .collect()
}

/// Rows of a data file minus its DV, in file order, as a column's i64 values.
fn surviving(f: &FixtureDv, column: &str) -> Vec<i64> {
    let file = fs::File::open(f.table.join(f.add["path"].as_str().unwrap())).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .with_batch_size(3) // several batches: keep_mask offsets are exercised
        .build()
        .unwrap();
    let mut out = Vec::new();
    let mut row = 0u64;
    for batch in reader {
        let batch = batch.unwrap();
        let mask = f.dv.keep_mask(row, batch.num_rows());
        row += batch.num_rows() as u64;
        let kept = arrow_select::filter::filter_record_batch(&batch, &mask).unwrap();
        let col = kept.column_by_name(column).unwrap();
        match col.data_type() {
            arrow_schema::DataType::Int32 => out.extend(
                col.as_primitive::<Int32Type>()
                    .values()
                    .iter()
                    .map(|&v| v as i64),
            ),
            _ => out.extend(col.as_primitive::<Int64Type>().values().iter().copied()),
        }
    }
    let stats: Value = serde_json::from_str(f.add["stats"].as_str().unwrap()).unwrap();
    assert_eq!(
        row,
        stats["numRecords"].as_u64().unwrap(),
        "rows read = numRecords in the log"
    );
    out
}

/// Re-encoding the decoded rows gives Databricks' file and descriptor byte for byte.
fn reencodes_byte_for_byte(f: &FixtureDv) {
    let (prefix, uuid) = f.descriptor.prefix_and_uuid().unwrap();
    let mut file = DvFileBuilder::new(uuid, prefix).unwrap();
    let ours = file.push(&f.dv).unwrap();
    assert_eq!(ours, f.descriptor);
    let DvLocation::Relative(rel) = f.descriptor.location().unwrap() else {
        unreachable!()
    };
    assert_eq!(file.relative_path(), rel);
    let theirs = fs::read(f.table.join(&rel)).unwrap();
    assert_eq!(file.finish(), theirs, "{rel}");
    // And the bitmap + checksum alone.
    let start = ours.offset.unwrap() as usize + 4;
    let end = start + ours.size_in_bytes as usize;
    assert_eq!(f.dv.to_bitmap_bytes(), &theirs[start..end]);
}

#[test]
fn databricks_table_with_dv_small() {
    let dvs = fixture_dvs("table-with-dv-small");
    assert_eq!(dvs.len(), 1);
    let f = &dvs[0];
    assert_eq!(
        f.descriptor.location().unwrap(),
        DvLocation::Relative("deletion_vector_61d16c75-6994-46b7-a15b-8b538852e50e.bin".into())
    );
    assert_eq!(f.dv.iter().collect::<Vec<_>>(), vec![0, 9]);
    assert_eq!(f.descriptor.cardinality, 2);
    // DELETE … WHERE value IN (0, 9): 8 rows left, those of kernel's expected data.
    assert_eq!(surviving(f, "value"), (1..=8).collect::<Vec<_>>());
    reencodes_byte_for_byte(f);
}

#[test]
fn databricks_with_short_dv() {
    let dvs = fixture_dvs("with-short-dv");
    assert_eq!(dvs.len(), 1, "only the first of the 2 files has a DV");
    let f = &dvs[0];
    assert!(
        f.add["path"]
            .as_str()
            .unwrap()
            .starts_with("part-00000-8029f411")
    );
    assert_eq!(f.dv.iter().collect::<Vec<_>>(), vec![0, 1, 2]);
    // ids 3 and 4 of the first file survive; with the second file's 5–9 that is kernel's
    // expected 3..=9.
    assert_eq!(surviving(f, "id"), vec![3, 4]);
    reencodes_byte_for_byte(f);
}

#[test]
fn databricks_descriptor_json() {
    for name in ["table-with-dv-small", "with-short-dv"] {
        for f in fixture_dvs(name) {
            let ours = serde_json::to_value(&f.descriptor).unwrap();
            let theirs = &f.add["deletionVector"];
            assert_eq!(&ours, theirs);
            assert_eq!(
                f.descriptor.unique_id(),
                format!(
                    "u{}@{}",
                    theirs["pathOrInlineDv"].as_str().unwrap(),
                    theirs["offset"]
                )
            );
        }
    }
}

/// A batch read at a file position keeps its live rows and says where each one sits in the
/// file (where the engine marks a row it supersedes).
#[test]
fn live_rows_keep_the_file_positions() {
    use std::sync::Arc;
    let dv: DeletionVector = [1u64, 4, 5].into_iter().collect();
    let ids = arrow_array::Int64Array::from_iter_values(3..7);
    let batch =
        arrow_array::RecordBatch::try_from_iter([("id", Arc::new(ids) as arrow_array::ArrayRef)])
            .unwrap();
    // Rows 3..7 of the file: 4 and 5 are deleted.
    let (live, positions) = dv.live_rows(&batch, 3).unwrap();
    assert_eq!(positions, [3, 6]);
    assert_eq!(live.column(0).as_primitive::<Int64Type>().values(), &[3, 6]);
    // A batch the vector does not touch comes back whole.
    let (same, positions) = dv.live_rows(&batch, 10).unwrap();
    assert_eq!((same.num_rows(), positions), (4, vec![10, 11, 12, 13]));
}
