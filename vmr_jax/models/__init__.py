"""Model families and their registry.

Every family module (``vmr_jax/models/<family>.py``) holds its linen module, its
``VARIANTS`` (official configurations plus ``tiny``), and ends with one declared
:class:`~vmr_jax.models.family.Family` record, ``FAMILY``: what the trainer, evaluators,
predict, bench and the corpus engine may use of it (see ``family.py``).  ``FAMILIES`` maps
registry names to records; :func:`get_family` resolves ``config.model.name`` once per run.

* ``Module.__call__(batch, *, train: bool) -> dict`` of outputs (scores plus intermediates).
* ``loss_fn(outputs, batch, model_config, *, step, steps_per_epoch) -> (scalar, dict of
  scalar metrics)``; targets are built here from ``batch['spans']``.
* ``decode(outputs, batch, model_config) -> dict``: ``score_map [B, N, N]`` ranking scores (0
  outside the valid cells) for ``output='score_map'``; ``moments [B, P, 2]`` seconds with
  ``moment_scores [B, P]`` (non-finite = not a candidate) for ``output='moment_list'``.
* Corpus families (``task='vcmr'``, ``output='corpus'``, e.g. ``xml``) have no ``decode``:
  ``Family.corpus(model, model_config)`` gives their stage functions for the corpus engine
  (``vmr_jax/retrieval/corpus.py``): encode videos and queries, score videos (stage 1),
  localise in the top ``K`` (stage 2, ``ranking.MomentScores``) and ``combine``.

Batch contract (a dict of arrays, leading axis = batch, produced by
``data_pipelines/input_pipeline.py`` and sharded on the mesh's ``data`` axis):

===================  ==================  ===================================================
key                  shape / dtype       meaning
===================  ==================  ===================================================
video_features       [B, T, D] f32       clips resampled to ``config.data.num_input_clips``
video_mask           [B, T] f32          1 for real clips
query_tokens         [B, L] i32          word / piece ids, 0 = padding (modes 'tokens', 'glove')
query_features       [B, L, Dq] f32      word vectors or token features ('features', 'glove')
query_mask           [B, L] f32          1 for real tokens
duration             [B] f32             seconds
spans                [B, S, 2] f32       ground-truth [start, end] seconds (S >= 1)
span_mask            [B, S] f32          1 for real spans
query_index          [B] i32             record index in its split, -1 for padding
video_index          [B] i32             row of the query's video in its split's video table
valid                [B] f32             1 for real examples, 0 for eval padding
tree_verbs           [B, Nv, 2] i32      semantic role tree (``config.data.semantic_tree``,
tree_nouns           [B, Nn, 2] i32      FVMR): inclusive word spans of the verb / noun
tree_edges           [B, Nv, Nn] f32     nodes (-1 = absent) and verb-noun argument links
===================  ==================  ===================================================
"""

from __future__ import annotations

from vmr_jax.models import cascaded_mpn, fvmr, mgpn, prem, tan2d, vlanet, xml
from vmr_jax.models.family import Family

FAMILIES: dict[str, Family] = {
    module.FAMILY.name: module.FAMILY
    for module in (mgpn, tan2d, fvmr, vlanet, xml, cascaded_mpn, prem)
}


def get_family(name: str) -> Family:
    """The :class:`Family` record of a registry name (``config.model.name``)."""
    if name not in FAMILIES:
        raise KeyError(f"unknown model {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]
