"""``vmr-jax data build | validate | stats``: the official files of a benchmark, checked and
built into a dataset the training pipeline streams.

    vmr-jax data stats    --dataset charades_sta --features i3d --data_dir DIR
    vmr-jax data validate --dataset charades_sta --features i3d --data_dir DIR
    vmr-jax data build    --dataset charades_sta --features i3d --data_dir DIR \\
        [--output_dir OUT] [--allow_missing]

``DIR`` holds the official annotation and feature files under their official names (the
manifest printed by ``data stats``); ``--annotation_dir``, ``--video_features``,
``--subtitle_features`` and ``--query_features`` point elsewhere.  ``build`` writes to
``--output_dir`` (default ``DIR/vmr_jax/<dataset>-<features>``); a config reads it with
``config.data.dir``.

    vmr-jax data fake --dataset tvr --features resnet_i3d --annotation_dir A --data_dir OUT

writes random features in the official layouts under ``OUT`` for every annotated video
(:mod:`data_pipelines.fake_features`): a dry run of ``build`` and training before the real
feature files are at hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ACTIONS = ("build", "validate", "stats", "fake")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument(
        "--dataset", required=True, help="charades_sta|tacos|activitynet|didemo|tvr"
    )
    parser.add_argument("--features", required=True, help="feature set of the dataset's manifest")
    parser.add_argument("--data_dir", required=True, help="folder of the official files")
    parser.add_argument("--annotation_dir", default=None, help="default: --data_dir")
    parser.add_argument("--video_features", default=None, help="file/folder (default: official)")
    parser.add_argument("--subtitle_features", default=None, help="TVR subtitle h5")
    parser.add_argument("--query_features", default=None, help="TVR query token h5")
    parser.add_argument("--splits", default=None, help="comma-separated (default: all present)")
    parser.add_argument("--output_dir", default=None, help="build: where to write")
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
    from data_pipelines.annotations import DataError

    try:
        sources = build.resolve_sources(
            args.dataset,
            args.features,
            args.data_dir,
            args.annotation_dir,
            {
                "video": args.video_features,
                "subtitle": args.subtitle_features,
                "query": args.query_features,
            },
        )
        splits = args.splits.split(",") if args.splits else None
        if args.action == "stats":
            result = data_report.stats(sources, splits, max_videos=args.max_videos)
            code = 0
        elif args.action == "fake":
            from data_pipelines.fake_features import write_fake_features

            result = {"written": write_fake_features(sources, splits, args.clips_per_second)}
            code = 0
        elif args.action == "validate":
            result = data_report.validate(sources, splits)
            code = 1 if result["errors"] else 0
        else:
            out = args.output_dir or os.path.join(
                args.data_dir, "vmr_jax", f"{args.dataset}-{args.features}"
            )
            result = build.build(sources, out, splits=splits, allow_missing=args.allow_missing)
            result["output_dir"] = out
            code = 0
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2, sort_keys=False)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    if args.action == "validate":
        print(f"{len(result['errors'])} problems found", file=sys.stderr)
    if args.action == "build":
        print(f"built: {result['output_dir']} (set config.data.dir to it)", file=sys.stderr)
    return code
