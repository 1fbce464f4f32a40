//! Decoders from changefeed objects to canonical change batches (see [`crate::format::batch`]).
//!
//! Decoders stream: NDJSON is read line by line from a (decompressing) reader and Parquet row
//! group by row group, each yielding batches of at most [`DecodeOptions::batch_size`] rows.

mod json_fields;
mod json_scan;
pub mod ndjson;
mod ndjson_memo;
pub mod parquet;
pub mod resolved;

use std::collections::BTreeMap;

use crate::format::hlc::Hlc;
use crate::format::names::{Compression, DataFileName, Format};
use crate::format::types::ColumnType;

pub use self::ndjson::NdjsonDecoder;
pub use self::parquet::ParquetDecoder;

/// What the caller knows about the table being decoded.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// Rows per batch (memory bound).
    pub batch_size: usize,
    /// Column types from configuration (or learnt from earlier files of the table); they win
    /// over what a file suggests.
    pub columns: BTreeMap<String, ColumnType>,
    /// Primary-key column names in index order, when known: JSON decoders then fill the key
    /// columns of deletes and of non-primary family rows from the `key` array.
    pub primary_key: Option<Vec<String>>,
    /// Longest NDJSON line accepted (decompressed bytes): one line is held whole, so this
    /// bounds memory whatever a compressed file expands to.
    pub max_line_bytes: usize,
    /// Rows the caller will drop by key slice: a decoder may skip decoding them.
    pub slice: Option<SliceFilter>,
    /// This file's rows' slices as an earlier pass over the interval found them
    /// ([`BatchStream::slice_rows`]): a Parquet decoder then reads no key column to tell them,
    /// an NDJSON decoder parses only the lines it keeps.
    pub slice_rows: Option<std::sync::Arc<SliceRows>>,
    /// Also emit each change's `before` (the `diff` option) as a row of its own
    /// ([`crate::format::batch::Op::Before`]), right after the change's row: what scd2 closes a
    /// version from. Off for everything else, which never sees such rows.
    pub before: bool,
}

/// What a decoder's batches depend on besides a file's bytes and the slice filter: what one
/// pass over an interval learnt or kept from a file (an NDJSON file's line slices and batch
/// types, a spill of its rows) serves a later pass only if that pass reads alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    columns: BTreeMap<String, ColumnType>,
    primary_key: Option<Vec<String>>,
    batch_size: usize,
    max_line_bytes: usize,
    before: bool,
}

impl DecodeOptions {
    /// What these options read a file as ([`Reading`]).
    pub fn reading(&self) -> Reading {
        Reading {
            columns: self.columns.clone(),
            primary_key: self.primary_key.clone(),
            batch_size: self.batch_size,
            max_line_bytes: self.max_line_bytes,
            before: self.before,
        }
    }
}

/// The rows one key slice of an interval does not need: those inside the interval
/// (`lo < updated ≤ hi`) whose key falls into another slice ([`crate::apply::slice_of`]). The
/// window drops them anyway ([`crate::apply::Window::with_slice`]), so a decoder skips building
/// their other columns, and each slice of an interval does not cost a whole decode of it.
/// Parquet reads only the key and timestamp columns to tell them; NDJSON parses every line (to
/// learn every column and type, so each slice commits the same ones) but builds only the key
/// columns of other slices' rows, and given [`SliceRows`] parses only the lines it keeps. Rows
/// outside the interval are always decoded (the window counts those past it), and so is a
/// file's (NDJSON: a batch's) first row inside it (the window learns the columns from it),
/// whatever its slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceFilter {
    pub index: u32,
    pub of: u32,
    pub lo: Option<Hlc>,
    pub hi: Hlc,
}

/// Each row's key slice in one file of a sliced interval, as a pass over it found them (from
/// its key and timestamp columns): every later slice of the interval needs the same, and
/// otherwise decodes those columns of every row and hashes every key again (at 20M UUID rows
/// in 18 slices, a quarter of the load's CPU). A byte a row up to 254 slices, two past that.
/// For NDJSON, a row is a line, and the batches' columns and types come along: a later pass
/// then parses only its own lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceRows {
    /// What the slices were found under: the filter's `of`, `lo` and `hi` (not its index),
    /// and the key columns with the types they were converted to.
    of: u32,
    lo: Option<Hlc>,
    hi: Hlc,
    key: Vec<(String, ColumnType)>,
    rows: Slots,
    /// An NDJSON file's batches as the pass learnt them: a later pass parses only the lines
    /// it keeps ([`NdjsonDecoder`]). `None` for Parquet.
    lines: Option<ndjson_memo::Batches>,
}

/// Per file row: its slice, or the width's largest value for a row outside the interval.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slots {
    Byte(Vec<u8>),
    Two(Vec<u16>),
}

impl Slots {
    fn len(&self) -> usize {
        match self {
            Slots::Byte(v) => v.len(),
            Slots::Two(v) => v.len(),
        }
    }

    /// `slice` is below the width's largest value ([`SliceRows::new`] chose the width).
    fn push(&mut self, slice: Option<u32>) {
        match self {
            Slots::Byte(v) => v.push(slice.map_or(u8::MAX, |s| s as u8)),
            Slots::Two(v) => v.push(slice.map_or(u16::MAX, |s| s as u16)),
        }
    }

    /// Row `r`'s slice (`None`: outside the interval).
    fn get(&self, r: usize) -> Option<u32> {
        match self {
            Slots::Byte(v) => (v[r] != u8::MAX).then(|| u32::from(v[r])),
            Slots::Two(v) => (v[r] != u16::MAX).then(|| u32::from(v[r])),
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Slots::Byte(v) => v.len() as u64,
            Slots::Two(v) => 2 * v.len() as u64,
        }
    }
}

impl SliceRows {
    /// Slices of rows found under `filter` (`None` from `u16::MAX` slices on: not kept).
    pub(crate) fn new(filter: SliceFilter, key: Vec<(String, ColumnType)>) -> Option<Self> {
        let rows = if filter.of < u32::from(u8::MAX) {
            Slots::Byte(Vec::new())
        } else if filter.of < u32::from(u16::MAX) {
            Slots::Two(Vec::new())
        } else {
            return None;
        };
        Some(Self {
            of: filter.of,
            lo: filter.lo,
            hi: filter.hi,
            key,
            rows,
            lines: None,
        })
    }

    /// Slices of an NDJSON file's lines found under `opts`' filter and key, with the batches
    /// the lines were read in (their columns and types learnt from the types `opts` gives).
    pub(crate) fn new_lines(opts: &DecodeOptions) -> Option<Self> {
        let filter = opts.slice.filter(|_| opts.primary_key.is_some())?;
        let mut s = Self::new(filter, Vec::new())?;
        s.lines = Some(ndjson_memo::Batches::new(opts.reading()));
        Some(s)
    }

    /// Whether these are an NDJSON file's line slices for a file decoded under `opts`: the
    /// same filter but its index, key, given types and batch bounds (a file's line count is
    /// checked as it is read).
    pub(crate) fn fits_lines(&self, opts: &DecodeOptions) -> bool {
        let (Some(filter), Some(lines)) = (opts.slice, self.lines.as_ref()) else {
            return false;
        };
        self.of == filter.of
            && self.lo == filter.lo
            && self.hi == filter.hi
            && lines.fits(&opts.reading())
    }

    pub(crate) fn lines(&self) -> Option<&ndjson_memo::Batches> {
        self.lines.as_ref()
    }

    pub(crate) fn lines_mut(&mut self) -> Option<&mut ndjson_memo::Batches> {
        self.lines.as_mut()
    }

    /// Row `r`'s slice (`None`: outside the interval).
    pub(crate) fn slice(&self, r: usize) -> Option<u32> {
        self.rows.get(r)
    }

    /// Rows (Parquet) or lines (NDJSON) held.
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// The next file row: inside the interval in `slice` (below the filter's `of`), or outside it.
    pub(crate) fn push(&mut self, slice: Option<u32>) {
        self.rows.push(slice);
    }

    /// Whether these are the slices `filter` reads by, for a file of `rows` rows with this key.
    pub fn fits(&self, filter: &SliceFilter, key: &[(String, ColumnType)], rows: usize) -> bool {
        self.of == filter.of
            && self.lo == filter.lo
            && self.hi == filter.hi
            && self.key == key
            && self.rows.len() == rows
            && self.lines.is_none()
    }

    /// The rows slice `index` decodes: `kept_rows` of the file's rows.
    pub fn keep(&self, index: u32) -> Vec<bool> {
        kept_rows((0..self.rows.len()).map(|r| self.rows.get(r)), index)
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.rows.bytes() + self.lines.as_ref().map_or(0, ndjson_memo::Batches::bytes)
    }
}

/// Which slices keep each row, given each row's slice (`None`: outside the interval): `None`
/// for a row every slice keeps — one outside the interval (the window counts those), or the
/// first inside it whatever its slice (the window learns columns from it) — and `Some(s)` for
/// a row only slice `s` keeps. Over the rows of a Parquet file, or of one NDJSON batch (whose
/// columns may be new). The one rule for a decoder under a slice filter ([`kept_rows`]) and for
/// a spill of later slices' rows ([`crate::apply::split_for_slices`]).
pub fn kept_by(slices: impl Iterator<Item = Option<u32>>) -> impl Iterator<Item = Option<u32>> {
    let mut learnt = false;
    slices.map(move |s| {
        let first_inside = s.is_some() && !learnt;
        learnt |= s.is_some();
        s.filter(|_| !first_inside)
    })
}

/// The rows slice `index` decodes ([`kept_by`]).
pub(crate) fn kept_rows(slices: impl Iterator<Item = Option<u32>>, index: u32) -> Vec<bool> {
    kept_by(slices)
        .map(|k| k.is_none_or(|s| s == index))
        .collect()
}

/// Default [`DecodeOptions::max_line_bytes`]: CockroachDB refuses rows over its 64 MiB raft
/// command limit (`kv.raft.command.max_size`), so no real message is longer.
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 << 20;

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            batch_size: 8192,
            columns: BTreeMap::new(),
            primary_key: None,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            slice: None,
            slice_rows: None,
            before: false,
        }
    }
}

/// Decoding failures, each naming the object and, where it applies, the line or row and column.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{file}: read failed: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: line {line}: {message}")]
    Line {
        file: String,
        line: u64,
        message: String,
    },
    /// `at` is `line N` (NDJSON) or `row N` (Parquet).
    #[error("{file}: {at}: column `{column}`: {message}")]
    Value {
        file: String,
        at: String,
        column: String,
        message: String,
    },
    /// A source column whose name starts with [`crate::format::batch::RESERVED_PREFIX`]; `at` as above.
    #[error(
        "{file}: {at}: column `{column}`: column names starting with `{prefix}` are reserved by \
         crdb-delta for its own metadata columns",
        prefix = crate::format::batch::RESERVED_PREFIX
    )]
    ReservedColumn {
        file: String,
        at: String,
        column: String,
    },
    #[error("{file}: column `{column}` has unknown column type {ty}")]
    UnknownType {
        file: String,
        column: String,
        ty: String,
    },
    #[error("{file}: not a readable Parquet file: {message}")]
    Parquet { file: String, message: String },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

impl DecodeError {
    /// The object the error is about.
    pub fn file(&self) -> &str {
        match self {
            Self::Io { file, .. }
            | Self::Line { file, .. }
            | Self::Value { file, .. }
            | Self::ReservedColumn { file, .. }
            | Self::UnknownType { file, .. }
            | Self::Parquet { file, .. }
            | Self::Invalid { file, .. } => file,
        }
    }
}

/// Opens the right decoder for a data file from its bytes.
///
/// `path` is the object's path relative to the changefeed root, recorded in every row.
pub fn decode_bytes(
    name: &DataFileName,
    path: &str,
    bytes: bytes::Bytes,
    opts: &DecodeOptions,
) -> Result<Box<dyn BatchStream>, DecodeError> {
    match name.format {
        Format::Parquet => Ok(Box::new(ParquetDecoder::try_new(path, bytes, opts)?)),
        Format::Json => Ok(Box::new(NdjsonDecoder::new(
            path,
            std::io::BufReader::with_capacity(1 << 16, text_reader(name, path, bytes)?),
            opts,
        ))),
    }
}

/// What a data file decodes to, in the bytes a window counts ([`BatchStream::input_bytes`]),
/// without decoding it: a Parquet file's row groups' uncompressed size from its footer, an
/// NDJSON file's text decompressed and counted (not parsed).
pub fn decoded_size(
    name: &DataFileName,
    path: &str,
    bytes: bytes::Bytes,
    opts: &DecodeOptions,
) -> Result<u64, DecodeError> {
    match name.format {
        Format::Parquet => Ok(ParquetDecoder::try_new(path, bytes, opts)?.input_bytes()),
        Format::Json => std::io::copy(&mut text_reader(name, path, bytes)?, &mut std::io::sink())
            .map_err(|source| DecodeError::Io {
                file: path.to_owned(),
                source,
            }),
    }
}

/// An NDJSON file's text, decompressed as its name says.
fn text_reader(
    name: &DataFileName,
    path: &str,
    bytes: bytes::Bytes,
) -> Result<Box<dyn std::io::Read + Send>, DecodeError> {
    Ok(match name.compression {
        Compression::None => Box::new(std::io::Cursor::new(bytes)),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(std::io::Cursor::new(
            bytes,
        ))),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(std::io::Cursor::new(bytes)).map_err(|source| {
                DecodeError::Io {
                    file: path.to_owned(),
                    source,
                }
            })?,
        ),
    })
}

/// A stream of change batches, with what the decoder learnt about the table on the way.
pub trait BatchStream:
    Iterator<Item = Result<arrow_array::RecordBatch, DecodeError>> + Send
{
    /// Evidence about the primary key gathered so far.
    fn key_evidence(&self) -> &crate::format::keys::KeyEvidence;
    /// Column types used so far (configured, read from the file, or inferred from JSON).
    fn column_types(&self) -> &BTreeMap<String, ColumnType>;
    /// Decoded input so far: NDJSON bytes after decompression, or a Parquet file's uncompressed
    /// row-group bytes. What a window's memory grows with, unlike the stored size.
    fn input_bytes(&self) -> u64;
    /// Whether messages in the `bare` envelope were read: their deletes cannot be told from
    /// updates to all-NULL (format spec §3.3), so the caller can say so.
    fn bare_envelope(&self) -> bool {
        false
    }
    /// Rows skipped so far under [`DecodeOptions::slice`]: never decoded, never yielded.
    fn rows_skipped(&self) -> u64 {
        0
    }
    /// Each row's slice under [`DecodeOptions::slice`], as found (or given) for this file: the
    /// caller keeps it for the interval's later slices. NDJSON: once the whole file was read.
    fn slice_rows(&self) -> Option<std::sync::Arc<SliceRows>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::format::names::ObjectName;

    /// An NDJSON file's decoded size is its text's length, plain, gzip (several members, as a
    /// concatenation is) or zstd; a corrupt stream is an error naming the file.
    #[test]
    fn decoded_size_counts_the_text_not_the_stored_bytes() {
        use std::io::Write;
        let text =
            "{\"after\": {\"k\": 1}, \"key\": [1], \"updated\": \"1.0000000000\"}\n".repeat(500);
        let name = |ext: &str| {
            let file = format!(
                "202405031553360274740000000000000-149406d8fc0e8e6b-2-2-00000000-t-1.ndjson{ext}"
            );
            match ObjectName::parse_file_name(&file).unwrap() {
                ObjectName::Data(d) => (d, file),
                ObjectName::Resolved(_) => unreachable!(),
            }
        };
        let gzip = |part: &str| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(part.as_bytes()).unwrap();
            e.finish().unwrap()
        };
        let (head, tail) = text.split_at(1000);
        let stored = [
            ("", text.as_bytes().to_vec()),
            (".gz", [gzip(head), gzip(tail)].concat()),
            (".zst", zstd::encode_all(text.as_bytes(), 1).unwrap()),
        ];
        for (ext, bytes) in stored {
            let (d, file) = name(ext);
            assert!(ext.is_empty() || bytes.len() < text.len() / 4, "{ext}");
            let size = decoded_size(&d, &file, bytes.into(), &DecodeOptions::default());
            assert_eq!(size.unwrap(), text.len() as u64, "{ext}");
        }
        let (d, file) = name(".gz");
        let mut corrupt = gzip(&text);
        let at = corrupt.len() / 2;
        corrupt[at] ^= 0xff;
        let err = decoded_size(&d, &file, corrupt.into(), &DecodeOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(&file), "{err}");
    }

    /// A byte a row below 255 slices, two from there (the value past the last slice marks a
    /// row outside the interval), none from 65,535; either width keeps the same rows.
    #[test]
    fn slice_rows_keep_the_same_rows_in_either_width() {
        let filter = |of| SliceFilter {
            index: 0,
            of,
            lo: None,
            hi: Hlc::parse_decimal("1.0").unwrap(),
        };
        let rows = |of: u32| {
            let mut s = SliceRows::new(filter(of), Vec::new()).unwrap();
            // Outside, then inside in slices 3, 1, 3, 0 and the last, outside again.
            for slice in [None, Some(3), Some(1), Some(3), Some(0), Some(of - 1), None] {
                s.push(slice);
            }
            s
        };
        let (byte, two) = (rows(254), rows(255));
        assert_eq!((byte.bytes(), two.bytes()), (7, 14));
        assert!(SliceRows::new(filter(65_535), Vec::new()).is_none());
        assert!(SliceRows::new(filter(65_534), Vec::new()).is_some());
        for (s, of) in [(&byte, 254), (&two, 255)] {
            // Row 1 is the first inside: kept by every slice.
            let kept = |i| s.keep(i);
            assert_eq!(kept(3), [true, true, false, true, false, false, true]);
            assert_eq!(kept(1), [true, true, true, false, false, false, true]);
            assert_eq!(kept(0), [true, true, false, false, true, false, true]);
            assert_eq!(kept(of - 1), [true, true, false, false, false, true, true]);
            assert_eq!(kept(2), [true, true, false, false, false, false, true]);
        }
        assert!(byte.fits(&filter(254), &[], 7));
        assert!(!byte.fits(&filter(255), &[], 7));
        assert!(!byte.fits(&filter(254), &[], 8));
    }
}
