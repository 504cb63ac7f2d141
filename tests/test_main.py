"""The ``vmr-jax`` command: train then eval a workdir, results and predictions files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_pipelines import synthetic
from vmr_jax import main

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "mgpn" / "synthetic.py")
TRAIN_FLAGS = [
    "--config.train.num_steps=6",
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=3",
    "--config.train.progress_bar=false",
]


def train_argv(workdir) -> list[str]:
    return ["train", "--config", f"{CONFIG}:runlocal", "--workdir", str(workdir), *TRAIN_FLAGS]


pytestmark = pytest.mark.usefixtures("jax_compilation_cache")


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cli_train")
    code = main.main(train_argv(workdir))
    assert code == 0
    return workdir


def test_every_command_has_a_parser(capsys):
    parser = main.build_parser()
    assert {"train", "eval", "bench"} <= set(main.COMMANDS)
    for name in main.COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0
        assert f"vmr-jax {name}" in capsys.readouterr().out
    args = parser.parse_args(["eval", "--workdir", "w", "--step", "best"])
    assert (args.command, args.workdir, args.step) == ("eval", "w", "best")
    with pytest.raises(SystemExit):
        parser.parse_args(["no-such-command"])


def test_train_prints_metrics_and_checkpoint_dir(trained_workdir, capsys):
    # The fixture's output went to capsys of the first test using it; check the files instead
    # and rerun the (finished) command, which restores step 6 and prints the summary.
    code = main.main(train_argv(trained_workdir))
    assert code == 0
    out = capsys.readouterr().out
    assert f"checkpoints: {trained_workdir / 'checkpoints'}" in out
    summary = json.loads(out[: out.rindex("}") + 1])
    assert summary["step"] == 6
    assert (trained_workdir / "config.json").is_file()


def test_eval_writes_results_and_predictions(trained_workdir, capsys):
    code = main.main(["eval", "--workdir", str(trained_workdir), "--split", "test"])
    assert code == 0
    results_path = trained_workdir / "eval" / "test_step6.json"
    predictions_path = trained_workdir / "eval" / "test_step6_predictions.jsonl"
    assert f"results: {results_path}" in capsys.readouterr().out
    results = json.loads(results_path.read_text())
    assert results["split"] == "test"
    assert results["protocol"] == "2dtan"
    assert results["rule"]
    assert results["step"] == 6
    saved_config = json.loads((trained_workdir / "config.json").read_text())
    assert results["config"] == saved_config

    # The test split, generated independently from the saved config's benchmark settings.
    spec = synthetic.spec_from_config(saved_config["data"]["synthetic"])
    records = synthetic.make_splits(spec, saved_config["data"]["seed"], ["test"])["test"]
    lines = [json.loads(x) for x in predictions_path.read_text().splitlines()]
    assert [x["query_id"] for x in lines] == [r.query_id for r in records]
    assert results["num_queries"] == len(records) == results["metrics"]["num_queries"]

    # Recompute the metrics from the predictions file: strict IoU > m on the first n moments.
    gt = np.array([r.spans_s[0] for r in records], np.float64)
    for n in (1, 5):
        for m in (0.3, 0.5, 0.7):
            hits = []
            for line, (gs, ge) in zip(lines, gt):
                assert len(line["moments"]) == 5
                ious = []
                for s, e, _ in line["moments"][:n]:
                    inter = max(0.0, min(e, ge) - max(s, gs))
                    ious.append(inter / (max(e, ge) - min(s, gs)))
                hits.append(max(ious) > m)
            key = f"R@{n},IoU={m}"
            assert results["metrics"][key] == pytest.approx(np.mean(hits), abs=1e-12), key
    first = [x["moments"][0] for x in lines]
    miou = np.mean(
        [
            max(0.0, min(e, ge) - max(s, gs)) / (max(e, ge) - min(s, gs))
            for (s, e, _), (gs, ge) in zip(first, gt)
        ]
    )
    assert results["metrics"]["mIoU"] == pytest.approx(miou, abs=1e-9)
    # Scores are ranked best first.
    for line in lines:
        scores = [x[2] for x in line["moments"]]
        assert scores == sorted(scores, reverse=True)
    assert len(results["ground_truth_sha256"]) == 64

    # `vmr-jax score` on the predictions file (which carries query_id and gt_spans) gives
    # the same numbers without the model.
    scored_path = trained_workdir / "eval" / "rescored.json"
    argv = [
        "score",
        "--protocol",
        "2dtan",
        "--ground-truth",
        str(predictions_path),
        "--predictions",
        str(predictions_path),
        "--output",
        str(scored_path),
    ]
    assert main.main(argv) == 0
    scored = json.loads(scored_path.read_text())
    for key, value in results["metrics"].items():
        if key.startswith(("R@", "mIoU")):
            assert scored["metrics"][key] == value, key


def test_eval_earlier_step(trained_workdir, capsys):
    code = main.main(["eval", "--workdir", str(trained_workdir), "--step", "3"])
    assert code == 0
    results = json.loads((trained_workdir / "eval" / "val_step3.json").read_text())
    assert results["step"] == 3 and results["split"] == "val"
    capsys.readouterr()
    # A step that was not saved: one error line, exit code 2, no traceback.
    assert main.main(["eval", "--workdir", str(trained_workdir), "--step", "4"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("error: no checkpoint at step 4")
