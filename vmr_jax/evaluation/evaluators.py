"""Evaluators: what ``vmr-jax train`` and ``vmr-jax eval`` run on a split, chosen by family.

Big_vision style: an evaluator is made once per split (:func:`make_evaluator`) and
``run(state) -> (metrics, predictions)``.  Which one follows from the family's declared
record, never from its name:

* :class:`MomentEvaluator` -- single-video families.  The eval step (:func:`eval_step`) runs
  the eval-mode forward pass and the family's ``decode``: a ``score_map [B, N, N]`` (decoded
  by ``svmr.decode_predictions``) or a proposal list ``moments [B, P, 2]`` seconds with
  ``moment_scores [B, P]`` (non-finite = no candidate; ``svmr.decode_moment_lists``).  Only
  rows with ``valid == 1`` are kept, so every query counts once; the moments are scored by
  ``evaluation.svmr`` under ``config.evals.protocol``.  Protocol ``'didemo'`` (proposal lists
  on the 5-second chunk grid) ranks the 21 chunk moments of every query
  (``didemo.rankings_from_moments``, no NMS) and scores them against the records' annotator
  chunk pairs (``extras['times']``) by the official DiDeMo rule: ``R@1``, ``R@5``, ``mIoU``.
* :class:`CorpusEvaluator` -- corpus families: the two-stage search of every query against
  the split's videos, ``tvr`` protocol.

:func:`chance_metrics` gives the level a weakly supervised family must beat (its candidates
ranked at random), when the family declares ``candidate_moments``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np

from data_pipelines import input_pipeline
from data_pipelines.sources import DataSources
from vmr_jax import sharding
from vmr_jax.evaluation import chance, didemo, svmr
from vmr_jax.models import Family, get_family

PyTree = Any
Batch = Mapping[str, Any]


def variables_of(state) -> dict[str, PyTree]:
    """``{'params'[, 'batch_stats']}`` of a train state (BatchNorm statistics when it has any)."""
    if state.batch_stats:
        return {"params": state.params, "batch_stats": state.batch_stats}
    return {"params": state.params}


def chance_metrics(
    config, family: Family, data: DataSources, split: str, chunk: int = 256
) -> dict[str, float] | None:
    """The metrics of ranking the candidates of ``split`` in random order, when the family
    declares its candidate set (``Family.candidate_moments``: VLANet's proposals) and the
    protocol is an :data:`svmr.PROTOCOLS` one, whose hit rule they use (``2dtan`` IoU ``> m``,
    ``mmn`` IoU ``>= m``) at ``evals.ious``; else None.  A weakly supervised model is judged
    against them.  Reads the split ``chunk`` queries at a time (a built dataset's features are
    never held whole)."""
    fn = family.candidate_moments
    protocol = config.evals.get("protocol", "2dtan")
    if fn is None or protocol not in svmr.PROTOCOLS:
        return None
    inclusive = svmr.get_protocol(protocol).inclusive
    ious = tuple(float(m) for m in config.evals.get("ious", (0.3, 0.5, 0.7)))
    prepared = data.prepared(split)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(prepared), chunk):
        index = np.arange(start, min(start + chunk, len(prepared)))
        batch = input_pipeline.gather_batch(prepared, index)
        candidates, times = fn(batch, config.model)
        shares = chance.random_ranking_shares(candidates, times, batch["spans"], ious, inclusive)
        for key, value in shares.items():
            parts.setdefault(key, []).append(value)
    return {key: float(np.concatenate(values).mean()) for key, values in parts.items()}


EVAL_FIELDS = ("duration", "spans", "span_mask", "query_index", "valid")
# The two forms of a family's decoded predictions.
SCORE_MAP_FIELDS = ("score_map",)
MOMENT_LIST_FIELDS = ("moments", "moment_scores")


def prediction_fields(decoded: Mapping[str, Any]) -> tuple[str, ...]:
    """Which form ``decode`` returned: :data:`SCORE_MAP_FIELDS` or :data:`MOMENT_LIST_FIELDS`."""
    for fields in (SCORE_MAP_FIELDS, MOMENT_LIST_FIELDS):
        if all(k in decoded for k in fields):
            return fields
    raise KeyError(
        f"decode must return {SCORE_MAP_FIELDS} or {MOMENT_LIST_FIELDS}, got {sorted(decoded)}"
    )


def eval_step(
    state: Any, batch: Batch, *, decode_fn: Callable, model_config: Any
) -> dict[str, jax.Array]:
    """Eval-mode forward pass and decoding plus ``EVAL_FIELDS``: ``score_map [B, N, N]`` or
    ``moments [B, P, 2]`` and ``moment_scores [B, P]``, as the family decodes."""
    outputs = state.apply_fn(variables_of(state), batch, train=False)
    decoded = decode_fn(outputs, batch, model_config)
    out = {k: decoded[k] for k in prediction_fields(decoded)}
    out.update({k: batch[k] for k in EVAL_FIELDS})
    return out


def make_eval_step(config, state_sharding: PyTree, mesh, family: Family | None = None):
    """``eval_step`` jitted; outputs replicated so every host can read all of them."""
    family = family or get_family(config.model.name)
    step = functools.partial(eval_step, decode_fn=family.decode, model_config=config.model)
    rep = sharding.replicated(mesh)
    return jax.jit(
        step, in_shardings=(state_sharding, sharding.batch_sharding(mesh)), out_shardings=rep
    )


def predict(
    eval_step_fn: Callable, state: Any, batches: Iterable[Batch], mesh
) -> dict[str, np.ndarray]:
    """Runs the eval step over padded host batches; keeps each real query once.

    Returns arrays over the queries sorted by ``query_index``: ``score_map [Q, N, N]`` (or
    ``moments [Q, P, 2]`` and ``moment_scores [Q, P]``) and the ``EVAL_FIELDS``.
    """
    chunks: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        out = jax.device_get(eval_step_fn(state, sharding.put_batch(batch, mesh)))
        keep = np.asarray(out["valid"]) > 0
        for k, v in out.items():
            chunks.setdefault(k, []).append(np.asarray(v)[keep])
    if not chunks:
        raise ValueError("the eval iterator yielded no batch")
    result = {k: np.concatenate(v) for k, v in chunks.items()}
    order = np.argsort(result["query_index"], kind="stable")
    result = {k: v[order] for k, v in result.items()}
    index = result["query_index"]
    if len(np.unique(index)) != len(index):
        raise ValueError("the eval iterator yielded a query twice")
    return result


def decode_moments(
    predicted: Mapping[str, np.ndarray], nms_thresh: float, top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ranked moments after NMS, ``(times [Q, top_k, 2], scores [Q, top_k])`` (NaN padded):
    ``svmr.decode_predictions`` of score maps, ``svmr.decode_moment_lists`` of proposal lists."""
    if "score_map" in predicted:
        return svmr.decode_predictions(
            predicted["score_map"], predicted["duration"], nms_thresh, top_k, return_scores=True
        )
    return svmr.decode_moment_lists(
        predicted["moments"], predicted["moment_scores"], nms_thresh, top_k, return_scores=True
    )


def score_predictions(
    predicted: Mapping[str, np.ndarray],
    evals_config: Mapping[str, Any],
    gt_spans: np.ndarray | None = None,
    gt_chunks: didemo.DidemoGroundTruth | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Decodes predictions into ranked moments and scores them under ``evals.protocol``.

    Decoding is the official NumPy one (:func:`decode_moments`: ranked cells or proposals,
    greedy NMS with ``nms_thresh``, ``max(recalls)`` kept).  ``gt_spans [Q, 2]`` defaults to
    the first span of the batches (float32); pass the records' float64 spans for
    official-exact scoring.  Returns ``({'R@n,IoU=m': .., 'mIoU': .., 'num_queries': ..},
    {'times', 'scores'})``.

    Protocol ``'didemo'``: :func:`score_didemo_predictions` against ``gt_chunks`` (the
    annotator chunk pairs of the queries, required).
    """
    protocol = evals_config.get("protocol", "2dtan")
    if protocol == didemo.PROTOCOL:
        if gt_chunks is None:
            raise ValueError(
                "config.evals.protocol='didemo' scores against the annotator chunk pairs: "
                "pass gt_chunks (DataSources.didemo_ground_truth_fn)"
            )
        return score_didemo_predictions(predicted, gt_chunks)
    recalls = tuple(int(n) for n in evals_config.get("recalls", (1, 5)))
    times, scores = decode_moments(
        predicted, float(evals_config.get("nms_thresh", 0.5)), top_k=max(recalls)
    )
    gt = predicted["spans"][:, 0] if gt_spans is None else np.asarray(gt_spans)
    results = svmr.evaluate(
        times,
        gt,
        recalls=recalls,
        ious=tuple(float(m) for m in evals_config.get("ious", (0.3, 0.5, 0.7))),
        protocol=protocol,
    )
    metrics = {k: float(v) for k, v in results.items() if k not in ("protocol", "rule")}
    metrics["num_queries"] = int(results["num_queries"])
    return metrics, {"times": times, "scores": scores}


DIDEMO_TOP_K = 5  # moments kept in the predictions for the writers (R@5)


def score_didemo_predictions(
    predicted: Mapping[str, np.ndarray], gt_chunks: didemo.DidemoGroundTruth
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Official DiDeMo scoring of proposal lists on the 5-second chunk grid.

    ``predicted['moments'] [Q, P, 2]`` / ``['moment_scores'] [Q, P]`` become full rankings of
    the 21 chunk moments (:func:`didemo.rankings_from_moments`, no NMS), scored against
    ``gt_chunks`` (same query order) by :func:`didemo.evaluate`.  Returns ``({'R@1', 'R@5',
    'mIoU': fraction, 'num_queries'}, {'rankings' [Q, 21], 'times' [Q, 5, 2] seconds,
    'scores' [Q, 5]})``; ``times``/``scores`` are the first five ranked moments that had a
    finite-scored candidate, NaN rows after them.
    """
    if "moments" not in predicted:
        raise ValueError(
            "config.evals.protocol='didemo' ranks proposal lists on the 5-second chunk grid "
            f"(decode returning {MOMENT_LIST_FIELDS}); got {sorted(predicted)}"
        )
    rankings, ranked_scores = didemo.rankings_from_moments(
        predicted["moments"], predicted["moment_scores"], return_scores=True
    )
    results = didemo.evaluate(rankings, gt_chunks.times, gt_chunks.n_times)
    metrics = {k: float(results[k]) for k in ("R@1", "R@5", "mIoU")}
    metrics["num_queries"] = int(results["num_queries"])
    top = rankings[:, :DIDEMO_TOP_K]
    scores = ranked_scores[:, :DIDEMO_TOP_K].astype(np.float32)
    times = didemo.moment_seconds(top).astype(np.float32)
    times[np.isnan(scores)] = np.nan
    return metrics, {"rankings": rankings, "times": times, "scores": scores}


def evaluate(
    eval_step_fn: Callable,
    state: Any,
    batches: Iterable[Batch],
    mesh,
    evals_config: Mapping[str, Any],
    gt_spans_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    gt_chunks_fn: Callable[[np.ndarray], didemo.DidemoGroundTruth] | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics of one pass over a padded eval iterator, and the per-query predictions.

    ``gt_spans_fn(query_index) -> [Q, 2]`` supplies exact ground truth (else the batches');
    ``gt_chunks_fn(query_index)`` the annotator chunk pairs protocol ``'didemo'`` needs.
    Predictions: ``query_index [Q]``, ``times [Q, K, 2]`` and ``scores [Q, K]`` (NaN rows
    where the NMS kept fewer than K moments); under ``'didemo'`` also ``rankings [Q, 21]``.
    """
    predicted = predict(eval_step_fn, state, batches, mesh)
    index = predicted["query_index"]
    gt = gt_spans_fn(index) if gt_spans_fn else None
    chunks = gt_chunks_fn(index) if gt_chunks_fn else None
    metrics, moments = score_predictions(predicted, evals_config, gt, chunks)
    return metrics, {"query_index": index, **moments}


class MomentEvaluator:
    """Single-video families (``output`` ``score_map`` or ``moment_list``) on one split.

    ``run(state) -> (metrics, predictions)``: :func:`evaluate` over the padded eval iterator
    (official decoding, ``config.evals`` protocol; ``'didemo'`` scores against the split's
    annotator chunk pairs, read when the evaluator is made so a non-DiDeMo split fails early).
    """

    def __init__(self, config, family: Family, data: DataSources, state_sharding, mesh, split):
        self.config, self.data, self.mesh, self.split = config, data, mesh, split
        self.eval_step = make_eval_step(config, state_sharding, mesh, family)
        on_chunks = config.evals.get("protocol", "2dtan") == didemo.PROTOCOL
        self.gt_chunks_fn = data.didemo_ground_truth_fn(split) if on_chunks else None

    def run(self, state) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        return evaluate(
            self.eval_step,
            state,
            self.data.eval_iterator(self.split),
            self.mesh,
            self.config.evals,
            self.data.gt_spans_fn(self.split),
            self.gt_chunks_fn,
        )


class CorpusEvaluator:
    """Corpus families (``task == 'vcmr'``) on one split: every query searched against all
    the split's videos through the family's stages
    (:func:`vmr_jax.retrieval.evaluate.evaluate_split`), scored under the ``tvr`` protocol.

    ``run(state) -> (metrics, {task: RankedPredictions, 'ground_truth': TvrGroundTruth})``.
    """

    def __init__(self, config, family: Family, data: DataSources, state_sharding, mesh, split):
        del state_sharding  # the search places the variables itself
        self.config, self.data, self.mesh, self.split = config, data, mesh, split
        self.stages = family.corpus(family.create_model(config.model), config.model)

    def run(self, state) -> tuple[dict[str, float], dict[str, Any]]:
        from vmr_jax.retrieval import evaluate as corpus_eval

        metrics, predictions, gt = corpus_eval.evaluate_split(
            self.stages,
            variables_of(state),
            self.data.prepared(self.split),
            self.data.datasets.splits[self.split],
            self.mesh,
            self.config.evals,
        )
        return metrics, {**predictions, "ground_truth": gt}


def make_evaluator(config, family: Family, data: DataSources, state_sharding, mesh, split: str):
    """The evaluator of ``family``'s task on ``split``: :class:`CorpusEvaluator` or
    :class:`MomentEvaluator`."""
    kind = CorpusEvaluator if family.is_corpus else MomentEvaluator
    return kind(config, family, data, state_sharding, mesh, split)


def make_state_evaluator(
    config, data: DataSources, state_sharding: PyTree, mesh, family: Family | None = None
) -> Callable:
    """``evaluate_state(state, split) -> (metrics, predictions)``: one evaluator per split
    (:func:`make_evaluator`), made on first use."""
    family = family or get_family(config.model.name)
    evaluators: dict[str, Any] = {}

    def evaluate_state(state, split: str):
        if split not in evaluators:
            evaluators[split] = make_evaluator(config, family, data, state_sharding, mesh, split)
        return evaluators[split].run(state)

    return evaluate_state
