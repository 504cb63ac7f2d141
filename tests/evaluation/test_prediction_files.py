"""``vmr-jax score`` reads what ``vmr-jax predict`` and ``vmr-jax eval`` write, for every
protocol: files made by the library's own writers from hand-built moments, scored, and checked
against metrics computed by hand; and malformed files give one-line errors naming the file,
the record or query, and the field."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from vmr_jax import checkpoint_eval, predict
from vmr_jax import main as cli
from vmr_jax.evaluation import didemo, evaluators, scoring, svmr, vcmr
from vmr_jax.evaluation import prediction_files as files
from vmr_jax.predictor import QuerySet


# --------------------------------------------------------------------------- writers
def _arrays(moments: list[list[list[float]]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """``[Q, width, 2]`` times and ``[Q, width]`` scores, NaN padded, as the decoders give."""
    times = np.full((len(moments), width, 2), np.nan, np.float32)
    scores = np.full((len(moments), width), np.nan, np.float32)
    for q, rows in enumerate(moments):
        for k, (st, ed, sc) in enumerate(rows):
            times[q, k], scores[q, k] = (st, ed), sc
    return times, scores


def write_predict_file(path, query_ids, video_ids, durations, moments, top_k=5) -> str:
    """A ``vmr-jax predict`` file through :func:`vmr_jax.predict.write_predictions`."""
    videos = list(dict.fromkeys(video_ids))
    queries = QuerySet(
        query_ids=list(query_ids),
        video_index=np.array([videos.index(v) for v in video_ids]),
        durations=np.asarray(durations, np.float32),
        video_ids=videos,
        videos=None,
        query_arrays=None,
        source={"split": "test"},
    )
    header = {
        "format": predict.FORMAT,
        "model": "vlanet",
        "method": "forward",
        "source": queries.source,
        "step": 7,
        "checkpoint": "/nowhere/7",
        "top_k": top_k,
        "nms_thresh": 0.5,
        "time_unit": "seconds",
        "num_queries": len(queries),
    }
    predict.write_predictions(str(path), header, queries, *_arrays(moments, top_k))
    return str(path)


def write_eval_lines(path, query_ids, video_ids, durations, gt_spans, moments) -> str:
    """``vmr-jax eval``'s ``*_predictions.jsonl`` through its line writer."""
    times, scores = _arrays(moments, 5)
    predictions = {"times": times, "scores": scores, "query_index": np.arange(len(query_ids))}
    with open(path, "w", encoding="utf-8") as f:
        for q, qid in enumerate(query_ids):
            record = types.SimpleNamespace(
                query_id=qid, video_id=video_ids[q], duration_s=durations[q], spans_s=gt_spans[q]
            )
            line = checkpoint_eval._prediction_line(record, predictions, q)
            f.write(json.dumps(line) + "\n")
    return str(path)


def write_json(path, payload) -> str:
    path.write_text(json.dumps(payload))
    return str(path)


# --------------------------------------------------------------------------- 2dtan / mmn
GT_2DTAN = {"a": [0.0, 10.0], "b": [10.0, 20.0], "c": [5.0, 25.0]}
# Best first; written in the order c, a, b (not the ground truth's).
MOMENTS_2DTAN = {
    "c": [[5.0, 25.0, 0.6]],  # IoU 1
    "a": [[0.0, 5.0, 0.9], [0.0, 10.0, 0.8]],  # IoU 0.5, then 1
    "b": [[12.0, 18.0, 0.7]],  # IoU 6 / 10
}


@pytest.fixture
def queries_2dtan(tmp_path):
    rows = [{"query_id": q, "duration_s": 30.0, "spans_s": [s]} for q, s in GT_2DTAN.items()]
    path = tmp_path / "test.queries.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("writer", ["predict", "eval"])
def test_2dtan_and_mmn_read_predict_and_eval_files(tmp_path, queries_2dtan, writer):
    ids = list(MOMENTS_2DTAN)
    videos, durations = [f"v_{q}" for q in ids], [30.0] * 3
    moments = [MOMENTS_2DTAN[q] for q in ids]
    if writer == "predict":
        path = write_predict_file(tmp_path / "p.json", ids, videos, durations, moments)
        expected_format = "vmr-jax-predictions/1"
    else:
        gt = [[GT_2DTAN[q]] for q in ids]
        path = write_eval_lines(tmp_path / "p.jsonl", ids, videos, durations, gt, moments)
        expected_format = "moment-lines"
    strict = scoring.score("2dtan", queries_2dtan, path, ious=(0.5, 0.7))
    inclusive = scoring.score("mmn", queries_2dtan, path, ious=(0.5, 0.7))
    assert strict["predictions_format"] == expected_format
    # Top-1 IoUs a 0.5, b 0.6, c 1; a's second moment has IoU 1.
    m = strict["metrics"]
    assert m["R@1,IoU=0.5"] == pytest.approx(2 / 3)  # b, c (0.5 is not > 0.5)
    assert m["R@1,IoU=0.7"] == pytest.approx(1 / 3)  # c
    assert m["R@5,IoU=0.5"] == 1.0
    assert m["R@5,IoU=0.7"] == pytest.approx(2 / 3)  # a, c
    assert m["mIoU"] == pytest.approx((0.5 + 0.6 + 1.0) / 3)
    assert inclusive["metrics"]["R@1,IoU=0.5"] == 1.0  # a's 0.5 >= 0.5
    assert strict["num_queries"] == inclusive["num_queries"] == 3


def test_predict_file_shorter_than_the_recalls_is_refused(tmp_path, queries_2dtan):
    ids = list(MOMENTS_2DTAN)
    firsts = [MOMENTS_2DTAN[q][:1] for q in ids]
    path = write_predict_file(tmp_path / "p.json", ids, ids, [30.0] * 3, firsts, top_k=1)
    with pytest.raises(scoring.PredictionsError, match=r"field 'top_k'.*R@5 needs 5"):
        scoring.score("2dtan", queries_2dtan, path)
    result = scoring.score("2dtan", queries_2dtan, path, recalls=(1,), ious=(0.5,))
    assert result["metrics"]["R@1,IoU=0.5"] == pytest.approx(2 / 3)  # b, c


# --------------------------------------------------------------------------- tvr
@pytest.fixture
def tvr_ground_truth(tmp_path):
    rows = [
        {"desc_id": 1, "desc": "x", "vid_name": "v1", "duration": 30.0, "ts": [3.0, 9.0]},
        {"desc_id": 2, "desc": "y", "vid_name": "v2", "duration": 60.0, "ts": [0.0, 15.0]},
    ]
    for row, kind in zip(rows, ("v", "t")):
        row["type"] = kind
    path = tmp_path / "tvr_val_release.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tvr_video2dur_idx.json").write_text(
        json.dumps({"val": {"v1": [30.0, 7], "v2": [60.0, 8]}})
    )
    return str(path)


def test_tvr_reads_predict_file_as_svmr(tmp_path, tvr_ground_truth):
    # Written in the order 2, 1.  Query 1: [3, 6] vs [3, 9] IoU 0.5, then [3, 9] IoU 1;
    # query 2: [0, 7.5] vs [0, 15] IoU 0.5.
    moments = [[[0.0, 7.5, 0.8]], [[3.0, 6.0, 0.9], [3.0, 9.0, 0.5]]]
    path = write_predict_file(tmp_path / "p.json", ["2", "1"], ["v2", "v1"], [60, 30], moments)
    result = scoring.score("tvr", tvr_ground_truth, path)
    assert result["predictions_format"] == "vmr-jax-predictions/1"
    svmr = result["metrics"]["SVMR"]
    # Hits at IoU >= m.  A 5-moment list reports R@1 and R@5 only.
    assert svmr == {"0.5-r1": 100.0, "0.7-r1": 0.0, "0.5-r5": 100.0, "0.7-r5": 50.0}
    assert "VCMR" not in result["metrics"] and "VR" not in result["metrics"]
    by_type = result["metrics"]["SVMR_by_type"]  # query 1 is 'v', query 2 is 't'
    assert (by_type["v-0.7-r5"], by_type["t-0.7-r5"]) == (100.0, 0.0)

    lines = write_eval_lines(
        tmp_path / "p.jsonl", ["2", "1"], ["v2", "v1"], [60, 30], [[[0, 15]], [[3, 9]]], moments
    )
    # No header top_k: the longest list (2 moments) bounds the R@K reported.
    from_lines = scoring.score("tvr", tvr_ground_truth, lines)
    assert from_lines["metrics"]["SVMR"] == {"0.5-r1": 100.0, "0.7-r1": 0.0}
    assert from_lines["predictions_format"] == "moment-lines"
    wrong = write_predict_file(tmp_path / "w.json", ["1", "2"], ["v2", "v2"], [60, 60], moments)
    with pytest.raises(
        scoring.PredictionsError,
        match=r"predictions\[0\] \(query '1'\): field 'video_id' is 'v2', but the query is "
        r"about 'v1'",
    ):
        scoring.score("tvr", tvr_ground_truth, wrong)


def test_tvr_reads_the_eval_submission(tmp_path, tvr_ground_truth):
    gt = vcmr.load_tvr_ground_truth(tvr_ground_truth, tmp_path / "tvr_video2dur_idx.json", "val")

    def ranked(rows):  # rows per query: [video_idx, st, ed, score]
        width = max(map(len, rows))
        table = np.zeros((len(rows), width, 4))
        for q, r in enumerate(rows):
            table[q, : len(r)] = r
        return vcmr.RankedPredictions(
            table[..., 0].astype(int), table[..., 1:3], table[..., 3], [len(r) for r in rows]
        )

    lists = {
        # Query 1 right; query 2 has its GT times in the wrong video.
        "VCMR": ranked([[[7, 3, 9, 1]], [[7, 0, 15, 1]]]),
        "SVMR": ranked([[[7, 3, 6, 0.9], [7, 3, 9, 0.5]], [[8, 0, 7.5, 0.8]]]),
        "VR": ranked([[[8, 0, 0, 1], [7, 0, 0, 0.5]], [[8, 0, 0, 1]]]),
    }
    path = tmp_path / "val_step7_submission.json"
    vcmr.write_submission(path, vcmr.submission_from_predictions(lists, gt))
    result = scoring.score("tvr", tvr_ground_truth, str(path))
    assert result["predictions_format"] == "tvr-submission" and result["conversion"] is None
    m = result["metrics"]
    assert (m["VCMR"]["0.5-r1"], m["VCMR"]["0.7-r100"]) == (50.0, 50.0)
    assert (m["SVMR"]["0.5-r1"], m["SVMR"]["0.7-r1"], m["SVMR"]["0.7-r5"]) == (100.0, 0.0, 50.0)
    assert (m["VR"]["r1"], m["VR"]["r5"]) == (50.0, 100.0)


# --------------------------------------------------------------------------- didemo
DIDEMO_GT = {  # annotation_id: annotator (start_chunk, end_chunk)
    11: [[0, 0], [0, 0], [0, 0], [1, 1]],
    12: [[2, 3], [2, 3], [2, 3], [2, 3]],
    13: [[4, 5], [4, 5], [4, 5], [5, 5]],
    14: [[1, 2], [1, 2], [1, 2]],
}
# Moments in seconds, best first.  Every one on the 5-s chunk grid: ranked in list order,
# the unlisted moments after them in the official order (vmr-jax eval's rule).
GRID = {
    11: [[0, 5, 0.9], [5, 10, 0.8]],  # (0,0) rank 1 x3 -> R@1; top-1 IoUs 1,1,1,0 -> 1
    12: [[0, 5, 0.9], [10, 20, 0.5]],  # (2,3) rank 2 -> R@5; (0,0) vs (2,3) IoU 0
    13: [[20, 30, 0.9]],  # (4,5) rank 1 x3 -> R@1; IoUs 1,1,1,1/2 -> 1
    # (1,1), then (0,0), (2,2), ..., (5,5), (0,1), ..., (1,2): (1,2) is 12th -> a miss;
    # chunk IoU of (1,1) with (1,2): overlap 1 / hull 2.
    14: [[5, 10, 0.9]],
}
# Off the grid: snapped to the moment of largest IoU, the others by IoU with the top-1.
SNAPPED = {
    11: GRID[11],
    12: [[0.5, 5, 0.9], [10, 20, 0.5]],  # [0.5, 5] -> (0,0) (IoU 0.9)
    13: [[19.5, 30, 0.9]],  # -> (4,5) (IoU 10 / 10.5; (3,5) 10.5 / 15)
    # [5.5, 10] -> (1,1); then (0,1) and (1,2) at IoU 4.5 / 10: (1,2) is 3rd -> R@5.
    14: [[5.5, 10, 0.9]],
}
GRID_METRICS = {"R@1": 2 / 4, "R@5": 3 / 4, "mIoU": (1 + 0 + 1 + 0.5) / 4}
SNAPPED_METRICS = {"R@1": 2 / 4, "R@5": 4 / 4, "mIoU": (1 + 0 + 1 + 0.5) / 4}


@pytest.fixture
def didemo_ground_truth(tmp_path):
    records = [
        {"annotation_id": a, "description": "d", "video": f"{a}.mp4", "times": t}
        for a, t in DIDEMO_GT.items()
    ]
    return write_json(tmp_path / "test_data.json", records)


def _didemo_args(moments: dict) -> tuple:
    ids = list(moments)[::-1]  # not the ground truth's order
    return (
        [str(a) for a in ids],
        [f"{a}.mp4" for a in ids],
        [30.0] * len(ids),
        [moments[a] for a in ids],
    )


@pytest.mark.parametrize("moments, expected", [(GRID, GRID_METRICS), (SNAPPED, SNAPPED_METRICS)])
def test_didemo_reads_predict_files(tmp_path, didemo_ground_truth, moments, expected):
    path = write_predict_file(tmp_path / "p.json", *_didemo_args(moments))
    result = scoring.score("didemo", didemo_ground_truth, path)
    metrics = {k: result["metrics"][k] for k in ("R@1", "R@5", "mIoU")}
    assert metrics == pytest.approx(expected)
    assert result["predictions_format"] == "vmr-jax-predictions/1"
    assert ("in list order" if moments is GRID else "snapped") in result["conversion"]


def test_didemo_reads_eval_rankings_and_lines(tmp_path, didemo_ground_truth):
    def ranking(*first):  # those moments first, then the rest in order
        return list(first) + [i for i in range(21) if i not in first]

    # (1,1) is moment 1, (2,3) 15, (4,5) 20, (1,2) 11 (didemo.MOMENTS order).
    rankings = [ranking(0, 1), ranking(0, 15), ranking(20), ranking(1, 11)]
    path = tmp_path / "test_step7_didemo.json"
    didemo.write_predictions_json(path, list(DIDEMO_GT), np.array(rankings))
    result = scoring.score("didemo", didemo_ground_truth, str(path))
    assert result["predictions_format"] == "didemo-rankings"
    # As GRID but (1,2) ranked 2nd for query 14: R@5 for all four.
    assert result["metrics"]["R@5"] == 1.0
    assert (result["metrics"]["R@1"], result["metrics"]["mIoU"]) == pytest.approx((0.5, 0.625))

    ids, videos, durations, moments = _didemo_args(GRID)
    spans = [[[5.0 * s, 5.0 * (e + 1)] for s, e in DIDEMO_GT[int(a)]] for a in ids]
    lines = write_eval_lines(tmp_path / "p.jsonl", ids, videos, durations, spans, moments)
    result = scoring.score("didemo", didemo_ground_truth, lines)
    assert result["predictions_format"] == "moment-lines"
    metrics = {k: result["metrics"][k] for k in ("R@1", "R@5", "mIoU")}
    assert metrics == pytest.approx(GRID_METRICS)


def test_full_predict_lists_of_a_chunk_grid_model_score_as_eval(tmp_path, didemo_ground_truth):
    """``predict --top_k 21 --nms_thresh 1`` of a proposal family on the chunk grid gives the
    rankings and metrics of ``vmr-jax eval`` (its didemo evaluator on the same candidates)."""
    scores = np.stack([np.random.default_rng(q).permutation(21) for q in range(4)]) / 21.0
    scores[3, didemo.MOMENTS[:, 1] >= 4] = -np.inf  # a 20-s video: no moment past chunk 3
    moments = np.broadcast_to(didemo.moment_seconds(), (4, 21, 2)).astype(np.float32)
    predicted = {"moments": moments, "moment_scores": scores.astype(np.float32)}
    gt = didemo.load_didemo_ground_truth(didemo_ground_truth)
    eval_metrics, eval_predictions = evaluators.score_didemo_predictions(predicted, gt)

    times, kept = svmr.decode_moment_lists(moments, scores, 1.0, 21, return_scores=True)
    lists = [
        [[*t, s] for t, s in zip(times[q].tolist(), kept[q].tolist()) if not np.isnan(s)]
        for q in range(4)
    ]
    assert [len(x) for x in lists] == [21, 21, 21, 10]
    ids = [str(a) for a in DIDEMO_GT]
    path = write_predict_file(tmp_path / "p.json", ids, ids, [30, 30, 30, 20], lists, top_k=21)
    found = files.read_predict_file(path)
    rankings, _ = files.didemo_rankings(found, files.align(found, gt.annotation_ids))
    np.testing.assert_array_equal(rankings, eval_predictions["rankings"])
    result = scoring.score("didemo", didemo_ground_truth, path)
    assert {k: result["metrics"][k] for k in ("R@1", "R@5", "mIoU")} == {
        k: eval_metrics[k] for k in ("R@1", "R@5", "mIoU")
    }


def test_score_command_reads_a_predict_file(tmp_path, didemo_ground_truth, capsys):
    path = write_predict_file(tmp_path / "p.json", *_didemo_args(SNAPPED))
    out = tmp_path / "results.json"
    argv = ["score", "--protocol", "didemo", "--ground-truth", didemo_ground_truth]
    assert cli.main([*argv, "--predictions", path, "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["metrics"]["R@5"] == 1.0 and result["predictions_format"] == predict.FORMAT
    capsys.readouterr()
    array = write_json(tmp_path / "array.json", [{"query_id": "11", "moments": [[0, 5]]}])
    assert cli.main([*argv, "--predictions", array]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {array}: the top level is a JSON array")
    assert "list indices" not in last and "'vmr-jax-predictions/1'" in last


# --------------------------------------------------------------------------- bad files
@pytest.mark.parametrize("protocol", scoring.PROTOCOLS)
def test_json_array_names_the_file_and_the_accepted_formats(
    tmp_path, protocol, queries_2dtan, tvr_ground_truth, didemo_ground_truth
):
    gt = {"tvr": tvr_ground_truth, "didemo": didemo_ground_truth}.get(protocol, queries_2dtan)
    path = write_json(tmp_path / "array.json", [{"query_id": "a", "moments": [[0, 5]]}])
    accepted = "; ".join(f"'{f}': {files.FORMATS[f]}" for f in scoring.ACCEPTED[protocol])
    message = f"{path}: the top level is a JSON array; expected a JSON object; accepted: "
    with pytest.raises(scoring.PredictionsError) as err:
        scoring.score(protocol, gt, path)
    assert str(err.value) == message + accepted
    assert "\n" not in str(err.value)


def _predict_payload(tmp_path) -> dict:
    ids = list(MOMENTS_2DTAN)
    moments = [MOMENTS_2DTAN[q] for q in ids]
    path = write_predict_file(tmp_path / "good.json", ids, ids, [30.0] * 3, moments)
    return json.loads(open(path).read())


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda p: p.update(predictions={}), r"field 'predictions' is a dict; expected a list"),
        (lambda p: p.pop("predictions"), r"field 'predictions' is missing"),
        (lambda p: p["predictions"].__setitem__(1, [1]), r"predictions\[1\]: expected an object"),
        (lambda p: p["predictions"][0].pop("query_id"), r"predictions\[0\]: field 'query_id' "),
        (
            lambda p: p["predictions"][1].pop("moments"),
            r"predictions\[1\] \(query 'a'\): field 'moments' missing",
        ),
        (
            lambda p: p["predictions"][1]["moments"].append([9, 1, 0.2]),
            r"predictions\[1\] \(query 'a'\): field 'moments\[2\]' = \[9, 1, 0.2\]",
        ),
        (
            lambda p: p["predictions"][2]["moments"][0].__setitem__(2, None),
            r"predictions\[2\] \(query 'b'\): field 'moments\[0\]'",
        ),
        (lambda p: p.update(num_queries=4), r"'num_queries' is 4 but 'predictions' holds 3"),
        (lambda p: p.update(top_k=0), r"field 'top_k' must be a positive integer"),
        (lambda p: p["predictions"].pop(), r"1 ground-truth queries have no prediction.*'b'"),
        (
            lambda p: p["predictions"].append(dict(p["predictions"][0])),
            r"predictions\[3\]: query 'c' appears twice \(first: predictions\[0\]\)",
        ),
        (
            lambda p: p["predictions"][0].update(query_id="z"),
            r"predictions\[0\]: query 'z' is not in the ground truth",
        ),
        (
            lambda p: p.update(format="vmr-jax-predictions/9"),
            r"field 'format' is 'vmr-jax-predictions/9', not a format vmr-jax score reads; "
            r"accepted: 'vmr-jax-predictions/1'",
        ),
    ],
)
def test_bad_predict_file_names_record_and_field(tmp_path, queries_2dtan, edit, match):
    payload = _predict_payload(tmp_path)
    if "num_queries" not in match:
        payload.pop("num_queries")  # so that a removed or added entry reaches its own check
    edit(payload)
    path = write_json(tmp_path / "bad.json", payload)
    with pytest.raises(scoring.PredictionsError, match=match) as err:
        scoring.score("2dtan", queries_2dtan, path)
    assert str(err.value).startswith(path) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text, match",
    [
        ("", r"empty file; accepted: "),
        (b'{"query_id": "\xff"}', r"not UTF-8 text \(invalid start byte\); accepted: "),
        (b'\n\n{"query_id": "a", "moments": []}\n{"x": 1}\n', r"line 4: field 'query_id' missing"),
        ('{"query_id": "a", "moments": []}\n[1, 2]\n', r"line 2: expected an object"),
        ('{"query_id": "a", "moments": []}\n{"query_id": ', r"line 2: not JSON"),
        ('{"results": [1]}', r"the top-level object has keys \['results'\], none of a predic"),
        ("predictions", r"not a JSON object or JSON lines; accepted: 'vmr-jax-predictions/1'"),
        (
            '{"video2idx": {"v": 1}, "SVMR": []}',
            r"is the TVR submission .* which protocol '2dtan' does not read; accepted: 'vmr",
        ),
        (
            '{"protocol": "didemo", "rankings": {}}',
            r"is DiDeMo rankings .* which protocol '2dtan' does not read",
        ),
    ],
)
def test_unreadable_files_say_what_is_accepted(tmp_path, queries_2dtan, text, match):
    path = tmp_path / "bad.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(scoring.PredictionsError, match=match) as err:
        scoring.score("2dtan", queries_2dtan, str(path))
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_didemo_moment_outside_the_video_is_named(tmp_path, didemo_ground_truth):
    bad = {**GRID, 13: [[30.0, 35.0, 0.9]]}
    path = write_predict_file(tmp_path / "p.json", *_didemo_args(bad))
    with pytest.raises(
        scoring.PredictionsError,
        match=r"predictions\[1\] \(query '13'\): field 'moments\[0\]' = \[30.0, 35.0\]: DiDeMo",
    ):
        scoring.score("didemo", didemo_ground_truth, path)


def test_detection_reads_only_the_header_of_a_tvr_submission(tmp_path):
    # The first key decides; the rest (here not even JSON) is left to the TVR reader.
    path = tmp_path / "sub.json"
    path.write_text('{"video2idx": {"v": 1}, "SVMR": [' + "x" * (2 * files.HEAD_CHARS))
    assert files.detect_format(path) == files.TVR_SUBMISSION
    assert predict.FORMAT == files.PREDICT_FORMAT
