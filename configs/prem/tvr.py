"""PREM on TVR (paper Sec. 4.2): HERO's SlowFast+ResNet image features, TVRetrieval's RoBERTa
subtitle and query features; two stages, one command each.

    vmr-jax train --config configs/prem/tvr.py:retriever --workdir runs/prem_tvr_r
    vmr-jax train --config configs/prem/tvr.py:localizer --workdir runs/prem_tvr_l \\
        --config.train.init_from=runs/prem_tvr_r

Data: ``vmr-jax data build --dataset tvr --features hero_resnet_slowfast --data_dir DIR
--output_dir data/vmr_jax/tvr-hero_resnet_slowfast``, ``DIR`` holding HERO's
``video_db/tv/resnet_slowfast_1.5`` (LMDB, 4352-d 1.5-s clips) and TVRetrieval's
``tvr_feature_release`` (subtitle features max-pooled per clip, zero where a clip has no
subtitle; query token features) and the annotations (``data_pipelines/tvr.py``).

Values (paper Sec. 4.2): hidden 384, FFN 1536, 4 heads; retriever 100 epochs of batch 256,
localizer 15 epochs of batch 32 with 4 hard negatives per query drawn from the retriever's
top 100; AdamW lr 1e-4, weight decay 0.01; InfoNCE temperature 0.01, weak-positive weight 0.5,
classification weight 0.8; inference on the retriever's top 10 (eq. 12), VR lists of 100.
Where the paper is silent (TVRetrieval's XML): 100 clips of 1.5 s (``max_ctx_l``), 30 query
tokens, XML's window rule with min_pred_l 0 (moments of 1 to 16 clips; XML's own starts at 3),
200 candidates before NMS 0.5; evaluation on val (test_public has no public ground truth).
Target (paper Tables 1 and 4, TVR val): VR R@1 26.24, R@100 92.50; SVMR R@1 IoU 0.5 / 0.7 =
46.29 / 24.83; VCMR R@1 IoU 0.5 / 0.7 = 16.08 / 9.01.  
``:runlocal`` runs four steps of batch 4; ``:tiny`` trains a small PREM (hidden 32) for
200 steps of batch 16 per stage on the same features (``config_presets.short_run``).
"""

from __future__ import annotations

import ml_collections

from vmr_jax.config_cli import parse_config_arg
from vmr_jax.config_presets import data_section, short_run, tiny_model
from vmr_jax.corpus_recipes import PREM_STAGE_FLAGS, prem_recipe, prem_stage
from vmr_jax.models import prem


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = parse_config_arg(arg, (*PREM_STAGE_FLAGS, "runlocal", "tiny"), __file__)
    stage = prem_stage(flags)
    config = ml_collections.ConfigDict()
    if "tiny" in flags:
        config.model = tiny_model("prem", "tvr")
    else:
        config.model = ml_collections.ConfigDict(dict(prem.VARIANTS["tvr"]))
        config.model.name = "prem"
    config.data = data_section(
        name="tvr",
        features="hero_resnet_slowfast",
        dir="data/vmr_jax/tvr-hero_resnet_slowfast",
        seed=0,
        clip_sampling="truncate",
        num_input_clips=config.model.max_ctx_l,
        normalize=False,
        subtitles=True,
        text_mode="features",
        max_query_len=config.model.max_desc_l,
        max_spans=1,
        prefetch=2,
    )
    prem_recipe(
        config,
        stage,
        batch_size=256 if stage == "retriever" else 32,
        num_epochs=100 if stage == "retriever" else 15,
        nms_thresh=config.model.nms_thd,
        runlocal="runlocal" in flags,
    )
    short_run(config, tiny="tiny" in flags, runlocal="runlocal" in flags, learned_words=False)
    config.lock()
    return config
