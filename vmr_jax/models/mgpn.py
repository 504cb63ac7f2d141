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

BatchNorm under data parallelism (``bn_groups``): the official runs wrap the model in
``nn.DataParallel`` on 4 GPUs (``run_*.sh``: ``CUDA_VISIBLE_DEVICES=0,1,2,3``; paper section
4.2: 4 RTX 2080Ti), so each GPU normalises its ``torch.chunk`` of the batch (16 examples of the
YAML's 64, 8 of 32 on TACoS and Charades VGG) with its own statistics, and the running
statistics are updated from the first chunk only (``layers.batch_norm`` gives the rule and
where PyTorch's source makes it).  ``bn_groups = G`` does exactly this on chunks cut from the
global batch, whatever devices this run has (1 device reproduces the 4-GPU run; 8 devices give
the numbers of 1); ``bn_groups = 1`` is statistics over the whole global batch
(SyncBatchNorm).  Default: 4 in the ``VARIANTS`` of the official YAMLs (and so in
``configs/mgpn/*`` benchmark runs), 1 in ``tiny`` (the synthetic benchmark and tests) and in
the ``MGPN`` class itself.  "One chunk per actual device" is not offered: it would make
results depend on the device count; set ``bn_groups`` to that count instead.

Query padding (``text_padding``).  The official collate (``lib/datasets/__init__.py``,
``pad_sequence``) pads each batch's words to its longest query ``L_b``, and the text path reads
every slot up to ``L_b`` (steps 1, 2 and 5 above: the word GRU without packing, so the reverse
direction starts on zero rows; the softmax over word slots; ``F.normalize`` over the word axis;
the max over word slots), so a query's outputs depend on the other queries of its batch.
Our batches have the static length ``L = max_query_len``.  ``text_padding='batch'`` (default of
the official ``VARIANTS`` and so of ``configs/mgpn/*`` and converted checkpoints) keeps the
static shape and computes ``L_b = max(sum(query_mask))`` over the global batch inside the
jitted step (a reduction over the sharded batch axis, so any device count gives the official
batch's ``L_b``); slots ``>= L_b`` are absent everywhere the code iterates over slots: both
GRU directions run over ``L_b`` steps (the reverse one starts at slot ``L_b - 1``; padded slots
below ``L_b`` are read as the official code reads them), the word softmax and the word max skip
them, and their ``txt_encoded`` rows are zero (so the normalisation over words and the
zero-padded n-gram convs see what the official ``L_b``-slot tensors give).  ``'fixed'``
(``tiny``, the synthetic benchmark, and the class default) reads all ``L`` slots, the
behaviour before this option.

Ablations (paper section 4.5; modules in ``mgpn_variants``, whose docstring has the details
and the official sources).  Defaults are the full model above, unchanged.
``encoder`` (Table 4): ``'bigru'``, ``'bilstm'`` (``nn.LSTM`` in place of both GRUs, same
widths and depth, the word one over the same slots) or ``'transformer'``.  ``map_generator``
(Figure 4): ``'both'``, or ``'content'`` / ``'boundary'``, where the one map stands for both
``A_B`` and ``A_C`` everywhere they are read (gates of eq. 7-8 and the concat of eq. 9), so
the parameter tree is the full model's.  Table 3's switches: ``finegrained=False`` leaves
out step 4 (its readers take ``vis_fused`` and ``txt_fused``); ``conditioned_interaction=
False`` replaces step 5 by ``Ā = Concat(A_B, A_C)`` (the official ``mgpn.py``'s commented-out
line), the maps then built from ``vis_finegrained`` when step 4 is on (the other commented-out
line, ``generator_layer(vis_finegrained)``: in model 2 the fine-grained video features reach
the maps; the query branch of step 4 is built but has no reader, as in that code);
``comparison='none'`` leaves out step 6 and the ranker reads ``Ā`` (2H channels).
``comparison`` (Figure 5): ``'conv'`` (step 6), ``'stacked_conv'`` (SC), ``'graph_attention'``
(GA) or ``'non_local'`` (NL) on eq. 9's ``Â`` in place of the four conv blocks.

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

from vmr_jax.layers.batch_norm import MapBatchNorm, chunk_moments
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
    bn_groups=4,  # BatchNorm statistics per 1/4 of the batch: DataParallel on 4 GPUs (run_*.sh)
    text_padding="batch",  # words padded to the batch's longest query, as the official collate
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
        bn_groups=1,
        text_padding="fixed",
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


class MapConvBlock(nn.Module):
    """7x7 grouped conv + BatchNorm + ReLU on the valid cells (``[B, C, ch] -> [B, C, ch']``).

    Train-mode BatchNorm statistics follow PyTorch: over all ``B * N * N`` conv outputs of the
    dense map, masked-out cells included (the mask is applied after the block).  With
    ``bn_stats='dense'`` these are computed exactly: the conv is evaluated on every cell whose
    7x7 window touches a valid cell (``reachable_cells``), and every other cell equals the
    bias, added in closed form.  ``bn_stats='valid'`` takes statistics over the valid cells
    only (cheaper, a deviation from the official code).  Both are taken per chunk of
    ``bn_groups`` (``layers.batch_norm``: DataParallel's split).  Eval mode needs the valid
    cells only.
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
    bn_groups: int = 1

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
                    stats = chunk_moments(y_dense.reshape(y.shape[0], n * n, -1), self.bn_groups)
                else:
                    stats = chunk_moments(y, self.bn_groups)
        elif self.mode == "sparse":
            if train and self.bn_stats == "dense":
                reach = reachable_cells(self.starts, self.ends, n, self.kernel, pad)
                y_reach = (
                    sparse_group_conv(x, kernel, valid, reach, n, pad, self.groups, self.chunk)
                    + bias
                )
                rest = n * n - len(reach[0])  # cells of an example that see only zeros: y = bias
                stats = chunk_moments(
                    y_reach, self.bn_groups, constant_positions=rest, constant=bias
                )
                y = jnp.take(y_reach, _positions(reach, valid, n), axis=1)
            else:
                y = sparse_group_conv(x, kernel, valid, valid, n, pad, self.groups, self.chunk)
                y = y + bias
                if train:
                    stats = chunk_moments(y, self.bn_groups)
        else:
            raise ValueError(f"map_conv must be 'sparse' or 'dense', got {self.mode!r}")
        y = jax.nn.relu(MapBatchNorm(self.bn_groups, name="bn")(y, stats, train=train))
        self.sow("intermediates", "output", y)
        return y


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
    text_padding: str = "fixed"
    bn_groups: int = 1
    # Ablations (module docstring, ``mgpn_variants``).
    encoder: str = "bigru"
    map_generator: str = "both"
    finegrained: bool = True
    conditioned_interaction: bool = True
    comparison: str = "conv"
    transformer_heads: int = 8
    sc_layers: int = 4
    sc_kernel: int = 5
    relation_blocks: int = 2  # GA and NL blocks: the YAMLs' CHOICE_COMPARISON_MODULE.BLOCK_NUM

    def _word_slots(self, word_mask: jnp.ndarray):
        """``(slots [1, L, 1] bool, lengths [B] int32 | None)``: the word slots the official
        batch has -- all ``L`` under ``text_padding='fixed'`` (lengths None: the GRU reads
        every slot), the first ``L_b = max_b sum(query_mask)`` under ``'batch'`` (lengths
        ``L_b`` for every row: both GRU directions stop at ``L_b``)."""
        num_slots = word_mask.shape[1]
        if self.text_padding == "fixed":
            return jnp.ones((1, num_slots, 1), bool), None
        if self.text_padding != "batch":
            raise ValueError(f"text_padding must be 'batch' or 'fixed', got {self.text_padding!r}")
        longest = jnp.max(jnp.sum(word_mask[..., 0] > 0, axis=1)).astype(jnp.int32)
        slots = (jnp.arange(num_slots) < longest)[None, :, None]
        return slots, jnp.full((word_mask.shape[0],), longest, jnp.int32)

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        return moment_map.valid_cells(self.num_clips, tuple(self.pooling_counts))

    @nn.compact
    def __call__(self, batch: dict[str, jnp.ndarray], *, train: bool) -> dict[str, jnp.ndarray]:
        h = self.hidden
        n = self.num_clips
        starts, ends = self.cells()
        deterministic = not train
        variants = _variants()
        variants.check_fields(self)

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
        # Word slots the official batch holds (module docstring, "Query padding").
        slots, slot_lengths = self._word_slots(word_mask)  # [1, L, 1], [B] or None

        if self.encoder == "bigru":
            vis_out, vis_hn = StackedRNN(h // 2, self.gru_layers, "gru", True, name="vis_gru")(
                frame
            )
            txt_out, txt_hn = StackedRNN(h // 2, self.gru_layers, "gru", True, name="txt_gru")(
                words, slot_lengths
            )
            self.sow("intermediates", "vis_gru_output", vis_out)
            self.sow("intermediates", "vis_gru_h_n", vis_hn)
            self.sow("intermediates", "txt_gru_output", txt_out)
            self.sow("intermediates", "txt_gru_h_n", txt_hn)
        else:  # Table 4's Bi-LSTM / Transformer
            vis_out, txt_out = variants.encode_sequences(
                self, frame, words, word_mask[..., 0], slot_lengths, deterministic=deterministic
            )
        vis_enc = vis_out  # [B, N, H]
        txt_enc = txt_out * word_mask  # [B, L, H]
        self.sow("intermediates", "txt_encoded", txt_enc)

        # 2. Co-attention first fuse (eq. 2).
        word_logits = _dense(1, h, "word_attention")(txt_enc)
        word_att = jax.nn.softmax(jnp.where(slots, word_logits, -jnp.inf), axis=1)
        query_vec = jnp.sum(word_att * txt_enc, axis=1)  # [B, H]
        vis_fused = l2_normalize(query_vec[:, None, :] * vis_enc, axis=-1)
        clip_att = jax.nn.softmax(_dense(1, h, "clip_attention")(vis_enc), axis=1)
        video_vec = jnp.sum(clip_att * vis_enc, axis=1)  # [B, H]
        txt_fused = l2_normalize(video_vec[:, None, :] * txt_enc, axis=1)  # over words
        self.sow("intermediates", "vis_fused", vis_fused)
        self.sow("intermediates", "txt_fused", txt_fused)

        # 3. Choice generator on valid cells (eq. 3-4).
        def choice_maps(clips):  # (boundary, content) [B, C, H]; Figure 4: one map for both
            boundary = moment_map.boundary_cells(clips, starts, ends)
            content = moment_map.span_max_cells(clips, starts, ends)
            one = {"both": None, "content": content, "boundary": boundary}[self.map_generator]
            return (boundary, content) if one is None else (one, one)

        boundary, content = choice_maps(vis_fused)
        self.sow("intermediates", "boundary_cells", boundary)
        self.sow("intermediates", "content_cells", content)

        # 4. Fine-grained encoder (eq. 5-6); Table 3's models 1 and 4 leave it out.
        txt_fine, vis_fine = txt_fused, vis_fused
        if self.finegrained:
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
        if self.conditioned_interaction:
            txt_max = jnp.max(jnp.where(slots, txt_fine, -jnp.inf), axis=1)
            f_s = _dense(h, h, "text_gate")(txt_max)[:, None, :]
            f_v = _dense(h, h, "video_gate")(jnp.mean(vis_fine, axis=1))[:, None, :]
            gated = [jax.nn.sigmoid(boundary * f) * content for f in (f_s, f_v)]
            fused = jnp.concatenate(gated, axis=-1)  # [B, C, 2H]
        else:  # Table 3's models 1, 2 and 4 (module docstring)
            if self.finegrained:
                boundary, content = choice_maps(vis_fine)
            fused = jnp.concatenate([boundary, content], axis=-1)
        self.sow("intermediates", "fused_cells", fused)

        # 6. Choice comparison (eq. 9).
        x = fused  # Table 3's models 1-3 (comparison 'none') rank it as it is
        if self.comparison != "none":
            stacked = jnp.concatenate([fused, boundary, content], axis=-1)
            x = jax.nn.relu(_dense(2 * h, 4 * h, "fuse_conv")(stacked)) + fused
        widths = (2 * h, h, h, h) if self.comparison == "conv" else ()
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
                self.bn_groups,
                name=f"conv_block{k + 1}",
            )(x, train=train)
        if self.comparison not in ("conv", "none"):  # Figure 5's SC, GA, NL
            x = variants.compare(self, x, starts, ends, train=train)
        self.sow("intermediates", "relation_cells", x)

        # 7. Ranker (eq. 10, sigmoid left to the loss and decoding).
        logits = _dense(1, x.shape[-1], "pred")(x)[..., 0]  # [B, C]
        return {
            "cell_logits": logits,
            "score_map": moment_map.scatter_cells(logits, starts, ends, n),
        }


def _variants():
    """``mgpn_variants``, imported on use: it builds on this module."""
    from vmr_jax.models import mgpn_variants

    return mgpn_variants


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
