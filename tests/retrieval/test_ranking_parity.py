"""retrieval.ranking against the official XML inference (golden ``xml_*.npz``, README xml_tvr).

From the golden raw query-video scores and span logits (``infer/get_pred_from_raw_query/*``):
the exp scores and span probabilities, every ``submission/<tag>/<TASK>`` list (``no_nms`` and
``nms<t>``) and every ``metrics/<tag>/...`` number through the TVR evaluator.  Constants come
from the sidecar JSON; the query of row ``q`` is scored on the videos of ``infer/
video_global_idx`` and its own video is ``infer/gt_video_global_idx[q]``.
"""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np

from vmr_jax.evaluation import vcmr
from vmr_jax.models import xml_corpus
from vmr_jax.retrieval import ranking

RAW = "infer/get_pred_from_raw_query/"


def _load(path):
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    return arrays, json.loads(path.with_suffix(".json").read_text())


def _rule(meta) -> xml_corpus.SpanWindowRule:
    opt = meta["config_values"]["opt"]
    return xml_corpus.SpanWindowRule(
        alpha=float(opt["q2c_alpha"]),
        min_pred_l=int(opt["min_pred_l"]),
        max_pred_l=int(opt["max_pred_l"]),
    )


def _config(meta) -> ranking.RankingConfig:
    opt = meta["config_values"]["opt"]
    return ranking.RankingConfig(
        clip_length=float(opt["clip_length"]),
        max_before_nms=int(opt["max_before_nms"]),
        max_after=100,  # eval_epoch's max_after_nms
    )


def _clip_mask(arrays):
    """The context mask of the corpus (``inputs/video_mask``), checked against the -1e10
    logits the model puts on padded clips."""
    mask = arrays["inputs/video_mask"] > 0
    logits = arrays[RAW + "st_logits"]
    assert logits.shape[-1] == mask.shape[-1], "the context must be padded to max_ctx_l"
    np.testing.assert_array_equal(np.broadcast_to(mask, logits.shape), logits > -1e9)
    return np.broadcast_to(mask, logits.shape)


def _tags(arrays):
    tags = sorted({k.split("/")[1] for k in arrays if k.startswith("submission/")})
    assert tags, "no submission/* lists in the golden file"
    return tags


def test_scores_and_span_probabilities(xml_golden):
    arrays, meta = _load(xml_golden)
    rule = _rule(meta)
    exp = np.asarray(jnp.exp(rule.alpha * arrays[RAW + "q2ctx_scores"]))
    np.testing.assert_allclose(exp, arrays["infer/q2ctx_scores_exp"], rtol=1e-6)
    mask = _clip_mask(arrays)
    for name in ("st", "ed"):
        probs = np.asarray(xml_corpus.span_probabilities(arrays[RAW + f"{name}_logits"], mask))
        np.testing.assert_allclose(probs, arrays[f"infer/{name}_probs"], rtol=1e-5, atol=1e-7)
        assert (probs[~mask] == 0).all()


def _predictions(arrays, meta, nms_threshold):
    config = dataclasses.replace(_config(meta), nms_threshold=nms_threshold)
    videos = arrays["infer/video_global_idx"].astype(np.int64)
    own = np.searchsorted(videos, arrays["infer/gt_video_global_idx"])
    assert (videos[own] == arrays["infer/gt_video_global_idx"]).all()
    return xml_corpus.rank_predictions(
        arrays[RAW + "q2ctx_scores"],
        arrays[RAW + "st_logits"],
        arrays[RAW + "ed_logits"],
        _clip_mask(arrays),
        _rule(meta),
        config,
        own_slot=own,
        videos=videos,
    )


def test_submission_lists(xml_golden):
    arrays, meta = _load(xml_golden)
    for tag in _tags(arrays):
        threshold = None if tag == "no_nms" else float(tag[len("nms") :])
        got = _predictions(arrays, meta, threshold)
        tasks = [t for t in vcmr.TASKS if f"submission/{tag}/{t}/length" in arrays]
        for task in tasks:
            prefix = f"submission/{tag}/{task}/"
            length, pred = arrays[prefix + "length"], got[task]
            np.testing.assert_array_equal(pred.length, length, err_msg=f"{tag} {task} length")
            for q, n in enumerate(length):
                where = f"{tag} {task} query {q}"
                np.testing.assert_array_equal(
                    pred.video_idx[q, :n], arrays[prefix + "video_idx"][q, :n], err_msg=where
                )
                np.testing.assert_array_equal(
                    pred.st_ed[q, :n].astype(np.float32),
                    arrays[prefix + "st_ed"][q, :n],
                    err_msg=where,
                )
                np.testing.assert_allclose(
                    pred.score[q, :n], arrays[prefix + "score"][q, :n], rtol=1e-4, err_msg=where
                )


def test_metrics(xml_golden):
    arrays, meta = _load(xml_golden)
    types = {q["desc_id"]: q["type"] for q in meta["corpus"]["queries"]}
    desc_id = arrays["infer/desc_id"].tolist()
    gt = vcmr.TvrGroundTruth(
        desc_id,
        arrays["infer/gt_video_global_idx"],
        arrays["infer/gt_ts"],
        desc_type=[vcmr.DESC_TYPES.index(types[d]) for d in desc_id],
    )
    for tag in _tags(arrays):
        threshold = None if tag == "no_nms" else float(tag[len("nms") :])
        results = vcmr.evaluate_predictions(_predictions(arrays, meta, threshold), gt)
        prefix = f"metrics/{tag}/"
        metrics = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        assert metrics, f"no {prefix}* numbers"
        for key, value in metrics.items():
            group, name = key.split("/")
            assert np.float32(results[group][name]) == value, (tag, key)
        official = meta["results"].get("metrics_" + tag.replace(".", "_"), {})
        for group, values in official.items():
            for name, value in values.items():
                got = results[group][name]
                same = got == value or (got != got and value != value)  # NaN: an empty type
                assert same, (tag, group, name, got, value)
