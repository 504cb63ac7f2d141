"""Cascaded MPN's moment score maps: conditional map, sparsity pooling, cascade (Sec. III-B).

Cascaded MPN (IEEE Access, shared/papers/000_d5b828f2d7a6ef4a.txt) has no public code; the
paper is the specification.  Every function takes one video and one query and is pure, so
``jax.vmap`` batches it; :func:`pairwise_cascaded_score_maps` does queries x videos.

Conditional moment score map ``f_cond`` (eqs. 9-14), for ``v [L, d]``, ``q [d]``:
``P(t_st) = softmax(Conv1D_st(v q))``; for each start ``i``, ``v*_i = [v || i/L] W_v``,
``q*_i = [q || i/L] W_q`` and ``P(t_ed | i) = softmax(Conv1D_ed(v*_i q*_i))``; the map is
``U_m * P(t_st)[:, None] * P(t_ed | I_st)``.  With ``W_v = [A; a]``, ``W_q = [B; b]`` and
``t = i/L`` the similarity row of start ``i`` is ``s0 + t s1 + t^2 c`` where
``s0 = (vA)(qB) = v (A (qB))``, ``s1 = (vA) b + a . (qB) = v (A b) + a . (qB)``,
``c = a . b``; the convolution is linear, so the ``[L, L]`` end logits are ``conv(s0) +
t conv(s1) + t^2 c conv(1) + bias``: O(L d + L^2) work and memory per (query, video) pair
(plus O(d^2) per query), no ``[L, L, d]`` tensor.

Choices where the paper is silent:

- ``L`` in ``i/L`` is the *valid* length, and frames at or past it are zeroed before every
  convolution (so ``conv(1)`` is the convolution of the valid-frame indicator): a padded
  video gives exactly the map of the unpadded one, whatever the padding holds.
- ``v q`` is the plain dot product (no scaling or normalisation).  Conv1D_st/ed have one
  input and one output channel, a bias, and zero 'same' padding in PyTorch's convention
  (``(k - 1) // 2`` zeros on the left, the rest on the right; cross-correlation order).
- ``U_m`` keeps ``j >= i`` (single-frame moments included).  Start softmax over valid frames,
  end softmax over ``j in [i, valid)``; rows of invalid starts are all zero in the map.
- Log-probabilities (for eq. 21) hold ``jnp.finfo(dtype).min`` at masked entries: finite, so
  ``exp`` gives 0, a zero target times it gives 0, and gradients are never NaN.
- Independent start/end (the 'w/o CMSM' ablation): ``P(t_ed) = softmax(Conv1D_ed(v q))`` over
  valid frames, map ``U_m * outer(P(t_st), P(t_ed))``; its ``log_p_end`` rows all hold
  ``log P(t_ed)`` (not renormalised over ``j >= i``), so eq. 21 becomes the usual CE.
- Sparsity pooling (eqs. 15-18) is ``h(x) = x^2 / x~`` with ``h = 0`` where ``x~ = 0``;
  windows start at frame 0 and the map is zero-padded to a multiple of the kernel, then cut
  back.  Meant for non-negative maps (every map here is).
- Anchors: frame ``t`` of a video with valid length ``n`` lies in segment
  ``floor(t N / n)`` (clipped to ``N - 1``) -- :func:`segment_ids`, to be used for eq. 8 as
  well -- and frame cell ``(s, e)`` takes anchor cell ``(seg(s), seg(e))``.  The anchor-level
  maps ``f_cond(C^N, q)`` treat all ``N`` segments as valid.
- Cascade (Algorithm 1): level ``i = 1..T`` pools with kernel ``N = 2^i`` and adds the
  upsampled ``N = 2^i`` anchor map; every level is re-masked, so ``sigmoid(0) = 0.5`` never
  reaches a masked cell.  Without the anchor-based branch the cascade still runs with the
  anchor maps at zero, ``M_i = sigmoid(h(M_{i-1}))``, so that ablation keeps sparsity
  pooling (Table 3 lists SP and ABr separately).  Without sparsity pooling ``h`` is the
  identity.  The ``valid_len = 0`` video gives an all-zero map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp


class ConditionalMapParams(NamedTuple):
    """Weights of one ``f_cond``.  ``w_v``/``w_q`` ``[d + 1, d]`` (None: independent map),
    conv kernels ``[k]`` (cross-correlation order) and scalar biases."""

    w_v: jax.Array | None
    w_q: jax.Array | None
    start_kernel: jax.Array
    start_bias: jax.Array
    end_kernel: jax.Array
    end_bias: jax.Array


class ScoreMap(NamedTuple):
    """``score_map [L, L]`` (eq. 14), ``log_p_start [L]``, ``log_p_end [L, L]`` (row: start)."""

    score_map: jax.Array
    log_p_start: jax.Array
    log_p_end: jax.Array


def conv1d_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """One-channel cross-correlation with zero 'same' padding (PyTorch split), no bias.

    ``x [..., L]``, ``kernel [k]`` -> ``[..., L]``; ``out[j] = sum_t kernel[t] x[j + t - left]``
    with ``left = (k - 1) // 2``.  A sum over the ``k`` taps, each a shifted slice.
    """
    k, length = kernel.shape[0], x.shape[-1]
    left = (k - 1) // 2
    pad = [(0, 0)] * (x.ndim - 1) + [(left, k - 1 - left)]
    padded = jnp.pad(x, pad)
    return sum(kernel[t] * padded[..., t : t + length] for t in range(k))


def _masked_log_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Log-softmax over the last axis among ``mask``; masked entries hold the dtype's min."""
    neg = jnp.finfo(logits.dtype).min
    z = jnp.where(mask, logits, neg)
    out = z - jax.nn.logsumexp(z, axis=-1, keepdims=True)
    return jnp.where(mask, out, neg)


def valid_map_mask(length: int, valid_len: jax.Array) -> jax.Array:
    """Bool ``[L, L]``: ``i <= j < valid_len`` (upper triangle ``U_m`` within the valid frames)."""
    idx = jnp.arange(length)
    return (idx[:, None] <= idx[None, :]) & (idx[None, :] < valid_len)


def _start_and_sim(video, valid_len, query, params):
    length = video.shape[0]
    frame_mask = jnp.arange(length) < valid_len
    sim = jnp.where(frame_mask, video @ query, 0.0)
    start_logits = conv1d_same(sim, params.start_kernel) + params.start_bias
    return frame_mask, sim, _masked_log_softmax(start_logits, frame_mask)


def _assemble(log_p_start, log_p_end, mask):
    probs = jnp.exp(log_p_start)[:, None] * jnp.exp(log_p_end)
    return ScoreMap(jnp.where(mask, probs, 0.0), log_p_start, log_p_end)


def conditional_score_map(
    video: jax.Array, valid_len: jax.Array, query: jax.Array, params: ConditionalMapParams
) -> ScoreMap:
    """``f_cond(v, q)`` (eqs. 9-14), decomposed: O(L d + L^2), no ``[L, L, d]`` tensor.

    ``video [L, d]`` (frames from ``valid_len`` on are padding), ``valid_len`` int scalar,
    ``query [d]`` -> :class:`ScoreMap` of ``[L]`` / ``[L, L]`` arrays.
    """
    length, dim = video.shape
    frame_mask, _, log_p_start = _start_and_sim(video, valid_len, query, params)
    a_vec, b_vec = params.w_v[dim], params.w_q[dim]
    # Grouped so that a frame costs O(d): (v A)(q B) = v (A (q B)) and (v A) b = v (A b).
    # Under vmap over videos the query-side vectors are computed once per query, and no
    # [L, d] projection of the video is made per (query, video) pair.
    query_b = jnp.pad(query, (0, 1)) @ params.w_q  # q B, [d]
    ind = frame_mask.astype(video.dtype)
    s0 = ind * (video @ (params.w_v @ query_b)[:dim])
    s1 = ind * (video @ (params.w_v @ b_vec)[:dim] + a_vec @ query_b)
    c = a_vec @ b_vec
    rows = conv1d_same(jnp.stack([s0, s1, ind]), params.end_kernel)  # [3, L]
    t = jnp.arange(length, dtype=video.dtype) / jnp.maximum(valid_len, 1).astype(video.dtype)
    t = t[:, None]
    end_logits = rows[0] + t * rows[1] + (t * t * c) * rows[2] + params.end_bias  # [L, L]
    mask = valid_map_mask(length, valid_len)
    return _assemble(log_p_start, _masked_log_softmax(end_logits, mask), mask)


def independent_score_map(
    video: jax.Array, valid_len: jax.Array, query: jax.Array, params: ConditionalMapParams
) -> ScoreMap:
    """'w/o conditional map': ``U_m * outer(P(t_st), P(t_ed))``, both from ``v q``.

    Shapes as :func:`conditional_score_map`; ``params.w_v``/``w_q`` are not read.
    ``log_p_end[i]`` is ``log P(t_ed)`` for every valid start ``i``.
    """
    length = video.shape[0]
    frame_mask, sim, log_p_start = _start_and_sim(video, valid_len, query, params)
    end_logits = conv1d_same(sim, params.end_kernel) + params.end_bias
    log_p_end_row = _masked_log_softmax(end_logits, frame_mask)
    rows_mask = frame_mask[:, None] & frame_mask[None, :]
    neg = jnp.finfo(log_p_end_row.dtype).min
    log_p_end = jnp.where(rows_mask, log_p_end_row[None, :], neg)
    mask = valid_map_mask(length, valid_len)
    return _assemble(log_p_start, log_p_end, mask)


def moment_score_map(
    video: jax.Array,
    valid_len: jax.Array,
    query: jax.Array,
    params: ConditionalMapParams,
    conditional: bool = True,
) -> ScoreMap:
    """:func:`conditional_score_map` or, with ``conditional=False``, the independent one."""
    fn = conditional_score_map if conditional else independent_score_map
    return fn(video, valid_len, query, params)


def sparsity_pool(x: jax.Array, kernel: int) -> jax.Array:
    """``h(x) = (x / x~) x`` (eqs. 15-18): ``x~`` is the N x N max-pool, nearest-upsampled.

    ``x [L, L]`` -> ``[L, L]``; zero where ``x~ = 0`` (value and gradient finite).
    """
    length = x.shape[0]
    blocks = -(-length // kernel)
    size = blocks * kernel
    padded = jnp.pad(x, ((0, size - length), (0, size - length)))
    windows = padded.reshape(blocks, kernel, blocks, kernel)
    pooled = jnp.max(windows, axis=(1, 3), keepdims=True)  # x_N, eq. 15
    upsampled = jnp.broadcast_to(pooled, windows.shape)  # x~, eq. 16
    nonzero = upsampled != 0
    ratio = windows / jnp.where(nonzero, upsampled, 1.0)  # a, eq. 17
    out = jnp.where(nonzero, ratio * windows, 0.0)  # eq. 18
    return out.reshape(size, size)[:length, :length]


def segment_ids(length: int, valid_len: jax.Array, num_segments: int) -> jax.Array:
    """Anchor segment of each frame: ``min(floor(t N / valid_len), N - 1)``, int32 ``[L]``."""
    t = jnp.arange(length, dtype=jnp.int32)
    seg = (t * num_segments) // jnp.maximum(valid_len, 1).astype(jnp.int32)
    return jnp.minimum(seg, num_segments - 1)


def upsample_anchor_map(anchor_map: jax.Array, length: int, valid_len: jax.Array) -> jax.Array:
    """Anchor-level ``[N, N]`` map onto the frame map ``[L, L]`` by gathers, masked to U_m."""
    seg = segment_ids(length, valid_len, anchor_map.shape[0])
    frame_map = anchor_map[seg[:, None], seg[None, :]]
    return jnp.where(valid_map_mask(length, valid_len), frame_map, 0.0)


MAP_SCALES = ("probability", "cells", "log")
LOG_MASKED = -1e9  # a masked cell of a log-scale map: finite, below any real log-score


def log_score_map(score: ScoreMap, mask: jax.Array) -> jax.Array:
    """``log f_cond`` ``[L, L]`` = ``log P(t_st) + log P(t_ed | t_st)`` on ``mask``,
    :data:`LOG_MASKED` elsewhere (never ``log 0``: the log-probabilities are used as they are)."""
    logs = score.log_p_start[:, None] + score.log_p_end
    return jnp.where(mask, logs, LOG_MASKED)


def log_sparsity_pool(y: jax.Array, kernel: int) -> jax.Array:
    """:func:`sparsity_pool` on the log scale: ``log h(x) = 2 log x - log x~`` for ``y = log x``
    (``log x~`` is the window max of ``y``; the max commutes with ``log``).  ``[L, L]``."""
    length = y.shape[0]
    blocks = -(-length // kernel)
    size = blocks * kernel
    padded = jnp.pad(y, ((0, size - length), (0, size - length)), constant_values=LOG_MASKED)
    windows = padded.reshape(blocks, kernel, blocks, kernel)
    pooled = jnp.max(windows, axis=(1, 3), keepdims=True)
    return (2 * windows - pooled).reshape(size, size)[:length, :length]


def cascade(
    frame_map: jax.Array,
    anchor_maps: Sequence[jax.Array] | None,
    valid_len: jax.Array,
    *,
    num_levels: int | None = None,
    sparsity_pooling: bool = True,
    map_scale: str = "probability",
) -> jax.Array:
    """Algorithm 1: ``M_i = sigmoid(h(M_{i-1}) + Upsample(N^{2^i}))``, ``i = 1..T``; returns M_T.

    ``frame_map [L, L]`` is ``M_0``; ``anchor_maps[i - 1]`` is ``[2^i, 2^i]``.
    ``anchor_maps=None`` (no anchor-based branch) needs ``num_levels`` and adds zeros.

    ``map_scale`` (:data:`MAP_SCALES`): the scale the ``f_cond`` maps enter the cascade on.
    ``'probability'`` is the paper read literally: eq. 14's maps are probabilities over their
    valid cells, so a frame map's cells are about ``2 / L^2`` while an ``N``-anchor map's are
    about ``2 / N^2``, and the coarse anchor maps decide the ranking of ``M_T``.  ``'cells'``
    multiplies each map by its number of valid cells (``n (n + 1) / 2``; a uniform map is 1
    everywhere), so frame-level and anchor-level evidence enter the sum on one scale.
    ``'log'``: the maps are given as log-probabilities (:func:`log_score_map`), ``h`` is
    applied as :func:`log_sparsity_pool` (the log of eq. 18), line 7's sum adds
    log-probabilities -- the frame map times every anchor map of the cell's segments, a
    product of experts in which each level must agree -- and the sigmoid is left out (on this
    scale it would turn the running log-score back into a probability-scale number before the
    next level adds a log-probability).  The product is renormalised over the valid cells, so
    the returned ``log M_T`` is a log-distribution over the video's moments like ``log f_cond``
    (a video's moments compete with another video's on equal terms in the corpus ranking,
    whatever the anchor maps' spread); :data:`LOG_MASKED` off the valid triangle.  Logs rank
    the cells as ``M_T`` would, without the underflow of a product of ``2 T + 2`` small
    probabilities.  The paper does not say which scale its maps have at line 7 of Algorithm 1.
    """
    if map_scale not in MAP_SCALES:
        raise ValueError(f"map_scale must be one of {MAP_SCALES}, got {map_scale!r}")
    length = frame_map.shape[0]
    if anchor_maps is None:
        if num_levels is None:
            raise ValueError("cascade without anchor maps needs num_levels")
    else:
        anchor_maps = tuple(anchor_maps)
        num_levels = len(anchor_maps) if num_levels is None else num_levels
        if num_levels != len(anchor_maps):
            raise ValueError(f"num_levels={num_levels} but {len(anchor_maps)} anchor maps")
        for level, anchor in enumerate(anchor_maps, start=1):
            if anchor.shape != (2**level, 2**level):
                raise ValueError(f"anchor map {level} has shape {anchor.shape}, want N = 2^{level}")
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    mask = valid_map_mask(length, valid_len)
    if map_scale == "log":
        current = jnp.where(mask, frame_map, LOG_MASKED)
        for level in range(1, num_levels + 1):
            if sparsity_pooling:
                current = jnp.where(mask, log_sparsity_pool(current, 2**level), LOG_MASKED)
            if anchor_maps is not None:
                anchor = upsample_anchor_map(anchor_maps[level - 1], length, valid_len)
                current = jnp.where(mask, current + anchor, LOG_MASKED)
        normaliser = jax.nn.logsumexp(jnp.where(mask, current, -jnp.inf))
        normaliser = jnp.where(jnp.isfinite(normaliser), normaliser, 0.0)  # no valid cell
        return jnp.where(mask, current - normaliser, LOG_MASKED)
    current = jnp.where(mask, frame_map, 0.0)
    if map_scale == "cells":
        n = jnp.asarray(valid_len, frame_map.dtype)
        current = current * (n * (n + 1) / 2)
    for level in range(1, num_levels + 1):
        if sparsity_pooling:
            current = sparsity_pool(current, 2**level)
        if anchor_maps is not None:
            anchor = anchor_maps[level - 1]
            if map_scale == "cells":
                anchor = anchor * (2**level * (2**level + 1) / 2)
            current = current + upsample_anchor_map(anchor, length, valid_len)
        current = jnp.where(mask, jax.nn.sigmoid(current), 0.0)
    return current


class CascadeOutput(NamedTuple):
    """``score_map [L, L]`` is ``M_T`` (``log M_T`` with ``map_scale='log'``); ``frame`` the
    frame-level ``f_cond(V, q)`` (for eq. 21)."""

    score_map: jax.Array
    frame: ScoreMap
    anchors: tuple[ScoreMap, ...] = ()  # f_cond(C^N, q) for N = 2, 4, ... (none: no branch)


def cascaded_score_map(
    video: jax.Array,
    valid_len: jax.Array,
    anchors: Sequence[jax.Array],
    query: jax.Array,
    frame_params: ConditionalMapParams,
    anchor_params: ConditionalMapParams | Sequence[ConditionalMapParams] | None,
    *,
    conditional: bool = True,
    sparsity_pooling: bool = True,
    num_levels: int | None = None,
    map_scale: str = "probability",
) -> CascadeOutput:
    """Cascaded MPG for one video and query: ``f_cond`` on frames and anchors, then Algorithm 1.

    ``video [L, d]``, ``anchors[i - 1] [2^i, d]`` (``C^N``; ignored when ``anchor_params`` is
    None, the no-anchor-branch ablation, which then needs ``num_levels``), ``query [d]``.
    One ``anchor_params`` is shared by all levels; a sequence gives one per level.
    """
    log_scale = map_scale == "log"

    def entering(score: ScoreMap, length: int, valid) -> jax.Array:
        return log_score_map(score, valid_map_mask(length, valid)) if log_scale else score.score_map

    frame = moment_score_map(video, valid_len, query, frame_params, conditional)
    anchor_maps, anchor_scores = None, ()
    if anchor_params is not None:
        if isinstance(anchor_params, ConditionalMapParams):
            anchor_params = (anchor_params,) * len(anchors)
        if len(anchor_params) != len(anchors):
            raise ValueError(f"{len(anchor_params)} anchor params for {len(anchors)} levels")
        anchor_scores = tuple(
            moment_score_map(c, c.shape[0], query, p, conditional)
            for c, p in zip(anchors, anchor_params)
        )
        anchor_maps = tuple(
            entering(a, c.shape[0], c.shape[0]) for a, c in zip(anchor_scores, anchors)
        )
    score = cascade(
        entering(frame, video.shape[0], valid_len),
        anchor_maps,
        valid_len,
        num_levels=num_levels,
        sparsity_pooling=sparsity_pooling,
        map_scale=map_scale,
    )
    return CascadeOutput(score, frame, anchor_scores)


def pairwise_cascaded_score_maps(
    queries: jax.Array,
    videos: jax.Array,
    valid_lens: jax.Array,
    anchors: Sequence[jax.Array],
    frame_params: ConditionalMapParams,
    anchor_params: ConditionalMapParams | Sequence[ConditionalMapParams] | None,
    **options,
) -> jax.Array:
    """``M_T`` for every query x video: ``[Q, d]``, ``[V, L, d]``, ``[V]``, ``anchors[i-1]
    [V, 2^i, d]`` -> ``[Q, V, L, L]``.

    Memory: a few ``Q V L L`` float buffers plus ``[V, L, d]`` projections of the videos
    (computed once, not per query); nothing of size ``Q V L d`` or ``L L d``.
    ``options`` are :func:`cascaded_score_map`'s keywords.
    """

    def one(query, video, valid_len, video_anchors):
        out = cascaded_score_map(
            video, valid_len, video_anchors, query, frame_params, anchor_params, **options
        )
        return out.score_map

    per_video = jax.vmap(one, in_axes=(None, 0, 0, 0))
    return jax.vmap(per_video, in_axes=(0, None, None, None))(
        queries, videos, valid_lens, tuple(anchors)
    )
