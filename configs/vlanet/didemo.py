"""VLANet on DiDeMo, weakly supervised (the paper's Table 2).

``vmr-jax train --config configs/vlanet/didemo.py --workdir ...`` after ``vmr-jax data build
--dataset didemo --features fc7``.  Video: the release's VGG fc7 per 5-s chunk
(``average_fc7.h5``, six rows), kept as native chunks (``clip_sampling='truncate'``, 6 clips,
``clip_seconds=5``) and L2-normalised per chunk.  Proposals: a segment group at every chunk
with windows of 1..6 chunks, i.e. exactly the 21 candidate moments (15 for 25-s videos).
Evaluation under the official ``didemo`` protocol (R@1, R@5, mIoU over the 21-moment ranking)
on the validation split during training; ``vmr-jax eval --split test`` gives Table 2's numbers.
Arguments (comma-separated): ``wo_surrogate``, ``wo_self``, ``wo_cross``, ``runlocal``,
``tiny`` (a small model for a few CPU minutes, no GloVe).
"""

from __future__ import annotations

import ml_collections

from vmr_jax.config_cli import parse_config_arg
from vmr_jax.config_presets import vlanet_benchmark

FLAGS = {"wo_surrogate", "wo_self", "wo_cross", "runlocal", "tiny"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = parse_config_arg(arg, FLAGS, __file__)
    config = vlanet_benchmark(
        variant="didemo",
        dataset="didemo",
        features="fc7",
        num_input_clips=6,
        clip_sampling="truncate",
        normalize=True,
        protocol="didemo",
        eval_split="val",
        best_metric="R@1",
        flags=flags,
    )
    config.lock()
    return config
