"""XML's corpus stages: how XML answers a query against a corpus (``Family.corpus``).

jayleicn/TVRetrieval ``baselines/crossmodal_moment_localization/inference.py``
(``compute_query2ctx_info`` with ``cross=True``, ``get_svmr_res_from_st_ed_probs``,
``generate_min_max_length_mask``) and ``eval_epoch``'s post-processing.  Per query, for its
``K`` candidate videos with raw scores ``s_k`` (stage 1, ``XML.score_videos``) and span
logits over ``L`` clips (stage 2, ``XML.localize``):

* ``e_k = exp(alpha * s_k)`` (``q2c_alpha``, 20) ranks the videos (VR rows ``[video, 0, 0,
  e_k]``); ``p_st``, ``p_ed`` = softmax over the ``L`` clips, padded clips 0 (they hold -1e10
  logits; here the clip mask also forces them).
* Candidate moments (:func:`window_moments`): the pairs ``min_pred_l <= j - i < max_pred_l``
  (2 and 16: 3 to 16 clips) on real clips, ``M = L * W`` (``W = max_pred_l - min_pred_l``)
  in ``(i, j)`` order; moment score ``p_st(i) * p_ed(j)`` (SVMR).
* combine (VCMR): ``(p_st_k(i) * e_k) * p_ed_k(j)``, the official float32 product order.
* The generic lists of :mod:`vmr_jax.retrieval.ranking`: first ``max_before_nms`` (200),
  seconds, the ``max_after`` (100) cut before NMS, NMS per video.

Differences from the official code, all outside its well-defined cases:

* The official builds the full ``[K, L, L]`` table, zeroes the pairs outside the window and sorts
  all ``K * L * L`` entries.  Here only the band of window pairs is built (``[K, L, W]``) and
  ``lax.top_k`` ranks it; flattening the band keeps the official flat ``(k, i, j)`` order, so
  the lists are the same whenever the scores are distinct.
* Ties: ``lax.top_k`` puts the lower flat index first, i.e. a stable descending sort.  The
  official order of tied entries is unspecified (``torch.sort``/``torch.topk``, NumPy's
  unstable ``argsort`` reversed for SVMR); the golden lists have no ties.
* Zeros: a pair on a padded clip or past the last clip is never a candidate (the official
  ranks it as a 0 score, among the zeroed out-of-window pairs, which can even have
  ``st > ed``).  A window pair on real clips whose product underflows to 0 stays a candidate,
  ranked after all positive ones.
* VR ranks by ``e_k``, as the official ``torch.topk``; scores that ``exp`` rounds to the same
  float32 keep the candidate order (the corpus engine passes candidates by raw score).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vmr_jax.evaluation import vcmr
from vmr_jax.evaluation.tvr_files import RankedPredictions
from vmr_jax.retrieval import ranking
from vmr_jax.retrieval.ranking import ModelMethodStages, MomentScores, RankingConfig

PAD_LOGIT = -1e10  # XML's logit of padded clips (mask_logits)


def span_probabilities(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over clips; padded clips get probability 0.  ``[..., L] -> [..., L]``."""
    mask = jnp.asarray(mask).astype(bool)
    probs = jax.nn.softmax(jnp.where(mask, logits, PAD_LOGIT).astype(jnp.float32), axis=-1)
    return jnp.where(mask, probs, 0.0)


@dataclasses.dataclass(frozen=True)
class SpanWindowRule:
    """XML's moment rule (official names in brackets): ``alpha`` [q2c_alpha] and the window
    ``min_pred_l <= j - i < max_pred_l`` in clips [min_pred_l, max_pred_l].  Hashable."""

    alpha: float = 20.0
    min_pred_l: int = 2
    max_pred_l: int = 16

    def __post_init__(self):
        if not 0 <= self.min_pred_l < self.max_pred_l:
            raise ValueError(
                f"need 0 <= min_pred_l < max_pred_l, got {self.min_pred_l}, {self.max_pred_l}"
            )

    def window_moments(self, st_logits: jax.Array, ed_logits: jax.Array, mask: jax.Array):
        """:class:`MomentScores` of the window pairs from span logits ``[..., L]`` and the
        clip ``mask [..., L]``: ``M = L * W`` moments ``(i, i + min_pred_l + w)``."""
        num_clips = st_logits.shape[-1]
        width = self.max_pred_l - self.min_pred_l
        mask = jnp.asarray(mask).astype(bool)
        p_st, p_ed = span_probabilities(st_logits, mask), span_probabilities(ed_logits, mask)
        start = np.repeat(np.arange(num_clips), width)
        end = start + self.min_pred_l + np.tile(np.arange(width), num_clips)
        inside = end < num_clips
        end_clip = np.minimum(end, num_clips - 1)
        st = jnp.take(p_st, start, axis=-1)
        ed = jnp.take(p_ed, end_clip, axis=-1)
        valid = inside & jnp.take(mask, start, axis=-1) & jnp.take(mask, end_clip, axis=-1)
        return MomentScores(
            start=jnp.asarray(start, jnp.int32),
            end=jnp.asarray(end, jnp.int32),
            valid=valid,
            score=st * ed,
            factors={"st": st, "ed": ed},
        )

    def video_rank_scores(self, video_scores: jax.Array) -> jax.Array:
        """``exp(alpha * s)``: what VR ranks by and reports."""
        return jnp.exp(self.alpha * video_scores.astype(jnp.float32))

    def combine(self, video_scores: jax.Array, moments: MomentScores) -> jax.Array:
        """VCMR score ``(p_st * exp(alpha * s)) * p_ed`` ``[Q, K, M]`` (official order)."""
        e = self.video_rank_scores(video_scores)[..., None]
        return (moments.factors["st"] * e) * moments.factors["ed"]


@dataclasses.dataclass(frozen=True)
class XMLStages(ModelMethodStages):
    """XML's corpus stages as pure functions of ``variables`` (eval mode), for
    :mod:`vmr_jax.retrieval.corpus`; hashable (the search programs are cached on it).

    ``top_videos``: videos localised per query [max_vcmr_video], also the VR list length.
    """

    model: Any
    rule: SpanWindowRule
    top_videos: int = 100
    clip_length: float = 1.5
    max_before_nms: int = 200

    @classmethod
    def from_config(cls, model: Any, model_config: Any) -> XMLStages:
        get = model_config.get
        return cls(
            model=model,
            rule=SpanWindowRule(
                alpha=float(get("q2c_alpha", 20.0)),
                min_pred_l=int(get("min_pred_l", 2)),
                max_pred_l=int(get("max_pred_l", 16)),
            ),
            top_videos=int(get("max_vcmr_video", 100)),
            clip_length=float(get("clip_length", 1.5)),
            max_before_nms=int(get("max_before_nms", 200)),
        )

    @property
    def retrieve_videos(self) -> int:
        """VR list length (the official VR list is the ``max_vcmr_video`` localised)."""
        return self.top_videos

    def localize(self, variables, query_enc, video_enc) -> MomentScores:
        st, ed = self.model.apply(variables, query_enc, video_enc, method="localize")
        return self.rule.window_moments(st, ed, video_enc["mask"])

    def video_rank_scores(self, video_scores):
        return self.rule.video_rank_scores(video_scores)

    def combine(self, video_scores, moments):
        return self.rule.combine(video_scores, moments)


@functools.partial(jax.jit, static_argnames=("rule", "config"))
def rank_xml(
    video_scores: jax.Array,
    st_logits: jax.Array,
    ed_logits: jax.Array,
    clip_mask: jax.Array,
    own_slot: jax.Array | None,
    rule: SpanWindowRule,
    config: RankingConfig,
) -> dict[str, ranking.RankedCandidates]:
    """VR and VCMR of a query-video table (``video_scores [Q, K]``, span logits and
    ``clip_mask [Q, K, L]``), plus SVMR on ``own_slot [Q]`` (None: no SVMR)."""
    moments = rule.window_moments(st_logits, ed_logits, clip_mask)
    out = ranking.rank_corpus_moments(video_scores, moments, rule, config)
    if own_slot is not None:
        pick = lambda x: jnp.take_along_axis(  # noqa: E731
            x, own_slot.reshape((-1,) + (1,) * (x.ndim - 1)), axis=1
        )[:, 0]
        out["SVMR"] = ranking.rank_video_moments(moments.take_videos(pick), config)
    return out


def rank_predictions(
    video_scores: jax.Array,
    st_logits: jax.Array,
    ed_logits: jax.Array,
    clip_mask: jax.Array,
    rule: SpanWindowRule,
    config: RankingConfig,
    own_slot: np.ndarray | None = None,
    videos: np.ndarray | None = None,
) -> dict[str, RankedPredictions]:
    """The official lists from a query-video table: :func:`rank_xml`, then
    :func:`ranking.candidate_predictions` and :func:`ranking.postprocess`.

    ``videos``: ``[K]`` or ``[Q, K]`` video values of the ``K`` axis (None: the slot numbers).
    Returns: ``{"VR", "VCMR"[, "SVMR"]: RankedPredictions}``.
    """
    if videos is not None:
        videos = np.broadcast_to(np.asarray(videos), np.shape(video_scores))
    own = None if own_slot is None else jnp.asarray(own_slot, jnp.int32)
    ranked = rank_xml(video_scores, st_logits, ed_logits, clip_mask, own, rule, config)
    lists = {}
    for task, cand in ranked.items():
        table = videos
        if task == "SVMR":  # one video per list: slot 0 stands for own_slot
            own_video = np.asarray(own_slot, np.int64)[:, None]
            table = own_video if videos is None else np.take_along_axis(videos, own_video, 1)
        lists[task] = ranking.candidate_predictions(task, cand, config.clip_length, table)
    return ranking.postprocess({t: lists[t] for t in vcmr.TASKS if t in lists}, config)
