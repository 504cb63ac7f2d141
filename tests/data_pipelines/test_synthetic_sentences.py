"""Synthetic subtitle sentences: they cover their events, subtitle-only events are invisible,
the clip-level subtitle features are the covering sentences' mean word, the rest unchanged.

Coverage here is the rule written out in the test (``floor(st / c) .. ceil(ed / c) - 1``), not
the library's function.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections
import numpy as np
import pytest

from data_pipelines import input_pipeline as ip
from data_pipelines.synthetic import SPLITS, SyntheticSpec, make_splits, make_world

SPEC = SyntheticSpec(
    num_videos=12,
    queries_per_video=4,  # >= max_events: every event of a video is some record's event
    min_clips=20,
    max_clips=40,
    subtitles=True,
    subtitle_sentences=True,
    num_scenes=3,
)


def flat(splits):
    return [r for name in SPLITS for r in splits[name]]


def covered_clips(start, end, clip):
    return range(math.floor(start / clip), math.ceil(end / clip))


def sentences_over(words, lo, hi, clip):
    """Indices of the sentences covering any clip of ``[lo, hi)``."""
    return [
        s
        for s, (start, end) in enumerate(words.sentence_times)
        if set(covered_clips(start, end, clip)) & set(range(lo, hi))
    ]


def span_clips(record, clip):
    lo, hi = np.round(record.spans_s[0] / clip).astype(int)
    return int(lo), int(hi)


def test_sentences_cover_their_events_with_its_words():
    world = make_world(SPEC, 0)
    clip = SPEC.clip_seconds
    kinds = set()
    for r in flat(make_splits(SPEC, 0)):
        words, kind = r.subtitle_words, r.extras["type"]
        kinds.add(kind)
        etype, attr = world.describe(r.query_text)
        verb, noun = (world.words[w] for w in world.type_words[etype])
        adj = world.words[world.attribute_words[attr]]
        lo, hi = span_clips(r, clip)
        over = sentences_over(words, lo, hi, clip)
        texts = [words.sentence_text[s].split() for s in over]
        if kind == "v":  # no subtitle: the sentences there are fillers (and the speaker)
            assert all(w.startswith(("w", "scene")) for t in texts for w in t)
            continue
        # Every clip of the event is covered, only by sentences inside it, naming the event.
        covered = {c for s in over for c in covered_clips(*words.sentence_times[s], clip)}
        assert covered == set(range(lo, hi))
        for t in texts:
            content = [w for w in t if not w.startswith(("w", "scene"))]
            assert content == ([verb, adj, noun] if kind == "t" else [verb, noun])
            assert t[0].startswith("scene") and t[0] == words.sentence_text[0].split()[0]
        # The words of those sentences are the word table rows of the text, plus noise.
        rows = np.isin(words.word_sentence, over)
        ids = [world.words.index(w) for t in texts for w in t]
        np.testing.assert_allclose(
            words.word_features[rows], world.word_table[ids], atol=6 * SPEC.token_noise_std
        )
    assert kinds == {"v", "t", "vt"}


def test_subtitle_only_events_have_no_visual_signal():
    # Without noise, background or scenes a clip holds exactly its event's planted vector:
    # zero for a subtitle-only event, the type and attribute directions for the others.
    spec = dataclasses.replace(SPEC, noise_std=0.0, background_std=0.0, num_scenes=0)
    world = make_world(spec, 1)
    seen = 0
    for r in flat(make_splits(spec, 1)):
        etype, attr = world.describe(r.query_text)
        lo, hi = span_clips(r, spec.clip_seconds)
        planted = (
            spec.event_strength * world.type_directions[etype]
            + spec.attribute_strength * world.attribute_directions[attr]
        )
        if r.extras["type"] == "t":
            seen += 1
            np.testing.assert_array_equal(r.video_features[lo:hi], 0.0)
        else:
            np.testing.assert_allclose(
                r.video_features[lo:hi], np.broadcast_to(planted, (hi - lo, 32)), atol=1e-6
            )
    assert seen


def test_only_the_subtitle_only_clips_differ_from_the_clip_level_world():
    # Same seed with and without sentences: queries, spans and every other clip identical;
    # the subtitle-only events' clips lack exactly the planted vector.
    plain = dataclasses.replace(SPEC, subtitle_sentences=False)
    world = make_world(SPEC, 2)
    hidden: dict[str, np.ndarray] = {}
    pairs = list(zip(flat(make_splits(plain, 2)), flat(make_splits(SPEC, 2)), strict=True))
    for a, b in pairs:
        assert (a.query_text, a.extras, a.subtitle_words) == (b.query_text, {}, None)
        np.testing.assert_array_equal(a.spans_s, b.spans_s)
        np.testing.assert_array_equal(a.query_token_features, b.query_token_features)
        mask = hidden.setdefault(b.video_id, np.zeros(b.num_clips, bool))
        if b.extras["type"] != "t":
            continue
        etype, attr = world.describe(b.query_text)
        lo, hi = span_clips(b, SPEC.clip_seconds)
        mask[lo:hi] = True
        planted = (
            SPEC.event_strength * world.type_directions[etype]
            + SPEC.attribute_strength * world.attribute_directions[attr]
        )
        np.testing.assert_allclose(
            a.video_features[lo:hi] - b.video_features[lo:hi],
            np.broadcast_to(planted, (hi - lo, 32)),
            atol=1e-5,
        )
    assert any(m.any() for m in hidden.values())
    for a, b in pairs:
        keep = ~hidden[b.video_id]
        np.testing.assert_array_equal(a.video_features[keep], b.video_features[keep])


def test_clip_subtitle_features_are_the_covering_sentences_mean_word():
    world = make_world(SPEC, 3)
    clip = SPEC.clip_seconds
    for r in make_splits(SPEC, 3, splits=("val",))["val"]:
        words = r.subtitle_words
        scene = world.word_table[world.words.index(words.sentence_text[0].split()[0])]
        for t in range(r.num_clips):
            over = [
                s
                for s, (start, end) in enumerate(words.sentence_times)
                if t in covered_clips(start, end, clip)
            ]
            rows = words.word_features[np.isin(words.word_sentence, over)]
            mean = rows.mean(0) if len(rows) else np.zeros(SPEC.word_dim)
            np.testing.assert_allclose(r.subtitle_features[t], mean + scene, atol=1e-5)


def test_subtitle_only_fraction_and_spec_checks():
    none = make_splits(dataclasses.replace(SPEC, subtitle_only_fraction=0.0), 0)
    every = make_splits(dataclasses.replace(SPEC, subtitle_only_fraction=1.0), 0)
    assert {r.extras["type"] for r in flat(none)} == {"v", "vt"}
    assert {r.extras["type"] for r in flat(every)} == {"t"}
    with pytest.raises(ValueError, match="subtitles with subtitle_sentences"):
        SyntheticSpec(subtitle_sentences=True)
    with pytest.raises(ValueError, match="0 <= subtitle_only_fraction <= 1"):
        dataclasses.replace(SPEC, subtitle_only_fraction=1.5)


def test_pipeline_batches_carry_the_sentences():
    cfg = ml_collections.ConfigDict(
        dict(
            name="synthetic",
            num_input_clips=40,
            clip_sampling="truncate",
            text_mode="features",
            max_query_len=10,
            subtitles=True,
            subtitle_words=True,
            max_subtitle_words=160,
            max_subtitle_sentences=40,
        )
    )
    records = make_splits(SPEC, 4, splits=("val",))["val"]
    split = ip.prepare_split(records, cfg, name="val")
    assert split.subtitle_summary["words_cut"] == 0 and split.subtitle_summary["sentences_cut"] == 0
    batch = ip.gather_batch(split, np.arange(len(records)))
    for q, r in enumerate(records):
        words = r.subtitle_words
        n = words.num_words
        np.testing.assert_array_equal(batch["subtitle_word_sentence"][q, :n], words.word_sentence)
        np.testing.assert_array_equal(batch["subtitle_word_features"][q, :n], words.word_features)
        # Each valid clip is covered by at most one sentence, the padding clips by none.
        cover = batch["subtitle_coverage"][q]
        assert cover[: r.num_clips].sum(1).max() <= 1 and not cover[r.num_clips :].any()
        assert cover.sum() == sum(
            len(covered_clips(s, e, SPEC.clip_seconds)) for s, e in words.sentence_times
        )
