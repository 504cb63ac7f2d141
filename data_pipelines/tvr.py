"""TVR (Lei et al., ECCV 2020): jayleicn/TVRetrieval's release, 1.5-second clips.

Annotation files (jayleicn/TVRetrieval ``data/``, commit d99a9ea):

* ``tvr_{train,val}_release.jsonl``: one JSON object per line ``{desc_id (int), desc, vid_name,
  duration (s), ts [st, ed] (s), type in {v, t, vt}}``.
* ``tvr_test_public_release.jsonl``: ``{desc_id, desc}`` only (ground truth hidden; CodaLab).
* ``tvr_video2dur_idx.json``: ``{split: {vid_name: [duration_s, global_video_idx]}}``; the
  per-split dict is the ``video2idx`` of the official evaluator and the video corpus that
  ``StartEndEvalDataset`` searches (``baselines/crossmodal_moment_localization/
  start_end_dataset.py``).

Preprocessing rules (each with its source):

* ``query_id = str(desc_id)``, ``video_id = vid_name``, ``query_text = desc``; ``extras`` =
  ``{"desc_id", "type", "video_idx" (from video2dur_idx[split]), "has_ground_truth": True}``.
  Query token features are keyed by ``str(desc_id)`` (``get_query_feat_by_desc_id``).
* ``duration_s`` is the jsonl ``duration`` (what ``StartEndDataset`` puts in ``meta``); it is
  compared with ``video2dur_idx[split][vid_name][0]`` and a difference is recorded in the report
  (``report.clip``, reason "duration differs ..."; none in val).  A ``vid_name`` missing from
  ``video2dur_idx[split]`` is a :class:`DataError` (the evaluator's ``video2idx`` lookup fails).
* ``spans_s = [ts]``.  The official code never clips ``ts`` in seconds: the loaders turn it
  into clip indices clamped to the last clip (``get_st_ed_label``), and the evaluator compares
  raw ``ts``.  Records need spans inside ``[0, duration]``, so ``ts`` is clamped to it and
  every clamp is counted (``report.clip``; none in val).  ``st > ed`` and NaN/inf are errors.
* Splits without ground truth (``test_public``): every line gives an annotation with
  ``video_id = ""``, ``duration_s = 0.0``, ``spans_s`` of shape ``(0, 2)`` and
  ``extras = {"desc_id", "has_ground_truth": False}``.  Such an annotation cannot become a
  record (records need a span and a video); it carries what inference needs (the query and its
  feature key), and :func:`load_video2dur_idx` gives the split's video corpus.
* Bad input raises :class:`~data_pipelines.annotations.DataError` naming file, line and field:
  malformed JSON, a missing field or one of the wrong type, an unknown ``type``, a repeated
  ``desc_id``.  Blank lines are skipped.  An empty ``desc`` cannot make a record and is dropped
  (``report.drop``; none in val or test_public).

Feature manifest (``FEATURES``; TVRetrieval ``tvr_feature_release.tar.gz``, README "Prepare
feature files", paths as in ``baselines/crossmodal_moment_localization/scripts/train.sh``):

===========  ===================================================  ====  =====================
name         video extractor (file under tvr_feature_release/)    dim   normalisation (loader)
===========  ===================================================  ====  =====================
resnet       ResNet-152 ImageNet, 3 frames/s max-pooled per clip  2048  L2 per clip, eps 1e-5
             (video_feature/tvr_resnet152_rgb_max_cl-1.5.h5)
i3d          I3D RGB Kinetics-600, averaged per clip              1024  L2 per clip, eps 1e-5
             (video_feature/tvr_i3d_rgb600_avg_cl-1.5.h5)
resnet_i3d   both, each L2-normalised, then concatenated          3072  none (--no_norm_vfeat)
             (video_feature/tvr_resnet152_rgb_max_i3d_rgb600_
             avg_cat_cl-1.5.h5)
===========  ===================================================  ====  =====================

All video files are HDF5 ``f[vid_name]`` of shape ``[n_clips, D]``, 1.5-s clips from 0 s
(``utils/video_feature/convert_feature_frm_to_clip.py``; I3D is zero-padded or cut to the
ResNet length by ``merge_align_i3d.py``; the concatenation by ``normalize_and_concat.py``).
Each feature set adds the RoBERTa (fine-tuned on TVR subtitles + queries, ``utils/
text_feature``) text features of the ``video_sub`` setting:

* subtitle: ``bert_feature/sub_query/tvr_sub_pretrained_w_sub_query_max_cl-1.5.h5``,
  ``f[vid_name]`` of shape ``[n_clips, 768]`` (token features max-pooled per 1.5-s clip, zero
  rows for clips without subtitle; a ``f[vid_name + "-mask"]`` companion marks them;
  ``convert_sub_feature_word_to_clip.py``), L2 per clip in the loader (``normalize_tfeat``);
* query: ``bert_feature/sub_query/tvr_query_pretrained_w_sub_query.h5``, ``f[str(desc_id)]``
  of shape ``[L <= 30, 768]`` (``lm_finetuning_on_single_sentences.py``), L2 per token.

Word-level subtitles (Cascaded MPN; :func:`load_subtitle_words`): the subtitle sentences of
``tvqa_preprocessed_subtitles.jsonl`` (``SUBTITLE_FILE``, with the annotations) with their
RoBERTa token features, ``SUBTITLE_TOKENS`` (``f[vid_name] [N, 768]`` plus ``f[vid_name +
"-lengths"]`` tokens per sentence), aligned clip <-> sentence <-> word and every misalignment
counted by :mod:`data_pipelines.subtitles`; subtitle times are checked against the
``video2dur_idx`` durations.  The clip-level file above is these token features max-pooled per
clip by the same sentence <-> clip rule (``convert_sub_feature_word_to_clip.py``).

``hero_resnet_slowfast`` (Cascaded MPN, whose paper uses HERO's features): HERO's TVR video
features, ``video_db/tv/resnet_slowfast_1.5`` of linjieli222/HERO ``scripts/download_tvr.sh``
(``video_db/tv.tar``; ``config/train-tvr-8gpu.json``: ``vfeat_db`` ``/video/tv``,
``vfeat_version`` resnet_slowfast, ``vfeat_interval`` 1.5, ``compressed_db`` false,
``max_clip_len`` 100).  An LMDB keyed by ``vid_name`` (HERO's TVR query db maps each query to
it: ``query2video``), values ``{"features": [T, 4352]}`` = ResNet-152 (2048) then SlowFast
(2304) per 1.5-s clip (``scripts/convert_videodb.py``), with ``video_db/tv/id2nframe.json``;
read by :class:`~data_pipelines.lmdb_store.LmdbStore`, unnormalised as HERO's
``VideoFeatLmdb`` reads it.  The folder is ``tv``, not ``tvr``: HERO shares it between TVR,
TVQA and TVC.  Subtitle clip features and query tokens are the TVRetrieval RoBERTa files
above (HERO itself re-encodes subtitles and queries from token ids, which Cascaded MPN's
"contextualized token features" do not need).  HERO's clips and TVRetrieval's both start at
0 s every 1.5 s; a differing clip count is cut to the shorter by ``data build`` and counted.

Every feature set with subtitles also declares the word-level subtitles
(``FeatureSet.subtitle_words``: ``SUBTITLE_FILE`` with the annotations, ``SUBTITLE_TOKENS``
with the features), which ``vmr-jax data build --subtitle_words`` stores per video.

``resnet_i3d_video_only`` is XML's ``video`` setting: no subtitle, and the query features of the
model fine-tuned on queries only (``bert_feature/query_only/tvr_query_pretrained_w_query.h5``).
The loaders also cut videos to ``max_ctx_l`` = 100 clips and queries to ``max_desc_l`` = 30
tokens (``config.py``); nothing here cuts.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.annotations import (
    TRUNCATED,
    Annotation,
    DataError,
    ParseReport,
    check_unique_ids,
    ends_inside,
    load_json_text,
)
from data_pipelines.benchmarks import FeatureSet, FeatureSpec, SubtitleWordSpec
from data_pipelines.records import SubtitleWords
from data_pipelines.subtitles import SubtitleReport
from data_pipelines.subtitles import load_subtitle_words as _load_words

NAME = "tvr"
VIDEO2DUR_IDX = "tvr_video2dur_idx.json"
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("tvr_train_release.jsonl", VIDEO2DUR_IDX),
    "val": ("tvr_val_release.jsonl", VIDEO2DUR_IDX),
    "test_public": ("tvr_test_public_release.jsonl", VIDEO2DUR_IDX),
}
GROUND_TRUTH_SPLITS = ("train", "val")
QUERY_TYPES = ("v", "t", "vt")
CLIP_SECONDS = 1.5

_FEATURE_ROOT = "tvr_feature_release"
SUBTITLE_FILE = "tvqa_preprocessed_subtitles.jsonl"
SUBTITLE_TOKENS = f"{_FEATURE_ROOT}/bert_feature/sub_query/tvr_sub_pretrained_w_sub_query.h5"
_SOURCE = "jayleicn/TVRetrieval README (tvr_feature_release.tar.gz), scripts/train.sh"
_TEXT_EXTRACTOR = "RoBERTa-base fine-tuned (MLM) on TVR subtitles + queries, last layer"
_SUBTITLE = FeatureSpec(
    file=f"{_FEATURE_ROOT}/bert_feature/sub_query/tvr_sub_pretrained_w_sub_query_max_cl-1.5.h5",
    layout="hdf5",
    dim=768,
    extractor=_TEXT_EXTRACTOR + "; subtitle tokens max-pooled per clip",
    clip="1.5-s clips aligned with the ResNet clips; zero rows where no subtitle",
    normalisation="L2 per clip in the loader (eps 1e-5, normalize_tfeat)",
    source=_SOURCE,
    key_format="{video_id}",
    clip_seconds=CLIP_SECONDS,
)
_QUERY = FeatureSpec(
    file=f"{_FEATURE_ROOT}/bert_feature/sub_query/tvr_query_pretrained_w_sub_query.h5",
    layout="hdf5",
    dim=768,
    extractor=_TEXT_EXTRACTOR + "; query tokens",
    clip="one row per token (<= 30)",
    normalisation="L2 per token in the loader (eps 1e-5, normalize_tfeat)",
    source=_SOURCE,
    key_format="{desc_id}",
)
_QUERY_ONLY = FeatureSpec(
    file=f"{_FEATURE_ROOT}/bert_feature/query_only/tvr_query_pretrained_w_query.h5",
    layout="hdf5",
    dim=768,
    extractor="RoBERTa-base fine-tuned (MLM) on TVR queries only, last layer; query tokens",
    clip="one row per token (<= 30)",
    normalisation="L2 per token in the loader (eps 1e-5, normalize_tfeat)",
    source=_SOURCE,
    key_format="{desc_id}",
)


def _video_spec(name: str, dim: int, extractor: str, normalisation: str) -> FeatureSpec:
    return FeatureSpec(
        file=f"{_FEATURE_ROOT}/video_feature/{name}",
        layout="hdf5",
        dim=dim,
        extractor=extractor,
        clip="1.5-s clips from 0 s",
        normalisation=normalisation,
        source=_SOURCE,
        key_format="{video_id}",
        clip_seconds=CLIP_SECONDS,
    )


_L2_LOADER = "L2 per clip in the loader (eps 1e-5, normalize_vfeat)"
_RESNET = _video_spec(
    "tvr_resnet152_rgb_max_cl-1.5.h5",
    2048,
    "ResNet-152 ImageNet pool5, 3 frames/s, max-pooled per clip",
    _L2_LOADER,
)
_I3D = _video_spec(
    "tvr_i3d_rgb600_avg_cl-1.5.h5",
    1024,
    "I3D RGB Kinetics-600, averaged per clip, aligned to the ResNet clip count",
    _L2_LOADER,
)
_RESNET_I3D = _video_spec(
    "tvr_resnet152_rgb_max_i3d_rgb600_avg_cat_cl-1.5.h5",
    3072,
    "ResNet-152 (2048) and I3D (1024), each L2-normalised per clip, concatenated",
    "stored normalised (normalize_and_concat.py); the loader runs with --no_norm_vfeat",
)

_HERO_RESNET_SLOWFAST = FeatureSpec(
    file="video_db/tv/resnet_slowfast_1.5",
    layout="lmdb",
    dim=4352,
    extractor="ResNet-152 ImageNet (2048) + SlowFast Kinetics (2304), concatenated per clip",
    clip="1.5-s clips from 0 s; HERO keeps the first 100 (max_clip_len)",
    normalisation="none (HERO data/data.py VideoFeatLmdb reads the raw features)",
    source=(
        "linjieli222/HERO scripts/download_tvr.sh (video_db/tv.tar), "
        "config/train-tvr-8gpu.json, scripts/convert_videodb.py"
    ),
    key_format="{video_id}",
    clip_seconds=CLIP_SECONDS,
)
SUBTITLE_WORDS = SubtitleWordSpec(
    sentences=SUBTITLE_FILE,
    tokens=SUBTITLE_TOKENS,
    dim=768,
    extractor=_TEXT_EXTRACTOR + "; every subtitle token, f[vid] [N, 768] + f[vid-lengths]",
    source=(
        "jayleicn/TVRetrieval data/tvqa_preprocessed_subtitles.jsonl; tvr_feature_release "
        "(utils/text_feature/lm_finetuning_on_single_sentences.py)"
    ),
)


def _with_subtitles(video: FeatureSpec) -> FeatureSet:
    return FeatureSet(video=video, subtitle=_SUBTITLE, query=_QUERY, subtitle_words=SUBTITLE_WORDS)


FEATURES: dict[str, FeatureSet] = {
    "resnet": _with_subtitles(_RESNET),
    "i3d": _with_subtitles(_I3D),
    "resnet_i3d": _with_subtitles(_RESNET_I3D),
    "hero_resnet_slowfast": _with_subtitles(_HERO_RESNET_SLOWFAST),
    "resnet_i3d_video_only": FeatureSet(video=_RESNET_I3D, query=_QUERY_ONLY),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def load_video2dur_idx(
    annotation_dir: str | os.PathLike,
) -> dict[str, dict[str, tuple[float, int]]]:
    """``{split: {vid_name: (duration_s, global_video_idx)}}`` of ``tvr_video2dur_idx.json``."""
    path = Path(annotation_dir) / VIDEO2DUR_IDX
    source = str(path)
    if not path.is_file():
        raise DataError(source, None, None, "no such annotation file")
    data = load_json_text(path)
    if not isinstance(data, dict):
        raise DataError(source, None, None, f"expected an object, got {type(data).__name__}")
    table: dict[str, dict[str, tuple[float, int]]] = {}
    for split, videos in data.items():
        if not isinstance(videos, dict):
            raise DataError(source, f"split {split!r}", None, "expected {vid_name: [dur, idx]}")
        entries = {}
        for vid_name, value in videos.items():
            ok = (
                isinstance(value, list)
                and len(value) == 2
                and _is_number(value[0])
                and math.isfinite(value[0])
                and value[0] > 0
                and _is_int(value[1])
            )
            if not ok:
                raise DataError(
                    source,
                    f"split {split!r}, video {vid_name!r}",
                    None,
                    f"expected [duration_s > 0, video index], got {value!r}",
                )
            entries[vid_name] = (float(value[0]), int(value[1]))
        table[split] = entries
    return table


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """``(line number, object)`` for every non-blank line."""
    source = str(path)
    if not path.is_file():
        raise DataError(source, None, None, "no such annotation file")
    rows = []
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            last = lineno == len(lines) and not line.endswith("\n")
            if last and ends_inside(line, err):  # cut inside the last record
                raise DataError(source, f"line {lineno}", None, f"{TRUNCATED}: {err.msg}") from err
            raise DataError(
                source,
                f"line {lineno}",
                None,
                f"malformed JSON: {err.msg} (column {err.colno})",
            ) from err
        if not isinstance(obj, dict):
            raise DataError(
                source, f"line {lineno}", None, f"expected an object, got {type(obj).__name__}"
            )
        rows.append((lineno, obj))
    return rows


def _require(obj: dict, names: tuple[str, ...], source: str, where: str) -> None:
    for name in names:
        if name not in obj:
            raise DataError(source, where, name, "missing")


def _check_query(obj: dict, source: str, where: str) -> tuple[int, str]:
    _require(obj, ("desc_id", "desc"), source, where)
    desc_id, desc = obj["desc_id"], obj["desc"]
    if not _is_int(desc_id):
        raise DataError(source, where, "desc_id", f"expected an int, got {desc_id!r}")
    if not isinstance(desc, str):
        raise DataError(source, where, "desc", f"expected a string, got {desc!r}")
    return desc_id, desc


def _ground_truth_annotation(
    obj: dict,
    where: str,
    source: str,
    split: str,
    videos: dict[str, tuple[float, int]],
    report: ParseReport,
) -> Annotation:
    desc_id, desc = _check_query(obj, source, where)
    _require(obj, ("vid_name", "duration", "ts", "type"), source, where)
    vid_name, duration, ts, query_type = obj["vid_name"], obj["duration"], obj["ts"], obj["type"]
    query_id = str(desc_id)
    if not isinstance(vid_name, str) or not vid_name:
        raise DataError(source, where, "vid_name", f"expected a non-empty string, got {vid_name!r}")
    if vid_name not in videos:
        raise DataError(
            source, where, "vid_name", f"{vid_name!r} is not in {VIDEO2DUR_IDX}[{split!r}]"
        )
    if not _is_number(duration) or not math.isfinite(duration) or duration <= 0:
        raise DataError(source, where, "duration", f"expected a number > 0, got {duration!r}")
    if query_type not in QUERY_TYPES:
        raise DataError(source, where, "type", f"expected one of {QUERY_TYPES}, got {query_type!r}")
    if not isinstance(ts, list) or len(ts) != 2 or not all(_is_number(t) for t in ts):
        raise DataError(source, where, "ts", f"expected [st, ed] numbers, got {ts!r}")
    if not all(math.isfinite(t) for t in ts):
        raise DataError(source, where, "ts", f"not finite: {ts!r}")
    start, end = float(ts[0]), float(ts[1])
    if end < start:
        raise DataError(source, where, "ts", f"end before start: {ts!r}")

    duration = float(duration)
    corpus_duration, video_idx = videos[vid_name]
    if corpus_duration != duration:
        report.clip(
            split,
            f"duration differs from {VIDEO2DUR_IDX} (jsonl value kept)",
            source,
            where,
            query_id,
        )
    if start < 0.0:
        report.clip(split, "ts start before 0 (clamped to 0)", source, where, query_id)
        start, end = 0.0, max(end, 0.0)
    if end > duration:
        report.clip(split, "ts end after duration (clamped to duration)", source, where, query_id)
        start, end = min(start, duration), duration
    return Annotation(
        query_id=query_id,
        video_id=vid_name,
        duration_s=duration,
        spans_s=np.asarray([[start, end]], dtype=np.float64),
        query_text=desc,
        extras={
            "desc_id": desc_id,
            "type": query_type,
            "video_idx": video_idx,
            "has_ground_truth": True,
        },
    )


def parse_split(
    annotation_dir: str | os.PathLike, split: str, report: ParseReport
) -> list[Annotation]:
    """The queries of ``split`` (``train``, ``val``, ``test_public``) as annotations."""
    if split not in SPLITS:
        raise ValueError(f"unknown TVR split {split!r}; known: {sorted(SPLITS)}")
    path = Path(annotation_dir) / SPLITS[split][0]
    source = str(path)
    rows = _read_jsonl(path)
    has_ground_truth = split in GROUND_TRUTH_SPLITS
    videos = {}
    if has_ground_truth:
        table = load_video2dur_idx(annotation_dir)
        if split not in table:
            raise DataError(
                str(Path(annotation_dir) / VIDEO2DUR_IDX), None, None, f"no split {split!r}"
            )
        videos = table[split]
    annotations = []
    for lineno, obj in rows:
        where = f"line {lineno}"
        if has_ground_truth:
            annotation = _ground_truth_annotation(obj, where, source, split, videos, report)
        else:
            desc_id, desc = _check_query(obj, source, where)
            annotation = Annotation(
                query_id=str(desc_id),
                video_id="",
                duration_s=0.0,
                spans_s=np.zeros((0, 2), dtype=np.float64),
                query_text=desc,
                extras={"desc_id": desc_id, "has_ground_truth": False},
            )
        if not annotation.query_text.strip():
            report.drop(split, "empty desc", source, where, annotation.query_id)
            continue
        annotations.append(annotation)
    check_unique_ids(annotations, source)
    report.kept(split, len(annotations))
    return annotations


def load_subtitle_words(
    annotation_dir: str | os.PathLike,
    token_features: str | os.PathLike,
    split: str,
    report: SubtitleReport,
    *,
    token_counter=None,
) -> dict[str, SubtitleWords]:
    """``{vid_name: SubtitleWords}`` of every video of ``video2dur_idx[split]``, from
    ``annotation_dir/SUBTITLE_FILE`` and the token h5 ``token_features`` (module docstring);
    ``report`` counts every fallback (``report.summary()``) and is logged."""
    table = load_video2dur_idx(annotation_dir)
    if split not in table:
        raise DataError(
            str(Path(annotation_dir) / VIDEO2DUR_IDX), None, None, f"no split {split!r}"
        )
    durations = {vid: duration for vid, (duration, _) in table[split].items()}
    return _load_words(
        Path(annotation_dir) / SUBTITLE_FILE,
        token_features,
        durations,
        report,
        token_counter=token_counter,
        name=f"tvr/{split}",
    )
