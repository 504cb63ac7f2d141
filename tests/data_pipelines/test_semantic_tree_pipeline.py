"""config.data.semantic_tree in the input pipeline: tree keys in every batch, word positions,
limits, the parse cache of in-memory and built datasets, and the word-alignment errors.

Expected positions are read off the words of each query by the test (the synthetic grammar:
``verb<i>``, ``adj<i>``, ``noun<i>``, ``scene<i>``), or written by hand.
"""

from __future__ import annotations

import json
import re
import types

import h5py
import ml_collections
import numpy as np
import pytest

from data_pipelines import build, query_trees, synthetic
from data_pipelines import input_pipeline as ip
from data_pipelines.annotations import Annotation
from data_pipelines.benchmarks import FeatureSet, FeatureSpec
from data_pipelines.records import Record
from data_pipelines.stored import StoredDataset
from vmr_jax.text import tree_parsers
from vmr_jax.text.tokenizer import split_words

TREE_KEYS = ("tree_verbs", "tree_nouns", "tree_edges")


def config(**data):
    base = {
        "name": "synthetic",
        "num_input_clips": 8,
        "text_mode": "tokens",
        "max_query_len": 12,
        "prefetch": 1,
        "semantic_tree": "synthetic",
        "synthetic": {"num_videos": 20, "num_scenes": 3},
    }
    base.update(data)
    return ml_collections.ConfigDict({"data": base})


def expected_tree(text: str):
    """Verb, noun spans and edges of a synthetic query, read off its words."""
    words = split_words(text)
    at = {re.sub(r"\d", "", w): i for i, w in enumerate(words) if not w.startswith("w")}
    verbs = np.full((4, 2), -1)
    verbs[0] = at["verb"], at["verb"]
    phrases = sorted([(at["adj"], at["noun"])] + ([(at["scene"],) * 2] if "scene" in at else []))
    nouns = np.full((6, 2), -1)
    nouns[: len(phrases)] = phrases
    edges = np.zeros((4, 6))
    edges[0, : len(phrases)] = 1
    return verbs, nouns, edges


def check_rows(batch, records):
    for q, index in enumerate(batch["query_index"]):
        verbs, nouns, edges = expected_tree(records[max(int(index), 0)].query_text)
        np.testing.assert_array_equal(batch["tree_verbs"][q], verbs)
        np.testing.assert_array_equal(batch["tree_nouns"][q], nouns)
        np.testing.assert_array_equal(batch["tree_edges"][q], edges)


@pytest.fixture(scope="module")
def synthetic_data():
    cfg = config()
    datasets = ip.get_datasets(cfg)
    prepared = {
        s: ip.prepare_split(datasets.splits[s], cfg.data, datasets.text, s)
        for s in ("train", "val")
    }
    return cfg, datasets, prepared


def test_every_batch_has_the_tree_keys_at_the_words(synthetic_data):
    cfg, datasets, prepared = synthetic_data
    train, val = datasets.splits["train"], datasets.splits["val"]
    batch = next(ip.make_train_iterator(prepared["train"], cfg.data, 4, seed=0, process_count=1,
                                        process_index=0))  # fmt: skip
    assert batch["tree_verbs"].shape == (4, 4, 2) and batch["tree_verbs"].dtype == np.int32
    assert batch["tree_nouns"].shape == (4, 6, 2) and batch["tree_nouns"].dtype == np.int32
    assert batch["tree_edges"].shape == (4, 4, 6) and batch["tree_edges"].dtype == np.float32
    check_rows(batch, train)
    evals = list(ip.make_eval_iterator(prepared["val"], cfg.data, 3, process_count=1,
                                       process_index=0))  # fmt: skip
    assert sum(b["valid"].sum() for b in evals) == len(val)
    for b in evals:
        check_rows(b, val)  # padding rows repeat record 0
    check_rows(ip.gather_batch(prepared["train"], np.array([5, -1])), train)
    query_only = prepared["val"].query_batch(np.array([1, 0]))
    assert set(TREE_KEYS) <= set(query_only)
    check_rows(query_only, val)
    summary = prepared["train"].tree_summary
    assert summary["queries"] == len(train) and summary["mean_verbs"] == 1
    assert summary["verbs_cut"] == summary["nouns_cut"] == 0


def test_hand_checked_rows(synthetic_data):
    _, datasets, prepared = synthetic_data
    # The first train query, by hand: verb0(0) w47 w1 adj0(3) w7 noun2(5) scene1(6).
    text = datasets.splits["train"][0].query_text
    assert text == "verb0 w47 w1 adj0 w7 noun2 scene1"
    batch = ip.gather_batch(prepared["train"], np.array([0]))
    np.testing.assert_array_equal(batch["tree_verbs"][0, :2], [[0, 0], [-1, -1]])
    np.testing.assert_array_equal(batch["tree_nouns"][0, :3], [[3, 5], [6, 6], [-1, -1]])
    np.testing.assert_array_equal(batch["tree_edges"][0, 0], [1, 1, 0, 0, 0, 0])


def test_features_mode_rows_are_words_and_give_the_same_trees(synthetic_data):
    _, datasets, prepared = synthetic_data
    cfg = config(text_mode="features")
    split = ip.prepare_split(datasets.splits["val"], cfg.data, None, "val")
    for key in TREE_KEYS:
        np.testing.assert_array_equal(split.query[key], prepared["val"].query[key])


def test_truncated_queries_keep_positions_inside_and_a_verb():
    cfg = config(max_query_len=3)
    datasets = ip.get_datasets(cfg)
    split = ip.prepare_split(datasets.splits["train"], cfg.data, datasets.text, "train")
    verbs, nouns = split.query["tree_verbs"], split.query["tree_nouns"]
    assert verbs.max() <= 2 and nouns.max() <= 2
    assert (verbs[:, 0, 0] >= 0).all()  # every query keeps a verb node
    cut = split.tree_summary
    assert cut["verbs_cut"] == cut["verb_from_root_after_cut"] > 0
    for r, v in zip(datasets.splits["train"], verbs):
        words = split_words(r.query_text)
        if words.index(next(w for w in words if w.startswith("verb"))) >= 3:
            np.testing.assert_array_equal(v[0], [0, 2])  # root cut too: the kept words


def test_default_config_adds_no_tree_key():
    cfg = config()
    del cfg.data["semantic_tree"]
    datasets = ip.get_datasets(cfg)
    split = ip.prepare_split(datasets.splits["val"], cfg.data, datasets.text, "val")
    batch = ip.gather_batch(split, np.array([0]))
    assert not set(TREE_KEYS) & set(batch) and split.tree_summary is None


def _record(text, rows):
    return Record(
        query_id="q0",
        video_id="v0",
        duration_s=4.0,
        spans_s=np.array([[0.0, 1.0]]),
        query_text=text,
        video_features=np.ones((4, 2), np.float32),
        clip_times=np.stack([np.arange(4), np.arange(1, 5)], 1).astype(np.float32),
        query_token_features=np.ones((rows, 3), np.float32),
    )


def test_unaligned_text_is_an_error_naming_the_field():
    class Pieces:  # a tokenizer that is not the word vocabulary (SentencePiece)
        def encode(self, text):
            return [2, 3, 4]

        def __len__(self):
            return 5

    records = [_record("verb0 adj0 noun0", 3)]
    with pytest.raises(ValueError, match=r"semantic_tree.*tokenizer='sentencepiece'"):
        ip.prepare_split(records, config().data, ip.TextInputs("tokens", Pieces()))
    with pytest.raises(ValueError, match=r"'q0'.*semantic_tree.*got 4 rows for 3 words"):
        ip.prepare_split([_record("verb0 adj0 noun0", 4)], config(text_mode="features").data)
    with pytest.raises(ValueError, match=r"semantic_tree must be '' or one of"):
        ip.prepare_split(records, config(text_mode="features", semantic_tree="srl").data)


def test_parse_cache_of_in_memory_records(tmp_path, monkeypatch):
    path = tmp_path / "trees" / "parses.json"
    records = [_record("w1 verb2 adj1 noun0", 4), _record("verb0 adj0 w3 noun1", 4)]
    cfg = config(text_mode="features", tree_cache=str(path)).data
    first = ip.prepare_split(records, cfg)
    stored = json.loads(path.read_text())
    assert stored["parser"] == "synthetic"
    assert sorted(stored["parses"]) == ["verb0 adj0 w3 noun1", "w1 verb2 adj1 noun0"]

    def no_parse(self, text):
        raise AssertionError("parsed again")

    monkeypatch.setattr(synthetic.SyntheticTreeParser, "parse_query", no_parse)
    again = ip.prepare_split(records, cfg)
    for key in TREE_KEYS:
        np.testing.assert_array_equal(again.query[key], first.query[key])
    np.testing.assert_array_equal(first.query["tree_nouns"][1, :2], [[1, 3], [-1, -1]])


# ----------------------------------------------------------------------------- built dataset
QUERIES = [
    {"id": "1", "vid": "a", "desc": "A man opens the door."},
    {"id": "2", "vid": "b", "desc": "He pours the milk into a glass."},
]


def _parse_split(annotation_dir, split, report):
    with open(f"{annotation_dir}/{split}.jsonl") as f:
        rows = [json.loads(line) for line in f]
    report.kept(split, len(rows))
    return [
        Annotation(q["id"], q["vid"], 6.0, np.array([[0.0, 3.0]]), q["desc"], {"desc_id": q["id"]})
        for q in rows
    ]


def _spec(file, dim, key="{video_id}"):
    return FeatureSpec(file=file, layout="hdf5", dim=dim, extractor="toy", clip="1 s",
                       normalisation="none", source="test", key_format=key)  # fmt: skip


def _build(tmp_path, token_rows=None):
    """A two-query built benchmark (TVR layout); query token features when ``token_rows``."""
    with open(tmp_path / "train.jsonl", "w") as f:
        f.writelines(json.dumps(q) + "\n" for q in QUERIES)
    with h5py.File(tmp_path / "video.h5", "w") as f:
        for vid in ("a", "b"):
            f[vid] = np.ones((4, 3), np.float32)
    features = FeatureSet(video=_spec("video.h5", 3))
    if token_rows:
        with h5py.File(tmp_path / "query.h5", "w") as f:
            for q, rows in zip(QUERIES, token_rows):
                f[q["id"]] = np.ones((rows, 2), np.float32)
        features = FeatureSet(video=features.video, query=_spec("query.h5", 2, "{desc_id}"))
    module = types.SimpleNamespace(NAME="toy", SPLITS={"train": ("train.jsonl",)},
                                   FEATURES={"f": features}, parse_split=_parse_split)  # fmt: skip
    paths = {"video": str(tmp_path / "video.h5")}
    if token_rows:
        paths["query"] = str(tmp_path / "query.h5")
    out = tmp_path / "built"
    build.build(build.Sources(module, "f", features, str(tmp_path), paths), str(out))
    return StoredDataset(out).split("train")


def test_spacy_trees_of_a_built_dataset_are_cached_next_to_it(tmp_path, monkeypatch):
    train = _build(tmp_path)
    cfg = config(semantic_tree="spacy", max_query_len=20).data
    text = ip.build_text_inputs(cfg, {"train": train})
    first = ip.prepare_split(train, cfg, text, "train")
    # By hand: a0 man1 opens2 the3 door4 / he0 pours1 the2 milk3 into4 a5 glass6.
    np.testing.assert_array_equal(
        first.query["tree_verbs"][:, :2], [[[2, 2], [-1, -1]], [[1, 1], [-1, -1]]]
    )
    np.testing.assert_array_equal(
        first.query["tree_nouns"][:, :4],
        [[[1, 1], [4, 4], [-1, -1], [-1, -1]], [[0, 0], [3, 3], [6, 6], [-1, -1]]],
    )
    np.testing.assert_array_equal(first.query["tree_edges"][:, 0, :3], [[1, 1, 0], [1, 1, 1]])
    cache = tmp_path / "built" / "semantic_parses_spacy-en_core_web_sm.json"
    assert sorted(json.loads(cache.read_text())["parses"]) == sorted(q["desc"] for q in QUERIES)

    # Reused: a fresh process (no parser yet) without spaCy gets the same arrays.
    query_trees.tree_parser.cache_clear()

    def no_spacy(name):
        raise ImportError("spaCy is not needed with a complete cache")

    monkeypatch.setattr(tree_parsers, "load_spacy_model", no_spacy)
    again = ip.prepare_split(train, cfg, text, "train")
    for key in TREE_KEYS:
        np.testing.assert_array_equal(again.query[key], first.query[key])
    query_trees.tree_parser.cache_clear()


def test_built_token_features_that_are_not_words_are_an_error(tmp_path):
    # 6 subword rows for the 5 words of query 1 (a RoBERTa-like tokenisation).
    train = _build(tmp_path, token_rows=[6, 7])
    cfg = config(text_mode="features").data
    with pytest.raises(ValueError, match=r"'1'.*semantic_tree.*got 6 rows for 5 words"):
        ip.prepare_split(train, cfg, None, "train")
