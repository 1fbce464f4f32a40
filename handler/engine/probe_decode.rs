//! A table file's probe columns (its key columns, and scd2's end and start), decoded off the
//! merge's path.
//!
//! Decoding them is most of a step that reads table files: a process's first step at a table
//! of random keys reads every file's key column (at 20M UUID rows, decoding was 59% of it).
//! Here a file's row groups are shared by [`DECODERS`] blocking threads, each at most
//! [`AHEAD_ROWS`] rows ahead of the merge, which takes the batches in file order: while one
//! row group is decoded for the merge, the next is decoded on the other core, and the files
//! fetched ahead start theirs. Memory per file in flight: the fetched column chunks, and
//! `DECODERS × AHEAD_ROWS` decoded rows of its probe columns (with the key columns of the rows
//! decoded so far, while the file's key index is learned).

use std::sync::Arc;

use arrow_array::RecordBatch;
use crdb_delta_core::apply::ChangeError;
use crdb_delta_core::deletion_vector::DeletionVector;
use crdb_delta_core::format::types::ColumnType;
use crdb_delta_core::key_index::FileKeys;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::SyncError;
use super::key_cache::KeyCache;
use crate::delta::{DeltaError, TableFile};
use crate::table_file::Group;

/// Threads decoding one file: the instance's two cores.
const DECODERS: usize = 2;

/// Rows a decoder holds decoded ahead of the merge: a quarter of a row group as crdb-delta
/// writes them (`file_writer::ROW_GROUP_ROWS`). A whole row group ahead let a process's
/// first step at 20M UUID rows run 0.62-0.63 s instead of 0.66-0.68 s, but a warm process's
/// peak RSS rose by 50-70 MiB (docs/benchmarks.md).
pub(super) const AHEAD_ROWS: usize = 32 * 1024;

/// A batch's live rows with their positions in the file.
pub(super) type LiveBatch = Result<(RecordBatch, Vec<u64>), SyncError>;

/// A decoder's key columns, by row group (when it decoded all its groups).
type LearnedGroups = Option<Vec<(usize, Vec<RecordBatch>)>>;

/// What a decoder sends: the batches of its row groups, each group closed by `GroupEnd` (the
/// merge then reads the next group from the next decoder).
enum Item {
    Batch(LiveBatch),
    GroupEnd,
}

/// How a fetched table file's probe columns reach the merge.
pub(super) enum Probed {
    /// Decoded before the merge reaches the file (the rows a key index found).
    Ahead(Result<Vec<(RecordBatch, Vec<u64>)>, SyncError>),
    /// Decoded by [`decode`]'s threads as the merge takes them.
    Streamed(Streamed),
}

/// A file being decoded by [`decode`]'s threads.
pub(super) struct Streamed {
    table: String,
    path: String,
    groups: usize,
    /// The row group the merge takes next.
    next: usize,
    /// One per decoder; row group `g` comes from `decoders[g % decoders.len()]`.
    decoders: Vec<mpsc::Receiver<Item>>,
    /// Keeps the file's key index once every row group is decoded.
    learned: Option<JoinHandle<()>>,
}

impl Streamed {
    /// The next batch in file order (`None` after the last group, or after an error).
    async fn next_batch(&mut self) -> Option<LiveBatch> {
        while self.next < self.groups {
            let d = self.next % self.decoders.len();
            match self.decoders[d].recv().await {
                Some(Item::Batch(b)) => {
                    if b.is_err() {
                        // Its decoder stopped there.
                        self.next = self.groups;
                    }
                    return Some(b);
                }
                Some(Item::GroupEnd) => self.next += 1,
                // A decoder ends early only after sending its error, or by a panic.
                None => {
                    self.next = self.groups;
                    return Some(Err(SyncError::Table {
                        table: self.table.clone(),
                        message: format!(
                            "{}: its decoder stopped before the file ended",
                            self.path
                        ),
                    }));
                }
            }
        }
        None
    }
}

impl Probed {
    /// The batches in file order. A file's key index, when it learns one, is kept by a task
    /// pushed to `learning`: the step waits for those before it returns, so the next step finds
    /// every index this one learned. Dropping the stream stops the decoders.
    pub(super) fn batches(
        self,
        learning: &mut Vec<JoinHandle<()>>,
    ) -> Result<BoxStream<'static, LiveBatch>, SyncError> {
        let mut streamed = match self {
            Probed::Ahead(decoded) => {
                return Ok(futures::stream::iter(decoded?.into_iter().map(Ok)).boxed());
            }
            Probed::Streamed(streamed) => streamed,
        };
        learning.extend(streamed.learned.take());
        Ok(futures::stream::unfold(streamed, |mut s| async move {
            s.next_batch().await.map(|b| (b, s))
        })
        .boxed())
    }
}

/// Starts decoding `file`'s `probe` columns (the rows `dv` does not hide), `batch_size` rows a
/// batch, each decoder at most `ahead_rows` ([`AHEAD_ROWS`]) ahead of the merge; and learning
/// its key index into `learn` when given.
#[allow(clippy::too_many_arguments)]
pub(super) fn decode(
    table: &str,
    file: &TableFile,
    path: &str,
    probe: &[String],
    dv: &DeletionVector,
    batch_size: usize,
    ahead_rows: usize,
    learn: Option<Learn>,
) -> Result<Probed, DeltaError> {
    let groups = file.groups(Some(probe), batch_size)?;
    let n = groups.len();
    let threads = DECODERS.min(n).max(1);
    // A group's batches and its end.
    let capacity = ahead_rows.div_ceil(batch_size.max(1)) + 1;
    let mut shares: Vec<Vec<(usize, Group)>> = (0..threads).map(|_| Vec::new()).collect();
    for (g, group) in groups.into_iter().enumerate() {
        shares[g % threads].push((g, group));
    }
    let dv = Arc::new(dv.clone());
    let mut decoders = Vec::new();
    let mut handles = Vec::new();
    for share in shares {
        let (tx, rx) = mpsc::channel(capacity);
        let (table, dv, keys) = (
            table.to_owned(),
            dv.clone(),
            learn.as_ref().map(Learn::empty),
        );
        handles.push(tokio::task::spawn_blocking(move || {
            decode_share(&table, share, &dv, keys, &tx)
        }));
        decoders.push(rx);
    }
    let learned = learn.map(|learn| tokio::spawn(keep_learned(learn, handles)));
    Ok(Probed::Streamed(Streamed {
        table: table.to_owned(),
        path: path.to_owned(),
        groups: n,
        next: 0,
        decoders,
        learned,
    }))
}

/// One decoder: its row groups in order, each batch's live rows sent, until its groups end, a
/// batch fails (the error sent too) or the merge drops the receiver. With `learn`, the key
/// columns of each of its groups, when it decoded all of them.
fn decode_share(
    table: &str,
    share: Vec<(usize, Group)>,
    dv: &DeletionVector,
    mut learn: Option<Learn>,
    tx: &mpsc::Sender<Item>,
) -> LearnedGroups {
    let mut learned = Vec::new();
    for (g, group) in share {
        let mut first = group.first_row;
        for b in group.batches {
            let live = b.map_err(SyncError::from).and_then(|b| {
                if let Some(l) = learn.as_mut() {
                    l.add(&b);
                }
                live_rows(table, &b, dv, &mut first)
            });
            let failed = live.is_err();
            if tx.blocking_send(Item::Batch(live)).is_err() || failed {
                return None;
            }
        }
        if tx.blocking_send(Item::GroupEnd).is_err() {
            return None;
        }
        if let Some(l) = learn.as_mut() {
            learned.push((g, std::mem::take(&mut l.batches)));
        }
    }
    Some(learned)
}

/// Puts the decoders' key columns in file order and keeps the index, if every decoder decoded
/// all its groups (a file the merge stopped reading, e.g. a rewrite at its first hit, is left
/// unindexed). A decoder's panic is resumed here.
async fn keep_learned(mut learn: Learn, decoders: Vec<JoinHandle<LearnedGroups>>) {
    let mut groups = Vec::new();
    for d in decoders {
        match d.await {
            Ok(Some(learned)) => groups.extend(learned),
            Ok(None) => return,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return,
        }
    }
    groups.sort_by_key(|(g, _)| *g);
    learn.batches = groups.into_iter().flat_map(|(_, b)| b).collect();
    // Sorting or parsing every key of a large file takes milliseconds: a blocking thread.
    if let Err(e) = tokio::task::spawn_blocking(move || learn.finish()).await
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A file's key columns gathered as its batches are decoded (every row, hidden ones too: a
/// deletion vector is applied at each lookup), kept in the cache once the file is read whole.
pub(super) struct Learn {
    cache: KeyCache,
    table: Arc<String>,
    path: String,
    size: i64,
    /// The layout's key columns and their types (a hashed index converts to them).
    key: Arc<[String]>,
    types: Arc<[ColumnType]>,
    batches: Vec<RecordBatch>,
}

impl Learn {
    pub(super) fn new(
        cache: KeyCache,
        table: &Arc<String>,
        path: &str,
        size: i64,
        (key, types): &(Arc<[String]>, Arc<[ColumnType]>),
    ) -> Self {
        Self {
            cache,
            table: table.clone(),
            path: path.to_owned(),
            size,
            key: key.clone(),
            types: types.clone(),
            batches: Vec::new(),
        }
    }

    /// The same file's learning with no batch yet: one per decoder.
    fn empty(&self) -> Self {
        Self::new(
            self.cache.clone(),
            &self.table,
            &self.path,
            self.size,
            &(self.key.clone(), self.types.clone()),
        )
    }

    /// A batch of the file's key columns (others it holds are dropped), in file order.
    fn add(&mut self, batch: &RecordBatch) {
        let schema = batch.schema();
        let key: Vec<usize> = self
            .key
            .iter()
            .filter_map(|k| schema.index_of(k).ok())
            .collect();
        self.batches
            .push(batch.project(&key).unwrap_or_else(|_| batch.clone()));
    }

    /// Builds and keeps the index. One integer or text column is held as its values, any
    /// other key by its text's hash.
    fn finish(self) {
        if let Some(keys) = FileKeys::learn(&self.batches, &self.key, &self.types) {
            self.cache.put(&self.table, &self.path, self.size, keys);
        }
    }
}

/// The rows of a file batch its deletion vector does not hide, and their positions in the file
/// (`first`: the position of the batch's first row, advanced past it).
pub(super) fn live_rows(
    table: &str,
    batch: &RecordBatch,
    dv: &DeletionVector,
    first: &mut u64,
) -> Result<(RecordBatch, Vec<u64>), SyncError> {
    let start = *first;
    *first += batch.num_rows() as u64;
    dv.live_rows(batch, start)
        .map_err(|source| SyncError::Change {
            table: table.to_owned(),
            source: ChangeError::Arrow(source),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, StringArray};
    use crdb_delta_core::plan::KeyProbe;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    const ROWS: usize = 95;

    fn key(i: usize) -> String {
        format!("k{i:04}")
    }

    /// A file of ROWS keys in order, in row groups of 10 rows.
    fn file() -> TableFile {
        TableFile::in_memory("part-0.parquet", file_bytes())
    }

    fn file_bytes() -> bytes::Bytes {
        let ids: ArrayRef = Arc::new(StringArray::from_iter_values((0..ROWS).map(key)));
        let batch = RecordBatch::try_from_iter([("id", ids)]).unwrap();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(10))
            .build();
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        bytes::Bytes::from(out)
    }

    fn learn(cache: &KeyCache, table: &Arc<String>, path: &str) -> Learn {
        let key = (
            Arc::from(vec!["id".to_owned()]),
            Arc::from(vec![ColumnType::Text]),
        );
        Learn::new(cache.clone(), table, path, 1, &key)
    }

    /// Row groups shared by two decoders reach the merge in file order, each row with its
    /// position (batches smaller than, equal to and larger than a row group), hidden rows
    /// left out; the key index learned from them finds each key at its position.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn row_groups_decoded_apart_arrive_in_file_order_and_teach_the_index() {
        let file = file();
        let hidden: DeletionVector = [3u64, 10, 11, 57, 94].into_iter().collect();
        let live: Vec<u64> = (0..ROWS as u64).filter(|&p| !hidden.contains(p)).collect();
        let cache = KeyCache::default();
        let table = Arc::new("memory:///t".to_owned());
        for batch_size in [1, 4, 10, 64] {
            let path = format!("part-{batch_size}.parquet");
            let learn = Some(learn(&cache, &table, &path));
            let probe = ["id".to_owned()];
            let probed = decode(
                "t", &file, &path, &probe, &hidden, batch_size, AHEAD_ROWS, learn,
            )
            .unwrap();
            let mut learning = Vec::new();
            let mut batches = probed.batches(&mut learning).unwrap();
            let mut seen = Vec::new();
            while let Some(b) = batches.next().await {
                let (batch, positions) = b.unwrap();
                let ids = batch.column(0).as_any().downcast_ref::<StringArray>();
                for (i, &p) in positions.iter().enumerate() {
                    assert_eq!(
                        ids.unwrap().value(i),
                        key(p as usize),
                        "batch size {batch_size}"
                    );
                }
                seen.extend(positions);
            }
            assert_eq!(seen, live, "batch size {batch_size}");
            assert_eq!(learning.len(), 1);
            for l in learning {
                l.await.unwrap();
            }
            let index = cache.get(&table, &path, 1).expect("learned");
            assert_eq!(index.len(), ROWS, "hidden rows are indexed too");
            let wanted = KeyProbe::of_texts(vec![key(0), key(12), key(57), key(93), key(94)]);
            let (_, rows) = index.lookup(&wanted, &hidden).unwrap().unwrap();
            assert_eq!(rows, vec![0, 12, 93], "batch size {batch_size}");
        }
    }

    /// A merge that stops reading a file (a rewrite at its first hit) stops its decoders,
    /// and learns no index from a file it did not read whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_left_early_stops_its_decoders_and_teaches_nothing() {
        let file = file();
        let cache = KeyCache::default();
        let table = Arc::new("memory:///t".to_owned());
        let learn = Some(learn(&cache, &table, "part-0.parquet"));
        let probe = ["id".to_owned()];
        let none = DeletionVector::new();
        // Two batches ahead: the file is 48 batches.
        let probed = decode("t", &file, "part-0.parquet", &probe, &none, 2, 4, learn).unwrap();
        let mut learning = Vec::new();
        let mut batches = probed.batches(&mut learning).unwrap();
        assert!(batches.next().await.unwrap().is_ok());
        drop(batches);
        for l in learning {
            tokio::time::timeout(std::time::Duration::from_secs(10), l)
                .await
                .expect("the decoders stop")
                .unwrap();
        }
        assert!(cache.get(&table, "part-0.parquet", 1).is_none());
    }

    /// A row group that fails to decode (its page header overwritten) ends the file's batches
    /// with an error naming the file, after the groups before it, whichever decoder has it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_group_that_fails_to_decode_names_the_file_and_ends_it() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        for bad_group in [3usize, 4] {
            let mut bytes = file_bytes().to_vec();
            let meta = SerializedFileReader::new(bytes::Bytes::from(bytes.clone()))
                .unwrap()
                .metadata()
                .clone();
            let at = meta.row_group(bad_group).column(0).data_page_offset() as usize;
            bytes[at..at + 16].fill(0xff);
            let file = TableFile::in_memory("part-bad.parquet", bytes::Bytes::from(bytes));
            let (probe, none) = (["id".to_owned()], DeletionVector::new());
            let probed = decode(
                "t",
                &file,
                "part-bad.parquet",
                &probe,
                &none,
                4,
                AHEAD_ROWS,
                None,
            )
            .unwrap();
            let mut batches = probed.batches(&mut Vec::new()).unwrap();
            let mut seen = Vec::new();
            let error = loop {
                match batches.next().await.expect("an error before the end") {
                    Ok((_, positions)) => seen.extend(positions),
                    Err(e) => break e.to_string(),
                }
            };
            assert_eq!(seen, (0..bad_group as u64 * 10).collect::<Vec<_>>());
            assert!(error.contains("part-bad.parquet"), "{error}");
            assert!(batches.next().await.is_none(), "nothing after the error");
        }
    }
}
