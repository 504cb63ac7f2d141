"""XML converter checks: every official key lands on its Flax leaf with the right layout,
strict key and shape errors, the official checkpoint format (``model`` + EasyDict
``model_cfg``) through a restricted unpickler, and the official options -> config.model."""

from __future__ import annotations

import json
import pickle

import jax
import ml_collections
import numpy as np
import pytest

from vmr_jax.convert import xml as convert
from vmr_jax.convert.state_dict import ConversionError, conv1d, linear
from vmr_jax.models import xml

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")


def _tiny(**overrides):
    config = ml_collections.ConfigDict(dict(xml.VARIANTS["tiny"], name="xml"))
    config.update(overrides)
    return config


def _fake_state_dict(config, seed=0):
    """Random arrays in PyTorch layout for every official key of ``config``'s XML."""
    rng = np.random.default_rng(seed)
    reference = convert.reference_variables(config)
    state_dict = {}
    for rule in convert.xml_rules(config):
        node = reference
        for part in rule.flax_path:
            node = node[part]
        value = rng.normal(size=node.shape).astype(np.float32)
        if rule.transform is linear:
            value = value.T  # Dense (in, out) <- Linear (out, in)
        elif rule.transform is conv1d:
            value = np.transpose(value, (2, 1, 0))  # Conv (k, in, out) <- Conv1d (out, in, k)
        state_dict[rule.torch_key] = value
    return state_dict


def test_round_trip_values_land_where_expected():
    config = _tiny()
    sd = _fake_state_dict(config)
    params = convert.params_from_state_dict(sd, config)
    # By hand: Linear (out, in) -> (in, out); Conv1d (1, 1, k) -> (k, 1, 1); LayerNorm
    # weight -> scale; BertAttention self.query -> attention/query, output.dense -> dense.
    w = sd["video_encoder2.self.query.weight"]
    np.testing.assert_array_equal(params["video_encoder2"]["attention"]["query"]["kernel"], w.T)
    np.testing.assert_array_equal(
        params["sub_encoder1"]["dense"]["bias"], sd["sub_encoder1.output.dense.bias"]
    )
    np.testing.assert_array_equal(
        params["merged_st_predictor"]["kernel"][:, 0, 0], sd["merged_st_predictor.weight"][0, 0]
    )
    np.testing.assert_array_equal(
        params["query_input_proj"]["LayerNorm"]["scale"], sd["query_input_proj.LayerNorm.weight"]
    )
    np.testing.assert_array_equal(
        params["query_input_proj"]["dense"]["kernel"], sd["query_input_proj.net.1.weight"].T
    )
    np.testing.assert_array_equal(
        params["ctx_pos_embed"]["position_embeddings"],
        sd["ctx_pos_embed.position_embeddings.weight"],
    )
    np.testing.assert_array_equal(
        params["video_cross_layernorm"]["bias"], sd["video_cross_layernorm.bias"]
    )
    assert params["modular_vector_mapping"]["kernel"].shape == (config.hidden_size, 2)
    # Every leaf of the model got a value: the params count equals the state_dict's.
    n_params = sum(np.size(v) for v in jax.tree_util.tree_leaves(params))
    assert n_params == sum(np.size(v) for v in sd.values())


@pytest.mark.parametrize(
    "overrides, keys",
    [
        (dict(ctx_mode="video_tef"), ["video_encoder3.self.key.bias", "video_st_predictor.weight"]),
        (dict(cross_att=False, merge_two_stream=False), ["sub_encoder3.output.dense.weight"]),
    ],
)
def test_rules_follow_the_official_constructor(overrides, keys):
    config = _tiny(**overrides)
    sd = _fake_state_dict(config)
    for key in keys:
        assert key in sd
    assert "merged_st_predictor.weight" not in sd
    convert.params_from_state_dict(sd, config)
    # A checkpoint of the two-stream merged model does not fit this config.
    with pytest.raises(ConversionError, match="unexpected keys.*merged_st_predictor"):
        convert.params_from_state_dict(_fake_state_dict(_tiny()), config)


def test_missing_unexpected_and_misshaped_keys_fail_clearly():
    config = _tiny()
    sd = _fake_state_dict(config)
    missing = dict(sd)
    del missing["sub_query_linear.bias"]
    with pytest.raises(ConversionError, match="missing keys.*sub_query_linear.bias"):
        convert.params_from_state_dict(missing, config)
    extra = dict(sd, **{"video_encoder3.self.query.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(ConversionError, match="unexpected keys.*video_encoder3"):
        convert.params_from_state_dict(extra, config)
    bad = dict(sd, **{"video_input_proj.net.1.weight": np.zeros((32, 35), np.float32)})
    with pytest.raises(ConversionError, match="video_input_proj.net.1.weight.*model expects"):
        convert.params_from_state_dict(bad, config)


def test_converted_weights_run_and_keep_an_empty_batch_stats_collection():
    config = _tiny()
    sd = _fake_state_dict(config, seed=1)
    reference = dict(convert.reference_variables(config), batch_stats={})
    variables = convert.convert_xml(sd, config, reference)
    assert variables["batch_stats"] == {}
    batch = xml.example_batch(config, 2, query_len=4, num_clips=6)
    out = xml.create_model(config).apply({"params": variables["params"]}, batch, train=False)
    assert out["st_logits"].shape == (2, 6)


def _official_checkpoint(tmp_path, state_dict, model_cfg, prefix=""):
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    import easydict  # the test extra: the official checkpoints pickle an EasyDict config

    path = tmp_path / "model.ckpt"
    checkpoint = {
        "model": {prefix + k: torch.from_numpy(v) for k, v in state_dict.items()},
        "model_cfg": easydict.EasyDict(model_cfg),
        "epoch": 7,
    }
    torch.save(checkpoint, path)
    return path


OFFICIAL_MODEL_CFG = dict(
    merge_two_stream=True,
    cross_att=True,
    span_predictor_type="conv",
    encoder_type="transformer",
    add_pe_rnn=False,
    pe_type="cosine",
    visual_input_size=34,
    sub_input_size=34,
    query_input_size=32,
    hidden_size=32,
    stack_conv_predictor_conv_kernel_sizes=-1,
    conv_kernel_size=5,
    conv_stride=1,
    max_ctx_l=128,
    max_desc_l=16,
    input_drop=0.1,
    cross_att_drop=0.1,
    drop=0.1,
    n_heads=4,
    initializer_range=0.02,
    ctx_mode="video_sub_tef",
    margin=0.1,
    ranking_loss_type="hinge",
    lw_neg_q=1,
    lw_neg_ctx=1,
    lw_st_ed=0.01,
    use_hard_negative=True,
    hard_pool_size=4,
    use_self_attention=True,
    no_modular=False,
)


def test_official_checkpoint_reads_with_its_model_cfg(tmp_path):
    config = _tiny()
    sd = _fake_state_dict(config, seed=2)
    path = _official_checkpoint(tmp_path, sd, OFFICIAL_MODEL_CFG, prefix="module.")
    state_dict, model_cfg = convert.read_checkpoint(path)
    assert set(state_dict) == set(sd)
    assert model_cfg["ctx_mode"] == "video_sub_tef" and model_cfg["visual_input_size"] == 34
    np.testing.assert_array_equal(
        convert.load_checkpoint(path)["sub_encoder1.self.key.bias"],
        sd["sub_encoder1.self.key.bias"],
    )
    # The stored model_cfg (TEF included in the input sizes) gives the tiny model back.
    fields = convert.config_from_official(model_cfg)
    for key in ("vid_feat_size", "sub_feat_size", "q_feat_size", "hidden_size", "max_ctx_l"):
        assert fields[key] == config[key], key
    params = convert.params_from_state_dict(state_dict, ml_collections.ConfigDict(fields))
    np.testing.assert_array_equal(
        params["video_query_linear"]["kernel"], sd["video_query_linear.weight"].T
    )


class _Exploit:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_checkpoint_with_foreign_objects_is_refused(tmp_path):
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    path = tmp_path / "evil.ckpt"
    torch.save({"model": {}, "model_cfg": _Exploit()}, path)
    with pytest.raises(
        pickle.UnpicklingError, match=r"print, which an official XML checkpoint does not hold"
    ):
        convert.read_checkpoint(path)


def test_npz_checkpoint_and_missing_file(tmp_path):
    config = _tiny()
    sd = _fake_state_dict(config, seed=3)
    path = tmp_path / "weights.npz"
    np.savez(path, **{f"weights/{k}": v for k, v in sd.items()})
    state_dict, model_cfg = convert.read_checkpoint(path)
    assert model_cfg is None and set(state_dict) == set(sd)
    with pytest.raises(FileNotFoundError, match="nothing.ckpt"):
        convert.load_checkpoint(tmp_path / "nothing.ckpt")


def test_options_json_translation():
    """An ``opt.json`` as config.py saves it (before the TEF columns are added to the sizes),
    with the official spelling ``hard_negtiave_start_epoch``."""
    opt = {
        "ctx_mode": "video_tef",
        "vid_feat_size": 3072,
        "sub_feat_size": 768,
        "q_feat_size": 768,
        "hidden_size": 256,
        "no_cross_att": False,
        "no_merge_two_stream": False,
        "hard_negtiave_start_epoch": 30,
        "train_span_start_epoch": 2,
        "no_norm_vfeat": True,
        "nms_thd": -1,
        "clip_length": 1.5,
        "exp_id": "run1",
        "eval_query_bsz": 50,
    }
    fields = convert.config_from_official(opt)
    assert fields["vid_feat_size"] == 3072 and fields["name"] == "xml"
    assert fields["hard_negative_start_epoch"] == 30 and fields["train_span_start_epoch"] == 2
    # One stream: config.py turns cross attention and the merged predictor off.
    assert fields["cross_att"] is False and fields["merge_two_stream"] is False
    assert fields["nms_thd"] == -1.0
    parsed = dict(opt, vid_feat_size=3074)  # an opt after BaseOptions.parse
    assert convert.config_from_official(parsed, sizes_include_tef=True)["vid_feat_size"] == 3072
    with pytest.raises(ValueError, match="encoder_type='gru'"):
        convert.config_from_official(dict(opt, encoder_type="gru"))
    with pytest.raises(ValueError, match="ctx_mode 'tef'"):
        convert.config_from_official(dict(opt, ctx_mode="tef"))


def test_golden_options_translate_and_the_weights_fit(xml_golden):
    """Every option of the golden's parsed ``opt`` that vmr_jax keeps arrives unchanged
    (sizes: the model's input sizes minus the TEF columns), and the official weights fit."""
    meta = json.loads(xml_golden.with_suffix(".json").read_text())
    values = meta["config_values"]
    config = convert.model_config_from_golden(values)
    opt, model_cfg = values["opt"], values["model_config"]
    renamed = {v: k for k, v in convert.RENAMED.items()}
    sizes = {"vid_feat_size", "sub_feat_size"}
    for key in xml.DEFAULTS:
        official = renamed.get(key, key)
        if official in opt and key not in sizes:
            assert config[key] == opt[official], key
    tef = 2 if "tef" in config.ctx_mode else 0
    if "video" in config.ctx_mode:
        assert config.vid_feat_size == model_cfg["visual_input_size"] - tef
    if "sub" in config.ctx_mode:
        assert config.sub_feat_size == model_cfg["sub_input_size"] - tef
    assert config.cross_att == model_cfg["cross_att"]
    assert config.merge_two_stream == model_cfg["merge_two_stream"]
    params = convert.params_from_state_dict(convert.load_checkpoint(xml_golden), config)
    n_params = sum(np.size(v) for v in jax.tree_util.tree_leaves(params))
    assert n_params == meta["n_params"]


def test_tvr_variant_is_the_official_tvr_configuration():
    """VARIANTS['tvr'] = config.py defaults + scripts/train.sh tvr video_sub_tef resnet_i3d
    (values read off the official files by hand)."""
    tvr = xml.VARIANTS["tvr"]
    assert (tvr["ctx_mode"], tvr["vid_feat_size"], tvr["sub_feat_size"]) == (
        "video_sub_tef",
        3072,
        768,
    )
    assert (tvr["hidden_size"], tvr["n_heads"], tvr["conv_kernel_size"]) == (256, 4, 5)
    assert (tvr["max_ctx_l"], tvr["max_desc_l"], tvr["clip_length"]) == (100, 30, 1.5)
    assert (tvr["margin"], tvr["lw_st_ed"], tvr["lw_neg_q"], tvr["lw_neg_ctx"]) == (
        0.1,
        0.01,
        1.0,
        1.0,
    )
    assert (tvr["hard_negative_start_epoch"], tvr["hard_pool_size"]) == (20, 20)
    assert (tvr["q2c_alpha"], tvr["min_pred_l"], tvr["max_pred_l"]) == (20.0, 2, 16)
    assert (tvr["max_before_nms"], tvr["max_vcmr_video"], tvr["nms_thd"]) == (200, 100, 0.5)
    assert tvr["no_norm_vfeat"] and not tvr["no_norm_tfeat"]


def test_convert_command_writes_a_workdir_with_the_official_video_scores(xml_golden, tmp_path):
    """``vmr-jax convert --model xml`` on the golden weights + an ``opt.json`` as the official
    config.py saves it (raw feature sizes, the misspelt option), then the step-0 checkpoint
    restored from the workdir gives the official corpus scores."""
    from vmr_jax import checkpointing
    from vmr_jax.main import main

    meta = json.loads(xml_golden.with_suffix(".json").read_text())
    opt = dict(meta["config_values"]["opt"])
    opt["vid_feat_size"] -= 2  # opt.json is saved before config.py adds the TEF columns
    opt["sub_feat_size"] -= 2
    opt_path = tmp_path / "opt.json"
    opt_path.write_text(json.dumps(opt))
    workdir = tmp_path / "converted"
    args = ["convert", "--model", "xml", "--checkpoint", str(xml_golden), "--opt", str(opt_path)]
    assert main([*args, "--workdir", str(workdir)]) == 0
    config = checkpointing.load_config(str(workdir))
    assert config.model.name == "xml"
    assert config.model.vid_feat_size == 3072 and config.model.hidden_size == opt["hidden_size"]
    assert config.model.hard_negative_start_epoch == opt["hard_negtiave_start_epoch"]
    assert config.train.optimizer == "bert_adam"  # the rest from configs/xml/tvr.py
    manager = checkpointing.create_checkpoint_manager(str(workdir), config.train, read_only=True)
    assert manager.all_steps() == [0]
    variables = {"params": manager.restore(0)["params"]}
    with np.load(xml_golden) as z:
        # Golden inputs carry the 2 TEF columns and are normalised: the model adds its own.
        batch = {
            "query_features": z["inputs/query_feat"],
            "query_mask": z["inputs/query_mask"],
            "video_features": z["inputs/video_feat"][..., :-2],
            "video_mask": z["inputs/video_mask"],
            "subtitle_features": z["inputs/sub_feat"][..., :-2],
        }
        want = z["infer/get_pred_from_raw_query/q2ctx_scores"]
    model = xml.create_model(config.model)
    with jax.default_matmul_precision("highest"):
        queries = model.apply(variables, batch, method=xml.XML.encode_queries)
        videos = model.apply(variables, batch, method=xml.XML.encode_videos)
        scores = model.apply(variables, queries, videos, method=xml.XML.score_videos)
    np.testing.assert_allclose(np.asarray(scores), want, atol=1e-4, rtol=0)
