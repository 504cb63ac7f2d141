"""TensorFlow for the input pipeline only: quiet, and never on an accelerator.

JAX owns the GPUs and TPUs; tf.data runs on the host.  :func:`import_tensorflow` is the one
place the packages import TensorFlow (``data_pipelines.input_pipeline`` calls it), so that:

- its C++ log lines stay out of terminals and notebook cells: ``TF_CPP_MIN_LOG_LEVEL=1``
  (no info lines; warnings and errors stay, as JAX sets it when imported first) and
  ``TF_ENABLE_ONEDNN_OPTS=0``, both set before TensorFlow's first import and only where the
  user has not set them.  The second silences the oneDNN banner, which TensorFlow 2.21
  prints before any log level applies; oneDNN speeds up TF's matmuls and convolutions,
  which the input pipeline does not run (JAX computes the models).
- it sees no GPU or TPU (:func:`hide_accelerators`), before the pipeline creates any op, so
  it never reserves accelerator memory that JAX needs.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "1", "TF_ENABLE_ONEDNN_OPTS": "0"}
ACCELERATORS = ("GPU", "TPU")


def hide_accelerators(tf_config: Any) -> list[str]:
    """Makes every accelerator invisible to TensorFlow (``tf_config``: ``tf.config``).

    Returns the kinds that stay visible: those TensorFlow had initialised already (its
    devices cannot change then), each with a warning.  No-op where none is visible.
    """
    still_visible = []
    for kind in ACCELERATORS:
        if not tf_config.get_visible_devices(kind):
            continue
        try:
            tf_config.set_visible_devices([], kind)
        except RuntimeError as err:  # devices initialised by earlier TensorFlow use
            logger.warning(
                "TensorFlow keeps its %s devices (%s): it may hold memory JAX needs; "
                "import vmr_jax before using TensorFlow",
                kind,
                err,
            )
            still_visible.append(kind)
    return still_visible


def import_tensorflow():
    """``tensorflow``, imported quiet and kept off the accelerators (module docstring)."""
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    import tensorflow as tf

    hide_accelerators(tf.config)
    return tf
