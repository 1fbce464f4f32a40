#!/usr/bin/env python3
"""Initial load: peak memory follows the window, not the table (issue 11, item 3).

    scripts/bench_initial_load.py [--sizes 2000000,5000000] [--windows 256,128] [--modes update_delete]
                                  [--format parquet|json] [--no-whole] [--work target/bench-initial-load]
                                  [--bin target/release/crdb-delta] [--runs 1]
                                  [--azurite [--azurite-rate 1gbit]] [--slice-cache 0,8GiB]

For each size it simulates a YCSB `usertable` (integer key, one field) whose initial scan holds
SIZE rows — one RESOLVED interval as large as the table — and loads it into fresh targets, side
by side in one run:
  * `whole`: `--max-window-bytes` larger than the interval, so it is applied in one commit (what
    every version before key slices did with any window);
  * `<W> MiB`: the interval applied in key slices under a W MiB window (256 is the default).
Seconds, commits and peak RSS come from each run's `--json` report. Prints a Markdown table for
docs/benchmarks.md. Uses the release build (`cargo build --release --bin crdb-delta` first).
Several `--bin LABEL=PATH` run side by side, alternating, `--runs` times each (medians).
`--azurite`: the feed is uploaded to an in-memory Azurite of this run and read from there
(over HTTP, as from Azure Storage) instead of from the folder; `--azurite-rate` caps what it sends
to that rate with `tc` on the loopback while the loads run (root; Azure Storage is a network
away, this machine's Azurite is not). `--slice-cache A,B`: each binary
also runs with each `--slice-cache-bytes` (0: none), labelled `+cache=B`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench_common import ROOT, replicate, run, simulate_usertable  # noqa: E402
WHOLE = 1 << 40




def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2000000,5000000")
    ap.add_argument("--windows", default="256,128", help="window sizes in MiB to slice under")
    ap.add_argument("--modes", default="update_delete")
    ap.add_argument("--format", default="parquet", choices=["parquet", "json"])
    ap.add_argument("--compression", default="none", choices=["none", "gzip", "zstd"],
                    help="NDJSON files compressed as the sink writes them")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--no-whole", action="store_true", help="skip the one-commit load (it needs memory for the whole table)")
    ap.add_argument("--copies", type=int, default=1,
                    help="load SIZE x COPIES rows: the simulated scan's files copied with shifted keys "
                         "(the simulator holds its model in memory and cannot write 20M rows here)")
    ap.add_argument("--work", default=str(ROOT / "target" / "bench-initial-load"))
    ap.add_argument("--bin", action="append", default=[], metavar="[LABEL=]PATH",
                    help="binary to run (repeatable; default target/release/crdb-delta)")
    ap.add_argument("--azurite", action="store_true",
                    help="read the feed from an in-memory Azurite (uploaded first), not the folder")
    ap.add_argument("--azurite-rate", help="tc rate (e.g. 1gbit) Azurite's answers are capped at")
    ap.add_argument("--slice-cache", default="0",
                    help="comma-separated --slice-cache-bytes values each binary runs with (0: none)")
    a = ap.parse_args()
    given = dict(b.partition("=")[::2] if "=" in b else ("", b) for b in a.bin) or \
        {"": str(ROOT / "target" / "release" / "crdb-delta")}
    sim_bin = next(iter(given.values()))
    # (label, binary, extra sync flags)
    bins = {(f"{label}+cache={c}" if c != "0" else label): (path, ["--slice-cache-bytes", c] if c != "0" else [])
            for label, path in given.items() for c in a.slice_cache.split(",")}
    Path(a.work).mkdir(parents=True, exist_ok=True)
    azurite, env = None, {}
    if a.azurite:
        sys.path.insert(0, str(ROOT / "scripts"))
        from reliability import Azurite  # noqa: E402
        azurite = Azurite(Path(a.work) / "azurite.log")
        azurite.start()
        azurite.create_container("bench")
        env = {"AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": azurite.base}
    try:
        bench(a, bins, sim_bin, azurite, env)
    finally:
        if a.azurite_rate:
            subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], check=False)
        if azurite:
            azurite.stop()


def cap_rate(rate: str) -> None:
    """Caps the loopback at `rate` (a `tc` token bucket; this kernel has no classful `prio` to
    single out Azurite's port): only the loads talk over it while they run."""
    subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], check=False, capture_output=True)
    subprocess.run(["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", rate, "burst", "1mb",
                    "latency", "100ms"], check=True)


def bench(a, bins: dict, sim_bin: str, azurite, env: dict) -> None:
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in [int(s) for s in a.sizes.split(",")]:
        compressed = a.format == "json" and a.compression != "none"
        feed = work / (f"usertable-{size}" + ("-json" if a.format == "json" else "")
                       + (f"-{a.compression}" if compressed else ""))
        simulate_usertable(sim_bin, feed, size, 1, 1, "--file-size", str(64 << 20),
                           *(["--compression", a.compression] if compressed else []), fmt=a.format)
        if a.copies > 1:
            if compressed:
                raise SystemExit("--copies replicates uncompressed NDJSON feeds only")
            feed = replicate(feed, a.copies)
            size *= a.copies
        stored = sum(p.stat().st_size for p in (feed / "changefeed").rglob("*")
                     if p.is_file() and not p.name.endswith(".RESOLVED"))
        source = str(feed / "changefeed")
        if azurite:
            for p in sorted((feed / "changefeed").rglob("*")):
                if p.is_file():
                    rel = p.relative_to(feed / "changefeed").as_posix()
                    azurite.put_blob("bench", f"{feed.name}/{rel}", p.read_bytes())
            source = f"azure://bench/{feed.name}"
            if a.azurite_rate:
                cap_rate(a.azurite_rate)
        for mode in a.modes.split(","):
            for label, window in ([] if a.no_whole else [("whole", WHOLE)]) + [(f"{w} MiB", int(w) << 20) for w in a.windows.split(",")]:
                runs = {b: [] for b in bins}
                for _ in range(a.runs):
                    for b, (path, flags) in bins.items():
                        target = work / f"delta-{size}-{mode}-{window}"
                        subprocess.run(["rm", "-rf", str(target)], check=True)
                        r = json.loads(run(path, "sync", "--source", source, "--target", str(target),
                                           "--manifest", str(feed / "truth" / "manifest.json"), "--mode", mode,
                                           "--max-window-bytes", str(window), "--json", *flags, env=env).stdout)
                        t = r["tables"]["usertable"]
                        assert t["events"] >= size, t
                        runs[b].append(r)
                        print(f"{b or 'bin'}: {size:>9} {mode:<13} {label:<8} {r['seconds']:7.1f} s  commits "
                              f"{t['commits']:3}  decoded {t['decoded_bytes'] / 1e6:8.0f} MB  "
                              f"fetched {t['bytes_read'] / 1e6:8.0f} MB  "
                              f"peak RSS {r['peak_rss_mib']:6.0f} MiB", flush=True)
                for b, rs in runs.items():
                    t = rs[0]["tables"]["usertable"]
                    rows.append({"bin": b, "rows": size, "mode": mode, "window": label, "stored_mb": stored / 1e6,
                                 "decoded_mb": t["decoded_bytes"] / 1e6,
                                 "fetched_mb": t["bytes_read"] / 1e6,
                                 "s": statistics.median(r["seconds"] for r in rs),
                                 "commits": t["commits"],
                                 "rss": statistics.median(r["peak_rss_mib"] for r in rs)})
    print()
    label = "| binary " if len(bins) > 1 else ""
    print(f"{label}| table rows | mode | window | changefeed MB (stored) | decoded MB read | MB fetched | commits "
          "| seconds | peak RSS |")
    print("|---" * (9 + bool(label)) + "|")
    for x in rows:
        cell = f"| {x['bin']} " if label else ""
        print(f"{cell}| {x['rows']:,} | {x['mode']} | {x['window']} | {x['stored_mb']:.0f} | {x['decoded_mb']:.0f} "
              f"| {x['fetched_mb']:.0f} | {x['commits']} | {x['s']:.1f} | {x['rss']:.0f} MiB |")


if __name__ == "__main__":
    main()
