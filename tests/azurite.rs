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

/// The local loop on a fresh emulator: writing commands create the containers they write to;
/// reading one that does not exist is an error naming it, with nothing written.
#[test]
fn containers_are_created_on_the_emulator_and_a_missing_source_is_named() {
    let Some(base) = azurite() else {
        return;
    };
    let id = std::process::id();
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("truth").to_string_lossy().into_owned();
    let feed = format!("azure://fresh{id}/cf");
    let w = run(
        Some(&base),
        &[
            "simulate",
            "--out",
            &feed,
            "--truth",
            &truth,
            "--windows",
            "2",
            "--json",
        ],
    );
    assert!(w["data_files"].as_u64().unwrap() > 0, "{w}");
    let target = format!("azure://tables{id}/t");
    let r = run(
        Some(&base),
        &["sync", "--source", &feed, "--target", &target, "--json"],
    );
    assert!(r["events"].as_u64().unwrap() > 0, "{r}");
    let local = dir.path().join("out");
    let out = Command::new(env!("CARGO_BIN_EXE_crdb-delta"))
        .args([
            "sync",
            "--source",
            &format!("azure://nosuch{id}/cf"),
            "--target",
            local.to_str().unwrap(),
        ])
        .env("AZURE_STORAGE_USE_EMULATOR", "true")
        .env("AZURITE_BLOB_STORAGE_URL", &base)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("container `nosuch{id}` does not exist")),
        "{stderr}"
    );
    assert!(!stderr.contains("<Code>"), "no raw service XML: {stderr}");
    assert!(!local.exists(), "nothing written");
}
