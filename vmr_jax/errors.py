"""Errors that are the user's fault (bad input, a foreign workdir, a diverged run, a full
disk): the ``vmr-jax`` command prints them as one ``error:`` line with exit code 2 (the
traceback only with ``--debug``).  The library's input errors (``DataError``,
``PredictError``, ...) are ``ValueError``s and are reported the same way.
"""

from __future__ import annotations


class UserError(Exception):
    """A fault the user can fix; its message says what is wrong and what to do."""


class TrainingDiverged(UserError):
    """A non-finite loss, gradient or parameter: the run stopped at the step that made it."""


class WorkdirMismatch(UserError):
    """The workdir belongs to another config (model, shapes or benchmark)."""


class CheckpointError(UserError):
    """A checkpoint cannot be restored (damaged, missing, or none intact) or saved."""
