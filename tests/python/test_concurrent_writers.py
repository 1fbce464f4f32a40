"""Other writers committing between our plan and our commit: OPTIMIZE, VACUUM, a foreign append.

Each test stops `crdb-delta sync` at a pause point (handler/faults.rs: `CRDB_DELTA_PAUSE`), runs
the other writer with Python `deltalake` (delta-rs, not our writer) on the same table, resumes,
and checks the result against the simulator's ground truth: no row lost, none doubled.
delta-rs' own conflict checker ignores OPTIMIZE's `dataChange=false` removes, so without our
check the copy-on-write commit would land on top of the compaction and keep both copies.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, QueryBuilder, write_deltalake

import oracle as o

FOREIGN_KEY = 10**15


def simulate(bin_path: Path, root: Path) -> None:
    subprocess.run(
        [str(bin_path), "simulate", "--out", str(root / "changefeed"), "--truth", str(root / "truth"),
         "--format", "json", "--tables", "usertable", "--initial-rows", "1500", "--windows", "4",
         "--events-per-window", "300", "--duplicate-rate", "0.05"],
        check=True, capture_output=True, env=dict(os.environ, CRDB_DELTA_LOG="warn"),
    )


def steps(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "truth" / "usertable" / "state").iterdir())


def sync_args(bin_path: Path, root: Path, mode: str, *extra: str) -> list[str]:
    # Small files: every step leaves several, so a compaction has something to merge.
    return [str(bin_path), "sync", "--source", str(root / "changefeed"), "--target",
            str(root / "delta"), "--manifest", str(root / "truth" / "manifest.json"), "--mode",
            mode, "--target-file-size", "20000", "--json", *extra]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"sync ended ({proc.returncode}) before pausing:\n{err[-3000:]}")
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        time.sleep(0.02)


def compact(uri: str) -> None:
    before = len(DeltaTable(uri).file_uris())
    metrics = DeltaTable(uri).optimize.compact()
    assert before > 1 and metrics["numFilesRemoved"] == before, (before, metrics)


def compact_and_vacuum(uri: str) -> None:
    compact(uri)
    removed = DeltaTable(uri).vacuum(retention_hours=0, enforce_retention_duration=False,
                                     dry_run=False)
    assert removed, "VACUUM deleted nothing"


def foreign_append(uri: str) -> None:
    dt = DeltaTable(uri)
    # The SQL reader: `to_pyarrow_table` refuses deletion-vector tables.
    row = pa.table(QueryBuilder().register("t", dt).execute("select * from t limit 1"))
    i = row.schema.get_field_index("ycsb_key")
    row = row.set_column(i, row.schema.field(i), pa.array([FOREIGN_KEY], row.schema.field(i).type))
    write_deltalake(uri, row, mode="append")


OTHER_WRITERS = {"optimize": compact, "optimize+vacuum": compact_and_vacuum,
                 "append": foreign_append}


def check(root: Path, mode: str, writer: str) -> None:
    truth = root / "truth"
    _, defs = o.load_truth(truth)
    actual = o.read_table(str(root / "delta" / "usertable"))
    foreign = [r for r in actual if r["ycsb_key"] == FOREIGN_KEY]
    # The foreign writer's row is kept, once (update_delete/scd2 never saw its key).
    assert len(foreign) == (1 if writer == "append" else 0), foreign
    actual = [r for r in actual if r["ycsb_key"] != FOREIGN_KEY]
    cols = o.data_columns(actual)
    if mode == "update_delete":
        o.compare_rows(actual, o.expect_update_delete(truth, "usertable", steps(root)[-1]), cols,
                       "usertable")
    elif mode == "scd2":
        o.compare_rows(actual, o.expect_scd2(truth, "usertable", defs),
                       cols + ["__crdb_start_hlc", "__crdb_end_hlc"], "usertable versions")
    else:
        for r in actual:
            r["__crdb_op_is_delete"] = r["__crdb_op"] == "d"
        o.compare_rows(actual, o.expect_append_only(truth, "usertable", defs),
                       cols + ["__crdb_hlc", "__crdb_op_is_delete"], "usertable history")


# append_only reads no target files: it has no `before-fetch` point.
CASES = [(m, w, p) for m in ["update_delete", "scd2", "append_only"] for w in OTHER_WRITERS
         for p in ["before-commit", "before-fetch"] if not (m == "append_only" and p == "before-fetch")]


@pytest.mark.parametrize("mode,writer,point", CASES)
def test_other_writer_between_plan_and_commit(crdb_delta_bin, tmp_path, mode, writer, point):
    simulate(crdb_delta_bin, tmp_path)
    s = steps(tmp_path)
    env = dict(os.environ, CRDB_DELTA_LOG="warn")
    subprocess.run(sync_args(crdb_delta_bin, tmp_path, mode, "--until", o.hlc_of(s[1])),
                   check=True, capture_output=True, env=env)
    pause_dir = tmp_path / "pause"
    pause_dir.mkdir()
    proc = subprocess.Popen(
        sync_args(crdb_delta_bin, tmp_path, mode),
        env=dict(env, CRDB_DELTA_PAUSE=point, CRDB_DELTA_PAUSE_DIR=str(pause_dir)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wait_for(pause_dir / f"{point}.paused", proc)
    uri = str(tmp_path / "delta" / "usertable")
    OTHER_WRITERS[writer](uri)
    (pause_dir / f"{point}.resume").write_text("")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out)
    assert report["resolved"] == o.hlc_of(s[-1]), report
    check(tmp_path, mode, writer)
    # The log shows the other writer's commit followed by ours, never a commit of ours that
    # removes a file the other writer already removed.
    assert o.double_removes(tmp_path / "delta" / "usertable") == []
