"""The README's quick run (``configs/mgpn/synthetic.py``) gives a workdir that answers free-text
queries: its queries are read as text (``text_mode='tokens'``), so ``vmr-jax predict
--queries`` encodes a user's sentences with the run's saved vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vmr_jax import main

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "mgpn" / "synthetic.py")

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")


def test_runlocal_workdir_answers_free_text_queries(tmp_path):
    workdir = tmp_path / "mgpn_synthetic"
    train = ["train", "--config", f"{CONFIG}:runlocal", "--workdir", str(workdir)]
    assert main.main([*train, "--config.train.progress_bar=false"]) == 0
    config = json.loads((workdir / "config.json").read_text())
    assert config["data"]["text_mode"] == "tokens" and config["model"]["vocab_size"] > 0

    # One 40-s video of 32-d clip features (the tiny model's width) and two sentences: one in
    # the benchmark's words, one in words no training query has (all <unk>, still answered).
    features = tmp_path / "videos.npz"
    np.savez(features, my_video=np.random.default_rng(0).normal(size=(40, 32)).astype("f4"))
    queries = tmp_path / "queries.json"
    texts = ["verb0 adj1 noun2 w3", "A person opens the door."]
    queries.write_text(
        json.dumps(
            [
                {"query_id": f"q{k}", "video_id": "my_video", "duration": 40.0, "query": text}
                for k, text in enumerate(texts)
            ]
        )
    )
    output = tmp_path / "answers.json"
    argv = ["predict", "--workdir", str(workdir), "--features", str(features)]
    assert main.main([*argv, "--queries", str(queries), "--output", str(output)]) == 0
    answers = json.loads(output.read_text())["predictions"]
    assert [a["query_id"] for a in answers] == ["q0", "q1"]
    for answer in answers:
        moments = np.asarray(answer["moments"])
        assert 1 <= len(moments) <= 5  # max(evals.recalls)
        assert (moments[:, 0] >= 0).all() and (moments[:, 1] <= 40.0 + 1e-4).all()
        assert (moments[:, 0] < moments[:, 1]).all()
        assert ((moments[:, 2] > 0) & (moments[:, 2] < 1)).all()
        assert (np.diff(moments[:, 2]) <= 0).all()  # best first


def test_features_argument_keeps_the_word_vector_inputs():
    from vmr_jax import config_cli

    assert config_cli.load_config(f"{CONFIG}:features").data.text_mode == "features"
    assert config_cli.load_config(f"{CONFIG}:runlocal,features").train.num_steps == 6
