#!/usr/bin/env python3
"""A long-running table: 2,000 consecutive RESOLVEDs, with and without upkeep (issue 11).

    scripts/bench_upkeep.py [--resolveds 2000] [--changes 50] [--every 100] [--window 20]
                            [--mix 0.2,0.7,0.1] [--work target/bench-upkeep]
                            [--bin target/release/crdb-delta]

Simulates a small Parquet `usertable` feed (1,000-row initial scan, then RESOLVEDS windows of
CHANGES random-key changes, a RESOLVED after each; MIX the fractions of inserts, updates and
deletes: by default the table grows by 10% of the changes a RESOLVED, so about 21x over 2,000
of them, and `--mix 0.1,0.8,0.1` keeps it near its first size), then applies it one commit per RESOLVED (as
the function does), into two fresh targets side by side:
  * `none`: no upkeep;
  * `upkeep`: `crdb-delta maintain` after every EVERY RESOLVEDs (the CatchUp timer's work:
    compaction, checkpoint, log cleanup, VACUUM), with `--retain-hours 0` and
    `--log-retention-hours 0` so that the bench sees files and log entries go within its
    minutes (production keeps 168 h of files and the table's 30 days of log).
Near the start (WINDOW RESOLVEDs from the tenth on) and at the end (the last WINDOW) each
RESOLVED is applied by its own `sync --until` and timed (the table's apply seconds from the
`--json` report, and the whole process); medians are printed with the table files each step
probed (mean), the live file count, the files in the table folder and the `_delta_log` entries
at the end. Uses the release build.

Why a window, not single RESOLVEDs: with deletion vectors every step adds a small file, and once
8 pile up a step rewrites the ones it changes (`rewrite_files_below`), so the files a step probes
go 1, 2, …, 8, then back to 2–4: a saw of about 6 steps. One step's time (6–30 ms here, mostly
process noise) depends on where it falls on the saw; a window of 20 spans three teeth.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

from bench_common import ROOT, hlc_of, run, simulate_usertable  # noqa: E402
# Every RESOLVED its own commit, none cut into key slices (as the function applies them).
ONE_PER_RESOLVED = ("--max-window-bytes", "1", "--min-slice-bytes", str(1 << 40))






def live_files(table: Path) -> int:
    """Data files in the latest snapshot, from the log (checkpoint + later commits)."""
    from deltalake import DeltaTable
    return len(DeltaTable(str(table)).file_uris())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resolveds", type=int, default=2000)
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--mix", default="0.2,0.7,0.1")
    ap.add_argument("--work", default=str(ROOT / "target" / "bench-upkeep"))
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "crdb-delta"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    mix = a.mix.split(",")
    feed = work / f"feed-{a.resolveds}-{'-'.join(mix)}"
    simulate_usertable(a.bin, feed, 1000, a.resolveds, a.changes,
                       "--mix", *mix, "--partition", "hourly")
    resolved = sorted(hlc_of(p.name) for p in (feed / "changefeed").rglob("*.RESOLVED"))
    n = len(resolved)
    results = {}
    for variant in ["none", "upkeep"]:
        target = work / f"delta-{variant}"
        subprocess.run(["rm", "-rf", str(target)], check=True)
        base = [a.bin, "sync", "--source", str(feed / "changefeed"), "--target", str(target),
                "--manifest", str(feed / "truth" / "manifest.json"), "--json"]

        def upto(i: int) -> None:
            """Applies up to resolved[i], one commit per RESOLVED, with upkeep every EVERY."""
            start = upto.at + 1
            for j in range(start, i + 1):
                if variant == "upkeep" and j % a.every == 0:
                    run(a.bin, "sync", *base[2:], "--until", resolved[j], *ONE_PER_RESOLVED)
                    run(a.bin, "maintain", "--target", str(target), "--retain-hours", "0",
                        "--log-retention-hours", "0", "--json")
            run(*base, "--until", resolved[i], *ONE_PER_RESOLVED)
            upto.at = i
        upto.at = -1

        def timed(indices: range) -> tuple[float, float, float]:
            apply_s, wall_s, probed = [], [], []
            for i in indices:
                upto(i - 1)
                r = json.loads(run(*base, "--until", resolved[i]).stdout)
                assert r["steps"] == 1, r
                apply_s.append(r["tables"]["usertable"]["seconds"])
                wall_s.append(r["seconds"])
                probed.append(r["tables"]["usertable"]["table_files_read"])
                upto.at = i
            return statistics.median(apply_s), statistics.median(wall_s), statistics.mean(probed)

        early = timed(range(10, 10 + a.window))
        late = timed(range(n - a.window, n))
        table = target / "usertable"
        log = table / "_delta_log"
        results[variant] = {
            "early": early, "late": late,
            "live": live_files(table),
            "files": sum(1 for p in table.glob("*.parquet")),
            "commits": sum(1 for p in log.glob("*.json")),
            "checkpoints": sum(1 for p in log.glob("*.checkpoint.parquet")),
        }
        r = results[variant]
        print(f"{variant:<7} RESOLVED 10-{9 + a.window}: apply {early[0]*1000:6.1f} ms, process {early[1]*1000:6.1f} ms, "
              f"{early[2]:.1f} files probed | last {a.window}: apply {late[0]*1000:6.1f} ms, process {late[1]*1000:6.1f} ms, "
              f"{late[2]:.1f} files probed | ratio {late[0]/early[0]:.2f} "
              f"| live files {r['live']}, files in folder {r['files']}, log entries {r['commits']}, "
              f"checkpoints {r['checkpoints']}", flush=True)
    print()
    w = a.window
    print(f"| upkeep | apply, RESOLVEDs 10–{9 + w} | apply, last {w} of {n} | last / tenth | files probed per step, early → late | sync process, early → late | live files | files in folder | log entries (json) | checkpoints |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for v, r in results.items():
        label = "none" if v == "none" else f"`maintain` every {a.every}"
        print(f"| {label} | {r['early'][0]*1000:.1f} ms | {r['late'][0]*1000:.1f} ms | {r['late'][0]/r['early'][0]:.2f} "
              f"| {r['early'][2]:.1f} → {r['late'][2]:.1f} | {r['early'][1]*1000:.0f} → {r['late'][1]*1000:.0f} ms | {r['live']} | {r['files']} | {r['commits']} | {r['checkpoints']} |")


if __name__ == "__main__":
    main()
