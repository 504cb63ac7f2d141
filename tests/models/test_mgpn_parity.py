"""MGPN parity with the official PyTorch code (Huntersxsx/MGPN) on every mgpn_*.npz golden.

The model is built from the sidecar JSON's ``config_values``, the official ``weights/*`` are
converted, the forward runs on ``inputs/*`` in eval mode, and every ``outputs/*``,
``intermediate/*`` and the loss are compared at atol 1e-4 (PyTorch layouts transposed to
channels-last).  Map intermediates are compared on the full N x N map.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from vmr_jax.convert.mgpn import convert_mgpn, model_config_from_golden
from vmr_jax.convert.state_dict import load_state_dict
from vmr_jax.models import mgpn
from vmr_jax.ops import moment_map

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


def _run(path, map_conv):
    meta, arrays = _load(path)
    config = model_config_from_golden(meta["config_values"])
    config.map_conv = map_conv
    model = mgpn.create_model(config)
    batch = _batch(arrays)
    reference = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch, train=False))
    variables = convert_mgpn(load_state_dict(path), config, reference)
    outputs, state = model.apply(variables, batch, train=False, mutable=["intermediates"])
    inter = jax.tree_util.tree_map(
        lambda v: np.asarray(v[0]), state["intermediates"], is_leaf=lambda v: isinstance(v, tuple)
    )
    return config, arrays, batch, outputs, inter


def _ours(name, config, inter, outputs):
    """Our value for a golden key, in the golden (PyTorch) layout; None if unknown."""
    n = config.num_clips
    starts, ends = moment_map.valid_cells(n, tuple(config.pooling_counts))

    def dense_map(cells):  # [B, C, ch] -> [B, ch, N, N]
        return np.asarray(moment_map.scatter_cells(cells, starts, ends, n)).transpose(0, 3, 1, 2)

    def channels_first(x):
        return np.asarray(x).transpose(0, 2, 1)

    mask = np.broadcast_to(
        moment_map.valid_cell_mask(n, tuple(config.pooling_counts)),
        (outputs["score_map"].shape[0], 1, n, n),
    )
    table = {
        "intermediate/encoder_layer.frame_encoder": lambda: channels_first(inter["frame_encoder"]),
        "intermediate/encoder_layer.vis_encoder/output": lambda: inter["vis_gru_output"],
        "intermediate/encoder_layer.vis_encoder/h_n": lambda: inter["vis_gru_h_n"],
        "intermediate/encoder_layer.txt_encoder/output": lambda: inter["txt_gru_output"],
        "intermediate/encoder_layer.txt_encoder/h_n": lambda: inter["txt_gru_h_n"],
        "intermediate/encoder_layer/vis_encoded": lambda: channels_first(inter["vis_gru_output"]),
        "intermediate/encoder_layer/txt_encoded": lambda: inter["txt_encoded"],
        "intermediate/interactor_layer1/vis_fused": lambda: channels_first(inter["vis_fused"]),
        "intermediate/interactor_layer1/txt_fused": lambda: inter["txt_fused"],
        "intermediate/generator_layer/boundary_map": lambda: dense_map(inter["boundary_cells"]),
        "intermediate/generator_layer/content_map": lambda: dense_map(inter["content_cells"]),
        "intermediate/generator_layer/map_mask": lambda: mask,
        "intermediate/finegrained_layer.phrase_encode": lambda: inter["phrase_encode"],
        "intermediate/finegrained_layer.txt_linear": lambda: inter["txt_finegrained"],
        "intermediate/finegrained_layer/vis_finegrained": lambda: channels_first(
            inter["vis_finegrained"]
        ),
        "intermediate/finegrained_layer/txt_finegrained": lambda: inter["txt_finegrained"],
        "intermediate/interactor_layer2": lambda: dense_map(inter["fused_cells"]),
        "intermediate/relation_layer": lambda: dense_map(inter["relation_cells"]),
        "intermediate/pred_layer": lambda: np.asarray(outputs["score_map"])[:, None],
        "outputs/score_map": lambda: np.asarray(outputs["score_map"])[:, None],
        "outputs/map_mask": lambda: mask,
    }
    if name in table:
        return table[name]()
    return None


@pytest.mark.parametrize("map_conv", ["sparse", "dense"])
def test_mgpn_matches_official(mgpn_golden, map_conv):
    config, arrays, batch, outputs, inter = _run(mgpn_golden, map_conv)
    n = config.num_clips
    mask = moment_map.valid_cell_mask(n, tuple(config.pooling_counts))
    checked = []
    for key, want in arrays.items():
        if not (key.startswith("intermediate/") or key.startswith("outputs/")):
            continue
        if key == "outputs/joint_prob":
            continue  # compared below through decode()
        got = _ours(key, config, inter, outputs)
        if key.startswith("intermediate/relation_layer.conv_block"):
            # A block's own output (before the mask): compared on the valid cells, the only
            # cells the mask lets through.
            block = key.split(".")[-1].split("/")[0]
            cells = inter[block]["output"]
            starts, ends = np.nonzero(mask)
            want = want.transpose(0, 2, 3, 1)[:, starts, ends]
            got = cells[: want.shape[0]]
        if key == "intermediate/pred_layer":
            want = want * mask  # ours is the masked map; the mask multiply is exact
        assert got is not None, f"{mgpn_golden.name}: no port value for golden key {key}"
        assert got.shape == want.shape, f"{key}: shape {got.shape} vs golden {want.shape}"
        if want.dtype == bool:
            np.testing.assert_array_equal(got, want, err_msg=key)
        else:
            np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=key)
        checked.append(key)
    assert "outputs/score_map" in checked and len(checked) >= 15, checked

    probs = np.asarray(mgpn.decode(outputs, batch, config)["score_map"])
    np.testing.assert_allclose(probs, arrays["outputs/joint_prob"][:, 0], atol=ATOL, rtol=0)
    loss, _ = mgpn.loss_fn(outputs, batch, config)
    np.testing.assert_allclose(float(loss), float(arrays["loss/bce_rescale_loss"]), atol=ATOL)


def test_loss_targets_match_official_map_gt(mgpn_golden):
    """The scaled-IoU targets built from spans equal the official dataset's map_gt."""
    meta, arrays = _load(mgpn_golden)
    config = model_config_from_golden(meta["config_values"])
    batch = _batch(arrays)
    n = config.num_clips
    starts, ends = moment_map.valid_cells(n, tuple(config.pooling_counts))
    targets = np.asarray(mgpn.cell_targets(config, batch))
    gt = arrays["inputs/map_gt"][:, 0][:, starts, ends]
    want = np.clip((gt - config.min_iou) / (config.max_iou - config.min_iou), 0, 1)
    np.testing.assert_allclose(targets, want, atol=1e-6)
