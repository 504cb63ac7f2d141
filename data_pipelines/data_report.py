"""``vmr-jax data stats`` and ``vmr-jax data validate``: what a benchmark holds, before training.

:func:`stats` reports, per split, queries and videos, what parsing dropped or clipped and why,
the distributions of video durations, moment lengths (seconds and share of the video), spans
per query and words per query, and -- when the feature files are at hand -- the feature width,
clips per video and clip rate (clips per second), plus annotation keys missing from each
feature file and file keys used by no annotation.  The feature manifest of the dataset module
comes first.

:func:`validate` reads every feature row the annotations need and collects every problem
(unreadable files, missing keys, wrong widths, NaN/inf, spans outside the video) instead of
stopping at the first; it returns them with the counts so the command can print them all.

With word-level subtitles requested (``--subtitle_words``), both also align every video's
subtitle sentences with their token features (:func:`subtitle_word_reports`) and report the
:class:`~data_pipelines.subtitles.SubtitleReport` of each split (kept sentences and words,
every fallback counted); ``validate`` lists a bad subtitle or token file as an error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines.annotations import Annotation, DataError
from data_pipelines.build import (
    Sources,
    check_spans,
    match_ids,
    open_stores,
    open_subtitle_words,
    parse_splits,
)
from data_pipelines.records import RecordError
from data_pipelines.subtitles import SubtitleReport


def distribution(values: Sequence[float]) -> dict[str, float]:
    """min / 10th / 50th / 90th percentile / max / mean of ``values`` (empty: ``{}``)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {}
    p10, p50, p90 = np.percentile(v, [10, 50, 90])
    return {
        "min": round(float(v.min()), 4),
        "p10": round(float(p10), 4),
        "median": round(float(p50), 4),
        "p90": round(float(p90), 4),
        "max": round(float(v.max()), 4),
        "mean": round(float(v.mean()), 4),
    }


def annotation_stats(annotations: Sequence[Annotation]) -> dict[str, Any]:
    """Counts and distributions of one split's annotations (no features needed)."""
    durations = {a.video_id: a.duration_s for a in annotations}
    spans = [np.asarray(a.spans_s, np.float64).reshape(-1, 2) for a in annotations]
    lengths = [s[:, 1] - s[:, 0] for s in spans if len(s)]
    shares = [(s[:, 1] - s[:, 0]) / a.duration_s for s, a in zip(spans, annotations) if len(s)]
    return {
        "queries": len(annotations),
        "videos": len(durations),
        "queries_without_ground_truth": sum(len(s) == 0 for s in spans),
        "duration_s": distribution(list(durations.values())),
        "moment_length_s": distribution(np.concatenate(lengths) if lengths else []),
        "moment_share_of_video": distribution(np.concatenate(shares) if shares else []),
        "spans_per_query": distribution([len(s) for s in spans]),
        "words_per_query": distribution([len(a.query_text.split()) for a in annotations]),
    }


def feature_stats(
    sources: Sources, stores, annotations: Sequence[Annotation], max_videos: int = 0
) -> dict[str, Any]:
    """Width, clips per video and clips per second of the video features of one split.

    ``max_videos`` > 0 reads only that many videos (``stats`` on a huge file); 0 reads all.
    """
    spec = sources.features.video
    store = stores["video"]
    seen: dict[str, Annotation] = {}
    for a in annotations:
        seen.setdefault(spec.key(a), a)
    keys = [k for k in seen if k in store]
    if max_videos > 0:
        keys = keys[:max_videos]
    clips, rates, widths = [], [], set()
    for key in keys:
        feats = store.get(key)
        clips.append(len(feats))
        rates.append(len(feats) / seen[key].duration_s)
        widths.add(int(feats.shape[1]))
    return {
        "file": store.path,
        "videos_read": len(keys),
        "width": sorted(widths),
        "clips_per_video": distribution(clips),
        "clips_per_second": distribution(rates),
    }


def subtitle_word_reports(
    sources: Sources, annotations: dict[str, Sequence[Annotation]], max_videos: int = 0
) -> dict[str, Any]:
    """``{split: SubtitleReport.summary()}``: every video's subtitles aligned (``max_videos``
    > 0: only the first that many per split); a bad file raises :class:`DataError`."""
    out = {}
    for split, anns in annotations.items():
        first = list({a.video_id: a for a in anns}.values())
        if max_videos > 0:
            first = first[:max_videos]
        report = SubtitleReport()
        source = open_subtitle_words(sources, first, report)
        try:
            for a in first:
                source.words(a.video_id, a.duration_s)
        finally:
            source.close()
        out[split] = report.summary()
    return out


def stats(
    sources: Sources,
    splits: Sequence[str] | None = None,
    with_features: bool = True,
    max_videos: int = 0,
) -> dict[str, Any]:
    """The full ``data stats`` report as a JSON-able dict (see the module docstring)."""
    annotations, report = parse_splits(sources, splits)
    out: dict[str, Any] = {
        "dataset": sources.module.NAME,
        "features": sources.feature_name,
        "manifest": sources.features.describe(),
        "parse_report": report.summary(),
        # Where the first few records of each drop / clip reason are (file:line or key).
        "parse_examples": {
            s: {
                kind: {r: report.examples(s, kind, r, 5) for r in report.counts(s, kind)}
                for kind in ("dropped", "clipped")
            }
            for s in annotations
        },
        "splits": {s: annotation_stats(a) for s, a in annotations.items()},
    }
    present = {r: p for r, p in sources.feature_paths.items() if os.path.exists(p)}
    if with_features and present:
        sources_present = Sources(
            sources.module,
            sources.feature_name,
            sources.features,
            sources.annotation_dir,
            present,
        )
        stores = open_stores(sources_present)
        matches = match_ids(sources_present, stores, annotations)
        out["feature_ids"] = {
            role: {
                "file": m["file"],
                "missing_per_split": {s: len(v) for s, v in m["missing"].items()},
                "missing_examples": {s: v[:5] for s, v in m["missing"].items() if v},
                "unused_keys": len(m["unused"]),
                "unused_examples": m["unused"][:5],
            }
            for role, m in matches.items()
        }
        if "video" in stores:
            out["video_features"] = {
                s: feature_stats(sources_present, stores, a, max_videos)
                for s, a in annotations.items()
            }
        for store in stores.values():
            store.close()
    else:
        out["feature_ids"] = {
            role: f"{path} not found: feature checks skipped"
            for role, path in sources.feature_paths.items()
        }
    words = sources.subtitle_word_paths
    if words is not None:
        absent = [p for p in words.values() if not os.path.isfile(p)]
        out["subtitle_words"] = (
            f"{absent[0]} not found: subtitle word checks skipped"
            if absent
            else subtitle_word_reports(sources, annotations, max_videos)
        )
    return out


def validate(
    sources: Sources, splits: Sequence[str] | None = None, max_errors: int = 50
) -> dict[str, Any]:
    """Reads every feature the annotations need; returns ``{"errors": [...], "checked": ...}``.

    Parse errors (malformed annotation files) are returned as the single error they are: the
    rest of a malformed file cannot be trusted.
    """
    try:
        annotations, report = parse_splits(sources, splits)
    except DataError as err:
        return {"errors": [str(err)], "checked": {}, "parse_report": {}}
    errors: list[str] = []
    stores: dict[str, Any] = {}
    try:
        try:
            stores = open_stores(sources)
            matches = match_ids(sources, stores, annotations)
        except DataError as err:
            return {"errors": [str(err)], "checked": {}, "parse_report": report.summary()}
        for role, m in matches.items():
            for split, missing in m["missing"].items():
                if missing:
                    errors.append(
                        f"{m['file']}: {len(missing)} {role} keys of split {split!r} missing "
                        f"(e.g. {missing[:5]})"
                    )
        checked = _read_every_feature(sources, stores, annotations, errors, max_errors)
    finally:
        for store in stores.values():
            store.close()
    out = {"errors": errors, "checked": checked, "parse_report": report.summary()}
    if sources.subtitle_word_paths is not None:
        try:
            out["subtitle_words"] = subtitle_word_reports(sources, annotations)
        except DataError as err:
            errors.append(str(err))
    return out


def _read_every_feature(sources, stores, annotations, errors, max_errors):
    """Reads each needed key once, appending problems to ``errors`` (stops at
    ``max_errors``); returns ``{split: {"videos": n, "queries": n}}`` checked cleanly."""
    checked: dict[str, dict[str, int]] = {}
    for split, anns in annotations.items():
        count = {"videos": 0, "queries": 0}
        checked[split] = count
        lengths: dict[str, int] = {}
        done: dict[str, set[str]] = {role: set() for role in stores}
        for a in anns:
            for role, store in stores.items():
                key = getattr(sources.features, role).key(a)
                if key in done[role] or key not in store:
                    continue  # missing keys are reported by the caller
                done[role].add(key)
                try:
                    feats = store.get(key)
                except DataError as err:
                    errors.append(str(err))
                    continue
                if role == "video":
                    lengths[key] = len(feats)
                    count["videos"] += 1
            key = sources.features.video.key(a)
            if key in lengths:
                try:
                    check_spans(a, lengths[key], sources)
                    count["queries"] += 1
                except (RecordError, DataError) as err:
                    errors.append(str(err))
            if len(errors) >= max_errors:
                errors.append(f"... stopped after {max_errors} errors")
                return checked
    return checked
