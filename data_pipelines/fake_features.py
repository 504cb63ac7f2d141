"""Random features in a benchmark's official layouts, for a dry run without the real files.

``vmr-jax data fake --dataset D --features F --data_dir A [--output_dir OUT]`` reads the
annotations in ``A`` and writes, under ``OUT`` (default ``data/fake_features/<D>-<F>`` in the
current directory, never the annotation folder) and with the official file names of the
manifest, one random ``float32 [T, D]`` array per annotated video (and per query for TVR's
query tokens): ``T = max(1, round(duration * clips_per_second))`` clips, or
``ceil(duration / clip_seconds)`` for fixed-length clips.  ``vmr-jax data build --data_dir OUT
--annotation_dir A`` then runs exactly as on the real files, so a user can check a set-up (and
``vmr-jax bench --data-only`` can time the pipeline) before the downloads finish.
The values are seeded Gaussians: nothing is learnable from them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from data_pipelines.build import Sources, feature_keys, parse_splits


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
    """Writes every feature file of ``sources`` (paths in ``sources.feature_paths``)."""
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
        else:
            raise ValueError(f"cannot fake the {spec.layout!r} layout")
        written[role] = path
    return written


def _rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return rng.standard_normal((n, dim), dtype=np.float32)
