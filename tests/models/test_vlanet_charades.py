"""VLANet's Charades-STA config against the paper: a hit at IoU >= m (4.1) through the VLANet
evaluation path and its random-proposal baseline, on hand examples with IoUs exactly at the
thresholds; and Table 3's stride 4 grid keeping every proposal of every training video of the
real annotations (counts enumerated here, not by the library's rule)."""

from __future__ import annotations

import csv
import types

import jax
import numpy as np
import pytest

from configs.vlanet import charades
from data_pipelines.input_pipeline import PreparedSplit
from data_pipelines.video_tables import InMemoryVideos
from vmr_jax import sharding, trainer
from vmr_jax.errors import ConfigError
from vmr_jax.evaluation import evaluators
from vmr_jax.models import get_family, vlanet

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")  # speed only

# Hand example: groups every 5 s with one 5-s window, so a 10-s video has the candidates
# [0, 5] and [5, 10] and a 5-s video only [0, 5].  Each query's candidates all have one IoU
# with its span, exactly a threshold, so any ranking gives the same top 1 and top 5:
#   A: 10 s, span [0, 10]   -> 5 / 10 = 0.5 for both candidates
#   B:  5 s, span [1.5, 5]  -> 3.5 / 5 = 0.7
#   C:  5 s, span [3.5, 5]  -> 1.5 / 5 = 0.3
DURATIONS = (10.0, 5.0, 5.0)
SPANS = ((0.0, 10.0), (1.5, 5.0), (3.5, 5.0))
# IoU >= m: A, B, C hit at 0.3; A, B at 0.5; B at 0.7.  (IoU > m would give 2/3, 1/3, 0.)
INCLUSIVE = {"R@1,IoU=0.3": 1.0, "R@1,IoU=0.5": 2 / 3, "R@1,IoU=0.7": 1 / 3}
MEAN_IOU = (0.5 + 0.7 + 0.3) / 3


def _hand_config(arg: str = "tiny"):
    """The Charades-STA config (its protocol and evals) on the hand example's grid."""
    config = charades.get_config(arg)
    config.unlock()
    config.model.update(
        proposal_stride=5.0, proposal_windows=(5.0,), max_groups=2, longest_video_s=10.0
    )
    config.lock()
    return config


def _hand_batch(model_config, num_clips: int = 8) -> dict[str, np.ndarray]:
    batch = vlanet.example_batch(model_config, len(DURATIONS), query_len=4)
    rng = np.random.default_rng(0)
    batch["video_features"] = rng.normal(
        size=(len(DURATIONS), num_clips, int(model_config.feature_dim))
    ).astype(np.float32)
    batch["video_mask"] = np.ones((len(DURATIONS), num_clips), np.float32)
    batch["duration"] = np.asarray(DURATIONS, np.float32)
    batch["spans"] = np.asarray(SPANS, np.float32)[:, None, :]
    batch["span_mask"] = np.ones((len(DURATIONS), 1), np.float32)
    return batch


def test_charades_counts_a_hit_at_iou_equal_to_m():
    config = _hand_config()
    mesh = sharding.make_mesh(config.mesh)
    batch = _hand_batch(config.model)
    model = trainer.create_model(config.model)
    tx = trainer.family_optimizer(config, 1)[0]
    state = trainer.create_train_state(config, model, jax.random.PRNGKey(0), batch, mesh, tx=tx)
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    eval_step = evaluators.make_eval_step(config, state_sharding, mesh, get_family("vlanet"))
    metrics, predictions = evaluators.evaluate(eval_step, state, [batch], mesh, config.evals)
    # The ranked moments are the hand example's candidates (any order of A's two).
    top1 = predictions["times"][:, 0]
    assert top1[1].tolist() == top1[2].tolist() == [0.0, 5.0]
    assert top1[0].tolist() in ([0.0, 5.0], [5.0, 10.0])
    assert metrics["num_queries"] == 3
    for key, value in INCLUSIVE.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
        assert metrics[key.replace("R@1", "R@5")] == pytest.approx(value, abs=1e-12), key
    assert metrics["mIoU"] == pytest.approx(MEAN_IOU, abs=1e-12)
    assert config.evals.protocol == "mmn"


def test_charades_random_baseline_counts_a_hit_at_iou_equal_to_m():
    config = _hand_config()
    batch = _hand_batch(config.model)
    query = {k: batch[k] for k in ("duration", "spans", "span_mask")}
    split = PreparedSplit(
        videos=InMemoryVideos(batch["video_features"], batch["video_mask"], None),
        video_index=np.arange(len(DURATIONS), dtype=np.int32),
        video_ids=["A", "B", "C"],
        query=query,
        query_ids=["a", "b", "c"],
        num_truncated=0,
    )
    data = types.SimpleNamespace(prepared=lambda name: split)
    got = evaluators.chance_metrics(config, get_family("vlanet"), data, "test", chunk=2)
    assert got is not None
    for key, value in INCLUSIVE.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert got["mIoU"] == pytest.approx(MEAN_IOU, abs=1e-12)


def _charades_train_durations(data_dir) -> np.ndarray:
    """Charades v1 ``length`` of every video named in the Charades-STA training queries."""
    with open(data_dir / "Charades_v1_train.csv", newline="") as f:
        length = {row["id"]: float(row["length"]) for row in csv.DictReader(f)}
    with open(data_dir / "charades_sta_train.txt") as f:
        videos = sorted({line.split()[0] for line in f if line.strip()})
    return np.array([length[v] for v in videos], np.float64)


def _fitting_proposals(durations, stride, windows, max_groups=None) -> np.ndarray:
    """Per video, the proposals ``[k * stride, k * stride + w]`` that end inside it (1 ms
    tolerance), counted over every group that starts inside the video (``max_groups``: only
    the first so many); a video shorter than every window keeps its one ``[0, D]``."""
    counts = []
    for duration in durations:
        starts = np.arange(int(duration / stride) + 2) * stride
        starts = starts[(starts < duration)][:max_groups]
        counts.append(int((starts[:, None] + np.asarray(windows) <= duration + 1e-3).sum()))
    return np.maximum(np.array(counts), 1)


def _model_candidates(model_config, durations, chunk: int = 512) -> np.ndarray:
    counts = []
    for start in range(0, len(durations), chunk):
        part = np.asarray(durations[start : start + chunk], np.float32)
        batch = {"duration": part, "video_mask": np.ones((len(part), 256), np.float32)}
        candidates, _ = vlanet.candidate_proposals(batch, model_config)
        counts.append(candidates.sum(axis=1))
    return np.concatenate(counts)


def test_stride4_keeps_every_proposal_of_every_training_video(shared_data_dir):
    durations = _charades_train_durations(shared_data_dir / "charades_sta")
    assert len(durations) == 5_338 and durations.max() == 194.33
    config = charades.get_config("stride4")
    model = config.model
    stride, windows = 4 / 24, (176 / 24, 208 / 24, 240 / 24)
    assert model.proposal_stride == pytest.approx(stride, abs=1e-12)
    assert tuple(model.proposal_windows) == pytest.approx(windows, abs=1e-12)
    every = _fitting_proposals(durations, stride, windows)
    # The grid of 584 groups (stride 8's earlier size) drops proposals of 13 training videos,
    # those of 108.08 s and longer; the stride 4 config drops none.
    short_grid = _fitting_proposals(durations, stride, windows, max_groups=584)
    assert (short_grid < every).sum() == 13
    assert durations[short_grid < every].min() == 108.08
    np.testing.assert_array_equal(_model_candidates(model, durations), every)
    create = trainer.create_model(model)  # the coverage check passes
    assert create.max_groups == model.max_groups


def test_a_stride_override_without_groups_is_refused():
    config = charades.get_config()
    config.model.proposal_stride = 4 / 24  # Table 3's stride 4 by override, groups of stride 8
    with pytest.raises(ConfigError, match=r"max_groups=561 .* shorter than 100\.83 s"):
        trainer.create_model(config.model)
    config.model.max_groups = charades.get_config("stride4").model.max_groups
    trainer.create_model(config.model)
