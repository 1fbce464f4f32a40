//! A sliced interval's rows, cut by key slice on local disk, for its later slices.
//!
//! Every key slice of an interval larger than the window passes over all of the interval's
//! files ([`crdb_delta_core::plan::Slices`]); even with their key slices known
//! ([`super::read::SliceMemo`]) and their bytes on local disk ([`super::slice_cache`]), each
//! pass decompresses every file and steps over every other slice's rows, so an interval of
//! `n` slices costs `n` passes over it. With `slice_cache_bytes`, one pass decodes the
//! interval's files whole instead and, besides its own slice, writes each batch's rows for every
//! later slice to that slice's file here ([`split_for_slices`]: what the window of that slice
//! keeps, as a decoder under its slice filter would give them); each later slice then reads its
//! own file only. Arrow IPC, one stream per batch (NDJSON batches of one file may differ in
//! columns and types), uncompressed; at most the budget's bytes, past which the spill is given
//! up (the later slices read the files, as without it). Removed with the folder it lives in.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use crdb_delta_core::Hlc;
use crdb_delta_core::apply::split_for_slices;
use crdb_delta_core::format::decode::DecodeOptions;
use crdb_delta_core::plan::Slices;

/// What decoding depends on besides the bytes: a pass decoding under other options (the table
/// took new column types from an earlier slice) would not have read the rows spilled.
#[derive(Debug, Clone, PartialEq)]
struct Reading {
    columns: std::collections::BTreeMap<String, crdb_delta_core::format::types::ColumnType>,
    primary_key: Option<Vec<String>>,
    batch_size: usize,
    max_line_bytes: usize,
    before: bool,
}

impl Reading {
    fn of(o: &DecodeOptions) -> Self {
        Self {
            columns: o.columns.clone(),
            primary_key: o.primary_key.clone(),
            batch_size: o.batch_size,
            max_line_bytes: o.max_line_bytes,
            before: o.before,
        }
    }
}

/// One file's batches of one slice (each with its decoded bytes up to its end), and whether
/// the file is in the `bare` envelope.
pub type SpilledFile = (Vec<(RecordBatch, u64)>, bool);

/// Where one batch of one file lies in a slice's spill file.
struct Entry {
    offset: u64,
    len: u64,
    /// The decoded input bytes up to the batch's end in its file.
    upto: u64,
}

/// One file's place in the spill.
#[derive(Default)]
struct FileRows {
    /// Slice → its batches of the file, in order.
    batches: HashMap<u32, Vec<Entry>>,
    /// Its messages are in the `bare` envelope.
    bare: bool,
}

/// Written by one pass of the interval (slice `from - 1`), for slices `from..of`.
pub struct SpillWriter {
    dir: PathBuf,
    reading: Reading,
    key: Vec<String>,
    lo: Option<Hlc>,
    hi: Hlc,
    from: u32,
    of: u32,
    writers: HashMap<u32, (BufWriter<File>, u64)>,
    files: HashMap<String, FileRows>,
    bytes: u64,
    budget: u64,
    /// Past the budget, or a write failed: nothing more is written, and no spill results.
    given_up: bool,
}

/// The spill of an interval's slices `from..of`, complete: every file of the pass that wrote it.
pub struct SliceSpill {
    dir: PathBuf,
    reading: Reading,
    slices: Slices,
    from: u32,
    files: HashMap<String, FileRows>,
    bytes: u64,
}

fn spill_path(dir: &Path, slice: u32) -> PathBuf {
    dir.join(format!("slice-{slice}.arrows"))
}

impl SpillWriter {
    /// Most slices one pass writes for: each has a file and a write buffer open while it runs.
    pub const MAX_SLICES: u32 = 256;
    const BUFFER: usize = 64 << 10;

    /// For the pass of slice `slices.done` over the interval `(lo, hi]` of a table keyed by
    /// `key`, decoding under `dopts`: writes the later slices' rows to files in `dir` (a folder
    /// of the slice cache), at most `budget` bytes.
    pub fn new(
        dir: &Path,
        key: &[String],
        lo: Option<Hlc>,
        slices: Slices,
        dopts: &DecodeOptions,
        budget: u64,
    ) -> Self {
        for s in slices.done + 1..slices.of {
            let _ = std::fs::remove_file(spill_path(dir, s));
        }
        Self {
            dir: dir.to_owned(),
            reading: Reading::of(dopts),
            key: key.to_vec(),
            lo,
            hi: slices.resolved,
            from: slices.done + 1,
            of: slices.of,
            writers: HashMap::new(),
            files: HashMap::new(),
            bytes: 0,
            budget,
            given_up: false,
        }
    }

    /// Writes the later slices' rows of one batch of `file` (`upto`: decoded input bytes up to
    /// its end). Blocking.
    pub fn add(&mut self, file: &str, batch: &RecordBatch, upto: u64) {
        if self.given_up {
            return;
        }
        if let Err(e) = self.try_add(file, batch, upto) {
            self.give_up(&e.to_string());
        }
    }

    /// Marks `file` read whole (one with no batch still counts) and whether it is `bare`.
    pub fn file_done(&mut self, file: &str, bare: bool) {
        self.files.entry(file.to_owned()).or_default().bare |= bare;
    }

    fn try_add(&mut self, file: &str, batch: &RecordBatch, upto: u64) -> Result<(), String> {
        let parts = split_for_slices(batch, &self.key, self.lo, self.hi, self.from, self.of)
            .map_err(|e| e.to_string())?;
        for (slice, part) in parts {
            let mut buf = Vec::new();
            {
                let mut w =
                    StreamWriter::try_new(&mut buf, &part.schema()).map_err(|e| e.to_string())?;
                w.write(&part).map_err(|e| e.to_string())?;
                w.finish().map_err(|e| e.to_string())?;
            }
            let len = buf.len() as u64;
            if self.bytes + len > self.budget {
                return Err(format!("over its budget of {} bytes", self.budget));
            }
            let (writer, end) = match self.writers.entry(slice) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let f =
                        File::create(spill_path(&self.dir, slice)).map_err(|e| e.to_string())?;
                    v.insert((BufWriter::with_capacity(Self::BUFFER, f), 0))
                }
            };
            writer.write_all(&buf).map_err(|e| e.to_string())?;
            let offset = *end;
            *end += len;
            self.bytes += len;
            self.files
                .entry(file.to_owned())
                .or_default()
                .batches
                .entry(slice)
                .or_default()
                .push(Entry { offset, len, upto });
        }
        Ok(())
    }

    fn give_up(&mut self, why: &str) {
        tracing::info!(dir = %self.dir.display(), bytes = self.bytes, reason = why, "slice spill given up; later slices read the interval's files");
        self.given_up = true;
        self.writers.clear();
        self.files.clear();
        for s in self.from..self.of {
            let _ = std::fs::remove_file(spill_path(&self.dir, s));
        }
    }

    /// The spill, when every batch of the pass went into it (blocking: flushes the files).
    pub fn finish(mut self, slices: Slices) -> Option<SliceSpill> {
        if self.given_up {
            return None;
        }
        for (w, _) in self.writers.values_mut() {
            if let Err(e) = w.flush() {
                self.give_up(&e.to_string());
                return None;
            }
        }
        Some(SliceSpill {
            dir: self.dir.clone(),
            reading: self.reading.clone(),
            slices,
            from: self.from,
            files: std::mem::take(&mut self.files),
            bytes: self.bytes,
        })
    }
}

impl SliceSpill {
    /// Whether this spill holds slice `slices.done` of the same interval and slice count, as
    /// decoded under `dopts`.
    pub fn holds(&self, slices: &Slices, dopts: &DecodeOptions) -> bool {
        self.slices.resolved == slices.resolved
            && self.slices.of == slices.of
            && (self.from..slices.of).contains(&slices.done)
            && self.reading == Reading::of(dopts)
    }

    /// The folder it is in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes written.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the pass that wrote it read `file`: only such files are read from here.
    pub fn has_file(&self, file: &str) -> bool {
        self.files.contains_key(file)
    }

    /// The files the spill covers.
    pub fn file_names(&self) -> HashSet<&str> {
        self.files.keys().map(String::as_str).collect()
    }

    /// `file`'s batches for `slice` (each with its decoded bytes up to its end) and whether the
    /// file is `bare`; `None` when the pass that wrote the spill did not read `file`. Blocking.
    pub fn read(&self, slice: u32, file: &str) -> Option<std::io::Result<SpilledFile>> {
        let rows = self.files.get(file)?;
        let entries = rows.batches.get(&slice).map_or(&[][..], Vec::as_slice);
        Some(self.read_entries(slice, entries).map(|b| (b, rows.bare)))
    }

    fn read_entries(
        &self,
        slice: u32,
        entries: &[Entry],
    ) -> std::io::Result<Vec<(RecordBatch, u64)>> {
        let mut out = Vec::with_capacity(entries.len());
        if entries.is_empty() {
            return Ok(out);
        }
        let mut f = File::open(spill_path(&self.dir, slice))?;
        for e in entries {
            f.seek(SeekFrom::Start(e.offset))?;
            let mut buf = vec![0; e.len as usize];
            f.read_exact(&mut buf)?;
            let mut reader = StreamReader::try_new(std::io::Cursor::new(buf), None)
                .map_err(std::io::Error::other)?;
            let batch = reader
                .next()
                .ok_or_else(|| std::io::Error::other("spilled batch missing"))?
                .map_err(std::io::Error::other)?;
            out.push((batch, e.upto));
        }
        Ok(out)
    }
}
