"""Canonical record validation: every bad field names the record and the field."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines.records import Record, RecordError, SubtitleWords, make_record


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


# ----------------------------------------------------------------------------- subtitle words
def words(**overrides):
    base = {
        "video_id": "v1",
        "sentence_times": [[0.5, 2.0], [3.0, 9.5]],
        "sentence_text": ("hi there", "bye"),
        "word_features": np.ones((3, 4)),
        "word_sentence": [0, 0, 1],
    }
    base.update(overrides)
    return SubtitleWords(**base)


def test_subtitle_words_convert_and_ride_on_the_record():
    w = words()
    assert w.sentence_times.dtype == np.float32 and w.word_features.dtype == np.float32
    assert w.word_sentence.dtype == np.int32 and (w.num_sentences, w.num_words) == (2, 3)
    r = Record(**fields(subtitle_words=w, extras={"type": "t"}))
    assert r.subtitle_words is w and r.extras == {"type": "t"}
    assert Record(**fields()).extras == {} and Record(**fields()).subtitle_words is None
    empty = SubtitleWords.empty("v1", 4)
    assert (empty.num_sentences, empty.num_words, empty.word_features.shape) == (0, 0, (0, 4))
    back = SubtitleWords.from_arrays("v1", w.to_arrays())
    np.testing.assert_array_equal(back.word_sentence, [0, 0, 1])
    assert back.sentence_text == ("", "")


@pytest.mark.parametrize(
    "overrides, field, words_",
    [
        ({"sentence_times": [[2.0, 1.0], [3.0, 4.0]]}, "sentence_times", "not 0 <= s <= e"),
        ({"sentence_times": [[-1.0, 1.0], [3.0, 4.0]]}, "sentence_times", "not 0 <= s <= e"),
        ({"sentence_times": [[0.0, np.nan], [3.0, 4.0]]}, "sentence_times", "non-finite"),
        ({"sentence_text": ("one",)}, "sentence_text", "1 texts, 2 sentences"),
        ({"word_features": np.full((3, 4), np.inf)}, "word_features", "non-finite"),
        ({"word_sentence": [0, 1]}, "word_sentence", "expected int [3]"),
        ({"word_sentence": [0.0, 0.0, 1.0]}, "word_sentence", "expected int [3]"),
        ({"word_sentence": [0, 2, 1]}, "word_sentence", "word 1 has sentence 2"),
        ({"word_sentence": [1, 0, 1]}, "word_sentence", "word 1 has sentence 0"),
        ({"word_sentence": [0, 0, -1]}, "word_sentence", "word 2 has sentence -1"),
    ],
)
def test_bad_subtitle_words_name_video_and_field(overrides, field, words_):
    with pytest.raises(RecordError) as info:
        words(**overrides)
    assert info.value.field == f"subtitle_words.{field}" and info.value.query_id == "video v1"
    assert words_ in str(info.value)


def test_record_checks_its_subtitle_words():
    with pytest.raises(RecordError, match="sentence 1 ends at 9.5 s, after the duration 9.0"):
        Record(**fields(duration_s=9.0, spans_s=[[1.0, 2.0]], subtitle_words=words()))
    with pytest.raises(RecordError, match="of video 'v2', not 'v1'"):
        Record(**fields(subtitle_words=words(video_id="v2")))
    with pytest.raises(RecordError, match="'extras': expected a dict"):
        Record(**fields(extras=[1]))
