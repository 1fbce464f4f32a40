//! Documents written in one place and read in another, typed so a renamed field fails a test,
//! not a run: our commitInfo entry (progress and figures) in every Delta commit we make, and
//! our table properties. (The handler's Status and `last_run` documents live in
//! `serve::status` and `serve::store`; the simulator's manifest in `crdb_delta_core::sim`.)

use std::collections::{BTreeMap, HashMap};

use crdb_delta_core::apply::Mode;
use crdb_delta_core::format::names::PartitionFormat;
use crdb_delta_core::plan::Progress;
use serde::{Deserialize, Serialize};

/// Our table properties (Databricks shows them with `SHOW TBLPROPERTIES`): how the table is
/// keyed and merged, read back whenever a run opens it so every run keys it as the first did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableProperties {
    pub key: Vec<String>,
    /// `None` only for a table written before the mode was recorded.
    pub mode: Option<Mode>,
    pub split_families: bool,
    /// Family → its columns.
    pub families: BTreeMap<String, Vec<String>>,
}

/// A table property of ours that does not read back.
#[derive(Debug, thiserror::Error)]
#[error("table property `{name}` = `{value}`: {message}")]
pub struct PropertyError {
    pub name: &'static str,
    pub value: String,
    pub message: String,
}

impl TableProperties {
    pub const KEY: &'static str = "crdb_delta.primaryKey";
    pub const MODE: &'static str = "crdb_delta.mode";
    pub const FAMILIES: &'static str = "crdb_delta.columnFamilies";
    pub const SPLIT: &'static str = "crdb_delta.splitColumnFamilies";

    /// The properties as the Delta table's `configuration` holds them.
    pub fn to_configuration(&self) -> Vec<(String, String)> {
        let mut out = vec![(Self::KEY.into(), serde_json::json!(self.key).to_string())];
        if let Some(m) = self.mode {
            out.push((Self::MODE.into(), m.to_string()));
        }
        out.push((Self::SPLIT.into(), self.split_families.to_string()));
        out.push((
            Self::FAMILIES.into(),
            serde_json::json!(self.families).to_string(),
        ));
        out
    }

    /// `Ok(None)`: no key property, so not a table crdb-delta created. A property that is
    /// there but does not parse is an error (a silent default would re-key or re-mode it).
    pub fn from_configuration(
        conf: &HashMap<String, String>,
    ) -> Result<Option<Self>, PropertyError> {
        let bad = |name: &'static str, value: &str, message: String| PropertyError {
            name,
            value: value.to_owned(),
            message,
        };
        let Some(key) = conf.get(Self::KEY) else {
            return Ok(None);
        };
        let key: Vec<String> =
            serde_json::from_str(key).map_err(|e| bad(Self::KEY, key, e.to_string()))?;
        let mode = conf
            .get(Self::MODE)
            .map(|m| {
                m.parse().map_err(|e: crdb_delta_core::apply::UnknownMode| {
                    bad(Self::MODE, m, e.to_string())
                })
            })
            .transpose()?;
        let split_families = match conf.get(Self::SPLIT).map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(bad(Self::SPLIT, other, "not true or false".into())),
        };
        let families = conf
            .get(Self::FAMILIES)
            .map(|f| serde_json::from_str(f).map_err(|e| bad(Self::FAMILIES, f, e.to_string())))
            .transpose()?
            .unwrap_or_default();
        Ok(Some(Self {
            key,
            mode,
            split_families,
            families,
        }))
    }
}

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

/// commitInfo key Databricks' `DESCRIBE HISTORY` shows as `operationMetrics` (string values).
pub const OPERATION_METRICS_KEY: &str = "operationMetrics";

impl Figures {
    /// The figures under the names Databricks uses in `operationMetrics` (MERGE's row counts,
    /// OPTIMIZE's file counts), as strings, as Delta writers record them.
    pub fn operation_metrics(&self) -> BTreeMap<&'static str, String> {
        let mut m = BTreeMap::new();
        match self {
            Figures::Table(t) => {
                m.insert("numSourceRows", t.events.to_string());
                m.insert("numTargetRowsInserted", t.inserted.to_string());
                m.insert("numTargetRowsUpdated", t.updated.to_string());
                m.insert("numTargetRowsDeleted", t.deleted.to_string());
                m.insert("numAddedFiles", t.files_added.to_string());
                m.insert("numRemovedFiles", t.files_removed.to_string());
            }
            Figures::Maintenance(f) => {
                m.insert("numAddedFiles", f.files_written.to_string());
                m.insert("numRemovedFiles", f.files_compacted.to_string());
            }
            Figures::ResolvedLog(r) => {
                m.insert("numOutputRows", r.tables.len().to_string());
            }
        }
        m
    }
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

    /// Table properties are read back by every run and shown by Databricks: names and
    /// spellings pinned; a value that does not parse is an error, never a default.
    #[test]
    fn table_properties_keep_their_names_and_refuse_what_does_not_parse() {
        let props = TableProperties {
            key: vec!["region".into(), "id".into()],
            mode: Some(Mode::Scd2),
            split_families: true,
            families: [("primary".to_owned(), vec!["id".to_owned()])].into(),
        };
        let conf: HashMap<String, String> = props.to_configuration().into_iter().collect();
        assert_eq!(conf["crdb_delta.primaryKey"], r#"["region","id"]"#);
        assert_eq!(conf["crdb_delta.mode"], "scd2");
        assert_eq!(conf["crdb_delta.splitColumnFamilies"], "true");
        assert_eq!(conf["crdb_delta.columnFamilies"], r#"{"primary":["id"]}"#);
        assert_eq!(
            TableProperties::from_configuration(&conf).unwrap(),
            Some(props)
        );
        // Not ours; an old table without mode and families.
        assert_eq!(
            TableProperties::from_configuration(&HashMap::new()).unwrap(),
            None
        );
        let old: HashMap<String, String> =
            [("crdb_delta.primaryKey".to_owned(), r#"["id"]"#.to_owned())].into();
        let read = TableProperties::from_configuration(&old).unwrap().unwrap();
        assert_eq!((read.mode, read.split_families), (None, false));
        for (name, value) in [
            ("crdb_delta.mode", "upsert"),
            ("crdb_delta.columnFamilies", "[1"),
            ("crdb_delta.splitColumnFamilies", "yes"),
            ("crdb_delta.primaryKey", "id"),
        ] {
            let mut bad = conf.clone();
            bad.insert(name.into(), value.into());
            let e = TableProperties::from_configuration(&bad).unwrap_err();
            assert!(
                e.to_string().contains(name) && e.to_string().contains(value),
                "{e}"
            );
        }
    }

    /// Databricks shows these in DESCRIBE HISTORY: names pinned, values strings.
    #[test]
    fn figures_become_databricks_operation_metrics() {
        let t = Figures::Table(TableFigures {
            events: 10,
            inserted: 4,
            updated: 5,
            deleted: 1,
            files_added: 2,
            files_removed: 1,
            ..TableFigures::default()
        });
        let m = t.operation_metrics();
        assert_eq!(m["numTargetRowsInserted"], "4");
        assert_eq!(m["numTargetRowsUpdated"], "5");
        assert_eq!(m["numTargetRowsDeleted"], "1");
        assert_eq!(m["numSourceRows"], "10");
        assert_eq!(
            (m["numAddedFiles"].as_str(), m["numRemovedFiles"].as_str()),
            ("2", "1")
        );
        let c = Figures::Maintenance(MaintenanceFigures {
            files_compacted: 7,
            files_written: 1,
            rows_purged: 3,
        });
        assert_eq!(c.operation_metrics()["numRemovedFiles"], "7");
    }
}
