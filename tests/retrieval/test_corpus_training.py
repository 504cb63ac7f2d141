"""XML end to end on the synthetic corpus: train, evaluate a checkpoint, re-score the written
TVR submission, and learn far above random retrieval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_pipelines import synthetic
from vmr_jax import checkpoint_eval, config_cli, trainer
from vmr_jax.evaluation import chance as chance_levels
from vmr_jax.evaluation import vcmr
from vmr_jax.retrieval import evaluate as corpus_eval

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "xml" / "synthetic.py")

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")


def _config(arg: str = "runlocal", **overrides):
    base = {"train.progress_bar": False}
    base.update(overrides)
    return config_cli.load_config(f"{CONFIG}:{arg}", [(k, str(v)) for k, v in base.items()])


@pytest.fixture(scope="module")
def runlocal_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("xml_runlocal")
    return trainer.train_and_evaluate(_config(), str(workdir)), workdir


def test_train_reports_the_three_tvr_tasks(runlocal_run):
    result, _ = runlocal_run
    metrics = result["eval_metrics"]
    for task, names in (("VCMR", "0.5-r1"), ("SVMR", "0.7-r5"), ("VR", "r100")):
        assert 0.0 <= metrics[f"{task}/{names}"] <= 100.0
    assert metrics["num_queries"] == 24  # runlocal: 60 videos, val 6 x 4 queries
    # VR over the 6 val videos: the GT video is always among 100.
    assert metrics["VR/r100"] == 100.0
    assert result["best_step"] == result["step"]


def test_eval_writes_a_submission_that_scores_the_same(runlocal_run):
    result, workdir = runlocal_run
    out = checkpoint_eval.evaluate_workdir(str(workdir))
    assert out["protocol"] == "tvr" and out["step"] == result["step"]
    assert out["metrics"] == pytest.approx(result["eval_metrics"])
    submission = json.loads(Path(out["predictions_path"]).read_text())
    assert set(submission) == {"video2idx", "VCMR", "SVMR", "VR"}
    # Re-score the file with the official evaluator's rules, from the records alone.
    config = _config()
    spec = synthetic.spec_from_config(config.data.synthetic)
    records = synthetic.make_splits(spec, int(config.data.seed), ["val"])["val"]
    video_ids = list(dict.fromkeys(r.video_id for r in records))
    gt = corpus_eval.corpus_ground_truth(records, video_ids)
    rescored = corpus_eval.flatten_metrics(vcmr.evaluate_submission(submission, gt))
    assert rescored == pytest.approx(out["metrics"])
    # Lists: at most 100 rows, best first; SVMR rows all in the query's own video.
    for row, q_gt in zip(submission["SVMR"], gt.video_idx):
        preds = np.asarray(row["predictions"])
        assert len(preds) <= 100
        assert (preds[:, 0] == q_gt).all()
        assert (np.diff(preds[:, 3]) <= 0).all()


@pytest.mark.slow
def test_xml_learns_the_synthetic_corpus_far_above_chance(tmp_path):
    config = _config(
        "",
        **{
            "train.num_steps": 300,
            "train.log_every": 100,
            "train.checkpoint_every": 0,
            "evals.every": 0,
            "data.synthetic.num_videos": 300,
        },
    )
    result = trainer.train_and_evaluate(config, str(tmp_path))
    metrics = result["eval_metrics"]
    spec = synthetic.spec_from_config(config.data.synthetic)
    records = synthetic.make_splits(spec, int(config.data.seed), ["val"])["val"]
    video_ids = list(dict.fromkeys(r.video_id for r in records))
    clips = np.array(
        [
            min(len(next(r for r in records if r.video_id == v).video_features), 64)
            for v in video_ids
        ]
    )
    chance = chance_levels.vcmr_chance_level(
        np.array([r.spans_s[0] for r in records]),
        np.array([video_ids.index(r.video_id) for r in records]),
        clips,
        config.model.clip_length,
        config.model.min_pred_l,
        config.model.max_pred_l,
    )
    assert chance["VCMR"]["0.5-r1"] < 1.0
    assert metrics["VCMR/0.5-r1"] > 20 * chance["VCMR"]["0.5-r1"]
    assert metrics["VCMR/0.5-r1"] > 5.0
    assert metrics["VR/r1"] > 5 * chance["VR"]["r1"]
