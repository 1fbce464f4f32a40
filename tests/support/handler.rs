//! The handler's processes and a simulated changefeed on Azurite, for the tests that run
//! `crdb-delta serve` as the Functions host would.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::{Array, StringArray};
use crdb_delta::delta::{self, Target};
use crdb_delta::dev::pump::{blob_created_event, invocation_body};
use crdb_delta::serve::http::{new_id, post_invocation};
use crdb_delta::storage::Location;
use serde_json::Value;

use super::{ACCOUNT, azurite, create_container};

pub const BIN: &str = env!("CARGO_BIN_EXE_crdb-delta");

pub fn run(base: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("CRDB_DELTA_LOG", "warn")
        .env("AZURE_STORAGE_USE_EMULATOR", "true")
        .env("AZURITE_BLOB_STORAGE_URL", base)
        .output()
        .unwrap()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `crdb-delta serve`, killed on drop.
pub struct Handler {
    child: Child,
    port: u16,
}

impl Handler {
    pub fn start(base: &str, dir: &Path, container: &str, fault: Option<&str>) -> (Self, Duration) {
        Self::start_with(base, dir, container, fault, &[])
    }

    /// [`Handler::start`] with more app settings.
    pub fn start_with(
        base: &str,
        dir: &Path,
        container: &str,
        fault: Option<&str>,
        settings: &[(&str, &str)],
    ) -> (Self, Duration) {
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
        cmd.envs(settings.iter().copied());
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

    pub fn addr(&self) -> String {
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
pub async fn post_blob(
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
    post(addr, "BlobCreated", &body).await
}

/// Posts one invocation of `function` as the host does; returns (status, reply body).
pub async fn post(addr: &str, function: &str, body: &[u8]) -> Result<(u16, Value), String> {
    let r = post_invocation(addr, function, &new_id(), body, Duration::from_secs(300))
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        r.status,
        serde_json::from_str(&r.body).map_err(|e| format!("{e}: {}", r.body))?,
    ))
}

/// Posts a CatchUp (timer) invocation; returns (status, reply body).
pub async fn post_timer(addr: &str, past_due: bool) -> Result<(u16, Value), String> {
    let timer = serde_json::json!({"Data": {"timer": {"Schedule": {}, "ScheduleStatus": null,
        "IsPastDue": past_due}}, "Metadata": {"sys": {"MethodName": "CatchUp"}}});
    post(addr, "CatchUp", timer.to_string().as_bytes()).await
}

/// Every row's `__crdb_hlc` of a table, sorted: with the row count, a fingerprint of its state
/// (full content is checked against the ground truth by tests/python/test_function_e2e.py).
pub async fn fingerprint(root: &Location, table: &str) -> (Option<String>, Vec<String>) {
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
pub struct Feed {
    pub base: String,
    pub container: String,
    pub dir: tempfile::TempDir,
    pub objects: Vec<crdb_delta_core::plan::Object>,
    /// `(blob name, size, is RESOLVED)` in changefeed order.
    pub blobs: Vec<(String, u64, bool)>,
}

impl Feed {
    pub fn resolved(&self) -> Vec<&(String, u64, bool)> {
        self.blobs.iter().filter(|b| b.2).collect()
    }

    pub fn last_resolved(&self) -> String {
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

pub async fn feed(tag: &str) -> Option<Feed> {
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
