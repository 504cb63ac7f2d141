"""The model-family contract: one declared :class:`Family` record per family.

Every family module (``vmr_jax/models/<family>.py``) ends with ``FAMILY = Family(...)``; the
registry (``vmr_jax.models.FAMILIES``) maps names to records.  The trainer, the evaluators,
``vmr-jax predict``, ``vmr-jax bench``, the converters and the corpus engine read the record
they are given and nothing else: no caller inspects a module (``getattr``/``inspect``) or
tests a model name.  Adding a family means a model module, its record, configs and tests.

What a record declares:

* ``name``, ``create_model(model_config) -> nn.Module``, ``variants`` (the official
  configurations plus ``tiny``).
* ``task``: ``'svmr'`` (one query, its own video) or ``'vcmr'`` (one query, a corpus).
* ``output``: what evaluation receives -- ``'score_map'`` (``decode`` returns ``score_map [B,
  N, N]``, 0 outside the valid cells), ``'moment_list'`` (``decode`` returns ``moments [B, P,
  2]`` seconds and ``moment_scores [B, P]``, non-finite = not a candidate) or ``'corpus'``
  (ranked lists from the two-stage corpus search; no ``decode``).
* ``supervision``: the ``config.train.supervision`` kinds it learns under (``'full'``: spans;
  ``'weak'``: query-video pairs only; ``'full'`` is accepted for every family).
* ``example_batch(model_config, batch_size, query_len) -> dict`` of zeros with every field the
  model and its loss read in training (initialisation, ``vmr-jax bench``, inference restore).
* ``loss_fn(outputs, batch, model_config, *, step, steps_per_epoch) -> (loss, parts)``: one
  signature for every family; ``step``/``steps_per_epoch`` serve losses with epoch schedules
  (FVMR's distillation start, XML's span and hard-negative epochs), others ignore them.
* ``decode(outputs, batch, model_config) -> dict`` (single-video families).
* Optional parts: ``weight_decay_mask(params)`` (which leaves decay under decoupled weight
  decay), ``candidate_moments(batch, model_config) -> (candidates [B, P] bool, times [B, P, 2])``
  (a family that ranks a fixed candidate set: the evaluators rank them at random for the
  chance level a weak model must beat, ``evaluation.chance``), ``map_builders
  (model_config)`` (the 2D-map construction alone, timed by bench), ``gallery`` (queries and
  moments meet in a common space, so moments can be precomputed: :mod:`retrieval.gallery`),
  and for corpus families ``corpus``: the stage functions (:mod:`vmr_jax.retrieval.stages`),
  ``unused_official_params`` (parameters the official model holds but never uses and its paper
  counts: ``vmr-jax bench`` adds ``num_params_paper = num_params + unused_official_params``).
* Stage-wise training (PREM: a retriever, then a localizer on the retriever's mined hard
  negatives): ``trainable(params, model_config) -> pytree of bool`` marks the leaves this
  config's stage trains; the others get zero updates and no weight decay
  (:func:`vmr_jax.optimizers.family_optimizer`), and ``config.train.init_from`` (a workdir of
  the previous stage) fills them from that run's checkpoint (:mod:`vmr_jax.warm_start`).
  ``resolve_config(config)`` refuses a config the family cannot train before anything is
  written (e.g. a localizer stage without ``train.init_from``: one ``UserError`` line) and
  fills the fields derived from others (PREM: ``data.hard_negatives`` from ``init_from``).
* Parameters from the run's data: ``init_params(params, model_config, text) -> params`` fills
  leaves of a freshly initialised state from the run's text inputs
  (``data_pipelines.text_inputs.TextInputs``: vocabulary, GloVe rows); FVMR sets its word
  table to the GloVe vectors of its vocabulary.  The trainer calls it once, when it creates a
  state (never on a restored checkpoint, which holds the trained values); returned leaves
  keep the fresh leaves' shapes, dtypes and shardings (``trainer.create_train_state``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

TASKS = ("svmr", "vcmr")
OUTPUTS = ("score_map", "moment_list", "corpus")
SUPERVISIONS = ("full", "weak")


@dataclasses.dataclass(frozen=True)
class Family:
    """What callers may use of one model family (module docstring)."""

    name: str
    create_model: Callable[[Any], Any]
    variants: Mapping[str, Mapping[str, Any]]
    task: str
    output: str
    example_batch: Callable[..., dict]
    loss_fn: Callable[..., tuple[Any, dict]]
    decode: Callable[..., dict] | None = None
    supervision: tuple[str, ...] = ("full",)
    weight_decay_mask: Callable[[Any], Any] | None = None
    candidate_moments: Callable[..., tuple] | None = None
    map_builders: Callable[[Any], dict] | None = None
    gallery: bool = False
    corpus: Callable[..., Any] | None = None
    unused_official_params: int = 0
    trainable: Callable[[Any, Any], Any] | None = None
    resolve_config: Callable[[Any], None] | None = None
    init_params: Callable[[Any, Any, Any], Any] | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"family {self.name!r}: task must be one of {TASKS}")
        if self.output not in OUTPUTS:
            raise ValueError(f"family {self.name!r}: output must be one of {OUTPUTS}")
        if not set(self.supervision) <= set(SUPERVISIONS) or not self.supervision:
            raise ValueError(
                f"family {self.name!r}: supervision must be a subset of {SUPERVISIONS}"
            )
        if "tiny" not in self.variants:
            raise ValueError(f"family {self.name!r}: variants need a 'tiny' entry for tests")
        corpus_task = self.task == "vcmr"
        if corpus_task != (self.output == "corpus") or corpus_task != (self.corpus is not None):
            raise ValueError(
                f"family {self.name!r}: task 'vcmr', output 'corpus' and corpus stages go together"
            )
        if not corpus_task and self.decode is None:
            raise ValueError(f"family {self.name!r}: a single-video family needs decode")

    @property
    def is_corpus(self) -> bool:
        """Answers queries against a corpus (two-stage search), not one video each."""
        return self.task == "vcmr"

    def check_supervision(self, kind: str) -> str:
        """``kind`` if this family trains under it, else a ValueError naming both.  ``'full'``
        suits every family (a family that learns without spans just ignores them)."""
        if kind not in SUPERVISIONS:
            raise ValueError(
                f"config.train.supervision must be one of {SUPERVISIONS}, got {kind!r}"
            )
        if kind == "weak" and kind not in self.supervision:
            raise ValueError(
                f"config.train.supervision={kind!r} but model family {self.name!r} trains only "
                f"under {self.supervision} (its Family record's supervision)"
            )
        return kind
