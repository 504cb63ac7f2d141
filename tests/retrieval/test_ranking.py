"""retrieval.ranking: hand-computed XML rankings on six clips, and a brute-force NumPy ranking
of the full L x L tables (the official layout) on random inputs."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from vmr_jax.evaluation.tvr_files import RankedPredictions
from vmr_jax.models import xml_corpus
from vmr_jax.retrieval import ranking

# --------------------------------------------------------------------------- hand-computed

# One query, two candidate videos of L = 6 clips, window 2 <= j - i < 4.  Slot 0: 4 real clips,
# raw score 0 (e = 1); slot 1: 6 real clips, raw score ln(2)/20 (e = 2 with alpha 20).
# Probabilities come from logits log(weight) (the softmax divides by the weight sum).
LOG = np.log
ST = np.array([[LOG([1, 1, 1, 1, 1, 1]), LOG([2, 3, 8, 2, 2, 3])]], np.float32)  # / 4, / 20
ED = np.array([[LOG([1, 1, 2, 4, 1, 1]), LOG([2, 2, 2, 2, 5, 7])]], np.float32)  # / 8, / 20
MASK = np.array([[[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]], bool)
SCORES = np.array([[0.0, math.log(2) / 20]], np.float32)
RULE = xml_corpus.SpanWindowRule(alpha=20, min_pred_l=2, max_pred_l=4)
CONFIG = ranking.RankingConfig(clip_length=1.5)

# (slot, i, j, score) by hand: slot 1 = p_st(i) * 2 * p_ed(j) with p_st = .1 .15 .4 .1 .1 .15
# and p_ed = .1 .1 .1 .1 .25 .35; slot 0 = .25 * p_ed(j) with p_ed = .125 .125 .25 .5 (its
# clips 4, 5 are padding, so (1, 4), (2, 4), (2, 5), (3, 5) are not candidates there).  Equal
# scores (same factors) keep the flat (video rank, i, j) order; slot 1 ranks first (e = 2).
VCMR_BY_HAND = [
    (1, 2, 5, 0.28),
    (1, 2, 4, 0.2),
    (0, 0, 3, 0.125),
    (0, 1, 3, 0.125),
    (1, 1, 4, 0.075),
    (1, 3, 5, 0.07),
    (0, 0, 2, 0.0625),
    (1, 1, 3, 0.03),
    (1, 0, 2, 0.02),
    (1, 0, 3, 0.02),
]
# SVMR in slot 1 (no e): p_st(i) * p_ed(j).
SVMR_BY_HAND = [
    (2, 5, 0.14),
    (2, 4, 0.1),
    (1, 4, 0.0375),
    (3, 5, 0.035),
    (1, 3, 0.015),
    (0, 2, 0.01),
    (0, 3, 0.01),
]


def _ranked(config=CONFIG, own_slot=(1,), videos=None, rule=RULE):
    return xml_corpus.rank_predictions(
        SCORES, ST, ED, MASK, rule, config, np.array(own_slot), videos
    )


def test_vcmr_by_hand():
    vcmr = _ranked()["VCMR"]
    assert vcmr.length.tolist() == [len(VCMR_BY_HAND)]
    slot, i, j, score = map(np.array, zip(*VCMR_BY_HAND))
    np.testing.assert_array_equal(vcmr.video_idx[0, :10], slot)
    np.testing.assert_array_equal(vcmr.st_ed[0, :10], np.stack([i * 1.5, (j + 1) * 1.5], -1))
    np.testing.assert_allclose(vcmr.score[0, :10], score, rtol=1e-5)


def test_svmr_and_vr_by_hand():
    out = _ranked(videos=np.array([70, 71]))
    i, j, score = map(np.array, zip(*SVMR_BY_HAND))
    svmr = out["SVMR"]
    assert svmr.length.tolist() == [7] and (svmr.video_idx[0, :7] == 71).all()
    np.testing.assert_array_equal(svmr.st_ed[0, :7], np.stack([i * 1.5, (j + 1) * 1.5], -1))
    np.testing.assert_allclose(svmr.score[0, :7], score, rtol=1e-5)
    vr = out["VR"]
    assert vr.video_idx.tolist() == [[71, 70]] and (vr.st_ed == 0).all()
    np.testing.assert_allclose(vr.score, [[2.0, 1.0]], rtol=1e-5)
    assert out["VCMR"].video_idx[0, :3].tolist() == [71, 71, 70]


def test_window_limits_and_list_lengths():
    short = _ranked(dataclasses.replace(CONFIG, max_before_nms=3, max_after=2))
    assert short["VCMR"].length.tolist() == [2] and short["VR"].length.tolist() == [2]
    assert short["VCMR"].st_ed[0].tolist() == [[3.0, 9.0], [3.0, 7.5]]
    # Window 1 <= j - i < 2: only neighbours; slot 0 has 3, slot 1 has 5.
    pairs = _ranked(rule=dataclasses.replace(RULE, min_pred_l=1, max_pred_l=2))["VCMR"]
    assert pairs.length.tolist() == [8]
    assert (np.diff(pairs.st_ed[0, :8], axis=-1) == 3.0).all()  # j = i + 1: two clips
    with pytest.raises(ValueError, match="min_pred_l < max_pred_l"):
        xml_corpus.SpanWindowRule(min_pred_l=3, max_pred_l=3)


def test_nms_runs_on_the_top_n_cut():
    # Official order: get_submission_top_n(100) first, then NMS.  With max_after = 2, NMS sees
    # [A, B] only; B overlaps A (IoU 0.9), so one row is left, not [A, C].
    lists = {
        "VCMR": RankedPredictions(
            np.array([[5, 5, 5]]),
            np.array([[[0.0, 10.0], [0.0, 9.0], [20.0, 30.0]]]),
            np.array([[0.9, 0.8, 0.7]]),
        )
    }
    config = ranking.RankingConfig(max_after=2, nms_threshold=0.5)
    out = ranking.postprocess(lists, config)["VCMR"]
    assert out.length.tolist() == [1] and out.st_ed[0, 0].tolist() == [0.0, 10.0]
    plain = ranking.postprocess(lists, dataclasses.replace(config, nms_threshold=None))["VCMR"]
    assert plain.length.tolist() == [2]


def test_official_seconds_arithmetic():
    # VCMR: float32(j) * c + c in float32; SVMR: (j + 1) * c in float64.  c = 0.1 tells them
    # apart: float32(0.1) != 0.1.
    cand = ranking.RankedCandidates(*(np.array([[x]]) for x in (0, 3, 7, 1.0)), np.array([[True]]))
    c = np.float32(0.1)
    vcmr = ranking.candidate_predictions("VCMR", cand, 0.1)
    assert vcmr.st_ed[0, 0].tolist() == [float(np.float32(3) * c), float(np.float32(7) * c + c)]
    svmr = ranking.candidate_predictions("SVMR", cand, 0.1)
    assert svmr.st_ed[0, 0].tolist() == [3 * 0.1, 8 * 0.1]


# --------------------------------------------------------------------------- brute force


def _softmax(logits, mask):
    x = np.where(mask, logits, -1e10).astype(np.float64)
    e = np.exp(x - x.max(-1, keepdims=True)) * mask
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def _brute_force_vcmr(scores, st, ed, mask, rule, config):
    """Full [K, L, L] tables in the official layout, one stable descending sort per query."""
    num_q, num_k, num_l = st.shape
    e = np.exp(np.float32(rule.alpha) * scores).astype(np.float32)
    order = np.argsort(-e, axis=1, kind="stable")
    out = []
    for q in range(num_q):
        k = order[q]
        table = (_softmax(st[q, k], mask[q, k]) * e[q, k, None])[:, :, None] * _softmax(
            ed[q, k], mask[q, k]
        )[:, None, :]
        ones = np.ones((num_l, num_l))
        window = np.triu(ones, rule.min_pred_l) * (1 - np.triu(ones, rule.max_pred_l))
        real = mask[q, k][:, :, None] & mask[q, k][:, None, :] & (window > 0)
        flat = np.where(real, table, -np.inf).reshape(-1)
        best = np.argsort(-flat, kind="stable")[: config.max_before_nms]
        best = best[np.isfinite(flat[best])]
        slot, i, j = np.unravel_index(best, (num_k, num_l, num_l))
        out.append((k[slot], i, j, flat[best]))
    return out


def _random_inputs(rng, num_q=3, num_k=5, num_l=12):
    scores = rng.uniform(-0.2, 0.3, (num_q, num_k)).astype(np.float32)
    st = rng.normal(0, 2, (num_q, num_k, num_l)).astype(np.float32)
    ed = rng.normal(0, 2, (num_q, num_k, num_l)).astype(np.float32)
    lengths = rng.integers(1, num_l + 1, (num_q, num_k))
    lengths[0, 0], lengths[1, 1] = 2, num_l  # one video too short for any moment
    mask = np.arange(num_l) < lengths[..., None]
    return scores, np.where(mask, st, -1e10), np.where(mask, ed, -1e10), mask


@pytest.mark.parametrize("max_before_nms", [7, 40, 1000])
def test_vcmr_matches_brute_force(max_before_nms):
    rng = np.random.default_rng(max_before_nms)
    scores, st, ed, mask = _random_inputs(rng)
    rule = xml_corpus.SpanWindowRule(alpha=20, min_pred_l=2, max_pred_l=6)
    config = ranking.RankingConfig(max_before_nms=max_before_nms, max_after=1000)
    videos = np.arange(100, 105)
    out = xml_corpus.rank_predictions(scores, st, ed, mask, rule, config, videos=videos)
    brute = _brute_force_vcmr(scores, st, ed, mask, rule, config)
    for q, (video, i, j, score) in enumerate(brute):
        got = out["VCMR"]
        n = got.length[q]
        assert n == len(i)
        np.testing.assert_array_equal(got.video_idx[q, :n], videos[video])
        np.testing.assert_array_equal(got.st_ed[q, :n, 0], i * 1.5)
        np.testing.assert_array_equal(got.st_ed[q, :n, 1], (j + 1) * 1.5)
        np.testing.assert_allclose(got.score[q, :n], score, rtol=1e-5)
        vr_order = np.argsort(-scores[q], kind="stable")
        np.testing.assert_array_equal(out["VR"].video_idx[q], videos[vr_order])


def test_svmr_matches_brute_force():
    rng = np.random.default_rng(5)
    scores, st, ed, mask = _random_inputs(rng)
    own = np.array([1, 3, 4])
    rule = xml_corpus.SpanWindowRule(min_pred_l=1, max_pred_l=5)
    config = ranking.RankingConfig(max_before_nms=30)
    out = xml_corpus.rank_predictions(scores, st, ed, mask, rule, config, own_slot=own)["SVMR"]
    for q, k in enumerate(own):
        table = _softmax(st[q, k], mask[q, k])[:, None] * _softmax(ed[q, k], mask[q, k])[None]
        i, j = np.indices(table.shape)
        real = mask[q, k][i] & mask[q, k][j] & (j - i >= 1) & (j - i < 5)
        flat = np.where(real, table, -np.inf).reshape(-1)
        best = np.argsort(-flat, kind="stable")[:30]
        best = best[np.isfinite(flat[best])]
        n = out.length[q]
        assert n == len(best) and (out.video_idx[q, :n] == k).all()
        np.testing.assert_array_equal(out.st_ed[q, :n, 0], i.reshape(-1)[best] * 1.5)
        np.testing.assert_allclose(out.score[q, :n], flat[best], rtol=1e-5)
