"""Query tokenisers: a word vocabulary and a SentencePiece model, both trained on train queries.

Both map text to integer ids with the same reserved ids: ``0 = <pad>``, ``1 = <unk>``, so the
input pipeline pads with 0 whatever the tokeniser.

* :class:`Vocabulary` -- words by one of the :data:`WORD_SPLITS` rules: ``'letters'`` (the
  default, :func:`split_words`: lower-case, runs of Unicode letters and digits; punctuation
  and ``_`` separate words, so ``"person's"`` is ``person, s``) or ``'official'``
  (:func:`split_whitespace`: the rule of MGPN's and 2D-TAN's ``lib/datasets/*.py``,
  ``[w.lower() for w in sentence.split()]`` -- Python's whitespace split first, then each word
  lower-cased, punctuation kept: ``"door."`` is one word, which GloVe may not hold).
  Built from the training queries with a minimum count and an optional size cap; ids are
  given by decreasing count, ties broken alphabetically, so a vocabulary is a pure function
  of its corpus.  Saved as a text file with one word per line in id order.
* :class:`SentencePieceTokenizer` -- a SentencePiece model trained offline with
  :func:`train_sentencepiece` from an in-memory iterator of (lower-cased) queries and saved as
  ``<prefix>.model``; ``pad_id=0``, ``unk_id=1``, no BOS/EOS.
"""

from __future__ import annotations

import collections
import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

PAD_ID = 0
UNK_ID = 1
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"

_WORD = re.compile(r"[^\W_]+")


def split_words(text: str) -> list[str]:
    """Lower-cased words of ``text``: maximal runs of Unicode letters and digits."""
    return _WORD.findall(text.lower())


def split_whitespace(text: str) -> list[str]:
    """The official MGPN / 2D-TAN words of ``text``: ``str.split()`` (any run of Unicode
    whitespace separates; no empty word) then ``str.lower()`` of each word, in that order
    (``lib/datasets/charades.py``: ``[... w.lower() for w in description.split()]``)."""
    return [w.lower() for w in text.split()]


# config.data.word_split -> rule; 'letters' is the default of every config but those that
# reproduce MGPN / 2D-TAN or load their official checkpoints.
WORD_SPLITS = {"letters": split_words, "official": split_whitespace}


def word_splitter(name: str):
    """The word rule called ``name`` in :data:`WORD_SPLITS` (a ValueError names the choices)."""
    if name not in WORD_SPLITS:
        raise ValueError(
            f"config.data.word_split must be one of {sorted(WORD_SPLITS)}, got {name!r}"
        )
    return WORD_SPLITS[name]


class TextEncoder(Protocol):
    """What the input pipeline needs from a tokeniser."""

    def encode(self, text: str) -> list[int]: ...

    def __len__(self) -> int: ...


class Vocabulary:
    """Word <-> id map with ``0 = <pad>`` and ``1 = <unk>``; ``word_split`` names the rule
    (:data:`WORD_SPLITS`) that cuts a text into its words."""

    def __init__(self, words: Iterable[str], word_split: str = "letters"):
        self.split = word_splitter(word_split)
        self.word_split = word_split
        self.words: list[str] = list(words)
        if self.words[:2] != [PAD_TOKEN, UNK_TOKEN]:
            raise ValueError(f"a vocabulary starts with {PAD_TOKEN!r}, {UNK_TOKEN!r}")
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            dup = [w for w, c in collections.Counter(self.words).items() if c > 1]
            raise ValueError(f"duplicate words in vocabulary: {dup[:5]}")

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        min_count: int = 1,
        max_size: int = 0,
        word_split: str = "letters",
    ) -> Vocabulary:
        """Vocabulary of the words seen at least ``min_count`` times.

        Args:
          texts: training queries.
          min_count: rarer words map to ``<unk>``.
          max_size: at most this many entries including the two reserved ones (0: no cap).
          word_split: the word rule (:data:`WORD_SPLITS`).
        """
        if max_size and max_size < 2:
            raise ValueError(f"max_size must be 0 or >= 2, got {max_size}")
        split = word_splitter(word_split)
        counts = collections.Counter(w for text in texts for w in split(text))
        kept = sorted(
            (w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w)
        )
        if max_size:
            kept = kept[: max_size - 2]
        return cls([PAD_TOKEN, UNK_TOKEN, *kept], word_split)

    def __len__(self) -> int:
        return len(self.words)

    def word_id(self, word: str) -> int:
        return self.index.get(word, UNK_ID)

    def encode(self, text: str) -> list[int]:
        """Ids of the words of ``text`` (unknown words -> 1)."""
        return [self.index.get(w, UNK_ID) for w in self.split(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Words of ``ids`` joined by spaces, padding skipped."""
        return " ".join(self.words[i] for i in ids if i != PAD_ID)

    def save(self, path: str | Path) -> None:
        Path(path).write_text("".join(w + "\n" for w in self.words), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, word_split: str = "letters") -> Vocabulary:
        """The vocabulary saved at ``path`` (the file holds words only: the word rule is an
        argument, saved beside it by :mod:`vmr_jax.text.saved`)."""
        text = Path(path).read_text(encoding="utf-8")
        words = text.split("\n")
        if words and words[-1] == "":
            words.pop()
        try:
            return cls(words, word_split)
        except ValueError as err:
            raise ValueError(f"{path}: not a vocabulary file: {err}") from err


def train_sentencepiece(
    texts: Iterable[str],
    model_prefix: str | Path,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
) -> Path:
    """Trains a SentencePiece model on ``texts`` (lower-cased) and writes ``<prefix>.model``.

    ``hard_vocab_limit=False`` so a small corpus yields a smaller vocabulary instead of an
    error; one training thread, so the model is a deterministic function of the corpus.
    Returns the model path.
    """
    import sentencepiece as spm

    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=(t.lower() for t in texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        eos_id=-1,
        pad_piece=PAD_TOKEN,
        unk_piece=UNK_TOKEN,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    path = prefix.with_name(prefix.name + ".model")
    path.write_bytes(model.getvalue())
    return path


class SentencePieceTokenizer:
    """A trained SentencePiece model; ``encode`` lower-cases like :func:`train_sentencepiece`."""

    def __init__(self, model_file: str | Path):
        import sentencepiece as spm

        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise FileNotFoundError(f"no SentencePiece model at {self.model_file}")
        self.processor = spm.SentencePieceProcessor(model_file=str(self.model_file))
        if self.processor.pad_id() != PAD_ID or self.processor.unk_id() != UNK_ID:
            raise ValueError(
                f"{self.model_file}: expected pad_id={PAD_ID}, unk_id={UNK_ID}, got "
                f"{self.processor.pad_id()}, {self.processor.unk_id()}"
            )

    def __len__(self) -> int:
        return int(self.processor.get_piece_size())

    def encode(self, text: str) -> list[int]:
        return list(self.processor.encode(text.lower(), out_type=int))

    def pieces(self, text: str) -> list[str]:
        return list(self.processor.encode(text.lower(), out_type=str))

    def decode(self, ids: Iterable[int]) -> str:
        return self.processor.decode([i for i in ids if i != PAD_ID])
