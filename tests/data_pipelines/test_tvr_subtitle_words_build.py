"""TVR with word-level subtitles from the official layouts to Cascaded MPN batches: the first
queries of the real ``tvr_val_release.jsonl``, HERO's LMDB video features, TVRetrieval's
subtitle / query h5 files and the subtitle jsonl + token h5 (``data fake --subtitle_words``),
``data build --subtitle_words``, then the input pipeline of ``configs/cascaded_mpn/tvr.py:tiny``;
and the alignment fallbacks of hand-written subtitle files counted in ``dataset_info.json``.

Expected values are read from the files directly (h5py, lmdb + msgpack, json) or worked out
by hand in the comments, never through the code under test.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from data_pipelines import build, data_report, tvr
from data_pipelines import input_pipeline as ip
from data_pipelines import subtitles as st
from data_pipelines.annotations import DataError
from data_pipelines.fake_features import write_fake_features
from data_pipelines.stored import StoredDataset

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "cascaded_mpn" / "tvr.py"
SUBSET = 6


@pytest.fixture
def annotations(tmp_path, shared_data_dir):
    """The first ``SUBSET`` val queries (six different videos) and the real video2dur_idx."""
    ann = tmp_path / "annotations"
    ann.mkdir()
    lines = (shared_data_dir / "tvr" / "tvr_val_release.jsonl").read_text().splitlines(True)
    (ann / "tvr_val_release.jsonl").write_text("".join(lines[:SUBSET]))
    shutil.copy(shared_data_dir / "tvr" / "tvr_video2dur_idx.json", ann)
    return ann, [json.loads(line) for line in lines[:SUBSET]]


def _lmdb_features(db: Path, key: str) -> np.ndarray:
    """A HERO value read with lmdb and msgpack alone: {"features": msgpack_numpy map}."""
    import lmdb
    import msgpack

    env = lmdb.open(str(db), readonly=True, lock=False)
    with env.begin() as txn:
        value = msgpack.unpackb(txn.get(key.encode()), raw=False)
    env.close()
    array = value["features"]
    shape, dtype = array[b"shape"], np.dtype(array[b"type"])
    return np.frombuffer(array[b"data"], dtype).reshape(shape)


def test_fake_official_files_build_to_subtitle_word_batches(tmp_path, annotations):
    ann, queries = annotations
    raw, built = tmp_path / "raw", tmp_path / "built"
    sources = build.resolve_sources(
        "tvr", "hero_resnet_slowfast", str(raw), str(ann), subtitle_words=True
    )
    write_fake_features(sources, ["val"])
    info = build.build(sources, str(built), splits=["val"])

    # The fake subtitles, read back directly: sentence i of a d-s video is [3i, min(3i +
    # 2.5, d)] for i < ceil(d / 3); one token per word of its text.
    subs = {}
    for line in (raw / tvr.SUBTITLE_FILE).read_text().splitlines():
        obj = json.loads(line)
        subs[obj["vid_name"]] = obj["sub"]
    durations = {q["vid_name"]: q["duration"] for q in queries}
    assert set(subs) == set(durations) and len(durations) == SUBSET
    for vid, d in durations.items():
        n = math.ceil(d / 3)
        assert [(s["start"], s["end"]) for s in subs[vid]] == [
            (3.0 * i, min(3.0 * i + 2.5, d)) for i in range(n)
        ]
    words = {vid: sum(len(s["text"].split()) for s in sentences) for vid, sentences in subs.items()}
    assert info["subtitle_words"]["val"] == {
        "videos": SUBSET,
        "sentences": sum(math.ceil(d / 3) for d in durations.values()),
        "words": sum(words.values()),
        "fallbacks": {},
    }
    assert info["splits"]["val"]["feature_dims"] == {
        "video": 4352,
        "subtitle": 768,
        "subtitle_words": 768,
        "query": 768,
    }
    on_disk = json.loads((built / "dataset_info.json").read_text())
    assert on_disk["subtitle_words"] == info["subtitle_words"]
    checked = data_report.validate(sources, ["val"])
    assert checked["errors"] == [] and checked["subtitle_words"] == info["subtitle_words"]
    stats = data_report.stats(sources, ["val"], max_videos=2)
    assert stats["subtitle_words"]["val"]["videos"] == 2

    from vmr_jax import config_cli

    config = config_cli.load_config(f"{CONFIG}:tiny", [("data.dir", str(built))])
    assert config.data.subtitle_words and config.model.vid_feat_size == 4352
    datasets = ip.get_datasets(config)
    split = datasets.splits["val"]
    prepared = ip.prepare_split(split, config.data, datasets.text, "val")
    batch = next(ip.make_eval_iterator(prepared, config.data, 8, text=datasets.text))

    W, S, L = 768, 64, 100  # the config's caps and max_ctx_l
    assert batch["subtitle_word_features"].shape == (8, W, 768)
    assert batch["subtitle_coverage"].shape == (8, L, S)
    assert batch["video_features"].shape == (8, L, 4352)
    tokens_h5 = raw / tvr.SUBTITLE_TOKENS
    db = raw / "video_db" / "tv" / "resnet_slowfast_1.5"
    for q in range(SUBSET):
        vid, d = queries[q]["vid_name"], queries[q]["duration"]
        assert split[q].video_id == vid  # one video per query, in file order
        video = _lmdb_features(db, vid)
        clips = math.ceil(d / 1.5)  # the fake's clip count
        assert video.shape == (clips, 4352)
        np.testing.assert_array_equal(batch["video_features"][q, :clips], video)
        assert batch["video_mask"][q].sum() == clips
        with h5py.File(tokens_h5, "r") as f:
            rows, lengths = f[vid][()], f[vid + "-lengths"][()]
        n = words[vid]
        assert rows.shape == (n, 768) and lengths.tolist() == [
            len(s["text"].split()) for s in subs[vid]
        ]
        np.testing.assert_array_equal(batch["subtitle_word_features"][q, :n], rows)
        np.testing.assert_array_equal(batch["subtitle_word_mask"][q], np.arange(W) < n)
        want_ids = np.full(W, -1)
        want_ids[:n] = np.repeat(np.arange(len(lengths)), lengths)
        np.testing.assert_array_equal(batch["subtitle_word_sentence"][q], want_ids)
        # HERO's sub2frames: sentence [st, ed] covers frames floor(st/1.5) .. ceil(ed/1.5) - 1.
        cover = np.zeros((L, S))
        for i, s in enumerate(subs[vid]):
            for frame in range(int(s["start"] // 1.5), math.ceil(s["end"] / 1.5)):
                cover[frame, i] = 1.0
        np.testing.assert_array_equal(batch["subtitle_coverage"][q], cover)
    assert prepared.subtitle_summary["words_cut"] == 0
    assert prepared.subtitle_summary["videos"] == SUBSET


def _write_subtitles(path, videos):
    with open(path, "w", encoding="utf-8") as f:
        for vid, subs in videos.items():
            f.write(json.dumps({"vid_name": vid, "sub": subs}) + "\n")


def test_bad_subtitles_are_counted_in_the_built_dataset(tmp_path, annotations):
    ann, queries = annotations
    raw = tmp_path / "raw"
    plain = build.resolve_sources("tvr", "hero_resnet_slowfast", str(raw), str(ann))
    write_fake_features(plain, ["val"])
    a, b = queries[0]["vid_name"], queries[1]["vid_name"]
    d = queries[0]["duration"]
    sentences, tokens = tmp_path / "subs.jsonl", tmp_path / "tokens.h5"
    _write_subtitles(
        sentences,
        {
            a: [
                {"text": "x y", "start": -1.0, "end": 2.0},  # start clamped to 0
                {"text": "z", "start": d - 1.0, "end": d + 5.0},  # end clamped to d
                {"text": "u v", "start": d + 1.0, "end": d + 2.0},  # after the video: dropped
            ],
            b: [],  # no subtitle, but 3 token rows: tokens without a sentence
        },  # the other four videos are absent: no subtitle
    )
    feats_a = np.arange(7 * 768, dtype=np.float32).reshape(7, 768)  # 2 + 1 + 2 rows, 2 extra
    with h5py.File(tokens, "w") as f:
        f[a], f[a + "-lengths"] = feats_a, np.asarray([2, 1, 2], np.int16)
        f[b] = np.ones((3, 768), np.float32)
    sources = build.resolve_sources(
        "tvr",
        "hero_resnet_slowfast",
        str(raw),
        str(ann),
        subtitle_words=True,
        subtitle_sentences=str(sentences),
        subtitle_tokens=str(tokens),
    )
    info = build.build(sources, str(tmp_path / "built"), splits=["val"])
    report = info["subtitle_words"]["val"]
    assert {k: v["count"] for k, v in report["fallbacks"].items()} == {
        st.START_CLAMPED: 1,
        st.END_CLAMPED: 1,
        st.AFTER_VIDEO: 1,
        st.AFTER_VIDEO_TOKENS: 2,  # the dropped sentence's rows 3, 4
        st.TOKENS_WITHOUT_SENTENCE: 2 + 3,  # rows 5, 6 of a; every row of b
        st.NO_SUBTITLE: 1 + 4,  # b and the four videos absent from the jsonl
    }
    assert (report["videos"], report["sentences"], report["words"]) == (SUBSET, 2, 3)
    record = StoredDataset(tmp_path / "built").split("val").videos([0])[0]
    times = np.asarray([[0.0, 2.0], [d - 1.0, d]], np.float32)  # records keep float32 times
    np.testing.assert_array_equal(record["subtitle_sentence_times"], times)
    np.testing.assert_array_equal(record["subtitle_word_features"], feats_a[:3])
    np.testing.assert_array_equal(record["subtitle_word_sentence"], [0, 0, 1])

    # The run's frames must be the built clips: 1.5 s each, kept as they are.
    from data_pipelines.sources import DataSources
    from vmr_jax import config_cli
    from vmr_jax.errors import UserError

    for field, value in (("model.clip_length", "1.0"), ("data.clip_sampling", "resample")):
        overrides = [("data.dir", str(tmp_path / "built")), (field, value)]
        config = config_cli.load_config(f"{CONFIG}:tiny", overrides)
        with pytest.raises(UserError, match="model.clip_length.*1.5-s clips"):
            DataSources(config)

    # A sentence ending before it starts is an error naming the file, line and field.
    _write_subtitles(sentences, {a: [{"text": "x", "start": 2.0, "end": 1.0}]})
    with pytest.raises(DataError, match=r"subs\.jsonl.*line 1.*sub\[0\]\.end"):
        build.build(sources, str(tmp_path / "built2"), splits=["val"])
    # A feature set without word-level subtitles refuses the request.
    with pytest.raises(ValueError, match="no word-level subtitles"):
        build.resolve_sources(
            "tvr", "resnet_i3d_video_only", str(raw), str(ann), subtitle_words=True
        )
