"""jayleicn/TVRetrieval XML checkpoints and options -> vmr_jax.

``xml_rules(model_config)`` maps every key of the official ``XML.state_dict()``
(baselines/crossmodal_moment_localization/model_xml.py) to the Flax parameters of
:class:`vmr_jax.models.xml.XML`; which keys exist depends on ``ctx_mode``, ``cross_att`` and
``merge_two_stream`` exactly as in the official constructor.  ``config_from_official`` reads
the official options (``opt.json`` of a results folder, or the ``model_cfg`` stored in the
checkpoint) into ``config.model`` fields; ``load_checkpoint`` reads an official ``model.ckpt``
(``{"model": state_dict, "model_cfg": EasyDict, "epoch": int}``) or a ``.npz``.
"""

from __future__ import annotations

import os
import pickle
import types
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np

from vmr_jax.convert.state_dict import ConversionError, Rule, conv1d, convert, linear
from vmr_jax.convert.state_dict import load_state_dict as _load_npz
from vmr_jax.models import xml

# Official option name -> vmr_jax field, for options whose names differ.
RENAMED = {"hard_negtiave_start_epoch": "hard_negative_start_epoch"}

# Options the official code accepts that this port does not implement, with the only value
# it supports.
ONLY_DEFAULT = {
    "encoder_type": "transformer",
    "span_predictor_type": "conv",
    "conv_stride": 1,
    "stack_conv_predictor_conv_kernel_sizes": -1,
}


def _dense_rules(torch_prefix: str, flax_path: tuple[str, ...], bias: bool = True) -> list[Rule]:
    rules = [Rule(f"{torch_prefix}.weight", ("params", *flax_path, "kernel"), linear)]
    if bias:
        rules.append(Rule(f"{torch_prefix}.bias", ("params", *flax_path, "bias")))
    return rules


def _layer_norm_rules(torch_prefix: str, flax_path: tuple[str, ...]) -> list[Rule]:
    return [
        Rule(f"{torch_prefix}.weight", ("params", *flax_path, "scale")),
        Rule(f"{torch_prefix}.bias", ("params", *flax_path, "bias")),
    ]


def _attention_rules(torch_prefix: str, flax_path: tuple[str, ...]) -> list[Rule]:
    """``BertSelfAttention``: query, key, value Linears."""
    rules = []
    for part in ("query", "key", "value"):
        rules += _dense_rules(f"{torch_prefix}.{part}", (*flax_path, part))
    return rules


def _block_rules(name: str) -> list[Rule]:
    """``BertAttention`` ``name`` -> ``SelfAttentionBlock`` ``name``."""
    return (
        _attention_rules(f"{name}.self", (name, "attention"))
        + _dense_rules(f"{name}.output.dense", (name, "dense"))
        + _layer_norm_rules(f"{name}.output.LayerNorm", (name, "LayerNorm"))
    )


def _input_rules(name: str) -> list[Rule]:
    """``LinearLayer`` (``LayerNorm``, ``net.1`` Linear) -> ``LinearLayer``."""
    return _layer_norm_rules(f"{name}.LayerNorm", (name, "LayerNorm")) + _dense_rules(
        f"{name}.net.1", (name, "dense")
    )


def _position_rules(name: str) -> list[Rule]:
    return [
        Rule(f"{name}.position_embeddings.weight", ("params", name, "position_embeddings"))
    ] + _layer_norm_rules(f"{name}.LayerNorm", (name, "LayerNorm"))


def xml_rules(model_config) -> list[Rule]:
    """Rules for the official XML built with ``model_config``'s streams and options."""
    model = xml.create_model(model_config)
    streams = model.streams
    rules = _position_rules("query_pos_embed") + _position_rules("ctx_pos_embed")
    rules += _input_rules("query_input_proj") + _block_rules("query_encoder")
    for c in streams:
        rules += _input_rules(f"{c}_input_proj")
        rules += _block_rules(f"{c}_encoder1") + _block_rules(f"{c}_encoder2")
        if model.use_cross_att:
            rules += _attention_rules(f"{c}_cross_att", (f"{c}_cross_att",))
            rules += _layer_norm_rules(f"{c}_cross_layernorm", (f"{c}_cross_layernorm",))
        else:
            rules += _block_rules(f"{c}_encoder3")
        rules += _dense_rules(f"{c}_query_linear", (f"{c}_query_linear",))
        if not model.use_merged_predictor:
            for edge in ("st", "ed"):
                name = f"{c}_{edge}_predictor"
                rules.append(Rule(f"{name}.weight", ("params", name, "kernel"), conv1d))
    rules += _dense_rules("modular_vector_mapping", ("modular_vector_mapping",), bias=False)
    if model.use_merged_predictor:
        for edge in ("st", "ed"):
            name = f"merged_{edge}_predictor"
            rules.append(Rule(f"{name}.weight", ("params", name, "kernel"), conv1d))
    return rules


def reference_variables(model_config) -> dict:
    """Shapes of the model's variables (``jax.eval_shape`` of its init on one example)."""
    model = xml.create_model(model_config)
    batch = xml.example_batch(model_config, 1, query_len=2, num_clips=2)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch, train=False))


def convert_xml(state_dict: Mapping[str, np.ndarray], model_config, reference=None) -> dict:
    """Official XML ``state_dict`` -> ``{'params': ...}`` (plus an empty ``batch_stats`` when
    ``reference`` has one).  Unused, missing or mis-shaped keys are a ``ConversionError``
    naming them.  ``reference``: the model's variables or their ``jax.eval_shape``."""
    if reference is None:
        reference = reference_variables(model_config)
    reference = dict(reference)
    has_batch_stats = "batch_stats" in reference
    reference = {"params": reference["params"]}
    variables = convert(state_dict, xml_rules(model_config), reference)
    if has_batch_stats:
        variables["batch_stats"] = {}
    return variables


def params_from_state_dict(state_dict: Mapping[str, np.ndarray], model_config) -> dict:
    """Official XML ``state_dict`` -> the Flax ``params`` tree (strict, see ``convert_xml``)."""
    return convert_xml(state_dict, model_config)["params"]


def config_from_official(opt: Mapping, *, sizes_include_tef: bool = False) -> dict:
    """``config.model`` fields (a ``dict`` with ``name='xml'``) from official options.

    ``opt`` is either the ``opt.json`` of an official results folder (``vid_feat_size``,
    ``sub_feat_size``, ``q_feat_size`` are the raw feature sizes there, because config.py saves
    the options before adding the 2 TEF columns) or the checkpoint's ``model_cfg``
    (``visual_input_size``, ``sub_input_size``, ``query_input_size`` include the TEF columns),
    or both merged (the sizes are then read from the ``model_cfg`` keys).
    ``sizes_include_tef=True`` says that ``vid_feat_size``/``sub_feat_size``
    come from an already-parsed ``opt`` (TEF included).  Missing options take the official
    defaults (``xml.DEFAULTS``); options the port does not implement must hold their default.
    """
    opt = dict(opt)
    if "ctx_mode" not in opt:
        raise KeyError("official options have no 'ctx_mode'")
    ctx_mode = str(opt["ctx_mode"])
    if ctx_mode not in xml.CTX_MODES:
        raise ValueError(f"ctx_mode {ctx_mode!r}: vmr_jax implements {xml.CTX_MODES}")
    for key, supported in ONLY_DEFAULT.items():
        value = opt.get(key, supported)
        if isinstance(value, list | tuple) and len(value) == 1:
            value = value[0]
        if value != supported:
            raise ValueError(f"official option {key}={value!r}: vmr_jax implements {supported!r}")
    tef = "tef" in ctx_mode
    model_cfg_sizes = any(
        k in opt for k in ("visual_input_size", "sub_input_size", "query_input_size")
    )
    sizes = {}
    for ours, opt_key, cfg_key, stream in (
        ("vid_feat_size", "vid_feat_size", "visual_input_size", "video"),
        ("sub_feat_size", "sub_feat_size", "sub_input_size", "sub"),
        ("q_feat_size", "q_feat_size", "query_input_size", None),
    ):
        adds_tef = tef and stream is not None and stream in ctx_mode
        if model_cfg_sizes and opt.get(cfg_key) is not None:
            value, with_tef = int(opt[cfg_key]), adds_tef
        elif opt.get(opt_key) is not None:
            value, with_tef = int(opt[opt_key]), adds_tef and sizes_include_tef
        else:
            continue
        sizes[ours] = value - 2 if with_tef else value

    fields = dict(xml.DEFAULTS, name="xml", ctx_mode=ctx_mode, **sizes)
    both = "video" in ctx_mode and "sub" in ctx_mode
    if "cross_att" in opt:
        fields["cross_att"] = bool(opt["cross_att"]) and both
    elif "no_cross_att" in opt:
        fields["cross_att"] = not opt["no_cross_att"] and both
    if "merge_two_stream" in opt:
        fields["merge_two_stream"] = bool(opt["merge_two_stream"]) and both
    elif "no_merge_two_stream" in opt:
        fields["merge_two_stream"] = not opt["no_merge_two_stream"] and both
    for key, value in opt.items():
        field = RENAMED.get(key, key)
        if field in sizes or field in ("ctx_mode", "cross_att", "merge_two_stream", "name"):
            continue
        if field in xml.DEFAULTS and value is not None:
            fields[field] = type(xml.DEFAULTS[field])(value)
    return fields


class _OfficialConfig(dict):
    """Stands in for ``easydict.EasyDict`` when reading a checkpoint's ``model_cfg``."""


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
}


class _CheckpointUnpickler(pickle.Unpickler):
    """Unpickler that builds only tensors, dicts and the official ``EasyDict`` config."""

    def find_class(self, module, name):
        if (module, name) == ("easydict", "EasyDict"):
            return _OfficialConfig
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"checkpoint refers to {module}.{name}, which an official XML checkpoint does not hold"
        )


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict | None]:
    """An official XML checkpoint -> ``(state_dict, model_cfg or None)``.

    ``.npz``: arrays (a ``weights/`` prefix, as in shared/golden, is removed), no config.
    Otherwise ``torch.load`` of ``{"model": state_dict, "model_cfg": ..., "epoch": ...}`` (or
    a bare state_dict) with an unpickler that only builds tensors, dicts and the EasyDict
    config; a ``module.`` prefix (DataParallel) is stripped.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if path.endswith(".npz"):
        return _load_npz(path), None
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading {path!r} needs PyTorch: pip install 'vmr_jax[torch]'") from err
    restricted = types.ModuleType("xml_checkpoint_pickle")
    restricted.Unpickler = _CheckpointUnpickler
    restricted.load = lambda f, **kw: _CheckpointUnpickler(f, **kw).load()
    obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted)
    model_cfg = None
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        model_cfg = obj.get("model_cfg")
        model_cfg = dict(model_cfg) if isinstance(model_cfg, Mapping) else None
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path!r} holds a {type(obj).__name__}, not an XML checkpoint")
    state_dict = {}
    for key, value in obj.items():
        if not hasattr(value, "detach"):
            raise ConversionError(f"{path!r}: entry {key!r} is not a tensor")
        state_dict[key.removeprefix("module.")] = value.detach().cpu().numpy()
    return state_dict, model_cfg


def load_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state_dict of an official XML checkpoint (``.ckpt``/``.pth`` or ``.npz``)."""
    return read_checkpoint(path)[0]


def model_config_from_golden(config_values: Mapping) -> ml_collections.ConfigDict:
    """``config.model`` from the ``config_values`` of a golden sidecar JSON (shared/golden):
    the assembled ``model_config`` with the parsed ``opt`` on top."""
    merged = {**config_values.get("model_config", {}), **config_values["opt"]}
    return ml_collections.ConfigDict(config_from_official(merged, sizes_include_tef=True))
