"""The command line as a new user meets it: safe with their folders, quiet, clear when refusing.

Each case checks the exit code, what stdout/stderr say, and that nothing was written when the
command refused.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


def cli(bin_path: Path, *args: str, cwd: Path | None = None, env: dict | None = None):
    full = {k: v for k, v in os.environ.items() if k not in ("CRDB_DELTA_LOG", "RUST_LOG")}
    full.update(env or {})
    return subprocess.run([str(bin_path), *args], capture_output=True, text=True, env=full,
                          cwd=cwd, timeout=600)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def window(feed: Path, i: int, after: str) -> None:
    """Window `i` of table `t` in CockroachDB's layout: one NDJSON message (key `i + 1`,
    `after` as given) two seconds after the last, then a RESOLVED half a second later."""
    ts = 1714751616 + 2 * i
    stamp = f"20240503155{336 + 2 * i}" + "0" * 19
    (feed / f"{stamp}-08779498965a12e2-1-2-{i:08x}-t-1.ndjson").write_text(
        f'{{"after": {after}, "key": [{i + 1}], "updated": "{ts}000000000.0000000000"}}\n')
    (feed / f"20240503155{337 + 2 * i}{'0' * 19}.RESOLVED").write_text(
        f'{{"resolved":"{ts + 1}000000000.0000000000"}}')


def test_demo_never_deletes_what_it_did_not_write(crdb_delta_bin, tmp_path):
    (tmp_path / "precious.txt").write_text("my work")
    p = cli(crdb_delta_bin, "demo", "--dir", str(tmp_path))
    assert p.returncode == 1, p.stderr
    assert "not empty" in p.stderr and "demo only ever deletes what it wrote" in p.stderr
    assert tree(tmp_path) == ["precious.txt"]
    # `demo --dir .` in a working folder: same refusal.
    p = cli(crdb_delta_bin, "demo", "--dir", ".", cwd=tmp_path)
    assert p.returncode == 1 and tree(tmp_path) == ["precious.txt"]


def test_demo_is_quiet_and_can_run_again(crdb_delta_bin, tmp_path):
    d = tmp_path / "demo"
    for _ in range(2):  # the second run replaces only what the first wrote
        p = cli(crdb_delta_bin, "demo", "--dir", str(d))
        assert p.returncode == 0, p.stderr
        assert len(p.stderr.splitlines()) < 20, p.stderr[-3000:]
        assert "\x1b[" not in p.stderr, "no colour codes in redirected output"
        assert "Delta tables in" in p.stdout
    assert sorted(x.name for x in d.iterdir()) == [".crdb-delta-demo", "changefeed", "delta", "truth"]


def test_sync_refuses_a_missing_source_and_creates_nothing(crdb_delta_bin, tmp_path):
    p = cli(crdb_delta_bin, "sync", "--source", str(tmp_path / "nosuch"), "--target",
            str(tmp_path / "out"))
    assert p.returncode == 1
    assert "nosuch" in p.stderr and "no such folder" in p.stderr, p.stderr
    assert tree(tmp_path) == []


def test_sync_refuses_targets_that_would_mix(crdb_delta_bin, tmp_path):
    src = tmp_path / "feed"
    p = cli(crdb_delta_bin, "simulate", "--out", str(src), "--truth", str(tmp_path / "truth"),
            "--windows", "1", "--tables", "usertable")
    assert p.returncode == 0, p.stderr
    before = tree(tmp_path)
    p = cli(crdb_delta_bin, "sync", "--source", str(src), "--target", str(src / "delta"))
    assert p.returncode == 1 and "inside the source" in p.stderr, p.stderr
    assert tree(tmp_path) == before
    # A root that is itself a Delta table.
    sync = cli(crdb_delta_bin, "sync", "--source", str(src), "--target", str(tmp_path / "t"))
    assert sync.returncode == 0, sync.stderr
    before = tree(tmp_path)
    p = cli(crdb_delta_bin, "sync", "--source", str(src), "--target",
            str(tmp_path / "t" / "usertable"))
    assert p.returncode == 1 and "itself a Delta table" in p.stderr, p.stderr
    assert tree(tmp_path) == before


def test_user_errors_print_the_message_not_a_backtrace(crdb_delta_bin, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"tables": {"a": {"target": "x"}, "b": {"target": "x"}}}))
    (tmp_path / "feed").mkdir()
    p = cli(crdb_delta_bin, "sync", "--source", str(tmp_path / "feed"), "--target",
            str(tmp_path / "out"), "--config", str(cfg), env={"RUST_BACKTRACE": "1"})
    assert p.returncode == 1
    assert "stack backtrace" not in p.stderr.lower() and "Stack backtrace" not in p.stderr
    assert p.stderr.startswith("error: "), p.stderr
    assert "own `target`" in p.stderr, p.stderr
    assert len(p.stderr.splitlines()) <= 4, p.stderr
    assert not (tmp_path / "out").exists()


def test_sync_without_a_resolved_says_why_nothing_happened(crdb_delta_bin, tmp_path):
    src = tmp_path / "feed"
    p = cli(crdb_delta_bin, "simulate", "--out", str(src), "--truth", str(tmp_path / "truth"),
            "--windows", "1", "--tables", "usertable")
    assert p.returncode == 0, p.stderr
    for r in src.rglob("*.RESOLVED"):
        r.unlink()
    p = cli(crdb_delta_bin, "sync", "--source", str(src), "--target", str(tmp_path / "out"))
    assert p.returncode == 0, p.stderr
    assert "no RESOLVED file in the source yet" in p.stdout, p.stdout


def test_help_is_specific_and_values_are_checked(crdb_delta_bin, tmp_path):
    p = cli(crdb_delta_bin, "serve", "--help")
    assert p.stdout.startswith("The Azure Functions custom handler"), p.stdout[:200]
    p = cli(crdb_delta_bin, "simulate", "--help")
    for values in ["none, gzip, zstd", "daily, hourly, flat", "all, last, none"]:
        assert f"[possible values: {values}]" in p.stdout, values
    p = cli(crdb_delta_bin, "sync", "--source", str(tmp_path), "--target", str(tmp_path / "t"),
            "--batch-size", "0")
    assert p.returncode == 2 and "--batch-size" in p.stderr, p.stderr
    p = cli(crdb_delta_bin, "pump", "--source", "azure://c", "--handler", "http://127.0.0.1:1",
            "--function", "blobcreated")
    assert p.returncode == 2 and "BlobCreated" in p.stderr, p.stderr
    assert not (tmp_path / "t").exists()


def test_dry_run_plans_what_sync_then_does_and_writes_nothing(crdb_delta_bin, tmp_path):
    src, truth, out = tmp_path / "feed", tmp_path / "truth", tmp_path / "delta"
    p = cli(crdb_delta_bin, "simulate", "--out", str(src), "--truth", str(truth), "--windows", "3",
            "--tables", "usertable,orders", "--initial-rows", "1500")
    assert p.returncode == 0, p.stderr
    before = tree(tmp_path)
    args = ["--source", str(src), "--target", str(out), "--manifest", str(truth / "manifest.json"),
            "--max-window-bytes", "300000"]
    plan = cli(crdb_delta_bin, "sync", *args, "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    assert tree(tmp_path) == before, "a dry run writes nothing, not even the target folder"
    steps = json.loads(plan.stdout)
    assert all(t["new"] for t in steps[0]["tables"].values())
    text = cli(crdb_delta_bin, "sync", *args, "--dry-run")
    assert f"{len(steps)} step(s); nothing was read or written" in text.stdout, text.stdout
    report = json.loads(cli(crdb_delta_bin, "sync", *args, "--json").stdout)
    # The plan is what the run did: its steps and, for the initial scan, its key slices.
    assert report["steps"] == len(steps), (report["steps"], steps)
    for name, t in report["tables"].items():
        planned = steps[0]["tables"][name]["slices"]
        assert t["slice_commits"] == (planned - 1 if planned else 0), (name, t, planned)
    again = json.loads(cli(crdb_delta_bin, "sync", *args, "--dry-run", "--json").stdout)
    assert again == [], "applied: nothing left to plan"


def test_byte_sizes_take_units(crdb_delta_bin, tmp_path):
    src = tmp_path / "feed"
    p = cli(crdb_delta_bin, "simulate", "--out", str(src), "--truth", str(tmp_path / "truth"),
            "--windows", "2", "--tables", "usertable")
    assert p.returncode == 0, p.stderr
    base = ["sync", "--source", str(src), "--target", str(tmp_path / "out"), "--dry-run", "--json"]
    ok = cli(crdb_delta_bin, *base, "--max-window-bytes", "256MiB", "--target-file-size", "1.5GiB")
    assert ok.returncode == 0, ok.stderr
    bad = cli(crdb_delta_bin, *base, "--max-window-bytes", "7apples")
    assert bad.returncode == 2 and "7apples" in bad.stderr and "256MiB" in bad.stderr, bad.stderr
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"max_window_bytes": "lots"}))
    bad = cli(crdb_delta_bin, *base, "--config", str(cfg))
    assert bad.returncode == 1 and "lots" in bad.stderr, bad.stderr
    cfg.write_text(json.dumps({"max_window_bytes": "64MiB", "max_line_bytes": 1048576}))
    assert cli(crdb_delta_bin, *base, "--config", str(cfg)).returncode == 0


def test_options_in_the_targets_schema_json_reach_the_run(crdb_delta_bin, tmp_path):
    """`_crdb_delta/schema.json` (what `crdb-delta schema --target` writes) may carry options
    too; they count as the config file's would, and flags still go over them."""
    src, truth, out = tmp_path / "feed", tmp_path / "truth", tmp_path / "delta"
    p = cli(crdb_delta_bin, "simulate", "--out", str(src), "--truth", str(truth), "--windows", "4",
            "--tables", "usertable")
    assert p.returncode == 0, p.stderr
    args = ["sync", "--source", str(src), "--target", str(out),
            "--manifest", str(truth / "manifest.json"), "--json"]
    (out / "_crdb_delta").mkdir(parents=True)
    (out / "_crdb_delta" / "schema.json").write_text(json.dumps({"commit_each_resolved": True}))
    plan = json.loads(cli(crdb_delta_bin, *args, "--dry-run").stdout)
    # The default window holds this whole feed: one step, unless schema.json's option counts.
    assert len(plan) >= 4, plan
    report = json.loads(cli(crdb_delta_bin, *args).stdout)
    assert report["steps"] == len(plan), report
    assert report["tables"]["usertable"]["commits"] == len(plan), report
    # The explicit config wins over schema.json, field by field.
    fresh = tmp_path / "delta2"
    (fresh / "_crdb_delta").mkdir(parents=True)
    (fresh / "_crdb_delta" / "schema.json").write_text(json.dumps({"commit_each_resolved": True}))
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"commit_each_resolved": False}))
    whole = cli(crdb_delta_bin, "sync", "--source", str(src), "--target", str(fresh),
                "--manifest", str(truth / "manifest.json"), "--json", "--dry-run",
                "--config", str(cfg))
    assert len(json.loads(whole.stdout)) == 1, whole.stdout


def test_a_value_that_does_not_fit_an_inferred_column_says_how_to_fix_it(crdb_delta_bin, tmp_path):
    """A column typed from its first values (no SQL type configured) is fixed in the Delta table;
    a later value that does not fit stops the table with an error that says why and what to do."""
    feed, out = tmp_path / "feed", tmp_path / "delta"
    feed.mkdir()
    window(feed, 0, '{"id": 1, "amount": 100}')
    first = cli(crdb_delta_bin, "sync", "--source", str(feed), "--target", str(out))
    assert first.returncode == 0, first.stderr
    window(feed, 1, '{"id": 2, "amount": 100.5}')
    p = cli(crdb_delta_bin, "sync", "--source", str(feed), "--target", str(out))
    assert p.returncode == 1
    message = p.stdout + p.stderr
    assert "`100.5` is not a 64-bit integer" in message, message
    assert "Column `amount` is `long` in the Delta table, inferred" in message, message
    assert "tables.t.columns.amount" in message and "quarantine retry" in message, message
    listed = cli(crdb_delta_bin, "quarantine", "--target", str(out), "list")
    assert "inferred from earlier values" in listed.stdout, listed.stdout


def test_a_bare_envelope_feed_is_applied_with_a_warning_about_deletes(crdb_delta_bin, tmp_path):
    src, out = tmp_path / "feed", tmp_path / "delta"
    p = cli(crdb_delta_bin, "simulate", "--out", str(src), "--truth", str(tmp_path / "truth"),
            "--windows", "2", "--tables", "usertable", "--bare")
    assert p.returncode == 0, p.stderr
    report = cli(crdb_delta_bin, "sync", "--source", str(src), "--target", str(out), "--json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["tables"]["usertable"]["bare_envelope"] is True
    assert "envelope=bare" in report.stderr, report.stderr
    wrapped = cli(crdb_delta_bin, "simulate", "--out", str(tmp_path / "w"), "--truth",
                  str(tmp_path / "wt"), "--windows", "2", "--tables", "usertable")
    assert wrapped.returncode == 0, wrapped.stderr
    text = cli(crdb_delta_bin, "sync", "--source", str(tmp_path / "w"), "--target",
               str(tmp_path / "wd"))
    assert "envelope=bare" not in text.stdout + text.stderr, text.stdout
    bare_text = cli(crdb_delta_bin, "sync", "--source", str(src), "--target", str(tmp_path / "b2"))
    assert "WARNING: the changefeed uses envelope=bare" in bare_text.stdout, bare_text.stdout


def test_inspect_proposes_a_config_that_sync_takes(crdb_delta_bin, tmp_path):
    src, truth = tmp_path / "feed", tmp_path / "truth"
    p = cli(crdb_delta_bin, "simulate", "--out", str(src), "--truth", str(truth), "--windows", "3",
            "--tables", "usertable,orders")
    assert p.returncode == 0, p.stderr
    proposed = cli(crdb_delta_bin, "inspect", "--source", str(src), "--propose-config")
    assert proposed.returncode == 0, proposed.stderr
    config = json.loads(proposed.stdout)
    manifest = json.loads((truth / "manifest.json").read_text())
    for t in manifest["tables"]:
        got = config["tables"][t["name"]]
        assert got["primary_key"] == t["primary_key"], (t["name"], got)
        assert set(got["columns"]) >= {c["name"] for c in t["columns"]}, (t["name"], got)
    # The guesses are named (orders' DECIMAL amount is a JSON number here).
    assert "types inferred from JSON values" in proposed.stderr, proposed.stderr
    cfg = tmp_path / "proposed.json"
    cfg.write_text(proposed.stdout)
    run = cli(crdb_delta_bin, "sync", "--source", str(src), "--target", str(tmp_path / "delta"),
              "--config", str(cfg), "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["resolved"] is not None


def test_status_plots_the_lag_at_each_resolved(crdb_delta_bin, tmp_path):
    import xml.etree.ElementTree as ET
    src, out = tmp_path / "feed", tmp_path / "delta"
    assert cli(crdb_delta_bin, "simulate", "--out", str(src), "--truth", str(tmp_path / "truth"),
               "--windows", "4", "--tables", "usertable").returncode == 0
    run = cli(crdb_delta_bin, "sync", "--source", str(src), "--target", str(out),
              "--commit-each-resolved", "--json")
    assert run.returncode == 0, run.stderr
    assert len(run.stderr.splitlines()) < 20, run.stderr[-3000:]
    steps = json.loads(run.stdout)["steps"]
    svg = tmp_path / "lag.svg"
    p = cli(crdb_delta_bin, "status", "--target", str(out), "--plot", str(svg))
    assert p.returncode == 0, p.stderr
    root = ET.parse(svg).getroot()
    lines = {ln.get("class"): ln.get("points").split()
             for ln in root.iter("{http://www.w3.org/2000/svg}polyline")}
    assert len(lines["lag"]) == steps and len(lines["changes"]) == steps, (lines, steps)
    assert f"lag at {steps} RESOLVED(s)" in p.stderr
    # The changes line is labelled with its largest value: one RESOLVED's share of the events.
    import re
    events = json.loads(run.stdout)["tables"]["usertable"]["events"]
    most = int(re.search(r">(\d+) changes</text>", svg.read_text()).group(1))
    assert 0 < most <= events, (most, events)


def test_describe_history_shows_operation_metrics(crdb_delta_bin, tmp_path):
    """Databricks' DESCRIBE HISTORY shows commitInfo.operationMetrics; read here through
    delta-rs' history, an independent reader of the log."""
    from deltalake import DeltaTable
    src, out = tmp_path / "feed", tmp_path / "delta"
    assert cli(crdb_delta_bin, "simulate", "--out", str(src), "--truth", str(tmp_path / "truth"),
               "--windows", "3", "--tables", "usertable").returncode == 0
    run = cli(crdb_delta_bin, "sync", "--source", str(src), "--target", str(out), "--json")
    assert run.returncode == 0, run.stderr
    t = json.loads(run.stdout)["tables"]["usertable"]
    history = [h for h in DeltaTable(str(out / "usertable")).history() if h.get("operationMetrics")]
    assert history, "no operationMetrics in the log"
    total = {k: sum(int(h["operationMetrics"][k]) for h in history)
             for k in ("numTargetRowsInserted", "numTargetRowsUpdated", "numTargetRowsDeleted")}
    assert total == {"numTargetRowsInserted": t["inserted"], "numTargetRowsUpdated": t["updated"],
                     "numTargetRowsDeleted": t["deleted"]}, (total, t)
    assert all(isinstance(v, str) for h in history for v in h["operationMetrics"].values())


def test_ctrl_c_says_what_state_things_are_in(crdb_delta_bin, tmp_path):
    import signal
    import time
    out = tmp_path / "feed"
    env = {k: v for k, v in os.environ.items() if k not in ("CRDB_DELTA_LOG", "RUST_LOG")}
    p = subprocess.Popen([str(crdb_delta_bin), "simulate", "--out", str(out), "--truth",
                          str(tmp_path / "truth"), "--initial-rows", "2000000", "--windows", "50"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not any(out.rglob("*.ndjson")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, "finished before it could be interrupted"
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, (p.returncode, stderr)
    assert "interrupted: what was written so far stays" in stderr, stderr


def test_progress_shows_on_a_terminal_only(crdb_delta_bin, tmp_path):
    """Long commands draw progress on stderr when it is a terminal (here a pseudo-terminal),
    and print none of it into a pipe or with --json."""
    import pty
    import select
    env = {k: v for k, v in os.environ.items() if k not in ("CRDB_DELTA_LOG", "RUST_LOG")}

    def on_a_terminal(*args: str) -> str:
        master, slave = pty.openpty()
        p = subprocess.Popen([str(crdb_delta_bin), *args], stdout=subprocess.DEVNULL,
                             stderr=slave, env=env)
        os.close(slave)
        out = b""
        while True:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            elif p.poll() is not None:
                break
        p.wait(timeout=300)
        os.close(master)
        assert p.returncode == 0, out
        return out.decode(errors="replace")

    src = tmp_path / "feed"
    sim = ["simulate", "--out", str(src), "--truth", str(tmp_path / "truth"),
           "--tables", "usertable", "--initial-rows", "2000", "--windows", "6",
           "--events-per-window", "300"]
    drawn = on_a_terminal(*sim)
    assert "RESOLVED" in drawn and "simulate [" in drawn, drawn[-500:]
    drawn = on_a_terminal("sync", "--source", str(src), "--target", str(tmp_path / "delta"),
                          "--commit-each-resolved")
    assert "sync step" in drawn and "MB read" in drawn, drawn[-500:]
    piped = cli(crdb_delta_bin, *sim[:2], str(tmp_path / "feed2"), *sim[3:])
    assert piped.returncode == 0 and "simulate [" not in piped.stderr, piped.stderr


def test_a_column_seen_only_as_null_waits_for_a_value_to_type_it(crdb_delta_bin, tmp_path):
    """A column that is NULL in every row so far has no type yet: it is not made `string` for
    good; the first window with a value adds it with that value's type."""
    from deltalake import DeltaTable, QueryBuilder
    feed, out = tmp_path / "feed", tmp_path / "delta"
    feed.mkdir()
    window(feed, 0, '{"id": 1, "note": null}')
    assert cli(crdb_delta_bin, "sync", "--source", str(feed), "--target", str(out)).returncode == 0
    first = DeltaTable(str(out / "t")).schema().to_arrow()
    assert "note" not in first.names, first
    window(feed, 1, '{"id": 2, "note": 7}')
    p = cli(crdb_delta_bin, "sync", "--source", str(feed), "--target", str(out))
    assert p.returncode == 0, p.stderr
    t = DeltaTable(str(out / "t"))
    note = [f for f in t.schema().fields if f.name == "note"]
    assert note and "long" in str(note[0].type), t.schema()
    import pyarrow as pa
    rows = sorted(pa.table(QueryBuilder().register("t", t).execute("select id, note from t"))
                  .to_pylist(), key=lambda r: r["id"])
    assert rows == [{"id": 1, "note": None}, {"id": 2, "note": 7}], rows


def test_config_typos_are_said_and_a_crdb_to_dbx_config_applies_its_one_table(crdb_delta_bin,
                                                                              tmp_path):
    src = tmp_path / "feed"
    assert cli(crdb_delta_bin, "simulate", "--out", str(src), "--truth", str(tmp_path / "truth"),
               "--windows", "2", "--tables", "usertable,orders").returncode == 0
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"tables": {"nosuch": {"primary_key": ["id"]},
                                          "usertable": {"columns": {"nocol": "INT8"}}}}))
    p = cli(crdb_delta_bin, "sync", "--source", str(src), "--target", str(tmp_path / "d"),
            "--config", str(cfg))
    assert p.returncode == 0, p.stderr
    assert "config: table `nosuch` is configured but has no files" in p.stdout, p.stdout
    assert "config: column `usertable.nocol` is configured but not in" in p.stdout, p.stdout
    # crdb_to_dbx's config.json names one table: only it is applied.
    dbx = tmp_path / "dbx.json"
    dbx.write_text(json.dumps({"cdc_config": {"mode": "append_only",
                                              "primary_key_columns": ["ycsb_key"]},
                               "cockroachdb_source": {"table_name": "usertable"},
                               "databricks_target": {"table_name": "ut"}}))
    args = ["sync", "--source", str(src), "--target", str(tmp_path / "d2"), "--config", str(dbx)]
    plan = json.loads(cli(crdb_delta_bin, *args, "--dry-run", "--json").stdout)
    assert all(set(step["tables"]) == {"usertable"} for step in plan), plan
    report = json.loads(cli(crdb_delta_bin, *args, "--json").stdout)
    assert set(report["tables"]) == {"usertable"}, report["tables"].keys()
    assert report["tables"]["usertable"]["target"] == "ut"
    assert not (tmp_path / "d2" / "orders").exists()


def test_a_column_typed_double_from_json_numbers_is_said(crdb_delta_bin, tmp_path):
    feed = tmp_path / "feed"
    feed.mkdir()
    window(feed, 0, '{"id": 1, "amount": 12.5}')
    p = cli(crdb_delta_bin, "sync", "--source", str(feed), "--target", str(tmp_path / "d"))
    assert p.returncode == 0, p.stderr
    assert "typed double from JSON numbers" in p.stderr and "tables.t.columns.amount" in p.stderr
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"tables": {"t": {"columns": {"amount": "DECIMAL(10,2)"}}}}))
    p = cli(crdb_delta_bin, "sync", "--source", str(feed), "--target", str(tmp_path / "d2"),
            "--config", str(cfg))
    assert p.returncode == 0 and "typed double" not in p.stderr, p.stderr
