//! A deterministic changefeed simulator: writes what CockroachDB's cloud storage sink would write
//! for a seeded workload, plus the ground truth (every distinct event, and each table's state at
//! every RESOLVED) for oracle tests and benchmarks.
//!
//! It follows format spec §1.5 and §2: aggregators (sinks) with their own session, node, sink id
//! and file counter; data files named with the sink's frontier successor; `file_size` rollover;
//! RESOLVED only after every file of its window exists; duplicates; a job restart that re-emits
//! from the last RESOLVED under new sessions; ADD COLUMN with a backfill under a new schema id.

pub mod model;
pub mod parquet;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};

use self::model::{ColumnDef, Datum, TableDef, random_datum, ycsb_field};
use crate::format::batch::Op;
use crate::format::hlc::Hlc;
use crate::format::names::{Compression, DataFileName, Format, ObjectName, PartitionFormat, Topic};
use crate::format::values;

/// The JSON envelope (Parquet ignores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Envelope {
    Wrapped,
    Bare,
}

/// Which per-RESOLVED table states the ground truth holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TruthStates {
    All,
    Last,
    None,
}

/// Everything that shapes a simulated changefeed. Same options and seed, same bytes.
/// (Missing fields read as their defaults: a manifest written before an option existed.)
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SimOptions {
    pub seed: u64,
    pub format: Format,
    pub compression: Compression,
    pub partition: PartitionFormat,
    pub envelope: Envelope,
    /// `diff`: JSON messages carry `before` (updates become `u`).
    pub diff: bool,
    pub mvcc_timestamp: bool,
    /// Any of `usertable`, `orders`, `kitchen_sink`.
    pub tables: Vec<String>,
    pub ycsb_fields: usize,
    /// `usertable` keyed by random UUIDs (CockroachDB's recommended `gen_random_uuid()`
    /// keys) instead of sequential integers.
    pub uuid_keys: bool,
    /// `usertable` keyed by `(crdb_region, ycsb_key)`, as a REGIONAL BY ROW table.
    pub region_keys: bool,
    pub initial_rows: usize,
    pub windows: usize,
    pub events_per_window: usize,
    /// Fractions of inserts, updates and deletes.
    pub mix: [f64; 3],
    /// Wall time between flushes (one window), in milliseconds.
    pub window_ms: u64,
    /// A RESOLVED file every this many windows.
    pub resolved_every: usize,
    pub aggregators: usize,
    /// `file_size`: a file is written once this many bytes are buffered.
    pub file_size: usize,
    pub duplicate_rate: f64,
    /// Fraction of inserts that re-insert a deleted key.
    pub reinsert_rate: f64,
    /// The job restarts after writing this window's files, before its RESOLVED.
    pub restart_at: Option<usize>,
    /// `usertable` gets ADD COLUMN ... DEFAULT with a backfill at the start of this window.
    pub schema_change_at: Option<usize>,
    /// `usertable` loses `field1` (ALTER TABLE ... DROP COLUMN) with a backfill at the start of
    /// this window: every live row is re-emitted without it (format spec §6).
    #[serde(default)]
    pub drop_column_at: Option<usize>,
    /// Fraction of the next window's events that land in files flushed before this window's
    /// RESOLVED: files that sort before a RESOLVED but hold newer rows (format spec §1.5, §2.6),
    /// as aggregators whose frontier lags their buffered rows produce.
    #[serde(default)]
    pub straddle: f64,
    pub truth_states: TruthStates,
    /// Statement time (the initial scan's timestamp).
    pub start: Hlc,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            format: Format::Json,
            compression: Compression::None,
            partition: PartitionFormat::Daily,
            envelope: Envelope::Wrapped,
            diff: false,
            mvcc_timestamp: false,
            tables: vec!["usertable".into(), "orders".into(), "kitchen_sink".into()],
            ycsb_fields: 10,
            uuid_keys: false,
            region_keys: false,
            initial_rows: 100,
            windows: 6,
            events_per_window: 200,
            mix: [0.3, 0.55, 0.15],
            window_ms: 10_000,
            resolved_every: 1,
            aggregators: 2,
            file_size: 16 << 20,
            duplicate_rate: 0.02,
            reinsert_rate: 0.3,
            restart_at: Some(3),
            schema_change_at: Some(4),
            drop_column_at: None,
            straddle: 0.1,
            truth_states: TruthStates::All,
            // 2024-05-03T15:53:36.027474Z, the replicator fixture's statement time.
            start: Hlc::new(1_714_751_616_027_474_000, 0),
        }
    }
}

/// One emitted changefeed message (one family of one row change).
#[derive(Debug, Clone)]
pub struct Message {
    pub table: Arc<TableDef>,
    pub family: String,
    pub op: Op,
    pub updated: Hlc,
    pub mvcc: Hlc,
    /// The whole row in table order (for deletes: the deleted row; only its key is written).
    pub row: Vec<Datum>,
    pub before: Option<Vec<Datum>>,
    pub backfill: bool,
}

/// A JSON object of members in the given order, spaced as CockroachDB writes it.
fn render(fields: &[(&str, String)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        values::write_json_string(&mut s, k);
        s.push_str(": ");
        s.push_str(v);
    }
    s.push('}');
    s
}

impl Message {
    pub fn op_is_delete(&self) -> bool {
        self.op == Op::Delete
    }

    pub fn op_code(&self) -> &'static str {
        self.op.code()
    }

    pub fn approx_bytes(&self) -> usize {
        self.row
            .iter()
            .map(|d| match d {
                Datum::Text(s) | Datum::Decimal(s) | Datum::Json(s) => s.len() + 4,
                _ => 10,
            })
            .sum::<usize>()
            + 60
    }

    /// The `before` object's JSON text (`diff`), as the NDJSON `before` member and Parquet's
    /// `__crdb__before` hold it: `None` for no previous row.
    pub fn before_json(&self) -> Option<String> {
        self.before.as_ref().map(|b| render(&self.fields(b)))
    }

    /// `row`'s values in this message's family as JSON members, sorted by name (§3.4).
    fn fields(&self, row: &[Datum]) -> Vec<(&str, String)> {
        let t = &self.table;
        let mut fields: Vec<(&str, String)> = t
            .family_columns(&self.family, !t.has_families())
            .iter()
            .map(|&c| {
                let mut v = String::new();
                row[c].write_crdb_json(&t.columns[c].sql, &mut v);
                (t.columns[c].name.as_str(), v)
            })
            .collect();
        fields.sort_by(|a, b| a.0.cmp(b.0));
        fields
    }

    /// The NDJSON line, byte for byte as CockroachDB writes it (format spec §3).
    pub fn json_line(&self, opts: &SimOptions) -> String {
        let t = &self.table;
        let mut key = String::from("[");
        for (i, k) in t.key_indices().iter().enumerate() {
            if i > 0 {
                key.push_str(", ");
            }
            self.row[*k].write_crdb_json(&t.columns[*k].sql, &mut key);
        }
        key.push(']');
        let mut top: Vec<(&str, String)> = Vec::new();
        match opts.envelope {
            Envelope::Wrapped => {
                let after = if self.op == Op::Delete {
                    "null".to_owned()
                } else {
                    render(&self.fields(&self.row))
                };
                top.push(("after", after));
                if opts.diff {
                    top.push(("before", self.before_json().unwrap_or("null".to_owned())));
                }
                top.push(("key", key));
                if opts.mvcc_timestamp {
                    top.push(("mvcc_timestamp", format!("\"{}\"", self.mvcc)));
                }
                top.push(("updated", format!("\"{}\"", self.updated)));
            }
            Envelope::Bare => {
                // Deletes in bare: key columns set, every other column null (format spec §3.3).
                let row: Vec<Datum> = if self.op == Op::Delete {
                    let keys = t.key_indices();
                    self.row
                        .iter()
                        .enumerate()
                        .map(|(i, d)| {
                            if keys.contains(&i) {
                                d.clone()
                            } else {
                                Datum::Null
                            }
                        })
                        .collect()
                } else {
                    self.row.clone()
                };
                let mut meta = vec![("key", key)];
                if opts.mvcc_timestamp {
                    meta.push(("mvcc_timestamp", format!("\"{}\"", self.mvcc)));
                }
                meta.push(("updated", format!("\"{}\"", self.updated)));
                let fields = self.fields(&row);
                let meta_text = render(&meta);
                top = fields;
                top.push(("__crdb__", meta_text));
                top.sort_by(|a, b| a.0.cmp(b.0));
            }
        }
        let mut line = render(&top);
        line.push('\n');
        line
    }

    /// The ground-truth record: canonical values of the family's columns.
    fn truth(&self) -> Value {
        let t = &self.table;
        let after = if self.op == Op::Delete {
            Value::Null
        } else {
            let mut m = Map::new();
            for c in t.family_columns(&self.family, true) {
                m.insert(
                    t.columns[c].name.clone(),
                    self.row[c].canonical_json(&t.columns[c].sql.column_type()),
                );
            }
            Value::Object(m)
        };
        let key: Vec<Value> = t
            .key_indices()
            .iter()
            .map(|&k| self.row[k].canonical_json(&t.columns[k].sql.column_type()))
            .collect();
        json!({
            "topic": t.topic(&self.family),
            "family": self.family,
            "schema_id": t.version,
            "op": self.op.code(),
            "updated": self.updated,
            "key": key,
            "after": after,
            "backfill": self.backfill,
        })
    }
}

/// Where a simulator output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The changefeed itself (path relative to the changefeed root).
    Changefeed,
    /// Ground truth (path relative to the truth folder).
    Truth,
}

/// `manifest.json` in the truth folder: the options, what was written, and each table's
/// definition (key, exact SQL types, families) — what `sync --manifest` configures from and
/// the oracle tests read.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub options: SimOptions,
    pub summary: SimSummary,
    pub tables: Vec<TableDef>,
}

/// What was written.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SimSummary {
    pub data_files: usize,
    pub resolved_files: usize,
    pub messages: usize,
    pub distinct_messages: usize,
    pub bytes: usize,
    pub last_resolved: Option<Hlc>,
}

struct Buffer {
    table: Arc<TableDef>,
    family: String,
    messages: Vec<Message>,
    json: String,
    bytes: usize,
}

struct Aggregator {
    session: String,
    node: u32,
    sink: u64,
    file_id: u64,
    data_ts: Hlc,
    /// Open files per (topic, schema version): older versions flush first.
    open: BTreeMap<(String, u64), Buffer>,
}

/// How a schema change edits a row: `(row, live)`.
type RowEdit = Box<dyn Fn(&mut Vec<Datum>, bool)>;

type Sink<'a> = dyn FnMut(Destination, &str, Vec<u8>) -> io::Result<()> + 'a;

struct Sim<'a> {
    opts: SimOptions,
    rng: ChaCha8Rng,
    aggs: Vec<Aggregator>,
    next_sink: u64,
    sink: &'a mut Sink<'a>,
    summary: SimSummary,
    tables: Vec<TableState>,
    pending_dups: Vec<(usize, Message)>,
    /// Every message since the last RESOLVED, for re-emission after a restart.
    since_resolved: Vec<(usize, Message)>,
}

struct TableState {
    def: Arc<TableDef>,
    /// Canonical key text → (row, mvcc of its last change).
    rows: BTreeMap<String, (Vec<Datum>, Hlc)>,
    /// Live keys in a vector, for O(1) random choice (`BTreeMap::nth` is linear).
    live: Vec<String>,
    live_pos: HashMap<String, usize>,
    deleted: Vec<Vec<Datum>>,
    next_id: i64,
    events: Vec<String>,
}

impl TableState {
    fn remember(&mut self, key: &str) {
        if !self.live_pos.contains_key(key) {
            self.live_pos.insert(key.to_owned(), self.live.len());
            self.live.push(key.to_owned());
        }
    }

    fn forget(&mut self, key: &str) {
        if let Some(i) = self.live_pos.remove(key) {
            self.live.swap_remove(i);
            if let Some(moved) = self.live.get(i) {
                self.live_pos.insert(moved.clone(), i);
            }
        }
    }

    fn key_text(def: &TableDef, row: &[Datum]) -> String {
        let key: Vec<Value> = def
            .key_indices()
            .iter()
            .map(|&k| row[k].canonical_json(&def.columns[k].sql.column_type()))
            .collect();
        Value::Array(key).to_string()
    }
}

/// Runs a simulation, handing every object to `sink` in the order CockroachDB would finish them.
pub fn run(opts: &SimOptions, sink: &mut Sink<'_>) -> io::Result<SimSummary> {
    let mut tables = Vec::new();
    for name in &opts.tables {
        let def = match name.as_str() {
            "usertable" => TableDef::usertable(opts.ycsb_fields, opts.uuid_keys, opts.region_keys),
            "orders" => TableDef::orders(),
            "kitchen_sink" => TableDef::kitchen_sink(),
            other => {
                return Err(io::Error::other(format!(
                    "unknown simulated table `{other}` (usertable, orders, kitchen_sink)"
                )));
            }
        };
        tables.push(TableState {
            def: Arc::new(def),
            rows: BTreeMap::new(),
            live: Vec::new(),
            live_pos: HashMap::new(),
            deleted: vec![],
            next_id: 1,
            events: vec![],
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let aggs = (0..opts.aggregators.max(1))
        .map(|i| new_aggregator(&mut rng, i as u64 + 1, opts.start))
        .collect();
    let mut sim = Sim {
        opts: opts.clone(),
        rng,
        aggs,
        next_sink: opts.aggregators.max(1) as u64 + 1,
        sink: narrow(sink),
        summary: SimSummary::default(),
        tables,
        pending_dups: vec![],
        since_resolved: vec![],
    };
    sim.run()?;
    Ok(sim.summary)
}

/// Narrows the sink's lifetime bound to the `Sim` borrow.
fn narrow<'a>(sink: &'a mut Sink<'_>) -> &'a mut Sink<'a> {
    sink
}

fn new_aggregator(rng: &mut ChaCha8Rng, sink: u64, ts: Hlc) -> Aggregator {
    Aggregator {
        session: format!("{:016x}", rng.random::<u64>()),
        node: (sink as u32 - 1) % 3 + 1,
        sink,
        file_id: 0,
        data_ts: ts,
        open: BTreeMap::new(),
    }
}

impl Sim<'_> {
    fn run(&mut self) -> io::Result<()> {
        let start = self.opts.start;
        // Initial scan: every row at the statement time, files named with it (format spec §7).
        for t in 0..self.tables.len() {
            for _ in 0..self.opts.initial_rows {
                let row = self.new_row(t);
                let mvcc = Hlc::new(start.wall - self.rng.random_range(1..1_000_000_000), 0);
                self.apply_insert(t, row, start, mvcc)?;
            }
        }
        self.flush_all(start)?;
        self.resolve(start, true)?;

        let window_ns = self.opts.window_ms as i64 * 1_000_000;
        let mut last_resolved = start;
        let mut carried: Option<Vec<i64>> = None;
        for w in 1..=self.opts.windows {
            let lo = start.wall + (w as i64 - 1) * window_ns;
            let hi = Hlc::new(start.wall + w as i64 * window_ns, 0);
            if self.opts.schema_change_at == Some(w) {
                self.add_column_with_backfill(Hlc::new(lo + 1, 0))?;
            }
            if self.opts.drop_column_at == Some(w) {
                self.drop_column_with_backfill(Hlc::new(lo + 1, 0))?;
            }
            let walls = match carried.take() {
                Some(w) => w,
                None => self.window_walls(lo, hi),
            };
            for wall in walls {
                self.random_event(Hlc::new(wall, 0))?;
            }
            let resolving = w % self.opts.resolved_every.max(1) == 0 || w == self.opts.windows;
            if resolving && self.opts.truth_states == TruthStates::All {
                // The state at `hi`, before rows newer than `hi` are emitted.
                self.write_states(hi)?;
            }
            if self.opts.straddle > 0.0
                && w < self.opts.windows
                && self.opts.schema_change_at != Some(w + 1)
                && self.opts.drop_column_at != Some(w + 1)
            {
                let next_hi = Hlc::new(hi.wall + window_ns, 0);
                let mut next = self.window_walls(hi.wall, next_hi);
                let k = (next.len() as f64 * self.opts.straddle) as usize;
                for wall in next.drain(..k) {
                    self.random_event(Hlc::new(wall, 0))?;
                }
                carried = Some(next);
            }
            self.flush_all(hi)?;
            if self.opts.restart_at == Some(w) {
                self.restart(last_resolved)?;
                self.flush_all(hi)?;
            }
            if resolving {
                self.resolve(hi, false)?;
                last_resolved = hi;
            }
        }
        self.write_truth()
    }

    fn new_row(&mut self, t: usize) -> Vec<Datum> {
        let def = self.tables[t].def.clone();
        if !self.tables[t].deleted.is_empty() && self.rng.random_bool(self.opts.reinsert_rate) {
            // Delete then re-insert: the old key comes back with new values.
            let i = self.rng.random_range(0..self.tables[t].deleted.len());
            let old = self.tables[t].deleted.swap_remove(i);
            let mut row = self.random_values(&def);
            for k in def.key_indices() {
                row[k] = old[k].clone();
            }
            return row;
        }
        let mut row = self.random_values(&def);
        // Integer keys are sequential; UUID keys stay as drawn (random, as gen_random_uuid()).
        // The id is the last key column (after a region's).
        let id = *def.key_indices().last().expect("a key");
        if def.name != "kitchen_sink" && def.columns[id].sql != crate::format::types::SqlType::Uuid
        {
            row[id] = Datum::Int(self.tables[t].next_id);
            self.tables[t].next_id += 1;
        }
        row
    }

    fn random_values(&mut self, def: &TableDef) -> Vec<Datum> {
        def.columns
            .iter()
            .map(|c: &ColumnDef| {
                if def.name == "usertable" && c.name.starts_with("field") {
                    ycsb_field(&mut self.rng)
                } else if c.name == model::REGION {
                    let r = self.rng.random_range(0..model::REGIONS.len());
                    Datum::Text(model::REGIONS[r].to_owned())
                } else {
                    random_datum(&mut self.rng, &c.sql, c.nullable)
                }
            })
            .collect()
    }

    fn aggregator_for(&self, def: &TableDef, row: &[Datum]) -> usize {
        let key = TableState::key_text(def, row);
        let h = key.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
        (h % self.aggs.len() as u64) as usize
    }

    fn random_event(&mut self, ts: Hlc) -> io::Result<()> {
        let t = self.rng.random_range(0..self.tables.len());
        let [ins, upd, _] = self.opts.mix;
        let roll: f64 = self.rng.random();
        let live = self.tables[t].live.len();
        if roll < ins || live == 0 {
            let row = self.new_row(t);
            return self.apply_insert(t, row, ts, ts);
        }
        let idx = self.rng.random_range(0..live);
        let key = self.tables[t].live[idx].clone();
        let old = self.tables[t].rows[&key].0.clone();
        let def = self.tables[t].def.clone();
        if roll < ins + upd {
            // Update some families (often one); unchanged families keep their values.
            let fams: Vec<String> = if def.has_families() {
                let n = if self.rng.random_bool(0.7) {
                    1
                } else {
                    self.rng.random_range(1..=def.families.len())
                };
                let mut f = def.families.clone();
                while f.len() > n {
                    let i = self.rng.random_range(0..f.len());
                    f.remove(i);
                }
                f
            } else {
                def.families.clone()
            };
            let fresh = self.random_values(&def);
            let mut row = old.clone();
            for (i, c) in def.columns.iter().enumerate() {
                if fams.contains(&c.family) && !def.primary_key.contains(&c.name) {
                    row[i] = fresh[i].clone();
                }
            }
            self.tables[t].rows.insert(key, (row.clone(), ts));
            let op = if self.opts.diff {
                Op::Update
            } else {
                Op::Create
            };
            for f in fams {
                let m = Message {
                    table: def.clone(),
                    family: f,
                    op,
                    updated: ts,
                    mvcc: ts,
                    row: row.clone(),
                    before: Some(old.clone()),
                    backfill: false,
                };
                self.record_and_emit(t, m)?;
            }
        } else {
            self.tables[t].rows.remove(&key);
            self.tables[t].forget(&key);
            self.tables[t].deleted.push(old.clone());
            for f in def.families.clone() {
                let m = Message {
                    table: def.clone(),
                    family: f,
                    op: Op::Delete,
                    updated: ts,
                    mvcc: ts,
                    row: old.clone(),
                    before: Some(old.clone()),
                    backfill: false,
                };
                self.record_and_emit(t, m)?;
            }
        }
        Ok(())
    }

    fn apply_insert(&mut self, t: usize, row: Vec<Datum>, ts: Hlc, mvcc: Hlc) -> io::Result<()> {
        let def = self.tables[t].def.clone();
        let key = TableState::key_text(&def, &row);
        self.tables[t].remember(&key);
        self.tables[t].rows.insert(key, (row.clone(), mvcc));
        for f in def.families.clone() {
            let m = Message {
                table: def.clone(),
                family: f,
                op: Op::Create,
                updated: ts,
                mvcc,
                row: row.clone(),
                before: None,
                backfill: false,
            };
            self.record_and_emit(t, m)?;
        }
        Ok(())
    }

    fn record_and_emit(&mut self, t: usize, m: Message) -> io::Result<()> {
        self.tables[t].events.push(m.truth().to_string());
        self.summary.distinct_messages += 1;
        let agg = self.aggregator_for(&m.table, &m.row);
        self.since_resolved.push((agg, m.clone()));
        self.emit(agg, m, true)
    }

    /// Buffers a message in its aggregator's open file, writing the file past `file_size`.
    fn emit(&mut self, agg: usize, m: Message, may_duplicate: bool) -> io::Result<()> {
        if may_duplicate && self.rng.random_bool(self.opts.duplicate_rate) {
            if self.rng.random_bool(0.5) {
                self.emit(agg, m.clone(), false)?;
            } else {
                self.pending_dups.push((agg, m.clone()));
            }
        }
        self.summary.messages += 1;
        let topic = m.table.topic(&m.family);
        let key = (topic, m.table.version);
        let a = &mut self.aggs[agg];
        let buf = a.open.entry(key.clone()).or_insert_with(|| Buffer {
            table: m.table.clone(),
            family: m.family.clone(),
            messages: vec![],
            json: String::new(),
            bytes: 0,
        });
        if self.opts.format == Format::Json {
            let line = m.json_line(&self.opts);
            buf.bytes += line.len();
            buf.json.push_str(&line);
        } else {
            buf.bytes += m.approx_bytes();
        }
        buf.messages.push(m);
        if buf.bytes >= self.opts.file_size {
            let buf = a.open.remove(&key).expect("just filled");
            self.write_file(agg, buf)?;
        }
        Ok(())
    }

    fn write_file(&mut self, agg: usize, buf: Buffer) -> io::Result<()> {
        let a = &mut self.aggs[agg];
        let name = DataFileName {
            ts: a.data_ts,
            session: a.session.clone(),
            node: a.node,
            sink: a.sink,
            file_id: a.file_id,
            topic: Topic(buf.table.topic(&buf.family)),
            schema_id: buf.table.version,
            format: self.opts.format,
            compression: if self.opts.format == Format::Json {
                self.opts.compression
            } else {
                Compression::None
            },
        };
        a.file_id += 1;
        let bytes = match self.opts.format {
            Format::Json => compress(buf.json.into_bytes(), self.opts.compression)?,
            Format::Parquet => {
                let cols = buf.table.family_columns(&buf.family, true);
                parquet::encode(&buf.table, &cols, &buf.messages, &self.opts)
                    .map_err(io::Error::other)?
            }
        };
        self.summary.data_files += 1;
        self.summary.bytes += bytes.len();
        let path = ObjectName::Data(name).render(self.opts.partition);
        (self.sink)(Destination::Changefeed, &path, bytes)
    }

    /// Every aggregator writes its open files; its next files are named after `frontier`.
    fn flush_all(&mut self, frontier: Hlc) -> io::Result<()> {
        // Late duplicates go in just before the flush, often into a later (rolled-over) file;
        // a file's name timestamp stays a lower bound of its rows (format spec §2.6).
        for (agg, m) in std::mem::take(&mut self.pending_dups) {
            self.emit(agg, m, false)?;
        }
        for agg in 0..self.aggs.len() {
            let open = std::mem::take(&mut self.aggs[agg].open);
            for (_, buf) in open {
                self.write_file(agg, buf)?;
            }
            self.aggs[agg].data_ts = frontier.next();
        }
        Ok(())
    }

    /// Event times of a window, sorted (the first events are the ones that may straddle).
    fn window_walls(&mut self, lo: i64, hi: Hlc) -> Vec<i64> {
        let mut walls: Vec<i64> = (0..self.opts.events_per_window)
            .map(|_| self.rng.random_range(lo + 2..=hi.wall))
            .collect();
        walls.sort_unstable();
        walls.dedup();
        walls
    }

    fn resolve(&mut self, ts: Hlc, states: bool) -> io::Result<()> {
        let bytes = match self.opts.format {
            Format::Json if self.opts.envelope == Envelope::Bare => {
                format!("{{\"__crdb__\":{{\"resolved\":\"{ts}\"}}}}").into_bytes()
            }
            Format::Json => format!("{{\"resolved\":\"{ts}\"}}").into_bytes(),
            Format::Parquet => parquet::encode_resolved(ts).map_err(io::Error::other)?,
        };
        self.summary.resolved_files += 1;
        self.summary.last_resolved = Some(ts);
        self.since_resolved.clear();
        let path = ObjectName::Resolved(ts).render(self.opts.partition);
        (self.sink)(Destination::Changefeed, &path, bytes)?;
        if states && self.opts.truth_states == TruthStates::All {
            self.write_states(ts)?;
        }
        Ok(())
    }

    /// A job restart: new sink instances (sessions, sink ids, file counters) re-emit every message
    /// since the last RESOLVED, named from the resume point (format spec §2.2).
    fn restart(&mut self, resume: Hlc) -> io::Result<()> {
        let n = self.aggs.len();
        let mut aggs = Vec::with_capacity(n);
        for _ in 0..n {
            aggs.push(new_aggregator(&mut self.rng, self.next_sink, resume.next()));
            self.next_sink += 1;
        }
        self.aggs = aggs;
        for (agg, m) in self.since_resolved.clone() {
            self.emit(agg, m, false)?;
        }
        Ok(())
    }

    /// `ALTER TABLE usertable ADD COLUMN field_added STRING DEFAULT 'x'`: a new descriptor version
    /// and every live row re-emitted at the backfill time (format spec §6).
    fn add_column_with_backfill(&mut self, at: Hlc) -> io::Result<()> {
        self.alter_usertable(at, |def| {
            def.columns.push(ColumnDef {
                name: "field_added".into(),
                sql: crate::format::types::SqlType::String,
                nullable: true,
                family: "primary".into(),
            });
            Some(Box::new(|row: &mut Vec<Datum>, live: bool| {
                row.push(if live {
                    Datum::Text("x".into())
                } else {
                    Datum::Null
                })
            }))
        })
    }

    /// `ALTER TABLE usertable DROP COLUMN field1`: a new descriptor version and every live row
    /// re-emitted without the column at the backfill time (format spec §6).
    fn drop_column_with_backfill(&mut self, at: Hlc) -> io::Result<()> {
        self.alter_usertable(at, |def| {
            let i = def.columns.iter().position(|c| c.name == "field1")?;
            def.columns.remove(i);
            Some(Box::new(move |row: &mut Vec<Datum>, _| {
                row.remove(i);
            }))
        })
    }

    /// A schema change of `usertable` with a backfill: `alter` edits the definition and returns
    /// how to edit a row (live rows, and the deleted ones kept for re-insertion); every live row
    /// is then re-emitted under the new descriptor version at `at`.
    fn alter_usertable(
        &mut self,
        at: Hlc,
        alter: impl FnOnce(&mut TableDef) -> Option<RowEdit>,
    ) -> io::Result<()> {
        let Some(t) = self.tables.iter().position(|s| s.def.name == "usertable") else {
            return Ok(());
        };
        let mut def = (*self.tables[t].def).clone();
        let Some(edit) = alter(&mut def) else {
            return Ok(());
        };
        def.version += 2;
        let def = Arc::new(def);
        self.tables[t].def = def.clone();
        let rows: Vec<(String, (Vec<Datum>, Hlc))> = std::mem::take(&mut self.tables[t].rows)
            .into_iter()
            .collect();
        for (key, (mut row, mvcc)) in rows {
            edit(&mut row, true);
            self.tables[t].rows.insert(key, (row.clone(), mvcc));
            let m = Message {
                table: def.clone(),
                family: "primary".into(),
                op: Op::Create,
                updated: at,
                mvcc,
                row,
                before: None,
                backfill: true,
            };
            self.record_and_emit(t, m)?;
        }
        for d in &mut self.tables[t].deleted {
            edit(d, false);
        }
        Ok(())
    }

    fn write_states(&mut self, ts: Hlc) -> io::Result<()> {
        for t in 0..self.tables.len() {
            let def = self.tables[t].def.clone();
            let mut out = String::new();
            for (row, _) in self.tables[t].rows.values() {
                let mut m = Map::new();
                for (i, c) in def.columns.iter().enumerate() {
                    m.insert(c.name.clone(), row[i].canonical_json(&c.sql.column_type()));
                }
                out.push_str(&Value::Object(m).to_string());
                out.push('\n');
            }
            (self.sink)(
                Destination::Truth,
                &format!("{}/state/{}.ndjson", def.name, ts.ts33()),
                out.into_bytes(),
            )?;
        }
        Ok(())
    }

    fn write_truth(&mut self) -> io::Result<()> {
        if self.opts.truth_states == TruthStates::Last
            && let Some(ts) = self.summary.last_resolved
        {
            self.write_states(ts)?;
        }
        let mut tables = Vec::new();
        for t in 0..self.tables.len() {
            let def = self.tables[t].def.clone();
            let mut events = std::mem::take(&mut self.tables[t].events).join("\n");
            events.push('\n');
            (self.sink)(
                Destination::Truth,
                &format!("{}/events.ndjson", def.name),
                events.into_bytes(),
            )?;
            tables.push((*def).clone());
        }
        let manifest = Manifest {
            options: self.opts.clone(),
            summary: self.summary.clone(),
            tables,
        };
        let text = serde_json::to_string_pretty(&manifest).map_err(io::Error::other)?;
        (self.sink)(Destination::Truth, "manifest.json", text.into_bytes())
    }
}

fn compress(bytes: Vec<u8>, c: Compression) -> io::Result<Vec<u8>> {
    use std::io::Write;
    match c {
        Compression::None => Ok(bytes),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&bytes)?;
            e.finish()
        }
        Compression::Zstd => zstd::encode_all(bytes.as_slice(), 3),
    }
}
