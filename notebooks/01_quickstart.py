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
# # vmr_jax quickstart: train MGPN, read its curves, look inside one score map
#
# MGPN (the `tiny` variant) learns to find, in an untrimmed video, the moment a sentence
# describes. Here it trains on the library's synthetic benchmark (no download: videos are
# random clip features with planted events, queries are sentences naming those events) from
# Python, then we plot its training curves, evaluate the best checkpoint under the 2D-TAN
# protocol and look at the 2D score map the model produces for one query.
#
# The run is shortened to about a minute on a CPU runtime; the full config
# (`configs/mgpn/synthetic.py`, 500 steps) reaches R@1,IoU=0.5 of about 0.80.

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
import json
import os

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patheffects

from data_pipelines.sources import DataSources
from vmr_jax import Predictor, checkpoint_eval, config_cli, trainer
from vmr_jax.evaluation.chance import chance_level
from vmr_jax.metrics_writer import read_metrics
from vmr_jax.ops.moment_map import valid_cell_mask

# VMR_NOTEBOOK_QUICK=1 (set by the CI runner, .ci/notebooks) shrinks every run to seconds.
QUICK = os.environ.get("VMR_NOTEBOOK_QUICK") == "1"
WORKDIR = os.path.join("workdirs", "quickstart_mgpn")

# %% [markdown]
# ## 1. The config
#
# A run is one config: `get_config()` of a file under `configs/`, loaded by name, plus
# `(dotted field, value)` overrides, exactly as `vmr-jax train --config mgpn/synthetic
# --config.train.num_steps=...` would apply them.

# %%
if QUICK:
    OVERRIDES = {
        "data.synthetic.num_videos": 60,
        "train.batch_size": 8,
        "train.num_steps": 12,
        "train.log_every": 2,
        "train.checkpoint_every": 6,
        "evals.every": 6,
    }
else:
    OVERRIDES = {
        "data.synthetic.num_videos": 400,
        "train.num_steps": 150,
        "train.log_every": 10,
        "train.checkpoint_every": 50,
        "evals.every": 50,
    }
config = config_cli.load_config(
    "mgpn/synthetic", [(key, str(value)) for key, value in OVERRIDES.items()]
)
print("model:", config.model.name, "| clips:", config.model.num_clips)
print("train:", config.train.num_steps, "steps of batch", config.train.batch_size)
print("data:", config.data.synthetic.num_videos, "synthetic videos")

# %% [markdown]
# ## 2. Train
#
# `trainer.train_and_evaluate` is what `vmr-jax train` runs: it builds the data, the model
# and a mesh of every local device (so the same cell runs on a CPU, GPU or TPU runtime),
# trains, evaluates every `evals.every` steps and checkpoints into the workdir. Run it again
# and it resumes from the newest checkpoint (here: nothing left to train).

# %%
result = trainer.train_and_evaluate(config, WORKDIR)
print("trained to step", result["step"], "| best step:", result["best_step"])
print(json.dumps(result["eval_metrics"], indent=1))

# %% [markdown]
# ## 3. Evaluate the best checkpoint
#
# `checkpoint_eval.evaluate_workdir` is `vmr-jax eval`: it rebuilds everything from the
# workdir alone, decodes the score maps as the official 2D-TAN code does (NMS, top 5) and
# writes the metrics and one predictions line per query. Chance is a model that scores the
# valid moments of the map at random (`vmr_jax.evaluation.chance.chance_level`, on the same
# queries).

# %%
evaluation = checkpoint_eval.evaluate_workdir(WORKDIR, step="best")
with open(evaluation["predictions_path"], encoding="utf-8") as f:
    predictions = [json.loads(line) for line in f]
chance = chance_level(
    np.array([p["gt_spans"][0] for p in predictions]),
    np.array([p["duration"] for p in predictions]),
    int(config.model.num_clips),
    tuple(config.model.pooling_counts),
    nms_threshold=float(config.evals.nms_thresh),
    iou_thresholds=tuple(config.evals.ious),
)
print("step", evaluation["step"], "| protocol", evaluation["protocol"], "|", evaluation["rule"])
print(f"{'metric':<14}{'MGPN':>8}{'chance':>8}")
for metric, value in evaluation["metrics"].items():
    if metric != "num_queries":
        at_chance = f"{chance[metric]:8.3f}" if metric in chance else ""
        print(f"{metric:<14}{value:>8.3f}{at_chance}")
print("predictions:", evaluation["predictions_path"])

# %% [markdown]
# ## 4. Training curves from `metrics.jsonl`
#
# The workdir keeps one JSON line per logged step (`split` = `train` or the eval split);
# `read_metrics` gives them by step.

# %%
train_rows = read_metrics(WORKDIR, "train")
val_rows = read_metrics(WORKDIR, config.evals.split)

fig, (ax_loss, ax_r1) = plt.subplots(1, 2, figsize=(11, 3.8))
steps = sorted(train_rows)
ax_loss.plot(steps, [train_rows[s]["loss"] for s in steps], marker=".", label="train loss")
ax_loss.set_xlabel("step")
ax_loss.set_ylabel("loss (scaled BCE)")
ax_loss.set_title("training loss")
ax_loss.legend()
steps = sorted(val_rows)
for metric in ("R@1,IoU=0.5", "R@1,IoU=0.7"):
    line = ax_r1.plot(steps, [val_rows[s][metric] for s in steps], marker="o", label=metric)
    ax_r1.axhline(chance[metric], ls="--", color=line[0].get_color(), label=f"{metric}, chance")
ax_r1.set_xlabel("step")
ax_r1.set_ylabel("recall")
ax_r1.set_ylim(0, 1)
ax_r1.set_title(f"{config.evals.split} recall ({len(predictions)} queries)")
ax_r1.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. One query's 2D score map
#
# MGPN scores every candidate moment `(start clip i, end clip j)` of a `N x N` map; only the
# cells of the sparse sampling are candidates (the others are blank). Each cell is drawn at
# its moment's start (y) and end (x) in seconds, so the ground truth and the decoded top-5
# moments (after NMS) are plotted at their own times.
#
# `Predictor` restores the checkpoint's parameters only; `predictor.restored.model` and the
# family's `decode` give the raw map of a batch.

# %%
predictor = Predictor.from_workdir(WORKDIR, step="best")
data = DataSources(predictor.config)  # the run's synthetic benchmark, rebuilt from its seed
val = data.prepared(config.evals.split)


def iou(a, b):
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


# The val query whose top-1 moment overlaps its ground truth most (ties: the first).
record = max(predictions, key=lambda p: iou(p["moments"][0], p["gt_spans"][0]))
rows = np.array([record["query_index"]])
text = data.query_records(config.evals.split, rows)[0].query_text
batch = dict(val.query_batch(rows))
batch.update(val.videos.take(val.video_index[rows]))
outputs = predictor.restored.model.apply(predictor.restored.variables, batch, train=False)
decoded = predictor.family.decode(outputs, batch, predictor.config.model)
score_map = np.asarray(decoded["score_map"])[0]

n = score_map.shape[0]
duration = record["duration"]
cell = duration / n
valid = valid_cell_mask(n, tuple(config.model.pooling_counts))
fig, ax = plt.subplots(figsize=(6.6, 5.6))
# Cell (i, j) is the moment [i, j + 1] * duration / N: its centre sits at (end, start).
image = ax.imshow(
    np.where(valid, score_map, np.nan),
    origin="lower",
    cmap="viridis",
    extent=(0.5 * cell, duration + 0.5 * cell, -0.5 * cell, duration - 0.5 * cell),
)
fig.colorbar(image, ax=ax, label="score (sigmoid of the cell logit)")
gt_start, gt_end = record["gt_spans"][0]
ax.scatter(
    [gt_end], [gt_start], marker="*", s=420, c="red", edgecolors="black", label="ground truth"
)
top5 = record["moments"][:5]
ring = dict(marker="o", s=220, facecolors="none")
ax.scatter(
    [m[1] for m in top5],
    [m[0] for m in top5],
    edgecolors="black",
    linewidths=4,
    label="top-5 predictions (rank)",
    **ring,
)
ax.scatter([m[1] for m in top5], [m[0] for m in top5], edgecolors="white", linewidths=2, **ring)
outline = [patheffects.withStroke(linewidth=3, foreground="black")]
for rank, (start, end, _) in enumerate(top5, 1):
    ax.annotate(
        str(rank),
        (end, start),
        xytext=(-16, 6),
        textcoords="offset points",
        color="white",
        fontsize=12,
        fontweight="bold",
        path_effects=outline,
    )
ax.set_xlim(0, duration + cell)
ax.set_ylim(-cell, duration)
ax.set_xlabel("moment end (s)")
ax.set_ylabel("moment start (s)")
ax.set_title(f'{record["query_id"]}: "{text}"', fontsize=10)
ax.legend(loc="upper left", fontsize=9)  # start > end: no moment there
plt.show()

print(f"ground truth {gt_start:6.2f}-{gt_end:6.2f} s")
for rank, (start, end, score) in enumerate(top5, 1):
    overlap = iou((start, end), (gt_start, gt_end))
    print(f"{rank}. {start:6.2f}-{end:6.2f} s   score {score:.3f}   IoU {overlap:.2f}")
