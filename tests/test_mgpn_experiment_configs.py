"""The MGPN experiment arguments of the paper's section 4.5 (``configs/mgpn/<dataset>.py:<arg>``):
each builds on the paper's dataset (with ``tiny`` / ``runlocal``), sets the model the paper
describes, and a tiny model of each variant takes a finite training step on the CPU."""

from __future__ import annotations

import importlib

import jax
import numpy as np
import optax
import pytest

from vmr_jax import config_presets
from vmr_jax.models import mgpn

# Written from the paper: Table 3's check marks (sec-enc., sec-fuse., comp.), Table 4's encoders,
# Figure 4's generators, Figure 5's comparison modules and hidden sizes.
EXPECTED = {
    "table3_model1": dict(finegrained=False, conditioned_interaction=False, comparison="none"),
    "table3_model2": dict(finegrained=True, conditioned_interaction=False, comparison="none"),
    "table3_model3": dict(finegrained=True, conditioned_interaction=True, comparison="none"),
    "table3_model4": dict(finegrained=False, conditioned_interaction=False, comparison="conv"),
    "table3_model5": dict(finegrained=True, conditioned_interaction=True, comparison="conv"),
    "encoder_bigru": dict(encoder="bigru"),
    "encoder_bilstm": dict(encoder="bilstm"),
    "encoder_transformer": dict(encoder="transformer"),
    "map_content": dict(map_generator="content"),
    "map_boundary": dict(map_generator="boundary"),
    "map_both": dict(map_generator="both"),
    "comparison_sc": dict(comparison="stacked_conv"),
    "comparison_ga": dict(comparison="graph_attention"),
    "comparison_nl": dict(comparison="non_local"),
    "hidden128": dict(hidden=128),
    "hidden256": dict(hidden=256),
    "hidden512": dict(hidden=512),
}
# The paper's captions: Tables 3 and 4 on ActivityNet Captions, Figures 4 and 5 on TACoS.
PAPER_DATASETS = {"Table 3": "activitynet", "Table 4": "activitynet", "Figure 4": "tacos"}
PAPER_DATASETS["Figure 5"] = "tacos"
CASES = [
    (dataset, arg)
    for dataset, rows in config_presets.MGPN_PAPER_EXPERIMENTS.values()
    for arg in rows.values()
]


def _config_module(dataset):
    return importlib.import_module(f"configs.mgpn.{dataset}")


def test_every_table_and_figure_of_section_4_5_has_its_rows():
    experiments = config_presets.MGPN_PAPER_EXPERIMENTS
    assert {name: dataset for name, (dataset, _) in experiments.items()} == PAPER_DATASETS
    assert [len(rows) for _, rows in experiments.values()] == [5, 3, 3, 6]
    assert sorted(arg for _, arg in CASES) == sorted(EXPECTED)


@pytest.mark.parametrize("dataset, arg", CASES)
@pytest.mark.parametrize("short", ["", "tiny,", "runlocal,", "tiny,runlocal,"])
def test_argument_builds_the_paper_model_on_its_dataset(dataset, arg, short):
    config = _config_module(dataset).get_config(short + arg)
    for field, value in EXPECTED[arg].items():
        assert config.model[field] == value, (field, config.model[field])
    if short:
        assert config.train.num_steps in (4, 200)
    if not short and "hidden" not in EXPECTED[arg]:
        assert config.model.hidden == mgpn.VARIANTS[dataset]["hidden"]


@pytest.mark.parametrize("dataset, arg", CASES)
def test_argument_only_on_the_papers_dataset(dataset, arg):
    other = "tacos" if dataset == "activitynet" else "activitynet"
    with pytest.raises(ValueError, match=rf"{other}.py: unknown config arguments \['{arg}'\]"):
        _config_module(other).get_config(arg)


def test_arguments_combine_unless_they_set_the_same_field():
    config = _config_module("synthetic").get_config("runlocal,encoder_bilstm,map_content")
    assert (config.model.encoder, config.model.map_generator) == ("bilstm", "content")
    assert config.train.num_steps == 6
    with pytest.raises(ValueError, match="'comparison_nl' and 'table3_model1' both set"):
        _config_module("synthetic").get_config("comparison_nl,table3_model1")
    config = _config_module("tacos").get_config("tiny,hidden128,comparison_ga")
    assert (config.model.hidden, config.model.comparison) == (128, "graph_attention")
    assert config.model.num_clips == mgpn.VARIANTS["tiny"]["num_clips"]


def _batch(model_config, batch_size=2):
    rng = np.random.default_rng(0)
    t = model_config.num_clips * model_config.frame_stride
    length = 6
    mask = np.ones((batch_size, length), np.float32)
    mask[1, 4:] = 0
    starts = rng.uniform(0, 10, batch_size)
    return {
        "video_features": rng.normal(size=(batch_size, t, model_config.feature_dim)),
        "query_tokens": rng.integers(1, model_config.vocab_size, (batch_size, length)),
        "query_mask": mask,
        "duration": np.full(batch_size, 20.0, np.float32),
        "spans": np.stack([starts, starts + 6.0], -1)[:, None].astype(np.float32),
        "valid": np.ones(batch_size, np.float32),
    }


# The arguments whose model differs from the default (the others are the default model).
# The hidden sizes change widths only (their configs are checked above).
VARIANT_ARGS = sorted(
    arg
    for arg, fields in EXPECTED.items()
    if any(getattr(mgpn.MGPN(), f) != v for f, v in fields.items() if f != "hidden")
)


@pytest.mark.parametrize("arg", VARIANT_ARGS)
def test_tiny_variant_takes_a_finite_train_step(arg):
    model_config = _config_module("synthetic").get_config(f"runlocal,{arg}").model
    model = mgpn.create_model(model_config)
    batch = jax.tree.map(np.asarray, _batch(model_config))
    batch["video_features"] = batch["video_features"].astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), batch, train=False)
    tx = optax.adam(1e-3)
    opt_state = tx.init(variables["params"])

    def loss(params):
        out, state = model.apply(
            {"params": params, "batch_stats": variables.get("batch_stats", {})},
            batch,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.PRNGKey(1)},
        )
        return mgpn.loss_fn(out, batch, model_config)[0], state

    @jax.jit
    def train_step(params, opt_state):
        (value, _), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), value, grads

    params, value, grads = train_step(variables["params"], opt_state)
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert np.isfinite(float(jax.jit(loss)(params)[0]))
