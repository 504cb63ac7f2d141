"""``vmr-jax score``: every protocol on hand-written files with hand-computed metrics."""

from __future__ import annotations

import hashlib
import json

import pytest

from vmr_jax import main as cli
from vmr_jax.evaluation import scoring


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def moment_files(tmp_path):
    gt = _jsonl(
        tmp_path / "test.queries.jsonl",
        [
            {"query_id": "a", "duration_s": 30.0, "spans_s": [[0.0, 10.0]]},
            {"query_id": "b", "duration_s": 30.0, "spans_s": [[10.0, 20.0]]},
        ],
    )
    preds = _jsonl(
        tmp_path / "preds.jsonl",
        [
            # IoU([0,5],[0,10]) = 0.5 exactly, then the GT itself.
            {"query_id": "a", "moments": [[0.0, 5.0, 0.9], [0.0, 10.0, 0.8]]},
            # IoU([12,18],[10,20]) = 6 / 10.
            {"query_id": "b", "moments": [[12.0, 18.0]]},
        ],
    )
    return gt, preds


def test_2dtan_strict_and_mmn_inclusive(moment_files):
    gt, preds = moment_files
    strict = scoring.score("2dtan", gt, preds, ious=(0.5,))
    inclusive = scoring.score("mmn", gt, preds, ious=(0.5,))
    assert strict["metrics"]["R@1,IoU=0.5"] == 0.5  # only b: 0.5 is not > 0.5
    assert inclusive["metrics"]["R@1,IoU=0.5"] == 1.0
    assert strict["metrics"]["R@5,IoU=0.5"] == 1.0  # a's second moment; b's list is short
    assert strict["metrics"]["mIoU"] == pytest.approx((0.5 + 0.6) / 2)
    assert strict["protocol"] == "2dtan" and "IoU > m" in strict["rule"]
    assert strict["num_queries"] == 2
    with open(gt, "rb") as f:
        assert strict["ground_truth_sha256"] == hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize(
    "rows, match",
    [
        (
            [{"query_id": "a", "moments": [[0, 1]]}],
            r"1 ground-truth queries have no prediction.*'b'",
        ),
        ([{"query_id": "z", "moments": []}], r"line 1: query 'z' is not in the ground truth"),
        ([{"query_id": "a", "moments": [[5, 1]]}], r"line 1 \(query 'a'\): field 'moments\[0\]'"),
        (
            [{"query_id": "a", "moments": [[0, float("nan")]]}],
            r"\(query 'a'\): field 'moments\[0\]'",
        ),
        ([{"query_id": "a", "moments": []}] * 2, r"line 2: query 'a' appears twice"),
        ([{"query": "a"}], r"object has keys \['query'\], none of a predictions format"),
        ([{"query": "a"}, {"query_id": "b"}], r"line 1 has keys \['query'\], none of a"),
        ([{"query_id": "a"}, {"query_id": "b"}], r"line 1 \(query 'a'\): field 'moments' missing"),
        ([{"query_id": "a", "moments": [["0", 1]]}], r"\(query 'a'\): field 'moments\[0\]'"),
    ],
)
def test_bad_moment_predictions(moment_files, tmp_path, rows, match):
    gt, _ = moment_files
    bad = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(scoring.PredictionsError, match=match):
        scoring.score("2dtan", gt, bad)


def test_score_command_writes_results(moment_files, tmp_path, capsys):
    gt, preds = moment_files
    out = tmp_path / "results.json"
    code = cli.main(
        [
            "score",
            "--protocol",
            "mmn",
            "--ground-truth",
            gt,
            "--predictions",
            preds,
            "--ious",
            "0.5,0.7",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["metrics"]["R@1,IoU=0.7"] == 0.0  # best first moments: 0.5 and 0.6
    assert result["metrics"]["R@5,IoU=0.7"] == 0.5  # a's GT moment
    assert result["protocol"] == "mmn" and result["predictions"].endswith("preds.jsonl")
    assert "rule:" in capsys.readouterr().out
    assert (
        cli.main(
            [
                "score",
                "--protocol",
                "2dtan",
                "--ground-truth",
                gt,
                "--predictions",
                str(tmp_path / "missing.jsonl"),
            ]
        )
        == 2
    )


def test_tvr_submission(tmp_path):
    gt = _jsonl(
        tmp_path / "tvr_val_release.jsonl",
        [
            {
                "desc_id": 1,
                "desc": "x",
                "vid_name": "v1",
                "duration": 30.0,
                "ts": [3.0, 9.0],
                "type": "v",
            },
            {
                "desc_id": 2,
                "desc": "y",
                "vid_name": "v2",
                "duration": 60.0,
                "ts": [0.0, 15.0],
                "type": "t",
            },
        ],
    )
    (tmp_path / "tvr_video2dur_idx.json").write_text(
        json.dumps({"val": {"v1": [30.0, 7], "v2": [60.0, 8]}})
    )
    submission = {
        "video2idx": {"v1": 7, "v2": 8},
        # Query 1: the GT moment in its video; query 2: the GT times in the wrong video.
        "VCMR": [
            {"desc_id": 1, "predictions": [[7, 3.0, 9.0, 1.0]]},
            {"desc_id": 2, "predictions": [[7, 0.0, 15.0, 1.0]]},
        ],
        "SVMR": [
            {"desc_id": 1, "predictions": [[7, 3.0, 6.0, 1.0], [7, 3.0, 9.0, 0.5]]},
            # The wrong-video row is dropped first, so [0, 7.5] (IoU 0.5) is the top-1.
            {"desc_id": 2, "predictions": [[7, 0.0, 15.0, 1.0], [8, 0.0, 7.5, 0.5]]},
        ],
        "VR": [
            {"desc_id": 1, "predictions": [[8, 0, 0, 1.0], [7, 0, 0, 0.5]]},
            {"desc_id": 2, "predictions": [[8, 0, 0, 1.0]]},
        ],
    }
    preds = tmp_path / "submission.json"
    preds.write_text(json.dumps(submission))
    result = scoring.score("tvr", gt, str(preds))
    assert result["split"] == "val" and result["protocol"] == "tvr"
    m = result["metrics"]
    assert m["VCMR"]["0.5-r1"] == 50.0 and m["VCMR"]["0.7-r100"] == 50.0
    # SVMR query 1: [3, 6] has IoU 0.5 (>= 0.5 hit), [3, 9] IoU 1; query 2: IoU 0.5.
    assert m["SVMR"]["0.5-r1"] == 100.0 and m["SVMR"]["0.7-r1"] == 0.0
    assert m["SVMR"]["0.7-r5"] == 50.0
    assert m["VR"]["r1"] == 50.0 and m["VR"]["r5"] == 100.0


def test_didemo_rankings(tmp_path):
    gt = tmp_path / "test_data.json"
    gt.write_text(
        json.dumps(
            [
                {
                    "annotation_id": 11,
                    "description": "a",
                    "video": "v.mp4",
                    "num_segments": 6,
                    "times": [[0, 0], [0, 0], [0, 0], [1, 1]],
                },
                {
                    "annotation_id": 12,
                    "description": "b",
                    "video": "v.mp4",
                    "num_segments": 6,
                    "times": [[2, 3], [2, 3], [2, 3], [2, 3]],
                },
            ]
        )
    )
    # Moment order (0,0)..(5,5), (0,1)..(0,5), (1,2)..(1,5), (2,3): (1,1) is 1, (2,3) is 15.
    first = [0, 1] + [i for i in range(21) if i not in (0, 1)]
    second = [0, 15] + [i for i in range(21) if i not in (0, 15)]
    preds = tmp_path / "rankings.json"
    preds.write_text(json.dumps({"rankings": {"11": first, "12": second}}))
    result = scoring.score("didemo", str(gt), str(preds))
    m = result["metrics"]
    # Query 11: annotator ranks 1,1,1,2 -> best three average 1 (R@1); top-1 (0,0) IoUs 1,1,1,0.
    # Query 12: ranks 2,2,2,2 -> average 2 (R@5 only); top-1 (0,0) vs (2,3): IoU 0.
    assert (m["R@1"], m["R@5"], m["mIoU"]) == (0.5, 1.0, 0.5)
    assert result["protocol"] == "didemo"


def test_tvr_bulk_reader_matches_json(tmp_path):
    from vmr_jax.evaluation import vcmr

    sub = {
        "video2idx": {"v1": 7, "v2": 8},
        "VR": [
            {"desc_id": 1, "predictions": [[8, 0, 0, 1.0], [7, 0, 0, 5e-1]]},
            {"desc_id": 2, "predictions": []},
        ],
        "SVMR": [{"predictions": [[7, 3.25, 9, -1e-3]], "desc_id": 1}],
    }
    path = tmp_path / "sub.json"
    path.write_text(json.dumps(sub, indent=1))
    bulk = vcmr.read_submission(path, as_arrays=True)
    assert bulk["VR"][0]["predictions"].tolist() == [[8, 0, 0, 1.0], [7, 0, 0, 0.5]]
    assert bulk["VR"][1]["predictions"].shape == (0, 4)
    assert bulk["SVMR"][0]["predictions"].tolist() == [[7, 3.25, 9, -0.001]]
    assert vcmr.read_submission(path) == sub  # the plain reader returns the decoded JSON
    # Rows that are not 4 plain numbers fall back to the decoded lists (and their checks).
    sub["SVMR"][0]["predictions"] = [[7, 3.25, 9]]
    path.write_text(json.dumps(sub))
    assert vcmr.read_submission(path, as_arrays=True)["SVMR"][0]["predictions"] == [[7, 3.25, 9]]
    sub["SVMR"][0]["predictions"] = [[7, float("nan"), 9, 1]]
    path.write_text(json.dumps(sub))
    rows = vcmr.read_submission(path, as_arrays=True)["SVMR"][0]["predictions"]
    assert isinstance(rows, list) and rows[0][0] == 7
