"""Faults of a training run lose nothing: non-finite steps, foreign workdirs, damaged
checkpoints, failed saves, logs after a resume (issue 16).

Every expected value here comes from a hand computation or from an undamaged run of the same
config (the reference), never from the code path under test.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from vmr_jax import checkpoint_eval, checkpointing, config_cli, predictor, trainer
from vmr_jax.errors import CheckpointError, TrainingDiverged, WorkdirMismatch
from vmr_jax.metrics_writer import drop_rows_after, read_metrics

ROOT = Path(__file__).resolve().parents[1]
MGPN = str(ROOT / "configs" / "mgpn" / "synthetic.py")
TAN2D = str(ROOT / "configs" / "tan2d" / "synthetic.py")

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")


def runlocal(config_file: str = MGPN, **overrides):
    """The runlocal synthetic config: log every step, checkpoint every 3, no progress bar."""
    base = {
        "train.num_steps": 6,
        "train.log_every": 1,
        "train.checkpoint_every": 3,
        "train.progress_bar": False,
    }
    base.update(overrides)
    return config_cli.load_config(f"{config_file}:runlocal", [(k, str(v)) for k, v in base.items()])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An undamaged 6-step run (checkpoints 3 and 6): ``(workdir, result)``."""
    workdir = tmp_path_factory.mktemp("reference")
    result = trainer.train_and_evaluate(runlocal(), str(workdir))
    return workdir, result


def snapshot(folder: Path) -> dict:
    """path -> (size, sha256) of every file below ``folder``: compared before and after."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def train_rows(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if json.loads(x)["split"] == "train"]


# --------------------------------------------------------------------------- non-finite steps
def _sgd_state(w: float, lr: float) -> trainer.TrainState:
    return trainer.TrainState.create(
        apply_fn=lambda variables, batch, **_: (variables["params"]["w"] * batch["x"], {}),
        params={"w": jnp.float32([w])},
        tx=optax.sgd(lr),
        batch_stats={},
    )


def _square_loss(outputs, batch, model_config, *, step, steps_per_epoch):
    loss = jnp.sum(outputs**2)
    return loss, {}


@pytest.mark.parametrize(
    "w, x, lr, bits, new_w",
    [
        # loss (w x)^2 = 4, d/dw = 2 w x^2 = 8: sgd w - lr * 8 = 1 - 0.8 = 0.2, all finite.
        (1.0, 2.0, 0.1, 0, 0.2),
        # x = nan: loss, gradient and parameters nan -> bits 1 + 2 + 4, update dropped.
        (1.0, float("nan"), 0.1, 7, 1.0),
        # A finite gradient (8) times lr 1e38 overflows w to -inf: only param_norm (bit 4).
        (1.0, 2.0, 1e38, 4, 1.0),
    ],
)
def test_train_step_drops_a_nonfinite_update(w, x, lr, bits, new_w):
    state = _sgd_state(w, lr)
    new_state, metrics = trainer.train_step(
        state,
        {"x": jnp.float32([x])},
        jax.random.PRNGKey(0),
        loss_fn=_square_loss,
        model_config=None,
        schedule=lambda step: lr,
        steps_per_epoch=1,
    )
    assert int(metrics["nonfinite"]) == bits
    np.testing.assert_allclose(np.asarray(new_state.params["w"]), [new_w], rtol=1e-6)
    # A dropped update keeps the step count too: the resumed run repeats nothing.
    assert int(new_state.step) == (1 if bits == 0 else 0)
    assert trainer.nonfinite_names(bits) == [
        n for i, n in enumerate(("loss", "grad_norm", "param_norm")) if bits >> i & 1
    ]


def test_a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(reference, tmp_path, monkeypatch):
    """The loss turns NaN at step 5 (state.step 4): the run stops there, saying so; checkpoint
    3 stays as the reference run saved it; no NaN reaches the logs."""
    family = trainer.get_family("mgpn")

    def loss_nan_from_step_5(outputs, batch, model_config, *, step, steps_per_epoch):
        loss, parts = family.loss_fn(
            outputs, batch, model_config, step=step, steps_per_epoch=steps_per_epoch
        )
        return jnp.where(step >= 4, jnp.nan, loss), parts

    broken = dataclasses.replace(family, loss_fn=loss_nan_from_step_5)
    monkeypatch.setattr(trainer, "get_family", lambda name: broken)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 5: non-finite loss"):
        trainer.train_and_evaluate(runlocal(), str(tmp_path))

    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [3]
    rows = train_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert "nan" not in (tmp_path / "metrics.jsonl").read_text().lower()
    # Checkpoint 3 holds the parameters the reference logged at step 3.
    ref_dir, _ = reference
    variables = checkpointing.restore_variables(str(tmp_path / "checkpoints" / "3"), None)
    param_norm = float(optax.tree.norm(variables["params"]))
    assert param_norm == pytest.approx(read_metrics(str(ref_dir), "train")[3]["param_norm"])


def test_a_huge_learning_rate_ends_in_one_error_line(tmp_path, capsys):
    from vmr_jax import main

    workdir = tmp_path / "w"
    rc = main.main(
        [
            "train",
            "--config",
            f"{MGPN}:runlocal",
            "--workdir",
            str(workdir),
            "--config.train.lr=1e8",
            "--config.train.progress_bar=false",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: training diverged at step ")
    assert "Traceback" not in "\n".join(err)
    # Nothing non-finite was saved: every checkpoint left has finite parameters.
    for step_dir in (workdir / "checkpoints").glob("[0-9]*"):
        params = checkpointing.restore_variables(str(step_dir), None)["params"]
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


# --------------------------------------------------------------------------- foreign workdirs
@pytest.mark.parametrize(
    "config_file, overrides, named",
    [
        (TAN2D, {}, "model.name: 'mgpn' -> 'tan2d'"),
        (MGPN, {"model.hidden": 24}, "model.hidden: 64 -> 24"),
        (MGPN, {"data.synthetic.feature_dim": 16}, "data.synthetic.feature_dim"),
    ],
)
def test_another_run_is_refused_before_anything_is_written(
    reference, config_file, overrides, named
):
    workdir, _ = reference
    before = snapshot(workdir)
    config = runlocal(config_file, **overrides)
    with pytest.raises(WorkdirMismatch, match="belongs to another run") as info:
        trainer.train_and_evaluate(config, str(workdir))
    assert named in str(info.value)
    assert "new --workdir" in str(info.value)
    assert snapshot(workdir) == before


def test_a_model_field_added_since_the_run_counts_as_what_the_run_was_built_with():
    """A config.json written before MGPN had ``bn_groups`` and ``text_padding`` ran with
    statistics over the whole batch and the fixed padding (the only behaviour then): resuming
    it with those values is accepted, another value is named."""
    config = runlocal()
    saved = json.loads(config.to_json_best_effort())
    for field in ("bn_groups", "text_padding"):
        saved["model"].pop(field, None)
    config.unlock()
    config.model.bn_groups, config.model.text_padding = 1, "fixed"
    assert checkpointing.workdir_differences(saved, config) == []
    config.model.bn_groups, config.model.text_padding = 4, "batch"
    assert checkpointing.workdir_differences(saved, config) == [
        ("model.bn_groups", 1, 4),
        ("model.text_padding", "fixed", "batch"),
    ]


def test_checkpoints_without_config_are_not_claimed(reference, tmp_path):
    workdir, _ = reference
    shutil.copytree(workdir / "checkpoints", tmp_path / "checkpoints")
    with pytest.raises(WorkdirMismatch, match="holds checkpoints but no config.json"):
        trainer.train_and_evaluate(runlocal(), str(tmp_path))
    assert not (tmp_path / "config.json").exists()


def test_an_invalid_config_writes_nothing(tmp_path):
    workdir = tmp_path / "new"
    with pytest.raises(ValueError):
        trainer.train_and_evaluate(runlocal(**{"evals.protocol": "didemo"}), str(workdir))
    assert not workdir.exists()


def test_config_json_is_replaced_atomically(tmp_path, monkeypatch):
    config = runlocal()
    path = checkpointing.save_config(config, str(tmp_path))
    before = Path(path).read_bytes()

    def fail(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpointing.os, "replace", fail)
    changed = runlocal(**{"train.num_steps": 99})
    with pytest.raises(OSError):
        checkpointing.save_config(changed, str(tmp_path))
    assert Path(path).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


# --------------------------------------------------------------------------- damaged checkpoints
def _truncate_data_files(step_dir: Path) -> None:
    """Cuts every array data file of a step to 100 bytes (a copy interrupted mid-way)."""
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for path in files:
        with open(path, "r+b") as f:
            f.truncate(100)


def _damaged_copy(reference, tmp_path, damage) -> Path:
    workdir, _ = reference
    copy = tmp_path / "damaged"
    shutil.copytree(workdir, copy)
    damage(copy / "checkpoints" / "6")
    return copy


DAMAGES = {
    "truncated": _truncate_data_files,
    "missing_metadata": lambda step_dir: (step_dir / "default" / "_METADATA").unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_eval_and_predict_name_the_damaged_step_and_the_intact_ones(reference, tmp_path, damage):
    workdir = _damaged_copy(reference, tmp_path, DAMAGES[damage])
    with pytest.raises(CheckpointError) as info:
        checkpoint_eval.evaluate_workdir(str(workdir))
    message = str(info.value)
    assert "checkpoint step 6" in message and "intact steps: [3]" in message
    assert "\n" not in message
    with pytest.raises(
        CheckpointError, match=r"checkpoints/6 cannot be restored.*intact steps: \[3\]"
    ):
        predictor.restore_for_inference(str(workdir), step=None)
    # The intact step still evaluates.
    assert checkpoint_eval.evaluate_workdir(str(workdir), step=3)["step"] == 3


def test_train_resumes_from_the_newest_intact_checkpoint(reference, tmp_path, caplog):
    ref_dir, ref_result = reference
    workdir = _damaged_copy(reference, tmp_path, _truncate_data_files)
    with caplog.at_level("WARNING", logger="vmr_jax.checkpointing"):
        result = trainer.train_and_evaluate(runlocal(), str(workdir))
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    assert "checkpoint step 6" in warnings and "resuming from step 3" in warnings
    assert (workdir / "damaged_checkpoints" / "6").is_dir()
    assert result["step"] == 6
    # Steps 4-6 ran again and match the undamaged run; each step is logged once.
    assert [r["step"] for r in train_rows(workdir)] == [1, 2, 3, 4, 5, 6]
    reference_rows = read_metrics(str(ref_dir), "train")
    for row in train_rows(workdir):
        assert row["loss"] == pytest.approx(reference_rows[row["step"]]["loss"], rel=1e-6)
    for key, value in ref_result["eval_metrics"].items():
        assert result["eval_metrics"][key] == pytest.approx(value, abs=1e-6), key


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(reference, tmp_path):
    workdir = _damaged_copy(reference, tmp_path, _truncate_data_files)
    _truncate_data_files(workdir / "checkpoints" / "3")
    before = snapshot(workdir / "checkpoints")
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* restores \(step 6: .*step 3: "):
        trainer.train_and_evaluate(runlocal(), str(workdir))
    assert snapshot(workdir / "checkpoints") == before


# --------------------------------------------------------------------------- failed saves
def test_a_failed_save_stops_the_run_naming_the_step(tmp_path, monkeypatch):
    """A save that fails (here its synchronous part, with ENOSPC) is one CheckpointError
    naming the step and the OS error; the run stops there and the earlier step is complete."""
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 6:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    config = runlocal(**{"train.num_steps": 9})
    with pytest.raises(CheckpointError, match=r"\[Errno 28\] No space left on device") as info:
        trainer.train_and_evaluate(config, str(tmp_path))
    assert "saving the checkpoint of step 6" in str(info.value)
    assert "complete checkpoints: [3]" in str(info.value)
    assert [r["step"] for r in train_rows(tmp_path)][-1] == 6  # stopped at the failed save


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


def test_a_full_disk_stops_at_the_failed_save_and_resumes_after(tmp_path):
    """A real ENOSPC from an asynchronous save on a tmpfs filled by the second checkpoint."""
    mount = tmp_path / "disk"
    if os.geteuid() != 0 or not _mount_tmpfs(mount, "64m"):
        pytest.skip("needs root and permission to mount a tmpfs (a real full disk)")
    try:
        workdir = mount / "w"
        trainer.train_and_evaluate(runlocal(**{"train.num_steps": 3}), str(workdir))
        used = shutil.disk_usage(mount).used
        step_bytes = sum(p.stat().st_size for p in (workdir / "checkpoints" / "3").rglob("*"))
        # Room for logs, not for a second checkpoint.
        size = used + step_bytes // 3
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)
        with pytest.raises(CheckpointError) as info:
            trainer.train_and_evaluate(runlocal(**{"train.num_steps": 12}), str(workdir))
        message = str(info.value)
        assert "saving the checkpoint of step 6" in message
        assert "[Errno 28] No space left on device" in message
        assert "complete checkpoints: [3]" in message
        # No partial folder counts: a manager sees step 3 only.
        manager = checkpointing.create_checkpoint_manager(str(workdir), {}, read_only=True)
        assert list(manager.all_steps()) == [3]
        manager.close()
        # With space again the same command resumes from 3 and removes the partial folder.
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        result = trainer.train_and_evaluate(runlocal(**{"train.num_steps": 12}), str(workdir))
        assert result["step"] == 12
        names = sorted(p.name for p in (workdir / "checkpoints").iterdir())
        assert names == ["12", "9"]
        assert [r["step"] for r in train_rows(workdir)] == list(range(1, 13))
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# --------------------------------------------------------------------------- logs on resume
def test_drop_rows_after_keeps_the_restored_steps_and_drops_a_cut_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 0, "split": "val_random"}] + [
        {"step": s, "split": "train", "loss": 1.0 / s} for s in range(1, 7)
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 7, "spl'
    path.write_text(text)
    assert drop_rows_after(str(path), 3) == 4  # steps 4, 5, 6 and the cut line
    kept = [json.loads(x) for x in path.read_text().splitlines()]
    assert kept == rows[:4]
    path.write_text('{"step": 1, "split": "train"}\nnot json\n{"step": 2, "split": "train"}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        drop_rows_after(str(path), 1)


def test_an_unknown_eval_split_is_one_line_and_writes_nothing(tmp_path, capsys):
    from vmr_jax import main

    workdir = tmp_path / "w"
    argv = ["train", "--config", f"{MGPN}:runlocal", "--workdir", str(workdir)]
    assert main.main([*argv, "--config.evals.split=nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no split 'nope'")
    assert "have ['test', 'train', 'val']" in err[-1]
    assert not workdir.exists()
