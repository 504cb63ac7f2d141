"""Cascaded MPN's corpus stages: how it answers a query against a corpus (``Family.corpus``).

The paper (Sec. IV-B-1): "we first predict top-100 videos from video corpus by measuring
``p(s(V, E_q))`` in Equation 19 and Cascade MPG localizes the best matched moment among the
videos".  So, per query:

* Index (query-independent, once per corpus): the hierarchical encoder's ``V [L, d]``, the
  frame mask and every ``C^N [N, d]`` (``CascadedMPN.encode_videos``).
* Stage 1 (``score_videos``): ``s = max over valid frames of cos(E_q, V_l)`` for every video
  ``[Q, V]``; VR ranks the videos by ``s`` itself (:meth:`CascadedMPNStages.video_rank_scores`)
  and lists ``retrieve_videos`` (100) of them.
* Stage 2 (``localize``): ``M_T`` (Algorithm 1) of the query in each of its ``top_videos``
  (100, ``max_vcmr_video``) best videos; the candidates are the map's cells ``i <= j`` on
  valid frames (:func:`map_moments`: ``M = L (L + 1) / 2`` cells, no length window: the
  paper has none), moment score ``M_T[i, j]`` (what SVMR ranks by); with the model's
  ``localize_map='frame'`` the frame-level map ``f_cond(V, E_q)`` takes ``M_T``'s place.
* combine (VCMR), the paper being silent: :func:`video_weighted_map_score`,
  ``exp(q2c_alpha * s) * M_T[i, j]`` -- HERO's and XML's video weighting (``q2c_alpha`` =
  20, their inference constant) times the cascade's map value; ``q2c_alpha = 0`` ranks by
  the map value alone, the paper's literal "best matched moment among the videos".
  With ``map_scale='log'`` (the default) the map is ``log M_T``, a log-distribution over
  the video's cells, and the rule is its log, ``q2c_alpha * s + log M_T[i, j]`` (the same
  ranking as ``exp(q2c_alpha * s) * M_T`` without underflow).  On the literal probability
  scale ``M_T`` lies in ``(0.5, 1)`` on valid cells (a sigmoid of non-negative values), so
  without the video factor the moment ranking barely separates videos.
* Lists, seconds (``[i * clip, (j + 1) * clip]``, or ``[i, j + 1] * duration / L`` with a
  per-video frame length, ``clip_length = 0``), the ``max_before_nms`` cut and NMS are the
  generic ones of :mod:`vmr_jax.retrieval.ranking`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vmr_jax.retrieval.ranking import ModelMethodStages, MomentScores


def map_cells(num_clips: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end frame of every upper-triangular cell of an ``L x L`` map, row-major
    (``(0, 0), (0, 1), ..., (L - 1, L - 1)``): two int32 ``[L (L + 1) / 2]`` arrays."""
    start, end = np.triu_indices(num_clips)
    return start.astype(np.int32), end.astype(np.int32)


def map_moments(score_map: jax.Array, mask: jax.Array) -> MomentScores:
    """:class:`MomentScores` of the cells of ``score_map [..., L, L]`` (e.g. ``M_T``), valid
    where both frames are valid in ``mask [..., L]``; score = the map value."""
    num_clips = score_map.shape[-1]
    start, end = map_cells(num_clips)
    mask = jnp.asarray(mask) > 0
    flat = score_map.reshape(*score_map.shape[:-2], num_clips * num_clips)
    score = jnp.take(flat, start * num_clips + end, axis=-1)
    valid = jnp.take(mask, start, axis=-1) & jnp.take(mask, end, axis=-1)
    return MomentScores(
        start=jnp.asarray(start),
        end=jnp.asarray(end),
        valid=valid,
        score=score.astype(jnp.float32),
        factors={},
    )


def video_weighted_map_score(
    video_scores: jax.Array, moments: MomentScores, alpha: float, log_scores: bool = False
) -> jax.Array:
    """The VCMR combine rule: ``exp(alpha * s) * M_T[i, j]``, ``[Q, K]`` x ``[Q, K, M]`` ->
    ``[Q, K, M]`` (module docstring); with ``log_scores`` (the moment scores are ``log M_T``)
    its log, ``alpha * s + log M_T[i, j]``."""
    video_scores = video_scores.astype(jnp.float32)[..., None]
    if log_scores:
        return alpha * video_scores + moments.score
    return jnp.exp(alpha * video_scores) * moments.score


@dataclasses.dataclass(frozen=True)
class CascadedMPNStages(ModelMethodStages):
    """Cascaded MPN's corpus stages as pure functions of ``variables`` (eval mode), for
    :mod:`vmr_jax.retrieval.corpus`; hashable (the search programs are cached on it).

    ``top_videos``: videos localised per query [max_vcmr_video]; ``retrieve_videos``: VR list
    length; ``q2c_alpha``: the video factor of :func:`video_weighted_map_score`.
    """

    model: Any
    q2c_alpha: float = 20.0
    top_videos: int = 100
    retrieve_videos: int = 100
    clip_length: float = 1.5
    max_before_nms: int = 200
    log_scores: bool = False

    @classmethod
    def from_config(cls, model: Any, model_config: Any) -> CascadedMPNStages:
        get = model_config.get
        return cls(
            model=model,
            q2c_alpha=float(get("q2c_alpha", 20.0)),
            top_videos=int(get("max_vcmr_video", 100)),
            retrieve_videos=int(get("retrieve_videos", 100)),
            clip_length=float(get("clip_length", 1.5)),
            max_before_nms=int(get("max_before_nms", 200)),
            log_scores=get("map_scale", "probability") == "log",
        )

    def localize(self, variables, query_enc, video_enc) -> MomentScores:
        score_map = self.model.apply(variables, query_enc, video_enc, method="localize")
        return map_moments(score_map, video_enc["mask"])

    def video_rank_scores(self, video_scores):
        """VR ranks by the max frame cosine itself (the paper's ``p(s(V, E_q))``)."""
        return video_scores.astype(jnp.float32)

    def combine(self, video_scores, moments):
        return video_weighted_map_score(video_scores, moments, self.q2c_alpha, self.log_scores)
