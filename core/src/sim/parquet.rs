//! Writes Parquet files the way CockroachDB 23.2+ does (format spec §4): every column OPTIONAL,
//! DECIMAL as ASCII text under a DECIMAL annotation (scale 0 annotated as scale = precision,
//! unconstrained as precision 2147483647), dates and timestamps as text, UUID as 16 bytes, TIME
//! as microseconds, arrays as 3-level lists, `created_by cockroachdb`, no key-value metadata.

use std::sync::Arc;

use parquet::basic::{
    Compression as PqCompression, GzipLevel, LogicalType, Repetition, TimeUnit,
    Type as PhysicalType, ZstdLevel,
};
use parquet::data_type::{
    BoolType, ByteArray, ByteArrayType, DoubleType, FixedLenByteArray, FixedLenByteArrayType,
    FloatType, Int32Type, Int64Type,
};
use parquet::file::properties::{WriterProperties, WriterVersion};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::{Type, TypePtr};

use super::model::{Datum, TableDef};
use super::{Message, SimOptions};
use crate::format::names::Compression;
use crate::format::types::SqlType;

/// Unconstrained DECIMAL's annotated precision (format spec §4.4).
const UNCONSTRAINED: i32 = 2_147_483_647;

fn leaf(name: &str, sql: &SqlType, repetition: Repetition) -> parquet::errors::Result<TypePtr> {
    let (physical, logical, length) = match sql {
        SqlType::Bool => (PhysicalType::BOOLEAN, None, -1),
        SqlType::Int2 | SqlType::Int4 | SqlType::Oid => (PhysicalType::INT32, None, -1),
        SqlType::Int8 => (
            PhysicalType::INT64,
            Some(LogicalType::integer(64, true)),
            -1,
        ),
        SqlType::Float4 => (PhysicalType::FLOAT, None, -1),
        SqlType::Float8 => (PhysicalType::DOUBLE, None, -1),
        SqlType::Decimal { precision, scale } => {
            let (p, s) = match precision {
                None => (UNCONSTRAINED, UNCONSTRAINED),
                Some(p) if *scale == 0 => (*p as i32, *p as i32),
                Some(p) => (*p as i32, *scale as i32),
            };
            let t = Type::primitive_type_builder(name, PhysicalType::BYTE_ARRAY)
                .with_repetition(repetition)
                .with_logical_type(Some(LogicalType::decimal(s, p)))
                .with_precision(p)
                .with_scale(s)
                .build()?;
            return Ok(Arc::new(t));
        }
        SqlType::Enum => (PhysicalType::BYTE_ARRAY, Some(LogicalType::Enum), -1),
        SqlType::Uuid => (
            PhysicalType::FIXED_LEN_BYTE_ARRAY,
            Some(LogicalType::Uuid),
            16,
        ),
        SqlType::Bytes | SqlType::Bit => (PhysicalType::BYTE_ARRAY, None, -1),
        SqlType::Time => (
            PhysicalType::INT64,
            Some(LogicalType::time(true, TimeUnit::MICROS)),
            -1,
        ),
        SqlType::Jsonb => (PhysicalType::BYTE_ARRAY, Some(LogicalType::Json), -1),
        SqlType::String
        | SqlType::Date
        | SqlType::Timestamp
        | SqlType::TimestampTz
        | SqlType::Interval
        | SqlType::Inet
        | SqlType::TimeTz => (PhysicalType::BYTE_ARRAY, Some(LogicalType::String), -1),
        SqlType::Array(item) => {
            let element = leaf("element", item, Repetition::OPTIONAL)?;
            let list = Type::group_type_builder("list")
                .with_repetition(Repetition::REPEATED)
                .with_fields(vec![element])
                .build()?;
            let group = Type::group_type_builder(name)
                .with_repetition(repetition)
                .with_logical_type(Some(LogicalType::List))
                .with_fields(vec![Arc::new(list)])
                .build()?;
            return Ok(Arc::new(group));
        }
    };
    let mut b = Type::primitive_type_builder(name, physical)
        .with_repetition(repetition)
        .with_logical_type(logical);
    if length > 0 {
        b = b.with_length(length);
    }
    Ok(Arc::new(b.build()?))
}

/// Values and levels of one leaf column.
enum Leaf {
    Bool(Vec<bool>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<ByteArray>),
    Fixed(Vec<FixedLenByteArray>),
}

struct LeafData {
    values: Leaf,
    def: Vec<i16>,
    rep: Option<Vec<i16>>,
}

fn leaf_values(sql: &SqlType) -> Leaf {
    match sql {
        SqlType::Bool => Leaf::Bool(vec![]),
        SqlType::Int2 | SqlType::Int4 | SqlType::Oid => Leaf::I32(vec![]),
        SqlType::Int8 | SqlType::Time => Leaf::I64(vec![]),
        SqlType::Float4 => Leaf::F32(vec![]),
        SqlType::Float8 => Leaf::F64(vec![]),
        SqlType::Uuid => Leaf::Fixed(vec![]),
        SqlType::Array(item) => leaf_values(item),
        _ => Leaf::Bytes(vec![]),
    }
}

fn push(values: &mut Leaf, d: &Datum, sql: &SqlType) {
    match (values, d) {
        (Leaf::Bool(v), Datum::Bool(b)) => v.push(*b),
        (Leaf::I32(v), Datum::Int(i)) => v.push(*i as i32),
        (Leaf::I64(v), Datum::Int(i) | Datum::Time(i)) => v.push(*i),
        (Leaf::F32(v), Datum::Float(f)) => v.push(*f as f32),
        (Leaf::F64(v), Datum::Float(f)) => v.push(*f),
        (Leaf::Fixed(v), Datum::Uuid(u)) => v.push(FixedLenByteArray::from(u.to_vec())),
        (Leaf::Bytes(v), Datum::Bytes(b)) => v.push(ByteArray::from(b.clone())),
        (Leaf::Bytes(v), d) => v.push(ByteArray::from(d.parquet_text(sql).into_bytes())),
        (_, d) => panic!("simulator bug: {d:?} in a {sql} column"),
    }
}

fn column_data(sql: &SqlType, cells: impl Iterator<Item = Datum>) -> LeafData {
    let mut values = leaf_values(sql);
    let mut def = Vec::new();
    match sql {
        SqlType::Array(item) => {
            let mut rep = Vec::new();
            for cell in cells {
                match cell {
                    Datum::Array(items) if !items.is_empty() => {
                        for (i, d) in items.iter().enumerate() {
                            rep.push(if i == 0 { 0 } else { 1 });
                            if *d == Datum::Null {
                                def.push(2);
                            } else {
                                def.push(3);
                                push(&mut values, d, item);
                            }
                        }
                    }
                    Datum::Array(_) => {
                        rep.push(0);
                        def.push(1);
                    }
                    _ => {
                        rep.push(0);
                        def.push(0);
                    }
                }
            }
            LeafData {
                values,
                def,
                rep: Some(rep),
            }
        }
        _ => {
            for cell in cells {
                if cell == Datum::Null {
                    def.push(0);
                } else {
                    def.push(1);
                    push(&mut values, &cell, sql);
                }
            }
            LeafData {
                values,
                def,
                rep: None,
            }
        }
    }
}

/// Encodes one Parquet data file of a topic: the key columns plus the family's columns (all
/// columns for a table without families), then the `__crdb__` metadata columns.
pub fn encode(
    table: &TableDef,
    columns: &[usize],
    messages: &[Message],
    opts: &SimOptions,
) -> parquet::errors::Result<Vec<u8>> {
    let mut fields = Vec::new();
    for &c in columns {
        fields.push(leaf(
            &table.columns[c].name,
            &table.columns[c].sql,
            Repetition::OPTIONAL,
        )?);
    }
    let text = SqlType::String;
    fields.push(leaf("__crdb__event_type", &text, Repetition::OPTIONAL)?);
    fields.push(leaf("__crdb__updated", &text, Repetition::OPTIONAL)?);
    if opts.mvcc_timestamp {
        fields.push(leaf("__crdb__mvcc_timestamp", &text, Repetition::OPTIONAL)?);
    }
    // The previous row as a JSONB object (`diff`), NULL for none: written last, as
    // CockroachDB's `populateDatums` does.
    if opts.diff {
        fields.push(leaf(
            "__crdb__before",
            &SqlType::Jsonb,
            Repetition::OPTIONAL,
        )?);
    }
    let schema = Arc::new(
        Type::group_type_builder("schema")
            .with_fields(fields)
            .build()?,
    );
    let compression = match opts.compression {
        Compression::None => PqCompression::UNCOMPRESSED,
        Compression::Gzip => PqCompression::GZIP(GzipLevel::default()),
        Compression::Zstd => PqCompression::ZSTD(ZstdLevel::default()),
    };
    let props = WriterProperties::builder()
        .set_created_by("cockroachdb".into())
        .set_writer_version(WriterVersion::PARQUET_2_0)
        .set_compression(compression)
        .build();
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, Arc::new(props))?;

    // The sink starts a new row group whenever ~1 MiB is buffered (format spec §4.5).
    let row_bytes = messages
        .first()
        .map(|m| m.approx_bytes())
        .unwrap_or(64)
        .max(16);
    let per_group = ((1usize << 20) / row_bytes).max(1);
    for group in messages.chunks(per_group) {
        let mut rg = writer.next_row_group()?;
        let mut leaves: Vec<LeafData> = columns
            .iter()
            .map(|&c| {
                let sql = &table.columns[c].sql;
                let deleted_non_key = |m: &Message| {
                    m.op_is_delete() && !table.primary_key.contains(&table.columns[c].name)
                };
                column_data(
                    sql,
                    group.iter().map(|m| {
                        if deleted_non_key(m) {
                            Datum::Null
                        } else {
                            m.row[c].clone()
                        }
                    }),
                )
            })
            .collect();
        let meta = |f: &dyn Fn(&Message) -> String| {
            column_data(&text, group.iter().map(|m| Datum::Text(f(m))))
        };
        leaves.push(meta(&|m| m.op_code().to_owned()));
        leaves.push(meta(&|m| m.updated.to_string()));
        if opts.mvcc_timestamp {
            leaves.push(meta(&|m| m.mvcc.to_string()));
        }
        if opts.diff {
            leaves.push(column_data(
                &SqlType::Jsonb,
                group
                    .iter()
                    .map(|m| m.before_json().map_or(Datum::Null, Datum::Json)),
            ));
        }
        for data in leaves {
            let mut col = rg.next_column()?.expect("a writer per leaf");
            let (def, rep) = (Some(data.def.as_slice()), data.rep.as_deref());
            match &data.values {
                Leaf::Bool(v) => col.typed::<BoolType>().write_batch(v, def, rep)?,
                Leaf::I32(v) => col.typed::<Int32Type>().write_batch(v, def, rep)?,
                Leaf::I64(v) => col.typed::<Int64Type>().write_batch(v, def, rep)?,
                Leaf::F32(v) => col.typed::<FloatType>().write_batch(v, def, rep)?,
                Leaf::F64(v) => col.typed::<DoubleType>().write_batch(v, def, rep)?,
                Leaf::Bytes(v) => col.typed::<ByteArrayType>().write_batch(v, def, rep)?,
                Leaf::Fixed(v) => col
                    .typed::<FixedLenByteArrayType>()
                    .write_batch(v, def, rep)?,
            };
            col.close()?;
        }
        rg.close()?;
    }
    writer.into_inner()
}

/// A Parquet `.RESOLVED` file: one row, one `__crdb__resolved` DECIMAL-as-text column.
pub fn encode_resolved(ts: crate::Hlc) -> parquet::errors::Result<Vec<u8>> {
    let field = leaf(
        "__crdb__resolved",
        &SqlType::Decimal {
            precision: None,
            scale: 0,
        },
        Repetition::OPTIONAL,
    )?;
    let schema = Arc::new(
        Type::group_type_builder("schema")
            .with_fields(vec![field])
            .build()?,
    );
    let props = WriterProperties::builder()
        .set_created_by("cockroachdb".into())
        .build();
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, Arc::new(props))?;
    let mut rg = writer.next_row_group()?;
    let mut col = rg.next_column()?.expect("one column");
    col.typed::<ByteArrayType>().write_batch(
        &[ByteArray::from(ts.to_string().into_bytes())],
        Some(&[1]),
        None,
    )?;
    col.close()?;
    rg.close()?;
    writer.into_inner()
}
