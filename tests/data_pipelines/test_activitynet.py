"""ActivityNet Captions: counts, drops and clamps on the official files, hand-checked records,
bad input, and the C3D feature file in its official group/dataset layout."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from data_pipelines import activitynet
from data_pipelines.annotations import DataError, ParseReport

DROP = "start >= end: dropped"
CLIP_END = "end beyond video duration: clipped to duration"
CLIP_START = "start before 0: clamped to 0"

# SOURCES.md: videos / queries in the files, and ends beyond the duration, per split.
OFFICIAL = {
    "train": (10_009, 37_421, 261),
    "val": (4_917, 17_505, 134),
    "test": (4_885, 17_031, 111),
}


@pytest.fixture(scope="module")
def parsed(shared_data_dir):
    report = ParseReport()
    directory = shared_data_dir / "activitynet_captions"
    splits = {s: activitynet.parse_split(directory, s, report) for s in activitynet.SPLITS}
    return splits, report


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_counts_match_sources(parsed, split):
    splits, report = parsed
    videos, queries, beyond = OFFICIAL[split]
    dropped = 4 if split == "train" else 0  # SOURCES.md: 4 train spans have s >= e
    annotations = splits[split]
    assert len(annotations) == queries - dropped
    assert len({a.video_id for a in annotations}) == videos
    summary = report.summary()[split]
    assert summary["kept"] == queries - dropped
    assert summary["dropped"] == ({DROP: 4} if dropped else {})
    # None of the 4 dropped spans ends beyond its video, so every overrun is a kept clip.
    assert summary["clipped"] == {CLIP_END: beyond}


def test_spans_lie_inside_their_video(parsed):
    splits, _ = parsed
    for split_annotations in splits.values():
        spans = np.concatenate([a.spans_s for a in split_annotations])
        durations = np.array([a.duration_s for a in split_annotations])
        assert np.all(spans[:, 0] >= 0)
        assert np.all(spans[:, 0] < spans[:, 1])
        assert np.all(spans[:, 1] <= durations)
        assert len({a.query_id for a in split_annotations}) == len(split_annotations)


def test_dropped_spans_are_the_four_inverted_ones(parsed):
    _, report = parsed
    # Found by reading train.json: two zero-length and two inverted timestamps.
    expected = {
        ("record 'v_N7ppHQNikv8' sentence 2", "v_N7ppHQNikv8#2"),  # [34.77, 34.77]
        ("record 'v_4rKTw99bM8g' sentence 1", "v_4rKTw99bM8g#1"),  # [4.97, 4.97]
        ("record 'v_0bosp4-pyTM' sentence 3", "v_0bosp4-pyTM#3"),  # [61.29, 60.71]
        ("record 'v_rhOtqArO-3Y' sentence 5", "v_rhOtqArO-3Y#5"),  # [173.44, 150.31]
    }
    events = {(e.where, e.query_id) for e in report.events["train"] if e.kind == "dropped"}
    assert events == expected


def test_first_test_record_by_hand(parsed):
    splits, _ = parsed
    # test.json opens with "v_uqiMw7tQ1Cc": duration 55.15, timestamps [[0, 4.14], [4.14,
    # 33.36], ...]; sentence 1 starts with a space.
    first, second = splits["test"][:2]
    assert first.query_id == "v_uqiMw7tQ1Cc#0" and first.video_id == "v_uqiMw7tQ1Cc"
    assert first.duration_s == 55.15
    np.testing.assert_array_equal(first.spans_s, [[0.0, 4.14]])
    assert first.query_text.startswith("Two men both dressed in athletic gear")
    assert second.query_id == "v_uqiMw7tQ1Cc#1"
    np.testing.assert_array_equal(second.spans_s, [[4.14, 33.36]])
    assert second.query_text.startswith("One man is holding onto a rope")


def test_clipped_end_by_hand(parsed):
    splits, report = parsed
    # val.json "v_wN2XnDS0aGc": duration 23.3, sentence 2 at [8.16, 23.31].
    (a,) = [a for a in splits["val"] if a.query_id == "v_wN2XnDS0aGc#2"]
    np.testing.assert_array_equal(a.spans_s, [[8.16, 23.3]])
    where = "record 'v_wN2XnDS0aGc' sentence 2"
    assert any(e.where == where and e.reason == CLIP_END for e in report.events["val"])


# --- bad input on tiny hand-written files ---------------------------------------------------


def write_split(tmp_path: Path, text: str, split: str = "train") -> Path:
    (tmp_path / activitynet.SPLITS[split][0]).write_text(text)
    return tmp_path


def parse_text(tmp_path: Path, text: str, report: ParseReport | None = None):
    directory = write_split(tmp_path, text)
    return activitynet.parse_split(directory, "train", report or ParseReport())


def video(**fields) -> dict:
    record = {"duration": 10.0, "timestamps": [[1.0, 4.0]], "sentences": ["a man runs."]}
    record.update(fields)
    return record


def test_drop_and_clamp_rules_on_a_small_file(tmp_path):
    data = {
        "v_a": video(
            timestamps=[[-2.0, 3.0], [2.0, 12.5], [5.0, 5.0], [6.0, 4.0], [10.0, 11.0]],
            sentences=["s0", " s1 ", "s2", "s3", "s4"],
        )
    }
    report = ParseReport()
    annotations = parse_text(tmp_path, json.dumps(data), report)
    assert [a.query_id for a in annotations] == ["v_a#0", "v_a#1", "v_a#4"]
    spans = [a.spans_s.tolist() for a in annotations]
    # [-2, 3] -> [0, 3]; [2, 12.5] -> [2, 10]; [10, 11] -> [10, 10] (zero length, kept as the
    # reference keeps it).
    assert spans == [[[0.0, 3.0]], [[2.0, 10.0]], [[10.0, 10.0]]]
    assert annotations[1].query_text == "s1"
    summary = report.summary()["train"]
    assert summary == {"kept": 3, "dropped": {DROP: 2}, "clipped": {CLIP_START: 1, CLIP_END: 2}}


@pytest.mark.parametrize(
    "data, where, field, words",
    [
        ({"v_a": video(duration=0)}, "record 'v_a'", "duration", "> 0"),
        ({"v_a": video(duration="12.0")}, "record 'v_a'", "duration", "expected a number"),
        ({"v_a": {"timestamps": [], "sentences": []}}, "record 'v_a'", "duration", "missing"),
        ({"v_a": video(timestamps=None)}, "record 'v_a'", "timestamps", "expected a list"),
        ({"v_a": video(sentences=["x", "y"])}, "record 'v_a'", "timestamps", "2 sentences"),
        ({"v_a": video(timestamps=[[1.0]])}, "sentence 0", "timestamps", "[start, end]"),
        ({"v_a": video(timestamps=[[1.0, "4.0"]])}, "sentence 0", "timestamps", "a number"),
        ({"v_a": video(timestamps=[[True, 4.0]])}, "sentence 0", "timestamps", "a number"),
        ({"v_a": video(sentences=["  "])}, "record 'v_a' sentence 0", "sentences", "empty"),
        ({"v_a": video(sentences=[3])}, "sentence 0", "sentences", "expected a string"),
        ({"v_a": video(timestamps=[[11.0, 12.0]])}, "sentence 0", "timestamps", "inverted"),
        ({"v_a": [1, 2]}, "record 'v_a'", None, "expected an object"),
    ],
)
def test_bad_records_name_file_record_and_field(tmp_path, data, where, field, words):
    with pytest.raises(DataError) as err:
        parse_text(tmp_path, json.dumps(data))
    assert err.value.source == str(tmp_path / "train.json")
    assert where in err.value.where
    assert err.value.field == field
    assert words in str(err.value)


def test_nan_time_is_refused(tmp_path):
    text = '{"v_a": {"duration": 10, "timestamps": [[1, NaN]], "sentences": ["x"]}}'
    with pytest.raises(DataError, match="not finite") as err:
        parse_text(tmp_path, text)
    assert err.value.where == "record 'v_a' sentence 0" and err.value.field == "timestamps"


@pytest.mark.parametrize(
    "text, where, words",
    [
        # The error is at the quote of "sentences": line 2, column 25 (by hand).
        (
            '{"v_a": {"duration": 10,\n "timestamps": [[1, 2]] "sentences": []}}',
            "line 2, column 25",
            "malformed JSON",
        ),
        ("[1, 2]", None, "expected an object keyed by video"),
        ('{"v_a": {"duration": 1}, "v_a": {"duration": 2}}', "key 'v_a'", "twice"),
    ],
)
def test_bad_files(tmp_path, text, where, words):
    with pytest.raises(DataError, match=words) as err:
        parse_text(tmp_path, text)
    assert err.value.where == where


def test_missing_file_and_unknown_split(tmp_path):
    with pytest.raises(DataError, match="no such annotation file") as err:
        activitynet.parse_split(tmp_path, "val", ParseReport())
    assert err.value.source == str(tmp_path / "val.json")
    with pytest.raises(ValueError, match="unknown split 'val_1'"):
        activitynet.parse_split(tmp_path, "val_1", ParseReport())


# --- features: sub_activitynet_v1-3.c3d.hdf5, f["v_<id>"]["c3d_features"] [T, 500] ----------


def write_c3d(path: Path, arrays: dict[str, np.ndarray], grouped: bool = True) -> Path:
    with h5py.File(path, "w") as f:
        for key, array in arrays.items():
            if grouped:
                f.create_group(key).create_dataset("c3d_features", data=array)
            else:
                f.create_dataset(key, data=array)
    return path


def test_features_found_by_annotation_key(parsed, tmp_path):
    splits, _ = parsed
    spec = activitynet.FEATURES["c3d"].video
    first, *_ = splits["test"]
    last = splits["train"][-1]
    rng = np.random.default_rng(0)
    arrays = {a.video_id: rng.normal(size=(7, 500)).astype(np.float64) for a in (first, last)}
    store = spec.open(write_c3d(tmp_path / spec.file, arrays))
    for a in (first, last):
        got = store.get(spec.key(a))
        assert got.dtype == np.float32 and got.shape == (7, 500)
        np.testing.assert_allclose(got, arrays[a.video_id], rtol=1e-6)
    # 7 clips evenly covering the 55.15-s video: clip 1 = [7.8786, 15.7571] (55.15 / 7 * 1, 2).
    np.testing.assert_allclose(spec.clip_times(7, first.duration_s)[1], [7.878571, 15.757143])


@pytest.mark.parametrize(
    "array, words",
    [
        (np.zeros((4, 4096), np.float32), "expected width 500"),
        (np.full((4, 500), np.nan, np.float32), "non-finite"),
        (np.zeros((0, 500), np.float32), "no row"),
    ],
)
def test_bad_feature_arrays_name_file_and_key(tmp_path, array, words):
    spec = activitynet.FEATURES["c3d"].video
    path = write_c3d(tmp_path / spec.file, {"v_a": array})
    with pytest.raises(DataError, match=words) as err:
        spec.open(path).get("v_a")
    assert err.value.source == str(path)
    assert err.value.where == "key 'v_a'" and err.value.field == "video_features"


def test_missing_key_and_wrong_layout(tmp_path):
    spec = activitynet.FEATURES["c3d"].video
    grouped = write_c3d(tmp_path / "grouped.hdf5", {"v_a": np.zeros((3, 500), np.float32)})
    with pytest.raises(DataError, match="not in the file") as err:
        spec.open(grouped).get("v_b")
    assert err.value.where == "key 'v_b'"
    flat = write_c3d(tmp_path / "flat.hdf5", {"v_a": np.zeros((3, 500))}, grouped=False)
    with pytest.raises(DataError, match="has no dataset 'c3d_features'"):
        spec.open(flat).get("v_a")


def test_empty_and_truncated_files(tmp_path):
    spec = activitynet.FEATURES["c3d"].video
    empty = tmp_path / "empty.hdf5"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty file") as err:
        spec.open(empty)
    assert err.value.source == str(empty)
    truncated = write_c3d(tmp_path / "cut.hdf5", {"v_a": np.ones((300, 500), np.float32)})
    size = truncated.stat().st_size
    with open(truncated, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(DataError) as err:
        spec.open(truncated).get("v_a")
    assert err.value.source == str(truncated)
    assert "truncated" in str(err.value)
