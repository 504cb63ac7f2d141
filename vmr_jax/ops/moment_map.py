"""The 2D temporal proposal map of 2D-TAN / MGPN: which cells exist, what they contain.

A video is cut into ``N`` clips; cell ``(i, j)`` with ``i <= j`` is the moment that starts at
clip ``i`` and ends with clip ``j``, i.e. ``[i * dur / N, (j + 1) * dur / N]`` seconds.

Sparse sampling (Huntersxsx/MGPN ``SparseBoundaryContent`` convention):
``pooling_counts = [c0, c1, ...]``.  Scale ``s`` has stride ``2**s``; it adds ``c_s`` offsets
``j - i`` spaced by the stride (continuing from the last offset of the previous scale) for every
start ``i`` that is a multiple of the stride.  The diagonal is always valid.  E.g.
``[15, 8, 8]`` at ``N = 64``: offsets 1..15 for all starts, 17, 19, .., 31 for even starts,
35, 39, .., 63 for starts divisible by 4 (1,104 cells).

microsoft/2D-TAN ``SparsePropMaxPool``/``SparsePropConv`` count the diagonal in the first scale
(its first layer is a width-1 pool), so its ``NUM_SCALE_LAYERS`` ``[16, 8, 8, 8]`` is
``pooling_counts`` ``[15, 8, 8, 8]`` here (2,548 cells at ``N = 128``, the TACoS mask); convert
with :func:`pooling_counts_from_tan2d`.

Geometry (mask, cell list) is static: it is computed with NumPy at trace time and becomes
constants of the compiled program.  Feature maps are ``jnp`` and channels-last:
``[batch, N, N, dim]``.

Span max-pool (the content map): the official code chains ``sum(pooling_counts)`` 1D
max-pools; the result is exactly the max of the clip features over ``i..j``.  Here it is a
sparse table: ``floor(log2 N) + 1`` levels of doubling window maxima, then one gather of two
rows per cell, ``max(T[k][i], T[k][j - 2**k + 1])`` with ``k = floor(log2(j - i + 1))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from vmr_jax.ops import segments


def valid_offsets(pooling_counts: Sequence[int]) -> list[tuple[int, int]]:
    """(offset j - i, stride) pairs of the sparse rule, excluding the diagonal (offset 0)."""
    pairs, stride, offset = [], 1, 0
    for count in pooling_counts:
        for _ in range(count):
            offset += stride
            pairs.append((offset, stride))
        stride *= 2
    return pairs


def pooling_counts_from_tan2d(num_scale_layers: Sequence[int]) -> tuple[int, ...]:
    """2D-TAN ``NUM_SCALE_LAYERS`` -> ``pooling_counts`` (2D-TAN counts the diagonal layer)."""
    counts = tuple(int(c) for c in num_scale_layers)
    if not counts or counts[0] < 1:
        raise ValueError(f"2D-TAN NUM_SCALE_LAYERS must start with >= 1, got {list(counts)}")
    return (counts[0] - 1,) + counts[1:]


def valid_cell_mask(num_clips: int, pooling_counts: Sequence[int]) -> np.ndarray:
    """Valid-cell mask of the sparse 2D map.

    Returns: bool ``[N, N]``; ``mask[i, j]`` is True when moment (i, j) is a proposal.
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be positive, got {num_clips}")
    if any(c < 0 for c in pooling_counts):
        raise ValueError(f"pooling_counts must be non-negative, got {list(pooling_counts)}")
    i = np.arange(num_clips)[:, None]
    j = np.arange(num_clips)[None, :]
    mask = i == j
    pairs = valid_offsets(pooling_counts)
    if pairs:
        offsets = np.array([p[0] for p in pairs])[:, None, None]
        strides = np.array([p[1] for p in pairs])[:, None, None]
        hits = ((j - i)[None] == offsets) & ((i % strides)[...] == 0)
        mask = mask | hits.any(axis=0)
    return mask


def valid_cells(num_clips: int, pooling_counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Start and end clip indices of every valid cell, in row-major order.

    Returns: ``(starts [C], ends [C])`` int32, ``C`` = number of valid cells.
    """
    starts, ends = np.nonzero(valid_cell_mask(num_clips, pooling_counts))
    return starts.astype(np.int32), ends.astype(np.int32)


def cell_times(num_clips: int, duration: jnp.ndarray) -> jnp.ndarray:
    """Seconds of every cell: ``[..., N, N, 2]`` with ``[i * dur / N, (j + 1) * dur / N]``.

    Args:
      duration: ``[...]`` video durations in seconds.
    """
    duration = jnp.asarray(duration, jnp.float32)[..., None, None]
    idx = jnp.arange(num_clips, dtype=jnp.float32)
    start = idx[:, None] * duration / num_clips
    end = (idx[None, :] + 1.0) * duration / num_clips
    start, end = jnp.broadcast_arrays(start, end)
    return jnp.stack([start, end], axis=-1)


def iou_target_map(num_clips: int, span: jnp.ndarray, duration: jnp.ndarray) -> jnp.ndarray:
    """Continuous IoU of every cell moment with the ground-truth span.

    The official datasets compute it for every (i, j), including i > j (then the "moment" has
    negative length and the overlap is clipped at 0); the loss masks those cells.

    Args:
      span: ``[..., 2]`` ground-truth ``[start, end]`` seconds.
      duration: ``[...]`` seconds.
    Returns: ``[..., N, N]`` float32.
    """
    span = jnp.asarray(span, jnp.float32)
    return segments.temporal_iou(cell_times(num_clips, duration), span[..., None, None, :])


def scaled_iou(iou: jnp.ndarray, min_iou: float, max_iou: float, bias: float = 0.0) -> jnp.ndarray:
    """2D-TAN's rescaled target: ``(iou - min)(1 - bias) / (max - min)``, ``+ bias`` where
    positive, clipped to [0, 1].  With ``bias = 0`` this is MGPN's ``clamp((iou - min) /
    (max - min), 0, 1)``."""
    target = (iou - min_iou) * (1.0 - bias) / (max_iou - min_iou)
    target = jnp.where(target > 0, target + bias, target)
    return jnp.clip(target, 0.0, 1.0)


def window_max_table(x: jnp.ndarray, level_axis: int = 0) -> jnp.ndarray:
    """Doubling window maxima over the clip axis.

    Args:
      x: ``[..., N, D]``.
      level_axis: where the level axis goes in the result (``-3``: next to the clip axis, so a
        cell's (level, clip) row is one flat index with no transpose of the table).
    Returns: ``[K, ..., N, D]`` (``level_axis=0``) with ``K = floor(log2 N) + 1``; level ``k``
      at ``t`` is the max of ``x[t : t + 2**k]`` (positions past the end hold partial windows
      and are never read).
    """
    n = x.shape[-2]
    levels = [x]
    width = 1
    while 2 * width <= n:
        prev = levels[-1]
        shifted = jnp.concatenate([prev[..., width:, :], prev[..., -width:, :]], axis=-2)
        levels.append(jnp.maximum(prev, shifted))
        width *= 2
    return jnp.stack(levels, axis=level_axis)


def span_max_cells(x: jnp.ndarray, starts: np.ndarray, ends: np.ndarray) -> jnp.ndarray:
    """Max of the clip features over each cell's span (the content map, sparse form).

    Args:
      x: ``[..., N, D]`` clip features.
      starts, ends: ``[C]`` static cell indices (``starts <= ends``).
    Returns: ``[..., C, D]``.
    """
    starts = np.asarray(starts)
    ends = np.asarray(ends)
    length = ends - starts + 1
    level = np.floor(np.log2(length)).astype(np.int32)
    right = (ends - (1 << level) + 1).astype(np.int32)
    table = window_max_table(x, level_axis=-3)  # [..., K, N, D]
    k = table.shape[-3]
    n = table.shape[-2]
    flat = table.reshape(table.shape[:-3] + (k * n, table.shape[-1]))
    left_rows = level * n + starts
    right_rows = level * n + right
    return jnp.maximum(jnp.take(flat, left_rows, axis=-2), jnp.take(flat, right_rows, axis=-2))


def boundary_cells(x: jnp.ndarray, starts: np.ndarray, ends: np.ndarray) -> jnp.ndarray:
    """MGPN boundary map, sparse form: ``(x_i + x_j) / 2`` (the diagonal is ``x_i``).

    Args:
      x: ``[..., N, D]``.
    Returns: ``[..., C, D]``.
    """
    return (jnp.take(x, np.asarray(starts), axis=-2) + jnp.take(x, np.asarray(ends), axis=-2)) / 2


def scatter_cells(
    values: jnp.ndarray, starts: np.ndarray, ends: np.ndarray, num_clips: int
) -> jnp.ndarray:
    """Place per-cell values on the dense map, zeros elsewhere.

    Args:
      values: ``[B, C, ...]``.
    Returns: ``[B, N, N, ...]``.
    """
    flat_index = np.asarray(starts) * num_clips + np.asarray(ends)
    out = jnp.zeros((values.shape[0], num_clips * num_clips) + values.shape[2:], values.dtype)
    out = out.at[:, flat_index].set(values)
    return out.reshape((values.shape[0], num_clips, num_clips) + values.shape[2:])


def gather_cells(dense: jnp.ndarray, starts: np.ndarray, ends: np.ndarray) -> jnp.ndarray:
    """Inverse of :func:`scatter_cells`: ``[B, N, N, ...] -> [B, C, ...]``."""
    n = dense.shape[1]
    flat = dense.reshape((dense.shape[0], n * n) + dense.shape[3:])
    return jnp.take(flat, np.asarray(starts) * n + np.asarray(ends), axis=1)


def span_max_map(x: jnp.ndarray, mask: np.ndarray) -> jnp.ndarray:
    """Dense content map: ``[B, N, D] -> [B, N, N, D]``, span max on valid cells, 0 elsewhere."""
    starts, ends = np.nonzero(mask)
    return scatter_cells(span_max_cells(x, starts, ends), starts, ends, x.shape[-2])


def boundary_map(x: jnp.ndarray, mask: np.ndarray) -> jnp.ndarray:
    """Dense MGPN boundary map: ``[B, N, D] -> [B, N, N, D]``, 0 outside the mask."""
    starts, ends = np.nonzero(mask)
    return scatter_cells(boundary_cells(x, starts, ends), starts, ends, x.shape[-2])
