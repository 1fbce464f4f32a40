//! The engine end to end, in-process, under plain `cargo test` (no Azurite, no Python): a
//! simulated changefeed in CockroachDB's exact layout, applied by `sync()` in several bounded
//! steps (straddling files, duplicates, a job restart, ADD COLUMN, three column families), must
//! equal the simulator's ground truth at the last RESOLVED. The Python oracle tests check the
//! same through an independent reader; this one runs wherever `cargo test` does.

use std::collections::BTreeMap;

use crdb_delta::config::Config;
use crdb_delta::delta::{self, Target};
use crdb_delta::dev::simulate::simulate;
use crdb_delta::engine::carry::CarryCache;
use crdb_delta::engine::{SyncOptions, sync};
use crdb_delta::storage::Location;
use crdb_delta_core::Hlc;
use crdb_delta_core::format::canonical;
use crdb_delta_core::format::names::{Compression, Format, ObjectName};
use crdb_delta_core::sim::SimOptions;
use serde_json::Value;

/// Every row of a Delta table as canonical JSON (data columns only), sorted.
async fn table_rows(root: &Location, table: &str) -> Vec<String> {
    let t = Target::new(root, table).unwrap();
    let tb = t.open().await.unwrap().expect("table exists");
    let mut rows = Vec::new();
    for f in delta::files(&tb, "id").await.unwrap() {
        for b in delta::read_live_file(&tb, &f, 8192).await.unwrap() {
            for mut r in canonical::rows(&b, None) {
                r.retain(|k, _| !crdb_delta_core::format::batch::is_reserved(k));
                rows.push(Value::Object(r).to_string());
            }
        }
    }
    rows.sort();
    rows
}

/// The truth's state of a table at its last RESOLVED, in the same form (a column the table does
/// not have yet is absent from the row, as a Delta reader sees NULL).
fn truth_rows(truth: &std::path::Path, table: &str, columns: &[String]) -> Vec<String> {
    let dir = truth.join(table).join("state");
    let mut states: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    states.sort();
    let last = states.last().expect("a state per RESOLVED");
    let mut rows: Vec<String> = std::fs::read_to_string(last)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: BTreeMap<String, Value> = serde_json::from_str(l).unwrap();
            let row: serde_json::Map<String, Value> = columns
                .iter()
                .map(|c| (c.clone(), v.get(c).cloned().unwrap_or(Value::Null)))
                .collect();
            Value::Object(row).to_string()
        })
        .collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_equals_the_ground_truth_and_a_second_run_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let truth_dir = dir.path().join("truth");
    let sim = SimOptions {
        tables: vec!["usertable".into(), "orders".into()],
        initial_rows: 60,
        windows: 5,
        events_per_window: 150,
        duplicate_rate: 0.05,
        straddle: 0.25,
        ..SimOptions::default()
    };
    let (feed, config) = simulated(dir.path(), sim).await;
    let opts = SyncOptions {
        config,
        // Small steps: several commits, copy-on-write over earlier ones, carried-over files;
        // the initial scan, larger than the window, in key slices.
        max_window_bytes: 60_000,
        min_slice_bytes: 20_000,
        ..SyncOptions::default()
    };
    let target = Location::open(dir.path().join("delta").to_str().unwrap()).unwrap();
    let report = sync(&feed, &target, &opts).await.unwrap();
    assert!(report.steps > 2, "{report:?}");
    assert!(
        report.tables.values().any(|t| t.slice_commits > 0),
        "{report:?}"
    );
    assert!(report.complete && report.refused.is_empty() && report.quarantined.is_empty());
    for t in ["usertable", "orders"] {
        let r = &report.tables[t];
        assert!(r.duplicates > 0, "{t}: the feed duplicates messages");
        let actual = table_rows(&target, t).await;
        let columns: Vec<String> = match actual.first() {
            Some(row) => serde_json::from_str::<serde_json::Map<String, Value>>(row)
                .unwrap()
                .keys()
                .cloned()
                .collect(),
            None => panic!("{t}: empty table"),
        };
        let expected = truth_rows(&truth_dir, t, &columns);
        assert_eq!(actual.len(), expected.len(), "{t}: row count");
        assert_eq!(actual, expected, "{t}: rows");
    }
    let again = sync(&feed, &target, &opts).await.unwrap();
    assert_eq!(again.steps, 0, "{again:?}");
    assert!(again.tables.values().all(|t| t.commits == 0));
}

/// A simulated feed in `dir/feed`, its truth in `dir/truth`: the feed and the manifest's config.
async fn simulated(dir: &std::path::Path, sim: SimOptions) -> (Location, Config) {
    let feed = Location::open(dir.join("feed").to_str().unwrap()).unwrap();
    let truth_dir = dir.join("truth");
    let truth = Location::open(truth_dir.to_str().unwrap()).unwrap();
    simulate(sim, &feed, &truth).await.unwrap();
    (feed, manifest_config(&truth_dir))
}

/// The config of the simulator's manifest in `truth_dir` (keys and SQL types).
fn manifest_config(truth_dir: &std::path::Path) -> Config {
    let manifest: crdb_delta_core::sim::Manifest =
        serde_json::from_str(&std::fs::read_to_string(truth_dir.join("manifest.json")).unwrap())
            .unwrap();
    Config::from_manifest(&manifest)
}

/// A one-table feed whose files straddle RESOLVEDs: the feed, the truth folder, the manifest's
/// config and the RESOLVEDs in order.
struct SmallFeed {
    feed: Location,
    truth_dir: std::path::PathBuf,
    config: Config,
    resolveds: Vec<Hlc>,
}

async fn small_straddling_feed(dir: &std::path::Path) -> SmallFeed {
    straddling_feed(dir, 4).await
}

async fn straddling_feed(dir: &std::path::Path, windows: usize) -> SmallFeed {
    straddling_feed_of(dir, straddling_sim(windows)).await
}

fn straddling_sim(windows: usize) -> SimOptions {
    SimOptions {
        tables: vec!["usertable".into()],
        initial_rows: 40,
        windows,
        events_per_window: 60,
        straddle: 0.25,
        ..SimOptions::default()
    }
}

/// The changefeed objects below `feed_dir`, by their names.
fn feed_objects(feed_dir: &std::path::Path) -> Vec<ObjectName> {
    let root = format!("{}/", feed_dir.to_string_lossy().replace('\\', "/"));
    walk(feed_dir)
        .iter()
        .filter_map(|p| Some(ObjectName::parse_relative(p.strip_prefix(&root)?).ok()?.0))
        .collect()
}

/// The RESOLVEDs among `objects`, in order.
fn resolveds_of(objects: &[ObjectName]) -> Vec<Hlc> {
    let mut resolveds: Vec<Hlc> = objects
        .iter()
        .filter_map(|n| match n {
            ObjectName::Resolved(r) => Some(*r),
            ObjectName::Data(_) => None,
        })
        .collect();
    resolveds.sort();
    resolveds
}

async fn straddling_feed_of(dir: &std::path::Path, sim: SimOptions) -> SmallFeed {
    let (feed, config) = simulated(dir, sim).await;
    let resolveds = resolveds_of(&feed_objects(&dir.join("feed")));
    assert!(resolveds.len() >= 5, "{} RESOLVED objects", resolveds.len());
    SmallFeed {
        feed,
        truth_dir: dir.join("truth"),
        config,
        resolveds,
    }
}

/// The table's rows equal the simulator's final state.
async fn assert_equals_truth(target: &Location, truth_dir: &std::path::Path, table: &str) {
    let actual = table_rows(target, table).await;
    let columns: Vec<String> = serde_json::from_str::<serde_json::Map<String, Value>>(&actual[0])
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(actual, truth_rows(truth_dir, table, &columns), "{table}");
}

/// The target's Delta table, which must exist.
async fn open_table(target: &Location, table: &str) -> deltalake_core::DeltaTable {
    Target::new(target, table)
        .unwrap()
        .open()
        .await
        .unwrap()
        .expect("table exists")
}

/// `sync --commit-each-resolved` of the feed into `dir/delta`.
async fn sync_each_resolved(
    dir: &std::path::Path,
    f: &SmallFeed,
) -> (Location, crdb_delta::engine::SyncReport) {
    let opts = SyncOptions {
        config: f.config.clone(),
        each_resolved: true,
        ..SyncOptions::default()
    };
    let target = Location::open(dir.join("delta").to_str().unwrap()).unwrap();
    let report = sync(&f.feed, &target, &opts).await.unwrap();
    (target, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_each_resolved_makes_one_version_per_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let f = small_straddling_feed(dir.path()).await;
    let resolveds = f.resolveds.len() as u64;
    let (target, report) = sync_each_resolved(dir.path(), &f).await;
    // The default window holds the whole feed: without the option this is one step.
    assert_eq!(report.steps, resolveds, "{report:?}");
    assert_eq!(report.tables["usertable"].commits, resolveds, "{report:?}");
    // Files that straddle a RESOLVED are read once: the next step takes their later rows from
    // memory.
    assert!(report.tables["usertable"].files_reused > 0, "{report:?}");
    // Every step after the first was read while the one before it wrote.
    assert_eq!(
        report.tables["usertable"].steps_read_ahead,
        resolveds - 1,
        "{report:?}"
    );
    // Each step's record is written while the next step applies: by the end of the run every
    // RESOLVED is recorded, in order, at the table version of its own commit.
    let mut recorded: Vec<(String, i64)> = table_rows(&target, "_crdb_delta_resolved")
        .await
        .iter()
        .map(|r| {
            let r: Value = serde_json::from_str(r).unwrap();
            let resolved = r["resolved"].as_str().unwrap().to_owned();
            (resolved, r["delta_version"].as_i64().unwrap())
        })
        .collect();
    recorded.sort_by_key(|(_, v)| *v);
    let expected: Vec<(String, i64)> = (f.resolveds.iter().map(|r| r.to_string()))
        .zip(1..)
        .collect();
    assert_eq!(recorded, expected);
    assert_equals_truth(&target, &f.truth_dir, "usertable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_step_is_read_ahead_when_the_window_leaves_no_room() {
    let dir = tempfile::tempdir().unwrap();
    let f = small_straddling_feed(dir.path()).await;
    let resolveds = f.resolveds.len() as u64;
    // Every step is larger than the window (and too small to slice): none leaves room for the
    // next one's read.
    let opts = SyncOptions {
        config: f.config.clone(),
        each_resolved: true,
        max_window_bytes: 1,
        min_slice_bytes: 1 << 40,
        ..SyncOptions::default()
    };
    let target = Location::open(dir.path().join("delta").to_str().unwrap()).unwrap();
    let report = sync(&f.feed, &target, &opts).await.unwrap();
    let t = &report.tables["usertable"];
    assert_eq!(t.commits, resolveds, "{report:?}");
    assert_eq!(t.steps_read_ahead, 0, "{report:?}");
    assert_equals_truth(&target, &f.truth_dir, "usertable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_read_ahead_stops_its_table_at_the_step_before() {
    let dir = tempfile::tempdir().unwrap();
    let f = small_straddling_feed(dir.path()).await;
    // A data file named after the third RESOLVED (so not in the first two steps) cut short: the
    // second step reads it ahead, fails, and the third step reads it again and quarantines it.
    let root = format!(
        "{}/",
        dir.path().join("feed").to_string_lossy().replace('\\', "/")
    );
    let victim = walk(&dir.path().join("feed"))
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(&root)?.to_owned();
            match ObjectName::parse_relative(&rel) {
                Ok((ObjectName::Data(d), _)) if d.ts > f.resolveds[1] && d.ts <= f.resolveds[2] => {
                    Some((d.ts, p.clone(), rel))
                }
                _ => None,
            }
        })
        .min()
        .expect("a data file in the third RESOLVED interval");
    let bytes = std::fs::read(&victim.1).unwrap();
    std::fs::write(&victim.1, &bytes[..bytes.len() / 2]).unwrap();
    let (target, report) = sync_each_resolved(dir.path(), &f).await;
    // The stopped table leaves the run's report; its log says where it stopped.
    let tb = open_table(&target, "usertable").await;
    let progress = delta::progress(&tb, "usertable").await.unwrap();
    assert_eq!(progress.applied, Some(f.resolveds[1]), "{report:?}");
    assert_eq!(tb.version(), Some(2), "{report:?}");
    assert_eq!(report.quarantined.len(), 1, "{report:?}");
    assert_eq!(report.quarantined[0].file, victim.2, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_one_resolved_at_a_time_reuse_kept_rows_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let f = small_straddling_feed(dir.path()).await;
    // As the handler runs: one run per RESOLVED, one cache for the process.
    let cache = CarryCache::default();
    let target = Location::open(dir.path().join("delta").to_str().unwrap()).unwrap();
    let mut reused = 0;
    for r in &f.resolveds {
        let opts = SyncOptions {
            config: f.config.clone(),
            until: Some(*r),
            carry_cache: Some(cache.clone()),
            ..SyncOptions::default()
        };
        let report = sync(&f.feed, &target, &opts).await.unwrap();
        assert_eq!(report.tables["usertable"].resolved, Some(*r), "{report:?}");
        reused += report.tables["usertable"].files_reused;
    }
    assert!(reused > 0, "no file was reused across runs");
    assert_equals_truth(&target, &f.truth_dir, "usertable").await;
}

/// Every file below `root`, as `/`-separated paths.
fn walk(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out
}

/// Applies the `usertable` feed `sim` simulates under `dir` one commit per RESOLVED, in a
/// window of `max` bytes (slices of at least 10 kB): the table's report, and how many files
/// its initial scan has (those up to the first RESOLVED).
async fn sync_sliced(
    dir: &std::path::Path,
    sim: SimOptions,
    max: u64,
) -> (crdb_delta::engine::TableReport, u64) {
    let (feed, config) = simulated(dir, sim).await;
    let opts = SyncOptions {
        config,
        max_window_bytes: max,
        min_slice_bytes: 10_000,
        each_resolved: true,
        ..SyncOptions::default()
    };
    let target = Location::open(dir.join("delta").to_str().unwrap()).unwrap();
    let report = sync(&feed, &target, &opts).await.unwrap();
    assert!(report.complete, "{report:?}");
    let names = feed_objects(&dir.join("feed"));
    let first = resolveds_of(&names)[0];
    let scan_files = names
        .iter()
        .filter(|n| matches!(n, ObjectName::Data(d) if d.ts <= first))
        .count() as u64;
    (report.tables["usertable"].clone(), scan_files)
}

/// The slice counts a sliced scan under `dir` would have at `max` bytes a window: by the size
/// it decoded to (every slice decodes the interval once; slices are about half a window each),
/// and by the planner's `prior` for its files ending in `ext` (`prior` × their stored size).
fn slice_counts(
    dir: &std::path::Path,
    t: &crdb_delta::engine::TableReport,
    max: u64,
    ext: &str,
    prior: u64,
) -> (u64, u64) {
    let by_size = (t.decoded_bytes / (t.slice_commits + 1)).div_ceil(max / 2);
    let stored: u64 = walk(dir.join("feed").as_path())
        .iter()
        .filter(|p| p.ends_with(ext))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    (by_size, (prior * stored).div_ceil(max / 2))
}

/// An initial scan larger than the window is sliced by what its Parquet files decode to (read
/// from the largest file's footer), not by the planner's prior for Parquet (3× the stored size),
/// which would make about three times as many passes over the interval here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_initial_scan_is_sliced_by_its_decoded_size() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimOptions {
        tables: vec!["usertable".into()],
        format: Format::Parquet,
        initial_rows: 4000,
        windows: 1,
        events_per_window: 50,
        file_size: 64 << 10,
        ..SimOptions::default()
    };
    let max = 200_000u64;
    let (t, scan_files) = sync_sliced(dir.path(), sim, max).await;
    let slices = t.slice_commits + 1;
    assert!(slices > 1, "the scan is sliced: {t:?}");
    let (by_size, by_prior) = slice_counts(dir.path(), &t, max, ".parquet", 3);
    assert!(
        slices <= by_size + 1 && slices < by_prior,
        "{slices} slices; {by_size} by decoded size, {by_prior} by the prior: {t:?}"
    );
    // The first slice reads every row, the second finds each file's key slices, the later
    // ones read them instead of each file's key column (the files' 4 KB of slices fit the
    // budget, an eighth of the window): every Parquet file of the scan's interval.
    assert!(slices > 2 && scan_files > 0);
    assert_eq!(t.files_slices_known, (slices - 2) * scan_files, "{t:?}");
    let target = Location::open(dir.path().join("delta").to_str().unwrap()).unwrap();
    assert_equals_truth(&target, &dir.path().join("truth"), "usertable").await;
}

/// An NDJSON initial scan applied in slices: from the third slice on, each file's lines are
/// picked by the slices the second slice's pass learnt (with each batch's columns and types),
/// so only the slice's lines are parsed; gzip and plain files alike. Gzip's are sliced by what
/// the largest file decompresses to, not by the prior (10× the stored size), which would make
/// several times as many passes. The table equals the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ndjson_initial_scans_later_slices_parse_only_their_lines() {
    for compression in [Compression::None, Compression::Gzip] {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimOptions {
            tables: vec!["usertable".into()],
            format: Format::Json,
            compression,
            initial_rows: 3000,
            windows: 1,
            events_per_window: 50,
            file_size: 256 << 10,
            ..SimOptions::default()
        };
        // The files' slices, a byte a line and their batches' types, fit the budget (an eighth).
        let max = 300_000u64;
        let (t, scan_files) = sync_sliced(dir.path(), sim, max).await;
        let slices = t.slice_commits + 1;
        assert!(
            slices > 2 && scan_files > 1,
            "{slices} slices, {scan_files} files"
        );
        let (by_size, by_prior) = slice_counts(dir.path(), &t, max, ".ndjson.gz", 10);
        assert!(
            slices <= by_size + 1,
            "{slices} slices, {by_size} by size: {t:?}"
        );
        if compression == Compression::Gzip {
            assert!(
                slices * 2 < by_prior,
                "{slices} slices, {by_prior} by the prior: {t:?}"
            );
        }
        assert_eq!(t.files_slices_known, (slices - 2) * scan_files, "{t:?}");
        let target = Location::open(dir.path().join("delta").to_str().unwrap()).unwrap();
        assert_equals_truth(&target, &dir.path().join("truth"), "usertable").await;
    }
}

/// With a slice cache, a sliced interval's files are fetched once: the first pass keeps them on
/// local disk and writes every later slice's rows to the spill (the column types are
/// configured, so every pass decodes alike), and the later slices read only their rows from it. With half the scan's stored size
/// as the budget the spill does not fit and is given up: the later slices read the files, some
/// of them from the cache. Either way the run commits what a run without the cache does, the
/// table equals the truth, and the cache's folder is gone once the interval is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliced_intervals_files_are_fetched_once_and_its_rows_spilled_by_slice() {
    for (format, compression) in [
        (Format::Parquet, Compression::None),
        (Format::Json, Compression::Gzip),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimOptions {
            tables: vec!["usertable".into()],
            format,
            compression,
            initial_rows: 3000,
            windows: 1,
            events_per_window: 50,
            file_size: 64 << 10,
            ..SimOptions::default()
        };
        let max = 200_000u64;
        let (plain, scan_files) = sync_sliced(dir.path(), sim.clone(), max).await;
        let slices = plain.slice_commits + 1;
        assert!(slices > 2 && scan_files > 2, "{plain:?}");
        assert_eq!(plain.files_from_slice_cache, 0);
        let names = feed_objects(&dir.path().join("feed"));
        let first = resolveds_of(&names)[0];
        let scan_bytes: u64 = walk(dir.path().join("feed").as_path())
            .iter()
            .filter(|p| {
                let name = ObjectName::parse_file_name(p.rsplit('/').next().unwrap()).unwrap();
                matches!(name, ObjectName::Data(d) if d.ts <= first)
            })
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        let root = dir.path().join("cache");
        std::fs::create_dir(&root).unwrap();
        let mut spilled = None;
        for budget in [u64::MAX, scan_bytes / 2] {
            let target_dir = dir.path().join(format!("delta-{budget}"));
            let (feed, config) = (
                Location::open(dir.path().join("feed").to_str().unwrap()).unwrap(),
                manifest_config(&dir.path().join("truth")),
            );
            let opts = SyncOptions {
                config,
                max_window_bytes: max,
                min_slice_bytes: 10_000,
                each_resolved: true,
                slice_cache_bytes: budget,
                slice_cache_dir: Some(root.clone()),
                ..SyncOptions::default()
            };
            let target = Location::open(target_dir.to_str().unwrap()).unwrap();
            let report = sync(&feed, &target, &opts).await.unwrap();
            assert!(report.complete, "{report:?}");
            let t = &report.tables["usertable"];
            assert_eq!(
                (t.slice_commits, t.commits),
                (plain.slice_commits, plain.commits),
                "{format:?}, budget {budget}: {t:?}"
            );
            match spilled {
                None => {
                    // Every slice past the first reads every scan file's rows from the spill;
                    // every scan file is fetched once.
                    assert!(
                        t.bytes_spilled > budget.min(scan_bytes / 2)
                            && t.files_from_slice_spill == (slices - 1) * scan_files
                            && t.bytes_read + (slices - 1) * scan_bytes <= plain.bytes_read,
                        "{format:?}: {t:?}"
                    );
                    spilled = Some(t.bytes_spilled);
                }
                Some(bytes) => {
                    // The spill (as large as above) does not fit: given up. The cache keeps what
                    // fits, and the later slices read the rest from storage.
                    assert!(bytes > budget, "{bytes} spilled, budget {budget}");
                    assert_eq!(
                        (
                            t.files_from_slice_spill,
                            t.bytes_spilled,
                            t.files_read,
                            t.decoded_bytes
                        ),
                        (0, 0, plain.files_read, plain.decoded_bytes),
                        "{format:?}, budget {budget}: {t:?}"
                    );
                    assert!(
                        t.files_from_slice_cache > 0 && t.bytes_from_slice_cache <= slices * budget,
                        "{format:?}, budget {budget}: {t:?}"
                    );
                    assert_eq!(
                        t.bytes_read + t.bytes_from_slice_cache,
                        plain.bytes_read,
                        "{t:?}"
                    );
                }
            }
            assert_equals_truth(&target, &dir.path().join("truth"), "usertable").await;
            assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "folder left");
        }
    }
}

/// A `usertable` NDJSON feed under `dir` whose initial scan (3000 rows in 64 kB files) is
/// applied in many slices by [`cached_slices`]: the feed, the manifest's config, and how many
/// files the scan has.
async fn sliced_scan_feed(dir: &std::path::Path) -> (Location, Config, u64) {
    let sim = SimOptions {
        tables: vec!["usertable".into()],
        format: Format::Json,
        initial_rows: 3000,
        windows: 1,
        events_per_window: 50,
        file_size: 64 << 10,
        ..SimOptions::default()
    };
    let (feed, config) = simulated(dir, sim).await;
    let names = feed_objects(&dir.join("feed"));
    let first = resolveds_of(&names)[0];
    let scan_files = names
        .iter()
        .filter(|n| matches!(n, ObjectName::Data(d) if d.ts <= first))
        .count() as u64;
    (feed, config, scan_files)
}

/// One commit per RESOLVED in a 200 kB window (slices of at least 10 kB), with a slice cache of
/// 1 GiB in `root`.
fn cached_slices(config: Config, root: &std::path::Path) -> SyncOptions {
    SyncOptions {
        config,
        max_window_bytes: 200_000,
        min_slice_bytes: 10_000,
        each_resolved: true,
        slice_cache_bytes: 1 << 30,
        slice_cache_dir: Some(root.to_owned()),
        ..SyncOptions::default()
    }
}

/// Unsized (`slice_cache_auto`, the handler's default when the config sets no
/// `slice_cache_bytes`): a cache in a folder on disk is sized from its free space and used as a
/// sized one is; in a folder on a memory file system (`/dev/shm`, where the copies would count
/// against the instance's memory) there is none, and every slice fetches the files. The table
/// equals the truth either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsized_slice_cache_is_sized_from_its_folders_disk() {
    use crdb_delta::engine::slice_cache::{Backing, backing};
    let dir = tempfile::tempdir().unwrap();
    let (feed, config, scan_files) = sliced_scan_feed(dir.path()).await;
    let disk = dir.path().join("cache");
    std::fs::create_dir(&disk).unwrap();
    assert_eq!(
        backing(&disk).0,
        Backing::Disk,
        "the test's temporary folder is on disk"
    );
    let shm = std::path::Path::new("/dev/shm");
    assert_eq!(backing(shm).0, Backing::Memory, "/dev/shm is a tmpfs");
    let memory = tempfile::tempdir_in(shm).unwrap();
    let mut reports = Vec::new();
    for (root, on_disk) in [(disk.as_path(), true), (memory.path(), false)] {
        let opts = SyncOptions {
            slice_cache_bytes: 0,
            slice_cache_auto: true,
            ..cached_slices(config.clone(), root)
        };
        let target = Location::open(
            dir.path()
                .join(format!("delta-{on_disk}"))
                .to_str()
                .unwrap(),
        )
        .unwrap();
        let report = sync(&feed, &target, &opts).await.unwrap();
        reports.push(report.tables["usertable"].clone());
        assert_equals_truth(&target, &dir.path().join("truth"), "usertable").await;
        assert_eq!(std::fs::read_dir(root).unwrap().count(), 0, "folder left");
    }
    let (on_disk, in_memory) = (&reports[0], &reports[1]);
    let later = in_memory.slice_commits;
    assert!(later > 1 && on_disk.slice_commits == later, "{reports:?}");
    // On disk, every slice after the first reads every scan file's rows from the spill, and
    // fetches none of them; in memory, no cache: every slice fetches them.
    assert_eq!(
        on_disk.files_from_slice_spill,
        later * scan_files,
        "{on_disk:?}"
    );
    assert_eq!(
        on_disk.files_read + later * scan_files,
        in_memory.files_read,
        "{reports:?}"
    );
    assert_eq!(
        (
            in_memory.files_from_slice_spill,
            in_memory.files_from_slice_cache
        ),
        (0, 0),
        "{in_memory:?}"
    );
    // An explicit size wins, 0 included: the config turns the handler's sizing off.
    let mut sized = config.clone();
    sized.slice_cache_bytes = Some(0);
    let handler = SyncOptions {
        slice_cache_auto: true,
        ..SyncOptions::default()
    };
    assert!(!handler.reconfigured(sized).slice_cache_auto);
    assert!(handler.reconfigured(config).slice_cache_auto);
}

/// Where no column type is configured, the first pass decodes under the types it infers, and the
/// later passes under the types the table took from it: a spill of the first pass would not be
/// theirs, so the second pass writes it (from the files the cache kept), and the slices after
/// it read that one. The table equals the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spill_of_inferred_types_is_written_by_the_second_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, mut config, scan_files) = sliced_scan_feed(dir.path()).await;
    // The same feed with its types configured: the first pass spills every later slice's rows.
    let typed = Location::open(dir.path().join("typed").to_str().unwrap()).unwrap();
    let report = sync(&feed, &typed, &cached_slices(config.clone(), dir.path()))
        .await
        .unwrap();
    let once = report.tables["usertable"].bytes_spilled;
    for t in config.tables.values_mut() {
        t.columns.clear();
    }
    let opts = cached_slices(config, dir.path());
    let target = Location::open(dir.path().join("delta").to_str().unwrap()).unwrap();
    let report = sync(&feed, &target, &opts).await.unwrap();
    let t = &report.tables["usertable"];
    let slices = t.slice_commits + 1;
    assert!(slices > 3, "{t:?}");
    assert_eq!(t.files_from_slice_spill, (slices - 2) * scan_files, "{t:?}");
    assert_eq!(
        t.files_from_slice_cache, scan_files,
        "the second pass: {t:?}"
    );
    // One spill, of one slice fewer than the typed run's: the first pass wrote none.
    assert!(
        t.bytes_spilled > 0 && t.bytes_spilled < once,
        "{once} typed: {t:?}"
    );
    assert_equals_truth(&target, &dir.path().join("truth"), "usertable").await;
}

/// A table of three column families (`orders`), its initial scan in slices with the spill:
/// each family's files' rows go to the slices of their keys, and the families of one key meet
/// again in its slice's window. The table equals the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spilled_interval_of_column_families_equals_the_truth() {
    for format in [Format::Json, Format::Parquet] {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimOptions {
            tables: vec!["orders".into()],
            format,
            initial_rows: 3000,
            windows: 2,
            events_per_window: 100,
            file_size: 32 << 10,
            ..SimOptions::default()
        };
        let (feed, config) = simulated(dir.path(), sim).await;
        let root = dir.path().join("cache");
        std::fs::create_dir(&root).unwrap();
        let opts = SyncOptions {
            config,
            max_window_bytes: 100_000,
            min_slice_bytes: 10_000,
            slice_cache_bytes: 1 << 30,
            slice_cache_dir: Some(root.clone()),
            ..SyncOptions::default()
        };
        let target = Location::open(dir.path().join("delta").to_str().unwrap()).unwrap();
        let report = sync(&feed, &target, &opts).await.unwrap();
        let t = &report.tables["orders"];
        assert!(
            t.slice_commits > 2 && t.files_from_slice_spill > 0 && t.bytes_spilled > 0,
            "{format:?}: {t:?}"
        );
        assert_equals_truth(&target, &dir.path().join("truth"), "orders").await;
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "folder left");
    }
}

/// An interval the time budget left part-way keeps its slice cache for the process's next run
/// (the handler's next invocation): the next runs' slices read the rows spilled instead of
/// fetching and decoding the files again. The table equals the truth,
/// and no folder is left once the interval is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_cache_outlives_a_run_left_part_way() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, config, scan_files) = sliced_scan_feed(dir.path()).await;
    let root = dir.path().join("cache");
    std::fs::create_dir(&root).unwrap();
    let opts = SyncOptions {
        slice_caches: Some(Default::default()),
        ..cached_slices(config, &root)
    };
    let target = Location::open(dir.path().join("delta").to_str().unwrap()).unwrap();
    // A run whose budget is spent once its first step is: one slice each.
    let budgeted = || SyncOptions {
        deadline: Some(std::time::Instant::now()),
        ..opts.clone()
    };
    let folders = || std::fs::read_dir(&root).unwrap().count();
    let run = |o: SyncOptions| {
        let (feed, target) = (feed.clone(), target.clone());
        async move {
            let r = sync(&feed, &target, &o).await.unwrap();
            (r.complete, r.tables["usertable"].clone())
        }
    };
    // Slice 0 fetches every scan file, keeps it and spills the later slices' rows.
    let (complete, t) = run(budgeted()).await;
    assert!(
        !complete && t.slice_commits == 1 && t.bytes_spilled > 0,
        "{t:?}"
    );
    assert_eq!(
        (t.files_read, t.files_from_slice_cache),
        (scan_files, 0),
        "{t:?}"
    );
    assert_eq!(folders(), 1, "kept for the next run");
    // Slices 1 and 2, a run each: their rows from the spill; no file read or fetched.
    for _ in 0..2 {
        let (_, t) = run(budgeted()).await;
        assert_eq!(
            (
                t.slice_commits,
                t.files_from_slice_spill,
                t.files_read,
                t.bytes_read
            ),
            (1, scan_files, 0, 0),
            "{t:?}"
        );
    }
    // The rest in one run (its last slice not counted in `slice_commits`): every slice from
    // the spill; the folder goes with the interval.
    let (complete, t) = run(opts.clone()).await;
    assert!(complete && t.slice_commits > 0, "{t:?}");
    assert_eq!(
        t.files_from_slice_spill,
        (t.slice_commits + 1) * scan_files,
        "{t:?}"
    );
    assert_eq!(folders(), 0, "folder left");
    assert_equals_truth(&target, &dir.path().join("truth"), "usertable").await;
}

/// Once learned (from a table's second step in a process), a table file's key column is looked
/// up in memory rather than read again, in one run and across the handler's runs (one cache
/// per process); the tables equal the truth either way, and without the index nothing is
/// looked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_files_key_columns_are_looked_up_once_learned() {
    key_columns_are_looked_up_once_learned(straddling_sim(4)).await;
}

/// The same for a key of two columns, `(crdb_region, ycsb_key)` as a REGIONAL BY ROW table
/// has (held in the index by its text's hash), in both formats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_two_columns_are_looked_up_once_learned() {
    for format in [Format::Json, Format::Parquet] {
        key_columns_are_looked_up_once_learned(SimOptions {
            region_keys: true,
            format,
            ..straddling_sim(4)
        })
        .await;
    }
}

async fn key_columns_are_looked_up_once_learned(sim: SimOptions) {
    use crdb_delta::engine::key_cache::KeyCache;
    let dir = tempfile::tempdir().unwrap();
    let f = straddling_feed_of(dir.path(), sim).await;
    let target = |name: &str| Location::open(dir.path().join(name).to_str().unwrap()).unwrap();
    let run = |cache: KeyCache, until: Option<Hlc>| SyncOptions {
        config: f.config.clone(),
        each_resolved: true,
        until,
        key_cache: cache,
        ..SyncOptions::default()
    };
    let (indexed, none) = (target("indexed"), target("none"));
    let one = sync(&f.feed, &indexed, &run(KeyCache::default(), None))
        .await
        .unwrap();
    let plain = sync(&f.feed, &none, &run(KeyCache::new(0), None))
        .await
        .unwrap();
    let (one, plain) = (&one.tables["usertable"], &plain.tables["usertable"]);
    assert!(one.table_files_indexed > 0, "{one:?}");
    assert_eq!(plain.table_files_indexed, 0, "{plain:?}");
    assert_eq!(one.table_files_read, plain.table_files_read);
    assert!(
        one.table_bytes_read < plain.table_bytes_read,
        "{one:?} {plain:?}"
    );
    // Deletion vectors: a run with the cache fetches only those it did not write itself (none,
    // here); the other run fetches each one at every step that probes its file.
    assert!(plain.deletion_vectors_read > 0, "{plain:?}");
    assert_eq!(one.deletion_vectors_read, 0, "{one:?}");
    assert_equals_truth(&indexed, &f.truth_dir, "usertable").await;
    assert_equals_truth(&none, &f.truth_dir, "usertable").await;

    // One run per RESOLVED, one cache for the process: `sync` learns from a table's second
    // step, the handler (which lives for many) from its first, so its files are looked up
    // one run sooner.
    for (from_first, name, sooner) in [(false, "runs", 2), (true, "runs-handler", 1)] {
        let cache = match from_first {
            true => KeyCache::default().learning_from_first_step(),
            false => KeyCache::default(),
        };
        let runs = target(name);
        let mut per_run = Vec::new();
        for r in &f.resolveds {
            let report = sync(&f.feed, &runs, &run(cache.clone(), Some(*r)))
                .await
                .unwrap();
            let t = &report.tables["usertable"];
            per_run.push((t.table_files_read, t.table_files_indexed));
        }
        // Runs from the first that read the table: the first looked up is `sooner` after it.
        let first_read = per_run.iter().position(|&(read, _)| read > 0).unwrap();
        let first_indexed = per_run.iter().position(|&(_, indexed)| indexed > 0);
        assert_eq!(
            first_indexed,
            Some(first_read + sooner),
            "{name}: {per_run:?}"
        );
        assert!(cache.bytes() > 0);
        assert_equals_truth(&runs, &f.truth_dir, "usertable").await;
    }
}

/// A warm-up (a new handler instance, between a table's first data file and its RESOLVED)
/// learns every table file's key index and deletion vector: the step after it, in the same
/// process, looks every file it probes up and fetches no deletion vector. Again before a step:
/// nothing read; after one: skipped. Over its budget it stops, and the step reads the key
/// columns itself. The table equals the truth; for a key of two columns (a hashed index) too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_up_indexes_every_table_file_before_the_first_step() {
    for sim in [
        straddling_sim(5),
        SimOptions {
            region_keys: true,
            format: Format::Parquet,
            ..straddling_sim(5)
        },
    ] {
        warm_up_indexes_every_table_file(sim).await;
    }
}

async fn warm_up_indexes_every_table_file(sim: SimOptions) {
    use crdb_delta::engine::key_cache::KeyCache;
    use crdb_delta::engine::warm::warm;
    let dir = tempfile::tempdir().unwrap();
    let f = straddling_feed_of(dir.path(), sim).await;
    let target = Location::open(dir.path().join("delta").to_str().unwrap()).unwrap();
    // Each RESOLVED by a process of its own (a new cache), as a new instance applies it.
    let opts = |cache: KeyCache, until: Hlc| SyncOptions {
        config: f.config.clone(),
        until: Some(until),
        key_cache: cache.learning_from_first_step(),
        ..SyncOptions::default()
    };
    let new_table = warm(
        &target,
        "usertable",
        &opts(KeyCache::default(), f.resolveds[0]),
    )
    .await
    .unwrap();
    assert_eq!(new_table.skipped, Some("no table yet"));
    sync(&f.feed, &target, &opts(KeyCache::default(), f.resolveds[1]))
        .await
        .unwrap();
    let mut looked_up = 0;
    for (i, r) in f.resolveds[2..].iter().enumerate() {
        // The last RESOLVED with an index too small for any file.
        let small = i == f.resolveds.len() - 3;
        let cache = KeyCache::new(if small { 64 } else { 64 << 20 });
        let o = opts(cache.clone(), *r);
        let w = warm(&target, "usertable", &o).await.unwrap();
        let t = sync(&f.feed, &target, &o).await.unwrap().tables["usertable"].clone();
        if small {
            assert!(w.full && w.files_learned == 0 && w.bytes_read > 0, "{w:?}");
            assert_eq!(t.table_files_indexed, 0, "{t:?}");
            continue;
        }
        assert!(w.skipped.is_none() && w.files > 0, "{w:?}");
        assert_eq!((w.files_learned, w.files_indexed), (w.files, 0), "{w:?}");
        assert!(w.bytes_read > 0 && !w.full, "{w:?}");
        // Every file the step probes was found in the index, and no deletion vector fetched.
        assert!(t.table_files_read > 0, "{t:?}");
        assert_eq!(t.table_files_indexed, t.table_files_read, "{t:?}");
        assert_eq!(t.deletion_vectors_read, 0, "{t:?}");
        looked_up += t.table_files_indexed;
        let after = warm(&target, "usertable", &o).await.unwrap();
        assert_eq!(after.skipped, Some("stepped in this process"), "{after:?}");
    }
    assert!(looked_up > 0);
    // Before any step, a second warm-up finds every file indexed and reads nothing.
    let cache = KeyCache::default();
    let o = opts(cache, *f.resolveds.last().unwrap());
    let first = warm(&target, "usertable", &o).await.unwrap();
    let again = warm(&target, "usertable", &o).await.unwrap();
    assert_eq!(
        (again.files_indexed, again.files_learned, again.bytes_read),
        (first.files, 0, 0),
        "{again:?}"
    );
    assert_equals_truth(&target, &f.truth_dir, "usertable").await;
    // append_only reads no table file: nothing to learn.
    let mut config = f.config.clone();
    config.mode = Some(crdb_delta_core::apply::Mode::AppendOnly);
    let append = SyncOptions {
        config,
        ..opts(KeyCache::default(), f.resolveds[0])
    };
    let skipped = warm(&target, "usertable", &append).await.unwrap();
    assert_eq!(skipped.skipped, Some("append_only reads no table files"));
}

/// A table loaded in key slices: each slice's new files carry a tag naming it, every row of a
/// tagged file is of that slice, and later steps look a tagged file up by that slice's keys
/// alone (one file per key instead of every file), keeping the tag when they attach a
/// deletion vector. The table equals the truth, in both formats and for a key of two columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_a_sliced_load_are_looked_up_by_their_slice_keys() {
    for (format, region_keys) in [(Format::Parquet, false), (Format::Json, true)] {
        files_of_a_sliced_load_are_looked_up_by_their_slice_keys_in(SimOptions {
            tables: vec!["usertable".into()],
            format,
            region_keys,
            initial_rows: 3000,
            windows: 4,
            events_per_window: 80,
            file_size: 64 << 10,
            // No later scan rewrites every row (a restart, a backfill).
            restart_at: None,
            schema_change_at: None,
            ..SimOptions::default()
        })
        .await;
    }
}

async fn files_of_a_sliced_load_are_looked_up_by_their_slice_keys_in(sim: SimOptions) {
    use crdb_delta::engine::key_cache::KeyCache;
    use crdb_delta_core::apply::slice_of;
    let label = format!("{:?}, region keys {}", sim.format, sim.region_keys);
    let dir = tempfile::tempdir().unwrap();
    let f = straddling_feed_of(dir.path(), sim).await;
    let target = Location::open(dir.path().join("delta").to_str().unwrap()).unwrap();
    let cache = KeyCache::default();
    let run = |until: Option<Hlc>| SyncOptions {
        config: f.config.clone(),
        each_resolved: true,
        until,
        key_cache: cache.clone(),
        max_window_bytes: 200_000,
        min_slice_bytes: 10_000,
        // Deletion vectors on every touched file, none rewritten (a rewrite drops the tag).
        rewrite_below: 0,
        ..SyncOptions::default()
    };
    let load = sync(&f.feed, &target, &run(Some(f.resolveds[0])))
        .await
        .unwrap();
    let load = &load.tables["usertable"];
    assert!(
        load.slice_commits > 0,
        "{label}: the scan is sliced: {load:?}"
    );
    let open = || async {
        Target::new(&target, "usertable")
            .unwrap()
            .open()
            .await
            .unwrap()
            .unwrap()
    };
    // Every row of a tagged file falls into its slice, by the key columns the table holds.
    let table = open().await;
    let files = delta::files(&table, "id").await.unwrap();
    let tagged: Vec<_> = files.iter().filter(|e| e.slice.is_some()).collect();
    assert_eq!(
        tagged.len(),
        files.len(),
        "{label}: every file of the load holds one slice"
    );
    let key = tagged[0].slice.as_ref().unwrap().key.clone();
    let mut slices = std::collections::BTreeSet::new();
    for e in &tagged {
        let tag = e.slice.as_ref().unwrap();
        assert_eq!(tag.key, key, "{label}");
        slices.insert(tag.index);
        for b in delta::read_file(&table, &e.path, 8192).await.unwrap() {
            let columns: Vec<_> = key
                .iter()
                .map(|k| b.column_by_name(k).unwrap().clone())
                .collect();
            for r in 0..b.num_rows() {
                assert_eq!(
                    slice_of(&columns, r, tag.of),
                    tag.index,
                    "{label}: row {r} of {} is of another slice",
                    e.path
                );
            }
        }
    }
    assert_eq!(slices.len() as u64, load.slice_commits + 1, "{label}");
    // Later steps, one per RESOLVED in one process: tagged files are looked up by their slice.
    let (mut sliced, mut indexed, mut with_dv) = (0, 0, 0);
    for r in &f.resolveds[1..] {
        let report = sync(&f.feed, &target, &run(Some(*r))).await.unwrap();
        let t = &report.tables["usertable"];
        sliced += t.table_files_sliced;
        indexed += t.table_files_indexed;
        with_dv += t.files_with_deletion_vectors;
    }
    assert!(
        sliced > 0 && indexed > 0 && with_dv > 0,
        "{label}: {sliced} {indexed} {with_dv}"
    );
    // The load's files given deletion vectors kept their tags, read back through a checkpoint.
    let log = dir.path().join("delta/usertable/_delta_log");
    assert!(
        std::fs::read_dir(&log).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".checkpoint.parquet")),
        "{label}: no checkpoint"
    );
    let table = open().await;
    let now = delta::files(&table, "id").await.unwrap();
    let (mut kept, mut given_dv) = (0, 0);
    for e in now
        .iter()
        .filter(|e| tagged.iter().any(|t| t.path == e.path))
    {
        assert!(e.slice.is_some(), "{label}: {} lost its tag", e.path);
        kept += 1;
        given_dv += usize::from(e.dv.is_some());
    }
    assert!(
        kept == tagged.len() && given_dv > 0,
        "{label}: {kept} {given_dv}"
    );
    assert_equals_truth(&target, &f.truth_dir, "usertable").await;
}

/// A compaction between two steps of one process (the handler's CatchUp upkeep between two
/// RESOLVEDs): the index drops the files it removed, learns the one it wrote, and the table
/// equals the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_index_follows_a_compaction_between_steps() {
    use crdb_delta::engine::key_cache::KeyCache;
    use crdb_delta::maintain::{MaintainOptions, maintain_table};
    let dir = tempfile::tempdir().unwrap();
    let f = straddling_feed(dir.path(), 8).await;
    let target = Location::open(dir.path().join("delta").to_str().unwrap()).unwrap();
    let cache = KeyCache::default();
    let run = |until: Option<Hlc>| SyncOptions {
        config: f.config.clone(),
        each_resolved: true,
        until,
        key_cache: cache.clone(),
        ..SyncOptions::default()
    };
    // The first step creates the table, the second probes it, the third learns its files'
    // keys (from a table's second step in a process), the fourth looks them up.
    let first = sync(&f.feed, &target, &run(Some(f.resolveds[3])))
        .await
        .unwrap();
    assert!(
        first.tables["usertable"].table_files_indexed > 0,
        "{first:?}"
    );
    // The table's live files and those the index holds, by path.
    let live_and_held = || async {
        let tb = open_table(&target, "usertable").await;
        let live: std::collections::BTreeSet<String> = delta::files(&tb, "id")
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
        (live, cache.paths(tb.table_url().as_ref()))
    };
    let learned = cache.bytes();
    let (_, held_before) = live_and_held().await;
    assert!(!held_before.is_empty());
    let upkeep = maintain_table(
        &target,
        "usertable",
        &MaintainOptions {
            vacuum: false,
            ..MaintainOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(upkeep.files_compacted >= 2, "{upkeep:?}");
    // The compaction removed files the index holds.
    let (live, _) = live_and_held().await;
    assert!(
        held_before.iter().any(|p| !live.contains(p)),
        "{held_before:?} {live:?}"
    );
    let rest = sync(&f.feed, &target, &run(None)).await.unwrap();
    let rest = &rest.tables["usertable"];
    assert!(rest.commits > 0 && rest.table_files_indexed > 0, "{rest:?}");
    // The compacted files' entries went: the index holds live files only, and what the later
    // steps learned.
    let (live, held) = live_and_held().await;
    assert!(held.iter().all(|p| live.contains(p)), "{held:?} {live:?}");
    assert_ne!(cache.bytes(), learned);
    assert_equals_truth(&target, &f.truth_dir, "usertable").await;
}

/// Deletion vectors, one commit per RESOLVED into a table larger than its windows: each step
/// adds a small file, which later windows change only in part. Once 8 small files pile up, a
/// step rewrites every small file it probes, changed or not, so the files each step probes
/// fall back to a few instead of staying near the 8 that trip the rewrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_a_step_probes_are_rewritten_once_they_pile_up() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimOptions {
        tables: vec!["usertable".into()],
        initial_rows: 3000,
        windows: 40,
        events_per_window: 4,
        mix: [0.25, 0.5, 0.25],
        ..SimOptions::default()
    };
    let (feed, config) = simulated(dir.path(), sim).await;
    let target = Location::open(dir.path().join("delta").to_str().unwrap()).unwrap();
    let opts = SyncOptions {
        config,
        each_resolved: true,
        ..SyncOptions::default()
    };
    let report = sync(&feed, &target, &opts).await.unwrap();
    let t = &report.tables["usertable"];
    assert!(t.commits >= 30, "{report:?}");
    assert!(t.files_rewritten > 0, "{report:?}");
    // 2.8 files a step here; 5.4 when only the small files a window changes are rewritten.
    assert!(t.table_files_read <= 4 * t.commits, "{report:?}");
    let tb = open_table(&target, "usertable").await;
    let live = delta::files(&tb, "id").await.unwrap().len();
    assert!(live <= 9, "{live} live files");
    assert_equals_truth(&target, &dir.path().join("truth"), "usertable").await;
}
