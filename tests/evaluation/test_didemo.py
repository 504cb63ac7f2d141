"""evaluation.didemo: hand-computed DiDeMo metrics, a plain-Python reference of the official
loop, and parity with the LocalizingMoments evaluator (every ``eval_didemo_*.npz`` golden).

The golden parity test reads everything it needs from the npz/json pair (``rankings``,
``gt_times``, ``n_times``, ``debug/*``, ``metrics/*``, the json ``results`` and ``data``), so a
new golden file needs no code change.  When shared/data/didemo (or VMR_DATA_DIR/didemo) holds
the split named in the json, its first queries must give the golden's ``gt_times``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from vmr_jax.evaluation import didemo

# The candidate list written out independently of the module: singles, then all pairs s < e.
OFFICIAL_MOMENTS = [(c, c) for c in range(6)] + list(itertools.combinations(range(6), 2))
IDX = {m: i for i, m in enumerate(OFFICIAL_MOMENTS)}
METRIC_KEYS = {"rank1": "R@1", "rank5": "R@5", "miou": "mIoU"}  # official name -> ours


def _reference_scores(segments: list, data: list) -> tuple[list, list]:
    """The official per-query loop re-done in plain Python: ``segments[q]`` is a list of moment
    tuples best first, ``data[q]`` a list of annotator ``[s, e]``."""
    avg_rank, avg_iou = [], []
    for ranked, times in zip(segments, data):
        top_s, top_e = ranked[0]
        ious, ranks = [], []
        for s, e in times:
            overlap = max(0, min(top_e, e) + 1 - max(top_s, s))
            hull = max(top_e, e) + 1 - min(top_s, s)
            ious.append(overlap / hull)
            ranks.append(ranked.index((s, e)) + 1)
        avg_iou.append(np.mean(np.sort(ious)[-3:]))
        avg_rank.append(np.mean(np.sort(ranks)[:3]))
    return avg_rank, avg_iou


def _ranking_with(front: list[tuple[int, int]]) -> list[int]:
    """A full ranking starting with the given moments, then the rest in moment order."""
    head = [IDX[m] for m in front]
    return head + [i for i in range(21) if i not in head]


def _pad(times_per_query: list[list[tuple[int, int]]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(t) for t in times_per_query)
    out = np.full((len(times_per_query), width, 2), -1, np.int32)
    for q, times in enumerate(times_per_query):
        out[q, : len(times)] = times
    return out, np.array([len(t) for t in times_per_query])


# --------------------------------------------------------------------------- official goldens


def test_didemo_golden_parity(didemo_eval_golden):
    path = didemo_eval_golden
    golden = np.load(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    np.testing.assert_array_equal(golden["moments"], OFFICIAL_MOMENTS)
    np.testing.assert_array_equal(didemo.MOMENTS, golden["moments"])
    rankings, gt_times, n_times = golden["rankings"], golden["gt_times"], golden["n_times"]

    avg_rank, avg_iou = didemo.query_scores(rankings, gt_times, n_times)
    # the goldens store float32 copies of the official float64 values
    np.testing.assert_array_equal(avg_rank.astype(np.float32), golden["debug/avg_rank"])
    np.testing.assert_array_equal(avg_iou.astype(np.float32), golden["debug/avg_iou"])

    results = didemo.evaluate(rankings, gt_times, n_times)
    assert results["num_queries"] == len(rankings) == meta["n_queries"]
    assert results["protocol"] == "didemo"
    metric_keys = [k for k in golden.files if k.startswith("metrics/")]
    assert metric_keys
    for key in metric_keys:
        name = key.split("/", 1)[1]
        assert np.float32(results[METRIC_KEYS[name]]) == golden[key], key
        assert results[METRIC_KEYS[name]] == meta["results"][name], name  # float64, exact

    # the same numbers through the official input format (list of tuples per query)
    segments = [[OFFICIAL_MOMENTS[i] for i in row] for row in rankings.tolist()]
    assert didemo.official_segments(rankings) == segments
    data = [gt_times[q, : n_times[q]].tolist() for q in range(len(n_times))]
    ref_rank, ref_iou = _reference_scores(segments, data)
    np.testing.assert_array_equal(avg_rank, ref_rank)
    np.testing.assert_array_equal(avg_iou, ref_iou)


def test_didemo_golden_sample_is_the_real_annotations(didemo_eval_golden):
    """The golden's ``gt_times`` are the first queries of the split its json names."""
    path = didemo_eval_golden
    golden = np.load(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    gt_times, n_times = golden["gt_times"], golden["n_times"]
    data_dir = Path(os.environ.get("VMR_DATA_DIR", path.parent.parent / "data")) / "didemo"
    split = re.search(r"(\w+_data\.json)", meta.get("data", ""))
    if not (split and (data_dir / split.group(1)).is_file()):
        pytest.skip(f"no DiDeMo annotations in {data_dir} for the golden's sample")
    gt = didemo.load_didemo_ground_truth(data_dir / split.group(1))
    num, width = gt_times.shape[:2]
    assert meta["subset"].startswith(f"first {num} queries")
    np.testing.assert_array_equal(gt.n_times[:num], n_times)
    np.testing.assert_array_equal(gt.times[:num, :width], gt_times)
    assert (gt.times[:num, width:] == -1).all()


def test_didemo_golden_through_predictions_file(didemo_eval_golden, tmp_path):
    golden = np.load(didemo_eval_golden)
    meta = json.loads(didemo_eval_golden.with_suffix(".json").read_text())
    ids = np.arange(1000, 1000 + len(golden["rankings"]))
    out = tmp_path / "rankings.json"
    didemo.write_predictions_json(out, ids, golden["rankings"])
    back = didemo.read_predictions_json(out, ids[::-1])  # any id order: rows follow it
    np.testing.assert_array_equal(back, golden["rankings"][::-1])
    results = didemo.evaluate(back[::-1], golden["gt_times"], golden["n_times"])
    assert [results[k] for k in ("R@1", "R@5", "mIoU")] == [
        meta["results"][k] for k in ("rank1", "rank5", "miou")
    ]


# --------------------------------------------------------------------------- hand-computed


def test_moment_order():
    assert didemo.MOMENTS.shape == (21, 2)
    assert [tuple(m) for m in didemo.MOMENTS.tolist()] == OFFICIAL_MOMENTS
    assert tuple(didemo.MOMENTS[6]) == (0, 1) and tuple(didemo.MOMENTS[20]) == (4, 5)
    assert didemo.MOMENT_INDEX[1, 2] == 11 and didemo.MOMENT_INDEX[2, 1] == -1


@pytest.mark.parametrize(
    "top1, gt, iou",
    [
        ((0, 0), (0, 1), 1 / 2),  # overlap 1 chunk, hull 2
        ((1, 2), (2, 4), 1 / 4),  # overlap chunk 2, hull 1..4
        ((0, 5), (3, 3), 1 / 6),
        ((0, 1), (3, 4), 0.0),
        ((2, 4), (2, 4), 1.0),
    ],
)
def test_inclusive_chunk_iou(top1, gt, iou):
    _, avg_iou = didemo.query_scores([_ranking_with([top1])], [[gt]], [1])
    assert avg_iou[0] == iou


def test_three_best_ranks():
    a, b, c, d = (3, 3), (0, 1), (4, 5), (2, 2)
    rankings = [
        _ranking_with([a, b, (0, 0), (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), c]),  # c rank 9
        _ranking_with([a, b, c]),
        _ranking_with([a, b]),
        _ranking_with([a, b]),
        _ranking_with([b, a]),
    ]
    times = [
        [a, a, b, c],  # ranks 1, 1, 2, 9 -> 4/3: not R@1, R@5
        [a, a, a, c],  # three annotators on the top-1 -> 1: R@1 (the 4th at rank 3 is ignored)
        [a, b, a, b],  # only two agree with the top-1 -> (1 + 1 + 2) / 3
        [d, d, d, a],  # duplicates count per annotator: rank of (2,2) is 5 -> (1 + 5 + 5) / 3
        [a, a, a, a],  # all four agree on the 2nd moment -> 2: R@5 only
    ]
    gt_times, n_times = _pad(times)
    avg_rank, _ = didemo.query_scores(rankings, gt_times, n_times)
    # (2,2) sits at rank 5 in _ranking_with([a, b]): a, b, (0,0), (1,1), (2,2)
    np.testing.assert_array_equal(avg_rank, [4 / 3, 1.0, 4 / 3, 11 / 3, 2.0])
    res = didemo.evaluate(rankings, gt_times, n_times)
    assert res["R@1"] == 1 / 5 and res["R@5"] == 1.0 and res["num_queries"] == 5


def test_five_and_seven_annotators():
    a = (1, 1)
    ranking = _ranking_with([a, (0, 0), (2, 2), (3, 3), (4, 4), (5, 5), (0, 1)])
    times = [
        [a, a, (0, 1), a, (4, 5)],  # 5 annotators: ranks 1, 1, 7, 1, 21 -> 1
        [(3, 3), (2, 2), (2, 2), (0, 5), (0, 0), (4, 5), (4, 4)],  # ranks 4,3,3,*,2,21,5 -> 8/3
    ]
    gt_times, n_times = _pad(times)
    avg_rank, avg_iou = didemo.query_scores([ranking, ranking], gt_times, n_times)
    np.testing.assert_array_equal(avg_rank, [1.0, 8 / 3])
    # top-1 (1,1): IoUs 1, 1, 1/2, 1, 0 -> three best 1; vs the 7: 0,0,0,1/6,0,0,0 -> 1/18
    np.testing.assert_array_equal(avg_iou, [1.0, (1 / 6) / 3])
    res = didemo.evaluate([ranking, ranking], gt_times)  # n_times from the -1 padding
    assert res["R@1"] == 0.5 and res["R@5"] == 1.0
    assert res["mIoU"] == pytest.approx((1 + 1 / 18) / 2, abs=1e-15)


def test_miou_of_three_best():
    top1 = (1, 2)
    # IoUs with the top-1: (1,2) 1, (2,4) 1/4, (0,0) 0, (1,1) 1/2 -> three best 1, 1/2, 1/4
    gt_times, n_times = _pad([[(1, 2), (2, 4), (0, 0), (1, 1)]])
    _, avg_iou = didemo.query_scores([_ranking_with([top1])], gt_times, n_times)
    assert avg_iou[0] == pytest.approx(7 / 12, abs=1e-15)


def test_fewer_than_three_annotators_average_what_there_is():
    a = (2, 3)
    rankings = [_ranking_with([a]), _ranking_with([(0, 0), (1, 1), (2, 2), a]), _ranking_with([a])]
    gt_times, n_times = _pad([[a, a], [a], [a, (2, 2)]])
    avg_rank, avg_iou = didemo.query_scores(rankings, gt_times, n_times)
    # two agreeing annotators are enough for R@1 (the official mean of np.sort(ranks)[:3])
    np.testing.assert_array_equal(avg_rank, [1.0, 4.0, (1 + 4) / 2])  # (2,2) is 4th
    np.testing.assert_array_equal(avg_iou, [1.0, 0.0, (1 + 1 / 2) / 2])
    # a [Q, T, 2] array narrower than three annotators works the same
    narrow = didemo.query_scores(rankings, gt_times[:, :2], n_times)
    np.testing.assert_array_equal(narrow[0], avg_rank)
    np.testing.assert_array_equal(narrow[1], avg_iou)


def test_valid_mask_and_empty_queries():
    a = (0, 0)
    rankings = [_ranking_with([a]), _ranking_with([(5, 5)])]
    gt_times, n_times = _pad([[a, a, a], [a, a, a]])
    full = didemo.evaluate(rankings, gt_times, n_times)
    assert full["R@1"] == 0.5 and full["mIoU"] == 0.5
    part = didemo.evaluate(rankings, gt_times, n_times, valid=np.array([True, False]))
    assert part["R@1"] == 1.0 and part["num_queries"] == 1
    with pytest.raises(ValueError, match="no valid query"):
        didemo.evaluate(rankings, gt_times, n_times, valid=np.zeros(2, bool))
    with pytest.raises(ValueError, match="query 1: n_times 0"):
        didemo.evaluate(rankings, gt_times, [3, 0])
    with pytest.raises(ValueError, match="query 0: annotator moment 1"):
        didemo.evaluate(rankings, np.array([[[0, 0], [3, 2]], [[0, 0], [0, 0]]]), [2, 2])


def test_random_against_plain_python_reference():
    rng = np.random.default_rng(3)
    num = 300
    rankings = np.stack([rng.permutation(21) for _ in range(num)])
    counts = rng.integers(1, 8, size=num)
    # draw annotator moments from a few per query so duplicates are common
    times = [[OFFICIAL_MOMENTS[i] for i in rng.choice(rng.choice(21, 3), c)] for c in counts]
    gt_times, n_times = _pad(times)
    avg_rank, avg_iou = didemo.query_scores(rankings, gt_times, n_times)
    segments = [[OFFICIAL_MOMENTS[i] for i in row] for row in rankings.tolist()]
    ref_rank, ref_iou = _reference_scores(segments, times)
    np.testing.assert_array_equal(avg_rank, ref_rank)  # bit-exact
    np.testing.assert_array_equal(avg_iou, ref_iou)
    res = didemo.evaluate(rankings, gt_times, n_times)
    assert res["R@1"] == np.sum(np.array(ref_rank) <= 1) / float(num)
    assert res["R@5"] == np.sum(np.array(ref_rank) <= 5) / float(num)
    assert res["mIoU"] == np.mean(ref_iou)


# --------------------------------------------------------------------------- ranking helpers


def test_rankings_from_scores_stable_ties():
    scores = np.zeros((2, 21))
    scores[0, [20, 3]] = [2.0, 1.0]
    scores[1, [7, 9]] = [-1.0, -1.0]
    up = didemo.rankings_from_scores(scores)
    assert up[0].tolist() == [20, 3] + [i for i in range(21) if i not in (20, 3)]
    assert up[1].tolist() == [i for i in range(21) if i not in (7, 9)] + [7, 9]
    down = didemo.rankings_from_scores(scores, higher_is_better=False)
    assert down[1].tolist() == [7, 9] + [i for i in range(21) if i not in (7, 9)]
    scores[1, 4] = np.nan
    with pytest.raises(ValueError, match="query 1: NaN"):
        didemo.rankings_from_scores(scores)
    with pytest.raises(ValueError, match=r"\[Q, 21\]"):
        didemo.rankings_from_scores(np.zeros((2, 20)))


def test_rankings_from_score_map():
    maps = np.zeros((1, 6, 6))
    maps[0, 4, 5], maps[0, 2, 2], maps[0, 0, 3] = 3.0, 2.0, -1.0
    maps[0, 5, 0] = 9.0  # below the diagonal: not a moment, ignored
    ranking = didemo.rankings_from_score_map(maps)[0].tolist()
    assert ranking[:2] == [IDX[(4, 5)], IDX[(2, 2)]] and ranking[-1] == IDX[(0, 3)]
    assert ranking[2:5] == [0, 1, 3]


def test_rankings_from_times():
    pred = np.array(
        [
            [[5.0, 15.0], [0.0, 4.0], [6.0, 14.0], [np.nan, np.nan]],  # 3rd snaps to (1,2) again
            [[4.9, 10.0], [-3.0, 45.0], [np.nan, np.nan], [np.nan, np.nan]],
        ]
    )
    rankings = didemo.rankings_from_times(pred)
    assert sorted(rankings[0].tolist()) == list(range(21))
    # q0: snapped (1,2), (0,0); then IoU with [5,15]: (0,2)=[0,15] and (1,3)=[5,20] 2/3,
    # then 1/2: (1,1), (2,2), (0,3)=[0,20], (1,4)=[5,25], in moment order
    assert rankings[0, :8].tolist() == [IDX[m] for m in [(1, 2), (0, 0), (0, 2), (1, 3)]] + [
        1,
        2,
        IDX[(0, 3)],
        IDX[(1, 4)],
    ]
    # q1: [4.9,10] -> (1,1) (IoU 5/5.1 beats (0,1)'s 5.1/10); [-3,45] clipped to [0,30] -> (0,5)
    assert rankings[1, :3].tolist() == [IDX[(1, 1)], IDX[(0, 5)], IDX[(0, 1)]]
    for bad, where in [
        ([[[3.0, 3.0]]], "query 0, prediction 0"),
        ([[[0.0, 5.0], [40.0, 50.0]]], "query 0, prediction 1"),
        ([[[np.nan, np.nan], [0.0, 5.0]]], "query 0, prediction 0"),
        ([[[0.0, 5.0], [1.0, np.nan]]], "query 0, prediction 1"),
    ]:
        with pytest.raises(ValueError, match=where):
            didemo.rankings_from_times(np.array(bad))


def test_moment_seconds():
    # (s, e) spans [5 s, 5 (e + 1)]: (0,0) = [0, 5], (5,5) = [25, 30], (1,3) = [5, 20].
    np.testing.assert_array_equal(
        didemo.moment_seconds(np.array([IDX[(0, 0)], IDX[(5, 5)], IDX[(1, 3)]])),
        [[0, 5], [25, 30], [5, 20]],
    )
    assert didemo.moment_seconds().shape == (21, 2)


def test_rankings_from_moments():
    rest = [m for m in OFFICIAL_MOMENTS if m not in [(0, 0), (1, 2), (5, 5)]]
    moments = np.array(
        [
            [
                [5.0, 15.0],  # (1,2), 0.3
                [0.0, 5.0],  # (0,0), 0.9
                [25.0, 30.0],  # (5,5), 0.3: tied with candidate 0, comes after it
                [5.00005, 14.99995],  # (1,2) within 1e-4 s, 0.8: its best place
                [7.0, 12.0],  # off the grid, but -inf: not a candidate
                [np.nan, np.nan],  # NaN score: not a candidate
            ],
            [[0.0, 5.0], [5.0, 10.0], [0.0, 30.0], [1.0, 2.0], [0, 0], [0, 0]],
        ]
    )
    inf = np.inf
    scores = np.array([[0.3, 0.9, 0.3, 0.8, -inf, np.nan], [-inf, -inf, inf, -inf, np.nan, -inf]])
    rankings, ranked_scores = didemo.rankings_from_moments(moments, scores, return_scores=True)
    expected0 = [IDX[m] for m in [(0, 0), (1, 2), (5, 5)] + rest]
    assert rankings[0].tolist() == expected0
    np.testing.assert_array_equal(ranked_scores[0], [0.9, 0.8, 0.3] + [np.nan] * 18)
    # No finite score at all (+inf included): the 21 moments in official order, no score.
    assert rankings[1].tolist() == list(range(21))
    assert np.isnan(ranked_scores[1]).all()
    assert didemo.rankings_from_moments(moments, scores).tolist() == rankings.tolist()
    # The result is a valid ranking for the official evaluation.
    didemo.check_rankings(rankings)


@pytest.mark.parametrize(
    "times, message",
    [
        ([5.0, 14.9], r"query row 1, candidate 0: moment \[5.0, 14.9\] s is not on the"),
        ([5.0002, 15.0], r"query row 1, candidate 0"),  # 2e-4 s off
        ([np.nan, 15.0], r"query row 1, candidate 0"),
        ([30.0, 35.0], r"query row 1, candidate 0"),  # a seventh chunk is not a moment
    ],
)
def test_rankings_from_moments_refuses_candidates_off_the_grid(times, message):
    moments = np.array([[[0.0, 5.0]], [times]])
    with pytest.raises(ValueError, match=message):
        didemo.rankings_from_moments(moments, np.array([[1.0], [0.5]]))


def test_rankings_from_moments_shapes():
    with pytest.raises(ValueError, match=r"moments must be \[Q, P, 2\]"):
        didemo.rankings_from_moments(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"scores must be \[Q, P\]"):
        didemo.rankings_from_moments(np.zeros((2, 3, 2)), np.zeros((2, 2)))


# --------------------------------------------------------------------------- predictions file


def test_predictions_file_layout_and_official_input(tmp_path):
    ids = [17, 3]
    rankings = np.array([_ranking_with([(4, 5)]), _ranking_with([(0, 1), (0, 0)])])
    path = tmp_path / "pred.json"
    didemo.write_predictions_json(path, ids, rankings)
    payload = json.loads(path.read_text())
    assert payload["protocol"] == "didemo"
    assert payload["moments"] == [list(m) for m in OFFICIAL_MOMENTS]
    assert payload["rankings"]["17"] == rankings[0].tolist()
    # the documented one-liner gives the official eval_predictions input
    data = [{"annotation_id": 3}, {"annotation_id": 17}]
    segs = [
        [tuple(payload["moments"][i]) for i in payload["rankings"][str(d["annotation_id"])]]
        for d in data
    ]
    assert segs[0][:2] == [(0, 1), (0, 0)] and segs[1][0] == (4, 5)
    assert didemo.official_segments(rankings[::-1]) == segs
    np.testing.assert_array_equal(didemo.read_predictions_json(path, [3, 17]), rankings[::-1])


def _payload(rankings: dict, **extra) -> dict:
    return {"protocol": "didemo", "rankings": rankings, **extra}


GOOD = list(range(21))


@pytest.mark.parametrize(
    "payload, message",
    [
        (_payload({"1": GOOD}), r"1 queries missing, e.g. annotation_id \['2'\]"),
        (
            _payload({"1": GOOD, "2": GOOD, "9": GOOD}),
            r"unknown query ids, e.g. annotation_id \['9'\]",
        ),
        (_payload({"1": GOOD, "2": GOOD[:20]}), "annotation_id 2: .*20 entries, expected 21"),
        (_payload({"1": GOOD + [0], "2": GOOD}), "annotation_id 1: .*22 entries"),
        (
            _payload({"1": GOOD, "2": [float("nan")] + GOOD[1:]}),
            "annotation_id 2: .*entry 0 is NaN",
        ),
        (_payload({"1": [0.0] + GOOD[1:], "2": GOOD}), "annotation_id 1: .*entry 0 = 0.0 is not"),
        (_payload({"1": ["0"] + GOOD[1:], "2": GOOD}), "annotation_id 1: .*not an integer"),
        (_payload({"1": GOOD, "2": [21] + GOOD[1:]}), "annotation_id 2: .*entry 0 = 21 outside"),
        (
            _payload({"1": GOOD, "2": [1] + GOOD[1:]}),
            r"annotation_id 2: .*permutation.*missing \[0\]",
        ),
        (_payload({"1": GOOD, "2": {"0": 1}}), "annotation_id 2: .*must be a list"),
        (_payload({"1": GOOD, "2": GOOD}, protocol="charades"), "field 'protocol'"),
        (_payload({"1": GOOD, "2": GOOD}, moments=[[0, 1]] * 21), "field 'moments'"),
        ({"1": GOOD, "2": GOOD}, '"rankings" object'),
        ([GOOD, GOOD], '"rankings" object'),
    ],
)
def test_bad_submissions(tmp_path, payload, message):
    path = tmp_path / "sub.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=message) as err:
        didemo.read_predictions_json(path, [1, 2])
    assert str(path) in str(err.value)


def test_bad_json_and_bad_arrays(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        didemo.read_predictions_json(path, [1])
    dup = np.array([GOOD, [1] + GOOD[1:]])
    with pytest.raises(ValueError, match=r"query 1 \(annotation_id 8\): .*missing \[0\]"):
        didemo.write_predictions_json(tmp_path / "x.json", [7, 8], dup)
    with pytest.raises(ValueError, match="annotation_ids repeat"):
        didemo.write_predictions_json(tmp_path / "x.json", [7, 7], np.array([GOOD, GOOD]))
    nan = np.array([GOOD, GOOD], float)
    nan[1, 3] = np.nan
    with pytest.raises(ValueError, match="query 1: .*non-integer"):
        didemo.evaluate(nan, np.zeros((2, 1, 2), int), [1, 1])
    with pytest.raises(ValueError, match=r"\[Q, 21\]"):
        didemo.evaluate(np.array([GOOD[:20]]), np.zeros((1, 1, 2), int))


# --------------------------------------------------------------------------- ground truth file


def test_load_ground_truth(tmp_path):
    records = [
        {"annotation_id": 5, "times": [[0, 0], [0, 1], [0, 0], [5, 5]], "video": "a.mov"},
        {"annotation_id": 2, "times": [[2, 4]] * 7},
    ]
    path = tmp_path / "val_data.json"
    path.write_text(json.dumps(records))
    gt = didemo.load_didemo_ground_truth(path)
    assert len(gt) == 2 and gt.annotation_ids.tolist() == [5, 2]
    assert gt.times.shape == (2, 7, 2) and gt.n_times.tolist() == [4, 7]
    assert gt.times[0, :4].tolist() == [[0, 0], [0, 1], [0, 0], [5, 5]]
    assert (gt.times[0, 4:] == -1).all() and (gt.times[1] == [2, 4]).all()


@pytest.mark.parametrize(
    "record, message",
    [
        ({"annotation_id": 9}, r"record 1 \(annotation_id 9\): missing field 'times'"),
        ({"annotation_id": 9, "times": []}, r"record 1 \(annotation_id 9\): field 'times' must"),
        ({"annotation_id": 9, "times": [[0, 6]]}, r"'times\[0\]' = \[0, 6\]: chunk index outside"),
        ({"annotation_id": 9, "times": [[0, 0], [-1, 2]]}, r"'times\[1\]'.*outside 0..5"),
        ({"annotation_id": 9, "times": [[3, 1]]}, r"'times\[0\]' = \[3, 1\]: end chunk before"),
        ({"annotation_id": 9, "times": [[0.0, 1]]}, r"'times\[0\]'.*integers"),
        ({"annotation_id": 9, "times": [[0, 1, 2]]}, r"'times\[0\]'.*integers"),
        ({"times": [[0, 0]]}, "record 1: missing field 'annotation_id'"),
        ({"annotation_id": "9", "times": [[0, 0]]}, "record 1: field 'annotation_id' must be"),
        (
            {"annotation_id": 1, "times": [[0, 0]]},
            r"record 1 \(annotation_id 1\): .*repeats record 0",
        ),
        ([1, 2], "record 1: expected an object"),
    ],
)
def test_ground_truth_errors(tmp_path, record, message):
    path = tmp_path / "test_data.json"
    path.write_text(json.dumps([{"annotation_id": 1, "times": [[0, 0]]}, record]))
    with pytest.raises(ValueError, match=message) as err:
        didemo.load_didemo_ground_truth(path)
    assert str(path) in str(err.value)
