//! The merge semantics on hand-made change batches: column families, family-level deletes,
//! duplicates, delete then re-insert, and the three modes' outputs. (The simulator covers the
//! same paths at scale; these pin down the cases it does not produce.)

use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field};
use crdb_delta_core::apply::{self, Keep, Layout, Mode, ModeWriter, Window};
use crdb_delta_core::format::batch::{self, MetaBuilder, Op};
use crdb_delta_core::format::canonical;
use crdb_delta_core::format::hlc::Hlc;
use serde_json::{Value, json};

const S: i64 = 1_700_000_000_000_000_000;

fn h(n: i64) -> Hlc {
    Hlc::new(S + n, 0)
}

/// One change row: (op, updated, id, columns of the family as (name, value)).
type Row<'a> = (Op, i64, i64, &'a [(&'a str, Option<&'a str>)]);

/// A change batch of one family: `id` plus the family's string columns.
fn batch(cols: &[&str], rows: &[Row]) -> RecordBatch {
    let mut meta = MetaBuilder::new(rows.len());
    for (i, (op, t, _, _)) in rows.iter().enumerate() {
        meta.append(*op, h(*t), None, None, "f.ndjson", i as u64 + 1);
    }
    let mut data: Vec<(Field, ArrayRef)> = vec![(
        Field::new("id", DataType::Int64, false),
        Arc::new(Int64Array::from(
            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        )),
    )];
    for c in cols {
        let vals: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.3.iter().find(|(n, _)| n == c).and_then(|(_, v)| *v))
            .collect();
        data.push((
            Field::new(*c, DataType::Utf8, true),
            Arc::new(StringArray::from(vals)),
        ));
    }
    batch::assemble(data, meta.finish()).unwrap()
}

fn rows(batches: &[RecordBatch]) -> Vec<Value> {
    let mut out: Vec<Value> = batches
        .iter()
        .flat_map(|b| canonical::rows(b, None))
        .map(Value::Object)
        .collect();
    out.sort_by_key(|v| v.to_string());
    out
}

/// A table batch with the window applied (copy-on-write); the window must change some row.
fn merge_all(c: &mut dyn ModeWriter, table: &RecordBatch, why: &str) -> RecordBatch {
    let m = c.merge(table, Keep::All).unwrap();
    assert!(!m.superseded.is_empty(), "{why}");
    m.batch
}

/// orders-like: family `primary` (status), family `details` (customer).
fn split_layout() -> Layout {
    Layout::new(vec!["id".into()], true)
}

#[test]
fn partial_family_update_keeps_other_columns_and_family_delete_nulls_them() {
    // The table holds id 1 from an earlier window.
    let mut w = Window::new(split_layout(), None, h(100));
    w.push(
        batch(
            &["status"],
            &[(Op::Create, 1, 1, &[("status", Some("new"))])],
        ),
        Some("primary"),
        "p.ndjson",
    )
    .unwrap();
    w.push(
        batch(
            &["customer"],
            &[(Op::Create, 1, 1, &[("customer", Some("ann"))])],
        ),
        Some("details"),
        "d.ndjson",
    )
    .unwrap();
    let mut c = apply::writer(Mode::UpdateDelete, w.finish().unwrap());
    let table = c.outputs(100).unwrap();
    assert_eq!(rows(&table)[0]["customer"], "ann");
    let layout = c.log().layout().clone();

    // Next window: only `primary` changes; then `details` goes all-NULL (a family delete).
    let mut w = Window::new(layout.clone(), Some(h(100)), h(200));
    w.push(
        batch(
            &["status"],
            &[(Op::Update, 150, 1, &[("status", Some("paid"))])],
        ),
        Some("primary"),
        "p2.ndjson",
    )
    .unwrap();
    let mut c = apply::writer(Mode::UpdateDelete, w.finish().unwrap());
    let merged = merge_all(&mut *c, &table[0], "id 1 changes");
    let r = &rows(std::slice::from_ref(&merged))[0];
    assert_eq!(r["status"], "paid");
    assert_eq!(r["customer"], "ann", "untouched family keeps its value");
    assert_eq!(r[apply::HLC], h(150).to_string());
    assert_eq!(c.counts().updated, 1);
    assert!(c.outputs(100).unwrap().is_empty());

    let mut w = Window::new(layout, Some(h(200)), h(300));
    w.push(
        batch(&["customer"], &[(Op::Delete, 250, 1, &[])]),
        Some("details"),
        "d3.ndjson",
    )
    .unwrap();
    let mut c = apply::writer(Mode::UpdateDelete, w.finish().unwrap());
    let merged = merge_all(&mut *c, &merged, "id 1 changes");
    let r = &rows(&[merged])[0];
    assert_eq!(
        r["status"], "paid",
        "the row lives: its primary family was not deleted"
    );
    assert_eq!(
        r["customer"],
        Value::Null,
        "a family delete sets the family NULL"
    );
    assert_eq!(c.counts().deleted, 0);
}

#[test]
fn row_delete_needs_the_primary_family_and_reinsert_wins() {
    let mut w = Window::new(split_layout(), None, h(100));
    let p = batch(
        &["status"],
        &[
            (Op::Create, 1, 1, &[("status", Some("a"))]),
            (Op::Delete, 5, 1, &[]),
            (Op::Create, 7, 1, &[("status", Some("again"))]),
            (Op::Create, 1, 2, &[("status", Some("b"))]),
        ],
    );
    let d = batch(
        &["customer"],
        &[
            (Op::Create, 1, 1, &[("customer", Some("x"))]),
            (Op::Delete, 5, 1, &[]),
            (Op::Create, 1, 2, &[("customer", Some("y"))]),
            (Op::Delete, 9, 2, &[]),
        ],
    );
    w.push(p, Some("primary"), "p.ndjson").unwrap();
    w.push(d, Some("details"), "d.ndjson").unwrap();
    let mut c = apply::writer(Mode::UpdateDelete, w.finish().unwrap());
    let out = rows(&c.outputs(100).unwrap());
    assert_eq!(out.len(), 2);
    // id 1: deleted (both families) then re-inserted with only `primary`: details is NULL.
    assert_eq!(out[0]["id"], 1);
    assert_eq!(out[0]["status"], "again");
    assert_eq!(out[0]["customer"], Value::Null);
    // id 2: only `details` deleted: with the primary family unknown, the row stays.
    assert_eq!(out[1]["id"], 2);
    assert_eq!(out[1]["customer"], Value::Null);
}

#[test]
fn duplicates_drop_and_window_bounds_hold() {
    let mut w = Window::new(Layout::new(vec!["id".into()], false), Some(h(10)), h(20));
    let b = batch(
        &["v"],
        &[
            (Op::Create, 5, 1, &[("v", Some("old"))]), // already applied
            (Op::Create, 15, 1, &[("v", Some("one"))]),
            (Op::Create, 15, 1, &[("v", Some("one"))]), // duplicate
            (Op::Create, 25, 1, &[("v", Some("later"))]), // next RESOLVED
        ],
    );
    let o = w.push(b, None, "f.ndjson").unwrap();
    assert_eq!((o.taken, o.later), (2, 1));
    let mut c = apply::writer(Mode::AppendOnly, w.finish().unwrap());
    assert_eq!((c.log().len(), c.log().duplicates()), (1, 1));
    let out = rows(&c.outputs(10).unwrap());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["v"], "one");
    assert_eq!(out[0][apply::OP], "c");
    assert_eq!(out[0][apply::SOURCE_FILE], "f.ndjson");
}

#[test]
fn scd2_closes_the_open_version_and_chains_new_ones() {
    let layout = Layout::new(vec!["id".into()], false);
    let mut w = Window::new(layout.clone(), None, h(100));
    w.push(
        batch(&["v"], &[(Op::Create, 1, 1, &[("v", Some("a"))])]),
        None,
        "f1.ndjson",
    )
    .unwrap();
    let mut c = apply::writer(Mode::Scd2, w.finish().unwrap());
    let table = c.outputs(10).unwrap();
    let layout = c.log().layout().clone();

    let mut w = Window::new(layout, Some(h(100)), h(200));
    w.push(
        batch(
            &["v"],
            &[
                (Op::Update, 110, 1, &[("v", Some("b"))]),
                (Op::Delete, 120, 1, &[]),
                (Op::Create, 130, 1, &[("v", Some("c"))]),
            ],
        ),
        None,
        "f2.ndjson",
    )
    .unwrap();
    let mut c = apply::writer(Mode::Scd2, w.finish().unwrap());
    let closed = merge_all(&mut *c, &table[0], "open version");
    let closed = rows(&[closed]);
    assert_eq!(closed[0][apply::END_HLC], h(110).to_string());
    let new = rows(&c.outputs(10).unwrap());
    let got: Vec<(Value, Value, Value)> = new
        .iter()
        .map(|r| {
            (
                r["v"].clone(),
                r[apply::START_HLC].clone(),
                r[apply::END_HLC].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                json!("b"),
                json!(h(110).to_string()),
                json!(h(120).to_string())
            ),
            (json!("c"), json!(h(130).to_string()), Value::Null),
        ]
    );
    assert_eq!(c.counts().deleted, 1);
    assert_eq!(
        c.log().layout().output_schema(Mode::Scd2).fields().len(),
        2 + apply::meta_fields(Mode::Scd2, false).len()
    );
}

#[test]
fn missing_key_names_file_and_row() {
    let mut w = Window::new(Layout::new(vec!["nope".into()], false), None, h(100));
    let e = w
        .push(
            batch(&["v"], &[(Op::Create, 1, 1, &[("v", Some("a"))])]),
            None,
            "bad.ndjson",
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.ndjson") && e.contains("nope"), "{e}");
}

#[test]
fn dropped_column_becomes_null_and_type_mismatch_names_the_file() {
    // The table has `v` (string) and `n` (long); a newer schema version no longer sends `v`.
    let mut layout = Layout::new(vec!["id".into()], false);
    layout.columns = vec![
        (
            "id".into(),
            crdb_delta_core::format::types::ColumnType::Int64,
        ),
        ("v".into(), crdb_delta_core::format::types::ColumnType::Text),
    ];
    let mut w = Window::new(layout.clone(), None, h(100));
    w.push(
        batch(&["w"], &[(Op::Update, 5, 1, &[("w", Some("new"))])]),
        None,
        "after-drop.ndjson",
    )
    .unwrap();
    let mut c = apply::writer(Mode::UpdateDelete, w.finish().unwrap());
    let out = rows(&c.outputs(10).unwrap());
    assert_eq!(
        out[0]["v"],
        Value::Null,
        "a column the row no longer has is NULL"
    );
    assert_eq!(out[0]["w"], "new");

    // `id` is a long in the table; a file sending text that is not a number is refused.
    let mut w = Window::new(layout, None, h(100));
    let mut meta = MetaBuilder::new(1);
    meta.append(Op::Create, h(1), None, None, "typed.parquet", 7);
    let b = batch::assemble(
        vec![(
            Field::new("id", DataType::Utf8, false),
            Arc::new(StringArray::from(vec!["x1"])) as ArrayRef,
        )],
        meta.finish(),
    )
    .unwrap();
    w.push(b, None, "typed.parquet").unwrap();
    let e = w.finish().err().expect("type mismatch").to_string();
    assert!(e.contains("typed.parquet") && e.contains("`id`"), "{e}");
}

/// Decodes NDJSON lines (`after`, `key` and HLC offset per line) as the decoder would, types
/// inferred from the file alone.
fn ndjson(file: &str, lines: &[(&str, &str, i64)]) -> Vec<RecordBatch> {
    use crdb_delta_core::format::decode::{DecodeOptions, NdjsonDecoder};
    let text: String = lines
        .iter()
        .map(|(after, key, t)| {
            format!(
                "{{\"after\": {after}, \"key\": {key}, \"updated\": \"{}\"}}\n",
                h(*t)
            )
        })
        .collect();
    let opts = DecodeOptions {
        primary_key: Some(vec!["id".into()]),
        ..Default::default()
    };
    NdjsonDecoder::new(file, std::io::Cursor::new(text), &opts)
        .collect::<Result<_, _>>()
        .unwrap()
}

fn push_all(w: &mut Window, file: &str, batches: Vec<RecordBatch>) {
    for b in batches {
        w.push(b, None, file).unwrap();
    }
}

#[test]
fn a_key_written_as_number_and_as_string_is_one_key() {
    // One file says `1`, the next `"1"` (their inferred types differ: INT8 and STRING).
    let as_number = || ndjson("a.ndjson", &[(r#"{"id": 1, "v": "a"}"#, "[1]", 1)]);
    let as_string = |t| ndjson("b.ndjson", &[(r#"{"id": "1", "v": "b"}"#, r#"["1"]"#, t)]);

    // In one window: one row, the later change wins.
    let mut w = Window::new(Layout::new(vec!["id".into()], false), None, h(100));
    push_all(&mut w, "a.ndjson", as_number());
    push_all(&mut w, "b.ndjson", as_string(2));
    let mut c = apply::writer(Mode::UpdateDelete, w.finish().unwrap());
    assert_eq!(c.log().len(), 2, "two changes of one key");
    let out = rows(&c.outputs(100).unwrap());
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["v"], "b");

    // Across windows: the Delta table's INT8 column decides; the string finds the row.
    let mut w = Window::new(Layout::new(vec!["id".into()], false), None, h(100));
    push_all(&mut w, "a.ndjson", as_number());
    let mut c = apply::writer(Mode::UpdateDelete, w.finish().unwrap());
    let table = c.outputs(100).unwrap();
    let layout = c.log().layout().clone();
    let mut w = Window::new(layout.clone(), Some(h(100)), h(200));
    push_all(&mut w, "b.ndjson", as_string(150));
    let delete = ndjson("c.ndjson", &[("null", r#"["1"]"#, 160)]);
    push_all(&mut w, "c.ndjson", delete);
    let mut c = apply::writer(Mode::UpdateDelete, w.finish().unwrap());
    assert_eq!(c.log().len(), 2);
    let merged = merge_all(&mut *c, &table[0], "id 1 changes");
    assert_eq!(
        merged.num_rows(),
        0,
        "the delete written `\"1\"` removed row 1"
    );
    assert!(c.outputs(100).unwrap().is_empty());
    assert_eq!(c.counts().deleted, 1);

    // A STRING key column: the number `1` is the text `1`.
    let mut w = Window::new(Layout::new(vec!["id".into()], false), None, h(100));
    push_all(&mut w, "b.ndjson", as_string(2));
    let mut c = apply::writer(Mode::UpdateDelete, w.finish().unwrap());
    let table = c.outputs(100).unwrap();
    let mut w = Window::new(c.log().layout().clone(), Some(h(100)), h(200));
    push_all(
        &mut w,
        "d.ndjson",
        ndjson("d.ndjson", &[(r#"{"id": 1, "v": "d"}"#, "[1]", 150)]),
    );
    let mut c = apply::writer(Mode::UpdateDelete, w.finish().unwrap());
    let merged = merge_all(&mut *c, &table[0], "id 1 changes");
    let out = rows(&[merged]);
    assert_eq!(
        (out.len(), &out[0]["id"], &out[0]["v"]),
        (1, &json!("1"), &json!("d"))
    );
    assert!(c.outputs(100).unwrap().is_empty());
}

#[test]
fn float_keys_treat_minus_zero_as_zero() {
    let mut w = Window::new(Layout::new(vec!["id".into()], false), None, h(100));
    push_all(
        &mut w,
        "f.ndjson",
        ndjson(
            "f.ndjson",
            &[
                (r#"{"id": 0.0, "v": "a"}"#, "[0.0]", 1),
                (r#"{"id": -0.0, "v": "b"}"#, "[-0.0]", 2),
            ],
        ),
    );
    let mut c = apply::writer(Mode::UpdateDelete, w.finish().unwrap());
    let out = rows(&c.outputs(100).unwrap());
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["v"], "b");
}

#[test]
fn new_rows_come_out_in_key_order_integers_by_value() {
    let ids = [10, -3, 2, 9, -20, 100];
    let window = || {
        let mut w = Window::new(Layout::new(vec!["id".into()], false), None, h(100));
        let rows: Vec<Row> = ids
            .iter()
            .map(|&id| (Op::Create, id, id, &[][..]))
            .collect();
        w.push(batch(&[], &rows), None, "f.parquet").unwrap();
        w.finish().unwrap()
    };
    let written = |mode| {
        let mut c = apply::writer(mode, window());
        let out = c.outputs(100).unwrap();
        let col = out[0].column_by_name("id").unwrap().clone();
        let got: Vec<i64> = col
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec();
        (got, out)
    };
    // By value, not by text ("-20" < "-3" < "10" < "100" < "2" < "9").
    for mode in [Mode::UpdateDelete, Mode::Scd2] {
        assert_eq!(written(mode).0, [-20, -3, 2, 9, 10, 100], "{mode:?}");
    }
    // A later window finds those rows by integer key.
    let (_, table) = written(Mode::UpdateDelete);
    let deletes = batch(
        &[],
        &[(Op::Delete, 150, 9, &[]), (Op::Delete, 151, -20, &[])],
    );
    assert_eq!(later_deletes_merged("id", deletes, &table[0]), (2, 4));
}

/// A later window (100, 200] of `deletes` keyed by `key`, merged into `table` rows: the rows it
/// supersedes and the rows the merge keeps.
fn later_deletes_merged(key: &str, deletes: RecordBatch, table: &RecordBatch) -> (usize, usize) {
    let mut w = Window::new(Layout::new(vec![key.into()], false), Some(h(100)), h(200));
    w.push(deletes, None, "later.parquet").unwrap();
    let mut c = apply::writer(Mode::UpdateDelete, w.finish().unwrap());
    let m = c.merge(table, Keep::All).unwrap();
    (m.superseded.len(), m.batch.num_rows())
}

/// A change batch keyed by one string column `k`.
fn string_keyed(rows: &[(Op, i64, &str)]) -> RecordBatch {
    let mut meta = MetaBuilder::new(rows.len());
    for (i, (op, t, _)) in rows.iter().enumerate() {
        meta.append(*op, h(*t), None, None, "s.parquet", i as u64 + 1);
    }
    let keys: ArrayRef = Arc::new(StringArray::from(
        rows.iter().map(|r| r.2).collect::<Vec<_>>(),
    ));
    batch::assemble(
        vec![(Field::new("k", DataType::Utf8, false), keys)],
        meta.finish(),
    )
    .unwrap()
}

#[test]
fn string_keys_are_one_key_per_value_and_come_out_in_value_order() {
    let layout = || Layout::new(vec!["k".into()], false);
    let mut w = Window::new(layout(), None, h(100));
    let keys = ["b", "ab!", "a\"q", "ab", "b", "é", "a\\"];
    let rows: Vec<(Op, i64, &str)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (Op::Create, i as i64 + 1, *k))
        .collect();
    w.push(string_keyed(&rows), None, "s.parquet").unwrap();
    let log = w.finish().unwrap();
    assert_eq!(log.keys(), 6, "\"b\" twice is one key");
    let mut c = apply::writer(Mode::UpdateDelete, log);
    let table = c.outputs(100).unwrap();
    let got: Vec<&str> = table[0]
        .column_by_name("k")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(got, ["a\"q", "a\\", "ab", "ab!", "b", "é"]);
    // A later window finds rows by their key text, escapes included.
    let deletes = string_keyed(&[(Op::Delete, 150, "a\"q"), (Op::Delete, 151, "ab!")]);
    assert_eq!(later_deletes_merged("k", deletes, &table[0]), (2, 4));
}

/// The keys of the `table` rows that a later window deleting `deletes` supersedes (sorted).
fn superseded_keys(deletes: &[&str], table: &[&str]) -> Vec<String> {
    let rows: Vec<(Op, i64, &str)> = (0..deletes.len())
        .map(|i| (Op::Delete, 150 + i as i64, deletes[i]))
        .collect();
    let mut w = Window::new(Layout::new(vec!["k".into()], false), Some(h(100)), h(200));
    w.push(string_keyed(&rows), None, "later.parquet").unwrap();
    let mut c = apply::writer(Mode::UpdateDelete, w.finish().unwrap());
    let keys: ArrayRef = Arc::new(StringArray::from(table.to_vec()));
    let t = RecordBatch::try_from_iter([("k", keys)]).unwrap();
    let m = c.merge(&t, Keep::Changed).unwrap();
    let mut got: Vec<String> = m
        .superseded
        .iter()
        .map(|&r| table[r as usize].to_owned())
        .collect();
    got.sort();
    got
}

/// A large table batch whose one text key column is in order (as the files we write are) is
/// matched by binary search; one out of order, a small one, or any with a window key that
/// needs escaping, by each row's key text. Both find the same rows: repeated keys, keys
/// before and after the window's, prefixes (`d` and `d!`), and none of the window's keys the
/// table lacks.
#[test]
fn text_keys_in_order_or_not_find_the_same_rows() {
    let many: Vec<String> = (0..3000).map(|i| format!("k{:05}", i / 2 * 3)).collect();
    let mut sorted: Vec<&str> = many.iter().map(String::as_str).collect();
    sorted.extend(["0", "d", "d!", "é", "x"]);
    sorted.sort_unstable();
    let mut shuffled = sorted.clone();
    shuffled.reverse();
    shuffled.swap(0, 1500);
    let want = ["d!", "k00003", "k00003", "k04497", "k04497", "x"];
    for deletes in [
        &["k00003", "d!", "x", "k00004", "zzz", "", "k04497"][..],
        &["x", "d!", "k04497", "k00003", "a\"q"][..],
    ] {
        for (table, how) in [(&sorted, "in order"), (&shuffled, "shuffled")] {
            assert_eq!(superseded_keys(deletes, table), want, "{deletes:?}, {how}");
            assert_eq!(
                superseded_keys(deletes, &table[..9]),
                want.iter()
                    .filter(|k| table[..9].contains(k))
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>(),
                "{deletes:?}, {how}, nine rows"
            );
        }
    }
    assert_eq!(
        superseded_keys(&["0", "é"], &sorted),
        ["0", "é"],
        "the ends"
    );
    assert!(superseded_keys(&["c"], &[]).is_empty());
    assert!(superseded_keys(&["zzz", "!"], &sorted).is_empty());
}
