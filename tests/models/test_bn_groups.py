"""``model.bn_groups``: MGPN's and FVMR's train-mode BatchNorm per chunk of the batch, as the
official ``nn.DataParallel`` runs compute it (``vmr_jax.layers.batch_norm``).

Expected numbers: a NumPy BatchNorm written here, per chunk of ``torch.chunk``'s split written
out by hand, of the first map block's conv outputs recomputed with the dense convolution
(``map_conv.dense_masked_conv``, the reference the sparse convs are tested against); and
DataParallel's definition itself: each chunk run alone through the model with ``bn_groups=1``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vmr_jax.layers import map_conv
from vmr_jax.models import fvmr, mgpn
from vmr_jax.ops import moment_map

# torch.chunk(x, G) of B = 5 examples: ceil(5 / G) each, the rest last (G = 4: 3 chunks).
CHUNKS_OF_FIVE = {1: (5,), 2: (3, 2), 4: (2, 2, 1)}


def _mgpn_config(**overrides):
    config = ml_collections.ConfigDict(dict(mgpn.VARIANTS["tiny"], dropout=0.0))
    config.update(overrides)
    return config


def _mgpn_batch(config, batch_size=5, seed=0):
    rng = np.random.default_rng(seed)
    t = config.num_clips * config.frame_stride
    mask = (np.arange(6)[None] < rng.integers(2, 7, batch_size)[:, None]).astype(np.float32)
    return {
        "video_features": rng.normal(size=(batch_size, t, config.feature_dim)).astype(np.float32),
        "query_features": rng.normal(size=(batch_size, 6, config.word_dim)).astype(np.float32),
        "query_mask": mask,
    }


def _numpy_chunk_batch_norm(y, sizes, scale, shift, eps=1e-5):
    """``y [B, P, ch]`` normalised per chunk (biased variance), plus chunk 0's mean and
    unbiased variance (PyTorch's running update)."""
    out, start = [], 0
    for size in sizes:
        part = np.asarray(y[start : start + size], np.float64)
        flat = part.reshape(-1, part.shape[-1])
        out.append((part - flat.mean(0)) / np.sqrt(flat.var(0) + eps) * scale + shift)
        if start == 0:
            first = (flat.mean(0), flat.var(0, ddof=1))
        start += size
    return np.concatenate(out), first


def _first_block_conv(model, config, variables, batch):
    """Train-mode forward; returns (block-1 output, its dense conv map ``[B, N, N, ch]``, new
    batch_stats).  The block's input is rebuilt from the sown intermediates (fuse conv)."""
    out, st = model.apply(variables, batch, train=True, mutable=["batch_stats", "intermediates"])
    del out
    inter = st["intermediates"]
    fused, boundary, content = (
        inter[k][0] for k in ("fused_cells", "boundary_cells", "content_cells")
    )
    p = variables["params"]["fuse_conv"]
    x = jax.nn.relu(jnp.concatenate([fused, boundary, content], -1) @ p["kernel"] + p["bias"])
    x = x + fused
    n = config.num_clips
    starts, ends = moment_map.valid_cells(n, tuple(config.pooling_counts))
    blk = variables["params"]["conv_block1"]
    dense = moment_map.scatter_cells(x, starts, ends, n)
    y = map_conv.dense_masked_conv(dense, blk["kernel"], 3, config.groups) + blk["bias"]
    return inter["conv_block1"]["output"][0], np.asarray(y), st["batch_stats"]


def _with_random_bn_affine(variables, seed=3):
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    bn = params["conv_block1"]["bn"]
    bn["scale"] = rng.uniform(0.5, 2.0, bn["scale"].shape).astype(np.float32)
    bn["bias"] = rng.normal(size=bn["bias"].shape).astype(np.float32)
    return {"params": params, "batch_stats": variables["batch_stats"]}


@pytest.mark.parametrize(
    "groups, map_conv_mode, bn_stats",
    [
        (1, "sparse", "dense"),  # the default: statistics over the whole batch, as before
        (2, "sparse", "dense"),
        (4, "sparse", "dense"),
        (4, "sparse", "valid"),
        (4, "dense", "dense"),
        (4, "dense", "valid"),
    ],
)
def test_mgpn_block_equals_numpy_batch_norm_per_chunk(groups, map_conv_mode, bn_stats):
    """Uneven batch of 5: each chunk normalised with its own statistics (over all N x N conv
    outputs with ``bn_stats='dense'``, over the valid cells with ``'valid'``); running mean
    and variance from chunk 0 alone (momentum 0.1, unbiased variance)."""
    config = _mgpn_config(
        bn_groups=groups, map_conv=map_conv_mode, bn_stats=bn_stats, conv_chunk=16
    )
    model = mgpn.create_model(config)
    batch = _mgpn_batch(config)
    variables = model.init(jax.random.PRNGKey(1), batch, train=False)
    variables = _with_random_bn_affine(variables)
    got, y_dense, stats = _first_block_conv(model, config, variables, batch)

    n = config.num_clips
    starts, ends = moment_map.valid_cells(n, tuple(config.pooling_counts))
    bn = variables["params"]["conv_block1"]["bn"]
    b, ch = y_dense.shape[0], y_dense.shape[-1]
    if bn_stats == "dense":
        normed, (mean0, var0) = _numpy_chunk_batch_norm(
            y_dense.reshape(b, n * n, ch), CHUNKS_OF_FIVE[groups], bn["scale"], bn["bias"]
        )
        want = normed.reshape(b, n, n, ch)[:, starts, ends]
    else:
        want, (mean0, var0) = _numpy_chunk_batch_norm(
            y_dense[:, starts, ends], CHUNKS_OF_FIVE[groups], bn["scale"], bn["bias"]
        )
    np.testing.assert_allclose(np.asarray(got), np.maximum(want, 0.0), atol=2e-4)
    np.testing.assert_allclose(stats["conv_block1"]["bn"]["mean"], 0.1 * mean0, atol=2e-6)
    np.testing.assert_allclose(stats["conv_block1"]["bn"]["var"], 0.9 + 0.1 * var0, rtol=1e-5)


def _mgpn_alone(config, variables, batch):
    model = mgpn.create_model(config)
    out, st = model.apply(variables, batch, train=True, mutable=["batch_stats"])
    return np.asarray(out["cell_logits"]), st["batch_stats"]


def _fvmr_alone(config, variables, batch):
    model = fvmr.create_model(config)
    out, st = model.apply(
        variables, batch, train=True, mutable=["batch_stats"], method=fvmr.FVMR.encode_moments
    )
    return np.asarray(out), st["batch_stats"]


@pytest.mark.parametrize("family", ["mgpn", "fvmr"])
def test_each_chunk_as_if_alone_on_its_own_gpu(family):
    """DataParallel's definition: ``bn_groups=2`` on 5 examples gives, for examples 0-2 and
    3-4, what the model gives each chunk alone (``bn_groups=1``); the running statistics are
    those of chunk 0 alone."""
    if family == "mgpn":
        config = _mgpn_config()
        batch, run = _mgpn_batch(config), _mgpn_alone
        init = mgpn.create_model(config).init
    else:
        config = ml_collections.ConfigDict(dict(fvmr.VARIANTS["tiny"]))
        rng = np.random.default_rng(4)
        batch = fvmr.example_batch(config, 5, 6)
        batch["video_features"] = rng.normal(size=batch["video_features"].shape).astype(np.float32)
        batch = {"video_features": batch["video_features"]}
        run = _fvmr_alone

        def init(key, b, train):
            return fvmr.create_model(config).init(
                key, b, train=train, method=fvmr.FVMR.encode_moments
            )

    variables = init(jax.random.PRNGKey(2), batch, train=False)
    grouped = ml_collections.ConfigDict(dict(config, bn_groups=2))
    got, got_stats = run(grouped, variables, batch)
    first = {k: v[:3] for k, v in batch.items()}
    second = {k: v[3:] for k, v in batch.items()}
    want_first, want_stats = run(config, variables, first)
    want_second, _ = run(config, variables, second)
    np.testing.assert_allclose(got[:3], want_first, atol=1e-5)
    np.testing.assert_allclose(got[3:], want_second, atol=1e-5)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got_stats, want_stats
    )
    # And the whole batch at once (bn_groups=1) is different: the option changes something.
    whole, _ = run(config, variables, batch)
    assert np.abs(whole - got).max() > 1e-3


def test_official_variants_use_four_chunks_and_tiny_the_whole_batch():
    """run_*.sh: CUDA_VISIBLE_DEVICES=0,1,2,3 under nn.DataParallel; the synthetic benchmark
    (tiny) and FVMR (no official code, no GPU count in the paper) keep global statistics."""
    for name in ("charades_i3d", "charades_vgg", "tacos", "activitynet"):
        assert mgpn.VARIANTS[name]["bn_groups"] == 4
    assert mgpn.VARIANTS["tiny"]["bn_groups"] == 1
    assert mgpn.MGPN.bn_groups == 1
    assert all(v["bn_groups"] == 1 for v in fvmr.VARIANTS.values())


def test_bad_bn_groups_is_a_named_error():
    config = _mgpn_config(bn_groups=0)
    batch = _mgpn_batch(config, batch_size=2)
    with pytest.raises(ValueError, match="model.bn_groups must be a positive integer"):
        mgpn.create_model(config).init(jax.random.PRNGKey(0), batch, train=True)
