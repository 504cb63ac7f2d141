"""2D-TAN unit checks: proposal geometry, the MapConv re-weighting and the loss on probabilities
by hand, the proposal layers against a NumPy replay of the official placement, padding, and
learning on the synthetic benchmark."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from data_pipelines import synthetic
from vmr_jax import config_cli, trainer
from vmr_jax.evaluation import chance as chance_levels
from vmr_jax.models import tan2d
from vmr_jax.ops import moment_map

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")  # speed only

SYNTHETIC = str(Path(__file__).resolve().parents[2] / "configs" / "tan2d" / "synthetic.py")


def _config(**overrides):
    config = ml_collections.ConfigDict(dict(tan2d.VARIANTS["tiny"]))
    config.update(overrides)
    return config


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


# --------------------------------------------------------------------------- geometry
def test_proposal_layers_by_hand():
    # tiny, NUM_SCALE_LAYERS [8, 4] at N = 16: offsets 0..7 for every start, then the second
    # scale (stride 2) starts at 7 + 2 = 9: offsets 9, 11, 13, 15 for even starts.
    layers = tan2d.proposal_layers(16, (8, 4))
    assert [p.offset for p in layers] == [0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 15]
    assert [p.count for p in layers] == [16, 15, 14, 13, 12, 11, 10, 9, 4, 3, 2, 1]
    assert [(p.kernel, p.stride) for p in layers[:2]] == [(1, 1), (2, 1)]
    assert [(p.kernel, p.stride) for p in layers[8:10]] == [(3, 2), (2, 1)]
    assert sum(p.count for p in layers) == 110 == tan2d.proposal_mask(16, (8, 4)).sum()
    # TACoS [16, 8, 8, 8] at N = 128: each scale's first offset is 17, 35, 71 (the official
    # acum_layers), the last layer fills the single cell (0, 127).
    tacos = tan2d.proposal_layers(128, (16, 8, 8, 8))
    assert [tacos[k].offset for k in (16, 24, 32, 39)] == [17, 35, 71, 127]
    assert tacos[-1].count == 1 and tacos[-1].cell_stride == 8
    with pytest.raises(ValueError, match="needs more than 16 clips"):
        tan2d.proposal_layers(16, (16, 2))


def test_padded_mask_and_weight_by_hand():
    # Upper triangle of 3x3, kernel 3, padding 1: valid cells in each window counted by hand.
    mask = np.triu(np.ones((3, 3), np.float32))[None]
    new_mask, weight = tan2d.padded_mask_and_weight(mask, 3, 1, 1, 1)
    counts = np.array([[3, 5, 4], [3, 6, 5], [1, 3, 3]], np.float32)
    np.testing.assert_allclose(np.asarray(weight)[0], 1 / counts, rtol=1e-7)
    np.testing.assert_array_equal(np.asarray(new_mask)[0], np.ones((3, 3)))
    # 2x2 upper triangle, kernel 2, padding 1: the map grows to 3x3 and the window at (2, 0)
    # (cells (1, -1), (1, 0), (2, ...)) holds no valid cell: weight 0, mask 0 there.
    mask = np.triu(np.ones((2, 2), np.float32))[None]
    new_mask, weight = tan2d.padded_mask_and_weight(mask, 2, 1, 1, 1)
    want = np.array([[1, 1 / 2, 1], [1, 1 / 3, 1 / 2], [0, 1, 1]], np.float32)
    np.testing.assert_allclose(np.asarray(weight)[0], want, rtol=1e-7)
    np.testing.assert_array_equal(np.asarray(new_mask)[0], want > 0)


def test_charades_first_map_conv_weights_by_hand():
    # 16x16 upper triangle, 5x5 conv padded by 16: output (a, b) reads rows a-16..a-12 and
    # columns b-16..b-12.  (16, 16): the 5x5 upper triangle = 15 cells; (12, 12): only (0, 0);
    # (11, 11): nothing; (12, 27): row 0, columns 11..15 = 5 cells; (12, 43): nothing.
    mask = tan2d.proposal_mask(16, (16,)).astype(np.float32)[None]
    new_mask, weight = tan2d.padded_mask_and_weight(mask, 5, 1, 16, 1)
    assert weight.shape == (1, 44, 44)
    w = np.asarray(weight)[0]
    assert (w[16, 16], w[12, 12], w[11, 11], w[12, 27], w[12, 43]) == pytest.approx(
        (1 / 15, 1.0, 0.0, 1 / 5, 0.0)
    )
    assert np.asarray(new_mask)[0, 11, 11] == 0 and np.asarray(new_mask)[0, 16, 16] == 1


# --------------------------------------------------------------------------- loss
def test_binary_cross_entropy_by_hand_with_the_log_clamp():
    p = jnp.array([0.5, 0.8, 0.0, 1.0, 0.0])
    t = jnp.array([1.0, 0.25, 0.3, 0.6, 0.0])
    # ln 2; -(0.25 ln 0.8 + 0.75 ln 0.2); log 0 clamped: 0.3 * 100; 0.4 * 100; 0.
    want = [math.log(2), -(0.25 * math.log(0.8) + 0.75 * math.log(0.2)), 30.0, 40.0, 0.0]
    np.testing.assert_allclose(tan2d.binary_cross_entropy(p, t), want, rtol=1e-6)
    grad = jax.grad(lambda q: jnp.sum(tan2d.binary_cross_entropy(q, t)))(p)
    # PyTorch's backward: (p - t) / max(p (1 - p), 1e-12).
    want_grad = [-0.5 / 0.25, 0.55 / 0.16, -0.3 / 1e-12, 0.4 / 1e-12, 0.0]
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5)


def test_binary_cross_entropy_matches_pytorch():
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=200), [0.0, 1.0, 1e-30, 1 - 1e-7]]).astype(np.float32)
    t = rng.uniform(size=p.shape).astype(np.float32)
    tp = torch.tensor(p, requires_grad=True)
    want = torch.nn.functional.binary_cross_entropy(tp, torch.tensor(t), reduction="none")
    want.sum().backward()
    got = tan2d.binary_cross_entropy(jnp.asarray(p), jnp.asarray(t))
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda q: jnp.sum(tan2d.binary_cross_entropy(q, jnp.asarray(t))))(p)
    np.testing.assert_allclose(grad, tp.grad.numpy(), rtol=1e-5)


def test_loss_on_probabilities_by_hand():
    # N = 2, NUM_SCALE_LAYERS [2]: cells (0,0)=[0,1]s, (0,1)=[0,2]s, (1,1)=[1,2]s of a 2 s
    # video; GT [0, 1] -> IoU 1, 0.5, 0.  MIN/MAX 0.3/0.7, BIAS 0.1: targets
    # min(1, 0.7*0.9/0.4 + 0.1) = 1, 0.2*0.9/0.4 + 0.1 = 0.55, 0 (negative -> 0).
    config = ml_collections.ConfigDict(
        dict(num_clips=2, num_scale_layers=(2,), min_iou=0.3, max_iou=0.7, bias=0.1)
    )
    prediction = np.array([[[-200.0, math.log(4.0)], [5.0, 0.0]]] * 2, np.float32)
    batch = {
        "spans": np.array([[[0.0, 1.0]], [[0.0, 2.0]]], np.float32),
        "duration": np.array([2.0, 2.0], np.float32),
        "valid": np.array([1.0, 0.0], np.float32),  # the second example is padding
    }
    np.testing.assert_allclose(
        np.asarray(tan2d.iou_targets(config, batch))[0][np.triu_indices(2)], [1.0, 0.55, 0.0]
    )
    # p = sigmoid(-200) = 0 -> clamp: 100; p = 0.8, t = 0.55: -(0.55 ln 0.8 + 0.45 ln 0.2);
    # p = 0.5, t = 0: ln 2; the masked cell (1, 0) does not count.  Mean over the 3 cells.
    want = (100.0 - (0.55 * math.log(0.8) + 0.45 * math.log(0.2)) + math.log(2)) / 3
    loss, parts = tan2d.loss_fn({"prediction": jnp.asarray(prediction)}, batch, config)
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert float(parts["bce_rescale_loss"]) == float(loss)
    grad = jax.grad(lambda x: tan2d.loss_fn({"prediction": x}, batch, config)[0])(prediction)
    assert np.isfinite(np.asarray(grad)).all()
    assert np.all(np.asarray(grad)[1] == 0)  # the padding example gets no gradient


# --------------------------------------------------------------------------- model
def _forward(config, batch, seed=0):
    model = tan2d.create_model(config)
    variables = model.init(jax.random.PRNGKey(seed), batch, train=False)
    out, state = model.apply(variables, batch, train=False, mutable=["intermediates"])
    inter = {k: np.asarray(v[0]) for k, v in state["intermediates"].items()}
    return variables, out, inter


def _official_placement(config, values_per_layer):
    """NumPy replay of the official recover_to_original_map: [B, H] rows -> [B, N, N, H]."""
    n = config.num_clips
    b, _, h = values_per_layer[0].shape
    out = np.zeros((b, n, n, h), np.float32)
    acum, stride, k = 0, 1, 0
    for scale, num in enumerate(config.num_scale_layers):
        for i in range(num):
            stride *= 2 if (i == 0 and scale > 0) else 1
            starts = list(range(0, n - acum - i * stride, stride))
            ends = [s + acum + i * stride for s in starts]
            out[:, starts, ends] = values_per_layer[k][:, : len(starts)]
            k += 1
        acum += stride * (num + 1)
    return out


def test_sparse_prop_conv_matches_a_numpy_replay():
    config = _config()
    batch = _batch(config)
    variables, _, inter = _forward(config, batch)
    params = variables["params"]
    x = inter["frame_layer"]  # [B, N, H]
    outs = []
    for k, layer in enumerate(tan2d.proposal_layers(16, (8, 4))):
        w = np.asarray(params[f"prop_convs_{k}"]["kernel"])  # [k, in, out]
        length = (x.shape[1] - layer.kernel) // layer.stride + 1
        taps = [x[:, t : t + layer.stride * length : layer.stride] for t in range(layer.kernel)]
        x = sum(tap @ w[t] for t, tap in enumerate(taps)) + np.asarray(
            params[f"prop_convs_{k}"]["bias"]
        )
        outs.append(x)
    want = _official_placement(config, outs)
    np.testing.assert_allclose(inter["prop_map_h"], want, atol=1e-5)


def test_sparse_prop_maxpool_is_the_span_max():
    config = _config(prop="pool")
    batch = _batch(config)
    _, _, inter = _forward(config, batch)
    frame = inter["frame_layer"]
    mask = tan2d.proposal_mask(16, (8, 4))
    want = np.zeros(inter["prop_map_h"].shape, np.float32)
    for i, j in zip(*np.nonzero(mask)):
        want[:, i, j] = frame[:, i : j + 1].max(axis=1)
    np.testing.assert_array_equal(inter["prop_map_h"], want)


def test_prediction_is_masked_and_the_map_grows_then_shrinks():
    config = _config()
    batch = _batch(config)
    _, out, inter = _forward(config, batch)
    mask = tan2d.proposal_mask(16, (8, 4))
    np.testing.assert_array_equal(tan2d.create_model(config).cells(), mask)  # outside apply
    prediction = np.asarray(out["prediction"])
    assert prediction.shape == (3, 16, 16)
    assert np.all(prediction[:, ~mask] == 0) and np.all(prediction[:, mask] != 0)
    # 3x3 convs padded (3, 0, 0): 16 -> 20 -> 18 -> 16.
    assert [inter[f"map_conv_{k}"].shape[1] for k in range(3)] == [20, 18, 16]
    decoded = tan2d.decode(out, batch, config)
    assert decoded["num_clips"] == 16
    np.testing.assert_allclose(
        np.asarray(decoded["score_map"])[:, mask], 1 / (1 + np.exp(-prediction[:, mask])), rtol=1e-6
    )


def test_text_vector_is_the_last_real_word_and_an_empty_query_stays_finite():
    config = _config()
    batch = _batch(config)
    batch["query_mask"][2] = 0  # an eval padding row: no word at all
    _, out, inter = _forward(config, batch)
    model = tan2d.create_model(config)
    variables = model.init(jax.random.PRNGKey(0), batch, train=False)
    # Query 1 has 4 words: its vector depends on words 0..3 only.
    changed = dict(batch, query_features=batch["query_features"].copy())
    changed["query_features"][1, 4:] += 5.0
    a = model.apply(variables, batch, method="encode_query")
    b = model.apply(variables, changed, method="encode_query")
    np.testing.assert_array_equal(np.asarray(a)[1], np.asarray(b)[1])
    # The empty query reads slot L-1 (PyTorch's index -1), zero after the mask: the text vector
    # is tex_linear's bias.
    bias = np.asarray(variables["params"]["tex_linear"]["bias"])
    np.testing.assert_allclose(np.asarray(a)[2], bias, rtol=1e-6)
    assert np.isfinite(np.asarray(out["prediction"])).all()


def test_wrong_clip_count_is_a_clear_error():
    config = _config()
    batch = _batch(config)
    batch["video_features"] = batch["video_features"][:, :-1]
    with pytest.raises(ValueError, match="video_features has 31 clips"):
        tan2d.create_model(config).init(jax.random.PRNGKey(0), batch, train=False)


def test_token_input_uses_learned_embedding():
    config = _config(vocab_size=50)
    batch = _batch(config)
    batch["query_tokens"] = np.array([[3, 4, 5, 6, 0, 0]] * 3, np.int32)
    del batch["query_features"]
    variables = tan2d.create_model(config).init(jax.random.PRNGKey(0), batch, train=False)
    assert variables["params"]["word_embed"]["embedding"].shape == (50, config.word_dim)


# --------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_tan2d_learns_the_synthetic_benchmark_above_chance(tmp_path):
    """400 steps of the synthetic config (400 videos; about a minute on 2 cores): R@1 at
    IoU 0.5 / 0.7 above 2x / 3x the random-scoring chance of the same map (0.28 / 0.15 against
    0.11 / 0.03 on the 160 val queries)."""
    overrides = {
        "train.num_steps": 400,
        "train.log_every": 100,
        "train.checkpoint_every": 0,
        "train.progress_bar": False,
        "evals.every": 0,
        "data.synthetic.num_videos": 400,
    }
    config = config_cli.load_config(SYNTHETIC, [(k, str(v)) for k, v in overrides.items()])
    result = trainer.train_and_evaluate(config, str(tmp_path))
    metrics = result["eval_metrics"]
    spec = synthetic.spec_from_config(config.data.synthetic)
    records = synthetic.make_splits(spec, int(config.data.seed), ["val"])["val"]
    chance = chance_levels.chance_level(
        np.array([r.spans_s[0] for r in records]),
        np.array([r.duration_s for r in records]),
        config.model.num_clips,
        moment_map.pooling_counts_from_tan2d(config.model.num_scale_layers),
        config.evals.nms_thresh,
        (0.5, 0.7),
        (1, 5),
        num_draws=500,
    )
    assert metrics["num_queries"] == len(records)
    assert metrics["R@1,IoU=0.5"] > 2 * chance["R@1,IoU=0.5"], (metrics, chance)
    assert metrics["R@1,IoU=0.7"] > 3 * chance["R@1,IoU=0.7"], (metrics, chance)
    assert metrics["R@5,IoU=0.7"] > chance["R@5,IoU=0.7"] + 0.1, (metrics, chance)


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize("dataset", ["charades", "tacos", "activitynet"])
@pytest.mark.parametrize("arg", ["", "conv", "pool", "pool,runlocal", "runlocal,conv"])
def test_dataset_configs_pick_the_yaml_variant(dataset, arg):
    path = Path(SYNTHETIC).with_name(f"{dataset}.py")
    config = config_cli.load_config(f"{path}:{arg}")
    prop = "pool" if "pool" in arg else "conv"
    for key, value in tan2d.VARIANTS[f"{dataset}_{prop}"].items():
        assert config.model[key] == value, key
    assert config.data.num_input_clips == 256  # NUM_SAMPLE_CLIPS of every 2D-TAN YAML
    assert (config.train.lr, config.train.grad_clip_norm) == (1e-4, 10.0)
    assert (config.train.num_steps > 0) == ("runlocal" in arg)


def test_dataset_config_rejects_an_unknown_arg():
    with pytest.raises(ValueError, match=r"tacos.py: unknown config arguments \['max'\]"):
        config_cli.load_config(f"{Path(SYNTHETIC).with_name('tacos.py')}:max")
