"""Weak supervision (``config.train.supervision``) and the ``video_index`` batch key.

Under ``'weak'`` the training batches and the initialisation batch carry no ``spans`` and no
``span_mask``; a family's record must declare ``supervision=('weak',)``; evaluation is
unchanged.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from vmr_jax import config_cli, models, trainer
from vmr_jax.models import mgpn

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "mgpn" / "synthetic.py")
SPAN_KEYS = {"spans", "span_mask"}

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")


def runlocal_config(supervision: str | None = None, model: str = "mgpn"):
    """The MGPN runlocal synthetic config (60 videos x 4 queries), optionally edited."""
    config = config_cli.load_config(f"{CONFIG}:runlocal", [("train.progress_bar", "false")])
    config.unlock()
    config.model.name = model
    if supervision is not None:
        config.train.supervision = supervision
    config.lock()
    return config


def weak_family(loss_fn=None, supervision=("weak",)) -> models.Family:
    """MGPN declared weakly supervised; ``loss_fn`` defaults to MGPN's (which reads spans)."""
    return dataclasses.replace(
        mgpn.FAMILY, loss_fn=loss_fn or mgpn.loss_fn, supervision=supervision
    )


@pytest.fixture
def weak_mgpn(monkeypatch):
    """Registers :func:`weak_family` as ``'weak_mgpn'`` for one test."""
    monkeypatch.setitem(models.FAMILIES, "weak_mgpn", weak_family())
    return "weak_mgpn"


# --------------------------------------------------------------------------- the switch
def test_supervision_defaults_to_full():
    config = runlocal_config()
    assert "supervision" not in config.train
    assert trainer.training_supervision(config) == "full"
    assert trainer.training_supervision(runlocal_config("full")) == "full"


def test_unknown_supervision_is_named():
    with pytest.raises(ValueError, match=r"config.train.supervision must be one of .*'semi'"):
        trainer.training_supervision(runlocal_config("semi"))


@pytest.mark.parametrize("family", ["mgpn", "tan2d", "fvmr"])
def test_weak_with_a_fully_supervised_family_is_refused(family):
    with pytest.raises(ValueError, match=rf"config.train.supervision='weak'.*family '{family}'"):
        trainer.training_supervision(runlocal_config("weak", model=family))


def test_weak_family_is_accepted_under_both(weak_mgpn, monkeypatch):
    assert trainer.training_supervision(runlocal_config("weak", model=weak_mgpn)) == "weak"
    # Spans in the batches do not hurt a family that does not read them.
    assert trainer.training_supervision(runlocal_config("full", model=weak_mgpn)) == "full"
    family = weak_family(supervision=("full", "weak"))
    monkeypatch.setitem(models.FAMILIES, "both_mgpn", family)
    assert trainer.training_supervision(runlocal_config("weak", model="both_mgpn")) == "weak"


# --------------------------------------------------------------------------- the data
def test_train_batches_lose_spans_under_weak_only(weak_mgpn):
    full = trainer.DataSources(runlocal_config())
    weak = trainer.DataSources(runlocal_config("weak", model=weak_mgpn))
    full_batch, weak_batch = next(full.train_iterator()), next(weak.train_iterator())
    assert SPAN_KEYS <= set(full_batch)
    assert set(weak_batch) == set(full_batch) - SPAN_KEYS  # removed, not zeroed
    for key, value in weak_batch.items():  # the same examples otherwise
        np.testing.assert_array_equal(value, full_batch[key], err_msg=key)
    # A resumed iterator is positioned the same way and still has no spans.
    resumed = next(weak.train_iterator(start_step=3))
    assert not SPAN_KEYS & set(resumed)
    # The initialisation batch follows the training batches.
    assert SPAN_KEYS <= set(full.sample_batch())
    assert set(weak.sample_batch()) == set(full.sample_batch()) - SPAN_KEYS
    # Evaluation keeps the spans: the metrics need them.
    assert SPAN_KEYS <= set(next(weak.eval_iterator("val")))


def test_data_sources_check_the_family():
    data = trainer.DataSources(runlocal_config("weak"))  # mgpn: fully supervised
    with pytest.raises(ValueError, match="'mgpn'"):
        data.train_iterator()
    with pytest.raises(ValueError, match="'mgpn'"):
        data.sample_batch()


def test_a_loss_reading_spans_fails_loudly_under_weak(weak_mgpn, tmp_path):
    # MGPN's loss builds its IoU targets from batch['spans']: under weak it must not run.
    config = runlocal_config("weak", model=weak_mgpn)
    with pytest.raises(KeyError, match="spans"):
        trainer.train_and_evaluate(config, str(tmp_path))


def test_train_and_evaluate_refuses_weak_mgpn_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"config.train.supervision='weak'.*'mgpn'"):
        trainer.train_and_evaluate(runlocal_config("weak"), str(tmp_path))


# --------------------------------------------------------------------------- video_index
def test_video_index_names_the_query_video():
    data = trainer.DataSources(runlocal_config())
    records = data.datasets.splits["train"]
    video_ids = data.prepared("train").video_ids
    batch = next(data.train_iterator())
    assert batch["video_index"].dtype == np.int32
    assert batch["video_index"].shape == batch["query_index"].shape
    for q, v in zip(batch["query_index"], batch["video_index"]):
        assert video_ids[v] == records[q].video_id
    # Eval padding rows repeat record 0, video_index included.
    split = data.datasets.splits["val"]
    batches = list(data.eval_iterator("val"))
    last = batches[-1]
    pad = last["valid"] == 0
    assert pad.any(), "the val split should leave a padded last batch"
    first_video = data.prepared("val").video_ids.index(split[0].video_id)
    np.testing.assert_array_equal(last["video_index"][pad], first_video)


def test_queries_of_one_video_share_video_index():
    # The synthetic benchmark has 4 queries per video: the records give the grouping.
    data = trainer.DataSources(runlocal_config())
    records = data.datasets.splits["val"]
    index = np.concatenate([b["video_index"] for b in data.eval_iterator("val")])
    query = np.concatenate([b["query_index"] for b in data.eval_iterator("val")])
    index, query = index[query >= 0], query[query >= 0]
    by_video: dict[str, set[int]] = {}
    for q, v in zip(query, index):
        by_video.setdefault(records[q].video_id, set()).add(int(v))
    assert all(len(rows) == 1 for rows in by_video.values())  # one index per video
    assert len({next(iter(r)) for r in by_video.values()}) == len(by_video)  # distinct
    assert max(len([q for q in query if records[q].video_id == v]) for v in by_video) == 4
