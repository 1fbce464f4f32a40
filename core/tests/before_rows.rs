//! A `diff` changefeed's `before`, decoded as rows of their own ([`Op::Before`]) for scd2:
//! NDJSON's `before` member and Parquet's `__crdb__before` JSONB column give the same values,
//! one row per change that has a previous row, and none unless asked for.

mod common;

use std::collections::BTreeMap;

use arrow_array::cast::AsArray;
use arrow_array::types::Decimal128Type;
use crdb_delta_core::format::batch::{OP, Op, UPDATED};
use crdb_delta_core::format::canonical;
use crdb_delta_core::format::names::{Format, ObjectName};
use crdb_delta_core::sim::SimOptions;
use serde_json::Value;

use common::*;

/// Per (topic, HLC, key): the op codes of the distinct rows decoded for it, and the values of
/// its `before` row (the key columns included).
type Decoded = BTreeMap<(String, i128, String), (Vec<String>, Option<Value>)>;

fn decode_feed(format: Format, before: bool) -> Decoded {
    let sim = simulate(&SimOptions {
        format,
        diff: true,
        initial_rows: 30,
        windows: 5,
        events_per_window: 120,
        duplicate_rate: 0.1,
        file_size: 8 << 10,
        seed: 11,
        ..SimOptions::default()
    });
    let defs: BTreeMap<&str, _> = sim.tables.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut out = Decoded::new();
    for (name, path, bytes) in ordered(&sim.objects) {
        let ObjectName::Data(d) = &name else { continue };
        let def = defs[d.topic.table()];
        let opts = crdb_delta_core::format::decode::DecodeOptions {
            before,
            ..options_for(def)
        };
        for b in decode_all(&name, &path, bytes, &opts) {
            let data = data_columns(&b);
            let ops = b.column_by_name(OP).unwrap().as_string::<i32>().clone();
            let updated = b.column_by_name(UPDATED).unwrap();
            let updated = updated.as_primitive::<Decimal128Type>();
            for (i, row) in canonical::rows(&b, Some(&data)).into_iter().enumerate() {
                let key: Vec<&Value> = def.primary_key.iter().map(|k| &row[k]).collect();
                let id = (
                    d.topic.0.clone(),
                    updated.value(i),
                    serde_json::to_string(&key).unwrap(),
                );
                let entry = out.entry(id).or_default();
                let op = ops.value(i).to_owned();
                if op == Op::Before.code() {
                    // Duplicated messages give the same `before`.
                    let value = Value::Object(row);
                    assert!(
                        entry.1.as_ref().is_none_or(|v| *v == value),
                        "{path}: row {i}"
                    );
                    entry.1 = Some(value);
                } else if !entry.0.contains(&op) {
                    entry.0.push(op);
                }
            }
        }
    }
    out
}

#[test]
fn a_before_reads_the_same_from_ndjson_and_parquet() {
    let json = decode_feed(Format::Json, true);
    let parquet = decode_feed(Format::Parquet, true);
    let befores = json.values().filter(|(_, b)| b.is_some()).count();
    assert!(befores > 100, "the feed has updates and deletes: {befores}");
    // A `before` row exactly for the changes that have a previous row: updates and deletes
    // (`u`, `d`), not inserts, initial-scan rows or backfills (`c`, whose `before` is null).
    for (id, (ops, before)) in &json {
        let had_row = ops.iter().any(|o| o == "u" || o == "d");
        assert_eq!(had_row, before.is_some(), "{id:?}: {ops:?}");
    }
    assert_eq!(json.len(), parquet.len());
    for ((id, a), (id_b, b)) in json.iter().zip(&parquet) {
        assert_eq!(id, id_b);
        assert_eq!(a, b, "{id:?}");
    }
}

#[test]
fn no_before_row_unless_asked_for() {
    for format in [Format::Json, Format::Parquet] {
        let decoded = decode_feed(format, false);
        assert!(!decoded.is_empty());
        assert!(decoded.values().all(|(_, b)| b.is_none()), "{format:?}");
    }
}
