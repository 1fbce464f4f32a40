//! New Parquet files of a Delta table, encoded on a thread of their own.
//!
//! Encoding and compressing the new rows is a large share of a step's CPU. Done inline it waits
//! for the merge that feeds it and the merge waits for it; here the encoder runs on a blocking
//! thread fed by a channel, so the next batch is merged while this one is encoded and both cores
//! work. The channel holds one batch, so memory grows by at most two batches (one queued, one
//! being encoded).

use std::collections::HashSet;

use arrow_array::{RecordBatch, StringArray};
use arrow_schema::SchemaRef;
use crdb_delta_core::apply::{END_HLC, HLC, START_HLC};
use deltalake_core::kernel::Add;
use deltalake_core::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use deltalake_core::{DeltaTable, DeltaTableError};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Row groups of 128k rows: the encoder holds one in memory per open file.
const ROW_GROUP_ROWS: usize = 128 * 1024;

enum Msg {
    Batch(RecordBatch),
    /// Flush the open files and return their `add`s. A channel closed without it (the writer
    /// dropped, e.g. a cancelled step) abandons the files: nothing is committed.
    Finish,
}

/// Streams batches into new Parquet files of the table (uploaded, not yet in the log).
pub struct Writer {
    tx: mpsc::Sender<Msg>,
    encoder: JoinHandle<Result<Vec<Add>, DeltaTableError>>,
}

impl Writer {
    pub fn new(table: &DeltaTable, target_file_size: u64) -> Result<Self, DeltaTableError> {
        let inner = RecordBatchWriter::for_table(table)?.with_target_file_size(target_file_size);
        let (tx, rx) = mpsc::channel(1);
        let runtime = tokio::runtime::Handle::current();
        let encoder = tokio::task::spawn_blocking(move || encode(&runtime, inner, rx));
        Ok(Self { tx, encoder })
    }

    pub async fn write(&mut self, batch: RecordBatch) -> Result<(), DeltaTableError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.tx.send(Msg::Batch(batch)).await.is_err() {
            // The encoder stopped on an error: it is in its result.
            return Err(self.stopped().await);
        }
        Ok(())
    }

    /// Finishes the files (uploaded, not yet in the log).
    pub async fn finish(self) -> Result<Vec<Add>, DeltaTableError> {
        // A send error means the encoder already stopped; its result says why.
        let _ = self.tx.send(Msg::Finish).await;
        joined(self.encoder.await)
    }

    async fn stopped(&mut self) -> DeltaTableError {
        match joined((&mut self.encoder).await) {
            Err(e) => e,
            Ok(_) => DeltaTableError::Generic("the Parquet encoder stopped early".into()),
        }
    }
}

fn joined(
    r: Result<Result<Vec<Add>, DeltaTableError>, tokio::task::JoinError>,
) -> Result<Vec<Add>, DeltaTableError> {
    match r {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(DeltaTableError::Generic(format!(
            "the Parquet encoder: {e}"
        ))),
    }
}

/// ZSTD (level 1): Snappy finds little to repeat in the text columns a step reads of every
/// file it probes (keys, UUIDs, HLCs) and is slow to undo; ZSTD's entropy coding halves hex
/// text and decodes it faster (pyarrow, 1M sorted UUID texts: 33.1 MB and 42 ms with Snappy,
/// 18.3 MB and 24 ms with ZSTD; a cold step at 20M UUID rows reads 367 instead of 677 MB).
/// Row groups of [`ROW_GROUP_ROWS`], and no dictionary for columns whose values are mostly
/// distinct: the writer would hash each value into a dictionary until it outgrows its
/// page limit and then fall back to plain encoding anyway (interning was 8% of a
/// per-RESOLVED run's CPU, on the encoder's thread). Judged per file from its first
/// [`SAMPLE_ROWS`] rows (`held`: the batches received so far, in order), not its first batch: a
/// step's first batch can be a few rows (the changed rows of a small file), too few to tell,
/// and the dictionary stayed on for the whole file (interning was 5% of a warm step at 20M
/// rows). A column of few values (a status, a region) keeps its dictionary. HLC text is unique
/// per change, so HLC columns are plain; but scd2's start column keeps its dictionary where
/// the sample holds one value (an initial scan's rows all carry the scan's timestamp): a few
/// bytes a page, where plain text is 30 bytes a row to decompress whenever scd2 reads a row's
/// start. Only all-equal: a batch mixing one old value with new ones (a rewrite of an initial
/// scan's file) would grow a dictionary until it overflowed.
fn properties(held: &[RecordBatch]) -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
    for column in [HLC, END_HLC] {
        props = props.set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    if !sample(held, START_HLC).is_some_and(|v| one_value(&v)) {
        props = props.set_column_dictionary_enabled(ColumnPath::from(START_HLC), false);
    }
    let mut judged = HashSet::new();
    let names = held
        .iter()
        .flat_map(|b| b.schema_ref().fields().iter().map(|f| f.name().as_str()));
    for name in names {
        if judged.insert(name) && sample(held, name).is_some_and(|v| mostly_distinct(&v)) {
            props = props.set_column_dictionary_enabled(ColumnPath::from(name), false);
        }
    }
    props.build()
}

/// The first [`SAMPLE_ROWS`] non-null values of text column `name` over the `held` batches in
/// order (`None`: no batch has it as text).
fn sample<'a>(held: &'a [RecordBatch], name: &str) -> Option<Vec<&'a str>> {
    let mut texts = held
        .iter()
        .filter_map(|b| b.column_by_name(name))
        .filter_map(|c| c.as_any().downcast_ref::<StringArray>())
        .peekable();
    texts.peek()?;
    Some(
        texts
            .flat_map(|t| t.iter().flatten())
            .take(SAMPLE_ROWS)
            .collect(),
    )
}

/// Whether the sampled `values`, 64 at least, are all one.
fn one_value(values: &[&str]) -> bool {
    values.len() >= 64 && values.iter().all(|v| *v == values[0])
}

/// Values sampled from the start of a file's column to judge its cardinality.
const SAMPLE_ROWS: usize = 1024;

/// Whether more than half of the sampled `values` differ (fewer than 64 values: too few to
/// tell, no).
fn mostly_distinct(values: &[&str]) -> bool {
    if values.len() < 64 {
        return false;
    }
    let distinct: HashSet<&str> = values.iter().copied().collect();
    distinct.len() * 2 > values.len()
}

/// The encoder thread: drives delta-rs' async writer (its uploads) on the runtime's handle.
fn encode(
    runtime: &tokio::runtime::Handle,
    mut inner: RecordBatchWriter,
    mut rx: mpsc::Receiver<Msg>,
) -> Result<Vec<Add>, DeltaTableError> {
    let schema: SchemaRef = inner.arrow_schema();
    // Batches held until the file's properties are judged ([`properties`]): a few rows more
    // than SAMPLE_ROWS at most, plus the batch that crosses it.
    let mut held: Option<Vec<RecordBatch>> = Some(Vec::new());
    let write = |inner: &mut RecordBatchWriter, batch: RecordBatch| {
        // A batch with more columns than the table adds them (the layout grew).
        let mode = if batch.schema().fields().len() > schema.fields().len() {
            WriteMode::MergeSchema
        } else {
            WriteMode::Default
        };
        runtime.block_on(inner.write_with_mode(batch, mode))
    };
    while let Some(msg) = rx.blocking_recv() {
        let finish = matches!(msg, Msg::Finish);
        if let Msg::Batch(batch) = msg {
            match held.as_mut() {
                Some(h) => h.push(batch),
                None => write(&mut inner, batch)?,
            }
        }
        let enough = held
            .as_ref()
            .is_some_and(|h| h.iter().map(RecordBatch::num_rows).sum::<usize>() >= SAMPLE_ROWS);
        if (enough || finish)
            && let Some(h) = held.take()
        {
            inner = inner.with_writer_properties(properties(&h));
            for batch in h {
                write(&mut inner, batch)?;
            }
        }
        if finish {
            return runtime.block_on(inner.flush());
        }
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::ArrayRef;
    use std::sync::Arc;

    #[test]
    fn only_mostly_distinct_text_columns_lose_their_dictionary() {
        let n = 2000;
        let unique: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| format!("value {i}")),
        ));
        let few: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| ["eu", "us", "asia"][i % 3]),
        ));
        // Half distinct exactly: kept (more than half is needed).
        let half: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| format!("{}", i / 2)),
        ));
        // Distinct only after the sample: judged on the first rows.
        let late: ArrayRef = Arc::new(StringArray::from_iter_values((0..n).map(|i| {
            if i < SAMPLE_ROWS {
                "x".to_owned()
            } else {
                format!("{i}")
            }
        })));
        let ints: ArrayRef = Arc::new(arrow_array::Int64Array::from_iter_values(0..n as i64));
        let batch = RecordBatch::try_from_iter([
            ("unique", unique),
            ("few", few),
            ("half", half),
            ("late", late),
            ("ints", ints),
        ])
        .unwrap();
        let props = properties(std::slice::from_ref(&batch));
        let dictionary = |c: &str| props.dictionary_enabled(&ColumnPath::from(c));
        assert!(!dictionary("unique"));
        assert!(dictionary("few"));
        assert!(dictionary("half"));
        assert!(dictionary("late"));
        assert!(dictionary("ints"));
        assert!(!dictionary(HLC));
        // HLC text: a step's changes have one each; an initial scan's rows share the scan's.
        // Only scd2's start keeps a dictionary, and only for one value.
        let hlc = |f: &dyn Fn(usize) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values((0..n).map(f)))
        };
        let scan = || hlc(&|_| "1714751616027474000.0000000000".to_owned());
        let mixed = hlc(&|i| match i % 2 {
            0 => "1714751616027474000.0000000000".to_owned(),
            _ => format!("17147516160274740{i:02}.0000000000"),
        });
        let batch = RecordBatch::try_from_iter([(HLC, scan()), (START_HLC, scan())]).unwrap();
        let props = properties(std::slice::from_ref(&batch));
        assert!(!props.dictionary_enabled(&ColumnPath::from(HLC)));
        assert!(props.dictionary_enabled(&ColumnPath::from(START_HLC)));
        let batch = RecordBatch::try_from_iter([(START_HLC, mixed)]).unwrap();
        assert!(
            !properties(std::slice::from_ref(&batch))
                .dictionary_enabled(&ColumnPath::from(START_HLC))
        );
        // Nulls are not values: a column of 1,000 nulls and 10 values says nothing.
        let sparse: ArrayRef = Arc::new(StringArray::from_iter(
            (0..1010).map(|i| (i >= 1000).then(|| format!("{i}"))),
        ));
        let batch = RecordBatch::try_from_iter([("sparse", sparse)]).unwrap();
        assert!(
            properties(std::slice::from_ref(&batch))
                .dictionary_enabled(&ColumnPath::from("sparse"))
        );
        // Judged over the first rows of the batches held, not the first batch: a step's first
        // batches can be a few rows each (one file's changed rows).
        let pieces: Vec<RecordBatch> = (0..40)
            .map(|p| {
                let values: ArrayRef = Arc::new(StringArray::from_iter_values(
                    (0..30).map(|i| format!("{p}-{i}")),
                ));
                RecordBatch::try_from_iter([("unique", values)]).unwrap()
            })
            .collect();
        let unique = ColumnPath::from("unique");
        assert!(!properties(&pieces).dictionary_enabled(&unique));
        assert!(properties(&pieces[..1]).dictionary_enabled(&unique));
    }

    /// The encoder holds a file's first rows whatever its batches: 40 batches of 30 distinct
    /// texts (one step's changed rows, file by file) are written without a dictionary, while a
    /// column of three values keeps its dictionary.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_first_batches_are_judged_together() {
        use arrow_schema::{DataType, Field, Schema};
        use parquet::basic::Encoding;
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = tempfile::tempdir().unwrap();
        let root = crate::storage::Location::open(dir.path().to_str().unwrap()).unwrap();
        let target = crate::delta::Target::new(&root, "t").unwrap();
        let schema = Schema::new(vec![
            Field::new("unique", DataType::Utf8, false),
            Field::new("few", DataType::Utf8, false),
        ]);
        let table = target.create_with(&schema, vec![]).await.unwrap();
        let mut writer = Writer::new(&table, 1 << 30).unwrap();
        for p in 0..40 {
            let unique: ArrayRef = Arc::new(StringArray::from_iter_values(
                (0..30).map(|i| format!("{p}-{i}")),
            ));
            let few: ArrayRef = Arc::new(StringArray::from_iter_values(
                (0..30).map(|i| ["eu", "us", "asia"][i % 3]),
            ));
            let batch = RecordBatch::try_from_iter([("unique", unique), ("few", few)]).unwrap();
            writer.write(batch).await.unwrap();
        }
        let adds = writer.finish().await.unwrap();
        assert_eq!(adds.len(), 1);
        let file = std::fs::File::open(dir.path().join("t").join(&adds[0].path)).unwrap();
        let meta = SerializedFileReader::new(file).unwrap().metadata().clone();
        let encodings = |column: usize| -> Vec<Encoding> {
            (0..meta.num_row_groups())
                .flat_map(|g| {
                    meta.row_group(g)
                        .column(column)
                        .encodings()
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let dictionary = |e: &Vec<Encoding>| {
            e.iter()
                .any(|e| matches!(e, Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY))
        };
        assert!(!dictionary(&encodings(0)), "{:?}", encodings(0));
        assert!(dictionary(&encodings(1)), "{:?}", encodings(1));
    }
}
