"""Config files on the command line: ``path.py[:arg]`` plus ``--config.a.b=value`` overrides.

A config file defines ``get_config(arg: str | None) -> ConfigDict`` (big_vision style).
Overrides follow ``ml_collections.config_flags``: the value is parsed as a Python literal and
must fit the field's current type (an int field accepts ``3``, a float field ``3`` or ``1e-3``,
a bool field ``true``/``false``/``1``/``0``, a tuple field ``1,5`` or ``(1, 5)``); anything
that is not a literal is a string.  Unknown fields are an error (configs are locked).
"""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

OVERRIDE_PREFIX = "--config."


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Runs ``get_config(arg)`` of the file in ``spec = 'path.py[:arg]'``."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} not found")
    name = "vmr_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {path!r} defines no get_config(arg)")
    return module.get_config(arg or None)


def parse_config_arg(
    arg: str | None,
    allowed: Sequence[str],
    config_file: str,
    exclusive: Sequence[Sequence[str]] = (),
) -> frozenset[str]:
    """The comma-separated arguments of ``get_config(arg)`` (``--config FILE:a,b``), checked.

    One parser for every config file: blanks ignored, each argument one of ``allowed``, at
    most one of each group in ``exclusive``; else a ValueError naming the config file, the
    bad arguments and the allowed ones.
    """
    flags = frozenset(a.strip() for a in (arg or "").split(",") if a.strip())
    name = os.path.relpath(config_file) if os.path.isabs(config_file) else config_file
    unknown = sorted(flags - set(allowed))
    if unknown:
        raise ValueError(
            f"{name}: unknown config arguments {unknown}; allowed: {', '.join(sorted(allowed))} "
            "(comma-separated, e.g. --config FILE:runlocal)"
        )
    for group in exclusive:
        chosen = sorted(flags & set(group))
        if len(chosen) > 1:
            raise ValueError(f"{name}: config arguments {chosen} exclude each other")
    return flags


def _parse_literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_value(text: str, current: Any) -> Any:
    """``text`` converted to the type of the field's ``current`` value."""
    if isinstance(current, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(current, (tuple, list)):
        value = _parse_literal(text if text.strip().startswith(("(", "[")) else f"({text},)")
        if not isinstance(value, (tuple, list)):
            value = (value,)
        return type(current)(value)
    value = _parse_literal(text)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, int) and not isinstance(value, int):
        raise TypeError(f"expected an integer, got {text!r}")
    if isinstance(current, float) and not isinstance(value, float):
        raise TypeError(f"expected a number, got {text!r}")
    if isinstance(current, str):
        return text
    return value


def apply_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
    """Sets ``config.<dotted> = text`` parsed for the field's type."""
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        if part not in node:
            raise KeyError(f"--config.{dotted}: no field {part!r}")
        node = node[part]
    if leaf not in node:
        raise KeyError(f"--config.{dotted}: no field {leaf!r} in {sorted(node.keys())}")
    try:
        value = parse_value(text, node[leaf])
    except (ValueError, TypeError) as e:
        raise ValueError(f"--config.{dotted}: {e}") from None
    with node.ignore_type():
        node[leaf] = value


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates ``--config.a.b=v`` / ``--config.a.b v`` pairs from the other arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(OVERRIDE_PREFIX):
            key = arg[len(OVERRIDE_PREFIX) :]
            if "=" in key:
                key, value = key.split("=", 1)
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise ValueError(f"{arg} has no value")
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def load_config(spec: str, overrides: Sequence[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
    """Config file ``spec`` with ``overrides`` applied, locked."""
    config = load_config_file(spec)
    for key, value in overrides:
        apply_override(config, key, value)
    config.lock()
    return config
