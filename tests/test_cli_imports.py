"""``vmr-jax --help`` and every ``vmr-jax COMMAND --help`` load no heavy framework.

Checked in a fresh interpreter through ``sys.modules`` (the test process has JAX loaded
already), which is what makes the help fast: TensorFlow, JAX, Flax, orbax and torch cost
seconds to import.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vmr_jax import main

HEAVY = ("tensorflow", "jax", "flax", "orbax", "torch", "optax", "vmr_jax.trainer")

PROBE = """
import json, sys
from vmr_jax import main
try:
    main.main(sys.argv[1:])
except SystemExit as e:
    code = e.code
else:
    code = None
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r} or m in {heavy!r})
print(json.dumps({{"code": code, "heavy": heavy}}))
"""


def help_probe(*argv: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv", [["--help"]] + [[name, "--help"] for name in main.COMMANDS], ids=" ".join
)
def test_help_imports_no_framework(argv):
    result = help_probe(*argv)
    assert result["code"] == 0
    assert result["heavy"] == []


def test_top_level_help_lists_every_command_and_the_cache_variable():
    done = subprocess.run(
        [sys.executable, "-m", "vmr_jax.main", "--help"], capture_output=True, text=True, check=True
    )
    for name in ("train", "eval", "predict", "bench", "score", "data", "convert"):
        assert f"\n    {name} " in done.stdout, name
    assert "VMR_JAX_CACHE" in done.stdout


def test_score_help_still_lists_the_protocols():
    from vmr_jax.evaluation import scoring

    done = subprocess.run(
        [sys.executable, "-m", "vmr_jax.main", "score", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "{" + ",".join(scoring.PROTOCOLS) + "}" in done.stdout
