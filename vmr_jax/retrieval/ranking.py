"""Ranked VR / VCMR / SVMR lists of a corpus family, from its stage outputs (generic).

A corpus family (``Family.corpus``; protocol in :mod:`vmr_jax.retrieval.stages`) scores its
``K`` candidate videos per query (stage 1) and localises the query in each of them as
:class:`MomentScores` (stage 2: ``M`` candidate moments per video, each a first and last clip,
with a moment score and the factors its ``combine`` rule reads).  This module turns them into
the official lists, the same way for every family:

* VR: the ``K`` videos by the family's ``video_rank_scores`` (XML: ``exp(alpha * s)``), stable
  descending (``lax.top_k``); rows ``[video, 0, 0, score]``.
* VCMR: ``combine(video_scores, moments) [Q, K, M]`` over the videos in VR order, flattened in
  ``(k, m)`` order, the first ``max_before_nms`` by ``lax.top_k`` (ties: lower flat index
  first); a non-candidate moment (``-inf``) never enters a list.
* SVMR: the query's own video only, ranked by the moment score, same cut.
* Seconds ``st = start * clip_length``, ``ed = (end + 1) * clip_length`` with the official
  dtype rules (:func:`candidate_predictions`); every list cut to ``max_after`` *before* NMS
  (``get_submission_top_n``), then optional NMS per video (:func:`postprocess`).
* Per-video frame length (``clip_length`` = :data:`PER_VIDEO_CLIP_LENGTH`, 0): frames that are
  ``num_input_clips`` bins evenly covering each video (``clip_sampling='resample'``, e.g.
  ActivityNet's C3D clips) last ``duration / L`` seconds, different in every video.  Frame
  ``k`` of a video of ``L`` frames then starts at ``k / L * duration`` (2D-TAN's ``idx /
  num_clips * duration``), so ``st = start / L * duration``, ``ed = (end + 1) / L * duration``
  (:class:`VideoFrames` per video; the same dtype rules) -- never past ``duration``, as
  ``(end + 1) / L <= 1``.  NMS then works in each video's own seconds.

XML's rule (window pairs, ``(p_st * exp(alpha s)) * p_ed``) is one implementation:
:mod:`vmr_jax.models.xml_corpus`, whose golden lists these functions reproduce bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vmr_jax.evaluation import vcmr
from vmr_jax.evaluation.tvr_files import RankedPredictions

PER_VIDEO_CLIP_LENGTH = 0.0  # model.clip_length meaning "duration / L, each video its own"


def per_video_frames(clip_length: float) -> bool:
    """Whether ``clip_length`` asks for each video's own frame length (module docstring)."""
    return float(clip_length) == PER_VIDEO_CLIP_LENGTH


@dataclasses.dataclass(frozen=True)
class RankingConfig:
    """List options shared by every corpus family (official XML ``config.py`` names in
    brackets); hashable, so it is a static argument of the jitted ranking.

    ``clip_length`` seconds per clip (0: each video's own, :class:`VideoFrames`);
    ``max_before_nms``: candidates kept per query;
    ``max_after``: list length after the top-n cut and after NMS [max_after_nms];
    ``nms_threshold`` [nms_thd]: IoU above which NMS drops a moment, None for no NMS (the
    official -1).
    """

    clip_length: float = 1.5
    max_before_nms: int = 200
    max_after: int = 100
    nms_threshold: float | None = None

    def __post_init__(self):
        if self.max_before_nms < 1 or self.max_after < 1:
            raise ValueError("max_before_nms and max_after must be positive")
        if self.clip_length < 0:
            raise ValueError(
                f"clip_length must be positive, or {PER_VIDEO_CLIP_LENGTH} for each video's "
                f"own frame length, got {self.clip_length}"
            )


class ModelMethodStages:
    """Stage methods that are one ``model.apply(..., method=NAME)`` each, for corpus-stage
    classes holding a linen ``model`` (``XMLStages``, ``CascadedMPNStages``): ``encode_videos``,
    ``encode_queries`` and ``score_videos`` call the model's methods of those names."""

    model: Any

    def encode_videos(self, variables, video_batch):
        return self.model.apply(variables, video_batch, method="encode_videos")

    def encode_queries(self, variables, query_batch):
        return self.model.apply(variables, query_batch, method="encode_queries")

    def score_videos(self, variables, query_enc, video_enc):
        return self.model.apply(variables, query_enc, video_enc, method="score_videos")


class MomentScores(NamedTuple):
    """Stage 2 of a corpus family: ``M`` candidate moments in each of ``K`` videos per query.

    ``start``, ``end [M]`` int32: first and last clip (inclusive) of candidate ``m``, the same
    grid for every video; ``valid [..., K, M]`` bool: a real candidate of that video (both
    clips real, inside the window the family allows); ``score [..., K, M]`` float32: the
    moment score alone (SVMR ranks by it); ``factors``: named ``[..., K, M]`` arrays that the
    family's ``combine`` rule reads (e.g. XML's start and end probabilities).
    """

    start: jax.Array
    end: jax.Array
    valid: jax.Array
    score: jax.Array
    factors: dict

    def take_videos(self, fn) -> MomentScores:
        """``fn`` applied to every per-video leaf (``valid``, ``score``, ``factors``)."""
        return self._replace(
            valid=fn(self.valid), score=fn(self.score), factors=jax.tree.map(fn, self.factors)
        )


class RankedCandidates(NamedTuple):
    """Ranked candidates of ``Q`` queries, best first, ``N`` per query.

    ``slot [Q, N]`` int32: index on the candidate-video axis that was ranked (the corpus engine
    turns it into a corpus row); ``start``, ``end [Q, N]`` int32: first and last clip (``end``
    inclusive; 0 for VR); ``score [Q, N]`` float32; ``valid [Q, N]`` bool, a prefix of each row
    (invalid rows have score 0).
    """

    slot: jax.Array
    start: jax.Array
    end: jax.Array
    score: jax.Array
    valid: jax.Array


def top_moments(scores: jax.Array, start: jax.Array, end: jax.Array, num: int) -> RankedCandidates:
    """The ``num`` best of ``scores [Q, K, M]`` over all ``K`` videos (flat ``(k, m)`` order on
    ties; ``-inf`` = no candidate); ``num`` is capped at ``K * M``.  ``start``, ``end [M]``."""
    num_q, _, num_m = scores.shape
    flat = scores.reshape(num_q, -1)
    score, index = lax.top_k(flat, min(num, flat.shape[1]))
    slot, m = jnp.divmod(index, num_m)
    valid = score > -jnp.inf
    return RankedCandidates(
        slot.astype(jnp.int32),
        jnp.take(start, m).astype(jnp.int32),
        jnp.take(end, m).astype(jnp.int32),
        jnp.where(valid, score, 0.0),
        valid,
    )


def rank_videos(video_scores: jax.Array, stages: Any) -> RankedCandidates:
    """VR: ``[Q, R]`` stage-1 scores ranked by the family's ``video_rank_scores`` (stable
    descending); ``slot`` indexes the ``R`` axis, ``score`` is the rank score."""
    rank_scores = stages.video_rank_scores(video_scores.astype(jnp.float32))
    score, order = lax.top_k(rank_scores, rank_scores.shape[1])
    zeros = jnp.zeros_like(order)
    return RankedCandidates(order, zeros, zeros, score, jnp.ones(order.shape, bool))


def rank_corpus_moments(
    video_scores: jax.Array, moments: MomentScores, stages: Any, config: RankingConfig
) -> dict[str, RankedCandidates]:
    """VR and VCMR of each query over its ``K`` candidate videos (module docstring).

    Args:
      video_scores: ``[Q, K]`` stage-1 scores of the candidate videos.
      moments: stage-2 :class:`MomentScores` on those videos (leaves ``[Q, K, M]``).
      stages: the family's stages (``video_rank_scores``, ``combine``).
    Returns: ``{"VR": [Q, K] candidates, "VCMR": [Q, min(max_before_nms, K * M)]}``; ``slot``
      indexes the ``K`` axis.
    """
    video_scores = video_scores.astype(jnp.float32)
    vr = rank_videos(video_scores, stages)
    order = vr.slot
    by_rank = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), 1)
    ranked = moments.take_videos(by_rank)
    combined = stages.combine(by_rank(video_scores), ranked)
    combined = jnp.where(ranked.valid, combined, -jnp.inf)
    found = top_moments(combined, moments.start, moments.end, config.max_before_nms)
    return {"VR": vr, "VCMR": found._replace(slot=jnp.take_along_axis(order, found.slot, 1))}


def rank_video_moments(moments: MomentScores, config: RankingConfig) -> RankedCandidates:
    """SVMR: moments of each query in its own video by the moment score.  Leaves ``[Q, M]``
    in; ``[Q, N]`` out with ``N = min(max_before_nms, M)`` and ``slot`` 0."""
    scores = jnp.where(moments.valid, moments.score, -jnp.inf)
    return top_moments(scores[:, None], moments.start, moments.end, config.max_before_nms)


# --------------------------------------------------------------------------- lists (NumPy)


class VideoFrames(NamedTuple):
    """Each video's frame grid under a per-video frame length: ``duration`` seconds (float)
    and ``num_frames`` (its valid frames ``L``; frame ``k`` starts at ``k / L * duration``).
    Both ``[K]`` (every query's slots) or ``[Q, K]`` (per query), like ``videos``."""

    duration: np.ndarray
    num_frames: np.ndarray


def _per_slot(table: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """``table [K]`` or ``[Q, K]`` read at ``slot [Q, N]``."""
    table = np.asarray(table)
    if table.ndim == 1:
        return table[slot]
    return np.take_along_axis(table, slot, axis=1)


def candidate_predictions(
    task: str,
    candidates: RankedCandidates,
    clip_length: float,
    videos: np.ndarray | None = None,
    frames: VideoFrames | None = None,
) -> RankedPredictions:
    """Ranked lists of one task in seconds, with the official dtype rules (module docstring).

    ``videos``: the video value (e.g. video2idx) of every slot, ``[K]`` for all queries or
    ``[Q, K]`` per query (SVMR: ``[Q, 1]``); None: the slot itself.  ``frames``: each slot's
    :class:`VideoFrames`, needed (and only read) when ``clip_length`` is
    :data:`PER_VIDEO_CLIP_LENGTH`.
    """
    c = RankedCandidates(*(np.asarray(x) for x in candidates))
    slot = c.slot.astype(np.int64)
    video = slot if videos is None else _per_slot(videos, slot)
    if per_video_frames(clip_length) and task != "VR":
        if frames is None:
            raise ValueError(
                "clip_length 0 (each video's own frame length) needs the videos' frames "
                "(durations and frame counts)"
            )
        dtype = np.float32 if task == "VCMR" else np.float64
        duration = _per_slot(frames.duration, slot).astype(dtype)
        num = np.maximum(_per_slot(frames.num_frames, slot), 1).astype(dtype)
        st = c.start.astype(dtype) / num * duration
        ed = (c.end.astype(dtype) + dtype(1)) / num * duration
    elif task == "VCMR":
        length = np.float32(clip_length)
        st = c.start.astype(np.float32) * length
        ed = c.end.astype(np.float32) * length + length
    elif task == "SVMR":
        st = c.start.astype(np.float64) * clip_length
        ed = (c.end.astype(np.float64) + 1) * clip_length
    elif task == "VR":
        st = ed = np.zeros(c.slot.shape)
    else:
        raise ValueError(f"unknown task {task!r}; known: {vcmr.TASKS}")
    return RankedPredictions(
        video, np.stack([st, ed], -1), c.score.astype(np.float64), c.valid.sum(axis=1)
    )


def postprocess(
    predictions: Mapping[str, RankedPredictions], config: RankingConfig
) -> dict[str, RankedPredictions]:
    """``get_submission_top_n(max_after)``, then NMS when ``config.nms_threshold`` is set (VCMR
    per video, SVMR; VR untouched)."""
    out = {task: pred.head(config.max_after) for task, pred in predictions.items()}
    if config.nms_threshold is None:
        return out
    for task, nms in (("VCMR", vcmr.vcmr_nms), ("SVMR", vcmr.svmr_nms)):
        if task in out:
            out[task] = nms(
                out[task],
                config.nms_threshold,
                max_before_nms=config.max_before_nms,
                max_after_nms=config.max_after,
            )
    return out
