"""evaluation.svmr: hand-computed metrics and parity with the official 2D-TAN evaluator.

Golden files (shared/golden, or VMR_GOLDEN_DIR): every ``eval_tan2d_*.npz`` is checked for every
NMS threshold found in its keys; the model goldens (``mgpn_*``, ``tan2d_*``) for their
``decode/*`` products.  The official code scores against float64 GT times read from the
annotation files; the goldens keep float32 copies, so the GT is re-read here from
shared/data (or VMR_DATA_DIR) as the 2D-TAN dataset classes parse it.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from vmr_jax.evaluation import svmr
from vmr_jax.ops import segments

GOLDEN_DIR = Path(
    os.environ.get(
        "VMR_GOLDEN_DIR", Path(__file__).resolve().parents[2].parent / "shared" / "golden"
    )
)
DATA_DIR = Path(os.environ.get("VMR_DATA_DIR", GOLDEN_DIR.parent / "data"))


def _golden_params(*patterns):
    files = []
    if GOLDEN_DIR.is_dir():
        for pattern in patterns:
            files += sorted(GOLDEN_DIR.glob(pattern))
    if files:
        return [pytest.param(f, id=f.stem) for f in files]
    reason = f"no {' / '.join(patterns)} in {GOLDEN_DIR} (set VMR_GOLDEN_DIR to the golden folder)"
    return [pytest.param(None, id="golden-absent", marks=pytest.mark.skip(reason=reason))]


# --------------------------------------------------------------------------- hand-computed


def test_evaluate_by_hand_strict_and_inclusive():
    gt = np.array([[0.0, 10.0], [0.0, 10.0], [0.0, 10.0]])
    pred = np.array(
        [
            [[0.0, 5.0], [0.0, 10.0]],  # IoU 0.5 (on the threshold), then 1.0
            [[20.0, 30.0], [0.0, 7.0]],  # IoU 0, then 0.7 (on the threshold)
            [[0.0, 8.0], [0.0, 2.0]],  # IoU 0.8, then 0.2
        ]
    )
    strict = svmr.evaluate(pred, gt, recalls=(1, 2), ious=(0.5, 0.7), protocol="2dtan")
    # R@1: IoU > 0.5 and > 0.7 only query 2.  R@2: > 0.5 all three; > 0.7 queries 0 and 2.
    assert strict["R@1,IoU=0.5"] == 1 / 3
    assert strict["R@1,IoU=0.7"] == 1 / 3
    assert strict["R@2,IoU=0.5"] == 1.0
    assert strict["R@2,IoU=0.7"] == 2 / 3
    assert strict["mIoU"] == pytest.approx((0.5 + 0.0 + 0.8) / 3, abs=1e-15)
    assert strict["protocol"] == "2dtan" and "IoU > m" in strict["rule"]
    assert strict["num_queries"] == 3
    inclusive = svmr.evaluate(pred, gt, recalls=(1, 2), ious=(0.5, 0.7), protocol="mmn")
    # IoU >= m: query 0 now hits R@1 at 0.5, query 1 hits R@2 at 0.7.
    assert inclusive["R@1,IoU=0.5"] == 2 / 3
    assert inclusive["R@1,IoU=0.7"] == 1 / 3
    assert inclusive["R@2,IoU=0.5"] == 1.0
    assert inclusive["R@2,IoU=0.7"] == 1.0
    assert inclusive["mIoU"] == strict["mIoU"]
    assert inclusive["protocol"] == "mmn"


def test_float32_thresholds_read_as_decimal():
    # 3.5 / 5 is 0.7 in float64, not > 0.7; a raw float32 0.7 (0.699999988) would count it.
    gt = np.array([[1.0, 5.0]])
    pred = np.array([[[0.0, 4.5]]])
    for ious in [(0.7,), tuple(np.float32([0.7]))]:
        res = svmr.evaluate(pred, gt, recalls=(1,), ious=ious)
        assert res == {**res, "R@1,IoU=0.7": 0.0}
    assert svmr.as_threshold(np.float32(0.44)) == 0.44


def test_query_hits_shape_and_order():
    gt = np.array([[2.0, 6.0]])
    pred = np.array([[[0.0, 4.0], [2.0, 6.0], [40.0, 50.0]]])  # IoU 1/3, 1, 0
    hits = svmr.query_hits(pred, gt, recalls=(1, 2), ious=(0.3, 0.5))
    assert hits.shape == (1, 2, 2)
    np.testing.assert_array_equal(hits[0], [[True, True], [False, True]])


def test_valid_mask_ignores_padding():
    gt = np.array([[0.0, 10.0], [0.0, 10.0], [5.0, 6.0]])
    pred = np.array([[[0.0, 9.0]], [[30.0, 40.0]], [[5.0, 6.0]]])
    full = svmr.evaluate(pred, gt, recalls=(1,), ious=(0.5,))
    assert full["R@1,IoU=0.5"] == 2 / 3
    padded = svmr.evaluate(pred, gt, recalls=(1,), ious=(0.5,), valid=np.array([1, 0, 1], bool))
    assert padded["R@1,IoU=0.5"] == 1.0 and padded["num_queries"] == 2
    assert padded["mIoU"] == pytest.approx((0.9 + 1.0) / 2, abs=1e-15)
    with pytest.raises(ValueError):
        svmr.evaluate(pred, gt, recalls=(1,), ious=(0.5,), valid=np.zeros(3, bool))


def test_missing_moments_never_hit():
    gt = np.array([[0.0, 10.0]])
    pred = np.array([[[0.0, 2.0], [np.nan, np.nan]]])  # only one moment survived the NMS
    res = svmr.evaluate(pred, gt, recalls=(1, 2), ious=(0.1,))
    assert res["R@1,IoU=0.1"] == 1.0 and res["R@2,IoU=0.1"] == 1.0
    assert res["mIoU"] == pytest.approx(0.2, abs=1e-15)
    res = svmr.evaluate(np.full((1, 2, 2), np.nan), gt, recalls=(1, 2), ious=(0.1,))
    assert res["R@2,IoU=0.1"] == 0.0 and res["mIoU"] == 0.0


def test_unknown_protocol_and_too_few_moments():
    gt = np.array([[0.0, 1.0]])
    pred = np.zeros((1, 1, 2))
    with pytest.raises(ValueError, match="protocol"):
        svmr.evaluate(pred, gt, protocol="nope")
    with pytest.raises(ValueError, match="R@5"):
        svmr.evaluate(pred, gt, recalls=(1, 5))


def test_decode_predictions_by_hand():
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, 0, 3], maps[0, 0, 1], maps[0, 0, 2], maps[0, 3, 3] = 0.9, 0.8, 0.7, 0.6
    maps[1, 1, 2] = 0.5  # the rest are zeros: NumPy's order decides, any 3 are fine
    times, scores = svmr.decode_predictions(
        maps, np.array([8.0, 4.0], np.float32), 0.5, top_k=3, return_scores=True
    )
    assert times.shape == (2, 3, 2) and times.dtype == np.float32
    np.testing.assert_array_equal(times[0], [[0, 8], [0, 4], [6, 8]])
    np.testing.assert_array_equal(scores[0], np.float32([0.9, 0.8, 0.6]))
    np.testing.assert_array_equal(times[1, 0], [1, 3])
    # N = 1: one candidate only, the other slots stay NaN.
    single = svmr.decode_predictions(np.ones((1, 1, 1), np.float32), np.array([3.0]), 0.5, 2)
    np.testing.assert_array_equal(single[0, 0], [0.0, 3.0])
    assert np.isnan(single[0, 1]).all()


def test_write_predictions_jsonl(tmp_path):
    times = np.array([[[0.0, 2.5], [1.0, 4.0]], [[0.0, 1.0], [np.nan, np.nan]], [[9, 9], [9, 9]]])
    scores = np.array([[0.75, 0.5], [0.25, np.nan], [0.0, 0.0]])
    path = tmp_path / "pred.jsonl"
    n = svmr.write_predictions_jsonl(
        path, times, scores, video_ids=["a", "b", "pad"], valid=np.array([1, 1, 0], bool)
    )
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert n == 2 and len(lines) == 2
    assert lines[0] == {
        "query_index": 0,
        "video_id": "a",
        "moments": [[0.0, 2.5, 0.75], [1.0, 4.0, 0.5]],
    }
    assert lines[1] == {"query_index": 1, "video_id": "b", "moments": [[0.0, 1.0, 0.25]]}
    svmr.write_predictions_jsonl(path, times[:1])
    assert json.loads(path.read_text()) == {"query_index": 0, "moments": [[0.0, 2.5], [1.0, 4.0]]}


# --------------------------------------------------------------------------- official goldens


def _charades(split):
    root = DATA_DIR / "charades_sta"
    with open(root / f"Charades_v1_{split}.csv", newline="") as f:
        durations = {row["id"]: float(row["length"]) for row in csv.DictReader(f)}
    out = []
    for line in (root / f"charades_sta_{split}.txt").read_text().splitlines():
        anno = line.split("##")[0]
        vid, start, end = anno.split(" ")
        start, end = float(start), min(float(end), durations[vid])
        if start < end:
            out.append((start, end, durations[vid]))
    return out


def _tacos(split):
    annotations = json.loads((DATA_DIR / "tacos" / f"{split}.json").read_text())
    out = []
    for video in annotations.values():
        fps = video["fps"]
        duration = video["num_frames"] / fps
        for start, end in video["timestamps"]:
            if start < end:
                out.append((max(start / fps, 0), min(end / fps, duration), duration))
    return out


def _activitynet(split):
    annotations = json.loads((DATA_DIR / "activitynet_captions" / f"{split}.json").read_text())
    out = []
    for video in annotations.values():
        duration = video["duration"]
        for start, end in video["timestamps"]:
            if start < end:
                out.append((max(start, 0), min(end, duration), duration))
    return out


# 2D-TAN dataset classes' parsing of the annotation files (float64, official order).
ANNOTATION_PARSERS = {"charades": _charades, "tacos": _tacos, "activitynet": _activitynet}


def _float64_gt(stem, arrays):
    """``[Q, 2]`` float64 GT from the annotation files, or None when they are not available."""
    parts = stem.split("_")  # eval_tan2d_<dataset>_<split>_sample<n>
    if len(parts) < 4 or parts[2] not in ANNOTATION_PARSERS:
        return None
    try:
        rows = ANNOTATION_PARSERS[parts[2]](parts[3])
    except FileNotFoundError:
        return None
    q = arrays["gt_times"].shape[0]
    gt = np.array([r[:2] for r in rows[:q]], np.float64)
    # The parse must reproduce the golden's float32 copies, else it is not the same sample.
    np.testing.assert_array_equal(gt.astype(np.float32), arrays["gt_times"])
    np.testing.assert_array_equal(np.float32([r[2] for r in rows[:q]]), arrays["duration"])
    return gt


def _thresholds(keys):
    return sorted({k.split("/")[0][len("nms") :] for k in keys if k.endswith("/top5_times")})


@pytest.mark.parametrize("path", _golden_params("eval_tan2d_*.npz"))
def test_tan2d_evaluator_parity(path):
    meta = json.loads(path.with_suffix(".json").read_text())
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    # The official thresholds are Python floats parsed from the config text, not float32.
    tious = tuple(float(m) for m in meta.get("settings", {}).get("TIOU", []))
    if not tious:
        tious = tuple(svmr.as_threshold(m) for m in arrays["tious"])
    np.testing.assert_array_equal(np.float32(tious), arrays["tious"])
    recalls = tuple(int(n) for n in arrays["recalls"])
    gt64 = _float64_gt(path.stem, arrays)
    thresholds = _thresholds(arrays)
    assert thresholds, "no nms<t>/top5_times key"
    for t in thresholds:
        key = f"nms{t}"
        times = svmr.decode_predictions(
            arrays["score_maps"], arrays["duration"], float(t), top_k=max(recalls)
        )
        np.testing.assert_allclose(times, arrays[f"{key}/top5_times"], rtol=0, atol=1e-6)
        gt = gt64 if gt64 is not None else arrays["gt_times"]
        hits = svmr.query_hits(times, gt, recalls, tious, protocol="2dtan")
        results = svmr.evaluate(times, gt, recalls, tious, protocol="2dtan")
        recall = np.array([[results[svmr.metric_name(n, m)] for n in recalls] for m in tious])
        official = meta["results"][key]
        if gt64 is None:
            # float32 GT: a query with a moment on a threshold may flip; compare the others.
            iou = arrays[f"{key}/top5_iou"]
            near = (np.abs(iou[:, :, None] - np.array(tious)) < 1e-5).any(axis=(1, 2))
            np.testing.assert_array_equal(hits[~near], arrays[f"{key}/hits"][~near])
            np.testing.assert_allclose(recall, official["recall"], atol=near.sum() / len(near))
            assert results["mIoU"] == pytest.approx(official["miou"], abs=1e-6)
            continue
        np.testing.assert_array_equal(hits, arrays[f"{key}/hits"])
        np.testing.assert_array_equal(recall, np.array(official["recall"]))  # exact fractions
        np.testing.assert_array_equal(recall.astype(np.float32), arrays[f"{key}/recall"])
        assert results["mIoU"] == official["miou"]  # same float64 mean, bit for bit
        np.testing.assert_allclose(
            svmr.moment_ious(times, gt), arrays[f"{key}/top5_iou"], rtol=0, atol=1e-6
        )


@pytest.mark.parametrize("path", _golden_params("eval_tan2d_*.npz"))
def test_tan2d_jax_decoding_parity_x64(path):
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    top_k = int(arrays["recalls"].max())
    decode = jax.jit(segments.decode_topk, static_argnums=(2,))
    for t in _thresholds(arrays):
        with jax.enable_x64(True):  # float64 NMS: the official arithmetic
            times, _, kept = decode(arrays["score_maps"], arrays["duration"], top_k, float(t))
        assert np.asarray(kept).all()
        np.testing.assert_array_equal(np.asarray(times), arrays[f"nms{t}/top5_times"])


def assert_same_up_to_tied_scores(times, scores, expected_times):
    """Ranked moments equal the official ones, except that moments with exactly equal scores
    may come in either order: the official decoding sorts with NumPy's unstable argsort,
    whose order of ties depends on the CPU's SIMD instructions (the golden MGPN score map has
    exactly tied cells).  Each run of equal scores must hold the same moments as the official
    list at those ranks; everything else compares exactly as before."""
    for q in range(times.shape[0]):
        start = 0
        k = times.shape[1]
        for end in range(1, k + 1):
            if end < k and scores[q, end] == scores[q, start]:
                continue
            got = sorted(map(tuple, np.round(times[q, start:end], 5).tolist()))
            want = sorted(map(tuple, np.round(expected_times[q, start:end], 5).tolist()))
            assert got == want, (q, start, end)
            if end - start == 1:
                np.testing.assert_allclose(
                    times[q, start], expected_times[q, start], rtol=0, atol=1e-6
                )
            start = end


def test_tie_aware_comparison_is_strict_outside_ties():
    times = np.array([[[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]], np.float32)
    swapped = times[:, [0, 2, 1]]
    assert_same_up_to_tied_scores(times, np.array([[0.9, 0.5, 0.5]]), swapped)  # a tie
    with pytest.raises(AssertionError):
        assert_same_up_to_tied_scores(times, np.array([[0.9, 0.6, 0.5]]), swapped)


@pytest.mark.parametrize("path", _golden_params("mgpn_*.npz", "tan2d_*.npz"))
def test_model_golden_decoding(path):
    meta = json.loads(path.with_suffix(".json").read_text())
    test_cfg = meta["config_values"]["test"]
    nms_thresh = float(test_cfg["NMS_THRESH"])
    tious = tuple(float(m) for m in str(test_cfg["TIOU"]).split(","))
    recalls = tuple(int(n) for n in str(test_cfg["RECALL"]).split(","))
    with np.load(path) as archive:
        joint_prob = archive["outputs/joint_prob"][:, 0]  # [B, N, N]
        duration = archive["inputs/duration"]
        gt = archive["inputs/gt_times"]
        expected_times = archive["decode/nms_top5_times"]
        expected_recall = archive["decode/recall"]
        expected_miou = archive["decode/miou"]
    times, scores = svmr.decode_predictions(
        joint_prob, duration, nms_thresh, top_k=max(recalls), return_scores=True
    )
    assert_same_up_to_tied_scores(times, scores, expected_times)
    results = svmr.evaluate(times, gt, recalls, tious, protocol="2dtan")
    recall = np.array([[results[svmr.metric_name(n, m)] for n in recalls] for m in tious])
    np.testing.assert_array_equal(recall.astype(np.float32), expected_recall)
    assert results["mIoU"] == pytest.approx(float(expected_miou), abs=1e-6)
