"""PREM's family record: the stage switch, the ablation fields that build other modules, and
the config resolution of the localizer stage."""

from __future__ import annotations

import os

import jax
import ml_collections
import pytest
from flax import traverse_util

from vmr_jax.errors import UserError
from vmr_jax.models import get_family, prem


def _config(**fields) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(dict(prem.VARIANTS["tiny"]))
    config.name = "prem"
    config.update(fields)
    return config


def _param_paths(config) -> list[str]:
    model = prem.create_model(config)
    batch = prem.example_batch(config, 2)
    variables = jax.eval_shape(
        lambda: model.init(
            {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, batch, train=False
        )
    )
    return ["/".join(k) for k in traverse_util.flatten_dict(variables["params"])]


@pytest.mark.parametrize("stage", prem.STAGES)
def test_both_stages_hold_both_modules(stage):
    paths = _param_paths(_config(stage=stage))
    assert {p.split("/")[0] for p in paths} == {"retriever", "localizer"}


@pytest.mark.parametrize("mode,kept,dropped", [("video", "video", "sub"), ("sub", "sub", "video")])
def test_localizer_ctx_mode_drops_a_localizer_modality_only(mode, kept, dropped):
    paths = _param_paths(_config(stage="localizer", localizer_ctx_mode=mode))
    retriever = [p for p in paths if p.startswith("retriever/")]
    localizer = [p for p in paths if p.startswith("localizer/")]
    assert any(p.startswith("retriever/video_input") for p in retriever)
    assert any(p.startswith("retriever/sub_input") for p in retriever)
    assert any(p.startswith(f"localizer/{kept}_input") for p in localizer)
    assert not any(p.startswith(f"localizer/{dropped}_input") for p in localizer)
    # The retriever's parameters are those of the full model: init_from can fill them.
    assert retriever == [p for p in _param_paths(_config()) if p.startswith("retriever/")]


def test_trainable_marks_the_stage_s_own_module():
    params = {"retriever": {"a": 1, "b": {"c": 2}}, "localizer": {"d": 3}}
    assert prem.trainable(params, {"stage": "retriever"}) == {
        "retriever": {"a": True, "b": {"c": True}},
        "localizer": {"d": False},
    }
    assert prem.trainable(params, {"stage": "localizer"}) == {
        "retriever": {"a": False, "b": {"c": False}},
        "localizer": {"d": True},
    }


def _run_config(stage: str, init_from: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = _config(stage=stage, num_negatives=3)
    config.data = ml_collections.ConfigDict({"hard_negatives": "", "num_negatives": 0})
    config.train = ml_collections.ConfigDict({"init_from": init_from})
    config.lock()
    return config


def test_resolve_config_fills_the_localizer_fields_from_the_retriever_workdir(tmp_path):
    config = _run_config("localizer", str(tmp_path))
    get_family("prem").resolve_config(config)
    assert config.data.hard_negatives == os.path.join(str(tmp_path), "hard_negatives", "train.npz")
    assert config.data.num_negatives == 3


def test_resolve_config_leaves_the_retriever_alone_and_refuses_a_bare_localizer():
    config = _run_config("retriever")
    prem.resolve_config(config)
    assert config.data.hard_negatives == "" and config.data.num_negatives == 0
    with pytest.raises(UserError, match="init_from"):
        prem.resolve_config(_run_config("localizer"))
    bad = _run_config("retriever")
    with bad.unlocked():
        bad.model.stage = "both"
    with pytest.raises(UserError, match="stage"):
        prem.resolve_config(bad)
