"""Shared builders of the configs in ``configs/``: one function per model family and setting.

The config files stay the place where a run's values are written down (each file lists the
official YAML values it reproduces); these builders only assemble the sections the files
share, so the four MGPN benchmark configs cannot drift apart in structure.

Every ``config.data`` holds every field the input pipeline reads (:func:`data_section`), so
each can be overridden on the command line (``--config.data.vocab_size=5000``).

Two config arguments shorten a benchmark run (:func:`short_run`):

* ``runlocal``: four steps of batch 4, to check the set-up in seconds.
* ``tiny``: a first model in a few minutes on a CPU: the family's ``tiny`` sizes
  (:func:`tiny_model`; the data's feature widths and time geometry stay), 200 steps of batch
  16, one evaluation and checkpoint at the end, and learned word embeddings
  (``text_mode='tokens'``, vocabulary of the training queries, ``model.vocab_size`` sized
  from it), so no GloVe file is needed.  XML reads TVR's query token features as before;
  Cascaded MPN reads query feature vectors only, so it keeps them (RoBERTa tokens on TVR,
  GloVe on DiDeMo and ActivityNet: ``short_run(learned_words=False)``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import ml_collections

from data_pipelines.text_inputs import DATA_DEFAULTS
from vmr_jax.config_cli import parse_config_arg
from vmr_jax.models import cascaded_mpn, fvmr, mgpn, prem, tan2d, vlanet, xml

# Model fields the ``tiny`` argument takes from the family's ``tiny`` variant: widths, layers
# and the map size.  Feature widths and clip / proposal times stay the benchmark's.
TINY_MODEL_FIELDS: dict[str, tuple[str, ...]] = {
    "mgpn": (
        "hidden", "num_clips", "frame_stride", "pooling_counts", "gru_layers", "word_dim",
        "groups",
    ),
    "tan2d": (
        "hidden", "num_clips", "frame_stride", "num_scale_layers", "word_dim", "txt_hidden",
        "lstm_layers", "map_hidden", "map_kernels", "map_strides", "map_paddings",
        "map_dilations",
    ),
    "fvmr": (
        "num_clips", "frame_stride", "pooling_counts", "hidden", "video_kernels", "word_dim",
        "lstm_hidden", "lstm_layers", "node_hidden", "mlp_hidden", "embed_dim",
    ),
    "vlanet": ("word_dim", "gru_hidden", "embed_dim", "attention_dim"),
    "xml": ("hidden_size",),
    "cascaded_mpn": ("hidden_size", "n_heads"),
    "prem": ("hidden_size", "intermediate_size"),
}  # fmt: skip
_FAMILY_MODULES = {
    "mgpn": mgpn,
    "tan2d": tan2d,
    "fvmr": fvmr,
    "vlanet": vlanet,
    "xml": xml,
    "cascaded_mpn": cascaded_mpn,
    "prem": prem,
}

# Training lengths of the two short-run arguments (runlocal wins when both are given).
TINY_RUN = {
    "train.batch_size": 16,
    "train.num_epochs": 0,
    "train.num_steps": 200,
    "train.log_every": 20,
    "train.checkpoint_every": 100,
    "train.checkpoint_every_epochs": 0.0,
    "evals.batch_size": 64,
    "evals.every": 0,
    "evals.every_epochs": 0.0,
}
RUNLOCAL_RUN = {
    "train.batch_size": 4,
    "train.num_epochs": 0,
    "train.num_steps": 4,
    "train.log_every": 1,
    "train.checkpoint_every": 2,
    "train.checkpoint_every_epochs": 0.0,
    "evals.batch_size": 4,
    "evals.every": 0,
    "evals.every_epochs": 0.0,
}


def data_section(**fields) -> ml_collections.ConfigDict:
    """``config.data`` with every defaulted input-pipeline field (``DATA_DEFAULTS``) present,
    so each can be overridden, updated with ``fields``."""
    data = ml_collections.ConfigDict(dict(DATA_DEFAULTS))
    for name, value in fields.items():
        data[name] = value
    return data


def tiny_model(family: str, variant: str) -> ml_collections.ConfigDict:
    """``config.model`` of the ``tiny`` argument: ``VARIANTS[variant]`` of ``family`` with the
    fields of :data:`TINY_MODEL_FIELDS` taken from its ``tiny`` variant."""
    variants = _FAMILY_MODULES[family].VARIANTS
    fields = dict(variants[variant])
    fields.update({k: variants["tiny"][k] for k in TINY_MODEL_FIELDS[family]})
    model = ml_collections.ConfigDict(fields)
    model.name = family
    return model


def short_run(
    config: ml_collections.ConfigDict, *, tiny: bool, runlocal: bool, learned_words: bool = True
) -> None:
    """Applies the ``tiny`` (:data:`TINY_RUN`, learned word embeddings) and ``runlocal``
    (:data:`RUNLOCAL_RUN`) training lengths to a full benchmark config, in place.

    ``learned_words=False`` keeps GloVe under ``tiny``: for a family that reads query
    feature vectors (``query_features``), never token ids (Cascaded MPN).
    """
    runs = ([TINY_RUN] if tiny else []) + ([RUNLOCAL_RUN] if runlocal else [])
    for run in runs:
        for key, value in run.items():
            section, name = key.split(".")
            config[section][name] = value
    if tiny and learned_words and config.data.text_mode == "glove":
        config.data.text_mode = "tokens"
        config.model.vocab_size = 0  # sized from the tokenizer when the data is read


def _map_benchmark(
    model: ml_collections.ConfigDict,
    *,
    dataset: str,
    features: str,
    max_query_len: int,
    batch_size: int,
    num_epochs: int,
    lr: float,
    milestones: Sequence[int],
    grad_clip_norm: float,
    eval_split: str,
    nms_thresh: float,
    ious: Sequence[float],
    runlocal: bool,
    tiny: bool,
    glove_path: str = "data/glove.840B.300d.txt",
) -> ml_collections.ConfigDict:
    """The sections every 2D-map family shares on a built benchmark (unlocked).

    Data: ``data/vmr_jax/<dataset>-<features>`` (``vmr-jax data build``); 2D-TAN's
    DATASET.NUM_SAMPLE_CLIPS = clips x TARGET_STRIDE, averaged with the 2D-TAN rule, every
    native clip L2-normalised (DATASET.NORMALIZE); GloVe vectors from ``glove_path`` (the
    datasets' torchtext vocab: 840B 300-d for MGPN and FVMR, 6B 300-d for 2D-TAN).  Words are
    lower-cased runs of letters and digits (text.tokenizer.split_words) unless the family sets
    the official text mode (:func:`official_text`: MGPN and 2D-TAN split on whitespace, so a
    word glued to punctuation ("door.") misses GloVe there and hits it here).  Adam (betas
    0.9/0.999, no weight decay), LR x0.1 at the ``milestones`` (``MultiStepLR`` stepped at the
    start of each epoch, as MGPN's ``Engine`` does: milestone m lowers the rate from 0-indexed
    epoch m - 1), evaluation and checkpoints once per epoch under the ``2dtan`` protocol.
    ``runlocal`` and ``tiny``: :func:`short_run`.
    """
    config = ml_collections.ConfigDict()
    config.model = model

    config.data = data_section(
        name=dataset,
        features=features,
        dir=f"data/vmr_jax/{dataset}-{features}",
        seed=0,
        num_input_clips=model.num_clips * model.frame_stride,
        clip_sampling="resample",
        normalize=True,
        text_mode="glove",
        glove_path=glove_path,
        glove_missing="zero",
        max_query_len=max_query_len,
        max_spans=1,
        prefetch=2,
    )

    config.train = ml_collections.ConfigDict()
    config.train.seed = 0
    config.train.batch_size = batch_size
    config.train.num_epochs = num_epochs
    config.train.num_steps = 0
    config.train.lr = lr
    config.train.b1 = 0.9
    config.train.b2 = 0.999
    config.train.milestones = tuple(milestones)
    # MGPN's Engine steps MultiStepLR before each epoch: milestone m decays from epoch m - 1
    # (optimizers.lr_schedule).  2D-TAN and FVMR have no milestones.
    config.train.scheduler_step = "epoch_start"
    config.train.gamma = 0.1
    config.train.grad_clip_norm = grad_clip_norm
    config.train.log_every = 50
    config.train.checkpoint_every = 0
    config.train.checkpoint_every_epochs = 1.0
    config.train.keep = 3
    config.train.best_metric = "R@1,IoU=0.5"
    config.train.best_mode = "max"
    config.train.async_checkpointing = True
    config.train.progress_bar = True

    config.evals = ml_collections.ConfigDict()
    config.evals.split = eval_split
    config.evals.batch_size = batch_size
    config.evals.protocol = "2dtan"
    config.evals.recalls = (1, 5)
    config.evals.ious = tuple(ious)
    config.evals.nms_thresh = nms_thresh
    config.evals.every = 0
    config.evals.every_epochs = 1.0  # resolved by the trainer

    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = (-1, 1)  # ('data', 'model')
    config.mesh.fsdp = False
    short_run(config, tiny=tiny, runlocal=runlocal)
    return config


def _benchmark_model(family: str, variant: str, tiny: bool) -> ml_collections.ConfigDict:
    if tiny:
        return tiny_model(family, variant)
    model = ml_collections.ConfigDict(dict(_FAMILY_MODULES[family].VARIANTS[variant]))
    model.name = family
    return model


# Words of the longest query of each dataset under the official whitespace rule, over every
# split of shared/data (charades_sta_{train,test}.txt after the official '.\n' cut; TACoS and
# ActivityNet {train,val,test}.json): Charades-STA 10, TACoS 64 (val), ActivityNet 82 (val;
# 7 train, 6 val and 1 test queries are longer than 64).  The official collate never cuts, so
# the official text mode sizes max_query_len to hold them (Charades keeps the old 64).
OFFICIAL_MAX_QUERY_LEN = {"charades_sta": 64, "tacos": 64, "activitynet": 82}


def official_text(config: ml_collections.ConfigDict, glove_missing: str) -> None:
    """The official MGPN / 2D-TAN text mode on ``config.data`` (unlocked), in place:
    ``word_split='official'`` (``[w.lower() for w in sentence.split()]`` of their
    ``lib/datasets/*.py``), the family's unknown-word rule ``glove_missing``, no cut
    (``cut_long_queries=False``) and ``max_query_len`` = :data:`OFFICIAL_MAX_QUERY_LEN` of the
    dataset.  The per-batch padding is the model's (``mgpn.text_padding``; 2D-TAN's
    unidirectional LSTM reads its last real word, which trailing padding cannot change)."""
    config.data.word_split = "official"
    config.data.glove_missing = glove_missing
    config.data.cut_long_queries = False
    config.data.max_query_len = OFFICIAL_MAX_QUERY_LEN[config.data.name]


# MGPN's experiments of the paper's section 4.5: config argument -> model fields
# (``vmr_jax.models.mgpn`` docstring, "Ablations").  ``table3_model5`` and the ``*_bigru``,
# ``map_both`` and ``hidden256`` arguments are the default model, named so
# that every row and bar of the paper has its argument.
MGPN_EXPERIMENTS: dict[str, dict[str, object]] = {
    # Table 3: sec-enc. (fine-grained encoders), sec-fuse. (conditioned interaction), comp.
    "table3_model1": dict(finegrained=False, conditioned_interaction=False, comparison="none"),
    "table3_model2": dict(finegrained=True, conditioned_interaction=False, comparison="none"),
    "table3_model3": dict(finegrained=True, conditioned_interaction=True, comparison="none"),
    "table3_model4": dict(finegrained=False, conditioned_interaction=False, comparison="conv"),
    "table3_model5": dict(finegrained=True, conditioned_interaction=True, comparison="conv"),
    # Table 4: the coarse-grained encoder.
    "encoder_bigru": dict(encoder="bigru"),
    "encoder_bilstm": dict(encoder="bilstm"),
    "encoder_transformer": dict(encoder="transformer"),
    # Figure 4: the choice (moment map) generator.
    "map_content": dict(map_generator="content"),
    "map_boundary": dict(map_generator="boundary"),
    "map_both": dict(map_generator="both"),
    # Figure 5: the choice comparison module (SC, GA, NL; MGPN256 is hidden256) ...
    "comparison_sc": dict(comparison="stacked_conv"),
    "comparison_ga": dict(comparison="graph_attention"),
    "comparison_nl": dict(comparison="non_local"),
    # ... and MGPN128 / MGPN256 / MGPN512 (the official mgpn512.yaml differs only in widths).
    "hidden128": dict(hidden=128),
    "hidden256": dict(hidden=256),
    "hidden512": dict(hidden=512),
}

# Each table and figure of the paper's section 4.5: its dataset and the config argument of
# every row or bar, in the paper's order (the README's commands: ``vmr-jax train --config
# configs/mgpn/<dataset>.py:<argument>``).
MGPN_PAPER_EXPERIMENTS: dict[str, tuple[str, dict[str, str]]] = {
    "Table 3": (
        "activitynet",
        {
            "model 1 (no sec-enc., no sec-fuse., no comp.)": "table3_model1",
            "model 2 (sec-enc.)": "table3_model2",
            "model 3 (sec-enc., sec-fuse.)": "table3_model3",
            "model 4 (comp.)": "table3_model4",
            "model 5 (sec-enc., sec-fuse., comp.: MGPN)": "table3_model5",
        },
    ),
    "Table 4": (
        "activitynet",
        {
            "w/. GRU": "encoder_bigru",
            "w/. LSTM": "encoder_bilstm",
            "w/. Transformer": "encoder_transformer",
        },
    ),
    "Figure 4": (
        "tacos",
        {"content (A_C)": "map_content", "boundary (A_B)": "map_boundary", "both": "map_both"},
    ),
    "Figure 5": (
        "tacos",
        {
            "SC (2D-TAN stacked convolution)": "comparison_sc",
            "GA (RaNet graph attention)": "comparison_ga",
            "NL (non-local blocks)": "comparison_nl",
            "MGPN128": "hidden128",
            "MGPN256": "hidden256",
            "MGPN512": "hidden512",
        },
    ),
}


def mgpn_experiments(dataset: str) -> tuple[str, ...]:
    """The :data:`MGPN_EXPERIMENTS` arguments of ``configs/mgpn/<dataset>.py``: those of the
    paper's tables and figures run on ``dataset`` (:data:`MGPN_PAPER_EXPERIMENTS`)."""
    return tuple(
        arg
        for on, rows in MGPN_PAPER_EXPERIMENTS.values()
        if on == dataset
        for arg in rows.values()
    )


def apply_mgpn_experiments(
    model: ml_collections.ConfigDict, experiments: Sequence[str], config_file: str
) -> None:
    """Sets the model fields of each :data:`MGPN_EXPERIMENTS` argument on ``model``, in place.

    Arguments combine when they set different fields (``encoder_bilstm,map_content``); a
    ValueError names the config file and the arguments that set the same field.
    """
    if os.path.isabs(config_file):
        config_file = os.path.relpath(config_file)
    owner: dict[str, str] = {}
    for arg in sorted(experiments):
        if arg not in MGPN_EXPERIMENTS:
            raise ValueError(f"{config_file}: {arg!r} is not an MGPN experiment argument")
        for field, value in MGPN_EXPERIMENTS[arg].items():
            if field in owner:
                raise ValueError(
                    f"{config_file}: config arguments {owner[field]!r} and {arg!r} both set "
                    f"model.{field}; give one of them"
                )
            owner[field] = arg
            model[field] = value


def mgpn_benchmark(
    *,
    variant: str,
    dataset: str,
    features: str,
    batch_size: int,
    milestones: Sequence[int],
    nms_thresh: float,
    ious: Sequence[float],
    eval_split: str = "test",
    num_epochs: int = 15,
    runlocal: bool = False,
    tiny: bool = False,
    experiments: Sequence[str] = (),
    config_file: str = "configs/mgpn",
) -> ml_collections.ConfigDict:
    """MGPN on a built benchmark with the official training schedule (Huntersxsx/MGPN YAML).

    Text: the official mode (:func:`official_text`): whitespace words, unknown words read
    torchtext's row 400,000 of glove.840B (``glove_missing='row:400000'``), no cut, and the
    model pads words to each batch's longest query (``model.text_padding='batch'``, the
    official ``VARIANTS``).

    Args:
      variant: key of ``mgpn.VARIANTS`` (model sizes of the YAML).
      dataset, features: the built dataset (``vmr-jax data build --dataset D --features F``),
        expected in ``data/vmr_jax/<D>-<F>`` unless ``--config.data.dir`` says otherwise.
      batch_size, milestones (epochs), nms_thresh, ious: ``TRAIN.BATCH_SIZE``,
        ``TRAIN.MILESTONES``, ``TEST.NMS_THRESH``, ``TEST.TIOU``.
      eval_split: ``NO_VAL: True`` in every MGPN YAML: the test split is the one evaluated.
      runlocal: a few steps with a small batch, to check the set-up on a CPU.
      tiny: a small model trained for a few minutes on a CPU, without GloVe (module docstring).
      experiments: :data:`MGPN_EXPERIMENTS` arguments (the paper's section 4.5), applied after
        ``tiny`` (``tiny,hidden128`` is the tiny model with hidden 128); ``config_file``
        names the config in their errors.
    """
    model = _benchmark_model("mgpn", variant, tiny)
    apply_mgpn_experiments(model, experiments, config_file)
    config = _map_benchmark(
        model,
        dataset=dataset,
        features=features,
        max_query_len=64,
        batch_size=batch_size,
        num_epochs=num_epochs,
        lr=1e-3,  # TRAIN.LR; WEIGHT_DECAY 0; TRAIN.GAMMA 0.1
        milestones=milestones,
        grad_clip_norm=10.0,  # clip_grad_norm_(..., 10) of moment_localization/train.py
        eval_split=eval_split,
        nms_thresh=nms_thresh,
        ious=ious,
        runlocal=runlocal,
        tiny=tiny,
    )
    # MGPN's datasets: stoi.get(w.lower(), 400000) on glove.840B, an ordinary word's row there.
    official_text(config, glove_missing="row:400000")
    config.lock()
    return config


def fvmr_benchmark(
    *,
    variant: str,
    dataset: str,
    features: str,
    nms_thresh: float,
    ious: Sequence[float],
    eval_split: str = "test",
    num_epochs: int = 30,
    runlocal: bool = False,
    tiny: bool = False,
    without_distillation: bool = False,
    frozen_embed: bool = False,
    fuse_scores: bool = False,
) -> ml_collections.ConfigDict:
    """FVMR on a built benchmark with the paper's training values (section 4.1).

    Paper values: Adam 2e-4, batch 32, queries truncated to 20 words, a 300-d word table
    initialised with GloVe and trained (``model.word_embed='glove'``), labels scaled between
    IoU 0.3 and 0.7, lambda 3, T 1, no distillation in the first 8 epochs.
    The paper trains "until the training loss is smooth"; ``num_epochs`` (30) is our choice.
    Proposal map, feature sampling and evaluation (NMS, tIoU) as the 2D-TAN experiment of
    the same dataset, since FVMR follows 2D-TAN [65] for the proposals.  The semantic role
    trees are parsed once with spaCy (``pip install vmr_jax[srl]``) and cached with the
    built data; inference never needs them.

    Args:
      variant: key of ``fvmr.VARIANTS``.
      dataset, features: the built dataset, expected in ``data/vmr_jax/<D>-<F>``.
      nms_thresh, ious: 2D-TAN's ``TEST.NMS_THRESH`` and ``TEST.TIOU`` of that dataset.
      runlocal, tiny: :func:`short_run` (``tiny`` keeps the spaCy trees of the teacher).
      without_distillation: the paper's "FVMR (w/o SD)" ablation (``distill_weight = 0``).
      frozen_embed: the GloVe word table frozen (``model.freeze_word_embed``; not a paper row).
      fuse_scores: the paper's "FVMR (p + q)" row of Table 5 (``model.inference_score =
        'p+q'``: evaluation ranks the mean of ``sigmoid(p)`` and ``sigmoid(q)``; training is
        unchanged).
    ``tiny`` learns its word table from scratch over the training vocabulary
    (``word_embed='input'``, ``text_mode='tokens'``), so no GloVe file is needed.
    """
    model = _benchmark_model("fvmr", variant, tiny)
    model.word_embed = "input" if tiny else "glove"
    model.freeze_word_embed = frozen_embed
    if without_distillation:
        model.distill_weight = 0.0
    if fuse_scores:
        model.inference_score = "p+q"
    config = _map_benchmark(
        model,
        dataset=dataset,
        features=features,
        max_query_len=20,  # "truncate all text queries that have maximum 20 words"
        batch_size=32,
        num_epochs=num_epochs,
        lr=2e-4,
        milestones=(),
        grad_clip_norm=0.0,  # the paper names no clipping
        eval_split=eval_split,
        nms_thresh=nms_thresh,
        ious=ious,
        runlocal=runlocal,
        tiny=tiny,
    )
    config.data.semantic_tree = "spacy"
    config.data.spacy_model = "en_core_web_sm"
    config.data.tree_max_verbs = model.max_verbs
    config.data.tree_max_nouns = model.max_nouns
    config.lock()
    return config


def tan2d_benchmark(
    arg: str | None,
    *,
    dataset: str,
    features: str,
    yamls: dict[str, dict],
    config_file: str = "configs/tan2d",
) -> ml_collections.ConfigDict:
    """2D-TAN on a built benchmark with the official training values (microsoft/2D-TAN YAML).

    Args:
      arg: the config file's argument, comma-separated: ``conv`` (default) or ``pool`` picks the
        YAML (``SparsePropConv`` / ``SparsePropMaxPool``), ``runlocal`` a few steps with a small
        batch, ``tiny`` a small model without GloVe (:func:`short_run`); e.g.
        ``"pool,runlocal"``.
      dataset, features: the built dataset (``vmr-jax data build --dataset D --features F``),
        expected in ``data/vmr_jax/<D>-<F>`` unless ``--config.data.dir`` says otherwise.
      yamls: ``{'conv': values, 'pool': values}``; values hold ``variant`` (key of
        ``tan2d.VARIANTS``), ``nms_thresh``, ``ious`` (TEST.TIOU) and ``eval_split`` (``test``
        for ``NO_VAL: True``, else ``val``).
      config_file: the calling config file (named in argument errors).

    Shared by every 2D-TAN YAML: TRAIN.BATCH_SIZE 32, LR 1e-4, WEIGHT_DECAY 0, MAX_EPOCH 100,
    Adam betas 0.9/0.999, ``clip_grad_norm_`` 10 (``moment_localization/train.py``),
    TEST.BATCH_SIZE 32, RECALL 1,5, DATASET.NUM_SAMPLE_CLIPS 256, NORMALIZE True.  The official
    ``ReduceLROnPlateau`` (factor 0.8, patience 20 epochs, on the val loss of the YAMLs with a
    val split) has no counterpart in the trainer: the LR stays constant.

    Text: the official mode (:func:`official_text`).  Words: GloVe 6B 300-d,
    ``data/glove.6B.300d.txt`` (from
    https://nlp.stanford.edu/data/glove.6B.zip), the vectors every ``lib/datasets/*.py`` of
    microsoft/2D-TAN loads (torchtext ``pretrained_aliases['glove.6B.300d']``, 400,000
    lower-case words).  Unknown words get zeros (``glove_missing='zero'``): the official reader
    appends one zero row at index 400,000 and looks each lower-cased word up with
    ``stoi.get(word, 400000)``, so every word outside the 6B vocabulary reads that zero row.
    MGPN's reader writes the same lookup on glove.840B, where row 400,000 is an ordinary word.
    """
    tokens = parse_config_arg(
        arg, ("conv", "pool", "runlocal", "tiny"), config_file, exclusive=[("conv", "pool")]
    )
    official = yamls["pool" if "pool" in tokens else "conv"]
    config = _map_benchmark(
        _benchmark_model("tan2d", official["variant"], "tiny" in tokens),
        dataset=dataset,
        features=features,
        max_query_len=64,
        batch_size=32,
        num_epochs=100,
        lr=1e-4,
        milestones=(),
        grad_clip_norm=10.0,
        eval_split=official["eval_split"],
        nms_thresh=official["nms_thresh"],
        ious=official["ious"],
        runlocal="runlocal" in tokens,
        tiny="tiny" in tokens,
        glove_path="data/glove.6B.300d.txt",
    )
    official_text(config, glove_missing="zero")
    config.lock()
    return config


def vlanet_benchmark(
    *,
    variant: str,
    dataset: str,
    features: str,
    num_input_clips: int,
    clip_sampling: str,
    normalize: bool,
    protocol: str,
    eval_split: str,
    best_metric: str,
    flags: set[str],
) -> ml_collections.ConfigDict:
    """VLANet, weakly supervised (``train.supervision='weak'``), on a built benchmark.

    The paper gives no optimiser, batch or schedule; the choices here: Adam 1e-3 (no decay,
    no clipping), batch 32, 30 epochs, GloVe 840B 300-d words (the paper's GloVe), queries cut
    at 20 words.  ``flags``: Table 3's ``wo_surrogate``, ``wo_self``, ``wo_cross``, and
    ``runlocal`` / ``tiny`` (:func:`short_run`; ``tiny`` keeps the proposal geometry).
    """
    model = _benchmark_model("vlanet", variant, "tiny" in flags)
    model.surrogate = "wo_surrogate" not in flags
    model.self_attention = "wo_self" not in flags
    if "wo_cross" in flags:
        model.cross_attention_steps = 0

    config = ml_collections.ConfigDict()
    config.model = model
    config.data = data_section(
        name=dataset,
        features=features,
        dir=f"data/vmr_jax/{dataset}-{features}",
        seed=0,
        num_input_clips=num_input_clips,
        clip_sampling=clip_sampling,
        normalize=normalize,
        text_mode="glove",
        glove_path="data/glove.840B.300d.txt",
        glove_missing="zero",
        max_query_len=20,
        max_spans=0 if dataset == "didemo" else 1,  # DiDeMo: one span per annotator
        prefetch=2,
    )

    config.train = ml_collections.ConfigDict()
    config.train.supervision = "weak"
    config.train.seed = 0
    config.train.batch_size = 32
    config.train.num_epochs = 30
    config.train.num_steps = 0
    config.train.lr = 1e-3
    config.train.b1 = 0.9
    config.train.b2 = 0.999
    config.train.milestones = ()
    config.train.gamma = 0.1
    config.train.grad_clip_norm = 0.0
    config.train.log_every = 50
    config.train.checkpoint_every = 0
    config.train.checkpoint_every_epochs = 1.0
    config.train.keep = 3
    config.train.best_metric = best_metric
    config.train.best_mode = "max"
    config.train.async_checkpointing = True
    config.train.progress_bar = True

    config.evals = ml_collections.ConfigDict()
    config.evals.split = eval_split
    config.evals.batch_size = 32
    config.evals.protocol = protocol
    config.evals.recalls = (1, 5)
    config.evals.ious = (0.3, 0.5, 0.7)
    config.evals.nms_thresh = 0.5
    config.evals.every = 0
    config.evals.every_epochs = 1.0  # resolved by the trainer

    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = (-1, 1)  # ('data', 'model')
    config.mesh.fsdp = False
    short_run(config, tiny="tiny" in flags, runlocal="runlocal" in flags)
    return config


def cascaded_mpn_recipe(
    config: ml_collections.ConfigDict, *, batch_size: int, nms_thresh: float, runlocal: bool
) -> None:
    """The ``train``, ``evals`` and ``mesh`` sections of the Cascaded MPN benchmark configs.

    Paper (Sec. IV-B-2): AdamW, lr 3e-5, weight decay 0.01 (constant rate: no schedule is
    named).  HERO's fine-tuning configs for the rest: seed 77, 5000 steps, gradient norm 1.0,
    evaluation batches of 80 queries and 50 videos; ``batch_size`` (HERO's queries per step)
    and ``nms_thresh`` (its ``nms_thd``) differ per dataset.  Corpus evaluation on val under
    the ``tvr`` protocol once per epoch, best checkpoint by ``VCMR/0.5-r1``.
    """
    config.train = ml_collections.ConfigDict()
    config.train.seed = 77  # HERO's
    config.train.batch_size = batch_size
    config.train.num_epochs = 0
    config.train.num_steps = 5000
    config.train.optimizer = "adamw"
    config.train.lr = 3e-5
    config.train.milestones = ()
    config.train.weight_decay = 0.01
    config.train.grad_clip_norm = 1.0
    config.train.log_every = 100
    config.train.checkpoint_every = 0
    config.train.checkpoint_every_epochs = 1.0
    config.train.keep = 3
    config.train.best_metric = "VCMR/0.5-r1"
    config.train.best_mode = "max"
    config.train.async_checkpointing = True
    config.train.progress_bar = True

    config.evals = ml_collections.ConfigDict()
    config.evals.split = "val"
    config.evals.batch_size = 80  # HERO vcmr_eval_batch_size
    config.evals.video_batch_size = 4 if runlocal else 50  # vcmr_eval_video_batch_size
    config.evals.protocol = "tvr"
    config.evals.recalls = (1, 5, 10, 100)
    config.evals.ious = (0.5, 0.7)
    config.evals.nms_thresh = nms_thresh
    config.evals.every = 0
    config.evals.every_epochs = 1.0

    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = (-1, 1)  # ('data', 'model')
    config.mesh.fsdp = False
