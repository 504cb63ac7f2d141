"""XML parity with the official PyTorch code (jayleicn/TVRetrieval) on every xml_*.npz golden.

The model config comes from the sidecar JSON's ``config_values`` (so a golden of another XML
configuration needs no change here), the official ``weights/*`` go through the converter, and
the golden inputs (TEF columns stripped: the model builds them) run stage by stage:
every hooked module output, the modular queries, the per-stream and merged video scores, the
span logits, the losses with the recorded negative draws replayed, and the inference products
(4 queries x 4 videos scores, logits, softmax probabilities, exp scores) through the corpus
methods.  The golden inputs are already normalised by the official dataset, so the model's
input normalisation is off for the stage-by-stage comparison (checked separately).
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmr_jax.convert.xml import load_checkpoint, model_config_from_golden, params_from_state_dict
from vmr_jax.models import xml

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")

ATOL = 1e-4  # logits and un-normalised activations
ATOL_UNIT = 1e-5  # cosine scores, unit-norm vectors, attention logits of unit-scale inputs


@functools.lru_cache(maxsize=2)
def _load(path):
    meta = json.loads(path.with_suffix(".json").read_text())
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    config = model_config_from_golden(meta["config_values"])
    params = params_from_state_dict(load_checkpoint(path), config)
    return meta, arrays, config, params


def _batch(arrays, config, meta):
    """Golden inputs in the vmr_jax batch contract (TEF columns removed)."""
    tef = 2 if "tef" in config.ctx_mode else 0
    mask_key = "inputs/video_mask" if "video" in config.ctx_mode else "inputs/sub_mask"
    batch = {
        "query_features": arrays["inputs/query_feat"],
        "query_mask": arrays["inputs/query_mask"],
        "video_mask": arrays[mask_key],
        "spans": np.array([q["ts"] for q in meta["corpus"]["queries"]], np.float32)[:, None],
        "valid": np.ones(arrays["inputs/query_feat"].shape[0], np.float32),
    }
    if "video" in config.ctx_mode:
        feat = arrays["inputs/video_feat"]
        batch["video_features"] = feat[..., : feat.shape[-1] - tef]
    if "sub" in config.ctx_mode:
        feat = arrays["inputs/sub_feat"]
        batch["subtitle_features"] = feat[..., : feat.shape[-1] - tef]
    return batch


def _as_given(config):
    """The config with the input normalisation off (golden inputs are normalised already)."""
    config = config.copy_and_resolve_references()
    config.no_norm_vfeat = True
    config.no_norm_tfeat = True
    return config


@functools.lru_cache(maxsize=2)
def _train_forward(path):
    meta, arrays, config, params = _load(path)
    model = xml.create_model(_as_given(config))
    with jax.default_matmul_precision("highest"):
        outputs, state = model.apply(
            {"params": params},
            _batch(arrays, config, meta),
            train=False,
            capture_intermediates=True,
            mutable=["intermediates"],
        )
    return outputs, state["intermediates"]


def _epoch_of_golden(config_values) -> int:
    """The training epoch whose schedules the golden forward used."""
    if config_values.get("model_config", {}).get("use_hard_negative"):
        return int(config_values["opt"]["hard_negtiave_start_epoch"])
    return 0


def _module_output(inter, key):
    """``intermediate/<module>[@callN]`` -> our captured output in the golden layout."""
    name = key.removeprefix("intermediate/")
    call = 0
    if "@call" in name:
        name, n = name.split("@call")
        call = int(n)
    if name not in inter:
        return None
    value = np.asarray(inter[name]["__call__"][call])
    if name.endswith("_predictor"):  # Conv1d (N, 1, L) in PyTorch, ours [N, L, 1]
        value = value[..., 0][:, None, :]
    return value


def test_xml_matches_official_stage_by_stage(xml_golden):
    meta, arrays, config, params = _load(xml_golden)
    outputs, inter = _train_forward(xml_golden)
    streams = xml.create_model(config).streams
    draws = arrays["intermediate/train/randint_draws"]
    scores = np.asarray(outputs["video_scores"])
    weight = jnp.ones(scores.shape[0])

    def ours(key):
        if key.startswith("intermediate/train/encode_query/"):
            c = key.rsplit("/", 1)[1].removesuffix("_query")
            return np.asarray(inter[f"{c if c in streams else streams[0]}_query"][0])
        if key.startswith("intermediate/train/get_video_level_scores"):
            return np.asarray(inter[f"{streams[1 if '@call1' in key else 0]}_scores"][0])
        if key.startswith("intermediate/train/get_neg_scores"):
            matrix, row = (scores.T, 1) if "@call1" in key else (scores, 0)
            return np.asarray(xml.sampled_negative_scores(matrix, draws[row], weight))
        return {
            "intermediate/train/get_pred_from_raw_query/q2ctx_scores": scores,
            "intermediate/train/get_pred_from_raw_query/st_prob": outputs["st_logits"],
            "intermediate/train/get_pred_from_raw_query/ed_prob": outputs["ed_logits"],
        }.get(key)

    unit = ("scores", "sampled_neg_scores", "modular_vector_mapping", "_query_linear")
    checked = []
    for key, want in arrays.items():
        if not key.startswith("intermediate/") or key == "intermediate/train/randint_draws":
            continue
        got = ours(key) if key.startswith("intermediate/train/") else _module_output(inter, key)
        assert got is not None, f"{xml_golden.name}: no port value for golden key {key}"
        got = np.asarray(got)
        assert got.shape == want.shape, f"{key}: shape {got.shape} vs golden {want.shape}"
        atol = ATOL_UNIT if any(u in key for u in unit) else ATOL
        np.testing.assert_allclose(got, want, atol=atol, rtol=0, err_msg=key)
        checked.append(key)
    assert len(checked) >= 15 and any("q2ctx_scores" in k for k in checked), checked


def test_xml_losses_with_replayed_negatives(xml_golden):
    meta, arrays, config, _ = _load(xml_golden)
    outputs, _ = _train_forward(xml_golden)
    batch = _batch(arrays, config, meta)
    labels = xml.st_ed_labels(batch["spans"][:, 0], batch["video_mask"], config.clip_length)
    np.testing.assert_array_equal(np.asarray(labels), arrays["inputs/st_ed_indices"])

    draws = jnp.asarray(arrays["intermediate/train/randint_draws"])
    replay = dict(outputs, neg_draws=draws, hard_neg_draws=draws)
    epoch = _epoch_of_golden(meta["config_values"])
    loss, parts = xml.loss_fn(replay, batch, config, step=epoch, steps_per_epoch=1)
    for name, value in parts.items():
        np.testing.assert_allclose(float(value), float(arrays[f"loss/{name}"]), atol=1e-5)
    np.testing.assert_allclose(float(loss), float(arrays["outputs/loss"]), atol=1e-5)


def _pad_clips(batch, length):
    """Pad the clip axis with zeros to ``length`` (the inference context batch length)."""
    out = dict(batch)
    extra = length - batch["video_mask"].shape[1]
    for key in ("video_features", "subtitle_features", "video_mask"):
        if key in batch:
            pad = [(0, 0), (0, extra)] + [(0, 0)] * (batch[key].ndim - 2)
            out[key] = np.pad(batch[key], pad)
    return out


def test_xml_inference_through_corpus_methods(xml_golden):
    """Every query against every corpus video (the official ``cross=True`` path)."""
    meta, arrays, config, params = _load(xml_golden)
    model = xml.create_model(_as_given(config))
    variables = {"params": params}
    want_st = arrays["infer/get_pred_from_raw_query/st_logits"]
    n_query, n_video, length = want_st.shape
    batch = _pad_clips(_batch(arrays, config, meta), length)
    with jax.default_matmul_precision("highest"):
        queries = model.apply(variables, batch, method=xml.XML.encode_queries)
        videos = model.apply(variables, batch, method=xml.XML.encode_videos)
        scores = model.apply(variables, queries, videos, method=xml.XML.score_videos)
        per_query = jax.tree_util.tree_map(
            lambda x: jnp.broadcast_to(x[None], (n_query, *x.shape)), videos
        )
        st, ed = model.apply(variables, queries, per_query, method=xml.XML.localize)
    assert scores.shape == (n_query, n_video)
    np.testing.assert_allclose(
        scores, arrays["infer/get_pred_from_raw_query/q2ctx_scores"], atol=ATOL_UNIT, rtol=0
    )
    np.testing.assert_allclose(st, want_st, atol=ATOL, rtol=0)
    np.testing.assert_allclose(
        ed, arrays["infer/get_pred_from_raw_query/ed_logits"], atol=ATOL, rtol=0
    )
    np.testing.assert_allclose(
        xml.video_weights(scores, config), arrays["infer/q2ctx_scores_exp"], rtol=1e-4, atol=0
    )
    np.testing.assert_allclose(xml.boundary_probs(st), arrays["infer/st_probs"], atol=1e-6)
    np.testing.assert_allclose(xml.boundary_probs(ed), arrays["infer/ed_probs"], atol=1e-6)


def test_xml_builds_the_official_tef_and_normalisation(xml_golden):
    """The TEF the model appends equals the dataset's columns (configurations with TEF); the
    model's own input normalisation, applied to the already-normalised golden inputs, moves
    the scores and logits by far less than the parity tolerance (every configuration)."""
    meta, arrays, config, params = _load(xml_golden)
    batch = _batch(arrays, config, meta)
    if "tef" in config.ctx_mode:
        tef = np.asarray(xml.temporal_endpoint_features(jnp.asarray(batch["video_mask"])))
        np.testing.assert_array_equal(tef, arrays["inputs/tef_feat"])
        for stream, key in (("video", "inputs/video_feat"), ("sub", "inputs/sub_feat")):
            if stream in config.ctx_mode:
                np.testing.assert_array_equal(tef, arrays[key][..., -2:])

    with jax.default_matmul_precision("highest"):
        normalised = xml.create_model(config).apply({"params": params}, batch, train=False)
    outputs, _ = _train_forward(xml_golden)
    for name in ("video_scores", "st_logits", "ed_logits"):
        np.testing.assert_allclose(normalised[name], outputs[name], atol=ATOL, rtol=0)
