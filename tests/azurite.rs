//! The same simulated changefeed written to a local folder and to Azurite (a real Blob endpoint)
//! reads back identically through the one storage path: `simulate` and `inspect` as a user runs them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published well-known development key (not a secret).
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// `http://127.0.0.1:<port>` of the Azurite that `scripts/test` started, or None outside it.
fn azurite() -> Option<String> {
    match std::env::var("AZURITE_BLOB_ENDPOINT") {
        Ok(e) => Some(
            e.trim_end_matches('/')
                .trim_end_matches(ACCOUNT)
                .trim_end_matches('/')
                .to_owned(),
        ),
        Err(_) if std::env::var("CI").is_ok() => {
            panic!("AZURITE_BLOB_ENDPOINT is not set: run tests with scripts/test")
        }
        Err(_) => None,
    }
}

/// Creates a container with a Shared Key signed request (object_store cannot create containers).
fn create_container(base: &str, container: &str) {
    let date = chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let version = "2021-08-06";
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container"
    );
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &STANDARD.decode(AZURITE_KEY).unwrap(),
    );
    let sig = STANDARD.encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    let host = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(host).unwrap();
    write!(
        s,
        "PUT /{ACCOUNT}/{container}?restype=container HTTP/1.1\r\nHost: {host}\r\nx-ms-date: {date}\r\nx-ms-version: {version}\r\nAuthorization: SharedKey {ACCOUNT}:{sig}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 201"),
        "create container failed: {resp}"
    );
}

fn run(base: Option<&str>, args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crdb-delta"));
    cmd.args(args).env("CRDB_DELTA_LOG", "warn");
    if let Some(base) = base {
        cmd.env("AZURE_STORAGE_USE_EMULATOR", "true")
            .env("AZURITE_BLOB_STORAGE_URL", base);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn simulate_and_inspect_through_azurite_equal_local_folders() {
    let Some(base) = azurite() else {
        eprintln!("skipped: no Azurite (run scripts/test)");
        return;
    };
    let container = format!("cf{}", std::process::id());
    create_container(&base, &container);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("feed").to_string_lossy().into_owned();
    let remote = format!("azure://{container}/changefeeds/demo");
    let sim = [
        "--format",
        "parquet",
        "--compression",
        "zstd",
        "--windows",
        "4",
        "--events-per-window",
        "150",
        "--file-size",
        "20000",
        "--json",
    ];
    let truth = dir.path().join("truth").to_string_lossy().into_owned();
    let a = run(
        None,
        &[
            &["simulate", "--out", &local, "--truth", &truth][..],
            &sim[..],
        ]
        .concat(),
    );
    let b = run(
        Some(&base),
        &[
            &["simulate", "--out", &remote, "--truth", &truth][..],
            &sim[..],
        ]
        .concat(),
    );
    assert_eq!(a, b);
    assert!(a["data_files"].as_u64().unwrap() > 10);

    let mut l = run(None, &["inspect", "--source", &local, "--json"]);
    let mut r = run(Some(&base), &["inspect", "--source", &remote, "--json"]);
    for v in [&mut l, &mut r] {
        let o = v.as_object_mut().unwrap();
        for k in ["source", "seconds", "mb_per_s", "rows_per_s"] {
            o.remove(k);
        }
    }
    assert_eq!(l, r);
    assert_eq!(l["rows"].as_u64(), Some(a["messages"].as_u64().unwrap()));
    assert_eq!(
        l["tables"]["orders"]["primary_key"],
        serde_json::json!(["id"])
    );
}
