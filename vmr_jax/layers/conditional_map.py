"""Cascaded MPN's score-map generator ``f_cond`` as a linen module (eqs. 9-14).

Holds ``W_v``, ``W_q`` ``[d + 1, d]`` (as the paper writes them) and the two one-channel
Conv1D kernels ``[k]`` with scalar biases; the maths is :mod:`vmr_jax.ops.score_maps`.  One
instance serves the frame-level map or an anchor level; whether levels share weights is the
model's choice (one instance, or one per level).

Initialisation (paper silent): ``W_v``/``W_q`` LeCun normal over the ``d + 1`` inputs (Flax's
Dense default); conv kernels and biases uniform in ``+-1/sqrt(k)`` (PyTorch's Conv1d
default, as the model's PyTorch origins suggest).  ``conditional=False`` (the 'w/o CMSM'
ablation) creates no ``W_v``/``W_q``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vmr_jax.ops import score_maps


def _uniform(scale: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


class ConditionalScoreMap(nn.Module):
    """``f_cond(v, q)``: start distribution, start-conditioned end distribution, their map."""

    features: int
    kernel_size: int = 5
    conditional: bool = True

    def setup(self):
        if self.kernel_size < 1:
            raise ValueError(f"kernel_size must be positive, got {self.kernel_size}")
        d, conv_init = self.features, _uniform(self.kernel_size**-0.5)
        if self.conditional:
            self.w_v = self.param("w_v", nn.initializers.lecun_normal(), (d + 1, d))
            self.w_q = self.param("w_q", nn.initializers.lecun_normal(), (d + 1, d))
        self.start_kernel = self.param("start_kernel", conv_init, (self.kernel_size,))
        self.start_bias = self.param("start_bias", conv_init, ())
        self.end_kernel = self.param("end_kernel", conv_init, (self.kernel_size,))
        self.end_bias = self.param("end_bias", conv_init, ())

    def map_params(self) -> score_maps.ConditionalMapParams:
        """The weights as the ops take them (e.g. for :func:`score_maps.cascaded_score_map`)."""
        return score_maps.ConditionalMapParams(
            w_v=self.w_v if self.conditional else None,
            w_q=self.w_q if self.conditional else None,
            start_kernel=self.start_kernel,
            start_bias=self.start_bias,
            end_kernel=self.end_kernel,
            end_bias=self.end_bias,
        )

    def _check(self, video: jax.Array, query: jax.Array) -> None:
        if video.shape[-1] != self.features or query.shape[-1] != self.features:
            raise ValueError(
                f"ConditionalScoreMap(features={self.features}) got video {video.shape} "
                f"and query {query.shape}"
            )

    def __call__(
        self, video: jax.Array, valid_len: jax.Array, query: jax.Array
    ) -> score_maps.ScoreMap:
        """Paired inputs: ``video [..., L, d]``, ``valid_len [...]``, ``query [..., d]`` with
        the same leading dims -> :class:`score_maps.ScoreMap` of ``[..., L]``/``[..., L, L]``."""
        self._check(video, query)
        params = self.map_params()

        def one(v, n, q):
            return score_maps.moment_score_map(v, n, q, params, self.conditional)

        fn = one
        for _ in range(video.ndim - 2):
            fn = jax.vmap(fn)
        return fn(video, jnp.asarray(valid_len), query)

    def pairwise(
        self, queries: jax.Array, videos: jax.Array, valid_lens: jax.Array
    ) -> score_maps.ScoreMap:
        """Every query with every video: ``[Q, d]``, ``[V, L, d]``, ``[V]`` -> ``[Q, V, ...]``."""
        self._check(videos, queries)
        params = self.map_params()

        def one(q, v, n):
            return score_maps.moment_score_map(v, n, q, params, self.conditional)

        per_video = jax.vmap(one, in_axes=(None, 0, 0))
        return jax.vmap(per_video, in_axes=(0, None, None))(queries, videos, valid_lens)
