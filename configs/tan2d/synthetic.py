"""2D-TAN (``tiny``) on the synthetic benchmark: the quick run, and the test config.

``vmr-jax train --config configs/tan2d/synthetic.py --workdir /tmp/tan2d_syn`` trains in a
couple of minutes on two CPU cores; ``:runlocal`` is a seconds-long debug run (tiny data, a
handful of steps).  Model sizes from ``vmr_jax.models.tan2d.VARIANTS['tiny']`` (16 map clips,
NUM_SCALE_LAYERS [8, 4]: 110 proposals, hidden 16, three 3x3 map convs, SparsePropConv).

Optimiser as the official ``moment_localization/train.py`` (Adam, betas 0.9/0.999, no weight
decay, ``clip_grad_norm_`` 10, constant LR) except the LR: 3e-3 instead of the yamls' 1e-4, so
that the tiny model learns in about a thousand steps.  Chance levels of this map (random scores,
NMS 0.45) are computed by ``vmr_jax.evaluation.chance.chance_level`` in
``tests/models/test_tan2d.py``.
"""

from __future__ import annotations

import ml_collections

from vmr_jax.config_cli import parse_config_arg
from vmr_jax.config_presets import data_section
from vmr_jax.models import tan2d


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = "runlocal" in parse_config_arg(arg, ("runlocal",), __file__)
    config = ml_collections.ConfigDict()

    config.model = ml_collections.ConfigDict(dict(tan2d.VARIANTS["tiny"]))
    config.model.name = "tan2d"

    config.data = data_section()  # every input-pipeline field, so each can be overridden
    config.data.name = "synthetic"
    config.data.seed = 0
    # The frame layer pools frame_stride input clips into each of its num_clips clips.
    config.data.num_input_clips = config.model.num_clips * config.model.frame_stride
    config.data.normalize = False
    config.data.text_mode = "features"  # the benchmark's noisy word vectors
    config.data.max_query_len = 10
    config.data.max_spans = 1
    config.data.prefetch = 2
    config.data.synthetic = ml_collections.ConfigDict()
    config.data.synthetic.num_videos = 60 if runlocal else 800
    config.data.synthetic.queries_per_video = 4
    config.data.synthetic.feature_dim = config.model.feature_dim
    config.data.synthetic.word_dim = config.model.word_dim
    config.data.synthetic.max_query_words = config.data.max_query_len

    config.train = ml_collections.ConfigDict()
    config.train.seed = 0
    config.train.batch_size = 8 if runlocal else 32
    config.train.num_epochs = 0
    config.train.num_steps = 6 if runlocal else 1200
    config.train.lr = 3e-3
    config.train.b1 = 0.9
    config.train.b2 = 0.999
    config.train.milestones = ()
    config.train.grad_clip_norm = 10.0
    config.train.log_every = 1 if runlocal else 50
    config.train.checkpoint_every = 3 if runlocal else 600
    config.train.keep = 2
    config.train.best_metric = "R@1,IoU=0.5"
    config.train.best_mode = "max"
    config.train.async_checkpointing = True
    config.train.progress_bar = True

    config.evals = ml_collections.ConfigDict()
    config.evals.split = "val"
    config.evals.batch_size = 64
    config.evals.protocol = "2dtan"
    config.evals.recalls = (1, 5)
    config.evals.ious = (0.3, 0.5, 0.7)
    config.evals.nms_thresh = 0.45
    config.evals.every = 0 if runlocal else 600

    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = (-1, 1)  # ('data', 'model')
    config.mesh.fsdp = False

    config.lock()
    return config
