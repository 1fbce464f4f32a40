//! A sliced interval's changefeed files kept on local disk for its later slices.
//!
//! Every key slice of an interval larger than the window reads all of the interval's files
//! again ([`crdb_delta_core::plan::Slices`]): an initial scan of 4 GB in 33 slices fetches 140 GB
//! from storage. With a cache (`slice_cache_bytes`), the first pass of a run over the interval
//! writes each file it fetches to a private folder, and later passes read it from there: the
//! bytes are the object's own, so every pass decodes exactly what it would have fetched.
//! Bounded by bytes (files past the budget are fetched each pass); a file whose listing
//! (size or modification time) no longer matches what was kept is fetched again. The folder
//! is removed when the cache is dropped (the interval's last slice, a re-plan, the process's
//! end); one left by a killed process is in the system's temporary folder (`TMPDIR`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use crdb_delta_core::Hlc;
use crdb_delta_core::plan::Object;

use super::slice_spill::SliceSpill;

/// Caches created by this process, for unique folder names.
static CREATED: AtomicU64 = AtomicU64::new(0);

/// Shared by a table's passes and the tasks that fetch ahead; cheap to clone.
#[derive(Clone)]
pub struct SliceCache {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    budget: u64,
    /// The RESOLVED that ends the interval whose files these are.
    interval: Hlc,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The interval's rows cut by slice, once a pass wrote them ([`SliceSpill`], in the same
    /// folder): the later slices read those instead of the files, which are then let go.
    spill: Option<Arc<SliceSpill>>,
    /// A pass's spill did not fit the budget: no later pass of the interval tries again (each
    /// try decodes the files whole).
    spill_refused: bool,
    /// Object path → its kept copy.
    files: HashMap<String, Entry>,
    /// Bytes kept or being written.
    bytes: u64,
    /// The next local file name.
    next: u64,
}

struct Entry {
    /// File name in the folder: a number, never derived from the object's name.
    local: u64,
    size: u64,
    modified: Option<i64>,
    /// Written whole (until then, `get` does not see it).
    ready: bool,
}

impl SliceCache {
    /// An empty cache of at most `budget` bytes for the interval to `interval`, in a new folder
    /// below `root`, readable by this user only (the files are table data).
    pub fn new(root: &Path, budget: u64, interval: Hlc) -> std::io::Result<Self> {
        let dir = loop {
            let n = CREATED.fetch_add(1, Ordering::Relaxed);
            let dir = root.join(format!("crdb-delta-slices-{}-{n}", std::process::id()));
            let mut builder = std::fs::DirBuilder::new();
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            match builder.create(&dir) {
                Ok(()) => break dir,
                // Left by an earlier process of the same id.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                dir,
                budget,
                interval,
                state: Mutex::default(),
            }),
        })
    }

    /// The RESOLVED that ends its interval.
    pub fn interval(&self) -> Hlc {
        self.inner.interval
    }

    /// The folder the files are kept in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Bytes kept.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.state().bytes
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves only counts behind: still usable.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The object's bytes as kept, when they are and its listing still matches (blocking).
    /// A copy that cannot be read whole is forgotten (the caller fetches the object).
    pub fn get(&self, obj: &Object) -> Option<Bytes> {
        let local = {
            let state = self.state();
            let e = state.files.get(&obj.path)?;
            (e.ready && e.size == obj.size && e.modified == obj.modified).then_some(e.local)?
        };
        match std::fs::read(self.inner.dir.join(local.to_string())) {
            Ok(v) if v.len() as u64 == obj.size => Some(Bytes::from(v)),
            _ => {
                self.forget(&obj.path);
                None
            }
        }
    }

    /// Keeps `bytes` as `obj`'s, when the budget has room (blocking). A failed write keeps
    /// nothing: the cache only saves fetches, so it is logged, not returned.
    pub fn put(&self, obj: &Object, bytes: &Bytes) {
        let size = bytes.len() as u64;
        if size != obj.size {
            return;
        }
        let local = {
            let mut state = self.state();
            if state.files.contains_key(&obj.path) || state.bytes + size > self.inner.budget {
                return;
            }
            state.bytes += size;
            state.next += 1;
            let local = state.next;
            state.files.insert(
                obj.path.clone(),
                Entry {
                    local,
                    size,
                    modified: obj.modified,
                    ready: false,
                },
            );
            local
        };
        match std::fs::write(self.inner.dir.join(local.to_string()), bytes) {
            Ok(()) => {
                if let Some(e) = self.state().files.get_mut(&obj.path) {
                    e.ready = true;
                }
            }
            Err(e) => {
                tracing::warn!(dir = %self.inner.dir.display(), error = %e, "slice cache: a file could not be kept; later slices fetch it");
                self.forget(&obj.path);
            }
        }
    }

    /// The spill a pass wrote, if any.
    pub fn spill(&self) -> Option<Arc<SliceSpill>> {
        self.state().spill.clone()
    }

    /// Keeps the spill a pass wrote (in [`Self::dir`]).
    pub fn set_spill(&self, spill: SliceSpill) {
        self.state().spill = Some(Arc::new(spill));
    }

    /// Lets the files kept so far go (blocking): a pass reads the spill, so the later ones
    /// will too. Until then they stay, for a pass that cannot use the spill (it decodes
    /// under other options) and writes it again from them.
    pub fn release_files(&self) {
        let paths: Vec<String> = self.state().files.keys().cloned().collect();
        for p in paths {
            self.forget(&p);
        }
    }

    /// Whether a pass's spill did not fit.
    pub fn spill_refused(&self) -> bool {
        self.state().spill_refused
    }

    /// Notes that a pass's spill did not fit.
    pub fn refuse_spill(&self) {
        self.state().spill_refused = true;
    }

    fn forget(&self, path: &str) {
        let mut state = self.state();
        if let Some(e) = state.files.remove(path) {
            state.bytes -= e.size;
            let _ = std::fs::remove_file(self.inner.dir.join(e.local.to_string()));
        }
    }
}

/// The slice caches of tables whose sliced interval a run left part-way (its time budget
/// spent), kept for the process's next run (the handler's next invocation): that run's slices
/// read the files and spilled rows the earlier passes kept instead of fetching and decoding
/// them again. One per table (by target path); taken by the run that opens the table.
#[derive(Clone, Default)]
pub struct SliceCaches(Arc<Mutex<HashMap<String, SliceCache>>>);

impl std::fmt::Debug for SliceCaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SliceCaches")
    }
}

impl SliceCaches {
    /// The cache kept for `table`, taken out.
    pub(super) fn take(&self, table: &str) -> Option<SliceCache> {
        self.0.lock().ok()?.remove(table)
    }

    /// Keeps `cache` for `table`'s next run.
    pub(super) fn put(&self, table: &str, cache: SliceCache) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(table.to_owned(), cache);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "slice cache: folder not removed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdb_delta_core::format::names::ObjectName;

    fn object(path: &str, size: u64, modified: i64) -> Object {
        Object {
            name: ObjectName::parse_relative(path).unwrap().0,
            path: path.to_owned(),
            size,
            modified: Some(modified),
        }
    }

    const A: &str = "2024-05-03/202405031553360274740000000000000-149406d8fc0e8e6b-2-2-00000000-usertable-1.ndjson";
    const B: &str = "2024-05-03/202405031553360274740000000000000-149406d8fc0e8e6b-2-2-00000001-usertable-1.ndjson";

    /// A kept file reads back as it was; one whose listing changed (size or time), or past the
    /// budget, is not served; the folder holds numbered files only and goes with the cache.
    #[test]
    fn kept_files_read_back_while_their_listing_matches_within_the_budget() {
        let root = tempfile::tempdir().unwrap();
        let cache = SliceCache::new(root.path(), 10, Hlc::new(1, 0)).unwrap();
        let dir = cache.dir().to_owned();
        let a = Bytes::from_static(b"{\"a\":1}\n");
        cache.put(&object(A, 8, 5), &a);
        assert_eq!(cache.get(&object(A, 8, 5)), Some(a.clone()));
        assert_eq!(cache.bytes(), 8);
        // Over the budget (8 + 8 > 10): not kept, fetched by every pass.
        cache.put(&object(B, 8, 5), &a);
        assert_eq!(cache.get(&object(B, 8, 5)), None);
        // Bytes that are not the listed object's size are not kept.
        cache.put(&object(B, 9, 5), &a);
        assert_eq!(cache.bytes(), 8);
        // Listed again with another time: no longer served, and forgotten.
        assert_eq!(cache.get(&object(A, 8, 6)), None);
        assert_eq!(cache.get(&object(A, 8, 5)), Some(a.clone()));
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["1"]);
        // A copy gone from disk is forgotten; its room is free again.
        std::fs::remove_file(dir.join("1")).unwrap();
        assert_eq!(cache.get(&object(A, 8, 5)), None);
        assert_eq!(cache.bytes(), 0);
        cache.put(&object(B, 8, 5), &a);
        assert_eq!(cache.get(&object(B, 8, 5)), Some(a));
        let twin = cache.clone();
        drop(cache);
        assert!(dir.exists(), "a clone still holds it");
        drop(twin);
        assert!(!dir.exists());
    }

    /// Each cache has a folder of its own, private to the user.
    #[test]
    fn each_cache_has_a_private_folder() {
        let root = tempfile::tempdir().unwrap();
        let (one, two) = (
            SliceCache::new(root.path(), 1, Hlc::new(1, 0)).unwrap(),
            SliceCache::new(root.path(), 1, Hlc::new(1, 0)).unwrap(),
        );
        assert_ne!(one.dir(), two.dir());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(one.dir()).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
    }
}
