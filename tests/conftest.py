"""Shared test set-up: golden files of the official code (shared/golden) and the official
annotation files (shared/data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

# The library turns on a persistent XLA cache under ~/.cache (vmr_jax/xla_cache.py); tests
# stay isolated: off, except where the jax_compilation_cache fixture sets its own folder.
os.environ["VMR_JAX_CACHE"] = "off"

GOLDEN_DIR = Path(
    os.environ.get(
        "VMR_GOLDEN_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "golden"
    )
)

SHARED_DATA_DIR = Path(
    os.environ.get(
        "VMR_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
)

# fixture name -> golden file prefix; each test taking the fixture runs once per file.
GOLDEN_FIXTURES = {
    "mgpn_golden": "mgpn",
    "tan2d_golden": "tan2d",
    "didemo_eval_golden": "eval_didemo",
    "tvr_eval_golden": "eval_tvr",
    "xml_golden": "xml",
}


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


@pytest.fixture(scope="module")
def jax_compilation_cache(request, tmp_path_factory):
    """Persistent XLA cache in pytest's cache folder (kept between sessions, shared by xdist
    workers): runs of the same tiny model compile once.  Speed only."""
    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    saved = {name: getattr(jax.config, name) for name in names}
    cache = getattr(request.config, "cache", None)
    path = (
        cache.mkdir("jax_compilation_cache")
        if cache is not None
        else tmp_path_factory.getbasetemp() / "jax_compilation_cache"
    )
    jax.config.update(names[0], str(path))
    jax.config.update(names[1], 0)
    jax.config.update(names[2], 0)
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The folder of the official annotation files (``shared/data``, see its SOURCES.md);
    tests that read them skip when it is absent (set VMR_SHARED_DATA to point elsewhere)."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(f"no shared annotation data at {SHARED_DATA_DIR} (set VMR_SHARED_DATA)")
    return SHARED_DATA_DIR


def run_on_fake_devices(script: str, *args: str, devices: int = 8) -> dict:
    """Runs ``script`` (``python -c``) in a fresh process with ``devices`` fake CPU devices
    (``--xla_force_host_platform_device_count``) and returns the JSON of its last ``RESULT``
    line; the process's failure fails the test with its stderr."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])
