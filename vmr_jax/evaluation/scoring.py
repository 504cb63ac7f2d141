"""``vmr-jax score``: a predictions file scored under a named official protocol.

Protocols and their ground truth (``--ground-truth``):

==========  ==============================================================================
protocol    ground truth
==========  ==============================================================================
2dtan, mmn  a queries jsonl: one line per query with ``query_id``, ``spans_s`` (or
            ``gt_spans``) -- a built dataset's ``<split>.queries.jsonl`` or the predictions
            of ``vmr-jax eval``; or the official annotation folder with ``--dataset D
            --split S``
tvr         ``tvr_<split>_release.jsonl`` (+ ``tvr_video2dur_idx.json`` beside it or
            ``--video2dur_idx``)
didemo      ``<split>_data.json`` (LocalizingMoments)
==========  ==============================================================================

Predictions (``--predictions``): the format is detected from the file's header
(:mod:`vmr_jax.evaluation.prediction_files`, which also converts it to the protocol's input):
``vmr-jax predict``'s JSON (every protocol), ``vmr-jax eval``'s ``*_predictions.jsonl``
moment lines (every protocol), the official TVR submission (``tvr``) and DiDeMo rankings
(``didemo``) that ``vmr-jax eval`` writes.  :data:`ACCEPTED` lists them per protocol; any
other file is refused with that list.

The results record the protocol and its rule, the split, the predictions format (and the
conversion applied to it), the SHA-256 of the ground-truth and predictions files, and
(``vmr-jax eval``) the checkpoint step and config.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.stored import sha256
from vmr_jax.evaluation import PROTOCOLS, didemo, svmr, vcmr
from vmr_jax.evaluation import prediction_files as files
from vmr_jax.evaluation.prediction_files import PredictionsError

__all__ = [
    "ACCEPTED",
    "PROTOCOLS",
    "PredictionsError",
    "load_query_ground_truth",
    "score",
    "score_moments",
]

_MOMENT_LISTS = (files.PREDICT_FORMAT, files.MOMENT_LINES)
ACCEPTED = {
    "2dtan": _MOMENT_LISTS,
    "mmn": _MOMENT_LISTS,
    "tvr": (files.TVR_SUBMISSION, *_MOMENT_LISTS),
    "didemo": (files.DIDEMO_RANKINGS, *_MOMENT_LISTS),
}


# --------------------------------------------------------------------------- 2dtan / mmn
def load_query_ground_truth(
    path: str | os.PathLike, dataset: str | None = None, split: str | None = None
) -> tuple[list[str], list[np.ndarray]]:
    """``(query_ids, spans [S, 2] float64 each)`` from a queries jsonl or official files."""
    if dataset is not None:
        from data_pipelines.annotations import ParseReport
        from data_pipelines.benchmarks import get_benchmark

        if split is None:
            raise ValueError("--dataset needs --split")
        anns = get_benchmark(dataset).parse_split(str(path), split, ParseReport())
        return [a.query_id for a in anns], [np.asarray(a.spans_s, np.float64) for a in anns]
    ids, spans = [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                q = json.loads(line)
                gt = q["spans_s"] if "spans_s" in q else q["gt_spans"]
                ids.append(str(q["query_id"]))
                spans.append(np.asarray(gt, np.float64).reshape(-1, 2))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{path}: line {line_no}: needs 'query_id' and 'spans_s' (or 'gt_spans'): {err}"
                ) from err
    return ids, spans


def score_moments(
    protocol: str,
    ground_truth: str,
    found: files.QueryMoments,
    recalls=(1, 5),
    ious=(0.3, 0.5, 0.7),
    dataset: str | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Protocol ``2dtan`` / ``mmn`` of moment lists against one span per query."""
    ids, spans = load_query_ground_truth(ground_truth, dataset, split)
    multi = [q for q, s in zip(ids, spans) if len(s) != 1]
    if multi:
        raise ValueError(
            f"{ground_truth}: protocol {protocol!r} needs one span per query; {len(multi)} "
            f"queries have another count (e.g. {multi[:3]}); DiDeMo uses protocol 'didemo'"
        )
    times = files.moment_times(found, files.align(found, ids), max(recalls))
    gt = np.stack([s[0] for s in spans])
    return svmr.evaluate(times, gt, recalls, ious, protocol)


def _ground_truth_checksums(path: str, dataset: str | None, split: str | None):
    """SHA-256 of the GT file, or ``{file name: sha}`` of a dataset split's official files."""
    if os.path.isfile(path):
        return sha256(path)
    from data_pipelines.benchmarks import get_benchmark

    names = get_benchmark(dataset).SPLITS[split]
    return {name: sha256(os.path.join(path, name)) for name in names}


# --------------------------------------------------------------------------- dispatch
def _tvr_split(path: str) -> str | None:
    match = re.search(r"tvr_(\w+?)_release\.jsonl$", os.path.basename(path))
    return match.group(1) if match else None


def score(
    protocol: str,
    ground_truth: str,
    predictions: str,
    *,
    split: str | None = None,
    dataset: str | None = None,
    video2dur_idx: str | None = None,
    recalls: Sequence[int] = (1, 5),
    ious: Sequence[float] = (0.3, 0.5, 0.7),
    truncate: bool = False,
) -> dict[str, Any]:
    """Scores ``predictions`` against ``ground_truth`` under ``protocol``; the results dict.

    ``truncate`` (tvr): cut lists longer than 100 to their first 100 as the official script
    does, instead of refusing them.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {list(PROTOCOLS)}")
    for path in (ground_truth, predictions):
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file: {path}")
    fmt = files.detect_format(predictions, ACCEPTED[protocol], protocol)
    found = files.read_query_moments(predictions, fmt) if fmt in _MOMENT_LISTS else None
    conversion = None
    if protocol in ("2dtan", "mmn"):
        metrics = score_moments(protocol, ground_truth, found, recalls, ious, dataset, split)
    elif protocol == "tvr":
        split = split or _tvr_split(ground_truth)
        if split is None:
            raise ValueError(f"cannot tell the TVR split of {ground_truth}: pass --split")
        table = video2dur_idx or str(Path(ground_truth).parent / "tvr_video2dur_idx.json")
        gt = vcmr.load_tvr_ground_truth(ground_truth, table, split)
        if found is None:
            submission, topks = vcmr.read_submission(predictions, as_arrays=True), None
        else:
            submission, topks = files.svmr_submission(found, files.align(found, gt.desc_id), gt)
            conversion = (
                f"SVMR lists [video2idx[video_id], start, end, score]; R@K for K in {topks}"
            )
        metrics = vcmr.evaluate_submission(
            submission, gt, recall_topks=topks or vcmr.RECALL_TOPKS, truncate=truncate
        )
    else:
        gt = didemo.load_didemo_ground_truth(ground_truth)
        if found is None:
            rankings = didemo.read_predictions_json(predictions, gt.annotation_ids)
        else:
            rankings, conversion = files.didemo_rankings(
                found, files.align(found, gt.annotation_ids)
            )
        metrics = didemo.evaluate(rankings, gt.times, gt.n_times)
    rule = metrics.pop("rule")
    return {
        "protocol": metrics.pop("protocol"),
        "rule": rule,
        "split": split,
        "num_queries": metrics.pop("num_queries"),
        "metrics": metrics,
        "ground_truth": os.path.abspath(ground_truth),
        "ground_truth_sha256": _ground_truth_checksums(ground_truth, dataset, split),
        "predictions": os.path.abspath(predictions),
        "predictions_format": fmt,
        "conversion": conversion,
        "predictions_sha256": sha256(predictions),
        "checkpoint_step": None,
        "config": None,
    }
