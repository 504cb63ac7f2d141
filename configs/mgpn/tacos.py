"""MGPN on TACoS with C3D features: Huntersxsx/MGPN ``experiments/tacos/mgpn256.yaml``.

YAML values: NUM_SAMPLE_CLIPS 256, TARGET_STRIDE 2 (128 map clips), NORMALIZE True, 4096-d
features, hidden 256, 3-layer GRUs, NUM_SCALE_LAYERS [15, 8, 8, 8], BATCH_SIZE 32, LR 1e-3,
MAX_EPOCH 15, MILESTONES [16, 19] (after the last epoch: the LR never decays), GAMMA 0.1,
NMS_THRESH 0.4, TIOU 0.1/0.3/0.5/0.7, loss IoU 0.3-0.7, NO_VAL (the test split is evaluated).
9,790 training queries -> 305 steps per epoch.

Data: ``vmr-jax data build --dataset tacos --features c3d --data_dir DIR
--output_dir data/vmr_jax/tacos-c3d``.  ``:runlocal`` runs four steps;
``:tiny`` trains a small model for a few minutes on a CPU without GloVe.

The paper's Figure 4 (map generators) and Figure 5 (comparison modules, hidden sizes) on
TACoS: one argument per bar (``vmr_jax.config_presets.MGPN_PAPER_EXPERIMENTS``), e.g.
``:comparison_nl,tiny``; they combine with ``tiny`` / ``runlocal`` and with each other when
they set different fields.
"""

from __future__ import annotations

import ml_collections

from vmr_jax.config_cli import parse_config_arg
from vmr_jax.config_presets import mgpn_benchmark, mgpn_experiments

EXPERIMENTS = mgpn_experiments("tacos")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = parse_config_arg(arg, ("runlocal", "tiny") + EXPERIMENTS, __file__)
    return mgpn_benchmark(
        variant="tacos",
        dataset="tacos",
        features="c3d",
        batch_size=32,
        milestones=(16, 19),
        nms_thresh=0.4,
        ious=(0.1, 0.3, 0.5, 0.7),
        runlocal="runlocal" in flags,
        tiny="tiny" in flags,
        experiments=sorted(flags & set(EXPERIMENTS)),
        config_file=__file__,
    )
