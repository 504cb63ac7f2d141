"""Cascaded MPN on ActivityNet Captions (val_1), no subtitles: the paper's ablation path
(``use_subtitles=False``, ``V = E_v``: "we utilize video features from video encoder").

Frames of each video's own length.  The only ActivityNet features the repository loads, the
ActivityNet Challenge C3D release (``data_pipelines/activitynet.py``, ``c3d``: 500-d,
16-frame clips every 8 frames of videos with differing frame rates, ``clip_seconds`` None),
have no fixed clip length, so the clips are resampled (``clip_sampling='resample'``, the
2D-TAN rule) to ``L = max_ctx_l`` bins evenly covering each video, and ``model.clip_length
= 0`` (``vmr_jax/retrieval/ranking.py`` ``PER_VIDEO_CLIP_LENGTH``) makes every frame last
``duration / L`` seconds of its own video (ActivityNet videos last about 117 s on average,
paper Sec. IV-A): frame ``k`` covers ``[k / L * duration, (k + 1) / L * duration)``, the
time grid 2D-TAN gives its resampled bins (``idx / num_clips * duration``; the native clips
averaged into a bin, ``round(k / L * T)`` onwards, are the same fraction of the video).  The
label rule (``vmr_jax/models/cascaded_mpn_loss.py`` ``st_ed_labels``: ``floor(t_s * L /
duration)``, ``ceil(t_e * L / duration) - 1``) reads ``batch['duration']``; the corpus index
keeps every video's duration and frame count (``vmr_jax/retrieval/corpus.py``), and the moment
times (``start / L * duration``, ``(end + 1) / L * duration``, never past the duration) and
the NMS are in each video's own seconds (``ranking.candidate_predictions``).  HERO releases
no ActivityNet features on a fixed clip grid (its ResNet+SlowFast extractor, the paper's, was
run on TV, HowTo100M, DiDeMo and MSR-VTT only).

Query token features.  The paper's RoBERTa token features exist for ActivityNet in no release
this repository reads, so the queries are GloVe 840B 300-d word vectors (``text_mode='glove'``,
file ``data.glove_path``), as the repository's other ActivityNet configs.

The rest: the ``c3d`` features L2-normalised per clip (2D-TAN's ``DATASET.NORMALIZE``),
resampled to ``max_ctx_l`` = 100 frames, corpus evaluation on val (val_1, 4,917 videos) under
the ``tvr`` protocol like XML's TVR run (every video of the split is the corpus; ``desc_id`` =
query id, video index = corpus row, ``vmr_jax/retrieval/evaluate.py``), best checkpoint by
``VCMR/0.5-r1``. Optimiser as the paper (AdamW 3e-5, weight decay 0.01, d = 768, K = 8); HERO
has no ActivityNet recipe, so batch 128 and 5000 steps (about 17 epochs of 37,417 training
queries) follow HERO's DiDeMo one; evaluation and checkpoints once per epoch, as the other
benchmark configs. ``:runlocal`` / ``:tiny`` as the other Cascaded MPN configs
(GloVe kept).

Data: ``vmr-jax data build --dataset activitynet --features c3d --data_dir DIR --output_dir
data/vmr_jax/activitynet-c3d``.
"""

from __future__ import annotations

import ml_collections

from vmr_jax.config_cli import parse_config_arg
from vmr_jax.config_presets import cascaded_mpn_recipe, data_section, short_run, tiny_model
from vmr_jax.models import cascaded_mpn
from vmr_jax.retrieval.ranking import PER_VIDEO_CLIP_LENGTH


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = parse_config_arg(arg, ("runlocal", "tiny"), __file__)
    config = ml_collections.ConfigDict()

    if "tiny" in flags:
        config.model = tiny_model("cascaded_mpn", "tvr")
    else:
        config.model = ml_collections.ConfigDict(dict(cascaded_mpn.VARIANTS["tvr"]))
        config.model.name = "cascaded_mpn"
    config.model.use_subtitles = False
    config.model.vid_feat_size = 500  # C3D (PCA)
    config.model.q_feat_size = 300  # GloVe
    config.model.clip_length = PER_VIDEO_CLIP_LENGTH  # duration / L s per frame, per video

    config.data = data_section(
        name="activitynet",
        features="c3d",
        dir="data/vmr_jax/activitynet-c3d",
        seed=0,
        clip_sampling="resample",
        num_input_clips=config.model.max_ctx_l,
        normalize=True,
        text_mode="glove",
        glove_path="data/glove.840B.300d.txt",
        glove_missing="zero",
        max_query_len=config.model.max_desc_l,
        max_spans=1,
        prefetch=2,
    )

    cascaded_mpn_recipe(
        config, batch_size=128, nms_thresh=config.model.nms_thd, runlocal="runlocal" in flags
    )
    short_run(config, tiny="tiny" in flags, runlocal="runlocal" in flags, learned_words=False)

    config.lock()
    return config
