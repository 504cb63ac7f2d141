"""User errors of every ``vmr-jax`` command: one ``error:`` line, last on stderr, exit code 2,
the traceback only with ``--debug``; Ctrl-C is ``interrupted`` (130); bugs keep their
traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmr_jax import errors, main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "mgpn" / "synthetic.py")
HINT = "(--debug shows the traceback)"


def assert_one_error_line(err: str, *fragments: str) -> str:
    """The ``error:`` line of ``err``: the only one, with no traceback before it and nothing
    after the message; returns the message from that line on."""
    assert "Traceback" not in err, err
    lines = err.rstrip("\n").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(starts) == 1, err
    message = "\n".join(lines[starts[0] :])
    assert message.endswith(HINT), err
    for fragment in fragments:
        assert fragment in message, (fragment, err)
    return message


def train_argv(workdir, *extra: str, config: str = f"{CONFIG}:runlocal") -> list[str]:
    return ["train", "--config", config, "--workdir", str(workdir), *extra]


def test_train_config_errors_are_one_line(tmp_path, capsys):
    no_get_config = tmp_path / "empty.py"
    no_get_config.write_text("BATCH = 8\n")
    syntax_error = tmp_path / "broken.py"
    syntax_error.write_text("def get_config(arg):\n    return {\n")
    cases = [
        (
            train_argv(tmp_path / "w", "--config.train.batch_sise=4"),
            "--config.train.batch_sise: no field 'batch_sise' in [",
        ),
        (
            train_argv(tmp_path / "w", "--config.model.pooling_counts=abc"),
            "--config.model.pooling_counts=abc: expected a tuple of int, got 'abc'",
        ),
        (train_argv(tmp_path / "w", config="configs/nope.py"), "'configs/nope.py' not found"),
        (
            train_argv(tmp_path / "w", config=str(no_get_config)),
            f"config file {str(no_get_config)!r} defines no get_config(arg)",
        ),
        (
            train_argv(tmp_path / "w", config=str(syntax_error)),
            f"config file {str(syntax_error)!r} line 2:",
        ),
        (
            train_argv(tmp_path / "w", config=f"{CONFIG}:runlcoal"),
            "unknown config arguments ['runlcoal']",
        ),
        (train_argv(tmp_path / "w", "--config.train.lr"), "--config.train.lr has no value"),
    ]
    for argv, fragment in cases:
        assert main.main(argv) == 2, argv
        assert_one_error_line(capsys.readouterr().err, fragment)
    assert not (tmp_path / "w").exists()  # refused before anything was written


def test_eval_of_a_directory_that_is_not_a_workdir(tmp_path, capsys):
    argv = ["eval", "--workdir", str(tmp_path)]
    assert main.main(argv) == 2
    assert_one_error_line(
        capsys.readouterr().err, f"is {str(tmp_path)!r} a vmr-jax training workdir?"
    )
    # --debug before or after the command: the traceback, then the same line (no hint).
    for debug_argv in (["--debug", *argv], [*argv, "--debug"]):
        assert main.main(debug_argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last):"), err
        assert "FileNotFoundError" in err
        last = err.rstrip("\n").splitlines()[-1]
        assert last.startswith("error: ") and "training workdir?" in last and HINT not in last
    # A bad --step is refused by the argument parser (usage, exit code 2), before any work.
    with pytest.raises(SystemExit) as exit_info:
        main.main([*argv, "--step", "last"])
    assert exit_info.value.code == 2
    assert "argument --step: a step number or 'best', not 'last'" in capsys.readouterr().err


def test_score_and_predict_errors_are_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    score = ["score", "--protocol", "2dtan", "--ground-truth", str(missing)]
    assert main.main([*score, "--predictions", str(missing)]) == 2
    assert_one_error_line(capsys.readouterr().err, str(missing))
    assert main.main(["--debug", *score, "--predictions", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: ")

    predict = ["predict", "--workdir", str(tmp_path / "no_workdir")]
    assert main.main(predict) == 2
    assert_one_error_line(capsys.readouterr().err, "no_workdir/config.json not found")
    assert main.main([*predict, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.fixture
def command_raising(monkeypatch):
    """Installs a ``fail`` command that raises the given exception."""

    def install(exc: BaseException) -> list[str]:
        def run(args):
            raise exc

        monkeypatch.setitem(main.COMMANDS, "fail", main.Command("raises", lambda p: None, run))
        return ["fail"]

    return install


def _chained(outer: Exception, inner: BaseException) -> Exception:
    outer.__cause__ = inner
    return outer


DISK_FULL = OSError(errno.ENOSPC, "No space left on device", "/runs/a/checkpoints/4")


@pytest.mark.parametrize(
    "exc, want",
    [
        (errors.TrainingDiverged("step 3: loss is nan"), "error: step 3: loss is nan " + HINT),
        (
            errors.WorkdirMismatch("workdir w holds model 'mgpn'"),
            "error: workdir w holds model 'mgpn' " + HINT,
        ),
        (
            DISK_FULL,
            "error: disk full writing /runs/a/checkpoints/4 (No space left on device): "
            "free space or use another disk " + HINT,
        ),
        # The asynchronous checkpointer wraps the OSError, or raises it in a group.
        (
            _chained(RuntimeError("save of step 4 failed"), DISK_FULL),
            "error: disk full writing /runs/a/checkpoints/4",
        ),
        (ExceptionGroup("tasks", [KeyError("x"), DISK_FULL]), "error: disk full writing"),
        (
            OSError(errno.EDQUOT, "Disk quota exceeded"),
            "error: disk full (Disk quota exceeded): free space",
        ),
        (PermissionError(errno.EACCES, "Permission denied", "/ro/w"), "Permission denied: '/ro/w'"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "/w"), "Is a directory: '/w'"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/f/x"), "Not a directory: '/f/x'"),
        (
            ValueError("3 problems:\n  line 1: a\n  line 2: b"),
            "error: 3 problems:\n  line 1: a\n  line 2: b " + HINT,
        ),
    ],
    ids=lambda x: type(x).__name__ if isinstance(x, BaseException) else None,
)
def test_user_error_kinds(command_raising, capsys, exc, want):
    assert main.main(command_raising(exc)) == 2
    message = assert_one_error_line(capsys.readouterr().err)
    assert message.startswith(want) if want.startswith("error:") else want in message


def test_interrupt_and_bugs(command_raising, capsys):
    assert main.main(command_raising(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err.rstrip("\n").splitlines() == ["interrupted"]
    # Bugs (not the user's fault) keep their exception and traceback.
    for bug in (RuntimeError("bug"), KeyError("query_features"), TypeError("bug"), OSError(5, "")):
        with pytest.raises(type(bug)):
            main.main(command_raising(bug))
        assert "error:" not in capsys.readouterr().err


def test_process_exit_code_and_last_line(tmp_path):
    """The real command: TensorFlow and absl start-up noise comes before the line, not after."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "vmr_jax.main", "eval", "--workdir", str(tmp_path)]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert_one_error_line(proc.stderr, "training workdir?")
    assert proc.stderr.rstrip("\n").splitlines()[-1].startswith("error: ")
