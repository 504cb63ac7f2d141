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

Faults (each a :class:`vmr_jax.errors.UserError`, one line on the command line):

* A workdir belongs to its config (:func:`claim_workdir`): training another model, shape or
  benchmark into it is refused before anything is written; ``config.json`` is replaced
  atomically (temporary file + ``os.replace``), so a killed write never leaves half a file.
* A damaged checkpoint (a truncated or missing file) is a :class:`CheckpointError` naming the
  step, the damage and the intact steps; training resumes from the newest step that restores
  (:func:`restore_or_init`) and logs each step it skipped and why.
* A failed save (disk full, permissions) is reported by :func:`check_saves` at the next step
  as a :class:`CheckpointError` naming the step and the OS error; orbax writes each step into
  a temporary folder renamed only when complete, and leftover temporary folders are removed
  when a manager opens the workdir, so a partial save never counts as a checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from vmr_jax.errors import CheckpointError, WorkdirMismatch

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
DEFAULT_BEST_METRIC = "R@1,IoU=0.5"


class _QuietOrbax(logging.Filter):
    """Drops orbax's warning for saves without metrics (only evaluated steps carry them) and
    its ERROR records with tracebacks: every save or restore failure is raised by this module
    as one :class:`CheckpointError` whose cause chain (``--debug``) holds the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "did not provide metrics" in record.getMessage():
            return False
        return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


logging.getLogger("absl").addFilter(_QuietOrbax())


class _QuietOrphanedWrites(logging.Filter):
    """Drops asyncio's 'exception was never retrieved' reports of the parallel TensorStore
    writes of a failed save (one per array, at exit): the save's failure is raised once."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "exception was never retrieved" not in record.getMessage():
            return True
        return "OCDBT" not in str(record.exc_info[1] if record.exc_info else record.msg)


logging.getLogger("asyncio").addFilter(_QuietOrphanedWrites())


def _is_closed_loop_post(kind, value, tb) -> bool:
    if kind is not RuntimeError or str(value) != "Event loop is closed":
        return False
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "call_soon_threadsafe":
            return True
        tb = tb.tb_next
    return False


def _quiet_closed_loop_callbacks() -> None:
    """After a failed TensorStore write or read, orbax's event loop closes while TensorStore
    threads still post their results to it; each post reports a 'RuntimeError: Event loop is
    closed' traceback as an unraisable exception (hundreds of them on a full disk).  The
    failure itself is raised once; these hooks drop exactly those reports."""
    previous = sys.unraisablehook
    if getattr(previous, "_vmr_quiet_loop", False):
        return

    def unraisable_hook(unraisable):
        if not _is_closed_loop_post(
            unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback
        ):
            previous(unraisable)

    unraisable_hook._vmr_quiet_loop = True
    sys.unraisablehook = unraisable_hook


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes ``config.json`` in the workdir (main process only) atomically: a temporary file
    in the same folder, then ``os.replace``; returns its path."""
    path = os.path.join(workdir, CONFIG_FILE)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(config.to_json_best_effort(indent=2, sort_keys=True))
                f.write("\n")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return path


# Fields that make a workdir's checkpoints and logs belong to one run: the whole model section
# (shapes and what the parameters mean) and what identifies the benchmark and its inputs.
# Everything else (optimiser, schedule, step counts, eval cadence, mesh, paths) may change
# between runs of one workdir.
WORKDIR_IDENTITY = (
    "model",
    "data.name",
    "data.features",
    "data.num_input_clips",
    "data.text_mode",
    "data.tokenizer",
    "data.vocab_size",
    "data.sentencepiece_model",
    "data.subtitles",
    "data.subtitle_words",
    "data.max_subtitle_words",
    "data.max_subtitle_sentences",
    "data.synthetic",
    # How query words become vectors (official MGPN / 2D-TAN text mode); a config.json written
    # before these fields existed holds their defaults (DATA_DEFAULTS), which is what it ran.
    "data.word_split",
    "data.glove_missing",
)
# Identity fields added after workdirs were first written: absent means this default.
_IDENTITY_DEFAULTS = {"data.word_split": "letters", "data.glove_missing": "zero"}


def _flatten(tree: Any, prefix: str) -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}"))
        return out
    return {prefix: tree}


def _identity(config_dict: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in WORKDIR_IDENTITY:
        node: Any = config_dict
        for part in path.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is None:
            node = _IDENTITY_DEFAULTS.get(path)
        if node is not None:
            out.update(_flatten(node, path))
    return out


_NAMES = ("model.name", "data.name")  # listed first: the differences that explain the rest


def _built_model_values(saved: Mapping[str, Any], fields: list[str]) -> dict[str, Any]:
    """``{"model.<f>": value}``: the value each model field ``f`` absent from an older
    ``config.json`` takes when today's code builds that run's model (the module's own default,
    e.g. ``bn_groups`` 1 for an MGPN run written before the field existed), as JSON.  Empty
    where the saved model section cannot be built."""
    from vmr_jax.models import get_family

    section = saved.get("model") if isinstance(saved, Mapping) else None
    try:
        module = get_family(section["name"]).create_model(ml_collections.ConfigDict(section))
    except Exception:  # an unknown family or a model section today's code refuses
        return {}
    out = {}
    for key in fields:
        name = key[len("model.") :]
        if "." not in name and hasattr(module, name):
            out[key] = json.loads(json.dumps(getattr(module, name), default=list))
    return out


def workdir_differences(saved: Mapping[str, Any], config: ml_collections.ConfigDict) -> list:
    """``[(field, saved value, new value), ...]`` over :data:`WORKDIR_IDENTITY` (values
    compared as JSON, so tuples equal the lists ``config.json`` holds).  A model field that
    the saved ``config.json`` lacks (added to the family after the run was written) counts as
    the value the run's model is built with today, so ``--config.model.bn_groups=1`` resumes
    an MGPN workdir written before ``bn_groups`` existed, and ``bn_groups=4`` is refused."""
    new = _identity(json.loads(config.to_json_best_effort()))
    old = _identity(saved)
    added = [k for k in new if k.startswith("model.") and k not in old]
    if added:
        old.update(_built_model_values(saved, added))
    return [
        (key, old.get(key, "<absent>"), new.get(key, "<absent>"))
        for key in sorted(set(old) | set(new), key=lambda k: (k not in _NAMES, k))
        if old.get(key, "<absent>") != new.get(key, "<absent>")
    ]


def claim_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Makes ``workdir`` this config's, or refuses before anything is written.

    A new or empty workdir is claimed; one whose ``config.json`` agrees on
    :data:`WORKDIR_IDENTITY` is resumed (its ``config.json`` replaced by this config); one
    trained with another model, shape or benchmark, or one holding checkpoints but no
    ``config.json``, raises :class:`WorkdirMismatch` saying what differs.  Returns the path of
    the (atomically) written ``config.json``."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirMismatch(f"workdir {workdir!r} is a file, not a folder")
    path = os.path.join(workdir, CONFIG_FILE)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError) as err:
            raise WorkdirMismatch(
                f"{path} cannot be read ({err}); move the workdir away or delete it"
            ) from err
        differences = workdir_differences(saved, config)
        if differences:
            listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in differences[:6])
            more = f" (and {len(differences) - 6} more)" if len(differences) > 6 else ""
            raise WorkdirMismatch(
                f"workdir {workdir} belongs to another run: {listed}{more}. Its checkpoints "
                "would not fit this config; train into a new --workdir (or delete this one "
                "to start over)"
            )
    elif _has_steps(workdir):
        raise WorkdirMismatch(
            f"workdir {workdir} holds checkpoints but no {CONFIG_FILE}: not a vmr-jax "
            "training workdir of this config; train into a new --workdir"
        )
    return save_config(config, workdir)


def _has_steps(workdir: str) -> bool:
    folder = checkpoint_dir(workdir)
    return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


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
    _quiet_closed_loop_callbacks()
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation,
        # best_fn makes the manager store the metrics with each step (read by best_step).
        best_fn=_best_metric_fn(name),
        best_mode=mode,
        enable_async_checkpointing=bool(train_config.get("async_checkpointing", True)),
        create=not read_only,
        read_only=read_only,
        # A killed or failed save leaves a temporary folder: removed when training reopens.
        cleanup_tmp_directories=not read_only,
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
    """Starts an asynchronous save of ``state`` at ``step`` (with eval ``metrics`` if any).

    The previous save's failure, or this one's synchronous part (the temporary folder, the
    metadata), is raised as a :class:`CheckpointError` (:func:`save_error`)."""
    if metrics is not None:
        metrics = {k: float(v) for k, v in metrics.items()}
    try:
        manager.wait_until_finished()  # orbax waits here anyway; a failure is the last save's
    except Exception as err:
        raise save_error(manager, step, err) from err
    manager._vmr_last_save = int(step)  # named by save_error if this save fails
    try:
        return manager.save(
            int(step), args=ocp.args.StandardSave(state), metrics=metrics, force=True
        )
    except Exception as err:
        raise save_error(manager, step, err) from err


def abstract_like(state: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct`` tree with shardings: the restore target of ``state``'s shape."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )


_OS_ERROR = re.compile(r'"([^"]+)": [^:"]*?: ([^:"\[]+?) \[os_error_code=\'(\d+)\'\]')


def describe_failure(err: BaseException) -> str:
    """One line for an orbax / TensorStore failure: its innermost cause's first line (that is
    where the file and the damage are named), TensorStore's spec dump cut off; an OS error
    inside a TensorStore message as ``[Errno N] text: file``."""
    inner = err
    while inner.__cause__ is not None or inner.__context__ is not None:
        inner = inner.__cause__ or inner.__context__
    text = (str(inner).strip().splitlines() or [type(inner).__name__])[0]
    text = text.split(" See full TensorStore details")[0]
    found = _OS_ERROR.search(text)
    if found:
        path, message, code = found.groups()
        return f"[Errno {code}] {message.strip()}: {path}"
    if isinstance(inner, OSError) and inner.errno is not None:
        return str(inner)[:400]
    return f"{type(inner).__name__}: {text}"[:400]


class _QuietUnraisable:
    """While active, drops the 'Exception ignored in <coroutine ...>' reports that orbax's
    reads of a damaged checkpoint leave behind (the failure itself is raised once)."""

    def __enter__(self):
        self._hook = sys.unraisablehook

        def hook(unraisable):
            name = getattr(getattr(unraisable, "object", None), "__qualname__", "")
            if not name.startswith("_read"):
                self._hook(unraisable)

        sys.unraisablehook = hook
        return self

    def __exit__(self, *exc):
        sys.unraisablehook = self._hook
        return False


def _restore_step(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    try:
        with _QuietUnraisable(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return manager.restore(int(step), args=ocp.args.StandardRestore(abstract_state))
    except Exception as err:  # orbax raises many types for one cause: a damaged step
        raise CheckpointError(
            f"checkpoint step {step} in {manager.directory} cannot be restored: "
            f"{describe_failure(err)}"
        ) from err


def intact_steps(directory: str, steps, exclude: int | None = None) -> list[int]:
    """The ``steps`` of the checkpoint folder ``directory`` whose whole saved tree reads back
    (arrays to host memory); ``exclude`` is not tried.  For error messages: it reads every
    checked step in full."""
    intact = []
    for step in sorted(steps):
        if step == exclude:
            continue
        item = os.path.join(str(directory), str(step), "default")
        try:
            with _QuietUnraisable(), warnings.catch_warnings(), ocp.PyTreeCheckpointer() as c:
                warnings.simplefilter("ignore")
                c.restore(item)
        except Exception:  # noqa: BLE001 - any failure means "not intact"
            continue
        intact.append(int(step))
    return intact


def _damage_error(manager_dir: str, step: int, steps, err: CheckpointError) -> CheckpointError:
    intact = intact_steps(manager_dir, steps, exclude=step)
    hint = (
        f"intact steps: {intact} (choose one with --step N)" if intact else "no other step restores"
    )
    return CheckpointError(f"{err}; {hint}")


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    """State saved at ``step``, placed with the shardings of ``abstract_state``.

    A step that is not kept is a FileNotFoundError listing the kept ones; a damaged one a
    :class:`CheckpointError` naming the damage and the intact steps."""
    steps = list(manager.all_steps())
    if step not in steps:
        raise FileNotFoundError(
            f"no checkpoint at step {step} in {manager.directory}; available: {steps}"
        )
    try:
        return _restore_step(manager, step, abstract_state)
    except CheckpointError as err:
        raise _damage_error(str(manager.directory), step, steps, err) from err.__cause__


def restore_or_init(
    manager: ocp.CheckpointManager, abstract_state: Any, init_fn
) -> tuple[Any, int | None]:
    """The newest checkpoint that restores into ``abstract_state``, else ``init_fn()``.

    A damaged newer step is skipped with a warning naming it and the damage, and moved to
    ``WORKDIR/damaged_checkpoints/<step>`` (kept for inspection, out of the way of the step
    that will be saved again).  When steps exist but none restores, a
    :class:`CheckpointError` lists each one's damage: starting afresh would replace them.
    Returns ``(state, restored_step)``, ``restored_step`` None for a fresh start."""
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        return init_fn(), None
    failures = []
    for step in steps:
        try:
            state = _restore_step(manager, step, abstract_state)
        except CheckpointError as err:
            logger.warning("skipped damaged checkpoint: %s", err)
            failures.append(f"step {step}: {describe_failure(err.__cause__ or err)}")
            continue
        if failures:
            skipped = steps[: len(failures)]
            moved = _set_aside(manager, skipped)
            logger.warning(
                "resuming from step %d, the newest checkpoint that restores (skipped %s, "
                "moved to %s)",
                step,
                ", ".join(str(s) for s in skipped),
                moved,
            )
        return state, step
    raise CheckpointError(
        f"no checkpoint in {manager.directory} restores ({'; '.join(failures)}); move the "
        "folder away to start the run over"
    )


DAMAGED_DIR = "damaged_checkpoints"


def _set_aside(manager: ocp.CheckpointManager, steps) -> str:
    """Moves the step folders ``steps`` to ``damaged_checkpoints/`` beside the checkpoint
    folder (a name taken already gets a numbered suffix); returns that folder."""
    root = os.path.join(os.path.dirname(str(manager.directory)), DAMAGED_DIR)
    os.makedirs(root, exist_ok=True)
    for step in steps:
        target = os.path.join(root, str(step))
        n = 1
        while os.path.exists(target):
            target, n = os.path.join(root, f"{step}.{n}"), n + 1
        os.replace(os.path.join(str(manager.directory), str(step)), target)
    manager.reload()
    return root


def check_saves(manager: ocp.CheckpointManager, step: int | None = None) -> None:
    """Raises the failure of a finished asynchronous save (disk full, permissions) as a
    :class:`CheckpointError` naming the OS error; cheap (no wait while a save is still
    writing), called once per training step."""
    try:
        manager.check_for_errors()
        if not manager.is_saving_in_progress():
            manager.wait_until_finished()  # returns at once, or raises the finished failure
    except Exception as err:  # the async thread's exception, whatever its type
        raise save_error(manager, step, err) from err


def finish_saves(manager: ocp.CheckpointManager, step: int | None = None) -> None:
    """Waits for the pending asynchronous save; its failure is a :class:`CheckpointError`
    (:func:`save_error`)."""
    try:
        manager.wait_until_finished()
        manager.check_for_errors()
    except Exception as err:  # the async thread's exception, whatever its type
        raise save_error(manager, step, err) from err


def save_error(manager: ocp.CheckpointManager, step: int | None, err: BaseException):
    """The :class:`CheckpointError` of a failed save: the step whose save failed (the last
    one started), where it was noticed, the OS error and the complete checkpoints."""
    saving = getattr(manager, "_vmr_last_save", None)
    what = f"saving the checkpoint of step {saving}" if saving is not None else "saving"
    where = f" (noticed at step {step})" if step is not None and step != saving else ""
    kept = sorted(s for s in manager.all_steps() if s != saving)
    return CheckpointError(
        f"{what} in {manager.directory} failed{where}: {describe_failure(err)}; "
        f"complete checkpoints: {kept or 'none'}. Free space (or fix the folder) and run the "
        "same command to resume"
    )


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

    def read(fn):
        # A damaged step (orbax raises many types for one cause) is a CheckpointError.
        try:
            with _QuietUnraisable(), warnings.catch_warnings(), ocp.PyTreeCheckpointer() as c:
                warnings.simplefilter("ignore")
                return fn(c)
        except Exception as err:
            folder, step = os.path.split(os.path.normpath(path))
            names = os.listdir(folder) if os.path.isdir(folder) else []
            steps = [int(n) for n in names if n.isdigit()]
            error = CheckpointError(
                f"checkpoint {path} cannot be restored: {describe_failure(err)}"
            )
            raise _damage_error(
                folder, int(step) if step.isdigit() else None, steps, error
            ) from err

    def tree_of(checkpointer):
        metadata = checkpointer.metadata(item)
        tree = getattr(metadata, "item_metadata", metadata)
        if tree is None:  # orbax reads a step without its _METADATA as None
            raise FileNotFoundError(f"no readable tree metadata in {item}")
        return tree

    tree = read(tree_of)
    target = {
        name: jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding),
            tree[name],
        )
        for name in ("params", "batch_stats")
        if name in tree and tree[name]
    }
    if expected is not None:
        _check_shapes(target, expected, path)  # a config mismatch, not damage
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    return read(
        lambda c: c.restore(
            item,
            args=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=True
            ),
        )
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
