"""tf.data pipeline: 2D-TAN resampling, padding and masks, host splits, eval padding."""

from __future__ import annotations

import itertools

import ml_collections
import numpy as np
import pytest

from data_pipelines import input_pipeline as ip
from data_pipelines.records import Record


def data_config(**overrides):
    cfg = {
        "name": "synthetic",
        "num_input_clips": 4,
        "normalize": False,
        "text_mode": "tokens",
        "max_query_len": 5,
    }
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def record(i, num_clips=6, text="a b", spans=((1.0, 2.0),), dim=3, token_features=None):
    x = np.arange(num_clips * dim, dtype=np.float32).reshape(num_clips, dim) + 100 * i
    return Record(
        query_id=f"q{i}",
        video_id=f"v{i}",
        duration_s=float(num_clips),
        spans_s=np.asarray(spans, np.float32),
        query_text=text,
        video_features=x,
        clip_times=np.stack([np.arange(num_clips), np.arange(1, num_clips + 1)], 1),
        query_token_features=token_features,
    )


def official_loop(x, num_bins):
    """The official average_to_fixed_length, re-written as plain loops (float32 index maths)."""
    t = x.shape[0]
    idx = []
    for k in range(num_bins + 1):
        pos = np.float32(np.float32(k) / np.float32(num_bins)) * np.float32(t)
        idx.append(min(round(float(np.float32(pos))), t - 1))  # round(): half to even
    out = []
    for k in range(num_bins):
        s, e = idx[k], idx[k + 1]
        if s < e:
            total = [0.0] * x.shape[1]
            for c in range(s, e):
                for d in range(x.shape[1]):
                    total[d] += float(x[c, d])
            out.append([v / (e - s) for v in total])
        else:
            out.append([float(v) for v in x[s]])
    return np.asarray(out)


# ----------------------------------------------------------------------------- resampling
def test_resample_hand_computed():
    x = np.array([[0, 0], [1, 10], [2, 20], [3, 30], [4, 40]], np.float32)
    # T=5, N=2: k/N*T = 0, 2.5, 5 -> round half to even 0, 2, 5 -> clamp to T-1: 0, 2, 4.
    np.testing.assert_allclose(ip.resample_clips(x, 2), [[0.5, 5], [2.5, 25]])
    np.testing.assert_array_equal(ip.bin_edges(5, 2), [0, 2, 4])
    # T=2, N=4: 0, .5, 1, 1.5, 2 -> 0, 0, 1, 2, 2 -> 0, 0, 1, 1, 1: empty bins take clip idx[k].
    np.testing.assert_allclose(ip.resample_clips(x[:2], 4), [[0, 0], [0, 0], [1, 10], [1, 10]])
    # T=6, N=3: 0, 2, 4, 6 -> 0, 2, 4, 5: the last clip is dropped.
    y = np.arange(6, dtype=np.float32)[:, None]
    np.testing.assert_allclose(ip.resample_clips(y, 3), [[0.5], [2.5], [4.0]])


def test_resample_normalises_native_clips_first():
    x = np.array([[3, 4], [0, 2], [0, 0]], np.float32)
    # norms 5, 2, 0 (-> divided by 1e-12, stays 0); N=2: 0, 1.5, 3 -> 0, 2, 3 -> 0, 2, 2.
    got = ip.resample_clips(x, 2, normalize=True)
    np.testing.assert_allclose(got, [[0.3, 0.9], [0.0, 0.0]], atol=1e-7)


@pytest.mark.parametrize("num_bins", [1, 4, 16, 32, 64])
def test_resample_matches_brute_force_loop(num_bins):
    rng = np.random.default_rng(num_bins)
    for t in [1, 2, 3, 7, 31, 32, 33, 50, 97, 200]:
        x = rng.normal(size=(t, 3)).astype(np.float32)
        np.testing.assert_allclose(
            ip.resample_clips(x, num_bins), official_loop(x, num_bins), atol=1e-5
        )


# ----------------------------------------------------------------------------- padding
def test_tokens_padding_and_masks():
    from vmr_jax.text.tokenizer import Vocabulary

    records = [
        record(0, text="b a", spans=[[1.0, 2.0]]),
        record(1, num_clips=9, text="a c a d e f g", spans=[[0.0, 3.0], [2.5, 9.0]]),
        record(2, num_clips=2, text="zz", spans=[[0.5, 1.5]]),
    ]
    vocab = Vocabulary(["<pad>", "<unk>", "a", "b", "c", "d", "e", "f"])
    split = ip.prepare_split(records, data_config(), ip.TextInputs("tokens", vocab))
    assert split.num_truncated == 1
    batch = ip.gather_batch(split, np.array([0, 1, 2]))
    np.testing.assert_array_equal(
        batch["query_tokens"], [[3, 2, 0, 0, 0], [2, 4, 2, 5, 6], [1, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        batch["query_mask"], [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(batch["spans"][1], [[0, 3], [2.5, 9]])
    np.testing.assert_array_equal(batch["spans"][0], [[1, 2], [0, 0]])
    np.testing.assert_array_equal(batch["span_mask"], [[1, 0], [1, 1], [1, 0]])
    np.testing.assert_array_equal(batch["duration"], [6, 9, 2])
    np.testing.assert_array_equal(batch["video_mask"], np.ones((3, 4)))
    assert batch["video_features"].shape == (3, 4, 3)
    for q, r in enumerate(records):
        np.testing.assert_allclose(
            batch["video_features"][q], official_loop(r.video_features, 4), atol=1e-5
        )
    np.testing.assert_array_equal(batch["query_index"], [0, 1, 2])
    np.testing.assert_array_equal(batch["valid"], [1, 1, 1])
    np.testing.assert_array_equal(batch["video_index"], [0, 1, 2])  # videos v0, v1, v2
    dtypes = {k: v.dtype for k, v in batch.items()}
    integers = ("query_tokens", "query_index", "video_index")
    assert all(dtypes[k] == np.int32 for k in integers)
    assert all(dtypes[k] == np.float32 for k in dtypes if k not in integers)


def test_feature_text_mode_and_fixed_span_slots():
    feats = [np.full((n, 2), n, np.float32) for n in (3, 7)]
    records = [record(i, token_features=f) for i, f in enumerate(feats)]
    split = ip.prepare_split(records, data_config(text_mode="features", max_spans=3), None)
    batch = ip.gather_batch(split, np.array([1, 0]))
    assert "query_tokens" not in batch
    np.testing.assert_array_equal(batch["query_features"][1], [[3, 3]] * 3 + [[0, 0]] * 2)
    np.testing.assert_array_equal(batch["query_features"][0], [[7, 7]] * 5)
    np.testing.assert_array_equal(batch["query_mask"][1], [1, 1, 1, 0, 0])
    assert batch["spans"].shape == (2, 3, 2)
    np.testing.assert_array_equal(batch["span_mask"], [[1, 0, 0]] * 2)


def test_glove_text_mode(tmp_path):
    glove = tmp_path / "glove.txt"
    glove.write_text("a 1 2\nb 3 4\nzz 5 6\n")
    splits = {"train": [record(0, text="A b, q.")], "test": [record(1, text="zz a")]}
    cfg = data_config(text_mode="glove", glove_path=str(glove))
    text = ip.build_text_inputs(cfg, splits)
    assert text.num_missing == 1 and text.vocab_size == 0
    batch = ip.gather_batch(
        ip.prepare_split(splits["train"] + splits["test"], cfg, text), np.arange(2)
    )
    np.testing.assert_array_equal(batch["query_features"][0, :4], [[1, 2], [3, 4], [0, 0], [0, 0]])
    np.testing.assert_array_equal(batch["query_mask"][0], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(batch["query_features"][1, :2], [[5, 6], [1, 2]])


def test_bad_inputs_name_the_record():
    with pytest.raises(ValueError, match=r"'q1'.*'spans_s' has 2 spans"):
        ip.prepare_split(
            [record(0), record(1, spans=[[0, 1], [1, 2]])],
            data_config(text_mode="features", max_spans=1),
            None,
        )
    with pytest.raises(ValueError, match=r"'q0'.*'query_token_features' is missing"):
        ip.prepare_split([record(0)], data_config(text_mode="features"), None)
    from vmr_jax.text.tokenizer import Vocabulary

    with pytest.raises(ValueError, match=r"'q0'.*no token"):
        ip.prepare_split(
            [record(0, text="?!")], data_config(), ip.TextInputs("tokens", Vocabulary.build(["a"]))
        )


# ----------------------------------------------------------------------------- iterators
@pytest.fixture(scope="module")
def split21():
    feats = np.zeros((2, 2), np.float32)
    records = [record(i, num_clips=3 + i % 4, token_features=feats) for i in range(21)]
    return ip.prepare_split(records, data_config(text_mode="features"), None)


def test_eval_counts_every_query_once_and_pads_last_batch(split21):
    batches = list(
        ip.make_eval_iterator(split21, data_config(), 8, process_index=0, process_count=1)
    )
    assert len(batches) == 3 == ip.num_eval_batches(21, 8)
    assert all(b["video_features"].shape == (8, 4, 3) for b in batches)
    np.testing.assert_array_equal(batches[2]["valid"], [1] * 5 + [0] * 3)
    np.testing.assert_array_equal(batches[2]["query_index"], [16, 17, 18, 19, 20, -1, -1, -1])
    index = np.concatenate([b["query_index"] for b in batches])
    valid = np.concatenate([b["valid"] for b in batches])
    assert sorted(index[valid == 1]) == list(range(21))
    assert np.all(index[valid == 0] == -1)
    # padding rows hold finite, non-degenerate inputs
    assert np.all(batches[2]["duration"] > 0) and np.all(batches[2]["query_mask"].sum(1) > 0)


def test_eval_hosts_split_the_global_batch(split21):
    hosts = [
        list(ip.make_eval_iterator(split21, data_config(), 8, process_index=i, process_count=2))
        for i in range(2)
    ]
    assert len(hosts[0]) == len(hosts[1]) == 3
    index = np.concatenate([b["query_index"] for host in hosts for b in host])
    valid = np.concatenate([b["valid"] for host in hosts for b in host])
    assert all(b["valid"].shape == (4,) for host in hosts for b in host)
    assert sorted(index[valid == 1]) == list(range(21))
    np.testing.assert_array_equal(hosts[1][2]["query_index"], [20, -1, -1, -1])
    with pytest.raises(ValueError, match="not divisible"):
        ip.make_eval_iterator(split21, data_config(), 9, process_index=0, process_count=2)


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def test_train_shuffles_by_seed_covers_epochs_and_splits_hosts(split21):
    cfg = data_config()
    a = take(ip.make_train_iterator(split21, cfg, 6, seed=3, process_index=0, process_count=1), 7)
    b = take(ip.make_train_iterator(split21, cfg, 6, seed=3, process_index=0, process_count=1), 7)
    c = take(ip.make_train_iterator(split21, cfg, 6, seed=4, process_index=0, process_count=1), 7)
    order_a = np.concatenate([x["query_index"] for x in a])
    np.testing.assert_array_equal(order_a, np.concatenate([x["query_index"] for x in b]))
    assert not np.array_equal(order_a, np.concatenate([x["query_index"] for x in c]))
    # 7 batches of 6 = 2 epochs of 21: each epoch is a permutation, and the two differ.
    assert sorted(order_a[:21]) == sorted(order_a[21:]) == list(range(21))
    assert not np.array_equal(order_a[:21], order_a[21:])
    assert all(np.all(x["valid"] == 1) for x in a)
    # rows carry their own record's data
    np.testing.assert_array_equal(a[0]["duration"], split21.query["duration"][a[0]["query_index"]])
    # hosts get consecutive thirds of the same global batch
    hosts = [
        take(ip.make_train_iterator(split21, cfg, 6, seed=3, process_index=i, process_count=3), 7)
        for i in range(3)
    ]
    for step in range(7):
        joined = np.concatenate([hosts[i][step]["query_index"] for i in range(3)])
        np.testing.assert_array_equal(joined, a[step]["query_index"])
        assert hosts[1][step]["video_features"].shape == (2, 4, 3)


def test_get_datasets_synthetic_end_to_end():
    cfg = ml_collections.ConfigDict()
    cfg.data = data_config(
        num_input_clips=16, max_query_len=12, normalize=True, seed=1, synthetic={"num_videos": 20}
    )
    data = ip.get_datasets(cfg)
    assert sorted(data.splits) == ["test", "train", "val"]
    train_words = {w for r in data.splits["train"] for w in r.query_text.split()}
    assert data.vocab_size == len(train_words) + 2  # pad, unk
    assert data.video_feature_dim == 32 and data.query_feature_dim == 0
    batch = next(ip.make_train_iterator(data.splits["train"], cfg.data, 4, 0, text=data.text))
    assert batch["query_tokens"].shape == (4, 12) and batch["video_features"].shape == (4, 16, 32)
    # normalised native clips average to vectors of norm <= 1
    assert np.all(np.linalg.norm(batch["video_features"], axis=-1) <= 1 + 1e-5)
    cfg.data.text_mode = "features"
    data = ip.get_datasets(cfg)
    assert data.query_feature_dim == 32 and data.vocab_size == 0


def test_get_datasets_sentencepiece(tmp_path):
    cfg = ml_collections.ConfigDict()
    model = tmp_path / "spm.model"
    cfg.data = data_config(
        tokenizer="sentencepiece",
        sentencepiece_model=str(model),
        vocab_size=80,
        synthetic={"num_videos": 20},
    )
    data = ip.get_datasets(cfg)
    assert model.is_file() and 2 < data.vocab_size <= 80
    batch = next(ip.make_eval_iterator(data.splits["val"], cfg.data, 4, text=data.text))
    assert batch["query_tokens"].max() < data.vocab_size


def test_train_iterator_start_step_skips_whole_batches():
    """A resumed iterator yields exactly the batches an uninterrupted one yields next."""
    from data_pipelines import synthetic

    spec = synthetic.SyntheticSpec(num_videos=12, queries_per_video=2, min_clips=8, max_clips=12)
    records = synthetic.make_splits(spec, seed=0, splits=("train",))["train"]
    cfg = ml_collections.ConfigDict(
        {"num_input_clips": 8, "max_query_len": 10, "text_mode": "features"}
    )
    full = ip.make_train_iterator(records, cfg, 4, seed=3)
    want = [next(full)["query_index"] for _ in range(9)][5:]
    resumed = ip.make_train_iterator(records, cfg, 4, seed=3, start_step=5)
    got = [next(resumed)["query_index"] for _ in range(4)]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
