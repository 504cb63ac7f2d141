# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Video corpus moment retrieval: train XML, index a corpus, search it
#
# In corpus moment retrieval a sentence is searched against every video of a collection:
# the answer is a ranked list of moments across videos. XML (the TVR baseline) encodes each
# video once into an index; a query is then scored against every video, the top videos are
# localised, and moments are ranked across them (`vmr_jax.retrieval.corpus`).
#
# This notebook trains XML on the synthetic corpus (every video has a scene its queries name,
# events recur across videos), builds and saves the index of the val videos, searches it,
# shows the ranked moments across videos and measures search speed against corpus size.
# The run is shortened to well under a minute of training on CPU (the full
# `configs/xml/synthetic.py` trains 600 steps: VCMR/0.5-r1 26.5 %, chance 0.2 %).

# %%
# Install vmr_jax when it is not importable (Colab); a no-op in a checkout where it is
# installed. REPO_URL is a placeholder: replace OWNER with the repository's owner.
import importlib.util
import subprocess
import sys

REPO_URL = "https://github.com/OWNER/vmr_jax"  # placeholder, see the README's Notebooks
if importlib.util.find_spec("vmr_jax") is None:
    subprocess.check_call(
        [sys.executable, "-m", "pip", "install", "-q", f"vmr_jax[notebooks] @ git+{REPO_URL}"]
    )

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from data_pipelines.sources import DataSources
from vmr_jax import Predictor, config_cli, trainer
from vmr_jax.retrieval.corpus import CorpusIndex
from vmr_jax.search_bench import run_search_bench

# VMR_NOTEBOOK_QUICK=1 (set by the CI runner, .ci/notebooks) shrinks every run to seconds.
QUICK = os.environ.get("VMR_NOTEBOOK_QUICK") == "1"
WORKDIR = os.path.join("workdirs", "corpus_xml")
INDEX_DIR = os.path.join("indexes", "xml_val")

# %% [markdown]
# ## 1. Train XML on the synthetic corpus
#
# `train_and_evaluate` evaluates a corpus family by searching every val query against all
# val videos and scoring VCMR (moment in the right video), SVMR (moment within the query's
# own video) and VR (video) under the official TVR protocol (percentages).

# %%
if QUICK:
    OVERRIDES = {
        "data.synthetic.num_videos": 100,
        "train.batch_size": 16,
        "train.num_steps": 20,
        "train.log_every": 5,
        "train.checkpoint_every": 20,
    }
else:
    OVERRIDES = {"train.num_steps": 400, "train.checkpoint_every": 400, "evals.every": 400}
config = config_cli.load_config("xml/synthetic", [(k, str(v)) for k, v in OVERRIDES.items()])
result = trainer.train_and_evaluate(config, WORKDIR)
metrics = result["eval_metrics"]
print(f"step {result['step']}, {metrics['num_queries']} val queries:")
for name in ("VCMR/0.5-r1", "VCMR/0.5-r5", "VCMR/0.7-r1", "SVMR/0.5-r1", "VR/r1", "VR/r5"):
    print(f"  {name:<12} {metrics[name]:5.1f} %")

# %% [markdown]
# ## 2. Build, save and load the index
#
# `Predictor.build_index` encodes every video once (in batches sharded over the devices) and
# keeps the encodings on device; `save` / `CorpusIndex.load` write and read them with orbax,
# on any number of devices.

# %%
predictor = Predictor.from_workdir(WORKDIR, step="best")
data = DataSources(predictor.config)  # the run's synthetic corpus, rebuilt from its seed
val = data.prepared("val")
records = data.datasets.splits["val"]  # the queries' text and ground truth


class ValVideos:
    """The val videos as `build_index` reads a corpus: `take(rows)` and a length."""

    def __len__(self) -> int:
        return val.num_videos

    def take(self, rows):
        return val.videos.take(rows)


index = predictor.build_index(ValVideos(), video_ids=val.video_ids)
index.save(INDEX_DIR)
index = CorpusIndex.load(INDEX_DIR, predictor.restored.mesh)
sizes = {k: tuple(v.shape) for k, v in index.encodings.items()}
print(f"{index.num_videos} videos indexed in {INDEX_DIR}: {sizes}")

# %% [markdown]
# ## 3. Search
#
# The synthetic corpus's queries are word-vector sequences (the config's text mode
# `features`, as TVR's RoBERTa query features), so they are searched as arrays; a run with
# text queries takes the sentences themselves (`predictor.search(["..."], index)`).
# Each query gets a VCMR list (moments across videos, after NMS) and a VR list (videos).

# %%
rows = np.arange(len(val))
batch = val.query_batch(rows)
found = predictor.search(
    {"query_features": batch["query_features"], "query_mask": batch["query_mask"]},
    index,
    nms_threshold=float(config.evals.nms_thresh),
)
vcmr, vr = found["VCMR"], found["VR"]
print(f"{len(rows)} queries, VCMR lists of {vcmr.video_idx.shape[1]} moments,")
print(f"VR lists of {vr.video_idx.shape[1]} videos")


def iou(a, b):
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def show_ranked(q: int, top: int = 5) -> None:
    """The top moments of query ``q`` across videos; '<- hit' marks IoU >= 0.5 in its video."""
    record = records[q]
    gt = record.spans_s[0]
    print(f'query {record.query_id}: "{record.query_text}"')
    print(f"  ground truth: {record.video_id} {gt[0]:5.1f}-{gt[1]:5.1f} s")
    for rank in range(min(top, int(vcmr.length[q]))):
        video = val.video_ids[vcmr.video_idx[q, rank]]
        start, end = vcmr.st_ed[q, rank]
        hit = video == record.video_id and iou((start, end), gt) >= 0.5
        print(
            f"  {rank + 1}. {video} {start:5.1f}-{end:5.1f} s  score {vcmr.score[q, rank]:.3g}"
            + ("  <- hit" if hit else "")
        )


for q in range(3):
    show_ranked(q)

# %% [markdown]
# ## 4. Ranked moments across videos
#
# For one query: the five videos the VR list ranks first (one row each, the query's own
# video marked) and the first ten moments of the VCMR list that fall in them, numbered by
# their rank in that list across all videos. The query shown is the first whose top moment
# is in its own video.

# %%
hits = [q for q in range(len(rows)) if val.video_ids[vcmr.video_idx[q, 0]] == records[q].video_id]
q = hits[0] if hits else 0
record = records[q]
shown = [int(v) for v in vr.video_idx[q, :5] if v >= 0]
own = val.video_ids.index(record.video_id)
if own not in shown:
    shown.append(own)  # the query's own video, even when VR missed it

duration = {r.video_id: float(r.duration_s) for r in records}
fig, ax = plt.subplots(figsize=(10, 0.9 * len(shown) + 1.6))
gt = record.spans_s[0]
ax.barh(shown.index(own), gt[1] - gt[0], left=gt[0], height=0.95, color="tab:green", alpha=0.3,
        label="ground truth")  # fmt: skip
top10 = [k for k in range(min(10, int(vcmr.length[q]))) if int(vcmr.video_idx[q, k]) in shown]
for row, video in enumerate(shown):
    ax.plot([0, duration[val.video_ids[video]]], [row, row], color="grey", lw=1, zorder=0)
    mine = [k for k in top10 if int(vcmr.video_idx[q, k]) == video]
    lane = 0.8 / max(len(mine), 1)  # one lane per moment, so overlapping ones stay apart
    for j, rank in enumerate(mine):
        start, end = vcmr.st_ed[q, rank]
        y = row - 0.4 + lane * (j + 0.5)
        label = "VCMR moment (number: its rank across all videos)" if rank == top10[0] else None
        ax.barh(y, end - start, left=start, height=0.85 * lane, color="tab:blue", label=label)
        ax.text(start - 0.3, y, str(rank + 1), ha="right", va="center", fontsize=8)
vr_rank = {int(v): k + 1 for k, v in enumerate(vr.video_idx[q, :5])}
labels = [
    val.video_ids[v]
    + (f" (VR rank {vr_rank[v]})" if v in vr_rank else " (VR: not in top 5)")
    + ("\nits own video" if v == own else "")
    for v in shown
]
ax.set_yticks(range(len(shown)))
ax.set_yticklabels(labels)
ax.set_ylim(len(shown) - 0.5, -0.5)
ax.set_xlim(-2, max(duration[val.video_ids[v]] for v in shown) + 1)
ax.set_xlabel("time in the video (s); grey line: the video's length")
ax.set_title(f'"{record.query_text}": the top-10 moments across videos', fontsize=10)
ax.legend(loc="lower right", fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Search speed against corpus size
#
# `run_search_bench` (what `vmr-jax bench --search 1000,10000` prints) searches batches of
# queries against corpora of random video encodings of this model's shapes: speed does not
# depend on the weights. Every video is scored, so the cost grows with the corpus once the
# fixed cost (localising the top videos, NMS) stops dominating. The sizes are small so that
# the notebook stays fast; `vmr-jax bench` measures up to 100,000 videos.

# %%
corpus_sizes = (100, 1000) if QUICK else (100, 1000, 5000, 20000)
bench = run_search_bench(
    predictor.config, corpus_sizes, clips=int(predictor.config.model.max_ctx_l), steps=3
)
speed = [(row["num_videos"], row["queries_per_s"], row["index_mib"]) for row in bench["search"]]
for videos, qps, mib in speed:
    print(f"{videos:>7} videos: {qps:8.1f} queries/s, index {mib:7.1f} MiB")

fig, ax = plt.subplots(figsize=(6, 4))
ax.plot([s[0] for s in speed], [s[1] for s in speed], marker="o", label=f"XML, {bench['device']}")
ax.set_xscale("log")
ax.set_ylim(0, 1.1 * max(s[1] for s in speed))
ax.set_xlabel("corpus size (videos)")
ax.set_ylabel("search throughput (queries/s)")
ax.set_title(
    f"batches of {bench['queries_per_batch']} queries, {bench['clips_per_video']} clips per video",
    fontsize=10,
)
ax.legend()
ax.grid(True, alpha=0.3)
fig.tight_layout()
plt.show()
