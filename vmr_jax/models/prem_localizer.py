"""PREM's focus-then-fuse moment localizer (Sec. 3.4, eqs. 9-11) and its training loss.

Paper: "Partial Relevance Enhanced Model for Video Corpus Moment Retrieval" (PREM;
shared/papers/002_7b44afa0ac4d579b.txt).  Its repository (hdy007007/PREM) holds no code we could
read, so the paper is the specification; choices where it is silent are marked *(ours)* or name
their source (TVRetrieval = XML).  Sec. 4.2: "vanilla Transformer" layers (post-LN, GELU FFN of
``intermediate_size``), hidden 384, FFN 1536, 4 heads.

1. Encoders ("similar to the video retriever", Sec. 3.3).  Query: ``LinearLayer`` (LayerNorm,
   Dropout, Linear, ReLU; TVRetrieval) -> position table + LayerNorm + Dropout -> one
   :class:`EncoderLayer` -> words ``[Q, Lq, H]`` (kept for the cross-attention); eq. 5 pooling
   per modality (Linear ``H -> 1`` without bias as XML's ``modular_vector_mapping``, softmax
   over valid words) -> ``q^d``.  Video: per modality ``LinearLayer`` + clip position +
   modality embedding (Fig. 2's "PE", "ME"), LayerNorm, Dropout; ONE encoder layer over the
   concatenated modalities -> ``d_bar``.  Features are used as given (no re-normalisation).
2. Gates (eq. 9, ``gate``): ``'l2'`` ``norm((W_d d_bar) * q^d) * d_bar``, ``norm`` the L2
   normalisation over the hidden axis (torch ``F.normalize``: ``x / max(||x||, 1e-12)``),
   ``W_d`` a ``D x D`` Linear with bias per modality; ``'sigmoid'`` ``sigmoid((W_d d_bar) *
   q^d) * d_bar``; ``'none'`` ``d_bar`` (Table 6 "w/o Modality-specific Gates").
3. ``c_hat = FC([I_hat; s_hat])``: Linear ``2H -> H`` (one modality: ``H -> H``).
4. ``num_fusion_layers`` (2) :class:`FusionLayer` s: clip self-attention, cross-attention from
   clips to the query words, FFN.
5. Boundary heads ("two 1D-convolution networks") *(ours)*: a width-``conv_kernel_size`` conv to
   ``H`` + ReLU, then a width-1 conv to 1 channel ("networks": more than XML's single conv).
   Fused clips are zeroed at padded clips first, so real clips' logits do not depend on the
   padding (XML convolves the non-zero padded outputs); padded clips get ``-1e10``.
6. Classification (eq. 11, "another Transformer"): one more :class:`EncoderLayer` over the fused
   clips of each candidate; moment ``(i, j)``'s feature is the max over clips ``i..j``
   (:func:`range_max`, a sparse table); Linear ``H -> 1``.  Positives
   (:func:`iou_positive_moments`): every cell ``i <= j`` on the positive video's valid clips
   (any length) covering ``[i * clip_length, (j + 1) * clip_length]`` whose IoU
   (:func:`vmr_jax.ops.segments.temporal_iou`) with ``spans[:, 0]`` is > 0.7; at most
   ``max_positive_moments``, highest IoU first *(ours: a static shape)*, the count cut is the
   output ``positives_cut``.  Negatives (:func:`top_window_moments`): per negative video the
   ``negative_moments`` (5) cells of XML's window ``min_pred_l <= j - i < max_pred_l`` with the
   highest ``st[i] + ed[j]`` ("top-5 predicted moments", selected under ``stop_gradient``).
7. Loss (:func:`localizer_loss`, eqs. 10-11): Shared-Norm cross-entropy of the start (end)
   logits over all valid clips of the ``1 + n`` candidates at the positive video's label clip
   (``xml_loss.st_ed_labels``); ``shared_norm=False``: over the positive video only.  ``L =
   L_st + L_ed + cls_weight * L_c``, ``L_c`` the BCE with logits, mean over valid moments.
   Rows with ``valid == 0`` count nowhere.

Batch: the shared PREM keys (``query_features``, ``query_mask``, ``video_features``,
``subtitle_features``, ``video_mask``, ``spans``, ``valid``) and, in training, the candidates
``negative_video_features [B, n, L, Dv]``, ``negative_subtitle_features``,
``negative_video_mask [B, n, L]`` (candidate 0 is the positive video; absent: ``n = 0``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vmr_jax.layers.attention import (
    LinearLayer,
    MultiHeadAttention,
    SelfAttentionBlock,
    TrainablePositionalEncoding,
    bert_dense,
    torch_layer_norm,
)
from vmr_jax.models.xml import MASK_VALUE, mask_logits
from vmr_jax.models.xml_loss import st_ed_labels
from vmr_jax.ops.segments import temporal_iou

GATES = ("l2", "sigmoid", "none")
MODALITIES = {"video_sub": ("video", "sub"), "video": ("video",), "sub": ("sub",)}
POSITIVE_IOU = 0.7  # Sec. 3.4: segments with IoU > 0.7 are positives


# Pure moment maths -----------------------------------------------------------------------------


def range_max(
    x: jnp.ndarray, start: jnp.ndarray, end: jnp.ndarray, max_length: int | None = None
) -> jnp.ndarray:
    """``max(x[..., start:end + 1, :])`` per moment.

    ``x [..., L, H]``, ``start``/``end [..., P]`` int (``start <= end < L``; others are
    clipped into range) -> ``[..., P, H]``.  ``max_length`` (static; default ``L``) bounds
    ``end - start + 1``; a longer moment keeps its first ``max_length`` clips.  Two exact
    formulations, whichever holds fewer rows of ``H``: gathering the ``max_length`` clips of
    each moment (``P * max_length``), or a sparse table: level ``k`` holds the maxima over
    windows of ``2^k`` clips (levels up to ``floor(log2 max_length)``, ``O(L log L H)`` to
    build), a moment of length ``n`` the max of two overlapping level-``floor(log2 n)`` windows.
    """
    length, hidden = x.shape[-2:]
    lead = start.shape[:-1]
    span = length if max_length is None else max(1, min(int(max_length), length))
    x = x.reshape(-1, length, hidden)
    start = jnp.clip(start.reshape(x.shape[0], -1), 0, length - 1)
    end = jnp.clip(end.reshape(x.shape[0], -1), start, jnp.minimum(start + span - 1, length - 1))
    depth = span.bit_length()  # table levels
    if start.shape[-1] * span <= depth * length:
        offsets = start[..., None] + np.arange(span)  # [N, P, span]
        idx = jnp.minimum(offsets, end[..., None]).reshape(x.shape[0], -1)
        clips = jnp.take_along_axis(x, idx[..., None], axis=1).reshape(*offsets.shape, hidden)
        clips = jnp.where((offsets <= end[..., None])[..., None], clips, -jnp.inf)
        return jnp.max(clips, axis=2).reshape(*lead, -1, hidden)
    levels, width = [x], 1
    while 2 * width <= span:
        shifted = np.minimum(np.arange(length) + width, length - 1)
        levels.append(jnp.maximum(levels[-1], jnp.take(levels[-1], shifted, axis=1)))
        width *= 2
    table = jnp.concatenate(levels, axis=1)  # [N, depth * L, H], level-major
    log2 = np.zeros(length + 1, np.int32)
    log2[2:] = np.floor(np.log2(np.arange(2, length + 1))).astype(np.int32)
    level = jnp.asarray(log2)[end - start + 1]
    left = level * length + start
    right = level * length + end - (1 << level) + 1
    pick = lambda idx: jnp.take_along_axis(table, idx[..., None], axis=1)  # noqa: E731
    return jnp.maximum(pick(left), pick(right)).reshape(*lead, -1, hidden)


def iou_positive_moments(
    spans: jnp.ndarray, mask: jnp.ndarray, clip_length: float, max_positives: int
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Cells ``i <= j`` on valid clips with IoU > 0.7 against ``spans [B, 2]`` seconds.

    ``mask [B, L]``.  Returns ``start, end [B, P]`` int32, ``valid [B, P]`` f32 (P =
    ``min(max_positives, L * L)``, highest IoU first, ties by flat index ``i * L + j``) and
    ``cut [B]`` int32, the positives beyond ``P`` that were dropped.
    """
    length = mask.shape[-1]
    start = np.repeat(np.arange(length), length)
    end = np.tile(np.arange(length), length)
    cells = np.stack([start, end + 1], -1).astype(np.float32) * np.float32(clip_length)
    iou = temporal_iou(jnp.asarray(cells)[None], spans[:, None, :].astype(jnp.float32), 0.0)
    on = mask.astype(bool)
    candidate = (start <= end)[None] & on[:, start] & on[:, end] & (iou > POSITIVE_IOU)
    keep = min(max_positives, length * length)
    best, cell = jax.lax.top_k(jnp.where(candidate, iou, -1.0), keep)
    cut = jnp.maximum(jnp.sum(candidate, axis=-1) - keep, 0).astype(jnp.int32)
    cell = cell.astype(jnp.int32)
    return cell // length, cell % length, (best > POSITIVE_IOU).astype(jnp.float32), cut


def top_window_moments(
    st: jnp.ndarray, ed: jnp.ndarray, mask: jnp.ndarray, k: int, min_pred_l: int, max_pred_l: int
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """The ``k`` window cells (``min_pred_l <= j - i < max_pred_l``, both clips valid) with
    the highest ``st[i] + ed[j]``.  ``st, ed, mask [..., L]`` -> ``start, end [..., k]`` int32
    and ``valid [..., k]`` f32 (0 where a video has fewer than ``k`` window cells)."""
    if not 0 <= min_pred_l < max_pred_l:
        raise ValueError(f"need 0 <= min_pred_l < max_pred_l, got {min_pred_l}, {max_pred_l}")
    length = st.shape[-1]
    width = max_pred_l - min_pred_l
    start = np.repeat(np.arange(length), width)
    end = start + min_pred_l + np.tile(np.arange(width), length)
    end_clip = np.minimum(end, length - 1)
    on = mask.astype(bool)
    ok = (end < length) & on[..., start] & on[..., end_clip]
    score = jnp.where(ok, st[..., start] + ed[..., end_clip], -jnp.inf)
    score = jax.lax.stop_gradient(score)
    short = max(k - score.shape[-1], 0)  # fewer window cells than k: pad with non-moments
    score = jnp.pad(score, [(0, 0)] * (score.ndim - 1) + [(0, short)], constant_values=-jnp.inf)
    top, cell = jax.lax.top_k(score, k)
    cell = jnp.minimum(cell, start.size - 1)
    return (
        jnp.asarray(start, jnp.int32)[cell],
        jnp.asarray(end_clip, jnp.int32)[cell],
        jnp.isfinite(top).astype(jnp.float32),
    )


# Layers ----------------------------------------------------------------------------------------


def _gelu(x: jnp.ndarray) -> jnp.ndarray:
    return jax.nn.gelu(x, approximate=False)


class FeedForward(nn.Module):
    """Vanilla Transformer FFN block: Linear -> GELU -> Linear -> Dropout -> residual LN.
    ``remat``: the backward pass recomputes the GELU from its input instead of storing its
    derivative's terms (same values; one ``[N, L, intermediate]`` residual, not three)."""

    hidden: int
    intermediate: int
    dropout: float
    init_range: float
    remat: bool = False

    @nn.compact
    def __call__(self, x, *, deterministic: bool):
        y = bert_dense(self.intermediate, self.init_range, "intermediate")(x)
        gelu = jax.checkpoint(_gelu) if self.remat else _gelu
        y = bert_dense(self.hidden, self.init_range, "output")(gelu(y))
        y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
        return torch_layer_norm("LayerNorm")(y + x)


class EncoderLayer(nn.Module):
    """Post-LN Transformer layer: self-attention block, then FFN block.  ``x [N, L, H]``,
    ``mask [N, L]`` (keys)."""

    hidden: int
    intermediate: int
    heads: int
    dropout: float
    init_range: float
    remat: bool = False  # FeedForward's

    @nn.compact
    def __call__(self, x, mask, *, deterministic: bool):
        args = (self.hidden, self.heads, self.dropout, self.init_range)
        x = SelfAttentionBlock(*args, name="attention")(x, mask, deterministic=deterministic)
        ffn_args = (self.hidden, self.intermediate, self.dropout, self.init_range, self.remat)
        ffn = FeedForward(*ffn_args, name="ffn")
        return ffn(x, deterministic=deterministic)


class FusionLayer(nn.Module):
    """Sec. 3.4 fusion layer: clip self-attention, cross-attention from clips to query words
    (Linear, Dropout, residual LN), FFN.  ``clips [N, Lc, H]``, ``clip_mask [N, Lc]``,
    ``words [N, Lw, H]``, ``word_mask [N, Lw]``."""

    hidden: int
    intermediate: int
    heads: int
    dropout: float
    init_range: float
    remat: bool = False  # FeedForward's

    @nn.compact
    def __call__(self, clips, clip_mask, words, word_mask, *, deterministic: bool):
        det, r = deterministic, self.init_range
        args = (self.hidden, self.heads, self.dropout, r)
        x = SelfAttentionBlock(*args, name="self_attention")(clips, clip_mask, deterministic=det)
        cross_mask = jnp.broadcast_to(word_mask[:, None, :], (*x.shape[:2], words.shape[1]))
        att = MultiHeadAttention(*args, name="cross_attention")(
            x, words, cross_mask, deterministic=det
        )
        y = nn.Dropout(self.dropout)(bert_dense(self.hidden, r, "cross_dense")(att), det)
        x = torch_layer_norm("cross_LayerNorm")(y + x)
        ffn = FeedForward(self.hidden, self.intermediate, self.dropout, r, self.remat, name="ffn")
        return ffn(x, deterministic=det)


class BoundaryHead(nn.Module):
    """Width-``kernel`` conv to ``H`` + ReLU, width-1 conv to 1: ``[N, L, H] -> [N, L]``."""

    hidden: int
    kernel: int
    init_range: float

    @nn.compact
    def __call__(self, x):
        k, init = self.kernel, nn.initializers.normal(self.init_range)
        y = nn.Conv(self.hidden, (k,), padding=[(k // 2, k // 2)], kernel_init=init)(x)
        return nn.Conv(1, (1,), kernel_init=init)(jax.nn.relu(y))[..., 0]


# Model -----------------------------------------------------------------------------------------


def _flat(x: jnp.ndarray, trailing: int) -> jnp.ndarray:
    """Merge all leading axes but the last ``trailing`` ones into one."""
    return x.reshape(-1, *x.shape[x.ndim - trailing :])


def _check_size(x, size: int, what: str, field: str) -> None:
    if x is None or x.shape[-1] != size:
        got = "none" if x is None else f"width {x.shape[-1]}"
        raise ValueError(f"{what}: {got}, the model's {field} is {size}")


class PREMLocalizer(nn.Module):
    """Focus-then-fuse moment localizer (module docstring)."""

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
    modalities: tuple[str, ...] = ("video", "sub")
    gate: str = "l2"
    conv_kernel_size: int = 5
    num_fusion_layers: int = 2
    max_positive_moments: int = 64
    negative_moments: int = 5
    min_pred_l: int = 0
    max_pred_l: int = 16
    clip_length: float = 1.5
    remat: bool = True  # FeedForward's: recompute the GELUs in the backward pass

    def setup(self):
        h, r, d = self.hidden_size, self.initializer_range, self.drop
        if self.gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {self.gate!r}")
        if not self.modalities or not set(self.modalities) <= {"video", "sub"}:
            raise ValueError(f"modalities must be 'video' and/or 'sub', got {self.modalities}")
        if self.conv_kernel_size % 2 != 1:
            raise ValueError(f"conv_kernel_size must be odd, got {self.conv_kernel_size}")
        layer = (h, self.intermediate_size, self.n_heads, d, r, self.remat)
        self.query_input_proj = LinearLayer(h, d, r)
        self.query_pos_embed = TrainablePositionalEncoding(self.max_desc_l, d, r)
        self.query_encoder = EncoderLayer(*layer)
        self.modular_vector_mapping = bert_dense(len(self.modalities), r, use_bias=False)
        for m in self.modalities:
            setattr(self, f"{m}_input_proj", LinearLayer(h, d, r))
            if self.gate != "none":
                setattr(self, f"{m}_gate", bert_dense(h, r))
        normal = nn.initializers.normal(r)
        self.clip_position_embeddings = self.param(
            "clip_position_embeddings", normal, (self.max_ctx_l, h)
        )
        self.modality_embeddings = self.param(
            "modality_embeddings", normal, (len(self.modalities), h)
        )
        self.embed_layernorm = torch_layer_norm()
        self.embed_dropout = nn.Dropout(d)
        self.video_encoder = EncoderLayer(*layer)
        self.clip_fusion = bert_dense(h, r)
        self.fusion_layers = [FusionLayer(*layer) for _ in range(self.num_fusion_layers)]
        self.st_head = BoundaryHead(h, self.conv_kernel_size, r)
        self.ed_head = BoundaryHead(h, self.conv_kernel_size, r)
        self.cls_encoder = EncoderLayer(*layer)
        self.cls_head = bert_dense(1, r)

    # Encoders (step 1) ---------------------------------------------------------------------

    def encode_queries(self, query_features, query_mask, *, train: bool = False) -> dict:
        """``words [Q, Lq, H]``, ``word_mask [Q, Lq]`` and ``q^d [Q, H]`` per modality."""
        det = not train
        lead = query_mask.shape[:-1]
        mask = _flat(jnp.asarray(query_mask, jnp.float32), 1)
        _check_size(query_features, self.q_feat_size, "query_features", "q_feat_size")
        x = self.query_input_proj(
            _flat(jnp.asarray(query_features, jnp.float32), 2), deterministic=det
        )
        x = self.query_pos_embed(x, deterministic=det)
        words = self.query_encoder(x, mask, deterministic=det)  # [N, Lq, H]
        logits = mask_logits(self.modular_vector_mapping(words), mask[..., None])
        pooled = jnp.einsum("nlm,nlh->nmh", jax.nn.softmax(logits, axis=1), words)
        out = {
            "words": words.reshape(*lead, *words.shape[1:]),
            "word_mask": mask.reshape(query_mask.shape),
        }
        for i, m in enumerate(self.modalities):
            out[m] = pooled[:, i].reshape(*lead, -1)
        return out

    def encode_videos(
        self, video_features, subtitle_features, video_mask, *, train: bool = False
    ) -> dict:
        """``d_bar [V, L, H]`` per modality (query independent: the corpus index stores it)."""
        det = not train
        length = video_mask.shape[-1]
        if length > self.max_ctx_l:
            raise ValueError(
                f"{length} clips, the clip position table has {self.max_ctx_l} "
                "(max_ctx_l): cut the videos first"
            )
        mask = _flat(jnp.asarray(video_mask, jnp.float32), 1)
        inputs = {"video": video_features, "sub": subtitle_features}
        streams = []
        for i, m in enumerate(self.modalities):
            size = {"video": self.vid_feat_size, "sub": self.sub_feat_size}[m]
            _check_size(inputs[m], size, f"{m} features", f"{m[:3]}_feat_size")
            x = getattr(self, f"{m}_input_proj")(
                _flat(jnp.asarray(inputs[m], jnp.float32), 2), deterministic=det
            )
            x = x + self.clip_position_embeddings[:length] + self.modality_embeddings[i]
            streams.append(self.embed_dropout(self.embed_layernorm(x), deterministic=det))
        joint_mask = jnp.concatenate([mask] * len(streams), axis=1)
        joint = self.video_encoder(jnp.concatenate(streams, 1), joint_mask, deterministic=det)
        return {
            m: joint[:, i * length : (i + 1) * length].reshape(*video_mask.shape, -1)
            for i, m in enumerate(self.modalities)
        }

    # Focus, fuse, localise (steps 2-5) -----------------------------------------------------

    def focus(self, query_enc, video_enc) -> dict:
        """Eq. 9 gates: ``{d: d_hat [..., L, H]}`` of ``d_bar [..., L, H]`` and ``q^d [..., H]``
        (the same leading axes)."""
        out = {}
        for m in self.modalities:
            d_bar = video_enc[m]
            if self.gate == "none":
                out[m] = d_bar
                continue
            g = getattr(self, f"{m}_gate")(d_bar) * query_enc[m][..., None, :]
            if self.gate == "l2":
                g = g / jnp.sqrt(jnp.maximum(jnp.sum(g * g, axis=-1, keepdims=True), 1e-24))
            else:
                g = jax.nn.sigmoid(g)
            self.sow("intermediates", f"{m}_gate", g)  # eq. 9's gate values
            out[m] = g * d_bar
        return out

    def localize(self, query_enc, video_enc, video_mask, *, train: bool = False):
        """``(st [Q, K, L], ed [Q, K, L], fused [Q, K, L, H])`` for video_enc leaves
        ``[Q, K, L, H]``, ``video_mask [Q, K, L]``; ``query_enc`` leaves ``[Q, ...]`` are
        broadcast over ``K``.  Padded clips get -1e10."""
        det = not train
        q, k, length = video_mask.shape
        query = {
            name: _flat(jnp.broadcast_to(x[:, None], (q, k, *x.shape[1:])), x.ndim - 1)
            for name, x in query_enc.items()
        }
        videos = {m: _flat(video_enc[m], 2) for m in self.modalities}
        mask = _flat(jnp.asarray(video_mask, jnp.float32), 1)
        gated = self.focus(query, videos)
        x = self.clip_fusion(jnp.concatenate([gated[m] for m in self.modalities], axis=-1))
        for layer in self.fusion_layers:
            x = layer(x, mask, query["words"], query["word_mask"], deterministic=det)
        x = x * mask[..., None]  # padded clips must not reach real ones through the convs
        st = mask_logits(self.st_head(x), mask).reshape(q, k, length)
        ed = mask_logits(self.ed_head(x), mask).reshape(q, k, length)
        return st, ed, x.reshape(q, k, length, -1)

    def classify(
        self, fused, mask, start, end, *, train: bool = False, max_length: int | None = None
    ) -> jnp.ndarray:
        """Eq. 11 branch: logits ``[N, P]`` of moments ``[start, end]`` (clips, inclusive) on
        ``fused [N, L, H]`` with clip ``mask [N, L]``; ``max_length``: :func:`range_max`."""
        x = self.cls_encoder(
            _flat(fused, 2), _flat(jnp.asarray(mask, jnp.float32), 1), deterministic=not train
        )
        features = range_max(x, _flat(start, 1), _flat(end, 1), max_length)  # [N, P, H]
        return self.cls_head(features)[..., 0].reshape(start.shape)

    # Training forward ----------------------------------------------------------------------

    def _candidates(self, batch):
        """Positive + negative videos ``[B, 1 + n, L, ...]`` per input key."""

        def stack(own, negatives):
            x = jnp.asarray(batch[own])[:, None]
            if negatives in batch:
                x = jnp.concatenate([x, jnp.asarray(batch[negatives], x.dtype)], axis=1)
            return x

        feats = {}
        for m, own in (("video", "video_features"), ("sub", "subtitle_features")):
            if m in self.modalities:
                if own not in batch:
                    raise KeyError(f"modalities {self.modalities} need batch[{own!r}]")
                feats[m] = stack(own, f"negative_{own}")
        mask = stack("video_mask", "negative_video_mask").astype(jnp.float32)
        return feats.get("video"), feats.get("sub"), mask

    def __call__(self, batch, *, train: bool) -> dict[str, jnp.ndarray]:
        """Training forward over ``1 + n`` candidates (module docstring, steps 1-6)."""
        video, sub, mask = self._candidates(batch)
        query_enc = self.encode_queries(batch["query_features"], batch["query_mask"], train=train)
        video_enc = self.encode_videos(video, sub, mask, train=train)
        st, ed, fused = self.localize(query_enc, video_enc, mask, train=train)
        b, c, _ = mask.shape
        valid = jnp.asarray(batch.get("valid", jnp.ones((b,))), jnp.float32) > 0
        spans = jnp.asarray(batch["spans"], jnp.float32)[:, 0]
        pos = iou_positive_moments(spans, mask[:, 0], self.clip_length, self.max_positive_moments)
        cls_start, cls_end, cls_mask = pos[:3]
        cls_logits = self.classify(fused[:, 0], mask[:, 0], cls_start, cls_end, train=train)
        if c > 1:  # the cls encoder sees each candidate alone: two calls cost as much as one
            k, window = self.negative_moments, (self.min_pred_l, self.max_pred_l)
            neg = top_window_moments(st[:, 1:], ed[:, 1:], mask[:, 1:], k, *window)
            neg_logits = self.classify(  # window cells: at most max_pred_l clips long
                fused[:, 1:], mask[:, 1:], *neg[:2], train=train, max_length=self.max_pred_l
            )
            cat = lambda x, y: jnp.concatenate([x, y.reshape(b, -1)], axis=-1)  # noqa: E731
            cls_start, cls_end, cls_mask = map(cat, pos[:3], neg)
            cls_logits = cat(cls_logits, neg_logits)
        p = pos[0].shape[-1]
        return {
            "st_logits": st,
            "ed_logits": ed,
            "clip_mask": mask,
            "cls_logits": cls_logits,
            "cls_labels": (jnp.arange(cls_logits.shape[-1]) < p)[None].repeat(b, 0) * 1.0,
            "cls_mask": cls_mask * valid[:, None],
            "cls_start": cls_start,
            "cls_end": cls_end,
            "positives_cut": pos[3],
        }


def localizer_loss(outputs, batch, model_config) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Eqs. 10-11 (module docstring, step 7); parts sum to the loss, plus ``positives_cut``
    (mean over valid rows of the positives beyond ``max_positive_moments``)."""
    get = model_config.get
    st, ed = outputs["st_logits"], outputs["ed_logits"]  # [B, C, L]
    clip_mask = jnp.asarray(outputs["clip_mask"], jnp.float32)
    b = st.shape[0]
    valid = (jnp.asarray(batch.get("valid", jnp.ones((b,))), jnp.float32) > 0).astype(jnp.float32)
    rows = jnp.maximum(jnp.sum(valid), 1.0)
    labels = st_ed_labels(
        jnp.asarray(batch["spans"], jnp.float32)[:, 0],
        jnp.asarray(batch["video_mask"], jnp.float32),
        float(get("clip_length", 1.5)),
    )
    shared = bool(get("shared_norm", True))

    def boundary_ce(logits, label):
        logits = jnp.where(clip_mask > 0, logits, MASK_VALUE)
        flat = logits.reshape(b, -1) if shared else logits[:, 0]  # candidate 0 comes first
        picked = jnp.take_along_axis(flat, label[:, None], axis=1)[:, 0]
        return jnp.sum((jax.nn.logsumexp(flat, axis=-1) - picked) * valid) / rows

    loss_st, loss_ed = boundary_ce(st, labels[:, 0]), boundary_ce(ed, labels[:, 1])
    gamma = float(get("cls_weight", 0.8))
    loss_cls = jnp.float32(0.0)
    if gamma and "cls_logits" in outputs:
        weight = jnp.asarray(outputs["cls_mask"], jnp.float32) * valid[:, None]
        bce = optax.sigmoid_binary_cross_entropy(outputs["cls_logits"], outputs["cls_labels"])
        loss_cls = gamma * jnp.sum(bce * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    cut = jnp.sum(jnp.asarray(outputs.get("positives_cut", jnp.zeros((b,))), jnp.float32) * valid)
    parts = {
        "loss_st": loss_st,
        "loss_ed": loss_ed,
        "loss_cls": loss_cls,
        "positives_cut": cut / rows,
    }
    return loss_st + loss_ed + loss_cls, parts


def create_localizer(model_config: Any) -> PREMLocalizer:
    """:class:`PREMLocalizer` from ``config.model``: ``localizer_ctx_mode`` gives its
    modalities, or ``ctx_mode`` when empty (Table 6's "w/o Text" / "w/o Image" localizers
    over the full retriever)."""
    get = model_config.get
    ctx_mode = get("localizer_ctx_mode", "") or get("ctx_mode", "video_sub")
    if ctx_mode not in MODALITIES:
        raise ValueError(f"ctx_mode must be one of {tuple(MODALITIES)}, got {ctx_mode!r}")
    fields = {
        name: type(field.default)(get(name, field.default))
        for name, field in PREMLocalizer.__dataclass_fields__.items()
        if name not in ("parent", "name", "modalities")
    }
    return PREMLocalizer(modalities=MODALITIES[ctx_mode], **fields)
