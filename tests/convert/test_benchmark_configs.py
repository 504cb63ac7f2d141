"""``vmr-jax convert --yaml`` without ``--config``: each official experiment YAML picks its
shipped benchmark config; the YAML's values go on top (NORMALIZE absent: the official False);
a YAML that maps to no config is refused, naming the field.

The YAML texts below carry the official keys and values of Huntersxsx/MGPN
``experiments/*/*.yaml`` and microsoft/2D-TAN ``experiments/*/*.yaml``, typed by hand (paths,
WORKERS, CUDNN and the unused module PARAMS left out); every expected value is read off them
by hand.
"""

from __future__ import annotations

import dataclasses

import pytest

from vmr_jax import config_cli
from vmr_jax.convert.cli import build_config
from vmr_jax.main import main

MGPN_YAML = """\
DATASET:
  NAME: {name}
  VIS_INPUT_TYPE: {vis}
  NO_VAL: {no_val}
  NUM_SAMPLE_CLIPS: 256
  TARGET_STRIDE: {stride}
  NORMALIZE: True
  RANDOM_SAMPLING: False
TEST:
  BATCH_SIZE: {batch}
  RECALL: 1,5
  TIOU: {tiou}
  EVAL_TRAIN: False
  NMS_THRESH: {nms}
TRAIN:
  BATCH_SIZE: {batch}
  LR: 0.001
  WEIGHT_DECAY: 0.0000
  MAX_EPOCH: 15
  CONTINUE: False
  STEPSIZE: 15
  GAMMA: 0.1
  MILESTONES: {milestones}
LOSS1:
  NAME: bce_rescale_loss
  PARAMS: {{MIN_IOU: {min_iou}, MAX_IOU: {max_iou}, BIAS: 0.0}}
MGPN:
  COARSE_GRAINED_ENCODER:
    NAME: FeatureEncoder
    PARAMS:
      FRAME: {{INPUT_SIZE: {dim}, HIDDEN_SIZE: 256, KERNEL_SIZE: {stride}, STRIDE: {stride},
              USE_POSITION: {position}, NUM_CLIPS: {clips}}}
      GRU: {{TXT_INPUT_SIZE: 300, TXT_HIDDEN_SIZE: 256, VIS_INPUT_SIZE: 256,
            VIS_HIDDEN_SIZE: 256, NUM_LAYERS: {layers}, BIDIRECTIONAL: True}}
  COATTENTION_MODULE: {{NAME: FirstFuse}}
  CHOICE_GENERATOR:
    NAME: SparseBoundaryContent
    PARAMS: {{NUM_CLIPS: {clips}, NUM_SCALE_LAYERS: {scales}}}
  FINE_GRAINED_ENCODER: {{NAME: FineGrainedFeature}}
  CONDITIONED_INTERACTION_MODULE: {{NAME: SecondFuse}}
  CHOICE_COMPARISON_MODULE: {{NAME: ConvModule}}
  PRED_INPUT_SIZE: 256
MODEL:
  NAME: MGPN
"""

TAN_YAML = """\
DATASET:
  NAME: {name}
  VIS_INPUT_TYPE: {vis}
  NO_VAL: {no_val}
  NUM_SAMPLE_CLIPS: 256
  TARGET_STRIDE: {stride}
  NORMALIZE: True
  RANDOM_SAMPLING: False
TEST:
  BATCH_SIZE: 32
  RECALL: 1,5
  TIOU: {tiou}
  EVAL_TRAIN: True
  NMS_THRESH: {nms}
TRAIN:
  BATCH_SIZE: 32
  LR: 0.0001
  WEIGHT_DECAY: 0.0000
  MAX_EPOCH: 100
  CONTINUE: False
LOSS:
  NAME: bce_rescale_loss
  PARAMS: {{MIN_IOU: {min_iou}, MAX_IOU: {max_iou}, BIAS: 0.0}}
TAN:
  FRAME_MODULE:
    NAME: FrameAvgPool
    PARAMS: {{INPUT_SIZE: {dim}, HIDDEN_SIZE: 512, KERNEL_SIZE: {stride}, STRIDE: {stride}}}
  PROP_MODULE:
    NAME: {prop}
    PARAMS: {{HIDDEN_SIZE: 512, NUM_SCALE_LAYERS: {scales}}}
  FUSION_MODULE:
    NAME: BaseFusion
    PARAMS:
      HIDDEN_SIZE: 512
      TXT_INPUT_SIZE: 300
      TXT_HIDDEN_SIZE: 512
      LSTM: {{NUM_LAYERS: 3, BIDIRECTIONAL: False}}
  MAP_MODULE:
    NAME: MapConv
    PARAMS:
      INPUT_SIZE: 512
      HIDDEN_SIZES: {map_hidden}
      KERNEL_SIZES: {map_kernels}
      STRIDES: {map_ones}
      PADDINGS: {map_paddings}
      DILATIONS: {map_ones}
  PRED_INPUT_SIZE: 512
MODEL:
  NAME: TAN
"""


@dataclasses.dataclass(frozen=True)
class Layout:
    """One official YAML: its template values and what it must map to."""

    family: str
    yaml: str
    values: dict
    config: str  # the shipped config it must pick
    features: str
    eval_split: str
    num_clips: int


def _mgpn(name, vis, stride, dim, scales, *, batch=64, tiou="0.3,0.5,0.7", nms=0.44,
          milestones="[5,8]", min_iou=0.5, max_iou=1.0, layers=2, position=False):  # fmt: skip
    return dict(
        name=name, vis=vis, no_val=True, stride=stride, batch=batch, tiou=tiou, nms=nms,
        milestones=milestones, min_iou=min_iou, max_iou=max_iou, dim=dim, position=position,
        clips=256 // stride, layers=layers, scales=scales,
    )  # fmt: skip


def _tan(name, vis, no_val, stride, dim, prop, scales, tiou, nms, min_iou, convs, kernel):
    return dict(
        name=name, vis=vis, no_val=no_val, stride=stride, tiou=tiou, nms=nms, min_iou=min_iou,
        max_iou={0.5: 1.0, 0.3: 0.7}[min_iou], dim=dim, prop=prop, scales=scales,
        map_hidden=[512] * convs, map_kernels=[kernel] * convs, map_ones=[1] * convs,
        map_paddings=[16] + [0] * (convs - 1),
    )  # fmt: skip


LAYOUTS = {
    # Huntersxsx/MGPN experiments/charades/i3d-finetune-mgpn256.yaml
    "mgpn-charades-i3d-finetune": Layout(
        "mgpn", MGPN_YAML, _mgpn("Charades", "I3D/finetune", 4, 1024, "[15,8,8]"),
        "mgpn/charades_i3d", "i3d", "test", 64,
    ),
    # experiments/charades/vgg-mgpn256.yaml
    "mgpn-charades-vgg": Layout(
        "mgpn", MGPN_YAML,
        _mgpn("Charades", "charades_vgg_rgb", 16, 4096, "[15]", batch=32, milestones="[5,12]"),
        "mgpn/charades_vgg", "vgg", "test", 16,
    ),
    # experiments/tacos/mgpn256.yaml
    "mgpn-tacos": Layout(
        "mgpn", MGPN_YAML,
        _mgpn("TACoS", "c3d", 2, 4096, "[15,8,8,8]", batch=32, tiou="0.1,0.3,0.5,0.7", nms=0.4,
              milestones="[16, 19]", min_iou=0.3, max_iou=0.7, layers=3),
        "mgpn/tacos", "c3d", "test", 128,
    ),
    # experiments/activitynet/mgpn256.yaml
    "mgpn-activitynet": Layout(
        "mgpn", MGPN_YAML,
        _mgpn("ActivityNet", "c3d", 4, 500, "[15,8,8]", nms=0.52, milestones="[5, 8]",
              position=True),
        "mgpn/activitynet", "c3d", "test", 64,
    ),
    # microsoft/2D-TAN experiments/charades/2D-TAN-16x16-K5L8-{conv,pool}.yaml
    "tan2d-charades-conv": Layout(
        "tan2d", TAN_YAML,
        _tan("Charades", "vgg_rgb", True, 16, 4096, "SparsePropConv", "[16]", "0.5,0.7", 0.5,
             0.5, 8, 5),
        "tan2d/charades:conv", "vgg", "test", 16,
    ),
    "tan2d-charades-pool": Layout(
        "tan2d", TAN_YAML,
        _tan("Charades", "vgg_rgb", True, 16, 4096, "SparsePropMaxPool", "[16]", "0.5,0.7",
             0.45, 0.5, 8, 5),
        "tan2d/charades:pool", "vgg", "test", 16,
    ),
    # experiments/tacos/2D-TAN-128x128-K5L8-{conv,pool}.yaml
    "tan2d-tacos-conv": Layout(
        "tan2d", TAN_YAML,
        _tan("TACoS", "c3d", True, 2, 4096, "SparsePropConv", "[16,8,8,8]", "0.1,0.3,0.5,0.7",
             0.5, 0.3, 8, 5),
        "tan2d/tacos:conv", "c3d", "test", 128,
    ),
    "tan2d-tacos-pool": Layout(
        "tan2d", TAN_YAML,
        _tan("TACoS", "c3d", False, 2, 4096, "SparsePropMaxPool", "[16,8,8,8]",
             "0.1,0.3,0.5,0.7", 0.4, 0.3, 8, 5),
        "tan2d/tacos:pool", "c3d", "val", 128,
    ),
    # experiments/activitynet/2D-TAN-64x64-K9L4-{conv,pool}.yaml
    "tan2d-activitynet-conv": Layout(
        "tan2d", TAN_YAML,
        _tan("ActivityNet", "c3d", False, 4, 500, "SparsePropConv", "[16,8,8]", "0.3,0.5,0.7",
             0.5, 0.5, 4, 9),
        "tan2d/activitynet:conv", "c3d", "val", 64,
    ),
    "tan2d-activitynet-pool": Layout(
        "tan2d", TAN_YAML,
        _tan("ActivityNet", "c3d", False, 4, 500, "SparsePropMaxPool", "[16,8,8]",
             "0.3,0.5,0.7", 0.5, 0.5, 4, 9),
        "tan2d/activitynet:pool", "c3d", "val", 64,
    ),
}  # fmt: skip


def _write(tmp_path, layout: Layout, edit=lambda text: text, name="experiment.yaml"):
    path = tmp_path / name
    path.write_text(edit(layout.yaml.format(**layout.values)))
    return str(path)


@pytest.mark.parametrize("key", sorted(LAYOUTS))
def test_official_yaml_picks_its_benchmark_config(tmp_path, key):
    layout = LAYOUTS[key]
    config = build_config(None, _write(tmp_path, layout), (), layout.family)
    dataset = {"Charades": "charades_sta", "TACoS": "tacos", "ActivityNet": "activitynet"}[
        layout.values["name"]
    ]
    assert (config.data.name, config.data.features) == (dataset, layout.features)
    assert config.data.dir == f"data/vmr_jax/{dataset}-{layout.features}"
    assert config.evals.split == layout.eval_split
    assert (config.model.num_clips, config.model.frame_stride) == (
        layout.num_clips,
        layout.values["stride"],
    )
    assert (config.data.num_input_clips, config.data.normalize) == (256, True)
    # An official checkpoint reads text as the official code does (config_presets.official_text).
    assert (config.data.word_split, config.data.cut_long_queries) == ("official", False)
    if layout.family == "mgpn":
        assert config.model.text_padding == "batch"
        assert config.data.glove_missing == "row:400000"
    # The YAML holds the official values the shipped config was written from: every field of
    # that config comes out unchanged (GloVe words, query length, mesh, checkpoint policy).
    shipped = config_cli.load_config(layout.config)
    for section in ("model", "data", "train", "evals", "mesh"):
        for field, value in shipped[section].items():
            assert config[section][field] == value, (section, field)


def test_charades_i3d_raw_takes_the_i3d_config_with_its_own_map_and_features(tmp_path):
    # Huntersxsx/MGPN experiments/charades/i3d-raw-mgpn256.yaml
    values = _mgpn("Charades", "I3D/raw", 8, 1024, "[15,8]", batch=32, nms=0.45,
                   milestones="[7,12]")  # fmt: skip
    layout = dataclasses.replace(LAYOUTS["mgpn-charades-i3d-finetune"], values=values)
    config = build_config(None, _write(tmp_path, layout), (), "mgpn")
    assert config.data.features == "i3d_raw"
    assert config.data.dir == "data/vmr_jax/charades_sta-i3d_raw"
    assert (config.model.num_clips, config.model.frame_stride) == (32, 8)
    assert tuple(config.model.pooling_counts) == (15, 8)
    assert config.train.milestones == (7, 12) and config.evals.nms_thresh == 0.45
    assert config.train.batch_size == 32 and config.evals.split == "test"
    assert config.data.text_mode == "glove"  # the shipped charades_i3d inputs, not synthetic


def test_vis_input_type_absent_picks_the_feature_set_of_the_frame_width(tmp_path):
    drop = lambda text: text.replace("  VIS_INPUT_TYPE: I3D/finetune\n", "")  # noqa: E731
    path = _write(tmp_path, LAYOUTS["mgpn-charades-i3d-finetune"], drop)
    config = build_config(None, path, (), "mgpn")
    assert (config.data.features, config.data.dir) == ("i3d", "data/vmr_jax/charades_sta-i3d")


@pytest.mark.parametrize("key", ["mgpn-charades-vgg", "tan2d-tacos-pool"])
def test_normalize_absent_is_the_official_false(tmp_path, key):
    layout = LAYOUTS[key]
    path = _write(tmp_path, layout, lambda text: text.replace("  NORMALIZE: True\n", ""))
    derived = build_config(None, path, (), layout.family)
    assert derived.data.normalize is False
    # With --config too: the shipped config's True gives way to the YAML's (absent) False.
    assert config_cli.load_config(layout.config).data.normalize is True
    given = build_config(layout.config, path, (), layout.family)
    assert given.data.normalize is False


def test_unknown_dataset_is_refused_naming_the_field_unless_config_is_given(tmp_path):
    layout = LAYOUTS["mgpn-charades-i3d-finetune"]
    path = _write(tmp_path, layout, lambda text: text.replace("NAME: Charades", "NAME: DiDeMo"))
    with pytest.raises(ValueError, match=r"DATASET\.NAME 'DiDeMo' .*pass --config"):
        build_config(None, path, (), "mgpn")
    config = build_config("mgpn/charades_i3d", path, (), "mgpn")
    assert config.data.name == "charades_sta" and config.model.num_clips == 64


def test_unmapped_features_and_model_are_refused_naming_the_field(tmp_path):
    layout = LAYOUTS["mgpn-charades-i3d-finetune"]
    c3d = _write(tmp_path, layout, lambda t: t.replace("I3D/finetune", "C3D/C3D-features"))
    with pytest.raises(ValueError, match=r"DATASET\.VIS_INPUT_TYPE 'C3D/C3D-features'"):
        build_config(None, c3d, (), "mgpn")
    # A 2D-TAN experiment converted as MGPN: the model is named before any MGPN field is read.
    tan = _write(tmp_path, LAYOUTS["tan2d-tacos-conv"], name="tan.yaml")
    with pytest.raises(ValueError, match=r"MODEL\.NAME is 'TAN'.*--model tan2d"):
        build_config(None, tan, (), "mgpn")
    # A frame width that is not the named features' (the data would not fit the model).
    wide = _write(tmp_path, layout, lambda t: t.replace("INPUT_SIZE: 1024", "INPUT_SIZE: 2048"))
    with pytest.raises(ValueError, match=r"FRAME\.INPUT_SIZE is 2048.*1024-d"):
        build_config(None, wide, (), "mgpn")


def test_convert_command_refuses_an_unmapped_yaml_in_one_line(tmp_path, capsys):
    layout = LAYOUTS["tan2d-tacos-conv"]
    path = _write(tmp_path, layout, lambda text: text.replace("NAME: TACoS", "NAME: MADv2"))
    argv = ["convert", "--model", "tan2d", "--checkpoint", str(tmp_path / "absent.pkl")]
    assert main(argv + ["--yaml", path, "--workdir", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "DATASET.NAME 'MADv2'" in lines[0] and "--config" in lines[0]
    assert not (tmp_path / "out").exists()
