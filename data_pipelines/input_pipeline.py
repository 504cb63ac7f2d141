"""tf.data input pipeline: canonical records -> fixed-shape host batches of numpy arrays.

The batches follow the contract in ``vmr_jax/models/__init__.py`` (keys ``video_features``,
``video_mask``, ``query_tokens`` or ``query_features``, ``query_mask``, ``duration``, ``spans``,
``span_mask``, ``query_index``, ``video_index``, ``valid``).  The pipeline is model-agnostic: it
yields spans, never targets.  ``video_index [B] int32`` is the query's row in its split's video
table (:attr:`PreparedSplit.video_index`): two queries of the same video share it, which is what
a weakly supervised contrastive loss needs to keep a video's other queries out of its
negatives.

Steps.  A split is prepared once in NumPy (:func:`prepare_split`): every video is resampled to
``num_input_clips`` with the 2D-TAN rule (:func:`resample_clips`), every query is encoded and
padded, spans are padded; then tf.data streams record indices -- shuffled with a seed and
repeated for training, in order and padded for evaluation -- cut into global batches, keeps
this host's rows, gathers the rows from the prepared arrays (in parallel, off the training
thread) and prefetches.

2D-TAN resampling (Huntersxsx/MGPN ``lib/datasets/__init__.py average_to_fixed_length``, the
same in microsoft/2D-TAN): optionally L2-normalise each native clip (``normalize``; the
datasets' ``F.normalize(features, dim=1)``), then with ``T`` native clips and ``N`` bins,
``idx[k] = min(round(float32(k) / N * T), T - 1)`` for ``k = 0..N`` (float32 arithmetic and
round-half-to-even, as torch); bin ``k`` is the mean of clips ``idx[k] .. idx[k+1] - 1`` or, when
that range is empty, clip ``idx[k]`` alone.  Because of the ``T - 1`` clamp the last native
clip is only used when the last bin is empty (``T = 5, N = 2`` gives bins ``mean(x0, x1)``
and ``mean(x2, x3)``): kept for parity with the official code.  Clip timestamps are not used;
clips are taken to cover ``[0, duration]`` evenly, so ``video_mask`` is all ones.

Text (``text_mode``):

* ``'tokens'``: ``query_tokens [B, L] int32`` from the split's tokenizer -- the word
  :class:`~vmr_jax.text.tokenizer.Vocabulary` of the training queries (``tokenizer='word'``,
  ``min_word_count``, size cap ``vocab_size``) or a SentencePiece model
  (``tokenizer='sentencepiece'``, file ``sentencepiece_model``, trained on the training queries
  with ``vocab_size`` pieces when the file does not exist yet).  0 is padding, 1 unknown.
* ``'features'``: ``query_features [B, L, Dq]`` from the records' ``query_token_features``
  (RoBERTa features; the synthetic benchmark's noisy word vectors).
* ``'glove'``: ``query_features [B, L, dim]`` = GloVe vectors (file ``glove_path``) of the words
  (rule ``word_split``: :data:`~vmr_jax.text.tokenizer.WORD_SPLITS`); words absent from the
  file get zeros, random vectors with ``glove_missing='random'``, or torchtext's row ``N`` of
  the file with ``'row:N'`` (:mod:`vmr_jax.text.glove`).  The vocabulary is every word of
  every split: the vectors are fixed, so this is the same as reading the whole GloVe table, as
  MGPN does.
  Also ``query_tokens [B, L] int32``, the words' rows of that table (``TextInputs.embeddings``),
  for a model whose word table starts as the GloVe rows and trains (FVMR's
  ``model.word_embed='glove'``); the other families read the vectors.

Semantic role tree (FVMR, ``semantic_tree`` = ``'spacy'`` or ``'synthetic'``; ``''``, the
default, adds nothing): every query's tree by :mod:`vmr_jax.text.semantic_tree` -- batch keys
``tree_verbs [B, tree_max_verbs, 2] i32`` and ``tree_nouns [B, tree_max_nouns, 2] i32``
(inclusive word spans, ``-1, -1`` for absent nodes) and ``tree_edges [B, tree_max_verbs,
tree_max_nouns] f32``, positions in :func:`~vmr_jax.text.tokenizer.split_words` of the query cut
to ``max_query_len`` (nodes past the limits dropped by rule, counted in
``PreparedSplit.tree_summary`` and logged).  The text encoding must give one row per word: a
SentencePiece tokenizer, or token features with other rows than words (a built dataset's
RoBERTa tokens), is an error.  ``'spacy'`` parses with ``spacy_model`` (``pip install
'vmr_jax[srl]'``) once per dataset: parses are cached by query text in ``tree_cache`` or, for
a built dataset, in ``<dir>/semantic_parses_spacy-<model>.json`` (written on first use; a
complete cache never loads spaCy).  ``'synthetic'`` uses the synthetic benchmark's grammar.

Subtitle words (``subtitle_words``, Cascaded MPN): every batch and every row of the video
table (so a corpus index too) also carries ``subtitle_word_features [B, W, Dw]``,
``subtitle_word_mask [B, W]``, ``subtitle_word_sentence [B, W] i32`` and ``subtitle_coverage
[B, L, S]`` of the records' ``subtitle_words``, ``W = max_subtitle_words``, ``S =
max_subtitle_sentences``; rules, cuts and their counts (``PreparedSplit.subtitle_summary``):
:mod:`data_pipelines.subtitle_batches`.

Hard negatives (PREM's localizer; ``make_train_iterator(..., negatives=NegativeSampler)``):
each training batch also carries ``n`` negative videos per example, ``negative_<field> [B, n,
...]`` of the video table and ``negative_video_index [B, n]``, drawn from the mined lists by
the example's position in the training stream (:mod:`data_pipelines.hard_negatives`).

Lengths: queries longer than ``max_query_len`` keep their first ``max_query_len`` tokens: one
warning per split gives the number cut and the longest query's id and length
(:func:`~data_pipelines.text_inputs.warn_cut_queries`; training goes on, as the reference
code cuts too), and ``PreparedSplit.num_truncated`` keeps the count; with
``cut_long_queries=False`` (official MGPN / 2D-TAN mode) such a query is an error instead
(:func:`~data_pipelines.text_inputs.check_query_lengths`).  A query with no
token (e.g. only punctuation) is an error naming it.  Spans: ``max_spans`` slots (0: the most
spans of any record in the split); a record with more is an error, never truncated.

Hosts: a global batch of ``global_batch`` rows is cut the same way on every host, and host
``process_index`` keeps rows ``[i * b, (i + 1) * b)`` with ``b = global_batch / process_count``,
so the data order does not depend on the number of hosts.  Training shuffles with ``seed``
(``tf.data`` shuffle over the whole split, reshuffled each epoch) and repeats forever, dropping
no example (batches run across epoch boundaries).  Evaluation runs once, in record order; the
last global batch is completed with padding rows that repeat record 0 (so models see finite,
non-degenerate inputs) with ``valid = 0`` and ``query_index = -1``: every query counts once.

Config fields read (``config.data``): ``name``, ``num_input_clips``, ``normalize``,
``text_mode``, ``tokenizer``, ``max_query_len``, ``vocab_size``, ``min_word_count``,
``sentencepiece_model``, ``glove_path``, ``glove_missing``, ``word_split``,
``cut_long_queries``, ``max_spans``, ``prefetch``,
``semantic_tree``, ``spacy_model``, ``tree_max_verbs``, ``tree_max_nouns``, ``tree_cache``,
``subtitle_words``, ``max_subtitle_words``, ``max_subtitle_sentences``, ``seed`` (synthetic
data seed) and ``synthetic`` (the ``SyntheticSpec`` fields).  Fields with a default in
:data:`DATA_DEFAULTS` may be left out.  Batch sizes and the shuffle seed are arguments.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from data_pipelines import hard_negatives, query_trees, synthetic
from data_pipelines.hard_negatives import NegativeSampler
from data_pipelines.records import Record
from data_pipelines.stored import StoredDataset, StoredSplit
from data_pipelines.subtitle_batches import with_subtitle_words
from data_pipelines.tensorflow_runtime import import_tensorflow
from data_pipelines.text_inputs import (  # noqa: F401  (re-exported)
    DATA_DEFAULTS,
    TEXT_MODES,
    TextInputs,
    build_text_inputs,
    check_query_lengths,
    check_text_files,
    data_field,
    encode_queries,
    warn_cut_queries,
)
from data_pipelines.video_tables import (  # noqa: F401  (resampling helpers re-exported)
    CLIP_SAMPLING,
    InMemoryVideos,
    StoredVideos,
    bin_edges,
    fit_clips,
    l2_normalize_clips,
    resample_clips,
)
from vmr_jax.text.tokenizer import Vocabulary

tf = import_tensorflow()  # quiet, and off the accelerators JAX uses
logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PreparedSplit:
    """A split as padded arrays: a table of fitted videos and per-query rows.

    ``videos.take(rows)`` gives ``video_features``/``video_mask`` (and ``subtitle_features``)
    of video rows; ``query_features`` (text mode 'features' on a built dataset) gives the
    padded token features of query indices, read on demand.
    """

    videos: InMemoryVideos | StoredVideos
    video_index: np.ndarray  # i32 [Q] row of each query's video
    video_ids: list[str]  # [V] video id of each row of ``videos``
    query: dict[str, np.ndarray]  # per-query arrays, leading axis Q
    query_ids: list[str]
    num_truncated: int
    query_features: Callable[[np.ndarray], np.ndarray] | None = None
    tree_summary: dict[str, float] | None = None  # semantic trees: kept nodes and drops
    subtitle_summary: dict[str, int] | None = None  # subtitle words: videos, cuts, empty

    def __len__(self) -> int:
        return len(self.query_ids)

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    def query_batch(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """The query-side arrays of record indices ``index [B]`` (``-1``: padding, record 0),
        without any video: what a corpus search needs."""
        index = np.asarray(index, np.int64)
        rows = np.where(index >= 0, index, 0)
        batch = {k: v[rows] for k, v in self.query.items()}
        if self.query_features is not None:
            batch["query_features"] = self.query_features(rows)
        batch["query_index"] = np.where(index >= 0, index, -1).astype(np.int32)
        batch["valid"] = (index >= 0).astype(np.float32)
        return batch


def prepare_split(
    records: Sequence[Record] | StoredSplit,
    config_data: Any,
    text: TextInputs | None = None,
    name: str = "",
) -> PreparedSplit:
    """Fits every video's clips once (in memory) or on demand (a built dataset) and encodes /
    pads every query of ``records``."""
    if not len(records):
        raise ValueError(f"split {name!r} has no record")
    text = text or TextInputs(data_field(config_data, "text_mode"))
    if text.mode != "features" and text.encoder is None:
        raise ValueError(f"text_mode={text.mode!r} needs TextInputs from build_text_inputs")
    num_clips = data_field(config_data, "num_input_clips")
    normalize = bool(data_field(config_data, "normalize"))
    sampling = data_field(config_data, "clip_sampling")
    subtitles = bool(data_field(config_data, "subtitles"))

    lazy_tokens = None
    if isinstance(records, StoredSplit):
        if subtitles and "subtitle" not in records.feature_dims:
            raise ValueError(f"split {name!r}: config.data.subtitles but no subtitle features")
        videos = StoredVideos(records, num_clips, sampling, normalize, subtitles)
        video_index = records.video_row.astype(np.int32)  # the on-disk field
        video_ids = [""] * records.num_videos
        for q, row in enumerate(records.video_row):
            video_ids[row] = records[q].video_id
        if text.mode == "features":
            lazy_tokens = _stored_token_reader(records, data_field(config_data, "max_query_len"))
    else:
        videos, video_index, video_ids = _fit_in_memory(
            records, num_clips, sampling, normalize, subtitles, name
        )
    subtitle_summary = None
    if data_field(config_data, "subtitle_words"):
        videos, subtitle_summary = with_subtitle_words(
            videos, records, video_index, config_data, name
        )

    max_spans = data_field(config_data, "max_spans") or max(len(r.spans_s) for r in records)
    spans = np.zeros((len(records), max_spans, 2), np.float32)
    span_mask = np.zeros((len(records), max_spans), np.float32)
    for q, r in enumerate(records):
        if len(r.spans_s) > max_spans:
            raise ValueError(
                f"record {r.query_id!r}: field 'spans_s' has {len(r.spans_s)} spans, "
                f"more than config.data.max_spans={max_spans}"
            )
        spans[q, : len(r.spans_s)] = r.spans_s
        span_mask[q, : len(r.spans_s)] = 1.0

    max_len = data_field(config_data, "max_query_len")
    if lazy_tokens is not None:
        token_counts = records.num_query_tokens
        lengths = np.minimum(token_counts, max_len)
        if (lengths < 1).any():
            q = int(np.argmin(lengths))
            raise ValueError(f"record {records[q].query_id!r}: no query token features")
        query = {"query_mask": (np.arange(max_len)[None] < lengths[:, None]).astype(np.float32)}
    else:
        query, token_counts = encode_queries(records, text, max_len)
    query_ids = [r.query_id for r in records]
    truncated = check_query_lengths(
        token_counts, query_ids, max_len, name, data_field(config_data, "cut_long_queries")
    )
    tree_summary = None
    if data_field(config_data, "semantic_tree"):
        trees, tree_summary = query_trees.query_trees(
            records,
            data_field(config_data, "semantic_tree"),
            text_mode=text.mode,
            word_tokens=isinstance(text.encoder, Vocabulary),
            spacy_model=data_field(config_data, "spacy_model"),
            cache=data_field(config_data, "tree_cache"),
            max_verbs=data_field(config_data, "tree_max_verbs"),
            max_nouns=data_field(config_data, "tree_max_nouns"),
            max_words=max_len,
            name=name,
        )
        query.update(trees)
    query.update(
        duration=np.asarray([r.duration_s for r in records], np.float32),
        spans=spans,
        span_mask=span_mask,
    )
    return PreparedSplit(
        videos=videos,
        video_index=video_index,
        video_ids=video_ids,
        query=query,
        query_ids=query_ids,
        num_truncated=truncated,
        query_features=lazy_tokens,
        tree_summary=tree_summary,
        subtitle_summary=subtitle_summary,
    )


def _fit_in_memory(records, num_clips, sampling, normalize, subtitles, name):
    rows: dict[str, int] = {}
    feats, masks, subs = [], [], []
    video_index = np.empty(len(records), np.int32)
    for q, r in enumerate(records):
        if r.video_id not in rows:
            rows[r.video_id] = len(feats)
            f, m = fit_clips(r.video_features, num_clips, sampling, normalize)
            feats.append(f)
            masks.append(m)
            if subtitles:
                if r.subtitle_features is None:
                    raise ValueError(
                        f"record {r.query_id!r}: field 'subtitle_features' is missing "
                        "(config.data.subtitles)"
                    )
                subs.append(fit_clips(r.subtitle_features, num_clips, sampling)[0])
        video_index[q] = rows[r.video_id]
    dims = {v.shape[1] for v in feats}
    if len(dims) != 1:
        raise ValueError(f"split {name!r}: video_features of differing widths {sorted(dims)}")
    table = InMemoryVideos(np.stack(feats), np.stack(masks), np.stack(subs) if subs else None)
    return table, video_index, list(rows)


def _stored_token_reader(split: StoredSplit, max_len: int) -> Callable[[np.ndarray], np.ndarray]:
    width = split.feature_dims.get("query")
    if width is None:
        raise ValueError(
            f"text_mode='features' but the built dataset {split.directory} has no query "
            "token features"
        )

    def read(index: np.ndarray) -> np.ndarray:
        out = np.zeros((len(index), max_len, width), np.float32)
        for k, tokens in enumerate(split.query_features(index)):
            out[k, : min(len(tokens), max_len)] = tokens[:max_len]
        return out

    return read


def gather_batch(
    split: PreparedSplit,
    index: np.ndarray,
    negatives: NegativeSampler | None = None,
    positions: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The batch of record indices ``index [B]``; ``-1`` marks a padding row (record 0 copy).

    ``video_index [B] int32`` is each row's video in the split's video table (record 0's for
    padding rows, like every other field).  With ``negatives``, also the negative videos drawn
    for the examples at stream ``positions [B]``
    (:func:`~data_pipelines.hard_negatives.negative_batch`).
    """
    batch = split.query_batch(index)
    rows = np.maximum(np.asarray(index, np.int64), 0)
    video_rows = split.video_index[rows]
    batch.update(split.videos.take(video_rows))
    batch["video_index"] = np.asarray(video_rows, np.int32)
    if negatives is not None:
        if positions is None:
            raise ValueError("negative videos need each example's stream position")
        batch.update(hard_negatives.negative_batch(split.videos, negatives, rows, positions))
    return batch


# --------------------------------------------------------------------------- tf.data
def _host_slice(global_batch: int, process_index: int | None, process_count: int | None):
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if global_batch % count:
        raise ValueError(f"global batch {global_batch} is not divisible by {count} hosts")
    size = global_batch // count
    return index * size, size


def _as_prepared(records, config_data, text, name) -> PreparedSplit:
    if isinstance(records, PreparedSplit):
        return records
    return prepare_split(records, config_data, text, name)


def _batches(
    split: PreparedSplit,
    index_ds: tf.data.Dataset,
    host_batch: int,
    config_data: Any,
    negatives: NegativeSampler | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Gathered batches of ``index_ds``: record indices ``[b]``, or with ``negatives`` pairs
    (record indices ``[b]``, stream positions ``[b]``)."""
    zero = np.zeros(1, np.int64)
    example = gather_batch(split, zero, negatives, zero)
    keys = sorted(example)
    dtypes = [tf.as_dtype(example[k].dtype) for k in keys]

    def gather(index, positions=None):
        batch = gather_batch(split, index, negatives, positions)
        return [batch[k] for k in keys]

    def to_dict(*index_and_positions):
        arrays = tf.numpy_function(gather, list(index_and_positions), dtypes, stateful=False)
        out = {}
        for k, a in zip(keys, arrays):
            a.set_shape([host_batch, *example[k].shape[1:]])
            out[k] = a
        return out

    ds = index_ds.map(to_dict, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(data_field(config_data, "prefetch"))
    return ds.as_numpy_iterator()


def make_train_iterator(
    records: Sequence[Record] | PreparedSplit,
    config_data: Any,
    global_batch: int,
    seed: int,
    *,
    text: TextInputs | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    start_step: int = 0,
    negatives: NegativeSampler | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless shuffled host batches of ``global_batch / process_count`` rows.

    ``start_step``: skip that many batches first (a resumed run) -- on the stream of record
    indices, so no features are gathered for the skipped batches.

    ``negatives``: every batch also carries ``negative_video_features [B, n, L, Dv]``,
    ``negative_video_mask [B, n, L]`` (``negative_subtitle_features`` with subtitles, and every
    other field of the video table likewise) and ``negative_video_index [B, n] int32``
    (:func:`~data_pipelines.hard_negatives.negative_batch`).  Each example's draw is keyed by
    its position in the global stream (step * global_batch + row), carried beside the shuffled
    record index, so resumed runs and any host count draw the same videos.
    """
    split = _as_prepared(records, config_data, text, "train")
    start, size = _host_slice(global_batch, process_index, process_count)
    n = len(split)
    ds = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
    if negatives is not None:
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.counter())
    ds = ds.batch(global_batch, drop_remainder=True).skip(start_step)

    def host_rows(*parts):  # record indices [, stream positions]
        rows = tuple(x[start : start + size] for x in parts)
        return rows if len(rows) > 1 else rows[0]

    ds = ds.map(host_rows)
    return _batches(split, ds, size, config_data, negatives)


def make_eval_iterator(
    records: Sequence[Record] | PreparedSplit,
    config_data: Any,
    global_batch: int,
    *,
    text: TextInputs | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass in record order; the last batch padded (``valid=0``, ``query_index=-1``)."""
    split = _as_prepared(records, config_data, text, "eval")
    start, size = _host_slice(global_batch, process_index, process_count)
    n = len(split)
    padded = -(-n // global_batch) * global_batch
    index = np.concatenate([np.arange(n), np.full(padded - n, -1)]).astype(np.int64)
    ds = tf.data.Dataset.from_tensor_slices(index).batch(global_batch)
    ds = ds.map(lambda b: b[start : start + size])
    return _batches(split, ds, size, config_data)


def num_eval_batches(num_records: int, global_batch: int) -> int:
    """Batches of :func:`make_eval_iterator` (the same on every host)."""
    return -(-num_records // global_batch)


# --------------------------------------------------------------------------- datasets
@dataclasses.dataclass
class Datasets:
    """The splits of ``config.data.name`` and how their text is encoded."""

    splits: dict[str, list[Record] | StoredSplit]
    text: TextInputs
    video_feature_dim: int
    query_feature_dim: int  # width of query_features (0 in mode 'tokens')

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size


def get_datasets(config: Any) -> Datasets:
    """Splits of ``config.data.name`` plus the fitted text encoding.

    ``'synthetic'``: records of ``data_pipelines.synthetic`` (``config.data.synthetic`` sizes,
    ``config.data.seed``), in memory.  A benchmark name (``charades_sta``, ``tacos``,
    ``activitynet``, ``didemo``, ``tvr``): the dataset built by ``vmr-jax data build`` in
    ``config.data.dir``, whose features are read on demand; ``config.data.features``, when
    set, must name the feature set it was built from.  A missing GloVe file is an error
    before any split is read (:func:`~data_pipelines.text_inputs.check_text_files`).
    """
    data = config.data
    name = data_field(data, "name")
    check_text_files(data)
    if name == "synthetic":
        spec = synthetic.spec_from_config(data.get("synthetic") if "synthetic" in data else None)
        splits = synthetic.make_splits(spec, int(data_field(data, "seed")))
    else:
        splits = _stored_splits(data, name)
    text = build_text_inputs(data, splits)
    first = splits["train"][0] if "train" in splits else next(iter(splits.values()))[0]
    if isinstance(first, Record):
        video_dim = int(first.video_features.shape[1])
        token_dim = (
            first.query_token_features.shape[1] if first.query_token_features is not None else 0
        )
    else:
        dims = next(iter(splits.values())).feature_dims
        video_dim, token_dim = dims["video"], dims.get("query", 0)
    if text.mode == "features":
        query_dim = token_dim
    elif text.mode == "glove":
        query_dim = text.embeddings.shape[1]
    else:
        query_dim = 0
    return Datasets(splits, text, int(video_dim), int(query_dim))


def _stored_splits(data: Any, name: str) -> dict[str, StoredSplit]:
    from data_pipelines.benchmarks import benchmark_names

    known = ["synthetic", *benchmark_names()]
    if name not in known:
        raise ValueError(f"unknown config.data.name {name!r}; known: {known}")
    directory = data_field(data, "dir")
    if not directory:
        raise ValueError(
            f"config.data.dir must name the dataset built by `vmr-jax data build --dataset "
            f"{name} ...` (its --output_dir)"
        )
    built = StoredDataset(directory)
    if built.info["dataset"] != name:
        raise ValueError(
            f"{directory} holds {built.info['dataset']!r}, config.data.name is {name!r}"
        )
    wanted = data.get("features") if "features" in data else None
    if wanted and built.info["features"] != wanted:
        raise ValueError(
            f"{directory} was built from features {built.info['features']!r}, "
            f"config.data.features is {wanted!r}"
        )
    return {s: built.split(s) for s in built.split_names}
