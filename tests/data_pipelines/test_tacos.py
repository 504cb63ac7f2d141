"""TACoS (2D-TAN split): counts and clamps on the official files, hand-checked frame-to-second
conversion, bad input, and the TALL C3D feature file."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from data_pipelines import tacos
from data_pipelines.annotations import DataError, ParseReport

CLIP_END = "end beyond video duration: clipped to duration"

# SOURCES.md: videos / queries per split.
OFFICIAL = {"train": (75, 9_790), "val": (27, 4_436), "test": (25, 4_001)}


@pytest.fixture(scope="module")
def parsed(shared_data_dir):
    report = ParseReport()
    directory = shared_data_dir / "tacos"
    return {s: tacos.parse_split(directory, s, report) for s in tacos.SPLITS}, report


def ends_beyond_in_frames(path: Path) -> int:
    """Independent count: end frame index > num_frames, in integers (no division)."""
    data = json.loads(path.read_text())
    return sum(end > v["num_frames"] for v in data.values() for _, end in v["timestamps"])


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_counts_match_sources(parsed, shared_data_dir, split):
    splits, report = parsed
    videos, queries = OFFICIAL[split]
    annotations = splits[split]
    assert len(annotations) == queries  # no start >= end in the official files
    assert len({a.video_id for a in annotations}) == videos
    beyond = ends_beyond_in_frames(shared_data_dir / "tacos" / f"{split}.json")
    summary = report.summary()[split]
    assert summary["kept"] == queries and summary["dropped"] == {}
    assert summary["clipped"] == ({CLIP_END: beyond} if beyond else {})


def test_clip_counts_per_split(parsed):
    _, report = parsed
    # Found by reading the files (end frame > num_frames): 43 train, 0 val, 5 test.
    counts = {s: report.summary()[s]["clipped"].get(CLIP_END, 0) for s in tacos.SPLITS}
    assert counts == {"train": 43, "val": 0, "test": 5}


def test_spans_lie_inside_their_video(parsed):
    splits, _ = parsed
    for split_annotations in splits.values():
        spans = np.concatenate([a.spans_s for a in split_annotations])
        durations = np.array([a.duration_s for a in split_annotations])
        assert np.all((spans[:, 0] >= 0) & (spans[:, 0] < spans[:, 1]))
        assert np.all(spans[:, 1] <= durations)


def test_frames_to_seconds_by_hand(parsed):
    splits, _ = parsed
    # test.json opens with "s30-d52.avi": fps 29.4, num_frames 7346, first timestamp
    # [141, 354] "She took out kiwi".  141 / 29.4 = 4.795918, 354 / 29.4 = 12.040816,
    # 7346 / 29.4 = 249.863946.
    first = splits["test"][0]
    assert (first.query_id, first.video_id) == ("s30-d52.avi#0", "s30-d52.avi")
    assert first.query_text == "She took out kiwi"
    assert first.duration_s == pytest.approx(249.863946, rel=1e-7)
    np.testing.assert_allclose(first.spans_s, [[4.795918, 12.040816]], rtol=1e-6)


def test_clipped_end_by_hand(parsed):
    splits, report = parsed
    # test.json "s30-d41.avi" (num_frames 19147, fps 29.4), sentence 61 "She cleans up." at
    # frames [19055, 19154]: end 19154 > 19147, so [648.129252, 651.258503] s.
    (a,) = [a for a in splits["test"] if a.query_id == "s30-d41.avi#61"]
    assert a.query_text == "She cleans up."
    np.testing.assert_allclose(a.spans_s, [[648.129252, 651.258503]], rtol=1e-8)
    assert a.spans_s[0, 1] == a.duration_s
    where = "record 's30-d41.avi' sentence 61"
    assert any(e.where == where and e.reason == CLIP_END for e in report.events["test"])


# --- bad input on tiny hand-written files ---------------------------------------------------


def parse_records(tmp_path: Path, data, report: ParseReport | None = None):
    text = data if isinstance(data, str) else json.dumps(data)
    (tmp_path / "val.json").write_text(text)
    return tacos.parse_split(tmp_path, "val", report or ParseReport())


def video(**fields) -> dict:
    record = {"timestamps": [[10, 40]], "sentences": ["He cuts."], "fps": 10.0, "num_frames": 50}
    record.update(fields)
    return record


def test_drop_and_clamp_in_frames(tmp_path):
    data = {"s1-d1.avi": video(timestamps=[[10, 40], [30, 30], [45, 70]], sentences=list("abc"))}
    report = ParseReport()
    annotations = parse_records(tmp_path, data, report)
    # 50 frames at 10 fps = 5 s; [10, 40] -> [1, 4] s; [30, 30] dropped; [45, 70] -> [4.5, 5].
    assert [a.query_id for a in annotations] == ["s1-d1.avi#0", "s1-d1.avi#2"]
    assert [a.spans_s.tolist() for a in annotations] == [[[1.0, 4.0]], [[4.5, 5.0]]]
    assert annotations[0].duration_s == 5.0
    assert report.summary()["val"] == {
        "kept": 2,
        "dropped": {"start >= end: dropped": 1},
        "clipped": {CLIP_END: 1},
    }


@pytest.mark.parametrize(
    "record, where, field, words",
    [
        (video(fps=0), "record 's13-d21.avi'", "fps", "> 0"),
        (video(num_frames=-5), "record 's13-d21.avi'", "num_frames", "> 0"),
        (
            {"timestamps": [], "sentences": [], "fps": 29.4},
            "record 's13-d21.avi'",
            "num_frames",
            "missing",
        ),
        (video(fps="29.4"), "record 's13-d21.avi'", "fps", "expected a number"),
        (
            video(timestamps=[[10, 20], [1, "x"], [3, 4]], sentences=list("abc")),
            "record 's13-d21.avi' sentence 1",
            "timestamps",
            "expected a number",
        ),
        (video(sentences=[""]), "record 's13-d21.avi' sentence 0", "sentences", "empty"),
        (video(sentences=[]), "record 's13-d21.avi'", "timestamps", "0 sentences"),
        (video(timestamps=[[60, 70]]), "record 's13-d21.avi' sentence 0", "timestamps", "inverted"),
    ],
)
def test_bad_records_name_file_record_and_field(tmp_path, record, where, field, words):
    with pytest.raises(DataError) as err:
        parse_records(tmp_path, {"s13-d21.avi": record})
    assert err.value.source == str(tmp_path / "val.json")
    assert (err.value.where, err.value.field) == (where, field)
    assert words in str(err.value)


def test_truncated_json_names_the_line(tmp_path):
    with pytest.raises(DataError, match="the file ends mid-record") as err:
        parse_records(tmp_path, '{"s1-d1.avi": {"fps": 29.4,\n"num_frames": ')
    assert err.value.where == "line 2, column 15"  # just after '"num_frames": '


# --- features: tall_c3d_features.hdf5, f["sXX-dYY.avi"] [T, 4096] ----------------------------


def test_features_found_by_annotation_key(parsed, tmp_path):
    splits, _ = parsed
    spec = tacos.FEATURES["c3d"].video
    picked = [splits["train"][0], splits["test"][-1]]
    rng = np.random.default_rng(1)
    arrays = {a.video_id: rng.normal(size=(5, 4096)).astype(np.float32) for a in picked}
    path = tmp_path / spec.file
    with h5py.File(path, "w") as f:
        for key, array in arrays.items():
            f.create_dataset(key, data=array)
    store = spec.open(path)
    assert sorted(store.keys()) == sorted(arrays)
    for a in picked:
        np.testing.assert_array_equal(store.get(spec.key(a)), arrays[a.video_id])


def test_feature_errors_name_file_and_key(tmp_path):
    spec = tacos.FEATURES["c3d"].video
    path = tmp_path / spec.file
    with h5py.File(path, "w") as f:
        f.create_dataset("s1-d1.avi", data=np.zeros((3, 500), np.float32))  # ActivityNet width
        f.create_dataset("s1-d2.avi", data=np.array([[np.inf] * 4096] * 2, np.float32))
    store = spec.open(path)
    with pytest.raises(DataError, match="expected width 4096") as err:
        store.get("s1-d1.avi")
    assert (err.value.source, err.value.where) == (str(path), "key 's1-d1.avi'")
    with pytest.raises(DataError, match="non-finite"):
        store.get("s1-d2.avi")
    with pytest.raises(DataError, match="not in the file") as err:
        store.get("s9-d9.avi")
    assert err.value.where == "key 's9-d9.avi'"
    store.close()
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(DataError, match="truncated") as err:
        spec.open(path).get("s1-d1.avi")
    assert err.value.source == str(path)
