"""``vmr-jax bench --query-speed SHAPES``: test-time cost of one query, in the terms of the FVMR
paper's Table 1 (Gao & Xu, ICCV 2021, section 4.2), in milliseconds.

* **TE** (text embedding): a query's text encoder plus its projection -- FVMR ``encode_queries``
  (2-layer Bi-LSTM, ``s = w_1 + w_L``, ``phi_s``), 2D-TAN ``encode_query`` (LSTM,
  ``tex_linear``).
* **CML** (cross-modal learning), per query and video, the video side precomputed (the paper:
  "it is convenient to pre-extract and store video features"): FVMR, the dot products of the
  query with the video's ``C`` gallery entries, ``sigmoid``, ``top_k`` (eq. 6; ``C * D``
  multiply-adds); 2D-TAN, ``cross_modal`` (Hadamard fusion and normalisation, the map convs,
  the prediction layer) on the video's precomputed map.
* **ALL** = TE + CML.

Each is measured two ways: **batch-1** latency (one query; one query-video pair), and
**amortised** over a realistic batch (TE: ``--eval_batch_size`` queries at once, default 64;
FVMR CML: ``Q x V`` query-video pairs in one program, every query against every video of a
``V``-video gallery, default 64 x 64; 2D-TAN CML: ``--pairs`` query-video pairs in one batch),
divided by the number of queries or pairs.  Also reported for FVMR: ``search_ms_per_query``,
the library's single-video engine end to end (:func:`vmr_jax.retrieval.gallery.search`: host
routing, gather, matmul, ranking, exact NMS, results back on the host) over ``--eval_batch_size``
queries; and the XLA ``cost_analysis`` FLOPs of the batch-1 CML programs (FVMR's dot is
checked against ``2 * C * D``).

Shapes (``SHAPES``, comma separated): a name with an FVMR ``VARIANTS`` entry (2D-TAN's variant
of the same dataset, :func:`tan2d_variant`, runs beside it): ``tacos`` (128 clips, 2D-TAN
``[16, 8, 8, 8]`` = pooling counts ``(15, 8, 8, 8)``, C = 2,548), ``activitynet`` (64 clips,
``(15, 8, 8)``, C = 1,104), ``charades_vgg`` / ``charades_i3d`` / ``charades_c3d`` (each beside
2D-TAN's ``charades_conv``) and ``tiny`` (tests).  ``D = 512`` and the paper's hidden sizes
come from the variants.  Weights and inputs are random (timings do not depend on them).
Timing: compile first (not timed), ``--warmup`` untimed calls, then the median of up to
``--steps`` calls, each ended by ``jax.block_until_ready`` (at least 3; fewer than ``--steps``
once ``budget_s`` of timed calls have run: a 2D-TAN CML call at TACoS shapes takes minutes on
a CPU).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vmr_jax import sharding
from vmr_jax.models import fvmr, tan2d
from vmr_jax.ops import moment_map
from vmr_jax.retrieval import gallery

# Table 1 of the paper (ms on an NVIDIA RTX 3090), for comparison: (TE, CML, ALL) as printed
# (2D-TAN's ANetCap ALL is printed as 403.1, not TE + CML = 82.04).
PAPER_TABLE1_MS = {
    "tacos": {"fvmr": (3.51, 0.14, 3.65), "tan2d": (1.72, 135.84, 137.56)},
    "activitynet": {"fvmr": (3.14, 0.09, 3.23), "tan2d": (1.69, 80.35, 403.1)},
}


def timed_ms(
    fn: Callable[[], Any], steps: int, warmup: int, budget_s: float = 60.0, min_steps: int = 3
) -> dict[str, float]:
    """Median wall time of ``fn()`` (blocked on) in ms over up to ``steps`` calls, after
    ``warmup`` untimed calls; at least ``min(min_steps, steps)`` calls, no new one after
    ``budget_s`` seconds of timed calls.  Returns ``{'ms', 'repeats'}``."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times: list[float] = []
    while len(times) < steps:
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
        if sum(times) > budget_s and len(times) >= min(min_steps, steps):
            break
    return {"ms": 1e3 * statistics.median(times), "repeats": len(times)}


def _flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def _random(key: int, shape, scale: float = 1.0) -> jax.Array:
    return scale * jax.random.normal(jax.random.PRNGKey(key), shape, jnp.float32)


def _queries(model_config, batch: int, query_len: int) -> dict[str, jax.Array]:
    """Random word vectors (or token ids) of ``query_len`` real words."""
    out = {"query_mask": jnp.ones((batch, query_len), jnp.float32)}
    vocab = int(model_config.get("vocab_size", 0) or 0)
    if vocab > 0:
        out["query_tokens"] = jax.random.randint(
            jax.random.PRNGKey(3), (batch, query_len), 2, vocab
        )
    else:
        out["query_features"] = _random(3, (batch, query_len, int(model_config.word_dim)))
    return out


def _init(family, model_config, model) -> Any:
    """Random weights; ``jit`` keeps only the parameter initialisers (the forward is dead)."""
    batch = family.example_batch(model_config, 1)
    return jax.jit(lambda key: model.init(key, batch, train=False))(jax.random.PRNGKey(0))


def _compiled(fn: Callable, *args) -> tuple[Callable[[], Any], Any]:
    compiled = jax.jit(fn).lower(*args).compile()
    return (lambda: compiled(*args)), compiled


def text_embedding(
    model, variables, model_config, method: str, batch: int, query_len: int, **timing
) -> dict[str, Any]:
    """TE batch-1 and amortised over ``batch`` queries (ms per query)."""
    out = {"batch": batch}
    for name, size in (("batch1", 1), ("amortised", batch)):
        queries = _queries(model_config, size, query_len)
        run, _ = _compiled(lambda v, q: model.apply(v, q, method=method), variables, queries)
        measured = timed_ms(run, **timing)
        out[name] = measured["ms"] / size
        out[f"{name}_repeats"] = measured["repeats"]
    return out


def fvmr_cross_modal(
    cells: int, dim: int, queries: int, videos: int, top_k: int, **timing
) -> dict[str, Any]:
    """FVMR CML: ``sigmoid(<query, moment_c>)`` for the ``C`` moments of a video, ``top_k``."""

    def one(moments, query):  # [C, D], [D]
        return jax.lax.top_k(jax.nn.sigmoid(moments @ query), top_k)

    def grid(moments, query):  # [V, C, D], [Q, D]: every query against every video
        # One [Q, D] x [D, V * C] matmul: XLA:CPU runs the equivalent einsum 3x slower.
        logits = (query @ moments.reshape(-1, dim).T).reshape(len(query), *moments.shape[:2])
        return jax.lax.top_k(jax.nn.sigmoid(logits), top_k)

    run1, compiled1 = _compiled(one, _random(1, (cells, dim)), _random(2, (dim,)))
    run, compiled = _compiled(grid, _random(1, (videos, cells, dim)), _random(2, (queries, dim)))
    dot = jax.jit(lambda m, q: m @ q).lower(_random(1, (cells, dim)), _random(2, (dim,)))
    batch1, amortised = timed_ms(run1, **timing), timed_ms(run, **timing)
    pairs = queries * videos
    flops = _flops(compiled)
    return {
        "batch1": batch1["ms"],
        "batch1_repeats": batch1["repeats"],
        "amortised": amortised["ms"] / pairs,
        "amortised_repeats": amortised["repeats"],
        "queries": queries,
        "videos": videos,
        "flops": {
            "batch1": _flops(compiled1),
            "batch1_dot": _flops(dot.compile()),
            "amortised_per_pair": None if flops is None else flops / pairs,
            "expected_dot_2CD": 2.0 * cells * dim,
        },
    }


def fvmr_search(
    model_config, dim: int, queries: int, videos: int, top_k: int, nms_thresh: float, **timing
) -> dict[str, Any]:
    """:func:`gallery.search` end to end over a random gallery of ``videos`` videos."""
    mesh = sharding.make_mesh({"shape": (-1, 1)})
    counts = tuple(int(c) for c in model_config.pooling_counts)
    cells = len(moment_map.valid_cells(int(model_config.num_clips), counts)[0])
    padded = -(-videos // int(mesh.shape["data"])) * int(mesh.shape["data"])
    placed = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    moments = jax.device_put(_random(1, (padded, cells, dim), 0.05), placed)
    found = gallery.Gallery(
        moments=moments,
        durations=np.full(videos, 60.0, np.float32),
        video_ids=tuple(str(v) for v in range(videos)),
        num_clips=int(model_config.num_clips),
        pooling_counts=counts,
        mesh=mesh,
    )
    emb = np.asarray(_random(2, (queries, dim)))
    rows = np.random.default_rng(0).integers(0, videos, queries)
    run = lambda: gallery.search(found, emb, rows, top_k, nms_thresh)
    run()  # compile
    measured = timed_ms(run, **timing)
    return {"ms_per_query": measured["ms"] / queries, "queries": queries, "videos": videos}


def tan2d_cross_modal(model, variables, model_config, pairs: int, **timing) -> dict[str, Any]:
    """2D-TAN CML: ``cross_modal`` on precomputed maps, batch-1 and over ``pairs`` pairs."""
    n, h = int(model_config.num_clips), int(model_config.hidden)
    mask = tan2d.proposal_mask(n, tuple(model_config.num_scale_layers)).astype(np.float32)
    out: dict[str, Any] = {"pairs": pairs}
    for name, size in (("batch1", 1), ("amortised", pairs)):
        args = (
            _random(4, (size, h)),
            _random(5, (size, n, n, h)),
            jnp.asarray(np.broadcast_to(mask, (size, n, n))),
        )
        run, compiled = _compiled(
            lambda v, t, m, k: model.apply(v, t, m, k, method="cross_modal"), variables, *args
        )
        measured = timed_ms(run, **timing)
        out[name] = measured["ms"] / size
        out[f"{name}_repeats"] = measured["repeats"]
        if size == 1:
            out["flops"] = {"batch1": _flops(compiled)}
    return out


def _variant(family, name: str, *suffixes: str) -> tuple[str, ml_collections.ConfigDict]:
    for candidate in (name, *(name + s for s in suffixes)):
        if candidate in family.VARIANTS:
            return candidate, ml_collections.ConfigDict(dict(family.VARIANTS[candidate]))
    raise KeyError(f"no {family.__name__} variant for shape {name!r}: {sorted(family.VARIANTS)}")


def tan2d_variant(shape: str) -> tuple[str, ml_collections.ConfigDict]:
    """2D-TAN's variant beside the FVMR shape ``shape``: 2D-TAN names its variants by dataset
    (``charades_conv``), FVMR by dataset and features (``charades_vgg``, ``charades_i3d``,
    ``charades_c3d``), so each Charades shape times 2D-TAN's one Charades model."""
    return _variant(tan2d, shape.split("_")[0], "_conv")


def _all(te: dict, cml: dict) -> dict[str, float]:
    return {k: te[k] + cml[k] for k in ("batch1", "amortised")}


def run_query_speed_bench(
    shapes: tuple[str, ...],
    *,
    query_len: int = 20,
    queries: int = 64,
    videos: int = 64,
    pairs: int = 2,
    top_k: int = 5,
    nms_thresh: float = 0.5,
    steps: int = 10,
    warmup: int = 2,
    budget_s: float = 60.0,
    compare_tan2d: bool = True,
) -> dict[str, Any]:
    """TE / CML / ALL of FVMR (and 2D-TAN) at each shape (module docstring); ms."""
    timing = dict(steps=steps, warmup=warmup, budget_s=budget_s)
    report: dict[str, Any] = {
        "device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
        "platform": jax.default_backend(),
        "query_len": query_len,
        "top_k": top_k,
        "unit": "ms (per query; CML per query-video pair)",
        "shapes": {},
    }
    for shape in shapes:
        name, config = _variant(fvmr, shape)
        model = fvmr.create_model(config)
        variables = _init(fvmr, config, model)
        cells = len(model.cells()[0])
        dim = int(config.embed_dim)
        te = text_embedding(
            model, variables, config, "encode_queries", queries, query_len, **timing
        )
        cml = fvmr_cross_modal(cells, dim, queries, videos, top_k, **timing)
        entry: dict[str, Any] = {
            "num_clips": int(config.num_clips),
            "pooling_counts": list(config.pooling_counts),
            "cells": cells,
            "embed_dim": dim,
            "fvmr": {
                "variant": name,
                "te_ms": te,
                "cml_ms": cml,
                "all_ms": _all(te, cml),
                "search_ms": fvmr_search(config, dim, queries, videos, top_k, nms_thresh, **timing),
            },
        }
        del variables
        if compare_tan2d:
            name, config = tan2d_variant(shape)
            model = tan2d.create_model(config)
            variables = _init(tan2d, config, model)
            te = text_embedding(
                model, variables, config, "encode_query", queries, query_len, **timing
            )
            cml = tan2d_cross_modal(model, variables, config, pairs, **timing)
            entry["tan2d"] = {"variant": name, "te_ms": te, "cml_ms": cml, "all_ms": _all(te, cml)}
            entry["cml_speedup"] = {
                k: cml[k] / entry["fvmr"]["cml_ms"][k] for k in ("batch1", "amortised")
            }
            del variables
        if shape in PAPER_TABLE1_MS:
            entry["paper_table1_ms"] = {
                family: dict(zip(("TE", "CML", "ALL"), values))
                for family, values in PAPER_TABLE1_MS[shape].items()
            }
        report["shapes"][shape] = entry
    return report


def format_table(report: dict[str, Any]) -> str:
    """The report as a text table (ms)."""
    rows = [f"{'shape':<12} {'model':<6} {'':<10} {'TE':>9} {'CML':>11} {'ALL':>11}"]
    for shape, entry in report["shapes"].items():
        for family in ("fvmr", "tan2d"):
            if family not in entry:
                continue
            e = entry[family]
            for how in ("batch1", "amortised"):
                rows.append(
                    f"{shape:<12} {family:<6} {how:<10} {e['te_ms'][how]:>9.4f} "
                    f"{e['cml_ms'][how]:>11.5f} {e['all_ms'][how]:>11.4f}"
                )
    return "\n".join(rows)
