"""GloVe text files -> embedding matrices."""

from __future__ import annotations

import numpy as np
import pytest

from vmr_jax.text.glove import glove_embeddings, read_glove
from vmr_jax.text.tokenizer import Vocabulary

GLOVE = "the 0.1 0.2 0.3\ncat -1 0 2.5\n. . . 7 8 9\nsat 4e-1 5 6\n"


@pytest.fixture
def glove_file(tmp_path):
    path = tmp_path / "glove.tiny.3d.txt"
    path.write_text(GLOVE)
    return path


def test_read_all_words(glove_file):
    vectors, dim = read_glove(glove_file)
    assert dim == 3
    assert sorted(vectors) == [". . .", "cat", "sat", "the"]  # a word may contain spaces
    np.testing.assert_array_equal(vectors["cat"], np.float32([-1, 0, 2.5]))
    np.testing.assert_array_equal(vectors["sat"], np.float32([0.4, 5, 6]))
    assert vectors["the"].dtype == np.float32


def test_read_selected_words(glove_file):
    vectors, _ = read_glove(glove_file, words=["sat", "dog"])
    assert list(vectors) == ["sat"]


def test_embedding_matrix_zero_for_missing(glove_file):
    vocab = Vocabulary(["<pad>", "<unk>", "cat", "dog", "the"])
    matrix, missing = glove_embeddings(vocab, glove_file)
    expected = np.float32([[0, 0, 0], [0, 0, 0], [-1, 0, 2.5], [0, 0, 0], [0.1, 0.2, 0.3]])
    np.testing.assert_array_equal(matrix, expected)
    assert missing == 1


def test_embedding_matrix_random_for_missing(glove_file):
    vocab = Vocabulary(["<pad>", "<unk>", "cat", "dog", "the", "emu"])
    a, missing = glove_embeddings(vocab, glove_file, missing="random", seed=3)
    b, _ = glove_embeddings(vocab, glove_file, missing="random", seed=3)
    c, _ = glove_embeddings(vocab, glove_file, missing="random", seed=4)
    assert missing == 2
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[3], c[3])
    assert np.all(a[3] != 0) and np.all(a[5] != 0)
    np.testing.assert_array_equal(a[:2], 0)  # pad and unk stay zero
    np.testing.assert_array_equal(a[2], np.float32([-1, 0, 2.5]))


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("the 0.1 0.2 0.3\ncat 0.5 0.6\nsat 1 2 3\n", 2, "expected a word and 3 floats"),
        ("the 0.1 0.2 0.3\nsat 1 2 3\ncat 0.5 x 0.6\n", 3, "'cat'"),
        ("the 0.1 0.2 0.3\n\nsat 1 2 3\n", 2, "expected a word"),
        ("the 0.1 0.2 0.3\ncat 1 nan 3\n", 2, "non-finite"),
        ("400000 3\nthe 0.1 0.2 0.3\n", 1, "word2vec header"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, text, line, words):
    path = tmp_path / "bad_glove.txt"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        read_glove(path)
    message = str(info.value)
    assert f"bad_glove.txt:{line}:" in message and words in message


def test_non_utf8_line(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"the 0.1 0.2\ncaf\xe9 1 2\n")
    with pytest.raises(ValueError, match=r"latin.txt:2: not UTF-8"):
        read_glove(path)
