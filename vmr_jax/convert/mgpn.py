"""Huntersxsx/MGPN checkpoints and experiment YAMLs -> vmr_jax.

``mgpn_rules(model)`` maps every key of the official ``MGPN.state_dict()`` to the Flax
variables of :class:`vmr_jax.models.mgpn.MGPN`.  ``generator_layer.conv1d.*`` (a Conv1d the
official generator creates but never calls) is accepted and ignored.  ``config_from_yaml``
reads an official ``experiments/<dataset>/*.yaml`` into the ``config.model`` / ``config.data``
/ ``config.train`` / ``config.evals`` fields of vmr_jax.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import ml_collections
import numpy as np

from vmr_jax.convert.benchmark_configs import DATASETS, FEATURE_SETS
from vmr_jax.convert.state_dict import Rule, conv1d, conv1x1, conv2d, convert, linear
from vmr_jax.models import mgpn

UNUSED_KEYS = ("generator_layer.conv1d.weight", "generator_layer.conv1d.bias")


def _gru_rules(torch_prefix: str, flax_module: str, layers: int) -> list[Rule]:
    rules = []
    for layer in range(layers):
        for suffix in ("", "_reverse"):
            for torch_name, flax_name, fn in (
                ("weight_ih", "w_ih", linear),
                ("weight_hh", "w_hh", linear),
                ("bias_ih", "b_ih", None),
                ("bias_hh", "b_hh", None),
            ):
                rule_args = (
                    f"{torch_prefix}.{torch_name}_l{layer}{suffix}",
                    ("params", flax_module, f"l{layer}", f"{flax_name}{suffix}"),
                )
                rules.append(Rule(*rule_args, fn) if fn else Rule(*rule_args))
    return rules


def _dense_rules(torch_prefix: str, flax_module: str, transform=linear) -> list[Rule]:
    return [
        Rule(f"{torch_prefix}.weight", ("params", flax_module, "kernel"), transform),
        Rule(f"{torch_prefix}.bias", ("params", flax_module, "bias")),
    ]


def _model_fields(**official) -> ml_collections.ConfigDict:
    """``config.model`` for MGPN: ``mgpn.DEFAULTS`` (the fixed parts of the official
    architecture and vmr_jax's execution options) with the official values given."""
    fields = dict(mgpn.DEFAULTS, name="mgpn", vocab_size=0)
    fields.update(official)
    return ml_collections.ConfigDict(fields)


def mgpn_rules(model_config) -> list[Rule]:
    """Rules for an official MGPN with ``model_config``'s GRU depth and position option."""
    layers = int(model_config.gru_layers)
    rules = _dense_rules("encoder_layer.frame_encoder.vis_conv", "frame_conv", conv1x1)
    if model_config.use_position:
        rules.append(
            Rule("encoder_layer.frame_encoder.pos_embed.pos_embed.weight", ("params", "position"))
        )
    rules += _gru_rules("encoder_layer.vis_encoder", "vis_gru", layers)
    rules += _gru_rules("encoder_layer.txt_encoder", "txt_gru", layers)
    rules += _dense_rules("interactor_layer1.txt_linear1", "word_attention")
    rules += _dense_rules("interactor_layer1.vis_conv", "clip_attention", conv1x1)
    for gram in ("unigram", "bigram", "trigram"):
        rules += _dense_rules(
            f"finegrained_layer.phrase_encode.{gram}_conv", f"{gram}_conv", conv1d
        )
    rules += _dense_rules("finegrained_layer.txt_linear", "phrase_linear")
    rules += _dense_rules("finegrained_layer.feed_forward.w_1", "ffn_1")
    rules += _dense_rules("finegrained_layer.feed_forward.w_2", "ffn_2")
    rules += [
        Rule("finegrained_layer.vis_sublayer.norm.a_2", ("params", "clip_norm", "scale")),
        Rule("finegrained_layer.vis_sublayer.norm.b_2", ("params", "clip_norm", "bias")),
    ]
    rules += _dense_rules("interactor_layer2.txt_linear_b1", "text_gate")
    rules += _dense_rules("interactor_layer2.vis_linear_b2", "video_gate")
    rules += _dense_rules("relation_layer.conv_layer", "fuse_conv", conv1x1)
    for k in range(1, 5):
        block = f"relation_layer.conv_block{k}"
        name = f"conv_block{k}"
        rules += [
            Rule(f"{block}.conv.weight", ("params", name, "kernel"), conv2d),
            Rule(f"{block}.conv.bias", ("params", name, "bias")),
            Rule(f"{block}.bn.weight", ("params", name, "bn", "scale")),
            Rule(f"{block}.bn.bias", ("params", name, "bn", "bias")),
            Rule(f"{block}.bn.running_mean", ("batch_stats", name, "bn", "mean")),
            Rule(f"{block}.bn.running_var", ("batch_stats", name, "bn", "var")),
        ]
    rules += _dense_rules("pred_layer", "pred", conv1x1)
    return rules


def convert_mgpn(state_dict: Mapping[str, np.ndarray], model_config, reference) -> dict:
    """Official MGPN ``state_dict`` -> ``{'params': ..., 'batch_stats': ...}``.

    ``reference``: the model's variables or ``jax.eval_shape`` of its init.  A learned word
    embedding (``vocab_size > 0``), which the official model does not have, keeps its
    reference value.
    """
    keep = [("params", "word_embed")] if int(model_config.get("vocab_size", 0)) > 0 else []
    return convert(state_dict, mgpn_rules(model_config), reference, UNUSED_KEYS, keep)


def config_from_yaml(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Translate an official MGPN experiment YAML into a vmr_jax config (unlocked).

    Reads DATASET (NAME, NUM_SAMPLE_CLIPS, TARGET_STRIDE, NORMALIZE), TRAIN (BATCH_SIZE, LR,
    MILESTONES, GAMMA, MAX_EPOCH, WEIGHT_DECAY), TEST (BATCH_SIZE, RECALL, TIOU, NMS_THRESH),
    LOSS1.PARAMS and the MGPN module parameters; raises naming the file and the YAML field
    when a required one is missing or a module name other than the official ones is used.
    """
    import yaml

    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)

    def need(*keys):
        node = raw
        for i, key in enumerate(keys):
            if not isinstance(node, Mapping) or key not in node:
                raise KeyError(f"{path}: missing field {'.'.join(keys[: i + 1])}")
            node = node[key]
        return node

    expected_modules = {
        "COARSE_GRAINED_ENCODER": "FeatureEncoder",
        "COATTENTION_MODULE": "FirstFuse",
        "CHOICE_GENERATOR": "SparseBoundaryContent",
        "FINE_GRAINED_ENCODER": "FineGrainedFeature",
        "CONDITIONED_INTERACTION_MODULE": "SecondFuse",
        "CHOICE_COMPARISON_MODULE": "ConvModule",
    }
    for section, module in expected_modules.items():
        got = need("MGPN", section, "NAME")
        if got != module:
            raise ValueError(
                f"{path}: MGPN.{section}.NAME is {got!r}; vmr_jax implements {module!r}"
            )
    enc = need("MGPN", "COARSE_GRAINED_ENCODER", "PARAMS")
    frame, gru = enc["FRAME"], enc["GRU"]
    hidden = int(frame["HIDDEN_SIZE"])
    if int(frame["KERNEL_SIZE"]) != int(frame["STRIDE"]):
        raise ValueError(f"{path}: FRAME.KERNEL_SIZE must equal FRAME.STRIDE")
    num_sample = int(need("DATASET", "NUM_SAMPLE_CLIPS"))
    stride = int(need("DATASET", "TARGET_STRIDE"))
    num_clips = int(need("MGPN", "CHOICE_GENERATOR", "PARAMS", "NUM_CLIPS"))
    if num_sample // stride != num_clips:
        raise ValueError(
            f"{path}: NUM_SAMPLE_CLIPS / TARGET_STRIDE = {num_sample // stride}, "
            f"CHOICE_GENERATOR.NUM_CLIPS = {num_clips}"
        )
    loss = need("LOSS1", "PARAMS")
    config = ml_collections.ConfigDict()
    config.model = _model_fields(
        feature_dim=int(frame["INPUT_SIZE"]),
        hidden=hidden,
        num_clips=num_clips,
        frame_stride=stride,
        pooling_counts=tuple(
            int(c) for c in need("MGPN", "CHOICE_GENERATOR", "PARAMS", "NUM_SCALE_LAYERS")
        ),
        gru_layers=int(gru["NUM_LAYERS"]),
        word_dim=int(gru["TXT_INPUT_SIZE"]),
        use_position=bool(frame["USE_POSITION"]),
        min_iou=float(loss["MIN_IOU"]),
        max_iou=float(loss["MAX_IOU"]),
    )
    dataset = str(need("DATASET", "NAME"))
    name = DATASETS.get(dataset, dataset.lower())
    vis_input_type = str(raw["DATASET"].get("VIS_INPUT_TYPE", ""))
    config.data = ml_collections.ConfigDict(
        dict(
            name=name,
            features=FEATURE_SETS.get((name, vis_input_type), vis_input_type),
            num_input_clips=num_sample,
            # lib/core/config.py: DATASET.NORMALIZE = False unless the YAML says otherwise.
            normalize=bool(raw["DATASET"].get("NORMALIZE", False)),
            text_mode="features",
        )
    )
    train = need("TRAIN")
    config.train = ml_collections.ConfigDict(
        dict(
            batch_size=int(train["BATCH_SIZE"]),
            lr=float(train["LR"]),
            weight_decay=float(train.get("WEIGHT_DECAY", 0.0)),
            num_epochs=int(train["MAX_EPOCH"]),
            milestones=tuple(int(m) for m in train.get("MILESTONES", ())),
            gamma=float(train.get("GAMMA", 0.1)),
            grad_clip_norm=10.0,
        )
    )
    test = need("TEST")
    config.evals = ml_collections.ConfigDict(
        dict(
            protocol="2dtan",
            batch_size=int(test.get("BATCH_SIZE", train["BATCH_SIZE"])),
            recalls=tuple(int(r) for r in str(test["RECALL"]).split(",")),
            ious=tuple(float(t) for t in str(test["TIOU"]).split(",")),
            nms_thresh=float(test["NMS_THRESH"]),
        )
    )
    return config


def model_config_from_golden(config_values: Mapping) -> ml_collections.ConfigDict:
    """``config.model`` from the ``config_values`` of a golden sidecar JSON (shared/golden)."""
    gru = config_values["gru"]
    loss = config_values["loss"]["PARAMS"]
    return _model_fields(
        feature_dim=int(config_values["feature_dim"]),
        hidden=int(config_values["hidden"]),
        num_clips=int(config_values["N_clips_map"]),
        frame_stride=int(config_values["TARGET_STRIDE"]),
        pooling_counts=tuple(int(c) for c in config_values["NUM_SCALE_LAYERS"]),
        gru_layers=int(gru["layers"]),
        word_dim=int(gru["txt_input"]),
        use_position=bool(config_values["use_learned_position"]),
        min_iou=float(loss["MIN_IOU"]),
        max_iou=float(loss["MAX_IOU"]),
    )
