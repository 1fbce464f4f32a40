//! New Parquet files of a Delta table, encoded on a thread of their own.
//!
//! Encoding and compressing the new rows is a large share of a step's CPU. Done inline it waits
//! for the merge that feeds it and the merge waits for it; here the encoder runs on a blocking
//! thread fed by a channel, so the next batch is merged while this one is encoded and both cores
//! work. The channel holds one batch, so memory grows by at most two batches (one queued, one
//! being encoded).

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use crdb_delta_core::apply::{END_HLC, HLC, START_HLC};
use deltalake_core::kernel::Add;
use deltalake_core::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use deltalake_core::{DeltaTable, DeltaTableError};
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
        let mut props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
        // HLC text is unique per row: a dictionary would only be built and then abandoned.
        for column in [HLC, START_HLC, END_HLC] {
            props = props.set_column_dictionary_enabled(ColumnPath::from(column), false);
        }
        let props = props.build();
        let inner = RecordBatchWriter::for_table(table)?
            .with_target_file_size(target_file_size)
            .with_writer_properties(props);
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

/// The encoder thread: drives delta-rs' async writer (its uploads) on the runtime's handle.
fn encode(
    runtime: &tokio::runtime::Handle,
    mut inner: RecordBatchWriter,
    mut rx: mpsc::Receiver<Msg>,
) -> Result<Vec<Add>, DeltaTableError> {
    let schema: SchemaRef = inner.arrow_schema();
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Batch(batch) => {
                // A batch with more columns than the table adds them (the layout grew).
                let mode = if batch.schema().fields().len() > schema.fields().len() {
                    WriteMode::MergeSchema
                } else {
                    WriteMode::Default
                };
                runtime.block_on(inner.write_with_mode(batch, mode))?;
            }
            Msg::Finish => return runtime.block_on(inner.flush()),
        }
    }
    Ok(Vec::new())
}
