"""Corpus index and two-stage video corpus moment retrieval, sharded over the mesh.

Stage 1 ranks every video of the corpus for each query by the family's video score; stage 2
localises the query in its ``top_videos`` best videos, and the family's ``combine`` rule
ranks video and moment together (:mod:`vmr_jax.retrieval.ranking`).  The engine is generic
over a corpus family through its *stages* (``Family.corpus(model, model_config)``, e.g.
:class:`vmr_jax.models.xml_corpus.XMLStages`): pure functions of ``variables``,

* ``encode_videos(variables, video_batch) -> {name: [V, ...]}``: ``video_batch`` holds
  ``video_features [V, L, D]``, ``video_mask [V, L]`` and optionally ``subtitle_features``;
  the encodings always include ``mask [V, L]``.  Query-independent work lives here.
* ``encode_queries(variables, query_batch) -> {name: [Q, ...]}``: ``query_features [Q, Lq,
  Dq]``, ``query_mask [Q, Lq]``.
* ``score_videos(variables, query_enc, video_enc) -> [Q, V]`` stage-1 scores, and
  ``video_rank_scores(scores)``: what VR ranks by (XML: ``exp(alpha * s)``).
* ``localize(variables, query_enc, video_enc) -> ranking.MomentScores`` (leaves ``[Q, K,
  M]``), every ``video_enc`` leaf ``[Q, K, ...]``; ``combine(video_scores [Q, K], moments) ->
  [Q, K, M]`` the VCMR score.
* ``retrieve_videos`` (the VR list length, e.g. 100) and ``top_videos`` (``K``, the videos
  localised; may be smaller, e.g. 10 for a re-ranker), ``clip_length``, ``max_before_nms``.

Index (:func:`build_index`, the shared :class:`vmr_jax.retrieval.index.EmbeddingIndex`):
every video encoded once, in batches sharded on the mesh's ``data`` axis, kept as global
arrays sharded on ``data`` along the video axis.  ``V`` is padded to a multiple of the
``data`` size with all-zero encodings; their scores are forced to -inf, so they are never
retrieved (``top_videos <= V`` is checked).  :meth:`CorpusIndex.save` / :meth:`CorpusIndex.load`
store it with orbax (plus ``index.json``), so a corpus is encoded once; a saved index loads on
any mesh, each device reading its own rows.  Building holds the encodings once in host memory;
build and load assume one process (``jax.process_count() == 1``).

Per-video frame length (stages whose ``clip_length`` is 0,
:data:`ranking.PER_VIDEO_CLIP_LENGTH`: frames that evenly cover each video, e.g. ActivityNet's
resampled C3D clips): :func:`build_index` is given each video's ``durations`` and keeps them
with the number of valid frames of each video's ``mask`` in the index metadata (saved in
``index.json``; :attr:`CorpusIndex.frames`), and the host turns a moment's frames into that
video's seconds (:func:`ranking.candidate_predictions`), before the cut and NMS.  The search
program itself is unchanged.

Search (:func:`search`), one jitted program (a ``jax.shard_map`` over the mesh) per query batch
of ``Q`` queries, corpus ``V`` videos on ``D`` data devices (``S = V / D`` each), ``K =
top_videos``, ``L`` clips:

1. Queries are encoded once and replicated; each device scores its ``S`` videos in blocks of
   ``block_size`` (``lax.map``; memory ``O(Q * block_size * L)`` inside the family's score,
   ``[Q, S]`` scores), keeps a local top ``R = max(retrieve_videos, K)``, and the ``D * R``
   candidates are all-gathered and merged into the global top ``R`` (equal scores: lower
   corpus row first, as ``lax.top_k`` on the whole corpus would give).  VR ranks the first
   ``retrieve_videos`` of them, stage 2 localises the first ``K``.
2. Localisation is split over devices by query: in steps of ``query_chunk`` queries per device,
   each device picks the rows it holds of the ``K`` (+1 own video for SVMR) videos of the step's
   ``D * query_chunk`` queries, zeros elsewhere, and a ``psum_scatter`` hands every device the
   encodings of its own queries (memory ``O(D * query_chunk * K * L * enc)``; no ``[Q, V, L]``
   or ``[Q, K, L, L]`` tensor).  Each device then localises and ranks its queries
   (:func:`ranking.rank_videos`, :func:`ranking.rank_corpus_moments`,
   :func:`ranking.rank_video_moments`).
3. On the host: seconds, the ``max_after`` cut and NMS (:func:`ranking.postprocess`).

Results do not depend on the mesh (tests compare 1 and 8 devices) up to float32 rounding of
the scores.  ``video_idx`` in the lists is the corpus row, or ``video_values[row]`` when given
(e.g. the split's ``video2idx`` values).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vmr_jax.evaluation import tvr_files, vcmr
from vmr_jax.evaluation.tvr_files import RankedPredictions, TvrGroundTruth
from vmr_jax.retrieval import index as index_lib
from vmr_jax.retrieval import ranking

DATA_AXIS = index_lib.DATA_AXIS


class CorpusError(index_lib.IndexError_):
    """A corpus, index or query batch the engine cannot use (names the field)."""


DURATIONS_KEY, NUM_FRAMES_KEY = "durations", "num_frames"  # metadata of a per-video grid


class CorpusIndex(index_lib.EmbeddingIndex):
    """The shared sharded embedding index (:mod:`vmr_jax.retrieval.index`) of a corpus:
    ``encodings`` of the family's ``encode_videos`` (``mask [V_pad, L]`` among them); with
    ``durations`` given to :func:`build_index`, each video's frame grid in ``metadata``."""

    @property
    def frames(self) -> ranking.VideoFrames | None:
        """Each video's duration (s) and valid frames, ``[V]`` each, or None when the index
        was built without durations."""
        if DURATIONS_KEY not in self.metadata:
            return None
        return ranking.VideoFrames(
            np.asarray(self.metadata[DURATIONS_KEY], np.float64),
            np.asarray(self.metadata[NUM_FRAMES_KEY], np.int64),
        )

    @classmethod
    def load(cls, directory, mesh: Mesh, error: type[ValueError] = CorpusError) -> CorpusIndex:
        return super().load(directory, mesh, error)


def _data_size(mesh: Mesh) -> int:
    return index_lib.data_size(mesh, CorpusError)


def _round_up(n: int, multiple: int) -> int:
    return index_lib.round_up(n, multiple)


@functools.lru_cache(maxsize=16)
def _encode_program(adapter: Any) -> Callable:
    return jax.jit(adapter.encode_videos)


def build_index(
    adapter: Any,
    variables: Any,
    videos: Any,
    mesh: Mesh,
    batch_size: int = 64,
    *,
    num_videos: int | None = None,
    video_ids: Sequence | None = None,
    durations: np.ndarray | None = None,
) -> CorpusIndex:
    """Encodes every video once (:func:`vmr_jax.retrieval.index.encode_all`).

    Args:
      videos: ``videos.take(rows) -> {video_features, video_mask[, subtitle_features]}`` numpy
        arrays (``data_pipelines.video_tables`` tables), or a callable ``rows -> dict``.
      batch_size: videos per encoding step, rounded up to a multiple of the ``data`` size; the
        last batch is padded by repeating its last row, whose outputs are dropped.
      num_videos: defaults to ``len(videos)``.
      video_ids: optional ids of the rows, kept (and saved) with the index.
      durations: ``[V]`` seconds of each video, kept (and saved) with the number of valid
        frames of its ``mask``: what stages with a per-video frame length (``clip_length``
        0) need to turn frames into seconds.
    """
    take = videos.take if hasattr(videos, "take") else videos
    if not callable(take):
        raise CorpusError("videos must have take(rows) or be a callable rows -> batch")
    if num_videos is None:
        if not hasattr(videos, "__len__"):
            raise CorpusError("num_videos is needed for videos without a length")
        num_videos = len(videos)
    num_videos = int(num_videos)
    if num_videos < 1:
        raise CorpusError("the corpus has no video")
    index_lib.single_process("corpus indexes", CorpusError)
    ids = index_lib.check_ids(video_ids, num_videos, CorpusError)

    def check(rows, batch, encoded):
        if "mask" not in encoded:
            raise CorpusError(f"encode_videos must return 'mask'; got {sorted(encoded)}")

    if durations is not None:
        durations = np.asarray(durations, np.float64)
        if durations.shape != (num_videos,) or not (np.isfinite(durations) & (durations > 0)).all():
            raise CorpusError(f"durations must be {num_videos} positive seconds, one per video")
    host = index_lib.encode_all(
        _encode_program(adapter),
        variables,
        take,
        num_videos,
        mesh,
        batch_size,
        check=check,
        error=CorpusError,
    )
    metadata = {}
    if durations is not None:
        frames = np.sum(np.asarray(host["mask"]) > 0, axis=tuple(range(1, host["mask"].ndim)))
        metadata = {DURATIONS_KEY: durations.tolist(), NUM_FRAMES_KEY: frames.tolist()}
    encodings = index_lib.place(host, num_videos, mesh, CorpusError)
    return CorpusIndex(encodings, num_videos, mesh, ids, metadata)


# --------------------------------------------------------------------------- search


def _block_scores(score, query_enc, video_enc, block_size: int) -> jax.Array:
    """``score(query_enc, video block) -> [Q, B]`` over the ``S`` local videos in blocks of
    ``block_size`` (the rest in one smaller block).  Returns ``[Q, S]``."""
    num = jax.tree.leaves(video_enc)[0].shape[0]
    block = min(block_size, num)
    full, rest = divmod(num, block)

    def one(i):
        part = jax.tree.map(lambda x: lax.dynamic_slice_in_dim(x, i * block, block), video_enc)
        return score(query_enc, part)

    blocks = lax.map(one, jnp.arange(full))  # [full, Q, block]
    out = jnp.moveaxis(blocks, 0, 1).reshape(blocks.shape[1], full * block)
    if rest:
        tail = score(query_enc, jax.tree.map(lambda x: x[full * block :], video_enc))
        out = jnp.concatenate([out, tail], axis=1)
    return out


def _rows_for_my_queries(video_enc, rows: jax.Array, first_row: jax.Array) -> Any:
    """Encodings of global ``rows [D * C, M]`` from the local shard (zeros for rows held
    elsewhere), summed over devices and split by query: ``[C, M, ...]`` per device."""
    num_local = jax.tree.leaves(video_enc)[0].shape[0]
    local = rows - first_row
    here = (local >= 0) & (local < num_local)
    local = jnp.clip(local, 0, num_local - 1)

    def gather(x):
        picked = jnp.take(x, local, axis=0)
        picked = jnp.where(here.reshape(here.shape + (1,) * (x.ndim - 1)), picked, 0)
        summed = picked.astype(jnp.int32) if x.dtype == jnp.bool_ else picked
        summed = lax.psum_scatter(summed, DATA_AXIS, scatter_dimension=0, tiled=True)
        return summed.astype(x.dtype)

    return jax.tree.map(gather, video_enc)


@dataclasses.dataclass(frozen=True)
class _SearchPlan:
    """The static shape of one search program."""

    config: ranking.RankingConfig
    top_videos: int
    retrieve_videos: int
    num_videos: int
    num_queries: int  # padded: a multiple of data size * query_chunk
    query_chunk: int
    block_size: int
    svmr: bool


def _frames_of(index: CorpusIndex, config: ranking.RankingConfig) -> ranking.VideoFrames | None:
    """The index's frame grid when the stages take each video's own frame length."""
    if not ranking.per_video_frames(config.clip_length):
        return None
    if index.frames is None:
        raise CorpusError(
            "the stages' clip_length is 0 (each video's frames last duration / L seconds) but "
            "the index has no durations: build it with build_index(..., durations=[V] seconds)"
        )
    return index.frames


@functools.lru_cache(maxsize=32)
def _search_program(adapter: Any, mesh: Mesh, plan: _SearchPlan) -> Callable:
    devices = _data_size(mesh)
    per_device = plan.num_queries // devices
    steps = per_device // plan.query_chunk
    num_k = plan.top_videos
    num_r = max(plan.retrieve_videos, num_k)

    def on_device(variables, video_enc, query_enc, own_video):
        shard = lax.axis_index(DATA_AXIS)
        num_local = jax.tree.leaves(video_enc)[0].shape[0]
        first_row = shard * num_local
        score = lambda q, v: adapter.score_videos(variables, q, v)
        scores = _block_scores(score, query_enc, video_enc, plan.block_size)  # [Q, S]
        real = first_row + jnp.arange(num_local) < plan.num_videos
        scores = jnp.where(real, scores.astype(jnp.float32), -jnp.inf)
        local_scores, local_rows = lax.top_k(scores, min(num_r, num_local))
        gathered = lax.all_gather(local_scores, DATA_AXIS, axis=1, tiled=True)
        gathered_rows = lax.all_gather(local_rows + first_row, DATA_AXIS, axis=1, tiled=True)
        retrieved_scores, pick = lax.top_k(gathered, num_r)  # [Q, R]
        retrieved_rows = jnp.take_along_axis(gathered_rows, pick, axis=1)
        video_scores, video_rows = retrieved_scores[:, :num_k], retrieved_rows[:, :num_k]
        wanted = video_rows
        if plan.svmr:
            wanted = jnp.concatenate([video_rows, own_video[:, None]], axis=1)

        def step(t):
            # Step t serves queries d * per_device + t * chunk + r on device d.
            ids = (
                jnp.arange(devices)[:, None] * per_device
                + t * plan.query_chunk
                + jnp.arange(plan.query_chunk)
            ).reshape(-1)
            mine = ids.reshape(devices, plan.query_chunk)[shard]
            enc = _rows_for_my_queries(video_enc, wanted[ids], first_row)
            query_mine = jax.tree.map(lambda x: x[mine], query_enc)
            moments = adapter.localize(variables, query_mine, enc)
            found = moments.take_videos(lambda x: x[:, :num_k])
            out = ranking.rank_corpus_moments(video_scores[mine], found, adapter, plan.config)
            vr = ranking.rank_videos(retrieved_scores[mine][:, : plan.retrieve_videos], adapter)
            out["VR"] = vr
            rows = {"VR": retrieved_rows[mine], "VCMR": video_rows[mine]}
            out = {
                k: c._replace(slot=jnp.take_along_axis(rows[k], c.slot, 1)) for k, c in out.items()
            }
            if plan.svmr:
                own = moments.take_videos(lambda x: x[:, num_k])
                out["SVMR"] = ranking.rank_video_moments(own, plan.config)
            return out

        stacked = lax.map(step, jnp.arange(steps))  # leaves [steps, chunk, N]
        return jax.tree.map(lambda x: x.reshape(per_device, *x.shape[2:]), stacked)

    sharded = jax.shard_map(
        on_device,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(DATA_AXIS), PartitionSpec(), PartitionSpec()),
        out_specs=PartitionSpec(DATA_AXIS),
        check_vma=False,
    )

    def program(variables, video_enc, query_batch, own_video):
        query_enc = adapter.encode_queries(variables, query_batch)
        return sharded(variables, video_enc, query_enc, own_video)

    return jax.jit(program)


@dataclasses.dataclass(frozen=True)
class _PreparedSearch:
    """One search call, checked and padded: the jitted program and its arguments."""

    program: Callable
    args: tuple
    config: ranking.RankingConfig
    num_queries: int  # before padding
    own: np.ndarray  # [padded] int32 own-video rows


def _prepare_search(
    adapter: Any,
    variables: Any,
    index: CorpusIndex,
    query_batch: Mapping[str, np.ndarray],
    *,
    top_videos: int | None = None,
    retrieve_videos: int | None = None,
    max_after: int = 100,
    nms_threshold: float | None = None,
    gt_video: np.ndarray | None = None,
    video_values: np.ndarray | None = None,
    block_size: int = 256,
    query_chunk: int = 4,
) -> _PreparedSearch:
    config = ranking.RankingConfig(
        clip_length=float(adapter.clip_length),
        max_before_nms=int(adapter.max_before_nms),
        max_after=int(max_after),
        nms_threshold=None if nms_threshold is None else float(nms_threshold),
    )
    # The stages' list lengths are capped at the corpus; explicit ones must fit in it.
    if top_videos is None:
        top_videos = min(int(adapter.top_videos), index.num_videos)
    if retrieve_videos is None:
        retrieve_videos = min(int(adapter.retrieve_videos), index.num_videos)
    if not 1 <= retrieve_videos <= index.num_videos:
        raise CorpusError(
            f"retrieve_videos must be in 1..{index.num_videos}, got {retrieve_videos}"
        )
    if not 1 <= top_videos <= index.num_videos:
        raise CorpusError(f"top_videos must be in 1..{index.num_videos}, got {top_videos}")
    batch = {k: np.asarray(v) for k, v in query_batch.items()}
    sizes = {k: v.shape[0] if v.ndim else None for k, v in batch.items()}
    num_q = next(iter(sizes.values()), None)
    if not num_q or any(s != num_q for s in sizes.values()):
        raise CorpusError(f"query_batch fields need one common leading size >= 1: {sizes}")
    own = np.zeros(num_q, np.int64) if gt_video is None else np.asarray(gt_video, np.int64)
    if own.shape != (num_q,) or ((own < 0) | (own >= index.num_videos)).any():
        raise CorpusError(f"gt_video must be {num_q} corpus rows in 0..{index.num_videos - 1}")
    if video_values is not None and np.shape(video_values) != (index.num_videos,):
        raise CorpusError(f"video_values must have one value per video ({index.num_videos})")
    chunk = max(1, min(int(query_chunk), -(-num_q // _data_size(index.mesh))))
    padded = _round_up(num_q, _data_size(index.mesh) * chunk)
    extra = np.zeros(padded - num_q, np.int64)  # padding queries: copies of query 0
    batch = {k: np.concatenate([v, v[extra]]) for k, v in batch.items()}
    own = np.concatenate([own, own[extra]]).astype(np.int32)
    plan = _SearchPlan(
        config,
        int(top_videos),
        int(retrieve_videos),
        index.num_videos,
        padded,
        chunk,
        int(block_size),
        gt_video is not None,
    )
    variables = jax.device_put(variables, NamedSharding(index.mesh, PartitionSpec()))
    program = _search_program(adapter, index.mesh, plan)
    return _PreparedSearch(program, (variables, index.encodings, batch, own), config, num_q, own)


def search(
    adapter: Any,
    variables: Any,
    index: CorpusIndex,
    query_batch: Mapping[str, np.ndarray],
    *,
    top_videos: int | None = None,
    retrieve_videos: int | None = None,
    max_after: int = 100,
    nms_threshold: float | None = None,
    gt_video: np.ndarray | None = None,
    video_values: np.ndarray | None = None,
    block_size: int = 256,
    query_chunk: int = 4,
) -> dict[str, RankedPredictions]:
    """Ranked lists of a batch of queries against the whole corpus (module docstring).

    Args:
      adapter: the family's corpus stages (``Family.corpus(model, model_config)``).
      query_batch: ``{query_features [Q, Lq, Dq], query_mask [Q, Lq], ...}`` numpy arrays.
      top_videos: ``K`` videos localised per query (default the stages', e.g. XML
        ``max_vcmr_video``), capped at the corpus size.
      retrieve_videos: VR list length (default the stages'), capped at the corpus size.
      max_after, nms_threshold: list length after the cut and after NMS (XML
        ``max_after_nms``, ``nms_thd``; None = no NMS).
      gt_video: ``[Q]`` corpus row of each query's own video; adds SVMR (localised even when
        it is not among the top ``K``).
      video_values: ``[V]`` value written as ``video_idx`` for each row (default: the row).
      block_size: videos scored at once per device; query_chunk: queries localised at once
        per device.
    Returns: ``{"VCMR", "VR"[, "SVMR"]: RankedPredictions}`` with ``Q`` lists each (VCMR and
      SVMR at most ``max_after`` rows, VR ``min(retrieve_videos, max_after)``).
    """
    prepared = _prepare_search(
        adapter,
        variables,
        index,
        query_batch,
        top_videos=top_videos,
        retrieve_videos=retrieve_videos,
        max_after=max_after,
        nms_threshold=nms_threshold,
        gt_video=gt_video,
        video_values=video_values,
        block_size=block_size,
        query_chunk=query_chunk,
    )
    num_q, own = prepared.num_queries, prepared.own
    frames = _frames_of(index, prepared.config)
    found = prepared.program(*prepared.args)
    found = {
        task: ranking.RankedCandidates(*(np.asarray(x)[:num_q] for x in cand))
        for task, cand in found.items()
    }
    values = None if video_values is None else np.asarray(video_values, np.int64)
    lists = {}
    for task in (t for t in vcmr.TASKS if t in found):
        table, grid = values, frames
        if task == "SVMR":  # slot 0 = the query's own video
            own_rows = own[:num_q, None].astype(np.int64)
            table = own_rows if values is None else values[own_rows]
            if frames is not None:
                grid = ranking.VideoFrames(*(x[own_rows] for x in frames))
        lists[task] = ranking.candidate_predictions(
            task, found[task], prepared.config.clip_length, table, grid
        )
    return ranking.postprocess(lists, prepared.config)


def search_memory(adapter: Any, variables: Any, index: CorpusIndex, query_batch, **options):
    """XLA's ``memory_analysis`` of the program :func:`search` runs for these arguments (same
    keywords): its temporaries are what a search needs beyond the index, the weights and the
    queries.  Compiles; runs nothing."""
    prepared = _prepare_search(adapter, variables, index, query_batch, **options)
    return prepared.program.lower(*prepared.args).compile().memory_analysis()


# --------------------------------------------------------------------------- files, metrics


def write_tvr_submission(
    path: str | Path,
    predictions: Mapping[str, RankedPredictions],
    ground_truth: TvrGroundTruth,
    video2idx: Mapping[str, int] | None = None,
) -> dict:
    """Writes the official TVR submission JSON of lists in GT order (``video_idx`` must hold
    ``video2idx`` values: search with ``video_values``); returns the submission dict."""
    submission = tvr_files.submission_from_predictions(predictions, ground_truth, video2idx)
    tvr_files.write_submission(path, submission)
    return submission


def score_predictions(
    predictions: Mapping[str, RankedPredictions], ground_truth: TvrGroundTruth, **options
) -> dict:
    """TVR-protocol metrics of the lists (:func:`vmr_jax.evaluation.vcmr.evaluate_predictions`;
    ``options`` are its keyword arguments)."""
    return vcmr.evaluate_predictions(predictions, ground_truth, **options)
