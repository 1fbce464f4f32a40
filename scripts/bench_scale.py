#!/usr/bin/env python3
"""Apply cost against table size: copy-on-write vs deletion vectors, side by side in one run.

    scripts/bench_scale.py [--sizes 200000,2000000] [--changes 10000] [--resolveds 5]
                           [--modes update_delete,scd2] [--keys int|uuid|region] [--copies N]
                           [--diff] [--work target/bench-scale]

`--sizes 2000000 --copies 10` gives the 20M-row table: the 2M-row feed scaled
by `bench_common.replicate`. A size written `ROWSxCOPIES` sets its own copies, e.g. `--sizes
200000,2000000x10`: copies repeat the base feed's changes, so a window of CHANGES events over a
base of few rows changes fewer keys (10k events over a 20k-row base: about 7.9k keys, against
9.75k over 200k rows); sizes compared should change as many keys per RESOLVED (printed as "keys
changed").

For each table size it simulates a YCSB `usertable` (integer key, or random UUIDs with
`--keys uuid`, or `(crdb_region, ycsb_key)` as a REGIONAL BY ROW table with `--keys region`;
one short field) whose initial
scan holds SIZE rows (with `--diff`, a changefeed WITH diff: every change carries `before`), followed by RESOLVEDS windows of CHANGES random-key changes each (90%
updates, 10% deletes). Then, per mode and storage, into a fresh target:
  1. `sync --until <first RESOLVED>` loads the initial scan;
  2. each later RESOLVED is applied by its own `sync --until <it>` (one commit per RESOLVED, in
     a process of its own: a cold start), and its seconds, bytes read from the table, bytes
     written and peak RSS are taken from the `--json` report;
  3. the same RESOLVEDs, from a copy of the loaded table, by one `sync --commit-each-resolved`
     process, as a warm function instance applies them (the key index kept between steps): the
     seconds between consecutive commits (from the `committed` log lines), the first one (which
     learns the index) apart, and the run's bytes and peak RSS;
  4. with `--warm-rounds N`, after every size is done: step 3 again N times per size, each
     from a fresh copy of the loaded table, the sizes in turn (reversed every other round), so
     that the sizes' warm figures are compared side by side rather than minutes apart. Each
     `--warm-bin LABEL=PATH` is a binary replayed in the same rounds (A/B of a change).
Prints a Markdown table (medians over the RESOLVEDs) for docs/benchmarks.md. Uses the release
build (`cargo build --release` first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from datetime import datetime
from pathlib import Path

from bench_common import QUIET_ENV, ROOT, hlc_of, replicate, run, simulate_usertable  # noqa: E402


def one_process(base: list[str], until: str) -> dict:
    """The RESOLVEDs up to UNTIL applied by one `sync --commit-each-resolved`: seconds to the
    first commit, the median between later ones, and the `--json` report."""
    started = time.time()
    p = subprocess.run([base[0], "--log-json", *base[1:], "--commit-each-resolved", "--until", until],
                       capture_output=True, text=True,
                       env=QUIET_ENV | {"CRDB_DELTA_LOG": "crdb_delta::engine::apply=info"})
    if p.returncode != 0:
        raise SystemExit(f"sync failed ({p.returncode}):\n{p.stderr[-4000:]}")
    commits = [datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()
               for line in map(json.loads, p.stderr.splitlines())
               if line.get("fields", {}).get("message") == "committed"]
    gaps = [b - a for a, b in zip(commits, commits[1:])]
    return {"first_s": commits[0] - started, "s": statistics.median(gaps),
            "report": json.loads(p.stdout), "commits": len(commits)}






def warm_run(loaded: Path, base: list[str], until: str, binary: str) -> dict:
    """`one_process` by BINARY from a fresh copy of the LOADED table (removed after)."""
    warm = Path(f"{loaded}-replay")
    shutil.rmtree(warm, ignore_errors=True)
    shutil.copytree(loaded, warm)
    # The copy's dirty pages (2.7 GB at 20M rows) would otherwise be written back while the
    # replay runs, slowing the large table's steps by whatever the disk and the kernel's
    # flusher take from the two cores (warm steps at 20M rows: 23-39 ms without, 24-28 with).
    os.sync()
    try:
        return one_process([binary, *base[1:5], str(warm), *base[6:]], until)
    finally:
        shutil.rmtree(warm)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="200000,2000000")
    ap.add_argument("--changes", type=int, default=10_000)
    ap.add_argument("--resolveds", type=int, default=5)
    ap.add_argument("--modes", default="update_delete,scd2")
    ap.add_argument("--storages", default="copy_on_write,deletion_vectors")
    ap.add_argument("--work", default=str(ROOT / "target" / "bench-scale"))
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "crdb-delta"))
    ap.add_argument("--copies", type=int, default=1,
                    help="tables of SIZE x COPIES rows: the simulated feed's initial scan "
                         "copied with shifted keys, its changes spread over the copies "
                         "(bench_common.replicate; the simulator cannot write 20M rows here)")
    ap.add_argument("--warm-rounds", type=int, default=0,
                    help="replay the warm process this many rounds per size, sizes alternating")
    ap.add_argument("--warm-bin", action="append", default=[], metavar="LABEL=PATH",
                    help="with --warm-rounds: also replay with this binary, in the same rounds")
    ap.add_argument("--keys", default="int", choices=["int", "uuid", "region"],
                    help="usertable's key: sequential INT8, random UUIDs (gen_random_uuid()), or "
                         "(crdb_region, ycsb_key) with three regions (REGIONAL BY ROW)")
    ap.add_argument("--diff", action="store_true",
                    help="the changefeed has `diff`: each change carries the row's `before` "
                         "(scd2 ends a version from it instead of reading the row)")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for token in a.sizes.split(","):
        size, copies = (int(x) for x in token.split("x")) if "x" in token else (int(token), a.copies)
        feed = work / (f"usertable-{size}" if a.keys == "int" else f"usertable-{a.keys}-{size}")
        feed = feed.with_name(feed.name + ("-diff" if a.diff else ""))
        simulate_usertable(a.bin, feed, size, a.resolveds + 1, a.changes,
                           "--mix", "0", "0.9", "0.1", "--file-size", str(64 << 20),
                           *(["--diff"] if a.diff else []),
                           *{"int": [], "uuid": ["--uuid-keys"], "region": ["--region-keys"]}[a.keys])
        if copies > 1:
            feed = replicate(feed, copies)
            size *= copies
        resolved = sorted(hlc_of(p.name) for p in (feed / "changefeed").rglob("*.RESOLVED"))
        for mode in a.modes.split(","):
            for storage in a.storages.split(","):
                target = work / f"delta-{a.keys}-{size}-{mode}-{storage}{'-diff' if a.diff else ''}"
                subprocess.run(["rm", "-rf", str(target)], check=True)
                base = [a.bin, "sync", "--source", str(feed / "changefeed"), "--target", str(target),
                        "--manifest", str(feed / "truth" / "manifest.json"), "--mode", mode,
                        "--storage", storage, "--json"]
                load = json.loads(run(*base, "--until", resolved[0]).stdout)
                loaded = Path(f"{target}-loaded")
                shutil.rmtree(loaded, ignore_errors=True)
                shutil.copytree(target, loaded)
                os.sync()  # see warm_run
                steps = []
                for r in resolved[1:]:
                    rep = json.loads(run(*base, "--until", r).stdout)
                    t = rep["tables"]["usertable"]
                    steps.append(rep | {"t": t})
                med = lambda f: statistics.median(f(s) for s in steps)  # noqa: E731
                one = warm_run(loaded, base, resolved[-1], a.bin)
                n = one["commits"]
                ot = one["report"]["tables"]["usertable"]
                rows.append({
                    "rows": size, "mode": mode, "storage": storage,
                    "load_s": load["seconds"], "load_rss": load["peak_rss_mib"],
                    "s": med(lambda s: s["seconds"]),
                    "read_mb": med(lambda s: s["t"].get("table_bytes_read", 0) / 1e6),
                    "written_mb": med(lambda s: s["t"].get("bytes_written", 0) / 1e6),
                    "window_mb": med(lambda s: s["bytes_read"] / 1e6),
                    "rss": max(s["peak_rss_mib"] for s in steps),
                    "events": med(lambda s: s["events"]),
                    "keys": med(lambda s: sum(s["t"].get(k, 0) for k in ("inserted", "updated", "deleted"))),
                    "one_first_s": one["first_s"], "one_s": one["s"],
                    "one_read_mb": ot.get("table_bytes_read", 0) / n / 1e6,
                    "one_indexed": ot.get("table_files_indexed", 0) / max(1, ot.get("table_files_read", 0)),
                    "one_rss": one["report"]["peak_rss_mib"],
                    "loaded": loaded, "base": base, "last": resolved[-1], "rounds": {},
                })
                r = rows[-1]
                print(f"{size:>9} {mode:<13} {storage:<16} load {r['load_s']:6.1f} s  "
                      f"per RESOLVED {r['s']:6.2f} s  read {r['read_mb']:8.1f} MB  "
                      f"written {r['written_mb']:8.1f} MB  window {r['window_mb']:6.1f} MB  "
                      f"RSS {r['rss']:6.0f} MiB", flush=True)
                print(f"{'':>9} {'':<13} {'one process':<16} first  {r['one_first_s']:6.2f} s  "
                      f"per RESOLVED {r['one_s']:6.3f} s  read {r['one_read_mb']:8.1f} MB  "
                      f"files looked up {r['one_indexed']:.0%}  RSS {r['one_rss']:6.0f} MiB", flush=True)
    bins = [("this", a.bin)] + [tuple(b.split("=", 1)) for b in a.warm_bin]
    for rnd in range(a.warm_rounds):
        order = [(r, label, path) for r in rows for label, path in bins]
        for r, label, path in (order if rnd % 2 == 0 else order[::-1]):
            one = warm_run(r["loaded"], r["base"], r["last"], path)
            r["rounds"].setdefault(label, []).append(one["s"])
            r.setdefault("firsts", {}).setdefault(label, []).append(one["first_s"])
        print(f"warm round {rnd + 1} of {a.warm_rounds} done", flush=True)
    for r in rows:
        shutil.rmtree(r["loaded"], ignore_errors=True)
    print()
    print("| table rows | mode | storage | initial load | keys changed per RESOLVED | s per RESOLVED | table MB read | MB written | window MB (changefeed) | peak RSS per RESOLVED |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rows']:,} | {r['mode']} | {r['storage']} | {r['load_s']:.1f} s, {r['load_rss']:.0f} MiB "
              f"| {r['keys']:,.0f} | {r['s']:.2f} | {r['read_mb']:.1f} | {r['written_mb']:.1f} | {r['window_mb']:.1f} | {r['rss']:.0f} MiB |")
    print()
    print("One process (a warm instance), the same RESOLVEDs:")
    print()
    print("| table rows | mode | storage | first RESOLVED s | s per RESOLVED after | table MB read per RESOLVED | files looked up | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rows']:,} | {r['mode']} | {r['storage']} | {r['one_first_s']:.2f} | {r['one_s']:.3f} "
              f"| {r['one_read_mb']:.1f} | {r['one_indexed']:.0%} | {r['one_rss']:.0f} MiB |")
    if a.warm_rounds:
        print()
        print(f"Warm, side by side ({a.warm_rounds} rounds, sizes alternating): s per RESOLVED after the first; "
              "and the first (cold: the process reads every probed file's key columns), median of the rounds")
        print()
        print("| binary | table rows | mode | storage | each round | median | / smallest table's | / this binary's | first RESOLVED s (cold) | / this binary's |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        smallest = {}
        for label, _ in bins:
            for r in rows:
                med = statistics.median(r["rounds"][label])
                base_med = smallest.setdefault((label, r["mode"], r["storage"]), med)
                this = statistics.median(r["rounds"]["this"])
                rounds = ", ".join(f"{x:.3f}" for x in r["rounds"][label])
                first = statistics.median(r["firsts"][label])
                first_this = statistics.median(r["firsts"]["this"])
                print(f"| {label} | {r['rows']:,} | {r['mode']} | {r['storage']} | {rounds} | {med:.3f} "
                      f"| {med / base_med:.2f}x | {med / this:.2f}x | {first:.2f} | {first / first_this:.2f}x |")


if __name__ == "__main__":
    main()
