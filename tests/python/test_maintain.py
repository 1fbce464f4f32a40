"""`crdb-delta maintain`: compaction (purging deletion vectors), checkpoint, log cleanup and
VACUUM keep every row, and the applies after it go on exactly once — checked against the
simulator's ground truth with Python `deltalake` as the reader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable

import oracle as o
from test_sync_oracle import TABLES, check_final, resolved_steps, run, simulate, sync


def files_and_dvs(uri: str) -> tuple[int, int]:
    t = DeltaTable(uri)
    dvs = pa.table(t.deletion_vectors()).to_pylist() if o.has_deletion_vectors(t) else []
    return len(t.file_uris()), sum(1 for d in dvs if not all(d["selection_vector"]))


def maintain(bin_path: Path, root: Path, *extra: str) -> list[dict]:
    return json.loads(run(bin_path, "maintain", "--target", str(root / "delta"), "--json",
                          *extra).stdout)


def test_compaction_purges_deletion_vectors_and_keeps_every_row(crdb_delta_bin, tmp_path):
    root = simulate(crdb_delta_bin, tmp_path, "json", 8)
    steps = resolved_steps(root)
    # The first half, one RESOLVED per commit: many small files, rows in deletion vectors.
    sync(crdb_delta_bin, root, "update_delete", "--until", o.hlc_of(steps[3]),
         "--max-window-bytes", "20000")
    uri = str(root / "delta" / "usertable")
    before_files, before_dvs = files_and_dvs(uri)
    assert before_dvs > 0 and before_files >= 3, (before_files, before_dvs)
    done = {u["table"]: u for u in maintain(crdb_delta_bin, root, "--retain-hours", "0")}
    u = done["usertable"]
    assert u["files_compacted"] >= 2 and u["rows_purged"] > 0, u
    assert u["compaction_skipped"] is None, u
    after_files, after_dvs = files_and_dvs(uri)
    assert after_files < before_files and after_dvs < before_dvs, (after_files, after_dvs)
    h = DeltaTable(uri).history(3)
    opt = next(x for x in h if x["operation"] == "OPTIMIZE")
    assert opt["crdbDelta"]["figures"]["filesCompacted"] == u["files_compacted"], opt
    # VACUUM with retention 0 deleted the compacted files; readers see the same rows.
    assert u["files_vacuumed"] >= u["files_compacted"], u
    # The RESOLVED record (one small file per step) is compacted too, and the next run still
    # lists from it (past the compaction's commit) instead of the whole root.
    assert done["_crdb_delta_resolved"]["files_compacted"] >= 2, done
    # The rest of the feed applies on top of the compacted table, exactly once.
    p = sync(crdb_delta_bin, root, "update_delete", "--max-window-bytes", "20000",
             env={"CRDB_DELTA_LOG": "crdb_delta=debug"})
    assert "bounded listing" in p.stderr, p.stderr[-2000:]
    check_final(root, "update_delete")


def test_log_cleanup_keeps_progress_exact_and_nothing_repeats(crdb_delta_bin, tmp_path):
    root = simulate(crdb_delta_bin, tmp_path, "json", 8)
    steps = resolved_steps(root)
    sync(crdb_delta_bin, root, "append_only", "--until", o.hlc_of(steps[3]),
         "--max-window-bytes", "20000")
    # Every commit older than now expires: the cleanup keeps only the checkpoint onwards.
    # (Not on kitchen_sink: Python deltalake's ALTER adds `invariants` to a writer-7 table's
    # features, which delta-rs without DataFusion then refuses to write.)
    cleaned_tables = ["usertable", "orders"]
    for t in cleaned_tables:
        DeltaTable(str(root / "delta" / t)).alter.set_table_properties(
            {"delta.logRetentionDuration": "interval 0 seconds"})
    done = maintain(crdb_delta_bin, root, "--no-compact")
    cleaned = {u["table"]: u["log_files_deleted"] for u in done}
    assert all(cleaned[t] > 0 for t in cleaned_tables), cleaned
    assert set(TABLES.split(",")) <= set(cleaned), cleaned
    log = sorted((root / "delta" / "usertable" / "_delta_log").glob("*.json"))
    assert int(log[0].stem) > 0, "version 0 was cleaned up"
    # The history restarts at the checkpoint; the next run resumes at the exact RESOLVED:
    # append_only would show any event applied twice.
    sync(crdb_delta_bin, root, "append_only", "--max-window-bytes", "20000")
    check_final(root, "append_only")


def test_small_files_a_step_changes_are_rewritten_once_they_pile_up(crdb_delta_bin, tmp_path):
    """Between compactions, one commit per RESOLVED adds a small file per step. With deletion
    vectors alone they pile up (each probed by every later step); from 8 small files on, a
    step rewrites the small files it changes into its new file, for update_delete and scd2."""
    root = simulate(crdb_delta_bin, tmp_path, "json", 24)
    for mode in ["update_delete", "scd2"]:
        counts = {}
        for label, extra in [("pure", ["--rewrite-files-below", "0"]), ("default", [])]:
            shutil.rmtree(root / "delta", ignore_errors=True)
            report = json.loads(sync(crdb_delta_bin, root, mode, "--commit-each-resolved",
                                     *extra).stdout)
            check_final(root, mode)
            t = report["tables"]["usertable"]
            counts[label] = (files_and_dvs(str(root / "delta" / "usertable"))[0],
                             t["files_rewritten"], t["files_with_deletion_vectors"])
        pure, default = counts["pure"], counts["default"]
        # Pure deletion vectors: nothing rewritten, files grow with the steps (a file goes only
        # when all of its rows are deleted).
        assert pure[1] == 0 and pure[2] > 0 and pure[0] > 12, (mode, counts)
        # Default: small files were rewritten once 8 had piled up, and the live files stay
        # near that bound instead of growing with the steps.
        assert default[1] > 0 and default[2] > 0, (mode, counts)
        assert default[0] <= 9, (mode, counts)


def test_log_retention_hours_overrides_the_tables_retention(crdb_delta_bin, tmp_path):
    """`maintain --log-retention-hours 0` cleans the log up to the checkpoint without the table
    property, and the next run resumes at the exact RESOLVED (append_only shows repeats)."""
    root = simulate(crdb_delta_bin, tmp_path, "json", 8)
    steps = resolved_steps(root)
    sync(crdb_delta_bin, root, "append_only", "--until", o.hlc_of(steps[3]),
         "--max-window-bytes", "20000")
    kept = {u["table"]: u["log_files_deleted"] for u in maintain(crdb_delta_bin, root, "--no-compact")}
    assert kept["usertable"] == 0, kept  # 30 days by default: nothing is that old
    done = {u["table"]: u["log_files_deleted"]
            for u in maintain(crdb_delta_bin, root, "--no-compact", "--log-retention-hours", "0")}
    assert done["usertable"] > 0, done
    log = sorted((root / "delta" / "usertable" / "_delta_log").glob("*.json"))
    assert int(log[0].stem) > 0, "version 0 was cleaned up"
    sync(crdb_delta_bin, root, "append_only", "--max-window-bytes", "20000")
    check_final(root, "append_only")


def test_older_tables_get_the_checkpoint_interval_once(crdb_delta_bin, tmp_path):
    """A table made before new tables got `delta.checkpointInterval` 10 (its create commit
    without the property, as older crdb-delta versions wrote it) gets it from `maintain`, once;
    the applies after that metadata commit go on exactly once."""
    root = simulate(crdb_delta_bin, tmp_path, "json", 6)
    steps = resolved_steps(root)
    sync(crdb_delta_bin, root, "update_delete", "--until", o.hlc_of(steps[1]))
    uri = str(root / "delta" / "usertable")
    key = "delta.checkpointInterval"
    assert DeltaTable(uri).metadata().configuration.get(key) == "10"
    log = root / "delta" / "usertable" / "_delta_log"
    assert not list(log.glob("*.checkpoint.parquet")), "a checkpoint would also hold the property"
    # The create commit as an older version wrote it: the same metadata without the property.
    first = log / "00000000000000000000.json"
    lines = []
    for line in first.read_text().splitlines():
        action = json.loads(line)
        if "metaData" in action:
            del action["metaData"]["configuration"][key]
        lines.append(json.dumps(action))
    first.write_text("\n".join(lines) + "\n")
    assert key not in DeltaTable(uri).metadata().configuration
    protocol = DeltaTable(uri).protocol()
    done = {u["table"]: u for u in maintain(crdb_delta_bin, root, "--no-compact")}
    assert done["usertable"]["checkpoint_interval_set"] is True, done
    assert DeltaTable(uri).metadata().configuration.get(key) == "10"
    # The property alone: no protocol change (delta-rs' own property operation adds writer
    # features that delta-rs then refuses to write to).
    assert DeltaTable(uri).protocol() == protocol
    again = {u["table"]: u for u in maintain(crdb_delta_bin, root, "--no-compact")}
    assert again["usertable"]["checkpoint_interval_set"] is False, again
    sync(crdb_delta_bin, root, "update_delete")
    check_final(root, "update_delete")
