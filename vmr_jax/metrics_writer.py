"""Training logs: TensorBoard event files and ``metrics.jsonl`` in the workdir.

Only the main process (``jax.process_index() == 0``) writes; on the others every method is a
no-op, so callers need no ``if``.  One JSON line per call of ``write``:
``{"step": 120, "split": "train", "loss": 0.41, ...}``.  A resumed run appends to the same
file, so a step can appear twice after a crash between checkpoints; readers should keep the
last record of each (step, split) -- ``read_metrics`` does.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"


def _to_float(value: Any) -> float:
    value = float(np.asarray(value))
    return value


class MetricsWriter:
    """Writes scalar metrics of a split to TensorBoard (tag ``split/name``) and JSON lines."""

    def __init__(self, workdir: str, *, enabled: bool | None = None):
        self.workdir = workdir
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))
        self._path = os.path.join(workdir, METRICS_FILE)

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
