"""The benchmark registry and the contract every dataset module follows.

A dataset module ``data_pipelines/<dataset>.py`` defines:

* ``NAME``: the registry key (``charades_sta``, ``tacos``, ``activitynet``, ``didemo``, ``tvr``).
* ``SPLITS``: ``{split: (annotation file name, ...)}`` -- the official file names, looked up in
  the annotation directory.
* ``FEATURES``: ``{feature set name: FeatureSet}`` -- the feature manifest: extractor,
  dimension, clip length or stride, normalisation, file layout and where the reference code
  gets each file.  The module docstring repeats it for readers; ``vmr-jax data stats``
  prints it.
* ``parse_split(annotation_dir, split, report) -> list[Annotation]``: the official files of
  ``split`` with the reference code's preprocessing; drops and clips go to ``report``
  (:class:`~data_pipelines.annotations.ParseReport`), bad input raises
  :class:`~data_pipelines.annotations.DataError`.

Features of an annotation are looked up with ``FeatureSpec.key(annotation)``; their clip
times come from ``FeatureSpec.clip_times``.  A feature set with word-level subtitles (TVR,
for Cascaded MPN) declares them in ``FeatureSet.subtitle_words`` (:class:`SubtitleWordSpec`);
``vmr-jax data build --subtitle_words`` needs one.
"""

from __future__ import annotations

import dataclasses
import os
from types import ModuleType

import numpy as np

from data_pipelines.annotations import Annotation, fixed_clip_times, uniform_clip_times
from data_pipelines.feature_stores import open_store


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One official feature file (or directory) and how the reference code reads it.

    ``key_format`` builds the store key from an annotation: ``"{video_id}"``,
    ``"v_{video_id}"`` or ``"{desc_id}"`` (fields of the annotation and of its ``extras``).
    ``clip_seconds``: fixed clip length (TVR/HERO 1.5 s, DiDeMo fc7 5-s chunks); None when
    the clips evenly cover the video (the 2D-TAN datasets, whose loaders resample them).
    """

    file: str  # official file or directory name, relative to the data directory
    layout: str  # "hdf5" or "npy" (data_pipelines.feature_stores.STORES)
    dim: int
    extractor: str
    clip: str  # clip length / stride as the feature authors describe it
    normalisation: str
    source: str  # where the reference code gets the file
    key_format: str = "{video_id}"
    hdf5_dataset: str | None = None
    clip_seconds: float | None = None
    aliases: tuple[str, ...] = ()  # other official names of the same file, tried in order

    def locate(self, data_dir: str) -> str:
        """``data_dir/file``, or the first alias present there (default: ``file``)."""
        for name in (self.file, *self.aliases):
            if os.path.exists(os.path.join(data_dir, name)):
                return os.path.join(data_dir, name)
        return os.path.join(data_dir, self.file)

    def key(self, annotation: Annotation) -> str:
        fields = {"video_id": annotation.video_id, "query_id": annotation.query_id}
        fields.update({k: v for k, v in annotation.extras.items() if not isinstance(v, list)})
        return self.key_format.format(**fields)

    def open(self, path: str | os.PathLike, field: str = "video_features"):
        kwargs = {"dim": self.dim, "field": field}
        if self.hdf5_dataset is not None:
            kwargs["dataset"] = self.hdf5_dataset
        return open_store(self.layout, path, **kwargs)

    def clip_times(self, num_clips: int, duration_s: float) -> np.ndarray:
        if self.clip_seconds is None:
            return uniform_clip_times(num_clips, duration_s)
        return fixed_clip_times(num_clips, self.clip_seconds)

    def describe(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SubtitleWordSpec:
    """Word-level subtitles: timed sentences (a file with the annotations) and the token
    features of their words (a file with the features), aligned by
    :mod:`data_pipelines.subtitles`."""

    sentences: str  # official file name, looked up in the annotation directory
    tokens: str  # official file name, relative to the data directory
    dim: int
    extractor: str
    source: str

    def describe(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """The files a model reads for one benchmark: video features, plus TVR's subtitle
    features (per clip, keyed by video), query token features (keyed by query) and
    word-level subtitles (``subtitle_words``, read only on request)."""

    video: FeatureSpec
    subtitle: FeatureSpec | None = None
    query: FeatureSpec | None = None
    subtitle_words: SubtitleWordSpec | None = None

    def describe(self) -> dict:
        return {
            role: spec.describe()
            for role, spec in (
                ("video", self.video),
                ("subtitle", self.subtitle),
                ("query", self.query),
                ("subtitle_words", self.subtitle_words),
            )
            if spec is not None
        }


def _registry() -> dict[str, ModuleType]:
    from data_pipelines import activitynet, charades_sta, didemo, tacos, tvr

    return {m.NAME: m for m in (charades_sta, tacos, activitynet, didemo, tvr)}


def get_benchmark(name: str) -> ModuleType:
    """The dataset module registered as ``name``."""
    modules = _registry()
    if name not in modules:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(modules)}")
    return modules[name]


def benchmark_names() -> list[str]:
    return sorted(_registry())
