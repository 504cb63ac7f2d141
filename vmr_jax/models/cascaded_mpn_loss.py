"""Cascaded MPN's training loss, eqs. 19-23 (module docstring of ``models/cascaded_mpn.py``).

``L = alpha (L^V_v + L^C_v) + beta L_m`` (eqs. 22-23; alpha = 8, beta = 0.01, the paper's
values, which are HERO's ``lw_neg_ctx = lw_neg_q = 8`` and ``lw_st_ed = 0.01``):

* ``L^V_v`` (eq. 19) and ``L^C_v`` (eq. 20): hinge losses ``max(0, margin + s_neg - s_pos)``
  on the in-batch similarity matrices ``s[i, j]`` = max-pooled cosine of query ``i`` and video
  ``j``'s frames ``V`` (eq. 19) or anchors ``C^N`` of every level (eq. 20).  The paper does
  not say which negatives or how the terms are reduced; HERO's VSM loss (``use_all_neg``):
  every other video of the global batch is a negative of a query, the hinge is averaged
  over a row's negatives, then over the rows; with ``hinge_directions='both'`` (default,
  HERO) the same is added for every video against the other queries (the transposed
  matrix), with ``'query_to_video'`` only the query rows (the eqs.' literal ``s(V-, Eq)``).
  Negatives are pairs of real examples (``valid``) of different videos: when the batch has
  ``video_index`` two queries of one video are not each other's negatives (HERO has no such
  check); a row without negatives is left out of the mean.
* ``L_m`` (eq. 21): ``-log P(t_st = g_st) - log P(t_ed = g_ed | t_st = g_st)`` of the
  frame-level map ``f_cond(V, E_q)``, averaged over the real examples with a span.  Labels by
  HERO's rule (:func:`st_ed_labels`) from the first span of ``spans``.  With
  ``model.clip_length = 0`` (:data:`vmr_jax.retrieval.ranking.PER_VIDEO_CLIP_LENGTH`: frames
  are bins evenly covering each video, ``clip_sampling='resample'``, e.g. ActivityNet C3D)
  a frame lasts ``duration / L`` seconds of its own video (``batch['duration']``, ``L`` its
  valid frames): frame ``k`` covers ``[k / L * duration, (k + 1) / L * duration)``, the
  corpus engine's moment times (:func:`vmr_jax.retrieval.ranking.candidate_predictions`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vmr_jax.ops.score_maps import segment_ids
from vmr_jax.retrieval.ranking import per_video_frames

HINGE_DIRECTIONS = ("both", "query_to_video")


def st_ed_labels(
    spans: jax.Array,
    video_mask: jax.Array,
    clip_length: float,
    duration: jax.Array | None = None,
) -> jax.Array:
    """HERO's training labels (``VcmrDataset.get_st_ed_label``), ``[B, 2]`` int32, inclusive.

    ``spans [B, 2]`` seconds, ``video_mask [B, L]`` (valid frames a prefix, ``n`` of them):
    ``st = min(floor(t_s / clip), n - 1)``, ``ed = min(max(ceil(t_e / clip) - 1, st + 1),
    n - 1)`` (a moment of at least two frames where the video has them); 0 for a row with
    no valid frame.  float32 arithmetic, like ``xml_loss.st_ed_labels``.

    ``clip_length`` 0 (per-video frames, module docstring): ``t / clip`` is ``t * n /
    duration`` with ``duration [B]`` seconds of each example's video (a row with ``duration
    <= 0`` gets frame 0, e.g. zero example batches).
    """
    count = jnp.sum(video_mask, axis=-1)
    last = jnp.maximum(count.astype(jnp.int32) - 1, 0)
    if per_video_frames(clip_length):
        if duration is None:
            raise ValueError("clip_length 0 (frames of duration / L s) needs the duration")
        duration = jnp.asarray(duration, jnp.float32)
        safe = jnp.where(duration > 0, duration, 1.0)
        start = jnp.where(duration > 0, spans[:, 0] * count / safe, 0.0)
        stop = jnp.where(duration > 0, spans[:, 1] * count / safe, 0.0)
    else:
        start, stop = spans[:, 0] / clip_length, spans[:, 1] / clip_length
    st = jnp.floor(start).astype(jnp.int32)
    ed = jnp.ceil(stop).astype(jnp.int32) - 1
    st = jnp.clip(st, 0, last)
    ed = jnp.clip(jnp.maximum(ed, st + 1), 0, last)
    return jnp.stack([st, ed], axis=-1)


def negative_pairs(valid: jax.Array, video_index: jax.Array | None = None) -> jax.Array:
    """``[B, B]`` bool: ``(i, j)`` is a negative pair -- both real, ``i != j`` and (when
    ``video_index [B]`` is given) of different videos."""
    real = jnp.asarray(valid) > 0
    b = real.shape[0]
    pairs = real[:, None] & real[None, :] & ~jnp.eye(b, dtype=bool)
    if video_index is not None:
        pairs = pairs & (video_index[:, None] != video_index[None, :])
    return pairs


def hinge_rows(similarity: jax.Array, negatives: jax.Array, margin: float) -> jax.Array:
    """One direction of HERO's all-negative hinge: ``mean_i mean_{j in neg(i)}
    max(0, margin + s[i, j] - s[i, i])`` over the rows ``i`` that have a negative.

    ``similarity [B, B]`` (row: anchor, diagonal: positive), ``negatives [B, B]`` bool.
    """
    pos = jnp.diagonal(similarity)[:, None]
    per_pair = jnp.where(negatives, jnp.maximum(margin + similarity - pos, 0.0), 0.0)
    count = jnp.sum(negatives, axis=1)
    per_row = jnp.sum(per_pair, axis=1) / jnp.maximum(count, 1)
    has = count > 0
    return jnp.sum(jnp.where(has, per_row, 0.0)) / jnp.maximum(jnp.sum(has), 1)


def video_hinge_loss(
    similarity: jax.Array, negatives: jax.Array, margin: float, directions: str = "both"
) -> jax.Array:
    """Eq. 19 / 20 on a ``[query, video]`` similarity matrix: the query rows against their
    negative videos, plus (``'both'``) the video columns against their negative queries."""
    if directions not in HINGE_DIRECTIONS:
        raise ValueError(f"hinge_directions must be one of {HINGE_DIRECTIONS}, got {directions!r}")
    loss = hinge_rows(similarity, negatives, margin)
    if directions == "both":
        loss = loss + hinge_rows(similarity.T, negatives.T, margin)
    return loss


def moment_loss(
    log_p_start: jax.Array, log_p_end: jax.Array, labels: jax.Array, weight: jax.Array
) -> jax.Array:
    """Eq. 21, ``-log P(g_st) - log P(g_ed | t_st = g_st)``, weighted mean over the batch.

    ``log_p_start [B, L]``, ``log_p_end [B, L, L]`` (row: start), ``labels [B, 2]`` int32,
    ``weight [B]`` (0: left out; its entries may hold the masked log-probabilities).
    """
    st, ed = labels[:, 0], labels[:, 1]
    lp_st = jnp.take_along_axis(log_p_start, st[:, None], axis=1)[:, 0]
    end_row = jnp.take_along_axis(log_p_end, st[:, None, None], axis=1)[:, 0]  # [B, L]
    lp_ed = jnp.take_along_axis(end_row, ed[:, None], axis=1)[:, 0]
    per_example = jnp.where(weight > 0, -(lp_st + lp_ed), 0.0)
    return jnp.sum(per_example * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def loss_fn(
    outputs, batch, model_config, *, step=None, steps_per_epoch=None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``alpha (L^V_v + L^C_v) + beta L_m`` (eqs. 19-23); parts are the weighted terms.

    ``outputs``: ``CascadedMPN.__call__``'s ``frame_similarity [B, B]``, ``anchor_similarity
    [B, B]`` (absent without the anchor-based branch: ``L^C_v = 0``), ``log_p_start [B, L]``,
    ``log_p_end [B, L, L]``.  ``step``/``steps_per_epoch`` are not used (no schedule).
    """
    del step, steps_per_epoch
    sim = outputs["frame_similarity"]
    b = sim.shape[0]
    valid = jnp.asarray(batch.get("valid", jnp.ones((b,))), jnp.float32)
    video_index = batch.get("video_index")
    negatives = negative_pairs(valid, None if video_index is None else jnp.asarray(video_index))
    margin = float(model_config.margin)
    directions = str(model_config.hinge_directions)
    alpha = float(model_config.video_loss_weight)
    beta = float(model_config.moment_loss_weight)

    frame_hinge = alpha * video_hinge_loss(sim, negatives, margin, directions)
    anchor_hinge = jnp.zeros((), jnp.float32)
    if "anchor_similarity" in outputs:
        anchor_hinge = alpha * video_hinge_loss(
            outputs["anchor_similarity"], negatives, margin, directions
        )

    video_mask = jnp.asarray(batch["video_mask"], jnp.float32)
    labels = st_ed_labels(
        jnp.asarray(batch["spans"], jnp.float32)[:, 0],
        video_mask,
        float(model_config.clip_length),
        batch.get("duration"),
    )
    weight = (valid > 0) & (jnp.sum(video_mask, axis=-1) > 0)
    if "span_mask" in batch:
        weight = weight & (jnp.asarray(batch["span_mask"])[:, 0] > 0)
    weight = weight.astype(jnp.float32)
    moment = beta * moment_loss(outputs["log_p_start"], outputs["log_p_end"], labels, weight)
    loss = frame_hinge + anchor_hinge + moment
    parts = {
        "loss_frame_hinge": frame_hinge,
        "loss_anchor_hinge": anchor_hinge,
        "loss_moment": moment,
    }
    gamma = float(model_config.get("anchor_moment_loss_weight", 0.0))
    if gamma > 0:
        parts["loss_anchor_moment"] = gamma * anchor_moment_loss(
            outputs, labels, video_mask, weight
        )
        loss = loss + parts["loss_anchor_moment"]
    return loss, parts


def anchor_moment_loss(outputs, labels, video_mask, weight) -> jax.Array:
    """Eq. 21 on every anchor level (NOT in the paper; ``anchor_moment_loss_weight`` > 0):
    the frame labels' segments ``(seg_N(g_st), seg_N(g_ed))`` (``score_maps.segment_ids``,
    the cascade's own frame -> anchor rule) against ``f_cond(C^N, E_q)``, averaged over the
    levels.  Without it no loss reads an anchor-level map, which reaches ``M_T`` trained only
    through the ``f_cond`` weights it shares with the frame map."""
    length = video_mask.shape[1]
    valid_len = jnp.sum(video_mask > 0, axis=-1).astype(jnp.int32)
    levels = sorted(
        int(k.rsplit("_", 1)[1]) for k in outputs if k.startswith("anchor_log_p_start_")
    )
    if not levels:
        return jnp.zeros((), jnp.float32)
    total = jnp.zeros((), jnp.float32)
    for n in levels:
        seg = jax.vmap(segment_ids, in_axes=(None, 0, None))(length, valid_len, n)  # [B, L]
        anchor_labels = jnp.take_along_axis(seg, labels, axis=1)
        total = total + moment_loss(
            outputs[f"anchor_log_p_start_{n}"],
            outputs[f"anchor_log_p_end_{n}"],
            anchor_labels,
            weight,
        )
    return total / len(levels)
