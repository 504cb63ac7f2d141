"""Trainer: optimiser schedule, a smoke run of train_and_evaluate, exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from data_pipelines import synthetic
from vmr_jax import checkpointing, config_cli, sharding, trainer
from vmr_jax.metrics_writer import read_metrics

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "mgpn" / "synthetic.py")
STEPS = 6


def runlocal_config(**overrides):
    """The runlocal synthetic config: 6 steps, log every step, checkpoint every 3."""
    base = {
        "train.num_steps": STEPS,
        "train.log_every": 1,
        "train.checkpoint_every": 3,
        "train.progress_bar": False,
    }
    base.update(overrides)
    return config_cli.load_config(f"{CONFIG}:runlocal", [(k, str(v)) for k, v in base.items()])


pytestmark = pytest.mark.usefixtures("jax_compilation_cache")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted runlocal training run: ``(result, workdir)``."""
    workdir = tmp_path_factory.mktemp("reference")
    result = trainer.train_and_evaluate(runlocal_config(), str(workdir))
    return result, workdir


def test_lr_schedule_steps_at_milestone_epochs():
    # lr 1e-3, gamma 0.1, milestones at epochs 2 and 3, 10 steps per epoch: by hand,
    # steps 0..19 -> 1e-3, 20..29 -> 1e-4, 30.. -> 1e-5.
    config = {"lr": 1e-3, "milestones": (2, 3), "gamma": 0.1}
    schedule = trainer.lr_schedule(config, steps_per_epoch=10)
    expected = {0: 1e-3, 19: 1e-3, 20: 1e-4, 29: 1e-4, 30: 1e-5, 100: 1e-5}
    for step, lr in expected.items():
        assert float(schedule(step)) == pytest.approx(lr, rel=1e-6), step


def test_optimizer_clips_global_norm_before_adam():
    # Adam's first update is lr * g / (|g| + eps) per coordinate whatever the clipping, so
    # compare with optax's own chain: clip to norm 10 then adam, built independently.
    tx, _ = trainer.create_optimizer(
        {"lr": 1e-3, "milestones": (), "grad_clip_norm": 10.0}, steps_per_epoch=1
    )
    reference = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(1e-3))
    params = {"w": np.zeros(3, np.float32)}
    grads = [
        {"w": np.array([30.0, -40.0, 0.0], np.float32)},
        {"w": np.array([1.0, 2.0, 3.0], np.float32)},
    ]
    state, ref_state = tx.init(params), reference.init(params)
    for g in grads:
        update, state = tx.update(g, state, params)
        ref_update, ref_state = reference.update(g, ref_state, params)
        np.testing.assert_allclose(update["w"], ref_update["w"], rtol=1e-6)
    # The clipped gradient (norm 50 -> 10) is what the first moment saw: 0.1 * g * 10 / 50.
    mu = state[1][0].mu["w"]
    expected = 0.9 * 0.1 * np.array([6.0, -8.0, 0.0]) + 0.1 * grads[1]["w"]
    np.testing.assert_allclose(mu, expected, rtol=1e-6)


def test_bert_adam_matches_a_numpy_replay_of_tvretrieval_bertadam():
    # NumPy replay of BertAdam's step (per-tensor clip to norm 1, moments without bias
    # correction, eps outside the root, decoupled decay on non-bias leaves, warmup_linear
    # over 10 steps with warmup 0.2), written from the algorithm, not from the code.
    cfg = {
        "optimizer": "bert_adam",
        "lr": 0.1,
        "warmup": 0.2,
        "num_steps": 10,
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
    }
    tx, schedule = trainer.create_optimizer(cfg, steps_per_epoch=5)
    params = {
        "dense": {"kernel": np.array([1.0, -2.0], np.float32), "bias": np.ones(2, np.float32)}
    }
    grads = [
        {
            "dense": {
                "kernel": np.array([3.0, 4.0], np.float32),
                "bias": np.array([0.1, 0.2], np.float32),
            }
        },
        {
            "dense": {
                "kernel": np.array([0.5, -0.5], np.float32),
                "bias": np.array([-0.3, 0.0], np.float32),
            }
        },
        {
            "dense": {
                "kernel": np.array([0.2, 0.1], np.float32),
                "bias": np.array([0.0, 1.0], np.float32),
            }
        },
    ]
    state = tx.init(params)
    ref = {k: v.astype(np.float64) for k, v in params["dense"].items()}
    m = {k: np.zeros(2) for k in ref}
    v = {k: np.zeros(2) for k in ref}
    current = params
    for t, g in enumerate(grads):
        update, state = tx.update(g, state, current)
        current = optax.apply_updates(current, update)
        progress = t / 10
        lr = 0.1 * (progress / 0.2 if progress < 0.2 else max((progress - 1) / (0.2 - 1), 0))
        assert float(schedule(t)) == pytest.approx(lr, rel=1e-6)
        for k in ref:
            gk = g["dense"][k].astype(np.float64)
            gk = gk * min(1.0, 1.0 / (np.linalg.norm(gk) + 1e-6))
            m[k] = 0.9 * m[k] + 0.1 * gk
            v[k] = 0.999 * v[k] + 0.001 * gk * gk
            step = m[k] / (np.sqrt(v[k]) + 1e-6)
            if k != "bias":
                step = step + 0.01 * ref[k]
            ref[k] = ref[k] - lr * step
        for k in ref:
            np.testing.assert_allclose(current["dense"][k], ref[k], rtol=1e-5, atol=1e-7)
    # Step 0 has learning rate 0 (progress 0): the first update left the bias as it was.
    assert float(schedule(0)) == 0.0


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="config.train.optimizer"):
        trainer.create_optimizer({"optimizer": "sgd", "lr": 1.0}, 1)


def test_smoke_train_and_evaluate(reference_run):
    result, workdir = reference_run
    assert result["step"] == STEPS
    train = read_metrics(str(workdir), "train")
    assert sorted(train) == list(range(1, STEPS + 1))
    for record in train.values():
        for key in ("loss", "bce_rescale_loss", "grad_norm", "param_norm", "lr"):
            assert math.isfinite(record[key]), (key, record)
        assert record["lr"] == pytest.approx(1e-3)
    # Every val query evaluated once: the count comes from the benchmark itself.
    config = runlocal_config()
    spec = synthetic.spec_from_config(config.data.synthetic)
    num_val = len(synthetic.make_splits(spec, config.data.seed, ["val"])["val"])
    evals = read_metrics(str(workdir), "val")
    assert sorted(evals) == [STEPS]
    assert evals[STEPS]["num_queries"] == num_val
    for key in ("R@1,IoU=0.5", "R@5,IoU=0.7", "mIoU"):
        assert 0.0 <= evals[STEPS][key] <= 1.0
        assert result["eval_metrics"][key] == pytest.approx(evals[STEPS][key])
    # Checkpoints at 3 and 6 (keep 2); the evaluated final step is also the best.
    manager = checkpointing.create_checkpoint_manager(str(workdir), config.train, read_only=True)
    assert sorted(manager.all_steps()) == [3, STEPS]
    assert result["best_step"] == STEPS
    manager.close()
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["train"]["num_steps"] == STEPS
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_reproduces_uninterrupted_run(reference_run, tmp_path):
    _, reference_dir = reference_run
    # "Killed" after the checkpoint at step 3, then restarted with the full step count.
    first = trainer.train_and_evaluate(runlocal_config(**{"train.num_steps": 3}), str(tmp_path))
    assert first["step"] == 3
    second = trainer.train_and_evaluate(runlocal_config(), str(tmp_path))
    assert second["step"] == STEPS

    # The restarted run continued at step 4: every step was logged exactly once.
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in lines if r["split"] == "train"]
    assert steps == list(range(1, STEPS + 1))

    reference = read_metrics(str(reference_dir), "train")
    resumed = read_metrics(str(tmp_path), "train")
    for step in range(1, STEPS + 1):
        for key in ("loss", "grad_norm", "param_norm"):
            assert resumed[step][key] == pytest.approx(reference[step][key], rel=1e-6), (
                step,
                key,
            )
    ref_eval = read_metrics(str(reference_dir), "val")[STEPS]
    res_eval = read_metrics(str(tmp_path), "val")[STEPS]
    for key in ("R@1,IoU=0.5", "R@5,IoU=0.5", "mIoU"):
        assert res_eval[key] == pytest.approx(ref_eval[key], abs=1e-6)


def test_final_checkpoint_restores_trained_state(reference_run):
    # The restored parameters have the norm the run logged after its last step.
    _, reference_dir = reference_run
    config = runlocal_config()
    model = trainer.create_model(config.model)
    data = trainer.DataSources(config)
    tx, _ = trainer.create_optimizer(config.train, data.steps_per_epoch())
    mesh = sharding.make_mesh(config.mesh)
    abstract = trainer.abstract_train_state(
        config, model, jax.random.PRNGKey(0), data.sample_batch(), mesh, tx=tx
    )
    manager = checkpointing.create_checkpoint_manager(
        str(reference_dir), config.train, read_only=True
    )
    state = checkpointing.restore(manager, STEPS, abstract)
    manager.close()
    assert int(state.step) == STEPS
    reference = read_metrics(str(reference_dir), "train")
    param_norm = float(optax.tree.norm(state.params))
    assert param_norm == pytest.approx(reference[STEPS]["param_norm"], rel=1e-6)
