"""The canonical record: one query on one video, as every dataset module produces it.

Dataset parsers (``data_pipelines/<dataset>.py``) and the synthetic benchmark build
:class:`Record` objects; the tf.data pipeline (``input_pipeline.py``) only reads them.

Fields (``T`` = native clips of the video, ``S`` = ground-truth spans of the query):

=======================  ====================  ==========================================
field                    type / shape          meaning
=======================  ====================  ==========================================
query_id                 str                   unique within a split
video_id                 str                   shared by the queries of one video
duration_s               float                 video length in seconds, > 0
spans_s                  float32 [S, 2]        ground-truth [start, end] seconds, S >= 1
                                               (several annotators for DiDeMo)
query_text               str                   the sentence, non-empty
video_features           float32 [T, D]        one row per native clip, finite
clip_times               float32 [T, 2]        [start, end] seconds of every native clip
query_token_features     float32 [L, Dq]|None  e.g. RoBERTa token features (Dq = 768)
subtitle_features        float32 [T, Ds]|None  per-clip subtitle features (TVR, Ds = 768)
subtitle_words           SubtitleWords|None    the video's subtitle sentences and their words
                                               (Cascaded MPN; shared by a video's records)
extras                   dict                  dataset values the evaluators read (TVR
                                               ``desc_id``, ``type`` v/t/vt), JSON-serialisable
=======================  ====================  ==========================================

:class:`SubtitleWords` (``S`` sentences, ``W`` words, ``S = W = 0`` for a video without
subtitles): ``sentence_times float32 [S, 2]`` seconds, ``sentence_text`` (S strings),
``word_features float32 [W, Dw]`` (TVR: RoBERTa token features, Dw = 768) and ``word_sentence
int32 [W]``, the sentence of every word.  Words are in sentence order: ``word_sentence`` is
non-decreasing and in ``[0, S)``; a sentence may have no word.  Built by
:mod:`data_pipelines.subtitles` (TVR) and :mod:`data_pipelines.synthetic`; a bad field raises
:class:`RecordError` naming the video (as record) and ``subtitle_words.<field>``.

Validation happens on construction: a bad field raises :class:`RecordError` naming the record
(``query_id``) and the field.  Rules: arrays have the rank and trailing size above and
consistent ``T``; features and times are finite; ``end >= start`` for every span and clip;
``0 <= start`` and ``end <= duration_s`` for every span (parsers clamp to the duration first,
as the official loaders do, and count what they clamp).  Zero-length spans are accepted; it is
the parser's choice to drop them.  Clip times are not required to lie inside the duration
(feature extractors often overrun the last second) and are not used by the 2D-TAN resampling,
which assumes clips evenly cover ``[0, duration_s]``.  Subtitle sentences must lie inside
``[0, duration_s]`` like spans (the TVR reader clamps and counts).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class SubtitleWords:
    """One video's subtitle sentences and their words (module docstring); validated."""

    video_id: str
    sentence_times: np.ndarray
    sentence_text: tuple[str, ...]
    word_features: np.ndarray
    word_sentence: np.ndarray

    def __post_init__(self):
        _validate_subtitle_words(self)

    @property
    def num_sentences(self) -> int:
        return int(self.sentence_times.shape[0])

    @property
    def num_words(self) -> int:
        return int(self.word_features.shape[0])

    @classmethod
    def empty(cls, video_id: str, dim: int) -> SubtitleWords:
        """A video without subtitles: no sentence, no word, words ``dim`` wide."""
        return cls(video_id, np.zeros((0, 2)), (), np.zeros((0, dim)), np.zeros(0, np.int32))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays a built dataset stores (``subtitle_*``; texts are not stored)."""
        return {
            "subtitle_sentence_times": self.sentence_times,
            "subtitle_word_features": self.word_features,
            "subtitle_word_sentence": self.word_sentence,
        }

    @classmethod
    def from_arrays(cls, video_id: str, arrays: dict[str, np.ndarray]) -> SubtitleWords:
        """Inverse of :meth:`to_arrays` (sentence texts left empty)."""
        times = arrays["subtitle_sentence_times"]
        return cls(
            video_id,
            times,
            ("",) * len(times),
            arrays["subtitle_word_features"],
            arrays["subtitle_word_sentence"],
        )


class RecordError(ValueError):
    """A record field failed validation; the message names the record and the field."""

    def __init__(self, query_id: str, field: str, problem: str, source: str | None = None):
        self.query_id = query_id
        self.field = field
        self.source = source
        self.problem = problem
        where = f"{source}: " if source else ""
        super().__init__(f"{where}record {query_id!r}: field {field!r}: {problem}")


@dataclasses.dataclass(frozen=True, eq=False)
class Record:
    """One query of a moment retrieval dataset.  See the module docstring for the fields."""

    query_id: str
    video_id: str
    duration_s: float
    spans_s: np.ndarray
    query_text: str
    video_features: np.ndarray
    clip_times: np.ndarray
    query_token_features: np.ndarray | None = None
    subtitle_features: np.ndarray | None = None
    subtitle_words: SubtitleWords | None = None
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        _validate(self)

    @property
    def num_clips(self) -> int:
        """Native clip count ``T``."""
        return int(self.video_features.shape[0])


def make_record(*, source: str | None = None, **fields: Any) -> Record:
    """Validating constructor: ``Record(**fields)`` with ``source`` (a file name) in errors."""
    try:
        return Record(**fields)
    except RecordError as err:
        if source is None:
            raise
        raise RecordError(err.query_id, err.field, err.problem, source) from err


def _set(record: Record, name: str, value: Any) -> None:
    object.__setattr__(record, name, value)


def _as_float_array(record: Any, name: str, rank: int, owner: str | None = None) -> np.ndarray:
    value = getattr(record, name)
    who = owner or record.query_id
    field = f"subtitle_words.{name}" if owner else name
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise RecordError(who, field, f"not a float array ({err})") from err
    if array.ndim != rank:
        raise RecordError(who, field, f"expected rank {rank}, got shape {tuple(array.shape)}")
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise RecordError(
            who, field, f"{int(bad.sum())} non-finite values (NaN/inf), first at index {first}"
        )
    _set(record, name, array)
    return array


def _validate_subtitle_words(words: SubtitleWords) -> None:
    who = f"video {words.video_id}"
    times = _as_float_array(words, "sentence_times", 2, who)
    num = times.shape[0]
    problem = None
    if times.shape[1] != 2:
        field, problem = "sentence_times", f"expected [S, 2], got {times.shape}"
    elif ((times[:, 1] < times[:, 0]) | (times[:, 0] < 0)).any():
        k = int(np.argmax((times[:, 1] < times[:, 0]) | (times[:, 0] < 0)))
        field, problem = "sentence_times", f"sentence {k} is {times[k].tolist()}, not 0 <= s <= e"
    elif len(words.sentence_text) != num:
        field, problem = "sentence_text", f"{len(words.sentence_text)} texts, {num} sentences"
    if problem:
        raise RecordError(who, f"subtitle_words.{field}", problem)
    _set(words, "sentence_text", tuple(str(t) for t in words.sentence_text))
    feats = _as_float_array(words, "word_features", 2, who)
    ids = np.asarray(words.word_sentence)
    if ids.shape != (feats.shape[0],) or not np.issubdtype(ids.dtype, np.integer):
        problem = f"expected int [{feats.shape[0]}] (one per word), got {ids.dtype} {ids.shape}"
    else:
        ids = ids.astype(np.int64)
        bad = (ids < 0) | (ids >= num) | (np.diff(ids, prepend=0) < 0)
    if not problem and bad.any():
        k = int(np.argmax(bad))
        problem = f"word {k} has sentence {int(ids[k])}: need non-decreasing ids in [0, {num})"
    if problem:
        raise RecordError(who, "subtitle_words.word_sentence", problem)
    _set(words, "word_sentence", ids.astype(np.int32))


def _validate(record: Record) -> None:
    qid = record.query_id
    if not isinstance(qid, str) or not qid:
        raise RecordError(str(qid), "query_id", "must be a non-empty string")
    if not isinstance(record.video_id, str) or not record.video_id:
        raise RecordError(qid, "video_id", f"must be a non-empty string, got {record.video_id!r}")
    if not isinstance(record.query_text, str) or not record.query_text.strip():
        raise RecordError(
            qid, "query_text", f"must be a non-empty string, got {record.query_text!r}"
        )
    try:
        duration = float(record.duration_s)
    except (TypeError, ValueError) as err:
        raise RecordError(qid, "duration_s", f"not a number: {record.duration_s!r}") from err
    if not np.isfinite(duration) or duration <= 0:
        raise RecordError(qid, "duration_s", f"must be finite and > 0, got {duration}")
    _set(record, "duration_s", duration)

    spans = _as_float_array(record, "spans_s", 2)
    if spans.shape[0] < 1 or spans.shape[1] != 2:
        raise RecordError(qid, "spans_s", f"expected shape [S>=1, 2], got {tuple(spans.shape)}")
    for k, (start, end) in enumerate(spans):
        if end < start:
            raise RecordError(qid, "spans_s", f"span {k} has end {end} < start {start}")
        if start < 0 or end > duration:
            raise RecordError(
                qid, "spans_s", f"span {k} [{start}, {end}] outside [0, duration {duration}]"
            )

    video = _as_float_array(record, "video_features", 2)
    num_clips = video.shape[0]
    if num_clips < 1 or video.shape[1] < 1:
        raise RecordError(qid, "video_features", f"expected [T>=1, D>=1], got {video.shape}")
    times = _as_float_array(record, "clip_times", 2)
    if times.shape != (num_clips, 2):
        raise RecordError(
            qid,
            "clip_times",
            f"expected shape [{num_clips}, 2] (T of video_features), got {times.shape}",
        )
    if (times[:, 1] < times[:, 0]).any():
        k = int(np.argmax(times[:, 1] < times[:, 0]))
        raise RecordError(
            qid, "clip_times", f"clip {k} has end {times[k, 1]} < start {times[k, 0]}"
        )

    if record.query_token_features is not None:
        tokens = _as_float_array(record, "query_token_features", 2)
        if tokens.shape[0] < 1 or tokens.shape[1] < 1:
            raise RecordError(
                qid, "query_token_features", f"expected [L>=1, Dq>=1], got {tokens.shape}"
            )
    if record.subtitle_features is not None:
        subtitles = _as_float_array(record, "subtitle_features", 2)
        if subtitles.shape[0] != num_clips or subtitles.shape[1] < 1:
            raise RecordError(
                qid,
                "subtitle_features",
                f"expected [{num_clips}, Ds] (T of video_features), got {subtitles.shape}",
            )
    words = record.subtitle_words
    if words is not None:
        if not isinstance(words, SubtitleWords):
            raise RecordError(qid, "subtitle_words", f"expected SubtitleWords, got {type(words)}")
        if words.video_id != record.video_id:
            raise RecordError(
                qid, "subtitle_words", f"of video {words.video_id!r}, not {record.video_id!r}"
            )
        late = words.sentence_times[:, 1] > np.float32(duration)  # as clamped: float32
        if late.any():
            k = int(np.argmax(late))
            raise RecordError(
                qid,
                "subtitle_words.sentence_times",
                f"sentence {k} ends at {words.sentence_times[k, 1]} s, after the duration "
                f"{duration}",
            )
    if not isinstance(record.extras, dict):
        raise RecordError(qid, "extras", f"expected a dict, got {type(record.extras).__name__}")
