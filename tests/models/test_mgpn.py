"""MGPN unit checks beyond parity: train-mode equivalence of the sparse and dense map convs
(including PyTorch's BatchNorm statistics over the whole N x N map), masking, shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vmr_jax.layers import map_conv
from vmr_jax.models import mgpn
from vmr_jax.ops import moment_map


def _batch(config, batch_size=3, seed=0):
    rng = np.random.default_rng(seed)
    t = config.num_clips * config.frame_stride
    mask = np.ones((batch_size, 6), np.float32)
    mask[1, 4:] = 0
    return {
        "video_features": rng.normal(size=(batch_size, t, config.feature_dim)).astype(np.float32),
        "query_features": rng.normal(size=(batch_size, 6, config.word_dim)).astype(np.float32),
        "query_mask": mask,
        "duration": np.array([30.0, 12.5, 80.0][:batch_size], np.float32),
        "spans": np.array([[[3.0, 11.0]], [[0.0, 4.0]], [[40.0, 79.0]]][:batch_size], np.float32),
        "valid": np.ones(batch_size, np.float32),
    }


def _config(**overrides):
    config = ml_collections.ConfigDict(dict(mgpn.VARIANTS["tiny"]))
    config.update(overrides)
    return config


def _train_loss_grads(config, variables, batch):
    model = mgpn.create_model(config)

    def loss(params):
        out, state = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            batch,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.PRNGKey(7)},
        )
        value, _ = mgpn.loss_fn(out, batch, config)
        return value, state

    (value, state), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    return value, grads, state["batch_stats"]


@pytest.mark.parametrize("bn_stats", ["dense", "valid"])
def test_sparse_training_step_equals_dense_map_conv(bn_stats):
    sparse = _config(map_conv="sparse", bn_stats=bn_stats, conv_chunk=16)
    dense = _config(map_conv="dense", bn_stats=bn_stats)
    batch = _batch(sparse)
    variables = mgpn.create_model(sparse).init(jax.random.PRNGKey(1), batch, train=False)
    l_s, g_s, bs_s = _train_loss_grads(sparse, variables, batch)
    l_d, g_d, bs_d = _train_loss_grads(dense, variables, batch)
    np.testing.assert_allclose(l_s, l_d, rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), g_s, g_d)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), bs_s, bs_d)


def test_dense_bn_statistics_cover_every_map_cell():
    """Running mean after one train step = 0.9 * 0 + 0.1 * mean over all B*N*N conv outputs,
    recomputed here with the dense convolution of the scattered input."""
    config = _config(map_conv="sparse", bn_stats="dense", dropout=0.0)
    batch = _batch(config)
    model = mgpn.create_model(config)
    variables = model.init(jax.random.PRNGKey(2), batch, train=False)
    _, st = model.apply(variables, batch, train=True, mutable=["batch_stats", "intermediates"])
    n = config.num_clips
    starts, ends = moment_map.valid_cells(n, tuple(config.pooling_counts))
    # Recompute block-1 input exactly like the model (fuse conv) from intermediates.
    fused = st["intermediates"]["fused_cells"][0]
    boundary = st["intermediates"]["boundary_cells"][0]
    content = st["intermediates"]["content_cells"][0]
    p = variables["params"]["fuse_conv"]
    x = jax.nn.relu(jnp.concatenate([fused, boundary, content], -1) @ p["kernel"] + p["bias"])
    x = x + fused
    blk = variables["params"]["conv_block1"]
    dense = moment_map.scatter_cells(x, starts, ends, n)
    y = map_conv.dense_masked_conv(dense, blk["kernel"], 3, config.groups) + blk["bias"]
    want_mean = 0.1 * np.asarray(y).mean(axis=(0, 1, 2))
    got_mean = np.asarray(st["batch_stats"]["conv_block1"]["bn"]["mean"])
    np.testing.assert_allclose(got_mean, want_mean, atol=1e-5)


def test_score_map_is_zero_outside_valid_cells_and_padding_examples_do_not_count():
    config = _config()
    batch = _batch(config)
    model = mgpn.create_model(config)
    variables = model.init(jax.random.PRNGKey(3), batch, train=False)
    out = model.apply(variables, batch, train=False)
    mask = moment_map.valid_cell_mask(config.num_clips, tuple(config.pooling_counts))
    assert out["score_map"].shape == (3, config.num_clips, config.num_clips)
    assert np.all(np.asarray(out["score_map"])[:, ~mask] == 0)
    # Loss with example 2 marked as padding equals the loss over examples 0 and 1 alone.
    padded = dict(batch, valid=np.array([1, 1, 0], np.float32))
    l_pad, _ = mgpn.loss_fn(out, padded, config)
    sub = {k: v[:2] for k, v in batch.items()}
    out_sub = {k: v[:2] for k, v in out.items()}
    l_sub, _ = mgpn.loss_fn(out_sub, sub, config)
    np.testing.assert_allclose(l_pad, l_sub, rtol=1e-6)


def test_wrong_clip_count_is_a_clear_error():
    config = _config()
    batch = _batch(config)
    batch["video_features"] = batch["video_features"][:, :-1]
    with pytest.raises(ValueError, match="video_features has 31 clips"):
        mgpn.create_model(config).init(jax.random.PRNGKey(0), batch, train=False)


def test_token_input_uses_learned_embedding():
    config = _config(vocab_size=50)
    batch = _batch(config)
    batch["query_tokens"] = np.array([[3, 4, 5, 6, 0, 0]] * 3, np.int32)
    del batch["query_features"]
    variables = mgpn.create_model(config).init(jax.random.PRNGKey(0), batch, train=False)
    assert variables["params"]["word_embed"]["embedding"].shape == (50, config.word_dim)


def test_unused_official_conv1d_count_by_hand():
    # Conv1d(1024, 512, kernel 3): weight 512 x 1024 x 3 = 1,572,864, bias 512.
    assert mgpn.UNUSED_OFFICIAL_PARAMS == 1_572_864 + 512 == 1_573_376
    assert mgpn.FAMILY.unused_official_params == 1_573_376


@pytest.mark.parametrize(
    "variant, paper_millions",
    [("tacos", 6.62), ("activitynet", 5.12)],  # Table 2 (TACoS), Table 4 (ActivityNet, GRU)
)
def test_parameter_counts_match_the_papers_tables(variant, paper_millions):
    counts = mgpn.parameter_counts(ml_collections.ConfigDict(dict(mgpn.VARIANTS[variant])))
    assert counts["num_params_paper"] - counts["num_params"] == 1_573_376
    assert round(counts["num_params_paper"] / 1e6, 2) == paper_millions
    # Ours alone misses the tables by the unused layer's 1.57M.
    assert round(counts["num_params"] / 1e6, 2) != paper_millions
