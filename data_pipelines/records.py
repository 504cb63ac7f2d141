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
=======================  ====================  ==========================================

Validation happens on construction: a bad field raises :class:`RecordError` naming the record
(``query_id``) and the field.  Rules: arrays have the rank and trailing size above and
consistent ``T``; features and times are finite; ``end >= start`` for every span and clip;
``0 <= start`` and ``end <= duration_s`` for every span (parsers clamp to the duration first,
as the official loaders do, and count what they clamp).  Zero-length spans are accepted; it is
the parser's choice to drop them.  Clip times are not required to lie inside the duration
(feature extractors often overrun the last second) and are not used by the 2D-TAN resampling,
which assumes clips evenly cover ``[0, duration_s]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


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


def _as_float_array(record: Record, name: str, rank: int) -> np.ndarray:
    value = getattr(record, name)
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise RecordError(record.query_id, name, f"not a float array ({err})") from err
    if array.ndim != rank:
        raise RecordError(
            record.query_id, name, f"expected rank {rank}, got shape {tuple(array.shape)}"
        )
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise RecordError(
            record.query_id,
            name,
            f"{int(bad.sum())} non-finite values (NaN/inf), first at index {first}",
        )
    _set(record, name, array)
    return array


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
