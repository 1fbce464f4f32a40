//! Where each Delta table below a target root stands (`crdb-delta status --target`, and the
//! Delta side of `crdb-delta changefeed show`): the RESOLVED applied, the Delta version, the file
//! it resumes from, and the quarantined files.

use chrono::Utc;
use crdb_delta_core::Hlc;
use serde_json::{Value, json};

use crate::quarantine::{Action, Quarantine};
use crate::storage::Location;

#[derive(Debug, thiserror::Error)]
#[error("status of {target}: {message}")]
pub struct StatusError {
    pub target: String,
    pub message: String,
}

/// One Delta table of the target.
#[derive(Debug, Clone)]
pub struct TableStatus {
    pub table: String,
    pub applied: Option<Hlc>,
    /// The JSON row `status --json` prints.
    pub row: Value,
}

/// Every Delta table below `target` (the RESOLVED log excluded), in name order.
pub async fn target_status(target: &str) -> Result<Vec<TableStatus>, StatusError> {
    let err = |e: &dyn std::fmt::Display| StatusError {
        target: crate::storage::redact(target),
        message: e.to_string(),
    };
    let loc = Location::open_existing(target).map_err(|e| err(&e))?;
    let quarantined = Quarantine::new(&loc).list().await.map_err(|e| err(&e))?;
    let now = Utc::now();
    let mut out = Vec::new();
    for (name, path) in crate::unity_catalog::discover_tables(target)
        .await
        .map_err(|e| err(&e))?
    {
        if path == crate::engine::RESOLVED_LOG {
            continue;
        }
        let t = crate::delta::Target::new(&loc, &path).map_err(|e| err(&e))?;
        let Some(tb) = t.open().await.map_err(|e| err(&e))? else {
            continue;
        };
        let p = crate::delta::progress(&tb, &path)
            .await
            .map_err(|e| err(&e))?;
        let files: Vec<_> = quarantined.iter().filter(|q| q.table == name).collect();
        let row = json!({
            "table": name,
            "path": path,
            "version": tb.version(),
            "resolved": p.applied.map(|h| h.to_string()),
            "resolved_at": p.applied.map(|h| h.to_datetime().to_rfc3339()),
            "age_seconds": p.applied.map(|h| (now - h.to_datetime()).num_seconds()),
            "pending_from": p.pending_from,
            // An interval too large for one window, part-way through its key slices.
            "slices": p.slices.map(|s| json!({"resolved": s.resolved.to_string(), "done": s.done, "of": s.of})),
            "stopped": files.iter().any(|q| q.action == Action::Hold),
            "quarantined": files,
        });
        out.push(TableStatus {
            table: name,
            applied: p.applied,
            row,
        });
    }
    Ok(out)
}
