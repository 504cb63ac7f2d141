"""One trainer for every model family: ``train_and_evaluate(config, workdir)`` in named pieces.

Sections run in a fixed order: mesh -> data -> model/optimizer -> shardings -> jitted step
-> restore -> eval -> loop.  Each is a function that notebooks and tests can call alone.
The family's declared record (:class:`vmr_jax.models.Family`) is resolved once per run and
passed down: its ``loss_fn``, ``supervision``, optimiser mask and evaluator kind.

* Optimisers and schedules: :mod:`vmr_jax.optimizers`; evaluators: :mod:`vmr_jax.evaluation.
  evaluators`; the data: :class:`data_pipelines.sources.DataSources`.
* The train state is built sharded: ``jax.eval_shape`` gives its shapes, the mesh shardings
  follow from the logical axis rules (``sharding.tree_shardings``), and ``init`` is jitted
  with those ``out_shardings``.  The train step is jitted once with explicit in/out shardings
  and the state donated.
* RNG: one key per run (``config.train.seed``); the step is folded in inside the step, so a
  resumed run draws the same dropout masks as an uninterrupted one.
* BatchNorm: train mode updates ``batch_stats``; eval uses the running statistics.  Because
  the batch is one global array sharded on ``data``, the batch statistics a model computes
  (``jnp.mean`` over the batch axis) are over the global batch under ``jit`` -- XLA inserts the
  cross-device reductions -- so results do not depend on the device count.  MGPN's and
  FVMR's ``model.bn_groups`` cuts that global batch into fixed chunks (DataParallel's
  per-GPU statistics, ``layers.batch_norm``): still independent of the device count.
* Supervision (``config.train.supervision``, :func:`training_supervision`): ``'full'`` (the
  default) trains on the ground-truth spans; ``'weak'`` (query-video pairs only) removes
  ``spans`` and ``span_mask`` from every training batch and from the sample batch the state is
  initialised on, so a model or loss that reads them in training fails with a ``KeyError``.
  Only a family whose record declares ``'weak'`` may train so.  Evaluation is the same under
  both: eval batches carry spans.  When the family declares ``candidate_moments``, the
  trainer logs the eval split's metrics under random ranking (``evaluators.chance_metrics``)
  as ``{split}_random`` at step 0, the level a weak model must beat.
* Data order on resume: the train iterator is deterministic given its seed; a resumed run
  skips the batches already consumed.
* Faults: the workdir is claimed (``checkpointing.claim_workdir``) only after the config,
  data and model were built, so a bad config writes nothing, and another run's workdir is
  refused.  A step whose loss, gradient norm or new parameters are not finite leaves the state
  as it was (the update is dropped inside the jitted step) and sets its ``nonfinite`` flag;
  the host reads each step's flag while the next step runs and stops with
  :class:`~vmr_jax.errors.TrainingDiverged` naming the step and the quantities, after the
  pending checkpoint save completes: no checkpoint ever holds non-finite values.  A failed
  asynchronous save stops the run at the next step (``checkpointing.check_saves``).  Logs are
  cut back to the restored step on resume (``MetricsWriter(resume_step=...)``) and flushed at
  every checkpoint.
* Progress: the bar counts finished steps (it trails the dispatched one by one step, the
  flag read above), and its clock starts after the first step, so compilation does not
  inflate the ETA.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from data_pipelines.sources import DataSources
from vmr_jax import checkpointing, sharding, warm_start, xla_cache
from vmr_jax.evaluation import didemo
from vmr_jax.evaluation.evaluators import chance_metrics, make_evaluator, make_state_evaluator
from vmr_jax.metrics_writer import MetricsWriter
from vmr_jax.models import Family, get_family
from vmr_jax.optimizers import family_optimizer
from vmr_jax.text import saved
from vmr_jax.train_loop import (
    NONFINITE_BITS,
    TrainLoop,
    every_steps,
    nonfinite_names,
    num_train_steps,
)

__all__ = [
    "NONFINITE_BITS",
    "DataSources",
    "TrainState",
    "abstract_train_state",
    "create_model",
    "create_train_state",
    "every_steps",
    "family_optimizer",
    "make_state_evaluator",
    "make_train_step",
    "nonfinite_names",
    "num_train_steps",
    "train_and_evaluate",
    "train_step",
    "training_supervision",
]

logger = logging.getLogger(__name__)

PyTree = Any
Batch = Mapping[str, Any]


class TrainState(train_state.TrainState):
    """Flax train state plus the BatchNorm running statistics (``{}`` if none)."""

    batch_stats: PyTree = None


# --------------------------------------------------------------------------- supervision
def training_supervision(config: ml_collections.ConfigDict, family: Family | None = None) -> str:
    """``config.train.supervision`` (``'full'`` when absent), checked against the family's
    declared ``supervision`` (:meth:`Family.check_supervision`)."""
    family = family or get_family(config.model.name)
    return family.check_supervision(config.train.get("supervision", "full"))


# --------------------------------------------------------------------------- model / state
def create_model(model_config: Mapping[str, Any]):
    """The linen module of ``config.model.name`` (registry ``vmr_jax.models.FAMILIES``)."""
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
    text: Any = None,
) -> TrainState:
    """The initial train state, built directly with its mesh shardings.

    ``jax.eval_shape`` gives the abstract state; ``state_shardings`` places it; ``init`` runs
    under ``jax.jit(..., out_shardings=...)`` so no device ever holds an unsharded copy.
    ``tx`` defaults to ``family_optimizer(config, steps_per_epoch=1)``; pass the one the
    step functions were built with (a state's static fields must be the same objects).
    ``text``: the run's ``TextInputs``, given to the family's ``init_params`` (FVMR's
    GloVe-initialised word table), whose leaves are placed with the fresh leaves' shardings.
    """
    tx = tx or family_optimizer(config, 1)[0]
    init_fn = _state_init_fn(model, tx, sample_batch)
    shardings = state_shardings(jax.eval_shape(init_fn, rng), mesh, config.mesh)
    state = jax.jit(init_fn, out_shardings=shardings)(rng)
    family = get_family(config.model.name)
    if family.init_params is None:
        return state
    filled = family.init_params(state.params, config.model, text)
    return state.replace(params=jax.tree.map(_placed_like, filled, state.params))


def _placed_like(value, fresh: jax.Array) -> jax.Array:
    if value is fresh:
        return fresh
    value = np.asarray(value, fresh.dtype)
    if value.shape != fresh.shape:
        raise ValueError(f"init_params changed a leaf's shape {fresh.shape} -> {value.shape}")
    return jax.device_put(value, fresh.sharding)


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
def train_step(
    state: TrainState,
    batch: Batch,
    rng: jax.Array,
    *,
    loss_fn: Callable,
    model_config: Any,
    schedule: optax.Schedule,
    steps_per_epoch: int,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step; returns the new state and flat scalar metrics.

    ``loss_fn`` is the family's (one signature for all): it gets ``step`` (this step's index)
    and ``steps_per_epoch`` as keywords, for losses with epoch schedules.

    Metrics: ``loss``, the model's loss parts, ``grad_norm`` (before clipping),
    ``param_norm`` (after the update), ``lr`` (used by this step) and ``nonfinite``: a bit set
    (:data:`NONFINITE_BITS`) of the quantities that were not finite.  When it is not 0 the
    returned state is the input state (the update is dropped), so parameters, optimiser
    moments and the step count never take non-finite values.
    """
    rng = jax.random.fold_in(rng, state.step)
    has_stats = bool(state.batch_stats)

    def compute_loss(params):
        variables = (
            {"params": params, "batch_stats": state.batch_stats}
            if has_stats
            else {"params": params}
        )
        outputs, updates = state.apply_fn(
            variables,
            batch,
            train=True,
            rngs={"dropout": rng},
            mutable=["batch_stats"] if has_stats else [],
        )
        loss, parts = loss_fn(
            outputs, batch, model_config, step=state.step, steps_per_epoch=steps_per_epoch
        )
        return loss, (parts, updates)

    (loss, (parts, updates)), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
    new_state = state.apply_gradients(
        grads=grads, batch_stats=updates["batch_stats"] if has_stats else state.batch_stats
    )
    metrics = {"loss": loss, **parts}
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["param_norm"] = optax.tree.norm(new_state.params)
    metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
    checks = [metrics[name] for name in NONFINITE_BITS]
    flags = [~jnp.isfinite(x) for x in checks]
    metrics["nonfinite"] = sum(f.astype(jnp.int32) << i for i, f in enumerate(flags))
    keep = metrics["nonfinite"] == 0
    new_state = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_state, state)
    return new_state, metrics


def make_train_step(
    config,
    state_sharding: PyTree,
    mesh,
    schedule: optax.Schedule,
    steps_per_epoch: int = 1,
    family: Family | None = None,
):
    """``train_step`` bound to the family's ``loss_fn`` and jitted with shardings, state
    donated."""
    family = family or get_family(config.model.name)
    step = functools.partial(
        train_step,
        loss_fn=family.loss_fn,
        model_config=config.model,
        schedule=schedule,
        steps_per_epoch=int(steps_per_epoch),
    )
    rep = sharding.replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(state_sharding, sharding.batch_sharding(mesh), rep),
        out_shardings=(state_sharding, rep),
        donate_argnums=0,
    )


# --------------------------------------------------------------------------- loop
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming from its newest checkpoint that restores),
    evaluating every ``config.evals.every`` steps (or ``every_epochs`` epochs:
    :func:`every_steps`) and at the end.

    Nothing is written into ``workdir`` until the config, data and model have been built and
    the workdir is known to be this run's (``checkpointing.claim_workdir``).  Raises
    :class:`~vmr_jax.errors.TrainingDiverged` at a non-finite step and
    :class:`~vmr_jax.errors.CheckpointError` when a save fails or no checkpoint restores.

    Returns ``{'step', 'train_metrics', 'eval_metrics', 'eval_split', 'checkpoint_dir',
    'best_step', 'workdir'}``, and ``'random_baseline'`` when :func:`chance_metrics` gives one.
    """
    main = sharding.is_main_process()
    xla_cache.enable()

    # Mesh.
    mesh = sharding.make_mesh(config.mesh)
    logger.info("mesh %s over %d devices", dict(mesh.shape), mesh.size)

    # Data.
    family = get_family(config.model.name)
    if family.resolve_config is not None:
        family.resolve_config(config)  # refuses, or fills derived fields, before any reading
    supervision = training_supervision(config, family)
    logger.info("supervision %r", supervision)
    data = DataSources(config)
    steps_per_epoch = data.steps_per_epoch()
    total_steps = num_train_steps(config, steps_per_epoch)
    eval_split = config.evals.get("split", "val")
    data.prepared(eval_split)  # an unknown split fails before anything is written
    if config.evals.get("protocol", "2dtan") == didemo.PROTOCOL:
        data.didemo_ground_truth(eval_split)  # a non-DiDeMo split fails before training
    sample = data.sample_batch()

    # Model and optimizer.
    model = family.create_model(config.model)
    tx, schedule = family_optimizer(config, steps_per_epoch, family)
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(int(config.train.seed)))

    # Shardings.
    abstract = abstract_train_state(config, model, init_rng, sample, mesh, tx=tx)
    state_sharding = jax.tree.map(lambda x: x.sharding, abstract)

    # Jitted steps.
    train_step_fn = make_train_step(config, state_sharding, mesh, schedule, steps_per_epoch, family)
    evaluator = make_evaluator(config, family, data, state_sharding, mesh, eval_split)
    chance = chance_metrics(config, family, data, eval_split)
    if chance is not None:
        logger.info(
            "random-proposal baseline on %s: %s",
            eval_split,
            ", ".join(f"{k} {v:.4f}" for k, v in chance.items()),
        )

    # The previous stage's parameters (stage-wise training), read before anything is written.
    warm = _init_from(config, mesh)

    # The config is valid: the workdir becomes this run's (or is refused, untouched).
    if main:
        checkpointing.claim_workdir(config, workdir)
        # Inference reads the text encoder from the workdir, not the training data.
        saved.save_text_inputs(data.datasets.text, workdir)

    # Restore or initialise.
    manager = checkpointing.create_checkpoint_manager(workdir, config.train)
    try:
        state, restored = checkpointing.restore_or_init(
            manager,
            abstract,
            lambda: create_train_state(
                config, model, init_rng, sample, mesh, tx=tx, text=data.datasets.text
            ),
        )
    except BaseException:
        manager.close()
        raise
    if restored is None and warm is not None:
        state = warm_start.apply(state, warm, family, config.model)
    start_step = int(jax.device_get(state.step))
    writer = MetricsWriter(workdir, resume_step=start_step)
    if restored is not None:
        logger.info("resumed from %s at step %d", manager.directory, start_step)
    else:
        writer.write_text(0, "config", config.to_json_best_effort(indent=2))
        if chance is not None:
            writer.write(0, f"{eval_split}_random", chance)

    loop = TrainLoop(config, manager, writer, total_steps, steps_per_epoch, start_step, main)
    try:
        state, train_metrics, eval_metrics = loop.run(
            state,
            data.train_iterator(start_step),
            train_step_fn,
            train_rng,
            mesh,
            lambda state, step: _run_eval(evaluator, writer, eval_split, state, step),
        )
        if start_step >= total_steps and restored is not None:
            logger.info("nothing to train: checkpoint step %d >= %d steps", start_step, total_steps)
            eval_metrics = (manager.metrics(start_step) or {}) if start_step else {}
        checkpointing.finish_saves(manager)
        mined = _mine_hard_negatives(config, family, model, state, data, mesh, workdir)
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
        if mined:
            result["hard_negatives"] = mined
    finally:
        loop.close()
        writer.close()
        manager.close()
    if chance is not None:
        result["random_baseline"] = chance
    return result


def _init_from(config: ml_collections.ConfigDict, mesh) -> warm_start.Loaded | None:
    """The parameters of ``train.init_from`` (None without it); with mined hard negatives, of
    the checkpoint they were mined with, so the frozen retriever is the one that chose them."""
    from data_pipelines import hard_negatives

    workdir = config.train.get("init_from", "")
    if not workdir:
        return None
    step = None
    path = config.data.get("hard_negatives", "")
    if path:
        step = hard_negatives.load(path).checkpoint_step
    return warm_start.load(workdir, mesh, step)


def _mine_hard_negatives(config, family, model, state, data, mesh, workdir) -> str | None:
    """With ``train.mine_hard_negatives = N`` (> 0), each training query's top ``N`` videos by
    the trained model's stage-1 score, saved in ``WORKDIR/hard_negatives/`` (the next stage's
    input); returns the file, or None."""
    from data_pipelines import hard_negatives
    from vmr_jax.retrieval import mining

    top = int(config.train.get("mine_hard_negatives", 0) or 0)
    if top <= 0:
        return None
    stages = family.corpus(model, config.model)
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    found = mining.mine_hard_negatives(
        stages,
        variables,
        data.prepared("train"),
        mesh,
        top=top,
        batch_size=int(config.evals.get("batch_size", 64)),
        split="train",
        checkpoint_step=int(jax.device_get(state.step)),
    )
    if not sharding.is_main_process():
        return None
    path = found.save(os.path.join(workdir, hard_negatives.DEFAULT_DIRNAME))
    logger.info(
        "mined the top %d videos of %d training queries: %s", top, len(found.query_ids), path
    )
    return str(path)


def _run_eval(evaluator, writer: MetricsWriter, split: str, state, step: int) -> dict:
    metrics, _ = evaluator.run(state)
    writer.write(step, split, metrics)
    return metrics
