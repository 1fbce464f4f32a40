//! Helpers shared by the core's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use crdb_delta_core::format::decode::{self, DecodeOptions};
use crdb_delta_core::format::names::ObjectName;
use crdb_delta_core::sim::model::TableDef;
use crdb_delta_core::sim::{self, Destination, SimOptions};

/// A simulated changefeed held in memory.
pub struct Simulated {
    pub objects: BTreeMap<String, Vec<u8>>,
    pub truth: BTreeMap<String, Vec<u8>>,
    pub tables: Vec<TableDef>,
}

pub fn simulate(opts: &SimOptions) -> Simulated {
    let mut objects = BTreeMap::new();
    let mut truth = BTreeMap::new();
    sim::run(opts, &mut |dest, path, bytes| {
        match dest {
            Destination::Changefeed => assert!(
                objects.insert(path.to_owned(), bytes).is_none(),
                "{path} written twice"
            ),
            Destination::Truth => {
                truth.insert(path.to_owned(), bytes);
            }
        }
        Ok(())
    })
    .unwrap();
    let manifest: crdb_delta_core::sim::Manifest =
        serde_json::from_slice(&truth["manifest.json"]).unwrap();
    let tables = manifest.tables;
    Simulated {
        objects,
        truth,
        tables,
    }
}

/// Decode options for a table from its definition (types from configuration, as a user would).
pub fn options_for(def: &TableDef) -> DecodeOptions {
    DecodeOptions {
        batch_size: 1000,
        columns: def
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.sql.column_type()))
            .collect(),
        primary_key: Some(def.primary_key.clone()),
        ..DecodeOptions::default()
    }
}

/// Objects in changefeed order (lexicographic by file name).
pub fn ordered(objects: &BTreeMap<String, Vec<u8>>) -> Vec<(ObjectName, String, &Vec<u8>)> {
    let mut v: Vec<_> = objects
        .iter()
        .map(|(p, b)| (ObjectName::parse_relative(p).unwrap().0, p.clone(), b))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

pub fn decode_all(
    name: &ObjectName,
    path: &str,
    bytes: &[u8],
    opts: &DecodeOptions,
) -> Vec<arrow_array::RecordBatch> {
    let ObjectName::Data(d) = name else {
        panic!("not a data file")
    };
    decode::decode_bytes(d, path, bytes::Bytes::copy_from_slice(bytes), opts)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The data columns of a change batch, by name (its metadata columns left out).
pub fn data_columns(b: &arrow_array::RecordBatch) -> Vec<String> {
    b.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| !crdb_delta_core::format::batch::is_meta(n))
        .collect()
}
