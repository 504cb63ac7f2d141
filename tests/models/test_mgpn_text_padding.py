"""MGPN ``text_padding='batch'``: a batch padded to a fixed 12 slots gives what the model gives
on the same batch actually padded to its longest query (the official collate), and 2D-TAN's
text vector does not depend on trailing padding at all.

Reference (an independent method, no emulation): the inputs sliced to ``L_b`` slots and run
with ``text_padding='fixed'``, which reads every slot it is given -- exactly the official
``pad_sequence`` batch.
"""

from __future__ import annotations

import textwrap

import jax
import ml_collections
import numpy as np
import pytest
from conftest import run_on_fake_devices

from vmr_jax.models import mgpn, tan2d

LENGTHS = (5, 3, 2)  # L_b = 5
SLOTS = 12
ATOL = 1e-5


def _batch(word_dim, model_config, seed=0):
    rng = np.random.default_rng(seed)
    b = len(LENGTHS)
    mask = (np.arange(SLOTS)[None] < np.asarray(LENGTHS)[:, None]).astype(np.float32)
    words = rng.normal(size=(b, SLOTS, word_dim)).astype(np.float32) * mask[..., None]
    t = model_config.num_clips * model_config.frame_stride
    return {
        "video_features": rng.normal(size=(b, t, model_config.feature_dim)).astype(np.float32),
        "query_features": words,
        "query_mask": mask,
        "duration": np.full((b,), 10.0, np.float32),
        "spans": np.tile(np.array([[[1.0, 4.0]]], np.float32), (b, 1, 1)),
        "valid": np.ones((b,), np.float32),
    }


def _sliced(batch, slots):
    out = dict(batch)
    out["query_features"] = batch["query_features"][:, :slots]
    out["query_mask"] = batch["query_mask"][:, :slots]
    return out


def _mgpn(text_padding):
    config = ml_collections.ConfigDict(dict(mgpn.VARIANTS["tiny"]))
    config.text_padding = text_padding
    return config, mgpn.create_model(config)


def _apply(model, variables, batch):
    outputs, state = model.apply(variables, batch, train=False, mutable=["intermediates"])
    inter = {k: np.asarray(v[0]) for k, v in state["intermediates"].items() if isinstance(v, tuple)}
    return np.asarray(outputs["score_map"]), inter


def test_tiny_variant_keeps_fixed_padding_and_official_variants_pad_per_batch():
    assert mgpn.VARIANTS["tiny"]["text_padding"] == "fixed"
    for name in ("charades_i3d", "charades_vgg", "tacos", "activitynet"):
        assert mgpn.VARIANTS[name]["text_padding"] == "batch"


def test_batch_padding_equals_the_batch_padded_to_its_longest_query():
    config, model = _mgpn("batch")
    _, reference_model = _mgpn("fixed")
    batch = _batch(config.word_dim, config)
    variables = model.init(jax.random.PRNGKey(1), batch, train=False)
    longest = max(LENGTHS)
    want_map, want = _apply(reference_model, variables, _sliced(batch, longest))
    got_map, got = _apply(model, variables, batch)
    np.testing.assert_allclose(got_map, want_map, atol=ATOL, rtol=0)
    for key in ("txt_gru_output", "txt_encoded", "txt_fused", "txt_finegrained", "vis_fused"):
        ours = got[key][:, :longest] if key != "vis_fused" else got[key]
        np.testing.assert_allclose(ours, want[key], atol=ATOL, rtol=0, err_msg=key)
    np.testing.assert_allclose(got["txt_gru_h_n"], want["txt_gru_h_n"], atol=ATOL, rtol=0)
    for key in ("txt_gru_output", "txt_encoded", "txt_fused"):
        np.testing.assert_array_equal(got[key][:, longest:], 0.0)  # slots the batch lacks

    # Control: reading all 12 slots (the behaviour before the option) is something else.
    fixed_map, fixed = _apply(reference_model, variables, batch)
    assert np.abs(fixed["txt_fused"][:, :longest] - want["txt_fused"]).max() > 1e-2
    assert np.abs(fixed_map - want_map).max() > 10 * ATOL


def test_batch_padding_depends_only_on_the_longest_query_of_the_batch():
    """The same query gives the same outputs whatever the fixed slot count beyond L_b."""
    config, model = _mgpn("batch")
    batch = _batch(config.word_dim, config, seed=3)
    variables = model.init(jax.random.PRNGKey(2), batch, train=False)
    score_12, _ = _apply(model, variables, batch)
    score_7, _ = _apply(model, variables, _sliced(batch, 7))
    np.testing.assert_allclose(score_12, score_7, atol=ATOL, rtol=0)


def test_unknown_text_padding_is_refused():
    config, model = _mgpn("per_query")
    batch = _batch(config.word_dim, config)
    with pytest.raises(ValueError, match="text_padding must be 'batch' or 'fixed'"):
        model.init(jax.random.PRNGKey(0), batch, train=False)


def test_tan2d_text_vector_ignores_trailing_padding():
    """2D-TAN (every official YAML: a unidirectional LSTM) keeps the output row of the last
    real word, which no later slot can change: no padding option is needed."""
    config = ml_collections.ConfigDict(dict(tan2d.VARIANTS["tiny"]))
    assert not config.get("bidirectional", False)
    model = tan2d.create_model(config)
    batch = _batch(config.word_dim, config)
    variables = model.init(jax.random.PRNGKey(0), batch, train=False)
    full = model.apply(variables, batch, method="encode_query")
    sliced = model.apply(variables, _sliced(batch, max(LENGTHS)), method="encode_query")
    np.testing.assert_allclose(np.asarray(full), np.asarray(sliced), atol=ATOL, rtol=0)


_SHARDED = textwrap.dedent(
    """
    import json
    import jax
    import ml_collections
    import numpy as np
    from vmr_jax import sharding
    from vmr_jax.models import mgpn

    config = ml_collections.ConfigDict(dict(mgpn.VARIANTS["tiny"]))
    config.text_padding = "batch"
    model = mgpn.create_model(config)
    rng = np.random.default_rng(0)
    lengths = np.array([2, 2, 2, 2, 2, 2, 2, 6])  # the longest query is on the last device
    mask = (np.arange(12)[None] < lengths[:, None]).astype(np.float32)
    t = config.num_clips * config.frame_stride
    batch = {
        "video_features": rng.normal(size=(8, t, config.feature_dim)).astype(np.float32),
        "query_features": rng.normal(size=(8, 12, config.word_dim)).astype(np.float32)
        * mask[..., None],
        "query_mask": mask,
    }
    variables = model.init(jax.random.PRNGKey(0), batch, train=False)
    forward = jax.jit(lambda v, b: model.apply(v, b, train=False)["score_map"])
    mesh = sharding.make_mesh({"shape": (8, 1)})
    placed = sharding.put_batch(batch, mesh)
    shards = len(placed["query_mask"].addressable_shards)
    sharded = np.asarray(forward(variables, placed))
    sliced = {k: (v[:, :6] if k.startswith("query") else v) for k, v in batch.items()}
    reference = np.asarray(forward(variables, sliced))
    print("RESULT " + json.dumps(
        {"devices": jax.device_count(), "shards": shards,
         "diff": float(np.abs(sharded - reference).max())}
    ))
    """
)


def test_longest_query_is_taken_over_the_global_sharded_batch(tmp_path):
    """8 CPU devices, one query per device, the longest (6 words) on one of them: the
    sharded forward equals the batch sliced to 6 slots (L_b is a global reduction)."""
    out = run_on_fake_devices(_SHARDED)
    assert out["devices"] == 8 and out["shards"] == 8
    assert out["diff"] <= ATOL
