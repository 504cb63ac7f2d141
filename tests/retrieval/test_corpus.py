"""retrieval.corpus: the sharded two-stage engine against a brute-force NumPy search (a toy
family on 37 videos of 12 clips), 1 device vs 8 fake devices, save/load, SVMR of queries whose
own video is not among the retrieved ones; and, when the XML port is there, the official XML
inference lists (golden ``xml_*.npz``) from the golden weights through the engine."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines.video_tables import InMemoryVideos
from vmr_jax import sharding
from vmr_jax.convert import xml as convert
from vmr_jax.evaluation import vcmr
from vmr_jax.models import xml, xml_corpus
from vmr_jax.retrieval import corpus, ranking

ROOT = Path(__file__).resolve().parents[2]
NUM_VIDEOS, NUM_CLIPS, DIM, SUB_DIM, HIDDEN = 37, 12, 10, 6, 8
NUM_QUERIES, QUERY_LEN, QUERY_DIM = 5, 4, 7
# The toy family's stage options (XML's rule: window, alpha) and the search's list options.
STAGES = dict(top_videos=9, alpha=20.0, min_pred_l=2, max_pred_l=6, max_before_nms=40)
SEARCH = dict(max_after=25, block_size=4)


@dataclasses.dataclass(frozen=True)
class ToyAdapter:
    """A linear VCMR family: clips and queries projected and unit-normalised; a video's score
    is its best clip cosine; span logits are 6 * cosine +- a learned clip direction, ranked by
    XML's rule (window pairs, ``(p_st * exp(alpha s)) * p_ed``)."""

    rule: xml_corpus.SpanWindowRule = xml_corpus.SpanWindowRule(
        STAGES["alpha"], STAGES["min_pred_l"], STAGES["max_pred_l"]
    )
    top_videos: int = STAGES["top_videos"]
    retrieve_videos: int = STAGES["top_videos"]
    clip_length: float = 1.5
    max_before_nms: int = STAGES["max_before_nms"]

    def encode_videos(self, variables, batch):
        x = jnp.tanh(batch["video_features"] @ variables["video"])
        x = x + batch["subtitle_features"] @ variables["sub"]
        feat = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)  # 0 at padding
        return {"feat": feat, "mask": batch["video_mask"] > 0}

    def encode_queries(self, variables, batch):
        m = batch["query_mask"][..., None]
        q = ((batch["query_features"] * m).sum(1) / m.sum(1)) @ variables["query"]
        return {"query": q / jnp.linalg.norm(q, axis=-1, keepdims=True)}

    def score_videos(self, variables, query_enc, video_enc):
        sim = jnp.einsum("qd,vld->qvl", query_enc["query"], video_enc["feat"])
        return jnp.max(jnp.where(video_enc["mask"][None], sim, -1e10), axis=-1)

    def localize(self, variables, query_enc, video_enc):
        sim = jnp.einsum("qd,qkld->qkl", query_enc["query"], video_enc["feat"])
        side = jnp.einsum("d,qkld->qkl", variables["side"], video_enc["feat"])
        mask = video_enc["mask"]
        st, ed = jnp.where(mask, 6 * sim + side, -1e10), jnp.where(mask, 6 * sim - side, -1e10)
        return self.rule.window_moments(st, ed, mask)

    def video_rank_scores(self, video_scores):
        return self.rule.video_rank_scores(video_scores)

    def combine(self, video_scores, moments):
        return self.rule.combine(video_scores, moments)


def toy_corpus(seed: int = 0):
    """(variables, videos, query batch) of the toy family."""
    rng = np.random.default_rng(seed)
    f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)
    variables = {
        "video": f32(DIM, HIDDEN),
        "sub": 0.3 * f32(SUB_DIM, HIDDEN),
        "query": f32(QUERY_DIM, HIDDEN),
        "side": f32(HIDDEN),
    }
    lengths = rng.integers(3, NUM_CLIPS + 1, NUM_VIDEOS)
    lengths[[4, 20]] = [2, NUM_CLIPS]  # video 4: too short for any moment
    mask = (np.arange(NUM_CLIPS) < lengths[:, None]).astype(np.float32)
    videos = InMemoryVideos(
        f32(NUM_VIDEOS, NUM_CLIPS, DIM) * mask[..., None],
        mask,
        f32(NUM_VIDEOS, NUM_CLIPS, SUB_DIM) * mask[..., None],
    )
    query_mask = (np.arange(QUERY_LEN) < rng.integers(1, QUERY_LEN + 1, (NUM_QUERIES, 1))).astype(
        np.float32
    )
    queries = {
        "query_features": f32(NUM_QUERIES, QUERY_LEN, QUERY_DIM) * query_mask[..., None],
        "query_mask": query_mask,
    }
    return variables, videos, queries


# --------------------------------------------------------------------------- brute force


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def _softmax(logits, mask):
    x = np.where(mask, logits, -np.inf)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def brute_force(variables, videos, queries, gt_video):
    """The whole search in float64 NumPy: full [V] scores, full [L, L] tables, stable sorts.
    Returns ``{task: per query [(video, st, ed, score), ...]}`` before NMS (first max_after)."""
    v = {k: np.asarray(x, np.float64) for k, x in variables.items()}
    feat = _unit(np.tanh(videos.features @ v["video"]) + videos.subtitles @ v["sub"])
    mask = videos.mask > 0
    m = queries["query_mask"][..., None]
    q = _unit(((queries["query_features"] * m).sum(1) / m.sum(1)) @ v["query"])
    sim = np.einsum("qd,vld->qvl", q, feat)  # [Q, V, L]
    side = np.einsum("d,vld->vl", v["side"], feat)
    scores = np.where(mask[None], sim, -np.inf).max(-1)
    st_all, ed_all = _softmax(6 * sim + side, mask), _softmax(6 * sim - side, mask)
    s = {**STAGES, **SEARCH}
    pairs = np.subtract.outer(np.arange(NUM_CLIPS), np.arange(NUM_CLIPS))
    window = (-pairs >= s["min_pred_l"]) & (-pairs < s["max_pred_l"])  # j - i in the window
    out = {"VR": [], "VCMR": [], "SVMR": []}
    for qi in range(NUM_QUERIES):
        top = np.argsort(-scores[qi], kind="stable")[: s["top_videos"]]
        e = np.exp(s["alpha"] * scores[qi, top])
        out["VR"].append([(int(k), 0.0, 0.0, float(x)) for k, x in zip(top, e)][: s["max_after"]])
        for task, vids, weight in (("VCMR", top, e), ("SVMR", [gt_video[qi]], [1.0])):
            rows = []
            for k, w in zip(vids, weight):
                table = st_all[qi, k][:, None] * w * ed_all[qi, k][None]
                real = window & mask[k][:, None] & mask[k][None]
                i, j = np.nonzero(real)
                rows += [(int(k), a * 1.5, (b + 1) * 1.5, table[a, b]) for a, b in zip(i, j)]
            rows = sorted(rows, key=lambda r: -r[3])[: s["max_before_nms"]]  # stable
            out[task].append(rows[: s["max_after"]])
    return out


def assert_same_lists(got: vcmr.RankedPredictions, want: list, rtol: float = 1e-5):
    """Same rows in the same order; rows whose reference scores are within ``rtol`` of each
    other (float32 vs float64 can swap them) compare as a set, except at the end of the list."""
    assert got.length.tolist() == [len(rows) for rows in want]
    for q, rows in enumerate(want):
        n = len(rows)
        keys = list(zip(got.video_idx[q, :n].tolist(), *got.st_ed[q, :n].T.tolist()))
        ref = np.array([r[3] for r in rows])
        np.testing.assert_allclose(got.score[q, :n], ref, rtol=rtol, err_msg=f"query {q}")
        tie = np.isclose(ref[1:], ref[:-1], rtol=rtol, atol=0)
        start = 0
        for p in range(n):
            if p + 1 == n or not tie[p]:
                run = slice(start, p + 1)
                if p + 1 < n or start == p:
                    assert sorted(keys[run]) == sorted(r[:3] for r in rows[run]), (q, run)
                start = p + 1


def _own_video_outside_top(queries, variables, videos):
    """Each query's worst video: never among the top K."""
    ref = brute_force(variables, videos, queries, np.zeros(NUM_QUERIES, int))
    gt = np.zeros(NUM_QUERIES, np.int64)
    for q, rows in enumerate(ref["VR"]):
        gt[q] = [k for k in range(NUM_VIDEOS) if k not in {r[0] for r in rows} and k != 4][0]
    return gt


@pytest.fixture(scope="module")
def toy():
    variables, videos, queries = toy_corpus()
    mesh = sharding.make_mesh({"shape": (1, 1)})
    index = corpus.build_index(
        ToyAdapter(), variables, videos, mesh, batch_size=8, num_videos=NUM_VIDEOS
    )
    gt = np.arange(NUM_QUERIES) * 7 % NUM_VIDEOS
    gt[0] = _own_video_outside_top(queries, variables, videos)[0]
    return variables, videos, queries, mesh, index, gt


def test_index_holds_every_video_once(toy):
    variables, videos, _, _, index, _ = toy
    assert index.num_videos == NUM_VIDEOS and index.padded_videos == NUM_VIDEOS
    want = ToyAdapter().encode_videos(variables, videos.take(np.arange(NUM_VIDEOS)))
    for key in ("feat", "mask"):
        np.testing.assert_allclose(np.asarray(index.encodings[key]), want[key], atol=1e-6)


def test_search_matches_brute_force(toy):
    variables, videos, queries, _, index, gt = toy
    found = corpus.search(ToyAdapter(), variables, index, queries, gt_video=gt, **SEARCH)
    want = brute_force(variables, videos, queries, gt)
    assert list(found) == ["VCMR", "SVMR", "VR"]
    for task in found:
        assert_same_lists(found[task], want[task])
    assert gt[0] not in found["VR"].video_idx[0] and found["SVMR"].length[0] > 0
    assert (found["SVMR"].video_idx[0, : found["SVMR"].length[0]] == gt[0]).all()


def test_nms_and_video_values(toy):
    variables, videos, queries, _, index, gt = toy
    values = 1000 + np.arange(NUM_VIDEOS)
    plain = corpus.search(ToyAdapter(), variables, index, queries, gt_video=gt, **SEARCH)
    found = corpus.search(
        ToyAdapter(),
        variables,
        index,
        queries,
        gt_video=gt,
        nms_threshold=0.5,
        video_values=values,
        **SEARCH,
    )
    nms = {"VCMR": vcmr.vcmr_nms, "SVMR": vcmr.svmr_nms}
    for task, lists in found.items():
        want = plain[task]
        if task in nms:
            want = nms[task](want, 0.5, STAGES["max_before_nms"], SEARCH["max_after"])
        np.testing.assert_array_equal(
            lists.video_idx, np.where(want.valid, want.video_idx + 1000, -1)
        )
        np.testing.assert_array_equal(lists.st_ed, want.st_ed)
    assert found["VCMR"].length.max() < plain["VCMR"].length.max()


def test_save_and_load(toy, tmp_path):
    variables, _, queries, mesh, index, gt = toy
    ids = tuple(f"video_{k}" for k in range(NUM_VIDEOS))
    dataclasses.replace(index, video_ids=ids).save(tmp_path / "index")
    loaded = corpus.CorpusIndex.load(tmp_path / "index", mesh)
    assert loaded.video_ids == ids and loaded.num_videos == NUM_VIDEOS
    for key in index.encodings:
        np.testing.assert_array_equal(np.asarray(loaded.encodings[key]), index.encodings[key])
    with pytest.raises(corpus.CorpusError, match="index.json not found"):
        corpus.CorpusIndex.load(tmp_path, mesh)


def test_bad_requests(toy):
    variables, videos, queries, mesh, index, _ = toy
    with pytest.raises(corpus.CorpusError, match="top_videos"):
        corpus.search(ToyAdapter(), variables, index, queries, top_videos=NUM_VIDEOS + 1)
    with pytest.raises(corpus.CorpusError, match="gt_video"):
        corpus.search(ToyAdapter(), variables, index, queries, top_videos=3, gt_video=[0, 1])
    with pytest.raises(corpus.CorpusError, match="num_videos is needed"):
        corpus.build_index(ToyAdapter(), variables, videos, mesh)


# Runs in a fresh interpreter so that the 8 fake CPU devices exist before jax starts.
_EIGHT_DEVICES = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, sys.argv[1])
    import test_corpus as t
    from vmr_jax import sharding
    from vmr_jax.retrieval import corpus, ranking

    variables, videos, queries = t.toy_corpus()
    gt = np.array(json.loads(sys.argv[3]))
    out = {"device_count": jax.device_count()}
    for shape in ((8, 1), (4, 2)):
        mesh = sharding.make_mesh({"shape": shape})
        index = corpus.build_index(
            t.ToyAdapter(), variables, videos, mesh, batch_size=5, num_videos=t.NUM_VIDEOS
        )
        loaded = corpus.CorpusIndex.load(sys.argv[2], mesh)
        for name, idx in (("built", index), ("loaded", loaded)):
            found = corpus.search(t.ToyAdapter(), variables, idx, queries, gt_video=gt, **t.SEARCH)
            out[f"{shape}/{name}"] = {
                "padded": idx.padded_videos,
                "lists": {k: [v.video_idx.tolist(), v.st_ed.tolist(), v.score.tolist(),
                              v.length.tolist()] for k, v in found.items()},
            }
    print("RESULT " + json.dumps(out))
    """
)


def test_eight_devices_match_one_device(toy, tmp_path, request):
    variables, videos, queries, _, index, gt = toy
    index.save(tmp_path / "index")
    env = dict(os.environ)
    cache = getattr(request.config, "cache", None)
    if cache is not None:  # reuse compiled programs between sessions (speed only)
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache.mkdir("jax_compilation_cache"))
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + ["--xla_force_host_platform_device_count=8"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    args = [str(Path(__file__).parent), str(tmp_path / "index"), json.dumps(gt.tolist())]
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
    one = corpus.search(ToyAdapter(), variables, index, queries, gt_video=gt, **SEARCH)
    for name, run in out.items():
        assert run["padded"] == 40, name  # 37 videos + 3 dummies on 8 or 4 data devices
        for task, (video, st_ed, score, length) in run["lists"].items():
            want = one[task]
            np.testing.assert_array_equal(length, want.length, err_msg=f"{name} {task}")
            np.testing.assert_array_equal(video, want.video_idx, err_msg=f"{name} {task}")
            np.testing.assert_array_equal(st_ed, want.st_ed, err_msg=f"{name} {task}")
            # Block shapes change float32 rounding of the scores; exp(20 s) scales it by 20.
            np.testing.assert_allclose(score, want.score, rtol=1e-5, err_msg=f"{name} {task}")


def test_xml_golden_end_to_end(xml_golden):
    """Golden weights -> XML port -> index + search: the official submission lists."""
    meta = json.loads(xml_golden.with_suffix(".json").read_text())
    with np.load(xml_golden) as archive:
        arrays = {k: archive[k] for k in archive.files}
    config = convert.model_config_from_golden(meta["config_values"])
    config.no_norm_vfeat = config.no_norm_tfeat = True  # golden inputs are normalised already
    model = xml.create_model(config)
    variables = {
        "params": convert.params_from_state_dict(convert.load_checkpoint(xml_golden), config)
    }
    videos = {  # the official TEF columns dropped: the model adds them
        "video_features": arrays["inputs/video_feat"][..., :-2],
        "subtitle_features": arrays["inputs/sub_feat"][..., :-2],
        "video_mask": arrays["inputs/video_mask"],
    }
    queries = {
        "query_features": arrays["inputs/query_feat"],
        "query_mask": arrays["inputs/query_mask"],
    }
    opt = meta["config_values"]["opt"]
    adapter = xml_corpus.XMLStages(
        model,
        xml_corpus.SpanWindowRule(
            float(opt["q2c_alpha"]), int(opt["min_pred_l"]), int(opt["max_pred_l"])
        ),
        top_videos=int(opt["max_vcmr_video"]),
        clip_length=float(opt["clip_length"]),
        max_before_nms=int(opt["max_before_nms"]),
    )
    mesh = sharding.make_mesh({"shape": (1, 1)})
    with jax.default_matmul_precision("highest"):
        index = corpus.build_index(
            adapter,
            variables,
            lambda rows: {k: v[rows] for k, v in videos.items()},
            mesh,
            num_videos=len(videos["video_mask"]),
        )
        found = corpus.search(
            adapter,
            variables,
            index,
            queries,
            gt_video=np.searchsorted(
                arrays["infer/video_global_idx"], arrays["infer/gt_video_global_idx"]
            ),
            video_values=arrays["infer/video_global_idx"],
        )
    tags = sorted({k.split("/")[1] for k in arrays if k.startswith("submission/")})
    assert tags, "no submission/* lists in the golden file"
    for tag in tags:
        threshold = None if tag == "no_nms" else float(tag[len("nms") :])
        config = ranking.RankingConfig(
            max_before_nms=int(opt["max_before_nms"]), nms_threshold=threshold
        )
        lists = ranking.postprocess(found, config)
        for task in (t for t in vcmr.TASKS if f"submission/{tag}/{t}/length" in arrays):
            prefix, got = f"submission/{tag}/{task}/", lists[task]
            np.testing.assert_array_equal(got.length, arrays[prefix + "length"])
            for q, n in enumerate(arrays[prefix + "length"]):
                where = f"{tag} {task} query {q}"
                want_video = arrays[prefix + "video_idx"][q, :n]
                np.testing.assert_array_equal(got.video_idx[q, :n], want_video, err_msg=where)
                want_st_ed = arrays[prefix + "st_ed"][q, :n]
                np.testing.assert_array_equal(got.st_ed[q, :n], want_st_ed, err_msg=where)
                want_score = arrays[prefix + "score"][q, :n]
                np.testing.assert_allclose(got.score[q, :n], want_score, rtol=1e-4, err_msg=where)
