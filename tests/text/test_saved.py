"""text.saved: a run's text encoder round-trips through the workdir (word vocabulary, GloVe
rows, SentencePiece model), and a killed save leaves no stale file behind."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines.text_inputs import TextInputs
from vmr_jax.text import saved
from vmr_jax.text.tokenizer import SentencePieceTokenizer, Vocabulary, train_sentencepiece


def test_word_and_glove_round_trip(tmp_path):
    vocab = Vocabulary(["<pad>", "<unk>", "person", "door"])
    table = np.arange(8, dtype=np.float32).reshape(4, 2)
    saved.save_text_inputs(TextInputs("glove", vocab, table, num_missing=1), tmp_path)
    back = saved.load_text_inputs(tmp_path)
    assert (back.mode, back.num_missing) == ("glove", 1)
    assert back.encoder.words == vocab.words
    np.testing.assert_array_equal(back.embeddings, table)
    # Saving again replaces the encoder whole: no GloVe table is left for a tokens run.
    saved.save_text_inputs(TextInputs("tokens", vocab), tmp_path)
    again = saved.load_text_inputs(tmp_path)
    assert again.mode == "tokens" and again.embeddings is None
    assert again.encoder.encode("the person") == [1, 2]


def test_sentencepiece_round_trip(tmp_path):
    texts = [f"a person opens door number {i}" for i in range(40)]
    model = train_sentencepiece(texts, tmp_path / "sp" / "m", vocab_size=30)
    encoder = SentencePieceTokenizer(model)
    saved.save_text_inputs(TextInputs("tokens", encoder), tmp_path / "run")
    model.unlink()  # the original file is gone: the workdir's copy serves
    back = saved.load_text_inputs(tmp_path / "run")
    assert back.encoder.encode("a person opens") == encoder.encode("a person opens")


def test_stale_temporary_folder_is_cleared(tmp_path):
    stale = tmp_path / "text_encoder.tmp"
    stale.mkdir()
    np.save(stale / "embeddings.npy", np.ones((3, 2), np.float32))  # a killed glove save
    saved.save_text_inputs(TextInputs("tokens", Vocabulary(["<pad>", "<unk>", "x"])), tmp_path)
    assert saved.load_text_inputs(tmp_path).embeddings is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text_encoder"]


def test_missing_encoder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="text_encoder/encoder.json not found"):
        saved.load_text_inputs(tmp_path)
