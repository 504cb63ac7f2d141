"""Convolutions on the sparse 2D proposal map, computed on its valid cells only.

MGPN multiplies the output of every 2D conv block by the valid-cell mask, and its inputs are
zero outside the mask, so a k x k convolution evaluated only at the ``C`` valid cells, reading
only valid neighbours, is exact.  At 64 clips with ``[15, 8, 8]`` this is 1,104 of 4,096
cells; at 128 clips with ``[15, 8, 8, 8]`` 2,548 of 16,384.

Sparse form: a static neighbour table ``nbr [C, k*k]`` gives, for every valid cell and kernel
tap ``(a, b)``, the row of cell ``(i + a - p, j + b - p)`` in the cell list, or ``C`` (a zero
row) when that cell is invalid or off the map.  The convolution is then
``out[c] = sum_t x[nbr[c, t]] @ W_t`` (block-diagonal in the channel groups).  The backward
pass w.r.t. ``x`` is the same operation with the flipped table (the neighbour relation is
symmetric), so both directions are gathers plus matmuls -- no scatter-add -- implemented with a
``jax.custom_vjp``.  Work is split in chunks of cells so that no intermediate outgrows the CPU
cache (im2col rows of ``k*k*C_in/groups`` per group).

Dense form (``dense_masked_conv``): ``lax.conv_general_dilated`` with ``feature_group_count``
on the full ``N x N`` map, times the mask; kept as the reference in tests.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def neighbour_table(
    out_starts: np.ndarray,
    out_ends: np.ndarray,
    in_starts: np.ndarray,
    in_ends: np.ndarray,
    num_clips: int,
    kernel: int,
    padding: int,
    flip: bool = False,
) -> np.ndarray:
    """Row in the input cell list read by each output cell and tap.

    Returns: int32 ``[C_out, kernel * kernel]``; tap ``t = a * kernel + b`` of output cell
    ``(i, j)`` reads input cell ``(i + a - padding, j + b - padding)`` (PyTorch
    cross-correlation order), or ``C_in`` (a zero row) when that cell is not an input cell.
    ``flip=True`` mirrors the taps (reads ``(i - a + padding, j - b + padding)``), the table of
    the transposed convolution.
    """
    c_in = len(in_starts)
    size = num_clips + 2 * kernel
    lookup = np.full((size, size), c_in, dtype=np.int64)
    lookup[np.asarray(in_starts) + kernel, np.asarray(in_ends) + kernel] = np.arange(c_in)
    da, db = np.meshgrid(np.arange(kernel) - padding, np.arange(kernel) - padding, indexing="ij")
    sign = -1 if flip else 1
    rows = np.asarray(out_starts)[:, None] + sign * da.reshape(1, -1) + kernel
    cols = np.asarray(out_ends)[:, None] + sign * db.reshape(1, -1) + kernel
    return lookup[rows, cols].astype(np.int32)


def reachable_cells(
    starts: np.ndarray, ends: np.ndarray, num_clips: int, kernel: int, padding: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cells of the ``N x N`` output map whose receptive field touches an input cell.

    Every other output cell of a conv over a map that is zero outside ``(starts, ends)`` equals
    the bias.  Returns row-major ``(starts, ends)`` of the reachable cells.
    """
    hit = np.zeros((num_clips, num_clips), dtype=bool)
    for a in range(kernel):
        for b in range(kernel):
            i = np.asarray(starts) - (a - padding)
            j = np.asarray(ends) - (b - padding)
            ok = (i >= 0) & (i < num_clips) & (j >= 0) & (j < num_clips)
            hit[i[ok], j[ok]] = True
    r_s, r_e = np.nonzero(hit)
    return r_s.astype(np.int32), r_e.astype(np.int32)


def _im2col_matmul(x_pad: jnp.ndarray, nbr: np.ndarray, w: jnp.ndarray, chunk: int) -> jnp.ndarray:
    """``out[b, c, g, o] = sum_{t, i} x_pad[b, nbr[c, t], g, i] * w[t, g, i, o]``.

    Args:
      x_pad: ``[B, C + 1, G, I]`` (last row zero).
      nbr: ``[C, T]`` static.
      w: ``[T, G, I, O]``.
    Returns: ``[B, C, G, O]``.
    """
    c, taps = nbr.shape
    n_chunks = -(-c // chunk)
    pad_rows = n_chunks * chunk - c
    zero_row = x_pad.shape[1] - 1
    nbr_p = np.concatenate([nbr, np.full((pad_rows, taps), zero_row, nbr.dtype)], axis=0)
    nbr_p = jnp.asarray(nbr_p.reshape(n_chunks, chunk, taps))
    b, _, g, i = x_pad.shape
    o = w.shape[-1]
    w_g = jnp.transpose(w, (1, 0, 2, 3)).reshape(g, taps * i, o)  # [G, T*I, O]

    def one_chunk(idx):  # idx: [chunk, T]
        cols = jnp.take(x_pad, idx.reshape(-1), axis=1)  # [B, chunk*T, G, I]
        cols = cols.reshape(b, chunk, taps, g, i)
        cols = jnp.transpose(cols, (3, 0, 1, 2, 4)).reshape(g, b * chunk, taps * i)
        out = jax.lax.dot_general(cols, w_g, (((2,), (1,)), ((0,), (0,))))  # [G, B*chunk, O]
        return jnp.transpose(out.reshape(g, b, chunk, o), (1, 2, 0, 3))

    outs = jax.lax.map(one_chunk, nbr_p)  # [n_chunks, B, chunk, G, O]
    outs = jnp.transpose(outs, (1, 0, 2, 3, 4)).reshape(b, n_chunks * chunk, g, o)
    return outs[:, :c]


def _weight_grad(x_pad, nbr, g_out, chunk):
    """``dW[t, g, i, o] = sum_{b, c} x_pad[b, nbr[c, t], g, i] * g_out[b, c, g, o]``."""
    c, taps = nbr.shape
    n_chunks = -(-c // chunk)
    pad_rows = n_chunks * chunk - c
    zero_row = x_pad.shape[1] - 1
    nbr_p = np.concatenate([nbr, np.full((pad_rows, taps), zero_row, nbr.dtype)], axis=0)
    nbr_p = jnp.asarray(nbr_p.reshape(n_chunks, chunk, taps))
    b, _, g, i = x_pad.shape
    o = g_out.shape[-1]
    g_pad = jnp.concatenate([g_out, jnp.zeros((b, pad_rows, g, o), g_out.dtype)], axis=1)
    g_chunks = jnp.transpose(g_pad.reshape(b, n_chunks, chunk, g, o), (1, 0, 2, 3, 4))

    def one_chunk(acc, inp):
        idx, gc = inp
        cols = jnp.take(x_pad, idx.reshape(-1), axis=1).reshape(b, chunk, taps, g, i)
        cols = jnp.transpose(cols, (3, 2, 4, 0, 1)).reshape(g, taps * i, b * chunk)
        gc = jnp.transpose(gc, (2, 0, 1, 3)).reshape(g, b * chunk, o)
        return acc + jax.lax.dot_general(cols, gc, (((2,), (1,)), ((0,), (0,)))), None

    acc0 = jnp.zeros((g, taps * i, o), x_pad.dtype)
    acc, _ = jax.lax.scan(one_chunk, acc0, (nbr_p, g_chunks))
    return jnp.transpose(acc.reshape(g, taps, i, o), (1, 0, 2, 3))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _sparse_conv(x: jnp.ndarray, w: jnp.ndarray, fwd_key, bwd_key, chunk: int) -> jnp.ndarray:
    return _sparse_conv_fwd(x, w, fwd_key, bwd_key, chunk)[0]


def _pad_row(x):
    b, _, g, i = x.shape
    return jnp.concatenate([x, jnp.zeros((b, 1, g, i), x.dtype)], axis=1)


def _sparse_conv_fwd(x, w, fwd_key, bwd_key, chunk):
    out = _im2col_matmul(_pad_row(x), fwd_key.array, w, chunk)
    return out, (x, w)


def _sparse_conv_bwd(fwd_key, bwd_key, chunk, res, g_out):
    x, w = res
    # dx[c] = sum_t g[c - off_t] @ W_t^T: the transposed conv reads the output cells through
    # the mirrored table, with the kernel taps and the per-group matrices transposed.
    w_t = jnp.swapaxes(w, 2, 3)  # [T, G, O, I]
    dx = _im2col_matmul(_pad_row(g_out), bwd_key.array, w_t, chunk)
    dw = _weight_grad(_pad_row(x), fwd_key.array, g_out, chunk)
    return dx, dw


_sparse_conv.defvjp(_sparse_conv_fwd, _sparse_conv_bwd)


class _Static:
    """Hashable holder of a static NumPy array (custom_vjp nondiff argument)."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self._key = (array.shape, array.tobytes())

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Static) and self._key == other._key


@functools.lru_cache(maxsize=64)
def _tables(in_key: bytes, out_key: bytes, n_in: int, num_clips: int, kernel: int, padding: int):
    cells_in = np.frombuffer(in_key, np.int32).reshape(2, n_in)
    cells_out = np.frombuffer(out_key, np.int32).reshape(2, -1)
    fwd = neighbour_table(*cells_out, *cells_in, num_clips, kernel, padding)
    bwd = neighbour_table(*cells_in, *cells_out, num_clips, kernel, padding, flip=True)
    return _Static(fwd), _Static(bwd)


def sparse_group_conv(
    x: jnp.ndarray,
    kernel: jnp.ndarray,
    in_cells: tuple[np.ndarray, np.ndarray],
    out_cells: tuple[np.ndarray, np.ndarray],
    num_clips: int,
    padding: int,
    groups: int,
    chunk: int = 128,
) -> jnp.ndarray:
    """Grouped 2D convolution of a map that is zero outside ``in_cells``, evaluated at
    ``out_cells`` only (no bias).

    Args:
      x: ``[B, C_in_cells, C_in]`` features of the input cells (``in_cells`` order).
      kernel: ``[k, k, C_in / groups, C_out]`` (flax ``nn.Conv`` layout).
      in_cells, out_cells: static ``(starts, ends)`` int arrays.
    Returns: ``[B, C_out_cells, C_out]``, equal to the dense convolution of the scattered map
      read back at ``out_cells``.
    """
    k = kernel.shape[0]
    b, c, c_in = x.shape
    c_out = kernel.shape[-1]
    in_arr = np.stack([np.asarray(a, np.int32) for a in in_cells])
    out_arr = np.stack([np.asarray(a, np.int32) for a in out_cells])
    fwd, bwd = _tables(in_arr.tobytes(), out_arr.tobytes(), c, num_clips, k, padding)
    i = c_in // groups
    o = c_out // groups
    w = kernel.reshape(k * k, i, groups, o).transpose(0, 2, 1, 3)  # [T, G, I, O]
    chunk = min(chunk, max(c, out_arr.shape[1]))
    out = _sparse_conv(x.reshape(b, c, groups, i), w, fwd, bwd, chunk)
    return out.reshape(b, out_arr.shape[1], c_out)


def dense_masked_conv(
    x: jnp.ndarray, kernel: jnp.ndarray, padding: int, groups: int
) -> jnp.ndarray:
    """Reference: grouped conv on the dense map ``[B, N, N, C_in]`` (no bias, no mask)."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1),
        padding=[(padding, padding), (padding, padding)],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )
