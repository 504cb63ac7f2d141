"""Reader of HERO's LMDB video feature databases (``video_db/<dataset>/<version>_<interval>``).

HERO (linjieli222/HERO) ships its ResNet+SlowFast clip features as LMDB environments, written by
``scripts/convert_videodb.py`` and read by ``VideoFeatLmdb`` in ``data/data.py``.  The layout
this store reads:

* a directory ``<img_dir>/<feat_version>_<frame_interval>`` (e.g. ``resnet_slowfast_1.5``; a
  ``_compressed`` suffix when written with ``--compress``) holding the LMDB ``data.mdb`` /
  ``lock.mdb`` pair;
* one LMDB entry per video: key = the video name in UTF-8, value = either
  - a msgpack map ``{"features": ndarray}`` packed with ``use_bin_type=True`` and
    ``msgpack_numpy`` (the array is a map ``{b"nd": True, b"type": dtype string,
    b"kind": b"", b"shape": [T, D], b"data": raw bytes}``), or
  - for ``_compressed`` databases, the bytes of an ``np.savez_compressed`` archive with an array
    ``features``;
  ``features`` is ``[T, 4352]`` = ResNet-152 (2048) then SlowFast (2304), float32 or float16;
* optionally ``__keys__`` (a JSON list of the names; skipped by :meth:`LmdbStore.keys`);
* ``<img_dir>/id2nframe.json`` (next to the LMDB directory): ``{name: number of frames}``; HERO
  reads ``features[:n]`` with this ``n``, and so does :meth:`LmdbStore.get` when the file exists.

A truncated ``data.mdb`` would crash the process when LMDB maps it (SIGBUS), so the store
checks its size against LMDB's meta pages before opening it (:func:`check_lmdb_data_file`).
The two value encodings are told apart by their first bytes (a zip archive starts with
``PK\\x03\\x04``), so the ``_compressed`` suffix is not needed.  The msgpack arrays are decoded
here (no ``msgpack_numpy`` needed); ``lmdb`` and ``msgpack`` are imported only when a store is
first read, and a missing ``lmdb`` gives an error that says ``pip install lmdb``.
"""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import zipfile
from typing import Any

import numpy as np

from data_pipelines.annotations import DataError

_ZIP_MAGIC = b"PK\x03\x04"
_KEYS_ENTRY = "__keys__"


def _import_lmdb():
    try:
        import lmdb
    except ImportError as err:
        raise ImportError(
            "reading HERO's LMDB feature databases needs the 'lmdb' package: pip install lmdb"
        ) from err
    return lmdb


def _import_msgpack():
    try:
        import msgpack
    except ImportError as err:
        raise ImportError(
            "reading HERO's uncompressed LMDB values needs the 'msgpack' package: "
            "pip install msgpack"
        ) from err
    return msgpack


def _field(obj: dict, name: str) -> Any:
    """``obj[name]`` under a text or a bytes key (msgpack_numpy writes bytes keys)."""
    if name in obj:
        return obj[name]
    return obj.get(name.encode("ascii"))


def _ndarray_hook(obj: dict) -> Any:
    """msgpack object hook: a ``msgpack_numpy`` array map -> ``np.ndarray``; else unchanged."""
    if _field(obj, "nd") is not True:
        return obj
    kind = _field(obj, "kind")
    if kind in (b"V", "V"):
        raise ValueError("structured (void) arrays are not feature arrays")
    dtype = _field(obj, "type")
    if isinstance(dtype, bytes):
        dtype = dtype.decode("ascii")
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in _field(obj, "shape"))
    data = _field(obj, "data")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not isinstance(data, bytes | bytearray) or len(data) != expected:
        got = len(data) if isinstance(data, bytes | bytearray) else type(data).__name__
        raise ValueError(f"array data of {got} bytes for shape {shape} {dtype} ({expected} bytes)")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def decode_hero_value(value: bytes) -> np.ndarray:
    """The ``features`` array of one HERO LMDB value (npz archive or msgpack map).

    Raises ValueError (or the decoder's own error) when the bytes are not such a value.
    """
    if value[:4] == _ZIP_MAGIC:
        with np.load(io.BytesIO(value), allow_pickle=False) as archive:
            if "features" not in archive.files:
                raise ValueError(f"npz archive without 'features' (has {archive.files})")
            return archive["features"]
    msgpack = _import_msgpack()
    dump = msgpack.unpackb(value, raw=False, object_hook=_ndarray_hook, strict_map_key=False)
    if not isinstance(dump, dict):
        raise ValueError(f"expected a map with 'features', got {type(dump).__name__}")
    features = _field(dump, "features")
    if features is None:
        raise ValueError(f"map without 'features' (keys {sorted(map(str, dump))[:4]})")
    if not isinstance(features, np.ndarray):
        raise ValueError(f"'features' is a {type(features).__name__}, not a msgpack_numpy array")
    return features


def encode_hero_value(features: np.ndarray) -> bytes:
    """One uncompressed HERO value: msgpack ``{"features": <msgpack_numpy array map>}``."""
    msgpack = _import_msgpack()
    array = np.ascontiguousarray(features)
    packed = {
        b"nd": True,
        b"type": array.dtype.str,
        b"kind": b"",
        b"shape": list(array.shape),
        b"data": array.tobytes(),
    }
    return msgpack.packb({"features": packed}, use_bin_type=True)


def write_hero_db(path: str | os.PathLike, features: dict[str, np.ndarray]) -> None:
    """Writes ``{video name: [T, D]}`` in HERO's uncompressed layout (module docstring): the
    LMDB directory ``path`` with a ``__keys__`` entry, and ``id2nframe.json`` beside it (the
    ``data fake`` writer; the reader never needs it)."""
    lmdb = _import_lmdb()
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    values = {name: encode_hero_value(array) for name, array in features.items()}
    size = sum(len(v) + len(k) + 64 for k, v in values.items())
    env = lmdb.open(path, map_size=max(2 * size, 1 << 24))
    try:
        with env.begin(write=True) as txn:
            for name, value in values.items():
                txn.put(name.encode("utf-8"), value)
            txn.put(_KEYS_ENTRY.encode("utf-8"), json.dumps(list(values)).encode("utf-8"))
    finally:
        env.close()
    counts = {name: int(len(array)) for name, array in features.items()}
    with open(os.path.join(os.path.dirname(path), "id2nframe.json"), "w", encoding="utf-8") as f:
        json.dump(counts, f)


_LMDB_MAGIC = 0xBEEFC0DE
_META_OFFSET = 16  # page header (64-bit build): pgno, pad, flags, lower, upper
_META_LAYOUT = {"magic": 0, "page_size": 24, "last_page": 120, "txn_id": 128}  # from meta start


def _meta(header: bytes) -> dict[str, int]:
    """The fields of ``_META_LAYOUT`` from the start of one meta page."""
    formats = {"magic": "<I", "page_size": "<I", "last_page": "<Q", "txn_id": "<Q"}
    return {
        name: struct.unpack_from(fmt, header, _META_OFFSET + _META_LAYOUT[name])[0]
        for name, fmt in formats.items()
    }


def check_lmdb_data_file(data_file: str) -> None:
    """A ``data.mdb`` that LMDB can map without reading past its end, else :class:`DataError`.

    LMDB maps the file and would crash the process (SIGBUS) on a page cut off by a truncated
    copy, so the size is checked first: of the two meta pages (pages 0 and 1), the one of the
    newest transaction names the last used page, and the file must hold every page up to it.
    The offsets are those of LMDB's ``MDB_meta`` on 64-bit little-endian builds (the page size
    is the free-list database's ``md_pad``).
    """
    size = os.path.getsize(data_file)
    if size == 0:
        raise DataError(data_file, None, None, "empty file (0 bytes)")
    needed_meta = _META_OFFSET + _META_LAYOUT["txn_id"] + 8
    with open(data_file, "rb") as f:
        first = f.read(needed_meta)
        if len(first) < needed_meta:
            raise DataError(data_file, None, None, f"truncated: {size} bytes, no LMDB meta page")
        meta0 = _meta(first)
        if meta0["magic"] != _LMDB_MAGIC:
            raise DataError(data_file, None, None, "not an LMDB data file (bad magic number)")
        page_size = meta0["page_size"]
        if page_size < needed_meta or page_size & (page_size - 1):
            raise DataError(
                data_file, None, None, f"corrupt LMDB meta page (page size {page_size})"
            )
        f.seek(page_size)
        second = f.read(needed_meta)
    if len(second) < needed_meta:
        raise DataError(data_file, None, None, f"truncated: {size} bytes, no second meta page")
    meta1 = _meta(second)
    newest = max(
        (m for m in (meta0, meta1) if m["magic"] == _LMDB_MAGIC), key=lambda m: m["txn_id"]
    )
    needed = (newest["last_page"] + 1) * page_size
    if size < needed:
        raise DataError(
            data_file, None, None, f"truncated: {size} bytes, the LMDB pages need {needed}"
        )


# py-lmdb refuses to open one environment twice in a process, so every store over the same
# data.mdb (a pickled copy, a second FeatureSet) shares one read-only environment.
_ENVS: dict[str, list] = {}  # realpath of data.mdb -> [environment, number of stores using it]
_ENVS_LOCK = threading.Lock()


class LmdbStore:
    """HERO video features in one LMDB environment, ``[T, D]`` per video name.

    Args:
      path: the LMDB directory (``.../video_db/didemo/resnet_slowfast_1.5``) or its
        ``data.mdb`` file.
      dim: expected width ``D`` (None: any).
      field: what the arrays are, for messages.

    The same interface as :class:`~data_pipelines.feature_stores.Hdf5Store`: ``keys()``,
    ``key in store``, ``get(key)`` -> checked ``float32 [T, D]``, ``close()``.
    """

    layout = "lmdb"

    def __init__(
        self, path: str | os.PathLike, dim: int | None = None, field: str = "video_features"
    ):
        self.path = str(path)
        self.dim = dim
        self.field = field
        self._env = None
        self._nframes: dict[str, int] | None = None
        if not os.path.exists(self.path):
            raise DataError(self.path, None, None, "no such LMDB feature database")
        data_file = os.path.join(self.path, "data.mdb") if os.path.isdir(self.path) else self.path
        if not os.path.isfile(data_file):
            raise DataError(self.path, None, None, "no data.mdb in the LMDB directory")
        check_lmdb_data_file(data_file)
        self._data_file = data_file
        self._env_key: str | None = None
        root = self.path if os.path.isdir(self.path) else os.path.dirname(self.path)
        self.nframe_file = os.path.join(os.path.dirname(os.path.abspath(root)), "id2nframe.json")

    def _open(self):
        if self._env is None:
            key = os.path.realpath(self._data_file)
            with _ENVS_LOCK:
                entry = _ENVS.get(key)
                if entry is None:
                    lmdb = _import_lmdb()
                    try:
                        env = lmdb.open(
                            self.path,
                            subdir=os.path.isdir(self.path),
                            readonly=True,
                            create=False,
                            lock=False,
                            readahead=False,
                            max_readers=512,
                        )
                    except lmdb.Error as err:
                        raise DataError(
                            self.path, None, None, f"not a readable LMDB database: {err}"
                        ) from err
                    entry = _ENVS[key] = [env, 0]
                entry[1] += 1
            self._env, self._env_key = entry[0], key
        return self._env

    def _read(self, fn):
        lmdb = _import_lmdb()
        env = self._open()
        try:
            with env.begin(write=False, buffers=False) as txn:
                return fn(txn)
        except lmdb.Error as err:
            raise DataError(
                self.path, None, None, f"unreadable LMDB database (truncated?): {err}"
            ) from err

    def _frame_counts(self) -> dict[str, int]:
        """HERO's ``id2nframe.json`` next to the database ({} when there is none)."""
        if self._nframes is None:
            counts: dict[str, int] = {}
            if os.path.isfile(self.nframe_file):
                try:
                    with open(self.nframe_file, encoding="utf-8") as f:
                        counts = json.load(f)
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    raise DataError(self.nframe_file, None, None, f"malformed JSON: {err}") from err
                if not isinstance(counts, dict) or not all(
                    isinstance(n, int) and not isinstance(n, bool) for n in counts.values()
                ):
                    raise DataError(
                        self.nframe_file, None, None, "expected {video name: frame count (int)}"
                    )
            self._nframes = counts
        return self._nframes

    def keys(self) -> list[str]:
        """Every video name in the database (HERO's ``__keys__`` entry left out)."""

        def collect(txn):
            with txn.cursor() as cursor:
                return [k.decode("utf-8") for k in cursor.iternext(keys=True, values=False)]

        return [k for k in self._read(collect) if k != _KEYS_ENTRY]

    def __contains__(self, key: str) -> bool:
        return self._read(lambda txn: txn.get(key.encode("utf-8"))) is not None

    def get(self, key: str) -> np.ndarray:
        """``float32 [T, D]`` of ``key`` (first ``id2nframe[key]`` rows when known), checked."""
        from data_pipelines.feature_stores import check_feature_array

        where = f"key {key!r}"
        value = self._read(lambda txn: txn.get(key.encode("utf-8")))
        if value is None:
            raise DataError(self.path, where, self.field, "not in the database" + self._hint())
        try:
            array = decode_hero_value(bytes(value))
        except ImportError:
            raise
        except (ValueError, TypeError, KeyError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(self.path, where, self.field, f"corrupt value: {err}") from err
        except Exception as err:  # msgpack's own exception classes vary between versions
            raise DataError(self.path, where, self.field, f"corrupt value: {err!r}") from err
        nframes = self._frame_counts().get(key)
        if nframes is not None and array.ndim == 2:
            array = array[:nframes]
        return check_feature_array(array, self.path, key, self.dim, self.field)

    def _hint(self) -> str:
        names = self.keys()
        if not names:
            return " (the database has no key)"
        return f" ({len(names)} keys, e.g. {names[:3]})"

    def close(self) -> None:
        """Release this store's use of the shared environment (closed with its last user)."""
        if self._env is None:
            return
        with _ENVS_LOCK:
            entry = _ENVS.get(self._env_key)
            if entry is not None and entry[0] is self._env:
                entry[1] -= 1
                if entry[1] <= 0:
                    entry[0].close()
                    del _ENVS[self._env_key]
        self._env = None

    def __getstate__(self):  # LMDB environments do not pickle; reopen lazily after a copy
        state = dict(self.__dict__)
        state["_env"] = None
        return state
