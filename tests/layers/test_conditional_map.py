"""layers.ConditionalScoreMap: parameters as the paper writes them, outputs against NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmr_jax.layers.conditional_map import ConditionalScoreMap
from vmr_jax.ops import score_maps


def np_cond_map(params, v, n, q):
    """Eqs. 9-14 by a per-start loop in float64; padding frames dropped first."""
    p = {k: np.asarray(a, np.float64) for k, a in params.items()}
    v, q = np.asarray(v, np.float64)[:n], np.asarray(q, np.float64)
    k = len(p["start_kernel"])
    left = (k - 1) // 2

    def conv(x, kernel, bias):  # cross-correlation, zero padding, PyTorch 'same' split
        padded = np.concatenate([np.zeros(left), x, np.zeros(k - 1 - left)])
        return np.array([padded[j : j + k] @ kernel for j in range(len(x))]) + bias

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    p_st = softmax(conv(v @ q, p["start_kernel"], p["start_bias"]))
    out = np.zeros((n, n))
    for i in range(n):
        t = i / n
        v_star = np.hstack([v, np.full((n, 1), t)]) @ p["w_v"]
        q_star = np.append(q, t) @ p["w_q"]
        p_ed = softmax(conv(v_star @ q_star, p["end_kernel"], p["end_bias"])[i:])
        out[i, i:] = p_st[i] * p_ed
    return out


def test_parameters_follow_the_paper():
    module = ConditionalScoreMap(features=6, kernel_size=5)
    v, q = jnp.zeros((2, 8, 6)), jnp.zeros((2, 6))
    params = module.init(jax.random.PRNGKey(0), v, jnp.array([8, 5]), q)["params"]
    shapes = jax.tree_util.tree_map(jnp.shape, params)
    assert shapes == {
        "w_v": (7, 6),
        "w_q": (7, 6),
        "start_kernel": (5,),
        "start_bias": (),
        "end_kernel": (5,),
        "end_bias": (),
    }
    independent = ConditionalScoreMap(features=6, kernel_size=3, conditional=False)
    params = independent.init(jax.random.PRNGKey(0), v, jnp.array([8, 5]), q)["params"]
    assert set(params) == {"start_kernel", "start_bias", "end_kernel", "end_bias"}


def test_batched_call_matches_per_start_loop():
    rng = np.random.default_rng(0)
    d, length = 4, 9
    lens = np.array([9, 6, 2])
    v = jnp.asarray(rng.normal(size=(3, length, d)), jnp.float32)
    q = jnp.asarray(rng.normal(size=(3, d)), jnp.float32)
    module = ConditionalScoreMap(features=d, kernel_size=3)
    variables = module.init(jax.random.PRNGKey(1), v, lens, q)
    out = jax.jit(module.apply)(variables, v, lens, q)
    assert out.score_map.shape == (3, length, length)
    assert out.log_p_start.shape == (3, length)
    for b, n in enumerate(lens):
        expected = np.zeros((length, length))
        expected[:n, :n] = np_cond_map(variables["params"], v[b], n, q[b])
        np.testing.assert_allclose(out.score_map[b], expected, rtol=2e-5, atol=1e-8)


def test_pairwise_and_map_params():
    rng = np.random.default_rng(1)
    d, length = 4, 7
    v = jnp.asarray(rng.normal(size=(2, length, d)), jnp.float32)
    q = jnp.asarray(rng.normal(size=(3, d)), jnp.float32)
    lens = jnp.array([7, 4])
    module = ConditionalScoreMap(features=d, kernel_size=3)
    variables = module.init(jax.random.PRNGKey(2), v[:1], lens[:1], q[:1])
    pairs = module.apply(variables, q, v, lens, method=module.pairwise)
    assert pairs.score_map.shape == (3, 2, length, length)
    expected = np.zeros((length, length))
    expected[:4, :4] = np_cond_map(variables["params"], v[1], 4, q[2])
    np.testing.assert_allclose(pairs.score_map[2, 1], expected, rtol=2e-5, atol=1e-8)
    ops_params = module.apply(variables, method=module.map_params)
    assert isinstance(ops_params, score_maps.ConditionalMapParams)
    np.testing.assert_array_equal(ops_params.w_v, variables["params"]["w_v"])


def test_wrong_feature_size_is_refused():
    module = ConditionalScoreMap(features=4)
    with pytest.raises(ValueError, match="features=4"):
        module.init(jax.random.PRNGKey(0), jnp.zeros((5, 3)), 5, jnp.zeros(3))
