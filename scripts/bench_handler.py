#!/usr/bin/env python3
"""Function handler figures (docs/benchmarks.md, "Function handler"), release build, Azurite.

    .tools/venv/bin/python scripts/bench_handler.py        # after scripts/test installed the tools
    CRDB_DELTA_BIN=/path/to/other/crdb-delta .tools/venv/bin/python scripts/bench_handler.py
    .tools/venv/bin/python scripts/bench_handler.py --windows 20   # more windows: a p95 that means something

Cold start: `crdb-delta serve` spawn -> port accepting (5 runs). RESOLVED -> commit: a simulated
usertable changefeed (10 x 100-byte fields) with 10,000 and 100,000 changes per 10 s RESOLVED
window is posted by `crdb-delta pump` one blob at a time in name order, as Event Grid delivers
them; a RESOLVED invocation returns once its apply is committed, so its duration is the latency
(with `--fan-out`, pump posts the answer's table messages to ApplyTable and waits for them all).
Sustained rate: the changes per window divided by that latency is what one instance keeps up
with at resolved='10s' while the latency stays under 10 s.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from oracle import free_port  # noqa: E402
from test_sync_oracle import create_container  # noqa: E402

# Another binary (e.g. an older commit's, to compare side by side): CRDB_DELTA_BIN, not built.
BIN = Path(os.environ.get("CRDB_DELTA_BIN", ROOT / "target" / "release" / "crdb-delta"))


def wait_port(port: int, proc, timeout=60.0) -> float:
    t0 = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return time.perf_counter() - t0
        except OSError:
            if time.perf_counter() - t0 > timeout:
                raise SystemExit(f"{proc.args[0]} did not listen")
            time.sleep(0.001)


def setup(extent_mib: int):
    """The release binary (built unless CRDB_DELTA_BIN names one), and Azurite: the one
    AZURITE_BLOB_ENDPOINT names, else a fresh one started here (returned, to stop). Returns
    (Azurite process or None, blob endpoint, environment for crdb-delta)."""
    if "CRDB_DELTA_BIN" not in os.environ:
        subprocess.run(["cargo", "build", "--release", "--bin", "crdb-delta"], cwd=ROOT, check=True)
    azurite = None
    endpoint = os.environ.get("AZURITE_BLOB_ENDPOINT")
    if not endpoint:
        port = free_port()
        azurite = subprocess.Popen(
            [str(ROOT / ".tools/node/node_modules/.bin/azurite-blob"), "--blobHost", "127.0.0.1",
             "--blobPort", str(port), "--inMemoryPersistence", "--extentMemoryLimit",
             str(extent_mib), "--disableTelemetry", "--skipApiVersionCheck"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        endpoint = f"http://127.0.0.1:{port}/devstoreaccount1"
        wait_port(port, azurite, timeout=30.0)  # a fixed sleep was sometimes too short
    base = endpoint.rsplit("/", 1)[0]
    env = dict(os.environ, AZURE_STORAGE_USE_EMULATOR="true", AZURITE_BLOB_STORAGE_URL=base,
               CRDB_DELTA_LOG="warn")
    return azurite, endpoint, env


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    ranked = sorted(values)
    return ranked[max(0, -(-95 * len(ranked) // 100) - 1)]


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=4, help="RESOLVED windows per size (default 4)")
    ap.add_argument("--tables", default="usertable",
                    help="simulated tables (comma-separated; default usertable)")
    ap.add_argument("--fan-out", action="store_true",
                    help="CRDB_DELTA_FAN_OUT: each RESOLVED's tables as ApplyTable messages, "
                         "which pump delivers; the latency is then RESOLVED -> every table committed")
    args = ap.parse_args()
    fan_out = dict(CRDB_DELTA_FAN_OUT="true", CRDB_DELTA_APPLY_QUEUE="t") if args.fan_out else {}
    azurite, endpoint, env = setup(extent_mib=4096)
    results = {}
    scratch = None
    try:
        scratch = tempfile.TemporaryDirectory(prefix="bench-handler-")
        work = Path(scratch.name)
        # Cold start.
        container = "cold" + uuid.uuid4().hex[:10]
        create_container(endpoint, container)
        starts = []
        for _ in range(5):
            port = free_port()
            p = subprocess.Popen([str(BIN), "serve"], env=dict(
                env, FUNCTIONS_CUSTOMHANDLER_PORT=str(port),
                CRDB_DELTA_SOURCE=f"azure://{container}/feed",
                CRDB_DELTA_TARGET=f"azure://{container}/delta"),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            starts.append(wait_port(port, p) * 1000)
            p.terminate()
            p.wait()
        results["cold_start_ms"] = starts
        print(f"cold start (ms): {', '.join(f'{s:.1f}' for s in starts)}")

        for per_window in (10_000, 100_000):
            container = f"w{per_window}" + uuid.uuid4().hex[:8]
            create_container(endpoint, container)
            truth = work / f"truth-{per_window}"
            subprocess.run(
                [str(BIN), "simulate", "--out", f"azure://{container}/feed", "--truth", str(truth),
                 "--tables", args.tables, "--initial-rows", "1000", "--windows", str(args.windows),
                 "--events-per-window", str(per_window), "--window-ms", "10000",
                 "--restart-at", "0", "--schema-change-at", "0", "--truth-states", "none"],
                env=env, check=True, stdout=subprocess.DEVNULL)
            manifest = json.loads((truth / "manifest.json").read_text())
            config = {"tables": {t["name"]: {
                "primary_key": t["primary_key"],
                "columns": {c["name"]: c["type"] for c in t["columns"]}}
                for t in manifest["tables"]}}
            (work / "config.json").write_text(json.dumps(config))
            port = free_port()
            serve = subprocess.Popen([str(BIN), "serve"], env=dict(
                env, FUNCTIONS_CUSTOMHANDLER_PORT=str(port),
                CRDB_DELTA_SOURCE=f"azure://{container}/feed",
                CRDB_DELTA_TARGET=f"azure://{container}/delta",
                CRDB_DELTA_CONFIG=str(work / "config.json"), **fan_out),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_port(port, serve)
                out = subprocess.run(
                    [str(BIN), "pump", "--source", f"azure://{container}/feed", "--handler",
                     f"http://127.0.0.1:{port}", "--once", "--concurrency", "1"],
                    env=env, check=True, capture_output=True, text=True).stdout
            finally:
                serve.terminate()
                serve.wait()
            report = json.loads(out)
            assert report["failed"] == 0, report
            lat = [ms for _, ms in report["resolved_ms"]]
            # The first RESOLVED applies the 1,000-row initial scan; the others one window each.
            windows = lat[1:]
            med = statistics.median(windows)
            results[f"resolved_ms_{per_window}"] = lat
            print(f"{per_window:>7} changes/window: RESOLVED -> commit ms {lat} "
                  f"(windows: median {med:.0f}, p95 {p95(windows):.0f}); keeps up with ~{per_window / (med / 1000):,.0f} "
                  f"changes/s at resolved='10s' ({'yes' if med < 10_000 else 'no'} for "
                  f"{per_window / 10:,.0f}/s)")
    finally:
        if azurite:
            azurite.terminate()
        # Truth files of large windows run to gigabytes: never leave them behind.
        if scratch:
            scratch.cleanup()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
