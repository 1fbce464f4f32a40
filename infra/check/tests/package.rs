//! `scripts/package --binary <stub>` lays out the zip-deploy archive as the Functions host needs
//! it: the binary at the root with its run bit, host.json, one folder per function. A static C
//! stub stands in for the release build (too slow for a test); the script refuses a binary built
//! against this machine's newer glibc (tests/python/test_package.py).

use std::path::{Path, PathBuf};
use std::process::Command;

use crdb_delta_infra_check::repo_root;

/// One central-directory entry: name, Unix mode (from the external attributes) and size.
#[derive(Debug)]
struct Entry {
    name: String,
    mode: u32,
    size: u32,
}

fn u16_at(b: &[u8], i: usize) -> usize {
    u16::from_le_bytes([b[i], b[i + 1]]) as usize
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Reads the zip central directory (PKWARE APPNOTE 4.3.12/4.3.16) without a zip crate.
fn entries(zip: &[u8]) -> Vec<Entry> {
    let eocd = (0..zip.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(zip, i) == 0x0605_4b50)
        .expect("end of central directory");
    let count = u16_at(zip, eocd + 10);
    let mut at = u32_at(zip, eocd + 16) as usize;
    let mut out = Vec::new();
    for _ in 0..count {
        assert_eq!(u32_at(zip, at), 0x0201_4b50, "central directory header");
        let (name_len, extra, comment) = (
            u16_at(zip, at + 28),
            u16_at(zip, at + 30),
            u16_at(zip, at + 32),
        );
        out.push(Entry {
            name: String::from_utf8_lossy(&zip[at + 46..at + 46 + name_len]).into_owned(),
            mode: u32_at(zip, at + 38) >> 16,
            size: u32_at(zip, at + 24),
        });
        at += 46 + name_len + extra + comment;
    }
    out
}

/// A static x86-64 program (`cc -static`): it needs no glibc symbol, so the script's check of
/// what a binary needs passes, as it does for the glibc 2.28 release build.
fn stub_binary(dir: &Path) -> PathBuf {
    let src = dir.join("stub.c");
    std::fs::write(&src, "int main(void) { return 0; }\n").unwrap();
    let bin = dir.join("stub");
    let built = Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("running cc (the C compiler Rust links with)");
    assert!(built.success(), "cc -static failed");
    bin
}

fn package(args: &[&str], out: &Path) -> std::process::Output {
    Command::new(repo_root().join("scripts/package"))
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("running scripts/package")
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("crdb-delta-package-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn zip_holds_binary_host_json_and_function_folders() {
    let out = temp_dir("layout");
    let stub = stub_binary(&out);
    let config = out.join("cfg.json");
    std::fs::write(&config, "{}").unwrap();
    let run = package(
        &[
            "--binary",
            stub.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        &out,
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let zip = std::fs::read(out.join("crdb-delta-function.zip")).unwrap();
    let entries = entries(&zip);
    let files: Vec<&Entry> = entries.iter().filter(|e| !e.name.ends_with('/')).collect();

    let bin = files
        .iter()
        .find(|e| e.name == "crdb-delta")
        .expect("crdb-delta at the root");
    assert_eq!(bin.mode & 0o777, 0o755, "run bit kept");
    assert_eq!(bin.mode & 0o170000, 0o100000, "a regular file");
    assert_eq!(u64::from(bin.size), std::fs::metadata(&stub).unwrap().len());

    let mut want = vec![
        "crdb-delta".to_owned(),
        "crdb-delta.json".to_owned(),
        "host.json".to_owned(),
    ];
    for e in std::fs::read_dir(repo_root().join("function_app"))
        .unwrap()
        .flatten()
    {
        if e.path().join("function.json").is_file() {
            want.push(format!("{}/function.json", e.file_name().to_string_lossy()));
        }
    }
    want.sort();
    let mut got: Vec<String> = files.iter().map(|e| e.name.clone()).collect();
    got.sort();
    assert_eq!(got, want, "nothing missing, nothing extra");
    assert!(want.len() >= 8, "five functions expected: {want:?}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_binary_that_is_not_linux_x86_64_is_refused() {
    let out = temp_dir("refuse");
    let stub = out.join("not-elf");
    std::fs::write(&stub, b"#!/bin/sh\n").unwrap();
    let run = package(&["--binary", stub.to_str().unwrap()], &out);
    assert!(
        !run.status.success(),
        "a shell script was packaged as the handler"
    );
    let missing = package(&["--binary", "/nonexistent/crdb-delta"], &out);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    let _ = std::fs::remove_dir_all(&out);
}
