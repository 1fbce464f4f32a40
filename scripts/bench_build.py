#!/usr/bin/env python3
"""The deployed build against the glibc release build, side by side in one run (issue 12).

    .tools/venv/bin/python scripts/bench_build.py [--runs 3] [--workloads backlog,peer-parquet,peer-json]
        [--binary LABEL=PATH ...] [--env LABEL:VAR=VALUE ...] [--arg LABEL:ARG ...] [--no-build]
        [--work target/bench-build]

Run it with the project's venv interpreter (`.tools/venv/bin/python`: the tables are checked
through `deltalake` and `pyarrow`). Builds, unless --no-build:
  - `glibc`: `cargo build --release --bin crdb-delta` (target/release/crdb-delta);
  - `package`: `scripts/package --out <work>/package`, the binary taken back out of the zip that
    Azure runs (glibc 2.28 baseline, built with cargo-zigbuild).
More builds to compare (e.g. `scripts/package --libc musl`, the static build) come with
`--binary LABEL=PATH`; `--env`
sets an environment variable for one label's runs (e.g. `package:_RJEM_MALLOC_CONF=...` to try
jemalloc options without a rebuild), `--arg` a `sync` argument (e.g. `--storage copy_on_write`, to
compare an engine from before deletion vectors on equal terms). Ratios are against `glibc`.
Two engines side by side: build the other commit's release binary in a worktree and pass it with
`--no-build --binary old=<path>`.

Workloads (every build runs the same feed, into a fresh target; runs alternate build by build,
RUNS each; medians):
  - backlog: the 1 GiB NDJSON backlog of `scripts/bench-sync` (usertable, 10 × 100-byte fields:
    250,000-row initial scan, 30 windows of 25,000 changes, 31 RESOLVED) applied by plain `sync`
    with the default 256 MiB window;
  - peer-parquet, peer-json: the feed of `scripts/bench_peer.py` (usertable, 3 fields, 100,000-row
    initial scan, 19 windows: 1M events, duplicates, straddling files and a restart left on),
    applied one commit per RESOLVED (`--commit-each-resolved`), as the function does. (Before
    e79afd3 this was `--max-window-bytes 1 --min-slice-bytes 1099511627776`, which also left no
    room to keep a straddling file's later rows for the next step: the NDJSON feed was read
    1.86 times.)
Wall time is taken around spawn..exit, peak RSS (`ru_maxrss`) and CPU seconds (user + system)
from GNU `/usr/bin/time`, as in bench_peer.py; on a shared machine the CPU ratio is the steadier
one (musl's own malloc loses most of its time to page faults: system time). After every run the table is read back through delta-rs (deletion vectors
applied) and must equal the simulator's ground truth (row count, keys, every column), and the
`--json` report must have reached the last RESOLVED; the script fails otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import QUIET_ENV as BASE_ENV, ROOT, measured, run  # noqa: E402
from bench_peer import TABLE, arrow_type, check, feed_files, table_manifest, truth_table  # noqa: E402

ONE_PER_RESOLVED = ["--commit-each-resolved"]


def build(work: Path) -> dict[str, Path]:
    subprocess.run(["cargo", "build", "--release", "--bin", "crdb-delta"], cwd=ROOT, check=True)
    out = work / "package"
    subprocess.run([str(ROOT / "scripts" / "package"), "--out", str(out)], cwd=ROOT, check=True)
    binary = out / "crdb-delta"
    binary.unlink(missing_ok=True)  # not through a link left there
    with zipfile.ZipFile(out / "crdb-delta-function.zip") as z:
        binary.write_bytes(z.read("crdb-delta"))
    binary.chmod(0o755)
    return {"glibc": ROOT / "target" / "release" / "crdb-delta", "package": binary}


def simulate(sim_bin: str, feed: Path, fmt: str, *args: str) -> None:
    """A feed and its final ground truth, kept when already there (deterministic seed)."""
    if (feed / "truth" / "manifest.json").exists():
        return
    run("rm", "-rf", str(feed))
    run(sim_bin, "simulate", "--out", str(feed / "changefeed"), "--truth", str(feed / "truth"),
        "--format", fmt, "--tables", TABLE, "--truth-states", "last", *args)


def workloads(work: Path, sim_bin: str, names: list[str]) -> list[dict]:
    out = []
    for name in names:
        if name == "backlog":  # scripts/bench-sync's 1 GiB backlog
            feed = work / "backlog-json"
            simulate(sim_bin, feed, "json", "--ycsb-fields", "10", "--initial-rows", "250000",
                     "--windows", "30", "--events-per-window", "25000", "--restart-at", "0",
                     "--schema-change-at", "0", "--aggregators", "4")
            label, extra, fmt = "1 GiB NDJSON backlog, default 256 MiB window", [], "json"
        elif name in ("peer-parquet", "peer-json"):  # scripts/bench_peer.py's defaults
            fmt = name.split("-")[1]
            feed = work / f"peer-{fmt}"
            simulate(sim_bin, feed, fmt, "--ycsb-fields", "3", "--seed", "1",
                     "--initial-rows", "100000", "--windows", "19", "--events-per-window", "47368",
                     "--mix", "0.2", "0.7", "0.1", "--schema-change-at", "0", "--drop-column-at", "0")
            label = f"peer feed, {'Parquet' if fmt == 'parquet' else 'NDJSON'}, one commit per RESOLVED"
            extra = ONE_PER_RESOLVED
        else:
            sys.exit(f"unknown workload {name}")
        manifest = feed / "truth" / "manifest.json"
        meta = table_manifest(manifest)
        keys = list(meta["primary_key"])
        types = {c["name"]: arrow_type(c["type"]) for c in meta["columns"]}
        data = [c["name"] for c in meta["columns"] if c["name"] not in keys]
        files, resolved = feed_files(feed / "changefeed", ".parquet" if fmt == "parquet" else ".ndjson")
        mb = sum(p.stat().st_size for _, p in files) / 1e6
        truth = truth_table(feed / "truth", keys, data, types)
        print(f"{label}: {len(files)} files, {mb:,.0f} MB, {len(resolved)} RESOLVED, "
              f"final table {truth.num_rows:,} rows", flush=True)
        out.append(dict(label=label, feed=feed / "changefeed", manifest=manifest, extra=extra,
                        per_resolved=extra == ONE_PER_RESOLVED, resolved=resolved,
                        truth=truth, keys=keys, data=data))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workloads", default="backlog,peer-parquet,peer-json")
    ap.add_argument("--binary", action="append", default=[], metavar="LABEL=PATH",
                    help="another build to compare (repeatable)")
    ap.add_argument("--env", action="append", default=[], metavar="LABEL:VAR=VALUE",
                    help="an environment variable for one label's runs (repeatable)")
    ap.add_argument("--arg", action="append", default=[], metavar="LABEL:ARG",
                    help="one more `sync` argument for one label's runs (repeatable, in order; "
                         "e.g. new-cow:--storage new-cow:copy_on_write)")
    ap.add_argument("--no-build", action="store_true",
                    help="use target/release/crdb-delta (and <work>/package/crdb-delta if there) as they are")
    ap.add_argument("--work", default=str(ROOT / "target" / "bench-build"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.no_build:
        # The package binary only when one was built before (e.g. comparing two glibc builds).
        bins = {"glibc": ROOT / "target" / "release" / "crdb-delta"}
        if (work / "package" / "crdb-delta").is_file():
            bins["package"] = work / "package" / "crdb-delta"
    else:
        bins = build(work)
    for spec in a.binary:
        label, _, path = spec.partition("=")
        bins[label] = Path(path)
    envs = {label: dict(BASE_ENV) for label in bins}
    for spec in a.env:
        label, _, assignment = spec.partition(":")
        var, _, value = assignment.partition("=")
        envs[label][var] = value
    extra_args: dict[str, list[str]] = {label: [] for label in bins}
    for spec in a.arg:
        label, _, arg = spec.partition(":")
        extra_args[label].append(arg)
    for label, path in bins.items():
        if not path.is_file():
            sys.exit(f"{label}: {path} not found")
        kind = subprocess.run(["file", "-b", str(path.resolve())], capture_output=True, text=True).stdout.strip()
        extra = {k: v for k, v in envs[label].items() if k not in BASE_ENV}
        if extra_args[label]:
            extra["sync args"] = " ".join(extra_args[label])
        # The build time too: with --no-build, <work>/package may hold an older run's package.
        built = dt.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        print(f"{label}: {path} ({path.stat().st_size / 1e6:.0f} MB; {kind.split(',')[0]}, "
              f"{'static' if 'static' in kind else 'dynamic'}; built {built})"
              f"{' ' + str(extra) if extra else ''}")

    load0 = os.getloadavg()
    started = time.perf_counter()
    cases = workloads(work, str(bins["glibc"]), a.workloads.split(","))
    results: dict[str, dict[str, list[dict]]] = {}
    for w in cases:
        results[w["label"]] = {label: [] for label in bins}
        for i in range(a.runs):
            for label, path in bins.items():
                target = work / "target"
                run("rm", "-rf", str(target))
                wall, rss, cpu, out = measured(str(path), "sync", "--source", str(w["feed"]), "--target",
                                               str(target), "--manifest", str(w["manifest"]), "--json",
                                               *w["extra"], *extra_args[label], env=envs[label])
                rep = json.loads(out)
                t = rep["tables"][TABLE]
                if not rep["complete"] or t["resolved"] != w["resolved"][-1]:
                    sys.exit(f"{label} sync did not reach the last RESOLVED: {out}")
                if w["per_resolved"] and t["commits"] != len(w["resolved"]):
                    sys.exit(f"{label}: {t['commits']} commits for {len(w['resolved'])} RESOLVEDs")
                check(target / TABLE, w["truth"], w["keys"], w["data"], f"{label} {w['label']} run {i + 1}")
                run("rm", "-rf", str(target))
                results[w["label"]][label].append(dict(wall=wall, rss=rss, cpu=cpu, steps=rep["steps"],
                                                       commits=t["commits"], events=rep["events"],
                                                       mb=rep["bytes_read"] / 1e6))
                print(f"{w['label']:<52} run {i + 1} {label:<12} {wall:7.2f} s  {cpu:7.2f} s CPU  {rss:6.0f} MiB  "
                      f"{t['commits']:3} commits  (equals the ground truth)", flush=True)
    total = time.perf_counter() - started
    load1 = os.getloadavg()

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    print()
    print(f"{dt.date.today()}, commit {commit}{' (+ uncommitted changes)' if dirty else ''}; "
          f"{os.cpu_count()} cores, load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end; "
          f"medians of {a.runs} alternating runs; {total:.0f} s in all")
    print()
    print("| workload | build | steps | commits | changes | MB read | wall s | CPU s | changes/s | peak RSS "
          "| wall / glibc | CPU / glibc | peak RSS / glibc |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    for w in cases:
        base = results[w["label"]].get("glibc")
        for label, rs in results[w["label"]].items():
            ratio = (" | ".join(f"{med(rs, k) / med(base, k):.2f}×" for k in ("wall", "cpu", "rss"))
                     if base else "— | — | —")
            print(f"| {w['label']} | {label} | {med(rs, 'steps'):.0f} | {med(rs, 'commits'):.0f} "
                  f"| {med(rs, 'events'):,.0f} | {med(rs, 'mb'):,.0f} | {med(rs, 'wall'):.2f} | {med(rs, 'cpu'):.2f} "
                  f"| {med(rs, 'events') / med(rs, 'wall'):,.0f} | {med(rs, 'rss'):,.0f} MiB | {ratio} |")


if __name__ == "__main__":
    main()
