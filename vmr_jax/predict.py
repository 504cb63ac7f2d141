"""``vmr-jax predict``: the ranked moments of a trained checkpoint, written as one JSON file.

Inputs: the checkpoint of a training workdir (``--step``, default the latest; the model, data
and mesh come from the workdir's ``config.json`` as for ``vmr-jax eval``), and either

* a split of the configured data (``--split``, default ``evals.split``), or
* the user's own files: ``--features`` (``.h5``/``.hdf5`` with one ``[T, D]`` dataset per video
  id, or ``.npz`` keyed by video id) and ``--queries`` (a JSON list of ``{"query_id",
  "video_id", "duration", "query"}``; ``duration`` in seconds).  Videos are fitted to the
  config's clips as the input pipeline does (``data.num_input_clips``, ``clip_sampling``,
  ``normalize``); the query text is encoded with the run's saved text encoder
  (``WORKDIR/text_encoder``, :mod:`vmr_jax.text.saved`), so this path reads no training
  data and works on a copied workdir: ``text_mode='tokens'`` (word vocabulary or SentencePiece
  model) and ``'glove'`` (the training table; words new to it are read from
  ``data.glove_path`` when that file is here, else zeros).  ``text_mode='features'``
  (precomputed token features, e.g. RoBERTa) cannot be rebuilt from text and is refused.

The model comes from :func:`vmr_jax.predictor.restore_for_inference` (parameters only);
this module is the command-line wrapper of :mod:`vmr_jax.predictor`.

Families: single-video ones (``Family.task == 'svmr'``: fvmr, mgpn, tan2d, vlanet).  FVMR
answers through its common-space gallery (:mod:`vmr_jax.retrieval.gallery`;
``method='gallery'``, the default for a family whose record declares ``gallery``): every
video's ``phi_m(m)`` encoded once and saved under ``WORKDIR/gallery/<name>_step<N>`` with
the step, checkpoint and inputs it was built from, reused by the next call when they match;
each query is then one ``phi_s(s)`` and one dot product per moment.  The others (and FVMR
with ``method='forward'``) run the eval forward pass and the official 2D-TAN decoding
(:func:`vmr_jax.evaluation.svmr.decode_predictions`).  Corpus families (xml) are refused:
``vmr-jax eval`` writes their TVR submission.

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

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from data_pipelines.annotations import DataError
from data_pipelines.feature_stores import Hdf5Store, check_feature_array
from data_pipelines.input_pipeline import DATA_DEFAULTS, TextInputs
from data_pipelines.sources import DataSources
from data_pipelines.video_tables import InMemoryVideos, fit_clips
from vmr_jax import checkpointing, config_cli, sharding, xla_cache
from vmr_jax.evaluation.prediction_files import PREDICT_FORMAT
from vmr_jax.models import get_family
from vmr_jax.predictor import (
    PredictError,
    QuerySet,
    answer_with_forward,
    answer_with_gallery,
    encode_texts,
    gallery_for,
    restore_for_inference,
    text_inputs_for,
)
from vmr_jax.text.tokenizer import split_words

__all__ = ["FORMAT", "METHODS", "PredictError", "predict_workdir", "write_predictions"]

logger = logging.getLogger(__name__)

FORMAT = PREDICT_FORMAT  # what `vmr-jax score` detects (evaluation.prediction_files)
METHODS = ("auto", "gallery", "forward")


# --------------------------------------------------------------------------- inputs
def split_queries(data: DataSources, split: str) -> QuerySet:
    """Every query of a split of the configured data."""
    prepared = data.prepared(split)

    def query_arrays(index):
        batch = prepared.query_batch(index)
        return {k: v for k, v in batch.items() if k.startswith("query_") and k != "query_index"}

    return QuerySet(
        query_ids=list(prepared.query_ids),
        video_index=np.asarray(prepared.video_index, np.int64),
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
    arrays = encode_texts([e["query"] for e in entries], text, data, queries_path)
    return QuerySet(
        query_ids=[e["query_id"] for e in entries],
        video_index=np.array([row[e["video_id"]] for e in entries], np.int64),
        durations=np.array([e["duration"] for e in entries], np.float32),
        video_ids=video_ids,
        videos=videos,
        query_arrays=lambda index: {k: v[index] for k, v in arrays.items()},
        source={
            "features": os.path.abspath(features_path),
            "queries": os.path.abspath(queries_path),
        },
    )


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
    xla_cache.enable()
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
    if features is not None:  # the user's files: no training data needed
        text = text_inputs_for(workdir, config)
        query_set = file_queries(features, queries, config, text)
    else:
        data = DataSources(config)
        query_set = split_queries(data, split or config.evals.get("split", "val"))
    restored = restore_for_inference(workdir, step, mesh=mesh, overrides=overrides)
    step, checkpoint = restored.step, restored.checkpoint
    gallery_dir = None
    if use_gallery:
        found, gallery_dir = gallery_for(
            workdir,
            config,
            restored.model,
            restored.variables,
            query_set,
            mesh,
            step,
            checkpoint,
            rebuild_gallery,
        )
        times, scores = answer_with_gallery(
            config, restored.model, restored.variables, query_set, found, mesh, top_k, nms
        )
    else:
        times, scores = answer_with_forward(
            config, restored.state, query_set, mesh, top_k, nms, family
        )

    name = query_set.source.get("split") or "files"
    output = output or os.path.join(workdir, "predict", f"{name}_step{step}.json")
    header = {
        "format": FORMAT,
        "model": family.name,
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
                "video_id": queries.video_ids[int(queries.video_index[q])],
                "duration": float(queries.durations[q]),
                "moments": moments,
            }
        )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({**header, "predictions": entries}, f, indent=1)
        f.write("\n")
