"""PREM's benchmark configs from the official layouts to both stages: the first queries of the
real TVR and DiDeMo annotation files, random features in the official layouts (``vmr-jax data
fake``), ``vmr-jax data build``, then ``configs/prem/{tvr,didemo}.py`` trained stage by stage
(``:retriever,runlocal`` mines its hard negatives; ``:localizer,runlocal`` starts from it).

Neither release has a public train file in shared/data, so the train split is written from the
first queries of the val file and the val split from other queries (TVR: later val lines;
DiDeMo: ``test_data.json``).  Expected counts are read from the annotation files directly
(json), never through the code under test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from flax import traverse_util

TRAIN_QUERIES = 12
VAL_QUERIES = 8
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "prem"


def _tvr(src: Path, ann: Path) -> tuple[list[dict], list[dict]]:
    lines = (src / "tvr" / "tvr_val_release.jsonl").read_text().splitlines(True)
    train, val = lines[:TRAIN_QUERIES], lines[TRAIN_QUERIES : TRAIN_QUERIES + VAL_QUERIES]
    (ann / "tvr_train_release.jsonl").write_text("".join(train))
    (ann / "tvr_val_release.jsonl").write_text("".join(val))
    train_q = [json.loads(line) for line in train]
    val_q = [json.loads(line) for line in val]
    # The index lists each split's videos: the train queries' val videos become train videos.
    index = json.loads((src / "tvr" / "tvr_video2dur_idx.json").read_text())
    index["train"] = {q["vid_name"]: index["val"][q["vid_name"]] for q in train_q}
    (ann / "tvr_video2dur_idx.json").write_text(json.dumps(index))
    return [{"video": q["vid_name"], "text": q["desc"]} for q in train_q], val_q


def _didemo(src: Path, ann: Path) -> tuple[list[dict], list[dict]]:
    train = json.loads((src / "didemo" / "val_data.json").read_text())[:TRAIN_QUERIES]
    val = json.loads((src / "didemo" / "test_data.json").read_text())[:VAL_QUERIES]
    (ann / "train_data.json").write_text(json.dumps(train))
    (ann / "val_data.json").write_text(json.dumps(val))
    return [{"video": q["video"], "text": q["description"]} for q in train], val


CASES = {
    # config, dataset, feature set, annotation subset writer
    "tvr": ("tvr.py", "tvr", "hero_resnet_slowfast", _tvr),
    "didemo": ("didemo.py", "didemo", "resnet_slowfast", _didemo),
}


def _glove(path: Path, sentences: list[str]) -> None:
    """A 300-d GloVe text file holding every word of ``sentences`` (made-up vectors)."""
    words = sorted({w for s in sentences for w in re.findall(r"[^\W_]+", s.lower())})
    with open(path, "w") as f:
        for k, w in enumerate(words):
            f.write(w + " " + " ".join(str((k + j) % 7 / 7) for j in range(300)) + "\n")


def _params(workdir: Path) -> dict:
    from vmr_jax import checkpoint_eval

    state = checkpoint_eval.restore_workdir(str(workdir), None)[3]
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(state.params).items()}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_both_stages_train_on_a_built_benchmark(
    case, tmp_path, shared_data_dir, jax_compilation_cache
):
    from vmr_jax import config_cli, main, trainer

    config_file, dataset, features, writer = CASES[case]
    ann, raw, built = tmp_path / "annotations", tmp_path / "raw", tmp_path / "built"
    ann.mkdir()
    train, val = writer(shared_data_dir, ann)
    common = ["--dataset", dataset, "--features", features, "--splits", "train,val"]
    fake = ["--data_dir", str(ann), "--output_dir", str(raw)]
    assert main.main(["data", "fake", *common, *fake]) == 0
    build = ["--data_dir", str(raw), "--annotation_dir", str(ann), "--output_dir", str(built)]
    assert main.main(["data", "build", *common, *build]) == 0
    splits = json.loads((built / "dataset_info.json").read_text())["splits"]
    num_videos = len({q["video"] for q in train})
    assert (splits["train"]["num_queries"], splits["train"]["num_videos"]) == (
        len(train),
        num_videos,
    )
    assert splits["val"]["num_queries"] == len(val)

    overrides = [("data.dir", str(built)), ("train.progress_bar", "false")]
    if dataset == "didemo":
        _glove(tmp_path / "glove.txt", [q["text"] for q in train])
        overrides.append(("data.glove_path", str(tmp_path / "glove.txt")))
    config = CONFIGS / config_file
    retriever, localizer = tmp_path / "retriever", tmp_path / "localizer"

    stage = config_cli.load_config(f"{config}:retriever,runlocal", overrides)
    assert trainer.train_and_evaluate(stage, str(retriever))["step"] == 4
    mined = np.load(retriever / "hard_negatives" / "train.npz")["video_rows"]
    assert mined.shape == (len(train), min(100, num_videos))
    assert ((mined >= 0) & (mined < num_videos)).all()

    init = [("train.init_from", str(retriever))]
    stage = config_cli.load_config(f"{config}:localizer,runlocal", overrides + init)
    result = trainer.train_and_evaluate(stage, str(localizer))
    assert (result["step"], result["eval_split"]) == (4, "val")
    metrics = result["eval_metrics"]
    assert metrics["num_queries"] == len(val)
    recalls = (1, 5, 10, 100)  # the configs' evals.recalls and evals.ious
    keys = [f"VR/r{k}" for k in recalls] + [
        f"{task}/{iou}-r{k}" for task in ("VCMR", "SVMR") for iou in (0.5, 0.7) for k in recalls
    ]
    assert not set(keys) - set(metrics), sorted(metrics)
    # VAL_QUERIES = 8 queries, so at most 8 val videos: every query's own video is among the
    # first 10 of any ranking of the val corpus.
    assert metrics["VR/r10"] == metrics["VR/r100"] == 100.0  # in percent

    before, after = _params(retriever), _params(localizer)
    frozen = [k for k in after if k[0] == "retriever"]
    assert frozen and any(k[0] == "localizer" for k in after)
    for key in frozen:  # the localizer stage never moves the retriever it started from
        np.testing.assert_array_equal(after[key], before[key], err_msg=str(key))
