"""Shared fixtures. Real datasets are found by one helper and skipped with a reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """$SPERMHEAD_TEST_DATA, else ../shared/datasets beside the repo; None where absent."""
    candidates = [os.environ.get("SPERMHEAD_TEST_DATA"), REPO.parent / "shared" / "datasets"]
    for c in candidates:
        if c and (Path(c) / "HuSHeM").is_dir() and (Path(c) / "SCIAN-MorphoSpermGS").is_dir():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def real_data() -> Path:
    found = real_data_dir()
    if found is None:
        pytest.skip("real datasets not found: set SPERMHEAD_TEST_DATA or place them in ../shared/datasets")
    return found
