//! `Status`: per table the last applied RESOLVED and its age, the Delta version, the buffered
//! files and the last error — read from the Delta logs and the handler's own objects, so any
//! instance answers the same.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use crdb_delta_core::format::names::ObjectName;
use crdb_delta_core::plan::Progress;
use serde_json::{Value, json};

use super::ServeError;
use super::app::App;
use crate::config::Config;
use crate::delta::{self, Target};
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

/// The status document.
pub async fn status(app: &App) -> Result<Value, ServeError> {
    let state = app.store.state().await?;
    let buffered = app.store.buffered().await?;
    let quarantined = crate::quarantine::Quarantine::new(&app.target)
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
    let mut tables = serde_json::Map::new();
    for name in names {
        let error = state
            .last_error
            .as_ref()
            .filter(|e| e.message.contains(&format!("`{name}`")))
            .map(|e| e.message.clone());
        let files: Vec<&crate::quarantine::Record> =
            quarantined.iter().filter(|q| q.table == name).collect();
        let stopped = files
            .iter()
            .any(|q| q.action == crate::quarantine::Action::Hold);
        let mut entry = json!({
            "buffered_files": per_table.get(&name).copied().unwrap_or(0),
            "last_error": error,
            "stopped": stopped,
            "quarantined": files,
        });
        match table_state(&app.target, &app.settings.config, &name).await {
            Ok(Some(t)) => {
                entry["target"] = json!(t.path);
                entry["delta_version"] = json!(t.version);
                if let Some(a) = t.progress.applied {
                    let at = a.to_datetime();
                    entry["resolved"] = json!(a.to_string());
                    entry["resolved_at"] = json!(at.to_rfc3339());
                    entry["age_seconds"] =
                        json!(((now - at).num_milliseconds() as f64 / 1000.0).max(0.0));
                }
                entry["pending_from"] = json!(t.progress.pending_from);
            }
            Ok(None) => entry["delta_version"] = Value::Null,
            Err(e) => entry["last_error"] = json!(e.to_string()),
        }
        tables.insert(name, entry);
    }
    Ok(json!({
        "source": app.source.display,
        "target": app.target.display,
        "now": now.to_rfc3339(),
        "tables": tables,
        "resolved_waiting": resolved_waiting,
        "last_run": state.last_run,
        "last_error": state.last_error,
        "quarantined": quarantined,
    }))
}

/// The compact text form: one line per table.
pub fn render(v: &Value) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} -> {}",
        v["source"].as_str().unwrap_or("?"),
        v["target"].as_str().unwrap_or("?")
    );
    if let Some(tables) = v["tables"].as_object() {
        for (name, t) in tables {
            let _ = writeln!(
                s,
                "{name}: resolved {} (age {}), version {}, buffered {}{}",
                t["resolved"].as_str().unwrap_or("none"),
                t["age_seconds"]
                    .as_f64()
                    .map_or("-".into(), |a| format!("{a:.0} s")),
                t["delta_version"]
                    .as_u64()
                    .map_or("-".into(), |v| v.to_string()),
                t["buffered_files"].as_u64().unwrap_or(0),
                t["last_error"]
                    .as_str()
                    .map_or(String::new(), |e| format!(", error: {e}")),
            );
            for q in t["quarantined"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    s,
                    "  {} {}: {}",
                    if q["action"] == "hold" {
                        "STOPPED by"
                    } else {
                        "skipping"
                    },
                    q["file"].as_str().unwrap_or("?"),
                    q["reason"].as_str().unwrap_or("?"),
                );
            }
        }
    }
    if let Some(e) = v["last_error"]["message"].as_str() {
        let _ = writeln!(
            s,
            "last error ({}): {e}",
            v["last_error"]["at"].as_str().unwrap_or("?")
        );
    }
    s
}
