"""Semantic role trees of a split's queries for the input pipeline (``config.data.semantic_tree``).

The tree of every query (:mod:`vmr_jax.text.semantic_tree`) as batch arrays, its parses read
through the cache of :func:`~vmr_jax.text.tree_parsers.cached_parses`: ``cache`` when given
(``config.data.tree_cache``), else, for a built dataset, ``<its directory>/semantic_parses_
<parser name>.json`` (e.g. ``semantic_parses_spacy-en_core_web_sm.json``), else (in-memory
records) none.  Positions index the words of a query, so the text encoding must give one row
per word, which is checked here.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence

import numpy as np

from data_pipelines import synthetic
from data_pipelines.records import Record
from data_pipelines.stored import StoredSplit
from vmr_jax.text.semantic_tree import summarize_trees, tree_arrays, tree_from_parse
from vmr_jax.text.tokenizer import split_words
from vmr_jax.text.tree_parsers import SpacyTreeParser, TreeParser, cached_parses

logger = logging.getLogger(__name__)

# config.data.semantic_tree -> parser (built from config.data.spacy_model).
TREE_PARSERS: dict[str, Callable[[str], TreeParser]] = {
    "spacy": SpacyTreeParser,
    "synthetic": lambda _: synthetic.SyntheticTreeParser(),
}


@functools.cache
def tree_parser(kind: str, spacy_model: str = "en_core_web_sm") -> TreeParser:
    """The parser of ``config.data.semantic_tree``; one per process, so spaCy loads once."""
    if kind not in TREE_PARSERS:
        raise ValueError(
            f"config.data.semantic_tree must be '' or one of {sorted(TREE_PARSERS)}, got {kind!r}"
        )
    return TREE_PARSERS[kind](spacy_model)


def cache_path(records: Sequence[Record] | StoredSplit, parser: TreeParser, cache: str = ""):
    """Where the parses of ``records`` are cached (None: nowhere)."""
    if cache:
        return cache
    if isinstance(records, StoredSplit):
        return os.path.join(records.directory, f"semantic_parses_{parser.name}.json")
    return None


def check_word_rows(
    records: Sequence[Record] | StoredSplit, text_mode: str, word_tokens: bool
) -> None:
    """Raises unless the query encoding has one row per word of ``split_words``.

    ``word_tokens``: the tokenizer of modes 'tokens'/'glove' is the word vocabulary.
    """
    if text_mode != "features":
        if not word_tokens:
            raise ValueError(
                "config.data.semantic_tree needs one query token per word, but "
                "config.data.tokenizer='sentencepiece' cuts words into pieces: use "
                "tokenizer='word' or text_mode='glove'"
            )
        return
    if isinstance(records, StoredSplit):
        rows = records.num_query_tokens
    else:
        rows = [len(r.query_token_features) for r in records]
    for r, n in zip(records, rows):
        words = len(split_words(r.query_text))
        if n != words:
            raise ValueError(
                f"record {r.query_id!r}: config.data.semantic_tree needs one query token "
                f"feature per word (config.data.text_mode='features'), got {n} rows for "
                f"{words} words of {r.query_text!r}"
            )


def query_trees(
    records: Sequence[Record] | StoredSplit,
    kind: str,
    *,
    text_mode: str,
    word_tokens: bool,
    spacy_model: str = "en_core_web_sm",
    cache: str = "",
    max_verbs: int = 4,
    max_nouns: int = 6,
    max_words: int = 20,
    name: str = "",
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """``tree_verbs [Q, max_verbs, 2]``, ``tree_nouns [Q, max_nouns, 2]``, ``tree_edges [Q,
    max_verbs, max_nouns]`` of every query, and the summary of what the limits dropped."""
    parser = tree_parser(kind, spacy_model)
    check_word_rows(records, text_mode, word_tokens)
    parses = cached_parses(
        parser, [r.query_text for r in records], cache_path(records, parser, cache)
    )
    trees = [tree_from_parse(p) for p in parses]
    summary = summarize_trees(trees, max_verbs, max_nouns, max_words)
    logger.info("split %r semantic trees (%s): %s", name, parser.name, summary)
    return tree_arrays(trees, max_verbs, max_nouns, max_words), summary
