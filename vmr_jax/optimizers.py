"""Optimisers and learning-rate schedules of the official recipes, by ``config.train``.

* ``'adam'`` (MGPN's official ``lib/core/config`` + ``train.py``): Adam (lr ``1e-3``, betas
  0.9/0.999, no weight decay) after global grad-norm clipping (``grad_clip_norm``), learning
  rate multiplied by ``gamma`` at every milestone (PyTorch ``MultiStepLR``, stepped once per
  epoch; here the milestones become step boundaries, :func:`lr_schedule`).
* ``'bert_adam'`` (TVRetrieval's ``BertAdam``, XML): per-tensor clipping, Adam moments
  without bias correction, decoupled weight decay, ``warmup_linear`` schedule.
* ``'adamw'`` (Cascaded MPN's "AdamW, 3e-5, weight decay 0.01"; PyTorch ``torch.optim.AdamW``
  defaults: eps 1e-8, bias-corrected moments): decoupled weight decay on the family's mask,
  optional global grad-norm clipping, the multi-step schedule of ``'adam'`` (constant when
  ``milestones`` is empty).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vmr_jax.models import Family, get_family

PyTree = Any

OPTIMIZERS = ("adam", "adamw", "bert_adam")

# When the official loop calls PyTorch's ``scheduler.step()``, relative to the epoch's
# optimiser steps: the number of epochs a milestone's decay comes early.
SCHEDULER_STEPS = {"epoch_start": 1, "epoch_end": 0}


def lr_schedule(train_config: Mapping[str, Any], steps_per_epoch: int) -> optax.Schedule:
    """PyTorch's ``MultiStepLR`` stepped once per epoch, as a function of the optimiser step.

    ``MultiStepLR`` leaves ``last_epoch = 0`` after construction, adds 1 at every
    ``scheduler.step()`` and sets the rate to ``lr * gamma ** (number of milestones <=
    last_epoch)``.  ``train.scheduler_step`` says where the official loop calls ``step()``:

    * ``'epoch_start'`` (default; MGPN's ``lib/core/engine.py``, whose ``Engine.train`` calls
      it before the epoch's first optimiser step): 0-indexed epoch ``e`` runs with
      ``last_epoch = e + 1``, so milestone ``m`` lowers the rate from epoch ``m - 1``
      (MILESTONES [5, 8] -> epochs 4 and 7).
    * ``'epoch_end'`` (PyTorch's documented loop, ``step()`` after the epoch): epoch ``e`` runs
      with ``last_epoch = e``; milestone ``m`` lowers the rate from epoch ``m``.

    The rate of optimiser step ``s`` (0-indexed) is that of epoch ``s // steps_per_epoch``.
    """
    rule = train_config.get("scheduler_step", "epoch_start")
    if rule not in SCHEDULER_STEPS:
        raise ValueError(
            f"config.train.scheduler_step must be one of {tuple(SCHEDULER_STEPS)}, got {rule!r}"
        )
    boundaries: dict[int, float] = {}
    for milestone in train_config.get("milestones", ()):
        epoch = max(int(milestone) - SCHEDULER_STEPS[rule], 0)
        step = epoch * int(steps_per_epoch)
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
    * ``'adamw'`` (Cascaded MPN): as ``'adam'`` plus decoupled weight decay ``weight_decay``
      (0.01) on the leaves of ``decay_mask(params)``; ``eps`` 1e-8 (PyTorch's AdamW).
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
    if kind == "adamw":
        parts.append(
            optax.adamw(
                schedule,
                b1=b1,
                b2=b2,
                eps=float(train_config.get("eps", 1e-8)),
                weight_decay=float(train_config.get("weight_decay", 0.01)),
                mask=decay_mask or default_decay_mask,
            )
        )
    else:
        parts.append(optax.adam(schedule, b1=b1, b2=b2))
    return optax.chain(*parts), schedule


def family_optimizer(
    config: ml_collections.ConfigDict, steps_per_epoch: int, family: Family | None = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """:func:`create_optimizer` with the family's declared ``weight_decay_mask`` (None: the
    default mask).  ``family`` defaults to the record of ``config.model.name``."""
    family = family or get_family(config.model.name)
    tx, schedule = create_optimizer(config.train, steps_per_epoch, family.weight_decay_mask)
    if family.trainable is not None:
        tx = freeze_untrainable(tx, lambda params: family.trainable(params, config.model))
    return tx, schedule


def freeze_untrainable(
    tx: optax.GradientTransformation, trainable: Callable[[PyTree], PyTree]
) -> optax.GradientTransformation:
    """``tx`` on the leaves where ``trainable(params)`` is True; zero updates (so no weight
    decay and no optimiser moments) on the others: a stage of stage-wise training."""

    def labels(params):
        return jax.tree.map(lambda t: "train" if t else "frozen", trainable(params))

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
