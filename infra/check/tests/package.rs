//! `scripts/package --binary <stub>` lays out the zip-deploy archive as the Functions host needs
//! it: the binary at the root with its run bit, host.json, one folder per function; and it
//! refuses a binary that would not run there. Small C programs stand in for the release build
//! (cargo-zigbuild against glibc 2.28, ~20 minutes cold): `--binary` takes the same checks.

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

/// Compiles `source` with `cc` (the C compiler Rust links with) into `dir/name`.
fn compile_c(dir: &Path, name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let bin = dir.join(name);
    let built = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&bin)
        .arg(&src)
        .args(flags)
        .status()
        .expect("running cc");
    assert!(built.success(), "cc {flags:?} failed for {name}");
    bin
}

/// A static x86-64 program: it needs no glibc symbol, so the script's check of what a binary
/// needs passes, as it does for the glibc 2.28 release build.
fn stub_binary(dir: &Path) -> PathBuf {
    compile_c(dir, "stub", "int main(void) { return 0; }\n", &["-static"])
}

/// The build machine's glibc version, from `ldd --version`'s first line.
fn glibc_version() -> (u32, u32) {
    let out = Command::new("ldd")
        .arg("--version")
        .output()
        .expect("running ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("");
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
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

#[test]
fn a_binary_needing_a_newer_glibc_than_the_baseline_is_refused() {
    assert!(
        glibc_version() >= (2, 34),
        "this test needs glibc >= 2.34 on the build machine (close_range)"
    );
    let out = temp_dir("new-glibc");
    // close_range() came with glibc 2.34, so a program calling it needs GLIBC_2.34.
    let bin = compile_c(
        &out,
        "new-glibc",
        "#define _GNU_SOURCE\n#include <unistd.h>\nint main(void) { return close_range(1000, 1001, 0); }\n",
        &[],
    );
    let run = package(&["--binary", bin.to_str().unwrap()], &out);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains(&format!(
            "{} needs glibc 2.34, newer than the baseline 2.28",
            bin.display()
        )),
        "{stderr}"
    );
    assert!(!out.join("crdb-delta-function.zip").exists());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_binary_needing_a_library_beyond_glibc_is_refused() {
    let out = temp_dir("extra-lib");
    // A shared library of the test's own, which the Functions host would not have.
    let lib = compile_c(
        &out,
        "libextra.so",
        "int extra(void) { return 0; }\n",
        &["-shared", "-fPIC"],
    );
    assert!(lib.is_file());
    let dir = format!("-L{}", out.display());
    let bin = compile_c(
        &out,
        "uses-extra",
        "int extra(void);\nint main(void) { return extra(); }\n",
        &[&dir, "-lextra"],
    );
    let run = package(&["--binary", bin.to_str().unwrap()], &out);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("needs libraries beyond glibc's: libextra.so"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn an_unknown_libc_is_refused_before_anything_is_built() {
    let out = temp_dir("libc");
    let run = package(&["--libc", "bionic"], &out);
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("--libc must be gnu or musl, not bionic")
    );
    let _ = std::fs::remove_dir_all(&out);
}
