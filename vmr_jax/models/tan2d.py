"""2D-TAN: 2D Temporal Adjacent Networks (Zhang et al., AAAI 2020), the official code's model.

A faithful port of microsoft/2D-TAN @ 2f7410f (``lib/models/tan.py`` ``TAN`` and its
``frame_modules``, ``prop_modules/sparse.py``, ``fusion_modules/base_fusion.py``,
``map_modules``, ``loss.py``), checked against shared/golden/tan2d_*.npz.  MGPN and FVMR build
on this proposal map.  Channels-last: maps are ``[B, N, N, ch]``.

Pipeline (official module names in brackets):

1. Frame layer [FrameAvgPool]: ``1x1 Conv1d D->H`` (sown as ``frame_vis_conv``, before the
   ReLU), ReLU, ``AvgPool1d`` with kernel = stride = ``frame_stride`` (TARGET_STRIDE): the
   ``T = N * frame_stride`` input clips become ``N`` map clips.
2. Proposal layer [SparsePropConv / SparsePropMaxPool], ``prop='conv'`` or ``'pool'``, with the
   official ``NUM_SCALE_LAYERS`` (``num_scale_layers``) semantics: scale ``s`` has
   ``num_scale_layers[s]`` layers; its first layer is a width-1 stride-1 layer for ``s = 0``
   (the diagonal) and a width-3 stride-2 layer otherwise; every further layer is width-2
   stride-1.  Layer ``i`` of scale ``s`` fills offset ``j - i`` = ``acc_s + i * 2**s`` for
   starts that are multiples of ``2**s``, where ``acc_0 = 0`` and
   ``acc_{s+1} = acc_s + 2**s * (num_scale_layers[s] + 1)`` (``recover_to_original_map``).
   The conv variant chains ``Conv1d`` layers (so even the diagonal is a learned projection);
   the pool variant chains max-pools, i.e. each cell is the max of its clips, computed in one
   vectorised gather (``ops.moment_map.span_max_cells``, exact).  The mask is the same as
   MGPN's ``valid_cell_mask`` with ``pooling_counts_from_tan2d(num_scale_layers)``.  Layer
   outputs are placed on the dense map with one scatter (no loop over cells).  The official
   code sizes a scale's map as ``floor(L / 2)`` for an input of length ``L`` and fails when
   the stride-2 layer yields another length (``L`` even); every YAML has ``L`` odd.  Here
   every window a layer yields is placed, which is the official placement whenever it runs.
3. Fusion [BaseFusion]: an ``nn.LSTM`` (``lstm_layers``, width ``txt_hidden``, unidirectional
   in every yaml) runs over the zero-padded words without packing; the model keeps the output
   row at index ``sum(mask) - 1`` (the last real word; PyTorch's ``-1`` wraps to the last slot
   for an empty query, whose row is zero after the mask), then ``tex_linear``.  A
   unidirectional LSTM's row at the last real word reads no later slot, so the official
   collate's padding to each batch's longest query and our fixed ``max_query_len`` give the
   same text vector: no padding option is needed (tests/models/test_mgpn_text_padding.py;
   ``bidirectional=True``, in no YAML, would depend on the padding).  The map goes
   through a ``1x1 Conv2d`` (``vis_conv``, on every cell), is multiplied by the text vector,
   L2-normalised over channels (``F.normalize``: ``x / max(||x||, 1e-12)``) and masked.
4. Map layer [MapConv]: ``len(map_hidden)`` Conv2d layers with the yaml's kernels, strides,
   paddings and dilations on the dense map (``lax.conv``).  The first pads by 16, so the map
   grows (16 -> 44 for Charades K5L8) and the later unpadded convs shrink it back to ``N``.
   After every conv: ReLU, then multiplication by ``get_padded_mask_and_weight``'s weight map
   (:func:`padded_mask_and_weight`): ``1 / round(#valid cells of the previous mask inside the
   window)``, 0 where the window holds none; the next mask is where that count is positive.
5. Prediction [pred_layer]: ``1x1 Conv2d`` to one logit per cell, times the proposal mask
   (``outputs['prediction']``, the official ``prediction``).
6. Loss [bce_rescale_loss], :func:`loss_fn`: ``p = sigmoid(prediction) * mask`` (the official
   ``joint_prob``), targets ``scaled_iou(IoU, min_iou, max_iou, bias)`` (``(IoU - MIN)(1 - BIAS)
   / (MAX - MIN)``, ``+ BIAS`` where positive, clipped to [0, 1]), ``F.binary_cross_entropy``
   on the probabilities (logs clamped at -100, its backward ``(p - t) / max(p(1 - p), 1e-12)``,
   :func:`binary_cross_entropy`), times the mask, summed and divided by the number of mask
   cells of the batch.  This differs from MGPN's loss (logits, mean over the valid cells).
   Decoding ranks ``joint_prob`` (:func:`decode`).

Split for timing (FVMR paper, Table 1): ``encode_query(batch) -> [B, H]`` is the text
encoding ("TE": LSTM + ``tex_linear``); ``encode_video(batch) -> (map_h [B, N, N, H],
map_mask [B, N, N])`` is the query-independent video side (frame layer, proposal layer and the
fusion's ``vis_conv``), which a system can precompute per video; ``cross_modal(text_vec, map_h,
map_mask) -> prediction [B, N, N]`` is the cross-modal learning ("CML": Hadamard product and
normalisation, map convs, prediction).  ``__call__`` is exactly these three in sequence; use
them with ``model.apply(variables, ..., method='encode_query')`` etc.

Not ported: ``FrameMaxPool`` (its constructor does not take the config, so the official TAN
cannot build it) and the dense ``PropMaxPool`` (no yaml uses it).  The official training loop
(``moment_localization/train.py``) is: Adam (LR 1e-4, betas 0.9/0.999, no weight decay),
``clip_grad_norm_(10)``, 100 epochs of batch 32; its ``ReduceLROnPlateau`` (factor 0.8,
patience 20, stepped on the val loss only for yamls with a val split) is not reproduced: the
configs in ``configs/tan2d`` keep the LR constant.

Batch inputs: ``video_features [B, T, D]`` with ``T = num_clips * frame_stride`` and either
``query_features [B, L, word_dim]`` (GloVe vectors) or ``query_tokens [B, L]`` with a learned
embedding (``vocab_size > 0``), plus ``query_mask [B, L]`` (a prefix of ones).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vmr_jax.layers.recurrent import StackedRNN
from vmr_jax.models import common
from vmr_jax.models.family import Family
from vmr_jax.models.mgpn import _torch_uniform, l2_normalize
from vmr_jax.ops import moment_map

_K5L8 = dict(
    map_hidden=(512,) * 8,
    map_kernels=(5,) * 8,
    map_strides=(1,) * 8,
    map_paddings=(16,) + (0,) * 7,
    map_dilations=(1,) * 8,
)
_K9L4 = dict(
    map_hidden=(512,) * 4,
    map_kernels=(9,) * 4,
    map_strides=(1,) * 4,
    map_paddings=(16, 0, 0, 0),
    map_dilations=(1,) * 4,
)

# experiments/charades/2D-TAN-16x16-K5L8-conv.yaml
DEFAULTS = dict(
    feature_dim=4096,
    hidden=512,
    num_clips=16,
    frame_stride=16,
    num_scale_layers=(16,),
    prop="conv",
    word_dim=300,
    vocab_size=0,
    txt_hidden=512,
    lstm_layers=3,
    bidirectional=False,
    **_K5L8,
    min_iou=0.5,
    max_iou=1.0,
    bias=0.0,
)

# experiments/tacos/2D-TAN-128x128-K5L8-*.yaml (C3D features)
_TACOS = dict(
    num_clips=128, frame_stride=2, num_scale_layers=(16, 8, 8, 8), min_iou=0.3, max_iou=0.7
)
# experiments/activitynet/2D-TAN-64x64-K9L4-*.yaml (500-d C3D features)
_ACTIVITYNET = dict(
    feature_dim=500, num_clips=64, frame_stride=4, num_scale_layers=(16, 8, 8), **_K9L4
)

VARIANTS: dict[str, dict[str, Any]] = {
    # experiments/charades/2D-TAN-16x16-K5L8-{conv,pool}.yaml (VGG features)
    "charades_conv": dict(DEFAULTS),
    "charades_pool": dict(DEFAULTS, prop="pool"),
    "tacos_conv": dict(DEFAULTS, **_TACOS),
    "tacos_pool": dict(DEFAULTS, **_TACOS, prop="pool"),
    "activitynet_conv": dict(DEFAULTS, **_ACTIVITYNET),
    "activitynet_pool": dict(DEFAULTS, **_ACTIVITYNET, prop="pool"),
    # Small and fast, for tests and the synthetic benchmark: two scales (the official code can
    # run this one: the second scale starts on an odd length), three 3x3 map convs whose first
    # pads by 3 (16 -> 20 -> 18 -> 16, the official grow-then-shrink pattern).
    "tiny": dict(
        DEFAULTS,
        feature_dim=32,
        hidden=16,
        num_clips=16,
        frame_stride=2,
        num_scale_layers=(8, 4),
        word_dim=32,
        txt_hidden=16,
        lstm_layers=1,
        map_hidden=(16, 16, 16),
        map_kernels=(3, 3, 3),
        map_strides=(1, 1, 1),
        map_paddings=(3, 0, 0),
        map_dilations=(1, 1, 1),
    ),
}


# --------------------------------------------------------------------------- geometry
@dataclasses.dataclass(frozen=True)
class PropLayer:
    """One layer of the sparse proposal chain and the cells its outputs fill."""

    scale: int
    index: int  # position inside its scale (official ``layers[scale][index]``)
    kernel: int
    stride: int  # the layer's own stride (2 for the first layer of a scale > 0)
    offset: int  # j - i of the cells it fills
    cell_stride: int  # 2**scale: distance between the starts of its cells
    count: int  # number of cells = length of its output sequence


def proposal_layers(num_clips: int, num_scale_layers: tuple[int, ...]) -> list[PropLayer]:
    """The official sparse proposal chain (``SparsePropConv``/``SparsePropMaxPool``).

    Output ``m`` of a layer covers clips ``[m * cell_stride, m * cell_stride + offset]``; there
    are exactly ``count`` windows inside the ``N`` clips (``recover_to_original_map``).
    Raises ValueError when a layer would fill no cell (too many layers for ``N``).
    """
    layers, acc, cell_stride = [], 0, 1
    for scale, num in enumerate(num_scale_layers):
        if num < 1:
            raise ValueError(f"NUM_SCALE_LAYERS entries must be >= 1, got {list(num_scale_layers)}")
        if scale > 0:
            cell_stride *= 2
        for index in range(num):
            first = index == 0
            kernel = (1 if scale == 0 else 3) if first else 2
            stride = 2 if (first and scale > 0) else 1
            offset = acc + index * cell_stride
            count = max(0, -(-(num_clips - offset) // cell_stride))
            if count == 0:
                raise ValueError(
                    f"NUM_SCALE_LAYERS {list(num_scale_layers)} needs more than {num_clips} "
                    f"clips: layer {index} of scale {scale} spans {offset + 1} clips"
                )
            layers.append(PropLayer(scale, index, kernel, stride, offset, cell_stride, count))
        acc += cell_stride * (num + 1)
    return layers


def proposal_cells(layers: list[PropLayer]) -> tuple[np.ndarray, np.ndarray]:
    """Start and end clip of every output of the chain, layer by layer: ``([C], [C])``."""
    starts = np.concatenate([np.arange(p.count) * p.cell_stride for p in layers])
    ends = np.concatenate([np.arange(p.count) * p.cell_stride + p.offset for p in layers])
    return starts.astype(np.int32), ends.astype(np.int32)


def proposal_mask(num_clips: int, num_scale_layers: tuple[int, ...]) -> np.ndarray:
    """Valid-cell mask ``[N, N]`` bool of the official ``map_mask``."""
    counts = moment_map.pooling_counts_from_tan2d(num_scale_layers)
    return moment_map.valid_cell_mask(num_clips, counts)


def padded_mask_and_weight(
    mask: jnp.ndarray, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The official ``get_padded_mask_and_weight`` for one map conv.

    Args:
      mask: ``[B, N, N]`` 0/1 valid cells of the conv's input.
      kernel, stride, padding, dilation: the conv's geometry.
    Returns: ``(next_mask, weight)``, both ``[B, N', N']`` float32 with ``N'`` the conv's output
      size: ``count`` = rounded number of valid input cells in each window, ``weight = 1 /
      count`` (0 where ``count == 0``) and ``next_mask = count > 0``.
    """
    ones = jnp.ones((kernel, kernel, 1, 1), jnp.float32)
    counts = jax.lax.conv_general_dilated(
        jnp.asarray(mask, jnp.float32)[..., None],
        ones,
        window_strides=(stride, stride),
        padding=[(padding, padding), (padding, padding)],
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,  # exact small integers on every backend
    )[..., 0]
    counts = jnp.round(counts)
    positive = counts > 0
    weight = jnp.where(positive, 1.0 / jnp.where(positive, counts, 1.0), 0.0)
    return positive.astype(jnp.float32), weight


# --------------------------------------------------------------------------- model
def _dense(features: int, fan_in: int) -> nn.Dense:
    init = _torch_uniform(fan_in)
    return nn.Dense(features, kernel_init=init, bias_init=init)


class TAN2D(nn.Module):
    """2D-TAN score map.  Fields and the official YAML values they hold:

    ``feature_dim`` FRAME_MODULE.INPUT_SIZE; ``hidden`` the HIDDEN_SIZE of FRAME_MODULE,
    PROP_MODULE and FUSION_MODULE (= MAP_MODULE.INPUT_SIZE); ``num_clips`` NUM_SAMPLE_CLIPS /
    TARGET_STRIDE; ``frame_stride`` TARGET_STRIDE (= FRAME_MODULE KERNEL_SIZE = STRIDE);
    ``num_scale_layers`` PROP_MODULE.NUM_SCALE_LAYERS; ``prop`` 'conv' (SparsePropConv) or
    'pool' (SparsePropMaxPool); ``word_dim`` TXT_INPUT_SIZE; ``txt_hidden`` TXT_HIDDEN_SIZE;
    ``lstm_layers``/``bidirectional`` FUSION_MODULE.LSTM; ``map_hidden``/``map_kernels``/
    ``map_strides``/``map_paddings``/``map_dilations`` MAP_MODULE HIDDEN_SIZES, KERNEL_SIZES,
    STRIDES, PADDINGS, DILATIONS (PRED_INPUT_SIZE = the last width); ``min_iou``/``max_iou``/
    ``bias`` LOSS.PARAMS.  ``vocab_size > 0`` adds a learned word embedding (not official).
    """

    feature_dim: int = 4096
    hidden: int = 512
    num_clips: int = 16
    frame_stride: int = 16
    num_scale_layers: tuple[int, ...] = (16,)
    prop: str = "conv"
    word_dim: int = 300
    vocab_size: int = 0
    txt_hidden: int = 512
    lstm_layers: int = 3
    bidirectional: bool = False
    map_hidden: tuple[int, ...] = (512,) * 8
    map_kernels: tuple[int, ...] = (5,) * 8
    map_strides: tuple[int, ...] = (1,) * 8
    map_paddings: tuple[int, ...] = (16,) + (0,) * 7
    map_dilations: tuple[int, ...] = (1,) * 8
    min_iou: float = 0.5
    max_iou: float = 1.0
    bias: float = 0.0

    def setup(self):
        h = self.hidden
        self.prop_geometry = proposal_layers(self.num_clips, tuple(self.num_scale_layers))
        self.frame_conv = _dense(h, self.feature_dim)
        if self.prop == "conv":
            self.prop_convs = [
                nn.Conv(
                    h,
                    (p.kernel,),
                    strides=(p.stride,),
                    padding="VALID",
                    kernel_init=_torch_uniform(h * p.kernel),
                    bias_init=_torch_uniform(h * p.kernel),
                )
                for p in self.prop_geometry
            ]
        elif self.prop != "pool":
            raise ValueError(f"prop must be 'conv' (SparsePropConv) or 'pool', got {self.prop!r}")
        if self.vocab_size > 0:
            self.word_embed = nn.Embed(self.vocab_size, self.word_dim)
        dirs = 2 if self.bidirectional else 1
        self.textual_encoder = StackedRNN(
            self.txt_hidden // dirs, self.lstm_layers, "lstm", self.bidirectional
        )
        self.tex_linear = _dense(h, self.txt_hidden)
        self.vis_conv = _dense(h, h)
        geometry = (
            self.map_hidden,
            self.map_kernels,
            self.map_strides,
            self.map_paddings,
            self.map_dilations,
        )
        if len({len(g) for g in geometry}) != 1:
            raise ValueError(f"map conv fields must have equal lengths, got {geometry}")
        channels = (h,) + tuple(self.map_hidden)
        self.map_convs = [
            nn.Conv(
                channels[k + 1],
                (ks, ks),
                strides=(s, s),
                padding=[(p, p), (p, p)],
                kernel_dilation=(d, d),
                kernel_init=_torch_uniform(channels[k] * ks * ks),
                bias_init=_torch_uniform(channels[k] * ks * ks),
            )
            for k, (ks, s, p, d) in enumerate(zip(*geometry[1:]))
        ]
        self.pred = _dense(1, channels[-1])

    def cells(self) -> np.ndarray:
        """The proposal mask ``[N, N]`` bool (static; callable outside ``apply``)."""
        return proposal_mask(self.num_clips, tuple(self.num_scale_layers))

    def encode_query(self, batch: dict[str, jnp.ndarray]) -> jnp.ndarray:
        """Text vector ``[B, H]`` ("TE"): LSTM over the padded words, last real word's row,
        ``tex_linear``."""
        embed = self.word_embed if self.vocab_size > 0 else None
        words, mask, _ = common.query_inputs(batch, embed)  # mask [B, L]
        out, (h_n, c_n) = self.textual_encoder(words)
        self.sow("intermediates", "lstm_output", out)
        self.sow("intermediates", "lstm_h_n", h_n)
        self.sow("intermediates", "lstm_c_n", c_n)
        out = out * mask[..., None]
        length = out.shape[1]
        last = (jnp.sum(mask, axis=1).astype(jnp.int32) - 1) % length  # -1 wraps, as in torch
        text = jnp.take_along_axis(out, last[:, None, None], axis=1)[:, 0]
        text = self.tex_linear(text)
        self.sow("intermediates", "text_vector", text)
        return text

    def encode_video(self, batch: dict[str, jnp.ndarray]) -> tuple[jnp.ndarray, jnp.ndarray]:
        """``(map_h [B, N, N, H], map_mask [B, N, N])``: frame layer, proposal layer and the
        fusion's ``vis_conv`` (query independent)."""
        n, h = self.num_clips, self.hidden
        video = batch["video_features"].astype(jnp.float32)
        b, t, _ = video.shape
        if t != n * self.frame_stride:
            raise ValueError(
                f"video_features has {t} clips; 2D-TAN with num_clips={n} and "
                f"frame_stride={self.frame_stride} needs {n * self.frame_stride}"
            )
        frame = self.frame_conv(video)
        self.sow("intermediates", "frame_vis_conv", frame)
        frame = jax.nn.relu(frame).reshape(b, n, self.frame_stride, h).mean(axis=2)
        self.sow("intermediates", "frame_layer", frame)

        starts, ends = proposal_cells(self.prop_geometry)
        if self.prop == "conv":
            outs, x = [], frame
            for layer, conv in zip(self.prop_geometry, self.prop_convs):
                x = conv(x)
                if x.shape[1] != layer.count:  # the official placement assumes this
                    raise AssertionError(f"{layer}: output length {x.shape[1]}")
                outs.append(x)
            values = jnp.concatenate(outs, axis=1)  # [B, C, H]
        else:
            values = moment_map.span_max_cells(frame, starts, ends)
        map_h = moment_map.scatter_cells(values, starts, ends, n)
        self.sow("intermediates", "prop_map_h", map_h)
        mask = jnp.broadcast_to(jnp.asarray(self.cells(), jnp.float32), (b, n, n))
        map_h = self.vis_conv(map_h)
        self.sow("intermediates", "fusion_vis_conv", map_h)
        return map_h, mask

    def cross_modal(
        self, text: jnp.ndarray, map_h: jnp.ndarray, map_mask: jnp.ndarray
    ) -> jnp.ndarray:
        """Prediction ``[B, N, N]`` (masked logits; "CML") from ``text [B, H]`` and the
        video side ``map_h [B, N, N, H]``, ``map_mask [B, N, N]``.  The batch axes broadcast:
        one video (``[1, N, N, H]``, ``[1, N, N]``) against ``B`` queries works as is."""
        fused = l2_normalize(text[:, None, None, :] * map_h, axis=-1) * map_mask[..., None]
        self.sow("intermediates", "fusion", fused)
        x, mask = fused, map_mask
        for k, conv in enumerate(self.map_convs):
            y = conv(x)
            self.sow("intermediates", f"map_conv_{k}", y)
            mask, weight = padded_mask_and_weight(
                mask,
                self.map_kernels[k],
                self.map_strides[k],
                self.map_paddings[k],
                self.map_dilations[k],
            )
            x = jax.nn.relu(y) * weight[..., None]
        self.sow("intermediates", "map_layer", x)
        if x.shape[1:3] != map_mask.shape[1:]:
            raise ValueError(
                f"the map convs turn the {map_mask.shape[1]}x{map_mask.shape[2]} map into "
                f"{x.shape[1]}x{x.shape[2]}; check map_kernels/paddings/strides"
            )
        logits = self.pred(x)[..., 0]
        self.sow("intermediates", "pred_layer", logits)
        return logits * map_mask

    def __call__(self, batch: dict[str, jnp.ndarray], *, train: bool) -> dict[str, jnp.ndarray]:
        del train  # 2D-TAN has no dropout or normalisation statistics
        text = self.encode_query(batch)
        map_h, map_mask = self.encode_video(batch)
        return {"prediction": self.cross_modal(text, map_h, map_mask)}


def create_model(model_config) -> TAN2D:
    """``TAN2D`` from ``config.model`` (fields of a ``VARIANTS`` entry; ``name`` ignored)."""
    fields = {k: v for k, v in dict(model_config).items() if k in TAN2D.__dataclass_fields__}
    for key, value in fields.items():
        if isinstance(value, list):
            fields[key] = tuple(value)
    return TAN2D(**fields)


# --------------------------------------------------------------------------- loss, decoding
@jax.custom_vjp
def binary_cross_entropy(probs: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """PyTorch ``F.binary_cross_entropy(probs, targets, reduction='none')``, element-wise.

    ``-(t * max(log p, -100) + (1 - t) * max(log(1 - p), -100))``; the gradient is PyTorch's
    ``(p - t) / max(p (1 - p), 1e-12)``, finite at ``p = 0`` and ``p = 1``.
    """
    log_p = jnp.maximum(jnp.log(probs), -100.0)
    log_q = jnp.maximum(jnp.log1p(-probs), -100.0)
    return -(targets * log_p + (1.0 - targets) * log_q)


def _bce_fwd(probs, targets):
    return binary_cross_entropy(probs, targets), (probs, targets)


def _bce_bwd(res, g):
    probs, targets = res
    grad_p = g * (probs - targets) / jnp.maximum((1.0 - probs) * probs, 1e-12)
    grad_t = g * (jnp.maximum(jnp.log1p(-probs), -100.0) - jnp.maximum(jnp.log(probs), -100.0))
    return grad_p, grad_t


binary_cross_entropy.defvjp(_bce_fwd, _bce_bwd)


def iou_targets(model_config, batch: dict[str, jnp.ndarray]) -> jnp.ndarray:
    """Rescaled IoU targets ``[B, N, N]`` of the first ground-truth span (the official
    ``map_gt`` through ``bce_rescale_loss``'s rescaling)."""
    n = int(model_config.num_clips)
    iou = moment_map.iou_target_map(n, batch["spans"][:, 0], batch["duration"])
    return moment_map.scaled_iou(
        iou,
        float(model_config.min_iou),
        float(model_config.max_iou),
        float(model_config.get("bias", 0.0)),
    )


def _mask(model_config) -> np.ndarray:
    return proposal_mask(int(model_config.num_clips), tuple(model_config.num_scale_layers))


def loss_fn(
    outputs, batch, model_config, *, step=None, steps_per_epoch=None
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Official ``bce_rescale_loss``: BCE on ``sigmoid(prediction) * mask``, times the mask,
    summed over the batch and divided by its number of mask cells (examples with
    ``valid == 0`` contribute nothing)."""
    del step, steps_per_epoch  # no epoch schedule in this loss
    mask = jnp.asarray(_mask(model_config), jnp.float32)
    probs = jax.nn.sigmoid(outputs["prediction"]) * mask
    per_cell = binary_cross_entropy(probs, iou_targets(model_config, batch)) * mask
    weight = batch.get("valid", jnp.ones(probs.shape[:1], jnp.float32))
    total = jnp.sum(per_cell * weight[:, None, None])
    loss = total / jnp.maximum(jnp.sum(weight) * jnp.sum(mask), 1.0)
    return loss, {"bce_rescale_loss": loss}


def decode(outputs, batch, model_config) -> dict[str, Any]:
    """Ranking scores: the official ``joint_prob = sigmoid(prediction) * mask``."""
    del batch
    mask = jnp.asarray(_mask(model_config), jnp.float32)
    return {
        "score_map": jax.nn.sigmoid(outputs["prediction"]) * mask,
        "num_clips": int(model_config.num_clips),
    }


def example_batch(model_config, batch_size: int = 1, query_len: int = 10) -> dict[str, np.ndarray]:
    """Zeros with the shapes and dtypes 2D-TAN reads (initialisation, benchmarks)."""
    return common.example_batch(model_config, batch_size, query_len)


FAMILY = Family(
    name="tan2d",
    create_model=create_model,
    variants=VARIANTS,
    task="svmr",
    output="score_map",
    example_batch=example_batch,
    loss_fn=loss_fn,
    decode=decode,
)
