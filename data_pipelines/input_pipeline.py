"""tf.data input pipeline: canonical records -> fixed-shape host batches of numpy arrays.

The batches follow the contract in ``vmr_jax/models/__init__.py`` (keys ``video_features``,
``video_mask``, ``query_tokens`` or ``query_features``, ``query_mask``, ``duration``, ``spans``,
``span_mask``, ``query_index``, ``valid``).  The pipeline is model-agnostic: it yields spans,
never targets.

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
  (:func:`~vmr_jax.text.tokenizer.split_words`); words absent from the file get zeros, or
  random vectors with ``glove_missing='random'``.  The vocabulary is every word of every split:
  the vectors are fixed, so this is the same as reading the whole GloVe table, as MGPN does.

Lengths: queries longer than ``max_query_len`` keep their first ``max_query_len`` tokens; the
number cut is logged per split and stored in ``PreparedSplit.num_truncated``.  A query with no
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
``sentencepiece_model``, ``glove_path``, ``glove_missing``, ``max_spans``, ``prefetch``,
``seed`` (synthetic data seed) and ``synthetic`` (the ``SyntheticSpec`` fields).  Fields with a
default in :data:`DATA_DEFAULTS` may be left out.  Batch sizes and the shuffle seed are
arguments.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tensorflow as tf

from data_pipelines import synthetic
from data_pipelines.records import Record
from vmr_jax.text.glove import glove_embeddings
from vmr_jax.text.tokenizer import (
    SentencePieceTokenizer,
    TextEncoder,
    Vocabulary,
    train_sentencepiece,
)

logger = logging.getLogger(__name__)

DATA_DEFAULTS: dict[str, Any] = {
    "normalize": False,
    "text_mode": "tokens",
    "tokenizer": "word",
    "vocab_size": 0,
    "min_word_count": 1,
    "sentencepiece_model": "",
    "glove_path": "",
    "glove_missing": "zero",
    "max_spans": 0,
    "prefetch": 2,
    "seed": 0,
}
TEXT_MODES = ("tokens", "features", "glove")


def _field(config_data: Any, name: str) -> Any:
    if name in config_data:
        return config_data[name]
    if name in DATA_DEFAULTS:
        return DATA_DEFAULTS[name]
    raise KeyError(f"config.data.{name} is required")


# --------------------------------------------------------------------------- resampling
def bin_edges(num_native: int, num_bins: int) -> np.ndarray:
    """The official ``idxs``: ``min(round(float32(k) / N * T), T - 1)``, ``int [N + 1]``."""
    k = np.arange(num_bins + 1, dtype=np.float32)
    edges = np.round(k / np.float32(num_bins) * np.float32(num_native)).astype(np.int64)
    return np.minimum(edges, num_native - 1)


def l2_normalize_clips(features: np.ndarray) -> np.ndarray:
    """``F.normalize(x, dim=1)``: each row over ``max(||row||, 1e-12)``.  ``[T, D]``."""
    norm = np.sqrt(np.sum(np.square(features, dtype=np.float32), axis=1, keepdims=True))
    return features / np.maximum(norm, np.float32(1e-12))


def resample_clips(features: np.ndarray, num_bins: int, normalize: bool = False) -> np.ndarray:
    """2D-TAN ``average_to_fixed_length`` (see module docstring).  ``[T, D] -> [N, D]`` f32."""
    x = np.asarray(features, np.float32)
    if normalize:
        x = l2_normalize_clips(x)
    edges = bin_edges(x.shape[0], num_bins)
    lo, hi = edges[:-1], edges[1:]
    # Bin sums from a float64 prefix sum: one pass, no loop over bins.
    prefix = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0, dtype=np.float64)])
    count = hi - lo
    mean = (prefix[hi] - prefix[lo]) / np.maximum(count, 1)[:, None]
    return np.where((count > 0)[:, None], mean, x[lo]).astype(np.float32)


# --------------------------------------------------------------------------- text
@dataclasses.dataclass
class TextInputs:
    """How queries become arrays: the mode, its tokenizer and (glove) its embedding table."""

    mode: str
    encoder: TextEncoder | None = None
    embeddings: np.ndarray | None = None  # f32 [vocab, dim] for mode 'glove'
    num_missing: int = 0  # glove: vocabulary words absent from the file

    @property
    def vocab_size(self) -> int:
        """Token ids range (mode 'tokens'), else 0."""
        return len(self.encoder) if self.mode == "tokens" else 0


def build_text_inputs(config_data: Any, splits: Mapping[str, Sequence[Record]]) -> TextInputs:
    """The tokenizer / embedding table of ``config.data.text_mode``, fit on ``splits['train']``."""
    mode = _field(config_data, "text_mode")
    if mode not in TEXT_MODES:
        raise ValueError(f"config.data.text_mode must be one of {TEXT_MODES}, got {mode!r}")
    if mode == "features":
        return TextInputs(mode)
    if mode == "glove":
        path = _field(config_data, "glove_path")
        if not path:
            raise ValueError("config.data.text_mode='glove' needs config.data.glove_path")
        vocab = Vocabulary.build(r.query_text for recs in splits.values() for r in recs)
        table, missing = glove_embeddings(
            vocab, path, _field(config_data, "glove_missing"), _field(config_data, "seed")
        )
        logger.info("GloVe %s: %d of %d query words missing", path, missing, len(vocab) - 2)
        return TextInputs(mode, vocab, table, missing)
    if "train" not in splits:
        raise ValueError("text_mode='tokens' fits its tokenizer on a 'train' split")
    train_texts = [r.query_text for r in splits["train"]]
    kind = _field(config_data, "tokenizer")
    if kind == "word":
        encoder = Vocabulary.build(
            train_texts, _field(config_data, "min_word_count"), _field(config_data, "vocab_size")
        )
    elif kind == "sentencepiece":
        model = _field(config_data, "sentencepiece_model")
        if not model:
            raise ValueError("tokenizer='sentencepiece' needs config.data.sentencepiece_model")
        if not Path(model).is_file():
            size = _field(config_data, "vocab_size")
            if size <= 0:
                raise ValueError("training a SentencePiece model needs config.data.vocab_size > 0")
            prefix = str(model)[: -len(".model")] if str(model).endswith(".model") else model
            model = train_sentencepiece(train_texts, prefix, size)
            logger.info("trained SentencePiece model %s on %d queries", model, len(train_texts))
        encoder = SentencePieceTokenizer(model)
    else:
        raise ValueError(f"config.data.tokenizer must be 'word' or 'sentencepiece', got {kind!r}")
    return TextInputs(mode, encoder)


# --------------------------------------------------------------------------- prepared split
@dataclasses.dataclass
class PreparedSplit:
    """A split as padded arrays: per-video resampled features and per-query rows."""

    video_features: np.ndarray  # f32 [V, N, D]
    video_row: np.ndarray  # i32 [Q] row of video_features of each query
    query: dict[str, np.ndarray]  # per-query arrays, leading axis Q
    query_ids: list[str]
    num_truncated: int

    def __len__(self) -> int:
        return len(self.query_ids)


def _encode_queries(records: Sequence[Record], text: TextInputs, max_len: int):
    ids_or_feats, lengths, truncated = [], [], 0
    for r in records:
        if text.mode == "features":
            if r.query_token_features is None:
                raise ValueError(
                    f"record {r.query_id!r}: field 'query_token_features' is missing "
                    "(text_mode='features')"
                )
            seq = r.query_token_features
        else:
            seq = text.encoder.encode(r.query_text)
        if len(seq) == 0:
            raise ValueError(
                f"record {r.query_id!r}: field 'query_text' has no token: {r.query_text!r}"
            )
        truncated += len(seq) > max_len
        ids_or_feats.append(seq[:max_len])
        lengths.append(min(len(seq), max_len))
    lengths = np.asarray(lengths)
    mask = (np.arange(max_len)[None, :] < lengths[:, None]).astype(np.float32)
    out = {"query_mask": mask}
    if text.mode == "features":
        dims = {f.shape[1] for f in ids_or_feats}
        if len(dims) != 1:
            raise ValueError(f"query_token_features of differing widths {sorted(dims)}")
        feats = np.zeros((len(records), max_len, dims.pop()), np.float32)
        for q, f in enumerate(ids_or_feats):
            feats[q, : len(f)] = f
        out["query_features"] = feats
    else:
        tokens = np.zeros((len(records), max_len), np.int32)
        for q, ids in enumerate(ids_or_feats):
            tokens[q, : len(ids)] = ids
        if text.mode == "tokens":
            out["query_tokens"] = tokens
        else:
            out["query_features"] = text.embeddings[tokens] * mask[..., None]
    return out, truncated


def prepare_split(
    records: Sequence[Record], config_data: Any, text: TextInputs | None = None, name: str = ""
) -> PreparedSplit:
    """Resamples every video once and encodes / pads every query of ``records``."""
    if not records:
        raise ValueError(f"split {name!r} has no record")
    text = text or TextInputs(_field(config_data, "text_mode"))
    if text.mode != "features" and text.encoder is None:
        raise ValueError(f"text_mode={text.mode!r} needs TextInputs from build_text_inputs")
    num_bins = _field(config_data, "num_input_clips")
    normalize = bool(_field(config_data, "normalize"))

    rows: dict[str, int] = {}
    videos = []
    video_row = np.empty(len(records), np.int32)
    for q, r in enumerate(records):
        if r.video_id not in rows:
            rows[r.video_id] = len(videos)
            videos.append(resample_clips(r.video_features, num_bins, normalize))
        video_row[q] = rows[r.video_id]
    dims = {v.shape[1] for v in videos}
    if len(dims) != 1:
        raise ValueError(f"split {name!r}: video_features of differing widths {sorted(dims)}")

    max_spans = _field(config_data, "max_spans") or max(len(r.spans_s) for r in records)
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

    query, truncated = _encode_queries(records, text, _field(config_data, "max_query_len"))
    if truncated:
        logger.warning(
            "split %r: %d of %d queries cut to max_query_len=%d",
            name,
            truncated,
            len(records),
            _field(config_data, "max_query_len"),
        )
    query.update(
        duration=np.asarray([r.duration_s for r in records], np.float32),
        spans=spans,
        span_mask=span_mask,
    )
    return PreparedSplit(
        video_features=np.stack(videos),
        video_row=video_row,
        query=query,
        query_ids=[r.query_id for r in records],
        num_truncated=int(truncated),
    )


def gather_batch(split: PreparedSplit, index: np.ndarray) -> dict[str, np.ndarray]:
    """The batch of record indices ``index [B]``; ``-1`` marks a padding row (record 0 copy)."""
    index = np.asarray(index, np.int64)
    real = index >= 0
    rows = np.where(real, index, 0)
    batch = {k: v[rows] for k, v in split.query.items()}
    video = split.video_features[split.video_row[rows]]
    batch["video_features"] = video
    batch["video_mask"] = np.ones(video.shape[:2], np.float32)
    batch["query_index"] = np.where(real, index, -1).astype(np.int32)
    batch["valid"] = real.astype(np.float32)
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
    split: PreparedSplit, index_ds: tf.data.Dataset, host_batch: int, config_data: Any
) -> Iterator[dict[str, np.ndarray]]:
    example = gather_batch(split, np.zeros(1, np.int64))
    keys = sorted(example)
    dtypes = [tf.as_dtype(example[k].dtype) for k in keys]

    def gather(index):
        batch = gather_batch(split, index)
        return [batch[k] for k in keys]

    def to_dict(index):
        arrays = tf.numpy_function(gather, [index], dtypes, stateful=False)
        out = {}
        for k, a in zip(keys, arrays):
            a.set_shape([host_batch, *example[k].shape[1:]])
            out[k] = a
        return out

    ds = index_ds.map(to_dict, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(_field(config_data, "prefetch"))
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
) -> Iterator[dict[str, np.ndarray]]:
    """Endless shuffled host batches of ``global_batch / process_count`` rows.

    ``start_step``: skip that many batches first (a resumed run) -- on the stream of record
    indices, so no features are gathered for the skipped batches.
    """
    split = _as_prepared(records, config_data, text, "train")
    start, size = _host_slice(global_batch, process_index, process_count)
    n = len(split)
    ds = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(global_batch, drop_remainder=True).skip(start_step)
    ds = ds.map(lambda b: b[start : start + size])
    return _batches(split, ds, size, config_data)


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

    splits: dict[str, list[Record]]
    text: TextInputs
    video_feature_dim: int
    query_feature_dim: int  # width of query_features (0 in mode 'tokens')

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size


def get_datasets(config: Any) -> Datasets:
    """Records of every split of ``config.data.name`` plus the fitted text encoding.

    Known names: ``'synthetic'`` (``data_pipelines.synthetic`` with ``config.data.synthetic``
    sizes and ``config.data.seed``).
    """
    data = config.data
    name = _field(data, "name")
    if name == "synthetic":
        spec = synthetic.spec_from_config(data.get("synthetic") if "synthetic" in data else None)
        splits = synthetic.make_splits(spec, int(_field(data, "seed")))
    else:
        raise ValueError(f"unknown config.data.name {name!r}; known: ['synthetic']")
    text = build_text_inputs(data, splits)
    first = splits["train"][0]
    if text.mode == "features":
        query_dim = (
            first.query_token_features.shape[1] if first.query_token_features is not None else 0
        )
    elif text.mode == "glove":
        query_dim = text.embeddings.shape[1]
    else:
        query_dim = 0
    return Datasets(splits, text, int(first.video_features.shape[1]), int(query_dim))
