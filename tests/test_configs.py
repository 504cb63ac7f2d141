"""Every config file loads (default and runlocal); command-line overrides parse by type."""

from __future__ import annotations

from pathlib import Path

import ml_collections
import pytest

from vmr_jax import config_cli
from vmr_jax.models import FAMILIES

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(p for p in CONFIG_DIR.rglob("*.py") if p.name != "__init__.py")


def test_config_files_exist():
    assert CONFIG_FILES, f"no config file under {CONFIG_DIR}"


@pytest.mark.parametrize("arg", ["", ":runlocal"])
@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_loads(path, arg):
    config = config_cli.load_config(f"{path}{arg}")
    assert isinstance(config, ml_collections.ConfigDict)
    for section in ("model", "data", "train", "evals", "mesh"):
        assert section in config, f"{path}: no config.{section}"
    assert config.model.name in FAMILIES
    assert len(config.mesh.shape) == 2
    assert config.train.batch_size > 0
    assert config.train.get("num_steps", 0) > 0 or config.train.get("num_epochs", 0) > 0
    with pytest.raises(AttributeError):
        config.new_field = 1  # locked


def test_mgpn_synthetic_shapes_agree():
    config = config_cli.load_config(f"{CONFIG_DIR / 'mgpn' / 'synthetic.py'}")
    model, data = config.model, config.data
    assert data.num_input_clips == model.num_clips * model.frame_stride
    assert data.synthetic.feature_dim == model.feature_dim
    assert data.synthetic.word_dim == model.word_dim


def test_overrides_parse_by_field_type():
    config = ml_collections.ConfigDict(
        {"train": {"lr": 1e-3, "batch_size": 8, "flag": False, "name": "a", "ms": (1, 2)}}
    )
    argv = [
        "train",
        "--config.train.lr=3",
        "--config.train.batch_size",
        "16",
        "--config.train.flag=true",
        "--config.train.name=runlocal",
        "--config.train.ms=5,6,7",
        "--workdir",
        "w",
    ]
    rest, overrides = config_cli.split_overrides(argv)
    assert rest == ["train", "--workdir", "w"]
    for key, value in overrides:
        config_cli.apply_override(config, key, value)
    assert config.train.lr == 3.0 and isinstance(config.train.lr, float)
    assert config.train.batch_size == 16
    assert config.train.flag is True
    assert config.train.name == "runlocal"
    assert tuple(config.train.ms) == (5, 6, 7)


def test_bad_overrides_name_the_field():
    config = ml_collections.ConfigDict({"train": {"batch_size": 8}})
    with pytest.raises(KeyError, match="batch_sise"):
        config_cli.apply_override(config, "train.batch_sise", "4")
    with pytest.raises(ValueError, match="train.batch_size"):
        config_cli.apply_override(config, "train.batch_size", "0.5")
