"""Evaluating a VCMR model on a split: index the split's videos, search every query, score.

What ``vmr-jax train`` and ``vmr-jax eval`` run for a family that answers queries against a
corpus (XML, and the corpus papers built on it).  The corpus is every video of the split (the
official TVR evaluation ranks the videos of the split's ``video2idx``); each query is searched
against all of them with :func:`vmr_jax.retrieval.corpus.search` and the three tasks are scored
under the ``tvr`` protocol (:func:`vmr_jax.evaluation.vcmr.evaluate_predictions`: VCMR, SVMR on
the query's own video, VR).

Ground truth and video indices: a built TVR split carries the official ``desc_id``, ``type``
and ``video_idx`` (``video2dur_idx``) in each annotation's ``extras``, so submissions use the
official indices and the ``vmr-jax score --protocol tvr`` of the written submission gives the
same numbers.  Other data (the synthetic corpus) use the query id as ``desc_id`` and the
corpus row as video index.

Metrics are flattened to ``"<TASK>/<m>-r<K>"`` (VR ``"VR/r<K>"``) percentages, as the official
evaluator prints them, plus ``num_queries``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from data_pipelines.video_tables import video_durations
from vmr_jax.evaluation import vcmr
from vmr_jax.evaluation.tvr_files import MULTI_SPAN_MIN, RankedPredictions, TvrGroundTruth
from vmr_jax.retrieval import corpus, ranking


# --------------------------------------------------------------------------- ground truth
def corpus_ground_truth(records: Sequence[Any], video_ids: Sequence[str]) -> TvrGroundTruth:
    """The TVR-protocol ground truth of a split's records, with its ``video2idx``.

    ``video_ids [V]``: the corpus (row order).  ``video2idx`` = the official ``video_idx``
    from the records' ``extras`` where every record has one, else the corpus row.
    """
    extras = [getattr(r, "extras", None) or {} for r in records]
    official = all("video_idx" in e for e in extras)
    if official:
        video2idx = {r.video_id: int(e["video_idx"]) for r, e in zip(records, extras)}
    else:
        video2idx = {vid: row for row, vid in enumerate(video_ids)}
    missing = sorted(set(video_ids) - set(video2idx))
    if missing:
        raise ValueError(f"corpus videos without a video index: {missing[:5]}")
    width = max(len(r.spans_s) for r in records)
    spans = np.zeros((len(records), width, 2))
    num_spans = np.ones(len(records), np.int64)
    for q, r in enumerate(records):
        s = np.asarray(r.spans_s, np.float64)
        # TVR-style [st, ed], or a DiDeMo-style list the evaluator reads as such.
        num_spans[q] = len(s) if len(s) >= MULTI_SPAN_MIN else 1
        spans[q, : num_spans[q]] = s[: num_spans[q]]
    types = [e.get("type") for e in extras]
    has_types = all(t in vcmr.DESC_TYPES for t in types)
    return TvrGroundTruth(
        desc_id=tuple(e.get("desc_id", r.query_id) for r, e in zip(records, extras)),
        video_idx=np.array([video2idx[r.video_id] for r in records], np.int64),
        spans=spans,
        num_spans=num_spans,
        desc_type=[vcmr.DESC_TYPES.index(t) for t in types] if has_types else None,
        vid_name=tuple(r.video_id for r in records),
        desc=tuple(r.query_text for r in records),
        video2idx=video2idx,
    )


def concat_ranked(parts: Sequence[RankedPredictions]) -> RankedPredictions:
    """Lists of several query batches, padded to the longest list."""
    width = max(p.video_idx.shape[1] for p in parts)

    def pad(x, fill):
        extra = width - x.shape[1]
        return np.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)

    return RankedPredictions(
        np.concatenate([pad(p.video_idx, -1) for p in parts]),
        np.concatenate([pad(p.st_ed, 0.0) for p in parts]),
        np.concatenate([pad(p.score, 0.0) for p in parts]),
        np.concatenate([p.length for p in parts]),
    )


def flatten_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """``{"VCMR": {"0.5-r1": 4.0}}`` -> ``{"VCMR/0.5-r1": 4.0}`` (tasks) + num_queries; per
    query type (when the ground truth has types: TVR's v / t / vt, the synthetic subtitle-only
    events) ``{"VCMR_by_type": {"t-0.5-r1": 2.0}}`` -> ``{"VCMR_by_type/t-0.5-r1": 2.0}`` (the
    text ``desc_type_ratio`` is left out)."""
    flat = {
        f"{task}/{name}": float(value)
        for task in vcmr.TASKS
        if task in results
        for name, value in results[task].items()
    }
    for task in vcmr.TASKS:
        for name, value in results.get(f"{task}_by_type", {}).items():
            if not isinstance(value, str):
                flat[f"{task}_by_type/{name}"] = float(value)
    flat["num_queries"] = int(results["num_queries"])
    return flat


# --------------------------------------------------------------------------- evaluation
def search_split(
    stages: Any,
    variables: Any,
    prepared: Any,
    mesh: jax.sharding.Mesh,
    evals_config: Mapping[str, Any],
    video_values: np.ndarray | None = None,
) -> dict[str, RankedPredictions]:
    """Ranked VCMR / SVMR / VR lists of every query of a prepared split
    (:class:`data_pipelines.input_pipeline.PreparedSplit`), in split order, against an index
    of all its videos; ``video_idx`` is ``video_values[row]`` (default: the corpus row).

    ``stages``: the family's corpus stages (``Family.corpus(model, model_config)``), which
    own every model-specific option (list lengths, localisation window, combine rule);
    ``evals_config`` gives ``batch_size``, ``video_batch_size``, ``max_predictions`` and
    ``nms_thresh`` (<= 0: no NMS).  Stages with a per-video frame length (``clip_length``
    0) get each video's duration, from its queries' ``duration``, in the index.
    """
    batch_size = int(evals_config.get("batch_size", 64))
    durations = None
    if ranking.per_video_frames(stages.clip_length):
        durations = video_durations(
            prepared.video_index, prepared.query["duration"], prepared.video_ids
        )
    index = corpus.build_index(
        stages,
        variables,
        prepared.videos,
        mesh,
        batch_size=int(evals_config.get("video_batch_size", batch_size)),
        num_videos=prepared.num_videos,
        video_ids=prepared.video_ids,
        durations=durations,
    )
    nms = float(evals_config.get("nms_thresh", -1.0))
    parts: dict[str, list[RankedPredictions]] = {}
    for start in range(0, len(prepared), batch_size):
        rows = np.arange(start, min(start + batch_size, len(prepared)))
        # The last batch is padded to the same size, so the search compiles once.
        padded = np.concatenate([rows, np.full(batch_size - len(rows), -1)])
        batch = prepared.query_batch(padded)
        found = corpus.search(
            stages,
            variables,
            index,
            {k: batch[k] for k in ("query_features", "query_mask") if k in batch},
            max_after=int(evals_config.get("max_predictions", 100)),
            nms_threshold=nms if nms > 0 else None,
            gt_video=prepared.video_index[np.maximum(padded, 0)],
            video_values=video_values,
        )
        n = len(rows)
        for task, r in found.items():
            parts.setdefault(task, []).append(
                RankedPredictions(r.video_idx[:n], r.st_ed[:n], r.score[:n], r.length[:n])
            )
    return {task: concat_ranked(p) for task, p in parts.items()}


def evaluate_split(
    stages: Any,
    variables: Any,
    prepared: Any,
    records: Sequence[Any],
    mesh: jax.sharding.Mesh,
    evals_config: Mapping[str, Any],
) -> tuple[dict[str, float], dict[str, RankedPredictions], TvrGroundTruth]:
    """Searches every query of a split against the split's videos and scores the lists under
    the ``tvr`` protocol.

    Returns ``(flat metrics, {task: lists with video2idx values}, ground truth)``.
    """
    gt = corpus_ground_truth(records, prepared.video_ids)
    values = np.array([gt.video2idx[v] for v in prepared.video_ids], np.int64)
    predictions = search_split(stages, variables, prepared, mesh, evals_config, values)
    results = vcmr.evaluate_predictions(
        predictions,
        gt,
        iou_thresholds=tuple(float(m) for m in evals_config.get("ious", (0.5, 0.7))),
        recall_topks=tuple(int(k) for k in evals_config.get("recalls", (1, 5, 10, 100))),
    )
    return flatten_metrics(results), predictions, gt
