"""Official PyTorch ``state_dict`` -> Flax variables, with strict key and shape checks.

A family converter is a list of :class:`Rule`: each maps one PyTorch key to one leaf of the
Flax variables (collection ``params`` or ``batch_stats``) with a layout transform.  Conversion
fails, naming every offending key, when a PyTorch key has no rule (unexpected), when a Flax
leaf gets no value (missing), or when a shape does not match the model built from the config.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping

import numpy as np


class ConversionError(ValueError):
    """A state_dict does not fit the model: missing, unexpected or mis-shaped keys."""


@dataclasses.dataclass(frozen=True)
class Rule:
    torch_key: str
    flax_path: tuple[str, ...]  # (collection, module, ..., leaf)
    transform: Callable[[np.ndarray], np.ndarray] = lambda a: a


def linear(a: np.ndarray) -> np.ndarray:
    """``nn.Linear`` weight ``(out, in)`` -> Dense kernel ``(in, out)``."""
    return a.T


def conv1x1(a: np.ndarray) -> np.ndarray:
    """1x1 Conv1d/Conv2d weight ``(out, in, 1[, 1])`` -> Dense kernel ``(in, out)``."""
    return a.reshape(a.shape[0], a.shape[1]).T


def conv1d(a: np.ndarray) -> np.ndarray:
    """Conv1d weight ``(out, in, k)`` -> flax Conv kernel ``(k, in, out)``."""
    return np.transpose(a, (2, 1, 0))


def conv2d(a: np.ndarray) -> np.ndarray:
    """Conv2d weight ``(out, in/groups, kh, kw)`` -> flax kernel ``(kh, kw, in/groups, out)``."""
    return np.transpose(a, (2, 3, 1, 0))


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an official checkpoint into ``{name: float32 array}``.

    ``.npz`` files are read with NumPy (keys may carry a ``weights/`` prefix, as in the golden
    files).  Anything else goes through ``torch.load(..., weights_only=True)`` (install the
    ``torch`` extra); a dict holding ``state_dict`` / ``model`` / ``model_state_dict`` is
    unwrapped, and a ``module.`` prefix (DataParallel) is stripped.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if path.endswith(".npz"):
        with np.load(path) as archive:
            prefixed = [k for k in archive.files if k.startswith("weights/")]
            keys = prefixed or archive.files
            return {k.removeprefix("weights/"): np.asarray(archive[k]) for k in keys}
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading {path!r} needs PyTorch: pip install 'vmr_jax[torch]'") from err
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path!r} holds a {type(obj).__name__}, not a state_dict")
    out = {}
    for key, value in obj.items():
        if not hasattr(value, "detach"):
            raise ConversionError(f"{path!r}: entry {key!r} is not a tensor")
        out[key.removeprefix("module.")] = value.detach().cpu().numpy()
    return out


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    flat = {}
    for key, value in tree.items():
        path = prefix + (str(key),)
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path))
        else:
            flat[path] = value
    return flat


def _unflatten(flat: Mapping[tuple[str, ...], np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def convert(
    state_dict: Mapping[str, np.ndarray],
    rules: Iterable[Rule],
    reference: Mapping,
    ignore: Iterable[str] = (),
    keep_from_reference: Iterable[tuple[str, ...]] = (),
) -> dict:
    """Convert ``state_dict`` into a variables dict shaped like ``reference``.

    Args:
      state_dict: PyTorch names -> arrays.
      rules: one per PyTorch key the model uses.
      reference: the model's variables (or their ``jax.eval_shape``), e.g. ``{'params': ...,
        'batch_stats': ...}``; gives the expected leaves and shapes.
      ignore: PyTorch keys that exist in the official model but are never used (suffix match
        on ``num_batches_tracked`` is always ignored).
      keep_from_reference: Flax paths that the official model does not have (e.g. a learned
        word embedding when the official model reads GloVe vectors); their reference values
        are kept.
    Returns: nested dict of float32 NumPy arrays with the structure of ``reference``.
    """
    rules = list(rules)
    ignore = set(ignore)
    expected = _flatten(reference)
    by_key = {r.torch_key: r for r in rules}
    problems = []
    unexpected = sorted(
        k
        for k in state_dict
        if k not in by_key and k not in ignore and not k.endswith("num_batches_tracked")
    )
    if unexpected:
        problems.append(f"unexpected keys (no rule): {unexpected}")
    missing = sorted(r.torch_key for r in rules if r.torch_key not in state_dict)
    if missing:
        problems.append(f"missing keys: {missing}")
    out: dict[tuple[str, ...], np.ndarray] = {}
    for rule in rules:
        if rule.torch_key not in state_dict:
            continue
        if rule.flax_path not in expected:
            problems.append(
                f"{rule.torch_key!r} maps to {'/'.join(rule.flax_path)}, which the model does "
                "not have (check the config against the checkpoint)"
            )
            continue
        value = np.asarray(rule.transform(np.asarray(state_dict[rule.torch_key])), np.float32)
        want = tuple(expected[rule.flax_path].shape)
        if value.shape != want:
            problems.append(
                f"{rule.torch_key!r} {tuple(np.shape(state_dict[rule.torch_key]))} -> "
                f"{'/'.join(rule.flax_path)} has shape {value.shape}, model expects {want}"
            )
            continue
        out[rule.flax_path] = value
    keep = {tuple(p) for p in keep_from_reference}
    for path, ref in expected.items():
        if path in out:
            continue
        if any(path[: len(k)] == k for k in keep):
            out[path] = np.asarray(ref, np.float32)
        else:
            problems.append(f"model leaf {'/'.join(path)} gets no value from the state_dict")
    if problems:
        raise ConversionError("state_dict does not fit the model:\n  " + "\n  ".join(problems))
    return _unflatten(out)
