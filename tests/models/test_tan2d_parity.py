"""2D-TAN parity with the official PyTorch code (microsoft/2D-TAN) on every tan2d_*.npz golden.

The model is built from the sidecar JSON's ``config_values`` only, the official ``weights/*``
are converted, the forward runs on ``inputs/*``, and every ``outputs/*`` and
``intermediate/*`` key of the file (an unknown key fails the test), the loss and
``joint_prob`` are compared at atol 1e-4 in the PyTorch layout.  The decoded moments and the
repo's 2D-TAN evaluation reproduce ``decode/*``.
"""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest

from vmr_jax.convert.state_dict import load_state_dict
from vmr_jax.convert.tan2d import convert_tan2d, model_config_from_golden
from vmr_jax.evaluation import svmr
from vmr_jax.models import tan2d

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")  # speed only

ATOL = 1e-4


def _load(path):
    meta = json.loads(path.with_suffix(".json").read_text())
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    return meta, arrays


def _batch(arrays):
    return {
        "video_features": arrays["inputs/visual_input"],
        "query_features": arrays["inputs/textual_input"],
        "query_mask": arrays["inputs/textual_mask"][..., 0],
        "duration": arrays["inputs/duration"],
        "spans": arrays["inputs/gt_times"][:, None, :],
        "valid": np.ones(arrays["inputs/duration"].shape, np.float32),
    }


@pytest.fixture
def run(tan2d_golden):
    return _run(tan2d_golden)


@functools.cache
def _run(path):
    """Converted model, forward outputs and intermediates of one golden file (once per file)."""
    meta, arrays = _load(path)
    config = model_config_from_golden(meta["config_values"])
    model = tan2d.create_model(config)
    batch = _batch(arrays)
    reference = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch, train=False))
    variables = convert_tan2d(load_state_dict(path), config, reference)
    outputs, state = model.apply(variables, batch, train=False, mutable=["intermediates"])
    inter = {k: np.asarray(v[0]) for k, v in state["intermediates"].items()}
    return dict(
        meta=meta,
        arrays=arrays,
        config=config,
        model=model,
        variables=variables,
        batch=batch,
        outputs=outputs,
        inter=inter,
    )


def _ours(name, r):
    """Our value for a golden key, in the golden (PyTorch) layout; None if unknown."""
    inter, config = r["inter"], r["config"]
    prediction = np.asarray(r["outputs"]["prediction"])
    mask = np.broadcast_to(
        tan2d.proposal_mask(config.num_clips, tuple(config.num_scale_layers)), prediction.shape
    )[:, None].astype(np.float32)
    maps = {  # channels-last [B, N, N, ch] -> [B, ch, N, N]
        "intermediate/prop_layer/map_h": "prop_map_h",
        "intermediate/fusion_layer.vis_conv": "fusion_vis_conv",
        "intermediate/fusion_layer": "fusion",
        "intermediate/map_layer": "map_layer",
    }
    convs = range(len(config.map_hidden))
    maps.update({f"intermediate/map_layer.convs.{k}": f"map_conv_{k}" for k in convs})
    if name in maps:
        return inter[maps[name]].transpose(0, 3, 1, 2)
    table = {
        "intermediate/frame_layer.vis_conv": lambda: inter["frame_vis_conv"].transpose(0, 2, 1),
        "intermediate/frame_layer": lambda: inter["frame_layer"].transpose(0, 2, 1),
        "intermediate/prop_layer/map_mask": lambda: mask,
        "intermediate/fusion_layer.textual_encoder/output": lambda: inter["lstm_output"],
        "intermediate/fusion_layer.textual_encoder/h_n": lambda: inter["lstm_h_n"],
        "intermediate/fusion_layer.textual_encoder/c_n": lambda: inter["lstm_c_n"],
        "intermediate/fusion_layer.tex_linear": lambda: inter["text_vector"],
        "intermediate/pred_layer": lambda: inter["pred_layer"][:, None],
        "outputs/prediction": lambda: prediction[:, None],
        "outputs/map_mask": lambda: mask,
        "outputs/joint_prob": lambda: np.asarray(
            tan2d.decode(r["outputs"], r["batch"], config)["score_map"]
        )[:, None],
    }
    return table[name]() if name in table else None


def test_tan2d_matches_official(run):
    arrays = run["arrays"]
    checked = []
    for key, want in arrays.items():
        if not key.startswith(("intermediate/", "outputs/")):
            continue
        got = _ours(key, run)
        assert got is not None, f"no port value for golden key {key}"
        assert got.shape == want.shape, f"{key}: shape {got.shape} vs golden {want.shape}"
        if want.dtype == bool:
            np.testing.assert_array_equal(got, want, err_msg=key)
        else:
            np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=key)
        checked.append(key)
    for key in ("outputs/prediction", "outputs/joint_prob", "intermediate/prop_layer/map_h"):
        assert key in checked, checked
    loss, _ = tan2d.loss_fn(run["outputs"], run["batch"], run["config"])
    np.testing.assert_allclose(float(loss), float(arrays["loss/bce_rescale_loss"]), atol=ATOL)
    np.testing.assert_allclose(
        float(loss), run["meta"]["results"]["loss"], atol=ATOL, err_msg="sidecar loss"
    )


def test_targets_match_official_map_gt(run):
    """Targets built from spans equal the dataset's map_gt rescaled as bce_rescale_loss does
    (on the proposal cells, the only ones the loss reads)."""
    config = run["config"]
    mask = tan2d.proposal_mask(config.num_clips, tuple(config.num_scale_layers))
    got = np.asarray(tan2d.iou_targets(config, run["batch"]))[:, mask]
    gt = run["arrays"]["inputs/map_gt"][:, 0][:, mask]
    want = (gt - config.min_iou) * (1 - config.bias) / (config.max_iou - config.min_iou)
    want = np.clip(np.where(want > 0, want + config.bias, want), 0, 1)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_decoding_and_metrics_match_official(run):
    """Our joint_prob -> official decoding + NMS -> the golden moments, recall and mIoU."""
    test_cfg = run["meta"]["config_values"]["test"]
    recalls = tuple(int(n) for n in str(test_cfg["RECALL"]).split(","))
    tious = tuple(float(m) for m in str(test_cfg["TIOU"]).split(","))
    arrays = run["arrays"]
    scores = np.asarray(tan2d.decode(run["outputs"], run["batch"], run["config"])["score_map"])
    times = svmr.decode_predictions(
        scores, arrays["inputs/duration"], float(test_cfg["NMS_THRESH"]), top_k=max(recalls)
    )
    np.testing.assert_allclose(times, arrays["decode/nms_top5_times"], rtol=0, atol=1e-6)
    results = svmr.evaluate(times, arrays["inputs/gt_times"], recalls, tious, protocol="2dtan")
    recall = np.array([[results[svmr.metric_name(n, m)] for n in recalls] for m in tious])
    np.testing.assert_array_equal(recall.astype(np.float32), arrays["decode/recall"])
    assert results["mIoU"] == pytest.approx(float(arrays["decode/miou"]), abs=1e-6)


def test_split_methods_compose_to_the_forward(run):
    """encode_query ("TE"), encode_video and cross_modal ("CML") give the same prediction as
    the forward; the video side does not read the query."""
    model, variables, batch = run["model"], run["variables"], run["batch"]
    text = model.apply(variables, batch, method="encode_query")
    video_only = {"video_features": batch["video_features"]}
    map_h, map_mask = model.apply(variables, video_only, method="encode_video")
    assert text.shape == (2, run["config"].hidden)
    assert map_h.shape[1:] == (run["config"].num_clips,) * 2 + (run["config"].hidden,)
    prediction = model.apply(variables, text, map_h, map_mask, method="cross_modal")
    np.testing.assert_array_equal(np.asarray(prediction), np.asarray(run["outputs"]["prediction"]))
    # One video map against both queries: row 0 is the (query 0, video 0) pair of the forward.
    one_video = model.apply(variables, text, map_h[:1], map_mask[:1], method="cross_modal")
    assert one_video.shape == prediction.shape
    np.testing.assert_allclose(np.asarray(one_video)[0], np.asarray(prediction)[0], atol=1e-6)
