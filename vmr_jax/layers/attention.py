"""BERT-style attention blocks in the PyTorch layout of TVRetrieval (and HERO / CONQUER).

Reusable by every family that encodes clips or words with Transformer layers (XML today;
the corpus papers built on TVRetrieval use the same blocks).  Parameter names follow the
official modules, so the converters map ``state_dict`` keys one to one:

* :class:`LinearLayer` -- ``LayerNorm(input) -> Dropout -> Linear -> ReLU``.
* :class:`TrainablePositionalEncoding` -- ``LayerNorm(x + table[:L])`` then Dropout.
* :class:`MultiHeadAttention` -- ``BertSelfAttention`` (additive ``-10000`` mask, no output
  projection).
* :class:`SelfAttentionBlock` -- ``BertAttention`` (self-attention, Linear, Dropout,
  residual, LayerNorm).

Initialisation: weights ``N(0, init_range)``, zero biases (``init_range`` is the official
``initializer_range``); LayerNorm is PyTorch's (eps 1e-5, two-pass variance).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ATTENTION_MASK_VALUE = -10000.0  # official BertSelfAttention


def _normal(stddev: float):
    return nn.initializers.normal(stddev)


def torch_layer_norm(name: str | None = None) -> nn.LayerNorm:
    """PyTorch ``nn.LayerNorm``: eps 1e-5, two-pass variance."""
    return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=name)


def bert_dense(
    features: int, init_range: float, name: str | None = None, use_bias: bool = True
) -> nn.Dense:
    """Linear with the BERT init: weights N(0, initializer_range), zero bias."""
    return nn.Dense(features, use_bias=use_bias, kernel_init=_normal(init_range), name=name)


class LinearLayer(nn.Module):
    """Official ``LinearLayer``: LayerNorm(input) -> Dropout -> Linear -> ReLU."""

    features: int
    dropout: float
    init_range: float

    @nn.compact
    def __call__(self, x, *, deterministic: bool):
        x = torch_layer_norm("LayerNorm")(x)
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        return jax.nn.relu(bert_dense(self.features, self.init_range, "dense")(x))


class TrainablePositionalEncoding(nn.Module):
    """``LayerNorm(x + table[:L])`` then Dropout; ``x [N, L, H]`` with ``L <= max_len``."""

    max_len: int
    dropout: float
    init_range: float

    @nn.compact
    def __call__(self, x, *, deterministic: bool):
        length, hidden = x.shape[-2:]
        if length > self.max_len:
            raise ValueError(
                f"sequence of {length} positions, position table has {self.max_len} "
                "(max_desc_l / max_ctx_l): cut the inputs first"
            )
        table = self.param("position_embeddings", _normal(self.init_range), (self.max_len, hidden))
        x = torch_layer_norm("LayerNorm")(x + table[:length])
        return nn.Dropout(self.dropout)(x, deterministic=deterministic)


class MultiHeadAttention(nn.Module):
    """Official ``BertSelfAttention``: ``[N, Lq, H]`` queries over ``[N, Lk, H]`` keys and
    values with the additive mask ``(1 - mask) * -10000``, ``mask`` broadcastable to
    ``[N, Lq, Lk]``; Dropout on the attention weights; no output projection."""

    hidden: int
    heads: int
    dropout: float
    init_range: float

    @nn.compact
    def __call__(self, query, key_value, mask, *, deterministic: bool):
        if self.hidden % self.heads:
            raise ValueError(f"hidden_size {self.hidden} is not a multiple of n_heads {self.heads}")
        head = self.hidden // self.heads

        def split(x, name):
            y = bert_dense(self.hidden, self.init_range, name)(x)
            return y.reshape(*y.shape[:-1], self.heads, head)  # [N, L, heads, head]

        q = split(query, "query")
        k = split(key_value, "key")
        v = split(key_value, "value")
        bias = (1.0 - mask[:, None]) * ATTENTION_MASK_VALUE  # [N, 1, Lq|1, Lk]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head).astype(np.float32)
        weights = jax.nn.softmax(scores + bias, axis=-1)
        weights = nn.Dropout(self.dropout)(weights, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return out.reshape(*out.shape[:-2], self.hidden)


class SelfAttentionBlock(nn.Module):
    """Official ``BertAttention``: self-attention, Linear, Dropout, residual, LayerNorm."""

    hidden: int
    heads: int
    dropout: float
    init_range: float

    @nn.compact
    def __call__(self, x, mask, *, deterministic: bool):
        """``x [N, L, H]``, ``mask [N, L]`` (keys)."""
        att = MultiHeadAttention(
            self.hidden, self.heads, self.dropout, self.init_range, name="attention"
        )(x, x, mask[:, None, :], deterministic=deterministic)
        y = bert_dense(self.hidden, self.init_range, "dense")(att)
        y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
        return torch_layer_norm("LayerNorm")(y + x)
