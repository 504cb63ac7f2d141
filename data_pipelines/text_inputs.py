"""How queries become arrays: ``config.data`` defaults, the text encoding of a run, encoding.

``text_mode`` (module docstring of :mod:`data_pipelines.input_pipeline`): ``'tokens'`` (a word
vocabulary or a SentencePiece model fit on the training queries), ``'features'`` (the records'
token features) or ``'glove'`` (GloVe vectors of every word of every split).  A run's
:class:`TextInputs` is saved with its checkpoints (:mod:`vmr_jax.text.saved`).

Checked before any data is read (:func:`check_text_files`): a GloVe file that is not there
raises :class:`TextFileMissing`, one message naming the path, the field that sets it and where
to get the file (the Stanford archive of that release, :func:`glove_download_url`) or how to
train without it.  The model's word table follows the tokenizer
(:func:`resolve_model_vocab`): ``model.vocab_size = 0`` is set to the tokenizer's size, a
smaller positive size is refused (token ids past the table would index out of it).

Official text mode (the default of the MGPN and 2D-TAN benchmark configs and of converted
official checkpoints): ``word_split='official'`` (``[w.lower() for w in sentence.split()]``,
:data:`vmr_jax.text.tokenizer.WORD_SPLITS`), the official unknown-word vector
(``glove_missing``: ``'row:400000'`` for MGPN's glove.840B, ``'zero'`` for 2D-TAN's glove.6B;
:mod:`vmr_jax.text.glove`) and ``cut_long_queries=False``: the official collate pads each batch
to its longest query and never cuts, so a query longer than ``max_query_len`` is an error
naming the split, the query and its length (:func:`check_query_lengths`) instead of the
default warning and cut.  The padding itself is the model's business (MGPN's
``text_padding='batch'``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.records import Record
from vmr_jax.errors import UserError
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
    # Official text mode of MGPN / 2D-TAN (module docstring): 'official' word split, queries
    # never cut (cut_long_queries=False: a longer query is an error).
    "word_split": "letters",
    "cut_long_queries": True,
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
    # Cascaded MPN's word-level subtitles (data_pipelines/subtitle_batches.py); 768 tokens
    # hold 99.93% of TVR's subtitles (TVRetrieval lm_finetuning_on_single_sentences.py).
    "subtitle_words": False,
    "max_subtitle_words": 768,
    "max_subtitle_sentences": 64,
}
TEXT_MODES = ("tokens", "features", "glove")
# Where the GloVe vectors the benchmark configs name come from: the Stanford archive of each
# release, keyed by the unzipped file's name without ``.<dim>d.txt`` (the 6B and Twitter
# archives hold every width; 840B and 42B one).  2D-TAN reads glove.6B.300d, the other
# families glove.840B.300d.
GLOVE_RELEASES = {
    "glove.6B": "https://nlp.stanford.edu/data/glove.6B.zip",
    "glove.42B": "https://nlp.stanford.edu/data/glove.42B.300d.zip",
    "glove.840B": "https://nlp.stanford.edu/data/glove.840B.300d.zip",
    "glove.twitter.27B": "https://nlp.stanford.edu/data/glove.twitter.27B.zip",
}
GLOVE_PAGE = "https://nlp.stanford.edu/projects/glove/"


def glove_download_url(path: str | os.PathLike) -> str:
    """The archive that unzips to the GloVe file ``path`` (``.../glove.6B.300d.txt`` ->
    ``glove.6B.zip``), or the GloVe project page for a name that is no Stanford release."""
    name = Path(path).name
    for release, url in GLOVE_RELEASES.items():
        if name.startswith(release + ".") and name.endswith("d.txt"):
            return url
    return GLOVE_PAGE


class TextFileMissing(UserError, FileNotFoundError):
    """A text file the config names (the GloVe vectors) is not there; the message says which
    path, which ``config.data`` field sets it and where to get it."""


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


def check_text_files(config_data: Any) -> None:
    """Raises :class:`TextFileMissing` when ``text_mode='glove'`` names no GloVe file that
    exists (called before any split is read, so a run fails at once)."""
    if data_field(config_data, "text_mode") != "glove":
        return
    path = data_field(config_data, "glove_path")
    if not path:
        raise ValueError(
            "config.data.text_mode='glove' needs config.data.glove_path (a GloVe text file, "
            f"e.g. from {GLOVE_PAGE}), or use --config.data.text_mode=tokens"
        )
    if not Path(path).is_file():
        where = "" if os.path.isabs(path) else f" (relative to {os.getcwd()})"
        raise TextFileMissing(
            f"GloVe file {path!r} not found{where}; config.data.glove_path sets it "
            f"(text_mode='glove').  Download and unzip {glove_download_url(path)} and pass "
            "--config.data.glove_path=PATH, or learn the word embeddings instead: "
            "--config.data.text_mode=tokens (the config argument `tiny` does this)"
        )


def resolve_model_vocab(model_config: Any, text: TextInputs) -> int:
    """Sizes the model's learned word table to ``text``'s tokenizer; returns the size.

    Text mode ``'tokens'``: ``model_config.vocab_size = 0`` is set to the tokenizer's size
    (ids ``0 .. size - 1``, padding and unknown included); a positive size below it is
    refused, naming both sizes; a larger one is kept (unused rows).
    Text mode ``'glove'`` with ``model_config.word_embed == 'glove'`` (a word table initialised
    from the GloVe rows, FVMR): the same rule with the GloVe vocabulary's size.
    Other modes feed word vectors and leave the model untouched (returns 0).  Raises
    ``ValueError`` for a model without a word table (no ``vocab_size`` field) in mode
    ``'tokens'``.
    """
    glove_table = text.mode == "glove" and model_config.get("word_embed", "") == "glove"
    if text.mode != "tokens" and not glove_table:
        return 0
    need = text.vocab_size if text.mode == "tokens" else len(text.encoder)
    if "vocab_size" not in model_config:
        raise ValueError(
            f"config.data.text_mode='tokens' gives token ids, but model "
            f"{model_config.get('name', '?')!r} has no learned word table "
            "(no config.model.vocab_size): use text_mode 'features' or 'glove'"
        )
    have = int(model_config.vocab_size or 0)
    if have == 0:
        model_config.vocab_size = need
        logger.info("config.model.vocab_size = %d (the tokenizer's vocabulary)", need)
        return need
    if have < need:
        raise ValueError(
            f"config.model.vocab_size={have} is smaller than the tokenizer's vocabulary of "
            f"{need} ids (padding and unknown included): ids {have}..{need - 1} would fall "
            "outside the word table.  Leave config.model.vocab_size at 0 to size it from the "
            f"tokenizer, or set it to at least {need}"
        )
    return have


def build_text_inputs(config_data: Any, splits: Mapping[str, Sequence[Record]]) -> TextInputs:
    """The tokenizer / embedding table of ``config.data.text_mode``, fit on ``splits['train']``."""
    mode = data_field(config_data, "text_mode")
    if mode not in TEXT_MODES:
        raise ValueError(f"config.data.text_mode must be one of {TEXT_MODES}, got {mode!r}")
    if mode == "features":
        return TextInputs(mode)
    if mode == "glove":
        check_text_files(config_data)
        path = data_field(config_data, "glove_path")
        vocab = Vocabulary.build(
            (r.query_text for recs in splits.values() for r in recs),
            word_split=data_field(config_data, "word_split"),
        )
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
            data_field(config_data, "word_split"),
        )
    elif kind == "sentencepiece":
        if data_field(config_data, "word_split") != "letters":
            raise ValueError(
                "config.data.word_split applies to word vocabularies; tokenizer='sentencepiece' "
                "cuts pieces itself: leave word_split at 'letters'"
            )
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
    """``({'query_mask', 'query_tokens' | 'query_features'}, token_counts)`` of records'
    queries under ``text``, cut at ``max_len`` tokens; ``token_counts [Q] int64`` are the
    lengths before the cut (:func:`warn_cut_queries` reports the cut ones).  An empty query
    is an error naming it."""
    ids_or_feats, lengths, counts = [], [], []
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
        counts.append(len(seq))
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
        else:  # glove: the vectors, and their rows' ids for a GloVe-initialised word table
            out["query_features"] = text.embeddings[tokens] * mask[..., None]
            out["query_tokens"] = tokens
    return out, np.asarray(counts, np.int64)


def warn_cut_queries(
    token_counts: np.ndarray, query_ids: Sequence[str], max_len: int, name: str
) -> int:
    """Logs one warning for a split whose queries exceed ``max_len`` tokens: how many were
    cut and the longest one (id and length), so a 500-word query is never cut silently.
    Returns the number cut."""
    counts = np.asarray(token_counts, np.int64)
    cut = int((counts > max_len).sum())
    if cut:
        longest = int(np.argmax(counts))
        logger.warning(
            "split %r: %d of %d queries cut to config.data.max_query_len=%d tokens (longest: "
            "query %r (%d tokens)); raise --config.data.max_query_len to keep more",
            name,
            cut,
            len(counts),
            max_len,
            query_ids[longest],
            int(counts[longest]),
        )
    return cut


def check_query_lengths(
    token_counts: np.ndarray,
    query_ids: Sequence[str],
    max_len: int,
    name: str,
    cut: bool = True,
) -> int:
    """Queries longer than ``max_len`` tokens: cut with one warning (``cut``,
    :func:`warn_cut_queries`; returns the number cut) or, in official mode
    (``config.data.cut_long_queries=False``), a ValueError naming the split, the longest
    query's id and length, and the field to raise."""
    counts = np.asarray(token_counts, np.int64)
    if cut or not (counts > max_len).any():
        return warn_cut_queries(counts, query_ids, max_len, name)
    longest = int(np.argmax(counts))
    raise ValueError(
        f"split {name!r}: query {query_ids[longest]!r} has {int(counts[longest])} words, more "
        f"than config.data.max_query_len={max_len} ({int((counts > max_len).sum())} queries "
        "over it); the official code never cuts a query: raise "
        f"--config.data.max_query_len to at least {int(counts[longest])} (or allow the cut "
        "with --config.data.cut_long_queries=True)"
    )
