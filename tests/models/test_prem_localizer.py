"""PREM localizer checks against float64 NumPy written here: the eq. 9 gates on the module's own
parameters, the Shared-Norm cross-entropy (eq. 10) and the BCE term (eq. 11), the IoU > 0.7
positive moments and the top-k negative moments against brute force, the sparse-table range
max, localize over ``[Q, K]`` against per-pair calls, finite gradients, bad inputs."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmr_jax.models import prem_localizer as pl

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")

CONFIG = dict(
    ctx_mode="video_sub",
    hidden_size=16,
    intermediate_size=24,
    n_heads=2,
    vid_feat_size=6,
    sub_feat_size=5,
    q_feat_size=7,
    max_desc_l=8,
    max_ctx_l=12,
    clip_length=1.0,
    max_positive_moments=4,
    negative_moments=3,
    max_pred_l=4,
)


def _lengths_mask(lengths, num_clips):
    return (np.arange(num_clips) < np.asarray(lengths)[..., None]).astype(np.float32)


def _batch(lengths=(10, 7), neg_lengths=((10, 6), (9, 10)), num_clips=10, seed=0):
    rng = np.random.default_rng(seed)
    b = len(lengths)
    f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    batch = {
        "query_features": f(b, 5, 7),
        "query_mask": _lengths_mask(np.array([5, 3][:b]), 5),
        "video_features": f(b, num_clips, 6),
        "subtitle_features": f(b, num_clips, 5),
        "video_mask": _lengths_mask(lengths, num_clips),
        "spans": np.array([[[1.0, 4.0]], [[2.5, 6.2]]][:b], np.float32),
        "valid": np.ones(b, np.float32),
    }
    if neg_lengths:
        n = len(neg_lengths[0])
        batch["negative_video_features"] = f(b, n, num_clips, 6)
        batch["negative_subtitle_features"] = f(b, n, num_clips, 5)
        batch["negative_video_mask"] = _lengths_mask(neg_lengths, num_clips)
    return batch


@functools.cache
def _shared():
    """The tiny model, its variables and the outputs of its init forward (no negative keys);
    jitted, so each shape compiles once."""
    model = pl.create_localizer(CONFIG)
    init = jax.jit(lambda b: model.init_with_output(jax.random.PRNGKey(0), b, train=False))
    outputs, variables = init(_batch(neg_lengths=None))
    return model, variables, outputs


def _encode(model, variables, batch):
    encode = jax.jit(
        lambda v, b: (
            model.apply(v, b["query_features"], b["query_mask"], method="encode_queries"),
            model.apply(
                v,
                b["video_features"],
                b["subtitle_features"],
                b["video_mask"],
                method="encode_videos",
            ),
        )
    )
    return encode(variables, batch)


# Pure moment maths ---------------------------------------------------------------------------


def test_range_max_all_cells():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 13, 3)).astype(np.float32)
    cells = [(i, j) for i in range(13) for j in range(i, 13)]
    start = np.array([[i for i, _ in cells]] * 2, np.int32)
    end = np.array([[j for _, j in cells]] * 2, np.int32)
    got = np.asarray(pl.range_max(jnp.asarray(x), jnp.asarray(start), jnp.asarray(end)))
    want = np.array([[x[n, i : j + 1].max(axis=0) for i, j in cells] for n in range(2)])
    np.testing.assert_array_equal(got, want)
    # Leading axes are free.
    got = pl.range_max(jnp.asarray(x)[None], jnp.asarray(start)[None], jnp.asarray(end)[None])
    np.testing.assert_array_equal(np.asarray(got)[0], want)


def _brute_positives(span, n, clip_length):
    found = []
    for i in range(n):
        for j in range(i, n):
            a, b = i * clip_length, (j + 1) * clip_length
            inter = max(0.0, min(b, span[1]) - max(a, span[0]))
            iou = inter / (max(b, span[1]) - min(a, span[0]))
            if iou > 0.7:
                found.append((iou, i, j))
    return sorted(found, key=lambda t: -t[0])


@pytest.mark.parametrize("cap", [2, 5, 100])
def test_iou_positive_moments_brute_force(cap):
    spans = np.array([[1.0, 4.0], [2.5, 6.2], [0.3, 9.7], [1.6, 1.7], [3.1, 8.0]])
    lengths = np.array([10, 7, 8, 10, 6])  # row 4: the span runs past the last clip
    mask = _lengths_mask(lengths, 10)
    start, end, ok, cut = map(
        np.asarray, pl.iou_positive_moments(jnp.asarray(spans, jnp.float32), mask, 1.5, cap)
    )
    assert start.shape == (5, min(cap, 100))
    for r in range(5):
        want = _brute_positives(spans[r], lengths[r], 1.5)
        kept = min(len(want), cap)
        assert cut[r] == max(len(want) - cap, 0)
        assert ok[r].sum() == kept and np.all(ok[r, :kept] == 1)
        got_cells = list(zip(start[r, :kept], end[r, :kept]))
        assert len(set(got_cells)) == kept
        ious = {(i, j): iou for iou, i, j in want}
        assert all(c in ious for c in got_cells)
        # The kept cells hold the `kept` highest IoUs (ties may be broken either way).
        np.testing.assert_allclose(
            sorted([ious[c] for c in got_cells], reverse=True),
            [iou for iou, _, _ in want[:kept]],
            rtol=1e-6,
        )
    assert ok[3].sum() == 0  # a 0.1-s span inside one 1.5-s clip has no cell above 0.7


@pytest.mark.parametrize("window", [(0, 4), (1, 3), (0, 16)])
def test_top_window_moments_brute_force(window):
    rng = np.random.default_rng(2)
    st, ed = rng.normal(size=(2, 3, 9)), rng.normal(size=(2, 3, 9))
    lengths = np.array([[9, 5, 2], [1, 7, 8]])
    mask = _lengths_mask(lengths, 9)
    k = 5
    start, end, ok = map(
        np.asarray,
        pl.top_window_moments(jnp.asarray(st), jnp.asarray(ed), jnp.asarray(mask), k, *window),
    )
    for b in range(2):
        for v in range(3):
            n = lengths[b, v]
            cells = [
                (st[b, v, i] + ed[b, v, j], i, j)
                for i in range(n)
                for j in range(i, n)
                if window[0] <= j - i < window[1]
            ]
            best = sorted(cells, reverse=True)[:k]
            assert ok[b, v].sum() == len(best)
            got = list(zip(start[b, v, : len(best)], end[b, v, : len(best)]))
            assert got == [(i, j) for _, i, j in best]


def test_top_window_moments_rejects_bad_window():
    with pytest.raises(ValueError, match="min_pred_l"):
        pl.top_window_moments(jnp.zeros((1, 4)), jnp.zeros((1, 4)), jnp.ones((1, 4)), 2, 3, 3)


# Loss -------------------------------------------------------------------------------------------


def _loss_inputs(seed=3):
    rng = np.random.default_rng(seed)
    b, c, length = 3, 3, 6
    clip_mask = _lengths_mask(np.array([[6, 4, 5], [3, 6, 2], [5, 5, 5]]), length)
    st = rng.normal(size=(b, c, length)).astype(np.float32) * 2
    ed = rng.normal(size=(b, c, length)).astype(np.float32) * 2
    st[clip_mask == 0], ed[clip_mask == 0] = 50.0, 50.0  # must be ignored
    batch = {
        "spans": np.array([[[1.4, 4.1]], [[0.0, 6.0]], [[2.0, 3.9]]], np.float32),
        "video_mask": clip_mask[:, 0],
        "valid": np.array([1.0, 1.0, 0.0], np.float32),
    }
    p = 4
    cls = {
        "cls_logits": rng.normal(size=(b, p + 2 * 3)).astype(np.float32) * 3,
        "cls_labels": np.concatenate([np.ones((b, p)), np.zeros((b, 6))], -1).astype(np.float32),
        "cls_mask": (rng.uniform(size=(b, p + 6)) > 0.3).astype(np.float32),
        "positives_cut": np.array([2, 0, 7], np.int32),
    }
    return dict(st_logits=st, ed_logits=ed, clip_mask=clip_mask, **cls), batch


def _numpy_boundary_ce(logits, clip_mask, labels, valid, shared):
    total = 0.0
    for r in range(logits.shape[0]):
        rows = range(logits.shape[1]) if shared else [0]
        pool = np.concatenate([logits[r, v][clip_mask[r, v] > 0] for v in rows]).astype(np.float64)
        log_z = np.log(np.sum(np.exp(pool - pool.max()))) + pool.max()
        total += valid[r] * (log_z - float(logits[r, 0, labels[r]]))
    return total / valid.sum()


@pytest.mark.parametrize("shared", [True, False])
def test_shared_norm_cross_entropy(shared):
    outputs, batch = _loss_inputs()
    loss, parts = pl.localizer_loss(
        outputs, batch, dict(clip_length=1.5, shared_norm=shared, cls_weight=0.0)
    )
    n = batch["video_mask"].sum(-1).astype(int)
    # Hand labels: floor(1.4 / 1.5) = 0, ceil(4.1 / 1.5) = 3; 0, ceil(6 / 1.5) = 4 capped at the
    # positive video's last clip 2; row 2 (padding): floor(2 / 1.5) = 1, ceil(3.9 / 1.5) = 3.
    st_label, ed_label = [0, 0, 1], [3, 2, 3]
    assert np.all(np.array(ed_label) <= n - 1)
    valid = batch["valid"]
    want_st = _numpy_boundary_ce(
        outputs["st_logits"], outputs["clip_mask"], st_label, valid, shared
    )
    want_ed = _numpy_boundary_ce(
        outputs["ed_logits"], outputs["clip_mask"], ed_label, valid, shared
    )
    np.testing.assert_allclose(parts["loss_st"], want_st, rtol=1e-5)
    np.testing.assert_allclose(parts["loss_ed"], want_ed, rtol=1e-5)
    np.testing.assert_allclose(loss, want_st + want_ed, rtol=1e-5)
    assert float(parts["loss_cls"]) == 0.0


def test_classification_bce():
    outputs, batch = _loss_inputs()
    loss, parts = pl.localizer_loss(outputs, batch, dict(clip_length=1.5))
    x = outputs["cls_logits"].astype(np.float64)
    y = outputs["cls_labels"].astype(np.float64)
    w = outputs["cls_mask"] * batch["valid"][:, None]
    bce = -(y * np.log(1 / (1 + np.exp(-x))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-x))))
    want = 0.8 * np.sum(bce * w) / np.sum(w)
    np.testing.assert_allclose(parts["loss_cls"], want, rtol=1e-5)
    np.testing.assert_allclose(loss, parts["loss_st"] + parts["loss_ed"] + want, rtol=1e-5)
    np.testing.assert_allclose(parts["positives_cut"], (2 + 0) / 2)  # row 2 is padding


# Model ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gate", ["l2", "sigmoid"])
def test_gate_eq9_matches_numpy(gate):
    model, variables, _ = _shared()  # the 'sigmoid' model has the same parameters
    q, v = _encode(model, variables, _batch(neg_lengths=None))
    gated = pl.create_localizer(dict(CONFIG, gate=gate))
    got = jax.jit(lambda var, q, v: gated.apply(var, q, v, method="focus"))(variables, q, v)
    for m in ("video", "sub"):
        kernel = np.asarray(variables["params"][f"{m}_gate"]["kernel"], np.float64)
        bias = np.asarray(variables["params"][f"{m}_gate"]["bias"], np.float64)
        d_bar = np.asarray(v[m], np.float64)  # [B, L, H]
        g = (d_bar @ kernel + bias) * np.asarray(q[m], np.float64)[:, None, :]
        if gate == "l2":
            g = g / np.linalg.norm(g, axis=-1, keepdims=True)
        else:
            g = 1 / (1 + np.exp(-g))
        np.testing.assert_allclose(got[m], g * d_bar, rtol=1e-4, atol=1e-6)


def test_no_gate_is_identity():
    model = pl.create_localizer(dict(CONFIG, gate="none"))
    v = {"video": jnp.ones((2, 3, 16)), "sub": jnp.full((2, 3, 16), 2.0)}
    got = model.apply(_shared()[1], {}, v, method="focus")
    np.testing.assert_array_equal(got["sub"], v["sub"])


def test_localize_leading_axes_equal_per_pair_calls():
    model, variables, _ = _shared()
    rng = np.random.default_rng(4)
    mask = _lengths_mask(np.array([[10, 4, 7], [6, 10, 1]]), 10)  # [Q=2, K=3, L]
    batch = _batch(neg_lengths=None)
    batch.update(
        video_features=rng.normal(size=(2, 3, 10, 6)).astype(np.float32),
        subtitle_features=rng.normal(size=(2, 3, 10, 5)).astype(np.float32),
        video_mask=mask,
    )
    q_enc, v_enc = _encode(model, variables, batch)
    assert v_enc["video"].shape == (2, 3, 10, 16)
    localize = jax.jit(lambda q, v, m: model.apply(variables, q, v, m, method="localize"))
    st, ed, fused = localize(q_enc, v_enc, mask)
    assert st.shape == ed.shape == (2, 3, 10) and fused.shape == (2, 3, 10, 16)
    for qi in range(2):
        one_q = {name: x[qi : qi + 1] for name, x in q_enc.items()}
        for k in range(3):
            one_v = {m: x[qi : qi + 1, k : k + 1] for m, x in v_enc.items()}
            n = int(mask[qi, k].sum())
            s1, e1, _ = localize(one_q, one_v, mask[qi : qi + 1, k : k + 1])
            np.testing.assert_allclose(s1[0, 0], st[qi, k], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(e1[0, 0], ed[qi, k], rtol=1e-5, atol=1e-5)
            assert np.all(np.asarray(st[qi, k, n:]) == -1e10)
            assert np.all(np.asarray(ed[qi, k, n:]) == -1e10)
            assert np.all(np.abs(np.asarray(st[qi, k, :n])) < 1e3) and n > 0
    # Cutting the padding changes nothing at the real clips (zeroed before the convs).
    one_q = {name: x[:1] for name, x in q_enc.items()}
    s2, _, _ = localize(one_q, {m: x[:1, 1:2, :4] for m, x in v_enc.items()}, mask[:1, 1:2, :4])
    np.testing.assert_allclose(s2[0, 0], st[0, 1, :4], rtol=1e-4, atol=1e-5)


def test_training_forward_moments_and_gradients():
    model, variables, init_out = _shared()
    # Init without negative keys: one candidate, positives only.
    assert init_out["st_logits"].shape == (2, 1, 10) and init_out["cls_logits"].shape == (2, 4)
    batch = _batch()
    batch["valid"][1] = 0.0

    @jax.jit
    def loss_and_outputs(params, batch):
        rngs = {"dropout": jax.random.PRNGKey(5)}
        out = model.apply({"params": params}, batch, train=True, rngs=rngs)
        return pl.localizer_loss(out, batch, CONFIG)[0], out

    (value, out), grads = jax.value_and_grad(loss_and_outputs, has_aux=True)(
        variables["params"], batch
    )
    b, n, length, p, k = 2, 2, 10, 4, 3
    assert out["st_logits"].shape == out["clip_mask"].shape == (b, 1 + n, length)
    assert out["cls_logits"].shape == out["cls_labels"].shape == (b, p + n * k)
    np.testing.assert_array_equal(out["cls_labels"][:, :p], 1.0)
    np.testing.assert_array_equal(out["cls_labels"][:, p:], 0.0)
    np.testing.assert_array_equal(out["cls_mask"][1], 0.0)  # a padding row has no moments
    # Negatives: the top-3 window cells of each negative video by st[i] + ed[j].
    st, ed = np.asarray(out["st_logits"], np.float64), np.asarray(out["ed_logits"], np.float64)
    for v in range(n):
        nv = int(batch["negative_video_mask"][0, v].sum())
        cells = sorted(
            (
                (st[0, 1 + v, i] + ed[0, 1 + v, j], i, j)
                for i in range(nv)
                for j in range(i, nv)
                if j - i < CONFIG["max_pred_l"]
            ),
            reverse=True,
        )[:k]
        sl = slice(p + v * k, p + (v + 1) * k)
        got = list(zip(np.asarray(out["cls_start"][0, sl]), np.asarray(out["cls_end"][0, sl])))
        assert got == [(i, j) for _, i, j in cells]
    # Positives of row 0 (span [1, 4], 1-s clips): (1, 3) IoU 1, (0, 3) and (1, 4) IoU 0.75.
    pos = {
        (int(i), int(j))
        for i, j, w in zip(out["cls_start"][0, :p], out["cls_end"][0, :p], out["cls_mask"][0, :p])
        if w
    }
    assert pos == {(1, 3), (0, 3), (1, 4)}
    assert math.isfinite(float(value))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    assert float(jnp.abs(grads["cls_head"]["kernel"]).sum()) > 0
    assert float(jnp.abs(grads["sub_gate"]["kernel"]).sum()) > 0


def test_video_only_model():
    model = pl.create_localizer(dict(CONFIG, ctx_mode="video"))
    batch = _batch(neg_lengths=((10,), (8,)))
    del batch["subtitle_features"], batch["negative_subtitle_features"]
    init = jax.jit(lambda b: model.init_with_output(jax.random.PRNGKey(0), b, train=False))
    out, variables = init(batch)
    params = variables["params"]
    assert params["clip_fusion"]["kernel"].shape == (16, 16) and "sub_gate" not in params
    assert out["cls_logits"].shape == (2, 4 + 3) and out["st_logits"].shape == (2, 2, 10)


def test_create_localizer_reads_config():
    model = pl.create_localizer(dict(CONFIG, ctx_mode="sub", gate="sigmoid", num_fusion_layers=1))
    assert model.modalities == ("sub",) and model.gate == "sigmoid"
    assert model.num_fusion_layers == 1 and model.clip_length == 1.0 and model.min_pred_l == 0
    default = pl.create_localizer({})
    assert default.modalities == ("video", "sub") and default.hidden_size == 384


def test_bad_inputs():
    with pytest.raises(ValueError, match="ctx_mode"):
        pl.create_localizer(dict(CONFIG, ctx_mode="video_sub_tef"))
    bad_gate = pl.create_localizer(dict(CONFIG, gate="relu"))
    with pytest.raises(ValueError, match="gate"):
        bad_gate.init(jax.random.PRNGKey(0), _batch(neg_lengths=None), train=False)
    model, variables, _ = _shared()
    batch = _batch(neg_lengths=None)
    del batch["subtitle_features"]
    with pytest.raises(KeyError, match="subtitle_features"):
        jax.eval_shape(lambda b: model.apply(variables, b, train=False), batch)
    wide = _batch(neg_lengths=None)
    wide["video_features"] = np.zeros((2, 10, 8), np.float32)
    with pytest.raises(ValueError, match="vid_feat_size is 6"):
        jax.eval_shape(lambda b: model.apply(variables, b, train=False), wide)
    long_query = _batch(neg_lengths=None)
    long_query["query_features"] = np.zeros((2, 9, 7), np.float32)
    long_query["query_mask"] = np.ones((2, 9), np.float32)
    with pytest.raises(ValueError, match="max_desc_l"):
        jax.eval_shape(lambda b: model.apply(variables, b, train=False), long_query)
    with pytest.raises(ValueError, match="max_ctx_l"):
        jax.eval_shape(
            lambda b: model.apply(variables, b, train=False), _batch(neg_lengths=None, num_clips=13)
        )
