"""Shared test set-up: golden files of the official code (shared/golden)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

GOLDEN_DIR = Path(
    os.environ.get(
        "VMR_GOLDEN_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "golden"
    )
)

# fixture name -> golden file prefix; each test taking the fixture runs once per file.
GOLDEN_FIXTURES = {"mgpn_golden": "mgpn"}


def golden_files(prefix: str) -> list:
    files = sorted(GOLDEN_DIR.glob(f"{prefix}_*.npz")) if GOLDEN_DIR.is_dir() else []
    if files:
        return [pytest.param(f, id=f.stem) for f in files]
    reason = f"no {prefix}_*.npz in {GOLDEN_DIR} (set VMR_GOLDEN_DIR to the golden folder)"
    return [pytest.param(None, id=f"{prefix}-absent", marks=pytest.mark.skip(reason=reason))]


def pytest_generate_tests(metafunc):
    for fixture, prefix in GOLDEN_FIXTURES.items():
        if fixture in metafunc.fixturenames:
            metafunc.parametrize(fixture, golden_files(prefix))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than 30 s on a 2-core CPU")
