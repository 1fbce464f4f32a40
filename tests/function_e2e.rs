//! The Functions handler end to end on Azurite: the real `crdb-delta serve` process, a simulated
//! changefeed, BlobCreated invocations posted as the host forwards them (twice, out of order,
//! concurrently), a handler killed mid-apply and restarted. Its Delta tables must equal what a
//! plain `crdb-delta sync` of the same source produces.

use std::time::{Duration, Instant};

use crdb_delta::serve::http::{new_id, post_invocation};
use crdb_delta::storage::Location;
use serde_json::{Value, json};

mod support;

use support::handler::{Handler, feed, fingerprint, post_blob, post_timer, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_applies_events_exactly_once_like_sync() {
    let Some(f) = feed("fn").await else {
        return;
    };
    let (base, container, dir, blobs) = (&f.base, &f.container, &f.dir, &f.blobs);
    let resolved = f.resolved();

    // 1. A handler that aborts after uploading its first Parquet files, before the commit.
    let (h, ready) = Handler::start(base, dir.path(), container, Some("after-write"));
    eprintln!("cold start (spawn -> accepting): {} ms", ready.as_millis());
    let addr = h.addr();
    for (name, size, _) in blobs.iter().filter(|b| !b.2).take(5) {
        let (status, _) = post_blob(&addr, container, name, *size).await.unwrap();
        assert_eq!(status, 200);
    }
    let killed = post_blob(&addr, container, &resolved[1].0, resolved[1].1).await;
    assert!(
        killed.is_err(),
        "the fault should have killed the handler: {killed:?}"
    );
    drop(h);

    // 2. Restarted; its lease (3 s) has gone stale. Two RESOLVED invocations at once: one
    // applies, the other finds the lease held (or finds nothing left to do).
    std::thread::sleep(Duration::from_secs(4));
    let (h, _) = Handler::start(base, dir.path(), container, None);
    let addr = h.addr();
    let (a, b) = tokio::join!(
        post_blob(&addr, container, &resolved[2].0, resolved[2].1),
        post_blob(&addr, container, &resolved[3].0, resolved[3].1)
    );
    for r in [&a, &b] {
        assert_eq!(r.as_ref().unwrap().0, 200, "{r:?}");
    }

    // 3. Everything, newest first, each event twice.
    for (name, size, _) in blobs.iter().rev() {
        for _ in 0..2 {
            let (status, reply) = post_blob(&addr, container, name, *size).await.unwrap();
            assert_eq!(status, 200, "{name}: {reply}");
        }
    }
    // Our own writes and foreign names are refused with 200.
    let (status, reply) = post_blob(
        &addr,
        container,
        "delta/usertable/_delta_log/00000000000000000000.json",
        1,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        reply["Logs"][0].as_str().unwrap().contains("own write"),
        "{reply}"
    );
    let (status, reply) = post_blob(&addr, container, "feed/../etc/passwd", 1)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        reply["Logs"][0].as_str().unwrap().contains("refused"),
        "{reply}"
    );

    // 4. The timer: nothing new to apply, but it consumes the markers of data files whose
    // events came after their RESOLVED had been applied (out-of-order delivery).
    let (status, reply) = post_timer(&addr, true).await.unwrap();
    assert_eq!(status, 200, "{reply}");
    // With time left in its budget, the timer also keeps the tables up (compaction,
    // checkpoint, log cleanup, VACUUM): the three tables and the RESOLVED record.
    assert!(
        reply.to_string().contains("upkeep of 4 table(s)"),
        "{reply}"
    );

    // 5. Status: every table at the last RESOLVED, nothing left buffered.
    let body = json!({"Data": {"req": {"Url": "http://localhost/api/status", "Method": "GET",
        "Query": {}, "Headers": {}, "Params": {}}}, "Metadata": {}});
    let r = post_invocation(
        &addr,
        "Status",
        &new_id(),
        body.to_string().as_bytes(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let reply: Value = serde_json::from_str(&r.body).unwrap();
    let status: Value =
        serde_json::from_str(reply["Outputs"]["res"]["body"].as_str().unwrap()).unwrap();
    let last = resolved.last().unwrap();
    let last_hlc = f.last_resolved();
    assert!(last.0.ends_with(".RESOLVED"));
    for (t, s) in status["tables"].as_object().unwrap() {
        assert_eq!(s["resolved"].as_str(), Some(last_hlc.as_str()), "{t}: {s}");
        assert_eq!(s["buffered_files"].as_u64(), Some(0), "{t}: {s}");
    }
    assert_eq!(status["tables"].as_object().unwrap().len(), 3, "{status}");
    // The same document straight from the handler (the local loop has no host to forward it).
    for path in ["Status", "api/Status"] {
        let direct: Value = reqwest::get(format!("http://{addr}/{path}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // Equal but for the age, which grows meanwhile.
        let without_age = |v: &Value| {
            let mut t = v["tables"].clone();
            for s in t.as_object_mut().unwrap().values_mut() {
                s.as_object_mut().unwrap().remove("age_seconds");
            }
            t
        };
        assert_eq!(without_age(&direct), without_age(&status), "{path}");
    }
    let text = reqwest::get(format!("http://{addr}/Status?format=text"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(last_hlc.as_str()), "{text}");
    drop(h);

    // 6. The same source through plain `sync` into a local folder: same tables.
    assert_equals_sync(&f, &["--json"]).await;
}

/// `sync` (with `args`) from the feed into a local folder, and the handler's tables in the
/// container: each table at the feed's last RESOLVED, not empty, and the same rows (by
/// `__crdb_hlc`, so a row applied twice shows).
async fn assert_equals_sync(f: &support::handler::Feed, args: &[&str]) {
    let (base, container, dir) = (&f.base, &f.container, &f.dir);
    let local = dir.path().join("sync");
    let source = format!("azure://{container}/feed");
    let config = dir.path().join("config.json");
    let mut sync = vec![
        "sync",
        "--source",
        &source,
        "--target",
        local.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    sync.extend_from_slice(args);
    let out = run(base, &sync);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = f.last_resolved();
    let handler_root = Location::open(&format!("azure://{container}/delta")).unwrap();
    let sync_root = Location::open(local.to_str().unwrap()).unwrap();
    for t in ["usertable", "orders", "kitchen_sink"] {
        let (ha, hrows) = fingerprint(&handler_root, t).await;
        let (sa, srows) = fingerprint(&sync_root, t).await;
        assert_eq!(ha.as_deref(), Some(last.as_str()), "{t}");
        assert_eq!(ha, sa, "{t}: applied RESOLVED");
        assert!(!hrows.is_empty(), "{t}: empty");
        assert_eq!(hrows, srows, "{t}: rows (by __crdb_hlc)");
    }
}

/// A lease holder killed mid-apply, and then one more RESOLVED event and nothing else: the
/// invocation that finds the crashed holder's lease waits for it to expire, takes it over and
/// applies everything up to its RESOLVED. No later event or timer is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_lease_holder_is_taken_over_without_a_later_event() {
    let Some(f) = feed("lease").await else {
        return;
    };
    let resolved = f.resolved();
    let dir = f.dir.path();
    // Two instances: one dies after uploading its files, holding the lease (3 s).
    let (dying, _) = Handler::start(&f.base, dir, &f.container, Some("after-write"));
    let (other, _) = Handler::start(&f.base, dir, &f.container, None);
    let killed = post_blob(&dying.addr(), &f.container, &resolved[1].0, resolved[1].1).await;
    assert!(
        killed.is_err(),
        "the fault should have killed it: {killed:?}"
    );
    // The lease is still valid for up to 3 s: the last RESOLVED arrives at the other instance.
    let last = resolved.last().unwrap();
    let started = Instant::now();
    let (status, reply) = post_blob(&other.addr(), &f.container, &last.0, last.1)
        .await
        .unwrap();
    assert_eq!(status, 200, "{reply}");
    let logs = reply["Logs"].to_string();
    assert!(logs.contains("applied up to"), "{logs}");
    eprintln!(
        "taken over and applied in {} ms",
        started.elapsed().as_millis()
    );
    let root = Location::open(&format!("azure://{}/delta", f.container)).unwrap();
    let want = f.last_resolved();
    for t in ["usertable", "orders", "kitchen_sink"] {
        let (applied, rows) = fingerprint(&root, t).await;
        assert_eq!(applied.as_deref(), Some(want.as_str()), "{t}");
        assert!(!rows.is_empty(), "{t}");
    }
    drop(dying);
}

/// A `serve` process keeps its tables open between invocations (`engine/table_cache.rs`). Here
/// another instance applies a RESOLVED and `maintain` compacts every table between two of its
/// invocations: its next invocation must start from their commits, not from what it kept. In
/// append_only a step planned from stale progress would append a window's rows again, so the
/// tables must equal `sync`'s row for row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_kept_open_follow_other_writers_commits() {
    let Some(f) = feed("kt").await else {
        return;
    };
    let (base, container, dir, blobs) = (&f.base, &f.container, &f.dir, &f.blobs);
    let resolved = f.resolved();
    let mode = [("CRDB_DELTA_MODE", "append_only")];
    let (a, _) = Handler::start_with(base, dir.path(), container, None, &mode);
    let (b, _) = Handler::start_with(base, dir.path(), container, None, &mode);
    let (a, b) = (a.addr(), b.addr());
    let post = |addr: String, blob: &(String, u64, bool)| {
        let (name, size) = (blob.0.clone(), blob.1);
        async move {
            let (status, reply) = post_blob(&addr, container, &name, size).await.unwrap();
            assert_eq!(status, 200, "{name}: {reply}");
        }
    };
    for blob in blobs.iter().filter(|b| !b.2) {
        post(a.clone(), blob).await;
    }
    // A applies the first two RESOLVEDs (and keeps the tables), B the third.
    post(a.clone(), resolved[0]).await;
    post(a.clone(), resolved[1]).await;
    post(b.clone(), resolved[2]).await;
    // Another writer: compaction of every table (commits that change no data).
    let out = run(
        base,
        &[
            "maintain",
            "--target",
            &format!("azure://{container}/delta"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A again, from the tables it kept: the rest.
    for r in &resolved[3..] {
        post(a.clone(), r).await;
    }

    assert_equals_sync(&f, &["--mode", "append_only"]).await;
}

/// A new instance learns a table's key indexes when it first hears of the table's files, so
/// the RESOLVED that follows looks every table file up instead of reading its key columns;
/// with `warm_up: false` in the config, it reads them. The tables equal `sync`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_learns_key_indexes_before_the_resolved() {
    let Some(f) = feed("wu").await else {
        return;
    };
    let (base, container, dir, blobs) = (&f.base, &f.container, &f.dir, &f.blobs);
    let post = |addr: String, blob: (String, u64, bool)| async move {
        let (status, reply) = post_blob(&addr, container, &blob.0, blob.1).await.unwrap();
        assert_eq!(status, 200, "{}: {reply}", blob.0);
        reply
    };
    // The data files of the window ending at the `n`th RESOLVED, and that RESOLVED.
    let window = |n: usize| {
        let ends: Vec<usize> = (0..blobs.len()).filter(|&i| blobs[i].2).collect();
        let from = if n == 0 { 0 } else { ends[n - 1] + 1 };
        (blobs[from..ends[n]].to_vec(), blobs[ends[n]].clone())
    };
    let log = || std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
    let warmed = || log().matches("key index warmed").count();
    // Where the indexes are looked up, from a RESOLVED's reply: (looked up, table files).
    let looked_up = |reply: &Value| -> (u64, u64) {
        let line = reply["Logs"][0].as_str().unwrap_or_default().to_owned();
        let Some(i) = line.find(" table file(s) looked up in the key index") else {
            return (0, 0);
        };
        let words: Vec<u64> = line[..i]
            .rsplit("; ")
            .next()
            .unwrap()
            .split(" of ")
            .map(|n| n.parse().unwrap())
            .collect();
        (words[0], words[1])
    };

    // An instance loads the tables and applies a window; no table to warm before the load.
    let (a, _) = Handler::start(base, dir.path(), container, None);
    for n in 0..2 {
        let (files, resolved) = window(n);
        for b in files {
            post(a.addr(), b).await;
        }
        post(a.addr(), resolved).await;
    }
    assert_eq!(warmed(), 0, "{}", log());
    drop(a);

    // A new instance hears of the next window's files: it learns each table's indexes, and
    // the RESOLVED finds every table file it probes there.
    let (b, _) = Handler::start(base, dir.path(), container, None);
    let (files, resolved) = window(2);
    let tables: std::collections::BTreeSet<String> = files
        .iter()
        // `<…>-<topic>-<schema id>.<ext>`; a column family's topic is `table+family`.
        .map(|(name, _, _)| {
            let topic = name.rsplit('-').nth(1).unwrap();
            topic.split('+').next().unwrap().to_owned()
        })
        .collect();
    for file in files {
        post(b.addr(), file).await;
    }
    wait_until(
        Instant::now(),
        Duration::from_secs(60),
        || warmed() >= tables.len(),
        || format!("{tables:?}: {}", log()),
    )
    .await;
    let reply = post(b.addr(), resolved).await;
    let (indexed, read) = looked_up(&reply);
    assert!(read > 0 && indexed == read, "{reply}");
    drop(b);

    // A new instance with warm-ups off reads the key columns at its first RESOLVED.
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    config["warm_up"] = json!(false);
    let off = dir.path().join("config-off.json");
    std::fs::write(&off, config.to_string()).unwrap();
    let (c, _) = Handler::start_with(
        base,
        dir.path(),
        container,
        None,
        &[("CRDB_DELTA_CONFIG", off.to_str().unwrap())],
    );
    let before = warmed();
    let (files, resolved) = window(3);
    for file in files {
        post(c.addr(), file).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reply = post(c.addr(), resolved).await;
    let (indexed, read) = looked_up(&reply);
    assert!(read > 0 && indexed == 0, "{reply}");
    assert_eq!(warmed(), before, "{}", log());
    // The rest, then the same tables as `sync`'s.
    for b in blobs.iter().skip_while(|b| b.0 != window(3).1.0).skip(1) {
        post(c.addr(), b.clone()).await;
    }
    drop(c);
    assert_equals_sync(&f, &["--json"]).await;
}

/// An initial scan larger than the window, applied in key slices by the handler, whose config
/// sizes no slice cache: with its temporary folder on disk the handler sizes one, and the later
/// slices read their rows from the spill; with it on a memory file system (`/dev/shm`) there is
/// none, and every slice reads the files. Neither leaves its folder. (Sliced loads equal the
/// truth with and without a cache: tests/sync_contract.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_sizes_a_slice_cache_on_disk_and_none_in_memory() {
    let Some(f) = feed("sc").await else {
        return;
    };
    let (base, container, dir, blobs) = (&f.base, &f.container, &f.dir, &f.blobs);
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    config["max_window_bytes"] = json!(16_000);
    config["min_slice_bytes"] = json!(1_000);
    let sliced = dir.path().join("config-sliced.json");
    std::fs::write(&sliced, config.to_string()).unwrap();
    let disk = tempfile::tempdir().unwrap();
    let memory = tempfile::tempdir_in("/dev/shm").unwrap();
    let scan_end = blobs.iter().position(|b| b.2).unwrap();
    let mut spilled = Vec::new();
    for (tmp, target) in [(disk.path(), "delta-disk"), (memory.path(), "delta-memory")] {
        let log_dir = tempfile::tempdir().unwrap();
        // Each handler its own target (tables, buffer and lease) over the one feed.
        let target_url = format!("azure://{container}/{target}");
        let (h, _) = Handler::start_with(
            base,
            log_dir.path(),
            container,
            None,
            &[
                ("CRDB_DELTA_CONFIG", sliced.to_str().unwrap()),
                ("CRDB_DELTA_TARGET", target_url.as_str()),
                ("TMPDIR", tmp.to_str().unwrap()),
            ],
        );
        for (name, size, _) in &blobs[..=scan_end] {
            let (status, reply) = post_blob(&h.addr(), container, name, *size).await.unwrap();
            assert_eq!(status, 200, "{name}: {reply}");
        }
        drop(h);
        let log = std::fs::read_to_string(log_dir.path().join("serve.log")).unwrap();
        let field = |name: &str| -> u64 {
            let applied = log.lines().filter(|l| l.contains("table applied"));
            applied.filter_map(|l| log_field(l, name)).sum()
        };
        spilled.push((field("files_from_slice_spill"), field("commits"), log));
        assert_eq!(
            std::fs::read_dir(tmp).unwrap().count(),
            0,
            "folder left in {}",
            tmp.display()
        );
    }
    let (on_disk, in_memory) = (&spilled[0], &spilled[1]);
    assert!(on_disk.1 > 3, "not sliced: {}", on_disk.2);
    assert!(on_disk.0 > 0, "{}", on_disk.2);
    assert_eq!(in_memory.0, 0, "{}", in_memory.2);
}

/// A compaction and a VACUUM (another writer) between a warm-up's listing and its reads: the
/// files gone are passed over, nothing fails, and the RESOLVED after it applies as `sync` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_up_passes_over_files_compacted_away_meanwhile() {
    let Some(f) = feed("wv").await else {
        return;
    };
    let (base, container, dir, blobs) = (&f.base, &f.container, &f.dir, &f.blobs);
    let resolved: Vec<usize> = (0..blobs.len()).filter(|&i| blobs[i].2).collect();
    let post = |addr: String, i: usize| async move {
        let (name, size, _) = &blobs[i];
        let (status, reply) = post_blob(&addr, container, name, *size).await.unwrap();
        assert_eq!(status, 200, "{name}: {reply}");
    };
    // Loaded, and two windows applied: each table has several small files.
    let (a, _) = Handler::start(base, dir.path(), container, None);
    for i in 0..=resolved[2] {
        post(a.addr(), i).await;
    }
    drop(a);
    let log = || std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
    let pauses = tempfile::tempdir().unwrap();
    let (b, _) = Handler::start_with(
        base,
        dir.path(),
        container,
        None,
        &[
            ("CRDB_DELTA_PAUSE", "warm-before-fetch"),
            ("CRDB_DELTA_PAUSE_DIR", pauses.path().to_str().unwrap()),
        ],
    );
    // A data file of the next window: its table's warm-up lists the files and pauses.
    let next = resolved[2] + 1;
    assert!(!blobs[next].2);
    post(b.addr(), next).await;
    let paused = pauses.path().join("warm-before-fetch.paused");
    let started = Instant::now();
    wait_until(started, Duration::from_secs(60), || paused.exists(), log).await;
    // Another writer compacts every table and vacuums what it removed at once.
    let out = run(
        base,
        &[
            "maintain",
            "--target",
            &format!("azure://{container}/delta"),
            "--retain-hours",
            "0",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = log().matches("key index warmed").count();
    std::fs::write(pauses.path().join("warm-before-fetch.resume"), b"").unwrap();
    let warmed = || log().matches("key index warmed").count() > before;
    wait_until(started, Duration::from_secs(120), warmed, log).await;
    let line = log()
        .lines()
        .rfind(|l| l.contains("key index warmed"))
        .unwrap()
        .to_owned();
    let number = |name: &str| log_field(&line, name).unwrap();
    // Every listed file was compacted away: none learned, and that is no failure.
    assert!(number("files") > 1, "{line}");
    assert_eq!(number("files_learned"), 0, "{line}");
    assert!(!log().contains("warm-up failed"), "{}", log());
    // The rest, applied as `sync` applies it.
    for i in next + 1..blobs.len() {
        post(b.addr(), i).await;
    }
    drop(b);
    assert_equals_sync(&f, &["--json"]).await;
}

/// `name`'s number among a log line's `name=value` fields.
fn log_field(line: &str, name: &str) -> Option<u64> {
    line.split(&format!(" {name}="))
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// Waits until `ready()` holds; fails with `log()` once `limit` has passed since `started`.
async fn wait_until(
    started: Instant,
    limit: Duration,
    mut ready: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    while !ready() {
        assert!(started.elapsed() < limit, "{}", log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
