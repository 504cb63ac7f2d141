"""The shipped configs install as ``vmr_jax_configs``; ``--config`` takes a path or a name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmr_jax import config_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
NAMES = sorted(
    f"{p.parent.name}/{p.stem}" for p in CONFIG_DIR.glob("*/*.py") if not p.stem.startswith("_")
)


def test_every_config_file_is_a_packaged_name():
    assert NAMES and config_cli.packaged_configs() == NAMES


@pytest.mark.parametrize(
    "name", ["mgpn/synthetic", "mgpn/synthetic.py", "configs/mgpn/synthetic.py"]
)
def test_packaged_name_loads_the_same_config_as_the_path(name, tmp_path, monkeypatch):
    by_path = config_cli.load_config(f"{CONFIG_DIR / 'mgpn' / 'synthetic.py'}:runlocal")
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the name must be resolved
    by_name = config_cli.load_config(f"{name}:runlocal", [("train.num_steps", "7")])
    assert by_name.train.num_steps == 7
    with by_name.unlocked():
        by_name.train.num_steps = by_path.train.num_steps
    assert by_name.to_dict() == by_path.to_dict()


def test_a_path_in_a_checkout_still_wins(tmp_path, monkeypatch):
    own = tmp_path / "configs" / "mgpn" / "synthetic.py"
    own.parent.mkdir(parents=True)
    own.write_text(
        "import ml_collections\n\ndef get_config(arg):\n    return "
        "ml_collections.ConfigDict({'arg': arg})\n"
    )
    monkeypatch.chdir(tmp_path)
    assert config_cli.load_config("configs/mgpn/synthetic.py:x").arg == "x"
    assert config_cli.load_config("mgpn/synthetic:runlocal").model.name == "mgpn"


@pytest.mark.parametrize("name", ["mgpn/nope", "configs/nope.py", "../configs/mgpn/synthetic"])
def test_unknown_name_lists_the_shipped_ones(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="shipped: cascaded_mpn/activitynet, ") as info:
        config_cli.load_config(name)
    assert f"{name!r} not found" in str(info.value)
    assert "xml/tvr" in str(info.value)


def test_a_plain_install_ships_every_config(tmp_path):
    """setup.py's build (what `pip install .` copies) holds configs/ as vmr_jax_configs, and
    a name resolves into it from any folder."""
    lib = tmp_path / "lib"
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(lib)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    shipped = sorted(
        f"{p.parent.name}/{p.stem}"
        for p in (lib / "vmr_jax_configs").glob("*/*.py")
        if not p.stem.startswith("_")
    )
    assert shipped == NAMES
    probe = (
        "import json; from vmr_jax import config_cli; "
        "print(json.dumps([config_cli.config_path('xml/tvr'), "
        "config_cli.load_config('xml/tvr:runlocal').model.name]))"
    )
    env = dict(os.environ, PYTHONPATH=str(lib))
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    path, model = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(path) == lib / "vmr_jax_configs" / "xml" / "tvr.py"
    assert model == "xml"
