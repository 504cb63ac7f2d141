"""``vmr-jax data build | validate | stats | fake``: the official files of a benchmark, checked
and built into a dataset the training pipeline streams.

    vmr-jax data stats    --dataset charades_sta --features i3d --data_dir DIR
    vmr-jax data validate --dataset charades_sta --features i3d --data_dir DIR
    vmr-jax data build    --dataset charades_sta --features i3d --data_dir DIR \\
        [--output_dir OUT] [--allow_missing]

``DIR`` holds the official annotation and feature files under their official names (the
manifest printed by ``data stats``); ``--annotation_dir``, ``--video_features``,
``--subtitle_features`` and ``--query_features`` point elsewhere.  ``build`` writes to
``--output_dir``, by default ``data/vmr_jax/<dataset>-<features>`` under the current
directory, where the benchmark configs' ``config.data.dir`` looks (run ``train`` from the same
directory), never inside the folder of the official files.

    vmr-jax data fake --dataset charades_sta --features i3d --data_dir ANNOTATIONS \\
        [--output_dir OUT]

reads the annotations of ``ANNOTATIONS`` (or ``--annotation_dir``) and writes random features
in the official layouts for every annotated video (:mod:`data_pipelines.fake_features`) under
``OUT``, by default ``data/fake_features/<dataset>-<features>`` under the current directory
(never the annotation folder): a dry run of ``build`` (``--data_dir OUT --annotation_dir
ANNOTATIONS``, as the command prints) and of training before the real feature files are at
hand.

``--subtitle_words`` (TVR; Cascaded MPN's ``config.data.subtitle_words``): ``build`` also stores
each video's subtitle sentences and word token features (``tvqa_preprocessed_subtitles.jsonl``
with the annotations or in ``--data_dir``, the token h5 ``tvr_feature_release/bert_feature/
sub_query/tvr_sub_pretrained_w_sub_query.h5`` in ``--data_dir``; ``--subtitle_sentences`` /
``--subtitle_tokens`` point elsewhere) and reports every alignment fallback; ``validate`` and
``stats`` align them and report the same counts; ``fake`` writes both files in the official
layouts (sentences in ``OUT``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ACTIONS = ("build", "validate", "stats", "fake")
BUILD_ROOT = os.path.join("data", "vmr_jax")  # relative to the current directory
FAKE_ROOT = os.path.join("data", "fake_features")


def default_output_dir(action: str, dataset: str, features: str) -> str:
    """Where ``build`` / ``fake`` write without ``--output_dir``: under ``data/`` of the current
    directory, ``<root>/<dataset>-<features>``."""
    return os.path.join(BUILD_ROOT if action == "build" else FAKE_ROOT, f"{dataset}-{features}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument(
        "--dataset", required=True, help="charades_sta|tacos|activitynet|didemo|tvr"
    )
    parser.add_argument("--features", required=True, help="feature set of the dataset's manifest")
    parser.add_argument(
        "--data_dir",
        required=True,
        help="folder of the official files (fake: of the annotations, which it only reads)",
    )
    parser.add_argument("--annotation_dir", default=None, help="default: --data_dir")
    parser.add_argument("--video_features", default=None, help="file/folder (default: official)")
    parser.add_argument("--subtitle_features", default=None, help="TVR subtitle h5")
    parser.add_argument("--query_features", default=None, help="TVR query token h5")
    parser.add_argument(
        "--subtitle_words",
        action="store_true",
        help="TVR: word-level subtitles (build stores them, validate/stats check, fake writes)",
    )
    parser.add_argument(
        "--subtitle_sentences",
        default=None,
        help="subtitle jsonl (default: tvqa_preprocessed_subtitles.jsonl in the annotation dir, "
        "else in --data_dir)",
    )
    parser.add_argument(
        "--subtitle_tokens",
        default=None,
        help="subtitle token h5 (default: the official path under --data_dir)",
    )
    parser.add_argument("--splits", default=None, help="comma-separated (default: all present)")
    parser.add_argument(
        "--output_dir",
        default=None,
        help=(
            f"where build writes the dataset (default: {BUILD_ROOT}/<dataset>-<features> in the "
            "current directory, where the configs' config.data.dir looks) or fake writes its "
            f"feature files (default: {FAKE_ROOT}/<dataset>-<features>); never the "
            "annotation folder unless given"
        ),
    )
    parser.add_argument(
        "--allow_missing",
        action="store_true",
        help="build: drop (and count) queries whose features are missing instead of failing",
    )
    parser.add_argument(
        "--max_videos",
        type=int,
        default=0,
        help="stats: read at most this many videos per split for feature statistics (0: all)",
    )
    parser.add_argument(
        "--clips_per_second",
        type=float,
        default=1.0,
        help="fake: clip rate of features without a fixed clip length",
    )
    parser.add_argument("--json", default=None, help="also write the report to this file")


def main(args: argparse.Namespace) -> int:
    from data_pipelines import build, data_report

    out = args.output_dir or default_output_dir(args.action, args.dataset, args.features)
    # fake writes the official feature files under OUT: they are the sources it fills.
    sources = build.resolve_sources(
        args.dataset,
        args.features,
        out if args.action == "fake" else args.data_dir,
        args.annotation_dir or args.data_dir,
        {
            "video": args.video_features,
            "subtitle": args.subtitle_features,
            "query": args.query_features,
        },
        subtitle_words=args.subtitle_words,
        subtitle_sentences=args.subtitle_sentences,
        subtitle_tokens=args.subtitle_tokens,
    )
    splits = args.splits.split(",") if args.splits else None
    if args.action == "stats":
        result = data_report.stats(sources, splits, max_videos=args.max_videos)
        code = 0
    elif args.action == "fake":
        from data_pipelines.fake_features import write_fake_features

        result = {"written": write_fake_features(sources, splits, args.clips_per_second)}
        result["output_dir"] = out
        code = 0
    elif args.action == "validate":
        result = data_report.validate(sources, splits)
        code = 1 if result["errors"] else 0
    else:
        result = build.build(sources, out, splits=splits, allow_missing=args.allow_missing)
        result["output_dir"] = out
        code = 0
    text = json.dumps(result, indent=2, sort_keys=False)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    if args.action == "validate":
        print(f"{len(result['errors'])} problems found", file=sys.stderr)
    if args.action == "build":
        print(f"built: {result['output_dir']} (set config.data.dir to it)", file=sys.stderr)
    if args.action == "fake":
        print(
            f"fake features: {out}; build from them with: vmr-jax data build --dataset "
            f"{args.dataset} --features {args.features} --data_dir {out} --annotation_dir "
            f"{sources.annotation_dir}" + (" --subtitle_words" if args.subtitle_words else ""),
            file=sys.stderr,
        )
    return code
