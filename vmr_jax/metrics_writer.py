"""Training logs: TensorBoard event files and ``metrics.jsonl`` in the workdir.

Only the main process (``jax.process_index() == 0``) writes; on the others every method is a
no-op, so callers need no ``if``.  One JSON line per call of ``write``:
``{"step": 120, "split": "train", "loss": 0.41, ...}``.

Resuming (``MetricsWriter(workdir, resume_step=S)``) makes the logs agree with the restored
state: ``metrics.jsonl`` is rewritten (atomically) without the rows past step ``S`` -- those
of steps that will run again -- and a half-written last line of a killed run is dropped;
TensorBoard gets a purge marker at ``S + 1`` (``SummaryWriter(purge_step=...)``: TensorBoard
hides the older events with ``step > S``).  So after any number of crashes each step appears
once in both.  A fresh start (``resume_step=0``) drops every earlier row.  ``flush`` writes the
TensorBoard queue to disk; the trainer calls it at every checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"

logger = logging.getLogger(__name__)


def _to_float(value: Any) -> float:
    value = float(np.asarray(value))
    return value


class MetricsWriter:
    """Writes scalar metrics of a split to TensorBoard (tag ``split/name``) and JSON lines."""

    def __init__(
        self, workdir: str, *, enabled: bool | None = None, resume_step: int | None = None
    ):
        self.workdir = workdir
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._path = os.path.join(workdir, METRICS_FILE)
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            if resume_step is not None:
                drop_rows_after(self._path, int(resume_step))
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(
                logdir=os.path.join(workdir, "tensorboard"),
                purge_step=None if resume_step is None else int(resume_step) + 1,
                # Two runs in one second must not share an event file name.
                filename_suffix=f".{os.getpid()}",
            )

    def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
        """Logs scalar ``metrics`` of ``split`` ('train', 'val', 'test') at ``step``."""
        if not self.enabled:
            return
        scalars = {k: _to_float(v) for k, v in metrics.items()}
        for name, value in scalars.items():
            self._tb.add_scalar(f"{split}/{name}", value, global_step=step)
        record = {"step": int(step), "split": split}
        # JSON has no NaN/inf: write them as strings so the file stays valid JSON.
        record.update({k: v if math.isfinite(v) else str(v) for k, v in scalars.items()})
        with open(self._path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def write_text(self, step: int, tag: str, text: str) -> None:
        """A text summary (e.g. the config) in TensorBoard."""
        if self.enabled:
            self._tb.add_text(tag, text, global_step=step)

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()

    def close(self) -> None:
        if self.enabled and self._tb is not None:
            self._tb.close()
            self._tb = None


def drop_rows_after(path: str, step: int) -> int:
    """Rewrites the JSON-lines file ``path`` without its rows of steps ``> step`` and without
    a truncated (unparsable) last line; atomically (temporary file + ``os.replace``).  Returns
    the number of rows dropped.  A damaged line elsewhere is an error naming it."""
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    kept, dropped = [], 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            if number == len(lines):  # the write a kill interrupted
                dropped += 1
                continue
            raise ValueError(f"{path}:{number}: not a JSON line ({err})") from err
        if int(record["step"]) > step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
        logger.info("%s: dropped %d rows past step %d (they run again)", path, dropped, step)
    return dropped


def read_metrics(workdir: str, split: str | None = None) -> dict[int, dict[str, Any]]:
    """``{step: record}`` from ``metrics.jsonl`` (the last record of each step wins)."""
    out: dict[int, dict[str, Any]] = {}
    path = os.path.join(workdir, METRICS_FILE)
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            if split is None or record.get("split") == split:
                out[int(record["step"])] = record
    return out
