//! Reading a table's files for a step: the key of a table that has none configured, and the
//! window of changes (one file decoded at a time, on a blocking thread).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::RecordBatch;
use crdb_delta_core::Hlc;
use crdb_delta_core::apply::{ChangeError, Window};
use crdb_delta_core::format::decode::{self, DecodeError, DecodeOptions, SliceRows};
use crdb_delta_core::format::keys::{self, KeyError, KeyEvidence};
use crdb_delta_core::format::names::ObjectName;
use crdb_delta_core::plan::{self, Object};

use super::carry::{self, Keeper};
use super::listing::fetch;
use super::report::TableReport;
use super::slice_cache::SliceCache;
use super::slice_spill::{SliceSpill, SpillWriter};
use super::table::TableState;
use super::{SyncError, SyncOptions};

use crate::storage::Location;

/// Files decoded at most to learn an unconfigured primary key.
pub(super) const KEY_EVIDENCE_FILES: usize = 32;

/// Learns an unconfigured key from the table's first files.
pub(super) async fn derive_key(
    state: &TableState,
    objects: &[Object],
    source: &Location,
    opts: &SyncOptions,
) -> Result<Vec<String>, SyncError> {
    let mut evidence: BTreeMap<String, KeyEvidence> = BTreeMap::new();
    let mut last = None;
    let files = objects.iter().filter(|o| match &o.name {
        ObjectName::Data(d) => d.topic.table() == state.name,
        ObjectName::Resolved(_) => false,
    });
    for obj in files.take(KEY_EVIDENCE_FILES) {
        let ObjectName::Data(d) = obj.name.clone() else {
            continue;
        };
        let bytes = fetch(source, obj).await?;
        let path = obj.path.clone();
        let dopts = DecodeOptions {
            batch_size: opts.batch_size,
            max_line_bytes: opts.max_line_bytes,
            ..DecodeOptions::default()
        };
        let family = d.topic.family().unwrap_or_default().to_owned();
        let ev = tokio::task::spawn_blocking(move || -> Result<KeyEvidence, DecodeError> {
            let mut s = decode::decode_bytes(&d, &path, bytes, &dopts)?;
            for b in s.by_ref() {
                b?;
            }
            Ok(s.key_evidence().clone())
        })
        .await??;
        evidence.entry(family).or_default().merge(&ev);
        let all: Vec<&KeyEvidence> = evidence.values().collect();
        match keys::primary_key(&state.name, None, &all) {
            Ok(k) => return Ok(k),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or(KeyError {
            table: state.name.clone(),
            reason: "no data files".into(),
        })
        .into())
}

/// What a step may decode, and what decoding taught about stored vs. decoded sizes.
pub(super) struct Budget<'a> {
    pub(super) expansion: &'a mut plan::Expansion,
    /// Whether an earlier RESOLVED could end a smaller step: a window over the budget is then
    /// planned again, smaller; otherwise it is applied in key slices.
    pub(super) shrinkable: bool,
}

/// A file decoded ahead, while the one before it is pushed: its batches, each with the decoded
/// input bytes up to its end, and its stored bytes.
struct Decoded {
    batches: carry::Batches,
    fetched: u64,
    /// Its messages are in the `bare` envelope ([`decode::BatchStream::bare_envelope`]).
    bare: bool,
    /// Rows its decoder skipped ([`decode::BatchStream::rows_skipped`]).
    skipped: u64,
    /// Its rows' key slices ([`decode::BatchStream::slice_rows`]).
    slices: Option<Arc<SliceRows>>,
    /// Read from the slice cache, not fetched.
    cached: bool,
}

/// Fetches `obj`, or reads it from the slice cache when that holds it (and keeps it there
/// when not); `true` when it came from the cache.
async fn fetch_kept(
    source: &Location,
    obj: &Object,
    cache: Option<&SliceCache>,
) -> Result<(bytes::Bytes, bool), SyncError> {
    let Some(cache) = cache else {
        return Ok((fetch(source, obj).await?, false));
    };
    let (c, o) = (cache.clone(), obj.clone());
    if let Some(bytes) = tokio::task::spawn_blocking(move || c.get(&o)).await? {
        return Ok((bytes, true));
    }
    let bytes = fetch(source, obj).await?;
    let (c, o, b) = (cache.clone(), obj.clone(), bytes.clone());
    tokio::task::spawn_blocking(move || c.put(&o, &b)).await?;
    Ok((bytes, false))
}

/// Counts one file read, fetched or from the slice cache.
fn count_read(report: &mut TableReport, stored: u64, cached: bool) {
    report.files_read += 1;
    report.files_from_slice_cache += u64::from(cached);
    count_bytes(report, stored, cached);
}

/// Counts a file's stored bytes, fetched or from the slice cache.
fn count_bytes(report: &mut TableReport, stored: u64, cached: bool) {
    if cached {
        report.bytes_from_slice_cache += stored;
    } else {
        report.bytes_read += stored;
    }
}

/// The key slices of the files of an interval being applied in slices, as a pass over each
/// found them ([`SliceRows`], a byte a row or NDJSON line): the interval's later slices read
/// them instead of decoding every file's key and timestamp columns (NDJSON: parsing every
/// line) and hashing every key again. Up to a budget of bytes; files past it are read as
/// before. Entries found under another interval or slice count are not used (the decoders
/// check: `SliceRows::fits`, `fits_lines`); the table drops them all when its sliced interval
/// ends.
#[derive(Default)]
pub(super) struct SliceMemo {
    files: HashMap<String, Arc<SliceRows>>,
    bytes: u64,
}

impl SliceMemo {
    fn get(&self, path: &str) -> Option<Arc<SliceRows>> {
        self.files.get(path).cloned()
    }

    fn keep(&mut self, path: &str, slices: Arc<SliceRows>, budget: u64) {
        let old = self.files.get(path).map_or(0, |s| s.bytes());
        if self.bytes - old + slices.bytes() <= budget {
            self.bytes = self.bytes - old + slices.bytes();
            self.files.insert(path.to_owned(), slices);
        }
    }
}

/// What one file's push reads from.
enum Input {
    /// Batches in memory: kept from the step before, or decoded ahead (with the rows its
    /// decoder skipped, and its rows' key slices).
    Batches(carry::Batches, u64, Option<Arc<SliceRows>>),
    /// The file's bytes, decoded batch by batch while pushed.
    Stream(bytes::Bytes, DecodeOptions),
    /// The file's rows of one slice in the slice spill.
    Spilled(Arc<SliceSpill>, u32),
}

/// Fetches and decodes one file on a blocking thread, all of it.
fn decode_ahead(
    obj: &Object,
    source: &Location,
    dopts: &DecodeOptions,
    cache: Option<SliceCache>,
) -> Option<tokio::task::JoinHandle<Result<Decoded, SyncError>>> {
    let ObjectName::Data(d) = obj.name.clone() else {
        return None;
    };
    let (obj, source, dopts) = (obj.clone(), source.clone(), dopts.clone());
    Some(tokio::spawn(async move {
        let (bytes, cached) = fetch_kept(&source, &obj, cache.as_ref()).await?;
        let fetched = bytes.len() as u64;
        tokio::task::spawn_blocking(move || -> Result<Decoded, SyncError> {
            let mut s = decode::decode_bytes(&d, &obj.path, bytes, &dopts)?;
            let mut batches = Vec::new();
            while let Some(b) = s.next() {
                batches.push((b?, s.input_bytes()));
            }
            Ok(Decoded {
                batches,
                fetched,
                bare: s.bare_envelope(),
                skipped: s.rows_skipped(),
                slices: s.slice_rows(),
                cached,
            })
        })
        .await?
    }))
}

/// Before an interval's slice count is chosen from the planner's estimate: when none of the
/// interval's files of a compressed kind (Parquet, gzip or zstd NDJSON) is weighed from
/// experience yet (the first step of a run), fetches the largest and learns what it decodes to:
/// a Parquet file's footer (its row groups' uncompressed size, what the window counts), an
/// NDJSON file's text decompressed and counted. The priors (3× for Parquet, 10× for gzip and
/// zstd) are often several times what files decode to, and every slice reads the whole
/// interval again: an initial scan sliced by a prior takes that many times more passes than it
/// needs. Slice 0 still checks the estimate against what it decodes.
pub(super) async fn learn_expansion(
    report: &mut TableReport,
    files: &[usize],
    objects: &[Object],
    source: &Location,
    dopts: &DecodeOptions,
    expansion: &mut plan::Expansion,
    cache: Option<&SliceCache>,
) -> Result<(), SyncError> {
    let largest = files
        .iter()
        .map(|&i| &objects[i])
        .filter(|o| matches!(&o.name, ObjectName::Data(_)) && !expansion.knows(o))
        .max_by_key(|o| o.size);
    let Some(obj) = largest else {
        return Ok(());
    };
    let ObjectName::Data(d) = obj.name.clone() else {
        return Ok(());
    };
    let (bytes, cached) = fetch_kept(source, obj, cache).await?;
    count_bytes(report, bytes.len() as u64, cached);
    let (path, dopts) = (obj.path.clone(), dopts.clone());
    let decoded =
        tokio::task::spawn_blocking(move || decode::decoded_size(&d, &path, bytes, &dopts))
            .await??;
    expansion.observe(obj, decoded);
    Ok(())
}

/// Where a step's reading starts from and what it keeps for the next step.
pub(super) struct Reuse<'a> {
    /// Files whose rows past the last step's RESOLVED were kept ([`carry::Carry::take`]):
    /// pushed from memory, not fetched. Taken out as used.
    pub(super) carried: &'a mut HashMap<String, carry::Batches>,
    /// Keeps this step's rows past its RESOLVED; `None` when nothing is to be kept.
    pub(super) keeper: Option<&'a mut Keeper>,
    /// A sliced interval's files' key slices, kept up to the budget (bytes) for its later
    /// slices; `None` outside a sliced interval.
    pub(super) slices: Option<(&'a mut SliceMemo, u64)>,
    /// A sliced interval's files kept on local disk for its later slices; `None` outside one,
    /// or without `slice_cache_bytes`.
    pub(super) cache: Option<SliceCache>,
    /// The interval's rows cut by slice on local disk: written by this pass, or read by it.
    pub(super) spill: Option<SpillUse>,
}

/// How a pass of a sliced interval uses the slice spill ([`super::slice_spill`]).
pub(super) enum SpillUse {
    /// The pass decodes its files whole and writes the later slices' rows.
    Write(Arc<std::sync::Mutex<SpillWriter>>),
    /// The pass reads slice `.1`'s rows of the files the spill covers from there.
    Read(Arc<SliceSpill>, u32),
}

impl SpillUse {
    /// The spill and slice to read `path`'s rows from, when this pass reads it from there.
    fn reads(&self, path: &str) -> Option<(Arc<SliceSpill>, u32)> {
        match self {
            SpillUse::Read(s, slice) if s.has_file(path) => Some((s.clone(), *slice)),
            _ => None,
        }
    }

    /// The spill this pass writes, if it writes one.
    pub(super) fn writer(&self) -> Option<Arc<std::sync::Mutex<SpillWriter>>> {
        match self {
            SpillUse::Write(w) => Some(w.clone()),
            SpillUse::Read(..) => None,
        }
    }
}

/// Decodes the step's files of one table into a window, in file order. While one file is
/// pushed into the window, the next is fetched and decoded on the other core when it is small
/// (estimated at most `ahead_bytes` decoded), so memory grows by at most that; larger files are
/// streamed batch by batch. Files with kept rows are pushed from memory instead.
/// `limit`: decoded bytes the window may keep (counted in proportion to the rows it keeps,
/// when it keeps one key slice) before reading stops with [`SyncError::WindowOverflow`].
#[allow(clippy::too_many_arguments)]
pub(super) async fn read_window(
    name: &str,
    report: &mut TableReport,
    mut window: Window,
    files: &[usize],
    objects: &[Object],
    source: &Location,
    dopts: &DecodeOptions,
    expansion: &mut plan::Expansion,
    limit: Option<u64>,
    ahead_bytes: u64,
    reuse: Reuse<'_>,
    progress: Option<&super::ProgressSink>,
) -> Result<(Window, Option<String>), SyncError> {
    let read = |bytes: u64| {
        if let Some(p) = progress {
            p.tell(&super::SyncProgress::Read { bytes });
        }
    };
    let Reuse {
        carried,
        mut keeper,
        mut slices,
        cache,
        spill,
    } = reuse;
    let spilled = |path: &str| spill.as_ref().and_then(|s| s.reads(path));
    // A file's options: with its key slices when a pass over this interval found them.
    let file_opts = |slices: &Option<(&mut SliceMemo, u64)>, obj: &Object| -> DecodeOptions {
        let known = dopts
            .slice
            .and(slices.as_ref())
            .and_then(|(memo, _)| memo.get(&obj.path));
        DecodeOptions {
            slice_rows: known,
            ..dopts.clone()
        }
    };
    let keep_after = keeper.as_ref().map(|k| k.after());
    let mut pending = None;
    let mut decoded_total = 0u64;
    let mut stored_read = 0u64;
    let mut ahead = None;
    for (n, &i) in files.iter().enumerate() {
        let obj = &objects[i];
        let ObjectName::Data(d) = obj.name.clone() else {
            continue;
        };
        let current = ahead.take();
        if let Some(&next) = files.get(n + 1)
            && !carried.contains_key(&objects[next].path)
            && spilled(&objects[next].path).is_none()
            && expansion.weigh(&objects[next]) <= ahead_bytes
        {
            ahead = decode_ahead(
                &objects[next],
                source,
                &file_opts(&slices, &objects[next]),
                cache.clone(),
            );
        }
        let path = obj.path.clone();
        let table = name.to_owned();
        let before = decoded_total;
        let push_err = move |source| SyncError::Change {
            table: table.clone(),
            source,
        };
        let family = d.topic.family().map(str::to_owned);
        let reused = carried.remove(&path);
        let was_reused = reused.is_some();
        let from_spill = if was_reused { None } else { spilled(&path) };
        let was_spilled = from_spill.is_some();
        // Written to the spill: a file read whole here (not rows kept from the last step).
        let writer = spill
            .as_ref()
            .and_then(SpillUse::writer)
            .filter(|_| !was_reused);
        let mut ahead_bare = false;
        // Batches already in memory (kept, or decoded ahead), the file's rows of this slice
        // in the spill, or the file's bytes to stream.
        let input = match (reused, current, from_spill) {
            (Some(batches), _, _) => Input::Batches(batches, 0, None),
            (None, _, Some((s, slice))) => {
                report.files_from_slice_spill += 1;
                Input::Spilled(s, slice)
            }
            (None, Some(handle), None) => {
                let got = handle.await??;
                read(got.fetched);
                count_read(report, got.fetched, got.cached);
                report.bare_envelope |= got.bare;
                ahead_bare = got.bare;
                Input::Batches(got.batches, got.skipped, got.slices)
            }
            (None, None, None) => {
                let (bytes, cached) = fetch_kept(source, obj, cache.as_ref()).await?;
                read(bytes.len() as u64);
                count_read(report, bytes.len() as u64, cached);
                Input::Stream(bytes, file_opts(&slices, obj))
            }
        };
        let table = name.to_owned();
        let pushed = tokio::task::spawn_blocking(move || {
            let push =
                |batches: &mut dyn Iterator<Item = Result<(RecordBatch, u64), SyncError>>| {
                    // The batches also go to the spill, for the later slices.
                    let mut tee = batches.inspect(|b| {
                        if let (Some(w), Ok((batch, upto))) = (&writer, b) {
                            w.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .add(&path, batch, *upto);
                        }
                    });
                    push_file(
                        window,
                        &mut tee,
                        family.as_deref(),
                        &path,
                        before,
                        limit,
                        keep_after,
                        push_err,
                    )
                };
            let (mut pushed, bare, skipped, found) = match input {
                Input::Spilled(s, slice) => {
                    let (batches, bare) = s
                        .read(slice, &path)
                        .expect("a file the spill covers")
                        .map_err(|e| SyncError::Table {
                            table: table.clone(),
                            message: format!(
                                "reading the slice spill in {}: {e}",
                                s.dir().display()
                            ),
                        })?;
                    (push(&mut batches.into_iter().map(Ok))?, bare, 0, None)
                }
                Input::Batches(batches, skipped, found) => (
                    push(&mut batches.into_iter().map(Ok))?,
                    false,
                    skipped,
                    found,
                ),
                Input::Stream(bytes, dopts) => {
                    let mut s = decode::decode_bytes(&d, &path, bytes, &dopts)?;
                    let pushed = push(&mut std::iter::from_fn(|| {
                        let b = s.next()?;
                        Some(b.map(|b| (b, s.input_bytes())).map_err(SyncError::from))
                    }))?;
                    (pushed, s.bare_envelope(), s.rows_skipped(), s.slice_rows())
                }
            };
            pushed.window.count_skipped(skipped);
            if let Some(w) = &writer {
                w.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .file_done(&path, bare || ahead_bare);
            }
            Ok::<_, SyncError>((pushed, bare, skipped, found))
        })
        .await??;
        let (pushed, bare, skipped, found) = pushed;
        if let (Some((memo, budget)), Some(found)) = (slices.as_mut(), found) {
            match memo.get(&obj.path) {
                Some(known) if Arc::ptr_eq(&known, &found) => report.files_slices_known += 1,
                _ => memo.keep(&obj.path, found, *budget),
            }
        }
        report.bare_envelope |= bare;
        report.rows_skipped += skipped;
        window = pushed.window;
        let (decoded, over) = (pushed.decoded, pushed.over);
        decoded_total += decoded;
        stored_read += obj.size;
        if was_reused {
            report.files_reused += 1;
        } else if was_spilled {
            // Rows read back from the spill, not decoded: they teach no size.
        } else {
            report.decoded_bytes += decoded;
            if expansion.observe(obj, decoded) || over {
                tracing::debug!(file = %obj.path, stored = obj.size, decoded, "decoded size above the estimate");
            }
        }
        if over {
            // What the whole read would decode, from what its first files did.
            let stored_all: u64 = files.iter().map(|&i| objects[i].size).sum();
            let estimate = (decoded_total as f64 * stored_all.max(1) as f64
                / stored_read.max(1) as f64) as u64;
            return Err(SyncError::WindowOverflow {
                table: name.to_owned(),
                decoded: decoded_total,
                estimate: estimate.max(decoded_total),
            });
        }
        if let Some(k) = keeper.as_deref_mut() {
            k.keep(&obj.path, pushed.kept);
        }
        if pushed.later > 0 && pending.is_none() {
            pending = Some(obj.path.clone());
        }
    }
    Ok((window, pending))
}

/// One file pushed into the window.
struct Pushed {
    window: Window,
    /// Rows past the window's RESOLVED.
    later: usize,
    /// The file's decoded bytes (up to where it stopped).
    decoded: u64,
    /// Whether it stopped early, over the limit.
    over: bool,
    /// Its rows past `keep_after`, when asked for.
    kept: carry::Batches,
}

/// Pushes one file's batches (each with the decoded input bytes up to its end) into the
/// window; stops early when the kept share of `before` plus this file's decoded bytes passes
/// `limit`. With `keep_after`, keeps the rows past that RESOLVED for the next step.
#[allow(clippy::too_many_arguments)]
fn push_file(
    mut window: Window,
    batches: impl Iterator<Item = Result<(RecordBatch, u64), SyncError>>,
    family: Option<&str>,
    path: &str,
    before: u64,
    limit: Option<u64>,
    keep_after: Option<Hlc>,
    push_err: impl Fn(ChangeError) -> SyncError,
) -> Result<Pushed, SyncError> {
    let mut later = 0;
    let mut input = 0;
    let mut kept = carry::LaterOf::default();
    for b in batches {
        let (b, upto) = b?;
        let pushed = window.push(b.clone(), family, path).map_err(&push_err)?;
        if pushed.later > 0
            && let Some(after) = keep_after
        {
            kept.add(&b, upto - input, after);
        }
        later += pushed.later;
        input = upto;
        let kept_share = (before + upto) as f64 * window.kept_fraction();
        if limit.is_some_and(|l| kept_share > l as f64) {
            return Ok(Pushed {
                window,
                later,
                decoded: upto,
                over: true,
                kept: Vec::new(),
            });
        }
    }
    Ok(Pushed {
        window,
        later,
        decoded: input,
        over: false,
        kept: kept.finish(),
    })
}
