//! A slice's decoder skipping the other slices' rows ([`SliceFilter`]) leaves the window with
//! exactly what it keeps without the filter: the same changes, layout, rows counted and rows
//! past the RESOLVED, for every table, interval and slice of a simulated Parquet or NDJSON
//! changefeed (split column families, duplicates, deletes, and `mvcc_timestamp` or the bare
//! envelope in some of them); and so does a slice given each file's key slices as another
//! slice's pass found them ([`SliceRows`]): Parquet then reads no key column, NDJSON parses
//! only the lines it keeps (with types learnt from the values, batch by batch).

mod common;

use crdb_delta_core::Hlc;
use crdb_delta_core::apply::{Mode, Window, writer};
use crdb_delta_core::format::canonical;
use crdb_delta_core::format::decode::{self, DecodeOptions, SliceFilter, SliceRows};
use crdb_delta_core::format::names::{Format, ObjectName};
use crdb_delta_core::sim::SimOptions;
use crdb_delta_core::sim::model::TableDef;
use std::collections::HashMap;
use std::sync::Arc;

use common::*;

/// What a window kept: its layout, rows read and past the RESOLVED, and every change as the
/// append_only rows it writes (one per distinct change).
#[derive(Debug, PartialEq)]
struct Kept {
    layout: String,
    rows_read: u64,
    later: usize,
    changes: Vec<String>,
}

/// Each file's key slices as a pass found them ([`SliceRows`]), by path.
type Found = HashMap<String, Arc<SliceRows>>;

/// What the window keeps of `def`'s rows in `lo..=hi` for `slice` (index, of), each file
/// decoded with (`filter`) or without the slice filter, and with the slices `known` holds for
/// it; also the rows skipped and what each file's decoder found (or was given).
#[allow(clippy::too_many_arguments)]
fn window_known(
    sim: &Simulated,
    def: &TableDef,
    lo: Option<Hlc>,
    hi: Hlc,
    slice: (u32, u32),
    filter: bool,
    inferred: bool,
    known: &Found,
) -> (Kept, u64, Found) {
    let mut found = Found::new();
    let layout = crdb_delta_core::apply::Layout::new(def.primary_key.clone(), def.has_families());
    let mut w = Window::new(layout, lo, hi).with_slice(slice.0, slice.1);
    let opts = DecodeOptions {
        slice: filter.then_some(SliceFilter {
            index: slice.0,
            of: slice.1,
            lo,
            hi,
        }),
        ..base_options(def, inferred)
    };
    let (mut later, mut skipped) = (0, 0);
    for (name, path, bytes) in ordered(&sim.objects) {
        let ObjectName::Data(d) = &name else { continue };
        if d.topic.table() != def.name {
            continue;
        }
        let file_opts = DecodeOptions {
            slice_rows: known.get(&path).cloned(),
            ..opts.clone()
        };
        let mut s =
            decode::decode_bytes(d, &path, bytes::Bytes::copy_from_slice(bytes), &file_opts)
                .unwrap();
        for b in s.by_ref() {
            later += w.push(b.unwrap(), d.topic.family(), &path).unwrap().later;
        }
        skipped += s.rows_skipped();
        if let Some(f) = s.slice_rows() {
            found.insert(path.clone(), f);
        }
        w.count_skipped(s.rows_skipped());
    }
    let rows_read = w.rows_read();
    let log = w.finish().unwrap();
    let layout = format!("{:?}", log.layout());
    let mut out = writer(Mode::AppendOnly, log);
    let mut changes = Vec::new();
    while let Some(b) = out.next_output(1000).unwrap() {
        changes.extend(
            canonical::rows(&b, None)
                .into_iter()
                .map(|r| serde_json::Value::Object(r).to_string()),
        );
    }
    changes.sort();
    let kept = Kept {
        layout,
        rows_read,
        later,
        changes,
    };
    (kept, skipped, found)
}

/// The table's key, and its column types from the definition, or (`inferred`) none: types are
/// then learnt from the values, in batches of 7 rows so that later batches widen them.
fn base_options(def: &TableDef, inferred: bool) -> DecodeOptions {
    let mut opts = options_for(def);
    if inferred {
        opts.columns.clear();
        opts.batch_size = 7;
    }
    opts
}

fn same_with_and_without_the_filter(opts: &SimOptions) {
    same_with_and_without_the_filter_typed(opts, false)
}

fn same_with_and_without_the_filter_typed(opts: &SimOptions, inferred: bool) {
    let sim = simulate(opts);
    let mut resolved: Vec<Hlc> = ordered(&sim.objects)
        .iter()
        .filter_map(|(n, _, _)| match n {
            ObjectName::Resolved(ts) => Some(*ts),
            ObjectName::Data(_) => None,
        })
        .collect();
    resolved.dedup();
    let (mut skipped_total, mut known_total) = (0, 0);
    for def in &sim.tables {
        let mut lo = None;
        for &hi in &resolved {
            for of in [2, 3] {
                // The slices the last slice's pass finds, given to every slice's pass.
                let last = (of - 1, of);
                let (_, _, found) =
                    window_known(&sim, def, lo, hi, last, true, inferred, &Found::new());
                // Every file of the table: each pass over it read it whole.
                let files = ordered(&sim.objects)
                    .iter()
                    .filter(
                        |(n, _, _)| matches!(n, ObjectName::Data(d) if d.topic.table() == def.name),
                    )
                    .count();
                assert_eq!(
                    found.len(),
                    files,
                    "{} to {hi}: files with slices found",
                    def.name
                );
                for index in 0..of {
                    let none_known = Found::new();
                    let (plain, none, _) =
                        window_known(&sim, def, lo, hi, (index, of), false, inferred, &none_known);
                    let (filtered, skipped, _) =
                        window_known(&sim, def, lo, hi, (index, of), true, inferred, &none_known);
                    assert_eq!(none, 0);
                    assert_eq!(
                        filtered, plain,
                        "{} to {hi}, slice {index} of {of}",
                        def.name
                    );
                    let (known, skipped_known, used) =
                        window_known(&sim, def, lo, hi, (index, of), true, inferred, &found);
                    assert_eq!(
                        known, plain,
                        "{} to {hi}, slice {index} of {of}, slices known",
                        def.name
                    );
                    assert_eq!(skipped_known, skipped);
                    assert_eq!(used.len(), files);
                    for (path, f) in &used {
                        assert!(Arc::ptr_eq(f, &found[path]), "{path}: found again");
                        known_total += 1;
                    }
                    // Found under another interval or slice count: not used.
                    let (_, _, again) =
                        window_known(&sim, def, None, hi, (index, of + 1), true, inferred, &found);
                    assert!(again.iter().all(|(p, f)| !Arc::ptr_eq(f, &found[p])));
                    skipped_total += skipped;
                }
            }
            lo = Some(hi);
        }
    }
    assert!(skipped_total > 0, "the filter skipped no row");
    assert!(known_total > 0, "no slices known");
}

#[test]
fn a_filtered_slice_keeps_what_the_window_keeps() {
    same_with_and_without_the_filter(&SimOptions {
        format: Format::Parquet,
        initial_rows: 60,
        windows: 4,
        events_per_window: 150,
        duplicate_rate: 0.1,
        file_size: 8 << 10,
        ..SimOptions::default()
    });
}

#[test]
fn a_filtered_slice_keeps_what_the_window_keeps_with_mvcc_timestamps() {
    same_with_and_without_the_filter(&SimOptions {
        format: Format::Parquet,
        initial_rows: 40,
        windows: 3,
        events_per_window: 100,
        mvcc_timestamp: true,
        seed: 7,
        file_size: 4 << 10,
        ..SimOptions::default()
    });
}

#[test]
fn a_filtered_ndjson_slice_keeps_what_the_window_keeps_with_types_learnt_from_the_values() {
    same_with_and_without_the_filter_typed(
        &SimOptions {
            format: Format::Json,
            initial_rows: 60,
            windows: 4,
            events_per_window: 150,
            duplicate_rate: 0.1,
            file_size: 8 << 10,
            seed: 3,
            ..SimOptions::default()
        },
        true,
    );
}

#[test]
fn a_filtered_ndjson_slice_keeps_what_the_window_keeps_with_bare_messages_and_mvcc_timestamps() {
    same_with_and_without_the_filter(&SimOptions {
        format: Format::Json,
        envelope: crdb_delta_core::sim::Envelope::Bare,
        compression: crdb_delta_core::format::names::Compression::Gzip,
        initial_rows: 40,
        windows: 3,
        events_per_window: 100,
        mvcc_timestamp: true,
        seed: 11,
        file_size: 4 << 10,
        ..SimOptions::default()
    });
}

/// A Parquet file of `id INT8, price DECIMAL(18,9)` rows 1..=n at one timestamp, row `bad`'s
/// price not a number.
fn prices(n: i64, bad: i64) -> Vec<u8> {
    use crdb_delta_core::format::batch::Op;
    use crdb_delta_core::sim::Message;
    use crdb_delta_core::sim::model::{ColumnDef, Datum};
    let column = |name: &str, sql: &str| ColumnDef {
        name: name.into(),
        sql: sql.parse().unwrap(),
        nullable: name != "id",
        family: "primary".into(),
    };
    let def = std::sync::Arc::new(TableDef {
        name: "t".into(),
        columns: vec![column("id", "INT8"), column("price", "DECIMAL(18,9)")],
        primary_key: vec!["id".into()],
        families: vec!["primary".into()],
        version: 1,
    });
    let messages: Vec<Message> = (1..=n)
        .map(|id| Message {
            table: def.clone(),
            family: "primary".into(),
            op: Op::Create,
            updated: Hlc::new(10, 0),
            mvcc: Hlc::new(10, 0),
            row: vec![
                Datum::Int(id),
                Datum::Decimal(if id == bad { "twelve" } else { "1.5" }.into()),
            ],
            before: None,
            backfill: false,
        })
        .collect();
    crdb_delta_core::sim::parquet::encode(&def, &[0, 1], &messages, &SimOptions::default()).unwrap()
}

#[test]
fn a_bad_value_read_under_the_filter_is_named_by_its_row_in_the_file() {
    let (n, bad, of) = (40, 25, 4);
    let slice_of_id = |id: i64| {
        let key: arrow_array::ArrayRef =
            std::sync::Arc::new(arrow_array::Int64Array::from(vec![id]));
        crdb_delta_core::apply::slice_of(&[key], 0, of)
    };
    let index = slice_of_id(bad);
    assert!(
        (1..bad).any(|id| slice_of_id(id) != index),
        "some rows before the bad one are skipped"
    );
    let opts = DecodeOptions {
        primary_key: Some(vec!["id".into()]),
        slice: Some(SliceFilter {
            index,
            of,
            lo: None,
            hi: Hlc::new(20, 0),
        }),
        ..DecodeOptions::default()
    };
    let err = decode::ParquetDecoder::try_new("t.parquet", prices(n, bad).into(), &opts)
        .and_then(|d| d.collect::<Result<Vec<_>, _>>())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("t.parquet: row 25: column `price`"),
        "{err}"
    );
}

#[test]
fn a_key_that_does_not_convert_under_the_filter_is_named_by_its_line() {
    // Lines 1..=40 of `id INT8` at one timestamp; line 25's key is not a number. The filter
    // cannot slice the batch, so it builds every row and the bad key is named, not skipped.
    let (n, bad, of) = (40, 25, 4);
    let text: String = (1..=n)
        .map(|id| {
            let key = if id == bad {
                "\"twelve\"".to_owned()
            } else {
                id.to_string()
            };
            format!(
                "{{\"after\":{{\"id\":{key},\"v\":\"x\"}},\"key\":[{key}],\"updated\":\"10.0000000000\"}}\n"
            )
        })
        .collect();
    let opts = DecodeOptions {
        columns: [(
            "id".to_owned(),
            crdb_delta_core::format::types::ColumnType::Int64,
        )]
        .into_iter()
        .collect(),
        primary_key: Some(vec!["id".into()]),
        slice: Some(SliceFilter {
            index: 1,
            of,
            lo: None,
            hi: Hlc::new(20, 0),
        }),
        ..DecodeOptions::default()
    };
    let err = decode::NdjsonDecoder::new("t.ndjson", std::io::Cursor::new(text), &opts)
        .collect::<Result<Vec<_>, _>>()
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("t.ndjson: line 25: column `id`"), "{err}");
}

/// A step looks a sliced table's files up by the window's keys of each file's slice. For a key
/// of one column it splits the window's probe by value (`KeyProbe::by_slice`); the split must
/// be the one the rows give (a probe that cannot be split, `KeyProbe::unknown()`, makes
/// `key_probes_by_slice` take each key's slice from its first row), for every table, interval
/// and slice count, with types from the definition or learnt from NDJSON values.
#[test]
fn a_probe_split_by_value_is_the_split_by_rows() {
    use crdb_delta_core::plan::KeyProbe;
    let mut split_types = std::collections::BTreeSet::new();
    for (format, inferred) in [(Format::Parquet, false), (Format::Json, true)] {
        let sim = simulate(&SimOptions {
            format,
            initial_rows: 80,
            windows: 3,
            events_per_window: 120,
            file_size: 8 << 10,
            seed: 5,
            ..SimOptions::default()
        });
        let resolved: std::collections::BTreeSet<Hlc> = ordered(&sim.objects)
            .iter()
            .filter_map(|(n, _, _)| match n {
                ObjectName::Resolved(ts) => Some(*ts),
                ObjectName::Data(_) => None,
            })
            .collect();
        for def in &sim.tables {
            let mut lo = None;
            for &hi in &resolved {
                let layout = crdb_delta_core::apply::Layout::new(
                    def.primary_key.clone(),
                    def.has_families(),
                );
                let mut w = Window::new(layout, lo, hi);
                for (name, path, bytes) in ordered(&sim.objects) {
                    let ObjectName::Data(d) = &name else { continue };
                    if d.topic.table() != def.name {
                        continue;
                    }
                    let opts = base_options(def, inferred);
                    let bytes = bytes::Bytes::copy_from_slice(bytes);
                    for b in decode::decode_bytes(d, &path, bytes, &opts).unwrap() {
                        w.push(b.unwrap(), d.topic.family(), &path).unwrap();
                    }
                }
                let log = w.finish().unwrap();
                let ty = log.layout().key_types()[0].clone();
                let whole = log.key_probe(&ty, false);
                for of in [2, 3, 7] {
                    let by_value = log.key_probes_by_slice(of, &ty, false, &whole);
                    let by_rows = log.key_probes_by_slice(of, &ty, false, &KeyProbe::unknown());
                    assert_eq!(
                        format!("{by_value:?}"),
                        format!("{by_rows:?}"),
                        "{} to {hi}, {of} slices",
                        def.name
                    );
                    if def.primary_key.len() == 1 && whole.by_slice(of).is_some() {
                        split_types.insert(format!("{ty:?}"));
                    }
                }
                lo = Some(hi);
            }
        }
    }
    // Split by value: keys of integers and of text (the simulator's UUID keys among them).
    assert_eq!(
        split_types.into_iter().collect::<Vec<_>>(),
        ["Int64", "Text"],
        "key types split by value"
    );
}
