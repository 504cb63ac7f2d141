"""Temporal segments: IoU, greedy NMS and top-k decoding of a 2D score map.

Segments are ``[..., 2]`` arrays of ``[start, end]``.  The IoU functions are pure and
dtype-preserving: they take NumPy or ``jnp`` arrays and compute in the input dtype, so an
evaluator can reproduce an official protocol's arithmetic (2D-TAN: float64 from float32 times;
TVR: float32) by choosing what it passes in.

Two NMS/decoding implementations with the same semantics:

* NumPy reference (:func:`nms`, :func:`topk_moments`): the official evaluation path.  It ranks
  cells with ``np.argsort`` exactly as microsoft/2D-TAN ``get_proposal_results`` does and runs
  the greedy NMS in float64, so results match the official code bit for bit.
* ``jnp`` (:func:`batched_nms`, :func:`decode_topk`): fixed ``top_k``, usable inside ``jit`` and
  over a batch; one ``lax.fori_loop`` step per kept slot, each a vector op over all candidates.
  Score ties are broken as a stable ascending sort reversed (later cell first); the NumPy
  reference uses NumPy's (unstable) default sort like the official code, so the two can differ
  only on tied scores.  NMS runs in float64 when ``jax_enable_x64`` is on (then it is exact);
  in float32 a candidate whose IoU lies within float32 rounding of the threshold can go the
  other way.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = Any  # np.ndarray or jax.Array


def _xp(*arrays: Array):
    """``jnp`` when any argument is a JAX array or tracer, else NumPy."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def temporal_iou(a: Array, b: Array, empty: float | None = None) -> Array:
    """Continuous temporal IoU with the hull denominator: the one IoU of the library.

    ``IoU = max(0, min(e_a, e_b) - max(s_a, s_b)) / max(0, max(e_a, e_b) - min(s_a, s_b))``;
    for overlapping segments the hull equals the union.  This is the formula of 2D-TAN
    ``lib/core/eval.py`` (``iou``), of the 2D-TAN IoU targets and of the TVR evaluator; the
    official variants differ only where the hull is 0 (two identical zero-length segments):

    * ``empty=None`` (2D-TAN): ``0 / 0 = nan`` as in the official code (``nan > m`` is False:
      never a hit);
    * ``empty=0.0`` (TVR ``get_iou``): 0.

    The dtype is the inputs' (promoted) one, so a caller reproduces an official protocol's
    arithmetic by what it passes in (2D-TAN: float64 from float32 times; TVR: float32).  The
    NMS walks use the ``len_i + len_j - inter`` union of the official code instead (:func:`nms`,
    :func:`batched_nms`) or this hull (:func:`grouped_nms_keep`, TVR's temporal NMS).

    Args:
      a, b: ``[..., 2]`` segments, broadcastable against each other.
    Returns: ``[...]`` IoU.
    """
    xp = _xp(a, b)
    a, b = xp.asarray(a), xp.asarray(b)
    inter = xp.maximum(0.0, xp.minimum(a[..., 1], b[..., 1]) - xp.maximum(a[..., 0], b[..., 0]))
    hull = xp.maximum(0.0, xp.maximum(a[..., 1], b[..., 1]) - xp.minimum(a[..., 0], b[..., 0]))
    if empty is not None:
        safe = xp.where(hull > 0, hull, 1.0)
        return xp.where(hull > 0, inter / safe, xp.asarray(empty, inter.dtype))
    if xp is np:
        with np.errstate(invalid="ignore", divide="ignore"):
            return inter / hull
    return inter / hull


def pairwise_iou(a: Array, b: Array) -> Array:
    """IoU of every segment of ``a`` with every segment of ``b``.

    Args:
      a: ``[M, 2]``; b: ``[K, 2]``.
    Returns: ``[M, K]``.
    """
    return temporal_iou(a[:, None, :], b[None, :, :])


def chunk_iou(a: Array, b: Array) -> Array:
    """DiDeMo IoU on inclusive chunk indices (LocalizingMoments ``utils/eval.py``).

    ``(s, e)`` covers chunks ``s..e``, so both overlap and hull get ``+1``:
    ``max(0, min(e_a, e_b) + 1 - max(s_a, s_b)) / (max(e_a, e_b) + 1 - min(s_a, s_b))``.

    Args:
      a, b: ``[..., 2]`` integer chunk indices, broadcastable.
    Returns: ``[...]`` float64 (NumPy) or float32 (``jnp`` without x64).
    """
    xp = _xp(a, b)
    a, b = xp.asarray(a), xp.asarray(b)
    inter = xp.maximum(0, xp.minimum(a[..., 1], b[..., 1]) + 1 - xp.maximum(a[..., 0], b[..., 0]))
    hull = xp.maximum(a[..., 1], b[..., 1]) + 1 - xp.minimum(a[..., 0], b[..., 0])
    return inter / hull


def nms(times: Array, scores: Array | None, thresh: float, top_k: int = -1) -> np.ndarray:
    """Greedy temporal NMS (NumPy reference of microsoft/2D-TAN ``lib/core/eval.py`` ``nms``).

    Walks the candidates best first; keeps the first remaining one and drops every later
    candidate whose IoU with it is ``> thresh`` (IoU equal to ``thresh`` survives; a nan IoU,
    from two zero-length segments, is dropped as in the official ``ovr <= thresh`` test); stops
    as soon as ``top_k`` are kept.  IoU here is ``inter / (len_i + len_j - inter)`` in the dtype
    of ``times`` (pass float64 to reproduce the official arithmetic).

    Args:
      times: ``[M, 2]`` candidate segments.
      scores: ``[M]`` or None.  None: ``times`` is already ranked best first (the official
        call).  Otherwise candidates are ranked by descending score; equal scores keep their
        input order.
      thresh: suppression threshold.
      top_k: stop after this many are kept; ``<= 0`` keeps going until none are left.
    Returns: ``[kept]`` int64 indices into ``times``, in keep order.
    """
    times = np.asarray(times)
    if times.shape[0] == 0:
        return np.zeros((0,), np.int64)
    if scores is None:
        order = np.arange(times.shape[0])
    else:
        order = np.argsort(-np.asarray(scores), kind="stable")
    x1, x2 = times[:, 0], times[:, 1]
    lengths = x2 - x1
    keep = []
    with np.errstate(invalid="ignore", divide="ignore"):
        while order.size > 0:
            i = order[0]
            keep.append(i)
            if len(keep) == top_k:
                break
            rest = order[1:]
            # The official formula: union as len_i + len_j - inter, not the hull.
            inter = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
            ovr = inter / (lengths[i] + lengths[rest] - inter)
            order = rest[ovr <= thresh]
    return np.asarray(keep, np.int64)


def ranked_cells(score_map: Array) -> tuple[np.ndarray, np.ndarray]:
    """Cells ``(i, j)`` with ``i <= j``, best first, in the official 2D-TAN order.

    The order is ``np.argsort`` (NumPy's default sort) of the flattened map, reversed, then the
    lower triangle filtered out; masked upper-triangle cells (score 0) stay in and come last.

    Args:
      score_map: ``[N, N]``.
    Returns: ``(starts [C], ends [C])`` int64, ``C = N (N + 1) / 2``.
    """
    score_map = np.asarray(score_map)
    n = score_map.shape[-1]
    order = np.argsort(score_map.ravel())[::-1]
    starts, ends = np.divmod(order, n)
    upper = starts <= ends
    return starts[upper], ends[upper]


def cell_seconds(starts: Array, ends: Array, num_clips: int, duration: float) -> np.ndarray:
    """Seconds of cells, as the official decoding computes them.

    ``[i, j + 1] / N * duration`` in float32 arithmetic (PyTorch's float32 tensor divided by the
    int ``N``, times the duration rounded to float32).  Note the order differs from the IoU
    targets of the datasets (``i * duration / N``): the results can differ in the last bit.

    Args:
      starts, ends: ``[C]`` clip indices.
    Returns: ``[C, 2]`` float32.
    """
    index = np.stack([np.asarray(starts), np.asarray(ends) + 1], axis=-1).astype(np.float32)
    return index / np.float32(num_clips) * np.float32(duration)


def topk_moments(score_map: Array, duration: float, k: int, nms_thresh: float) -> np.ndarray:
    """Decode one 2D score map into its top ``k`` moments after NMS (NumPy, official-exact).

    2D-TAN ``moment_localization/test.py`` decoding (:func:`ranked_cells`,
    :func:`cell_seconds`), then :func:`nms` in float64 on the float32 times, stopping at ``k``.

    Args:
      score_map: ``[N, N]``; ``duration``: seconds.
    Returns: ``[n, 3]`` float64 rows ``(start_s, end_s, score)``, ``n <= k`` (fewer only when
      the NMS runs out of candidates).
    """
    score_map = np.asarray(score_map)
    starts, ends = ranked_cells(score_map)
    times = cell_seconds(starts, ends, score_map.shape[-1], duration).astype(np.float64)
    keep = nms(times, None, nms_thresh, top_k=k)
    scores = score_map[starts[keep], ends[keep]].astype(np.float64)
    return np.concatenate([times[keep], scores[:, None]], axis=-1)


def batched_nms(
    times: jax.Array, thresh: float, top_k: int, valid: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Greedy NMS with a fixed number of kept slots, for ``jit`` (same rule as :func:`nms`).

    Slot ``k`` takes the first candidate still alive, then kills every candidate whose IoU
    (``inter / (len_i + len_j - inter)``) with it is not ``<= thresh``.  Candidates before it are
    already dead, so this equals the official walk over the remaining list.

    Args:
      times: ``[..., M, 2]`` candidates ranked best first (float64 under x64 for exact ties).
      thresh: suppression threshold (may be traced).
      top_k: number of slots (static).
      valid: optional ``[..., M]`` bool; invalid candidates are never kept.
    Returns: ``(index [..., top_k] int32, kept [..., top_k] bool)``; ``index`` is 0 where
      ``kept`` is False (fewer than ``top_k`` candidates survive).
    """
    times = jnp.asarray(times)
    batch_shape, m = times.shape[:-2], times.shape[-2]
    if valid is None:
        valid = jnp.ones(batch_shape + (m,), bool)
    flat_times = times.reshape((-1, m, 2))
    flat_valid = jnp.broadcast_to(valid, batch_shape + (m,)).reshape((-1, m))

    def one(seg, alive):
        x1, x2 = seg[:, 0], seg[:, 1]
        lengths = x2 - x1

        def slot(k, state):
            alive, index, kept = state
            has_any = alive.any()
            i = jnp.argmax(alive)  # first True
            inter = jnp.maximum(0.0, jnp.minimum(x2[i], x2) - jnp.maximum(x1[i], x1))
            ovr = inter / (lengths[i] + lengths - inter)
            survivors = (alive & (ovr <= thresh)).at[i].set(False)
            alive = jnp.where(has_any, survivors, alive)
            index = index.at[k].set(jnp.where(has_any, i, 0).astype(jnp.int32))
            kept = kept.at[k].set(has_any)
            return alive, index, kept

        init = (alive, jnp.zeros((top_k,), jnp.int32), jnp.zeros((top_k,), bool))
        _, index, kept = lax.fori_loop(0, top_k, slot, init)
        return index, kept

    index, kept = jax.vmap(one)(flat_times, flat_valid)
    return index.reshape(batch_shape + (top_k,)), kept.reshape(batch_shape + (top_k,))


def decode_topk(
    score_maps: jax.Array, durations: jax.Array, top_k: int, nms_thresh: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batched, jittable :func:`topk_moments`: rank cells, float32 seconds, fixed-slot NMS.

    Tied scores are ordered as a stable ascending sort reversed (the later cell first); see the
    module docstring for how this and float32 NMS can differ from the NumPy reference.

    Args:
      score_maps: ``[B, N, N]``; durations: ``[B]`` seconds.
      top_k: kept slots (static); nms_thresh: suppression threshold.
    Returns: ``(times [B, top_k, 2] float32, scores [B, top_k], kept [B, top_k] bool)``;
      unkept slots hold zeros.
    """
    score_maps = jnp.asarray(score_maps)
    n = score_maps.shape[-1]
    starts, ends = np.triu_indices(n)  # row-major, like the flattened map
    # Static fractions index / N in float32, then one float32 product with the duration.
    fractions = np.stack([starts, ends + 1], axis=-1).astype(np.float32) / np.float32(n)
    cell_scores = score_maps[:, starts, ends]  # [B, C]
    order = jnp.argsort(cell_scores, axis=-1, stable=True)[:, ::-1]
    durations = jnp.asarray(durations, jnp.float32)
    times = jnp.asarray(fractions)[order] * durations[:, None, None]  # [B, C, 2] float32
    nms_dtype = jnp.result_type(float)  # float64 under x64: the official arithmetic
    index, kept = batched_nms(times.astype(nms_dtype), nms_thresh, top_k)
    kept_times = jnp.take_along_axis(times, index[..., None], axis=1)
    kept_scores = jnp.take_along_axis(jnp.take_along_axis(cell_scores, order, axis=1), index, 1)
    kept_times = jnp.where(kept[..., None], kept_times, 0.0)
    kept_scores = jnp.where(kept, kept_scores, 0.0)
    return kept_times, kept_scores, kept


def grouped_nms_keep(
    times: np.ndarray,
    groups: np.ndarray,
    valid: np.ndarray,
    thresh: float,
    max_per_group: int | None = None,
) -> np.ndarray:
    """Greedy NMS of many ranked lists at once, separately inside groups (NumPy).

    The rule of jayleicn/TVRetrieval ``utils/temporal_nms.py``: walking a list best first, a kept
    candidate drops every later candidate of its group whose IoU with it is ``> thresh``, with
    ``IoU = max(0, min(e) - max(s)) / (max(e) - min(s))`` in the dtype of ``times`` and 0 where
    that hull is 0; once ``max_per_group`` are kept in a group the rest of the group is dropped.
    One step per list position, each a vector op over all lists.

    Args:
      times: ``[Q, K, 2]`` candidates, each list ranked best first.
      groups: ``[Q, K]`` int group of each candidate (e.g. its video); valid: ``[Q, K]`` bool.
    Returns: ``[Q, K]`` bool, True for the kept candidates.
    """
    times = np.asarray(times)
    starts, ends = times[..., 0], times[..., 1]
    groups = np.asarray(groups)
    alive = np.array(valid, bool)
    for i in range(times.shape[1] - 1):
        lists = np.flatnonzero(alive[:, i])  # lists whose i-th candidate is kept
        if lists.size == 0:
            continue
        s_i, e_i = starts[lists, i, None], ends[lists, i, None]
        s_j, e_j = starts[lists, i + 1 :], ends[lists, i + 1 :]
        inter = np.maximum(0, np.minimum(e_i, e_j) - np.maximum(s_i, s_j))
        hull = np.maximum(e_i, e_j) - np.minimum(s_i, s_j)
        iou = np.divide(inter, hull, out=np.zeros_like(inter), where=hull != 0)
        drop = (iou > thresh) & (groups[lists, i + 1 :] == groups[lists, i, None])
        alive[lists, i + 1 :] &= ~drop
    if max_per_group is not None:
        lists, pos = np.nonzero(alive)
        order = np.lexsort((pos, groups[lists, pos], lists))  # by list, group, rank
        key = np.stack([lists[order], groups[lists, pos][order]])
        new_run = np.ones(order.size, bool)
        new_run[1:] = (key[:, 1:] != key[:, :-1]).any(axis=0)
        run_start = np.maximum.accumulate(np.where(new_run, np.arange(order.size), 0))
        over = order[np.arange(order.size) - run_start >= max_per_group]
        alive[lists[over], pos[over]] = False
    return alive
