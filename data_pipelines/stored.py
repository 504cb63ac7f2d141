"""A built benchmark on disk: ArrayRecord files read by random access, never loaded whole.

``vmr-jax data build`` (:mod:`data_pipelines.build`) writes, in one directory:

* ``dataset_info.json``: dataset, feature set and its manifest, per-split counts, the parse
  report (what was dropped or clipped and why), feature statistics, the SHA-256 of every
  annotation file read, and ``format_version``.
* ``<split>.queries.jsonl``: one line per query in the official order: ``query_id``,
  ``video_id``, ``video_row`` (row in the videos file), ``duration_s``, ``spans_s``,
  ``query_text``, ``extras`` and, with query token features, ``num_query_tokens``.  Small:
  read whole.
* ``<split>.videos.array_record``: one record per video (row ``video_row``):
  ``video_features [T, D]``, ``clip_times [T, 2]`` and, for TVR, ``subtitle_features [T, Ds]``
  and, built with ``--subtitle_words``, the word-level subtitles (``subtitle_sentence_times
  [S, 2]``, ``subtitle_word_features [W, Dw]``, ``subtitle_word_sentence [W]``; their
  alignment report is ``dataset_info.json``'s ``subtitle_words``).
* ``<split>.query_features.array_record`` (feature sets with query token features, TVR):
  one record per query, ``query_token_features [L, Dq]``.

Records are one small JSON header plus the raw little-endian arrays (decoded with
``np.frombuffer``, no copy, no pickle); files are written with ``group_size:1`` so that
reading one record touches only that record.  Readers are per thread (tf.data calls
:meth:`StoredSplit.videos` from several threads at once).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from data_pipelines.annotations import Annotation, DataError

FORMAT_VERSION = 1
INFO_FILE = "dataset_info.json"
WRITER_OPTIONS = "group_size:1"


def queries_file(split: str) -> str:
    return f"{split}.queries.jsonl"


def videos_file(split: str) -> str:
    return f"{split}.videos.array_record"


def query_features_file(split: str) -> str:
    return f"{split}.query_features.array_record"


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (annotation and ground-truth files are identified by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- record codec
def encode(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> bytes:
    """``arrays`` (and JSON ``meta``) as one bytes record: header length, header, raw data."""
    header: dict[str, Any] = {"meta": dict(meta or {}), "arrays": {}}
    chunks, offset = [], 0
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        dtype = array.dtype.newbyteorder("<")
        data = array.astype(dtype, copy=False).tobytes()
        header["arrays"][name] = [dtype.str, list(array.shape), offset]
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def decode(blob: bytes, source: str = "", row: int | None = None):
    """Inverse of :func:`encode`: ``(arrays, meta)``; a damaged record is a :class:`DataError`."""
    try:
        (size,) = struct.unpack_from("<Q", blob, 0)
        header = json.loads(blob[8 : 8 + size])
        base = 8 + size
        arrays = {}
        for name, (dtype, shape, offset) in header["arrays"].items():
            count = int(np.prod(shape)) if shape else 1
            arrays[name] = np.frombuffer(
                blob, dtype=np.dtype(dtype), count=count, offset=base + offset
            ).reshape(shape)
        return arrays, header["meta"]
    except (struct.error, ValueError, KeyError, TypeError) as err:
        raise DataError(source, f"record {row}", None, f"damaged record: {err}") from err


def write_records(path: str, blobs) -> int:
    """Writes an ArrayRecord file from an iterable of bytes; returns the record count."""
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(path, WRITER_OPTIONS)
    count = 0
    try:
        for blob in blobs:
            writer.write(blob)
            count += 1
    finally:
        writer.close()
    return count


class RecordFile:
    """Random access to an ArrayRecord file, one reader per thread."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise DataError(path, None, None, "no such file (run `vmr-jax data build`)")
        self.path = path
        self._local = threading.local()
        self.num_records = self._reader().num_records()

    def _reader(self):
        reader = getattr(self._local, "reader", None)
        if reader is None:
            from array_record.python.array_record_module import ArrayRecordReader

            try:
                reader = ArrayRecordReader(self.path, "readahead_buffer_size:0")
            except Exception as err:  # the C++ reader raises plain RuntimeErrors
                raise DataError(self.path, None, None, f"unreadable ArrayRecord: {err}") from err
            self._local.reader = reader
        return reader

    def read(self, rows: Sequence[int]) -> list[dict[str, np.ndarray]]:
        rows = [int(r) for r in rows]
        bad = [r for r in rows if not 0 <= r < self.num_records]
        if bad:
            raise DataError(self.path, f"record {bad[0]}", None, f"out of {self.num_records}")
        blobs = self._reader().read(rows)
        return [decode(b, self.path, r)[0] for b, r in zip(blobs, rows)]

    def __getstate__(self):
        return {"path": self.path, "num_records": self.num_records}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()


# --------------------------------------------------------------------------- reading
class StoredSplit:
    """One split of a built benchmark: annotations in memory, features on demand.

    ``annotations[q]`` is query ``q``; ``video_row[q]`` its row in the videos file.
    """

    def __init__(self, directory: str, split: str, info: Mapping[str, Any]):
        self.directory = directory
        self.split = split
        self.info = info
        path = os.path.join(directory, queries_file(split))
        if not os.path.isfile(path):
            raise DataError(path, None, None, f"no split {split!r} in the built dataset")
        self.annotations: list[Annotation] = []
        rows, token_counts = [], []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                try:
                    q = json.loads(line)
                    self.annotations.append(
                        Annotation(
                            query_id=q["query_id"],
                            video_id=q["video_id"],
                            duration_s=float(q["duration_s"]),
                            spans_s=np.asarray(q["spans_s"], np.float64).reshape(-1, 2),
                            query_text=q["query_text"],
                            extras=q.get("extras", {}),
                        )
                    )
                    rows.append(int(q["video_row"]))
                    token_counts.append(int(q.get("num_query_tokens", 0)))
                except (ValueError, KeyError, TypeError) as err:
                    where = f"line {line_no}"
                    raise DataError(path, where, None, f"bad query line: {err}") from err
        self.video_row = np.asarray(rows, np.int64)
        self.num_query_tokens = np.asarray(token_counts, np.int64)
        self._videos = RecordFile(os.path.join(directory, videos_file(split)))
        if len(rows) and self.video_row.max() >= self._videos.num_records:
            raise DataError(path, None, "video_row", "points past the videos file")
        qpath = os.path.join(directory, query_features_file(split))
        self._query_features = RecordFile(qpath) if os.path.isfile(qpath) else None

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> Annotation:
        return self.annotations[index]

    def __iter__(self):
        return iter(self.annotations)

    @property
    def feature_dims(self) -> dict[str, int]:
        """``{"video": D[, "subtitle": Ds][, "query": Dq]}`` from ``dataset_info.json``."""
        return dict(self.info["splits"][self.split]["feature_dims"])

    @property
    def num_videos(self) -> int:
        return self._videos.num_records

    def videos(self, rows: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """Video records (``video_features``, ``clip_times``[, ``subtitle_features``])."""
        return self._videos.read(rows)

    def query_features(self, queries: Sequence[int]) -> list[np.ndarray]:
        """``query_token_features [L, Dq]`` of query indices ``queries``."""
        if self._query_features is None:
            raise DataError(
                self.directory,
                f"split {self.split!r}",
                "query_token_features",
                "this built dataset has no query token features",
            )
        return [r["query_token_features"] for r in self._query_features.read(queries)]


class StoredDataset:
    """A directory written by ``vmr-jax data build``."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = str(directory)
        path = os.path.join(self.directory, INFO_FILE)
        if not os.path.isfile(path):
            raise DataError(
                self.directory,
                None,
                None,
                f"no {INFO_FILE}: not a built dataset (run `vmr-jax data build`)",
            )
        with open(path, encoding="utf-8") as f:
            self.info = json.load(f)
        version = self.info.get("format_version")
        if version != FORMAT_VERSION:
            raise DataError(
                path, None, "format_version", f"{version}, this vmr_jax reads {FORMAT_VERSION}"
            )
        self._splits: dict[str, StoredSplit] = {}

    @property
    def split_names(self) -> list[str]:
        return list(self.info["splits"])

    def split(self, name: str) -> StoredSplit:
        if name not in self.info["splits"]:
            raise KeyError(f"no split {name!r} in {self.directory}; have {self.split_names}")
        if name not in self._splits:
            self._splits[name] = StoredSplit(self.directory, name, self.info)
        return self._splits[name]
