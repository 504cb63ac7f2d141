"""``vmr-jax bench --search``: queries per second and memory of a corpus family's search.

Random corpora of ``V`` videos (encodings of the family's shapes, placed on the mesh as
``build_index`` places them) are searched by a batch of ``Q`` random queries with the config's
inference settings (:func:`vmr_jax.retrieval.corpus.search`).  Beside the speed, XLA's
``memory_analysis`` of two compiled programs:

* the whole search (``search_temp_mib``, per corpus size): its temporaries are what a search
  needs beyond the index, the weights and the queries;
* stage 2 alone (``localize``): the family's ``localize`` over ``[Q, K]`` query-video pairs,
  once for the whole query batch and once for one step of the search (``query_chunk``
  queries per device), with the sizes of the ``[L, L, d]`` and ``[Q, K, L, L, d]`` float32
  tensors a literal score map (eqs. 10-12 of Cascaded MPN) would build, for comparison.

Cascaded MPN at the TVR shapes, XML at the same inputs (its own hidden size)::

    vmr-jax bench --config configs/cascaded_mpn/synthetic.py --variant tvr --search 1000,10000
    vmr-jax bench --config configs/xml/synthetic.py --variant tvr \\
        --config.model.vid_feat_size=4352 --search 1000,10000
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vmr_jax import sharding
from vmr_jax.bench import (
    compiled_flops,
    compiled_memory,
    default_query_len,
    peak_rss_mib,
    random_batch,
    seconds_per_call,
)
from vmr_jax.models import get_family
from vmr_jax.retrieval import corpus

# Clip-aligned video inputs are cut to the bench's clips; subtitle words (Cascaded MPN) are not.
CLIP_KEYS = ("video_features", "video_mask", "subtitle_features", "subtitle_coverage")
WORD_KEYS = ("subtitle_word_features", "subtitle_word_mask", "subtitle_word_sentence")


def random_index(stages, variables, num_videos: int, video_batch, mesh, seed=0):
    """A corpus index of ``num_videos`` random encodings of the family's shapes (what
    ``build_index`` would store for videos like ``video_batch``'s), made directly on the
    mesh."""
    one = {k: v[:1] for k, v in video_batch.items()}
    shapes = jax.eval_shape(stages.encode_videos, variables, one)
    devices = int(mesh.shape["data"])
    padded = -(-num_videos // devices) * devices
    placed = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    def make(key, shape, dtype):
        x = jax.random.normal(key, shape, dtype)
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

    # One leaf at a time: the generation temporaries never cover the whole index.
    encodings = {}
    for i, (name, leaf) in enumerate(sorted(shapes.items())):
        shape = (padded, *leaf.shape[1:])
        if name == "mask":
            encodings[name] = jax.device_put(np.ones(shape, leaf.dtype), placed)
            continue
        fn = jax.jit(make, static_argnums=(1, 2), out_shardings=placed)
        encodings[name] = fn(jax.random.PRNGKey(seed + i), shape, leaf.dtype)
        jax.block_until_ready(encodings[name])
    return corpus.CorpusIndex(encodings, num_videos, mesh)


def localize_cost(
    stages, variables, queries, video_shapes, num_queries: int, hidden: int
) -> dict[str, Any]:
    """XLA's cost of stage 2 alone: ``stages.localize`` of ``num_queries`` queries (the first
    rows of ``queries``) in ``K = stages.top_videos`` videos each, compiled on abstract
    shapes (``video_shapes``: one video's encodings, leaves ``[1, ...]``).

    Returns the compiled temp / argument / output MiB, flops, and for comparison the MiB of
    one ``[L, L, hidden]`` and of a ``[Q, K, L, L, hidden]`` float32 tensor.
    """
    num_k = int(stages.top_videos)
    query_batch = {k: v[:num_queries] for k, v in queries.items()}
    query_enc = jax.eval_shape(stages.encode_queries, variables, query_batch)
    video_enc = {
        k: jax.ShapeDtypeStruct((num_queries, num_k, *v.shape[1:]), v.dtype)
        for k, v in video_shapes.items()
    }
    clips = int(video_shapes["mask"].shape[-1])
    start = time.perf_counter()
    compiled = jax.jit(stages.localize).lower(variables, query_enc, video_enc).compile()
    compile_s = time.perf_counter() - start
    l_l_d = clips * clips * hidden * 4 / 2**20
    return {
        "queries": num_queries,
        "videos_per_query": num_k,
        "compile_s": compile_s,
        "flops": compiled_flops(compiled),
        **compiled_memory(compiled),
        "l_l_d_f32_mib": l_l_d,
        "q_k_l_l_d_f32_mib": num_queries * num_k * l_l_d,
    }


def run_search_bench(
    config: ml_collections.ConfigDict,
    corpus_sizes: tuple[int, ...],
    *,
    num_queries: int | None = None,
    query_len: int | None = None,
    clips: int = 100,
    steps: int = 3,
    warmup: int = 1,
    block_size: int = 256,
    query_chunk: int = 4,
    build_videos: int | None = None,
) -> dict[str, Any]:
    """Queries per second of :func:`vmr_jax.retrieval.corpus.search` over random corpora.

    For each size ``V`` a corpus of ``V`` videos of ``clips`` clips is made of random encodings
    of the family's shapes; a batch of ``num_queries`` random queries (``evals.batch_size``)
    of ``query_len`` words (:func:`vmr_jax.bench.default_query_len`) is searched with the
    config's inference settings (the family's stages: videos localised, combine rule; NMS
    ``evals.nms_thresh``; ``block_size`` videos scored and ``query_chunk`` queries localised
    at once per device).  Reported per size: seconds per batch, queries/s, index MiB, the
    compiled search's temp MiB and the process's peak RSS; once: the index build
    (``encode_videos`` of random features in batches of 64, compiled on one batch first, timed
    over ``build_videos`` videos, by default the smallest corpus) and :func:`localize_cost`
    for the whole batch and for one search step.
    """
    mesh = sharding.make_mesh(config.mesh)
    family = get_family(config.model.name)
    model_config = config.model.copy_and_resolve_references()
    with model_config.ignore_type():
        model_config.max_ctx_l = max(int(model_config.max_ctx_l), clips)
    num_queries = int(num_queries or config.evals.get("batch_size", 50))
    query_len = int(query_len or default_query_len(config))
    model = family.create_model(model_config)
    stages = family.corpus(model, model_config)

    def videos_of(batch):
        out = {k: batch[k][:, :clips] for k in CLIP_KEYS if k in batch}
        out.update({k: batch[k] for k in WORD_KEYS if k in batch})
        return out

    sample = random_batch(family, model_config, 1, query_len)
    sample.update(videos_of(sample))
    variables = jax.jit(lambda key: model.init(key, sample, train=False))(jax.random.PRNGKey(0))
    queries = random_batch(family, model_config, num_queries, query_len, seed=3)
    queries = {k: queries[k] for k in ("query_features", "query_mask")}
    nms = float(config.evals.get("nms_thresh", -1.0))
    options = dict(
        nms_threshold=nms if nms > 0 else None, block_size=block_size, query_chunk=query_chunk
    )
    # Index build: encode_videos of random features (the same program for every batch).
    build_videos = int(build_videos or min(corpus_sizes))
    feats = videos_of(random_batch(family, model_config, min(build_videos, 64), query_len, seed=4))

    class _Videos:
        def take(self, rows):
            rows = np.asarray(rows) % len(feats["video_mask"])
            return {k: v[rows] for k, v in feats.items()}

    build = lambda count: corpus.build_index(  # noqa: E731
        stages, variables, _Videos(), mesh, batch_size=64, num_videos=count
    )
    build(1)  # compile
    start = time.perf_counter()
    build(build_videos)
    build_s = time.perf_counter() - start
    video_shapes = jax.eval_shape(
        stages.encode_videos, variables, {k: v[:1] for k, v in feats.items()}
    )
    hidden = int(model_config.get("hidden_size", 0))
    # One search step localises query_chunk queries per device (corpus._prepare_search).
    step_queries = max(1, min(query_chunk, -(-num_queries // int(mesh.shape["data"]))))
    localize = {
        name: localize_cost(stages, variables, queries, video_shapes, count, hidden)
        for name, count in (("batch", num_queries), ("search_step", step_queries))
    }
    sizes = []
    for num_videos in corpus_sizes:
        index = random_index(stages, variables, num_videos, feats, mesh)

        def run(index=index):
            return corpus.search(stages, variables, index, queries, **options)

        start = time.perf_counter()
        run()
        first_s = time.perf_counter() - start
        seconds_per_call(run, max(warmup - 1, 0))
        per_batch = seconds_per_call(run, steps)
        index_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(index.encodings))
        memory = corpus.search_memory(stages, variables, index, queries, **options)
        temp = None if memory is None else memory.temp_size_in_bytes / 2**20
        sizes.append(
            {
                "num_videos": num_videos,
                "first_call_s": first_s,
                "seconds_per_batch": per_batch,
                "queries_per_s": num_queries / per_batch,
                "index_mib": index_bytes / 2**20,
                "search_temp_mib": temp,
                "peak_rss_mib": peak_rss_mib(),
            }
        )
        del index
    return {
        "device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
        "mesh": dict(mesh.shape),
        "model": config.model.name,
        "hidden_size": hidden,
        "ctx_mode": model_config.get("ctx_mode", ""),
        "clips_per_video": clips,
        "queries_per_batch": num_queries,
        "query_len": query_len,
        "top_videos": int(stages.top_videos),
        "retrieve_videos": int(stages.retrieve_videos),
        "nms_threshold": options["nms_threshold"],
        "index_build_videos": build_videos,
        "index_build_videos_per_s": build_videos / build_s,
        "localize": localize,
        "search": sizes,
        "timed_batches": steps,
    }


def run_mine_bench(
    config: ml_collections.ConfigDict,
    num_videos: int,
    *,
    num_queries: int | None = None,
    query_len: int | None = None,
    clips: int = 100,
    top: int = 100,
    queries_per_video: int = 5,
    steps: int = 3,
    block_size: int = 256,
) -> dict[str, Any]:
    """Seconds per query batch of the mining program (:mod:`vmr_jax.retrieval.mining`: encode
    the queries, score every video of the corpus, keep the ``top`` best) over a random index of
    ``num_videos`` videos, and the estimated time to mine a training split of
    ``queries_per_video`` queries per video (TVR: 5).  Batches of ``num_queries`` queries
    (default 256); XLA's temp memory of the compiled program."""
    from vmr_jax.retrieval import mining

    mesh = sharding.make_mesh(config.mesh)
    family = get_family(config.model.name)
    model_config = config.model.copy_and_resolve_references()
    with model_config.ignore_type():
        model_config.max_ctx_l = max(int(model_config.max_ctx_l), clips)
    num_queries = int(num_queries or 256)
    query_len = int(query_len or default_query_len(config))
    model = family.create_model(model_config)
    stages = family.corpus(model, model_config)
    sample = random_batch(family, model_config, 1, query_len)
    feats = {k: sample[k][:, :clips] for k in CLIP_KEYS if k in sample}
    sample.update(feats)
    variables = jax.jit(lambda key: model.init(key, sample, train=False))(jax.random.PRNGKey(0))
    queries = random_batch(family, model_config, num_queries, query_len, seed=3)
    queries = {k: queries[k] for k in mining.QUERY_KEYS}
    index = random_index(stages, variables, num_videos, feats, mesh)
    top = min(top, num_videos)
    program = mining._mine_program(stages, mesh, num_videos, top, block_size)
    start = time.perf_counter()
    compiled = program.lower(variables, index.encodings, queries).compile()
    compile_s = time.perf_counter() - start
    run = lambda: program(variables, index.encodings, queries)  # noqa: E731
    jax.block_until_ready(run())
    per_batch = seconds_per_call(run, steps)
    total_queries = num_videos * queries_per_video
    return {
        "device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
        "mesh": dict(mesh.shape),
        "model": config.model.name,
        "num_videos": num_videos,
        "clips_per_video": clips,
        "top": top,
        "queries_per_batch": num_queries,
        "compile_s": compile_s,
        "seconds_per_batch": per_batch,
        "queries_per_s": num_queries / per_batch,
        "estimated_split_s": total_queries / num_queries * per_batch,
        "estimated_split_queries": total_queries,
        **compiled_memory(compiled),
        "flops": compiled_flops(compiled),
        "index_mib": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(index.encodings))
        / 2**20,
        "peak_rss_mib": peak_rss_mib(),
        "timed_batches": steps,
    }
