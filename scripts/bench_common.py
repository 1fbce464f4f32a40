"""What the benchmark scripts share: the repository root, RESOLVED names as HLCs, running the
binary quietly (failing the benchmark with its output when it fails)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def hlc_of(name: str) -> str:
    """The HLC (`<wall>.<logical>`) of a `.RESOLVED` object's name."""
    t = dt.datetime.strptime(name[:14], "%Y%m%d%H%M%S").replace(tzinfo=dt.timezone.utc)
    return f"{int(t.timestamp()) * 1_000_000_000 + int(name[14:23])}.{name[23:33]}"


QUIET_ENV = {"CRDB_DELTA_LOG": "error", "PATH": "/usr/bin:/bin"}


def measured(*args: str, env: dict | None = None) -> tuple[float, float, float, str]:
    """Runs a child to completion: (wall seconds, peak RSS in MiB, CPU seconds (user + system),
    its stdout); exits with its output when it fails. `env`: default QUIET_ENV.

    The peak RSS comes from GNU time (`/usr/bin/time`, Debian package `time`), which forks a
    fresh small process for the command: this script's own `wait4` figure would not do, because
    a child spawned straight from a large Python process starts with that process's high-water
    mark (vfork + exec keeps the old mm's peak in the child's `maxrss`).
    """
    with tempfile.TemporaryDirectory() as d:
        rss_file = Path(d) / "maxrss"
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", str(rss_file), *args],
                           capture_output=True, text=True, env=QUIET_ENV if env is None else env)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            sys.exit(f"{' '.join(args[:3])} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        kib, user, system = rss_file.read_text().split()[-3:]
    return wall, int(kib) / 1024, float(user) + float(system), p.stdout


def run(*args: str) -> subprocess.CompletedProcess:
    p = subprocess.run(args, capture_output=True, text=True, env=QUIET_ENV)
    if p.returncode != 0:
        sys.exit(f"{' '.join(args[:2])} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def simulate_usertable(bin_path: str, feed: Path, rows: int, windows: int, changes: int,
                       *extra: str) -> None:
    """A Parquet YCSB `usertable` (integer key, one 100-byte field) in `feed/changefeed`, its
    truth in `feed/truth`: ROWS in the initial scan, then WINDOWS - 1 windows of CHANGES
    changes; no restarts, schema changes, duplicates or straddling, so each RESOLVED's cost is
    its own. Kept when already there (deterministic seed)."""
    if (feed / "truth" / "manifest.json").exists():
        return
    run(bin_path, "simulate", "--out", str(feed / "changefeed"), "--truth", str(feed / "truth"),
        "--format", "parquet", "--tables", "usertable", "--ycsb-fields", "1",
        "--initial-rows", str(rows), "--windows", str(windows), "--events-per-window", str(changes),
        "--restart-at", "0", "--schema-change-at", "0", "--drop-column-at", "0",
        "--duplicate-rate", "0", "--straddle", "0", "--truth-states", "none", *extra)
