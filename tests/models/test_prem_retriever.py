"""PREM retriever checks against float64 NumPy written here: the encoder layer, the query
encoder and its three poolings (eq. 5), the joint multi-modal video encoder, eq. 6 with padded
clips, the relevant content-enhanced loss (eqs. 7-8: strong/weak/negative selection, the
masked weak positive, same-video masking, invalid rows, the ablations) with a hand-computed
case, finite gradients, jit, single-modality shapes and bad input."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmr_jax.models import prem_retriever as pr

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")

CONFIG = dict(
    hidden_size=16,
    intermediate_size=24,
    n_heads=2,
    drop=0.1,
    initializer_range=0.02,
    vid_feat_size=12,
    sub_feat_size=10,
    q_feat_size=8,
    max_desc_l=7,
    max_ctx_l=8,
    clip_length=1.0,
)
LENGTHS = (6, 4, 6, 5, 5, 3)
QUERY_LENS = (5, 3, 6, 1, 4, 2)
SPANS = ((1.2, 3.5), (0.0, 10.0), (2.0, 2.0), (0.0, 1.0), (0.5, 1.5), (2.2, 2.9))
VIDEO_INDEX = (10, 11, 10, 12, 13, 14)  # rows 0 and 2: two queries of one video
VALID = (1, 1, 1, 0, 1, 1)  # row 3: padding


def _config(**overrides):
    return dict(CONFIG, **overrides)


def _batch(num_clips=6, query_len=6, seed=0):
    rng = np.random.default_rng(seed)
    b = len(LENGTHS)
    video_mask = (np.arange(num_clips)[None] < np.array(LENGTHS)[:, None]).astype(np.float32)
    query_mask = (np.arange(query_len)[None] < np.array(QUERY_LENS)[:, None]).astype(np.float32)
    batch = {
        "query_features": rng.normal(size=(b, query_len, CONFIG["q_feat_size"])),
        "query_mask": query_mask,
        "video_mask": video_mask,
        "spans": np.array(SPANS, np.float32)[:, None],
        "span_mask": np.ones((b, 1), np.float32),
        "video_index": np.array(VIDEO_INDEX, np.int32),
        "valid": np.array(VALID, np.float32),
    }
    batch["query_features"] = (batch["query_features"] * query_mask[..., None]).astype(np.float32)
    for key, size in (("video_features", "vid_feat_size"), ("subtitle_features", "sub_feat_size")):
        feat = rng.normal(size=(b, num_clips, CONFIG[size])) * video_mask[..., None]
        batch[key] = feat.astype(np.float32)
    # Row 2 shows row 0's video (same video_index), as a real batch would.
    for key in ("video_features", "subtitle_features"):
        batch[key][2] = batch[key][0]
    return batch


@functools.cache
def _model(ctx_mode="video_sub", pooling="modality"):
    model = pr.create_retriever(_config(ctx_mode=ctx_mode, pooling=pooling))
    variables = model.init(jax.random.PRNGKey(0), _batch(), train=False)
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    if pooling == "modality":
        # W_d of eq. 5 made large and distinct per modality, so the two pooled queries differ
        # clearly from each other and from the mean (the N(0, 0.02) init is near uniform).
        kernel = np.random.default_rng(7).normal(size=params["modality_pooling"]["kernel"].shape)
        params["modality_pooling"]["kernel"] = kernel.astype(np.float32)
    return model, {"params": params}


# NumPy reference (float64) -------------------------------------------------------------------


def _np(tree):
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), tree)


def _layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _dense(x, p):
    return x @ p["kernel"] + p.get("bias", 0.0)


def _linear_layer(x, p):
    return np.maximum(_dense(_layer_norm(x, p["LayerNorm"]), p["dense"]), 0.0)


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


_erf = np.vectorize(math.erf)


def _encoder_layer(x, key_mask, p, heads):
    """Post-LN layer; ``key_mask [N, Lk]``."""
    n, length, hidden = x.shape
    hd = hidden // heads
    att = p["attention"]
    q = _dense(x, att["query"]).reshape(n, length, heads, hd)
    k = _dense(x, att["key"]).reshape(n, length, heads, hd)
    v = _dense(x, att["value"]).reshape(n, length, heads, hd)
    out = np.zeros((n, length, heads, hd))
    for b in range(n):
        for h in range(heads):
            scores = q[b, :, h] @ k[b, :, h].T / math.sqrt(hd)
            scores = scores + (1.0 - key_mask[b])[None] * -10000.0
            out[b, :, h] = _softmax(scores) @ v[b, :, h]
    y = _dense(out.reshape(n, length, hidden), p["attention_output"])
    x = _layer_norm(y + x, p["attention_LayerNorm"])
    y = _dense(x, p["intermediate"])
    y = 0.5 * y * (1.0 + _erf(y / math.sqrt(2.0)))
    return _layer_norm(_dense(y, p["output"]) + x, p["output_LayerNorm"])


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def _ref_queries(params, batch, modalities, pooling):
    p = _np(params)
    feat = np.asarray(batch["query_features"], np.float64)
    mask = np.asarray(batch["query_mask"], np.float64)
    x = _linear_layer(feat, p["query_input_proj"])
    pe = p["query_pos_embed"]
    x = _layer_norm(x + pe["position_embeddings"][: x.shape[1]], pe["LayerNorm"])
    words = _encoder_layer(x, mask, p["query_encoder"], CONFIG["n_heads"])
    out = {d: np.zeros((len(feat), CONFIG["hidden_size"])) for d in modalities}
    for i in range(len(feat)):
        idx = np.flatnonzero(mask[i] > 0)
        w = words[i, idx]
        for m, d in enumerate(modalities):
            if pooling == "modality":
                alpha = _softmax(w @ p["modality_pooling"]["kernel"][:, m])
                out[d][i] = alpha @ w
            elif pooling == "mean":
                out[d][i] = w.mean(0)
            else:
                out[d][i] = w.max(0)
    return {d: _unit(q) for d, q in out.items()}


def _ref_videos(params, batch, modalities):
    p = _np(params)
    mask = np.asarray(batch["video_mask"], np.float64)
    ce = p["clip_embed"]
    keys = {"video": "video_features", "sub": "subtitle_features"}
    tokens = []
    for m, d in enumerate(modalities):
        x = _linear_layer(np.asarray(batch[keys[d]], np.float64), p[f"{d}_input_proj"])
        x = x + ce["position_embeddings"][: x.shape[1]] + ce["modality_embeddings"][m]
        tokens.append(_layer_norm(x, ce["LayerNorm"]))
    joint = np.concatenate(tokens, axis=1)
    joint_mask = np.concatenate([mask] * len(modalities), axis=1)
    out = _encoder_layer(joint, joint_mask, p["video_encoder"], CONFIG["n_heads"])
    length = mask.shape[1]
    return {d: _unit(out[:, m * length : (m + 1) * length]) for m, d in enumerate(modalities)}


def _ref_scores(q, v, mask):
    """Eq. 6 by loops: mean over modalities of the max over valid clips of the cosine."""
    n_q, n_v = len(next(iter(q.values()))), len(mask)
    s = np.zeros((n_q, n_v))
    for i in range(n_q):
        for j in range(n_v):
            idx = np.flatnonzero(mask[j] > 0)
            s[i, j] = np.mean([max(float(q[d][i] @ v[d][j, c]) for c in idx) for d in q])
    return s


def _nce(pos, negs, t):
    logits = np.array([pos] + list(negs)) / t
    top = logits.max()
    return -(logits[0] - top - np.log(np.exp(logits - top).sum()))


def _ref_loss(sims, mask, spans, video_index, valid, t=0.01, lam=0.5, relevant=True, clip=1.0):
    """Eqs. 6-8 by loops, in float64."""
    sims = {d: np.asarray(s, np.float64) for d, s in sims.items()}
    b = len(mask)
    labels = []
    for i in range(b):
        last = max(int(mask[i].sum()) - 1, 0)
        st = min(math.floor(spans[i][0] / clip), last)
        ed = min(math.ceil(spans[i][1] / clip), last)
        labels.append((st, ed))
    valid_clips = [np.flatnonzero(mask[i] > 0) for i in range(b)]
    full = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            if len(valid_clips[j]):
                full[i, j] = np.mean([sims[d][i, j, valid_clips[j]].max() for d in sims])
    anchors = [i for i in range(b) if valid[i] > 0]
    negs = {i: [j for j in anchors if video_index[j] != video_index[i]] for i in range(b)}
    strong, weak = {}, {}
    for i in anchors:
        if relevant:
            st, ed = labels[i]
            inside = [c for c in valid_clips[i] if st <= c <= ed]
            outside = [c for c in valid_clips[i] if not st <= c <= ed]
            strong[i] = np.mean([sims[d][i, i, inside].max() for d in sims])
            if outside:
                weak[i] = np.mean([sims[d][i, i, outside].max() for d in sims])
        else:
            strong[i] = full[i, i]
    l_strong = np.mean([_nce(strong[i], [full[i, j] for j in negs[i]], t) for i in anchors])
    l_weak = np.mean([_nce(weak[i], [full[i, j] for j in negs[i]], t) for i in weak]) if weak else 0
    l_q = np.mean([_nce(strong[i], [full[j, i] for j in negs[i]], t) for i in anchors])
    parts = {
        "loss_v_strong": l_strong,
        "loss_v_weak": lam * l_weak if relevant else 0.0,
        "loss_q": l_q,
        "weak_missing": float(len(anchors) - len(weak)) if relevant else 0.0,
    }
    return l_strong + parts["loss_v_weak"] + l_q, parts


# Encoder layer and encoders ------------------------------------------------------------------


def test_encoder_layer_matches_numpy_and_mask_forms():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 5, 16)).astype(np.float32)
    mask = (np.arange(5)[None] < np.array([5, 2, 4])[:, None]).astype(np.float32)
    layer = pr.EncoderLayer(16, 24, 2, 0.1, 0.5)
    variables = layer.init(jax.random.PRNGKey(3), x, mask, deterministic=True)
    got = layer.apply(variables, x, mask, deterministic=True)
    want = _encoder_layer(np.float64(x), np.float64(mask), _np(variables["params"]), 2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # A 3-D mask equal to the key mask on every query row gives the same output.
    mask3 = np.repeat(mask[:, None], 5, axis=1)
    np.testing.assert_allclose(layer.apply(variables, x, mask3, deterministic=True), got, atol=1e-6)
    with pytest.raises(ValueError, match="EncoderLayer mask"):
        layer.apply(variables, x, mask[None, None], deterministic=True)


@pytest.mark.parametrize("pooling", pr.POOLINGS)
def test_query_pooling_eq5(pooling):
    model, variables = _model(pooling=pooling)
    batch = _batch()
    got = model.apply(
        variables, batch["query_features"], batch["query_mask"], method=model.encode_queries
    )
    want = _ref_queries(variables["params"], batch, ("video", "sub"), pooling)
    assert set(got) == {"video", "sub"}
    for d in want:
        assert got[d].shape == (6, CONFIG["hidden_size"])
        np.testing.assert_allclose(got[d], want[d], rtol=1e-4, atol=1e-4)
    gap = np.abs(np.asarray(got["video"]) - np.asarray(got["sub"])).max()
    if pooling == "modality":
        assert gap > 1e-2  # modality-specific queries differ
    else:
        assert gap == 0.0  # one vector for both modalities


def test_video_encoder_is_joint_over_modalities():
    model, variables = _model()
    batch = _batch()
    args = (batch["video_features"], batch["subtitle_features"], batch["video_mask"])
    got = model.apply(variables, *args, method=model.encode_videos)
    want = _ref_videos(variables["params"], batch, ("video", "sub"))
    for d in want:
        mask = batch["video_mask"][..., None] > 0  # padded clips are never read
        np.testing.assert_allclose(np.where(mask, got[d], 0), np.where(mask, want[d], 0), atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(got[d], axis=-1), 1.0, atol=1e-5)
    # Inter-modal attention: changing only the subtitles changes the image clips.
    other = np.random.default_rng(9).normal(size=batch["subtitle_features"].shape)
    other = other.astype(np.float32)  # (a constant shift would vanish in the LayerNorm)
    moved = model.apply(variables, args[0], other, args[2], method=model.encode_videos)
    assert np.abs(np.asarray(moved["video"]) - np.asarray(got["video"])).max() > 1e-3


def test_forward_sims_and_scores_eq6_against_numpy():
    model, variables = _model()
    batch = _batch()
    out = model.apply(variables, batch, train=False)
    q = _ref_queries(variables["params"], batch, ("video", "sub"), "modality")
    v = _ref_videos(variables["params"], batch, ("video", "sub"))
    for d in ("video", "sub"):
        want = np.einsum("qh,vlh->qvl", q[d], v[d])
        assert out["sims"][d].shape == (6, 6, 6)
        np.testing.assert_allclose(out["sims"][d], want, atol=1e-4)
    np.testing.assert_allclose(out["clip_mask"], batch["video_mask"])
    want_scores = _ref_scores(q, v, batch["video_mask"])
    np.testing.assert_allclose(out["video_scores"], want_scores, atol=1e-4)


def test_video_scores_masks_padded_clips():
    rng = np.random.default_rng(2)
    q = {d: _unit(rng.normal(size=(3, 8))) for d in ("video", "sub")}
    v = {d: _unit(rng.normal(size=(4, 5, 8))) for d in ("video", "sub")}
    mask = (np.arange(5)[None] < np.array([5, 3, 1, 4])[:, None]).astype(np.float32)
    # Padded clips hold the query itself (cosine 1): a max that reads them would return 1.
    for d in v:
        v[d][1, 3:] = q[d][0]
        v[d][2, 1:] = q[d][1]
    f32 = lambda t: {d: jnp.asarray(x, jnp.float32) for d, x in t.items()}  # noqa: E731
    got = pr.video_scores(f32(q), f32(v), mask)
    np.testing.assert_allclose(got, _ref_scores(q, v, mask), atol=1e-6)
    sims = pr.clip_similarities(f32(q), f32(v))
    for d in q:
        np.testing.assert_allclose(sims[d], np.einsum("qh,vlh->qvl", q[d], v[d]), atol=1e-6)
    model, variables = _model()
    got = model.apply(variables, f32(q), f32(v), mask, method=model.video_scores)
    np.testing.assert_allclose(got, _ref_scores(q, v, mask), atol=1e-6)


# Loss ----------------------------------------------------------------------------------------


def _hand_outputs(modalities=("video", "sub"), seed=3):
    """Random cosines; padded clips at 5 and the invalid row's video at 0.99, so that a loss
    that reads either changes visibly."""
    rng = np.random.default_rng(seed)
    batch = _batch()
    mask = batch["video_mask"]
    sims = {}
    for d in modalities:
        s = rng.uniform(-1, 1, size=(6, 6, 6))
        s = np.where(mask[None] > 0, s, 5.0)
        s[:, 3] = np.where(mask[3] > 0, 0.99, 5.0)
        sims[d] = s.astype(np.float32)
    return {"sims": sims, "clip_mask": mask}, batch


def _check_loss(outputs, batch, config, **ref_kwargs):
    loss, parts = jax.jit(lambda o, b: pr.retriever_loss(o, b, config))(outputs, batch)
    want, want_parts = _ref_loss(
        outputs["sims"],
        batch["video_mask"],
        batch["spans"][:, 0],
        batch["video_index"],
        batch["valid"],
        **ref_kwargs,
    )
    for name, value in want_parts.items():
        np.testing.assert_allclose(parts[name], value, rtol=1e-5, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-4)
    return loss, parts


def test_loss_hand_computed():
    """Two videos, one modality, t = 1: S_++ = 0.8, S_+ = 0.5, S_- = 0.2 (query 0);
    S_++ = 0.6, S_+ = 0.0, S_- = -0.4 (query 1)."""
    mask = np.ones((2, 3), np.float32)
    sims = np.array(
        [
            [[0.5, 0.8, 0.3], [0.2, -0.1, 0.0]],  # query 0: own video, video 1
            [[-0.4, -0.5, -0.6], [0.6, 0.1, 0.0]],  # query 1: video 0, own video
        ],
        np.float32,
    )
    batch = {
        "spans": np.array([[[1.0, 1.0]], [[0.0, 0.5]]], np.float32),  # clips 1..1, 0..1
        "video_index": np.array([0, 1], np.int32),
        "valid": np.ones(2, np.float32),
    }
    config = {"temperature": 1.0, "weak_weight": 0.5, "clip_length": 1.0}
    loss, parts = pr.retriever_loss({"sims": {"video": sims}, "clip_mask": mask}, batch, config)
    strong = (math.log1p(math.exp(0.2 - 0.8)) + math.log1p(math.exp(-0.4 - 0.6))) / 2
    weak = (math.log1p(math.exp(0.2 - 0.5)) + math.log1p(math.exp(-0.4 - 0.0))) / 2
    # Video 0: positive S_++(0) = 0.8, negative query 1's score on it -0.4; video 1: 0.6, 0.2.
    to_query = (math.log1p(math.exp(-0.4 - 0.8)) + math.log1p(math.exp(0.2 - 0.6))) / 2
    np.testing.assert_allclose(parts["loss_v_strong"], strong, rtol=1e-6)
    np.testing.assert_allclose(parts["loss_v_weak"], 0.5 * weak, rtol=1e-6)
    np.testing.assert_allclose(parts["loss_q"], to_query, rtol=1e-6)
    np.testing.assert_allclose(loss, strong + 0.5 * weak + to_query, rtol=1e-6)
    assert float(parts["weak_missing"]) == 0.0


def test_loss_default_config_matches_numpy():
    outputs, batch = _hand_outputs()
    _, parts = _check_loss(outputs, batch, {"clip_length": 1.0})  # t 0.01, lambda 0.5
    # Row 1's moment covers its whole video: no weak positive, counted.
    assert float(parts["weak_missing"]) == 1.0


@pytest.mark.parametrize(
    "options, ref",
    [
        (dict(temperature=0.1), dict(t=0.1)),
        (dict(temperature=0.1, weak_weight=0.0), dict(t=0.1, lam=0.0)),
        (dict(temperature=0.1, weak_weight=0.3), dict(t=0.1, lam=0.3)),
        (dict(temperature=0.1, relevant_content=False), dict(t=0.1, relevant=False)),
    ],
    ids=["t0.1", "no_weak", "lambda0.3", "no_relevant_content"],
)
def test_loss_options_match_numpy(options, ref):
    outputs, batch = _hand_outputs()
    _check_loss(outputs, batch, dict(clip_length=1.0, **options), **ref)


def test_loss_single_modality_and_clip_length():
    outputs, batch = _hand_outputs(modalities=("sub",))
    _check_loss(outputs, batch, {"clip_length": 0.7, "temperature": 0.2}, t=0.2, clip=0.7)


def test_loss_same_video_rows_are_not_negatives():
    outputs, batch = _hand_outputs()
    config = {"clip_length": 1.0, "temperature": 0.1}
    loss, _ = pr.retriever_loss(outputs, batch, config)
    # Row 2 is row 0's video: making it (and only it) a perfect match for query 0 must not
    # change the loss, neither must the invalid row 3.
    moved = jax.tree_util.tree_map(np.copy, outputs)
    for d in moved["sims"]:
        moved["sims"][d][0, 2] = np.where(batch["video_mask"][2] > 0, 1.0, 5.0)
        moved["sims"][d][3] = -1.0
        moved["sims"][d][:, 3] = 1.0
    np.testing.assert_allclose(pr.retriever_loss(moved, batch, config)[0], loss, rtol=1e-6)
    # With distinct video indices row 2 becomes a negative and the loss changes.
    distinct = dict(batch, video_index=np.arange(6, dtype=np.int32))
    _check_loss(outputs, distinct, config, t=0.1)
    assert abs(float(pr.retriever_loss(outputs, distinct, config)[0]) - float(loss)) > 1e-3


def test_loss_without_negatives_is_zero_not_nan():
    outputs, batch = _hand_outputs()
    batch = dict(batch, video_index=np.zeros(6, np.int32))
    config = {"clip_length": 1.0, "temperature": 0.01}
    loss, parts = _check_loss(outputs, batch, config)
    np.testing.assert_allclose(loss, 0.0, atol=1e-6)
    grads = jax.grad(lambda s: pr.retriever_loss(dict(outputs, sims=s), batch, config)[0])(
        outputs["sims"]
    )
    assert all(np.isfinite(g).all() for g in grads.values())


def test_loss_gradient_ignores_invalid_rows_and_padded_clips():
    outputs, batch = _hand_outputs()
    config = {"clip_length": 1.0, "temperature": 0.1}
    grads = jax.grad(lambda s: pr.retriever_loss(dict(outputs, sims=s), batch, config)[0])(
        outputs["sims"]
    )
    mask = batch["video_mask"]
    for g in grads.values():
        g = np.asarray(g)
        assert np.isfinite(g).all()
        assert np.all(g[3] == 0) and np.all(g[:, 3] == 0)  # row 3 invalid
        assert np.all(g[:, mask == 0] == 0)  # padded clips
        assert np.abs(g).max() > 0


# Gradients, jit, shapes, bad input -----------------------------------------------------------


def _padding_row_batch():
    """The test batch whose padding row 3 has no valid word and no valid clip at all."""
    batch = _batch()
    batch["query_mask"][3] = 0.0
    batch["query_features"][3] = 0.0
    batch["video_mask"][3] = 0.0
    return batch


def test_train_step_gradients_finite_under_jit():
    model, variables = _model()
    batch = _padding_row_batch()
    config = _config()

    @jax.jit
    def loss_and_grad(params, batch, rng):
        def loss(p):
            out = model.apply({"params": p}, batch, train=True, rngs={"dropout": rng})
            return pr.retriever_loss(out, batch, config)

        return jax.value_and_grad(loss, has_aux=True)(params)

    # An 'rbg' key: dropout masks as with any key, at a fraction of threefry's compile time.
    key = functools.partial(jax.random.key, impl="rbg")
    (loss, parts), grads = loss_and_grad(variables["params"], batch, key(5))
    assert np.isfinite(float(loss))
    assert all(np.isfinite(float(v)) for v in parts.values())
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert all(float(jnp.abs(g).sum()) > 0 for g in leaves)  # every parameter is used
    # Dropout is the only randomness: two train calls with one key agree, another key differs.
    again = loss_and_grad(variables["params"], batch, key(5))[0][0]
    assert float(again) == float(loss)
    other = loss_and_grad(variables["params"], batch, key(6))[0][0]
    assert float(other) != float(loss)


@pytest.mark.parametrize("pooling", ["mean", "max"])  # 'modality': the train-step test
def test_pooling_gradients_finite_with_empty_query(pooling):
    model, variables = _model(pooling=pooling)
    batch = _padding_row_batch()
    weights = np.random.default_rng(4).normal(size=(6, CONFIG["hidden_size"]))

    def objective(params):
        q = model.apply(
            {"params": params},
            batch["query_features"],
            batch["query_mask"],
            method=model.encode_queries,
        )
        return sum(jnp.sum(x * weights) for x in q.values())

    grads = jax.jit(jax.grad(objective))(variables["params"])
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0


@pytest.mark.parametrize("ctx_mode", ["video", "sub"])
def test_single_modality_shapes_and_numbers(ctx_mode):
    model, variables = _model(ctx_mode=ctx_mode)
    assert model.modalities == (ctx_mode,)
    batch = _batch()
    out = model.apply(variables, batch, train=False)
    assert set(out["sims"]) == {ctx_mode}
    assert out["sims"][ctx_mode].shape == (6, 6, 6)
    assert out["video_scores"].shape == (6, 6)
    absent = {"video": 1, "sub": 0}[ctx_mode]
    args = [batch["video_features"], batch["subtitle_features"], batch["video_mask"]]
    args[absent] = None
    video_enc = model.apply(variables, *args, method=model.encode_videos)
    want = _ref_videos(variables["params"], batch, (ctx_mode,))
    mask = batch["video_mask"][..., None] > 0
    np.testing.assert_allclose(
        np.where(mask, video_enc[ctx_mode], 0), np.where(mask, want[ctx_mode], 0), atol=1e-4
    )
    loss, parts = pr.retriever_loss(out, batch, {"clip_length": 1.0})
    assert np.isfinite(float(loss)) and set(parts) == {
        "loss_v_strong",
        "loss_v_weak",
        "loss_q",
        "weak_missing",
    }


def test_create_retriever_reads_config():
    model = pr.create_retriever({"ctx_mode": "video_sub", "hidden_size": 32, "drop": 0.2})
    assert model.modalities == ("video", "sub") and model.pooling == "modality"
    assert model.hidden_size == 32 and model.drop == 0.2 and model.intermediate_size == 1536
    assert pr.create_retriever({"ctx_mode": "sub", "pooling": "max"}).pooling == "max"


def test_bad_input():
    with pytest.raises(ValueError, match="ctx_mode"):
        pr.create_retriever(_config(ctx_mode="video_sub_tef"))
    with pytest.raises(ValueError, match="pooling"):
        pr.create_retriever(_config(pooling="avg"))
    batch = _batch()
    with pytest.raises(ValueError, match="modalities"):
        pr.PREMRetriever(modalities=("sub", "video")).init(
            jax.random.PRNGKey(0), batch, train=False
        )
    model, variables = _model()
    with pytest.raises(ValueError, match="subtitle_features"):
        model.apply(
            variables,
            batch["video_features"],
            None,
            batch["video_mask"],
            method=model.encode_videos,
        )
    with pytest.raises(ValueError, match="vid_feat_size"):
        model.apply(
            variables,
            batch["video_features"][..., :5],
            batch["subtitle_features"],
            batch["video_mask"],
            method=model.encode_videos,
        )
    with pytest.raises(ValueError, match="q_feat_size"):
        model.apply(
            variables,
            batch["query_features"][..., :3],
            batch["query_mask"],
            method=model.encode_queries,
        )
    long = _batch(num_clips=CONFIG["max_ctx_l"] + 1)
    with pytest.raises(ValueError, match="max_ctx_l"):
        model.apply(variables, long, train=False)
