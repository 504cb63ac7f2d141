"""VLANet trained through the library's trainer under weak supervision.

* Spans never reach training: the parameters after a few optimiser steps are bit-identical
  when every training span is replaced by random times, while the evaluation still reads the
  spans (its metrics move when the eval spans move).
* The ``wo_surrogate`` ablation trains and evaluates (every proposal an element of ``V``).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from configs.vlanet import synthetic as vlanet_synthetic
from vmr_jax import sharding, trainer
from vmr_jax.evaluation import evaluators
from vmr_jax.models import get_family


def _config(arg: str = "runlocal"):
    config = vlanet_synthetic.get_config(arg)
    config.unlock()
    config.data.synthetic.num_videos = 24
    config.train.batch_size = 8
    return config


def _train(config, steps: int, perturb_train_spans: bool):
    """``steps`` optimiser steps with the trainer's own pieces; returns host params and the
    data sources (the training spans replaced by random times when asked)."""
    mesh = sharding.make_mesh(config.mesh)
    data = trainer.DataSources(config)
    prepared = data.prepared("train")
    if perturb_train_spans:
        rng = np.random.default_rng(123)
        spans = prepared.query["spans"]
        starts = rng.uniform(0.0, 10.0, spans.shape[:2])
        spans[..., 0] = starts
        spans[..., 1] = starts + rng.uniform(1.0, 20.0, spans.shape[:2])
    steps_per_epoch = data.steps_per_epoch()
    tx, schedule = trainer.family_optimizer(config, steps_per_epoch)
    model = trainer.create_model(config.model)
    rng = jax.random.PRNGKey(0)
    state = trainer.create_train_state(config, model, rng, data.sample_batch(), mesh, tx=tx)
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    step_fn = trainer.make_train_step(config, state_sharding, mesh, schedule, steps_per_epoch)
    batches = data.train_iterator()
    seen_keys = set()
    for _ in range(steps):
        batch = next(batches)
        seen_keys |= set(batch)
        state, _ = step_fn(state, sharding.put_batch(batch, mesh), rng)
    return jax.device_get(state.params), data, state, state_sharding, mesh, seen_keys


def test_training_spans_never_change_the_parameters():
    config = _config()
    params_a, data_a, *_, keys_a = _train(config, 4, perturb_train_spans=False)
    params_b, data_b, *_, keys_b = _train(config, 4, perturb_train_spans=True)
    # The perturbation is real: the prepared training spans differ.
    assert not np.allclose(
        data_a.prepared("train").query["spans"], data_b.prepared("train").query["spans"]
    )
    assert "spans" not in keys_a and "span_mask" not in keys_a and "video_index" in keys_a
    leaves_a = jax.tree_util.tree_leaves_with_path(params_a)
    leaves_b = jax.tree.leaves(params_b)
    assert len(leaves_a) == len(leaves_b)
    for (path, a), b in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    # And the parameters did train (not a no-op step).
    fresh = trainer.create_train_state(
        config,
        trainer.create_model(config.model),
        jax.random.PRNGKey(0),
        data_a.sample_batch(),
        sharding.make_mesh(config.mesh),
        tx=trainer.family_optimizer(config, 1)[0],
    )
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(jax.device_get(fresh.params)))
    ]
    assert any(moved)


def test_evaluation_reads_the_spans():
    config = _config()
    _, data, state, state_sharding, mesh, _ = _train(config, 2, perturb_train_spans=False)
    evaluate = trainer.make_state_evaluator(config, data, state_sharding, mesh)
    metrics, _ = evaluate(state, "val")
    # Move every val span past its video: no predicted moment overlaps it any more.
    records = data.datasets.splits["val"]
    for r in records:
        r.spans_s[:] = r.duration_s + np.array([10.0, 20.0])
    prepared = data.prepared("val")
    prepared.query["spans"][:, 0] = prepared.query["duration"][:, None] + np.array([10.0, 20.0])
    moved, _ = evaluate(state, "val")
    assert metrics["num_queries"] == moved["num_queries"] == len(records)
    assert metrics["R@5,IoU=0.3"] > 0.0
    assert moved["R@5,IoU=0.3"] == 0.0 and moved["mIoU"] == 0.0


@pytest.mark.parametrize("arg", ["runlocal,wo_surrogate", "runlocal,wo_self,wo_cross"])
def test_ablations_train_and_evaluate(tmp_path, arg):
    config = _config(arg)
    config.train.progress_bar = False
    result = trainer.train_and_evaluate(config, str(tmp_path))
    assert result["step"] == config.train.num_steps
    assert np.isfinite(result["train_metrics"]["loss"])
    assert result["eval_metrics"]["num_queries"] > 0
    # The random-proposal baseline, recomputed here proposal by proposal in plain Python.
    model = config.model
    shares, data = [], trainer.DataSources(config)
    for record in data.datasets.splits["val"]:
        duration, (s0, e0) = float(record.duration_s), map(float, record.spans_s[0])
        hits = count = 0
        for k in range(model.max_groups):
            start = k * model.proposal_stride
            for w in model.proposal_windows:
                if start + w > duration + 1e-3 or start >= duration:
                    continue
                inter = max(0.0, min(start + w, e0) - max(start, s0))
                count += 1
                hits += inter / (max(start + w, e0) - min(start, s0)) > 0.5
        shares.append(hits / count)
    assert result["random_baseline"]["R@1,IoU=0.5"] == pytest.approx(np.mean(shares), abs=1e-9)
    # Read in chunks of 3 queries (the last one short), the same numbers.
    chunked = evaluators.chance_metrics(config, get_family("vlanet"), data, "val", chunk=3)
    assert len(shares) % 3 and chunked == pytest.approx(result["random_baseline"], abs=1e-12)
