"""The predictions files ``vmr-jax score`` reads: which format a file is, its ranked moments,
and their conversion to each protocol's input.

Formats, told apart by the file's header: the ``format`` field where the file has one, else
the keys of its top-level object (of its first line for JSON lines):

=======================  ====================================================  ============
format                   file                                                  protocols
=======================  ====================================================  ============
``vmr-jax-predictions``  ``vmr-jax predict``'s JSON: ``{"format":              all four
``/1``                   "vmr-jax-predictions/1", ..., "top_k", "predictions":
                         [{"query_id", "video_id", "duration", "moments":
                         [[start_s, end_s, score], ...]}, ...]}``
``moment-lines``         ``vmr-jax eval``'s ``<split>_step<N>_predictions.jsonl``  all four
                         (single-video families), or any JSON lines ``{"query_id",
                         ["video_id",] "moments": [[start_s, end_s(, score)],
                         ...]}``
``tvr-submission``       the official TVR submission ``{"video2idx", "VCMR" |     tvr
                         "SVMR" | "VR"}`` (``vmr-jax eval``'s
                         ``<split>_step<N>_submission.json``, corpus families)
``didemo-rankings``      ``{"protocol": "didemo", "rankings": {annotation_id:     didemo
                         [21 indices]}}`` (``vmr-jax eval``'s
                         ``<split>_step<N>_didemo.json``)
=======================  ====================================================  ============

The first two hold per-query moment lists, best first (the list order ranks; scores are
carried, never re-sorted).  Conversions (:func:`moment_times`, :func:`svmr_submission`,
:func:`didemo_rankings`):

* ``2dtan`` / ``mmn``: the first ``max(recalls)`` moments.  A predict file whose header
  ``top_k`` is smaller than ``max(recalls)`` is refused (its R@n would silently count the
  moments it never listed as misses).
* ``tvr``: an ``SVMR``-only submission, row ``[video2idx[video_id], start, end, score]``;
  each query's ``video_id`` must be its ground-truth video.  Only the official R@K with
  ``K`` at most the lists' length (the header ``top_k``, else the longest list) are reported:
  a 5-moment list says nothing about R@10 or R@100.
* ``didemo``: full rankings of the 21 five-second chunk moments.  When every moment of the
  file lies on the chunk grid (proposal families such as VLANet's ``didemo`` variant) the
  rule of ``vmr-jax eval`` applies (:func:`vmr_jax.evaluation.didemo.rankings_from_moments`:
  listed moments in list order, the others after them in the official moment order), so
  ``vmr-jax predict --top_k 21 --nms_thresh 1`` of such a model scores as ``vmr-jax eval``
  does; otherwise each moment is snapped to its chunk moment of largest IoU and the others
  follow by IoU with the top-1 (:func:`vmr_jax.evaluation.didemo.rankings_from_times`).  A
  short list ranks the moments it does not name by that rule, which R@5 can depend on: the
  official numbers need a full ranking (``<split>_step<N>_didemo.json``).

Every query of the ground truth must appear exactly once (query ids compared as text: TVR
``desc_id`` and DiDeMo ``annotation_id`` numbers match their ``str``).  Errors name the file,
the record (line or ``predictions[i]``) or query id, and the field.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from vmr_jax.evaluation import didemo, vcmr

PREDICT_FORMAT = "vmr-jax-predictions/1"
MOMENT_LINES = "moment-lines"
TVR_SUBMISSION = "tvr-submission"
DIDEMO_RANKINGS = "didemo-rankings"
FORMATS = {
    PREDICT_FORMAT: 'vmr-jax predict\'s JSON object with "format": "vmr-jax-predictions/1"',
    MOMENT_LINES: 'JSON lines {"query_id", "moments"} (vmr-jax eval\'s *_predictions.jsonl)',
    TVR_SUBMISSION: 'the TVR submission {"video2idx", "VCMR"/"SVMR"/"VR"} '
    "(vmr-jax eval's *_submission.json)",
    DIDEMO_RANKINGS: 'DiDeMo rankings {"protocol": "didemo", "rankings"} '
    "(vmr-jax eval's *_didemo.json)",
}
HEAD_CHARS = 1 << 16  # how much of a file the format is first looked for in
_FIRST_KEY = re.compile(r'\{\s*"((?:[^"\\]|\\.)*)"\s*:\s*("(?:[^"\\]|\\.)*")?')


class PredictionsError(ValueError):
    """A predictions file that cannot be scored; the message names the file, record and field."""


def _accepted(formats: Sequence[str]) -> str:
    return "; ".join(f"'{f}': {FORMATS[f]}" for f in formats)


# --------------------------------------------------------------------------- format
def _read_text(path: str, expected: str = "", size: int = -1) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(size)
    except UnicodeDecodeError as err:
        tail = f"; {expected}" if expected else ""
        raise PredictionsError(f"{path}: not UTF-8 text ({err.reason}){tail}") from None


def _classify(obj: dict, path: str, accepted: Sequence[str], where: str) -> str:
    """The format of a file from its top-level (or first-line) object's keys."""
    if "format" in obj:
        if obj["format"] == PREDICT_FORMAT:
            return PREDICT_FORMAT
        raise PredictionsError(
            f"{path}: field 'format' is {obj['format']!r}, not a format vmr-jax score reads; "
            f"accepted: {_accepted(accepted)}"
        )
    if "video2idx" in obj or any(task in obj for task in vcmr.TASKS):
        return TVR_SUBMISSION
    if "rankings" in obj:
        return DIDEMO_RANKINGS
    if "query_id" in obj or "moments" in obj:
        return MOMENT_LINES
    raise PredictionsError(
        f"{path}: {where} has keys {sorted(obj)[:8]}, none of a predictions format; "
        f"accepted: {_accepted(accepted)}"
    )


def detect_format(
    path: str | os.PathLike, accepted: Sequence[str] = tuple(FORMATS), protocol: str = ""
) -> str:
    """The format of a predictions file (module docstring), one of ``accepted``.

    Decided from the first key of the file when it is ``format`` or a TVR key (a TVR submission
    can hold millions of numbers: it is not parsed here), else from the parsed top-level object
    or, for JSON lines, the first line's.  Errors name the file and list ``accepted``.
    """
    path = str(path)
    expected = f"accepted: {_accepted(accepted)}"
    head = _read_text(path, expected, HEAD_CHARS).lstrip("\ufeff \t\r\n")
    if not head:
        raise PredictionsError(f"{path}: empty file; {expected}")
    if head[0] == "[":
        raise PredictionsError(
            f"{path}: the top level is a JSON array; expected a JSON object; {expected}"
        )
    if head[0] != "{":
        raise PredictionsError(f"{path}: not a JSON object or JSON lines; {expected}")
    match = _FIRST_KEY.match(head)
    fmt = None
    if match and match.group(1) == "format" and match.group(2):
        fmt = _classify({"format": json.loads(match.group(2))}, path, accepted, "")
    elif match and (match.group(1) == "video2idx" or match.group(1) in vcmr.TASKS):
        fmt = TVR_SUBMISSION
    if fmt is None:
        text = _read_text(path, expected)
        try:
            obj, where = json.loads(text), "the top-level object"
        except json.JSONDecodeError:
            lines = text.split("\n")
            n = next(n for n, line in enumerate(lines) if line.strip())
            try:
                obj, where = json.loads(lines[n]), f"line {n + 1}"
            except json.JSONDecodeError as err:
                raise PredictionsError(
                    f"{path}: not JSON or JSON lines ({err}); {expected}"
                ) from None
        if not isinstance(obj, dict):
            raise PredictionsError(
                f"{path}: {where} is a JSON {type(obj).__name__}, not an object; {expected}"
            )
        fmt = _classify(obj, path, accepted, where)
    if fmt not in accepted:
        raise PredictionsError(
            f"{path} is {FORMATS[fmt]}, which protocol {protocol!r} does not read; {expected}"
        )
    return fmt


# --------------------------------------------------------------------------- moment lists
@dataclasses.dataclass
class QueryMoments:
    """Per-query ranked moments of a predict file or moment lines, in file order.

    ``moments[i]``: ``[K_i, 2]`` float64 seconds, best first; ``scores[i]``: ``[K_i]`` (NaN
    where the file gives none); ``where[i]``: the record (file and line or list index), for
    messages; ``top_k``: the header's list length (predict files), else None.
    """

    path: str
    format: str
    query_ids: list[str]
    video_ids: list[str | None]
    moments: list[np.ndarray]
    scores: list[np.ndarray]
    where: list[str]
    top_k: int | None = None

    def name(self, i: int) -> str:
        """Record ``i`` and its query id, for messages."""
        return f"{self.where[i]} (query {self.query_ids[i]!r})"

    def width(self) -> int:
        """The lists' length: the header ``top_k``, else the longest list."""
        return self.top_k or max((len(m) for m in self.moments), default=0)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _entry(out: QueryMoments, entry: Any, where: str, shape: str) -> None:
    """Checks one query's record and appends it to ``out``."""
    if not isinstance(entry, dict):
        raise PredictionsError(f"{where}: expected an object {shape}, got {type(entry).__name__}")
    qid = entry.get("query_id")
    if not isinstance(qid, (str, int)) or isinstance(qid, bool):
        problem = "missing" if qid is None else f"must be a string, got {qid!r}"
        raise PredictionsError(f"{where}: field 'query_id' {problem}")
    record, where = where, f"{where} (query {str(qid)!r})"
    moments = entry.get("moments")
    if not isinstance(moments, list):
        problem = "missing" if moments is None else "must be a list of [start, end(, score)]"
        raise PredictionsError(f"{where}: field 'moments' {problem}")
    video = entry.get("video_id")
    if video is not None and not isinstance(video, (str, int)):
        raise PredictionsError(f"{where}: field 'video_id' must be a string, got {video!r}")
    times, scores = np.zeros((len(moments), 2)), np.full(len(moments), np.nan)
    for k, m in enumerate(moments):
        ok = isinstance(m, (list, tuple)) and len(m) in (2, 3) and all(map(_is_number, m))
        if ok:
            times[k] = m[:2]
            scores[k] = m[2] if len(m) == 3 else np.nan
            ok = np.isfinite(times[k]).all() and times[k, 0] <= times[k, 1]
            ok = ok and (len(m) == 2 or np.isfinite(scores[k]))
        if not ok:
            raise PredictionsError(
                f"{where}: field 'moments[{k}]' = {m!r:.80} is not a finite [start <= end(, score)]"
            )
    out.query_ids.append(str(qid))
    out.video_ids.append(None if video is None else str(video))
    out.moments.append(times)
    out.scores.append(scores)
    out.where.append(record)


def read_predict_file(path: str | os.PathLike) -> QueryMoments:
    """A ``vmr-jax predict`` file (format ``vmr-jax-predictions/1``), checked."""
    path = str(path)
    try:
        payload = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise PredictionsError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != PREDICT_FORMAT:
        raise PredictionsError(f"{path}: expected an object with 'format': {PREDICT_FORMAT!r}")
    top_k = payload.get("top_k")
    if top_k is not None and not (isinstance(top_k, int) and top_k > 0):
        raise PredictionsError(f"{path}: field 'top_k' must be a positive integer, got {top_k!r}")
    entries = payload.get("predictions")
    if not isinstance(entries, list):
        problem = "missing" if entries is None else f"a {type(entries).__name__}"
        raise PredictionsError(
            f"{path}: field 'predictions' is {problem}; expected a list of "
            '{"query_id", "video_id", "moments"} objects'
        )
    count = payload.get("num_queries")
    if count is not None and count != len(entries):
        raise PredictionsError(
            f"{path}: field 'num_queries' is {count!r} but 'predictions' holds {len(entries)}"
        )
    out = QueryMoments(path, PREDICT_FORMAT, [], [], [], [], [], top_k)
    shape = '{"query_id", "video_id", "moments"}'
    for i, entry in enumerate(entries):
        _entry(out, entry, f"{path}: predictions[{i}]", shape)
    return out


def read_moment_lines(path: str | os.PathLike) -> QueryMoments:
    """JSON lines ``{"query_id", ["video_id",] "moments"}`` (``vmr-jax eval``), checked."""
    path = str(path)
    out = QueryMoments(path, MOMENT_LINES, [], [], [], [], [])
    for line_no, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}: line {line_no}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise PredictionsError(f"{where}: not JSON ({err})") from None
        _entry(out, entry, where, '{"query_id", "moments"}')
    return out


def read_query_moments(path: str | os.PathLike, fmt: str) -> QueryMoments:
    """The moment lists of a file of format ``fmt`` (``PREDICT_FORMAT`` or ``MOMENT_LINES``)."""
    if fmt == PREDICT_FORMAT:
        return read_predict_file(path)
    if fmt == MOMENT_LINES:
        return read_moment_lines(path)
    raise ValueError(f"{fmt!r} holds no per-query moment lists")


def align(found: QueryMoments, gt_ids: Sequence) -> np.ndarray:
    """``[Q_gt]`` record index of each ground-truth query; every query exactly once."""
    keys = [str(q) for q in gt_ids]
    known = set(keys)
    index: dict[str, int] = {}
    for i, qid in enumerate(found.query_ids):
        if qid not in known:
            raise PredictionsError(f"{found.where[i]}: query {qid!r} is not in the ground truth")
        if qid in index:
            raise PredictionsError(
                f"{found.where[i]}: query {qid!r} appears twice (first: "
                f"{found.where[index[qid]].removeprefix(found.path + ': ')})"
            )
        index[qid] = i
    missing = [k for k in keys if k not in index]
    if missing:
        raise PredictionsError(
            f"{found.path}: {len(missing)} ground-truth queries have no prediction, "
            f"e.g. {missing[:5]}"
        )
    return np.array([index[k] for k in keys], np.int64)


# --------------------------------------------------------------------------- conversions
def moment_times(found: QueryMoments, order: np.ndarray, top_k: int) -> np.ndarray:
    """``[Q, top_k, 2]`` float64 seconds of the records ``order`` (NaN where a list is short);
    the 2dtan / mmn input.  Refuses a predict file whose ``top_k`` is below ``top_k``."""
    if found.top_k is not None and found.top_k < top_k:
        raise PredictionsError(
            f"{found.path}: lists at most {found.top_k} moments per query (field 'top_k'), "
            f"R@{top_k} needs {top_k}: run vmr-jax predict with --top_k {top_k} or score "
            f"with --recalls up to {found.top_k}"
        )
    times = np.full((len(order), top_k, 2), np.nan)
    for q, i in enumerate(order):
        m = found.moments[i][:top_k]
        times[q, : len(m)] = m
    return times


def svmr_submission(
    found: QueryMoments, order: np.ndarray, ground_truth: vcmr.TvrGroundTruth
) -> tuple[dict, tuple[int, ...]]:
    """An SVMR-only TVR submission of the records ``order`` (GT order) and the official R@K
    that its lists can answer (module docstring)."""
    video2idx = ground_truth.video2idx or {}
    entries = []
    for q, i in enumerate(order):
        where, video = found.name(i), found.video_ids[i]
        gt_video = ground_truth.vid_name[q] if ground_truth.vid_name else None
        if video is None:
            raise PredictionsError(f"{where}: field 'video_id' missing (protocol 'tvr' needs it)")
        if gt_video is not None and video != gt_video:
            raise PredictionsError(
                f"{where}: field 'video_id' is {video!r}, but the query is about {gt_video!r}"
            )
        if video not in video2idx:
            raise PredictionsError(f"{where}: field 'video_id' {video!r} is not in video2idx")
        if not len(found.moments[i]):
            raise PredictionsError(f"{where}: field 'moments' is empty (TVR needs a moment)")
        scores = found.scores[i]
        scores = np.where(np.isnan(scores), -np.arange(len(scores), dtype=float), scores)
        rows = [
            [video2idx[video], float(st), float(ed), float(s)]
            for (st, ed), s in zip(found.moments[i], scores)
        ]
        entries.append({"desc_id": ground_truth.desc_id[q], "predictions": rows})
    width = found.width()
    return (
        {"video2idx": dict(video2idx), "SVMR": entries},
        tuple(k for k in vcmr.RECALL_TOPKS if k <= width),
    )


def on_chunk_grid(found: QueryMoments, chunk_seconds: float = didemo.CHUNK_SECONDS) -> bool:
    """Whether every moment is one of the 21 DiDeMo moments in seconds (within
    :data:`vmr_jax.evaluation.didemo.GRID_TOLERANCE_S`)."""
    grid = didemo.moment_seconds(chunk_seconds=chunk_seconds)
    for m in found.moments:
        near = np.abs(m[:, None, :] - grid[None]) <= didemo.GRID_TOLERANCE_S
        if not near.all(-1).any(-1).all():
            return False
    return True


def didemo_rankings(found: QueryMoments, order: np.ndarray) -> tuple[np.ndarray, str]:
    """``[Q, 21]`` rankings of the records ``order`` and the rule used (module docstring)."""
    lists = [found.moments[i] for i in order]
    for q, i in enumerate(order):
        m = lists[q]
        ok = (m[:, 1] > m[:, 0]) & (m[:, 1] > 0) & (m[:, 0] < 6 * didemo.CHUNK_SECONDS)
        if not len(m) or not ok.all():
            k = int(np.argmin(ok)) if len(m) else None
            field = "moments" if k is None else f"moments[{k}]"
            raise PredictionsError(
                f"{found.name(i)}: field '{field}' = {m[k].tolist() if len(m) else []}: DiDeMo "
                f"needs a moment with end > start overlapping [0, {6 * didemo.CHUNK_SECONDS:g}] s"
            )
    width = max(len(m) for m in lists)
    times = np.full((len(lists), width, 2), np.nan)
    rank_scores = np.full((len(lists), width), -np.inf)
    for q, m in enumerate(lists):
        times[q, : len(m)] = m
        rank_scores[q, : len(m)] = -np.arange(len(m))  # the list order ranks
    if on_chunk_grid(found):
        rule = "chunk-grid moments in list order, the others after them in moment order"
        return didemo.rankings_from_moments(times, rank_scores), rule
    rule = "moments snapped to the chunk moment of largest IoU, the others by IoU with the top-1"
    return didemo.rankings_from_times(times), rule
