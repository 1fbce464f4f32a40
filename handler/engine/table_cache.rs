//! Delta tables kept open from one run to the next in the handler (`serve`), brought up to date
//! instead of opened again.
//!
//! Each RESOLVED invocation opened the `_crdb_delta_resolved` record and every table afresh
//! (listing the log, reading the checkpoint and the commits since) and read their progress back
//! from the log: on Azurite about 80 of a 10k-change window's 260 ms (docs/benchmarks.md). A
//! table kept here is brought up to date with [`DeltaTable::update_incremental`] (one listing
//! past its version, and the commits found there: other writers'), and what was derived from
//! it (a table's progress, the last record) is reused only when no commit came since. The kept
//! version's commit file is checked first (its ETag, taken when kept): a log cleaned past it,
//! or a table deleted and created again at the same path, is opened afresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crdb_delta_core::plan::Progress;
use deltalake_core::DeltaTable;
use object_store::ObjectStoreExt as _;
use object_store::path::Path;

use super::listing::LastRecord;
use crate::delta::{DeltaError, Target};

/// What was derived from a kept table at its version.
#[derive(Clone, Default)]
pub(super) struct Derived {
    pub(super) progress: Option<Progress>,
    pub(super) record: Option<LastRecord>,
}

#[derive(Clone)]
struct Entry {
    table: DeltaTable,
    /// The ETag of the kept version's commit file.
    tag: String,
    derived: Derived,
}

/// Shared by clones: one per `serve` process.
#[derive(Clone, Default)]
pub struct TableCache(Arc<Mutex<HashMap<String, Entry>>>);

impl std::fmt::Debug for TableCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TableCache")
    }
}

impl TableCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The table at `target` as of now (`None`: not created yet): the kept one brought up to
    /// date when its log is still the one it was kept from, else opened. With what was derived
    /// from it when no commit came since it was kept.
    pub(super) async fn open(
        &self,
        target: &Target,
    ) -> Result<(Option<DeltaTable>, Derived), DeltaError> {
        let url = target.url.to_string();
        let kept = self.lock().get(&url).cloned();
        if let Some(Entry {
            mut table,
            tag,
            derived,
        }) = kept
        {
            let version = table.version();
            if version_tag(&table).await.as_deref() == Some(tag.as_str())
                && table.update_incremental(None).await.is_ok()
            {
                let derived = if table.version() == version {
                    derived
                } else {
                    Derived::default()
                };
                return Ok((Some(table), derived));
            }
            tracing::debug!(table = %target.path, "kept table not current; opened afresh");
            self.lock().remove(&url);
        }
        Ok((target.open().await?, Derived::default()))
    }

    /// Keeps `table` (its state as of its version) with what was derived from it at that
    /// version. Not kept when its commit file cannot be read.
    pub(super) async fn keep(&self, target: &Target, table: &DeltaTable, derived: Derived) {
        if let Some(tag) = version_tag(table).await {
            self.lock().insert(
                target.url.to_string(),
                Entry {
                    table: table.clone(),
                    tag,
                    derived,
                },
            );
        }
    }
}

/// The table at `target` from `cache` ([`TableCache::open`]), or opened afresh without one
/// (nothing derived).
pub(super) async fn open(
    cache: Option<&TableCache>,
    target: &Target,
) -> Result<(Option<DeltaTable>, Derived), DeltaError> {
    match cache {
        Some(c) => c.open(target).await,
        None => Ok((target.open().await?, Derived::default())),
    }
}

/// The ETag (or, where a store has none, size and time) of the commit file of `table`'s
/// version.
async fn version_tag(table: &DeltaTable) -> Option<String> {
    let version = table.version()?;
    let path = Path::from(format!("_delta_log/{version:020}.json"));
    let meta = table
        .log_store()
        .object_store(None)
        .head(&path)
        .await
        .ok()?;
    Some(
        meta.e_tag
            .unwrap_or_else(|| format!("{}@{}", meta.size, meta.last_modified)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Location;
    use arrow_schema::{DataType, Field, Schema};

    fn kept_progress(d: &Derived) -> bool {
        d.progress.is_some()
    }

    #[tokio::test]
    async fn a_kept_table_is_brought_up_to_date_and_one_created_again_is_opened_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let root = Location::open(dir.path().to_str().unwrap()).unwrap();
        let target = Target::new(&root, "t").unwrap();
        let schema = Schema::new(vec![Field::new("id", DataType::Int64, false)]);
        let cache = TableCache::default();
        // Not created yet: nothing kept, nothing opened.
        let (none, derived) = cache.open(&target).await.unwrap();
        assert!(none.is_none() && !kept_progress(&derived));

        let created = target.create_with(&schema, vec![]).await.unwrap();
        let progress = Derived {
            progress: Some(Progress::default()),
            record: None,
        };
        cache.keep(&target, &created, progress.clone()).await;
        // No commit since: what was derived is reused.
        let (t, derived) = cache.open(&target).await.unwrap();
        assert_eq!(t.unwrap().version(), Some(0));
        assert!(kept_progress(&derived));

        // Another writer commits: brought up to date, nothing derived reused.
        let other = target.open().await.unwrap().unwrap();
        crate::delta::enable_deletion_vectors(other, "t")
            .await
            .unwrap();
        let (t, derived) = cache.open(&target).await.unwrap();
        let t = t.unwrap();
        assert_eq!(t.version(), Some(1));
        assert!(crate::delta::has_deletion_vectors(&t));
        assert!(!kept_progress(&derived));
        cache.keep(&target, &t, progress.clone()).await;

        // The table deleted and created again, to the same version: its commit file is another
        // file, so the kept state is not used.
        std::fs::remove_dir_all(dir.path().join("t")).unwrap();
        let again = target.create_with(&schema, vec![]).await.unwrap();
        let again = crate::delta::enable_deletion_vectors(again, "t")
            .await
            .unwrap();
        assert_eq!(again.version(), Some(1));
        let (t, derived) = cache.open(&target).await.unwrap();
        assert_eq!(t.unwrap().version(), Some(1));
        assert!(!kept_progress(&derived));
    }
}
