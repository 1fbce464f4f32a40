//! The canonical change batch: one Arrow layout for both changefeed formats.
//!
//! A change batch holds the row's data columns (in file order, canonical types) followed by the
//! metadata columns below. Everything after decoding — key resolution, family merging, the Delta
//! engine — reads only this layout, never a format-specific one.

use std::sync::Arc;

use arrow_array::builder::{Decimal128Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::format::hlc::{HLC_DECIMAL_PRECISION, HLC_DECIMAL_SCALE, Hlc};

/// `c`, `u` or `d`, as Parquet's `__crdb__event_type` (JSON: `d` when `after` is null, `u` when
/// a non-null `before` is present, `c` otherwise); `b` for a row holding a change's `before`
/// ([`Op::Before`]).
pub const OP: &str = "__crdb_op";
/// The event's HLC (`updated`) as `DECIMAL(38,10)`: orders exactly like the HLC.
pub const UPDATED: &str = "__crdb_updated";
/// The row's MVCC timestamp (`mvcc_timestamp` option), when the changefeed writes it.
pub const MVCC: &str = "__crdb_mvcc_timestamp";
/// JSON text of the `key` array (JSON changefeeds; null for Parquet, whose keys are columns).
pub const KEY: &str = "__crdb_key";
/// Path of the object the row came from, relative to the changefeed root.
pub const SOURCE_FILE: &str = "__crdb_source_file";
/// 1-based line (NDJSON) or row (Parquet) number within that object.
pub const SOURCE_ROW: &str = "__crdb_source_row";

pub const META_COLUMNS: [&str; 6] = [OP, UPDATED, MVCC, KEY, SOURCE_FILE, SOURCE_ROW];

/// The prefix of every column name crdb-delta keeps for itself: the change-batch metadata above,
/// the Delta tables' metadata (`__crdb_hlc`, `__crdb_start_hlc`, … in [`crate::apply`]) and
/// CockroachDB's own Parquet meta columns (`__crdb__event_type`, …). A source column with such a
/// name would be taken for ours (a `__crdb_op` of `d` deleting its row) or silently replaced,
/// so the decoders refuse it ([`crate::format::decode::DecodeError::ReservedColumn`]). This is the one
/// place that decides; an escaping scheme for such names would start here.
pub const RESERVED_PREFIX: &str = "__crdb_";

/// Whether a column name is reserved by crdb-delta (see [`RESERVED_PREFIX`]).
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// Whether a column name belongs to the metadata (also CockroachDB's own `__crdb__` columns).
/// The decoders refuse data columns with reserved names, so this is exactly the metadata.
pub fn is_meta(name: &str) -> bool {
    is_reserved(name)
}

/// The kind of change, as CockroachDB reports it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Op {
    #[serde(rename = "c")]
    Create,
    #[serde(rename = "u")]
    Update,
    #[serde(rename = "d")]
    Delete,
    /// Not a change: the row's value before the change of the same key and HLC (the `diff`
    /// option's `before`), emitted only under [`crate::format::decode::DecodeOptions::before`].
    /// scd2 closes a version from it instead of reading the table's row.
    #[serde(rename = "b")]
    Before,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Self::Create => "c",
            Self::Update => "u",
            Self::Delete => "d",
            Self::Before => "b",
        }
    }

    pub fn from_code(s: &str) -> Option<Self> {
        match s {
            "c" => Some(Self::Create),
            "u" => Some(Self::Update),
            "d" => Some(Self::Delete),
            "b" => Some(Self::Before),
            _ => None,
        }
    }
}

fn hlc_type() -> DataType {
    DataType::Decimal128(HLC_DECIMAL_PRECISION, HLC_DECIMAL_SCALE)
}

/// The metadata fields appended after the data columns.
pub fn meta_fields() -> Vec<Field> {
    vec![
        Field::new(OP, DataType::Utf8, false),
        Field::new(UPDATED, hlc_type(), false),
        Field::new(MVCC, hlc_type(), true),
        Field::new(KEY, DataType::Utf8, true),
        Field::new(SOURCE_FILE, DataType::Utf8, false),
        Field::new(SOURCE_ROW, DataType::Int64, false),
    ]
}

/// Collects the metadata columns row by row.
pub struct MetaBuilder {
    op: StringBuilder,
    updated: Decimal128Builder,
    mvcc: Decimal128Builder,
    key: StringBuilder,
    file: StringBuilder,
    row: Int64Builder,
}

impl MetaBuilder {
    pub fn new(capacity: usize) -> Self {
        Self {
            op: StringBuilder::with_capacity(capacity, capacity),
            updated: Decimal128Builder::with_capacity(capacity).with_data_type(hlc_type()),
            mvcc: Decimal128Builder::with_capacity(capacity).with_data_type(hlc_type()),
            key: StringBuilder::new(),
            file: StringBuilder::new(),
            row: Int64Builder::with_capacity(capacity),
        }
    }

    pub fn append(
        &mut self,
        op: Op,
        updated: Hlc,
        mvcc: Option<Hlc>,
        key: Option<&str>,
        file: &str,
        row: u64,
    ) {
        self.op.append_value(op.code());
        self.updated.append_value(updated.to_decimal_i128());
        self.mvcc.append_option(mvcc.map(Hlc::to_decimal_i128));
        self.key.append_option(key);
        self.file.append_value(file);
        self.row.append_value(row as i64);
    }

    pub fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.op.finish()),
            Arc::new(self.updated.finish()),
            Arc::new(self.mvcc.finish()),
            Arc::new(self.key.finish()),
            Arc::new(self.file.finish()),
            Arc::new(self.row.finish()),
        ]
    }
}

/// Assembles a change batch from data columns and finished metadata columns.
pub fn assemble(
    data: Vec<(Field, ArrayRef)>,
    meta: Vec<ArrayRef>,
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let (mut fields, mut columns): (Vec<Field>, Vec<ArrayRef>) = data.into_iter().unzip();
    fields.extend(meta_fields());
    columns.extend(meta);
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    RecordBatch::try_new(schema, columns)
}
