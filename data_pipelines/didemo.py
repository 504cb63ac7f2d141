"""DiDeMo (Hendricks et al., ICCV 2017): the LocalizingMoments release, 5-second chunks.

Annotation files (LisaAnne/LocalizingMoments ``data/{train,val,test}_data.json``, commit
b6a555c): a JSON list of queries ``{annotation_id, description, video, dl_link, num_segments,
times}``.  ``times`` holds one ``[start_chunk, end_chunk]`` pair per annotator (usually 4, a few
queries have 5 or 7), chunk indices 0..5 inclusive: chunk ``k`` covers ``[5k, 5(k+1)]`` seconds.
``num_segments`` (5 or 6) is how many chunks the video has (README: videos a little shorter than
25 s have five; longer videos were cut to 30 s for annotation).

Preprocessing rules (each with its source):

* ``query_id = str(annotation_id)``; ``video_id = video`` (the Flickr file name, also the key
  of ``average_fc7.h5``: ``extractVisualFeatures`` in ``utils/data_processing.py`` indexes the
  features by ``d['video']``).
* One span per annotator, in file order and with repeats kept: ``[5 * s, 5 * (e + 1)]``
  seconds (README "Annotations"; ``DidemoICCV17SS`` in TVRetrieval
  ``baselines/clip_alignment_with_language/local_utils/proposal.py`` maps the 21 chunk moments
  the same way).  The official evaluator (``utils/eval.py``: IoU on inclusive chunk indices,
  mean of the best 3 annotators) reads the raw pairs, kept in ``extras["times"]``, so several
  spans per query are needed only by time-based metrics.
* ``duration_s = 5 * num_segments``.  The release has no video lengths; the README says the last
  chunk is truncated at the video end, which the chunk grid cannot locate, so the duration is
  the end of the last existing chunk (30 s or 25 s).  A span whose end chunk lies past
  ``num_segments`` is clamped to the duration (``report.clip``) and one that starts past it is
  left out (``report.drop``; the query is dropped if no span is left).  Neither happens in val or
  test; the official code works in chunk indices and never checks them.
* Bad input raises :class:`~data_pipelines.annotations.DataError`: malformed JSON (line and
  column), a missing field or one of the wrong type, chunk indices outside 0..5 or an end chunk
  before the start chunk, ``num_segments`` outside 1..6, a repeated ``annotation_id``.  An empty
  description cannot make a record and is dropped (``report.drop``); none occurs in val or test.

Feature manifest (``FEATURES``):

================  ===========================================  ======  ==================
name              extractor                                    dim     clips
================  ===========================================  ======  ==================
fc7               VGG fc7 (ImageNet; MCN's RGB stream), frame  4096    six 5-s chunks
                  features averaged over each 5-s chunk                (``[6, 4096]``)
resnet_slowfast   ResNet-152 (ImageNet, 2048) + SlowFast       4352    1.5-s clips
                  (Kinetics, 2304), concatenated (HERO)
================  ===========================================  ======  ==================

* ``fc7``: ``average_fc7.h5``, HDF5, dataset ``f[video]`` of shape ``[6, 4096]`` for every video
  (``make_average_video_dict.py``, the script of the re-extracted release, fills
  ``zeros((30 / 5, D))`` chunk by chunk, so a video with five chunks keeps an all-zero sixth
  row; ``feature_process_context`` tests ``np.sum(features[5]) > 0`` to tell).  Stored
  unnormalised; the MCN loader mean-pools the rows of a moment and L2-normalises the pooled
  vector (eps 1e-5, ``feature_process_norm``).
  Downloaded by ``download/get_models.sh`` (people.eecs.berkeley.edu/~lisa_anne/didemo/data/,
  now the README's Google Drive folder).
* ``resnet_slowfast``: HERO ``video_db/didemo/resnet_slowfast_1.5`` (LMDB, read by
  :class:`~data_pipelines.lmdb_store.LmdbStore`; ``scripts/download_didemo.sh``,
  ``config/train-didemo_video_only-4gpu.json``: ``vfeat_version`` resnet_slowfast,
  ``vfeat_interval`` 1.5, ``compressed_db`` false, ``max_clip_len`` 20).  Stored and read
  unnormalised (``VideoFeatLmdb.__getitem__``); HERO keeps the first 20 clips (30 s).  HERO keys
  the database by video name; that these names equal the LocalizingMoments ``video`` field is an
  assumption this repository could not check (the database is not in any code snapshot).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.annotations import (
    Annotation,
    DataError,
    ParseReport,
    check_unique_ids,
    load_json_text,
)
from data_pipelines.benchmarks import FeatureSet, FeatureSpec

NAME = "didemo"
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train_data.json",),
    "val": ("val_data.json",),
    "test": ("test_data.json",),
}
CHUNK_SECONDS = 5.0
NUM_CHUNKS = 6  # chunk indices 0..5; videos were cut to 30 s for annotation

FEATURES: dict[str, FeatureSet] = {
    "fc7": FeatureSet(
        video=FeatureSpec(
            file="average_fc7.h5",
            layout="hdf5",
            dim=4096,
            extractor=(
                "VGG fc7 (ImageNet; the MCN paper's RGB stream), frame features averaged per "
                "5-s chunk"
            ),
            clip="5-s chunks, always 6 rows (all-zero sixth row for 5-chunk videos)",
            normalisation=(
                "stored raw; MCN mean-pools the chunks of a moment and L2-normalises the pooled "
                "vector (eps 1e-5, utils/data_processing.py feature_process_norm)"
            ),
            source=(
                "LisaAnne/LocalizingMoments download/get_models.sh "
                "(people.eecs.berkeley.edu/~lisa_anne/didemo/data/average_fc7.h5; README's "
                "Google Drive)"
            ),
            key_format="{video_id}",
            clip_seconds=CHUNK_SECONDS,
        )
    ),
    "resnet_slowfast": FeatureSet(
        video=FeatureSpec(
            file="video_db/didemo/resnet_slowfast_1.5",
            layout="lmdb",
            dim=4352,
            extractor="ResNet-152 ImageNet (2048) + SlowFast Kinetics (2304), concatenated",
            clip="1.5-s clips; HERO keeps the first 20 (max_clip_len)",
            normalisation="none (HERO data/data.py VideoFeatLmdb reads the raw features)",
            source=(
                "linjieli222/HERO scripts/download_didemo.sh (video_db/didemo.tar), "
                "config/train-didemo_video_only-4gpu.json"
            ),
            key_format="{video_id}",
            clip_seconds=1.5,
        )
    ),
}

_REQUIRED = ("annotation_id", "description", "video", "num_segments", "times")


def chunk_span_seconds(start_chunk: int, end_chunk: int) -> tuple[float, float]:
    """Seconds ``[5 * start, 5 * (end + 1)]`` of an inclusive chunk pair (README)."""
    return CHUNK_SECONDS * start_chunk, CHUNK_SECONDS * (end_chunk + 1)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _load_list(path: Path) -> list:
    if not path.is_file():
        raise DataError(str(path), None, None, "no such annotation file")
    data = load_json_text(path)
    if not isinstance(data, list):
        raise DataError(str(path), None, None, f"expected a JSON list, got {type(data).__name__}")
    return data


def _check_times(times: Any, source: str, where: str) -> list[list[int]]:
    """The annotators' chunk pairs, validated: a non-empty list of ``[s, e]``, 0 <= s <= e <= 5."""
    if not isinstance(times, list) or not times:
        raise DataError(
            source, where, "times", f"expected a non-empty list of pairs, got {times!r}"
        )
    pairs = []
    for j, pair in enumerate(times):
        if not isinstance(pair, list) or len(pair) != 2 or not all(_is_int(c) for c in pair):
            raise DataError(
                source,
                where,
                f"times[{j}]",
                f"expected [start_chunk, end_chunk] ints, got {pair!r}",
            )
        start, end = pair
        if not (0 <= start < NUM_CHUNKS and 0 <= end < NUM_CHUNKS):
            raise DataError(
                source, where, f"times[{j}]", f"chunk index outside 0..{NUM_CHUNKS - 1}: {pair}"
            )
        if end < start:
            raise DataError(source, where, f"times[{j}]", f"end chunk before start chunk: {pair}")
        pairs.append([start, end])
    return pairs


def _parse_record(
    record: Any, k: int, source: str, split: str, report: ParseReport
) -> Annotation | None:
    where = f"record {k}"
    if not isinstance(record, dict):
        raise DataError(source, where, None, f"expected an object, got {type(record).__name__}")
    for name in _REQUIRED:
        if name not in record:
            raise DataError(source, where, name, "missing")
    annotation_id = record["annotation_id"]
    if not _is_int(annotation_id):
        raise DataError(source, where, "annotation_id", f"expected an int, got {annotation_id!r}")
    where = f"record {k} (annotation_id {annotation_id})"
    query_id = str(annotation_id)
    video = record["video"]
    if not isinstance(video, str) or not video:
        raise DataError(source, where, "video", f"expected a non-empty string, got {video!r}")
    description = record["description"]
    if not isinstance(description, str):
        raise DataError(source, where, "description", f"expected a string, got {description!r}")
    num_segments = record["num_segments"]
    if not _is_int(num_segments) or not 1 <= num_segments <= NUM_CHUNKS:
        raise DataError(
            source,
            where,
            "num_segments",
            f"expected an int in 1..{NUM_CHUNKS}, got {num_segments!r}",
        )
    times = _check_times(record["times"], source, where)
    if not description.strip():
        report.drop(split, "empty description", source, where, query_id)
        return None

    duration = CHUNK_SECONDS * num_segments
    spans = []
    for j, (start_chunk, end_chunk) in enumerate(times):
        start, end = chunk_span_seconds(start_chunk, end_chunk)
        if start >= duration:
            report.drop(
                split,
                "annotator span starts after the last chunk (num_segments)",
                source,
                f"{where}, times[{j}]",
                query_id,
            )
            continue
        if end > duration:
            report.clip(
                split,
                "annotator span ends after the last chunk (clamped to 5 * num_segments)",
                source,
                f"{where}, times[{j}]",
                query_id,
            )
            end = duration
        spans.append((start, end))
    if not spans:
        report.drop(split, "no annotator span inside the video", source, where, query_id)
        return None
    return Annotation(
        query_id=query_id,
        video_id=video,
        duration_s=duration,
        spans_s=np.asarray(spans, dtype=np.float64),
        query_text=description,
        extras={"annotation_id": annotation_id, "times": times, "num_segments": num_segments},
    )


def parse_split(
    annotation_dir: str | os.PathLike, split: str, report: ParseReport
) -> list[Annotation]:
    """The queries of ``split`` (``train``, ``val`` or ``test``) as annotations, in file order."""
    if split not in SPLITS:
        raise ValueError(f"unknown DiDeMo split {split!r}; known: {sorted(SPLITS)}")
    path = Path(annotation_dir) / SPLITS[split][0]
    source = str(path)
    records = _load_list(path)
    annotations = []
    for k, record in enumerate(records):
        annotation = _parse_record(record, k, source, split, report)
        if annotation is not None:
            annotations.append(annotation)
    check_unique_ids(annotations, source)
    report.kept(split, len(annotations))
    return annotations
