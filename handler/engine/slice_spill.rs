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

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use crdb_delta_core::Hlc;
use crdb_delta_core::apply::split_for_slices;
use crdb_delta_core::format::decode::{DecodeOptions, Reading};
use crdb_delta_core::plan::Slices;

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

/// Written by the pass of slice `slices.done` for the interval's later slices.
pub struct SpillWriter {
    dir: PathBuf,
    reading: Reading,
    key: Vec<String>,
    lo: Option<Hlc>,
    slices: Slices,
    writers: HashMap<u32, (BufWriter<File>, u64)>,
    files: HashMap<String, FileRows>,
    bytes: u64,
    budget: u64,
    /// Past the budget, or a write failed: nothing more is written, and no spill results.
    given_up: bool,
}

/// The spill of an interval's slices past `slices.done` (the pass that wrote it), complete:
/// every file that pass read.
pub struct SliceSpill {
    dir: PathBuf,
    reading: Reading,
    slices: Slices,
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
            reading: dopts.reading(),
            key: key.to_vec(),
            lo,
            slices,
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
        let s = self.slices;
        let parts = split_for_slices(batch, &self.key, self.lo, s.resolved, s.done + 1, s.of)
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
        for s in self.slices.done + 1..self.slices.of {
            let _ = std::fs::remove_file(spill_path(&self.dir, s));
        }
    }

    /// The spill, when every batch of the pass went into it (blocking: flushes the files).
    pub fn finish(mut self) -> Option<SliceSpill> {
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
            slices: self.slices,
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
            && slices.done > self.slices.done
            && self.reading == dopts.reading()
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    use arrow_array::{Decimal128Array, Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use crdb_delta_core::format::batch;

    use super::*;

    fn batch_of(ids: std::ops::Range<i64>, with_name: bool) -> RecordBatch {
        let n = ids.end - ids.start;
        let at = Hlc::parse_decimal("15.0000000000")
            .unwrap()
            .to_decimal_i128();
        let mut fields = vec![
            Field::new("id", DataType::Int64, false),
            Field::new(batch::UPDATED, DataType::Decimal128(38, 10), false),
        ];
        let mut columns: Vec<arrow_array::ArrayRef> = vec![
            Arc::new(Int64Array::from(ids.clone().collect::<Vec<_>>())),
            Arc::new(
                Decimal128Array::from(vec![at; n as usize])
                    .with_precision_and_scale(38, 10)
                    .unwrap(),
            ),
        ];
        if with_name {
            fields.push(Field::new("name", DataType::Utf8, true));
            columns.push(Arc::new(StringArray::from(
                ids.map(|i| format!("n{i}")).collect::<Vec<_>>(),
            )));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    fn ids(b: &RecordBatch) -> Vec<i64> {
        b.column(0).as_primitive::<Int64Type>().values().to_vec()
    }

    /// What a pass writes reads back per slice and file, batches of other columns included;
    /// a file with no row of a slice reads as none, a file the pass did not read is not there;
    /// the spill holds only the later slices of its interval, decoded alike.
    #[test]
    fn a_spill_reads_back_each_slices_rows_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let hi = Hlc::parse_decimal("20.0000000000").unwrap();
        let slices = Slices {
            resolved: hi,
            of: 4,
            done: 1,
        };
        let dopts = DecodeOptions::default();
        let mut w = SpillWriter::new(dir.path(), &["id".into()], None, slices, &dopts, 1 << 20);
        let (a, b) = (batch_of(0..50, false), batch_of(50..60, true));
        w.add("f1", &a, 100);
        w.add("f1", &b, 200);
        w.file_done("f1", false);
        w.file_done("empty", true);
        let spill = w.finish().unwrap();
        assert!(spill.bytes() > 0);
        for slice in 2..4 {
            let (got, bare) = spill.read(slice, "f1").unwrap().unwrap();
            assert!(!bare);
            let want: Vec<(Vec<i64>, u64)> = [(&a, 100), (&b, 200)]
                .into_iter()
                .flat_map(|(x, upto)| {
                    split_for_slices(x, &["id".into()], None, hi, 2, 4)
                        .unwrap()
                        .into_iter()
                        .filter(|(s, _)| *s == slice)
                        .map(move |(_, p)| (ids(&p), upto))
                })
                .collect();
            let got_ids: Vec<(Vec<i64>, u64)> = got.iter().map(|(x, u)| (ids(x), *u)).collect();
            assert_eq!(got_ids, want, "slice {slice}");
            assert_eq!(
                got.last().unwrap().0.num_columns(),
                3,
                "the second batch's columns"
            );
        }
        let (none, bare) = spill.read(2, "empty").unwrap().unwrap();
        assert!(none.is_empty() && bare);
        assert!(spill.read(2, "unread").is_none());
        assert!(spill.holds(&Slices { done: 3, ..slices }, &dopts));
        assert!(
            !spill.holds(&Slices { done: 1, ..slices }, &dopts),
            "written by that pass"
        );
        assert!(!spill.holds(
            &Slices {
                of: 5,
                done: 2,
                ..slices
            },
            &dopts
        ));
        let other = DecodeOptions {
            batch_size: 7,
            ..DecodeOptions::default()
        };
        assert!(!spill.holds(&Slices { done: 2, ..slices }, &other));
    }

    /// Past its budget a spill is given up: nothing results and its files are gone.
    #[test]
    fn a_spill_past_its_budget_is_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let slices = Slices {
            resolved: Hlc::parse_decimal("20.0000000000").unwrap(),
            of: 3,
            done: 1,
        };
        let mut w = SpillWriter::new(
            dir.path(),
            &["id".into()],
            None,
            slices,
            &DecodeOptions::default(),
            2000,
        );
        w.add("f1", &batch_of(0..10, true), 10);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        for i in 1..20 {
            w.add("f1", &batch_of(i * 10..i * 10 + 10, true), 10);
        }
        w.file_done("f1", false);
        assert!(w.finish().is_none());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
