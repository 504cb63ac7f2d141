"""``vmr-jax bench``: compile time, throughput and memory of a config's train and eval steps.

Random inputs are the family's example batch (``Family.example_batch``: every field the model
and its loss read, at the model config's shapes) filled with random values
(:func:`random_batch`), so no data is read, every registered family can be measured, and any
official shape too, e.g. MGPN on Charades-STA I3D and TACoS::

    vmr-jax bench --config configs/mgpn/synthetic.py --variant charades_i3d --batch_size 64
    vmr-jax bench --config configs/mgpn/synthetic.py --variant tacos --batch_size 32

Printed JSON: device, mesh, shapes; ``train_compile_s`` / ``eval_compile_s`` (lower +
compile), ``train_steps_per_s`` and ``train_examples_per_s`` (steady state, after warm-up),
``eval_queries_per_s`` (forward + score-map decoding on device), ``train_step_flops`` /
``eval_step_flops`` (XLA ``cost_analysis``), ``peak_rss_mib`` (``resource.getrusage``) and,
where the backend reports it, ``device_peak_memory_mib`` plus the compiled temp sizes.
Speed is measured here, never asserted by tests.

``--search 1000,10000`` measures a corpus family's search instead (queries/s over random
corpora of that many videos, the compiled search and localisation programs' memory):
:mod:`vmr_jax.search_bench`.  Cascaded MPN at the TVR shapes beside XML at the same inputs::

    vmr-jax bench --config configs/cascaded_mpn/synthetic.py --variant tvr --search 1000,10000
    vmr-jax bench --config configs/xml/synthetic.py --variant tvr \
        --config.model.vid_feat_size=4352 --search 1000,10000

``--query-speed tacos,activitynet`` measures the test-time cost of one query in the FVMR paper's
Table 1 terms (TE, CML, ALL in ms; FVMR and 2D-TAN at the paper's shapes, batch-1 and
amortised): :mod:`vmr_jax.query_speed`, whose text table also goes to stderr::

    vmr-jax bench --config configs/mgpn/synthetic.py --query-speed tacos,activitynet --steps 5

``--data-only`` times the config's input pipeline instead (:func:`run_data_bench`): host
batches per second at the config's (or ``--batch_size``) batch, from the synthetic benchmark
or the built dataset in ``config.data.dir``::

    vmr-jax bench --config configs/mgpn/charades_i3d.py --data-only
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from data_pipelines.sources import without_spans
from vmr_jax import config_cli, sharding, trainer
from vmr_jax.evaluation import evaluators
from vmr_jax.models import Family, get_family


def random_batch(
    family: Family, model_config: Any, batch_size: int, query_len: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """The family's example batch (every field it reads, ``Family.example_batch``) filled with
    random values: normal features, query lengths in ``[query_len / 2, query_len]``, token ids
    when the family embeds tokens, and one span per query inside its video (added when the
    example has none, since evaluation reads spans)."""
    rng = np.random.default_rng(seed)
    batch = {
        k: np.array(v) for k, v in family.example_batch(model_config, batch_size, query_len).items()
    }
    lengths = rng.integers(max(1, query_len // 2), query_len + 1, size=batch_size)
    batch["query_mask"] = (np.arange(query_len)[None] < lengths[:, None]).astype(np.float32)
    for key in ("video_features", "subtitle_features", "query_features"):
        if key in batch:
            batch[key] = rng.normal(size=batch[key].shape).astype(np.float32)
    if "query_features" in batch:
        batch["query_features"] *= batch["query_mask"][..., None]
    if "query_tokens" in batch:
        vocab = int(model_config.vocab_size)
        tokens = rng.integers(2, vocab, size=batch["query_tokens"].shape).astype(np.int32)
        batch["query_tokens"] = tokens * batch["query_mask"].astype(np.int32)
    duration = batch["duration"].astype(np.float64)
    start = rng.uniform(0.0, 0.7, size=batch_size) * duration
    end = np.minimum(start + rng.uniform(0.1, 0.3, size=batch_size) * duration, duration)
    batch["spans"] = np.stack([start, end], -1)[:, None, :].astype(np.float32)
    batch["span_mask"] = np.ones((batch_size, 1), np.float32)
    return batch


def compiled_flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def compiled_memory(compiled) -> dict[str, float]:
    try:
        mem = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        return {}
    if mem is None:
        return {}
    out = {}
    for name in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes"):
        if hasattr(mem, name):
            out[name.replace("_in_bytes", "_mib")] = getattr(mem, name) / 2**20
    return out


def _device_peak_mib() -> float | None:
    stats = jax.local_devices()[0].memory_stats()
    if not stats:
        return None
    peak = stats.get("peak_bytes_in_use", stats.get("bytes_in_use"))
    return None if peak is None else peak / 2**20


def peak_rss_mib() -> float:
    """The process's peak resident memory (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def default_query_len(config: ml_collections.ConfigDict) -> int:
    """The padded query length of a bench: the model's ``max_desc_l`` where it has one (XML,
    Cascaded MPN: a variant's query length), else ``config.data.max_query_len`` (20)."""
    if "max_desc_l" in config.model:
        return int(config.model.max_desc_l)
    return int(config.data.get("max_query_len", 20))


def seconds_per_call(fn, steps: int) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls (result blocked on at the end)."""
    if steps <= 0:
        return float("nan")
    start = time.perf_counter()
    out = None
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def run_bench(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int | None = None,
    eval_batch_size: int | None = None,
    query_len: int | None = None,
    steps: int = 10,
    warmup: int = 2,
) -> dict[str, Any]:
    """Measures ``config``'s train and eval steps on random inputs; returns the report."""
    mesh = sharding.make_mesh(config.mesh)
    batch_size = int(batch_size or config.train.batch_size)
    eval_batch_size = int(eval_batch_size or config.evals.get("batch_size", batch_size))
    query_len = int(query_len or default_query_len(config))
    family = get_family(config.model.name)
    train_batch = random_batch(family, config.model, batch_size, query_len, seed=0)
    if trainer.training_supervision(config, family) == "weak":
        train_batch = without_spans(train_batch)
    eval_batch = random_batch(family, config.model, eval_batch_size, query_len, seed=1)

    model = family.create_model(config.model)
    tx, schedule = trainer.family_optimizer(config, 1000, family)
    rng = jax.random.PRNGKey(0)
    state = trainer.create_train_state(config, model, rng, train_batch, mesh, tx=tx)
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))

    # Train step: compile, then steady state (state is donated: thread it through).
    train_step = trainer.make_train_step(config, state_sharding, mesh, schedule, 1000, family)
    batch = sharding.put_batch(train_batch, mesh)
    start = time.perf_counter()
    train_compiled = train_step.lower(state, batch, rng).compile()
    train_compile_s = time.perf_counter() - start
    holder = {"state": state}

    def one_train_step():
        holder["state"], metrics = train_compiled(holder["state"], batch, rng)
        return metrics

    seconds_per_call(one_train_step, warmup)
    train_s = seconds_per_call(one_train_step, steps)

    evals = {}
    if not family.is_corpus:  # corpus families: vmr_jax.search_bench
        eval_step = evaluators.make_eval_step(config, state_sharding, mesh, family)
        ebatch = sharding.put_batch(eval_batch, mesh)
        start = time.perf_counter()
        eval_compiled = eval_step.lower(holder["state"], ebatch).compile()
        evals["eval_compile_s"] = time.perf_counter() - start
        seconds_per_call(lambda: eval_compiled(holder["state"], ebatch), warmup)
        eval_s = seconds_per_call(lambda: eval_compiled(holder["state"], ebatch), steps)
        evals["eval_queries_per_s"] = eval_batch_size / eval_s
        evals["eval_step_flops"] = compiled_flops(eval_compiled)
        evals["eval_step_memory"] = compiled_memory(eval_compiled)

    # The 2D-map construction alone, where the family declares it.
    map_build = {}
    if family.map_builders is not None:
        feats = (
            np.random.default_rng(2)
            .normal(size=(batch_size, int(config.model.num_clips), int(config.model.hidden)))
            .astype(np.float32)
        )
        feats = jax.device_put(feats)
        for name, fn in family.map_builders(config.model).items():
            jitted = jax.jit(fn)
            seconds_per_call(lambda jitted=jitted: jitted(feats), warmup)
            map_build[f"{name}_s"] = seconds_per_call(lambda jitted=jitted: jitted(feats), steps)

    report = {
        "device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
        "platform": jax.default_backend(),
        "mesh": dict(mesh.shape),
        "model": config.model.name,
        "model_config": {k: v for k, v in config.model.items() if not isinstance(v, dict)},
        "num_params": num_params,
        "batch_size": batch_size,
        "eval_batch_size": eval_batch_size,
        "query_len": query_len,
        "input_clips": int(train_batch["video_features"].shape[1]),
        "train_compile_s": train_compile_s,
        "train_steps_per_s": 1.0 / train_s,
        "train_examples_per_s": batch_size / train_s,
        "train_step_flops": compiled_flops(train_compiled),
        "train_step_memory": compiled_memory(train_compiled),
        **evals,
        "peak_rss_mib": peak_rss_mib(),
        "device_peak_memory_mib": _device_peak_mib(),
        "timed_steps": steps,
        **map_build,
    }
    if family.unused_official_params:  # the paper's count includes them
        report["num_params_paper"] = num_params + family.unused_official_params
    return report


def run_data_bench(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int | None = None,
    steps: int = 50,
    warmup: int = 5,
) -> dict[str, Any]:
    """Host batches per second of ``config``'s training input pipeline (no model).

    Builds the data sources of ``config`` (``config.data``: the synthetic benchmark or a built
    dataset read from ``config.data.dir``), then times ``steps`` batches of the endless train
    iterator after ``warmup`` batches; ``setup_s`` is the time to the first batch (parsing,
    text vocabulary, opening files).
    """
    batch_size = int(batch_size or config.train.batch_size)
    config.unlock()
    config.train.batch_size = batch_size
    config.lock()
    start = time.perf_counter()
    data = trainer.DataSources(config)
    iterator = data.train_iterator()
    first = next(iterator)
    setup_s = time.perf_counter() - start
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    per_batch = (time.perf_counter() - start) / steps
    return {
        "data": config.data.name,
        "data_dir": config.data.get("dir", ""),
        "batch_size": batch_size,
        "batch_shapes": {k: list(v.shape) for k, v in first.items()},
        "setup_s": setup_s,
        "data_batches_per_s": 1.0 / per_batch,
        "data_examples_per_s": batch_size / per_batch,
        "timed_batches": steps,
        "peak_rss_mib": peak_rss_mib(),
    }


def apply_variant(config: ml_collections.ConfigDict, variant: str) -> None:
    """Replaces ``config.model``'s fields by the family's ``VARIANTS[variant]``."""
    family = get_family(config.model.name)
    if variant not in family.variants:
        raise KeyError(f"unknown variant {variant!r}; known: {sorted(family.variants)}")
    with config.ignore_type():
        for key, value in family.variants[variant].items():
            config.model[key] = value


def main(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    sharding.initialize_distributed()
    config = config_cli.load_config_file(args.config)
    config.unlock()
    if args.variant:
        apply_variant(config, args.variant)
    for key, value in getattr(args, "config_overrides", ()):
        config_cli.apply_override(config, key, value)
    config.lock()
    if args.query_speed:
        from vmr_jax import query_speed

        report = query_speed.run_query_speed_bench(
            tuple(x for x in args.query_speed.split(",") if x),
            query_len=args.query_len or 20,
            queries=args.eval_batch_size or 64,
            videos=args.videos,
            pairs=args.pairs,
            top_k=max(int(n) for n in config.evals.get("recalls", (1, 5))),
            nms_thresh=float(config.evals.get("nms_thresh", 0.5)),
            steps=args.steps,
            warmup=args.warmup,
            budget_s=args.budget_s,
            compare_tan2d=not args.no_tan2d,
        )
        print(query_speed.format_table(report), file=sys.stderr)
    elif args.mine:
        from vmr_jax import search_bench

        report = search_bench.run_mine_bench(
            config,
            args.mine,
            num_queries=args.eval_batch_size,
            query_len=args.query_len,
            clips=args.clips,
            steps=args.steps,
        )
    elif args.search:
        from vmr_jax import search_bench

        report = search_bench.run_search_bench(
            config,
            tuple(int(x) for x in args.search.split(",") if x),
            num_queries=args.eval_batch_size,
            query_len=args.query_len,
            clips=args.clips,
            build_videos=args.build_videos,
            steps=args.steps,
            warmup=args.warmup,
        )
    elif args.data_only:
        report = run_data_bench(
            config, batch_size=args.batch_size, steps=max(args.steps, 1) * 5, warmup=args.warmup
        )
    else:
        report = run_bench(
            config,
            batch_size=args.batch_size,
            eval_batch_size=args.eval_batch_size,
            query_len=args.query_len,
            steps=args.steps,
            warmup=args.warmup,
        )
    if sharding.is_main_process():
        print(json.dumps(report, indent=2, sort_keys=True))
    return 0
