"""The shared config builders: every benchmark config takes `tiny` (a small model trained in a
few CPU minutes without GloVe), and every input-pipeline field is a config field."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmr_jax import config_cli

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(p for p in CONFIG_DIR.rglob("*.py") if p.name != "__init__.py")


BENCHMARK_CONFIGS = sorted(CONFIG_DIR.glob("*/[!s]*.py"))
# Hidden width of each family's `tiny` variant (vmr_jax/models/<family>.py VARIANTS['tiny']).
TINY_WIDTH = {"mgpn": 64, "tan2d": 16, "fvmr": 64, "vlanet": 64, "xml": 32, "cascaded_mpn": 32}
TINY_WIDTH["prem"] = 32
# Families that read query feature vectors only (never token ids): `tiny` keeps their text.
FEATURE_QUERIES = {"xml", "cascaded_mpn", "prem"}


@pytest.mark.parametrize("path", BENCHMARK_CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_benchmark_configs_take_tiny(path):
    """`:tiny`: the family's small sizes on the benchmark's features, a few hundred steps of a
    small batch, and learned word embeddings sized from the tokenizer (no GloVe file)."""
    full = config_cli.load_config(str(path))
    tiny = config_cli.load_config(f"{path}:tiny")
    family = tiny.model.name
    width = {"vlanet": "gru_hidden", "xml": "hidden_size", "cascaded_mpn": "hidden_size"}
    width["prem"] = "hidden_size"
    width = width.get(family, "hidden")
    assert tiny.model[width] == TINY_WIDTH[family] < full.model[width]
    for field in ("feature_dim", "vid_feat_size", "sub_feat_size", "q_feat_size"):
        if field in full.model:  # the data's widths stay
            assert tiny.model[field] == full.model[field]
    assert tiny.train.num_steps == 200 and tiny.train.num_epochs == 0
    assert tiny.train.batch_size == 16
    assert tiny.evals.get("every", 0) == 0 and tiny.evals.every_epochs == 0  # at the end
    if family in FEATURE_QUERIES:  # RoBERTa token features (TVR) or GloVe vectors, as full
        assert tiny.data.text_mode == full.data.text_mode in ("features", "glove")
    else:
        assert tiny.data.text_mode == "tokens" and tiny.model.vocab_size == 0
        assert full.data.text_mode == "glove"
    if "num_clips" in tiny.model:
        assert tiny.data.num_input_clips == tiny.model.num_clips * tiny.model.frame_stride
    both = config_cli.load_config(f"{path}:tiny,runlocal")
    assert both.train.num_steps == 4 and both.model.to_dict() == tiny.model.to_dict()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_input_pipeline_field_can_be_overridden(path):
    config = config_cli.load_config(
        str(path), [("data.vocab_size", "5000"), ("data.min_word_count", "2")]
    )
    assert config.data.vocab_size == 5000 and config.data.min_word_count == 2


@pytest.mark.parametrize(
    "name, split",
    [("fvmr/tacos.py", "val"), ("fvmr/activitynet.py", "val"), ("fvmr/charades.py", "test")],
)
@pytest.mark.parametrize("arg", ["", ":tiny"])
def test_fvmr_selects_its_checkpoint_on_a_validation_split(name, split, arg):
    """TACoS val and ActivityNet val_1 choose the best checkpoint, never the test split;
    Charades-STA has no validation split (train and test only), so test it is."""
    from data_pipelines.benchmarks import get_benchmark

    config = config_cli.load_config(f"configs/{name}{arg}")
    assert config.evals.split == split
    assert split in get_benchmark(config.data.name).SPLITS
