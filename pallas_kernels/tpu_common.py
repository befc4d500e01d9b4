"""What the Mosaic TPU kernels of every family share: backend rules, interpret mode, shard_map.

* :func:`interpret_params` -- on a TPU backend the kernels compile with Mosaic; anywhere else they
  run in TPU interpret mode (``pltpu.InterpretParams``), which simulates HBM, VMEM and the grid on
  the CPU. Tests tighten it with ``pltpu.force_tpu_interpret_mode(InterpretParams(
  detect_races=True, num_cores_or_threads=2))``, which overrides the value passed here (that
  context is part of jax's jit key, so a cached trace is never reused across modes).
* :func:`over_mesh` -- Mosaic custom calls cannot be partitioned by XLA's SPMD partitioner: under
  ``jax.set_mesh(mesh)`` the kernel call is wrapped in ``jax.shard_map`` over the mesh axes that
  shard the batch and the channel/head axes (the mesh axes ``data``/``fsdp`` and ``tensor``), so each
  device runs the kernel on its own shard. The sequence axis is never split (a sequence-sharded
  scan needs the carry passed between shards; ``context`` shards are gathered by ``shard_map``).
* :func:`dtype_reason` -- the dtype rule of both families.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec as P

__all__ = [
    "BATCH_AXES",
    "CHANNEL_AXES",
    "ambient_mesh_shape",
    "backend_reason",
    "batchable",
    "dtype_reason",
    "interpret_params",
    "mesh_axes_for",
    "over_mesh",
    "spec",
    "vmem_limit_bytes",
]

# Mesh axis names of ssm_jax.parallel.DEFAULT_RULES: the batch is split over
# `data` and `fsdp`, channels (Mamba d_inner) and heads over `tensor`.
BATCH_AXES = ("data", "fsdp")
CHANNEL_AXES = ("tensor",)

# The largest scoped-VMEM request a kernel makes: below the physical VMEM of v5e (128 MiB),
# v5p (64 MiB per core) and v6e (128 MiB), with room left for Mosaic's internal scratch.
MAX_VMEM_LIMIT = 48 * 1024 * 1024
_SUPPORTED = ("float32", "bfloat16", "float16")


def backend_reason(ctx: Mapping[str, Any]) -> str | None:
    backend = ctx.get("backend") or jax.default_backend()
    if backend not in ("tpu", "cpu"):
        return f"runs on TPUs (or on the CPU backend in TPU interpret mode); backend is {backend!r}"
    return None


def dtype_reason(ctx: Mapping[str, Any], names) -> str | None:
    """float32/bfloat16/float16 everywhere; float64 only in interpret mode (CPU), for the tests'
    float64 finite differences -- a TPU has no float64 vector unit."""
    backend = ctx.get("backend") or jax.default_backend()
    allowed = _SUPPORTED + (("float64",) if backend == "cpu" else ())
    for name in names:
        v = ctx.get(name)
        if v is not None and jnp.dtype(v.dtype).name not in allowed:
            return f"`{name}` has dtype {jnp.dtype(v.dtype).name}; the kernel takes {', '.join(allowed)} on backend {backend!r}"
    return None


def interpret_params() -> pltpu.InterpretParams | bool:
    """False on TPUs (compile with Mosaic); TPU interpret mode elsewhere."""
    if jax.default_backend() == "tpu":
        return False
    return pltpu.InterpretParams()


def vmem_limit_bytes(estimate: int) -> int:
    """Scoped VMEM to request for a kernel whose blocks and scratch take ``estimate`` bytes."""
    return int(min(MAX_VMEM_LIMIT, max(16 * 1024 * 1024, 1.25 * estimate + (2 << 20))))


def mesh_axes_for(size: int, candidates, mesh_shape: Mapping[str, int], *, also_divides=()) -> tuple[str, ...]:
    """The candidate mesh axes (size > 1) whose product divides ``size`` (and ``also_divides``)."""
    chosen: list[str] = []
    total = 1
    for name in candidates:
        k = mesh_shape.get(name, 1)
        if k <= 1:
            continue
        if size % (total * k) or any(o % (total * k) for o in also_divides):
            continue
        chosen.append(name)
        total *= k
    return tuple(chosen)


def over_mesh(fn: Callable, args: Mapping[str, Any], specs: Mapping[str, Any], out_specs) -> Any:
    """``fn(**args)`` under ``jax.shard_map`` over the ambient mesh with these partition specs.

    ``specs`` maps each array argument to a ``PartitionSpec`` (None arguments are skipped);
    arguments not in ``specs`` are static and closed over.
    """
    mesh = jax.sharding.get_abstract_mesh()
    arrays = {k: v for k, v in args.items() if k in specs and v is not None}
    static = {k: v for k, v in args.items() if k not in arrays}
    in_specs = ({k: specs[k] for k in arrays},)
    body = lambda a: fn(**a, **static)  # noqa: E731
    # Manual over the axes the specs use; any other mesh axis stays automatic.
    axes = {a for s in in_specs[0].values() for part in s if part is not None
            for a in (part if isinstance(part, tuple) else (part,))}
    # check_vma=False: pallas_call outputs carry no varying-manual-axes type (jax 0.11.2 asks for
    # one on every out_shape under check_vma). Each output is per-shard data, as out_specs say.
    return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs, axis_names=axes,
                         check_vma=False)(arrays)


def ambient_mesh_shape() -> dict[str, int]:
    """Axis sizes of the mesh set with ``jax.set_mesh`` (empty when none is set), without the
    axes that are already manual (inside a caller's ``shard_map`` the arrays are shards)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return {}
    manual = jax.sharding.AxisType.Manual
    return {name: size for (name, size), kind in zip(mesh.shape.items(), mesh.axis_types) if kind != manual}


def spec(*axes) -> P:
    """A ``PartitionSpec`` from per-dimension axis tuples (empty tuple = replicated)."""
    return P(*[(a if len(a) > 1 else a[0]) if a else None for a in axes])



def batchable(call: Callable, interpret) -> Callable:
    """``call`` (a ``pallas_call``) that survives ``jax.vmap`` in interpret mode.

    Compiled for a TPU, a vmapped ``pallas_call`` gets one more grid axis, which Mosaic's lowering
    marks "parallel". jax 0.11.2's TPU interpreter does not extend ``dimension_semantics`` for it
    and fails (``safe_zip() argument 1 has length 3 but argument 0 has length 4``); in interpret
    mode the kernel is therefore vmapped as a loop over the mapped axis.
    """
    if not interpret:
        return call
    return jax.custom_batching.sequential_vmap(call)
