"""The data of one run: prepared splits, train and eval iterators, ground truth for scoring.

:class:`DataSources` is what the trainer, ``vmr-jax eval`` and ``vmr-jax predict`` read a
config's data through (host-local batches of the contract in ``vmr_jax/models/__init__.py``).
Under ``config.train.supervision = 'weak'`` the training batches and the sample batch carry no
``spans``/``span_mask`` (removed, not zeroed), so a model or loss that reads them in training
fails with a ``KeyError``; eval batches always carry them.

Hard negatives (PREM's localizer): with ``config.data.hard_negatives`` (the ``.npz`` mined by
the trained retriever; ``''`` = none) and ``config.data.num_negatives`` ``n`` (default 0), the
training batches and the sample batch also carry ``n`` negative videos per example
(:mod:`data_pipelines.hard_negatives`); the file is checked against the prepared train split
first, and a file without ``n``, or ``n`` without a file, is a :class:`UserError`.

Building a :class:`DataSources` completes the config's data-dependent model fields: in text
mode ``'tokens'`` ``config.model.vocab_size`` 0 becomes the tokenizer's size and a smaller
positive size is refused (:func:`data_pipelines.text_inputs.resolve_model_vocab`), so a
trainer builds it before it writes or uses ``config.model``.

Clip geometry (:func:`check_clip_length`): a model that turns frame indices into seconds with
a fixed ``config.model.clip_length`` (XML's and Cascaded MPN's label rule and corpus times)
refuses a built dataset whose clips are not of that fixed length, kept as they are: the
moments it learned and predicted would be in the wrong seconds.  ``clip_length = 0``
(:data:`vmr_jax.retrieval.ranking.PER_VIDEO_CLIP_LENGTH`) asks for each video's own frame
length, ``duration / L``: right for any built dataset under ``clip_sampling='resample'``
(``L`` bins evenly covering the video), refused under ``'truncate'`` (the kept clips need not
cover the video).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np

from data_pipelines import hard_negatives, input_pipeline
from data_pipelines.stored import StoredSplit
from data_pipelines.text_inputs import resolve_model_vocab
from vmr_jax.errors import UserError
from vmr_jax.evaluation import didemo
from vmr_jax.retrieval.ranking import PER_VIDEO_CLIP_LENGTH

SPAN_FIELDS = ("spans", "span_mask")  # what weak supervision keeps out of training


def check_clip_length(config: ml_collections.ConfigDict, splits: Mapping[str, Any]) -> None:
    """Raises :class:`UserError` when ``config.model.clip_length`` is set and a built split's
    clips are not fixed ``clip_length``-second clips under ``clip_sampling='truncate'``, or
    (``clip_length`` 0, each video's own frame length) not resampled to evenly cover each
    video (``clip_sampling='resample'``)."""
    built = [r for r in splits.values() if isinstance(r, StoredSplit)]  # not in-memory data
    if "model" not in config or "clip_length" not in config.model or not built:
        return
    info = built[0].info  # one manifest per built dataset
    seconds = info["manifest"]["video"].get("clip_seconds")
    sampling = input_pipeline.data_field(config.data, "clip_sampling")
    length = float(config.model.clip_length)
    if length == PER_VIDEO_CLIP_LENGTH:
        if sampling == "resample":
            return
        raise UserError(
            f"config.model.clip_length={length} (each video's frames last duration / L "
            f"seconds) needs config.data.clip_sampling='resample' (frames evenly covering the "
            f"video), got {sampling!r} on {info['dataset']}/{info['features']}"
        )
    if seconds is not None and float(seconds) == length and sampling == "truncate":
        return
    what = f"{seconds}-s clips" if seconds else "clips evenly covering each video (no fixed length)"
    raise UserError(
        f"config.model.clip_length={length} s per frame, but {info['dataset']}/"
        f"{info['features']} has {what} and config.data.clip_sampling={sampling!r}: the label "
        "rule and the corpus times need native clips of exactly model.clip_length seconds, "
        "with clip_sampling='truncate'"
    )


def without_spans(batch: Mapping[str, Any]) -> dict[str, Any]:
    """``batch`` less ``spans`` and ``span_mask`` (removed, not zeroed)."""
    return {k: v for k, v in batch.items() if k not in SPAN_FIELDS}


class DataSources:
    """Prepared splits and the iterators over them for one config (host-local batches).

    ``config.model.vocab_size`` is resolved in place from the run's tokenizer (module
    docstring).
    """

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.datasets = input_pipeline.get_datasets(config)
        if "model" in config:
            resolve_model_vocab(config.model, self.datasets.text)
            check_clip_length(config, self.datasets.splits)
        self._prepared: dict[str, input_pipeline.PreparedSplit] = {}
        self._didemo_gt: dict[str, didemo.DidemoGroundTruth] = {}
        self._negatives: tuple[hard_negatives.NegativeSampler | None] | None = None

    @property
    def weak(self) -> bool:
        """Whether training batches go without spans: ``config.train.supervision`` checked
        against the family's record (:meth:`vmr_jax.models.Family.check_supervision`)."""
        from vmr_jax.models import get_family  # the record, not the data, decides

        family = get_family(self.config.model.name)
        return family.check_supervision(self.config.train.get("supervision", "full")) == "weak"

    def prepared(self, split: str) -> input_pipeline.PreparedSplit:
        if split not in self._prepared:
            if split not in self.datasets.splits:
                raise ValueError(
                    f"no split {split!r} in the data of config.data.name="
                    f"{self.config.data.get('name', '?')!r}; have {sorted(self.datasets.splits)} "
                    "(--config.evals.split / --split choose one)"
                )
            self._prepared[split] = input_pipeline.prepare_split(
                self.datasets.splits[split], self.config.data, self.datasets.text, split
            )
        return self._prepared[split]

    def steps_per_epoch(self) -> int:
        return max(1, len(self.prepared("train")) // int(self.config.train.batch_size))

    def negative_sampler(self) -> hard_negatives.NegativeSampler | None:
        """The draw of ``config.data.num_negatives`` hard negative videos per training example
        from the mined file ``config.data.hard_negatives`` (checked against the prepared train
        split; :mod:`data_pipelines.hard_negatives`), or None when the config has neither."""
        if self._negatives is None:
            self._negatives = (self._load_negative_sampler(),)
        return self._negatives[0]

    def _load_negative_sampler(self) -> hard_negatives.NegativeSampler | None:
        data = self.config.data
        path = str(data.get("hard_negatives", "") or "")
        num = int(data.get("num_negatives", 0) or 0)
        if not path:
            if num > 0:
                raise UserError(
                    f"config.data.num_negatives={num} needs mined hard negatives: "
                    "config.data.hard_negatives is empty (set it to the .npz of `vmr-jax mine`, "
                    f"by default <workdir>/{hard_negatives.DEFAULT_DIRNAME}/train.npz)"
                )
            return None
        if num < 1:
            raise UserError(
                f"config.data.hard_negatives={path!r} is set but config.data.num_negatives="
                f"{num}: give the number of negative videos per query (PREM: 4 on TVR, 2 on "
                "DiDeMo), or clear hard_negatives"
            )
        prepared = self.prepared("train")
        negatives = hard_negatives.load(path)
        hard_negatives.check_matches(negatives, prepared, "train", path)
        return hard_negatives.NegativeSampler(
            negatives, prepared.video_index, num, int(self.config.train.seed)
        )

    def train_iterator(self, start_step: int = 0):
        """Endless train batches, positioned after the first ``start_step`` batches; without
        ``spans``/``span_mask`` under weak supervision; with the negative videos of
        :meth:`negative_sampler` when the config mines them."""
        it = input_pipeline.make_train_iterator(
            self.prepared("train"),
            self.config.data,
            int(self.config.train.batch_size),
            int(self.config.train.seed),
            text=self.datasets.text,
            start_step=start_step,
            negatives=self.negative_sampler(),
        )
        if self.weak:
            return map(without_spans, it)
        return it

    def eval_iterator(self, split: str):
        return input_pipeline.make_eval_iterator(
            self.prepared(split),
            self.config.data,
            int(self.config.evals.get("batch_size", self.config.train.batch_size)),
            text=self.datasets.text,
        )

    def sample_batch(self) -> dict[str, np.ndarray]:
        """One training example, shaped as the train batches (no spans under weak supervision;
        negatives, when configured, drawn for stream position 0)."""
        zero = np.zeros(1, np.int64)
        batch = input_pipeline.gather_batch(
            self.prepared("train"), zero, self.negative_sampler(), zero
        )
        return without_spans(batch) if self.weak else batch

    def query_records(self, split: str, query_index: np.ndarray) -> list[Any]:
        records = self.datasets.splits[split]
        return [records[int(i)] for i in query_index]

    def gt_spans_fn(self, split: str) -> Callable[[np.ndarray], np.ndarray]:
        """``query_index -> [Q, 2]`` first ground-truth span of each record, float64."""

        def gt_spans(query_index: np.ndarray) -> np.ndarray:
            records = self.query_records(split, query_index)
            return np.asarray([np.asarray(r.spans_s, np.float64)[0] for r in records])

        return gt_spans

    def didemo_ground_truth(self, split: str) -> didemo.DidemoGroundTruth:
        """The annotator chunk pairs (``extras['times']``) of every record of ``split``, packed
        as the official evaluation reads them (``didemo.ground_truth_from_records``)."""
        if split not in self._didemo_gt:
            records = self.datasets.splits[split]
            rows = []
            for q, r in enumerate(records):
                extras = getattr(r, "extras", None) or {}
                if "times" not in extras:
                    raise ValueError(
                        f"split {split!r}, record {r.query_id!r}: no field extras['times'] "
                        "(annotator chunk pairs); config.evals.protocol='didemo' needs DiDeMo "
                        f"records, config.data.name is {self.config.data.name!r}"
                    )
                rows.append({"annotation_id": extras.get("annotation_id", q), **extras})
            self._didemo_gt[split] = didemo.ground_truth_from_records(rows, f"split {split!r}")
        return self._didemo_gt[split]

    def didemo_ground_truth_fn(
        self, split: str
    ) -> Callable[[np.ndarray], didemo.DidemoGroundTruth]:
        """``query_index ->`` :class:`didemo.DidemoGroundTruth` of those records (in that order).

        Reads the whole split at once, so a non-DiDeMo split fails here, not after inference.
        """
        packed = self.didemo_ground_truth(split)

        def gt_chunks(query_index: np.ndarray) -> didemo.DidemoGroundTruth:
            index = np.asarray(query_index, np.int64)
            return didemo.DidemoGroundTruth(
                packed.annotation_ids[index], packed.times[index], packed.n_times[index]
            )

        return gt_chunks
