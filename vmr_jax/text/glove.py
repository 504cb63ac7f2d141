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
what 2D-TAN does: its reader sends every word outside glove.6B to an appended zero row),
with ``missing='random'``, draws from ``N(0, sigma^2)`` where ``sigma`` is the standard
deviation of all the vectors found, from a ``numpy`` generator seeded with ``seed``, or, with
``missing='row:N'``, the vector of torchtext's row ``N`` of the file (below).
``<pad>`` (id 0) is always zero; ``<unk>`` (id 1) holds the vector a word outside the file
gets under ``'row:N'`` and zeros otherwise (what a query word unseen at training gets at
inference, ``vmr_jax.predictor``).

Official unknown-word rule of MGPN (``missing='row:400000'``, :func:`read_glove_torchtext`).
Huntersxsx/MGPN ``lib/datasets/{charades,activitynet,tacos}.py`` load
``torchtext.vocab.pretrained_aliases['glove.840B.300d']``, append ``'<unk>'`` with a zero row
at the end, and look each word up with ``vocab.stoi.get(w.lower(), 400000)``: a word outside
the file reads row 400,000 of the table, which in glove.840B is an ordinary word's vector
(microsoft/2D-TAN writes the same lookup on glove.6B, which has exactly 400,000 rows, so there
it is the appended zero row).  Rows are numbered as torchtext's ``Vectors.cache``
(``torchtext/vocab/vectors.py``) builds them, reading the file once, line by line:

* ``line.rstrip().split(b" ")`` -- trailing ASCII whitespace stripped, fields separated by
  single spaces only (a non-breaking space stays inside its field); the **first** field is the
  word and all the others the vector;
* a line whose vector has exactly one field is skipped ("likely a header") and takes no row;
  otherwise the first vector line sets ``dim`` and a line with another field count is an
  error;
* a word that is not UTF-8 is skipped and takes no row;
* every other line takes the next row, duplicates included; ``stoi = {word: i for i, word in
  enumerate(itos)}``, so a word listed twice reads its **last** row.

A row index past the file's rows is the appended zero row when it equals the row count (the
glove.6B case) and an error beyond it (PyTorch's embedding would raise).  Only the vectors of
the words asked for and of row ``N`` are kept in memory, as :func:`read_glove` does.
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


def read_glove_torchtext(
    path: str | Path, words: Iterable[str], row: int
) -> tuple[dict[str, np.ndarray], np.ndarray, int, int]:
    """Vectors of ``words`` and of row ``row`` as torchtext numbers and looks them up
    (module docstring: first field is the word, skipped lines take no row, the last of
    duplicates wins).

    Returns: ``({word: float32 [dim]}, row vector float32 [dim], dim, number of rows)``; the
    row vector is zeros when ``row`` equals the number of rows (the appended ``<unk>`` row).
    """
    path = Path(path)
    wanted = set(words)
    vectors: dict[str, np.ndarray] = {}
    row_vector = None
    dim = None
    rows = 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            fields = raw.rstrip().split(b" ")
            word_bytes, values = fields[0], fields[1:]
            if len(values) == 1:
                continue  # torchtext: "likely a header", no row
            if dim is None:
                if not values:
                    raise ValueError(f"{path}:{line_no}: expected a word followed by floats")
                dim = len(values)
            elif len(values) != dim:
                raise ValueError(
                    f"{path}:{line_no}: expected a word and {dim} floats (split on single "
                    f"spaces, as torchtext does), got {len(fields)} fields"
                )
            try:
                word = word_bytes.decode("utf-8")
            except UnicodeDecodeError:
                continue  # torchtext skips a non-UTF-8 word: no row
            if word in wanted or rows == row:
                try:
                    vector = np.asarray([float(x) for x in values], np.float32)
                except ValueError as err:
                    raise ValueError(f"{path}:{line_no}: word {word!r}: {err}") from err
                if not np.isfinite(vector).all():
                    raise ValueError(f"{path}:{line_no}: word {word!r}: non-finite value")
                if word in wanted:
                    vectors[word] = vector  # a later duplicate overwrites: torchtext's stoi
                if rows == row:
                    row_vector = vector
            rows += 1
    if dim is None:
        raise ValueError(f"{path}: empty GloVe file")
    if row_vector is None:
        if row != rows:
            raise ValueError(
                f"{path}: unknown-word row {row} is past the file's {rows} rows and the "
                f"appended zero row {rows} (config.data.glove_missing='row:{row}')"
            )
        row_vector = np.zeros(dim, np.float32)
    return vectors, row_vector, dim, rows


def parse_missing(missing: str) -> int | None:
    """The row ``N`` of ``missing='row:N'``, None for ``'zero'`` / ``'random'``; a ValueError
    names the accepted values."""
    if missing in ("zero", "random"):
        return None
    head, _, index = missing.partition(":")
    if head == "row" and index.isdigit():
        return int(index)
    raise ValueError(
        f"config.data.glove_missing must be 'zero', 'random' or 'row:N' (N >= 0, e.g. "
        f"'row:400000', MGPN's rule), got {missing!r}"
    )


def read_glove_words(path: str | Path, words: Iterable[str], missing: str) -> dict[str, np.ndarray]:
    """``{word: vector}`` of the ``words`` in the file, read by the rule ``missing`` implies
    (``'row:N'``: torchtext's, last duplicate wins; else :func:`read_glove`, first wins)."""
    row = parse_missing(missing)
    if row is None:
        return read_glove(path, words=words)[0]
    return read_glove_torchtext(path, words, row)[0]


def glove_embeddings(
    vocab: Vocabulary,
    path: str | Path,
    missing: str = "zero",
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """Embedding matrix of ``vocab`` from a GloVe file.

    Args:
      vocab: ids -> words (row ``i`` is the vector of ``vocab.words[i]``).
      missing: ``'zero'``, ``'random'`` or ``'row:N'`` for vocabulary words not in the file
        (module docstring); ``'row:N'`` reads the file by torchtext's rule.
    Returns: ``(matrix float32 [len(vocab), dim], number of missing words)``; the pad row is
      zero, the unk row is the ``'row:N'`` vector (else zero); neither counts as missing.
    """
    row = parse_missing(missing)
    if row is None:
        found, dim = read_glove(path, words=vocab.words[2:])
        unknown = np.zeros(dim, np.float32)
    else:
        found, unknown, dim, _ = read_glove_torchtext(path, vocab.words[2:], row)
    matrix = np.zeros((len(vocab), dim), np.float32)
    matrix[UNK_ID] = unknown
    absent = []
    for i, word in enumerate(vocab.words):
        if i in (PAD_ID, UNK_ID):
            continue
        if word in found:
            matrix[i] = found[word]
        else:
            absent.append(i)
            matrix[i] = unknown
    if absent and missing == "random":
        sigma = float(np.std(np.stack(list(found.values())))) if found else 1.0
        rng = np.random.default_rng(seed)
        matrix[absent] = rng.normal(0.0, sigma, size=(len(absent), dim)).astype(np.float32)
    return matrix, len(absent)
