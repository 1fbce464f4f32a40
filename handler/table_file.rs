//! One Parquet data file of a Delta table, fetched as little as a step needs: the footer and
//! the column chunks of the columns asked for (e.g. only the key columns, to find which rows
//! of the file a window supersedes), by byte ranges; the rest only when the file is touched
//! and its whole rows are needed. So the bytes a step reads from the table follow its key
//! columns, not its rows.

use std::io::Read;
use std::ops::Range;

use arrow_array::RecordBatch;
use bytes::Bytes;
use deltalake_core::DeltaTable;
use object_store::ObjectStoreExt as _;
use object_store::path::Path;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
};
use parquet::file::metadata::ParquetMetaDataReader;
use parquet::file::reader::{ChunkReader, Length};

use crate::delta::DeltaError;

/// Files up to this size are fetched whole: one request beats three.
const WHOLE_BELOW: u64 = 1 << 20;
/// Bytes of the file's end fetched first: the footer (metadata) of our files fits.
const TAIL: u64 = 64 << 10;

/// The parts of a file fetched so far, by offset: a Parquet reader over them reads only there.
#[derive(Debug, Clone)]
struct Sparse {
    len: u64,
    /// Disjoint `(start, bytes)`, sorted by start.
    parts: Vec<(u64, Bytes)>,
}

impl Sparse {
    fn add(&mut self, start: u64, bytes: Bytes) {
        self.parts.push((start, bytes));
        self.parts.sort_by_key(|(s, _)| *s);
    }

    fn find(&self, start: u64, len: u64) -> parquet::errors::Result<Bytes> {
        self.parts
            .iter()
            .find(|(s, b)| *s <= start && start + len <= s + b.len() as u64)
            .map(|(s, b)| b.slice((start - s) as usize..(start - s + len) as usize))
            .ok_or_else(|| {
                parquet::errors::ParquetError::General(format!(
                    "bytes {start}..{} of the file were not fetched",
                    start + len
                ))
            })
    }

    fn fetched(&self) -> u64 {
        self.parts.iter().map(|(_, b)| b.len() as u64).sum()
    }
}

impl Length for Sparse {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for Sparse {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let (s, b) = self
            .parts
            .iter()
            .find(|(s, b)| *s <= start && start < s + b.len() as u64)
            .ok_or_else(|| {
                parquet::errors::ParquetError::General(format!(
                    "byte {start} of the file was not fetched"
                ))
            })?;
        Ok(bytes::Buf::reader(b.slice((start - s) as usize..)))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.find(start, length as u64)
    }
}

/// A data file of the table, fetched in part or whole.
pub struct TableFile {
    path: String,
    location: Path,
    data: Sparse,
    /// Whether every byte is fetched.
    whole: bool,
    /// Bytes fetched, over every request.
    fetched: u64,
}

impl TableFile {
    fn error(table: &DeltaTable, path: &str, e: object_store::Error) -> DeltaError {
        match e {
            object_store::Error::NotFound { .. } => DeltaError::FileGone {
                table: table.table_url().to_string(),
                path: path.to_owned(),
            },
            e => DeltaError::Table {
                table: table.table_url().to_string(),
                message: format!("{path}: {e}"),
            },
        }
    }

    fn bad(table: &DeltaTable, path: &str, message: impl std::fmt::Display) -> DeltaError {
        DeltaError::Table {
            table: table.table_url().to_string(),
            message: format!("{path}: {message}"),
        }
    }

    /// The whole file.
    pub async fn fetch(table: &DeltaTable, path: &str) -> Result<Self, DeltaError> {
        let location = Path::parse(path).map_err(|e| Self::bad(table, path, e))?;
        let got = table
            .object_store()
            .get(&location)
            .await
            .map_err(|e| Self::error(table, path, e))?;
        let bytes = got.bytes().await.map_err(|e| Self::error(table, path, e))?;
        Ok(Self {
            path: path.to_owned(),
            location,
            fetched: bytes.len() as u64,
            data: Sparse {
                len: bytes.len() as u64,
                parts: vec![(0, bytes)],
            },
            whole: true,
        })
    }

    /// Nothing fetched yet: a file whose key column the index knows ([`Self::fetch_all`]
    /// fetches it when its rows are needed).
    pub fn deferred(table: &DeltaTable, path: &str) -> Result<Self, DeltaError> {
        let location = Path::parse(path).map_err(|e| Self::bad(table, path, e))?;
        Ok(Self {
            path: path.to_owned(),
            location,
            data: Sparse {
                len: 0,
                parts: Vec::new(),
            },
            whole: false,
            fetched: 0,
        })
    }

    /// The footer and the column chunks of `columns` (all row groups) of a file of `size`
    /// bytes; small files whole.
    pub async fn fetch_columns(
        table: &DeltaTable,
        path: &str,
        size: u64,
        columns: &[String],
    ) -> Result<Self, DeltaError> {
        if size <= WHOLE_BELOW {
            return Self::fetch(table, path).await;
        }
        let location = Path::parse(path).map_err(|e| Self::bad(table, path, e))?;
        let store = table.object_store();
        let get = |r: Range<u64>| {
            let store = store.clone();
            let location = location.clone();
            async move { store.get_range(&location, r).await }
        };
        let tail_start = size.saturating_sub(TAIL);
        let mut tail = get(tail_start..size)
            .await
            .map_err(|e| Self::error(table, path, e))?;
        let mut tail_start = tail_start;
        if tail.len() < 8 || &tail[tail.len() - 4..] != b"PAR1" {
            return Err(Self::bad(
                table,
                path,
                "not a Parquet file (no PAR1 footer)",
            ));
        }
        let mut footer = [0u8; 4];
        (&tail[tail.len() - 8..tail.len() - 4])
            .read_exact(&mut footer)
            .map_err(|e| Self::bad(table, path, e))?;
        let meta_len = u64::from(u32::from_le_bytes(footer)) + 8;
        if meta_len > size {
            return Err(Self::bad(
                table,
                path,
                "Parquet footer longer than the file",
            ));
        }
        if meta_len > tail.len() as u64 {
            let more = get(size - meta_len..tail_start)
                .await
                .map_err(|e| Self::error(table, path, e))?;
            let mut joined = Vec::with_capacity(meta_len as usize);
            joined.extend_from_slice(&more);
            joined.extend_from_slice(&tail);
            tail = Bytes::from(joined);
            tail_start = size - meta_len;
        }
        let meta_bytes = tail.slice(tail.len() - meta_len as usize..tail.len() - 8);
        let meta = ParquetMetaDataReader::decode_metadata(&meta_bytes)
            .map_err(|e| Self::bad(table, path, e))?;
        let ranges: Vec<Range<u64>> = meta
            .row_groups()
            .iter()
            .flat_map(|rg| rg.columns())
            .filter(|c| {
                let root = c.column_path().parts().first().cloned().unwrap_or_default();
                columns.contains(&root)
            })
            .map(|c| {
                let (start, len) = c.byte_range();
                start..start + len
            })
            // A chunk inside the tail is there already; one reaching into it is fetched whole
            // (a read is served from one part).
            .filter(|r| r.start < tail_start)
            .collect();
        let chunks = store
            .get_ranges(&location, &ranges)
            .await
            .map_err(|e| Self::error(table, path, e))?;
        let mut data = Sparse {
            len: size,
            parts: vec![(tail_start, tail)],
        };
        for (r, b) in ranges.iter().zip(chunks) {
            data.add(r.start, b);
        }
        Ok(Self {
            path: path.to_owned(),
            location,
            fetched: data.fetched(),
            data,
            whole: false,
        })
    }

    /// Fetches the rest of the file (its rows are needed whole).
    pub async fn fetch_all(&mut self, table: &DeltaTable) -> Result<(), DeltaError> {
        if self.whole {
            return Ok(());
        }
        let got = table
            .object_store()
            .get(&self.location)
            .await
            .map_err(|e| Self::error(table, &self.path, e))?;
        let bytes = got
            .bytes()
            .await
            .map_err(|e| Self::error(table, &self.path, e))?;
        self.fetched += bytes.len() as u64;
        self.data = Sparse {
            len: bytes.len() as u64,
            parts: vec![(0, bytes)],
        };
        self.whole = true;
        Ok(())
    }

    /// Bytes fetched from storage for this file.
    pub fn stored_bytes(&self) -> u64 {
        self.fetched
    }

    /// How a read's errors name the file, once checked that it was fetched whole where
    /// `whole_for` (what is asked) needs every byte.
    fn read_errors(
        &self,
        whole_for: Option<&str>,
    ) -> Result<impl Fn(String) -> DeltaError + Clone + Send + use<>, DeltaError> {
        let path = self.path.clone();
        let bad = move |message: String| DeltaError::Table {
            table: path.clone(),
            message,
        };
        if let Some(asked) = whole_for
            && !self.whole
        {
            return Err(bad(format!("{asked} asked of a file fetched in part")));
        }
        Ok(bad)
    }

    /// A reader of what was fetched, and how its errors name the file ([`Self::read_errors`]).
    fn reader(
        &self,
        batch_size: usize,
        whole_for: Option<&str>,
    ) -> Result<
        (
            ParquetRecordBatchReaderBuilder<Sparse>,
            impl Fn(String) -> DeltaError + use<>,
        ),
        DeltaError,
    > {
        let bad = self.read_errors(whole_for)?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(self.data.clone())
            .map_err(|e| bad(e.to_string()))?
            .with_batch_size(batch_size);
        Ok((builder, bad))
    }

    /// Batches of every column at the given rows only (positions in the file, ascending; the
    /// file must be fetched whole): the rows a step supersedes, when those are all it needs.
    pub fn rows(
        &self,
        positions: &[u64],
        batch_size: usize,
    ) -> Result<impl Iterator<Item = Result<RecordBatch, DeltaError>> + use<>, DeltaError> {
        self.rows_of(None, positions, batch_size)
    }

    /// [`Self::rows`] of the named columns only (all when `None`: the file must be fetched
    /// whole); columns the file lacks are skipped.
    pub fn rows_of(
        &self,
        columns: Option<&[String]>,
        positions: &[u64],
        batch_size: usize,
    ) -> Result<impl Iterator<Item = Result<RecordBatch, DeltaError>> + use<>, DeltaError> {
        let whole = columns.is_none().then_some("rows");
        let (builder, bad) = self.reader(batch_size, whole)?;
        let total = builder.metadata().file_metadata().num_rows();
        let total = usize::try_from(total).map_err(|e| bad(e.to_string()))?;
        // Consecutive positions as one range each.
        let mut ranges: Vec<Range<usize>> = Vec::new();
        for &p in positions {
            let p = usize::try_from(p).map_err(|e| bad(e.to_string()))?;
            match ranges.last_mut() {
                Some(r) if r.end == p => r.end = p + 1,
                Some(r) if r.end > p => return Err(bad(format!("row {p} asked out of order"))),
                _ => ranges.push(p..p + 1),
            }
        }
        let selection = RowSelection::from_consecutive_ranges(ranges.into_iter(), total);
        let reader = project(builder, columns)
            .with_row_selection(selection)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(reader.map(move |b| b.map_err(|e| bad(e.to_string()))))
    }

    /// Batches of the named columns only (all when `None`: the file must be fetched whole);
    /// columns the file lacks are skipped.
    pub fn batches(
        &self,
        columns: Option<&[String]>,
        batch_size: usize,
    ) -> Result<impl Iterator<Item = Result<RecordBatch, DeltaError>> + use<>, DeltaError> {
        let whole = columns.is_none().then_some("every column");
        let (builder, bad) = self.reader(batch_size, whole)?;
        let reader = project(builder, columns)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(reader.map(move |b| b.map_err(|e| bad(e.to_string()))))
    }
}

#[cfg(test)]
impl TableFile {
    /// A file held in memory, whole: tests of what reads table files.
    pub(crate) fn in_memory(path: &str, bytes: Bytes) -> Self {
        Self {
            path: path.to_owned(),
            location: Path::from(path),
            fetched: bytes.len() as u64,
            data: Sparse {
                len: bytes.len() as u64,
                parts: vec![(0, bytes)],
            },
            whole: true,
        }
    }
}

/// One row group of a file: the position of its first row, and its batches.
pub struct Group {
    pub first_row: u64,
    pub batches: Box<dyn Iterator<Item = Result<RecordBatch, DeltaError>> + Send>,
}

impl TableFile {
    /// [`Self::batches`] row group by row group, each a reader of its own (the footer decoded
    /// once): row groups decode independently, so several threads can share a file's.
    pub fn groups(
        &self,
        columns: Option<&[String]>,
        batch_size: usize,
    ) -> Result<Vec<Group>, DeltaError> {
        let bad = self.read_errors(columns.is_none().then_some("every column"))?;
        let meta = ArrowReaderMetadata::load(&self.data, ArrowReaderOptions::default())
            .map_err(|e| bad(e.to_string()))?;
        let mut first_row = 0u64;
        let mut out = Vec::new();
        for (g, rg) in meta.metadata().row_groups().iter().enumerate() {
            let builder =
                ParquetRecordBatchReaderBuilder::new_with_metadata(self.data.clone(), meta.clone())
                    .with_batch_size(batch_size)
                    .with_row_groups(vec![g]);
            let reader = project(builder, columns)
                .build()
                .map_err(|e| bad(e.to_string()))?;
            let named = bad.clone();
            out.push(Group {
                first_row,
                batches: Box::new(reader.map(move |b| b.map_err(|e| named(e.to_string())))),
            });
            first_row += u64::try_from(rg.num_rows()).map_err(|e| bad(e.to_string()))?;
        }
        Ok(out)
    }
}

/// A reader of the named columns only (every column when `None`).
fn project(
    builder: ParquetRecordBatchReaderBuilder<Sparse>,
    columns: Option<&[String]>,
) -> ParquetRecordBatchReaderBuilder<Sparse> {
    match columns {
        Some(cols) => {
            let schema = builder.parquet_schema();
            let idx: Vec<usize> = (0..schema.num_columns())
                .filter(|&i| cols.iter().any(|c| c == schema.column(i).name()))
                .collect();
            let mask = ProjectionMask::leaves(schema, idx);
            builder.with_projection(mask)
        }
        None => builder,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_file_serves_only_what_was_fetched() {
        let mut s = Sparse {
            len: 100,
            parts: vec![(90, Bytes::from_static(b"0123456789"))],
        };
        s.add(10, Bytes::from_static(b"abcdef"));
        assert_eq!(&s.get_bytes(12, 3).unwrap()[..], b"cde");
        assert_eq!(&s.get_bytes(95, 5).unwrap()[..], b"56789");
        assert!(s.get_bytes(14, 4).is_err(), "past a fetched part");
        assert!(s.get_bytes(50, 1).is_err(), "never fetched");
        let mut r = s.get_read(93).unwrap();
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        assert_eq!(out, "3456789");
        assert_eq!(s.fetched(), 16);
    }
}
