"""XML: Cross-modal Moment Localization, the TVR baseline (Lei et al., ECCV 2020).

Paper: "TVR: A Large-Scale Dataset for Video-Subtitle Moment Retrieval", Section 4 (XML).
Every detail below that the paper leaves open is taken from the official code
(jayleicn/TVRetrieval @ d99a9ea, ``baselines/crossmodal_moment_localization``: model_xml.py,
model_components.py, config.py, train.py, start_end_dataset.py, inference.py).  Module names
follow the official ones so that the converter and the parity test read alike.

Streams: ``ctx_mode`` is one of ``video``, ``sub``, ``video_sub`` with an optional ``_tef``
suffix (official ``--ctx_mode``).  Each used stream ``c`` (video, subtitles) has its own
weights; with both streams ``cross_att`` and ``merge_two_stream`` apply (config.py turns them
off when a stream is missing, and so does this port).

1. Inputs (start_end_dataset.py).  Query tokens and subtitles are L2-normalised as
   ``x / (||x|| + 1e-5)`` unless ``no_norm_tfeat``; video features likewise unless
   ``no_norm_vfeat`` (the 3072-d ResNet+I3D features of the TVR release are already
   normalised: ``--no_norm_vfeat``).  With ``tef``, the temporal endpoint feature
   ``[k / n, k / n + 1 / n]`` of clip ``k`` (``n`` = the clip count after the ``max_ctx_l``
   cut = ``sum(video_mask)``, float32 as torch computes it) is appended to every used stream;
   padded clips are zero.  Inputs arrive without TEF columns; the model builds them.
2. Query encoder: ``LinearLayer`` (LayerNorm over the input, Dropout(input_drop), Linear to
   ``H``, ReLU), learned position table + LayerNorm + Dropout(input_drop), one self-attention
   block ``BertAttention`` (``n_heads`` heads, additive key mask ``(1 - m) * -10000``,
   Dropout(drop) on the attention weights, Linear, Dropout(drop), residual, LayerNorm; no
   feed-forward).  LayerNorm eps is PyTorch's 1e-5.
3. Modular queries: ``modular_vector_mapping`` (Linear ``H -> #streams``, no bias) gives one
   logit per word and stream; ``softmax`` over words of the logits masked as
   ``x * m + (1 - m) * -1e10`` pools the encoded words into ``q^v`` and ``q^s``.
   ``no_modular``: both are the max over valid words instead.
4. Context encoder: per stream ``LinearLayer`` + the shared ``ctx_pos_embed`` + a
   self-attention block gives ``feat1``.  With cross attention (both streams):
   ``feat2^v = SelfAtt(LayerNorm(CrossAtt(feat1^v -> feat1^s) + feat1^v))`` and symmetrically
   for subtitles; the cross-attention mask is the outer product of the two clip masks (so
   padded query rows see a uniform ``-10000`` shift and still attend to every key, as in the
   code).  Without cross attention: ``feat2 = SelfAtt3(SelfAtt2(feat1))``.
5. Video retrieval score (``get_video_level_scores``):
   ``s(q, v) = 1/|C| sum_c max_{valid t} cos(q^c, feat1^c_t)``.
6. Span logits (``get_merged_st_ed_prob``): ``sim_t = 1/2 sum_c <Linear_c(q^c), feat2^c_t>``,
   then a 1-channel Conv1d of width ``conv_kernel_size`` (padding k // 2, no bias) for start
   and one for end, run over the **full padded length** (the encoder outputs at padded clips
   are not zero and reach the last real clips through the kernel), and only then padded clips
   are set to -1e10.  Without ``merge_two_stream`` each stream has its own convs, masked
   logits are averaged.
7. Loss (model_xml.py ``forward``): ``lw_st_ed * (CE(st) + CE(ed))`` against the training
   label rule of start_end_dataset.py (``st = floor(t_s / clip_length)``,
   ``ed = ceil(t_e / clip_length)``, both capped at ``n - 1``; computed in float32, exact for
   TVR's two-decimal timestamps), plus ``lw_neg_ctx`` and ``lw_neg_q`` ranking terms
   ``mean_i max(0, margin + s_neg - s_pos)`` (``lse``: ``log(1 + exp(s_neg - s_pos))``) on
   the in-batch score matrix.  Negatives (``get_neg_scores``): a copy of each row with 999 on
   the diagonal is sorted in descending order and the entry at a random position in
   ``[1, B)`` is taken -- ``[1, min(1 + hard_pool_size, B))`` once hard negatives are on; the
   neg-query term does the same on the transposed matrix.
   Schedules (train.py ``train_epoch``): the span weight is ``lw_st_ed`` from epoch
   ``train_span_start_epoch`` on (default 0, i.e. always; -1 disables it) and 0 before; hard
   negatives start at ``hard_negative_start_epoch`` (official ``hard_negtiave_start_epoch``,
   default 20; -1 disables them).  The epoch is ``step // steps_per_epoch``.

Choices of this port:

* Negative sampling happens in ``__call__`` (train mode) with the ``dropout`` RNG, which
  draws both the plain positions ``neg_draws`` and the hard-pool positions
  ``hard_neg_draws`` (``[2, B]``: row 0 neg-video, row 1 neg-query, like the official two
  ``torch.randint`` calls); ``loss_fn`` picks one by the epoch, which only it knows.
  Without draws in ``outputs`` (an eval-mode forward) the hardest negative (position 1) is
  used.  Examples with ``valid == 0`` are neither anchors nor negatives; with fewer than two
  valid examples the ranking terms are 0.  Negatives come from the whole global batch.
* Sub-only modes use ``video_mask`` as the clip mask (the official dataset gives video and
  subtitles the same length; ``torch.cat`` with the TEF would fail otherwise).
* Training batches of the official code are padded to the longest video of the batch and
  inference batches to ``max_ctx_l``; the conv result at the last two real clips of the
  longest video depends on that padding.  The model uses whatever padding it is given.
* Only the official defaults ``encoder_type='transformer'``, ``span_predictor_type='conv'``,
  ``conv_stride=1`` and a single conv kernel are implemented (the converter rejects others).

Batch (see ``vmr_jax.models``): ``query_features [B, Lq, q_feat_size]``, ``query_mask``,
``video_features [B, L, vid_feat_size]`` (video streams), ``subtitle_features
[B, L, sub_feat_size]`` (subtitle streams), ``video_mask [B, L]``, ``spans``, ``valid``.
``Lq <= max_desc_l`` and ``L <= max_ctx_l`` (sizes of the position tables).

Corpus interface (``model.apply(variables, ..., method=XML.<name>)``):
``encode_queries(batch)`` -> ``{c}_query [Q, H]`` (unit-norm modular query, for scores) and
``{c}_span_query [Q, H]`` (``{c}_query_linear`` of it, for spans);
``encode_videos(batch)`` -> ``{c}_feat1 [V, L, H]`` (unit-norm per clip), ``{c}_feat2
[V, L, H]`` and ``mask [V, L]``; ``score_videos(q, v) -> [Q, V]``;
``localize(q, v)`` with ``v`` leaves ``[Q, K, ...]`` -> start, end logits ``[Q, K, L]``.
``c`` ranges over ``video`` and/or ``sub``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vmr_jax.layers.attention import (
    LinearLayer,
    MultiHeadAttention,
    SelfAttentionBlock,
    TrainablePositionalEncoding,
    bert_dense,
    torch_layer_norm,
)
from vmr_jax.models import xml_corpus
from vmr_jax.models.family import Family
from vmr_jax.models.xml_loss import (  # noqa: F401  (re-exported: the family's loss)
    boundary_probs,
    epoch_of,
    loss_fn,
    ranking_loss,
    sampled_negative_scores,
    st_ed_labels,
    video_weights,
)

CTX_MODES = ("video", "sub", "video_sub", "video_tef", "sub_tef", "video_sub_tef")

DEFAULTS = dict(
    ctx_mode="video_sub_tef",
    vid_feat_size=3072,
    sub_feat_size=768,
    q_feat_size=768,
    hidden_size=256,
    n_heads=4,
    max_desc_l=30,
    max_ctx_l=100,
    input_drop=0.1,
    drop=0.1,
    conv_kernel_size=5,
    initializer_range=0.02,
    cross_att=True,
    merge_two_stream=True,
    no_modular=False,
    no_norm_vfeat=True,
    no_norm_tfeat=False,
    # Loss and its schedules.
    margin=0.1,
    ranking_loss_type="hinge",
    lw_neg_q=1.0,
    lw_neg_ctx=1.0,
    lw_st_ed=0.01,
    train_span_start_epoch=0,
    hard_negative_start_epoch=20,
    hard_pool_size=20,
    clip_length=1.5,
    # Inference (official post-processing constants).
    q2c_alpha=20.0,
    min_pred_l=2,
    max_pred_l=16,
    max_before_nms=200,
    max_vcmr_video=100,
    nms_thd=0.5,
)

VARIANTS: dict[str, dict[str, Any]] = {
    # scripts/train.sh tvr video_sub_tef resnet_i3d: 3072-d video (not re-normalised), 768-d
    # query tokens and subtitles; final inference with --nms_thd 0.5 as train.py runs it.
    "tvr": dict(DEFAULTS),
    # scripts/train.sh tvr video_tef resnet_i3d.
    "tvr_video": dict(DEFAULTS, ctx_mode="video_tef"),
    # Small and fast, for tests and the synthetic benchmark (32-d features, 1 s clips).
    "tiny": dict(
        DEFAULTS,
        vid_feat_size=32,
        sub_feat_size=32,
        q_feat_size=32,
        hidden_size=32,
        max_desc_l=16,
        max_ctx_l=128,
        clip_length=1.0,
        hard_pool_size=4,
        max_vcmr_video=10,
    ),
}

MASK_VALUE = -1e10  # official ``mask_logits``


def l2_normalize_features(x: jnp.ndarray, eps: float = 1e-5) -> jnp.ndarray:
    """The official dataset's ``x / (||x||_2 + eps)`` over the last axis."""
    return x / (jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)) + eps)


def unit_normalize(x: jnp.ndarray) -> jnp.ndarray:
    """PyTorch ``F.normalize(x, dim=-1)``: ``x / max(||x||_2, 1e-12)``."""
    return x / jnp.maximum(jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)), 1e-12)


def mask_logits(x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Official ``mask_logits``: ``x * m + (1 - m) * -1e10``."""
    return x * mask + (1.0 - mask) * MASK_VALUE


def temporal_endpoint_features(mask: jnp.ndarray) -> jnp.ndarray:
    """TEF ``[B, L, 2]``: ``[k / n, k / n + 1 / n]`` for real clips ``k < n = sum(mask)``,
    zeros at padded clips, bit-exact to the float32 arithmetic of start_end_dataset.py.

    XLA may evaluate a division as a multiplication by the reciprocal (1 ulp off), so the
    values for every ``n <= L`` are tabulated with NumPy and gathered.
    """
    length = mask.shape[-1]
    counts = np.arange(1, length + 1, dtype=np.float32)[:, None]  # [L, 1]
    start = np.arange(length, dtype=np.float32)[None] / counts  # [L(n), L(k)]
    table = np.stack([start, start + np.float32(1.0) / counts], axis=-1)  # [L, L, 2]
    n = jnp.sum(mask, axis=-1).astype(jnp.int32)
    tef = jnp.take(jnp.asarray(table), jnp.clip(n - 1, 0, length - 1), axis=0)
    return tef * mask[..., None]


def _torch_conv_init(fan_in: int):
    bound = 1.0 / np.sqrt(fan_in)  # PyTorch's Conv1d reset_parameters

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class XML(nn.Module):
    """Cross-modal Moment Localization.  Fields: see ``DEFAULTS``."""

    ctx_mode: str = "video_sub_tef"
    vid_feat_size: int = 3072
    sub_feat_size: int = 768
    q_feat_size: int = 768
    hidden_size: int = 256
    n_heads: int = 4
    max_desc_l: int = 30
    max_ctx_l: int = 100
    input_drop: float = 0.1
    drop: float = 0.1
    conv_kernel_size: int = 5
    initializer_range: float = 0.02
    cross_att: bool = True
    merge_two_stream: bool = True
    no_modular: bool = False
    no_norm_vfeat: bool = True
    no_norm_tfeat: bool = False
    hard_pool_size: int = 20

    @property
    def streams(self) -> tuple[str, ...]:
        """Context streams in the official order (video first)."""
        if self.ctx_mode not in CTX_MODES:
            raise ValueError(f"ctx_mode {self.ctx_mode!r} is not one of {CTX_MODES}")
        return tuple(s for s in ("video", "sub") if s in self.ctx_mode)

    @property
    def use_cross_att(self) -> bool:
        return self.cross_att and len(self.streams) == 2

    @property
    def use_merged_predictor(self) -> bool:
        return self.merge_two_stream and len(self.streams) == 2

    def setup(self):
        h, r = self.hidden_size, self.initializer_range
        if self.conv_kernel_size % 2 != 1:
            raise ValueError(f"conv_kernel_size must be odd, got {self.conv_kernel_size}")
        block = lambda: SelfAttentionBlock(h, self.n_heads, self.drop, r)  # noqa: E731
        self.query_input_proj = LinearLayer(h, self.input_drop, r)
        self.query_pos_embed = TrainablePositionalEncoding(self.max_desc_l, self.input_drop, r)
        self.ctx_pos_embed = TrainablePositionalEncoding(self.max_ctx_l, self.input_drop, r)
        self.query_encoder = block()
        for c in self.streams:
            setattr(self, f"{c}_input_proj", LinearLayer(h, self.input_drop, r))
            setattr(self, f"{c}_encoder1", block())
            setattr(self, f"{c}_encoder2", block())
            if self.use_cross_att:
                setattr(self, f"{c}_cross_att", MultiHeadAttention(h, self.n_heads, self.drop, r))
                setattr(self, f"{c}_cross_layernorm", torch_layer_norm())
            else:
                setattr(self, f"{c}_encoder3", block())
            setattr(self, f"{c}_query_linear", bert_dense(h, r))
            if not self.use_merged_predictor:
                setattr(self, f"{c}_st_predictor", self._span_conv())
                setattr(self, f"{c}_ed_predictor", self._span_conv())
        self.modular_vector_mapping = bert_dense(len(self.streams), r, use_bias=False)
        if self.use_merged_predictor:
            self.merged_st_predictor = self._span_conv()
            self.merged_ed_predictor = self._span_conv()

    def _span_conv(self) -> nn.Conv:
        """1-channel Conv1d over clips, padding k // 2, no bias, PyTorch's default init."""
        k = self.conv_kernel_size
        return nn.Conv(
            1,
            (k,),
            padding=[(k // 2, k // 2)],
            use_bias=False,
            kernel_init=_torch_conv_init(k),
        )

    def _stream(self, c: str):
        return lambda part: getattr(self, f"{c}_{part}")

    # Queries ---------------------------------------------------------------------------------

    def _modular_queries(self, batch, deterministic: bool) -> dict[str, jnp.ndarray]:
        """Un-normalised modular queries ``{c: [Q, H]}`` (``encode_query``)."""
        feat = jnp.asarray(batch["query_features"], jnp.float32)
        mask = jnp.asarray(batch["query_mask"], jnp.float32)
        if not self.no_norm_tfeat:
            feat = l2_normalize_features(feat)
        x = self.query_input_proj(feat, deterministic=deterministic)
        x = self.query_pos_embed(x, deterministic=deterministic)
        x = self.query_encoder(x, mask, deterministic=deterministic)  # [Q, Lq, H]
        if self.no_modular:
            pooled = jnp.max(mask_logits(x, mask[..., None]), axis=1)
            queries = {c: pooled for c in self.streams}
        else:
            logits = self.modular_vector_mapping(x)  # [Q, Lq, #streams]
            att = jax.nn.softmax(mask_logits(logits, mask[..., None]), axis=1)
            pooled = jnp.einsum("qls,qld->qsd", att, x)
            queries = {c: pooled[:, i] for i, c in enumerate(self.streams)}
        for c, q in queries.items():
            self.sow("intermediates", f"{c}_query", q)
        return queries

    def encode_queries(self, batch, *, train: bool = False) -> dict[str, jnp.ndarray]:
        """``{c}_query [Q, H]`` unit-norm (scores) and ``{c}_span_query [Q, H]`` (spans)."""
        queries = self._modular_queries(batch, deterministic=not train)
        out = {}
        for c, q in queries.items():
            out[f"{c}_query"] = unit_normalize(q)
            out[f"{c}_span_query"] = self._stream(c)("query_linear")(q)
        return out

    # Videos ----------------------------------------------------------------------------------

    def _stream_input(self, batch, c: str, mask) -> jnp.ndarray:
        key, normalize = {
            "video": ("video_features", not self.no_norm_vfeat),
            "sub": ("subtitle_features", not self.no_norm_tfeat),
        }[c]
        if key not in batch:
            raise KeyError(f"ctx_mode {self.ctx_mode!r} needs batch[{key!r}]")
        x = jnp.asarray(batch[key], jnp.float32)
        if normalize:
            x = l2_normalize_features(x)
        if "tef" in self.ctx_mode:
            x = jnp.concatenate([x, temporal_endpoint_features(mask)], axis=-1)
        return x

    def encode_videos(self, batch, *, train: bool = False) -> dict[str, jnp.ndarray]:
        """``{c}_feat1 [V, L, H]`` (unit-norm per clip), ``{c}_feat2 [V, L, H]``, ``mask``."""
        det = not train
        mask = jnp.asarray(batch["video_mask"], jnp.float32)
        feat1 = {}
        for c in self.streams:
            part = self._stream(c)
            x = part("input_proj")(self._stream_input(batch, c, mask), deterministic=det)
            x = self.ctx_pos_embed(x, deterministic=det)
            feat1[c] = part("encoder1")(x, mask, deterministic=det)
        feat2 = {}
        for c in self.streams:
            part = self._stream(c)
            if self.use_cross_att:
                other = feat1["sub" if c == "video" else "video"]
                cross_mask = mask[:, :, None] * mask[:, None, :]
                x = part("cross_att")(feat1[c], other, cross_mask, deterministic=det)
                x = part("cross_layernorm")(x + feat1[c])
                feat2[c] = part("encoder2")(x, mask, deterministic=det)
            else:
                x = part("encoder2")(feat1[c], mask, deterministic=det)
                feat2[c] = part("encoder3")(x, mask, deterministic=det)
        out = {"mask": mask}
        for c in self.streams:
            self.sow("intermediates", f"{c}_feat1", feat1[c])
            out[f"{c}_feat1"] = unit_normalize(feat1[c])
            out[f"{c}_feat2"] = feat2[c]
        return out

    # Scores and spans ------------------------------------------------------------------------

    def score_videos(self, query_enc, video_enc) -> jnp.ndarray:
        """Video-level scores ``[Q, V]``: mean over streams of the max over valid clips of
        the cosine of query and ``feat1`` (no exp)."""
        total = 0.0
        for c in self.streams:
            sim = jnp.einsum("qd,vld->qvl", query_enc[f"{c}_query"], video_enc[f"{c}_feat1"])
            scores = jnp.max(mask_logits(sim, video_enc["mask"][None]), axis=-1)
            self.sow("intermediates", f"{c}_scores", scores)
            total = total + scores
        return total / len(self.streams)

    def _conv(self, conv: nn.Conv, sim: jnp.ndarray) -> jnp.ndarray:
        flat = sim.reshape(-1, sim.shape[-1], 1)
        return conv(flat).reshape(sim.shape)

    def localize(self, query_enc, video_enc) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Start and end logits ``[Q, K, L]`` of query ``q`` in its ``K`` videos (``video_enc``
        leaves ``[Q, K, ...]``), -1e10 at padded clips."""
        mask = video_enc["mask"]
        sims = {
            c: jnp.einsum("qd,qkld->qkl", query_enc[f"{c}_span_query"], video_enc[f"{c}_feat2"])
            for c in self.streams
        }
        if self.use_merged_predictor:
            sim = (sims["video"] + sims["sub"]) / 2
            st = mask_logits(self._conv(self.merged_st_predictor, sim), mask)
            ed = mask_logits(self._conv(self.merged_ed_predictor, sim), mask)
            return st, ed
        st = ed = 0.0
        for c in self.streams:
            st = st + mask_logits(self._conv(self._stream(c)("st_predictor"), sims[c]), mask)
            ed = ed + mask_logits(self._conv(self._stream(c)("ed_predictor"), sims[c]), mask)
        return st / len(self.streams), ed / len(self.streams)

    # Training forward ------------------------------------------------------------------------

    def __call__(self, batch, *, train: bool) -> dict[str, jnp.ndarray]:
        """``video_scores [B, B]`` (query i vs video j), ``st_logits``/``ed_logits [B, L]`` on
        the own video, and in train mode ``neg_draws``/``hard_neg_draws [2, B]``."""
        query_enc = self.encode_queries(batch, train=train)
        video_enc = self.encode_videos(batch, train=train)
        scores = self.score_videos(query_enc, video_enc)
        own = jax.tree_util.tree_map(lambda x: x[:, None], video_enc)
        st, ed = self.localize(query_enc, own)
        out = {"video_scores": scores, "st_logits": st[:, 0], "ed_logits": ed[:, 0]}
        if train:
            out.update(self._negative_draws(batch, scores.shape[0]))
        return out

    def _negative_draws(self, batch, b: int) -> dict[str, jnp.ndarray]:
        """Positions in the descending-sorted rows (position 0 is the positive)."""
        valid = jnp.asarray(batch.get("valid", jnp.ones((b,))), jnp.float32)
        n = jnp.maximum(jnp.sum(valid > 0).astype(jnp.int32), 2)  # < 2 valid: loss term is 0
        plain_key, hard_key = jax.random.split(self.make_rng("dropout"))
        hard_max = jnp.minimum(1 + self.hard_pool_size, n)
        return {
            "neg_draws": jax.random.randint(plain_key, (2, b), 1, n, jnp.int32),
            "hard_neg_draws": jax.random.randint(hard_key, (2, b), 1, hard_max, jnp.int32),
        }


def create_model(model_config) -> XML:
    """``XML`` from ``config.model`` (a ``VARIANTS`` entry; other keys are ignored)."""
    fields = {k: v for k, v in dict(model_config).items() if k in XML.__dataclass_fields__}
    fields.pop("name", None)
    fields.pop("parent", None)
    return XML(**fields)


def example_batch(
    model_config, batch_size: int = 1, query_len: int | None = None, num_clips: int | None = None
) -> dict[str, np.ndarray]:
    """Zeros with the shapes and dtypes XML reads (initialisation, benchmarks)."""
    lq = int(query_len or model_config.max_desc_l)
    length = int(num_clips or model_config.max_ctx_l)
    batch = {
        "query_features": np.zeros((batch_size, lq, int(model_config.q_feat_size)), np.float32),
        "query_mask": np.ones((batch_size, lq), np.float32),
        "video_mask": np.ones((batch_size, length), np.float32),
        "duration": np.full((batch_size,), length * float(model_config.clip_length), np.float32),
        "spans": np.tile(np.array([[[0.0, 1.0]]], np.float32), (batch_size, 1, 1)),
        "span_mask": np.ones((batch_size, 1), np.float32),
        "query_index": np.arange(batch_size, dtype=np.int32),
        "valid": np.ones((batch_size,), np.float32),
    }
    if "video" in model_config.ctx_mode:
        dim = int(model_config.vid_feat_size)
        batch["video_features"] = np.zeros((batch_size, length, dim), np.float32)
    if "sub" in model_config.ctx_mode:
        dim = int(model_config.sub_feat_size)
        batch["subtitle_features"] = np.zeros((batch_size, length, dim), np.float32)
    return batch


FAMILY = Family(
    name="xml",
    create_model=create_model,
    variants=VARIANTS,
    task="vcmr",
    output="corpus",
    example_batch=example_batch,
    loss_fn=loss_fn,
    corpus=xml_corpus.XMLStages.from_config,
)
