"""FVMR: Fast Video Moment Retrieval (Gao & Xu, ICCV 2021).

Paper: shared/papers/001_c4c595ef28d44908.txt (section 3; implementation details of 4.1).
There is no public code; where the paper is silent the detail comes from the code FVMR builds
on (microsoft/2D-TAN for the proposal map, labels and loss; HGR, the paper's [11], for the
node embeddings), and every such choice is listed below.

The idea: moments and queries meet in a *common space*.  At test time a query costs one text
encoding plus a dot product with every precomputed moment feature (eq. 6); the richer
cross-modal score ``q`` of a semantic-role-tree teacher is used only in training, where it is
distilled into ``p`` (eq. 9).  Channels-last throughout; ``C`` = valid cells of the sparse
2D-TAN map, in ``moment_map.valid_cells`` order.

1. Video encoder (eq. 1; 4.1 "we follow [65] to generate moment proposals, organised as a 2D
   feature map ... two convolutional layers ... kernel sizes 5 and 3 ... batch norm after each
   convolution ... Tanh").  From 2D-TAN: frame layer ``1x1 conv D -> H + ReLU`` and average
   pooling with kernel = stride = ``frame_stride``; proposal features by max-pooling the clips
   of every cell (2D-TAN's SparsePropMaxPool, the variant of its TACoS/ActivityNet configs);
   the valid cells are 2D-TAN's sparse rule (``pooling_counts``).  Then ``conv5 -> BN -> tanh
   -> conv3 -> BN -> tanh`` on the map.  *Choices:* the convs keep the map size (padding
   ``k // 2``) and, as 2D-TAN's map convs, only valid cells carry features (outputs are
   masked), so they run on the valid cells (``layers.map_conv.sparse_group_conv``, exact);
   BatchNorm statistics are taken over the valid cells (the invalid ones are not moments),
   over the whole global batch (``bn_groups = 1``, the default: the paper names no GPU count
   and there is no official run to match; ``bn_groups = G`` takes them per chunk of the batch
   as ``nn.DataParallel`` on G GPUs would, ``layers.batch_norm``).
2. Text encoder (eq. 2): a 300-d word table over ``query_tokens``, a 2-layer Bi-LSTM,
   ``s = w_1 + w_L``.  Word table (4.1 "we set the word embedding size as 300 and
   *initialize* it with the pretrained Glove embeddings"): initialised, hence trained, so
   ``model.word_embed = 'glove'`` (the benchmark configs) is a ``vocab_size x 300`` table
   whose rows start as the run's GloVe vectors and are updated by every loss term.  The
   pipeline's ``text_mode='glove'`` gives the words' ids in the GloVe vocabulary
   (``query_tokens``, beside the vectors ``query_features`` that other families read) and
   sizes ``vocab_size`` to that vocabulary (``text_inputs.resolve_model_vocab``);
   :func:`init_params` (the ``Family.init_params`` seam, called by the trainer when it
   creates a state, never on restore) copies ``TextInputs.embeddings`` into the table:
   ``<pad>`` zero, ``<unk>`` and words outside the GloVe file as ``data.glove_missing`` says.
   The trained table lives in the checkpoint, so eval and ``vmr-jax predict`` use the trained
   rows; a free-text word outside the training vocabulary reads the ``<unk>`` row
   (``predictor.encode_texts``).  ``model.freeze_word_embed = True`` (config argument
   ``frozen_embed``; not in the paper) keeps the GloVe rows: :func:`trainable` marks the
   table, so ``optimizers.freeze_untrainable`` gives it zero updates and no weight decay.
   ``word_embed = 'input'`` (the ``tiny`` variant, the synthetic benchmark): the word vectors
   of the batch as given (``query_features``: the synthetic benchmark's noisy vectors, or
   GloVe as fixed data), or a randomly initialised table when ``vocab_size > 0``
   (``text_mode='tokens'``, the ``tiny`` config argument).  *Choice:* one table feeds both
   the student's Bi-LSTM and the teacher's GRU (item 3): the paper names one word embedding
   and says only that the teacher's node embeddings are built "similar to [11]" (HGR), so
   ``L_ce(q)`` trains the same word rows the student reads, as it trains the shared video
   encoder (3.3: the video encoder and ``phi_m`` "shared for both").  *Choice:* 256 units per
   direction, so that ``w_l = fwd || bwd`` has the paper's ``D_s = 512`` (4.1 "512 hidden
   units", "D_s ... set to 512"); the backward pass starts at each query's last word (packed
   sequence).
3. Fine-grained semantic extractor (eqs. 3-5), on the semantic role tree of the batch keys
   ``tree_verbs [B, Nv, 2]``, ``tree_nouns [B, Nn, 2]`` (inclusive word spans, -1 = absent) and
   ``tree_edges [B, Nv, Nn]`` (``text.semantic_tree``; at most 4 verbs and 6 nouns).  Node
   embeddings as in HGR [11] (the paper: "similar to [11], we utilize a GRU"): a Bi-GRU (256
   per direction, ``D_f = 512``) over the words; a verb or noun node is the mean of the GRU
   states over its span; the global node ``g_s`` is the attention-pooled sentence (a Linear
   scores every word, softmax over the real words), HGR's sentence embedding.  Eq. 3 with
   separate ``W_top, W_low, W_alpha`` for the two levels (s -> v and v -> n; the paper names
   one set, but the two levels relate different node types); ``W_*`` are bias-free as written.
   ``alpha^(v)_k = W_alpha(tanh([W_top g_s || W_low g^(v)_k]))``, ``a^(v) = softmax(alpha^(v))``
   over the verbs, ``g_hat^(v) = sum_k a^(v)_k g^(v)_k``; ``alpha^(n)_k = W_alpha'(tanh([W_top'
   g_hat^(v) || W_low' g^(n)_k]))``.  Eq. 4: ``b_i = softmax([alpha^(v)_i, alpha^(n)_j for the
   nouns j linked to verb i])``, ``h_i = b_i0 g^(v)_i + sum_j b_ij g^(n)_j``.  Eq. 5:
   ``u = g_s * mean_i h_i``.
4. Common space (eqs. 6-7): ``phi_m, phi_s, phi_u`` = MLPs with one hidden layer of 512 and
   output ``D = 512``.  *Choice:* ReLU between the layers.  ``p = phi_m(m)^T phi_s(s)``;
   ``q = phi_fuse(phi_m(m) * phi_u(u))`` with ``phi_fuse`` = a 3x3 conv (D -> D, ReLU) and a
   9x9 gated conv [58] to one channel, ``conv_f(x) * sigmoid(conv_g(x))``.  *Choice:* the gated
   conv's feature branch is linear (no activation), so that ``q`` is an unbounded logit like
   ``p``; both convs run on the valid cells as above.
5. Loss (eqs. 8-10).  ``p`` and ``q`` are logits (eqs. 6-7 are unbounded dot products/convs,
   while eq. 8 takes logs of probabilities): eq. 8 is the BCE of ``sigmoid(p)`` (as 2D-TAN
   does), computed in the stable logit form, averaged over the valid cells.  Labels:
   ``y = clip((IoU - o_min) / (o_max - o_min), 0, 1)`` with ``o_min = 0.3, o_max = 0.7`` (the
   paper's formula is garbled in our copy and swaps the two names; this is 2D-TAN's scaled
   IoU with the paper's thresholds), first ground-truth span.  Eq. 9 literally:
   ``L_dis = L_ce(softmax(p / T), softmax(q / T))``, eq. 8 applied with the teacher's softmax
   over the valid cells as target, ``q`` under ``stop_gradient``; logs clamped at -100 as
   PyTorch's BCE does.  ``L = L_ce(p) + L_ce(q) + lambda * L_dis`` with ``lambda = 3``,
   ``T = 1``, no distillation in the first ``distill_start_epoch = 8`` epochs
   (``distill_weight = 0`` is the paper's "w/o SD" ablation: ``L_ce(q)`` still trains).
6. Inference (section 3.3): only ``p``; ``decode`` ranks ``sigmoid(p)``.
   ``inference_score = 'p+q'`` is Table 5's "FVMR (p + q)" row ("employs the average of p and
   q as the final results"; config argument ``pq``): the mean of the two probabilities,
   training unchanged; it needs the tree at test time, which the eval pipeline gives
   (``data.semantic_tree``) and a free-text query does not (``decode`` raises; the gallery of
   ``vmr-jax predict`` ranks ``p`` whatever ``inference_score`` says).  Table 5's
   other rows: "w/o SD" is ``distill_weight = 0`` (argument ``wo_sd``); "+FeatDist" (a
   feature distillation between ``u`` and ``s`` whose loss the paper does not give) and
   "HGR" (another model) are not built.

Methods for the gallery (``retrieval/gallery.py``): ``encode_moments(batch) -> phi_m(m)
[B, C, D]`` (video path only, eval-mode BatchNorm) and ``encode_queries(batch) -> phi_s(s)
[B, D]``; ``p = <query, moment>``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vmr_jax.errors import UserError
from vmr_jax.layers.batch_norm import MapBatchNorm
from vmr_jax.layers.map_conv import sparse_group_conv
from vmr_jax.layers.recurrent import StackedRNN
from vmr_jax.models import common
from vmr_jax.models.family import Family
from vmr_jax.models.mgpn import _torch_uniform, cell_targets
from vmr_jax.ops import moment_map

TREE_KEYS = ("tree_verbs", "tree_nouns", "tree_edges")

DEFAULTS = dict(
    feature_dim=4096,
    num_clips=16,
    frame_stride=16,
    pooling_counts=(15,),
    hidden=512,
    video_kernels=(5, 3),
    word_dim=300,
    vocab_size=0,
    lstm_hidden=256,
    lstm_layers=2,
    node_hidden=256,
    mlp_hidden=512,
    embed_dim=512,
    fuse_kernels=(3, 9),
    max_verbs=4,
    max_nouns=6,
    min_iou=0.3,
    max_iou=0.7,
    distill_weight=3.0,
    temperature=1.0,
    distill_start_epoch=8,
    inference_score="p",
    conv_chunk=128,
    bn_groups=1,
    word_embed="glove",
    freeze_word_embed=False,
)

VARIANTS: dict[str, dict[str, Any]] = {
    # Charades-STA, VGG16 features as 2D-TAN: 256 sampled clips pooled by 16 to a 16x16 map.
    "charades_vgg": dict(DEFAULTS),
    # Charades-STA with I3D features (1024-d), same map.
    "charades_i3d": dict(DEFAULTS, feature_dim=1024),
    # Charades-STA with C3D fc6 features (4096-d; Table 4's C3D row), same map.
    "charades_c3d": dict(DEFAULTS),
    # TACoS, C3D: 2D-TAN's 128x128 map (NUM_SCALE_LAYERS [16, 8, 8, 8]).
    "tacos": dict(DEFAULTS, num_clips=128, frame_stride=2, pooling_counts=(15, 8, 8, 8)),
    # ActivityNet Captions, C3D (500-d PCA): 2D-TAN's 64x64 map ([16, 8, 8]).
    "activitynet": dict(
        DEFAULTS, feature_dim=500, num_clips=64, frame_stride=4, pooling_counts=(15, 8, 8)
    ),
    # Small and fast, for tests and the synthetic benchmark.
    "tiny": dict(
        DEFAULTS,
        feature_dim=32,
        num_clips=16,
        frame_stride=2,
        pooling_counts=(8, 4),
        hidden=64,
        video_kernels=(5, 3),
        word_dim=32,
        lstm_hidden=32,
        lstm_layers=2,
        node_hidden=32,
        mlp_hidden=64,
        embed_dim=64,
        distill_start_epoch=1,
        word_embed="input",
    ),
}


class CellConv(nn.Module):
    """A k x k conv (padding k // 2, bias) of a map that is zero outside the valid cells,
    evaluated at the valid cells: ``[B, C, ch] -> [B, C, features]``."""

    features: int
    kernel: int
    starts: Any
    ends: Any
    num_clips: int
    chunk: int

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1] * self.kernel * self.kernel
        init = _torch_uniform(fan_in)
        w = self.param("kernel", init, (self.kernel, self.kernel, x.shape[-1], self.features))
        b = self.param("bias", init, (self.features,))
        cells = (self.starts, self.ends)
        y = sparse_group_conv(x, w, cells, cells, self.num_clips, self.kernel // 2, 1, self.chunk)
        return y + b


class MLP(nn.Module):
    """``Linear -> ReLU -> Linear`` (one hidden layer), PyTorch default init."""

    hidden: int
    features: int

    @nn.compact
    def __call__(self, x):
        init = _torch_uniform(x.shape[-1])
        x = nn.Dense(self.hidden, kernel_init=init, bias_init=init, name="fc1")(x)
        init = _torch_uniform(self.hidden)
        return nn.Dense(self.features, kernel_init=init, bias_init=init, name="fc2")(jax.nn.relu(x))


class LevelAttention(nn.Module):
    """Eq. 3 for one level of the tree: ``alpha_k = W_alpha tanh([W_top top || W_low low_k])``.

    ``top [B, D]``, ``low [B, K, D]`` -> scores ``[B, K]``.
    """

    @nn.compact
    def __call__(self, top, low):
        d = low.shape[-1]
        init = _torch_uniform(d)
        w_top = nn.Dense(d, use_bias=False, kernel_init=init, name="w_top")(top)
        w_low = nn.Dense(d, use_bias=False, kernel_init=init, name="w_low")(low)
        joint = jnp.concatenate([jnp.broadcast_to(w_top[:, None], w_low.shape), w_low], -1)
        alpha = nn.Dense(1, use_bias=False, kernel_init=_torch_uniform(2 * d), name="w_alpha")(
            jnp.tanh(joint)
        )
        return alpha[..., 0]


def _masked_softmax(scores, mask, axis=-1):
    scores = jnp.where(mask, scores, -1e30)
    weights = jax.nn.softmax(scores, axis=axis)
    return jnp.where(mask, weights, 0.0)


def span_means(states: jnp.ndarray, spans: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mean of ``states [B, L, D]`` over each inclusive word span ``spans [B, K, 2]``.

    Returns ``(nodes [B, K, D], present [B, K] bool)``; absent nodes (``-1``) are zeros.
    """
    pos = jnp.arange(states.shape[1])
    first, last = spans[..., 0:1], spans[..., 1:2]  # [B, K, 1]
    inside = ((pos >= first) & (pos <= last) & (first >= 0)).astype(states.dtype)  # [B, K, L]
    count = jnp.sum(inside, axis=-1, keepdims=True)
    nodes = jnp.einsum("bkl,bld->bkd", inside, states) / jnp.maximum(count, 1.0)
    return nodes, count[..., 0] > 0


class FVMR(nn.Module):
    """FVMR over the sparse 2D proposal map.  Fields: see ``VARIANTS``."""

    feature_dim: int = 4096
    num_clips: int = 16
    frame_stride: int = 16
    pooling_counts: tuple[int, ...] = (15,)
    hidden: int = 512
    video_kernels: tuple[int, ...] = (5, 3)
    word_dim: int = 300
    vocab_size: int = 0
    lstm_hidden: int = 256
    lstm_layers: int = 2
    node_hidden: int = 256
    mlp_hidden: int = 512
    embed_dim: int = 512
    fuse_kernels: tuple[int, int] = (3, 9)
    max_verbs: int = 4
    max_nouns: int = 6
    min_iou: float = 0.3
    max_iou: float = 0.7
    distill_weight: float = 3.0
    temperature: float = 1.0
    distill_start_epoch: int = 8
    inference_score: str = "p"
    conv_chunk: int = 128
    bn_groups: int = 1

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        return moment_map.valid_cells(self.num_clips, tuple(self.pooling_counts))

    def setup(self):
        starts, ends = self.cells()
        n, h = self.num_clips, self.hidden
        init = _torch_uniform(self.feature_dim)
        self.frame_conv = nn.Dense(h, kernel_init=init, bias_init=init)
        self.video_convs = [
            CellConv(h, k, starts, ends, n, self.conv_chunk) for k in self.video_kernels
        ]
        self.video_bns = [MapBatchNorm(self.bn_groups) for _ in self.video_kernels]
        if self.vocab_size > 0:
            self.word_embed = nn.Embed(self.vocab_size, self.word_dim)
        self.text_lstm = StackedRNN(self.lstm_hidden, self.lstm_layers, "lstm", True)
        self.node_gru = StackedRNN(self.node_hidden, 1, "gru", True)
        self.word_attention = nn.Dense(
            1, kernel_init=_torch_uniform(2 * self.node_hidden), bias_init=_torch_uniform(1)
        )
        self.verb_attention = LevelAttention()
        self.noun_attention = LevelAttention()
        self.phi_m = MLP(self.mlp_hidden, self.embed_dim)
        self.phi_s = MLP(self.mlp_hidden, self.embed_dim)
        self.phi_u = MLP(self.mlp_hidden, self.embed_dim)
        k3, k9 = self.fuse_kernels
        self.fuse_conv = CellConv(self.embed_dim, k3, starts, ends, n, self.conv_chunk)
        self.fuse_gated = CellConv(2, k9, starts, ends, n, self.conv_chunk)

    # -- video path -------------------------------------------------------------------------
    def moment_features(self, batch, *, train: bool = False) -> jnp.ndarray:
        """Eq. 1: proposal features ``m [B, C, H]`` of the valid cells."""
        starts, ends = self.cells()
        n = self.num_clips
        video = batch["video_features"].astype(jnp.float32)
        b, t, _ = video.shape
        if t != n * self.frame_stride:
            raise ValueError(
                f"video_features has {t} clips; FVMR with num_clips={n} and "
                f"frame_stride={self.frame_stride} needs {n * self.frame_stride}"
            )
        frame = jax.nn.relu(self.frame_conv(video))
        frame = frame.reshape(b, n, self.frame_stride, -1).mean(axis=2)  # [B, N, H]
        x = moment_map.span_max_cells(frame, starts, ends)  # [B, C, H]
        for conv, bn in zip(self.video_convs, self.video_bns):
            y = conv(x)
            y = bn(y, train=train)
            x = jnp.tanh(y)
        return x

    def encode_moments(self, batch, *, train: bool = False) -> jnp.ndarray:
        """Gallery entries ``phi_m(m) [B, C, D]``."""
        return self.phi_m(self.moment_features(batch, train=train))

    # -- text path --------------------------------------------------------------------------
    def _words(self, batch):
        return common.query_inputs(batch, self.word_embed if self.vocab_size > 0 else None)

    def sentence_feature(self, batch) -> jnp.ndarray:
        """Eq. 2: ``s = w_1 + w_L`` of the Bi-LSTM ``[B, D_s]``."""
        words, _, lengths = self._words(batch)
        w, _ = self.text_lstm(words, lengths)
        last = jnp.take_along_axis(w, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]
        return w[:, 0] + last

    def encode_queries(self, batch) -> jnp.ndarray:
        """Query embeddings ``phi_s(s) [B, D]``: all a query costs at test time (TE)."""
        return self.phi_s(self.sentence_feature(batch))

    def semantic_feature(self, batch) -> jnp.ndarray:
        """Eqs. 3-5: the fine-grained semantic feature ``u [B, D_f]`` from the role tree."""
        missing = [k for k in TREE_KEYS if k not in batch]
        if missing:
            raise KeyError(
                f"FVMR's semantic extractor needs the batch keys {missing}: set "
                "config.data.semantic_tree ('spacy' or 'synthetic')"
            )
        words, mask, lengths = self._words(batch)
        states, _ = self.node_gru(words, lengths)  # [B, L, D_f]
        word_scores = self.word_attention(states)[..., 0]
        g_s = jnp.einsum("bl,bld->bd", _masked_softmax(word_scores, mask > 0), states)
        g_v, has_v = span_means(states, batch["tree_verbs"])  # [B, Nv, D_f]
        g_n, has_n = span_means(states, batch["tree_nouns"])  # [B, Nn, D_f]
        alpha_v = self.verb_attention(g_s, g_v)  # [B, Nv]
        g_hat_v = jnp.einsum("bk,bkd->bd", _masked_softmax(alpha_v, has_v), g_v)
        alpha_n = self.noun_attention(g_hat_v, g_n)  # [B, Nn]
        linked = (batch["tree_edges"] > 0) & has_n[:, None, :] & has_v[:, :, None]
        scores = jnp.concatenate(
            [alpha_v[..., None], jnp.broadcast_to(alpha_n[:, None, :], linked.shape)], -1
        )  # [B, Nv, 1 + Nn]
        b = _masked_softmax(scores, jnp.concatenate([has_v[..., None], linked], -1))
        h = b[..., :1] * g_v + jnp.einsum("bvn,bnd->bvd", b[..., 1:], g_n)  # [B, Nv, D_f]
        num_v = jnp.maximum(jnp.sum(has_v, axis=1, keepdims=True), 1).astype(h.dtype)
        return g_s * jnp.sum(h, axis=1) / num_v

    def teacher_logits(self, moments: jnp.ndarray, batch) -> jnp.ndarray:
        """Eq. 7: ``q = phi_fuse(phi_m(m) * phi_u(u))`` ``[B, C]``."""
        u = self.phi_u(self.semantic_feature(batch))
        x = jax.nn.relu(self.fuse_conv(moments * u[:, None, :]))
        gated = self.fuse_gated(x)
        return gated[..., 0] * jax.nn.sigmoid(gated[..., 1])

    def __call__(self, batch: dict[str, jnp.ndarray], *, train: bool) -> dict[str, jnp.ndarray]:
        starts, ends = self.cells()
        moments = self.encode_moments(batch, train=train)  # [B, C, D]
        query = self.encode_queries(batch)  # [B, D]
        p = jnp.einsum("bcd,bd->bc", moments, query)
        outputs = {
            "p_logits": p,
            "score_map": moment_map.scatter_cells(p, starts, ends, self.num_clips),
        }
        if all(k in batch for k in TREE_KEYS):
            outputs["q_logits"] = self.teacher_logits(moments, batch)
        return outputs


def create_model(model_config) -> FVMR:
    """``FVMR`` from ``config.model`` (fields of a ``VARIANTS`` entry; ``name`` ignored)."""
    fields = {k: v for k, v in dict(model_config).items() if k in FVMR.__dataclass_fields__}
    for key in ("pooling_counts", "video_kernels", "fuse_kernels"):
        if key in fields:
            fields[key] = tuple(fields[key])
    return FVMR(**fields)


def _bce_on_probs(log_p, log_1mp, target):
    """PyTorch ``BCELoss`` terms from log-probabilities, logs clamped at -100."""
    return -(target * jnp.maximum(log_p, -100.0) + (1 - target) * jnp.maximum(log_1mp, -100.0))


def distillation_loss(p_logits, q_logits, temperature: float) -> jnp.ndarray:
    """Eq. 9 per example ``[B]``: eq. 8 between ``softmax(p / T)`` and the fixed teacher
    ``softmax(q / T)`` over the valid cells, averaged over the cells."""
    teacher = jax.nn.softmax(jax.lax.stop_gradient(q_logits) / temperature, axis=-1)
    log_p = jax.nn.log_softmax(p_logits / temperature, axis=-1)
    prob = jnp.exp(log_p)
    one_minus = 1.0 - prob
    positive = one_minus > 0  # log(0) is -inf, which PyTorch clamps to -100
    log_1mp = jnp.where(positive, jnp.log(jnp.where(positive, one_minus, 1.0)), -100.0)
    return jnp.mean(_bce_on_probs(log_p, log_1mp, teacher), axis=-1)


def distillation_active(model_config, step, steps_per_epoch) -> jnp.ndarray:
    """1.0 from epoch ``distill_start_epoch`` on (the paper's 8-epoch warm-up), else 0.0."""
    start = int(model_config.distill_start_epoch) * max(int(steps_per_epoch), 1)
    return (jnp.asarray(step) >= start).astype(jnp.float32)


def loss_fn(
    outputs, batch, model_config, *, step=0, steps_per_epoch=1
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Eq. 10: ``L_ce(p, y) + L_ce(q, y) + lambda * L_dis(p, q)``; examples with
    ``valid == 0`` contribute nothing."""
    if "q_logits" not in outputs:
        raise KeyError(
            "FVMR trains its teacher on the semantic role tree, but the batch has no "
            f"{list(TREE_KEYS)}: set config.data.semantic_tree ('spacy' or 'synthetic')"
        )
    p, q = outputs["p_logits"], outputs["q_logits"]
    targets = cell_targets(model_config, batch)
    weight = batch.get("valid", jnp.ones(p.shape[:1], jnp.float32))
    total_weight = jnp.maximum(jnp.sum(weight), 1.0)

    def mean_over_examples(per_example):
        return jnp.sum(per_example * weight) / total_weight

    loss_p = mean_over_examples(jnp.mean(optax.sigmoid_binary_cross_entropy(p, targets), -1))
    loss_q = mean_over_examples(jnp.mean(optax.sigmoid_binary_cross_entropy(q, targets), -1))
    loss_dis = mean_over_examples(distillation_loss(p, q, float(model_config.temperature)))
    lam = float(model_config.distill_weight) * distillation_active(
        model_config, step, steps_per_epoch
    )
    loss = loss_p + loss_q + lam * loss_dis
    return loss, {
        "loss_p": loss_p,
        "loss_q": loss_q,
        "loss_distill": loss_dis,
        "distill_weight": lam,
    }


def decode(outputs, batch, model_config) -> dict[str, jnp.ndarray]:
    """Ranking scores ``sigmoid(p)`` (or the mean with ``sigmoid(q)`` for ``'p+q'``) on the
    dense map, 0 outside the valid cells."""
    n = int(model_config.num_clips)
    starts, ends = moment_map.valid_cells(n, tuple(model_config.pooling_counts))
    probs = jax.nn.sigmoid(outputs["p_logits"])
    mode = model_config.get("inference_score", "p")
    if mode == "p+q":
        if "q_logits" not in outputs:
            raise KeyError(
                "model.inference_score='p+q' scores with the teacher q, which needs the "
                f"semantic role tree {list(TREE_KEYS)} in the batch (config.data.semantic_tree); "
                "free-text queries have none: use inference_score='p'"
            )
        probs = 0.5 * (probs + jax.nn.sigmoid(outputs["q_logits"]))
    elif mode != "p":
        raise ValueError(f"model.inference_score must be 'p' or 'p+q', got {mode!r}")
    return {"score_map": moment_map.scatter_cells(probs, starts, ends, n), "num_clips": n}


def example_tree(batch_size: int, max_verbs: int, max_nouns: int) -> dict[str, np.ndarray]:
    """A one-verb, one-noun tree per query (word 0 the verb, word 1 its argument)."""
    verbs = np.full((batch_size, max_verbs, 2), -1, np.int32)
    nouns = np.full((batch_size, max_nouns, 2), -1, np.int32)
    edges = np.zeros((batch_size, max_verbs, max_nouns), np.float32)
    verbs[:, 0] = 0
    nouns[:, 0] = 1
    edges[:, 0, 0] = 1.0
    return {"tree_verbs": verbs, "tree_nouns": nouns, "tree_edges": edges}


def example_batch(model_config, batch_size: int = 1, query_len: int = 10) -> dict[str, np.ndarray]:
    """Zeros with the shapes and dtypes FVMR reads in training (initialisation, benchmarks)."""
    batch = common.example_batch(model_config, batch_size, query_len)
    batch.update(example_tree(batch_size, int(model_config.max_verbs), int(model_config.max_nouns)))
    return batch


WORD_EMBEDS = ("glove", "input")


def _word_embed(model_config) -> str:
    mode = model_config.get("word_embed", "input")
    if mode not in WORD_EMBEDS:
        raise UserError(f"config.model.word_embed must be one of {WORD_EMBEDS}, got {mode!r}")
    return mode


def resolve_config(config) -> None:
    """Refuses, before any data is read, a word table the text mode cannot feed:
    ``word_embed='glove'`` needs ``data.text_mode='glove'`` (the table's rows are the GloVe
    vocabulary), and ``freeze_word_embed`` needs a table (``'glove'``, or ``'input'`` with
    ``text_mode='tokens'``)."""
    mode = _word_embed(config.model)
    text_mode = config.data.get("text_mode", "tokens")
    if mode == "glove" and text_mode != "glove":
        raise UserError(
            f"config.model.word_embed='glove' (a word table initialised from GloVe) needs "
            f"config.data.text_mode='glove', got {text_mode!r}: set "
            "--config.model.word_embed=input to read the given word vectors or learn a table"
        )
    if config.model.get("freeze_word_embed", False) and mode == "input" and text_mode != "tokens":
        raise UserError(
            "config.model.freeze_word_embed=True but the model has no word table: "
            f"word_embed='input' with text_mode={text_mode!r} reads word vectors as data "
            "(frozen already); use word_embed='glove' with text_mode='glove'"
        )


def init_params(params, model_config, text):
    """``params`` with the word table set to the run's GloVe rows (``word_embed='glove'``):
    row ``i`` = ``text.embeddings[i]``, the vector of vocabulary word ``i`` (``<pad>`` zero,
    ``<unk>`` and words outside the file per ``data.glove_missing``); spare rows past the
    vocabulary keep their random init.  Other modes: ``params`` unchanged."""
    if _word_embed(model_config) != "glove":
        return params
    if text is None or text.embeddings is None:
        raise UserError(
            "config.model.word_embed='glove' initialises the word table from the run's GloVe "
            "vectors, but the run has none (config.data.text_mode must be 'glove')"
        )
    if "word_embed" not in params:
        raise UserError(
            "config.model.word_embed='glove' but the model has no word table: "
            "config.model.vocab_size is 0 (it is sized from the GloVe vocabulary when the data "
            "is read)"
        )
    table = params["word_embed"]["embedding"]
    glove = np.asarray(text.embeddings, np.float32)
    if glove.shape[1] != table.shape[1] or glove.shape[0] > table.shape[0]:
        raise UserError(
            f"GloVe table {tuple(glove.shape)} (vocabulary x dim) does not fit the word table "
            f"{tuple(table.shape)} (config.model.vocab_size x config.model.word_dim)"
        )
    rows = np.asarray(jax.device_get(table), np.float32).copy()
    rows[: glove.shape[0]] = glove
    return {**params, "word_embed": {**params["word_embed"], "embedding": rows}}


def trainable(params, model_config):
    """Every leaf trains, except the word table under ``freeze_word_embed`` (zero updates, no
    weight decay: ``optimizers.freeze_untrainable``)."""
    frozen = bool(model_config.get("freeze_word_embed", False))
    marks = jax.tree.map(lambda _: True, params)
    if frozen and "word_embed" in params:
        marks = {**marks, "word_embed": jax.tree.map(lambda _: False, params["word_embed"])}
    return marks


FAMILY = Family(
    name="fvmr",
    create_model=create_model,
    variants=VARIANTS,
    task="svmr",
    output="score_map",
    example_batch=example_batch,
    loss_fn=loss_fn,
    decode=decode,
    gallery=True,  # phi_m(m) precomputed per video, phi_s(s) per query (retrieval/gallery.py)
    trainable=trainable,
    resolve_config=resolve_config,
    init_params=init_params,
)
