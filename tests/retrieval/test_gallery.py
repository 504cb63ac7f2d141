"""retrieval.gallery on a tiny FVMR with random weights and inputs: the gallery holds the
model's own ``encode_moments``; single-video search gives the moments of the model's forward +
``fvmr.decode`` + the svmr evaluator's official decoding, and of a float64 NumPy ranking; the
gallery-wide search against a NumPy brute force; save/load; 8 fake devices vs 1; bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from vmr_jax import sharding
from vmr_jax.evaluation import svmr
from vmr_jax.models import fvmr
from vmr_jax.ops import moment_map, segments
from vmr_jax.retrieval import gallery
from vmr_jax.retrieval import index as index_lib

ROOT = Path(__file__).resolve().parents[2]
NUM_VIDEOS, NUM_QUERIES, QUERY_LEN = 11, 48, 7


def tiny_case(seed: int = 0):
    """(model config, model, variables, videos [V, T, D_in], durations, ids, queries, rows).

    Weights are the init scaled up (logits of a few units, so scores spread over (0, 1)) with
    random BatchNorm running statistics (eval mode reads them)."""
    config = ml_collections.ConfigDict(dict(fvmr.VARIANTS["tiny"]))
    model = fvmr.create_model(config)
    rng = np.random.default_rng(seed)
    variables = model.init(jax.random.PRNGKey(seed), fvmr.example_batch(config, 1), train=False)
    variables = jax.tree.map(np.array, variables)
    variables["params"]["phi_m"]["fc2"]["kernel"] *= 6.0
    variables["params"]["phi_s"]["fc2"]["kernel"] *= 8.0
    for stats in variables["batch_stats"].values():
        stats["mean"] = rng.normal(scale=0.1, size=stats["mean"].shape).astype(np.float32)
        stats["var"] = rng.uniform(0.5, 2.0, size=stats["var"].shape).astype(np.float32)
    clips = config.num_clips * config.frame_stride
    videos = rng.normal(size=(NUM_VIDEOS, clips, config.feature_dim)).astype(np.float32)
    durations = rng.uniform(8.0, 150.0, NUM_VIDEOS).astype(np.float32)
    ids = tuple(f"video_{k}" for k in range(NUM_VIDEOS))
    lengths = rng.integers(2, QUERY_LEN + 1, (NUM_QUERIES, 1))
    mask = (np.arange(QUERY_LEN)[None] < lengths).astype(np.float32)
    queries = {
        "query_features": rng.normal(size=(NUM_QUERIES, QUERY_LEN, config.word_dim)).astype(
            np.float32
        )
        * mask[..., None],
        "query_mask": mask,
    }
    rows = rng.integers(0, NUM_VIDEOS, NUM_QUERIES)
    return config, model, variables, videos, durations, ids, queries, rows


def take(videos):
    return lambda rows: {"video_features": videos[rows]}


@pytest.fixture(scope="module")
def case():
    config, model, variables, videos, durations, ids, queries, rows = tiny_case()
    mesh = sharding.make_mesh({"shape": (1, 1)})
    built = gallery.build_gallery(
        model, variables, take(videos), mesh, durations=durations, video_ids=ids, batch_size=4
    )
    embeddings = gallery.encode_queries(model, variables, queries, mesh)
    return config, model, variables, videos, durations, queries, rows, mesh, built, embeddings


def official(config, model, variables, videos, durations, queries, rows, top_k, nms_thresh):
    """The model's forward on (video, query) pairs, ``fvmr.decode`` and the evaluator's
    NumPy decoding (2D-TAN ``get_proposal_results`` + float64 NMS)."""
    batch = {"video_features": videos[rows], **queries, "duration": durations[rows]}
    outputs = model.apply(variables, batch, train=False)
    score_map = np.asarray(fvmr.decode(outputs, batch, config)["score_map"])
    return svmr.decode_predictions(score_map, durations[rows], nms_thresh, top_k, True)


def numpy_ranking(config, moments, embeddings, durations, rows, top_k, nms_thresh):
    """Float64 NumPy: p = <moment, query>, sigmoid, valid cells best first, float32 seconds,
    the reference NMS."""
    starts, ends = moment_map.valid_cells(config.num_clips, tuple(config.pooling_counts))
    times = np.zeros((len(rows), top_k, 2), np.float32) * np.nan
    scores = np.zeros((len(rows), top_k)) * np.nan
    for q, v in enumerate(rows):
        p = np.asarray(moments[v], np.float64) @ np.asarray(embeddings[q], np.float64)
        prob = 1.0 / (1.0 + np.exp(-p))
        order = np.argsort(-prob, kind="stable")
        cells = segments.cell_seconds(starts[order], ends[order], config.num_clips, durations[v])
        keep = segments.nms(cells.astype(np.float64), None, nms_thresh, top_k)
        times[q, : len(keep)] = cells[keep]
        scores[q, : len(keep)] = prob[order][keep]
    return times, scores


def test_gallery_holds_the_models_moment_features(case):
    config, model, variables, videos, durations, *_, built, _ = case
    assert built.moments.shape == (NUM_VIDEOS, 114, 64)  # C of 16 clips, (8, 4); D = 64
    assert built.num_videos == NUM_VIDEOS and built.num_cells == 114
    for v in (0, 5, NUM_VIDEOS - 1):
        want = model.apply(
            variables, {"video_features": videos[v : v + 1]}, method="encode_moments"
        )
        np.testing.assert_allclose(np.asarray(built.moments[v]), want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(built.durations, durations)
    assert built.rows(["video_3", "video_0"]).tolist() == [3, 0]


@pytest.mark.parametrize("top_k, nms_thresh", [(5, 0.5), (3, 0.3), (10, 0.7)])
def test_search_equals_forward_decode_and_official_decoding(case, top_k, nms_thresh):
    config, model, variables, videos, durations, queries, rows, _, built, embeddings = case
    found = gallery.search(built, embeddings, rows, top_k, nms_thresh)
    want_times, want_scores = official(
        config, model, variables, videos, durations, queries, rows, top_k, nms_thresh
    )
    assert found.times.shape == (NUM_QUERIES, top_k, 2) and found.times.dtype == np.float32
    np.testing.assert_array_equal(found.times, want_times)
    np.testing.assert_allclose(found.scores, want_scores, rtol=1e-5)
    # Scores are spread out: the ranking is not decided by float32 noise.
    assert np.nanmax(found.scores) - np.nanmin(found.scores) > 0.2
    moments = [
        np.asarray(
            model.apply(variables, {"video_features": videos[v : v + 1]}, method="encode_moments")
        )[0]
        for v in range(NUM_VIDEOS)
    ]
    times, scores = numpy_ranking(config, moments, embeddings, durations, rows, top_k, nms_thresh)
    np.testing.assert_array_equal(found.times, times)
    np.testing.assert_allclose(found.scores, scores, rtol=1e-5)


def test_float32_nms_is_the_same_away_from_grid_ties(case):
    """0.37 is no IoU of two cells of a 16-clip grid (nor within float32 rounding of one)."""
    config, model, variables, videos, durations, queries, rows, _, built, embeddings = case
    found = gallery.search(built, embeddings, rows, 5, 0.37, exact_nms=False, query_chunk=4)
    want_times, _ = official(config, model, variables, videos, durations, queries, rows, 5, 0.37)
    np.testing.assert_array_equal(found.times, want_times)


def test_search_all_matches_brute_force(case):
    config, *_, built, embeddings = case
    moments = np.asarray(built.moments, np.float64)[:NUM_VIDEOS]
    probs = 1.0 / (1.0 + np.exp(-np.einsum("vcd,qd->qvc", moments, embeddings)))
    starts, ends = moment_map.valid_cells(config.num_clips, tuple(config.pooling_counts))
    for nms_thresh in (None, 0.5):
        found = gallery.search_all(
            built, embeddings, 6, nms_thresh, max_before_nms=60, block_size=3
        )
        for q in range(NUM_QUERIES):
            flat = probs[q].ravel()
            order = np.argsort(-flat, kind="stable")
            video, cell = np.divmod(order, built.num_cells)
            times = segments.cell_seconds(starts[cell], ends[cell], 16, 1.0)
            times = times * built.durations[video][:, None]
            if nms_thresh is None:
                picked = np.arange(6)
            else:  # greedy NMS inside each video over the first 60
                picked = []
                for i in range(60):
                    same = [j for j in picked if video[j] == video[i]]
                    ious = [segments.temporal_iou(times[i], times[j]) for j in same]
                    if all(iou <= nms_thresh for iou in ious):
                        picked.append(i)
                picked = np.array(picked[:6])
            np.testing.assert_array_equal(found.video_rows[q], video[picked], err_msg=str(q))
            np.testing.assert_allclose(found.times[q], times[picked], rtol=1e-6)
            np.testing.assert_allclose(found.scores[q], flat[order[picked]], rtol=1e-5)


def test_save_and_load(case, tmp_path):
    *_, rows, mesh, built, embeddings = case
    built = dataclasses.replace(built, metadata={"step": 7})
    built.save(tmp_path / "gallery")
    loaded = gallery.Gallery.load(tmp_path / "gallery", mesh)
    assert loaded.video_ids == built.video_ids and loaded.metadata == {"step": 7}
    assert loaded.num_clips == 16 and loaded.pooling_counts == (8, 4)
    np.testing.assert_array_equal(loaded.durations, built.durations)
    np.testing.assert_array_equal(np.asarray(loaded.moments), np.asarray(built.moments))
    a, b = gallery.search(built, embeddings, rows), gallery.search(loaded, embeddings, rows)
    np.testing.assert_array_equal(a.times, b.times)
    np.testing.assert_array_equal(a.scores, b.scores)
    with pytest.raises(gallery.GalleryError, match="index.json not found"):
        gallery.Gallery.load(tmp_path, mesh)
    # One index format for the gallery and the corpus: the gallery loads as a plain index,
    # and an index that is not a gallery is refused as one.
    plain = index_lib.EmbeddingIndex.load(tmp_path / "gallery", mesh)
    assert plain.num_videos == built.num_videos and set(plain.encodings) == {"moments"}
    other = index_lib.EmbeddingIndex(dict(plain.encodings), plain.num_videos, mesh)
    other.save(tmp_path / "other")
    with pytest.raises(gallery.GalleryError, match="not an FVMR gallery"):
        gallery.Gallery.load(tmp_path / "other", mesh)


def test_bad_input_names_the_field(case):
    config, model, variables, videos, durations, _, rows, mesh, built, embeddings = case
    with pytest.raises(gallery.GalleryError, match="video_id 'nope'"):
        built.rows(["video_1", "nope"])
    with pytest.raises(gallery.GalleryError, match=r"video_index\[2\] = 11"):
        gallery.search(built, embeddings[:3], np.array([0, 1, NUM_VIDEOS]))
    with pytest.raises(gallery.GalleryError, match="video_index must be"):
        gallery.search(built, embeddings[:3], np.array([0.0, 1.0, 2.0]))
    with pytest.raises(gallery.GalleryError, match="query_emb must be"):
        gallery.search(built, embeddings[:, :10], rows)
    bad = embeddings.copy()
    bad[4, 0] = np.nan
    with pytest.raises(gallery.GalleryError, match="query_emb row 4"):
        gallery.search(built, bad, rows)
    with pytest.raises(gallery.GalleryError, match="top_k"):
        gallery.search(built, embeddings, rows, top_k=0)
    build = lambda vids, **kw: gallery.build_gallery(model, variables, take(vids), mesh, **kw)
    with pytest.raises(gallery.GalleryError, match=r"durations\[1\]"):
        build(videos[:2], durations=[3.0, -1.0])
    with pytest.raises(gallery.GalleryError, match="video_ids: 'a' appears twice"):
        build(videos[:2], durations=[3.0, 4.0], video_ids=["a", "a"])
    nan_videos = videos[:3].copy()
    nan_videos[2, 5, 1] = np.nan
    with pytest.raises(gallery.GalleryError, match="video 'c'.*video_features"):
        build(nan_videos, durations=[3.0, 4.0, 5.0], video_ids=["a", "b", "c"])


_EIGHT_DEVICES = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, sys.argv[1])
    import test_gallery as t
    from vmr_jax import sharding
    from vmr_jax.retrieval import gallery

    config, model, variables, videos, durations, ids, queries, rows = t.tiny_case()
    out = {"device_count": jax.device_count()}
    for shape in ((8, 1), (4, 2)):
        mesh = sharding.make_mesh({"shape": shape})
        built = gallery.build_gallery(
            model, variables, t.take(videos), mesh, durations=durations, video_ids=ids,
            batch_size=3,
        )
        if shape == (8, 1):
            built.save(sys.argv[3])
        loaded = gallery.Gallery.load(sys.argv[2], mesh)
        emb = gallery.encode_queries(model, variables, queries, mesh)
        for name, g in (("built", built), ("loaded", loaded)):
            found = gallery.search(g, emb, rows, 5, 0.5, query_chunk=4)
            every = gallery.search_all(g, emb, 6, 0.5, max_before_nms=60, block_size=3)
            out[f"{shape}/{name}"] = {
                "padded": int(g.moments.shape[0]),
                "times": found.times.tolist(), "scores": found.scores.tolist(),
                "all_rows": every.video_rows.tolist(), "all_times": every.times.tolist(),
                "all_scores": every.scores.tolist(),
            }
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow
def test_eight_devices_match_one_device(case, tmp_path, request):
    *_, rows, mesh, built, embeddings = case
    built.save(tmp_path / "one")
    env = dict(os.environ)
    cache = getattr(request.config, "cache", None)
    if cache is not None:  # reuse compiled programs between sessions (speed only)
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache.mkdir("jax_compilation_cache"))
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + ["--xla_force_host_platform_device_count=8"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    args = [str(Path(__file__).parent), str(tmp_path / "one"), str(tmp_path / "eight")]
    proc = subprocess.run(
        [sys.executable, "-c", _EIGHT_DEVICES, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT ") :])
    assert out.pop("device_count") == 8
    one = gallery.search(built, embeddings, rows, 5, 0.5)
    every = gallery.search_all(built, embeddings, 6, 0.5, max_before_nms=60, block_size=3)
    for name, run in out.items():
        # 11 videos + zero rows: 16 on 8 data devices, 12 on 4.
        assert run["padded"] == (16 if name.startswith("(8, 1)") else 12), name
        np.testing.assert_array_equal(np.array(run["times"], np.float32), one.times, name)
        np.testing.assert_allclose(run["scores"], one.scores, rtol=1e-5, err_msg=name)
        np.testing.assert_array_equal(run["all_rows"], every.video_rows, name)
        np.testing.assert_array_equal(np.array(run["all_times"], np.float32), every.times, name)
        np.testing.assert_allclose(run["all_scores"], every.scores, rtol=1e-5, err_msg=name)
    # A gallery saved on 8 devices loads on 1.
    loaded = gallery.Gallery.load(tmp_path / "eight", mesh)
    assert loaded.moments.shape[0] == NUM_VIDEOS
    np.testing.assert_allclose(np.asarray(loaded.moments), np.asarray(built.moments), rtol=1e-5)
