//! `inspect`: reads a changefeed root and summarises it: tables, families, schema versions,
//! files, rows per operation, HLC range, RESOLVED watermarks, derived primary keys and decode
//! throughput. Objects that are not changefeed files are listed, never decoded.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use arrow_array::cast::AsArray;
use arrow_array::types::Decimal128Type;
use crdb_delta_core::Hlc;
use crdb_delta_core::format::batch::{OP, UPDATED};
use crdb_delta_core::format::decode::resolved::decode_resolved;
use crdb_delta_core::format::decode::{self, DecodeError, DecodeOptions};
use crdb_delta_core::format::keys::{self, KeyEvidence};
use crdb_delta_core::format::names::ObjectName;
use crdb_delta_core::format::types::ColumnType;
use serde::Serialize;

use crate::config::{Config, TableConfig};
use crate::storage::{Location, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("decoder task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    List(Box<crate::engine::SyncError>),
}

#[derive(Debug, Default, Serialize)]
pub struct TableSummary {
    pub families: BTreeSet<String>,
    pub schema_ids: BTreeSet<u64>,
    pub files: usize,
    pub bytes: u64,
    pub rows: u64,
    pub upserts: u64,
    pub deletes: u64,
    pub min_updated: Option<Hlc>,
    pub max_updated: Option<Hlc>,
    /// Derived primary key (empty when not known, see `primary_key_error`).
    pub primary_key: Vec<String>,
    pub primary_key_error: Option<String>,
    /// Column → Delta type.
    pub columns: BTreeMap<String, String>,
    #[serde(skip)]
    evidence: BTreeMap<String, KeyEvidence>,
    #[serde(skip)]
    types: BTreeMap<String, ColumnType>,
    /// Some files are NDJSON: their types were inferred from JSON values, not read.
    #[serde(skip)]
    json: bool,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub source: String,
    pub tables: BTreeMap<String, TableSummary>,
    pub resolved_files: usize,
    pub last_resolved: Option<Hlc>,
    pub ignored: Vec<String>,
    pub data_files: usize,
    pub bytes: u64,
    pub rows: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
    pub rows_per_s: f64,
}

/// Reads every object under `source`, one data file at a time (memory: one file + one batch).
pub async fn inspect(source: &Location, batch_size: usize) -> Result<Summary, InspectError> {
    let started = Instant::now();
    let (listed, ignored) = crate::engine::list(source)
        .await
        .map_err(|e| InspectError::List(Box::new(e)))?;
    let mut objects = Vec::with_capacity(listed.len());
    for o in listed {
        let path = source.child(&o.path)?;
        objects.push((o.name, o.path, path));
    }

    let mut tables: BTreeMap<String, TableSummary> = BTreeMap::new();
    let (mut resolved_files, mut last_resolved, mut data_files, mut bytes_total, mut rows_total) =
        (0, None, 0, 0u64, 0u64);
    for (name, rel, path) in objects {
        let bytes = source.get_bytes(&path).await?;
        match name {
            ObjectName::Resolved(ts) => {
                decode_resolved(&rel, bytes, Some(ts))?;
                resolved_files += 1;
                last_resolved = Some(ts);
            }
            ObjectName::Data(d) => {
                data_files += 1;
                bytes_total += bytes.len() as u64;
                let table = tables.entry(d.topic.table().to_owned()).or_default();
                let family = d.topic.family().unwrap_or("primary").to_owned();
                table.families.insert(family.clone());
                table.schema_ids.insert(d.schema_id);
                table.json |= d.format == crdb_delta_core::format::names::Format::Json;
                table.files += 1;
                table.bytes += bytes.len() as u64;
                let opts = DecodeOptions {
                    batch_size,
                    ..DecodeOptions::default()
                };
                let (stats, evidence, types) =
                    tokio::task::spawn_blocking(move || decode_file(&d, &rel, bytes, &opts))
                        .await??;
                table.rows += stats.rows;
                table.upserts += stats.upserts;
                table.deletes += stats.deletes;
                table.min_updated = table.min_updated.min(stats.min).or(stats.min);
                table.max_updated = table.max_updated.max(stats.max);
                table.evidence.entry(family).or_default().merge(&evidence);
                for (c, t) in types {
                    let w = table.types.get(&c).map_or(t.clone(), |cur| cur.widen(&t));
                    table.types.insert(c, w);
                }
                rows_total += stats.rows;
            }
        }
    }
    for (name, t) in &mut tables {
        let ev: Vec<&KeyEvidence> = t.evidence.values().collect();
        match keys::primary_key(name, None, &ev) {
            Ok(k) => t.primary_key = k,
            Err(e) => t.primary_key_error = Some(e.to_string()),
        }
        t.columns = t
            .types
            .iter()
            .map(|(c, ty)| (c.clone(), ty.delta_type()))
            .collect();
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Summary {
        source: source.display.clone(),
        tables,
        resolved_files,
        last_resolved,
        ignored,
        data_files,
        bytes: bytes_total,
        rows: rows_total,
        seconds,
        mb_per_s: bytes_total as f64 / 1e6 / seconds.max(1e-9),
        rows_per_s: rows_total as f64 / seconds.max(1e-9),
    })
}

impl Summary {
    /// A configuration from what was read — each table's key (when the files show it) and its
    /// columns' types as SQL types — for a person to check and give to `sync --config`, with
    /// notes on what is a guess. Exact types come from CockroachDB (`crdb-delta schema`).
    pub fn proposed_config(&self) -> (Config, Vec<String>) {
        let mut config = Config::default();
        let mut notes = Vec::new();
        for (name, t) in &self.tables {
            let primary_key = match &t.primary_key_error {
                None if !t.primary_key.is_empty() => Some(t.primary_key.clone()),
                _ => {
                    notes.push(format!(
                        "{name}: key unknown ({}): set tables.{name}.primary_key",
                        t.primary_key_error.as_deref().unwrap_or("no evidence")
                    ));
                    None
                }
            };
            if t.json {
                let guessed: Vec<&str> = t
                    .types
                    .iter()
                    .filter(|(_, ty)| {
                        matches!(
                            ty,
                            ColumnType::Int64 | ColumnType::Float64 | ColumnType::Text
                        )
                    })
                    .map(|(c, _)| c.as_str())
                    .collect();
                if !guessed.is_empty() {
                    notes.push(format!(
                        "{name}: types inferred from JSON values — check {}: JSON numbers become \
                         INT8 (no fraction seen) or FLOAT8, text becomes STRING, and a column seen \
                         only as NULL is not listed; CockroachDB's DECIMAL, INT4, UUID, \
                         TIMESTAMP… need their own SQL types",
                        guessed.join(", ")
                    ));
                }
            }
            if t.families.len() > 1 && !t.families.contains("primary") {
                notes.push(format!(
                    "{name}: several column families, none named `primary`: set \
                     tables.{name}.primary_family to family 0's name"
                ));
            }
            config.tables.insert(
                name.clone(),
                TableConfig {
                    primary_key,
                    primary_family: (t.families.len() > 1 && t.families.contains("primary"))
                        .then(|| "primary".to_owned()),
                    columns: t
                        .types
                        .iter()
                        .map(|(c, ty)| (c.clone(), ty.sql_type()))
                        .collect(),
                    ..TableConfig::default()
                },
            );
        }
        (config, notes)
    }
}

#[derive(Default)]
struct FileStats {
    rows: u64,
    upserts: u64,
    deletes: u64,
    min: Option<Hlc>,
    max: Option<Hlc>,
}

fn decode_file(
    d: &crdb_delta_core::DataFileName,
    rel: &str,
    bytes: bytes::Bytes,
    opts: &DecodeOptions,
) -> Result<(FileStats, KeyEvidence, BTreeMap<String, ColumnType>), DecodeError> {
    let mut stream = decode::decode_bytes(d, rel, bytes, opts)?;
    let mut s = FileStats::default();
    for batch in stream.by_ref() {
        let batch = batch?;
        s.rows += batch.num_rows() as u64;
        let ops = batch
            .column_by_name(OP)
            .expect("meta column")
            .as_string::<i32>();
        let deletes = ops.iter().filter(|o| *o == Some("d")).count() as u64;
        s.deletes += deletes;
        s.upserts += batch.num_rows() as u64 - deletes;
        let upd = batch
            .column_by_name(UPDATED)
            .expect("meta column")
            .as_primitive::<Decimal128Type>();
        for v in upd.values() {
            let h = Hlc::from_decimal_i128(*v);
            s.min = s.min.min(h).or(h);
            s.max = s.max.max(h);
        }
    }
    Ok((
        s,
        stream.key_evidence().clone(),
        stream.column_types().clone(),
    ))
}

/// A compact human-readable report.
impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "changefeed {}: {} data files, {} RESOLVED (last {}), {:.1} MB, {} rows",
            self.source,
            self.data_files,
            self.resolved_files,
            self.last_resolved.map_or("none".into(), |h| h.to_string()),
            self.bytes as f64 / 1e6,
            self.rows
        )?;
        for (name, t) in &self.tables {
            let key = match &t.primary_key_error {
                None => t.primary_key.join(", "),
                Some(e) => format!("unknown: {e}"),
            };
            writeln!(
                f,
                "  {name}: families [{}], schema ids {:?}, {} files, {} rows ({} upserts, {} deletes), key ({key})",
                t.families.iter().cloned().collect::<Vec<_>>().join(", "),
                t.schema_ids,
                t.files,
                t.rows,
                t.upserts,
                t.deletes
            )?;
            writeln!(
                f,
                "    updated {} .. {}",
                t.min_updated.map_or("-".into(), |h| h.to_string()),
                t.max_updated.map_or("-".into(), |h| h.to_string())
            )?;
            let cols: Vec<String> = t
                .columns
                .iter()
                .map(|(c, ty)| format!("{c} {ty}"))
                .collect();
            writeln!(f, "    columns: {}", cols.join(", "))?;
        }
        for i in &self.ignored {
            writeln!(f, "  ignored: {i}")?;
        }
        writeln!(
            f,
            "decoded in {:.2} s: {:.1} MB/s, {:.0} rows/s",
            self.seconds, self.mb_per_s, self.rows_per_s
        )?;
        Ok(())
    }
}
