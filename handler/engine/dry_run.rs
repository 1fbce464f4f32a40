//! `sync --dry-run`: the steps a run would apply, from the listing and each table's progress,
//! without reading a data file or writing anything (plan, then execute — here only plan).

use std::collections::BTreeMap;

use crdb_delta_core::Hlc;
use crdb_delta_core::plan::{self, Progress, Slices};
use serde::Serialize;

use super::listing::list;
use super::{SyncError, SyncOptions};
use crate::delta::{self, Target};
use crate::storage::Location;

/// One step a run would make: every table listed advances to `resolved`.
#[derive(Debug, Serialize)]
pub struct PlannedStep {
    pub resolved: Hlc,
    /// The RESOLVED as a wall time (UTC).
    pub resolved_at: String,
    pub tables: BTreeMap<String, PlannedTable>,
}

#[derive(Debug, Serialize)]
pub struct PlannedTable {
    pub files: usize,
    pub stored_bytes: u64,
    /// Decoded bytes as the planner estimates them (what `max_window_bytes` counts).
    pub estimated_bytes: u64,
    /// Commits the interval would take in key slices (an interval larger than the window).
    pub slices: Option<u32>,
    /// Whether the table does not exist yet.
    pub new: bool,
}

/// The steps from the tables' current progress to the newest RESOLVED (or `opts.until`).
/// A file found to hold rows past a step's RESOLVED is read again by the next step; that is
/// known only by reading it, so such re-reads are not counted here.
pub async fn plan_run(
    source: &Location,
    target: Option<&Location>,
    opts: &SyncOptions,
) -> Result<Vec<PlannedStep>, SyncError> {
    let (mut objects, _ignored) = list(source).await?;
    plan::keep_tables(&mut objects, &|t| opts.config.applies(t));
    let mut progress: BTreeMap<String, Progress> = BTreeMap::new();
    let mut new = BTreeMap::new();
    for name in plan::tables(&objects) {
        let existing = match target {
            Some(t) => {
                let path = opts.config.target_path(&name)?;
                Target::new(t, &path)?.open().await?.map(|tb| (tb, path))
            }
            None => None,
        };
        let p = match &existing {
            Some((tb, path)) => delta::progress(tb, path).await?,
            None => Progress::default(),
        };
        new.insert(name.clone(), existing.is_none());
        progress.insert(name, p);
    }
    let expansion = plan::Expansion::default();
    let weigh = |o: &plan::Object| expansion.weigh(o);
    let mut steps = Vec::new();
    while let Some(step) = plan::next_step_weighed(
        &objects,
        &progress,
        opts.max_window_bytes,
        opts.until,
        opts.each_resolved,
        &weigh,
    ) {
        let mut tables = BTreeMap::new();
        for (name, files) in &step.tables {
            let stored_bytes = files.iter().map(|&i| objects[i].size).sum();
            let estimated_bytes: u64 = files.iter().map(|&i| weigh(&objects[i])).sum();
            let slices = (!step.shrinkable)
                .then(|| {
                    Slices::plan(
                        step.resolved,
                        estimated_bytes,
                        opts.max_window_bytes,
                        opts.min_slice_bytes,
                    )
                })
                .flatten()
                .map(|s| s.of);
            tables.insert(
                name.clone(),
                PlannedTable {
                    files: files.len(),
                    stored_bytes,
                    estimated_bytes,
                    slices,
                    new: new.get(name).copied().unwrap_or(true),
                },
            );
            new.insert(name.clone(), false);
            progress.insert(
                name.clone(),
                Progress {
                    applied: Some(step.resolved),
                    ..Progress::default()
                },
            );
        }
        steps.push(PlannedStep {
            resolved: step.resolved,
            resolved_at: step.resolved.to_datetime().to_rfc3339(),
            tables,
        });
    }
    Ok(steps)
}
