//! `Status`: per table the last applied RESOLVED and its age, the Delta version, the buffered
//! files and the last error — read from the Delta logs and the handler's own objects, so any
//! instance answers the same.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use crdb_delta_core::format::names::ObjectName;
use crdb_delta_core::plan::Progress;
use serde::{Deserialize, Serialize};

use super::ServeError;
use super::store::{ErrorRecord, RunRecord, Store};
use crate::config::Config;
use crate::delta::{self, Target};
use crate::quarantine::{Action, Record};
use crate::storage::Location;

/// A table's Delta state.
#[derive(Debug, Clone)]
pub struct TableState {
    pub path: String,
    pub version: Option<u64>,
    pub progress: Progress,
}

/// Opens a table of `target` (its path from the config) read-only; `None` if not created yet.
pub async fn table_state(
    target: &Location,
    config: &Config,
    table: &str,
) -> Result<Option<TableState>, ServeError> {
    let path = config.target_path(table)?;
    let t = Target::new(target, &path).map_err(crate::engine::SyncError::from)?;
    let Some(tb) = t.open().await.map_err(crate::engine::SyncError::from)? else {
        return Ok(None);
    };
    let progress = delta::progress(&tb, &path)
        .await
        .map_err(crate::engine::SyncError::from)?;
    Ok(Some(TableState {
        path,
        version: tb.version(),
        progress,
    }))
}

/// One table in the status document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableStatus {
    /// Data files announced by events and not yet consumed by an apply.
    pub buffered_files: u64,
    pub last_error: Option<String>,
    /// A quarantined file holds the table (`crdb-delta quarantine`).
    pub stopped: bool,
    pub quarantined: Vec<Record>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `None` until the Delta table exists.
    pub delta_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_from: Option<String>,
}

/// The `Status` document: what any instance answers, read from the Delta logs and the
/// handler's own objects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusDoc {
    pub source: String,
    pub target: String,
    pub now: String,
    pub tables: BTreeMap<String, TableStatus>,
    /// RESOLVED files announced and not yet applied.
    pub resolved_waiting: Vec<String>,
    pub last_run: Option<RunRecord>,
    pub last_error: Option<ErrorRecord>,
    pub quarantined: Vec<Record>,
}

/// The status document of the handler whose objects `store` holds.
pub async fn status(
    store: &Store,
    source: &Location,
    target: &Location,
    config: &Config,
) -> Result<StatusDoc, ServeError> {
    let state = store.state().await?;
    let buffered = store.buffered().await?;
    let quarantined = crate::quarantine::Quarantine::new(target)
        .list()
        .await
        .map_err(crate::engine::SyncError::from)?;
    let mut per_table: BTreeMap<String, u64> = BTreeMap::new();
    let mut resolved_waiting = Vec::new();
    for b in &buffered {
        match &b.name {
            ObjectName::Data(d) => *per_table.entry(d.topic.table().to_owned()).or_default() += 1,
            ObjectName::Resolved(r) => resolved_waiting.push(r.to_string()),
        }
    }
    let names: BTreeSet<String> = state
        .tables
        .iter()
        .cloned()
        .chain(per_table.keys().cloned())
        .chain(quarantined.iter().map(|q| q.table.clone()))
        .collect();
    let now = Utc::now();
    let mut tables = BTreeMap::new();
    for name in names {
        let files: Vec<Record> = quarantined
            .iter()
            .filter(|q| q.table == name)
            .cloned()
            .collect();
        let mut entry = TableStatus {
            buffered_files: per_table.get(&name).copied().unwrap_or(0),
            last_error: state
                .last_error
                .as_ref()
                .filter(|e| e.message.contains(&format!("`{name}`")))
                .map(|e| e.message.clone()),
            stopped: files.iter().any(|q| q.action == Action::Hold),
            quarantined: files,
            ..TableStatus::default()
        };
        match table_state(target, config, &name).await {
            Ok(Some(t)) => {
                entry.target = Some(t.path);
                entry.delta_version = t.version;
                if let Some(a) = t.progress.applied {
                    let at = a.to_datetime();
                    entry.resolved = Some(a.to_string());
                    entry.resolved_at = Some(at.to_rfc3339());
                    entry.age_seconds =
                        Some(((now - at).num_milliseconds() as f64 / 1000.0).max(0.0));
                }
                entry.pending_from = t.progress.pending_from;
            }
            Ok(None) => {}
            Err(e) => entry.last_error = Some(e.to_string()),
        }
        tables.insert(name, entry);
    }
    Ok(StatusDoc {
        source: source.display.clone(),
        target: target.display.clone(),
        now: now.to_rfc3339(),
        tables,
        resolved_waiting,
        last_run: state.last_run,
        last_error: state.last_error,
        quarantined,
    })
}

/// The compact text form: one line per table.
impl std::fmt::Display for StatusDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} -> {}", self.source, self.target)?;
        for (name, t) in &self.tables {
            writeln!(
                f,
                "{name}: resolved {} (age {}), version {}, buffered {}{}",
                t.resolved.as_deref().unwrap_or("none"),
                t.age_seconds.map_or("-".into(), |a| format!("{a:.0} s")),
                t.delta_version.map_or("-".into(), |v| v.to_string()),
                t.buffered_files,
                t.last_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(", error: {e}")),
            )?;
            for q in &t.quarantined {
                writeln!(
                    f,
                    "  {} {}: {}",
                    if q.action == Action::Hold {
                        "STOPPED by"
                    } else {
                        "skipping"
                    },
                    q.file,
                    q.reason,
                )?;
            }
        }
        if let Some(e) = &self.last_error {
            writeln!(f, "last error ({}): {}", e.at, e.message)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monitoring reads these names: a rename must fail here.
    #[test]
    fn the_status_document_keeps_its_names_and_round_trips() {
        let mut tables = BTreeMap::new();
        tables.insert(
            "orders".to_owned(),
            TableStatus {
                buffered_files: 2,
                target: Some("orders".into()),
                delta_version: Some(7),
                resolved: Some("1.0000000000".into()),
                ..TableStatus::default()
            },
        );
        let doc = StatusDoc {
            source: "s".into(),
            target: "t".into(),
            now: "n".into(),
            tables,
            resolved_waiting: vec![],
            last_run: Some(RunRecord {
                invocation: "i-1".into(),
                at: "2026-12-02T13:00:00+00:00".into(),
                resolved: Some("1.0000000000".into()),
                steps: 1,
                events: 10,
                seconds: 0.5,
            }),
            last_error: None,
            quarantined: vec![],
        };
        let v = serde_json::to_value(&doc).unwrap();
        assert_eq!(v["last_run"]["resolved"], "1.0000000000");
        assert_eq!(v["last_run"]["invocation"], "i-1");
        assert_eq!(v["last_run"]["steps"], 1);
        assert_eq!(v["tables"]["orders"]["buffered_files"], 2);
        assert_eq!(v["tables"]["orders"]["delta_version"], 7);
        assert_eq!(v["tables"]["orders"]["resolved"], "1.0000000000");
        assert!(v["tables"]["orders"].get("age_seconds").is_none());
        assert_eq!(serde_json::from_value::<StatusDoc>(v).unwrap(), doc);
        assert!(
            doc.to_string()
                .contains("orders: resolved 1.0000000000 (age -), version 7, buffered 2")
        );
    }
}
