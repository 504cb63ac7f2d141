"""Trainer: optimiser schedule, a smoke run of train_and_evaluate, exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from data_pipelines import synthetic
from vmr_jax import checkpointing, config_cli, optimizers, sharding, trainer
from vmr_jax.evaluation import evaluators
from vmr_jax.metrics_writer import read_metrics

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "mgpn" / "synthetic.py")
STEPS = 6


def runlocal_config(**overrides):
    """The runlocal synthetic config: 6 steps, log every step, checkpoint every 3."""
    base = {
        "train.num_steps": STEPS,
        "train.log_every": 1,
        "train.checkpoint_every": 3,
        "train.progress_bar": False,
    }
    base.update(overrides)
    return config_cli.load_config(f"{CONFIG}:runlocal", [(k, str(v)) for k, v in base.items()])


pytestmark = pytest.mark.usefixtures("jax_compilation_cache")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted runlocal training run: ``(result, workdir)``."""
    workdir = tmp_path_factory.mktemp("reference")
    result = trainer.train_and_evaluate(runlocal_config(), str(workdir))
    return result, workdir


def test_lr_schedule_steps_at_milestone_epochs():
    # scheduler.step() after each epoch: lr 1e-3, gamma 0.1, milestones at epochs 2 and 3,
    # 10 steps per epoch: by hand, steps 0..19 -> 1e-3, 20..29 -> 1e-4, 30.. -> 1e-5.
    config = {"lr": 1e-3, "milestones": (2, 3), "gamma": 0.1, "scheduler_step": "epoch_end"}
    schedule = optimizers.lr_schedule(config, steps_per_epoch=10)
    expected = {0: 1e-3, 19: 1e-3, 20: 1e-4, 29: 1e-4, 30: 1e-5, 100: 1e-5}
    for step, lr in expected.items():
        assert float(schedule(step)) == pytest.approx(lr, rel=1e-6), step


# MGPN's Engine.train calls scheduler.step() before each epoch's first optimiser step, so
# 0-indexed epoch e runs with MultiStepLR's last_epoch = e + 1 and the rate
# 1e-3 * 0.1 ** (number of milestones <= e + 1).  Milestones (5, 8), 3 steps per epoch, by hand:
# epochs 0-3 (steps 0-11) 1e-3, epochs 4-6 (steps 12-20) 1e-4, epochs 7-9 (steps 21-29) 1e-5.
MGPN_RATES = [1e-3] * 12 + [1e-4] * 9 + [1e-5] * 9
# scheduler.step() after each epoch (last_epoch = e): epochs 0-4 (steps 0-14) 1e-3, epochs 5-7
# (steps 15-23) 1e-4, epochs 8-9 (steps 24-29) 1e-5.
EPOCH_END_RATES = [1e-3] * 15 + [1e-4] * 9 + [1e-5] * 6


@pytest.mark.parametrize(
    "rule, rates", [(None, MGPN_RATES), ("epoch_start", MGPN_RATES), ("epoch_end", EPOCH_END_RATES)]
)
def test_lr_schedule_follows_the_scheduler_step_of_the_official_loop(rule, rates):
    config = {"lr": 1e-3, "milestones": (5, 8), "gamma": 0.1}
    if rule is not None:  # None: the default is MGPN's rule
        config["scheduler_step"] = rule
    schedule = optimizers.lr_schedule(config, steps_per_epoch=3)
    got = [float(schedule(step)) for step in range(len(rates))]
    np.testing.assert_allclose(got, rates, rtol=1e-6)


@pytest.mark.parametrize(
    "name, last_full_rate_epoch, decay_epochs",
    [
        ("charades_vgg", 3, (4, 11)),  # MILESTONES [5, 12]
        ("charades_i3d", 3, (4, 7)),  # [5, 8]
        ("activitynet", 3, (4, 7)),  # [5, 8]
        ("tacos", 14, ()),  # [16, 19]: after the 15th (last) epoch, so never
    ],
)
def test_mgpn_benchmark_configs_decay_where_the_official_run_does(
    name, last_full_rate_epoch, decay_epochs
):
    config = config_cli.load_config(str(Path(CONFIG).parent / f"{name}.py"), [])
    assert config.train.scheduler_step == "epoch_start"
    schedule = optimizers.lr_schedule(config.train, steps_per_epoch=2)
    assert float(schedule(2 * last_full_rate_epoch + 1)) == pytest.approx(1e-3, rel=1e-6)
    for i, epoch in enumerate(decay_epochs):
        assert float(schedule(2 * epoch - 1)) == pytest.approx(1e-3 * 0.1**i, rel=1e-6)
        assert float(schedule(2 * epoch)) == pytest.approx(1e-3 * 0.1 ** (i + 1), rel=1e-6)
    last_step = 2 * config.train.num_epochs - 1
    assert float(schedule(last_step)) == pytest.approx(1e-3 * 0.1 ** len(decay_epochs), rel=1e-6)


def test_unknown_scheduler_step_is_named():
    with pytest.raises(ValueError, match="config.train.scheduler_step"):
        optimizers.lr_schedule({"lr": 1.0, "milestones": (1,), "scheduler_step": "x"}, 1)


def test_optimizer_clips_global_norm_before_adam():
    # Adam's first update is lr * g / (|g| + eps) per coordinate whatever the clipping, so
    # compare with optax's own chain: clip to norm 10 then adam, built independently.
    tx, _ = optimizers.create_optimizer(
        {"lr": 1e-3, "milestones": (), "grad_clip_norm": 10.0}, steps_per_epoch=1
    )
    reference = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(1e-3))
    params = {"w": np.zeros(3, np.float32)}
    grads = [
        {"w": np.array([30.0, -40.0, 0.0], np.float32)},
        {"w": np.array([1.0, 2.0, 3.0], np.float32)},
    ]
    state, ref_state = tx.init(params), reference.init(params)
    for g in grads:
        update, state = tx.update(g, state, params)
        ref_update, ref_state = reference.update(g, ref_state, params)
        np.testing.assert_allclose(update["w"], ref_update["w"], rtol=1e-6)
    # The clipped gradient (norm 50 -> 10) is what the first moment saw: 0.1 * g * 10 / 50.
    mu = state[1][0].mu["w"]
    expected = 0.9 * 0.1 * np.array([6.0, -8.0, 0.0]) + 0.1 * grads[1]["w"]
    np.testing.assert_allclose(mu, expected, rtol=1e-6)


def test_bert_adam_matches_a_numpy_replay_of_tvretrieval_bertadam():
    # NumPy replay of BertAdam's step (per-tensor clip to norm 1, moments without bias
    # correction, eps outside the root, decoupled decay on non-bias leaves, warmup_linear
    # over 10 steps with warmup 0.2), written from the algorithm, not from the code.
    cfg = {
        "optimizer": "bert_adam",
        "lr": 0.1,
        "warmup": 0.2,
        "num_steps": 10,
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
    }
    tx, schedule = optimizers.create_optimizer(cfg, steps_per_epoch=5)
    params = {
        "dense": {"kernel": np.array([1.0, -2.0], np.float32), "bias": np.ones(2, np.float32)}
    }
    grads = [
        {
            "dense": {
                "kernel": np.array([3.0, 4.0], np.float32),
                "bias": np.array([0.1, 0.2], np.float32),
            }
        },
        {
            "dense": {
                "kernel": np.array([0.5, -0.5], np.float32),
                "bias": np.array([-0.3, 0.0], np.float32),
            }
        },
        {
            "dense": {
                "kernel": np.array([0.2, 0.1], np.float32),
                "bias": np.array([0.0, 1.0], np.float32),
            }
        },
    ]
    state = tx.init(params)
    ref = {k: v.astype(np.float64) for k, v in params["dense"].items()}
    m = {k: np.zeros(2) for k in ref}
    v = {k: np.zeros(2) for k in ref}
    current = params
    for t, g in enumerate(grads):
        update, state = tx.update(g, state, current)
        current = optax.apply_updates(current, update)
        progress = t / 10
        lr = 0.1 * (progress / 0.2 if progress < 0.2 else max((progress - 1) / (0.2 - 1), 0))
        assert float(schedule(t)) == pytest.approx(lr, rel=1e-6)
        for k in ref:
            gk = g["dense"][k].astype(np.float64)
            gk = gk * min(1.0, 1.0 / (np.linalg.norm(gk) + 1e-6))
            m[k] = 0.9 * m[k] + 0.1 * gk
            v[k] = 0.999 * v[k] + 0.001 * gk * gk
            step = m[k] / (np.sqrt(v[k]) + 1e-6)
            if k != "bias":
                step = step + 0.01 * ref[k]
            ref[k] = ref[k] - lr * step
        for k in ref:
            np.testing.assert_allclose(current["dense"][k], ref[k], rtol=1e-5, atol=1e-7)
    # Step 0 has learning rate 0 (progress 0): the first update left the bias as it was.
    assert float(schedule(0)) == 0.0


def test_adamw_first_step_by_hand():
    # AdamW's first bias-corrected step is lr * (g / (|g| + eps) + wd * p) per coordinate:
    # p = 2, g = 0.5, lr 0.1, wd 0.01 -> 2 - 0.1 * (1 + 0.02) = 1.898 (eps 1e-8 negligible);
    # a leaf outside the decay mask (the bias) moves by lr only: 2 - 0.1 = 1.9.
    config = {"optimizer": "adamw", "lr": 0.1, "milestones": (), "weight_decay": 0.01}
    tx, _ = optimizers.create_optimizer(
        config, 1, decay_mask=lambda params: {"kernel": True, "bias": False}
    )
    params = {"kernel": np.float32([2.0]), "bias": np.float32([2.0])}
    grads = {"kernel": np.float32([0.5]), "bias": np.float32([0.5])}
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["kernel"], [1.898], rtol=1e-6)
    np.testing.assert_allclose(new["bias"], [1.9], rtol=1e-6)


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="config.train.optimizer"):
        optimizers.create_optimizer({"optimizer": "sgd", "lr": 1.0}, 1)


def test_smoke_train_and_evaluate(reference_run):
    result, workdir = reference_run
    assert result["step"] == STEPS
    train = read_metrics(str(workdir), "train")
    assert sorted(train) == list(range(1, STEPS + 1))
    for record in train.values():
        for key in ("loss", "bce_rescale_loss", "grad_norm", "param_norm", "lr"):
            assert math.isfinite(record[key]), (key, record)
        assert record["lr"] == pytest.approx(1e-3)
    # Every val query evaluated once: the count comes from the benchmark itself.
    config = runlocal_config()
    spec = synthetic.spec_from_config(config.data.synthetic)
    num_val = len(synthetic.make_splits(spec, config.data.seed, ["val"])["val"])
    evals = read_metrics(str(workdir), "val")
    assert sorted(evals) == [STEPS]
    assert evals[STEPS]["num_queries"] == num_val
    for key in ("R@1,IoU=0.5", "R@5,IoU=0.7", "mIoU"):
        assert 0.0 <= evals[STEPS][key] <= 1.0
        assert result["eval_metrics"][key] == pytest.approx(evals[STEPS][key])
    # Checkpoints at 3 and 6 (keep 2); the evaluated final step is also the best.
    manager = checkpointing.create_checkpoint_manager(str(workdir), config.train, read_only=True)
    assert sorted(manager.all_steps()) == [3, STEPS]
    assert result["best_step"] == STEPS
    manager.close()
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["train"]["num_steps"] == STEPS
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_reproduces_uninterrupted_run(reference_run, tmp_path):
    _, reference_dir = reference_run
    # "Killed" after the checkpoint at step 3, then restarted with the full step count.
    first = trainer.train_and_evaluate(runlocal_config(**{"train.num_steps": 3}), str(tmp_path))
    assert first["step"] == 3
    second = trainer.train_and_evaluate(runlocal_config(), str(tmp_path))
    assert second["step"] == STEPS

    # The restarted run continued at step 4: every step was logged exactly once.
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in lines if r["split"] == "train"]
    assert steps == list(range(1, STEPS + 1))

    reference = read_metrics(str(reference_dir), "train")
    resumed = read_metrics(str(tmp_path), "train")
    for step in range(1, STEPS + 1):
        for key in ("loss", "grad_norm", "param_norm"):
            assert resumed[step][key] == pytest.approx(reference[step][key], rel=1e-6), (
                step,
                key,
            )
    ref_eval = read_metrics(str(reference_dir), "val")[STEPS]
    res_eval = read_metrics(str(tmp_path), "val")[STEPS]
    for key in ("R@1,IoU=0.5", "R@5,IoU=0.5", "mIoU"):
        assert res_eval[key] == pytest.approx(ref_eval[key], abs=1e-6)


def test_final_checkpoint_restores_trained_state(reference_run):
    # The restored parameters have the norm the run logged after its last step.
    _, reference_dir = reference_run
    config = runlocal_config()
    model = trainer.create_model(config.model)
    data = trainer.DataSources(config)
    tx, _ = optimizers.create_optimizer(config.train, data.steps_per_epoch())
    mesh = sharding.make_mesh(config.mesh)
    abstract = trainer.abstract_train_state(
        config, model, jax.random.PRNGKey(0), data.sample_batch(), mesh, tx=tx
    )
    manager = checkpointing.create_checkpoint_manager(
        str(reference_dir), config.train, read_only=True
    )
    state = checkpointing.restore(manager, STEPS, abstract)
    manager.close()
    assert int(state.step) == STEPS
    reference = read_metrics(str(reference_dir), "train")
    param_norm = float(optax.tree.norm(state.params))
    assert param_norm == pytest.approx(reference[STEPS]["param_norm"], rel=1e-6)


# --------------------------------------------------------------------------- DiDeMo protocol
# Four hand-built queries (moments (s, e) = chunks s..e, seconds [5 s, 5 (e + 1)]):
#   A: annotators (0,0) x4; candidates (0,0) .9, (1,1) .5 -> ranks 1,1,1,1: avg_rank 1;
#      top-1 (0,0): IoU 1 with each -> avg_iou 1.
#   B: annotators (1,2), (1,2), (2,2), (4,5); candidates (1,2) .2, (2,2) .7, (4,5) .1 ->
#      ranking (2,2), (1,2), (4,5), ...: ranks 2, 2, 1, 3 -> best three 1, 2, 2: 5/3.
#      top-1 (2,2): chunk IoU with (1,2) = 1/2 (overlap 1, hull 2), (2,2) 1, (4,5) 0 ->
#      best three 1, 1/2, 1/2: 2/3.
#   C: annotators (3,5), (3,5), (0,5); one candidate (0,0) 1.0 -> the rest in MOMENTS order:
#      (1,1)..(5,5) at 2..6, (0,1)..(0,5) at 7..11, (1,2)..(1,5) at 12..15, (2,3)..(2,5) at
#      16..18, (3,4) 19, (3,5) 20 -> ranks 20, 20, 11: 17.  top-1 (0,0): IoU 0, 0, 1/6
#      (overlap 1, hull 6) -> 1/18.
#   D: two annotators (5,5), (4,5); candidates (4,5) .4, (5,5) .3 -> ranks 2, 1: mean of the
#      two, 3/2.  top-1 (4,5): IoU 1/2 with (5,5), 1 with itself -> 3/4.
# R@1 = 1/4 (A), R@5 = 3/4 (A, B, D), mIoU = (1 + 2/3 + 1/18 + 3/4) / 4 = 89/144.
NEG = -np.inf
DIDEMO_PREDICTED = {
    "moments": np.float32(
        [
            [[0, 5], [5, 10], [0, 0], [0, 0]],
            [[5, 15], [10, 15], [20, 30], [7, 8]],
            [[0, 5], [0, 0], [0, 0], [0, 0]],
            [[20, 30], [25, 30], [0, 0], [0, 0]],
        ]
    ),
    "moment_scores": np.float32(
        [[0.9, 0.5, NEG, NEG], [0.2, 0.7, 0.1, NEG], [1.0, NEG, NEG, NEG], [0.4, 0.3, NEG, NEG]]
    ),
}
DIDEMO_TIMES = [
    [(0, 0)] * 4,
    [(1, 2), (1, 2), (2, 2), (4, 5)],
    [(3, 5), (3, 5), (0, 5)],
    [(5, 5), (4, 5)],
]


def didemo_annotations() -> list:
    """The four queries as DiDeMo annotations (chunk pairs in ``extras['times']``)."""
    from data_pipelines.annotations import Annotation

    return [
        Annotation(
            query_id=str(100 + q),
            video_id=f"video{q}",
            duration_s=30.0,
            spans_s=np.asarray([[5.0 * s, 5.0 * (e + 1)] for s, e in times]),
            query_text="a query",
            extras={"annotation_id": 100 + q, "times": [list(t) for t in times]},
        )
        for q, times in enumerate(DIDEMO_TIMES)
    ]


def didemo_data() -> trainer.DataSources:
    """DataSources of the runlocal config whose 'val' split is the four DiDeMo queries."""
    data = trainer.DataSources(runlocal_config(**{"evals.protocol": "didemo"}))
    data.datasets.splits["val"] = didemo_annotations()
    return data


def test_score_predictions_under_didemo_by_hand():
    gt = didemo_data().didemo_ground_truth_fn("val")(np.arange(4))
    metrics, predictions = evaluators.score_predictions(
        DIDEMO_PREDICTED, {"protocol": "didemo"}, gt_chunks=gt
    )
    assert metrics["R@1"] == 0.25
    assert metrics["R@5"] == 0.75
    assert metrics["mIoU"] == pytest.approx(89 / 144, rel=1e-12)
    assert metrics["num_queries"] == 4
    moments = [(c, c) for c in range(6)] + [(s, e) for s in range(6) for e in range(s + 1, 6)]
    index = {m: i for i, m in enumerate(moments)}
    assert predictions["rankings"][1, :3].tolist() == [index[(2, 2)], index[(1, 2)], index[(4, 5)]]
    assert predictions["rankings"][2].tolist() == list(range(21))
    # The top five in seconds for the writers; NaN where no candidate was proposed.
    nan = [np.nan, np.nan]
    np.testing.assert_array_equal(predictions["times"][0], [[0, 5], [5, 10], nan, nan, nan])
    np.testing.assert_array_equal(
        predictions["scores"][1], np.float32([0.7, 0.2, 0.1] + [np.nan] * 2)
    )
    np.testing.assert_array_equal(predictions["times"][3, :2], [[20, 30], [25, 30]])


def test_evaluate_under_didemo_reads_the_records_ground_truth():
    # evaluators.evaluate over padded batches (last row padding), queries out of order; a stub
    # eval step returns each query's hand-built candidates.
    data = didemo_data()
    mesh = sharding.make_mesh({"shape": (-1, 1)})
    size = jax.device_count()
    order = np.array([2, 0, 3, 1] + [-1] * ((-4) % size + size))

    def eval_step(state, batch):
        index = np.asarray(batch["query_index"])
        rows = np.maximum(index, 0)
        return {
            "moments": DIDEMO_PREDICTED["moments"][rows],
            "moment_scores": DIDEMO_PREDICTED["moment_scores"][rows],
            "query_index": index,
            "valid": (index >= 0).astype(np.float32),
        }

    batches = [{"query_index": order[k : k + size]} for k in range(0, len(order), size)]
    metrics, predictions = evaluators.evaluate(
        eval_step,
        None,
        batches,
        mesh,
        {"protocol": "didemo"},
        gt_chunks_fn=data.didemo_ground_truth_fn("val"),
    )
    assert (metrics["R@1"], metrics["R@5"], metrics["num_queries"]) == (0.25, 0.75, 4)
    assert metrics["mIoU"] == pytest.approx(89 / 144, rel=1e-12)
    assert predictions["query_index"].tolist() == [0, 1, 2, 3]
    assert predictions["rankings"].shape == (4, 21)
    packed = data.didemo_ground_truth("val")
    assert packed.annotation_ids.tolist() == [100, 101, 102, 103]
    assert packed.n_times.tolist() == [4, 4, 3, 2]


def test_didemo_protocol_errors():
    gt = didemo_data().didemo_ground_truth_fn("val")(np.arange(4))
    # Ground truth absent.
    with pytest.raises(ValueError, match="gt_chunks"):
        evaluators.score_predictions(DIDEMO_PREDICTED, {"protocol": "didemo"})
    # A score-map family cannot be ranked on the chunk grid.
    score_map = {"score_map": np.zeros((4, 6, 6), np.float32), "duration": np.full(4, 30.0)}
    with pytest.raises(ValueError, match="proposal lists on the 5-second chunk grid"):
        evaluators.score_predictions(score_map, {"protocol": "didemo"}, gt_chunks=gt)
    # A finite-scored candidate off the grid: query row 1, [7, 8] s.
    off_grid = dict(DIDEMO_PREDICTED, moment_scores=DIDEMO_PREDICTED["moment_scores"].copy())
    off_grid["moment_scores"][1, 3] = 0.05
    with pytest.raises(ValueError, match=r"query row 1, candidate 3: moment \[7.0, 8.0\]"):
        evaluators.score_predictions(off_grid, {"protocol": "didemo"}, gt_chunks=gt)
    # Records without extras['times'] (the synthetic benchmark).
    synthetic_data = trainer.DataSources(runlocal_config(**{"evals.protocol": "didemo"}))
    first = synthetic_data.datasets.splits["val"][0].query_id
    with pytest.raises(ValueError, match=rf"split 'val', record '{first}': no field extras"):
        synthetic_data.didemo_ground_truth_fn("val")


def test_train_and_evaluate_refuses_didemo_protocol_on_other_data(tmp_path):
    config = runlocal_config(**{"evals.protocol": "didemo"})
    with pytest.raises(ValueError, match=r"extras\['times'\].*'synthetic'"):
        trainer.train_and_evaluate(config, str(tmp_path))
