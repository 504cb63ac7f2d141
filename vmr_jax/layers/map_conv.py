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


def _chunk_table(nbr: np.ndarray, zero_row: int, chunk: int) -> np.ndarray:
    """``nbr [C_out, T]`` padded with ``zero_row`` rows to whole chunks: ``[n, chunk, T]``."""
    c_out, taps = nbr.shape
    n_chunks = -(-c_out // chunk)
    pad = np.full((n_chunks * chunk - c_out, taps), zero_row, nbr.dtype)
    return np.concatenate([nbr, pad], axis=0).reshape(n_chunks, chunk, taps).astype(np.int32)


def _tiles(batch: int, n_chunks: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(example, cell chunk) of every tile, example-major."""
    ex = np.repeat(np.arange(batch, dtype=np.int32), n_chunks)
    ch = np.tile(np.arange(n_chunks, dtype=np.int32), batch)
    return jnp.asarray(ex), jnp.asarray(ch)


def _group_major(x: jnp.ndarray) -> jnp.ndarray:
    """``[B, C, G, I]`` -> ``[G, B * (C + 1), I]`` with a zero row closing every example."""
    b, c, g, i = x.shape
    x = jnp.concatenate([x, jnp.zeros((b, 1, g, i), x.dtype)], axis=1)
    return jnp.transpose(x, (2, 0, 1, 3)).reshape(g, b * (c + 1), i)


def _im2col_matmul(x: jnp.ndarray, nbr: np.ndarray, w: jnp.ndarray, chunk: int) -> jnp.ndarray:
    """``out[b, c, g, o] = sum_{t, i} x[b, nbr[c, t], g, i] * w[t, g, i, o]``, zero where
    ``nbr`` points past the input cells.

    Works tile by tile (one example, ``chunk`` output cells): the im2col block of a tile is
    ``[G, chunk, T * I]`` and one batched matmul over the groups.

    Args:
      x: ``[B, C_in, G, I]``.
      nbr: ``[C_out, T]`` static, values in ``[0, C_in]``.
      w: ``[T, G, I, O]``.
    Returns: ``[B, C_out, G, O]``.
    """
    b, c_in, g, i = x.shape
    c_out, taps = nbr.shape
    o = w.shape[-1]
    chunk = min(chunk, c_out)
    table = jnp.asarray(_chunk_table(nbr, c_in, chunk))
    n_chunks = table.shape[0]
    xg = _group_major(x)
    w_g = jnp.transpose(w, (1, 0, 2, 3)).reshape(g, taps * i, o)  # [G, T*I, O]

    def one_tile(tile):
        ex, ch = tile
        idx = table[ch].reshape(-1) + ex * (c_in + 1)
        cols = jnp.take(xg, idx, axis=1).reshape(g, chunk, taps * i)
        return jax.lax.dot_general(cols, w_g, (((2,), (1,)), ((0,), (0,))))  # [G, chunk, O]

    out = jax.lax.map(one_tile, _tiles(b, n_chunks))  # [B * n_chunks, G, chunk, O]
    out = out.reshape(b, n_chunks, g, chunk, o).transpose(0, 1, 3, 2, 4)
    return out.reshape(b, n_chunks * chunk, g, o)[:, :c_out]


def _input_grads(
    x: jnp.ndarray, g_out: jnp.ndarray, bwd: np.ndarray, w: jnp.ndarray, chunk: int
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Both gradients of the sparse conv from one im2col of ``g_out`` per tile of input cells.

    With ``cols[c', t] = g_out[c' - off_t]`` (the mirrored table ``bwd``):
    ``dx[c'] = sum_t cols[c', t] @ W_t^T`` and ``dW_t = sum_{b, c'} x[c']^T cols[c', t]`` --
    the weight gradient runs over the input cells (fewer than the output cells when the conv
    is evaluated on the reachable cells) and reuses the gather of ``dx``.

    Args:
      x: ``[B, C_in, G, I]``; g_out: ``[B, C_out, G, O]``; bwd: ``[C_in, T]`` in ``[0, C_out]``;
      w: ``[T, G, I, O]``.
    Returns: ``(dx [B, C_in, G, I], dw [T, G, I, O])``.
    """
    b, c_in, g, i = x.shape
    c_out, o = g_out.shape[1], g_out.shape[-1]
    taps = bwd.shape[1]
    chunk = min(chunk, c_in)
    table = jnp.asarray(_chunk_table(bwd, c_out, chunk))
    n_chunks = table.shape[0]
    gg = _group_major(g_out)  # [G, B * (C_out + 1), O]
    x_pad = jnp.pad(x, ((0, 0), (0, n_chunks * chunk - c_in), (0, 0), (0, 0)))
    x_tiles = x_pad.reshape(b * n_chunks, chunk, g, i).transpose(0, 2, 1, 3)  # [tiles,G,chunk,I]
    w_t = jnp.transpose(w, (1, 0, 3, 2)).reshape(g, taps * o, i)  # [G, T*O, I]
    ex, ch = _tiles(b, n_chunks)

    def one_tile(acc, tile):
        ex, ch, xt = tile
        idx = table[ch].reshape(-1) + ex * (c_out + 1)
        cols = jnp.take(gg, idx, axis=1).reshape(g, chunk, taps * o)
        dx = jax.lax.dot_general(cols, w_t, (((2,), (1,)), ((0,), (0,))))  # [G, chunk, I]
        acc = acc + jax.lax.dot_general(xt, cols, (((1,), (1,)), ((0,), (0,))))  # [G, I, T*O]
        return acc, dx

    acc, dx = jax.lax.scan(one_tile, jnp.zeros((g, i, taps * o), x.dtype), (ex, ch, x_tiles))
    dx = dx.reshape(b, n_chunks, g, chunk, i).transpose(0, 1, 3, 2, 4)
    dx = dx.reshape(b, n_chunks * chunk, g, i)[:, :c_in]
    dw = jnp.transpose(acc.reshape(g, i, taps, o), (2, 0, 1, 3))
    return dx, dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _sparse_conv(x: jnp.ndarray, w: jnp.ndarray, fwd_key, bwd_key, chunk: int) -> jnp.ndarray:
    return _sparse_conv_fwd(x, w, fwd_key, bwd_key, chunk)[0]


def _sparse_conv_fwd(x, w, fwd_key, bwd_key, chunk):
    out = _im2col_matmul(x, fwd_key.array, w, chunk)
    return out, (x, w)


def _sparse_conv_bwd(fwd_key, bwd_key, chunk, res, g_out):
    x, w = res
    # The transposed conv reads the output cells through the mirrored table.
    return _input_grads(x, g_out, bwd_key.array, w, chunk)


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
