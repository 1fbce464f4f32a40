//! One RESOLVED applied table by table, possibly by several instances at once: which tables it
//! covers, and its multi-table record once every one of them is there.
//!
//! Each table's apply is an ordinary run restricted to that table (`only_tables`), stopped at
//! the RESOLVED (`until`) and without a record of its own ([`SyncOptions::record`] off): its
//! commit is exactly once through the table's own `txn`, whoever runs it and however often.
//! The record needs every table's version *at* the RESOLVED, which only each table's apply
//! knows; the caller keeps them ([`RecordRow`]) and calls [`record`] when all are there.

use crdb_delta_core::Hlc;
use crdb_delta_core::format::names::ObjectName;
use crdb_delta_core::plan;

use super::listing::{last_record, list, list_from, partition_of};
use super::resolved_log::{ResolvedLog, record_resolved};
use super::{RESOLVED_LOG, SyncError, SyncOptions};
use crate::delta::{Checkpoints, Target};
use crate::records::PartitionName;
use crate::storage::Location;

pub use super::resolved_log::RecordRow;

/// The tables one RESOLVED covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cover {
    /// The RESOLVED: the one asked for, else the newest listed (`None`: none listed yet).
    pub resolved: Option<Hlc>,
    /// Tables the run would advance to it: those with a file at or before it, and those
    /// already in the last record (they advance without files). Sorted.
    pub tables: Vec<String>,
    /// How the changefeed partitions its files (what the record keeps for bounded listings).
    pub partition: Option<PartitionName>,
}

/// The tables RESOLVED `until` covers (the newest listed RESOLVED when `None`), as a run of
/// all tables up to it would apply them (the same `only_tables`).
pub async fn cover(
    source: &Location,
    target: &Location,
    opts: &SyncOptions,
    until: Option<Hlc>,
) -> Result<Cover, SyncError> {
    // From the last record's RESOLVED on: a table it does not name had no file up to it, so
    // every file of such a table is listed there. No table is opened (a RESOLVED of many
    // tables is dispatched in one listing).
    let record = last_record(target, opts.table_cache.as_ref()).await?;
    let start = record.as_ref().and_then(|r| {
        let recorded = ObjectName::Resolved(r.resolved?).render(r.partition);
        Some(plan::partition_start(&recorded, r.partition)).filter(|s| !s.is_empty())
    });
    let recorded_partition = record.as_ref().map(|r| r.partition);
    let (mut objects, known) = match (record, start) {
        (Some(r), Some(start)) => (list_from(source, &start).await?.0, r.tables),
        _ => (list(source).await?.0, Vec::new()),
    };
    // Nothing listed since the record (a RESOLVED event ahead of its listing): the record's.
    let partition = partition_of(&objects)
        .or(recorded_partition)
        .map(Into::into);
    plan::keep_tables(&mut objects, &|t| opts.config.applies(t));
    // A RESOLVED far ahead of the clock is never the newest to fan out (a run refuses it too).
    let (now, tolerance) = clock(opts);
    plan::refuse_future_resolved(&mut objects, now, tolerance);
    let resolved = until.or_else(|| {
        objects
            .iter()
            .filter_map(|o| match o.name {
                ObjectName::Resolved(r) => Some(r),
                ObjectName::Data(_) => None,
            })
            .max()
    });
    let Some(resolved) = resolved else {
        return Ok(Cover {
            resolved: None,
            tables: Vec::new(),
            partition,
        });
    };
    objects.retain(|o| match &o.name {
        ObjectName::Data(d) => d.ts <= resolved,
        ObjectName::Resolved(_) => false,
    });
    let mut tables = plan::tables(&objects);
    tables.extend(known.into_iter().filter(|t| opts.config.applies(t)));
    tables.sort();
    tables.dedup();
    Ok(Cover {
        resolved: Some(resolved),
        tables,
        partition,
    })
}

/// Why `resolved` is refused, when it is further ahead of the clock than
/// `max_resolved_ahead` (as a run refuses it: [`plan::refuse_future_resolved`]).
pub fn refused(resolved: Hlc, opts: &SyncOptions) -> Option<String> {
    let (now, tolerance) = clock(opts);
    let mut one = vec![plan::Object {
        name: ObjectName::Resolved(resolved),
        path: resolved.to_string(),
        size: 0,
        modified: None,
    }];
    plan::refuse_future_resolved(&mut one, now, tolerance)
        .into_iter()
        .next()
        .map(|r| r.reason)
}

/// Now and the tolerance for RESOLVEDs ahead of it, in wall nanoseconds.
fn clock(opts: &SyncOptions) -> (i64, i64) {
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    let tolerance = i64::try_from(opts.max_resolved_ahead.as_nanos()).unwrap_or(i64::MAX);
    (now, tolerance)
}

/// Writes the record of `resolved` from each table's version at it (exactly once: the record
/// table's `txn`; nothing when it or a newer RESOLVED is recorded already).
pub async fn record(
    target: &Location,
    resolved: Hlc,
    rows: &[RecordRow],
    partition: Option<PartitionName>,
    checkpoints: &Checkpoints,
) -> Result<(), SyncError> {
    let mut log = ResolvedLog::new(Target::new(target, RESOLVED_LOG)?, checkpoints.clone());
    let mut rows = rows.to_vec();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    record_resolved(&mut log, resolved, &rows, partition.map(Into::into), false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolved_far_ahead_of_the_clock_is_refused_as_a_run_refuses_it() {
        let opts = SyncOptions {
            max_resolved_ahead: std::time::Duration::from_secs(60),
            ..SyncOptions::default()
        };
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
        let at = |s: i64| Hlc {
            wall: now + s * 1_000_000_000,
            logical: 0,
        };
        assert_eq!(refused(at(-3600), &opts), None);
        assert_eq!(refused(at(30), &opts), None);
        let why = refused(at(3600), &opts).expect("an hour ahead is refused");
        assert!(why.contains("ahead of this machine's clock"), "{why}");
    }
}
