"""Video corpus moment retrieval metrics (VCMR, SVMR, VR) under the TVR protocol, and XML's NMS.

Protocol ``tvr``: jayleicn/TVRetrieval ``standalone_eval/eval.py`` (``eval_retrieval``,
``match_number=True``), vectorised over queries.

* Predictions: ``{"VCMR" | "SVMR" | "VR": RankedPredictions}`` in GT order, or an official
  submission dict (read and checked by :mod:`vmr_jax.evaluation.tvr_files`).  Lists are used in
  the given order (never re-sorted); ``score`` is ignored.  Only the first ``max_predictions`` =
  100 rows count: the official code drops the rest silently, here a longer list raises
  :class:`SubmissionError` unless ``truncate=True``, which drops the extra rows, as the official
  does.
* ``st``, ``ed`` and the GT are cast to float32; IoU = ``max(0, min(ed) - max(st)) /
  (max(ed) - min(st))`` in float32, 0 for a zero hull, times ``video == GT video``; a row hits at
  ``m`` when IoU ``>= float32(m)`` (the official float32 array vs Python float comparison).  A GT
  that is a list of 4 or more spans (DiDeMo style) needs 2 spans reaching ``m``.
* VCMR R@K: a hit among the first K rows; SVMR: other-video rows removed, then the first K;
  VR: the GT video among the first K rows.
* Percentages ``round(100 * hits / queries, 2)`` in NumPy float64, keyed ``"0.5-r1"`` (VR
  ``"r1"``); when the GT has query types, also ``"<task>_by_type"``: ``"v-0.5-r1"`` over the
  queries of a type (NaN when it has none: the official 0/0) and ``"desc_type_ratio"``.

Video indices are compared as integers (the official float32 comparison agrees below 2**24).

:func:`vcmr_nms` / :func:`svmr_nms`: TVRetrieval's ``post_processing_{vcmr,svmr}_nms``
(``baselines/clip_alignment_with_language/inference.py``, used by XML) with
``utils/temporal_nms.py``; see :func:`vmr_jax.ops.segments.grouped_nms_keep`.

Re-exported from :mod:`vmr_jax.evaluation.tvr_files`, so ``vcmr.<name>`` keeps working:
``TASKS``, ``DESC_TYPES``, ``MULTI_SPAN_MIN``, :class:`SubmissionError`,
:class:`GroundTruthError`, :class:`RankedPredictions`, :class:`TvrGroundTruth`,
:func:`ground_truth_from_records`, :func:`load_tvr_ground_truth`, :func:`read_submission`,
:func:`write_submission`, :func:`submission_from_predictions`, :func:`parse_submission`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vmr_jax.evaluation.tvr_files import (  # noqa: F401
    DESC_TYPES,
    MULTI_SPAN_MIN,
    TASKS,
    GroundTruthError,
    RankedPredictions,
    SubmissionError,
    TvrGroundTruth,
    _check_predictions,
    _video_values,
    ground_truth_from_records,
    load_tvr_ground_truth,
    parse_submission,
    read_submission,
    submission_from_predictions,
    write_submission,
)
from vmr_jax.ops import segments

MULTI_SPAN_HITS = 2  # a row must reach the threshold on this many spans of a multi-span GT
MAX_PER_VIDEO = 100  # the max_after_nms default of temporal_non_maximum_suppression
RECALL_TOPKS = (1, 5, 10, 100)  # the official R@K of every task
PROTOCOLS = {
    "tvr": (
        "jayleicn/TVRetrieval standalone_eval/eval.py (match_number=True): first 100 rows of each "
        "ranked [video_idx, st, ed, score] list; st/ed/GT in float32; IoU = overlap / (max end - "
        "min start) in float32 (0 for a zero hull) times (video == GT video); hit if IoU >= "
        "float32(m); a GT of >= 4 spans needs 2 spans reaching m; VCMR R@K: hit in the first K; "
        "SVMR: other-video rows removed, then the first K; VR: GT video in the first K; "
        "round(100 * hits / queries, 2); per query type v/t/vt"
    )
}


# --------------------------------------------------------------------------- scoring


def tvr_iou(pred_st_ed: np.ndarray, gt_st_ed: np.ndarray) -> np.ndarray:
    """Official TVR IoU ``max(0, min(ed) - max(st)) / (max(ed) - min(st))``, 0 for a zero hull.

    Args: ``[..., 2]`` each, broadcastable; computed in their dtype (float32 for the protocol).
    Returns: ``[...]``.
    """
    return segments.temporal_iou(np.asarray(pred_st_ed), np.asarray(gt_st_ed), empty=0.0)


def query_hits(
    task: str,
    predictions: RankedPredictions,
    gt_video_idx: np.ndarray,
    gt_spans: np.ndarray,
    gt_num_spans: np.ndarray,
    iou_thresholds: Sequence[float] = (0.5, 0.7),
    recall_topks: Sequence[int] = RECALL_TOPKS,
) -> np.ndarray:
    """Per-query hits of ``[Q, K]`` lists against ``gt_video_idx [Q]``, ``gt_spans [Q, S, 2]``
    and ``gt_num_spans [Q]``.

    Returns: ``[T, Q, R]`` bool (VR: ``[1, Q, R]``), ``T = len(iou_thresholds)``,
      ``R = len(recall_topks)``.
    """
    match = predictions.valid & (predictions.video_idx == np.asarray(gt_video_idx)[:, None])
    topk = np.asarray(recall_topks)
    if task == "VR":
        correct, rank = match[None], np.arange(1, match.shape[1] + 1)
    elif task in ("VCMR", "SVMR"):
        spans, num_spans = np.asarray(gt_spans, np.float32), np.asarray(gt_num_spans)
        iou = tvr_iou(predictions.st_ed.astype(np.float32)[:, None], spans[:, :, None])
        iou = iou * match[:, None, :]  # [Q, S, K] float32; 0 in other videos
        thresholds = np.array([float(m) for m in iou_thresholds], np.float32)[:, None, None, None]
        used = (np.arange(spans.shape[1]) < num_spans[:, None])[:, :, None]
        reached = ((iou >= thresholds) & used).sum(axis=2)  # [T, Q, K] spans reaching m
        needed = np.where(num_spans >= MULTI_SPAN_MIN, MULTI_SPAN_HITS, 1)[:, None]
        correct = (reached >= needed) & predictions.valid
        if task == "VCMR":
            rank = np.arange(1, match.shape[1] + 1)
        else:  # rank among the same-video rows; the others are removed
            correct, rank = correct & match, np.cumsum(match, axis=-1)
    else:
        raise ValueError(f"unknown task {task!r}; known: {TASKS}")
    best = np.min(np.where(correct, rank, np.iinfo(np.int64).max), axis=-1)  # [T, Q]
    return best[..., None] <= topk


def _percent(count: Any, total: Any) -> np.float64:
    """Official ``get_rounded_percentage(count / total)``: NumPy float64, 0/0 -> NaN."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return round(np.float64(count) / np.float64(total) * 100, 2)


def _task_metrics(task, hits, desc_type, iou_thresholds, recall_topks) -> tuple[dict, dict]:
    prefixes = [""] if task == "VR" else [f"{m}-" for m in iou_thresholds]
    metrics, by_type = {}, {}
    for a, prefix in enumerate(prefixes):
        for r, k in enumerate(recall_topks):
            metrics[f"{prefix}r{k}"] = float(_percent(hits[a, :, r].sum(), hits.shape[1]))
    if desc_type is None:
        return metrics, by_type
    for t, type_name in enumerate(DESC_TYPES):
        of_type = desc_type == t
        for a, prefix in enumerate(prefixes):
            for r, k in enumerate(recall_topks):
                by_type[f"{type_name}-{prefix}r{k}"] = float(
                    _percent((hits[a, :, r] & of_type).sum(), of_type.sum())
                )
    ratios = [_percent((desc_type == t).sum(), len(desc_type)) for t in range(len(DESC_TYPES))]
    by_type["desc_type_ratio"] = "v {} t {} vt {}".format(*ratios)  # np.float64 text, as official
    return metrics, by_type


def _score(predictions, ground_truth, gt_video, iou_thresholds, recall_topks, protocol) -> dict:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown VCMR protocol {protocol!r}; known: {sorted(PROTOCOLS)}")
    results, by_type = {}, {}
    for task in (t for t in TASKS if t in predictions):
        hits = query_hits(
            task,
            predictions[task],
            gt_video,
            ground_truth.spans,
            ground_truth.num_spans,
            iou_thresholds,
            recall_topks,
        )
        results[task], by_type[f"{task}_by_type"] = _task_metrics(
            task, hits, ground_truth.desc_type, iou_thresholds, recall_topks
        )
    if ground_truth.desc_type is not None:
        results.update(by_type)
    return {
        **results,
        "num_queries": len(ground_truth),
        "protocol": protocol,
        "rule": PROTOCOLS[protocol],
    }


def evaluate_predictions(
    predictions: Mapping[str, RankedPredictions],
    ground_truth: TvrGroundTruth,
    iou_thresholds: Sequence[float] = (0.5, 0.7),
    recall_topks: Sequence[int] = RECALL_TOPKS,
    max_predictions: int = 100,
    truncate: bool = False,
    protocol: str = "tvr",
) -> dict:
    """Metrics of ``{"VCMR" | "SVMR" | "VR": [Q, K] lists}`` in GT order (``Q = len(GT)``).

    GT videos are ``ground_truth.video_idx``; predicted videos are checked against
    ``ground_truth.video2idx`` when it is set.  Lists longer than ``max_predictions`` raise, or
    are cut with ``truncate=True``.
    Returns: ``{"VCMR": {"0.5-r1": percent, ...}, ..., "VCMR_by_type": {...}, ...,
      "num_queries", "protocol", "rule"}`` (tasks in the official order).
    """
    values = None if ground_truth.video2idx is None else _video_values(ground_truth.video2idx)
    checked = {}
    for task, pred in predictions.items():
        if task not in TASKS or len(pred.length) != len(ground_truth):
            raise SubmissionError(f"{task}: need a task of {TASKS} with {len(ground_truth)} lists")
        checked[task] = _check_predictions(
            task, pred, ground_truth.desc_id, values, max_predictions, truncate
        )
    return _score(
        checked, ground_truth, ground_truth.video_idx, iou_thresholds, recall_topks, protocol
    )


def evaluate_submission(
    submission: Mapping,
    ground_truth: TvrGroundTruth,
    iou_thresholds: Sequence[float] = (0.5, 0.7),
    recall_topks: Sequence[int] = RECALL_TOPKS,
    max_predictions: int = 100,
    truncate: bool = False,
    protocol: str = "tvr",
) -> dict:
    """Metrics of an official submission dict (the official ``eval_retrieval``).

    GT videos: with ``ground_truth.vid_name``, the submission's ``video2idx`` of those names (as
    the official code does), else ``ground_truth.video_idx``.  Returns as
    :func:`evaluate_predictions`.
    """
    predictions = parse_submission(submission, ground_truth, max_predictions, truncate)
    gt_video = ground_truth.video_idx
    if ground_truth.vid_name is not None:
        video2idx = submission["video2idx"]
        for d, name in zip(ground_truth.desc_id, ground_truth.vid_name):
            if name not in video2idx:
                raise SubmissionError(f"video2idx has no {name!r}, the video of desc_id={d!r}")
        gt_video = np.array([video2idx[name] for name in ground_truth.vid_name], np.int64)
    return _score(predictions, ground_truth, gt_video, iou_thresholds, recall_topks, protocol)


# --------------------------------------------------------------------------- NMS


def _nms(pred, group, threshold, max_before_nms, max_after_nms, max_per_video, video=None):
    """Per-group greedy NMS of each list's first ``max_before_nms`` rows, then one ranking by
    score (ties: the group met first in the list, then list order) cut to ``max_after_nms``."""
    num_q, width = pred.video_idx.shape
    valid = pred.valid & (np.arange(width) < max_before_nms)
    if not np.isfinite(pred.score[valid]).all():
        raise ValueError("NMS needs finite scores")
    # sorted(..., reverse=True) in the official code keeps the list order of equal scores
    order = np.argsort(np.where(valid, -pred.score, np.inf), axis=1, kind="stable")
    ranked = [
        np.take_along_axis(x, order, 1)
        for x in (pred.st_ed[..., 0], pred.st_ed[..., 1], group, valid)
    ]
    keep_ranked = segments.grouped_nms_keep(
        np.stack(ranked[:2], -1), ranked[2], ranked[3], threshold, max_per_video
    )
    keep = np.zeros_like(valid)
    np.put_along_axis(keep, order, keep_ranked, 1)
    # the first list position of each row's group: runs of (query, group, position)
    q, k = np.nonzero(valid)
    runs = np.lexsort((k, group[q, k], q))
    q, g, k = q[runs], group[q, k][runs], k[runs]
    new_run = np.ones(len(q), bool)
    new_run[1:] = (q[1:] != q[:-1]) | (g[1:] != g[:-1])
    first = np.zeros(valid.shape, np.int64)
    first[q, k] = k[np.maximum.accumulate(np.where(new_run, np.arange(len(q)), 0))]
    q, k = np.nonzero(keep)
    final = np.lexsort((k, first[q, k], -pred.score[q, k], q))
    q, k = q[final], k[final]
    counts = np.bincount(q, minlength=num_q)
    rank = np.arange(len(q)) - np.repeat(np.cumsum(counts) - counts, counts)
    take = rank < max_after_nms
    q, k, length = q[take], k[take], np.minimum(counts, max_after_nms)
    cols = np.arange(len(q)) - np.repeat(np.cumsum(length) - length, length)
    shape = (num_q, int(length.max(initial=0)))
    out_video, out_st_ed, out_score = np.full(shape, -1), np.zeros((*shape, 2)), np.zeros(shape)
    out_video[q, cols] = pred.video_idx[q, k] if video is None else video[q]
    out_st_ed[q, cols], out_score[q, cols] = pred.st_ed[q, k], pred.score[q, k]
    return RankedPredictions(out_video, out_st_ed, out_score, length)


def vcmr_nms(
    predictions: RankedPredictions,
    nms_threshold: float,
    max_before_nms: int = 1000,
    max_after_nms: int = 100,
    max_per_video: int = MAX_PER_VIDEO,
) -> RankedPredictions:
    """TVRetrieval ``post_processing_vcmr_nms``: the first ``max_before_nms`` rows grouped by
    video; inside a video, by score (ties: list order), a kept row drops later rows with IoU
    ``> nms_threshold`` (float64), at most ``max_per_video`` kept; then all kept rows ranked by
    score (ties: the video met first in the list, then list order), cut to ``max_after_nms``.

    Args/Returns: ``[Q, K]`` lists in, ``[Q, K' <= max_after_nms]`` lists out.
    """
    return _nms(
        predictions,
        predictions.video_idx,
        nms_threshold,
        max_before_nms,
        max_after_nms,
        max_per_video,
    )


def svmr_nms(
    predictions: RankedPredictions,
    nms_threshold: float,
    max_before_nms: int = 1000,
    max_after_nms: int = 100,
    max_per_video: int = MAX_PER_VIDEO,
) -> RankedPredictions:
    """TVRetrieval ``post_processing_svmr_nms``: :func:`vcmr_nms` with one group per list (the
    video column is ignored) and every kept row labelled with the list's first video."""
    return _nms(
        predictions,
        np.zeros_like(predictions.video_idx),
        nms_threshold,
        max_before_nms,
        max_after_nms,
        max_per_video,
        video=predictions.video_idx[:, 0],
    )
