#!/usr/bin/env python3
"""Initial load: peak memory follows the window, not the table (issue 11, item 3).

    scripts/bench_initial_load.py [--sizes 2000000,5000000] [--windows 256,128] [--modes update_delete]
                                  [--no-whole] [--work target/bench-initial-load] [--bin target/release/crdb-delta]

For each size it simulates a YCSB `usertable` (integer key, one field) whose initial scan holds
SIZE rows — one RESOLVED interval as large as the table — and loads it into fresh targets, side
by side in one run:
  * `whole`: `--max-window-bytes` larger than the interval, so it is applied in one commit (what
    every version before key slices did with any window);
  * `<W> MiB`: the interval applied in key slices under a W MiB window (256 is the default).
Seconds, commits and peak RSS come from each run's `--json` report. Prints a Markdown table for
docs/benchmarks.md. Uses the release build (`cargo build --release --bin crdb-delta` first).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from bench_common import ROOT, replicate, run, simulate_usertable  # noqa: E402
WHOLE = 1 << 40




def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2000000,5000000")
    ap.add_argument("--windows", default="256,128", help="window sizes in MiB to slice under")
    ap.add_argument("--modes", default="update_delete")
    ap.add_argument("--no-whole", action="store_true", help="skip the one-commit load (it needs memory for the whole table)")
    ap.add_argument("--copies", type=int, default=1,
                    help="load SIZE x COPIES rows: the simulated scan's files copied with shifted keys "
                         "(the simulator holds its model in memory and cannot write 20M rows here)")
    ap.add_argument("--work", default=str(ROOT / "target" / "bench-initial-load"))
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "crdb-delta"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in [int(s) for s in a.sizes.split(",")]:
        feed = work / f"usertable-{size}"
        simulate_usertable(a.bin, feed, size, 1, 1, "--file-size", str(64 << 20))
        if a.copies > 1:
            feed = replicate(feed, a.copies)
            size *= a.copies
        stored = sum(p.stat().st_size for p in (feed / "changefeed").rglob("*.parquet"))
        for mode in a.modes.split(","):
            for label, window in ([] if a.no_whole else [("whole", WHOLE)]) + [(f"{w} MiB", int(w) << 20) for w in a.windows.split(",")]:
                target = work / f"delta-{size}-{mode}-{window}"
                subprocess.run(["rm", "-rf", str(target)], check=True)
                r = json.loads(run(a.bin, "sync", "--source", str(feed / "changefeed"), "--target", str(target),
                                   "--manifest", str(feed / "truth" / "manifest.json"), "--mode", mode,
                                   "--max-window-bytes", str(window), "--json").stdout)
                t = r["tables"]["usertable"]
                rows.append({"rows": size, "mode": mode, "window": label, "stored_mb": stored / 1e6,
                             "decoded_mb": t["decoded_bytes"] / 1e6, "s": r["seconds"],
                             "commits": t["commits"], "rss": r["peak_rss_mib"], "events": t["events"]})
                x = rows[-1]
                assert x["events"] >= size, x
                print(f"{size:>9} {mode:<13} {label:<8} {x['s']:7.1f} s  commits {x['commits']:3}  "
                      f"decoded {x['decoded_mb']:8.0f} MB  peak RSS {x['rss']:6.0f} MiB", flush=True)
    print()
    print("| table rows | mode | window | changefeed MB (stored) | decoded MB read | commits | seconds | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for x in rows:
        print(f"| {x['rows']:,} | {x['mode']} | {x['window']} | {x['stored_mb']:.0f} | {x['decoded_mb']:.0f} "
              f"| {x['commits']} | {x['s']:.1f} | {x['rss']:.0f} MiB |")


if __name__ == "__main__":
    main()
