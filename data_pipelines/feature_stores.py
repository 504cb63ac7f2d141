"""Readers of the official feature layouts: HDF5 keyed by id, per-video ``.npy`` directories.

Every store maps a key (a video id, or TVR's ``str(desc_id)`` for query tokens) to a
``float32 [T, D]`` array and checks what it returns: the key exists, the array is 2-D with the
expected width, has at least one row, and is finite.  Any failure raises
:class:`~data_pipelines.annotations.DataError` naming the file, the key and the problem
(an empty or truncated HDF5 file, a missing key, a wrong width, NaN/inf values).  Files are
opened lazily and read one key at a time, so a 50 GB feature file is never loaded whole.

Layouts (``STORES``):

* ``hdf5``: one HDF5 file, dataset ``f[key]`` of shape ``[T, D]`` (2D-TAN's
  ``vgg_rgb_features.hdf5``, ``tall_c3d_features.hdf5``; TVRetrieval's video, subtitle and
  query h5 files; LocalizingMoments' ``average_fc7.h5``), or a group ``f[key][dataset]``
  (``sub_activitynet_v1-3.c3d.hdf5``: ``f["v_<id>"]["c3d_features"]``).
* ``npy``: a directory of ``<key>.npy`` files (MGPN/2D-TAN I3D Charades features).
* ``lmdb``: HERO's LMDB video databases (:class:`~data_pipelines.lmdb_store.LmdbStore`; needs
  ``pip install lmdb``, imported only when such a store is read).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from data_pipelines.annotations import DataError
from data_pipelines.lmdb_store import LmdbStore


def check_feature_array(
    array: np.ndarray, source: str, key: str, dim: int | None, field: str = "features"
) -> np.ndarray:
    """``array`` as ``float32 [T>=1, dim]``, finite; else :class:`DataError` naming ``key``."""
    where = f"key {key!r}"
    array = np.asarray(array)
    if array.ndim != 2:
        raise DataError(source, where, field, f"expected a [T, D] array, got shape {array.shape}")
    if array.shape[0] < 1:
        raise DataError(source, where, field, f"has no row (shape {array.shape})")
    if dim is not None and array.shape[1] != dim:
        raise DataError(
            source,
            where,
            field,
            f"expected width {dim}, got shape {array.shape} (a feature file of another "
            "extractor or dataset?)",
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(source, where, field, f"expected floating values, got {array.dtype}")
    array = array.astype(np.float32, copy=False)
    bad = ~np.isfinite(array)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            source,
            where,
            field,
            f"{int(bad.sum())} non-finite values (NaN/inf), first at row {row}, column {col}",
        )
    return array


class Hdf5Store:
    """Features in one HDF5 file: ``f[key]`` or ``f[key][dataset]``, ``[T, D]`` per key.

    Args:
      path: the ``.h5``/``.hdf5`` file.
      dim: expected width ``D`` (None: any).
      dataset: name of the dataset inside each key's group (ActivityNet's ``c3d_features``).
      field: what the arrays are, for messages (``video_features``, ``query_token_features``).
    """

    layout = "hdf5"

    def __init__(
        self,
        path: str | os.PathLike,
        dim: int | None = None,
        dataset: str | None = None,
        field: str = "video_features",
    ):
        self.path = str(path)
        self.dim = dim
        self.dataset = dataset
        self.field = field
        self._file = None
        if not os.path.exists(self.path):
            raise DataError(self.path, None, None, "no such feature file")
        if os.path.getsize(self.path) == 0:
            raise DataError(self.path, None, None, "empty file (0 bytes)")

    def _open(self):
        if self._file is None:
            import h5py

            try:
                self._file = h5py.File(self.path, "r")
            except OSError as err:
                raise DataError(
                    self.path, None, None, f"not a readable HDF5 file (truncated?): {err}"
                ) from err
        return self._file

    def keys(self) -> list[str]:
        """Every key of the file (top-level names)."""
        return list(self._open().keys())

    def __contains__(self, key: str) -> bool:
        return key in self._open()

    def get(self, key: str) -> np.ndarray:
        """``float32 [T, D]`` of ``key``, checked (see the module docstring)."""
        f = self._open()
        if key not in f:
            raise DataError(self.path, f"key {key!r}", self.field, "not in the file" + _hint(f))
        node = f[key]
        if self.dataset is not None:
            if not hasattr(node, "keys") or self.dataset not in node:
                raise DataError(
                    self.path, f"key {key!r}", self.field, f"has no dataset {self.dataset!r}"
                )
            node = node[self.dataset]
        if hasattr(node, "keys"):
            raise DataError(
                self.path,
                f"key {key!r}",
                self.field,
                f"is a group ({sorted(node.keys())[:4]}), not an array",
            )
        try:
            array = node[()]
        except OSError as err:
            raise DataError(
                self.path, f"key {key!r}", self.field, f"unreadable (truncated file?): {err}"
            ) from err
        return check_feature_array(array, self.path, key, self.dim, self.field)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self):  # h5py handles do not pickle; reopen lazily after a copy
        state = dict(self.__dict__)
        state["_file"] = None
        return state


def _hint(f) -> str:
    names = list(f.keys())
    if not names:
        return " (the file has no key)"
    return f" ({len(names)} keys, e.g. {names[:3]})"


class NpyDirStore:
    """Features as ``<directory>/<key><suffix>`` files, one ``[T, D]`` array each."""

    layout = "npy"

    def __init__(
        self,
        directory: str | os.PathLike,
        dim: int | None = None,
        suffix: str = ".npy",
        field: str = "video_features",
    ):
        self.path = str(directory)
        self.dim = dim
        self.suffix = suffix
        self.field = field
        if not os.path.isdir(self.path):
            raise DataError(self.path, None, None, "no such feature directory")

    def keys(self) -> list[str]:
        return sorted(p.name[: -len(self.suffix)] for p in Path(self.path).glob(f"*{self.suffix}"))

    def __contains__(self, key: str) -> bool:
        return os.path.isfile(os.path.join(self.path, key + self.suffix))

    def get(self, key: str) -> np.ndarray:
        path = os.path.join(self.path, key + self.suffix)
        if not os.path.isfile(path):
            raise DataError(path, f"key {key!r}", self.field, "no such feature file")
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise DataError(path, f"key {key!r}", self.field, f"unreadable .npy: {err}") from err
        return check_feature_array(array, path, key, self.dim, self.field)

    def close(self) -> None:
        pass


STORES: dict[str, Callable[..., Hdf5Store | NpyDirStore | LmdbStore]] = {
    "hdf5": Hdf5Store,
    "npy": NpyDirStore,
    "lmdb": LmdbStore,
}


def open_store(
    layout: str, path: str | os.PathLike, **kwargs
) -> Hdf5Store | NpyDirStore | LmdbStore:
    """A store of ``layout`` (a key of :data:`STORES`) over ``path``."""
    if layout not in STORES:
        raise ValueError(f"unknown feature layout {layout!r}; known: {sorted(STORES)}")
    return STORES[layout](path, **kwargs)
