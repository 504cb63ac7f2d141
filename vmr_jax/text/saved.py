"""A run's text encoder, saved in its workdir: inference needs no training data.

``vmr-jax train`` writes ``WORKDIR/text_encoder/`` once the data is built, so a checkpoint
answers free-text queries on a machine where the training annotations, the GloVe file or the
SentencePiece model are absent (``vmr-jax predict``, :class:`vmr_jax.predictor.Predictor`)::

    text_encoder/encoder.json       {"format": 1, "mode", "tokenizer", "num_missing",
                                     "word_split"}
    text_encoder/vocab.txt          word vocabulary (tokens + word, and glove), one per line
    text_encoder/sentencepiece.model  the SentencePiece model (tokens + sentencepiece)
    text_encoder/embeddings.npy     float32 [vocab, dim]: the GloVe rows the run used (glove)

``word_split`` is the word rule of the vocabulary (``'letters'`` or ``'official'``,
:data:`vmr_jax.text.tokenizer.WORD_SPLITS`); an encoder saved before the field existed reads
as ``'letters'``, the only rule then.  Under ``glove_missing='row:N'`` the ``<unk>`` row of
``embeddings.npy`` holds the unknown-word vector, so inference needs no GloVe file for it.

Text mode ``'features'`` (precomputed query token features) saves only ``encoder.json``:
such a model reads features, not text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from vmr_jax.text.tokenizer import SentencePieceTokenizer, Vocabulary

ENCODER_DIR = "text_encoder"
FORMAT = 1


def encoder_dir(workdir: str | Path) -> Path:
    return Path(workdir).absolute() / ENCODER_DIR


def save_text_inputs(text: Any, workdir: str | Path) -> Path:
    """Writes ``text`` (an ``input_pipeline.TextInputs``) under ``WORKDIR/text_encoder``.

    Written to a temporary folder first and renamed, so a killed save leaves either the old
    encoder or the new one.  Returns the folder."""
    target = encoder_dir(workdir)
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():  # left by a killed save: start clean, no stale file of another mode
        _remove(tmp)
    tmp.mkdir(parents=True)
    meta: dict[str, Any] = {"format": FORMAT, "mode": text.mode, "tokenizer": None}
    meta["num_missing"] = int(text.num_missing)
    if isinstance(text.encoder, Vocabulary):
        text.encoder.save(tmp / "vocab.txt")
        meta["tokenizer"] = "word"
        meta["word_split"] = text.encoder.word_split
    elif isinstance(text.encoder, SentencePieceTokenizer):
        (tmp / "sentencepiece.model").write_bytes(text.encoder.model_file.read_bytes())
        meta["tokenizer"] = "sentencepiece"
    elif text.encoder is not None:
        raise TypeError(f"cannot save a text encoder of type {type(text.encoder).__name__}")
    if text.embeddings is not None:
        np.save(tmp / "embeddings.npy", np.asarray(text.embeddings, np.float32))
    (tmp / "encoder.json").write_text(json.dumps(meta, indent=1) + "\n")
    if target.exists():
        old = target.with_name(target.name + ".old")
        if old.exists():
            _remove(old)
        os.replace(target, old)
        os.replace(tmp, target)
        _remove(old)
    else:
        os.replace(tmp, target)
    return target


def _remove(folder: Path) -> None:
    for item in folder.iterdir():
        item.unlink()
    folder.rmdir()


def load_text_inputs(workdir: str | Path) -> Any:
    """The ``TextInputs`` saved by :func:`save_text_inputs`; FileNotFoundError naming the
    folder when the workdir has none (a workdir trained before encoders were saved)."""
    from data_pipelines.text_inputs import TextInputs

    folder = encoder_dir(workdir)
    meta_path = folder / "encoder.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path} not found: the workdir has no saved text encoder (trained before "
            "vmr-jax saved one); run `vmr-jax train` on it again, which writes it, or keep "
            "the training data where config.json says"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, want {FORMAT}")
    encoder = None
    if meta["tokenizer"] == "word":
        encoder = Vocabulary.load(folder / "vocab.txt", meta.get("word_split", "letters"))
    elif meta["tokenizer"] == "sentencepiece":
        encoder = SentencePieceTokenizer(folder / "sentencepiece.model")
    embeddings = None
    if (folder / "embeddings.npy").is_file():
        embeddings = np.load(folder / "embeddings.npy")
    return TextInputs(meta["mode"], encoder, embeddings, int(meta.get("num_missing", 0)))
