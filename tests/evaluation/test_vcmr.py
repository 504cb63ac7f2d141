"""evaluation.vcmr: hand-computed TVR metrics and NMS, plain-Python references of the official
loops, bad-submission errors, and parity with the TVRetrieval evaluator and XML post-processing.

Golden files: every ``eval_tvr_*.npz`` (submission arrays, ``gt/*``, ``metrics/*`` and the json
``results``) and every ``xml_*.npz`` with ``submission/<tag>/<TASK>`` lists (``no_nms`` and
``nms<t>``).  Everything is driven by the files' keys, so a new golden of the same protocol needs
no code change.  When shared/data/tvr (or VMR_DATA_DIR/tvr) holds the split named by an
``eval_tvr_<split>_sample<n>`` file, its first ``n`` lines must give the golden's ``gt/*``.

``python tests/evaluation/test_vcmr.py`` times :func:`vcmr.evaluate_submission` on a full
synthetic TVR val submission (10,895 queries x 100 rows for VCMR, SVMR and VR).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from vmr_jax.evaluation import vcmr

V2I = {"a": 10, "b": 11, "c": 12}
F32_07 = 0.699999988079071  # float32(0.7), read off its bits 0x3F333333


def _gt(*queries, types=True):
    """GT from ``(desc_id, vid_name, ts[, type])`` tuples, through the official record format."""
    records = []
    for q in queries:
        rec = {"desc_id": q[0], "vid_name": q[1], "ts": q[2], "desc": f"query {q[0]}"}
        if types:
            rec["type"] = q[3] if len(q) > 3 else "v"
        records.append(rec)
    return vcmr.ground_truth_from_records(records, V2I)


def _submission(**tasks):
    """``task={desc_id: rows}`` -> official submission dict."""
    sub = {"video2idx": dict(V2I)}
    for task, lists in tasks.items():
        sub[task] = [{"desc_id": d, "desc": "", "predictions": rows} for d, rows in lists.items()]
    return sub


def _same(a, b) -> bool:
    return a == b or (
        isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    )


def _same_results(a: dict, b: dict) -> bool:
    """Results dicts equal, NaN matching NaN."""
    if a.keys() != b.keys():
        return False
    return all(
        _same_results(a[k], b[k]) if isinstance(a[k], dict) else _same(a[k], b[k]) for k in a
    )


def _official_percent(count: int, total: int) -> float:
    """get_rounded_percentage(count / total): NumPy float64 division, then round(x * 100, 2)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(round(np.float64(count) / np.float64(total) * 100, 2))


# --------------------------------------------------------------------------- hand-computed


def test_inclusive_threshold_in_float32():
    gt = _gt((1, "a", [0, 10]))
    # IoU 5/10 = 0.5 exactly, then 7/10 = float32(0.7) exactly (7 and 10 are exact in float32).
    rows = [[10, 0.0, 5.0, 1.0], [10, 0.0, 7.0, 0.5]]
    res = vcmr.evaluate_submission(_submission(VCMR={1: rows}), gt)
    assert res["VCMR"]["0.5-r1"] == 100.0  # IoU == 0.5 hits (>=)
    assert res["VCMR"]["0.7-r1"] == 0.0
    assert res["VCMR"]["0.7-r5"] == 100.0  # IoU == float32(0.7) hits
    iou = vcmr.tvr_iou(np.float32([[0, 5], [0, 7]]), np.float32([0, 10]))
    assert iou.dtype == np.float32 and iou.tolist() == [0.5, F32_07]


def test_float32_arithmetic_decides_both_ways():
    # q1: 0.84 / 1.2 is 0.7 in float64 (a hit there), but float32(0.84) = 0.8399999737739563 over
    # float32(1.2) = 1.2000000476837158 is 0.69999995..., rounded to the float32 0.6999999284744263
    # < float32(0.7): the official evaluator misses.  q2: 5.81 / 8.3 = 0.6999999999999998 in
    # float64 (a miss), but float32(5.81) / float32(8.3) = 0.69999997... rounds to float32(0.7).
    gt = _gt((1, "a", [0, 1.2]), (2, "a", [0, 8.3]))
    sub = _submission(VCMR={1: [[10, 0, 0.84, 1]], 2: [[10, 0, 5.81, 1]]})
    res = vcmr.evaluate_submission(sub, gt)
    assert res["VCMR"]["0.7-r1"] == 50.0  # q2 only
    assert res["VCMR"]["0.5-r1"] == 100.0
    assert vcmr.tvr_iou(np.float32([0, 0.84]), np.float32([0, 1.2])) == np.float32(
        0.6999999284744263
    )
    assert vcmr.tvr_iou(np.float32([0, 5.81]), np.float32([0, 8.3])) == np.float32(F32_07)
    # the same in float64 goes the other way for both queries
    assert vcmr.tvr_iou(np.array([0, 0.84]), np.array([0, 1.2])) >= 0.7
    assert vcmr.tvr_iou(np.array([0, 5.81]), np.array([0, 8.3])) < 0.7


def test_wrong_video_iou_is_zero():
    gt = _gt((1, "a", [0, 10]))
    vcmr_rows = [[11, 0, 10, 1.0], [10, 0, 6, 0.5]]  # exact times in video b, then IoU 0.6 in a
    sub = _submission(VCMR={1: vcmr_rows}, VR={1: [[11, 0, 0, 1.0], [10, 0, 0, 0.5]]})
    res = vcmr.evaluate_submission(sub, gt)
    assert res["VCMR"] == {**res["VCMR"], "0.5-r1": 0.0, "0.5-r5": 100.0, "0.7-r5": 0.0}
    assert res["VR"] == {"r1": 0.0, "r5": 100.0, "r10": 100.0, "r100": 100.0}
    pred = vcmr.parse_submission(sub, gt)["VCMR"]
    hits = vcmr.query_hits("VCMR", pred, gt.video_idx, gt.spans, gt.num_spans, (0.5,), (1, 2))
    assert hits.shape == (1, 1, 2) and hits.tolist() == [[[False, True]]]


def test_two_of_four_spans_rule():
    # DiDeMo-style GT: a list of >= 4 spans; a row hits only when 2 of them reach the threshold.
    gt = _gt(
        (1, "a", [[0, 10], [0, 10], [20, 30], [40, 50]]),
        (2, "a", [[0, 10], [0, 5], [30, 40], [50, 60], [70, 80]]),
        types=False,
    )
    assert gt.num_spans.tolist() == [4, 5] and gt.desc_type is None
    sub = _submission(
        VCMR={
            1: [[10, 20, 30, 1.0], [10, 0, 10, 0.5]],  # one span at IoU 1 (miss), then two (hit)
            2: [[10, 0, 8, 1.0]],  # IoU 0.8 with [0,10], 5/8 = 0.625 with [0,5]
        }
    )
    res = vcmr.evaluate_submission(sub, gt)
    assert res["VCMR"] == {
        **res["VCMR"],
        "0.5-r1": 50.0,
        "0.5-r5": 100.0,
        "0.7-r1": 0.0,
        "0.7-r5": 50.0,
    }
    assert "VCMR_by_type" not in res  # no query types in this GT
    with pytest.raises(vcmr.GroundTruthError, match="'ts' must be"):
        _gt((1, "a", [[0, 10], [0, 10], [20, 30]]))  # 3 spans: the official code cannot score it


def test_short_lists_and_duplicates():
    gt = _gt((1, "a", [0, 10]), (2, "a", [0, 10]))
    sub = _submission(
        VCMR={
            1: [[10, 20, 30, 3.0], [11, 0, 10, 2.0], [10, 0, 10, 1.0]],  # 3 rows, hit at row 3
            2: [[10, 0, 10, 1.0]] * 5,
        },  # five copies of one hit count once
        VR={1: [[10, 0, 0, 1.0]] * 3, 2: [[11, 0, 0, 1.0]]},
    )
    res = vcmr.evaluate_submission(sub, gt)
    assert res["VCMR"] == {
        "0.5-r1": 50.0,
        "0.5-r5": 100.0,
        "0.5-r10": 100.0,
        "0.5-r100": 100.0,
        "0.7-r1": 50.0,
        "0.7-r5": 100.0,
        "0.7-r10": 100.0,
        "0.7-r100": 100.0,
    }
    assert res["VR"] == {"r1": 50.0, "r5": 50.0, "r10": 50.0, "r100": 50.0}


def test_lists_are_used_in_the_given_order():
    gt = _gt((1, "a", [0, 10]))
    rows = [[10, 20, 30, 0.1], [10, 0, 10, 0.9]]  # the hit has the higher score but comes second
    res = vcmr.evaluate_submission(_submission(VCMR={1: rows}, SVMR={1: rows}), gt)
    assert (res["VCMR"]["0.5-r1"], res["SVMR"]["0.5-r1"]) == (0.0, 0.0)
    assert (res["VCMR"]["0.5-r5"], res["SVMR"]["0.5-r5"]) == (100.0, 100.0)


def test_svmr_drops_other_videos_before_top_k():
    gt = _gt((1, "a", [0, 10]))
    rows = [[11, 0, 10, 1.0]] * 5 + [[10, 0, 10, 0.5]]  # five exact spans in b, then the GT in a
    res = vcmr.evaluate_submission(_submission(VCMR={1: rows}, SVMR={1: rows}), gt)
    assert res["SVMR"]["0.7-r1"] == 100.0
    assert (res["VCMR"]["0.7-r5"], res["VCMR"]["0.7-r10"]) == (0.0, 100.0)
    # The 100-row cut comes first: a hit at row 101 is gone even though 100 rows are removed.
    long_rows = [[11, 0, 10, 1.0]] * 100 + [[10, 0, 10, 0.5]]
    res = vcmr.evaluate_submission(_submission(SVMR={1: long_rows}), gt, truncate=True)
    assert res["SVMR"]["0.5-r100"] == 0.0


def test_percentages_per_type_and_layout():
    gt = _gt((1, "a", [0, 10], "v"), (2, "a", [0, 10], "v"), (3, "b", [0, 10], "t"))
    sub = _submission(VR={1: [[10, 0, 0, 1]], 2: [[11, 0, 0, 1]], 3: [[11, 0, 0, 1]]})
    res = vcmr.evaluate_submission(sub, gt)
    assert res["VR"]["r1"] == 66.67  # round(200 / 3, 2)
    by_type = res["VR_by_type"]
    assert (by_type["v-r1"], by_type["t-r1"]) == (50.0, 100.0)
    assert math.isnan(by_type["vt-r1"])  # no vt query: the official 0/0
    assert by_type["desc_type_ratio"] == "v 66.67 t 33.33 vt 0.0"
    assert list(res) == ["VR", "VR_by_type", "num_queries", "protocol", "rule"]
    assert res["protocol"] == "tvr" and res["num_queries"] == 3 and ">= float32(m)" in res["rule"]
    both = vcmr.evaluate_submission({**sub, "VCMR": sub["VR"]}, gt)
    assert list(both)[:4] == ["VCMR", "VR", "VCMR_by_type", "VR_by_type"]
    assert list(both["VCMR_by_type"])[:2] == ["v-0.5-r1", "v-0.5-r5"]
    with pytest.raises(ValueError, match="protocol"):
        vcmr.evaluate_submission(sub, gt, protocol="nope")


def test_array_path_and_file_round_trip(tmp_path):
    gt = _gt((1, "a", [0, 10]), (2, "b", [2, 4], "t"))
    pred = vcmr.RankedPredictions(
        video_idx=np.array([[10, 11, -1], [11, 11, 12]]),
        st_ed=np.array([[[0, 5], [0, 10], [0, 0]], [[2, 4], [0, 9], [1, 2]]], float),
        score=np.array([[2.0, 1.0, 0.0], [3.0, 2.0, 1.0]]),
        length=np.array([2, 3]),
    )
    res = vcmr.evaluate_predictions({"VCMR": pred}, gt)
    assert res["VCMR"]["0.5-r1"] == 100.0 and res["VCMR"]["0.7-r1"] == 50.0
    sub = vcmr.submission_from_predictions({"VCMR": pred}, gt)
    assert sub["VCMR"][0] == {
        "desc_id": 1,
        "desc": "query 1",
        "predictions": [[10, 0.0, 5.0, 2.0], [11, 0.0, 10.0, 1.0]],
    }
    path = tmp_path / "submission.json"
    vcmr.write_submission(path, sub)
    assert vcmr.read_submission(path) == sub
    assert _same_results(vcmr.evaluate_submission(vcmr.read_submission(path), gt), res)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(vcmr.SubmissionError, match="bad.json"):
        vcmr.read_submission(tmp_path / "bad.json")


# --------------------------------------------------------------------------- bad submissions


def _base():
    return _submission(VCMR={1: [[10, 0, 5, 1.0]], 2: [[11, 1, 2, 1.0]]})


def _with_rows(rows, desc_id=2):
    sub = _base()
    sub["VCMR"][desc_id - 1]["predictions"] = rows
    return sub


BAD_SUBMISSIONS = {
    "missing query": (lambda: {**_base(), "VCMR": _base()["VCMR"][:1]}, r"1 missing \(e.g. \[2\]"),
    "extra query": (
        lambda: {
            **_base(),
            "VCMR": _base()["VCMR"] + [{"desc_id": 7, "predictions": [[10, 0, 1, 0]]}],
        },
        r"1 not in it \(e.g. \[7\]",
    ),
    "repeated query": (
        lambda: {**_base(), "VCMR": _base()["VCMR"] + _base()["VCMR"][1:]},
        "desc_id=2 appears twice",
    ),
    "unknown video": (
        lambda: _with_rows([[99, 0, 1, 0]]),
        r"desc_id=2: predictions\[0\] video_idx",
    ),
    "fractional video": (lambda: _with_rows([[10.5, 0, 1, 0]]), "video_idx 10.5 is not an int"),
    "st after ed": (
        lambda: _with_rows([[10, 0, 1, 0], [10, 3, 2, 0]]),
        r"desc_id=2: predictions\[1\] st is after ed",
    ),
    "nan st": (
        lambda: _with_rows([[10, float("nan"), 1, 0]]),
        r"predictions\[0\] st is not finite",
    ),
    "nan ed": (
        lambda: _with_rows([[10, 0, float("nan"), 0]]),
        r"predictions\[0\] ed is not finite",
    ),
    "inf ed": (lambda: _with_rows([[10, 0, float("inf"), 0]]), "ed is not finite"),
    "nan score": (lambda: _with_rows([[10, 0, 1, float("nan")]]), "score is not finite"),
    "3 numbers": (
        lambda: _with_rows([[10, 0, 1, 0], [10, 0, 1]]),
        r"desc_id=2: predictions\[1\] must be 4 numbers",
    ),
    "5 numbers": (lambda: _with_rows([[10, 0, 1, 0, 9]]), "must be 4 numbers"),
    "text": (lambda: _with_rows([[10, "0", 1, 0]]), "must be 4 numbers"),
    "null row": (lambda: _with_rows([None]), "must be 4 numbers"),
    "not a list": (lambda: _with_rows({"0": [10, 0, 1, 0]}), "desc_id=2: 'predictions' must be"),
    "empty list": (lambda: _with_rows([]), "desc_id=2: 'predictions' is empty"),
    "101 rows": (lambda: _with_rows([[10, 0, 1, 0]] * 101), "desc_id=2: 'predictions' has 101"),
    "entry": (lambda: {**_base(), "VCMR": [{"desc_id": 1}]}, r"VCMR\[0\]: an entry is"),
    "video2idx value": (
        lambda: {**_base(), "video2idx": {**V2I, "d": "13"}},
        r"video2idx\['d'\] must be an int",
    ),
    "no video2idx": (lambda: {"VCMR": _base()["VCMR"]}, "'video2idx'"),
    "no task": (lambda: {"video2idx": V2I, "vcmr": []}, "no task"),
    "gt video not mapped": (
        lambda: {**_with_rows([[11, 1, 2, 1.0]], 1), "video2idx": {"b": 11}},
        "video2idx has no 'a', the video of desc_id=1",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SUBMISSIONS))
def test_bad_submission_errors(case):
    gt = _gt((1, "a", [0, 10]), (2, "b", [0, 10]))
    make, message = BAD_SUBMISSIONS[case]
    with pytest.raises(vcmr.SubmissionError, match=message):
        vcmr.evaluate_submission(make(), gt)


def test_truncate_is_the_official_cut():
    gt = _gt((1, "a", [0, 10]), (2, "b", [0, 10]))
    rows = [[11, 5, 6, 0]] * 100 + [[11, 0, 10, 0], [11, float("nan"), 1, 0]]  # unread extras
    res = vcmr.evaluate_submission(_with_rows(rows), gt, truncate=True)
    assert res["VCMR"]["0.5-r100"] == 50.0  # q1 hits at row 1; q2's hit at row 101 is not read
    pred = vcmr.RankedPredictions(np.full((2, 1), 10), np.array([[[0, 1]], [[np.nan, 1]]]))
    with pytest.raises(vcmr.SubmissionError, match=r"desc_id=2: predictions\[0\] st is not"):
        vcmr.evaluate_predictions({"SVMR": pred}, gt)


def _write_lines(path: Path, records) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records))
    return path


GOOD = {"desc_id": 5, "vid_name": "a", "ts": [1.5, 3], "type": "t", "desc": "x"}
BAD_GT = {
    "not json": (["{"], ":1: not JSON"),
    "no ts": ([GOOD, {"desc_id": 6, "vid_name": "a"}], r":2: no \['ts'\]"),
    "ts shape": ([GOOD, {**GOOD, "desc_id": 7, "ts": [1, 2, 3]}], ":2: 'ts' must be"),
    "unknown video": ([{**GOOD, "vid_name": "zz"}], ":1: vid_name 'zz' is not in video2idx"),
    "repeated id": ([GOOD, GOOD], ":2: desc_id 5 repeats line 1"),
    "type on some": ([GOOD, {k: v for k, v in GOOD.items() if k != "type"}], ":2: 'type'"),
    "unknown type": ([{**GOOD, "type": "x"}], ":1: type 'x'"),
}


@pytest.mark.parametrize("case", list(BAD_GT))
def test_ground_truth_errors_name_file_and_line(case, tmp_path):
    table = _write_lines(tmp_path / "v2d.json", [{"val": {n: [60.0, i] for n, i in V2I.items()}}])
    records, message = BAD_GT[case]
    path = _write_lines(tmp_path / "gt.jsonl", records)
    with pytest.raises(vcmr.GroundTruthError, match=re.escape(str(path)) + message):
        vcmr.load_tvr_ground_truth(path, table, "val")


def test_load_ground_truth(tmp_path):
    table = _write_lines(tmp_path / "v2d.json", [{"val": {n: [60.0, i] for n, i in V2I.items()}}])
    path = _write_lines(
        tmp_path / "gt.jsonl", [GOOD, {**GOOD, "desc_id": 6, "vid_name": "c", "type": "vt"}]
    )
    gt = vcmr.load_tvr_ground_truth(path, table, "val")
    assert gt.desc_id == (5, 6) and gt.video_idx.tolist() == [10, 12]
    assert gt.spans.tolist() == [[[1.5, 3.0]], [[1.5, 3.0]]] and gt.desc_type.tolist() == [1, 2]
    assert gt.vid_name == ("a", "c") and gt.video2idx == V2I
    with pytest.raises(vcmr.GroundTruthError, match="no split 'test'"):
        vcmr.load_tvr_ground_truth(path, table, "test")


# --------------------------------------------------------------------------- NMS

# (video, st, ed, score) in list order; see the expected orders in the tests below.
NMS_ROWS = [
    (11, 30, 40, 0.5),  # 0: video b, met first; dropped by row 6 (IoU 9/10)
    (10, 0, 10, 0.9),  # 1: best of a
    (10, 1, 10, 0.8),  # 2: IoU 9/10 with row 1 -> dropped
    (10, 0, 5, 0.7),  # 3: IoU 5/10 = 0.5 with row 1, not > 0.5 -> kept
    (10, 40, 40, 0.5),  # 4: zero length
    (10, 40, 40, 0.5),  # 5: the same zero-length span: zero hull, IoU 0 -> kept
    (11, 31, 40, 0.6),  # 6: best of b
    (12, 0, 10, 0.5),  # 7: video c, alone
    (11, 50, 60, 0.5),  # 8: b; ties with rows 4, 5 (a) and 7 (c): b was met first -> first
]


def _nms_input(rows=NMS_ROWS):
    arr = np.array(rows, float)[None]
    return vcmr.RankedPredictions(arr[..., 0].astype(int), arr[..., 1:3], arr[..., 3])


def _rows_of(pred, q=0):
    n = pred.length[q]
    return [
        (int(v), *map(float, se), float(s))
        for v, se, s in zip(pred.video_idx[q, :n], pred.st_ed[q, :n], pred.score[q, :n])
    ]


def test_vcmr_nms_by_hand():
    expected = [NMS_ROWS[i] for i in (1, 3, 6, 8, 4, 5, 7)]
    assert _rows_of(vcmr.vcmr_nms(_nms_input(), 0.5)) == expected
    assert _rows_of(vcmr.vcmr_nms(_nms_input(), 0.5, max_after_nms=3)) == expected[:3]
    # one per video: a -> row 1, b -> row 6, c -> row 7
    capped = vcmr.vcmr_nms(_nms_input(), 0.5, max_per_video=1)
    assert _rows_of(capped) == [NMS_ROWS[i] for i in (1, 6, 7)]
    # first 4 rows only: b keeps row 0 (row 6 is not read), a keeps rows 1 and 3
    assert _rows_of(vcmr.vcmr_nms(_nms_input(), 0.5, max_before_nms=4)) == [
        NMS_ROWS[i] for i in (1, 3, 0)
    ]


def test_svmr_nms_by_hand():
    # One group: row 1 drops 2 and 7 (IoU 1), row 6 drops 0; label = the first row's video.
    out = vcmr.svmr_nms(_nms_input(), 0.5)
    assert _rows_of(out) == [(11, *NMS_ROWS[i][1:]) for i in (1, 3, 6, 4, 5, 8)]


def _reference_nms(rows, threshold, by_video, max_before=1000, max_after=100, per_video=100):
    """The official grouping / greedy loop / re-ranking, restated in plain Python."""
    groups: dict = {}
    for video, st, ed, score in rows[:max_before]:
        groups.setdefault(video if by_video else None, []).append((video, st, ed, score))
    kept_all = []
    for members in groups.values():
        todo = sorted(members, key=lambda r: -r[3])
        kept = []
        while todo and len(kept) < per_video:
            top = todo.pop(0)
            kept.append(top)
            survivors = []
            for r in todo:
                inter = max(0.0, min(top[2], r[2]) - max(top[1], r[1]))
                hull = max(top[2], r[2]) - min(top[1], r[1])
                if (0.0 if hull == 0 else inter / hull) <= threshold:
                    survivors.append(r)
            todo = survivors
        kept_all += kept
    ranked = sorted(kept_all, key=lambda r: -r[3])[:max_after]
    return ranked if by_video else [(rows[0][0], *r[1:]) for r in ranked]


def test_nms_matches_reference_on_random_lists():
    rng = np.random.default_rng(7)
    lists = []
    for _ in range(40):
        n = int(rng.integers(1, 60))
        st = rng.integers(0, 20, n) * 1.5
        lists.append(
            [
                (int(v), float(s), float(s + 1.5 * d), float(sc))
                for v, s, d, sc in zip(
                    rng.integers(0, 4, n), st, rng.integers(0, 6, n), rng.integers(0, 8, n) / 8
                )
            ]
        )
    width = max(map(len, lists))
    arr = np.zeros((len(lists), width, 4))
    for q, rows in enumerate(lists):
        arr[q, : len(rows)] = rows
    pred = vcmr.RankedPredictions(
        arr[..., 0].astype(int), arr[..., 1:3], arr[..., 3], np.array([len(r) for r in lists])
    )
    for kwargs in ({}, {"max_before_nms": 30, "max_after_nms": 12, "max_per_video": 5}):
        ref_kwargs = {
            "max_before": kwargs.get("max_before_nms", 1000),
            "max_after": kwargs.get("max_after_nms", 100),
            "per_video": kwargs.get("max_per_video", 100),
        }
        for by_video, nms in ((True, vcmr.vcmr_nms), (False, vcmr.svmr_nms)):
            out = nms(pred, 0.4, **kwargs)
            for q, rows in enumerate(lists):
                assert _rows_of(out, q) == _reference_nms(rows, 0.4, by_video, **ref_kwargs)


# --------------------------------------------------------------------------- reference evaluator


def _reference_counts(submission, records, video2idx, thds=(0.5, 0.7), topks=(1, 5, 10, 100)):
    """Per query and row in plain Python with float32 scalars: ``{(task, thd|None, k): set of
    hit desc_ids}``."""
    out = {}
    f32 = np.float32
    for task in vcmr.TASKS:
        lists = {e["desc_id"]: e["predictions"][:100] for e in submission[task]}
        for rec in records:
            rows, gt_video = lists[rec["desc_id"]], video2idx[rec["vid_name"]]
            multi = len(rec["ts"]) >= 4
            spans = rec["ts"] if multi else [rec["ts"]]
            same = [r[0] == gt_video for r in rows]
            for thd in [None] if task == "VR" else thds:
                correct = []
                for r, ok in zip(rows, same):
                    reached = 0
                    for gs, ge in spans:
                        s, e, gs, ge = f32(r[1]), f32(r[2]), f32(gs), f32(ge)
                        inter = max(f32(0), min(e, ge) - max(s, gs))
                        hull = max(e, ge) - min(s, gs)
                        iou = inter / hull if hull != 0 else f32(0)
                        reached += bool(ok and iou >= f32(thd if thd else 0))
                    correct.append(ok if task == "VR" else reached >= (2 if multi else 1))
                if task == "SVMR":
                    correct = [c for c, ok in zip(correct, same) if ok]
                for k in topks:
                    if any(correct[:k]):
                        out.setdefault((task, thd, k), set()).add(rec["desc_id"])
    return out


def synthetic_submission(
    gt: vcmr.TvrGroundTruth,
    rng: np.random.Generator,
    num_rows: int = 100,
    max_rows: int | None = None,
) -> dict:
    """A submission for ``gt`` with random and GT-made rows: exact GT spans, spans built at IoU
    0.5 / 0.7 in real arithmetic, zero-length spans, other videos.  ``max_rows``: list lengths
    drawn from 1..max_rows instead of ``num_rows`` each."""
    values = np.array(sorted(gt.video2idx.values()))
    q = len(gt)
    lengths = np.full(q, num_rows) if max_rows is None else rng.integers(1, max_rows + 1, q)
    width = int(lengths.max())
    gs, ge = gt.spans[:, :1, 0], gt.spans[:, :1, 1]
    sub = {"video2idx": dict(gt.video2idx)}
    for task, own in (("VCMR", 0.3), ("SVMR", 0.9), ("VR", 0.3)):
        video = np.where(
            rng.random((q, width)) < own, gt.video_idx[:, None], rng.choice(values, (q, width))
        )
        st = rng.integers(0, 80, (q, width)) * 1.5
        ed = st + rng.integers(1, 12, (q, width)) * 1.5
        kind = rng.integers(0, 8, (q, width))
        fraction = np.where(kind == 1, 0.5, 0.7)
        st = np.where(kind <= 2, gs, np.where(kind == 3, ed, st))
        ed = np.where(kind == 0, ge, np.where(kind <= 2, gs + fraction * (ge - gs), ed))
        if task == "VR":
            st, ed = np.zeros_like(st), np.zeros_like(ed)
        score = -np.sort(-rng.random((q, width)), axis=1)
        columns = [c.tolist() for c in (video, st, ed, score)]
        sub[task] = [
            {
                "desc_id": d,
                "desc": "",
                "predictions": [list(r) for r in zip(*(c[i][:n] for c in columns))],
            }
            for i, (d, n) in enumerate(zip(gt.desc_id, lengths.tolist()))
        ]
    return sub


def _random_records(rng, num, multi):
    records = []
    for i in range(num):
        name = f"video{i % 7}"
        if multi and i % 2:
            n = int(rng.integers(4, 7))
            starts = rng.integers(0, 30, n) * 1.5
            ts = [[float(s), float(s + 1.5 * rng.integers(1, 6))] for s in starts]
        else:
            s = float(rng.integers(0, 100) * 0.75)
            ts = [s, s + float(rng.integers(1, 20) * 0.37)]
        rec = {"desc_id": 1000 + i, "vid_name": name, "ts": ts, "desc": ""}
        if not multi:
            rec["type"] = vcmr.DESC_TYPES[i % 3]
        records.append(rec)
    return records


@pytest.mark.parametrize("multi", [False, True], ids=["tvr", "multi_span"])
def test_matches_reference_on_random_submissions(multi):
    rng = np.random.default_rng(11 + multi)
    video2idx = {f"video{i}": 300 + i for i in range(7)}
    records = _random_records(rng, 90, multi)
    gt = vcmr.ground_truth_from_records(records, video2idx)
    sub = synthetic_submission(gt, rng, max_rows=120)
    res = vcmr.evaluate_submission(sub, gt, truncate=True)
    hits = _reference_counts(sub, records, video2idx)
    for task, thd, k in [
        (t, m, k)
        for t in vcmr.TASKS
        for m in ([None] if t == "VR" else (0.5, 0.7))
        for k in (1, 5, 10, 100)
    ]:
        name = f"r{k}" if thd is None else f"{thd}-r{k}"
        ids = hits.get((task, thd, k), set())
        assert res[task][name] == _official_percent(len(ids), len(records)), (task, name)
        for t in [] if multi else vcmr.DESC_TYPES:
            of_type = {r["desc_id"] for r in records if r["type"] == t}
            assert _same(
                res[f"{task}_by_type"][f"{t}-{name}"],
                _official_percent(len(ids & of_type), len(of_type)),
            )
    assert 0 < res["VCMR"]["0.5-r100"] < 100 and 0 < res["SVMR"]["0.7-r10"] < 100
    # the array path gives the same numbers
    arrays = vcmr.parse_submission(sub, gt, truncate=True)
    assert _same_results(vcmr.evaluate_predictions(arrays, gt), res)


# --------------------------------------------------------------------------- official goldens


def _load(path):
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    return arrays, json.loads(path.with_suffix(".json").read_text())


def _golden_lists(arrays, prefix):
    return vcmr.RankedPredictions(
        arrays[f"{prefix}/video_idx"],
        arrays[f"{prefix}/st_ed"],
        arrays[f"{prefix}/score"],
        arrays[f"{prefix}/length"],
    )


def _check_results(results, official, metrics=None):
    """Every official number (json ``results``; npz ``metrics/...`` as float32) reproduced."""
    assert official, "no official numbers"
    for group, values in official.items():
        for name, value in values.items():
            assert _same(results[group][name], value), (group, name, results[group][name], value)
    for key, value in (metrics or {}).items():
        group, name = key.split("/")
        assert np.float32(results[group][name]) == value, (key, results[group][name], value)


def _real_tvr(path: Path, arrays):
    """The GT records of the golden's split and video2idx, when shared/data/tvr holds them."""
    match = re.fullmatch(r"eval_tvr_(\w+?)_sample\d+", path.stem)
    data_dir = Path(os.environ.get("VMR_DATA_DIR", path.parent.parent / "data")) / "tvr"
    jsonl = data_dir / f"tvr_{match.group(1)}_release.jsonl" if match else None
    if jsonl is None or not jsonl.exists():
        return None
    gt = vcmr.load_tvr_ground_truth(jsonl, data_dir / "tvr_video2dur_idx.json", match.group(1))
    q = len(arrays["gt/desc_id"])
    records = [json.loads(line) for line in jsonl.read_text().splitlines()[:q]]
    return records, gt


def test_tvr_evaluator_golden_parity(tvr_eval_golden):
    arrays, meta = _load(tvr_eval_golden)
    tasks = [t for t in vcmr.TASKS if f"submission/{t}/length" in arrays]
    lists = {t: _golden_lists(arrays, f"submission/{t}") for t in tasks}
    gt = vcmr.TvrGroundTruth(
        arrays["gt/desc_id"],
        arrays["gt/video_idx"],
        arrays["gt/ts"],
        desc_type=arrays.get("gt/type"),
    )
    metrics = {k[len("metrics/") :]: v for k, v in arrays.items() if k.startswith("metrics/")}
    results = vcmr.evaluate_predictions(lists, gt, truncate=True)
    _check_results(results, meta["results"], metrics)
    real = _real_tvr(tvr_eval_golden, arrays)
    if real is None:  # names made up for the video indices
        used = np.unique(
            np.concatenate([gt.video_idx] + [p.video_idx.ravel() for p in lists.values()])
        )
        video2idx = {f"video{i}": int(i) for i in used if i >= 0}
    else:
        records, full_gt = real
        video2idx = full_gt.video2idx
    submission = vcmr.submission_from_predictions(lists, gt, video2idx)
    assert _same_results(vcmr.evaluate_submission(submission, gt, truncate=True), results)
    if any((p.length > 100).any() for p in lists.values()):  # the official cut, refused by default
        with pytest.raises(vcmr.SubmissionError, match="more than 100"):
            vcmr.evaluate_submission(submission, gt)
    if real is not None:
        q = len(gt)
        # the golden's GT rows are the split's first lines
        assert full_gt.desc_id[:q] == gt.desc_id
        np.testing.assert_array_equal(full_gt.video_idx[:q], gt.video_idx)
        np.testing.assert_array_equal(
            full_gt.spans[:q].astype(np.float32), arrays["gt/ts"][:, None]
        )
        np.testing.assert_array_equal(full_gt.desc_type[:q], arrays["gt/type"])
        np.testing.assert_array_equal(
            np.float32([r["duration"] for r in records]), arrays["gt/duration"]
        )
        # the real GT (float64 times, names mapped through the submission's video2idx)
        real_gt = vcmr.ground_truth_from_records(records, video2idx)
        assert _same_results(vcmr.evaluate_submission(submission, real_gt, truncate=True), results)


def test_xml_post_processing_golden(xml_golden):
    arrays, meta = _load(xml_golden)
    tags = sorted({k.split("/")[1] for k in arrays if k.startswith("submission/")})
    assert tags, f"{xml_golden.name} holds no submission/* lists (golden README: xml_tvr)"
    types = {q["desc_id"]: q["type"] for q in meta["corpus"]["queries"]}
    desc_id = arrays["infer/desc_id"].tolist()
    gt = vcmr.TvrGroundTruth(
        desc_id,
        arrays["infer/gt_video_global_idx"],
        arrays["infer/gt_ts"],
        desc_type=[vcmr.DESC_TYPES.index(types[d]) for d in desc_id],
    )
    before_nms = int(meta["config_values"]["opt"]["max_before_nms"])
    for tag in tags:
        tasks = [t for t in vcmr.TASKS if f"submission/{tag}/{t}/length" in arrays]
        lists = {t: _golden_lists(arrays, f"submission/{tag}/{t}") for t in tasks}
        if tag.startswith("nms"):  # re-run the official NMS on the lists before it
            for task, nms in (("VCMR", vcmr.vcmr_nms), ("SVMR", vcmr.svmr_nms)):
                if task in lists:
                    raw = _golden_lists(arrays, f"submission/no_nms/{task}")
                    out = nms(raw, float(tag[3:]), max_before_nms=before_nms)
                    for field in ("length", "video_idx", "st_ed", "score"):
                        np.testing.assert_array_equal(
                            getattr(out, field), getattr(lists[task], field), err_msg=field
                        )
        prefix = f"metrics/{tag}/"
        metrics = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        official = meta["results"].get("metrics_" + tag.replace(".", "_"), {})
        results = vcmr.evaluate_predictions(lists, gt)
        _check_results(results, official, metrics)


if __name__ == "__main__":
    data = (
        Path(
            os.environ.get("VMR_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data")
        )
        / "tvr"
    )
    full_gt = vcmr.load_tvr_ground_truth(
        data / "tvr_val_release.jsonl", data / "tvr_video2dur_idx.json", "val"
    )
    full_sub = synthetic_submission(full_gt, np.random.default_rng(0))
    start = time.perf_counter()
    full = vcmr.evaluate_submission(full_sub, full_gt)
    took = time.perf_counter() - start
    print(f"{len(full_gt)} queries x 100 rows x {len(vcmr.TASKS)} tasks: {took:.2f} s")
    print({t: full[t] for t in vcmr.TASKS})
