"""What the Mosaic GPU kernels of every family share: the device rule, dtypes, interpret mode.

* :func:`backend_reason` -- the kernels are written for Hopper (wgmma, TMA): every local GPU must
  have compute capability 9.x; on the CPU backend they run in Mosaic GPU interpret mode.
* :func:`dtype_reason` -- the dtype rule of both families (the state is float32 inside).
* :func:`interpret_params` -- ``plgpu.InterpretGPUParams()`` in interpret mode, else None.
* :data:`SMEM_LIMIT` -- the shared memory every kernel's tiling rules stay under, and
  :func:`smem_bytes`, what a kernel's declared buffers take of it.

Under a mesh the kernel calls run inside ``jax.shard_map``, as every backend's do: see
``pallas_kernels._sharding``. The TPU counterpart is ``pallas_kernels.tpu_common``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
from jax.experimental.pallas import mosaic_gpu as plgpu

__all__ = ["SMEM_LIMIT", "SUPPORTED_DTYPES", "backend_reason", "dtype_reason", "interpret_params", "smem_bytes"]

SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")
# Shared memory a kernel's buffers may take: of the 227 KiB a Hopper block may hold, the rest is
# left for barriers and Mosaic's own reductions.
SMEM_LIMIT = 220 * 1024


def smem_bytes(scratch: Mapping[str, Any] | Iterable[Any]) -> int:
    """Bytes of the shared-memory buffers among a kernel's ``scratch_types`` (a dict or a list of
    ``plgpu.SMEM`` buffers and barriers); barriers are not counted (``SMEM_LIMIT`` leaves room
    for them)."""
    buffers = scratch.values() if isinstance(scratch, Mapping) else scratch
    return sum(math.prod(b.shape) * jnp.dtype(b.dtype).itemsize for b in buffers if not isinstance(b, plgpu.Barrier))


def backend_reason(ctx: Mapping[str, Any]) -> str | None:
    """None if the kernels can run on ``ctx["backend"]`` (default: JAX's), else the reason."""
    backend = ctx.get("backend") or jax.default_backend()
    if backend == "cpu":
        return None  # Mosaic GPU interpret mode
    if backend != "gpu":
        return f"needs an NVIDIA Hopper GPU (or the CPU backend, for interpret mode); backend is {backend!r}"
    kinds = {getattr(dev, "compute_capability", None) for dev in jax.local_devices(backend="gpu")}
    if not all(k is not None and str(k).startswith("9.") for k in kinds):
        return f"the Mosaic GPU kernels are written for Hopper (compute capability 9.x); devices have {sorted(map(str, kinds))}"
    return None


def dtype_reason(ctx: Mapping[str, Any], names: Iterable[str]) -> str | None:
    """None if every named operand present in ``ctx`` is float32, bfloat16 or float16."""
    for name in names:
        v = ctx.get(name)
        if v is not None and jnp.dtype(v.dtype).name not in SUPPORTED_DTYPES:
            return (f"`{name}` has dtype {jnp.dtype(v.dtype).name}; the kernels take "
                    f"{', '.join(SUPPORTED_DTYPES)} (the state is float32 inside)")
    return None


def interpret_params(interpret: bool):
    """The ``interpret=`` argument of ``plgpu.kernel``/``pallas_call``: the interpreter or None."""
    return plgpu.InterpretGPUParams() if interpret else None
