"""Converter checks: strict keys and shapes, torch.load path, official YAML translation."""

from __future__ import annotations

import json
import textwrap

import jax
import ml_collections
import numpy as np
import pytest

from data_pipelines.benchmarks import get_benchmark
from vmr_jax.convert.mgpn import UNUSED_KEYS, config_from_yaml, convert_mgpn, mgpn_rules
from vmr_jax.convert.state_dict import ConversionError, load_state_dict
from vmr_jax.models import mgpn


def _tiny():
    config = ml_collections.ConfigDict(dict(mgpn.VARIANTS["tiny"]))
    model = mgpn.create_model(config)
    t = config.num_clips * config.frame_stride
    batch = {
        "video_features": np.zeros((1, t, config.feature_dim), np.float32),
        "query_features": np.zeros((1, 5, config.word_dim), np.float32),
        "query_mask": np.ones((1, 5), np.float32),
    }
    variables = model.init(jax.random.PRNGKey(0), batch, train=False)
    return config, model, batch, variables


def _fake_state_dict(config, variables, seed=0):
    """A state_dict in PyTorch layout, built from the rules' expected Flax shapes."""
    rng = np.random.default_rng(seed)
    flat = {}
    for rule in mgpn_rules(config):
        node = variables
        for part in rule.flax_path:
            node = node[part]
        shape = np.shape(node)
        # Invert the layout transforms by shape: find a PyTorch shape that maps to `shape`.
        value = rng.normal(size=shape).astype(np.float32)
        if rule.transform.__name__ in ("linear",):
            value = value.T
        elif rule.transform.__name__ == "conv1x1":
            # Conv2d (relation_layer, pred_layer) has two trailing unit dims, Conv1d one.
            is_2d = rule.torch_key.startswith(("relation_layer", "pred_layer"))
            value = value.T.reshape(shape[1], shape[0], *([1] * (2 if is_2d else 1)))
        elif rule.transform.__name__ == "conv1d":
            value = np.transpose(value, (2, 1, 0))
        elif rule.transform.__name__ == "conv2d":
            value = np.transpose(value, (3, 2, 0, 1))
        flat[rule.torch_key] = value
    return flat


def test_round_trip_values_land_where_expected():
    config, _, _, variables = _tiny()
    sd = _fake_state_dict(config, variables)
    out = convert_mgpn(sd, config, variables)
    # Hand-checked layouts: Linear (out, in) -> (in, out); Conv2d (out, in/g, kh, kw) ->
    # (kh, kw, in/g, out); GRU weight_ih (3H, D) -> (D, 3H).
    np.testing.assert_array_equal(
        out["params"]["text_gate"]["kernel"], sd["interactor_layer2.txt_linear_b1.weight"].T
    )
    w = sd["relation_layer.conv_block2.conv.weight"]
    np.testing.assert_array_equal(out["params"]["conv_block2"]["kernel"][1, 2, 0, 3], w[3, 0, 1, 2])
    np.testing.assert_array_equal(
        out["params"]["txt_gru"]["l0"]["w_ih_reverse"],
        sd["encoder_layer.txt_encoder.weight_ih_l0_reverse"].T,
    )
    np.testing.assert_array_equal(
        out["batch_stats"]["conv_block4"]["bn"]["var"],
        sd["relation_layer.conv_block4.bn.running_var"],
    )


def test_missing_unexpected_and_misshaped_keys_fail_clearly():
    config, _, _, variables = _tiny()
    sd = _fake_state_dict(config, variables)
    missing = dict(sd)
    del missing["pred_layer.bias"]
    with pytest.raises(ConversionError, match="missing keys.*pred_layer.bias"):
        convert_mgpn(missing, config, variables)
    extra = dict(sd, **{"relation_layer.conv_block5.conv.weight": np.zeros(3)})
    with pytest.raises(ConversionError, match="unexpected keys.*conv_block5"):
        convert_mgpn(extra, config, variables)
    bad = dict(sd)
    bad["finegrained_layer.txt_linear.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ConversionError, match="txt_linear.weight.*model expects"):
        convert_mgpn(bad, config, variables)
    # The official generator's unused conv1d and BatchNorm counters are accepted.
    ok = dict(sd, **{k: np.zeros(2, np.float32) for k in UNUSED_KEYS})
    ok["relation_layer.conv_block1.bn.num_batches_tracked"] = np.zeros((), np.int64)
    convert_mgpn(ok, config, variables)


def test_torch_checkpoint_loads_like_numpy(tmp_path):
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    config, model, batch, variables = _tiny()
    sd = _fake_state_dict(config, variables, seed=3)
    path = tmp_path / "mgpn.pkl"
    torch.save({"module." + k: torch.from_numpy(v) for k, v in sd.items()}, path)
    loaded = load_state_dict(path)
    assert set(loaded) == set(sd)
    a = convert_mgpn(loaded, config, variables)
    b = convert_mgpn(sd, config, variables)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    model.apply(a, batch, train=False)  # runs


OFFICIAL_TACOS_YAML = textwrap.dedent(
    """
    DATASET:
      NAME: TACoS
      VIS_INPUT_TYPE: c3d
      NUM_SAMPLE_CLIPS: 256
      TARGET_STRIDE: 2
      NORMALIZE: True
    TEST:
      BATCH_SIZE: 32
      RECALL: 1,5
      TIOU: 0.1,0.3,0.5,0.7
      NMS_THRESH: 0.4
    TRAIN:
      BATCH_SIZE: 32
      LR: 0.001
      WEIGHT_DECAY: 0.0000
      MAX_EPOCH: 15
      GAMMA: 0.1
      MILESTONES: [16, 19]
    LOSS1:
      NAME: bce_rescale_loss
      PARAMS: {MIN_IOU: 0.3, MAX_IOU: 0.7, BIAS: 0.0}
    MGPN:
      COARSE_GRAINED_ENCODER:
        NAME: FeatureEncoder
        PARAMS:
          FRAME: {INPUT_SIZE: 4096, HIDDEN_SIZE: 256, KERNEL_SIZE: 2, STRIDE: 2,
                  USE_POSITION: False, NUM_CLIPS: 128}
          GRU: {TXT_INPUT_SIZE: 300, TXT_HIDDEN_SIZE: 256, VIS_INPUT_SIZE: 256,
                VIS_HIDDEN_SIZE: 256, NUM_LAYERS: 3, BIDIRECTIONAL: True}
      COATTENTION_MODULE: {NAME: FirstFuse}
      CHOICE_GENERATOR:
        NAME: SparseBoundaryContent
        PARAMS: {NUM_CLIPS: 128, NUM_SCALE_LAYERS: [15,8,8,8]}
      FINE_GRAINED_ENCODER: {NAME: FineGrainedFeature}
      CONDITIONED_INTERACTION_MODULE: {NAME: SecondFuse}
      CHOICE_COMPARISON_MODULE: {NAME: ConvModule}
      PRED_INPUT_SIZE: 256
    """
)


def test_yaml_translation_matches_the_tacos_variant(tmp_path):
    path = tmp_path / "mgpn256.yaml"
    path.write_text(OFFICIAL_TACOS_YAML)
    config = config_from_yaml(path)
    # By hand from the YAML above: 256 sampled clips / stride 2 = 128 map clips.
    model = config.model
    assert (model.feature_dim, model.num_clips, model.frame_stride) == (4096, 128, 2)
    assert tuple(model.pooling_counts) == (15, 8, 8, 8) and model.gru_layers == 3
    assert (model.min_iou, model.max_iou, model.use_position) == (0.3, 0.7, False)
    want = mgpn.VARIANTS["tacos"]
    for key, value in want.items():
        assert config.model[key] == value, key
    assert config.train.milestones == (16, 19) and config.train.batch_size == 32
    assert config.evals.ious == (0.1, 0.3, 0.5, 0.7) and config.evals.nms_thresh == 0.4
    assert config.data.num_input_clips == 256
    # The YAML's DATASET.NAME becomes the data registry key.
    assert config.data.name == "tacos" and get_benchmark(config.data.name).NAME == "tacos"
    charades = config_from_yaml(_with_dataset(tmp_path, "Charades"))
    assert charades.data.name == "charades_sta"
    assert get_benchmark(charades.data.name).NAME == "charades_sta"


def _with_dataset(tmp_path, name):
    path = tmp_path / f"{name}.yaml"
    path.write_text(OFFICIAL_TACOS_YAML.replace("NAME: TACoS", f"NAME: {name}"))
    return path


def test_yaml_with_unknown_module_or_missing_field_fails(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(OFFICIAL_TACOS_YAML.replace("NAME: ConvModule", "NAME: NoNLocalModule"))
    with pytest.raises(ValueError, match="CHOICE_COMPARISON_MODULE.NAME"):
        config_from_yaml(path)
    path.write_text(OFFICIAL_TACOS_YAML.replace("  TARGET_STRIDE: 2\n", ""))
    with pytest.raises(KeyError, match="bad.yaml: missing field DATASET.TARGET_STRIDE"):
        config_from_yaml(path)


def _official_yaml(config_values) -> str:
    """The official experiment YAML of a golden case, from its sidecar ``config_values``."""
    import yaml

    stride = int(config_values["TARGET_STRIDE"])
    hidden = int(config_values["hidden"])
    gru = config_values["gru"]
    test = config_values["test"]
    n = int(config_values["N_clips_map"])
    official = {
        "DATASET": {
            "NAME": "Charades",
            "NUM_SAMPLE_CLIPS": int(config_values["NUM_SAMPLE_CLIPS"]),
            "TARGET_STRIDE": stride,
            "NORMALIZE": True,
        },
        "TEST": {"BATCH_SIZE": 64, **test},
        "TRAIN": {"BATCH_SIZE": 64, "LR": 0.001, "MAX_EPOCH": 15, "MILESTONES": [5, 8]},
        "LOSS1": config_values["loss"],
        "MGPN": {
            "COARSE_GRAINED_ENCODER": {
                "NAME": "FeatureEncoder",
                "PARAMS": {
                    "FRAME": {
                        "INPUT_SIZE": int(config_values["feature_dim"]),
                        "HIDDEN_SIZE": hidden,
                        "KERNEL_SIZE": stride,
                        "STRIDE": stride,
                        "USE_POSITION": bool(config_values["use_learned_position"]),
                        "NUM_CLIPS": n,
                    },
                    "GRU": {
                        "TXT_INPUT_SIZE": int(gru["txt_input"]),
                        "TXT_HIDDEN_SIZE": hidden,
                        "NUM_LAYERS": int(gru["layers"]),
                        "BIDIRECTIONAL": True,
                    },
                },
            },
            "COATTENTION_MODULE": {"NAME": "FirstFuse"},
            "CHOICE_GENERATOR": {
                "NAME": "SparseBoundaryContent",
                "PARAMS": {"NUM_CLIPS": n, "NUM_SCALE_LAYERS": config_values["NUM_SCALE_LAYERS"]},
            },
            "FINE_GRAINED_ENCODER": {"NAME": "FineGrainedFeature"},
            "CONDITIONED_INTERACTION_MODULE": {"NAME": "SecondFuse"},
            "CHOICE_COMPARISON_MODULE": {"NAME": "ConvModule"},
        },
    }
    return yaml.safe_dump(official)


def test_convert_command_writes_a_workdir_that_reproduces_the_official_scores(
    mgpn_golden, tmp_path
):
    """``vmr-jax convert`` on the golden weights + the official YAML, then the step-0
    checkpoint restored from the workdir gives the official score map."""
    from vmr_jax import checkpointing
    from vmr_jax.main import main

    meta = json.loads(mgpn_golden.with_suffix(".json").read_text())
    yaml_path = tmp_path / "experiment.yaml"
    yaml_path.write_text(_official_yaml(meta["config_values"]))
    workdir = tmp_path / "converted"
    code = main(
        [
            "convert",
            "--checkpoint",
            str(mgpn_golden),
            "--yaml",
            str(yaml_path),
            "--workdir",
            str(workdir),
        ]
    )
    assert code == 0
    config = checkpointing.load_config(str(workdir))
    assert config.model.num_clips == meta["config_values"]["N_clips_map"]
    assert config.evals.nms_thresh == meta["config_values"]["test"]["NMS_THRESH"]
    manager = checkpointing.create_checkpoint_manager(str(workdir), config.train, read_only=True)
    assert manager.all_steps() == [0]
    restored = manager.restore(0)
    variables = {"params": restored["params"], "batch_stats": restored["batch_stats"]}
    with np.load(mgpn_golden) as z:
        batch = {
            "video_features": z["inputs/visual_input"],
            "query_features": z["inputs/textual_input"],
            "query_mask": z["inputs/textual_mask"][..., 0],
        }
        want = z["outputs/score_map"][:, 0]
    out = mgpn.create_model(config.model).apply(variables, batch, train=False)
    np.testing.assert_allclose(np.asarray(out["score_map"]), want, atol=1e-4, rtol=0)
