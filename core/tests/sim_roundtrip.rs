//! Simulator → reader: decoding a simulated changefeed gives back exactly the ground-truth events,
//! and the simulated files keep CockroachDB's ordering promises (format spec §2).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use arrow_array::cast::AsArray;
use arrow_array::types::Decimal128Type;
use crdb_delta_core::Hlc;
use crdb_delta_core::format::batch::{OP, UPDATED};
use crdb_delta_core::format::canonical;
use crdb_delta_core::format::decode::resolved::decode_resolved;
use crdb_delta_core::format::names::{Compression, Format, ObjectName, PartitionFormat};
use crdb_delta_core::sim::SimOptions;
use serde_json::{Value, json};

use common::*;

/// (topic, op, updated, key, after) for every decoded row, and the same from the truth.
fn roundtrip(opts: &SimOptions) {
    let sim = simulate(opts);
    let defs: BTreeMap<&str, _> = sim.tables.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut decoded: Vec<String> = Vec::new();
    let mut seen: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut resolved_so_far = Hlc::default();
    let mut rows = 0usize;
    for (name, path, bytes) in ordered(&sim.objects) {
        let d = match &name {
            ObjectName::Resolved(ts) => {
                let got = decode_resolved(&path, bytes::Bytes::copy_from_slice(bytes), Some(*ts))
                    .unwrap();
                assert_eq!(got, *ts);
                resolved_so_far = *ts;
                continue;
            }
            ObjectName::Data(d) => d.clone(),
        };
        let def = defs[d.topic.table()];
        let family = d.topic.family().unwrap_or("primary").to_owned();
        for b in decode_all(&name, &path, bytes, &options_for(def)) {
            let data = data_columns(&b);
            let values = canonical::rows(&b, Some(&data));
            let ops = b.column_by_name(OP).unwrap().as_string::<i32>().clone();
            let upd = b
                .column_by_name(UPDATED)
                .unwrap()
                .as_primitive::<Decimal128Type>()
                .clone();
            for (i, row) in values.into_iter().enumerate() {
                rows += 1;
                let updated = Hlc::from_decimal_i128(upd.value(i)).unwrap();
                // §2.6: a row's timestamp is at least its file's name timestamp.
                assert!(
                    updated >= d.ts,
                    "{path}: row {i} at {updated} before file ts {}",
                    d.ts
                );
                let key: Vec<Value> = def.primary_key.iter().map(|k| row[k].clone()).collect();
                let op = ops.value(i).to_owned();
                let after = if op == "d" {
                    Value::Null
                } else {
                    Value::Object(row)
                };
                let id = (
                    d.topic.0.clone(),
                    updated.to_string(),
                    json!(key).to_string(),
                );
                let fresh = seen.insert(id);
                // §2.4: nothing unseen at or below a RESOLVED that was already written.
                assert!(
                    !fresh || updated > resolved_so_far,
                    "{path}: unseen row at {updated} after RESOLVED {resolved_so_far}"
                );
                if fresh {
                    decoded.push(json!({"topic": d.topic.0, "family": family, "op": op, "updated": updated, "key": key, "after": after}).to_string());
                }
            }
        }
    }
    let mut truth: Vec<String> = Vec::new();
    for def in &sim.tables {
        let events = std::str::from_utf8(&sim.truth[&format!("{}/events.ndjson", def.name)])
            .unwrap()
            .to_owned();
        for line in events.lines() {
            let mut e: Value = serde_json::from_str(line).unwrap();
            let e = e.as_object_mut().unwrap();
            e.remove("backfill");
            e.remove("schema_id");
            truth.push(Value::Object(e.clone()).to_string());
        }
    }
    decoded.sort();
    truth.sort();
    assert!(
        rows > decoded.len(),
        "the workload should contain duplicates"
    );
    assert_eq!(decoded.len(), truth.len());
    for (a, b) in decoded.iter().zip(&truth) {
        assert_eq!(a, b);
    }
}

fn small() -> SimOptions {
    SimOptions {
        initial_rows: 30,
        windows: 5,
        events_per_window: 120,
        duplicate_rate: 0.1,
        file_size: 8 << 10,
        ..SimOptions::default()
    }
}

#[test]
fn json_roundtrip() {
    roundtrip(&small());
}

#[test]
fn json_gzip_hourly_with_mvcc_and_diff() {
    roundtrip(&SimOptions {
        compression: Compression::Gzip,
        partition: PartitionFormat::Hourly,
        mvcc_timestamp: true,
        diff: true,
        seed: 7,
        ..small()
    });
}

#[test]
fn json_zstd_flat() {
    roundtrip(&SimOptions {
        compression: Compression::Zstd,
        partition: PartitionFormat::Flat,
        seed: 3,
        ..small()
    });
}

#[test]
fn parquet_roundtrip() {
    roundtrip(&SimOptions {
        format: Format::Parquet,
        ..small()
    });
}

#[test]
fn parquet_zstd_with_mvcc() {
    roundtrip(&SimOptions {
        format: Format::Parquet,
        compression: Compression::Zstd,
        mvcc_timestamp: true,
        seed: 11,
        ..small()
    });
}

#[test]
fn simulation_is_deterministic_and_exercises_the_behaviours() {
    let a = simulate(&small());
    let b = simulate(&small());
    assert_eq!(a.objects, b.objects);
    let names: Vec<ObjectName> = a
        .objects
        .keys()
        .map(|p| ObjectName::parse_relative(p).unwrap().0)
        .collect();
    let data: Vec<_> = names
        .iter()
        .filter_map(|n| match n {
            ObjectName::Data(d) => Some(d),
            _ => None,
        })
        .collect();
    let sessions: BTreeSet<_> = data.iter().map(|d| &d.session).collect();
    assert!(
        sessions.len() >= 4,
        "two aggregators before and after the restart: {sessions:?}"
    );
    assert!(data.iter().any(|d| d.file_id > 0), "file_size rollover");
    assert!(
        data.iter().any(|d| d.topic.0 == "orders+details"),
        "family topics"
    );
    let versions: BTreeSet<_> = data
        .iter()
        .filter(|d| d.topic.0 == "usertable")
        .map(|d| d.schema_id)
        .collect();
    assert_eq!(versions.len(), 2, "ADD COLUMN under a new schema id");
    assert_eq!(
        names
            .iter()
            .filter(|n| matches!(n, ObjectName::Resolved(_)))
            .count(),
        6
    );
}
