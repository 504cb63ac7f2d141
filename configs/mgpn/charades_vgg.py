"""MGPN on Charades-STA with VGG features: Huntersxsx/MGPN
``experiments/charades/vgg-mgpn256.yaml``.

YAML values: NUM_SAMPLE_CLIPS 256, TARGET_STRIDE 16 (16 map clips), NORMALIZE True, 4096-d
features, hidden 256, NUM_SCALE_LAYERS [15] (the full upper triangle), BATCH_SIZE 32, LR 1e-3,
MAX_EPOCH 15, MILESTONES [5, 12] (the rate drops from 0-indexed epochs 4 and 11:
``train.scheduler_step``), GAMMA 0.1, NMS_THRESH 0.44, TIOU 0.3/0.5/0.7, loss IoU
0.5-1.0, NO_VAL.  12,404 training queries -> 387 steps per epoch.

Data: ``vmr-jax data build --dataset charades_sta --features vgg --data_dir DIR
--output_dir data/vmr_jax/charades_sta-vgg``.  ``:runlocal`` runs four steps;
``:tiny`` trains a small model for a few minutes on a CPU without GloVe.
"""

from __future__ import annotations

import ml_collections

from vmr_jax.config_cli import parse_config_arg
from vmr_jax.config_presets import mgpn_benchmark


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = parse_config_arg(arg, ("runlocal", "tiny"), __file__)
    return mgpn_benchmark(
        variant="charades_vgg",
        dataset="charades_sta",
        features="vgg",
        batch_size=32,
        milestones=(5, 12),
        nms_thresh=0.44,
        ious=(0.3, 0.5, 0.7),
        runlocal="runlocal" in flags,
        tiny="tiny" in flags,
    )
