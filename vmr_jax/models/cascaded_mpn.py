"""Cascaded MPN: hierarchical semantic reasoning and cascaded moment proposal generation.

Paper: "Cascaded MPN: Cascaded Moment Proposal Network for Video Corpus Moment Retrieval"
(IEEE Access; shared/papers/000_d5b828f2d7a6ef4a.txt).  No public code exists: the paper is
the specification; where it is silent the detail comes from HERO (linjieli222/HERO, whose
TVR features, loss weights and label rule the paper's settings match) or TVRetrieval, as
listed below.  Paper section -> module:

* Query ``E_q`` (Sec. III-A-2, "d-dimensional sentence features"; the paper does not say how
  they are made): HERO's ``QueryFeatEncoder`` on RoBERTa token features -- ``LinearLayer``
  (LayerNorm of the input, Dropout, Linear to ``d``, ReLU), a learned position table +
  LayerNorm + Dropout, one ``BertAttention`` block (self-attention, Linear, residual
  LayerNorm; no feed-forward), then modular attention pooling (Linear ``d -> 1`` without
  bias, softmax over the valid tokens).  Blocks of :mod:`vmr_jax.layers.attention`.
* Anchor-free ``V`` and anchor-based ``C^N`` (eqs. 1-8):
  :class:`~vmr_jax.layers.graph_attention.HierarchicalEncoder` with ``N = 2, 4, ..., 2^T``
  (one anchor Transformer per ``N`` unless ``share_anchor_transformer``; ``frame_context``
  'segments', the default, reads eq. 7 as an in-place update of ``V``, 'graph' keeps eq. 6's
  ``V``: the layer's module docstring).  It does not see
  the query, so the corpus index stores its outputs (:meth:`CascadedMPN.encode_videos`).
* ``f_cond`` (eqs. 9-14): ONE :class:`~vmr_jax.layers.conditional_map.ConditionalScoreMap`
  shared by the frame level and every anchor level.  Algorithm 1 takes "the conditional
  moment score map generator f_cond" as a single input, and Sec. III-B-1 defines both maps
  by the same ``f_cond`` on ``V`` or ``C^N``; besides, no loss of eqs. 19-23 reads an
  anchor-level map, so separate anchor-level weights would never be trained.
* Sparsity pooling and the cascade (eqs. 15-18, Algorithm 1): :mod:`vmr_jax.ops.score_maps`
  (``cascaded_score_map``), ``M_T`` for ``T = num_levels`` (1..5; the paper's best is 3).
* Losses (eqs. 19-23): :mod:`vmr_jax.models.cascaded_mpn_loss`.  Corpus search:
  :mod:`vmr_jax.models.cascaded_mpn_corpus` (stages, combine rule).

Choices where the paper is silent (beyond those of the layers and ops named above):

* ``s(., E_q)`` of eqs. 19-20 is the cosine of the un-projected ``E_q`` and ``V_l`` (resp.
  ``C^N_n``), each L2-normalised as ``x / max(||x||, 1e-5)`` (HERO ``F.normalize``, written
  so that a zero vector has finite gradients), max-pooled over valid frames (resp. over the
  valid anchors of all levels together: "max-pooling among anchor-based semantics").
* ``f_cond(v, q)`` takes ``q = E_q`` itself (eq. 9: ``v q``), no extra query projection.
* Ablations (Table 3, Table 4) are model fields: ``sparsity_pooling`` (False: ``h`` is the
  identity), ``anchor_free_branch`` (False: no graph, eq. 6's ``V`` is ``E_v``),
  ``anchor_branch`` (False: no ``C^N``, no anchor Transformer, no ``L^C_v``; the cascade
  still runs ``T`` levels of sparsity pooling, and on the probability scales the sigmoid,
  with no anchor map added), ``conditional`` (False: independent start/end), ``num_levels``;
  ``use_subtitles=False`` is the no-subtitle path of ActivityNet / DiDeMo (no subtitle
  inputs at all, no graph).
* The scale of Algorithm 1 (``map_scale``; :func:`vmr_jax.ops.score_maps.cascade`): the
  paper sums eq. 14's maps across levels and applies a sigmoid, without saying on what scale.
  Read literally (``'probability'``) a frame map's cells are ~``2 / L^2`` and an ``N``-anchor
  map's ~``2 / N^2``, so the 2 x 2 map decides ``M_T``'s ranking; on the synthetic corpus that
  gives VCMR/0.5-r1 19.0 against 50.0 for the frame map alone (README's synthetic table,
  one set of weights).  Default ``'log'``: the maps enter as log-probabilities, ``h`` is
  applied as its log, line 7's sum multiplies the frame map by the anchor maps of the cell's
  segments (a product of experts) without the sigmoid, and the product is renormalised over
  the video's cells (35.5 on the same weights).  ``'cells'`` rescales each map by its cell
  count (14.5).  These are inference-only switches:
  no loss reads ``M_T``.
* What the corpus search ranks (``localize_map``): the paper's output ``M_T`` ('cascade',
  default) or the frame-level ``f_cond(V, E_q)`` alone ('frame'), an inference-only switch
  (the same weights serve both) for comparing the cascade with its first map.

Steps of :meth:`CascadedMPN.__call__` (a batch of ``B`` (query, own video) pairs; the other
videos of the global batch are the in-batch negatives):

1. ``E_q [B, d]`` (:meth:`encode_queries`).  2. ``V``, ``C^N`` (:meth:`encode_videos`).
3. ``frame_similarity [B, B]`` (query ``i`` x video ``j``, eq. 19's ``p(s(V, E_q))``) and
   ``anchor_similarity [B, B]`` (eq. 20).  4. On the own video: ``f_cond(V, E_q)`` (its
   ``log_p_start [B, L]`` and ``log_p_end [B, L, L]`` for eq. 21, ``frame_score_map``) and the
   cascade's ``score_map`` ``M_T [B, L, L]``.

Batch contract (beyond ``vmr_jax.models``'s; produced by the data pipeline):

=======================  ===============  ================================================
key                      shape / dtype    meaning
=======================  ===============  ================================================
query_features           [B, Lq, Dq] f32  RoBERTa token features (``Lq <= max_desc_l``)
query_mask               [B, Lq] f32      1 for real tokens
video_features           [B, L, Dv] f32   clip features (``L <= max_ctx_l``)
video_mask               [B, L] f32       1 for real clips, a prefix
subtitle_word_features   [B, W, Dw] f32   subtitle token features, all sentences of the video
subtitle_word_mask       [B, W] f32       1 for real tokens
subtitle_word_sentence   [B, W] i32       sentence of each token, -1 for none
subtitle_coverage        [B, L, S] f32    1 where clip l overlaps sentence s
                                          (``graph_attention.subtitle_frame_coverage``)
spans, span_mask         [B, 1, 2], [B,1] ground truth in seconds (the first span is used)
duration, query_index    [B] f32, [B] i32
video_index              [B] i32          optional: same value = same video, not a negative
valid                    [B] f32          1 for real examples
=======================  ===============  ================================================

The four subtitle keys are read only when ``use_subtitles`` is True.  The corpus index reads
the video keys (``video_features``, ``video_mask`` and the subtitle keys), queries read
``query_features``/``query_mask``.

Corpus interface (``model.apply(variables, ..., method=CascadedMPN.<name>)``):
``encode_queries(batch) -> {'query': E_q [Q, d]}``; ``encode_videos(batch) -> {'frames': V
[V, L, d], 'mask': [V, L] f32, 'anchors_<N>': C^N [V, N, d]}``; ``score_videos(q, v) ->
[Q, V]``; ``localize(q, v)`` with ``v`` leaves ``[Q, K, ...]`` -> ``M_T [Q, K, L, L]``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vmr_jax.layers.attention import (
    LinearLayer,
    SelfAttentionBlock,
    TrainablePositionalEncoding,
    bert_dense,
)
from vmr_jax.layers.conditional_map import ConditionalScoreMap
from vmr_jax.layers.graph_attention import HierarchicalEncoder
from vmr_jax.models.cascaded_mpn_corpus import CascadedMPNStages
from vmr_jax.models.cascaded_mpn_loss import (  # noqa: F401  (re-exported: the family's loss)
    HINGE_DIRECTIONS,
    hinge_rows,
    loss_fn,
    moment_loss,
    negative_pairs,
    st_ed_labels,
    video_hinge_loss,
)
from vmr_jax.models.family import Family
from vmr_jax.ops import score_maps

MAX_LEVELS = 5
LOCALIZE_MAPS = ("cascade", "frame")
MASKED_SIMILARITY = -1e4  # below any cosine: the max-pool never picks a padded frame
SUBTITLE_KEYS = (
    "subtitle_word_features",
    "subtitle_word_mask",
    "subtitle_word_sentence",
    "subtitle_coverage",
)

DEFAULTS = dict(
    # Inputs: HERO's TVR features (SlowFast 2304 + ResNet 2048), RoBERTa tokens.
    q_feat_size=768,
    vid_feat_size=4352,
    sub_feat_size=768,
    max_desc_l=30,
    max_ctx_l=100,
    max_subtitle_words=128,  # position table of a word inside its subtitle
    # Model (Sec. IV-B-2: d = 768, K = 8 heads).
    hidden_size=768,
    n_heads=8,
    dropout=0.1,
    initializer_range=0.02,
    negative_slope=0.2,
    conv_kernel_size=5,  # Conv1D_st/ed (HERO's conv_kernel_size)
    share_anchor_transformer=False,
    frame_context="segments",  # V updated in place by eq. 7, or eq. 6's output ('graph')
    # Ablations (Tables 3-4).
    use_subtitles=True,
    anchor_free_branch=True,
    anchor_branch=True,
    conditional=True,
    sparsity_pooling=True,
    num_levels=3,
    map_scale="log",  # the scale f_cond maps enter Algorithm 1 on (module docstring)
    localize_map="cascade",  # what stage 2 ranks: M_T ('cascade') or f_cond(V, E_q) ('frame')
    # Loss (eqs. 19-23).
    margin=0.1,
    hinge_directions="both",
    video_loss_weight=8.0,  # alpha
    moment_loss_weight=0.01,  # beta
    anchor_moment_loss_weight=0.0,  # not in the paper: eq. 21 on the anchor maps (loss module)
    clip_length=1.5,
    # Inference (cascaded_mpn_corpus).
    q2c_alpha=20.0,
    max_vcmr_video=100,
    retrieve_videos=100,
    max_before_nms=200,
    nms_thd=0.5,
    # Subtitle sizes of example_batch (the data pipeline's caps per video).
    max_subtitles=32,
    max_sub_l=256,
)

VARIANTS: dict[str, dict[str, Any]] = {
    "tvr": dict(DEFAULTS),
    # Small and fast, for tests and the synthetic benchmark (32-d features, 1 s clips).
    "tiny": dict(
        DEFAULTS,
        q_feat_size=32,
        vid_feat_size=32,
        sub_feat_size=32,
        max_desc_l=16,
        max_ctx_l=64,
        max_subtitle_words=16,
        hidden_size=32,
        n_heads=4,
        clip_length=1.0,
        max_vcmr_video=10,
        max_subtitles=8,
        max_sub_l=32,
    ),
}


def unit_vectors(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """``x / max(||x||, eps)`` over the last axis, with finite gradients at ``x = 0``."""
    squared = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(squared, eps * eps))


def max_cosine(queries: jax.Array, items: jax.Array, mask: jax.Array) -> jax.Array:
    """``p(s(X, E_q))`` of eqs. 19-20: max over the valid items of the cosine.

    ``queries [Q, d]``, ``items [V, N, d]``, ``mask [V, N]`` -> ``[Q, V]``
    (``MASKED_SIMILARITY`` for a video with no valid item).
    """
    sim = jnp.einsum("qd,vnd->qvn", unit_vectors(queries), unit_vectors(items))
    return jnp.max(jnp.where(jnp.asarray(mask)[None] > 0, sim, MASKED_SIMILARITY), axis=-1)


class CascadedMPN(nn.Module):
    """Cascaded MPN (module docstring).  Fields: see ``DEFAULTS``."""

    q_feat_size: int = 768
    vid_feat_size: int = 4352
    sub_feat_size: int = 768
    max_desc_l: int = 30
    max_ctx_l: int = 100
    max_subtitle_words: int = 128
    hidden_size: int = 768
    n_heads: int = 8
    dropout: float = 0.1
    initializer_range: float = 0.02
    negative_slope: float = 0.2
    conv_kernel_size: int = 5
    share_anchor_transformer: bool = False
    frame_context: str = "segments"
    use_subtitles: bool = True
    anchor_free_branch: bool = True
    anchor_branch: bool = True
    conditional: bool = True
    sparsity_pooling: bool = True
    num_levels: int = 3
    map_scale: str = "log"
    localize_map: str = "cascade"

    @property
    def anchor_segments(self) -> tuple[int, ...]:
        """``N = 2^i`` for ``i = 1..T`` (Algorithm 1), empty without the anchor branch."""
        if not 1 <= self.num_levels <= MAX_LEVELS:
            raise ValueError(f"num_levels must be in 1..{MAX_LEVELS}, got {self.num_levels}")
        if not self.anchor_branch:
            return ()
        return tuple(2**i for i in range(1, self.num_levels + 1))

    def setup(self):
        h, r = self.hidden_size, self.initializer_range
        self.query_input_proj = LinearLayer(h, self.dropout, r)
        self.query_pos_embed = TrainablePositionalEncoding(self.max_desc_l, self.dropout, r)
        self.query_encoder = SelfAttentionBlock(h, self.n_heads, self.dropout, r)
        self.modular_vector_mapping = bert_dense(1, r, use_bias=False)
        self.video_encoder = HierarchicalEncoder(
            hidden=h,
            heads=self.n_heads,
            num_segments=self.anchor_segments,
            max_frames=self.max_ctx_l,
            max_subtitle_words=self.max_subtitle_words,
            dropout=self.dropout,
            init_range=r,
            negative_slope=self.negative_slope,
            use_subtitles=self.use_subtitles,
            anchor_free_branch=self.anchor_free_branch,
            share_anchor_transformer=self.share_anchor_transformer,
            frame_context=self.frame_context,
        )
        self.score_map = ConditionalScoreMap(h, self.conv_kernel_size, self.conditional)

    # Queries ---------------------------------------------------------------------------------

    def encode_queries(self, batch, *, train: bool = False) -> dict[str, jax.Array]:
        """``{'query': E_q [Q, d]}`` from ``query_features [Q, Lq, Dq]``, ``query_mask``."""
        det = not train
        feat = jnp.asarray(batch["query_features"], jnp.float32)
        mask = jnp.asarray(batch["query_mask"], jnp.float32)
        x = self.query_input_proj(feat, deterministic=det)
        x = self.query_pos_embed(x, deterministic=det)
        tokens = self.query_encoder(x, mask, deterministic=det)  # [Q, Lq, d]
        self.sow("intermediates", "query_tokens", tokens)
        logits = self.modular_vector_mapping(tokens)[..., 0]  # [Q, Lq]
        weights = jax.nn.softmax(jnp.where(mask > 0, logits, -1e10), axis=-1)
        return {"query": jnp.einsum("ql,qld->qd", weights, tokens)}

    # Videos ----------------------------------------------------------------------------------

    def _hierarchy(self, batch, deterministic: bool) -> dict:
        subtitles = {}
        if self.use_subtitles:
            missing = [k for k in SUBTITLE_KEYS if k not in batch]
            if missing:
                raise KeyError(
                    f"use_subtitles=True needs batch keys {missing}; set model.use_subtitles="
                    "False for a dataset without subtitles"
                )
            subtitles = dict(
                words=jnp.asarray(batch["subtitle_word_features"], jnp.float32),
                word_mask=jnp.asarray(batch["subtitle_word_mask"]) > 0,
                word_subtitle=jnp.asarray(batch["subtitle_word_sentence"], jnp.int32),
                frame_subtitles=jnp.asarray(batch["subtitle_coverage"]) > 0,
            )
        return self.video_encoder(
            jnp.asarray(batch["video_features"], jnp.float32),
            jnp.asarray(batch["video_mask"]) > 0,
            **subtitles,
            deterministic=deterministic,
        )

    def _video_encodings(self, batch, deterministic: bool) -> tuple[dict, jax.Array | None]:
        out = self._hierarchy(batch, deterministic)
        enc = {"frames": out["frames"], "mask": out["frame_mask"].astype(jnp.float32)}
        for n in self.anchor_segments:
            enc[f"anchors_{n}"] = out["anchors"][n]
        masks = [out["anchor_masks"][n] for n in self.anchor_segments]
        return enc, (jnp.concatenate(masks, axis=1) if masks else None)

    def encode_videos(self, batch, *, train: bool = False) -> dict[str, jax.Array]:
        """The query-independent index entries: ``frames`` (``V [V, L, d]``), ``mask [V, L]``
        float32 and ``anchors_<N>`` (``C^N [V, N, d]``) for each ``N``."""
        return self._video_encodings(batch, deterministic=not train)[0]

    # Scores and maps -------------------------------------------------------------------------

    def score_videos(self, query_enc, video_enc) -> jax.Array:
        """Stage 1, ``[Q, V]``: max over valid frames of ``cos(E_q, V_l)`` (eq. 19's score)."""
        return max_cosine(query_enc["query"], video_enc["frames"], video_enc["mask"])

    def _cascade_fn(self):
        """Algorithm 1 on one (query, video) pair as a pure function of ``query [d]``,
        ``frames [L, d]``, ``mask [L]`` and ``anchors`` ``[C^2, C^4, ...]`` (the weights are
        read here, outside any ``jax.vmap``)."""
        params = self.score_map.map_params()
        anchor_params = params if self.anchor_branch else None
        options = dict(
            conditional=self.conditional,
            sparsity_pooling=self.sparsity_pooling,
            num_levels=self.num_levels,
            map_scale=self.map_scale,
        )

        def cascade(query, frames, mask, anchors) -> score_maps.CascadeOutput:
            valid_len = jnp.sum(mask > 0).astype(jnp.int32)
            return score_maps.cascaded_score_map(
                frames, valid_len, anchors, query, params, anchor_params, **options
            )

        return cascade

    def localize(self, query_enc, video_enc) -> jax.Array:
        """Stage 2: ``M_T [Q, K, L, L]`` of query ``q`` in its ``K`` videos (``video_enc``
        leaves ``[Q, K, ...]``), or ``f_cond(V, E_q)`` with ``localize_map='frame'``; 0
        outside the valid upper triangle.  With ``map_scale='log'`` their logs
        (``score_maps.LOG_MASKED`` outside)."""
        if self.localize_map not in LOCALIZE_MAPS:
            raise ValueError(
                f"localize_map must be one of {LOCALIZE_MAPS}, got {self.localize_map!r}"
            )
        cascade = self._cascade_fn()
        anchors = [video_enc[f"anchors_{n}"] for n in self.anchor_segments]

        def one(query, frames, mask, video_anchors):
            out = cascade(query, frames, mask, video_anchors)
            if self.localize_map == "cascade":
                return out.score_map
            if self.map_scale == "log":
                valid = score_maps.valid_map_mask(frames.shape[0], jnp.sum(mask > 0))
                return score_maps.log_score_map(out.frame, valid)
            return out.frame.score_map

        per_video = jax.vmap(one, in_axes=(None, 0, 0, 0))
        per_query = jax.vmap(per_video, in_axes=(0, 0, 0, 0))
        return per_query(query_enc["query"], video_enc["frames"], video_enc["mask"], anchors)

    # Training forward ------------------------------------------------------------------------

    def __call__(self, batch, *, train: bool) -> dict[str, jax.Array]:
        """``frame_similarity``/``anchor_similarity [B, B]`` (query i x video j; the anchor
        one only with the anchor branch), and on each query's own video ``log_p_start [B, L]``,
        ``log_p_end [B, L, L]``, ``frame_score_map`` (``f_cond(V, E_q)``) and ``score_map``
        (``M_T``), both ``[B, L, L]``."""
        query = self.encode_queries(batch, train=train)["query"]  # 1. E_q
        video, anchor_masks = self._video_encodings(batch, not train)  # 2. V, C^N
        mask = video["mask"]
        out = {"frame_similarity": max_cosine(query, video["frames"], mask)}  # 3.
        anchors = [video[f"anchors_{n}"] for n in self.anchor_segments]
        if anchors:  # an empty segment's C^N is 0 and takes no part in eq. 20's max
            all_anchors = jnp.concatenate(anchors, axis=1)
            out["anchor_similarity"] = max_cosine(query, all_anchors, anchor_masks)
        cascade = jax.vmap(self._cascade_fn())(query, video["frames"], mask, anchors)  # 4.
        out.update(
            log_p_start=cascade.frame.log_p_start,
            log_p_end=cascade.frame.log_p_end,
            frame_score_map=cascade.frame.score_map,
            score_map=cascade.score_map,
        )
        for n, anchor in zip(self.anchor_segments, cascade.anchors):
            out[f"anchor_log_p_start_{n}"] = anchor.log_p_start
            out[f"anchor_log_p_end_{n}"] = anchor.log_p_end
        return out


def create_model(model_config) -> CascadedMPN:
    """``CascadedMPN`` from ``config.model`` (a ``VARIANTS`` entry; other keys are ignored)."""
    fields = CascadedMPN.__dataclass_fields__
    kwargs = {k: v for k, v in dict(model_config).items() if k in fields}
    kwargs.pop("name", None)
    kwargs.pop("parent", None)
    if str(model_config.get("hinge_directions", "both")) not in HINGE_DIRECTIONS:
        raise ValueError(
            f"model.hinge_directions must be one of {HINGE_DIRECTIONS}, "
            f"got {model_config.get('hinge_directions')!r}"
        )
    return CascadedMPN(**kwargs)


def weight_decay_mask(params) -> Any:
    """Decoupled weight decay on every weight but biases, LayerNorm scales and the scalar
    Conv1D biases of ``f_cond`` (``start_bias``/``end_bias``): BERT's / HERO's no-decay set."""

    def decays(path, _):
        name = getattr(path[-1], "key", "")
        return name not in ("bias", "scale") and not name.endswith("_bias")

    return jax.tree_util.tree_map_with_path(decays, params)


def example_batch(
    model_config, batch_size: int = 1, query_len: int | None = None, num_clips: int | None = None
) -> dict[str, np.ndarray]:
    """Every field the model and its loss read (module docstring), zero features.  Subtitles
    (``max_subtitles`` sentences, ``max_sub_l`` tokens): sentence ``s`` covers a contiguous
    block of clips and owns a contiguous block of tokens."""
    lq = int(query_len or model_config.max_desc_l)
    length = int(num_clips or model_config.max_ctx_l)
    b = batch_size
    batch = {
        "query_features": np.zeros((b, lq, int(model_config.q_feat_size)), np.float32),
        "query_mask": np.ones((b, lq), np.float32),
        "video_features": np.zeros((b, length, int(model_config.vid_feat_size)), np.float32),
        "video_mask": np.ones((b, length), np.float32),
        "duration": np.full((b,), length * float(model_config.clip_length), np.float32),
        "spans": np.tile(np.array([[[0.0, 1.0]]], np.float32), (b, 1, 1)),
        "span_mask": np.ones((b, 1), np.float32),
        "query_index": np.arange(b, dtype=np.int32),
        "video_index": np.arange(b, dtype=np.int32),
        "valid": np.ones((b,), np.float32),
    }
    if model_config.use_subtitles:
        subs = int(model_config.max_subtitles)
        words = int(model_config.max_sub_l)
        sentence = (np.arange(words) * subs // words).astype(np.int32)
        coverage = np.arange(length)[:, None] * subs // length == np.arange(subs)[None]
        batch.update(
            subtitle_word_features=np.zeros(
                (b, words, int(model_config.sub_feat_size)), np.float32
            ),
            subtitle_word_mask=np.ones((b, words), np.float32),
            subtitle_word_sentence=np.tile(sentence, (b, 1)),
            subtitle_coverage=np.tile(coverage.astype(np.float32), (b, 1, 1)),
        )
    return batch


FAMILY = Family(
    name="cascaded_mpn",
    create_model=create_model,
    variants=VARIANTS,
    task="vcmr",
    output="corpus",
    example_batch=example_batch,
    loss_fn=loss_fn,
    weight_decay_mask=weight_decay_mask,
    corpus=CascadedMPNStages.from_config,
)
