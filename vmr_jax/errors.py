"""Errors that are the user's fault (bad input, a foreign workdir, a diverged run, a full
disk): the ``vmr-jax`` command prints them as one ``error:`` line with exit code 2 (the
traceback only with ``--debug``).  The library's input errors (``DataError``,
``PredictError``, ...) are ``ValueError``s and are reported the same way.

``user_message(err)`` is the one place that decides what counts as the user's fault; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno

# "No space left on device" and "Disk quota exceeded" (the latter not on every platform).
DISK_FULL_ERRNOS = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None
)
# Files the user named that are missing, of the wrong kind or not readable/writable.
FILE_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


class UserError(Exception):
    """A fault the user can fix; its message says what is wrong and what to do."""


class TrainingDiverged(UserError):
    """A non-finite loss, gradient or parameter: the run stopped at the step that made it."""


class WorkdirMismatch(UserError):
    """The workdir belongs to another config (model, shapes or benchmark)."""


class CheckpointError(UserError):
    """A checkpoint cannot be restored (damaged, missing, or none intact) or saved."""


class ConfigError(UserError, ValueError):
    """A config file or ``--config.*`` override that cannot be used (no ``get_config``, a
    syntax error, an unknown field, a value of the wrong type)."""


def _chain(err: BaseException):
    """``err``, its causes and contexts, and the members of exception groups, once each."""
    seen, stack = set(), [err]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack += [current.__cause__, current.__context__]
        if isinstance(current, BaseExceptionGroup):
            stack += list(current.exceptions)


def disk_full_message(err: OSError) -> str:
    where = f" writing {err.filename}" if err.filename else ""
    return f"disk full{where} ({err.strerror or 'no space left'}): free space or use another disk"


def user_message(err: BaseException) -> str | None:
    """The message to show for a user error, or None when ``err`` is a bug.

    User errors: ``UserError``s, ``ValueError``s (the library's input errors), a missing or
    unusable file (``FILE_ERRORS``), and a full disk anywhere in the exception's chain (the
    asynchronous checkpointer raises it wrapped in its own errors).
    """
    if isinstance(err, (UserError, ValueError)):
        return str(err) or type(err).__name__
    for link in _chain(err):
        if isinstance(link, OSError) and link.errno in DISK_FULL_ERRNOS:
            return disk_full_message(link)
    if isinstance(err, FILE_ERRORS):
        return str(err)
    return None
