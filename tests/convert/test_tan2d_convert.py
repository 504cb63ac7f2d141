"""2D-TAN converter checks: layouts, strict keys and shapes, torch.load path, official YAML
translation, and ``vmr-jax convert --model tan2d`` on the golden weights."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from vmr_jax.convert.state_dict import ConversionError, load_state_dict
from vmr_jax.convert.tan2d import config_from_yaml, convert_tan2d, tan2d_rules
from vmr_jax.models import tan2d

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")  # speed only

CONV2D_1X1 = ("fusion_layer.vis_conv", "pred_layer")


def _tiny(**overrides):
    config = ml_collections.ConfigDict(dict(tan2d.VARIANTS["tiny"]))
    config.update(overrides)
    model = tan2d.create_model(config)
    batch = tan2d.example_batch(config, batch_size=1, query_len=5)
    variables = model.init(jax.random.PRNGKey(0), batch, train=False)
    return config, model, batch, variables


def _fake_state_dict(config, variables, seed=0):
    """A state_dict in PyTorch layout, built from the rules' expected Flax shapes."""
    rng = np.random.default_rng(seed)
    out = {}
    for rule in tan2d_rules(config):
        node = variables
        for part in rule.flax_path:
            node = node[part]
        value = rng.normal(size=np.shape(node)).astype(np.float32)
        kind = rule.transform.__name__
        if kind == "linear":
            value = value.T
        elif kind == "conv1x1":
            ones = (1, 1) if rule.torch_key.startswith(CONV2D_1X1) else (1,)
            value = value.T.reshape(value.shape[1], value.shape[0], *ones)
        elif kind == "conv1d":
            value = np.transpose(value, (2, 1, 0))
        elif kind == "conv2d":
            value = np.transpose(value, (3, 2, 0, 1))
        out[rule.torch_key] = value
    return out


def test_layouts_land_where_expected():
    config, _, _, variables = _tiny()
    sd = _fake_state_dict(config, variables)
    params = convert_tan2d(sd, config, variables)["params"]
    # tiny NUM_SCALE_LAYERS [8, 4]: layers 0..7 of scale 0, then scale 1 -> flat index 8 is
    # prop_layer.layers.1.0, the width-3 stride-2 Conv1d (out, in, k) -> (k, in, out).
    w = sd["prop_layer.layers.1.0.weight"]
    assert w.shape == (16, 16, 3)
    np.testing.assert_array_equal(params["prop_convs_8"]["kernel"][2, 5, 7], w[7, 5, 2])
    w = sd["map_layer.convs.2.weight"]  # Conv2d (out, in, kh, kw) -> (kh, kw, in, out)
    np.testing.assert_array_equal(params["map_convs_2"]["kernel"][0, 2, 3, 1], w[1, 3, 0, 2])
    w = sd["fusion_layer.textual_encoder.weight_ih_l0"]  # (4H, D) -> (D, 4H), gates i,f,g,o
    np.testing.assert_array_equal(params["textual_encoder"]["l0"]["w_ih"], w.T)
    w = sd["fusion_layer.vis_conv.weight"]  # (out, in, 1, 1) -> (in, out)
    np.testing.assert_array_equal(params["vis_conv"]["kernel"], w[:, :, 0, 0].T)
    w = sd["frame_layer.vis_conv.weight"]  # Conv1d (out, in, 1) -> (in, out)
    np.testing.assert_array_equal(params["frame_conv"]["kernel"], w[:, :, 0].T)
    np.testing.assert_array_equal(params["tex_linear"]["bias"], sd["fusion_layer.tex_linear.bias"])


def test_missing_unexpected_and_misshaped_keys_fail_clearly():
    config, _, _, variables = _tiny()
    sd = _fake_state_dict(config, variables)
    missing = dict(sd)
    del missing["pred_layer.bias"]
    with pytest.raises(ConversionError, match="missing keys.*pred_layer.bias"):
        convert_tan2d(missing, config, variables)
    extra = dict(sd, **{"map_layer.convs.3.weight": np.zeros((16, 16, 3, 3), np.float32)})
    with pytest.raises(ConversionError, match="unexpected keys.*map_layer.convs.3.weight"):
        convert_tan2d(extra, config, variables)
    bad = dict(sd)
    bad["fusion_layer.tex_linear.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ConversionError, match="tex_linear.weight.*model expects"):
        convert_tan2d(bad, config, variables)
    # A SparsePropConv checkpoint does not load into a SparsePropMaxPool model: its 12
    # proposal convs are named as unexpected.
    pool_config, _, _, pool_vars = _tiny(prop="pool")
    with pytest.raises(ConversionError, match="unexpected keys.*prop_layer.layers.1.3.bias"):
        convert_tan2d(sd, pool_config, pool_vars)
    pool_sd = {k: v for k, v in sd.items() if not k.startswith("prop_layer.")}
    convert_tan2d(pool_sd, pool_config, pool_vars)


def test_torch_checkpoint_loads_like_numpy(tmp_path):
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    config, model, batch, variables = _tiny()
    sd = _fake_state_dict(config, variables, seed=3)
    path = tmp_path / "iter000100-0.1000-0.2000.pkl"
    torch.save({"module." + k: torch.from_numpy(v) for k, v in sd.items()}, path)
    loaded = load_state_dict(path)
    assert set(loaded) == set(sd)
    a = convert_tan2d(loaded, config, variables)
    b = convert_tan2d(sd, config, variables)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    model.apply(a, batch, train=False)  # runs


# experiments/tacos/2D-TAN-128x128-K5L8-pool.yaml (microsoft/2D-TAN @ 2f7410f), typed by hand
# without WORKERS/paths/CUDNN/MODEL.
OFFICIAL_TACOS_POOL_YAML = textwrap.dedent(
    """
    DATASET:
      NAME: TACoS
      VIS_INPUT_TYPE: c3d
      NO_VAL: False
      NUM_SAMPLE_CLIPS: 256
      TARGET_STRIDE: 2
      NORMALIZE: True
      RANDOM_SAMPLING: False
    TEST:
      BATCH_SIZE: 32
      RECALL: 1,5
      TIOU: 0.1,0.3,0.5,0.7
      EVAL_TRAIN: True
      NMS_THRESH: 0.4
    TRAIN:
      BATCH_SIZE: 32
      LR: 0.0001
      WEIGHT_DECAY: 0.0000
      MAX_EPOCH: 100
      CONTINUE: False
    LOSS:
      NAME: bce_rescale_loss
      PARAMS: {MIN_IOU: 0.3, MAX_IOU: 0.7, BIAS: 0.0}
    TAN:
      FRAME_MODULE:
        NAME: FrameAvgPool
        PARAMS: {INPUT_SIZE: 4096, HIDDEN_SIZE: 512, KERNEL_SIZE: 2, STRIDE: 2}
      PROP_MODULE:
        NAME: SparsePropMaxPool
        PARAMS: {NUM_SCALE_LAYERS: [16,8,8,8]}
      FUSION_MODULE:
        NAME: BaseFusion
        PARAMS:
          HIDDEN_SIZE: 512
          TXT_INPUT_SIZE: 300
          TXT_HIDDEN_SIZE: 512
          LSTM: {NUM_LAYERS: 3, BIDIRECTIONAL: False}
      MAP_MODULE:
        NAME: MapConv
        PARAMS:
          INPUT_SIZE: 512
          HIDDEN_SIZES: [512, 512, 512, 512, 512, 512, 512, 512]
          KERNEL_SIZES: [5, 5, 5, 5, 5, 5, 5, 5]
          STRIDES: [1, 1, 1, 1, 1, 1, 1, 1]
          PADDINGS: [16, 0, 0, 0, 0, 0, 0, 0]
          DILATIONS: [1, 1, 1, 1, 1, 1, 1, 1]
      PRED_INPUT_SIZE: 512
    """
)


def test_yaml_translation_matches_the_tacos_pool_variant_and_config(tmp_path):
    from vmr_jax import config_cli

    path = tmp_path / "2D-TAN-128x128-K5L8-pool.yaml"
    path.write_text(OFFICIAL_TACOS_POOL_YAML)
    config = config_from_yaml(path)
    model = config.model
    # By hand from the YAML above: 256 sampled clips / stride 2 = 128 map clips.
    assert (model.feature_dim, model.num_clips, model.frame_stride) == (4096, 128, 2)
    assert tuple(model.num_scale_layers) == (16, 8, 8, 8) and model.prop == "pool"
    assert (model.min_iou, model.max_iou, model.bias) == (0.3, 0.7, 0.0)
    assert tuple(model.map_paddings) == (16, 0, 0, 0, 0, 0, 0, 0)
    for key, value in tan2d.VARIANTS["tacos_pool"].items():
        assert model[key] == value, key
    assert (config.train.lr, config.train.batch_size, config.train.num_epochs) == (1e-4, 32, 100)
    assert config.evals.ious == (0.1, 0.3, 0.5, 0.7) and config.evals.nms_thresh == 0.4
    assert (config.data.name, config.data.features) == ("tacos", "c3d")
    ours = config_cli.load_config(
        f"{Path(__file__).parents[2] / 'configs' / 'tan2d' / 'tacos.py'}:pool"
    )
    for key, value in config.model.items():
        assert ours.model[key] == value, key
    for key in ("lr", "batch_size", "num_epochs", "grad_clip_norm"):
        assert ours.train[key] == config.train[key], key
    for key in ("ious", "nms_thresh", "recalls", "batch_size"):
        assert ours.evals[key] == config.evals[key], key


def test_yaml_with_unknown_module_or_inconsistent_sizes_fails(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        OFFICIAL_TACOS_POOL_YAML.replace("NAME: SparsePropMaxPool", "NAME: PropMaxPool")
    )
    with pytest.raises(ValueError, match="bad.yaml: TAN.PROP_MODULE.NAME is 'PropMaxPool'"):
        config_from_yaml(path)
    path.write_text(OFFICIAL_TACOS_POOL_YAML.replace("INPUT_SIZE: 512", "INPUT_SIZE: 256"))
    with pytest.raises(ValueError, match="MAP_MODULE.INPUT_SIZE is 256"):
        config_from_yaml(path)
    path.write_text(
        OFFICIAL_TACOS_POOL_YAML.replace("KERNEL_SIZE: 2, STRIDE: 2", "KERNEL_SIZE: 4, STRIDE: 4")
    )
    with pytest.raises(ValueError, match="TARGET_STRIDE"):
        config_from_yaml(path)


def _official_yaml(config_values) -> str:
    """The official experiment YAML of a golden case, from its sidecar ``config_values``."""
    import yaml

    test = config_values["test"]
    official = {
        "DATASET": {
            "NAME": "Charades",
            "VIS_INPUT_TYPE": "vgg_rgb",
            "NUM_SAMPLE_CLIPS": int(config_values["NUM_SAMPLE_CLIPS"]),
            "TARGET_STRIDE": int(config_values["TARGET_STRIDE"]),
            "NORMALIZE": True,
        },
        "TEST": {"BATCH_SIZE": 32, **test},
        "TRAIN": {"BATCH_SIZE": 32, "LR": 0.0001, "MAX_EPOCH": 100},
        "LOSS": config_values["loss"],
        "TAN": {
            "FRAME_MODULE": config_values["frame_module"],
            "PROP_MODULE": config_values["prop_module"],
            "FUSION_MODULE": config_values["fusion_module"],
            "MAP_MODULE": config_values["map_module"],
            "PRED_INPUT_SIZE": int(config_values["pred_input"]),
        },
    }
    return yaml.safe_dump(official)


def test_convert_command_writes_a_workdir_that_reproduces_the_official_prediction(
    tan2d_golden, tmp_path
):
    """``vmr-jax convert --model tan2d`` on the golden weights saved as an official torch
    checkpoint + the YAML, then the step-0 checkpoint restored from the workdir gives the
    official prediction."""
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    from vmr_jax import checkpointing
    from vmr_jax.main import main

    meta = json.loads(tan2d_golden.with_suffix(".json").read_text())
    yaml_path = tmp_path / "experiment.yaml"
    yaml_path.write_text(_official_yaml(meta["config_values"]))
    checkpoint = tmp_path / "iter005418-0.4277-0.8062.pkl"
    weights = load_state_dict(tan2d_golden)
    torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, checkpoint)
    workdir = tmp_path / "converted"
    argv = ["convert", "--model", "tan2d", "--checkpoint", str(checkpoint)]
    assert main(argv + ["--yaml", str(yaml_path), "--workdir", str(workdir)]) == 0
    config = checkpointing.load_config(str(workdir))
    assert config.model.name == "tan2d"
    assert config.model.hidden == meta["config_values"]["hidden"]
    assert config.evals.nms_thresh == meta["config_values"]["test"]["NMS_THRESH"]
    manager = checkpointing.create_checkpoint_manager(str(workdir), config.train, read_only=True)
    assert manager.all_steps() == [0]
    restored = manager.restore(0)
    with np.load(tan2d_golden) as z:
        batch = {
            "video_features": z["inputs/visual_input"],
            "query_features": z["inputs/textual_input"],
            "query_mask": z["inputs/textual_mask"][..., 0],
        }
        want = z["outputs/prediction"][:, 0]
    out = tan2d.create_model(config.model).apply({"params": restored["params"]}, batch, train=False)
    np.testing.assert_allclose(np.asarray(out["prediction"]), want, atol=1e-4, rtol=0)
