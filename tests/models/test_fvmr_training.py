"""FVMR end to end on the synthetic benchmark: the role-tree teacher trains, distillation
switches on after its warm-up, and retrieval with ``p`` alone beats random ranking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_pipelines import synthetic
from vmr_jax import config_cli, trainer
from vmr_jax.evaluation import chance as chance_levels

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "fvmr" / "synthetic.py")

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")


def _config(arg: str, **overrides):
    base = {"train.progress_bar": False, "train.checkpoint_every": 0}
    base.update(overrides)
    return config_cli.load_config(f"{CONFIG}:{arg}", [(k, str(v)) for k, v in base.items()])


def test_without_distillation_ablation_runs(tmp_path):
    """``wo_sd``: the loss is BCE(p) + BCE(q) (the distillation term is logged, weight 0)."""
    config = _config("runlocal,wo_sd", **{"model.distill_start_epoch": 0})
    result = trainer.train_and_evaluate(config, str(tmp_path))
    train = result["train_metrics"]
    assert train["distill_weight"] == 0.0
    assert train["loss_distill"] > 0.0
    np.testing.assert_allclose(train["loss"], train["loss_p"] + train["loss_q"], rtol=1e-5)
    assert "R@1,IoU=0.5" in result["eval_metrics"]


@pytest.mark.slow
def test_fvmr_learns_far_above_chance_with_p_alone(tmp_path):
    config = _config(
        "",
        **{
            "train.num_steps": 300,
            "train.log_every": 100,
            "evals.every": 0,
            "data.synthetic.num_videos": 400,
        },
    )
    result = trainer.train_and_evaluate(config, str(tmp_path))
    metrics, train = result["eval_metrics"], result["train_metrics"]
    # 1,280 training queries of 32 -> 40 steps per epoch; distillation from step 80 on.
    assert train["distill_weight"] == pytest.approx(3.0)
    spec = synthetic.spec_from_config(config.data.synthetic)
    records = synthetic.make_splits(spec, int(config.data.seed), ["val"])["val"]
    chance = chance_levels.chance_level(
        np.array([r.spans_s[0] for r in records]),
        np.array([r.duration_s for r in records]),
        config.model.num_clips,
        config.model.pooling_counts,
        nms_threshold=config.evals.nms_thresh,
    )
    assert metrics["R@1,IoU=0.5"] > 2.5 * chance["R@1,IoU=0.5"]
    assert metrics["R@1,IoU=0.7"] > 3 * chance["R@1,IoU=0.7"]
    assert metrics["R@5,IoU=0.5"] > chance["R@5,IoU=0.5"] + 0.2
