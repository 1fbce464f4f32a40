//! Real fixtures, the Parquet DECIMAL trap, and bad inputs that must fail naming file and place.

mod common;

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, Int64Type};
use bytes::Bytes;
use crdb_delta_core::Hlc;
use crdb_delta_core::format::batch::Op;
use crdb_delta_core::format::decode::resolved::decode_resolved;
use crdb_delta_core::format::decode::{self, DecodeError, DecodeOptions, ParquetDecoder};
use crdb_delta_core::format::keys;
use crdb_delta_core::format::names::ObjectName;
use crdb_delta_core::sim::model::{ColumnDef, Datum, TableDef};
use crdb_delta_core::sim::{Message, SimOptions};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/cockroachdb-replicator-testdata-good"
);

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

#[test]
fn replicator_fixture_decodes_and_reveals_its_key() {
    let file = "202405031553360274740000000000000-08779498965a12e2-1-2-00000000-mytable-2.ndjson";
    let ObjectName::Data(name) = ObjectName::parse_file_name(file).unwrap() else {
        panic!()
    };
    let mut stream = decode::decode_bytes(
        &name,
        file,
        Bytes::from(fixture(file)),
        &DecodeOptions::default(),
    )
    .unwrap();
    let batches: Vec<_> = stream.by_ref().collect::<Result<_, _>>().unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 35);
    let b = &batches[0];
    assert_eq!(
        b.column_by_name("p")
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(0),
        1
    );
    assert_eq!(
        b.column_by_name("v").unwrap().as_string::<i32>().value(0),
        "1"
    );
    let upd = b
        .column_by_name("__crdb_updated")
        .unwrap()
        .as_primitive::<Decimal128Type>()
        .value(0);
    assert_eq!(
        Hlc::from_decimal_i128(upd).unwrap().to_string(),
        "1714751616027474000.0000000000"
    );
    assert!(
        b.column_by_name("__crdb_op")
            .unwrap()
            .as_string::<i32>()
            .iter()
            .all(|o| o == Some("c"))
    );
    assert_eq!(
        keys::primary_key("mytable", None, &[stream.key_evidence()]).unwrap(),
        ["p"]
    );

    for r in [
        "202405031553360274740000000000000.RESOLVED",
        "202405031553371089960000000000000.RESOLVED",
    ] {
        let ObjectName::Resolved(ts) = ObjectName::parse_file_name(r).unwrap() else {
            panic!()
        };
        assert_eq!(
            decode_resolved(r, Bytes::from(fixture(r)), Some(ts)).unwrap(),
            ts
        );
    }
}

/// One Parquet file with a single DECIMAL(18,9) column holding 3.14, written as CockroachDB does.
fn decimal_file() -> Vec<u8> {
    let def = Arc::new(TableDef {
        name: "t".into(),
        columns: vec![
            ColumnDef {
                name: "id".into(),
                sql: "INT8".parse().unwrap(),
                nullable: false,
                family: "primary".into(),
            },
            ColumnDef {
                name: "price".into(),
                sql: "DECIMAL(18,9)".parse().unwrap(),
                nullable: true,
                family: "primary".into(),
            },
        ],
        primary_key: vec!["id".into()],
        families: vec!["primary".into()],
        version: 1,
    });
    let m = Message {
        table: def.clone(),
        family: "primary".into(),
        op: Op::Create,
        updated: Hlc::new(10, 0),
        mvcc: Hlc::new(10, 0),
        row: vec![Datum::Int(1), Datum::Decimal("3.140000000".into())],
        before: None,
        backfill: false,
    };
    crdb_delta_core::sim::parquet::encode(&def, &[0, 1], &[m], &SimOptions::default()).unwrap()
}

#[test]
fn parquet_decimal_text_is_read_right_where_a_standard_reader_gets_it_wrong() {
    let bytes = Bytes::from(decimal_file());
    // A standard Arrow reader takes the ASCII bytes for a two's-complement integer.
    let mut std_reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
            .unwrap()
            .build()
            .unwrap();
    let b = std_reader.next().unwrap().unwrap();
    let wrong = b
        .column_by_name("price")
        .unwrap()
        .as_primitive::<Decimal128Type>()
        .value(0);
    assert_ne!(
        wrong, 3_140_000_000,
        "the trap: a standard reader misreads DECIMAL text"
    );

    let mut ours = ParquetDecoder::try_new("t.parquet", bytes, &DecodeOptions::default()).unwrap();
    let b = ours.next().unwrap().unwrap();
    assert_eq!(
        b.column_by_name("price")
            .unwrap()
            .as_primitive::<Decimal128Type>()
            .value(0),
        3_140_000_000
    );
}

#[test]
fn unconstrained_decimals_are_rejected_by_standard_readers_and_kept_exact_by_ours() {
    let sim = common::simulate(&SimOptions {
        format: crdb_delta_core::format::names::Format::Parquet,
        tables: vec!["kitchen_sink".into()],
        initial_rows: 50,
        windows: 1,
        ..SimOptions::default()
    });
    let (path, bytes) = sim
        .objects
        .iter()
        .find(|(p, _)| p.ends_with(".parquet"))
        .unwrap();
    assert!(
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(Bytes::from(
            bytes.clone()
        ))
        .is_err()
    );
    let mut d =
        ParquetDecoder::try_new(path, Bytes::from(bytes.clone()), &DecodeOptions::default())
            .unwrap();
    let b = d.next().unwrap().unwrap();
    // Without configuration: unconstrained DECIMAL as exact text, DECIMAL(10,0) annotated (10,10)
    // as decimal(20,10), UUID and TIME as text, arrays as lists.
    let ty = |c: &str| b.schema().field_with_name(c).unwrap().data_type().clone();
    assert_eq!(ty("dec_any"), arrow_schema::DataType::Utf8);
    assert_eq!(ty("dec0"), arrow_schema::DataType::Decimal128(20, 10));
    assert_eq!(ty("dec"), arrow_schema::DataType::Decimal128(18, 9));
    assert_eq!(ty("id"), arrow_schema::DataType::Utf8);
    assert!(matches!(ty("ia"), arrow_schema::DataType::List(_)));
}

fn err_of(r: Result<Vec<arrow_array::RecordBatch>, DecodeError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn truncated_and_corrupt_parquet_name_the_file() {
    let bytes = decimal_file();
    let path = "2024-05-03/x.parquet";
    for cut in [bytes.len() - 3, bytes.len() / 2, 10] {
        let r = ParquetDecoder::try_new(
            path,
            Bytes::copy_from_slice(&bytes[..cut]),
            &DecodeOptions::default(),
        )
        .and_then(|d| d.collect::<Result<Vec<_>, _>>());
        let msg = err_of(r);
        assert!(msg.starts_with(path) && msg.contains("Parquet"), "{msg}");
    }
    let mut corrupt = bytes.clone();
    for b in &mut corrupt[4..bytes.len() / 2] {
        *b = 0xff;
    }
    let r = ParquetDecoder::try_new(path, Bytes::from(corrupt), &DecodeOptions::default())
        .and_then(|d| d.collect::<Result<Vec<_>, _>>());
    assert!(err_of(r).starts_with(path));
}

#[test]
fn unknown_column_types_name_file_and_column() {
    use parquet::basic::{Repetition, Type as Physical};
    use parquet::schema::types::Type;
    let field = |name: &str, p: Physical, len: i32| {
        Arc::new(
            Type::primitive_type_builder(name, p)
                .with_repetition(Repetition::OPTIONAL)
                .with_length(len)
                .build()
                .unwrap(),
        )
    };
    let schema = Type::group_type_builder("schema")
        .with_fields(vec![
            field("legacy_ts", Physical::INT96, -1),
            field("__crdb__event_type", Physical::BYTE_ARRAY, -1),
        ])
        .build()
        .unwrap();
    let w = parquet::file::writer::SerializedFileWriter::new(
        Vec::new(),
        Arc::new(schema),
        Default::default(),
    )
    .unwrap();
    let bytes = w.into_inner().unwrap();
    let err = ParquetDecoder::try_new("f.parquet", Bytes::from(bytes), &DecodeOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, DecodeError::UnknownType { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("f.parquet")
            && msg.contains("`legacy_ts`")
            && msg.contains("unknown column type"),
        "{msg}"
    );
}

#[test]
fn bad_json_in_compressed_files_names_file_and_line() {
    let lines = "{\"after\": {\"k\": 1}, \"key\": [1], \"updated\": \"1.0000000000\"}\n{\"after\": {\"k\": 2}, \"key\": [2], \"upd\n";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, lines.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let name = "202405031553360274740000000000000-08779498965a12e2-1-2-00000000-t-2.ndjson.gz";
    let ObjectName::Data(d) = ObjectName::parse_file_name(name).unwrap() else {
        panic!()
    };
    let r = decode::decode_bytes(&d, name, Bytes::from(gz.clone()), &DecodeOptions::default())
        .unwrap()
        .collect();
    let msg = err_of(r);
    assert!(msg.starts_with(name) && msg.contains("line 2"), "{msg}");
    // A gzip stream cut short is a read error naming the file, not a panic or silent truncation.
    let r = decode::decode_bytes(
        &d,
        name,
        Bytes::copy_from_slice(&gz[..gz.len() - 12]),
        &DecodeOptions::default(),
    )
    .unwrap()
    .collect();
    assert!(err_of(r).starts_with(name));
}

/// Runs `f` on a thread with a 2 MiB stack, what tokio's blocking threads and test threads get.
fn on_2mib_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// `1` nested `depth` levels deep in arrays (`[[1]]`) or objects (`{"a": {"a": 1}}`), written
/// as CockroachDB writes JSONB (so a value that decodes comes back byte for byte).
fn nested(objects: bool, depth: usize) -> String {
    if objects {
        format!("{}1{}", r#"{"a": "#.repeat(depth), "}".repeat(depth))
    } else {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }
}

fn gzip(text: &str) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
    gz.finish().unwrap()
}

/// Decodes NDJSON text through the public API, as a plain or a gzip file.
fn decode_ndjson(
    text: &str,
    gz: bool,
    opts: &DecodeOptions,
) -> (String, Result<Vec<arrow_array::RecordBatch>, DecodeError>) {
    let (name, d, bytes) = ndjson_file(text, gz);
    let r =
        decode::decode_bytes(&d, &name, bytes, opts).and_then(|s| s.collect::<Result<Vec<_>, _>>());
    (name, r)
}

/// NDJSON text as a changefeed file: its name, parsed name and (gzip or plain) bytes.
fn ndjson_file(
    text: &str,
    gz: bool,
) -> (String, crdb_delta_core::format::names::DataFileName, Bytes) {
    let name = format!(
        "202405031553360274740000000000000-08779498965a12e2-1-2-00000000-t-2.ndjson{}",
        if gz { ".gz" } else { "" }
    );
    let ObjectName::Data(d) = ObjectName::parse_file_name(&name).unwrap() else {
        panic!()
    };
    let bytes = if gz {
        gzip(text)
    } else {
        text.as_bytes().to_vec()
    };
    (name, d, Bytes::from(bytes))
}

#[test]
fn deeply_nested_json_is_refused_naming_file_line_and_column_without_overflowing() {
    use crdb_delta_core::format::types::ColumnType;
    on_2mib_stack(|| {
        let ok = r#"{"after": {"doc": 1, "id": 1}, "key": [1], "updated": "1.0000000000"}"#;
        for depth in [10_000, 100_000] {
            for objects in [false, true] {
                let value = nested(objects, depth);
                let in_after = format!(
                    r#"{{"after": {{"doc": {value}, "id": 2}}, "key": [2], "updated": "2.0000000000"}}"#
                );
                let in_key =
                    format!(r#"{{"after": null, "key": [{value}], "updated": "2.0000000000"}}"#);
                for (line, column, configured) in [
                    (&in_after, "doc", None),
                    (&in_after, "doc", Some(ColumnType::Json)),
                    (&in_after, "doc", Some(ColumnType::Text)),
                    (&in_key, "id", None),
                ] {
                    let opts = DecodeOptions {
                        columns: configured
                            .into_iter()
                            .map(|t| ("doc".to_owned(), t))
                            .collect(),
                        primary_key: Some(vec!["id".into()]),
                        ..Default::default()
                    };
                    for gz in [false, true] {
                        let (name, r) = decode_ndjson(&format!("{ok}\n{line}\n"), gz, &opts);
                        let err = r.unwrap_err();
                        assert!(matches!(err, DecodeError::Value { .. }), "{err}");
                        assert_eq!(err.file(), name);
                        let msg = err.to_string();
                        assert!(
                            msg.contains("line 2")
                                && msg.contains(&format!("column `{column}`"))
                                && msg.contains("nested deeper than"),
                            "{msg}"
                        );
                    }
                }
            }
        }
    });
}

#[test]
fn nesting_within_the_limit_decodes_exactly() {
    use crdb_delta_core::format::types::ColumnType;
    use crdb_delta_core::format::values::MAX_JSON_DEPTH;
    on_2mib_stack(|| {
        for depth in [2, 100, MAX_JSON_DEPTH] {
            for objects in [false, true] {
                let value = nested(objects, depth);
                let text = format!(
                    "{{\"after\": {{\"doc\": {value}, \"id\": 1}}, \"key\": [1], \"updated\": \"1.0000000000\"}}\n"
                );
                for configured in [None, Some(ColumnType::Json)] {
                    let opts = DecodeOptions {
                        columns: configured
                            .into_iter()
                            .map(|t| ("doc".to_owned(), t))
                            .collect(),
                        ..Default::default()
                    };
                    for gz in [false, true] {
                        let b = decode_ndjson(&text, gz, &opts).1.unwrap();
                        let doc = b[0].column_by_name("doc").unwrap();
                        assert_eq!(doc.as_string::<i32>().value(0), value, "depth {depth}");
                    }
                }
            }
        }
        // One level more is refused.
        let value = nested(false, MAX_JSON_DEPTH + 1);
        let text = format!(
            "{{\"after\": {{\"doc\": {value}, \"id\": 1}}, \"key\": [1], \"updated\": \"1.0000000000\"}}\n"
        );
        let err = decode_ndjson(&text, false, &DecodeOptions::default())
            .1
            .unwrap_err();
        assert!(err.to_string().contains("line 1: column `doc`"), "{err}");
    });
}

/// Every column name crdb-delta writes itself, and CockroachDB's Parquet meta names.
const RESERVED_EXAMPLES: [&str; 10] = [
    "__crdb_op",
    "__crdb_hlc",
    "__crdb_key",
    "__crdb_source_file",
    "__crdb_updated",
    "__crdb_start_hlc",
    "__crdb_end_hlc",
    "__crdb_commit_ts",
    "__crdb__event_type",
    "__crdb_anything_else",
];

fn assert_reserved(err: DecodeError, file: &str, at: &str, column: &str) {
    let msg = err.to_string();
    assert!(
        matches!(&err, DecodeError::ReservedColumn { column: c, .. } if c == column),
        "{msg}"
    );
    assert_eq!(err.file(), file);
    assert!(
        msg.contains(&format!("{at}: column `{column}`"))
            && msg.contains("starting with `__crdb_` are reserved by crdb-delta"),
        "{msg}"
    );
}

#[test]
fn reserved_column_names_in_ndjson_are_refused() {
    let ok = r#"{"after": {"id": 1, "v": "a"}, "key": [1], "updated": "1.0000000000"}"#;
    for name in RESERVED_EXAMPLES {
        let pk = || DecodeOptions {
            primary_key: Some(vec!["id".into()]),
            ..Default::default()
        };
        for (line, opts) in [
            // Today `__crdb_op: "d"` deletes the row and the others replace our metadata.
            (
                format!(
                    r#"{{"after": {{"{name}": "d", "id": 2}}, "key": [2], "updated": "2.0000000000"}}"#
                ),
                pk(),
            ),
            (
                format!(
                    r#"{{"after": {{"id": 2}}, "before": {{"{name}": "x", "id": 2}}, "key": [2], "updated": "2.0000000000"}}"#
                ),
                pk(),
            ),
            (
                format!(
                    r#"{{"after": null, "before": {{"{name}": "x", "id": 2}}, "key": [2], "updated": "2.0000000000"}}"#
                ),
                pk(),
            ),
            (
                format!(
                    r#"{{"__crdb__": {{"key": [2], "updated": "2.0000000000"}}, "{name}": "d", "id": 2}}"#
                ),
                pk(),
            ),
            // A key column with a reserved name (filled from the `key` array).
            (
                r#"{"after": null, "key": [2], "updated": "2.0000000000"}"#.to_owned(),
                DecodeOptions {
                    primary_key: Some(vec![name.to_owned()]),
                    ..Default::default()
                },
            ),
        ] {
            let at = if opts.primary_key.as_deref() == Some(&[name.to_owned()][..]) {
                "line 1"
            } else {
                "line 2"
            };
            for gz in [false, true] {
                let (file, r) = decode_ndjson(&format!("{ok}\n{line}\n"), gz, &opts);
                assert_reserved(r.unwrap_err(), &file, at, name);
            }
        }
    }
    // Near misses are ordinary columns, and a bare envelope's `before` is a column like any other.
    let text = concat!(
        r#"{"__crdb__": {"key": [1], "updated": "1.0000000000"}, "_crdb_op": "d", "__crdbop": "d", "crdb_op": "d", "before": "__crdb_op", "id": 1}"#,
        "\n"
    );
    let b = decode_ndjson(text, false, &DecodeOptions::default())
        .1
        .unwrap();
    for c in ["_crdb_op", "__crdbop", "crdb_op"] {
        assert_eq!(
            b[0].column_by_name(c).unwrap().as_string::<i32>().value(0),
            "d"
        );
    }
    assert_eq!(
        b[0].column_by_name("__crdb_op")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        "c"
    );
}

/// A Parquet file with the given BYTE_ARRAY (string) columns and no rows.
fn parquet_schema_only(columns: &[&str]) -> Vec<u8> {
    use parquet::basic::{ConvertedType, Repetition, Type as Physical};
    use parquet::schema::types::Type;
    let fields = columns
        .iter()
        .map(|name| {
            Arc::new(
                Type::primitive_type_builder(name, Physical::BYTE_ARRAY)
                    .with_repetition(Repetition::OPTIONAL)
                    .with_converted_type(ConvertedType::UTF8)
                    .build()
                    .unwrap(),
            )
        })
        .collect();
    let schema = Type::group_type_builder("schema")
        .with_fields(fields)
        .build()
        .unwrap();
    parquet::file::writer::SerializedFileWriter::new(
        Vec::new(),
        Arc::new(schema),
        Default::default(),
    )
    .unwrap()
    .into_inner()
    .unwrap()
}

#[test]
fn reserved_column_names_in_parquet_are_refused_and_cockroachdb_meta_columns_kept() {
    use crdb_delta_core::format::decode::BatchStream;
    let meta = [
        "__crdb__event_type",
        "__crdb__updated",
        "__crdb__mvcc_timestamp",
        "__crdb__before",
    ];
    let mut cols = vec!["id"];
    cols.extend(meta);
    let ok = ParquetDecoder::try_new(
        "f.parquet",
        Bytes::from(parquet_schema_only(&cols)),
        &DecodeOptions::default(),
    )
    .unwrap();
    assert_eq!(ok.column_types().keys().collect::<Vec<_>>(), ["id"]);
    for name in RESERVED_EXAMPLES.iter().filter(|n| !meta.contains(n)) {
        let mut cols = vec!["id", name];
        cols.extend(meta);
        let err = ParquetDecoder::try_new(
            "f.parquet",
            Bytes::from(parquet_schema_only(&cols)),
            &DecodeOptions::default(),
        )
        .err()
        .unwrap();
        assert_reserved(err, "f.parquet", "row 1", name);
    }
}

/// A compression bomb: 1 MiB of gzip can hold a gigabyte of whitespace on one line. The line is
/// refused at `max_line_bytes`, never buffered whole; empty lines cost nothing.
#[test]
fn an_over_long_line_is_refused_at_the_limit_naming_file_and_line() {
    let ok = r#"{"after": {"k": 1}, "key": [1], "updated": "1714751616027474000.0000000000"}"#;
    let limit = 1 << 20;
    let opts = DecodeOptions {
        max_line_bytes: limit,
        ..DecodeOptions::default()
    };
    let mut text = format!("{ok}\n");
    text.push_str(&" ".repeat(3 * limit));
    text.push('\n');
    for gz in [false, true] {
        let (name, r) = decode_ndjson(&text, gz, &opts);
        let e = err_of(r);
        assert!(
            e.contains(&name) && e.contains("line 2") && e.contains("longer than 1048576"),
            "{e}"
        );
    }
    // Exactly at the limit (newline not counted against it): accepted; so are empty lines.
    let pad = limit - ok.len();
    let text = format!("{ok}{}\n\n\n\n{ok}\n", " ".repeat(pad));
    let (_, r) = decode_ndjson(&text, true, &opts);
    assert_eq!(r.unwrap().iter().map(|b| b.num_rows()).sum::<usize>(), 2);
}

/// What `max_window_bytes` counts: the decompressed input, not the stored size.
#[test]
fn decoders_report_decoded_input_bytes() {
    let line = r#"{"after": {"k": 1, "v": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}, "key": [1], "updated": "1714751616027474000.0000000000"}"#;
    let text = format!("{line}\n").repeat(2000);
    for gz in [false, true] {
        let (name, d, bytes) = ndjson_file(&text, gz);
        let stored = bytes.len();
        let mut s = decode::decode_bytes(&d, &name, bytes, &DecodeOptions::default()).unwrap();
        for b in s.by_ref() {
            b.unwrap();
        }
        assert_eq!(s.input_bytes(), text.len() as u64, "gz {gz}");
        if gz {
            assert!(stored * 10 < text.len(), "the test text compresses well");
        }
    }
}
