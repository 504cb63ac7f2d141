"""What the library sets up for terminals and notebooks: the persistent XLA cache, a quiet
TensorFlow kept off the accelerators, tqdm.auto progress bars."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import pytest
import tqdm.auto

from data_pipelines import tensorflow_runtime
from vmr_jax import checkpoint_eval, predict, predictor, train_loop, trainer, xla_cache

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- XLA cache
@pytest.mark.parametrize(
    "environ, expected",
    [
        ({"HOME": "/h"}, "/h/.cache/vmr_jax/xla"),
        ({"HOME": "/h", "VMR_JAX_CACHE": ""}, "/h/.cache/vmr_jax/xla"),
        ({"HOME": "/h", "XDG_CACHE_HOME": "/c"}, "/c/vmr_jax/xla"),
        ({"HOME": "/h", "VMR_JAX_CACHE": "/big/disk"}, "/big/disk/xla"),
        ({"HOME": "/h", "VMR_JAX_CACHE": "off"}, None),
        ({"HOME": "/h", "VMR_JAX_CACHE": "OFF"}, None),
        ({"HOME": "/h", "VMR_JAX_CACHE": "0"}, None),
    ],
)
def test_cache_dir_from_the_environment(environ, expected, monkeypatch):
    monkeypatch.setenv("HOME", environ["HOME"])  # expanduser reads the real environment
    assert xla_cache.cache_dir(environ) == expected


@pytest.fixture
def no_cache_dir():
    """jax_compilation_cache_dir unset for the test, restored after it."""
    saved = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    yield
    jax.config.update("jax_compilation_cache_dir", saved)


def test_enable_sets_and_creates_the_folder(tmp_path, monkeypatch, no_cache_dir):
    monkeypatch.setenv("VMR_JAX_CACHE", str(tmp_path / "cache"))
    assert xla_cache.enable() == str(tmp_path / "cache" / "xla")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache" / "xla")
    assert (tmp_path / "cache" / "xla").is_dir()


def test_enable_keeps_a_folder_set_before(tmp_path, monkeypatch, no_cache_dir):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    monkeypatch.setenv("VMR_JAX_CACHE", str(tmp_path / "other"))
    assert xla_cache.enable() == str(tmp_path / "mine")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
    assert not (tmp_path / "other").exists()


def test_enable_off(tmp_path, monkeypatch, no_cache_dir):
    monkeypatch.setenv("VMR_JAX_CACHE", "off")
    assert xla_cache.enable() is None
    assert jax.config.jax_compilation_cache_dir is None
    monkeypatch.setenv("VMR_JAX_CACHE", str(tmp_path))
    saved = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        assert xla_cache.enable() is None
    finally:
        jax.config.update("jax_enable_compilation_cache", saved)
    assert jax.config.jax_compilation_cache_dir is None


def test_unwritable_folder_is_a_warning(tmp_path, monkeypatch, no_cache_dir, caplog):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("VMR_JAX_CACHE", str(tmp_path / "file"))  # xla/ cannot go under a file
    with caplog.at_level(logging.WARNING, logger="vmr_jax.xla_cache"):
        assert xla_cache.enable() is None
    assert "no persistent XLA compilation cache" in caplog.text
    assert jax.config.jax_compilation_cache_dir is None


def test_programs_land_in_the_cache_after_earlier_compiles(tmp_path):
    """In a fresh process (as a notebook: something compiled before the library is used), the
    cache enabled late still stores the next program."""
    probe = (
        "import jax, jax.numpy as jnp, os, json; from vmr_jax import xla_cache\n"
        "jax.jit(lambda x: x + 1)(jnp.ones(3)).block_until_ready()\n"
        "path = xla_cache.enable()\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
        "jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(5)).block_until_ready()\n"
        "print(json.dumps([path, sorted(os.listdir(path))]))\n"
    )
    env = dict(os.environ, VMR_JAX_CACHE=str(tmp_path), JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    path, files = json.loads(done.stdout.strip().splitlines()[-1])
    assert path == str(tmp_path / "xla")
    assert files, "nothing written to the persistent cache"


class Enabled(Exception):
    pass


def _raise_enabled():
    raise Enabled


@pytest.mark.parametrize(
    "entry",
    [
        lambda w: trainer.train_and_evaluate(ml_collections.ConfigDict({"mesh": {}}), w),
        lambda w: checkpoint_eval.evaluate_workdir(w),
        lambda w: predict.predict_workdir(w),
        lambda w: predictor.Predictor.from_workdir(w),
    ],
    ids=["train_and_evaluate", "evaluate_workdir", "predict_workdir", "Predictor"],
)
def test_every_api_entry_enables_the_cache_first(entry, tmp_path, monkeypatch):
    monkeypatch.setattr(xla_cache, "enable", _raise_enabled)
    with pytest.raises(Enabled):
        entry(str(tmp_path / "workdir"))
    assert not (tmp_path / "workdir").exists()


# --------------------------------------------------------------------------- TensorFlow
class FakeTfConfig:
    """``tf.config``'s device calls on a machine with ``visible`` devices."""

    def __init__(self, visible: dict[str, list[str]], initialised: bool = False):
        self.visible = {kind: list(devices) for kind, devices in visible.items()}
        self.initialised = initialised
        self.calls = []

    def get_visible_devices(self, kind):
        return list(self.visible.get(kind, []))

    def set_visible_devices(self, devices, kind):
        self.calls.append((list(devices), kind))
        if self.initialised:
            raise RuntimeError("Visible devices cannot be modified after being initialized")
        self.visible[kind] = list(devices)


def test_hide_accelerators():
    config = FakeTfConfig({"CPU": ["cpu0"], "GPU": ["gpu0", "gpu1"], "TPU": []})
    assert tensorflow_runtime.hide_accelerators(config) == []
    assert config.calls == [([], "GPU")]
    assert config.visible == {"CPU": ["cpu0"], "GPU": [], "TPU": []}


def test_hide_accelerators_too_late_warns(caplog):
    config = FakeTfConfig({"GPU": ["gpu0"], "TPU": ["tpu0"]}, initialised=True)
    with caplog.at_level(logging.WARNING, logger="data_pipelines.tensorflow_runtime"):
        assert tensorflow_runtime.hide_accelerators(config) == ["GPU", "TPU"]
    assert caplog.text.count("may hold memory JAX needs") == 2


def test_input_pipeline_imports_tensorflow_quiet_and_off_accelerators(tmp_path):
    probe = (
        "import json, os; from data_pipelines import input_pipeline as p\n"
        "e = os.environ\n"
        "print(json.dumps([e['TF_CPP_MIN_LOG_LEVEL'], e['TF_ENABLE_ONEDNN_OPTS'], "
        "[d.device_type for d in p.tf.config.get_visible_devices()]]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no oneDNN banner, no absl preamble
    level, onednn, kinds = json.loads(done.stdout.strip().splitlines()[-1])
    assert (level, onednn) == ("1", "0")
    assert set(kinds) <= {"CPU"}
    # What the user chose is kept.
    env.update(TF_CPP_MIN_LOG_LEVEL="0", TF_ENABLE_ONEDNN_OPTS="1")
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert json.loads(done.stdout.strip().splitlines()[-1])[:2] == ["0", "1"]
    assert "oneDNN custom operations are on" in done.stderr  # what the default silences


# --------------------------------------------------------------------------- progress
def test_progress_bar_is_tqdm_auto():
    bar = train_loop._progress_bar(3, 10, enabled=False)
    try:
        assert isinstance(bar, tqdm.auto.tqdm)
        assert (bar.n, bar.total) == (3, 10)
    finally:
        bar.close()
