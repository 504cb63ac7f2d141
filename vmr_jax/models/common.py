"""Pieces shared by the single-video 2D-map families (mgpn, tan2d, fvmr)."""

from __future__ import annotations

import numpy as np


def example_batch(model_config, batch_size: int = 1, query_len: int = 10) -> dict[str, np.ndarray]:
    """Zeros with the shapes and dtypes a 2D-map family reads (initialisation, benchmarks):
    ``num_clips * frame_stride`` input clips of ``feature_dim``, and learned-embedding tokens
    (``vocab_size > 0``) or ``word_dim`` word vectors."""
    t = int(model_config.num_clips) * int(model_config.frame_stride)
    batch = {
        "video_features": np.zeros((batch_size, t, int(model_config.feature_dim)), np.float32),
        "video_mask": np.ones((batch_size, t), np.float32),
        "query_mask": np.ones((batch_size, query_len), np.float32),
        "duration": np.ones((batch_size,), np.float32),
        "spans": np.tile(np.array([[[0.0, 0.5]]], np.float32), (batch_size, 1, 1)),
        "span_mask": np.ones((batch_size, 1), np.float32),
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
