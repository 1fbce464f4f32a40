//! The same simulated changefeed written to a local folder and to Azurite (a real Blob endpoint)
//! reads back identically through the one storage path: `simulate` and `inspect` as a user runs them.

use std::process::Command;

mod support;

use support::{azurite, create_container};

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
