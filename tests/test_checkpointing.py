"""Checkpoint manager: keep last K + best, restore into the sharded state, workdir config."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vmr_jax import checkpointing, sharding


def _state(value: float) -> dict:
    return {"params": {"w": jnp.full((4, 3), value), "b": jnp.arange(3.0) + value}, "step": 0}


def _metrics(r1: float) -> dict:
    return {"R@1,IoU=0.5": r1, "mIoU": r1 / 2}


def test_keeps_last_k_and_best(tmp_path):
    manager = checkpointing.create_checkpoint_manager(str(tmp_path), {"keep": 2})
    # step: R@1 (None = saved without an evaluation)
    scores = {1: 0.2, 2: 0.9, 3: None, 4: 0.4, 5: 0.1, 6: None}
    for step, r1 in scores.items():
        checkpointing.save(manager, step, _state(step), None if r1 is None else _metrics(r1))
    manager.wait_until_finished()
    # Last two (5, 6) plus the best evaluated one (2, R@1 0.9).
    assert sorted(manager.all_steps()) == [2, 5, 6]
    assert checkpointing.best_step(manager, "R@1,IoU=0.5") == 2
    assert checkpointing.best_step(manager, "R@1,IoU=0.5", mode="min") == 5
    assert manager.latest_step() == 6
    manager.close()


def test_best_by_configured_metric_min_mode(tmp_path):
    config = {"keep": 1, "best_metric": "loss", "best_mode": "min"}
    manager = checkpointing.create_checkpoint_manager(str(tmp_path), config)
    for step, loss in [(1, 0.5), (2, 0.2), (3, 0.7), (4, 0.6)]:
        checkpointing.save(manager, step, _state(step), {"loss": loss})
    manager.wait_until_finished()
    assert sorted(manager.all_steps()) == [2, 4]
    manager.close()


def test_restore_into_sharded_abstract_state(tmp_path):
    mesh = sharding.make_mesh({"shape": (-1, 1)})
    state = _state(3.0)
    shardings = jax.tree.map(lambda _: sharding.replicated(mesh), state)
    manager = checkpointing.create_checkpoint_manager(str(tmp_path), {"keep": 1})
    checkpointing.save(manager, 7, state)
    manager.wait_until_finished()

    abstract = checkpointing.abstract_like(jax.eval_shape(lambda: _state(0.0)), shardings)
    restored, step = checkpointing.restore_or_init(manager, abstract, lambda: _state(0.0))
    assert step == 7
    np.testing.assert_array_equal(restored["params"]["w"], np.full((4, 3), 3.0))
    np.testing.assert_array_equal(restored["params"]["b"], np.array([3.0, 4.0, 5.0]))
    assert restored["params"]["w"].sharding == sharding.replicated(mesh)
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 8"):
        checkpointing.restore(manager, 8, abstract)
    manager.close()


def test_restore_or_init_without_checkpoint(tmp_path):
    manager = checkpointing.create_checkpoint_manager(str(tmp_path), {})
    state, step = checkpointing.restore_or_init(manager, None, lambda: "fresh")
    assert (state, step) == ("fresh", None)
    manager.close()


def test_config_round_trip(tmp_path):
    config = ml_collections.ConfigDict(
        {"model": {"name": "mgpn", "pooling_counts": (8, 4)}, "train": {"lr": 1e-3}}
    )
    checkpointing.save_config(config, str(tmp_path))
    loaded = checkpointing.load_config(str(tmp_path))
    assert loaded.model.name == "mgpn"
    assert list(loaded.model.pooling_counts) == [8, 4]
    assert loaded.train.lr == 1e-3
    with pytest.raises(AttributeError):
        loaded.train.new_field = 1  # locked
    with pytest.raises(FileNotFoundError, match="training workdir"):
        checkpointing.load_config(str(tmp_path / "missing"))
