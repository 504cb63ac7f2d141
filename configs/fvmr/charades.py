"""FVMR on Charades-STA (paper Tables 1 and 4): VGG16 features by default, ``i3d`` for I3D,
``c3d`` for C3D (Table 4's three rows).

Proposals as 2D-TAN's ``experiments/charades/2D-TAN-16x16-K5L8-pool.yaml``: 256 sampled clips
pooled by 16 to a 16x16 map (NUM_SCALE_LAYERS [16]: all 136 moments), NMS 0.45, tIoU 0.5/0.7;
paper training values (``config_presets.fvmr_benchmark``). 12,404 training queries -> 387 steps
per epoch. Arguments (comma-separated): ``i3d`` (I3D instead of VGG features), ``c3d`` (C3D
fc6, 4096-d: Table 4's C3D row, same map and training), ``wo_sd`` (the "w/o SD" ablation),
``pq`` (Table 5's "FVMR (p + q)": evaluation ranks the mean of the two scores),
``frozen_embed`` (the GloVe word table frozen; the paper trains it), ``runlocal`` (four steps),
``tiny`` (a small model, a few CPU minutes, no GloVe). Charades-STA has no validation split
(the reference code's train and test only), so, as 2D-TAN's ``NO_VAL`` runs do, the evaluated
split is test.

Data: ``vmr-jax data build --dataset charades_sta --features vgg --data_dir DIR --output_dir
data/vmr_jax/charades_sta-vgg`` (or ``--features i3d`` / ``--features c3d``; C3D is released by
neither FVMR nor 2D-TAN: ``c3d_features.hdf5`` in ``--data_dir``, one ``[T, 4096]`` fc6 dataset
per video id, the TACoS C3D layout; ``data_pipelines.charades_sta``); GloVe in
``data/glove.840B.300d.txt``; the role trees need ``pip install vmr_jax[srl]`` once.
"""

from __future__ import annotations

import ml_collections

from vmr_jax.config_cli import parse_config_arg
from vmr_jax.config_presets import fvmr_benchmark


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    allowed = ("c3d", "frozen_embed", "i3d", "pq", "runlocal", "tiny", "wo_sd")
    flags = parse_config_arg(arg, allowed, __file__, exclusive=[("c3d", "i3d")])
    features = "c3d" if "c3d" in flags else "i3d" if "i3d" in flags else "vgg"
    return fvmr_benchmark(
        variant=f"charades_{features}",
        dataset="charades_sta",
        features=features,
        nms_thresh=0.45,
        ious=(0.5, 0.7),
        runlocal="runlocal" in flags,
        tiny="tiny" in flags,
        without_distillation="wo_sd" in flags,
        frozen_embed="frozen_embed" in flags,
        fuse_scores="pq" in flags,
    )
