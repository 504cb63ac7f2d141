"""A learnable, seeded synthetic single-video moment retrieval benchmark (no files).

World (fixed by the seed): a vocabulary of ``vocab_size`` made-up words -- ``verb<i>``,
``noun<i>``, ``adj<i>`` and filler words ``w<i>`` -- and ``num_event_types`` event types,
each a distinct (verb, noun) pair drawn from a small verb x noun grid so that types share
words (``verb1 noun2`` and ``verb1 noun0``).  Every event type and every attribute (``adj<i>``)
owns a random unit direction in the ``feature_dim`` video feature space; every word owns a
random ``word_dim`` vector (the token-feature table).

Video: ``T`` native clips of ``clip_seconds`` each (``T`` uniform in ``[min_clips, max_clips]``),
features ``noise_std * N(0, 1) + background`` (one random offset per video, ``background_std``)
plus ``min_events..max_events`` non-overlapping planted events at random positions, each of
``event_frac * T`` clips (``event_frac`` uniform in ``[min_event_frac, max_event_frac]``):
over its clips ``event_strength * direction(type) + attribute_strength * direction(adj)`` is
added.  The first event's companions are distractors of other types, except that with
probability ``confusable_prob`` the second one is *confusable*: it shares words with the first
(same type with another adjective, or a type with the same verb or the same noun), so reading
a single word of the query is not enough.  (type, adjective) pairs are unique in a video.

Query: describes one planted event: its verb, adjective and noun (in that order) with filler
words around them, ``min_query_words..max_query_words`` words in all; its span is the event's
``[first clip start, last clip end]`` in seconds.  Queries of a video target its events in a
random order (cycling if ``queries_per_video`` exceeds the events).  Text variants: the word
string ``query_text`` (for the 'tokens' mode and GloVe-style lookups) and
``query_token_features [L, word_dim]`` = word table rows + ``token_noise_std * N(0, 1)`` (the
'features' mode).  With ``subtitles=True``, ``subtitle_features [T, word_dim]`` carry, during
half of the events, the mean vector of the event's verb and noun, plus noise.

Subtitle sentences (``subtitle_sentences=True``, with ``subtitles``; for Cascaded MPN): timed
sentences made of words, some events visible only in them, the clip-level
``subtitle_features`` derived from them: :mod:`data_pipelines.synthetic_sentences`.

Corpus mode (``num_scenes > 0``, for video corpus moment retrieval): every video also has a
*scene* (``scene<i>`` words, drawn uniformly from ``num_scenes``) whose random unit direction is
added to all of its clips with weight ``scene_strength`` (and, with subtitles, the scene word's
vector to every subtitle clip, as character names recur in TVR subtitles); every query names its
video's scene as a fourth word, so the query picks its video out of a corpus (the events alone
recur across videos).  Scene draws use their own random streams, so ``num_scenes = 0`` (the
default) gives exactly the single-video benchmark above.  ``evaluation.chance.vcmr_chance_level``
gives the VCMR recall of random retrieval.

Semantic role tree (:class:`SyntheticTreeParser`, ``config.data.semantic_tree='synthetic'``):
the query grammar gives the parse without spaCy -- the verb word is the root predicate, the
adjective an ``amod`` of the noun (one noun phrase: its span runs from the adjective to the noun,
fillers between included), the noun its object and the scene word a second argument (``obl``);
fillers hang off the verb as ``dep`` and are in no node.

Splits: videos are shuffled by the seed and cut by ``split_fractions`` into train / val / test
(disjoint videos); a video's content depends only on (seed, video index), never on the split.

Chance levels of this benchmark (a model that ranks its candidates at random): the exact
formulas of :mod:`vmr_jax.evaluation.chance`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from data_pipelines.records import Record
from data_pipelines.subtitle_batches import pool_clip_subtitles
from data_pipelines.synthetic_sentences import grow_sentences
from vmr_jax.text.semantic_tree import Parse

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Sizes of the synthetic benchmark (``config.data.synthetic`` fields, same names)."""

    num_videos: int = 400
    queries_per_video: int = 4
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    min_clips: int = 48
    max_clips: int = 128
    clip_seconds: float = 1.0
    feature_dim: int = 32
    word_dim: int = 32
    vocab_size: int = 64
    num_event_types: int = 12
    num_attributes: int = 4
    min_events: int = 2
    max_events: int = 4
    confusable_prob: float = 0.5
    min_event_frac: float = 0.08
    max_event_frac: float = 0.35
    event_strength: float = 1.0
    attribute_strength: float = 0.5
    noise_std: float = 0.5
    background_std: float = 0.3
    min_query_words: int = 5
    max_query_words: int = 10
    token_noise_std: float = 0.1
    subtitles: bool = False
    num_scenes: int = 0
    scene_strength: float = 1.0
    subtitle_sentences: bool = False
    subtitle_only_fraction: float = 0.25
    max_sentence_clips: int = 4
    max_sentence_fillers: int = 2
    subtitle_gap_prob: float = 0.3

    def __post_init__(self):
        checks = [
            (self.num_videos >= 1, "num_videos >= 1"),
            (self.queries_per_video >= 1, "queries_per_video >= 1"),
            (len(self.split_fractions) == 3, "split_fractions has 3 entries"),
            (abs(sum(self.split_fractions) - 1) < 1e-6, "split_fractions sum to 1"),
            (1 <= self.min_clips <= self.max_clips, "1 <= min_clips <= max_clips"),
            (1 <= self.min_events <= self.max_events, "1 <= min_events <= max_events"),
            (0 < self.min_event_frac <= self.max_event_frac <= 1, "0 < event fracs <= 1"),
            (self.max_events * self.min_event_frac <= 1, "max_events * min_event_frac <= 1"),
            (self.num_event_types >= 2, "num_event_types >= 2"),
            (self.num_attributes >= 1, "num_attributes >= 1"),
            (3 <= self.min_query_words <= self.max_query_words, "3 <= min/max_query_words"),
            (self.num_scenes >= 0, "num_scenes >= 0"),
            (not self.num_scenes or self.min_query_words >= 4, "min_query_words >= 4 with scenes"),
            (self.vocab_size >= self.num_content_words + 1, "vocab_size > content words"),
            (self.subtitles or not self.subtitle_sentences, "subtitles with subtitle_sentences"),
            (0 <= self.subtitle_only_fraction <= 1, "0 <= subtitle_only_fraction <= 1"),
            (self.max_sentence_clips >= 1, "max_sentence_clips >= 1"),
            (self.max_sentence_fillers >= 0, "max_sentence_fillers >= 0"),
            (0 <= self.subtitle_gap_prob < 1, "0 <= subtitle_gap_prob < 1"),
        ]
        failed = [rule for ok, rule in checks if not ok]
        if failed:
            raise ValueError(f"invalid SyntheticSpec {self}: need {', '.join(failed)}")

    @property
    def grid(self) -> tuple[int, int]:
        """(verbs, nouns) of the event-type grid."""
        verbs = math.ceil(math.sqrt(self.num_event_types))
        return verbs, math.ceil(self.num_event_types / verbs)

    @property
    def num_content_words(self) -> int:
        verbs, nouns = self.grid
        return verbs + nouns + self.num_attributes


def spec_from_config(cfg: Mapping[str, Any] | None = None) -> SyntheticSpec:
    """``SyntheticSpec`` from ``config.data.synthetic`` (ConfigDict or dict; unknown keys raise)."""
    if cfg is None:
        return SyntheticSpec()
    fields = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    if "split_fractions" in fields:
        fields["split_fractions"] = tuple(fields["split_fractions"])
    known = {f.name for f in dataclasses.fields(SyntheticSpec)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown config.data.synthetic fields {unknown}; known: {sorted(known)}")
    return SyntheticSpec(**fields)


@dataclasses.dataclass(frozen=True)
class World:
    """Seed-fixed lexicon, event types and directions shared by every video."""

    words: list[str]  # the synthetic vocabulary; index = word id in the token-feature table
    type_words: np.ndarray  # int [E, 2]: (verb id, noun id) of every event type
    attribute_words: np.ndarray  # int [M]: word id of every adjective
    filler_words: np.ndarray  # int [F]
    type_directions: np.ndarray  # f32 [E, D] unit rows
    attribute_directions: np.ndarray  # f32 [M, D] unit rows
    word_table: np.ndarray  # f32 [vocab_size + num_scenes, word_dim]
    scene_words: np.ndarray  # int [S]: word id of every scene (empty without scenes)
    scene_directions: np.ndarray  # f32 [S, D] unit rows

    def describe(self, query_text: str) -> tuple[int, int]:
        """(event type, attribute) named by a synthetic query."""
        ids = {w: i for i, w in enumerate(self.words)}
        present = {ids[w] for w in query_text.split()}
        types = [t for t, (v, n) in enumerate(self.type_words) if v in present and n in present]
        attrs = [a for a, w in enumerate(self.attribute_words) if w in present]
        if len(types) != 1 or len(attrs) != 1:
            raise ValueError(f"not a synthetic query: {query_text!r}")
        return types[0], attrs[0]


class SyntheticTreeParser:
    """Parses synthetic queries by their grammar (module docstring); other text is an error."""

    name = "synthetic"
    version = "synthetic grammar 1"
    _ROLES = {"verb": ("VERB", "ROOT"), "adj": ("ADJ", "amod"), "noun": ("NOUN", "dobj"),
              "scene": ("NOUN", "obl")}  # fmt: skip

    def parse_query(self, text: str) -> Parse:
        words = text.split()
        kinds = [re.fullmatch(r"(verb|adj|noun|scene)\d+", w) for w in words]
        kinds = [m.group(1) if m else "filler" for m in kinds]
        at = {k: [i for i, x in enumerate(kinds) if x == k] for k in self._ROLES}
        if any(len(at[k]) != 1 for k in ("verb", "adj", "noun")) or len(at["scene"]) > 1:
            raise ValueError(f"not a synthetic query (one verb, adj, noun): {text!r}")
        verb, noun = at["verb"][0], at["noun"][0]
        pos, deps, heads = [], [], []
        for kind in kinds:
            p, d = self._ROLES.get(kind, ("X", "dep"))
            pos.append(p)
            deps.append(d)
            heads.append({"verb": -1, "adj": noun}.get(kind, verb))
        return Parse.from_words(words, pos, deps, heads)

    def parse(self, texts: Sequence[str]) -> list[Parse]:
        return [self.parse_query(t) for t in texts]


def _unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_world(spec: SyntheticSpec, seed: int) -> World:
    rng = np.random.default_rng([seed, 0])
    verbs, nouns = spec.grid
    words = (
        [f"verb{i}" for i in range(verbs)]
        + [f"noun{i}" for i in range(nouns)]
        + [f"adj{i}" for i in range(spec.num_attributes)]
    )
    words += [f"w{i}" for i in range(spec.vocab_size - len(words))]
    # Scene words come after the vocabulary and draw from their own stream, so the rest of
    # the world does not depend on num_scenes.
    words += [f"scene{i}" for i in range(spec.num_scenes)]
    cells = rng.choice(verbs * nouns, size=spec.num_event_types, replace=False)
    type_words = np.stack([cells // nouns, verbs + cells % nouns], axis=1).astype(np.int32)
    attribute_words = np.arange(verbs + nouns, spec.num_content_words, dtype=np.int32)
    filler_words = np.arange(spec.num_content_words, spec.vocab_size, dtype=np.int32)
    scene_words = np.arange(spec.vocab_size, len(words), dtype=np.int32)
    scene_rng = np.random.default_rng([seed, 3])
    return World(
        words=words,
        type_words=type_words,
        attribute_words=attribute_words,
        filler_words=filler_words,
        type_directions=_unit_rows(rng, spec.num_event_types, spec.feature_dim),
        attribute_directions=_unit_rows(rng, spec.num_attributes, spec.feature_dim),
        word_table=np.concatenate(
            [
                rng.normal(size=(spec.vocab_size, spec.word_dim)),
                scene_rng.normal(size=(spec.num_scenes, spec.word_dim)),
            ]
        ).astype(np.float32),
        scene_words=scene_words,
        scene_directions=_unit_rows(scene_rng, spec.num_scenes, spec.feature_dim),
    )


def _place_events(rng: np.random.Generator, spec: SyntheticSpec, num_clips: int) -> np.ndarray:
    """Non-overlapping event clip ranges ``int [K, 2]`` (start, stop), random order."""
    count = int(rng.integers(spec.min_events, spec.max_events + 1))
    fracs = rng.uniform(spec.min_event_frac, spec.max_event_frac, size=count)
    lengths = np.maximum(1, np.round(fracs * num_clips)).astype(np.int64)
    while lengths.sum() > num_clips:
        lengths = lengths[:-1]
    free = num_clips - int(lengths.sum())
    gaps = np.sort(rng.integers(0, free + 1, size=len(lengths)))
    starts = gaps + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ranges = np.stack([starts, starts + lengths], axis=1)
    return ranges[rng.permutation(len(ranges))]


def _choose_labels(rng: np.random.Generator, spec: SyntheticSpec, world: World, count: int):
    """(type, attribute) of each event: first random, one confusable or distractors."""
    num_types, num_attrs = spec.num_event_types, spec.num_attributes
    labels = [(int(rng.integers(num_types)), int(rng.integers(num_attrs)))]
    if count >= 2 and rng.random() < spec.confusable_prob:
        t0, a0 = labels[0]
        shared = set(world.type_words[t0].tolist())
        candidates = [
            (t, a)
            for t in range(num_types)
            for a in range(num_attrs)
            if (t, a) != (t0, a0) and shared & set(world.type_words[t].tolist())
        ]
        labels.append(candidates[int(rng.integers(len(candidates)))])
    while len(labels) < count:
        used_types = {t for t, _ in labels}
        others = [t for t in range(num_types) if t not in used_types] or list(range(num_types))
        label = (others[int(rng.integers(len(others)))], int(rng.integers(num_attrs)))
        if label not in labels:
            labels.append(label)
    return labels


def make_video(spec: SyntheticSpec, world: World, seed: int, video_index: int) -> list[Record]:
    """The records (queries) of one synthetic video; depends only on (seed, video_index)."""
    rng = np.random.default_rng([seed, 1, video_index])
    num_clips = int(rng.integers(spec.min_clips, spec.max_clips + 1))
    dim = spec.feature_dim
    features = spec.noise_std * rng.normal(size=(num_clips, dim))
    features += spec.background_std * rng.normal(size=(1, dim))
    ranges = _place_events(rng, spec, num_clips)
    labels = _choose_labels(rng, spec, world, len(ranges))
    # Sentences draw from their own stream: without them every other draw is unchanged.
    sentence_rng = np.random.default_rng([seed, 5, video_index])
    subtitle_only = np.zeros(len(ranges), bool)
    if spec.subtitle_sentences:
        subtitle_only = sentence_rng.random(len(ranges)) < spec.subtitle_only_fraction
    for (start, stop), (etype, attr), hidden in zip(ranges, labels, subtitle_only):
        if hidden:  # subtitle-only: no visual signal at all
            continue
        features[start:stop] += spec.event_strength * world.type_directions[etype]
        features[start:stop] += spec.attribute_strength * world.attribute_directions[attr]

    subtitles = None
    said = np.zeros(len(ranges), bool)
    if spec.subtitles:
        subtitles = spec.token_noise_std * rng.normal(size=(num_clips, spec.word_dim))
        said = np.asarray([rng.random() < 0.5 for _ in ranges], bool)
        for (start, stop), (etype, _), spoken in zip(ranges, labels, said):
            if spoken:
                subtitles[start:stop] += world.word_table[world.type_words[etype]].mean(0)
        subtitles = subtitles.astype(np.float32)

    # Scenes draw from their own stream: without them every other draw is unchanged.
    scene_rng = np.random.default_rng([seed, 4, video_index])
    scene = int(scene_rng.integers(spec.num_scenes)) if spec.num_scenes else -1
    video_id = f"syn{video_index:05d}"
    words = None
    if spec.subtitle_sentences:
        words = grow_sentences(
            spec, world, sentence_rng, video_id, num_clips, ranges, labels,
            said | subtitle_only, subtitle_only, scene,
        )  # fmt: skip
        subtitles = pool_clip_subtitles(words, num_clips, spec.clip_seconds)
    if scene >= 0:
        features += spec.scene_strength * world.scene_directions[scene]
        if subtitles is not None:
            subtitles += world.word_table[world.scene_words[scene]]

    features = features.astype(np.float32)  # one array shared by the video's records
    step = spec.clip_seconds
    clip_times = np.stack([np.arange(num_clips), np.arange(1, num_clips + 1)], 1) * step
    clip_times = clip_times.astype(np.float32)
    duration = num_clips * step
    order = rng.permutation(len(ranges))
    records = []
    for q in range(spec.queries_per_video):
        event = order[q % len(order)]
        etype, attr = labels[event]
        verb, noun = world.type_words[etype]
        length = int(rng.integers(spec.min_query_words, spec.max_query_words + 1))
        ids = rng.choice(world.filler_words, size=length)
        slots = np.sort(rng.choice(length, size=3, replace=False))
        ids[slots] = [verb, world.attribute_words[attr], noun]
        if scene >= 0:
            free = np.setdiff1d(np.arange(length), slots)
            ids[free[scene_rng.integers(len(free))]] = world.scene_words[scene]
        token_features = world.word_table[ids] + spec.token_noise_std * rng.normal(
            size=(length, spec.word_dim)
        )
        start, stop = ranges[event]
        extras = {}
        if words is not None:
            extras["type"] = "t" if subtitle_only[event] else ("vt" if said[event] else "v")
        records.append(
            Record(
                query_id=f"{video_id}_q{q}",
                video_id=video_id,
                duration_s=duration,
                spans_s=np.array([[start * step, stop * step]]),
                query_text=" ".join(world.words[i] for i in ids),
                video_features=features,
                clip_times=clip_times,
                query_token_features=token_features,
                subtitle_features=subtitles,
                subtitle_words=words,
                extras=extras,
            )
        )
    return records


def split_videos(spec: SyntheticSpec, seed: int) -> dict[str, np.ndarray]:
    """Disjoint sorted video indices of each split."""
    order = np.random.default_rng([seed, 2]).permutation(spec.num_videos)
    counts = [round(f * spec.num_videos) for f in spec.split_fractions[:2]]
    bounds = np.cumsum([0, *counts, spec.num_videos - sum(counts)])
    out = {}
    for k, name in enumerate(SPLITS):
        out[name] = np.sort(order[bounds[k] : bounds[k + 1]])
        if spec.split_fractions[k] > 0 and len(out[name]) == 0:
            raise ValueError(f"split {name!r} has no video: raise num_videos ({spec.num_videos})")
    return out


def make_splits(
    spec: SyntheticSpec, seed: int, splits: Sequence[str] = SPLITS
) -> dict[str, list[Record]]:
    """Records of the requested splits: ``{split: [Record, ...]}`` in video then query order."""
    world = make_world(spec, seed)
    videos = split_videos(spec, seed)
    out = {}
    for name in splits:
        if name not in videos:
            raise KeyError(f"unknown split {name!r}; known: {SPLITS}")
        out[name] = [r for v in videos[name] for r in make_video(spec, world, seed, int(v))]
    return out
