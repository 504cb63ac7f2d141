"""svmr.decode_moment_lists: decoding of proposal lists (sliding-window models), by hand.

Every expected value is worked out in the comments from the candidate list; the last test
checks the decoding against the score-map decoding on the same moments.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from vmr_jax.evaluation import evaluators, svmr

NAN2 = [np.nan, np.nan]


def decode(moments, scores, nms_thresh=0.5, top_k=5):
    return svmr.decode_moment_lists(
        np.asarray([moments], np.float32),
        np.asarray([scores], np.float32),
        nms_thresh,
        top_k,
        return_scores=True,
    )


def test_candidates_ranked_by_descending_score():
    # Disjoint moments, so no NMS: the order is by score 0.9 > 0.5 > 0.2.
    times, scores = decode([[0, 1], [2, 3], [4, 5]], [0.2, 0.9, 0.5], top_k=3)
    np.testing.assert_array_equal(times[0], [[2, 3], [4, 5], [0, 1]])
    np.testing.assert_array_equal(scores[0], np.float32([0.9, 0.5, 0.2]))


def test_ties_keep_the_lower_index_first():
    # Equal scores: candidate order 0, 1, 2 as given (reversed input order would be 2, 1, 0).
    times, _ = decode([[4, 5], [0, 1], [2, 3]], [0.5, 0.5, 0.5], top_k=3)
    np.testing.assert_array_equal(times[0], [[4, 5], [0, 1], [2, 3]])
    # A tie behind a better candidate keeps index order too.
    times, _ = decode([[0, 1], [2, 3], [4, 5]], [0.1, 0.7, 0.1], top_k=3)
    np.testing.assert_array_equal(times[0], [[2, 3], [0, 1], [4, 5]])


def test_greedy_nms_suppression_and_top_k():
    # A=[0,10] .9, B=[1,10] .8, C=[5,15] .7, D=[0,5] .6, thresh 0.5.
    # IoU(A,B) = 9 / (10 + 9 - 9) = 0.9 > 0.5 -> B dropped.
    # IoU(A,C) = 5 / (10 + 10 - 5) = 1/3 -> C kept.
    # IoU(A,D) = 5 / (10 + 5 - 5) = 0.5, not > 0.5 -> D survives A; IoU(C,D) = 0 -> D kept.
    moments = [[0, 10], [1, 10], [5, 15], [0, 5]]
    scores = [0.9, 0.8, 0.7, 0.6]
    times, kept = decode(moments, scores, top_k=5)
    np.testing.assert_array_equal(times[0], [[0, 10], [5, 15], [0, 5], NAN2, NAN2])
    np.testing.assert_array_equal(kept[0], np.float32([0.9, 0.7, 0.6, np.nan, np.nan]))
    # top_k = 2 stops after A and C.
    times, _ = decode(moments, scores, top_k=2)
    np.testing.assert_array_equal(times[0], [[0, 10], [5, 15]])
    # A looser threshold 0.95 keeps B (0.9 <= 0.95): A, B, then C (IoU(B,C) = 5/14).
    times, _ = decode(moments, scores, nms_thresh=0.95, top_k=3)
    np.testing.assert_array_equal(times[0], [[0, 10], [1, 10], [5, 15]])


def test_non_finite_scores_are_not_candidates():
    # Only candidate 2 (score 0.1) is finite; the others' times may be anything, NaN included.
    moments = [[0, 10], [np.nan, np.nan], [3, 4], [5, 6]]
    scores = [-np.inf, np.nan, 0.1, np.inf]
    times, kept = decode(moments, scores, top_k=3)
    np.testing.assert_array_equal(times[0], [[3, 4], NAN2, NAN2])
    np.testing.assert_array_equal(kept[0], np.float32([0.1, np.nan, np.nan]))


def test_queries_decode_independently_and_pad_with_nan():
    moments = np.float32([[[0, 2], [2, 4]], [[1, 3], [0, 1]]])
    scores = np.float32([[0.3, -np.inf], [-np.inf, -np.inf]])
    times = svmr.decode_moment_lists(moments, scores, 0.5, top_k=2)
    np.testing.assert_array_equal(times, [[[0, 2], NAN2], [NAN2, NAN2]])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"moments must be \[Q, P, 2\]"):
        svmr.decode_moment_lists(np.zeros((2, 3)), np.zeros((2, 3)), 0.5)
    with pytest.raises(ValueError, match=r"scores must be \[Q, P\]"):
        svmr.decode_moment_lists(np.zeros((2, 3, 2)), np.zeros((2, 4)), 0.5)
    moments = np.float32([[[0, 1], [np.nan, 2.0]], [[0, 1], [3, 2]]])
    with pytest.raises(ValueError, match=r"query row 0, candidate 1"):
        svmr.decode_moment_lists(moments, np.float32([[0.5, 0.4], [0.1, -np.inf]]), 0.5)
    with pytest.raises(ValueError, match=r"query row 1, candidate 1: moment \[3.0, 2.0\]"):
        svmr.decode_moment_lists(moments, np.float32([[0.5, -np.inf], [0.1, 0.2]]), 0.5)


def test_score_map_as_a_moment_list_decodes_like_the_score_map():
    # The valid cells (i <= j) of distinct positive score maps, converted here to seconds as
    # the 2D-TAN decoding does ([i, j + 1] / N * duration in float32), must decode to the
    # same moments as decode_predictions when no score ties.
    rng = np.random.default_rng(0)
    n, durations = 6, np.float32([30.0, 17.3, 8.25])
    maps = np.zeros((3, n, n), np.float32)
    cells = [(i, j) for i in range(n) for j in range(i, n)]
    moments = np.zeros((3, len(cells), 2), np.float32)
    scores = np.zeros((3, len(cells)), np.float32)
    for q in range(3):
        values = rng.permutation(len(cells)).astype(np.float32) / len(cells) + 0.01
        for c, (i, j) in enumerate(cells):
            maps[q, i, j] = values[c]
            moments[q, c] = np.float32([i, j + 1]) / np.float32(n) * durations[q]
            scores[q, c] = values[c]
    for thresh in (0.3, 0.5, 0.7):
        expect_t, expect_s = svmr.decode_predictions(maps, durations, thresh, 5, True)
        times, kept = svmr.decode_moment_lists(moments, scores, thresh, 5, True)
        np.testing.assert_array_equal(times, expect_t)
        np.testing.assert_array_equal(kept, expect_s)


def test_trainer_scores_moment_lists_under_2dtan():
    # Two queries, GT [0, 10] and [10, 20].  Query 0: best [0, 10] (IoU 1), then [10, 20].
    # Query 1: best [0, 10] (IoU 0), then [12, 20] (IoU 8/10 = 0.8), then [5, 20].
    predicted = {
        "moments": np.float32([[[10, 20], [0, 10], [0, 1]], [[5, 20], [12, 20], [0, 10]]]),
        "moment_scores": np.float32([[0.5, 0.9, -np.inf], [0.1, 0.6, 0.8]]),
        "duration": np.float32([30, 30]),
        "spans": np.float32([[[0, 10]], [[10, 20]]]),
    }
    config = {"recalls": (1, 5), "ious": (0.5, 0.7), "nms_thresh": 0.5}
    metrics, moments = evaluators.score_predictions(predicted, config)
    # Query 1 NMS: [0,10] kept; [12,20] IoU 0 kept; [5,20] vs [0,10]: 5 / (10 + 15 - 5) = 0.25
    # and vs [12,20]: 8 / (15 + 8 - 8) = 0.533 > 0.5 -> dropped.
    np.testing.assert_array_equal(moments["times"][1, :3], [[0, 10], [12, 20], NAN2])
    assert metrics["R@1,IoU=0.5"] == 0.5  # query 0 only
    assert metrics["R@5,IoU=0.7"] == 1.0  # query 1's second moment has IoU 0.8
    assert metrics["mIoU"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert metrics["num_queries"] == 2


def test_eval_step_passes_either_decoded_form_through():
    batch = {k: np.zeros(2, np.float32) for k in evaluators.EVAL_FIELDS}
    batch["video_features"] = np.ones((2, 3, 4), np.float32)
    state = types.SimpleNamespace(
        params={}, batch_stats={}, apply_fn=lambda variables, b, train: {"logits": b["valid"]}
    )
    moment_list = {"moments": np.zeros((2, 3, 2)), "moment_scores": np.zeros((2, 3)), "n": 3}
    out = evaluators.eval_step(state, batch, decode_fn=lambda *a: moment_list, model_config=None)
    assert set(out) == {"moments", "moment_scores", *evaluators.EVAL_FIELDS}
    score_map = {"score_map": np.zeros((2, 4, 4)), "num_clips": 4}
    out = evaluators.eval_step(state, batch, decode_fn=lambda *a: score_map, model_config=None)
    assert set(out) == {"score_map", *evaluators.EVAL_FIELDS}
    with pytest.raises(KeyError, match=r"decode must return \('score_map',\) or"):
        evaluators.eval_step(state, batch, decode_fn=lambda *a: {"moments": 0}, model_config=None)
