"""The ``vmr-jax`` command: parses arguments and dispatches to the library.

    vmr-jax train --config configs/mgpn/synthetic.py[:arg] --workdir DIR [--config.a.b=v ...]
    vmr-jax eval  --workdir DIR [--step N|best] [--split test] [--config.a.b=v ...]
    vmr-jax predict --workdir DIR [--split test | --features F.h5 --queries Q.json] [--output F]
    vmr-jax bench --config configs/mgpn/synthetic.py [--variant charades_i3d] [--batch_size 64]
    vmr-jax mine  --workdir DIR [--step N|best] [--top 100] [--split train]
    vmr-jax score --protocol tvr|didemo|2dtan|mmn --ground-truth GT --predictions FILE
    vmr-jax data  build|validate|stats --dataset charades_sta --features i3d --data_dir DIR

Each subcommand is a :class:`Command` in ``COMMANDS``: a help line, a function adding its
arguments to its sub-parser and a function running it (returns the exit code).  A new
subcommand (data, convert, predict) is one more entry.  ``--config.*`` overrides are taken
out of the argument list before argparse sees it (``config_cli.split_overrides``).
Commands raise; ``main`` alone turns a user error into one ``error:`` line and exit code 2
(``vmr-jax --debug COMMAND ...`` adds the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Collection, Sequence
from typing import NamedTuple


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    main: Callable[[argparse.Namespace], int]


def _step(text: str) -> int | str:
    """``--step``: a checkpoint step number or ``best``."""
    if text == "best":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a step number or 'best', not {text!r}") from None


# --------------------------------------------------------------------------- train
def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="config file, path.py[:arg]")
    parser.add_argument("--workdir", required=True, help="checkpoints, logs and config.json")


def _train(args: argparse.Namespace) -> int:
    from vmr_jax import config_cli, sharding, trainer

    sharding.initialize_distributed()
    config = config_cli.load_config(args.config, args.config_overrides)
    result = trainer.train_and_evaluate(config, args.workdir)
    if sharding.is_main_process():
        print(json.dumps(result, indent=2, sort_keys=True))
        print(f"checkpoints: {result['checkpoint_dir']}")
    return 0


# --------------------------------------------------------------------------- eval
def _add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a training workdir")
    parser.add_argument(
        "--step", type=_step, default=None, help="checkpoint step, or 'best' (default: latest)"
    )
    parser.add_argument("--split", default=None, help="split to evaluate (default: evals.split)")
    parser.add_argument("--output_dir", default=None, help="default: WORKDIR/eval")


def _eval(args: argparse.Namespace) -> int:
    from vmr_jax import checkpoint_eval, sharding

    sharding.initialize_distributed()
    result = checkpoint_eval.evaluate_workdir(
        args.workdir,
        step=args.step,
        split=args.split,
        output_dir=args.output_dir,
        overrides=args.config_overrides,
    )
    if sharding.is_main_process():
        summary = {k: result[k] for k in ("split", "protocol", "step", "num_queries", "metrics")}
        print(json.dumps(summary, indent=2, sort_keys=True))
        print(f"results: {result['results_path']}")
        print(f"predictions: {result['predictions_path']}")
    return 0


# --------------------------------------------------------------------------- mine
def _add_mine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a corpus family's training workdir")
    parser.add_argument(
        "--step", type=_step, default=None, help="checkpoint step, or 'best' (default: latest)"
    )
    parser.add_argument("--top", type=int, default=100, help="videos kept per query (100)")
    parser.add_argument("--split", default="train", help="split whose queries are mined (train)")


def _mine(args: argparse.Namespace) -> int:
    from vmr_jax import checkpoint_eval, sharding

    sharding.initialize_distributed()
    path = checkpoint_eval.mine_workdir(
        args.workdir,
        step=args.step,
        top=args.top,
        split=args.split,
        overrides=args.config_overrides,
    )
    if sharding.is_main_process():
        print(f"hard negatives: {path}")
    return 0


# --------------------------------------------------------------------------- predict
PREDICT_EPILOG = """\
Supported: single-video families (fvmr through its saved common-space gallery, mgpn and tan2d
through the eval forward pass and the official 2D-TAN decoding); corpus families (xml) are
evaluated by `vmr-jax eval`.  Own files: --features is an .h5/.hdf5 (one [T, D] dataset per
video id) or .npz keyed by video id; --queries a JSON list of {"query_id", "video_id",
"duration" (seconds), "query" (text)}.  They need a text_mode whose inputs can be rebuilt from
text: 'tokens' (word vocabulary of the configured train split, or the SentencePiece file) or
'glove' (data.glove_path); 'features' (precomputed token features) is refused.  The configured
data must be readable, as for `vmr-jax eval`.  Output: one JSON file, format
'vmr-jax-predictions/1' (vmr_jax/predict.py): a header (model, method, source, step,
checkpoint, top_k, nms_thresh, time_unit) and per query {query_id, video_id, duration,
moments: [[start_s, end_s, score], ...] best first}.
"""


def _add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = PREDICT_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--workdir", required=True, help="a training workdir")
    parser.add_argument(
        "--step", type=_step, default=None, help="checkpoint step, or 'best' (default: latest)"
    )
    parser.add_argument("--split", default=None, help="split of the configured data (evals.split)")
    parser.add_argument("--features", default=None, help="own video features: .h5/.hdf5/.npz")
    parser.add_argument("--queries", default=None, help="own queries: JSON list (see below)")
    parser.add_argument(
        "--output", default=None, help="default WORKDIR/predict/<name>_step<N>.json"
    )
    parser.add_argument("--top_k", type=int, default=None, help="default max(evals.recalls)")
    parser.add_argument("--nms_thresh", type=float, default=None, help="default evals.nms_thresh")
    parser.add_argument(
        "--method",
        default="auto",
        choices=("auto", "gallery", "forward"),
        help="auto: FVMR through its gallery, others through the forward pass",
    )
    parser.add_argument(
        "--rebuild_gallery", action="store_true", help="FVMR: re-encode the saved gallery"
    )


def _predict(args: argparse.Namespace) -> int:
    from vmr_jax import predict, sharding

    sharding.initialize_distributed()
    result = predict.predict_workdir(
        args.workdir,
        step=args.step,
        split=args.split,
        features=args.features,
        queries=args.queries,
        output=args.output,
        top_k=args.top_k,
        nms_thresh=args.nms_thresh,
        method=args.method,
        rebuild_gallery=args.rebuild_gallery,
        overrides=args.config_overrides,
    )
    if sharding.is_main_process():
        keys = ("model", "method", "source", "step", "num_queries", "top_k", "nms_thresh")
        print(json.dumps({k: result[k] for k in keys}, indent=2, sort_keys=True))
        if result["gallery"]:
            print(f"gallery: {result['gallery']}")
        print(f"predictions: {result['output']}")
    return 0


# --------------------------------------------------------------------------- bench
def _add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    # Here, not in vmr_jax.bench: `vmr-jax bench --help` need not import the trainer.
    parser.add_argument("--config", required=True, help="config file, path.py[:arg]")
    parser.add_argument("--variant", default=None, help="model VARIANTS entry, e.g. tacos")
    parser.add_argument("--batch_size", type=int, default=None, help="global train batch")
    parser.add_argument("--eval_batch_size", type=int, default=None)
    parser.add_argument("--query_len", type=int, default=None, help="padded query length")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (>= 1)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compile")
    parser.add_argument(
        "--search",
        default=None,
        help="corpus sizes, e.g. 1000,10000,100000: queries/s of the corpus search (VCMR)",
    )
    parser.add_argument(
        "--mine",
        type=int,
        default=0,
        help="training-corpus size, e.g. 10000: time hard-negative mining (top 100 per query)",
    )
    parser.add_argument("--clips", type=int, default=100, help="clips per video (--search)")
    parser.add_argument(
        "--build_videos",
        type=int,
        default=None,
        help="--search: videos encoded to time the index build (default: the smallest corpus)",
    )
    parser.add_argument(
        "--query-speed",
        "--query_speed",
        dest="query_speed",
        default=None,
        help="shapes, e.g. tacos,activitynet: TE/CML/ALL ms per query (FVMR paper, Table 1)",
    )
    parser.add_argument("--videos", type=int, default=64, help="--query-speed: gallery videos")
    parser.add_argument("--pairs", type=int, default=2, help="--query-speed: 2D-TAN CML batch")
    parser.add_argument(
        "--budget_s", type=float, default=60.0, help="--query-speed: timed seconds per number"
    )
    parser.add_argument(
        "--no_tan2d", action="store_true", help="--query-speed: FVMR only, no 2D-TAN beside it"
    )
    parser.add_argument(
        "--data-only",
        "--data_only",
        dest="data_only",
        action="store_true",
        help="time the config's input pipeline only (batches/s), no model",
    )


def _bench(args: argparse.Namespace) -> int:
    from vmr_jax import bench

    return bench.main(args)


# --------------------------------------------------------------------------- convert
def _add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    from vmr_jax.convert import cli

    cli.add_arguments(parser)


def _convert(args: argparse.Namespace) -> int:
    from vmr_jax.convert import cli

    return cli.main(args)


# --------------------------------------------------------------------------- score
def _add_score_arguments(parser: argparse.ArgumentParser) -> None:
    from vmr_jax.evaluation import PROTOCOLS  # not .scoring: that imports JAX

    parser.add_argument("--protocol", required=True, choices=PROTOCOLS)
    parser.add_argument("--ground-truth", "--ground_truth", dest="ground_truth", required=True)
    parser.add_argument(
        "--predictions",
        required=True,
        help="vmr-jax predict's JSON, or vmr-jax eval's predictions JSONL / TVR submission / "
        "DiDeMo rankings (format detected from the file)",
    )
    parser.add_argument("--split", default=None, help="tvr: split of video2idx; with --dataset")
    parser.add_argument("--dataset", default=None, help="2dtan/mmn: GT from official files")
    parser.add_argument("--video2dur_idx", default=None, help="tvr: tvr_video2dur_idx.json")
    parser.add_argument("--recalls", default="1,5", help="2dtan/mmn: R@n values")
    parser.add_argument("--ious", default="0.3,0.5,0.7", help="2dtan/mmn: IoU thresholds")
    parser.add_argument(
        "--truncate",
        action="store_true",
        help="tvr: use the first 100 predictions of longer lists (as the official script)",
    )
    parser.add_argument("--output", default=None, help="results json (default: beside preds)")


def _score(args: argparse.Namespace) -> int:
    import os

    from vmr_jax.evaluation import scoring

    result = scoring.score(
        args.protocol,
        args.ground_truth,
        args.predictions,
        split=args.split,
        dataset=args.dataset,
        video2dur_idx=args.video2dur_idx,
        recalls=tuple(int(x) for x in args.recalls.split(",")),
        ious=tuple(float(x) for x in args.ious.split(",")),
        truncate=args.truncate,
    )
    output = args.output or os.path.splitext(args.predictions)[0] + f".{args.protocol}.json"
    with open(output, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("protocol", "split", "num_queries", "predictions_format", "metrics")
                if k in result
            },
            indent=2,
        )
    )
    print(f"rule: {result['rule']}")
    if result.get("conversion"):
        print(f"conversion: {result['conversion']}")
    print(f"results: {output}")
    return 0


# --------------------------------------------------------------------------- data
def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    from vmr_jax import data_cli

    data_cli.add_arguments(parser)


def _data(args: argparse.Namespace) -> int:
    from vmr_jax import data_cli

    return data_cli.main(args)


COMMANDS: dict[str, Command] = {
    "train": Command("train (and evaluate) a model", _add_train_arguments, _train),
    "eval": Command("evaluate a checkpoint of a workdir", _add_eval_arguments, _eval),
    "predict": Command(
        "ranked moments of a checkpoint for a split or own files", _add_predict_arguments, _predict
    ),
    "mine": Command(
        "hard negatives: each query's top videos by a trained retriever",
        _add_mine_arguments,
        _mine,
    ),
    "bench": Command("measure compile time, throughput, memory", _add_bench_arguments, _bench),
    "score": Command(
        "score a predictions file under an official protocol", _add_score_arguments, _score
    ),
    "data": Command("official benchmark files: stats, validate, build", _add_data_arguments, _data),
    "convert": Command(
        "official checkpoint (+ YAML) -> vmr_jax workdir", _add_convert_arguments, _convert
    ),
}


DEBUG_HELP = "on an error, print the traceback too (before the error line)"
ENVIRONMENT_EPILOG = """\
environment: VMR_JAX_CACHE=DIR keeps the persistent XLA compilation cache of train, eval and
predict in DIR/xla (default ~/.cache/vmr_jax/xla); VMR_JAX_CACHE=off turns it off.
"""


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The ``vmr-jax`` parser; every command's arguments, or only those of ``commands``.

    The others are listed with their help line only: their argument functions import their
    modules (``bench`` imports the trainer, JAX and TensorFlow), seconds that ``vmr-jax
    --help`` and ``vmr-jax score --help`` should not pay.
    """
    parser = argparse.ArgumentParser(
        prog="vmr-jax",
        description="Video moment retrieval in JAX/Flax.",
        epilog=ENVIRONMENT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log_level", default="INFO", help="python logging level")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=command.help, description=command.help)
        # Also after the command; SUPPRESS keeps a --debug given before it.
        sub_parser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
        )
        if commands is None or name in commands:
            command.add_arguments(sub_parser)
    return parser


def _run_command(argv: list[str]) -> int:
    from vmr_jax import config_cli

    argv, overrides = config_cli.split_overrides(argv)
    # Only the named command's arguments are built (none for a bare `vmr-jax --help`).
    args = build_parser([a for a in argv if a in COMMANDS][:1]).parse_args(argv)
    args.config_overrides = overrides
    # Library loggers at --log_level; third-party ones (orbax, absl) only warn.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for name in ("vmr_jax", "data_pipelines"):
        logging.getLogger(name).setLevel(str(args.log_level).upper())
    return COMMANDS[args.command].main(args)


def _print_last(text: str) -> None:
    """``text`` on stderr after whatever the logging handlers still hold."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    print(text, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command and returns its exit code.

    The one place where errors meet the user: a user error (``errors.user_message``: bad
    input, a missing file, a foreign workdir, a diverged run, a full disk) is an
    ``error: <message>`` line, the last on stderr, exit code 2; Ctrl-C is ``interrupted``,
    130.  With ``--debug`` (before or after the command) the traceback comes first.  Any
    other exception is a bug: it propagates with its traceback (exit code 1).
    """
    import traceback

    from vmr_jax import errors

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        return _run_command(argv)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        _print_last("interrupted")
        return 130
    except Exception as err:
        message = errors.user_message(err)
        if message is None:
            raise
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (--debug shows the traceback)"
        _print_last(f"error: {message}{hint}")
        return 2


def run() -> None:
    """Console entry point ``vmr-jax``."""
    sys.exit(main())


if __name__ == "__main__":
    run()
