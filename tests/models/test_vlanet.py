"""VLANet: the forward pass against a float64 NumPy implementation that materialises ``V`` and
``Q`` at every attention step (no log-scale shortcut), the DiDeMo proposal geometry, the loss
and the decoding by hand, and where gradients flow."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vmr_jax.evaluation import chance
from vmr_jax.models import vlanet

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")  # speed only

# Small grid: 6 groups every 4 s, windows of 8 and 16 s; 1-s clips, 36 of them.
SMALL = dict(max_groups=6, proposal_windows=(8.0, 16.0), embed_dim=48, attention_dim=24)
# video 0: full grid; 1: shorter than the grid, padded clips; 2: shorter than the smallest
# window (single-proposal fallback); 3: 30 s of duration but only 16 real clips (proposals
# over padded clips only are no candidates).
DURATIONS = (36.0, 22.5, 5.0, 30.0)
REAL_CLIPS = (36, 23, 5, 16)
QUERY_LENGTHS = (10, 7, 3, 1)


def _config(**overrides):
    return ml_collections.ConfigDict(dict(vlanet.VARIANTS["tiny"], **dict(SMALL, **overrides)))


def _batch(config, seed=0, durations=DURATIONS, real_clips=REAL_CLIPS, lengths=QUERY_LENGTHS):
    rng = np.random.default_rng(seed)
    b = len(durations)
    batch = vlanet.example_batch(config, b, max(lengths))
    t = batch["video_features"].shape[1]
    if float(config.clip_seconds) == 0:  # resampled clips: every clip is real
        real_clips = (t,) * b
    video_mask = (np.arange(t)[None] < np.array(real_clips)[:, None]).astype(np.float32)
    query_mask = (np.arange(max(lengths))[None] < np.array(lengths)[:, None]).astype(np.float32)
    batch["video_features"] = (
        rng.normal(size=batch["video_features"].shape) * video_mask[..., None]
    ).astype(np.float32)
    batch["query_features"] = (
        rng.normal(size=batch["query_features"].shape) * query_mask[..., None]
    ).astype(np.float32)
    batch["video_mask"] = video_mask
    batch["query_mask"] = query_mask
    batch["duration"] = np.array(durations, np.float32)
    return batch


def _np(tree):
    """NumPy copies, floats in float64 (integer leaves keep their dtype)."""

    def convert(v):
        v = np.asarray(v)
        return v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v

    return jax.tree_util.tree_map(convert, tree)


def _random_params(model, batch, seed, bias_scale=0.1):
    """Random variables with the model's tree (from ``jax.eval_shape``, so no compiled init):
    kernels ``N(0, 1 / fan_in)`` like the default init, GRU weights uniform in
    ``+-1 / sqrt(H)``, biases ``N(0, bias_scale^2)`` (0: exactly zero, as at init)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda b: model.init(jax.random.PRNGKey(0), b, train=False), batch)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "gru" in name:
            bound = 1.0 / math.sqrt(model.gru_hidden)
            value = rng.uniform(-bound, bound, leaf.shape)
        elif leaf.ndim == 2:
            value = rng.normal(size=leaf.shape) / math.sqrt(leaf.shape[0])
        else:
            value = rng.normal(size=leaf.shape) * bias_scale
        return value.astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


# --------------------------------------------------------------------------- NumPy reference
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _gru(p, x):
    """PyTorch GRU over the real words ``x [n, d]`` (vmr_jax/layers/recurrent.py docstring)."""
    hidden = p["w_hh"].shape[0]
    h = np.zeros(hidden)
    states = []
    for x_t in x:
        gi = x_t @ p["w_ih"] + p["b_ih"]
        gh = h @ p["w_hh"] + p["b_hh"]
        r = _sigmoid(gi[:hidden] + gh[:hidden])
        z = _sigmoid(gi[hidden : 2 * hidden] + gh[hidden : 2 * hidden])
        n = np.tanh(gi[2 * hidden :] + r * gh[2 * hidden :])
        h = (1.0 - z) * n + z * h
        states.append(h)
    return np.stack(states)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _energy(x, y, unit):
    """Eq. 7 for every row of ``x``: ``sum_m tanh((x_n W1) . (y_m W2))``."""
    return np.tanh((x @ unit["w1"]["kernel"]) @ (y @ unit["w2"]["kernel"]).T).sum(axis=1)


def _attend(x, y, unit, scale):
    """Eq. 8, rows of ``x`` multiplied by their softmax weight (times N for 'relative')."""
    e = _energy(x, y, unit)
    a = np.exp(e - e.max())
    a = a / a.sum()
    factor = a * len(x) if scale == "relative" else a
    return factor[:, None] * x


def _queries(params, batch):
    """Eq. 1 per query: unit rows of the real words and w_M."""
    out = []
    for words, mask in zip(batch["query_features"], batch["query_mask"]):
        n = int(mask.sum())
        states = _gru(params["gru"], np.asarray(words[:n], np.float64))
        q = _unit(states @ params["query_fc"]["kernel"] + params["query_fc"]["bias"])
        out.append(q)
    return out


def _proposals(config, duration, num_clips, real_clips):
    """Eq. 2 geometry for one video: ``times [K, L, 2]`` and the real clips of each proposal
    (a list per proposal; empty for non-candidates), written from the module docstring."""
    k_num, windows = int(config.max_groups), [float(w) for w in config.proposal_windows]
    stride, clip_s = float(config.proposal_stride), float(config.clip_seconds)
    clip_len = clip_s if clip_s > 0 else duration / num_clips
    times = np.zeros((k_num, len(windows), 2))
    clips = [[[] for _ in windows] for _ in range(k_num)]
    fits = np.zeros((k_num, len(windows)), bool)
    for k in range(k_num):
        for li, w in enumerate(windows):
            times[k, li] = (k * stride, k * stride + w)
            fits[k, li] = k * stride + w <= duration + 1e-3
    if not fits.any():  # shorter than the smallest window: [0, duration] only
        times[0, 0] = (0.0, duration)
        fits[0, 0] = True
    eps = 1e-6 * clip_len
    for k in range(k_num):
        for li in range(len(windows)):
            if not fits[k, li]:
                continue
            start, end = times[k, li]
            clips[k][li] = [
                c
                for c in range(real_clips)
                if c * clip_len < end - eps and (c + 1) * clip_len > start + eps
            ]
    return times, clips


def _videos(config, params, batch):
    """Per video: unit proposal features ``[K, L, D]`` (zeros at non-candidates), candidate
    mask ``[K, L]`` and times ``[K, L, 2]``."""
    out = []
    t = batch["video_features"].shape[1]
    for feats, mask, duration in zip(
        batch["video_features"], batch["video_mask"], batch["duration"]
    ):
        real = int(mask.sum())
        times, clips = _proposals(config, float(duration), t, real)
        k_num, l_num = times.shape[:2]
        cand = np.zeros((k_num, l_num), bool)
        p = np.zeros((k_num, l_num, int(config.embed_dim)))
        for k in range(k_num):
            for li in range(l_num):
                if clips[k][li]:
                    cand[k, li] = True
                    mean = np.asarray(feats[clips[k][li]], np.float64).mean(axis=0)
                    fc = mean @ params["video_fc"]["kernel"] + params["video_fc"]["bias"]
                    p[k, li] = _unit(fc)
        out.append({"p": p, "cand": cand, "times": times, "clips": clips})
    return out


def _pair(config, params, video, q):
    """Eqs. 3-13 for one video-query pair with explicit ``V`` and ``Q``: similarity ``c``,
    selected proposal indices (flat ``k * L + l``) and log row norms of the final ``V``."""
    scale = config.attention_scale
    k_num, l_num = video["cand"].shape
    flat_p, flat_c = video["p"].reshape(k_num * l_num, -1), video["cand"].reshape(-1)
    if config.surrogate:
        index = []
        for k in range(k_num):
            ls = [li for li in range(l_num) if video["cand"][k, li]]
            if ls:  # eqs. 3-5: largest cosine to w_M among the group's candidates
                cos = [video["p"][k, li] @ q[-1] for li in ls]
                index.append(k * l_num + ls[int(np.argmax(cos))])
    else:
        index = [i for i in range(k_num * l_num) if flat_c[i]]
    v = flat_p[index]
    if config.self_attention:
        v = _attend(v, v, params["v2v"], scale)
        q = _attend(q, q, params["q2q"], scale)
    for t in range(int(config.cross_attention_steps)):
        unit = params[f"cross_{t}"]
        if t % 2 == 0:
            v = _attend(v, q, unit, scale)
        else:
            q = _attend(q, v, unit, scale)
    c = _energy(v.sum(axis=0, keepdims=True), q, params["similarity"])[0]
    return c, np.array(index), np.log(np.linalg.norm(v, axis=1))


def _reference(config, params, batch):
    videos = _videos(config, params, batch)
    queries = _queries(params, batch)
    scores = np.array([[_pair(config, params, v, q)[0] for q in queries] for v in videos])
    positive = [_pair(config, params, v, q) for v, q in zip(videos, queries)]
    return videos, scores, positive


# --------------------------------------------------------------------------- forward parity
CASES = {
    "default": {},
    "no_surrogate": dict(surrogate=False),
    "no_self_attention": dict(self_attention=False),
    "cross_0": dict(cross_attention_steps=0),
    "cross_1": dict(cross_attention_steps=1),
    "cross_2": dict(cross_attention_steps=2),
    "softmax": dict(attention_scale="softmax"),
    "resampled_clips": dict(clip_seconds=0.0),
}


_FORWARD = {}


def _forward(case):
    """Config, batch, variables and training-mode outputs of a ``CASES`` entry (computed
    once per module: the decoding tests reuse them)."""
    if case not in _FORWARD:
        config = _config(**CASES[case])
        model = vlanet.create_model(config)
        batch = _batch(config)
        variables = _random_params(model, batch, 0)
        out = jax.jit(lambda v, b: model.apply(v, b, train=True))(variables, batch)
        _FORWARD[case] = config, batch, variables, _np(out)
    return _FORWARD[case]


@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_explicit_numpy_cascade(case):
    config, batch, variables, out = _forward(case)
    params = _np(variables["params"])
    videos, scores, positive = _reference(config, params, batch)
    b = len(videos)

    # float32 sums of M tanh terms: absolute rounding on the scale of the largest score.
    atol = 1e-6 * np.abs(scores).max()
    np.testing.assert_allclose(out["pair_scores"], scores, rtol=1e-5, atol=atol)
    np.testing.assert_allclose(out["score"], np.diag(scores), rtol=1e-5, atol=atol)
    for i, video in enumerate(videos):
        np.testing.assert_array_equal(out["candidates"][i], video["cand"].reshape(-1))
        np.testing.assert_allclose(out["times"][i], video["times"].reshape(-1, 2), atol=1e-5)
        c, index, log_norm = positive[i]
        real = out["element_mask"][i] > 0
        np.testing.assert_array_equal(out["element_index"][i][real], index)
        np.testing.assert_allclose(out["attention"][i][real], log_norm, rtol=1e-5, atol=1e-5)
    if case != "resampled_clips":
        # The geometry the batch was built to exercise.
        cand = out["candidates"].reshape(b, int(config.max_groups), -1)
        assert cand[0].all()  # 36 s: every proposal of the grid ends inside the video
        assert cand[2].sum() == 1 and cand[2, 0, 0]  # 5 s: the fallback only
        np.testing.assert_allclose(out["times"][2, 0], [0.0, 5.0])
        assert not cand[3, 4:].any()  # proposals from 16 s on see padded clips only
        np.testing.assert_array_equal(cand[1, :, 0], [1, 1, 1, 1, 0, 0])
        np.testing.assert_array_equal(cand[1, :, 1], [1, 1, 0, 0, 0, 0])

    if case != "softmax":  # (softmax: see the next test, at the tiny variant's sizes)
        assert 0.01 < np.median(np.abs(scores)) < 10, scores


def test_softmax_scale_is_tiny_on_the_tiny_variant():
    """The docstring's claim at the full tiny sizes (32 groups, 4 windows), by the NumPy
    cascade with initialisation-like parameters (zero biases): with the literal softmax, ``c``
    is orders of magnitude below the 'relative' one (the parity tests above cover both
    scales in the model)."""
    found = {}
    for scale in ("softmax", "relative"):
        config = ml_collections.ConfigDict(dict(vlanet.VARIANTS["tiny"], attention_scale=scale))
        model = vlanet.create_model(config)
        batch = _batch(config, 3, durations=(128.0, 60.0), real_clips=(128, 60), lengths=(9, 4))
        params = _np(_random_params(model, batch, 3, bias_scale=0.0)["params"])
        found[scale] = _reference(config, params, batch)[1]
    assert np.abs(found["softmax"]).max() < 1e-3, found["softmax"]
    assert 0.01 < np.median(np.abs(found["relative"])) < 10, found["relative"]


# --------------------------------------------------------------------------- DiDeMo geometry
def test_didemo_proposals_are_the_21_chunk_moments():
    config = ml_collections.ConfigDict(
        dict(vlanet.VARIANTS["didemo"], feature_dim=8, word_dim=8, gru_hidden=8, embed_dim=8)
    )
    config.attention_dim = 4
    times, fits = (np.asarray(a) for a in vlanet.proposal_times(jnp.array([30.0, 25.0]), config))
    all_moments = {(5.0 * s, 5.0 * (e + 1)) for s in range(6) for e in range(s, 6)}
    short_moments = {(5.0 * s, 5.0 * (e + 1)) for s in range(5) for e in range(s, 5)}
    assert len(all_moments) == 21 and len(short_moments) == 15

    def moment_set(t, mask):
        return {(float(a), float(b)) for a, b in t.reshape(-1, 2)[mask.reshape(-1) > 0]}

    assert fits[0].sum() == 21 and moment_set(times[0], fits[0]) == all_moments
    assert fits[1].sum() == 15 and moment_set(times[1], fits[1]) == short_moments

    model = vlanet.create_model(config)
    batch = _batch(config, 1, durations=(30.0, 25.0), real_clips=(6, 5), lengths=(4, 2))
    batch["video_features"] = batch["video_features"][:, :6]
    batch["video_mask"] = batch["video_mask"][:, :6]
    variables = _random_params(model, batch, 0)
    out = _np(jax.jit(lambda v, b: model.apply(v, b, train=False))(variables, batch))
    assert out["candidates"][0].sum() == 21
    assert moment_set(out["times"][0], out["candidates"][0]) == all_moments
    assert out["candidates"][1].sum() == 15
    assert moment_set(out["times"][1], out["candidates"][1]) == short_moments


def test_proposal_past_the_last_input_clip_is_no_candidate():
    """Docstring 2: a candidate overlaps at least one real clip.  20 one-second clips (all
    real) and a 30-s duration (features shorter than the video): group 5's ``[20, 28]`` ends
    inside the video but overlaps no input clip, so it is no candidate."""
    config = _config()
    duration = jnp.array([30.0])
    candidates = np.asarray(vlanet.proposal_candidates(duration, jnp.ones((1, 20)), config)[3])[0]
    _, clips = _proposals(config, 30.0, 20, 20)
    assert clips[5][0] == []  # no input clip under [20, 28]
    expected = np.array([[bool(c) for c in group] for group in clips])
    np.testing.assert_array_equal(candidates, expected)


# --------------------------------------------------------------------------- loss
# Video i (rows) with query j (columns).  Rows 0 and 1 are two queries of one video, row 3 is
# padding (its entries must not count, hence the large values).
PAIR_SCORES = np.array(
    [
        [0.9, 0.2, 0.6, 5.0],
        [0.1, 0.3, 0.5, 5.0],
        [0.7, -0.4, 0.8, 5.0],
        [9.0, 9.0, 9.0, 9.0],
    ],
    np.float32,
)
LOSS_BATCH = {
    "video_index": np.array([3, 3, 5, 0], np.int32),
    "valid": np.array([1, 1, 1, 0], np.float32),
}


def test_loss_by_hand():
    config = ml_collections.ConfigDict(dict(vlanet.VARIANTS["tiny"], margin=0.5))
    loss, parts = vlanet.loss_fn({"pair_scores": jnp.asarray(PAIR_SCORES)}, LOSS_BATCH, config)
    # Negatives: query 2 for videos 0 and 1, queries 0 and 1 for video 2.
    # video 0: max(0, .5 - .9 + .6) = .2; video 1: max(0, .5 - .3 + .5) = .7;
    # video 2: mean(max(0, .5 - .8 + .7), max(0, .5 - .8 - .4)) = mean(.4, 0) = .2.
    np.testing.assert_allclose(loss, (0.2 + 0.7 + 0.2) / 3, rtol=1e-6)
    np.testing.assert_allclose(parts["loss_query"], (0.2 + 0.7 + 0.2) / 3, rtol=1e-6)
    np.testing.assert_allclose(parts["score_positive"], (0.9 + 0.3 + 0.8) / 3, rtol=1e-6)
    np.testing.assert_allclose(parts["score_negative"], (0.6 + 0.5 + 0.7 - 0.4) / 4, rtol=1e-6)
    assert "loss_video" not in parts

    config.video_negatives = True
    loss, parts = vlanet.loss_fn({"pair_scores": jnp.asarray(PAIR_SCORES)}, LOSS_BATCH, config)
    # Negative videos: video 2 for queries 0 and 1, videos 0 and 1 for query 2.
    # query 0: max(0, .5 - .9 + .7) = .3; query 1: max(0, .5 - .3 - .4) = 0;
    # query 2: mean(max(0, .5 - .8 + .6), max(0, .5 - .8 + .5)) = mean(.3, .2) = .25.
    np.testing.assert_allclose(parts["loss_video"], (0.3 + 0.0 + 0.25) / 3, rtol=1e-6)
    np.testing.assert_allclose(loss, (0.2 + 0.7 + 0.2 + 0.3 + 0.0 + 0.25) / 3, rtol=1e-6)

    with pytest.raises(KeyError, match="video_index"):
        vlanet.loss_fn({"pair_scores": jnp.asarray(PAIR_SCORES)}, {"valid": np.ones(4)}, config)


# --------------------------------------------------------------------------- decoding
def test_proposal_scores_by_hand():
    # 3 groups x 2 windows; group 1 has no candidate (its element is masked).
    outputs = {
        "attention": jnp.array([[0.5, 0.0, -0.3]]),
        "element_index": jnp.array([[1, 2, 4]], jnp.int32),
        "element_mask": jnp.array([[1.0, 0.0, 1.0]]),
        "candidates": jnp.array([[1.0, 1.0, 0.0, 0.0, 1.0, 0.0]]),
        "cosine": jnp.array([[0.9, -0.2, 0.3, 0.4, 0.99, -1.0]]),
        "times": jnp.arange(12, dtype=jnp.float32).reshape(1, 6, 2),
    }
    decoded = vlanet.decode(outputs, {}, None)
    strength = math.exp(0.5) / (math.exp(0.5) + math.exp(-0.3))
    expected = [(1 + 0.9) / 2, 1 + strength, -np.inf, -np.inf, 1 + (1 - strength), -np.inf]
    np.testing.assert_allclose(decoded["moment_scores"][0], expected, rtol=1e-6)
    np.testing.assert_array_equal(decoded["moments"], outputs["times"])
    np.testing.assert_allclose(vlanet.proposal_scores(outputs)[0], expected, rtol=1e-6)
    assert min(expected[1], expected[4]) > expected[0]  # surrogates first, even at cos .9


@pytest.mark.parametrize("case", ["default", "no_surrogate"])
def test_decode_ranks_surrogates_first(case):
    config, batch, _, out = _forward(case)
    decoded = _np(vlanet.decode(out, batch, config))
    np.testing.assert_array_equal(decoded["moments"], out["times"])
    for i in range(len(batch["duration"])):
        scores = decoded["moment_scores"][i]
        real = out["element_mask"][i] > 0
        elements = out["element_index"][i][real].astype(int)
        is_element = np.zeros(scores.shape, bool)
        is_element[elements] = True
        cand = out["candidates"][i] > 0
        assert np.all(np.isneginf(scores[~cand]))
        lv = out["attention"][i][real]
        strength = np.exp(lv - lv.max()) / np.exp(lv - lv.max()).sum()
        np.testing.assert_allclose(scores[elements], 1 + strength, rtol=1e-5)
        others = cand & ~is_element
        np.testing.assert_allclose(
            scores[others], (1 + out["cosine"][i][others]) / 2, rtol=1e-5, atol=1e-6
        )
        if others.any():
            assert scores[elements].min() > scores[others].max()


# --------------------------------------------------------------------------- gradients
def test_video_gradient_flows_through_surrogates_only():
    # 3 groups every 8 s with windows 8 and 16 s over 32 one-second clips: when group 2
    # selects [16, 24], clips 24..31 belong to no surrogate.
    config = _config(max_groups=3, proposal_stride=8.0, proposal_windows=(8.0, 16.0))
    model = vlanet.create_model(config)
    durations = (32.0,) * 6
    batch = _batch(config, 7, durations=durations, real_clips=(32,) * 6, lengths=(5,) * 6)
    variables = _random_params(model, batch, 7)
    params = _np(variables["params"])
    videos = _videos(config, params, batch)
    queries = _queries(params, batch)

    def total(features):
        return model.apply(variables, dict(batch, video_features=features))["score"].sum()

    grad = np.asarray(jax.jit(jax.grad(total))(jnp.asarray(batch["video_features"])))
    uncovered_somewhere = False
    for i, (video, q) in enumerate(zip(videos, queries)):
        _, index, _ = _pair(config, params, video, q)
        covered = set()
        for flat in index:
            covered.update(video["clips"][flat // 2][flat % 2])
        norms = np.abs(grad[i]).sum(axis=-1)
        outside = [c for c in range(32) if c not in covered]
        uncovered_somewhere |= bool(outside)
        assert np.all(norms[outside] == 0.0), (i, outside, norms)
        assert np.all(norms[sorted(covered)] > 0.0), (i, norms)
    assert uncovered_somewhere  # the seed gives at least one video with such clips


def test_parameter_gradients_finite_with_padding():
    config = _config()
    model = vlanet.create_model(config)
    batch = _batch(config)
    # Zero biases, as at init: padded words and non-candidate proposals are all-zero rows
    # before the L2 norm.
    variables = _random_params(model, batch, 0, bias_scale=0.0)

    def loss(params):
        out = model.apply({"params": params}, batch, train=True)
        return vlanet.loss_fn(out, batch, config)[0] + out["score"].sum()

    grads = jax.jit(jax.grad(loss))(variables["params"])
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    for path, leaf in leaves:
        assert np.all(np.isfinite(np.asarray(leaf))), jax.tree_util.keystr(path)
    for name in ("gru", "query_fc", "video_fc", "similarity", "cross_0", "v2v", "q2q"):
        norm = sum(
            float(np.abs(np.asarray(g)).sum()) for g in jax.tree_util.tree_leaves(grads[name])
        )
        assert norm > 0, name


# --------------------------------------------------------------------------- random baseline
def test_random_proposal_baseline_by_hand():
    """Stride 2 s, windows 2 and 4 s, 3 groups, 1-s clips, 4 input clips.  Query A: a 6-s video
    cut to its first 4 clips, span [0, 4]: candidates [0,2] [0,4] [2,4] [2,6] ([4,6] overlaps no
    input clip, [4,8] ends past the video) with IoU 1/2, 1, 1/2, 1/3.  Query B: a 3-s video (3
    real clips), span [0, 3]: the single candidate [0,2], IoU 2/3.  Query C is padding."""
    config = ml_collections.ConfigDict(
        dict(proposal_stride=2.0, proposal_windows=(2.0, 4.0), max_groups=3, clip_seconds=1.0)
    )
    batch = {
        "duration": np.array([6.0, 3.0, 6.0], np.float32),
        "video_mask": np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]], np.float32),
        "spans": np.array([[[0.0, 4.0]], [[0.0, 3.0]], [[0.0, 4.0]]], np.float32),
        "valid": np.array([1.0, 1.0, 0.0], np.float32),
    }
    cand, times = vlanet.candidate_proposals(batch, config)
    assert cand.sum(1).tolist() == [4, 1, 4]
    assert {tuple(t) for t in times[0][cand[0]].tolist()} == {(0, 2), (0, 4), (2, 4), (2, 6)}
    got = chance.random_ranking_baseline(cand, times, batch)
    # IoU > 0.3: A 4/4, B 1/1; > 0.5: A 1/4, B 1/1; > 0.7: A 1/4, B 0/1.
    expected = {"R@1,IoU=0.3": 1.0, "R@1,IoU=0.5": (0.25 + 1.0) / 2, "R@1,IoU=0.7": 0.25 / 2}
    expected["mIoU"] = ((0.5 + 1.0 + 0.5 + 1 / 3) / 4 + 2 / 3) / 2
    assert got == pytest.approx(expected, abs=1e-12)
