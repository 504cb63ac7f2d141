"""ops.score_maps against float64 NumPy written here: naive per-start loops, hand-worked maps."""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vmr_jax.models import cascaded_mpn
from vmr_jax.ops import score_maps as sm

# ---- independent float64 references --------------------------------------------------------


def np_conv_same(x, kernel, bias):
    """PyTorch Conv1d(1, 1, k, padding='same') on a 1-D row, via np.convolve."""
    k = len(kernel)
    left = (k - 1) // 2
    full = np.convolve(x, np.asarray(kernel, np.float64)[::-1], mode="full")
    return full[k - 1 - left : k - 1 - left + len(x)] + bias


def np_softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def np_f_cond(v, n, q, p, conditional=True):
    """Eqs. 9-14 literally on the n valid frames: [v || i/n] W_v, [q || i/n] W_q per start i."""
    p = {k: None if a is None else np.asarray(a, np.float64) for k, a in p._asdict().items()}
    v, q = np.asarray(v, np.float64)[:n], np.asarray(q, np.float64)
    length = n
    p_st = np_softmax(np_conv_same(v @ q, p["start_kernel"], p["start_bias"]))
    p_ed = np.zeros((length, length))
    if not conditional:
        p_ed[:] = np_softmax(np_conv_same(v @ q, p["end_kernel"], p["end_bias"]))
    for i in range(length):
        if not conditional:
            break
        t = i / n
        v_star = np.concatenate([v, np.full((length, 1), t)], axis=1) @ p["w_v"]
        q_star = np.concatenate([q, [t]]) @ p["w_q"]
        logits = np_conv_same(v_star @ q_star, p["end_kernel"], p["end_bias"])
        p_ed[i, i:] = np_softmax(logits[i:])
    score = np.triu(p_st[:, None] * p_ed)
    return score, p_st, p_ed


def np_pad_map(m, size):
    out = np.zeros((size, size))
    out[: m.shape[0], : m.shape[1]] = m
    return out


def np_sparsity_pool(x, k):
    """Window loop on the zero-padded map: h = x * x / max(window), 0 where that max is 0."""
    length = x.shape[0]
    size = -(-length // k) * k
    padded = np_pad_map(x, size)
    out = np.zeros((size, size))
    for r0 in range(0, size, k):
        for c0 in range(0, size, k):
            win = padded[r0 : r0 + k, c0 : c0 + k]
            if win.max() != 0:
                out[r0 : r0 + k, c0 : c0 + k] = win * win / win.max()
    return out[:length, :length]


def np_upsample(anchor, length, n):
    big_n = anchor.shape[0]
    out = np.zeros((length, length))
    for s in range(n):
        for e in range(s, n):
            out[s, e] = anchor[min(s * big_n // n, big_n - 1), min(e * big_n // n, big_n - 1)]
    return out


def np_cascade(m0, anchors, n, sparsity=True, levels=None):
    length = m0.shape[0]
    mask = np.triu(np.ones((length, length), bool)) & (np.arange(length)[None, :] < n)
    m = np.where(mask, m0, 0.0)
    for i in range(1, (levels or len(anchors)) + 1):
        if sparsity:
            m = np_sparsity_pool(m, 2**i)
        if anchors is not None:
            m = m + np_upsample(np.asarray(anchors[i - 1], np.float64), length, n)
        m = np.where(mask, 1.0 / (1.0 + np.exp(-m)), 0.0)
    return m


# ---- fixtures ------------------------------------------------------------------------------


def make_params(rng, d, k=3, conditional=True, scale=0.3):
    w = lambda: jnp.asarray(rng.normal(0, scale, (d + 1, d)), jnp.float32)  # noqa: E731
    return sm.ConditionalMapParams(
        w_v=w() if conditional else None,
        w_q=w() if conditional else None,
        start_kernel=jnp.asarray(rng.normal(0, 0.7, k), jnp.float32),
        start_bias=jnp.float32(rng.normal()),
        end_kernel=jnp.asarray(rng.normal(0, 0.7, k), jnp.float32),
        end_bias=jnp.float32(rng.normal()),
    )


def make_video(rng, length, n, d):
    v = rng.normal(0, 0.5, (length, d))
    v[n:] = rng.normal(0, 50.0, (length - n, d))  # garbage padding must not matter
    return jnp.asarray(v, jnp.float32)


# ---- conditional / independent maps --------------------------------------------------------


@pytest.mark.parametrize("length,n,k", [(9, 9, 3), (12, 7, 5), (10, 6, 4), (6, 1, 3)])
def test_conditional_map_matches_naive_per_start_loop(length, n, k):
    rng = np.random.default_rng(length * 10 + n)
    d = 6
    p, v = make_params(rng, d, k), make_video(rng, length, n, d)
    q = jnp.asarray(rng.normal(0, 0.5, d), jnp.float32)
    out = jax.jit(sm.conditional_score_map)(v, jnp.int32(n), q, p)
    score, p_st, p_ed = np_f_cond(v, n, q, p)
    np.testing.assert_allclose(out.score_map, np_pad_map(score, length), rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(np.exp(out.log_p_start[:n]), p_st, rtol=2e-5)
    upper = np.triu(np.ones((n, n), bool))
    np.testing.assert_allclose(np.exp(out.log_p_end)[:n, :n][upper], p_ed[upper], rtol=2e-5)
    # masks: nothing outside i <= j < n, and -inf-safe log-probs there
    mask = np.triu(np.ones((length, length), bool)) & (np.arange(length)[None, :] < n)
    assert np.all(np.asarray(out.score_map)[~mask] == 0)
    assert np.all(np.asarray(out.log_p_end)[~mask] == np.finfo(np.float32).min)
    assert np.all(np.asarray(out.log_p_start)[n:] == np.finfo(np.float32).min)
    # normalisation: P(start) over valid frames, each valid start's P(end | start)
    np.testing.assert_allclose(np.exp(out.log_p_start).sum(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.exp(out.log_p_end)[:n].sum(axis=1), np.ones(n), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out.score_map).sum(), 1.0, rtol=1e-5)


def test_conditional_map_is_padding_invariant():
    rng = np.random.default_rng(3)
    d, n = 5, 8
    p, v = make_params(rng, d), make_video(rng, 14, n, d)
    q = jnp.asarray(rng.normal(size=d), jnp.float32)
    fn = jax.jit(sm.conditional_score_map)
    padded = fn(v, n, q, p).score_map
    trimmed = fn(v[:n], n, q, p).score_map
    np.testing.assert_allclose(padded[:n, :n], trimmed, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("length,n", [(8, 8), (11, 5)])
def test_independent_map_matches_outer_product(length, n):
    rng = np.random.default_rng(n)
    d = 4
    p, v = make_params(rng, d, conditional=False), make_video(rng, length, n, d)
    q = jnp.asarray(rng.normal(size=d), jnp.float32)
    out = sm.moment_score_map(v, jnp.int32(n), q, p, conditional=False)
    score, p_st, p_ed = np_f_cond(v, n, q, p, conditional=False)
    np.testing.assert_allclose(out.score_map, np_pad_map(score, length), rtol=2e-5, atol=1e-8)
    np.testing.assert_allclose(np.exp(out.log_p_end[:n, :n]), p_ed, rtol=2e-5)
    np.testing.assert_allclose(np.exp(out.log_p_end[n - 1]).sum(), 1.0, rtol=1e-5)


@pytest.mark.parametrize("conditional", [True, False])
def test_gradients_finite_with_padding(conditional):
    rng = np.random.default_rng(7)
    d, length, n = 4, 10, 6
    p, v = make_params(rng, d, conditional=conditional), make_video(rng, length, n, d)
    q = jnp.asarray(rng.normal(size=d), jnp.float32)
    anchors = tuple(jnp.asarray(rng.normal(size=(2**i, d)), jnp.float32) for i in (1, 2, 3))

    def loss(p, v, q):
        fr = sm.moment_score_map(v, n, q, p, conditional)
        ce = -fr.log_p_start[2] - fr.log_p_end[2, 4]
        full = sm.cascaded_score_map(v, n, anchors, q, p, p, conditional=conditional)
        # sums over every entry, masked ones included
        onehot = jax.nn.one_hot(3, length)
        mixed = jnp.sum(onehot[:, None] * fr.log_p_end) + jnp.sum(onehot * fr.log_p_start)
        return ce + full.score_map.sum() + fr.score_map.sum() + 1e-3 * mixed

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(p, v, q)
    for g in jax.tree_util.tree_leaves(grads):
        assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(grads[1])[n:] == 0)  # padding frames get no gradient


def test_no_l_l_d_buffer_in_compiled_map():
    length, d = 64, 256
    rng = np.random.default_rng(0)
    p, v = make_params(rng, d, k=5), make_video(rng, length, 50, d)
    q = jnp.asarray(rng.normal(size=d), jnp.float32)
    compiled = jax.jit(sm.conditional_score_map).lower(v, jnp.int32(50), q, p).compile()
    memory = compiled.memory_analysis()
    if memory is not None:
        assert memory.temp_size_in_bytes < length * length * d * 4 // 8
    # no array in the optimised program (fused or not) comes near L * L * d elements
    assert largest_f32_array(compiled) < length * length * d // 4


def largest_f32_array(compiled) -> int:
    """Elements of the largest float32 array anywhere in the optimised HLO (fused or not)."""
    sizes = [
        int(np.prod([int(x) for x in dims.split(",") if x]))
        for dims in re.findall(r"f32\[([0-9,]*)\]", compiled.as_text())
    ]
    return max(sizes)


def test_no_l_l_d_buffer_in_compiled_corpus_localize():
    """Stage 2 of the corpus search (``CascadedMPNStages.localize``: M_T of Algorithm 1 for
    every query-video pair) at the TVR shapes, d = 768 and L = 100, over 2 queries x 4 videos,
    compiled on abstract shapes: one [L, L, d] float32 tensor (29.3 MiB) is larger than the
    program's whole temp allocation, so neither it nor a [Q, K, L, L, d] one is built."""
    config = ml_collections.ConfigDict(dict(cascaded_mpn.VARIANTS["tvr"], name="cascaded_mpn"))
    length, d, num_q, num_k = config.max_ctx_l, config.hidden_size, 2, 4
    assert (length, d) == (100, 768)
    model = cascaded_mpn.create_model(config)
    stages = dataclasses.replace(cascaded_mpn.FAMILY.corpus(model, config), top_videos=num_k)
    batch = cascaded_mpn.example_batch(config, 1)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch, train=False))
    queries = {k: np.repeat(batch[k], num_q, 0) for k in ("query_features", "query_mask")}
    query_enc = jax.eval_shape(stages.encode_queries, variables, queries)
    one_video = jax.eval_shape(stages.encode_videos, variables, batch)
    video_enc = {
        k: jax.ShapeDtypeStruct((num_q, num_k, *v.shape[1:]), v.dtype) for k, v in one_video.items()
    }
    assert video_enc["frames"].shape == (num_q, num_k, length, d)
    compiled = jax.jit(stages.localize).lower(variables, query_enc, video_enc).compile()
    l_l_d_bytes = length * length * d * 4
    memory = compiled.memory_analysis()
    assert memory is not None  # the CPU backend reports it
    assert memory.temp_size_in_bytes < l_l_d_bytes
    assert largest_f32_array(compiled) < length * length * d // 4

    # Control: the literal eqs. 10-12 (a start-conditioned video per start, [L, L, d]) at the
    # same L and d does show its tensor in the same measure.
    def literal_end_logits(video, query, w_v):
        t = jnp.arange(length, dtype=jnp.float32)[:, None, None] / length
        return jnp.einsum("ild,d->il", jnp.tanh(video[None] @ w_v + t), query)

    spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    literal = jax.jit(literal_end_logits).lower(spec(length, d), spec(d), spec(d, d)).compile()
    assert literal.memory_analysis().temp_size_in_bytes >= l_l_d_bytes


# ---- sparsity pooling ----------------------------------------------------------------------


def test_sparsity_pool_hand_worked_4x4():
    x = np.array(
        [[1, 2, 4, 0], [0, 4, 2, 1], [0, 0, 3, 6], [0, 0, 0, 2]],
        np.float32,
    )
    # windows: max 4 -> x^2/4; max 4 -> x^2/4; all zero -> 0; max 6 -> x^2/6
    expected = np.array(
        [[0.25, 1, 4, 0], [0, 4, 1, 0.25], [0, 0, 1.5, 6], [0, 0, 0, 2 / 3]],
        np.float64,
    )
    np.testing.assert_allclose(sm.sparsity_pool(jnp.asarray(x), 2), expected, rtol=1e-6)
    grad = jax.grad(lambda m: sm.sparsity_pool(m, 2).sum())(jnp.asarray(x))
    assert np.all(np.isfinite(np.asarray(grad)))
    # d/dx (x^2 / m) = 2x/m off the argmax; at the argmax 2x/m - sum(win^2)/m^2
    np.testing.assert_allclose(grad[0, 0], 2 * 1 / 4, rtol=1e-6)
    np.testing.assert_allclose(grad[1, 1], 2 * 4 / 4 - (1 + 4 + 0 + 16) / 16, rtol=1e-6)
    np.testing.assert_allclose(grad[2:, :2], np.zeros((2, 2)))


def test_sparsity_pool_all_zero_and_non_multiple():
    zeros = jnp.zeros((5, 5))
    assert np.all(np.asarray(sm.sparsity_pool(zeros, 2)) == 0)
    assert np.all(np.isfinite(np.asarray(jax.grad(lambda m: sm.sparsity_pool(m, 2).sum())(zeros))))
    rng = np.random.default_rng(1)
    x = np.triu(rng.uniform(0, 1, (13, 13)))
    for k in (2, 4, 8, 32):
        np.testing.assert_allclose(
            sm.sparsity_pool(jnp.asarray(x, jnp.float32), k), np_sparsity_pool(x, k), rtol=1e-5
        )


# ---- anchor upsampling ---------------------------------------------------------------------


def test_upsample_anchor_map_by_hand_l7_n2():
    anchor = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
    # seg(t) = floor(2t / 7) = [0, 0, 0, 0, 1, 1, 1]
    expected = np.array(
        [
            [1, 1, 1, 1, 2, 2, 2],
            [0, 1, 1, 1, 2, 2, 2],
            [0, 0, 1, 1, 2, 2, 2],
            [0, 0, 0, 1, 2, 2, 2],
            [0, 0, 0, 0, 4, 4, 4],
            [0, 0, 0, 0, 0, 4, 4],
            [0, 0, 0, 0, 0, 0, 4],
        ]
    )
    np.testing.assert_array_equal(sm.upsample_anchor_map(anchor, 7, jnp.int32(7)), expected)
    # valid 5 of 7: seg = floor(2t / 5) = [0, 0, 0, 1, 1]
    expected5 = np.zeros((7, 7))
    expected5[:5, :5] = np.triu([[1, 1, 1, 2, 2]] * 3 + [[4, 4, 4, 4, 4]] * 2)
    np.testing.assert_array_equal(sm.upsample_anchor_map(anchor, 7, jnp.int32(5)), expected5)


def test_upsample_anchor_map_by_hand_l7_n4():
    anchor = jnp.arange(16.0).reshape(4, 4)
    seg = [0, 0, 1, 1, 2, 2, 3]  # floor(4t / 7), t = 0..6
    np.testing.assert_array_equal(sm.segment_ids(7, jnp.int32(7), 4), seg)
    expected = np.zeros((7, 7))
    for s in range(7):
        for e in range(s, 7):
            expected[s, e] = 4 * seg[s] + seg[e]
    np.testing.assert_array_equal(sm.upsample_anchor_map(anchor, 7, 7), expected)


# ---- Algorithm 1 ---------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [1, 3, 5])
@pytest.mark.parametrize("sparsity", [True, False])
def test_cascade_matches_python_loop(levels, sparsity):
    rng = np.random.default_rng(levels)
    length, n = 13, 11
    m0 = rng.uniform(0, 0.05, (length, length))
    anchors = [rng.uniform(0, 0.1, (2**i, 2**i)) for i in range(1, levels + 1)]
    got = jax.jit(sm.cascade, static_argnames=("num_levels", "sparsity_pooling"))(
        jnp.asarray(m0, jnp.float32),
        tuple(jnp.asarray(a, jnp.float32) for a in anchors),
        jnp.int32(n),
        sparsity_pooling=sparsity,
    )
    np.testing.assert_allclose(got, np_cascade(m0, anchors, n, sparsity), rtol=1e-5, atol=1e-7)
    mask = np.triu(np.ones((length, length), bool)) & (np.arange(length)[None, :] < n)
    assert np.all(np.asarray(got)[~mask] == 0)  # no sigmoid(0) = 0.5 in masked cells
    no_anchor = sm.cascade(jnp.asarray(m0, jnp.float32), None, n, num_levels=levels)
    np.testing.assert_allclose(no_anchor, np_cascade(m0, None, n, True, levels), rtol=1e-5)


@pytest.mark.parametrize("levels", [1, 3, 5])
def test_cascaded_score_map_end_to_end(levels):
    rng = np.random.default_rng(20 + levels)
    d, length, n = 5, 13, 11
    frame_p, anchor_p = make_params(rng, d), [make_params(rng, d) for _ in range(levels)]
    v = make_video(rng, length, n, d)
    q = jnp.asarray(rng.normal(size=d), jnp.float32)
    anchors = [jnp.asarray(rng.normal(size=(2**i, d)), jnp.float32) for i in range(1, levels + 1)]
    out = jax.jit(sm.cascaded_score_map)(v, jnp.int32(n), anchors, q, frame_p, anchor_p)
    m0 = np_pad_map(np_f_cond(v, n, q, frame_p)[0], length)
    maps = [np_f_cond(c, c.shape[0], q, p)[0] for c, p in zip(anchors, anchor_p)]
    np.testing.assert_allclose(out.score_map, np_cascade(m0, maps, n), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.frame.score_map, m0, rtol=2e-5, atol=1e-8)


def test_cascade_rejects_wrong_anchor_shapes():
    with pytest.raises(ValueError, match="N = 2"):
        sm.cascade(jnp.zeros((8, 8)), (jnp.zeros((4, 4)),), 8)
    with pytest.raises(ValueError, match="num_levels"):
        sm.cascade(jnp.zeros((8, 8)), None, 8)


def test_pairwise_shapes_and_values():
    rng = np.random.default_rng(5)
    num_q, num_v, length, d = 3, 4, 9, 6
    p = make_params(rng, d)
    queries = jnp.asarray(rng.normal(size=(num_q, d)), jnp.float32)
    lens = jnp.asarray([9, 5, 7, 1], jnp.int32)
    videos = jnp.stack([make_video(rng, length, int(n), d) for n in lens])
    anchors = tuple(jnp.asarray(rng.normal(size=(num_v, 2**i, d)), jnp.float32) for i in (1, 2, 3))
    maps = jax.jit(sm.pairwise_cascaded_score_maps)(queries, videos, lens, anchors, p, p)
    assert maps.shape == (num_q, num_v, length, length)
    for qi, vi in [(0, 0), (2, 1), (1, 3)]:
        single = jax.jit(sm.cascaded_score_map)(
            videos[vi], lens[vi], [a[vi] for a in anchors], queries[qi], p, p
        )
        np.testing.assert_allclose(maps[qi, vi], single.score_map, rtol=1e-5, atol=1e-7)


def test_ablations_through_cascaded_score_map():
    rng = np.random.default_rng(9)
    d, length, n = 4, 13, 11
    p = make_params(rng, d, conditional=False)
    v, q = make_video(rng, length, n, d), jnp.asarray(rng.normal(size=d), jnp.float32)
    fn = jax.jit(
        sm.cascaded_score_map,
        static_argnames=("conditional", "sparsity_pooling", "num_levels"),
    )
    out = fn(v, n, (), q, p, None, conditional=False, sparsity_pooling=False, num_levels=2)
    m0 = np_pad_map(np_f_cond(v, n, q, p, conditional=False)[0], length)
    np.testing.assert_allclose(out.score_map, np_cascade(m0, None, n, False, 2), rtol=1e-5)
    empty = fn(v, 0, (), q, p, None, conditional=False, num_levels=2)  # valid_len = 0
    assert np.all(np.asarray(empty.score_map) == 0)
    assert np.all(np.isfinite(np.asarray(empty.frame.log_p_end)))


def test_cascade_on_the_cells_scale_by_hand():
    # L = 2 (both valid), T = 1, no sparsity pooling.  'cells' multiplies the frame map by
    # its 3 valid cells and the 2-anchor map by its 3: [[1.5, 0.9], [-, 0.6]] + [[0.6, 1.5],
    # [-, 0.9]] (segments = frames here) = [[2.1, 2.4], [-, 1.5]], then the sigmoid.
    frame = jnp.array([[0.5, 0.3], [0.0, 0.2]], jnp.float32)
    anchor = jnp.array([[0.2, 0.5], [0.0, 0.3]], jnp.float32)
    got = sm.cascade(frame, [anchor], 2, sparsity_pooling=False, map_scale="cells")

    def sigmoid(x):
        return 1.0 / (1.0 + math.exp(-x))

    want = [[sigmoid(2.1), sigmoid(2.4)], [0.0, sigmoid(1.5)]]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    literal = sm.cascade(frame, [anchor], 2, sparsity_pooling=False)
    want = [[sigmoid(0.7), sigmoid(0.8)], [0.0, sigmoid(0.5)]]
    np.testing.assert_allclose(np.asarray(literal), want, rtol=1e-6)
    with pytest.raises(ValueError, match="map_scale"):
        sm.cascade(frame, [anchor], 2, map_scale="logits")


def np_log_cascade(m0, anchors, n, sparsity=True, levels=None):
    """The 'log' scale in probability terms, float64: ``M_i = h(M_{i-1}) * Upsample(N)`` (a
    product, no sigmoid), then the log of the valid cells divided by their sum."""
    length = m0.shape[0]
    mask = np.triu(np.ones((length, length), bool)) & (np.arange(length)[None, :] < n)
    m = np.where(mask, m0, 0.0)
    for i in range(1, (levels or len(anchors)) + 1):
        if sparsity:
            m = np_sparsity_pool(m, 2**i)
        if anchors is not None:
            m = m * np_upsample(np.asarray(anchors[i - 1], np.float64), length, n)
    return np.log(m[mask] / m[mask].sum()), mask


@pytest.mark.parametrize("levels", [1, 3, 5])
@pytest.mark.parametrize("sparsity", [True, False])
def test_log_cascade_is_the_log_of_the_product_loop(levels, sparsity):
    # L = 13 with 11 valid frames: neither is a multiple of the 2, 4, 8, 16, 32 kernels.
    rng = np.random.default_rng(40 + levels)
    length, n = 13, 11
    m0 = rng.uniform(0.01, 0.05, (length, length))
    anchors = [rng.uniform(0.05, 0.5, (2**i, 2**i)) for i in range(1, levels + 1)]
    got = jax.jit(sm.cascade, static_argnames=("num_levels", "sparsity_pooling", "map_scale"))(
        jnp.asarray(np.log(m0), jnp.float32),
        tuple(jnp.asarray(np.log(a), jnp.float32) for a in anchors),
        jnp.int32(n),
        sparsity_pooling=sparsity,
        map_scale="log",
    )
    want, mask = np_log_cascade(m0, anchors, n, sparsity)
    np.testing.assert_allclose(np.asarray(got)[mask], want, rtol=1e-5)
    assert np.all(np.asarray(got)[~mask] == sm.LOG_MASKED)
    no_anchor = sm.cascade(
        jnp.asarray(np.log(m0), jnp.float32), None, n, num_levels=levels, map_scale="log"
    )
    want, _ = np_log_cascade(m0, None, n, True, levels)
    np.testing.assert_allclose(np.asarray(no_anchor)[mask], want, rtol=1e-5)


def test_log_cascade_by_hand():
    # L = 2, T = 1, kernel 2: the frame map [[0.5, 0.3], [-, 0.2]] pools to max 0.5, so h gives
    # [[0.25/0.5, 0.09/0.5], [-, 0.04/0.5]] = [[0.5, 0.18], [-, 0.08]]; the 2-anchor map
    # [[0.2, 0.5], [-, 0.3]] multiplies cell by cell: [[0.1, 0.09], [-, 0.024]]; renormalised
    # over the three cells (sum 0.214).
    frame = jnp.log(jnp.array([[0.5, 0.3], [1.0, 0.2]], jnp.float32))
    anchor = jnp.log(jnp.array([[0.2, 0.5], [1.0, 0.3]], jnp.float32))
    got = np.asarray(sm.cascade(frame, [anchor], 2, map_scale="log"))
    want = np.array([0.1, 0.09, 0.024]) / 0.214
    np.testing.assert_allclose(np.exp(got[[0, 0, 1], [0, 1, 1]]), want, rtol=1e-6)
    assert got[1, 0] == sm.LOG_MASKED


@pytest.mark.parametrize("levels", [1, 3])
def test_log_cascaded_score_map_end_to_end(levels):
    rng = np.random.default_rng(60 + levels)
    d, length, n = 5, 13, 11
    frame_p, anchor_p = make_params(rng, d), [make_params(rng, d) for _ in range(levels)]
    v = make_video(rng, length, n, d)
    q = jnp.asarray(rng.normal(size=d), jnp.float32)
    anchors = [jnp.asarray(rng.normal(size=(2**i, d)), jnp.float32) for i in range(1, levels + 1)]
    fn = jax.jit(sm.cascaded_score_map, static_argnames=("map_scale",))
    out = fn(v, jnp.int32(n), anchors, q, frame_p, anchor_p, map_scale="log")
    m0 = np_pad_map(np_f_cond(v, n, q, frame_p)[0], length)
    maps = [np_f_cond(c, c.shape[0], q, p)[0] for c, p in zip(anchors, anchor_p)]
    want, mask = np_log_cascade(m0, maps, n)
    np.testing.assert_allclose(np.asarray(out.score_map)[mask], want, rtol=1e-4)
