"""`crdb-delta sync` checked by an independent reader against the simulator's ground truth.

Every test runs the real binary on real changefeed files (CockroachDB's exact layout, written by
`crdb-delta simulate`) and reads the Delta tables back with Python `deltalake` + pyarrow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

import oracle as o

TABLES = "usertable,orders,kitchen_sink"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def run(bin_path: Path, *args: str, env: dict | None = None, check: bool = True):
    full_env = dict(os.environ)
    full_env.setdefault("CRDB_DELTA_LOG", "warn")
    if env:
        full_env.update(env)
    p = subprocess.run([str(bin_path), *args], capture_output=True, text=True, env=full_env)
    if check and p.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def simulate(bin_path: Path, root: Path, fmt: str = "json", windows: int = 6, *extra: str,
             initial_rows: int = 60) -> Path:
    run(
        bin_path, "simulate", "--out", str(root / "changefeed"), "--truth", str(root / "truth"),
        "--format", fmt, "--tables", TABLES, "--initial-rows", str(initial_rows),
        "--windows", str(windows),
        "--events-per-window", "150", "--straddle", "0.25", "--duplicate-rate", "0.05",
        # ADD COLUMN (window 4, the default) and DROP COLUMN (window 5), both with backfills.
        "--drop-column-at", "5", *extra,
    )
    return root


def sync(bin_path: Path, root: Path, mode: str, *extra: str, env=None, check=True):
    return run(
        bin_path, "sync", "--source", str(root / "changefeed"), "--target", str(root / "delta"),
        "--manifest", str(root / "truth" / "manifest.json"), "--mode", mode, "--json", *extra,
        env=env, check=check,
    )


def resolved_steps(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "truth" / "usertable" / "state").iterdir())


def check_final(root: Path, mode: str, reader_options=None, uri=None):
    truth = root / "truth"
    _, defs = o.load_truth(truth)
    last = resolved_steps(root)[-1]
    for t in defs:
        actual = o.read_table(uri(t) if uri else str(root / "delta" / t), storage_options=reader_options)
        assert actual, f"{t}: empty table"
        cols = o.data_columns(actual)
        if mode == "update_delete":
            o.compare_rows(actual, o.expect_update_delete(truth, t, last), cols, f"{t} at {last}")
        elif mode == "append_only":
            for r in actual:
                r["__crdb_op_is_delete"] = r["__crdb_op"] == "d"
            o.compare_rows(
                actual, o.expect_append_only(truth, t, defs),
                cols + ["__crdb_hlc", "__crdb_op_is_delete"], f"{t} history",
            )
        else:
            o.compare_rows(
                actual, o.expect_scd2(truth, t, defs),
                cols + ["__crdb_start_hlc", "__crdb_end_hlc"], f"{t} versions",
            )


def check_time_travel(root: Path):
    """Every RESOLVED recorded in _crdb_delta_resolved: each table, read at the recorded version,
    equals the ground truth at that RESOLVED (update_delete)."""
    truth = root / "truth"
    _, defs = o.load_truth(truth)
    record = o.read_table(str(root / "delta" / "_crdb_delta_resolved"))
    by_resolved: dict[str, dict[str, int]] = {}
    for r in record:
        by_resolved.setdefault(r["resolved"], {})[r["table_name"]] = r["delta_version"]
    steps = {o.hlc_of(ts): ts for ts in resolved_steps(root)}
    assert by_resolved, "nothing recorded"
    for resolved, versions in by_resolved.items():
        assert set(versions) == set(defs), f"{resolved}: recorded tables {sorted(versions)}"
        ts33 = steps[resolved]
        for t, v in versions.items():
            actual = o.read_table(str(root / "delta" / t), version=v)
            o.compare_rows(
                actual, o.expect_update_delete(truth, t, ts33), o.data_columns(actual),
                f"{t} at version {v} (RESOLVED {resolved})",
            )
    return by_resolved


# append_only never supersedes a row: storage does not apply to it.
@pytest.mark.parametrize("fmt", ["json", "parquet"])
@pytest.mark.parametrize("mode,storage", [
    ("update_delete", "deletion_vectors"), ("update_delete", "copy_on_write"),
    ("append_only", "deletion_vectors"),
    ("scd2", "deletion_vectors"), ("scd2", "copy_on_write"),
])
def test_sync_matches_ground_truth(crdb_delta_bin, tmp_path, fmt, mode, storage):
    root = simulate(crdb_delta_bin, tmp_path, fmt)
    # A small window budget: the backlog is applied in several commits, through the merge and
    # the carried-over files.
    report = json.loads(
        sync(crdb_delta_bin, root, mode, "--max-window-bytes", "60000", "--min-slice-bytes", "20000",
             "--storage", storage).stdout
    )
    assert report["steps"] > 2, report
    check_final(root, mode)
    # The initial scan of the wider tables is larger than this window: applied in key slices.
    assert any(r["slice_commits"] > 0 for r in report["tables"].values()), report
    for t, r in report["tables"].items():
        assert r["commits"] == report["steps"] + r["slice_commits"], (t, r)
        assert r["duplicates"] > 0, f"{t}: the simulation duplicates messages"
    if mode == "update_delete":
        recorded = check_time_travel(root)
        assert len(recorded) == report["steps"]
    usertable = DeltaTable(str(root / "delta" / "usertable"))
    kitchen = DeltaTable(str(root / "delta" / "kitchen_sink"))
    # Checkpoints every 10 versions (Databricks' default), on data tables and on our record.
    for t in [usertable, DeltaTable(str(root / "delta" / "_crdb_delta_resolved"))]:
        assert t.metadata().configuration.get("delta.checkpointInterval") == "10", t.metadata()
    p, k = usertable.protocol(), kitchen.protocol()
    if mode != "append_only" and storage == "deletion_vectors":
        # Databricks' protocol for new tables (reader 3 / writer 7, deletionVectors), plus
        # timestampNtz where a column needs it; and rows really went into deletion vectors.
        assert (p.min_reader_version, p.min_writer_version) == (3, 7), p
        assert p.reader_features == ["deletionVectors"] == p.writer_features, p
        assert sorted(k.reader_features) == ["deletionVectors", "timestampNtz"], k
        assert sorted(k.writer_features) == ["deletionVectors", "timestampNtz"], k
        # In some version: small files are compacted as they pile up, so the last version
        # may hold none.
        for name in ("usertable", "kitchen_sink"):
            t = DeltaTable(str(root / "delta" / name))
            versions = range(t.version(), -1, -1)
            assert any(
                not all(d["selection_vector"])
                for v in versions
                for d in pa.table(DeltaTable(str(root / "delta" / name), version=v)
                                  .deletion_vectors()).to_pylist()
            ), f"{name}: no row in a deletion vector in any version"
    else:
        # Readable by Databricks Runtime 13.3+: plain (1, 2), or timestampNtz only where needed.
        assert (p.min_reader_version, p.min_writer_version) == (1, 2), p
        assert (k.min_reader_version, k.min_writer_version) == (3, 7), k
        assert k.reader_features == ["timestampNtz"] and k.writer_features == ["timestampNtz"], k


@pytest.mark.parametrize("fmt", ["json", "parquet"])
@pytest.mark.parametrize("storage", ["deletion_vectors", "copy_on_write"])
def test_scd2_ends_versions_from_the_changes_before(crdb_delta_bin, tmp_path, fmt, storage):
    """A changefeed WITH diff: scd2 ends a version from its change's `before`, reading only the
    key, end and start columns of the table's row. Changes without one (the schema changes'
    backfills here, as CockroachDB scans them) and column families (a `before` of one family)
    have their rows read whole. Either way the table equals the truth. Copy-on-write reads
    every touched row anyway and takes nothing from `before`."""
    root = simulate(crdb_delta_bin, tmp_path, fmt, 6, "--diff")
    # One step per RESOLVED; no small-file compaction, so touched files get deletion vectors.
    report = json.loads(sync(crdb_delta_bin, root, "scd2", "--commit-each-resolved",
                             "--rewrite-files-below", "0", "--storage", storage).stdout)
    check_final(root, "scd2")
    ended = {t: (r["versions_ended_from_before"], r["updated"]) for t, r in report["tables"].items()}
    if storage == "copy_on_write":
        assert all(n == 0 for n, _ in ended.values()), ended
    else:
        # usertable's schema changes backfill every row (before: null): those are read whole.
        assert 0 < ended["usertable"][0] < ended["usertable"][1], ended
        assert 0 < ended["kitchen_sink"][0] <= ended["kitchen_sink"][1], ended
        assert ended["orders"][0] <= ended["orders"][1], ended
        # From a process's second step on, rows are found through the key index, and their
        # end and start read at those rows only.
        assert all(r["table_files_indexed"] > 0 for r in report["tables"].values()), report
    # An ended version keeps its start: `__crdb_start_at` is its start HLC's wall time.
    for r in o.read_table(str(root / "delta" / "usertable")):
        for hlc, at in [("__crdb_start_hlc", "__crdb_start_at"), ("__crdb_end_hlc", "__crdb_end_at")]:
            if r[hlc] is None:
                assert r[at] is None, r
            else:
                wall_us = int(r[hlc].split(".")[0]) // 1000
                at_us = (datetime.fromisoformat(r[at].replace("Z", "+00:00")) - EPOCH) // timedelta(microseconds=1)
                assert at_us == wall_us, r


def test_second_run_writes_nothing_and_new_data_continues(crdb_delta_bin, tmp_path):
    root = simulate(crdb_delta_bin, tmp_path, "json", 6)
    last = resolved_steps(root)[-1]
    # Stop half way: --until an intermediate RESOLVED.
    mid = o.hlc_of(resolved_steps(root)[3])
    sync(crdb_delta_bin, root, "update_delete", "--until", mid)
    before = {t: DeltaTable(str(root / "delta" / t)).version() for t in TABLES.split(",")}
    sync(crdb_delta_bin, root, "update_delete", "--until", mid)
    again = {t: DeltaTable(str(root / "delta" / t)).version() for t in TABLES.split(",")}
    assert again == before, "a run with nothing new must not commit"
    sync(crdb_delta_bin, root, "update_delete")
    check_final(root, "update_delete")
    check_time_travel(root)
    n = {t: DeltaTable(str(root / "delta" / t)).version() for t in TABLES.split(",")}
    sync(crdb_delta_bin, root, "update_delete")
    assert {t: DeltaTable(str(root / "delta" / t)).version() for t in TABLES.split(",")} == n
    txn = DeltaTable(str(root / "delta" / "usertable")).history(1)[0]
    assert txn["crdbDelta"]["progress"]["applied"] == o.hlc_of(last)


# Crash points (handler/sync.rs `fault`): the process aborts there, as a kill would.
FAULTS = ["before-write", "after-write", "after-commit", "after-commit:2", "before-record"]


@pytest.mark.parametrize("mode", ["update_delete", "append_only"])
@pytest.mark.parametrize("fault", FAULTS)
def test_crash_at_any_point_converges(crdb_delta_bin, tmp_path, mode, fault):
    root = simulate(crdb_delta_bin, tmp_path, "json")
    p = sync(crdb_delta_bin, root, mode, "--max-window-bytes", "60000",
             env={"CRDB_DELTA_FAULT": fault}, check=False)
    assert p.returncode == -signal.SIGABRT, f"expected the injected abort:\n{p.stderr}"
    assert "injected fault" in p.stderr
    # Crash again in the re-run at the same point of a later step, then finish.
    p = sync(crdb_delta_bin, root, mode, "--max-window-bytes", "60000",
             env={"CRDB_DELTA_FAULT": fault}, check=False)
    sync(crdb_delta_bin, root, mode, "--max-window-bytes", "60000")
    check_final(root, mode)
    if mode == "update_delete":
        check_time_travel(root)


# An initial scan is one RESOLVED interval as large as the table: with no smaller step to plan,
# it is applied in key slices, one commit each, so memory follows the window. With a slice
# cache, the first slice's pass spills the later slices' rows to local disk and those read them
# back.
@pytest.mark.parametrize("fmt", ["json", "parquet"])
@pytest.mark.parametrize("mode,storage", [
    ("update_delete", "deletion_vectors"), ("update_delete", "copy_on_write"),
    ("append_only", "deletion_vectors"),
    ("scd2", "deletion_vectors"), ("scd2", "copy_on_write"),
])
@pytest.mark.parametrize("cache", [None, "64MiB"])
def test_an_interval_larger_than_the_window_is_applied_in_key_slices(crdb_delta_bin, tmp_path, fmt, mode, storage,
                                                                    cache):
    root = simulate(crdb_delta_bin, tmp_path, fmt, 3, initial_rows=1500)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    report = json.loads(sync(crdb_delta_bin, root, mode, "--max-window-bytes", "150000",
                             "--min-slice-bytes", "50000", "--storage", storage,
                             *(["--slice-cache-bytes", cache] if cache else []),
                             env={"TMPDIR": str(tmp)}).stdout)
    for t, r in report["tables"].items():
        assert r["slice_commits"] >= 1, (t, r)
        assert r["commits"] == report["steps"] + r["slice_commits"], (t, r)
        if cache is None:
            # Slices past the first skip other slices' rows without building them.
            assert r["rows_skipped"] > 0, (t, r)
            assert r["files_from_slice_spill"] == r["bytes_spilled"] == 0, (t, r)
        elif r["slice_commits"] >= 2:
            # Later slices read their rows from the spill.
            assert r["files_from_slice_spill"] > 0 and r["bytes_spilled"] > 0, (t, r)
    assert list(tmp.iterdir()) == [], "slice cache folders left"
    check_final(root, mode)
    if mode == "update_delete":
        # Only whole intervals are recorded: a reader of _crdb_delta_resolved never sees a slice.
        assert len(check_time_travel(root)) == report["steps"]
    hist = DeltaTable(str(root / "delta" / "usertable")).history()
    slices = [h["crdbDelta"]["figures"]["slice"] for h in hist if "slice" in h.get("crdbDelta", {}).get("figures", {})]
    assert slices and all(s["done"] <= s["of"] for s in slices), slices
    assert max(s["done"] for s in slices) == slices[0]["of"], "the last slice completes the interval"


def test_a_one_byte_window_is_one_commit_per_resolved_without_slices(crdb_delta_bin, tmp_path):
    """`--max-window-bytes 1` asks for one RESOLVED per commit; intervals below two
    `min_slice_bytes` (default 1 MiB) are never cut into key slices (each slice re-reads them)."""
    root = simulate(crdb_delta_bin, tmp_path, "json", 4)
    report = json.loads(sync(crdb_delta_bin, root, "update_delete", "--max-window-bytes", "1").stdout)
    for t, r in report["tables"].items():
        assert r["slice_commits"] == 0, (t, r)
        assert r["commits"] == report["steps"] == len(resolved_steps(root)), (t, r)
    check_final(root, "update_delete")


# Parquet slices past the first skip other slices' rows in the decoder: crashes there too.
@pytest.mark.parametrize("fmt", ["json", "parquet"])
@pytest.mark.parametrize("mode", ["update_delete", "append_only", "scd2"])
@pytest.mark.parametrize("fault", ["after-commit:2", "before-write:4", "after-write:5", "after-commit:7"])
def test_crash_between_and_inside_key_slices_converges(crdb_delta_bin, tmp_path, fmt, mode, fault):
    root = simulate(crdb_delta_bin, tmp_path, fmt, 3, initial_rows=1500)
    args = ("--max-window-bytes", "150000", "--min-slice-bytes", "50000")
    for _ in range(2):
        p = sync(crdb_delta_bin, root, mode, *args, env={"CRDB_DELTA_FAULT": fault}, check=False)
        assert p.returncode == -signal.SIGABRT, f"expected the injected abort:\n{p.stderr}"
        # Every fault point here lies past a first slice's commit: `status` shows the slices.
        status = json.loads(run(crdb_delta_bin, "status", "--target", str(root / "delta"), "--json").stdout)
        assert any(r["slices"] and 0 < r["slices"]["done"] < r["slices"]["of"] for r in status), status
    report = json.loads(sync(crdb_delta_bin, root, mode, *args).stdout)
    check_final(root, mode)
    if mode == "update_delete":
        check_time_travel(root)
    # The re-runs resumed the sliced interval where it stopped: no slice applied twice.
    for t in TABLES.split(","):
        hist = DeltaTable(str(root / "delta" / t)).history()
        done = [h["crdbDelta"]["figures"]["slice"] for h in hist
                if "slice" in h.get("crdbDelta", {}).get("figures", {})]
        keys = [(s["resolved"], s["done"]) for s in done]
        assert len(keys) == len(set(keys)), f"{t}: a slice committed twice: {sorted(keys)}"
    assert report["resolved"]


def test_corrupt_file_fails_clearly_and_commits_nothing(crdb_delta_bin, tmp_path):
    root = simulate(crdb_delta_bin, tmp_path, "json", 3)
    sync(crdb_delta_bin, root, "update_delete", "--until", o.hlc_of(resolved_steps(root)[1]))
    versions = {t: DeltaTable(str(root / "delta" / t)).version() for t in TABLES.split(",")}
    # Break a file of the next step.
    victim = sorted((root / "changefeed").rglob("*orders+details*.ndjson"))[-1]
    victim.write_text('{"after": {"id": 1, "customer": "x"}, "key": [1], "updated": "oops"}\n')
    p = sync(crdb_delta_bin, root, "update_delete", check=False)
    assert p.returncode != 0
    assert victim.name in p.stderr, p.stderr
    after = {t: DeltaTable(str(root / "delta" / t)).version() for t in TABLES.split(",")}
    # Tables applied before the bad table in the step may have committed; none went past the
    # step, and orders (the bad table) did not move.
    assert after["orders"] == versions["orders"]


def test_azurite_source_and_target(crdb_delta_bin, tmp_path, monkeypatch):
    endpoint = azurite_endpoint()
    import uuid

    container = "sync" + uuid.uuid4().hex[:12]
    env = {
        "AZURE_STORAGE_USE_EMULATOR": "true",
        "AZURITE_BLOB_STORAGE_URL": endpoint.rsplit("/", 1)[0],
    }
    create_container(endpoint, container)
    src = f"azure://{container}/feed"
    dst = f"azure://{container}/delta"
    run(crdb_delta_bin, "simulate", "--out", src, "--truth", str(tmp_path / "truth"),
        "--tables", TABLES, "--initial-rows", "40", "--windows", "4", "--events-per-window", "100",
        env=env)
    run(crdb_delta_bin, "sync", "--source", src, "--target", dst, "--manifest",
        str(tmp_path / "truth" / "manifest.json"), "--max-window-bytes", "60000", env=env)
    # delta-rs' reader (object_store) finds the emulator through this variable.
    monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", env["AZURITE_BLOB_STORAGE_URL"])
    opts = {"account_name": "devstoreaccount1", "use_emulator": "true", "allow_http": "true"}
    check_final(tmp_path, "update_delete", reader_options=opts,
                uri=lambda t: f"az://{container}/delta/{t}")


def azurite_endpoint() -> str:
    """`AZURITE_BLOB_ENDPOINT`; without it the test fails, unless `CRDB_DELTA_SKIP_AZURITE=1`
    skips it."""
    endpoint = os.environ.get("AZURITE_BLOB_ENDPOINT")
    if not endpoint:
        if os.environ.get("CRDB_DELTA_SKIP_AZURITE") == "1":
            pytest.skip("CRDB_DELTA_SKIP_AZURITE=1")
        pytest.fail("AZURITE_BLOB_ENDPOINT not set: run scripts/test (it starts Azurite), "
                    "or set CRDB_DELTA_SKIP_AZURITE=1 to skip")
    return endpoint


def create_container(endpoint: str, container: str):
    """Creates a container on Azurite with the well-known development account key."""
    import base64
    import hashlib
    import hmac
    import urllib.request
    from email.utils import formatdate

    account = "devstoreaccount1"
    key = base64.b64decode(
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    )
    date = formatdate(usegmt=True)
    version = "2021-08-06"
    canonical_headers = f"x-ms-date:{date}\nx-ms-version:{version}\n"
    canonical_resource = f"/{account}/{account}/{container}\nrestype:container"
    to_sign = "PUT\n\n\n\n\n\n\n\n\n\n\n\n" + canonical_headers + canonical_resource
    sig = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest()).decode()
    req = urllib.request.Request(
        f"{endpoint}/{container}?restype=container", method="PUT",
        headers={"x-ms-date": date, "x-ms-version": version,
                 "Authorization": f"SharedKey {account}:{sig}", "Content-Length": "0"},
    )
    with urllib.request.urlopen(req) as r:
        assert r.status == 201, r.status


def test_later_runs_list_only_from_the_applied_partition(crdb_delta_bin, tmp_path):
    # One-hour windows in hourly folders: every RESOLVED lands in its own folder.
    root = simulate(crdb_delta_bin, tmp_path, "json", 6, "--partition", "hourly",
                    "--window-ms", "3600000")
    hours = sorted(p for p in (root / "changefeed").glob("*/*") if p.is_dir())
    assert len(hours) >= 6, hours
    (hours[0] / "notes.txt").write_text("not a changefeed file")
    steps = resolved_steps(root)
    first = json.loads(sync(crdb_delta_bin, root, "update_delete", "--until", o.hlc_of(steps[3])).stdout)
    assert any("notes.txt" in i for i in first["ignored"]), first["ignored"]
    rest = json.loads(sync(crdb_delta_bin, root, "update_delete").stdout)
    assert rest["ignored"] == [], "the second run lists only from the applied RESOLVED's folder"
    check_final(root, "update_delete")
    check_time_travel(root)


def test_time_budget_stops_between_steps(crdb_delta_bin, tmp_path):
    root = simulate(crdb_delta_bin, tmp_path, "json")
    runs = 0
    while True:
        runs += 1
        r = json.loads(sync(crdb_delta_bin, root, "update_delete", "--max-window-bytes", "60000",
                            "--min-slice-bytes", "20000", "--max-seconds", "0").stdout)
        assert r["steps"] <= 1, r
        if r["complete"]:
            break
        # A step, or one key slice of the initial scan (larger than this window), per run.
        assert runs < 100
    assert runs > 2, "a spent budget ends the run after one step"
    check_final(root, "update_delete")
    check_time_travel(root)


@pytest.mark.parametrize("mode", ["append_only", "update_delete"])
@pytest.mark.parametrize("sliced", [False, True])
def test_concurrent_syncs_never_apply_twice(crdb_delta_bin, tmp_path, mode, sliced):
    """Two runs race on the same tables: Delta's optimistic commits, with our `txn` app id in
    each commit, let only one apply a step (or key slice); the loser re-plans from the log.
    append_only would show any double apply as duplicate rows."""
    root = simulate(crdb_delta_bin, tmp_path, "json")
    args = [str(crdb_delta_bin), "sync", "--source", str(root / "changefeed"), "--target",
            str(root / "delta"), "--manifest", str(root / "truth" / "manifest.json"), "--mode",
            mode, "--max-window-bytes", "60000"]
    if sliced:
        # The initial scan in key slices: the runs race slice by slice.
        args += ["--min-slice-bytes", "20000"]
    env = dict(os.environ, CRDB_DELTA_LOG="warn")
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    # Both finish: the loser of each commit race re-plans from the winner's commit.
    assert codes == [0, 0], [e[-2000:] for _, e in outs]
    check_final(root, mode)
    if mode == "update_delete":
        check_time_travel(root)


def test_stray_resolved_is_refused_and_real_ones_still_apply(crdb_delta_bin, tmp_path):
    """A `2099…RESOLVED` object dropped into the root (a copy, a test, another tool) must not be
    applied: it would make every real event after it look already applied."""
    root = simulate(crdb_delta_bin, tmp_path, "json", 4)
    steps = resolved_steps(root)
    sync(crdb_delta_bin, root, "update_delete", "--until", o.hlc_of(steps[1]))
    real = sorted((root / "changefeed").rglob("*.RESOLVED"))[-1]
    stray_ts = "2099" + real.stem[4:]
    stray = real.parent.parent / ("2099" + real.parent.name[4:]) / f"{stray_ts}.RESOLVED"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_text(json.dumps({"resolved": o.hlc_of(stray_ts)}))
    report = json.loads(sync(crdb_delta_bin, root, "update_delete").stdout)
    assert report["resolved"] == o.hlc_of(steps[-1]), report
    assert len(report["refused"]) == 1 and stray.name in report["refused"][0], report["refused"]
    assert "ahead" in report["refused"][0]
    check_final(root, "update_delete")
    # Progress is the real RESOLVED, so later real events still apply.
    for t in TABLES.split(","):
        assert DeltaTable(str(root / "delta" / t)).history(1)[0]["crdbDelta"]["progress"]["applied"] \
            == o.hlc_of(steps[-1])


def test_resolved_whose_content_disagrees_with_its_name_is_refused(crdb_delta_bin, tmp_path):
    root = simulate(crdb_delta_bin, tmp_path, "json", 3)
    steps = resolved_steps(root)
    sync(crdb_delta_bin, root, "update_delete", "--until", o.hlc_of(steps[0]))
    versions = {t: DeltaTable(str(root / "delta" / t)).version() for t in TABLES.split(",")}
    last = sorted((root / "changefeed").rglob("*.RESOLVED"))[-1]
    last.write_text(json.dumps({"resolved": o.hlc_of(steps[0])}))
    p = sync(crdb_delta_bin, root, "update_delete", "--until", o.hlc_of(last.stem), check=False)
    assert p.returncode != 0
    assert last.name in p.stderr and "name says" in p.stderr, p.stderr
    assert {t: DeltaTable(str(root / "delta" / t)).version() for t in TABLES.split(",")} == versions


def _poison_orders(root: Path) -> tuple[Path, str, bytes]:
    victim = sorted((root / "changefeed").rglob("*orders+details*.ndjson"))[-1]
    original = victim.read_bytes()
    victim.write_text('{"after": {"id": 1, "customer": "x"}, "key": [1], "updated": "oops"}\n')
    return victim, victim.relative_to(root / "changefeed").as_posix(), original


def _applied(root: Path, table: str) -> str:
    return DeltaTable(str(root / "delta" / table)).history(1)[0]["crdbDelta"]["progress"]["applied"]


def test_poison_file_stops_only_its_table_until_retried(crdb_delta_bin, tmp_path):
    root = simulate(crdb_delta_bin, tmp_path, "json", 3)
    steps = resolved_steps(root)
    sync(crdb_delta_bin, root, "update_delete", "--until", o.hlc_of(steps[1]))
    orders_version = DeltaTable(str(root / "delta" / "orders")).version()
    victim, rel, original = _poison_orders(root)
    for attempt in range(2):  # stays stopped, without crash-looping on the file
        p = sync(crdb_delta_bin, root, "update_delete", check=False)
        assert p.returncode == 1, p.stderr
        assert rel in p.stderr and "quarantine" in p.stderr, p.stderr
        report = json.loads(p.stdout)
        assert [(q["table"], q["file"], q["action"]) for q in report["quarantined"]] == [
            ("orders", rel, "hold")], report["quarantined"]
        assert "orders" not in report["tables"]
        # Only orders stopped: the other tables reached the last RESOLVED.
        for t in ("usertable", "kitchen_sink"):
            assert _applied(root, t) == o.hlc_of(steps[-1]), (attempt, t)
        assert DeltaTable(str(root / "delta" / "orders")).version() == orders_version
    listed = json.loads(run(crdb_delta_bin, "quarantine", "--target", str(root / "delta"), "list",
                            "--json").stdout)
    assert [(r["table"], r["file"], r["action"]) for r in listed] == [("orders", rel, "hold")]
    assert "line 1" in listed[0]["reason"], listed[0]["reason"]
    # `status` shows the stopped table with its file and reason, the others at the last RESOLVED.
    status = {r["table"]: r for r in json.loads(run(
        crdb_delta_bin, "status", "--target", str(root / "delta"), "--json").stdout)}
    assert status["orders"]["stopped"] and status["orders"]["quarantined"][0]["file"] == rel
    assert not status["usertable"]["stopped"]
    assert status["usertable"]["resolved"] == o.hlc_of(steps[-1])
    text = run(crdb_delta_bin, "status", "--target", str(root / "delta")).stdout
    assert "orders" in text and "STOPPED" in text and rel in text, text
    # The operator replaces the file and retries: everything converges to the truth.
    victim.write_bytes(original)
    run(crdb_delta_bin, "quarantine", "--target", str(root / "delta"), "retry", rel)
    report = json.loads(sync(crdb_delta_bin, root, "update_delete").stdout)
    assert report["quarantined"] == []
    check_final(root, "update_delete")
    check_time_travel(root)


def test_skipped_poison_file_is_named_in_the_commit(crdb_delta_bin, tmp_path):
    root = simulate(crdb_delta_bin, tmp_path, "json", 3)
    steps = resolved_steps(root)
    sync(crdb_delta_bin, root, "update_delete", "--until", o.hlc_of(steps[1]))
    _, rel, _ = _poison_orders(root)
    assert sync(crdb_delta_bin, root, "update_delete", check=False).returncode == 1
    p = run(crdb_delta_bin, "quarantine", "--target", str(root / "delta"), "skip", rel)
    assert "skipped" in p.stdout
    report = json.loads(sync(crdb_delta_bin, root, "update_delete").stdout)
    assert [(q["file"], q["action"]) for q in report["quarantined"]] == [(rel, "skip")]
    assert _applied(root, "orders") == o.hlc_of(steps[-1])
    named = [h["crdbDelta"]["figures"].get("skippedFiles") for h in
             DeltaTable(str(root / "delta" / "orders")).history() if "crdbDelta" in h]
    assert [rel] in named, named
    # A later run does not read it again.
    assert json.loads(sync(crdb_delta_bin, root, "update_delete").stdout)["tables"]["orders"]["files_read"] == 0


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_window_budget_counts_decompressed_bytes(crdb_delta_bin, tmp_path, compression):
    """`max_window_bytes` bounds what a step decodes, not what it downloads: a compressed feed
    is cut into about as many steps as the same feed uncompressed, and still equals the truth."""
    steps = {}
    for c in ["none", compression]:
        root = simulate(crdb_delta_bin, tmp_path / c, "json", 6, "--compression", c)
        report = json.loads(sync(crdb_delta_bin, root, "update_delete",
                                 "--max-window-bytes", "60000").stdout)
        check_final(root, "update_delete")
        decoded = sum(t["decoded_bytes"] for t in report["tables"].values())
        stored = sum(t["bytes_read"] for t in report["tables"].values())
        steps[c] = report["steps"]
        if c != "none":
            assert decoded > stored, (decoded, stored)
        else:
            assert decoded == stored, (decoded, stored)
    assert steps[compression] >= 0.7 * steps["none"], steps


def test_a_second_changefeed_into_the_same_root_is_reported(crdb_delta_bin, tmp_path):
    """Two changefeeds writing into one root: the second one's files land below RESOLVEDs the
    first already wrote, which one changefeed never does (§2.4). Each such file is reported."""
    import time

    root = simulate(crdb_delta_bin, tmp_path, "json", 3)
    report = json.loads(sync(crdb_delta_bin, root, "update_delete").stdout)
    assert report["late"] == [], report["late"]
    time.sleep(2.5)  # past the slack for storage clocks of one-second resolution
    run(crdb_delta_bin, "simulate", "--out", str(root / "changefeed"), "--truth",
        str(tmp_path / "truth2"), "--seed", "99", "--tables", "usertable", "--initial-rows", "5",
        "--windows", "1", "--events-per-window", "5")
    p = sync(crdb_delta_bin, root, "update_delete")
    report = json.loads(p.stdout)
    assert report["late"], report
    assert all("second changefeed" in l for l in report["late"])
    assert "second changefeed" in p.stderr


def test_uuid_keyed_usertable_matches_ground_truth(crdb_delta_bin, tmp_path):
    """Random UUID keys (CockroachDB's recommended `gen_random_uuid()`): no key order in the
    files, text min/max pruning only; one commit per RESOLVED, so small files pile up and get
    rewritten, and the table still equals the ground truth in update_delete and scd2."""
    root = simulate(crdb_delta_bin, tmp_path, "parquet", 12, "--uuid-keys")
    tables = json.loads((root / "truth" / "manifest.json").read_text())["tables"]
    user = next(t for t in tables if t["name"] == "usertable")
    assert user["columns"][0] == {"name": "ycsb_key", "type": "UUID", "nullable": False,
                                  "family": "primary"}, user["columns"][0]
    for mode in ["update_delete", "scd2"]:
        shutil.rmtree(root / "delta", ignore_errors=True)
        report = json.loads(sync(crdb_delta_bin, root, mode, "--commit-each-resolved").stdout)
        assert report["tables"]["usertable"]["files_with_deletion_vectors"] > 0, report
        check_final(root, mode)
