"""DiDeMo parser on the real LocalizingMoments files, bad inputs, and fc7 features.

Counts come from shared/data/SOURCES.md; the hand-checked records were read off the raw JSON
text; spans are 5 * chunk seconds worked out by hand.
"""

from __future__ import annotations

import collections
import json
import re

import h5py
import numpy as np
import pytest

from data_pipelines import didemo
from data_pipelines.annotations import DataError, ParseReport, to_record

SOURCES_COUNTS = {"val": (4180, 1094), "test": (4021, 1037)}  # queries, videos


@pytest.fixture(scope="module")
def parsed(shared_data_dir):
    report = ParseReport()
    splits = {s: didemo.parse_split(shared_data_dir / "didemo", s, report) for s in ("val", "test")}
    return splits, report


@pytest.mark.parametrize("split", ["val", "test"])
def test_counts_match_sources(parsed, split):
    splits, report = parsed
    annotations = splits[split]
    queries, videos = SOURCES_COUNTS[split]
    assert len(annotations) == queries
    assert len({a.video_id for a in annotations}) == videos
    assert report.summary()[split] == {"kept": queries, "dropped": {}, "clipped": {}}


@pytest.mark.parametrize("split", ["val", "test"])
def test_one_span_per_annotator_and_raw_times_kept(parsed, shared_data_dir, split):
    raw = json.loads((shared_data_dir / "didemo" / f"{split}_data.json").read_text())
    annotations = parsed[0][split]
    assert [a.query_id for a in annotations] == [str(r["annotation_id"]) for r in raw]
    for a, r in zip(annotations, raw, strict=True):
        assert a.spans_s.shape == (len(r["times"]), 2)
        assert a.extras["times"] == r["times"]
        assert a.extras["num_segments"] == r["num_segments"]
        assert a.duration_s in (25.0, 30.0)
    # SOURCES.md: usually 4 annotators, a few 5 or 7.
    sizes = collections.Counter(len(a.spans_s) for a in annotations)
    assert set(sizes) <= {4, 5, 7} and sizes[4] > 0.99 * len(annotations)


def test_hand_checked_records(parsed):
    val = {a.query_id: a for a in parsed[0]["val"]}
    test = {a.query_id: a for a in parsed[0]["test"]}

    a = val["49152"]  # first val record: times [[1,1],[1,1],[1,1],[0,0]], num_segments 6
    assert a.video_id == "35034348999@N01_6060447507_dc1a90b8ef.mov"
    assert a.query_text == "the man in the hat briefly bends over the machine"
    assert a.duration_s == 30.0
    np.testing.assert_array_equal(a.spans_s, [[5, 10], [5, 10], [5, 10], [0, 5]])

    a = val["49158"]  # five chunks: times [[4,4]] x 4 -> [20, 25], the whole last chunk
    assert a.video_id == "86091119@N00_13912142554_c451140af5.mp4"
    assert a.duration_s == 25.0
    np.testing.assert_array_equal(a.spans_s, [[20, 25]] * 4)

    a = test["1"]  # seven annotators: [[4,4],[4,4],[0,0],[4,4],[0,0],[0,0],[4,4]]
    assert a.video_id == "26292851@N04_4253489686_265c3c8051.m4v"
    np.testing.assert_array_equal(
        a.spans_s, [[20, 25], [20, 25], [0, 5], [20, 25], [0, 5], [0, 5], [20, 25]]
    )

    a = test["703"]  # five annotators, five chunks: [[0,2],[0,1],[0,2],[0,2],[2,3]]
    assert a.duration_s == 25.0
    np.testing.assert_array_equal(a.spans_s, [[0, 15], [0, 10], [0, 15], [0, 15], [10, 20]])
    assert a.extras["times"] == [[0, 2], [0, 1], [0, 2], [0, 2], [2, 3]]


def test_fc7_features_through_the_spec(parsed, tmp_path):
    annotations = parsed[0]["val"][:4]  # 49152 (6 chunks) ... 49158 (5 chunks)
    spec = didemo.FEATURES["fc7"].video
    assert (spec.file, spec.layout, spec.dim, spec.clip_seconds) == (
        "average_fc7.h5",
        "hdf5",
        4096,
        5.0,
    )
    rng = np.random.default_rng(0)
    arrays = {}
    with h5py.File(tmp_path / "average_fc7.h5", "w") as f:
        for a in annotations:
            rows = rng.normal(size=(6, 4096)).astype(np.float32)
            if a.extras["num_segments"] == 5:
                rows[5] = 0.0  # the release's all-zero sixth chunk
            arrays[spec.key(a)] = rows
            f.create_dataset(a.video_id, data=rows)
    store = spec.open(tmp_path / "average_fc7.h5")
    for a in annotations:
        got = store.get(spec.key(a))
        np.testing.assert_array_equal(got, arrays[a.video_id])
        times = spec.clip_times(len(got), a.duration_s)
        np.testing.assert_array_equal(
            times, [[0, 5], [5, 10], [10, 15], [15, 20], [20, 25], [25, 30]]
        )
        record = to_record(a, got, times)
        assert record.spans_s.shape == a.spans_s.shape


@pytest.mark.parametrize(
    "rows, words",
    [
        (np.ones((6, 2048), np.float32), "expected width 4096"),
        (np.full((6, 4096), np.nan, np.float32), "non-finite"),
        (np.ones((0, 4096), np.float32), "no row"),
    ],
)
def test_fc7_bad_arrays(tmp_path, rows, words):
    with h5py.File(tmp_path / "average_fc7.h5", "w") as f:
        f.create_dataset("v.mov", data=rows)
    store = didemo.FEATURES["fc7"].video.open(tmp_path / "average_fc7.h5")
    with pytest.raises(DataError, match=words):
        store.get("v.mov")
    with pytest.raises(DataError, match="'w.mov'.*not in the file"):
        store.get("w.mov")


def test_fc7_empty_and_truncated_files(tmp_path):
    spec = didemo.FEATURES["fc7"].video
    (tmp_path / "empty.h5").write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        spec.open(tmp_path / "empty.h5")
    with h5py.File(tmp_path / "full.h5", "w") as f:
        f.create_dataset("v.mov", data=np.ones((6, 4096), np.float32))
    data = (tmp_path / "full.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError):
        spec.open(tmp_path / "cut.h5").get("v.mov")


# --------------------------------------------------------------------------- bad inputs
def record(**overrides):
    base = {
        "annotation_id": 7,
        "description": "a dog runs",
        "video": "v.mov",
        "dl_link": "https://example.invalid/v",
        "num_segments": 6,
        "times": [[0, 1], [1, 1], [0, 0], [2, 3]],
    }
    base.update(overrides)
    return base


def write(tmp_path, records, split="val") -> None:
    (tmp_path / didemo.SPLITS[split][0]).write_text(json.dumps(records))


def test_tiny_file_parses_by_hand(tmp_path):
    write(tmp_path, [record(), record(annotation_id=8, num_segments=5, times=[[4, 4]])])
    report = ParseReport()
    first, second = didemo.parse_split(tmp_path, "val", report)
    np.testing.assert_array_equal(first.spans_s, [[0, 10], [5, 10], [0, 5], [10, 20]])
    assert (first.query_id, first.duration_s) == ("7", 30.0)
    np.testing.assert_array_equal(second.spans_s, [[20, 25]])
    assert second.duration_s == 25.0
    assert report.summary()["val"] == {"kept": 2, "dropped": {}, "clipped": {}}


def test_spans_past_the_last_chunk_are_clipped_or_dropped(tmp_path):
    write(
        tmp_path,
        [
            record(annotation_id=1, num_segments=5, times=[[4, 5], [0, 0]]),
            record(annotation_id=2, num_segments=5, times=[[5, 5]]),
            record(annotation_id=3, description="  "),
        ],
        split="train",
    )
    report = ParseReport()
    (only,) = didemo.parse_split(tmp_path, "train", report)
    np.testing.assert_array_equal(only.spans_s, [[20, 25], [0, 5]])  # [20, 30] clamped to 25
    assert only.extras["times"] == [[4, 5], [0, 0]]
    summary = report.summary()["train"]
    assert summary["kept"] == 1
    assert sum(summary["clipped"].values()) == 1
    assert sum(summary["dropped"].values()) == 3  # a span, its query, the empty description
    assert any("record 2" in e for e in report.examples("train", "dropped", "empty description"))


@pytest.mark.parametrize(
    "field", ["annotation_id", "description", "video", "num_segments", "times"]
)
def test_missing_field(tmp_path, field):
    bad = record()
    del bad[field]
    write(tmp_path, [record(annotation_id=1), bad])
    with pytest.raises(DataError, match=f"record 1: field '{field}': missing"):
        didemo.parse_split(tmp_path, "val", ParseReport())


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"annotation_id": "7"}, "annotation_id"),
        ({"annotation_id": True}, "annotation_id"),
        ({"description": None}, "description"),
        ({"video": ""}, "video"),
        ({"num_segments": 7}, "num_segments"),
        ({"num_segments": 0}, "num_segments"),
        ({"num_segments": 6.0}, "num_segments"),
        ({"times": []}, "times"),
        ({"times": [1, 2]}, "times[0]"),
        ({"times": [[0, 1, 2]]}, "times[0]"),
        ({"times": [[0, 1], [0.0, 1]]}, "times[1]"),
        ({"times": [[0, 6]]}, "times[0]"),
        ({"times": [[-1, 0]]}, "times[0]"),
        ({"times": [[0, 0], [3, 2]]}, "times[1]"),
    ],
)
def test_bad_fields_name_record_and_field(tmp_path, overrides, field):
    write(tmp_path, [record(annotation_id=1), record(**overrides)])
    pattern = r"val_data\.json: record 1( \(annotation_id 7\))?: field " + re.escape(repr(field))
    with pytest.raises(DataError, match=pattern):
        didemo.parse_split(tmp_path, "val", ParseReport())


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="no such annotation file"):
        didemo.parse_split(tmp_path, "test", ParseReport())
    (tmp_path / "val_data.json").write_text('[\n{"annotation_id": 1,\n "video": }\n]')
    with pytest.raises(DataError, match="line 3, column 11: malformed JSON"):
        didemo.parse_split(tmp_path, "val", ParseReport())
    (tmp_path / "val_data.json").write_text('{"annotation_id": 1}')
    with pytest.raises(DataError, match="expected a JSON list"):
        didemo.parse_split(tmp_path, "val", ParseReport())
    write(tmp_path, [record(), "oops"])
    with pytest.raises(DataError, match="record 1: expected an object"):
        didemo.parse_split(tmp_path, "val", ParseReport())
    write(tmp_path, [record(), record()])
    with pytest.raises(DataError, match="'7' repeats record 0"):
        didemo.parse_split(tmp_path, "val", ParseReport())
    with pytest.raises(ValueError, match="unknown DiDeMo split"):
        didemo.parse_split(tmp_path, "dev", ParseReport())
