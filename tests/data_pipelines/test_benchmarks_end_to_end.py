"""Every benchmark from its official files to training batches: the first queries of a real
annotation file, random features written in the official layout (``data fake``), ``data
build``, then the tf.data pipeline; and a few MGPN steps on a built Charades-STA subset.

Features read back from the built dataset are compared with the feature files read directly
(h5py / np.load), not through the code under test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from data_pipelines import build
from data_pipelines import input_pipeline as ip
from data_pipelines.fake_features import write_fake_features
from data_pipelines.stored import StoredDataset
from data_pipelines.text_inputs import TextFileMissing

SUBSET = 24
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _charades(src, dst):
    lines = (src / "charades_sta" / "charades_sta_test.txt").read_text().splitlines(True)
    (dst / "charades_sta_test.txt").write_text("".join(lines[:SUBSET]))
    shutil.copy(src / "charades_sta" / "Charades_v1_test.csv", dst)
    return SUBSET  # no test line is dropped (SOURCES.md)


def _json_dict_subset(path, out, videos):
    data = json.loads(path.read_text())
    keep = dict(list(data.items())[:videos])
    out.write_text(json.dumps(keep))
    return sum(len(v["sentences"]) for v in keep.values())


def _tacos(src, dst):
    return _json_dict_subset(src / "tacos" / "test.json", dst / "test.json", 1)


def _activitynet(src, dst):
    return _json_dict_subset(src / "activitynet_captions" / "val.json", dst / "val.json", 6)


def _didemo(src, dst):
    data = json.loads((src / "didemo" / "test_data.json").read_text())[:SUBSET]
    (dst / "test_data.json").write_text(json.dumps(data))
    return SUBSET


def _tvr(src, dst):
    lines = (src / "tvr" / "tvr_val_release.jsonl").read_text().splitlines(True)
    (dst / "tvr_val_release.jsonl").write_text("".join(lines[:SUBSET]))
    shutil.copy(src / "tvr" / "tvr_video2dur_idx.json", dst)
    return SUBSET


CASES = {
    # dataset, feature set, split, subset writer
    "charades_sta-i3d": ("charades_sta", "i3d", "test", _charades),
    "charades_sta-vgg": ("charades_sta", "vgg", "test", _charades),
    "tacos-c3d": ("tacos", "c3d", "test", _tacos),
    "activitynet-c3d": ("activitynet", "c3d", "val", _activitynet),
    "didemo-fc7": ("didemo", "fc7", "test", _didemo),
    "tvr-resnet_i3d": ("tvr", "resnet_i3d", "val", _tvr),
}


def _direct_read(spec, path, key):
    if spec.layout == "npy":
        return np.load(os.path.join(path, key + ".npy"))
    with h5py.File(path, "r") as f:
        node = f[key][spec.hdf5_dataset] if spec.hdf5_dataset else f[key]
        return node[()]


def _build_subset(tmp_path, shared_data_dir, dataset, features, split, writer):
    ann = tmp_path / "annotations"
    ann.mkdir()
    expected = writer(shared_data_dir, ann)
    sources = build.resolve_sources(dataset, features, str(tmp_path / "raw"), str(ann))
    write_fake_features(sources, [split], clips_per_second=0.5)
    build.build(sources, str(tmp_path / "built"), splits=[split])
    return sources, StoredDataset(tmp_path / "built").split(split), expected


@pytest.mark.parametrize("case", sorted(CASES))
def test_official_files_to_batches(case, tmp_path, shared_data_dir):
    dataset, features, split, writer = CASES[case]
    sources, stored, expected = _build_subset(
        tmp_path, shared_data_dir, dataset, features, split, writer
    )
    assert len(stored) == expected
    # Every built video equals its feature-file entry, read directly.
    spec = sources.features.video
    for row in range(stored.num_videos):
        first = next(a for a, r in zip(stored, stored.video_row) if r == row)
        want = _direct_read(spec, sources.feature_paths["video"], spec.key(first))
        got = stored.videos([row])[0]["video_features"]
        np.testing.assert_array_equal(got, want[: len(got)])
        assert len(got) == len(want)  # fake subtitles have the video's clip count

    tvr = dataset == "tvr"
    config = dict(
        num_input_clips=16,
        max_query_len=8,
        prefetch=1,
        clip_sampling="truncate" if tvr else "resample",
        text_mode="features" if tvr else "tokens",
        subtitles=tvr,
    )
    text = None
    if not tvr:
        vocab = ip.Vocabulary.build(a.query_text for a in stored)
        text = ip.TextInputs("tokens", vocab)
    prepared = ip.prepare_split(stored, config, text, split)
    batch = next(ip.make_eval_iterator(prepared, config, global_batch=8, text=text))
    assert batch["video_features"].shape == (8, 16, spec.dim)
    np.testing.assert_array_equal(batch["query_index"], np.arange(8))
    first = stored[0]
    spans = np.asarray(first.spans_s, np.float32)
    np.testing.assert_array_equal(batch["spans"][0, : len(spans)], spans)
    assert batch["span_mask"][0].sum() == len(spans)
    if dataset == "didemo":
        assert len(spans) >= 4  # one span per annotator
    if tvr:
        assert batch["subtitle_features"].shape == (8, 16, 768)
        tokens = _direct_read(sources.features.query, sources.feature_paths["query"], "90200")
        assert first.query_id == "90200"  # first line of tvr_val_release.jsonl
        n = min(len(tokens), 8)
        np.testing.assert_array_equal(batch["query_features"][0, :n], tokens[:n])
        assert batch["query_mask"][0].sum() == n


def test_mgpn_trains_on_a_built_benchmark(tmp_path, shared_data_dir, jax_compilation_cache):
    from vmr_jax import config_cli, trainer

    ann = tmp_path / "annotations"
    ann.mkdir()
    lines = (shared_data_dir / "charades_sta" / "charades_sta_train.txt").read_text()
    (ann / "charades_sta_train.txt").write_text("".join(lines.splitlines(True)[:32]))
    shutil.copy(shared_data_dir / "charades_sta" / "Charades_v1_train.csv", ann)
    _charades(shared_data_dir, ann)
    sources = build.resolve_sources("charades_sta", "i3d", str(tmp_path / "raw"), str(ann))
    write_fake_features(sources, clips_per_second=1.0)
    build.build(sources, str(tmp_path / "built"))
    words = {w for line in lines.splitlines()[:32] for w in line.split("##")[1].lower().split()}
    with open(tmp_path / "glove.txt", "w") as f:
        for k, w in enumerate(sorted(words)):
            f.write(w + " " + " ".join(str((k + j) % 7 / 7) for j in range(300)) + "\n")
    tiny = {
        "hidden": 32,
        "num_clips": 8,
        "frame_stride": 2,
        "pooling_counts": (4, 2),
        "gru_layers": 1,
        "groups": 4,
    }
    overrides = [(f"model.{k}", str(v)) for k, v in tiny.items()] + [
        ("data.dir", str(tmp_path / "built")),
        ("data.glove_path", str(tmp_path / "glove.txt")),
        # A few-word file has no torchtext row 400,000 (MGPN's unknown-word rule on 840B).
        ("data.glove_missing", "zero"),
        ("data.num_input_clips", "16"),
        ("train.progress_bar", "false"),
    ]
    config = config_cli.load_config(f"{CONFIGS}/mgpn/charades_i3d.py:runlocal", overrides)
    result = trainer.train_and_evaluate(config, str(tmp_path / "workdir"))
    assert result["step"] == 4
    assert np.isfinite(result["train_metrics"]["loss"])
    assert result["eval_split"] == "test"
    assert 0.0 <= result["eval_metrics"]["R@1,IoU=0.5"] <= 1.0


@pytest.fixture
def charades_i3d_subset(tmp_path, shared_data_dir):
    """A Charades-STA I3D dataset built from the first 32 train and 24 test lines of the
    official files, with `data fake` features; returns (built dir, its train lines)."""
    ann = tmp_path / "annotations"
    ann.mkdir()
    lines = (shared_data_dir / "charades_sta" / "charades_sta_train.txt").read_text()
    train = lines.splitlines(True)[:32]
    (ann / "charades_sta_train.txt").write_text("".join(train))
    shutil.copy(shared_data_dir / "charades_sta" / "Charades_v1_train.csv", ann)
    _charades(shared_data_dir, ann)
    sources = build.resolve_sources("charades_sta", "i3d", str(tmp_path / "raw"), str(ann))
    write_fake_features(sources, clips_per_second=1.0)
    build.build(sources, str(tmp_path / "built"))
    return tmp_path / "built", train


def test_tiny_config_trains_without_glove(tmp_path, charades_i3d_subset, jax_compilation_cache):
    """`charades_i3d.py:tiny` needs one override (where the data is): learned word embeddings
    sized from the training queries' vocabulary, no GloVe file."""
    from vmr_jax import config_cli, trainer

    built, train = charades_i3d_subset
    overrides = [
        ("data.dir", str(built)),
        ("train.num_steps", "2"),
        ("train.progress_bar", "false"),
    ]
    config = config_cli.load_config(f"{CONFIGS}/mgpn/charades_i3d.py:tiny", overrides)
    workdir = tmp_path / "workdir"
    result = trainer.train_and_evaluate(config, str(workdir))
    assert result["step"] == 2
    assert np.isfinite(result["train_metrics"]["loss"])
    assert result["eval_split"] == "test"
    # The vocabulary by hand: lower-cased runs of letters/digits of the 32 train sentences,
    # plus <pad> and <unk>.
    words = {w for line in train for w in re.findall(r"[^\W_]+", line.split("##")[1].lower())}
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["vocab_size"] == len(words) + 2
    assert saved["data"]["text_mode"] == "tokens"


def test_a_word_table_smaller_than_the_vocabulary_is_refused(tmp_path, charades_i3d_subset):
    from vmr_jax import config_cli, trainer

    built, _ = charades_i3d_subset
    overrides = [("data.dir", str(built)), ("model.vocab_size", "10")]
    config = config_cli.load_config(f"{CONFIGS}/mgpn/charades_i3d.py:tiny", overrides)
    with pytest.raises(ValueError, match=r"vocab_size=10 is smaller than the tokenizer's"):
        trainer.train_and_evaluate(config, str(tmp_path / "workdir"))
    assert not (tmp_path / "workdir" / "checkpoints").exists()


def test_missing_glove_stops_a_benchmark_run_before_training(tmp_path, charades_i3d_subset):
    from vmr_jax import config_cli, trainer

    built, _ = charades_i3d_subset
    glove = tmp_path / "glove.840B.300d.txt"
    overrides = [("data.dir", str(built)), ("data.glove_path", str(glove))]
    config = config_cli.load_config(f"{CONFIGS}/mgpn/charades_i3d.py", overrides)
    with pytest.raises(FileNotFoundError) as info:
        trainer.train_and_evaluate(config, str(tmp_path / "workdir"))
    assert isinstance(info.value, TextFileMissing)
    message = str(info.value)
    assert f"GloVe file {str(glove)!r} not found" in message
    assert "config.data.glove_path" in message and "glove.840B.300d.zip" in message
    assert not (tmp_path / "workdir" / "checkpoints").exists()
