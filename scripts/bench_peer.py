#!/usr/bin/env python3
"""`crdb-delta sync` against a Python peer, side by side in one run (issue 12).

    /work/main/.tools/venv/bin/python scripts/bench_peer.py [--changes 1000000] [--initial-rows 100000]
        [--resolveds 20] [--ycsb-fields 3] [--runs 3] [--formats parquet,json]
        [--workloads whole,per-resolved] [--work target/bench-peer]

Run it with the project's venv interpreter (`.tools/venv/bin/python`, which has `deltalake` and
`pyarrow`): the peer runs as `sys.executable` of this script. The binary is `$CRDB_DELTA_BIN`
(default /work/main/target/release/crdb-delta, a release build) or `--bin`.

The feed, per format (Parquet and NDJSON), simulated once with a fixed seed: a YCSB `usertable`
(integer key, YCSB_FIELDS 100-byte text fields) whose initial scan holds INITIAL_ROWS rows,
followed by RESOLVEDS - 1 windows of random-key changes (20% inserts, 70% updates, 10% deletes;
the simulator's duplicates, straddling files and a restart are left on), so CHANGES events in all
over RESOLVEDS `.RESOLVED` objects.

The peer is what a user would write instead, in a Python serverless function, with delta-rs
(`deltalake`) and `pyarrow`: the replaced connector's update_delete algorithm. For each RESOLVED
`R` in order: read, once, every data file whose name timestamp is <= R (Parquet through
`pyarrow.dataset`; NDJSON envelopes through `pyarrow.json` with a schema from the manifest), add
the rows held back from earlier RESOLVEDs, keep the rows with `applied < updated <= R` (the rest
wait), keep the latest event per key by the `updated` HLC, and apply them: the first batch creates
the table (`write_deltalake`, deletes dropped), every later batch is one
`DeltaTable.merge(...)` (matched + delete -> delete, matched -> update all, not matched + upsert ->
insert all). Its table has the same columns as crdb-delta's (the data, `__crdb_hlc`,
`__crdb_commit_ts`).

Workloads (each into a fresh target, all runs alternating crdb-delta, peer, crdb-delta, peer, ...;
medians of RUNS):
  - whole backlog: plain `sync` (its default batching) vs the peer with one batch over everything
    (the latest event per key over the whole backlog; into a fresh target that batch creates the
    table);
  - one commit per RESOLVED: `sync --commit-each-resolved` (every RESOLVED its own step with the
    default window, as the function applies one RESOLVED per event when it keeps up) vs the peer
    with one MERGE per RESOLVED;
  - floor (Parquet): read every file with pyarrow, then write the final rows (the simulator's
    ground truth, prepared beforehand as one Parquet file) with one `write_deltalake`. Its runs
    alternate with the Parquet whole-backlog runs (crdb-delta, peer, floor, ...), since the floor
    moves with the machine's state as much as anything: besides the ratio of medians, the median
    of each run's whole-backlog / floor ratio is printed.
`--workloads whole` (or `per-resolved`) runs one kind only, e.g. more rounds of the floor
comparison: `--formats parquet --workloads whole --runs 9`.

Wall time and peak RSS of every run are measured the same way from outside: each run is a child
process of this script (the peer too: `bench_peer.py --peer-run ...`), its wall clock taken around
spawn..exit, so the peer's Python start-up and imports count, and its peak RSS (`ru_maxrss`)
reported by GNU `/usr/bin/time`.
After every run its final table is read back through delta-rs SQL (`QueryBuilder`, which applies
deletion vectors) and must equal the simulator's ground truth (row count, key set and every data
column), so crdb-delta's and the peer's tables equal each other; the script fails otherwise.
Prints a Markdown table for docs/benchmarks.md, then where each side's time went (crdb-delta's
`--json` report: bytes of changefeed and of the table read, bytes written; the peer's own timers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import QUIET_ENV as ENV, ROOT, hlc_of, measured, run  # noqa: E402

DEFAULT_BIN = os.environ.get("CRDB_DELTA_BIN", str(ROOT / "target" / "release" / "crdb-delta"))
TABLE = "usertable"
STARTED = time.perf_counter()  # a peer child's start-up (imports) is counted from here


# ---------------------------------------------------------------------------------------------
# The feed: files, RESOLVEDs, the manifest's key and types
# ---------------------------------------------------------------------------------------------

def table_manifest(manifest: Path) -> dict:
    m = json.loads(manifest.read_text())
    return next(t for t in m["tables"] if t["name"] == TABLE)


def arrow_type(sql: str):
    import pyarrow as pa
    types = {"INT8": pa.int64(), "INT": pa.int64(), "INT4": pa.int64(), "INT2": pa.int64(),
             "STRING": pa.string(), "BOOL": pa.bool_(), "FLOAT8": pa.float64()}
    if sql.upper() not in types:
        raise SystemExit(f"the peer does not map SQL type {sql}")
    return types[sql.upper()]


def feed_files(feed: Path, ext: str) -> tuple[list[tuple[str, Path]], list[str]]:
    """Data files of TABLE as (name timestamp HLC, path) in name order, and the RESOLVEDs."""
    files, resolved = [], []
    for p in feed.rglob("*"):
        if p.name.endswith(".RESOLVED"):
            resolved.append(hlc_of(p.name))
        elif p.name.endswith(ext) and f"-{TABLE}-" in p.name:
            files.append((p.name, p))
    files.sort()
    return [(hlc_of(n), p) for n, p in files], sorted(resolved, key=hlc_key)


def hlc_key(h: str) -> tuple[int, int]:
    wall, _, logical = h.partition(".")
    return int(wall), int(logical or 0)


# ---------------------------------------------------------------------------------------------
# The peer (runs in a child: `bench_peer.py --peer-run ...`)
# ---------------------------------------------------------------------------------------------

HLC = None  # pyarrow decimal type of an HLC `wall.logical`, set in peer_run


def read_parquet(paths: list[Path], keys: list[str], data: list[str]):
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    t = ds.dataset([str(p) for p in paths], format="parquet").to_table(
        columns=keys + data + ["__crdb__event_type", "__crdb__updated"])
    return t.select(keys + data).append_column(
        "__crdb_hlc", t["__crdb__updated"]).append_column(
        "__deleted", pc.equal(t["__crdb__event_type"], "d"))


def read_ndjson(paths: list[Path], keys: list[str], data: list[str], types: dict):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj
    key_types = {str(types[k]) for k in keys}
    if len(key_types) != 1:
        raise SystemExit("the peer reads NDJSON keys of one type only")
    schema = pa.schema([
        ("after", pa.struct([(c, types[c]) for c in keys + data])),
        ("key", pa.list_(types[keys[0]])),
        ("updated", pa.string()),
    ])
    opts = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    parts = []
    for p in paths:
        t = pj.read_json(str(p), parse_options=opts)
        after = t["after"]
        cols = {k: pc.list_element(t["key"], i) for i, k in enumerate(keys)}
        cols |= {c: pc.struct_field(after, c) for c in data}
        cols["__crdb_hlc"] = t["updated"]
        cols["__deleted"] = pc.is_null(after)
        parts.append(pa.table(cols))
    return pa.concat_tables(parts)


def latest_per_key(t, keys: list[str]):
    """The latest event (by HLC) of each key: sort (key, HLC) only, then take the winning rows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    if t.num_rows == 0:
        return t
    order_by = t.select(keys).append_column("__h", pc.cast(t["__crdb_hlc"], HLC))
    order = pc.sort_indices(order_by, sort_keys=[(k, "ascending") for k in keys] + [("__h", "ascending")])
    n = t.num_rows
    last = None  # in sorted order, row i is its key's latest when row i+1 has another key
    for k in keys:
        col = order_by[k].take(order).combine_chunks()
        differs = pc.not_equal(col.slice(1), col.slice(0, n - 1))
        last = differs if last is None else pc.or_(last, differs)
    last = pa.concat_arrays([last, pa.array([True])])
    return t.take(order.filter(last))


def with_commit_ts(t):
    """`__crdb_commit_ts` from the HLC's wall nanoseconds, as crdb-delta writes it."""
    import pyarrow as pa
    import pyarrow.compute as pc
    wall = pc.cast(pc.utf8_slice_codeunits(t["__crdb_hlc"], 0, 19), pa.int64())
    ts = pc.cast(pc.divide(wall, 1000), pa.timestamp("us", tz="UTC"))
    return t.append_column("__crdb_commit_ts", ts)


def peer_run(a) -> None:
    global HLC
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset  # noqa: F401  (imported here so that its start-up is not counted as reading)
    import pyarrow.json  # noqa: F401
    from deltalake import DeltaTable, write_deltalake

    import_s = time.perf_counter() - STARTED
    HLC = pa.decimal128(29, 10)
    meta = table_manifest(Path(a.manifest))
    keys = list(meta["primary_key"])
    types = {c["name"]: arrow_type(c["type"]) for c in meta["columns"]}
    data = [c["name"] for c in meta["columns"] if c["name"] not in keys]
    ext = ".parquet" if a.format == "parquet" else ".ndjson"
    files, resolved = feed_files(Path(a.feed), ext)
    steps = resolved if a.per_resolved else resolved[-1:]
    target = str(Path(a.target) / TABLE)
    predicate = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    t_read = t_prep = t_write = 0.0
    pending = None  # rows read but above the RESOLVED applied so far
    applied = None
    next_file = 0
    commits = events = 0
    exists = False
    for r in steps:
        c0 = time.perf_counter()
        new = []
        while next_file < len(files) and hlc_key(files[next_file][0]) <= hlc_key(r):
            new.append(files[next_file][1])
            next_file += 1
        parts = [] if pending is None else [pending]
        if new:
            parts.append(read_parquet(new, keys, data) if a.format == "parquet"
                         else read_ndjson(new, keys, data, types))
        c1 = time.perf_counter()
        t_read += c1 - c0
        if not parts:
            applied = r
            continue
        batch = pa.concat_tables(parts)
        h = pc.cast(batch["__crdb_hlc"], HLC)
        now = pc.less_equal(h, pa.scalar(r, pa.string()).cast(HLC))
        if applied is not None:
            now = pc.and_(now, pc.greater(h, pa.scalar(applied, pa.string()).cast(HLC)))
        pending = batch.filter(pc.invert(now))
        window = batch.filter(now)
        events += window.num_rows
        latest = with_commit_ts(latest_per_key(window, keys))
        c2 = time.perf_counter()
        t_prep += c2 - c1
        if latest.num_rows:
            if not exists:
                upserts = latest.filter(pc.invert(latest["__deleted"])).drop_columns(["__deleted"])
                write_deltalake(target, upserts)
                exists = True
            else:
                (DeltaTable(target)
                 .merge(source=latest, predicate=predicate, source_alias="s", target_alias="t")
                 .when_matched_delete(predicate="s.__deleted")
                 .when_matched_update_all(except_cols=["__deleted"])
                 .when_not_matched_insert_all(predicate="NOT s.__deleted", except_cols=["__deleted"])
                 .execute())
            commits += 1
        t_write += time.perf_counter() - c2
        applied = r
    print(json.dumps({"commits": commits, "events": events, "import_s": import_s, "read_s": t_read,
                      "prep_s": t_prep, "write_s": t_write, "resolved": applied}))


def floor_run(a) -> None:
    """Read every data file with pyarrow, then write the final rows once."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq
    from deltalake import write_deltalake
    c0 = time.perf_counter()
    import_s = c0 - STARTED
    files, _ = feed_files(Path(a.feed), ".parquet")
    everything = ds.dataset([str(p) for _, p in files], format="parquet").to_table()
    c1 = time.perf_counter()
    final = pq.read_table(a.final)
    write_deltalake(str(Path(a.target) / TABLE), final)
    print(json.dumps({"commits": 1, "events": everything.num_rows, "import_s": import_s,
                      "read_s": c1 - c0, "prep_s": 0.0,
                      "write_s": time.perf_counter() - c1}))


# ---------------------------------------------------------------------------------------------
# Checking a final table against the ground truth
# ---------------------------------------------------------------------------------------------

def truth_table(truth: Path, keys: list[str], data: list[str], types: dict):
    import pyarrow as pa
    import pyarrow.json as pj
    states = sorted((truth / TABLE / "state").glob("*.ndjson"))
    if not states:
        sys.exit(f"no ground-truth state under {truth / TABLE / 'state'}")
    schema = pa.schema([(c, types[c]) for c in keys + data])
    t = pj.read_json(str(states[-1]), parse_options=pj.ParseOptions(
        explicit_schema=schema, unexpected_field_behavior="ignore"))
    return t.select(keys + data).sort_by([(k, "ascending") for k in keys])


def delta_rows(path: Path, keys: list[str], data: list[str], truth):
    import pyarrow as pa
    from deltalake import DeltaTable, QueryBuilder
    cols = ", ".join(f'"{c}"' for c in keys + data)
    got = pa.table(QueryBuilder().register("t", DeltaTable(str(path))).execute(
        f"SELECT {cols} FROM t").read_all())
    got = pa.table({f.name: got[f.name].cast(f.type) for f in truth.schema})
    return got.sort_by([(k, "ascending") for k in keys])


def check(path: Path, truth, keys: list[str], data: list[str], what: str) -> None:
    import pyarrow.compute as pc
    got = delta_rows(path, keys, data, truth)
    if got.num_rows != truth.num_rows:
        k = keys[0]
        extra = pc.sum(pc.invert(pc.is_in(got[k], truth[k]))).as_py()
        missing = pc.sum(pc.invert(pc.is_in(truth[k], got[k]))).as_py()
        sys.exit(f"{what}: {got.num_rows} rows, the ground truth has {truth.num_rows} "
                 f"({extra} keys not in the truth, {missing} missing)")
    for c in keys + data:
        a, b = got[c].combine_chunks(), truth[c].combine_chunks()
        if not a.equals(b):
            diff = pc.index(pc.equal(a, b).fill_null(False), False).as_py()
            sys.exit(f"{what}: column {c} differs from the ground truth, first at key "
                     f"{[got[k][diff].as_py() for k in keys]}: {a[diff]} vs {b[diff]}")


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------

def simulate(a, fmt: str) -> Path:
    per = (a.changes - a.initial_rows) // (a.resolveds - 1)
    feed = Path(a.work) / f"{TABLE}-{fmt}-{a.initial_rows}+{a.resolveds - 1}x{per}-f{a.ycsb_fields}-s{a.seed}"
    if not (feed / "truth" / "manifest.json").exists():
        run("rm", "-rf", str(feed))
        run(a.bin, "simulate", "--out", str(feed / "changefeed"), "--truth", str(feed / "truth"),
            "--format", fmt, "--tables", TABLE, "--ycsb-fields", str(a.ycsb_fields),
            "--seed", str(a.seed), "--initial-rows", str(a.initial_rows),
            "--windows", str(a.resolveds - 1), "--events-per-window", str(per),
            "--mix", "0.2", "0.7", "0.1", "--schema-change-at", "0", "--drop-column-at", "0",
            "--truth-states", "last")
    return feed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--changes", type=int, default=1_000_000, help="events in the feed, initial scan included")
    ap.add_argument("--initial-rows", type=int, default=100_000)
    ap.add_argument("--resolveds", type=int, default=20, help=".RESOLVED objects (the initial scan's included)")
    ap.add_argument("--ycsb-fields", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--formats", default="parquet,json")
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--workloads", default="whole,per-resolved",
                    help="which to run: whole (backlog), per-resolved (one commit per RESOLVED), or both")
    ap.add_argument("--work", default=str(ROOT / "target" / "bench-peer"))
    ap.add_argument("--bin", default=DEFAULT_BIN)
    # a child's run
    ap.add_argument("--peer-run", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--floor-run", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--per-resolved", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--feed", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--manifest", help=argparse.SUPPRESS)
    ap.add_argument("--format", help=argparse.SUPPRESS)
    ap.add_argument("--final", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.peer_run:
        return peer_run(a)
    if a.floor_run:
        return floor_run(a)

    import pyarrow.parquet as pq
    if a.changes <= a.initial_rows or a.resolveds < 2:
        sys.exit("--changes must exceed --initial-rows, and --resolveds be at least 2")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    started = time.perf_counter()
    workloads = []  # (label, fmt, per_resolved)
    feeds = {}
    for fmt in a.formats.split(","):
        feed = simulate(a, fmt)
        changefeed, truth_dir = feed / "changefeed", feed / "truth"
        meta = table_manifest(truth_dir / "manifest.json")
        keys = list(meta["primary_key"])
        types = {c["name"]: arrow_type(c["type"]) for c in meta["columns"]}
        data = [c["name"] for c in meta["columns"] if c["name"] not in keys]
        truth = truth_table(truth_dir, keys, data, types)
        final = feed / "final.parquet"
        pq.write_table(truth, final)
        ext = ".parquet" if fmt == "parquet" else ".ndjson"
        files, resolved = feed_files(changefeed, ext)
        mb = sum(p.stat().st_size for _, p in files) / 1e6
        feeds[fmt] = dict(feed=changefeed, truth=truth, keys=keys, data=data, final=final,
                          manifest=truth_dir / "manifest.json", resolved=resolved)
        print(f"{fmt}: {len(files)} files, {mb:.1f} MB, {len(resolved)} RESOLVED, "
              f"{json.loads((truth_dir / 'manifest.json').read_text())['summary']['messages']:,} messages, "
              f"final table {truth.num_rows:,} rows", flush=True)
        name = "Parquet" if fmt == "parquet" else "NDJSON"
        kinds = a.workloads.split(",")
        if "whole" in kinds:
            workloads.append((f"{name}, whole backlog", fmt, False))
        if "per-resolved" in kinds:
            workloads.append((f"{name}, one commit per RESOLVED", fmt, True))
    if not workloads:
        sys.exit("--workloads names none of: whole, per-resolved")
    floor_label = None
    if "parquet" in feeds and "whole" in a.workloads.split(",") and not a.no_floor:
        floor_label = "Parquet floor: read every file, write the final rows once"

    def crdb(fmt: str, per_resolved: bool, target: Path) -> dict:
        f = feeds[fmt]
        args = [a.bin, "sync", "--source", str(f["feed"]), "--target", str(target),
                "--manifest", str(f["manifest"]), "--json"]
        if per_resolved:
            args += ["--commit-each-resolved"]
        wall, rss, cpu, out = measured(*args, env=ENV)
        rss /= 1024  # GiB
        rep = json.loads(out)
        t = rep["tables"][TABLE]
        if not rep["complete"] or t["resolved"] != f["resolved"][-1]:
            sys.exit(f"sync did not reach the last RESOLVED: {out}")
        if per_resolved and t["commits"] != len(f["resolved"]):
            sys.exit(f"sync --commit-each-resolved made {t['commits']} commits for {len(f['resolved'])} RESOLVEDs")
        return {"wall": wall, "rss": rss, "cpu": cpu, "commits": t["commits"], "self_s": rep["seconds"],
                "feed_mb": t["bytes_read"] / 1e6, "table_mb": t["table_bytes_read"] / 1e6,
                "written_mb": t["bytes_written"] / 1e6,
                "self_rss": rep["peak_rss_mib"] / 1024}

    def peer(fmt: str, per_resolved: bool, target: Path, floor: bool = False) -> dict:
        f = feeds[fmt]
        args = [sys.executable, str(Path(__file__).resolve()), "--floor-run" if floor else "--peer-run",
                "--feed", str(f["feed"]), "--target", str(target), "--manifest", str(f["manifest"]),
                "--format", fmt, "--final", str(f["final"])]
        if per_resolved:
            args.append("--per-resolved")
        wall, rss, cpu, out = measured(*args, env=ENV)
        rss /= 1024  # GiB
        rep = json.loads(out.strip().splitlines()[-1])
        if per_resolved and rep["commits"] != len(f["resolved"]):
            sys.exit(f"the peer made {rep['commits']} commits for {len(f['resolved'])} RESOLVEDs")
        return {"wall": wall, "rss": rss, "cpu": cpu, "commits": rep["commits"],
                "import_s": rep["import_s"], "read_s": rep["read_s"], "prep_s": rep["prep_s"], "write_s": rep["write_s"]}

    results = {}  # label -> {"crdb": [...], "peer": [...]}
    if floor_label:
        results[floor_label] = {"crdb": [], "peer": []}
    for label, fmt, per_resolved in workloads:
        f = feeds[fmt]
        results[label] = {"crdb": [], "peer": []}
        with_floor = floor_label is not None and fmt == "parquet" and not per_resolved
        for i in range(a.runs):
            for side in ("crdb", "peer") + (("floor",) if with_floor else ()):
                target = work / f"target-{side}"
                run("rm", "-rf", str(target))
                if side == "floor":
                    r = peer(fmt, False, target, floor=True)
                    results[floor_label]["peer"].append(r)
                else:
                    r = (crdb if side == "crdb" else peer)(fmt, per_resolved, target)
                    results[label][side].append(r)
                check(target / TABLE, f["truth"], f["keys"], f["data"], f"{side} {label} run {i + 1}")
                print(f"{label:<36} run {i + 1} {side:<5} {r['wall']:7.2f} s  {r['rss']:5.2f} GiB  {r['cpu']:6.2f} s CPU  "
                      f"{r['commits']:2} commits  (equals the ground truth)", flush=True)
                run("rm", "-rf", str(target))
    total = time.perf_counter() - started
    load1 = os.getloadavg()

    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    cell = lambda rs: f"{med(rs, 'wall'):.2f} s, {med(rs, 'rss'):.2f} GiB"  # noqa: E731
    print()
    print(f"Machine: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), "
          f"load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end; "
          f"binary {os.path.realpath(a.bin)} "
          f"(modified {dt.datetime.fromtimestamp(os.path.getmtime(a.bin)):%Y-%m-%d %H:%M}); "
          f"python {sys.version.split()[0]}; medians of {a.runs} alternating runs; {total:.0f} s in all")
    print()
    print("| workload | crdb-delta sync | Python peer | crdb-delta / peer (wall) | crdb-delta / peer (peak RSS) |")
    print("|---|---|---|---|---|")
    for label, _, _ in workloads:
        c, p = results[label]["crdb"], results[label]["peer"]
        commits = lambda rs: f"{med(rs, 'commits'):.0f} commit{'s' if med(rs, 'commits') != 1 else ''}"  # noqa: E731
        print(f"| {label} | {cell(c)} ({commits(c)}) | {cell(p)} ({commits(p)}) "
              f"| {med(c, 'wall') / med(p, 'wall'):.2f}× | {med(c, 'rss') / med(p, 'rss'):.2f}× |")
    if floor_label:
        p = results[floor_label]["peer"]
        c = results["Parquet, whole backlog"]["crdb"]
        per_run = statistics.median(x["wall"] / y["wall"] for x, y in zip(c, p))
        print(f"| {floor_label} | — | {cell(p)} | whole-backlog sync / floor: {med(c, 'wall') / med(p, 'wall'):.2f}× "
              f"(median of each run's ratio: {per_run:.2f}×) | {med(c, 'rss') / med(p, 'rss'):.2f}× |")
    print()
    print("Where the time went (medians, seconds; CPU = user + system of the child; crdb-delta: its own "
          "`--json` report, table MB read = the Delta table's files it fetched; peer: its own timers):")
    print()
    print("| workload | crdb-delta wall | crdb-delta CPU | crdb-delta report `seconds` | report `peak_rss_mib` (GiB) "
          "| changefeed MB read | table MB read | MB written "
          "| peer wall | peer CPU | peer imports | peer read | peer latest-per-key | peer write/MERGE | peer start-up, exit, listing |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label in [w[0] for w in workloads] + ([floor_label] if floor_label else []):
        c, p = results[label]["crdb"], results[label]["peer"]
        cs = (f"{med(c, 'wall'):.2f} | {med(c, 'cpu'):.2f} | {med(c, 'self_s'):.2f} | {med(c, 'self_rss'):.2f} "
              f"| {med(c, 'feed_mb'):.0f} | {med(c, 'table_mb'):.0f} | {med(c, 'written_mb'):.0f}"
              if c else "— | — | — | — | — | — | —")
        rest = statistics.median(r["wall"] - r["import_s"] - r["read_s"] - r["prep_s"] - r["write_s"] for r in p)
        print(f"| {label} | {cs} | {med(p, 'wall'):.2f} | {med(p, 'cpu'):.2f} | {med(p, 'import_s'):.2f} | {med(p, 'read_s'):.2f} "
              f"| {med(p, 'prep_s'):.2f} "
              f"| {med(p, 'write_s'):.2f} | {rest:.2f} |")


if __name__ == "__main__":
    main()
