"""MGPN's ablation modules (``mgpn_variants``) against NumPy written here from the official
equations, and the model fields that switch them (paper section 4.5)."""

from __future__ import annotations

import math

import jax
import ml_collections
import numpy as np
import pytest

from vmr_jax.models import mgpn
from vmr_jax.models import mgpn_variants as V
from vmr_jax.ops import moment_map

RNG = np.random.default_rng(0)


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def _init(module, *args, **kwargs):
    return module.init(jax.random.PRNGKey(0), *args, **kwargs)


def _randomise(tree, scale=0.3, seed=1):
    """Every leaf replaced by normal noise (zero-initialised scales would hide the path)."""
    leaves, treedef = jax.tree.flatten(tree)
    rng = np.random.default_rng(seed)
    new = [rng.normal(size=x.shape).astype(np.float32) * scale for x in leaves]
    return jax.tree.unflatten(treedef, new)


# --------------------------------------------------------------------------- NumPy references
def np_layer_norm(x, a, b, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    std = x.std(-1, ddof=1, keepdims=True)
    return a * (x - mean) / (std + eps) + b


def np_dense(x, p):
    return x @ p["kernel"] + p["bias"]


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def np_transformer_block(x, mask, p, heads):
    """Pre-norm block: x + MHA(LN(x)); x + W2 GELU_tanh(W1 LN(x)) (eval: no dropout)."""
    b, length, d = x.shape
    dk = d // heads
    att = p["attention"]
    y = np_layer_norm(x, p["input_norm"]["scale"], p["input_norm"]["bias"])
    q, k, v = (np_dense(y, att[n]).reshape(b, length, heads, dk) for n in ("query", "key", "value"))
    out = np.zeros((b, length, heads, dk))
    for bi in range(b):
        for h in range(heads):
            scores = q[bi, :, h] @ k[bi, :, h].T / math.sqrt(dk)
            scores = np.where(mask[bi][None, :] > 0, scores, -1e9)
            out[bi, :, h] = np_softmax(scores) @ v[bi, :, h]
    x = x + np_dense(out.reshape(b, length, d), att["output"])
    y = np_layer_norm(x, p["output_norm"]["scale"], p["output_norm"]["bias"])
    hidden = np_dense(y, p["ffn_1"])
    gelu = 0.5 * hidden * (1 + np.tanh(math.sqrt(2 / math.pi) * (hidden + 0.044715 * hidden**3)))
    return x + np_dense(gelu, p["ffn_2"])


def np_conv2d(x, kernel, bias=None, padding=0):
    """Plain loops: ``x [B, N, N, I]``, ``kernel [k, k, I, O]`` (stride 1, no groups)."""
    k = kernel.shape[0]
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    n_out = xp.shape[1] - k + 1
    out = np.zeros((x.shape[0], n_out, n_out, kernel.shape[-1]))
    for i in range(n_out):
        for j in range(n_out):
            window = xp[:, i : i + k, j : j + k, :]
            out[:, i, j] = np.einsum("bhwi,hwio->bo", window, kernel)
    return out if bias is None else out + bias


def np_criss_cross(x, p):
    q = np_conv2d(x, p["query_conv"]["kernel"], p["query_conv"]["bias"])
    k = np_conv2d(x, p["key_conv"]["kernel"], p["key_conv"]["bias"])
    v = np_conv2d(x, p["value_conv"]["kernel"], p["value_conv"]["bias"])
    b, n = x.shape[:2]
    out = np.zeros_like(v)
    for bi in range(b):
        for y in range(n):
            for xx in range(n):
                keys = [(y, i) for i in range(n)] + [(j, xx) for j in range(n) if j != y]
                e = np.array([q[bi, y, xx] @ k[bi, a, c] for a, c in keys])
                w = np_softmax(e)
                out[bi, y, xx] = sum(wi * v[bi, a, c] for wi, (a, c) in zip(w, keys))
    return p["gamma"] * out + x


# --------------------------------------------------------------------------- modules
def test_sinusoidal_positions_by_hand():
    table = V.sinusoidal_positions(3, 4)
    w1 = 10000 ** (-2 / 4)
    expected = [
        [0, 1, 0, 1],
        [math.sin(1), math.cos(1), math.sin(w1), math.cos(w1)],
        [math.sin(2), math.cos(2), math.sin(2 * w1), math.cos(2 * w1)],
    ]
    np.testing.assert_allclose(table, expected, atol=1e-6)


def test_transformer_block_equals_numpy_and_masks_padded_keys():
    b, length, d, heads = 2, 5, 16, 4
    x = RNG.normal(size=(b, length, d)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.float32)
    block = V.TransformerBlock(heads, 4 * d, 0.1)
    params = _randomise(_init(block, x, mask, deterministic=True)["params"])
    out = block.apply({"params": params}, x, mask, deterministic=True)
    expected = np_transformer_block(x, mask, _np(params), heads)
    np.testing.assert_allclose(out, expected, atol=2e-5)
    x2 = x.copy()
    x2[1, 3:] = 100.0  # padded words: no other position may see them
    out2 = block.apply({"params": params}, x2, mask, deterministic=True)
    np.testing.assert_allclose(out2[1, :3], out[1, :3], atol=1e-5)


def test_stacked_map_conv_equals_2d_tan_rule():
    """Each layer: ReLU(conv) * 1 / #valid cells of the previous mask in the window."""
    b, n, c = 2, 8, 3
    mask = moment_map.valid_cell_mask(n, (4, 2))
    x = RNG.normal(size=(b, n, n, c)).astype(np.float32) * mask[None, :, :, None]
    sc = V.StackedMapConv(4, 2, 3)
    params = _init(sc, x, mask)["params"]
    out = sc.apply({"params": params}, x, mask)
    y, m = x.astype(np.float64), mask.astype(np.float64)
    for i, pad in enumerate((2, 0)):  # first padding layers * (k - 1) / 2
        p = _np(params)[f"conv{i}"]
        y = np.maximum(np_conv2d(y, p["kernel"], p["bias"], pad), 0)
        count = np_conv2d(m[None, :, :, None], np.ones((3, 3, 1, 1)), padding=pad)[0, :, :, 0]
        weight = np.where(count > 0, 1 / np.maximum(count, 1), 0)
        y, m = y * weight[None, :, :, None], (count > 0).astype(np.float64)
    assert out.shape == (b, n, n, 4)
    np.testing.assert_allclose(out, y, atol=1e-5)


def test_criss_cross_attention_equals_row_and_column_softmax():
    b, n, c = 1, 4, 16
    x = RNG.normal(size=(b, n, n, c)).astype(np.float32)
    att = V.CrissCrossAttention()
    params = _randomise(_init(att, x)["params"])
    out = att.apply({"params": params}, x)
    np.testing.assert_allclose(out, np_criss_cross(x, _np(params)), atol=1e-4)


def test_graph_attention_module_equals_numpy_blocks():
    """RaNet GATBlock: conva, ``loops`` x one shared attention, convb, convc([x, .]) * mask."""
    b, n, c = 1, 4, 16
    mask = moment_map.valid_cell_mask(n, (2, 1))
    x = RNG.normal(size=(b, n, n, c)).astype(np.float32) * mask[None, :, :, None]
    ga = V.GraphAttentionModule(blocks=2, loops=2, inter_prop=2)
    params = _randomise(_init(ga, x, mask)["params"], scale=0.1)
    out = ga.apply({"params": params}, x, mask)
    p, y = _np(params), x.astype(np.float64)
    for i in range(2):
        h = np.maximum(np_conv2d(y, p[f"block{i}_conva"]["kernel"], padding=1), 0)
        for _ in range(2):
            h = np_criss_cross(h, p[f"block{i}_gat"])
        h = np.maximum(np_conv2d(h, p[f"block{i}_convb"]["kernel"], padding=1), 0)
        both = np.concatenate([y, h], axis=-1)
        y = np.maximum(np_conv2d(both, p[f"block{i}_convc"]["kernel"], padding=1), 0)
        y = y * mask[None, :, :, None]
    np.testing.assert_allclose(out, y, atol=1e-4)


@pytest.mark.parametrize("train", [True, False])
def test_non_local_block_equals_numpy(train):
    """theta/phi/g 1x1 convs to C/2, 2x2 max-pool of phi and g, softmax, W conv + BN, + x."""
    b, n, c = 2, 4, 6
    x = RNG.normal(size=(b, n, n, c)).astype(np.float32)
    block = V.NonLocalBlock()
    variables = _init(block, x, train=False)
    params = _randomise(variables["params"])
    stats = {"W_bn": {"mean": np.full(c, 0.2, np.float32), "var": np.full(c, 1.5, np.float32)}}
    out, new = block.apply(
        {"params": params, "batch_stats": stats}, x, train=train, mutable=["batch_stats"]
    )
    p = _np(params)

    def conv1(name, y):
        return y @ p[name]["kernel"][0, 0] + p[name]["bias"]

    def pool(y):
        return y.reshape(b, n // 2, 2, n // 2, 2, -1).max(axis=(2, 4)).reshape(b, -1, c // 2)

    theta = conv1("theta", x).reshape(b, n * n, c // 2)
    att = np_softmax(theta @ pool(conv1("phi", x)).transpose(0, 2, 1))
    y = (att @ pool(conv1("g", x))).reshape(b, n, n, c // 2)
    wy = conv1("W", y)
    if train:
        mean, var = wy.mean(axis=(0, 1, 2)), wy.var(axis=(0, 1, 2))
        count = b * n * n
        np.testing.assert_allclose(
            new["batch_stats"]["W_bn"]["mean"], 0.9 * 0.2 + 0.1 * mean, rtol=1e-5
        )
        unbiased = var * count / (count - 1)
        np.testing.assert_allclose(
            new["batch_stats"]["W_bn"]["var"], 0.9 * 1.5 + 0.1 * unbiased, rtol=1e-5
        )
    else:
        mean, var = 0.2, 1.5
    expected = (wy - mean) / np.sqrt(var + 1e-5) * p["W_bn"]["scale"] + p["W_bn"]["bias"] + x
    np.testing.assert_allclose(out, expected, atol=2e-5)


def test_non_local_batch_norm_starts_as_identity_block():
    """``non_local.py`` initialises the BN scale and shift to 0: a fresh block returns x."""
    x = RNG.normal(size=(1, 4, 4, 6)).astype(np.float32)
    block = V.NonLocalBlock()
    variables = _init(block, x, train=False)
    np.testing.assert_array_equal(block.apply(variables, x, train=False), x)


# --------------------------------------------------------------------------- model fields
def _config(**overrides):
    config = ml_collections.ConfigDict(dict(mgpn.VARIANTS["tiny"]))
    config.update(overrides)
    return config


def _batch(config, batch_size=2, seed=0):
    rng = np.random.default_rng(seed)
    t = config.num_clips * config.frame_stride
    mask = np.ones((batch_size, 6), np.float32)
    mask[1, 4:] = 0
    return {
        "video_features": rng.normal(size=(batch_size, t, config.feature_dim)).astype(np.float32),
        "query_features": rng.normal(size=(batch_size, 6, config.word_dim)).astype(np.float32),
        "query_mask": mask,
    }


def _run(config, batch=None):
    model = mgpn.create_model(config)
    batch = _batch(config) if batch is None else batch
    variables = model.init(jax.random.PRNGKey(0), batch, train=False)
    out, state = model.apply(variables, batch, train=False, mutable=["intermediates"])
    inter = {k: np.asarray(v[0]) for k, v in state["intermediates"].items() if isinstance(v, tuple)}
    return variables, out, inter


CONV_BLOCKS = {f"conv_block{k}" for k in range(1, 5)}
FINE = {"unigram_conv", "bigram_conv", "trigram_conv", "phrase_linear", "clip_norm", "ffn_1"}
GATES = {"text_gate", "video_gate"}


@pytest.mark.parametrize(
    "fields, present, absent",
    [
        ({}, CONV_BLOCKS | FINE | GATES | {"vis_gru", "txt_gru", "fuse_conv"}, {"sc", "ga"}),
        ({"encoder": "bilstm"}, {"vis_lstm", "txt_lstm"}, {"vis_gru", "txt_gru"}),
        ({"encoder": "transformer"}, {"vis_transformer", "txt_transformer"}, {"vis_gru"}),
        ({"finegrained": False}, GATES | CONV_BLOCKS, FINE),
        ({"conditioned_interaction": False}, FINE | CONV_BLOCKS, GATES),
        ({"comparison": "none"}, GATES | FINE, CONV_BLOCKS | {"fuse_conv"}),
        ({"comparison": "stacked_conv"}, {"fuse_conv", "sc"}, CONV_BLOCKS | {"reduce_conv"}),
        ({"comparison": "graph_attention"}, {"fuse_conv", "reduce_conv", "ga"}, CONV_BLOCKS),
        ({"comparison": "non_local"}, {"reduce_conv", "nl_block0", "nl_block1"}, CONV_BLOCKS),
    ],
)
def test_parameter_tree_has_the_switched_modules(fields, present, absent):
    config = _config(**fields)
    shapes = jax.eval_shape(
        lambda: mgpn.create_model(config).init(jax.random.PRNGKey(0), _batch(config), train=False)
    )
    names = set(shapes["params"])
    assert present <= names, present - names
    assert not absent & names, absent & names


def test_table4_lstm_has_the_paper_parameter_count():
    """Table 4: w/. LSTM 5.53M on ActivityNet (the paper's way: ``num_params_paper``)."""
    config = ml_collections.ConfigDict(dict(mgpn.VARIANTS["activitynet"], encoder="bilstm"))
    assert round(mgpn.parameter_counts(config)["num_params_paper"] / 1e6, 2) == 5.53


def test_figure5_stacked_conv_is_4_8_times_mgpn256():
    """Section 4.5.4: MGPN256's conv blocks are "4.8x smaller than" SC (TACoS, 6.62M)."""
    config = ml_collections.ConfigDict(dict(mgpn.VARIANTS["tacos"], comparison="stacked_conv"))
    assert round(mgpn.parameter_counts(config)["num_params_paper"] / 6.62e6, 1) == 4.8


@pytest.mark.parametrize("generator", ["content", "boundary"])
def test_single_map_generator_stands_for_both_maps(generator):
    """Figure 4: A_C alone (span max) or A_B alone ((x_i + x_j) / 2) in both map slots."""
    config = _config(map_generator=generator)
    _, _, inter = _run(config)
    starts, ends = moment_map.valid_cells(config.num_clips, tuple(config.pooling_counts))
    clips = inter["vis_fused"]
    if generator == "content":
        expected = np.stack([clips[:, s : e + 1].max(axis=1) for s, e in zip(starts, ends)], 1)
    else:
        expected = (clips[:, starts] + clips[:, ends]) / 2
    np.testing.assert_allclose(inter["boundary_cells"], expected, atol=1e-6)
    np.testing.assert_allclose(inter["content_cells"], expected, atol=1e-6)


def test_without_finegrained_encoder_the_gates_read_coarse_features():
    """Table 3 without sec-enc.: eq. 7-8 on ``txt_fused`` (max over words) and ``vis_fused``."""
    config = _config(finegrained=False)
    variables, _, inter = _run(config)
    p = _np(variables["params"])
    f_s = np_dense(inter["txt_fused"].max(axis=1), p["text_gate"])[:, None]
    f_v = np_dense(inter["vis_fused"].mean(axis=1), p["video_gate"])[:, None]
    boundary, content = inter["boundary_cells"], inter["content_cells"]

    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    expected = np.concatenate(
        [sigmoid(boundary * f_s) * content, sigmoid(boundary * f_v) * content], -1
    )
    np.testing.assert_allclose(inter["fused_cells"], expected, atol=1e-5)
    assert "vis_finegrained" not in inter


@pytest.mark.parametrize("finegrained", [False, True])
def test_without_conditioned_interaction_the_maps_are_concatenated(finegrained):
    """Table 3 without sec-fuse.: Ā = Concat(A_B, A_C), the maps of ``vis_finegrained`` when
    sec-enc. is on (model 2) and of ``vis_fused`` otherwise (models 1 and 4)."""
    config = _config(finegrained=finegrained, conditioned_interaction=False)
    _, _, inter = _run(config)
    clips = inter["vis_finegrained" if finegrained else "vis_fused"]
    starts, ends = moment_map.valid_cells(config.num_clips, tuple(config.pooling_counts))
    boundary = (clips[:, starts] + clips[:, ends]) / 2
    content = np.stack([clips[:, s : e + 1].max(axis=1) for s, e in zip(starts, ends)], 1)
    np.testing.assert_allclose(
        inter["fused_cells"], np.concatenate([boundary, content], -1), atol=1e-6
    )


def test_without_comparison_the_ranker_reads_the_fused_map():
    """Table 3 without comp.: logits = Conv1x1(Ā) on the 2H-channel fused cells."""
    config = _config(comparison="none")
    variables, out, inter = _run(config)
    expected = np_dense(inter["fused_cells"], _np(variables["params"])["pred"])[..., 0]
    np.testing.assert_allclose(out["cell_logits"], expected, atol=1e-5)


def test_transformer_encoder_ignores_padded_words():
    config = _config(encoder="transformer")
    batch = _batch(config)
    _, out, _ = _run(config, batch)
    batch["query_features"][1, 4:] = 50.0  # the two padded words of query 1
    _, out2, _ = _run(config, batch)
    np.testing.assert_allclose(out2["cell_logits"], out["cell_logits"], atol=1e-5)


@pytest.mark.parametrize(
    "field, value", [("encoder", "gru"), ("map_generator", "max"), ("comparison", "gcn")]
)
def test_unknown_ablation_value_is_a_clear_error(field, value):
    config = _config(**{field: value})
    with pytest.raises(ValueError, match=f"MGPN.{field} must be one of"):
        _run(config)


def test_defaults_are_the_full_model():
    """The class defaults are the paper's MGPN (golden parity: test_mgpn_parity.py)."""
    model = mgpn.MGPN()
    assert (model.encoder, model.map_generator, model.comparison) == ("bigru", "both", "conv")
    assert model.finegrained and model.conditioned_interaction
