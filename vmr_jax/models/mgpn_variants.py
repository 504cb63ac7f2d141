"""MGPN's ablation modules (paper section 4.5): Table 4's encoders, Figure 5's comparisons.

``MGPN`` (``vmr_jax/models/mgpn.py``) picks them with its fields ``encoder``,
``map_generator``, ``comparison``, ``finegrained`` and ``conditioned_interaction``
(:data:`ENCODERS`, :data:`MAP_GENERATORS`, :data:`COMPARISONS`); the defaults are the
paper's full model, whose code path is unchanged.  Modules (official sources in brackets,
Huntersxsx/MGPN @ 0368009 unless named; read, not copied):

* :class:`TransformerBlock` [``feature_encoder/transformer_enc.py`` ``TransformerBlock``, a
  BERT-pytorch block]: pre-norm sublayers ``x + Dropout(sublayer(LN(x)))`` with the code's
  LayerNorm (unbiased std, ``eps`` 1e-6 added to the std: ``mgpn.UnbiasedLayerNorm``),
  multi-head self-attention (three ``d x d`` Linears, scores ``q k^T / sqrt(d_k)``, masked
  keys set to -1e9, softmax, dropout 0.1 on the probabilities, an output Linear), then the
  feed-forward ``W2 Dropout(GELU_tanh(W1 x))`` and a final Dropout of the block's output.
* :class:`TransformerEncoder`: the hook-up, which the official code does not have (it
  imports ``TransformerBlock`` but never builds it; the paper says only "we replace the
  Bi-GRU in our coarse-grained encoder with a Transformer block").  Our choice: a Linear to
  ``H`` when the input is wider (the words, ``word_dim`` -> ``H``), the file's sinusoidal
  ``PositionalEmbedding`` added, then ``gru_layers`` blocks (the depth of the Bi-GRU it
  replaces) with ``transformer_heads`` heads and a ``4 H`` feed-forward (BERT-pytorch's
  "usually 4*hidden_size"); the text side masks padded words as keys.  ActivityNet: 7.14M
  parameters counted the paper's way (``mgpn.parameter_counts``) against Table 4's 16.91M,
  so the paper's Transformer was larger in some way the paper and code do not record (the
  Bi-LSTM row matches: 5.53M here and in Table 4).
* :class:`StackedMapConv` (Figure 5 "SC") [``relation_constructor/proposal_relation.py``
  ``MapConv``, 2D-TAN's map convs]: ``Conv2d -> ReLU -> * weight`` per layer, ``weight = 1 /
  #valid cells of the previous mask in the window`` (``tan2d.padded_mask_and_weight``).  Sizes
  are not in any MGPN YAML: RaNet's ``experiments/tacos/dot+gat.yaml`` (the GA source, same
  authors) has the commented alternative ``HIDDEN_SIZES [512]*4, KERNEL_SIZES [5]*4,
  PADDINGS [8, 0, 0, 0]``; we use ``sc_layers`` layers of width ``2H`` (512 for MGPN256),
  kernel ``sc_kernel`` and first padding ``sc_layers * (sc_kernel - 1) / 2``, then 0 (the map
  keeps its size), which gives TACoS 32.03M parameters, 4.84x MGPN256's 6.62M (the paper:
  "4.8x smaller than SC").
* :class:`GraphAttentionModule` (Figure 5 "GA") [RaNet ``GATModule``/``GATBlock`` and
  ``graph_attention.py`` ``GraphAttention`` with its CUDA kernels ``ca_weight``/``ca_map``]:
  per block ``conva`` (3x3 conv to ``H / 4``, no bias, ReLU), ``loop_num`` times the same
  criss-cross attention (each cell attends to the cells of its row and of its column, itself
  once: ``N + N - 1`` keys; 1x1 query/key convs to ``C / 8``, value conv to ``C``, softmax
  over the keys, ``gamma * out + x`` with ``gamma`` initialised to 0), ``convb`` (3x3 conv,
  no bias, ReLU), ``convc`` (3x3 conv of ``[x, out]`` to ``H``, no bias, ReLU) times the mask.
  MGPN's YAMLs keep RaNet's ``INTER_PROP 4, BLOCK_NUM 2, LOOP_NUM 2`` under
  ``CHOICE_COMPARISON_MODULE`` with ``INPUT_SIZE = OUTPUT_SIZE = H``; as for NL, the ``2H``
  fused map first goes through a 1x1 conv to ``H`` (``NoNLocalModule.conv_layer2``: our
  choice, the paper and code do not say how GA was attached).
* :class:`NonLocalModule` (Figure 5 "NL") [``proposal_relation.py`` ``NoNLocalModule`` and
  ``non_local.py`` ``NONLocalBlock2D(sub_sample=True, bn_layer=True)``]: 1x1 conv ``2H -> H``
  times the mask, then ``nl_blocks`` (YAML ``BLOCK_NUM`` 2) non-local blocks on the dense map:
  ``theta``, ``phi``, ``g`` 1x1 convs to ``H / 2``, ``phi`` and ``g`` max-pooled 2x2, softmax
  over the pooled cells of ``theta phi^T``, ``W`` = 1x1 conv + BatchNorm2d with zero-initialised
  scale and shift, plus the input.  The official module hard-codes 256 channels (we use ``H``)
  and calls each block with the map mask, which ``forward(self, x)`` does not accept (it
  raises); we call it without, so masked-out cells take part as zeros, as in the block.

Comparison modules read the map of ``[B, C, ch]`` valid cells scattered on the dense ``N x
N`` map (zeros elsewhere) and return it gathered back; Figure 4's map generators and Table 3's
switches are plain branches in ``MGPN.__call__`` (documented there).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vmr_jax.layers.batch_norm import chunk_moments, chunk_sizes
from vmr_jax.layers.recurrent import StackedRNN
from vmr_jax.models import mgpn as base
from vmr_jax.models.tan2d import padded_mask_and_weight
from vmr_jax.ops import moment_map

ENCODERS = ("bigru", "bilstm", "transformer")  # Table 4
MAP_GENERATORS = ("both", "content", "boundary")  # Figure 4
COMPARISONS = ("conv", "stacked_conv", "graph_attention", "non_local", "none")  # Fig. 5, Tab. 3
_NEG = -1e9  # the official masked score


def check_fields(model: Any) -> None:
    """ValueError naming the field when an ablation field of ``model`` is not a known value."""
    for field, allowed in (
        ("encoder", ENCODERS),
        ("map_generator", MAP_GENERATORS),
        ("comparison", COMPARISONS),
    ):
        value = getattr(model, field)
        if value not in allowed:
            raise ValueError(f"MGPN.{field} must be one of {allowed}, got {value!r}")


def _conv(features: int, kernel: int, fan_in: int, name: str, padding: int = 0, bias=True):
    """PyTorch-initialised ``nn.Conv2d`` on channels-last maps."""
    init = base._torch_uniform(fan_in)
    return nn.Conv(
        features,
        (kernel, kernel),
        padding=[(padding, padding), (padding, padding)],
        use_bias=bias,
        kernel_init=init,
        bias_init=init,
        name=name,
    )


# --------------------------------------------------------------------------- encoders
def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
    """``[length, dim]``: ``sin(p w_k)`` at even and ``cos(p w_k)`` at odd channels,
    ``w_k = 10000^(-2k / dim)`` (the official ``PositionalEmbedding``)."""
    pos = np.arange(length, dtype=np.float64)[:, None]
    freq = np.exp(np.arange(0, dim, 2, dtype=np.float64) * -(math.log(10000.0) / dim))
    table = np.zeros((length, dim))
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq)[:, : dim // 2]
    return table.astype(np.float32)


class SelfAttention(nn.Module):
    """Multi-head self-attention ``[B, L, d] -> [B, L, d]``; ``mask [B, L]`` masks keys."""

    heads: int
    dropout: float

    @nn.compact
    def __call__(self, x, mask, *, deterministic: bool):
        b, length, d = x.shape
        if d % self.heads:
            raise ValueError(f"transformer width {d} is not divisible by {self.heads} heads")
        dk = d // self.heads
        q, k, v = (
            base._dense(d, d, name)(x).reshape(b, length, self.heads, dk)
            for name in ("query", "key", "value")
        )
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dk)
        if mask is not None:
            scores = jnp.where(mask[:, None, None, :] > 0, scores, _NEG)
        probs = nn.Dropout(self.dropout)(jax.nn.softmax(scores, -1), deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, length, d)
        return base._dense(d, d, "output")(out)


class TransformerBlock(nn.Module):
    """The official ``TransformerBlock`` (module docstring): ``[B, L, d] -> [B, L, d]``."""

    heads: int
    ff: int
    dropout: float

    @nn.compact
    def __call__(self, x, mask, *, deterministic: bool):
        d = x.shape[-1]
        drop = nn.Dropout(self.dropout)
        att = SelfAttention(self.heads, self.dropout, name="attention")
        y = att(base.UnbiasedLayerNorm(name="input_norm")(x), mask, deterministic=deterministic)
        x = x + drop(y, deterministic=deterministic)
        y = base.UnbiasedLayerNorm(name="output_norm")(x)
        y = jax.nn.gelu(base._dense(self.ff, d, "ffn_1")(y), approximate=True)
        y = base._dense(d, self.ff, "ffn_2")(drop(y, deterministic=deterministic))
        x = x + drop(y, deterministic=deterministic)
        return drop(x, deterministic=deterministic)


class TransformerEncoder(nn.Module):
    """Table 4's "Transformer block" encoder: ``[B, L, D] -> [B, L, hidden]`` (docstring)."""

    hidden: int
    layers: int
    heads: int
    dropout: float

    @nn.compact
    def __call__(self, x, mask, *, deterministic: bool):
        if x.shape[-1] != self.hidden:
            x = base._dense(self.hidden, x.shape[-1], "input_proj")(x)
        x = x + sinusoidal_positions(x.shape[1], self.hidden)
        for k in range(self.layers):
            block = TransformerBlock(self.heads, 4 * self.hidden, self.dropout, name=f"block{k}")
            x = block(x, mask, deterministic=deterministic)
        return x


def encode_sequences(model, frame, words, word_mask, lengths, *, deterministic: bool):
    """Table 4's Bi-LSTM or Transformer in place of the two Bi-GRUs of ``MGPN``.

    ``frame [B, N, H]``, ``words [B, L, word_dim]``, ``word_mask [B, L]``, ``lengths`` the
    word GRU's (``MGPN._word_slots``: the LSTM reads the same slots); returns ``(clips [B, N,
    H], words [B, L, H])`` before the word mask (``MGPN`` applies it, as for the GRU).  Called
    inside ``MGPN.__call__``: the modules are ``MGPN``'s own submodules.
    """
    h = model.hidden
    if model.encoder == "bilstm":  # nn.LSTM in place of nn.GRU: H / 2 per direction
        vis, _ = StackedRNN(h // 2, model.gru_layers, "lstm", True, name="vis_lstm")(frame)
        txt_lstm = StackedRNN(h // 2, model.gru_layers, "lstm", True, name="txt_lstm")
        txt, _ = txt_lstm(words, lengths)
        return vis, txt
    heads, drop = model.transformer_heads, model.dropout
    vis_enc = TransformerEncoder(h, model.gru_layers, heads, drop, name="vis_transformer")
    txt_enc = TransformerEncoder(h, model.gru_layers, heads, drop, name="txt_transformer")
    vis = vis_enc(frame, None, deterministic=deterministic)
    txt = txt_enc(words, word_mask, deterministic=deterministic)
    return vis, txt


# --------------------------------------------------------------------------- comparisons
class StackedMapConv(nn.Module):
    """Figure 5 "SC": 2D-TAN's map convs on the dense map ``[B, N, N, C] -> [B, N, N, w]``."""

    width: int
    layers: int
    kernel: int

    @nn.compact
    def __call__(self, x, mask):
        """``x`` zero outside ``mask [N, N]``."""
        m = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), x.shape[:3])
        k = self.kernel
        for i in range(self.layers):
            pad = self.layers * (k - 1) // 2 if i == 0 else 0
            y = _conv(self.width, k, x.shape[-1] * k * k, f"conv{i}", pad)(x)
            m, weight = padded_mask_and_weight(m, k, 1, pad, 1)
            x = jax.nn.relu(y) * weight[..., None]
        return x


class CrissCrossAttention(nn.Module):
    """RaNet's ``GraphAttention``: each cell of ``[B, N, N, C]`` attends to its row and column."""

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        q = _conv(c // 8, 1, c, "query_conv")(x)
        k = _conv(c // 8, 1, c, "key_conv")(x)
        v = _conv(c, 1, c, "value_conv")(x)
        gamma = self.param("gamma", nn.initializers.zeros, (1,))
        n = x.shape[1]
        row = jnp.einsum("byxc,byic->byxi", q, k)  # keys (y, i): the whole row, itself included
        col = jnp.einsum("byxc,bjxc->byxj", q, k)  # keys (j, x), j != y
        col = jnp.where(np.eye(n, dtype=bool)[None, :, None, :], _NEG, col)
        att = jax.nn.softmax(jnp.concatenate([row, col], axis=-1), axis=-1)
        out = jnp.einsum("byxi,byic->byxc", att[..., :n], v)
        out = out + jnp.einsum("byxj,bjxc->byxc", att[..., n:], v)
        return gamma * out + x


class GraphAttentionModule(nn.Module):
    """Figure 5 "GA": RaNet's ``GATModule`` on ``[B, N, N, C] -> [B, N, N, C]``."""

    blocks: int = 2
    loops: int = 2
    inter_prop: int = 4

    @nn.compact
    def __call__(self, x, mask):
        m = jnp.asarray(mask, jnp.float32)[None, :, :, None]
        c = x.shape[-1]
        inter = c // self.inter_prop
        for i in range(self.blocks):
            y = jax.nn.relu(_conv(inter, 3, c * 9, f"block{i}_conva", 1, bias=False)(x))
            attend = CrissCrossAttention(name=f"block{i}_gat")  # one module, applied loops times
            for _ in range(self.loops):
                y = attend(y)
            y = jax.nn.relu(_conv(inter, 3, inter * 9, f"block{i}_convb", 1, bias=False)(y))
            both = jnp.concatenate([x, y], axis=-1)
            conv_c = _conv(c, 3, (c + inter) * 9, f"block{i}_convc", 1, bias=False)
            x = jax.nn.relu(conv_c(both)) * m
        return x


class DenseBatchNorm(nn.Module):
    """``nn.BatchNorm2d`` on ``[B, N, N, C]`` with scale and shift initialised to 0
    (``non_local.py``): train statistics over every cell of each of ``groups`` chunks of the
    batch, running ones from chunk 0 (``layers.batch_norm``, ``MGPN.bn_groups``)."""

    groups: int = 1
    momentum: float = 0.1
    eps: float = 1e-5

    @nn.compact
    def __call__(self, y, *, train: bool):
        ch = y.shape[-1]
        scale = self.param("scale", nn.initializers.zeros, (ch,))
        shift = self.param("bias", nn.initializers.zeros, (ch,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((ch,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((ch,), jnp.float32))
        if not train:
            return (y - ra_mean.value) * jax.lax.rsqrt(ra_var.value + self.eps) * scale + shift
        flat = y.reshape(y.shape[0], -1, ch)  # [B, P, ch]
        mean, var, count = chunk_moments(flat, self.groups)  # [K, ch], [K, ch], [K]
        if not self.is_initializing():
            first = int(count[0])
            unbiased = var[0] * first / max(first - 1, 1)
            ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean[0]
            ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * unbiased
        sizes = np.asarray(chunk_sizes(y.shape[0], self.groups))
        rows = (y.shape[0],) + (1,) * (y.ndim - 2) + (ch,)
        mean = jnp.repeat(mean, sizes, axis=0, total_repeat_length=y.shape[0]).reshape(rows)
        inv = jax.lax.rsqrt(var + self.eps)
        inv = jnp.repeat(inv, sizes, axis=0, total_repeat_length=y.shape[0]).reshape(rows)
        return (y - mean) * inv * scale + shift


class NonLocalBlock(nn.Module):
    """``NONLocalBlock2D(sub_sample=True, bn_layer=True)`` on ``[B, N, N, C]``."""

    bn_groups: int = 1

    @nn.compact
    def __call__(self, x, *, train: bool):
        b, n, _, c = x.shape
        inter = max(c // 2, 1)

        def pool(y):  # MaxPool2d(2): [B, N, N, I] -> [B, (N // 2)^2, I]
            y = nn.max_pool(y, (2, 2), strides=(2, 2), padding="VALID")
            return y.reshape(b, -1, inter)

        g = pool(_conv(inter, 1, c, "g")(x))
        theta = _conv(inter, 1, c, "theta")(x).reshape(b, n * n, inter)
        phi = pool(_conv(inter, 1, c, "phi")(x))
        att = jax.nn.softmax(jnp.einsum("bqi,bki->bqk", theta, phi), axis=-1)
        y = jnp.einsum("bqk,bki->bqi", att, g).reshape(b, n, n, inter)
        y = DenseBatchNorm(self.bn_groups, name="W_bn")(_conv(c, 1, inter, "W")(y), train=train)
        return y + x


def compare(model, enhanced, starts, ends, *, train: bool):
    """Figure 5's SC / GA / NL on the enhanced fused cells ``Â [B, C, 2H]`` (eq. 9's first
    line), in place of the four conv blocks: returns the relation-aware cells ``[B, C, ch]``
    (``ch = 2H`` for SC, ``H`` otherwise).  Called inside ``MGPN.__call__``."""
    n = model.num_clips
    mask = moment_map.valid_cell_mask(n, tuple(model.pooling_counts))
    if model.comparison == "stacked_conv":
        dense = moment_map.scatter_cells(enhanced, starts, ends, n)
        sc = StackedMapConv(enhanced.shape[-1], model.sc_layers, model.sc_kernel, name="sc")
        return moment_map.gather_cells(sc(dense, mask), starts, ends)
    h = model.hidden
    reduced = base._dense(h, 2 * h, "reduce_conv")(enhanced)  # NoNLocalModule.conv_layer2
    x = moment_map.scatter_cells(reduced, starts, ends, n)
    if model.comparison == "graph_attention":
        x = GraphAttentionModule(model.relation_blocks, name="ga")(x, mask)
    else:  # non_local
        for i in range(model.relation_blocks):
            x = NonLocalBlock(model.bn_groups, name=f"nl_block{i}")(x, train=train)
    return moment_map.gather_cells(x, starts, ends)
