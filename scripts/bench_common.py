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
