"""FVMR on TACoS with C3D features (paper Tables 1-2).

Proposals as 2D-TAN's ``experiments/tacos/2D-TAN-128x128-K5L8-pool.yaml``: 256 sampled clips
pooled by 2 to a 128x128 map with NUM_SCALE_LAYERS [16, 8, 8, 8] (2,548 moments), NMS 0.4, tIoU
0.1/0.3/0.5/0.7; paper training values (``config_presets.fvmr_benchmark``). 9,790 training
queries -> 305 steps per epoch. Arguments (comma-separated): ``wo_sd`` (the "w/o SD" ablation
of Table 5), ``pq`` (Table 5's "FVMR (p + q)": evaluation ranks the mean of ``sigmoid(p)`` and
``sigmoid(q)``, the teacher's trees read at test time), ``frozen_embed`` (the GloVe word table
frozen; the paper trains it), ``runlocal`` (four steps), ``tiny`` (a small model, a few CPU
minutes, no GloVe). The best checkpoint is chosen on the val split (never on test); the test
figures of that checkpoint: ``vmr-jax eval --workdir W --step best --split test``.

Data: ``vmr-jax data build --dataset tacos --features c3d --data_dir DIR
--output_dir data/vmr_jax/tacos-c3d``; GloVe in ``data/glove.840B.300d.txt``; the role trees
need ``pip install vmr_jax[srl]`` once (parsed at the first run, cached with the data).
"""

from __future__ import annotations

import ml_collections

from vmr_jax.config_cli import parse_config_arg
from vmr_jax.config_presets import fvmr_benchmark


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = parse_config_arg(arg, ("frozen_embed", "pq", "runlocal", "tiny", "wo_sd"), __file__)
    return fvmr_benchmark(
        variant="tacos",
        dataset="tacos",
        features="c3d",
        nms_thresh=0.4,
        ious=(0.1, 0.3, 0.5, 0.7),
        eval_split="val",
        runlocal="runlocal" in flags,
        tiny="tiny" in flags,
        without_distillation="wo_sd" in flags,
        frozen_embed="frozen_embed" in flags,
        fuse_scores="pq" in flags,
    )
