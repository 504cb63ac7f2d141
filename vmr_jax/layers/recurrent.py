"""Recurrent encoders with PyTorch's gate layout, so official weights load unchanged.

``nn.GRU`` of PyTorch computes, per step,
``r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)``, ``z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)``,
``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.
``nn.LSTM``: gates i, f, g, o; ``c' = f c + i g``, ``h' = o tanh(c')``.

Parameters are stored per layer and direction as ``w_ih [D_in, G*H]``, ``w_hh [H, G*H]``,
``b_ih [G*H]``, ``b_hh [G*H]`` with the PyTorch gate order along the last axis (the transpose
of PyTorch's ``weight_ih_l{k}``).  The input projection of all time steps is one matmul; only
the ``h @ w_hh`` product is sequential, and both directions of a bidirectional layer share one
``lax.scan`` (stacked on a leading direction axis), halving the sequential depth.

``lengths``: when given, the backward direction of each sequence starts at its last real step
(PyTorch ``pack_padded_sequence``), outputs at padded steps are zero and the final state is the
state at the last real step.  When ``None`` the whole padded sequence is read (MGPN's
official text encoder does this).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

GATES = {"gru": 3, "lstm": 4}


def _reverse_within_length(x: jnp.ndarray, lengths: jnp.ndarray | None) -> jnp.ndarray:
    """Reverse ``x [B, T, ...]`` along time inside each sequence's length (padding stays put)."""
    if lengths is None:
        return x[:, ::-1]
    t = jnp.arange(x.shape[1])[None, :]
    src = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return jnp.take_along_axis(x, src.reshape(src.shape + (1,) * (x.ndim - 2)), axis=1)


def _cell_step(kind: str, hidden: int):
    def step(carry, gi_t, w_hh, b_hh):
        # carry: h [dirs, B, H] (GRU) or (h, c); gi_t: [dirs, B, G*H].
        if kind == "gru":
            h = carry
            gh = jnp.einsum("dbh,dhk->dbk", h, w_hh) + b_hh[:, None, :]
            i_r, i_z, i_n = jnp.split(gi_t, 3, axis=-1)
            h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
            r = jax.nn.sigmoid(i_r + h_r)
            z = jax.nn.sigmoid(i_z + h_z)
            n = jnp.tanh(i_n + r * h_n)
            h_new = (1.0 - z) * n + z * h
            return h_new, h_new
        h, c = carry
        g = gi_t + jnp.einsum("dbh,dhk->dbk", h, w_hh) + b_hh[:, None, :]
        i, f, gg, o = jnp.split(g, 4, axis=-1)
        c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
        h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
        return (h_new, c_new), h_new

    del hidden
    return step


class RNNLayer(nn.Module):
    """One (bi)directional GRU/LSTM layer with PyTorch parameters.

    Input ``[B, T, D]``; output ``[B, T, dirs * H]`` (forward half first) and final states
    ``[dirs, B, H]`` (``(h, c)`` for LSTM).
    """

    hidden: int
    kind: str = "gru"
    bidirectional: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray, lengths: jnp.ndarray | None = None):
        gates = GATES[self.kind] * self.hidden
        dirs = 2 if self.bidirectional else 1
        d_in = x.shape[-1]
        bound = 1.0 / jnp.sqrt(self.hidden)

        def uniform(key, shape, dtype=jnp.float32):
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        names = ["", "_reverse"][:dirs]
        w_ih = jnp.stack([self.param(f"w_ih{s}", uniform, (d_in, gates)) for s in names])
        w_hh = jnp.stack([self.param(f"w_hh{s}", uniform, (self.hidden, gates)) for s in names])
        b_ih = jnp.stack([self.param(f"b_ih{s}", uniform, (gates,)) for s in names])
        b_hh = jnp.stack([self.param(f"b_hh{s}", uniform, (gates,)) for s in names])

        seqs = [x]
        if self.bidirectional:
            seqs.append(_reverse_within_length(x, lengths))
        xs = jnp.stack(seqs)  # [dirs, B, T, D]
        gi = jnp.einsum("dbtk,dkg->tdbg", xs, w_ih) + b_ih[None, :, None, :]  # [T, dirs, B, G]

        batch = x.shape[0]
        h0 = jnp.zeros((dirs, batch, self.hidden), x.dtype)
        carry0 = h0 if self.kind == "gru" else (h0, h0)
        step = _cell_step(self.kind, self.hidden)

        if lengths is None:

            def body(carry, gi_t):
                return step(carry, gi_t, w_hh, b_hh)

            final, ys = jax.lax.scan(body, carry0, gi)
        else:
            steps = jnp.arange(x.shape[1])

            def body(carry, inp):
                gi_t, t = inp
                new_carry, y = step(carry, gi_t, w_hh, b_hh)
                live = (t < lengths)[None, :, None]  # [1, B, 1]
                new_carry = jax.tree_util.tree_map(
                    lambda n, o: jnp.where(live, n, o), new_carry, carry
                )
                return new_carry, jnp.where(live, y, 0.0)

            final, ys = jax.lax.scan(body, carry0, (gi, steps))

        ys = jnp.transpose(ys, (1, 2, 0, 3))  # [dirs, B, T, H]
        outs = [ys[0]]
        if self.bidirectional:
            outs.append(_reverse_within_length(ys[1], lengths))
        return jnp.concatenate(outs, axis=-1), final


class StackedRNN(nn.Module):
    """Multi-layer (bi)directional GRU/LSTM, PyTorch ``nn.GRU``/``nn.LSTM`` semantics
    (``batch_first=True``, no inter-layer dropout).

    Returns ``(outputs [B, T, dirs * H], h_n [layers * dirs, B, H])`` (LSTM: ``(h_n, c_n)``),
    ordered layer0-fwd, layer0-bwd, layer1-fwd, ... as PyTorch orders them.
    """

    hidden: int
    num_layers: int = 1
    kind: str = "gru"
    bidirectional: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray, lengths: jnp.ndarray | None = None):
        finals = []
        for layer in range(self.num_layers):
            x, final = RNNLayer(self.hidden, self.kind, self.bidirectional, name=f"l{layer}")(
                x, lengths
            )
            finals.append(final)
        if self.kind == "gru":
            return x, jnp.concatenate(finals, axis=0)
        h_n = jnp.concatenate([f[0] for f in finals], axis=0)
        c_n = jnp.concatenate([f[1] for f in finals], axis=0)
        return x, (h_n, c_n)
