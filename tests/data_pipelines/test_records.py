"""Canonical record validation: every bad field names the record and the field."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines.records import Record, RecordError, make_record


def fields(**overrides):
    base = {
        "query_id": "q7",
        "video_id": "v1",
        "duration_s": 10.0,
        "spans_s": [[1.0, 4.0], [2.0, 10.0]],
        "query_text": "a person opens a door",
        "video_features": np.ones((5, 3), np.float64),
        "clip_times": [[0, 2], [2, 4], [4, 6], [6, 8], [8, 10]],
    }
    base.update(overrides)
    return base


def test_valid_record_converts_to_float32():
    r = Record(**fields(query_token_features=np.zeros((4, 6)), subtitle_features=np.zeros((5, 2))))
    assert r.video_features.dtype == np.float32 and r.video_features.shape == (5, 3)
    assert r.spans_s.dtype == np.float32 and r.spans_s.shape == (2, 2)
    assert r.clip_times.dtype == np.float32
    assert r.query_token_features.dtype == np.float32
    assert r.num_clips == 5
    assert isinstance(r.duration_s, float)


def test_zero_length_span_is_accepted():
    Record(**fields(spans_s=[[3.0, 3.0]]))


@pytest.mark.parametrize(
    "overrides, field, words",
    [
        ({"video_features": np.array([[1.0, np.nan]] * 5)}, "video_features", "non-finite"),
        ({"video_features": np.array([[1.0, np.inf]] * 5)}, "video_features", "non-finite"),
        ({"video_features": np.ones(5)}, "video_features", "rank 2"),
        ({"spans_s": [[4.0, 1.0]]}, "spans_s", "end 1.0 < start 4.0"),
        ({"spans_s": [[1.0, 10.5]]}, "spans_s", "outside [0, duration 10.0]"),
        ({"spans_s": [[-0.5, 3.0]]}, "spans_s", "outside"),
        ({"spans_s": [1.0, 3.0]}, "spans_s", "rank 2"),
        ({"spans_s": [[1.0, 2.0, 3.0]]}, "spans_s", "[S>=1, 2]"),
        ({"spans_s": [[1.0, np.nan]]}, "spans_s", "non-finite"),
        ({"clip_times": [[0, 2]] * 4}, "clip_times", "[5, 2]"),
        ({"clip_times": [[0, 2]] * 4 + [[9, 8]]}, "clip_times", "clip 4 has end"),
        ({"duration_s": 0.0}, "duration_s", "> 0"),
        ({"duration_s": float("nan")}, "duration_s", "> 0"),
        ({"query_text": "  "}, "query_text", "non-empty"),
        ({"video_id": ""}, "video_id", "non-empty"),
        ({"query_token_features": np.zeros((4,))}, "query_token_features", "rank 2"),
        ({"query_token_features": np.full((2, 3), np.inf)}, "query_token_features", "non-finite"),
        ({"subtitle_features": np.zeros((4, 8))}, "subtitle_features", "[5, Ds]"),
    ],
)
def test_bad_field_names_record_and_field(overrides, field, words):
    with pytest.raises(RecordError) as info:
        Record(**fields(**overrides))
    message = str(info.value)
    assert "'q7'" in message and f"'{field}'" in message and words in message
    assert info.value.field == field and info.value.query_id == "q7"


def test_nan_position_is_reported():
    video = np.ones((5, 3))
    video[3, 2] = np.nan
    with pytest.raises(RecordError, match=r"first at index \(3, 2\)"):
        Record(**fields(video_features=video))


def test_make_record_adds_source_file():
    with pytest.raises(RecordError, match=r"^charades_sta_test.txt: record 'q7': field 'spans_s'"):
        make_record(source="charades_sta_test.txt", **fields(spans_s=[[5.0, 2.0]]))
    assert make_record(source="x", **fields()).query_id == "q7"
