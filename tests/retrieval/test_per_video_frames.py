"""Per-video frame length (``model.clip_length = 0``: a frame lasts ``duration / L`` seconds of
its own video): Cascaded MPN's label rule and the corpus engine's moment times against hand
computations, the index keeping each video's grid (saved and loaded), the search's lists
against the same search on a 1-s grid rescaled by hand, and the config guard."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from data_pipelines import sources
from data_pipelines.stored import StoredSplit
from data_pipelines.video_tables import InMemoryVideos, video_durations
from vmr_jax import sharding
from vmr_jax.errors import UserError
from vmr_jax.models import cascaded_mpn_loss
from vmr_jax.models.cascaded_mpn_corpus import map_moments
from vmr_jax.retrieval import corpus, ranking

# --------------------------------------------------------------------------- label rule


def test_per_video_labels_by_hand():
    # Row 0: 50 s over 10 frames (5 s each); [12, 23] s -> frames 12/5 = 2.4 -> 2 and
    # ceil(23/5 = 4.6) - 1 = 4.  Row 1: 30 s over the 4 valid frames of 6 (7.5 s each);
    # [7.5, 30] -> 1 and ceil(4) - 1 = 3.  Row 2: 40 s over 8 frames (5 s); [21, 22] ->
    # 4 and ceil(4.4) - 1 = 4, widened to st + 1 = 5.  Row 3: duration 0 (a zero example
    # batch) -> frame 0, end st + 1 = 1 (3 valid frames).
    spans = jnp.array([[12.0, 23.0], [7.5, 30.0], [21.0, 22.0], [1.0, 2.0]])
    mask = jnp.array(
        [[1.0] * 10, [1.0] * 4 + [0.0] * 6, [1.0] * 8 + [0.0] * 2, [1.0] * 3 + [0] * 7]
    )
    duration = jnp.array([50.0, 30.0, 40.0, 0.0])
    got = cascaded_mpn_loss.st_ed_labels(spans, mask, 0.0, duration)
    np.testing.assert_array_equal(got, [[2, 4], [1, 3], [4, 5], [0, 1]])
    # The fixed rule is untouched: 1.5-s frames, [12, 23] -> 8 and ceil(15.33) - 1 = 15,
    # cut to the last valid frame 9.
    np.testing.assert_array_equal(
        cascaded_mpn_loss.st_ed_labels(spans[:1], mask[:1], 1.5), [[8, 9]]
    )
    with pytest.raises(ValueError, match="needs the duration"):
        cascaded_mpn_loss.st_ed_labels(spans, mask, 0.0)


def test_loss_reads_the_batch_duration():
    """The loss's moment term uses the per-video labels: a start/end log-probability table
    that is 0 only at the hand-computed labels gives a zero moment loss."""
    b, n = 2, 10
    # Row 1: 120 s, 12-s frames, [75, 100] -> 6.25 -> 6 and ceil(8.33) - 1 = 8.
    labels = [(2, 4), (6, 8)]
    log_p_start = np.full((b, n), -5.0, np.float32)
    log_p_end = np.full((b, n, n), -5.0, np.float32)
    for i, (st, ed) in enumerate(labels):
        log_p_start[i, st] = 0.0
        log_p_end[i, st, ed] = 0.0
    outputs = {
        "frame_similarity": jnp.eye(b),
        "log_p_start": jnp.asarray(log_p_start),
        "log_p_end": jnp.asarray(log_p_end),
    }
    batch = {
        "video_mask": np.ones((b, n), np.float32),
        "spans": np.array([[[12.0, 23.0]], [[75.0, 100.0]]], np.float32),
        "duration": np.array([50.0, 120.0], np.float32),
    }
    config = ml_collections.ConfigDict(
        dict(
            margin=0.1,
            hinge_directions="both",
            video_loss_weight=8.0,
            moment_loss_weight=0.01,
            clip_length=0.0,
        )
    )
    _, parts = cascaded_mpn_loss.loss_fn(outputs, batch, config)
    assert float(parts["loss_moment"]) == 0.0
    # Another duration moves the labels off the table's zeros: 2 * 5 * 0.01 per row.
    batch["duration"] = np.array([25.0, 60.0], np.float32)
    _, parts = cascaded_mpn_loss.loss_fn(outputs, batch, config)
    np.testing.assert_allclose(float(parts["loss_moment"]), 0.1, rtol=1e-6)


# --------------------------------------------------------------------------- moment times


def test_candidate_seconds_by_hand():
    # Two videos: 50 s over 10 frames (5 s each), 33 s over 6 frames (5.5 s each).
    frames = ranking.VideoFrames(np.array([50.0, 33.0]), np.array([10, 6]))
    cand = ranking.RankedCandidates(
        slot=np.array([[1, 0, 1]], np.int32),
        start=np.array([[0, 2, 3]], np.int32),
        end=np.array([[5, 4, 3]], np.int32),
        score=np.array([[0.9, 0.8, 0.7]], np.float32),
        valid=np.ones((1, 3), bool),
    )
    want = [[0.0, 33.0], [10.0, 25.0], [16.5, 22.0]]  # frames * 5.5, * 5, * 5.5
    vcmr = ranking.candidate_predictions("VCMR", cand, 0.0, np.array([7, 8]), frames)
    # VCMR times are float32 arithmetic (the official dtype rule), held as float64.
    np.testing.assert_array_equal(vcmr.st_ed, vcmr.st_ed.astype(np.float32))
    np.testing.assert_allclose(vcmr.st_ed[0], want, rtol=1e-6)
    assert vcmr.st_ed[0, 0, 1] == np.float32(33.0)  # the last frame ends at the duration
    np.testing.assert_array_equal(vcmr.video_idx, [[8, 7, 8]])
    # SVMR: [Q, 1] tables of the query's own video.
    own = ranking.VideoFrames(np.array([[33.0]]), np.array([[6]]))
    svmr_cand = cand._replace(slot=np.zeros((1, 3), np.int32))
    svmr = ranking.candidate_predictions("SVMR", svmr_cand, 0.0, np.array([[8]]), own)
    np.testing.assert_allclose(svmr.st_ed[0], [[0.0, 33.0], [11.0, 27.5], [16.5, 22.0]])
    with pytest.raises(ValueError, match="needs the videos' frames"):
        ranking.candidate_predictions("VCMR", cand, 0.0)
    # A fixed clip length ignores the frames (XML's lists are unchanged).
    fixed = ranking.candidate_predictions("VCMR", cand, 1.5, None, frames)
    np.testing.assert_array_equal(fixed.st_ed[0], np.float32([[0, 9], [3, 7.5], [4.5, 6]]))


def test_video_durations():
    ids = ["a", "b", "c"]
    got = video_durations(np.array([2, 0, 2, 1]), np.float32([7.5, 3.0, 7.5, 4.25]), ids)
    np.testing.assert_array_equal(got, [3.0, 4.25, 7.5])
    with pytest.raises(ValueError, match="video 'c'.*different durations"):
        video_durations(np.array([2, 0, 2, 1]), np.float32([7.5, 3.0, 7.0, 4.25]), ids)
    with pytest.raises(ValueError, match="video 'b' has no query"):
        video_durations(np.array([2, 0]), np.float32([7.5, 3.0]), ids)


# --------------------------------------------------------------------------- corpus search

NUM_VIDEOS, NUM_CLIPS, DIM = 11, 8, 6


@dataclasses.dataclass(frozen=True)
class MapAdapter:
    """A toy corpus family on upper-triangular map cells (Cascaded MPN's candidates): video
    score = best frame cosine, cell ``(i, j)`` score = mean of the two frame cosines."""

    clip_length: float = 1.0
    top_videos: int = 4
    retrieve_videos: int = 6
    max_before_nms: int = 30

    def encode_videos(self, variables, batch):
        x = batch["video_features"] @ variables["video"]
        feat = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
        return {"feat": feat, "mask": batch["video_mask"] > 0}

    def encode_queries(self, variables, batch):
        q = batch["query_features"][:, 0] @ variables["query"]
        return {"query": q / jnp.linalg.norm(q, axis=-1, keepdims=True)}

    def score_videos(self, variables, query_enc, video_enc):
        sim = jnp.einsum("qd,vld->qvl", query_enc["query"], video_enc["feat"])
        return jnp.max(jnp.where(video_enc["mask"][None], sim, -1e10), axis=-1)

    def localize(self, variables, query_enc, video_enc):
        sim = jnp.einsum("qd,qkld->qkl", query_enc["query"], video_enc["feat"])
        return map_moments((sim[..., :, None] + sim[..., None, :]) / 2, video_enc["mask"])

    def video_rank_scores(self, video_scores):
        return video_scores

    def combine(self, video_scores, moments):
        return video_scores[..., None] + moments.score


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(3)
    variables = {
        "video": rng.normal(size=(DIM, DIM)).astype(np.float32),
        "query": rng.normal(size=(DIM, DIM)).astype(np.float32),
    }
    lengths = rng.integers(3, NUM_CLIPS + 1, NUM_VIDEOS)
    mask = (np.arange(NUM_CLIPS) < lengths[:, None]).astype(np.float32)
    videos = InMemoryVideos(
        rng.normal(size=(NUM_VIDEOS, NUM_CLIPS, DIM)).astype(np.float32), mask, None
    )
    queries = {
        "query_features": rng.normal(size=(5, 1, DIM)).astype(np.float32),
        "query_mask": np.ones((5, 1), np.float32),
    }
    durations = np.round(rng.uniform(20.0, 200.0, NUM_VIDEOS), 2)
    mesh = sharding.make_mesh({"shape": (1, 1)})
    return variables, videos, queries, durations, lengths, mesh


def test_search_in_each_videos_seconds(toy, tmp_path):
    variables, videos, queries, durations, lengths, mesh = toy
    gt = np.array([0, 3, 5, 7, 10])
    options = dict(gt_video=gt, max_after=12, nms_threshold=0.4321)
    plain_index = corpus.build_index(
        MapAdapter(), variables, videos, mesh, 4, num_videos=NUM_VIDEOS
    )
    unit = corpus.search(MapAdapter(), variables, plain_index, queries, **options)  # 1-s frames
    assert plain_index.frames is None
    no_nms = corpus.search(MapAdapter(), variables, plain_index, queries, gt_video=gt, max_after=12)
    assert (unit["VCMR"].length < no_nms["VCMR"].length).any()  # the NMS drops moments
    index = corpus.build_index(
        MapAdapter(), variables, videos, mesh, 4, num_videos=NUM_VIDEOS, durations=durations
    )
    np.testing.assert_array_equal(index.frames.num_frames, lengths)
    index.save(tmp_path / "index")
    loaded = corpus.CorpusIndex.load(tmp_path / "index", mesh)
    np.testing.assert_array_equal(loaded.frames.duration, durations)
    np.testing.assert_array_equal(loaded.frames.num_frames, lengths)
    per_video = MapAdapter(clip_length=0.0)
    found = corpus.search(per_video, variables, loaded, queries, **options)
    for task in ("VCMR", "SVMR", "VR"):
        got, want = found[task], unit[task]
        # Same moments in the same order: NMS in a video's seconds = NMS in its frames.
        np.testing.assert_array_equal(got.length, want.length)
        np.testing.assert_array_equal(got.video_idx, want.video_idx)
        np.testing.assert_array_equal(got.score, want.score)
        if task == "VR":
            continue
        # 1-s frames k are seconds k; here k / L * duration of the row's video.
        rows = np.maximum(want.video_idx, 0)
        scale = durations[rows] / lengths[rows]
        real = np.arange(got.st_ed.shape[1])[None] < got.length[:, None]
        np.testing.assert_allclose(
            got.st_ed[real], (want.st_ed * scale[..., None])[real], rtol=1e-6, atol=1e-5
        )
        # Never past the video's duration (VCMR: float32 arithmetic on float32 durations).
        dtype = np.float32 if task == "VCMR" else np.float64
        assert (got.st_ed[real][:, 1] <= durations[rows][real].astype(dtype)).all()
        assert (got.st_ed[real][:, 0] < got.st_ed[real][:, 1]).all()
    with pytest.raises(corpus.CorpusError, match="has no durations"):
        corpus.search(per_video, variables, plain_index, queries, **options)
    with pytest.raises(corpus.CorpusError, match="durations must be 11 positive"):
        corpus.build_index(
            MapAdapter(), variables, videos, mesh, 4, num_videos=NUM_VIDEOS, durations=durations[:3]
        )


# --------------------------------------------------------------------------- config guard


def test_check_clip_length_accepts_per_video_under_resample():
    split = StoredSplit.__new__(StoredSplit)
    split.info = {
        "dataset": "activitynet",
        "features": "c3d",
        "manifest": {"video": {"clip_seconds": None}},
    }

    def config(clip_length, sampling):
        return ml_collections.ConfigDict(
            {"model": {"clip_length": clip_length}, "data": {"clip_sampling": sampling}}
        )

    sources.check_clip_length(config(0.0, "resample"), {"val": split})
    with pytest.raises(UserError, match="needs config.data.clip_sampling='resample'"):
        sources.check_clip_length(config(0.0, "truncate"), {"val": split})
    with pytest.raises(UserError, match="no fixed length"):
        sources.check_clip_length(config(1.5, "resample"), {"val": split})
