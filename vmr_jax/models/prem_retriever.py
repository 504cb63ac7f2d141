"""PREM's multi-modal collaborative video retriever and its relevant content-enhanced loss.

Paper: Hou et al., "Improving Video Corpus Moment Retrieval with Partial Relevance
Enhancement" (ICMR 2024), sections 3.2-3.3 and 4.2 (eqs. 5-8); Tables 2-3 for the ablations.
The official code (hdy007007/PREM) is not public beyond its README, so every choice the paper
leaves open is written down here, taken from TVRetrieval (XML), which PREM builds on.

1. Query encoder (eq. 5).  RoBERTa token features -> ``LinearLayer`` (TVRetrieval's input
   projection: LayerNorm, Dropout, Linear, ReLU) -> learned position table + LayerNorm +
   Dropout (``TrainablePositionalEncoding``, ``max_desc_l`` rows) -> one :class:`EncoderLayer`
   -> word representations ``w_bar [Q, Lq, H]``.  No L2 normalisation of the raw features
   (XML's ``no_norm_tfeat`` default is False, but the LayerNorm that opens ``LinearLayer``
   makes it a no-op up to its eps).
2. Pooling (``pooling``, Table 3).  ``'modality'``: ``o^j = W_d w_bar^j`` with one Linear
   ``H -> #modalities`` without bias (XML's ``modular_vector_mapping``), softmax over the
   valid words (padded words at -1e10, XML's ``mask_logits``), ``q^d = sum_j alpha_j
   w_bar^j``.  ``'mean'``: mean of the valid words; ``'max'``: max over the valid words; both
   give the same vector to every modality.  A query without any valid word pools to 0 under
   'mean' and 'max' (and to the plain mean under 'modality', the softmax being uniform).
3. Video encoder.  Image and subtitle clip features -> one ``LinearLayer`` per modality ->
   :class:`ClipEmbedding`: ``LayerNorm(x_j + pos[j] + mod[d])`` then Dropout, with one
   position table (``max_ctx_l`` rows, clip ``j`` has the same position in both modalities),
   a learned embedding per modality and ONE LayerNorm shared by the modalities (BERT's
   token-type embeddings; Figure 2's 'PE' and 'ME').  The tokens of all modalities form one
   sequence ``[V, M * L, H]`` (images first) whose key mask is ``video_mask`` repeated per
   modality; one :class:`EncoderLayer` over it gives intra- and inter-modal attention; the
   output is split back into ``I_bar`` and ``s_bar`` ``[V, L, H]``.  Subtitle-free clips carry
   zero features (sec. 3.2) and stay valid keys: the mask is the clip mask.
4. Transformer layer (sec. 4.2 "vanilla Transformer", H 384, FFN 1536, 4 heads):
   :class:`EncoderLayer` is post-LN: BERT self-attention (additive ``-10000`` key mask,
   Dropout on the weights) -> Linear -> Dropout -> residual LayerNorm -> Linear(FFN) -> GELU
   (exact erf, BERT's) -> Linear(H) -> Dropout -> residual LayerNorm.  One dropout rate
   ``drop`` everywhere; weights ``N(0, initializer_range)``, zero biases; PyTorch LayerNorm.
5. Similarity (eq. 6).  Queries and clips are unit-normalised as ``x / max(||x||, 1e-8)``
   (computed as ``x * rsqrt(max(||x||^2, 1e-16))``, so the gradient stays finite at a zero
   vector, e.g. a padding row under 'mean' pooling); ``sim`` is their dot product;
   ``phi_d = max`` over valid clips (padded clips at -1e10) and ``S^R`` is the mean over the
   modalities.
6. Loss (eqs. 7-8, :func:`retriever_loss`), on the global batch.  Clip labels: XML's rule
   (``xml_loss.st_ed_labels`` of ``spans[:, 0]``); "inside the moment" = valid clips
   ``st..ed`` inclusive, "outside" = the other valid clips.  Per modality the strong score
   ``phi_++`` is the max of the query's own-video cosines inside the moment, the weak
   ``phi_+`` the max outside, each video's ``phi_-`` the max over its valid clips; ``S`` is
   the mean over modalities (eq. 6 applied to each choice).  Negatives ``N(i)``: the valid
   batch rows whose ``video_index`` differs from query ``i``'s (another query of the same
   video is not a negative; "all videos in the batch except positive video").
   * ``L_{++}`` (eq. 7) and ``L_+`` (same with ``S_+``) by a stable log-sum-exp over the
     positive and the negatives at temperature ``temperature`` (paper: 0.01).  A query with
     no valid clip outside its moment has no weak positive: it is left out of the mean of
     ``L_+`` and counted in ``parts['weak_missing']``.  ``L^v = mean L_{++} + weak_weight *
     mean L_+`` (eq. 8, ``weak_weight`` = lambda, paper 0.5).
   * ``L^q`` (video-to-query, strong positive only): for the video of query ``i`` the
     positive is ``S_{++}(i)`` and the negatives are the full-video scores ``S(j, i)`` of the
     valid queries ``j`` of other videos.
   * ``loss = L^v + L^q`` ("the sum of L^v and L^q is the overall loss").  Means run over the
     valid rows (``valid > 0``); invalid rows are neither anchors nor negatives.  A row with
     no negative at all has a term ``log(1) = 0`` and still counts in its mean.
   * ``parts``: ``loss_v_strong`` = mean ``L_{++}``, ``loss_v_weak`` = ``weak_weight *``
     mean ``L_+`` (the weighted contribution, as XML's parts), ``loss_q``, ``weak_missing``;
     ``loss`` is their sum (less the count).
   Ablations (Table 2): ``weak_weight=0`` ('w/o WR'); ``relevant_content=False`` ("without
   relevant-content sampling", ReLoCLNet's positive): the positive of both directions is the
   full-video score ``S(i, i)``, with no strong/weak split and no ``L_+`` (``loss_v_weak``
   and ``weak_missing`` are 0); ``ctx_mode`` 'video' or 'sub' (single-modality retrievers);
   ``pooling`` (Table 3).

Batch (see ``vmr_jax.models``): ``query_features [B, Lq, q_feat_size]``, ``query_mask``,
``video_features [B, L, vid_feat_size]``, ``subtitle_features [B, L, sub_feat_size]``
(only the keys of the used modalities are read), ``video_mask [B, L]``, ``spans [B, S, 2]``,
``video_index [B]``, ``valid [B]``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vmr_jax.layers.attention import (
    LinearLayer,
    MultiHeadAttention,
    TrainablePositionalEncoding,
    bert_dense,
    torch_layer_norm,
)
from vmr_jax.models.xml_loss import st_ed_labels

MODALITIES = ("video", "sub")  # canonical order: images first
CTX_MODE_MODALITIES = {"video_sub": ("video", "sub"), "video": ("video",), "sub": ("sub",)}
POOLINGS = ("modality", "mean", "max")
MASK_VALUE = -1e10  # XML's mask_logits
NORM_EPS = 1e-8  # unit_normalize: x / max(||x||, NORM_EPS)

Array = Any


def unit_normalize(x: jnp.ndarray, eps: float = NORM_EPS) -> jnp.ndarray:
    """``x / max(||x||_2, eps)`` over the last axis, with a finite gradient at ``x = 0``."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def _mask_logits(x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    return x * mask + (1.0 - mask) * MASK_VALUE


class EncoderLayer(nn.Module):
    """Post-LN Transformer encoder layer with FFN width ``intermediate`` (docstring item 4).

    ``x [N, L, H]``; ``mask [N, Lk]`` (key mask) or ``[N, Lq, Lk]``; returns ``[N, L, H]``.
    """

    hidden: int
    intermediate: int
    heads: int
    dropout: float
    init_range: float

    @nn.compact
    def __call__(self, x, mask, *, deterministic: bool):
        mask = jnp.asarray(mask, jnp.float32)
        if mask.ndim == 2:
            mask = mask[:, None, :]
        elif mask.ndim != 3:
            raise ValueError(f"EncoderLayer mask must be [N, Lk] or [N, Lq, Lk], got {mask.shape}")
        r = self.init_range
        att = MultiHeadAttention(self.hidden, self.heads, self.dropout, r, name="attention")(
            x, x, mask, deterministic=deterministic
        )
        y = bert_dense(self.hidden, r, "attention_output")(att)
        y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
        x = torch_layer_norm("attention_LayerNorm")(y + x)
        y = jax.nn.gelu(bert_dense(self.intermediate, r, "intermediate")(x), approximate=False)
        y = bert_dense(self.hidden, r, "output")(y)
        y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
        return torch_layer_norm("output_LayerNorm")(y + x)


class ClipEmbedding(nn.Module):
    """``Dropout(LayerNorm(x + pos[j] + mod[d]))`` for clip ``j`` of modality ``d``.

    ``x [N, L, H]`` with ``L <= max_len``; ``modality`` is the row of the modality table.
    """

    max_len: int
    num_modalities: int
    dropout: float
    init_range: float

    @nn.compact
    def __call__(self, x, modality: int, *, deterministic: bool):
        length, hidden = x.shape[-2:]
        if length > self.max_len:
            raise ValueError(
                f"video of {length} clips, clip position table has {self.max_len} (max_ctx_l): "
                "cut the inputs first"
            )
        init = nn.initializers.normal(self.init_range)
        positions = self.param("position_embeddings", init, (self.max_len, hidden))
        modalities = self.param("modality_embeddings", init, (self.num_modalities, hidden))
        x = torch_layer_norm("LayerNorm")(x + positions[:length] + modalities[modality])
        return nn.Dropout(self.dropout)(x, deterministic=deterministic)


class PREMRetriever(nn.Module):
    """Multi-modal collaborative video retriever (sec. 3.3; module docstring items 1-5)."""

    hidden_size: int = 384
    intermediate_size: int = 1536
    n_heads: int = 4
    drop: float = 0.1
    initializer_range: float = 0.02
    vid_feat_size: int = 4352
    sub_feat_size: int = 768
    q_feat_size: int = 768
    max_desc_l: int = 30
    max_ctx_l: int = 100
    modalities: tuple[str, ...] = MODALITIES
    pooling: str = "modality"

    def setup(self):
        mods = tuple(self.modalities)
        if not mods or mods != tuple(m for m in MODALITIES if m in mods):
            raise ValueError(
                f"modalities must be a non-empty subset of {MODALITIES} in that order, got {mods}"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        h, r, p = self.hidden_size, self.initializer_range, self.drop
        layer = lambda: EncoderLayer(h, self.intermediate_size, self.n_heads, p, r)  # noqa: E731
        self.query_input_proj = LinearLayer(h, p, r)
        self.query_pos_embed = TrainablePositionalEncoding(self.max_desc_l, p, r)
        self.query_encoder = layer()
        if self.pooling == "modality":
            self.modality_pooling = bert_dense(len(mods), r, use_bias=False)
        for d in mods:
            setattr(self, f"{d}_input_proj", LinearLayer(h, p, r))
        self.clip_embed = ClipEmbedding(self.max_ctx_l, len(mods), p, r)
        self.video_encoder = layer()

    # Queries ---------------------------------------------------------------------------------

    def encode_queries(self, query_features, query_mask, *, train: bool = False) -> dict:
        """Unit-norm modality-specific queries ``{d: [Q, H]}`` (eq. 5 and its pooling).

        ``query_features [Q, Lq, q_feat_size]``, ``query_mask [Q, Lq]``.
        """
        det = not train
        feat = jnp.asarray(query_features, jnp.float32)
        mask = jnp.asarray(query_mask, jnp.float32)
        _check_features("query_features", feat, self.q_feat_size, "q_feat_size")
        if mask.shape != feat.shape[:2]:
            raise ValueError(f"query_mask {mask.shape} does not match query_features {feat.shape}")
        x = self.query_input_proj(feat, deterministic=det)
        x = self.query_pos_embed(x, deterministic=det)
        words = self.query_encoder(x, mask, deterministic=det)  # w_bar [Q, Lq, H]
        self.sow("intermediates", "words", words)
        if self.pooling == "modality":
            logits = _mask_logits(self.modality_pooling(words), mask[..., None])  # [Q, Lq, M]
            alpha = jax.nn.softmax(logits, axis=1)
            self.sow("intermediates", "word_weights", alpha)
            pooled = jnp.einsum("qlm,qlh->qmh", alpha, words)
            queries = {d: pooled[:, i] for i, d in enumerate(self.modalities)}
        else:
            count = jnp.sum(mask, axis=1)[:, None]  # [Q, 1]
            if self.pooling == "mean":
                pooled = jnp.sum(words * mask[..., None], axis=1) / jnp.maximum(count, 1.0)
            else:
                pooled = jnp.max(_mask_logits(words, mask[..., None]), axis=1)
                pooled = jnp.where(count > 0, pooled, 0.0)
            queries = {d: pooled for d in self.modalities}
        return {d: unit_normalize(q) for d, q in queries.items()}

    # Videos ----------------------------------------------------------------------------------

    def encode_videos(
        self, video_features, subtitle_features, video_mask, *, train: bool = False
    ) -> dict:
        """Unit-norm contextual clips ``{d: [V, L, H]}`` of the joint multi-modal encoder.

        ``video_features [V, L, vid_feat_size]`` and ``subtitle_features [V, L,
        sub_feat_size]`` (None for an absent modality), ``video_mask [V, L]``.
        """
        det = not train
        mask = jnp.asarray(video_mask, jnp.float32)
        inputs = {"video": video_features, "sub": subtitle_features}
        sizes = {"video": self.vid_feat_size, "sub": self.sub_feat_size}
        names = {"video": "video_features", "sub": "subtitle_features"}
        tokens = []
        for i, d in enumerate(self.modalities):
            if inputs[d] is None:
                raise ValueError(f"modalities {self.modalities} need {names[d]}, got None")
            feat = jnp.asarray(inputs[d], jnp.float32)
            size_name = "vid_feat_size" if d == "video" else "sub_feat_size"
            _check_features(names[d], feat, sizes[d], size_name)
            if feat.shape[:2] != mask.shape:
                raise ValueError(f"{names[d]} {feat.shape} does not match video_mask {mask.shape}")
            x = getattr(self, f"{d}_input_proj")(feat, deterministic=det)
            tokens.append(self.clip_embed(x, i, deterministic=det))
        n = len(self.modalities)
        joint = self.video_encoder(
            jnp.concatenate(tokens, axis=1), jnp.tile(mask, (1, n)), deterministic=det
        )  # [V, M * L, H]
        clips = jnp.split(joint, n, axis=1)
        for d, c in zip(self.modalities, clips):
            self.sow("intermediates", f"{d}_clips", c)
        return {d: unit_normalize(c) for d, c in zip(self.modalities, clips)}

    # Scores and training forward -------------------------------------------------------------

    def video_scores(self, query_enc, video_enc, video_mask) -> jnp.ndarray:
        """``S^R [Q, V]`` (eq. 6); see :func:`video_scores`."""
        return video_scores(query_enc, video_enc, video_mask)

    def __call__(self, batch, *, train: bool) -> dict:
        """``sims {d: [B, B, L]}`` (query i vs the clips of batch row j's video), ``clip_mask
        [B, L]`` and ``video_scores [B, B]`` (eq. 6)."""
        query_enc = self.encode_queries(batch["query_features"], batch["query_mask"], train=train)
        video_enc = self.encode_videos(
            batch.get("video_features") if "video" in self.modalities else None,
            batch.get("subtitle_features") if "sub" in self.modalities else None,
            batch["video_mask"],
            train=train,
        )
        mask = jnp.asarray(batch["video_mask"], jnp.float32)
        sims = clip_similarities(query_enc, video_enc)
        return {
            "sims": sims,
            "clip_mask": mask,
            "video_scores": _scores_from_sims(sims, mask),
        }


def _check_features(name: str, x: jnp.ndarray, size: int, size_name: str) -> None:
    if x.ndim != 3 or x.shape[-1] != size:
        raise ValueError(f"{name} must be [N, L, {size}] ({size_name}), got {x.shape}")


def clip_similarities(query_enc: dict, video_enc: dict) -> dict:
    """Cosines ``{d: [Q, V, L]}`` of unit-norm queries ``{d: [Q, H]}`` and clips
    ``{d: [V, L, H]}``."""
    return {d: jnp.einsum("qh,vlh->qvl", query_enc[d], video_enc[d]) for d in video_enc}


def _scores_from_sims(sims: dict, clip_mask: jnp.ndarray) -> jnp.ndarray:
    """Mean over modalities of the max over valid clips; ``sims {d: [Q, V, L]}``,
    ``clip_mask [V, L]``."""
    maxima = [jnp.max(_mask_logits(s, clip_mask[None]), axis=-1) for s in sims.values()]
    return sum(maxima) / len(maxima)


def video_scores(query_enc: dict, video_enc: dict, video_mask) -> jnp.ndarray:
    """``S^R [Q, V]`` (eq. 6): mean over modalities of the max over valid clips of the cosine.

    A video without any valid clip scores -1e10.
    """
    mask = jnp.asarray(video_mask, jnp.float32)
    return _scores_from_sims(clip_similarities(query_enc, video_enc), mask)


# Loss ----------------------------------------------------------------------------------------


def _masked_max(x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Max over the last axis of the entries where ``mask``; -1e10 where none is."""
    return jnp.max(_mask_logits(x, mask.astype(x.dtype)), axis=-1)


def info_nce(positive, negatives, negative_mask, temperature: float) -> jnp.ndarray:
    """Per-row ``-log(exp(p/t) / (exp(p/t) + sum_{j: mask} exp(n_j/t)))`` (eq. 7).

    ``positive [B]``, ``negatives [B, N]``, ``negative_mask [B, N]`` bool; a row without
    negatives gives ``log(1) = 0``.  Stable: one log-sum-exp over the positive and the masked
    negatives (the positive always takes part, so the set is never empty).
    """
    logits = jnp.concatenate([positive[:, None], negatives], axis=1) / temperature
    keep = jnp.concatenate([jnp.ones_like(negative_mask[:, :1]), negative_mask], axis=1)
    return jax.nn.logsumexp(jnp.where(keep, logits, -jnp.inf), axis=1) - logits[:, 0]


def _weighted_mean(x, weight):
    return jnp.sum(x * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def retriever_loss(outputs, batch, model_config) -> tuple[jnp.ndarray, dict]:
    """Relevant content-enhanced contrastive loss ``L^v + L^q`` (eqs. 7-8; docstring item 6).

    ``outputs``: ``sims {d: [B, B, L]}`` and ``clip_mask [B, L]`` (batch row ``j``'s video);
    ``batch``: ``spans [B, S, 2]``, ``video_index [B]``, ``valid [B]`` (default all 1).
    """
    sims, mask = outputs["sims"], jnp.asarray(outputs["clip_mask"], jnp.float32)
    b = mask.shape[0]
    temperature = float(_get(model_config, "temperature", 0.01))
    weak_weight = float(_get(model_config, "weak_weight", 0.5))
    relevant = bool(_get(model_config, "relevant_content", True))
    valid = jnp.asarray(batch.get("valid", jnp.ones((b,))), jnp.float32) > 0
    weight = valid.astype(jnp.float32)
    video_index = jnp.asarray(batch["video_index"])
    negative = valid[:, None] & valid[None, :] & (video_index[:, None] != video_index[None, :])

    full = _scores_from_sims(sims, mask)  # S(i, j) [B, B]
    if relevant:
        labels = st_ed_labels(
            jnp.asarray(batch["spans"], jnp.float32)[:, 0],
            mask,
            float(_get(model_config, "clip_length", 1.5)),
        )
        clip = jnp.arange(mask.shape[1])[None]
        valid_clip = mask > 0
        inside = valid_clip & (clip >= labels[:, :1]) & (clip <= labels[:, 1:])
        outside = valid_clip & ~inside
        own = {d: jnp.diagonal(s, axis1=0, axis2=1).T for d, s in sims.items()}  # [B, L]
        strong = sum(_masked_max(s, inside) for s in own.values()) / len(own)
        weak = sum(_masked_max(s, outside) for s in own.values()) / len(own)
        has_weak = valid & jnp.any(outside, axis=1)
        weak_missing = jnp.sum(valid & ~has_weak).astype(jnp.float32)
        loss_weak = _weighted_mean(
            info_nce(weak, full, negative, temperature), has_weak.astype(jnp.float32)
        )
        loss_v_weak = weak_weight * loss_weak
    else:
        strong = jnp.diagonal(full)
        loss_v_weak = jnp.float32(0.0)
        weak_missing = jnp.float32(0.0)
    loss_v_strong = _weighted_mean(info_nce(strong, full, negative, temperature), weight)
    # Video-to-query: column i of S holds the scores of every query against video i.
    loss_q = _weighted_mean(info_nce(strong, full.T, negative.T, temperature), weight)
    loss = loss_v_strong + loss_v_weak + loss_q
    return loss, {
        "loss_v_strong": loss_v_strong,
        "loss_v_weak": loss_v_weak,
        "loss_q": loss_q,
        "weak_missing": weak_missing,
    }


def _get(config, name: str, default):
    return config.get(name, default) if hasattr(config, "get") else getattr(config, name, default)


def create_retriever(model_config) -> PREMRetriever:
    """``PREMRetriever`` from ``config.model`` (modalities from ``ctx_mode``)."""
    ctx_mode = _get(model_config, "ctx_mode", "video_sub")
    if ctx_mode not in CTX_MODE_MODALITIES:
        raise ValueError(f"ctx_mode must be one of {tuple(CTX_MODE_MODALITIES)}, got {ctx_mode!r}")
    pooling = _get(model_config, "pooling", "modality")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    defaults = PREMRetriever.__dataclass_fields__
    fields = {
        name: type(defaults[name].default)(_get(model_config, name, defaults[name].default))
        for name in (
            "hidden_size",
            "intermediate_size",
            "n_heads",
            "drop",
            "initializer_range",
            "vid_feat_size",
            "sub_feat_size",
            "q_feat_size",
            "max_desc_l",
            "max_ctx_l",
        )
    }
    return PREMRetriever(modalities=CTX_MODE_MODALITIES[ctx_mode], pooling=pooling, **fields)
