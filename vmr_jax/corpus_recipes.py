"""Training and evaluation sections shared by a stage-wise corpus family's benchmark configs.

PREM trains in two stages with one config argument each (``:retriever``, ``:localizer``); the
benchmark configs (``configs/prem/tvr.py``, ``didemo.py``) differ in data, batch sizes and
NMS only, so the rest is written once here.
"""

from __future__ import annotations

import ml_collections

PREM_STAGE_FLAGS = ("retriever", "localizer")


def prem_stage(flags) -> str:
    """The stage a config argument names (``retriever`` when none: the first command)."""
    named = [f for f in PREM_STAGE_FLAGS if f in flags]
    if len(named) > 1:
        raise ValueError(f"name one stage of {PREM_STAGE_FLAGS}, got {named}")
    return named[0] if named else "retriever"


def prem_recipe(
    config: ml_collections.ConfigDict,
    stage: str,
    *,
    batch_size: int,
    num_epochs: int,
    nms_thresh: float,
    runlocal: bool = False,
) -> None:
    """``config.train``, ``config.evals`` and ``config.mesh`` of a PREM stage, in place (paper
    Sec. 4.2: AdamW, lr 1e-4, weight decay 0.01; no schedule is named, so the rate is
    constant).  The retriever ends by mining each training query's top 100 videos (the
    localizer's negatives are drawn from them); its checkpoints are kept by ``VR/r1``, the
    localizer's by ``VCMR/0.5-r1``.  Evaluation on val once per epoch.  The configs apply
    ``config_presets.short_run`` after this for ``:tiny`` / ``:runlocal``; ``runlocal`` here
    only shrinks the index-building batch."""
    config.model.stage = stage
    config.data.hard_negatives = ""  # the localizer's: filled from train.init_from
    config.data.num_negatives = 0  # the localizer's: model.num_negatives

    config.train = ml_collections.ConfigDict()
    config.train.seed = 0
    config.train.batch_size = batch_size
    config.train.num_epochs = num_epochs
    config.train.num_steps = 0
    config.train.optimizer = "adamw"
    config.train.lr = 1e-4
    config.train.milestones = ()
    config.train.weight_decay = 0.01
    config.train.grad_clip_norm = 0.0
    config.train.init_from = ""  # the localizer: the retriever's workdir
    config.train.mine_hard_negatives = 100 if stage == "retriever" else 0
    config.train.log_every = 100
    config.train.checkpoint_every = 0
    config.train.checkpoint_every_epochs = 1.0
    config.train.keep = 2
    config.train.best_metric = "VR/r1" if stage == "retriever" else "VCMR/0.5-r1"
    config.train.best_mode = "max"
    config.train.async_checkpointing = True
    config.train.progress_bar = True

    config.evals = ml_collections.ConfigDict()
    config.evals.split = "val"
    config.evals.batch_size = 50
    config.evals.video_batch_size = 4 if runlocal else 200
    config.evals.protocol = "tvr"
    config.evals.recalls = (1, 5, 10, 100)
    config.evals.ious = (0.5, 0.7)
    config.evals.nms_thresh = nms_thresh
    config.evals.every = 0
    config.evals.every_epochs = 1.0

    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = (-1, 1)  # ('data', 'model')
    config.mesh.fsdp = False
