"""Subtitle words as batch inputs: coverage and pooling by hand, padding, cuts, built splits.

Every expected number below was worked out by hand from the rule ``floor(st / c) <= l <
ceil(ed / c)`` (HERO ``sub2frames``) on the video of :func:`video_words`.
"""

from __future__ import annotations

import json
import logging

import ml_collections
import numpy as np
import pytest

from data_pipelines import input_pipeline as ip
from data_pipelines import stored
from data_pipelines import subtitle_batches as sb
from data_pipelines.records import Record, SubtitleWords
from data_pipelines.stored import StoredDataset


def video_words(video_id="v0"):
    """Four sentences over a 9-s video.  With c = 1.5 s: s0 [0.2, 1.4] -> frame 0; s1 [1.0,
    3.1] -> frames 0..2 (ceil(2.07) = 3); s2 [4.5, 4.5] -> none (floor = ceil = 3); s3 [6.1,
    9.0] -> frames 4, 5 (floor(4.07) = 4, ceil(6.0) = 6)."""
    return SubtitleWords(
        video_id=video_id,
        sentence_times=[[0.2, 1.4], [1.0, 3.1], [4.5, 4.5], [6.1, 9.0]],
        sentence_text=("a", "b c", "d", "e"),
        word_features=[[1, 0], [0, 2], [2, 2], [4, 4], [3, 3]],
        word_sentence=[0, 1, 1, 2, 3],
    )


def test_coverage_by_hand_truncate_geometry():
    # 6 frames of 1.5 s, the first 5 valid (a 5-clip video padded to 6): frame 5 is padding.
    cover = sb.sentence_coverage(video_words(), num_frames=6, num_valid=5, clip_seconds=1.5)
    expected = np.array(
        [
            [1, 1, 0, 0],  # frame 0: s0, s1
            [0, 1, 0, 0],
            [0, 1, 0, 0],
            [0, 0, 0, 0],  # frame 3: s2 has zero length on the boundary 4.5 s
            [0, 0, 0, 1],
            [0, 0, 0, 0],  # frame 5: s3 overlaps it, but it is padding
        ],
        bool,
    )
    np.testing.assert_array_equal(cover, expected)


def test_coverage_by_hand_resample_geometry():
    # 'resample': 3 bins over the 9-s duration, c = 3 s.  s0 -> 0; s1 [1.0, 3.1] -> 0, 1;
    # s2 at 4.5 s lies inside bin 1 (floor 1.5 = 1, ceil 1.5 = 2); s3 [6.1, 9.0] -> 2.
    seconds = sb.frame_seconds("resample", 3, 9.0, np.array([[0.0, 1.5]]))
    assert seconds == 3.0
    assert sb.frame_seconds("truncate", 3, 9.0, np.array([[0.0, 1.5]])) == 1.5
    cover = sb.sentence_coverage(video_words(), 3, 3, seconds)
    np.testing.assert_array_equal(cover, np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], bool))


def test_clip_pooling_is_the_mean_word_of_the_covering_sentences():
    pooled = sb.pool_clip_subtitles(video_words(), num_clips=6, clip_seconds=1.5)
    expected = [
        [1.0, 4 / 3],  # s0 and s1: mean of [1, 0], [0, 2], [2, 2]
        [1.0, 2.0],  # s1: mean of [0, 2], [2, 2]
        [1.0, 2.0],
        [0.0, 0.0],  # no sentence
        [3.0, 3.0],  # s3
        [3.0, 3.0],
    ]
    np.testing.assert_allclose(pooled, expected, rtol=1e-6)
    assert pooled.dtype == np.float32


def test_padding_keeps_the_first_sentences_then_the_first_words():
    words = video_words()
    cover = sb.sentence_coverage(words, 6, 5, 1.5)
    rows, words_cut, sentences_cut = sb.pad_video_words(words, cover, 3, 2)
    # Sentences 2 and 3 are cut with their words (2 words); the 3 words of s0, s1 fit W = 3.
    assert (words_cut, sentences_cut) == (2, 2)
    np.testing.assert_array_equal(rows["subtitle_word_features"], [[1, 0], [0, 2], [2, 2]])
    np.testing.assert_array_equal(rows["subtitle_word_mask"], [1, 1, 1])
    np.testing.assert_array_equal(rows["subtitle_word_sentence"], [0, 1, 1])
    np.testing.assert_array_equal(rows["subtitle_coverage"], cover[:, :2])
    rows, words_cut, sentences_cut = sb.pad_video_words(words, cover, 2, 8)
    assert (words_cut, sentences_cut) == (3, 0)  # W = 2 keeps [1, 0], [0, 2]
    np.testing.assert_array_equal(rows["subtitle_word_sentence"], [0, 1])
    rows, _, _ = sb.pad_video_words(words, cover, 7, 5)
    np.testing.assert_array_equal(rows["subtitle_word_sentence"], [0, 1, 1, 2, 3, -1, -1])
    np.testing.assert_array_equal(rows["subtitle_word_mask"], [1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(rows["subtitle_coverage"][:, 4], np.zeros(6))


def record(i, words, num_clips=5, clip=1.5):
    return Record(
        query_id=f"q{i}",
        video_id=words.video_id,
        duration_s=num_clips * clip + 1.5,  # 9 s: the sentences run past the 5 clips
        spans_s=np.array([[0.0, 3.0]]),
        query_text="a query",
        video_features=np.ones((num_clips, 3)) * i,
        clip_times=np.stack([np.arange(num_clips), np.arange(1, num_clips + 1)], 1) * clip,
        subtitle_words=words,
    )


def data_config(**overrides):
    cfg = dict(
        name="synthetic",
        num_input_clips=6,
        clip_sampling="truncate",
        text_mode="tokens",
        max_query_len=4,
        subtitle_words=True,
        max_subtitle_words=4,
        max_subtitle_sentences=3,
    )
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def test_batch_fields_shapes_dtypes_and_cut_warning(caplog):
    empty = SubtitleWords.empty("v1", 2)
    records = [record(0, video_words("v0")), record(1, empty), record(2, video_words("v0"))]
    text = ip.build_text_inputs(data_config(), {"train": records})
    with caplog.at_level(logging.WARNING):
        split = ip.prepare_split(records, data_config(), text, name="train")
    # One video of 5 words / 4 sentences, W = 4, S = 3: s3 and its word cut (1 sentence, 1 word).
    assert split.subtitle_summary == {
        "videos": 2,
        "videos_without_subtitles": 1,
        "words": 5,
        "words_cut": 1,
        "videos_words_cut": 1,
        "sentences": 4,
        "sentences_cut": 1,
        "videos_sentences_cut": 1,
    }
    cut = [r.getMessage() for r in caplog.records if "max_subtitle_words=4" in r.getMessage()]
    assert len(cut) == 1 and "1 words of 1 videos, 1 sentences of 1 videos" in cut[0]
    batch = ip.gather_batch(split, np.array([0, 1, 2, -1]))
    shapes = {k: (v.shape, v.dtype) for k, v in batch.items() if k.startswith("subtitle")}
    assert shapes == {
        "subtitle_word_features": ((4, 4, 2), np.float32),
        "subtitle_word_mask": ((4, 4), np.float32),
        "subtitle_word_sentence": ((4, 4), np.int32),
        "subtitle_coverage": ((4, 6, 3), np.float32),
    }
    np.testing.assert_array_equal(batch["subtitle_word_sentence"][0], [0, 1, 1, 2])
    np.testing.assert_array_equal(batch["subtitle_word_sentence"][1], [-1, -1, -1, -1])
    np.testing.assert_array_equal(batch["subtitle_word_mask"][1], [0, 0, 0, 0])
    # Video 0 has 5 valid clips of 1.5 s: the truncate coverage above, first 3 sentences.
    expected = sb.sentence_coverage(video_words(), 6, 5, 1.5)[:, :3].astype(np.float32)
    np.testing.assert_array_equal(batch["subtitle_coverage"][0], expected)
    np.testing.assert_array_equal(batch["subtitle_coverage"][1], np.zeros((6, 3)))
    np.testing.assert_array_equal(batch["subtitle_coverage"][3], expected)  # padding: record 0
    # The video table the corpus index encodes carries the same fields.
    table = split.videos.take(np.array([1, 0]))
    np.testing.assert_array_equal(table["subtitle_coverage"][1], expected)
    assert set(sb.BATCH_KEYS) <= set(table)
    stream = next(ip.make_eval_iterator(split, data_config(), 4))
    assert stream["subtitle_coverage"].shape == (4, 6, 3)


def test_missing_words_and_bad_sizes_are_errors():
    plain = Record(**{**record(0, video_words()).__dict__, "subtitle_words": None})
    text = ip.build_text_inputs(data_config(), {"train": [plain]})
    with pytest.raises(ValueError, match="record 'q0': field 'subtitle_words' is missing"):
        ip.prepare_split([plain], data_config(), text)
    good = [record(0, video_words())]
    with pytest.raises(ValueError, match="max_subtitle_sentences >= 1, got \\[4, 0\\]"):
        ip.prepare_split(good, data_config(max_subtitle_sentences=0), text)
    other = [record(0, video_words()), record(1, SubtitleWords.empty("v1", 7))]
    with pytest.raises(ValueError, match="subtitle word features of widths \\[2, 7\\]"):
        ip.prepare_split(other, data_config(), text)
    without = ip.prepare_split(good, data_config(subtitle_words=False), text)
    assert without.subtitle_summary is None
    assert not set(sb.BATCH_KEYS) & set(ip.gather_batch(without, np.array([0])))


def _built_dataset(directory, videos, words_dim=2):
    """A built dataset (data_pipelines.stored layout) of one query per video; ``words_dim``
    (None: a dataset built without subtitle words) is what ``data build`` records."""
    arrays = []
    with open(directory / stored.queries_file("train"), "w", encoding="utf-8") as f:
        for row, (vid, words, num_clips) in enumerate(videos):
            line = {
                "query_id": f"q{row}",
                "video_id": vid,
                "video_row": row,
                "duration_s": 9.0,
                "spans_s": [[0.0, 3.0]],
                "query_text": "a query",
            }
            f.write(json.dumps(line) + "\n")
            video = {
                "video_features": np.ones((num_clips, 3), np.float32),
                "clip_times": (np.arange(num_clips)[:, None] + [0, 1]) * 1.5,
            }
            if words is not None:
                video.update(words.to_arrays())
            arrays.append(stored.encode(video, {"video_id": vid}))
    stored.write_records(str(directory / stored.videos_file("train")), arrays)
    info = {
        "format_version": stored.FORMAT_VERSION,
        "dataset": "tvr",
        "features": "toy",
        "splits": {"train": {"feature_dims": {"video": 3}}},
    }
    if words_dim is not None:
        info["splits"]["train"]["feature_dims"]["subtitle_words"] = words_dim
    (directory / stored.INFO_FILE).write_text(json.dumps(info))
    return StoredDataset(directory).split("train")


def test_built_split_reads_words_on_demand(tmp_path, caplog):
    split = _built_dataset(
        tmp_path, [("v0", video_words("v0"), 5), ("v1", SubtitleWords.empty("v1", 2), 4)]
    )
    text = ip.build_text_inputs(data_config(), {"train": split})
    with caplog.at_level(logging.WARNING):
        prepared = ip.prepare_split(split, data_config(), text, name="train")
        batch = ip.gather_batch(prepared, np.array([1, 0, 0]))
    np.testing.assert_array_equal(batch["subtitle_word_sentence"][1], [0, 1, 1, 2])
    np.testing.assert_array_equal(batch["subtitle_word_features"][1, 3], [4, 4])
    expected = sb.sentence_coverage(video_words(), 6, 5, 1.5)[:, :3].astype(np.float32)
    np.testing.assert_array_equal(batch["subtitle_coverage"][2], expected)
    np.testing.assert_array_equal(batch["subtitle_word_mask"][0], [0, 0, 0, 0])
    np.testing.assert_array_equal(batch["video_mask"][0], [1, 1, 1, 1, 0, 0])
    # Counted once per video read; one warning at the first cut.
    assert prepared.subtitle_summary["videos"] == 2
    assert prepared.subtitle_summary["words_cut"] == 1
    assert sum("max_subtitle_words=4" in r.getMessage() for r in caplog.records) == 1


def test_built_split_without_words_is_an_error(tmp_path):
    (tmp_path / "plain").mkdir()
    split = _built_dataset(tmp_path / "plain", [("v0", None, 5)], words_dim=None)
    text = ip.build_text_inputs(data_config(), {"train": split})
    with pytest.raises(ValueError, match="has no subtitle words .*--subtitle_words"):
        ip.prepare_split(split, data_config(), text, name="train")
    # Declared but absent from a video record (a damaged dataset): named at the read.
    split = _built_dataset(tmp_path, [("v0", None, 5)])
    prepared = ip.prepare_split(split, data_config(), text, name="train")
    with pytest.raises(ValueError, match="video 'v0': no subtitle_sentence_times"):
        ip.gather_batch(prepared, np.array([0]))
