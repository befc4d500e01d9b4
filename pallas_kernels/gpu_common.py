"""What the Mosaic GPU kernels of every family share: the device rule, dtypes, interpret mode.

* :func:`backend_reason` -- the kernels are written for Hopper (wgmma, TMA): every local GPU must
  have compute capability 9.x; on the CPU backend they run in Mosaic GPU interpret mode.
* :func:`dtype_reason` -- the dtype rule of both families (the state is float32 inside).
* :func:`interpret_params` -- ``plgpu.InterpretGPUParams()`` in interpret mode, else None.
* :data:`SMEM_LIMIT` -- the shared memory every kernel's tiling rules stay under, and
  :func:`smem_bytes`, what a kernel's declared buffers take of it.
* :func:`backward_by_state_slices` -- a backward kernel run once per slice of a state too large
  for it, the slices' cotangents summed or set side by side.

Under a mesh the kernel calls run inside ``jax.shard_map``, as every backend's do: see
``pallas_kernels._sharding``. The TPU counterpart is ``pallas_kernels.tpu_common``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import target

__all__ = ["SMEM_LIMIT", "SUPPORTED_DTYPES", "backend_reason", "backward_by_state_slices", "dtype_reason",
           "interpret_params", "smem_bytes"]

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
    """None if the kernels can run on ``ctx["backend"]`` (default: :func:`target.backend`), else the
    reason."""
    backend = ctx.get("backend") or target.backend()
    if backend == "cpu":
        return None  # Mosaic GPU interpret mode
    if backend != "gpu":
        return f"needs an NVIDIA Hopper GPU (or the CPU backend, for interpret mode); backend is {backend!r}"
    if target.lowering_only():
        return None  # built for a GPU this process has none of: lowered, not run; Hopper assumed
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


def backward_by_state_slices(backward: Callable[[int, Callable], Mapping[str, Any]], how: Mapping[str, str], *,
                             n: int, slice_n: int, n_valid: int | None = None) -> dict:
    """A backward kernel once per slice of ``slice_n`` of the ``n`` state channels, the slices'
    cotangents combined.

    For states too large for one backward kernel. Each state channel evolves on its own (the
    decay is per channel or per head), and the output is a sum over the state, so a gradient of
    an operand shared by every state (x, dt, z, ...) is the sum of the slices' gradients, while
    that of a per-state operand (B, C, the initial state, ...) is the slices' side by side.

    ``backward(k, cut)`` runs the backward on slice ``k`` of ``n // slice_n``, where ``cut(v)`` is
    ``v[..., k * slice_n:(k + 1) * slice_n]`` (None stays None), and returns the slice's
    cotangents by name. ``how`` names the cotangents returned, in the order they are combined,
    and how: ``"sum"`` (added in float32, returned in the slices' dtype), ``"concat"`` (along the
    last axis, then the first ``n_valid`` states kept when given) or ``"first"`` (slice 0's: for
    an operand given to the first slice only, like D, so that it counts once, or one whose
    cotangent every slice gives alike). A None cotangent stays None.
    """
    if n % slice_n:
        raise ValueError(f"backward_by_state_slices: n={n} is not a multiple of the slice {slice_n}")
    parts = []
    for k in range(n // slice_n):
        cut = lambda v: None if v is None else v[..., k * slice_n:(k + 1) * slice_n]  # noqa: E731,B023
        parts.append(backward(k, cut))
    out = {}
    for name, rule in how.items():
        vs = [part[name] for part in parts]
        if vs[0] is None or rule == "first":
            out[name] = vs[0]
        elif rule == "sum":
            out[name] = sum(v.astype(jnp.float32) for v in vs).astype(vs[0].dtype)
        elif rule == "concat":
            v = jnp.concatenate(vs, axis=-1)
            out[name] = v if n_valid is None else v[..., :n_valid]
        else:
            raise ValueError(f"backward_by_state_slices: unknown rule {rule!r} for {name!r}")
    return out
