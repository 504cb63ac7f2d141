"""Fitting a video's native clips to the model's clip count, and tables of fitted videos.

2D-TAN resampling (Huntersxsx/MGPN ``lib/datasets/__init__.py average_to_fixed_length``, the
same in microsoft/2D-TAN) is described in :mod:`data_pipelines.input_pipeline`; TVRetrieval's
truncation (``feat[:max_ctx_l]``) is the other ``config.data.clip_sampling``.
"""

from __future__ import annotations

import numpy as np

from data_pipelines.stored import StoredSplit


def bin_edges(num_native: int, num_bins: int) -> np.ndarray:
    """The official ``idxs``: ``min(round(float32(k) / N * T), T - 1)``, ``int [N + 1]``."""
    k = np.arange(num_bins + 1, dtype=np.float32)
    edges = np.round(k / np.float32(num_bins) * np.float32(num_native)).astype(np.int64)
    return np.minimum(edges, num_native - 1)


def l2_normalize_clips(features: np.ndarray) -> np.ndarray:
    """``F.normalize(x, dim=1)``: each row over ``max(||row||, 1e-12)``.  ``[T, D]``."""
    norm = np.sqrt(np.sum(np.square(features, dtype=np.float32), axis=1, keepdims=True))
    return features / np.maximum(norm, np.float32(1e-12))


def resample_clips(features: np.ndarray, num_bins: int, normalize: bool = False) -> np.ndarray:
    """2D-TAN ``average_to_fixed_length`` (see module docstring).  ``[T, D] -> [N, D]`` f32."""
    x = np.asarray(features, np.float32)
    if normalize:
        x = l2_normalize_clips(x)
    edges = bin_edges(x.shape[0], num_bins)
    lo, hi = edges[:-1], edges[1:]
    count = hi - lo
    out = x[lo]  # empty and one-clip bins: clip idx[k] itself
    multi = count > 1
    if multi.any():
        # Non-empty bins tile [0, idx[N]) without gaps, so one reduceat sums them all.
        full = count > 0
        sums = np.add.reduceat(x[: edges[-1]], lo[full], axis=0)
        out[multi] = sums[multi[full]] / count[multi][:, None].astype(np.float32)
    return out


def video_durations(
    video_index: np.ndarray, query_durations: np.ndarray, video_ids: list[str]
) -> np.ndarray:
    """``[V]`` float64 duration of every video row, from its queries' ``duration``
    (``video_index [Q]`` row, ``query_durations [Q]`` seconds): what a corpus index with a
    per-video frame length keeps.  Queries of one video that disagree, or a video without a
    query, are an error naming the video."""
    video_index = np.asarray(video_index, np.int64)
    query_durations = np.asarray(query_durations, np.float64)
    out = np.full(len(video_ids), np.nan)
    out[video_index] = query_durations
    if np.isnan(out).any():
        raise ValueError(f"video {video_ids[int(np.argmax(np.isnan(out)))]!r} has no query")
    differ = out[video_index] != query_durations
    if differ.any():
        row = int(video_index[np.argmax(differ)])
        raise ValueError(f"video {video_ids[row]!r}: its queries give different durations")
    return out


CLIP_SAMPLING = ("resample", "truncate")


def fit_clips(
    features: np.ndarray, num_clips: int, sampling: str = "resample", normalize: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Native clips ``[T, D]`` -> ``([N, D], mask [N])`` under ``config.data.clip_sampling``.

    ``'resample'``: :func:`resample_clips` (2D-TAN rule), mask all ones.  ``'truncate'``:
    the first ``N`` native clips, zero padded, mask 1 on real clips (TVRetrieval's
    ``max_ctx_l`` rule: ``feat[:max_ctx_l]``).
    """
    if sampling == "resample":
        return resample_clips(features, num_clips, normalize), np.ones(num_clips, np.float32)
    if sampling != "truncate":
        raise ValueError(f"config.data.clip_sampling must be one of {CLIP_SAMPLING}")
    x = np.asarray(features, np.float32)[:num_clips]
    if normalize:
        x = l2_normalize_clips(x)
    out = np.zeros((num_clips, x.shape[1]), np.float32)
    out[: len(x)] = x
    mask = np.zeros(num_clips, np.float32)
    mask[: len(x)] = 1.0
    return out, mask


class InMemoryVideos:
    """Fitted clips of every video of a split, held in memory: ``[V, N, D]`` (+ mask)."""

    def __init__(self, features: np.ndarray, mask: np.ndarray, subtitles: np.ndarray | None):
        self.features, self.mask, self.subtitles = features, mask, subtitles

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        out = {"video_features": self.features[rows], "video_mask": self.mask[rows]}
        if self.subtitles is not None:
            out["subtitle_features"] = self.subtitles[rows]
        return out


class StoredVideos:
    """Videos of a built dataset (:class:`~data_pipelines.stored.StoredSplit`), read and
    fitted one batch at a time, so no feature file is ever held whole in memory."""

    def __init__(
        self, split: StoredSplit, num_clips: int, sampling: str, normalize: bool, subtitles: bool
    ):
        self.split, self.num_clips, self.sampling = split, num_clips, sampling
        self.normalize, self.subtitles = normalize, subtitles

    def fit(self, record: dict[str, np.ndarray], row: int) -> dict[str, np.ndarray]:
        """The fitted arrays of one stored video record (row ``row`` of the videos file)."""
        fitted = {}
        fitted["video_features"], fitted["video_mask"] = fit_clips(
            record["video_features"], self.num_clips, self.sampling, self.normalize
        )
        if self.subtitles:
            fitted["subtitle_features"] = fit_clips(
                record["subtitle_features"], self.num_clips, self.sampling
            )[0]
        return fitted

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        unique, inverse = np.unique(rows, return_inverse=True)
        out: dict[str, np.ndarray] = {}
        for j, record in enumerate(self.split.videos(unique)):
            fitted = self.fit(record, int(unique[j]))
            at = inverse == j
            for key, value in fitted.items():
                if key not in out:  # filled row by row: no stack-then-gather double copy
                    out[key] = np.empty((len(rows), *value.shape), value.dtype)
                out[key][at] = value
        return out
