"""``configs/cascaded_mpn/activitynet.py`` end to end: the first videos of the official
ActivityNet Captions train and val files, ``vmr-jax data fake`` C3D features (videos of
differing clip counts), ``data build``, GloVe vectors of the queries' words, then
``:tiny,runlocal`` trains a few steps and evaluates in corpus mode; the written TVR submission
is checked against ``val.json`` read directly: every moment lies inside its video's duration
on that video's own ``duration / 100``-second frame grid."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from vmr_jax import checkpoint_eval, config_cli, data_cli, trainer
from vmr_jax.text.tokenizer import split_words

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "cascaded_mpn" / "activitynet.py"
VIDEOS = {"train": 6, "val": 4}  # first videos of each official file

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")


def _data(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="vmr-jax data")
    data_cli.add_arguments(parser)
    return data_cli.main(parser.parse_args(list(argv)))


@pytest.fixture(scope="module")
def built(tmp_path_factory, request):
    """(built dir, GloVe file, the val subset as read from val.json)."""
    shared = request.getfixturevalue("shared_data_dir")
    root = tmp_path_factory.mktemp("activitynet_cascaded_mpn")
    ann = root / "annotations"
    ann.mkdir()
    subsets = {}
    for split, count in VIDEOS.items():
        data = json.loads((shared / "activitynet_captions" / f"{split}.json").read_text())
        subsets[split] = dict(list(data.items())[:count])
        (ann / f"{split}.json").write_text(json.dumps(subsets[split]))
    common = ["--dataset", "activitynet", "--features", "c3d", "--splits", "train,val"]
    fake, out = root / "fake", root / "built"
    assert _data("fake", *common, "--data_dir", str(ann), "--output_dir", str(fake)) == 0
    argv = ["--data_dir", str(fake), "--annotation_dir", str(ann), "--output_dir", str(out)]
    assert _data("build", *common, *argv) == 0
    words = sorted(
        {
            w
            for s in subsets.values()
            for v in s.values()
            for t in v["sentences"]
            for w in split_words(t)
        }
    )
    glove = root / "glove.txt"
    with open(glove, "w") as f:
        for k, w in enumerate(words):
            f.write(w + " " + " ".join(f"{(k * 7 + j) % 11 / 11 - 0.5:.3f}" for j in range(300)))
            f.write("\n")
    return out, glove, subsets["val"]


def test_tiny_runlocal_trains_and_evaluates_in_each_videos_seconds(built, tmp_path):
    out, glove, val = built
    overrides = [
        ("data.dir", str(out)),
        ("data.glove_path", str(glove)),
        ("train.progress_bar", "false"),
    ]
    config = config_cli.load_config(f"{CONFIG}:tiny,runlocal", overrides)
    assert config.model.clip_length == 0.0 and config.data.clip_sampling == "resample"
    assert config.data.text_mode == "glove" and config.data.num_input_clips == 100
    workdir = tmp_path / "workdir"
    result = trainer.train_and_evaluate(config, str(workdir))
    assert result["step"] == 4
    assert np.isfinite(result["train_metrics"]["loss"])
    assert np.isfinite(result["train_metrics"]["loss_moment"])
    metrics = result["eval_metrics"]
    num_val = sum(len(v["sentences"]) for v in val.values())  # no val pair is dropped
    assert metrics["num_queries"] == num_val
    assert metrics["VR/r100"] == 100.0  # 4 videos: the query's own is always listed
    for name in ("VCMR/0.5-r1", "SVMR/0.5-r1", "VR/r1"):
        assert 0.0 <= metrics[name] <= 100.0

    evaluated = checkpoint_eval.evaluate_workdir(str(workdir))
    assert evaluated["metrics"] == pytest.approx(metrics)
    submission = json.loads(Path(evaluated["predictions_path"]).read_text())
    idx2video = {i: v for v, i in submission["video2idx"].items()}
    assert sorted(idx2video.values()) == sorted(val)
    durations = {v: float(val[v]["duration"]) for v in val}
    assert len(set(durations.values())) == len(durations)  # every video its own frame length
    checked = 0
    for task in ("VCMR", "SVMR"):
        for row in submission[task]:
            preds = np.asarray(row["predictions"], np.float64)
            assert len(preds) > 0
            for video_idx, st, ed, _ in preds:
                duration = durations[idx2video[int(video_idx)]]
                # float32 VCMR times of float32 durations may pass the float64 one by an ulp.
                assert 0.0 <= st < ed <= np.float32(duration), (task, st, ed, duration)
                # On the video's own grid: st = i / 100 * duration, ed = (j + 1) / 100 * d.
                frames = np.array([st, ed]) * 100 / duration
                np.testing.assert_allclose(frames, np.round(frames), atol=1e-3)
                checked += 1
    assert checked > 2 * num_val
