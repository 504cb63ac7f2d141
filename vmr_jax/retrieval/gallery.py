"""FVMR's common-space gallery: every moment of every video encoded once, queries answered by
dot products (Gao & Xu, ICCV 2021, 3.3 "Inference": "the visual moment features phi_m(m_i) can
be pre-calculated and stored in a gallery database").

Gallery (:func:`build_gallery`): ``moments [V_pad, C, D]`` = ``phi_m(m)`` of the ``C`` valid cells
(``moment_map.valid_cells`` order) of every video, encoded in batches sharded on the mesh's
``data`` axis and kept sharded on ``data`` along the video axis; ``V`` is padded to a multiple of
the ``data`` size with zero rows no query reaches.  With it: ``video_ids``, ``durations``
(float32 seconds, as the input pipeline holds them), the map geometry and JSON ``metadata``
(e.g. the checkpoint it was encoded with).  Size ``V * C * D * 4`` bytes (TACoS test: 25 videos
x 2,548 cells x 512 = 130 MB; ActivityNet val, ~4,900 x 1,104 x 512: 11 GB); it is filled in a
host buffer, then placed.  It is stored as the shared sharded embedding index
(:mod:`vmr_jax.retrieval.index`, the same one the VCMR corpus uses): :meth:`Gallery.save` /
:meth:`Gallery.load` write orbax arrays plus ``index.json``; ``load`` restores straight onto
any mesh (orbax pads or drops zero rows).

Single-video search (:func:`search`): query ``q`` (``phi_s(s_q)``) asks about video
``video_index[q]``.  The host routes each query to the device holding its video (the same
number of slots per device, padded), so the jitted ``shard_map`` program needs no
communication: a device gathers its queries' rows ``[chunk, C, D]``, one batched matmul with
``[chunk, D]`` gives the logits ``p`` (eq. 6), ``sigmoid`` the scores, and the top ``top_k``
after greedy NMS are decoded as the 2D-TAN evaluator does (:func:`vmr_jax.ops.segments
.decode_topk`: float32 seconds ``[i, j + 1] / N * duration``, NMS dropping IoU
``> nms_thresh``).  Results equal the model's forward + ``fvmr.decode`` +
``evaluation.svmr.decode_predictions`` (tests) but for: (1) only valid cells are candidates
(when the NMS keeps fewer than ``top_k`` the other slots are NaN; the official decoding would
go on with the zero-score cells outside the mask); (2) equal scores rank the later cell first
(``np.argsort``'s order of ties is unspecified); (3) the NMS runs in float64, the official
arithmetic, where the backend has it (CPU, GPU), else in float32 (``exact_nms``): on the cell
grid an IoU exactly at the threshold is common, and float32 can decide it the other way.

Gallery-wide search (:func:`search_all`): each query against every video.  Queries are
replicated; each device scores its videos in blocks (``[Q, block, C]``) keeping a running top
``M``; the devices' candidates are merged into the global top ``M``; on the host, moments of
the same video are NMS-ed (:func:`vmr_jax.ops.segments.grouped_nms_keep`), ``top_k`` kept.

Single process only (``jax.process_count() == 1``), as :mod:`vmr_jax.retrieval.corpus`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vmr_jax.evaluation import svmr
from vmr_jax.ops import moment_map, segments
from vmr_jax.retrieval import index as index_lib

DATA_AXIS = index_lib.DATA_AXIS
METADATA_FILE = index_lib.INDEX_FILE
FLOAT64_PLATFORMS = ("cpu", "gpu", "cuda", "rocm")


class GalleryError(index_lib.IndexError_):
    """A gallery, video batch or query batch that cannot be used (names the field)."""


def _data_size(mesh: Mesh) -> int:
    return index_lib.data_size(mesh, GalleryError)


def _round_up(n: int, multiple: int) -> int:
    return index_lib.round_up(n, multiple)


def _single_process() -> None:
    index_lib.single_process("galleries", GalleryError)


@dataclasses.dataclass(frozen=True)
class Gallery:
    """Encoded moments of ``V`` videos: ``moments [V_pad, C, D]`` on ``mesh`` (sharded on
    ``data`` along the video axis; rows ``>= V`` are zero padding), ``durations [V]`` float32
    seconds, ``video_ids`` (``V`` strings), the map geometry and JSON-able ``metadata``."""

    moments: jax.Array
    durations: np.ndarray
    video_ids: tuple[str, ...]
    num_clips: int
    pooling_counts: tuple[int, ...]
    mesh: Mesh
    metadata: dict = dataclasses.field(default_factory=dict)

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    @property
    def num_cells(self) -> int:
        return int(self.moments.shape[1])

    @property
    def embed_dim(self) -> int:
        return int(self.moments.shape[2])

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """``(starts [C], ends [C])`` clip indices of the gallery's cells."""
        return moment_map.valid_cells(self.num_clips, self.pooling_counts)

    def rows(self, video_ids: Sequence[str]) -> np.ndarray:
        """Gallery rows ``[Q]`` of ``video_ids``; an id not in the gallery is an error."""
        lookup = {v: row for row, v in enumerate(self.video_ids)}
        missing = [v for v in video_ids if v not in lookup]
        if missing:
            raise GalleryError(
                f"video_id {missing[0]!r} is not in the gallery ({len(missing)} unknown ids; "
                f"the gallery has {self.num_videos} videos, e.g. {list(self.video_ids[:3])})"
            )
        return np.array([lookup[v] for v in video_ids], np.int64)

    def as_index(self) -> index_lib.EmbeddingIndex:
        """The gallery as the shared embedding index (``moments``; geometry in metadata)."""
        meta = {
            "durations": [float(d) for d in self.durations],
            "num_clips": self.num_clips,
            "pooling_counts": list(self.pooling_counts),
            "gallery": self.metadata,
        }
        return index_lib.EmbeddingIndex(
            {"moments": self.moments}, self.num_videos, self.mesh, self.video_ids, meta
        )

    def save(self, directory: str | Path) -> Path:
        """Writes the gallery as an :class:`~vmr_jax.retrieval.index.EmbeddingIndex`
        (``directory/arrays`` with orbax, ``directory/index.json``)."""
        return self.as_index().save(directory)

    @classmethod
    def load(cls, directory: str | Path, mesh: Mesh) -> Gallery:
        """A gallery written by :meth:`save`, placed on ``mesh`` (any number of devices)."""
        _single_process()
        index = index_lib.EmbeddingIndex.load(directory, mesh, GalleryError)
        meta = index.metadata
        if "moments" not in index.encodings or "num_clips" not in meta:
            raise GalleryError(f"{directory}: an index, but not an FVMR gallery")
        return cls(
            moments=index.encodings["moments"],
            durations=np.asarray(meta["durations"], np.float32),
            video_ids=tuple(str(v) for v in index.video_ids),
            num_clips=int(meta["num_clips"]),
            pooling_counts=tuple(int(c) for c in meta["pooling_counts"]),
            mesh=mesh,
            metadata=dict(meta.get("gallery") or {}),
        )


# --------------------------------------------------------------------------- build
@functools.lru_cache(maxsize=16)
def _encode_program(model: Any, mesh: Mesh, method: str) -> Callable:
    """``model.<method>`` jitted: variables replicated, batch sharded on ``data``, output
    replicated (linen modules hash by their fields: one program per configuration)."""
    rep = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        lambda variables, batch: model.apply(variables, batch, method=method),
        in_shardings=(rep, NamedSharding(mesh, PartitionSpec(DATA_AXIS))),
        out_shardings=rep,
    )


def _check_durations(durations: Any, num_videos: int | None) -> np.ndarray:
    durations = np.asarray(durations, np.float32)
    if durations.ndim != 1 or (num_videos is not None and len(durations) != num_videos):
        raise GalleryError(f"durations must be [V] seconds, got shape {durations.shape}")
    bad = ~(np.isfinite(durations) & (durations > 0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise GalleryError(f"durations[{row}] = {durations[row]}: must be finite and > 0")
    return durations


def _check_video_ids(video_ids: Sequence | None, num_videos: int) -> tuple[str, ...]:
    """String ids of the gallery's videos (``'0'..'V-1'`` by default), checked as every
    index's ids are (:func:`vmr_jax.retrieval.index.check_ids`)."""
    if video_ids is None:
        return tuple(str(row) for row in range(num_videos))
    return index_lib.check_ids([str(v) for v in video_ids], num_videos, GalleryError)


def build_gallery(
    model: Any,
    variables: Any,
    videos: Any,
    mesh: Mesh,
    *,
    durations: Sequence[float] | np.ndarray,
    video_ids: Sequence[str] | None = None,
    batch_size: int = 32,
    metadata: Mapping[str, Any] | None = None,
) -> Gallery:
    """Encodes every video once: ``phi_m(m)`` of all its valid cells (eval mode).

    Args:
      model: an FVMR module (``encode_moments``, ``num_clips``, ``pooling_counts``);
        ``variables``: its ``params`` and ``batch_stats``.
      videos: ``videos.take(rows) -> {'video_features' [B, T, D_in], ...}`` numpy arrays (e.g.
        ``PreparedSplit.videos``) or a callable ``rows -> dict``.
      durations: ``[V]`` seconds of the videos (their number is ``V``).
      video_ids: ``V`` distinct ids (default ``'0'..'V-1'``).
      batch_size: videos per encoding step, rounded up to a multiple of the ``data`` size;
        the last batch repeats its last video, whose outputs are dropped.
    """
    _single_process()
    take = videos.take if hasattr(videos, "take") else videos
    if not callable(take):
        raise GalleryError("videos must have take(rows) or be a callable rows -> batch")
    durations = _check_durations(durations, None)
    num_videos = len(durations)
    if num_videos < 1:
        raise GalleryError("durations is empty: the gallery has no video")
    ids = _check_video_ids(video_ids, num_videos)
    program = _encode_program(model, mesh, "encode_moments")

    def encode(variables, batch):
        return {"moments": program(variables, batch)}

    def take_features(rows):
        batch = take(rows)
        if "video_features" not in batch:
            raise GalleryError(f"videos.take gave no 'video_features' (keys {sorted(batch)})")
        features = np.asarray(batch["video_features"], np.float32)
        if features.ndim != 3 or features.shape[0] != len(rows):
            raise GalleryError(
                f"video_features must be [{len(rows)}, T, D] for {len(rows)} rows, got "
                f"{features.shape}"
            )
        return {"video_features": features}

    def check(rows, batch, encoded):
        # Inputs and outputs both: XLA's max (ReLU, max-pool) may drop a NaN input.
        finite = np.isfinite(batch["video_features"]).all(axis=(1, 2))
        finite &= np.isfinite(encoded["moments"]).all(axis=(1, 2))
        if not finite.all():
            row = int(rows[np.flatnonzero(~finite)[0]])
            raise GalleryError(
                f"video {ids[row]!r} (row {row}): field 'video_features' or its moment "
                "features are not finite (NaN/inf)"
            )

    host = index_lib.encode_all(
        encode,
        variables,
        take_features,
        num_videos,
        mesh,
        batch_size,
        check=check,
        error=GalleryError,
    )
    moments = index_lib.place(host, num_videos, mesh, GalleryError)["moments"]
    return Gallery(
        moments=moments,
        durations=durations,
        video_ids=ids,
        num_clips=int(model.num_clips),
        pooling_counts=tuple(int(c) for c in model.pooling_counts),
        mesh=mesh,
        metadata=dict(metadata or {}),
    )


def encode_queries(
    model: Any, variables: Any, query_batch: Mapping[str, np.ndarray], mesh: Mesh
) -> np.ndarray:
    """``phi_s(s) [Q, D]`` of a query batch (``query_features`` or ``query_tokens``, and
    ``query_mask``), sharded on ``data`` (``Q`` padded to the ``data`` size); numpy."""
    keys = [k for k in ("query_features", "query_tokens", "query_mask") if k in query_batch]
    batch = {k: np.asarray(query_batch[k]) for k in keys}
    num = len(batch["query_mask"])
    padded = _round_up(num, _data_size(mesh))
    batch = {k: np.concatenate([v, v[np.zeros(padded - num, np.int64)]]) for k, v in batch.items()}
    program = _encode_program(model, mesh, "encode_queries")
    variables = jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))
    return np.asarray(program(variables, batch))[:num]


# --------------------------------------------------------------------------- search
class Moments(NamedTuple):
    """Ranked moments per query, best first: ``times [Q, K, 2]`` float32 seconds and ``scores
    [Q, K]`` float32 (NaN where fewer than ``K`` survive the NMS); gallery-wide search adds
    ``video_rows [Q, K]`` (-1 there)."""

    times: np.ndarray
    scores: np.ndarray
    video_rows: np.ndarray | None = None


def _fractions(num_clips: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``[i, j + 1] / N`` in float32, as ``segments.cell_seconds`` computes it: ``[C, 2]``."""
    index = np.stack([starts, ends + 1], axis=-1).astype(np.float32)
    return index / np.float32(num_clips)


def _exact_nms(exact_nms: bool | None) -> bool:
    if exact_nms is None:
        return jax.default_backend() in FLOAT64_PLATFORMS
    return bool(exact_nms)


def rank_cells(
    logits: jax.Array,
    durations: jax.Array,
    fractions: np.ndarray,
    top_k: int,
    nms_thresh: float,
    exact_nms: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Scores ``sigmoid(logits [B, C])`` of the cells with seconds ``fractions [C, 2] *
    durations [B]``, ranked (ties: later cell first), greedy NMS, ``top_k`` kept.

    Returns ``(times [B, K, 2], scores [B, K], kept [B, K])``; unkept slots hold zeros.  Under
    ``exact_nms`` the NMS runs in float64 (call inside ``jax.enable_x64(True)``).
    """
    probs = jax.nn.sigmoid(logits)
    order = jnp.argsort(probs, axis=-1, stable=True)[:, ::-1]
    times = jnp.asarray(fractions)[order] * durations[:, None, None]  # [B, C, 2] float32
    nms_dtype = jnp.float64 if exact_nms else jnp.float32
    index, kept = segments.batched_nms(times.astype(nms_dtype), nms_thresh, top_k)
    kept_times = jnp.take_along_axis(times, index[..., None], axis=1)
    kept_scores = jnp.take_along_axis(jnp.take_along_axis(probs, order, axis=1), index, axis=1)
    return jnp.where(kept[..., None], kept_times, 0.0), jnp.where(kept, kept_scores, 0.0), kept


@dataclasses.dataclass(frozen=True)
class _SearchPlan:
    num_clips: int
    pooling_counts: tuple[int, ...]
    per_device: int  # query slots per device, a multiple of chunk
    chunk: int
    top_k: int
    nms_thresh: float
    exact_nms: bool


@functools.lru_cache(maxsize=32)
def _search_program(mesh: Mesh, plan: _SearchPlan) -> Callable:
    starts, ends = moment_map.valid_cells(plan.num_clips, plan.pooling_counts)
    fractions = _fractions(plan.num_clips, starts, ends)
    steps = plan.per_device // plan.chunk

    def on_device(moments, query, rows, durations):
        def one_chunk(t):
            part = lambda x: lax.dynamic_slice_in_dim(x, t * plan.chunk, plan.chunk)
            gathered = jnp.take(moments, part(rows), axis=0)  # [chunk, C, D]
            logits = jnp.einsum("qcd,qd->qc", gathered, part(query))  # eq. 6
            return rank_cells(
                logits, part(durations), fractions, plan.top_k, plan.nms_thresh, plan.exact_nms
            )

        out = lax.map(one_chunk, jnp.arange(steps))  # leaves [steps, chunk, ...]
        return jax.tree.map(lambda x: x.reshape(plan.per_device, *x.shape[2:]), out)

    spec = PartitionSpec(DATA_AXIS)
    sharded = jax.shard_map(
        on_device, mesh=mesh, in_specs=(spec,) * 4, out_specs=spec, check_vma=False
    )
    return jax.jit(sharded)


def _check_queries(gallery: Gallery, query_emb: Any) -> np.ndarray:
    query_emb = np.asarray(query_emb, np.float32)
    if query_emb.ndim != 2 or query_emb.shape[1] != gallery.embed_dim or not len(query_emb):
        raise GalleryError(
            f"query_emb must be [Q >= 1, {gallery.embed_dim}] (the gallery's embedding width), "
            f"got {query_emb.shape}"
        )
    bad = ~np.isfinite(query_emb).all(axis=1)
    if bad.any():
        raise GalleryError(f"query_emb row {int(np.flatnonzero(bad)[0])} is not finite")
    return query_emb


def _as_nan(times: np.ndarray, scores: np.ndarray, kept: np.ndarray) -> Moments:
    times = np.where(kept[..., None], times, np.nan).astype(np.float32)
    return Moments(times, np.where(kept, scores, np.nan).astype(np.float32))


def search(
    gallery: Gallery,
    query_emb: Any,
    video_index: Any,
    top_k: int = 5,
    nms_thresh: float = 0.5,
    *,
    durations: Any | None = None,
    query_chunk: int = 32,
    exact_nms: bool | None = None,
) -> Moments:
    """Each query against its own video: ranked moments after NMS (module docstring).

    Args:
      query_emb: ``[Q, D]`` ``phi_s(s)`` (:func:`encode_queries`).
      video_index: ``[Q]`` gallery rows (:meth:`Gallery.rows` maps video ids to rows).
      top_k: moments kept per query; nms_thresh: drop IoU ``> nms_thresh`` with a kept one.
      durations: ``[Q]`` seconds of each query's video (default: the gallery's).
      query_chunk: queries scored at once per device (memory ``chunk * C * D`` floats).
      exact_nms: float64 NMS (default: where the backend has float64).
    Returns: :class:`Moments` (``times [Q, top_k, 2]``, ``scores [Q, top_k]``).
    """
    _single_process()
    query_emb = _check_queries(gallery, query_emb)
    rows = np.asarray(video_index)
    if rows.shape != (len(query_emb),) or not np.issubdtype(rows.dtype, np.integer):
        raise GalleryError(
            f"video_index must be [Q]=({len(query_emb)},) integer gallery rows, got "
            f"{rows.shape} {rows.dtype}"
        )
    if ((rows < 0) | (rows >= gallery.num_videos)).any():
        q = int(np.flatnonzero((rows < 0) | (rows >= gallery.num_videos))[0])
        raise GalleryError(
            f"video_index[{q}] = {rows[q]} is not a gallery row (0..{gallery.num_videos - 1})"
        )
    if int(top_k) < 1:
        raise GalleryError(f"top_k must be >= 1, got {top_k}")
    if durations is None:
        durations = gallery.durations[rows]
    durations = _check_durations(durations, len(rows))
    devices = _data_size(gallery.mesh)
    per_shard = gallery.moments.shape[0] // devices
    shard = rows // per_shard
    counts = np.bincount(shard, minlength=devices)
    # Slots per device: a power of two (few compiled shapes), a multiple of the chunk.
    per_device = 1 << int(np.ceil(np.log2(max(1, counts.max()))))
    chunk = min(per_device, 1 << int(np.floor(np.log2(max(1, int(query_chunk))))))
    order = np.argsort(shard, kind="stable")
    rank = np.arange(len(rows)) - np.searchsorted(shard[order], shard[order])
    slots = np.empty(len(rows), np.int64)
    slots[order] = shard[order] * per_device + rank
    total = devices * per_device
    slot_query = np.zeros((total, gallery.embed_dim), np.float32)
    slot_rows = np.zeros(total, np.int32)
    slot_durations = np.ones(total, np.float32)
    slot_query[slots] = query_emb
    slot_rows[slots] = rows - shard * per_shard
    slot_durations[slots] = durations
    exact = _exact_nms(exact_nms)
    plan = _SearchPlan(
        gallery.num_clips,
        gallery.pooling_counts,
        per_device,
        chunk,
        int(top_k),
        svmr.as_threshold(nms_thresh),
        exact,
    )
    placed = NamedSharding(gallery.mesh, PartitionSpec(DATA_AXIS))
    args = [jax.device_put(x, placed) for x in (slot_query, slot_rows, slot_durations)]
    with jax.enable_x64(exact):
        times, scores, kept = _search_program(gallery.mesh, plan)(gallery.moments, *args)
    times, scores, kept = (np.asarray(x)[slots] for x in (times, scores, kept))
    return _as_nan(times, scores, kept)


# --------------------------------------------------------------------------- gallery-wide
@dataclasses.dataclass(frozen=True)
class _AllPlan:
    num_videos: int
    candidates: int  # M
    block: int


@functools.lru_cache(maxsize=32)
def _search_all_program(mesh: Mesh, plan: _AllPlan) -> Callable:
    def on_device(moments, query):
        local, cells = moments.shape[0], moments.shape[1]
        first = lax.axis_index(DATA_AXIS) * local
        num_q = query.shape[0]

        def merge(best, best_index, start, rows):
            """Folds the videos ``rows [b, C, D]`` (first local row ``start``) into the
            running top ``M``."""
            # One [Q, D] x [D, b * C] matmul (XLA:CPU runs the einsum form 3x slower).
            flat = query @ rows.reshape(-1, rows.shape[-1]).T
            probs = jax.nn.sigmoid(flat.reshape(num_q, *rows.shape[:2]))
            video = first + start + jnp.arange(rows.shape[0])
            probs = jnp.where((video < plan.num_videos)[None, :, None], probs, -jnp.inf)
            top, index = lax.top_k(probs.reshape(num_q, -1), min(plan.candidates, probs[0].size))
            both = jnp.concatenate([best, top], axis=1)
            merged = jnp.concatenate([best_index, index + (first + start) * cells], axis=1)
            pick = lax.top_k(both, plan.candidates)[1]
            return jnp.take_along_axis(both, pick, 1), jnp.take_along_axis(merged, pick, 1)

        def block(carry, t):
            rows = lax.dynamic_slice_in_dim(moments, t * plan.block, plan.block)
            return merge(*carry, t * plan.block, rows), None

        full = local // plan.block
        best = jnp.full((num_q, plan.candidates), -jnp.inf, jnp.float32)
        best_index = jnp.zeros((num_q, plan.candidates), jnp.int32)
        (best, best_index), _ = lax.scan(block, (best, best_index), jnp.arange(full))
        if local % plan.block:
            tail = full * plan.block
            best, best_index = merge(best, best_index, tail, moments[tail:])
        everyone = lax.all_gather(best, DATA_AXIS, axis=1, tiled=True)
        everyone_index = lax.all_gather(best_index, DATA_AXIS, axis=1, tiled=True)
        top, pick = lax.top_k(everyone, plan.candidates)
        return top, jnp.take_along_axis(everyone_index, pick, 1)

    rep = PartitionSpec()
    sharded = jax.shard_map(
        on_device,
        mesh=mesh,
        in_specs=(PartitionSpec(DATA_AXIS), rep),
        out_specs=(rep, rep),
        check_vma=False,
    )
    return jax.jit(sharded)


def search_all(
    gallery: Gallery,
    query_emb: Any,
    top_k: int = 10,
    nms_thresh: float | None = None,
    *,
    max_before_nms: int = 200,
    block_size: int = 16,
) -> Moments:
    """Each query against every video of the gallery: the best moments overall.

    The top ``M`` (video, cell) pairs by score (``M = top_k`` without NMS, else
    ``max(max_before_nms, top_k)``; equal scores: lower video, then lower cell first), then,
    with ``nms_thresh``, greedy NMS among the moments of the same video, first ``top_k`` kept.
    ``block_size``: videos scored at once per device (memory ``Q * block * C`` floats).
    Returns: :class:`Moments` with ``video_rows`` (gallery rows; -1 / NaN in empty slots).
    """
    _single_process()
    query_emb = _check_queries(gallery, query_emb)
    if int(top_k) < 1:
        raise GalleryError(f"top_k must be >= 1, got {top_k}")
    total_cells = gallery.num_videos * gallery.num_cells
    if total_cells >= 2**31:
        raise GalleryError(f"{total_cells} (video, cell) pairs: too many for int32 indices")
    m = int(top_k) if nms_thresh is None else max(int(max_before_nms), int(top_k))
    m = min(m, total_cells)
    local = gallery.moments.shape[0] // _data_size(gallery.mesh)
    block = max(1, min(int(block_size), local))
    program = _search_all_program(gallery.mesh, _AllPlan(gallery.num_videos, m, block))
    rep = NamedSharding(gallery.mesh, PartitionSpec())
    scores, index = (
        np.asarray(x) for x in program(gallery.moments, jax.device_put(query_emb, rep))
    )
    video, cell = np.divmod(index.astype(np.int64), gallery.num_cells)
    starts, ends = gallery.cells()
    fractions = _fractions(gallery.num_clips, starts, ends)
    times = fractions[cell] * gallery.durations[video][..., None]  # float32 [Q, M, 2]
    keep = np.isfinite(scores)
    if nms_thresh is not None:
        keep = segments.grouped_nms_keep(times.astype(np.float64), video, keep, nms_thresh)
    k = int(top_k)
    out_rows = np.full((len(query_emb), k), -1, np.int64)
    out_times = np.full((len(query_emb), k, 2), np.nan, np.float32)
    out_scores = np.full((len(query_emb), k), np.nan, np.float32)
    for q in range(len(query_emb)):
        picked = np.flatnonzero(keep[q])[:k]
        out_rows[q, : len(picked)] = video[q, picked]
        out_times[q, : len(picked)] = times[q, picked]
        out_scores[q, : len(picked)] = scores[q, picked]
    return Moments(out_times, out_scores, out_rows)
