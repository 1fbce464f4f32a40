"""scripts/package: the binaries it refuses (the zip's layout: infra/check/tests/package.rs).

The release build itself (cargo-zigbuild against glibc 2.28, ~20 minutes cold here) is not run
in CI; these tests hand the script small binaries compiled with the system's C compiler through
`--binary`, which takes the same checks as its own build.
"""

import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "scripts" / "package"

# close_range() came with glibc 2.34, so a program calling it needs GLIBC_2.34.
NEW_GLIBC = """
#define _GNU_SOURCE
#include <unistd.h>
int main(void) { return close_range(1000, 1001, 0); }
"""

PLAIN = "int main(void) { return 0; }\n"


def compile_c(tmp_path: Path, name: str, source: str, *flags: str) -> Path:
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    out = tmp_path / name
    subprocess.run(["cc", "-O1", "-o", str(out), str(src), *flags], check=True)
    return out


def package(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PACKAGE), "--out", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, cwd=REPO_ROOT)


def glibc_version() -> tuple[int, ...]:
    out = subprocess.run(["ldd", "--version"], capture_output=True, text=True, check=True).stdout
    return tuple(int(p) for p in out.splitlines()[0].split()[-1].split("."))


def test_a_binary_needing_a_newer_glibc_than_the_baseline_is_refused(tmp_path):
    if glibc_version() < (2, 34):
        pytest.fail("this test needs glibc >= 2.34 on the build machine (close_range)")
    binary = compile_c(tmp_path, "new-glibc", NEW_GLIBC)
    res = package(tmp_path, "--binary", str(binary))
    assert res.returncode != 0
    assert f"{binary} needs glibc 2.34, newer than the baseline 2.28" in res.stderr
    assert not (tmp_path / "out" / "crdb-delta-function.zip").exists()


def test_a_binary_needing_a_library_beyond_glibc_is_refused(tmp_path):
    # A shared library of its own, which the Functions host would not have.
    lib = tmp_path / "libextra.so"
    (tmp_path / "extra.c").write_text("int extra(void) { return 0; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "extra.c")], check=True)
    binary = compile_c(tmp_path, "uses-extra", "int extra(void);\nint main(void) { return extra(); }\n",
                       f"-L{tmp_path}", "-lextra")
    res = package(tmp_path, "--binary", str(binary))
    assert res.returncode != 0
    assert "needs libraries beyond glibc's: libextra.so" in res.stderr


def test_an_unknown_libc_is_refused_before_anything_is_built(tmp_path):
    res = package(tmp_path, "--libc", "bionic")
    assert res.returncode != 0
    assert "--libc must be gnu or musl, not bionic" in res.stderr
