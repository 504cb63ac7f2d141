"""One sharded embedding index: what the VCMR corpus and the FVMR gallery are built on.

Query-independent encodings of ``V`` videos, computed once and kept on the mesh as global
arrays ``[V_pad, ...]`` sharded on ``data`` along the video axis (``V_pad``: ``V`` rounded up
to a multiple of the ``data`` size; padding rows are zeros, and the search programs never
return them).  Three pieces, shared by :mod:`vmr_jax.retrieval.corpus` (XML and the corpus
families: every stage-1 / stage-2 encoding) and :mod:`vmr_jax.retrieval.gallery` (FVMR's
``phi_m(m)`` of every moment):

* :func:`encode_all` -- the encode program over the videos in batches sharded on ``data``
  (the last batch repeats its last video; those outputs are dropped), filling host buffers.
* :func:`place` -- host arrays ``[V, ...]`` -> zero-padded global arrays on the mesh.
* :class:`EmbeddingIndex` -- the arrays, the number of videos, their ids and JSON-able
  metadata; :meth:`~EmbeddingIndex.save` writes them with orbax plus ``index.json``,
  :meth:`~EmbeddingIndex.load` restores them onto any mesh, each device reading its own rows
  (orbax drops or zero-pads the rows past the saved padding).

Build, save and load run in one process (``jax.process_count() == 1``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
INDEX_FILE = "index.json"
ARRAYS_DIR = "arrays"
INDEX_FORMAT = 2  # 1: the corpus.json / gallery.json layouts before the shared index


class IndexError_(ValueError):  # noqa: N801  (``IndexError`` is a builtin)
    """An index, a video batch or a query batch that cannot be used (names the field)."""


def data_size(mesh: Mesh, error: type[ValueError] = IndexError_) -> int:
    """Size of the mesh's ``data`` axis (an error naming the axes when there is none)."""
    if DATA_AXIS not in mesh.axis_names:
        raise error(f"the mesh needs a {DATA_AXIS!r} axis, has {mesh.axis_names}")
    return int(mesh.shape[DATA_AXIS])


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def single_process(what: str, error: type[ValueError] = IndexError_) -> None:
    if jax.process_count() > 1:
        raise error(f"{what} are built, loaded and searched in a single process")


def check_ids(video_ids: Sequence | None, num_videos: int, error=IndexError_) -> tuple | None:
    """``video_ids`` as a tuple of ``num_videos`` distinct JSON-able ids (None stays None)."""
    if video_ids is None:
        return None
    ids = tuple(video_ids)
    if len(ids) != num_videos:
        raise error(f"video_ids has {len(ids)} entries for {num_videos} videos")
    if len(set(ids)) != len(ids):
        seen: set = set()
        dup = next(v for v in ids if v in seen or seen.add(v))
        raise error(f"video_ids: {dup!r} appears twice")
    return ids


@dataclasses.dataclass(frozen=True)
class EmbeddingIndex:
    """Encodings ``{name: [V_pad, ...]}`` of ``num_videos`` videos, sharded on ``data`` along
    the video axis of ``mesh``; ``video_ids`` (``num_videos`` JSON-able ids, or None) and
    JSON-able ``metadata`` travel with them."""

    encodings: dict[str, jax.Array]
    num_videos: int
    mesh: Mesh
    video_ids: tuple | None = None
    metadata: dict = dataclasses.field(default_factory=dict)

    @property
    def padded_videos(self) -> int:
        return int(jax.tree.leaves(self.encodings)[0].shape[0])

    def save(self, directory: str | Path) -> Path:
        """Writes ``directory/arrays`` (orbax) and ``directory/index.json``."""
        path = Path(directory).absolute()
        path.mkdir(parents=True, exist_ok=True)
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(path / ARRAYS_DIR, dict(self.encodings), force=True)
        shapes = {k: list(v.shape[1:]) for k, v in self.encodings.items()}
        meta = {
            "format": INDEX_FORMAT,
            "num_videos": self.num_videos,
            "shapes": shapes,
            "dtypes": {k: str(v.dtype) for k, v in self.encodings.items()},
            "video_ids": None if self.video_ids is None else list(self.video_ids),
            "metadata": self.metadata,
        }
        (path / INDEX_FILE).write_text(json.dumps(meta))
        return path

    @classmethod
    def load(
        cls, directory: str | Path, mesh: Mesh, error: type[ValueError] = IndexError_
    ) -> EmbeddingIndex:
        """An index written by :meth:`save`, placed on ``mesh`` (any number of devices)."""
        single_process("indexes", error)
        path = Path(directory).absolute()
        meta_path = path / INDEX_FILE
        if not meta_path.exists():
            raise error(f"{meta_path} not found: is {path} a saved index?")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != INDEX_FORMAT:
            raise error(
                f"{meta_path}: format {meta.get('format')!r}, want {INDEX_FORMAT} "
                "(an index saved by another vmr_jax version: build it again)"
            )
        num_videos = int(meta["num_videos"])
        padded = round_up(num_videos, data_size(mesh, error))
        sharded = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
        # strict=False: orbax drops or zero-pads the rows past the saved padding.
        restore = {
            name: ocp.ArrayRestoreArgs(
                sharding=sharded,
                global_shape=(padded, *shape),
                dtype=np.dtype(meta["dtypes"][name]),
                strict=False,
            )
            for name, shape in meta["shapes"].items()
        }
        with ocp.PyTreeCheckpointer() as checkpointer:
            encodings = checkpointer.restore(
                path / ARRAYS_DIR, args=ocp.args.PyTreeRestore(restore_args=restore)
            )
        ids = check_ids(meta.get("video_ids"), num_videos, error)
        return cls(dict(encodings), num_videos, mesh, ids, dict(meta.get("metadata") or {}))


def place(
    host: Mapping[str, np.ndarray], num_videos: int, mesh: Mesh, error=IndexError_
) -> dict[str, jax.Array]:
    """Host encodings ``{name: [V, ...]}`` -> global arrays ``[V_pad, ...]`` sharded on
    ``data`` (zero rows past ``V``); each device's rows are copied straight to it."""
    single_process("indexes", error)
    padded = round_up(num_videos, data_size(mesh, error))
    sharded = NamedSharding(mesh, PartitionSpec(DATA_AXIS))

    def put(x):
        x = np.asarray(x)
        if x.shape[0] != num_videos:
            raise error(f"an encoding has {x.shape[0]} rows for {num_videos} videos")
        full = np.zeros((padded, *x.shape[1:]), x.dtype)
        full[:num_videos] = x
        return jax.make_array_from_callback(full.shape, sharded, lambda index: full[index])

    return {name: put(x) for name, x in host.items()}


def encode_all(
    encode: Callable[[Any, dict], Mapping[str, Any]],
    variables: Any,
    take: Callable[[np.ndarray], Mapping[str, np.ndarray]],
    num_videos: int,
    mesh: Mesh,
    batch_size: int,
    *,
    check: Callable[[np.ndarray, dict, dict], None] | None = None,
    error: type[ValueError] = IndexError_,
) -> dict[str, np.ndarray]:
    """Host encodings ``{name: [V, ...]}`` of every video.

    Args:
      encode: ``(variables, batch) -> {name: [B, ...]}``, jitted by the caller (one program).
      take: ``rows -> {field: [B, ...]}`` numpy video inputs.
      batch_size: videos per step, rounded up to a multiple of the ``data`` size; the last
        batch repeats its last row, whose outputs are dropped.
      check: ``(rows, batch, encoded)`` called per batch on the real rows (raise to refuse).
    """
    num_videos = int(num_videos)
    if num_videos < 1:
        raise error("the index has no video")
    batch_size = round_up(max(1, int(batch_size)), data_size(mesh, error))
    batch_sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    variables = jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))
    host: dict[str, np.ndarray] | None = None
    for start in range(0, num_videos, batch_size):
        rows = np.arange(start, min(start + batch_size, num_videos))
        padded = np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])])
        batch = {k: np.asarray(v) for k, v in take(padded).items()}
        for key, value in batch.items():
            if value.shape[:1] != (batch_size,):
                raise error(f"the videos gave {key} {value.shape} for {batch_size} rows")
        encoded = {
            k: np.asarray(v)[: len(rows)]
            for k, v in dict(encode(variables, jax.device_put(batch, batch_sharding))).items()
        }
        if check is not None:
            check(rows, {k: v[: len(rows)] for k, v in batch.items()}, encoded)
        if host is None:
            host = {k: np.zeros((num_videos, *v.shape[1:]), v.dtype) for k, v in encoded.items()}
        for key, value in encoded.items():
            host[key][rows] = value
    return host
