"""``vmr-jax bench --search``: every corpus size reported, the index grows with the corpus, and
the localisation programs' compiled memory beside the tensors a literal score map would need."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmr_jax import config_cli, search_bench

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["xml", "cascaded_mpn"])
def test_search_bench_reports_every_corpus_size(name, jax_compilation_cache):
    config = config_cli.load_config_file(str(CONFIGS / name / "synthetic.py"))
    report = search_bench.run_search_bench(config, (12, 30), num_queries=5, clips=20, steps=1)
    assert [s["num_videos"] for s in report["search"]] == [12, 30]
    for size in report["search"]:
        assert size["queries_per_s"] > 0 and size["seconds_per_batch"] > 0
    # Index bytes grow with the corpus: 30 / 12 videos (one device: no padding).
    ratio = report["search"][1]["index_mib"] / report["search"][0]["index_mib"]
    assert ratio == pytest.approx(30 / 12)
    assert report["clips_per_video"] == 20 and report["queries_per_batch"] == 5
    assert report["index_build_videos"] == 12 and report["index_build_videos_per_s"] > 0
    assert report["query_len"] == config.model.max_desc_l
    # Stage 2 alone: all 5 queries, and one search step of min(query_chunk 4, 5) queries, each
    # in top_videos = 10 videos; the comparison sizes by hand: 20 * 20 * hidden * 4 bytes.
    hidden = config.model.hidden_size
    l_l_d = 20 * 20 * hidden * 4 / 2**20
    for part, queries in (("batch", 5), ("search_step", 4)):
        cost = report["localize"][part]
        assert (cost["queries"], cost["videos_per_query"]) == (queries, 10)
        assert cost["l_l_d_f32_mib"] == pytest.approx(l_l_d)
        assert cost["q_k_l_l_d_f32_mib"] == pytest.approx(queries * 10 * l_l_d)
        if "temp_size_mib" in cost:  # backends without memory_analysis report none
            assert cost["temp_size_mib"] >= 0
