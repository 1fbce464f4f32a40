//! The data layout of one Delta table: its columns, key and column families.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_schema::{Field, Schema, SchemaRef};

use super::{Mode, meta_fields};
use crate::format::types::ColumnType;

/// The data layout of one Delta table.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Data columns in Delta order (key columns included).
    pub columns: Vec<(String, ColumnType)>,
    /// Primary-key columns in index order.
    pub key: Vec<String>,
    /// Whether the changefeed splits column families (`table+family` topics).
    pub split_families: bool,
    /// Column family → its non-key data columns, learnt from the files.
    pub families: BTreeMap<String, Vec<String>>,
    /// The family whose delete deletes the row (CockroachDB's family 0 always has a KV, so a
    /// row delete always carries it): a change without it is never a row delete, also in a
    /// window where that family has no file (a delete of another family only NULLs its
    /// columns). When unknown, a row is deleted only when every known family reports a delete.
    pub primary_family: Option<String>,
}

impl Layout {
    pub fn new(key: Vec<String>, split_families: bool) -> Self {
        Self {
            columns: Vec::new(),
            key,
            split_families,
            families: BTreeMap::new(),
            primary_family: None,
        }
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|(n, _)| n == name)
    }

    /// Each key column's type, in key order (JSON for one no file has shown yet).
    pub fn key_types(&self) -> Vec<ColumnType> {
        let type_of = |k: &String| self.index_of(k).map(|i| self.columns[i].1.clone());
        let json = || ColumnType::Json;
        self.key
            .iter()
            .map(|k| type_of(k).unwrap_or_else(json))
            .collect()
    }

    pub fn data_fields(&self) -> Vec<Field> {
        self.columns
            .iter()
            .map(|(n, t)| Field::new(n, t.arrow_type(), !self.key.contains(n)))
            .collect()
    }

    /// The Delta table's Arrow schema under `mode`.
    pub fn output_schema(&self, mode: Mode) -> SchemaRef {
        let mut f = self.data_fields();
        f.extend(meta_fields(mode, self.split_families));
        Arc::new(Schema::new(f))
    }

    /// Whether two layouts give the same Delta schema and properties (JSON columns read back
    /// from a table are plain strings, so `ColumnType`s alone would differ on every step; the
    /// primary family is not stored in the table).
    pub fn same_delta_schema(&self, other: &Layout) -> bool {
        let cols = |l: &Layout| -> Vec<(String, arrow_schema::DataType)> {
            l.columns
                .iter()
                .map(|(n, t)| (n.clone(), t.arrow_type()))
                .collect()
        };
        self.key == other.key
            && self.split_families == other.split_families
            && self.families == other.families
            && cols(self) == cols(other)
    }
}
