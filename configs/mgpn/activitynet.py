"""MGPN on ActivityNet Captions with C3D features: Huntersxsx/MGPN
``experiments/activitynet/mgpn256.yaml``.

YAML values: NUM_SAMPLE_CLIPS 256, TARGET_STRIDE 4 (64 map clips), NORMALIZE True, 500-d
features, hidden 256, USE_POSITION True, NUM_SCALE_LAYERS [15, 8, 8], BATCH_SIZE 64, LR 1e-3,
MAX_EPOCH 15, MILESTONES [5, 8] (the rate drops from 0-indexed epochs 4 and 7:
``train.scheduler_step``), GAMMA 0.1, NMS_THRESH 0.52, TIOU 0.3/0.5/0.7, loss IoU
0.5-1.0, NO_VAL: the evaluated split is ``test`` (= val_2 in 2D-TAN's naming).  37,417
training queries (37,421 minus 4 with start >= end) -> 584 steps per epoch.

Data: ``vmr-jax data build --dataset activitynet --features c3d --data_dir DIR
--output_dir data/vmr_jax/activitynet-c3d``.  ``:runlocal`` runs four steps;
``:tiny`` trains a small model for a few minutes on a CPU without GloVe.

The paper's Table 3 (components) and Table 4 (encoders) on ActivityNet Captions: one argument
per row (``vmr_jax.config_presets.MGPN_PAPER_EXPERIMENTS``), e.g. ``:table3_model2``; they
combine with ``tiny`` / ``runlocal`` and with each other when they set different fields.
"""

from __future__ import annotations

import ml_collections

from vmr_jax.config_cli import parse_config_arg
from vmr_jax.config_presets import mgpn_benchmark, mgpn_experiments

EXPERIMENTS = mgpn_experiments("activitynet")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = parse_config_arg(arg, ("runlocal", "tiny") + EXPERIMENTS, __file__)
    return mgpn_benchmark(
        variant="activitynet",
        dataset="activitynet",
        features="c3d",
        batch_size=64,
        milestones=(5, 8),
        nms_thresh=0.52,
        ious=(0.3, 0.5, 0.7),
        runlocal="runlocal" in flags,
        tiny="tiny" in flags,
        experiments=sorted(flags & set(EXPERIMENTS)),
        config_file=__file__,
    )
