"""Pieces shared by the model families: zero example batches and the query word inputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np


def zero_batch(
    model_config, batch_size: int, query_len: int, num_clips: int, duration: float
) -> dict[str, np.ndarray]:
    """Zeros with the video and query shapes and dtypes every family reads: ``num_clips`` input
    clips of ``feature_dim`` (all real), videos of ``duration`` seconds, and learned-embedding
    tokens (``vocab_size > 0``) or ``word_dim`` word vectors; no span."""
    batch = {
        "video_features": np.zeros(
            (batch_size, num_clips, int(model_config.feature_dim)), np.float32
        ),
        "video_mask": np.ones((batch_size, num_clips), np.float32),
        "query_mask": np.ones((batch_size, query_len), np.float32),
        "duration": np.full((batch_size,), duration, np.float32),
        "query_index": np.arange(batch_size, dtype=np.int32),
        "valid": np.ones((batch_size,), np.float32),
    }
    if int(model_config.get("vocab_size", 0)) > 0:
        batch["query_tokens"] = np.ones((batch_size, query_len), np.int32)
    else:
        batch["query_features"] = np.zeros(
            (batch_size, query_len, int(model_config.word_dim)), np.float32
        )
    return batch


def example_batch(model_config, batch_size: int = 1, query_len: int = 10) -> dict[str, np.ndarray]:
    """:func:`zero_batch` for a single-video 2D-map family (mgpn, tan2d, fvmr): ``num_clips *
    frame_stride`` input clips, 1-s videos and one span ``[0, 0.5]``."""
    t = int(model_config.num_clips) * int(model_config.frame_stride)
    batch = zero_batch(model_config, batch_size, query_len, t, 1.0)
    batch["spans"] = np.tile(np.array([[[0.0, 0.5]]], np.float32), (batch_size, 1, 1))
    batch["span_mask"] = np.ones((batch_size, 1), np.float32)
    return batch


def query_inputs(
    batch: Mapping[str, Any], embed: Callable[[Any], jnp.ndarray] | None
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """``(words [B, L, E], mask [B, L] f32, lengths [B] i32)`` of a batch's queries: ``embed``
    (a learned table, when the family has one) of ``query_tokens`` when the batch has them,
    else the given word vectors ``query_features`` (e.g. GloVe)."""
    if embed is not None and "query_tokens" in batch:
        words = embed(batch["query_tokens"])
    else:
        words = batch["query_features"].astype(jnp.float32)
    mask = batch["query_mask"].astype(jnp.float32)
    return words, mask, jnp.sum(mask, axis=1).astype(jnp.int32)
