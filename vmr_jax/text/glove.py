"""GloVe word vectors from a local text file, as an embedding matrix for a vocabulary.

File format (Stanford GloVe releases): one word per line followed by its ``dim`` floats,
separated by single spaces, no header.  The last ``dim`` fields are the vector and everything
before them is the word, so the few ``glove.840B`` entries whose word contains a space parse.
``dim`` is taken from the first line unless given.  A line with too few fields, or a value
that is not a finite float, raises ``ValueError`` naming the file and the 1-based line number;
a first line of two integers (a word2vec header) is reported as such.  The field count is
checked on every line; the numbers are parsed only for the words asked for (the 840B file has
2.2M lines).  A word listed twice keeps its first vector.

Missing words (in the vocabulary, absent from the file) get either zeros (``missing='zero'``,
what 2D-TAN does: its reader sends every word outside glove.6B to an appended zero row) or,
with ``missing='random'``, draws from ``N(0, sigma^2)`` where ``sigma`` is the standard
deviation of all the vectors found, from a ``numpy`` generator seeded with ``seed``.
``<pad>`` (id 0) and ``<unk>`` (id 1) are always zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from vmr_jax.text.tokenizer import PAD_ID, UNK_ID, Vocabulary


def read_glove(
    path: str | Path, words: Iterable[str] | None = None, dim: int | None = None
) -> tuple[dict[str, np.ndarray], int]:
    """Reads the vectors of ``words`` (all words if None) from a GloVe text file.

    Returns: ``({word: float32 [dim]}, dim)``.
    """
    path = Path(path)
    wanted = None if words is None else set(words)
    vectors: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not UTF-8 text ({err})") from err
            fields = line.rstrip("\r\n").rstrip(" ").split(" ")
            if line_no == 1 and dim is None:
                if len(fields) == 2 and all(x.isdigit() for x in fields):
                    raise ValueError(
                        f"{path}:1: looks like a word2vec header {line.strip()!r}; "
                        "expected the GloVe text format (word then floats, no header)"
                    )
                dim = len(fields) - 1
                if dim < 1:
                    raise ValueError(f"{path}:1: expected a word followed by floats")
            if len(fields) < dim + 1 or not fields[0]:
                raise ValueError(
                    f"{path}:{line_no}: expected a word and {dim} floats, got {len(fields)} fields"
                )
            word = " ".join(fields[:-dim])
            if (wanted is not None and word not in wanted) or word in vectors:
                continue
            try:
                vector = np.asarray(fields[-dim:]).astype(np.float32)
            except ValueError as err:
                raise ValueError(f"{path}:{line_no}: word {word!r}: {err}") from err
            if not np.isfinite(vector).all():
                raise ValueError(f"{path}:{line_no}: word {word!r}: non-finite value")
            vectors[word] = vector
    if dim is None:
        raise ValueError(f"{path}: empty GloVe file")
    return vectors, dim


def glove_embeddings(
    vocab: Vocabulary,
    path: str | Path,
    missing: str = "zero",
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """Embedding matrix of ``vocab`` from a GloVe file.

    Args:
      vocab: ids -> words (row ``i`` is the vector of ``vocab.words[i]``).
      missing: ``'zero'`` or ``'random'`` for vocabulary words not in the file.
    Returns: ``(matrix float32 [len(vocab), dim], number of missing words)``; pad and unk rows
      are zero and not counted as missing.
    """
    if missing not in ("zero", "random"):
        raise ValueError(f"missing must be 'zero' or 'random', got {missing!r}")
    found, dim = read_glove(path, words=vocab.words[2:])
    matrix = np.zeros((len(vocab), dim), np.float32)
    absent = []
    for i, word in enumerate(vocab.words):
        if i in (PAD_ID, UNK_ID):
            continue
        if word in found:
            matrix[i] = found[word]
        else:
            absent.append(i)
    if absent and missing == "random":
        sigma = float(np.std(np.stack(list(found.values())))) if found else 1.0
        rng = np.random.default_rng(seed)
        matrix[absent] = rng.normal(0.0, sigma, size=(len(absent), dim)).astype(np.float32)
    return matrix, len(absent)
