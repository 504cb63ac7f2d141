"""MGPN on Charades-STA with I3D (fine-tuned) features: Huntersxsx/MGPN
``experiments/charades/i3d-finetune-mgpn256.yaml``.

YAML values: NUM_SAMPLE_CLIPS 256, TARGET_STRIDE 4 (64 map clips), NORMALIZE True, 1024-d
features, hidden 256, NUM_SCALE_LAYERS [15, 8, 8], BATCH_SIZE 64, LR 1e-3, MAX_EPOCH 15,
MILESTONES [5, 8] (the rate drops from 0-indexed epochs 4 and 7:
``train.scheduler_step``), GAMMA 0.1, NMS_THRESH 0.44, TIOU 0.3/0.5/0.7, loss IoU 0.5-1.0, NO_VAL
(the test split is evaluated).  12,404 training queries -> 193 steps per epoch.

Data: ``vmr-jax data build --dataset charades_sta --features i3d --data_dir DIR`` (written to
``data/vmr_jax/charades_sta-i3d``) and a GloVe file at ``config.data.glove_path``.
``:runlocal`` runs four steps; ``:tiny`` trains a small model for a few minutes on a CPU
without GloVe (learned word embeddings): ``config_presets.short_run``.
"""

from __future__ import annotations

import ml_collections

from vmr_jax.config_cli import parse_config_arg
from vmr_jax.config_presets import mgpn_benchmark


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = parse_config_arg(arg, ("runlocal", "tiny"), __file__)
    return mgpn_benchmark(
        variant="charades_i3d",
        dataset="charades_sta",
        features="i3d",
        batch_size=64,
        milestones=(5, 8),
        nms_thresh=0.44,
        ious=(0.3, 0.5, 0.7),
        runlocal="runlocal" in flags,
        tiny="tiny" in flags,
    )
