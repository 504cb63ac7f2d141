"""ActivityNet Captions for moment retrieval, as 2D-TAN and MGPN read it.

Files (2D-TAN ``data/ActivityNet``; 2D-TAN renamed the captions' ``val_1.json`` to
``val.json`` and ``val_2.json`` to ``test.json``): one JSON object keyed by ``"v_<youtube id>"``
-> ``{"duration": s, "timestamps": [[start_s, end_s], ...], "sentences": [...]}``.

Preprocessing, exactly as ``lib/datasets/activitynet.py`` (``ActivityNet.__init__``) of
microsoft/2D-TAN at 2f7410f0de5e764ac7d84817f173732ef34e1545 (Huntersxsx/MGPN's copy is the
same), for every video in file order and every ``(timestamp, sentence)`` pair of it:

1. ``timestamp[0] < timestamp[1]`` is tested on the raw values first; a pair failing it is
   dropped (reported as ``"start >= end: dropped"``; 4 train pairs, 2 of them zero-length).
2. Kept pairs are clamped to the video: ``[max(start, 0), min(end, duration)]``; each clamp
   is reported (``"end beyond video duration: clipped to duration"``: 261 train / 134 val /
   111 test; ``"start before 0: clamped to 0"``: none in the official files).
3. ``duration`` is the record's ``duration`` field; the sentence is kept as written (this
   module strips surrounding whitespace, which the reference's whitespace tokenisation
   ignores anyway).

Kept queries: train 37,417 (37,421 - 4) on 10,009 videos, val 17,505 on 4,917, test 17,031
on 4,885.  ``query_id`` is ``"<video key>#<k>"``, ``k`` the 0-based index of the sentence in
its record (stable whatever is dropped); ``video_id`` is the record key itself
(``"v_..."``), the key of the feature file too.

Where the reference code would crash or silently misbehave this module raises
:class:`~data_pipelines.annotations.DataError` naming the file, the record
(``record 'v_x' sentence 3``) and the field: a missing or mistyped field, ``timestamps`` and
``sentences`` of different lengths (``zip`` would drop the extras), NaN/inf or non-numeric
times, a non-positive duration, an empty sentence, a span still inverted after clamping
(a start beyond the duration), a repeated JSON key.

Feature manifest (``FEATURES``):

=========  ==========================================================================
set        ``c3d``
file       ``sub_activitynet_v1-3.c3d.hdf5``, group ``f["v_<id>"]``, dataset
           ``"c3d_features"`` ``[T, 500]``
extractor  C3D (Sports-1M) fc7, reduced to 500 dimensions by PCA: the ActivityNet
           Challenge 2016 release
clips      16-frame C3D clips every 8 frames; the loader resamples them to 256 clips
           assuming they evenly cover ``[0, duration]``
norm.      L2 per clip at load (``F.normalize(features, dim=1)``, ``DATASET.NORMALIZE:
           True`` in every 2D-TAN and MGPN ActivityNet config); stored raw
source     2D-TAN ``data/ActivityNet/download.sh`` (``activitynet_v1-3.part-00..05`` from
           the ActivityNet Challenge 2016 server, concatenated and unzipped); read by
           ``get_video_features`` of both repositories, used by 2D-TAN
           ``experiments/activitynet/2D-TAN-64x64-K9L4-{pool,conv}.yaml`` and MGPN
           ``experiments/activitynet/mgpn{256,512}.yaml`` (``VIS_INPUT_TYPE: c3d``)
=========  ==========================================================================
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.annotations import (
    Annotation,
    DataError,
    ParseReport,
    check_unique_ids,
    json_error,
)
from data_pipelines.benchmarks import FeatureSet, FeatureSpec

NAME = "activitynet"
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train.json",),
    "val": ("val.json",),  # ActivityNet Captions val_1
    "test": ("test.json",),  # ActivityNet Captions val_2
}

FEATURES: dict[str, FeatureSet] = {
    "c3d": FeatureSet(
        video=FeatureSpec(
            file="sub_activitynet_v1-3.c3d.hdf5",
            layout="hdf5",
            dim=500,
            extractor="C3D (Sports-1M) fc7, PCA to 500 dims (ActivityNet Challenge 2016)",
            clip="16-frame clips every 8 frames",
            normalisation="L2 per clip at load (F.normalize(dim=1), DATASET.NORMALIZE: True)",
            source=(
                "ActivityNet Challenge 2016 C3D features via 2D-TAN "
                "data/ActivityNet/download.sh; 2D-TAN and MGPN ActivityNet configs"
            ),
            key_format="{video_id}",
            hdf5_dataset="c3d_features",
        )
    )
}

DROP_START_NOT_BEFORE_END = "start >= end: dropped"
CLIP_END = "end beyond video duration: clipped to duration"
CLIP_START = "start before 0: clamped to 0"

# (where, record) -> (duration_s, time units per second of the record's timestamps)
VideoTiming = Callable[[str, dict], tuple[float, float]]


def split_path(module_splits: dict[str, tuple[str, ...]], annotation_dir, split: str) -> Path:
    """The annotation file of ``split`` (the first name of ``module_splits[split]``)."""
    if split not in module_splits:
        raise ValueError(f"unknown split {split!r}; known: {sorted(module_splits)}")
    path = Path(annotation_dir) / module_splits[split][0]
    if not path.is_file():
        raise DataError(str(path), None, None, f"no such annotation file (split {split!r})")
    return path


def load_caption_json(path: str | os.PathLike) -> dict[str, Any]:
    """The top-level ``{video key: record}`` object of a captions-layout JSON file.

    A repeated key (which ``json.load`` would silently overwrite) raises :class:`DataError`.
    """

    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise DataError(str(path), f"key {key!r}", None, "appears twice in one object")
            out[key] = value
        return out

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise DataError(str(path), None, None, f"not UTF-8 text: {err}") from err
    try:
        data = json.loads(text, object_pairs_hook=no_repeats)
    except json.JSONDecodeError as err:
        raise json_error(str(path), text, err) from err
    if not isinstance(data, dict):
        raise DataError(
            str(path), None, None, f"expected an object keyed by video, got {type(data).__name__}"
        )
    return data


def number_field(record: dict, name: str, source: str, where: str) -> float:
    """``record[name]`` as a finite number (JSON int or float, not bool)."""
    if name not in record:
        raise DataError(source, where, name, "missing")
    return finite_number(record[name], source, where, name)


def finite_number(value: Any, source: str, where: str, field: str) -> float:
    """``value`` if it is a finite int/float (bools and strings are refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(source, where, field, f"expected a number, got {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer beyond the float range
        finite = False
    if not finite:
        raise DataError(source, where, field, f"not finite: {value!r}")
    return value


def _list_field(record: dict, name: str, source: str, where: str) -> list:
    if name not in record:
        raise DataError(source, where, name, "missing")
    value = record[name]
    if not isinstance(value, list):
        raise DataError(source, where, name, f"expected a list, got {type(value).__name__}")
    return value


def caption_annotations(
    path: str | os.PathLike,
    split: str,
    report: ParseReport,
    videos: dict[str, Any],
    timing: VideoTiming,
) -> list[Annotation]:
    """Annotations of a captions-layout file with 2D-TAN's drop-then-clamp rule.

    Shared by ActivityNet Captions (seconds) and 2D-TAN's TACoS files (frames): ``timing``
    returns a record's duration in seconds and the number of timestamp units per second
    (1 for seconds, ``fps`` for frames); times are divided by it as the reference does.
    """
    source = str(path)
    annotations: list[Annotation] = []
    for video, record in videos.items():
        where = f"record {video!r}"
        if not video:
            raise DataError(source, where, None, "empty video key")
        if not isinstance(record, dict):
            raise DataError(source, where, None, f"expected an object, got {record!r}")
        duration, units_per_second = timing(where, record)
        timestamps = _list_field(record, "timestamps", source, where)
        sentences = _list_field(record, "sentences", source, where)
        if len(timestamps) != len(sentences):
            raise DataError(
                source,
                where,
                "timestamps",
                f"{len(timestamps)} timestamps but {len(sentences)} sentences (the reference "
                "code's zip would silently drop the extras)",
            )
        for k, (pair, sentence) in enumerate(zip(timestamps, sentences, strict=True)):
            annotation = _caption_query(
                source, split, report, video, k, pair, sentence, duration, units_per_second
            )
            if annotation is not None:
                annotations.append(annotation)
    check_unique_ids(annotations, source)
    report.kept(split, len(annotations))
    return annotations


def _caption_query(
    source: str,
    split: str,
    report: ParseReport,
    video: str,
    k: int,
    pair: Any,
    sentence: Any,
    duration: float,
    units_per_second: float,
) -> Annotation | None:
    where = f"record {video!r} sentence {k}"
    query_id = f"{video}#{k}"
    if not isinstance(pair, list) or len(pair) != 2:
        raise DataError(source, where, "timestamps", f"expected [start, end], got {pair!r}")
    raw_start = finite_number(pair[0], source, where, "timestamps")
    raw_end = finite_number(pair[1], source, where, "timestamps")
    if not isinstance(sentence, str):
        raise DataError(source, where, "sentences", f"expected a string, got {sentence!r}")
    text = sentence.strip()
    if not text:
        raise DataError(source, where, "sentences", "empty sentence")
    if not raw_start < raw_end:  # the reference tests the raw values, before clamping
        report.drop(split, DROP_START_NOT_BEFORE_END, source, where, query_id)
        return None
    start = raw_start / units_per_second
    end = raw_end / units_per_second
    if start < 0:
        report.clip(split, CLIP_START, source, where, query_id)
        start = 0.0
    if end > duration:
        report.clip(split, CLIP_END, source, where, query_id)
        end = duration
    if start > end:
        raise DataError(
            source,
            where,
            "timestamps",
            f"span [{start}, {end}] s is inverted after clamping to [0, duration {duration}] "
            "(start beyond the video); the reference code would keep it",
        )
    return Annotation(
        query_id=query_id,
        video_id=video,
        duration_s=float(duration),
        spans_s=np.array([[start, end]], dtype=np.float64),
        query_text=text,
    )


def parse_split(
    annotation_dir: str | os.PathLike, split: str, report: ParseReport
) -> list[Annotation]:
    """The queries of ``split`` (``train``/``val``/``test``) after 2D-TAN's preprocessing.

    See the module docstring for the rules; drops and clamps go to ``report``.
    """
    path = split_path(SPLITS, annotation_dir, split)
    source = str(path)

    def timing(where: str, record: dict) -> tuple[float, float]:
        duration = number_field(record, "duration", source, where)
        if duration <= 0:
            raise DataError(source, where, "duration", f"expected > 0, got {duration!r}")
        return float(duration), 1.0

    return caption_annotations(path, split, report, load_caption_json(path), timing)
