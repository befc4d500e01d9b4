"""What the Mosaic TPU kernels of every family share: backend rules, interpret mode, vmap.

* :func:`interpret_params` -- on a TPU backend the kernels compile with Mosaic; anywhere else they
  run in TPU interpret mode (``pltpu.InterpretParams``), which simulates HBM, VMEM and the grid on
  the CPU. Tests tighten it with ``pltpu.force_tpu_interpret_mode(InterpretParams(
  detect_races=True, num_cores_or_threads=2))``, which overrides the value passed here (that
  context is part of jax's jit key, so a cached trace is never reused across modes).
* :func:`batchable` -- ``jax.vmap`` of a kernel in interpret mode, as a loop.
* :func:`present` -- a kernel's operand or result names, the optional ones only when present:
  each kernel module lists them once (``forward_operands`` etc.), in call order.
* :func:`sequence_call` -- the ``pallas_call`` of a kernel over a ``(batch, tile, sequence
  block)`` grid, as both families build theirs, taking and returning arrays by those names and
  handing the kernel its refs by name; :func:`enter_block`, how their forward kernels start each
  step of it.
* :func:`dtype_reason` -- the dtype rule of both families.
* :data:`LANES`, :data:`SUBLANES`, :func:`pad8`, :func:`pad128` -- the ``(8, 128)`` vreg tile that
  block shapes and VMEM footprints round to.

Under a mesh the kernel calls run inside ``jax.shard_map``, as every backend's do: see
``pallas_kernels._sharding``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import target

__all__ = [
    "LANES",
    "SUBLANES",
    "backend_reason",
    "batchable",
    "dtype_reason",
    "enter_block",
    "interpret_params",
    "pad8",
    "pad128",
    "present",
    "sequence_call",
    "vmem_limit_bytes",
]

# The largest scoped-VMEM request a kernel makes: below the physical VMEM of v5e (128 MiB),
# v5p (64 MiB per core) and v6e (128 MiB), with room left for Mosaic's internal scratch.
MAX_VMEM_LIMIT = 48 * 1024 * 1024
_SUPPORTED = ("float32", "bfloat16", "float16")
# A 32-bit vreg is (8 sublanes, 128 lanes); VMEM blocks are laid out in such tiles.
LANES = 128
SUBLANES = 8


def pad8(v: int) -> int:
    """``v`` rounded up to whole sublane tiles."""
    return -(-v // SUBLANES) * SUBLANES


def pad128(v: int) -> int:
    """``v`` rounded up to whole lane tiles."""
    return -(-v // LANES) * LANES


def backend_reason(ctx: Mapping[str, Any]) -> str | None:
    backend = ctx.get("backend") or target.backend()
    if backend not in ("tpu", "cpu"):
        return f"runs on TPUs (or on the CPU backend in TPU interpret mode); backend is {backend!r}"
    return None


def dtype_reason(ctx: Mapping[str, Any], names) -> str | None:
    """float32/bfloat16/float16 everywhere; float64 only in interpret mode (CPU), for the tests'
    float64 finite differences -- a TPU has no float64 vector unit."""
    backend = ctx.get("backend") or target.backend()
    allowed = _SUPPORTED + (("float64",) if backend == "cpu" else ())
    for name in names:
        v = ctx.get(name)
        if v is not None and jnp.dtype(v.dtype).name not in allowed:
            return f"`{name}` has dtype {jnp.dtype(v.dtype).name}; the kernel takes {', '.join(allowed)} on backend {backend!r}"
    return None


def interpret_params() -> pltpu.InterpretParams | bool:
    """False on TPUs (compile with Mosaic); TPU interpret mode elsewhere."""
    if target.backend() == "tpu":
        return False
    return pltpu.InterpretParams()


def vmem_limit_bytes(estimate: int) -> int:
    """Scoped VMEM to request for a kernel whose blocks and scratch take ``estimate`` bytes."""
    return int(min(MAX_VMEM_LIMIT, max(16 * 1024 * 1024, 1.25 * estimate + (2 << 20))))


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


def present(*named: tuple[str, bool]) -> tuple[str, ...]:
    """The names whose flag is set, in the order given: a kernel's operands or results in call
    order, the optional ones only when present."""
    return tuple(name for name, here in named if here)


def sequence_call(kernel: Callable, problem, *, operands: Sequence[str], results: Sequence[str],
                  specs: Mapping[str, pl.BlockSpec], shapes: Mapping[str, jax.ShapeDtypeStruct], scratch,
                  vmem_bytes: int, cost: pl.CostEstimate, name: str) -> Callable:
    """The ``pallas_call`` of ``kernel`` over a ``(batch, tile, sequence block)`` grid, by name.

    ``problem`` is the call's ``Problem``: its ``grid`` and ``interpret`` mode. ``operands`` and
    ``results`` are the kernel's input and output names in call order (the kernel module's
    ``*_operands``/``*_results``); ``specs`` maps each to its ``BlockSpec``, ``shapes`` each result
    to its ``ShapeDtypeStruct``. ``kernel(refs, *scratch_refs)`` gets its operand and result refs
    as one dict by name. The returned function takes a mapping holding exactly the ``operands``
    and returns a dict of the ``results``.

    The batch and tile axes are "parallel"; the sequence axis is "arbitrary" (it carries the state
    in VMEM scratch from block to block). ``vmem_bytes`` is the blocks' and scratch's footprint
    (:func:`vmem_limit_bytes`). The call survives ``jax.vmap`` in interpret mode (:func:`batchable`).
    """
    operands, results = tuple(operands), tuple(results)
    names = operands + results

    def body(*refs):
        kernel(dict(zip(names, refs)), *refs[len(names):])

    call = pl.pallas_call(
        body,
        grid=problem.grid,
        in_specs=[specs[k] for k in operands],
        out_specs=[specs[k] for k in results],
        out_shape=[shapes[k] for k in results],
        scratch_shapes=scratch,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary"),
            vmem_limit_bytes=vmem_limit_bytes(vmem_bytes),
        ),
        cost_estimate=cost,
        interpret=problem.interpret,
        name=name,
    )
    call = batchable(call, problem.interpret)

    def run(values: Mapping[str, Any]) -> dict[str, Any]:
        if set(values) != set(operands):
            raise ValueError(f"{name}: takes {operands}; got {tuple(values)}")
        return dict(zip(results, call(*(values[k] for k in operands))))

    return run


def enter_block(state_scr, initial_ref, step, dtype, saved_ref=None) -> None:
    """The start of a forward kernel's grid step on the sequence axis (inside the kernel).

    At the first sequence block (``step == 0``) the state scratch ``state_scr`` takes the initial
    state ``initial_ref`` (zeros when None) in ``dtype``; later blocks find the state the previous
    one left. With ``saved_ref`` the state entering this block is stored there: the backward
    restarts each block from it.
    """

    @pl.when(step == 0)
    def _():
        state_scr[...] = initial_ref[...].astype(dtype) if initial_ref is not None else jnp.zeros(state_scr.shape, dtype)

    if saved_ref is not None:
        saved_ref[...] = state_scr[...]
