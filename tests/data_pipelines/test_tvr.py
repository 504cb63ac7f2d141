"""TVR parser on the real TVRetrieval files, bad inputs, and the h5 feature layouts.

Counts come from shared/data/SOURCES.md; the hand-checked records and video indices were read
off the raw jsonl / json text (``grep``); clip times are multiples of 1.5 s worked out by hand.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from data_pipelines import tvr
from data_pipelines.annotations import DataError, ParseReport, to_record

VAL_LINE = {
    "vid_name": "friends_s01e03_seg02_clip_19",
    "duration": 61.46,
    "ts": [16.48, 33.87],
    "desc": "Phoebe puts one of her ponytails in her mouth.",
    "type": "v",
    "desc_id": 90200,
}


@pytest.fixture(scope="module")
def parsed(shared_data_dir):
    report = ParseReport()
    splits = {
        s: tvr.parse_split(shared_data_dir / "tvr", s, report) for s in ("val", "test_public")
    }
    return splits, report


def test_val_counts_match_sources(parsed):
    splits, report = parsed
    val = splits["val"]
    assert len(val) == 10_895
    assert len({a.video_id for a in val}) == 2_179
    types = [a.extras["type"] for a in val]
    assert (types.count("v"), types.count("vt"), types.count("t")) == (8_097, 1_834, 964)
    # Every jsonl duration equals video2dur_idx's and every ts lies inside it: nothing clipped.
    assert report.summary()["val"] == {"kept": 10_895, "dropped": {}, "clipped": {}}
    assert all(a.spans_s.shape == (1, 2) and a.extras["has_ground_truth"] for a in val)


def test_test_public_is_query_only(parsed):
    test = parsed[0]["test_public"]
    assert len(test) == 5_445
    first = test[0]  # {"desc": "Monica hands Rachel a purple gift bag with red paper. ", ...}
    assert first.query_id == "107711"
    assert first.query_text == "Monica hands Rachel a purple gift bag with red paper. "
    assert first.extras == {"desc_id": 107711, "has_ground_truth": False}
    assert all(a.spans_s.shape == (0, 2) and a.video_id == "" for a in test)


def test_hand_checked_val_records(parsed):
    val = parsed[0]["val"]
    a = val[0]
    assert (a.query_id, a.video_id, a.duration_s, a.query_text) == (
        "90200",
        "friends_s01e03_seg02_clip_19",
        61.46,
        "Phoebe puts one of her ponytails in her mouth.",
    )
    np.testing.assert_array_equal(a.spans_s, [[16.48, 33.87]])
    # "friends_s01e03_seg02_clip_19": [61.46, 20092] in tvr_video2dur_idx.json
    assert a.extras == {"desc_id": 90200, "type": "v", "video_idx": 20092, "has_ground_truth": True}
    b = val[1]  # ts [0, 2.29] written with an int start
    assert (b.query_id, b.extras["type"], b.extras["video_idx"]) == ("94603", "vt", 20312)
    np.testing.assert_array_equal(b.spans_s, [[0.0, 2.29]])
    c = val[-1]  # line 10,895
    assert (c.query_id, c.video_id, c.duration_s) == (
        "93717",
        "friends_s04e20_seg02_clip_07",
        58.03,
    )
    np.testing.assert_array_equal(c.spans_s, [[50.19, 57.73]])
    assert c.extras["video_idx"] == 20305


def test_video2dur_idx_matches_sources(shared_data_dir):
    table = tvr.load_video2dur_idx(shared_data_dir / "tvr")
    sizes = {split: len(videos) for split, videos in table.items()}
    assert sizes == {"train": 17_435, "val": 2_179, "test_public": 1_089, "test_challenge": 1_090}
    indices = sorted(idx for videos in table.values() for _, idx in videos.values())
    assert indices == list(range(21_793))
    assert table["val"]["castle_s06e12_seg02_clip_22"] == (91.19, 19913)


# --------------------------------------------------------------------------- features
def write_h5(path, arrays) -> None:
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)


@pytest.mark.parametrize("name, dim", [("resnet", 2048), ("i3d", 1024), ("resnet_i3d", 3072)])
def test_feature_sets_read_official_layouts(parsed, tmp_path, name, dim):
    annotations = parsed[0]["val"][:3]
    features = tvr.FEATURES[name]
    assert features.video.dim == dim and features.video.clip_seconds == 1.5
    assert features.subtitle.dim == features.query.dim == 768
    rng = np.random.default_rng(1)
    n_clips = {a.video_id: int(np.ceil(a.duration_s / 1.5)) for a in annotations}
    video = {v: rng.normal(size=(n, dim)).astype(np.float32) for v, n in n_clips.items()}
    subs = {v: rng.normal(size=(n, 768)).astype(np.float32) for v, n in n_clips.items()}
    masks = {v + "-mask": np.ones(n, np.float32) for v, n in n_clips.items()}
    queries = {str(a.extras["desc_id"]): rng.normal(size=(9, 768)) for a in annotations}
    write_h5(tmp_path / "video.h5", video)
    write_h5(tmp_path / "sub.h5", {**subs, **masks})
    write_h5(tmp_path / "query.h5", queries)
    stores = {
        "video": features.video.open(tmp_path / "video.h5"),
        "subtitle": features.subtitle.open(tmp_path / "sub.h5", "subtitle_features"),
        "query": features.query.open(tmp_path / "query.h5", "query_token_features"),
    }
    for a in annotations:
        assert features.query.key(a) == str(a.extras["desc_id"])
        v = stores["video"].get(features.video.key(a))
        s = stores["subtitle"].get(features.subtitle.key(a))
        q = stores["query"].get(features.query.key(a))
        np.testing.assert_array_equal(v, video[a.video_id])
        np.testing.assert_array_equal(s, subs[a.video_id])
        assert q.dtype == np.float32 and q.shape == (9, 768)
        times = features.video.clip_times(len(v), a.duration_s)
        np.testing.assert_allclose(times[:3], [[0, 1.5], [1.5, 3], [3, 4.5]])
        to_record(a, v, times, query_token_features=q, subtitle_features=s)
    # 61.46 s -> 41 clips; the last one is [60, 61.5].
    np.testing.assert_allclose(features.video.clip_times(41, 61.46)[-1], [60.0, 61.5])


def test_official_feature_file_names():
    names = {n: fs.video.file.rsplit("/", 1)[-1] for n, fs in tvr.FEATURES.items()}
    assert names["resnet"] == "tvr_resnet152_rgb_max_cl-1.5.h5"
    assert names["i3d"] == "tvr_i3d_rgb600_avg_cl-1.5.h5"
    assert names["resnet_i3d"] == "tvr_resnet152_rgb_max_i3d_rgb600_avg_cat_cl-1.5.h5"
    assert tvr.FEATURES["resnet"].subtitle.file.endswith(
        "sub_query/tvr_sub_pretrained_w_sub_query_max_cl-1.5.h5"
    )
    assert tvr.FEATURES["resnet"].query.file.endswith(
        "sub_query/tvr_query_pretrained_w_sub_query.h5"
    )
    assert tvr.FEATURES["resnet_i3d_video_only"].subtitle is None


@pytest.mark.parametrize(
    "value, words",
    [
        (np.ones((9, 1024), np.float32), "expected width 768"),
        (np.array([[np.inf] * 768], np.float32), "non-finite"),
        (np.ones((0, 768), np.float32), "no row"),
    ],
)
def test_query_features_bad_arrays(tmp_path, value, words):
    write_h5(tmp_path / "query.h5", {"90200": value})
    store = tvr.FEATURES["resnet"].query.open(tmp_path / "query.h5", "query_token_features")
    with pytest.raises(DataError, match=words):
        store.get("90200")
    with pytest.raises(DataError, match="'94603'.*not in the file"):
        store.get("94603")


def test_feature_files_empty_or_truncated(tmp_path):
    spec = tvr.FEATURES["resnet"].video
    (tmp_path / "empty.h5").write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        spec.open(tmp_path / "empty.h5")
    write_h5(tmp_path / "full.h5", {"friends_s01e03_seg02_clip_19": np.ones((41, 2048))})
    data = (tmp_path / "full.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError):
        spec.open(tmp_path / "cut.h5").get("friends_s01e03_seg02_clip_19")


# --------------------------------------------------------------------------- bad inputs
VIDEOS = {"val": {"friends_s01e03_seg02_clip_19": [61.46, 20092], "bbt_clip": [30.0, 5]}}


def write_split(tmp_path, lines, videos=None, split="val") -> None:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    (tmp_path / tvr.SPLITS[split][0]).write_text(text)
    (tmp_path / tvr.VIDEO2DUR_IDX).write_text(json.dumps(VIDEOS if videos is None else videos))


def line(**overrides):
    return {**VAL_LINE, **overrides}


def test_tiny_file_and_blank_lines(tmp_path):
    write_split(
        tmp_path,
        [line(), "", "   ", line(desc_id=5, vid_name="bbt_clip", duration=30.0, ts=[1.5, 3])],
    )
    report = ParseReport()
    first, second = tvr.parse_split(tmp_path, "val", report)
    assert second.extras == {"desc_id": 5, "type": "v", "video_idx": 5, "has_ground_truth": True}
    np.testing.assert_array_equal(first.spans_s, [[16.48, 33.87]])
    np.testing.assert_array_equal(second.spans_s, [[1.5, 3.0]])
    assert (second.video_id, second.duration_s) == ("bbt_clip", 30.0)
    assert report.summary()["val"] == {"kept": 2, "dropped": {}, "clipped": {}}


def test_clamps_and_duration_mismatch_are_counted(tmp_path):
    write_split(
        tmp_path,
        [
            line(desc_id=1, ts=[50.0, 70.0]),  # end past 61.46
            line(desc_id=2, ts=[-1.0, 3.0]),  # start before 0
            line(desc_id=3, ts=[65.0, 66.0]),  # wholly past the end
            line(desc_id=4, duration=61.5),  # 61.46 in video2dur_idx
            line(desc_id=6, desc=" "),
        ],
    )
    report = ParseReport()
    anns = {a.query_id: a for a in tvr.parse_split(tmp_path, "val", report)}
    np.testing.assert_array_equal(anns["1"].spans_s, [[50.0, 61.46]])
    np.testing.assert_array_equal(anns["2"].spans_s, [[0.0, 3.0]])
    np.testing.assert_array_equal(anns["3"].spans_s, [[61.46, 61.46]])
    assert anns["4"].duration_s == 61.5
    summary = report.summary()["val"]
    assert summary["kept"] == 4
    assert summary["dropped"] == {"empty desc": 1}
    assert sorted(summary["clipped"].values()) == [1, 1, 2]  # mismatch; start; two ends
    assert report.examples("val", "clipped", "ts start before 0 (clamped to 0)") == [
        f"{tmp_path / 'tvr_val_release.jsonl'}:line 2"
    ]


@pytest.mark.parametrize("field", ["desc_id", "desc", "vid_name", "duration", "ts", "type"])
def test_missing_field(tmp_path, field):
    bad = line(desc_id=2)
    del bad[field]
    write_split(tmp_path, [line(), bad])
    with pytest.raises(DataError, match=f"tvr_val_release.jsonl: line 2: field '{field}': missing"):
        tvr.parse_split(tmp_path, "val", ParseReport())


@pytest.mark.parametrize(
    "raw, field, words",
    [
        ('{"desc_id": "2"}', "desc_id", "expected an int"),
        ('{"desc_id": true}', "desc_id", "expected an int"),
        ('{"desc": 3}', "desc", "expected a string"),
        ('{"vid_name": "unknown_clip"}', "vid_name", "not in tvr_video2dur_idx.json['val']"),
        ('{"vid_name": ""}', "vid_name", "non-empty"),
        ('{"duration": "61"}', "duration", "number > 0"),
        ('{"duration": 0}', "duration", "number > 0"),
        ('{"type": "s"}', "type", "expected one of"),
        ('{"ts": [1.0]}', "ts", "[st, ed]"),
        ('{"ts": ["1", 2]}', "ts", "[st, ed]"),
        ('{"ts": [NaN, 2.0]}', "ts", "not finite"),
        ('{"ts": [1.0, Infinity]}', "ts", "not finite"),
        ('{"ts": [5.0, 4.0]}', "ts", "end before start"),
    ],
)
def test_bad_fields_name_line_and_field(tmp_path, raw, field, words):
    bad = json.dumps(line(desc_id=2))[:-1] + ", " + raw[1:]  # later keys override
    write_split(tmp_path, [line(), bad])
    with pytest.raises(DataError, match=f"line 2: field '{field}'") as err:
        tvr.parse_split(tmp_path, "val", ParseReport())
    assert words in str(err.value)


def test_file_level_errors(tmp_path):
    write_split(tmp_path, [line(), '{"desc_id": 3, "desc": ', line(desc_id=4)])
    with pytest.raises(DataError, match="tvr_val_release.jsonl: line 2: malformed JSON"):
        tvr.parse_split(tmp_path, "val", ParseReport())
    write_split(tmp_path, [line(), "[1, 2]"])
    with pytest.raises(DataError, match="line 2: expected an object"):
        tvr.parse_split(tmp_path, "val", ParseReport())
    write_split(tmp_path, [line(), line()])
    with pytest.raises(DataError, match="'90200' repeats record 0"):
        tvr.parse_split(tmp_path, "val", ParseReport())
    write_split(tmp_path, [line()], videos={"train": {}})
    with pytest.raises(DataError, match="tvr_video2dur_idx.json: no split 'val'"):
        tvr.parse_split(tmp_path, "val", ParseReport())
    write_split(tmp_path, [line()], videos={"val": {"friends_s01e03_seg02_clip_19": [61.46]}})
    with pytest.raises(DataError, match="video 'friends_s01e03_seg02_clip_19'"):
        tvr.parse_split(tmp_path, "val", ParseReport())
    (tmp_path / tvr.VIDEO2DUR_IDX).unlink()
    with pytest.raises(DataError, match="tvr_video2dur_idx.json: no such annotation file"):
        tvr.parse_split(tmp_path, "val", ParseReport())
    with pytest.raises(DataError, match="tvr_train_release.jsonl: no such annotation file"):
        tvr.parse_split(tmp_path, "train", ParseReport())
    with pytest.raises(ValueError, match="unknown TVR split"):
        tvr.parse_split(tmp_path, "test_challenge", ParseReport())


def test_query_only_split_errors(tmp_path):
    write_split(tmp_path, [{"desc_id": 1, "desc": "x"}, {"desc": "y"}], split="test_public")
    with pytest.raises(DataError, match="tvr_test_public_release.jsonl: line 2: field 'desc_id'"):
        tvr.parse_split(tmp_path, "test_public", ParseReport())
