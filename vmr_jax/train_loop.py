"""The training loop of :func:`vmr_jax.trainer.train_and_evaluate`: steps, logs, evals,
checkpoints, the non-finite check and the progress bar.

* Each step's ``nonfinite`` flag (bits :data:`NONFINITE_BITS`, set inside the jitted step,
  which then drops the update) is read while the next step runs -- one step in flight, so
  the device never idles on the read -- and synchronously before a log, an eval or a save.
  A set flag raises :class:`~vmr_jax.errors.TrainingDiverged` after the pending save
  completes, so no checkpoint ever holds non-finite values.
* The progress bar counts finished steps, not dispatched ones.  Without the per-step read,
  JAX's asynchronous dispatch let the Python loop run ahead of the device until the next
  log step's ``device_get``, where the bar froze while the queued steps ran; and its clock
  included the first step's compilation, so the first ETA was hours.  Now the bar trails the
  dispatched step by one and its clock restarts after the first step.
* A failed asynchronous save is looked for at every step (``checkpointing.check_saves``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from vmr_jax import checkpointing, sharding
from vmr_jax.errors import TrainingDiverged

# The quantities a step checks, in the bit order of its ``nonfinite`` metric.  A non-finite
# gradient (or an overflowing update) shows in the global norm, so three scalars cover every
# leaf.
NONFINITE_BITS = ("loss", "grad_norm", "param_norm")


def nonfinite_names(flags: int) -> list[str]:
    """The quantities named by a step's ``nonfinite`` bit set."""
    return [name for i, name in enumerate(NONFINITE_BITS) if int(flags) >> i & 1]


def every_steps(section: Mapping[str, Any], key: str, steps_per_epoch: int) -> int:
    """A cadence in steps: ``section[key + '_epochs']`` epochs (when > 0) at this run's
    ``steps_per_epoch`` (training queries // batch, so overriding the batch keeps "once per
    epoch"), else ``section[key]`` steps; 0 = never (the end of training always counts).
    Setting both is refused: which one wins would be a guess."""
    steps = int(section.get(key, 0) or 0)
    epochs = float(section.get(f"{key}_epochs", 0) or 0)
    if steps > 0 and epochs > 0:
        raise ValueError(
            f"set one of {key}={steps} (steps) and {key}_epochs={epochs} (epochs), not both"
        )
    if epochs > 0:
        return max(1, round(epochs * steps_per_epoch))
    return steps


def num_train_steps(config, steps_per_epoch: int) -> int:
    """``train.num_steps`` if positive, else ``train.num_epochs * steps_per_epoch``."""
    steps = int(config.train.get("num_steps", 0) or 0)
    return steps if steps > 0 else int(config.train.num_epochs) * steps_per_epoch


def _mean_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    """Mean over the logged interval; ``lr`` is the last step's."""
    host = jax.device_get(history)
    out = {k: float(np.mean([h[k] for h in host])) for k in host[0] if k != "nonfinite"}
    out["lr"] = float(host[-1]["lr"])
    return out


def _is_every(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


class TrainLoop:
    """Runs steps ``start_step + 1 .. total_steps`` (module docstring); ``run`` returns the
    final state and the last train and eval metrics."""

    def __init__(self, config, manager, writer, total_steps, steps_per_epoch, start_step, main):
        self.manager = manager
        self.writer = writer
        self.total_steps = total_steps
        self.start_step = start_step
        self.log_every = int(config.train.get("log_every", 50))
        self.ckpt_every = every_steps(config.train, "checkpoint_every", steps_per_epoch)
        self.eval_every = every_steps(config.evals, "every", steps_per_epoch)
        self.lr = config.train.get("lr", None)
        self.progress = _progress_bar(
            start_step, total_steps, enabled=main and config.train.get("progress_bar", True)
        )
        self._clock_started = False

    def run(self, state, train_iter, train_step_fn, train_rng, mesh, run_eval):
        history: list[dict[str, Any]] = []
        train_metrics: dict[str, float] = {}
        eval_metrics: dict[str, float] = {}
        pending: tuple[int, dict] | None = None  # the step in flight, not yet checked
        tick, tick_step = time.perf_counter(), self.start_step
        for step in range(self.start_step + 1, self.total_steps + 1):
            batch = sharding.put_batch(next(train_iter), mesh)
            state, metrics = train_step_fn(state, batch, train_rng)
            if pending is not None:
                self._check(*pending)
            pending = (step, metrics)
            checkpointing.check_saves(self.manager, step)
            history.append(metrics)
            last = step == self.total_steps
            logged = _is_every(step, self.log_every) or last
            evaluated = _is_every(step, self.eval_every) or last
            saving = evaluated or _is_every(step, self.ckpt_every) or last
            if logged or saving:
                self._check(*pending)
                pending = None
            if logged:
                train_metrics = _mean_metrics(history)
                now = time.perf_counter()
                train_metrics["steps_per_sec"] = (step - tick_step) / max(now - tick, 1e-9)
                tick, tick_step = now, step
                self.writer.write(step, "train", train_metrics)
                history = []
                self.progress.set_postfix(loss=f"{train_metrics['loss']:.4f}", refresh=False)
            if evaluated:
                eval_metrics = run_eval(state, step)
            if saving:
                checkpointing.save(self.manager, step, state, eval_metrics if evaluated else None)
                self.writer.flush()
        if pending is not None:
            self._check(*pending)
        return state, train_metrics, eval_metrics

    def _check(self, step: int, metrics: dict) -> None:
        """Reads step ``step``'s flag (waits for it); advances the bar; raises when set."""
        flags = int(jax.device_get(metrics["nonfinite"]))
        if flags:
            self._diverged(step, flags, metrics)
        if not self._clock_started:  # the first step includes compilation: restart the clock
            self._clock_started = True
            _restart_clock(self.progress, step)
        else:
            self.progress.update(step - self.progress.n)

    def _diverged(self, step: int, flags: int, metrics: dict) -> None:
        host = {k: float(jax.device_get(metrics[k])) for k in NONFINITE_BITS}
        save_failed = ""
        try:
            checkpointing.finish_saves(self.manager)  # the last finite save completes
        except checkpointing.CheckpointError as err:  # reported with the divergence
            save_failed = f"; besides, {err}"
        kept = sorted(self.manager.all_steps())
        values = ", ".join(f"{k} {v}" for k, v in host.items())
        raise TrainingDiverged(
            f"training diverged at step {step}: non-finite {' and '.join(nonfinite_names(flags))} "
            f"({values}); the update was dropped and nothing past step {step - 1} is saved "
            f"(checkpoints: {kept or 'none'} in {self.manager.directory}){save_failed}. Lower "
            f"train.lr (now {self.lr}) or check the inputs, then rerun with the same --workdir "
            "to resume"
        )

    def close(self) -> None:
        self.progress.close()


def _restart_clock(progress, done: int) -> None:
    """Shows ``done`` steps and restarts tqdm's clock (rate and ETA) from now."""
    progress.reset(total=progress.total)
    progress.n = progress.last_print_n = progress.initial = done
    progress.refresh()


def _progress_bar(start: int, total: int, enabled: bool):
    from tqdm.auto import tqdm  # a widget in notebooks, text in a terminal

    return tqdm(
        total=total,
        initial=start,
        disable=not enabled,
        unit="step",
        dynamic_ncols=True,
        desc="train",
    )
