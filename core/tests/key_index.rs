//! The key index finds exactly the rows a scan of the key column finds: every row (duplicates
//! included) whose key is one of the window's, none its deletion vector hides, in file order.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, FieldRef, Schema};
use crdb_delta_core::apply::key_hash;
use crdb_delta_core::deletion_vector::DeletionVector;
use crdb_delta_core::format::types::ColumnType;
use crdb_delta_core::key_index::FileKeys;
use crdb_delta_core::plan::KeyProbe;
use proptest::prelude::*;

fn field(ty: DataType) -> FieldRef {
    Arc::new(Field::new("id", ty, false))
}

/// The file's key column cut into batches of `cut` rows (as a decoder hands them over).
fn batches<T>(values: &[T], cut: usize, array: impl Fn(&[T]) -> ArrayRef) -> Vec<ArrayRef> {
    values.chunks(cut.max(1)).map(array).collect()
}

fn dv_of(hidden: &[u32]) -> DeletionVector {
    let mut dv = DeletionVector::new();
    for &h in hidden {
        dv.insert(u64::from(h));
    }
    dv
}

/// What a scan finds: positions of live rows whose key is wanted.
fn scan<T: PartialEq>(values: &[T], wanted: &[T], dv: &DeletionVector) -> Vec<u64> {
    (0..values.len() as u64)
        .filter(|&p| !dv.contains(p) && wanted.contains(&values[p as usize]))
        .collect()
}

/// Looking the wanted texts up finds the rows a scan finds, and hands back their texts.
fn assert_text_lookup(keys: &FileKeys, values: &[String], wanted: &[String], dv: &DeletionVector) {
    let probe = KeyProbe::new(
        wanted
            .iter()
            .map(|w| serde_json::Value::from(w.as_str()))
            .collect(),
        &ColumnType::Text,
    );
    let (batch, positions) = keys.lookup(&probe, dv).expect("text").expect("batch");
    assert_eq!(positions, scan(values, wanted, dv));
    let got: Vec<&str> = batch
        .column(0)
        .as_string::<i32>()
        .iter()
        .map(Option::unwrap)
        .collect();
    let expected: Vec<&str> = positions
        .iter()
        .map(|&p| values[p as usize].as_str())
        .collect();
    assert_eq!(got, expected);
}

proptest! {
    #[test]
    fn integer_keys_are_found_as_a_scan_finds_them(
        values in prop::collection::vec(-50i64..50, 0..400),
        wanted in prop::collection::vec(-60i64..60, 0..40),
        hidden in prop::collection::vec(0u32..400, 0..60),
        cut in 1usize..97,
        narrow in any::<bool>(),
    ) {
        let dv = dv_of(&hidden);
        let (f, cols) = if narrow {
            (field(DataType::Int32), batches(&values, cut, |c| {
                Arc::new(Int32Array::from_iter_values(c.iter().map(|&v| v as i32))) as ArrayRef
            }))
        } else {
            (field(DataType::Int64), batches(&values, cut, |c| {
                Arc::new(Int64Array::from(c.to_vec())) as ArrayRef
            }))
        };
        let keys = FileKeys::build(f, &cols).expect("indexed");
        prop_assert_eq!(keys.len(), values.len());
        let probe = KeyProbe::new(wanted.iter().map(|&w| w.into()).collect(), &ColumnType::Int64);
        let (batch, positions) = keys.lookup(&probe, &dv).expect("integers").expect("batch");
        prop_assert_eq!(&positions, &scan(&values, &wanted, &dv));
        // The batch holds each found row's key, in the file's type.
        let got: Vec<i64> = if narrow {
            batch.column(0).as_primitive::<Int32Type>().values().iter().map(|&v| v.into()).collect()
        } else {
            batch.column(0).as_primitive::<Int64Type>().values().to_vec()
        };
        let expected: Vec<i64> = positions.iter().map(|&p| values[p as usize]).collect();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn text_keys_are_found_as_a_scan_finds_them(
        values in prop::collection::vec("[a-c]{0,3}|é|\u{1F600}", 0..300),
        wanted in prop::collection::vec("[a-c]{0,3}|é", 0..30),
        hidden in prop::collection::vec(0u32..300, 0..40),
        cut in 1usize..64,
    ) {
        let dv = dv_of(&hidden);
        let cols = batches(&values, cut, |c| Arc::new(StringArray::from(c.to_vec())) as ArrayRef);
        let keys = FileKeys::build(field(DataType::Utf8), &cols).expect("indexed");
        assert_text_lookup(&keys, &values, &wanted, &dv);
    }
}

fn uuid(v: u128) -> String {
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

proptest! {
    /// Canonical UUID texts are held as 16 bytes; the rows found and the texts handed back are
    /// those a scan finds, and texts in another spelling match nothing.
    #[test]
    fn uuid_keys_are_found_as_a_scan_finds_them(
        picks in prop::collection::vec(0usize..60, 0..300),
        wanted in prop::collection::vec((0usize..70, any::<bool>()), 0..30),
        hidden in prop::collection::vec(0u32..300, 0..40),
        cut in 1usize..64,
        seed in any::<u128>(),
    ) {
        // 60 distinct random UUIDs, some picked many times; the same bits in upper case match
        // no row.
        let pool: Vec<String> = (0..70u128)
            .map(|i| uuid(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(i as u32) ^ i))
            .collect();
        let values: Vec<String> = picks.iter().map(|&p| pool[p].clone()).collect();
        let wanted: Vec<String> = wanted
            .iter()
            .map(|&(p, upper)| if upper { pool[p].to_uppercase() } else { pool[p].clone() })
            .collect();
        let dv = dv_of(&hidden);
        let cols = batches(&values, cut, |c| Arc::new(StringArray::from(c.to_vec())) as ArrayRef);
        let keys = FileKeys::build(field(DataType::Utf8), &cols).expect("indexed");
        // 16 bytes a row (and a 4-byte position unless in key order), not the text; and the
        // search: every 64th key again (the fence, 16 bytes per 64 keys), or a directory of 4
        // bytes per bucket of about 8 keys (at most 8 bytes per 8 keys, and its end).
        let n = values.len() as u64;
        let in_order = values.windows(2).all(|w| w[0] <= w[1]);
        let rows = if in_order { 16 * n } else { 20 * n };
        let search = keys.bytes() - rows;
        prop_assert!(search == 16 * n.div_ceil(64) || search <= n + 4, "{} bytes", search);
        assert_text_lookup(&keys, &values, &wanted, &dv);
    }
}

#[test]
fn keys_that_cannot_be_indexed_are_refused() {
    // Another type.
    let floats: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 2.0]));
    assert!(FileKeys::build(field(DataType::Float64), &[floats]).is_none());
    // A null key.
    let nulls: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None]));
    assert!(FileKeys::build(field(DataType::Int64), &[nulls]).is_none());
    // A batch of another type than the field.
    let ints: ArrayRef = Arc::new(Int32Array::from(vec![1]));
    assert!(FileKeys::build(field(DataType::Int64), &[ints]).is_none());
}

#[test]
fn window_keys_of_another_kind_are_not_looked_up() {
    let ints: ArrayRef = Arc::new(Int64Array::from(vec![3, 1, 2]));
    let keys = FileKeys::build(field(DataType::Int64), &[ints]).expect("indexed");
    // The engine uses an index only for the key column it was learned from.
    let id = ["id".to_owned()];
    assert!(keys.is_of(&id, &[]) && !keys.is_of(&["other".to_owned()], &[]));
    let texts = KeyProbe::new(vec!["1".into()], &ColumnType::Text);
    assert!(keys.lookup(&texts, &DeletionVector::new()).is_none());
    let probe = KeyProbe::new(vec![1.into(), 3.into(), 4.into()], &ColumnType::Int64);
    let (_, positions) = keys
        .lookup(&probe, &DeletionVector::new())
        .expect("integers")
        .expect("batch");
    assert_eq!(positions, vec![0, 1]);
    // 3 integers: their 8 bytes and a 4-byte position each, and the fence's one key; in key
    // order, no positions.
    assert_eq!(keys.bytes(), 44);
    let ordered: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
    let ordered = FileKeys::build(field(DataType::Int64), &[ordered]).expect("indexed");
    assert_eq!(ordered.bytes(), 32);
}

/// A large file searched both ways: keys spread evenly over their range (through a directory
/// of buckets: runs of one key across bucket boundaries) and keys bunched at one end (the
/// fence: runs across its 64-key blocks); keys wanted before, between and after the file's:
/// found as a scan finds them.
#[test]
fn a_large_file_is_searched_through_its_directory_or_its_fence() {
    // Keys 0, 0, 0, 3, 3, 3, 6, ...: evenly spread.
    let even: Vec<i64> = (0..200_000i64).map(|i| (i / 3) * 3).collect();
    // The same, then one key far above them all: every key but one in the first bucket.
    let mut bunched = even.clone();
    *bunched.last_mut().unwrap() = i64::MAX;
    // 8 bytes a key; a directory of 32,769 buckets (4 bytes each) or every 64th key (8 bytes).
    for (values, search_bytes) in [(even, 4 * 32_769), (bunched, 8 * 3_125)] {
        searched_as_a_scan(&values, search_bytes);
    }
}

fn searched_as_a_scan(values: &[i64], search_bytes: u64) {
    let cols = batches(values, 8192, |c| {
        Arc::new(Int64Array::from(c.to_vec())) as ArrayRef
    });
    let keys = FileKeys::build(field(DataType::Int64), &cols).expect("indexed");
    assert_eq!(keys.bytes(), 8 * values.len() as u64 + search_bytes);
    let wanted: Vec<i64> = (-10..200_010i64).step_by(97).chain([i64::MAX]).collect();
    let dv = dv_of(&(0..200_000u32).step_by(11).collect::<Vec<_>>());
    let probe = KeyProbe::new(
        wanted.iter().map(|&w| w.into()).collect(),
        &ColumnType::Int64,
    );
    let (_, positions) = keys.lookup(&probe, &dv).expect("integers").expect("batch");
    let set: std::collections::HashSet<i64> = wanted.into_iter().collect();
    let expected: Vec<u64> = (0..values.len() as u64)
        .filter(|&p| !dv.contains(p) && set.contains(&values[p as usize]))
        .collect();
    assert!(expected.len() > 500);
    assert_eq!(positions, expected);
}

/// `(region, id)` keys as a REGIONAL BY ROW table's, in batches of `cut` rows. The file has
/// `crdb_region` last, as CockroachDB adds it, though it comes first in the key.
fn regional(values: &[(u8, i64)], cut: usize) -> Vec<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("crdb_region", DataType::Utf8, false),
    ]));
    values
        .chunks(cut.max(1))
        .map(|c| {
            let region: ArrayRef = Arc::new(StringArray::from_iter_values(
                c.iter().map(|(r, _)| REGIONS[*r as usize]),
            ));
            let id: ArrayRef = Arc::new(Int64Array::from_iter_values(c.iter().map(|(_, i)| *i)));
            RecordBatch::try_new(schema.clone(), vec![id, region]).unwrap()
        })
        .collect()
}

/// The key of [`regional`] files, in key order.
fn region_key() -> [String; 2] {
    ["crdb_region".to_owned(), "id".to_owned()]
}

fn hashed(batches: &[RecordBatch], types: &[ColumnType]) -> Option<FileKeys> {
    FileKeys::build_hashed(batches, &region_key(), types)
}

const REGIONS: [&str; 3] = ["europe-west1", "us-east1", "us-west\"1"];

/// The window's probe of `(region, id)` keys: the first column's values, and every key's text
/// (`["us-east1",7]`, as serde_json prints it) hashed.
fn regional_probe(wanted: &[(u8, i64)]) -> KeyProbe {
    let first = wanted
        .iter()
        .map(|(r, _)| serde_json::Value::from(REGIONS[*r as usize]))
        .collect();
    let mut hashes: Vec<u64> = wanted
        .iter()
        .map(|(r, i)| key_hash(&serde_json::json!([REGIONS[*r as usize], i]).to_string()))
        .collect();
    hashes.sort_unstable();
    hashes.dedup();
    KeyProbe::new(first, &ColumnType::Text).with_key_hashes(hashes)
}

proptest! {
    /// A key of two columns is held by its text's hash: looking the window's keys up finds the
    /// rows a scan finds (a hash collision would add a row, which the merge then does not match:
    /// none occurs among these few keys), and hands back both key columns of those rows.
    #[test]
    fn keys_of_two_columns_are_found_as_a_scan_finds_them(
        values in prop::collection::vec((0u8..3, -20i64..20), 0..400),
        wanted in prop::collection::vec((0u8..3, -25i64..25), 0..40),
        hidden in prop::collection::vec(0u32..400, 0..60),
        cut in 1usize..97,
    ) {
        let dv = dv_of(&hidden);
        let types = [ColumnType::Text, ColumnType::Int64];
        let keys = hashed(&regional(&values, cut), &types);
        let Some(keys) = keys else {
            prop_assert!(values.is_empty());
            return Ok(());
        };
        let names = region_key();
        prop_assert!(keys.is_of(&names, &types));
        // Printed in other types, the texts differ: not used.
        prop_assert!(!keys.is_of(&names, &[ColumnType::Text, ColumnType::Text]));
        let (batch, positions) = keys
            .lookup(&regional_probe(&wanted), &dv)
            .expect("hashed")
            .expect("batch");
        prop_assert_eq!(&positions, &scan(&values, &wanted, &dv));
        let region = batch.column(0).as_string::<i32>();
        let id = batch.column(1).as_primitive::<Int64Type>();
        for (j, &p) in positions.iter().enumerate() {
            let (r, i) = values[p as usize];
            prop_assert_eq!(region.value(j), REGIONS[r as usize]);
            prop_assert_eq!(id.value(j), i);
        }
        // Without the window's hashes (one integer or text key) nothing is looked up.
        let first_only = KeyProbe::new(vec!["us-east1".into()], &ColumnType::Text);
        prop_assert!(keys.lookup(&first_only, &dv).is_none());
    }
}

#[test]
fn hashed_keys_that_cannot_be_indexed_are_refused() {
    let types = [ColumnType::Text, ColumnType::Int64];
    // A null key column.
    let schema = Arc::new(Schema::new(vec![
        Field::new("crdb_region", DataType::Utf8, true),
        Field::new("id", DataType::Int64, false),
    ]));
    let nulls = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![Some("us-east1"), None])),
            Arc::new(Int64Array::from(vec![1, 2])),
        ],
    )
    .unwrap();
    assert!(hashed(&[nulls], &types).is_none());
    // A file without one of the key's columns.
    let id_only = regional(&[(0, 1)], 1)[0].project(&[0]).unwrap();
    assert!(hashed(&[id_only], &types).is_none());
    // Types of another key.
    assert!(hashed(&regional(&[(0, 1)], 1), &types[..1]).is_none());
    // A value that does not convert to the layout's type.
    assert!(
        hashed(
            &regional(&[(0, 1)], 1),
            &[ColumnType::Int64, ColumnType::Int64]
        )
        .is_none()
    );
}

/// A region column (few distinct texts) is held as 2-byte codes: a row of `(region, id)` costs
/// its hash (8), position (4), code (2) and id (8), not the region's text and offset.
#[test]
fn a_region_column_is_held_as_codes_and_handed_back_as_text() {
    let values: Vec<(u8, i64)> = (0..6400).map(|i| ((i % 3) as u8, i)).collect();
    let types = [ColumnType::Text, ColumnType::Int64];
    let keys = hashed(&regional(&values, 1000), &types).expect("indexed");
    assert!(keys.bytes() < 6400 * 24, "{} bytes", keys.bytes());
    // The last is an id in another region: not found.
    let wanted = [(1u8, 4i64), (2, 6398), (1, 6399)];
    let (batch, positions) = keys
        .lookup(&regional_probe(&wanted), &DeletionVector::new())
        .expect("hashed")
        .expect("batch");
    assert_eq!(positions, vec![4, 6398]);
    assert_eq!(batch.schema().field(0).data_type(), &DataType::Utf8);
    let region = batch.column(0).as_string::<i32>();
    assert_eq!((region.value(0), region.value(1)), (REGIONS[1], REGIONS[2]));
}

/// A large file of hashed keys (many buckets of its directory, duplicate keys, hidden rows):
/// found as a scan finds them.
#[test]
fn a_large_file_of_hashed_keys_is_searched_through_its_directory() {
    // Every id twice (in two batches' worth apart), in three regions.
    let values: Vec<(u8, i64)> = (0..200_000i64)
        .map(|i| ((i % 3) as u8, i % 100_000))
        .collect();
    let types = [ColumnType::Text, ColumnType::Int64];
    let keys = hashed(&regional(&values, 8192), &types).expect("indexed");
    let wanted: Vec<(u8, i64)> = (-10..100_010i64)
        .step_by(37)
        .map(|i| ((i.rem_euclid(3)) as u8, i))
        .collect();
    let dv = dv_of(&(0..200_000u32).step_by(11).collect::<Vec<_>>());
    let (_, positions) = keys
        .lookup(&regional_probe(&wanted), &dv)
        .expect("hashed")
        .expect("batch");
    let set: std::collections::HashSet<(u8, i64)> = wanted.into_iter().collect();
    let expected: Vec<u64> = (0..values.len() as u64)
        .filter(|&p| !dv.contains(p) && set.contains(&values[p as usize]))
        .collect();
    assert!(expected.len() > 1000);
    assert_eq!(positions, expected);
}

/// A key whose columns the file holds in another order (key `(b, a)`, file `a, b`; both
/// integers, so texts printed in file order would still convert, and would miss every row).
#[test]
fn key_columns_are_taken_in_key_order_not_the_files() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, false),
        Field::new("b", DataType::Int64, false),
    ]));
    let a: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
    let b: ArrayRef = Arc::new(Int64Array::from(vec![10, 20, 30]));
    let file = RecordBatch::try_new(schema, vec![a, b]).unwrap();
    let key = ["b".to_owned(), "a".to_owned()];
    let types = [ColumnType::Int64, ColumnType::Int64];
    let keys = FileKeys::build_hashed(&[file], &key, &types).expect("indexed");
    assert!(keys.is_of(&key, &types));
    let probe = KeyProbe::new(vec![20.into()], &ColumnType::Int64)
        .with_key_hashes(vec![key_hash("[20,2]")]);
    let (batch, positions) = keys
        .lookup(&probe, &DeletionVector::new())
        .expect("hashed")
        .expect("batch");
    assert_eq!(positions, vec![1]);
    assert_eq!(batch.schema().field(0).name(), "b");
}
