//! Planning: which RESOLVED to apply next and which files each table reads for it.
//!
//! A file named with timestamp `ts` holds rows with `updated ≥ ts` (format spec §1.5, §2.6), and
//! every file that can hold a row `≤ R` exists once `R.RESOLVED` exists (§1.5, §2.4). So the
//! files for a step to `R` are the table's files with `ts ≤ R` (a scan file can carry `ts == R`
//! and sort *after* `R.RESOLVED`; comparing timestamps, not names, keeps it) that may still hold
//! unapplied rows: `ts > applied`, or at or after the table's first file that still had rows
//! newer than what was applied (`pending_from`). Rows are then filtered to `(applied, R]`.
//!
//! Progress is per table and lives in the Delta log; the plan only reads it.

use std::collections::BTreeMap;

use crate::apply::{KeyTexts, int_slice, text_slice};
use crate::format::hlc::Hlc;
use crate::format::names::{DataFileName, ObjectName, PartitionFormat};
use crate::format::types::ColumnType;
use crate::format::values;

/// One changefeed object, as listed.
#[derive(Debug, Clone)]
pub struct Object {
    pub name: ObjectName,
    /// Path relative to the changefeed root.
    pub path: String,
    pub size: u64,
    /// When storage wrote it (Unix milliseconds), when the listing says.
    pub modified: Option<i64>,
}

/// What a table has applied, as recorded with its last commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// The RESOLVED timestamp applied last.
    pub applied: Option<Hlc>,
    /// Path (relative to the changefeed root) of the first file, in name order, that still held
    /// rows newer than `applied`; `None` when every file with `ts ≤ applied` was used up.
    pub pending_from: Option<String>,
    /// A RESOLVED interval too large for one window, part-way through being applied in key
    /// slices ([`Slices`]); `applied` and `pending_from` still describe the interval's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slices: Option<Slices>,
}

/// A RESOLVED interval applied in `of` commits, one per slice of the key space (a key's every
/// change falls into one slice: [`crate::apply::slice_of`]), so memory follows the window, not
/// the interval — an initial scan is one interval as large as the table. `done` slices
/// (`0..done`) are committed; the next commit applies slice `done`. The interval's end is
/// fixed here: a RESOLVED listed later (an out-of-order event) cannot change it half way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Slices {
    pub resolved: Hlc,
    pub of: u32,
    pub done: u32,
}

impl Slices {
    /// By default no slice is planned smaller than this (decoded bytes; `min_slice_bytes`):
    /// every slice reads the whole interval again, so a tiny window (`--max-window-bytes 1`,
    /// one commit per RESOLVED) must not turn one interval into thousands of passes.
    pub const MIN_BYTES: u64 = 1 << 20;
    /// Nor more slices than this; past it a slice may exceed half a window.
    pub const MAX: u32 = 4096;

    /// Slices for an interval of about `bytes` (decoded) under a window of `max_bytes`: each
    /// about half a window (so an uneven split or an estimate a little low still fits), at
    /// least `min_bytes` (e.g. [`Self::MIN_BYTES`]), at most [`Self::MAX`] of them. Below 2
    /// the interval is applied whole.
    pub fn count(bytes: u64, max_bytes: u64, min_bytes: u64) -> u32 {
        let slice = (max_bytes / 2).max(min_bytes).max(1);
        u32::try_from(bytes.div_ceil(slice))
            .unwrap_or(u32::MAX)
            .min(Self::MAX)
    }

    /// The slices an interval to `resolved` of about `bytes` (decoded) is applied in, when
    /// it is larger than the window and can be cut at least in two; `None`: applied whole.
    /// One decision for the engine and `sync --dry-run`.
    pub fn plan(resolved: Hlc, bytes: u64, max_bytes: u64, min_bytes: u64) -> Option<Self> {
        let of = Self::count(bytes, max_bytes, min_bytes);
        (bytes > max_bytes && of > 1).then_some(Self {
            resolved,
            of,
            done: 0,
        })
    }
}

/// `pending_from` value meaning "every file may still hold newer rows": used when the exact
/// resume point is not known (our commitInfo is no longer in the log).
pub const PENDING_ALL: &str = "*";

/// One step: every table advances to `resolved`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub resolved: Hlc,
    /// Table → indices into the object list, in name order. Tables already at or past
    /// `resolved` are absent.
    pub tables: BTreeMap<String, Vec<usize>>,
    /// Bytes of all files the step reads, as weighed by the planner (decoded bytes, estimated).
    pub bytes: u64,
    /// Whether an earlier RESOLVED could end a smaller step: a step that turns out larger
    /// than estimated can be planned again, smaller.
    pub shrinkable: bool,
}

/// Decoded bytes per stored byte, by how a file is stored. The window budget counts decoded
/// bytes — what a step's memory grows with; 16 MB of gzip can be 1.7 GB of NDJSON — estimated
/// from these factors before reading and corrected by what reading finds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Expansion {
    /// Largest factor seen per kind in this run; `None`: the prior ([`Expansion::PRIOR`]).
    seen: [Option<f64>; 3],
}

impl Expansion {
    /// Priors for gzip and zstd NDJSON (typical text ratios) and Parquet (decoded vs. its
    /// compressed pages); plain NDJSON is 1.
    pub const PRIOR: [f64; 3] = [10.0, 10.0, 3.0];

    fn kind(name: &ObjectName) -> Option<usize> {
        use crate::format::names::{Compression, Format};
        match name {
            ObjectName::Data(d) => match (d.format, d.compression) {
                (Format::Json, Compression::None) => None,
                (Format::Json, Compression::Gzip) => Some(0),
                (Format::Json, Compression::Zstd) => Some(1),
                (Format::Parquet, _) => Some(2),
            },
            ObjectName::Resolved(_) => None,
        }
    }

    /// Estimated decoded bytes of an object.
    pub fn weigh(&self, o: &Object) -> u64 {
        match Self::kind(&o.name) {
            None => o.size,
            Some(k) => (o.size as f64 * self.seen[k].unwrap_or(Self::PRIOR[k])).ceil() as u64,
        }
    }

    /// Whether the factor for `o`'s kind comes from a file read in this run, not the prior.
    pub fn knows(&self, o: &Object) -> bool {
        Self::kind(&o.name).is_none_or(|k| self.seen[k].is_some())
    }

    /// Records what reading an object decoded to. Returns whether the estimate grew.
    pub fn observe(&mut self, o: &Object, decoded: u64) -> bool {
        let Some(k) = Self::kind(&o.name) else {
            return false;
        };
        if o.size == 0 {
            return false;
        }
        let factor = decoded as f64 / o.size as f64;
        let before = self.seen[k].unwrap_or(Self::PRIOR[k]);
        let now = self.seen[k].map_or(factor, |f| f.max(factor));
        self.seen[k] = Some(now);
        now > before
    }

    /// Takes in what another reader of the same run learnt (tables applied side by side).
    pub fn merge(&mut self, other: &Expansion) {
        for (mine, theirs) in self.seen.iter_mut().zip(other.seen) {
            *mine = match (*mine, theirs) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
    }
}

/// Default tolerance for a RESOLVED ahead of the wall clock. CockroachDB only resolves
/// timestamps in the past (a RESOLVED is a promise about rows already written), so one far in
/// the future is a stray object — applied, it would make every later real event look
/// "already applied".
pub const DEFAULT_MAX_RESOLVED_AHEAD_SECONDS: u64 = 600;

/// A RESOLVED object left out of planning, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub path: String,
    pub reason: String,
}

/// Removes RESOLVED objects more than `tolerance_ns` ahead of `now_ns` (wall nanoseconds)
/// from `objects` and returns them: planning never sees them.
pub fn refuse_future_resolved(
    objects: &mut Vec<Object>,
    now_ns: i64,
    tolerance_ns: i64,
) -> Vec<Refused> {
    let limit = now_ns.saturating_add(tolerance_ns);
    let mut refused = Vec::new();
    objects.retain(|o| match o.name {
        ObjectName::Resolved(r) if r.wall > limit => {
            refused.push(Refused {
                path: o.path.clone(),
                reason: format!(
                    "RESOLVED {r} is {} s ahead of this machine's clock (tolerance {} s): not applied; \
                     if it is a stray object, delete it (see README \"Recovering from a stray RESOLVED\")",
                    (r.wall - now_ns) / 1_000_000_000,
                    tolerance_ns / 1_000_000_000
                ),
            });
            false
        }
        _ => true,
    });
    refused
}

/// How much later than a RESOLVED a data file it covers may have been written before it counts
/// as late: Azure's `Last-Modified` has one-second resolution.
pub const LATE_SLACK_MS: i64 = 2_000;

/// A data file written after a RESOLVED that covers its timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Late {
    pub path: String,
    /// The earliest-written RESOLVED at or above the file's timestamp.
    pub resolved: Hlc,
    pub written_after_ms: i64,
}

/// Data files written after a RESOLVED that covers them. One changefeed never writes such a file
/// (format spec §2.4: a RESOLVED `R` is written once every row `≤ R` is), so each is a sign of a
/// second changefeed writing into the same root, or of a file copied or rewritten later — rows a
/// run may already have passed over. `objects` sorted by name.
pub fn late_files(objects: &[Object]) -> Vec<Late> {
    // RESOLVEDs in order, with the earliest write time among them and all later ones.
    let resolved: Vec<(Hlc, i64)> = objects
        .iter()
        .filter_map(|o| match o.name {
            ObjectName::Resolved(r) => Some((r, o.modified?)),
            ObjectName::Data(_) => None,
        })
        .collect();
    let mut earliest_from = vec![(Hlc::default(), i64::MAX); resolved.len()];
    let mut min = (Hlc::default(), i64::MAX);
    for (i, &(r, m)) in resolved.iter().enumerate().rev() {
        if m <= min.1 {
            min = (r, m);
        }
        earliest_from[i] = min;
    }
    let mut late = Vec::new();
    for o in objects {
        let (ObjectName::Data(d), Some(m)) = (&o.name, o.modified) else {
            continue;
        };
        let i = resolved.partition_point(|(r, _)| *r < d.ts);
        if let Some(&(r, rm)) = earliest_from.get(i)
            && m > rm + LATE_SLACK_MS
        {
            late.push(Late {
                path: o.path.clone(),
                resolved: r,
                written_after_ms: m - rm,
            });
        }
    }
    late
}

/// The tables that appear in a listing.
/// Tables whose files show a schema id (the table descriptor version, bumped by every schema
/// change) above the one their schema was last read at (`read_at`, from the target's
/// schema.json; a table missing there counts as never read), with the highest id seen: the
/// tables whose keys and exact types should be read from CockroachDB again before applying.
pub fn stale_schemas(
    objects: &[Object],
    read_at: &dyn Fn(&str) -> Option<u64>,
) -> BTreeMap<String, u64> {
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for o in objects {
        if let ObjectName::Data(d) = &o.name {
            let id = seen.entry(d.topic.table().to_owned()).or_default();
            *id = (*id).max(d.schema_id);
        }
    }
    seen.retain(|table, id| read_at(table).is_none_or(|r| r < *id));
    seen
}

/// Leaves out the data files of the tables `applies` refuses (a config's `only_tables`); RESOLVED
/// files stay.
pub fn keep_tables(objects: &mut Vec<Object>, applies: &dyn Fn(&str) -> bool) {
    objects.retain(|o| match &o.name {
        ObjectName::Data(d) => applies(d.topic.table()),
        ObjectName::Resolved(_) => true,
    });
}

pub fn tables(objects: &[Object]) -> Vec<String> {
    let mut t: Vec<String> = objects
        .iter()
        .filter_map(|o| match &o.name {
            ObjectName::Data(d) => Some(d.topic.table().to_owned()),
            ObjectName::Resolved(_) => None,
        })
        .collect();
    t.sort();
    t.dedup();
    t
}

fn pending_name(p: &Progress) -> Option<ObjectName> {
    p.pending_from
        .as_deref()
        .and_then(|s| ObjectName::parse_relative(s).ok())
        .map(|(n, _)| n)
}

/// Whether every row of a data file has been applied: its name timestamp is at or before the
/// applied RESOLVED and it sorts before the first file that still held newer rows. (A buffer of
/// file events may forget such files.)
pub fn consumed(name: &ObjectName, p: &Progress) -> bool {
    let ObjectName::Data(d) = name else {
        return false;
    };
    match (p.applied, p.pending_from.as_deref()) {
        (None, _) | (Some(_), Some(PENDING_ALL)) => false,
        (Some(a), None) => d.ts <= a,
        (Some(a), Some(_)) => d.ts <= a && pending_name(p).is_some_and(|pn| *name < pn),
    }
}

fn eligible(
    d: &DataFileName,
    name: &ObjectName,
    p: &Progress,
    pending: Option<&ObjectName>,
) -> bool {
    match p.applied {
        None => true,
        Some(_) if p.pending_from.as_deref() == Some(PENDING_ALL) => true,
        Some(a) => d.ts > a || pending.is_some_and(|pn| name >= pn),
    }
}

/// Plans the next step: the newest RESOLVED (at most `until`) whose files fit in `max_bytes`,
/// or the oldest pending RESOLVED when even that one does not fit (a RESOLVED step cannot be
/// split). `objects` must be sorted by name. `None` when every table is up to date.
pub fn next_step(
    objects: &[Object],
    progress: &BTreeMap<String, Progress>,
    max_bytes: u64,
    until: Option<Hlc>,
) -> Option<Step> {
    next_step_weighed(objects, progress, max_bytes, until, false, &|o| o.size)
}

/// [`next_step`] with `max_bytes` counted in `weigh(object)` units (e.g. [`Expansion::weigh`]);
/// with `each_resolved`, every step ends at the next RESOLVED however little it holds (one
/// Delta version per RESOLVED).
pub fn next_step_weighed(
    objects: &[Object],
    progress: &BTreeMap<String, Progress>,
    max_bytes: u64,
    until: Option<Hlc>,
    each_resolved: bool,
    weigh: &dyn Fn(&Object) -> u64,
) -> Option<Step> {
    // Tables with files in the listing, and tables known from their progress (a bounded listing
    // may hold no file of theirs, and they still advance to the step's RESOLVED).
    let mut tables = tables(objects);
    tables.extend(progress.keys().cloned());
    tables.sort();
    tables.dedup();
    let none = Progress::default();
    let prog = |t: &str| progress.get(t).unwrap_or(&none);
    let min_applied = tables.iter().map(|t| prog(t).applied).min().flatten();
    let candidates: Vec<Hlc> = objects
        .iter()
        .filter_map(|o| match o.name {
            ObjectName::Resolved(r) => Some(r),
            ObjectName::Data(_) => None,
        })
        .filter(|r| min_applied.is_none_or(|a| *r > a) && until.is_none_or(|u| *r <= u))
        .collect();
    if candidates.is_empty() || tables.is_empty() {
        return None;
    }
    // Per table: eligible files as (ts, size, index).
    let mut files: BTreeMap<&str, Vec<(Hlc, u64, usize)>> = BTreeMap::new();
    let pendings: BTreeMap<&str, Option<ObjectName>> = tables
        .iter()
        .map(|t| (t.as_str(), pending_name(prog(t))))
        .collect();
    for (i, o) in objects.iter().enumerate() {
        if let ObjectName::Data(d) = &o.name {
            let t = d.topic.table();
            let p = prog(t);
            if eligible(d, &o.name, p, pendings[t].as_ref()) {
                files.entry(t).or_default().push((d.ts, weigh(o), i));
            }
        }
    }
    let bytes_for = |r: Hlc| -> u64 {
        tables
            .iter()
            .filter(|t| prog(t).applied.is_none_or(|a| a < r))
            .map(|t| {
                files
                    .get(t.as_str())
                    .map_or(0, |f| f.iter().filter(|x| x.0 <= r).map(|x| x.1).sum())
            })
            .sum()
    };
    // A table part-way through a sliced interval finishes that interval first, to exactly its
    // RESOLVED (every table goes there with it); until that RESOLVED is listed, nothing moves.
    let sliced = tables
        .iter()
        .filter_map(|t| prog(t).slices)
        .map(|s| s.resolved)
        .min();
    let mut chosen = candidates[0];
    match sliced {
        Some(r) if candidates.contains(&r) => chosen = r,
        Some(_) => return None,
        None if each_resolved => {}
        None => {
            for &r in &candidates {
                if bytes_for(r) <= max_bytes {
                    chosen = r;
                } else {
                    break;
                }
            }
        }
    }
    let mut step = Step {
        resolved: chosen,
        tables: BTreeMap::new(),
        bytes: 0,
        shrinkable: sliced.is_none() && chosen != candidates[0],
    };
    for t in &tables {
        if prog(t).applied.is_some_and(|a| a >= chosen) {
            continue;
        }
        let mut idx: Vec<usize> = files
            .get(t.as_str())
            .map(|f| f.iter().filter(|x| x.0 <= chosen).map(|x| x.2).collect())
            .unwrap_or_default();
        idx.sort_unstable();
        step.bytes += idx.iter().map(|&i| weigh(&objects[i])).sum::<u64>();
        step.tables.insert(t.clone(), idx);
    }
    Some(step)
}

/// The partition folder (or, flat, the date prefix) of a changefeed path: every object at or
/// after it in name order lives at or after this string (where a bounded listing starts).
pub fn partition_start(path: &str, partition: PartitionFormat) -> String {
    match partition {
        PartitionFormat::Flat => path.chars().take(8).collect(),
        _ => path
            .rsplit_once('/')
            .map_or(String::new(), |(dir, _)| dir.to_owned()),
    }
}

/// Where one table stands, as the step loop sees it.
#[derive(Debug, Clone, Copy)]
pub struct TableAt<'a> {
    pub name: &'a str,
    /// Its Delta table exists.
    pub exists: bool,
    pub applied: Option<Hlc>,
}

/// The RESOLVED every table is at, when they agree: every existing table applied it and no
/// table still to be created has files at or before it. Only then is the multi-table record
/// (a consistent snapshot) written.
pub fn common_resolved(tables: &[TableAt<'_>], objects: &[Object]) -> Option<Hlc> {
    let first = tables.iter().find(|t| t.exists)?.applied?;
    let existing_agree = tables
        .iter()
        .filter(|t| t.exists)
        .all(|t| t.applied == Some(first));
    let new_lag = tables.iter().filter(|t| !t.exists).any(|t| {
        objects.iter().any(|o| match &o.name {
            ObjectName::Data(d) => d.topic.table() == t.name && d.ts <= first,
            ObjectName::Resolved(_) => false,
        })
    });
    (existing_agree && !new_lag).then_some(first)
}

/// The window's first-key values, for skipping table files by their min/max statistics.
/// Integer and text keys (UUIDs included): other types (and files without statistics) are
/// always read.
#[derive(Debug, Clone)]
pub struct KeyProbe {
    sorted: Sorted,
    /// The window's whole keys' text hashes, sorted (see [`Self::with_key_hashes`]).
    hashes: Option<Vec<u64>>,
}

/// The window's first-key values, sorted, when all are of one orderable kind.
#[derive(Debug, Clone)]
enum Sorted {
    Ints(Vec<i64>),
    /// UTF-8 strings (UUIDs included) compare bytewise, as Parquet and Delta statistics do;
    /// statistics truncated by the writer are still bounds (a truncated max is incremented).
    /// In one buffer (a `String` per key was an allocation per changed key a step, and a
    /// step splits its probe by key slice). With them, the 16 bytes of those that are
    /// canonical UUID texts, in the same order (parsed once per step, not once per file the
    /// key index looks them up in).
    Strings(KeyTexts, Vec<u128>),
    Unknown,
}

impl Sorted {
    fn ints(mut v: Vec<i64>) -> Self {
        v.sort_unstable();
        v.dedup();
        Sorted::Ints(v)
    }

    fn strings<S: AsRef<str>>(mut v: Vec<S>) -> Self {
        // The first column of composite keys repeats: each value once.
        v.sort_unstable_by(|a, b| a.as_ref().cmp(b.as_ref()));
        v.dedup_by(|a, b| a.as_ref() == b.as_ref());
        let bytes = v.iter().map(|t| t.as_ref().len()).sum();
        let mut texts = KeyTexts::with_capacity(v.len(), bytes);
        for t in &v {
            texts.push_with(|out| out.push_str(t.as_ref()));
        }
        let uuids = texts
            .iter()
            .filter_map(|t| values::parse_uuid(t.as_bytes()))
            .map(u128::from_be_bytes)
            .collect();
        Sorted::Strings(texts, uuids)
    }
}

impl KeyProbe {
    /// From the window's first-key values as canonical JSON, of a key column of type `ty`.
    /// Only where the canonical form is what statistics hold: integers, and text compared
    /// bytewise (a timestamp's canonical text is not its statistics' text).
    pub fn new(values: Vec<serde_json::Value>, ty: &ColumnType) -> Self {
        let sorted = match ty {
            ColumnType::Int32 | ColumnType::Int64 => values
                .iter()
                .map(serde_json::Value::as_i64)
                .collect::<Option<Vec<i64>>>()
                .map_or(Sorted::Unknown, Sorted::ints),
            ColumnType::Text => values
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => Some(s),
                    _ => None,
                })
                .collect::<Option<Vec<String>>>()
                .map_or(Sorted::Unknown, Sorted::strings),
            _ => Sorted::Unknown,
        };
        Self::of(sorted)
    }

    /// Of integer first-key values (a key column of an integer type).
    pub fn of_ints(values: Vec<i64>) -> Self {
        Self::of(Sorted::ints(values))
    }

    /// Of text first-key values (a key column of type [`ColumnType::Text`]).
    pub fn of_texts<S: AsRef<str>>(values: Vec<S>) -> Self {
        Self::of(Sorted::strings(values))
    }

    /// One that prunes nothing (keys of another type).
    pub fn unknown() -> Self {
        Self::of(Sorted::Unknown)
    }

    fn of(sorted: Sorted) -> Self {
        Self {
            sorted,
            hashes: None,
        }
    }

    /// Split by key slice ([`crate::apply::slice_of`]) of `of`: probe `i` holds the values of
    /// slice `i` (`None`: none), in the same order. Only for the values of a key of one
    /// column (a slice is taken over the whole key), and without key hashes (those are of
    /// whole keys too); `None` otherwise, and for values of another type.
    pub fn by_slice(&self, of: u32) -> Option<Vec<Option<KeyProbe>>> {
        if self.hashes.is_some() {
            return None;
        }
        let n = of.max(1) as usize;
        match &self.sorted {
            Sorted::Ints(v) => {
                let mut parts = vec![Vec::new(); n];
                for &i in v {
                    parts[int_slice(i, of) as usize].push(i);
                }
                Some(
                    parts
                        .into_iter()
                        .map(|v| (!v.is_empty()).then(|| Self::of(Sorted::Ints(v))))
                        .collect(),
                )
            }
            Sorted::Strings(texts, uuids) => {
                // Every text a UUID (the common text key): the two lists pair up.
                let paired = uuids.len() == texts.len();
                let mut parts: Vec<(KeyTexts, Vec<u128>)> = vec![Default::default(); n];
                for (i, t) in texts.iter().enumerate() {
                    let (p, u) = &mut parts[text_slice(t, of) as usize];
                    p.push_with(|out| out.push_str(t));
                    let uuid = if paired {
                        Some(uuids[i])
                    } else {
                        values::parse_uuid(t.as_bytes()).map(u128::from_be_bytes)
                    };
                    u.extend(uuid);
                }
                Some(
                    parts
                        .into_iter()
                        .map(|(t, u)| (t.len() > 0).then(|| Self::of(Sorted::Strings(t, u))))
                        .collect(),
                )
            }
            Sorted::Unknown => None,
        }
    }

    /// With the window's whole keys hashed ([`crate::apply::ChangeLog::key_hashes`]): keys of
    /// several columns (or of another type) are then looked up in a key index by them.
    pub fn with_key_hashes(mut self, hashes: Vec<u64>) -> Self {
        self.hashes = Some(hashes);
        self
    }

    /// The window's key-text hashes, sorted, when given.
    pub fn key_hashes(&self) -> Option<&[u64]> {
        self.hashes.as_deref()
    }

    /// The window's first-key integers, sorted (when they are integers).
    pub fn ints(&self) -> Option<&[i64]> {
        match &self.sorted {
            Sorted::Ints(v) => Some(v),
            _ => None,
        }
    }

    /// The window's first-key texts, sorted bytewise (when they are text).
    pub(crate) fn strings(&self) -> Option<&KeyTexts> {
        match &self.sorted {
            Sorted::Strings(v, _) => Some(v),
            _ => None,
        }
    }

    /// Of the window's first-key texts, the canonical UUIDs as 16 bytes, sorted (numeric order
    /// is their text's bytewise order).
    pub fn uuids(&self) -> Option<&[u128]> {
        match &self.sorted {
            Sorted::Strings(_, u) => Some(u),
            _ => None,
        }
    }

    /// Whether a file whose first key spans `range` (min, max) may hold a window key.
    pub fn may_hold(&self, range: Option<&(serde_json::Value, serde_json::Value)>) -> bool {
        let Some((lo, hi)) = range else {
            return true;
        };
        match &self.sorted {
            Sorted::Ints(keys) => match (lo.as_i64(), hi.as_i64()) {
                (Some(lo), Some(hi)) => {
                    let i = keys.partition_point(|k| *k < lo);
                    i < keys.len() && keys[i] <= hi
                }
                _ => true,
            },
            Sorted::Strings(keys, _) => match (lo.as_str(), hi.as_str()) {
                (Some(lo), Some(hi)) => {
                    let i = crate::key_index::partition(keys.len(), |i| keys.get(i) < lo);
                    i < keys.len() && keys.get(i) <= hi
                }
                _ => true,
            },
            Sorted::Unknown => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::names::{Compression, Format, Topic};

    fn data(table: &str, ts: Hlc, id: u64, size: u64) -> Object {
        let name = ObjectName::Data(DataFileName {
            ts,
            session: "0123456789abcdef".into(),
            node: 1,
            sink: 1,
            file_id: id,
            topic: Topic(table.into()),
            schema_id: 1,
            format: Format::Json,
            compression: Compression::None,
        });
        let path = name.render(PartitionFormat::Flat);
        Object {
            name,
            path,
            size,
            modified: None,
        }
    }

    fn resolved(ts: Hlc) -> Object {
        let name = ObjectName::Resolved(ts);
        let path = name.render(PartitionFormat::Flat);
        Object {
            name,
            path,
            size: 45,
            modified: None,
        }
    }

    fn sorted(mut v: Vec<Object>) -> Vec<Object> {
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    const S: i64 = 1_700_000_000_000_000_000;

    fn h(s: i64) -> Hlc {
        Hlc::new(S + s * 1_000_000_000, 0)
    }

    #[test]
    fn a_schema_is_stale_when_a_file_shows_a_newer_schema_id() {
        let with_id = |table: &str, id: u64, schema_id: u64| {
            let mut o = data(table, h(id as i64), id, 10);
            if let ObjectName::Data(d) = &mut o.name {
                d.schema_id = schema_id;
            }
            o
        };
        let objects = vec![
            with_id("a", 1, 3),
            with_id("a", 2, 0xb),
            with_id("a+fam", 3, 0xa),
            with_id("b", 4, 7),
            with_id("c", 5, 2),
            resolved(h(6)),
        ];
        let read_at = |t: &str| match t {
            "a" => Some(0xa),
            "b" => Some(7),
            _ => None,
        };
        let stale = stale_schemas(&objects, &read_at);
        // a: 0xb > 0xa (its family's files count as the table's); b: read at its id; c: never.
        assert_eq!(
            stale.into_iter().collect::<Vec<_>>(),
            [("a".to_owned(), 0xb), ("c".to_owned(), 2)]
        );
        assert!(stale_schemas(&objects, &|_| Some(u64::MAX)).is_empty());
    }

    #[test]
    fn window_budget_counts_decoded_bytes_and_learns_the_ratio() {
        let gz = |ts: Hlc, id: u64, size: u64| {
            let mut o = data("t", ts, id, size);
            if let ObjectName::Data(d) = &mut o.name {
                d.compression = crate::format::names::Compression::Gzip;
            }
            o.path = o.name.render(PartitionFormat::Flat);
            o
        };
        let objs = sorted(vec![
            gz(h(0), 0, 100),
            resolved(h(0)),
            gz(h(1), 1, 100),
            resolved(h(1)),
            gz(h(2), 2, 100),
            resolved(h(2)),
        ]);
        let none = BTreeMap::new();
        // Stored bytes: everything fits 300.
        assert_eq!(next_step(&objs, &none, 300, None).unwrap().resolved, h(2));
        // Decoded (prior 10×): 1,000 per file; a 2,500 budget stops at the second RESOLVED.
        let mut e = Expansion::default();
        let step = next_step_weighed(&objs, &none, 2_500, None, false, &|o| e.weigh(o)).unwrap();
        assert_eq!(
            (step.resolved, step.bytes, step.shrinkable),
            (h(1), 2_000, true)
        );
        // Reading found 100× (a whitespace or repetitive feed): the next plan is smaller.
        assert!(e.observe(&objs[0], 10_000));
        let step = next_step_weighed(&objs, &none, 2_500, None, false, &|o| e.weigh(o)).unwrap();
        assert_eq!((step.resolved, step.shrinkable), (h(0), false));
        // One step per RESOLVED when asked, however much would fit.
        let step = next_step_weighed(&objs, &none, u64::MAX, None, true, &|o| o.size).unwrap();
        assert_eq!((step.resolved, step.bytes), (h(0), 100));
        // A smaller ratio than seen before does not shrink the estimate within a run.
        assert!(!e.observe(&objs[0], 200));
        assert_eq!(e.weigh(&objs[0]), 10_000);
    }

    #[test]
    fn files_written_after_a_resolved_that_covers_them_are_late() {
        let at = |mut o: Object, ms: i64| {
            o.modified = Some(ms);
            o
        };
        let objs = sorted(vec![
            at(data("t", h(0), 0, 10), 1_000),
            at(resolved(h(1)), 2_000),
            // Straddling: named before R, written before R: fine.
            at(data("t", h(1), 1, 10), 1_500),
            // A second feed's file below R, written long after R.RESOLVED.
            at(data("t", h(1), 2, 10), 60_000),
            // Named after R: fine whenever written.
            at(data("t", h(2), 3, 10), 90_000),
            at(resolved(h(3)), 100_000),
        ]);
        let late = late_files(&objs);
        assert_eq!(late.len(), 1, "{late:?}");
        assert_eq!((late[0].resolved, late[0].written_after_ms), (h(1), 58_000));
        // Within Azure's one-second resolution: not late.
        let objs = sorted(vec![
            at(resolved(h(1)), 2_000),
            at(data("t", h(1), 2, 10), 3_000),
        ]);
        assert!(late_files(&objs).is_empty());
    }

    #[test]
    fn a_resolved_far_ahead_of_the_clock_is_refused_not_planned() {
        let stray = Hlc::new(4_070_908_800_000_000_000, 0); // 2099-01-01
        let mut objs = sorted(vec![
            data("t", h(0), 0, 10),
            resolved(h(0)),
            data("t", h(5), 1, 10),
            resolved(h(10)),
            resolved(stray),
        ]);
        let now = h(10).wall;
        let refused = refuse_future_resolved(&mut objs, now, 600_000_000_000);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].path.contains(".RESOLVED") && refused[0].reason.contains("ahead"));
        let step = next_step(&objs, &BTreeMap::new(), u64::MAX, None).unwrap();
        assert_eq!(step.resolved, h(10));
        // Within the tolerance: kept.
        let mut objs = sorted(vec![resolved(h(10))]);
        assert!(refuse_future_resolved(&mut objs, h(0).wall, 600_000_000_000).is_empty());
        assert_eq!(objs.len(), 1);
    }

    #[test]
    fn scan_file_named_with_the_resolved_ts_belongs_to_that_step() {
        let objs = sorted(vec![data("t", h(0), 0, 10), resolved(h(0))]);
        let step = next_step(&objs, &BTreeMap::new(), u64::MAX, None).unwrap();
        assert_eq!(step.resolved, h(0));
        assert_eq!(step.tables["t"].len(), 1);
    }

    #[test]
    fn budget_picks_an_intermediate_resolved_and_progress_skips_used_files() {
        let objs = sorted(vec![
            data("t", h(0), 0, 100),
            resolved(h(1)),
            data("t", h(1).next(), 1, 100),
            resolved(h(2)),
            data("t", h(2).next(), 2, 100),
            resolved(h(3)),
            data("u", h(3).next(), 0, 100),
        ]);
        let step = next_step(&objs, &BTreeMap::new(), 250, None).unwrap();
        assert_eq!(step.resolved, h(2));
        assert_eq!(step.bytes, 200);
        // Too small for even one step: the first RESOLVED anyway.
        assert_eq!(
            next_step(&objs, &BTreeMap::new(), 1, None)
                .unwrap()
                .resolved,
            h(1)
        );
        let mut progress = BTreeMap::new();
        progress.insert(
            "t".to_owned(),
            Progress {
                applied: Some(h(2)),
                pending_from: None,
                slices: None,
            },
        );
        progress.insert("u".to_owned(), progress["t"].clone());
        let step = next_step(&objs, &progress, u64::MAX, None).unwrap();
        assert_eq!(step.resolved, h(3));
        assert_eq!(step.tables["t"].len(), 1, "only the file after h(2)");
        assert!(step.tables["u"].is_empty(), "u's file is newer than h(3)");
        progress.get_mut("t").unwrap().applied = Some(h(3));
        progress.get_mut("u").unwrap().applied = Some(h(3));
        assert_eq!(next_step(&objs, &progress, u64::MAX, None), None);
    }

    #[test]
    fn pending_file_is_read_again_and_lagging_tables_catch_up() {
        let objs = sorted(vec![
            data("t", h(0), 0, 10),
            data("u", h(0), 1, 10),
            resolved(h(1)),
            resolved(h(2)),
        ]);
        let mut progress = BTreeMap::new();
        progress.insert(
            "t".to_owned(),
            Progress {
                applied: Some(h(1)),
                pending_from: Some(objs[0].path.clone()),
                slices: None,
            },
        );
        let step = next_step(&objs, &progress, u64::MAX, None).unwrap();
        assert_eq!(step.resolved, h(2));
        assert_eq!(step.tables["t"], vec![0], "still holds rows after h(1)");
        assert!(!consumed(&objs[0].name, &progress["t"]));
        let done = Progress {
            applied: Some(h(1)),
            pending_from: None,
            slices: None,
        };
        assert!(consumed(&objs[0].name, &done));
        assert!(!consumed(&objs[0].name, &Progress::default()));
        assert_eq!(step.tables["u"], vec![1], "u has applied nothing yet");
        let until = next_step(&objs, &progress, u64::MAX, Some(h(1))).unwrap();
        assert_eq!(until.resolved, h(1));
        assert!(!until.tables.contains_key("t"), "t is already at h(1)");
    }
    #[test]
    fn a_sliced_interval_is_finished_to_its_own_resolved_first() {
        let objs = sorted(vec![
            data("t", h(0), 0, 1000),
            resolved(h(1)),
            data("t", h(1).next(), 1, 10),
            resolved(h(2)),
        ]);
        let sliced = |r| Progress {
            slices: Some(Slices {
                resolved: r,
                of: 4,
                done: 1,
            }),
            ..Progress::default()
        };
        let mut progress = BTreeMap::new();
        progress.insert("t".to_owned(), sliced(h(1)));
        // Everything fits up to h(2), yet the sliced interval ends at h(1).
        let step = next_step(&objs, &progress, u64::MAX, None).unwrap();
        assert_eq!(step.resolved, h(1));
        assert!(!step.shrinkable);
        assert_eq!(step.tables["t"], vec![0]);
        // Its RESOLVED not (yet) listed: no step rather than a different interval.
        progress.insert("t".to_owned(), sliced(h(3)));
        assert_eq!(next_step(&objs, &progress, u64::MAX, None), None);
    }

    #[test]
    fn slice_count_keeps_each_slice_within_half_a_window() {
        const M: u64 = 1 << 20;
        assert_eq!(Slices::count(256 * M, 256 * M, Slices::MIN_BYTES), 2);
        assert_eq!(Slices::count(256 * M + 1, 256 * M, Slices::MIN_BYTES), 3);
        assert_eq!(Slices::count(2560 * M, 256 * M, Slices::MIN_BYTES), 20);
        // A tiny window slices no finer than MIN_BYTES: 1 is "applied whole".
        assert_eq!(Slices::count(M / 2, 1, Slices::MIN_BYTES), 1);
        assert_eq!(Slices::count(5 * M, 1, Slices::MIN_BYTES), 5);
        assert_eq!(Slices::count(u64::MAX, 1, Slices::MIN_BYTES), Slices::MAX);
        // Sliced only when over the window and cut at least in two.
        let r = h(1);
        assert_eq!(Slices::plan(r, 100 * M, 256 * M, Slices::MIN_BYTES), None);
        assert_eq!(
            Slices::plan(r, 3 * M / 2, 1, 2 * M),
            None,
            "one slice of min_bytes"
        );
        let s = Slices::plan(r, 5 * M, 1, Slices::MIN_BYTES).unwrap();
        assert_eq!((s.resolved, s.of, s.done), (r, 5, 0));
    }

    #[test]
    fn key_probe_prunes_integer_and_string_ranges() {
        use serde_json::json;
        let p = KeyProbe::new(vec![json!(5), json!(1), json!(20)], &ColumnType::Int64);
        assert!(p.may_hold(Some(&(json!(0), json!(1)))));
        assert!(p.may_hold(Some(&(json!(6), json!(20)))));
        assert!(!p.may_hold(Some(&(json!(6), json!(19)))));
        assert!(!p.may_hold(Some(&(json!(21), json!(99)))));
        assert!(p.may_hold(None), "no statistics: read it");
        assert!(p.may_hold(Some(&(json!("a"), json!("b")))));
        // Strings (UUIDs) bytewise, as Parquet statistics order them.
        let uuids = KeyProbe::new(
            vec![
                json!("8f0c2a4e-0000-4000-8000-000000000000"),
                json!("0017c32d-f78f-8181-0733-dd545936bff8"),
            ],
            &ColumnType::Text,
        );
        assert!(uuids.may_hold(Some(&(json!("0"), json!("1")))));
        assert!(uuids.may_hold(Some(&(json!("8"), json!("9")))));
        assert!(!uuids.may_hold(Some(&(json!("1"), json!("8")))));
        assert!(!uuids.may_hold(Some(&(json!("9"), json!("g")))));
        // A truncated, incremented max is still an upper bound.
        assert!(uuids.may_hold(Some(&(json!("8f"), json!("8f0c2b")))));
        assert!(
            uuids.may_hold(Some(&(json!(1), json!(2)))),
            "other statistics: read it"
        );
        // Canonical text that is not the statistics' text: never pruned.
        let ts = KeyProbe::new(vec![json!("2019-01-02T03:04:05.5")], &ColumnType::Timestamp);
        assert!(ts.may_hold(Some(&(json!("2020"), json!("2021")))));
    }

    #[test]
    fn common_resolved_waits_for_every_table() {
        let objs = vec![data("t", h(1), 0, 10)];
        let at = |name, exists, applied| TableAt {
            name,
            exists,
            applied,
        };
        let (a, b) = (Some(h(5)), Some(h(6)));
        assert_eq!(
            common_resolved(&[at("x", true, a), at("y", true, a)], &[]),
            a
        );
        assert_eq!(
            common_resolved(&[at("x", true, a), at("y", true, b)], &[]),
            None
        );
        assert_eq!(common_resolved(&[at("x", false, None)], &[]), None);
        // A table not created yet with files at or before the RESOLVED lags behind.
        assert_eq!(
            common_resolved(&[at("x", true, a), at("t", false, None)], &objs),
            None
        );
        assert_eq!(
            common_resolved(&[at("x", true, a), at("u", false, None)], &objs),
            a
        );
    }

    #[test]
    fn partition_start_is_the_folder_or_the_date() {
        assert_eq!(
            partition_start("2026-01-01/x.ndjson", PartitionFormat::Daily),
            "2026-01-01"
        );
        assert_eq!(
            partition_start("20260101x.ndjson", PartitionFormat::Flat),
            "20260101"
        );
    }
}
