"""retrieval.mining: each query's top videos by a toy family's VR rank score against a NumPy
float64 brute force (ties: lower row first; padding rows of an 8-device mesh never chosen;
``top`` capped at the corpus), and XML's real stages on the synthetic corpus."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines.input_pipeline import PreparedSplit
from data_pipelines.video_tables import InMemoryVideos
from vmr_jax import sharding
from vmr_jax.retrieval import mining

ROOT = Path(__file__).resolve().parents[2]
NUM_VIDEOS, NUM_CLIPS, DIM, NUM_QUERIES, QUERY_LEN = 37, 5, 4, 11, 3


@dataclasses.dataclass(frozen=True)
class ToyStages:
    """Video score = sum over real clips of <query, clip> (query = masked token sum); VR ranks
    by ``-(s - centre)^2``: elementwise but not monotone, so the family's rank order (not the
    raw score's) must be used, and an all-zero padding row (s = 0) would win at centre 0."""

    centre: float = 0.0

    def encode_videos(self, variables, batch):
        return {"feat": batch["video_features"] * variables["scale"], "mask": batch["video_mask"]}

    def encode_queries(self, variables, batch):
        return {"query": (batch["query_features"] * batch["query_mask"][..., None]).sum(1)}

    def score_videos(self, variables, query_enc, video_enc):
        sim = jnp.einsum("qd,vld->qvl", query_enc["query"], video_enc["feat"])
        return (sim * video_enc["mask"][None]).sum(-1)

    def video_rank_scores(self, scores):
        return -((scores - self.centre) ** 2)


def toy_split(integer: bool, seed: int = 0) -> PreparedSplit:
    """Integer features give exact float32 scores (many exact ties); normal ones, distinct."""
    rng = np.random.default_rng(seed)
    draw = (lambda *s: rng.integers(-2, 3, s)) if integer else (lambda *s: rng.normal(size=s))
    lengths = rng.integers(1, NUM_CLIPS + 1, NUM_VIDEOS)
    mask = (np.arange(NUM_CLIPS) < lengths[:, None]).astype(np.float32)
    features = (draw(NUM_VIDEOS, NUM_CLIPS, DIM) * mask[..., None]).astype(np.float32)
    features[7] = features[3]  # identical videos: an exact tie
    mask[7] = mask[3]
    qmask = (np.arange(QUERY_LEN) < rng.integers(1, QUERY_LEN + 1, (NUM_QUERIES, 1))).astype(
        np.float32
    )
    queries = (draw(NUM_QUERIES, QUERY_LEN, DIM) * qmask[..., None]).astype(np.float32)
    return PreparedSplit(
        videos=InMemoryVideos(features, mask, None),
        video_index=rng.integers(0, NUM_VIDEOS, NUM_QUERIES).astype(np.int32),
        video_ids=[f"v{i}" for i in range(NUM_VIDEOS)],
        query={"query_features": queries, "query_mask": qmask},
        query_ids=[f"q{i}" for i in range(NUM_QUERIES)],
        num_truncated=0,
    )


VARIABLES = {"scale": np.float32(1.0)}


def brute_force(split: PreparedSplit, top: int, centre: float = 0.0):
    """float64: every query against every video, sorted by (-rank score, row)."""
    feats = split.videos.features.astype(np.float64)
    mask = split.videos.mask.astype(np.float64)
    q = split.query["query_features"].astype(np.float64)
    q = (q * split.query["query_mask"][..., None]).sum(1)
    rows, scores = [], []
    for query in q:
        s = np.array(
            [
                sum(mask[v, c] * query @ feats[v, c] for c in range(NUM_CLIPS))
                for v in range(NUM_VIDEOS)
            ]
        )
        rank = -((s - centre) ** 2)
        order = sorted(range(NUM_VIDEOS), key=lambda v: (-rank[v], v))[:top]
        rows.append(order)
        scores.append(rank[order])
    return np.asarray(rows), np.asarray(scores)


@pytest.fixture(scope="module")
def one_device_mesh():
    return sharding.make_mesh({"shape": (1, 1)}, devices=jax.devices()[:1])


@pytest.mark.parametrize("integer", [True, False])
def test_mining_matches_brute_force(integer, one_device_mesh):
    split = toy_split(integer)
    found = mining.mine_hard_negatives(
        ToyStages(),
        VARIABLES,
        split,
        one_device_mesh,
        top=6,
        batch_size=4,
        video_batch_size=8,
        block_size=5,
        split="val",
        checkpoint_step=42,
    )
    rows, scores = brute_force(split, 6)
    if integer:  # the videos 3 and 7 tie: whenever both are in a list, 3 comes first
        both = [list(r).index(3) < list(r).index(7) for r in rows if 3 in r and 7 in r]
        assert both and all(both)
    np.testing.assert_array_equal(found.video_rows, rows)
    np.testing.assert_allclose(found.scores, scores, rtol=1e-5, atol=1e-5)
    assert found.video_rows.dtype == np.int32 and found.scores.dtype == np.float32
    assert (found.split, found.top, found.checkpoint_step) == ("val", 6, 42)
    assert found.video_ids == split.video_ids and found.query_ids == split.query_ids


def test_top_is_capped_at_the_corpus(one_device_mesh, caplog):
    split = toy_split(True, seed=1)
    with caplog.at_level(logging.INFO, logger="vmr_jax.retrieval.mining"):
        found = mining.mine_hard_negatives(
            ToyStages(centre=1.0), VARIABLES, split, one_device_mesh, top=100, batch_size=32
        )
    assert "top=100 capped at the 37 videos" in caplog.text
    rows, scores = brute_force(split, NUM_VIDEOS, centre=1.0)
    assert found.top == NUM_VIDEOS and found.video_rows.shape == (NUM_QUERIES, NUM_VIDEOS)
    np.testing.assert_array_equal(found.video_rows, rows)
    np.testing.assert_allclose(found.scores, scores, rtol=1e-5, atol=1e-5)


def test_bad_arguments(one_device_mesh):
    with pytest.raises(ValueError, match="top and batch_size"):
        mining.mine_hard_negatives(ToyStages(), VARIABLES, toy_split(True), one_device_mesh, top=0)


# Runs in a fresh interpreter so that the 8 fake CPU devices exist before jax starts.
_EIGHT_DEVICES = textwrap.dedent(
    """
    import json, sys
    import jax
    sys.path.insert(0, sys.argv[1])
    import test_mining as t
    from vmr_jax import sharding
    from vmr_jax.retrieval import mining

    out = {"device_count": jax.device_count()}
    for shape in ((8, 1), (4, 2)):
        found = mining.mine_hard_negatives(
            t.ToyStages(), t.VARIABLES, t.toy_split(True), sharding.make_mesh({"shape": shape}),
            top=9, batch_size=4, video_batch_size=8, block_size=2,
        )
        out[str(shape)] = [found.video_rows.tolist(), found.scores.tolist()]
    print("RESULT " + json.dumps(out))
    """
)


def test_eight_devices_pad_the_corpus_and_match_brute_force(request):
    """37 videos on 8 (or 4) data devices: 3 all-zero padding rows, whose score 0 would rank
    first under the toy rule if they were not forced out."""
    env = dict(os.environ)
    cache = getattr(request.config, "cache", None)
    if cache is not None:  # reuse compiled programs between sessions (speed only)
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache.mkdir("jax_compilation_cache"))
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + ["--xla_force_host_platform_device_count=8"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _EIGHT_DEVICES, str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT ") :])
    assert out.pop("device_count") == 8
    rows, scores = brute_force(toy_split(True), 9)
    for shape, (got_rows, got_scores) in out.items():
        np.testing.assert_array_equal(got_rows, rows, err_msg=shape)
        np.testing.assert_allclose(got_scores, scores, rtol=1e-5, atol=1e-5, err_msg=shape)


def test_xml_stages_on_the_synthetic_corpus(one_device_mesh):
    """A real family: XML (untrained) on the runlocal synthetic train split; the lists equal a
    float64 ranking of XML's own stage-1 scores of every (query, video) pair."""
    from data_pipelines.sources import DataSources
    from vmr_jax import config_cli
    from vmr_jax.models import xml, xml_corpus

    config = config_cli.load_config(f"{ROOT / 'configs' / 'xml' / 'synthetic.py'}:runlocal", [])
    data = DataSources(config)
    prepared = data.prepared("train")
    model = xml.create_model(config.model)
    variables = model.init(jax.random.PRNGKey(0), data.sample_batch(), train=False)
    stages = xml_corpus.XMLStages.from_config(model, config.model)
    found = mining.mine_hard_negatives(
        stages, variables, prepared, one_device_mesh, top=10, batch_size=64
    )
    # Reference: every pair scored by the stages at once (no index, no blocks), then ranked
    # by exp(alpha * s) in float64 with the row as tie-break.
    videos = prepared.videos.take(np.arange(prepared.num_videos))
    video_enc = stages.encode_videos(variables, videos)
    batch = prepared.query_batch(np.arange(len(prepared)))
    query_enc = stages.encode_queries(
        variables, {k: batch[k] for k in ("query_features", "query_mask")}
    )
    raw = np.asarray(stages.score_videos(variables, query_enc, video_enc), np.float64)
    rank = np.exp(stages.rule.alpha * raw)
    want = np.lexsort((np.broadcast_to(np.arange(raw.shape[1]), raw.shape), -rank))[:, :10]
    assert found.video_rows.shape == (len(prepared), 10)
    agree = (found.video_rows == want).mean()
    assert agree > 0.98, agree  # float32 blocks vs one einsum: near ties may swap
    np.testing.assert_allclose(
        found.scores, np.take_along_axis(rank, found.video_rows, 1), rtol=1e-3
    )
