"""2D-TAN on ActivityNet Captions with C3D features: microsoft/2D-TAN
``experiments/activitynet/2D-TAN-64x64-K9L4-{conv,pool}.yaml``.

Argument: ``conv`` (default) or ``pool`` picks the YAML, ``runlocal`` runs four steps,
``tiny`` trains a small model for a few CPU minutes without GloVe; combine with a comma:
``--config configs/tan2d/activitynet.py:pool,runlocal``.

YAML values: NUM_SAMPLE_CLIPS 256, TARGET_STRIDE 4 (64 map clips), NORMALIZE True, 500-d C3D
features, hidden 512, NUM_SCALE_LAYERS [16, 8, 8] (1,104 proposals), 3-layer LSTM over 300-d
GloVe 6B words, MapConv 4 x 9x9 with PADDINGS [16, 0, 0, 0], loss MIN/MAX IoU 0.5/1.0 BIAS 0,
BATCH_SIZE 32, LR 1e-4, MAX_EPOCH 100, TIOU 0.3/0.5/0.7, NMS_THRESH 0.5, NO_VAL False (both
YAMLs): the val split (2D-TAN's ``val.json`` = captions ``val_1``) is evaluated during
training; ``vmr-jax eval --split test`` (``val_2``) gives the reported numbers.  37,417
training queries -> 1,169 steps per epoch.

Words: ``data/glove.6B.300d.txt`` (unzipped from https://nlp.stanford.edu/data/glove.6B.zip),
the official ``torchtext`` GloVe ``6B``/300; a word outside its 400,000 reads the zero row the
official reader appends (``stoi.get(word, 400000)``): ``glove_missing='zero'``.

Data: ``vmr-jax data build --dataset activitynet --features c3d --data_dir DIR
--output_dir data/vmr_jax/activitynet-c3d``.
"""

from __future__ import annotations

import ml_collections

from vmr_jax.config_presets import tan2d_benchmark

TIOU = (0.3, 0.5, 0.7)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return tan2d_benchmark(
        arg,
        config_file=__file__,
        dataset="activitynet",
        features="c3d",
        yamls={
            "conv": dict(variant="activitynet_conv", nms_thresh=0.5, ious=TIOU, eval_split="val"),
            "pool": dict(variant="activitynet_pool", nms_thresh=0.5, ious=TIOU, eval_split="val"),
        },
    )
