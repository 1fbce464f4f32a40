//! The Functions handler end to end on Azurite: the real `crdb-delta serve` process, a simulated
//! changefeed, BlobCreated invocations posted as the host forwards them (twice, out of order,
//! concurrently), a handler killed mid-apply and restarted. Its Delta tables must equal what a
//! plain `crdb-delta sync` of the same source produces.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::{Array, StringArray};
use crdb_delta::delta::{self, Target};
use crdb_delta::dev::pump::{blob_created_event, invocation_body};
use crdb_delta::serve::http::{new_id, post_invocation};
use crdb_delta::storage::Location;
use serde_json::{Value, json};

mod support;

use support::{ACCOUNT, azurite, create_container};

const BIN: &str = env!("CARGO_BIN_EXE_crdb-delta");

fn run(base: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("CRDB_DELTA_LOG", "warn")
        .env("AZURE_STORAGE_USE_EMULATOR", "true")
        .env("AZURITE_BLOB_STORAGE_URL", base)
        .output()
        .unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `crdb-delta serve`, killed on drop.
struct Handler {
    child: Child,
    port: u16,
}

impl Handler {
    fn start(base: &str, dir: &Path, container: &str, fault: Option<&str>) -> (Self, Duration) {
        let port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("serve.log"))
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .env("CRDB_DELTA_SOURCE", format!("azure://{container}/feed"))
            .env("CRDB_DELTA_TARGET", format!("azure://{container}/delta"))
            .env("CRDB_DELTA_CONFIG", dir.join("config.json"))
            .env("CRDB_DELTA_LEASE_SECONDS", "3")
            .env("CRDB_DELTA_LOG", "info,buoyant_kernel=warn")
            .env("AZURE_STORAGE_USE_EMULATOR", "true")
            .env("AZURITE_BLOB_STORAGE_URL", base)
            .env_remove("CRDB_DELTA_FAULT")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(f) = fault {
            cmd.env("CRDB_DELTA_FAULT", f);
        }
        let started = Instant::now();
        let child = cmd.spawn().unwrap();
        let mut h = Self { child, port };
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                h.child.try_wait().unwrap().is_none(),
                "serve exited: {}",
                std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
            );
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "serve not listening"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let ready = started.elapsed();
        (h, ready)
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Posts one BlobCreated invocation for a blob; returns (status, reply body).
async fn post_blob(
    addr: &str,
    container: &str,
    name: &str,
    size: u64,
) -> Result<(u16, Value), String> {
    let ev = blob_created_event(
        ACCOUNT,
        &format!("http://127.0.0.1:1/{ACCOUNT}"),
        container,
        name,
        size,
        None,
    );
    let body = serde_json::to_vec(&invocation_body("BlobCreated", &ev)).unwrap();
    let r = post_invocation(
        addr,
        "BlobCreated",
        &new_id(),
        &body,
        Duration::from_secs(300),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok((
        r.status,
        serde_json::from_str(&r.body).map_err(|e| format!("{e}: {}", r.body))?,
    ))
}

/// Every row's `__crdb_hlc` of a table, sorted: with the row count, a fingerprint of its state
/// (full content is checked against the ground truth by tests/python/test_function_e2e.py).
async fn fingerprint(root: &Location, table: &str) -> (Option<String>, Vec<String>) {
    let t = Target::new(root, table).unwrap();
    let tb = t.open().await.unwrap().expect("table exists");
    let applied = delta::progress(&tb, table)
        .await
        .unwrap()
        .applied
        .map(|h| h.to_string());
    let mut hlcs = Vec::new();
    for f in delta::files(&tb, "id").await.unwrap() {
        for b in delta::read_live_file(&tb, &f, 8192).await.unwrap() {
            let col = b.column_by_name("__crdb_hlc").expect("__crdb_hlc");
            let s = col.as_any().downcast_ref::<StringArray>().unwrap();
            hlcs.extend((0..s.len()).map(|i| s.value(i).to_owned()));
        }
    }
    hlcs.sort();
    (applied, hlcs)
}

/// A simulated changefeed on Azurite with the config a user would write.
struct Feed {
    base: String,
    container: String,
    dir: tempfile::TempDir,
    objects: Vec<crdb_delta_core::plan::Object>,
    /// `(blob name, size, is RESOLVED)` in changefeed order.
    blobs: Vec<(String, u64, bool)>,
}

impl Feed {
    fn resolved(&self) -> Vec<&(String, u64, bool)> {
        self.blobs.iter().filter(|b| b.2).collect()
    }

    fn last_resolved(&self) -> String {
        self.objects
            .iter()
            .rev()
            .find(|o| o.path.ends_with(".RESOLVED"))
            .unwrap()
            .name
            .ts()
            .to_string()
    }
}

async fn feed(tag: &str) -> Option<Feed> {
    let base = azurite()?;
    // SAFETY: set before any other thread of this test process reads the environment; each
    // nextest test is its own process.
    unsafe {
        std::env::set_var("AZURE_STORAGE_USE_EMULATOR", "true");
        std::env::set_var("AZURITE_BLOB_STORAGE_URL", &base);
    }
    let container = format!("{tag}{}", std::process::id());
    create_container(&base, &container);
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("truth");
    let out = run(
        &base,
        &[
            "simulate",
            "--out",
            &format!("azure://{container}/feed"),
            "--truth",
            truth.to_str().unwrap(),
            "--windows",
            "5",
            "--events-per-window",
            "150",
            "--initial-rows",
            "50",
            "--straddle",
            "0.25",
            "--duplicate-rate",
            "0.05",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The keys and SQL types a user would configure, from the simulator's manifest.
    let manifest: crdb_delta_core::sim::Manifest =
        serde_json::from_str(&std::fs::read_to_string(truth.join("manifest.json")).unwrap())
            .unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&crdb_delta::config::Config::from_manifest(&manifest)).unwrap(),
    )
    .unwrap();

    let source = Location::open(&format!("azure://{container}/feed")).unwrap();
    let (objects, _) = crdb_delta::engine::list(&source).await.unwrap();
    let blobs: Vec<(String, u64, bool)> = objects
        .iter()
        .map(|o| {
            (
                format!("feed/{}", o.path),
                o.size,
                o.path.ends_with(".RESOLVED"),
            )
        })
        .collect();
    assert!(blobs.iter().filter(|b| b.2).count() >= 4);
    Some(Feed {
        base,
        container,
        dir,
        objects,
        blobs,
    })
}

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
    let timer = json!({"Data": {"timer": {"Schedule": {}, "ScheduleStatus": null, "IsPastDue": true}},
        "Metadata": {"sys": {"MethodName": "CatchUp"}}});
    let r = post_invocation(
        &addr,
        "CatchUp",
        &new_id(),
        timer.to_string().as_bytes(),
        Duration::from_secs(300),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // With time left in its budget, the timer also keeps the tables up (compaction,
    // checkpoint, log cleanup, VACUUM): the three tables and the RESOLVED record.
    assert!(r.body.contains("upkeep of 4 table(s)"), "{}", r.body);

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
    let local = dir.path().join("sync");
    let out = run(
        base,
        &[
            "sync",
            "--source",
            &format!("azure://{container}/feed"),
            "--target",
            local.to_str().unwrap(),
            "--config",
            dir.path().join("config.json").to_str().unwrap(),
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let handler_root = Location::open(&format!("azure://{container}/delta")).unwrap();
    let sync_root = Location::open(local.to_str().unwrap()).unwrap();
    for t in ["usertable", "orders", "kitchen_sink"] {
        let (ha, hrows) = fingerprint(&handler_root, t).await;
        let (sa, srows) = fingerprint(&sync_root, t).await;
        assert_eq!(ha.as_deref(), Some(last_hlc.as_str()), "{t}");
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
