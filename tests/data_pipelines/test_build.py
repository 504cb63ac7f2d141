"""Build / stored-split / pipeline machinery on a toy benchmark written in the official layouts.

The toy benchmark is a dataset module in miniature (NAME, SPLITS, FEATURES, parse_split) over
a jsonl annotation file, an HDF5 video file keyed by video id, an HDF5 subtitle file and an
HDF5 query-token file keyed by ``desc_id`` -- the TVR layouts.  Every expected value below is
written by the test itself.
"""

from __future__ import annotations

import json
import types

import h5py
import numpy as np
import pytest

from data_pipelines import build, data_report
from data_pipelines import input_pipeline as ip
from data_pipelines.annotations import Annotation, DataError
from data_pipelines.benchmarks import FeatureSet, FeatureSpec
from data_pipelines.stored import StoredDataset


def _parse_split(annotation_dir, split, report):
    path = f"{annotation_dir}/{split}.jsonl"
    out = []
    with open(path) as f:
        for line in f:
            q = json.loads(line)
            if q["ts"][0] >= q["ts"][1]:
                report.drop(split, "start >= end", path, "line", str(q["desc_id"]))
                continue
            out.append(
                Annotation(
                    str(q["desc_id"]),
                    q["vid"],
                    q["duration"],
                    np.asarray([q["ts"]]),
                    q["desc"],
                    {"desc_id": q["desc_id"]},
                )
            )
    report.kept(split, len(out))
    return out


def _spec(file, dim, key="{video_id}"):
    return FeatureSpec(
        file=file,
        layout="hdf5",
        dim=dim,
        extractor="toy",
        clip="1.5 s",
        normalisation="none",
        source="test",
        key_format=key,
        clip_seconds=1.5,
    )


TOY = types.SimpleNamespace(
    NAME="toy",
    SPLITS={"train": ("train.jsonl",), "test": ("test.jsonl",)},
    FEATURES={
        "full": FeatureSet(
            video=_spec("video.h5", 3),
            subtitle=_spec("sub.h5", 2),
            query=_spec("query.h5", 4, "{desc_id}"),
        ),
        "video_only": FeatureSet(video=_spec("video.h5", 3)),
    },
    parse_split=_parse_split,
)

QUERIES = {
    "train": [
        {"desc_id": 1, "vid": "a", "duration": 9.0, "ts": [0.0, 3.0], "desc": "one two"},
        {"desc_id": 2, "vid": "b", "duration": 6.0, "ts": [1.5, 6.0], "desc": "three"},
        {"desc_id": 3, "vid": "a", "duration": 9.0, "ts": [3.0, 9.0], "desc": "four five six"},
        {"desc_id": 4, "vid": "b", "duration": 6.0, "ts": [2.0, 2.0], "desc": "dropped"},
    ],
    "test": [{"desc_id": 7, "vid": "c", "duration": 3.0, "ts": [0.0, 1.5], "desc": "seven"}],
}
VIDEO = {
    "a": np.arange(18, dtype=np.float32).reshape(6, 3),
    "b": np.arange(12, dtype=np.float32).reshape(4, 3) * -1,
    "c": np.ones((2, 3), np.float32),
}
SUB = {
    "a": np.full((5, 2), 2.0, np.float32),
    "b": np.ones((4, 2), np.float32),
    "c": np.zeros((2, 2), np.float32),
}
TOKENS = {str(k): np.full((k, 4), float(k), np.float32) for k in (1, 2, 3, 4, 7)}


def _write_h5(path, arrays):
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value


@pytest.fixture
def toy_dir(tmp_path):
    for split, rows in QUERIES.items():
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    _write_h5(tmp_path / "video.h5", VIDEO)
    _write_h5(tmp_path / "sub.h5", SUB)
    _write_h5(tmp_path / "query.h5", TOKENS)
    return tmp_path


def _sources(directory, features="full", **paths):
    fs = TOY.FEATURES[features]
    resolved = {
        r: str(paths.get(r) or directory / getattr(fs, r).file)
        for r in ("video", "subtitle", "query")
        if getattr(fs, r) is not None
    }
    return build.Sources(TOY, features, fs, str(directory), resolved)


def test_build_round_trip(toy_dir, tmp_path):
    out = tmp_path / "built"
    info = build.build(_sources(toy_dir), str(out))
    assert info["splits"]["train"]["num_queries"] == 3
    assert info["splits"]["train"]["num_videos"] == 2
    assert info["splits"]["train"]["feature_dims"] == {"video": 3, "subtitle": 2, "query": 4}
    assert info["report"]["train"] == {
        "kept": 3,
        "dropped": {"start >= end": 1},
        # video 'a' has 6 clips, its subtitles 5: both cut to 5.
        "clipped": {"video and subtitle clip counts differ: both cut to the shorter": 1},
    }
    built = StoredDataset(out)
    train = built.split("train")
    assert [a.query_id for a in train] == ["1", "2", "3"]
    np.testing.assert_array_equal(train.video_row, [0, 1, 0])
    a, b = train.videos([0, 1])
    np.testing.assert_array_equal(a["video_features"], VIDEO["a"][:5])
    np.testing.assert_array_equal(a["subtitle_features"], SUB["a"])
    np.testing.assert_array_equal(b["video_features"], VIDEO["b"])
    np.testing.assert_allclose(b["clip_times"], [[0, 1.5], [1.5, 3], [3, 4.5], [4.5, 6]])
    np.testing.assert_array_equal(train.query_features([2])[0], TOKENS["3"])
    np.testing.assert_array_equal(train.num_query_tokens, [1, 2, 3])
    assert json.loads((out / "dataset_info.json").read_text())["annotation_files"]["test"]


def _config(**kw):
    base = dict(num_input_clips=4, max_query_len=2, text_mode="features", prefetch=1)
    base.update(kw)
    return base


def test_pipeline_streams_built_split(toy_dir, tmp_path):
    build.build(_sources(toy_dir), str(tmp_path / "built"))
    train = StoredDataset(tmp_path / "built").split("train")
    cfg = _config(clip_sampling="truncate", subtitles=True)
    batch = ip.gather_batch(ip.prepare_split(train, cfg), np.array([2, 1, -1]))
    # Query 3 (video a, 5 clips after the subtitle cut) truncated to 4 clips.
    np.testing.assert_array_equal(batch["video_features"][0], VIDEO["a"][:4])
    np.testing.assert_array_equal(batch["video_mask"], [[1, 1, 1, 1]] * 3)
    np.testing.assert_array_equal(batch["subtitle_features"][1], SUB["b"])
    # Tokens of query 3 (3 rows of 3.0) cut to max_query_len 2; query 2 has 2 rows of 2.0.
    np.testing.assert_array_equal(batch["query_features"][0], np.full((2, 4), 3.0))
    np.testing.assert_array_equal(batch["query_mask"], [[1, 1], [1, 1], [1, 0]])
    np.testing.assert_array_equal(batch["query_index"], [2, 1, -1])
    np.testing.assert_array_equal(batch["valid"], [1, 1, 0])
    np.testing.assert_allclose(batch["spans"][:, 0], [[3, 9], [1.5, 6], [0, 3]])

    padded = ip.gather_batch(
        ip.prepare_split(train, _config(num_input_clips=6, clip_sampling="truncate")), np.array([1])
    )
    np.testing.assert_array_equal(padded["video_mask"], [[1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(padded["video_features"][0, 4:], 0)

    # 2D-TAN resampling of 5 clips into 2 bins: edges round([0, 2.5, 5]) = [0, 2, 4] (half to
    # even), so bins are mean(x0, x1) and mean(x2, x3).
    two = ip.gather_batch(ip.prepare_split(train, _config(num_input_clips=2)), np.array([0]))
    x = VIDEO["a"]
    np.testing.assert_allclose(two["video_features"][0], [(x[0] + x[1]) / 2, (x[2] + x[3]) / 2])

    it = ip.make_train_iterator(ip.prepare_split(train, cfg), cfg, global_batch=2, seed=0)
    first = next(it)
    assert first["video_features"].shape == (2, 4, 3)
    assert first["query_features"].shape == (2, 2, 4)


def test_missing_features_error_or_counted(toy_dir, tmp_path):
    del_video = {k: v for k, v in VIDEO.items() if k != "b"}
    _write_h5(tmp_path / "partial.h5", del_video)
    sources = _sources(toy_dir, "video_only", video=tmp_path / "partial.h5")
    with pytest.raises(DataError, match=r"partial\.h5.*1 video keys of split 'train'.*'b'"):
        build.build(sources, str(tmp_path / "out1"))
    info = build.build(sources, str(tmp_path / "out2"), allow_missing=True)
    assert info["report"]["train"]["dropped"] == {
        "start >= end": 1,
        "no video features in partial.h5": 1,
    }
    assert info["report"]["train"]["kept"] == 2
    assert info["splits"]["train"]["num_queries"] == 2


def test_feature_file_of_another_dataset(toy_dir, tmp_path):
    _write_h5(tmp_path / "other.h5", {"s13-d21.avi": np.ones((3, 3), np.float32)})
    with pytest.raises(DataError, match=r"other\.h5.*shares no key.*another dataset"):
        build.build(_sources(toy_dir, "video_only", video=tmp_path / "other.h5"), str(tmp_path))


def test_validate_collects_every_problem(toy_dir, tmp_path):
    bad = dict(VIDEO)
    bad["a"] = VIDEO["a"].copy()
    bad["a"][2, 1] = np.nan
    bad["c"] = np.ones((2, 5), np.float32)  # wrong width
    _write_h5(tmp_path / "bad.h5", bad)
    result = data_report.validate(_sources(toy_dir, "video_only", video=tmp_path / "bad.h5"))
    assert len(result["errors"]) == 2
    assert "bad.h5: key 'a': field 'video_features': 1 non-finite" in result["errors"][0]
    assert "row 2, column 1" in result["errors"][0]
    assert "key 'c'" in result["errors"][1] and "expected width 3" in result["errors"][1]
    assert result["checked"]["train"] == {"videos": 1, "queries": 1}


def test_stats_counts_and_distributions(toy_dir):
    out = data_report.stats(_sources(toy_dir))
    train = out["splits"]["train"]
    assert (train["queries"], train["videos"]) == (3, 2)
    assert train["duration_s"]["median"] == 7.5  # videos of 9 s and 6 s
    assert train["moment_length_s"]["max"] == 6.0
    assert train["moment_share_of_video"]["min"] == pytest.approx(3 / 9, abs=1e-4)
    assert out["parse_report"]["train"]["dropped"] == {"start >= end": 1}
    # The toy parser reports its drops at "<file>:line" (desc_id 4 is the dropped query).
    assert out["parse_examples"]["train"]["dropped"] == {
        "start >= end": [f"{toy_dir}/train.jsonl:line"]
    }
    assert out["video_features"]["train"]["clips_per_video"]["max"] == 6
    # 6 clips / 9 s and 4 clips / 6 s.
    assert out["video_features"]["train"]["clips_per_second"]["mean"] == pytest.approx(
        2 / 3, abs=1e-4
    )
    assert out["feature_ids"]["video"]["unused_keys"] == 0
    assert out["manifest"]["video"]["file"] == "video.h5"


def test_damaged_stored_dataset(toy_dir, tmp_path):
    out = tmp_path / "built"
    build.build(_sources(toy_dir, "video_only"), str(out))
    with open(out / "train.queries.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(DataError, match=r"train\.queries\.jsonl: line 4"):
        StoredDataset(out).split("train")
    with pytest.raises(DataError, match="not a built dataset"):
        StoredDataset(tmp_path)


def test_feature_file_found_under_an_official_alias(tmp_path):
    spec = FeatureSpec(
        file="charades_vgg_rgb.hdf5",
        aliases=("vgg_rgb_features.hdf5",),
        layout="hdf5",
        dim=3,
        extractor="",
        clip="",
        normalisation="",
        source="",
    )
    assert spec.locate(str(tmp_path)) == str(tmp_path / "charades_vgg_rgb.hdf5")  # neither
    (tmp_path / "vgg_rgb_features.hdf5").touch()
    assert spec.locate(str(tmp_path)) == str(tmp_path / "vgg_rgb_features.hdf5")
    (tmp_path / "charades_vgg_rgb.hdf5").touch()
    assert spec.locate(str(tmp_path)) == str(tmp_path / "charades_vgg_rgb.hdf5")
