"""Word vocabulary and SentencePiece tokenizer."""

from __future__ import annotations

import pytest

from vmr_jax.text.tokenizer import (
    SentencePieceTokenizer,
    Vocabulary,
    split_words,
    train_sentencepiece,
)

CORPUS = ["the cat sat", "The dog sat.", "a cat"]


def test_split_words():
    assert split_words("A person's DOOR, opened_twice!") == [
        "a",
        "person",
        "s",
        "door",
        "opened",
        "twice",
    ]
    assert split_words("Élan 2 fois") == ["élan", "2", "fois"]


def test_vocabulary_order_and_encoding():
    # counts: cat 2, sat 2, the 2, a 1, dog 1 -> by count then alphabet, after pad and unk.
    vocab = Vocabulary.build(CORPUS)
    assert vocab.words == ["<pad>", "<unk>", "cat", "sat", "the", "a", "dog"]
    assert vocab.encode("The cat flew") == [4, 2, 1]
    assert vocab.decode([4, 2, 1, 0, 0]) == "the cat <unk>"
    assert len(vocab) == 7


def test_vocabulary_min_count_and_cap():
    assert Vocabulary.build(CORPUS, min_count=2).words[2:] == ["cat", "sat", "the"]
    assert Vocabulary.build(CORPUS, max_size=4).words == ["<pad>", "<unk>", "cat", "sat"]


def test_vocabulary_save_load(tmp_path):
    vocab = Vocabulary.build(CORPUS)
    path = tmp_path / "vocab.txt"
    vocab.save(path)
    assert path.read_text().splitlines()[:3] == ["<pad>", "<unk>", "cat"]
    loaded = Vocabulary.load(path)
    assert loaded.words == vocab.words
    assert loaded.encode("a dog") == [5, 6]


def test_vocabulary_load_rejects_other_files(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("cat\ndog\n")
    with pytest.raises(ValueError, match="words.txt"):
        Vocabulary.load(path)


def test_sentencepiece_round_trip(tmp_path):
    verbs = ["opens", "closes", "holds", "throws", "washes"]
    nouns = ["door", "window", "cup", "towel", "book", "laptop"]
    corpus = [f"A person {v} the {n} slowly." for v in verbs for n in nouns] * 4
    path = train_sentencepiece(corpus, tmp_path / "spm" / "queries", vocab_size=60)
    assert path == tmp_path / "spm" / "queries.model" and path.is_file()
    tok = SentencePieceTokenizer(path)
    assert 2 < len(tok) <= 60
    text = "A person opens the window slowly."
    ids = tok.encode(text)
    assert ids and all(i >= 1 for i in ids)  # 0 is padding, never produced
    assert tok.decode(ids + [0, 0]) == text.lower()
    assert "".join(tok.pieces(text)).replace("\u2581", " ").strip() == text.lower()
    # a character never seen in training is unknown (id 1)
    assert 1 in tok.encode("person q")


def test_sentencepiece_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.model"):
        SentencePieceTokenizer(tmp_path / "nothing.model")
