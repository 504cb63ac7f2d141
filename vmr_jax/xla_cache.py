"""The persistent XLA compilation cache, on by default for the CLI and the API.

Compilation dominates short eval and predict runs and a notebook's first cell: with the
cache, a program compiled once (any process, same shapes and flags) is read from disk.
:func:`enable` is called by ``trainer.train_and_evaluate``,
``checkpoint_eval.evaluate_workdir``, ``predict.predict_workdir`` and
``Predictor.from_workdir`` (so by ``vmr-jax train|eval|predict``), not by ``vmr-jax bench``,
which measures compile time.

Where: ``$VMR_JAX_CACHE/xla`` when ``VMR_JAX_CACHE`` is a folder, else
``$XDG_CACHE_HOME/vmr_jax/xla`` (``~/.cache/vmr_jax/xla``).  ``VMR_JAX_CACHE=off`` turns it
off.  A cache folder set before (``jax.config.update('jax_compilation_cache_dir', ...)``,
``JAX_COMPILATION_CACHE_DIR``, the tests' ``jax_compilation_cache`` fixture) is kept, and
``jax_enable_compilation_cache=False`` is respected.  JAX's own thresholds apply (programs
that compile in under ``jax_persistent_cache_min_compile_time_secs``, 1 s, are not stored).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

logger = logging.getLogger(__name__)

ENV = "VMR_JAX_CACHE"
OFF = frozenset({"off", "0", "false", "no", "none"})


def cache_dir(environ: Mapping[str, str] = os.environ) -> str | None:
    """The XLA cache folder ``environ`` asks for (module docstring); None when it is off."""
    value = environ.get(ENV, "").strip()
    if value.lower() in OFF:
        return None
    if value:
        root = os.path.expanduser(value)
    else:
        cache_home = environ.get("XDG_CACHE_HOME") or os.path.join(
            os.path.expanduser("~"), ".cache"
        )
        root = os.path.join(cache_home, "vmr_jax")
    return os.path.join(root, "xla")


def enable() -> str | None:
    """Points JAX's persistent compilation cache at :func:`cache_dir` unless a folder is set
    already or the cache is off; returns the folder in use (None: no persistent cache).

    An unwritable folder is a warning and no cache, never an error: the run goes on
    compiling as before.
    """
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    if not jax.config.jax_enable_compilation_cache:
        return None
    path = cache_dir()
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        logger.warning("no persistent XLA compilation cache: %s (set %s)", err, ENV)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    logger.debug("persistent XLA compilation cache in %s", path)
    return path
