"""TVR word-level subtitles: the jsonl + token h5 alignment on small files in the official
layouts (TVRetrieval ``tvqa_preprocessed_subtitles.jsonl``, ``f[vid]`` / ``f[vid-lengths]``),
every fallback counted, bad input named; and the real video2dur_idx durations.

Token rows hold their own row number (row ``k`` = ``[k, k]``), so the rows a sentence got can
be read off its words; every expected count is worked out in the comments.
"""

from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pytest

from data_pipelines import subtitles as st
from data_pipelines import tvr
from data_pipelines.annotations import DataError


def rows(n, start=0):
    return np.stack([np.arange(start, start + n)] * 2, 1).astype(np.float32)


def sub(start, end, text="a b"):
    return {"text": text, "start": start, "end": end}


def write_jsonl(path, videos, raw_lines=()):
    with open(path, "w", encoding="utf-8") as f:
        for vid, subs in videos.items():
            f.write(json.dumps({"vid_name": vid, "sub": subs}) + "\n")
        for line in raw_lines:
            f.write(line + "\n")
    return path


def write_h5(path, videos):
    """``videos``: {vid: (features, lengths or None)}."""
    with h5py.File(path, "w") as f:
        for vid, (feats, lengths) in videos.items():
            f.create_dataset(vid, data=feats)
            if lengths is not None:
                f.create_dataset(vid + "-lengths", data=np.asarray(lengths, np.int16))
    return path


def load(tmp_path, subs, tokens, durations, **kw):
    report = st.SubtitleReport()
    jsonl = write_jsonl(tmp_path / tvr.SUBTITLE_FILE, subs)
    h5 = write_h5(tmp_path / "tokens.h5", tokens)
    return st.load_subtitle_words(jsonl, h5, durations, report, **kw), report


def fallbacks(report):
    return {k: v["count"] for k, v in report.summary()["fallbacks"].items()}


def test_clean_video_splits_rows_by_lengths(tmp_path):
    out, report = load(
        tmp_path,
        {"v": [sub(0.5, 2.0, "Chase : hi"), sub(2.5, 4.0, "Yeah .")]},
        {"v": (rows(5), [2, 3])},
        {"v": 10.0},
    )
    w = out["v"]
    np.testing.assert_array_equal(w.word_sentence, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(w.word_features[:, 0], [0, 1, 2, 3, 4])
    np.testing.assert_allclose(w.sentence_times, [[0.5, 2.0], [2.5, 4.0]])
    assert w.sentence_text == ("Chase : hi", "Yeah .")
    assert report.summary() == {"videos": 1, "sentences": 2, "words": 5, "fallbacks": {}}


def test_row_and_sentence_mismatches_are_counted(tmp_path):
    subs = {
        "fewer_lengths": [sub(0, 1), sub(1, 2), sub(2, 3)],  # lengths [2, 1]: s2 no token
        "extra_rows": [sub(0, 1), sub(1, 2)],  # 6 rows for lengths [2, 3]: 1 row left over
        "missing_rows": [sub(0, 1), sub(1, 2)],  # 4 rows for lengths [2, 3]: s1 cut to 2
        "extra_lengths": [sub(0, 1), sub(1, 2)],  # lengths [1, 1, 2]: 2 rows have no sentence
    }
    tokens = {
        "fewer_lengths": (rows(3), [2, 1]),
        "extra_rows": (rows(6), [2, 3]),
        "missing_rows": (rows(4), [2, 3]),
        "extra_lengths": (rows(4), [1, 1, 2]),
    }
    out, report = load(tmp_path, subs, tokens, dict.fromkeys(subs, 10.0))
    np.testing.assert_array_equal(out["fewer_lengths"].word_sentence, [0, 0, 1])
    assert out["fewer_lengths"].num_sentences == 3  # s2 kept, with no word
    np.testing.assert_array_equal(out["extra_rows"].word_features[:, 0], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(out["missing_rows"].word_sentence, [0, 0, 1, 1])
    np.testing.assert_array_equal(out["extra_lengths"].word_features[:, 0], [0, 1])
    np.testing.assert_array_equal(out["extra_lengths"].word_sentence, [0, 1])
    assert fallbacks(report) == {
        st.SENTENCE_WITHOUT_TOKENS: 1,
        st.TOKENS_WITHOUT_SENTENCE: 1 + 2,
        st.MISSING_ROWS: 1,
    }
    assert report.summary()["fallbacks"][st.TOKENS_WITHOUT_SENTENCE]["videos"] == 2


def test_timings_outside_the_video_are_clamped_or_dropped(tmp_path):
    subs = {"v": [sub(-0.4, 1.0), sub(2.0, 12.5), sub(12.0, 13.0), sub(12.2, 14.0)]}
    # lengths [1, 2, 3, 1]: s2 (rows 3..5) and s3 (row 6) start after the 12-s video.
    out, report = load(tmp_path, subs, {"v": (rows(7), [1, 2, 3, 1])}, {"v": 12.0})
    w = out["v"]
    np.testing.assert_allclose(w.sentence_times, [[0.0, 1.0], [2.0, 12.0]])
    np.testing.assert_array_equal(w.word_features[:, 0], [0, 1, 2])
    np.testing.assert_array_equal(w.word_sentence, [0, 1, 1])
    assert fallbacks(report) == {
        st.START_CLAMPED: 1,
        st.END_CLAMPED: 1,
        st.AFTER_VIDEO: 2,
        st.AFTER_VIDEO_TOKENS: 3 + 1,
    }


def test_videos_without_subtitles_or_tokens(tmp_path, caplog):
    subs = {"silent": [], "spoken": [sub(0, 1)], "no_tokens": [sub(0, 1), sub(1, 2)]}
    tokens = {"silent": (rows(2), [2]), "spoken": (rows(2), [2])}
    durations = {"silent": 5.0, "spoken": 5.0, "no_tokens": 5.0, "not_in_jsonl": 5.0}
    with caplog.at_level(logging.WARNING):
        out, report = load(tmp_path, subs, tokens, durations)
    assert set(out) == set(durations)
    for vid in ("silent", "not_in_jsonl"):
        assert (out[vid].num_sentences, out[vid].word_features.shape) == (0, (0, 2))
    assert (out["no_tokens"].num_sentences, out["no_tokens"].num_words) == (2, 0)
    assert fallbacks(report) == {
        st.NO_SUBTITLE: 2,
        st.TOKENS_WITHOUT_SENTENCE: 2,  # the rows of 'silent'
        st.NO_TOKEN_FEATURES: 2,
    }
    assert report.summary()["fallbacks"][st.NO_SUBTITLE]["examples"] == ["not_in_jsonl", "silent"]
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("subtitles")]
    assert len(line) == 1 and "kept 4 videos, 3 sentences, 2 words" in line[0]
    assert f"2 {st.NO_SUBTITLE} (2 videos)" in line[0]


def test_lengths_from_the_text_when_the_file_has_none(tmp_path):
    count = lambda text: len(text.split())  # noqa: E731  (a stand-in for RoBERTa's tokenizer)
    subs = {"v": [sub(0, 1, "a b c"), sub(1, 2, "d")]}
    out, report = load(tmp_path, subs, {"v": (rows(4), None)}, {"v": 5.0}, token_counter=count)
    np.testing.assert_array_equal(out["v"].word_sentence, [0, 0, 0, 1])
    with pytest.raises(DataError, match="key 'v-lengths': field 'lengths': missing, and no"):
        load(tmp_path, subs, {"v": (rows(4), None)}, {"v": 5.0})
    # Both: the file's lengths are kept, each sentence that disagrees with the text is counted.
    out, report = load(tmp_path, subs, {"v": (rows(4), [2, 2])}, {"v": 5.0}, token_counter=count)
    np.testing.assert_array_equal(out["v"].word_sentence, [0, 0, 1, 1])
    assert fallbacks(report) == {st.COUNT_DIFFERS: 2}


@pytest.mark.parametrize(
    "line, where, field, words",
    [
        ('{"vid_name": "v", "sub": [', "line 2", None, "ends mid-record"),
        ('{"vid_name": "v" "sub": []}', "line 2", None, "malformed JSON"),
        ('["v"]', "line 2", None, "expected an object"),
        ('{"sub": []}', "line 2", "vid_name", "missing"),
        ('{"vid_name": "a", "sub": []}', "line 2", "vid_name", "'a' repeats line 1"),
        ('{"vid_name": "v", "sub": {}}', "line 2", "sub", "expected a list"),
        ('{"vid_name": "v", "sub": [{"start": 1, "text": "x"}]}', "video 'v'", "sub[0].end", ""),
        ('{"vid_name": "v", "sub": [{"start": 2, "end": 1, "text": "x"}]}', "", "sub[0].end", "<"),
        (
            '{"vid_name": "v", "sub": [{"start": NaN, "end": 1, "text": "x"}]}',
            "",
            "sub[0].start",
            "",
        ),
        (
            '{"vid_name": "v", "sub": [{"start": "0", "end": 1, "text": "x"}]}',
            "",
            "sub[0].start",
            "",
        ),
        ('{"vid_name": "v", "sub": [{"start": 0, "end": 1, "text": 3}]}', "", "sub[0].text", ""),
    ],
)
def test_bad_subtitle_lines_name_file_line_and_field(tmp_path, line, where, field, words):
    path = tmp_path / tvr.SUBTITLE_FILE
    write_jsonl(path, {"a": []})
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + ("" if "ends mid-record" in words else "\n"))
    with pytest.raises(DataError) as info:
        st.read_subtitle_jsonl(path)
    assert info.value.source == str(path) and where in (info.value.where or "")
    assert info.value.field == field and words in info.value.problem


def test_bad_files_and_token_arrays(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty file"):
        st.read_subtitle_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="no such subtitle file"):
        st.read_subtitle_jsonl(tmp_path / "absent.jsonl")
    subs = {"v": [sub(0, 1)], "u": [sub(0, 1)]}
    nan = rows(2)
    nan[1, 0] = np.nan
    cases = [
        ({"v": (nan, [2])}, "key 'v': field 'features': non-finite values, first in row 1"),
        ({"v": (np.zeros(3, np.float32), [3])}, "expected float [N, D]"),
        ({"v": (rows(2), [-1, 3])}, "key 'v-lengths': field 'lengths': expected int [n] >= 0"),
        (
            {"v": (rows(2), [2]), "u": (np.zeros((2, 3), np.float32), [2])},
            "width 2, other videos 3",
        ),
        ({"other": (rows(2), [2])}, "shares no key with the videos that have subtitles"),
    ]
    for tokens, message in cases:
        with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load(tmp_path, subs, tokens, {"v": 5.0, "u": 5.0})
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        st.TokenFeatureFile(tmp_path / "bad.h5")


def test_real_video2dur_durations(shared_data_dir, tmp_path):
    """tvr.load_subtitle_words over the real val corpus (2,179 videos of
    tvr_video2dur_idx.json) with a hand-written subtitle file for two of them."""
    (tmp_path / tvr.VIDEO2DUR_IDX).symlink_to(shared_data_dir / "tvr" / tvr.VIDEO2DUR_IDX)
    # friends_s01e03_seg02_clip_19 lasts 61.46 s, friends_s04e20_seg02_clip_07 58.03 s
    # (tvr_video2dur_idx.json, val).
    subs = {
        "friends_s01e03_seg02_clip_19": [sub(0.862, 1.862), sub(60.0, 62.1)],
        "friends_s04e20_seg02_clip_07": [sub(58.03, 59.0)],
    }
    write_jsonl(tmp_path / tvr.SUBTITLE_FILE, subs)
    h5 = write_h5(
        tmp_path / "sub.h5",
        {
            "friends_s01e03_seg02_clip_19": (rows(3), [1, 2]),
            "friends_s04e20_seg02_clip_07": (rows(2), [2]),
        },
    )
    report = st.SubtitleReport()
    out = tvr.load_subtitle_words(tmp_path, h5, "val", report)
    assert len(out) == 2_179 and report.summary()["videos"] == 2_179
    first = out["friends_s01e03_seg02_clip_19"]
    np.testing.assert_allclose(first.sentence_times, [[0.862, 1.862], [60.0, 61.46]], rtol=1e-6)
    assert fallbacks(report) == {
        st.END_CLAMPED: 1,  # 62.1 s > 61.46 s
        st.AFTER_VIDEO: 1,  # starts at 58.03 s, the end of its video
        st.AFTER_VIDEO_TOKENS: 2,
        st.NO_SUBTITLE: 2_177,  # every other val video
    }
    with pytest.raises(DataError, match="no split 'nope'"):
        tvr.load_subtitle_words(tmp_path, h5, "nope", report)
