"""Official MGPN / 2D-TAN text mode: word split, torchtext's unknown-word row, no cut,
config defaults.

Expected values come from the official rules written out here (``[w.lower() for w in
s.split()]``; torchtext ``Vectors.cache``'s line rule, re-implemented below from
``torchtext/vocab/vectors.py``), from hand-written lists, or from the real annotation files.
"""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from data_pipelines.text_inputs import TextInputs, build_text_inputs, check_query_lengths
from vmr_jax import checkpointing, config_cli
from vmr_jax.predictor import encode_texts
from vmr_jax.text import saved
from vmr_jax.text.glove import glove_embeddings, read_glove_torchtext
from vmr_jax.text.tokenizer import UNK_ID, Vocabulary, split_whitespace

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SENTENCE = "A person's hand opens the Door. Then,  he\tSITS\u00a0down"


# --------------------------------------------------------------------------- word split
def test_official_split_is_whitespace_then_lower():
    # By hand: str.split() cuts at spaces, the tab and the no-break space; punctuation stays.
    want = ["a", "person's", "hand", "opens", "the", "door.", "then,", "he", "sits", "down"]
    assert split_whitespace(SENTENCE) == want
    letters = Vocabulary.build([SENTENCE])  # the default rule: runs of letters and digits
    assert "door" in letters.index and "door." not in letters.index and "s" in letters.index
    official = Vocabulary.build([SENTENCE], word_split="official")
    assert official.words[2:] == sorted(set(want))  # every count is 1: alphabetical
    assert official.encode("THE door. Unknown") == [
        official.index["the"],
        official.index["door."],
        UNK_ID,
    ]


def test_word_split_is_saved_with_the_text_encoder(tmp_path):
    vocab = Vocabulary.build([SENTENCE], word_split="official")
    saved.save_text_inputs(TextInputs("tokens", vocab), tmp_path)
    meta = json.loads((tmp_path / "text_encoder" / "encoder.json").read_text())
    assert meta["word_split"] == "official"
    loaded = saved.load_text_inputs(tmp_path)
    assert loaded.encoder.word_split == "official"
    assert loaded.encoder.encode("the door.") == vocab.encode("the door.")


def test_an_unknown_word_split_is_refused():
    with pytest.raises(ValueError, match=r"word_split must be one of \['letters', 'official'\]"):
        Vocabulary.build(["a b"], word_split="spaces")


# --------------------------------------------------------------------------- torchtext rows
def _torchtext_rows(path):
    """torchtext Vectors.cache, written out: ``(itos, rows)`` of the file."""
    itos, rows, dim = [], [], None
    with open(path, "rb") as f:
        for line in f:
            entries = line.rstrip().split(b" ")
            word, entries = entries[0], entries[1:]
            if dim is None and len(entries) > 1:
                dim = len(entries)
            elif len(entries) == 1:
                continue
            assert dim == len(entries)
            try:
                word = word.decode("utf-8")
            except UnicodeDecodeError:
                continue
            itos.append(word)
            rows.append(np.asarray([float(x) for x in entries], np.float32))
    return itos, rows


def _tricky_glove(path):
    """A 3-d file with a one-value header-like line, a non-UTF-8 word, a duplicate, a word
    with a no-break space, trailing spaces and CRLF."""
    lines = [
        b"first 0.1 0.2 0.3\n",
        b"header 7\n",  # one value: skipped, no row
        b"dup 1 1 1\n",
        b"\xff\xfe 9 9 9\n",  # not UTF-8: skipped, no row
        "nb\u00a0sp 2 2 2\n".encode(),
        b"second 0.4 0.5 0.6 \r\n",
        b"dup 3 3 3\n",  # the later duplicate wins in stoi
        b"third -1 -2 -3\n",
    ]
    path.write_bytes(b"".join(lines))


def test_torchtext_rows_and_lookup(tmp_path):
    path = tmp_path / "glove.txt"
    _tricky_glove(path)
    itos, rows = _torchtext_rows(path)
    assert itos == ["first", "dup", "nb\u00a0sp", "second", "dup", "third"]  # by hand
    stoi = {w: i for i, w in enumerate(itos)}
    for row in range(len(rows)):
        found, vector, dim, count = read_glove_torchtext(path, ["dup", "nb\u00a0sp", "x"], row)
        assert (dim, count) == (3, 6)
        np.testing.assert_array_equal(vector, rows[row])
        np.testing.assert_array_equal(found["dup"], rows[stoi["dup"]])  # row 4: [3, 3, 3]
        np.testing.assert_array_equal(found["nb\u00a0sp"], [2, 2, 2])
        assert "x" not in found
    # Row == number of rows: the zero row the official reader appends (2D-TAN on glove.6B).
    np.testing.assert_array_equal(read_glove_torchtext(path, [], 6)[1], np.zeros(3))
    with pytest.raises(ValueError, match=r"row 7 is past the file's 6 rows.*glove_missing='row:7'"):
        read_glove_torchtext(path, [], 7)


def test_unknown_words_read_the_configured_row(tmp_path):
    path = tmp_path / "glove.txt"
    _tricky_glove(path)
    _, rows = _torchtext_rows(path)
    vocab = Vocabulary.build(["Second xyzzy DUP"], word_split="official")
    table, missing = glove_embeddings(vocab, path, "row:3")
    assert missing == 1  # xyzzy
    np.testing.assert_array_equal(table[vocab.index["xyzzy"]], rows[3])  # "second"'s vector
    np.testing.assert_array_equal(table[UNK_ID], rows[3])
    np.testing.assert_array_equal(table[vocab.index["second"]], rows[3])
    np.testing.assert_array_equal(table[vocab.index["dup"]], [3, 3, 3])
    np.testing.assert_array_equal(table[0], np.zeros(3))
    with pytest.raises(ValueError, match=r"'zero', 'random' or 'row:N'"):
        glove_embeddings(vocab, path, "row:-1")


def test_row_400000_of_a_two_dimensional_file(tmp_path):
    """MGPN's real index on a file of 400,003 rows (plus one skipped line before row 400,000):
    the row is the line's own vector, counted as torchtext counts."""
    path = tmp_path / "big.txt"
    with open(path, "w") as f:
        for i in range(400_000):
            f.write(f"w{i} {i} -{i}\n")
            if i == 123:
                f.write("skipme 5\n")  # no row
        f.write("target 0.25 -0.5\nafter 1 2\nlast 3 4\n")
    config = ml_collections.ConfigDict(
        dict(text_mode="glove", glove_path=str(path), glove_missing="row:400000")
    )
    config.word_split = "official"
    splits = {"test": [_record("W5 Nowhere")]}
    text = build_text_inputs(config, splits)
    assert text.num_missing == 1
    np.testing.assert_array_equal(text.embeddings[text.encoder.index["nowhere"]], [0.25, -0.5])
    np.testing.assert_array_equal(text.embeddings[text.encoder.index["w5"]], [5, -5])


def _record(query_text):
    """What build_text_inputs reads of a record."""
    return types.SimpleNamespace(query_text=query_text)


# --------------------------------------------------------------------------- no cut
def test_a_query_longer_than_max_query_len_is_an_error_in_official_mode():
    counts = np.asarray([3, 9, 5])
    ids = ["a", "long-one", "c"]
    with pytest.raises(ValueError) as info:
        check_query_lengths(counts, ids, 8, "test", cut=False)
    message = str(info.value)
    assert "split 'test'" in message and "'long-one' has 9 words" in message
    assert "config.data.max_query_len=8" in message and "at least 9" in message
    assert check_query_lengths(counts, ids, 8, "test", cut=True) == 1  # the default: cut
    assert check_query_lengths(counts, ids, 9, "test", cut=False) == 0


def test_predictor_encodes_as_the_pipeline_in_official_mode(tmp_path):
    """Free-text queries: whitespace words, the <unk> row for words outside the file, and
    the no-cut error."""
    path = tmp_path / "glove.txt"
    _tricky_glove(path)
    _, rows = _torchtext_rows(path)
    data = ml_collections.ConfigDict(
        dict(
            text_mode="glove",
            glove_path=str(path),
            glove_missing="row:0",
            word_split="official",
            max_query_len=4,
            cut_long_queries=False,
        )
    )
    text = build_text_inputs(data, {"train": [_record("first second")]})
    out = encode_texts(["Third Zebra second", "dup first."], text, data, "queries")
    feats = out["query_features"]
    np.testing.assert_array_equal(feats[0, :3], [rows[5], rows[0], rows[3]])  # zebra -> row 0
    np.testing.assert_array_equal(feats[1, :2], [[3, 3, 3], rows[0]])  # "first." is unknown
    np.testing.assert_array_equal(out["query_mask"].sum(1), [3, 2])
    with pytest.raises(ValueError, match=r"'#0' has 5 words.*max_query_len=4"):
        encode_texts(["a b c d e"], text, data, "queries")


# --------------------------------------------------------------------------- configs
OFFICIAL_CONFIGS = {
    "mgpn/charades_i3d": "row:400000",
    "mgpn/charades_vgg": "row:400000",
    "mgpn/tacos": "row:400000",
    "mgpn/activitynet": "row:400000",
    "tan2d/charades": "zero",
    "tan2d/tacos": "zero",
    "tan2d/activitynet": "zero",
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_CONFIGS))
def test_benchmark_configs_default_to_the_official_text_mode(name):
    config = config_cli.load_config(f"{CONFIGS}/{name}.py")
    assert config.data.word_split == "official"
    assert config.data.glove_missing == OFFICIAL_CONFIGS[name]
    assert config.data.cut_long_queries is False
    if name.startswith("mgpn/"):
        assert config.model.text_padding == "batch"


@pytest.mark.parametrize("name", ["mgpn/synthetic", "tan2d/synthetic"])
def test_synthetic_configs_keep_the_default_text_mode(name):
    config = config_cli.load_config(f"{CONFIGS}/{name}.py")
    assert config.data.get("word_split", "letters") == "letters"
    assert config.data.get("cut_long_queries", True) is True
    assert config.model.get("text_padding", "fixed") == "fixed"


def _longest_official_query(shared_data_dir, dataset):
    """Words of the longest query of every split, by the official rule."""
    if dataset == "charades_sta":
        lines = []
        for split in ("train", "test"):
            path = shared_data_dir / "charades_sta" / f"charades_sta_{split}.txt"
            lines += path.read_text().splitlines(True)
        return max(len(line.split("##")[1].split(".\n")[0].split()) for line in lines)
    folder = {"tacos": "tacos", "activitynet": "activitynet_captions"}[dataset]
    return max(
        len(sentence.split())
        for split in ("train", "val", "test")
        for video in json.loads((shared_data_dir / folder / f"{split}.json").read_text()).values()
        for sentence in video["sentences"]
    )


@pytest.mark.parametrize("name", sorted(OFFICIAL_CONFIGS))
def test_official_max_query_len_holds_every_query(name, shared_data_dir):
    config = config_cli.load_config(f"{CONFIGS}/{name}.py")
    longest = _longest_official_query(shared_data_dir, config.data.name)
    assert config.data.max_query_len >= longest
    if config.data.name == "activitynet":
        assert longest == 82 > 64  # the old fixed 64 cut ActivityNet queries


def test_workdir_identity_carries_the_text_fields():
    config = config_cli.load_config(f"{CONFIGS}/mgpn/charades_i3d.py")
    saved_dict = json.loads(config.to_json_best_effort())
    assert checkpointing.workdir_differences(saved_dict, config) == []
    other = json.loads(config.to_json_best_effort())
    other["data"]["word_split"] = "letters"
    diffs = checkpointing.workdir_differences(other, config)
    assert diffs == [("data.word_split", "letters", "official")]
    # A config.json written before the field existed ran the old default.
    del other["data"]["word_split"]
    assert checkpointing.workdir_differences(other, config) == diffs
    synthetic = config_cli.load_config(f"{CONFIGS}/mgpn/synthetic.py")
    old = json.loads(synthetic.to_json_best_effort())
    old["data"].pop("word_split", None)
    old["data"].pop("glove_missing", None)
    assert not [d for d in checkpointing.workdir_differences(old, synthetic) if "data." in d[0]]


def test_config_regex_rule_matches_the_letters_split():
    """The default rule stays runs of letters and digits (unchanged behaviour)."""
    assert Vocabulary.build([SENTENCE]).words[2:] == sorted(
        set(re.findall(r"[^\W_]+", SENTENCE.lower()))
    )
