"""Hard negative videos mined by a trained retriever: the stored file and the per-example draw.

PREM (Sec. 3.5, 4.2) trains its moment localizer with Shared-Norm over the query's own video
and ``n`` negative videos "sampled from the top-100 ranked videos" of the trained video
retriever (``n`` = 4 on TVR, 2 on DiDeMo); CONQUER does the same with HERO's top-100.  The
ranking is mined once (:func:`vmr_jax.retrieval.mining.mine_hard_negatives`) and stored here;
the input pipeline draws from it for every training example (:class:`NegativeSampler`).

File (:meth:`HardNegatives.save`): ``<directory>/<split>.npz`` holds every array and the
identity of the data (``video_rows [Nq, top] int32`` rows of the split's video table, best
first, the query's own video included when it ranks; ``scores [Nq, top] float32`` the family's
VR rank scores; ``video_ids``, ``query_ids``; ``split``, ``top``, ``checkpoint_step``), and
``<directory>/<split>.json`` a readable summary (counts, sha256 of the id lists, creation time,
library version).  Each is written to a temporary file then ``os.replace``d, so a killed
write never leaves half a file.  The conventional place is ``<workdir>/hard_negatives/``
(:func:`default_path`).  :func:`load` and :func:`check_matches` refuse, with one
:class:`~vmr_jax.errors.UserError` line naming the file and the field, a missing, cut or
malformed file and one mined on another split or other data.

Draw (:class:`NegativeSampler`; the paper is silent on how, this is CONQUER's uniform draw):
for query ``r`` the candidates are its mined list less every row equal to its own video
(``video_index[r]``); ``n`` distinct candidates are drawn uniformly without replacement with
``numpy.random.default_rng((seed, position))``, ``position`` the example's place in the
training stream, so a resumed run, any number of hosts and any batch split draw the same
videos.  With fewer than ``n`` candidates (a tiny corpus) all of them are kept and the rest is
drawn from the table's other videos (distinct, never the positive).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from vmr_jax.errors import UserError

DEFAULT_DIRNAME = "hard_negatives"
FORMAT = 1
_ARRAYS = ("video_rows", "scores", "video_ids", "query_ids", "split", "top", "checkpoint_step")


def default_path(workdir: str | os.PathLike, split: str = "train") -> Path:
    """``<workdir>/hard_negatives/<split>.npz``: where training mines and reads by default."""
    return Path(workdir) / DEFAULT_DIRNAME / f"{split}.npz"


def ids_sha256(ids: list[str]) -> str:
    """sha256 of an id list (its JSON text): names the data a file was mined on."""
    return hashlib.sha256(json.dumps(list(ids)).encode("utf-8")).hexdigest()


@dataclasses.dataclass
class HardNegatives:
    """Each query's ``top`` best videos of its split by a trained retriever (module docstring).

    ``video_rows [Nq, top] int32``: rows of the split's video table, best first (may hold the
    query's own video); ``scores [Nq, top] float32``: the family's VR rank scores of them.
    """

    video_rows: np.ndarray
    scores: np.ndarray
    split: str
    video_ids: list[str]
    query_ids: list[str]
    checkpoint_step: int
    top: int

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes ``<directory>/<split>.npz`` and ``<directory>/<split>.json`` atomically;
        returns the ``.npz`` path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.split}.npz"
        arrays = {
            "video_rows": np.asarray(self.video_rows, np.int32),
            "scores": np.asarray(self.scores, np.float32),
            "video_ids": np.asarray(self.video_ids, dtype=str),
            "query_ids": np.asarray(self.query_ids, dtype=str),
            "split": np.asarray(self.split),
            "top": np.asarray(self.top, np.int64),
            "checkpoint_step": np.asarray(self.checkpoint_step, np.int64),
        }
        _replace_atomically(path, lambda f: np.savez_compressed(f, **arrays))
        from vmr_jax import __version__

        summary = {
            "format": FORMAT,
            "split": self.split,
            "top": int(self.top),
            "checkpoint_step": int(self.checkpoint_step),
            "num_queries": len(self.query_ids),
            "num_videos": len(self.video_ids),
            "video_ids_sha256": ids_sha256(self.video_ids),
            "query_ids_sha256": ids_sha256(self.query_ids),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "vmr_jax_version": __version__,
        }
        text = (json.dumps(summary, indent=2) + "\n").encode("utf-8")
        _replace_atomically(path.with_suffix(".json"), lambda f: f.write(text))
        return path


def _replace_atomically(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _missing_message(path: Path) -> str:
    workdir = path.parent.parent if path.parent.name == DEFAULT_DIRNAME else "<workdir>"
    return (
        f"no mined hard negatives at {path}; train the retriever with this workdir, or run "
        f"`vmr-jax mine --workdir {workdir}`"
    )


def load(path: str | os.PathLike) -> HardNegatives:
    """The negatives saved at ``path`` (the ``.npz``), checked for shape, dtype and range."""
    path = Path(path)
    if not path.is_file():
        raise UserError(_missing_message(path))
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in _ARRAYS if k not in archive.files]
            if missing:
                raise UserError(f"{path}: field {missing[0]!r} is missing (not a mined file?)")
            arrays = {k: archive[k] for k in _ARRAYS}
    except UserError:
        raise
    except Exception as err:  # a cut zip, a bad member: numpy and zipfile raise many kinds
        detail = " ".join(str(err).split())  # one line
        raise UserError(
            f"{path}: cut or corrupt file ({type(err).__name__}: {detail}); mine it again"
        ) from err

    def bad(field: str, what: str) -> UserError:
        return UserError(f"{path}: field {field!r} {what}; mine it again")

    rows, scores = arrays["video_rows"], arrays["scores"]
    for name in ("video_ids", "query_ids"):
        if arrays[name].ndim != 1 or arrays[name].dtype.kind != "U":
            got = f"{arrays[name].dtype} {arrays[name].shape}"
            raise bad(name, f"must be a list of strings, got {got}")
    for name in ("split", "top", "checkpoint_step"):
        if arrays[name].ndim != 0:
            raise bad(name, f"must be a single value, got shape {arrays[name].shape}")
    if arrays["split"].dtype.kind != "U":
        raise bad("split", f"must be a string, got {arrays['split'].dtype}")
    for name in ("top", "checkpoint_step"):
        if arrays[name].dtype.kind not in "iu":
            raise bad(name, f"must be an integer, got {arrays[name].dtype}")
    num_q, num_v, top = len(arrays["query_ids"]), len(arrays["video_ids"]), int(arrays["top"])
    if rows.dtype != np.int32 or rows.shape != (num_q, top):
        raise bad("video_rows", f"must be int32 [{num_q}, {top}], got {rows.dtype} {rows.shape}")
    if scores.dtype != np.float32 or scores.shape != rows.shape:
        raise bad(
            "scores", f"must be float32 {list(rows.shape)}, got {scores.dtype} {scores.shape}"
        )
    if rows.size and (rows.min() < 0 or rows.max() >= num_v):
        raise bad("video_rows", f"has rows outside 0..{num_v - 1} (the file's {num_v} videos)")
    ordered = np.sort(rows, axis=1)
    if (ordered[:, 1:] == ordered[:, :-1]).any():
        q = int(np.argmax((ordered[:, 1:] == ordered[:, :-1]).any(1)))
        raise bad("video_rows", f"lists a video twice for query {arrays['query_ids'][q]!r}")
    return HardNegatives(
        video_rows=rows,
        scores=scores,
        split=str(arrays["split"]),
        video_ids=arrays["video_ids"].tolist(),
        query_ids=arrays["query_ids"].tolist(),
        checkpoint_step=int(arrays["checkpoint_step"]),
        top=top,
    )


def _first_difference(ours: list[str], theirs: list[str]) -> str:
    k = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
    return f"row {k} is {ours[k]!r} in the file, {theirs[k]!r} in the split"


def check_matches(
    negatives: HardNegatives, prepared: Any, split_name: str, path: str | os.PathLike
) -> None:
    """Refuses (``UserError`` naming ``path`` and the field) negatives mined on another split
    or on other data than ``prepared`` (a :class:`~data_pipelines.input_pipeline.PreparedSplit`
    named ``split_name``)."""
    advice = "(another dataset or data config): mine them again for this data"
    if negatives.split != split_name:
        raise UserError(
            f"{path}: field 'split': mined on split {negatives.split!r}, this run trains on "
            f"{split_name!r}"
        )
    checks = (
        ("query_ids", "queries", negatives.query_ids, list(prepared.query_ids)),
        ("video_ids", "videos", negatives.video_ids, list(prepared.video_ids)),
    )
    for field, what, ours, theirs in checks:
        if len(ours) != len(theirs):
            raise UserError(
                f"{path}: field {field!r}: {len(ours)} {what}, split {split_name!r} has "
                f"{len(theirs)} {advice}"
            )
        if ours != theirs:
            raise UserError(
                f"{path}: field {field!r} differs from split {split_name!r}: "
                f"{_first_difference(ours, theirs)} {advice}"
            )


class NegativeSampler:
    """Draws ``num_negatives`` negative video rows per training example (module docstring).

    Args:
      negatives: the mined lists of the training split (checked with :func:`check_matches`).
      video_index: ``[Nq]`` row of each query's own video in the split's video table.
      num_negatives: ``n`` videos per example.
      seed: the run's seed (``config.train.seed``).
    """

    def __init__(
        self, negatives: HardNegatives, video_index: np.ndarray, num_negatives: int, seed: int
    ):
        self.num_negatives, self.seed = int(num_negatives), int(seed)
        self.num_videos = len(negatives.video_ids)
        self.video_index = np.asarray(video_index, np.int64)
        self.rows = np.asarray(negatives.video_rows, np.int64)
        if self.num_negatives < 1:
            raise UserError(f"num_negatives must be >= 1, got {self.num_negatives}")
        if self.seed < 0:
            raise UserError(f"the negative draw needs a seed >= 0, got {self.seed}")
        if self.num_videos < self.num_negatives + 1:
            raise UserError(
                f"config.data.num_negatives={self.num_negatives} needs at least "
                f"{self.num_negatives + 1} videos in the training split, it has {self.num_videos}"
            )
        if self.video_index.shape != (len(self.rows),):
            raise ValueError(
                f"video_index has shape {self.video_index.shape}, the negatives "
                f"{len(self.rows)} queries"
            )

    def sample_one(self, query_row: int, position: int) -> np.ndarray:
        """``[n]`` rows for query ``query_row`` at stream ``position``."""
        n, own = self.num_negatives, self.video_index[query_row]
        rng = np.random.default_rng((self.seed, int(position)))
        mined = self.rows[query_row]
        candidates = mined[mined != own]
        if len(candidates) >= n:
            return candidates[rng.choice(len(candidates), n, replace=False)]
        others = np.setdiff1d(np.arange(self.num_videos), np.append(candidates, own))
        fill = others[rng.choice(len(others), n - len(candidates), replace=False)]
        return np.concatenate([candidates, fill])

    def sample(self, query_rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """``[B, n] int32`` negative rows for queries ``query_rows [B]`` at stream
        ``positions [B]``."""
        query_rows = np.asarray(query_rows, np.int64).reshape(-1)
        positions = np.asarray(positions, np.int64).reshape(-1)
        if query_rows.shape != positions.shape:
            raise ValueError(f"{query_rows.shape} query rows for {positions.shape} positions")
        out = np.empty((len(query_rows), self.num_negatives), np.int32)
        for k, (r, p) in enumerate(zip(query_rows, positions)):
            out[k] = self.sample_one(int(r), int(p))
        return out


def negative_batch(
    videos: Any, negatives: NegativeSampler, rows: np.ndarray, positions: np.ndarray
) -> dict[str, np.ndarray]:
    """The negative videos of queries ``rows [B]`` at stream ``positions [B]``: for every field
    of the video table (``videos.take``: ``video_features``, ``video_mask``,
    ``subtitle_features``, ...) ``negative_<field> [B, n, ...]``, and ``negative_video_index
    [B, n] int32`` (the rows drawn)."""
    drawn = negatives.sample(rows, positions)  # [B, n]
    taken = videos.take(drawn.reshape(-1))
    out = {f"negative_{k}": v.reshape(*drawn.shape, *v.shape[1:]) for k, v in taken.items()}
    out["negative_video_index"] = drawn
    return out
