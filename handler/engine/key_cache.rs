//! Table files' key indexes ([`FileKeys`]) kept from one step to the next, and from one run to
//! the next in the handler, within a byte budget (`key_index_bytes`).
//!
//! An index is learned from a file's key column the first time a step reads it, and used by
//! every later step that probes the same file: the step then fetches nothing of that file but
//! its deletion vector. Entries are keyed by table, path and size; a Delta data file is never
//! rewritten under its name, so an entry can only go stale by its file leaving the table,
//! and such entries are dropped at the next step. Least recently used entries make room for
//! new ones, but never those the current step used: a table larger than the budget keeps a
//! stable part of its files indexed instead of evicting each file just before the next step
//! needs it again. A file whose index alone exceeds the budget is not kept. In memory only:
//! after a restart the first step reads the key columns again.
//!
//! Beside the indexes, each file's latest deletion vector, by its Delta unique id: a step
//! touches every file of a large table (random keys), and each file's deletion vector was read
//! again at every step (at 20M rows, 28 reads of the previous step's `.bin` per step). A
//! deletion vector is never rewritten under its id, so an entry can only be superseded (the
//! file given a new one, by us or another writer: its id differs and it is read) or go with
//! its file. Counted in the budget; one that does not fit is read each time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crdb_delta_core::deletion_vector::DeletionVector;
use crdb_delta_core::key_index::FileKeys;

/// Default `key_index_bytes`: 40M integer keys (12–13 bytes each), 25M UUID keys (20–21) or
/// 23M `(crdb_region, INT8)` keys (23 bytes: hash, position, directory, region code, id);
/// with a step's own peak (under 1 GiB at the default window) within a 2 GB instance.
pub const DEFAULT_KEY_INDEX_BYTES: u64 = 512 << 20;

/// A table file, as the cache knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileId {
    table: String,
    path: String,
    size: i64,
}

impl FileId {
    fn new(table: &str, path: &str, size: i64) -> Self {
        Self {
            table: table.to_owned(),
            path: path.to_owned(),
            size,
        }
    }
}

#[derive(Default)]
struct Inner {
    budget: u64,
    used: u64,
    /// Advanced at every use: an entry's last use orders evictions.
    clock: u64,
    /// The clock when the latest step started: entries used since are not evicted.
    step_start: u64,
    files: HashMap<FileId, (Arc<FileKeys>, u64)>,
    /// (table, path) → the file's latest deletion vector known: its unique id, the vector and
    /// the bytes counted for it.
    dvs: HashMap<(String, String), (String, DeletionVector, u64)>,
    /// Tables that made a step with this cache.
    tables: HashSet<String>,
    /// Indexes are learned from a table's first step, not its second
    /// ([`KeyCache::learning_from_first_step`]).
    from_first_step: bool,
}

impl Inner {
    /// The clock, advanced.
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Drops `table`'s entries for files not in `live`.
    fn drop_gone(&mut self, table: &str, live: &HashSet<&str>) {
        let mut freed = 0;
        self.files.retain(|id, (keys, _)| {
            let keep = id.table != table || live.contains(id.path.as_str());
            if !keep {
                freed += keys.bytes();
            }
            keep
        });
        self.dvs.retain(|(t, path), (_, _, bytes)| {
            let keep = t != table || live.contains(path.as_str());
            if !keep {
                freed += *bytes;
            }
            keep
        });
        self.used -= freed;
    }
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

    /// This cache, learning indexes from a table's first step: for a process that lives for
    /// many steps (the handler), where waiting for the second step cost each new instance a
    /// second read of every key column (677.5 MB, about a second, at 20M UUID rows).
    pub fn learning_from_first_step(self) -> Self {
        self.lock().from_first_step = true;
        self
    }

    /// Whether indexes are kept at all.
    pub fn enabled(&self) -> bool {
        self.lock().budget > 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.lock().used
    }

    /// The files of a table (by its URL) whose index is held.
    pub fn paths(&self, table: &str) -> Vec<String> {
        let inner = self.lock();
        let ids = inner.files.keys().filter(|id| id.table == table);
        ids.map(|id| id.path.clone()).collect()
    }

    pub(super) fn get(&self, table: &str, path: &str, size: i64) -> Option<Arc<FileKeys>> {
        let mut inner = self.lock();
        let now = inner.tick();
        let (keys, used) = inner.files.get_mut(&FileId::new(table, path, size))?;
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
            let step_start = inner.step_start;
            let Some(oldest) = inner
                .files
                .iter()
                .filter(|(_, (_, used))| *used < step_start)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| id.clone())
            else {
                return;
            };
            if let Some((k, _)) = inner.files.remove(&oldest) {
                inner.used -= k.bytes();
            }
        }
        let now = inner.tick();
        let id = FileId::new(table, path, size);
        if let Some((old, _)) = inner.files.insert(id, (Arc::new(keys), now)) {
            inner.used -= old.bytes();
        }
        inner.used += bytes;
    }

    /// The deletion vector of `path` whose Delta unique id is `id`, if it is the one held.
    pub(super) fn deletion_vector(
        &self,
        table: &str,
        path: &str,
        id: &str,
    ) -> Option<DeletionVector> {
        let inner = self.lock();
        let (held, dv, _) = inner.dvs.get(&(table.to_owned(), path.to_owned()))?;
        (held == id).then(|| dv.clone())
    }

    /// Keeps `dv` as the deletion vector of `path` (unique id `id`), in place of the one held;
    /// not kept when it does not fit the budget (nothing is evicted for it).
    pub(super) fn put_deletion_vector(
        &self,
        table: &str,
        path: &str,
        id: String,
        dv: DeletionVector,
    ) {
        // Its serialized size, and the entry's own: roughly what it holds.
        let bytes = dv.treemap().serialized_size() as u64 + (path.len() + id.len()) as u64 + 64;
        let mut inner = self.lock();
        let key = (table.to_owned(), path.to_owned());
        if let Some((_, _, old)) = inner.dvs.remove(&key) {
            inner.used -= old;
        }
        if inner.used + bytes <= inner.budget {
            inner.used += bytes;
            inner.dvs.insert(key, (id, dv, bytes));
        }
    }

    /// At the start of a table's step: drops the table's entries for files it no longer has
    /// (compacted, rewritten, vacuumed). Whether this step learns indexes: from a table's
    /// second step with this cache on, so a process that makes one step (`sync --until` per
    /// RESOLVED) spends nothing on them; from its first when the cache is
    /// [`Self::learning_from_first_step`].
    pub(super) fn retain(&self, table: &str, live: &HashSet<&str>) -> bool {
        let mut inner = self.lock();
        inner.step_start = inner.tick();
        let learns = !inner.tables.insert(table.to_owned()) || inner.from_first_step;
        inner.drop_gone(table, live);
        learns
    }

    /// Whether `table` (by its URL) made a step with this cache: its indexes were learned, or
    /// are being kept, by its steps.
    pub(super) fn stepped(&self, table: &str) -> bool {
        self.lock().tables.contains(table)
    }

    /// Before a warm-up of `table` ([`super::warm`]): drops its entries for files it no longer
    /// has, as a step's [`Self::retain`] does, without counting as a step.
    pub(super) fn forget_gone(&self, table: &str, live: &HashSet<&str>) {
        self.lock().drop_gone(table, live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, Int64Array};
    use arrow_schema::{DataType, Field};

    /// A file index of `rows` (at most 64) integer keys in key order: 8 bytes a row, and 8
    /// for the fence's one key.
    fn keys(rows: i64) -> FileKeys {
        let column: ArrayRef = Arc::new(Int64Array::from_iter_values(0..rows));
        let field = Arc::new(Field::new("id", DataType::Int64, false));
        FileKeys::build(field, &[column]).unwrap()
    }

    fn step(cache: &KeyCache, live: &[&str]) -> bool {
        cache.retain("t", &live.iter().copied().collect())
    }

    #[test]
    fn a_step_keeps_what_it_uses_and_files_that_left_the_table_go() {
        // Room for two files of 10 rows.
        let cache = KeyCache::new(176);
        // The table's first step with this cache, then not.
        assert!(!step(&cache, &["a", "b", "c"]));
        assert!(step(&cache, &["a", "b", "c"]));
        cache.put("t", "a", 1, keys(10));
        cache.put("t", "b", 1, keys(10));
        assert_eq!(cache.bytes(), 176);
        // Another size is another file.
        assert!(cache.get("t", "a", 2).is_none());
        // The next step uses both: a third file is not kept at their expense.
        step(&cache, &["a", "b", "c"]);
        assert!(cache.get("t", "a", 1).is_some() && cache.get("t", "b", 1).is_some());
        cache.put("t", "c", 1, keys(10));
        assert!(cache.get("t", "c", 1).is_none());
        // A step that uses only `a`: `b`, unused since, makes room for `c`.
        step(&cache, &["a", "b", "c"]);
        assert!(cache.get("t", "a", 1).is_some());
        cache.put("t", "c", 1, keys(10));
        assert!(cache.get("t", "c", 1).is_some() && cache.get("t", "b", 1).is_none());
        // `a` left the table (compacted away); another table's entry stays.
        step(&cache, &["c"]);
        assert!(cache.get("t", "a", 1).is_none());
        cache.put("u", "a", 1, keys(5));
        step(&cache, &["c"]);
        assert!(cache.get("u", "a", 1).is_some());
        assert_eq!(cache.bytes(), 88 + 48);
        // An index larger than the budget is not kept.
        cache.put("t", "big", 1, keys(22));
        assert!(cache.get("t", "big", 1).is_none());
        assert!(!KeyCache::new(0).enabled());
    }

    #[test]
    fn a_deletion_vector_is_found_by_its_id_until_superseded_or_its_file_leaves() {
        let cache = KeyCache::new(1 << 20);
        step(&cache, &["a", "b"]);
        let dv = |rows: &[u64]| {
            let mut dv = DeletionVector::new();
            rows.iter().for_each(|&r| {
                dv.insert(r);
            });
            dv
        };
        cache.put_deletion_vector("t", "a", "u1".into(), dv(&[1, 2]));
        assert_eq!(cache.deletion_vector("t", "a", "u1"), Some(dv(&[1, 2])));
        // Another id (a newer vector, ours or another writer's): not this one.
        assert_eq!(cache.deletion_vector("t", "a", "u2"), None);
        assert_eq!(cache.deletion_vector("t", "b", "u1"), None);
        assert_eq!(cache.deletion_vector("u", "a", "u1"), None);
        // Superseded: only the newer one is held, and counted once.
        let one = cache.bytes();
        cache.put_deletion_vector("t", "a", "u2".into(), dv(&[1, 2, 3]));
        assert_eq!(cache.deletion_vector("t", "a", "u1"), None);
        assert_eq!(cache.deletion_vector("t", "a", "u2"), Some(dv(&[1, 2, 3])));
        assert!(cache.bytes() > one && cache.bytes() < 2 * one);
        // Its file left the table: dropped, its bytes freed.
        step(&cache, &["b"]);
        assert_eq!(cache.deletion_vector("t", "a", "u2"), None);
        assert_eq!(cache.bytes(), 0);
        // Over the budget: not kept.
        let small = KeyCache::new(64);
        small.put_deletion_vector("t", "a", "u1".into(), dv(&[1]));
        assert_eq!(small.deletion_vector("t", "a", "u1"), None);
        assert_eq!(small.bytes(), 0);
    }
}
