"""Random features in a benchmark's official layouts, for a dry run without the real files.

``vmr-jax data fake --dataset D --features F --data_dir A [--output_dir OUT]`` reads the
annotations in ``A`` and writes, under ``OUT`` (default ``data/fake_features/<D>-<F>`` in the
current directory, never the annotation folder) and with the official file names of the
manifest, one random ``float32 [T, D]`` array per annotated video (and per query for TVR's
query tokens): ``T = max(1, round(duration * clips_per_second))`` clips, or
``ceil(duration / clip_seconds)`` for fixed-length clips.  Layouts: HDF5 files, ``.npy``
folders, and HERO's LMDB databases (uncompressed msgpack values, ``__keys__`` and
``id2nframe.json``; :func:`~data_pipelines.lmdb_store.write_hero_db`).
``vmr-jax data build --data_dir OUT --annotation_dir A`` then runs exactly as on the real
files, so a user can check a set-up (and ``vmr-jax bench --data-only`` can time the pipeline)
before the downloads finish.  The values are seeded Gaussians: nothing is learnable from them.

Word-level subtitles (``--subtitle_words``, TVR): the token h5 in TVRetrieval's layout
(``f[vid] float32 [N, 768]``, ``f[vid + "-lengths"] int16 [n]``) and, unless a sentence file
is already there (the real one with the annotations, or one given or faked before: never
overwritten), ``OUT/tvqa_preprocessed_subtitles.jsonl``
(``{"vid_name", "sub": [{"text", "start", "end"}]}`` per annotated video): sentence ``i``
spans ``[3 i, min(3 i + 2.5, duration)]`` seconds for ``i < ceil(duration / 3)``, with 2..8
made-up words.  Each sentence has one token per whitespace-separated word of its text, so
the lengths can be checked by hand; with an existing sentence file the tokens follow its texts.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import numpy as np

from data_pipelines.build import Sources, feature_keys, parse_splits
from data_pipelines.lmdb_store import write_hero_db
from data_pipelines.subtitles import read_subtitle_jsonl

SENTENCE_EVERY_S = 3.0  # a fake sentence starts every 3 s and lasts 2.5 s
SENTENCE_SECONDS = 2.5


def num_fake_clips(duration_s: float, clip_seconds: float | None, clips_per_second: float) -> int:
    if clip_seconds:
        return max(1, math.ceil(duration_s / clip_seconds - 1e-9))
    return max(1, round(duration_s * clips_per_second))


def write_fake_features(
    sources: Sources,
    splits: Sequence[str] | None = None,
    clips_per_second: float = 1.0,
    seed: int = 0,
) -> dict[str, str]:
    """Writes every feature file of ``sources`` (paths in ``sources.feature_paths``, and the
    word-level subtitle files when ``sources.subtitle_word_paths`` is set)."""
    import h5py

    annotations, _ = parse_splits(sources, splits)
    rng = np.random.default_rng(seed)
    written = {}
    for role, path in sources.feature_paths.items():
        spec = getattr(sources.features, role)
        lengths: dict[str, int] = {}
        for anns in annotations.values():
            for a, key in zip(anns, feature_keys(sources, anns, role)):
                if role == "query":
                    lengths[key] = max(1, min(30, len(a.query_text.split())))
                else:
                    lengths[key] = num_fake_clips(a.duration_s, spec.clip_seconds, clips_per_second)
        if spec.layout == "npy":
            os.makedirs(path, exist_ok=True)
            for key, n in lengths.items():
                np.save(os.path.join(path, key + ".npy"), _rows(rng, n, spec.dim))
        elif spec.layout == "hdf5":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with h5py.File(path, "w") as f:
                for key, n in lengths.items():
                    if spec.hdf5_dataset:
                        f.create_group(key)[spec.hdf5_dataset] = _rows(rng, n, spec.dim)
                    else:
                        f[key] = _rows(rng, n, spec.dim)
        elif spec.layout == "lmdb":
            write_hero_db(path, {key: _rows(rng, n, spec.dim) for key, n in lengths.items()})
        else:
            raise ValueError(f"cannot fake the {spec.layout!r} layout")
        written[role] = path
    if sources.subtitle_word_paths is not None:
        written.update(_write_subtitle_words(sources, annotations, rng))
    return written


def fake_sentences(duration_s: float, rng: np.random.Generator) -> list[dict]:
    """The fake subtitle sentences of one video (module docstring)."""
    out = []
    for i in range(math.ceil(duration_s / SENTENCE_EVERY_S - 1e-9)):
        start = SENTENCE_EVERY_S * i
        words = [f"w{k}" for k in rng.integers(0, 1000, size=int(rng.integers(2, 9)))]
        end = min(start + SENTENCE_SECONDS, duration_s)
        out.append({"text": " ".join(words), "start": start, "end": end})
    return out


def _write_subtitle_words(sources, annotations, rng) -> dict[str, str]:
    """The subtitle jsonl (unless a real one is there) and the token h5 (module docstring)."""
    import h5py

    paths = sources.subtitle_word_paths
    durations: dict[str, float] = {}
    for anns in annotations.values():
        for a in anns:
            durations.setdefault(a.video_id, a.duration_s)
    written = {}
    if os.path.isfile(paths["sentences"]):  # never overwrite a sentence file: follow it
        texts = {
            vid: [text for _, _, text in sentences]
            for vid, (_, sentences) in read_subtitle_jsonl(paths["sentences"]).items()
        }
    else:
        os.makedirs(os.path.dirname(os.path.abspath(paths["sentences"])), exist_ok=True)
        texts = {}
        with open(paths["sentences"], "w", encoding="utf-8") as f:
            for vid, duration in durations.items():
                subs = fake_sentences(duration, rng)
                texts[vid] = [s["text"] for s in subs]
                f.write(json.dumps({"vid_name": vid, "sub": subs}) + "\n")
        written["subtitle_sentences"] = paths["sentences"]
    dim = sources.features.subtitle_words.dim
    os.makedirs(os.path.dirname(os.path.abspath(paths["tokens"])), exist_ok=True)
    with h5py.File(paths["tokens"], "w") as f:
        for vid in durations:
            if not texts.get(vid):
                continue
            lengths = np.asarray([len(t.split()) for t in texts[vid]], np.int16)
            f[vid] = _rows(rng, int(lengths.sum()), dim)
            f[vid + "-lengths"] = lengths
    written["subtitle_tokens"] = paths["tokens"]
    return written


def _rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return rng.standard_normal((n, dim), dtype=np.float32)
