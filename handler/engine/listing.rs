//! Listing the changefeed root (bounded by the last `_crdb_delta_resolved` record where one
//! exists) and fetching its objects.

use crdb_delta_core::Hlc;
use crdb_delta_core::format::decode::{self};
use crdb_delta_core::format::names::{ObjectName, PartitionFormat};
use crdb_delta_core::plan::{self, Object};
use futures::{StreamExt, TryStreamExt};

use super::table::{TableState, open_table};
use super::table_cache::{self, Derived, TableCache};
use super::{RESOLVED_LOG, SyncError, SyncOptions, delta_err};
use crate::records::{CommitRecord, Figures, ResolvedLogFigures};

use crate::delta::Target;
use crate::storage::{Location, StorageError};
use deltalake_core::DeltaTable;

/// Lists the changefeed root: changefeed objects sorted by name; anything else is reported.
pub async fn list(source: &Location) -> Result<(Vec<Object>, Vec<String>), SyncError> {
    let metas: Vec<_> = source
        .store
        .list(Some(&source.prefix))
        .try_collect()
        .await
        .map_err(StorageError::from)?;
    Ok(collect_objects(source, metas))
}

pub(super) fn collect_objects(
    source: &Location,
    metas: Vec<object_store::ObjectMeta>,
) -> (Vec<Object>, Vec<String>) {
    let mut objects = Vec::new();
    let mut ignored = Vec::new();
    for m in metas {
        let Some(rel) = source.relative(&m.location) else {
            continue;
        };
        match ObjectName::parse_relative(&rel) {
            Ok((name, _)) => objects.push(Object {
                name,
                path: rel,
                size: m.size,
                modified: Some(m.last_modified.timestamp_millis()),
            }),
            Err(e) => {
                tracing::warn!(object = %rel, error = %e, "not a changefeed file; skipped");
                ignored.push(e.to_string());
            }
        }
    }
    objects.sort_by_cached_key(|o| o.name.clone());
    (objects, ignored)
}

/// The newest `_crdb_delta_resolved` record: its tables, the changefeed's partitioning and the
/// RESOLVED it recorded.
#[derive(Clone)]
pub(super) struct LastRecord {
    pub(super) tables: Vec<String>,
    pub(super) partition: PartitionFormat,
    pub(super) resolved: Option<Hlc>,
}

/// The newest record, past commits that are not records (compactions of the record table itself
/// and VACUUM's start/end commits, or another tool's); `None` without one. With `cache` (the
/// handler), the record table is kept open, and its record reused while no commit came since.
pub(super) async fn last_record(
    target: &Location,
    cache: Option<&TableCache>,
) -> Result<Option<LastRecord>, SyncError> {
    let log = Target::new(target, RESOLVED_LOG)?;
    let (table, derived) = table_cache::open(cache, &log).await?;
    let Some(table) = table else {
        return Ok(None);
    };
    if let Some(record) = derived.record {
        return Ok(Some(record));
    }
    let record = newest_record(&table).await?;
    if let Some(c) = cache {
        let derived = Derived {
            record: record.clone(),
            progress: None,
        };
        c.keep(&log, &table, derived).await;
    }
    Ok(record)
}

/// [`last_record`] of the record table as opened.
async fn newest_record(table: &DeltaTable) -> Result<Option<LastRecord>, SyncError> {
    let mut history = table.history(Some(20));
    while let Some(info) = history
        .next()
        .await
        .transpose()
        .map_err(delta_err(RESOLVED_LOG))?
    {
        return Ok(match CommitRecord::from_commit_info(&info.info) {
            None
            | Some(CommitRecord {
                figures: Figures::Maintenance(_),
                ..
            }) => continue,
            Some(CommitRecord {
                progress,
                figures:
                    Figures::ResolvedLog(ResolvedLogFigures {
                        tables,
                        partition: Some(partition),
                    }),
            }) => Some(LastRecord {
                tables,
                partition: partition.into(),
                resolved: progress.applied,
            }),
            _ => None,
        });
    }
    Ok(None)
}

/// Lists only what can still matter: objects from the partition of the oldest applied RESOLVED
/// (or of the oldest file that still held newer rows) on, as recorded by the last step in
/// `_crdb_delta_resolved`. `None` when that is not known: list everything.
pub(super) async fn bounded_listing(
    source: &Location,
    target: &Location,
    opts: &SyncOptions,
) -> Result<Option<(Vec<Object>, Vec<String>, Vec<TableState>)>, SyncError> {
    let Some(LastRecord {
        tables: names,
        partition,
        ..
    }) = last_record(target, opts.table_cache.as_ref()).await?
    else {
        return Ok(None);
    };
    let mut start: Option<String> = None;
    let mut opened = Vec::with_capacity(names.len());
    for name in &names {
        // A run of some tables (`only_tables`, one table of a fan-out) opens and lists for
        // those alone.
        if !opts.config.applies(name) {
            continue;
        }
        // Opened once here and handed to the run, which then does not open them again.
        let state = open_table(target, name, opts).await?;
        if state.table.is_none() {
            return Ok(None);
        }
        let p = &state.progress;
        let key = match (p.applied, p.pending_from.as_deref()) {
            (None, _) | (_, Some(plan::PENDING_ALL)) => return Ok(None),
            (Some(a), pending) => {
                let r =
                    plan::partition_start(&ObjectName::Resolved(a).render(partition), partition);
                match pending {
                    Some(pf) => r.min(plan::partition_start(pf, partition)),
                    None => r,
                }
            }
        };
        start = Some(start.map_or(key.clone(), |s| s.min(key)));
        opened.push(state);
    }
    let Some(start) = start.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let (objects, ignored) = list_from(source, &start).await?;
    Ok(Some((objects, ignored, opened)))
}

/// Lists the changefeed root from `start` (a path relative to it) on, as [`list`] does.
pub(super) async fn list_from(
    source: &Location,
    start: &str,
) -> Result<(Vec<Object>, Vec<String>), SyncError> {
    let offset = source.child(start)?;
    let metas: Vec<_> = source
        .store
        .list_with_offset(Some(&source.prefix), &offset)
        .try_collect()
        .await
        .map_err(StorageError::from)?;
    tracing::debug!(from = %start, objects = metas.len(), "bounded listing");
    Ok(collect_objects(source, metas))
}

/// How the changefeed partitions its files, from the first listed object's path.
pub(super) fn partition_of(objects: &[Object]) -> Option<PartitionFormat> {
    objects
        .first()
        .and_then(|o| ObjectName::parse_relative(&o.path).ok())
        .map(|(_, p)| p)
}

pub(super) async fn fetch(source: &Location, obj: &Object) -> Result<bytes::Bytes, SyncError> {
    let path = source.child(&obj.path)?;
    Ok(source.get_bytes(&path).await?)
}

/// Reads the RESOLVED object a step applies and refuses one whose content disagrees with its
/// name (a renamed or hand-made object): the name alone decides nothing that is committed.
pub(super) async fn check_resolved_content(
    source: &Location,
    objects: &[Object],
    resolved: Hlc,
) -> Result<(), SyncError> {
    let Some(obj) = objects
        .iter()
        .find(|o| o.name == ObjectName::Resolved(resolved))
    else {
        return Ok(());
    };
    let bytes = fetch(source, obj).await?;
    decode::resolved::decode_resolved(&obj.path, bytes, Some(resolved))?;
    Ok(())
}
