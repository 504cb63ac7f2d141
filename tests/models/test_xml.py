"""XML unit checks: shapes and masks, the label rule, TEF and normalisation, the ranking loss
and its schedules on hand-computed examples, negative draws, the corpus methods against the
training forward, jit of loss and gradient, and learning on a tiny model."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vmr_jax.models import xml

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")


def _config(**overrides):
    config = ml_collections.ConfigDict(dict(xml.VARIANTS["tiny"], name="xml"))
    config.update(overrides)
    return config


def _batch(config, lengths=(12, 9, 7), num_clips=12, query_lens=(5, 3, 6), seed=0):
    rng = np.random.default_rng(seed)
    b = len(lengths)
    video_mask = (np.arange(num_clips)[None] < np.array(lengths)[:, None]).astype(np.float32)
    lq = max(query_lens)
    query_mask = (np.arange(lq)[None] < np.array(query_lens)[:, None]).astype(np.float32)
    batch = {
        "query_features": rng.normal(size=(b, lq, config.q_feat_size)).astype(np.float32),
        "query_mask": query_mask,
        "video_mask": video_mask,
        "spans": np.array([[[1.2, 5.5]], [[0.0, 3.0]], [[2.5, 6.9]]][:b], np.float32),
        "span_mask": np.ones((b, 1), np.float32),
        "duration": np.array(lengths, np.float32) * config.clip_length,
        "valid": np.ones(b, np.float32),
    }
    batch["query_features"] *= query_mask[..., None]
    if "video" in config.ctx_mode:
        feat = rng.normal(size=(b, num_clips, config.vid_feat_size)).astype(np.float32)
        batch["video_features"] = feat * video_mask[..., None]
    if "sub" in config.ctx_mode:
        feat = rng.normal(size=(b, num_clips, config.sub_feat_size)).astype(np.float32)
        batch["subtitle_features"] = feat * video_mask[..., None]
    return batch


def _init(config, batch, seed=0):
    model = xml.create_model(config)
    return model, model.init(jax.random.PRNGKey(seed), batch, train=False)


@functools.cache
def _shared():
    """The tiny model and batch most tests use (one set of shapes, so each op compiles once)."""
    config = _config()
    batch = _batch(config)
    model, variables = _init(config, batch)
    return config, batch, model, variables


# Ops --------------------------------------------------------------------------------------------


def test_st_ed_labels_by_hand():
    # floor(3.2 / 1.5) = 2, ceil(7.6 / 1.5) = ceil(5.07) = 6 (the official docstring's example);
    # [4.5, 9.0] sits on clip edges: 3 and 6; [10, 20] in a 5-clip video is capped at 4, 4.
    spans = jnp.array([[3.2, 7.6], [4.5, 9.0], [10.0, 20.0]])
    mask = jnp.array([[1.0] * 8, [1.0] * 8, [1.0] * 5 + [0.0] * 3])
    labels = xml.st_ed_labels(spans, mask, 1.5)
    np.testing.assert_array_equal(labels, [[2, 6], [3, 6], [4, 4]])


def test_st_ed_labels_equal_the_float64_rule_on_every_two_decimal_timestamp():
    """TVR timestamps have two decimals; float32 gives the float64 floor/ceil on all of them."""
    decimals = np.round(np.arange(0, 150, 0.01), 2)
    spans = jnp.asarray(np.stack([decimals, decimals], -1), jnp.float32)
    labels = np.asarray(xml.st_ed_labels(spans, jnp.ones((len(decimals), 200)), 1.5))
    np.testing.assert_array_equal(labels[:, 0], np.floor(decimals / 1.5))
    np.testing.assert_array_equal(labels[:, 1], np.ceil(decimals / 1.5))


def test_temporal_endpoint_features_by_hand():
    mask = jnp.array([[1.0, 1, 1, 1], [1, 1, 1, 0]])
    tef = np.asarray(xml.temporal_endpoint_features(mask))
    third = np.float32(1) / np.float32(3)
    want = np.array(
        [
            [[0, 0.25], [0.25, 0.5], [0.5, 0.75], [0.75, 1.0]],
            [[0, third], [third, 2 * third], [2 * third, 3 * third], [0, 0]],
        ],
        np.float32,
    )
    np.testing.assert_array_equal(tef, want)


def test_l2_normalize_features_by_hand():
    x = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(
        xml.l2_normalize_features(x), [[3 / 5.00001, 4 / 5.00001], [0, 0]], rtol=1e-6
    )


# Forward ----------------------------------------------------------------------------------------


def test_shapes_masks_and_padded_clips():
    config, batch, _, variables = _shared()
    model = xml.create_model(_config(drop=0.0, input_drop=0.0))
    out = model.apply(variables, batch, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    assert out["video_scores"].shape == (3, 3)
    assert out["st_logits"].shape == out["ed_logits"].shape == (3, 12)
    assert out["neg_draws"].shape == out["hard_neg_draws"].shape == (2, 3)
    assert out["neg_draws"].dtype == jnp.int32
    padded = batch["video_mask"] == 0
    assert np.all(np.asarray(out["st_logits"])[padded] == -1e10)
    assert np.all(np.asarray(out["ed_logits"])[padded] == -1e10)
    assert np.all(np.abs(np.asarray(out["st_logits"])[~padded]) < 1e3)
    assert np.all(np.abs(np.asarray(out["video_scores"])) <= 1 + 1e-6)  # cosines


def test_dropout_is_active_in_train_mode_only():
    config, batch, model, variables = _shared()
    evals = [model.apply(variables, batch, train=False)["st_logits"] for _ in range(2)]
    np.testing.assert_array_equal(evals[0], evals[1])
    train = [
        model.apply(variables, batch, train=True, rngs={"dropout": jax.random.PRNGKey(k)})
        for k in (0, 0, 1)
    ]
    np.testing.assert_array_equal(train[0]["video_scores"], train[1]["video_scores"])
    assert not np.allclose(train[0]["video_scores"], train[2]["video_scores"])
    assert not np.allclose(
        train[0]["video_scores"], model.apply(variables, batch, train=False)["video_scores"]
    )


def test_batch_of_one_initialises_and_has_no_ranking_terms():
    """Initialisation and a train-mode loss trace with one example; the loss of a single
    example has no ranking terms (no negative exists)."""
    config = _config()
    batch = _batch(config, lengths=(12,), query_lens=(5,))
    model = xml.create_model(config)
    variables = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.PRNGKey(0), batch
    )
    assert variables["params"]["merged_st_predictor"]["kernel"].shape == (5, 1, 1)

    def train_loss(variables):
        out = model.apply(variables, batch, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
        return xml.loss_fn(out, batch, config)

    loss, parts = jax.eval_shape(train_loss, variables)
    assert loss.shape == () and set(parts) == {"loss_st_ed", "loss_neg_ctx", "loss_neg_q"}
    outputs = {
        "video_scores": jnp.array([[0.3]]),
        "st_logits": jnp.zeros((1, 4)),
        "ed_logits": jnp.zeros((1, 4)),
        "neg_draws": jnp.ones((2, 1), jnp.int32),
        "hard_neg_draws": jnp.ones((2, 1), jnp.int32),
    }
    one = {"spans": jnp.array([[[0.0, 2.0]]]), "video_mask": jnp.ones((1, 4))}
    loss, parts = xml.loss_fn(outputs, one, config)
    assert float(parts["loss_neg_ctx"]) == 0.0 and float(parts["loss_neg_q"]) == 0.0
    np.testing.assert_allclose(loss, 0.01 * 2 * math.log(4), rtol=1e-6)


def test_input_normalisation_flags_follow_the_official_dataset():
    """Query tokens and subtitles normalised (no_norm_tfeat=False), video not
    (no_norm_vfeat=True): same outputs as feeding x / (||x|| + 1e-5) with the flags off."""
    config, batch, model, variables = _shared()
    out = model.apply(variables, batch, train=False)

    def normalise(x):
        return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-5)

    manual = dict(batch)
    manual["query_features"] = normalise(batch["query_features"])
    manual["subtitle_features"] = normalise(batch["subtitle_features"])
    off = _config(no_norm_tfeat=True, no_norm_vfeat=True)
    out_manual = xml.create_model(off).apply(variables, manual, train=False)
    for key in out:
        np.testing.assert_allclose(out[key], out_manual[key], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "overrides, present, absent",
    [
        (
            dict(ctx_mode="video_tef"),
            ["video_encoder3", "video_st_predictor"],
            ["sub_input_proj", "merged_st_predictor", "video_cross_att"],
        ),
        (
            dict(ctx_mode="sub"),
            ["sub_encoder3", "sub_ed_predictor"],
            ["video_input_proj", "merged_ed_predictor"],
        ),
        (
            dict(cross_att=False, merge_two_stream=False),
            ["video_encoder3", "sub_encoder3", "video_st_predictor", "sub_st_predictor"],
            ["video_cross_att", "merged_st_predictor"],
        ),
    ],
)
def test_ctx_modes_build_the_official_modules(overrides, present, absent):
    config = _config(**overrides)
    _, batch, _, _ = _shared()
    model, variables = _init(config, batch)
    params = variables["params"]
    for name in present:
        assert name in params, name
    for name in absent:
        assert name not in params, name
    n_streams = len(model.streams)
    assert params["modular_vector_mapping"]["kernel"].shape == (config.hidden_size, n_streams)
    out = model.apply(variables, batch, train=False)
    assert out["st_logits"].shape == (3, 12)
    assert np.all(np.asarray(out["st_logits"])[batch["video_mask"] == 0] == -1e10)


def test_no_modular_uses_the_masked_max_over_words():
    _, batch, _, variables = _shared()
    model = xml.create_model(_config(no_modular=True))
    _, state = model.apply(
        variables, batch, train=False, capture_intermediates=True, mutable=["intermediates"]
    )
    inter = state["intermediates"]
    words = np.asarray(inter["query_encoder"]["__call__"][0])  # [B, Lq, H]
    mask = batch["query_mask"][..., None] > 0
    want = np.where(mask, words, -np.inf).max(axis=1)
    np.testing.assert_allclose(inter["video_query"][0], want, atol=1e-6)
    np.testing.assert_allclose(inter["sub_query"][0], want, atol=1e-6)


def test_clear_errors():
    _, batch, _, variables = _shared()
    with pytest.raises(ValueError, match="position table has 10"):
        xml.create_model(_config(max_ctx_l=10)).apply(variables, batch, train=False)
    missing = dict(batch)
    del missing["subtitle_features"]
    with pytest.raises(KeyError, match="subtitle_features"):
        xml.create_model(_config()).apply(variables, missing, train=False)
    with pytest.raises(ValueError, match="ctx_mode 'tef'"):
        xml.create_model(_config(ctx_mode="tef")).apply(variables, batch, train=False)


# Corpus methods ---------------------------------------------------------------------------------


def test_corpus_methods_reproduce_the_training_forward():
    config, batch, model, variables = _shared()
    out = model.apply(variables, batch, train=False)
    queries = model.apply(variables, batch, method=xml.XML.encode_queries)
    videos = model.apply(variables, batch, method=xml.XML.encode_videos)
    assert set(queries) == {"video_query", "sub_query", "video_span_query", "sub_span_query"}
    assert set(videos) == {"video_feat1", "video_feat2", "sub_feat1", "sub_feat2", "mask"}
    assert videos["video_feat1"].shape == (3, 12, config.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(queries["sub_query"], axis=-1), 1, rtol=1e-5)
    scores = model.apply(variables, queries, videos, method=xml.XML.score_videos)
    np.testing.assert_allclose(scores, out["video_scores"], atol=1e-6)

    # Each query against K = 2 videos: its own and the next one.
    idx = np.array([[0, 1], [1, 2], [2, 0]])
    gathered = jax.tree_util.tree_map(lambda x: x[idx], videos)
    st, ed = model.apply(variables, queries, gathered, method=xml.XML.localize)
    assert st.shape == ed.shape == (3, 2, 12)
    np.testing.assert_allclose(st[:, 0], out["st_logits"], atol=1e-5)
    np.testing.assert_allclose(ed[:, 0], out["ed_logits"], atol=1e-5)
    assert np.all(np.asarray(st[:, 1])[batch["video_mask"][idx[:, 1]] == 0] == -1e10)

    # Scores by an independent route: cosine max over the valid clips in NumPy.
    def cos_max(q, f, m):
        sim = np.einsum("qd,vld->qvl", q, f)
        return np.where(m[None] > 0, sim, -np.inf).max(-1)

    mask = batch["video_mask"]
    want = (
        cos_max(queries["video_query"], videos["video_feat1"], mask)
        + cos_max(queries["sub_query"], videos["sub_feat1"], mask)
    ) / 2
    np.testing.assert_allclose(scores, want, atol=1e-6)


# Loss -------------------------------------------------------------------------------------------

SCORES = np.array([[0.5, 0.2, 0.7], [0.1, 0.6, 0.3], [0.4, 0.9, 0.8]], np.float32)


def _loss_inputs(config, neg_draws, hard_draws=None, valid=(1, 1, 1)):
    outputs = {
        "video_scores": jnp.asarray(SCORES),
        "st_logits": jnp.zeros((3, 4)),
        "ed_logits": jnp.zeros((3, 4)),
        "neg_draws": jnp.asarray(neg_draws, jnp.int32),
        "hard_neg_draws": jnp.asarray(hard_draws if hard_draws is not None else neg_draws),
    }
    batch = {
        "spans": jnp.array([[[0.0, 1.0]], [[1.0, 3.0]], [[2.0, 5.0]]]),
        "video_mask": jnp.ones((3, 4)),
        "valid": jnp.asarray(valid, jnp.float32),
    }
    return outputs, batch


def test_hinge_ranking_loss_with_sampled_negatives_by_hand():
    # Rows with 999 on the diagonal sorted descending: [0, 2, 1], [1, 2, 0], [2, 1, 0].
    # Neg-video draws [1, 2, 1] pick 0.7, 0.1, 0.9 against positives 0.5, 0.6, 0.8:
    # hinge 0.3, 0, 0.2 -> 0.5 / 3.  Transposed rows sorted: [0, 2, 1], [1, 2, 0], [2, 0, 1];
    # neg-query draws [2, 1, 2] pick 0.1, 0.9, 0.3: hinge 0, 0.4, 0 -> 0.4 / 3.
    # Uniform span logits over 4 clips: CE = log 4 for start and end, times 0.01.
    config = _config(lw_st_ed=0.01, margin=0.1)
    outputs, batch = _loss_inputs(config, [[1, 2, 1], [2, 1, 2]])
    loss, parts = xml.loss_fn(outputs, batch, config)
    np.testing.assert_allclose(parts["loss_neg_ctx"], 0.5 / 3, rtol=1e-6)
    np.testing.assert_allclose(parts["loss_neg_q"], 0.4 / 3, rtol=1e-6)
    np.testing.assert_allclose(parts["loss_st_ed"], 0.01 * 2 * math.log(4), rtol=1e-6)
    np.testing.assert_allclose(loss, 0.9 / 3 + 0.02 * math.log(4), rtol=1e-6)

    # lse on the same picks: mean of log(1 + exp(neg - pos)).
    lse = _config(ranking_loss_type="lse", lw_neg_q=0.0)
    _, parts = xml.loss_fn(outputs, batch, lse)
    want = np.mean(np.log1p(np.exp(np.array([0.7 - 0.5, 0.1 - 0.6, 0.9 - 0.8]))))
    np.testing.assert_allclose(parts["loss_neg_ctx"], want, rtol=1e-6)
    assert float(parts["loss_neg_q"]) == 0.0


def test_padding_examples_are_neither_anchors_nor_negatives():
    # valid = [1, 1, 0], margin 0.5: rows [999, 0.2, -inf], [0.1, 999, -inf] give negatives
    # 0.2 and 0.1 (hinge 0.2 and 0.0, mean 0.1); columns [999, 0.1, -inf], [0.2, 999, -inf]
    # give 0.1 and 0.2 (hinge 0.1 and 0.1, mean 0.1).
    config = _config(margin=0.5, lw_st_ed=0.0)
    outputs, batch = _loss_inputs(config, [[1, 1, 1], [1, 1, 1]], valid=(1, 1, 0))
    _, parts = xml.loss_fn(outputs, batch, config)
    np.testing.assert_allclose(parts["loss_neg_ctx"], 0.1, rtol=1e-6)
    np.testing.assert_allclose(parts["loss_neg_q"], 0.1, rtol=1e-6)
    # Equal to the loss of the two-example batch alone.
    small_out = {k: v[:2, :2] if k == "video_scores" else v[:2] for k, v in outputs.items()}
    small_out["neg_draws"] = small_out["hard_neg_draws"] = jnp.ones((2, 2), jnp.int32)
    small_batch = {k: v[:2] for k, v in batch.items()}
    full, _ = xml.loss_fn(outputs, batch, _config(margin=0.5))
    small, _ = xml.loss_fn(small_out, small_batch, _config(margin=0.5))
    np.testing.assert_allclose(full, small, rtol=1e-6)


def test_schedules_follow_the_epoch():
    """Span term from train_span_start_epoch on, hard draws from hard_negative_start_epoch on
    (hard draws [2, 2, 2] pick 0.2, 0.1, 0.4: all hinge terms 0)."""
    config = _config(train_span_start_epoch=2, hard_negative_start_epoch=1, lw_neg_q=0.0)
    outputs, batch = _loss_inputs(config, [[1, 2, 1], [2, 1, 2]], hard_draws=[[2, 2, 2]] * 2)
    step_loss = jax.jit(
        lambda step: xml.loss_fn(outputs, batch, config, step=step, steps_per_epoch=3)[1]
    )
    epoch0 = step_loss(jnp.int32(2))
    epoch1 = step_loss(jnp.int32(5))
    epoch2 = step_loss(jnp.int32(6))
    np.testing.assert_allclose(epoch0["loss_neg_ctx"], 0.5 / 3, rtol=1e-6)
    assert float(epoch0["loss_st_ed"]) == 0.0
    assert float(epoch1["loss_neg_ctx"]) == 0.0 and float(epoch1["loss_st_ed"]) == 0.0
    np.testing.assert_allclose(epoch2["loss_st_ed"], 0.02 * math.log(4), rtol=1e-6)
    # step None = epoch 0; -1 disables a schedule.
    _, parts = xml.loss_fn(outputs, batch, config)
    assert float(parts["loss_st_ed"]) == 0.0
    off = _config(train_span_start_epoch=-1, hard_negative_start_epoch=-1, lw_neg_q=0.0)
    _, parts = xml.loss_fn(outputs, batch, off, step=100, steps_per_epoch=1)
    assert float(parts["loss_st_ed"]) == 0.0
    np.testing.assert_allclose(parts["loss_neg_ctx"], 0.5 / 3, rtol=1e-6)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        xml.loss_fn(outputs, batch, config, step=3)


def test_negative_draws_stay_in_the_sampling_pool():
    config, batch, _, variables = _shared()
    model = xml.create_model(_config(drop=0.0, input_drop=0.0, hard_pool_size=1))
    apply = jax.jit(functools.partial(model.apply, train=True))
    plain, hard = [], []
    for seed in range(20):
        out = apply(variables, batch, rngs={"dropout": jax.random.PRNGKey(seed)})
        plain.append(np.asarray(out["neg_draws"]))
        hard.append(np.asarray(out["hard_neg_draws"]))
    assert set(np.unique(plain)) == {1, 2}  # [1, B)
    assert set(np.unique(hard)) == {1}  # [1, 1 + hard_pool_size)
    short = dict(batch, valid=np.array([1, 1, 0], np.float32))
    for seed in range(5):
        out = apply(variables, short, rngs={"dropout": jax.random.PRNGKey(seed)})
        assert set(np.unique(out["neg_draws"])) == {1}  # [1, number of valid examples)


def test_loss_and_gradient_jit_and_training_lowers_the_loss():
    _, batch, _, variables = _shared()
    config = _config(drop=0.0, input_drop=0.0)
    model = xml.create_model(config)
    tx = optax.adam(3e-3)

    def loss(params, rng, batch):
        out = model.apply({"params": params}, batch, train=True, rngs={"dropout": rng})
        return xml.loss_fn(out, batch, config)[0]

    @jax.jit
    def step(params, opt_state, rng, batch):
        value, grads = jax.value_and_grad(loss)(params, rng, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, grads

    params = variables["params"]
    opt_state = tx.init(params)
    values = []
    for i in range(30):
        params, opt_state, value, grads = step(params, opt_state, jax.random.PRNGKey(i), batch)
        values.append(float(value))
        if i == 0:
            norms = jax.tree_util.tree_map(lambda g: float(jnp.abs(g).sum()), grads)
            assert all(np.isfinite(n) for n in jax.tree_util.tree_leaves(norms))
            assert norms["merged_st_predictor"]["kernel"] > 0
            assert norms["video_encoder1"]["attention"]["query"]["kernel"] > 0
    assert np.mean(values[-5:]) < 0.7 * np.mean(values[:5]), values

    # An eval-padding row (no clips, no words, valid 0): finite loss and gradients.
    padded = {k: np.array(v) for k, v in batch.items()}
    for key in ("video_mask", "query_mask", "video_features", "subtitle_features", "valid"):
        padded[key][2] = 0
    _, _, value, grads = step(params, opt_state, jax.random.PRNGKey(0), padded)
    assert np.isfinite(float(value))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))


def test_eval_padding_rows_do_not_change_the_loss():
    """Rows with valid 0 are no anchors and no negatives: replacing their inputs leaves the
    loss unchanged (negatives are then drawn from the two valid rows only)."""
    config, batch, _, variables = _shared()
    model = xml.create_model(_config(drop=0.0, input_drop=0.0))
    rng = np.random.default_rng(5)
    losses = []
    for scale in (1.0, 3.0):
        b = {k: np.array(v) for k, v in batch.items()}
        b["valid"][2] = 0
        b["video_features"][2] = scale * rng.normal(size=b["video_features"][2].shape)
        b["query_features"][2] = scale * rng.normal(size=b["query_features"][2].shape)
        out = model.apply(variables, b, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
        losses.append(xml.loss_fn(out, b, config)[1])
    for name in losses[0]:
        np.testing.assert_allclose(losses[0][name], losses[1][name], rtol=1e-6, err_msg=name)
    assert float(losses[0]["loss_neg_ctx"]) > 0
