"""The oracle: what a synced Delta table must hold, derived from the simulator's ground truth,
and the table as read by a reader that is not our writer (Python `deltalake` + pyarrow).

Values are compared in crdb-delta's canonical JSON (core/src/canonical.rs): numbers as numbers
(NaN/±Infinity as strings), decimals with their scale's digits, dates `YYYY-MM-DD`,
timestamps `YYYY-MM-DDTHH:MM:SS[.f]` (+`Z` when zoned), bytes `\\x`+hex, lists as lists.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable, QueryBuilder

META_PREFIX = "__crdb_"


def _frac(micros: int) -> str:
    return f".{micros:06d}".rstrip("0") if micros else ""


def canon(value, typ: pa.DataType):
    """One Arrow value (as pyarrow's to_pylist gives it) in canonical JSON form."""
    if value is None:
        return None
    if pa.types.is_floating(typ):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return float(value)
    if pa.types.is_decimal(typ):
        q = decimal.Decimal(1).scaleb(-typ.scale)
        return str(value.quantize(q)) if typ.scale > 0 else str(int(value))
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ) or pa.types.is_binary_view(typ):
        return "\\x" + value.hex()
    if pa.types.is_date(typ):
        return value.isoformat()
    if pa.types.is_timestamp(typ):
        if isinstance(value, dt.datetime):
            if value.tzinfo is not None:
                value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
            s = value.strftime("%Y-%m-%dT%H:%M:%S") + _frac(value.microsecond)
        else:  # pandas Timestamp out of range etc.
            s = str(value)
        return s + ("Z" if typ.tz is not None else "")
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return [canon(v, typ.value_type) for v in value]
    if pa.types.is_integer(typ) or pa.types.is_boolean(typ) or pa.types.is_string(typ):
        return value
    if pa.types.is_large_string(typ) or pa.types.is_string_view(typ):
        return value
    raise TypeError(f"no canonical form for {typ}")


def normalize(v):
    """Truth JSON numbers: ints stay ints, floats compare as floats."""
    if isinstance(v, list):
        return [normalize(x) for x in v]
    return v


def has_deletion_vectors(t: DeltaTable) -> bool:
    return "deletionVectors" in (t.protocol().reader_features or [])


def read_table(uri: str, version: int | None = None, storage_options=None) -> list[dict]:
    """Every row of a Delta table, canonical, read by delta-rs' Python reader + pyarrow.

    Tables with deletion vectors are read through delta-rs' SQL reader (DataFusion), which
    applies them; `to_pyarrow_table` refuses such tables."""
    t = DeltaTable(uri, version=version, storage_options=storage_options)
    if has_deletion_vectors(t):
        data = pa.table(QueryBuilder().register("t", t).execute("select * from t"))
    else:
        data = t.to_pyarrow_table()
    cols = {name: data.column(name) for name in data.column_names}
    rows = []
    pylists = {name: col.to_pylist() for name, col in cols.items()}
    for i in range(data.num_rows):
        rows.append({name: canon(pylists[name][i], cols[name].type) for name in cols})
    return rows


def key_of(row: dict, key: list[str]) -> str:
    return json.dumps([row[k] for k in key])


def _freeze(row: dict, columns: list[str]) -> str:
    return json.dumps({c: row.get(c) for c in columns}, sort_keys=True)


def load_truth(truth: Path):
    manifest = json.loads((truth / "manifest.json").read_text())
    defs = {t["name"]: t for t in manifest["tables"]}
    return manifest, defs


def events(truth: Path, table: str) -> list[dict]:
    lines = (truth / table / "events.ndjson").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def state(truth: Path, table: str, ts33: str) -> list[dict]:
    path = truth / table / "state" / f"{ts33}.ndjson"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def hlc_of(ts33: str) -> str:
    """33-digit name timestamp -> `<wall>.<logical>`."""
    t = dt.datetime.strptime(ts33[:14], "%Y%m%d%H%M%S").replace(tzinfo=dt.timezone.utc)
    wall = int(t.timestamp()) * 1_000_000_000 + int(ts33[14:23])
    return f"{wall}.{ts33[23:]}"


def data_columns(rows: list[dict]) -> list[str]:
    return sorted({c for r in rows for c in r if not c.startswith(META_PREFIX)})


def changes(truth_events: list[dict], key_cols: list[str], families: list[str]):
    """Family messages merged per (key, updated), in HLC order per key.

    Yields (key, updated, is_row_delete, columns-set) where columns-set maps the columns the
    change carries to their values."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for e in truth_events:
        groups[(json.dumps(e["key"]), e["updated"])].append(e)
    out = []
    for (key, updated), parts in groups.items():
        fams = {p["family"]: p for p in parts}
        primary = "primary" if "primary" in families else families[0]
        delete = primary in fams and fams[primary]["op"] == "d"
        cols = {}
        for p in parts:
            if p["after"] is not None:
                cols.update(p["after"])
        for k, v in zip(key_cols, json.loads(key)):
            cols[k] = v
        out.append((key, updated, delete, cols, sorted(fams)))
    out.sort(key=lambda c: (c[0], decimal.Decimal(c[1])))
    return out


def expect_update_delete(truth: Path, table: str, ts33: str) -> list[dict]:
    return state(truth, table, ts33)


def compare_rows(actual: list[dict], expected: list[dict], columns: list[str], what: str):
    a = Counter(_freeze(r, columns) for r in actual)
    e = Counter(_freeze(r, columns) for r in expected)
    missing = list((e - a).elements())[:3]
    extra = list((a - e).elements())[:3]
    assert a == e, (
        f"{what}: {sum(a.values())} rows vs {sum(e.values())} expected; "
        f"missing e.g. {missing}; unexpected e.g. {extra}"
    )


def expect_append_only(truth: Path, table: str, defs: dict) -> list[dict]:
    d = defs[table]
    rows = []
    for key, updated, delete, cols, fams in changes(events(truth, table), d["primary_key"], d["families"]):
        if delete:
            row = {k: v for k, v in zip(d["primary_key"], json.loads(key))}
            op = "d"
        else:
            row = dict(cols)
            op = None
        row["__crdb_hlc"] = updated
        row["__crdb_op_is_delete"] = delete
        rows.append(row)
    return rows


def expect_scd2(truth: Path, table: str, defs: dict) -> list[dict]:
    d = defs[table]
    out = []
    image = {}
    open_version: dict[str, dict] = {}
    for key, updated, delete, cols, _ in changes(events(truth, table), d["primary_key"], d["families"]):
        prev = open_version.pop(key, None)
        if prev is not None:
            prev["__crdb_end_hlc"] = updated
        if delete:
            image.pop(key, None)
            continue
        if len(d["families"]) == 1:
            # One family: every change carries the whole row (a dropped column is gone).
            img = dict(cols)
        else:
            img = dict(image.get(key, {}))
            img.update(cols)
        image[key] = img
        v = dict(img)
        v["__crdb_start_hlc"] = updated
        v["__crdb_end_hlc"] = None
        out.append(v)
        open_version[key] = v
    return out


def free_port() -> int:
    """A loopback port free now (it can be taken before use: callers retry)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def double_removes(table_dir: Path) -> list[str]:
    """Files removed while not live: removed by two commits with no re-add between (the sign
    of a commit that ignored a compaction). A file given a new deletion vector is removed and
    re-added in one commit: it stays live."""
    live: set[str] = set()
    removed_at: dict[str, int] = {}
    twice = []
    for entry in sorted((table_dir / "_delta_log").glob("*.json")):
        version = int(entry.stem)
        actions = [json.loads(line) for line in entry.read_text().splitlines() if line.strip()]
        for a in actions:
            if "remove" in a:
                path = a["remove"]["path"]
                if path not in live and path in removed_at:
                    twice.append(f"{path} removed at {removed_at[path]} and at {version}")
                live.discard(path)
                removed_at[path] = version
        for a in actions:
            if "add" in a:
                live.add(a["add"]["path"])
    return twice
