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
# # Your own videos and sentences: `Predictor`, predictions files, official scoring
#
# A trained workdir answers free-text queries about any video whose clip features come from
# the extractor the model was trained on: `Predictor` restores the parameters and the run's
# saved text encoder only (no optimiser state, no training data). This notebook
#
# 1. loads the quickstart's MGPN workdir (`01_quickstart`; trained here when it is absent),
# 2. writes a feature file and a queries file as a user would, answers free-text queries and
#    draws the predicted moments on each video's timeline with their scores,
# 3. writes a predictions file and scores it under the official 2D-TAN protocol,
# 4. converts a checkpoint in the official PyTorch layout (optional: needs `torch`).
#
# The quickstart model was trained on the synthetic benchmark, whose "videos" are 32-d clip
# features with planted events and whose sentences use the benchmark's made-up words
# (`verb2 adj0 noun1` plus fillers): so "your" video here is a synthetic test video written
# to a file. A model trained on Charades-STA reads I3D features and English in the same way.

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
import re

import matplotlib.pyplot as plt
import numpy as np

from data_pipelines import synthetic
from vmr_jax import Predictor, config_cli, trainer
from vmr_jax.evaluation import scoring
from vmr_jax.predict import predict_workdir

# VMR_NOTEBOOK_QUICK=1 (set by the CI runner, .ci/notebooks) shrinks every run to seconds.
QUICK = os.environ.get("VMR_NOTEBOOK_QUICK") == "1"
WORKDIR = os.path.join("workdirs", "quickstart_mgpn")  # 01_quickstart's workdir
os.makedirs("my_files", exist_ok=True)

# %% [markdown]
# ## 1. A trained workdir
#
# The quickstart's workdir when it is there; otherwise the same short run is trained here
# (the quickstart's config and overrides).

# %%
if not os.path.exists(os.path.join(WORKDIR, "config.json")):
    if QUICK:
        overrides = {
            "data.synthetic.num_videos": 60,
            "train.batch_size": 8,
            "train.num_steps": 12,
            "train.log_every": 2,
            "train.checkpoint_every": 6,
            "evals.every": 6,
        }
    else:
        overrides = {
            "data.synthetic.num_videos": 400,
            "train.num_steps": 150,
            "train.log_every": 10,
            "train.checkpoint_every": 50,
            "evals.every": 50,
        }
    config = config_cli.load_config("mgpn/synthetic", [(k, str(v)) for k, v in overrides.items()])
    trainer.train_and_evaluate(config, WORKDIR)

predictor = Predictor.from_workdir(WORKDIR, step="best")
dim = predictor.config.model.feature_dim
print(f"{predictor.family.name}, step {predictor.step}: [T, {dim}] clip features and query")
print(f"text (text mode {predictor.config.data.text_mode!r})")

# %% [markdown]
# ## 2. Your feature file and your sentences
#
# Features: an `.npz` (or HDF5) holding one `[T, D]` float array per video id, `T` clips at
# the extractor's rate (here 1 clip per second). We write three videos of the benchmark's
# test split, which the model never saw, and remember their planted events only to check the
# answers.

# %%
spec = synthetic.spec_from_config(predictor.config.data.synthetic)
test_records = synthetic.make_splits(spec, int(predictor.config.data.seed), ["test"])["test"]
videos = {}  # video id -> its queries' records
for record in test_records:
    videos.setdefault(record.video_id, []).append(record)
chosen = sorted(videos)[:3]
np.savez("my_files/my_videos.npz", **{v: videos[v][0].video_features for v in chosen})
durations = {v: float(videos[v][0].duration_s) for v in chosen}
with np.load("my_files/my_videos.npz") as archive:
    for v in chosen:
        print(f"{v}: features {archive[v].shape}, {durations[v]:.0f} s")

# %% [markdown]
# Sentences are free text: a query names an event by its verb, adjective and noun; other
# words are read as fillers (words the run's vocabulary never saw become `<unk>`). For each
# video we ask about its events in our own words: the three content words of one of its
# benchmark queries in a sentence of our making.

# %%
CONTENT = re.compile(r"(verb|adj|noun)\d+")


def my_sentence(benchmark_text: str) -> str:
    verb, adj, noun = [w for w in benchmark_text.split() if CONTENT.fullmatch(w)]
    return f"someone {verb} the {adj} {noun} here"


questions = {v: [my_sentence(r.query_text) for r in videos[v][:2]] for v in chosen}
truth = {v: [r.spans_s[0].tolist() for r in videos[v][:2]] for v in chosen}
answers = {
    v: predictor.predict(videos[v][0].video_features, durations[v], questions[v]) for v in chosen
}
for v in chosen:
    for text, found in zip(questions[v], answers[v]):
        start, end, score = found[0]
        print(f"{v} | {text!r}: best {start:.1f}-{end:.1f} s (score {score:.3f})")

# %% [markdown]
# ## 3. The answers on each video's timeline
#
# One row per predicted moment (rank 1 on top), coloured by its score; the green band is the
# planted event the sentence names.

# %%
fig, axes = plt.subplots(len(chosen), 1, figsize=(10, 2.2 * len(chosen)))
cmap = plt.get_cmap("plasma")
for ax, video in zip(axes, chosen):
    found = answers[video][0][:5]  # the first sentence asked about each video
    scores = np.array([m[2] for m in found])
    low, high = scores.min(), max(scores.max(), scores.min() + 1e-6)
    gt_start, gt_end = truth[video][0]
    ax.axvspan(gt_start, gt_end, color="tab:green", alpha=0.3, label="ground truth (planted event)")
    for rank, (start, end, score) in enumerate(found, 1):
        colour = cmap(0.15 + 0.7 * (score - low) / (high - low))
        label = "predicted moment (row: rank, text: score)" if rank == 1 else None
        ax.barh(rank, end - start, left=start, height=0.7, color=colour, ec="black", label=label)
        ax.text(end + 0.4, rank, f"{score:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, durations[video] + 6)
    ax.set_ylim(len(found) + 0.6, 0.4)
    ax.set_yticks(range(1, len(found) + 1))
    ax.set_ylabel("rank")
    ax.set_title(f'{video} ({durations[video]:.0f} s): "{questions[video][0]}"', fontsize=10)
axes[-1].set_xlabel("time in the video (s)")
fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=2, fontsize=9)
fig.tight_layout(rect=(0, 0, 1, 0.94))
plt.show()

# %% [markdown]
# ## 4. A predictions file, scored with the official protocol
#
# `vmr-jax predict --workdir DIR --features F --queries Q` answers every query of a JSON list
# `{"query_id", "video_id", "duration", "query"}` and writes one predictions file;
# `predict_workdir` is the same from Python. `vmr-jax score` (`scoring.score`) scores any
# such file against ground truth: here a JSON-lines file `{"query_id", "spans_s"}` of the
# planted events. Protocol `2dtan` counts a hit when IoU > m (microsoft/2D-TAN's
# evaluator), `mmn` when IoU >= m.

# %%
entries, ground_truth = [], []
for v in chosen:
    for record in videos[v]:
        query_id = record.query_id
        entries.append(
            {"query_id": query_id, "video_id": v, "duration": durations[v],
             "query": my_sentence(record.query_text)}
        )  # fmt: skip
        ground_truth.append({"query_id": query_id, "spans_s": record.spans_s.tolist()})
with open("my_files/my_queries.json", "w", encoding="utf-8") as f:
    json.dump(entries, f, indent=1)
with open("my_files/my_ground_truth.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(line) + "\n" for line in ground_truth)

written = predict_workdir(
    WORKDIR,
    step="best",
    features="my_files/my_videos.npz",
    queries="my_files/my_queries.json",
    output="my_files/my_predictions.json",
)
print(f"{written['num_queries']} queries answered -> {written['output']} ({written['format']})")
for protocol in ("2dtan", "mmn"):
    scored = scoring.score(protocol, "my_files/my_ground_truth.jsonl", written["output"])
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in scored["metrics"].items())
    print(f"\n{protocol} ({scored['num_queries']} queries): {metrics}")
    print("rule:", scored["rule"])

# %% [markdown]
# ## 5. An official PyTorch checkpoint (optional: needs `torch`)
#
# `vmr-jax convert --checkpoint MGPN.pkl --yaml i3d-finetune-mgpn256.yaml --workdir DIR`
# loads an official Huntersxsx/MGPN `state_dict` into a workdir, which then evaluates,
# predicts and scores like a trained one. Reading a PyTorch file needs `torch`
# (`pip install 'vmr_jax[torch]'`): the cells below run only when it is importable.
#
# No official checkpoint is at hand here, so the notebook **writes one itself**: a
# `state_dict` with the official MGPN key names and PyTorch layouts (Linear `(out, in)`,
# Conv `(out, in, k...)`, GRU gates stacked), filled with **random weights** for the tiny
# synthetic architecture with word-vector input (`mgpn/synthetic:features`, as the official
# model reads GloVe vectors). Its scores are therefore at chance level; with a real file the
# same cells give the official model's results.

# %%
HAVE_TORCH = importlib.util.find_spec("torch") is not None
print("torch is importable: the conversion runs" if HAVE_TORCH else "no torch: skipped")

# %%
if HAVE_TORCH:
    import jax
    import torch

    from vmr_jax.convert.cli import build_config, convert_to_workdir
    from vmr_jax.convert.mgpn import mgpn_rules
    from vmr_jax.models import get_family
    from vmr_jax.predictor import restore_for_inference

    quick = [("data.synthetic.num_videos", "60")] if QUICK else []
    official_config = build_config("mgpn/synthetic:features", None, quick)
    family = get_family("mgpn")
    model = family.create_model(official_config.model)
    example = family.example_batch(official_config.model)
    shapes = jax.eval_shape(
        lambda key: model.init({"params": key, "dropout": key}, example, train=False),
        jax.random.PRNGKey(0),
    )
    # 1x1 convolutions of the official model: Conv2d in the relation and prediction layers.
    CONV2D = ("relation_layer", "pred_layer")

    def official_shape(rule, flax_shape):
        """The PyTorch shape of a weight whose Flax shape is ``flax_shape``."""
        kind = getattr(rule.transform, "__name__", "")
        if kind == "linear":
            return flax_shape[::-1]
        if kind == "conv1x1":
            ones = (1, 1) if rule.torch_key.startswith(CONV2D) else (1,)
            return (flax_shape[1], flax_shape[0], *ones)
        if kind == "conv1d":  # (k, in, out) <- (out, in, k)
            return (flax_shape[2], flax_shape[1], flax_shape[0])
        if kind == "conv2d":  # (kh, kw, in, out) <- (out, in, kh, kw)
            return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
        return flax_shape

    generator = torch.Generator().manual_seed(0)
    state_dict = {}
    for rule in mgpn_rules(official_config.model):
        node = shapes
        for part in rule.flax_path:
            node = node[part]
        shape = official_shape(rule, tuple(node.shape))
        if rule.torch_key.endswith("running_var"):
            state_dict[rule.torch_key] = 0.5 + torch.rand(shape, generator=generator)
        else:
            state_dict[rule.torch_key] = 0.1 * torch.randn(shape, generator=generator)
    torch.save(state_dict, "my_files/MGPN_random_official_layout.pkl")
    print(f"wrote {len(state_dict)} tensors in the official layout, e.g.")
    for key in list(state_dict)[:3]:
        print(f"  {key}: {tuple(state_dict[key].shape)}")

# %% [markdown]
# Convert (what `vmr-jax convert --checkpoint FILE --config mgpn/synthetic:features
# --workdir DIR` runs), check that a weight landed where the official layout says, then
# evaluate the converted workdir and score its predictions file.

# %%
if HAVE_TORCH:
    from vmr_jax import checkpoint_eval

    CONVERTED = os.path.join("workdirs", "converted_mgpn")
    convert_to_workdir(
        "my_files/MGPN_random_official_layout.pkl", official_config, CONVERTED, "mgpn"
    )
    restored = restore_for_inference(CONVERTED, step=0)
    kernel = np.asarray(restored.variables["params"]["frame_conv"]["kernel"])
    torch_weight = state_dict["encoder_layer.frame_encoder.vis_conv.weight"].numpy()
    assert np.array_equal(kernel, torch_weight[:, :, 0].T)  # Conv1d (out, in, 1) -> (in, out)
    print("frame_conv kernel == official vis_conv.weight[:, :, 0].T")

    converted_eval = checkpoint_eval.evaluate_workdir(CONVERTED, step=0)
    # vmr-jax eval's predictions lines carry their ground truth: the file scores itself.
    rescored = scoring.score(
        "2dtan", converted_eval["predictions_path"], converted_eval["predictions_path"]
    )
    print(f"random official-layout weights, {rescored['num_queries']} val queries (chance level):")
    print(", ".join(f"{k} {v:.3f}" for k, v in rescored["metrics"].items()))
    assert rescored["metrics"] == {
        k: v for k, v in converted_eval["metrics"].items() if k != "num_queries"
    }
