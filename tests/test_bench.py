"""``vmr-jax bench`` inputs: random batches of the contract shapes for official variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vmr_jax import bench, config_cli
from vmr_jax.models import mgpn

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
    batch = bench.random_batch(config.model, batch_size, query_len=12)
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
