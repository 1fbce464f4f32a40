//! The merge against a tiny reference model: random change logs of a small table (keys repeat,
//! HLCs collide across keys, messages arrive more than once as CockroachDB's at-least-once
//! delivery sends them, optionally split into two column families) go through the real
//! [`Window`] step after step, as the engine applies RESOLVEDs, and every mode's table must equal
//! what a `BTreeMap` replay of the deduplicated log in HLC order says — for decoder and output
//! batches of 1, 3 and 8192 rows alike.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field};
use arrow_select::concat::concat_batches;
use crdb_delta_core::apply::{self, Keep, Layout, Mode, Window};
use crdb_delta_core::format::batch::{self, MetaBuilder, Op};
use crdb_delta_core::format::hlc::Hlc;
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Value, json};

const S: i64 = 1_700_000_000_000_000_000;
/// Few keys and few HLCs, so keys repeat and HLCs collide across keys.
const KEYS: i64 = 5;
const FILES: u64 = 3;
const BATCH_SIZES: [usize; 3] = [1, 3, 8192];
const MODES: [Mode; 3] = [Mode::UpdateDelete, Mode::AppendOnly, Mode::Scd2];

/// An HLC from a small grid: wall times a microsecond apart, logical 0..3 (ties on the wall time
/// must be broken by the logical counter).
type T = (u8, u8);

fn hlc(t: T) -> Hlc {
    Hlc::new(S + i64::from(t.0) * 1000, u32::from(t.1))
}

/// What a change does to one column family.
#[derive(Debug, Clone, PartialEq)]
enum Touch<V> {
    /// Not written: a split table sends no fragment for the family.
    Keep,
    Set(Option<V>),
    /// The family's KV was deleted (all its columns NULL): a family-level delete.
    Clear,
}

impl<V: Clone> Touch<V> {
    /// The value a row image gets: a whole-row change carries every column.
    fn carried(&self) -> Option<V> {
        match self {
            Self::Set(v) => v.clone(),
            Self::Keep | Self::Clear => None,
        }
    }
}

/// One change of one key at one HLC (a transaction's write).
#[derive(Debug, Clone)]
enum Event {
    /// A row delete; in a split table `details` had a KV (and sends a delete) only sometimes.
    Delete { details_too: bool },
    /// `a` lives in family `primary` (never `Clear`: family 0 always has a KV), `b` in `details`.
    Write {
        op: Op,
        a: Touch<i64>,
        b: Touch<String>,
    },
}

#[derive(Debug, Clone)]
struct Case {
    split: bool,
    /// Families' files pushed `details` first (family ids follow the push order).
    details_first: bool,
    /// Unique (key, HLC): CockroachDB never sends two different changes for one.
    events: Vec<(i64, T, Event, u8, u64)>,
    /// Window upper bounds (RESOLVEDs), ascending; changes after the last are not applied yet.
    cuts: Vec<T>,
}

fn touch_a() -> impl Strategy<Value = Touch<i64>> {
    prop_oneof![
        Just(Touch::Keep),
        prop::option::of(0i64..3).prop_map(Touch::Set),
    ]
}

fn touch_b() -> impl Strategy<Value = Touch<String>> {
    prop_oneof![
        Just(Touch::Keep),
        prop::option::of(prop::sample::select(vec!["x", "y", ""]))
            .prop_map(|v| Touch::Set(v.map(str::to_owned))),
        Just(Touch::Clear),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        1 => any::<bool>().prop_map(|details_too| Event::Delete { details_too }),
        3 => (
            prop::sample::select(vec![Op::Create, Op::Update]),
            touch_a(),
            touch_b()
        )
            .prop_map(|(op, a, b)| {
                // A change touches at least one family.
                let a = if a == Touch::Keep && b == Touch::Keep { Touch::Set(None) } else { a };
                Event::Write { op, a, b }
            }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let t = (1u8..=8, 0u8..3);
    // Extra copies of a message: mostly none.
    let dups = prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)];
    (
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec((0..KEYS, t, event(), dups, any::<u64>()), 0..40),
        prop::collection::vec((0u8..=9, 0u8..3), 1..=3),
    )
        .prop_map(|(split, details_first, mut events, mut cuts)| {
            let mut seen = BTreeSet::new();
            events.retain(|e| seen.insert((e.0, e.1)));
            cuts.sort();
            cuts.dedup();
            Case {
                split,
                details_first,
                events,
                cuts,
            }
        })
}

/// A family's fragment of a change, as one row of a changefeed file.
#[derive(Debug, Clone)]
struct Frag {
    key: i64,
    t: T,
    op: Op,
    a: Option<i64>,
    b: Option<String>,
}

/// `primary`, `details`, or `""` for a table without split families.
fn fragments(split: bool, ev: &Event) -> Vec<(&'static str, Op, Option<i64>, Option<String>)> {
    match (split, ev) {
        (false, Event::Delete { .. }) => vec![("", Op::Delete, None, None)],
        (false, Event::Write { op, a, b }) => vec![("", *op, a.carried(), b.carried())],
        (true, Event::Delete { details_too }) => {
            let mut f = vec![("primary", Op::Delete, None, None)];
            if *details_too {
                f.push(("details", Op::Delete, None, None));
            }
            f
        }
        (true, Event::Write { op, a, b }) => {
            let mut f = Vec::new();
            if let Touch::Set(v) = a {
                f.push(("primary", *op, *v, None));
            }
            match b {
                Touch::Keep => {}
                Touch::Set(v) => f.push(("details", *op, None, v.clone())),
                Touch::Clear => f.push(("details", Op::Delete, None, None)),
            }
            f
        }
    }
}

fn mix(mut x: u64) -> u64 {
    // splitmix64: spreads one seed over files and positions.
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The changefeed files: name → family and rows in file order. Every copy of a fragment lands
/// in a file of its family at a position of its own, so duplicates and out-of-order rows mix.
fn files(case: &Case) -> Vec<(String, &'static str, Vec<Frag>)> {
    // (file number, family order, name) → family and (position, sequence) → fragment.
    type File = (u64, bool, String);
    type Rows = BTreeMap<(u64, usize), Frag>;
    let mut placed: BTreeMap<File, (&'static str, Rows)> = BTreeMap::new();
    let mut seq = 0;
    for (key, t, ev, dups, seed) in &case.events {
        for (fi, (fam, op, a, b)) in fragments(case.split, ev).into_iter().enumerate() {
            for copy in 0..=u64::from(*dups) {
                let r = mix(seed ^ (copy << 8 | fi as u64));
                let n = r % FILES;
                let name = format!("{}{n}.ndjson", if fam.is_empty() { "t" } else { fam });
                let frag = Frag {
                    key: *key,
                    t: *t,
                    op,
                    a,
                    b: b.clone(),
                };
                let order = (fam == "details") != case.details_first;
                placed
                    .entry((n, order, name))
                    .or_insert((fam, BTreeMap::new()))
                    .1
                    .insert((r / FILES, seq), frag);
                seq += 1;
            }
        }
    }
    placed
        .into_iter()
        .map(|((_, _, name), (fam, rows))| (name, fam, rows.into_values().collect()))
        .collect()
}

/// A change batch of one family, in the canonical layout the decoders produce.
fn change_batch(fam: &str, file: &str, first_row: usize, rows: &[Frag]) -> RecordBatch {
    let mut meta = MetaBuilder::new(rows.len());
    for (i, f) in rows.iter().enumerate() {
        meta.append(f.op, hlc(f.t), None, None, file, (first_row + i + 1) as u64);
    }
    let mut data: Vec<(Field, ArrayRef)> = vec![(
        Field::new("id", DataType::Int64, false),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|f| f.key))),
    )];
    if fam != "details" {
        data.push((
            Field::new("a", DataType::Int64, true),
            Arc::new(rows.iter().map(|f| f.a).collect::<Int64Array>()),
        ));
    }
    if fam != "primary" {
        data.push((
            Field::new("b", DataType::Utf8, true),
            Arc::new(rows.iter().map(|f| f.b.clone()).collect::<StringArray>()),
        ));
    }
    batch::assemble(data, meta.finish()).unwrap()
}

/// The windows `(lo, hi]`, one per RESOLVED.
fn windows(case: &Case) -> Vec<(Option<T>, T)> {
    let mut lo = None;
    case.cuts
        .iter()
        .map(|&hi| {
            let w = (lo, hi);
            lo = Some(hi);
            w
        })
        .collect()
}

fn in_window(t: T, (lo, hi): (Option<T>, T)) -> bool {
    lo.is_none_or(|lo| t > lo) && t <= hi
}

// ---------------------------------------------------------------------------------------------
// The reference model.

#[derive(Debug, Clone, PartialEq)]
struct Image {
    a: Option<i64>,
    b: Option<String>,
}

/// The row after a change: `None` when deleted. A change to a missing row starts from NULLs.
fn apply(split: bool, row: Option<Image>, ev: &Event) -> Option<Image> {
    let Event::Write { a, b, .. } = ev else {
        return None;
    };
    if !split {
        return Some(Image {
            a: a.carried(),
            b: b.carried(),
        });
    }
    let mut img = row.unwrap_or(Image { a: None, b: None });
    if let Touch::Set(v) = a {
        img.a = *v;
    }
    match b {
        Touch::Keep => {}
        Touch::Set(v) => img.b = v.clone(),
        Touch::Clear => img.b = None,
    }
    Some(img)
}

/// The applied part of the log in HLC order per key: what the model replays.
fn applied(case: &Case) -> BTreeMap<i64, Vec<(T, &Event)>> {
    let last = *case.cuts.last().unwrap();
    let mut by_key: BTreeMap<i64, Vec<(T, &Event)>> = BTreeMap::new();
    for (key, t, ev, _, _) in &case.events {
        if *t <= last {
            by_key.entry(*key).or_default().push((*t, ev));
        }
    }
    for v in by_key.values_mut() {
        v.sort_by_key(|(t, _)| *t);
    }
    by_key
}

fn ts(t: T) -> Value {
    json!(hlc(t).wall_micros())
}

fn expected(case: &Case, mode: Mode) -> Vec<Value> {
    let mut out = Vec::new();
    for (key, evs) in applied(case) {
        match mode {
            Mode::UpdateDelete => {
                let mut row: Option<(Image, T)> = None;
                for (t, ev) in evs {
                    row = apply(case.split, row.map(|r| r.0), ev).map(|i| (i, t));
                }
                if let Some((img, t)) = row {
                    out.push(json!([key, img.a, img.b, hlc(t).to_string(), ts(t)]));
                }
            }
            Mode::AppendOnly => {
                for (t, ev) in evs {
                    let (op, a, b) = match ev {
                        Event::Delete { .. } => ("d", None, None),
                        Event::Write { op, a, b } => {
                            // A change that only cleared `details` is an update of the row.
                            let any_set = matches!(a, Touch::Set(_)) || matches!(b, Touch::Set(_));
                            let op = if case.split && !any_set {
                                "u"
                            } else {
                                op.code()
                            };
                            (op, a.carried(), b.carried())
                        }
                    };
                    let families: Option<BTreeSet<&str>> = case
                        .split
                        .then(|| fragments(true, ev).iter().map(|f| f.0).collect());
                    out.push(json!([key, a, b, op, hlc(t).to_string(), ts(t), families]));
                }
            }
            Mode::Scd2 => {
                let mut row: Option<Image> = None;
                let mut versions: Vec<(Image, T, Option<T>)> = Vec::new();
                let mut open: Option<usize> = None;
                for (t, ev) in evs {
                    if let Some(v) = open.take() {
                        versions[v].2 = Some(t);
                    }
                    row = apply(case.split, row, ev);
                    if let Some(img) = &row {
                        versions.push((img.clone(), t, None));
                        open = Some(versions.len() - 1);
                    }
                }
                for (img, start, end) in versions {
                    out.push(json!([
                        key,
                        img.a,
                        img.b,
                        hlc(start).to_string(),
                        end.map(|e| hlc(e).to_string()),
                        ts(start),
                        end.map(ts)
                    ]));
                }
            }
        }
    }
    out.sort_by_key(Value::to_string);
    out
}

// ---------------------------------------------------------------------------------------------
// The engine, called as `handler/sync.rs` `apply_table` does.

fn col<'a>(b: &'a RecordBatch, name: &str) -> Option<&'a ArrayRef> {
    b.column_by_name(name)
}

fn int(b: &RecordBatch, name: &str, r: usize) -> Value {
    col(b, name)
        .filter(|a| a.is_valid(r))
        .map_or(Value::Null, |a| {
            json!(a.as_primitive::<Int64Type>().value(r))
        })
}

fn text(b: &RecordBatch, name: &str, r: usize) -> Value {
    col(b, name)
        .filter(|a| a.is_valid(r))
        .map_or(Value::Null, |a| json!(a.as_string::<i32>().value(r)))
}

fn time(b: &RecordBatch, name: &str, r: usize) -> Value {
    col(b, name)
        .filter(|a| a.is_valid(r))
        .map_or(Value::Null, |a| {
            json!(a.as_primitive::<TimestampMicrosecondType>().value(r))
        })
}

/// The table's rows in the model's shape (a column a file lacks reads as NULL, as in Delta).
fn table_rows(files: &[Vec<RecordBatch>], mode: Mode) -> Vec<Value> {
    let mut out = Vec::new();
    for b in files.iter().flatten() {
        for r in 0..b.num_rows() {
            let (id, a, bb) = (int(b, "id", r), int(b, "a", r), text(b, "b", r));
            out.push(match mode {
                Mode::UpdateDelete => json!([
                    id,
                    a,
                    bb,
                    text(b, apply::HLC, r),
                    time(b, apply::COMMIT_TS, r)
                ]),
                Mode::AppendOnly => {
                    let families = text(b, apply::FAMILIES, r).as_str().map(|f| {
                        // In any order, but each once.
                        let mut v: Vec<&str> = f.split(',').collect();
                        v.sort();
                        json!(v)
                    });
                    json!([
                        id,
                        a,
                        bb,
                        text(b, apply::OP, r),
                        text(b, apply::HLC, r),
                        time(b, apply::COMMIT_TS, r),
                        families
                    ])
                }
                Mode::Scd2 => json!([
                    id,
                    a,
                    bb,
                    text(b, apply::START_HLC, r),
                    text(b, apply::END_HLC, r),
                    time(b, apply::START_AT, r),
                    time(b, apply::END_AT, r)
                ]),
            });
        }
    }
    out.sort_by_key(Value::to_string);
    out
}

/// A table file read back in batches of `bs` rows, as `TableFile::batches` streams it.
fn reread(file: &[RecordBatch], bs: usize) -> Vec<RecordBatch> {
    let Some(first) = file.first() else {
        return Vec::new();
    };
    let all = concat_batches(&first.schema(), file).unwrap();
    (0..all.num_rows())
        .step_by(bs)
        .map(|i| all.slice(i, bs.min(all.num_rows() - i)))
        .collect()
}

/// A batch without the rows at `positions` (what a deletion vector hides).
fn without(b: &RecordBatch, positions: &[u32]) -> RecordBatch {
    let mask: arrow_array::BooleanArray = (0..b.num_rows() as u32)
        .map(|r| Some(!positions.contains(&r)))
        .collect();
    arrow_select::filter::filter_record_batch(b, &mask).unwrap()
}

/// Applies every window of the case in `mode`, `bs` rows per batch in and out; returns the
/// table's files. Checks along the way what each step must report. Under [`Keep::All`] touched
/// files are rewritten (copy-on-write); under [`Keep::Changed`] their superseded rows are hidden
/// and the replacements appended as a new file (merge-on-read, as deletion vectors do).
fn run(case: &Case, mode: Mode, bs: usize, keep: Keep) -> Vec<Vec<RecordBatch>> {
    let log = files(case);
    let mut layout = Layout::new(vec!["id".into()], case.split);
    let mut table: Vec<Vec<RecordBatch>> = Vec::new();
    for win in windows(case) {
        // The engine sets the primary family on every step (it is not stored in the table).
        layout.primary_family = case.split.then(|| "primary".to_owned());
        let mut w = Window::new(layout, win.0.map(hlc), hlc(win.1));
        let (mut taken, mut later) = (0, 0);
        for (file, fam, rows) in &log {
            for (i, chunk) in rows.chunks(bs).enumerate() {
                let b = change_batch(fam, file, i * bs, chunk);
                let o = w.push(b, case.split.then_some(*fam), file).unwrap();
                taken += o.taken;
                later += o.later;
            }
        }
        let all: Vec<&Frag> = log.iter().flat_map(|f| &f.2).collect();
        let inside: Vec<&&Frag> = all.iter().filter(|f| in_window(f.t, win)).collect();
        assert_eq!(taken, inside.len(), "rows taken in {win:?}");
        assert_eq!(later, all.iter().filter(|f| f.t > win.1).count(), "later");
        if taken == 0 && w.layout().columns.is_empty() {
            // Nothing to create the table from yet: the engine skips the step. (`finish` itself
            // panics on such a window; see `an_empty_first_window_finishes`.)
            layout = w.layout().clone();
            continue;
        }
        let mut c = apply::writer(mode, w.finish().unwrap());
        let distinct: BTreeSet<(i64, T)> = inside.iter().map(|f| (f.key, f.t)).collect();
        assert_eq!(c.log().len(), distinct.len(), "changes in {win:?}");
        let fragments: BTreeSet<(i64, T, &str)> = log
            .iter()
            .flat_map(|(_, fam, rows)| rows.iter().map(move |f| (f, *fam)))
            .filter(|(f, _)| in_window(f.t, win))
            .map(|(f, fam)| (f.key, f.t, fam))
            .collect();
        assert_eq!(
            c.log().duplicates(),
            inside.len() - fragments.len(),
            "duplicates"
        );

        if c.reads_table() && !c.log().is_empty() {
            let before = table_rows(&table, mode);
            let mut replacements = Vec::new();
            table = std::mem::take(&mut table)
                .into_iter()
                .map(|file| {
                    let batches = reread(&file, bs);
                    if !batches.iter().any(|b| !c.hits(b).unwrap().is_empty()) {
                        return file;
                    }
                    // Merge-on-read reads only the probe columns when the mode says it may,
                    // as the engine does.
                    let probe_only = keep == Keep::Changed && !c.needs_table_values();
                    let probe = c.probe_columns();
                    batches
                        .iter()
                        .map(|b| {
                            if keep == Keep::Changed && !probe_only {
                                // As the engine reads a touched file under merge-on-read when
                                // the merge needs the rows' values: its hit rows only.
                                let hits = c.hits(b).unwrap();
                                let idx = arrow_array::UInt32Array::from(hits.clone());
                                let rows = arrow_select::take::take_record_batch(b, &idx).unwrap();
                                let m = c.merge(&rows, keep).unwrap();
                                replacements.push(m.batch);
                                let superseded: Vec<u32> =
                                    m.superseded.iter().map(|&r| hits[r as usize]).collect();
                                return without(b, &superseded);
                            }
                            let input = if probe_only {
                                let idx: Vec<usize> = probe
                                    .iter()
                                    .filter_map(|p| b.schema().index_of(p).ok())
                                    .collect();
                                b.project(&idx).unwrap()
                            } else {
                                b.clone()
                            };
                            let m = c.merge(&input, keep).unwrap();
                            match keep {
                                Keep::All => m.batch,
                                Keep::Changed => {
                                    replacements.push(m.batch);
                                    without(b, &m.superseded)
                                }
                            }
                        })
                        .collect()
                })
                .collect();
            if !replacements.is_empty() {
                table.push(replacements);
            }
            if mode == Mode::UpdateDelete {
                // Keys the table had that the window deletes or changes.
                let had: BTreeSet<i64> = before.iter().map(|r| r[0].as_i64().unwrap()).collect();
                let touched = distinct.iter().map(|d| d.0).collect::<BTreeSet<_>>();
                let counts = c.counts();
                assert_eq!(
                    (counts.updated + counts.deleted) as usize,
                    had.intersection(&touched).count(),
                    "updated + deleted in {win:?}"
                );
            }
        }
        let mut new = Vec::new();
        while let Some(b) = c.next_output(bs).unwrap() {
            assert!(
                b.num_rows() <= bs,
                "an output batch holds at most {bs} rows"
            );
            new.push(b);
        }
        if mode == Mode::AppendOnly {
            let hlcs: Vec<String> = new
                .iter()
                .flat_map(|b| (0..b.num_rows()).map(|r| text(b, apply::HLC, r)))
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            assert!(hlcs.is_sorted(), "history in commit order: {hlcs:?}");
        }
        if !new.is_empty() {
            table.push(new);
        }
        layout = c.log().layout().clone();
    }
    table
}

proptest! {
    #![proptest_config(Config { cases: 64, failure_persistence: None, ..Config::default() })]

    /// Every mode's table equals the model's, whatever the batch size.
    #[test]
    fn merge_matches_the_model(case in case()) {
        for mode in MODES {
            let want = expected(&case, mode);
            for bs in BATCH_SIZES {
                for keep in [Keep::All, Keep::Changed] {
                    let got = table_rows(&run(&case, mode, bs, keep), mode);
                    prop_assert_eq!(&got, &want, "{} with batches of {}, {:?}", mode, bs, keep);
                }
            }
        }
    }
}

/// A table's first window may hold none of its rows (every row read is newer than the
/// RESOLVED): `apply_table` then wants empty changes, to skip creating the table.
#[test]
fn an_empty_first_window_finishes() {
    let w = Window::new(Layout::new(vec!["id".into()], false), None, hlc((1, 0)));
    let c = w.finish().unwrap();
    assert!(c.is_empty() && c.layout().columns.is_empty());
}

/// The configured primary family decides row deletes even before a file of it was read: a
/// details-only delete (an UPDATE that set the family's columns NULL) keeps the row. Here the
/// table has seen only `details` (a changefeed without initial scan, only `b` updated so far).
#[test]
fn a_family_delete_before_the_primary_family_was_seen() {
    let frag = |t, op, b: Option<&str>| Frag {
        key: 0,
        t,
        op,
        a: None,
        b: b.map(str::to_owned),
    };
    let mut layout = Layout::new(vec!["id".into()], true);
    layout.primary_family = Some("primary".into());
    let mut w = Window::new(layout, None, hlc((1, 0)));
    let set = change_batch(
        "details",
        "d.ndjson",
        0,
        &[frag((1, 0), Op::Update, Some("x"))],
    );
    w.push(set, Some("details"), "d.ndjson").unwrap();
    let mut c = apply::writer(Mode::UpdateDelete, w.finish().unwrap());
    let table = c.outputs(10).unwrap();
    assert_eq!(table[0].num_rows(), 1);

    let mut w = Window::new(c.log().layout().clone(), Some(hlc((1, 0))), hlc((2, 0)));
    let clear = change_batch("details", "d2.ndjson", 0, &[frag((2, 0), Op::Delete, None)]);
    w.push(clear, Some("details"), "d2.ndjson").unwrap();
    let mut c = apply::writer(Mode::UpdateDelete, w.finish().unwrap());
    let merged = c.merge(&table[0], Keep::All).unwrap();
    assert_eq!(merged.superseded, [0], "id 0 changes");
    assert_eq!(merged.batch.num_rows(), 1, "row 0 still exists, `b` NULL");
    assert_eq!(c.counts().deleted, 0);
}
