"""PREM localizer memory-saving formulations against the plain ones they replace.

``range_max``'s window gather (negatives' top window cells) against the full sparse table and a
numpy brute force, values and gradients; the GELU recomputation (``remat``) against storing it,
in training mode with the same dropout key; and the window gather's compiled memory against the
size of the table it replaces (computed from shapes)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.models.test_prem_localizer import CONFIG, _batch
from vmr_jax.models import prem_localizer as pl

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")


def _moments(rng, n, p, length, max_length):
    start = rng.integers(0, length, size=(n, p))
    end = np.minimum(start + rng.integers(0, max_length, size=(n, p)), length - 1)
    return start.astype(np.int32), end.astype(np.int32)


@pytest.mark.parametrize("max_length", [1, 3, 4, 7])
def test_range_max_window_gather_matches_table_and_brute_force(max_length):
    rng = np.random.default_rng(max_length)
    n, p, length, hidden = 3, 4, 11, 5
    x = rng.normal(size=(n, length, hidden)).astype(np.float32)
    start, end = _moments(rng, n, p, length, max_length)
    # p * max_length <= levels * length: the bounded call gathers, the unbounded builds the table.
    assert p * max_length <= max_length.bit_length() * length
    brute = np.stack(
        [np.stack([x[i, s : e + 1].max(0) for s, e in zip(start[i], end[i])]) for i in range(n)]
    )
    weights = rng.normal(size=brute.shape).astype(np.float32)

    def value_and_grad(bound):
        f = lambda x: jnp.sum(pl.range_max(x, start, end, bound) * weights)  # noqa: E731
        return pl.range_max(x, start, end, bound), jax.grad(f)(x)

    (table, g_table), (window, g_window) = value_and_grad(None), value_and_grad(max_length)
    np.testing.assert_array_equal(window, brute)
    np.testing.assert_array_equal(table, brute)
    # The gradient goes to each moment's arg-max clip (no ties in random data).
    g_brute = np.zeros_like(x)
    for i in range(n):
        for k, (s, e) in enumerate(zip(start[i], end[i])):
            arg = s + np.argmax(x[i, s : e + 1], axis=0)
            g_brute[i, arg, np.arange(hidden)] += weights[i, k]
    np.testing.assert_allclose(g_window, g_brute, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g_table, g_brute, rtol=1e-6, atol=1e-6)


def test_range_max_bounded_table_matches_full_table():
    # Many moments: the bounded call keeps a table, of floor(log2 6) + 1 = 3 levels, not 4.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 12, 3)).astype(np.float32)
    start, end = _moments(rng, 2, 30, 12, 6)
    assert 30 * 6 > 3 * 12
    np.testing.assert_array_equal(pl.range_max(x, start, end, 6), pl.range_max(x, start, end, None))


def test_negative_classify_and_gelu_recompute_keep_the_math():
    """Training forward + gradients with the same dropout key: ``remat`` on / off give the same
    loss, outputs and gradients; the negatives' bounded classify equals the unbounded one."""
    batch = _batch()
    models = {r: pl.create_localizer(dict(CONFIG, remat=r)) for r in (True, False)}
    params = jax.jit(lambda b: models[True].init(jax.random.PRNGKey(0), b, train=False))(batch)[
        "params"
    ]

    def run(model):
        def loss(p):
            rngs = {"dropout": jax.random.PRNGKey(5)}
            out = model.apply({"params": p}, batch, train=True, rngs=rngs)
            return pl.localizer_loss(out, batch, CONFIG)[0], out

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (v1, o1), g1 = run(models[True])
    (v0, o0), g0 = run(models[False])
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    for key in o0:
        np.testing.assert_allclose(o1[key], o0[key], rtol=1e-5, atol=1e-6, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g0)

    model = models[True]
    fused = np.random.default_rng(1).normal(size=(4, 10, 16)).astype(np.float32)
    mask = np.ones((4, 10), np.float32)
    start, end = _moments(np.random.default_rng(2), 4, 3, 10, CONFIG["max_pred_l"])

    def classify(bound):
        return model.apply(
            {"params": params}, fused, mask, start, end, max_length=bound, method="classify"
        )

    np.testing.assert_allclose(classify(CONFIG["max_pred_l"]), classify(None), rtol=1e-6, atol=1e-6)


def test_window_gather_compiles_smaller_than_the_table():
    """TVR's negatives (5 window cells of at most 16 clips over 100 clips), scaled down in N
    and H: value + gradient of the window gather need less scratch than the 7-level table
    ``[N, 7 * L, H]`` alone (f32) that the unbounded formulation builds."""
    n, p, length, hidden, span = 16, 5, 100, 32, 16
    rng = np.random.default_rng(0)
    start, end = _moments(rng, n, p, length, span)
    x = jax.ShapeDtypeStruct((n, length, hidden), jnp.float32)
    w = jnp.asarray(rng.normal(size=(n, p, hidden)), jnp.float32)
    f = jax.grad(lambda x: jnp.sum(pl.range_max(x, start, end, span) * w))
    memory = jax.jit(f).lower(x).compile().memory_analysis()
    assert memory is not None, "XLA's memory_analysis is what this test checks"
    table_bytes = n * 7 * length * hidden * 4
    assert memory.temp_size_in_bytes < table_bytes
