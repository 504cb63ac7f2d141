"""XML's inference ranking (VR, VCMR, SVMR) as batched ``jnp`` over queries, and its lists.

jayleicn/TVRetrieval ``baselines/crossmodal_moment_localization/inference.py``
(``compute_query2ctx_info`` with ``cross=True``, ``get_svmr_res_from_st_ed_probs``,
``generate_min_max_length_mask``) and ``eval_epoch``'s post-processing, which calls
``get_submission_top_n`` and ``post_processing_{vcmr,svmr}_nms`` of
``baselines/clip_alignment_with_language/inference.py``.  Per query, for its ``K`` candidate
videos with raw scores ``s_k`` and span logits over ``L`` clips:

* ``e_k = exp(alpha * s_k)`` (``q2c_alpha``, 20); ``p_st``, ``p_ed`` = softmax over the ``L``
  clips, padded clips 0 (they hold -1e10 logits; here the clip mask also forces them).
* VR: the ``K`` videos by ``e_k``, rows ``[video, 0, 0, e_k]``.
* VCMR: candidate ``(k, i, j)`` scores ``(p_st_k(i) * e_k) * p_ed_k(j)`` (the official float32
  product order) for ``min_pred_l <= j - i < max_pred_l`` (2 and 16: 3 to 16 clips); the first
  ``max_before_nms`` (200) over all ``K`` videos; seconds ``st = float32(i) * clip_length``,
  ``ed = float32(j) * clip_length + clip_length`` in float32 (the official arithmetic).
* SVMR: the query's own video only, ``p_st(i) * p_ed(j)``, same window, first
  ``max_before_nms``; seconds ``i * clip_length`` and ``(j + 1) * clip_length`` in float64 (the
  official stacks the indices with the float32 scores into a float64 array first).
* Every list is cut to ``max_after`` (100) *before* NMS (``get_submission_top_n`` edits the lists
  in place; golden README xml_tvr item 5); then optional NMS (``nms_thd``) per video with
  :func:`vmr_jax.evaluation.vcmr.vcmr_nms` / :func:`~vmr_jax.evaluation.vcmr.svmr_nms`.

Differences from the official code, all outside its well-defined cases:

* The official builds the full ``[K, L, L]`` table, zeroes the pairs outside the window and sorts
  all ``K * L * L`` entries.  Here only the band of window pairs is built (``[K, L, W]``,
  ``W = max_pred_l - min_pred_l``) and ``lax.top_k`` ranks it; flattening the band keeps the
  official flat ``(k, i, j)`` order, so the lists are the same whenever the scores are distinct.
* Ties: ``lax.top_k`` puts the lower flat index first, i.e. a stable descending sort.  The
  official order of tied entries is unspecified (``torch.sort``/``torch.topk``, NumPy's
  unstable ``argsort`` reversed for SVMR); the golden lists have no ties.
* Zeros: a pair on a padded clip or past the last clip is never a candidate (the official
  ranks it as a 0 score, among the zeroed out-of-window pairs, which can even have
  ``st > ed``).  A window pair on real clips whose product underflows to 0 stays a candidate,
  ranked after all positive ones.  So a list holds fewer than ``max_before_nms`` rows only when
  the videos have fewer window pairs on real clips; the official would pad it with zeros.
* VR ranks by ``e_k``, as the official ``torch.topk``; scores that ``exp`` rounds to the same
  float32 keep the candidate order (the corpus engine passes candidates by raw score).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vmr_jax.evaluation import vcmr
from vmr_jax.evaluation.tvr_files import RankedPredictions

PAD_LOGIT = -1e10  # XML's logit of padded clips (mask_logits)


@dataclasses.dataclass(frozen=True)
class RankingConfig:
    """XML inference options (official ``config.py`` names in brackets); hashable, so it is a
    static argument of the jitted ranking.

    ``alpha`` [q2c_alpha]; ``min_pred_l``, ``max_pred_l``: window ``min_pred_l <= j - i <
    max_pred_l`` in clips; ``clip_length`` seconds per clip; ``max_before_nms``: candidates kept
    per query; ``max_after``: list length after the top-n cut and after NMS [max_after_nms];
    ``nms_threshold`` [nms_thd]: IoU above which NMS drops a moment, None for no NMS (the
    official -1).
    """

    alpha: float = 20.0
    min_pred_l: int = 2
    max_pred_l: int = 16
    clip_length: float = 1.5
    max_before_nms: int = 200
    max_after: int = 100
    nms_threshold: float | None = None

    def __post_init__(self):
        if not 0 <= self.min_pred_l < self.max_pred_l:
            raise ValueError(
                f"need 0 <= min_pred_l < max_pred_l, got {self.min_pred_l}, {self.max_pred_l}"
            )
        if self.max_before_nms < 1 or self.max_after < 1:
            raise ValueError("max_before_nms and max_after must be positive")
        if self.clip_length <= 0:
            raise ValueError(f"clip_length must be positive, got {self.clip_length}")


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


def span_probabilities(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over clips; padded clips get probability 0.  ``[..., L] -> [..., L]``."""
    mask = jnp.asarray(mask).astype(bool)
    probs = jax.nn.softmax(jnp.where(mask, logits, PAD_LOGIT).astype(jnp.float32), axis=-1)
    return jnp.where(mask, probs, 0.0)


def moment_band(
    st_probs: jax.Array, ed_probs: jax.Array, mask: jax.Array, min_pred_l: int, max_pred_l: int
) -> jax.Array:
    """Scores ``st_probs(i) * ed_probs(i + min_pred_l + w)`` of the window pairs only.

    Args:
      st_probs, ed_probs: ``[..., L]`` (for VCMR ``st_probs`` already times ``e_k``).
      mask: ``[..., L]`` real clips.
    Returns: ``[..., L, W]`` float32, ``W = max_pred_l - min_pred_l``; ``-inf`` where the end
      clip is past ``L`` or either clip is padding.
    """
    num_clips = st_probs.shape[-1]
    end = jnp.arange(num_clips)[:, None] + min_pred_l + jnp.arange(max_pred_l - min_pred_l)
    inside = end < num_clips
    end = jnp.minimum(end, num_clips - 1)
    mask = jnp.asarray(mask).astype(bool)
    valid = inside & mask[..., :, None] & jnp.take(mask, end, axis=-1)
    product = st_probs[..., :, None] * jnp.take(ed_probs, end, axis=-1)
    return jnp.where(valid, product, -jnp.inf)


def top_moments(band: jax.Array, num: int, min_pred_l: int) -> RankedCandidates:
    """The ``num`` best pairs of ``band [Q, K, L, W]`` over all ``K`` videos (flat ``(k, i, j)``
    order on ties); ``num`` is capped at ``K * L * W``."""
    num_q, _, num_clips, width = band.shape
    flat = band.reshape(num_q, -1)
    score, index = lax.top_k(flat, min(num, flat.shape[1]))
    slot, rest = jnp.divmod(index, num_clips * width)
    start, offset = jnp.divmod(rest, width)
    valid = score > -jnp.inf
    return RankedCandidates(
        slot.astype(jnp.int32),
        start.astype(jnp.int32),
        (start + min_pred_l + offset).astype(jnp.int32),
        jnp.where(valid, score, 0.0),
        valid,
    )


def rank_corpus_moments(
    video_scores: jax.Array,
    st_logits: jax.Array,
    ed_logits: jax.Array,
    clip_mask: jax.Array,
    config: RankingConfig,
) -> dict[str, RankedCandidates]:
    """VR and VCMR of each query over its ``K`` candidate videos (module docstring).

    Args:
      video_scores: ``[Q, K]`` raw query-video scores (cosine-like; ``exp(alpha * s)``).
      st_logits, ed_logits: ``[Q, K, L]`` span logits of the query on those videos.
      clip_mask: ``[Q, K, L]`` real clips.
    Returns: ``{"VR": [Q, K] candidates, "VCMR": [Q, min(max_before_nms, K*L*W)]}``; ``slot``
      indexes the ``K`` axis.
    """
    num_videos = video_scores.shape[1]
    exp_scores = jnp.exp(config.alpha * video_scores.astype(jnp.float32))
    vr_score, order = lax.top_k(exp_scores, num_videos)
    by_rank = lambda x: jnp.take_along_axis(x, order[..., None], axis=1)
    mask = by_rank(jnp.asarray(clip_mask).astype(bool))
    st = span_probabilities(by_rank(st_logits), mask) * vr_score[..., None]
    ed = span_probabilities(by_rank(ed_logits), mask)
    band = moment_band(st, ed, mask, config.min_pred_l, config.max_pred_l)
    moments = top_moments(band, config.max_before_nms, config.min_pred_l)
    zeros = jnp.zeros_like(order)
    vr = RankedCandidates(order, zeros, zeros, vr_score, jnp.ones(order.shape, bool))
    return {"VR": vr, "VCMR": moments._replace(slot=jnp.take_along_axis(order, moments.slot, 1))}


def rank_video_moments(
    st_logits: jax.Array, ed_logits: jax.Array, clip_mask: jax.Array, config: RankingConfig
) -> RankedCandidates:
    """SVMR: moments of each query in its own video.  ``[Q, L]`` each in; ``[Q, N]`` out with
    ``N = min(max_before_nms, L * W)`` and ``slot`` 0."""
    mask = jnp.asarray(clip_mask).astype(bool)
    st, ed = span_probabilities(st_logits, mask), span_probabilities(ed_logits, mask)
    band = moment_band(st, ed, mask, config.min_pred_l, config.max_pred_l)
    return top_moments(band[:, None], config.max_before_nms, config.min_pred_l)


@functools.partial(jax.jit, static_argnames="config")
def rank_xml(
    video_scores: jax.Array,
    st_logits: jax.Array,
    ed_logits: jax.Array,
    clip_mask: jax.Array,
    own_slot: jax.Array | None,
    config: RankingConfig,
) -> dict[str, RankedCandidates]:
    """:func:`rank_corpus_moments` plus SVMR on ``own_slot [Q]`` (each query's own video on the
    ``K`` axis; None: no SVMR).  Shapes as :func:`rank_corpus_moments`."""
    out = rank_corpus_moments(video_scores, st_logits, ed_logits, clip_mask, config)
    if own_slot is not None:
        pick = lambda x: jnp.take_along_axis(x, own_slot[:, None, None], axis=1)[:, 0]
        out["SVMR"] = rank_video_moments(
            pick(st_logits), pick(ed_logits), pick(jnp.asarray(clip_mask)), config
        )
    return out


# --------------------------------------------------------------------------- lists (NumPy)


def candidate_predictions(
    task: str,
    candidates: RankedCandidates,
    clip_length: float,
    videos: np.ndarray | None = None,
) -> RankedPredictions:
    """Ranked lists of one task in seconds, with the official dtype rules (module docstring).

    ``videos``: the video value (e.g. video2idx) of every slot, ``[K]`` for all queries or
    ``[Q, K]`` per query (SVMR: ``[Q, 1]``); None: the slot itself.
    """
    c = RankedCandidates(*(np.asarray(x) for x in candidates))
    slot = c.slot.astype(np.int64)
    if videos is None:
        video = slot
    elif np.ndim(videos) == 1:
        video = np.asarray(videos)[slot]
    else:
        video = np.take_along_axis(np.asarray(videos), slot, axis=1)
    if task == "VCMR":
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


def rank_predictions(
    video_scores: jax.Array,
    st_logits: jax.Array,
    ed_logits: jax.Array,
    clip_mask: jax.Array,
    config: RankingConfig,
    own_slot: np.ndarray | None = None,
    videos: np.ndarray | None = None,
) -> dict[str, RankedPredictions]:
    """The official lists from a query-video table: :func:`rank_xml` then
    :func:`candidate_predictions` and :func:`postprocess`.

    ``videos``: ``[K]`` or ``[Q, K]`` video values of the ``K`` axis (None: the slot numbers).
    Returns: ``{"VR", "VCMR"[, "SVMR"]: RankedPredictions}``.
    """
    if videos is not None:
        videos = np.broadcast_to(np.asarray(videos), np.shape(video_scores))
    own = None if own_slot is None else jnp.asarray(own_slot, jnp.int32)
    ranked = rank_xml(video_scores, st_logits, ed_logits, clip_mask, own, config)
    lists = {}
    for task, cand in ranked.items():
        table = videos
        if task == "SVMR":  # one video per list: slot 0 stands for own_slot
            own_video = np.asarray(own_slot, np.int64)[:, None]
            table = own_video if videos is None else np.take_along_axis(videos, own_video, 1)
        lists[task] = candidate_predictions(task, cand, config.clip_length, table)
    return postprocess({t: lists[t] for t in vcmr.TASKS if t in lists}, config)
