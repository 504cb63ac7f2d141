"""2D-TAN on Charades-STA with VGG features: microsoft/2D-TAN
``experiments/charades/2D-TAN-16x16-K5L8-{conv,pool}.yaml``.

Argument: ``conv`` (default) or ``pool`` picks the YAML, ``runlocal`` runs four steps,
``tiny`` trains a small model for a few CPU minutes without GloVe; combine with a comma:
``--config configs/tan2d/charades.py:pool,runlocal``.

YAML values: NUM_SAMPLE_CLIPS 256, TARGET_STRIDE 16 (16 map clips), NORMALIZE True, 4096-d VGG
features, hidden 512, NUM_SCALE_LAYERS [16] (the full upper triangle, 136 proposals), 3-layer
LSTM over 300-d GloVe 6B words, MapConv 8 x 5x5 with PADDINGS [16, 0, ...], loss MIN/MAX IoU
0.5/1.0 BIAS 0, BATCH_SIZE 32, LR 1e-4, MAX_EPOCH 100, TIOU 0.5/0.7, NMS_THRESH 0.5 (conv) /
0.45 (pool), NO_VAL: the test split is evaluated.  12,404 training queries -> 387 steps per
epoch.

Words: ``data/glove.6B.300d.txt`` (unzipped from https://nlp.stanford.edu/data/glove.6B.zip),
the official ``torchtext`` GloVe ``6B``/300; a word outside its 400,000 reads the zero row the
official reader appends (``stoi.get(word, 400000)``): ``glove_missing='zero'``.

Data: ``vmr-jax data build --dataset charades_sta --features vgg --data_dir DIR
--output_dir data/vmr_jax/charades_sta-vgg``.
"""

from __future__ import annotations

import ml_collections

from vmr_jax.config_presets import tan2d_benchmark


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return tan2d_benchmark(
        arg,
        config_file=__file__,
        dataset="charades_sta",
        features="vgg",
        yamls={
            "conv": dict(
                variant="charades_conv", nms_thresh=0.5, ious=(0.5, 0.7), eval_split="test"
            ),
            "pool": dict(
                variant="charades_pool", nms_thresh=0.45, ious=(0.5, 0.7), eval_split="test"
            ),
        },
    )
