"""What the benchmark scripts share: the repository root, RESOLVED names as HLCs, running the
binary quietly (failing the benchmark with its output when it fails)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def hlc_of(name: str) -> str:
    """The HLC (`<wall>.<logical>`) of a `.RESOLVED` object's name."""
    t = dt.datetime.strptime(name[:14], "%Y%m%d%H%M%S").replace(tzinfo=dt.timezone.utc)
    return f"{int(t.timestamp()) * 1_000_000_000 + int(name[14:23])}.{name[23:33]}"


def run(*args: str) -> subprocess.CompletedProcess:
    p = subprocess.run(args, capture_output=True, text=True, env={"CRDB_DELTA_LOG": "error", "PATH": "/usr/bin:/bin"})
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
