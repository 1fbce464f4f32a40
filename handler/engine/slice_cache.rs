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

/// Least free space a cache is sized from when `slice_cache_bytes` is unset in the handler
/// ([`auto_budget`]): below it, none.
pub const AUTO_MIN_FREE: u64 = 256 << 20;

/// What holds a folder's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// A memory file system (`tmpfs`, `ramfs`): its files count against the instance's memory.
    Memory,
    Disk,
    /// Not told (another system, or the query failed).
    Unknown,
}

/// The cache budget where `slice_cache_bytes` is unset in the handler: half the free space of
/// a disk (the spill and the copies of one interval at most; the rest for everything else);
/// none on a memory file system, where it would count against the instance's memory, nor
/// where the file system cannot be told.
pub fn auto_budget_of(backing: Backing, free: u64) -> u64 {
    match backing {
        Backing::Disk if free >= AUTO_MIN_FREE => free / 2,
        _ => 0,
    }
}

/// [`auto_budget_of`] for the folder `root`, as its file system reports itself now.
pub fn auto_budget(root: &Path) -> u64 {
    let (backing, free) = backing(root);
    auto_budget_of(backing, free)
}

/// The file system holding `root`, and the bytes free there for this process.
#[cfg(target_os = "linux")]
pub fn backing(root: &Path) -> (Backing, u64) {
    // statfs(2)'s f_type of the memory file systems.
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    let Ok(st) = rustix::fs::statfs(root) else {
        return (Backing::Unknown, 0);
    };
    let backing = match st.f_type as u64 {
        TMPFS_MAGIC | RAMFS_MAGIC => Backing::Memory,
        _ => Backing::Disk,
    };
    let block = u64::try_from(st.f_bsize).unwrap_or(0);
    (backing, st.f_bavail.saturating_mul(block))
}

/// The file system holding `root`: not told off Linux.
#[cfg(not(target_os = "linux"))]
pub fn backing(_root: &Path) -> (Backing, u64) {
    (Backing::Unknown, 0)
}

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

    /// Its budget in bytes.
    pub fn budget(&self) -> u64 {
        self.inner.budget
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

    /// Half the free space of a disk; nothing in memory, unknown, or with little room.
    #[test]
    fn an_unsized_cache_takes_half_a_disks_free_space_and_nothing_in_memory() {
        let gib = 1u64 << 30;
        assert_eq!(auto_budget_of(Backing::Disk, 10 * gib), 5 * gib);
        assert_eq!(
            auto_budget_of(Backing::Disk, AUTO_MIN_FREE),
            AUTO_MIN_FREE / 2
        );
        assert_eq!(auto_budget_of(Backing::Disk, AUTO_MIN_FREE - 1), 0);
        assert_eq!(auto_budget_of(Backing::Memory, 10 * gib), 0);
        assert_eq!(auto_budget_of(Backing::Unknown, 10 * gib), 0);
    }

    /// What `backing` says of a folder agrees with the mount table's file system type.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_folders_backing_is_its_mounts_file_system() {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let fstype = |p: &Path| {
            let p = p.canonicalize().unwrap();
            mounts
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    Some((Path::new(f.get(1)?).to_owned(), f.get(2)?.to_string()))
                })
                .filter(|(m, _)| p.starts_with(m))
                .max_by_key(|(m, _)| m.as_os_str().len())
                .map(|(_, t)| t)
                .unwrap()
        };
        for p in [std::env::temp_dir(), PathBuf::from("/dev/shm")] {
            let (b, free) = backing(&p);
            let memory = matches!(fstype(&p).as_str(), "tmpfs" | "ramfs");
            assert_eq!(b == Backing::Memory, memory, "{}", p.display());
            assert_ne!(b, Backing::Unknown, "{}", p.display());
            assert!(free > 0, "{}", p.display());
        }
    }

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
