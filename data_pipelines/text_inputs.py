"""How queries become arrays: ``config.data`` defaults, the text encoding of a run, encoding.

``text_mode`` (module docstring of :mod:`data_pipelines.input_pipeline`): ``'tokens'`` (a word
vocabulary or a SentencePiece model fit on the training queries), ``'features'`` (the records'
token features) or ``'glove'`` (GloVe vectors of every word of every split).  A run's
:class:`TextInputs` is saved with its checkpoints (:mod:`vmr_jax.text.saved`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
    "clip_sampling": "resample",
    "subtitles": False,
    "dir": "",
    "prefetch": 2,
    "seed": 0,
    "semantic_tree": "",
    "spacy_model": "en_core_web_sm",
    "tree_max_verbs": 4,  # FVMR's limits
    "tree_max_nouns": 6,
    "tree_cache": "",
}
TEXT_MODES = ("tokens", "features", "glove")


def data_field(config_data: Any, name: str) -> Any:
    """``config.data.<name>``, else its default in :data:`DATA_DEFAULTS`, else a KeyError."""
    if name in config_data:
        return config_data[name]
    if name in DATA_DEFAULTS:
        return DATA_DEFAULTS[name]
    raise KeyError(f"config.data.{name} is required")


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
    mode = data_field(config_data, "text_mode")
    if mode not in TEXT_MODES:
        raise ValueError(f"config.data.text_mode must be one of {TEXT_MODES}, got {mode!r}")
    if mode == "features":
        return TextInputs(mode)
    if mode == "glove":
        path = data_field(config_data, "glove_path")
        if not path:
            raise ValueError("config.data.text_mode='glove' needs config.data.glove_path")
        vocab = Vocabulary.build(r.query_text for recs in splits.values() for r in recs)
        table, missing = glove_embeddings(
            vocab, path, data_field(config_data, "glove_missing"), data_field(config_data, "seed")
        )
        logger.info("GloVe %s: %d of %d query words missing", path, missing, len(vocab) - 2)
        return TextInputs(mode, vocab, table, missing)
    if "train" not in splits:
        raise ValueError("text_mode='tokens' fits its tokenizer on a 'train' split")
    train_texts = [r.query_text for r in splits["train"]]
    kind = data_field(config_data, "tokenizer")
    if kind == "word":
        encoder = Vocabulary.build(
            train_texts,
            data_field(config_data, "min_word_count"),
            data_field(config_data, "vocab_size"),
        )
    elif kind == "sentencepiece":
        model = data_field(config_data, "sentencepiece_model")
        if not model:
            raise ValueError("tokenizer='sentencepiece' needs config.data.sentencepiece_model")
        if not Path(model).is_file():
            size = data_field(config_data, "vocab_size")
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


def encode_queries(records: Sequence[Record], text: TextInputs, max_len: int):
    """``({'query_mask', 'query_tokens' | 'query_features'}, number truncated)`` of records'
    queries under ``text``, cut at ``max_len`` tokens; an empty query is an error naming it."""
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
