"""microsoft/2D-TAN checkpoints and experiment YAMLs -> vmr_jax.

``tan2d_rules(model_config)`` maps every key of the official ``TAN.state_dict()`` (a
``torch.save``'d state_dict, read with :func:`vmr_jax.convert.state_dict.load_state_dict`) to
the Flax variables of :class:`vmr_jax.models.tan2d.TAN2D`.  Layouts: Conv1d/Conv2d 1x1 and
Linear -> Dense kernels ``(in, out)``; proposal Conv1d ``(out, in, k)`` -> ``(k, in, out)``
(``prop_layer.layers.<scale>.<i>`` -> ``prop_convs_<flat index>``, layers in chain order); map
Conv2d ``(out, in, kh, kw)`` -> ``(kh, kw, in, out)``; LSTM ``weight_*_l<k>`` (gates i, f, g, o)
transposed.  Conversion is strict: missing, unexpected or mis-shaped keys are all named.

``model_fields_from_official`` reads the official ``TAN`` section (FRAME_MODULE, PROP_MODULE,
FUSION_MODULE, MAP_MODULE, PRED_INPUT_SIZE) with DATASET and LOSS values into ``config.model``;
``config_from_yaml`` (an experiment YAML) and ``model_config_from_golden`` (a golden sidecar's
``config_values``) are built on it, so a new golden configuration needs no code change.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import ml_collections
import numpy as np

from vmr_jax.convert.benchmark_configs import DATASETS, FEATURE_SETS
from vmr_jax.convert.state_dict import Rule, conv1d, conv1x1, conv2d, convert, linear
from vmr_jax.models import tan2d

PROP_MODULES = {"SparsePropConv": "conv", "SparsePropMaxPool": "pool"}


def _dense_rules(torch_prefix: str, flax_module: str, transform=linear) -> list[Rule]:
    return [
        Rule(f"{torch_prefix}.weight", ("params", flax_module, "kernel"), transform),
        Rule(f"{torch_prefix}.bias", ("params", flax_module, "bias")),
    ]


def _lstm_rules(model_config) -> list[Rule]:
    suffixes = ("", "_reverse") if model_config.bidirectional else ("",)
    rules = []
    for layer in range(int(model_config.lstm_layers)):
        for suffix in suffixes:
            for torch_name, flax_name, fn in (
                ("weight_ih", "w_ih", linear),
                ("weight_hh", "w_hh", linear),
                ("bias_ih", "b_ih", None),
                ("bias_hh", "b_hh", None),
            ):
                key = f"fusion_layer.textual_encoder.{torch_name}_l{layer}{suffix}"
                path = ("params", "textual_encoder", f"l{layer}", f"{flax_name}{suffix}")
                rules.append(Rule(key, path, fn) if fn else Rule(key, path))
    return rules


def tan2d_rules(model_config) -> list[Rule]:
    """Rules for an official TAN with ``model_config``'s proposal, LSTM and map-conv layout."""
    rules = _dense_rules("frame_layer.vis_conv", "frame_conv", conv1x1)
    if model_config.prop == "conv":
        layers = tan2d.proposal_layers(
            int(model_config.num_clips), tuple(model_config.num_scale_layers)
        )
        for flat, layer in enumerate(layers):
            rules += _dense_rules(
                f"prop_layer.layers.{layer.scale}.{layer.index}", f"prop_convs_{flat}", conv1d
            )
    rules += _lstm_rules(model_config)
    rules += _dense_rules("fusion_layer.tex_linear", "tex_linear")
    rules += _dense_rules("fusion_layer.vis_conv", "vis_conv", conv1x1)
    for k in range(len(model_config.map_hidden)):
        rules += _dense_rules(f"map_layer.convs.{k}", f"map_convs_{k}", conv2d)
    rules += _dense_rules("pred_layer", "pred", conv1x1)
    return rules


def convert_tan2d(state_dict: Mapping[str, np.ndarray], model_config, reference) -> dict:
    """Official TAN ``state_dict`` -> ``{'params': ...}`` shaped like ``reference`` (the
    model's variables or their ``jax.eval_shape``).  A learned word embedding
    (``vocab_size > 0``), which the official model does not have, keeps its reference value."""
    keep = [("params", "word_embed")] if int(model_config.get("vocab_size", 0)) > 0 else []
    return convert(state_dict, tan2d_rules(model_config), reference, (), keep)


def _need(node: Mapping, where: str, *keys):
    for i, key in enumerate(keys):
        if not isinstance(node, Mapping) or key not in node:
            raise KeyError(f"{where}: missing field {'.'.join(keys[: i + 1])}")
        node = node[key]
    return node


def model_fields_from_official(
    tan: Mapping, num_sample_clips: int, target_stride: int, loss: Mapping, where: str = "config"
) -> ml_collections.ConfigDict:
    """``config.model`` for TAN2D from the official ``TAN`` section (module NAME/PARAMS
    dicts as in the YAML), ``DATASET.NUM_SAMPLE_CLIPS``/``TARGET_STRIDE`` and ``LOSS.PARAMS``.

    Raises naming ``where`` and the field when a module other than the ported ones is named or
    the sizes do not chain (the official constructor would fail or mis-shape).
    """
    expected = {
        "FRAME_MODULE": ("FrameAvgPool",),
        "PROP_MODULE": tuple(PROP_MODULES),
        "FUSION_MODULE": ("BaseFusion",),
        "MAP_MODULE": ("MapConv",),
    }
    for section, names in expected.items():
        got = _need(tan, where, section, "NAME")
        if got not in names:
            raise ValueError(f"{where}: TAN.{section}.NAME is {got!r}; vmr_jax implements {names}")
    frame = _need(tan, where, "FRAME_MODULE", "PARAMS")
    prop = _need(tan, where, "PROP_MODULE", "PARAMS")
    fusion = _need(tan, where, "FUSION_MODULE", "PARAMS")
    maps = _need(tan, where, "MAP_MODULE", "PARAMS")
    hidden = int(frame["HIDDEN_SIZE"])
    if int(frame["KERNEL_SIZE"]) != int(frame["STRIDE"]) or int(frame["STRIDE"]) != target_stride:
        raise ValueError(
            f"{where}: FRAME_MODULE KERNEL_SIZE/STRIDE ({frame['KERNEL_SIZE']}/{frame['STRIDE']}) "
            f"must both equal DATASET.TARGET_STRIDE ({target_stride})"
        )
    if num_sample_clips % target_stride:
        raise ValueError(f"{where}: NUM_SAMPLE_CLIPS {num_sample_clips} % TARGET_STRIDE != 0")
    map_hidden = tuple(int(c) for c in maps["HIDDEN_SIZES"])
    sizes = {
        "PROP_MODULE.HIDDEN_SIZE": prop.get("HIDDEN_SIZE", hidden),
        "FUSION_MODULE.HIDDEN_SIZE": fusion["HIDDEN_SIZE"],
        "MAP_MODULE.INPUT_SIZE": maps["INPUT_SIZE"],
    }
    for name, size in sizes.items():
        if int(size) != hidden:
            raise ValueError(f"{where}: {name} is {size}, FRAME_MODULE.HIDDEN_SIZE is {hidden}")
    pred_input = int(tan.get("PRED_INPUT_SIZE", map_hidden[-1]))
    if pred_input != map_hidden[-1]:
        raise ValueError(f"{where}: PRED_INPUT_SIZE {pred_input} != last map width")
    lstm = fusion["LSTM"]
    fields = dict(
        tan2d.DEFAULTS,
        name="tan2d",
        feature_dim=int(frame["INPUT_SIZE"]),
        hidden=hidden,
        num_clips=num_sample_clips // target_stride,
        frame_stride=target_stride,
        num_scale_layers=tuple(int(c) for c in prop["NUM_SCALE_LAYERS"]),
        prop=PROP_MODULES[tan["PROP_MODULE"]["NAME"]],
        word_dim=int(fusion["TXT_INPUT_SIZE"]),
        vocab_size=0,
        txt_hidden=int(fusion["TXT_HIDDEN_SIZE"]),
        lstm_layers=int(lstm["NUM_LAYERS"]),
        bidirectional=bool(lstm["BIDIRECTIONAL"]),
        map_hidden=map_hidden,
        map_kernels=tuple(int(c) for c in maps["KERNEL_SIZES"]),
        map_strides=tuple(int(c) for c in maps["STRIDES"]),
        map_paddings=tuple(int(c) for c in maps["PADDINGS"]),
        map_dilations=tuple(int(c) for c in maps["DILATIONS"]),
        min_iou=float(loss["MIN_IOU"]),
        max_iou=float(loss["MAX_IOU"]),
        bias=float(loss.get("BIAS", 0.0)),
    )
    return ml_collections.ConfigDict(fields)


def model_config_from_golden(config_values: Mapping) -> ml_collections.ConfigDict:
    """``config.model`` from the ``config_values`` of a golden sidecar JSON (shared/golden)."""
    tan = {
        "FRAME_MODULE": config_values["frame_module"],
        "PROP_MODULE": config_values["prop_module"],
        "FUSION_MODULE": config_values["fusion_module"],
        "MAP_MODULE": config_values["map_module"],
    }
    if "pred_input" in config_values:
        tan["PRED_INPUT_SIZE"] = config_values["pred_input"]
    return model_fields_from_official(
        tan,
        int(config_values["NUM_SAMPLE_CLIPS"]),
        int(config_values["TARGET_STRIDE"]),
        config_values["loss"]["PARAMS"],
        where="golden config_values",
    )


def config_from_yaml(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Translate an official 2D-TAN experiment YAML into a vmr_jax config (unlocked).

    Reads DATASET (NAME, VIS_INPUT_TYPE, NUM_SAMPLE_CLIPS, TARGET_STRIDE, NORMALIZE), TRAIN
    (BATCH_SIZE, LR, WEIGHT_DECAY, MAX_EPOCH), TEST (BATCH_SIZE, RECALL, TIOU, NMS_THRESH),
    LOSS.PARAMS and the TAN section; the official defaults of ``lib/core/config.py`` fill what
    a YAML leaves out (TARGET_STRIDE 16, NUM_SAMPLE_CLIPS 256, PRED_INPUT_SIZE 512).
    """
    import yaml

    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    dataset = raw.get("DATASET", {})
    num_sample = int(dataset.get("NUM_SAMPLE_CLIPS", 256))
    stride = int(dataset.get("TARGET_STRIDE", 16))
    tan = dict(_need(raw, path, "TAN"))
    tan.setdefault("PRED_INPUT_SIZE", 512)
    loss_name = _need(raw, path, "LOSS", "NAME")
    if loss_name != "bce_rescale_loss":
        raise ValueError(f"{path}: LOSS.NAME is {loss_name!r}; vmr_jax implements bce_rescale_loss")
    config = ml_collections.ConfigDict()
    config.model = model_fields_from_official(
        tan, num_sample, stride, _need(raw, path, "LOSS", "PARAMS"), where=path
    )
    official_name = str(_need(raw, path, "DATASET", "NAME"))
    name = DATASETS.get(official_name, official_name.lower())
    vis_input_type = str(dataset.get("VIS_INPUT_TYPE", ""))
    config.data = ml_collections.ConfigDict(
        dict(
            name=name,
            # vgg_rgb (Charades-STA) is the "vgg" feature set here, c3d is c3d; others kept.
            features=FEATURE_SETS.get((name, vis_input_type), vis_input_type),
            num_input_clips=num_sample,
            normalize=bool(dataset.get("NORMALIZE", False)),
            text_mode="features",
        )
    )
    train = _need(raw, path, "TRAIN")
    config.train = ml_collections.ConfigDict(
        dict(
            batch_size=int(train.get("BATCH_SIZE", 4)),
            lr=float(train.get("LR", 0.001)),
            weight_decay=float(train.get("WEIGHT_DECAY", 0.0)),
            num_epochs=int(train.get("MAX_EPOCH", 20)),
            milestones=(),
            grad_clip_norm=10.0,
        )
    )
    test = _need(raw, path, "TEST")
    config.evals = ml_collections.ConfigDict(
        dict(
            protocol="2dtan",
            batch_size=int(test.get("BATCH_SIZE", 1)),
            recalls=tuple(int(r) for r in str(_need(test, path, "RECALL")).split(",")),
            ious=tuple(float(t) for t in str(_need(test, path, "TIOU")).split(",")),
            nms_thresh=float(test.get("NMS_THRESH", 0.4)),
        )
    )
    return config
