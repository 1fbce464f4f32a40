#!/usr/bin/env python3
"""An initial scan loaded by the handler from Azurite: its own slice cache against none.

    .tools/venv/bin/python scripts/bench_handler_load.py [--rows 2000000] [--format parquet]
        [--window 64MiB] [--runs 2] [--azurite-rate 1gbit] [--bin PATH]

A YCSB `usertable` initial scan of ROWS rows (one short field) is uploaded to an in-memory
Azurite; then, RUNS times for each setting in turn, a new `crdb-delta serve` (its target a new
prefix) gets the scan files' BlobCreated events and the first RESOLVED's, which it applies in
key slices (`max_window_bytes` WINDOW). Settings: the config silent on `slice_cache_bytes` (the
handler sizes a cache from its temporary folder's disk) and `slice_cache_bytes: 0` (none: every
slice fetches every file). The RESOLVED invocation's duration is the load's; the files fetched
and the later slices' reads from the spill come from the handler's `table applied` log line,
the peak RSS from the process (VmHWM). `--azurite-rate` caps the loopback with `tc` (root),
since Azure Storage is a network away and Azurite is not.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, simulate_usertable  # noqa: E402
from bench_initial_load import cap_rate  # noqa: E402
from bench_warm_up import Serve, upload, windows_of  # noqa: E402
from reliability import Azurite, handler_config  # noqa: E402


def field(log: str, name: str) -> int:
    """NAME summed over the log's `table applied` lines."""
    return sum(int(m.group(1)) for line in log.splitlines() if "table applied" in line
               for m in [re.search(rf"\b{name}=(\d+)", line)] if m)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--format", default="parquet", choices=["parquet", "json"])
    ap.add_argument("--window", default="64MiB", help="max_window_bytes of the load")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--azurite-rate", help="tc rate (e.g. 1gbit) Azurite's answers are capped at")
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "crdb-delta"))
    ap.add_argument("--work", default=str(ROOT / "target" / "bench-handler-load"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    feed = work / f"usertable-{a.rows}-{a.format}"
    # Two windows: the scan (up to the first RESOLVED) and one more, unused here.
    simulate_usertable(a.bin, feed, a.rows, 2, 1, "--file-size", str(64 << 20), fmt=a.format)
    changefeed = feed / "changefeed"
    az = Azurite(work / "azurite.log")
    az.start()
    results: dict[str, list[dict]] = {"own cache": [], "none": []}
    try:
        az.create_container("load")
        mb = upload(az, "load", changefeed, "feed") / 1e6
        print(f"{a.rows:,} rows ({a.format}): {mb:.0f} MB of changefeed uploaded", flush=True)
        if a.azurite_rate:
            cap_rate(a.azurite_rate)
        (scan, (rname, rsize)) = windows_of(changefeed, include_first=True)[0]
        for run in range(a.runs):
            for label in results:
                config = work / f"config-{label.replace(' ', '-')}.json"
                handler_config(feed / "truth", config)
                c = json.loads(config.read_text())
                c["max_window_bytes"] = a.window
                if label == "none":
                    c["slice_cache_bytes"] = 0
                config.write_text(json.dumps(c))
                serve = Serve(a.bin, az, "load", config, work / "serve.log",
                              target=f"delta-{run}-{label.replace(' ', '-')}")
                try:
                    for name, size in scan:
                        serve.post("load", name, size)
                    r = serve.post("load", rname, rsize)
                    rss = serve.peak_rss_mib()
                finally:
                    serve.stop()
                log = serve.own_log()
                got = {"s": r.seconds, "rss": rss, "files_read": field(log, "files_read"),
                       "from_spill": field(log, "files_from_slice_spill"),
                       "from_cache": field(log, "files_from_slice_cache"),
                       "commits": field(log, "commits")}
                results[label].append(got)
                print(f"  run {run} {label:<9}: {got['s']:.1f} s, {got['commits']} commits, "
                      f"{got['files_read']} files fetched, {got['from_spill']} read from the spill, "
                      f"{got['from_cache']} from kept copies, peak RSS {rss:.0f} MiB", flush=True)
    finally:
        if a.azurite_rate:
            subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], check=False)
        az.stop()
    print()
    print("| setting | load s (median) | runs | files fetched | files read from the spill | peak RSS |")
    print("|---|---|---|---|---|---|")
    for label, rs in results.items():
        print(f"| {label} | {statistics.median(x['s'] for x in rs):.1f} | "
              f"{', '.join('%.1f' % x['s'] for x in rs)} | {rs[0]['files_read']} | {rs[0]['from_spill']} | "
              f"{statistics.median(x['rss'] for x in rs):.0f} MiB |")


if __name__ == "__main__":
    main()
