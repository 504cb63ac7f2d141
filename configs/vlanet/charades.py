"""VLANet on Charades-STA, weakly supervised (the paper's Table 1; Table 3 ablations).

``vmr-jax train --config configs/vlanet/charades.py --workdir ...`` after ``vmr-jax data build
--dataset charades_sta --features vgg`` (``i3d`` argument: the 1024-d I3D set).  The paper's
C3D (Sports-1M) Charades features are not among the released files this library reads; the
4096-d VGG fc7 set (24 fps, one vector every 4th frame) stands in, resampled to 256 clips over
the video as 2D-TAN does and L2-normalised per clip.  Proposals: stride 8 frames, windows
176/208/240 frames at 24 fps (the paper's best row of Table 3); 584 segment groups cover the
longest Charades video (194.33 s).  Evaluation: R@{1,5} at IoU {0.3, 0.5, 0.7} on the test
split (``2dtan`` protocol, NMS 0.5).  Arguments (comma-separated): ``i3d``, ``wo_surrogate``,
``wo_self``, ``wo_cross``, ``runlocal``, ``tiny`` (a small model for a few CPU minutes, no
GloVe); other strides and windows of Table 3 by override, e.g.
``--config.model.proposal_stride=0.25`` (6 frames) or
``--config.model.proposal_windows='(5.333,10.667)'`` (128/256 frames).
"""

from __future__ import annotations

import ml_collections

from vmr_jax.config_cli import parse_config_arg
from vmr_jax.config_presets import vlanet_benchmark

FLAGS = {"i3d", "wo_surrogate", "wo_self", "wo_cross", "runlocal", "tiny"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = parse_config_arg(arg, FLAGS, __file__)
    i3d = "i3d" in flags
    config = vlanet_benchmark(
        variant="charades_i3d" if i3d else "charades",
        dataset="charades_sta",
        features="i3d" if i3d else "vgg",
        num_input_clips=256,
        clip_sampling="resample",
        normalize=True,
        protocol="2dtan",
        eval_split="test",
        best_metric="R@1,IoU=0.5",
        flags=flags,
    )
    config.lock()
    return config
