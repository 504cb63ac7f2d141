"""PREM (``tiny``) on the synthetic video corpus, stage by stage: the VCMR quick run and the
test config.

    vmr-jax train --config configs/prem/synthetic.py:retriever --workdir /tmp/prem_r
    vmr-jax train --config configs/prem/synthetic.py:localizer --workdir /tmp/prem_l \\
        --config.train.init_from=/tmp/prem_r

The first trains the retriever (eqs. 5-8) and, at its end, mines each training query's top 100
videos with it (``/tmp/prem_r/hard_negatives/train.npz``); the second starts from that
workdir's retriever (frozen, the checkpoint the negatives were mined with) and trains the
localizer (eqs. 9-11) on the query's video plus ``num_negatives`` = 4 of its mined videos.
Both evaluate VCMR, SVMR and VR under the ``tvr`` protocol against every video of the val
split (the retriever's VCMR uses the untrained localizer: read its VR).  The data are XML's
synthetic corpus (``configs/xml/synthetic.py``: video and subtitle streams, every query names
its video's scene), so the two compare on the same data and steps.  ``:runlocal`` is a
seconds-long debug run of either stage.

Deviations from the paper's recipe (AdamW 1e-4, 100 retriever epochs of batch 256, 15
localizer epochs of batch 32), for a minutes-long CPU run: learning rate 1e-3 and 600 steps
of batch 32 per stage, as the XML synthetic config.
"""

from __future__ import annotations

import ml_collections

from vmr_jax.config_cli import parse_config_arg
from vmr_jax.config_presets import data_section
from vmr_jax.models import prem


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = parse_config_arg(arg, ("retriever", "localizer", "runlocal"), __file__)
    runlocal = "runlocal" in flags
    stage = "localizer" if "localizer" in flags else "retriever"
    config = ml_collections.ConfigDict()

    config.model = ml_collections.ConfigDict(dict(prem.VARIANTS["tiny"]))
    config.model.name = "prem"
    config.model.stage = stage
    config.model.max_ctx_l = 64
    config.model.num_negatives = 4
    config.model.top_videos = 10
    config.model.retrieve_videos = 100

    config.data = data_section()  # every input-pipeline field, so each can be overridden
    config.data.name = "synthetic"
    config.data.seed = 0
    config.data.clip_sampling = "truncate"  # TVRetrieval's max_ctx_l rule
    config.data.num_input_clips = config.model.max_ctx_l
    config.data.normalize = False
    config.data.subtitles = True
    config.data.text_mode = "features"
    config.data.max_query_len = config.model.max_desc_l
    config.data.max_spans = 1
    config.data.prefetch = 2
    config.data.hard_negatives = ""  # localizer: filled from train.init_from
    config.data.num_negatives = 0  # localizer: model.num_negatives
    config.data.synthetic = ml_collections.ConfigDict()
    config.data.synthetic.num_videos = 60 if runlocal else 500
    config.data.synthetic.queries_per_video = 4
    config.data.synthetic.num_scenes = 25
    config.data.synthetic.subtitles = True
    config.data.synthetic.subtitle_sentences = False
    config.data.synthetic.subtitle_only_fraction = 0.25
    config.data.synthetic.min_clips = 24
    config.data.synthetic.max_clips = 64
    config.data.synthetic.clip_seconds = config.model.clip_length
    config.data.synthetic.max_event_frac = 0.25
    config.data.synthetic.feature_dim = config.model.vid_feat_size
    config.data.synthetic.word_dim = config.model.q_feat_size
    config.data.synthetic.min_query_words = 5
    config.data.synthetic.max_query_words = config.data.max_query_len

    config.train = ml_collections.ConfigDict()
    config.train.seed = 0
    config.train.batch_size = 8 if runlocal else 32
    config.train.num_epochs = 0
    config.train.num_steps = 6 if runlocal else 600
    config.train.optimizer = "adamw"
    config.train.lr = 1e-3
    config.train.milestones = ()
    config.train.weight_decay = 0.01
    config.train.grad_clip_norm = 0.0
    config.train.init_from = ""  # localizer: the retriever's workdir
    # The retriever mines each training query's top 100 videos when it ends.
    config.train.mine_hard_negatives = 100 if stage == "retriever" else 0
    config.train.log_every = 1 if runlocal else 50
    config.train.checkpoint_every = 3 if runlocal else 300
    config.train.keep = 2
    config.train.best_metric = "VR/r1" if stage == "retriever" else "VCMR/0.5-r1"
    config.train.best_mode = "max"
    config.train.async_checkpointing = True
    config.train.progress_bar = True

    config.evals = ml_collections.ConfigDict()
    config.evals.split = "val"
    config.evals.batch_size = 50
    config.evals.protocol = "tvr"
    config.evals.recalls = (1, 5, 10, 100)
    config.evals.ious = (0.5, 0.7)
    config.evals.nms_thresh = config.model.nms_thd
    config.evals.every = 0 if runlocal else 300

    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = (-1, 1)  # ('data', 'model')
    config.mesh.fsdp = False

    config.lock()
    return config
