#!/usr/bin/env python3
"""A long-running table: 2,000 consecutive RESOLVEDs, with and without upkeep (issue 11).

    scripts/bench_upkeep.py [--resolveds 2000] [--changes 50] [--every 100] [--window 30]
                            [--rounds 3] [--mix 0.2,0.7,0.1] [--work target/bench-upkeep]
                            [--bin target/release/crdb-delta]

Simulates a small Parquet `usertable` feed (1,000-row initial scan, then RESOLVEDS windows of
CHANGES random-key changes, a RESOLVED after each; MIX the fractions of inserts, updates and
deletes: by default the table grows by 10% of the changes a RESOLVED, so about 21x over 2,000
of them, and `--mix 0.1,0.8,0.1` keeps it near its first size), then applies it one commit per
RESOLVED (as the function does), into two fresh targets:
  * `none`: no upkeep;
  * `upkeep`: `crdb-delta maintain` after every EVERY RESOLVEDs (the CatchUp timer's work:
    compaction, checkpoint, log cleanup, VACUUM), with `--retain-hours 0` and
    `--log-retention-hours 0` so that the bench sees files and log entries go within its
    minutes (production keeps 168 h of files and the table's 30 days of log).

Two points are measured: early (WINDOW RESOLVEDs from the tenth on) and late (the last WINDOW).
Each RESOLVED there is applied by its own `sync --until` and timed: the table's apply seconds
from the `--json` report, the whole process, and the table files the step probed.
  * in sequence: as the run reaches them. The late point comes minutes after the early one, so
    the machine's drift over the run is in that ratio;
  * side by side: each variant's table is copied just before each point; then ROUNDS rounds
    apply each point's WINDOW RESOLVEDs again from a fresh copy of its table, the points
    alternating. The ratio then compares the tables' states on the same machine in the same
    minutes (the changefeed folder is the same full one for both). This is the figure the
    target (late within 1.2x of early) is read from.
Medians are printed with the live file count, the files in the table folder and the
`_delta_log` entries at the end. Uses the release build.

Why a window, not single RESOLVEDs: with deletion vectors every step adds a small file, and once
8 pile up a step rewrites the small files it probes (`rewrite_files_below`), so the files a step
probes go 1, 2, …, 8, then back: a saw of about 6 steps. One step's time (4–30 ms here, mostly
process noise) depends on where it falls on the saw; a window of 30 spans five teeth.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from bench_common import ROOT, hlc_of, run, simulate_usertable  # noqa: E402

# Every RESOLVED its own commit, none cut into key slices (as the function applies them).
ONE_PER_RESOLVED = ("--max-window-bytes", "1", "--min-slice-bytes", str(1 << 40))


def live_files(table: Path) -> int:
    """Data files in the latest snapshot, from the log (checkpoint + later commits)."""
    from deltalake import DeltaTable
    return len(DeltaTable(str(table)).file_uris())


class Variant:
    """One target: applies the feed one commit per RESOLVED, with or without upkeep."""

    def __init__(self, a: argparse.Namespace, feed: Path, resolved: list[str], name: str,
                 target: Path):
        self.a, self.feed, self.resolved, self.name, self.target = a, feed, resolved, name, target
        self.at = -1

    def base(self) -> list[str]:
        return [self.a.bin, "sync", "--source", str(self.feed / "changefeed"),
                "--target", str(self.target),
                "--manifest", str(self.feed / "truth" / "manifest.json"), "--json"]

    def upto(self, i: int) -> None:
        """Applies up to resolved[i], one commit per RESOLVED, with upkeep every EVERY."""
        for j in range(self.at + 1, i + 1):
            if self.name == "upkeep" and j % self.a.every == 0:
                run(*self.base(), "--until", self.resolved[j], *ONE_PER_RESOLVED)
                run(self.a.bin, "maintain", "--target", str(self.target), "--retain-hours", "0",
                    "--log-retention-hours", "0", "--json")
        if i > self.at:
            run(*self.base(), "--until", self.resolved[i], *ONE_PER_RESOLVED)
            self.at = i

    def timed(self, indices: range) -> list[tuple[float, float, int]]:
        """(apply s, process s, table files probed) of each RESOLVED, applied one by one."""
        out = []
        for i in indices:
            self.upto(i - 1)
            r = json.loads(run(*self.base(), "--until", self.resolved[i]).stdout)
            assert r["steps"] == 1, r
            t = r["tables"]["usertable"]
            out.append((t["seconds"], r["seconds"], t["table_files_read"]))
            self.at = i
        return out


def medians(rows: list[tuple[float, float, int]]) -> tuple[float, float, float]:
    return (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows),
            statistics.mean(r[2] for r in rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resolveds", type=int, default=2000)
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--window", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
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
    points = {"early": range(10, 10 + a.window), "late": range(n - a.window, n)}
    results: dict[str, dict] = {}
    try:
        for name in ["none", "upkeep"]:
            v = Variant(a, feed, resolved, name, work / f"delta-{name}")
            shutil.rmtree(v.target, ignore_errors=True)
            seq = {}
            for point, idx in points.items():
                v.upto(idx.start - 1)
                snap = work / f"snap-{name}-{point}"
                shutil.rmtree(snap, ignore_errors=True)
                shutil.copytree(v.target, snap)
                seq[point] = medians(v.timed(idx))
            table = v.target / "usertable"
            log = table / "_delta_log"
            results[name] = {
                "seq": seq, "side": {p: [] for p in points},
                "live": live_files(table),
                "files": sum(1 for _ in table.glob("*.parquet")),
                "commits": sum(1 for _ in log.glob("*.json")),
                "checkpoints": sum(1 for _ in log.glob("*.checkpoint.parquet")),
            }
            print(f"{name:<7} in sequence: early apply {seq['early'][0]*1000:.1f} ms, late "
                  f"{seq['late'][0]*1000:.1f} ms, ratio {seq['late'][0]/seq['early'][0]:.2f}",
                  flush=True)
        # Side by side: each point's table copied afresh and its window applied again, the
        # points (and variants) alternating round by round.
        for rnd in range(a.rounds):
            order = [(name, p) for name in results for p in points]
            if rnd % 2:
                order.reverse()
            for name, point in order:
                v = Variant(a, feed, resolved, name, work / f"replay-{name}-{point}")
                shutil.rmtree(v.target, ignore_errors=True)
                shutil.copytree(work / f"snap-{name}-{point}", v.target)
                v.at = points[point].start - 1
                results[name]["side"][point] += v.timed(points[point])
                shutil.rmtree(v.target)
            print(f"round {rnd + 1} of {a.rounds} done", flush=True)
    finally:
        for p in work.glob("snap-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in work.glob("replay-*"):
            shutil.rmtree(p, ignore_errors=True)

    print()
    w, k = a.window, a.rounds
    print(f"| upkeep | measured | apply, RESOLVEDs 10–{9 + w} | apply, last {w} of {n} | last / tenth "
          f"| files probed per step, early → late | sync process, early → late | live files "
          f"| files in folder | log entries (json) | checkpoints |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        label = "none" if name == "none" else f"`maintain` every {a.every}"
        for how, (e, l) in [("in sequence", (r["seq"]["early"], r["seq"]["late"])),
                            (f"side by side, {k} rounds",
                             (medians(r["side"]["early"]), medians(r["side"]["late"])))]:
            print(f"| {label} | {how} | {e[0]*1000:.1f} ms | {l[0]*1000:.1f} ms "
                  f"| {l[0]/e[0]:.2f} | {e[2]:.1f} → {l[2]:.1f} | {e[1]*1000:.0f} → {l[1]*1000:.0f} ms "
                  f"| {r['live']} | {r['files']} | {r['commits']} | {r['checkpoints']} |")
    for name, r in results.items():
        per_round = []
        for rnd in range(k):
            e = statistics.median(x[0] for x in r["side"]["early"][rnd * w:(rnd + 1) * w])
            l = statistics.median(x[0] for x in r["side"]["late"][rnd * w:(rnd + 1) * w])
            per_round.append(f"{l / e:.2f}")
        print(f"{name}: late / early per round (side by side): {', '.join(per_round)}")


if __name__ == "__main__":
    main()
