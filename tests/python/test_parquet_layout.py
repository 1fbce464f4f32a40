"""Our simulated Parquet files, read by pyarrow (a reader that is not our writer), have
CockroachDB's physical layout (format spec §4.4-4.5)."""

import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest


def simulate(bin_path, tmp_path):
    out = tmp_path / "feed"
    subprocess.run(
        [bin_path, "simulate", "--out", str(out), "--truth", str(tmp_path / "truth"), "--format", "parquet",
         "--tables", "kitchen_sink,orders", "--windows", "1", "--initial-rows", "40"],
        check=True, capture_output=True)
    return out


def files(out, topic):
    return sorted(p for p in Path(out).rglob("*.parquet") if f"-{topic}-" in p.name)


def test_layout_is_cockroachdbs(crdb_delta_bin, tmp_path):
    out = simulate(crdb_delta_bin, tmp_path)
    # Unconstrained DECIMAL's precision 2147483647 stops pyarrow from even opening the file.
    with pytest.raises(Exception, match="precision"):
        pq.read_metadata(files(out, "kitchen_sink")[0])
    md = pq.read_metadata(files(out, "orders+details")[0])
    assert md.created_by == "cockroachdb"
    assert md.metadata is None  # no key-value metadata in production files
    schema = md.schema
    cols = {schema.column(i).path: schema.column(i) for i in range(len(schema))}
    for path, c in cols.items():
        assert c.max_definition_level == 1, f"{path} must be OPTIONAL"
    assert cols["amount"].physical_type == "BYTE_ARRAY"
    assert str(cols["amount"].logical_type) == "Decimal(precision=12, scale=2)"
    assert cols["id"].physical_type == "INT64"
    assert cols["customer"].physical_type == "BYTE_ARRAY" and str(cols["customer"].logical_type) == "String"
    names = [schema.column(i).name for i in range(len(schema))]
    assert names[-2:] == ["__crdb__event_type", "__crdb__updated"]


def test_family_files_carry_the_key_and_their_columns(crdb_delta_bin, tmp_path):
    out = simulate(crdb_delta_bin, tmp_path)
    got = {fam: pq.ParquetFile(files(out, f"orders+{fam}")[0]).schema_arrow.names for fam in ["primary", "details", "audit"]}
    assert got["primary"] == ["id", "status", "created", "__crdb__event_type", "__crdb__updated"]
    assert got["details"] == ["id", "customer", "amount", "note", "__crdb__event_type", "__crdb__updated"]
    assert got["audit"] == ["id", "version", "updated_by", "__crdb__event_type", "__crdb__updated"]


def test_standard_readers_fall_into_the_decimal_trap(crdb_delta_bin, tmp_path):
    """pyarrow reads DECIMAL(12,2) text bytes as a two's-complement integer: the values differ
    from the truth, which is why crdb-delta parses the text itself."""
    out = simulate(crdb_delta_bin, tmp_path)
    truth = [json.loads(l) for l in (tmp_path / "truth" / "orders" / "events.ndjson").read_text().splitlines()]
    expected = {e["after"]["amount"] for e in truth if e["family"] == "details" and e["after"] and e["after"]["amount"]}
    table = pq.read_table(files(out, "orders+details")[0], columns=["amount"])
    read = {format(v, "f") for v in table.column("amount").to_pylist() if v is not None}
    assert read and not (read & expected)
