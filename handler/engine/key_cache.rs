//! Table files' key indexes ([`FileKeys`]) kept from one step to the next, and from one run to
//! the next in the handler, within a byte budget (`key_index_bytes`).
//!
//! An index is learned from a file's key column the first time a step reads it, and used by
//! every later step that probes the same file: the step then fetches nothing of that file but
//! its deletion vector. Entries are keyed by table, path and size; a Delta data file is never
//! rewritten under its name, so an entry can only go stale by its file leaving the table,
//! and such entries are dropped at the next step. Least recently used entries make room for
//! new ones; a file whose index alone exceeds the budget is not kept. In memory only: after a
//! restart the first step reads the key columns again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crdb_delta_core::key_index::FileKeys;

/// Default `key_index_bytes`: 20M integer keys (12 bytes each), or about 6M UUID keys.
pub const DEFAULT_KEY_INDEX_BYTES: u64 = 256 << 20;

/// A table file, as the cache knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileId {
    table: String,
    path: String,
    size: i64,
}

#[derive(Default)]
struct Inner {
    budget: u64,
    used: u64,
    /// Advanced at every use: an entry's last use orders evictions.
    clock: u64,
    files: HashMap<FileId, (Arc<FileKeys>, u64)>,
}

/// Shared by clones (one per process: `sync` keeps it for its run, the handler for its life).
#[derive(Clone)]
pub struct KeyCache(Arc<Mutex<Inner>>);

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyCache")
    }
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::new(DEFAULT_KEY_INDEX_BYTES)
    }
}

impl KeyCache {
    /// A cache holding at most `budget` bytes of indexes (0: none is kept).
    pub fn new(budget: u64) -> Self {
        Self(Arc::new(Mutex::new(Inner {
            budget,
            ..Inner::default()
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // An entry is inserted whole or not at all: a panic elsewhere leaves nothing half-done.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether indexes are kept at all.
    pub fn enabled(&self) -> bool {
        self.lock().budget > 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.lock().used
    }

    pub(super) fn get(&self, table: &str, path: &str, size: i64) -> Option<Arc<FileKeys>> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let id = FileId {
            table: table.to_owned(),
            path: path.to_owned(),
            size,
        };
        let (keys, used) = inner.files.get_mut(&id)?;
        *used = now;
        Some(keys.clone())
    }

    /// Keeps a file's index, evicting the least recently used ones to make room.
    pub(super) fn put(&self, table: &str, path: &str, size: i64, keys: FileKeys) {
        let bytes = keys.bytes();
        let mut inner = self.lock();
        if bytes > inner.budget {
            return;
        }
        while inner.used + bytes > inner.budget {
            let Some(oldest) = inner
                .files
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            if let Some((k, _)) = inner.files.remove(&oldest) {
                inner.used -= k.bytes();
            }
        }
        inner.clock += 1;
        let now = inner.clock;
        let id = FileId {
            table: table.to_owned(),
            path: path.to_owned(),
            size,
        };
        if let Some((old, _)) = inner.files.insert(id, (Arc::new(keys), now)) {
            inner.used -= old.bytes();
        }
        inner.used += bytes;
    }

    /// Drops the table's entries for files it no longer has (compacted, rewritten, vacuumed).
    pub(super) fn retain(&self, table: &str, live: &HashSet<&str>) {
        let mut inner = self.lock();
        let mut freed = 0;
        inner.files.retain(|id, (keys, _)| {
            let keep = id.table != table || live.contains(id.path.as_str());
            if !keep {
                freed += keys.bytes();
            }
            keep
        });
        inner.used -= freed;
    }
}
