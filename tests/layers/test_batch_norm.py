"""``layers.batch_norm``: torch.chunk's split, per-chunk BatchNorm against NumPy, and the same
numbers on 8 fake CPU devices as on 1."""

from __future__ import annotations

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_on_fake_devices

from vmr_jax.layers.batch_norm import MapBatchNorm, chunk_moments, chunk_sizes

# torch.chunk(torch.arange(B), G) sizes, by its rule: ceil(B / G) each, the remainder last,
# fewer than G chunks when ceil(B / G) chunks already cover B.
TORCH_CHUNKS = [
    (8, 1, (8,)),
    (8, 4, (2, 2, 2, 2)),
    (7, 2, (4, 3)),
    (7, 4, (2, 2, 2, 1)),
    (5, 4, (2, 2, 1)),
    (6, 4, (2, 2, 2)),
    (10, 4, (3, 3, 3, 1)),
    (2, 4, (1, 1)),
    (30, 4, (8, 8, 8, 6)),
]


@pytest.mark.parametrize("batch, groups, sizes", TORCH_CHUNKS)
def test_chunk_sizes_follow_torch_chunk(batch, groups, sizes):
    assert chunk_sizes(batch, groups) == sizes


@pytest.mark.parametrize("groups", [0, -1, 2.0, True])
def test_bad_groups_name_the_field(groups):
    with pytest.raises(ValueError, match="model.bn_groups must be a positive integer"):
        chunk_sizes(8, groups)


def _numpy_reference(y, sizes, scale, shift, eps=1e-5):
    """Per-chunk BatchNorm (biased variance) and chunk 0's (mean, unbiased variance)."""
    out, start, first = [], 0, None
    for size in sizes:
        flat = np.asarray(y[start : start + size], np.float64).reshape(-1, y.shape[-1])
        part = np.asarray(y[start : start + size], np.float64)
        out.append((part - flat.mean(0)) / np.sqrt(flat.var(0) + eps) * scale + shift)
        first = first or (flat.mean(0), flat.var(0, ddof=1))
        start += size
    return np.concatenate(out), first


@pytest.mark.parametrize(
    "groups, sizes", [(1, (7,)), (2, (4, 3)), (3, (3, 3, 1)), (5, (2, 2, 2, 1))]
)
def test_train_mode_normalises_each_chunk_and_updates_from_chunk_zero(groups, sizes):
    rng = np.random.default_rng(0)
    y = (rng.normal(size=(7, 5, 3)) * [1.0, 3.0, 0.2] + [0.5, -2.0, 4.0]).astype(np.float32)
    layer = MapBatchNorm(groups)
    variables = layer.init(jax.random.PRNGKey(0), y, train=False)
    scale = rng.uniform(0.5, 2.0, 3).astype(np.float32)
    shift = rng.normal(size=3).astype(np.float32)
    running = {"mean": np.array([0.3, -0.1, 0.2], np.float32), "var": np.full(3, 2.0, np.float32)}
    variables = {"params": {"scale": scale, "bias": shift}, "batch_stats": running}
    got, state = layer.apply(variables, y, train=True, mutable=["batch_stats"])
    want, (mean0, var0) = _numpy_reference(y, sizes, scale, shift)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    stats = state["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.9 * running["mean"] + 0.1 * mean0, rtol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 * running["var"] + 0.1 * var0, rtol=1e-5)
    # Eval mode: the running statistics, whatever the chunks.
    evaluated = layer.apply(variables, y, train=False)
    by_hand = (y - running["mean"]) / np.sqrt(running["var"] + 1e-5) * scale + shift
    np.testing.assert_allclose(np.asarray(evaluated), by_hand, atol=1e-5)


def test_constant_positions_count_as_explicit_rows():
    """The closed form of the dense map's bias-only cells equals appending those cells."""
    rng = np.random.default_rng(1)
    y = rng.normal(size=(5, 4, 2)).astype(np.float32)
    constant = np.array([0.7, -1.5], np.float32)
    mean, var, count = chunk_moments(jnp.asarray(y), 2, constant_positions=3, constant=constant)
    full = np.concatenate([y, np.broadcast_to(constant, (5, 3, 2))], axis=1)
    assert count.tolist() == [3 * 7, 2 * 7]
    for k, (start, stop) in enumerate([(0, 3), (3, 5)]):
        flat = full[start:stop].reshape(-1, 2).astype(np.float64)
        np.testing.assert_allclose(mean[k], flat.mean(0), atol=1e-6)
        np.testing.assert_allclose(var[k], flat.var(0), atol=1e-6)


# Runs in a fresh interpreter so that the 8 fake CPU devices exist before jax starts.
_EIGHT_DEVICES = textwrap.dedent(
    """
    import json
    import jax
    import ml_collections
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec
    from vmr_jax import sharding
    from vmr_jax.models import fvmr, mgpn

    mesh = sharding.make_mesh({"shape": (8, 1)})
    one = jax.devices()[0]
    rng = np.random.default_rng(0)
    out = {"device_count": jax.device_count()}
    for family, module in (("mgpn", mgpn), ("fvmr", fvmr)):
        config = ml_collections.ConfigDict(dict(module.VARIANTS["tiny"], bn_groups=3))
        if family == "mgpn":
            config.dropout = 0.0
            method = None
        else:
            method = fvmr.FVMR.encode_moments
        model = module.create_model(config)
        batch = module.example_batch(config, 8, 6)
        batch = {k: v for k, v in batch.items() if k in ("video_features", "query_features",
                                                         "query_mask")}
        batch["video_features"] = rng.normal(size=batch["video_features"].shape).astype(
            np.float32)
        if "query_features" in batch:
            batch["query_features"] = rng.normal(size=batch["query_features"].shape).astype(
                np.float32)
            batch["query_mask"] = np.ones_like(batch["query_mask"])
        variables = model.init(jax.random.PRNGKey(0), batch, train=False, method=method)

        @jax.jit
        def step(variables, batch):
            return model.apply(variables, batch, train=True, mutable=["batch_stats"],
                               method=method)

        runs = {}
        for name, where in (("one", one), ("eight", NamedSharding(mesh, PartitionSpec("data")))):
            placed = jax.device_put(batch, where)
            got, state = step(jax.device_put(variables, one if name == "one" else
                                             NamedSharding(mesh, PartitionSpec())), placed)
            if family == "mgpn":
                got = got["cell_logits"]
            runs[name] = {
                "shards": len(placed["video_features"].addressable_shards),
                "out": np.asarray(got).tolist(),
                "stats": [np.asarray(x).tolist() for x in jax.tree.leaves(state)],
            }
        out[family] = runs
    print("RESULT " + json.dumps(out))
    """
)


def test_eight_devices_give_the_chunk_statistics_of_one_device():
    """8 examples in 3 chunks (3, 3, 2) that straddle the 8 devices' shards of 1: the outputs
    and running statistics of a jitted train-mode apply equal those on one device."""
    out = run_on_fake_devices(_EIGHT_DEVICES)
    assert out["device_count"] == 8
    for family in ("mgpn", "fvmr"):
        one, eight = out[family]["one"], out[family]["eight"]
        assert one["shards"] == 1 and eight["shards"] == 8
        np.testing.assert_allclose(eight["out"], one["out"], rtol=1e-5, atol=1e-5)
        assert len(eight["stats"]) == len(one["stats"]) > 0
        for got, want in zip(eight["stats"], one["stats"]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
