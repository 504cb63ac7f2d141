"""Charades-STA: counts, drops and clips on the official files, records checked by hand and
spans against MMN's independently preprocessed JSON, bad input, and the VGG/I3D feature layouts."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from data_pipelines import charades_sta
from data_pipelines.annotations import DataError, ParseReport, to_record

DROP = "start >= end after clipping the end to the video length: dropped"
CLIP = "end beyond video length: clipped to length"


@pytest.fixture(scope="module")
def data_dir(shared_data_dir) -> Path:
    return shared_data_dir / "charades_sta"


@pytest.fixture(scope="module")
def parsed(data_dir):
    report = ParseReport()
    return {s: charades_sta.parse_split(data_dir, s, report) for s in ("train", "test")}, report


def test_test_split_counts(parsed):
    splits, report = parsed
    # SOURCES.md: 3,720 test lines on 1,334 videos, 562 ending beyond the CSV length.
    assert len(splits["test"]) == 3_720
    assert len({a.video_id for a in splits["test"]}) == 1_334
    assert report.summary()["test"] == {"kept": 3_720, "dropped": {}, "clipped": {CLIP: 562}}


def test_train_split_counts(parsed):
    splits, report = parsed
    # SOURCES.md: 12,408 lines, 4 dropped (s >= e), 1,805 ending beyond the length; MMN's
    # JSON of the same data has 12,404 queries on 5,336 videos.  Of the 4 dropped lines, 3
    # end beyond their video (lines 8252, 9623, 9624 below), so 1,805 - 3 kept lines clip.
    assert len(splits["train"]) == 12_408 - 4 == 12_404
    assert len({a.video_id for a in splits["train"]}) == 5_336
    assert report.summary()["train"] == {
        "kept": 12_404,
        "dropped": {DROP: 4},
        "clipped": {CLIP: 1_805 - 3},
    }


def test_spans_lie_inside_their_video(parsed):
    splits, _ = parsed
    for split_annotations in splits.values():
        spans = np.concatenate([a.spans_s for a in split_annotations])
        durations = np.array([a.duration_s for a in split_annotations])
        assert np.all((spans[:, 0] >= 0) & (spans[:, 0] < spans[:, 1]))
        assert np.all(spans[:, 1] <= durations)
        assert len({a.query_id for a in split_annotations}) == len(split_annotations)


def test_dropped_lines_by_hand(parsed, data_dir):
    _, report = parsed
    # Read off charades_sta_train.txt and Charades_v1_train.csv (length column):
    #   8252 "LEOL6 8.0 7.0"   length 6.25  -> end 6.25, 8.0 >= 6.25
    #   8440 "IOL8Q 20.9 12.0" length 30.38 -> 20.9 >= 12.0
    #   9623/9624 "AKKWU 38.0 13.0" length 12.17 -> end 12.17, 38.0 >= 12.17
    expected = [8252, 8440, 9623, 9624]
    dropped = [e for e in report.events["train"] if e.kind == "dropped"]
    assert [e.where for e in dropped] == [f"line {n}" for n in expected]
    assert [e.query_id for e in dropped] == [f"train-{n}" for n in expected]
    lines = (data_dir / "charades_sta_train.txt").read_text().splitlines()
    assert lines[8251] == "LEOL6 8.0 7.0##person is holding medicine."
    assert lines[9622].startswith("AKKWU 38.0 13.0##")


def test_first_lines_by_hand(parsed):
    splits, report = parsed
    # charades_sta_test.txt line 1: "3MSZA 24.3 30.4##person turn a light on."; the test CSV
    # gives 3MSZA length 30.96.
    first = splits["test"][0]
    assert (first.query_id, first.video_id, first.duration_s) == ("test-1", "3MSZA", 30.96)
    np.testing.assert_array_equal(first.spans_s, [[24.3, 30.4]])
    assert first.query_text == "person turn a light on"
    # charades_sta_train.txt line 2: "Y6R7T 20.8 30.0##person begins to play on a phone."; the
    # train CSV gives Y6R7T length 29.42, so the end is clipped to 29.42.
    second = splits["train"][1]
    assert (second.query_id, second.video_id, second.duration_s) == ("train-2", "Y6R7T", 29.42)
    np.testing.assert_array_equal(second.spans_s, [[20.8, 29.42]])
    assert second.query_text == "person begins to play on a phone"
    clipped = {e.where for e in report.events["train"] if e.kind == "clipped"}
    assert "line 2" in clipped and "line 1" not in clipped


@pytest.mark.parametrize("split", ["train", "test"])
def test_spans_match_mmn_preprocessed_json(parsed, data_dir, split):
    """MMN's charades_{split}.json holds the same queries with ends already clipped to the CSV
    length: an independent preprocessing.  (Its sentences were re-edited -- spelling and
    spacing -- so only videos, spans and durations are compared.)"""
    splits, _ = parsed
    mmn = json.loads((data_dir / f"charades_{split}.json").read_text())
    theirs = collections.Counter(
        (video, round(s, 6), round(e, 6), record["duration"])
        for video, record in mmn.items()
        for s, e in record["timestamps"]
    )
    ours = collections.Counter(
        (a.video_id, round(a.spans_s[0, 0], 6), round(a.spans_s[0, 1], 6), a.duration_s)
        for a in splits[split]
    )
    assert ours == theirs


# --- bad input on tiny hand-written files ---------------------------------------------------

CSV = "id,subject,length\nAAAAA,S1,10.0\nBBBBB,S2,20.5\n"


def parse_lines(tmp_path: Path, text: str, csv: str = CSV, report: ParseReport | None = None):
    (tmp_path / "charades_sta_test.txt").write_text(text)
    (tmp_path / "Charades_v1_test.csv").write_text(csv)
    return charades_sta.parse_split(tmp_path, "test", report or ParseReport())


def test_clip_then_drop_order_on_a_small_file(tmp_path):
    text = (
        "AAAAA 1.0 4.0##a person sits.\n"  # kept as is
        "AAAAA 2.5 12.0##a person stands.\n"  # end 12 > 10: clipped to [2.5, 10]
        "AAAAA 11.0 15.0##a person leaves.\n"  # 11 < 15, but 11 >= min(15, 10): dropped
        "BBBBB 3.0 3.0##a person waits.\n"  # zero length: dropped
        "BBBBB 0.0 2.0##no period here\n"  # no ".\n": the sentence is kept whole
    )
    report = ParseReport()
    annotations = parse_lines(tmp_path, text, report=report)
    assert [a.query_id for a in annotations] == ["test-1", "test-2", "test-5"]
    assert [a.spans_s.tolist() for a in annotations] == [[[1.0, 4.0]], [[2.5, 10.0]], [[0, 2]]]
    assert [a.query_text for a in annotations] == [
        "a person sits",
        "a person stands",
        "no period here",
    ]
    assert report.summary()["test"] == {"kept": 3, "dropped": {DROP: 2}, "clipped": {CLIP: 1}}
    assert [e.where for e in report.events["test"]] == ["line 2", "line 3", "line 4"]


def test_windows_line_endings_read_like_the_reference(tmp_path):
    path = tmp_path / "charades_sta_test.txt"
    path.write_bytes(b"AAAAA 1.0 4.0##a person sits.\r\nBBBBB 1.0 2.0##a man.\r\n")
    (tmp_path / "Charades_v1_test.csv").write_text(CSV)
    annotations = charades_sta.parse_split(tmp_path, "test", ParseReport())
    assert [a.query_text for a in annotations] == ["a person sits", "a man"]


@pytest.mark.parametrize(
    "line, field, words",
    [
        ("AAAAA 1.0 4.0 a person sits.", None, "'<video> <start> <end>##<sentence>'"),
        ("AAAAA 1.0 4.0##a person##sits.", None, "'<video> <start> <end>##<sentence>'"),
        ("", None, "'<video> <start> <end>##<sentence>'"),
        ("AAAAA 1.0##a person sits.", None, "single spaces"),
        ("AAAAA  1.0 4.0##a person sits.", None, "single spaces"),
        ("AAAAA 1.0 4,0##a person sits.", "end", "expected a number"),
        ("AAAAA one 4.0##a person sits.", "start", "expected a number"),
        ("AAAAA 1.0 nan##a person sits.", "end", "not finite"),
        ("AAAAA -1.0 4.0##a person sits.", "start", "negative start"),
        ("AAAAA 1.0 4.0## .", "sentence", "empty sentence"),
        ("ZZZZZ 1.0 4.0##a person sits.", "video_id", "'ZZZZZ' is not in Charades_v1_test.csv"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, line, field, words):
    text = "BBBBB 1.0 2.0##fine.\n" + line + "\n"
    with pytest.raises(DataError) as err:
        parse_lines(tmp_path, text)
    assert err.value.source == str(tmp_path / "charades_sta_test.txt")
    assert err.value.where == "line 2"
    assert err.value.field == field
    assert words in str(err.value)


@pytest.mark.parametrize(
    "csv, where, field, words",
    [
        ("id,subject\nAAAAA,S1\n", "line 1", "length", "missing column"),
        ("id,length\nAAAAA,10.0\nBBBBB,ten\n", "line 3", "length", "expected a number"),
        ("id,length\nAAAAA,10.0\nBBBBB,0\n", "line 3", "length", "> 0"),
        ("id,length\nAAAAA,10.0\nAAAAA,11.0\n", "line 3", "id", "repeats line 2"),
    ],
)
def test_bad_csv_names_file_line_and_field(tmp_path, csv, where, field, words):
    with pytest.raises(DataError) as err:
        parse_lines(tmp_path, "AAAAA 1.0 4.0##a person sits.\n", csv=csv)
    assert err.value.source == str(tmp_path / "Charades_v1_test.csv")
    assert (err.value.where, err.value.field) == (where, field)
    assert words in str(err.value)


def test_missing_file_and_unknown_split(tmp_path):
    (tmp_path / "charades_sta_test.txt").write_text("AAAAA 1.0 4.0##a person sits.\n")
    with pytest.raises(DataError, match="no such annotation file") as err:
        charades_sta.parse_split(tmp_path, "test", ParseReport())
    assert err.value.source == str(tmp_path / "Charades_v1_test.csv")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        charades_sta.parse_split(tmp_path, "val", ParseReport())


# --- features: charades_vgg_rgb.hdf5 f[vid] [T, 4096]; I3D/finetune/<vid>.npy [T, 1024] -----


def test_vgg_hdf5_found_by_annotation_key(parsed, tmp_path):
    splits, _ = parsed
    spec = charades_sta.FEATURES["vgg"].video
    picked = [splits["test"][0], splits["train"][0]]  # 3MSZA, AO8RW
    arrays = {a.video_id: np.arange(3 * 4096, dtype=np.float32).reshape(3, 4096) for a in picked}
    path = tmp_path / spec.file
    with h5py.File(path, "w") as f:
        for key, array in arrays.items():
            f.create_dataset(key, data=array, compression="gzip")  # as the 2D-TAN converter
    store = spec.open(path)
    for a in picked:
        np.testing.assert_array_equal(store.get(spec.key(a)), arrays[a.video_id])
    # The annotation and its features make a valid record (3 clips over 30.96 s: 10.32 s each).
    record = to_record(picked[0], store.get("3MSZA"), spec.clip_times(3, picked[0].duration_s))
    np.testing.assert_allclose(record.clip_times[2], [20.64, 30.96], rtol=1e-6)
    assert record.query_id == "test-1"


@pytest.mark.parametrize("name", ["i3d", "i3d_raw"])
def test_i3d_npy_dir_found_by_annotation_key(parsed, tmp_path, name):
    splits, _ = parsed
    spec = charades_sta.FEATURES[name].video
    directory = tmp_path / spec.file
    directory.mkdir(parents=True)
    a = splits["test"][-1]
    array = np.linspace(-1, 1, 4 * 1024).reshape(4, 1024)  # float64 on disk
    np.save(directory / f"{a.video_id}.npy", array)
    got = spec.open(directory).get(spec.key(a))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, array, rtol=1e-6)


def test_vgg_errors_name_file_and_key(tmp_path):
    spec = charades_sta.FEATURES["vgg"].video
    path = tmp_path / spec.file
    with h5py.File(path, "w") as f:
        f.create_dataset("AAAAA", data=np.zeros((3, 1024), np.float32))  # an I3D array
        f.create_dataset("BBBBB", data=np.array([[0.0] * 4095 + [np.nan]], np.float32))
    store = spec.open(path)
    with pytest.raises(DataError, match="expected width 4096") as err:
        store.get("AAAAA")
    assert (err.value.source, err.value.where, err.value.field) == (
        str(path),
        "key 'AAAAA'",
        "video_features",
    )
    with pytest.raises(DataError, match="first at row 0, column 4095"):
        store.get("BBBBB")
    with pytest.raises(DataError, match="not in the file"):
        store.get("CCCCC")
    store.close()
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 3)
    with pytest.raises(DataError, match="truncated") as err:
        spec.open(path).get("AAAAA")
    assert err.value.source == str(path)
    empty = tmp_path / "empty.hdf5"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        spec.open(empty)


def test_i3d_errors_name_file_and_key(tmp_path):
    spec = charades_sta.FEATURES["i3d"].video
    directory = tmp_path / spec.file
    directory.mkdir(parents=True)
    np.save(directory / "AAAAA.npy", np.zeros((5, 4096), np.float32))  # a VGG array
    np.save(directory / "BBBBB.npy", np.full((2, 1024), np.inf, np.float32))
    (directory / "CCCCC.npy").write_bytes(b"")
    store = spec.open(directory)
    with pytest.raises(DataError, match="expected width 1024") as err:
        store.get("AAAAA")
    assert err.value.source == str(directory / "AAAAA.npy") and err.value.where == "key 'AAAAA'"
    with pytest.raises(DataError, match="non-finite"):
        store.get("BBBBB")
    with pytest.raises(DataError, match="unreadable .npy") as err:
        store.get("CCCCC")
    assert err.value.source == str(directory / "CCCCC.npy")
    with pytest.raises(DataError, match="no such feature file") as err:
        store.get("DDDDD")
    assert err.value.where == "key 'DDDDD'"
