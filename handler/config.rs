//! Sync configuration: the mode, per-table overrides (target path, key, SQL types, mode) and
//! limits. Read from a JSON file; every field is optional.
//!
//! ```json
//! { "mode": "update_delete",
//!   "max_window_bytes": 268435456,
//!   "tables": { "orders": { "target": "sales/orders", "mode": "scd2",
//!                           "storage": "copy_on_write",
//!                           "primary_key": ["id"], "primary_family": "primary",
//!                           "columns": { "amount": "DECIMAL(12,2)" } } } }
//! ```
//!
//! `crdb-delta schema --target <root>` writes the same shape (keys, families, SQL types read from
//! CockroachDB) to `<root>/_crdb_delta/schema.json` ([`SCHEMA_OBJECT`]); `sync` and the handler
//! read it at every run ([`with_target_schema`]), so a schema read after deployment applies
//! without a redeploy. The explicit configuration wins field by field: a table's `primary_key`,
//! `primary_family`, `target` and `mode` from the config file replace schema.json's, and its
//! `columns` entries replace schema.json's type for the same column (other columns keep
//! schema.json's types).

use std::collections::BTreeMap;

use crdb_delta_core::apply::Mode;
use crdb_delta_core::format::types::{ColumnType, SqlType};
use object_store::ObjectStoreExt as _;
use serde::{Deserialize, Serialize};

use crate::storage::Location;

/// Where `crdb-delta schema --target` writes, below the target root.
pub const SCHEMA_OBJECT: &str = "_crdb_delta/schema.json";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("table `{table}`: {message}")]
    Table { table: String, message: String },
    /// Not JSON, or not our shape (serde names the field and position).
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("cdc_config.mode: {0}")]
    Mode(#[from] crdb_delta_core::apply::UnknownMode),
}

/// How a changed or deleted row leaves its data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// Merge-on-read: the row is marked in a deletion vector on its file and the new version
    /// appended; no data file is rewritten. Needs readers with deletion-vector support
    /// (Delta reader 3 / writer 7, as Databricks makes new tables).
    DeletionVectors,
    /// Copy-on-write: every file holding a changed row is rewritten (plain reader 1 / writer 2
    /// tables for readers without deletion vectors).
    CopyOnWrite,
}

/// A `storage` other than deletion_vectors and copy_on_write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown storage `{0}` (deletion_vectors, copy_on_write)")]
pub struct UnknownStorage(pub String);

impl std::str::FromStr for Storage {
    type Err = UnknownStorage;
    fn from_str(s: &str) -> Result<Self, UnknownStorage> {
        match s {
            "deletion_vectors" => Ok(Self::DeletionVectors),
            "copy_on_write" => Ok(Self::CopyOnWrite),
            other => Err(UnknownStorage(other.to_owned())),
        }
    }
}

impl std::fmt::Display for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::DeletionVectors => "deletion_vectors",
            Self::CopyOnWrite => "copy_on_write",
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// How update_delete and scd2 supersede rows (default: deletion vectors for new tables;
    /// an existing table keeps what its protocol says unless this is set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    /// Input bytes one commit may read; a larger backlog is applied in several commits, each up
    /// to an intermediate RESOLVED.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::byte_size::deserialize_opt"
    )]
    pub max_window_bytes: Option<u64>,
    /// Smallest key slice (decoded bytes) of a RESOLVED interval larger than the window
    /// (default 1 MiB).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::byte_size::deserialize_opt"
    )]
    pub min_slice_bytes: Option<u64>,
    /// Local disk (below the system's temporary folder, `TMPDIR`) for the files of a RESOLVED
    /// interval applied in key slices, so its later slices read them from there instead of
    /// fetching them from storage again (default 0: none). Only where that folder is a disk:
    /// on a memory file system it would count against the instance's memory.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::byte_size::deserialize_opt"
    )]
    pub slice_cache_bytes: Option<u64>,
    /// With deletion vectors, once the table has 8 files smaller than this, a step rewrites the
    /// ones it changes (their rows merge into its new file) instead of marking rows deleted, so
    /// small files do not pile up between compactions (default 4 MiB; 0: never).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::byte_size::deserialize_opt"
    )]
    pub rewrite_files_below: Option<u64>,
    /// Memory for table files' key indexes kept between steps, so a step looks its keys up
    /// instead of reading every candidate file's key column (single-column integer or text
    /// keys; default 512 MiB: 40M integer or 25M UUID keys; 0: none).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::byte_size::deserialize_opt"
    )]
    pub key_index_bytes: Option<u64>,
    /// One commit per table at every RESOLVED, however small (a Delta version per RESOLVED, for
    /// time travel to each), instead of one per `max_window_bytes` of backlog (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_each_resolved: Option<bool>,
    /// Tables of one step applied side by side (default 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tables_at_once: Option<usize>,
    /// Target size of the Parquet files written.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::byte_size::deserialize_opt"
    )]
    pub target_file_size: Option<u64>,
    /// A RESOLVED further than this ahead of the clock is refused (default 600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_resolved_ahead_seconds: Option<u64>,
    /// Longest NDJSON line accepted, decompressed (default 64 MiB).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::byte_size::deserialize_opt_usize"
    )]
    pub max_line_bytes: Option<usize>,
    /// Table upkeep (`crdb-delta maintain`) by the handler's CatchUp timer when its apply left
    /// time in the budget (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upkeep: Option<bool>,
    /// VACUUM retention of that upkeep, hours (default 168).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain_hours: Option<u64>,
    /// The handler learns a table's key indexes when it first hears of the table's files,
    /// before the RESOLVED that applies them (`engine::warm`; default true; never with
    /// fan-out, where another instance may apply the table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm_up: Option<bool>,
    #[serde(default)]
    pub tables: BTreeMap<String, TableConfig>,
    /// Apply only these tables (the changefeed's table names); other tables' files are left
    /// alone. A crdb_to_dbx config, which names one table, sets it to that table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_tables: Option<std::collections::BTreeSet<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Delta table path relative to the target root (default: the table name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_family: Option<String>,
    /// Column → CockroachDB SQL type, for exact types where the files lose them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, String>,
    /// Written by the engine into schema.json: the highest schema id (table descriptor version,
    /// from the file names) the table's files showed when its schema was read from CockroachDB.
    /// A file with a higher one makes a run read the schema again (`CRDB_DELTA_CRDB_URL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_id: Option<u64>,
}

impl Config {
    pub fn load(path: &str) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError::File {
            file: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::parse(&text).map_err(|e| err(e.to_string()))
    }

    /// Our shape, or the `config.json` of crdb_to_dbx (`cdc_config`, `cockroachdb_source`,
    /// `databricks_target`), so its users can move over with the file they have.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        let config: Self = if value.get("cdc_config").is_some() {
            Self::from_crdb_to_dbx(&value)?
        } else {
            serde_json::from_value(value)?
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what can be checked before anything is written: SQL types parse, table paths
    /// are valid, and no two tables share a Delta table (one would silently overwrite the
    /// other's progress).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut targets: BTreeMap<String, &str> = BTreeMap::new();
        for (name, t) in &self.tables {
            t.column_types(name)?;
            let path = self.target_path(name)?;
            if let Some(other) = targets.insert(path.clone(), name) {
                return Err(ConfigError::Table {
                    table: name.clone(),
                    message: format!(
                        "maps to the Delta table `{path}`, as table `{other}` does: give each table its own `target`"
                    ),
                });
            }
        }
        Ok(())
    }

    /// crdb_to_dbx's `config.json` (github.com/rsleedbx/crdb_to_dbx, config_examples/README.md):
    /// `cdc_config.mode` → mode, `cdc_config.primary_key_columns` → the key,
    /// `cockroachdb_source.table_name` → the table, `databricks_target.table_name` → its Delta
    /// path below the target. `format` and `column_family_mode` are detected from the files;
    /// credentials in it are ignored (identity comes from the environment, never from a file).
    fn from_crdb_to_dbx(v: &serde_json::Value) -> Result<Self, ConfigError> {
        let cdc = &v["cdc_config"];
        let mode = match cdc.get("mode").and_then(|m| m.as_str()) {
            Some(m) => Some(m.parse::<Mode>()?),
            None => None,
        };
        if v.get("azure_storage")
            .and_then(|a| a.get("account_key"))
            .is_some()
            || v.get("cockroachdb")
                .and_then(|c| c.get("password"))
                .is_some()
        {
            tracing::warn!(
                "credentials in the config file are ignored: storage access comes from managed identity or AZURE_* settings"
            );
        }
        let mut c = Self {
            mode,
            ..Self::default()
        };
        if let Some(table) = v["cockroachdb_source"]["table_name"].as_str() {
            let key = cdc["primary_key_columns"].as_array().map(|k| {
                k.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            });
            let target = v["databricks_target"]["table_name"]
                .as_str()
                .map(str::to_owned);
            c.tables.insert(
                table.to_owned(),
                TableConfig {
                    target,
                    primary_key: key,
                    ..TableConfig::default()
                },
            );
            // The file is about this one table: the others are not applied.
            c.only_tables = Some([table.to_owned()].into());
        }
        Ok(c)
    }

    pub fn table(&self, name: &str) -> TableConfig {
        self.tables.get(name).cloned().unwrap_or_default()
    }

    /// The Delta path of a table, validated: it becomes a storage path.
    pub fn target_path(&self, table: &str) -> Result<String, ConfigError> {
        let path = self
            .tables
            .get(table)
            .and_then(|t| t.target.clone())
            .unwrap_or_else(|| table.to_owned());
        validate_path(&path).map_err(|message| ConfigError::Table {
            table: table.to_owned(),
            message: format!("{message} (map it with `tables.{table}.target` in the config)"),
        })?;
        Ok(path)
    }
}

impl Config {
    /// This (explicit) configuration over a schema document (`_crdb_delta/schema.json`): the
    /// explicit value wins per field, and per column for `columns`.
    pub fn over_schema(&self, schema: &Config) -> Config {
        let mut out = self.clone();
        for (name, s) in &schema.tables {
            let t = out.tables.entry(name.clone()).or_default();
            t.target = t.target.take().or_else(|| s.target.clone());
            t.mode = t.mode.or(s.mode);
            t.storage = t.storage.or(s.storage);
            t.primary_key = t.primary_key.take().or_else(|| s.primary_key.clone());
            t.primary_family = t.primary_family.take().or_else(|| s.primary_family.clone());
            t.schema_id = t.schema_id.or(s.schema_id);
            for (c, ty) in &s.columns {
                t.columns.entry(c.clone()).or_insert_with(|| ty.clone());
            }
        }
        out.mode = out.mode.or(schema.mode);
        out.storage = out.storage.or(schema.storage);
        out.max_window_bytes = out.max_window_bytes.or(schema.max_window_bytes);
        out.min_slice_bytes = out.min_slice_bytes.or(schema.min_slice_bytes);
        out.slice_cache_bytes = out.slice_cache_bytes.or(schema.slice_cache_bytes);
        out.rewrite_files_below = out.rewrite_files_below.or(schema.rewrite_files_below);
        out.key_index_bytes = out.key_index_bytes.or(schema.key_index_bytes);
        out.commit_each_resolved = out.commit_each_resolved.or(schema.commit_each_resolved);
        out.tables_at_once = out.tables_at_once.or(schema.tables_at_once);
        out.target_file_size = out.target_file_size.or(schema.target_file_size);
        out.max_resolved_ahead_seconds = out
            .max_resolved_ahead_seconds
            .or(schema.max_resolved_ahead_seconds);
        out.max_line_bytes = out.max_line_bytes.or(schema.max_line_bytes);
        out.upkeep = out.upkeep.or(schema.upkeep);
        out.retain_hours = out.retain_hours.or(schema.retain_hours);
        out.warm_up = out.warm_up.or(schema.warm_up);
        out.only_tables = out
            .only_tables
            .take()
            .or_else(|| schema.only_tables.clone());
        out
    }

    /// Whether a table of the changefeed is applied (`only_tables`).
    pub fn applies(&self, table: &str) -> bool {
        self.only_tables.as_ref().is_none_or(|t| t.contains(table))
    }

    /// Configured tables the run did not see, and configured columns its tables do not have
    /// (`seen`: each table and its columns): a typo there would otherwise pass in silence.
    pub fn unused(&self, seen: &BTreeMap<String, Vec<String>>) -> Vec<String> {
        let mut out = Vec::new();
        for (name, t) in &self.tables {
            if !self.applies(name) {
                continue;
            }
            match seen.get(name) {
                None => out.push(format!(
                    "table `{name}` is configured but has no files in this run (a typo? tables \
                     are named as in the changefeed's file names)"
                )),
                Some(columns) => {
                    for c in t.columns.keys().filter(|c| !columns.contains(c)) {
                        out.push(format!(
                            "column `{name}.{c}` is configured but not in the table's files"
                        ));
                    }
                }
            }
        }
        out
    }
}

/// `<target>/_crdb_delta/schema.json` as messages may show it (no credentials).
fn shown_schema_file(target: &Location) -> String {
    format!(
        "{}/{SCHEMA_OBJECT}",
        crate::storage::redact(&target.display).trim_end_matches('/')
    )
}

/// Reads `<target>/_crdb_delta/schema.json`; `None` when there is none. A document that does
/// not parse or validate is an error (it would silently change keys and types otherwise).
pub async fn load_target_schema(target: &Location) -> Result<Option<Config>, ConfigError> {
    let file = shown_schema_file(target);
    let err = |message: String| ConfigError::File {
        file: file.clone(),
        message,
    };
    let path = target
        .child(SCHEMA_OBJECT)
        .map_err(|e| err(e.to_string()))?;
    let bytes = match target.store.get(&path).await {
        Ok(r) => r.bytes().await.map_err(|e| err(e.to_string()))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    let text = std::str::from_utf8(&bytes).map_err(|e| err(e.to_string()))?;
    Config::parse(text)
        .map(Some)
        .map_err(|e| err(e.to_string()))
}

/// Writes `<target>/_crdb_delta/schema.json` (one put: a reader sees the old or the new
/// document); returns where, as it may be shown.
pub async fn save_target_schema(target: &Location, doc: &Config) -> Result<String, ConfigError> {
    let file = shown_schema_file(target);
    let err = |message: String| ConfigError::File {
        file: file.clone(),
        message,
    };
    let text = serde_json::to_string_pretty(doc).map_err(|e| err(e.to_string()))? + "\n";
    let path = target
        .child(SCHEMA_OBJECT)
        .map_err(|e| err(e.to_string()))?;
    target
        .store
        .put(&path, text.into_bytes().into())
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(file)
}

/// The configuration a run uses: `explicit` over the target's schema.json when there is one,
/// validated as a whole.
pub async fn with_target_schema(
    explicit: &Config,
    target: &Location,
) -> Result<Config, ConfigError> {
    match load_target_schema(target).await? {
        None => Ok(explicit.clone()),
        Some(schema) => {
            let merged = explicit.over_schema(&schema);
            merged.validate()?;
            tracing::debug!(
                tables = schema.tables.len(),
                "using {SCHEMA_OBJECT} of the target"
            );
            Ok(merged)
        }
    }
}

impl Config {
    /// The configuration a simulator manifest implies: each table's key and exact SQL types,
    /// as a user would configure them for a real changefeed.
    pub fn from_manifest(manifest: &crdb_delta_core::sim::Manifest) -> Self {
        let mut c = Self::default();
        for t in &manifest.tables {
            c.tables.insert(
                t.name.clone(),
                TableConfig {
                    primary_key: Some(t.primary_key.clone()),
                    columns: t
                        .columns
                        .iter()
                        .map(|col| (col.name.clone(), col.sql.to_string()))
                        .collect(),
                    ..TableConfig::default()
                },
            );
        }
        c
    }
}

impl TableConfig {
    pub fn column_types(&self, table: &str) -> Result<BTreeMap<String, ColumnType>, ConfigError> {
        self.columns
            .iter()
            .map(|(c, sql)| {
                sql.parse::<SqlType>()
                    .map(|t| (c.clone(), t.column_type()))
                    .map_err(|e| ConfigError::Table {
                        table: table.to_owned(),
                        message: format!("column `{c}`: {e}"),
                    })
            })
            .collect()
    }
}

/// A table path that [`validate_path`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPath {
    #[error("`{0}` is not a usable table path")]
    Length(String),
    #[error(
        "`{0}` is not a safe table path (segments of letters, digits, `_`, `-`, `.`; none empty or starting with `.` or `_`)"
    )]
    Segment(String),
}

/// A relative table path: segments of letters, digits, `_`, `-` and `.`, none starting with `.`
/// or `_` (reserved for `_delta_log` and our own `_crdb_delta_resolved`).
pub fn validate_path(path: &str) -> Result<(), InvalidPath> {
    if path.is_empty() || path.len() > 512 {
        return Err(InvalidPath::Length(path.to_owned()));
    }
    for seg in path.split('/') {
        let ok = !seg.is_empty()
            && !seg.starts_with('.')
            && !seg.starts_with('_')
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            return Err(InvalidPath::Segment(path.to_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tables_and_unused_entries() {
        let c = Config::parse(
            r#"{"only_tables": ["a", "b"], "tables": {"a": {"columns": {"x": "INT8", "y": "STRING"}},
                "b": {}, "c": {"primary_key": ["id"]}}}"#,
        )
        .unwrap();
        assert!(c.applies("a") && !c.applies("c"));
        let seen: BTreeMap<String, Vec<String>> = [("a".to_owned(), vec!["x".to_owned()])].into();
        let unused = c.unused(&seen);
        // `a.y` is not in the files, `b` had none; `c` is not applied, so not reported.
        assert_eq!(unused.len(), 2, "{unused:?}");
        assert!(
            unused[0].contains("`a.y`") && unused[1].contains("`b`"),
            "{unused:?}"
        );
        assert!(Config::default().applies("anything"));
    }

    #[test]
    fn paths_are_validated() {
        for ok in ["orders", "sales/orders", "a-b.c_d"] {
            validate_path(ok).unwrap();
        }
        for bad in [
            "",
            "../x",
            "a//b",
            "_delta_log",
            "a/.hidden",
            "\"db\".t",
            "a b",
            "x\\y",
        ] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
        let c = Config::default();
        let e = c.target_path("\"quoted\"").unwrap_err().to_string();
        assert!(e.contains("tables.\"quoted\".target"), "{e}");
    }

    #[test]
    fn crdb_to_dbx_config_is_accepted() {
        // The documented shape (crdb_to_dbx config_examples/README.md), comments removed.
        let text = r#"{
          "cockroachdb": {"host": "h", "port": 26257, "user": "u", "password": "p", "database": "defaultdb"},
          "cdc_config": {"data_source": "azure_storage", "mode": "append_only",
                         "column_family_mode": "multi_cf", "format": "parquet",
                         "primary_key_columns": ["ycsb_key"]},
          "cockroachdb_source": {"catalog": "defaultdb", "schema": "public", "table_name": "usertable"},
          "databricks_target": {"catalog": "main", "schema": "default", "table_name": "usertable_cdc"},
          "azure_storage": {"account_name": "acct", "account_key": "k==", "container_name": "changefeed-events"}
        }"#;
        let c = Config::parse(text).unwrap();
        assert_eq!(c.mode, Some(Mode::AppendOnly));
        let t = c.table("usertable");
        assert_eq!(t.primary_key.as_deref(), Some(&["ycsb_key".to_owned()][..]));
        assert_eq!(c.target_path("usertable").unwrap(), "usertable_cdc");
        let bad = Config::parse(r#"{"cdc_config": {"mode": "merge"}}"#)
            .unwrap_err()
            .to_string();
        assert!(bad.contains("unknown mode"), "{bad}");
        // Our own shape still refuses unknown fields.
        assert!(Config::parse(r#"{"mode": "scd2", "tabels": {}}"#).is_err());
    }

    #[test]
    fn explicit_config_wins_over_schema_json_per_field() {
        let schema = Config::parse(
            r#"{"tables": {"orders": {"primary_key": ["region", "id"], "primary_family": "f0",
                 "columns": {"amount": "DECIMAL(12,2)", "note": "STRING"}},
                 "users": {"primary_key": ["id"]}}}"#,
        )
        .unwrap();
        let explicit = Config::parse(
            r#"{"mode": "scd2", "tables": {"orders": {"primary_key": ["id"], "target": "sales/orders",
                 "columns": {"amount": "DECIMAL(14,4)"}}}}"#,
        )
        .unwrap();
        let m = explicit.over_schema(&schema);
        let o = m.table("orders");
        assert_eq!(o.primary_key.unwrap(), ["id"]);
        assert_eq!(o.primary_family.as_deref(), Some("f0"));
        assert_eq!(o.target.as_deref(), Some("sales/orders"));
        assert_eq!(o.columns["amount"], "DECIMAL(14,4)");
        assert_eq!(o.columns["note"], "STRING");
        assert_eq!(m.table("users").primary_key.unwrap(), ["id"]);
        assert_eq!(m.mode, Some(Mode::Scd2));
        // Serialised, the document reads back the same (what `schema` writes, `sync` reads).
        let text = serde_json::to_string(&schema).unwrap();
        assert_eq!(Config::parse(&text).unwrap().tables, schema.tables);
        assert!(!text.contains("null"), "{text}");
    }

    #[test]
    fn config_mistakes_are_refused_before_anything_runs() {
        // Two tables into one Delta table: one would silently take over the other's progress.
        let e = Config::parse(r#"{"tables": {"a": {"target": "x"}, "b": {"target": "x"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`x`") && e.contains("own `target`"), "{e}");
        let e = Config::parse(r#"{"tables": {"a": {}, "b": {"target": "a"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`a`"), "{e}");
        // A bad SQL type fails at load, not after another table committed.
        let e = Config::parse(r#"{"tables": {"a": {"columns": {"c": "NOTATYPE(3"}}}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("column `c`"), "{e}");
        Config::parse(r#"{"tables": {"a": {"target": "x"}, "b": {"target": "y"}}}"#).unwrap();
    }
}
