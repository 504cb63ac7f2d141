"""``config.train.init_from``: start a run from another workdir's parameters (stage-wise training).

A family trained stage by stage (PREM: the retriever, then the localizer) declares which
parameters a stage trains (``Family.trainable``); the others are frozen and must come from the
previous stage.  :func:`load` restores a checkpoint of that stage's workdir with the workdir's
own ``config.json`` (its model, optimiser and mesh shapes: nothing of the new run is assumed),
before the new workdir is claimed, so a bad ``init_from`` writes nothing.  :func:`apply` copies
the frozen leaves into a freshly initialised state (all leaves for a family without
``trainable``: a plain fine-tuning start); every copied leaf must exist in the loaded
parameters with the same shape, else one :class:`~vmr_jax.errors.UserError` line names it.
A resumed run restores its own checkpoint and never reads ``init_from`` again.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
from flax import traverse_util

from vmr_jax import checkpointing
from vmr_jax.errors import UserError
from vmr_jax.models import Family, get_family

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Loaded:
    """Parameters of ``workdir``'s checkpoint ``step``."""

    workdir: str
    step: int
    params: Any


def load(workdir: str, mesh, step: int | None = None) -> Loaded:
    """Restores checkpoint ``step`` (default: the latest) of ``workdir`` and keeps its params."""
    from vmr_jax.optimizers import family_optimizer
    from vmr_jax.trainer import abstract_train_state

    try:
        config = checkpointing.load_config(workdir)
    except FileNotFoundError as err:
        raise UserError(f"config.train.init_from={workdir!r}: {err}") from None
    family = get_family(config.model.name)
    model = family.create_model(config.model)
    tx, _ = family_optimizer(config, 1, family)
    sample = family.example_batch(config.model, 1)
    rng = jax.random.split(jax.random.PRNGKey(int(config.train.seed)))[0]
    abstract = abstract_train_state(config, model, rng, sample, mesh, tx=tx)
    manager = checkpointing.create_checkpoint_manager(workdir, config.train, read_only=True)
    try:
        steps = list(manager.all_steps())
        chosen = max(steps) if step is None and steps else step
        if chosen is None:
            raise UserError(
                f"config.train.init_from={workdir!r}: no checkpoint in {manager.directory}"
            )
        if chosen not in steps:
            raise UserError(
                f"config.train.init_from={workdir!r}: no checkpoint of step {chosen} "
                f"(kept: {sorted(steps)})"
            )
        state = checkpointing.restore(manager, int(chosen), abstract)
    finally:
        manager.close()
    return Loaded(workdir, int(chosen), state.params)


def apply(state, loaded: Loaded, family: Family, model_config) -> Any:
    """``state`` with its frozen leaves (all leaves without ``family.trainable`` or when it
    freezes none, e.g. FVMR's word table left trainable) taken from ``loaded``; a missing leaf
    or another shape is a UserError naming the leaf."""
    fresh = traverse_util.flatten_dict(state.params, sep="/")
    source = traverse_util.flatten_dict(loaded.params, sep="/")
    if family.trainable is None:
        take = dict.fromkeys(fresh, True)
    else:
        marks = traverse_util.flatten_dict(family.trainable(state.params, model_config), sep="/")
        take = {path: not trains for path, trains in marks.items()}
        if not any(take.values()):  # this config freezes nothing: a plain fine-tuning start
            take = dict.fromkeys(fresh, True)
    merged = {}
    for path, value in fresh.items():
        if not take[path]:
            merged[path] = value
            continue
        if path not in source:
            raise UserError(
                f"config.train.init_from={loaded.workdir!r} (step {loaded.step}) has no parameter "
                f"{path!r}, which this run takes from it: a workdir of another model?"
            )
        if source[path].shape != value.shape:
            raise UserError(
                f"config.train.init_from={loaded.workdir!r} (step {loaded.step}): parameter "
                f"{path!r} has shape {tuple(source[path].shape)}, this run's is "
                f"{tuple(value.shape)}: the two configs build different models"
            )
        merged[path] = jax.device_put(source[path], value.sharding)
    copied = sum(take.values())
    logger.info(
        "initialised %d of %d parameter arrays from %s (step %d)",
        copied,
        len(fresh),
        loaded.workdir,
        loaded.step,
    )
    return state.replace(params=traverse_util.unflatten_dict(merged, sep="/"))
