"""``vmr-jax score``: a predictions file scored under a named official protocol.

Protocols, their ground truth and predictions formats:

==========  ==============================================  ===================================
protocol    ground truth (``--ground-truth``)               predictions (``--predictions``)
==========  ==============================================  ===================================
2dtan, mmn  a queries jsonl: one line per query with        jsonl, one line per query:
            ``query_id``, ``spans_s`` (or ``gt_spans``)     ``{"query_id", "moments": [[st,
            -- a built dataset's ``<split>.queries.jsonl``  ed(, score)], ...]}`` best first,
            or the predictions of ``vmr-jax eval``; or      after NMS (what ``vmr-jax eval``
            the official annotation folder with             writes)
            ``--dataset D --split S``
tvr         ``tvr_<split>_release.jsonl`` (+               the official submission json
            ``tvr_video2dur_idx.json`` beside it or        ``{video2idx, VCMR, SVMR, VR}``
            ``--video2dur_idx``)                            (:mod:`vmr_jax.evaluation.vcmr`)
didemo      ``<split>_data.json`` (LocalizingMoments)       ``{"rankings": {annotation_id:
                                                            [21 moment indices]}}``
                                                            (:mod:`vmr_jax.evaluation.didemo`)
==========  ==============================================  ===================================

The results record the protocol and its rule, the split, the SHA-256 of the ground-truth and
predictions files, and (``vmr-jax eval``) the checkpoint step and config.
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
from vmr_jax.evaluation import didemo, svmr, vcmr

PROTOCOLS = ("2dtan", "mmn", "tvr", "didemo")


class PredictionsError(ValueError):
    """A predictions file that cannot be scored; the message names the query and field."""


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


def read_moment_predictions(
    path: str | os.PathLike, query_ids: Sequence[str], top_k: int
) -> np.ndarray:
    """``[Q, top_k, 2]`` float64 seconds in ``query_ids`` order (NaN where a list is short).

    Every query must appear exactly once; moments must be finite with ``start <= end``.
    """
    index = {q: i for i, q in enumerate(query_ids)}
    times = np.full((len(query_ids), top_k, 2), np.nan)
    seen = np.zeros(len(query_ids), bool)
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}: line {line_no}"
            try:
                p = json.loads(line)
                qid = str(p["query_id"])
                moments = p["moments"]
            except (ValueError, KeyError, TypeError) as err:
                raise PredictionsError(f"{where}: needs 'query_id' and 'moments': {err}") from err
            if qid not in index:
                raise PredictionsError(f"{where}: query {qid!r} is not in the ground truth")
            q = index[qid]
            if seen[q]:
                raise PredictionsError(f"{where}: query {qid!r} appears twice")
            seen[q] = True
            for k, m in enumerate(moments[:top_k]):
                ok = isinstance(m, (list, tuple)) and len(m) in (2, 3)
                ok = ok and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in m[:2]
                )
                st, ed = (float(m[0]), float(m[1])) if ok else (np.nan, np.nan)
                if not ok or not np.isfinite([st, ed]).all() or st > ed:
                    raise PredictionsError(
                        f"{where}: query {qid!r}: field 'moments[{k}]' = {m!r} is not a finite "
                        "[start <= end(, score)]"
                    )
                times[q, k] = (st, ed)
    if not seen.all():
        missing = [query_ids[i] for i in np.flatnonzero(~seen)[:5]]
        raise PredictionsError(
            f"{path}: {int((~seen).sum())} ground-truth queries have no prediction, e.g. {missing}"
        )
    return times


def score_moments(
    protocol: str,
    ground_truth: str,
    predictions: str,
    recalls=(1, 5),
    ious=(0.3, 0.5, 0.7),
    dataset: str | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    ids, spans = load_query_ground_truth(ground_truth, dataset, split)
    multi = [q for q, s in zip(ids, spans) if len(s) != 1]
    if multi:
        raise ValueError(
            f"{ground_truth}: protocol {protocol!r} needs one span per query; {len(multi)} "
            f"queries have another count (e.g. {multi[:3]}); DiDeMo uses protocol 'didemo'"
        )
    times = read_moment_predictions(predictions, ids, max(recalls))
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
    if protocol in ("2dtan", "mmn"):
        metrics = score_moments(protocol, ground_truth, predictions, recalls, ious, dataset, split)
    elif protocol == "tvr":
        split = split or _tvr_split(ground_truth)
        if split is None:
            raise ValueError(f"cannot tell the TVR split of {ground_truth}: pass --split")
        table = video2dur_idx or str(Path(ground_truth).parent / "tvr_video2dur_idx.json")
        gt = vcmr.load_tvr_ground_truth(ground_truth, table, split)
        metrics = vcmr.evaluate_submission(
            vcmr.read_submission(predictions, as_arrays=True), gt, truncate=truncate
        )
    else:
        gt = didemo.load_didemo_ground_truth(ground_truth)
        rankings = didemo.read_predictions_json(predictions, gt.annotation_ids)
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
        "predictions_sha256": sha256(predictions),
        "checkpoint_step": None,
        "config": None,
    }
