#!/usr/bin/env python3
"""Tables applied one at a time vs side by side (`sync --tables-at-once 1` vs `2`), issue 12.

    /work/main/.tools/venv/bin/python scripts/bench_tables.py [--initial-rows 100000]
        [--windows 10] [--events-per-window 40000] [--format json] [--runs 3]
        [--work target/bench-tables]

The feed: the simulator's `usertable` (3 × 100-byte fields) and `orders` (3 column families),
RESOLVED every window, in one changefeed root; applied into fresh targets by the release binary
(`$CRDB_DELTA_BIN`, default target/release/crdb-delta) with the keys and types of its manifest,
whole backlog (default batching) and `--commit-each-resolved`, alternating 1 and 2 tables at
once; medians of RUNS. Wall time and peak RSS from GNU time. Every run's tables are read back
through delta-rs SQL (`QueryBuilder`): each must hold as many rows, and distinct keys, as the
simulator's last ground-truth state, and the 1- and 2-at-once tables must be equal row for row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, measured, run  # noqa: E402

TABLES = ["usertable", "orders"]


def table_rows(path: Path, key: str):
    import pyarrow as pa
    from deltalake import DeltaTable, QueryBuilder
    t = pa.table(QueryBuilder().register("t", DeltaTable(str(path))).execute(
        f'SELECT * FROM t ORDER BY "{key}"').read_all())
    return t.drop_columns([c for c in t.column_names if c.startswith("__crdb")])


def check(target: Path, truth: Path, keys: dict, what: str):
    out = {}
    for t in TABLES:
        last = sorted((truth / t / "state").glob("*.ndjson"))[-1]
        want = sum(1 for line in last.read_text().splitlines() if line.strip())
        got = table_rows(target / t, keys[t])
        distinct = len(set(got[keys[t]].to_pylist()))
        if got.num_rows != want or distinct != want:
            sys.exit(f"{what}: {t} has {got.num_rows} rows ({distinct} keys), the truth {want}")
        out[t] = got
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--initial-rows", type=int, default=100_000)
    ap.add_argument("--windows", type=int, default=10)
    ap.add_argument("--events-per-window", type=int, default=40_000)
    ap.add_argument("--format", default="json", choices=["json", "parquet"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", default=str(ROOT / "target" / "bench-tables"))
    ap.add_argument("--bin", default=os.environ.get("CRDB_DELTA_BIN", str(ROOT / "target" / "release" / "crdb-delta")))
    a = ap.parse_args()

    work = Path(a.work)
    feed = work / f"{a.format}-{a.initial_rows}+{a.windows}x{a.events_per_window}"
    if not (feed / "truth" / "manifest.json").exists():
        shutil.rmtree(feed, ignore_errors=True)
        run(a.bin, "simulate", "--out", str(feed / "changefeed"), "--truth", str(feed / "truth"),
            "--format", a.format, "--tables", ",".join(TABLES), "--ycsb-fields", "3",
            "--initial-rows", str(a.initial_rows), "--windows", str(a.windows),
            "--events-per-window", str(a.events_per_window))
    manifest = feed / "truth" / "manifest.json"
    keys = {t["name"]: t["primary_key"][0] for t in json.loads(manifest.read_text())["tables"]}
    mb = sum(f.stat().st_size for f in (feed / "changefeed").rglob("*") if f.is_file()) / 1e6
    print(f"feed: {a.format}, tables {', '.join(TABLES)}, {mb:.0f} MB, {a.windows + 1} RESOLVED "
          f"(binary {a.bin})", flush=True)

    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for per_resolved in (False, True):
        mode = "one commit per RESOLVED" if per_resolved else "whole backlog"
        for r in range(a.runs):
            got = {}
            for n in (1, 2):
                target = work / "target"
                shutil.rmtree(target, ignore_errors=True)
                args = [a.bin, "sync", "--source", str(feed / "changefeed"), "--target", str(target),
                        "--manifest", str(manifest), "--json", "--tables-at-once", str(n)]
                if per_resolved:
                    args.append("--commit-each-resolved")
                wall, rss, _, out = measured(*args)
                rep = json.loads(out)
                if not rep["complete"]:
                    sys.exit(f"{mode}, {n} at once: incomplete run")
                got[n] = check(target, feed / "truth", keys, f"{mode}, {n} at once")
                results.setdefault((mode, n), []).append((wall, rss))
                print(f"  {mode}, {n} at once, run {r + 1}: {wall:.2f} s, {rss:.0f} MiB", flush=True)
            for t in TABLES:
                if not got[1][t].equals(got[2][t]):
                    sys.exit(f"{mode}: {t} differs between 1 and 2 tables at once")
    print()
    print("| workload | 1 table at a time | 2 tables at once | 2 / 1 (wall) |")
    print("|---|---|---|---|")
    for mode in ("whole backlog", "one commit per RESOLVED"):
        one, two = results[(mode, 1)], results[(mode, 2)]
        w1, w2 = statistics.median(x[0] for x in one), statistics.median(x[0] for x in two)
        r1, r2 = max(x[1] for x in one), max(x[1] for x in two)
        print(f"| {mode} | {w1:.2f} s, {r1:.0f} MiB | {w2:.2f} s, {r2:.0f} MiB | {w2 / w1:.2f}× |")


if __name__ == "__main__":
    main()
