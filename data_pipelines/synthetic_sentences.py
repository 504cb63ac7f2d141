"""The synthetic benchmark's subtitle sentences (:mod:`data_pipelines.synthetic`, spec fields
``subtitle_sentences=True`` with ``subtitles``; for Cascaded MPN).

Each video gets timed sentences made of words (``Record.subtitle_words``, shared by its records).
A fraction ``subtitle_only_fraction`` of the events (drawn per event) are *subtitle-only*:
their clips get no event or attribute direction at all, only subtitle words.  Events that
have words: the subtitle-only ones and those drawn by the coin of the clip-level rule
(``subtitles=True``: half of the events).
The clips of such an event are tiled by sentences of ``1..max_sentence_clips`` clips that lie
inside it, each holding the event's verb and noun (and its adjective too when subtitle-only,
since nothing else tells the attribute), in that order, plus ``0..max_sentence_fillers``
filler words; the other clips get filler sentences (``1..max_sentence_fillers + 1`` fillers)
or, with probability ``subtitle_gap_prob`` per clip, silence.  With scenes every sentence
starts with the scene word (the speaker, as TVR's "Chase : ...").  A sentence over clips
``[a, b)`` runs from ``(a + u) * clip_seconds`` to ``(b - v) * clip_seconds``, ``u, v``
uniform in ``[0.05, 0.25)``, so under the coverage rule (``floor(st / c) .. ceil(ed / c) - 1``)
it covers exactly clips ``a .. b - 1`` and each clip is covered at most once.  Word features
are the word table rows plus ``token_noise_std * N(0, 1)``.  The clip-level
``subtitle_features`` that XML reads are *derived* from the sentences: the mean word of the
sentences covering the clip (0 where none;
:func:`data_pipelines.subtitle_batches.pool_clip_subtitles`) plus, with scenes, the scene
word's vector on every clip (the corpus-mode rule); so XML and Cascaded MPN see the same
information.  Every record's ``extras["type"]`` says what shows its event, in TVR's words:
``"t"`` subtitle-only, ``"vt"`` video and subtitle, ``"v"`` video only (the TVR evaluator
reports the metrics of each type).  Sentences draw from their own random stream and the coin
flips of the clip-level rule are drawn in both modes, so the queries, spans and every other
clip's features equal those of ``subtitle_sentences=False``: only the subtitle-only events'
clips lose their signal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from data_pipelines.records import SubtitleWords

if TYPE_CHECKING:
    from data_pipelines.synthetic import SyntheticSpec, World


def _sentence_words(rng, spec, world, content, scene) -> list[int]:
    """Word ids of one sentence: speaker, then ``content`` in order among filler words."""
    low = 0 if content else 1
    fillers = rng.choice(
        world.filler_words, size=int(rng.integers(low, low + spec.max_sentence_fillers + 1))
    )
    n = len(content) + len(fillers)
    ids = np.empty(n, np.int64)
    slots = np.sort(rng.choice(n, size=len(content), replace=False))
    ids[slots] = content
    ids[np.setdiff1d(np.arange(n), slots)] = fillers
    speaker = [int(world.scene_words[scene])] if scene >= 0 else []
    return speaker + ids.tolist()


def grow_sentences(
    spec: SyntheticSpec,
    world: World,
    rng: np.random.Generator,
    video_id: str,
    num_clips: int,
    ranges: np.ndarray,
    labels: Sequence[tuple[int, int]],
    has_words: np.ndarray,
    subtitle_only: np.ndarray,
    scene: int,
) -> SubtitleWords:
    """The timed sentences of one video (module docstring)."""
    event_at = np.full(num_clips, -1)
    for k, (start, stop) in enumerate(ranges):
        if has_words[k]:
            event_at[start:stop] = k
    step = spec.clip_seconds
    times, texts, ids, sentence_of = [], [], [], []
    clip = 0
    while clip < num_clips:
        event = int(event_at[clip])
        if event < 0 and rng.random() < spec.subtitle_gap_prob:
            clip += 1  # silence
            continue
        limit = clip
        while limit < num_clips and event_at[limit] == event:
            limit += 1
        stop = min(limit, clip + int(rng.integers(1, spec.max_sentence_clips + 1)))
        content = []
        if event >= 0:
            etype, attr = labels[event]
            verb, noun = (int(w) for w in world.type_words[etype])
            adj = int(world.attribute_words[attr])
            content = [verb, adj, noun] if subtitle_only[event] else [verb, noun]
        words = _sentence_words(rng, spec, world, content, scene)
        lead, tail = rng.uniform(0.05, 0.25, size=2)
        times.append([(clip + lead) * step, (stop - tail) * step])
        texts.append(" ".join(world.words[w] for w in words))
        sentence_of += [len(times) - 1] * len(words)
        ids += words
        clip = stop
    noise = spec.token_noise_std * rng.normal(size=(len(ids), spec.word_dim))
    return SubtitleWords(
        video_id=video_id,
        sentence_times=np.asarray(times, np.float64).reshape(-1, 2),
        sentence_text=tuple(texts),
        word_features=world.word_table[np.asarray(ids, np.int64)] + noise,
        word_sentence=np.asarray(sentence_of, np.int32),
    )
