"""Single-video moment retrieval metrics: R@n,IoU=m and mIoU, under a named protocol.

Protocols (:data:`PROTOCOLS`):

* ``2dtan``: microsoft/2D-TAN ``lib/core/eval.py`` with the decoding of
  ``moment_localization/test.py`` (``get_proposal_results``); Huntersxsx/MGPN uses the same
  files.  Decoding: every cell ``i <= j`` in the order of ``np.argsort`` of the flattened score
  map, reversed (masked cells score 0 and come last); seconds ``[i, j + 1] / N * duration`` in
  float32; greedy NMS in float64 dropping candidates with IoU ``> nms_thresh``, stopping at
  ``max(recalls)`` kept.  Scoring: IoU with the GT in float64, hull denominator; a query hits
  ``(n, m)`` when one of its first ``n`` kept moments has IoU ``> m`` (strict); mIoU = mean IoU
  of the first kept moment.
* ``mmn``: the same decoding and IoU, but a hit is IoU ``>= m`` (inclusive).  This is only the
  hit rule of MCG-NJU/MMN ``evaluation.py``; its own decoding (non-zero cells only,
  ``index * duration / N``, float32 IoU) is not reproduced here.

Proposal-based models (sliding windows, e.g. MCN/VLANet-style candidate lists) give each query
a list of candidate moments in seconds with scores instead of a score map;
:func:`decode_moment_lists` ranks the candidates with a finite score by descending score (ties:
lower index first) and runs the same greedy NMS (float64, stop at ``top_k`` kept), so both
kinds of model are scored by the same rule.

Results are **fractions in [0, 1]** (R@n and mIoU alike; multiply by 100 for the papers'
tables), keyed ``"R@1,IoU=0.5"`` and ``"mIoU"``, plus ``"protocol"``, ``"rule"`` and
``"num_queries"``.  Padded queries (``valid`` False) never count.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vmr_jax.ops import segments


@dataclasses.dataclass(frozen=True)
class SvmrProtocol:
    """How a hit is decided; decoding is the 2D-TAN one for every protocol here."""

    name: str
    inclusive: bool  # hit at IoU >= m instead of IoU > m
    rule: str


PROTOCOLS = {
    "2dtan": SvmrProtocol(
        name="2dtan",
        inclusive=False,
        rule=(
            "microsoft/2D-TAN lib/core/eval.py + moment_localization/test.py: cells i<=j ranked "
            "by reversed np.argsort of the flattened map, seconds [i, j+1]/N*duration in float32, "
            "greedy NMS (drop IoU > nms_thresh, stop at max(recalls) kept); hit if IoU > m "
            "(strict) among the first n kept; mIoU = mean IoU of the first kept moment"
        ),
    ),
    "mmn": SvmrProtocol(
        name="mmn",
        inclusive=True,
        rule=(
            "2D-TAN decoding and greedy NMS as in '2dtan'; hit if IoU >= m (inclusive, the "
            "MCG-NJU/MMN hit test) among the first n kept; mIoU = mean IoU of the first kept moment"
        ),
    ),
}


def get_protocol(name: str) -> SvmrProtocol:
    """Look up a protocol by name (``2dtan`` or ``mmn``)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown SVMR protocol {name!r}; known: {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def as_threshold(value: float) -> float:
    """A threshold as the official configs hold it: a Python float parsed from decimal text.

    A float32 ``0.7`` is ``0.699999988``, and IoU exactly 0.7 would then pass ``IoU > 0.7``;
    reduced-precision NumPy scalars are therefore read back through their shortest decimal form.
    """
    if isinstance(value, np.floating) and value.dtype != np.float64:
        return float(str(value))
    return float(value)


def decode_predictions(
    score_maps: np.ndarray,
    durations: np.ndarray,
    nms_thresh: float,
    top_k: int = 5,
    return_scores: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Official 2D-TAN decoding of every query's score map (NumPy, exact).

    Args:
      score_maps: ``[Q, N, N]`` ranking scores (e.g. MGPN/2D-TAN ``joint_prob``); cells outside
        the proposal mask should hold 0 as the official models make them.
      durations: ``[Q]`` seconds.
      nms_thresh: NMS suppression threshold; top_k: moments kept per query (``max(recalls)``).
    Returns: ``times [Q, top_k, 2]`` float32 seconds, NaN rows where fewer than ``top_k``
      survive the NMS; with ``return_scores`` also ``scores [Q, top_k]`` float32 (NaN likewise).
    """
    score_maps = np.asarray(score_maps)
    durations = np.asarray(durations)
    if score_maps.ndim != 3 or score_maps.shape[1] != score_maps.shape[2]:
        raise ValueError(f"score_maps must be [Q, N, N], got {score_maps.shape}")
    if durations.shape != score_maps.shape[:1]:
        raise ValueError(f"durations must be [Q]={score_maps.shape[:1]}, got {durations.shape}")
    num_queries = score_maps.shape[0]
    thresh = as_threshold(nms_thresh)
    times = np.full((num_queries, top_k, 2), np.nan, np.float32)
    scores = np.full((num_queries, top_k), np.nan, np.float32)
    for q in range(num_queries):
        rows = segments.topk_moments(score_maps[q], float(durations[q]), top_k, thresh)
        times[q, : len(rows)] = rows[:, :2]  # float32 values: the cast is exact
        scores[q, : len(rows)] = rows[:, 2]
    return (times, scores) if return_scores else times


def decode_moment_lists(
    moments: np.ndarray,
    scores: np.ndarray,
    nms_thresh: float,
    top_k: int = 5,
    return_scores: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Decoding of proposal-based (sliding-window) models: ranked candidates, greedy NMS.

    Per query, the candidates with a finite score, by descending score (a stable sort: lower
    index first on ties), then :func:`vmr_jax.ops.segments.nms` on their float64 times with
    ``nms_thresh``, stopping at ``top_k`` kept -- the walk of :func:`decode_predictions`.

    Args:
      moments: ``[Q, P, 2]`` candidate ``[start, end]`` seconds.
      scores: ``[Q, P]``, higher is better; ``-inf`` (any non-finite value) = not a candidate.
      nms_thresh: NMS suppression threshold; top_k: moments kept per query.
    Returns: ``times [Q, top_k, 2]`` float32 seconds, NaN rows where fewer than ``top_k``
      survive; with ``return_scores`` also ``scores [Q, top_k]`` float32 (NaN likewise).
    """
    moments = np.asarray(moments)
    scores = np.asarray(scores)
    if moments.ndim != 3 or moments.shape[-1] != 2:
        raise ValueError(f"moments must be [Q, P, 2], got {moments.shape}")
    if scores.shape != moments.shape[:2]:
        raise ValueError(f"scores must be [Q, P]={moments.shape[:2]}, got {scores.shape}")
    candidate = np.isfinite(scores)
    with np.errstate(invalid="ignore"):
        bad = candidate & ~(np.isfinite(moments).all(-1) & (moments[..., 1] >= moments[..., 0]))
    if bad.any():
        q, k = (int(x) for x in np.argwhere(bad)[0])
        raise ValueError(
            f"query row {q}, candidate {k}: moment {moments[q, k].tolist()} has a finite score "
            "but is not a segment with finite end >= start"
        )
    thresh = as_threshold(nms_thresh)
    num_queries = moments.shape[0]
    times = np.full((num_queries, top_k, 2), np.nan, np.float32)
    kept_scores = np.full((num_queries, top_k), np.nan, np.float32)
    for q in range(num_queries):
        index = np.flatnonzero(candidate[q])
        order = index[np.argsort(-scores[q, index], kind="stable")]
        keep = order[segments.nms(moments[q, order].astype(np.float64), None, thresh, top_k)]
        times[q, : len(keep)] = moments[q, keep]
        kept_scores[q, : len(keep)] = scores[q, keep]
    return (times, kept_scores) if return_scores else times


def _check_valid(valid: np.ndarray | None, num_queries: int) -> np.ndarray:
    if valid is None:
        return np.ones((num_queries,), bool)
    valid = np.asarray(valid, bool)
    if valid.shape != (num_queries,):
        raise ValueError(f"valid must be [Q]=({num_queries},), got {valid.shape}")
    return valid


def moment_ious(pred_times: np.ndarray, gt_times: np.ndarray) -> np.ndarray:
    """IoU of every predicted moment with its query's GT, in float64 as the official code.

    Args:
      pred_times: ``[Q, K, 2]`` (NaN rows = no prediction, IoU NaN); gt_times: ``[Q, 2]``.
    Returns: ``[Q, K]`` float64.
    """
    pred = np.asarray(pred_times, np.float64)
    gt = np.asarray(gt_times, np.float64)
    if pred.ndim != 3 or pred.shape[-1] != 2 or gt.shape != (pred.shape[0], 2):
        raise ValueError(
            f"need pred_times [Q,K,2] and gt_times [Q,2], got {pred.shape}, {gt.shape}"
        )
    return segments.temporal_iou(pred, gt[:, None, :])


def query_hits(
    pred_times: np.ndarray,
    gt_times: np.ndarray,
    recalls: Sequence[int] = (1, 5),
    ious: Sequence[float] = (0.3, 0.5, 0.7),
    protocol: str = "2dtan",
) -> np.ndarray:
    """Per-query hit table.

    Args:
      pred_times: ``[Q, K, 2]`` ranked kept moments; gt_times: ``[Q, 2]``.
    Returns: ``[Q, len(ious), len(recalls)]`` bool; ``[q, a, b]`` is True when one of the first
      ``recalls[b]`` moments of query ``q`` has IoU ``> ious[a]`` (``>=`` for inclusive
      protocols).
    """
    rule = get_protocol(protocol)
    iou = moment_ious(pred_times, gt_times)  # [Q, K]
    if max(recalls) > iou.shape[1]:
        raise ValueError(f"R@{max(recalls)} needs {max(recalls)} moments, got {iou.shape[1]}")
    thresholds = np.array([as_threshold(m) for m in ious], np.float64)[None, :, None]
    with np.errstate(invalid="ignore"):  # NaN (no prediction) is never a hit
        hit = iou[:, None, :] >= thresholds if rule.inclusive else iou[:, None, :] > thresholds
    # hit[q, a, k] -> any over the first n of k
    return np.stack([hit[:, :, :n].any(axis=-1) for n in recalls], axis=-1)


def metric_name(n: int, m: float) -> str:
    """Result key of R@n at tIoU m, e.g. ``"R@1,IoU=0.5"``."""
    return f"R@{n},IoU={m:g}"


def evaluate(
    pred_times: np.ndarray,
    gt_times: np.ndarray,
    recalls: Sequence[int] = (1, 5),
    ious: Sequence[float] = (0.3, 0.5, 0.7),
    protocol: str = "2dtan",
    valid: np.ndarray | None = None,
) -> dict:
    """R@n,IoU=m and mIoU of decoded predictions.

    Args:
      pred_times: ``[Q, K, 2]`` kept moments best first (:func:`decode_predictions`), seconds;
        NaN rows mean "no moment" (never a hit; IoU 0 in the mIoU).
      gt_times: ``[Q, 2]`` GT seconds (pass the float64 annotation values when available: the
        official code never rounds them to float32).
      recalls, ious: the ``n`` and ``m`` of R@n,IoU=m (float32 values are read as their decimal
        text, see :func:`as_threshold`).
      protocol: a key of :data:`PROTOCOLS`.
      valid: optional ``[Q]`` bool; padded queries (False) are ignored.
    Returns: ``{"R@n,IoU=m": fraction, ..., "mIoU": fraction, "num_queries": int,
      "protocol": name, "rule": text}``.
    """
    rule = get_protocol(protocol)
    pred_times = np.asarray(pred_times)
    valid = _check_valid(valid, pred_times.shape[0])
    if not valid.any():
        raise ValueError("no valid query to evaluate")
    hits = query_hits(pred_times, gt_times, recalls, ious, protocol)[valid]
    first_iou = moment_ious(pred_times[:, :1], gt_times)[valid, 0]
    recall = hits.mean(axis=0)  # [len(ious), len(recalls)], count / Q in float64
    results: dict = {}
    for b, n in enumerate(recalls):
        for a, m in enumerate(ious):
            results[metric_name(int(n), as_threshold(m))] = float(recall[a, b])
    results["mIoU"] = float(np.mean(np.nan_to_num(first_iou, nan=0.0)))
    results["num_queries"] = int(valid.sum())
    results["protocol"] = rule.name
    results["rule"] = rule.rule
    return results


def write_predictions_jsonl(
    path: str | Path,
    pred_times: np.ndarray,
    pred_scores: np.ndarray | None = None,
    video_ids: Sequence[str] | None = None,
    valid: np.ndarray | None = None,
) -> int:
    """Write one JSON line per valid query: ``{"query_index", ["video_id"], "moments"}``.

    ``moments`` is ``[[start, end, score], ...]`` best first (``[start, end]`` without scores);
    NaN rows are left out.  ``query_index`` is the row in the (unpadded) query order.

    Args:
      pred_times: ``[Q, K, 2]``; pred_scores: ``[Q, K]`` or None; video_ids: ``Q`` names or None;
      valid: ``[Q]`` bool or None.
    Returns: number of lines written.
    """
    pred_times = np.asarray(pred_times)
    valid = _check_valid(valid, pred_times.shape[0])
    if video_ids is not None and len(video_ids) != pred_times.shape[0]:
        raise ValueError(f"{len(video_ids)} video ids for {pred_times.shape[0]} queries")
    lines = 0
    with open(path, "w", encoding="utf-8") as f:
        for q in np.flatnonzero(valid):
            moments = []
            for k in range(pred_times.shape[1]):
                start, end = (float(x) for x in pred_times[q, k])
                if np.isnan(start) or np.isnan(end):
                    continue
                row = [start, end]
                if pred_scores is not None:
                    row.append(float(pred_scores[q, k]))
                moments.append(row)
            record: dict = {"query_index": int(q)}
            if video_ids is not None:
                record["video_id"] = str(video_ids[q])
            record["moments"] = moments
            f.write(json.dumps(record) + "\n")
            lines += 1
    return lines
