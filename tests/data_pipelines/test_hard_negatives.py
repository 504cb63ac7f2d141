"""data_pipelines.hard_negatives: the mined file (round trip, every refusal as one line naming
the file), the per-example negative draw, and the train pipeline / DataSources serving the
negative videos of a synthetic split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from data_pipelines import hard_negatives as hn
from data_pipelines import input_pipeline as ip
from data_pipelines import synthetic
from vmr_jax import config_cli
from vmr_jax.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def mined(num_queries=6, num_videos=9, top=5, split="train", seed=0):
    """Random distinct rows per query (any order is a valid mined list for these tests)."""
    rng = np.random.default_rng(seed)
    rows = np.stack([rng.permutation(num_videos)[:top] for _ in range(num_queries)])
    return hn.HardNegatives(
        video_rows=rows.astype(np.int32),
        scores=-np.sort(rng.random((num_queries, top)), axis=1).astype(np.float32),
        split=split,
        video_ids=[f"vid{v}" for v in range(num_videos)],
        query_ids=[f"q{q}" for q in range(num_queries)],
        checkpoint_step=1234,
        top=top,
    )


def one_line_error(excinfo, *parts):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)


# --------------------------------------------------------------------------- file
def test_save_load_round_trip_and_summary(tmp_path):
    negatives = mined()
    path = negatives.save(tmp_path / hn.DEFAULT_DIRNAME)
    assert path == hn.default_path(tmp_path) == tmp_path / "hard_negatives" / "train.npz"
    assert not [p for p in path.parent.iterdir() if ".tmp" in p.name]  # temp files replaced
    back = hn.load(path)
    np.testing.assert_array_equal(back.video_rows, negatives.video_rows)
    np.testing.assert_array_equal(back.scores, negatives.scores)
    assert back.video_rows.dtype == np.int32 and back.scores.dtype == np.float32
    assert (back.split, back.top, back.checkpoint_step) == ("train", 5, 1234)
    assert back.video_ids == negatives.video_ids and back.query_ids == negatives.query_ids
    summary = json.loads(path.with_suffix(".json").read_text())
    assert summary["split"] == "train" and summary["top"] == 5
    assert summary["num_queries"] == 6 and summary["num_videos"] == 9
    assert summary["checkpoint_step"] == 1234 and summary["created"]
    want = hashlib.sha256(json.dumps([f"vid{v}" for v in range(9)]).encode()).hexdigest()
    assert summary["video_ids_sha256"] == want
    want = hashlib.sha256(json.dumps([f"q{q}" for q in range(6)]).encode()).hexdigest()
    assert summary["query_ids_sha256"] == want


def test_missing_file_names_path_and_command(tmp_path):
    path = hn.default_path(tmp_path / "run")
    with pytest.raises(UserError) as excinfo:
        hn.load(path)
    one_line_error(
        excinfo, f"no mined hard negatives at {path}", f"vmr-jax mine --workdir {tmp_path / 'run'}"
    )


def _write_npz(path, **changes):
    good = mined()
    arrays = {
        "video_rows": good.video_rows,
        "scores": good.scores,
        "video_ids": np.asarray(good.video_ids),
        "query_ids": np.asarray(good.query_ids),
        "split": np.asarray("train"),
        "top": np.asarray(5),
        "checkpoint_step": np.asarray(7),
    }
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"video_rows": np.full((6, 5), 9, np.int32)}, "'video_rows'"),  # 9 videos: 0..8
        ({"video_rows": np.full((6, 5), -1, np.int32)}, "'video_rows'"),
        ({"video_rows": np.zeros((6, 5), np.int64)}, "'video_rows'"),  # dtype
        ({"video_rows": np.zeros((6, 4), np.int32)}, "'video_rows'"),  # shape vs top
        ({"video_rows": np.zeros((6, 5), np.int32)}, "'video_rows'"),  # a video twice
        ({"scores": np.zeros((6, 5), np.float64)}, "'scores'"),
        ({"query_ids": np.arange(6)}, "'query_ids'"),
        ({"split": None}, "'split'"),
        ({"top": np.asarray([5])}, "'top'"),
    ],
)
def test_malformed_file_is_refused_naming_the_field(tmp_path, changes, field):
    path = _write_npz(tmp_path / "train.npz", **changes)
    with pytest.raises(UserError) as excinfo:
        hn.load(path)
    one_line_error(excinfo, str(path), field)


def test_cut_file_is_refused(tmp_path):
    path = mined().save(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as excinfo:
        hn.load(path)
    one_line_error(excinfo, str(path), "cut or corrupt")
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(UserError) as excinfo:
        hn.load(path)
    one_line_error(excinfo, str(path), "cut or corrupt")


class FakePrepared:
    def __init__(self, query_ids, video_ids):
        self.query_ids, self.video_ids = list(query_ids), list(video_ids)


def test_check_matches_refuses_other_split_and_other_data(tmp_path):
    path = mined(split="val").save(tmp_path)
    negatives = hn.load(path)
    same = FakePrepared(negatives.query_ids, negatives.video_ids)
    hn.check_matches(negatives, same, "val", path)  # accepted
    with pytest.raises(UserError) as excinfo:
        hn.check_matches(negatives, same, "train", path)
    one_line_error(excinfo, str(path), "mined on split 'val', this run trains on 'train'")
    other_videos = FakePrepared(negatives.query_ids, [*negatives.video_ids[:3], "x", *"abcde"])
    with pytest.raises(UserError) as excinfo:
        hn.check_matches(negatives, other_videos, "val", path)
    one_line_error(excinfo, str(path), "'video_ids'", "row 3")
    fewer_videos = FakePrepared(negatives.query_ids, negatives.video_ids[:-1])
    with pytest.raises(UserError) as excinfo:
        hn.check_matches(negatives, fewer_videos, "val", path)
    one_line_error(excinfo, str(path), "'video_ids'", "9 videos", "has 8")
    more_queries = FakePrepared([*negatives.query_ids, "q9"], negatives.video_ids)
    with pytest.raises(UserError) as excinfo:
        hn.check_matches(negatives, more_queries, "val", path)
    one_line_error(excinfo, str(path), "'query_ids'", "6 queries", "has 7")
    renamed = FakePrepared(["z", *negatives.query_ids[1:]], negatives.video_ids)
    with pytest.raises(UserError) as excinfo:
        hn.check_matches(negatives, renamed, "val", path)
    one_line_error(excinfo, str(path), "'query_ids'", "row 0")


# --------------------------------------------------------------------------- sampler
def test_sampler_draws_distinct_mined_non_positive_rows():
    negatives = mined(num_queries=6, num_videos=12, top=8)
    own = np.array([negatives.video_rows[0, 2], 11, 3, negatives.video_rows[3, 0], 5, 0])
    sampler = hn.NegativeSampler(negatives, own, num_negatives=4, seed=7)
    seen = {q: set() for q in range(6)}
    for position in range(60):
        query_rows = np.arange(6)
        got = sampler.sample(query_rows, np.full(6, position))
        assert got.shape == (6, 4) and got.dtype == np.int32
        for q in range(6):
            row = got[q].tolist()
            assert len(set(row)) == 4 and own[q] not in row
            assert set(row) <= set(negatives.video_rows[q].tolist())
            seen[q] |= set(row)
    for q in range(6):  # over many positions every candidate comes up
        want = set(negatives.video_rows[q].tolist()) - {int(own[q])}
        assert seen[q] == want


def test_sampler_draw_is_the_documented_rng_and_batch_independent():
    negatives = mined(num_queries=5, num_videos=10, top=6)
    own = np.array([0, 1, 2, 3, 4])
    sampler = hn.NegativeSampler(negatives, own, num_negatives=2, seed=3)
    query_rows, positions = np.array([4, 0, 2, 2]), np.array([17, 3, 40, 41])
    got = sampler.sample(query_rows, positions)
    for k, (q, p) in enumerate(zip(query_rows, positions)):
        candidates = [v for v in negatives.video_rows[q].tolist() if v != own[q]]
        pick = np.random.default_rng((3, int(p))).choice(len(candidates), 2, replace=False)
        assert got[k].tolist() == [candidates[i] for i in pick]
        # The same example alone, or inside another batch, draws the same videos.
        np.testing.assert_array_equal(sampler.sample([q], [p])[0], got[k])
    shuffled = sampler.sample(query_rows[::-1], positions[::-1])
    np.testing.assert_array_equal(shuffled, got[::-1])
    other_seed = hn.NegativeSampler(negatives, own, num_negatives=2, seed=4)
    draws = [other_seed.sample([1], [p])[0].tolist() for p in range(20)]
    assert draws != [sampler.sample([1], [p])[0].tolist() for p in range(20)]


def test_sampler_fills_tiny_corpora_and_refuses_too_few_videos():
    # 5 videos, top 3 mined, the query's own video among them: 2 candidates for n = 3.
    negatives = mined(num_queries=2, num_videos=5, top=3)
    own = np.array([negatives.video_rows[0, 1], negatives.video_rows[1, 0]])
    sampler = hn.NegativeSampler(negatives, own, num_negatives=3, seed=0)
    for position in range(30):
        got = sampler.sample([0, 1], [position, position])
        for q in range(2):
            row = got[q].tolist()
            candidates = [v for v in negatives.video_rows[q].tolist() if v != own[q]]
            assert set(row[:2]) == set(candidates)  # every mined candidate kept
            assert len(set(row)) == 3 and own[q] not in row and 0 <= row[2] < 5
            assert row[2] not in negatives.video_rows[q].tolist()
    with pytest.raises(UserError) as excinfo:
        hn.NegativeSampler(negatives, own, num_negatives=5, seed=0)
    one_line_error(excinfo, "num_negatives=5", "it has 5")
    with pytest.raises(ValueError, match="video_index"):
        hn.NegativeSampler(negatives, own[:1], num_negatives=2, seed=0)


# --------------------------------------------------------------------------- pipeline
NEGATIVE_KEYS = (
    "negative_video_features",
    "negative_video_mask",
    "negative_subtitle_features",
    "negative_video_index",
)


@pytest.fixture(scope="module")
def synthetic_train():
    spec = synthetic.SyntheticSpec(
        num_videos=12, queries_per_video=2, min_clips=8, max_clips=12, subtitles=True
    )
    records = synthetic.make_splits(spec, seed=0, splits=("train",))["train"]
    cfg = ml_collections.ConfigDict(
        {"num_input_clips": 8, "max_query_len": 10, "text_mode": "features", "subtitles": True}
    )
    prepared = ip.prepare_split(records, cfg, name="train")
    negatives = mined(len(prepared), prepared.num_videos, top=6, seed=1)
    negatives.query_ids, negatives.video_ids = prepared.query_ids, prepared.video_ids
    sampler = hn.NegativeSampler(negatives, prepared.video_index, num_negatives=3, seed=5)
    return prepared, cfg, sampler


def test_train_batches_carry_negatives_of_the_video_table(synthetic_train):
    prepared, cfg, sampler = synthetic_train
    table = prepared.videos
    it = ip.make_train_iterator(prepared, cfg, 4, seed=3, negatives=sampler)
    plain = ip.make_train_iterator(prepared, cfg, 4, seed=3)
    for step in range(8):  # 20 queries: runs across an epoch boundary
        batch, base = next(it), next(plain)
        assert set(batch) - set(base) == set(NEGATIVE_KEYS)
        for key in base:  # the rest of the batch is unchanged
            np.testing.assert_array_equal(batch[key], base[key])
        rows = batch["negative_video_index"]
        assert rows.shape == (4, 3) and rows.dtype == np.int32
        assert batch["negative_video_features"].shape == (4, 3, 8, table.features.shape[-1])
        assert batch["negative_video_mask"].shape == (4, 3, 8)
        assert batch["negative_subtitle_features"].shape == (4, 3, 8, table.subtitles.shape[-1])
        for b in range(4):
            q = batch["query_index"][b]
            assert prepared.video_index[q] not in rows[b].tolist()
            # position in the global stream = step * global batch + row
            np.testing.assert_array_equal(rows[b], sampler.sample([q], [step * 4 + b])[0])
            for n in range(3):
                v = rows[b, n]
                np.testing.assert_array_equal(
                    batch["negative_video_features"][b, n], table.features[v]
                )
                np.testing.assert_array_equal(batch["negative_video_mask"][b, n], table.mask[v])
                np.testing.assert_array_equal(
                    batch["negative_subtitle_features"][b, n], table.subtitles[v]
                )


def test_resume_and_hosts_draw_the_same_negatives(synthetic_train):
    prepared, cfg, sampler = synthetic_train
    full = ip.make_train_iterator(prepared, cfg, 4, seed=3, negatives=sampler)
    want = [next(full) for _ in range(9)][5:]
    resumed = ip.make_train_iterator(prepared, cfg, 4, seed=3, start_step=5, negatives=sampler)
    hosts = [
        ip.make_train_iterator(
            prepared,
            cfg,
            4,
            seed=3,
            start_step=5,
            negatives=sampler,
            process_index=i,
            process_count=2,
        )
        for i in range(2)
    ]
    for expected in want:
        got = next(resumed)
        halves = [next(h) for h in hosts]
        for key in ("query_index", *NEGATIVE_KEYS):
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
            joined = np.concatenate([h[key] for h in halves])
            np.testing.assert_array_equal(joined, expected[key], err_msg=key)


# --------------------------------------------------------------------------- DataSources
def xml_runlocal(**data):
    config = config_cli.load_config(f"{ROOT / 'configs' / 'xml' / 'synthetic.py'}:runlocal", [])
    config.unlock()
    for name, value in data.items():
        config.data[name] = value
    config.lock()
    return config


def test_data_sources_serve_checked_negatives(tmp_path):
    from data_pipelines.sources import DataSources

    plain = DataSources(xml_runlocal())
    assert plain.negative_sampler() is None
    assert not set(NEGATIVE_KEYS) & set(plain.sample_batch())
    prepared = plain.prepared("train")
    negatives = mined(len(prepared), prepared.num_videos, top=10, seed=2)
    negatives.query_ids, negatives.video_ids = prepared.query_ids, prepared.video_ids
    path = negatives.save(tmp_path / hn.DEFAULT_DIRNAME)

    data = DataSources(xml_runlocal(hard_negatives=str(path), num_negatives=4))
    sample = data.sample_batch()
    batch_size = int(data.config.train.batch_size)
    batch = next(data.train_iterator())
    for got, rows in ((sample, 1), (batch, batch_size)):
        assert got["negative_video_index"].shape == (rows, 4)
        assert got["negative_video_features"].shape == (rows, 4, *got["video_features"].shape[1:])
        assert got["negative_subtitle_features"].shape[:2] == (rows, 4)
        assert got["negative_video_mask"].shape == (rows, 4, got["video_mask"].shape[1])
    want = data.negative_sampler().sample([0], [0])
    np.testing.assert_array_equal(sample["negative_video_index"], want)

    with pytest.raises(UserError) as excinfo:
        DataSources(xml_runlocal(num_negatives=4)).train_iterator()
    one_line_error(excinfo, "config.data.num_negatives=4 needs mined hard negatives")
    missing = DataSources(xml_runlocal(hard_negatives=str(tmp_path / "x.npz"), num_negatives=4))
    with pytest.raises(UserError) as excinfo:
        missing.sample_batch()
    one_line_error(excinfo, str(tmp_path / "x.npz"))
    other = mined(len(prepared), prepared.num_videos, top=10, split="val")
    other.query_ids, other.video_ids = prepared.query_ids, prepared.video_ids
    val_path = other.save(tmp_path / "mined_val")
    with pytest.raises(UserError) as excinfo:
        DataSources(xml_runlocal(hard_negatives=str(val_path), num_negatives=4)).sample_batch()
    one_line_error(excinfo, str(val_path), "mined on split 'val', this run trains on 'train'")
