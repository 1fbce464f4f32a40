//! Poison files: a changefeed file that cannot be decoded or applied stops its table — only its
//! table — until an operator decides, and is never skipped silently.
//!
//! Records live below the target root, `_crdb_delta/quarantine/<file>.json` (the file's path
//! relative to the changefeed root), so `sync`, `serve` and every instance see the same:
//!
//! - `hold` (written by the engine when a file fails): the table is not applied; the other
//!   tables go on. `crdb-delta quarantine list` and the handler's Status show file and reason.
//! - `skip` (`crdb-delta quarantine skip <file>`): the table is applied without that file; the
//!   commit that passes over it names it in its commitInfo (`crdbDelta.figures.skippedFiles`).
//! - `crdb-delta quarantine retry <file>` deletes the record: the next run reads it again
//!   (after the file was replaced, or a config fixed the type).

use chrono::Utc;
use crdb_delta_core::format::names::ObjectName;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::storage::{Location, StorageError};

/// Below the target root (the handler's `_crdb_delta` folder: no table path can start with `_`).
pub const DIR: &str = "_crdb_delta/quarantine";

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("quarantine record {path}: {message}")]
    Record { path: String, message: String },
    #[error("`{0}` is not a changefeed data file path (give it as `quarantine list` shows it)")]
    NotAFile(String),
    #[error("`{0}` is not quarantined (see `crdb-delta quarantine list`)")]
    NotQuarantined(String),
}

/// What the engine does with a quarantined file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Its table waits for an operator.
    Hold,
    /// Its table is applied without it.
    Skip,
}

/// One quarantined file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub table: String,
    /// Path relative to the changefeed root.
    pub file: String,
    /// The error that stopped the table (file, line/row, column).
    pub reason: String,
    /// When it was quarantined (RFC 3339).
    pub at: String,
    pub action: Action,
    /// When an operator chose `skip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_at: Option<String>,
}

/// The quarantine of one target root.
pub struct Quarantine<'a> {
    target: &'a Location,
}

impl<'a> Quarantine<'a> {
    pub fn new(target: &'a Location) -> Self {
        Self { target }
    }

    /// The record path of a file, validated: only changefeed data file names become paths.
    fn path_of(&self, file: &str) -> Result<Path, QuarantineError> {
        match ObjectName::parse_relative(file) {
            Ok((ObjectName::Data(_), _)) => Ok(self.target.child(&format!("{DIR}/{file}.json"))?),
            _ => Err(QuarantineError::NotAFile(file.to_owned())),
        }
    }

    /// Every record, in file order.
    pub async fn list(&self) -> Result<Vec<Record>, QuarantineError> {
        let dir = self.target.child(DIR)?;
        let metas: Vec<_> = self
            .target
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(StorageError::from)?;
        let mut out = Vec::with_capacity(metas.len());
        for m in metas {
            let bytes = self
                .target
                .store
                .get(&m.location)
                .await
                .map_err(StorageError::from)?
                .bytes()
                .await
                .map_err(StorageError::from)?;
            let r: Record =
                serde_json::from_slice(&bytes).map_err(|e| QuarantineError::Record {
                    path: m.location.to_string(),
                    message: e.to_string(),
                })?;
            out.push(r);
        }
        out.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(out)
    }

    /// Quarantines a file that failed (`hold`).
    pub async fn hold(
        &self,
        table: &str,
        file: &str,
        reason: &str,
    ) -> Result<Record, QuarantineError> {
        let r = Record {
            table: table.to_owned(),
            file: file.to_owned(),
            reason: reason.to_owned(),
            at: Utc::now().to_rfc3339(),
            action: Action::Hold,
            skipped_at: None,
        };
        self.put(&r).await?;
        Ok(r)
    }

    /// An operator's `skip`: the table is applied without the file from now on.
    pub async fn skip(&self, file: &str) -> Result<Record, QuarantineError> {
        let mut r = self.get(file).await?;
        r.action = Action::Skip;
        r.skipped_at = Some(Utc::now().to_rfc3339());
        self.put(&r).await?;
        Ok(r)
    }

    /// An operator's `retry`: the record goes; the next run reads the file again.
    pub async fn retry(&self, file: &str) -> Result<Record, QuarantineError> {
        let r = self.get(file).await?;
        let path = self.path_of(file)?;
        self.target
            .store
            .delete(&path)
            .await
            .map_err(StorageError::from)?;
        Ok(r)
    }

    async fn get(&self, file: &str) -> Result<Record, QuarantineError> {
        let path = self.path_of(file)?;
        let got = match self.target.store.get(&path).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(QuarantineError::NotQuarantined(file.to_owned()));
            }
            Err(e) => return Err(StorageError::from(e).into()),
        };
        let bytes = got.bytes().await.map_err(StorageError::from)?;
        serde_json::from_slice(&bytes).map_err(|e| QuarantineError::Record {
            path: path.to_string(),
            message: e.to_string(),
        })
    }

    async fn put(&self, r: &Record) -> Result<(), QuarantineError> {
        let path = self.path_of(&r.file)?;
        let body = serde_json::to_vec_pretty(r).map_err(|e| QuarantineError::Record {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        self.target
            .store
            .put(&path, body.into())
            .await
            .map_err(StorageError::from)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_names_are_validated() {
        let r = Record {
            table: "orders".into(),
            file: "2026-01-01/x.ndjson".into(),
            reason: "line 3: broken".into(),
            at: "2026-01-01T00:00:00Z".into(),
            action: Action::Skip,
            skipped_at: Some("2026-01-02T00:00:00Z".into()),
        };
        let back: Record = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert!(
            serde_json::to_string(&r)
                .unwrap()
                .contains("\"action\":\"skip\"")
        );
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::open(dir.path().to_str().unwrap()).unwrap();
        let q = Quarantine::new(&loc);
        for bad in ["../../etc/passwd", "2026-01-01/notes.txt", "x.RESOLVED"] {
            assert!(
                matches!(q.path_of(bad), Err(QuarantineError::NotAFile(_))),
                "{bad}"
            );
        }
    }
}
