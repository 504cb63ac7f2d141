"""Sparse grouped conv on valid cells vs the dense convolution of the scattered map."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmr_jax.layers import map_conv
from vmr_jax.ops import moment_map


def _dense_reference(x, w, cells_in, cells_out, n, groups):
    """Independent method: plain NumPy loops over the dense map (cross-correlation)."""
    b, _, c_in = x.shape
    k = w.shape[0]
    pad = k // 2
    dense = np.zeros((b, n + 2 * pad, n + 2 * pad, c_in), np.float64)
    dense[:, cells_in[0] + pad, cells_in[1] + pad] = x
    i_per, o_per = c_in // groups, w.shape[-1] // groups
    out = np.zeros((b, len(cells_out[0]), w.shape[-1]))
    for c, (i, j) in enumerate(zip(*cells_out)):
        patch = dense[:, i : i + k, j : j + k]  # [B, k, k, C_in]
        for g in range(groups):
            xs = patch[..., g * i_per : (g + 1) * i_per]
            ws = w[..., g * o_per : (g + 1) * o_per]
            out[:, c, g * o_per : (g + 1) * o_per] = np.einsum("bhwi,hwio->bo", xs, ws)
    return out


@pytest.mark.parametrize("reach", [False, True])
def test_values_and_gradients_match_dense(reach):
    n, counts, groups = 12, (5, 3), 2
    cells = moment_map.valid_cells(n, counts)
    out_cells = map_conv.reachable_cells(*cells, n, 5, 2) if reach else cells
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, len(cells[0]), 4)).astype(np.float32)
    w = rng.normal(size=(5, 5, 2, 6)).astype(np.float32)

    def sparse(x, w):
        return map_conv.sparse_group_conv(x, w, cells, out_cells, n, 2, groups, chunk=7)

    want = _dense_reference(x, w, cells, out_cells, n, groups)
    np.testing.assert_allclose(np.asarray(sparse(x, w)), want, atol=1e-4)

    def dense(x, w):
        d = moment_map.scatter_cells(x, *cells, n)
        return moment_map.gather_cells(map_conv.dense_masked_conv(d, w, 2, groups), *out_cells)

    gy = rng.normal(size=want.shape).astype(np.float32)
    grads = [
        jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) * gy), argnums=(0, 1))(x, w)
        for f in (sparse, dense)
    ]
    for a, b in zip(*grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def test_reachable_cells_cover_every_nonzero_output():
    n, counts = 16, (7, 4)
    cells = moment_map.valid_cells(n, counts)
    reach = map_conv.reachable_cells(*cells, n, 7, 3)
    hit = np.zeros((n, n), bool)
    hit[reach] = True
    # By hand: a cell is reachable iff some valid cell lies within Chebyshev distance 3.
    mask = moment_map.valid_cell_mask(n, counts)
    for i in range(n):
        for j in range(n):
            near = mask[max(0, i - 3) : i + 4, max(0, j - 3) : j + 4].any()
            assert hit[i, j] == near, (i, j)
