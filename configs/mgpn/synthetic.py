"""MGPN (``tiny``) on the synthetic benchmark: the default quick run, and the test config.

``vmr-jax train --config configs/mgpn/synthetic.py --workdir /tmp/mgpn_syn`` trains in a few
minutes on two CPU cores and reaches R@1,IoU=0.5 far above chance (0.10, see
``data_pipelines/synthetic.py``).  ``--config configs/mgpn/synthetic.py:runlocal`` is a
seconds-long debug run (tiny data, a handful of steps).

Queries are read as text: the words of each query (verb, adjective, noun and fillers of the
benchmark's grammar) are token ids of a vocabulary fit on the training queries, embedded by
a learned table of ``model.vocab_size`` rows (the benchmark's 64 words plus padding and
unknown, set here so the model can be built before the data), so the trained workdir answers
free-text queries (``vmr-jax predict --queries``, ``Predictor.predict``).
The ``features`` argument reads the benchmark's noisy word vectors instead (``text_mode =
'features'``, the behaviour before; such a workdir cannot rebuild query features from text).
Arguments combine with a comma (``:runlocal,features``).

Every experiment argument of the paper's section 4.5 (``config_presets.MGPN_EXPERIMENTS``:
``table3_model1``-``5``, ``encoder_bilstm``, ``map_content``, ``comparison_nl``,
``hidden128``, ...) also works here, on the tiny model (``hidden128`` / ``hidden512`` widen
it), e.g. ``:comparison_ga`` or ``:runlocal,encoder_transformer``.

Optimiser as the official MGPN (Adam 1e-3, no weight decay, grad-norm clip 10, LR x0.1 at
the milestone epochs); model sizes from ``vmr_jax.models.mgpn.VARIANTS['tiny']``.
"""

from __future__ import annotations

import ml_collections

from data_pipelines import synthetic
from vmr_jax.config_cli import parse_config_arg
from vmr_jax.config_presets import MGPN_EXPERIMENTS, apply_mgpn_experiments, data_section
from vmr_jax.models import mgpn


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = parse_config_arg(arg, ("runlocal", "features", *MGPN_EXPERIMENTS), __file__)
    runlocal = "runlocal" in flags
    config = ml_collections.ConfigDict()

    config.model = ml_collections.ConfigDict(dict(mgpn.VARIANTS["tiny"]))
    config.model.name = "mgpn"
    apply_mgpn_experiments(config.model, sorted(flags & set(MGPN_EXPERIMENTS)), __file__)

    config.data = data_section()  # every input-pipeline field, so each can be overridden
    config.data.name = "synthetic"
    config.data.seed = 0
    # The model pools frame_stride input clips into each of its num_clips clips.
    config.data.num_input_clips = config.model.num_clips * config.model.frame_stride
    config.data.normalize = False
    if "features" in flags:
        config.data.text_mode = "features"  # the benchmark's noisy word vectors
    else:
        config.data.text_mode = "tokens"  # the words of the query text
        # Every word of the benchmark plus <pad> and <unk>: the tokenizer never has more ids.
        config.model.vocab_size = synthetic.SyntheticSpec().vocab_size + 2
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
    config.train.num_steps = 6 if runlocal else 500
    config.train.lr = 1e-3
    config.train.b1 = 0.9
    config.train.b2 = 0.999
    # Epochs of 80 steps; stepped at each epoch's start as MGPN's Engine does, milestone 6
    # lowers the rate from 0-indexed epoch 5 (step 400).
    config.train.milestones = (20,) if runlocal else (6,)
    config.train.scheduler_step = "epoch_start"
    config.train.gamma = 0.1
    config.train.grad_clip_norm = 10.0
    config.train.log_every = 1 if runlocal else 50
    config.train.checkpoint_every = 3 if runlocal else 250
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
    # The synthetic chance levels are computed with this threshold.
    config.evals.nms_thresh = 0.45
    config.evals.every = 0 if runlocal else 250

    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = (-1, 1)  # ('data', 'model')
    config.mesh.fsdp = False

    config.lock()
    return config
