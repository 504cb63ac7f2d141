"""The shipped benchmark config an official experiment YAML describes (Huntersxsx/MGPN,
microsoft/2D-TAN), for ``vmr-jax convert --yaml`` without ``--config``.

``DATASET.NAME`` picks the dataset (:data:`DATASETS`), ``DATASET.VIS_INPUT_TYPE`` the feature
set (:data:`FEATURE_SETS`; a YAML without one: the single shipped feature set whose width is
the YAML's frame input size), the family and, for 2D-TAN, ``TAN.PROP_MODULE`` (``conv`` or
``pool``) the config file and its argument (:data:`SHIPPED_CONFIGS`).  ``DATASET.NO_VAL``, when
the YAML sets it, gives the evaluated split as in the official ``train.py`` (True: test, False:
val).  Whatever cannot be mapped is refused with the YAML field named; ``--config`` skips the
derivation.  The YAMLs carry no query length: the official loaders pad each batch to its
longest query, so the shipped config's ``data.max_query_len`` stays.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

# DATASET.NAME -> data_pipelines registry key.
DATASETS = {"Charades": "charades_sta", "TACoS": "tacos", "ActivityNet": "activitynet"}
# (dataset, DATASET.VIS_INPUT_TYPE) -> feature set of ``data_pipelines.<dataset>.FEATURES``.
FEATURE_SETS = {
    ("charades_sta", "vgg_rgb"): "vgg",  # 2D-TAN reads vgg_rgb_features.hdf5
    ("charades_sta", "charades_vgg_rgb"): "vgg",  # MGPN reads charades_vgg_rgb.hdf5
    ("charades_sta", "I3D/finetune"): "i3d",
    ("charades_sta", "I3D/raw"): "i3d_raw",
    ("tacos", "c3d"): "c3d",
    ("activitynet", "c3d"): "c3d",
}
# (family, dataset, feature set) -> shipped config; ``{prop}``: 2D-TAN's conv / pool argument.
SHIPPED_CONFIGS = {
    ("mgpn", "charades_sta", "i3d"): "mgpn/charades_i3d",
    ("mgpn", "charades_sta", "vgg"): "mgpn/charades_vgg",
    ("mgpn", "tacos", "c3d"): "mgpn/tacos",
    ("mgpn", "activitynet", "c3d"): "mgpn/activitynet",
    ("tan2d", "charades_sta", "vgg"): "tan2d/charades:{prop}",
    ("tan2d", "tacos", "c3d"): "tan2d/tacos:{prop}",
    ("tan2d", "activitynet", "c3d"): "tan2d/activitynet:{prop}",
}
# Feature sets without a config of their own -> the feature set whose config they start from
# (with the YAML's map and data); never guessed from a frame width alone.
BORROWED_CONFIGS = {("charades_sta", "i3d_raw"): "i3d"}  # MGPN i3d-raw-mgpn256.yaml
# MODEL.NAME of the official YAMLs -> ``vmr-jax convert --model``.
MODEL_NAMES = {"MGPN": "mgpn", "TAN": "tan2d"}
# Where each family's YAML gives the video feature width (named in refusals).
FRAME_INPUT_FIELDS = {
    "mgpn": "MGPN.COARSE_GRAINED_ENCODER.PARAMS.FRAME.INPUT_SIZE",
    "tan2d": "TAN.FRAME_MODULE.PARAMS.INPUT_SIZE",
}
_NO_CONFIG = "pass --config"


class BenchmarkMatch(NamedTuple):
    """What an official YAML maps to: the shipped config and the data it reads."""

    config: str  # shipped config name with its argument, e.g. ``tan2d/tacos:pool``
    dataset: str  # data_pipelines registry key
    features: str  # feature set of that dataset
    eval_split: str | None  # from DATASET.NO_VAL; None when the YAML does not set it


def read_yaml(path: str | os.PathLike) -> Mapping:
    """The official experiment YAML as nested dicts."""
    import yaml

    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{os.fspath(path)}: not an experiment YAML (no top-level mapping)")
    return raw


def check_model_name(family: str, raw: Mapping, where: str) -> None:
    """Refuses a YAML whose ``MODEL.NAME`` is another family's than ``--model``."""
    name = (raw.get("MODEL") or {}).get("NAME")
    if name is None or MODEL_NAMES.get(name) == family:
        return
    hint = f"pass --model {MODEL_NAMES[name]}" if name in MODEL_NAMES else "no converter for it"
    raise ValueError(f"{where}: MODEL.NAME is {name!r}, not a {family} experiment ({hint})")


def _feature_dim(dataset: str, features: str) -> int:
    from data_pipelines.benchmarks import get_benchmark

    return int(get_benchmark(dataset).FEATURES[features].video.dim)


def match_benchmark(family: str, raw: Mapping, model, where: str) -> BenchmarkMatch:
    """The shipped config of ``family`` that the YAML ``raw`` describes.

    ``model``: the YAML's ``config.model`` (``config_from_yaml``), for the frame input size
    and 2D-TAN's ``prop``.  Raises a ValueError naming ``where`` and the field it cannot map.
    """
    dataset_section = raw.get("DATASET") or {}
    name = dataset_section.get("NAME")
    if name not in DATASETS:
        raise ValueError(
            f"{where}: DATASET.NAME {name!r} has no vmr_jax benchmark config "
            f"(known: {', '.join(sorted(DATASETS))}); {_NO_CONFIG}"
        )
    dataset = DATASETS[name]
    shipped = sorted({f for fam, ds, f in SHIPPED_CONFIGS if (fam, ds) == (family, dataset)})
    width = int(model.feature_dim)
    vis_input_type = dataset_section.get("VIS_INPUT_TYPE")
    if vis_input_type:
        features = FEATURE_SETS.get((dataset, str(vis_input_type)))
        if BORROWED_CONFIGS.get((dataset, features), features) not in shipped:
            known = sorted(
                v
                for (ds, v), f in FEATURE_SETS.items()
                if ds == dataset and BORROWED_CONFIGS.get((ds, f), f) in shipped
            )
            raise ValueError(
                f"{where}: DATASET.VIS_INPUT_TYPE {vis_input_type!r} of {name} has no {family} "
                f"config (known: {', '.join(known)}); {_NO_CONFIG}"
            )
    else:
        fits = [f for f in shipped if _feature_dim(dataset, f) == width]
        if len(fits) != 1:
            raise ValueError(
                f"{where}: DATASET.VIS_INPUT_TYPE is missing and {FRAME_INPUT_FIELDS[family]} "
                f"{width} fits {fits or 'none'} of the {name} feature sets {shipped}; "
                f"set VIS_INPUT_TYPE or {_NO_CONFIG}"
            )
        features = fits[0]
    dim = _feature_dim(dataset, features)
    if dim != width:
        raise ValueError(
            f"{where}: {FRAME_INPUT_FIELDS[family]} is {width}, the {name} {features!r} "
            f"features are {dim}-d; {_NO_CONFIG}"
        )
    own = BORROWED_CONFIGS.get((dataset, features), features)
    config = SHIPPED_CONFIGS[(family, dataset, own)].format(prop=model.get("prop", ""))
    no_val = dataset_section.get("NO_VAL")
    eval_split = None if no_val is None else ("test" if no_val else "val")
    return BenchmarkMatch(config, dataset, features, eval_split)
