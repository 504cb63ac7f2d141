"""FVMR on ActivityNet Captions with C3D features (500-d PCA; paper Tables 1 and 3).

Proposals as 2D-TAN's ``experiments/activitynet/2D-TAN-64x64-K9L4-pool.yaml``: 256 sampled
clips pooled by 4 to a 64x64 map with NUM_SCALE_LAYERS [16, 8, 8], NMS 0.5, tIoU 0.3/0.5/0.7;
paper training values (``config_presets.fvmr_benchmark``). 37,417 training queries -> 1,169
steps per epoch. Arguments (comma-separated): ``wo_sd`` (the "w/o SD" ablation of Table 5),
``pq`` (Table 5's "FVMR (p + q)": evaluation ranks the mean of ``sigmoid(p)`` and
``sigmoid(q)``, the teacher's trees read at test time), ``frozen_embed`` (the GloVe word table
frozen; the paper trains it), ``runlocal`` (four steps), ``tiny`` (a small model, a few CPU
minutes, no GloVe). The best checkpoint is chosen on ``val`` (the captions' val_1), never on
test; its test (val_2) figures: ``vmr-jax eval --workdir W --step best --split test``.

Data: ``vmr-jax data build --dataset activitynet --features c3d --data_dir DIR
--output_dir data/vmr_jax/activitynet-c3d``; GloVe in ``data/glove.840B.300d.txt``; the role
trees need ``pip install vmr_jax[srl]`` once (parsed at the first run, cached with the data).
"""

from __future__ import annotations

import ml_collections

from vmr_jax.config_cli import parse_config_arg
from vmr_jax.config_presets import fvmr_benchmark


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = parse_config_arg(arg, ("frozen_embed", "pq", "runlocal", "tiny", "wo_sd"), __file__)
    return fvmr_benchmark(
        variant="activitynet",
        dataset="activitynet",
        features="c3d",
        nms_thresh=0.5,
        ious=(0.3, 0.5, 0.7),
        eval_split="val",
        runlocal="runlocal" in flags,
        tiny="tiny" in flags,
        without_distillation="wo_sd" in flags,
        frozen_embed="frozen_embed" in flags,
        fuse_scores="pq" in flags,
    )
