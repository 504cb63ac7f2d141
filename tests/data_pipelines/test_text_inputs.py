"""Text inputs fail loudly: a missing GloVe file, a model word table smaller than the
tokenizer's vocabulary, a query cut to ``max_query_len``."""

from __future__ import annotations

import logging

import ml_collections
import numpy as np
import pytest

from data_pipelines import input_pipeline as ip
from data_pipelines import text_inputs
from data_pipelines.records import Record


def record(i: int, text: str) -> Record:
    return Record(
        query_id=f"q{i}",
        video_id=f"v{i}",
        duration_s=4.0,
        spans_s=np.asarray([[1.0, 2.0]], np.float32),
        query_text=text,
        video_features=np.ones((4, 3), np.float32),
        clip_times=np.stack([np.arange(4), np.arange(1, 5)], 1).astype(np.float32),
    )


def data_config(**fields) -> ml_collections.ConfigDict:
    base = {"name": "synthetic", "num_input_clips": 4, "text_mode": "tokens", "max_query_len": 5}
    return ml_collections.ConfigDict({**base, **fields})


# Training queries "a b a", "b c": words a, b, c -> ids 2..4 after <pad> 0 and <unk> 1.
SPLITS = {"train": [record(0, "A b a"), record(1, "b, c.")], "val": [record(2, "c d")]}
VOCAB = 5  # by hand: <pad>, <unk>, a, b, c ("d" only in val: <unk>)


def test_missing_glove_file_names_path_field_and_remedy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = data_config(text_mode="glove", glove_path="data/glove.840B.300d.txt")
    with pytest.raises(FileNotFoundError) as info:
        ip.build_text_inputs(cfg, SPLITS)
    message = str(info.value)
    assert isinstance(info.value, text_inputs.TextFileMissing)
    assert "'data/glove.840B.300d.txt' not found" in message
    assert str(tmp_path) in message  # relative to the working directory
    assert "config.data.glove_path" in message
    assert "https://nlp.stanford.edu/data/glove.840B.300d.zip" in message
    assert "--config.data.text_mode=tokens" in message
    assert "\n" not in message and "Errno" not in message


def test_missing_glove_file_fails_before_any_data_is_made(tmp_path):
    config = ml_collections.ConfigDict(
        {"data": {"name": "no_such_benchmark", "text_mode": "glove", "glove_path": "/no/glove"}}
    )
    # The unknown benchmark would be the error if the splits were read first.
    with pytest.raises(text_inputs.TextFileMissing, match="'/no/glove' not found;"):
        ip.get_datasets(config)


def test_model_vocab_sized_from_the_tokenizer():
    text = ip.build_text_inputs(data_config(), SPLITS)
    assert text.vocab_size == VOCAB
    model = ml_collections.ConfigDict({"name": "mgpn", "vocab_size": 0})
    model.lock()
    assert text_inputs.resolve_model_vocab(model, text) == VOCAB
    assert model.vocab_size == VOCAB
    larger = ml_collections.ConfigDict({"name": "mgpn", "vocab_size": 100})
    assert text_inputs.resolve_model_vocab(larger, text) == 100  # spare rows are harmless


def test_model_vocab_below_the_tokenizer_is_refused():
    text = ip.build_text_inputs(data_config(), SPLITS)
    model = ml_collections.ConfigDict({"name": "mgpn", "vocab_size": 4})
    with pytest.raises(ValueError, match=r"vocab_size=4 is smaller than .* vocabulary of 5 ids"):
        text_inputs.resolve_model_vocab(model, text)


def test_data_vocab_size_caps_the_tokenizer_and_the_model_follows():
    text = ip.build_text_inputs(data_config(vocab_size=4), SPLITS)
    # a and b twice each (tie: alphabetical), c once and cut by the cap of 4 ids.
    assert text.encoder.words == ["<pad>", "<unk>", "a", "b"]
    model = ml_collections.ConfigDict({"name": "mgpn", "vocab_size": 0})
    assert text_inputs.resolve_model_vocab(model, text) == 4


def test_tokens_for_a_model_without_a_word_table_are_refused():
    text = ip.build_text_inputs(data_config(), SPLITS)
    with pytest.raises(ValueError, match=r"model 'xml' has no learned word table"):
        text_inputs.resolve_model_vocab(ml_collections.ConfigDict({"name": "xml"}), text)


def test_word_vector_modes_leave_the_model_alone():
    model = ml_collections.ConfigDict({"name": "mgpn", "vocab_size": 0})
    assert text_inputs.resolve_model_vocab(model, text_inputs.TextInputs("features")) == 0
    assert model.vocab_size == 0


def test_cut_queries_warn_once_per_split_with_a_count_and_an_example(caplog):
    long = " ".join(f"w{k}" for k in range(500))
    records = [record(0, "a b"), record(1, long), record(2, "c " * 6), record(3, "a")]
    text = ip.build_text_inputs(data_config(), {"train": records})
    with caplog.at_level(logging.WARNING, logger="data_pipelines"):
        split = ip.prepare_split(records, data_config(), text, "train")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    # By hand: q1 has 500 words and q2 six, max_query_len 5: 2 of 4 queries cut.
    assert "split 'train': 2 of 4 queries" in warnings[0]
    assert "max_query_len=5" in warnings[0] and "'q1' (500 tokens)" in warnings[0]
    assert split.num_truncated == 2
    np.testing.assert_array_equal(split.query["query_mask"][1], [1, 1, 1, 1, 1])
