"""TVR submission and ground-truth files: reading, writing and checking them, and their arrays.

* Ground truth: the records of ``tvr_<split>_release.jsonl`` (``desc_id``, ``vid_name``, ``ts``,
  optional ``type`` and ``desc``) with the ``{split: {vid_name: [duration, index]}}`` table of
  ``tvr_video2dur_idx.json`` -> :class:`TvrGroundTruth`.
* Submission (jayleicn/TVRetrieval ``standalone_eval/eval.py``): ``{"video2idx": {name: index},
  "VCMR" | "SVMR" | "VR": [{"desc_id", "desc", "predictions": [[video_idx, st, ed, score], ...]},
  ...]}`` -> ``{task: RankedPredictions}`` in GT order (:func:`parse_submission`), and back
  (:func:`submission_from_predictions`).  Lists keep their order; more than ``max_predictions``
  = 100 rows raise :class:`SubmissionError` unless ``truncate=True``, which drops the extra rows
  unread (unvalidated), as the official code does.

Stricter than the official code, which crashes on or silently scores these: missing, extra or
repeated ``desc_id``; a row that is not 4 numbers; an empty list; NaN or infinite values;
``st > ed``; a video index outside the ``video2idx`` values; more than 100 rows (see above).
Errors name the file and 1-based line, or the task, ``desc_id`` and field.

Scored by :mod:`vmr_jax.evaluation.vcmr`, which re-exports the public names defined here.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import numbers
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TASKS = ("VCMR", "SVMR", "VR")
DESC_TYPES = ("v", "t", "vt")  # index = the official desc_type2idx
MULTI_SPAN_MIN = 4  # a GT "ts" with this many entries is a list of spans (vcmr.MULTI_SPAN_HITS)


class SubmissionError(ValueError):
    """A submission the official evaluator would refuse or mis-score."""


class GroundTruthError(ValueError):
    """Malformed ground truth (names the file and line when read from disk)."""


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class RankedPredictions:
    """Ranked lists of ``Q`` queries, best first, padded to ``K`` rows.

    ``video_idx [Q, K]`` int64 (-1 beyond ``length``), ``st_ed [Q, K, 2]`` float64 seconds,
    ``score [Q, K]`` float64 (default 0; ignored by the metrics, ranks the NMS), ``length [Q]``
    rows per query (default ``K``).  Padding is reset to -1 / 0 on construction.
    """

    video_idx: np.ndarray
    st_ed: np.ndarray
    score: np.ndarray | None = None
    length: np.ndarray | None = None

    def __post_init__(self):
        video, st_ed = np.asarray(self.video_idx), np.asarray(self.st_ed, np.float64)
        score = np.zeros(video.shape) if self.score is None else np.asarray(self.score, float)
        length = np.full(video.shape[:1], video.shape[-1]) if self.length is None else self.length
        length = np.asarray(length, np.int64)
        if video.ndim != 2 or st_ed.shape != (*video.shape, 2) or score.shape != video.shape:
            raise ValueError(
                f"need video_idx/score [Q,K], st_ed [Q,K,2]; got {video.shape}, "
                f"{score.shape}, {st_ed.shape}"
            )
        if (
            length.shape != video.shape[:1]
            or not ((length >= 0) & (length <= video.shape[1])).all()
        ):
            raise ValueError(f"length must be [Q] in [0, {video.shape[1]}]")
        valid = np.arange(video.shape[1]) < length[:, None]
        object.__setattr__(self, "video_idx", np.where(valid, video, -1).astype(np.int64))
        object.__setattr__(self, "st_ed", np.where(valid[..., None], st_ed, 0.0))
        object.__setattr__(self, "score", np.where(valid, score, 0.0))
        object.__setattr__(self, "length", length)

    @property
    def valid(self) -> np.ndarray:
        """``[Q, K]`` bool: row ``k`` is a real prediction."""
        return np.arange(self.video_idx.shape[1]) < self.length[:, None]

    def head(self, n: int) -> RankedPredictions:
        """The first ``n`` rows of every list."""
        return RankedPredictions(
            self.video_idx[:, :n], self.st_ed[:, :n], self.score[:, :n], np.minimum(self.length, n)
        )


@dataclasses.dataclass(frozen=True)
class TvrGroundTruth:
    """Ground truth of ``Q`` queries.

    ``desc_id``: ``Q`` unique ids; ``video_idx [Q]`` the GT videos' video2idx values;
    ``spans [Q, S, 2]`` (or ``[Q, 2]``) seconds as annotated (float64; cast to float32 when
    scored); ``num_spans [Q]``: 1 for ``[st, ed]``, >= 4 for a DiDeMo-style list (default 1);
    ``desc_type [Q]`` 0/1/2 for v/t/vt, None without types.  With ``vid_name`` a submission's own
    ``video2idx`` maps the GT videos, as the official evaluator does; ``desc`` and ``video2idx``
    (the split's) are used to write submissions.
    """

    desc_id: tuple
    video_idx: np.ndarray
    spans: np.ndarray
    num_spans: np.ndarray | None = None
    desc_type: np.ndarray | None = None
    vid_name: tuple | None = None
    desc: tuple | None = None
    video2idx: dict | None = None

    def __post_init__(self):
        ids = self.desc_id
        ids = tuple(ids.tolist() if isinstance(ids, np.ndarray) else ids)
        q = len(ids)
        if len(set(ids)) != q:
            raise GroundTruthError("desc_id values repeat in the ground truth")
        video, spans = np.asarray(self.video_idx, np.int64), np.asarray(self.spans, np.float64)
        spans = spans[:, None] if spans.ndim == 2 else spans
        num = np.ones(q, np.int64) if self.num_spans is None else np.asarray(self.num_spans)
        if (
            video.shape != (q,)
            or spans.ndim != 3
            or spans.shape[::2] != (q, 2)
            or num.shape != (q,)
        ):
            raise GroundTruthError(f"need video_idx/num_spans [{q}], spans [{q},S,2]")
        if ((num != 1) & ((num < MULTI_SPAN_MIN) | (num > spans.shape[1]))).any():
            raise GroundTruthError(f"num_spans must be 1 or {MULTI_SPAN_MIN}..{spans.shape[1]}")
        used = np.arange(spans.shape[1]) < num[:, None]
        if not np.isfinite(spans[used]).all():
            raise GroundTruthError("ground-truth spans must be finite")
        types = self.desc_type
        if types is not None:
            types = np.asarray(types, np.int64)
            if types.shape != (q,) or not np.isin(types, range(len(DESC_TYPES))).all():
                raise GroundTruthError(f"desc_type must be [{q}] in 0..2 (v, t, vt)")
        for name in ("vid_name", "desc"):
            value = getattr(self, name)
            if value is not None and len(value) != q:
                raise GroundTruthError(f"{name} must have {q} entries")
            object.__setattr__(self, name, None if value is None else tuple(value))
        object.__setattr__(self, "desc_id", ids)
        object.__setattr__(self, "video_idx", video)
        object.__setattr__(self, "spans", np.where(used[..., None], spans, 0.0))
        object.__setattr__(self, "num_spans", num.astype(np.int64))
        object.__setattr__(self, "desc_type", types)

    def __len__(self) -> int:
        return len(self.desc_id)


# --------------------------------------------------------------------------- files


def ground_truth_from_records(
    records: Sequence[Mapping], video2idx: Mapping[str, int], source: str = "ground truth"
) -> TvrGroundTruth:
    """Ground truth from the official records (lines of ``tvr_*_release.jsonl``): ``desc_id``,
    ``vid_name``, ``ts`` (``[st, ed]`` or >= 4 such spans), optional ``type`` and ``desc``.
    Errors name ``source:<record number from 1>``."""
    fields: dict[str, list] = {k: [] for k in ("desc_id", "vid_name", "ts", "type", "desc")}
    seen: dict = {}
    for line, rec in enumerate(records, 1):
        where = f"{source}:{line}"
        if not isinstance(rec, Mapping):
            raise GroundTruthError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        missing = [k for k in ("desc_id", "vid_name", "ts") if k not in rec]
        if missing:
            raise GroundTruthError(f"{where}: no {missing} (a split without public GT?)")
        ts, name, desc_id, desc_type = rec["ts"], rec["vid_name"], rec["desc_id"], rec.get("type")
        pair = isinstance(ts, list) and len(ts) == 2 and all(map(_is_number, ts))
        multi = (
            isinstance(ts, list)
            and len(ts) >= MULTI_SPAN_MIN
            and all(isinstance(s, list) and len(s) == 2 and all(map(_is_number, s)) for s in ts)
        )
        if not (pair or multi):
            raise GroundTruthError(
                f"{where}: 'ts' must be [st, ed] or >= {MULTI_SPAN_MIN} [st, "
                f"ed] spans (the official handles no other), got {ts!r:.60}"
            )
        if name not in video2idx:
            raise GroundTruthError(f"{where}: vid_name {name!r} is not in video2idx")
        if desc_type not in (None, *DESC_TYPES):
            raise GroundTruthError(f"{where}: type {desc_type!r} is not one of {DESC_TYPES}")
        if fields["type"] and (desc_type is None) != (fields["type"][0] is None):
            raise GroundTruthError(f"{where}: 'type' given on some records only")
        if desc_id in seen:
            raise GroundTruthError(f"{where}: desc_id {desc_id!r} repeats line {seen[desc_id]}")
        seen[desc_id] = line
        for key, value in zip(
            fields, (desc_id, name, [ts] if pair else ts, desc_type, rec.get("desc", ""))
        ):
            fields[key].append(value)
    width = max(map(len, fields["ts"]), default=1)
    spans = np.zeros((len(fields["ts"]), width, 2))
    for i, ts in enumerate(fields["ts"]):
        spans[i, : len(ts)] = ts
    has_type = bool(fields["type"]) and fields["type"][0] is not None
    return TvrGroundTruth(
        desc_id=tuple(fields["desc_id"]),
        video_idx=np.array([video2idx[n] for n in fields["vid_name"]], np.int64),
        spans=spans,
        num_spans=np.array([len(ts) for ts in fields["ts"]], np.int64),
        desc_type=[DESC_TYPES.index(t) for t in fields["type"]] if has_type else None,
        vid_name=tuple(fields["vid_name"]),
        desc=tuple(fields["desc"]),
        video2idx=dict(video2idx),
    )


def _read_json(path: Path, error: type[ValueError]) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise error(f"{path}: not JSON ({err})") from None


def load_tvr_ground_truth(
    jsonl_path: str | Path, video2dur_idx_path: str | Path, split: str
) -> TvrGroundTruth:
    """TVR GT from ``tvr_<split>_release.jsonl`` and ``tvr_video2dur_idx.json`` (``{split:
    {vid_name: [duration, index]}}``, whose ``split`` part is the ``video2idx``).  Errors name
    the file and the 1-based line."""
    table_path, path = Path(video2dur_idx_path), Path(jsonl_path)
    table = _read_json(table_path, GroundTruthError)
    if not isinstance(table, dict) or not isinstance(table.get(split), dict):
        raise GroundTruthError(f"{table_path}: no split {split!r}")
    video2idx = {}
    for name, value in table[split].items():
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)):
            raise GroundTruthError(f"{table_path}: {split}/{name} is not [duration, index]")
        video2idx[name] = value[1]
    records = []
    for line, text in enumerate(path.read_text().splitlines(), 1):
        try:
            records.append(json.loads(text))
        except json.JSONDecodeError as err:
            raise GroundTruthError(f"{path}:{line}: not JSON ({err})") from None
    return ground_truth_from_records(records, video2idx, source=str(path))


def _tasks_of(submission: Any, where: str) -> list[str]:
    if not isinstance(submission, Mapping) or not isinstance(submission.get("video2idx"), Mapping):
        raise SubmissionError(
            f"{where}: a submission is an object with 'video2idx' {{name: index}}"
        )
    tasks = [t for t in TASKS if t in submission]
    if not tasks:
        raise SubmissionError(f"{where}: no task; expected some of {TASKS}")
    for task in tasks:
        if not isinstance(submission[task], list):
            raise SubmissionError(f"{where}: {task!r} must be a list of query entries")
    return tasks


_PREDICTIONS = re.compile(r'("predictions"\s*:\s*)(\[[-+0-9.eE,\s\[\]]*\])')
_ROW4 = re.compile(r"\[[^,\[\]]*,[^,\[\]]*,[^,\[\]]*,[^,\[\]]*\]")
_BRACKETS = str.maketrans("[]", "  ")


def _bulk_load(text: str) -> dict | None:
    """The submission with every ``predictions`` list as a float64 ``[n, 4]`` array.

    A full val submission holds 13 million numbers, which ``json.loads`` turns into Python
    objects in about 9 s; here the rows are cut out by one regex, checked to be 4 fields each,
    and parsed in one NumPy call, and only the small rest goes through ``json``.  Returns None
    for anything outside that plain layout (NaN, other row shapes, ...): the caller then
    decodes the text normally and the row checks name the culprit.
    """
    blobs: list[str] = []

    def stash(match: re.Match) -> str:
        blobs.append(match.group(2))
        return f'{match.group(1)}{{"__rows__": {len(blobs) - 1}}}'

    try:
        submission = json.loads(_PREDICTIONS.sub(stash, text))
    except json.JSONDecodeError:
        return None
    rows = np.array([b.count("[") - 1 for b in blobs], np.int64)
    if sum(len(_ROW4.findall(b)) for b in blobs) != rows.sum():
        return None
    joined = ",".join(b for b, n in zip(blobs, rows) if n).translate(_BRACKETS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fromstring warns (and stops) on a bad number
        try:
            numbers = np.fromstring(joined, sep=",") if joined else np.zeros(0)
        except (ValueError, DeprecationWarning):
            return None
    if numbers.size != 4 * rows.sum():
        return None
    tables = np.split(numbers.reshape(-1, 4), np.cumsum(rows)[:-1])
    if not isinstance(submission, dict):
        return None
    for task in TASKS:
        for entry in submission.get(task, ()) if isinstance(submission.get(task), list) else ():
            ref = entry.get("predictions") if isinstance(entry, dict) else None
            if isinstance(ref, dict) and set(ref) == {"__rows__"}:
                entry["predictions"] = tables[ref["__rows__"]]
    return submission


def read_submission(path: str | Path, as_arrays: bool = False) -> dict:
    """Load an official submission JSON; its layout is checked, the rows when scored.

    ``as_arrays``: ``predictions`` lists come back as ``[n, 4]`` float64 arrays when the file
    is plain numbers (:func:`_bulk_load`, about 4x faster on a full val submission), else as
    the decoded lists; both score the same.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SubmissionError(f"{path}: unreadable ({err})") from None
    submission = _bulk_load(text) if as_arrays else None
    if submission is None:
        try:
            submission = json.loads(text)
        except json.JSONDecodeError as err:
            raise SubmissionError(f"{path}: not JSON ({err})") from None
    _tasks_of(submission, str(path))
    return submission


def write_submission(path: str | Path, submission: Mapping) -> None:
    """Write a submission dict (:func:`submission_from_predictions`) as the official JSON."""
    _tasks_of(submission, "submission")
    Path(path).write_text(json.dumps(submission))


def submission_from_predictions(
    predictions: Mapping[str, RankedPredictions],
    ground_truth: TvrGroundTruth,
    video2idx: Mapping[str, int] | None = None,
) -> dict:
    """Official submission dict of ``{task: [Q, K] lists}`` in GT order (``video2idx`` defaults
    to the GT's)."""
    video2idx = ground_truth.video2idx if video2idx is None else video2idx
    if video2idx is None:
        raise ValueError("video2idx is needed (the ground truth carries none)")
    out: dict = {"video2idx": dict(video2idx)}
    descs = ground_truth.desc or ("",) * len(ground_truth)
    for task, pred in predictions.items():
        if task not in TASKS or len(pred.length) != len(ground_truth):
            raise ValueError(f"{task}: need a task of {TASKS} with {len(ground_truth)} lists")
        columns = (pred.video_idx, pred.st_ed[..., 0], pred.st_ed[..., 1], pred.score)
        rows = zip(*(c.tolist() for c in columns))
        out[task] = [
            {"desc_id": d, "desc": desc, "predictions": [list(r) for r in zip(*row)][:n]}
            for d, desc, row, n in zip(ground_truth.desc_id, descs, rows, pred.length.tolist())
        ]
    return out


# --------------------------------------------------------------------------- checks


def _rows_to_arrays(task: str, desc_ids: list, lists: list) -> RankedPredictions:
    """Per-query row lists -> padded arrays, with one ``np.array`` call for all rows."""
    lengths = np.array([len(rows) for rows in lists], np.int64)
    if all(isinstance(rows, np.ndarray) for rows in lists):  # read_submission's bulk path
        flat = np.concatenate(lists) if lists else np.zeros((0, 4))
    else:
        flat = list(itertools.chain.from_iterable(lists))
    try:
        table = np.array(flat) if len(flat) else np.zeros((0, 4))
        ok = table.ndim == 2 and table.shape[1] == 4 and table.dtype.kind in "biuf"
    except (ValueError, TypeError):
        ok = False
    if not ok:  # find the culprit for the message
        for d, rows in zip(desc_ids, lists):
            for k, row in enumerate(rows):
                if not (
                    isinstance(row, (list, tuple))
                    and len(row) == 4
                    and all(isinstance(x, numbers.Real) for x in row)
                ):
                    raise SubmissionError(
                        f"{task} desc_id={d!r}: predictions[{k}] must be 4 "
                        f"numbers [video_idx, st, ed, score], got {row!r:.80}"
                    )
        raise SubmissionError(f"{task}: prediction rows are not all 4 numbers")
    table = table.astype(np.float64)
    rows = np.repeat(np.arange(len(lists)), lengths)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    padded = np.zeros((len(lists), int(lengths.max(initial=0)), 4))
    padded[rows, cols] = table
    video = padded[..., 0]
    bad = ~(np.isfinite(video) & (video == np.round(video)))
    if bad.any():
        q, k = np.argwhere(bad)[0]
        raise SubmissionError(
            f"{task} desc_id={desc_ids[q]!r}: predictions[{k}] video_idx "
            f"{float(video[q, k])!r} is not an integer"
        )
    return RankedPredictions(video.astype(np.int64), padded[..., 1:3], padded[..., 3], lengths)


def _check_predictions(
    task: str,
    pred: RankedPredictions,
    desc_ids: Sequence,
    video_values: np.ndarray | None,
    max_predictions: int,
    truncate: bool,
) -> RankedPredictions:
    """Validate padded lists (``desc_ids`` name their rows); returns them cut to the limit."""
    too_long = pred.length > max_predictions
    if too_long.any() and not truncate:
        q = int(np.argmax(too_long))
        raise SubmissionError(
            f"{task} desc_id={desc_ids[q]!r}: 'predictions' has {pred.length[q]} rows, more than "
            f"{max_predictions} (the official evaluator reads only the first {max_predictions};"
            " truncate=True drops the rest as it does)"
        )
    pred = pred.head(max_predictions)
    if (pred.length == 0).any():
        raise SubmissionError(
            f"{task} desc_id={desc_ids[int(np.argmin(pred.length))]!r}: "
            "'predictions' is empty (the official evaluator fails on it)"
        )
    st, ed = pred.st_ed[..., 0], pred.st_ed[..., 1]
    known = (
        np.ones(st.shape, bool) if video_values is None else np.isin(pred.video_idx, video_values)
    )
    checks = [
        ("video_idx", "is not a video2idx value", ~known),
        ("st", "is not finite", ~np.isfinite(st)),
        ("ed", "is not finite", ~np.isfinite(ed)),
        ("score", "is not finite", ~np.isfinite(pred.score)),
        ("st", "is after ed", st > ed),
    ]
    for field, what, bad in checks:
        bad = bad & pred.valid
        if bad.any():
            q, k = np.argwhere(bad)[0]
            row = [int(pred.video_idx[q, k]), *pred.st_ed[q, k].tolist(), float(pred.score[q, k])]
            raise SubmissionError(
                f"{task} desc_id={desc_ids[q]!r}: predictions[{k}] {field} {what}: {row}"
            )
    return pred


def _video_values(video2idx: Mapping) -> np.ndarray:
    for name, value in video2idx.items():
        if not (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
            raise SubmissionError(f"video2idx[{name!r}] must be an int, got {value!r}")
    return np.unique(np.fromiter(video2idx.values(), np.int64, len(video2idx)))


def parse_submission(
    submission: Mapping,
    ground_truth: TvrGroundTruth,
    max_predictions: int = 100,
    truncate: bool = False,
) -> dict[str, RankedPredictions]:
    """Check a submission dict; its lists as ``{task: [Q, K <= max_predictions]}`` arrays in GT
    order.  Raises :class:`SubmissionError` naming the task, ``desc_id`` and field."""
    tasks = _tasks_of(submission, "submission")
    video_values = _video_values(submission["video2idx"])
    index = {d: i for i, d in enumerate(ground_truth.desc_id)}
    out = {}
    for task in tasks:
        desc_ids, lists = [], []
        for i, entry in enumerate(submission[task]):
            if not (isinstance(entry, Mapping) and "desc_id" in entry and "predictions" in entry):
                raise SubmissionError(
                    f"{task}[{i}]: an entry is {{'desc_id', 'desc', "
                    f"'predictions'}}, got {entry!r:.80}"
                )
            if not isinstance(entry["predictions"], (list, np.ndarray)):
                raise SubmissionError(
                    f"{task} desc_id={entry['desc_id']!r}: 'predictions' must "
                    "be a list of [video_idx, st, ed, score] rows"
                )
            desc_ids.append(entry["desc_id"])
            lists.append(
                entry["predictions"][:max_predictions] if truncate else entry["predictions"]
            )
        try:
            rows = np.array([index.get(d, -1) for d in desc_ids], np.int64)
        except TypeError:
            raise SubmissionError(f"{task}: a desc_id is not an id like the GT's") from None
        counts = np.bincount(rows[rows >= 0], minlength=len(index))
        if (counts > 1).any():
            raise SubmissionError(
                f"{task}: desc_id={ground_truth.desc_id[np.argmax(counts > 1)]!r} appears twice"
            )
        extra = [d for d, r in zip(desc_ids, rows) if r < 0]
        missing = [ground_truth.desc_id[i] for i in np.flatnonzero(counts == 0)]
        if extra or missing:
            raise SubmissionError(
                f"{task}: desc_ids must match the ground truth; {len(missing)} missing (e.g. "
                f"{missing[:5]}), {len(extra)} not in it (e.g. {extra[:5]})"
            )
        pred = _rows_to_arrays(task, desc_ids, lists)
        pred = _check_predictions(task, pred, desc_ids, video_values, max_predictions, truncate)
        order = np.argsort(rows)
        out[task] = RankedPredictions(
            pred.video_idx[order], pred.st_ed[order], pred.score[order], pred.length[order]
        )
    return out
