"""Cascaded MPN hierarchical semantic reasoning (eqs. 1-8) against float64 NumPy written here:
the graph attention as a per-subtitle loop over node groups, the anchors as a per-segment loop
with segment bounds from exact fractions."""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmr_jax.layers.graph_attention import (
    AnchorSemantics,
    HierarchicalEncoder,
    subtitle_frame_coverage,
    uniform_segment_ids,
)

D, HEADS, DV, DW = 16, 4, 6, 5
ATOL = 2e-5

# Video A: 9 frame slots (8 valid), 4 subtitle slots (3 used), 12 word slots (10 valid).
# Frame 3 is in subtitles 0 and 1, frame 5 in none; word 6 of subtitle 0 comes after subtitle
# 2's words; word 9 has no subtitle; padded frame 8 and padded words claim subtitles.
VIDEO_A = dict(
    length=9,
    valid=8,
    frame_subs={0: [0], 1: [0], 2: [0], 3: [0, 1], 4: [1], 6: [2], 7: [2], 8: [2]},
    word_subtitle=[0, 0, 0, 1, 1, 2, 0, 2, 2, -1, 0, 1],
    word_valid=10,
    num_subs=4,
)
VIDEO_B = dict(
    length=5,
    valid=5,
    frame_subs={0: [1], 1: [0, 1], 2: [0], 3: [0]},
    word_subtitle=[1, 1, 0, 0],
    word_valid=4,
    num_subs=2,
)


def _inputs(spec, seed, length=None, words=None, subs=None):
    length, words, subs = (
        length or spec["length"],
        words or len(spec["word_subtitle"]),
        subs or spec["num_subs"],
    )
    rng = np.random.default_rng(seed)
    cover = np.zeros((1, length, subs), bool)
    for frame, ss in spec["frame_subs"].items():
        cover[0, frame, ss] = True
    ws = np.full((1, words), -1, np.int32)
    ws[0, : len(spec["word_subtitle"])] = spec["word_subtitle"]
    frames = np.zeros((1, length, DV), np.float32)
    frames[0, : spec["length"]] = rng.normal(size=(spec["length"], DV))
    word_feats = np.zeros((1, words, DW), np.float32)
    word_feats[0, : len(spec["word_subtitle"])] = rng.normal(size=(len(spec["word_subtitle"]), DW))
    return dict(
        frames=frames,
        frame_mask=np.arange(length)[None] < spec["valid"],
        words=word_feats,
        word_mask=np.arange(words)[None] < spec["word_valid"],
        word_subtitle=ws,
        frame_subtitles=cover,
    )


def _encoder(**kw):
    kw = (
        dict(hidden=D, heads=HEADS, num_segments=(2, 4, 8), max_frames=16, max_subtitle_words=8)
        | kw
    )
    return HierarchicalEncoder(**kw)


def _init(module, inputs):
    return module.init(jax.random.PRNGKey(0), **inputs)


# ---- float64 NumPy reference ------------------------------------------------------------


def _p(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _layer_norm(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _dense(x, p):
    return x @ p["kernel"] + p["bias"]


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _embed(x, positions, p):
    return _layer_norm(_dense(x, p["dense"]) + p["position_embeddings"][positions], p["LayerNorm"])


def _graph_per_subtitle(e_v, e_w, spec, p, slope=0.2):
    """Eqs. 3-6 subtitle by subtitle: node group H = [frames of s || words of s], frame m
    linked to every word of s; a frame in several groups pools all its edges in one softmax."""
    kernel, att = p["kernel"], p["attention"]
    heads, d = kernel.shape[0], kernel.shape[1]
    edges = {m: [] for m in range(spec["valid"])}  # frame -> [(logits [K], messages [K, d])]
    word_valid = range(spec["word_valid"])
    for s in range(spec["num_subs"]):
        frames_s = [m for m in range(spec["valid"]) if s in spec["frame_subs"].get(m, [])]
        words_s = [w for w in word_valid if spec["word_subtitle"][w] == s]
        nodes = np.concatenate([e_v[frames_s], e_w[words_s]]).reshape(-1, d)
        wh = np.stack([nodes @ kernel[k] for k in range(heads)])  # [K, M, d]
        for i, frame in enumerate(frames_s):
            for j in range(len(frames_s), len(nodes)):  # N_m: the group's words only
                raw = [att[k] @ np.concatenate([wh[k, i], wh[k, j]]) for k in range(heads)]
                logit = np.array([r if r > 0 else slope * r for r in raw])
                edges[frame].append((logit, wh[:, j]))
    v = np.zeros((spec["length"], d))
    for frame in range(spec["valid"]):
        z = np.zeros(d)
        if edges[frame]:
            logits = np.stack([e[0] for e in edges[frame]], axis=1)  # [K, n]
            msgs = np.stack([e[1] for e in edges[frame]], axis=1)  # [K, n, d]
            alpha = _softmax(logits)
            z = np.einsum("kn,knd->d", alpha, msgs) / heads
        v[frame] = e_v[frame] + z
    return v


def _transformer(x, p, heads):
    n, d = x.shape
    split = lambda name: _dense(x, p["attention"][name]).reshape(n, heads, d // heads)
    q, k, v = split("query"), split("key"), split("value")
    w = _softmax(np.einsum("qhd,khd->hqk", q, k) / math.sqrt(d // heads))
    att = np.einsum("hqk,khd->qhd", w, v).reshape(n, d)
    x = _layer_norm(_dense(att, p["attention_dense"]) + x, p["attention_LayerNorm"])
    h = _dense(x, p["intermediate"])
    h = 0.5 * h * (1.0 + np.vectorize(math.erf)(h / math.sqrt(2.0)))
    return _layer_norm(_dense(h, p["output"]) + x, p["output_LayerNorm"])


def _anchors_per_segment(v, valid, n, p, heads):
    """Segment i = frames [ceil(i L / N), ceil((i+1) L / N)); empty -> (0, False)."""
    bound = [math.ceil(Fraction(i * valid, n)) for i in range(n + 1)]
    out, mask = np.zeros((n, v.shape[-1])), np.zeros(n, bool)
    for i in range(n):
        seg = v[bound[i] : bound[i + 1]]
        if len(seg):
            out[i], mask[i] = _transformer(seg, p, heads).mean(0), True
    return out, mask


def _word_positions(spec):
    seen, pos = {}, []
    for w, s in enumerate(spec["word_subtitle"]):
        valid = w < spec["word_valid"]
        pos.append(seen.get(s, 0) if valid else 0)
        seen[s] = seen.get(s, 0) + valid
    return np.array(pos)


def _encoder_reference(inputs, params, spec, num_segments, graph=True, segments=False):
    e_v = _embed(inputs["frames"][0], np.arange(spec["length"]), params["frame_embedding"])
    if graph:
        e_w = _embed(inputs["words"][0], _word_positions(spec), params["word_embedding"])
        v = _graph_per_subtitle(e_v, e_w, spec, params["graph_attention"])
    else:
        v = e_v * (np.arange(spec["length"]) < spec["valid"])[:, None]
    anchors = {}
    for n in num_segments:
        layer = params["anchor_semantics"][f"segment_transformer_{n}"]
        anchors[n] = _anchors_per_segment(v[: spec["valid"]], spec["valid"], n, layer, HEADS)
        if segments:  # frame_context='segments': eq. 7 assigns into V
            v = v.copy()
            v[: spec["valid"]] = _segment_update(v[: spec["valid"]], spec["valid"], n, layer, HEADS)
    return v, anchors


# ---- tests ------------------------------------------------------------------------------


def test_coverage_by_hand():
    spans = np.array([[[0.862, 1.862], [1.5, 3.0], [4.0, 9.0], [7.0, 8.0], [0.0, 9.0]]])
    sub_mask = np.array([[True, True, True, True, False]])
    frame_mask = np.arange(5)[None] < 4  # clip 1.5 s: frame l is [1.5 l, 1.5 l + 1.5)
    want = np.zeros((1, 5, 5), bool)
    want[0, [0, 1], 0] = True  # floor(0.57) = 0 .. ceil(1.24) = 2
    want[0, 1, 1] = True  # exactly [1.5, 3.0): frame 1 only
    want[0, [2, 3], 2] = True  # frames 2..5, cut at the 4 valid frames
    got = subtitle_frame_coverage(spans, sub_mask, 1.5, frame_mask)
    np.testing.assert_array_equal(got, want)
    got_jnp = subtitle_frame_coverage(jnp.asarray(spans), sub_mask, 1.5, jnp.asarray(frame_mask))
    np.testing.assert_array_equal(np.asarray(got_jnp), want)


def test_segment_ids_by_hand():
    mask = np.arange(13)[None] < 11
    np.testing.assert_array_equal(
        uniform_segment_ids(mask, 8)[0], [0, 0, 1, 2, 2, 3, 4, 5, 5, 6, 7, -1, -1]
    )
    np.testing.assert_array_equal(
        uniform_segment_ids(np.arange(5)[None] < 3, 8)[0], [0, 2, 5, -1, -1]
    )


def test_encoder_matches_per_subtitle_and_per_segment_loops():
    inputs = _inputs(VIDEO_A, seed=1)
    module = _encoder()
    variables = _init(module, inputs)
    out, state = module.apply(variables, **inputs, mutable="intermediates")
    params = _p(variables["params"])
    v_ref, anchors_ref = _encoder_reference(inputs, params, VIDEO_A, (2, 4, 8))
    np.testing.assert_allclose(np.asarray(out["frames"][0]), v_ref, atol=ATOL)
    e_v = np.asarray(state["intermediates"]["frame_embeddings"][0][0])
    np.testing.assert_allclose(np.asarray(out["frames"][0, 5]), e_v[5], atol=1e-6)  # no subtitle
    assert not np.allclose(out["frames"][0, 3], e_v[3])  # two subtitles' words reached it
    for n, (want, want_mask) in anchors_ref.items():
        np.testing.assert_array_equal(np.asarray(out["anchor_masks"][n][0]), want_mask)
        np.testing.assert_allclose(np.asarray(out["anchors"][n][0]), want, atol=ATOL)


def test_encoder_with_segment_context_matches_the_loops():
    inputs = _inputs(VIDEO_A, seed=5)
    module = _encoder(frame_context="segments")
    variables = _init(module, inputs)
    out = module.apply(variables, **inputs)
    params = _p(variables["params"])
    v_ref, anchors_ref = _encoder_reference(inputs, params, VIDEO_A, (2, 4, 8), segments=True)
    np.testing.assert_allclose(np.asarray(out["frames"][0]), v_ref, atol=ATOL)
    for n, (want, _) in anchors_ref.items():
        np.testing.assert_allclose(np.asarray(out["anchors"][n][0]), want, atol=ATOL)
    with pytest.raises(ValueError, match="frame_context"):
        _encoder(frame_context="video").init(jax.random.PRNGKey(0), **inputs)


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize(
    "valid, num_segments", [(11, (4, 8)), (3, (4, 8)), (11, (2, 4, 8, 16, 32))]
)
def test_anchors_match_per_segment_loop(valid, num_segments, share):
    rng = np.random.default_rng(valid)
    frames = rng.normal(size=(1, 13, D)).astype(np.float32)
    mask = np.arange(13)[None] < valid
    module = AnchorSemantics(D, HEADS, num_segments, share_weights=share)
    variables = module.init(jax.random.PRNGKey(2), frames, mask, deterministic=True)
    anchors, masks, out_frames = module.apply(variables, frames, mask, deterministic=True)
    np.testing.assert_array_equal(out_frames, frames)  # not sequential: V is not updated
    params = _p(variables["params"])
    for n in num_segments:
        layer = params["segment_transformer" if share else f"segment_transformer_{n}"]
        want, want_mask = _anchors_per_segment(
            frames[0, :valid].astype(np.float64), valid, n, layer, HEADS
        )
        assert anchors[n].shape == (1, n, D)
        np.testing.assert_array_equal(np.asarray(masks[n][0]), want_mask)
        np.testing.assert_allclose(np.asarray(anchors[n][0]), want, atol=ATOL)
    if valid < max(num_segments):
        assert not np.asarray(masks[max(num_segments)]).all()
    assert (len(params) == 1) == share


def _segment_update(v, valid, n, p, heads):
    """Eq. 7 as an assignment: every segment's frames replaced by the Transformer's output."""
    bound = [math.ceil(Fraction(i * valid, n)) for i in range(n + 1)]
    out = v.copy()
    for i in range(n):
        if bound[i + 1] > bound[i]:
            out[bound[i] : bound[i + 1]] = _transformer(v[bound[i] : bound[i + 1]], p, heads)
    return out


@pytest.mark.parametrize("valid", [11, 3])
def test_sequential_anchors_update_v_segment_by_segment(valid):
    # frame_context='segments': N = 2 on V, N = 4 on that output, N = 8 on the next; C^N is
    # the segment mean of its own layer's output and the last output is the new V.
    rng = np.random.default_rng(30 + valid)
    frames = rng.normal(size=(1, 13, D)).astype(np.float32)
    mask = np.arange(13)[None] < valid
    module = AnchorSemantics(D, HEADS, (2, 4, 8), sequential=True)
    variables = module.init(jax.random.PRNGKey(4), frames, mask, deterministic=True)
    anchors, _, out_frames = module.apply(variables, frames, mask, deterministic=True)
    params = _p(variables["params"])
    v = frames[0, :valid].astype(np.float64)
    for n in (2, 4, 8):
        layer = params[f"segment_transformer_{n}"]
        want, _ = _anchors_per_segment(v, valid, n, layer, HEADS)
        np.testing.assert_allclose(np.asarray(anchors[n][0]), want, atol=ATOL)
        v = _segment_update(v, valid, n, layer, HEADS)
    np.testing.assert_allclose(np.asarray(out_frames[0, :valid]), v, atol=ATOL)
    assert np.all(np.asarray(out_frames[0, valid:]) == 0)


def _no_subtitle(inputs):
    return inputs | dict(
        word_mask=np.zeros_like(inputs["word_mask"]),
        frame_subtitles=np.zeros_like(inputs["frame_subtitles"]),
    )


@pytest.mark.parametrize("case", ["padding", "no_subtitle"])
def test_gradients_finite(case):
    inputs = _inputs(VIDEO_A, seed=3)
    if case == "no_subtitle":
        inputs = _no_subtitle(inputs)
    module = _encoder(num_segments=(2, 4, 16))  # 16 > 8 valid frames: empty segments
    variables = _init(module, inputs)

    def loss(params, frames, words):
        out = module.apply({"params": params}, **(inputs | dict(frames=frames, words=words)))
        anchors = sum(jnp.sum(a**2) for a in out["anchors"].values())
        return jnp.sum(out["frames"] ** 2) + anchors

    grads = jax.grad(loss, argnums=(0, 1, 2))(
        variables["params"], inputs["frames"], inputs["words"]
    )
    for g in jax.tree.leaves(grads):
        assert np.isfinite(np.asarray(g)).all()
    graph_grad = grads[0]["graph_attention"]["kernel"]
    assert (np.abs(np.asarray(graph_grad)).max() > 0) == (case == "padding")


def test_video_without_subtitles_keeps_frame_embeddings():
    inputs = _no_subtitle(_inputs(VIDEO_A, seed=4))
    module = _encoder()
    out, state = module.apply(_init(module, inputs), **inputs, mutable="intermediates")
    e_v = np.asarray(state["intermediates"]["frame_embeddings"][0][0])
    valid = VIDEO_A["valid"]
    np.testing.assert_allclose(np.asarray(out["frames"][0, :valid]), e_v[:valid], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["frames"][0, valid:]), 0.0)


@pytest.mark.parametrize("flag", ["use_subtitles", "anchor_free_branch"])
def test_without_graph_is_frame_embeddings(flag):
    inputs = _inputs(VIDEO_A, seed=5)
    if flag == "use_subtitles":  # ActivityNet: no subtitle inputs at all
        inputs = {k: inputs[k] for k in ("frames", "frame_mask")}
    module = _encoder(**{flag: False})
    variables = _init(module, inputs)
    assert "graph_attention" not in variables["params"]
    assert "word_embedding" not in variables["params"]
    out = module.apply(variables, **inputs)
    params = _p(variables["params"])
    v_ref, anchors_ref = _encoder_reference(inputs, params, VIDEO_A, (2, 4, 8), graph=False)
    np.testing.assert_allclose(np.asarray(out["frames"][0]), v_ref, atol=ATOL)
    for n, (want, _) in anchors_ref.items():
        np.testing.assert_allclose(np.asarray(out["anchors"][n][0]), want, atol=ATOL)


def test_subtitles_required_when_enabled():
    inputs = _inputs(VIDEO_A, seed=6)
    with pytest.raises(ValueError, match="use_subtitles=False"):
        _init(_encoder(), {k: inputs[k] for k in ("frames", "frame_mask")})


def test_jitted_batch_equals_per_video():
    module = _encoder(dropout=0.0)
    a = _inputs(VIDEO_A, seed=7)
    b_small = _inputs(VIDEO_B, seed=8)
    b_padded = _inputs(VIDEO_B, seed=8, length=9, words=12, subs=4)
    variables = _init(module, a)
    batch = {k: np.concatenate([a[k], b_padded[k]]) for k in a}
    out = jax.jit(module.apply)(variables, **batch)
    for i, (spec, single) in enumerate([(VIDEO_A, a), (VIDEO_B, b_small)]):
        want = module.apply(variables, **single)
        valid = spec["valid"]
        np.testing.assert_allclose(
            np.asarray(out["frames"][i, :valid]), np.asarray(want["frames"][0, :valid]), atol=ATOL
        )
        np.testing.assert_array_equal(np.asarray(out["frames"][i, valid:]), 0.0)
        for n in (2, 4, 8):
            np.testing.assert_array_equal(out["anchor_masks"][n][i], want["anchor_masks"][n][0])
            np.testing.assert_allclose(
                np.asarray(out["anchors"][n][i]), np.asarray(want["anchors"][n][0]), atol=ATOL
            )
    # Video B alone agrees with the NumPy loops too (5 valid frames < 8 segments).
    v_ref, anchors_ref = _encoder_reference(b_small, _p(variables["params"]), VIDEO_B, (2, 4, 8))
    np.testing.assert_allclose(np.asarray(out["frames"][1, :5]), v_ref, atol=ATOL)
    np.testing.assert_allclose(np.asarray(out["anchors"][8][1]), anchors_ref[8][0], atol=ATOL)
