"""PREM trained stage by stage through the trainer: the retriever mines its hard negatives,
the localizer starts from it with the retriever frozen, and the faults a user can make on the
way end in one clear error with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import traverse_util

from vmr_jax import checkpoint_eval, config_cli, main, trainer
from vmr_jax.errors import UserError

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "prem", "synthetic.py")
QUICK = [("train.num_steps", "3"), ("train.log_every", "1"), ("train.progress_bar", "false")]


def _config(stage: str, **overrides):
    pairs = QUICK + [(k.replace("__", "."), str(v)) for k, v in overrides.items()]
    return config_cli.load_config(f"{CONFIG}:{stage},runlocal", pairs)


def _params(workdir: str, step=None) -> dict:
    state = checkpoint_eval.restore_workdir(workdir, step)[3]
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(state.params).items()}


@pytest.fixture(scope="module")
def retriever_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("prem") / "retriever")
    result = trainer.train_and_evaluate(_config("retriever"), workdir)
    assert result["hard_negatives"] == os.path.join(workdir, "hard_negatives", "train.npz")
    return workdir


@pytest.mark.slow
def test_the_localizer_trains_on_mined_negatives_with_the_retriever_frozen(retriever_dir, tmp_path):
    with open(os.path.join(retriever_dir, "hard_negatives", "train.json")) as f:
        meta = json.load(f)
    assert meta["split"] == "train" and meta["checkpoint_step"] == 3
    mined = np.load(os.path.join(retriever_dir, "hard_negatives", "train.npz"))
    # runlocal: 60 videos, 48 of them in train (80%), each query ranks all of them.
    assert mined["video_rows"].shape[1] == min(100, meta["num_videos"])

    workdir = str(tmp_path / "localizer")
    config = _config("localizer", train__init_from=retriever_dir)
    result = trainer.train_and_evaluate(config, workdir)
    before, after = _params(retriever_dir), _params(workdir)
    retriever = [k for k in after if k[0] == "retriever"]
    localizer = [k for k in after if k[0] == "localizer"]
    assert retriever and localizer
    for key in retriever:  # frozen: the mined-with checkpoint's values, bit for bit
        np.testing.assert_array_equal(after[key], before[key], err_msg=str(key))
    assert any(not np.array_equal(after[k], before[k]) for k in localizer)
    # The retriever ranks the corpus in both stages: VR is the same.
    assert result["eval_metrics"]["VR/r1"] == pytest.approx(
        checkpoint_eval.evaluate_workdir(retriever_dir)["metrics"]["VR/r1"]
    )


def test_a_localizer_without_the_retrievers_workdir_is_refused(tmp_path, capsys):
    workdir = tmp_path / "localizer"
    code = main.main(
        ["train", "--config", f"{CONFIG}:localizer,runlocal", "--workdir", str(workdir)]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: config.model.stage='localizer'") and "init_from" in err
    assert not workdir.exists()


def test_a_retriever_workdir_without_mined_negatives_is_refused(tmp_path):
    empty = tmp_path / "retriever_without_negatives"
    empty.mkdir()
    config = _config("localizer", train__init_from=str(empty))
    with pytest.raises(UserError, match="hard negatives") as err:
        trainer.train_and_evaluate(config, str(tmp_path / "localizer"))
    assert str(empty) in str(err.value)
    assert not (tmp_path / "localizer").exists()


@pytest.mark.slow
def test_negatives_of_another_split_are_refused(retriever_dir, tmp_path):
    path = checkpoint_eval.mine_workdir(retriever_dir, split="val", top=10)
    assert path.endswith(os.path.join("hard_negatives", "val.npz"))
    config = _config("localizer", train__init_from=retriever_dir, data__hard_negatives=path)
    with pytest.raises(UserError, match="val") as err:
        trainer.train_and_evaluate(config, str(tmp_path / "localizer"))
    assert path in str(err.value)
    assert not (tmp_path / "localizer").exists()


# A fresh interpreter, so that the 8 fake CPU devices exist before jax starts.
_EIGHT_DEVICES = """
import json, sys
import jax
import numpy as np
from vmr_jax import config_cli, trainer
from vmr_jax.metrics_writer import read_metrics

config_path, workdir = sys.argv[1], sys.argv[2]
quick = [("train.num_steps", "3"), ("train.log_every", "1"), ("train.progress_bar", "false")]
out = {"device_count": jax.device_count(), "runs": {}}
for shape in ("1,1", "8,1"):
    run = {}
    tag = shape.replace(",", "x")
    for stage in ("retriever", "localizer"):
        extra = [("mesh.shape", shape)]
        if stage == "localizer":
            extra.append(("train.init_from", f"{workdir}/retriever_{tag}"))
        config = config_cli.load_config(f"{config_path}:{stage},runlocal", quick + extra)
        stage_dir = f"{workdir}/{stage}_{tag}"
        result = trainer.train_and_evaluate(config, stage_dir)
        train = read_metrics(stage_dir, "train")
        run[stage] = {
            "loss": [train[s]["loss"] for s in sorted(train)],
            "eval": result["eval_metrics"],
        }
    mined = np.load(f"{workdir}/retriever_{tag}/hard_negatives/train.npz")
    run["mined"] = mined["video_rows"].tolist()
    out["runs"][shape] = run
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_eight_devices_match_one_device(tmp_path):
    """Both stages on a 1x1 and an 8x1 mesh (the same global batch): the same losses, the same
    mined negatives and the same VCMR / SVMR / VR metrics.  The InfoNCE negatives and
    Shared-Norm span the whole global batch."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + ["--xla_force_host_platform_device_count=8"])
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _EIGHT_DEVICES, CONFIG, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT ") :])
    assert out["device_count"] == 8
    one, eight = out["runs"]["1,1"], out["runs"]["8,1"]
    # Mined lists: the same videos per query; float32 near-ties may swap neighbours.
    mined_one, mined_eight = np.asarray(one["mined"]), np.asarray(eight["mined"])
    assert [set(r) for r in mined_eight] == [set(r) for r in mined_one]
    assert np.mean(mined_eight == mined_one) > 0.98
    for stage in ("retriever", "localizer"):
        # The temperature 0.01 multiplies cosines by 100: float32 summation order shows.
        np.testing.assert_allclose(eight[stage]["loss"], one[stage]["loss"], rtol=2e-4)
        assert eight[stage]["eval"].keys() == one[stage]["eval"].keys()
        for key, want in one[stage]["eval"].items():
            assert eight[stage]["eval"][key] == pytest.approx(want, abs=1e-5), (stage, key)
