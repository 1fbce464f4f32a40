//! Documents written in one place and read in another, typed so a renamed field fails a test,
//! not a run: our commitInfo entry (progress and figures) in every Delta commit we make.
//! (The handler's Status and `last_run` documents live in `serve::status`.)

use crdb_delta_core::format::names::PartitionFormat;
use crdb_delta_core::plan::Progress;
use serde::{Deserialize, Serialize};

/// commitInfo key holding our [`CommitRecord`].
pub const COMMIT_KEY: &str = "crdbDelta";

/// Our entry in a commit's commitInfo: what was applied and what it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// Exactly where the table is: the RESOLVED applied and where reading resumes.
    pub progress: Progress,
    pub figures: Figures,
}

/// What the commit did, by the table it went to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Figures {
    /// `_crdb_delta_resolved`: what the next run's bounded listing needs.
    ResolvedLog(ResolvedLogFigures),
    /// A data table's commit: the changes applied and the files written (Databricks'
    /// `DESCRIBE HISTORY` shows them in commitInfo).
    Table(TableFigures),
    /// A compaction by `crdb-delta maintain` (rows unchanged).
    Maintenance(MaintenanceFigures),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceFigures {
    pub files_compacted: u64,
    pub files_written: u64,
    /// Rows hidden by the purged deletion vectors.
    pub rows_purged: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableFigures {
    /// Distinct changes (column families merged, duplicates dropped).
    pub events: u64,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub duplicates: u64,
    pub files_added: u64,
    pub files_removed: u64,
    /// Files an operator skipped (`crdb-delta quarantine skip`) that this commit passes over.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_files: Vec<String>,
    /// The key slice this commit applied, of an interval applied in slices (`done` counts
    /// it): the interval's rows are complete only at the commit where `done == of`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<crdb_delta_core::plan::Slices>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedLogFigures {
    /// The tables recorded at this RESOLVED (each one row).
    pub tables: Vec<String>,
    /// How the changefeed partitions its files (where a bounded listing may start).
    pub partition: Option<PartitionName>,
}

/// [`PartitionFormat`] as the record spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionName {
    Daily,
    Hourly,
    Flat,
}

impl From<PartitionFormat> for PartitionName {
    fn from(p: PartitionFormat) -> Self {
        match p {
            PartitionFormat::Daily => Self::Daily,
            PartitionFormat::Hourly => Self::Hourly,
            PartitionFormat::Flat => Self::Flat,
        }
    }
}

impl From<PartitionName> for PartitionFormat {
    fn from(p: PartitionName) -> Self {
        match p {
            PartitionName::Daily => Self::Daily,
            PartitionName::Hourly => Self::Hourly,
            PartitionName::Flat => Self::Flat,
        }
    }
}

impl CommitRecord {
    /// Ours from a commit's commitInfo map, when it has one we can read.
    pub fn from_commit_info(
        info: &std::collections::HashMap<String, serde_json::Value>,
    ) -> Option<Self> {
        let v = info.get(COMMIT_KEY)?;
        match serde_json::from_value(v.clone()) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable crdbDelta commitInfo entry; ignored");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdb_delta_core::Hlc;
    use serde_json::json;

    /// The names in the log are a format: earlier commits must stay readable.
    #[test]
    fn commit_records_keep_their_wire_names_and_round_trip() {
        let table = CommitRecord {
            progress: Progress {
                slices: None,
                applied: Some(Hlc::new(1_700_000_000_000_000_000, 3)),
                pending_from: Some("2026-01-01/f.ndjson".into()),
            },
            figures: Figures::Table(TableFigures {
                events: 5,
                inserted: 1,
                updated: 2,
                deleted: 3,
                duplicates: 0,
                files_added: 1,
                files_removed: 1,
                skipped_files: vec!["x.ndjson".into()],
                slice: None,
            }),
        };
        let v = serde_json::to_value(&table).unwrap();
        assert_eq!(
            v,
            json!({
                "progress": {"applied": "1700000000000000000.0000000003", "pendingFrom": "2026-01-01/f.ndjson"},
                "figures": {"events": 5, "inserted": 1, "updated": 2, "deleted": 3, "duplicates": 0,
                            "filesAdded": 1, "filesRemoved": 1, "skippedFiles": ["x.ndjson"]}
            })
        );
        assert_eq!(serde_json::from_value::<CommitRecord>(v).unwrap(), table);

        let log = CommitRecord {
            progress: Progress::default(),
            figures: Figures::ResolvedLog(ResolvedLogFigures {
                tables: vec!["a".into(), "b".into()],
                partition: Some(PartitionName::Hourly),
            }),
        };
        let v = serde_json::to_value(&log).unwrap();
        assert_eq!(
            v["figures"],
            json!({"tables": ["a", "b"], "partition": "hourly"})
        );
        assert_eq!(serde_json::from_value::<CommitRecord>(v).unwrap(), log);
        // Written before skippedFiles existed: still a table record.
        let old = json!({"progress": {"applied": null, "pendingFrom": null},
                         "figures": {"events": 1, "inserted": 1, "updated": 0, "deleted": 0,
                                     "duplicates": 0, "filesAdded": 1, "filesRemoved": 0}});
        let r: CommitRecord = serde_json::from_value(old).unwrap();
        assert!(matches!(r.figures, Figures::Table(t) if t.skipped_files.is_empty()));
        // Part-way through an interval applied in key slices.
        let sliced = CommitRecord {
            progress: Progress {
                slices: Some(crdb_delta_core::plan::Slices {
                    resolved: Hlc::new(1_700_000_000_000_000_000, 3),
                    of: 4,
                    done: 1,
                }),
                ..Progress::default()
            },
            figures: Figures::Table(TableFigures {
                slice: Some(crdb_delta_core::plan::Slices {
                    resolved: Hlc::new(1_700_000_000_000_000_000, 3),
                    of: 4,
                    done: 1,
                }),
                ..TableFigures::default()
            }),
        };
        let v = serde_json::to_value(&sliced).unwrap();
        assert_eq!(
            v["progress"],
            json!({"applied": null, "pendingFrom": null,
                   "slices": {"resolved": "1700000000000000000.0000000003", "of": 4, "done": 1}})
        );
        assert_eq!(v["figures"]["slice"]["of"], 4);
        assert_eq!(serde_json::from_value::<CommitRecord>(v).unwrap(), sliced);
    }
}
