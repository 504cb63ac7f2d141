"""Device mesh, logical axis rules, host batch -> global array, multi-host start-up.

One mesh with axes ``('data', 'model')`` is declared in ``config.mesh.shape`` (``-1`` takes the
remaining devices, e.g. ``[-1, 1]`` = pure data parallelism).  The batch is sharded on
``data`` and replicated over ``model``.  Parameters are replicated unless a model annotates
them with logical axis names (``nn.with_logical_partitioning``); ``LOGICAL_AXIS_RULES`` maps
those names to mesh axes (``config.mesh.fsdp=True`` adds an ``embed -> data`` rule, i.e.
fsdp-style sharding of annotated weights over the data axis).

Multi-host: every process feeds its own slice of the global batch (``global_batch //
jax.process_count()`` examples); ``put_batch`` stitches the slices into one global array.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "model")

# Logical name -> mesh axis (None = replicated).  Names not listed are replicated.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("embed", None),
    ("hidden", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("vocab", "model"),
    ("clips", None),
    ("cells", None),
)

# Environment variables whose presence means "this is one process of a multi-host job".
_MULTI_HOST_ENV = (
    "JAX_COORDINATOR_ADDRESS",
    "COORDINATOR_ADDRESS",
    "MEGASCALE_COORDINATOR_ADDRESS",
)


def initialize_distributed() -> bool:
    """Calls ``jax.distributed.initialize()`` when the environment describes a multi-host job.

    Triggers: a coordinator address variable (``JAX_COORDINATOR_ADDRESS`` ...), a SLURM job
    with more than one task, an Open MPI launch with more than one rank, or a multi-worker
    TPU slice (``TPU_WORKER_HOSTNAMES`` with several hosts).  Returns True when it initialised.
    Must run before anything touches the devices.
    """
    multi = any(os.environ.get(k) for k in _MULTI_HOST_ENV)
    multi |= int(os.environ.get("SLURM_NTASKS", "1")) > 1
    multi |= int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    multi |= len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
    if multi:
        jax.distributed.initialize()
    return multi


def is_main_process() -> bool:
    """True on the process that writes logs, checkpoint metadata and result files."""
    return jax.process_index() == 0


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replaces one ``-1`` in ``shape`` by the remaining device count and checks the product."""
    shape = [int(s) for s in shape]
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {shape} must have one size per axis {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape} has more than one -1")
    if -1 in shape:
        rest = int(np.prod([s for s in shape if s != -1]))
        if rest <= 0 or num_devices % rest:
            raise ValueError(f"mesh shape {shape} does not divide {num_devices} devices")
        shape[shape.index(-1)] = num_devices // rest
    if int(np.prod(shape)) != num_devices:
        raise ValueError(f"mesh shape {shape} needs {np.prod(shape)} devices, have {num_devices}")
    return tuple(shape)


def make_mesh(mesh_config: Mapping[str, Any], devices: Sequence[Any] | None = None) -> Mesh:
    """Mesh with axes ``('data', 'model')`` from ``config.mesh`` (field ``shape``).

    ``devices`` defaults to all devices of all processes.  In a single process, a shape
    without ``-1`` that needs fewer devices uses the first ones (e.g. ``[1, 1]`` for a
    one-device reference run on a multi-device host).
    """
    devices = list(jax.devices() if devices is None else devices)
    requested = [int(s) for s in mesh_config.get("shape", (-1, 1))]
    needed = int(np.prod(requested))
    if -1 not in requested and 0 < needed < len(devices) and jax.process_count() == 1:
        devices = devices[:needed]
    shape = resolve_mesh_shape(requested, len(devices))
    # jax.make_mesh places devices topology-aware where the platform supports it; Auto axes
    # keep the jit-with-shardings (pjit) semantics the train step is written for.
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def logical_axis_rules(mesh_config: Mapping[str, Any] | None = None):
    """The rules for ``nn.logical_to_mesh_sharding``; ``fsdp=True`` shards ``embed`` on data."""
    rules = list(LOGICAL_AXIS_RULES)
    if mesh_config is not None and mesh_config.get("fsdp", False):
        rules = [(name, "data" if name == "embed" else axis) for name, axis in rules]
    return tuple(rules)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading (batch) axis on ``data``, the rest replicated; scalars replicated."""
    if ndim == 0:
        return replicated(mesh)
    return NamedSharding(mesh, PartitionSpec("data"))


def tree_shardings(abstract_tree: Any, mesh: Mesh, rules=None) -> Any:
    """``NamedSharding`` per leaf of an abstract (possibly ``nn.Partitioned``-boxed) tree.

    Leaves boxed with logical names are placed by ``rules``; plain leaves are replicated.
    The result has the structure of the *unboxed* tree.
    """
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules or LOGICAL_AXIS_RULES)


def put_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global ``jax.Array`` dict sharded on ``data``.

    Each process passes its own ``local_batch`` examples; the global leading size is
    ``local_batch * jax.process_count()`` and must be divisible by the ``data`` axis size.
    """
    data_size = mesh.shape["data"]
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        sharding = batch_sharding(mesh, value.ndim)
        if value.ndim:
            global_rows = value.shape[0] * jax.process_count()
            if global_rows % data_size:
                raise ValueError(
                    f"batch field {key!r}: global batch {global_rows} is not divisible by "
                    f"the mesh data axis ({data_size} devices)"
                )
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out
