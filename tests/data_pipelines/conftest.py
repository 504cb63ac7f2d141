"""Shared fixtures of the dataset-module tests: where the real annotation files are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA_DIR = Path(
    os.environ.get(
        "VMR_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"
    )
)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The folder of the official annotation files (``shared/data``, see its SOURCES.md);
    tests that read them skip when it is absent (set VMR_SHARED_DATA to point elsewhere)."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(f"no shared annotation data at {SHARED_DATA_DIR} (set VMR_SHARED_DATA)")
    return SHARED_DATA_DIR
