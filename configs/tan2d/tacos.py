"""2D-TAN on TACoS with C3D features: microsoft/2D-TAN
``experiments/tacos/2D-TAN-128x128-K5L8-{conv,pool}.yaml``.

Argument: ``conv`` (default) or ``pool`` picks the YAML, ``runlocal`` runs four steps,
``tiny`` trains a small model for a few CPU minutes without GloVe; combine with a comma:
``--config configs/tan2d/tacos.py:pool,runlocal``.

YAML values: NUM_SAMPLE_CLIPS 256, TARGET_STRIDE 2 (128 map clips), NORMALIZE True, 4096-d C3D
features, hidden 512, NUM_SCALE_LAYERS [16, 8, 8, 8] (2,548 proposals), 3-layer LSTM over 300-d
GloVe 6B words, MapConv 8 x 5x5 with PADDINGS [16, 0, ...], loss MIN/MAX IoU 0.3/0.7 BIAS 0,
BATCH_SIZE 32, LR 1e-4, MAX_EPOCH 100, TIOU 0.1/0.3/0.5/0.7.  conv: NMS_THRESH 0.5, NO_VAL
True (the test split is evaluated); pool: NMS_THRESH 0.4, NO_VAL False (the val split is
evaluated during training; ``vmr-jax eval --split test`` gives the reported numbers).  9,790
training queries -> 305 steps per epoch.

Words: ``data/glove.6B.300d.txt`` (unzipped from https://nlp.stanford.edu/data/glove.6B.zip),
the official ``torchtext`` GloVe ``6B``/300; a word outside its 400,000 reads the zero row the
official reader appends (``stoi.get(word, 400000)``): ``glove_missing='zero'``.

Data: ``vmr-jax data build --dataset tacos --features c3d --data_dir DIR
--output_dir data/vmr_jax/tacos-c3d``.
"""

from __future__ import annotations

import ml_collections

from vmr_jax.config_presets import tan2d_benchmark

TIOU = (0.1, 0.3, 0.5, 0.7)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return tan2d_benchmark(
        arg,
        config_file=__file__,
        dataset="tacos",
        features="c3d",
        yamls={
            "conv": dict(variant="tacos_conv", nms_thresh=0.5, ious=TIOU, eval_split="test"),
            "pool": dict(variant="tacos_pool", nms_thresh=0.4, ious=TIOU, eval_split="val"),
        },
    )
