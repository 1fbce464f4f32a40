#!/usr/bin/env python3
"""Fan-out figures (docs/benchmarks.md, "Tables fanned out across instances"), release build,
Azurite.

    .tools/venv/bin/python scripts/bench_fan_out.py --windows 8

One simulated changefeed of several tables (`--tables`, `--changes` per table per 10 s window)
is applied by the handler in three set-ups, each into a fresh target, one after the other in
one run, with RESOLVED -> every table committed measured by `crdb-delta pump` (one blob at a
time in name order, as Event Grid delivers them; with fan-out, pump hands each answer's
`tables` messages to ApplyTable and waits for them all, as the queue and the instances would):

  one     one instance (`serve`) pinned to one core, no fan-out: all tables in the RESOLVED's
          invocation
  one-fo  the same instance with fan-out: what fanning out costs on its own
  two-fo  two instances, each pinned to a core of its own, with fan-out: the messages of a
          RESOLVED are shared between them, as two Flex Consumption instances taking them
          from the queue would

Pinning (`taskset`) stands for instances that each have their own cores: on one 2-core machine
it is the only way to show what a second instance adds. The CPU seconds of each `serve` and of
Azurite (found with `pgrep`, when it runs) are printed per set-up: Azurite is one Node process on
the same two cores, and can be what bounds a set-up. Ratios, not absolute times: the machine is
noisy.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
sys.path.insert(0, str(ROOT / "scripts"))
from oracle import free_port  # noqa: E402
from test_sync_oracle import create_container  # noqa: E402
from bench_handler import BIN, p95, setup, wait_port  # noqa: E402

FAN_OUT = dict(CRDB_DELTA_FAN_OUT="true", CRDB_DELTA_APPLY_QUEUE="crdb-delta-tables")


def serve(env: dict, container: str, target: str, config: Path, cpu: int, extra: dict):
    port = free_port()
    p = subprocess.Popen(
        ["taskset", "-c", str(cpu), str(BIN), "serve"],
        env=dict(env, FUNCTIONS_CUSTOMHANDLER_PORT=str(port),
                 CRDB_DELTA_SOURCE=f"azure://{container}/feed",
                 CRDB_DELTA_TARGET=f"azure://{container}/{target}",
                 CRDB_DELTA_CONFIG=str(config), **extra),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, p)
    return p, f"http://127.0.0.1:{port}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory of a process so far (Linux `VmHWM`), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def azurite_pid() -> int | None:
    out = subprocess.run(["pgrep", "-f", "azurite-blob"], capture_output=True, text=True).stdout
    pids = [int(p) for p in out.split()]
    return pids[0] if pids else None


def run_setup(env, container, config, name, instances, fan_out):
    procs = [serve(env, container, f"delta-{name}", config, cpu, FAN_OUT if fan_out else {})
             for cpu in range(instances)]
    emulator = azurite_pid()
    emulator_before = cpu_seconds(emulator) if emulator else 0.0
    cpu = {}
    try:
        cmd = [str(BIN), "pump", "--source", f"azure://{container}/feed",
               "--handler", procs[0][1], "--once", "--concurrency", "1"]
        for _, url in procs:
            cmd += ["--apply-handler", url]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        cpu["serve"] = [round(cpu_seconds(p.pid), 2) for p, _ in procs]
        cpu["serve_peak_rss_mib"] = [round(peak_rss_mib(p.pid)) for p, _ in procs]
        if emulator:
            cpu["azurite"] = round(cpu_seconds(emulator) - emulator_before, 2)
    finally:
        for p, _ in procs:
            p.terminate()
            p.wait()
    report = json.loads(out)
    assert report["failed"] == 0, report
    return [ms for _, ms in report["resolved_ms"]], cpu


def fingerprint(base: str, container: str, target: str, tables: list[str]) -> dict:
    """Each table's rows (read by delta-rs, deletion vectors applied), as a digest."""
    import hashlib
    from oracle import read_table
    opts = {"account_name": "devstoreaccount1", "use_emulator": "true", "allow_http": "true"}
    os.environ["AZURITE_BLOB_STORAGE_URL"] = base
    out = {}
    for t in tables:
        rows = read_table(f"az://{container}/{target}/{t}", storage_options=opts)
        lines = sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)
        out[t] = (len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16])
    return out


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=8, help="RESOLVED windows (default 8)")
    ap.add_argument("--tables", default="usertable,orders", help="simulated tables")
    ap.add_argument("--changes", type=int, default=50_000,
                    help="changes per window, all tables together (default 50,000)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="the three set-ups this many times, alternating (default 1)")
    args = ap.parse_args()
    azurite, endpoint, env = setup(extent_mib=8192)
    base = env["AZURITE_BLOB_STORAGE_URL"]
    scratch = None
    try:
        scratch = tempfile.TemporaryDirectory(prefix="bench-fan-out-")
        work = Path(scratch.name)
        container = "fo" + uuid.uuid4().hex[:10]
        create_container(endpoint, container)
        truth = work / "truth"
        subprocess.run(
            [str(BIN), "simulate", "--out", f"azure://{container}/feed", "--truth", str(truth),
             "--tables", args.tables, "--initial-rows", "1000", "--windows", str(args.windows),
             "--events-per-window", str(args.changes), "--window-ms", "10000",
             "--restart-at", "0", "--schema-change-at", "0", "--truth-states", "none"],
            env=env, check=True, stdout=subprocess.DEVNULL)
        manifest = json.loads((truth / "manifest.json").read_text())
        config = work / "config.json"
        config.write_text(json.dumps({"tables": {t["name"]: {
            "primary_key": t["primary_key"],
            "columns": {c["name"]: c["type"] for c in t["columns"]}}
            for t in manifest["tables"]}}))
        setups = [("one", 1, False), ("one-fo", 1, True), ("two-fo", 2, True)]
        lat: dict[str, list[int]] = {s[0]: [] for s in setups}
        for r in range(args.rounds):
            for name, instances, fan_out in setups:
                ms, cpu = run_setup(env, container, config, f"{name}-{r}", instances, fan_out)
                # The first RESOLVED applies the initial scan; the others one window each.
                lat[name] += ms[1:]
                print(f"round {r} {name:>6}: RESOLVED -> all tables committed ms {ms}; "
                      f"CPU s and peak RSS {cpu}", flush=True)
        # Every set-up's tables hold the same rows.
        names = [t["name"] for t in manifest["tables"]]
        states = {f"{name}-{r}": fingerprint(base, container, f"delta-{name}-{r}", names)
                  for name, _, _ in setups for r in range(args.rounds)}
        first = next(iter(states.values()))
        assert all(s == first for s in states.values()), states
        one = statistics.median(lat["one"])
        print(f"\n{len(manifest['tables'])} tables, {args.changes:,} changes per window, "
              f"{args.windows} windows x {args.rounds} round(s)")
        print("| set-up | median ms | p95 ms | / one instance |")
        print("|---|---|---|---|")
        for name, _, _ in setups:
            med = statistics.median(lat[name])
            print(f"| {name} | {med:.0f} | {p95(lat[name]):.0f} | {med / one:.2f} |")
        print(json.dumps({"latency_ms": lat, "tables": first}))
    finally:
        if azurite:
            azurite.terminate()
        # Truth files of large windows run to gigabytes: never leave them behind.
        if scratch:
            scratch.cleanup()


if __name__ == "__main__":
    main()
