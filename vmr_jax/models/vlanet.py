"""VLANet: Video-Language Alignment Network for weakly supervised moment retrieval
(Ma, Yoon, Kim, Lee, Kang & Yoo, ECCV 2020).

Paper: shared/papers/004_197bed61392c4045.txt (section 3).  There is no public code; where the
paper is silent the choice is listed below.  VLANet never sees a moment boundary in training
(``SUPERVISION = ('weak',)``, ``config.train.supervision = 'weak'``): it learns which query
belongs to which video with a contrastive loss, and localises with its attention.

1. Query (eq. 1): word embeddings (GloVe vectors as ``query_features`` when the config gives a
   GloVe file, else a learned table over ``query_tokens``) through a one-layer GRU; every
   hidden state is resized to ``D = embed_dim`` by a fully connected layer ("Fully-connected
   layers are used to resize the feature dimension of Q and V to D") and L2-normalised:
   ``Q = [w_1 .. w_M]``, unit rows; ``w_M`` is the state at the query's last real word.
2. Proposals (eq. 2): ``K = max_groups`` segment groups start every ``proposal_stride``
   seconds (``s_k = k * stride``); group ``k`` holds one window of every length in
   ``proposal_windows`` (``L`` scales), proposal ``(k, l) = [s_k, s_k + w_l]``.  Its feature
   is the mean of the input clips it overlaps ("the average of the C3D features of the frames
   participating in the proposal"), then a fully connected layer to ``D`` and L2 norm.
   Clip ``c`` covers ``[c, c + 1] * duration / T`` when the input clips are resampled over the
   video (``clip_seconds = 0``: 2D-TAN's resampling, Charades-STA) or ``[c, c + 1] *
   clip_seconds`` for native clips (``config.data.clip_sampling = 'truncate'``: DiDeMo's
   5-second chunks, the synthetic benchmark's 1-second clips; masked clips never count).
   *Choices:* a proposal is a candidate when it ends inside the video (``end <= duration``,
   1 ms tolerance) and overlaps at least one real clip; a video shorter than the smallest
   window gets the single proposal ``[0, duration]`` (group 0, scale 0) so that every video has
   one.  Charades-STA: stride 8 frames, windows 176/208/240 frames at 24 fps (the paper's
   frames; the Charades feature files in this library are 24-fps) = 1/3 s and 7.33/8.67/10 s.
   DiDeMo: stride 5 s and windows 5..30 s give exactly the 21 chunk moments (15 for a
   25-second video).
   *Group count* (:func:`groups_to_cover`): groups past ``max_groups`` do not exist, so
   ``K = max_groups`` must reach the last group that holds a candidate of the longest video.
   Group ``k`` holds one when its smallest window ends inside the video, ``k * stride +
   w_min <= D + 1 ms``, so a video of ``D`` seconds has candidates in groups ``0 ..
   floor((D - w_min + 1 ms) / stride)`` and ``K`` groups keep every candidate of every video
   shorter than ``K * stride + w_min - 1 ms``; the smallest such ``K`` for a longest video
   ``D_max`` is ``floor((D_max - w_min + 1 ms) / stride) + 1``.  Charades-STA (``D_max`` =
   194.33 s, Charades v1 ``length``, a training video; the test split's longest is 72.04 s),
   Table 3's rows in frames at 24 fps: stride 8 with windows 176/208/240 (default) -> 561
   groups, stride 6 -> 748, stride 4 -> 1,122, stride 6 with 128/256 -> 756, stride 6 with
   176/240 -> 748; each covers videos shorter than 194.332 s.  A fixed 584 (this module's
   earlier default, a group at every stride up to 194.33 s) covers 202.0 s at stride 8 but
   153.3 s at stride 6 (5 training videos lose proposals) and 104.7 s at stride 4 (13
   training videos, 108.1-194.3 s, lose proposals: the last group starts at 97.2 s).  The
   configs derive ``max_groups`` from the stride and windows; ``longest_video_s`` in
   ``config.model`` (0: unchecked) makes :func:`create_model` refuse a grid that does not
   cover it, e.g. a stride given by override without a matching ``max_groups``.
3. Surrogate Proposal Selection (eqs. 3-6): per group, the proposal with the largest cosine
   similarity ``p_lk . w_M`` (both unit vectors) among the group's candidates is the surrogate
   ``s_k``; ``V = [s_1 .. s_K]`` (groups without a candidate are masked).  The argmax carries
   no gradient; only the selected proposals' features do ("only the surrogate proposals
   contribute to the weight update").  ``surrogate = False`` (Table 3 "w/o surrogate") keeps
   all ``K * L`` proposals in ``V``.  Selection uses the query, so ``V`` is per video-query
   pair.
4. Cascaded Cross-modal Attention (eqs. 7-13).  Dense Attention ``A(X, Y)``: ``E(x_n, Y) = sum_m
   tanh(W1 x_n . W2 y_m)`` (eq. 7; padded ``y_m`` left out), ``A(X, Y) = softmax([E(x_1, Y) ..
   E(x_N, Y)]) X`` (eq. 8): since ``A`` maps ``R^{N x D}`` to ``R^{N x D}``, row ``n`` of ``X``
   is scaled by its softmax weight (softmax over the real rows).  *Choice*
   (``attention_scale``): by default the factor is ``N a_n`` (``N`` = real rows), the weight
   relative to uniform attention, so that a cascade keeps the features' scale; with the literal
   ``a_n`` (``'softmax'``) every update shrinks ``V`` by about ``1 / K`` and ``Q`` by ``1 / M``,
   and after the default cascade ``c`` is ~1e-5 at initialisation
   (``tests/models/test_vlanet.py`` shows both), far from the paper's similarities of 0.15-0.9
   (Fig. 4), which a margin loss cannot train from.  The relative strength of the rows -- all
   that the localisation reads -- is the same softmax either way.  ``W1, W2`` are bias-free
   linear maps ``D -> attention_dim`` as written; every attention unit has its own pair
   (*choice*: the paper does not say whether repeated units share them).  Self-attention ``V <-
   A(V, V)``, ``Q <- A(Q, Q)`` (eqs. 9-10; off for Table 3 "w/o self-attn", ``self_attention =
   False``), then ``cross_attention_steps`` alternating cross-attention updates starting with
   ``V <- A(V, Q)`` (eq. 11), then ``Q <- A(Q, V)`` (eq. 12), ...  The default 3 is the
   introduction's cascade "query to video (Q2V), video to query (V2Q) and finally attended query
   to attended video (Q2V)"; 0 is Table 3 "w/o cross-attn".  ``v_comp = sum_n V_n`` and the
   video-query similarity ``c = E(v_comp, Q)`` with its own ``W1, W2`` (eq. 13). *Exact
   shortcut:* every ``A`` only rescales rows and ``W1, W2`` are linear, so ``W1 (a x) = a W1
   x``: the module keeps the unit rows and a log-scale per row (``log a`` summed over the
   updates), and projects each video's proposals and each query's words once instead of once per
   video-query pair.  ``tests/models/test_vlanet.py`` checks it against a NumPy implementation
   that materialises ``V`` and ``Q`` at every step.
5. Loss (eq. 14, garbled in our copy: only its caption survives, "E is the VLA function ... Δ
   is the margin. Q+ and Q- is positive and negative query features"; 3.1: "The network is
   trained ... using contrastive loss to enforce the scores of the positive pairs to be higher
   than those of the negative pairs ... the negative pairs are randomly sampled in a batch").
   Reconstruction: with ``c(V, Q) = E(v_comp(V, Q), Q)``,
   ``L = mean_{(V, Q+)} mean_{Q-} max(0, Δ - c(V, Q+) + c(V, Q-))``: every other query of the
   global batch is a negative for a video (*choice*: all of them, not a random subset; queries
   of the same video, ``video_index``, are not negatives, nor padding rows).  ``v_comp`` is
   recomputed for every pair, since the attention depends on the query.  ``margin`` Δ
   (*choice*, the paper gives no value) defaults to 0.5; ``video_negatives = True`` adds the
   symmetric term over negative videos for a query (TGA's two-way ranking loss, the paper's
   [14]), off by default because the caption names negative queries only.
6. Localisation (3.1 "The learned attention weights by CCA are used to localize the relevant
   moment at test time"; Fig. 6).  A surrogate's attention strength is the product of the
   softmax weights it received (its row norm after the cascade, since the rows start as unit
   vectors), normalised over the candidates.  ``decode`` returns every proposal as a moment
   list: surrogates score ``1 + strength`` (in ``(1, 2]``), the other candidates of a group
   rank after every surrogate by eq. 3's cosine, ``(1 + cos) / 2`` in ``[0, 1]`` (*choice*: the
   paper ranks surrogates only; the tail gives DiDeMo's protocol a full ranking of the 21
   moments), non-candidates ``-inf``.  The trainer decodes the list with greedy NMS (or ranks
   the 21 chunk moments under the ``didemo`` protocol).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vmr_jax.errors import ConfigError
from vmr_jax.layers.recurrent import RNNLayer
from vmr_jax.models import common
from vmr_jax.models.family import Family

CHARADES_FPS = 24.0
CHARADES_LONGEST_S = 194.33  # Charades v1 ``length`` of the longest Charades-STA video
CANDIDATE_TOLERANCE_S = 1e-3  # a proposal may end this far past the video and still fit


def groups_to_cover(longest_s: float, stride: float, windows) -> int:
    """The fewest segment groups ``K`` that keep every candidate proposal of every video up to
    ``longest_s`` seconds: ``floor((longest_s - min(windows) + 1 ms) / stride) + 1`` (module
    docstring, 2; 1 for a video shorter than the smallest window)."""
    reach = float(longest_s) - min(float(w) for w in windows) + CANDIDATE_TOLERANCE_S
    return max(0, math.floor(reach / float(stride))) + 1


def covered_seconds(max_groups: int, stride: float, windows) -> float:
    """Videos shorter than this keep every candidate proposal under ``max_groups`` groups:
    ``max_groups * stride + min(windows) - 1 ms``."""
    return int(max_groups) * float(stride) + min(float(w) for w in windows) - CANDIDATE_TOLERANCE_S


DEFAULTS = dict(
    feature_dim=4096,
    word_dim=300,
    vocab_size=0,
    gru_hidden=512,
    embed_dim=512,
    attention_dim=256,
    clip_seconds=0.0,
    proposal_stride=8 / CHARADES_FPS,
    proposal_windows=(176 / CHARADES_FPS, 208 / CHARADES_FPS, 240 / CHARADES_FPS),
    # 561: every Charades-STA video keeps all its proposals (module docstring, 2).
    max_groups=groups_to_cover(
        CHARADES_LONGEST_S,
        8 / CHARADES_FPS,
        (176 / CHARADES_FPS, 208 / CHARADES_FPS, 240 / CHARADES_FPS),
    ),
    longest_video_s=CHARADES_LONGEST_S,  # create_model checks max_groups covers it
    surrogate=True,
    self_attention=True,
    cross_attention_steps=3,
    attention_scale="relative",
    margin=0.5,
    video_negatives=False,
)

VARIANTS: dict[str, dict[str, Any]] = {
    # Charades-STA (paper: C3D 4096-d; here the 4096-d VGG fc7 set, resampled clips).
    "charades": dict(DEFAULTS),
    # Charades-STA with the 1024-d I3D sets.
    "charades_i3d": dict(DEFAULTS, feature_dim=1024),
    # DiDeMo, VGG fc7 per 5-s chunk: groups at every chunk, windows of 1..6 chunks.
    "didemo": dict(
        DEFAULTS,
        clip_seconds=5.0,
        proposal_stride=5.0,
        proposal_windows=(5.0, 10.0, 15.0, 20.0, 25.0, 30.0),
        max_groups=6,
        longest_video_s=30.0,
    ),
    # Small and fast, for tests and the synthetic benchmark (1-s clips, 48-128 s videos).
    "tiny": dict(
        DEFAULTS,
        feature_dim=32,
        word_dim=32,
        gru_hidden=64,
        embed_dim=64,
        attention_dim=32,
        clip_seconds=1.0,
        proposal_stride=4.0,
        proposal_windows=(8.0, 16.0, 24.0, 32.0),
        max_groups=32,
        longest_video_s=0.0,  # unchecked: tests vary the grid
    ),
}

_NEG = -1e30  # masked logits (finite, so that all-masked rows stay NaN-free)


# --------------------------------------------------------------------------- geometry
def proposal_times(duration: jnp.ndarray, model_config) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Proposal ``[start, end]`` seconds ``[B, K, L, 2]`` and the candidate mask ``[B, K, L]``
    before the clip check (see the module docstring, 2)."""
    k = int(model_config.max_groups)
    windows = jnp.asarray(tuple(model_config.proposal_windows), jnp.float32)
    starts = jnp.arange(k, dtype=jnp.float32) * float(model_config.proposal_stride)
    start = jnp.broadcast_to(starts[:, None], (k, len(windows)))
    end = start + windows[None, :]
    duration = jnp.asarray(duration, jnp.float32)[:, None, None]
    fits = end[None] <= duration + CANDIDATE_TOLERANCE_S
    # A video shorter than the smallest window: the single proposal [0, duration].
    none_fit = ~jnp.any(fits, axis=(1, 2), keepdims=True)
    first = (jnp.arange(k)[:, None] == 0) & (jnp.arange(len(windows))[None, :] == 0)
    end_b = jnp.where(none_fit & first[None], jnp.minimum(end[None], duration), end[None])
    times = jnp.stack([jnp.broadcast_to(start[None], end_b.shape), end_b], axis=-1)
    return times, fits | (none_fit & first[None])


def clip_ranges(times, duration, num_clips: int, clip_seconds: float):
    """First and one-past-last input clip ``[B, K, L]`` int32 overlapped by each proposal
    (an empty range when it starts past the last clip)."""
    if clip_seconds > 0:
        clip_len = jnp.full_like(jnp.asarray(duration, jnp.float32), clip_seconds)
    else:
        clip_len = jnp.asarray(duration, jnp.float32) / num_clips
    clip_len = clip_len[:, None, None]
    first_raw = jnp.floor(times[..., 0] / clip_len + 1e-4)
    last = jnp.ceil(times[..., 1] / clip_len - 1e-4)
    first = jnp.clip(first_raw, 0, num_clips - 1).astype(jnp.int32)
    last = jnp.clip(last, 1, num_clips).astype(jnp.int32)
    # A proposal starting past the last input clip overlaps none: an empty range.
    return first, jnp.where(first_raw >= num_clips, first, jnp.maximum(last, first + 1))


def _range_sums(x, first, last):
    """``sum(x[b, first:last])`` along axis 1 for every ``[B, K, L]`` range, by differences of
    a cumulative sum (no loop over proposals): ``[B, K, L, *x.shape[2:]]``."""
    csum = jnp.concatenate([jnp.zeros_like(x[:, :1]), jnp.cumsum(x, axis=1)], axis=1)
    b = x.shape[0]
    take = jax.vmap(lambda a, i: a[i])
    sums = take(csum, last.reshape(b, -1)) - take(csum, first.reshape(b, -1))
    return sums.reshape(first.shape + x.shape[2:])


def proposal_means(video, video_mask, first, last):
    """Mean of the real clips ``[first, last)`` of every proposal: ``([B, K, L, D], count)``."""
    sums = _range_sums(video * video_mask[..., None], first, last)
    counts = _range_sums(video_mask, first, last)
    return sums / jnp.maximum(counts, 1.0)[..., None], counts


def proposal_candidates(duration, video_mask, model_config):
    """Proposal times ``[B, K, L, 2]``, their input-clip ranges ``first, last [B, K, L]`` and
    the candidate mask ``[B, K, L]`` bool: the proposal fits the video and overlaps at least
    one real clip (module docstring, 2).  The one place the candidate rule is written."""
    duration = jnp.asarray(duration, jnp.float32)
    video_mask = jnp.asarray(video_mask, jnp.float32)
    times, fits = proposal_times(duration, model_config)
    first, last = clip_ranges(
        times, duration, video_mask.shape[1], float(model_config.clip_seconds)
    )
    return times, first, last, fits & (_range_sums(video_mask, first, last) > 0)


def l2_normalize(x: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
    """``x / max(||x||, eps)`` along the last axis (PyTorch ``F.normalize``), written with the
    squared norm so that an all-zero row (padding) has a zero gradient, not NaN."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def masked_log_softmax(logits: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """``log softmax`` over the real entries of the last axis; 0 at masked ones (no rescale)."""
    masked = jnp.where(mask > 0, logits, _NEG)
    return jnp.where(mask > 0, jax.nn.log_softmax(masked, axis=-1), 0.0)


ATTENTION_SCALES = ("relative", "softmax")


def attention_log_weights(energy, mask, scale: str) -> jnp.ndarray:
    """Log of the factor eq. 8 multiplies each row by: its softmax weight (``'softmax'``, the
    literal equation) or ``N`` times it (``'relative'``, the default: ``N`` = real rows, so
    uniform attention keeps every row as it is); 0 at masked rows."""
    log_w = masked_log_softmax(energy, mask)
    if scale == "relative":
        count = jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1.0)
        return jnp.where(mask > 0, log_w + jnp.log(count), 0.0)
    if scale != "softmax":
        raise ValueError(f"model.attention_scale must be one of {ATTENTION_SCALES}, got {scale!r}")
    return log_w


def alignment_energy(gx, gy, lx, ly, y_mask):
    """Eq. 7 for every row of ``X``: ``E(x_n, Y) = sum_m tanh(W1 x_n . W2 y_m)`` over the real
    ``y_m``, with ``x_n = exp(lx_n) x0_n``, ``y_m = exp(ly_m) y0_m`` and ``gx = x0 W1``,
    ``gy = y0 W2`` (unit rows projected once).  ``gx [N, A]``, ``gy [M, A]`` -> ``[N]``."""
    dots = gx @ gy.T  # [N, M]
    scale = jnp.exp(lx[:, None] + ly[None, :])
    return jnp.sum(jnp.tanh(scale * dots) * y_mask[None, :], axis=-1)


class DenseAttention(nn.Module):
    """The ``W1, W2`` pair of one Dense Attention unit (eqs. 7-8), bias-free."""

    dim: int

    def setup(self):
        self.w1 = nn.Dense(self.dim, use_bias=False)
        self.w2 = nn.Dense(self.dim, use_bias=False)

    def __call__(self, x, y):
        return self.w1(x), self.w2(y)


class VLANet(nn.Module):
    """VLANet (module docstring).  ``__call__`` returns the positive-pair outputs of the batch
    (video ``i`` with query ``i``) and, in training, the ``[B, B]`` similarity of every video
    with every query (``pair_scores``) for the contrastive loss."""

    feature_dim: int = 4096
    word_dim: int = 300
    vocab_size: int = 0
    gru_hidden: int = 512
    embed_dim: int = 512
    attention_dim: int = 256
    clip_seconds: float = 0.0
    proposal_stride: float = 8 / CHARADES_FPS
    proposal_windows: tuple[float, ...] = DEFAULTS["proposal_windows"]
    max_groups: int = DEFAULTS["max_groups"]
    surrogate: bool = True
    self_attention: bool = True
    cross_attention_steps: int = 3
    attention_scale: str = "relative"
    margin: float = 0.5
    video_negatives: bool = False

    def setup(self):
        if self.vocab_size > 0:
            self.word_embed = nn.Embed(self.vocab_size, self.word_dim)
        self.gru = RNNLayer(self.gru_hidden, "gru", bidirectional=False)
        self.query_fc = nn.Dense(self.embed_dim)
        self.video_fc = nn.Dense(self.embed_dim)
        self.v2v = DenseAttention(self.attention_dim)
        self.q2q = DenseAttention(self.attention_dim)
        self.cross = [DenseAttention(self.attention_dim) for _ in range(self.cross_attention_steps)]
        self.similarity = DenseAttention(self.attention_dim)

    # -- encoders ---------------------------------------------------------------------------
    def encode_queries(self, batch) -> dict[str, jnp.ndarray]:
        """Eq. 1 and everything of CCA that needs only the query: unit word features ``words
        [B, M, D]``, ``mask``, ``last`` (``w_M``), the Q2Q log-scales ``log_scale [B, M]`` and
        the projections of the words for the cross and similarity units."""
        embed = self.word_embed if self.vocab_size > 0 else None
        words, mask, lengths = common.query_inputs(batch, embed)
        states, _ = self.gru(words, lengths)
        q = l2_normalize(self.query_fc(states)) * mask[..., None]
        last = jnp.take_along_axis(q, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]
        log_scale = jnp.zeros(mask.shape, jnp.float32)
        if self.self_attention:
            g1, g2 = self.q2q(q, q)
            energy = jax.vmap(alignment_energy)(g1, g2, log_scale, log_scale, mask)
            log_scale = log_scale + attention_log_weights(energy, mask, self.attention_scale)
        # Cross unit t attends V with Q when t is even (Q is Y: W2), Q with V when odd (W1).
        proj = []
        for t, unit in enumerate(self.cross):
            proj.append(unit.w2(q) if t % 2 == 0 else unit.w1(q))
        return {
            "words": q,
            "mask": mask,
            "last": last,
            "log_scale": log_scale,
            "cross": proj,
            "similarity": self.similarity.w2(q),
        }

    def encode_videos(self, batch) -> dict[str, jnp.ndarray]:
        """Eq. 2 for every proposal: unit features ``proposals [B, K * L, D]``, ``times [B, K *
        L, 2]``, candidate ``mask [B, K * L]`` and the projections the attention units apply
        to ``V`` (per proposal, gathered per pair after the surrogate selection)."""
        video = batch["video_features"].astype(jnp.float32)
        video_mask = batch["video_mask"].astype(jnp.float32)
        times, first, last, candidates = proposal_candidates(batch["duration"], video_mask, self)
        means, _ = proposal_means(video, video_mask, first, last)
        mask = candidates.astype(jnp.float32)
        feats = l2_normalize(self.video_fc(means)) * mask[..., None]
        b = video.shape[0]
        feats = feats.reshape(b, -1, self.embed_dim)
        proj = []
        for t, unit in enumerate(self.cross):
            proj.append(unit.w1(feats) if t % 2 == 0 else unit.w2(feats))
        g1, g2 = self.v2v(feats, feats)
        return {
            "proposals": feats,
            "times": times.reshape(b, -1, 2),
            "mask": mask.reshape(b, -1),
            "v2v": (g1, g2),
            "cross": proj,
        }

    # -- one video-query pair ---------------------------------------------------------------
    def _pair(self, video, query) -> dict[str, jnp.ndarray]:
        """Eqs. 3-12 for one video (leaves without batch axis) and one query: pure array code
        (vmapped over pairs); eq. 13 follows in :meth:`_similarity`."""
        num_l = len(self.proposal_windows)
        cand = video["mask"]  # [K * L]
        cosine = video["proposals"] @ query["last"]  # eq. 3, [K * L]
        if self.surrogate:
            grid = jnp.where(cand > 0, cosine, _NEG).reshape(-1, num_l)  # [K, L]
            best = jnp.argmax(grid, axis=-1)  # eq. 4
            index = jnp.arange(grid.shape[0]) * num_l + best  # eq. 5: s_k = p_{l0 k}
            v_mask = jnp.any(cand.reshape(-1, num_l) > 0, axis=-1).astype(jnp.float32)
        else:
            index = jnp.arange(cand.shape[0])
            v_mask = cand
        lv = jnp.zeros(index.shape, jnp.float32)
        lq = query["log_scale"]
        q_mask = query["mask"]
        if self.self_attention:  # eq. 9 (eq. 10 is in encode_queries)
            g1, g2 = video["v2v"]
            energy = alignment_energy(g1[index], g2[index], lv, lv, v_mask)
            lv = lv + attention_log_weights(energy, v_mask, self.attention_scale)
        last_q2v = jnp.zeros_like(lv)
        for t in range(self.cross_attention_steps):
            gv, gq = video["cross"][t][index], query["cross"][t]
            if t % 2 == 0:  # eq. 11: V <- A(V, Q)
                energy = alignment_energy(gv, gq, lv, lq, q_mask)
                last_q2v = attention_log_weights(energy, v_mask, self.attention_scale)
                lv = lv + last_q2v
            else:  # eq. 12: Q <- A(Q, V)
                energy = alignment_energy(gq, gv, lq, lv, v_mask)
                lq = lq + attention_log_weights(energy, q_mask, self.attention_scale)
        # v_comp = sum_n V_n = weights @ proposals, the weights scattered back onto the
        # proposals (no [N, D] gather per pair).
        weights = jnp.zeros(cand.shape, jnp.float32).at[index].add(jnp.exp(lv) * v_mask)
        return {
            "weights": weights,
            "query_log_scale": lq,
            "index": index,
            "element_mask": v_mask,
            "attention": lv,
            "q2v_attention": last_q2v,
            "cosine": cosine,
        }

    def _similarity(self, weights, proposals, query_log_scale, query) -> jnp.ndarray:
        """Eq. 13, ``c = E(v_comp, Q)``, for pairs: ``weights [..., K * L]`` over the
        ``proposals [..., K * L, D]`` of each pair's video, ``query_log_scale [..., M]``;
        ``query`` leaves broadcast against the pair axes."""
        v_comp = jnp.einsum("...p,...pd->...d", weights, proposals)
        gx = self.similarity.w1(v_comp)  # [..., A]
        dots = jnp.einsum("...a,...ma->...m", gx, query["similarity"])
        terms = jnp.tanh(jnp.exp(query_log_scale) * dots) * query["mask"]
        return jnp.sum(terms, axis=-1)

    def pair_scores(self, videos, queries) -> jnp.ndarray:
        """``c [Bv, Bq]`` of every video with every query."""
        pairs = jax.vmap(jax.vmap(self._pair, in_axes=(None, 0)), in_axes=(0, None))(
            videos, queries
        )
        return self._similarity(
            pairs["weights"],
            videos["proposals"][:, None],
            pairs["query_log_scale"],
            {k: queries[k][None] for k in ("similarity", "mask")},
        )

    def __call__(self, batch, *, train: bool = False) -> dict[str, jnp.ndarray]:
        videos = self.encode_videos(batch)
        queries = self.encode_queries(batch)
        pos = jax.vmap(self._pair)(videos, queries)
        out = {
            "score": self._similarity(
                pos["weights"], videos["proposals"], pos["query_log_scale"], queries
            ),
            "attention": pos["attention"],
            "q2v_attention": pos["q2v_attention"],
            "element_index": pos["index"],
            "element_mask": pos["element_mask"],
            "cosine": pos["cosine"],
            "times": videos["times"],
            "candidates": videos["mask"],
        }
        if train:
            out["pair_scores"] = self.pair_scores(videos, queries)
        return out


def check_group_coverage(model_config) -> None:
    """A ConfigError when ``max_groups`` groups drop candidate proposals of a video as long as
    ``model_config.longest_video_s`` (module docstring, 2; 0 or absent: no check)."""
    longest = float(model_config.get("longest_video_s", 0.0) or 0.0)
    if longest <= 0:
        return
    stride = float(model_config["proposal_stride"])
    windows = tuple(float(w) for w in model_config["proposal_windows"])
    groups = int(model_config["max_groups"])
    needed = groups_to_cover(longest, stride, windows)
    if groups < needed:
        covered = covered_seconds(groups, stride, windows)
        raise ConfigError(
            f"config.model.max_groups={groups} with proposal_stride="
            f"{stride:g} s and proposal_windows={windows} covers videos shorter than "
            f"{covered:.2f} s, but config.model.longest_video_s={longest:g}: longer videos "
            f"would lose proposals; set max_groups >= {needed} (or use the config file's "
            "stride / windows arguments, which size it)"
        )


def create_model(model_config) -> VLANet:
    """``VLANet`` from ``config.model`` (fields of a ``VARIANTS`` entry; ``name`` ignored),
    after :func:`check_group_coverage`."""
    check_group_coverage(model_config)
    fields = {k: v for k, v in dict(model_config).items() if k in VLANet.__dataclass_fields__}
    if "proposal_windows" in fields:
        fields["proposal_windows"] = tuple(float(w) for w in fields["proposal_windows"])
    return VLANet(**fields)


def negative_mask(batch) -> jnp.ndarray:
    """``[B, B]`` 1 where query ``j`` is a negative for video ``i``: another video
    (``video_index``) and both rows real (``valid``)."""
    if "video_index" not in batch:
        raise KeyError(
            "VLANet's contrastive loss needs the batch key 'video_index' (the query's video row, "
            "from data_pipelines.input_pipeline) to keep a video's own queries out of its "
            "negatives"
        )
    vid = batch["video_index"]
    valid = batch.get("valid", jnp.ones(vid.shape, jnp.float32)).astype(jnp.float32)
    other = (vid[:, None] != vid[None, :]).astype(jnp.float32)
    return other * valid[:, None] * valid[None, :]


def loss_fn(
    outputs, batch, model_config, *, step=None, steps_per_epoch=None
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Eq. 14 as reconstructed (module docstring, 5): hinge ``max(0, Δ - c(V, Q+) + c(V, Q-))``
    averaged over each video's negative queries, then over the videos that have one; with
    ``video_negatives`` the same over each query's negative videos is added.  Reads no span."""
    del step, steps_per_epoch  # no epoch schedule in this loss
    scores = outputs["pair_scores"]  # [B, B]: video i, query j
    pos = jnp.diagonal(scores)
    neg = negative_mask(batch)
    margin = float(model_config.margin)

    def ranking(pos_, scores_, neg_):  # per anchor row: mean hinge over its negatives
        hinge = jax.nn.relu(margin - pos_[:, None] + scores_) * neg_
        count = jnp.sum(neg_, axis=1)
        has = (count > 0).astype(jnp.float32)
        per_row = jnp.sum(hinge, axis=1) / jnp.maximum(count, 1.0)
        return jnp.sum(per_row * has) / jnp.maximum(jnp.sum(has), 1.0)

    loss_query = ranking(pos, scores, neg)
    parts = {"loss_query": loss_query}
    loss = loss_query
    if bool(model_config.get("video_negatives", False)):
        loss_video = ranking(pos, scores.T, neg.T)
        parts["loss_video"] = loss_video
        loss = loss + loss_video
    valid = batch.get("valid", jnp.ones(pos.shape, jnp.float32)).astype(jnp.float32)
    parts["score_positive"] = jnp.sum(pos * valid) / jnp.maximum(jnp.sum(valid), 1.0)
    parts["score_negative"] = jnp.sum(scores * neg) / jnp.maximum(jnp.sum(neg), 1.0)
    return loss, parts


def proposal_scores(outputs) -> jnp.ndarray:
    """Ranking score of every proposal ``[B, K * L]`` (module docstring, 6): surrogates
    ``1 + strength``, other candidates ``(1 + cos) / 2``, non-candidates ``-inf``."""
    lv, index, element_mask = (
        outputs["attention"],
        outputs["element_index"],
        outputs["element_mask"],
    )
    strength = jnp.exp(masked_log_softmax(lv, element_mask)) * element_mask
    candidates = outputs["candidates"]
    b, p = candidates.shape
    rows = jnp.arange(b)[:, None]
    is_element = jnp.zeros((b, p), bool).at[rows, index].max(element_mask > 0)
    element_score = jnp.zeros((b, p), jnp.float32).at[rows, index].add(1.0 + strength)
    score = jnp.where(is_element, element_score, 0.5 * (1.0 + outputs["cosine"]))
    return jnp.where(candidates > 0, score, -jnp.inf)


def decode(outputs, batch, model_config) -> dict[str, jnp.ndarray]:
    """Moment list: every proposal's ``[start, end]`` seconds ``moments [B, K * L, 2]`` and
    its ``moment_scores [B, K * L]`` (:func:`proposal_scores`)."""
    del batch, model_config
    return {"moments": outputs["times"], "moment_scores": proposal_scores(outputs)}


def candidate_proposals(batch, model_config) -> tuple[np.ndarray, np.ndarray]:
    """:func:`proposal_candidates` of a batch (its ``duration`` and ``video_mask``; no model
    parameters) as host arrays: the candidate mask ``[B, K * L]`` and the times ``[B, K * L,
    2]`` seconds."""
    times, _, _, candidates = proposal_candidates(
        batch["duration"], batch["video_mask"], model_config
    )
    b = candidates.shape[0]
    return np.asarray(candidates.reshape(b, -1)), np.asarray(times.reshape(b, -1, 2))


def example_batch(model_config, batch_size: int = 1, query_len: int = 10) -> dict[str, np.ndarray]:
    """Zeros with the shapes and dtypes VLANet reads (initialisation, benchmarks): as many
    input clips as the longest proposal grid needs at ``clip_seconds`` (64 resampled clips
    when 0), a video as long as the grid, no span."""
    stride = float(model_config.proposal_stride)
    span = stride * (int(model_config.max_groups) - 1) + max(model_config.proposal_windows)
    clip = float(model_config.clip_seconds)
    t = math.ceil(span / clip - 1e-6) if clip > 0 else 64
    batch = common.zero_batch(model_config, batch_size, query_len, t, span)
    batch["video_index"] = np.arange(batch_size, dtype=np.int32)
    return batch


FAMILY = Family(
    name="vlanet",
    create_model=create_model,
    variants=VARIANTS,
    task="svmr",
    output="moment_list",
    example_batch=example_batch,
    loss_fn=loss_fn,
    decode=decode,
    supervision=("weak",),
    candidate_moments=candidate_proposals,
)
