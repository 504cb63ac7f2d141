"""Synthetic benchmark: determinism, disjoint splits, planted events, chance levels."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from data_pipelines import synthetic
from data_pipelines.synthetic import SyntheticSpec, make_splits, make_world
from vmr_jax.evaluation import chance as chance_levels
from vmr_jax.evaluation.chance import chance_level

SMALL = SyntheticSpec(num_videos=30, queries_per_video=3)


def flat(splits):
    return [r for name in synthetic.SPLITS for r in splits[name]]


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = make_splits(SMALL, 5), make_splits(SMALL, 5), make_splits(SMALL, 6)
    for ra, rb in zip(flat(a), flat(b), strict=True):
        assert (ra.query_id, ra.query_text, ra.duration_s) == (
            rb.query_id,
            rb.query_text,
            rb.duration_s,
        )
        np.testing.assert_array_equal(ra.video_features, rb.video_features)
        np.testing.assert_array_equal(ra.spans_s, rb.spans_s)
        np.testing.assert_array_equal(ra.query_token_features, rb.query_token_features)
    assert [r.query_text for r in flat(a)] != [r.query_text for r in flat(c)]


def test_splits_are_disjoint_videos_and_sized():
    splits = make_splits(SMALL, 0)
    videos = {name: {r.video_id for r in recs} for name, recs in splits.items()}
    assert [len(videos[n]) for n in synthetic.SPLITS] == [24, 3, 3]
    assert not (videos["train"] & videos["val"] or videos["train"] & videos["test"])
    assert not videos["val"] & videos["test"]
    assert all(len(recs) == 3 * len(videos[n]) for n, recs in splits.items())
    ids = [r.query_id for r in flat(splits)]
    assert len(set(ids)) == len(ids)


def test_video_does_not_depend_on_split_assignment():
    spec = dataclasses.replace(SMALL, split_fractions=(0.5, 0.25, 0.25))
    a = {r.query_id: r for r in flat(make_splits(SMALL, 1))}
    b = {r.query_id: r for r in flat(make_splits(spec, 1))}
    assert a.keys() == b.keys()
    for qid, r in a.items():
        assert r.query_text == b[qid].query_text
        np.testing.assert_array_equal(r.video_features, b[qid].video_features)


def test_records_respect_spec_ranges():
    spec = SMALL
    for r in flat(make_splits(spec, 2)):
        t = r.num_clips
        assert spec.min_clips <= t <= spec.max_clips
        assert r.duration_s == t * spec.clip_seconds
        np.testing.assert_array_equal(r.clip_times[:, 0], np.arange(t) * spec.clip_seconds)
        start, end = r.spans_s[0]
        assert 0 <= start < end <= r.duration_s
        assert spec.min_query_words <= len(r.query_text.split()) <= spec.max_query_words
        assert r.query_token_features.shape == (len(r.query_text.split()), spec.word_dim)
        assert r.video_features.shape == (t, spec.feature_dim)


def test_subtitles_follow_the_video():
    spec = dataclasses.replace(SMALL, subtitles=True)
    for r in make_splits(spec, 0, splits=("val",))["val"]:
        assert r.subtitle_features.shape == (r.num_clips, spec.word_dim)
    assert make_splits(SMALL, 0, splits=("val",))["val"][0].subtitle_features is None


def test_planted_event_is_exactly_at_the_span_without_noise():
    # With no noise and no background a clip holds exactly the sum of its planted vectors:
    # the query's (type, attribute) vector inside the span, zero or another event outside.
    spec = dataclasses.replace(SMALL, noise_std=0.0, background_std=0.0)
    world = make_world(spec, 3)
    for r in flat(make_splits(spec, 3)):
        etype, attr = world.describe(r.query_text)
        planted = (
            spec.event_strength * world.type_directions[etype]
            + spec.attribute_strength * world.attribute_directions[attr]
        )
        lo, hi = (r.spans_s[0] / spec.clip_seconds).round().astype(int)
        x = r.video_features
        np.testing.assert_allclose(
            x[lo:hi], np.broadcast_to(planted, (hi - lo, spec.feature_dim)), atol=1e-6
        )
        outside = np.concatenate([x[:lo], x[hi:]])
        assert not np.any(np.all(np.abs(outside - planted) < 1e-6, axis=1))
        if lo > 0:  # the event starts exactly at the span start
            assert np.any(np.abs(x[lo - 1] - planted) > 1e-6)


def test_event_stands_out_of_the_noise():
    spec = SyntheticSpec(num_videos=20)
    world = make_world(spec, 0)
    margins = []
    for r in flat(make_splits(spec, 0)):
        etype, _ = world.describe(r.query_text)
        proj = r.video_features @ world.type_directions[etype]
        lo, hi = r.spans_s[0].astype(int)
        inside = proj[lo:hi].mean()
        outside = np.median(np.concatenate([proj[:lo], proj[hi:]]))
        margins.append(inside - outside)
    margins = np.asarray(margins)
    assert margins.mean() > 0.8 * spec.event_strength
    assert (margins > 0.3 * spec.event_strength).mean() > 0.95


def test_queries_of_an_event_share_its_words():
    # Group queries by the planted vector at their span (noise-free): same vector <=> same
    # event type and attribute <=> the same content (non-filler) words.
    spec = dataclasses.replace(SMALL, noise_std=0.0, background_std=0.0)
    groups = {}
    for r in flat(make_splits(spec, 4)):
        lo = int(r.spans_s[0, 0])
        key = tuple(np.round(r.video_features[lo], 5))
        content = tuple(w for w in r.query_text.split() if not w.startswith("w"))
        groups.setdefault(key, set()).add(content)
    assert len(groups) > 10
    assert all(len(contents) == 1 for contents in groups.values())
    words = [next(iter(c)) for c in groups.values()]
    assert all(len(w) == 3 and w[0].startswith("verb") and w[2].startswith("noun") for w in words)
    assert len(set(words)) == len(words)


def test_videos_hold_confusable_and_distractor_events():
    spec = SyntheticSpec(num_videos=60, queries_per_video=4)
    world = make_world(spec, 0)
    by_video = {}
    for r in flat(make_splits(spec, 0)):
        by_video.setdefault(r.video_id, {})[tuple(r.spans_s[0])] = world.describe(r.query_text)
    sharing, distracted = 0, 0
    for events in by_video.values():
        labels = list(events.values())
        assert len(set(labels)) == len(labels) >= spec.min_events
        words = [set(world.type_words[t].tolist()) for t, _ in labels]
        pairs = [(i, j) for i in range(len(labels)) for j in range(i)]
        sharing += any(words[i] & words[j] for i, j in pairs)
        distracted += any(labels[i][0] != labels[j][0] for i, j in pairs)
    # confusable_prob = 0.5, plus distractors that share a verb or a noun by chance
    assert sharing / len(by_video) > 0.5
    assert distracted / len(by_video) > 0.9


def test_spec_from_config_rejects_unknown_fields():
    assert synthetic.spec_from_config({"num_videos": 9, "split_fractions": [0.4, 0.3, 0.3]}) == (
        SyntheticSpec(num_videos=9, split_fractions=(0.4, 0.3, 0.3))
    )
    with pytest.raises(ValueError, match="num_vidoes"):
        synthetic.spec_from_config({"num_vidoes": 9})
    with pytest.raises(ValueError, match="vocab_size"):
        SyntheticSpec(vocab_size=5)


def test_chance_level_hand_computed():
    # N = 2, offsets {0, 1}: cells [0, .5], [0, 1], [.5, 1]; ground truth [0, .5].
    # IoUs 1, .5, 0 -> R@1: IoU > .5 in 1/3 of cells, IoU > .3 in 2/3.
    # NMS .45 (pairwise IoUs .5, 0, .5): first pick [0,1] suppresses both others -> top set
    # {[0,1]}; any other first pick keeps {[0,.5], [.5,1]}.  R@2,IoU>.5 = 2/3, R@2,IoU>.3 = 1.
    got = chance_level(
        np.array([[0.0, 5.0]]), np.array([10.0]), 2, (1,), 0.45, (0.3, 0.5), (1, 2), 6000, 0
    )
    assert got["R@1,IoU=0.5"] == pytest.approx(1 / 3)
    assert got["R@1,IoU=0.3"] == pytest.approx(2 / 3)
    assert got["R@2,IoU=0.5"] == pytest.approx(2 / 3, abs=0.03)
    assert got["R@2,IoU=0.3"] == 1.0


def official_style_random_recall(spans, durations, num_clips, mask, n, m, trials, rng):
    """Random scores -> sort -> greedy NMS over the sorted list (eval.py style) -> hit."""
    starts, ends = np.nonzero(mask)
    hits = 0
    for (gs, ge), dur in zip(spans, durations):
        times = np.stack([starts, ends + 1], 1) * dur / num_clips
        for _ in range(trials):
            order = np.argsort(-rng.random(len(times)))
            kept = []
            for i in order:
                s, e = times[i]
                ok = True
                for ks, ke in kept:
                    inter = max(0.0, min(e, ke) - max(s, ks))
                    if inter / ((e - s) + (ke - ks) - inter) > 0.45:
                        ok = False
                        break
                if ok:
                    kept.append((s, e))
                    if len(kept) == n:
                        break
            ious = [max(0.0, min(e, ge) - max(s, gs)) / (max(e, ge) - min(s, gs)) for s, e in kept]
            hits += any(i > m for i in ious)
    return hits / (len(spans) * trials)


def test_chance_level_matches_brute_force():
    from vmr_jax.ops.moment_map import valid_cell_mask

    rng = np.random.default_rng(0)
    durations = rng.uniform(20, 60, size=12)
    starts = rng.uniform(0, 0.6, size=12) * durations
    spans = np.stack([starts, starts + rng.uniform(0.1, 0.4, size=12) * durations], 1)
    mask = valid_cell_mask(16, (8, 4))
    got = chance_level(spans, durations, 16, (8, 4), 0.45, (0.5,), (1, 5), 4000, 1)
    for n in (1, 5):
        brute = official_style_random_recall(spans, durations, 16, mask, n, 0.5, 250, rng)
        assert got[f"R@{n},IoU=0.5"] == pytest.approx(brute, abs=0.03)


def test_docstring_chance_levels_are_what_chance_level_computes():
    table = re.findall(r"^(R@\d)\s+([\d.]+)\s+([\d.]+)$", chance_levels.__doc__, re.MULTILINE)
    documented = {}
    for recall, at05, at07 in table:
        documented[f"{recall},IoU=0.5"] = float(at05)
        documented[f"{recall},IoU=0.7"] = float(at07)
    assert documented == chance_levels.CHANCE_LEVEL

    setting = dict(chance_levels.CHANCE_SETTING)
    spec = SyntheticSpec(num_videos=setting.pop("num_videos"))
    records = flat(make_splits(spec, setting.pop("seed")))
    assert len(records) == 8000
    spans = np.stack([r.spans_s[0] for r in records])
    durations = np.array([r.duration_s for r in records])
    got = chance_level(spans, durations, **setting)
    for key, value in documented.items():
        assert got[key] == pytest.approx(value, abs=5e-5), key


# --------------------------------------------------------------------------- corpus mode
def test_scenes_name_the_video_and_leave_the_single_video_benchmark_unchanged():
    plain = synthetic.SyntheticSpec(num_videos=12, min_clips=20, max_clips=30)
    scenes = dataclasses.replace(plain, num_scenes=5)
    a = synthetic.make_splits(plain, seed=3)["train"]
    b = synthetic.make_splits(scenes, seed=3)["train"]
    world = synthetic.make_world(scenes, seed=3)
    scene_names = {world.words[i] for i in world.scene_words}
    assert len(scene_names) == 5
    video_scene = {}
    for ra, rb in zip(a, b, strict=True):
        # Same events and spans; the scene word replaces one filler word.
        np.testing.assert_array_equal(ra.spans_s, rb.spans_s)
        wa, wb = ra.query_text.split(), rb.query_text.split()
        changed = [k for k in range(len(wa)) if wa[k] != wb[k]]
        assert len(changed) <= 1 and len(wa) == len(wb)
        named = [w for w in wb if w in scene_names]
        assert len(named) == 1
        assert video_scene.setdefault(rb.video_id, named[0]) == named[0]
        # Scene offset: a constant vector added to every clip of the video.
        diff = rb.video_features - ra.video_features
        np.testing.assert_allclose(diff, np.broadcast_to(diff[0], diff.shape), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(diff[0]), 1.0, rtol=1e-5)


def test_vcmr_chance_level_by_hand():
    # Two videos of 4 one-second clips; XML candidates with 2 <= j - i < 3: [0, 3] and [1, 4]
    # in each video, N = 4.  GT [0, 3] in video 0: IoU 1 with [0, 3], 2/4 with [1, 4].
    chance = chance_levels.vcmr_chance_level(
        np.array([[0.0, 3.0]]),
        np.array([0]),
        np.array([4, 4]),
        clip_seconds=1.0,
        min_pred_l=2,
        max_pred_l=3,
        recalls=(1, 2),
    )
    assert chance["VCMR"]["0.5-r1"] == pytest.approx(50.0)  # 2 hits of 4
    assert chance["VCMR"]["0.7-r1"] == pytest.approx(25.0)  # 1 hit of 4
    assert chance["VCMR"]["0.7-r2"] == pytest.approx(50.0)  # 1 - C(3,2)/C(4,2)
    assert chance["VCMR"]["0.5-r2"] == pytest.approx(100 * (1 - 1 / 6))  # 1 - C(2,2)/C(4,2)
    assert chance["SVMR"]["0.7-r1"] == pytest.approx(50.0)
    assert chance["SVMR"]["0.7-r2"] == pytest.approx(100.0)
    assert chance["VR"] == {"r1": 50.0, "r2": 100.0}


def test_vcmr_chance_level_matches_random_rankings():
    # Independent check: shuffle the whole candidate list many times.
    rng = np.random.default_rng(0)
    clips = np.array([6, 9, 7])
    spans = np.array([[1.5, 6.0], [0.0, 3.0], [4.5, 9.0]])
    owner = np.array([0, 1, 2])
    chance = chance_levels.vcmr_chance_level(spans, owner, clips, 1.5, 2, 5, (0.5,), (1, 3))
    cands = [
        (v, i * 1.5, (j + 1) * 1.5)
        for v, t in enumerate(clips)
        for i in range(t)
        for j in range(t)
        if 2 <= j - i < 5
    ]
    cands = np.array(cands)
    hits = np.zeros((3, 2))
    draws = 4000
    for _ in range(draws):
        order = cands[rng.permutation(len(cands))]
        for q, (span, v) in enumerate(zip(spans, owner)):
            inter = np.clip(
                np.minimum(order[:3, 2], span[1]) - np.maximum(order[:3, 1], span[0]), 0, None
            )
            union = np.maximum(order[:3, 2], span[1]) - np.minimum(order[:3, 1], span[0])
            hit = (order[:3, 0] == v) & (inter / union >= 0.5)
            hits[q] += [hit[0], hit.any()]
    expected = 100 * hits.mean(0) / draws
    assert chance["VCMR"]["0.5-r1"] == pytest.approx(expected[0], abs=1.0)
    assert chance["VCMR"]["0.5-r3"] == pytest.approx(expected[1], abs=2.0)
