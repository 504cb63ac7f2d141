"""Cascaded MPN model family: the label rule, the hinge losses (both directions and single) and
the moment loss by hand, eqs. 22-23's weights, the forward's shapes and finite gradients with
padding, the ablation flags, the Family record, the corpus stages against the training path
and a direct cascade, a corpus search against brute force, and a few AdamW steps."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vmr_jax import sharding
from vmr_jax.models import FAMILIES, cascaded_mpn, cascaded_mpn_loss
from vmr_jax.models.cascaded_mpn_corpus import map_cells
from vmr_jax.ops import score_maps
from vmr_jax.retrieval import corpus

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")

LENGTHS = (12, 9, 5)  # valid clips of the three test videos (12 slots)
NUM_CLIPS = 12


def _config(**overrides):
    config = ml_collections.ConfigDict(dict(cascaded_mpn.VARIANTS["tiny"], name="cascaded_mpn"))
    config.update(overrides)
    return config


def _batch(config, lengths=LENGTHS, seed=0):
    """``example_batch`` with random features and padding: videos of ``lengths`` clips,
    queries of 5, 3, 6 tokens, subtitle tokens and sentences cut to each video."""
    rng = np.random.default_rng(seed)
    b = len(lengths)
    batch = cascaded_mpn.example_batch(config, b, 6, NUM_CLIPS)
    video_mask = (np.arange(NUM_CLIPS)[None] < np.array(lengths)[:, None]).astype(np.float32)
    query_mask = (np.arange(6)[None] < np.array([5, 3, 6])[:b, None]).astype(np.float32)
    batch["video_mask"], batch["query_mask"] = video_mask, query_mask
    for key, mask in (("video_features", video_mask), ("query_features", query_mask)):
        batch[key] = rng.normal(size=batch[key].shape).astype(np.float32) * mask[..., None]
    batch["duration"] = np.array(lengths, np.float32) * config.clip_length
    batch["spans"] = np.array([[[1.2, 5.5]], [[0.0, 3.0]], [[2.5, 4.9]]][:b], np.float32)
    if config.use_subtitles:
        words = batch["subtitle_word_mask"].shape[1]
        kept = np.array(lengths) * words // NUM_CLIPS  # tokens of the sentences in the video
        word_mask = (np.arange(words)[None] < kept[:, None]).astype(np.float32)
        batch["subtitle_word_mask"] = word_mask
        batch["subtitle_word_sentence"] = np.where(
            word_mask > 0, batch["subtitle_word_sentence"], -1
        )
        feats = rng.normal(size=batch["subtitle_word_features"].shape).astype(np.float32)
        batch["subtitle_word_features"] = feats * word_mask[..., None]
        batch["subtitle_coverage"] = batch["subtitle_coverage"] * video_mask[..., None]
    return batch


def _init(config, batch, seed=0):
    model = cascaded_mpn.create_model(config)
    return model, model.init(jax.random.PRNGKey(seed), batch, train=False)


@functools.cache
def _shared():
    config = _config()
    batch = _batch(config)
    model, variables = _init(config, batch)
    return config, batch, model, variables


def _map_params(params) -> score_maps.ConditionalMapParams:
    p = params["score_map"]
    return score_maps.ConditionalMapParams(
        p.get("w_v"),
        p.get("w_q"),
        p["start_kernel"],
        p["start_bias"],
        p["end_kernel"],
        p["end_bias"],
    )


# Labels and losses by hand ---------------------------------------------------------------------


def test_st_ed_labels_by_hand():
    # HERO: st = floor(t_s / 1.5), ed = max(ceil(t_e / 1.5) - 1, st + 1), both capped at n - 1.
    # [3.2, 7.6]: 2, ceil(5.07) - 1 = 5.  [4.5, 9.0] on clip edges: 3, 6 - 1 = 5.
    # [3.0, 4.4] inside clip 2: ceil(2.93) - 1 = 2 < st + 1, so 3.  [10, 20] in 5 clips: 4, 4.
    # A row with no valid clip: 0, 0.
    spans = jnp.array([[3.2, 7.6], [4.5, 9.0], [3.0, 4.4], [10.0, 20.0], [1.0, 2.0]])
    mask = jnp.array([[1.0] * 8] * 3 + [[1.0] * 5 + [0.0] * 3, [0.0] * 8])
    labels = cascaded_mpn.st_ed_labels(spans, mask, 1.5)
    np.testing.assert_array_equal(labels, [[2, 5], [3, 5], [2, 3], [4, 4], [0, 0]])


SIM = np.array([[0.9, 0.45, 0.85], [0.2, 0.6, 0.3], [0.4, 0.75, 0.7]], np.float32)


@pytest.mark.parametrize(
    "valid, video_index, directions, want",
    [
        # Rows (query vs other videos): row 0 (0 + 0.05) / 2, row 1 0, row 2 (0 + 0.15) / 2.
        ([1, 1, 1], None, "query_to_video", (0.025 + 0.0 + 0.075) / 3),
        # Columns (video vs other queries): video 0 0, video 1 (0 + 0.25) / 2, video 2
        # (0.25 + 0) / 2.
        ([1, 1, 1], None, "both", (0.025 + 0.075) / 3 + (0.125 + 0.125) / 3),
        # Queries 0 and 2 share a video: rows 0, 0, 0.15; columns 0, 0.25 / 2, 0.
        ([1, 1, 1], [0, 1, 0], "both", 0.15 / 3 + 0.125 / 3),
        # Example 1 is padding: rows 0.05, 0; columns 0, 0.25.
        ([1, 0, 1], None, "both", 0.05 / 2 + 0.25 / 2),
    ],
)
def test_hinge_loss_by_hand(valid, video_index, directions, want):
    negatives = cascaded_mpn.negative_pairs(
        jnp.array(valid, jnp.float32), None if video_index is None else jnp.array(video_index)
    )
    got = cascaded_mpn.video_hinge_loss(jnp.asarray(SIM), negatives, 0.1, directions)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_hinge_directions_are_checked():
    with pytest.raises(ValueError, match="hinge_directions"):
        cascaded_mpn.video_hinge_loss(jnp.asarray(SIM), jnp.ones((3, 3), bool), 0.1, "videos")
    with pytest.raises(ValueError, match="hinge_directions"):
        cascaded_mpn.create_model(_config(hinge_directions="one"))


def _hand_log_probs():
    """P(st) = (0.5, 0.3, 0.2); P(ed | st) rows (0.2, 0.5, 0.3), (-, 0.6, 0.4), (-, -, 1)."""
    neg = np.finfo(np.float32).min
    log_p_start = np.log([0.5, 0.3, 0.2])
    log_p_end = np.full((3, 3), neg)
    log_p_end[0] = np.log([0.2, 0.5, 0.3])
    log_p_end[1, 1:] = np.log([0.6, 0.4])
    log_p_end[2, 2] = 0.0
    return log_p_start.astype(np.float32), log_p_end.astype(np.float32)


def test_moment_loss_by_hand():
    lps, lpe = _hand_log_probs()
    log_p_start = jnp.asarray(np.stack([lps, lps]))
    log_p_end = jnp.asarray(np.stack([lpe, lpe]))
    # Example 0: labels (1, 2) -> -log 0.3 - log 0.4; example 1 (weight 0) points at a masked
    # end (finfo.min) and must not count.
    labels = jnp.array([[1, 2], [2, 0]], jnp.int32)
    got = cascaded_mpn.moment_loss(log_p_start, log_p_end, labels, jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(got, -math.log(0.3) - math.log(0.4), rtol=1e-6)
    both = cascaded_mpn.moment_loss(
        log_p_start, log_p_end, jnp.array([[1, 2], [0, 1]]), jnp.array([1.0, 1.0])
    )
    want = (-math.log(0.3) - math.log(0.4) - math.log(0.5) - math.log(0.5)) / 2
    np.testing.assert_allclose(both, want, rtol=1e-6)
    grad = jax.grad(cascaded_mpn.moment_loss, argnums=(0, 1))(
        log_p_start, log_p_end, labels, jnp.array([1.0, 0.0])
    )
    assert all(np.isfinite(g).all() for g in grad)


def test_loss_fn_weights_eqs_22_23_by_hand():
    """alpha = 8 weights the two hinge losses, beta = 0.01 the moment loss."""
    config = _config(clip_length=1.0)
    lps, lpe = _hand_log_probs()
    outputs = {
        "frame_similarity": jnp.asarray(SIM),
        "anchor_similarity": jnp.asarray(SIM.T),
        "log_p_start": jnp.asarray(np.stack([lps] * 3)),
        "log_p_end": jnp.asarray(np.stack([lpe] * 3)),
    }
    batch = {
        # Labels: (1, ceil(2.5) - 1 = 2), (0, max(ceil(0.5) - 1, 1) = 1), padding row.
        "spans": np.array([[[1.2, 2.5]], [[0.0, 0.5]], [[0.0, 1.0]]], np.float32),
        "span_mask": np.ones((3, 1), np.float32),
        "video_mask": np.array([[1, 1, 1], [1, 1, 1], [0, 0, 0]], np.float32),
        "valid": np.array([1.0, 1.0, 0.0], np.float32),
    }
    _, parts = cascaded_mpn.loss_fn(outputs, batch, config)
    # Examples 0 and 1 only: S block [[0.9, 0.45], [0.2, 0.6]] and its transpose have every
    # hinge below 0 (0.1 + 0.45 - 0.6 < 0 is the closest), so both hinge terms are 0.
    moment = ((-math.log(0.3) - math.log(0.4)) + (-math.log(0.5) - math.log(0.5))) / 2
    np.testing.assert_allclose(parts["loss_frame_hinge"], 0.0, atol=1e-7)
    np.testing.assert_allclose(parts["loss_anchor_hinge"], 0.0, atol=1e-7)
    np.testing.assert_allclose(parts["loss_moment"], 0.01 * moment, rtol=1e-6)
    # All three real: frame hinge both ways (0.1 / 3 + 0.25 / 3), anchor on S^T: the same two
    # directions swapped, so the same value.
    batch3 = dict(batch, video_mask=np.ones((3, 3), np.float32), valid=np.ones(3, np.float32))
    loss3, parts3 = cascaded_mpn.loss_fn(outputs, batch3, config)
    hinge = 0.1 / 3 + 0.25 / 3
    np.testing.assert_allclose(parts3["loss_frame_hinge"], 8 * hinge, rtol=1e-5)
    np.testing.assert_allclose(parts3["loss_anchor_hinge"], 8 * hinge, rtol=1e-5)
    # Example 2: span [0, 1] -> (0, max(0, 1) = 1): -log 0.5 - log 0.5.
    moment3 = (2 * moment + (-2 * math.log(0.5))) / 3
    np.testing.assert_allclose(parts3["loss_moment"], 0.01 * moment3, rtol=1e-6)
    np.testing.assert_allclose(loss3, sum(parts3.values()), rtol=1e-6)
    single = _config(clip_length=1.0, hinge_directions="query_to_video")
    _, parts1 = cascaded_mpn.loss_fn(outputs, batch3, single)
    np.testing.assert_allclose(parts1["loss_frame_hinge"], 8 * 0.1 / 3, rtol=1e-5)


def test_max_cosine_by_hand():
    queries = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    items = jnp.array(
        [[[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]], [[0.0, -1.0], [-2.0, 0.0], [9.0, 9.0]]]
    )
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    got = cascaded_mpn.max_cosine(queries, items, mask)
    # Query (1, 0): video 0 max(0.6, 1) = 1, video 1 max(0, -1) = 0 (the masked (9, 9) is out).
    # Query (0, 1): video 0 max(0.8, 0) = 0.8, video 1 max(-1, 0) = 0.
    np.testing.assert_allclose(got, [[1.0, 0.0], [0.8, 0.0]], atol=1e-6)
    grad = jax.grad(lambda x: cascaded_mpn.max_cosine(queries, x, mask).sum())(items)
    assert np.isfinite(grad).all()  # the zero vector has finite gradients


# Forward --------------------------------------------------------------------------------------


def test_forward_shapes_masks_and_finite_gradients_with_padding():
    config, batch, model, variables = _shared()
    batch = dict(batch, valid=np.array([1.0, 1.0, 0.0], np.float32))
    out = model.apply(variables, batch, train=False)
    b, length = 3, NUM_CLIPS
    assert out["frame_similarity"].shape == out["anchor_similarity"].shape == (b, b)
    assert out["log_p_start"].shape == (b, length)
    for key in ("log_p_end", "frame_score_map", "score_map"):
        assert out[key].shape == (b, length, length), key
    for i, n in enumerate(LENGTHS):
        cells = np.triu(np.ones((length, length), bool)) & (np.arange(length)[None] < n)
        score = np.asarray(out["score_map"][i])
        # the default map_scale='log': log M_T, a log-distribution over the valid cells
        assert (score[~cells] == score_maps.LOG_MASKED).all()
        np.testing.assert_allclose(np.exp(score[cells]).sum(), 1.0, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(out["frame_score_map"][i]).sum(), 1.0, rtol=1e-5)
    assert np.all(np.abs(out["frame_similarity"]) <= 1 + 1e-6)

    def loss(params):
        outputs = model.apply(
            {"params": params}, batch, train=True, rngs={"dropout": jax.random.PRNGKey(1)}
        )
        return cascaded_mpn.loss_fn(outputs, batch, config)[0]

    value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
    assert np.isfinite(value)
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    assert all(np.isfinite(g).all() for _, g in leaves)
    nonzero = {jax.tree_util.keystr(p) for p, g in leaves if np.abs(g).max() > 0}
    for part in ("graph_attention", "anchor_semantics", "query_encoder", "w_v", "end_kernel"):
        assert any(part in p for p in nonzero), part


def test_padding_does_not_change_the_outputs():
    """A video padded with 4 more clips of noise gives the same similarities and maps."""
    config, batch, model, variables = _shared()
    out = model.apply(variables, batch, train=False)
    wide = dict(batch)
    extra = 4
    rng = np.random.default_rng(5)
    for key, axis in (("video_features", 1), ("video_mask", 1), ("subtitle_coverage", 1)):
        pad = [(0, 0)] * batch[key].ndim
        pad[axis] = (0, extra)
        wide[key] = np.pad(batch[key], pad)
    wide["video_features"][:, NUM_CLIPS:] = rng.normal(size=(3, extra, config.vid_feat_size))
    got = model.apply(variables, wide, train=False)
    for key in ("frame_similarity", "anchor_similarity"):
        np.testing.assert_allclose(got[key], out[key], atol=1e-5, err_msg=key)
    for key in ("frame_score_map", "score_map"):
        np.testing.assert_allclose(got[key][:, :NUM_CLIPS, :NUM_CLIPS], out[key], atol=1e-5)


# Ablations ----------------------------------------------------------------------------------


def _params_paths(params) -> set[str]:
    return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}


def test_without_anchor_free_branch_v_is_the_frame_embedding():
    # frame_context='graph' returns eq. 6's V itself ('segments' goes on with eq. 7)
    config = _config(anchor_free_branch=False, frame_context="graph")
    batch = _batch(config)
    model, variables = _init(config, batch)
    assert not any("graph_attention" in p for p in _params_paths(variables["params"]))
    enc, state = model.apply(variables, batch, method="encode_videos", mutable=["intermediates"])
    (e_v,) = state["intermediates"]["video_encoder"]["frame_embeddings"]
    mask = batch["video_mask"][..., None]
    np.testing.assert_allclose(enc["frames"], np.asarray(e_v) * mask, atol=1e-6)
    # With the branch on, V = E_v + Z differs on the clips that have subtitle words.
    _, _, full_model, full_vars = _shared()
    full, full_state = full_model.apply(
        full_vars, batch, method="encode_videos", mutable=["intermediates"]
    )
    (full_e_v,) = full_state["intermediates"]["video_encoder"]["frame_embeddings"]
    assert np.abs(np.asarray(full["frames"]) - np.asarray(full_e_v) * mask).max() > 1e-2


def test_without_anchor_branch_there_are_no_anchors():
    config = _config(anchor_branch=False)
    batch = _batch(config)
    model, variables = _init(config, batch)
    assert not any("anchor_semantics" in p for p in _params_paths(variables["params"]))
    out = model.apply(variables, batch, train=False)
    assert "anchor_similarity" not in out
    enc = model.apply(variables, batch, method="encode_videos")
    assert sorted(enc) == ["frames", "mask"]
    loss, parts = cascaded_mpn.loss_fn(out, batch, config)
    assert parts["loss_anchor_hinge"] == 0 and np.isfinite(loss)
    # The cascade still runs T levels of sparsity pooling on the (log) frame map.
    for i, n in enumerate(LENGTHS):
        cells = np.triu(np.ones((NUM_CLIPS,) * 2, bool)) & (np.arange(NUM_CLIPS)[None] < n)
        log_map = out["log_p_start"][i][:, None] + out["log_p_end"][i]
        log_map = np.where(cells, log_map, score_maps.LOG_MASKED)
        want = score_maps.cascade(log_map, None, n, num_levels=3, map_scale="log")
        np.testing.assert_allclose(out["score_map"][i], want, atol=1e-5)


def test_conditional_and_sparsity_flags():
    config, batch, _, variables = _shared()
    assert {"w_v", "w_q"} <= set(variables["params"]["score_map"])
    plain = _config(conditional=False)
    _, plain_vars = _init(plain, batch)
    assert not {"w_v", "w_q"} & set(plain_vars["params"]["score_map"])
    # Same weights, no sparsity pooling: the frame map is unchanged, M_T is Algorithm 1 with h
    # the identity.
    model = cascaded_mpn.create_model(_config(sparsity_pooling=False))
    out = model.apply(variables, batch, train=False)
    ref = cascaded_mpn.create_model(config).apply(variables, batch, train=False)
    np.testing.assert_allclose(out["frame_score_map"], ref["frame_score_map"], atol=1e-7)
    assert np.abs(np.asarray(out["score_map"] - ref["score_map"])).max() > 1e-4
    enc = model.apply(variables, batch, method="encode_videos")
    query = model.apply(variables, batch, method="encode_queries")["query"]
    params = _map_params(variables["params"])
    for i, n in enumerate(LENGTHS):
        anchors = [enc[f"anchors_{k}"][i] for k in (2, 4, 8)]
        want = score_maps.cascaded_score_map(
            enc["frames"][i],
            n,
            anchors,
            query[i],
            params,
            params,
            sparsity_pooling=False,
            map_scale="log",
        ).score_map
        np.testing.assert_allclose(out["score_map"][i], want, atol=1e-5)


@pytest.mark.parametrize("levels", [1, 5])
def test_num_levels_sets_the_anchor_segments(levels):
    config = _config(num_levels=levels, use_subtitles=False)
    model = cascaded_mpn.create_model(config)
    batch = _batch(config, lengths=(12, 12, 12))
    variables = model.init(jax.random.PRNGKey(0), batch, train=False)
    enc = model.apply(variables, batch, method="encode_videos")
    want = [f"anchors_{2**i}" for i in range(1, levels + 1)]
    assert sorted(k for k in enc if k.startswith("anchors")) == sorted(want)
    assert enc[want[-1]].shape == (3, 2**levels, config.hidden_size)
    out = model.apply(variables, batch, train=False)
    assert np.isfinite(np.asarray(out["score_map"])).all()


def test_bad_levels_and_missing_subtitles_are_named():
    batch = _batch(_config())
    for levels in (0, 6):
        with pytest.raises(ValueError, match="num_levels"):
            cascaded_mpn.create_model(_config(num_levels=levels)).init(
                jax.random.PRNGKey(0), batch, train=False
            )
    _, _, model, variables = _shared()
    del batch["subtitle_coverage"]
    with pytest.raises(KeyError, match="subtitle_coverage"):
        model.apply(variables, batch, train=False)


# Family record ------------------------------------------------------------------------------


def test_family_record():
    record = cascaded_mpn.FAMILY
    assert FAMILIES["cascaded_mpn"] is record
    assert dataclasses.replace(record) == record  # __post_init__ accepts it
    assert record.is_corpus and record.output == "corpus" and record.corpus is not None
    assert {"tiny", "tvr"} <= set(record.variants)
    tvr = record.variants["tvr"]
    assert (tvr["hidden_size"], tvr["n_heads"], tvr["num_levels"]) == (768, 8, 3)
    assert (tvr["video_loss_weight"], tvr["moment_loss_weight"], tvr["margin"]) == (8.0, 0.01, 0.1)
    with pytest.raises(ValueError, match="corpus"):
        dataclasses.replace(record, corpus=None)
    config = _config()
    example = record.example_batch(config, 2, 7)
    assert example["query_features"].shape == (2, 7, config.q_feat_size)
    assert example["subtitle_coverage"].shape == (2, config.max_ctx_l, config.max_subtitles)
    assert example["subtitle_word_sentence"].dtype == np.int32
    # Every sentence covers clips and owns tokens.
    assert example["subtitle_coverage"][0].any(axis=0).all()
    assert set(example["subtitle_word_sentence"][0]) == set(range(config.max_subtitles))
    no_subs = record.example_batch(_config(use_subtitles=False), 2, 7)
    assert not set(cascaded_mpn.SUBTITLE_KEYS) & set(no_subs)


def test_weight_decay_mask():
    _, _, _, variables = _shared()
    mask = cascaded_mpn.weight_decay_mask(variables["params"])
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert flat["['score_map']['w_v']"] and flat["['score_map']['start_kernel']"]
    assert not flat["['score_map']['start_bias']"] and not flat["['score_map']['end_bias']"]
    assert not flat["['query_input_proj']['dense']['bias']"]
    assert not flat["['query_input_proj']['LayerNorm']['scale']"]
    assert flat["['query_input_proj']['dense']['kernel']"]


# Corpus stages ------------------------------------------------------------------------------


def _split(batch):
    video_keys = ("video_features", "video_mask", *cascaded_mpn.SUBTITLE_KEYS)
    videos = {k: batch[k] for k in video_keys if k in batch}
    queries = {k: batch[k] for k in ("query_features", "query_mask")}
    return videos, queries


def test_stages_reproduce_the_training_path_and_the_direct_cascade():
    """map_scale='probability' (Algorithm 1 read literally): M_T and exp(20 s) * M_T."""
    config, batch, model, variables = _shared()
    config = dict(config, map_scale="probability")
    model = model.clone(map_scale="probability")
    stages = cascaded_mpn.FAMILY.corpus(model, config)
    assert (stages.top_videos, stages.retrieve_videos, stages.q2c_alpha) == (10, 100, 20.0)
    videos, queries = _split(batch)
    video_enc = stages.encode_videos(variables, videos)
    query_enc = stages.encode_queries(variables, queries)
    train_path = model.apply(variables, batch, train=False)
    scores = stages.score_videos(variables, query_enc, video_enc)
    np.testing.assert_allclose(scores, train_path["frame_similarity"], atol=1e-6)
    # Every query against every video: K = 3.
    tiled = jax.tree.map(lambda x: jnp.broadcast_to(x[None], (3, *x.shape)), video_enc)
    moments = stages.localize(variables, query_enc, tiled)
    start, end = map_cells(NUM_CLIPS)
    np.testing.assert_array_equal(moments.start, start)
    np.testing.assert_array_equal(moments.end, end)
    params = _map_params(variables["params"])
    for q in range(3):
        for k, n in enumerate(LENGTHS):
            anchors = [video_enc[f"anchors_{m}"][k] for m in (2, 4, 8)]
            direct = score_maps.cascaded_score_map(
                video_enc["frames"][k], n, anchors, query_enc["query"][q], params, params
            ).score_map
            direct = np.asarray(direct)
            best = np.unravel_index(np.argmax(direct), direct.shape)
            picked = np.where(moments.valid[q, k], moments.score[q, k], -np.inf)
            m = int(np.argmax(picked))
            assert (start[m], end[m]) == best, (q, k)
            np.testing.assert_allclose(moments.score[q, k], direct[start, end], atol=1e-6)
            assert moments.valid[q, k].sum() == n * (n + 1) // 2
            if q == k:
                np.testing.assert_allclose(direct, train_path["score_map"][q], atol=1e-6)
    combined = stages.combine(scores, moments)
    want = np.exp(20.0 * np.asarray(scores, np.float64))[..., None] * np.asarray(moments.score)
    np.testing.assert_allclose(combined, want, rtol=1e-5)
    np.testing.assert_array_equal(stages.video_rank_scores(scores), scores)
    # localize_map='frame': stage 2 ranks f_cond(V, E_q), the training path's first map.
    frame_stages = dataclasses.replace(stages, model=model.clone(localize_map="frame"))
    own = jax.tree.map(lambda x: x[:, None], video_enc)
    frame_moments = frame_stages.localize(variables, query_enc, own)
    want = np.asarray(train_path["frame_score_map"])[:, start, end]
    np.testing.assert_allclose(frame_moments.score[:, 0], want, atol=1e-7)
    bad = dataclasses.replace(stages, model=model.clone(localize_map="anchors"))
    with pytest.raises(ValueError, match="localize_map"):
        bad.localize(variables, query_enc, own)


def test_log_scale_stages_rank_log_maps_and_add_the_video_term():
    """map_scale='log': stage 2 returns log M_T (normalised over the video's cells) and
    log f_cond for 'frame'; combine is 20 s + log map, the log of exp(20 s) * map."""
    config, batch, model, variables = _shared()
    log_config = dict(config, map_scale="log")
    log_model = model.clone(map_scale="log")
    stages = cascaded_mpn.FAMILY.corpus(log_model, log_config)
    assert stages.log_scores
    videos, queries = _split(batch)
    video_enc = stages.encode_videos(variables, videos)
    query_enc = stages.encode_queries(variables, queries)
    own = jax.tree.map(lambda x: x[:, None], video_enc)
    moments = stages.localize(variables, query_enc, own)
    start, end = map_cells(NUM_CLIPS)
    params = _map_params(variables["params"])
    train_path = model.apply(variables, batch, train=False)
    for q, n in enumerate(LENGTHS):
        anchors = [video_enc[f"anchors_{m}"][q] for m in (2, 4, 8)]
        direct = score_maps.cascaded_score_map(
            video_enc["frames"][q],
            n,
            anchors,
            query_enc["query"][q],
            params,
            params,
            map_scale="log",
        ).score_map
        valid = np.asarray(moments.valid[q, 0])
        got = np.asarray(moments.score[q, 0])[valid]
        np.testing.assert_allclose(got, np.asarray(direct)[start, end][valid], atol=1e-5)
        np.testing.assert_allclose(np.exp(got).sum(), 1.0, rtol=1e-5)  # a distribution
        # 'frame' on the log scale: log(P_st P_ed) of the training path's map.
        frame_model = log_model.clone(localize_map="frame")
        frame = dataclasses.replace(stages, model=frame_model).localize(variables, query_enc, own)
        want = np.log(np.asarray(train_path["frame_score_map"], np.float64)[q, start, end][valid])
        np.testing.assert_allclose(np.asarray(frame.score[q, 0])[valid], want, atol=1e-4)
    scores = stages.score_videos(variables, query_enc, video_enc)[:, :1]
    combined = stages.combine(scores, moments)
    want = 20.0 * np.asarray(scores, np.float64)[..., None] + np.asarray(moments.score)
    np.testing.assert_allclose(combined, want, rtol=1e-6)


def test_corpus_search_matches_brute_force():
    """build_index + search on 5 videos (all localised): VR by the max frame cosine, VCMR's
    first moment = the best 20 s + log M_T cell over all videos (the default log scale),
    SVMR's = the own map's best."""
    config, _, model, variables = _shared()
    lengths = (12, 9, 5, 11, 7)
    corpus_batch = _batch(config, lengths=lengths[:3], seed=1)
    more = _batch(config, lengths=lengths[3:] + (12,), seed=2)
    videos, _ = _split({k: np.concatenate([corpus_batch[k], more[k][:2]]) for k in corpus_batch})
    _, queries = _split(_batch(config, seed=3))
    stages = dataclasses.replace(cascaded_mpn.FAMILY.corpus(model, config), top_videos=5)
    mesh = sharding.make_mesh({"shape": (1, 1)})
    index = corpus.build_index(
        stages,
        variables,
        lambda rows: {k: v[rows] for k, v in videos.items()},
        mesh,
        batch_size=4,
        num_videos=5,
    )
    gt = np.array([3, 0, 4])
    found = corpus.search(stages, variables, index, queries, gt_video=gt)
    enc = stages.encode_videos(variables, videos)
    query = np.asarray(stages.encode_queries(variables, queries)["query"], np.float64)
    frames = np.asarray(enc["frames"], np.float64)
    params = _map_params(variables["params"])
    for q in range(3):
        cos = [
            max(
                frames[v, t] @ query[q] / np.linalg.norm(frames[v, t]) / np.linalg.norm(query[q])
                for t in range(n)
            )
            for v, n in enumerate(lengths)
        ]
        np.testing.assert_array_equal(found["VR"].video_idx[q, :5], np.argsort(cos)[::-1])
        maps = [
            np.asarray(
                score_maps.cascaded_score_map(
                    enc["frames"][v],
                    n,
                    [enc[f"anchors_{m}"][v] for m in (2, 4, 8)],
                    jnp.asarray(query[q], jnp.float32),
                    params,
                    params,
                    map_scale="log",
                ).score_map,
                np.float64,
            )
            for v, n in enumerate(lengths)
        ]
        combined = np.stack([20 * c + mp for c, mp in zip(cos, maps)])
        v, i, j = np.unravel_index(np.argmax(combined), combined.shape)
        assert found["VCMR"].video_idx[q, 0] == v
        np.testing.assert_allclose(found["VCMR"].st_ed[q, 0], [i * 1.0, (j + 1) * 1.0])
        np.testing.assert_allclose(found["VCMR"].score[q, 0], combined[v, i, j], rtol=1e-4)
        own = maps[gt[q]]
        i, j = np.unravel_index(np.argmax(own), own.shape)
        assert found["SVMR"].video_idx[q, 0] == gt[q]
        np.testing.assert_allclose(found["SVMR"].st_ed[q, 0], [i * 1.0, (j + 1) * 1.0])


# Training -------------------------------------------------------------------------------------


def test_adamw_steps_lower_the_loss():
    config, batch, model, variables = _shared()
    tx = optax.adamw(1e-3, weight_decay=0.01, mask=cascaded_mpn.weight_decay_mask)

    def eval_loss(params):
        return cascaded_mpn.loss_fn(
            model.apply({"params": params}, batch, train=False), batch, config
        )[0]

    @jax.jit
    def step(params, opt_state, rng):
        def loss(p):
            out = model.apply({"params": p}, batch, train=True, rngs={"dropout": rng})
            return cascaded_mpn.loss_fn(out, batch, config)[0]

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params = variables["params"]
    opt_state = tx.init(params)
    before = float(jax.jit(eval_loss)(params))
    for i in range(8):
        params, opt_state = step(params, opt_state, jax.random.PRNGKey(i))
    after = float(jax.jit(eval_loss)(params))
    assert after < 0.8 * before, (before, after)


def test_anchor_moment_loss_by_hand():
    # Not the paper's (anchor_moment_loss_weight > 0): eq. 21 on f_cond(C^2, E_q).  Example 0:
    # 4 valid frames, segments [0, 0, 1, 1], labels (1, 3) -> (0, 1): -log 0.6 - log 0.7.
    # Example 1: 3 valid frames, segment of t = floor(2 t / 3): [0, 0, 1], labels (0, 2) ->
    # (0, 1): -log 0.5 - log 0.2.  Mean of the two.
    log = np.log
    outputs = {
        "anchor_log_p_start_2": jnp.asarray(log([[0.6, 0.4], [0.5, 0.5]]), jnp.float32),
        "anchor_log_p_end_2": jnp.asarray(
            log([[[0.3, 0.7], [1.0, 1.0]], [[0.8, 0.2], [1.0, 1.0]]]), jnp.float32
        ),
    }
    labels = jnp.array([[1, 3], [0, 2]], jnp.int32)
    video_mask = jnp.array([[1, 1, 1, 1], [1, 1, 1, 0]], jnp.float32)
    got = cascaded_mpn_loss.anchor_moment_loss(outputs, labels, video_mask, jnp.ones(2))
    want = (-log(0.6) - log(0.7) - log(0.5) - log(0.2)) / 2
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    # Through loss_fn on the model: the term appears only with a positive weight.
    config, batch, model, variables = _shared()
    out = model.apply(variables, batch, train=False)
    assert out["anchor_log_p_end_8"].shape == (3, 8, 8)
    _, parts = cascaded_mpn.loss_fn(out, batch, config)
    assert "loss_anchor_moment" not in parts
    weighted = dict(config, anchor_moment_loss_weight=0.5)
    loss, parts = cascaded_mpn.loss_fn(out, batch, ml_collections.ConfigDict(weighted))
    assert float(parts["loss_anchor_moment"]) > 0 and np.isfinite(float(loss))
