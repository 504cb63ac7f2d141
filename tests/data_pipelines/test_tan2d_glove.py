"""2D-TAN's words as microsoft/2D-TAN reads them: glove.6B.300d, unknown words on a zero row.

The official rule (``lib/datasets/{charades,tacos,activitynet}.py``), written out here: the
table is the file's rows in file order plus one appended zero row; a query word ``w`` reads row
``stoi.get(w.lower(), 400000)``, and 400,000 is the number of words in glove.6B, i.e. the
appended row.  On the tiny file below that row is ``len(file words)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_pipelines import input_pipeline as ip
from data_pipelines import text_inputs
from data_pipelines.records import Record
from vmr_jax import config_cli

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
TAN2D = [
    f"{CONFIG_DIR}/tan2d/{d}.py:{y}"
    for d in ("charades", "tacos", "activitynet")
    for y in ("conv", "pool")
]

# A glove.6B-style file: lower-case words, 3-d here instead of 300-d.
FILE_WORDS = {"person": [0.5, -1.0, 2.0], "opens": [1.5, 0.25, -0.75], "door": [-2.0, 3.0, 0.125]}


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


@pytest.mark.parametrize("spec", TAN2D, ids=lambda s: s.split("configs/")[1])
def test_tan2d_configs_read_glove_6b_with_zero_unknown_words(spec):
    config = config_cli.load_config(spec)
    assert config.data.text_mode == "glove"
    assert config.data.glove_path == "data/glove.6B.300d.txt"
    assert config.data.glove_missing == "zero"
    assert config.model.word_dim == 300


def test_missing_glove_6b_names_its_file_and_archive(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = config_cli.load_config(TAN2D[0])
    with pytest.raises(text_inputs.TextFileMissing) as info:
        ip.build_text_inputs(config.data, {"train": [record(0, "person opens door")]})
    message = str(info.value)
    assert "'data/glove.6B.300d.txt' not found" in message
    assert "https://nlp.stanford.edu/data/glove.6B.zip" in message
    assert "840B" not in message


@pytest.mark.parametrize(
    "name, url",
    [
        ("data/glove.6B.300d.txt", "https://nlp.stanford.edu/data/glove.6B.zip"),
        ("glove.6B.50d.txt", "https://nlp.stanford.edu/data/glove.6B.zip"),
        ("/x/glove.840B.300d.txt", "https://nlp.stanford.edu/data/glove.840B.300d.zip"),
        ("my_vectors.txt", "https://nlp.stanford.edu/projects/glove/"),
    ],
)
def test_glove_download_url_follows_the_release(name, url):
    assert text_inputs.glove_download_url(name) == url


def test_tan2d_unknown_words_read_the_official_zero_row(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    lines = [" ".join([w, *map(str, v)]) for w, v in FILE_WORDS.items()]
    (tmp_path / "data" / "glove.6B.300d.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)  # the config's default path, relative to the run directory
    config = config_cli.load_config(TAN2D[0])
    queries = ["person opens door", "person xyzzy door", "qwerty opens"]
    splits = {"train": [record(i, q) for i, q in enumerate(queries)]}
    text = ip.build_text_inputs(config.data, splits)

    # The official table and lookup, independently of vmr_jax.text.glove.
    itos = list(FILE_WORDS)
    official_table = np.concatenate([np.asarray(list(FILE_WORDS.values())), np.zeros((1, 3))])
    unknown_row = len(itos)  # 400000 on glove.6B: the appended zero row
    for query in queries:
        for word in query.split():
            want = official_table[itos.index(word) if word in itos else unknown_row]
            got = text.embeddings[text.encoder.words.index(word)]
            np.testing.assert_array_equal(got, want.astype(np.float32))
    assert text.num_missing == 2  # xyzzy, qwerty
