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
# # A benchmark from its official files, and the statistics to look at before training
#
# `vmr-jax data build` reads a benchmark's official annotation and feature files, applies the
# reference code's preprocessing (what it drops or clips, and why, is counted) and writes a
# dataset the training pipeline streams. Before the feature downloads finish,
# `vmr-jax data fake` writes random features in the official layout for every annotated
# video, so the build (and a dry-run training) needs the annotation files only.
#
# Here: Charades-STA from its official annotation files, fake I3D features, the build, and
# the distributions of moment length and position and of query length per split.
#
# The annotation files are read from `shared/data/charades_sta` beside the checkout (or the
# folder `VMR_BENCHMARK_DATA` names); where they are absent (e.g. on Colab: upload the
# official files and set `VMR_BENCHMARK_DATA`) the notebook says so and skips its data cells.

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
import argparse
import contextlib
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import vmr_jax
from vmr_jax import data_cli

# VMR_NOTEBOOK_QUICK=1 (set by the CI runner, .ci/notebooks): the test split only.
QUICK = os.environ.get("VMR_NOTEBOOK_QUICK") == "1"
DATASET, FEATURES = "charades_sta", "i3d"
# shared/data beside the checkout that holds vmr_jax, unless VMR_BENCHMARK_DATA says where.
DATA_ROOT = Path(
    os.environ.get("VMR_BENCHMARK_DATA")
    or Path(vmr_jax.__file__).resolve().parents[2] / "shared" / "data"
)
ANNOTATIONS = DATA_ROOT / DATASET
HAVE_DATA = ANNOTATIONS.is_dir()
if HAVE_DATA:
    print(f"official {DATASET} annotations: {ANNOTATIONS}")
else:
    print(f"no {ANNOTATIONS}: the data cells below are skipped (set VMR_BENCHMARK_DATA)")


def vmr_jax_data(*argv: str) -> dict:
    """``vmr-jax data ARGV...`` in this process; its JSON report (printed by the command)."""
    parser = argparse.ArgumentParser(prog="vmr-jax data")
    data_cli.add_arguments(parser)
    report = Path("data") / "report.json"
    report.parent.mkdir(exist_ok=True)
    args = parser.parse_args([*argv, "--json", str(report)])
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        code = data_cli.main(args)
    if code:
        raise RuntimeError(f"vmr-jax data {' '.join(argv)} exited with {code}")
    return json.loads(report.read_text())


# %% [markdown]
# ## 1. Fake features, then the build
#
# Both commands are `vmr-jax data fake|build ...` run in this process. The fake features go
# to `data/fake_features/charades_sta-i3d`, the dataset to `data/vmr_jax/charades_sta-i3d`
# (where `configs/mgpn/charades_i3d.py` looks); the annotation folder is only read.

# %%
if HAVE_DATA:
    splits = ["test"] if QUICK else ["train", "test"]
    common = ["--dataset", DATASET, "--features", FEATURES, "--splits", ",".join(splits)]
    faked = vmr_jax_data("fake", *common, "--data_dir", str(ANNOTATIONS))
    print("fake features written to", faked["output_dir"])
    built = vmr_jax_data(
        "build", *common, "--data_dir", faked["output_dir"], "--annotation_dir", str(ANNOTATIONS)
    )
    print("dataset built in", built["output_dir"])
    for split in splits:
        counts, report = built["splits"][split], built["report"][split]
        print(f"\n{split}: {counts['num_queries']} queries, {counts['num_videos']} videos")
        for what, reasons in (("dropped", report["dropped"]), ("clipped", report["clipped"])):
            for reason, count in reasons.items():
                print(f"  {what} {count}: {reason}")

# %% [markdown]
# ## 2. What the queries look like
#
# The build writes one JSON line per query (`<split>.queries.jsonl`: video, duration, ground
# truth spans in seconds, text): everything below is read from there.

# %%
if HAVE_DATA:
    queries = {}
    for split in splits:
        path = Path(built["output_dir"]) / f"{split}.queries.jsonl"
        with open(path, encoding="utf-8") as f:
            queries[split] = [json.loads(line) for line in f]
    for line in queries[splits[-1]][:3]:
        span = line["spans_s"][0]
        print(f"{line['video_id']} ({line['duration_s']:.1f} s) {span}: {line['query_text']!r}")

# %% [markdown]
# ## 3. Moment length and position, query length
#
# Positions are normalised by the video's duration (0: its start, 1: its end). A strong
# position prior (moments crowding at the start, as in Charades-STA) is what a model can
# learn without looking at the video: compare a model with the span-prior baseline.

# %%
if HAVE_DATA:
    stats = {}
    for split, lines in queries.items():
        start, end = np.array([line["spans_s"][0] for line in lines]).T
        duration = np.array([line["duration_s"] for line in lines])
        stats[split] = {
            "length": end - start,
            "fraction": (end - start) / duration,
            "start": start / duration,
            "end": end / duration,
            "words": np.array([len(line["query_text"].split()) for line in lines]),
            "duration": duration,
        }

    longest = max(int(s["words"].max()) for s in stats.values())
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    panels = [
        ("length", "moment length (s)", np.linspace(0, 40, 41)),
        ("fraction", "moment length / video duration", np.linspace(0, 1, 41)),
        ("words", "query length (words)", np.arange(0.5, longest + 1.5, 1)),
        ("duration", "video duration (s)", np.linspace(0, 80, 41)),
    ]
    for ax, (key, label, bins) in zip(axes.flat[[0, 1, 2, 3]], panels):
        for split in splits:
            ax.hist(stats[split][key], bins=bins, density=True, alpha=0.5, label=split)
        ax.set_xlabel(label)
        ax.set_ylabel("density")
        ax.legend(title="split")
    ax = axes.flat[4]
    bins = np.linspace(0, 1, 21)
    for split in splits:
        ax.hist(stats[split]["start"], bins=bins, density=True, histtype="step", lw=2,
                label=f"{split}: start")  # fmt: skip
        ax.hist(stats[split]["end"], bins=bins, density=True, histtype="step", lw=2, ls="--",
                label=f"{split}: end")  # fmt: skip
    ax.set_xlabel("position in the video (start / duration, end / duration)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax = axes.flat[5]
    split = splits[-1]
    counts, _, _, image = ax.hist2d(
        stats[split]["start"], stats[split]["end"], bins=20, range=[[0, 1], [0, 1]], cmap="Blues"
    )
    fig.colorbar(image, ax=ax, label="queries")
    ax.set_xlabel("normalised start")
    ax.set_ylabel("normalised end")
    ax.set_title(f"{split}: where the moments are", fontsize=10)
    fig.suptitle(f"{DATASET}: ground-truth moments and queries")
    fig.tight_layout()
    plt.show()

    for split in splits:
        s = stats[split]
        print(
            f"{split}: median moment {np.median(s['length']):.1f} s "
            f"({100 * np.median(s['fraction']):.0f} % of the video), "
            f"median query {np.median(s['words']):.0f} words, "
            f"{100 * np.mean(s['start'] < 0.1):.0f} % of moments start in the first tenth"
        )
