//! Parquet data files (format spec §4, CockroachDB 23.2+).
//!
//! CockroachDB writes DECIMAL as ASCII text under a DECIMAL annotation (precision up to
//! 2147483647). A standard reader either rejects such a schema or reads the text bytes as a
//! two's-complement integer, silently wrong. So the file's schema is rewritten before Arrow sees
//! it: those columns become plain strings and are parsed as decimal text here.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow_schema::Field;
use bytes::Bytes;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder, RowSelection,
};
use parquet::basic::{ConvertedType, LogicalType, TimeUnit, Type as PhysicalType};
use parquet::file::metadata::{FileMetaData, ParquetMetaData, ParquetMetaDataReader};
use parquet::schema::types::{SchemaDescriptor, Type, TypePtr};

use super::json_fields::Members;
use super::{BatchStream, DecodeError, DecodeOptions, SliceFilter, SliceRows};
use crate::format::batch::{self, MetaBuilder, Op};
use crate::format::column;
use crate::format::hlc::Hlc;
use crate::format::keys::KeyEvidence;
use crate::format::types::{ColumnType, parquet_decimal_type};

const EVENT_TYPE: &str = "__crdb__event_type";
const UPDATED: &str = "__crdb__updated";
const MVCC: &str = "__crdb__mvcc_timestamp";
/// The previous row (`diff`), JSON text: read only under [`DecodeOptions::before`].
const BEFORE: &str = "__crdb__before";

/// Streams a Parquet changefeed file as change batches, one row group slice at a time.
pub struct ParquetDecoder {
    file: String,
    reader: ParquetRecordBatchReader,
    /// (index in the Arrow batch, name, canonical type) of each data column.
    data: Vec<(usize, String, ColumnType)>,
    op: usize,
    updated: Option<usize>,
    mvcc: Option<usize>,
    /// The `before` column, read under [`DecodeOptions::before`]; and, per data column,
    /// whether it is a key column (a before row takes the key from its change's row).
    before: Option<(usize, Vec<bool>)>,
    rows: u64,
    types: BTreeMap<String, ColumnType>,
    evidence: KeyEvidence,
    /// Uncompressed size of the file's row groups.
    input_bytes: u64,
    /// Under a [`SliceFilter`]: the file row (0-based) of each row read, in order.
    selected: Option<Vec<u32>>,
    skipped: u64,
    /// Under a [`SliceFilter`]: each row's slice ([`BatchStream::slice_rows`]).
    slices: Option<Arc<SliceRows>>,
    done: bool,
}

/// The file row (1-based) of the `n`th row read (0-based).
fn file_row(selected: &Option<Vec<u32>>, n: u64) -> u64 {
    let at = usize::try_from(n).ok();
    selected
        .as_ref()
        .and_then(|s| s.get(at?))
        .map_or(n, |&r| u64::from(r))
        + 1
}

impl ParquetDecoder {
    /// Opens a reader whose DECIMAL/ENUM text columns read as strings; also returns the file's
    /// own metadata (with the original annotations).
    pub(crate) fn open(
        file: &str,
        bytes: Bytes,
        batch_size: usize,
    ) -> Result<(ParquetMetaData, ParquetRecordBatchReaderBuilder<Bytes>), DecodeError> {
        let perr = |message: String| DecodeError::Parquet {
            file: file.to_owned(),
            message,
        };
        let metadata = ParquetMetaDataReader::new()
            .parse_and_finish(&bytes)
            .map_err(|e| perr(e.to_string()))?;
        let rewritten = Arc::new(text_decimals(&metadata).map_err(|e| perr(e.to_string()))?);
        let arrow_meta = ArrowReaderMetadata::try_new(rewritten, ArrowReaderOptions::new())
            .map_err(|e| perr(e.to_string()))?;
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes, arrow_meta)
            .with_batch_size(batch_size);
        Ok((metadata, builder))
    }

    pub fn try_new(file: &str, bytes: Bytes, opts: &DecodeOptions) -> Result<Self, DecodeError> {
        let perr = |message: String| DecodeError::Parquet {
            file: file.to_owned(),
            message,
        };
        let (metadata, mut builder) = Self::open(file, bytes.clone(), opts.batch_size.max(1))?;
        let input_bytes = metadata
            .row_groups()
            .iter()
            .map(|rg| u64::try_from(rg.total_byte_size()).unwrap_or(0))
            .sum();
        let fields = metadata
            .file_metadata()
            .schema_descr()
            .root_schema()
            .get_fields()
            .to_vec();

        let mut data = Vec::new();
        let (mut op, mut updated, mut mvcc, mut before) = (None, None, None, None);
        let mut types = BTreeMap::new();
        for (i, f) in fields.iter().enumerate() {
            let name = f.name();
            match name {
                EVENT_TYPE => op = Some(i),
                UPDATED => updated = Some(i),
                MVCC => mvcc = Some(i),
                BEFORE => before = opts.before.then_some(i),
                // Any other reserved name is a source column (or a CockroachDB meta column this
                // decoder does not know): refused rather than confused with ours or dropped.
                // Every row carries it; the first is named.
                n if batch::is_reserved(n) => {
                    return Err(DecodeError::ReservedColumn {
                        file: file.to_owned(),
                        at: "row 1".into(),
                        column: n.to_owned(),
                    });
                }
                _ => {
                    let ty = match opts.columns.get(name) {
                        Some(t) => t.clone(),
                        None => file_column_type(f).map_err(|ty| DecodeError::UnknownType {
                            file: file.to_owned(),
                            column: name.to_owned(),
                            ty: ty.0,
                        })?,
                    };
                    types.insert(name.to_owned(), ty.clone());
                    data.push((i, name.to_owned(), ty));
                }
            }
        }
        let op = op.ok_or_else(|| DecodeError::Invalid {
            file: file.to_owned(),
            message: format!(
                "no `{EVENT_TYPE}` column: not a CockroachDB 23.2+ Parquet changefeed file"
            ),
        })?;
        if updated.is_none() && mvcc.is_none() {
            return Err(DecodeError::Invalid {
                file: file.to_owned(),
                message: format!(
                    "no `{UPDATED}` column: create the changefeed WITH updated, resolved"
                ),
            });
        }

        let mut selected = None;
        let mut skipped = 0;
        let mut found_slices = None;
        if let (Some(filter), Some(names)) = (opts.slice, opts.primary_key.as_deref()) {
            let key: Option<Vec<(usize, &ColumnType)>> = names
                .iter()
                .map(|k| {
                    data.iter()
                        .find(|(_, n, _)| n == k)
                        .map(|(i, _, t)| (*i, t))
                })
                .collect();
            // The key's names and the types its values are converted to: what slices hash.
            let named: Vec<(String, ColumnType)> = names
                .iter()
                .zip(key.iter().flatten())
                .map(|(n, &(_, t))| (n.clone(), t.clone()))
                .collect();
            let rows = usize::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
            // An earlier pass's slices of this file, or its key and timestamp columns read by a
            // second reader over the same footer (already parsed and rewritten).
            let known = opts
                .slice_rows
                .clone()
                .filter(|s| key.is_some() && s.fits(&filter, &named, rows));
            let slices = match known {
                Some(known) => Some(known),
                None => {
                    let meta = ArrowReaderMetadata::try_new(
                        builder.metadata().clone(),
                        Default::default(),
                    )
                    .map_err(|e| perr(e.to_string()))?;
                    let keys_builder =
                        ParquetRecordBatchReaderBuilder::new_with_metadata(bytes, meta)
                            .with_batch_size(opts.batch_size.max(1));
                    key.and_then(|key| slice_rows(keys_builder, &key, updated, mvcc, filter, named))
                        .map(Arc::new)
                }
            };
            found_slices = slices.clone();
            if let Some(keep) = slices.map(|s| s.keep(filter.index)) {
                // Row numbers fit u32 in any real file; past that, no filter.
                let rows: Option<Vec<u32>> = keep
                    .iter()
                    .enumerate()
                    .filter(|(_, k)| **k)
                    .map(|(r, _)| u32::try_from(r).ok())
                    .collect();
                if let Some(rows) = rows.filter(|r| r.len() < keep.len()) {
                    skipped = (keep.len() - rows.len()) as u64;
                    builder = builder.with_row_selection(RowSelection::from_filters(&[
                        BooleanArray::from(keep),
                    ]));
                    selected = Some(rows);
                }
            }
        }

        let reader = builder.build().map_err(|e| perr(e.to_string()))?;
        let key = opts.primary_key.as_deref().unwrap_or_default();
        let before = before.map(|i| (i, data.iter().map(|(_, n, _)| key.contains(n)).collect()));
        let mut evidence = KeyEvidence::default();
        evidence.observe_columns(&data.iter().map(|(_, n, _)| n.clone()).collect::<Vec<_>>());
        Ok(Self {
            file: file.to_owned(),
            reader,
            data,
            op,
            updated,
            mvcc,
            before,
            rows: 0,
            types,
            evidence,
            input_bytes,
            selected,
            skipped,
            slices: found_slices,
            done: false,
        })
    }

    fn decode(&mut self, batch: RecordBatch) -> Result<RecordBatch, DecodeError> {
        let n = batch.num_rows();
        let (rows, selected) = (self.rows, &self.selected);
        let row_of = |i: usize| file_row(selected, rows + i as u64);
        let value_err = |column: &str, i: usize, message: String| DecodeError::Value {
            file: self.file.clone(),
            at: format!("row {}", row_of(i)),
            column: column.to_owned(),
            message,
        };
        let mut data = Vec::with_capacity(self.data.len());
        for (idx, name, ty) in &self.data {
            let array = column::convert(batch.column(*idx), ty)
                .map_err(|(i, m)| value_err(name, i, m.to_string()))?;
            data.push((Field::new(name, ty.arrow_type(), true), array));
        }
        let text = |idx: Option<usize>, name: &str| -> Result<Option<ArrayRef>, DecodeError> {
            match idx {
                None => Ok(None),
                Some(i) => {
                    let a = batch.column(i);
                    if a.data_type() != &arrow_schema::DataType::Utf8 {
                        return Err(DecodeError::Invalid {
                            file: self.file.clone(),
                            message: format!("`{name}` is {} instead of a string", a.data_type()),
                        });
                    }
                    Ok(Some(a.clone()))
                }
            }
        };
        let ops = text(Some(self.op), EVENT_TYPE)?.expect("event type column");
        let ops = ops.as_string::<i32>();
        let updated = text(self.updated, UPDATED)?;
        let mvcc = text(self.mvcc, MVCC)?;
        let hlc_at =
            |a: &Option<ArrayRef>, name: &str, i: usize| -> Result<Option<Hlc>, DecodeError> {
                match a {
                    Some(a) if a.is_valid(i) => Hlc::parse_decimal(a.as_string::<i32>().value(i))
                        .map(Some)
                        .map_err(|e| value_err(name, i, e.to_string())),
                    _ => Ok(None),
                }
            };
        let mut meta = MetaBuilder::new(n);
        let mut deletes_seen = 0;
        for i in 0..n {
            let op = ops
                .is_valid(i)
                .then(|| Op::from_code(ops.value(i)))
                .flatten()
                .filter(|op| *op != Op::Before)
                .ok_or_else(|| value_err(EVENT_TYPE, i, "expected `c`, `u` or `d`".into()))?;
            let mvcc_ts = hlc_at(&mvcc, MVCC, i)?;
            let updated_ts = hlc_at(&updated, UPDATED, i)?
                .or(mvcc_ts)
                .ok_or_else(|| value_err(UPDATED, i, "missing timestamp".into()))?;
            if op == Op::Delete && deletes_seen < 16 {
                deletes_seen += 1;
                let non_null = data
                    .iter()
                    .filter(|(_, a)| a.is_valid(i))
                    .map(|(f, _)| f.name().clone())
                    .collect();
                self.evidence.observe_delete(non_null);
            }
            meta.append(op, updated_ts, mvcc_ts, None, &self.file, row_of(i));
        }
        if let Some((idx, is_key)) = &self.before {
            let befores = text(Some(*idx), BEFORE)?.expect("before column");
            let rows: Vec<usize> = (0..n).filter(|&i| befores.is_valid(i)).collect();
            if !rows.is_empty() {
                data =
                    self.with_befores(data, befores.as_string::<i32>(), &rows, is_key, &row_of)?;
                for &i in &rows {
                    let mvcc_ts = hlc_at(&mvcc, MVCC, i)?;
                    let updated_ts = hlc_at(&updated, UPDATED, i)?.or(mvcc_ts);
                    let updated_ts = updated_ts.expect("checked for its change's row");
                    meta.append(Op::Before, updated_ts, mvcc_ts, None, &self.file, row_of(i));
                }
            }
        }
        self.rows += n as u64;
        batch::assemble(data, meta.finish()).map_err(|e| DecodeError::Invalid {
            file: self.file.clone(),
            message: e.to_string(),
        })
    }
}

impl ParquetDecoder {
    /// The data columns with a row appended for each of `rows`' `before` ([`Op::Before`]):
    /// its members decoded as an NDJSON `after` is, into the columns' types; the key columns
    /// taken from the change's own row.
    fn with_befores(
        &self,
        data: Vec<(Field, ArrayRef)>,
        befores: &arrow_array::StringArray,
        rows: &[usize],
        is_key: &[bool],
        row_of: &dyn Fn(usize) -> u64,
    ) -> Result<Vec<(Field, ArrayRef)>, DecodeError> {
        let objects = rows
            .iter()
            .map(|&i| {
                super::json_scan::object(befores.value(i)).map_err(|e| DecodeError::Value {
                    file: self.file.clone(),
                    at: format!("row {}", row_of(i)),
                    column: BEFORE.to_owned(),
                    message: format!("not a JSON object: {e}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let take = arrow_array::UInt32Array::from_iter_values(rows.iter().map(|&i| i as u32));
        let arrow_err = |e: arrow_schema::ArrowError| DecodeError::Invalid {
            file: self.file.clone(),
            message: e.to_string(),
        };
        let mut out = Vec::with_capacity(data.len());
        for ((field, main), ((_, name, ty), &key)) in
            data.into_iter().zip(self.data.iter().zip(is_key))
        {
            let added = if key {
                arrow_select::take::take(&main, &take, None).map_err(arrow_err)?
            } else {
                let mut b = column::ColumnBuilder::with_bytes(ty, rows.len(), 0);
                for (object, &i) in objects.iter().zip(rows) {
                    let bad = |message: String| DecodeError::Value {
                        file: self.file.clone(),
                        at: format!("row {} (`{BEFORE}`)", row_of(i)),
                        column: name.clone(),
                        message,
                    };
                    match object.field(name) {
                        Some(raw) if raw.depth() > crate::format::values::MAX_JSON_DEPTH => {
                            return Err(
                                bad(crate::format::values::ValueError::TooDeep.to_string()),
                            );
                        }
                        Some(raw) => b.append_json(raw.get()).map_err(|e| bad(e.to_string()))?,
                        None => b.append_null(),
                    }
                }
                b.finish()
            };
            let joined = arrow_select::concat::concat(&[main.as_ref(), added.as_ref()])
                .map_err(arrow_err)?;
            out.push((field, joined));
        }
        Ok(out)
    }
}

impl Iterator for ParquetDecoder {
    type Item = Result<RecordBatch, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let result = match self.reader.next()? {
            Ok(b) => self.decode(b),
            Err(e) => Err(DecodeError::Parquet {
                file: self.file.clone(),
                message: format!(
                    "after row {}: {e}",
                    self.rows
                        .checked_sub(1)
                        .map_or(0, |last| file_row(&self.selected, last))
                ),
            }),
        };
        if result.is_err() {
            self.done = true;
        }
        Some(result)
    }
}

impl BatchStream for ParquetDecoder {
    fn key_evidence(&self) -> &KeyEvidence {
        &self.evidence
    }
    fn column_types(&self) -> &BTreeMap<String, ColumnType> {
        &self.types
    }
    fn input_bytes(&self) -> u64 {
        self.input_bytes
    }
    fn rows_skipped(&self) -> u64 {
        self.skipped
    }
    fn slice_rows(&self) -> Option<Arc<SliceRows>> {
        self.slices.clone()
    }
}

/// Each row's slice under `filter` (see [`SliceFilter`]), from the file's key and timestamp
/// columns alone; `None` (read every row) when one does not convert or parse (the full decode
/// then names the row), or when the slices do not fit [`SliceRows`].
fn slice_rows(
    builder: ParquetRecordBatchReaderBuilder<Bytes>,
    key: &[(usize, &ColumnType)],
    updated: Option<usize>,
    mvcc: Option<usize>,
    filter: SliceFilter,
    named: Vec<(String, ColumnType)>,
) -> Option<SliceRows> {
    let mut slices = SliceRows::new(filter, named)?;
    let mut roots: Vec<usize> = key.iter().map(|(i, _)| *i).collect();
    roots.extend(updated.iter().chain(mvcc.iter()));
    let schema = builder.parquet_schema();
    let names: Vec<String> = roots
        .iter()
        .map(|&i| schema.root_schema().get_fields()[i].name().to_owned())
        .collect();
    let mask = ProjectionMask::roots(schema, roots.iter().copied());
    let reader = builder.with_projection(mask).build().ok()?;
    let (lo, hi) = (
        filter.lo.map(Hlc::to_decimal_i128),
        filter.hi.to_decimal_i128(),
    );
    // The initial scan's rows share one timestamp: parsed once.
    let mut last: Option<(String, i128)> = None;
    for batch in reader {
        let batch = batch.ok()?;
        let keys: Vec<ArrayRef> = key
            .iter()
            .zip(&names)
            .map(|((_, ty), name)| column::convert(batch.column_by_name(name)?, ty).ok())
            .collect::<Option<_>>()?;
        let text = |at: usize| {
            let a = batch.column_by_name(&names[at])?;
            a.as_string_opt::<i32>().cloned()
        };
        let mut stamps = Vec::new();
        let mut at = key.len();
        if updated.is_some() {
            stamps.push(text(at)?);
            at += 1;
        }
        if mvcc.is_some() {
            stamps.push(text(at)?);
        }
        for r in 0..batch.num_rows() {
            let stamp = stamps.iter().find(|a| a.is_valid(r))?.value(r);
            let ts = match &last {
                Some((s, ts)) if s == stamp => *ts,
                _ => {
                    let ts = Hlc::parse_decimal(stamp).ok()?.to_decimal_i128();
                    last = Some((stamp.to_owned(), ts));
                    ts
                }
            };
            let inside = lo.is_none_or(|lo| ts > lo) && ts <= hi;
            slices.push(inside.then(|| crate::apply::slice_of(&keys, r, filter.of)));
        }
    }
    Some(slices)
}

/// A Parquet column type CockroachDB does not write (format spec §4.4), described.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnknownParquetType(pub String);

/// The canonical type of a Parquet column as CockroachDB writes it (format spec §4.4).
pub fn file_column_type(t: &Type) -> Result<ColumnType, UnknownParquetType> {
    let info = t.get_basic_info();
    if t.is_group() {
        let is_list = matches!(info.logical_type_ref(), Some(LogicalType::List))
            || info.converted_type() == ConvertedType::LIST;
        let fields = t.get_fields();
        if is_list && fields.len() == 1 {
            let repeated = &fields[0];
            let element = match repeated.is_group() {
                true if repeated.get_fields().len() == 1 => &repeated.get_fields()[0],
                true => return Err(UnknownParquetType("LIST of tuples".into())),
                false => repeated,
            };
            return Ok(ColumnType::List(Box::new(file_column_type(element)?)));
        }
        return Err(UnknownParquetType(format!(
            "group (tuple) with {} fields",
            fields.len()
        )));
    }
    let physical = t.get_physical_type();
    let logical = info.logical_type_ref();
    let converted = info.converted_type();
    let unknown = || UnknownParquetType(format!("{physical} ({logical:?}, {converted})"));
    Ok(match physical {
        PhysicalType::BOOLEAN => ColumnType::Boolean,
        PhysicalType::INT32 => match logical {
            None | Some(LogicalType::Integer(_)) => ColumnType::Int32,
            Some(LogicalType::Date) => ColumnType::Date,
            _ => return Err(unknown()),
        },
        PhysicalType::INT64 => match logical {
            None | Some(LogicalType::Integer(_)) => ColumnType::Int64,
            Some(LogicalType::Time(t)) if matches!(t.unit, TimeUnit::MICROS | TimeUnit::NANOS) => {
                ColumnType::Text
            }
            _ => return Err(unknown()),
        },
        PhysicalType::FLOAT => ColumnType::Float32,
        PhysicalType::DOUBLE => ColumnType::Float64,
        PhysicalType::BYTE_ARRAY => match (logical, converted) {
            (Some(LogicalType::Decimal(d)), _) => parquet_decimal_type(d.precision, d.scale),
            (None, ConvertedType::DECIMAL) => {
                parquet_decimal_type(t.get_precision(), t.get_scale())
            }
            (Some(LogicalType::String | LogicalType::Enum), _)
            | (None, ConvertedType::UTF8 | ConvertedType::ENUM) => ColumnType::Text,
            (Some(LogicalType::Json), _) | (None, ConvertedType::JSON) => ColumnType::Json,
            (None, ConvertedType::NONE) => ColumnType::Binary,
            _ => return Err(unknown()),
        },
        PhysicalType::FIXED_LEN_BYTE_ARRAY
            if matches!(logical, Some(LogicalType::Uuid)) && type_length(t) == 16 =>
        {
            ColumnType::Text
        }
        _ => return Err(unknown()),
    })
}

fn type_length(t: &Type) -> i32 {
    match t {
        Type::PrimitiveType { type_length, .. } => *type_length,
        Type::GroupType { .. } => -1,
    }
}

/// A copy of the metadata whose text-carrying BYTE_ARRAY columns (DECIMAL, ENUM) are annotated
/// as plain strings, so Arrow reads their bytes unchanged.
fn text_decimals(metadata: &ParquetMetaData) -> parquet::errors::Result<ParquetMetaData> {
    let fm = metadata.file_metadata();
    let root = fm.schema_descr().root_schema_ptr();
    let new_root = rewrite(&root)?;
    if Arc::ptr_eq(&root, &new_root) {
        return Ok(metadata.clone());
    }
    let file_metadata = FileMetaData::new(
        fm.version(),
        fm.num_rows(),
        fm.created_by().map(str::to_owned),
        fm.key_value_metadata().cloned(),
        Arc::new(SchemaDescriptor::new(new_root)),
        fm.column_orders().cloned(),
    );
    Ok(ParquetMetaData::new(
        file_metadata,
        metadata.row_groups().to_vec(),
    ))
}

fn rewrite(t: &TypePtr) -> parquet::errors::Result<TypePtr> {
    let info = t.get_basic_info();
    if t.is_group() {
        let mut changed = false;
        let mut fields = Vec::with_capacity(t.get_fields().len());
        for f in t.get_fields() {
            let nf = rewrite(f)?;
            changed |= !Arc::ptr_eq(f, &nf);
            fields.push(nf);
        }
        if !changed {
            return Ok(t.clone());
        }
        let mut b = Type::group_type_builder(info.name())
            .with_fields(fields)
            .with_logical_type(info.logical_type_ref().cloned())
            .with_converted_type(info.converted_type())
            .with_id(info.has_id().then(|| info.id()));
        if info.has_repetition() {
            b = b.with_repetition(info.repetition());
        }
        return Ok(Arc::new(b.build()?));
    }
    let text = t.get_physical_type() == PhysicalType::BYTE_ARRAY
        && (matches!(
            info.logical_type_ref(),
            Some(LogicalType::Decimal(_) | LogicalType::Enum)
        ) || matches!(
            info.converted_type(),
            ConvertedType::DECIMAL | ConvertedType::ENUM
        ));
    if !text {
        return Ok(t.clone());
    }
    let b = Type::primitive_type_builder(info.name(), PhysicalType::BYTE_ARRAY)
        .with_repetition(info.repetition())
        .with_logical_type(Some(LogicalType::String))
        .with_id(info.has_id().then(|| info.id()));
    Ok(Arc::new(b.build()?))
}
