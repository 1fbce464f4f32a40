#!/usr/bin/env python3
"""Reliability campaign for `crdb-delta sync`: kills, concurrent compactions, bad inputs, races;
and for the Functions handler `crdb-delta serve` on Azurite: hostile invocations, storage outages.

Every case runs the real binary on a changefeed written by `crdb-delta simulate` and compares
the Delta tables, read by Python `deltalake` + pyarrow (tests/python/oracle.py), with the
simulator's ground truth. Unlike the pytest suite it does not stop at the first mismatch: it
counts rows missing from and unexpected in each table (multiset comparison), and keeps going.

    .tools/venv/bin/python scripts/reliability.py --quick --out results.json      # < ~10 min, 2 cores
    .tools/venv/bin/python scripts/reliability.py --full  --out results.json
    .tools/venv/bin/python scripts/reliability.py --quick --kills --races           # some parts only

Parts (none selected: all): --kills, --compactions, --bad-inputs, --races, --hostile, --outages
(the last two start their own Azurite, .tools/node/node_modules/.bin/azurite-blob or --azurite,
on a free loopback port, and stop it at the end). Results: a summary
table on stdout, `--out` JSON (every case with its figures and the exact commands it ran), and
the work folders of failed cases kept under `--workdir` for reproduction (`--keep` keeps all).
Written for docs/reliability.md; reproduce a failed case with the commands in the JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "python"))

import oracle as o  # noqa: E402
from deltalake import DeltaTable  # noqa: E402

TABLES = "usertable,orders,kitchen_sink"
MODES = ["update_delete", "append_only", "scd2"]
FORMATS = ["json", "parquet"]
# handler/engine/faults.rs: the points where `fault()` is called (handler/engine/). `before-commit` and
# `before-fetch` are pause points only (`pause()`), so CRDB_DELTA_FAULT=before-commit never fires.
FAULT_POINTS = ["before-write", "after-write", "after-commit", "before-record"]
# Re-plans, two counts. The report's `replans`: step attempts planned again in which no table
# committed (all commits stale after a concurrent commit, or the window decoded past
# max_window_bytes); such attempts are not `steps`. This warning in the log: every table commit
# that went stale, also in attempts where another table committed (those count as `steps`).
# A run that fails prints no report; its re-plans are counted from the log.
REPLAN_LOG = "concurrent commit; re-planning from the log"
RUN_TIMEOUT = 600

PRESETS = {
    "quick": {
        "kill_seeds": 1,
        "kill_hits": [1, 2],
        "kill_modes": MODES,
        "kill_formats": FORMATS,
        "kill_windows": 5,
        "compaction_hits": [1, 2],
        "compaction_seeds": 1,
        "background_rounds": 6,
        "bad_seeds": 2,
        "race_seeds": 4,
        "race_modes": MODES,
        "outage_rounds": 5,
    },
    "full": {
        "kill_seeds": 3,
        "kill_hits": [1, 2, 3],
        "kill_modes": MODES,
        "kill_formats": FORMATS,
        "kill_windows": 6,
        "compaction_hits": [1, 2],
        "compaction_seeds": 3,
        "background_rounds": 18,
        "bad_seeds": 4,
        "race_seeds": 10,
        "race_modes": MODES,
        "outage_rounds": 5,
    },
}


# ---------------------------------------------------------------------------------------------
# Running the binary, recording every command for reproduction


class Case:
    """One case: its folder, the commands it ran (as shell lines), its figures and verdict."""

    def __init__(self, part: str, name: str, workdir: Path, binary: Path):
        self.part = part
        self.name = name
        self.dir = workdir / part / name
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.bin = binary
        self.commands: list[str] = []
        self.figures: dict = {}
        self.problems: list[str] = []
        self.started = time.monotonic()

    def shell(self, args: list[str], env: dict | None) -> str:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        return (prefix + " " if prefix else "") + shlex.join([str(a) for a in args])

    def run(self, *args: str, env: dict | None = None, timeout: float = RUN_TIMEOUT):
        argv = [str(self.bin), *args]
        self.commands.append(self.shell(argv, env))
        return run_process(argv, env, timeout)

    def popen(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        argv = [str(self.bin), *args]
        self.commands.append(self.shell(argv, env) + " &")
        return subprocess.Popen(argv, env=full_env(env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def note(self, line: str) -> None:
        self.commands.append("# " + line)

    def fail(self, problem: str) -> None:
        self.problems.append(problem)

    def result(self) -> dict:
        return {
            "part": self.part,
            "case": self.name,
            "ok": not self.problems,
            "problems": self.problems,
            "figures": self.figures,
            "seconds": round(time.monotonic() - self.started, 1),
            "dir": str(self.dir),
            "commands": self.commands,
        }


class Ran:
    def __init__(self, returncode: int | None, stdout: str, stderr: str, timed_out: bool = False):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out

    @property
    def aborted(self) -> bool:
        return self.returncode == -signal.SIGABRT and "injected fault" in self.stderr

    def json(self) -> dict | None:
        try:
            return json.loads(self.stdout)
        except ValueError:
            return None

    def tail(self, n: int = 1500) -> str:
        return self.stderr[-n:]


def full_env(env: dict | None) -> dict:
    e = dict(os.environ)
    e.setdefault("CRDB_DELTA_LOG", "warn")
    for k in ("CRDB_DELTA_FAULT", "CRDB_DELTA_PAUSE", "CRDB_DELTA_PAUSE_DIR"):
        e.pop(k, None)
    e.update(env or {})
    return e


def run_process(argv: list[str], env: dict | None, timeout: float) -> Ran:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, env=full_env(env), timeout=timeout)
        return Ran(p.returncode, p.stdout, p.stderr)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return Ran(None, out, err, timed_out=True)


def replans_of(report: dict | None, stderr: str) -> int:
    """Re-plans of one run: the report's `replans`, or for a run without a report its log."""
    if report and "replans" in report:
        return int(report["replans"])
    return stderr.count(REPLAN_LOG)


def commits_of(report: dict | None) -> int:
    return sum(t.get("commits", 0) for t in (report or {}).get("tables", {}).values())


def describe(r: Ran) -> str:
    if r.timed_out:
        return "timed out"
    if r.returncode is not None and r.returncode < 0:
        return f"killed by signal {signal.Signals(-r.returncode).name}"
    return f"exit {r.returncode}"


# ---------------------------------------------------------------------------------------------
# Feeds (simulated once per key, shared read-only by the cases that do not modify them)


class Feeds:
    def __init__(self, workdir: Path, binary: Path):
        self.dir = workdir / "feeds"
        self.bin = binary
        self.locks: dict[str, threading.Lock] = {}
        self.lock = threading.Lock()
        self.done: dict[str, list[str]] = {}

    def get(self, key: str, args: list[str]) -> tuple[Path, list[str]]:
        """(feed folder with changefeed/ and truth/, the simulate command line)."""
        with self.lock:
            lock = self.locks.setdefault(key, threading.Lock())
        root = self.dir / key
        argv = [str(self.bin), "simulate", "--out", str(root / "changefeed"), "--truth",
                str(root / "truth"), *args]
        with lock:
            if key not in self.done:
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir(parents=True)
                r = run_process(argv, None, RUN_TIMEOUT)
                if r.returncode != 0:
                    raise RuntimeError(f"simulate {key} failed ({describe(r)}): {r.tail()}")
                self.done[key] = argv
        return root, argv


def standard_feed_args(fmt: str, seed: int, windows: int, *extra: str, drop_at: int = 5) -> list[str]:
    """The feed of tests/python/test_sync_oracle.py: 3 tables, ADD and DROP COLUMN, straddling
    files, duplicates, a job restart."""
    return ["--format", fmt, "--seed", str(seed), "--tables", TABLES, "--initial-rows", "60",
            "--windows", str(windows), "--events-per-window", "150", "--straddle", "0.25",
            "--duplicate-rate", "0.05", "--drop-column-at", str(drop_at), *extra]


def usertable_feed_args(seed: int, *extra: str) -> list[str]:
    """The feed of tests/python/test_concurrent_writers.py: one table, enough rows that every
    step leaves several small files for a compaction to merge."""
    return ["--format", "json", "--seed", str(seed), "--tables", "usertable", "--initial-rows",
            "1500", "--windows", "4", "--events-per-window", "300", "--duplicate-rate", "0.05",
            *extra]


def diff_for(mode: str) -> list[str]:
    """scd2 feeds are written WITH diff: scd2 then ends versions from each change's `before`
    (reading the table's rows only where a change has none), the path worth breaking."""
    return ["--diff"] if mode == "scd2" else []


def steps_of(truth: Path) -> list[str]:
    """The RESOLVEDs of the feed (33-digit name timestamps), oldest first."""
    _, defs = o.load_truth(truth)
    first = sorted(defs)[0]
    return sorted(p.stem for p in (truth / first / "state").iterdir())


def sync_args(source: Path, target: Path, truth: Path, mode: str, *extra: str) -> list[str]:
    return ["sync", "--source", str(source), "--target", str(target), "--manifest",
            str(truth / "manifest.json"), "--mode", mode, "--json", *extra]


# ---------------------------------------------------------------------------------------------
# The oracle, counting instead of asserting


def freeze(row: dict, columns: list[str]) -> str:
    return json.dumps({c: row.get(c) for c in columns}, sort_keys=True)


def multiset(actual: list[dict], expected: list[dict], columns: list[str]) -> dict:
    a = Counter(freeze(r, columns) for r in actual)
    e = Counter(freeze(r, columns) for r in expected)
    missing = e - a
    extra = a - e
    return {
        "rows": sum(a.values()),
        "expected": sum(e.values()),
        "missing": sum(missing.values()),
        "unexpected": sum(extra.values()),
        "missing_examples": list(missing.elements())[:2],
        "unexpected_examples": list(extra.elements())[:2],
    }


def read_or_empty(uri: str, version: int | None = None) -> tuple[list[dict], str | None]:
    try:
        return o.read_table(uri, version=version), None
    except Exception as e:  # a table that does not exist or cannot be read
        return [], f"{type(e).__name__}: {e}"


def compare_table(truth: Path, defs: dict, table: str, mode: str, actual: list[dict],
                  at: str | None = None, ignore_keys=None) -> dict:
    """Multiset comparison of one table with the truth: update_delete at RESOLVED `at` (default:
    the last); append_only: the history; scd2: the versions."""
    d = defs[table]
    if ignore_keys:
        actual = [r for r in actual if not ignore_keys(r)]
    if mode == "update_delete":
        expected = o.expect_update_delete(truth, table, at or steps_of(truth)[-1])
        cols = o.data_columns(actual or expected)
    elif mode == "append_only":
        expected = o.expect_append_only(truth, table, defs)
        actual = [dict(r, __crdb_op_is_delete=r.get("__crdb_op") == "d") for r in actual]
        cols = o.data_columns(actual or expected) + ["__crdb_hlc", "__crdb_op_is_delete"]
    else:
        expected = o.expect_scd2(truth, table, defs)
        cols = o.data_columns(actual or expected) + ["__crdb_start_hlc", "__crdb_end_hlc"]
    m = multiset(actual, expected, cols)
    if mode == "update_delete":
        keys = Counter(o.key_of(r, d["primary_key"]) for r in actual)
        m["duplicate_keys"] = sum(c - 1 for c in keys.values() if c > 1)
    elif mode == "scd2":
        open_versions = Counter(o.key_of(r, d["primary_key"]) for r in actual
                                if r.get("__crdb_end_hlc") is None)
        m["duplicate_keys"] = sum(c - 1 for c in open_versions.values() if c > 1)
    else:
        m["duplicate_keys"] = 0
    return m


def check_tables(case: Case, truth: Path, mode: str, read, tables=None, ignore_keys=None) -> dict:
    """Every table (`read(table)` -> rows, error) against the truth; adds problems to the case;
    returns per-table figures."""
    _, defs = o.load_truth(truth)
    out = {}
    for t in tables or sorted(defs):
        actual, err = read(t)
        m = compare_table(truth, defs, t, mode, actual, ignore_keys=ignore_keys)
        if err:
            m["read_error"] = err
        out[t] = m
        if err or m["missing"] or m["unexpected"] or m["duplicate_keys"]:
            case.fail(f"{t}: {m['rows']} rows vs {m['expected']} expected, {m['missing']} missing, "
                      f"{m['unexpected']} unexpected, {m['duplicate_keys']} duplicate keys"
                      + (f", {err}" if err else "")
                      + (f"; missing e.g. {m['missing_examples'][:1]}" if m["missing"] else "")
                      + (f"; unexpected e.g. {m['unexpected_examples'][:1]}" if m["unexpected"] else ""))
    return out


def check_final(case: Case, feed: Path, target: Path, mode: str, tables=None,
                ignore_keys=None) -> dict:
    """Every table of a local target against the truth."""
    return check_tables(case, feed / "truth", mode, lambda t: read_or_empty(str(target / t)),
                        tables, ignore_keys)


def lost_and_unexpected(tables: dict) -> tuple[int, int, int]:
    return (sum(m["missing"] for m in tables.values()),
            sum(m["unexpected"] for m in tables.values()),
            sum(m.get("duplicate_keys", 0) for m in tables.values()))


def check_time_travel(case: Case, feed: Path, target: Path) -> dict:
    """update_delete: each table read at the version `_crdb_delta_resolved` records for each
    RESOLVED equals the truth at that RESOLVED."""
    truth = feed / "truth"
    _, defs = o.load_truth(truth)
    record, err = read_or_empty(str(target / "_crdb_delta_resolved"))
    if err:
        case.fail(f"_crdb_delta_resolved unreadable: {err}")
        return {"checked": 0, "bad": 0}
    by_resolved: dict[str, dict[str, int]] = {}
    for r in record:
        by_resolved.setdefault(r["resolved"], {})[r["table_name"]] = r["delta_version"]
    steps = {o.hlc_of(ts): ts for ts in steps_of(truth)}
    checked = bad = missing = unexpected = 0
    for resolved, versions in sorted(by_resolved.items()):
        if set(versions) != set(defs):
            case.fail(f"_crdb_delta_resolved {resolved}: tables {sorted(versions)}")
            bad += 1
        ts33 = steps.get(resolved)
        if ts33 is None:
            case.fail(f"_crdb_delta_resolved records {resolved}, not a RESOLVED of the feed")
            bad += 1
            continue
        for t, v in versions.items():
            actual, rerr = read_or_empty(str(target / t), version=v)
            m = compare_table(truth, defs, t, "update_delete", actual, at=ts33)
            checked += 1
            if rerr or m["missing"] or m["unexpected"]:
                bad += 1
                missing += m["missing"]
                unexpected += m["unexpected"]
                case.fail(f"{t} version {v} (recorded for RESOLVED {resolved}): {m['missing']} "
                          f"missing, {m['unexpected']} unexpected {rerr or ''}")
    return {"checked": checked, "bad": bad, "missing": missing, "unexpected": unexpected,
            "resolveds": len(by_resolved)}


def versions_of(target: Path, tables) -> dict[str, int | None]:
    out = {}
    for t in tables:
        try:
            out[t] = DeltaTable(str(target / t)).version()
        except Exception:
            out[t] = None
    return out


def applied_of(target: Path, table: str) -> str | None:
    """The RESOLVED a table is at, from its newest commit carrying crdbDelta progress."""
    try:
        for h in DeltaTable(str(target / table)).history(20):
            p = (h.get("crdbDelta") or {}).get("progress") or {}
            if p.get("applied"):
                return p["applied"]
    except Exception:
        return None
    return None


# ---------------------------------------------------------------------------------------------
# Part 1: kills


def kill_case(ctx, mode: str, fmt: str, point: str, n: int, seed: int) -> dict:
    # Even hits run one step per RESOLVED, where each step reads the next one ahead while it
    # writes (handler/engine/ahead.rs): the kill lands with a read-ahead under way.
    each = n % 2 == 0
    case = Case("kills", f"{mode}-{fmt}-{point}-{n}{'-each' if each else ''}-s{seed}", ctx.workdir, ctx.bin)
    feed, sim = ctx.feeds.get(f"std-{fmt}-{seed}-{ctx.preset['kill_windows']}{''.join(diff_for(mode))}",
                              standard_feed_args(fmt, seed, ctx.preset["kill_windows"], *diff_for(mode)))
    case.commands.append(shlex.join(sim))
    target = case.dir / "delta"
    # Odd hits run in a small window, their initial scan in slices of 10 kB (dozens of them):
    # a kill lands in the scan's slices, and the runs after it learn each file's key slices
    # again from the slice they resume at and read the later slices by them. They run with a
    # slice cache of 150 kB (in a TMPDIR of the case's own): some intervals' rows are spilled by
    # slice and read back from there, others' spill does not fit and their files are read, some
    # of them from the cache.
    steps = (["--commit-each-resolved"] if each
             else ["--max-window-bytes", "60000", "--min-slice-bytes", "10000",
                   "--slice-cache-bytes", "150000"])
    args = sync_args(feed / "changefeed", target, feed / "truth", mode, *steps)
    tmp = case.dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    fault = {"CRDB_DELTA_FAULT": f"{point}:{n}", "TMPDIR": str(tmp)}
    kills = 0
    r1 = case.run(*args, env=fault)
    if r1.aborted:
        kills += 1
    else:
        case.fail(f"first faulted run did not abort at {point}:{n}: {describe(r1)} {r1.tail(600)}")
    r2 = case.run(*args, env=fault)
    if r2.aborted:
        kills += 1
    elif r2.returncode != 0:
        case.fail(f"second faulted run: {describe(r2)} {r2.tail(600)}")
    # A killed run may leave its tables' slice cache folders (documented); one that ends leaves
    # none.
    case.figures["slice_cache_folders_left_by_kills"] = len(list(tmp.iterdir()))
    shutil.rmtree(tmp)
    tmp.mkdir()
    r3 = case.run(*args, env={"TMPDIR": str(tmp)})
    if r3.returncode != 0:
        case.fail(f"clean run: {describe(r3)} {r3.tail(1500)}")
    left = sorted(p.name for p in tmp.iterdir())
    if left:
        case.fail(f"slice cache folders left by a run that ended: {left}")
    tables = check_final(case, feed, target, mode)
    lost, unexpected, dup = lost_and_unexpected(tables)
    tt = check_time_travel(case, feed, target) if mode == "update_delete" and r3.returncode == 0 else None
    # Idempotence: one more run commits nothing.
    _, defs = o.load_truth(feed / "truth")
    before = versions_of(target, defs)
    r4 = case.run(*args)
    after = versions_of(target, defs)
    if r4.returncode != 0 or after != before:
        case.fail(f"a run with nothing new: {describe(r4)}, versions {before} -> {after}")
    case.figures = {"mode": mode, "format": fmt, "point": point, "n": n, "each_resolved": each,
                    "runs": 4, "kills": kills,
                    "second_run": "killed" if r2.aborted else describe(r2),
                    "rows_lost": lost, "rows_unexpected": unexpected, "duplicate_keys": dup,
                    "time_travel": tt, "tables": tables}
    return case.result()


def part_kills(ctx) -> list[dict]:
    p = ctx.preset
    jobs = [(m, f, pt, n, ctx.seed + k) for k in range(p["kill_seeds"]) for f in p["kill_formats"]
            for m in p["kill_modes"] for pt in FAULT_POINTS for n in p["kill_hits"]]
    return ctx.map(lambda j: kill_case(ctx, *j), jobs)


# ---------------------------------------------------------------------------------------------
# Part 2: concurrent compactions


def compact(uri: str) -> dict:
    m = DeltaTable(uri).optimize.compact()
    return {"removed": m.get("numFilesRemoved", 0), "added": m.get("numFilesAdded", 0)}


def vacuum(uri: str) -> int:
    return len(DeltaTable(uri).vacuum(retention_hours=0, enforce_retention_duration=False,
                                      dry_run=False))


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def paused_compaction_case(ctx, mode: str, point: str, n: int, writer: str, seed: int) -> dict:
    case = Case("compactions", f"paused-{mode}-{point}-{n}-{writer}-s{seed}", ctx.workdir, ctx.bin)
    feed, sim = ctx.feeds.get(f"user-{seed}{''.join(diff_for(mode))}", usertable_feed_args(seed, *diff_for(mode)))
    case.commands.append(shlex.join(sim))
    truth = feed / "truth"
    s = steps_of(truth)
    target = case.dir / "delta"
    small = ["--target-file-size", "20000"]
    r0 = case.run(*sync_args(feed / "changefeed", target, truth, mode, *small, "--until", o.hlc_of(s[1])))
    if r0.returncode != 0:
        case.fail(f"first sync: {describe(r0)} {r0.tail()}")
        return case.result()
    pause_dir = case.dir / "pause"
    pause_dir.mkdir()
    # n = 1: the rest in one step (as tests/python/test_concurrent_writers.py); n > 1: one step
    # per RESOLVED, paused in the n-th step's commit, so earlier steps of this run are committed.
    window = ["--max-window-bytes", "1"] if n > 1 else []
    proc = case.popen(*sync_args(feed / "changefeed", target, truth, mode, *small, *window),
                      env={"CRDB_DELTA_PAUSE": f"{point}:{n}", "CRDB_DELTA_PAUSE_DIR": str(pause_dir)})
    uri = str(target / "usertable")
    figures = {"mode": mode, "point": point, "n": n, "writer": writer, "seed": seed}
    if wait_for(pause_dir / f"{point}.paused", proc):
        figures["paused"] = True
        try:
            c = compact(uri)
            figures["compaction"] = c
            case.note(f"paused: python: DeltaTable({uri!r}).optimize.compact() -> {c}")
            if writer == "optimize+vacuum":
                v = vacuum(uri)
                figures["vacuumed_files"] = v
                case.note(f"python: DeltaTable({uri!r}).vacuum(retention_hours=0, "
                          f"enforce_retention_duration=False, dry_run=False) -> {v} files")
        except Exception as e:
            case.fail(f"the other writer failed: {type(e).__name__}: {e}")
        (pause_dir / f"{point}.resume").write_text("")
        case.note(f"touch {pause_dir / (point + '.resume')}")
    else:
        figures["paused"] = False
        case.fail(f"the run never reached {point}:{n} (a setup problem of this case)")
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        case.fail("paused sync timed out")
    report = None
    if proc.returncode == 0:
        try:
            report = json.loads(out)
        except ValueError:
            case.fail(f"paused sync: no JSON report: {out[:300]}")
    figures["replans"] = replans_of(report, err)
    figures["replans_logged"] = err.count(REPLAN_LOG)
    figures["steps"] = (report or {}).get("steps")
    if proc.returncode != 0:
        case.fail(f"paused sync: exit {proc.returncode}: {err[-1500:]}")
    elif report is not None:
        if report.get("resolved") != o.hlc_of(s[-1]):
            case.fail(f"stopped at {report.get('resolved')}, not {o.hlc_of(s[-1])}")
    tables = check_final(case, feed, target, mode)
    figures["rows_lost"], figures["rows_unexpected"], figures["duplicate_keys"] = lost_and_unexpected(tables)
    twice = o.double_removes(target / "usertable")
    figures["double_removes"] = len(twice)
    for t in twice[:3]:
        case.fail(t)
    figures["landed"] = 1 if figures.get("compaction", {}).get("removed") else 0
    case.figures = figures
    return case.result()


GAVE_UP = "conflicting commits by other writers in a row"


def background_case(ctx, rnd: int, mode: str, seed: int, with_vacuum: bool, one_step: bool) -> dict:
    """A compactor thread compacts every table in a loop (and vacuums, in some rounds) while
    `sync` applies a 12-RESOLVED backlog in small steps: in one process, or (one_step) one step
    per process (`--max-seconds 0`), as a timer-driven deployment would."""
    style = "steps" if one_step else "run"
    case = Case("compactions", f"background-{rnd}-{mode}-{style}{'-vacuum' if with_vacuum else ''}-s{seed}",
                ctx.workdir, ctx.bin)
    feed, sim = ctx.feeds.get(f"std-json-{seed}-12{''.join(diff_for(mode))}",
                              standard_feed_args("json", seed, 12, *diff_for(mode)))
    case.commands.append(shlex.join(sim))
    truth = feed / "truth"
    _, defs = o.load_truth(truth)
    target = case.dir / "delta"
    stop = threading.Event()
    stats = {"attempts": 0, "landed": 0, "files_removed": 0, "errors": 0, "vacuums": 0,
             "vacuumed_files": 0, "landed_during_sync": 0}
    error_kinds: Counter = Counter()
    sync_running = threading.Event()

    def compactor():
        i = 0
        while not stop.is_set():
            for t in sorted(defs):
                uri = str(target / t)
                if not (target / t / "_delta_log").exists():
                    continue
                stats["attempts"] += 1
                try:
                    c = compact(uri)
                    if c["removed"]:
                        stats["landed"] += 1
                        stats["files_removed"] += c["removed"]
                        if sync_running.is_set():
                            stats["landed_during_sync"] += 1
                    if with_vacuum and i % 3 == 2:
                        stats["vacuums"] += 1
                        stats["vacuumed_files"] += vacuum(uri)
                except Exception as e:
                    stats["errors"] += 1
                    error_kinds[type(e).__name__ + ": " + str(e).splitlines()[0][:120]] += 1
            i += 1
            time.sleep(0.05)

    case.note(f"concurrently: a Python thread looping DeltaTable(<table>).optimize.compact()"
              f"{' and every 3rd pass vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)' if with_vacuum else ''}"
              f" on every table under {target}")
    args = sync_args(feed / "changefeed", target, truth, mode, "--max-window-bytes", "30000",
                     "--target-file-size", "20000")
    th = threading.Thread(target=compactor, daemon=True)
    th.start()
    if one_step:
        args += ["--max-seconds", "0"]
    exits = []
    replans = replans_logged = gave_up = steps = replan_only_runs = 0
    complete = False
    # Runs until the backlog is applied. A run that gives up (README: after 5 re-plans in a row
    # without progress) is counted, and the next run continues, as the next timer or event would.
    for attempt in range(40):
        sync_running.set()
        r = case.run(*args)
        sync_running.clear()
        exits.append(describe(r))
        rep = r.json()
        replans += replans_of(rep, r.stderr)
        replans_logged += r.stderr.count(REPLAN_LOG)
        if rep:
            steps += rep.get("steps", 0)
            # A step commits; an attempt whose commits all went stale is a re-plan, not a step.
            if rep.get("steps", 0) > commits_of(rep):
                case.fail(f"sync run {attempt + 1}: report says {rep.get('steps')} steps but "
                          f"{commits_of(rep)} commits")
            if rep.get("steps", 0) == 0 and rep.get("replans", 0) > 0:
                replan_only_runs += 1
        if r.returncode == 0 and rep and rep.get("complete"):
            complete = True
            break
        if r.returncode != 0:
            if r.returncode == 1 and GAVE_UP in r.stderr:
                gave_up += 1
            else:
                case.fail(f"sync run {attempt + 1} with a compactor running: {describe(r)} {r.tail(800)}")
            time.sleep(0.2)
    stop.set()
    th.join(timeout=120)
    if not complete:
        case.fail("never completed")
    tables = check_final(case, feed, target, mode)
    twice = [x for t in defs if (target / t / "_delta_log").exists() for x in o.double_removes(target / t)]
    for x in twice[:3]:
        case.fail(x)
    lost, unexpected, dup = lost_and_unexpected(tables)
    case.figures = {"mode": mode, "round": rnd, "seed": seed, "vacuum": with_vacuum,
                    "one_step_per_process": one_step, "sync_runs": len(exits),
                    "nonzero_exits": sum(e != "exit 0" for e in exits), "gave_up": gave_up,
                    "steps": steps, "replans": replans, "replans_logged": replans_logged,
                    "replan_only_runs": replan_only_runs, "resolveds": len(steps_of(truth)),
                    **stats, "compactor_errors": dict(error_kinds.most_common(5)),
                    "double_removes": len(twice), "rows_lost": lost, "rows_unexpected": unexpected,
                    "duplicate_keys": dup, "tables": tables}
    return case.result()


def part_compactions(ctx) -> list[dict]:
    p = ctx.preset
    jobs = []
    for k in range(p["compaction_seeds"]):
        seed = ctx.seed + k
        for mode in ["update_delete", "scd2", "append_only"]:
            points = ["before-commit"] + (["before-fetch"] if mode != "append_only" else [])
            for point in points:
                for n in p["compaction_hits"]:
                    for writer in ["optimize", "optimize+vacuum"]:
                        jobs.append((mode, point, n, writer, seed))
    results = ctx.map(lambda j: paused_compaction_case(ctx, *j), jobs)
    # The background rounds are timing races: one at a time, so the compactor gets a core.
    for rnd in range(p["background_rounds"]):
        mode = ["update_delete", "scd2", "append_only"][rnd % 3]
        results.append(background_case(ctx, rnd, mode, ctx.seed + rnd // 6, with_vacuum=rnd % 2 == 1,
                                       one_step=(rnd // 3) % 2 == 1))
        ctx.progress(results[-1])
    return results


# ---------------------------------------------------------------------------------------------
# Part 3: bad inputs


def data_files(changefeed: Path, table: str) -> list[Path]:
    return sorted(p for p in changefeed.rglob("*") if p.is_file() and not p.name.endswith(".RESOLVED")
                  and (f"-{table}-" in p.name or f"-{table}+" in p.name))


def in_step(p: Path, lo: str, hi: str) -> bool:
    ts = p.name[:33]
    return lo < ts <= hi


def victim_file(changefeed: Path, table: str, lo: str, hi: str, suffix: str) -> Path:
    """A data file of `table` read first by the step (lo, hi]: the biggest, so it has lines."""
    files = [p for p in data_files(changefeed, table) if in_step(p, lo, hi) and p.name.endswith(suffix)]
    if not files:
        raise RuntimeError(f"no {suffix} file of {table} in ({lo}, {hi}]")
    return max(files, key=lambda p: (p.stat().st_size, p.name))


# core/src/values.rs MAX_JSON_DEPTH: deeper JSON values are refused (DecodeError naming file,
# line and column), so the file is quarantined instead of overflowing the stack.
MAX_JSON_DEPTH = 128


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def corrupt_json_line(victim: Path, how: str, manifest: dict, table: str) -> tuple[str, list[str]]:
    """Damages one line of an NDJSON file; returns what was done and the strings the error must
    contain besides the file name (its line, and its column where there is one)."""
    lines = victim.read_text().splitlines()
    i = len(lines) // 2
    if how == "broken-json-line":
        lines[i] = lines[i][: len(lines[i]) // 2]
        what = f"line {i + 1} cut in half"
        where = [f"line {i + 1}:"]
    elif how == "wrong-updated":
        row = json.loads(lines[i])
        row["updated"] = "oops"
        lines[i] = json.dumps(row)
        what = f'line {i + 1}: "updated": "oops"'
        where = [f"line {i + 1}:", "`updated`"]
    else:
        # A value nested 10,000 levels deep, in a column that takes JSON (JSONB) if the table
        # has one, else in a string column.
        d = next(t for t in manifest["tables"] if t["name"] == table)
        row = json.loads(lines[i])
        if row.get("after") is None:
            i = next(j for j, line in enumerate(lines) if json.loads(line).get("after"))
            row = json.loads(lines[i])
        cols = d.get("columns") or {}
        types = ({c["name"]: json.dumps(c) for c in cols} if isinstance(cols, list)
                 else {k: json.dumps(v) for k, v in cols.items()})
        jsonb = [c for c in row["after"] if "JSONB" in types.get(c, "").upper()]
        col = (jsonb or [c for c in row["after"] if c not in d["primary_key"]])[0]
        row["after"][col] = "@@NESTED@@"
        lines[i] = json.dumps(row).replace('"@@NESTED@@"', nested(10_000))
        what = f"line {i + 1}: after.{col} = [[[…]]] nested 10000 levels"
        where = [f"line {i + 1}:", f"column `{col}`", f"nested deeper than {MAX_JSON_DEPTH} levels"]
    victim.write_text("\n".join(lines) + "\n")
    return what, where


BAD_CASES = [
    # name, feed format/compression, table whose file is broken
    ("truncated-gzip", "json", "gzip", "orders"),
    ("broken-json-line", "json", "none", "orders"),
    ("wrong-updated", "json", "none", "orders"),
    ("parquet-cut-in-half", "parquet", "none", "orders"),
    # A value nested 10,000 levels (> MAX_JSON_DEPTH): refused like any undecodable file.
    ("nested-10000-jsonb", "json", "none", "kitchen_sink"),
    ("nested-10000-string", "json", "none", "usertable"),
    # The RESOLVED the next step applies (default window: the newest) says another timestamp.
    ("resolved-content-disagrees", "json", "none", None),
    # The same with a small window: the next step's RESOLVED is an intermediate one.
    ("resolved-content-disagrees-window", "json", "none", None),
    # An intermediate RESOLVED that no step applies (default window: one step to the newest).
    # README: "a step reads its RESOLVED object and refuses one whose content disagrees": this
    # one is never a step's, so the expectation here is exit 0 and the tables at the newest.
    ("resolved-content-disagrees-skipped", "json", "none", None),
    ("stray-2099-resolved", "json", "none", None),
]


def bad_input_case(ctx, name: str, fmt: str, compression: str, table: str | None, seed: int) -> dict:
    case = Case("bad_inputs", f"{name}-s{seed}", ctx.workdir, ctx.bin)
    src, sim = ctx.feeds.get(f"bad-{fmt}-{compression}-{seed}",
                             standard_feed_args(fmt, seed, 4, "--compression", compression))
    case.commands.append(shlex.join(sim))
    case.note(f"cp -r {src} {case.dir / 'feed'}   # the case works on a copy")
    feed = case.dir / "feed"
    shutil.copytree(src, feed)
    truth, changefeed, target = feed / "truth", feed / "changefeed", case.dir / "delta"
    manifest, defs = o.load_truth(truth)
    s = steps_of(truth)
    window = ["--max-window-bytes", "60000"] if name.endswith("-window") else []
    base = sync_args(changefeed, target, truth, "update_delete", *window)
    r0 = case.run(*base, "--until", o.hlc_of(s[1]))
    figures: dict = {"case": name, "seed": seed, "table": table}
    case.figures = figures
    if r0.returncode != 0:
        case.fail(f"sync to {s[1]}: {describe(r0)} {r0.tail()}")
        return case.result()
    before = versions_of(target, defs)
    figures["versions_before"] = before
    resolveds = sorted(changefeed.rglob("*.RESOLVED"))
    backup = case.dir / "backup"
    stray = None
    where: list[str] = []  # what the error must name besides the file (line, column)
    if name == "stray-2099-resolved":
        real = resolveds[-1]
        stray_ts = "2099" + real.stem[4:]
        stray = real.parent.parent / ("2099" + real.parent.name[4:]) / f"{stray_ts}.RESOLVED"
        stray.parent.mkdir(parents=True, exist_ok=True)
        stray.write_text(json.dumps({"resolved": o.hlc_of(stray_ts)}))
        victim = stray
        figures["what"] = f"{stray.relative_to(changefeed)} = {stray.read_text()}"
    elif name.startswith("resolved-content-disagrees"):
        victim = next(p for p in resolveds if p.stem == (s[-1] if name == "resolved-content-disagrees" else s[2]))
        shutil.copy2(victim, backup)
        victim.write_text(json.dumps({"resolved": o.hlc_of(s[1])}))
        figures["what"] = f"{victim.name} holds {o.hlc_of(s[1])}"
    else:
        suffix = {"truncated-gzip": ".gz", "parquet-cut-in-half": ".parquet"}.get(name, ".ndjson")
        victim = victim_file(changefeed, table, s[1], s[2], suffix)
        shutil.copy2(victim, backup)
        if name in ("truncated-gzip", "parquet-cut-in-half"):
            size = victim.stat().st_size
            with open(victim, "r+b") as f:
                f.truncate(size // 2)
            figures["what"] = f"{victim.name} cut from {size} to {size // 2} bytes"
        else:
            what, where = corrupt_json_line(victim, name, manifest, table)
            figures["what"] = f"{victim.name}: {what}"
    case.note(f"corrupt: {figures['what']}")
    figures["file"] = str(victim.relative_to(changefeed))
    r = case.run(*base)
    figures["exit"] = describe(r)
    figures["stderr_tail"] = r.stderr[-600:]
    after = versions_of(target, defs)
    figures["versions_after"] = after
    if name in ("stray-2099-resolved", "resolved-content-disagrees-skipped"):
        rep = r.json() or {}
        refused = rep.get("refused", [])
        figures["refused"] = refused
        if r.returncode != 0:
            case.fail(f"expected exit 0, got {describe(r)}: {r.tail(800)}")
        if name == "stray-2099-resolved" and not any(victim.name in x for x in refused):
            case.fail(f"{victim.name} not in the report's refused: {refused}")
        if rep.get("resolved") != o.hlc_of(s[-1]):
            case.fail(f"report at {rep.get('resolved')}, not the last real RESOLVED {o.hlc_of(s[-1])}")
        for t in defs:
            if applied_of(target, t) != o.hlc_of(s[-1]):
                case.fail(f"{t} at {applied_of(target, t)}, not {o.hlc_of(s[-1])}")
        tables = check_final(case, feed, target, "update_delete")
        figures["rows_lost"], figures["rows_unexpected"], _ = lost_and_unexpected(tables)
        return case.result()
    # Bad input: exit 1 (a refusal, not a crash) with an error naming the file, and for a data
    # file its line and column where the damage has one (README "Poison files").
    data_file = not name.startswith("resolved-content-disagrees")
    if r.returncode != 1:
        case.fail(f"expected exit 1, got {describe(r)}: {r.tail(800)}")
    if victim.name not in r.stderr:
        case.fail(f"stderr does not name {victim.name}: {r.tail(800)}")
    for w in where:
        if w not in r.stderr:
            case.fail(f"stderr does not name {w!r}: {r.tail(800)}")
    rep = r.json() or {}
    figures["report_quarantined"] = [x.get("file") for x in rep.get("quarantined", [])]
    # A bad data file is quarantined (held) for its table: listed, never skipped silently.
    quarantined = quarantine_list(case, target)
    figures["quarantined"] = [{k: x.get(k) for k in ("table", "file", "action")} for x in quarantined]
    if data_file:
        held = [x for x in quarantined if x.get("file") == figures["file"]]
        if not held:
            case.fail(f"`quarantine list` has no entry for {figures['file']}: {figures['quarantined']}")
        for x in held:
            if x.get("table") != table or x.get("action") != "hold":
                case.fail(f"quarantine entry {x.get('table')}/{x.get('action')}, expected {table}/hold")
            for w in [victim.name, *where]:
                if w not in (x.get("reason") or ""):
                    case.fail(f"quarantine reason does not name {w!r}: {x.get('reason')}")
    elif quarantined:
        case.fail(f"a RESOLVED refusal quarantined files: {figures['quarantined']}")
    # Nothing moves past what is valid.
    recorded = recorded_resolved(target)
    figures["recorded_after"] = recorded
    if recorded != o.hlc_of(s[1]):
        case.fail(f"_crdb_delta_resolved moved to {recorded} (was {o.hlc_of(s[1])})")
    figures["applied_after"] = {}
    for t in defs:
        applied = applied_of(target, t)
        figures["applied_after"][t] = applied
        if t == table or not data_file:
            if after[t] != before[t]:
                case.fail(f"{t}: version moved {before[t]} -> {after[t]} (applied {applied})")
            continue
        # The other tables go on to the newest RESOLVED (their files are fine) and equal the truth.
        if applied != o.hlc_of(s[-1]):
            case.fail(f"{t} at {applied}, not advanced to the newest RESOLVED {o.hlc_of(s[-1])}")
        ts = {o.hlc_of(x): x for x in s}.get(applied)
        if ts is None:
            continue
        actual, _ = read_or_empty(str(target / t))
        m = compare_table(truth, defs, t, "update_delete", actual, at=ts)
        if m["missing"] or m["unexpected"]:
            case.fail(f"{t} at {applied}: {m['missing']} missing, {m['unexpected']} unexpected")
    # Before any repair, a second run must fail the same way (a poison file is not skipped).
    again = case.run(*base)
    figures["second_run"] = describe(again)
    if again.returncode != 1 or victim.name not in again.stderr:
        case.fail(f"second run before repair: {describe(again)}, file named: {victim.name in again.stderr}")
    if versions_of(target, [table] if table else list(defs)) != {t: after[t] for t in ([table] if table else defs)}:
        case.fail("the second run before repair moved the bad table")
    # Repair: put the file back, `quarantine retry` it, run again: converge, nothing left held.
    shutil.copy2(backup, victim)
    case.note(f"cp {backup} {victim}   # repair")
    if data_file:
        rr = case.run("quarantine", "--target", str(target), "retry", figures["file"])
        if rr.returncode != 0:
            case.fail(f"quarantine retry {figures['file']}: {describe(rr)} {rr.tail(400)}")
    r2 = case.run(*base)
    figures["after_repair"] = describe(r2)
    if r2.returncode != 0:
        case.fail(f"after repair: {describe(r2)} {r2.tail(800)}")
    left = quarantine_list(case, target)
    if left:
        case.fail(f"still quarantined after repair: {[x.get('file') for x in left]}")
    figures["recorded_after_repair"] = recorded_resolved(target)
    if figures["recorded_after_repair"] != o.hlc_of(s[-1]):
        case.fail(f"_crdb_delta_resolved at {figures['recorded_after_repair']} after repair, not {o.hlc_of(s[-1])}")
    tables = check_final(case, feed, target, "update_delete")
    figures["rows_lost"], figures["rows_unexpected"], _ = lost_and_unexpected(tables)
    return case.result()


def quarantine_list(case: Case, target: Path) -> list[dict]:
    q = case.run("quarantine", "--target", str(target), "list", "--json")
    if q.returncode != 0:
        case.fail(f"quarantine list: {describe(q)} {q.tail(400)}")
        return []
    try:
        return json.loads(q.stdout)
    except ValueError:
        case.fail(f"quarantine list --json: not JSON: {q.stdout[:200]}")
        return []


def recorded_resolved(target: Path) -> str | None:
    record, _ = read_or_empty(str(target / "_crdb_delta_resolved"))
    return max((x["resolved"] for x in record), key=lambda h: tuple(map(int, h.split("."))), default=None)


def part_bad_inputs(ctx) -> list[dict]:
    jobs = [(c, ctx.seed + k) for k in range(ctx.preset["bad_seeds"]) for c in BAD_CASES]
    return ctx.map(lambda j: bad_input_case(ctx, *j[0], j[1]), jobs)


# ---------------------------------------------------------------------------------------------
# Part 4: concurrent syncs


def race_case(ctx, mode: str, seed: int, windows: tuple) -> dict:
    """Two syncs into one target; a window of "each" is one step per RESOLVED, each step
    reading the next ahead (a read-ahead that a conflict must drop)."""
    case = Case("races", f"{mode}-s{seed}-w{windows[0]}-{windows[1]}", ctx.workdir, ctx.bin)
    feed, sim = ctx.feeds.get(f"std-json-{seed}-6", standard_feed_args("json", seed, 6))
    case.commands.append(shlex.join(sim))
    target = case.dir / "delta"

    def steps(w) -> list[str]:
        return ["--commit-each-resolved"] if w == "each" else ["--max-window-bytes", str(w)]
    procs = [case.popen(*sync_args(feed / "changefeed", target, feed / "truth", mode, *steps(w)))
             for w in windows]
    case.note("wait")
    exits, replans, replans_logged, steps, commits = [], 0, 0, [], []
    for p in procs:
        try:
            out, err = p.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        exits.append(p.returncode)
        try:
            rep = json.loads(out) if p.returncode == 0 else None
        except ValueError:
            rep = None
        replans += replans_of(rep, err)
        replans_logged += err.count(REPLAN_LOG)
        if p.returncode != 0:
            case.fail(f"a racing sync: exit {p.returncode}: {err[-1500:]}")
        elif rep is None:
            case.fail(f"a racing sync printed no JSON report: {out[:300]}")
        else:
            commits.append(commits_of(rep))
            steps.append(rep.get("steps", 0))
            if rep.get("steps", 0) > commits_of(rep):
                case.fail(f"a racing sync reports {rep.get('steps')} steps but {commits_of(rep)} commits")
    tables = check_final(case, feed, target, mode)
    tt = check_time_travel(case, feed, target) if mode == "update_delete" else None
    lost, unexpected, dup = lost_and_unexpected(tables)
    case.figures = {"mode": mode, "seed": seed, "windows": list(windows), "exits": exits,
                    "commits_per_process": commits, "steps_per_process": steps, "replans": replans,
                    "replans_logged": replans_logged, "rows_lost": lost,
                    "rows_unexpected": unexpected, "duplicate_keys": dup, "time_travel": tt,
                    "tables": tables}
    return case.result()


def part_races(ctx) -> list[dict]:
    jobs = []
    for k in range(ctx.preset["race_seeds"]):
        for mode in ctx.preset["race_modes"]:
            jobs.append((mode, ctx.seed + k, (60000, 60000)))
        # Different step boundaries: one process applies several RESOLVEDs in one commit.
        jobs.append((MODES[k % 3], ctx.seed + k, (30000, 250000)))
        # One step per RESOLVED (reading ahead) against one process of larger steps.
        jobs.append((MODES[(k + 1) % 3], ctx.seed + k, ("each", 60000)))
    # Each case runs two processes: one case at a time on two cores.
    return ctx.map(lambda j: race_case(ctx, *j), jobs, jobs_override=max(1, ctx.jobs // 2))


# ---------------------------------------------------------------------------------------------
# Azurite, and invocations posted as the Functions host posts them (for parts 5 and 6)

AZURITE_BIN = ROOT / ".tools/node/node_modules/.bin/azurite-blob"
ACCOUNT = "devstoreaccount1"
# Azurite's published well-known development key (tests/support/mod.rs; not a secret).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
MAX_BODY_BYTES = 4 << 20  # handler/serve/mod.rs DEFAULT_MAX_BODY_BYTES
MAX_SUBJECT_BYTES = 1200  # handler/serve/app.rs: no blob's subject is longer
LEASE_SECONDS = 3


class Azurite:
    """An Azurite blob service of our own on a loopback port: in memory, or on disk
    (`location`) so that it keeps its blobs across a stop and a restart."""

    def __init__(self, log: Path, location: Path | None = None, binary: Path | None = None):
        self.log = log
        self.location = location
        self.binary = binary or AZURITE_BIN
        self.port = None
        self.proc: subprocess.Popen | None = None

    def argv(self, port: int) -> list[str]:
        store = (["--inMemoryPersistence"] if self.location is None
                 else ["--location", str(self.location)])
        return [str(self.binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), *store,
                "--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry"]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int | None = None) -> None:
        import urllib.error
        import urllib.request
        for _ in range(3):
            self.port = port or o.free_port()
            with open(self.log, "a") as log:
                self.proc = subprocess.Popen(self.argv(self.port), stdout=log, stderr=log,
                                             stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    urllib.request.urlopen(f"{self.base}/{ACCOUNT}?comp=list", timeout=2)
                    return
                except urllib.error.HTTPError:
                    return  # it answers (403 without a signature)
                except Exception:
                    time.sleep(0.2)
            self.stop()
            if port:
                break
        raise RuntimeError(f"Azurite did not start (log: {self.log})")

    def stop(self, sig: int = signal.SIGTERM) -> str:
        """Stops it: `sig`, then SIGKILL after 10 s. Returns how it ended."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return "not running"
        p.send_signal(sig)
        try:
            p.wait(timeout=10)
            return signal.Signals(sig).name
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return f"{signal.Signals(sig).name}, then SIGKILL after 10 s"

    def request(self, method: str, container: str, blob: str | None = None,
                query: dict | None = None, body: bytes = b"", headers: dict | None = None):
        """A Shared Key signed request (object_store cannot create containers)."""
        import base64
        import hmac
        import urllib.parse
        import urllib.request
        from email.utils import formatdate
        query = query or {}
        path = f"/{ACCOUNT}/{container}" + (f"/{urllib.parse.quote(blob, safe='/')}" if blob else "")
        h = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": "2021-08-06", **(headers or {})}
        if body:
            h.setdefault("Content-Type", "application/octet-stream")  # else urllib adds its own
        xms = "".join(f"{k.lower()}:{v}\n" for k, v in sorted(h.items()) if k.lower().startswith("x-ms-"))
        resource = f"/{ACCOUNT}{path}" + "".join(f"\n{k}:{v}" for k, v in sorted(query.items()))
        to_sign = "\n".join([method, "", "", str(len(body)) if body else "", "",
                             h.get("Content-Type", ""), "", "", "", "", "", "", ""]) + xms + resource
        sig = base64.b64encode(hmac.new(base64.b64decode(AZURITE_KEY), to_sign.encode(),
                                        hashlib.sha256).digest()).decode()
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        req = urllib.request.Request(url, data=body or None, method=method,
                                     headers={**h, "Authorization": f"SharedKey {ACCOUNT}:{sig}",
                                              "Content-Length": str(len(body))})
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()

    def create_container(self, container: str) -> None:
        status, _ = self.request("PUT", container, query={"restype": "container"})
        assert status == 201, status

    def put_blob(self, container: str, blob: str, data: bytes) -> None:
        status, _ = self.request("PUT", container, blob, body=data,
                                 headers={"x-ms-blob-type": "BlockBlob"})
        assert status == 201, status

    def list_blobs(self, container: str, prefix: str) -> list[tuple[str, int]]:
        import xml.etree.ElementTree as ET
        out, marker = [], None
        while True:
            q = {"restype": "container", "comp": "list", "prefix": prefix}
            if marker:
                q["marker"] = marker
            _, body = self.request("GET", container, query=q)
            root = ET.fromstring(body)
            for b in root.iter("Blob"):
                out.append((b.findtext("Name"), int(b.findtext("Properties/Content-Length") or 0)))
            marker = root.findtext("NextMarker")
            if not marker:
                return sorted(out)


def azure_env(az: Azurite) -> dict:
    return {"AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": az.base}


def azure_rows(container: str, table: str) -> tuple[list[dict], str | None]:
    """A table on Azurite read by Python `deltalake` (tests/python/test_sync_oracle.py
    `test_azurite_source_and_target`); AZURITE_BLOB_STORAGE_URL must be in os.environ."""
    opts = {"account_name": ACCOUNT, "use_emulator": "true", "allow_http": "true"}
    try:
        return o.read_table(f"az://{container}/delta/{table}", storage_options=opts), None
    except Exception as e:
        return [], f"{type(e).__name__}: {str(e)[:300]}"


def check_azure_final(case: Case, truth: Path, container: str) -> dict:
    return check_tables(case, truth, "update_delete", lambda t: azure_rows(container, t))


def handler_config(truth: Path, path: Path) -> None:
    """The keys and SQL types a user would configure, from the simulator's manifest
    (tests/function_e2e.rs `feed`)."""
    manifest, _ = o.load_truth(truth)
    tables = {t["name"]: {"primary_key": t["primary_key"],
                          "columns": {c["name"]: c["type"] for c in t["columns"]}}
              for t in manifest["tables"]}
    path.write_text(json.dumps({"tables": tables}))


HANDLER_FEED_ARGS = ["--windows", "5", "--events-per-window", "150", "--initial-rows", "50",
                     "--straddle", "0.25", "--duplicate-rate", "0.05"]


def wait_listening(proc: subprocess.Popen, port: int, log: Path) -> None:
    """Waits (60 s at most) until `serve` process PROC accepts on PORT; its LOG tells why not."""
    import socket
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited: {log.read_text()[-1500:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("serve not listening after 60 s")
            time.sleep(0.02)


class Serve:
    """A running `crdb-delta serve` (env as tests/function_e2e.rs `Handler::start`)."""

    def __init__(self, case: Case, az: Azurite, container: str, config: Path, log: Path):
        self.port = o.free_port()
        self.log = log
        self.env = {"FUNCTIONS_CUSTOMHANDLER_PORT": str(self.port),
                    "CRDB_DELTA_SOURCE": f"azure://{container}/feed",
                    "CRDB_DELTA_TARGET": f"azure://{container}/delta",
                    "CRDB_DELTA_CONFIG": str(config),
                    "CRDB_DELTA_LEASE_SECONDS": str(LEASE_SECONDS),
                    "CRDB_DELTA_LOG": "info,buoyant_kernel=warn",
                    **azure_env(az)}
        argv = [str(case.bin), "serve"]
        case.commands.append(case.shell(argv, self.env) + f" 2>>{shlex.quote(str(log))} &")
        with open(log, "a") as f:
            self.proc = subprocess.Popen(argv, env=full_env(self.env), stdout=subprocess.DEVNULL,
                                         stderr=f, stdin=subprocess.DEVNULL)
        wait_listening(self.proc, self.port, log)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def log_since(self, offset: int) -> str:
        with open(self.log, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def post(self, function: str, body: bytes, **kw) -> "Posted":
        return post_raw(self.port, function, body, **kw)


class Posted:
    def __init__(self, status: int | None, body: str, error: str | None = None, seconds: float = 0.0):
        self.status = status
        self.body = body
        self.error = error
        self.seconds = seconds

    def json(self) -> dict:
        try:
            return json.loads(self.body)
        except ValueError:
            return {}

    def logs(self) -> str:
        return " | ".join(str(x) for x in (self.json().get("Logs") or []))

    def describe(self) -> str:
        return f"HTTP {self.status}" if self.status is not None else f"no reply ({self.error})"


def post_raw(port: int, function: str, body: bytes, method: str = "POST", chunked: bool = True,
             timeout: float = 300, content_length: bool = False) -> Posted:
    """Posts as the host does (handler/serve/http.rs `post_invocation`): chunked in two parts,
    no Content-Length, the invocation id header. The body is sent by a thread, so that a reply
    that comes before the whole body is read (a body over the limit) is still seen."""
    import socket
    import uuid
    started = time.monotonic()
    head = (f"{method} /{function} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            + ("Transfer-Encoding: chunked\r\n" if chunked else "")
            + (f"Content-Length: {len(body)}\r\n" if content_length or not chunked else "")
            + f"X-Azure-Functions-InvocationId: {uuid.uuid4()}\r\n"
            "X-Azure-Functions-HostVersion: crdb-delta-reliability\r\n"
            "User-Agent: Azure-Functions-Host/crdb-delta-reliability\r\nConnection: close\r\n\r\n").encode()
    if chunked:
        a, b = body[: len(body) // 2], body[len(body) // 2:]
        payload = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (a, b) if p) + b"0\r\n\r\n"
    else:
        payload = body
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as e:
        return Posted(None, "", f"connect: {e}", time.monotonic() - started)
    s.settimeout(timeout)

    def send():
        try:
            s.sendall(head + payload)
        except OSError:
            pass  # the handler answered and closed before reading everything

    th = threading.Thread(target=send, daemon=True)
    th.start()
    chunks = []
    err = None
    try:
        while True:
            c = s.recv(65536)
            if not c:
                break
            chunks.append(c)
    except OSError as e:
        err = f"{type(e).__name__}: {e}"
    finally:
        s.close()
    th.join(timeout=5)
    raw = b"".join(chunks)
    seconds = time.monotonic() - started
    if b"\r\n\r\n" not in raw:
        return Posted(None, "", err or "connection closed before a reply", seconds)
    head_b, rest = raw.split(b"\r\n\r\n", 1)
    lines = head_b.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return Posted(None, "", f"bad status line {lines[0][:80]!r}", seconds)
    if any(l.lower().startswith("transfer-encoding:") and "chunked" in l.lower() for l in lines):
        out = b""
        while b"\r\n" in rest:
            size, rest = rest.split(b"\r\n", 1)
            try:
                n = int(size.strip() or b"0", 16)
            except ValueError:
                break
            if n == 0:
                break
            out += rest[:n]
            rest = rest[n + 2:]
        rest = out
    return Posted(status, rest.decode("utf-8", "replace"), err, seconds)


def blob_event(name: str, size: int, container: str, account: str = ACCOUNT,
               event_type: str = "Microsoft.Storage.BlobCreated", api: str = "PutBlockList",
               subject: str | None = None, **overrides) -> dict:
    """The Event Grid BlobCreated event of handler/dev/pump.rs `blob_created_event`."""
    import uuid
    ev = {
        "topic": f"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/local/"
                 f"providers/Microsoft.Storage/storageAccounts/{account}",
        "subject": subject if subject is not None else f"/blobServices/default/containers/{container}/blobs/{name}",
        "eventType": event_type,
        "id": str(uuid.uuid4()),
        "data": {"api": api, "clientRequestId": str(uuid.uuid4()), "requestId": str(uuid.uuid4()),
                 "eTag": "0x0", "contentType": "application/octet-stream", "contentLength": size,
                 "blobType": "BlockBlob", "url": f"http://127.0.0.1:1/{account}/{container}/{name}",
                 "sequencer": f"{time.time_ns():032x}", "storageDiagnostics": {"batchId": str(uuid.uuid4())}},
        "dataVersion": "", "metadataVersion": "1",
        "eventTime": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    ev.update(overrides)
    return ev


def event_body(event, function: str = "BlobCreated") -> bytes:
    """The host's body for one Event Grid invocation (pump.rs `invocation_body`): `Data.event`
    is the event's indented JSON text, JSON-quoted once more."""
    import uuid
    sys_ = {"MethodName": function, "UtcNow": dt.datetime.now(dt.timezone.utc).isoformat(),
            "RandGuid": str(uuid.uuid4())}
    data = event.get("data") if isinstance(event, dict) else None
    return json.dumps({"Data": {"event": json.dumps(json.dumps(event, indent=2))},
                       "Metadata": {"data": data, "sys": sys_}}).encode()


CATCHUP_BODY = json.dumps({"Data": {"timer": {"Schedule": {}, "ScheduleStatus": None, "IsPastDue": True}},
                           "Metadata": {"sys": {"MethodName": "CatchUp"}}}).encode()
STATUS_BODY = json.dumps({"Data": {"req": {"Url": "http://localhost/api/status", "Method": "GET",
                                           "Query": {}, "Headers": {}, "Params": {}}},
                          "Metadata": {}}).encode()


def status_of(serve: Serve) -> tuple[Posted, dict | None]:
    r = serve.post("Status", STATUS_BODY, timeout=120)
    try:
        return r, json.loads(r.json()["Outputs"]["res"]["body"])
    except (KeyError, TypeError, ValueError):
        return r, None


def simulate_to_azure(case: Case, az: Azurite, container: str, truth: Path, seed: int) -> None:
    r = case.run("simulate", "--out", f"azure://{container}/feed", "--truth", str(truth),
                 "--seed", str(seed), *HANDLER_FEED_ARGS, "--json", env=azure_env(az))
    if r.returncode != 0:
        raise RuntimeError(f"simulate: {describe(r)} {r.tail()}")


def longest_run(text: str, ch: str) -> int:
    best = cur = 0
    for c in text:
        cur = cur + 1 if c == ch else 0
        best = max(best, cur)
    return best


# ---------------------------------------------------------------------------------------------
# Part 5: hostile invocations


def hostile_cases(container: str, blobs: list[tuple[str, int]]) -> list[dict]:
    """The hostile invocations, in the order posted. Each: name, function, body (bytes), the
    status expected, a substring the reply's Logs must hold (or None), `filler`: a character
    the subject is padded with, whose longest run in the reply and the log is measured."""
    data = [b for b in blobs if not b[0].endswith(".RESOLVED")]
    resolved = [b for b in blobs if b[0].endswith(".RESOLVED")]
    real_name, real_size = data[len(data) // 2]
    base = real_name.rsplit("/", 1)[-1]
    ts33, session = base[:33], base[34:50]
    folder = real_name.rsplit("/", 1)[0]
    first_res = resolved[0][0].rsplit("/", 1)[-1][:33]
    # One second before the first RESOLVED (a RESOLVED event for a blob that does not exist).
    early = (dt.datetime.strptime(first_res[:14], "%Y%m%d%H%M%S") - dt.timedelta(seconds=1)
             ).strftime("%Y%m%d%H%M%S") + first_res[14:]
    ev = lambda name, size=1, **kw: blob_event(name, size, container, **kw)  # noqa: E731
    cases = []

    def add(name, body, expect=200, log=None, function="BlobCreated", filler=None, **kw):
        cases.append({"name": name, "function": function, "body": body, "expect": expect,
                      "log": log, "filler": filler, **kw})

    # The body itself.
    add("malformed-json", b'{"Data": {"event": "{\\"id\\": ', log="request refused")
    add("not-utf8-bytes", bytes(range(256)) * 4, log="request refused")
    add("empty-body", b"", log="request refused")
    add("json-array-body", b"[1, 2, 3]", log="request refused")
    add("no-event-binding", b'{"Data": {}, "Metadata": {}}', log="request refused")
    add("event-not-json", json.dumps({"Data": {"event": "not json, not base64"}, "Metadata": {}}).encode(),
        log="payload refused")
    deep = json.dumps(json.dumps(json.dumps(json.dumps(json.dumps(json.dumps(ev(real_name)))))))
    add("event-quoted-6-times", json.dumps({"Data": {"event": deep}, "Metadata": {}}).encode(),
        log="payload refused")
    add("json-nested-100000", b'{"Data": {"event": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        log="request refused")
    add("batch-6000-events", json.dumps({"Data": {"event": [{}] * 6000}, "Metadata": {}}).encode(),
        log="payload refused")
    big = b'{"Data": {"event": "' + b"x" * (MAX_BODY_BYTES + 1024) + b'"}}'
    add("body-4mib-plus-chunked", big, log="larger than")
    add("body-4mib-plus-content-length", big, chunked=False, log="larger than")
    # The function name and method.
    add("wrong-function-name", event_body(ev(real_name, real_size)), function="NoSuchFunction",
        expect=404, log="no function")
    add("function-name-traversal", event_body(ev(real_name, real_size)), function="..%2f..%2fStatus",
        expect=404, log=None)
    add("get-instead-of-post", b"", function="BlobCreated", method="GET", expect=405, log=None)
    # Events the handler must refuse or skip (200: a retry cannot change them).
    add("other-account", event_body(ev(real_name, real_size, account="evilaccount")), log="refused")
    add("other-container", event_body(ev(real_name, real_size,
        subject=f"/blobServices/default/containers/other/blobs/{real_name}")), log="refused")
    add("outside-prefix", event_body(ev(f"elsewhere/{base}")), log="refused")
    add("prefix-lookalike", event_body(ev(f"feed2/{folder.split('/', 1)[-1]}/{base}")), log="refused")
    add("traversal-dotdot", event_body(ev("feed/../x")), log="refused")
    add("traversal-dotdot-into-target", event_body(ev(f"feed/../delta/{base}")), log="refused")
    add("traversal-percent-lower", event_body(ev(f"feed/%2e%2e/delta/{base}")), log="refused")
    add("traversal-percent-upper", event_body(ev(f"feed/%2E%2E/%2E%2E/{base}")), log="refused")
    add("backslash", event_body(ev(f"feed\\..\\{base}")), log="refused")
    add("control-character", event_body(ev(f"feed/{folder.split('/', 1)[-1]}/\u0000{base}")), log="refused")
    add("not-a-changefeed-file", event_body(ev(f"{folder}/notes.txt")), log="refused")
    add("uppercase-session-id", event_body(ev(f"{folder}/{base.replace(session, session.upper())}")),
        log="refused")
    add("subject-1mib", event_body(ev(real_name, subject="/blobServices/default/containers/"
                                                         f"{container}/blobs/feed/" + "Q" * (1 << 20))),
        log="refused", filler="Q")
    near = "feed/../" + "Q" * (MAX_SUBJECT_BYTES - 60 - len(container))
    add("subject-near-limit-traversal", event_body(ev(near)), log="refused", filler="Q")
    add("id-1mib", event_body(ev(real_name, id="Q" * (1 << 20))), log="refused", filler="Q")
    add("url-1mib-other-account", event_body(ev(real_name, account="evilaccount",
        data={"api": "PutBlockList", "contentLength": 1, "url": "https://evilaccount.blob.core.windows.net/"
              + container + "/" + "Q" * (1 << 20)})), log="refused", filler="Q")
    add("no-id", event_body({k: v for k, v in ev(real_name).items() if k != "id"}), log="refused")
    add("subject-not-a-string", event_body(ev(real_name, subject=12345)), log="refused")
    # Skipped, not refused: Event Grid's handshake, other event types, incomplete or copied blobs.
    add("subscription-validation", event_body(ev(real_name, event_type="Microsoft.EventGrid.SubscriptionValidationEvent",
        data={"validationCode": "x", "validationUrl": "https://x"})), log="skipped")
    add("blob-deleted", event_body(ev(real_name, real_size, event_type="Microsoft.Storage.BlobDeleted",
                                      api="DeleteBlob")), log="skipped")
    add("copy-blob", event_body(ev(real_name, real_size, api="CopyBlob")), log="skipped")
    # Our own writes.
    add("own-delta-log-write", event_body(ev("delta/usertable/_delta_log/00000000000000000000.json")),
        log="own write")
    add("own-buffer-write", event_body(ev(f"delta/_crdb_delta/buffer/{real_name}")), log="own write")
    add("delta-log-below-feed", event_body(ev("feed/_delta_log/00000000000000000001.json")), log="own write")
    # Events for blobs that do not exist: buffered (200), dropped by the next apply.
    ghost = f"{folder}/{ts33}-{session}-1-2-00000000-ghost-1.ndjson"
    add("phantom-table-file", event_body(ev(ghost, 100)), log="buffered", phantom="ghost")
    add("phantom-resolved-early", event_body(ev(f"{folder}/{early}.RESOLVED", 40)), log="applied up to")
    # A batch: a foreign, a refused and a phantom event with one body.
    add("batch-mixed", event_body([ev(real_name, real_size, account="evilaccount"), ev("feed/../y"),
                                   ev(f"{folder}/{ts33}-{session}-1-2-00000001-ghost2-1.ndjson", 5)]),
        log="buffered", phantom="ghost2")
    return cases


def part_hostile(ctx) -> list[dict]:
    results = []
    root = ctx.workdir / "hostile"
    root.mkdir(parents=True, exist_ok=True)
    az = Azurite(root / "azurite.log")
    setup = Case("hostile", "setup", ctx.workdir, ctx.bin)
    try:
        az.start()
        os.environ["AZURITE_BLOB_STORAGE_URL"] = az.base
        setup.commands.append(shlex.join(az.argv(az.port)) + " &")
        container = f"hostile{os.getpid()}"
        az.create_container(container)
        setup.note(f"create container {container} (Shared Key, Azurite's well-known dev key)")
        truth = setup.dir / "truth"
        simulate_to_azure(setup, az, container, truth, ctx.seed)
        handler_config(truth, setup.dir / "config.json")
        blobs = az.list_blobs(container, "feed/")
        serve = Serve(setup, az, container, setup.dir / "config.json", setup.dir / "serve.log")
    except Exception as e:
        setup.fail(f"setup: {type(e).__name__}: {e}")
        az.stop()
        results.append(setup.result())
        ctx.progress(results[-1])
        return results
    setup.figures = {"blobs": len(blobs), "resolveds": sum(b[0].endswith(".RESOLVED") for b in blobs),
                     "azurite_port": az.port, "serve_port": serve.port}
    try:
        for c in hostile_cases(container, blobs):
            case = Case("hostile", c["name"], ctx.workdir, ctx.bin)
            body_file = case.dir / "body.bin"
            body_file.write_bytes(c["body"])
            case.commands = list(setup.commands)
            method = c.get("method", "POST")
            chunked = c.get("chunked", True)
            case.commands.append(
                f"curl -sS -X {method} --data-binary @{shlex.quote(str(body_file))} "
                + ("-H 'Transfer-Encoding: chunked' " if chunked else "")
                + f"-H 'Content-Type: application/json' http://127.0.0.1:{serve.port}/{c['function']}")
            offset = serve.log_size()
            r = serve.post(c["function"], c["body"], method=method, chunked=chunked, timeout=120)
            time.sleep(0.05)
            log = serve.log_since(offset)
            alive = serve.alive()
            st, status = status_of(serve) if alive else (Posted(None, "", "handler dead"), None)
            f = {"function": c["function"], "bytes": len(c["body"]), "status": r.status,
                 "expected": c["expect"], "error": r.error, "seconds": round(r.seconds, 3),
                 "reply_logs": r.logs()[:600], "reply_bytes": len(r.body), "log_bytes": len(log),
                 "alive": alive, "status_after": st.status}
            if r.status != c["expect"]:
                case.fail(f"{r.describe()}, expected HTTP {c['expect']}: {r.body[:400]}")
            if c["log"] and c["log"] not in r.logs():
                case.fail(f"reply Logs lack {c['log']!r}: {r.logs()[:400]}")
            if not alive:
                case.fail(f"the handler died: exit {serve.proc.returncode}; log: {log[-1500:]}")
            elif st.status != 200 or status is None:
                case.fail(f"Status after the case: {st.describe()} {st.body[:300]}")
            if c["filler"]:
                f["subject_echo_reply"] = longest_run(r.body, c["filler"])
                f["subject_echo_log"] = longest_run(log, c["filler"])
                f["subject_echo_reply_total"] = r.body.count(c["filler"])
                f["subject_echo_log_total"] = log.count(c["filler"])
                for where in ("reply", "log"):
                    if f[f"subject_echo_{where}"] > MAX_SUBJECT_BYTES:
                        case.fail(f"the {where} repeats {f[f'subject_echo_{where}']} bytes of the subject")
            if c.get("phantom") and status is not None:
                f["phantom_buffered"] = (status["tables"].get(c["phantom"]) or {}).get("buffered_files")
            case.figures = f
            results.append(case.result())
            ctx.progress(results[-1])
        try:
            results.append(hostile_convergence(ctx, setup, az, serve, container, blobs, truth))
        except Exception as e:
            results.append({"part": "hostile", "case": "real-events-then-convergence", "ok": False,
                            "error": True, "problems": [f"script error: {type(e).__name__}: {e}",
                                                        traceback.format_exc()[-1500:]],
                            "figures": {"alive": serve.alive()}, "seconds": 0, "dir": str(setup.dir),
                            "commands": setup.commands})
        ctx.progress(results[-1])
    finally:
        serve.stop()
        az.stop()
    return results


def hostile_convergence(ctx, setup: Case, az: Azurite, serve: Serve, container: str,
                        blobs: list, truth: Path) -> dict:
    """After the hostile invocations: the real events, forward then reversed and each twice, a
    stray `2099…RESOLVED` uploaded for real, one more phantom, a CatchUp; then Status and the
    tables against the truth."""
    case = Case("hostile", "real-events-then-convergence", ctx.workdir, ctx.bin)
    case.commands = list(setup.commands)
    resolved = [b for b in blobs if b[0].endswith(".RESOLVED")]
    half = blobs.index(resolved[len(resolved) // 2]) + 1
    deliveries = blobs[:half] + list(reversed(blobs[half:]))
    case.note(f"post BlobCreated for the {len(blobs)} feed blobs: the first {half} in name order, "
              "the rest in reverse order, each twice (as `crdb-delta pump --once --duplicate`)")
    statuses: Counter = Counter()
    problems = 0
    for name, size in deliveries:
        for _ in range(2):
            r = serve.post("BlobCreated", event_body(blob_event(name, size, container)))
            statuses[r.status] += 1
            if r.status != 200 and problems < 3:
                problems += 1
                case.fail(f"real event {name}: {r.describe()} {r.body[:300]}")
    # A stray RESOLVED far in the future, uploaded for real, and its event.
    last = resolved[-1][0]
    folder, fname = last.rsplit("/", 1)
    day = folder.rsplit("/", 1)[-1]
    stray = f"{folder.rsplit('/', 1)[0]}/2099{day[4:]}/2099{fname[4:]}"
    stray_hlc = o.hlc_of("2099" + fname[4:33])
    az.put_blob(container, stray, json.dumps({"resolved": stray_hlc}).encode())
    case.note(f"upload {stray} = {{\"resolved\": \"{stray_hlc}\"}} and post its BlobCreated event")
    r = serve.post("BlobCreated", event_body(blob_event(stray, 40, container)))
    statuses[r.status] += 1
    stray_logs = r.logs()
    if r.status != 200:
        case.fail(f"stray 2099 RESOLVED: {r.describe()} {r.body[:300]}")
    if "REFUSED" not in stray_logs:
        case.fail(f"stray 2099 RESOLVED not reported REFUSED: {stray_logs[:400]}")
    ghost = f"{folder}/{fname[:33]}-0123456789abcdef-1-2-00000000-ghost3-1.ndjson"
    r = serve.post("BlobCreated", event_body(blob_event(ghost, 10, container)))
    statuses[r.status] += 1
    case.note(f"post a BlobCreated event for {ghost} (no such blob), then a CatchUp")
    r = serve.post("CatchUp", CATCHUP_BODY)
    statuses[r.status] += 1
    if r.status != 200:
        case.fail(f"CatchUp: {r.describe()} {r.body[:300]}")
    st, status = status_of(serve)
    _, defs = o.load_truth(truth)
    last_hlc = o.hlc_of(steps_of(truth)[-1])
    tables = (status or {}).get("tables", {})
    phantoms = sorted(set(tables) - set(defs))
    if status is None:
        case.fail(f"Status: {st.describe()} {st.body[:300]}")
    for t in defs:
        s = tables.get(t) or {}
        if s.get("resolved") != last_hlc:
            case.fail(f"Status: {t} at {s.get('resolved')}, not the last real RESOLVED {last_hlc}")
        if s.get("buffered_files"):
            case.fail(f"Status: {t} still has {s.get('buffered_files')} buffered file(s)")
    if phantoms:
        case.fail(f"Status lists tables that do not exist after a CatchUp: {phantoms}")
    if (status or {}).get("resolved_waiting"):
        case.fail(f"Status: RESOLVEDs still waiting: {status['resolved_waiting']}")
    table_figs = check_azure_final(case, truth, container)
    lost, unexpected, dup = lost_and_unexpected(table_figs)
    if not serve.alive():
        case.fail(f"the handler died: exit {serve.proc.returncode}")
    case.figures = {"deliveries": sum(statuses.values()), "statuses": {str(k): v for k, v in statuses.items()},
                    "stray_reply": stray_logs[:400], "status_tables": {t: {k: tables[t].get(k) for k in
                    ("resolved", "buffered_files", "delta_version", "stopped")} for t in tables},
                    "phantom_tables": phantoms, "last_error": ((status or {}).get("last_error") or {}).get("message", "")[:300],
                    "alive": serve.alive(), "rows_lost": lost, "rows_unexpected": unexpected,
                    "duplicate_keys": dup, "tables": table_figs}
    return case.result()


# ---------------------------------------------------------------------------------------------
# Part 6: storage outages


# Seconds from the start of the RESOLVED's post to the stop of Azurite (plus 0-0.1 s of seeded
# jitter), and how long Azurite stays down. Applying this feed's last RESOLVED takes about 0.8 to
# 1.4 s on a 2-core machine without an outage, so every delay falls inside it; a round whose reply
# came before the stop is counted (`answered_before_kill`), as it did not test an outage.
OUTAGE_DELAYS = [0.0, 0.1, 0.25, 0.45, 0.7]
OUTAGE_DOWNTIME = [2.0, 6.0, 2.0, 6.0, 3.0]


def part_outages(ctx) -> list[dict]:
    results = []
    root = ctx.workdir / "outages"
    root.mkdir(parents=True, exist_ok=True)
    az = Azurite(root / "azurite.log", location=root / "azurite-data")
    (root / "azurite-data").mkdir(exist_ok=True)
    try:
        az.start()
        os.environ["AZURITE_BLOB_STORAGE_URL"] = az.base
        for rnd in range(ctx.preset.get("outage_rounds", 5)):
            try:
                results.append(outage_case(ctx, az, rnd))
            except Exception as e:
                results.append({"part": "outages", "case": f"round-{rnd}", "ok": False, "error": True,
                                "problems": [f"script error: {type(e).__name__}: {e}",
                                             traceback.format_exc()[-1500:]],
                                "figures": {}, "seconds": 0, "dir": "", "commands": []})
                if az.proc is None:
                    az.start(az.port)
            ctx.progress(results[-1])
    finally:
        az.stop()
    return results


def outage_case(ctx, az: Azurite, rnd: int) -> dict:
    import random
    rng = random.Random(ctx.seed * 1000 + rnd)
    delay = OUTAGE_DELAYS[rnd % len(OUTAGE_DELAYS)] + rng.uniform(0, 0.1)
    down = OUTAGE_DOWNTIME[rnd % len(OUTAGE_DOWNTIME)]
    case = Case("outages", f"round-{rnd}-kill-after-{delay:.2f}s-down-{down:.0f}s", ctx.workdir, ctx.bin)
    case.commands.append(shlex.join(az.argv(az.port)) + " &")
    container = f"outage{os.getpid()}r{rnd}"
    az.create_container(container)
    case.note(f"create container {container} (Shared Key, Azurite's well-known dev key)")
    truth = case.dir / "truth"
    simulate_to_azure(case, az, container, truth, ctx.seed + rnd)
    handler_config(truth, case.dir / "config.json")
    blobs = az.list_blobs(container, "feed/")
    resolved = [b for b in blobs if b[0].endswith(".RESOLVED")]
    serve = Serve(case, az, container, case.dir / "config.json", case.dir / "serve.log")
    f: dict = {"round": rnd, "delay_s": round(delay, 3), "downtime_s": down, "blobs": len(blobs)}
    try:
        # Every data file, and the first RESOLVEDs: applied normally.
        mid = resolved[len(resolved) // 2 - 1]
        pre = [b for b in blobs if not b[0].endswith(".RESOLVED") or b[0] <= mid[0]]
        for name, size in pre:
            r = serve.post("BlobCreated", event_body(blob_event(name, size, container)))
            if r.status != 200:
                case.fail(f"before the outage, {name}: {r.describe()} {r.body[:300]}")
        case.note(f"post BlobCreated for every data file and the RESOLVEDs up to {mid[0]}")
        # The last RESOLVED, with Azurite stopped `delay` s after the post starts.
        last = resolved[-1]
        box: dict = {}
        th = threading.Thread(target=lambda: box.setdefault(
            "r", serve.post("BlobCreated", event_body(blob_event(last[0], last[1], container)), timeout=400)))
        t0 = time.monotonic()
        th.start()
        time.sleep(delay)
        answered_before_kill = not th.is_alive()
        how = az.stop(ctx.outage_signal)
        killed_at = time.monotonic() - t0
        case.note(f"post BlobCreated for {last[0]}; after {delay:.2f} s stop Azurite ({how}); "
                  f"{down:.0f} s later restart it on port {az.port} with the same --location")
        time.sleep(down)
        az.start(az.port)
        th.join(timeout=420)
        r: Posted = box.get("r") or Posted(None, "", "no reply within 420 s")
        f.update({"azurite_stop": how, "killed_at_s": round(killed_at, 3),
                  "answered_before_kill": answered_before_kill, "reply": r.describe(),
                  "reply_seconds": round(r.seconds, 2), "reply_logs": r.logs()[:500]})
        if r.status is not None and r.status != 200 and not 500 <= r.status < 600:
            case.fail(f"the interrupted RESOLVED answered {r.describe()}: neither 200 nor retryable 5xx")
        if r.status == 200:
            # Never 200 with data missing: everything up to the last RESOLVED must be there now.
            early = Case("outages", f"round-{rnd}-probe", ctx.workdir, ctx.bin)
            figs = check_azure_final(early, truth, container)
            shutil.rmtree(early.dir, ignore_errors=True)
            f["at_200"] = {"missing": sum(m["missing"] for m in figs.values()),
                           "unexpected": sum(m["unexpected"] for m in figs.values())}
            for p in early.problems:
                case.fail(f"answered 200 but: {p}")
        if not serve.alive():
            case.fail(f"the handler died during the outage: exit {serve.proc.returncode}")
            return finish_outage(case, f, serve, truth, container)
        # Redelivery, as Event Grid / the queue would: every event again, the RESOLVED until 200.
        redeliveries: Counter = Counter()
        for name, size in blobs:
            for attempt in range(8):
                rr = serve.post("BlobCreated", event_body(blob_event(name, size, container)))
                redeliveries[rr.status] += 1
                if rr.status == 200:
                    break
                time.sleep(1)
            else:
                case.fail(f"redelivery of {name}: still {rr.describe()} after 8 attempts: {rr.body[:300]}")
        case.note("redeliver BlobCreated for every feed blob, each until HTTP 200 (8 attempts, 1 s apart)")
        f["redelivery_statuses"] = {str(k): v for k, v in redeliveries.items()}
        c = serve.post("CatchUp", CATCHUP_BODY)
        if c.status != 200:
            case.fail(f"CatchUp: {c.describe()} {c.body[:300]}")
        return finish_outage(case, f, serve, truth, container)
    finally:
        serve.stop()


def finish_outage(case: Case, f: dict, serve: Serve, truth: Path, container: str) -> dict:
    if serve.alive():
        st, status = status_of(serve)
        last_hlc = o.hlc_of(steps_of(truth)[-1])
        tables = (status or {}).get("tables", {})
        _, defs = o.load_truth(truth)
        for t in defs:
            s = tables.get(t) or {}
            if s.get("resolved") != last_hlc:
                case.fail(f"Status: {t} at {s.get('resolved')}, not {last_hlc}")
        f["status_tables"] = {t: {k: tables[t].get(k) for k in ("resolved", "buffered_files", "delta_version")}
                              for t in tables}
    table_figs = check_azure_final(case, truth, container)
    f["rows_lost"], f["rows_unexpected"], f["duplicate_keys"] = lost_and_unexpected(table_figs)
    f["alive"] = serve.alive()
    f["tables"] = table_figs
    case.figures = f
    return case.result()


# ---------------------------------------------------------------------------------------------
# Driver


class Ctx:
    def __init__(self, args, preset: dict):
        self.bin = Path(args.bin).resolve()
        self.workdir = Path(args.workdir).resolve()
        self.seed = args.seed
        self.jobs = args.jobs
        self.preset = preset
        self.keep = args.keep
        self.feeds = Feeds(self.workdir, self.bin)
        self.print_lock = threading.Lock()
        self.part = ""
        self.outage_signal = getattr(signal, "SIG" + getattr(args, "outage_signal", "TERM"))

    def progress(self, r: dict) -> None:
        with self.print_lock:
            mark = "ok  " if r["ok"] else "FAIL"
            print(f"  {mark} {r['part']}/{r['case']} ({r['seconds']} s)"
                  + ("" if r["ok"] else "\n       " + "\n       ".join(p[:400] for p in r["problems"][:4])),
                  flush=True)
        if r["ok"] and not self.keep:
            shutil.rmtree(r["dir"], ignore_errors=True)

    def map(self, fn, jobs, jobs_override: int | None = None) -> list[dict]:
        out = []
        part = self.part

        def guarded(j):
            try:
                r = fn(j)
            except Exception as e:
                r = {"part": part, "case": repr(j), "ok": False, "error": True,
                     "problems": [f"script error: {type(e).__name__}: {e}",
                                  traceback.format_exc()[-1500:]],
                     "figures": {}, "seconds": 0, "dir": "", "commands": []}
            self.progress(r)
            return r

        with cf.ThreadPoolExecutor(max_workers=jobs_override or self.jobs) as ex:
            for r in ex.map(guarded, jobs):
                out.append(r)
        return out


def summarize(part: str, results: list[dict]) -> dict:
    ok = sum(r["ok"] for r in results)
    f = [r["figures"] for r in results]
    s = {"cases": len(results), "ok": ok, "failed": len(results) - ok,
         "rows_lost": sum(x.get("rows_lost", 0) or 0 for x in f),
         "rows_unexpected": sum(x.get("rows_unexpected", 0) or 0 for x in f),
         "duplicate_keys": sum(x.get("duplicate_keys", 0) or 0 for x in f)}
    if part == "kills":
        s["runs"] = sum(x.get("runs", 0) for x in f)
        s["kills"] = sum(x.get("kills", 0) for x in f)
        s["time_travel_versions_checked"] = sum((x.get("time_travel") or {}).get("checked", 0) for x in f)
    elif part == "compactions":
        paused = [x for x in f if "point" in x]
        bg = [x for x in f if "round" in x]
        s["paused_cases"] = len(paused)
        s["paused_compactions_landed"] = sum(x.get("landed", 0) for x in paused)
        s["paused_vacuums"] = sum(1 for x in paused if "vacuumed_files" in x)
        s["background_rounds"] = len(bg)
        s["background_compactions_landed"] = sum(x.get("landed", 0) for x in bg)
        s["background_landed_during_sync"] = sum(x.get("landed_during_sync", 0) for x in bg)
        s["background_compactor_errors"] = sum(x.get("errors", 0) for x in bg)
        s["background_sync_runs"] = sum(x.get("sync_runs", 0) for x in bg)
        s["background_sync_gave_up"] = sum(x.get("gave_up", 0) for x in bg)
        s["background_vacuums"] = sum(x.get("vacuums", 0) for x in bg)
        s["sync_replans"] = sum(x.get("replans", 0) for x in f)
        s["sync_replans_concurrent_logged"] = sum(x.get("replans_logged", 0) for x in f)
        s["paused_replanned_cases"] = sum(1 for x in paused if x.get("replans"))
        s["background_steps"] = sum(x.get("steps", 0) for x in bg)
        s["background_replan_only_runs"] = sum(x.get("replan_only_runs", 0) for x in bg)
        s["double_removes"] = sum(x.get("double_removes", 0) for x in f)
    elif part == "bad_inputs":
        s["as_specified"] = ok
        s["quarantined_as_expected"] = sum(1 for r in results if r["figures"].get("quarantined")
                                           and not any("quarantine" in p for p in r["problems"]))
    elif part == "hostile":
        inv = [r for r in results if r["case"] not in ("real-events-then-convergence", "setup")]
        s["invocations"] = len(inv)
        s["as_expected"] = sum(r["ok"] for r in inv)
        s["statuses"] = dict(sorted(Counter(str(r["figures"].get("status")) for r in inv).items()))
        s["crashes"] = sum(1 for r in results if r["figures"].get("alive") is False)
        s["max_subject_echo"] = max([max(r["figures"].get("subject_echo_reply", 0), r["figures"].get("subject_echo_log", 0))
                                     for r in inv] or [0])
        s["max_subject_echo_total"] = max([max(r["figures"].get("subject_echo_reply_total", 0), r["figures"].get("subject_echo_log_total", 0))
                                           for r in inv] or [0])
        conv = [r for r in results if r["case"] == "real-events-then-convergence"]
        if conv:
            s["real_deliveries"] = conv[0]["figures"].get("deliveries")
            s["real_statuses"] = conv[0]["figures"].get("statuses")
            s["phantom_tables"] = conv[0]["figures"].get("phantom_tables")
    elif part == "outages":
        s["rounds"] = len(results)
        s["interrupted_replies"] = dict(sorted(Counter(x.get("reply", "?") for x in f).items()))
        s["answered_before_kill"] = sum(1 for x in f if x.get("answered_before_kill"))
        s["crashes"] = sum(1 for x in f if x.get("alive") is False)
        red: Counter = Counter()
        for x in f:
            red.update(x.get("redelivery_statuses") or {})
        s["redelivery_statuses"] = dict(sorted(red.items()))
    elif part == "races":
        s["sync_processes"] = 2 * len(results)
        s["sync_replans"] = sum(x.get("replans", 0) for x in f)
        s["sync_replans_concurrent_logged"] = sum(x.get("replans_logged", 0) for x in f)
        s["both_committed"] = sum(1 for x in f if len(x.get("commits_per_process") or []) == 2
                                  and all(x["commits_per_process"]))
    return s


def part_control(ctx) -> list[dict]:
    """Negative controls: the oracle must see rows lost and rows doubled when they are there,
    or a clean campaign would prove nothing. A synced table loses its last commit (update_delete:
    rows missing and stale ones unexpected); an append_only table gets some of its own rows
    appended again by Python `deltalake` (unexpected duplicates)."""
    from deltalake import write_deltalake

    out = []
    for mode, damage in [("update_delete", "drop-last-commit"), ("append_only", "append-copies")]:
        case = Case("control", f"{mode}-{damage}", ctx.workdir, ctx.bin)
        feed, sim = ctx.feeds.get(f"std-json-{ctx.seed}-{ctx.preset['kill_windows']}",
                                  standard_feed_args("json", ctx.seed, ctx.preset["kill_windows"]))
        case.commands.append(shlex.join(sim))
        target = case.dir / "delta"
        r = case.run(*sync_args(feed / "changefeed", target, feed / "truth", mode, "--max-window-bytes", "60000"))
        clean = Case("control", f"{mode}-clean", ctx.workdir, ctx.bin)
        before = check_final(clean, feed, target, mode) if r.returncode == 0 else {}
        shutil.rmtree(clean.dir, ignore_errors=True)
        uri = str(target / "usertable")
        if damage == "drop-last-commit":
            last = sorted((target / "usertable" / "_delta_log").glob("*.json"))[-1]
            last.unlink()
            case.note(f"rm {last}")
        else:
            rows = DeltaTable(uri).to_pyarrow_table().slice(0, 7)
            write_deltalake(uri, rows, mode="append")
            case.note(f"python: write_deltalake({uri!r}, <its first 7 rows>, mode='append')")
        probe = Case("control", f"{mode}-probe", ctx.workdir, ctx.bin)
        after = check_final(probe, feed, target, mode, tables=["usertable"])
        shutil.rmtree(probe.dir, ignore_errors=True)
        m = after["usertable"]
        case.figures = {"mode": mode, "damage": damage, "clean_problems": clean.problems,
                        "detected_missing": m["missing"], "detected_unexpected": m["unexpected"],
                        "detected_duplicate_keys": m["duplicate_keys"]}
        if r.returncode != 0 or clean.problems:
            case.fail(f"the undamaged table did not match: {describe(r)} {clean.problems[:2]}")
        if damage == "append-copies" and m["unexpected"] != 7:
            case.fail(f"7 copies appended, the oracle saw {m['unexpected']} unexpected rows")
        if damage == "drop-last-commit" and not (m["missing"] and m["unexpected"]):
            case.fail(f"last commit dropped, the oracle saw {m['missing']} missing, {m['unexpected']} unexpected")
        out.append(case.result())
        ctx.progress(out[-1])
    return out


PARTS = {"control": part_control, "kills": part_kills, "compactions": part_compactions, "bad_inputs": part_bad_inputs,
         "races": part_races, "hostile": part_hostile, "outages": part_outages}


def main() -> int:
    global AZURITE_BIN
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="the quick preset (default)")
    g.add_argument("--full", action="store_true", help="the full preset")
    ap.add_argument("--kills", action="store_true")
    ap.add_argument("--compactions", action="store_true")
    ap.add_argument("--bad-inputs", action="store_true")
    ap.add_argument("--races", action="store_true")
    ap.add_argument("--hostile", action="store_true", help="hostile invocations to `serve` on Azurite")
    ap.add_argument("--outages", action="store_true", help="Azurite stopped while `serve` applies")
    ap.add_argument("--outage-signal", choices=["TERM", "KILL"], default="TERM",
                    help="how --outages stops Azurite (default TERM: it closes and saves its "
                         "metadata; KILL loses Azurite's own unsaved metadata, up to 5 s of writes)")
    ap.add_argument("--azurite", default=str(AZURITE_BIN),
                    help="azurite-blob executable (default .tools/node/node_modules/.bin/azurite-blob)")
    ap.add_argument("--seed", type=int, default=7, help="base simulator seed (default 7)")
    ap.add_argument("--jobs", type=int, default=2, help="cases in parallel (default 2)")
    ap.add_argument("--bin", default=os.environ.get("CRDB_DELTA_BIN", str(ROOT / "target/debug/crdb-delta")))
    ap.add_argument("--workdir", default="/tmp/crdb-delta-reliability")
    ap.add_argument("--out", help="write the JSON results here")
    ap.add_argument("--keep", action="store_true", help="keep the folders of passing cases too")
    args = ap.parse_args()
    preset_name = "full" if args.full else "quick"
    preset = PRESETS[preset_name]
    chosen = ["control"] + ([p for p in PARTS if p != "control" and getattr(args, p)]
                            or [p for p in PARTS if p != "control"])
    if not Path(args.bin).exists():
        print(f"no binary at {args.bin} (cargo build --bin crdb-delta)", file=sys.stderr)
        return 2
    AZURITE_BIN = Path(args.azurite)
    if any(p in chosen for p in ("hostile", "outages")) and not AZURITE_BIN.exists():
        print(f"no Azurite at {AZURITE_BIN} (scripts/test installs it; or --azurite PATH)", file=sys.stderr)
        return 2
    ctx = Ctx(args, preset)
    marker = ctx.workdir / ".crdb-delta-reliability"
    if ctx.workdir.exists() and any(ctx.workdir.iterdir()) and not marker.exists():
        print(f"{ctx.workdir} exists and is not a workdir of this script: choose another --workdir",
              file=sys.stderr)
        return 2
    shutil.rmtree(ctx.workdir, ignore_errors=True)
    ctx.workdir.mkdir(parents=True)
    marker.write_text("")
    started = time.monotonic()
    version = run_process([str(ctx.bin), "--version"], None, 30).stdout.strip()
    sha = hashlib.sha256(ctx.bin.read_bytes()).hexdigest()[:16]
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "core", "handler"],
                                capture_output=True, text=True).stdout.strip())
    print(f"crdb-delta reliability campaign: preset {preset_name}, seed {args.seed}, parts "
          f"{', '.join(chosen)}, {args.jobs} jobs, {version} (binary sha256 {sha}, git {commit}{' + uncommitted changes' if dirty else ''})",
          flush=True)
    results: dict[str, list[dict]] = {}
    timings = {}
    for part in chosen:
        t0 = time.monotonic()
        print(f"\n== {part}", flush=True)
        ctx.part = part
        results[part] = PARTS[part](ctx)
        timings[part] = round(time.monotonic() - t0, 1)
    summary = {p: dict(summarize(p, r), seconds=timings[p]) for p, r in results.items()}
    total = round(time.monotonic() - started, 1)

    print("\n== summary")
    print(f"{'part':<12} {'cases':>6} {'ok':>5} {'failed':>7} {'lost':>6} {'unexp':>6} {'dupkey':>7} {'s':>7}  notes")
    for p, s in summary.items():
        notes = {k: v for k, v in s.items() if k not in
                 ("cases", "ok", "failed", "rows_lost", "rows_unexpected", "duplicate_keys", "seconds")}
        print(f"{p:<12} {s['cases']:>6} {s['ok']:>5} {s['failed']:>7} {s['rows_lost']:>6} "
              f"{s['rows_unexpected']:>6} {s['duplicate_keys']:>7} {s['seconds']:>7}  "
              + ", ".join(f"{k}={v}" for k, v in notes.items()))
    failed = [r for rs in results.values() for r in rs if not r["ok"]]
    if failed:
        print(f"\n== {len(failed)} failed case(s) (folders kept under {ctx.workdir})")
        for r in failed:
            print(f"- {r['part']}/{r['case']}:")
            for p in r["problems"][:6]:
                print(f"    {p[:600]}")
            print("  reproduce:")
            for c in r["commands"]:
                print(f"    {c}")
    print(f"\ntotal {total} s")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "preset": preset_name, "preset_settings": preset, "seed": args.seed, "jobs": args.jobs,
            "binary": str(ctx.bin), "binary_sha256_16": sha, "version": version, "git": commit, "uncommitted_changes": dirty,
            "seconds": total, "summary": summary, "results": results,
        }, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
