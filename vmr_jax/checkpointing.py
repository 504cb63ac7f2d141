"""Checkpoints in the workdir: orbax ``CheckpointManager``, restore-or-init, keep best.

Layout of a workdir::

    DIR/config.json            the full config of the run (``vmr-jax eval`` rebuilds from it)
    DIR/checkpoints/<step>/    orbax checkpoints of the train state (params, batch_stats,
                               opt_state, step); eval metrics are stored with the steps that
                               were evaluated
    DIR/metrics.jsonl, DIR/tensorboard/   logs (``metrics_writer``)

Saves are asynchronous (training continues while the arrays are written).  Kept: the last
``config.train.keep`` steps plus the best evaluated step by ``config.train.best_metric``
(default ``'R@1,IoU=0.5'``, higher is better unless ``best_mode='min'``).  Restoring targets
the sharded abstract state, so each device reads only its own shards.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
DEFAULT_BEST_METRIC = "R@1,IoU=0.5"


class _QuietUnevaluatedSaves(logging.Filter):
    """Drops orbax's warning for saves without metrics (only evaluated steps carry them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietUnevaluatedSaves())


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes ``config.json`` in the workdir (main process only); returns its path."""
    path = os.path.join(workdir, CONFIG_FILE)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
            f.write("\n")
    return path


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config saved by ``save_config`` (lists stand in for tuples), locked."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir!r} a vmr-jax training workdir?")
    with open(path, encoding="utf-8") as f:
        config = ml_collections.ConfigDict(json.load(f))
    config.lock()
    return config


def _best_metric_fn(name: str):
    def metric(metrics: Mapping[str, Any]) -> float:
        return float(metrics[name])

    return metric


def create_checkpoint_manager(
    workdir: str, train_config: Mapping[str, Any], *, read_only: bool = False
) -> ocp.CheckpointManager:
    """Manager over ``DIR/checkpoints`` keeping the last ``keep`` steps and the best one."""
    name = train_config.get("best_metric", DEFAULT_BEST_METRIC)
    mode = train_config.get("best_mode", "max")
    if mode not in ("max", "min"):
        raise ValueError(f"train.best_mode must be 'max' or 'min', got {mode!r}")
    keep = int(train_config.get("keep", 2))
    preservation = policies.AnyPreservationPolicy(
        [
            policies.LatestN(n=keep),
            policies.BestN(
                get_metric_fn=_best_metric_fn(name),
                reverse=mode == "min",
                n=1,
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation,
        # best_fn makes the manager store the metrics with each step (read by best_step).
        best_fn=_best_metric_fn(name),
        best_mode=mode,
        enable_async_checkpointing=bool(train_config.get("async_checkpointing", True)),
        create=not read_only,
        read_only=read_only,
        save_interval_steps=0 if read_only else 1,
    )
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def best_step(manager: ocp.CheckpointManager, metric: str, mode: str = "max") -> int | None:
    """Kept step with the best ``metric`` among those saved with metrics (None if none)."""
    scored = []
    for step in manager.all_steps():
        metrics = manager.metrics(step)
        if metrics and metric in metrics:
            scored.append((float(metrics[metric]), step))
    if not scored:
        return None
    return (max(scored) if mode == "max" else min(scored))[1]


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    metrics: Mapping[str, float] | None = None,
) -> bool:
    """Starts an asynchronous save of ``state`` at ``step`` (with eval ``metrics`` if any)."""
    if metrics is not None:
        metrics = {k: float(v) for k, v in metrics.items()}
    return manager.save(int(step), args=ocp.args.StandardSave(state), metrics=metrics, force=True)


def abstract_like(state: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct`` tree with shardings: the restore target of ``state``'s shape."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    """State saved at ``step``, placed with the shardings of ``abstract_state``."""
    if step not in manager.all_steps():
        raise FileNotFoundError(
            f"no checkpoint at step {step} in {manager.directory}; "
            f"available: {list(manager.all_steps())}"
        )
    return manager.restore(int(step), args=ocp.args.StandardRestore(abstract_state))


def restore_or_init(
    manager: ocp.CheckpointManager, abstract_state: Any, init_fn
) -> tuple[Any, int | None]:
    """Latest checkpoint restored into ``abstract_state``, else ``init_fn()``.

    Returns ``(state, restored_step)``, ``restored_step`` None for a fresh start.
    """
    step = manager.latest_step()
    if step is None:
        return init_fn(), None
    return restore(manager, step, abstract_state), step


def select_step(manager: ocp.CheckpointManager, train_config: Mapping[str, Any], step) -> int:
    """``step`` (an int), ``'best'`` (by ``train.best_metric``) or None (the latest) as a kept
    step of ``manager``; FileNotFoundError naming the folder when there is none."""
    if step is None:
        chosen = manager.latest_step()
    elif step == "best":
        chosen = best_step(
            manager,
            train_config.get("best_metric", DEFAULT_BEST_METRIC),
            train_config.get("best_mode", "max"),
        )
        if chosen is None:  # no evaluated step kept: the latest is the best we have
            chosen = manager.latest_step()
    else:
        chosen = int(step)
    if chosen is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    if chosen not in manager.all_steps():
        raise FileNotFoundError(
            f"no checkpoint at step {chosen} in {manager.directory}; "
            f"available: {list(manager.all_steps())}"
        )
    return int(chosen)


def restore_variables(path: str, sharding: Any, expected: Any = None) -> dict[str, Any]:
    """The model variables (``params`` and, when saved, ``batch_stats``) of the train state
    saved at ``path`` (``checkpoints/<step>``), each leaf placed with ``sharding``; the
    optimiser moments are never read.

    The checkpoint's own tree is restored (a family may create parameters only for inputs it
    saw, e.g. FVMR's teacher without semantic role trees).  ``expected``: the model's abstract
    variables; a leaf present in both with another shape is an error naming it and both
    shapes (a config that does not match the checkpoint)."""
    item = os.path.join(path, "default")
    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(item)
        tree = getattr(metadata, "item_metadata", metadata)
        target = {
            name: jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding),
                tree[name],
            )
            for name in ("params", "batch_stats")
            if name in tree and tree[name]
        }
        if expected is not None:
            _check_shapes(target, expected, path)
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        return checkpointer.restore(
            item,
            args=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=True
            ),
        )


def _check_shapes(saved: Any, expected: Any, path: str) -> None:
    flat_expected = {
        jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(expected)
    }
    for key, leaf in jax.tree_util.tree_leaves_with_path(saved):
        want = flat_expected.get(jax.tree_util.keystr(key))
        if want is not None and tuple(want.shape) != tuple(leaf.shape):
            raise ValueError(
                f"{path}: variable {jax.tree_util.keystr(key)} has shape {tuple(leaf.shape)} "
                f"in the checkpoint but {tuple(want.shape)} in the model of config.json"
            )
