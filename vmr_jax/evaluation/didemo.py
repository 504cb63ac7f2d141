"""DiDeMo moment retrieval metrics (R@1, R@5, mIoU) under the ``didemo`` protocol.

Protocol ``didemo``: LisaAnne/LocalizingMoments ``utils/eval.py`` (``eval_predictions``) at
commit b6a555c8.  A video is cut into six 5-second chunks; the candidates are the 21 moments
``(start_chunk, end_chunk)`` with inclusive ends, in the repo's order (:data:`MOMENTS`): the six
single chunks ``(0,0)..(5,5)``, then ``itertools.combinations(range(6), 2)`` = ``(0,1), (0,2),
..., (4,5)``.  A prediction is a **full ranking** of the 21 moments, best first.  Per query with
annotator moments ``t_1..t_n`` (every annotator counts, duplicates included):

* ``rank(t_a)`` = 1-based position of ``t_a`` in the ranking; ``avg_rank`` = mean of the three
  smallest ranks (of all ``n`` when ``n < 3``: the official ``np.sort(ranks)[:3]``);
* ``avg_iou`` = mean of the three largest chunk IoUs between the top-1 moment and the ``t_a``
  (of all ``n`` when ``n < 3``); chunk IoU adds 1 to overlap and hull
  (:func:`vmr_jax.ops.segments.chunk_iou`: ``(0,0)`` vs ``(0,1)`` is 1/2);
* ``R@1`` = share of queries with ``avg_rank <= 1`` (three annotator moments, duplicates
  counted, must all be the top-1), ``R@5`` = share with ``avg_rank <= 5``, ``mIoU`` = mean
  ``avg_iou``.

Results are the three numbers the official function returns (and prints with ``%f``):
**fractions in [0, 1]**, float64, bit-identical to the official arithmetic (multiply by 100 for
the papers' tables), keyed ``"R@1"``, ``"R@5"``, ``"mIoU"``, plus ``"protocol"``, ``"rule"`` and
``"num_queries"``.  A query without annotator moments (the official mean of an empty list, NaN)
is refused by the loader and by :func:`evaluate`.

Predictions file (:func:`write_predictions_json` / :func:`read_predictions_json`), JSON::

    {"protocol": "didemo",
     "moments": [[0, 0], [1, 1], ..., [4, 5]],          # MOMENTS, for self-description
     "rankings": {"<annotation_id>": [i_1, ..., i_21]}}  # indices into "moments", best first

One entry per annotation id of the split; each ranking a permutation of ``0..20``.  The
official ``eval_predictions(segments, data)`` takes, per query of ``data``, the list of moment
tuples best first (``list.index(tuple(gt))`` needs tuples), i.e. what ``test_network.py`` builds
as ``[possible_segments[i] for i in order]``::

    segs = [[tuple(f["moments"][i]) for i in f["rankings"][str(d["annotation_id"])]]
            for d in data]
    eval_predictions(segs, data)

(:func:`official_segments` does the same from a ``[Q, 21]`` array.)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vmr_jax.ops import segments

PROTOCOL = "didemo"
NUM_CHUNKS = 6
CHUNK_SECONDS = 5.0
MOMENTS = np.array(
    [(c, c) for c in range(NUM_CHUNKS)] + list(itertools.combinations(range(NUM_CHUNKS), 2)),
    np.int32,
)  # [21, 2] (start_chunk, end_chunk), inclusive, official order
NUM_MOMENTS = len(MOMENTS)
# MOMENT_INDEX[s, e] = index in MOMENTS of (s, e); -1 where e < s.
MOMENT_INDEX = np.full((NUM_CHUNKS, NUM_CHUNKS), -1, np.int64)
MOMENT_INDEX[MOMENTS[:, 0], MOMENTS[:, 1]] = np.arange(NUM_MOMENTS)
TOP_ANNOTATORS = 3  # the official np.sort(...)[:3] / [-3:]

RULE = (
    "LisaAnne/LocalizingMoments utils/eval.py: full ranking of the 21 chunk moments; per query "
    "avg_rank = mean of the 3 smallest 1-based ranks of the annotator moments (all annotators, "
    "duplicates counted; fewer than 3 -> mean of those), R@1 = share with avg_rank <= 1, R@5 = "
    "share with avg_rank <= 5; mIoU = mean over queries of the mean of the 3 largest inclusive "
    "chunk IoUs ((+1) in overlap and hull) between the top-1 moment and the annotator moments"
)


# --------------------------------------------------------------------------- ground truth


@dataclasses.dataclass(frozen=True)
class DidemoGroundTruth:
    """Annotator moments of a DiDeMo split, in file order.

    Attributes:
      annotation_ids: ``[Q]`` int64 (the json ``annotation_id``).
      times: ``[Q, T, 2]`` int32 ``(start_chunk, end_chunk)`` per annotator, ``-1`` padded,
        ``T`` = the most annotators of any query (4, 5 or 7 in the release).
      n_times: ``[Q]`` int32 annotators per query.
    """

    annotation_ids: np.ndarray
    times: np.ndarray
    n_times: np.ndarray

    def __len__(self) -> int:
        return len(self.annotation_ids)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def ground_truth_from_records(
    records: Sequence[dict], source: str = "<records>"
) -> DidemoGroundTruth:
    """Validate official DiDeMo records (``{"annotation_id", "times", ...}``) and pack them.

    Raises ``ValueError`` naming ``source``, the record (index and annotation_id) and the field
    for: a record that is not an object, a missing/non-integer/duplicate ``annotation_id``,
    missing or empty ``times``, a time that is not two integers, a chunk outside ``0..5``, or an
    end chunk before the start chunk.
    """
    if not isinstance(records, list):
        raise ValueError(f"{source}: expected a JSON list of queries, got {type(records).__name__}")
    ids: list[int] = []
    all_times: list[list[tuple[int, int]]] = []
    seen: dict[int, int] = {}
    for r, rec in enumerate(records):
        where = f"{source}: record {r}"
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected an object, got {type(rec).__name__}")
        if "annotation_id" not in rec:
            raise ValueError(f"{where}: missing field 'annotation_id'")
        aid = rec["annotation_id"]
        if not _is_int(aid):
            raise ValueError(f"{where}: field 'annotation_id' must be an integer, got {aid!r}")
        where = f"{where} (annotation_id {aid})"
        if aid in seen:
            raise ValueError(f"{where}: annotation_id repeats record {seen[aid]}")
        seen[aid] = r
        times = rec.get("times")
        if times is None:
            raise ValueError(f"{where}: missing field 'times'")
        if not isinstance(times, list) or not times:
            raise ValueError(f"{where}: field 'times' must be a non-empty list, got {times!r}")
        pairs = []
        for a, t in enumerate(times):
            field = f"{where}: field 'times[{a}]' = {t!r}"
            if not (isinstance(t, list | tuple) and len(t) == 2 and all(map(_is_int, t))):
                raise ValueError(f"{field}: expected [start_chunk, end_chunk] integers")
            if not all(0 <= c < NUM_CHUNKS for c in t):
                raise ValueError(f"{field}: chunk index outside 0..{NUM_CHUNKS - 1}")
            if t[1] < t[0]:
                raise ValueError(f"{field}: end chunk before start chunk")
            pairs.append((t[0], t[1]))
        ids.append(aid)
        all_times.append(pairs)
    width = max((len(p) for p in all_times), default=0)
    packed = np.full((len(all_times), width, 2), -1, np.int32)
    for q, pairs in enumerate(all_times):
        packed[q, : len(pairs)] = pairs
    return DidemoGroundTruth(
        annotation_ids=np.array(ids, np.int64),
        times=packed,
        n_times=np.array([len(p) for p in all_times], np.int32),
    )


def load_didemo_ground_truth(path: str | Path) -> DidemoGroundTruth:
    """Read LocalizingMoments ``{train,val,test}_data.json``; errors as
    :func:`ground_truth_from_records`."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
    return ground_truth_from_records(records, str(path))


# --------------------------------------------------------------------------- rankings


def check_rankings(rankings: np.ndarray, annotation_ids: Sequence[int] | None = None) -> np.ndarray:
    """Validate ``[Q, 21]`` rankings (each a permutation of ``0..20``); returns int64 ``[Q, 21]``.

    Errors name the query (row, and annotation id when given).
    """
    arr = np.asarray(rankings)
    if arr.ndim != 2 or arr.shape[1] != NUM_MOMENTS:
        raise ValueError(f"rankings must be [Q, {NUM_MOMENTS}], got shape {arr.shape}")
    if annotation_ids is not None and len(annotation_ids) != arr.shape[0]:
        raise ValueError(f"{arr.shape[0]} rankings for {len(annotation_ids)} annotation ids")

    def name(q: int) -> str:
        return f"query {q}" + (
            "" if annotation_ids is None else f" (annotation_id {annotation_ids[q]})"
        )

    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"rankings must hold moment indices, got dtype {arr.dtype}")
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            q = int(np.argwhere(bad)[0, 0])
            raise ValueError(f"{name(q)}: ranking holds a non-integer entry (NaN or fraction)")
    arr = arr.astype(np.int64)
    bad = (np.sort(arr, axis=1) != np.arange(NUM_MOMENTS)).any(axis=1)
    if bad.any():
        q = int(np.flatnonzero(bad)[0])
        missing = sorted(set(range(NUM_MOMENTS)) - set(arr[q].tolist()))
        raise ValueError(
            f"{name(q)}: ranking is not a permutation of 0..{NUM_MOMENTS - 1} "
            f"(missing {missing}); the official evaluation needs every moment ranked"
        )
    return arr


def official_segments(rankings: np.ndarray) -> list[list[tuple[int, int]]]:
    """``[Q, 21]`` index rankings -> the ``segments`` argument of the official
    ``eval_predictions``: per query the list of ``(start_chunk, end_chunk)`` tuples, best first."""
    moments = [tuple(int(c) for c in m) for m in MOMENTS]
    return [[moments[i] for i in row] for row in check_rankings(rankings).tolist()]


def rankings_from_scores(scores: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Rank the 21 moments of every query by score.

    Args:
      scores: ``[Q, 21]`` one score per moment of :data:`MOMENTS`.
      higher_is_better: False ranks ascending, like ``test_network.py``'s ``np.argsort`` of the
        official ``rank_score`` (a distance); the official default sort is not stable, so only
        tied scores may come out in another order.
    Returns: ``[Q, 21]`` int64 indices into :data:`MOMENTS`, best first; ties keep moment order
      (stable sort).
    """
    s = np.asarray(scores, np.float64)
    if s.ndim != 2 or s.shape[1] != NUM_MOMENTS:
        raise ValueError(f"scores must be [Q, {NUM_MOMENTS}], got shape {s.shape}")
    bad = np.isnan(s).any(axis=1)
    if bad.any():
        raise ValueError(f"query {int(np.flatnonzero(bad)[0])}: NaN moment score")
    return np.argsort(-s if higher_is_better else s, axis=1, kind="stable")


def rankings_from_score_map(score_maps: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Rank the moments of ``[Q, 6, 6]`` chunk score maps: cell ``[s, e]`` scores moment
    ``(s, e)``, cells ``e < s`` are ignored.  Returns ``[Q, 21]`` as :func:`rankings_from_scores`.
    """
    maps = np.asarray(score_maps)
    if maps.ndim != 3 or maps.shape[1:] != (NUM_CHUNKS, NUM_CHUNKS):
        raise ValueError(f"score_maps must be [Q, {NUM_CHUNKS}, {NUM_CHUNKS}], got {maps.shape}")
    return rankings_from_scores(maps[:, MOMENTS[:, 0], MOMENTS[:, 1]], higher_is_better)


def moment_seconds(
    index: np.ndarray | None = None, chunk_seconds: float = CHUNK_SECONDS
) -> np.ndarray:
    """``[start, end]`` seconds of moments: ``(s, e)`` spans ``[s * chunk_seconds,
    (e + 1) * chunk_seconds]``.

    Args:
      index: ``[...]`` indices into :data:`MOMENTS` (None: all 21 in order).
    Returns: ``[..., 2]`` float64.
    """
    chunks = MOMENTS if index is None else MOMENTS[np.asarray(index, np.int64)]
    return np.stack([chunks[..., 0], chunks[..., 1] + 1], axis=-1) * float(chunk_seconds)


GRID_TOLERANCE_S = 1e-4  # how far a proposal may lie from a chunk boundary


def rankings_from_moments(
    moments: np.ndarray,
    scores: np.ndarray,
    return_scores: bool = False,
    chunk_seconds: float = CHUNK_SECONDS,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Full 21-moment rankings of proposal lists on the chunk grid (MCN-style models).

    Every candidate with a finite score must be one of the 21 moments in seconds,
    ``[s * chunk_seconds, (e + 1) * chunk_seconds]`` within :data:`GRID_TOLERANCE_S` in both
    ends.  Candidates are ranked by descending score (stable: lower index first on ties), with
    no NMS (the official evaluation ranks all 21 moments); a moment proposed twice takes its
    best place.  Moments without a finite-scored candidate follow, in :data:`MOMENTS` order.

    Args:
      moments: ``[Q, P, 2]`` candidate ``[start, end]`` seconds.
      scores: ``[Q, P]``, higher is better; non-finite = not a candidate.
      return_scores: also return each ranked moment's best candidate score.
    Returns: ``[Q, 21]`` int64 indices into :data:`MOMENTS`, best first; with
      ``return_scores`` also ``[Q, 21]`` float64 scores, NaN for the appended moments.
    """
    times = np.asarray(moments, np.float64)
    values = np.asarray(scores, np.float64)
    if times.ndim != 3 or times.shape[-1] != 2:
        raise ValueError(f"moments must be [Q, P, 2], got shape {times.shape}")
    if values.shape != times.shape[:2]:
        raise ValueError(f"scores must be [Q, P]={times.shape[:2]}, got shape {values.shape}")
    grid = moment_seconds(chunk_seconds=chunk_seconds)  # [21, 2]
    with np.errstate(invalid="ignore"):
        on_moment = (np.abs(times[:, :, None, :] - grid) <= GRID_TOLERANCE_S).all(-1)  # [Q,P,21]
    finite = np.isfinite(values)
    off_grid = finite & ~on_moment.any(-1)
    if off_grid.any():
        q, k = (int(x) for x in np.argwhere(off_grid)[0])
        raise ValueError(
            f"query row {q}, candidate {k}: moment {times[q, k].tolist()} s is not on the "
            f"{chunk_seconds:g}-second chunk grid ([s * {chunk_seconds:g}, (e + 1) * "
            f"{chunk_seconds:g}] for a DiDeMo moment (s, e), within {GRID_TOLERANCE_S:g} s)"
        )
    rankings = np.empty((times.shape[0], NUM_MOMENTS), np.int64)
    ranked_scores = np.full((times.shape[0], NUM_MOMENTS), np.nan)
    for q in range(times.shape[0]):
        candidates = np.flatnonzero(finite[q])
        order = candidates[np.argsort(-values[q, candidates], kind="stable")]
        proposed = np.argmax(on_moment[q, order], axis=-1)
        ranked, first = np.unique(proposed, return_index=True)  # best place of each moment
        ranked = ranked[np.argsort(first)]
        rest = np.setdiff1d(np.arange(NUM_MOMENTS), ranked)  # sorted: MOMENTS order
        rankings[q] = np.concatenate([ranked, rest])
        ranked_scores[q, : len(ranked)] = values[q, order[np.sort(first)]]
    return (rankings, ranked_scores) if return_scores else rankings


def rankings_from_times(pred_times: np.ndarray, chunk_seconds: float = CHUNK_SECONDS) -> np.ndarray:
    """Turn ranked continuous predictions (seconds) into full 21-moment rankings.

    Moment ``(s, e)`` spans ``[s * chunk_seconds, (e + 1) * chunk_seconds]``.  Predictions are
    clipped to ``[0, 6 * chunk_seconds]`` and each is snapped to the moment of largest temporal
    IoU with it (ties: earlier in :data:`MOMENTS`).  The ranking lists the snapped moments in
    prediction order (a repeat counts once), then the remaining moments by decreasing IoU with
    the top-1 prediction, ties in moment order.

    Args:
      pred_times: ``[Q, K, 2]`` ``[start, end]`` seconds, best first; all-NaN rows after the
        first mean "no prediction" (as :func:`vmr_jax.evaluation.svmr.decode_predictions` pads).
      chunk_seconds: chunk length (5 s in DiDeMo).
    Returns: ``[Q, 21]`` int64 indices into :data:`MOMENTS`, best first.
    """
    pred = np.asarray(pred_times, np.float64)
    if pred.ndim != 3 or pred.shape[-1] != 2 or pred.shape[1] == 0:
        raise ValueError(f"pred_times must be [Q, K>=1, 2], got shape {pred.shape}")
    present = ~np.isnan(pred).all(axis=-1)  # [Q, K]
    pred = np.clip(pred, 0.0, NUM_CHUNKS * chunk_seconds)
    with np.errstate(invalid="ignore"):
        bad = present & ~(pred[..., 1] > pred[..., 0])  # NaN in one end, or empty after clipping
    bad |= ~present[:, :1]
    if bad.any():
        q, k = (int(x) for x in np.argwhere(bad)[0])
        raise ValueError(
            f"query {q}, prediction {k}: {np.asarray(pred_times)[q, k].tolist()} is not a "
            f"segment with end > start inside [0, {NUM_CHUNKS * chunk_seconds:g}] s"
        )
    spans = moment_seconds(chunk_seconds=chunk_seconds)
    iou = segments.temporal_iou(pred[:, :, None, :], spans[None, None])  # [Q, K, 21]
    snapped = np.argmax(iou, axis=-1)  # [Q, K], first maximum on ties
    num_pred = pred.shape[1]
    hit = (snapped[:, :, None] == np.arange(NUM_MOMENTS)) & present[:, :, None]  # [Q, K, 21]
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), num_pred)  # [Q, 21]
    order = np.broadcast_to(np.arange(NUM_MOMENTS), first.shape)
    return np.lexsort((order, -iou[:, 0, :], first), axis=-1)


# --------------------------------------------------------------------------- metrics


def _check_ground_truth(
    gt_times: np.ndarray, n_times: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    times = np.asarray(gt_times)
    if times.ndim != 3 or times.shape[-1] != 2:
        raise ValueError(f"gt_times must be [Q, T, 2], got shape {times.shape}")
    times = times.astype(np.int64)
    if n_times is None:
        n_times = (times[..., 0] >= 0).sum(axis=1)
    n = np.asarray(n_times, np.int64)
    if n.shape != times.shape[:1]:
        raise ValueError(f"n_times must be [Q]={times.shape[:1]}, got {n.shape}")
    if ((n < 1) | (n > times.shape[1])).any():
        q = int(np.flatnonzero((n < 1) | (n > times.shape[1]))[0])
        raise ValueError(f"query {q}: n_times {int(n[q])} outside 1..{times.shape[1]}")
    real = np.arange(times.shape[1]) < n[:, None]  # [Q, T]
    s, e = times[..., 0], times[..., 1]
    bad = real & ((s < 0) | (e >= NUM_CHUNKS) | (e < s))
    if bad.any():
        q, a = (int(x) for x in np.argwhere(bad)[0])
        raise ValueError(
            f"query {q}: annotator moment {a} = {times[q, a].tolist()} is not a moment"
        )
    return times, real


def query_scores(
    rankings: np.ndarray, gt_times: np.ndarray, n_times: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query ``avg_rank`` and ``avg_iou`` of the official evaluation (NumPy, exact).

    Args:
      rankings: ``[Q, 21]`` indices into :data:`MOMENTS`, best first (full permutations).
      gt_times: ``[Q, T, 2]`` annotator moments ``(start_chunk, end_chunk)``, padded rows ignored.
      n_times: ``[Q]`` annotators per query; None counts rows with ``start >= 0``.
    Returns: ``avg_rank [Q]`` (mean of the 3 smallest 1-based ranks) and ``avg_iou [Q]`` (mean of
      the 3 largest chunk IoUs of the top-1 moment), both float64, summed in the official order.
    """
    ranks_table = check_rankings(rankings)
    times, real = _check_ground_truth(gt_times, n_times)
    if times.shape[0] != ranks_table.shape[0]:
        raise ValueError(f"{ranks_table.shape[0]} rankings for {times.shape[0]} queries")
    num_q = times.shape[0]
    position = np.argsort(ranks_table, axis=1)  # [Q, 21]: inverse permutation, 0-based rank
    gt_index = MOMENT_INDEX[np.where(real, times[..., 0], 0), np.where(real, times[..., 1], 0)]
    ranks = np.take_along_axis(position, gt_index, axis=1) + 1.0  # [Q, T]
    top1 = MOMENTS[ranks_table[:, 0]]  # [Q, 2]
    ious = segments.chunk_iou(top1[:, None, :], times)  # [Q, T] float64
    count = np.minimum(real.sum(axis=1), TOP_ANNOTATORS).astype(np.float64)
    # Padding sorts past the real values and is then read as 0, so the sums below run over the
    # same values in the same order as the official np.mean(np.sort(x)[:3]) / [-3:].
    best_ranks = np.sort(np.where(real, ranks, np.inf), axis=1)[:, :TOP_ANNOTATORS]
    best_ious = np.sort(np.where(real, ious, -np.inf), axis=1)[:, -TOP_ANNOTATORS:]
    best_ranks = np.where(np.isfinite(best_ranks), best_ranks, 0.0)
    best_ious = np.where(np.isfinite(best_ious), best_ious, 0.0)
    if best_ranks.shape[1] < TOP_ANNOTATORS:  # T < 3: pad the columns too
        pad = np.zeros((num_q, TOP_ANNOTATORS - best_ranks.shape[1]))
        best_ranks = np.concatenate([best_ranks, pad], axis=1)
        best_ious = np.concatenate([pad, best_ious], axis=1)
    # left-to-right like NumPy's mean of three values: (x0 + x1) + x2
    avg_rank = (best_ranks[:, 0] + best_ranks[:, 1] + best_ranks[:, 2]) / count
    avg_iou = (best_ious[:, 0] + best_ious[:, 1] + best_ious[:, 2]) / count
    return np.ascontiguousarray(avg_rank), np.ascontiguousarray(avg_iou)


def evaluate(
    rankings: np.ndarray,
    gt_times: np.ndarray,
    n_times: np.ndarray | None = None,
    valid: np.ndarray | None = None,
) -> dict:
    """DiDeMo R@1, R@5 and mIoU (official ``eval_predictions``), as fractions.

    Args:
      rankings: ``[Q, 21]`` indices into :data:`MOMENTS`, best first (see
        :func:`rankings_from_scores`, :func:`rankings_from_score_map`, :func:`rankings_from_times`,
        :func:`rankings_from_moments`).
      gt_times: ``[Q, T, 2]`` annotator moments, ``-1`` padded (:class:`DidemoGroundTruth`).
      n_times: ``[Q]`` or None (counted from the padding).
      valid: optional ``[Q]`` bool; padded queries (False) are ignored.
    Returns: ``{"R@1", "R@5", "mIoU": fraction, "num_queries": int, "protocol": "didemo",
      "rule": text}``.
    """
    avg_rank, avg_iou = query_scores(rankings, gt_times, n_times)
    if valid is not None:
        valid = np.asarray(valid, bool)
        if valid.shape != avg_rank.shape:
            raise ValueError(f"valid must be [Q]={avg_rank.shape}, got {valid.shape}")
        avg_rank, avg_iou = avg_rank[valid], avg_iou[valid]
    num_q = len(avg_rank)
    if num_q == 0:
        raise ValueError("no valid query to evaluate")
    return {
        "R@1": int(np.sum(avg_rank <= 1)) / float(num_q),
        "R@5": int(np.sum(avg_rank <= 5)) / float(num_q),
        "mIoU": float(np.mean(avg_iou)),
        "num_queries": num_q,
        "protocol": PROTOCOL,
        "rule": RULE,
    }


# --------------------------------------------------------------------------- predictions file


def write_predictions_json(
    path: str | Path, annotation_ids: Sequence[int], rankings: np.ndarray
) -> None:
    """Write ``{"protocol", "moments", "rankings": {str(annotation_id): [21 indices]}}``.

    Args:
      annotation_ids: ``Q`` ids; rankings: ``[Q, 21]`` full rankings, best first (checked).
    """
    ids = [int(a) for a in annotation_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("annotation_ids repeat")
    table = check_rankings(rankings, ids)
    payload = {
        "protocol": PROTOCOL,
        "moments": MOMENTS.tolist(),
        "rankings": {str(a): row for a, row in zip(ids, table.tolist())},
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f)


def _parse_ranking(where: str, ranking: object) -> list[int]:
    if not isinstance(ranking, list):
        raise ValueError(f"{where}: ranking must be a list of {NUM_MOMENTS} moment indices")
    if len(ranking) != NUM_MOMENTS:
        raise ValueError(f"{where}: ranking has {len(ranking)} entries, expected {NUM_MOMENTS}")
    for k, x in enumerate(ranking):
        if isinstance(x, float) and math.isnan(x):
            raise ValueError(f"{where}: entry {k} is NaN")
        if not _is_int(x):
            raise ValueError(f"{where}: entry {k} = {x!r} is not an integer moment index")
        if not 0 <= x < NUM_MOMENTS:
            raise ValueError(f"{where}: entry {k} = {x} outside 0..{NUM_MOMENTS - 1}")
    if len(set(ranking)) != NUM_MOMENTS:
        missing = sorted(set(range(NUM_MOMENTS)) - set(ranking))
        raise ValueError(
            f"{where}: ranking is not a permutation of 0..{NUM_MOMENTS - 1} (missing {missing})"
        )
    return ranking


def parse_predictions(
    payload: object, annotation_ids: Sequence[int], source: str = "<predictions>"
) -> np.ndarray:
    """Validate a decoded predictions object against the split's ``annotation_ids``.

    Returns: ``[Q, 21]`` int64 rankings in the order of ``annotation_ids``.  Errors name
    ``source``, the query (annotation id) and the field: wrong protocol or moment list, missing or
    extra ids, a ranking of the wrong length, NaN or non-integer entries, or not a permutation.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("rankings"), dict):
        raise ValueError(f'{source}: expected an object with a "rankings" object')
    if payload.get("protocol", PROTOCOL) != PROTOCOL:
        raise ValueError(f"{source}: field 'protocol' is {payload['protocol']!r}, not {PROTOCOL!r}")
    if "moments" in payload and payload["moments"] != MOMENTS.tolist():
        raise ValueError(f"{source}: field 'moments' differs from the official 21-moment order")
    rankings = payload["rankings"]
    keys = [str(int(a)) for a in annotation_ids]
    missing = [k for k in keys if k not in rankings]
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} queries missing, e.g. annotation_id {missing[:5]}"
        )
    extra = sorted(set(rankings) - set(keys))
    if extra:
        raise ValueError(
            f"{source}: {len(extra)} unknown query ids, e.g. annotation_id {extra[:5]}"
        )
    rows = [
        _parse_ranking(f"{source}: annotation_id {k}: field 'rankings'", rankings[k]) for k in keys
    ]
    return np.array(rows, np.int64).reshape(len(keys), NUM_MOMENTS)


def read_predictions_json(path: str | Path, annotation_ids: Sequence[int]) -> np.ndarray:
    """Read a predictions file (module docstring) -> ``[Q, 21]`` rankings in ``annotation_ids``
    order, validated by :func:`parse_predictions`."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        try:
            payload = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
    return parse_predictions(payload, annotation_ids, str(path))
