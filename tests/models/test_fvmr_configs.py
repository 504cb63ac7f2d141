"""FVMR's paper experiments as config arguments: Table 4's Charades-STA C3D row
(``charades.py:c3d``) trains on ``data fake`` features of the real annotation files, and
Table 5's "FVMR (p + q)" row (``:pq``) ranks the mean of the two probabilities, computed here
in NumPy, while training is unchanged."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from data_pipelines import build
from data_pipelines.fake_features import write_fake_features
from vmr_jax import config_cli, trainer
from vmr_jax.models import fvmr
from vmr_jax.ops import moment_map

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


@pytest.mark.parametrize("name", ["charades", "tacos", "activitynet"])
def test_pq_argument_is_table_5s_p_plus_q_row(name):
    plain = config_cli.load_config(f"{CONFIGS}/fvmr/{name}.py")
    pq = config_cli.load_config(f"{CONFIGS}/fvmr/{name}.py:pq")
    changed = {k for k, v in pq.model.items() if plain.model[k] != v}
    assert changed == {"inference_score"} and pq.model.inference_score == "p+q"
    assert plain.model.inference_score == "p"
    assert pq.data.semantic_tree == "spacy"  # eval batches carry the teacher's trees

    # Decode: "the average of p and q as the final results", on the valid cells.
    starts, ends = moment_map.valid_cells(pq.model.num_clips, tuple(pq.model.pooling_counts))
    rng = np.random.default_rng(0)
    outputs = {
        "p_logits": rng.normal(size=(2, len(starts))).astype(np.float32),
        "q_logits": rng.normal(size=(2, len(starts))).astype(np.float32),
    }
    fused = np.asarray(fvmr.decode(outputs, {}, pq.model)["score_map"])
    want = 0.5 * (_sigmoid(outputs["p_logits"]) + _sigmoid(outputs["q_logits"]))
    np.testing.assert_allclose(fused[:, starts, ends], want, rtol=1e-6)
    only_p = np.asarray(fvmr.decode(outputs, {}, plain.model)["score_map"])
    np.testing.assert_allclose(only_p[:, starts, ends], _sigmoid(outputs["p_logits"]), rtol=1e-6)
    with pytest.raises(KeyError, match="semantic role tree"):
        fvmr.decode({"p_logits": outputs["p_logits"]}, {}, pq.model)


def test_pq_evaluates_with_the_trees_of_the_eval_split(tmp_path, jax_compilation_cache):
    overrides = [
        ("model.inference_score", "p+q"),
        ("train.progress_bar", "false"),
        ("train.checkpoint_every", "0"),
    ]
    config = config_cli.load_config(f"{CONFIGS}/fvmr/synthetic.py:runlocal", overrides)
    result = trainer.train_and_evaluate(config, str(tmp_path))
    assert 0.0 <= result["eval_metrics"]["R@1,IoU=0.5"] <= 1.0
    # Training is the same loss: L_ce(p) + L_ce(q) (+ distillation once it starts).
    train = result["train_metrics"]
    want = train["loss_p"] + train["loss_q"] + train["distill_weight"] * train["loss_distill"]
    np.testing.assert_allclose(train["loss"], want, rtol=1e-5)


def test_charades_c3d_config_trains_on_fake_c3d_features(
    tmp_path, shared_data_dir, jax_compilation_cache
):
    """``charades.py:c3d,runlocal`` on 32 train / 24 test lines of the official files, with
    ``data fake`` C3D features (``c3d_features.hdf5``, 4096-d per video id)."""
    ann = tmp_path / "annotations"
    ann.mkdir()
    src = shared_data_dir / "charades_sta"
    for split, count in (("train", 32), ("test", 24)):
        lines = (src / f"charades_sta_{split}.txt").read_text().splitlines(True)[:count]
        (ann / f"charades_sta_{split}.txt").write_text("".join(lines))
        shutil.copy(src / f"Charades_v1_{split}.csv", ann)
    sources = build.resolve_sources("charades_sta", "c3d", str(tmp_path / "raw"), str(ann))
    write_fake_features(sources, clips_per_second=1.0)
    feature_file = tmp_path / "raw" / "c3d_features.hdf5"
    with h5py.File(feature_file, "r") as f:
        first = next(iter(f.keys()))
        assert f[first].shape[1] == 4096
    build.build(sources, str(tmp_path / "built"))

    texts = [
        line.split("##")[1]
        for split in ("train", "test")
        for line in (ann / f"charades_sta_{split}.txt").read_text().splitlines()
    ]
    words = sorted({w for t in texts for w in re.findall(r"[^\W_]+", t.lower())})
    with open(tmp_path / "glove.txt", "w") as f:
        for k, w in enumerate(words):
            f.write(w + " " + " ".join(str((k + j) % 7 / 7) for j in range(300)) + "\n")
    small = {
        "num_clips": 8,
        "frame_stride": 2,
        "pooling_counts": (4, 2),
        "hidden": 32,
        "lstm_hidden": 16,
        "node_hidden": 16,
        "mlp_hidden": 32,
        "embed_dim": 32,
        "fuse_kernels": (3, 3),
    }
    overrides = [(f"model.{k}", str(v)) for k, v in small.items()] + [
        ("data.dir", str(tmp_path / "built")),
        ("data.glove_path", str(tmp_path / "glove.txt")),
        ("data.num_input_clips", "16"),
        ("train.progress_bar", "false"),
        ("train.num_steps", "2"),
    ]
    config = config_cli.load_config(f"{CONFIGS}/fvmr/charades.py:c3d,runlocal", overrides)
    assert config.data.features == "c3d" and config.model.feature_dim == 4096
    assert config.data.dir.endswith("built")
    result = trainer.train_and_evaluate(config, str(tmp_path / "workdir"))
    assert result["step"] == 2
    assert np.isfinite(result["train_metrics"]["loss"])
    assert result["eval_split"] == "test"
    assert 0.0 <= result["eval_metrics"]["R@1,IoU=0.5"] <= 1.0
