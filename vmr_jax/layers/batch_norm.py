"""BatchNorm of PyTorch's ``nn.BatchNorm2d``, with train statistics per chunk of the batch as
``nn.DataParallel`` computes them.

Under ``nn.DataParallel(model)`` on ``G`` GPUs (the official MGPN runs: ``run_*.sh`` exports
``CUDA_VISIBLE_DEVICES=0,1,2,3``, and the paper trains on 4 GPUs), every forward pass

* splits the batch with ``torch.chunk(x, G, dim=0)`` (``DataParallel.scatter`` ->
  ``comm.scatter`` without ``chunk_sizes`` -> ``tensor.chunk(len(devices))``): contiguous
  chunks of ``ceil(B / G)`` examples, the last one smaller, and only ``ceil(B / ceil(B / G))``
  chunks when that is fewer than ``G`` (``B = 5, G = 4``: sizes 2, 2, 1, three replicas run);
* runs one replica per chunk, so each BatchNorm normalises its chunk with that chunk's own
  mean and biased variance;
* keeps the running statistics of replica 0 only: ``replicate`` broadcasts the buffers with
  ``comm.broadcast_coalesced``, whose device-0 outputs are the module's own tensors, so the
  in-place running-average update of the first chunk lands in the module; the other replicas
  update copies that are thrown away.  The update is ``(1 - 0.1) * running + 0.1 * stat`` with
  the unbiased variance ``var * n / (n - 1)``, ``n`` = examples x positions of chunk 0.

``groups`` (the models' ``bn_groups``) is that ``G``, fixed in the config and independent of
the devices this run has: the chunks are cut from the global batch, so one device reproduces
a 4-GPU run, and 8 devices give the same numbers as 1.  ``groups = 1`` is statistics over
the whole global batch (``SyncBatchNorm``; what a single-GPU run computes).

Shapes: ``y [B, P, ch]`` (``P`` positions per example, e.g. the valid cells of a 2D map).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def chunk_sizes(batch: int, groups: int) -> tuple[int, ...]:
    """Example counts of ``torch.chunk`` of a batch of ``batch`` into ``groups`` chunks."""
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(
            f"model.bn_groups must be a positive integer (1: statistics over the whole batch; "
            f"G: per chunk of the batch as DataParallel over G GPUs), got {groups!r}"
        )
    size = -(-batch // int(groups))
    full, last = divmod(batch, size)
    return (size,) * full + ((last,) if last else ())


def _per_chunk_sum(per_example: jnp.ndarray, sizes: tuple[int, ...]) -> jnp.ndarray:
    """``[B, ch]`` -> ``[K, ch]`` sums over each chunk's examples (zero-padded last chunk)."""
    size, k = sizes[0], len(sizes)
    padded = jnp.pad(per_example, ((0, size * k - per_example.shape[0]), (0, 0)))
    return padded.reshape(k, size, -1).sum(axis=1)


def chunk_moments(
    y: jnp.ndarray,
    groups: int,
    *,
    constant_positions: int = 0,
    constant: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray, np.ndarray]:
    """Mean and biased variance ``[K, ch]`` and value counts ``[K]`` of every chunk of ``y``.

    ``y [B, P, ch]``; chunk ``k`` holds the examples of :func:`chunk_sizes` ``(B, groups)[k]``,
    all ``P`` positions.  Each example also has ``constant_positions`` positions whose value
    is ``constant [ch]`` (the map cells a convolution sees only zero padding for, where it
    equals its bias), counted in closed form.  Two passes (mean, then squared deviations).
    """
    batch, positions = y.shape[0], y.shape[1]
    sizes = chunk_sizes(batch, groups)
    per_chunk = np.asarray(sizes)[:, None]  # [K, 1]
    count = per_chunk[:, 0] * (positions + constant_positions)
    total = _per_chunk_sum(jnp.sum(y, axis=1), sizes)
    if constant_positions:
        total = total + per_chunk * constant_positions * constant
    mean = total / count[:, None]
    centred = y - _per_example(mean, sizes, y.ndim)
    squares = _per_chunk_sum(jnp.sum(jnp.square(centred), axis=1), sizes)
    if constant_positions:
        squares = squares + per_chunk * constant_positions * jnp.square(constant - mean)
    return mean, squares / count[:, None], count


def _per_example(per_chunk: jnp.ndarray, sizes: tuple[int, ...], ndim: int) -> jnp.ndarray:
    """``[K, ch]`` -> ``[B, 1, ..., ch]``: each example gets its chunk's row."""
    rows = jnp.repeat(per_chunk, np.asarray(sizes), axis=0, total_repeat_length=sum(sizes))
    return rows.reshape((rows.shape[0],) + (1,) * (ndim - 2) + (rows.shape[-1],))


class MapBatchNorm(nn.Module):
    """``nn.BatchNorm2d`` (momentum 0.1, eps 1e-5) on ``y [B, P, ch]``.

    Train mode normalises each of the ``groups`` chunks of the batch (module docstring) with
    its own statistics and updates the running ones from chunk 0; eval mode uses the running
    statistics.  ``stats`` (train only): :func:`chunk_moments` of the same ``groups`` when the
    statistics cover more than ``y`` (the dense map); by default those of ``y`` itself.
    """

    groups: int = 1
    momentum: float = 0.1
    eps: float = 1e-5

    @nn.compact
    def __call__(self, y, stats=None, *, train: bool):
        ch = y.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (ch,))
        shift = self.param("bias", nn.initializers.zeros, (ch,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((ch,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((ch,), jnp.float32))
        if not train:
            return (y - ra_mean.value) * jax.lax.rsqrt(ra_var.value + self.eps) * scale + shift
        sizes = chunk_sizes(y.shape[0], self.groups)
        mean, var, count = chunk_moments(y, self.groups) if stats is None else stats
        if not self.is_initializing():
            first = int(count[0])
            unbiased = var[0] * first / max(first - 1, 1)
            ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean[0]
            ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * unbiased
        inv = jax.lax.rsqrt(var + self.eps)
        centred = y - _per_example(mean, sizes, y.ndim)
        return centred * _per_example(inv, sizes, y.ndim) * scale + shift
