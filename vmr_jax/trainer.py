"""One trainer for every model family: ``train_and_evaluate(config, workdir)`` in named pieces.

Sections run in a fixed order: mesh -> data -> model/optimizer -> shardings -> jitted step
-> restore -> eval -> loop.  Each is a function that notebooks and tests can call alone.

* The optimiser is MGPN's (official ``lib/core/config`` + ``train.py``): Adam (lr ``1e-3``,
  betas 0.9/0.999, no weight decay) after global grad-norm clipping (``grad_clip_norm``),
  learning rate multiplied by ``gamma`` at every milestone epoch (PyTorch ``MultiStepLR``,
  stepped per epoch; here the milestones become step boundaries ``epoch * steps_per_epoch``).
* The train state is built sharded: ``jax.eval_shape`` gives its shapes, the mesh shardings
  follow from the logical axis rules (``sharding.tree_shardings``), and ``init`` is jitted
  with those ``out_shardings``.  The train step is jitted once with explicit in/out shardings
  and the state donated.
* RNG: one key per run (``config.train.seed``); the step is folded in inside the step, so a
  resumed run draws the same dropout masks as an uninterrupted one.
* BatchNorm: train mode updates ``batch_stats``; eval uses the running statistics.  Because
  the batch is one global array sharded on ``data``, the batch statistics a model computes
  (``jnp.mean`` over the batch axis) are over the global batch under ``jit`` -- XLA inserts the
  cross-device reductions -- so results do not depend on the device count.
* Supervision (``config.train.supervision``, :func:`training_supervision`): ``'full'`` (the
  default) trains on the ground-truth spans; ``'weak'`` (query-video pairs only) removes
  ``spans`` and ``span_mask`` from every training batch and from the sample batch the state is
  initialised on, so a model or loss that reads them in training fails with a ``KeyError``.
  A family that can learn without spans says so with ``SUPERVISION = ('weak',)`` (no attribute:
  ``('full',)``).  Evaluation is the same under both: eval batches carry spans.  A family
  that ranks a fixed set of candidate proposals may define ``random_proposal_shares(batch,
  model_config)``; the trainer then logs the eval split's metrics under random ranking
  (:func:`chance_metrics`) as ``{split}_random`` at step 0, the level a weak model must beat.
* Evaluation runs the padded eval iterator; only rows with ``valid == 1`` are kept, so every
  query counts once.  A family's ``decode`` returns either a ``score_map [B, N, N]`` (decoded
  by ``svmr.decode_predictions``) or a proposal list ``moments [B, P, 2]`` seconds with
  ``moment_scores [B, P]`` (non-finite = no candidate; ``svmr.decode_moment_lists``); the
  moments are scored by ``evaluation.svmr`` under ``config.evals.protocol``.  Protocol
  ``'didemo'`` (proposal lists on the 5-second chunk grid) ranks the 21 chunk moments of every
  query (``didemo.rankings_from_moments``, no NMS) and scores them against the records'
  annotator chunk pairs (``extras['times']``) by the official DiDeMo rule: ``R@1``, ``R@5``,
  ``mIoU``.
* Data order on resume: the train iterator is deterministic given its seed; a resumed run
  skips the batches already consumed.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from data_pipelines import input_pipeline
from vmr_jax import checkpointing, sharding
from vmr_jax.evaluation import didemo, svmr
from vmr_jax.metrics_writer import MetricsWriter
from vmr_jax.models import get_family

logger = logging.getLogger(__name__)

PyTree = Any
Batch = Mapping[str, Any]


class TrainState(train_state.TrainState):
    """Flax train state plus the BatchNorm running statistics (``{}`` if none)."""

    batch_stats: PyTree = None


# --------------------------------------------------------------------------- optimizer
OPTIMIZERS = ("adam", "bert_adam")


def lr_schedule(train_config: Mapping[str, Any], steps_per_epoch: int) -> optax.Schedule:
    """``lr * gamma ** (number of milestones <= epoch)``, as a function of the step."""
    boundaries: dict[int, float] = {}
    for epoch in train_config.get("milestones", ()):
        step = int(epoch) * int(steps_per_epoch)
        boundaries[step] = boundaries.get(step, 1.0) * float(train_config.get("gamma", 0.1))
    return optax.piecewise_constant_schedule(float(train_config["lr"]), boundaries or None)


def warmup_linear_schedule(lr: float, warmup: float, total_steps: int) -> optax.Schedule:
    """BertAdam's ``warmup_linear`` (TVRetrieval ``optimization.py``): with progress
    ``p = step / total_steps``, ``lr * p / warmup`` while ``p < warmup``, then
    ``lr * max((p - 1) / (warmup - 1), 0)`` (linear decay to 0 at ``total_steps``)."""
    total = max(int(total_steps), 1)

    def schedule(step):
        p = jnp.asarray(step, jnp.float32) / total
        up = p / warmup if warmup > 0 else jnp.ones_like(p)
        down = jnp.maximum((p - 1.0) / (warmup - 1.0), 0.0)
        return lr * jnp.where(p < warmup, up, down)

    return schedule


def default_decay_mask(params: PyTree) -> PyTree:
    """Weight decay on every parameter except biases and norm scales (``bias``/``scale``)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) not in ("bias", "scale"), params
    )


def clip_each_by_norm(max_norm: float) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_norm_(p, max_norm)`` applied to every tensor on its own (as
    BertAdam does): ``g * min(1, max_norm / (||g|| + 1e-6))``."""

    def update(updates, state, params=None):
        del params

        def clip(g):
            coef = max_norm / (jnp.sqrt(jnp.sum(jnp.square(g))) + 1e-6)
            return g * jnp.minimum(coef, 1.0)

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_by_adam_no_bias_correction(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6
) -> optax.GradientTransformation:
    """BertAdam's moments: ``m / (sqrt(v) + eps)`` with no bias correction."""

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros)

    def update(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return out, optax.ScaleByAdamState(count=state.count + 1, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def create_optimizer(
    train_config: Mapping[str, Any],
    steps_per_epoch: int,
    decay_mask: Callable[[PyTree], PyTree] | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimiser of ``train.optimizer`` and its learning-rate schedule.

    * ``'adam'`` (default; MGPN): clip by global norm ``grad_clip_norm``, then Adam with the
      multi-step schedule of :func:`lr_schedule`.
    * ``'bert_adam'`` (TVRetrieval's ``BertAdam``, XML): every tensor's gradient clipped to norm
      ``max_grad_norm`` (1.0) on its own, Adam moments without bias correction
      (``eps`` 1e-6 outside the root), decoupled weight decay ``weight_decay`` on the leaves of
      ``decay_mask(params)`` (the family's ``weight_decay_mask``, else
      :func:`default_decay_mask`), ``warmup_linear`` schedule over the run's total steps.
    """
    kind = train_config.get("optimizer", "adam")
    if kind not in OPTIMIZERS:
        raise ValueError(f"config.train.optimizer must be one of {OPTIMIZERS}, got {kind!r}")
    b1, b2 = float(train_config.get("b1", 0.9)), float(train_config.get("b2", 0.999))
    if kind == "bert_adam":
        steps = int(train_config.get("num_steps", 0) or 0)
        total = steps or int(train_config.get("num_epochs", 1)) * int(steps_per_epoch)
        schedule = warmup_linear_schedule(
            float(train_config["lr"]), float(train_config.get("warmup", 0.01)), total
        )
        parts = []
        clip = float(train_config.get("max_grad_norm", 1.0))
        if clip > 0:
            parts.append(clip_each_by_norm(clip))
        parts += [
            scale_by_adam_no_bias_correction(b1, b2, float(train_config.get("eps", 1e-6))),
            optax.add_decayed_weights(
                float(train_config.get("weight_decay", 0.01)), mask=decay_mask or default_decay_mask
            ),
            optax.scale_by_schedule(lambda step: -schedule(step)),
        ]
        return optax.chain(*parts), schedule
    schedule = lr_schedule(train_config, steps_per_epoch)
    parts = []
    clip = float(train_config.get("grad_clip_norm", 0.0) or 0.0)
    if clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    parts.append(optax.adam(schedule, b1=b1, b2=b2))
    return optax.chain(*parts), schedule


def family_optimizer(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """:func:`create_optimizer` with the model family's ``weight_decay_mask`` if it has one."""
    mask = getattr(get_family(config.model.name), "weight_decay_mask", None)
    return create_optimizer(config.train, steps_per_epoch, mask)


# --------------------------------------------------------------------------- supervision
SUPERVISIONS = ("full", "weak")
SPAN_FIELDS = ("spans", "span_mask")  # what weak supervision keeps out of training


def training_supervision(config: ml_collections.ConfigDict) -> str:
    """``config.train.supervision`` (``'full'`` when absent), checked against the family.

    ``'weak'`` needs a family that learns without spans: its module says ``SUPERVISION =
    ('weak',)`` (or ``('full', 'weak')``); families without the attribute are fully
    supervised, ``('full',)``.  ``'full'`` suits every family (one that ignores the spans too).
    """
    kind = config.train.get("supervision", "full")
    if kind not in SUPERVISIONS:
        raise ValueError(f"config.train.supervision must be one of {SUPERVISIONS}, got {kind!r}")
    supported = tuple(getattr(get_family(config.model.name), "SUPERVISION", ("full",)))
    if kind == "weak" and kind not in supported:
        raise ValueError(
            f"config.train.supervision={kind!r} but model family {config.model.name!r} "
            f"trains only under {supported} (its module attribute SUPERVISION)"
        )
    return kind


def without_spans(batch: Batch) -> dict[str, Any]:
    """``batch`` less ``spans`` and ``span_mask`` (removed, not zeroed)."""
    return {k: v for k, v in batch.items() if k not in SPAN_FIELDS}


def chance_metrics(
    config, data: DataSources, split: str, chunk: int = 256
) -> dict[str, float] | None:
    """The metrics of ranking the candidates of ``split`` in random order, when the family
    defines them per query (``random_proposal_shares(batch, model_config)``: VLANet's
    proposals) and the protocol is ``2dtan``; else None.  A weakly supervised model is judged
    against them.  Reads the split ``chunk`` queries at a time (a built dataset's features
    are never held whole)."""
    fn = getattr(get_family(config.model.name), "random_proposal_shares", None)
    if fn is None or config.evals.get("protocol", "2dtan") != "2dtan":
        return None
    prepared = data.prepared(split)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(prepared), chunk):
        index = np.arange(start, min(start + chunk, len(prepared)))
        for key, value in fn(input_pipeline.gather_batch(prepared, index), config.model).items():
            parts.setdefault(key, []).append(value)
    return {key: float(np.concatenate(values).mean()) for key, values in parts.items()}


# --------------------------------------------------------------------------- model / state
def create_model(model_config: Mapping[str, Any]):
    """The linen module of ``config.model.name`` (registry ``vmr_jax.models.MODELS``)."""
    return get_family(model_config.name).create_model(model_config)


def _init_batch(sample_batch: Batch) -> dict[str, np.ndarray]:
    # Parameter shapes do not depend on the batch size: initialise on one example.
    return {k: np.asarray(v)[:1] for k, v in sample_batch.items()}


def create_train_state(
    config: ml_collections.ConfigDict,
    model,
    rng: jax.Array,
    sample_batch: Batch,
    mesh: jax.sharding.Mesh,
    *,
    tx: optax.GradientTransformation | None = None,
) -> TrainState:
    """The initial train state, built directly with its mesh shardings.

    ``jax.eval_shape`` gives the abstract state; ``state_shardings`` places it; ``init`` runs
    under ``jax.jit(..., out_shardings=...)`` so no device ever holds an unsharded copy.
    ``tx`` defaults to ``family_optimizer(config, steps_per_epoch=1)``; pass the one the
    step functions were built with (a state's static fields must be the same objects).
    """
    tx = tx or family_optimizer(config, 1)[0]
    init_fn = _state_init_fn(model, tx, sample_batch)
    shardings = state_shardings(jax.eval_shape(init_fn, rng), mesh, config.mesh)
    return jax.jit(init_fn, out_shardings=shardings)(rng)


def _state_init_fn(model, tx: optax.GradientTransformation, sample_batch: Batch):
    batch = _init_batch(sample_batch)

    def init(rng):
        params_rng, dropout_rng = jax.random.split(rng)
        variables = model.init({"params": params_rng, "dropout": dropout_rng}, batch, train=False)
        return TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            tx=tx,
            batch_stats=variables.get("batch_stats", {}),
        )

    return init


def state_shardings(abstract_state: PyTree, mesh, mesh_config=None) -> PyTree:
    """``NamedSharding`` of every leaf (replicated unless the model names logical axes)."""
    return sharding.tree_shardings(abstract_state, mesh, sharding.logical_axis_rules(mesh_config))


def abstract_train_state(
    config, model, rng, sample_batch: Batch, mesh, *, tx: optax.GradientTransformation
) -> PyTree:
    """Shapes, dtypes and shardings of the train state (the checkpoint restore target)."""
    abstract = jax.eval_shape(_state_init_fn(model, tx, sample_batch), rng)
    return checkpointing.abstract_like(abstract, state_shardings(abstract, mesh, config.mesh))


# --------------------------------------------------------------------------- steps
def _variables(params: PyTree, batch_stats: PyTree) -> dict[str, PyTree]:
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def train_step(
    state: TrainState,
    batch: Batch,
    rng: jax.Array,
    *,
    loss_fn: Callable,
    model_config: Any,
    schedule: optax.Schedule,
    steps_per_epoch: int | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step; returns the new state and flat scalar metrics.

    ``steps_per_epoch``: when set, ``loss_fn`` also gets ``step`` (this step's index) and
    ``steps_per_epoch`` as keywords, for losses with epoch schedules.

    Metrics: ``loss``, the model's loss parts, ``grad_norm`` (before clipping),
    ``param_norm`` (after the update) and ``lr`` (used by this step).
    """
    rng = jax.random.fold_in(rng, state.step)
    has_stats = bool(state.batch_stats)
    loss_kwargs = {}
    if steps_per_epoch is not None:  # families with epoch schedules in their loss (XML)
        loss_kwargs = {"step": state.step, "steps_per_epoch": steps_per_epoch}

    def compute_loss(params):
        outputs, updates = state.apply_fn(
            _variables(params, state.batch_stats),
            batch,
            train=True,
            rngs={"dropout": rng},
            mutable=["batch_stats"] if has_stats else [],
        )
        loss, parts = loss_fn(outputs, batch, model_config, **loss_kwargs)
        return loss, (parts, updates)

    (loss, (parts, updates)), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
    new_state = state.apply_gradients(
        grads=grads, batch_stats=updates["batch_stats"] if has_stats else state.batch_stats
    )
    metrics = {"loss": loss, **parts}
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["param_norm"] = optax.tree.norm(new_state.params)
    metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
    return new_state, metrics


# Batch fields the evaluation needs on the host, returned by eval_step next to the scores.
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
    state: TrainState, batch: Batch, *, decode_fn: Callable, model_config: Any
) -> dict[str, jax.Array]:
    """Eval-mode forward pass and decoding plus ``EVAL_FIELDS``: ``score_map [B, N, N]`` or
    ``moments [B, P, 2]`` and ``moment_scores [B, P]``, as the family decodes."""
    outputs = state.apply_fn(_variables(state.params, state.batch_stats), batch, train=False)
    decoded = decode_fn(outputs, batch, model_config)
    out = {k: decoded[k] for k in prediction_fields(decoded)}
    out.update({k: batch[k] for k in EVAL_FIELDS})
    return out


def make_train_step(
    config, state_sharding: PyTree, mesh, schedule: optax.Schedule, steps_per_epoch: int = 1
):
    """``train_step`` bound to the model family and jitted with shardings, state donated.

    A family whose ``loss_fn`` takes ``steps_per_epoch`` gets it and the step (epoch schedules).
    """
    family = get_family(config.model.name)
    takes_steps = "steps_per_epoch" in inspect.signature(family.loss_fn).parameters
    step = functools.partial(
        train_step,
        loss_fn=family.loss_fn,
        model_config=config.model,
        schedule=schedule,
        steps_per_epoch=int(steps_per_epoch) if takes_steps else None,
    )
    rep = sharding.replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(state_sharding, sharding.batch_sharding(mesh), rep),
        out_shardings=(state_sharding, rep),
        donate_argnums=0,
    )


def make_eval_step(config, state_sharding: PyTree, mesh):
    """``eval_step`` jitted; outputs replicated so every host can read all of them."""
    family = get_family(config.model.name)
    step = functools.partial(eval_step, decode_fn=family.decode, model_config=config.model)
    rep = sharding.replicated(mesh)
    return jax.jit(
        step, in_shardings=(state_sharding, sharding.batch_sharding(mesh)), out_shardings=rep
    )


# --------------------------------------------------------------------------- evaluation
def predict(
    eval_step_fn: Callable, state: TrainState, batches: Iterable[Batch], mesh
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
    state: TrainState,
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


def make_state_evaluator(config, data: DataSources, state_sharding: PyTree, mesh) -> Callable:
    """``evaluate_state(state, split) -> (metrics, predictions)`` for the model's task.

    Single-video families: :func:`evaluate` (score maps or proposal lists, official decoding,
    ``config.evals`` protocol; ``'didemo'`` scores against the split's annotator chunk pairs).
    Corpus families (``TASK == 'vcmr'``): every query of the split searched against all the
    split's videos (:func:`vmr_jax.retrieval.evaluate.evaluate_split`), scored under the ``tvr``
    protocol; predictions ``{task: RankedPredictions}`` plus ``ground_truth``.
    """
    from vmr_jax.retrieval import evaluate as corpus_eval

    family = get_family(config.model.name)
    if corpus_eval.is_corpus_family(family):
        adapter = corpus_eval.ModelAdapter(create_model(config.model))

        def evaluate_corpus(state: TrainState, split: str):
            metrics, predictions, gt = corpus_eval.evaluate_split(
                adapter,
                _variables(state.params, state.batch_stats),
                data.prepared(split),
                data.datasets.splits[split],
                mesh,
                config.model,
                config.evals,
            )
            return metrics, {**predictions, "ground_truth": gt}

        return evaluate_corpus

    p_eval_step = make_eval_step(config, state_sharding, mesh)
    on_chunks = config.evals.get("protocol", "2dtan") == didemo.PROTOCOL

    def evaluate_moments(state: TrainState, split: str):
        return evaluate(
            p_eval_step,
            state,
            data.eval_iterator(split),
            mesh,
            config.evals,
            data.gt_spans_fn(split),
            data.didemo_ground_truth_fn(split) if on_chunks else None,
        )

    return evaluate_moments


# --------------------------------------------------------------------------- data
class DataSources:
    """Prepared splits and the iterators over them for one config (host-local batches)."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.datasets = input_pipeline.get_datasets(config)
        self._prepared: dict[str, input_pipeline.PreparedSplit] = {}
        self._didemo_gt: dict[str, didemo.DidemoGroundTruth] = {}

    def prepared(self, split: str) -> input_pipeline.PreparedSplit:
        if split not in self._prepared:
            if split not in self.datasets.splits:
                raise KeyError(f"no split {split!r}; have {sorted(self.datasets.splits)}")
            self._prepared[split] = input_pipeline.prepare_split(
                self.datasets.splits[split], self.config.data, self.datasets.text, split
            )
        return self._prepared[split]

    def steps_per_epoch(self) -> int:
        return max(1, len(self.prepared("train")) // int(self.config.train.batch_size))

    def train_iterator(self, start_step: int = 0):
        """Endless train batches, positioned after the first ``start_step`` batches; without
        ``spans``/``span_mask`` under weak supervision (:func:`training_supervision`)."""
        it = input_pipeline.make_train_iterator(
            self.prepared("train"),
            self.config.data,
            int(self.config.train.batch_size),
            int(self.config.train.seed),
            text=self.datasets.text,
            start_step=start_step,
        )
        if training_supervision(self.config) == "weak":
            return map(without_spans, it)
        return it

    def eval_iterator(self, split: str):
        return input_pipeline.make_eval_iterator(
            self.prepared(split),
            self.config.data,
            int(self.config.evals.get("batch_size", self.config.train.batch_size)),
            text=self.datasets.text,
        )

    def sample_batch(self) -> dict[str, np.ndarray]:
        """One training example, shaped as the train batches (no spans under weak supervision)."""
        batch = input_pipeline.gather_batch(self.prepared("train"), np.zeros(1, np.int64))
        return without_spans(batch) if training_supervision(self.config) == "weak" else batch

    def query_records(self, split: str, query_index: np.ndarray) -> list[Any]:
        records = self.datasets.splits[split]
        return [records[int(i)] for i in query_index]

    def gt_spans_fn(self, split: str) -> Callable[[np.ndarray], np.ndarray]:
        """``query_index -> [Q, 2]`` first ground-truth span of each record, float64."""

        def gt_spans(query_index: np.ndarray) -> np.ndarray:
            records = self.query_records(split, query_index)
            return np.asarray([np.asarray(r.spans_s, np.float64)[0] for r in records])

        return gt_spans

    def didemo_ground_truth(self, split: str) -> didemo.DidemoGroundTruth:
        """The annotator chunk pairs (``extras['times']``) of every record of ``split``, packed
        as the official evaluation reads them (``didemo.ground_truth_from_records``)."""
        if split not in self._didemo_gt:
            records = self.datasets.splits[split]
            rows = []
            for q, r in enumerate(records):
                extras = getattr(r, "extras", None) or {}
                if "times" not in extras:
                    raise ValueError(
                        f"split {split!r}, record {r.query_id!r}: no field extras['times'] "
                        "(annotator chunk pairs); config.evals.protocol='didemo' needs DiDeMo "
                        f"records, config.data.name is {self.config.data.name!r}"
                    )
                rows.append({"annotation_id": extras.get("annotation_id", q), **extras})
            self._didemo_gt[split] = didemo.ground_truth_from_records(rows, f"split {split!r}")
        return self._didemo_gt[split]

    def didemo_ground_truth_fn(
        self, split: str
    ) -> Callable[[np.ndarray], didemo.DidemoGroundTruth]:
        """``query_index ->`` :class:`didemo.DidemoGroundTruth` of those records (in that order).

        Reads the whole split at once, so a non-DiDeMo split fails here, not after inference.
        """
        packed = self.didemo_ground_truth(split)

        def gt_chunks(query_index: np.ndarray) -> didemo.DidemoGroundTruth:
            index = np.asarray(query_index, np.int64)
            return didemo.DidemoGroundTruth(
                packed.annotation_ids[index], packed.times[index], packed.n_times[index]
            )

        return gt_chunks


def num_train_steps(config, steps_per_epoch: int) -> int:
    """``train.num_steps`` if positive, else ``train.num_epochs * steps_per_epoch``."""
    steps = int(config.train.get("num_steps", 0) or 0)
    return steps if steps > 0 else int(config.train.num_epochs) * steps_per_epoch


# --------------------------------------------------------------------------- loop
def _mean_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    """Mean over the logged interval; ``lr`` is the last step's."""
    host = jax.device_get(history)
    out = {k: float(np.mean([h[k] for h in host])) for k in host[0]}
    out["lr"] = float(host[-1]["lr"])
    return out


def _is_every(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint), evaluating
    every ``config.evals.every`` steps and at the end.

    Returns ``{'step', 'train_metrics', 'eval_metrics', 'eval_split', 'checkpoint_dir',
    'best_step', 'workdir'}``, and ``'random_baseline'`` when :func:`chance_metrics` gives one.
    """
    os.makedirs(workdir, exist_ok=True)
    checkpointing.save_config(config, workdir)
    writer = MetricsWriter(workdir)
    main = sharding.is_main_process()

    # Mesh.
    mesh = sharding.make_mesh(config.mesh)
    logger.info("mesh %s over %d devices", dict(mesh.shape), mesh.size)

    # Data.
    supervision = training_supervision(config)
    logger.info("supervision %r", supervision)
    data = DataSources(config)
    steps_per_epoch = data.steps_per_epoch()
    total_steps = num_train_steps(config, steps_per_epoch)
    eval_split = config.evals.get("split", "val")
    if config.evals.get("protocol", "2dtan") == didemo.PROTOCOL:
        data.didemo_ground_truth(eval_split)  # a non-DiDeMo split fails before training
    sample = data.sample_batch()
    chance = chance_metrics(config, data, eval_split)
    if chance is not None:
        logger.info(
            "random-proposal baseline on %s: %s",
            eval_split,
            ", ".join(f"{k} {v:.4f}" for k, v in chance.items()),
        )

    # Model and optimizer.
    model = create_model(config.model)
    tx, schedule = family_optimizer(config, steps_per_epoch)
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(int(config.train.seed)))

    # Shardings.
    abstract = abstract_train_state(config, model, init_rng, sample, mesh, tx=tx)
    state_sharding = jax.tree.map(lambda x: x.sharding, abstract)

    # Jitted steps.
    p_train_step = make_train_step(config, state_sharding, mesh, schedule, steps_per_epoch)
    evaluate_state = make_state_evaluator(config, data, state_sharding, mesh)

    # Restore or initialise.
    manager = checkpointing.create_checkpoint_manager(workdir, config.train)
    state, restored = checkpointing.restore_or_init(
        manager,
        abstract,
        lambda: create_train_state(config, model, init_rng, sample, mesh, tx=tx),
    )
    start_step = int(jax.device_get(state.step))
    if restored is not None:
        logger.info("resumed from %s at step %d", manager.directory, start_step)
    else:
        writer.write_text(0, "config", config.to_json_best_effort(indent=2))
        if chance is not None:
            writer.write(0, f"{eval_split}_random", chance)

    # Eval.
    def run_eval(state: TrainState, step: int) -> dict[str, float]:
        metrics, _ = evaluate_state(state, eval_split)
        writer.write(step, eval_split, metrics)
        return metrics

    # Loop.
    train_iter = data.train_iterator(start_step)
    log_every = int(config.train.get("log_every", 50))
    ckpt_every = int(config.train.get("checkpoint_every", 0) or 0)
    eval_every = int(config.evals.get("every", 0) or 0)
    history: list[dict[str, Any]] = []
    train_metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    progress = _progress_bar(
        start_step, total_steps, enabled=main and config.train.get("progress_bar", True)
    )
    tick, tick_step = time.perf_counter(), start_step
    for step in range(start_step + 1, total_steps + 1):
        batch = sharding.put_batch(next(train_iter), mesh)
        state, metrics = p_train_step(state, batch, train_rng)
        history.append(metrics)
        last = step == total_steps
        if _is_every(step, log_every) or last:
            train_metrics = _mean_metrics(history)
            now = time.perf_counter()
            train_metrics["steps_per_sec"] = (step - tick_step) / max(now - tick, 1e-9)
            tick, tick_step = now, step
            writer.write(step, "train", train_metrics)
            history = []
            progress.set_postfix(loss=f"{train_metrics['loss']:.4f}", refresh=False)
        progress.update(1)
        evaluated = _is_every(step, eval_every) or last
        if evaluated:
            eval_metrics = run_eval(state, step)
        if evaluated or _is_every(step, ckpt_every) or last:
            checkpointing.save(manager, step, state, eval_metrics if evaluated else None)
    progress.close()
    if start_step >= total_steps and restored is not None:
        logger.info("nothing to train: checkpoint step %d >= %d steps", start_step, total_steps)
        eval_metrics = (manager.metrics(start_step) or {}) if start_step else {}
    manager.wait_until_finished()
    writer.flush()
    writer.close()
    best_metric = config.train.get("best_metric", checkpointing.DEFAULT_BEST_METRIC)
    result = {
        "step": int(jax.device_get(state.step)),
        "train_metrics": train_metrics,
        "eval_metrics": dict(eval_metrics),
        "eval_split": eval_split,
        "checkpoint_dir": str(manager.directory),
        "best_step": checkpointing.best_step(
            manager, best_metric, config.train.get("best_mode", "max")
        ),
        "workdir": os.path.abspath(workdir),
    }
    if chance is not None:
        result["random_baseline"] = chance
    manager.close()
    return result


def _progress_bar(start: int, total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=start,
        disable=not enabled,
        unit="step",
        dynamic_ncols=True,
        desc="train",
    )
