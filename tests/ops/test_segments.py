"""ops.segments: IoU by hand, NMS cases by hand, jnp NMS/decoding vs the NumPy reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmr_jax.ops import segments


def test_temporal_iou_by_hand():
    a = np.array([[0.0, 4.0], [0.0, 1.0], [0.0, 2.0], [0.0, 10.0], [3.0, 5.0]])
    b = np.array([[2.0, 6.0], [2.0, 3.0], [2.0, 4.0], [2.0, 4.0], [3.0, 5.0]])
    # overlap 2 / hull 6; disjoint; touching; nested 2 / 10; identical.
    np.testing.assert_allclose(segments.temporal_iou(a, b), [1 / 3, 0.0, 0.0, 0.2, 1.0])
    # Disjoint pairs use the hull (max end - min start), overlap clipped at 0.
    assert segments.temporal_iou(np.array([0.0, 1.0]), np.array([5.0, 6.0])) == 0.0


def test_temporal_iou_keeps_dtype_and_backend():
    a = np.array([0.0, 3.0], np.float32)
    b = np.array([1.0, 4.0], np.float32)
    out = segments.temporal_iou(a, b)
    assert isinstance(out, np.floating | np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.5)
    out_j = segments.temporal_iou(jnp.asarray(a), jnp.asarray(b))
    assert isinstance(out_j, jax.Array)
    np.testing.assert_allclose(np.asarray(out_j), 0.5)
    jitted = jax.jit(segments.temporal_iou)(jnp.asarray(a), jnp.asarray(b))
    np.testing.assert_allclose(np.asarray(jitted), 0.5)


def test_zero_length_identical_is_nan():
    assert np.isnan(segments.temporal_iou(np.array([3.0, 3.0]), np.array([3.0, 3.0])))


def test_pairwise_iou_by_hand():
    a = np.array([[0.0, 2.0], [1.0, 3.0]])
    b = np.array([[0.0, 2.0], [2.0, 4.0], [0.0, 4.0]])
    expected = np.array([[1.0, 0.0, 0.5], [1 / 3, 1 / 3, 0.5]])
    got = segments.pairwise_iou(a, b)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, expected)


def test_chunk_iou_by_hand():
    a = np.array([[0, 0], [0, 1], [0, 0], [0, 5], [2, 3]])
    b = np.array([[0, 0], [1, 2], [2, 2], [2, 3], [4, 5]])
    # (0,0)~(0,0): 1/1; (0,1)~(1,2): 1/3; disjoint: 0; (0,5)~(2,3): 2/6; adjacent chunks: 0.
    np.testing.assert_allclose(segments.chunk_iou(a, b), [1.0, 1 / 3, 0.0, 1 / 3, 0.0])


# Ranked candidates for the NMS cases below (best first).
RANKED = np.array([[0.0, 10.0], [1.0, 10.0], [20.0, 30.0], [0.0, 5.0], [21.0, 29.0], [40.0, 50.0]])
# thresh 0.5 by hand: keep 0; 1 has IoU 0.9 -> drop; 2: 0; 3: 5/10 = 0.5 (not > 0.5) -> stays;
# keep 2; 4 has IoU 0.8 with it -> drop; keep 3; keep 5.
KEPT_05 = [0, 2, 3, 5]


def test_nms_by_hand():
    np.testing.assert_array_equal(segments.nms(RANKED, None, 0.5), KEPT_05)
    # thresh 0.49: [0, 5] now has IoU 0.5 > 0.49 with [0, 10] -> dropped.
    np.testing.assert_array_equal(segments.nms(RANKED, None, 0.49), [0, 2, 5])
    # thresh 0.95: the largest IoUs are 0.9 ([1, 10]) and 0.8 ([21, 29]), so all survive.
    np.testing.assert_array_equal(segments.nms(RANKED, None, 0.95), [0, 1, 2, 3, 4, 5])


def test_nms_early_stop():
    for k in range(1, 5):
        np.testing.assert_array_equal(segments.nms(RANKED, None, 0.5, top_k=k), KEPT_05[:k])
    np.testing.assert_array_equal(segments.nms(RANKED, None, 0.5, top_k=10), KEPT_05)
    np.testing.assert_array_equal(segments.nms(RANKED[:0], None, 0.5, top_k=5), [])


def test_nms_with_scores_and_ties():
    times = np.array([[0.0, 4.0], [0.0, 3.0], [10.0, 12.0], [1.0, 4.0]])
    scores = np.array([0.2, 0.9, 0.9, 0.5])
    # Ranked by score, ties in input order: 1, 2, 3, 0.  Keep 1 ([0,3]); 2: 0; 3 ([1,4]) vs
    # [0,3]: 2/4 = 0.5 -> stays; 0 ([0,4]) vs [0,3]: 0.75 -> dropped.  Keep 2, keep 3.
    np.testing.assert_array_equal(segments.nms(times, scores, 0.5), [1, 2, 3])
    np.testing.assert_array_equal(segments.nms(times, scores, 0.5, top_k=2), [1, 2])


def test_nms_zero_length_nan_is_dropped():
    # Official rule: ovr = 0 / 0 = nan is not <= thresh, so later zero-length moments go.
    times = np.array([[3.0, 3.0], [3.0, 3.0], [5.0, 5.0], [6.0, 8.0]])
    np.testing.assert_array_equal(segments.nms(times, None, 0.5), [0, 3])


def _random_ranked(rng, batch, m, grid):
    starts = rng.integers(0, grid, size=(batch, m))
    lengths = rng.integers(1, grid // 2, size=(batch, m))
    return np.stack([starts, starts + lengths], axis=-1).astype(np.float32)


@pytest.mark.parametrize("thresh", [0.5, 0.4, 0.3])
def test_batched_nms_matches_reference(thresh):
    # Integer endpoints: IoU ties (e.g. exactly 0.5) are exact in float32 and float64 alike.
    rng = np.random.default_rng(7)
    times = _random_ranked(rng, 16, 40, 24)
    top_k = 6
    index, kept = jax.jit(segments.batched_nms, static_argnums=(2,))(times, thresh, top_k)
    index, kept = np.asarray(index), np.asarray(kept)
    for b in range(times.shape[0]):
        expected = segments.nms(times[b].astype(np.float64), None, thresh, top_k=top_k)
        np.testing.assert_array_equal(index[b][kept[b]], expected)
        assert kept[b].sum() == len(expected)
        assert not kept[b][len(expected) :].any()


def test_batched_nms_valid_and_exhaustion():
    times = np.array([[[0.0, 10.0], [0.0, 9.0], [20.0, 30.0], [40.0, 41.0]]], np.float32)
    valid = np.array([[True, True, False, True]])
    index, kept = segments.batched_nms(times, 0.5, 4, valid=valid)
    np.testing.assert_array_equal(np.asarray(kept), [[True, True, False, False]])
    np.testing.assert_array_equal(np.asarray(index)[0, :2], [0, 3])


def test_ranked_cells_and_seconds_by_hand():
    score_map = np.array([[0.1, 0.7, 0.3], [0.9, 0.2, 0.5], [0.8, 0.6, 0.4]], np.float32)
    starts, ends = segments.ranked_cells(score_map)
    # upper cells by score: (0,1) .7, (1,2) .5, (2,2) .4, (0,2) .3, (1,1) .2, (0,0) .1
    np.testing.assert_array_equal(
        np.stack([starts, ends], -1), [[0, 1], [1, 2], [2, 2], [0, 2], [1, 1], [0, 0]]
    )
    times = segments.cell_seconds(starts, ends, 3, 6.0)
    assert times.dtype == np.float32
    np.testing.assert_array_equal(times[:2], [[0.0, 4.0], [2.0, 6.0]])
    # float32 arithmetic: 1 / 3 * 0.7 rounds in float32 twice.
    expected = np.float32(np.float32(1.0) / np.float32(3.0)) * np.float32(0.7)
    assert segments.cell_seconds([1], [1], 3, 0.7)[0, 0] == expected


def test_topk_moments_by_hand():
    score_map = np.zeros((4, 4), np.float32)
    score_map[0, 3] = 0.9  # [0, 8]
    score_map[0, 1] = 0.8  # [0, 4]: IoU 0.5 with [0, 8] -> kept at thresh 0.5
    score_map[0, 2] = 0.7  # [0, 6]: 0.75 -> dropped
    score_map[3, 3] = 0.6  # [6, 8]
    rows = segments.topk_moments(score_map, 8.0, 3, 0.5)
    np.testing.assert_array_equal(
        rows, np.array([[0, 8, 0.9], [0, 4, 0.8], [6, 8, 0.6]], np.float64).astype(np.float32)
    )
    rows = segments.topk_moments(score_map, 8.0, 2, 0.4)  # [0, 4] now dropped
    np.testing.assert_allclose(rows[:, :2], [[0, 8], [6, 8]])


def test_decode_topk_matches_topk_moments():
    rng = np.random.default_rng(3)
    n, batch = 8, 6
    # distinct scores (no ties), lower triangle 0 as the models output
    maps = np.triu(rng.permutation(batch * n * n).reshape(batch, n, n) + 1).astype(np.float32)
    durations = rng.uniform(5.0, 60.0, size=batch).astype(np.float32)
    with jax.enable_x64(True):
        times, scores, kept = jax.jit(segments.decode_topk, static_argnums=(2,))(
            maps, durations, 5, 0.45
        )
    for b in range(batch):
        rows = segments.topk_moments(maps[b], durations[b], 5, 0.45)
        assert np.asarray(kept[b]).sum() == len(rows)
        np.testing.assert_array_equal(np.asarray(times[b])[: len(rows)], rows[:, :2])
        np.testing.assert_array_equal(np.asarray(scores[b])[: len(rows)], rows[:, 2])


def test_temporal_iou_zero_hull_variants():
    # [0, 4] vs [2, 6]: overlap 2, hull 6 (by hand); two identical points: hull 0.
    a = np.array([[0.0, 4.0], [2.0, 2.0]])
    b = np.array([[2.0, 6.0], [2.0, 2.0]])
    official_2dtan = segments.temporal_iou(a, b)
    assert official_2dtan[0] == pytest.approx(1 / 3) and np.isnan(official_2dtan[1])
    tvr = segments.temporal_iou(a.astype(np.float32), b.astype(np.float32), empty=0.0)
    assert tvr.dtype == np.float32 and tvr.tolist() == [np.float32(2) / np.float32(6), 0.0]
    traced = jax.jit(lambda x, y: segments.temporal_iou(x, y, empty=0.0))(a, b)
    np.testing.assert_allclose(np.asarray(traced), [1 / 3, 0.0], rtol=1e-6)
