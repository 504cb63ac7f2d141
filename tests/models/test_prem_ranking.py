"""PREM's inference rule (eq. 12) and its stage machinery, against brute force in NumPy."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vmr_jax.models import prem
from vmr_jax.optimizers import freeze_untrainable
from vmr_jax.retrieval import ranking


def _brute_force(video_scores, st, ed, mask, t, min_l, max_l, top):
    """Every (video, i, j) of every query scored by eq. 12, sorted by a stable descending
    sort over the flat (video, i, j - i - min_l) order."""
    out = []
    num_q, num_k, num_l = st.shape
    for q in range(num_q):
        rows = []
        for k, i, w in itertools.product(range(num_k), range(num_l), range(max_l - min_l)):
            j = i + min_l + w
            if j >= num_l or not (mask[q, k, i] and mask[q, k, j]):
                continue
            s = np.float64(video_scores[q, k]) / t + np.float64(st[q, k, i]) + ed[q, k, j]
            rows.append((-s, k, i, w, j))
        rows.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
        out.append([(k, i, j, -s) for s, k, i, _, j in rows[:top]])
    return out


@pytest.mark.parametrize("min_l,max_l", [(0, 4), (1, 3)])
def test_eq12_ranks_moments_across_the_videos_like_brute_force(min_l, max_l):
    rng = np.random.default_rng(0)
    num_q, num_k, num_l, t = 3, 4, 7, 0.01
    st = rng.normal(size=(num_q, num_k, num_l)).astype(np.float32)
    ed = rng.normal(size=(num_q, num_k, num_l)).astype(np.float32)
    video_scores = rng.uniform(-1, 1, size=(num_q, num_k)).astype(np.float32)
    lengths = rng.integers(3, num_l + 1, size=(num_q, num_k))
    mask = (np.arange(num_l)[None, None] < lengths[..., None]).astype(np.float32)
    stages = prem.PREMStages(model=None, temperature=t, min_pred_l=min_l, max_pred_l=max_l)

    moments = prem.window_moment_scores(jnp.asarray(st), jnp.asarray(ed), mask, min_l, max_l)
    combined = stages.combine(jnp.asarray(video_scores), moments)
    combined = jnp.where(moments.valid, combined, -jnp.inf)
    found = ranking.top_moments(combined, moments.start, moments.end, 20)
    expected = _brute_force(video_scores, st, ed, mask, t, min_l, max_l, 20)
    for q in range(num_q):
        n = len(expected[q])
        assert int(found.valid[q].sum()) == n
        got = list(
            zip(
                np.asarray(found.slot[q, :n]),
                np.asarray(found.start[q, :n]),
                np.asarray(found.end[q, :n]),
            )
        )
        assert got == [(k, i, j) for k, i, j, _ in expected[q]]
        np.testing.assert_allclose(
            np.asarray(found.score[q, :n]), [s for *_, s in expected[q]], rtol=1e-6
        )


def test_svmr_score_is_the_sum_of_the_boundary_logits():
    st = jnp.asarray([[0.5, -1.0, 2.0]])
    ed = jnp.asarray([[1.0, 0.25, -3.0]])
    moments = prem.window_moment_scores(st, ed, jnp.ones((1, 3)), 0, 2)
    # pairs in (i, w) order: (0,0) (0,1) (1,1) (1,2) (2,2) (2,3: past the end)
    assert np.asarray(moments.valid).tolist() == [[True, True, True, True, True, False]]
    np.testing.assert_allclose(
        np.asarray(moments.score)[0, :5], [1.5, 0.75, -0.75, -4.0, -1.0], rtol=1e-6
    )


def test_the_frozen_stage_gets_no_update_and_no_weight_decay():
    params = {"retriever": {"w": jnp.ones(3)}, "localizer": {"w": jnp.ones(2)}}
    grads = jax.tree.map(jnp.ones_like, params)
    for stage, frozen in (("retriever", "localizer"), ("localizer", "retriever")):
        config = {"stage": stage}
        tx = freeze_untrainable(
            optax.adamw(0.1, weight_decay=0.5), lambda p, c=config: prem.trainable(p, c)
        )
        state = tx.init(params)
        updates, _ = tx.update(grads, state, params)
        new = optax.apply_updates(params, updates)
        np.testing.assert_array_equal(np.asarray(new[frozen]["w"]), np.asarray(params[frozen]["w"]))
        # Adam's first step moves by lr * sign(g) = 0.1, decay by lr * wd * w = 0.05.
        np.testing.assert_allclose(np.asarray(new[stage]["w"]), 1.0 - 0.1 - 0.05, rtol=1e-5)


def test_ctx_modes():
    assert prem.modalities("video_sub") == ("video", "sub")
    assert prem.modalities("video") == ("video",)
    with pytest.raises(ValueError, match="ctx_mode"):
        prem.modalities("audio")
