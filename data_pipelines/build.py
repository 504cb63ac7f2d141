"""Official files -> built dataset; and the checks of ``vmr-jax data validate`` / ``stats``.

Paths.  Annotation files are looked up by their official names (``SPLITS`` of the dataset
module) in ``annotation_dir`` (default ``data_dir``); feature files by their official names
(``FeatureSpec.file``) in ``data_dir``, unless given explicitly per role (``video``,
``subtitle``, ``query``).

Empty input.  An annotation file with nothing but whitespace, or a split whose files hold no
query (``{}``, ``[]``, every query dropped), is a :class:`DataError` naming the file, for
``data stats`` and ``validate`` as for ``build``.

Missing features.  An annotation whose video (or TVR query) has no entry in a feature file is
an error that lists how many and which, unless ``allow_missing`` is set: then the query is
dropped and counted in the parse report under the reason ``"no features in <file>"``.  A
feature file sharing no key with the annotations is always an error (the file of another
dataset or feature set).  Keys present in a feature file but in no annotation are only
reported (``data stats``/``validate``): the official files ship features for every split.

Subtitle features (TVR) may have a different number of clips than the video features; both
are cut to the shorter length, as TVRetrieval's ``StartEndDataset`` does for
``video_sub`` contexts, and the cut is counted as a clip.

Word-level subtitles (``subtitle_words``, TVR; Cascaded MPN reads them): for a feature set
that declares them (``FeatureSet.subtitle_words``), every video record also stores the
``subtitle_*`` arrays of :meth:`~data_pipelines.records.SubtitleWords.to_arrays`, aligned by
:mod:`data_pipelines.subtitles` against the video's ``duration_s`` (for TVR the annotation's
``duration``, which parsing compares with ``video2dur_idx``).  The sentence file is the one
in ``annotation_dir`` or, when there is none there, the one in ``data_dir`` (where ``data
fake`` writes one); the token file is in ``data_dir``; either can be given explicitly.  Each split's
:class:`~data_pipelines.subtitles.SubtitleReport` (kept videos, sentences and words, every
fallback counted) is logged and stored in ``dataset_info.json`` under ``subtitle_words``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from data_pipelines import stored
from data_pipelines.annotations import EMPTY_FILE, Annotation, DataError, ParseReport, to_record
from data_pipelines.benchmarks import FeatureSet, get_benchmark
from data_pipelines.subtitles import SubtitleReport, SubtitleWordSource

logger = logging.getLogger(__name__)
ROLES = ("video", "subtitle", "query")


@dataclasses.dataclass
class Sources:
    """Where one benchmark's files are, resolved from the command line."""

    module: ModuleType
    feature_name: str
    features: FeatureSet
    annotation_dir: str
    feature_paths: dict[str, str]  # role -> path
    # {"sentences": path, "tokens": path} when word-level subtitles are requested
    subtitle_word_paths: dict[str, str] | None = None

    def annotation_files(self, split: str) -> list[str]:
        return [os.path.join(self.annotation_dir, name) for name in self.module.SPLITS[split]]


def resolve_sources(
    dataset: str,
    features: str,
    data_dir: str,
    annotation_dir: str | None = None,
    feature_paths: Mapping[str, str | None] | None = None,
    *,
    subtitle_words: bool = False,
    subtitle_sentences: str | None = None,
    subtitle_tokens: str | None = None,
) -> Sources:
    """The dataset module, its feature set ``features`` and the paths of every file
    (with ``subtitle_words``, of the word-level subtitle files too: module docstring)."""
    module = get_benchmark(dataset)
    if features not in module.FEATURES:
        raise ValueError(
            f"dataset {dataset!r} has no feature set {features!r}; known: {sorted(module.FEATURES)}"
        )
    feature_set = module.FEATURES[features]
    paths = {}
    given = dict(feature_paths or {})
    for role in ROLES:
        spec = getattr(feature_set, role)
        if spec is None:
            if given.get(role):
                raise ValueError(f"feature set {dataset}/{features} has no {role} features")
            continue
        paths[role] = given.get(role) or spec.locate(data_dir)
    annotation_dir = annotation_dir or data_dir
    word_paths = None
    if subtitle_words:
        spec = feature_set.subtitle_words
        if spec is None:
            raise ValueError(
                f"feature set {dataset}/{features} has no word-level subtitles "
                "(FeatureSet.subtitle_words); drop --subtitle_words"
            )
        if subtitle_sentences is None:
            subtitle_sentences = os.path.join(annotation_dir, spec.sentences)
            if not os.path.isfile(subtitle_sentences):
                subtitle_sentences = os.path.join(data_dir, spec.sentences)
        word_paths = {
            "sentences": subtitle_sentences,
            "tokens": subtitle_tokens or os.path.join(data_dir, spec.tokens),
        }
    elif subtitle_sentences or subtitle_tokens:
        raise ValueError("subtitle sentence / token files are read only with --subtitle_words")
    return Sources(module, features, feature_set, annotation_dir, paths, word_paths)


def open_subtitle_words(
    sources: Sources, annotations: Sequence[Annotation], report: SubtitleReport
) -> SubtitleWordSource | None:
    """The word-level subtitle files of ``sources`` for the videos of ``annotations``, or
    None when they were not requested."""
    if sources.subtitle_word_paths is None:
        return None
    paths = sources.subtitle_word_paths
    videos = list(dict.fromkeys(a.video_id for a in annotations))
    return SubtitleWordSource(paths["sentences"], paths["tokens"], videos, report)


def parse_splits(
    sources: Sources, splits: Sequence[str] | None = None
) -> tuple[dict[str, list[Annotation]], ParseReport]:
    """Annotations of every requested split (default: every split whose files exist)."""
    report = ParseReport()
    names = (
        list(splits)
        if splits
        else [
            s
            for s in sources.module.SPLITS
            if all(os.path.isfile(p) for p in sources.annotation_files(s))
        ]
    )
    if not names:
        raise DataError(
            sources.annotation_dir,
            None,
            None,
            f"none of the annotation files {dict(sources.module.SPLITS)} is here",
        )
    out = {}
    for split in names:
        if split not in sources.module.SPLITS:
            raise ValueError(f"{sources.module.NAME} has no split {split!r}")
        for path in sources.annotation_files(split):
            if _is_blank(path):
                raise DataError(path, None, None, EMPTY_FILE)
        annotations = sources.module.parse_split(sources.annotation_dir, split, report)
        if not annotations:
            dropped = sum(report.counts(split, "dropped").values())
            why = f"all {dropped} dropped by the reference rules" if dropped else "an empty file?"
            raise DataError(
                sources.annotation_files(split)[0],
                None,
                None,
                f"no query of split {split!r}: {why}",
            )
        if annotations and all(not a.video_id and len(a.spans_s) == 0 for a in annotations):
            why = "query-only split (no video, no ground truth, e.g. TVR test_public)"
            if splits:
                raise ValueError(f"split {split!r}: {why}: there is nothing to build or check")
            report.skipped_splits[split] = why
            logger.info("%s: skipped: %s", split, why)
            continue
        out[split] = annotations
    return out, report


def _is_blank(path: str) -> bool:
    """Whether the file at ``path`` exists and holds only whitespace (reads up to the first
    other byte)."""
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def open_stores(sources: Sources) -> dict[str, Any]:
    field = {
        "video": "video_features",
        "subtitle": "subtitle_features",
        "query": "query_token_features",
    }
    return {
        role: getattr(sources.features, role).open(path, field[role])
        for role, path in sources.feature_paths.items()
    }


# --------------------------------------------------------------------------- id matching
def feature_keys(sources: Sources, annotations: Sequence[Annotation], role: str) -> list[str]:
    spec = getattr(sources.features, role)
    return [spec.key(a) for a in annotations]


def match_ids(
    sources: Sources, stores: Mapping[str, Any], splits: Mapping[str, Sequence[Annotation]]
) -> dict[str, dict[str, Any]]:
    """Per role: annotation keys missing from the feature file and file keys used by no split."""
    out = {}
    for role, store in stores.items():
        file_keys = set(store.keys())
        wanted: dict[str, set[str]] = {
            split: set(feature_keys(sources, anns, role)) for split, anns in splits.items()
        }
        every = set().union(*wanted.values()) if wanted else set()
        if every and not every & file_keys:
            raise DataError(
                store.path,
                None,
                None,
                f"shares no key with the {sources.module.NAME} annotations (e.g. file keys "
                f"{sorted(file_keys)[:3]}, annotation keys {sorted(every)[:3]}): a feature "
                "file of another dataset?",
            )
        out[role] = {
            "file": store.path,
            "missing": {s: sorted(w - file_keys) for s, w in wanted.items()},
            "unused": sorted(file_keys - every),
        }
    return out


def _apply_missing(
    sources: Sources,
    split: str,
    annotations: list[Annotation],
    matches,
    report: ParseReport,
    allow_missing: bool,
) -> list[Annotation]:
    kept = annotations
    for role, match in matches.items():
        missing = set(match["missing"][split])
        if not missing:
            continue
        if not allow_missing:
            raise DataError(
                match["file"],
                None,
                None,
                f"{len(missing)} {role} keys of split {split!r} are not in the file (e.g. "
                f"{sorted(missing)[:5]}); pass --allow_missing to drop those queries (counted)",
            )
        spec = getattr(sources.features, role)
        reason = f"no {role} features in {os.path.basename(match['file'])}"
        still = []
        for a in kept:
            if spec.key(a) in missing:
                report.drop(split, reason, match["file"], f"key {spec.key(a)!r}", a.query_id)
            else:
                still.append(a)
        report.kept(split, len(still) - len(kept))
        kept = still
    return kept


# --------------------------------------------------------------------------- build
def _video_record(sources, stores, annotation, report, split):
    spec = sources.features.video
    video = stores["video"].get(spec.key(annotation))
    arrays = {"video_features": video}
    if "subtitle" in stores:
        sub = stores["subtitle"].get(sources.features.subtitle.key(annotation))
        if len(sub) != len(video):
            n = min(len(sub), len(video))
            report.clip(
                split,
                "video and subtitle clip counts differ: both cut to the shorter",
                stores["subtitle"].path,
                f"key {annotation.video_id!r}",
            )
            arrays = {"video_features": video[:n]}
            sub = sub[:n]
        arrays["subtitle_features"] = sub
    n = len(arrays["video_features"])
    arrays["clip_times"] = spec.clip_times(n, annotation.duration_s)
    return arrays


def build(
    sources: Sources,
    output_dir: str,
    *,
    splits: Sequence[str] | None = None,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """Writes the built dataset (:mod:`data_pipelines.stored`) and returns its info dict."""
    annotations, report = parse_splits(sources, splits)
    stores = open_stores(sources)
    try:
        matches = match_ids(sources, stores, annotations)
        os.makedirs(output_dir, exist_ok=True)
        info: dict[str, Any] = {
            "format_version": stored.FORMAT_VERSION,
            "dataset": sources.module.NAME,
            "features": sources.feature_name,
            "manifest": sources.features.describe(),
            "feature_files": dict(sources.feature_paths),
            "subtitle_word_files": sources.subtitle_word_paths,
            "annotation_files": {},
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "splits": {},
        }
        if sources.subtitle_word_paths is not None:
            info["subtitle_words"] = {}
        for split, anns in annotations.items():
            info["annotation_files"][split] = {
                os.path.basename(p): stored.sha256(p) for p in sources.annotation_files(split)
            }
            anns = _apply_missing(sources, split, anns, matches, report, allow_missing)
            if not anns:
                raise DataError(sources.annotation_dir, f"split {split!r}", None, "no query left")
            words = SubtitleReport()
            info["splits"][split] = _write_split(
                sources, stores, split, anns, report, output_dir, words
            )
            if "subtitle_words" in info:
                words.log(f"{sources.module.NAME}/{split}")
                info["subtitle_words"][split] = words.summary()
            logger.info("%s/%s: %s", sources.module.NAME, split, info["splits"][split])
        info["report"] = report.summary()
        info["unused_feature_keys"] = {r: len(m["unused"]) for r, m in matches.items()}
        with open(os.path.join(output_dir, stored.INFO_FILE), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1, sort_keys=True)
    finally:
        for store in stores.values():
            store.close()
    return info


def _write_split(sources, stores, split, anns, report, output_dir, words) -> dict[str, Any]:
    rows: dict[str, int] = {}
    first: list[Annotation] = []
    for a in anns:
        if a.video_id not in rows:
            rows[a.video_id] = len(first)
            first.append(a)
    lengths: dict[str, int] = {}
    dims: dict[str, int] = {}
    token_counts: dict[str, int] = {}

    subtitle_words = open_subtitle_words(sources, first, words)

    def video_blobs():
        for a in first:
            arrays = _video_record(sources, stores, a, report, split)
            lengths[a.video_id] = len(arrays["video_features"])
            dims["video"] = arrays["video_features"].shape[1]
            if "subtitle_features" in arrays:
                dims["subtitle"] = arrays["subtitle_features"].shape[1]
            if subtitle_words is not None:
                arrays.update(subtitle_words.words(a.video_id, a.duration_s).to_arrays())
                dims["subtitle_words"] = subtitle_words.dim
            # Validates every query of the video against its features (spans, NaN, widths).
            yield stored.encode(arrays, {"video_id": a.video_id})

    try:
        num_videos = stored.write_records(
            os.path.join(output_dir, stored.videos_file(split)), video_blobs()
        )
    finally:
        if subtitle_words is not None:
            subtitle_words.close()
    if "query" in stores:
        spec = sources.features.query

        def query_blobs():
            for a in anns:
                tokens = stores["query"].get(spec.key(a))
                dims["query"] = tokens.shape[1]
                token_counts[a.query_id] = len(tokens)
                yield stored.encode({"query_token_features": tokens}, {"query_id": a.query_id})

        stored.write_records(
            os.path.join(output_dir, stored.query_features_file(split)), query_blobs()
        )
    with open(os.path.join(output_dir, stored.queries_file(split)), "w", encoding="utf-8") as f:
        for a in anns:
            check_spans(a, lengths[a.video_id], sources)
            line = {
                "query_id": a.query_id,
                "video_id": a.video_id,
                "video_row": rows[a.video_id],
                "duration_s": a.duration_s,
                "spans_s": np.asarray(a.spans_s, np.float64).tolist(),
                "query_text": a.query_text,
                "extras": a.extras,
            }
            if a.query_id in token_counts:
                line["num_query_tokens"] = token_counts[a.query_id]
            f.write(json.dumps(line) + "\n")
    return {"num_queries": len(anns), "num_videos": num_videos, "feature_dims": dims}


def check_spans(annotation: Annotation, num_clips: int, sources: Sources) -> None:
    """The canonical record rules (spans inside the duration, ...) on a feature-less stub."""
    if len(annotation.spans_s) == 0:  # GT-less splits (TVR test_public) are query-only
        return
    to_record(
        annotation,
        np.zeros((num_clips, 1), np.float32),
        sources.features.video.clip_times(num_clips, annotation.duration_s),
        source=sources.annotation_dir,
    )
