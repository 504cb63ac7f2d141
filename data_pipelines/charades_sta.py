"""Charades-STA for moment retrieval, as 2D-TAN and MGPN read it.

Files (2D-TAN ``data/Charades-STA``): ``charades_sta_{split}.txt``, one query a line,
``<video id> <start s> <end s>##<sentence>``, and the Charades v1 metadata
``Charades_v1_{split}.csv`` whose ``length`` column is the video duration in seconds.  Splits:
``train`` and ``test`` (the reference code has no validation split for Charades-STA).

Preprocessing, exactly as ``lib/datasets/charades.py`` (``Charades.__init__``) of
microsoft/2D-TAN at 2f7410f0de5e764ac7d84817f173732ef34e1545 (Huntersxsx/MGPN's copy is the
same), line by line in file order:

1. ``duration = float(length)`` of the video's row in ``Charades_v1_{split}.csv``.
2. ``line.split("##")`` gives the span and the sentence; the sentence is cut at its first
   ``".\\n"`` (dropping the final period; this module also strips surrounding whitespace).
3. ``vid, start, end = span.split(" ")``; ``start`` is kept as written (no clamp at 0);
   ``end = min(end, duration)``.
4. The query is kept only if ``start < end`` AFTER that clip: dropped lines are reported as
   ``"start >= end after clipping the end to the video length: dropped"`` (4 train lines:
   8252, 8440, 9623, 9624; all have ``start >= end`` already in the file and 3 also end
   beyond the video).  Kept lines whose end exceeded the length are reported as
   ``"end beyond video length: clipped to length"`` (1,802 train, 562 test; the 1,805 train
   lines ending beyond the length include the 3 dropped ones).

Kept queries: train 12,404 of 12,408 lines on 5,336 videos; test 3,720 on 1,334 videos.
``query_id`` is ``"<split>-<line number>"`` (1-based line of the ``.txt`` file, so
``"test-1"`` is the first line of ``charades_sta_test.txt``): deterministic, unique, and it
does not move when other lines are dropped.

Where the reference code would crash or silently misbehave this module raises
:class:`~data_pipelines.annotations.DataError` naming the file, ``line N`` and the field: no
``"##"`` or several, not exactly three space-separated fields before it, non-numeric or
NaN/inf times, a negative start (the reference does not clamp it), an empty sentence, a
video missing from the CSV, a last line cut mid-record (no line end and no final ``.``: a
truncated file), and in the CSV a missing column, a repeated id or a non-numeric or
non-positive ``length``.

Feature manifest (``FEATURES``); every set is read whole per video and resampled to 256
clips assuming they evenly cover ``[0, duration]``, and L2-normalised per clip at load
(``F.normalize(features, dim=1)``; ``DATASET.NORMALIZE: True`` in every 2D-TAN and MGPN
Charades config), stored raw:

=========  =============================  =====  ===========================================
set        file (layout, key)             dim    extractor, clips, source
=========  =============================  =====  ===========================================
vgg        ``charades_vgg_rgb.hdf5``      4096   VGG16 fc7 of the RGB stream of the Charades
           (HDF5, ``f[vid]``)                    two-stream baseline
                                                 (``Charades_v1_features_rgb.tar.gz``), one
                                                 vector every 4th frame of the 24 fps video;
                                                 2D-TAN ``data/Charades-STA/download.sh`` +
                                                 ``convert_vgg_features_to_hdf5.py`` (videos
                                                 of ``valid_videos.txt``).  The converter
                                                 writes ``charades_vgg_rgb.hdf5``, which
                                                 MGPN reads (``vgg-mgpn256.yaml``,
                                                 ``VIS_INPUT_TYPE: charades_vgg_rgb``);
                                                 2D-TAN's loader reads
                                                 ``{VIS_INPUT_TYPE}_features.hdf5`` =
                                                 ``vgg_rgb_features.hdf5``
                                                 (``2D-TAN-16x16-K5L8-{pool,conv}.yaml``):
                                                 either name is found in ``--data_dir``.
i3d        ``I3D/finetune/<vid>.npy``     1024   I3D (RGB) fine-tuned on Charades; MGPN
           (directory of ``.npy``)               README's Box folder of the 2D-TAN authors,
                                                 ``i3d-finetune-mgpn{256,512}.yaml``
                                                 (``VIS_INPUT_TYPE: I3D/finetune``).  Clip
                                                 length not stated by MGPN (MS-2D-TAN's
                                                 config of its fine-tuned I3D set uses
                                                 16 frames at 25 fps, 0.64 s a feature).
c3d        ``c3d_features.hdf5``          4096   C3D (Sports-1M) fc6 of 16-frame clips; the
           (HDF5, ``f[vid]``)                    features of FVMR's Table 4 C3D rows, released
                                                 by neither FVMR nor 2D-TAN: the TACoS C3D
                                                 layout (one ``[T, 4096]`` dataset per video
                                                 id) under 2D-TAN's
                                                 ``{VIS_INPUT_TYPE}_features.hdf5`` name.
i3d_raw    ``I3D/raw/<vid>.npy``          1024   I3D (RGB) without Charades fine-tuning;
           (directory of ``.npy``)               same folder, ``i3d-raw-mgpn256.yaml``
                                                 (``VIS_INPUT_TYPE: I3D/raw``).
=========  =============================  =====  ===========================================
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from data_pipelines.annotations import (
    TRUNCATED,
    Annotation,
    DataError,
    ParseReport,
    check_unique_ids,
)
from data_pipelines.benchmarks import FeatureSet, FeatureSpec

NAME = "charades_sta"
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("charades_sta_train.txt", "Charades_v1_train.csv"),
    "test": ("charades_sta_test.txt", "Charades_v1_test.csv"),
}

_L2 = "L2 per clip at load (F.normalize(dim=1), DATASET.NORMALIZE: True)"
FEATURES: dict[str, FeatureSet] = {
    "vgg": FeatureSet(
        video=FeatureSpec(
            file="charades_vgg_rgb.hdf5",
            aliases=("vgg_rgb_features.hdf5",),
            layout="hdf5",
            dim=4096,
            extractor="VGG16 fc7, RGB stream of the Charades two-stream baseline",
            clip="one vector every 4th frame of the 24 fps video",
            normalisation=_L2,
            source=(
                "AI2 Charades_v1_features_rgb.tar.gz via 2D-TAN data/Charades-STA/download.sh "
                "+ convert_vgg_features_to_hdf5.py (writes charades_vgg_rgb.hdf5, MGPN's name)"
            ),
        )
    ),
    "i3d": FeatureSet(
        video=FeatureSpec(
            file="I3D/finetune",
            layout="npy",
            dim=1024,
            extractor="I3D (RGB) fine-tuned on Charades",
            clip="not stated by MGPN (MS-2D-TAN's fine-tuned I3D: 16 frames at 25 fps)",
            normalisation=_L2,
            source="MGPN README Box folder; experiments/charades/i3d-finetune-mgpn*.yaml",
        )
    ),
    "c3d": FeatureSet(
        video=FeatureSpec(
            file="c3d_features.hdf5",
            layout="hdf5",
            dim=4096,
            extractor="C3D (Sports-1M) fc6",
            clip="16-frame C3D clips, evenly covering the video (resampled to 256 clips)",
            normalisation=_L2,
            source=(
                "not released by FVMR or 2D-TAN: any C3D fc6 extraction of the Charades "
                "videos (the features of FVMR Table 4's C3D rows, CTRL/ACL/CBP), one HDF5 "
                "dataset [T, 4096] per video id, 2D-TAN's {VIS_INPUT_TYPE}_features.hdf5 name"
            ),
        )
    ),
    "i3d_raw": FeatureSet(
        video=FeatureSpec(
            file="I3D/raw",
            layout="npy",
            dim=1024,
            extractor="I3D (RGB), not fine-tuned on Charades",
            clip="not stated by MGPN",
            normalisation=_L2,
            source="MGPN README Box folder; experiments/charades/i3d-raw-mgpn256.yaml",
        )
    ),
}

DROP_START_NOT_BEFORE_END = "start >= end after clipping the end to the video length: dropped"
CLIP_END = "end beyond video length: clipped to length"


def read_durations(path: str | os.PathLike) -> dict[str, float]:
    """``{video id: length}`` from a ``Charades_v1_{split}.csv`` file (seconds, > 0)."""
    source = str(path)
    durations: dict[str, float] = {}
    lines: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for name in ("id", "length"):
                if reader.fieldnames is None or name not in reader.fieldnames:
                    raise DataError(source, "line 1", name, "missing column")
            for row in reader:
                where = f"line {reader.line_num}"
                video, text = row["id"], row["length"]
                if not video:
                    raise DataError(source, where, "id", "empty video id")
                if video in durations:
                    raise DataError(source, where, "id", f"{video!r} repeats line {lines[video]}")
                length = _seconds(text, source, where, "length")
                if length <= 0:
                    raise DataError(source, where, "length", f"expected > 0, got {text!r}")
                durations[video] = length
                lines[video] = reader.line_num
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(source, None, None, f"unreadable CSV: {err}") from err
    return durations


def _seconds(text: str | None, source: str, where: str, field: str) -> float:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(source, where, field, f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise DataError(source, where, field, f"not finite: {text!r}")
    return value


def parse_split(
    annotation_dir: str | os.PathLike, split: str, report: ParseReport
) -> list[Annotation]:
    """The queries of ``split`` (``train``/``test``) after 2D-TAN's preprocessing.

    See the module docstring for the rules; drops and clips go to ``report``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {sorted(SPLITS)}")
    query_path, csv_path = (Path(annotation_dir) / name for name in SPLITS[split])
    for path in (query_path, csv_path):
        if not path.is_file():
            raise DataError(str(path), None, None, f"no such annotation file (split {split!r})")
    durations = read_durations(csv_path)
    source = str(query_path)
    annotations: list[Annotation] = []
    try:
        # Text mode with universal newlines, as the reference opens it: "\r\n" reads as "\n".
        with open(query_path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError as err:
        raise DataError(source, None, None, f"not UTF-8 text: {err}") from err
    if lines:
        _check_last_line(lines[-1], len(lines), source)
    for number, line in enumerate(lines, start=1):
        annotation = _parse_line(line, number, split, source, durations, csv_path.name, report)
        if annotation is not None:
            annotations.append(annotation)
    check_unique_ids(annotations, source)
    report.kept(split, len(annotations))
    return annotations


def _check_last_line(line: str, number: int, source: str) -> None:
    """A file cut mid-record: its last line has no line end and is no complete record (every
    official line is ``<video> <start> <end>##<sentence>.`` and a line end)."""
    if line.endswith("\n") or (line.count("##") == 1 and line.rstrip().endswith(".")):
        return
    raise DataError(source, f"line {number}", None, f"{TRUNCATED}: {line!r} has no line end")


def _parse_line(
    line: str,
    number: int,
    split: str,
    source: str,
    durations: dict[str, float],
    csv_name: str,
    report: ParseReport,
) -> Annotation | None:
    where = f"line {number}"
    query_id = f"{split}-{number}"
    if line.count("##") != 1:
        raise DataError(
            source,
            where,
            None,
            f"expected '<video> <start> <end>##<sentence>', got {line.rstrip()!r}",
        )
    span, sentence = line.split("##")
    text = sentence.split(".\n")[0].strip()
    if not text:
        raise DataError(source, where, "sentence", "empty sentence")
    fields = span.split(" ")
    if len(fields) != 3:
        raise DataError(
            source,
            where,
            None,
            f"expected '<video> <start> <end>' (single spaces) before '##', got {span!r}",
        )
    video, start_text, end_text = fields
    start = _seconds(start_text, source, where, "start")
    end = _seconds(end_text, source, where, "end")
    if video not in durations:
        raise DataError(source, where, "video_id", f"{video!r} is not in {csv_name}")
    if start < 0:
        raise DataError(
            source, where, "start", f"negative start {start_text!r} (the reference keeps it)"
        )
    duration = durations[video]
    clipped_end = min(end, duration)
    if not start < clipped_end:  # the reference clips the end first, then tests
        report.drop(split, DROP_START_NOT_BEFORE_END, source, where, query_id)
        return None
    if end > duration:
        report.clip(split, CLIP_END, source, where, query_id)
    return Annotation(
        query_id=query_id,
        video_id=video,
        duration_s=duration,
        spans_s=np.array([[start, clipped_end]], dtype=np.float64),
        query_text=text,
    )
