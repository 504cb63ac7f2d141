"""``vmr-jax eval``: evaluate a checkpoint of a training workdir from the workdir alone.

The workdir's ``config.json`` rebuilds the data, model and mesh; the checkpoint is restored
into the sharded abstract state; the eval split runs through ``trainer.evaluate`` (official
decoding and metrics of ``evaluation.svmr``).  Outputs, under ``WORKDIR/eval/`` by default:

* ``<split>_step<N>.json``: split, protocol, rule, NMS threshold, step, checkpoint path,
  number of queries, the ground truth scored (file and SHA-256), metrics (fractions in
  [0, 1]) and the full config;
* ``<split>_step<N>_predictions.jsonl``: one line per query, in split order:
  ``{"query_index", "query_id", "video_id", "duration", "gt_spans", "moments"}`` with
  ``moments = [[start_s, end_s, score], ...]`` best first after NMS -- the 2D-TAN-style
  format that ``vmr-jax score --protocol 2dtan --ground-truth <dir>/<split>.queries.jsonl``
  re-scores without the model.

Under ``evals.protocol = 'didemo'`` (proposal lists on the chunk grid) the JSONL lists the top
five ranked chunk moments, and ``<split>_step<N>_didemo.json`` holds the full 21-moment
rankings in the official format (:func:`vmr_jax.evaluation.didemo.write_predictions_json`),
which ``vmr-jax score --protocol didemo --ground-truth <split>_data.json`` re-scores.

Corpus families (XML; ``TASK == 'vcmr'``) are evaluated by searching every query of the split
against all its videos (:mod:`vmr_jax.retrieval.evaluate`); their predictions file is the
official TVR submission ``<split>_step<N>_submission.json`` (``video2idx``, ``VCMR``,
``SVMR``, ``VR`` lists), which ``vmr-jax score --protocol tvr`` and the official
``standalone_eval/eval.py`` score, and the metrics are the ``tvr`` protocol's percentages.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from vmr_jax import checkpointing, config_cli, sharding, xla_cache
from vmr_jax.errors import UserError
from vmr_jax.evaluation import didemo, svmr, vcmr
from vmr_jax.text import saved
from vmr_jax.text.tokenizer import Vocabulary
from vmr_jax.trainer import (
    DataSources,
    abstract_train_state,
    create_model,
    family_optimizer,
    make_state_evaluator,
)


def evaluate_workdir(
    workdir: str,
    *,
    step: int | str | None = None,
    split: str | None = None,
    output_dir: str | None = None,
    overrides: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Evaluates a checkpoint of a training workdir using only what the workdir holds.

    ``step``: an int, ``'best'`` (by ``train.best_metric``) or None (latest).  Writes
    ``<output_dir or workdir/eval>/<split>_step<N>.json`` (split, protocol, rule, step, config,
    metrics, checkpoint) and ``<split>_step<N>_predictions.jsonl`` (one line per query:
    ``query_id``, ``video_id``, ``duration``, ``gt_spans``, ranked ``[start, end, score]``).
    ``overrides``: ``(dotted field, value text)`` pairs applied to the saved config (e.g. a
    larger ``evals.batch_size``).  Returns the results dict plus the two paths.
    """
    config, mesh, data, state, state_sharding, step, manager = restore_workdir(
        workdir, step, overrides
    )
    split = split or config.evals.get("split", "val")
    metrics, predictions = make_state_evaluator(config, data, state_sharding, mesh)(state, split)
    corpus = "ground_truth" in predictions
    out_dir = output_dir or os.path.join(workdir, "eval")
    results_path = os.path.join(out_dir, f"{split}_step{step}.json")
    suffix = "_submission.json" if corpus else "_predictions.jsonl"
    predictions_path = os.path.join(out_dir, f"{split}_step{step}{suffix}")
    protocol = "tvr" if corpus else config.evals.get("protocol", "2dtan")
    on_chunks = protocol == didemo.PROTOCOL
    nms_thresh = float(config.evals.get("nms_thresh", -1.0 if corpus else 0.5))
    if corpus:
        rule = vcmr.PROTOCOLS["tvr"]
    elif on_chunks:
        rule, nms_thresh = didemo.RULE, None  # all 21 moments ranked, no NMS
    else:
        rule = svmr.get_protocol(protocol).rule
    rankings_path = os.path.join(out_dir, f"{split}_step{step}_didemo.json") if on_chunks else None
    results = {
        "split": split,
        "protocol": protocol,
        "rule": rule,
        "nms_thresh": nms_thresh,
        "step": int(step),
        "checkpoint": os.path.join(str(manager.directory), str(step)),
        "num_queries": int(metrics["num_queries"]),
        **_ground_truth_identity(data, split),
        "predictions": predictions_path,
        **({"rankings": rankings_path} if on_chunks else {}),
        "metrics": metrics,
        "config": json.loads(config.to_json_best_effort()),
    }
    if sharding.is_main_process():
        os.makedirs(out_dir, exist_ok=True)
        with open(results_path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, sort_keys=True)
            f.write("\n")
        if corpus:
            gt = predictions["ground_truth"]
            ranked = {t: p for t, p in predictions.items() if t in vcmr.TASKS}
            vcmr.write_submission(predictions_path, vcmr.submission_from_predictions(ranked, gt))
        else:
            records = data.query_records(split, predictions["query_index"])
            with open(predictions_path, "w", encoding="utf-8") as f:
                for q, record in enumerate(records):
                    f.write(json.dumps(_prediction_line(record, predictions, q)) + "\n")
            if on_chunks:
                ids = data.didemo_ground_truth(split).annotation_ids[predictions["query_index"]]
                didemo.write_predictions_json(rankings_path, ids, predictions["rankings"])
    return {**results, "results_path": results_path, "predictions_path": predictions_path}


def check_vocabulary(workdir: str, text: Any) -> None:
    """Raises ``UserError`` when the data's word vocabulary is not the one the workdir trained
    with (``WORKDIR/text_encoder/vocab.txt``): token ids would index other rows of the
    checkpoint's word table (e.g. a dataset rebuilt with other splits).  Nothing to compare
    for a workdir without a saved word vocabulary."""
    if not isinstance(getattr(text, "encoder", None), Vocabulary):
        return
    try:
        trained = saved.load_text_inputs(workdir).encoder
    except FileNotFoundError:
        return
    if isinstance(trained, Vocabulary) and trained.words != text.encoder.words:
        raise UserError(
            f"{saved.encoder_dir(workdir)}/vocab.txt ({len(trained)} words) is not the "
            f"vocabulary of config.data ({len(text.encoder)} words): the checkpoint's word ids "
            "would read other rows; evaluate on the data the workdir was trained on"
        )


def restore_workdir(workdir: str, step: int | str | None, overrides: Sequence = ()) -> tuple:
    """``(config, mesh, data, state, state_sharding, step, manager)`` of a workdir's checkpoint
    ``step`` (int, ``'best'`` or None: the latest); the manager is closed."""
    xla_cache.enable()
    config = checkpointing.load_config(workdir)
    for key, value in overrides:
        config_cli.apply_override(config, key, value)
    mesh = sharding.make_mesh(config.mesh)
    data = DataSources(config)
    check_vocabulary(workdir, data.datasets.text)
    model = create_model(config.model)
    tx, _ = family_optimizer(config, data.steps_per_epoch())
    init_rng, _ = jax.random.split(jax.random.PRNGKey(int(config.train.seed)))
    abstract = abstract_train_state(config, model, init_rng, data.sample_batch(), mesh, tx=tx)
    state_sharding = jax.tree.map(lambda x: x.sharding, abstract)
    manager = checkpointing.create_checkpoint_manager(workdir, config.train, read_only=True)
    if step is None:
        step = manager.latest_step()
    elif step == "best":
        step = checkpointing.best_step(
            manager,
            config.train.get("best_metric", checkpointing.DEFAULT_BEST_METRIC),
            config.train.get("best_mode", "max"),
        )
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    state = checkpointing.restore(manager, int(step), abstract)
    manager.close()
    return config, mesh, data, state, state_sharding, int(step), manager


def mine_workdir(
    workdir: str,
    *,
    step: int | str | None = None,
    top: int = 100,
    split: str = "train",
    overrides: Sequence[tuple[str, str]] = (),
) -> str:
    """``vmr-jax mine``: each query of ``split``'s top ``top`` videos by a corpus family's
    stage-1 score at checkpoint ``step`` (default: the latest), saved in
    ``WORKDIR/hard_negatives/<split>.npz`` (+ ``.json``); returns the file."""
    from data_pipelines import hard_negatives
    from vmr_jax.models import get_family
    from vmr_jax.retrieval import mining

    config, mesh, data, state, _, step, _ = restore_workdir(workdir, step, overrides)
    family = get_family(config.model.name)
    if not family.is_corpus:
        raise ValueError(
            f"vmr-jax mine ranks a corpus: model {config.model.name!r} answers one video per query"
        )
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    found = mining.mine_hard_negatives(
        family.corpus(family.create_model(config.model), config.model),
        variables,
        data.prepared(split),
        mesh,
        top=top,
        batch_size=int(config.evals.get("batch_size", 64)),
        split=split,
        checkpoint_step=step,
    )
    return str(found.save(os.path.join(workdir, hard_negatives.DEFAULT_DIRNAME)))


def _ground_truth_identity(data: DataSources, split: str) -> dict[str, Any]:
    """Which ground truth was scored: the built split's queries file and its SHA-256 (the
    file ``vmr-jax score --ground-truth`` takes), or, for in-memory data (synthetic), the
    SHA-256 of its query ids and spans as JSON."""
    from data_pipelines.stored import StoredSplit, queries_file, sha256

    records = data.datasets.splits[split]
    if isinstance(records, StoredSplit):
        path = os.path.join(records.directory, queries_file(split))
        return {"ground_truth": path, "ground_truth_sha256": sha256(path)}
    text = json.dumps([[r.query_id, np.asarray(r.spans_s, np.float64).tolist()] for r in records])
    return {
        "ground_truth": f"{data.config.data.name} (in memory)",
        "ground_truth_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }


def _prediction_line(record, predictions: Mapping[str, np.ndarray], q: int) -> dict[str, Any]:
    """One query's ranked moments ``[start_s, end_s, score]`` (NaN slots left out)."""
    moments = [
        [float(t[0]), float(t[1]), float(sc)]
        for t, sc in zip(predictions["times"][q], predictions["scores"][q])
        if not np.isnan(t).any()
    ]
    return {
        "query_index": int(predictions["query_index"][q]),
        "query_id": record.query_id,
        "video_id": record.video_id,
        "duration": float(record.duration_s),
        "gt_spans": np.asarray(record.spans_s, np.float64).tolist(),
        "moments": moments,
    }
