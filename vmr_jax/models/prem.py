"""PREM: Partial Relevance Enhanced Model for video corpus moment retrieval (Hou et al., ICMR
2024), a two-stage model trained stage by stage.

Paper: "Improving Video Corpus Moment Retrieval with Partial Relevance Enhancement" (Sec. 3).
The authors' repository holds no code, so the paper is the specification; where it is silent
the choice follows TVRetrieval (XML: modular query pooling, features, the clip label rule,
the moment window) or CONQUER (a localizer re-ranking a retriever's list, Shared-Norm, top-10
inference), and is written where it is made.

* Retriever (eqs. 5-8, :mod:`vmr_jax.models.prem_retriever`): a late-fusion model; modality-
  specific query pooling and one joint image/subtitle Transformer layer; ``S^R`` = mean over
  modalities of the max clip cosine; relevant content-enhanced InfoNCE (strong and weak
  positives, in-batch negatives of the whole global batch) plus the video-to-query loss.
* Localizer (eqs. 9-11, :mod:`vmr_jax.models.prem_localizer`): early fusion with its own
  encoders, modality-specific gates, clip fusion, two fusion layers with cross-attention to the
  query words, Conv1D start/end heads trained with Shared-Norm over the positive video and
  ``n`` hard negatives, and the classification ("adversarial") loss.
* Stages (``config.model.stage``): ``'retriever'`` trains the retriever and leaves the
  localizer at its initial values; the end of its training mines the hard negatives (each
  training query's top ``train.mine_hard_negatives`` videos by ``S^R``, stored in
  ``WORKDIR/hard_negatives/``, :mod:`vmr_jax.retrieval.mining`).  ``'localizer'`` starts from
  the retriever's workdir (``train.init_from``: its retriever parameters, of the checkpoint the
  negatives were mined with, frozen) and trains the localizer on ``[B, 1 + n]`` candidate videos
  per query (``model.num_negatives`` = ``n``: 4 on TVR, 2 on DiDeMo).  Both stages' parameters
  are in every checkpoint, so the localizer's workdir answers queries alone.
* Inference (Sec. 3.5, :class:`PREMStages`): the retriever ranks the corpus (VR lists
  ``retrieve_videos`` = 100 videos), the localizer scores moments in the top ``top_videos`` =
  10, and eq. 12 ranks them across those videos: ``S = S^R / t + l_st(i) + l_ed(j)`` (``t`` the
  InfoNCE temperature 0.01).  Candidate moments, the paper being silent: XML's window
  ``min_pred_l <= j - i < max_pred_l`` clips on valid clips (``min_pred_l`` 0 here: a one-clip
  moment is a candidate); SVMR ranks a video's moments by ``l_st(i) + l_ed(j)``.  Seconds,
  the cut and NMS are the corpus engine's.  Metrics: the paper counts a hit when the IoU
  "exceeds" p; we score with TVRetrieval's standalone evaluator (protocol ``tvr``, IoU >= p),
  the evaluator of the TVR leaderboard the paper's TVR numbers come from.

Batch: the corpus contract of ``vmr_jax.models`` (``query_features``, ``query_mask``,
``video_features`` and/or ``subtitle_features`` by ``ctx_mode``, ``video_mask``, ``spans``,
``video_index``, ``valid``); localizer training adds ``negative_video_features``,
``negative_subtitle_features``, ``negative_video_mask`` and ``negative_video_index`` (``[B, n,
...]``, :mod:`data_pipelines.hard_negatives`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vmr_jax.errors import UserError
from vmr_jax.models import prem_localizer, prem_retriever
from vmr_jax.models.family import Family
from vmr_jax.retrieval.ranking import ModelMethodStages, MomentScores

STAGES = ("retriever", "localizer")

DEFAULTS = dict(
    stage="retriever",
    ctx_mode="video_sub",
    vid_feat_size=4352,  # HERO's SlowFast + ResNet
    sub_feat_size=768,  # XML's RoBERTa subtitle features, max-pooled per clip
    q_feat_size=768,  # XML's RoBERTa query token features
    hidden_size=384,
    intermediate_size=1536,
    n_heads=4,
    drop=0.1,
    initializer_range=0.02,
    max_desc_l=30,
    max_ctx_l=100,
    clip_length=1.5,
    # Retriever (eqs. 5-8).
    pooling="modality",
    temperature=0.01,
    weak_weight=0.5,
    relevant_content=True,
    # Localizer (eqs. 9-11).
    localizer_ctx_mode="",  # '' = ctx_mode; 'video' / 'sub': Table 6's w/o Text / Image
    gate="l2",
    conv_kernel_size=5,
    num_fusion_layers=2,
    num_negatives=4,
    shared_norm=True,
    cls_weight=0.8,
    max_positive_moments=64,
    negative_moments=5,
    # Inference (eq. 12).
    min_pred_l=0,
    max_pred_l=16,
    top_videos=10,
    retrieve_videos=100,
    max_before_nms=200,
    nms_thd=0.5,
)

VARIANTS: dict[str, dict[str, Any]] = {
    # Sec. 4.2: TVR, HERO's 4352-d image features, RoBERTa subtitles and queries, n = 4.
    "tvr": dict(DEFAULTS),
    # DiDeMo has no subtitles (video only), n = 2.
    "didemo": dict(DEFAULTS, ctx_mode="video", num_negatives=2),
    # Small and fast, for tests and the synthetic benchmark (32-d features, 1 s clips).
    "tiny": dict(
        DEFAULTS,
        vid_feat_size=32,
        sub_feat_size=32,
        q_feat_size=32,
        hidden_size=32,
        intermediate_size=64,
        max_desc_l=16,
        max_ctx_l=128,
        clip_length=1.0,
        num_negatives=2,
    ),
}


def modalities(ctx_mode: str) -> tuple[str, ...]:
    """``'video_sub'`` -> ``('video', 'sub')``; ``'video'``; ``'sub'``."""
    found = tuple(m for m in ("video", "sub") if m in ctx_mode.split("_"))
    if not found or ctx_mode not in ("video_sub", "video", "sub"):
        raise ValueError(f"ctx_mode must be 'video_sub', 'video' or 'sub', got {ctx_mode!r}")
    return found


def _flat(prefix: str, tree: dict) -> dict:
    return {f"{prefix}/{k}": v for k, v in tree.items()}


def _unflat(prefix: str, tree: dict) -> dict:
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in tree.items() if k.startswith(prefix + "/")}


class PREM(nn.Module):
    """The retriever and the localizer (parameters ``retriever/...`` and ``localizer/...``);
    ``stage`` picks what the training forward runs."""

    retriever: Any
    localizer: Any
    stage: str = "retriever"

    def __call__(self, batch, *, train: bool) -> dict:
        """``{'retriever': ...}`` or ``{'localizer': ...}``: the stage's training outputs
        (both at initialisation, so every parameter exists in both stages)."""
        if self.stage not in STAGES:
            raise ValueError(f"model.stage must be one of {STAGES}, got {self.stage!r}")
        out = {}
        initializing = self.is_initializing()
        if self.stage == "retriever" or initializing:
            out["retriever"] = self.retriever(batch, train=train)
        if self.stage == "localizer" or initializing:
            out["localizer"] = self.localizer(batch, train=train)
        return out

    # Corpus interface: flat dicts of arrays (``r/...`` retriever, ``l/...`` localizer).
    def encode_queries(self, batch, *, train: bool = False) -> dict:
        features, mask = batch["query_features"], batch["query_mask"]
        return {
            **_flat("r", self.retriever.encode_queries(features, mask, train=train)),
            **_flat("l", self.localizer.encode_queries(features, mask, train=train)),
        }

    def encode_videos(self, batch, *, train: bool = False) -> dict:
        video, sub = batch.get("video_features"), batch.get("subtitle_features")
        mask = jnp.asarray(batch["video_mask"], jnp.float32)
        return {
            "mask": mask,
            **_flat("r", self.retriever.encode_videos(video, sub, mask, train=train)),
            **_flat("l", self.localizer.encode_videos(video, sub, mask, train=train)),
        }

    def score_videos(self, query_enc, video_enc) -> jax.Array:
        """``S^R [Q, V]`` (eq. 6)."""
        return self.retriever.video_scores(
            _unflat("r", query_enc), _unflat("r", video_enc), video_enc["mask"]
        )

    def localize(self, query_enc, video_enc) -> tuple[jax.Array, jax.Array]:
        """Start and end logits ``[Q, K, L]`` in the ``K`` videos of each query."""
        st, ed, _ = self.localizer.localize(
            _unflat("l", query_enc), _unflat("l", video_enc), video_enc["mask"]
        )
        return st, ed


def window_moment_scores(st, ed, mask, min_pred_l: int, max_pred_l: int) -> MomentScores:
    """:class:`MomentScores` of the window pairs ``(i, j)``, ``min_pred_l <= j - i <
    max_pred_l`` on valid clips, score ``l_st(i) + l_ed(j)``; ``st``, ``ed``, ``mask [..., L]``;
    ``M = L * W`` moments in ``(i, j - i)`` order, ``W = max_pred_l - min_pred_l``."""
    if not 0 <= min_pred_l < max_pred_l:
        raise ValueError(f"need 0 <= min_pred_l < max_pred_l, got {min_pred_l}, {max_pred_l}")
    num_clips = st.shape[-1]
    width = max_pred_l - min_pred_l
    start = np.repeat(np.arange(num_clips), width)
    end = start + min_pred_l + np.tile(np.arange(width), num_clips)
    end_clip = np.minimum(end, num_clips - 1)
    mask = jnp.asarray(mask) > 0
    valid = (end < num_clips) & jnp.take(mask, start, axis=-1) & jnp.take(mask, end_clip, axis=-1)
    score = jnp.take(st, start, axis=-1) + jnp.take(ed, end_clip, axis=-1)
    return MomentScores(
        start=jnp.asarray(start, jnp.int32),
        end=jnp.asarray(end_clip, jnp.int32),
        valid=valid,
        score=jnp.where(valid, score, 0.0).astype(jnp.float32),
        factors={},
    )


@dataclasses.dataclass(frozen=True)
class PREMStages(ModelMethodStages):
    """PREM's corpus stages (eval mode) for :mod:`vmr_jax.retrieval.corpus`; hashable.

    ``retrieve_videos``: VR list length (100: R@100 is reported); ``top_videos``: videos the
    localizer re-ranks (10); ``temperature``: eq. 12's ``t``.
    """

    model: Any
    temperature: float = 0.01
    top_videos: int = 10
    retrieve_videos: int = 100
    clip_length: float = 1.5
    max_before_nms: int = 200
    min_pred_l: int = 0
    max_pred_l: int = 16

    @classmethod
    def from_config(cls, model: Any, model_config: Any) -> PREMStages:
        get = model_config.get
        return cls(
            model=model,
            temperature=float(get("temperature", 0.01)),
            top_videos=int(get("top_videos", 10)),
            retrieve_videos=int(get("retrieve_videos", 100)),
            clip_length=float(get("clip_length", 1.5)),
            max_before_nms=int(get("max_before_nms", 200)),
            min_pred_l=int(get("min_pred_l", 0)),
            max_pred_l=int(get("max_pred_l", 16)),
        )

    def localize(self, variables, query_enc, video_enc) -> MomentScores:
        st, ed = self.model.apply(variables, query_enc, video_enc, method="localize")
        return window_moment_scores(st, ed, video_enc["mask"], self.min_pred_l, self.max_pred_l)

    def video_rank_scores(self, video_scores):
        """VR ranks by ``S^R`` itself."""
        return video_scores.astype(jnp.float32)

    def combine(self, video_scores, moments: MomentScores):
        """Eq. 12: ``S^R / t + l_st(i) + l_ed(j)``, ``[Q, K] x [Q, K, M] -> [Q, K, M]``."""
        return video_scores.astype(jnp.float32)[..., None] / self.temperature + moments.score


# --------------------------------------------------------------------------- the family
def create_model(model_config) -> PREM:
    """``PREM`` of ``config.model`` (a ``VARIANTS`` entry; other keys are ignored)."""
    return PREM(
        retriever=prem_retriever.create_retriever(model_config),
        localizer=prem_localizer.create_localizer(model_config),
        stage=str(model_config.get("stage", "retriever")),
    )


def loss_fn(outputs, batch, model_config, *, step=None, steps_per_epoch=None):
    """The stage's loss: retriever (eqs. 7-8 plus the video-to-query term) or localizer
    (eqs. 10-11)."""
    del step, steps_per_epoch  # no epoch schedule
    if model_config.get("stage", "retriever") == "retriever":
        return prem_retriever.retriever_loss(outputs["retriever"], batch, model_config)
    return prem_localizer.localizer_loss(outputs["localizer"], batch, model_config)


def trainable(params, model_config):
    """The stage's own parameters train; the other stage's are frozen."""
    stage = model_config.get("stage", "retriever")
    return {
        name: jax.tree.map(lambda _, trains=name == stage: trains, tree)
        for name, tree in params.items()
    }


def resolve_config(config) -> None:
    """Refuses a localizer stage without the retriever's workdir (``train.init_from``) and fills
    the fields derived from it: ``data.hard_negatives`` (default: the negatives mined in that
    workdir) and ``data.num_negatives`` (= ``model.num_negatives``)."""
    from data_pipelines import hard_negatives  # the data package is not needed to build PREM

    stage = config.model.get("stage", "retriever")
    if stage not in STAGES:
        raise UserError(f"config.model.stage must be one of {STAGES}, got {stage!r}")
    if stage == "retriever":
        return
    init_from = config.train.get("init_from", "")
    if not init_from:
        raise UserError(
            "config.model.stage='localizer' trains on the hard negatives a trained retriever "
            "mined: give its workdir with --config.train.init_from=DIR (train it first with "
            "the retriever config)"
        )
    if not config.data.get("hard_negatives", ""):
        config.data.hard_negatives = str(hard_negatives.default_path(init_from))
    config.data.num_negatives = int(config.model.get("num_negatives", 4))


def example_batch(model_config, batch_size: int = 1, query_len: int | None = None) -> dict:
    """Zeros with every field both stages read (``n = num_negatives`` negatives)."""
    lq = int(query_len or model_config.max_desc_l)
    length = int(model_config.max_ctx_l)
    n = int(model_config.get("num_negatives", 4))
    b = batch_size
    batch = {
        "query_features": np.zeros((b, lq, int(model_config.q_feat_size)), np.float32),
        "query_mask": np.ones((b, lq), np.float32),
        "video_mask": np.ones((b, length), np.float32),
        "duration": np.full((b,), length * float(model_config.clip_length), np.float32),
        "spans": np.tile(np.array([[[0.0, 1.0]]], np.float32), (b, 1, 1)),
        "span_mask": np.ones((b, 1), np.float32),
        "query_index": np.arange(b, dtype=np.int32),
        "video_index": np.arange(b, dtype=np.int32),
        "valid": np.ones((b,), np.float32),
        "negative_video_mask": np.ones((b, n, length), np.float32),
        "negative_video_index": np.arange(b * n, dtype=np.int32).reshape(b, n) + b,
    }
    mods = modalities(model_config.ctx_mode)
    if "video" in mods:
        dim = int(model_config.vid_feat_size)
        batch["video_features"] = np.zeros((b, length, dim), np.float32)
        batch["negative_video_features"] = np.zeros((b, n, length, dim), np.float32)
    if "sub" in mods:
        dim = int(model_config.sub_feat_size)
        batch["subtitle_features"] = np.zeros((b, length, dim), np.float32)
        batch["negative_subtitle_features"] = np.zeros((b, n, length, dim), np.float32)
    return batch


FAMILY = Family(
    name="prem",
    create_model=create_model,
    variants=VARIANTS,
    task="vcmr",
    output="corpus",
    example_batch=example_batch,
    loss_fn=loss_fn,
    corpus=PREMStages.from_config,
    trainable=trainable,
    resolve_config=resolve_config,
)
