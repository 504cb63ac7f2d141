"""Every config file loads (default and runlocal); command-line overrides parse by type."""

from __future__ import annotations

import re
from pathlib import Path

import ml_collections
import pytest

from vmr_jax import config_cli
from vmr_jax.errors import ConfigError
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
    with pytest.raises(ConfigError, match="batch_sise"):
        config_cli.apply_override(config, "train.batch_sise", "4")
    with pytest.raises(ValueError, match="train.batch_size"):
        config_cli.apply_override(config, "train.batch_size", "0.5")
    with pytest.raises(ConfigError, match=r"--config.train.batch_size.x: train.batch_size has"):
        config_cli.apply_override(config, "train.batch_size.x", "1")


TYPED = {
    "pooling_counts": (15, 8, 8),
    "ious": (0.3, 0.5),
    "names": ("val", "test"),
    "milestones": (),
    "shape": [1, 1],
    "windows": ((1, 2),),
    "flags": (True,),
    "batch_size": 8,
    "lr": 1e-3,
    "flag": False,
    "name": "a",
}


@pytest.mark.parametrize(
    "field, text, want",
    [
        ("pooling_counts", "1,5", (1, 5)),
        ("pooling_counts", "(1, 5)", (1, 5)),
        ("pooling_counts", "[3]", (3,)),
        ("pooling_counts", "7", (7,)),
        ("pooling_counts", "()", ()),
        ("pooling_counts", "-1, 2,", (-1, 2)),
        ("ious", "0.1,1", (0.1, 1.0)),
        ("names", "train,val", ("train", "val")),
        ("names", "('a,b', c)", ("a,b", "c")),
        ("milestones", "100,200", (100, 200)),
        ("milestones", "1,x", (1, "x")),  # empty: any literal (else the text)
        ("shape", "4,2", [4, 2]),
        ("windows", "(1,2),(3,4)", ((1, 2), (3, 4))),
        ("flags", "true,False,0", (True, False, False)),
        ("batch_size", "1_000", 1000),
        ("lr", "3", 3.0),
        ("lr", "1e-4", 1e-4),
        ("flag", "yes", True),
        ("name", "1.5", "1.5"),  # a str field takes any text
        ("name", "(a, b)", "(a, b)"),
    ],
)
def test_overrides_keep_their_field_type(field, text, want):
    config = ml_collections.ConfigDict(TYPED)
    config_cli.apply_override(config, field, text)
    assert config[field] == want
    assert type(config[field]) is type(want)
    if isinstance(want, (tuple, list)):
        assert [type(x) for x in config[field]] == [type(x) for x in want]


@pytest.mark.parametrize(
    "field, text, expected",
    [
        ("pooling_counts", "abc", "a tuple of int"),
        ("pooling_counts", "1,abc", "a tuple of int"),
        ("pooling_counts", "1,2.5", "a tuple of int"),
        ("pooling_counts", "1,,2", "a tuple of int"),
        ("ious", "0.5,high", "a tuple of float"),
        ("shape", "4,x", "a list of int"),
        ("windows", "(1,2),(3,a)", "a tuple of tuple of int"),
        ("flags", "maybe", "a tuple of bool"),
        ("batch_size", "1.5", "an int"),
        ("batch_size", "abc", "an int"),
        ("batch_size", "True", "an int"),
        ("lr", "abc", "a float"),
        ("lr", "(1,)", "a float"),
        ("flag", "2", "a bool (true or false)"),
    ],
)
def test_overrides_of_the_wrong_type_are_refused(field, text, expected):
    config = ml_collections.ConfigDict(TYPED)
    message = f"--config.{field}={text}: expected {expected}, got {text!r}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_cli.apply_override(config, field, text)
    assert config[field] == TYPED[field]


def test_overrides_of_unset_fields_sections_and_references():
    shared = ml_collections.FieldReference(8)
    config = ml_collections.ConfigDict(
        {
            "train": {"batch_size": shared, "glove_path": None},
            "evals": {"batch_size": shared, "val": {"ious": (0.5,)}},
        }
    )
    config_cli.apply_override(config, "evals.val.ious", "0.3,0.7")
    assert config.evals.val.ious == (0.3, 0.7)
    config_cli.apply_override(config, "train.glove_path", "glove.txt")
    assert config.train.glove_path == "glove.txt"
    config_cli.apply_override(config, "train.batch_size", "16")
    assert config.evals.batch_size == 16  # the reference follows
    with pytest.raises(ConfigError, match=r"evals.batch_size=x: expected an int, got 'x'"):
        config_cli.apply_override(config, "evals.batch_size", "x")


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_unknown_config_argument_is_refused(path):
    # One parser for every get_config(arg): a typo is an error naming the file, never ignored.
    with pytest.raises(ValueError, match=rf"{path.name}.*unknown config arguments \['runlcoal'\]"):
        config_cli.load_config(f"{path}:runlcoal")


def test_parse_config_arg():
    parse = config_cli.parse_config_arg
    assert parse(None, ("a", "b"), "c.py") == frozenset()
    assert parse(" a, ,b ", ("a", "b"), "c.py") == {"a", "b"}
    with pytest.raises(ValueError, match=r"c.py: unknown config arguments \['z'\]; allowed: a, b"):
        parse("a,z", ("b", "a"), "c.py")
    with pytest.raises(ValueError, match=r"\['conv', 'pool'\] exclude each other"):
        parse("pool,conv", ("conv", "pool"), "c.py", exclusive=[("conv", "pool")])


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*/[!s]*.py")), ids=lambda p: p.stem)
def test_benchmark_configs_evaluate_once_per_epoch(path):
    """Benchmark configs give the cadence in epochs; the trainer turns it into steps at the
    run's batch size, so overriding the batch keeps "once per epoch"."""
    from vmr_jax import trainer

    config = config_cli.load_config(str(path))
    assert config.evals.every_epochs == 1.0 and config.evals.get("every", 0) == 0
    assert config.train.checkpoint_every_epochs == 1.0
    # 12,404 queries: batch 32 -> 387 steps per epoch, batch 64 -> 193 (by hand).
    assert trainer.every_steps(config.evals, "every", 12404 // 32) == 387
    assert trainer.every_steps(config.evals, "every", 12404 // 64) == 193


def test_every_steps_by_hand():
    from vmr_jax import trainer

    assert trainer.every_steps({"every": 50}, "every", 7) == 50
    assert trainer.every_steps({"every": 0, "every_epochs": 0.5}, "every", 7) == 4  # round(3.5)
    assert trainer.every_steps({"every_epochs": 2}, "every", 10) == 20
    assert trainer.every_steps({}, "every", 10) == 0
    with pytest.raises(ValueError, match="not both"):
        trainer.every_steps({"every": 5, "every_epochs": 1}, "every", 10)
