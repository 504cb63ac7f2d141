"""``vmr-jax convert``: an official checkpoint (+ experiment YAML) -> a vmr_jax workdir.

    vmr-jax convert --checkpoint MGPN.pkl --yaml experiments/charades/i3d-finetune-mgpn256.yaml \
        --workdir DIR [--config configs/mgpn/charades_i3d.py] [--config.x=y ...]
    vmr-jax convert --model xml --checkpoint model.ckpt [--opt opt.json] --workdir DIR \
        [--config configs/xml/tvr.py] [--config.x=y ...]
    vmr-jax convert --model tan2d --checkpoint iter005418-0.4277-0.8062.pkl \
        --yaml experiments/charades/2D-TAN-16x16-K5L8-conv.yaml --workdir DIR \
        [--config configs/tan2d/charades.py:conv] [--config.x=y ...]

XML (jayleicn/TVRetrieval): the official ``model.ckpt`` holds the state_dict and the model
config; ``--opt`` (the run's ``opt.json``) gives the options instead.  Model fields come from
them (``vmr_jax.convert.xml.config_from_official``); the rest of the config from ``--config``
(default ``configs/xml/tvr.py``).

The config is ``--config`` (a vmr_jax config file) with the model, optimiser and evaluation
fields of ``--yaml`` and its ``NUM_SAMPLE_CLIPS`` and ``NORMALIZE`` (official default False)
written over it.  With ``--yaml`` alone the base is the shipped benchmark config the YAML
describes (``configs/mgpn/{charades_i3d,charades_vgg,tacos,activitynet}.py``,
``configs/tan2d/{charades,tacos,activitynet}.py:{conv,pool}``), picked from DATASET.NAME,
DATASET.VIS_INPUT_TYPE and the model, with the evaluated split of DATASET.NO_VAL
(``vmr_jax.convert.benchmark_configs``); a YAML it cannot map is refused, naming the field,
and then needs ``--config``.  2D-TAN (microsoft/2D-TAN): official checkpoints are
``torch.save``'d state_dicts; the YAML is read by ``vmr_jax.convert.tan2d.config_from_yaml``.
The converted weights are saved as the step-0 checkpoint of the workdir, next to
``config.json``, so ``vmr-jax eval --workdir DIR`` evaluates them like a trained run.
"""

from __future__ import annotations

import argparse
import os

import ml_collections

CONVERTERS = {
    "mgpn": "vmr_jax.convert.mgpn",
    "tan2d": "vmr_jax.convert.tan2d",
    "xml": "vmr_jax.convert.xml",
}
# Shipped configs by name (vmr_jax_configs), so the defaults work after a plain install.
_DEFAULT_XML_CONFIG = "xml/tvr"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="official state_dict (.pkl/.pth/.npz)")
    parser.add_argument("--yaml", default=None, help="official experiment YAML (MGPN, 2D-TAN)")
    parser.add_argument("--opt", default=None, help="official opt.json (XML)")
    parser.add_argument(
        "--config",
        default=None,
        help="vmr_jax config file, path.py[:arg] (default: the benchmark config of --yaml)",
    )
    parser.add_argument("--model", default="mgpn", choices=sorted(CONVERTERS))
    parser.add_argument("--workdir", required=True, help="output workdir")


def build_config(
    config_spec: str | None, yaml_path: str | None, overrides=(), model_name: str = "mgpn"
) -> ml_collections.ConfigDict:
    """The run config of an official ``model_name`` (``mgpn`` or ``tan2d``) experiment.

    Base: ``config_spec``, else the shipped benchmark config the YAML describes
    (:func:`vmr_jax.convert.benchmark_configs.match_benchmark`: dataset, feature set and
    evaluated split from the YAML; refused, naming the field, when it has none).  On top: the
    YAML's model, optimiser and evaluation fields and the inputs the checkpoint was trained
    on (``num_input_clips``; ``normalize``, False where the YAML has no NORMALIZE, as the
    official default), then ``overrides``.
    """
    import importlib

    from vmr_jax import config_cli
    from vmr_jax.convert import benchmark_configs

    if config_spec is None and yaml_path is None:
        raise ValueError("convert needs --config, --yaml or both")
    official = match = None
    if yaml_path is not None:
        where = os.fspath(yaml_path)
        raw = benchmark_configs.read_yaml(yaml_path)
        benchmark_configs.check_model_name(model_name, raw, where)
        official = importlib.import_module(CONVERTERS[model_name]).config_from_yaml(yaml_path)
        if config_spec is None:
            match = benchmark_configs.match_benchmark(model_name, raw, official.model, where)
            config_spec = match.config
    config = ml_collections.ConfigDict(config_cli.load_config(config_spec).to_dict())
    if official is not None:
        for section in ("model", "train", "evals"):
            for key, value in official[section].items():
                config[section][key] = value
        config.data.num_input_clips = official.data.num_input_clips
        config.data.normalize = official.data.normalize
    if match is not None:
        if match.features != config.data.features:
            config.data.features = match.features
            config.data.dir = f"data/vmr_jax/{match.dataset}-{match.features}"  # as built
        if match.eval_split is not None:
            config.evals.split = match.eval_split
    for dotted, text in overrides:
        config_cli.apply_override(config, dotted, text)
    return config


def build_xml_config(
    config_spec: str | None, checkpoint: str, opt_path: str | None, overrides=()
) -> ml_collections.ConfigDict:
    """XML run config: ``--config`` (default ``configs/xml/tvr.py``) with the model fields of
    ``opt.json`` or, without it, of the checkpoint's ``model_cfg``."""
    import json

    from vmr_jax import config_cli
    from vmr_jax.convert import xml as xml_convert

    base = config_cli.load_config(config_spec or _DEFAULT_XML_CONFIG)
    config = ml_collections.ConfigDict(base.to_dict())
    if opt_path is not None:
        with open(opt_path, encoding="utf-8") as f:
            official = xml_convert.config_from_official(json.load(f))
    else:
        model_cfg = xml_convert.read_checkpoint(checkpoint)[1]
        if model_cfg is None:
            raise ValueError(f"{checkpoint} holds no model_cfg: pass the run's opt.json (--opt)")
        official = xml_convert.config_from_official(model_cfg, sizes_include_tef=True)
    for key, value in official.items():
        config.model[key] = value
    for dotted, text in overrides:
        config_cli.apply_override(config, dotted, text)
    return config


def convert_to_workdir(
    checkpoint: str, config: ml_collections.ConfigDict, workdir: str, model_name: str = "mgpn"
) -> str:
    """Converts ``checkpoint`` for ``config.model`` and saves it as step 0 of ``workdir``.

    Returns the checkpoint directory.
    """
    import importlib

    import jax

    from vmr_jax import checkpointing, sharding, trainer
    from vmr_jax.convert.state_dict import load_state_dict
    from vmr_jax.models import get_family

    converter = importlib.import_module(CONVERTERS[model_name])
    family = get_family(config.model.name)
    mesh = sharding.make_mesh(config.mesh)
    model = trainer.create_model(config.model)
    tx = trainer.family_optimizer(config, 1)[0]
    sample = family.example_batch(config.model)
    state = trainer.create_train_state(config, model, jax.random.PRNGKey(0), sample, mesh, tx=tx)
    reference = {"params": state.params, "batch_stats": state.batch_stats}
    if model_name == "xml":
        variables = converter.convert_xml(
            converter.load_checkpoint(checkpoint), config.model, reference
        )
    elif model_name == "tan2d":
        variables = converter.convert_tan2d(load_state_dict(checkpoint), config.model, reference)
    else:
        variables = converter.convert_mgpn(load_state_dict(checkpoint), config.model, reference)
    shard = lambda new, old: jax.device_put(new, old.sharding)  # noqa: E731
    state = state.replace(
        params=jax.tree.map(shard, variables["params"], state.params),
        batch_stats=jax.tree.map(shard, variables.get("batch_stats", {}), state.batch_stats),
    )
    os.makedirs(workdir, exist_ok=True)
    checkpointing.save_config(config, workdir)
    manager = checkpointing.create_checkpoint_manager(workdir, config.train)
    checkpointing.save(manager, 0, state)
    manager.wait_until_finished()
    return checkpointing.checkpoint_dir(workdir)


def main(args: argparse.Namespace) -> int:
    overrides = getattr(args, "config_overrides", ())
    if args.model == "xml":
        config = build_xml_config(args.config, args.checkpoint, args.opt, overrides)
    else:
        config = build_config(args.config, args.yaml, overrides, args.model)
    path = convert_to_workdir(args.checkpoint, config, args.workdir, args.model)
    print(f"converted {args.checkpoint} -> {path} (step 0); config: {args.workdir}/config.json")
    return 0
