"""Shared fixtures for the Python reader tests (run by scripts/test with .tools/venv)."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def crdb_delta_bin() -> Path:
    """Path of the built crdb-delta binary.

    Taken from $CRDB_DELTA_BIN (set by scripts/test), else
    ${CARGO_TARGET_DIR:-target}/debug/crdb-delta under the repository root.
    Fails the test if the binary is not there.
    """
    env = os.environ.get("CRDB_DELTA_BIN")
    if env:
        path = Path(env)
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
        if not target.is_absolute():
            target = REPO_ROOT / target
        path = target / "debug" / "crdb-delta"
    if not path.is_file():
        pytest.fail(
            f"crdb-delta binary not found at {path}: run `cargo build --bin crdb-delta` "
            "(or scripts/test), or set CRDB_DELTA_BIN"
        )
    return path
