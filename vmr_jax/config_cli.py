"""Config files on the command line: ``path.py[:arg]`` plus ``--config.a.b=value`` overrides.

A config file defines ``get_config(arg: str | None) -> ConfigDict`` (big_vision style).
``--config`` takes a path or the name of a shipped config: ``configs/`` is installed as the
package ``vmr_jax_configs``, so ``mgpn/synthetic`` (also ``mgpn/synthetic.py`` or
``configs/mgpn/synthetic.py`` outside a checkout) loads it after a plain ``pip install``.
Overrides follow ``ml_collections.config_flags``: the value is parsed as a Python literal and
must fit the field's current type (an int field accepts ``3``, a float field ``3`` or ``1e-3``,
a bool field ``true``/``false``/``1``/``0``, a str field any text, a tuple field ``1,5`` or
``(1, 5)`` with elements of the current elements' type).  Unknown fields and values of the
wrong type are a ``ConfigError`` naming the override, the text and the expected type; an
unset (None) field takes any literal, else the text.
"""

from __future__ import annotations

import ast
import importlib.resources
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from vmr_jax.errors import ConfigError

OVERRIDE_PREFIX = "--config."


CONFIGS_PACKAGE = "vmr_jax_configs"


def packaged_configs() -> list[str]:
    """Names of the shipped configs (``mgpn/synthetic``, ...), sorted."""
    root = importlib.resources.files(CONFIGS_PACKAGE)
    return sorted(
        f"{family.name}/{file.name[:-3]}"
        for family in root.iterdir()
        if family.is_dir() and not family.name.startswith(("_", "."))
        for file in family.iterdir()
        if file.name.endswith(".py") and not file.name.startswith("_")
    )


def config_path(name: str) -> str:
    """The file of ``--config name``: an existing path, else a shipped config by name.

    ``mgpn/synthetic``, ``mgpn/synthetic.py`` and ``configs/mgpn/synthetic.py`` name the same
    shipped file; a FileNotFoundError lists the shipped names when neither exists.
    """
    if os.path.isfile(name):
        return name
    relative = name.replace(os.sep, "/").removeprefix("./").removeprefix("configs/")
    relative = relative.removesuffix(".py")
    parts = relative.split("/")
    if len(parts) == 2 and all(p and p not in (".", "..") for p in parts):
        file = importlib.resources.files(CONFIGS_PACKAGE).joinpath(parts[0], parts[1] + ".py")
        if file.is_file():
            return str(file)
    raise FileNotFoundError(
        f"config file {name!r} not found, nor a shipped config of that name "
        f"(shipped: {', '.join(packaged_configs())})"
    )


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Runs ``get_config(arg)`` of the config in ``spec = 'path.py[:arg]'`` or
    ``'family/name[:arg]'`` (a shipped config, :func:`config_path`)."""
    name, _, arg = spec.partition(":")
    path = config_path(name)
    module_name = "vmr_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"config file {path!r} line {e.lineno}: {e.msg}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config(arg)")
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
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _split_items(text: str) -> list[str]:
    """``text`` split at the commas outside brackets and quotes (``"(1,2), 'a,b'"`` -> 2)."""
    items, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote and text[i - 1] != "\\" else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    items.append(text[start:].strip())
    if items[-1] == "":
        items.pop()  # "1,2," and "()" alike
    return items


def _kind(value: Any) -> str:
    return type(value).__name__


def _element_example(current: Sequence[Any]) -> Any:
    """The value each element of a new sequence must match: the current elements' common
    type (ints and floats together: float), or None (anything) for an empty or mixed one."""
    kinds = {_kind(x) for x in current}
    if len(kinds) == 1:
        return current[0]
    if kinds == {"int", "float"}:
        return 0.0
    return None


def _parse_sequence(text: str, current: tuple | list) -> tuple | list:
    stripped = text.strip()
    if stripped[:1] in ("(", "[") and len(_split_items(stripped)) == 1:
        if stripped[-1:] != {"(": ")", "[": "]"}[stripped[0]]:
            raise ValueError(f"unbalanced brackets in {text!r}")
        stripped = stripped[1:-1]  # "(1, 5)", not "(1, 2), (3, 4)"
    example = _element_example(current)
    expected = "a tuple" if isinstance(current, tuple) else "a list"
    if example is not None:
        expected += f" of {_describe(example)}"
    values = []
    for item in _split_items(stripped):
        if not item:
            raise ValueError(f"expected {expected}, got {text!r} (an empty element)")
        try:
            if example is None:
                values.append(_parse_literal(item))
            elif isinstance(example, str):
                literal = _parse_literal(item)
                values.append(literal if isinstance(literal, str) else item)
            else:
                values.append(parse_value(item, example))
        except ValueError:
            raise ValueError(f"expected {expected}, got {text!r}") from None
    return type(current)(values)


def _describe(example: Any) -> str:
    """``int``, ``float``, ``str``, ``bool`` or ``tuple of int`` (for nested sequences)."""
    if isinstance(example, (tuple, list)):
        inner = _element_example(example)
        kind = _kind(example)
        return kind if inner is None else f"{kind} of {_describe(inner)}"
    return _kind(example)


def parse_value(text: str, current: Any) -> Any:
    """``text`` converted to the type of the field's ``current`` value.

    bool: ``true/false/yes/no/1/0``; int: an integer literal; float: a number; str: any text;
    tuple or list: comma-separated elements (brackets optional), each of the type of the
    current elements (any literal when the current one is empty); None (unset): any literal,
    else the text.  Anything else is a ValueError saying what was expected.
    """
    if isinstance(current, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"expected a bool (true or false), got {text!r}")
    if isinstance(current, (tuple, list)):
        return _parse_sequence(text, current)
    if isinstance(current, str):
        return text
    value = _parse_literal(text)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(current, int):
        if not (is_number and isinstance(value, int)):
            raise ValueError(f"expected an int, got {text!r}")
        return value
    if isinstance(current, float):
        if is_number:
            return float(value)
        try:
            return float(text)  # inf, nan
        except ValueError:
            raise ValueError(f"expected a float, got {text!r}") from None
    return value


def apply_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
    """Sets ``config.<dotted> = text`` parsed for the field's type (a ConfigError naming the
    override when the field does not exist or the text does not fit its type)."""
    *parents, leaf = dotted.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict):
            raise ConfigError(f"--config.{dotted}: {'.'.join(parents[:i])} has no fields")
        if part not in node:
            raise ConfigError(f"--config.{dotted}: no field {part!r} in {sorted(node.keys())}")
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict):
        raise ConfigError(f"--config.{dotted}: {'.'.join(parents)} has no fields")
    if leaf not in node:
        raise ConfigError(f"--config.{dotted}: no field {leaf!r} in {sorted(node.keys())}")
    try:
        value = parse_value(text, node[leaf])
    except ValueError as e:
        raise ConfigError(f"--config.{dotted}={text}: {e}") from None
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
                raise ConfigError(f"{arg} has no value")
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
