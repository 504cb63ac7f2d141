"""Parsed annotations (a query without its features), parse reports and data errors.

Every dataset module (``data_pipelines/<dataset>.py``) turns its official annotation files into
:class:`Annotation` objects, one per query, and records in a :class:`ParseReport` every record
that the reference code drops or clips, with the reason: nothing is lost silently, and
``vmr-jax data stats`` prints the counts.  Input that the reference code would not accept (a
malformed line, a missing field, an end before a start that the reference code does not drop)
raises :class:`DataError` naming the file, the line or record and the field.  An empty file,
or one that holds no query, is an error; so is a file cut mid-record (a truncated download):
JSON whose text ends inside a value (:func:`json_error`), a JSON-lines or text file whose
last line has no line end and no complete record.

A :class:`~data_pipelines.records.Record` is an annotation plus its video's features
(:func:`to_record`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from data_pipelines.records import Record, make_record


class DataError(ValueError):
    """Bad input: the message names the file, the line or record, and the field."""

    def __init__(self, source: str, where: str | None, field: str | None, problem: str):
        self.source = str(source)
        self.where = where
        self.field = field
        self.problem = problem
        parts = [self.source]
        if where:
            parts.append(where)
        if field:
            parts.append(f"field {field!r}")
        super().__init__(": ".join(parts) + f": {problem}")


EMPTY_FILE = "empty file: an annotation file holds the queries of its split"
TRUNCATED = "the file ends mid-record (truncated? download or copy it again)"


def ends_inside(text: str, err: json.JSONDecodeError) -> bool:
    """Whether decoding ``text`` failed because it stops inside a value: the error is at its
    end, or a string runs to its end (a cut file, not a typo)."""
    return err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string")


def json_error(source: str, text: str, err: json.JSONDecodeError) -> DataError:
    """The :class:`DataError` of a JSON decode error in ``text`` (the whole file): line and
    column, and whether the file is empty or ends inside a value (truncated)."""
    if not text.strip():
        return DataError(source, None, None, EMPTY_FILE)
    where = f"line {err.lineno}, column {err.colno}"
    if ends_inside(text, err):
        return DataError(source, where, None, f"{TRUNCATED}: {err.msg}")
    return DataError(source, where, None, f"malformed JSON: {err.msg}")


def load_json_text(path: str | os.PathLike) -> Any:
    """The JSON value of the file at ``path`` (UTF-8); :func:`json_error` on bad JSON."""
    source = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise DataError(source, None, None, f"not UTF-8 text: {err}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise json_error(source, text, err) from err


@dataclasses.dataclass(frozen=True, eq=False)
class Annotation:
    """One query of a benchmark split, before features.

    ``spans_s`` is ``float64 [S, 2]`` seconds after the reference code's preprocessing (several
    spans for DiDeMo's annotators); ``duration_s`` the video length the reference code uses.
    ``extras`` holds dataset-specific values the evaluators need (TVR ``desc_id`` and query
    ``type``; DiDeMo chunk ``times``), JSON-serialisable.
    """

    query_id: str
    video_id: str
    duration_s: float
    spans_s: np.ndarray
    query_text: str
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Skip:
    """One dropped or clipped record: where it is and why."""

    kind: str  # "dropped" or "clipped"
    reason: str
    source: str
    where: str
    query_id: str | None = None


class ParseReport:
    """Counts of what parsing kept, dropped and clipped, per split, with the reasons.

    ``report.drop(split, reason, source, where)`` / ``report.clip(...)`` record one event;
    ``report.kept(split, n)`` counts kept queries.  :meth:`summary` gives the numbers that
    ``vmr-jax data stats`` prints; the individual events stay available in ``events``.
    """

    def __init__(self) -> None:
        self.events: dict[str, list[Skip]] = collections.defaultdict(list)
        self.num_kept: dict[str, int] = collections.defaultdict(int)
        self.skipped_splits: dict[str, str] = {}  # split -> why it was left out whole

    def drop(
        self, split: str, reason: str, source: str, where: str, query_id: str | None = None
    ) -> None:
        self.events[split].append(Skip("dropped", reason, str(source), where, query_id))

    def clip(
        self, split: str, reason: str, source: str, where: str, query_id: str | None = None
    ) -> None:
        self.events[split].append(Skip("clipped", reason, str(source), where, query_id))

    def kept(self, split: str, count: int) -> None:
        self.num_kept[split] += int(count)

    def counts(self, split: str, kind: str) -> dict[str, int]:
        """``{reason: count}`` of the ``kind`` ("dropped"/"clipped") events of ``split``."""
        return dict(
            collections.Counter(e.reason for e in self.events.get(split, ()) if e.kind == kind)
        )

    def summary(self) -> dict[str, dict[str, Any]]:
        """``{split: {"kept": n, "dropped": {reason: n}, "clipped": {reason: n}}}``, plus
        ``{split: {"skipped": reason}}`` for splits left out whole."""
        splits = sorted(set(self.num_kept) | set(self.events))
        out: dict[str, dict[str, Any]] = {
            s: {
                "kept": self.num_kept.get(s, 0),
                "dropped": self.counts(s, "dropped"),
                "clipped": self.counts(s, "clipped"),
            }
            for s in splits
        }
        for split, why in self.skipped_splits.items():
            out.setdefault(split, {})["skipped"] = why
        return out

    def examples(self, split: str, kind: str, reason: str, limit: int = 3) -> list[str]:
        """Up to ``limit`` locations (``file:where``) of one kind of event, for messages."""
        hits = [
            f"{e.source}:{e.where}"
            for e in self.events.get(split, ())
            if e.kind == kind and e.reason == reason
        ]
        return hits[:limit]


def check_unique_ids(annotations: Iterable[Annotation], source: str) -> None:
    """Query ids must be unique within a split (they key predictions and results)."""
    seen: dict[str, int] = {}
    for k, a in enumerate(annotations):
        if a.query_id in seen:
            raise DataError(
                source,
                f"record {k}",
                "query_id",
                f"{a.query_id!r} repeats record {seen[a.query_id]}",
            )
        seen[a.query_id] = k


def to_record(
    annotation: Annotation,
    video_features: np.ndarray,
    clip_times: np.ndarray,
    *,
    query_token_features: np.ndarray | None = None,
    subtitle_features: np.ndarray | None = None,
    source: str | None = None,
) -> Record:
    """The canonical record of ``annotation`` with its features (validated)."""
    return make_record(
        source=source,
        query_id=annotation.query_id,
        video_id=annotation.video_id,
        duration_s=annotation.duration_s,
        spans_s=annotation.spans_s,
        query_text=annotation.query_text,
        video_features=video_features,
        clip_times=clip_times,
        query_token_features=query_token_features,
        subtitle_features=subtitle_features,
    )


def uniform_clip_times(num_clips: int, duration_s: float) -> np.ndarray:
    """``[T, 2]`` clips evenly covering ``[0, duration]`` (the 2D-TAN datasets' assumption)."""
    edges = np.arange(num_clips + 1, dtype=np.float64) * (float(duration_s) / num_clips)
    return np.stack([edges[:-1], edges[1:]], axis=1).astype(np.float32)


def fixed_clip_times(num_clips: int, clip_seconds: float) -> np.ndarray:
    """``[T, 2]`` clips of a fixed length from 0 (TVR/DiDeMo 1.5-s clips, DiDeMo 5-s chunks)."""
    starts = np.arange(num_clips, dtype=np.float64) * clip_seconds
    return np.stack([starts, starts + clip_seconds], axis=1).astype(np.float32)
