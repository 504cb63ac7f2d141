"""Corpus evaluation helpers: ground truth of a split, list concatenation, metric names."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines.annotations import Annotation
from vmr_jax.evaluation import vcmr
from vmr_jax.evaluation.tvr_files import RankedPredictions
from vmr_jax.retrieval import evaluate


def _annotation(qid, vid, span, **extras):
    return Annotation(
        query_id=qid,
        video_id=vid,
        duration_s=30.0,
        spans_s=np.asarray([span], np.float64),
        query_text=f"query {qid}",
        extras=extras,
    )


def test_ground_truth_uses_official_video_indices_and_types():
    records = [
        _annotation("7", "vB", [1.0, 4.5], desc_id=7, type="v", video_idx=11),
        _annotation("3", "vA", [0.0, 3.0], desc_id=3, type="vt", video_idx=4),
        _annotation("9", "vB", [6.0, 9.0], desc_id=9, type="t", video_idx=11),
    ]
    gt = evaluate.corpus_ground_truth(records, ["vB", "vA"])
    assert gt.desc_id == (7, 3, 9)
    assert gt.video_idx.tolist() == [11, 4, 11]
    assert gt.video2idx == {"vB": 11, "vA": 4}
    assert gt.desc_type.tolist() == [0, 2, 1]  # v, vt, t
    np.testing.assert_array_equal(gt.spans[:, 0], [[1.0, 4.5], [0.0, 3.0], [6.0, 9.0]])


def test_ground_truth_without_extras_uses_corpus_rows_and_query_ids():
    records = [_annotation("q0", "b", [0.0, 1.0]), _annotation("q1", "a", [2.0, 3.0])]
    gt = evaluate.corpus_ground_truth(records, ["b", "a"])
    assert gt.desc_id == ("q0", "q1")
    assert gt.video_idx.tolist() == [0, 1]
    assert gt.desc_type is None


def test_ground_truth_names_a_corpus_video_without_index():
    records = [_annotation("1", "vA", [0.0, 1.0], video_idx=0)]
    with pytest.raises(ValueError, match="vZ"):
        evaluate.corpus_ground_truth(records, ["vA", "vZ"])


def test_concat_ranked_pads_to_the_longest_list():
    a = RankedPredictions(np.array([[1, 2]]), np.ones((1, 2, 2)), np.array([[0.9, 0.5]]))
    b = RankedPredictions(
        np.array([[3, 4, 5], [6, 7, 8]]), np.zeros((2, 3, 2)), np.ones((2, 3)), np.array([3, 1])
    )
    out = evaluate.concat_ranked([a, b])
    assert out.video_idx.tolist() == [[1, 2, -1], [3, 4, 5], [6, -1, -1]]
    assert out.length.tolist() == [2, 3, 1]
    assert out.score[0].tolist() == [0.9, 0.5, 0.0]


def test_flatten_metrics_names_task_and_metric():
    results = {
        "VCMR": {"0.5-r1": 4.0},
        "VR": {"r1": 31.0},
        "VCMR_by_type": {"v-0.5-r1": 1.0, "desc_type_ratio": "v 0.5 t 0.5 vt 0.0"},
        "num_queries": 5,
        "protocol": "tvr",
    }
    assert evaluate.flatten_metrics(results) == {
        "VCMR/0.5-r1": 4.0,
        "VR/r1": 31.0,
        "VCMR_by_type/v-0.5-r1": 1.0,
        "num_queries": 5,
    }
    assert set(vcmr.TASKS) == {"VCMR", "SVMR", "VR"}
