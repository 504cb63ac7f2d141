"""Empty and truncated annotation files are errors naming the file (and the line), for
``vmr-jax data stats`` and ``data validate`` as for ``build``.  Every file is written here."""

from __future__ import annotations

import json

import pytest

from vmr_jax import main

CHARADES_CSV = "id,length\nV1,30.0\nV2,12.5\n"
CHARADES_OK = "V1 1.0 5.0##a person opens the door.\nV2 2.0 6.0##a person sits down.\n"
TVR_LINE = {
    "desc_id": 1,
    "vid_name": "c1",
    "duration": 60.0,
    "ts": [1, 2],
    "desc": "a b",
    "type": "v",
}
TVR_VIDEOS = json.dumps({"val": {"c1": [60.0, 0]}})

# dataset, features, split, {file: text}, the file and location the error names.
CASES = {
    "charades empty": (
        "charades_sta",
        "i3d",
        "test",
        {"charades_sta_test.txt": "", "Charades_v1_test.csv": CHARADES_CSV},
        "charades_sta_test.txt: empty file",
    ),
    "charades cut mid-sentence": (
        "charades_sta",
        "i3d",
        "test",
        {
            "charades_sta_test.txt": CHARADES_OK + "V1 2.0 6.0##a person sits do",
            "Charades_v1_test.csv": CHARADES_CSV,
        },
        "charades_sta_test.txt: line 3: the file ends mid-record",
    ),
    "charades cut mid-number": (
        "charades_sta",
        "i3d",
        "test",
        {"charades_sta_test.txt": CHARADES_OK + "V1 2.", "Charades_v1_test.csv": CHARADES_CSV},
        "charades_sta_test.txt: line 3: the file ends mid-record",
    ),
    "tacos blank": ("tacos", "c3d", "test", {"test.json": "  \n\n"}, "test.json: empty file"),
    "tacos no video": ("tacos", "c3d", "test", {"test.json": "{}"}, "test.json: no query"),
    "tacos cut": (
        "tacos",
        "c3d",
        "test",
        {"test.json": '{\n"s1.avi": {"fps": 29.4,\n"num_frames": '},
        "test.json: line 3, column 15: the file ends mid-record",  # after '"num_frames": '
    ),
    "activitynet empty": ("activitynet", "c3d", "val", {"val.json": ""}, "val.json: empty file"),
    "didemo empty list": ("didemo", "fc7", "test", {"test_data.json": "[]\n"}, "no query"),
    "didemo cut": (
        "didemo",
        "fc7",
        "test",
        {"test_data.json": '[{"annotation_id": 3'},  # 20 characters: the error is at column 21
        "test_data.json: line 1, column 21: the file ends mid-record",
    ),
    "tvr empty": (
        "tvr",
        "resnet_i3d",
        "val",
        {"tvr_val_release.jsonl": "", "tvr_video2dur_idx.json": TVR_VIDEOS},
        "tvr_val_release.jsonl: empty file",
    ),
    "tvr cut": (
        "tvr",
        "resnet_i3d",
        "val",
        {
            "tvr_val_release.jsonl": json.dumps(TVR_LINE) + "\n" + json.dumps(TVR_LINE)[:40],
            "tvr_video2dur_idx.json": TVR_VIDEOS,
        },
        "tvr_val_release.jsonl: line 2: the file ends mid-record",
    ),
}


def run(action: str, dataset: str, features: str, split: str, data_dir) -> int:
    """``vmr-jax data ACTION ...`` through the command's entry point (its error handling)."""
    argv = [action, "--dataset", dataset, "--features", features, "--data_dir", str(data_dir)]
    return main.main(["data", *argv, "--splits", split])


@pytest.mark.parametrize("case", sorted(CASES))
def test_stats_and_validate_name_the_file(case, tmp_path, capsys):
    dataset, features, split, files, expected = CASES[case]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert run("stats", dataset, features, split, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path) in err and expected in err, err
    assert run("validate", dataset, features, split, tmp_path) == 1
    out, err = capsys.readouterr()
    assert expected in json.loads(out)["errors"][0]
    assert "1 problems found" in err


def test_a_complete_last_line_without_line_end_is_kept(tmp_path):
    from data_pipelines import charades_sta, tvr
    from data_pipelines.annotations import ParseReport

    (tmp_path / "charades_sta_test.txt").write_text(CHARADES_OK.rstrip("\n"))
    (tmp_path / "Charades_v1_test.csv").write_text(CHARADES_CSV)
    assert len(charades_sta.parse_split(tmp_path, "test", ParseReport())) == 2
    # The official TVR files end without a line end.
    (tmp_path / "tvr_val_release.jsonl").write_text(json.dumps(TVR_LINE))
    (tmp_path / "tvr_video2dur_idx.json").write_text(TVR_VIDEOS)
    assert len(tvr.parse_split(tmp_path, "val", ParseReport())) == 1
