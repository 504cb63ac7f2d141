"""Subtitle words as model inputs: frame coverage, clip pooling and padded per-video tables.

With ``config.data.subtitle_words`` every batch (train, eval, and the video side of a corpus
index) carries, next to ``video_features [B, L, Dv]`` / ``video_mask [B, L]``
(``L = num_input_clips``, ``W = max_subtitle_words``, ``S = max_subtitle_sentences``):

==========================  =============  ===============================================
key                         shape / dtype  meaning
==========================  =============  ===============================================
subtitle_word_features      [B, W, Dw] f32 the video's words in sentence order, 0-padded
subtitle_word_mask          [B, W] f32     1 on real words
subtitle_word_sentence      [B, W] i32     the word's sentence (column of the coverage),
                                           -1 for padding
subtitle_coverage           [B, L, S] f32  1 where frame l overlaps sentence s
==========================  =============  ===============================================

Coverage rule: :func:`vmr_jax.layers.graph_attention.subtitle_frame_coverage` (HERO's
``sub2frames``, the rule the model uses): sentence ``[st, ed]`` seconds covers the frames
``floor(st / c) <= l < ceil(ed / c)`` among the valid frames (``video_mask``), where ``c`` is
the model frame's length in seconds (:func:`frame_seconds`): the native clip length
(``clip_times[0]``) with ``clip_sampling='truncate'`` (frame l = native clip l), and
``duration / L`` with ``'resample'`` (the bins taken to cover ``[0, duration]`` evenly, as the
resampling does).  A sentence outside the valid frames covers nothing; its words stay.

Cuts: sentences past ``S`` (in time order) are dropped with their words, then words past
``W`` (the last ones).  Nothing is cut silently: an in-memory split warns once with the
numbers (videos, words and sentences cut, the longest video) and keeps them in
:attr:`SubtitleWordTable.summary`; a built split, read on demand, warns at its first cut and
counts every cut video it reads.  Videos without subtitles (``S = W = 0``) are counted too.

Clip pooling (:func:`pool_clip_subtitles`): clip ``t``'s feature is the mean of the words of
every sentence covering it (TVRetrieval ``convert_sub_feature_word_to_clip.py`` with
``pool_type='avg'``), zero when none does: how the synthetic benchmark derives the clip-level
``subtitle_features`` that XML reads from the same sentences.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines.records import SubtitleWords
from data_pipelines.stored import StoredSplit
from data_pipelines.text_inputs import data_field
from data_pipelines.video_tables import StoredVideos
from vmr_jax.layers.graph_attention import subtitle_frame_coverage

logger = logging.getLogger(__name__)

BATCH_KEYS = (
    "subtitle_word_features",
    "subtitle_word_mask",
    "subtitle_word_sentence",
    "subtitle_coverage",
)

# PreparedSplit.subtitle_summary: videos, words and sentences seen, cut, and videos cut.
SUMMARY_KEYS = (
    "videos",
    "videos_without_subtitles",
    "words",
    "words_cut",
    "videos_words_cut",
    "sentences",
    "sentences_cut",
    "videos_sentences_cut",
)
# The arrays of SubtitleWords.to_arrays in a built dataset's video records.
STORED_KEYS = ("subtitle_sentence_times", "subtitle_word_features", "subtitle_word_sentence")


def frame_seconds(
    sampling: str, num_frames: int, duration_s: float, clip_times: np.ndarray
) -> float:
    """Seconds per model frame under ``clip_sampling`` (module docstring)."""
    if sampling == "truncate":
        return float(clip_times[0, 1] - clip_times[0, 0])
    return float(duration_s) / num_frames


def sentence_coverage(
    words: SubtitleWords, num_frames: int, num_valid: int, clip_seconds: float
) -> np.ndarray:
    """``bool [L, S_video]``: frame l (valid if ``l < num_valid``) overlaps sentence s."""
    valid = np.arange(num_frames)[None] < num_valid
    spans = words.sentence_times.astype(np.float64)[None]
    mask = np.ones((1, words.num_sentences), bool)
    return subtitle_frame_coverage(spans, mask, clip_seconds, valid)[0]


def pool_clip_subtitles(words: SubtitleWords, num_clips: int, clip_seconds: float) -> np.ndarray:
    """``f32 [T, Dw]``: per clip, the mean word of the sentences covering it (0 if none)."""
    cover = sentence_coverage(words, num_clips, num_clips, clip_seconds)  # [T, S]
    clip_words = cover[:, words.word_sentence].astype(np.float64)  # [T, W]
    count = clip_words.sum(1, keepdims=True)
    total = clip_words @ words.word_features.astype(np.float64)
    return (total / np.maximum(count, 1.0)).astype(np.float32)


def pad_video_words(
    words: SubtitleWords, coverage: np.ndarray, max_words: int, max_sentences: int
) -> tuple[dict[str, np.ndarray], int, int]:
    """One video's batch rows (module docstring), and (words cut, sentences cut)."""
    kept_sentences = min(words.num_sentences, max_sentences)
    ids = words.word_sentence
    inside = ids < kept_sentences
    feats, ids = words.word_features[inside][:max_words], ids[inside][:max_words]
    out = {
        "subtitle_word_features": np.zeros((max_words, words.word_features.shape[1]), np.float32),
        "subtitle_word_mask": np.zeros(max_words, np.float32),
        "subtitle_word_sentence": np.full(max_words, -1, np.int32),
        "subtitle_coverage": np.zeros((coverage.shape[0], max_sentences), np.float32),
    }
    out["subtitle_word_features"][: len(ids)] = feats
    out["subtitle_word_mask"][: len(ids)] = 1.0
    out["subtitle_word_sentence"][: len(ids)] = ids
    out["subtitle_coverage"][:, :kept_sentences] = coverage[:, :kept_sentences]
    return out, words.num_words - len(ids), words.num_sentences - kept_sentences


class _CutCounter:
    """Counts of a split's subtitle cuts and empty videos; one warning (module docstring)."""

    def __init__(self, name: str, max_words: int, max_sentences: int):
        self.name, self.max_words, self.max_sentences = name, max_words, max_sentences
        self.seen: set[int] = set()
        self.counts = dict.fromkeys(SUMMARY_KEYS, 0)
        self.longest = ("", 0)  # (video id, words) of the longest cut video
        self._lock = threading.Lock()

    def add(self, row: int, words: SubtitleWords, words_cut: int, sentences_cut: int) -> bool:
        """Counts video ``row`` once; True when it is the first video cut."""
        with self._lock:
            if row in self.seen:
                return False
            self.seen.add(row)
            c = self.counts
            first = words_cut + sentences_cut > 0 and not (c["words_cut"] + c["sentences_cut"])
            c["videos"] += 1
            c["videos_without_subtitles"] += words.num_sentences == 0
            c["words"] += words.num_words
            c["sentences"] += words.num_sentences
            c["words_cut"] += words_cut
            c["sentences_cut"] += sentences_cut
            c["videos_words_cut"] += words_cut > 0
            c["videos_sentences_cut"] += sentences_cut > 0
            if (words_cut or sentences_cut) and words.num_words > self.longest[1]:
                self.longest = (words.video_id, words.num_words)
            return first

    def message(self, what: str) -> str:
        c = self.counts
        return (
            f"split {self.name!r}: subtitles of {what} cut to config.data.max_subtitle_words="
            f"{self.max_words} words / max_subtitle_sentences={self.max_sentences} sentences "
            f"({c['words_cut']} words of {c['videos_words_cut']} videos, {c['sentences_cut']} "
            f"sentences of {c['videos_sentences_cut']} videos; longest: video "
            f"{self.longest[0]!r} ({self.longest[1]} words)); raise them to keep more"
        )


class SubtitleWordTable:
    """Padded subtitle rows of every video of an in-memory split: ``take(rows)`` gives the
    four batch keys.  ``summary``: the cut / empty counts of :class:`_CutCounter`."""

    def __init__(
        self,
        videos: Sequence[tuple[SubtitleWords, float, np.ndarray]],
        video_mask: np.ndarray,
        sampling: str,
        max_words: int,
        max_sentences: int,
        name: str = "",
    ):
        """``videos``: per row ``(words, duration_s, clip_times)``; ``video_mask [V, L]``."""
        dims = {w.word_features.shape[1] for w, _, _ in videos}
        if len(dims) != 1:
            raise ValueError(f"split {name!r}: subtitle word features of widths {sorted(dims)}")
        counter = _CutCounter(name, max_words, max_sentences)
        rows = []
        num_frames = video_mask.shape[1]
        for row, (words, duration, clip_times) in enumerate(videos):
            seconds = frame_seconds(sampling, num_frames, duration, clip_times)
            cover = sentence_coverage(words, num_frames, int(video_mask[row].sum()), seconds)
            padded, words_cut, sentences_cut = pad_video_words(
                words, cover, max_words, max_sentences
            )
            counter.add(row, words, words_cut, sentences_cut)
            rows.append(padded)
        self.arrays = {k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS}
        self.summary = counter.counts
        if counter.counts["words_cut"] or counter.counts["sentences_cut"]:
            logger.warning(counter.message(f"{counter.counts['videos']} videos"))

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[rows] for k, v in self.arrays.items()}


class VideosWithWords:
    """A video table (``take(rows)``) whose rows also carry the subtitle batch keys."""

    def __init__(self, videos: Any, words: SubtitleWordTable):
        self.videos, self.words = videos, words

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {**self.videos.take(rows), **self.words.take(rows)}


class StoredVideosWithWords(StoredVideos):
    """Videos of a built dataset with their subtitle words (``subtitle_*`` arrays of
    :meth:`SubtitleWords.to_arrays` in each video record), fitted and padded on demand."""

    def __init__(
        self,
        split: StoredSplit,
        num_clips: int,
        sampling: str,
        normalize: bool,
        subtitles: bool,
        max_words: int,
        max_sentences: int,
        name: str = "",
    ):
        super().__init__(split, num_clips, sampling, normalize, subtitles)
        self.max_words, self.max_sentences = max_words, max_sentences
        self.durations = np.zeros(split.num_videos)
        self.video_ids = [""] * split.num_videos
        for q, row in enumerate(split.video_row):
            self.durations[row] = split[q].duration_s
            self.video_ids[row] = split[q].video_id
        self.counter = _CutCounter(name, max_words, max_sentences)

    @property
    def summary(self) -> dict[str, int]:
        """Counts over the videos read so far."""
        return self.counter.counts

    def fit(self, record: dict[str, np.ndarray], row: int) -> dict[str, np.ndarray]:
        fitted = super().fit(record, row)
        missing = [k for k in STORED_KEYS if k not in record]
        if missing:
            raise ValueError(
                f"{self.split.directory}: split {self.split.split!r}, video "
                f"{self.video_ids[row]!r}: no {missing[0]} (config.data.subtitle_words needs "
                "a dataset built with subtitle words)"
            )
        words = SubtitleWords.from_arrays(self.video_ids[row], record)
        mask = fitted["video_mask"]
        seconds = frame_seconds(
            self.sampling, self.num_clips, self.durations[row], record["clip_times"]
        )
        cover = sentence_coverage(words, self.num_clips, int(mask.sum()), seconds)
        padded, words_cut, sentences_cut = pad_video_words(
            words, cover, self.max_words, self.max_sentences
        )
        if self.counter.add(row, words, words_cut, sentences_cut):
            logger.warning(
                self.counter.message(f"video {words.video_id!r}")
                + " (further cuts are counted in the split's subtitle summary, not warned)"
            )
        fitted.update(padded)
        return fitted


def with_subtitle_words(
    videos: Any,
    records: Sequence[Any] | StoredSplit,
    video_index: np.ndarray,
    config_data: Any,
    name: str = "",
) -> tuple[Any, dict[str, int]]:
    """``(table, summary)``: ``videos`` (the split's fitted video table) extended with the
    subtitle batch keys of ``config.data.max_subtitle_words`` / ``max_subtitle_sentences``;
    ``summary`` is the split's cut / empty counts (live for a built split)."""
    sizes = [data_field(config_data, f) for f in ("max_subtitle_words", "max_subtitle_sentences")]
    if min(sizes) < 1:
        raise ValueError(
            f"config.data.subtitle_words needs max_subtitle_words and max_subtitle_sentences "
            f">= 1, got {sizes}"
        )
    sampling = data_field(config_data, "clip_sampling")
    if isinstance(records, StoredSplit):
        if "subtitle_words" not in records.feature_dims:
            raise ValueError(
                f"{records.directory}: split {records.split!r} has no subtitle words "
                "(config.data.subtitle_words needs `vmr-jax data build ... --subtitle_words`)"
            )
        table = StoredVideosWithWords(
            records,
            videos.num_clips,
            sampling,
            videos.normalize,
            videos.subtitles,
            *sizes,
            name=name,
        )
        return table, table.summary
    first = {}
    for q, r in enumerate(records):
        if r.subtitle_words is None:
            raise ValueError(
                f"record {r.query_id!r}: field 'subtitle_words' is missing "
                "(config.data.subtitle_words)"
            )
        first.setdefault(int(video_index[q]), r)
    rows = [first[v] for v in range(len(first))]
    words = SubtitleWordTable(
        [(r.subtitle_words, r.duration_s, r.clip_times) for r in rows],
        videos.mask,
        sampling,
        *sizes,
        name=name,
    )
    return VideosWithWords(videos, words), words.summary
