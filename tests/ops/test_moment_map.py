"""ops.moment_map against hand-computed cells and brute-force loops written here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from vmr_jax.ops import moment_map

GOLDEN_DIR = Path(
    os.environ.get(
        "VMR_GOLDEN_DIR", Path(__file__).resolve().parents[2].parent / "shared" / "golden"
    )
)


def _mgpn_loop_mask(n, pooling_counts):
    """MGPN SparseBoundaryContent's construction, as plain loops."""
    mask = np.eye(n, dtype=bool)
    stride, offset = 1, 0
    for count in pooling_counts:
        for _ in range(count):
            offset += stride
            for start in range(0, n - offset, stride):
                mask[start, start + offset] = True
        stride *= 2
    return mask


def _tan2d_loop_mask(n, num_scale_layers):
    """2D-TAN SparsePropMaxPool.recover_to_original_map's index arithmetic, as plain loops."""
    mask = np.zeros((n, n), dtype=bool)
    accumulated, stride = 0, 1
    for scale, count in enumerate(num_scale_layers):
        for layer in range(count):
            if layer == 0 and scale > 0:
                stride *= 2
            for start in range(0, n - accumulated - layer * stride, stride):
                mask[start, start + accumulated + layer * stride] = True
        accumulated += stride * (count + 1)
    return mask


# Hand counts (diagonal + sum over offsets d of the starts s % stride == 0 with s + d < N):
#  N=16 [16]: the whole upper triangle, 16*17/2 = 136.
#  N=64 [15,8,8]: 64 + (15*64 - 120) + (24+...+17 = 164) + (8+...+1 = 36) = 1104.
#  N=128 [15,8,8,8]: 128 + 1800 + (56+...+49 = 420) + (24+...+17 = 164) + (8+...+1 = 36) = 2548.
#  N=128 [16,8,8,8]: 128 + (16*128 - 136) + (55+...+48 = 412) + (23+...+16 = 156)
#                    + (7+6+...+1+0 = 28) = 2636.
HAND_COUNTS = [
    (16, (16,), 136),
    (16, (15,), 136),
    (64, (15, 8, 8), 1104),
    (128, (15, 8, 8, 8), 2548),
    (128, (16, 8, 8, 8), 2636),
]


@pytest.mark.parametrize("n, counts, expected", HAND_COUNTS)
def test_valid_cell_counts_by_hand(n, counts, expected):
    mask = moment_map.valid_cell_mask(n, counts)
    assert mask.shape == (n, n) and mask.dtype == bool
    assert int(mask.sum()) == expected
    assert not np.tril(mask, -1).any()
    assert mask.diagonal().all()


@pytest.mark.parametrize("n, counts, expected", HAND_COUNTS)
def test_valid_cell_mask_matches_loop(n, counts, expected):
    np.testing.assert_array_equal(moment_map.valid_cell_mask(n, counts), _mgpn_loop_mask(n, counts))


def test_upper_triangle_n16():
    mask = moment_map.valid_cell_mask(16, (16,))
    np.testing.assert_array_equal(mask, np.triu(np.ones((16, 16), bool)))


def test_specific_cells_n64():
    mask = moment_map.valid_cell_mask(64, (15, 8, 8))
    valid = [(0, 0), (63, 63), (0, 15), (48, 63), (2, 19), (32, 63), (4, 39), (0, 63), (28, 63)]
    invalid = [(0, 16), (1, 17), (1, 18), (3, 20), (2, 37), (0, 33), (6, 41), (1, 64 - 1), (5, 4)]
    for i, j in valid:
        assert mask[i, j], (i, j)
    for i, j in invalid:
        assert not mask[i, j], (i, j)


@pytest.mark.parametrize(
    "n, num_scale_layers, expected",
    [(16, (16,), 136), (64, (16, 8, 8), 1104), (128, (16, 8, 8, 8), 2548)],
)
def test_tan2d_convention(n, num_scale_layers, expected):
    counts = moment_map.pooling_counts_from_tan2d(num_scale_layers)
    mask = moment_map.valid_cell_mask(n, counts)
    np.testing.assert_array_equal(mask, _tan2d_loop_mask(n, num_scale_layers))
    assert int(mask.sum()) == expected


def test_tan2d_mask_matches_golden():
    path = GOLDEN_DIR / "eval_tan2d_tacos_test_sample200.npz"
    if not path.exists():
        pytest.skip(f"{path} absent (set VMR_GOLDEN_DIR)")
    with np.load(path) as golden:
        expected = golden["map_mask"]
    counts = moment_map.pooling_counts_from_tan2d((16, 8, 8, 8))
    np.testing.assert_array_equal(moment_map.valid_cell_mask(128, counts), expected)


def test_valid_cells_row_major():
    starts, ends = moment_map.valid_cells(4, (1,))
    np.testing.assert_array_equal(starts, [0, 0, 1, 1, 2, 2, 3])
    np.testing.assert_array_equal(ends, [0, 1, 1, 2, 2, 3, 3])


def test_cell_times_by_hand():
    times = np.asarray(moment_map.cell_times(4, np.float32(8.0)))
    assert times.shape == (4, 4, 2)
    np.testing.assert_array_equal(times[1, 2], [2.0, 6.0])
    np.testing.assert_array_equal(times[0, 3], [0.0, 8.0])
    np.testing.assert_array_equal(times[3, 0], [6.0, 2.0])
    batched = np.asarray(moment_map.cell_times(2, np.array([2.0, 10.0], np.float32)))
    np.testing.assert_array_equal(batched[1, 0, 1], [0.0, 10.0])
    np.testing.assert_array_equal(batched[0, 1, 1], [1.0, 2.0])


def test_iou_target_map_by_hand():
    # N = 4 clips of 2 s, GT [2, 6].
    iou = np.asarray(moment_map.iou_target_map(4, np.array([2.0, 6.0]), np.float32(8.0)))
    assert iou.shape == (4, 4)
    np.testing.assert_allclose(iou[1, 2], 1.0)  # [2, 6]
    np.testing.assert_allclose(iou[0, 1], 1 / 3)  # [0, 4]: 2 / 6
    np.testing.assert_allclose(iou[2, 3], 1 / 3)  # [4, 8]: 2 / 6
    np.testing.assert_allclose(iou[0, 3], 0.5)  # [0, 8]: 4 / 8
    np.testing.assert_allclose(iou[1, 1], 0.5)  # [2, 4]: 2 / 4
    np.testing.assert_allclose(iou[3, 3], 0.0)  # [6, 8] touches the GT end
    np.testing.assert_allclose(iou[2, 1], 0.0)  # i > j: [4, 4], no overlap


def test_scaled_iou_by_hand():
    iou = np.array([0.3, 0.5, 0.75, 1.0], np.float32)
    np.testing.assert_allclose(moment_map.scaled_iou(iou, 0.5, 1.0), [0.0, 0.0, 0.5, 1.0])
    # bias 0.1: (0.75 - 0.5) * 0.9 / 0.5 + 0.1 = 0.55; 1.0 -> 0.9 + 0.1 = 1.0; 0.5 stays 0.
    np.testing.assert_allclose(
        moment_map.scaled_iou(iou, 0.5, 1.0, bias=0.1), [0.0, 0.0, 0.55, 1.0], rtol=1e-6
    )


@pytest.mark.parametrize("n, counts", [(16, (16,)), (64, (15, 8, 8)), (13, (3, 2, 2))])
def test_span_max_matches_loop(n, counts):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((2, n, 3)).astype(np.float32)
    starts, ends = moment_map.valid_cells(n, counts)
    got = np.asarray(moment_map.span_max_cells(x, starts, ends))
    expected = np.stack([x[:, s : e + 1].max(axis=1) for s, e in zip(starts, ends)], axis=1)
    np.testing.assert_array_equal(got, expected)
    dense = np.asarray(moment_map.span_max_map(x, moment_map.valid_cell_mask(n, counts)))
    for s, e in [(0, 0), (0, n - 1), (n - 2, n - 1)]:
        if moment_map.valid_cell_mask(n, counts)[s, e]:
            np.testing.assert_array_equal(dense[:, s, e], x[:, s : e + 1].max(axis=1))
    assert not dense[:, 1, 0].any()


def test_boundary_by_hand():
    x = np.arange(8, dtype=np.float32).reshape(1, 4, 2)  # clip t holds [2t, 2t + 1]
    mask = moment_map.valid_cell_mask(4, (3,))
    dense = np.asarray(moment_map.boundary_map(x, mask))
    np.testing.assert_array_equal(dense[0, 1, 1], [2.0, 3.0])  # diagonal = the clip
    np.testing.assert_array_equal(dense[0, 0, 3], [3.0, 4.0])  # ([0, 1] + [6, 7]) / 2
    np.testing.assert_array_equal(dense[0, 3, 0], [0.0, 0.0])


def test_scatter_gather_round_trip():
    starts, ends = moment_map.valid_cells(8, (3, 2))
    values = np.arange(2 * len(starts), dtype=np.float32).reshape(2, -1) + 1
    dense = np.asarray(moment_map.scatter_cells(values, starts, ends, 8))
    assert dense.shape == (2, 8, 8)
    assert np.count_nonzero(dense) == values.size
    np.testing.assert_array_equal(dense[1, starts[3], ends[3]], values[1, 3])
    np.testing.assert_array_equal(np.asarray(moment_map.gather_cells(dense, starts, ends)), values)
