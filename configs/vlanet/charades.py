"""VLANet on Charades-STA, weakly supervised (the paper's Table 1; Table 3 rows and ablations).

``vmr-jax train --config configs/vlanet/charades.py --workdir ...`` after ``vmr-jax data build
--dataset charades_sta --features vgg`` (``i3d`` argument: the 1024-d I3D set).  The paper's
C3D (Sports-1M) Charades features are not among the released files this library reads; the
4096-d VGG fc7 set (24 fps, one vector every 4th frame) stands in, resampled to 256 clips over
the video as 2D-TAN does and L2-normalised per clip.  Proposals: stride 8 frames, windows
176/208/240 frames at 24 fps (the paper's best row of Table 3).  ``model.max_groups`` is derived
from the stride and the smallest window so that every video keeps all its proposals
(``vlanet.groups_to_cover`` of the longest video, 194.33 s; rule and numbers in
``vmr_jax/models/vlanet.py``, 2): 561 groups at stride 8, 748 at stride 6, 1,122 at stride 4,
756 at stride 6 with windows 128/256; each grid covers every video shorter than 194.332 s.
Evaluation: R@{1,5} at IoU {0.3, 0.5, 0.7} on the test split, a hit at IoU ``>= m`` as the
paper counts it (4.1: "greater than or equal to m"): protocol ``mmn`` (2D-TAN decoding, NMS
0.5, inclusive hit); the random-proposal baseline the trainer logs counts hits the same way.

Arguments (comma-separated): ``i3d``; Table 3's grids ``stride4``, ``stride6`` (one of them;
default stride 8) and ``windows_128_256``, ``windows_176_240`` (one of them; default
176/208/240), e.g. ``:stride6,windows_128_256``; the ablations ``wo_surrogate``, ``wo_self``,
``wo_cross``; ``runlocal``, ``tiny`` (a small model for a few CPU minutes, no GloVe).  A stride
or windows set by ``--config.model.proposal_stride=...`` instead needs a ``max_groups`` to
match (``vmr-jax`` refuses a grid that drops proposals and names the count).
"""

from __future__ import annotations

import ml_collections

from vmr_jax.config_cli import parse_config_arg
from vmr_jax.config_presets import vlanet_benchmark
from vmr_jax.models import vlanet

# Table 3's grids, in frames at 24 fps.
STRIDES = {"stride4": 4, "stride6": 6}  # default 8
WINDOWS = {"windows_128_256": (128, 256), "windows_176_240": (176, 240)}  # default 176/208/240
FLAGS = {"i3d", "wo_surrogate", "wo_self", "wo_cross", "runlocal", "tiny", *STRIDES, *WINDOWS}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = parse_config_arg(arg, FLAGS, __file__, exclusive=(tuple(STRIDES), tuple(WINDOWS)))
    i3d = "i3d" in flags
    config = vlanet_benchmark(
        variant="charades_i3d" if i3d else "charades",
        dataset="charades_sta",
        features="i3d" if i3d else "vgg",
        num_input_clips=256,
        clip_sampling="resample",
        normalize=True,
        protocol="mmn",
        eval_split="test",
        best_metric="R@1,IoU=0.5",
        flags=flags,
    )
    stride = next((STRIDES[f] for f in flags if f in STRIDES), 8) / vlanet.CHARADES_FPS
    windows = next((WINDOWS[f] for f in flags if f in WINDOWS), (176, 208, 240))
    windows = tuple(w / vlanet.CHARADES_FPS for w in windows)
    config.model.proposal_stride = stride
    config.model.proposal_windows = windows
    config.model.max_groups = vlanet.groups_to_cover(config.model.longest_video_s, stride, windows)
    config.lock()
    return config
