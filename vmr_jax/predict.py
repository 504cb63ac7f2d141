"""``vmr-jax predict``: the ranked moments of a trained checkpoint, written as one JSON file.

Inputs: the checkpoint of a training workdir (``--step``, default the latest; the model, data
and mesh come from the workdir's ``config.json`` as for ``vmr-jax eval``), and either

* a split of the configured data (``--split``, default ``evals.split``), or
* the user's own files: ``--features`` (``.h5``/``.hdf5`` with one ``[T, D]`` dataset per video
  id, or ``.npz`` keyed by video id) and ``--queries`` (a JSON list of ``{"query_id",
  "video_id", "duration", "query"}``; ``duration`` in seconds).  Videos are fitted to the
  config's clips as the input pipeline does (``data.num_input_clips``, ``clip_sampling``,
  ``normalize``); the query text is encoded with the text inputs of the configured data, which
  must therefore be readable: ``text_mode='tokens'`` (word vocabulary of the train split, or
  the SentencePiece model file) and ``'glove'`` (the training table; words new to it are read
  from ``data.glove_path``, zeros when absent).  ``text_mode='features'`` (precomputed token
  features, e.g. RoBERTa) cannot be rebuilt from text and is refused.

Families: single-video ones (``TASK`` ``'svmr'``: fvmr, mgpn, tan2d, vlanet).  FVMR answers
through its common-space gallery (:mod:`vmr_jax.retrieval.gallery`; ``method='gallery'``, the
default): every video's ``phi_m(m)`` encoded once and saved under
``WORKDIR/gallery/<name>_step<N>`` with the step, checkpoint and inputs it was built from,
reused by the next call when they match; each query is then one ``phi_s(s)`` and one dot product
per moment.  The others (and FVMR with ``method='forward'``) run the eval forward pass and the
official 2D-TAN decoding (:func:`vmr_jax.evaluation.svmr.decode_predictions`).  Corpus families
(xml) are refused: ``vmr-jax eval`` writes their TVR submission.

Output (``--output``, default ``WORKDIR/predict/<name>_step<N>.json``)::

    {"format": "vmr-jax-predictions/1", "model": "fvmr", "method": "gallery",
     "source": {"split": "val"} | {"features": PATH, "queries": PATH},
     "step": 6, "checkpoint": PATH, "top_k": 5, "nms_thresh": 0.5, "time_unit": "seconds",
     "num_queries": Q,
     "predictions": [{"query_id": "...", "video_id": "...", "duration": 31.2,
                      "moments": [[start_s, end_s, score], ...]}, ...]}

``predictions`` are in input order (split records / queries file); ``moments`` best first after
NMS (``nms_thresh``, default ``evals.nms_thresh``), at most ``top_k`` (default
``max(evals.recalls)``), scores in (0, 1).  One process (any number of local devices).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from data_pipelines.annotations import DataError
from data_pipelines.feature_stores import Hdf5Store, check_feature_array
from data_pipelines.input_pipeline import DATA_DEFAULTS, TextInputs
from data_pipelines.video_tables import InMemoryVideos, fit_clips
from vmr_jax import checkpointing, config_cli, sharding, trainer
from vmr_jax.evaluation import evaluators
from vmr_jax.models import get_family
from vmr_jax.retrieval import gallery
from vmr_jax.text.glove import read_glove
from vmr_jax.text.tokenizer import split_words

logger = logging.getLogger(__name__)

FORMAT = "vmr-jax-predictions/1"
METHODS = ("auto", "gallery", "forward")


class PredictError(ValueError):
    """A request ``vmr-jax predict`` cannot serve (names the input or field)."""


# --------------------------------------------------------------------------- inputs
@dataclasses.dataclass
class QuerySet:
    """Queries to answer and the videos they ask about.

    ``videos.take(rows)`` gives ``video_features``/``video_mask`` of video rows;
    ``query_arrays(index)`` the ``query_tokens``/``query_features`` and ``query_mask`` of
    query indices; ``source`` says where they came from (JSON, written with the results).
    """

    query_ids: list[str]
    video_row: np.ndarray  # [Q]
    durations: np.ndarray  # [Q] float32 seconds
    video_ids: list[str]  # [V]
    videos: Any
    query_arrays: Callable[[np.ndarray], dict[str, np.ndarray]]
    source: dict[str, Any]

    def __len__(self) -> int:
        return len(self.query_ids)

    def video_durations(self) -> np.ndarray:
        """``[V]`` seconds (the duration given with each video's first query)."""
        rows, first = np.unique(self.video_row, return_index=True)
        out = np.zeros(len(self.video_ids), np.float32)
        out[rows] = self.durations[first]
        return out

    def batch(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """An eval batch of query indices (``-1``: padding, a copy of query 0, ``valid=0``)."""
        index = np.asarray(index, np.int64)
        rows = np.maximum(index, 0)
        batch = dict(self.query_arrays(rows))
        batch.update(self.videos.take(self.video_row[rows]))
        batch["duration"] = self.durations[rows]
        batch["spans"] = np.zeros((len(rows), 1, 2), np.float32)  # unknown: unused
        batch["span_mask"] = np.ones((len(rows), 1), np.float32)
        batch["query_index"] = np.where(index >= 0, index, -1).astype(np.int32)
        batch["valid"] = (index >= 0).astype(np.float32)
        return batch


def split_queries(data: trainer.DataSources, split: str) -> QuerySet:
    """Every query of a split of the configured data."""
    prepared = data.prepared(split)

    def query_arrays(index):
        batch = prepared.query_batch(index)
        return {k: v for k, v in batch.items() if k.startswith("query_") and k != "query_index"}

    return QuerySet(
        query_ids=list(prepared.query_ids),
        video_row=np.asarray(prepared.video_row, np.int64),
        durations=np.asarray(prepared.query["duration"], np.float32),
        video_ids=list(prepared.video_ids),
        videos=prepared.videos,
        query_arrays=query_arrays,
        source={"split": split},
    )


def _read_features(
    path: str, video_ids: Sequence[str], dim: int | None, queries_path: str, entries
) -> dict[str, np.ndarray]:
    """``{video_id: float32 [T, D]}`` from an HDF5 or npz file, checked; a video id absent
    from the file is an error naming the first query that asks for it."""
    if not os.path.exists(path):
        raise DataError(path, None, "video_features", "no such feature file")
    if path.endswith(".npz"):
        archive = np.load(path)
        keys, get, close = set(archive.files), archive.__getitem__, archive.close
    elif path.endswith((".h5", ".hdf5")):
        store = Hdf5Store(path, dim=dim, field="video_features")
        keys, get, close = set(store.keys()), store.get, store.close
    else:
        raise DataError(path, None, "video_features", "expected a .h5, .hdf5 or .npz file")
    try:
        for entry in entries:
            if entry["video_id"] not in keys:
                raise DataError(
                    queries_path,
                    f"query {entry['query_id']!r}",
                    "video_id",
                    f"{entry['video_id']!r} is not in {path}",
                )
        return {v: check_feature_array(get(v), path, v, dim, "video_features") for v in video_ids}
    finally:
        close()


def _read_queries(path: str) -> list[dict[str, Any]]:
    """The entries of a queries JSON file, checked field by field."""
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(path, None, None, f"not a readable JSON file: {err}") from err
    if not isinstance(entries, list) or not entries:
        raise DataError(path, None, None, "expected a non-empty JSON list of queries")
    seen: set[str] = set()
    out = []
    for i, entry in enumerate(entries):
        where = f"entry {i}"
        if not isinstance(entry, dict):
            raise DataError(path, where, None, "expected an object")
        for field in ("query_id", "video_id", "duration", "query"):
            if field not in entry:
                raise DataError(path, where, field, "missing")
        qid = str(entry["query_id"])
        where = f"entry {i} (query {qid!r})"
        if qid in seen:
            raise DataError(path, where, "query_id", "appears twice")
        seen.add(qid)
        try:
            duration = float(entry["duration"])
        except (TypeError, ValueError) as err:
            raise DataError(path, where, "duration", f"not a number: {err}") from err
        if not np.isfinite(duration) or duration <= 0:
            raise DataError(path, where, "duration", f"must be > 0 seconds, got {duration}")
        text = entry["query"]
        if not isinstance(text, str) or not split_words(text):
            raise DataError(path, where, "query", f"has no word: {text!r}")
        out.append(
            {
                "query_id": qid,
                "video_id": str(entry["video_id"]),
                "duration": duration,
                "query": text,
            }
        )
    return out


def _text_arrays(
    texts: Sequence[str], text: TextInputs, config_data: Any, source: str
) -> dict[str, np.ndarray]:
    """``query_tokens`` or GloVe ``query_features`` plus ``query_mask`` of raw texts, as the
    input pipeline encodes the configured data's queries."""
    if text.mode == "features":
        raise PredictError(
            f"{source}: the checkpoint reads precomputed query token features "
            "(config.data.text_mode='features'), which cannot be rebuilt from query text; "
            "--queries works for text_mode 'tokens' (word / sentencepiece) and 'glove'"
        )
    max_len = int(config_data.max_query_len)
    if text.mode == "tokens":
        ids = [text.encoder.encode(t)[:max_len] for t in texts]
        table = None
    else:  # glove: the training table, plus rows for words it has never seen
        vocab = dict(text.encoder.index)
        new = sorted({w for t in texts for w in split_words(t)} - set(vocab))
        table = text.embeddings
        if new:
            found, _ = read_glove(config_data.glove_path, words=new)
            extra = np.zeros((len(new), table.shape[1]), np.float32)
            for k, word in enumerate(new):
                vocab[word] = len(table) + k
                if word in found:
                    extra[k] = found[word]
            table = np.concatenate([table, extra])
        ids = [[vocab[w] for w in split_words(t)][:max_len] for t in texts]
    lengths = np.array([len(x) for x in ids])
    if (lengths == 0).any():
        q = int(np.argmin(lengths))
        raise DataError(source, f"entry {q}", "query", f"has no token: {texts[q]!r}")
    tokens = np.zeros((len(texts), max_len), np.int32)
    for q, x in enumerate(ids):
        tokens[q, : len(x)] = x
    mask = (np.arange(max_len)[None] < lengths[:, None]).astype(np.float32)
    if table is None:
        return {"query_tokens": tokens, "query_mask": mask}
    return {"query_features": table[tokens] * mask[..., None], "query_mask": mask}


def file_queries(
    features_path: str, queries_path: str, config: ml_collections.ConfigDict, text: TextInputs
) -> QuerySet:
    """The user's own ``--features`` / ``--queries`` files (module docstring)."""
    entries = _read_queries(queries_path)
    video_ids = list(dict.fromkeys(e["video_id"] for e in entries))
    dim = config.model.get("feature_dim")
    dim = None if dim is None else int(dim)
    raw = _read_features(features_path, video_ids, dim, queries_path, entries)
    data = config.data
    field = lambda name: data.get(name, DATA_DEFAULTS.get(name))
    fitted = [
        fit_clips(raw[v], int(data.num_input_clips), field("clip_sampling"), field("normalize"))
        for v in video_ids
    ]
    videos = InMemoryVideos(
        np.stack([f for f, _ in fitted]), np.stack([m for _, m in fitted]), None
    )
    row = {v: k for k, v in enumerate(video_ids)}
    arrays = _text_arrays([e["query"] for e in entries], text, data, queries_path)
    return QuerySet(
        query_ids=[e["query_id"] for e in entries],
        video_row=np.array([row[e["video_id"]] for e in entries], np.int64),
        durations=np.array([e["duration"] for e in entries], np.float32),
        video_ids=video_ids,
        videos=videos,
        query_arrays=lambda index: {k: v[index] for k, v in arrays.items()},
        source={
            "features": os.path.abspath(features_path),
            "queries": os.path.abspath(queries_path),
        },
    )


# --------------------------------------------------------------------------- checkpoint
def restore_state(
    workdir: str, config, data: trainer.DataSources, mesh, step: int | str | None
) -> tuple[Any, Any, int, str]:
    """``(model, state, step, checkpoint path)`` of a workdir's checkpoint, restored as
    ``vmr-jax eval`` restores it (``step``: an int, ``'best'`` or None for the latest)."""
    model = trainer.create_model(config.model)
    tx, _ = trainer.family_optimizer(config, data.steps_per_epoch())
    init_rng, _ = jax.random.split(jax.random.PRNGKey(int(config.train.seed)))
    abstract = trainer.abstract_train_state(
        config, model, init_rng, data.sample_batch(), mesh, tx=tx
    )
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
    path = os.path.join(str(manager.directory), str(step))
    manager.close()
    return model, state, int(step), path


# --------------------------------------------------------------------------- answering
def _padded_batches(num: int, batch_size: int) -> Iterator[np.ndarray]:
    """Query indices in batches of ``batch_size``, the last padded with ``-1``."""
    for start in range(0, num, batch_size):
        index = np.arange(start, min(start + batch_size, num))
        yield np.concatenate([index, np.full(batch_size - len(index), -1)])


def answer_with_forward(
    config, state, queries: QuerySet, mesh, top_k: int, nms_thresh: float
) -> tuple[np.ndarray, np.ndarray]:
    """Eval forward pass + ``family.decode`` + the official decoding: ``(times, scores)``
    (score maps: 2D-TAN's cell decoding; moment lists of proposal families: the same NMS)."""
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    eval_step = evaluators.make_eval_step(config, state_sharding, mesh)
    size = int(config.evals.get("batch_size", config.train.batch_size))
    batches = (queries.batch(index) for index in _padded_batches(len(queries), size))
    predicted = evaluators.predict(eval_step, state, batches, mesh)
    return evaluators.decode_moments(predicted, nms_thresh, top_k)


def _source_fingerprint(source: Mapping[str, Any]) -> dict[str, Any]:
    """What a gallery was built from: the split, or the features file's size and time."""
    if "features" not in source:
        return dict(source)
    stat = os.stat(source["features"])
    return {"features": source["features"], "size": stat.st_size, "mtime": stat.st_mtime}


def gallery_for(
    workdir: str,
    config,
    model,
    variables,
    queries: QuerySet,
    mesh,
    step: int,
    checkpoint: str,
    rebuild: bool = False,
) -> tuple[gallery.Gallery, str]:
    """The FVMR gallery of the queries' videos: loaded from ``WORKDIR/gallery`` when it was
    built from the same checkpoint, model config and inputs, else built and saved there."""
    source = _source_fingerprint(queries.source)
    identity = {
        "step": step,
        "checkpoint": checkpoint,
        "source": source,
        "model": json.loads(config.model.to_json_best_effort()),
        "data": {k: config.data.get(k) for k in ("num_input_clips", "normalize")},
    }
    if "split" in source:
        name = source["split"]
    else:
        key = json.dumps(source, sort_keys=True).encode()
        name = "features_" + hashlib.sha256(key).hexdigest()[:12]
    directory = os.path.join(workdir, "gallery", f"{name}_step{step}")
    if not rebuild and os.path.exists(os.path.join(directory, gallery.METADATA_FILE)):
        loaded = gallery.Gallery.load(directory, mesh)
        if loaded.metadata == identity and list(loaded.video_ids) == queries.video_ids:
            logger.info("gallery %s reused (%d videos)", directory, loaded.num_videos)
            return loaded, directory
        logger.info("gallery %s is stale: rebuilding", directory)
    built = gallery.build_gallery(
        model,
        variables,
        queries.videos,
        mesh,
        durations=queries.video_durations(),
        video_ids=queries.video_ids,
        batch_size=int(config.evals.get("batch_size", 32)),
        metadata=identity,
    )
    if sharding.is_main_process():
        built.save(directory)
    logger.info("gallery %s built (%d videos)", directory, built.num_videos)
    return built, directory


def answer_with_gallery(
    config, model, variables, queries: QuerySet, found: gallery.Gallery, mesh, top_k, nms_thresh
) -> tuple[np.ndarray, np.ndarray]:
    """``phi_s(s)`` of every query, then :func:`gallery.search`: ``(times, scores)``."""
    size = int(config.evals.get("batch_size", 32))
    parts = []
    for index in _padded_batches(len(queries), size):
        rows = np.maximum(index, 0)
        emb = gallery.encode_queries(model, variables, queries.query_arrays(rows), mesh)
        parts.append(emb[index >= 0])
    result = gallery.search(
        found,
        np.concatenate(parts),
        queries.video_row,
        top_k,
        nms_thresh,
        durations=queries.durations,
    )
    return result.times, result.scores


# --------------------------------------------------------------------------- entry point
def predict_workdir(
    workdir: str,
    *,
    step: int | str | None = None,
    split: str | None = None,
    features: str | None = None,
    queries: str | None = None,
    output: str | None = None,
    top_k: int | None = None,
    nms_thresh: float | None = None,
    method: str = "auto",
    rebuild_gallery: bool = False,
    overrides: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Answers the queries of ``split`` (or of ``features`` + ``queries``) with a workdir's
    checkpoint and writes the predictions JSON (module docstring).  Returns the header of
    the JSON plus ``output`` (its path) and, for FVMR's gallery, ``gallery`` (its folder)."""
    if (features is None) != (queries is None):
        raise PredictError("--features and --queries go together")
    if features is not None and split is not None:
        raise PredictError("give either --split or --features/--queries, not both")
    if method not in METHODS:
        raise PredictError(f"method must be one of {METHODS}, got {method!r}")
    if jax.process_count() > 1:
        raise PredictError("vmr-jax predict runs in a single process")
    config = checkpointing.load_config(workdir)
    for key, value in overrides:
        config_cli.apply_override(config, key, value)
    family = get_family(config.model.name)
    if family.is_corpus:
        raise PredictError(
            f"vmr-jax predict answers single-video families; {family.name!r} retrieves "
            "from a corpus: `vmr-jax eval` writes its TVR submission"
        )
    use_gallery = method == "gallery" or (method == "auto" and family.gallery)
    if use_gallery and not family.gallery:
        raise PredictError(
            f"method 'gallery' needs a family with a moment gallery (fvmr), not {family.name!r}"
        )
    recalls = tuple(int(n) for n in config.evals.get("recalls", (1, 5)))
    top_k = int(top_k or max(recalls))
    nms = float(config.evals.get("nms_thresh", 0.5) if nms_thresh is None else nms_thresh)

    mesh = sharding.make_mesh(config.mesh)
    data = trainer.DataSources(config)
    if features is not None:
        query_set = file_queries(features, queries, config, data.datasets.text)
    else:
        query_set = split_queries(data, split or config.evals.get("split", "val"))
    model, state, step, checkpoint = restore_state(workdir, config, data, mesh, step)
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    gallery_dir = None
    if use_gallery:
        found, gallery_dir = gallery_for(
            workdir, config, model, variables, query_set, mesh, step, checkpoint, rebuild_gallery
        )
        times, scores = answer_with_gallery(
            config, model, variables, query_set, found, mesh, top_k, nms
        )
    else:
        times, scores = answer_with_forward(config, state, query_set, mesh, top_k, nms)

    name = query_set.source.get("split") or "files"
    output = output or os.path.join(workdir, "predict", f"{name}_step{step}.json")
    header = {
        "format": FORMAT,
        "model": config.model.name,
        "method": "gallery" if use_gallery else "forward",
        "source": query_set.source,
        "step": step,
        "checkpoint": checkpoint,
        "top_k": top_k,
        "nms_thresh": nms,
        "time_unit": "seconds",
        "num_queries": len(query_set),
    }
    if sharding.is_main_process():
        write_predictions(output, header, query_set, times, scores)
    return {**header, "output": output, "gallery": gallery_dir}


def write_predictions(
    path: str, header: Mapping[str, Any], queries: QuerySet, times: np.ndarray, scores: np.ndarray
) -> None:
    """The predictions JSON: ``header`` plus one entry per query (NaN slots left out)."""
    entries = []
    for q, query_id in enumerate(queries.query_ids):
        moments = [
            [float(t[0]), float(t[1]), float(s)]
            for t, s in zip(times[q], scores[q])
            if not np.isnan(t).any()
        ]
        entries.append(
            {
                "query_id": query_id,
                "video_id": queries.video_ids[int(queries.video_row[q])],
                "duration": float(queries.durations[q]),
                "moments": moments,
            }
        )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({**header, "predictions": entries}, f, indent=1)
        f.write("\n")
