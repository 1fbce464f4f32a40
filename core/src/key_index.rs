//! A table file's key column, sorted, with each row's position in the file: what a step looks
//! the window's keys up in instead of fetching and decoding the file's key column again.
//!
//! Ten thousand random keys fall in the key range of every file of a large table, so key-range
//! pruning leaves every file a candidate and each step would read the whole key column (124 MB
//! at 20M integer keys). A file's bytes never change once written (Delta adds files under new
//! names), so what it holds is learned once: the lookup costs each window key a directory
//! probe (`Directory`; a search of logarithmic cost where the keys bunch), and only the
//! rows it finds are handed to the merge, which still matches keys exactly. Deletion vectors
//! change between steps, so they are applied at each lookup, never stored.
//!
//! The index is the whole probe of the key (the merge matches rows by their key columns
//! alone), so the merge's input is built from it without reading the file. One integer or
//! text column (UUIDs included) is held as its values; any other key (several columns:
//! `(crdb_region, id)` of a REGIONAL BY ROW table; or another type) as each row's key-text
//! hash, sorted, beside the key columns themselves.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{ArrowError, DataType, FieldRef, Schema, SchemaRef};

use crate::apply::{key_hash, key_text_into};
use crate::deletion_vector::DeletionVector;
use crate::format::column;
use crate::format::types::ColumnType;
use crate::format::values;
use crate::plan::KeyProbe;

/// One file's key columns, sorted by key (ties by position).
#[derive(Debug)]
pub struct FileKeys {
    /// The key columns, in key order.
    schema: SchemaRef,
    keys: Keys,
    /// The position in the file of each key's row; `None` when the file is in key order (as
    /// the files we write are): the i-th key is then at row i.
    rows: Option<Vec<u32>>,
}

/// Keys per block of the fence: every 64th key is copied into a small array (an eighth of a
/// megabyte per million keys, so it stays in cache) searched first, then one block of 64.
const STRIDE: usize = 64;

/// Every [`STRIDE`]th key. A plain binary search of a million keys misses the cache at each of
/// its last levels, and a step searches tens of thousands of keys (profiled: 60% of a warm
/// step at 20M rows).
fn fence<K: Copy>(keys: &[K]) -> Vec<K> {
    keys.iter().step_by(STRIDE).copied().collect()
}

#[derive(Debug)]
enum Keys {
    /// How the keys are searched, and the keys.
    Ints(Search<i64>, Vec<i64>),
    /// Text keys that are all canonical UUIDs (lowercase, hyphenated: `gen_random_uuid()`), as
    /// their 16 bytes: a fifth of the text's memory. Numeric order is their text's bytewise
    /// order (fixed width, `0-9` before `a-f`).
    Uuids(Search<u128>, Vec<u128>),
    /// Sorted bytewise, as [`KeyProbe`]'s strings are.
    Strings(StringArray),
    /// Any other key, by its text's hash ([`Hashed`]).
    Hashed(Hashed),
}

/// Keys held by their text's hash ([`key_hash`]): the merge matches rows by their key, so a
/// collision costs one row compared, never a wrong match.
#[derive(Debug)]
struct Hashed {
    /// Each row's hash, sorted, and how they are searched (hashes are uniform: a directory).
    search: Search<u64>,
    hashes: Vec<u64>,
    /// The key columns in file order, handed to the merge for the rows a hash finds.
    columns: Vec<ArrayRef>,
    /// The types the texts were printed in (a text printed in other types is another text).
    types: Vec<ColumnType>,
}

/// A sorted key column's search structure: a directory of buckets where the keys spread
/// evenly over their range (hashes, random UUIDs, the integers of a file that holds a hash
/// slice or a key range of a table), else the fence.
#[derive(Debug)]
enum Search<K> {
    Directory(Directory),
    Fence(Vec<K>),
}

/// A key's place in an order-preserving map to `u128`: what a [`Directory`] buckets by.
trait Ordinal: Copy + Ord {
    fn ordinal(self) -> u128;
}

impl Ordinal for i64 {
    fn ordinal(self) -> u128 {
        (i128::from(self) - i128::from(i64::MIN)) as u128
    }
}

impl Ordinal for u64 {
    fn ordinal(self) -> u128 {
        u128::from(self)
    }
}

impl Ordinal for u128 {
    fn ordinal(self) -> u128 {
        self
    }
}

/// Keys per bucket of a [`Directory`], on average.
const PER_BUCKET: usize = 8;

/// A bucket larger than this means the keys are not spread evenly: the fence is kept instead.
const MAX_BUCKET: usize = 64;

/// `keys[starts[b]..starts[b + 1]]` are the keys whose offset from the first key, shifted right
/// by `shift`, is `b`. With keys spread evenly a bucket holds about [`PER_BUCKET`]: a search
/// reads its two bounds and one or two cache lines, where the fence's search misses the cache
/// at each of its last levels. Profiled at 20M rows with keys of two columns: the fence's
/// searches were 40% of a warm step (10k window keys in each of 23 files), the directory's 19%.
#[derive(Debug)]
struct Directory {
    starts: Vec<u32>,
    first: u128,
    last: u128,
    shift: u32,
}

impl Directory {
    /// `None` when the keys are too few or not spread evenly enough (a bucket over
    /// [`MAX_BUCKET`]).
    fn new<K: Ordinal>(keys: &[K]) -> Option<Self> {
        let (first, last) = (keys.first()?.ordinal(), keys.last()?.ordinal());
        if keys.len() < 2 * PER_BUCKET {
            return None;
        }
        let buckets = (keys.len() / PER_BUCKET).next_power_of_two();
        let span_bits = u128::BITS - (last - first).leading_zeros();
        let shift = span_bits.saturating_sub(buckets.trailing_zeros());
        let bucket = |k: K| ((k.ordinal() - first) >> shift) as usize;
        let mut starts = Vec::with_capacity(buckets + 1);
        let mut i = 0usize;
        for b in 0..buckets {
            while i < keys.len() && bucket(keys[i]) < b {
                i += 1;
            }
            starts.push(i as u32);
        }
        starts.push(keys.len() as u32);
        if starts
            .windows(2)
            .any(|w| (w[1] - w[0]) as usize > MAX_BUCKET)
        {
            return None;
        }
        Some(Self {
            starts,
            first,
            last,
            shift,
        })
    }

    /// Every index of a wanted key (sorted, each once), as [`equal_ranges`] gives them.
    fn find<K: Ordinal>(
        &self,
        keys: &[K],
        wanted: &[K],
        found: &mut Vec<(u32, usize)>,
        rows: Option<&[u32]>,
    ) {
        for &w in wanted {
            let o = w.ordinal();
            if o < self.first || o > self.last {
                continue;
            }
            let b = ((o - self.first) >> self.shift) as usize;
            let from = self.starts[b] as usize;
            for (i, &k) in keys[from..self.starts[b + 1] as usize].iter().enumerate() {
                if k == w {
                    let i = from + i;
                    found.push((rows.map_or(i as u32, |r| r[i]), i));
                }
            }
        }
    }
}

impl<K: Ordinal> Search<K> {
    fn new(keys: &[K]) -> Self {
        Directory::new(keys).map_or_else(|| Self::Fence(fence(keys)), Self::Directory)
    }

    fn bytes(&self) -> usize {
        match self {
            Self::Directory(d) => d.starts.capacity() * 4,
            Self::Fence(f) => f.capacity() * std::mem::size_of::<K>(),
        }
    }

    fn find(&self, keys: &[K], wanted: &[K], found: &mut Vec<(u32, usize)>, rows: Option<&[u32]>) {
        match self {
            Self::Directory(d) => d.find(keys, wanted, found, rows),
            Self::Fence(f) => equal_ranges(keys.len(), f, wanted, |i| keys[i], found, rows),
        }
    }
}

/// Every text of the arrays as a UUID's 16 bytes, if all are canonical UUIDs: 36 bytes each,
/// read straight from the values buffer (offsets checked once per array).
fn uuids(arrays: &[&StringArray], total: usize) -> Option<Vec<u128>> {
    let mut out = Vec::with_capacity(total);
    for a in arrays {
        let offsets = a.value_offsets();
        let (first, last) = (offsets[0] as usize, offsets[a.len()] as usize);
        if last - first != 36 * a.len() || offsets.windows(2).any(|w| w[1] - w[0] != 36) {
            return None;
        }
        for text in a.values()[first..last].chunks_exact(36) {
            out.push(u128::from_be_bytes(values::parse_uuid(text)?));
        }
    }
    Some(out)
}

fn uuid_text(v: u128, buf: &mut [u8; 36]) -> &str {
    values::uuid_text(&v.to_be_bytes(), buf)
}

impl FileKeys {
    /// From the key column of every row of a file, in file order (`columns`: one array per
    /// decoded batch). `None` when it cannot be indexed: another type, a null key, or more rows
    /// than positions of 32 bits.
    pub fn build(field: FieldRef, columns: &[ArrayRef]) -> Option<Self> {
        let total: usize = columns.iter().map(|c| c.len()).sum();
        u32::try_from(total).ok()?;
        if columns
            .iter()
            .any(|c| c.null_count() > 0 || c.data_type() != field.data_type())
        {
            return None;
        }
        let (keys, rows) = match field.data_type() {
            DataType::Int64 | DataType::Int32 => {
                let mut keys: Vec<i64> = Vec::with_capacity(total);
                for c in columns {
                    match field.data_type() {
                        DataType::Int64 => keys.extend_from_slice(ints::<Int64Array>(c)?.values()),
                        _ => keys.extend(
                            ints::<Int32Array>(c)?
                                .values()
                                .iter()
                                .map(|&v| i64::from(v)),
                        ),
                    }
                }
                let (keys, rows) = sorted(keys);
                (Keys::Ints(Search::new(&keys), keys), rows)
            }
            DataType::Utf8 => {
                let arrays: Vec<&StringArray> = columns
                    .iter()
                    .map(|c| c.as_any().downcast_ref::<StringArray>())
                    .collect::<Option<_>>()?;
                if let Some(uuids) = uuids(&arrays, total) {
                    let (keys, rows) = sorted(uuids);
                    (Keys::Uuids(Search::new(&keys), keys), rows)
                } else {
                    // No nulls (checked above): values read without a validity check each.
                    let texts = arrays.iter().flat_map(|a| (0..a.len()).map(|i| a.value(i)));
                    let (order, rows) = sorted(texts.collect::<Vec<&str>>());
                    (Keys::Strings(order.into_iter().map(Some).collect()), rows)
                }
            }
            _ => return None,
        };
        let schema = Arc::new(Schema::new(vec![field]));
        Some(Self { schema, keys, rows })
    }

    /// From every row of a file's key columns (`batches`, in file order): one integer or text
    /// column by its values ([`Self::build`]), any other key by its text's hash
    /// ([`Self::build_hashed`]). `None` when neither can index it.
    pub fn learn(batches: &[RecordBatch], key: &[String], types: &[ColumnType]) -> Option<Self> {
        let single = match batches.first()?.num_columns() {
            1 => {
                let columns: Vec<ArrayRef> = batches.iter().map(|b| b.column(0).clone()).collect();
                Self::build(batches[0].schema().field(0).clone().into(), &columns)
            }
            _ => None,
        };
        single.or_else(|| Self::build_hashed(batches, key, types))
    }

    /// From every row of a file's key columns (`batches`, in file order, holding the columns
    /// named `key` in whatever order the file has them), for any key: each row's key text
    /// hashed, the text built as the merge builds it (the columns in key order, converted to
    /// `types`, the layout's). `None` when a key column is missing or does not convert, a key
    /// value is NULL, or there are more rows than positions of 32 bits.
    pub fn build_hashed(
        batches: &[RecordBatch],
        key: &[String],
        types: &[ColumnType],
    ) -> Option<Self> {
        if key.len() != types.len() {
            return None;
        }
        // The key columns in key order: a file keeps its own column order.
        let in_key_order = |b: &RecordBatch| -> Option<RecordBatch> {
            let indices: Vec<usize> = key
                .iter()
                .map(|k| b.schema().index_of(k).ok())
                .collect::<Option<_>>()?;
            b.project(&indices).ok()
        };
        let batches: Vec<RecordBatch> = batches.iter().map(in_key_order).collect::<Option<_>>()?;
        let schema = batches.first()?.schema();
        let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
        u32::try_from(total).ok()?;
        let mut hashes: Vec<u64> = Vec::with_capacity(total);
        let mut text = String::new();
        for b in &batches {
            if b.schema() != schema {
                return None;
            }
            let converted: Vec<ArrayRef> = b
                .columns()
                .iter()
                .zip(types)
                .map(|(c, ty)| column::convert(c, ty).ok())
                .collect::<Option<_>>()?;
            for r in 0..b.num_rows() {
                key_text_into(&converted, r, &mut text).ok()?;
                hashes.push(key_hash(&text));
            }
        }
        let columns = (0..schema.fields().len())
            .map(|i| {
                let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(i).as_ref()).collect();
                arrow_select::concat::concat(&parts).ok().map(compact)
            })
            .collect::<Option<Vec<ArrayRef>>>()?;
        let (hashes, rows) = sorted(hashes);
        Some(Self {
            schema,
            keys: Keys::Hashed(Hashed {
                search: Search::new(&hashes),
                hashes,
                columns,
                types: types.to_vec(),
            }),
            rows,
        })
    }

    /// Rows indexed.
    pub fn len(&self) -> usize {
        match &self.keys {
            Keys::Ints(_, k) => k.len(),
            Keys::Uuids(_, k) => k.len(),
            Keys::Strings(k) => k.len(),
            Keys::Hashed(h) => h.hashes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory held, in bytes: what a cache of these is budgeted by.
    pub fn bytes(&self) -> u64 {
        let keys = match &self.keys {
            Keys::Ints(f, k) => f.bytes() + k.capacity() * 8,
            Keys::Uuids(f, k) => f.bytes() + k.capacity() * 16,
            Keys::Strings(k) => k.get_array_memory_size(),
            Keys::Hashed(h) => {
                h.hashes.capacity() * 8
                    + h.search.bytes()
                    + h.columns
                        .iter()
                        .map(|c| c.get_array_memory_size())
                        .sum::<usize>()
            }
        };
        (keys + self.rows.as_ref().map_or(0, |r| r.capacity() * 4)) as u64
    }

    /// Whether the index is of these key columns, by name, and (hashed keys) of these key
    /// types: an index learned under another layout is not used.
    pub fn is_of(&self, key: &[String], types: &[ColumnType]) -> bool {
        self.schema.fields().len() == key.len()
            && self
                .schema
                .fields()
                .iter()
                .zip(key)
                .all(|(f, k)| f.name() == k)
            && match &self.keys {
                Keys::Hashed(h) => h.types.as_slice() == types,
                _ => true,
            }
    }

    /// The rows holding one of the window's keys that `dv` does not hide: a batch of their key
    /// columns (the fields the index was built from) and their positions in the file,
    /// ascending. `None` when the probe's keys are not of the index's kind (they are then not
    /// looked up). Hashed keys also hand over a colliding row now and then.
    pub fn lookup(
        &self,
        probe: &KeyProbe,
        dv: &DeletionVector,
    ) -> Option<Result<(RecordBatch, Vec<u64>), ArrowError>> {
        // (position, index into the sorted keys) of every match.
        let mut found: Vec<(u32, usize)> = Vec::new();
        match (&self.keys, probe.ints(), probe.uuids(), probe.strings()) {
            (Keys::Ints(search, keys), Some(wanted), _, _) => {
                search.find(keys, wanted, &mut found, self.rows.as_deref())
            }
            // Texts that are not canonical UUIDs are in no row of this file.
            (Keys::Uuids(search, keys), _, Some(wanted), _) => {
                search.find(keys, wanted, &mut found, self.rows.as_deref())
            }
            (Keys::Strings(keys), _, _, Some(wanted)) => {
                let wanted: Vec<&str> = wanted.iter().collect();
                equal_ranges(
                    keys.len(),
                    &[],
                    &wanted,
                    |i| keys.value(i),
                    &mut found,
                    self.rows.as_deref(),
                )
            }
            (Keys::Hashed(h), ..) => {
                let wanted = probe.key_hashes()?;
                h.search
                    .find(&h.hashes, wanted, &mut found, self.rows.as_deref())
            }
            _ => return None,
        }
        found.retain(|&(row, _)| !dv.contains(u64::from(row)));
        found.sort_unstable();
        let field_type = self.schema.field(0).data_type();
        let column: ArrayRef = match (&self.keys, field_type) {
            (Keys::Hashed(h), _) => {
                let columns = match h.take(&found, &self.schema) {
                    Ok(columns) => columns,
                    Err(e) => return Some(Err(e)),
                };
                return Some(self.batch(columns, &found));
            }
            (Keys::Ints(_, k), DataType::Int32) => Arc::new(Int32Array::from_iter_values(
                found.iter().map(|&(_, i)| k[i] as i32),
            )),
            (Keys::Ints(_, k), _) => Arc::new(Int64Array::from_iter_values(
                found.iter().map(|&(_, i)| k[i]),
            )),
            (Keys::Uuids(_, k), _) => {
                let mut buf = [0u8; 36];
                let mut b = arrow_array::builder::StringBuilder::with_capacity(
                    found.len(),
                    found.len() * 36,
                );
                for &(_, i) in &found {
                    b.append_value(uuid_text(k[i], &mut buf));
                }
                Arc::new(b.finish())
            }
            (Keys::Strings(k), _) => Arc::new(StringArray::from_iter_values(
                found.iter().map(|&(_, i)| k.value(i)),
            )),
        };
        Some(self.batch(vec![column], &found))
    }

    /// The key columns of the rows found, and their positions.
    fn batch(
        &self,
        columns: Vec<ArrayRef>,
        found: &[(u32, usize)],
    ) -> Result<(RecordBatch, Vec<u64>), ArrowError> {
        let positions = found.iter().map(|&(r, _)| u64::from(r)).collect();
        RecordBatch::try_new(self.schema.clone(), columns).map(|b| (b, positions))
    }
}

impl Hashed {
    /// The key columns at the rows found (positions in the file: the columns are in file
    /// order), in the file's types (a compacted column is cast back).
    fn take(&self, found: &[(u32, usize)], schema: &Schema) -> Result<Vec<ArrayRef>, ArrowError> {
        let at = arrow_array::UInt32Array::from_iter_values(found.iter().map(|&(r, _)| r));
        self.columns
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| {
                let taken = arrow_select::take::take(c.as_ref(), &at, None)?;
                match taken.data_type() == f.data_type() {
                    true => Ok(taken),
                    false => arrow_cast::cast(&taken, f.data_type()),
                }
            })
            .collect()
    }
}

/// A key column as held by a hashed index: a text column of few distinct values (a region)
/// as a dictionary of 16-bit codes, 2 bytes a row instead of its text and offset.
fn compact(column: ArrayRef) -> ArrayRef {
    let dictionary = DataType::Dictionary(Box::new(DataType::UInt16), Box::new(DataType::Utf8));
    if column.data_type() != &DataType::Utf8 || column.len() < 64 {
        return column;
    }
    match arrow_cast::cast(&column, &dictionary) {
        Ok(d) if d.get_array_memory_size() < column.get_array_memory_size() => d,
        _ => column,
    }
}

/// Keys in key order, and the row of each unless they were in key order already.
fn sorted<K: Ord + Copy>(mut keys: Vec<K>) -> (Vec<K>, Option<Vec<u32>>) {
    // Collected through adapters that do not know their length: held for long, so exact.
    keys.shrink_to_fit();
    if keys.is_sorted() {
        return (keys, None);
    }
    let mut pairs: Vec<(K, u32)> = keys.iter().copied().zip(0u32..).collect();
    pairs.sort_unstable();
    keys.clear();
    keys.extend(pairs.iter().map(|p| p.0));
    let rows = pairs.into_iter().map(|p| p.1).collect();
    (keys, Some(rows))
}

fn ints<T: 'static>(c: &ArrayRef) -> Option<&T> {
    c.as_any().downcast_ref::<T>()
}

/// For each wanted key (sorted, each once: [`KeyProbe`] dedups), every index of a sorted key
/// column equal to it.
///
/// With a fence, each key's block is found in the fence (in cache), then the blocks are
/// searched [`LANES`] keys at a time in lockstep: their loads do not depend on each other, so
/// the processor waits for their cache misses together rather than one after the other (a
/// table sliced by key hash has every window key in the range of every slice's file, so a
/// step makes tens of thousands of these searches). Without a fence (text keys), a binary
/// search from where the previous key's ended.
fn equal_ranges<K: Ord + Copy>(
    len: usize,
    fence: &[K],
    wanted: &[K],
    key: impl Fn(usize) -> K,
    found: &mut Vec<(u32, usize)>,
    rows: Option<&[u32]>,
) {
    if len == 0 {
        return;
    }
    let (lo, hi) = (key(0), key(len - 1));
    let first = wanted.partition_point(|w| *w < lo);
    let last = first + wanted[first..].partition_point(|w| *w <= hi);
    let wanted = &wanted[first..last];
    let mut starts: Vec<usize> = Vec::with_capacity(wanted.len());
    if fence.is_empty() {
        let mut from = 0usize;
        for &w in wanted {
            from += partition(len - from, |j| key(from + j) < w);
            starts.push(from);
        }
    } else {
        // Each key's block: fence[b] = key(b * STRIDE) is the first fence key not below it, so
        // its first index not below it is in ((b - 1) * STRIDE, b * STRIDE].
        let blocks: Vec<(usize, usize)> = wanted
            .iter()
            .map(|w| {
                let b = fence.partition_point(|f| f < w);
                let start = if b == 0 { 0 } else { (b - 1) * STRIDE + 1 };
                (start, (b * STRIDE).min(len))
            })
            .collect();
        for (ws, bs) in wanted.chunks(LANES).zip(blocks.chunks(LANES)) {
            let mut base = [0usize; LANES];
            let mut n = [0usize; LANES];
            for (l, &(s, e)) in bs.iter().enumerate() {
                (base[l], n[l]) = (s, e - s);
            }
            // A lower bound per lane, all lanes a halving at a time (no lane's load waits for
            // another's).
            for _ in 0..=STRIDE.ilog2() {
                for l in 0..ws.len() {
                    if n[l] > 1 {
                        let half = n[l] / 2;
                        if key(base[l] + half - 1) < ws[l] {
                            base[l] += half;
                        }
                        n[l] -= half;
                    }
                }
            }
            for l in 0..ws.len() {
                let at = base[l] + usize::from(n[l] == 1 && key(base[l]) < ws[l]);
                starts.push(at);
            }
        }
    }
    for (&w, &start) in wanted.iter().zip(&starts) {
        let mut i = start;
        while i < len && key(i) == w {
            found.push((rows.map_or(i as u32, |r| r[i]), i));
            i += 1;
        }
    }
}

/// Keys searched side by side in [`equal_ranges`].
const LANES: usize = 8;

/// The first index in `0..len` where `less` is false (`less` is true then false).
pub(crate) fn partition(len: usize, less: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0usize, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if less(mid) { lo = mid + 1 } else { hi = mid }
    }
    lo
}
