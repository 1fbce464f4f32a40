//! Delta deletion vectors (DVs): which rows of one data file are deleted, in Delta's own format.
//!
//! Pure codec, no I/O. A [`DeletionVector`] is a set of row positions (0-based, in file order)
//! of one Parquet data file. It is stored as Delta's protocol says ("Deletion Vector Format" and
//! "Deletion Vector Descriptor" in Delta's PROTOCOL.md; checked byte for byte against files
//! Databricks wrote):
//!
//! - **Bitmap** (`RoaringBitmapArray`, portable form): the magic number [`PORTABLE_MAGIC`]
//!   (u32 little endian), the number of 32-bit buckets (u64 LE), then per bucket its key (the
//!   high 32 bits of the positions, u32 LE) and a 32-bit Roaring bitmap of the low bits in the
//!   standard portable Roaring format. Everything after the magic is exactly what the `roaring`
//!   crate's `RoaringTreemap::serialize_into` writes (and what delta-kernel-rs writes); we only
//!   add the magic. We never write run containers (every Roaring reader, including old ones,
//!   reads array and bitset containers) but read them. Only non-empty buckets are written, as
//!   delta-kernel-rs does; a data file below 2^32 rows has just bucket 0.
//! - **`.bin` file** (`deletion_vector_<uuid>.bin`, next to the table or below a random-prefix
//!   folder): one format version byte ([`FILE_FORMAT_VERSION`]), then per DV the size of the
//!   bitmap (u32 big endian), the bitmap, and the CRC-32 (ISO-HDLC, as zlib's) of the bitmap
//!   (u32 big endian). A descriptor's `offset` points at the size field.
//! - **Descriptor** (the `deletionVector` of an `add`/`remove` action): `storageType` `u`
//!   (relative file: optional random prefix + the z85 of the UUID's 16 bytes), `i` (inline: the
//!   z85 of the bitmap, padded with zero bytes to a multiple of 4), `p` (absolute path);
//!   `offset` (files only), `sizeInBytes` (the bitmap's length, before z85) and `cardinality`.
//!
//! A data file carries at most one DV: deleting more rows of a file that already has one means
//! reading its DV, [`DeletionVector::union_with`] the new rows, writing the union as a new DV and
//! committing `remove(path, old DV)` + `add(path, new DV)`.

use std::io::Write as _;
use std::str::FromStr;

use arrow_array::{BooleanArray, RecordBatch};
use arrow_schema::ArrowError;
use arrow_select::filter::filter_record_batch;
use crc::{CRC_32_ISO_HDLC, Crc};
use roaring::{RoaringBitmap, RoaringTreemap};
use serde::{Deserialize, Serialize};

pub use uuid::Uuid;

/// Magic number of Delta's portable `RoaringBitmapArray` serialization (little endian on disk).
pub const PORTABLE_MAGIC: u32 = 1_681_511_377;
/// Magic number of the native serialization (reserved by Delta; not supported).
pub const NATIVE_MAGIC: u32 = 1_681_511_376;
/// First byte of a `.bin` deletion vector file.
pub const FILE_FORMAT_VERSION: u8 = 1;
/// Length of a z85-encoded UUID (16 bytes → 20 characters) in a `u` descriptor.
const ENCODED_UUID_LEN: usize = 20;

const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DvError {
    #[error("deletion vector storage type `{0}` is unknown (expected `u`, `i` or `p`)")]
    StorageType(String),
    #[error("deletion vector path `{path}`: {message}")]
    Path { path: String, message: String },
    #[error("deletion vector file: format version {0} is not supported (expected 1)")]
    Version(u8),
    #[error(
        "deletion vector file: the DV at offset {offset} ({size} bytes plus size and checksum) \
         runs past the end of the {len}-byte file"
    )]
    OutOfBounds { offset: i64, size: i64, len: usize },
    #[error(
        "deletion vector file: size {in_file} at offset {offset} differs from sizeInBytes {in_log}"
    )]
    Size {
        offset: i64,
        in_file: u32,
        in_log: i32,
    },
    #[error(
        "deletion vector: magic number {0} is not the portable RoaringBitmapArray format (1681511377)"
    )]
    Magic(u32),
    #[error("deletion vector file: CRC-32 {stored:#010x} in the file, {computed:#010x} computed")]
    Checksum { stored: u32, computed: u32 },
    #[error("deletion vector bitmap does not decode: {0}")]
    Bitmap(String),
    #[error(
        "deletion vector: cardinality {in_log} in the descriptor, {decoded} rows in the bitmap"
    )]
    Cardinality { in_log: i64, decoded: u64 },
    #[error("inline deletion vector: {0}")]
    Inline(String),
    #[error("deletion vector descriptor: {0}")]
    Descriptor(String),
    #[error("deletion vector of {0} bytes exceeds what a descriptor can address (2 GiB)")]
    TooLarge(usize),
}

/// The deleted row positions of one data file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeletionVector {
    rows: RoaringTreemap,
}

impl DeletionVector {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_treemap(rows: RoaringTreemap) -> Self {
        Self { rows }
    }

    /// Marks a row deleted; false when it already was.
    pub fn insert(&mut self, position: u64) -> bool {
        self.rows.insert(position)
    }

    /// Marks every position in `range` deleted.
    pub fn insert_range(&mut self, range: std::ops::Range<u64>) {
        self.rows.insert_range(range);
    }

    /// Adds the rows of `other` (a file keeps one DV: a second delete on it must keep both).
    pub fn union_with(&mut self, other: &DeletionVector) {
        self.rows |= &other.rows;
    }

    pub fn contains(&self, position: u64) -> bool {
        self.rows.contains(position)
    }

    /// Number of deleted rows (the descriptor's `cardinality`).
    pub fn cardinality(&self) -> u64 {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The highest deleted position.
    pub fn max(&self) -> Option<u64> {
        self.rows.max()
    }

    /// Deleted positions in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.rows.iter()
    }

    pub fn treemap(&self) -> &RoaringTreemap {
        &self.rows
    }

    /// Which of the rows `first_row .. first_row + len` survive (true = kept): the filter for a
    /// record batch read from the file at that position.
    pub fn keep_mask(&self, first_row: u64, len: usize) -> BooleanArray {
        let mut keep = vec![true; len];
        let end = first_row + len as u64;
        let mut it = self.rows.iter();
        it.advance_to(first_row);
        for p in it.take_while(|&p| p < end) {
            keep[(p - first_row) as usize] = false;
        }
        BooleanArray::from(keep)
    }

    /// The rows of a batch read from the file at `first_row` that survive, and their positions
    /// in the file (what a superseded row must be marked at).
    pub fn live_rows(
        &self,
        batch: &RecordBatch,
        first_row: u64,
    ) -> Result<(RecordBatch, Vec<u64>), ArrowError> {
        let n = batch.num_rows() as u64;
        if self.rows.range_cardinality(first_row..first_row + n) == 0 {
            return Ok((batch.clone(), (first_row..first_row + n).collect()));
        }
        let mask = self.keep_mask(first_row, batch.num_rows());
        let positions = (0..n)
            .filter(|&i| mask.value(i as usize))
            .map(|i| first_row + i)
            .collect();
        Ok((filter_record_batch(batch, &mask)?, positions))
    }

    /// The serialized bitmap: the portable magic followed by the 64-bit Roaring treemap
    /// (array and bitset containers only).
    pub fn to_bitmap_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.rows.serialized_size());
        out.extend_from_slice(&PORTABLE_MAGIC.to_le_bytes());
        let buckets: Vec<(u32, RoaringBitmap)> = self
            .rows
            .bitmaps()
            .filter(|(_, b)| !b.is_empty())
            .map(|(key, b)| {
                let mut b = b.clone();
                b.remove_run_compression();
                (key, b)
            })
            .collect();
        out.extend_from_slice(&(buckets.len() as u64).to_le_bytes());
        for (key, bitmap) in &buckets {
            out.extend_from_slice(&key.to_le_bytes());
            bitmap
                .serialize_into(&mut out)
                .expect("writing to a Vec cannot fail");
        }
        out
    }

    /// Decodes a serialized bitmap (magic + treemap). Bytes after the treemap are ignored
    /// (inline DVs are padded to a multiple of 4).
    pub fn from_bitmap_bytes(bytes: &[u8]) -> Result<Self, DvError> {
        let Some((magic, rest)) = bytes.split_first_chunk::<4>() else {
            return Err(DvError::Bitmap(format!(
                "{} bytes, shorter than the magic number",
                bytes.len()
            )));
        };
        match u32::from_le_bytes(*magic) {
            PORTABLE_MAGIC => {}
            other => return Err(DvError::Magic(other)),
        }
        let rows =
            RoaringTreemap::deserialize_from(rest).map_err(|e| DvError::Bitmap(e.to_string()))?;
        Ok(Self { rows })
    }
}

impl FromIterator<u64> for DeletionVector {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        Self {
            rows: iter.into_iter().collect(),
        }
    }
}

impl Extend<u64> for DeletionVector {
    fn extend<I: IntoIterator<Item = u64>>(&mut self, iter: I) {
        self.rows.extend(iter);
    }
}

/// Where a DV is stored (`storageType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StorageType {
    /// `u`: a file relative to the table root, named from a UUID (optionally below a prefix).
    #[serde(rename = "u")]
    Relative,
    /// `i`: inline in the log (z85 of the bitmap).
    #[serde(rename = "i")]
    Inline,
    /// `p`: a file at an absolute path.
    #[serde(rename = "p")]
    Absolute,
}

impl StorageType {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageType::Relative => "u",
            StorageType::Inline => "i",
            StorageType::Absolute => "p",
        }
    }
}

impl FromStr for StorageType {
    type Err = DvError;
    fn from_str(s: &str) -> Result<Self, DvError> {
        match s {
            "u" => Ok(StorageType::Relative),
            "i" => Ok(StorageType::Inline),
            "p" => Ok(StorageType::Absolute),
            other => Err(DvError::StorageType(other.to_owned())),
        }
    }
}

impl std::fmt::Display for StorageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `deletionVector` field of an `add`/`remove` action (same JSON as Delta's and delta-rs').
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletionVectorDescriptor {
    pub storage_type: StorageType,
    pub path_or_inline_dv: String,
    /// Position of the DV's size field in its file; absent for inline DVs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i32>,
    /// Length of the bitmap (magic + treemap), before any z85 encoding.
    pub size_in_bytes: i32,
    /// Number of deleted rows.
    pub cardinality: i64,
}

/// Where to find a DV's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DvLocation {
    /// In the descriptor itself.
    Inline,
    /// A file at this path relative to the table root (`[prefix/]deletion_vector_<uuid>.bin`).
    Relative(String),
    /// A file at this absolute path (URI).
    Absolute(String),
}

impl DeletionVectorDescriptor {
    /// An inline descriptor holding the whole bitmap (for small DVs; Delta readers and
    /// delta-rs read them, but each one lives in every checkpoint).
    pub fn inline(dv: &DeletionVector) -> Result<Self, DvError> {
        let mut bytes = dv.to_bitmap_bytes();
        let size = i32::try_from(bytes.len()).map_err(|_| DvError::TooLarge(bytes.len()))?;
        // Delta's Base85 codec encodes whole 4-byte words: pad with zeros (the z85 crate's own
        // tail encoding is not Delta's).
        bytes.resize(bytes.len().div_ceil(4) * 4, 0);
        Ok(Self {
            storage_type: StorageType::Inline,
            path_or_inline_dv: z85::encode(&bytes),
            offset: None,
            size_in_bytes: size,
            cardinality: dv.cardinality() as i64,
        })
    }

    /// Delta's unique id of a DV (`storageType` + `pathOrInlineDv` [+ `@offset`]): with the
    /// data file's path, it identifies a file version in log replay.
    pub fn unique_id(&self) -> String {
        match self.offset {
            Some(offset) => format!("{}{}@{offset}", self.storage_type, self.path_or_inline_dv),
            None => format!("{}{}", self.storage_type, self.path_or_inline_dv),
        }
    }

    /// The random prefix and UUID of a `u` descriptor.
    pub fn prefix_and_uuid(&self) -> Result<(&str, Uuid), DvError> {
        if self.storage_type != StorageType::Relative {
            return Err(DvError::Descriptor(format!(
                "storage type `{}` has no UUID",
                self.storage_type
            )));
        }
        let p = &self.path_or_inline_dv;
        let bad = |message: String| DvError::Path {
            path: p.clone(),
            message,
        };
        if p.len() < ENCODED_UUID_LEN || !p.is_char_boundary(p.len() - ENCODED_UUID_LEN) {
            return Err(bad(format!(
                "shorter than the {ENCODED_UUID_LEN}-character z85 UUID"
            )));
        }
        let (prefix, encoded) = p.split_at(p.len() - ENCODED_UUID_LEN);
        let raw = z85::decode(encoded).map_err(|e| bad(format!("UUID is not z85: {e}")))?;
        let uuid = Uuid::from_slice(&raw).map_err(|e| bad(e.to_string()))?;
        Ok((prefix, uuid))
    }

    /// Where the DV's bytes are.
    pub fn location(&self) -> Result<DvLocation, DvError> {
        match self.storage_type {
            StorageType::Inline => Ok(DvLocation::Inline),
            StorageType::Absolute => Ok(DvLocation::Absolute(self.path_or_inline_dv.clone())),
            StorageType::Relative => {
                let (prefix, uuid) = self.prefix_and_uuid()?;
                Ok(DvLocation::Relative(relative_path(prefix, &uuid)))
            }
        }
    }

    /// Decodes an inline DV.
    pub fn read_inline(&self) -> Result<DeletionVector, DvError> {
        if self.storage_type != StorageType::Inline {
            return Err(DvError::Descriptor(format!(
                "storage type `{}` is not inline",
                self.storage_type
            )));
        }
        let bytes = z85::decode(&self.path_or_inline_dv)
            .map_err(|e| DvError::Inline(format!("not z85: {e}")))?;
        let size = usize::try_from(self.size_in_bytes)
            .map_err(|_| DvError::Descriptor(format!("sizeInBytes {}", self.size_in_bytes)))?;
        if size > bytes.len() {
            return Err(DvError::Inline(format!(
                "sizeInBytes {size} but {} bytes encoded",
                bytes.len()
            )));
        }
        let dv = DeletionVector::from_bitmap_bytes(&bytes[..size])?;
        self.check_cardinality(&dv)?;
        Ok(dv)
    }

    /// Decodes this descriptor's DV from the bytes of its `.bin` file (version, size, magic and
    /// checksum checked).
    pub fn read_from_file(&self, file: &[u8]) -> Result<DeletionVector, DvError> {
        if self.storage_type == StorageType::Inline {
            return Err(DvError::Descriptor(
                "an inline DV is not stored in a file".into(),
            ));
        }
        let offset = self.offset.unwrap_or(1);
        let oob = || DvError::OutOfBounds {
            offset: offset.into(),
            size: self.size_in_bytes.into(),
            len: file.len(),
        };
        let (Ok(start), Ok(size)) = (usize::try_from(offset), usize::try_from(self.size_in_bytes))
        else {
            return Err(oob());
        };
        match file.first() {
            Some(&FILE_FORMAT_VERSION) => {}
            Some(&v) => return Err(DvError::Version(v)),
            None => return Err(oob()),
        }
        let end = start + 4 + size + 4;
        if start == 0 || end > file.len() {
            return Err(oob());
        }
        let in_file = u32::from_be_bytes(file[start..start + 4].try_into().expect("4 bytes"));
        if in_file as usize != size {
            return Err(DvError::Size {
                offset: offset.into(),
                in_file,
                in_log: self.size_in_bytes,
            });
        }
        let bitmap = &file[start + 4..start + 4 + size];
        let stored = u32::from_be_bytes(file[end - 4..end].try_into().expect("4 bytes"));
        let computed = CRC32.checksum(bitmap);
        if stored != computed {
            return Err(DvError::Checksum { stored, computed });
        }
        let dv = DeletionVector::from_bitmap_bytes(bitmap)?;
        self.check_cardinality(&dv)?;
        Ok(dv)
    }

    fn check_cardinality(&self, dv: &DeletionVector) -> Result<(), DvError> {
        if u64::try_from(self.cardinality).ok() != Some(dv.cardinality()) {
            return Err(DvError::Cardinality {
                in_log: self.cardinality,
                decoded: dv.cardinality(),
            });
        }
        Ok(())
    }
}

/// `[prefix/]deletion_vector_<uuid>.bin`: the path of a `u` DV file relative to the table root.
pub fn relative_path(prefix: &str, uuid: &Uuid) -> String {
    if prefix.is_empty() {
        format!("deletion_vector_{uuid}.bin")
    } else {
        format!("{prefix}/deletion_vector_{uuid}.bin")
    }
}

/// Builds one `.bin` DV file holding one or more DVs (e.g. those of one commit).
#[derive(Debug, Clone)]
pub struct DvFileBuilder {
    prefix: String,
    uuid: Uuid,
    bytes: Vec<u8>,
}

impl DvFileBuilder {
    /// A file named from `uuid`, in the table root (`prefix` empty) or in the folder `prefix`
    /// (Databricks' random prefixes are a few ASCII letters and digits; only those are allowed).
    pub fn new(uuid: Uuid, prefix: &str) -> Result<Self, DvError> {
        if !prefix.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(DvError::Path {
                path: prefix.to_owned(),
                message: "a DV file prefix must be ASCII letters and digits".into(),
            });
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            uuid,
            bytes: vec![FILE_FORMAT_VERSION],
        })
    }

    /// Appends a DV; returns its descriptor (`u`, with its offset in this file).
    pub fn push(&mut self, dv: &DeletionVector) -> Result<DeletionVectorDescriptor, DvError> {
        let bitmap = dv.to_bitmap_bytes();
        let size = i32::try_from(bitmap.len()).map_err(|_| DvError::TooLarge(bitmap.len()))?;
        let offset = i32::try_from(self.bytes.len())
            .ok()
            .filter(|o| o.checked_add(size).and_then(|e| e.checked_add(8)).is_some())
            .ok_or(DvError::TooLarge(self.bytes.len() + bitmap.len()))?;
        let out = &mut self.bytes;
        out.extend_from_slice(&(size as u32).to_be_bytes());
        out.write_all(&bitmap)
            .expect("writing to a Vec cannot fail");
        out.extend_from_slice(&CRC32.checksum(&bitmap).to_be_bytes());
        Ok(DeletionVectorDescriptor {
            storage_type: StorageType::Relative,
            path_or_inline_dv: format!("{}{}", self.prefix, z85::encode(self.uuid.as_bytes())),
            offset: Some(offset),
            size_in_bytes: size,
            cardinality: dv.cardinality() as i64,
        })
    }

    /// The file's path relative to the table root.
    pub fn relative_path(&self) -> String {
        relative_path(&self.prefix, &self.uuid)
    }

    /// Whether no DV was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.bytes.len() == 1
    }

    /// The file's bytes.
    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }
}
