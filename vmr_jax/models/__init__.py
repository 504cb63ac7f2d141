"""Model families and their registry.

Every family module (``vmr_jax/models/<family>.py``) exposes:

* ``VARIANTS: dict[str, dict]`` -- keyword arguments of the official configurations plus a
  ``tiny`` entry for tests.
* ``create_model(model_config) -> flax.linen.Module`` -- builds the module from
  ``config.model`` (a ConfigDict holding one VARIANTS entry, possibly overridden).
* ``Module.__call__(batch, *, train: bool) -> dict`` of outputs (scores plus intermediates).
* ``loss_fn(outputs, batch, model_config) -> (scalar, dict of scalar metrics)``; targets are
  built here from ``batch['spans']``.
* ``decode(outputs, batch, model_config) -> dict`` with ``score_map [B, N, N]`` ranking
  scores (0 outside the valid cells) and ``num_clips``, or for proposal (sliding-window)
  families such as ``vlanet`` a moment list ``moments [B, P, 2]`` seconds with
  ``moment_scores [B, P]`` (non-finite = not a candidate); evaluation turns either into moments.
* ``SUPERVISION`` (optional, default ``('full',)``): ``('weak',)`` for families that learn
  without spans (``config.train.supervision = 'weak'`` keeps spans out of training batches).

Corpus families (video corpus moment retrieval: ``TASK = 'vcmr'``, e.g. ``xml``) have no
``decode``; their module has the methods the corpus engine (``vmr_jax/retrieval``) calls:
``encode_videos(batch) -> {..., 'mask' [V, L]}``, ``encode_queries(batch) -> {...}``,
``score_videos(query_enc, video_enc) -> [Q, V]`` and ``localize(query_enc, video_enc)`` with
``video_enc`` leaves ``[Q, K, ...]`` -> start/end logits ``[Q, K, L]``.  ``loss_fn`` may take
``step`` and ``steps_per_epoch`` keywords (epoch schedules); the trainer passes them when it
does.

Batch contract (a dict of arrays, leading axis = batch, produced by
``data_pipelines/input_pipeline.py`` and sharded on the mesh's ``data`` axis):

===================  ==================  ===================================================
key                  shape / dtype       meaning
===================  ==================  ===================================================
video_features       [B, T, D] f32       clips resampled to ``config.data.num_input_clips``
video_mask           [B, T] f32          1 for real clips
query_tokens         [B, L] i32          word / piece ids, 0 = padding (text mode 'tokens')
query_features       [B, L, Dq] f32      word vectors or token features (mode 'features')
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

from types import ModuleType

from vmr_jax.models import fvmr, mgpn, tan2d, vlanet, xml

MODELS: dict[str, ModuleType] = {
    "fvmr": fvmr,
    "mgpn": mgpn,
    "tan2d": tan2d,
    "vlanet": vlanet,
    "xml": xml,
}


def get_family(name: str) -> ModuleType:
    """Model family module by registry name."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]
