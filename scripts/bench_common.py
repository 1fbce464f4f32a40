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


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs a child to completion (QUIET_ENV, plus `env`); exits with its output when it fails."""
    p = subprocess.run(args, capture_output=True, text=True, env={**QUIET_ENV, **(env or {})})
    if p.returncode != 0:
        sys.exit(f"{' '.join(args[:2])} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def simulate_usertable(bin_path: str, feed: Path, rows: int, windows: int, changes: int,
                       *extra: str, fmt: str = "parquet") -> None:
    """A Parquet (or `fmt` json: NDJSON) YCSB `usertable` (integer key, one 100-byte field) in `feed/changefeed`, its
    truth in `feed/truth`: ROWS in the initial scan, then WINDOWS - 1 windows of CHANGES
    changes; no restarts, schema changes, duplicates or straddling, so each RESOLVED's cost is
    its own. Kept when already there (deterministic seed)."""
    if (feed / "truth" / "manifest.json").exists():
        return
    run(bin_path, "simulate", "--out", str(feed / "changefeed"), "--truth", str(feed / "truth"),
        "--format", fmt, "--tables", "usertable", "--ycsb-fields", "1",
        "--initial-rows", str(rows), "--windows", str(windows), "--events-per-window", str(changes),
        "--restart-at", "0", "--schema-change-at", "0", "--drop-column-at", "0",
        "--duplicate-rate", "0", "--straddle", "0", "--truth-states", "none", *extra)


def replicate_ndjson(feed: Path, copies: int) -> Path:
    """`replicate` for an uncompressed NDJSON `usertable` feed with integer keys: copy k of each
    initial-scan file has its keys (`ycsb_key` in `after` and the `key` array) shifted by
    k x (max key + 1) and a file id of its own; the later changes are left on copy 0."""
    import re
    out, first_key = _fresh_copy(feed, copies)
    if first_key is None:
        return out
    key = re.compile(rb'("ycsb_key": |"key": \[)(\d+)')
    stamp = re.compile(rb'"updated": "(\d+)\.(\d+)"')
    scan = []
    for f in sorted((out / "changefeed").rglob("*.ndjson")):
        text = f.read_bytes()
        last = max(tuple(int(x) for x in m.groups()) for m in stamp.finditer(text))
        if last <= first_key:
            scan.append((f, text))
    span = max(int(m.group(2)) for _, text in scan for m in key.finditer(text)) + 1
    for f, text in scan:
        for k in range(1, copies):
            shift = k * span
            copy = key.sub(lambda m: m.group(1) + str(int(m.group(2)) + shift).encode(), text)
            _copy_path(f, k).write_bytes(copy)
    return out


def _fresh_copy(feed: Path, copies: int):
    """`<feed>x<copies>` as a copy of the feed, and its first RESOLVED as a tuple of ints; no
    RESOLVED (`None`) when the replica was made before."""
    out = feed.with_name(f"{feed.name}x{copies}")
    if (out / "truth" / "manifest.json").exists():
        return out, None
    subprocess.run(["rm", "-rf", str(out)], check=True)
    subprocess.run(["cp", "-r", str(feed), str(out)], check=True)
    first = min((hlc_of(p.name) for p in (out / "changefeed").rglob("*.RESOLVED")),
                key=lambda h: tuple(int(x) for x in h.split(".")))
    return out, tuple(int(x) for x in first.split("."))


def _copy_path(f: Path, k: int) -> Path:
    """Copy k's name for data file F: the file id moved to copy k, the rest (timestamp) kept."""
    parts = f.name.split("-")  # <ts>-<session>-<node>-<sink>-<file id>-<topic>-<schema>.<ext>
    return f.with_name("-".join(parts[:4] + [f"{k * 0x10000 + int(parts[4], 16):08x}"] + parts[5:]))


def replicate(feed: Path, copies: int) -> Path:
    """A simulated Parquet `usertable` feed scaled to COPIES times its table, in
    `<feed>x<copies>` (kept when there): the simulator holds its model in memory and cannot
    write 20M rows here.

    Copy k of each initial-scan file has its keys moved to copy k (integer keys shifted by
    k x (max key + 1); UUID keys XORed with copy k's own random 16 bytes, so the copies look as
    random as the originals: no shared prefixes to sort together or compress) and a file id of its own
    (same timestamp, so the first RESOLVED covers it). Each later change moves to the copy a
    hash of its key picks (every change of a key to the same copy, so each copy's history stays
    valid): the RESOLVEDs keep their number of changes, spread over the whole table. The truth
    folder is the original's: tables built from this feed are not checked against it.

    An NDJSON feed (uncompressed, integer keys) is replicated by its initial scan alone
    (`replicate_ndjson`): its later changes stay on copy 0.
    """
    if any((feed / "changefeed").rglob("*.ndjson")):
        return replicate_ndjson(feed, copies)
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    if copies > 256:
        sys.exit("replicate: at most 256 copies")
    out, first_key = _fresh_copy(feed, copies)
    if first_key is None:
        return out
    files = sorted((out / "changefeed").rglob("*.parquet"))
    uuid = not pa.types.is_integer(pq.read_table(files[0], columns=["ycsb_key"]).schema.field("ycsb_key").type)
    if uuid:
        def as_bytes(keys):  # n x 16 bytes of the UUIDs
            storage = keys.combine_chunks().storage
            return np.frombuffer(storage.buffers()[1], dtype=np.uint8)[
                storage.offset * 16:(storage.offset + len(storage)) * 16].reshape(-1, 16).copy()

        masks = np.random.default_rng(1).integers(0, 256, size=(copies, 16), dtype=np.uint8)
        masks[0] = 0

        def moved(keys, copy_of):
            b = as_bytes(keys) ^ masks[copy_of.astype(np.int64)]
            storage = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(b), [None, pa.py_buffer(b.tobytes())])
            return pa.ExtensionArray.from_storage(keys.type, storage)

        def hash_of(keys):
            return as_bytes(keys)[:, :4].copy().view("<u4").ravel().astype(np.uint64)
    else:
        span = max(pq.read_table(f, columns=["ycsb_key"])["ycsb_key"].to_numpy().max() for f in files) + 1

        def moved(keys, copy_of):
            return pa.array(keys.to_numpy().astype(np.int64) + copy_of.astype(np.int64) * int(span), pa.int64())

        def hash_of(keys):
            return (keys.to_numpy().astype(np.uint64) * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
    for f in files:
        t = pq.read_table(f)
        keys = t["ycsb_key"]
        col = t.schema.get_field_index("ycsb_key")
        last = max(tuple(int(x) for x in u.split(".")) for u in t["__crdb__updated"].to_pylist())
        if last > first_key:  # changes: each to its key's copy
            copy_of = (hash_of(keys) * np.uint64(copies)) >> np.uint64(32)
            pq.write_table(t.set_column(col, "ycsb_key", moved(keys, copy_of)), f, compression="snappy")
            continue
        for k in range(1, copies):
            copy = t.set_column(col, "ycsb_key", moved(keys, np.full(len(keys), k, dtype=np.uint64)))
            pq.write_table(copy, _copy_path(f, k), compression="snappy")
    return out
