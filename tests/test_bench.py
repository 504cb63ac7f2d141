"""``vmr-jax bench``: random batches from every family's example batch, official variants,
and a bench run for every registered family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vmr_jax import bench, config_cli, query_speed
from vmr_jax.models import FAMILIES, get_family, mgpn

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "mgpn" / "synthetic.py")


@pytest.mark.parametrize(
    "variant, batch_size, input_clips",
    # Charades-STA I3D: 64 clips x stride 4; TACoS: 128 clips x stride 2 (official yamls).
    [("charades_i3d", 64, 256), ("tacos", 32, 256)],
)
def test_random_batch_has_the_variant_shapes(variant, batch_size, input_clips):
    config = config_cli.load_config_file(CONFIG)
    config.unlock()
    bench.apply_variant(config, variant)
    expected = mgpn.VARIANTS[variant]
    assert config.model.num_clips == expected["num_clips"]
    batch = bench.random_batch(get_family("mgpn"), config.model, batch_size, query_len=12)
    assert batch["video_features"].shape == (batch_size, input_clips, expected["feature_dim"])
    assert batch["query_features"].shape == (batch_size, 12, expected["word_dim"])
    lengths = batch["query_mask"].sum(1)
    assert lengths.min() >= 1 and lengths.max() <= 12
    # Padding words are zero, spans lie inside the video.
    assert np.all(batch["query_features"][batch["query_mask"] == 0] == 0)
    start, end = batch["spans"][:, 0, 0], batch["spans"][:, 0, 1]
    assert np.all(0 <= start) and np.all(start < end) and np.all(end <= batch["duration"])
    assert batch["valid"].sum() == batch_size


def test_unknown_variant_is_named():
    config = config_cli.load_config_file(CONFIG)
    config.unlock()
    with pytest.raises(KeyError, match="no_such_variant"):
        bench.apply_variant(config, "no_such_variant")


XML_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "xml" / "synthetic.py")


def test_random_batch_for_xml_has_subtitles_and_max_ctx_l_clips():
    config = config_cli.load_config_file(XML_CONFIG)
    batch = bench.random_batch(get_family("xml"), config.model, 3, query_len=7)
    clips = config.model.max_ctx_l
    assert batch["video_features"].shape == (3, clips, config.model.vid_feat_size)
    assert batch["subtitle_features"].shape == (3, clips, config.model.sub_feat_size)
    assert batch["query_features"].shape == (3, 7, config.model.q_feat_size)


@pytest.mark.slow
def test_query_speed_report_structure(jax_compilation_cache):
    """TE / CML / ALL of FVMR and 2D-TAN on tiny shapes: every number there, ALL = TE + CML,
    FVMR's CML dot costs C * D multiply-adds (XLA cost analysis)."""
    report = query_speed.run_query_speed_bench(
        ("tiny",), query_len=6, queries=4, videos=3, pairs=2, steps=1, warmup=0
    )
    assert report["platform"] == "cpu" and report["query_len"] == 6 and report["top_k"] == 5
    entry = report["shapes"]["tiny"]
    assert entry["cells"] == 114 and entry["embed_dim"] == 64  # 16 clips, (8, 4); D = 64
    for family in ("fvmr", "tan2d"):
        e = entry[family]
        assert e["variant"] == "tiny"
        for how in ("batch1", "amortised"):
            for part in ("te_ms", "cml_ms"):
                assert np.isfinite(e[part][how]) and e[part][how] > 0, (family, part, how)
                assert e[part][f"{how}_repeats"] == 1
            assert e["all_ms"][how] == pytest.approx(e["te_ms"][how] + e["cml_ms"][how])
    cml = entry["fvmr"]["cml_ms"]
    assert (cml["queries"], cml["videos"], entry["tan2d"]["cml_ms"]["pairs"]) == (4, 3, 2)
    assert cml["flops"]["batch1_dot"] == cml["flops"]["expected_dot_2CD"] == 2 * 114 * 64
    assert cml["flops"]["batch1"] >= cml["flops"]["batch1_dot"]
    assert entry["fvmr"]["search_ms"]["queries"] == 4
    assert set(entry["cml_speedup"]) == {"batch1", "amortised"}
    assert "paper_table1_ms" not in entry
    table = query_speed.format_table(report).splitlines()
    assert len(table) == 1 + 4 and table[1].split()[:3] == ["tiny", "fvmr", "batch1"]


def test_every_fvmr_shape_has_its_2d_tan_variant():
    """Each FVMR shape of Table 1 times a 2D-TAN model of its dataset: 2D-TAN names variants
    by dataset (``charades_conv``), FVMR by dataset and features (``charades_vgg``)."""
    from vmr_jax.models import fvmr, tan2d

    expected = {"tacos": "tacos_conv", "activitynet": "activitynet_conv", "tiny": "tiny"}
    expected.update({f"charades_{f}": "charades_conv" for f in ("vgg", "i3d", "c3d")})
    for shape, name in expected.items():
        assert shape in fvmr.VARIANTS
        got, config = query_speed.tan2d_variant(shape)
        assert got == name and dict(config) == dict(tan2d.VARIANTS[name])


def test_timed_ms_stops_after_the_budget_and_takes_the_median():
    calls = []
    out = query_speed.timed_ms(lambda: calls.append(1), steps=10, warmup=2, budget_s=0.0)
    assert out["repeats"] == 3 and len(calls) == 5  # 2 warm-up calls, then the minimum 3
    out = query_speed.timed_ms(lambda: calls.append(1), steps=4, warmup=0, budget_s=1e9)
    assert out["repeats"] == 4 and out["ms"] >= 0


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_random_batch_keeps_every_field_of_the_family_example():
    # FVMR reads semantic role trees, VLANet a video row: the random batch has them too.
    for name in ("fvmr", "vlanet"):
        config = config_cli.load_config_file(str(CONFIGS / name / "synthetic.py"))
        family = get_family(name)
        example = family.example_batch(config.model, 2, 6)
        batch = bench.random_batch(family, config.model, 2, 6)
        assert set(example) <= set(batch), name
        for key, value in example.items():
            assert batch[key].shape == value.shape and batch[key].dtype == value.dtype, key
        assert np.all(batch["spans"][:, 0, 1] <= batch["duration"])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_bench_runs_for_every_registered_family(name, jax_compilation_cache):
    """``vmr-jax bench --config configs/<family>/synthetic.py`` for every family in the
    registry (a new family needs its synthetic config and nothing in bench)."""
    path = CONFIGS / name / "synthetic.py"
    assert path.exists(), f"family {name!r} has no configs/{name}/synthetic.py"
    config = config_cli.load_config_file(str(path))
    report = bench.run_bench(config, batch_size=2, eval_batch_size=2, steps=1, warmup=0)
    assert report["model"] == name and report["num_params"] > 0
    if name == "mgpn":  # plus the official unused Conv1d(1024, 512, 3): 512 * 1024 * 3 + 512
        assert report["num_params_paper"] == report["num_params"] + 1_573_376
    else:
        assert "num_params_paper" not in report
    assert report["train_steps_per_s"] > 0 and np.isfinite(report["train_steps_per_s"])
    if FAMILIES[name].is_corpus:
        assert "eval_queries_per_s" not in report  # measured by the search bench
    else:
        assert report["eval_queries_per_s"] > 0
