#!/usr/bin/env python3
"""A new handler instance's first RESOLVED, with and without the key-index warm-up, side by side.

    .tools/venv/bin/python scripts/bench_warm_up.py [--sizes 200000,2000000,2000000x10]
        [--keys uuid] [--changes 10000] [--rounds 3] [--gap 5] [--bin PATH]

For each table size: a YCSB `usertable` (random UUID keys by default, one short field) is
loaded by `sync` into a local folder, and the table and the feed's later windows are uploaded
to an in-memory Azurite. Then, ROUNDS times, for each of `warm_up` on and off (alternating
which goes first): a new `crdb-delta serve` gets one window's BlobCreated events (its data
files), then, GAP seconds later (a changefeed's files come over its resolved interval, 10 s by
default), the window's RESOLVED event; the RESOLVED invocation's duration is the latency. The
next window is posted to the same process the same way: its latency is the warm one, of an
instance that already applied the table. Each round's process starts from where the last one
left the table (each window changes CHANGES random keys).

Prints, per size: the first RESOLVED's latency with and without the warm-up, the warm
RESOLVED's, the warm-up's own seconds and MB (from its log line), and the table files the
first RESOLVED looked up in the key index (from its reply), and each process's peak RSS
(VmHWM, read before it stops). Medians over the rounds. Uses the
release build unless --bin names another.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, hlc_of, replicate, run, simulate_usertable  # noqa: E402
from reliability import (Azurite, blob_event, event_body, full_env, handler_config, post_raw,  # noqa: E402
                         wait_listening)

import oracle as o  # noqa: E402  (reliability put tests/python on the path)


def upload(az: Azurite, container: str, folder: Path, prefix: str, keep=lambda p: True) -> int:
    """Every file below FOLDER as `PREFIX/<relative path>`; returns the bytes sent."""
    sent = 0
    for p in sorted(folder.rglob("*")):
        if p.is_file() and keep(p):
            data = p.read_bytes()
            az.put_blob(container, f"{prefix}/{p.relative_to(folder).as_posix()}", data)
            sent += len(data)
    return sent


def windows_of(feed: Path, include_first: bool = False) -> list[tuple[list[tuple[str, int]], tuple[str, int]]]:
    """The feed's windows after its first RESOLVED (from the start with INCLUDE_FIRST): (data
    files, RESOLVED), names relative to the feed root, in order. A data file's name starts with
    its timestamp (33 digits), as a RESOLVED's does."""
    files = sorted((p.relative_to(feed).as_posix(), p.stat().st_size)
                   for p in feed.rglob("*") if p.is_file())
    ts = lambda rel: Path(rel).name[:33]  # noqa: E731
    resolved = sorted((f for f in files if f[0].endswith(".RESOLVED")), key=lambda f: ts(f[0]))
    out = []
    if include_first:
        data = [f for f in files if not f[0].endswith(".RESOLVED") and ts(f[0]) <= ts(resolved[0][0])]
        out.append((data, resolved[0]))
    for prev, r in zip(resolved, resolved[1:]):
        data = [f for f in files if not f[0].endswith(".RESOLVED") and ts(prev[0]) < ts(f[0]) <= ts(r[0])]
        out.append((data, r))
    return out


class Serve:
    """`crdb-delta serve` on the Azurite container, its log in LOG."""

    def __init__(self, binary: str, az: Azurite, container: str, config: Path, log: Path,
                 target: str = "delta"):
        self.port = o.free_port()
        self.log = log
        self.offset = log.stat().st_size if log.exists() else 0
        env = {"FUNCTIONS_CUSTOMHANDLER_PORT": str(self.port),
               "CRDB_DELTA_SOURCE": f"azure://{container}/feed",
               "CRDB_DELTA_TARGET": f"azure://{container}/{target}",
               "CRDB_DELTA_CONFIG": str(config),
               "CRDB_DELTA_LOG": "info,buoyant_kernel=warn",
               "AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": az.base}
        with open(log, "a") as f:
            self.proc = subprocess.Popen([binary, "serve"], env=full_env(env), stdout=subprocess.DEVNULL,
                                         stderr=f, stdin=subprocess.DEVNULL)
        wait_listening(self.proc, self.port, log)

    def post(self, container: str, name: str, size: int):
        r = post_raw(self.port, "BlobCreated", event_body(blob_event(f"feed/{name}", size, container)),
                     timeout=600)
        if r.status != 200:
            raise SystemExit(f"{name}: {r.status} {r.error} {r.body[:2000]}\n{self.own_log()[-3000:]}")
        return r

    def own_log(self) -> str:
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            return f.read().decode("utf-8", "replace")

    def peak_rss_mib(self) -> float:
        """The process's peak resident set so far (VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


LOOKED_UP = re.compile(r"(\d+) of (\d+) table file\(s\) looked up in the key index")
WARMED = re.compile(r"key index warmed .*?files=(\d+) .*?files_learned=(\d+) bytes_read=(\d+) .*?seconds=([\d.]+)")


def window(serve: Serve, container: str, w, gap: float) -> dict:
    """One window posted to SERVE: its data files, GAP seconds, its RESOLVED (timed)."""
    data, (rname, rsize) = w
    for name, size in data:
        serve.post(container, name, size)
    time.sleep(gap)
    r = serve.post(container, rname, rsize)
    m = LOOKED_UP.search(r.logs())
    return {"s": r.seconds, "indexed": int(m.group(1)) if m else 0, "read": int(m.group(2)) if m else 0,
            "reply": r.logs()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="200000,2000000,2000000x10")
    ap.add_argument("--keys", default="uuid", choices=["int", "uuid"])
    ap.add_argument("--changes", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gap", type=float, default=5.0,
                    help="seconds between a window's data events and its RESOLVED event")
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "crdb-delta"))
    ap.add_argument("--work", default=str(ROOT / "target" / "bench-warm-up"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    windows_needed = 1 + a.rounds * 2 * 2
    az = Azurite(work / "azurite.log")
    az.start()
    rows = []
    try:
        for token in a.sizes.split(","):
            size, copies = (int(x) for x in token.split("x")) if "x" in token else (int(token), 1)
            feed = work / f"usertable-{a.keys}-{size}-{a.changes}-{windows_needed}"
            simulate_usertable(a.bin, feed, size, windows_needed, a.changes,
                               "--mix", "0", "0.9", "0.1", "--file-size", str(64 << 20),
                               *(["--uuid-keys"] if a.keys == "uuid" else []))
            if copies > 1:
                feed = replicate(feed, copies)
                size *= copies
            changefeed = feed / "changefeed"
            resolved = sorted(hlc_of(p.name) for p in changefeed.rglob("*.RESOLVED"))
            target = work / f"delta-{a.keys}-{size}"
            shutil.rmtree(target, ignore_errors=True)
            run(a.bin, "sync", "--source", str(changefeed), "--target", str(target),
                "--manifest", str(feed / "truth" / "manifest.json"), "--until", resolved[0])
            container = f"w{size}"
            az.create_container(container)
            first_ts = min(p.name[:33] for p in changefeed.rglob("*.RESOLVED"))
            t0 = time.perf_counter()
            # The loaded table; the feed but its initial scan (applied already).
            mb = upload(az, container, target, "delta") / 1e6
            mb_feed = upload(az, container, changefeed, "feed",
                             keep=lambda p: p.name.endswith(".RESOLVED") or p.name[:33] > first_ts) / 1e6
            print(f"{size:,} rows: table {mb:.0f} MB and feed {mb_feed:.0f} MB uploaded in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            configs = {}
            for on in (True, False):
                path = work / f"config-{container}-{'on' if on else 'off'}.json"
                handler_config(feed / "truth", path)
                c = json.loads(path.read_text())
                c["warm_up"] = on
                path.write_text(json.dumps(c))
                configs[on] = path
            ws = iter(windows_of(changefeed))
            got = {True: [], False: []}
            for rnd in range(a.rounds):
                for on in ((True, False) if rnd % 2 == 0 else (False, True)):
                    serve = Serve(a.bin, az, container, configs[on], work / f"serve-{container}.log")
                    try:
                        first = window(serve, container, next(ws), a.gap)
                        warm = window(serve, container, next(ws), a.gap)
                        first["rss"] = serve.peak_rss_mib()
                    finally:
                        serve.stop()
                    m = WARMED.search(serve.own_log())
                    first["warm_up"] = (m and {"files": int(m.group(1)), "learned": int(m.group(2)),
                                               "mb": int(m.group(3)) / 1e6, "s": float(m.group(4))})
                    got[on].append((first, warm))
                    wu = first["warm_up"]
                    print(f"  round {rnd} warm_up={'on ' if on else 'off'}: first RESOLVED {first['s']:.3f} s "
                          f"({first['indexed']} of {first['read']} files looked up), warm {warm['s']:.3f} s, "
                          f"peak RSS {first['rss']:.0f} MiB"
                          + (f"; warm-up {wu['s']:.2f} s, {wu['mb']:.1f} MB, {wu['learned']}/{wu['files']} files"
                             if wu else ""), flush=True)
            med = lambda xs: statistics.median(xs)  # noqa: E731
            on, off = got[True], got[False]
            rows.append({
                "rows": size,
                "first_on": med([f["s"] for f, _ in on]), "first_off": med([f["s"] for f, _ in off]),
                "warm": med([w["s"] for _, w in on + off]),
                "warm_up_s": med([f["warm_up"]["s"] for f, _ in on if f["warm_up"]] or [0]),
                "warm_up_mb": med([f["warm_up"]["mb"] for f, _ in on if f["warm_up"]] or [0]),
                "looked_up": f"{on[0][0]['indexed']} of {on[0][0]['read']}",
                "rss_on": med([f["rss"] for f, _ in on]), "rss_off": med([f["rss"] for f, _ in off]),
            })
    finally:
        az.stop()
    print()
    print("| table rows | first RESOLVED, warm-up off | **first RESOLVED, warm-up on** | warm RESOLVED "
          "| on / warm | off / warm | warm-up s | warm-up MB read | files looked up (on) | peak RSS off / on |")
    print("|---" * 10 + "|")
    for x in rows:
        print(f"| {x['rows']:,} | {x['first_off']:.3f} s | **{x['first_on']:.3f} s** | {x['warm']:.3f} s "
              f"| {x['first_on'] / x['warm']:.2f}× | {x['first_off'] / x['warm']:.2f}× | {x['warm_up_s']:.2f} "
              f"| {x['warm_up_mb']:.0f} | {x['looked_up']} | {x['rss_off']:.0f} / {x['rss_on']:.0f} MiB |")
    if len(rows) > 1:
        base = rows[0]
        for x in rows[1:]:
            print(f"{x['rows']:,} / {base['rows']:,}: first RESOLVED with warm-up "
                  f"{x['first_on'] / base['first_on']:.2f}×, without {x['first_off'] / base['first_off']:.2f}×, "
                  f"warm {x['warm'] / base['warm']:.2f}×")


if __name__ == "__main__":
    main()
