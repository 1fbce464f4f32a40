"""The Functions handler (`crdb-delta serve`) fed by the event pump on Azurite, checked by the
independent reader against the simulator's ground truth.

`pump` posts every blob of the container as the Functions host forwards an Event Grid
BlobCreated invocation (twice, newest first); the handler buffers data files and applies each
RESOLVED (or, with fan-out, answers with one `tables` message per table, which pump delivers
to ApplyTable as the host would). The Delta tables must equal the truth at the last RESOLVED.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import oracle as o
from test_sync_oracle import TABLES, azurite_endpoint, check_final, create_container, run


def config_from_manifest(manifest: dict) -> dict:
    return {"tables": {
        t["name"]: {"primary_key": t["primary_key"],
                    "columns": {c["name"]: c["type"] for c in t["columns"]}}
        for t in manifest["tables"]
    }}


def simulated_feed(crdb_delta_bin, tmp_path: Path, tag: str, *simulate: str):
    """A simulated changefeed in a new Azurite container (`simulate` options), its truth in
    `tmp_path/truth` and the config a user would write in `tmp_path/config.json`. Returns the
    blob service's base URL, the environment that reaches it, the container and the manifest."""
    endpoint = azurite_endpoint()
    base = endpoint.rsplit("/", 1)[0]
    env = {"AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": base}
    container = tag + uuid.uuid4().hex[:12]
    create_container(endpoint, container)
    run(crdb_delta_bin, "simulate", "--out", f"azure://{container}/feed", "--truth",
        str(tmp_path / "truth"), *simulate, env=env)
    manifest = json.loads((tmp_path / "truth" / "manifest.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config_from_manifest(manifest)))
    return base, env, container, manifest


def wait_listening(handler: subprocess.Popen, port: int, log: Path) -> None:
    """Until `serve` accepts connections on PORT (at most a minute; its LOG if it exits)."""
    deadline = time.time() + 60
    while True:
        assert handler.poll() is None, log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.time() < deadline, "serve did not listen"
            time.sleep(0.02)


@pytest.mark.parametrize("function,fan_out", [("BlobCreated", False), ("BlobQueue", False),
                                               ("BlobCreated", True)])
def test_serve_and_pump_match_ground_truth(crdb_delta_bin, tmp_path, monkeypatch, function,
                                           fan_out):
    base, env, container, manifest = simulated_feed(
        crdb_delta_bin, tmp_path, "fn", "--tables", TABLES, "--initial-rows", "40", "--windows",
        "4", "--events-per-window", "120", "--straddle", "0.25", "--duplicate-rate", "0.05")

    port = o.free_port()
    serve_env = dict(os.environ, **env,
                     FUNCTIONS_CUSTOMHANDLER_PORT=str(port),
                     CRDB_DELTA_SOURCE=f"azure://{container}/feed",
                     CRDB_DELTA_TARGET=f"azure://{container}/delta",
                     CRDB_DELTA_CONFIG=str(tmp_path / "config.json"),
                     CRDB_DELTA_LOG="info,buoyant_kernel=warn")
    if fan_out:
        # Each RESOLVED's tables come back as `tables` messages; pump delivers them to
        # ApplyTable as the host and the queue would.
        serve_env.update(CRDB_DELTA_FAN_OUT="true", CRDB_DELTA_APPLY_QUEUE="crdb-delta-tables")
    log = open(tmp_path / "serve.log", "w")
    handler = subprocess.Popen([str(crdb_delta_bin), "serve"], env=serve_env,
                               stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_listening(handler, port, tmp_path / "serve.log")
        # The whole container (our own writes included), newest first, every event twice.
        p = run(crdb_delta_bin, "pump", "--source", f"azure://{container}", "--handler",
                f"http://127.0.0.1:{port}", "--function", function, "--once", "--duplicate",
                "--reverse", "--concurrency", "2", env=env)
        assert json.loads(p.stdout)["failed"] == 0
    finally:
        handler.terminate()
        handler.wait(timeout=30)
        log.close()

    monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", base)
    opts = {"account_name": "devstoreaccount1", "use_emulator": "true", "allow_http": "true"}
    check_final(tmp_path, "update_delete", reader_options=opts,
                uri=lambda t: f"az://{container}/delta/{t}")
    if fan_out:
        # The last RESOLVED is recorded with every table (the fan-out's own record).
        from deltalake import DeltaTable
        rec = DeltaTable(f"az://{container}/delta/_crdb_delta_resolved",
                         storage_options=opts).to_pyarrow_table().to_pylist()
        last = max(r["resolved"] for r in rec)
        want = sorted(t["name"] for t in manifest["tables"])
        assert sorted(r["table_name"] for r in rec if r["resolved"] == last) == want, rec


def test_checkpoints_are_written_after_the_invocation_answers(crdb_delta_bin, tmp_path):
    """A commit that makes a checkpoint due (every 10 versions) does not write it before the
    RESOLVED's invocation answers: `serve` writes it once no invocation is in flight. Held at
    `before-checkpoint`, every invocation still answers and no checkpoint exists; released, the
    checkpoints of every table that reached 10 versions appear, and the tables read back
    through them equal the truth."""
    # 12 RESOLVEDs, one invocation each, one commit each per table: versions 0..11 or more.
    _, env, container, _ = simulated_feed(
        crdb_delta_bin, tmp_path, "ck", "--tables", "usertable", "--initial-rows", "20",
        "--windows", "11", "--events-per-window", "20", "--straddle", "0", "--restart-at", "0")
    target = tmp_path / "delta"
    pause_dir = tmp_path / "pause"
    pause_dir.mkdir()
    port = o.free_port()
    serve_env = dict(os.environ, **env,
                     FUNCTIONS_CUSTOMHANDLER_PORT=str(port),
                     CRDB_DELTA_SOURCE=f"azure://{container}/feed",
                     CRDB_DELTA_TARGET=str(target),
                     CRDB_DELTA_CONFIG=str(tmp_path / "config.json"),
                     CRDB_DELTA_PAUSE="before-checkpoint",
                     CRDB_DELTA_PAUSE_DIR=str(pause_dir),
                     CRDB_DELTA_LOG="info,buoyant_kernel=warn")
    log = open(tmp_path / "serve.log", "w")
    handler = subprocess.Popen([str(crdb_delta_bin), "serve"], env=serve_env,
                               stdout=subprocess.DEVNULL, stderr=log)

    def checkpoints() -> dict[str, list[str]]:
        return {t.name: sorted(p.name for p in (t / "_delta_log").glob("*.checkpoint.parquet"))
                for t in target.iterdir() if (t / "_delta_log").is_dir()}

    try:
        wait_listening(handler, port, tmp_path / "serve.log")
        p = run(crdb_delta_bin, "pump", "--source", f"azure://{container}", "--handler",
                f"http://127.0.0.1:{port}", "--function", "BlobCreated", "--once", env=env)
        assert json.loads(p.stdout)["failed"] == 0
        # Every invocation answered; the first due checkpoint, started once none is in
        # flight, is held: none written yet.
        deadline = time.time() + 30
        while not (pause_dir / "before-checkpoint.paused").exists():
            assert time.time() < deadline, (checkpoints(), (tmp_path / "serve.log").read_text())
            time.sleep(0.05)
        assert not any(checkpoints().values()), checkpoints()
        versions = {t: len(list((target / t / "_delta_log").glob("*.json"))) for t in checkpoints()}
        due = {t for t, n in versions.items() if n >= 10}
        assert "usertable" in due and "_crdb_delta_resolved" in due, versions
        (pause_dir / "before-checkpoint.resume").touch()
        deadline = time.time() + 60
        while not all(checkpoints()[t] for t in due):
            assert time.time() < deadline, (checkpoints(), (tmp_path / "serve.log").read_text())
            time.sleep(0.1)
        assert all(c == ["00000000000000000009.checkpoint.parquet"]
                   for t, c in checkpoints().items() if t in due and versions[t] < 20), checkpoints()
    finally:
        handler.terminate()
        handler.wait(timeout=30)
        log.close()
    check_final(tmp_path, "update_delete",
                uri=lambda t: str(target / t))
