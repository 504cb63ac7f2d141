"""Mining hard negative videos with a trained retriever (PREM Sec. 3.5 and 4.2).

PREM trains in stages: the video retriever first, then the moment localizer with Shared-Norm
over the query's own video and negative videos "sampled from the top-100 ranked videos" of
the trained retriever (CONQUER does the same with HERO's top-100).  This module ranks, for
every query of a prepared split, the split's own videos by the corpus family's stage-1 score
and keeps the ``top`` best rows (:class:`data_pipelines.hard_negatives.HardNegatives`, which
stores them; the input pipeline draws the negatives from them).

Works for any corpus family (``Family.corpus(model, model_config)`` stages: XML, Cascaded MPN,
PREM): the index is :func:`vmr_jax.retrieval.corpus.build_index` (every video encoded once,
sharded on the mesh's ``data`` axis, zero padding rows past ``V``), and one jitted program per
query batch (the last batch padded, so it compiles once) encodes the queries, scores each
device's videos in blocks of ``block_size`` (:func:`vmr_jax.retrieval.corpus._block_scores`),
ranks them by the family's ``video_rank_scores`` (XML: ``exp(alpha * s)``; an elementwise,
order-keeping map, as the corpus engine's VR already assumes), forces padding rows to
``-inf``, keeps each device's local top and merges the ``D`` lists into the global top
(``lax.top_k``; equal scores: lower row first, as one ``top_k`` over all videos gives, since
the devices hold consecutive rows).  Memory: ``[Q, V]`` scores per query batch (``O(Q * V)``,
fine for the 10k-20k videos of a TVR or DiDeMo split) and ``O(Q * block_size * L)`` inside the
family's score.  The query's own video is not removed: it is in the lists where it ranks, and
the sampler drops it.

``top`` is capped at the number of videos (logged).  Mining runs in one process, like the
corpus index.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from data_pipelines.hard_negatives import HardNegatives
from vmr_jax.retrieval import corpus

logger = logging.getLogger(__name__)

QUERY_KEYS = ("query_features", "query_mask")  # what a corpus family's encode_queries reads


@functools.lru_cache(maxsize=16)
def _mine_program(stages: Any, mesh: Mesh, num_videos: int, top: int, block_size: int):
    """``(variables, video_enc, query_batch) -> (rows [Q, top] int32, scores [Q, top])``."""
    axis = corpus.DATA_AXIS

    def on_device(variables, video_enc, query_enc):
        num_local = jax.tree.leaves(video_enc)[0].shape[0]
        first_row = lax.axis_index(axis) * num_local
        score = lambda q, v: stages.score_videos(variables, q, v)  # noqa: E731
        scores = corpus._block_scores(score, query_enc, video_enc, block_size)  # [Q, S]
        ranked = stages.video_rank_scores(scores.astype(jnp.float32)).astype(jnp.float32)
        real = first_row + jnp.arange(num_local) < num_videos
        ranked = jnp.where(real, ranked, -jnp.inf)
        local_scores, local_rows = lax.top_k(ranked, min(top, num_local))
        # Devices hold consecutive rows, so the gathered order keeps lower rows first on ties.
        scores = lax.all_gather(local_scores, axis, axis=1, tiled=True)
        rows = lax.all_gather(local_rows + first_row, axis, axis=1, tiled=True)
        best, pick = lax.top_k(scores, top)
        return jnp.take_along_axis(rows, pick, axis=1).astype(jnp.int32), best

    sharded = jax.shard_map(
        on_device,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(axis), PartitionSpec()),
        out_specs=(PartitionSpec(), PartitionSpec()),
        check_vma=False,
    )

    def program(variables, video_enc, query_batch):
        query_enc = stages.encode_queries(variables, query_batch)
        return sharded(variables, video_enc, query_enc)

    return jax.jit(program)


def mine_hard_negatives(
    stages: Any,
    variables: Any,
    prepared: Any,
    mesh: Mesh,
    *,
    top: int = 100,
    batch_size: int = 256,
    video_batch_size: int = 64,
    block_size: int = 256,
    split: str = "train",
    checkpoint_step: int = 0,
) -> HardNegatives:
    """The ``top`` best videos of the split's own video table for every query (module
    docstring).

    Args:
      stages: the family's corpus stages (``encode_videos``, ``encode_queries``,
        ``score_videos``, ``video_rank_scores``), hashable (the program is cached on them).
      prepared: a :class:`data_pipelines.input_pipeline.PreparedSplit`.
      top: videos kept per query (PREM: 100), capped at the number of videos.
      batch_size: queries per program call; video_batch_size: videos per encoding step;
        block_size: videos scored at once per device.
      split, checkpoint_step: recorded in the result (what was mined, by which weights).
    Returns: :class:`HardNegatives` with ``video_rows [Q, top]`` best first and ``scores`` the
      family's VR rank scores.
    """
    num_videos, num_queries = int(prepared.num_videos), len(prepared)
    if top < 1 or batch_size < 1:
        raise ValueError(f"top and batch_size must be >= 1, got {top} and {batch_size}")
    if top > num_videos:
        logger.info("mining: top=%d capped at the %d videos of split %r", top, num_videos, split)
        top = num_videos
    index = corpus.build_index(
        stages,
        variables,
        prepared.videos,
        mesh,
        batch_size=video_batch_size,
        num_videos=num_videos,
        video_ids=prepared.video_ids,
    )
    variables = jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))
    program = _mine_program(stages, mesh, num_videos, top, int(block_size))
    batch_size = min(int(batch_size), num_queries)
    rows = np.empty((num_queries, top), np.int32)
    scores = np.empty((num_queries, top), np.float32)
    logger.info("mining: top %d of %d videos for %d queries", top, num_videos, num_queries)
    for start in range(0, num_queries, batch_size):
        real = np.arange(start, min(start + batch_size, num_queries))
        padded = np.concatenate([real, np.full(batch_size - len(real), -1)])  # one program
        batch = prepared.query_batch(padded)
        found_rows, found_scores = program(
            variables, index.encodings, {k: batch[k] for k in QUERY_KEYS if k in batch}
        )
        rows[real] = np.asarray(found_rows)[: len(real)]
        scores[real] = np.asarray(found_scores)[: len(real)]
    if np.isnan(scores).any():
        q = int(np.argmax(np.isnan(scores).any(1)))
        raise ValueError(
            f"mining: the retriever gave NaN scores (query {prepared.query_ids[q]!r}): "
            "a diverged checkpoint?"
        )
    return HardNegatives(
        video_rows=rows,
        scores=scores,
        split=split,
        video_ids=list(prepared.video_ids),
        query_ids=list(prepared.query_ids),
        checkpoint_step=int(checkpoint_step),
        top=top,
    )
