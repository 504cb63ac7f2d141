"""XML's training loss and inference factors (module docstring of ``models/xml.py``, item 7).

The official ``XML.get_pred_from_raw_query`` / ``forward`` losses of jayleicn/TVRetrieval:
start/end cross-entropy on the ground-truth clip labels (``get_st_ed_label``), and the two
hinge (or log-sum-exp) ranking losses of the query against sampled negative videos and of
the video against sampled negative queries, with their epoch schedules
(``train_span_start_epoch``, ``hard_negative_start_epoch``); the negative draws come from the
model's forward pass (``neg_draws``, ``hard_neg_draws``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def st_ed_labels(spans: jnp.ndarray, mask: jnp.ndarray, clip_length: float) -> jnp.ndarray:
    """Training labels ``[B, 2]`` int32 of ``spans [B, 2]`` seconds (``get_st_ed_label`` of
    the training dataset): ``floor(st / clip_length)``, ``ceil(ed / clip_length)``, each
    capped at ``sum(mask) - 1`` (and at 0 for an all-padding row of an eval batch)."""
    last = jnp.maximum(jnp.sum(mask, axis=-1).astype(jnp.int32) - 1, 0)
    st = jnp.floor(spans[:, 0] / clip_length).astype(jnp.int32)
    ed = jnp.ceil(spans[:, 1] / clip_length).astype(jnp.int32)
    return jnp.stack([jnp.minimum(st, last), jnp.minimum(ed, last)], axis=-1)


# Loss ----------------------------------------------------------------------------------------


def epoch_of(step, steps_per_epoch):
    """``step // steps_per_epoch`` (0 when ``step`` is None)."""
    if step is None:
        return 0
    if steps_per_epoch is None:
        raise ValueError("loss_fn got a step but no steps_per_epoch for the XML schedules")
    return step // steps_per_epoch


def _from_epoch(epoch, start: int):
    """1.0 from epoch ``start`` on (0.0 before, always 0.0 for ``start == -1``)."""
    if start == -1:
        return jnp.float32(0.0)
    return (jnp.asarray(epoch) >= start).astype(jnp.float32)


def sampled_negative_scores(scores, draws, valid) -> jnp.ndarray:
    """Official ``get_neg_scores``: for each row ``i`` of ``scores [N, N]`` the entry at
    position ``draws[i]`` of the row sorted in descending order with 999 on the diagonal;
    columns of invalid examples sort last.  Gradients flow to the picked entries only."""
    n = scores.shape[0]
    masked = jax.lax.stop_gradient(scores)
    masked = jnp.where(jnp.eye(n, dtype=bool), 999.0, masked)
    masked = jnp.where(valid[None, :] > 0, masked, -jnp.inf)
    order = jnp.argsort(-masked, axis=1)
    position = jnp.clip(draws, 0, n - 1)[:, None]
    picked = jnp.take_along_axis(order, position, axis=1)
    return jnp.take_along_axis(scores, picked, axis=1)[:, 0]


def ranking_loss(pos, neg, weight, margin: float, kind: str) -> jnp.ndarray:
    """Weighted mean of ``max(0, margin + neg - pos)`` (``hinge``) or
    ``log(1 + exp(neg - pos))`` (``lse``)."""
    if kind == "hinge":
        per = jnp.maximum(margin + neg - pos, 0.0)
    elif kind == "lse":
        per = jnp.log1p(jnp.exp(neg - pos))
    else:
        raise ValueError(f"ranking_loss_type must be 'hinge' or 'lse', got {kind!r}")
    return jnp.sum(per * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def loss_fn(
    outputs, batch, model_config, *, step=None, steps_per_epoch=None
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Official XML training loss with its epoch schedules (module docstring, item 7)."""
    scores = outputs["video_scores"]
    b = scores.shape[0]
    valid = jnp.asarray(batch.get("valid", jnp.ones((b,))), jnp.float32)
    weight = (valid > 0).astype(jnp.float32)
    epoch = epoch_of(step, steps_per_epoch)

    labels = st_ed_labels(
        jnp.asarray(batch["spans"], jnp.float32)[:, 0],
        jnp.asarray(batch["video_mask"], jnp.float32),
        float(model_config.clip_length),
    )
    ce = optax.softmax_cross_entropy_with_integer_labels
    per_example = ce(outputs["st_logits"], labels[:, 0]) + ce(outputs["ed_logits"], labels[:, 1])
    span = jnp.sum(per_example * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    span_weight = float(model_config.lw_st_ed) * _from_epoch(
        epoch, int(model_config.train_span_start_epoch)
    )
    loss_st_ed = span_weight * span

    if "neg_draws" in outputs:
        hard = _from_epoch(epoch, int(model_config.hard_negative_start_epoch)) > 0
        draws = jnp.where(hard, outputs["hard_neg_draws"], outputs["neg_draws"])
    else:
        draws = jnp.ones((2, b), jnp.int32)
    pos = jnp.diagonal(scores)
    neg_ctx = sampled_negative_scores(scores, draws[0], weight)
    neg_q = sampled_negative_scores(scores.T, draws[1], weight)
    has_negatives = (jnp.sum(weight) >= 2).astype(jnp.float32)
    margin, kind = float(model_config.margin), str(model_config.ranking_loss_type)
    loss_neg_ctx = float(model_config.lw_neg_ctx) * has_negatives
    loss_neg_ctx = loss_neg_ctx * ranking_loss(pos, neg_ctx, weight, margin, kind)
    loss_neg_q = float(model_config.lw_neg_q) * has_negatives
    loss_neg_q = loss_neg_q * ranking_loss(pos, neg_q, weight, margin, kind)
    loss = loss_st_ed + loss_neg_ctx + loss_neg_q
    return loss, {
        "loss_st_ed": loss_st_ed,
        "loss_neg_ctx": loss_neg_ctx,
        "loss_neg_q": loss_neg_q,
    }


# Inference factors ---------------------------------------------------------------------------


def video_weights(scores: jnp.ndarray, model_config) -> jnp.ndarray:
    """The VCMR video factor ``exp(q2c_alpha * score)`` (inference.py)."""
    return jnp.exp(float(model_config.q2c_alpha) * scores)


def boundary_probs(logits: jnp.ndarray) -> jnp.ndarray:
    """Softmax over clips of start or end logits (padded clips get 0)."""
    return jax.nn.softmax(logits, axis=-1)
