"""TACoS for moment retrieval, with 2D-TAN's split and preprocessing.

Files (2D-TAN ``data/TACoS/{train,val,test}.json``): one JSON object keyed by the video file
name (``"s13-d21.avi"``) -> ``{"timestamps": [[start, end], ...]`` in FRAME indices,
``"sentences": [...], "fps": 29.4, "num_frames": n}`` -- the ActivityNet Captions layout with
frames (:func:`data_pipelines.activitynet.caption_annotations` parses both).

Preprocessing, exactly as ``lib/datasets/tacos.py`` (``TACoS.__init__``) of microsoft/2D-TAN
at 2f7410f0de5e764ac7d84817f173732ef34e1545 (Huntersxsx/MGPN's copy is the same), for every
video in file order and every ``(timestamp, sentence)`` pair of it:

1. ``duration = num_frames / fps``.
2. ``timestamp[0] < timestamp[1]`` is tested on the raw frame indices; a pair failing it is
   dropped (``"start >= end: dropped"``; none in the official files).
3. Kept pairs become seconds clamped to the video:
   ``[max(start / fps, 0), min(end / fps, duration)]``; each clamp is reported
   (``"end beyond video duration: clipped to duration"``: 43 train / 0 val / 5 test;
   ``"start before 0: clamped to 0"``: none).
4. The sentence is kept as written (surrounding whitespace stripped here; the reference's
   whitespace tokenisation ignores it).

Kept queries: train 9,790 on 75 videos, val 4,436 on 27, test 4,001 on 25.  ``query_id`` is
``"<video key>#<k>"`` (``k`` the 0-based index of the sentence in its record); ``video_id``
is the record key (``"s13-d21.avi"``), also the key of the feature file.  Bad input raises
:class:`~data_pipelines.annotations.DataError` as for ActivityNet (see that module), plus a
missing, non-numeric or non-positive ``fps``/``num_frames``.

Feature manifest (``FEATURES``):

=========  ==========================================================================
set        ``c3d``
file       ``tall_c3d_features.hdf5``, dataset ``f["s13-d21.avi"]`` ``[T, 4096]``
extractor  C3D (Sports-1M) fc6 of the TALL release
           (``Interval64_128_256_512_overlap0.8_c3d_fc6``)
clips      64-frame windows every 12 frames (``64 // 5``, 80 % overlap) at 29.4 fps, so
           ``T = (num_frames - 64) // 12 + 1``; the loader resamples them to 256 clips
           assuming they evenly cover ``[0, duration]``
norm.      L2 per clip at load (``F.normalize(features, dim=1)``, ``DATASET.NORMALIZE:
           True`` in every 2D-TAN and MGPN TACoS config); stored raw
source     the 2D-TAN README's Google Drive folder (built from the TALL features by
           2D-TAN ``data/TACoS/merge_npys_to_hdf5.py``, which names its output
           ``tall_c3d_64_features.hdf5``; the loaders read ``tall_c3d_features.hdf5``);
           MGPN's Box copy; used by 2D-TAN
           ``experiments/tacos/2D-TAN-128x128-K5L8-{pool,conv}.yaml`` and MGPN
           ``experiments/tacos/mgpn{256,512}.yaml`` (``VIS_INPUT_TYPE: c3d``)
=========  ==========================================================================
"""

from __future__ import annotations

import os

from data_pipelines.activitynet import (
    caption_annotations,
    load_caption_json,
    number_field,
    split_path,
)
from data_pipelines.annotations import Annotation, DataError, ParseReport
from data_pipelines.benchmarks import FeatureSet, FeatureSpec

NAME = "tacos"
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train.json",),
    "val": ("val.json",),
    "test": ("test.json",),
}

FEATURES: dict[str, FeatureSet] = {
    "c3d": FeatureSet(
        video=FeatureSpec(
            file="tall_c3d_features.hdf5",
            layout="hdf5",
            dim=4096,
            extractor="C3D (Sports-1M) fc6, TALL release",
            clip="64-frame windows every 12 frames (80% overlap) at 29.4 fps",
            normalisation="L2 per clip at load (F.normalize(dim=1), DATASET.NORMALIZE: True)",
            source=(
                "2D-TAN README Google Drive (data/TACoS/merge_npys_to_hdf5.py over the TALL "
                "c3d_fc6 windows); 2D-TAN and MGPN TACoS configs"
            ),
            key_format="{video_id}",
        )
    )
}


def parse_split(
    annotation_dir: str | os.PathLike, split: str, report: ParseReport
) -> list[Annotation]:
    """The queries of ``split`` (``train``/``val``/``test``) after 2D-TAN's preprocessing.

    See the module docstring for the rules; drops and clamps go to ``report``.
    """
    path = split_path(SPLITS, annotation_dir, split)
    source = str(path)

    def timing(where: str, record: dict) -> tuple[float, float]:
        fps = number_field(record, "fps", source, where)
        num_frames = number_field(record, "num_frames", source, where)
        for name, value in (("fps", fps), ("num_frames", num_frames)):
            if value <= 0:
                raise DataError(source, where, name, f"expected > 0, got {value!r}")
        return num_frames / fps, fps

    return caption_annotations(path, split, report, load_caption_json(path), timing)
