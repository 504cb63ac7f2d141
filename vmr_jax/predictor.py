"""Answer queries with a trained checkpoint from Python: parameters only, no training data.

:func:`restore_for_inference` rebuilds a workdir's model from its ``config.json`` and the
family's example batch and restores the model variables of one checkpoint (``params`` and
``batch_stats``; never the optimiser moments, never the dataset).  The text encoder comes from
``WORKDIR/text_encoder`` (:mod:`vmr_jax.text.saved`, written by ``vmr-jax train``), so a
copied workdir answers free-text queries on a machine without the training data::

    from vmr_jax import Predictor
    predictor = Predictor.from_workdir("workdirs/mgpn", step="best")
    moments = predictor.predict(video_features, duration_s, ["a person opens the door"])
    # -> [[(start_s, end_s, score), ...] per query, best first, after the official NMS]

Corpus families answer against an index: ``predictor.build_index(videos)`` then
``predictor.search(queries, index)`` (the two-stage search of
:mod:`vmr_jax.retrieval.corpus`).  ``vmr-jax predict`` (:mod:`vmr_jax.predict`) is a thin
wrapper over these pieces; FVMR's precomputed gallery lives there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.struct
import jax
import ml_collections
import numpy as np

from data_pipelines.annotations import DataError
from data_pipelines.feature_stores import check_feature_array
from data_pipelines.text_inputs import DATA_DEFAULTS, TextInputs, check_query_lengths
from data_pipelines.video_tables import InMemoryVideos, fit_clips
from vmr_jax import checkpointing, config_cli, sharding, xla_cache
from vmr_jax.evaluation import evaluators
from vmr_jax.models import Family, get_family
from vmr_jax.retrieval import gallery
from vmr_jax.text import saved
from vmr_jax.text.glove import read_glove_words
from vmr_jax.text.tokenizer import UNK_ID

logger = logging.getLogger(__name__)


class PredictError(ValueError):
    """A request the predictor cannot serve (names the input or field)."""


# --------------------------------------------------------------------------- restore
@flax.struct.dataclass
class InferenceState:
    """What the eval step reads of a train state: the variables and the model's apply."""

    params: Any
    batch_stats: Any
    apply_fn: Callable = flax.struct.field(pytree_node=False)


@dataclasses.dataclass
class Restored:
    """A checkpoint restored for inference (:func:`restore_for_inference`)."""

    config: ml_collections.ConfigDict
    family: Family
    model: Any
    state: InferenceState
    step: int
    checkpoint: str
    mesh: jax.sharding.Mesh

    @property
    def variables(self) -> dict[str, Any]:
        return evaluators.variables_of(self.state)


def restore_for_inference(
    workdir: str,
    step: int | str | None = "best",
    *,
    mesh: jax.sharding.Mesh | None = None,
    overrides: Sequence[tuple[str, str]] = (),
) -> Restored:
    """The model of a workdir's checkpoint, parameters only.

    ``step``: an int, ``'best'`` (by ``train.best_metric``; the latest when no evaluated step
    is kept) or None (the latest).  The model is built from ``config.json``; its shapes come
    from an abstract init on the family's example batch (no data read) and are checked against
    the checkpoint's; the variables are restored replicated on ``mesh`` (default: the
    config's mesh).  ``overrides``: ``(dotted field,
    value text)`` pairs applied to the saved config.
    """
    config = checkpointing.load_config(workdir)
    for key, value in overrides:
        config_cli.apply_override(config, key, value)
    family = get_family(config.model.name)
    mesh = mesh or sharding.make_mesh(config.mesh)
    model = family.create_model(config.model)
    example = family.example_batch(config.model)

    def init(rng):
        return model.init({"params": rng, "dropout": rng}, example, train=False)

    expected = jax.eval_shape(init, jax.random.PRNGKey(0))
    manager = checkpointing.create_checkpoint_manager(workdir, config.train, read_only=True)
    try:
        chosen = checkpointing.select_step(manager, config.train, step)
        path = os.path.join(str(manager.directory), str(chosen))
    finally:
        manager.close()
    variables = checkpointing.restore_variables(path, sharding.replicated(mesh), expected)
    state = InferenceState(
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        apply_fn=model.apply,
    )
    return Restored(config, family, model, state, chosen, path, mesh)


def text_inputs_for(workdir: str, config: ml_collections.ConfigDict) -> TextInputs:
    """The workdir's saved text encoder; for a workdir trained before encoders were saved,
    the one fitted on its configured data (which must then be readable)."""
    try:
        return saved.load_text_inputs(workdir)
    except FileNotFoundError as err:
        logger.info("%s; fitting the text encoder on the configured data instead", err)
        from data_pipelines.input_pipeline import get_datasets

        return get_datasets(config).text


# --------------------------------------------------------------------------- inputs
@dataclasses.dataclass
class QuerySet:
    """Queries to answer and the videos they ask about.

    ``videos.take(rows)`` gives ``video_features``/``video_mask`` of video rows;
    ``query_arrays(index)`` the ``query_tokens``/``query_features`` and ``query_mask`` of
    query indices; ``source`` says where they came from (JSON, written with the results).
    """

    query_ids: list[str]
    video_index: np.ndarray  # [Q]
    durations: np.ndarray  # [Q] float32 seconds
    video_ids: list[str]  # [V]
    videos: Any
    query_arrays: Callable[[np.ndarray], dict[str, np.ndarray]]
    source: dict[str, Any]

    def __len__(self) -> int:
        return len(self.query_ids)

    def video_durations(self) -> np.ndarray:
        """``[V]`` seconds (the duration given with each video's first query)."""
        rows, first = np.unique(self.video_index, return_index=True)
        out = np.zeros(len(self.video_ids), np.float32)
        out[rows] = self.durations[first]
        return out

    def batch(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """An eval batch of query indices (``-1``: padding, a copy of query 0, ``valid=0``)."""
        index = np.asarray(index, np.int64)
        rows = np.maximum(index, 0)
        batch = dict(self.query_arrays(rows))
        batch.update(self.videos.take(self.video_index[rows]))
        batch["duration"] = self.durations[rows]
        batch["spans"] = np.zeros((len(rows), 1, 2), np.float32)  # unknown: unused
        batch["span_mask"] = np.ones((len(rows), 1), np.float32)
        batch["query_index"] = np.where(index >= 0, index, -1).astype(np.int32)
        batch["valid"] = (index >= 0).astype(np.float32)
        return batch


def encode_texts(
    texts: Sequence[str], text: TextInputs, config_data: Any, source: str
) -> dict[str, np.ndarray]:
    """``query_tokens`` or GloVe ``query_features`` plus ``query_mask`` of raw texts, as the
    input pipeline encodes the configured data's queries.  GloVe words the training table never
    saw are read from ``data.glove_path`` when that file is here (by the rule of
    ``data.glove_missing``); the others read the table's ``<unk>`` row -- the ``'row:N'``
    vector, else zeros -- with a warning when the file is absent.  Words are cut by the saved
    vocabulary's rule (``data.word_split``)."""
    if text.mode == "features":
        raise PredictError(
            f"{source}: the checkpoint reads precomputed query token features "
            "(config.data.text_mode='features'), which cannot be rebuilt from query text; "
            "--queries works for text_mode 'tokens' (word / sentencepiece) and 'glove'"
        )
    max_len = int(config_data.max_query_len)
    if text.mode == "tokens":
        ids = [text.encoder.encode(t) for t in texts]
        table = None
    else:  # glove: the training table, plus rows for words it has never seen
        vocab = dict(text.encoder.index)
        new = sorted({w for t in texts for w in text.encoder.split(t)} - set(vocab))
        table = text.embeddings
        if new:
            path = config_data.get("glove_path", "")
            missing = config_data.get("glove_missing", "zero")
            if path and os.path.exists(path):
                found = read_glove_words(path, new, missing)
            else:
                found = {}
                logger.warning(
                    "%s: %d query words are not in the training vocabulary and the GloVe file "
                    "%r is not here: they get the unknown-word vector",
                    source,
                    len(new),
                    path,
                )
            # A word outside the file reads the <unk> row: the 'row:N' vector, else zeros.
            kept = [w for w in new if w in found]
            vocab.update({w: len(table) + k for k, w in enumerate(kept)})
            vocab.update({w: UNK_ID for w in new if w not in found})
            if kept:
                table = np.concatenate([table, np.stack([found[w] for w in kept])])
        ids = [[vocab[w] for w in text.encoder.split(t)] for t in texts]
    # A query longer than the model's query length is cut, never silently: one warning; in
    # official mode (data.cut_long_queries=False) it is an error, as in the input pipeline.
    check_query_lengths(
        [len(x) for x in ids],
        [f"#{i}" for i in range(len(ids))],
        max_len,
        source,
        config_data.get("cut_long_queries", True),
    )
    ids = [x[:max_len] for x in ids]
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
    # A GloVe-initialised word table (FVMR) has rows for the training vocabulary only: a word
    # it has never seen reads its <unk> row, as Vocabulary.encode does.
    table_ids = np.where(tokens >= len(text.embeddings), UNK_ID, tokens).astype(np.int32)
    return {
        "query_features": table[tokens] * mask[..., None],
        "query_tokens": table_ids,
        "query_mask": mask,
    }


# --------------------------------------------------------------------------- answering
def _padded_batches(num: int, batch_size: int) -> Iterator[np.ndarray]:
    """Query indices in batches of ``batch_size``, the last padded with ``-1``."""
    for start in range(0, num, batch_size):
        index = np.arange(start, min(start + batch_size, num))
        yield np.concatenate([index, np.full(batch_size - len(index), -1)])


def answer_with_forward(
    config, state, queries: QuerySet, mesh, top_k: int, nms_thresh: float, family: Family
) -> tuple[np.ndarray, np.ndarray]:
    """Eval forward pass + ``family.decode`` + the official decoding: ``(times, scores)``
    (score maps: 2D-TAN's cell decoding; moment lists of proposal families: the same NMS)."""
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    eval_step = evaluators.make_eval_step(config, state_sharding, mesh, family)
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
        queries.video_index,
        top_k,
        nms_thresh,
        durations=queries.durations,
    )
    return result.times, result.scores


# --------------------------------------------------------------------------- Python API
Moment = tuple[float, float, float]  # (start_s, end_s, score)


class Predictor:
    """A trained checkpoint answering queries from Python (module docstring)."""

    def __init__(self, restored: Restored, text: TextInputs):
        self.restored = restored
        self.text = text

    @classmethod
    def from_workdir(
        cls,
        workdir: str,
        step: int | str | None = "best",
        *,
        mesh: jax.sharding.Mesh | None = None,
        overrides: Sequence[tuple[str, str]] = (),
    ) -> Predictor:
        """Restores ``step`` (``'best'``, None = latest, or an int) of ``workdir``; turns on
        the persistent XLA compilation cache (:mod:`vmr_jax.xla_cache`)."""
        xla_cache.enable()
        restored = restore_for_inference(workdir, step, mesh=mesh, overrides=overrides)
        return cls(restored, text_inputs_for(workdir, restored.config))

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.restored.config

    @property
    def family(self) -> Family:
        return self.restored.family

    @property
    def step(self) -> int:
        return self.restored.step

    def encode_queries(self, queries: Sequence[str]) -> dict[str, np.ndarray]:
        """Token ids or word vectors plus ``query_mask`` of query texts (the run's encoder)."""
        if isinstance(queries, str):
            queries = [queries]
        return encode_texts(list(queries), self.text, self.config.data, "queries")

    def video_inputs(self, video_features: np.ndarray) -> InMemoryVideos:
        """One video's native clip features ``[T, D]`` fitted to the model's clips as the input
        pipeline fits them (``data.num_input_clips``, ``clip_sampling``, ``normalize``)."""
        data = self.config.data
        dim = self.config.model.get("feature_dim")
        raw = check_feature_array(
            video_features, "video_features", "video", None if dim is None else int(dim)
        )
        field = lambda name: data.get(name, DATA_DEFAULTS.get(name))  # noqa: E731
        fitted, mask = fit_clips(
            raw, int(data.num_input_clips), field("clip_sampling"), field("normalize")
        )
        return InMemoryVideos(fitted[None], mask[None], None)

    def predict(
        self,
        video_features: np.ndarray,
        duration: float,
        queries: Sequence[str],
        *,
        top_k: int | None = None,
        nms_thresh: float | None = None,
    ) -> list[list[Moment]]:
        """Ranked moments of each query in one video (single-video families).

        Args:
          video_features: ``[T, D]`` native clip features of the video (the feature the
            model was trained on); duration: seconds; queries: texts (or one text).
          top_k: moments per query (default ``max(evals.recalls)``); nms_thresh: default
            ``evals.nms_thresh``.
        Returns: per query, ``(start_s, end_s, score)`` best first after the official NMS.
        """
        if self.family.is_corpus:
            raise PredictError(
                f"{self.family.name!r} answers against a corpus: use build_index and search"
            )
        duration = float(duration)
        if not np.isfinite(duration) or duration <= 0:
            raise PredictError(f"duration must be > 0 seconds, got {duration}")
        texts = [queries] if isinstance(queries, str) else list(queries)
        arrays = self.encode_queries(texts)
        query_set = QuerySet(
            query_ids=[str(q) for q in range(len(texts))],
            video_index=np.zeros(len(texts), np.int64),
            durations=np.full(len(texts), duration, np.float32),
            video_ids=["video"],
            videos=self.video_inputs(video_features),
            query_arrays=lambda index: {k: v[index] for k, v in arrays.items()},
            source={"python": "Predictor.predict"},
        )
        evals = self.config.evals
        top_k = int(top_k or max(int(n) for n in evals.get("recalls", (1, 5))))
        nms = float(evals.get("nms_thresh", 0.5) if nms_thresh is None else nms_thresh)
        times, scores = answer_with_forward(
            self.config,
            self.restored.state,
            query_set,
            self.restored.mesh,
            top_k,
            nms,
            self.family,
        )
        return [
            [
                (float(t[0]), float(t[1]), float(s))
                for t, s in zip(times[q], scores[q])
                if not np.isnan(s)
            ]
            for q in range(len(texts))
        ]

    # Corpus families ---------------------------------------------------------------------
    def stages(self) -> Any:
        """The family's corpus stages on this model (corpus families only)."""
        if not self.family.is_corpus:
            raise PredictError(f"{self.family.name!r} is a single-video family: use predict")
        return self.family.corpus(self.restored.model, self.config.model)

    def build_index(
        self,
        videos: Any,
        *,
        video_ids: Sequence | None = None,
        batch_size=64,
        num_videos: int | None = None,
        durations: np.ndarray | None = None,
    ):
        """A :class:`vmr_jax.retrieval.corpus.CorpusIndex` of ``videos`` (``take(rows) ->
        {video_features, video_mask[, subtitle_features]}`` or a callable ``rows -> dict``;
        ``num_videos`` when ``videos`` has no length).  ``durations`` ``[V]`` seconds: needed
        by a model whose frames last ``duration / L`` (``model.clip_length = 0``, e.g.
        Cascaded MPN on ActivityNet)."""
        from vmr_jax.retrieval import corpus

        return corpus.build_index(
            self.stages(),
            self.restored.variables,
            videos,
            self.restored.mesh,
            batch_size=batch_size,
            num_videos=num_videos,
            video_ids=video_ids,
            durations=durations,
        )

    def search(self, queries: Sequence[str] | Mapping[str, np.ndarray], index: Any, **options):
        """Ranked VCMR / VR lists of queries against ``index`` (texts, or a batch of
        ``query_features`` / ``query_mask`` arrays for text mode 'features');
        ``options``: :func:`vmr_jax.retrieval.corpus.search` keywords."""
        from vmr_jax.retrieval import corpus

        batch = dict(queries) if isinstance(queries, Mapping) else self.encode_queries(queries)
        return corpus.search(self.stages(), self.restored.variables, index, batch, **options)
