"""FVMR: every equation against an independent NumPy computation or a hand computation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vmr_jax.models import fvmr
from vmr_jax.ops import moment_map


def _config(**overrides):
    return ml_collections.ConfigDict(dict(fvmr.VARIANTS["tiny"], **overrides))


def _batch(config, batch_size=3, query_len=7, seed=0):
    rng = np.random.default_rng(seed)
    batch = fvmr.example_batch(config, batch_size, query_len)
    batch["video_features"] = rng.normal(size=batch["video_features"].shape).astype(np.float32)
    batch["query_features"] = rng.normal(size=batch["query_features"].shape).astype(np.float32)
    lengths = [7, 5, 3][:batch_size]
    batch["query_mask"] = (np.arange(query_len)[None] < np.array(lengths)[:, None]).astype(
        np.float32
    )
    # Query 0: two verbs (words 0 and 3), nouns "1-2" (linked to both), "4" (verb 2), "6"
    # (no verb); query 1: one verb, one noun; query 2: one verb, no noun.
    verbs = np.full((batch_size, 4, 2), -1, np.int32)
    nouns = np.full((batch_size, 6, 2), -1, np.int32)
    edges = np.zeros((batch_size, 4, 6), np.float32)
    verbs[0, 0], verbs[0, 1] = (0, 0), (3, 3)
    nouns[0, 0], nouns[0, 1], nouns[0, 2] = (1, 2), (4, 4), (6, 6)
    edges[0, 0, 0] = edges[0, 1, 0] = edges[0, 1, 1] = 1
    if batch_size > 1:
        verbs[1, 0], nouns[1, 0], edges[1, 0, 0] = (1, 1), (2, 4), 1
    if batch_size > 2:
        verbs[2, 0] = (2, 2)
    batch.update(tree_verbs=verbs, tree_nouns=nouns, tree_edges=edges)
    batch["duration"] = np.array([10.0, 20.0, 7.0][:batch_size], np.float32)
    batch["spans"] = np.array([[[1.0, 4.0]], [[0.0, 20.0]], [[3.5, 7.0]]][:batch_size], np.float32)
    return batch


@pytest.fixture(scope="module")
def setup():
    config = _config()
    model = fvmr.create_model(config)
    batch = _batch(config)
    variables = model.init(jax.random.PRNGKey(1), batch, train=False)
    # Non-trivial BatchNorm statistics, so that eval mode is checked too.
    rng = np.random.default_rng(5)
    stats = jax.tree_util.tree_map(
        lambda v: np.asarray(rng.uniform(0.5, 2.0, v.shape), np.float32), variables["batch_stats"]
    )
    variables = {"params": variables["params"], "batch_stats": stats}
    return config, model, batch, variables


def _np(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _mlp(p, x):
    h = np.maximum(x @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0)
    return h @ p["fc2"]["kernel"] + p["fc2"]["bias"]


def _lstm_or_gru(layer, x, length, kind, reverse):
    """One direction of a PyTorch-layout RNN layer over the first ``length`` steps."""
    sfx = "_reverse" if reverse else ""
    w_ih, w_hh = layer[f"w_ih{sfx}"], layer[f"w_hh{sfx}"]
    b_ih, b_hh = layer[f"b_ih{sfx}"], layer[f"b_hh{sfx}"]
    hidden = w_hh.shape[0]
    h = np.zeros(hidden)
    c = np.zeros(hidden)
    out = np.zeros((x.shape[0], hidden))
    order = range(length - 1, -1, -1) if reverse else range(length)

    def sig(v):
        return 1 / (1 + np.exp(-v))

    for t in order:
        gi = x[t] @ w_ih + b_ih
        gh = h @ w_hh + b_hh
        if kind == "lstm":
            i, f, g, o = np.split(gi + gh, 4)
            c = sig(f) * c + sig(i) * np.tanh(g)
            h = sig(o) * np.tanh(c)
        else:
            r = sig(gi[:hidden] + gh[:hidden])
            z = sig(gi[hidden : 2 * hidden] + gh[hidden : 2 * hidden])
            n = np.tanh(gi[2 * hidden :] + r * gh[2 * hidden :])
            h = (1 - z) * n + z * h
        out[t] = h
    return out


def _birnn(params, x, length, kind):
    for name in sorted(params):
        layer = params[name]
        x = np.concatenate(
            [
                _lstm_or_gru(layer, x, length, kind, False),
                _lstm_or_gru(layer, x, length, kind, True),
            ],
            axis=-1,
        )
    return x


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def test_sentence_feature_is_first_plus_last_word(setup):
    """Eq. 2 and ``phi_s``: a step-by-step NumPy Bi-LSTM (backward from the last real word)."""
    config, model, batch, variables = setup
    p = _np(variables["params"])
    ours = np.asarray(model.apply(variables, batch, method=fvmr.FVMR.encode_queries))
    for b in range(3):
        length = int(batch["query_mask"][b].sum())
        w = _birnn(p["text_lstm"], batch["query_features"][b].astype(np.float64), length, "lstm")
        s = w[0] + w[length - 1]
        np.testing.assert_allclose(ours[b], _mlp(p["phi_s"], s), atol=2e-5)


def test_semantic_feature_equations_3_to_5(setup):
    """Eqs. 3-5 written out node by node in NumPy from the tree of ``_batch``."""
    config, model, batch, variables = setup
    p = _np(variables["params"])
    ours = np.asarray(model.apply(variables, batch, method=fvmr.FVMR.semantic_feature))

    def level(att, top, low):
        wt = top @ att["w_top"]["kernel"]
        wl = low @ att["w_low"]["kernel"]
        return np.array(
            [np.tanh(np.concatenate([wt, r])) @ att["w_alpha"]["kernel"][:, 0] for r in wl]
        )

    for b in range(3):
        length = int(batch["query_mask"][b].sum())
        states = _birnn(p["node_gru"], batch["query_features"][b].astype(np.float64), length, "gru")
        states = states[:length]
        word_scores = states @ p["word_attention"]["kernel"][:, 0] + p["word_attention"]["bias"][0]
        g_s = _softmax(word_scores) @ states
        verbs = [tuple(v) for v in batch["tree_verbs"][b] if v[0] >= 0]
        nouns = [tuple(n) for n in batch["tree_nouns"][b] if n[0] >= 0]
        g_v = np.array([states[s : e + 1].mean(0) for s, e in verbs])
        g_n = np.array([states[s : e + 1].mean(0) for s, e in nouns]).reshape(-1, states.shape[1])
        alpha_v = level(p["verb_attention"], g_s, g_v)
        g_hat = _softmax(alpha_v) @ g_v
        alpha_n = level(p["noun_attention"], g_hat, g_n) if len(nouns) else np.zeros(0)
        phrases = []
        for i in range(len(verbs)):
            linked = [j for j in range(len(nouns)) if batch["tree_edges"][b, i, j] > 0]
            weights = _softmax(np.concatenate([[alpha_v[i]], alpha_n[linked]]))
            phrases.append(
                weights[0] * g_v[i] + sum(w * g_n[j] for w, j in zip(weights[1:], linked))
            )
        u = g_s * np.mean(phrases, axis=0)
        np.testing.assert_allclose(ours[b], u, atol=2e-5)


def test_video_encoder_matches_dense_map_convolution(setup):
    """Eq. 1 on valid cells equals the same encoder on the dense N x N map (lax.conv with
    'same' padding, mask after every layer), in eval and train mode."""
    config, model, batch, variables = setup
    p = _np(variables["params"])
    n, stride = config.num_clips, config.frame_stride
    mask = moment_map.valid_cell_mask(n, tuple(config.pooling_counts))
    starts, ends = moment_map.valid_cells(n, tuple(config.pooling_counts))
    x = batch["video_features"].astype(np.float64)
    frame = np.maximum(x @ p["frame_conv"]["kernel"] + p["frame_conv"]["bias"], 0)
    frame = frame.reshape(x.shape[0], n, stride, -1).mean(2)
    dense = np.zeros((x.shape[0], n, n, frame.shape[-1]))
    for i, j in zip(starts, ends):
        dense[:, i, j] = frame[:, i : j + 1].max(1)
    for mode in ("eval", "train"):
        h = dense
        for k in range(len(config.video_kernels)):
            conv = p[f"video_convs_{k}"]
            kk = conv["kernel"].shape[0]
            y = jax.lax.conv_general_dilated(
                jnp.asarray(h, jnp.float32),
                jnp.asarray(conv["kernel"]),
                (1, 1),
                [(kk // 2, kk // 2)] * 2,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision="highest",
            )
            y = np.asarray(y, np.float64) + conv["bias"]
            cells = y[:, starts, ends]
            if mode == "eval":
                stats = variables["batch_stats"][f"video_bns_{k}"]
                mean, var = np.asarray(stats["mean"]), np.asarray(stats["var"])
            else:
                mean, var = cells.mean((0, 1)), cells.var((0, 1))
            bn = p[f"video_bns_{k}"]
            y = (y - mean) / np.sqrt(var + 1e-5) * bn["scale"] + bn["bias"]
            h = np.tanh(y) * mask[None, :, :, None]
        ours = model.apply(
            variables,
            batch,
            train=mode == "train",
            method=fvmr.FVMR.moment_features,
            mutable=["batch_stats"],
        )[0]
        np.testing.assert_allclose(np.asarray(ours), h[:, starts, ends], atol=5e-5)


def test_p_is_the_common_space_dot_product(setup):
    """Eq. 6: the forward's ``p`` equals gallery entries . query embeddings."""
    config, model, batch, variables = setup
    out = model.apply(variables, batch, train=False)
    moments = np.asarray(model.apply(variables, batch, method=fvmr.FVMR.encode_moments))
    queries = np.asarray(model.apply(variables, batch, method=fvmr.FVMR.encode_queries))
    np.testing.assert_allclose(
        np.asarray(out["p_logits"]), np.einsum("bcd,bd->bc", moments, queries), atol=1e-5
    )
    starts, ends = moment_map.valid_cells(config.num_clips, tuple(config.pooling_counts))
    dense = np.asarray(out["score_map"])
    np.testing.assert_array_equal(dense[:, starts, ends], np.asarray(out["p_logits"]))
    assert out["q_logits"].shape == out["p_logits"].shape


def test_distillation_loss_by_hand():
    """Eq. 9 on two cells: p = (0, ln 3) -> softmax (1/4, 3/4); q = (0, 0) -> (1/2, 1/2).
    Eq. 8 averaged over the 2 cells: -(1/2)[2 * (1/2 ln 1/4 + 1/2 ln 3/4)] = ln 4 - ln 3 / 2."""
    p = jnp.array([[0.0, np.log(3.0)]])
    q = jnp.array([[0.0, 0.0]])
    expected = np.log(4.0) - 0.5 * np.log(3.0)
    np.testing.assert_allclose(float(fvmr.distillation_loss(p, q, 1.0)[0]), expected, rtol=1e-6)
    # T = 2 softens p to softmax((0, ln 3 / 2)) = (1, sqrt 3) / (1 + sqrt 3).
    a = 1 / (1 + np.sqrt(3.0))
    expected_t2 = -0.5 * (0.5 * np.log(a) + 0.5 * np.log(1 - a)) * 2
    np.testing.assert_allclose(float(fvmr.distillation_loss(p, q, 2.0)[0]), expected_t2, rtol=1e-6)
    # The teacher is fixed: no gradient reaches q.
    grad_q = jax.grad(lambda q: fvmr.distillation_loss(p, q, 1.0).sum())(q)
    np.testing.assert_array_equal(np.asarray(grad_q), 0.0)
    # A certain student (softmax = 1 on one cell) hits PyTorch's -100 clamp, not inf / nan.
    sure = jnp.array([[0.0, 200.0]])
    value, grad = jax.value_and_grad(lambda v: fvmr.distillation_loss(v, q, 1.0).sum())(sure)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(float(value), 0.5 * (0.5 * 100 + 0.5 * 100), rtol=1e-4)


def test_loss_terms_weights_and_warm_up(setup):
    """Eq. 10: BCE(p) + BCE(q) + lambda * L_dis, lambda switched on at epoch 8 of the paper
    (``distill_start_epoch`` of the config), 0 for the w/o-SD ablation."""
    _, model, batch, variables = setup
    config = _config()  # a copy: this test edits it, the module fixture is shared
    out = model.apply(variables, batch, train=False)
    starts, ends = moment_map.valid_cells(config.num_clips, tuple(config.pooling_counts))
    # Independent labels: IoU of every valid cell [i, j+1] * duration / N with the span.
    n = config.num_clips
    targets = []
    for b in range(3):
        d, (s, e) = batch["duration"][b], batch["spans"][b, 0]
        cs, ce = starts * d / n, (ends + 1) * d / n
        inter = np.clip(np.minimum(ce, e) - np.maximum(cs, s), 0, None)
        iou = inter / (np.maximum(ce, e) - np.minimum(cs, s))
        targets.append(np.clip((iou - 0.3) / (0.7 - 0.3), 0, 1))
    targets = np.array(targets)

    def bce(logits, rows=slice(None)):
        prob = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))[rows]
        y = targets[rows]
        return np.mean(-(y * np.log(prob) + (1 - y) * np.log(1 - prob)))

    loss_p, loss_q = bce(out["p_logits"]), bce(out["q_logits"])
    dis = float(np.mean(fvmr.distillation_loss(out["p_logits"], out["q_logits"], 1.0)))
    spe = 10
    config.distill_start_epoch = 3
    before, metrics = fvmr.loss_fn(out, batch, config, step=29, steps_per_epoch=spe)
    after, _ = fvmr.loss_fn(out, batch, config, step=30, steps_per_epoch=spe)
    np.testing.assert_allclose(float(metrics["loss_p"]), loss_p, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss_q"]), loss_q, rtol=1e-5)
    np.testing.assert_allclose(float(before), loss_p + loss_q, rtol=1e-5)
    np.testing.assert_allclose(float(after), loss_p + loss_q + 3.0 * dis, rtol=1e-5)
    config.distill_weight = 0.0  # "w/o SD"
    without, _ = fvmr.loss_fn(out, batch, config, step=1000, steps_per_epoch=spe)
    np.testing.assert_allclose(float(without), loss_p + loss_q, rtol=1e-5)
    # Padding examples (valid == 0) do not count.
    padded = dict(batch, valid=np.array([1.0, 1.0, 0.0], np.float32))
    _, m2 = fvmr.loss_fn(out, padded, config, step=0, steps_per_epoch=spe)
    np.testing.assert_allclose(float(m2["loss_p"]), bce(out["p_logits"], slice(0, 2)), rtol=1e-5)


def test_missing_tree_is_a_named_error(setup):
    config, model, batch, variables = setup
    bare = {k: v for k, v in batch.items() if not k.startswith("tree_")}
    out = model.apply(variables, bare, train=False)  # inference needs no tree
    assert "q_logits" not in out
    with pytest.raises(KeyError, match="config.data.semantic_tree"):
        fvmr.loss_fn(out, bare, config)


def test_decode_p_and_p_plus_q(setup):
    config, model, batch, variables = setup
    out = model.apply(variables, batch, train=False)
    starts, ends = moment_map.valid_cells(config.num_clips, tuple(config.pooling_counts))
    sig = lambda v: 1 / (1 + np.exp(-np.asarray(v, np.float64)))  # noqa: E731
    only_p = np.asarray(fvmr.decode(out, batch, config)["score_map"])
    np.testing.assert_allclose(only_p[:, starts, ends], sig(out["p_logits"]), rtol=1e-6)
    assert np.count_nonzero(only_p) == only_p.shape[0] * len(starts)
    config_pq = _config(inference_score="p+q")
    both = np.asarray(fvmr.decode(out, batch, config_pq)["score_map"])
    np.testing.assert_allclose(
        both[:, starts, ends], 0.5 * (sig(out["p_logits"]) + sig(out["q_logits"])), rtol=1e-6
    )
