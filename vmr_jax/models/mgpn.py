"""MGPN: Multi-Granularity Perception Network (Sun et al., SIGIR 2022).

Paper: shared/papers/003_93519d53a91582f1.txt; "eq." below is the paper's own numbering
(section 3, equations (1)-(12)).  Where the paper is silent the details follow the official
code (Huntersxsx/MGPN @ 0368009, built on microsoft/2D-TAN); every such choice is listed here.
Where the paper and that code disagree, the step says "paper: ... / code: ..." and we follow
the code, for parity with the golden files (shared/golden/mgpn_*.npz).

Pipeline (paper section 3, official module names in brackets), channels-last:

1. Coarse-grained encoder [FeatureEncoder] (section 3.2, no equation): ``1x1 conv D->H + ReLU``
   then average pooling with kernel = stride = ``frame_stride`` (``NUM_SAMPLE_CLIPS / N``) to
   ``N`` clips; optional learned position table (uniform [0, 1) init, ActivityNet) with dropout
   0.1; then 2-layer (TACoS: 3) Bi-GRUs (H/2 per direction) over clips and over words.
   Paper: "a temporal 1D convolution layer and an average pooling layer" / code: the conv has
   kernel 1 and a ReLU, and the position table is added (neither in the paper; we follow the
   code).  Paper silent on padding; code: the word GRU runs over the zero-padded sequence
   without packing, and its output is multiplied by the word mask.
2. Co-attention first fuse [FirstFuse] (eq. 2): a Linear scores each word, softmax over all
   word slots (paper silent on padding; code: padding included), attention pooling gives a
   query vector ``q``; ``vis_fused = normalize_channels(q * v_t)``.  Paper: ``||q * V||_F``,
   written as a Frobenius norm but called l2 normalisation / code: ``F.normalize`` per clip
   over channels (we follow the code).  The video-aware side has no equation ("in a similar
   way"): a 1x1 conv scores each clip, softmax over clips pools a video vector ``u``.  Paper:
   symmetric to the query-aware side, i.e. each word normalised over channels / code:
   ``txt_fused = F.normalize(u * w_l)`` with PyTorch's default ``dim=1``, i.e. normalised over
   the **word** axis (we follow the code).
3. Choice generator [SparseBoundaryContent] (eq. 3-4): content map = max-pool of ``vis_fused``
   over each cell's clips, boundary map from the start and end clips (eq. 3), only on the
   2D-TAN sparse cells, zero elsewhere (eq. 4; ``ops.moment_map``).  Paper: boundary =
   ``Addition(v_s, v_e) = x_i + x_j`` / code: ``(x_i + x_j) / 2``, diagonal ``x_i`` (we follow
   the code).
4. Fine-grained encoder [FineGrainedFeature] (eq. 5-6).  Query (eq. 6): uni/bi/tri-gram Conv1d
   over ``txt_fused`` (kernel 1; kernel 2 dilation 2 padding 1; kernel 3 dilation 2 padding 2),
   concat, Linear 3H->H.  Paper: bigrams and trigrams of adjacent tokens / code: dilation 2, so
   the "bigram" at word t reads words t-1 and t+1 and the "trigram" t-2, t, t+2 (we follow the
   code).  Clips (eq. 5): paper: ``Linear(ReLU(Linear(V))) + V`` / code: ``x +
   Dropout(FFN(LayerNorm(x)))`` with the code's LayerNorm ``a * (x - mean) / (std_unbiased +
   1e-6) + b`` and FFN ``W2 Dropout(ReLU(W1 x))``, dropout 0.1 (we follow the code).
5. Conditioned interaction [SecondFuse] (eq. 7-8): ``f_s`` = Linear(max over words) (eq. 7;
   paper silent on padding; code: max over all word slots, padding included), ``f_v`` =
   Linear(mean over clips) (eq. 8); gates ``sigmoid(boundary * f)`` multiply the content map;
   the two gated maps are concatenated, query-gated first (eq. 8).
6. Choice comparison [ConvModule] (eq. 9).  Paper: ``ReLU(Conv2d(Concat(A, A_B, A_C) + A))``,
   the residual inside the conv and the ReLU (as printed; the 2H-channel fused map ``A`` cannot
   be added to the 4H-channel concat) / code: ``x = (ReLU(1x1 conv([fused, boundary,
   content])) + fused) * mask`` (4H -> 2H), the residual after the ReLU (we follow the code).
   Then four blocks ``7x7 conv (padding 3, 32 groups) -> BatchNorm -> ReLU -> * mask``
   (section 4.2) with channels 2H->2H->H->H->H (paper silent on widths but the last, H).
7. Ranker [pred_layer] (eq. 10): 1x1 conv to one logit per cell, times the mask; eq. 10's
   sigmoid is applied by the loss (BCE with logits) and by decoding.
8. Loss [bce_rescale_loss] (eq. 11-12): BCE with logits on the masked cells only (mean over
   them, eq. 12) against ``clamp((IoU - min_iou) / (max_iou - min_iou), 0, 1)`` (eq. 11).
   Decoding ranks ``sigmoid(score)`` (eq. 10; top-K of eq. 1).

Computation on valid cells: every map op above is per cell except the 7x7 convs, and all maps
are zero outside the mask, so the model works on the ``C`` valid cells (``[B, C, ch]``) and the
7x7 convs read only valid neighbours (``layers.map_conv``).  ``map_conv='dense'`` runs the same
convs on the full ``N x N`` map (the reference the sparse form is tested against).

Parameter counts: the official ``SparseBoundaryContent`` also builds a ``Conv1d(1024, 512, 3)``
(``generator_layer.conv1d``, the same sizes in every YAML) that ``forward`` never calls; we
leave it out, and the paper's "Param." (Tables 2 and 4: PyTorch ``model.parameters()``)
counts it.  :func:`parameter_counts` gives both (``tacos`` 5,048,067 here, 6,621,443 the
paper's way: Table 2's 6.62M; ``activitynet`` 3,550,979 and 5,124,355: Table 4's 5.12M), and
``vmr-jax bench`` reports ``num_params_paper`` beside ``num_params``.

Batch inputs: ``video_features [B, T, D]`` with ``T = N * frame_stride`` and either
``query_features [B, L, word_dim]`` (GloVe vectors) or ``query_tokens [B, L]`` with a learned
embedding (``vocab_size > 0``), plus ``query_mask [B, L]``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vmr_jax.layers.map_conv import dense_masked_conv, reachable_cells, sparse_group_conv
from vmr_jax.layers.recurrent import StackedRNN
from vmr_jax.models import common
from vmr_jax.models.family import Family
from vmr_jax.ops import moment_map

DEFAULTS = dict(
    feature_dim=1024,
    hidden=256,
    num_clips=64,
    frame_stride=4,
    pooling_counts=(15, 8, 8),
    gru_layers=2,
    word_dim=300,
    vocab_size=0,
    use_position=False,
    groups=32,
    conv_kernel=7,
    dropout=0.1,
    min_iou=0.5,
    max_iou=1.0,
    map_conv="sparse",
    conv_chunk=128,
    bn_stats="dense",
)

VARIANTS: dict[str, dict[str, Any]] = {
    # experiments/charades/i3d-finetune-mgpn256.yaml
    "charades_i3d": dict(DEFAULTS),
    # experiments/charades/vgg-mgpn256.yaml
    "charades_vgg": dict(
        DEFAULTS, feature_dim=4096, num_clips=16, frame_stride=16, pooling_counts=(15,)
    ),
    # experiments/tacos/mgpn256.yaml
    "tacos": dict(
        DEFAULTS,
        feature_dim=4096,
        num_clips=128,
        frame_stride=2,
        pooling_counts=(15, 8, 8, 8),
        gru_layers=3,
        min_iou=0.3,
        max_iou=0.7,
    ),
    # experiments/activitynet/mgpn256.yaml
    "activitynet": dict(DEFAULTS, feature_dim=500, use_position=True),
    # Small and fast, for tests and the synthetic benchmark.
    "tiny": dict(
        DEFAULTS,
        feature_dim=32,
        hidden=64,
        num_clips=16,
        frame_stride=2,
        pooling_counts=(8, 4),
        gru_layers=1,
        word_dim=32,
        groups=8,
        min_iou=0.5,
        max_iou=1.0,
    ),
}


def l2_normalize(x: jnp.ndarray, axis: int) -> jnp.ndarray:
    """PyTorch ``F.normalize``: ``x / max(||x||_2, 1e-12)``."""
    norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
    return x / jnp.maximum(norm, 1e-12)


class UnbiasedLayerNorm(nn.Module):
    """The official code's LayerNorm: ``a * (x - mean) / (std + eps) + b``, unbiased std."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        a = self.param("scale", nn.initializers.ones, (dim,))
        b = self.param("bias", nn.initializers.zeros, (dim,))
        mean = x.mean(-1, keepdims=True)
        std = jnp.sqrt(jnp.sum((x - mean) ** 2, -1, keepdims=True) / (dim - 1))
        return a * (x - mean) / (std + self.eps) + b


def _torch_uniform(fan_in: int):
    """PyTorch's default Linear/Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (bias too)."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _dense(features: int, fan_in: int, name: str) -> nn.Dense:
    init = _torch_uniform(fan_in)
    return nn.Dense(features, kernel_init=init, bias_init=init, name=name)


class MapBatchNorm(nn.Module):
    """``nn.BatchNorm2d`` (momentum 0.1, eps 1e-5) whose train-mode statistics are over every
    position of the dense ``B x N x N`` map, given as explicit per-channel sums."""

    momentum: float = 0.1
    eps: float = 1e-5

    @nn.compact
    def __call__(self, y, stats, *, train: bool):
        """``y [B, C, ch]``; ``stats = (mean, var, count)`` of the dense map (train only)."""
        ch = y.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (ch,))
        shift = self.param("bias", nn.initializers.zeros, (ch,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((ch,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((ch,), jnp.float32))
        if train:
            mean, var, count = stats
            if not self.is_initializing():
                unbiased = var * count / max(count - 1, 1)
                ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean
                ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * unbiased
        else:
            mean, var = ra_mean.value, ra_var.value
        return (y - mean) * jax.lax.rsqrt(var + self.eps) * scale + shift


class MapConvBlock(nn.Module):
    """7x7 grouped conv + BatchNorm + ReLU on the valid cells (``[B, C, ch] -> [B, C, ch']``).

    Train-mode BatchNorm statistics follow PyTorch: over all ``B * N * N`` conv outputs of the
    dense map, masked-out cells included (the mask is applied after the block).  With
    ``bn_stats='dense'`` these are computed exactly: the conv is evaluated on every cell whose
    7x7 window touches a valid cell (``reachable_cells``), and every other cell equals the
    bias, added in closed form.  ``bn_stats='valid'`` takes statistics over the valid cells
    only (cheaper, a deviation from the official code).  Eval mode needs the valid cells only.
    """

    features: int
    kernel: int
    groups: int
    starts: Any
    ends: Any
    num_clips: int
    mode: str
    chunk: int
    bn_stats: str

    @nn.compact
    def __call__(self, x, *, train: bool):
        c_in = x.shape[-1]
        n = self.num_clips
        fan_in = c_in // self.groups * self.kernel * self.kernel
        init = _torch_uniform(fan_in)
        kernel = self.param(
            "kernel", init, (self.kernel, self.kernel, c_in // self.groups, self.features)
        )
        bias = self.param("bias", init, (self.features,))
        pad = self.kernel // 2
        valid = (self.starts, self.ends)
        stats = None
        if self.mode == "dense":
            dense = moment_map.scatter_cells(x, self.starts, self.ends, n)
            y_dense = dense_masked_conv(dense, kernel, pad, self.groups) + bias
            y = moment_map.gather_cells(y_dense, self.starts, self.ends)
            if train:
                if self.bn_stats == "dense":
                    mean = jnp.mean(y_dense, axis=(0, 1, 2))
                    var = jnp.mean(jnp.square(y_dense - mean), axis=(0, 1, 2))
                    stats = (mean, var, y_dense.shape[0] * n * n)
                else:
                    stats = _moments(y)
        elif self.mode == "sparse":
            if train and self.bn_stats == "dense":
                reach = reachable_cells(self.starts, self.ends, n, self.kernel, pad)
                y_reach = (
                    sparse_group_conv(x, kernel, valid, reach, n, pad, self.groups, self.chunk)
                    + bias
                )
                b = x.shape[0]
                total = b * n * n
                rest = total - b * len(reach[0])  # cells that see only zeros: y = bias
                mean = (jnp.sum(y_reach, axis=(0, 1)) + rest * bias) / total
                sq = jnp.sum(jnp.square(y_reach - mean), axis=(0, 1))
                var = (sq + rest * jnp.square(bias - mean)) / total
                stats = (mean, var, total)
                y = jnp.take(y_reach, _positions(reach, valid, n), axis=1)
            else:
                y = sparse_group_conv(x, kernel, valid, valid, n, pad, self.groups, self.chunk)
                y = y + bias
                if train:
                    stats = _moments(y)
        else:
            raise ValueError(f"map_conv must be 'sparse' or 'dense', got {self.mode!r}")
        y = jax.nn.relu(MapBatchNorm(name="bn")(y, stats, train=train))
        self.sow("intermediates", "output", y)
        return y


def _moments(y):
    mean = jnp.mean(y, axis=(0, 1))
    var = jnp.mean(jnp.square(y - mean), axis=(0, 1))
    return mean, var, y.shape[0] * y.shape[1]


def _positions(superset, subset, num_clips: int) -> np.ndarray:
    """Index of every ``subset`` cell inside the row-major ``superset`` cell list."""
    key_super = np.asarray(superset[0]) * num_clips + np.asarray(superset[1])
    key_sub = np.asarray(subset[0]) * num_clips + np.asarray(subset[1])
    pos = np.searchsorted(key_super, key_sub)
    if not np.array_equal(key_super[np.minimum(pos, len(key_super) - 1)], key_sub):
        raise ValueError("subset cells are not all in the superset")
    return pos


class MGPN(nn.Module):
    """MGPN score map over the sparse 2D proposal map.  Fields: see ``VARIANTS``."""

    feature_dim: int = 1024
    hidden: int = 256
    num_clips: int = 64
    frame_stride: int = 4
    pooling_counts: tuple[int, ...] = (15, 8, 8)
    gru_layers: int = 2
    word_dim: int = 300
    vocab_size: int = 0
    use_position: bool = False
    groups: int = 32
    conv_kernel: int = 7
    dropout: float = 0.1
    min_iou: float = 0.5
    max_iou: float = 1.0
    map_conv: str = "sparse"
    conv_chunk: int = 128
    bn_stats: str = "dense"

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        return moment_map.valid_cells(self.num_clips, tuple(self.pooling_counts))

    @nn.compact
    def __call__(self, batch: dict[str, jnp.ndarray], *, train: bool) -> dict[str, jnp.ndarray]:
        h = self.hidden
        n = self.num_clips
        starts, ends = self.cells()
        deterministic = not train

        # 1. Coarse-grained encoder (section 3.2).
        video = batch["video_features"].astype(jnp.float32)
        b, t, d = video.shape
        if t != n * self.frame_stride:
            raise ValueError(
                f"video_features has {t} clips; MGPN with num_clips={n} and "
                f"frame_stride={self.frame_stride} needs {n * self.frame_stride}"
            )
        frame = jax.nn.relu(_dense(h, d, "frame_conv")(video))
        frame = frame.reshape(b, n, self.frame_stride, h).mean(axis=2)
        if self.use_position:
            pos = self.param("position", nn.initializers.uniform(1.0), (n, h))
            frame = nn.Dropout(self.dropout)(frame + pos[None], deterministic=deterministic)
        self.sow("intermediates", "frame_encoder", frame)

        if self.vocab_size > 0 and "query_tokens" in batch:
            words = nn.Embed(self.vocab_size, self.word_dim, name="word_embed")(
                batch["query_tokens"]
            )
        else:
            words = batch["query_features"].astype(jnp.float32)
        word_mask = batch["query_mask"].astype(jnp.float32)[..., None]  # [B, L, 1]

        vis_out, vis_hn = StackedRNN(h // 2, self.gru_layers, "gru", True, name="vis_gru")(frame)
        txt_out, txt_hn = StackedRNN(h // 2, self.gru_layers, "gru", True, name="txt_gru")(words)
        self.sow("intermediates", "vis_gru_output", vis_out)
        self.sow("intermediates", "vis_gru_h_n", vis_hn)
        self.sow("intermediates", "txt_gru_output", txt_out)
        self.sow("intermediates", "txt_gru_h_n", txt_hn)
        vis_enc = vis_out  # [B, N, H]
        txt_enc = txt_out * word_mask  # [B, L, H]
        self.sow("intermediates", "txt_encoded", txt_enc)

        # 2. Co-attention first fuse (eq. 2).
        word_att = jax.nn.softmax(_dense(1, h, "word_attention")(txt_enc), axis=1)
        query_vec = jnp.sum(word_att * txt_enc, axis=1)  # [B, H]
        vis_fused = l2_normalize(query_vec[:, None, :] * vis_enc, axis=-1)
        clip_att = jax.nn.softmax(_dense(1, h, "clip_attention")(vis_enc), axis=1)
        video_vec = jnp.sum(clip_att * vis_enc, axis=1)  # [B, H]
        txt_fused = l2_normalize(video_vec[:, None, :] * txt_enc, axis=1)  # over words
        self.sow("intermediates", "vis_fused", vis_fused)
        self.sow("intermediates", "txt_fused", txt_fused)

        # 3. Choice generator on valid cells (eq. 3-4).
        boundary = moment_map.boundary_cells(vis_fused, starts, ends)  # [B, C, H]
        content = moment_map.span_max_cells(vis_fused, starts, ends)  # [B, C, H]
        self.sow("intermediates", "boundary_cells", boundary)
        self.sow("intermediates", "content_cells", content)

        # 4. Fine-grained encoder (eq. 5-6).
        # (name, kernel, dilation): padding (kernel - 1) * dilation / 2 keeps the length L.
        grams = []
        for name, kernel, dilation in (("unigram", 1, 1), ("bigram", 2, 2), ("trigram", 3, 2)):
            pad = (kernel - 1) * dilation // 2
            init = _torch_uniform(kernel * h)
            conv = nn.Conv(
                h,
                (kernel,),
                padding=[(pad, pad)],
                kernel_dilation=(dilation,),
                name=f"{name}_conv",
                kernel_init=init,
                bias_init=init,
            )
            grams.append(conv(txt_fused))
        phrase = jnp.concatenate(grams, axis=-1)  # [B, L, 3H]
        self.sow("intermediates", "phrase_encode", phrase)
        txt_fine = _dense(h, 3 * h, "phrase_linear")(phrase)
        normed = UnbiasedLayerNorm(name="clip_norm")(vis_fused)
        ffn = jax.nn.relu(_dense(h, h, "ffn_1")(normed))
        ffn = nn.Dropout(self.dropout)(ffn, deterministic=deterministic)
        ffn = _dense(h, h, "ffn_2")(ffn)
        vis_fine = vis_fused + nn.Dropout(self.dropout)(ffn, deterministic=deterministic)
        self.sow("intermediates", "vis_finegrained", vis_fine)
        self.sow("intermediates", "txt_finegrained", txt_fine)

        # 5. Conditioned interaction (eq. 7-8).
        f_s = _dense(h, h, "text_gate")(jnp.max(txt_fine, axis=1))[:, None, :]
        f_v = _dense(h, h, "video_gate")(jnp.mean(vis_fine, axis=1))[:, None, :]
        fused = jnp.concatenate(
            [jax.nn.sigmoid(boundary * f_s) * content, jax.nn.sigmoid(boundary * f_v) * content],
            axis=-1,
        )  # [B, C, 2H]
        self.sow("intermediates", "fused_cells", fused)

        # 6. Choice comparison (eq. 9).
        stacked = jnp.concatenate([fused, boundary, content], axis=-1)
        x = jax.nn.relu(_dense(2 * h, 4 * h, "fuse_conv")(stacked)) + fused
        widths = (2 * h, h, h, h)
        for k, width in enumerate(widths):
            x = MapConvBlock(
                width,
                self.conv_kernel,
                self.groups,
                starts,
                ends,
                n,
                self.map_conv,
                self.conv_chunk,
                self.bn_stats,
                name=f"conv_block{k + 1}",
            )(x, train=train)
        self.sow("intermediates", "relation_cells", x)

        # 7. Ranker (eq. 10, sigmoid left to the loss and decoding).
        logits = _dense(1, h, "pred")(x)[..., 0]  # [B, C]
        return {
            "cell_logits": logits,
            "score_map": moment_map.scatter_cells(logits, starts, ends, n),
        }


def create_model(model_config) -> MGPN:
    """``MGPN`` from ``config.model`` (fields of a ``VARIANTS`` entry; ``name`` ignored)."""
    fields = {k: v for k, v in dict(model_config).items() if k in MGPN.__dataclass_fields__}
    if "pooling_counts" in fields:
        fields["pooling_counts"] = tuple(fields["pooling_counts"])
    return MGPN(**fields)


def cell_targets(model_config, batch: dict[str, jnp.ndarray]) -> jnp.ndarray:
    """Scaled-IoU targets of the valid cells (eq. 11): ``[B, C]`` (first ground-truth span)."""
    n = model_config.num_clips
    starts, ends = moment_map.valid_cells(n, tuple(model_config.pooling_counts))
    iou = moment_map.iou_target_map(n, batch["spans"][:, 0], batch["duration"])  # [B, N, N]
    iou = iou.reshape(iou.shape[0], n * n)[:, starts * n + ends]
    return moment_map.scaled_iou(iou, model_config.min_iou, model_config.max_iou)


def loss_fn(
    outputs, batch, model_config, *, step=None, steps_per_epoch=None
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Official ``bce_rescale_loss`` (eq. 12): BCE with logits, mean over the valid cells of every
    example (examples with ``valid == 0`` contribute nothing)."""
    del step, steps_per_epoch  # no epoch schedule in this loss
    logits = outputs["cell_logits"]
    targets = cell_targets(model_config, batch)
    per_cell = optax.sigmoid_binary_cross_entropy(logits, targets)
    weight = batch.get("valid", jnp.ones(logits.shape[:1], jnp.float32))[:, None]
    loss = jnp.sum(per_cell * weight) / jnp.maximum(jnp.sum(weight) * logits.shape[1], 1.0)
    return loss, {"bce_rescale_loss": loss}


def decode(outputs, batch, model_config) -> dict[str, jnp.ndarray]:
    """Ranking scores ``sigmoid(logit)`` (eq. 10) on the dense map (0 outside the valid cells)."""
    n = model_config.num_clips
    starts, ends = moment_map.valid_cells(n, tuple(model_config.pooling_counts))
    probs = jax.nn.sigmoid(outputs["cell_logits"])
    return {"score_map": moment_map.scatter_cells(probs, starts, ends, n), "num_clips": n}


def example_batch(model_config, batch_size: int = 1, query_len: int = 10) -> dict[str, np.ndarray]:
    """Zeros with the shapes and dtypes MGPN reads (initialisation, benchmarks)."""
    return common.example_batch(model_config, batch_size, query_len)


def map_builders(model_config) -> dict[str, Any]:
    """The 2D-map construction alone (``[B, N, H]`` clip features -> boundary and content
    maps), as timed by ``vmr-jax bench``: on the valid cells (what the model uses) and as
    dense ``[B, N, N, H]`` maps (what the official ``SparseBoundaryContent`` returns)."""
    n = int(model_config.num_clips)
    counts = tuple(model_config.pooling_counts)
    starts, ends = moment_map.valid_cells(n, counts)
    mask = moment_map.valid_cell_mask(n, counts)

    def cells(x):
        return moment_map.boundary_cells(x, starts, ends), moment_map.span_max_cells(
            x, starts, ends
        )

    def dense(x):
        return moment_map.boundary_map(x, mask), moment_map.span_max_map(x, mask)

    return {"map_build_cells": cells, "map_build_dense": dense}


# The official generator_layer.conv1d, never called: PyTorch weight [out, in, kernel], bias [out].
UNUSED_OFFICIAL_SHAPES = {
    "generator_layer.conv1d.weight": (512, 1024, 3),
    "generator_layer.conv1d.bias": (512,),
}
UNUSED_OFFICIAL_PARAMS = sum(int(np.prod(shape)) for shape in UNUSED_OFFICIAL_SHAPES.values())


def parameter_counts(model_config) -> dict[str, int]:
    """``num_params`` (our ``params`` collection; BatchNorm statistics are buffers in PyTorch,
    not parameters) and ``num_params_paper`` (plus the official unused ``generator_layer.
    conv1d``, as the paper's Tables 2 and 4 count), from shapes alone (nothing is run)."""
    model = create_model(model_config)
    batch = example_batch(model_config)
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
    variables = jax.eval_shape(lambda: model.init(rngs, batch, train=False))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    return {"num_params": ours, "num_params_paper": ours + UNUSED_OFFICIAL_PARAMS}


FAMILY = Family(
    name="mgpn",
    create_model=create_model,
    variants=VARIANTS,
    task="svmr",
    output="score_map",
    example_batch=example_batch,
    loss_fn=loss_fn,
    decode=decode,
    map_builders=map_builders,
    unused_official_params=UNUSED_OFFICIAL_PARAMS,
)
