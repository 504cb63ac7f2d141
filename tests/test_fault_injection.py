"""Kill -9 at random points, resume, repeat: the final parameters, metrics and logs equal an
uninterrupted run's, and every step is logged once in metrics.jsonl and in TensorBoard.

Each run is a subprocess (``python -c KILLABLE_RUN``) that sends itself SIGKILL at a chosen
point: right after the train row of step k is written (before that step's checkpoint), or
right after the asynchronous save of step k was started (while its arrays are being written).
The points are drawn with a seeded RNG; the seed is in the test id.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vmr_jax import checkpointing

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "mgpn" / "synthetic.py")
STEPS = 10

# argv: workdir, kill kind ('none' | 'log' | 'save'), kill step.
KILLABLE_RUN = f"""
import os, signal, sys
from vmr_jax import checkpointing, config_cli, metrics_writer, trainer

workdir, kind, at = sys.argv[1], sys.argv[2], int(sys.argv[3])

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if kind == "log":
    write = metrics_writer.MetricsWriter.write
    def write_then_die(self, step, split, metrics):
        write(self, step, split, metrics)
        if split == "train" and step == at:
            die()
    metrics_writer.MetricsWriter.write = write_then_die
elif kind == "save":
    save = checkpointing.save
    def save_then_die(manager, step, *args, **kwargs):
        started = save(manager, step, *args, **kwargs)
        if step == at:
            die()
        return started
    checkpointing.save = save_then_die

overrides = {{
    "train.num_steps": {STEPS},
    "train.log_every": 1,
    "train.checkpoint_every": 2,
    "train.keep": 2,
    "evals.every": 4,
    "train.progress_bar": False,
}}
config = config_cli.load_config(
    {CONFIG!r} + ":runlocal", [(k, str(v)) for k, v in overrides.items()]
)
trainer.train_and_evaluate(config, workdir)
"""


def run(workdir: Path, kind: str = "none", at: int = 0, cache: str = "") -> int:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    if cache:
        env.update(
            JAX_COMPILATION_CACHE_DIR=cache,
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    done = subprocess.run(
        [sys.executable, "-c", KILLABLE_RUN, str(workdir), kind, str(at)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"run {kind}@{at} failed (rc {done.returncode}):\n{done.stderr}")
    return done.returncode


def final_params(workdir: Path) -> list[np.ndarray]:
    import jax

    variables = checkpointing.restore_variables(str(workdir / "checkpoints" / str(STEPS)), None)
    return [np.asarray(x) for x in jax.tree.leaves(variables)]


def rows(workdir: Path, split: str) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def tensorboard_scalars(logdir: Path, tag: str) -> dict[int, list[float]]:
    """``{step: [values]}`` of ``tag`` as TensorBoard shows it.  Written here from
    TensorBoard's documented rule, not from our writer: event files are read in the order
    they were written, and a session START event at step P hides the events read before it
    whose step is >= P (TensorBoard's purge of orphaned data after a restart)."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    events: list[tuple[int, float]] = []
    files = sorted(logdir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
    for path in files:
        for record in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(record.numpy())
            if event.HasField("session_log") and event.session_log.status == 1:  # START
                events = [(s, v) for s, v in events if s < event.step]
            for value in event.summary.value:
                if value.tag == tag:
                    events.append((event.step, value.simple_value))
    out: dict[int, list[float]] = {}
    for step, value in events:
        out.setdefault(step, []).append(value)
    return out


@pytest.fixture(scope="module")
def cache_dir(request, tmp_path_factory) -> str:
    cache = getattr(request.config, "cache", None)
    path = (
        cache.mkdir("jax_compilation_cache_subprocess")
        if cache is not None
        else tmp_path_factory.mktemp("jax_cache")
    )
    return str(path)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    assert run(workdir, cache=cache_dir) == 0
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize("seed", [16])
def test_random_kills_leave_no_trace(uninterrupted, tmp_path, cache_dir, seed):
    rng = random.Random(seed)
    # Three kills at increasing steps, each of a random kind: after a train row is written
    # (logs past the last checkpoint) or during an asynchronous save (a partial step folder).
    # Saves happen at even steps; each point lies past the previous one, so every run gets
    # further than the last checkpoint before the previous kill and reaches its kill point.
    plan, last = [], 1
    for at in sorted(rng.sample(range(2, STEPS - 1), 3)):
        kind = rng.choice(["log", "save"])
        at = max(at, last + 1)
        at += kind == "save" and at % 2
        plan.append((kind, at))
        last = at
    killed = 0
    for kind, at in plan:
        killed += run(tmp_path, kind, at, cache=cache_dir) == -signal.SIGKILL
    assert killed == len(plan), plan  # every kill point was reached
    assert run(tmp_path, cache=cache_dir) == 0

    # Final parameters equal the uninterrupted run's.
    for got, want in zip(final_params(tmp_path), final_params(uninterrupted), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    # Every step logged once, with the uninterrupted run's values; evals too.
    for split, keys in (("train", ("loss", "grad_norm", "param_norm")), ("val", None)):
        got, want = rows(tmp_path, split), rows(uninterrupted, split)
        assert [r["step"] for r in got] == [r["step"] for r in want], (split, plan)
        for g, w in zip(got, want, strict=True):
            for key in keys or [k for k in w if k not in ("step", "split")]:
                assert g[key] == pytest.approx(w[key], rel=1e-6, abs=1e-9), (split, key, g)
    assert [r["step"] for r in rows(tmp_path, "train")] == list(range(1, STEPS + 1))
    # TensorBoard shows each step once, with the same values.
    shown = tensorboard_scalars(tmp_path / "tensorboard", "train/loss")
    assert sorted(shown) == list(range(1, STEPS + 1)), plan
    assert all(len(values) == 1 for values in shown.values()), plan
    reference = {r["step"]: r["loss"] for r in rows(uninterrupted, "train")}
    for step, (value,) in shown.items():
        assert value == pytest.approx(reference[step], rel=1e-6)
