"""Multi-process start-up and the device mesh (axes ``data``, ``fsdp``, ``tensor``, ``context``).

The mesh is built by the one :func:`ssm_jax.parallel.make_mesh` (``Auto`` axes) from the
config's ``mesh`` section; the batch is split over the mesh axes of the first ``batch`` rule of
the config's ``sharding_rules`` (:func:`batch_axes`; :data:`ssm_jax.parallel.DEFAULT_RULES` by
default), and ``length`` goes to ``context`` (context parallelism, :mod:`ssm_jax.parallel.context`)
by the same table.
"""

from __future__ import annotations

import logging
import math
import os

import jax
import numpy as np
from jax.sharding import Mesh

from ssm_jax import parallel

__all__ = ["AXES", "batch_axes", "batch_shards", "describe", "initialize_distributed", "mesh_from_config", "resolve_mesh_shape"]

AXES = ("data", "fsdp", "tensor", "context")



def batch_axes(rules: parallel.Rules = parallel.DEFAULT_RULES) -> tuple[str, ...]:
    """The mesh axes the trainer splits the batch over: those of the first ``batch`` rule of
    ``rules`` (later ``batch`` rules are fallbacks for batches the product does not divide, which
    the trainer refuses instead); ``()`` (replicated) when the rule maps ``batch`` to None."""
    for name, axes in rules:
        if name == "batch":
            if axes is None:
                return ()
            axes = (axes,) if isinstance(axes, str) else tuple(axes)
            unknown = [a for a in axes if a not in AXES]
            if unknown:
                raise ValueError(f"sharding_rules: the batch rule names mesh axes {unknown}; the mesh has {AXES}")
            return axes
    return ()


def batch_shards(mesh: Mesh, axes: tuple[str, ...]) -> int:
    """How many pieces the batch is split into: the product of ``axes``' sizes in ``mesh``."""
    return math.prod(mesh.shape[a] for a in axes)

# Environment variables read when the flags are not given (JAX's own names where it has them).
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
) -> bool:
    """Start JAX's distributed runtime when this is one of several processes; True if started.

    Explicit arguments win, then ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
    ``JAX_PROCESS_ID``. With none of them, ``auto=True`` lets JAX detect the cluster (TPU pods,
    Slurm, Open MPI); otherwise this is a single-process run and nothing is started.
    Must run before any other JAX call.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(ENV_PROCESS_ID):
        process_id = int(os.environ[ENV_PROCESS_ID])
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError(
            "initialize_distributed: give all of coordinator_address, num_processes, process_id (flags or "
            f"{ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}); got coordinator_address="
            f"{coordinator_address!r}, num_processes={num_processes!r}, process_id={process_id!r}"
        )
    if all(given):
        if num_processes == 1:
            return False
        # CPU-only processes run their collectives over gloo, jax 0.11.2's default.
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        logging.info("jax.distributed: process %d of %d (coordinator %s)", process_id, num_processes, coordinator_address)
        return True
    if auto:
        jax.distributed.initialize()
        return True
    return False


def resolve_mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int, int]:
    """``(data, fsdp, tensor, context)`` with at most one ``-1`` filled by the devices left over.

    A ``mesh`` section without ``context`` (configs written before it existed) means ``context=1``.
    """
    sizes = [int(mesh_config[a]) if a in mesh_config else 1 for a in AXES]
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh: sizes must be positive with at most one -1; got {dict(zip(AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if num_devices % known:
            raise ValueError(f"mesh: {dict(zip(AXES, sizes))} does not divide {num_devices} devices")
        sizes[fill[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh: {dict(zip(AXES, sizes))} uses {math.prod(sizes)} devices; there are {num_devices}")
    return tuple(sizes)


def mesh_from_config(mesh_config, devices=None) -> Mesh:
    """The ``(data, fsdp, tensor, context)`` mesh of ``config.mesh`` over all devices (of all processes).

    Built by :func:`ssm_jax.parallel.make_mesh`: ``Auto`` axes, so the compiler propagates
    shardings from the parameters' and the batch's and model code needs no annotations.
    """
    devices = jax.devices() if devices is None else devices
    shape = resolve_mesh_shape(mesh_config, len(devices))
    return parallel.make_mesh(shape, AXES, devices=devices)


def describe(mesh: Mesh) -> str:
    return ", ".join(f"{a}={n}" for a, n in mesh.shape.items()) + f" over {np.asarray(mesh.devices).size} devices"
