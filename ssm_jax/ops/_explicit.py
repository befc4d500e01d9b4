"""What the reference implementations do under meshes with ``AxisType.Explicit`` axes.

Under an Explicit axis an array's sharding is part of its type, and JAX refuses what it cannot
type rather than guessing:

* a scan's initial state made with ``jnp.zeros`` is replicated, while the body, fed batch-sharded
  inputs, returns a batch-sharded state ("carry input and carry output must have equal types").
  :func:`scan` traces the body once (abstractly) to learn the carry's output types and reshards
  the initial carry to them first;
* splitting a sharded channel axis into (groups, channels per group) or (heads, head dim) is a
  reshape whose output sharding JAX will not infer. :func:`batch_only` reshards the arguments of
  an op so that only their batch axis stays split (channel/head shardings are gathered); the
  op's output then comes back batch-sharded, and the gradients flow back to the inputs' own
  shardings through the reshard. The Pallas kernels do not need it: they run under
  ``jax.shard_map`` with heads/channels split (``pallas_kernels._sharding``).

Without Explicit axes both are no-ops (``lax.scan`` itself; the arguments unchanged).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

__all__ = ["BATCHED", "batch_only", "batch_zeros", "call", "explicit_mesh", "gather_rows", "like", "reshape", "scan"]

# The canonical arguments of the scan ops (selective_scan, ssd, hydra) with a leading batch axis:
# the only axis a reference keeps split under an Explicit mesh.
BATCHED = ("x", "dt", "z", "B", "C", "initial_state", "segment_ids")


def explicit_mesh() -> bool:
    """Whether the ambient (abstract) mesh has an Explicit axis."""
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and any(t == AxisType.Explicit for t in mesh.axis_types)


def _spec(v) -> Any:
    sharding = getattr(jax.typeof(v), "sharding", None) if isinstance(v, jax.Array) else getattr(v, "sharding", None)
    return getattr(sharding, "spec", None)


def scan(body: Callable, init: Any, xs: Any = None, *, length: int | None = None, reverse: bool = False,
         unroll: int | bool = 1) -> tuple[Any, Any]:
    """:func:`jax.lax.scan` with the initial carry resharded to the body's carry output types."""
    if explicit_mesh():
        first = jax.tree.map(lambda a: a[-1] if reverse else a[0], xs)
        for _ in range(2):  # the body's output may depend on the carry's own sharding: twice settles it
            out = jax.eval_shape(lambda c, x: body(c, x)[0], init, first)
            want = jax.tree.map(_spec, out)
            if jax.tree.map(_spec, init) == want:
                break
            init = jax.tree.map(lambda c, s: c if s is None or _spec(c) == s else jax.sharding.reshard(c, s), init, want)
    return lax.scan(body, init, xs, length=length, reverse=reverse, unroll=unroll)


def _names(part) -> tuple[str, ...]:
    return () if part is None else (part if isinstance(part, tuple) else (part,))


def batch_only(args: dict[str, Any], batched: tuple[str, ...]) -> dict[str, Any]:
    """``args`` with every array resharded so that only dimension 0 of the ``batched`` ones stays
    split over Explicit axes (other dimensions, and every dimension of the rest, replicated)."""
    if not explicit_mesh():
        return args
    out = dict(args)
    for name, v in args.items():
        spec = _spec(v) if isinstance(v, jax.Array) else None
        if spec is None or not any(_names(part) for part in spec):
            continue
        lead = spec[0] if name in batched and len(spec) else None
        if any(_names(part) for part in tuple(spec)[1:]) or (lead is None and _names(spec[0])):
            out[name] = jax.sharding.reshard(v, P(lead))
    return out


def call(impl, fn: Callable, args: dict[str, Any], *, outputs: tuple[str, ...] = ("x", "initial_state")) -> Any:
    """``fn(**args)``, an op's resolved implementation (``impl``, its registry entry), under the
    ambient mesh.

    An implementation that splits its arguments itself (``impl.manual_sharding``: the Pallas
    kernels, under ``jax.shard_map``) gets them as they are; a reference gets them split on the
    batch axis only (:func:`batch_only`). Each output comes back laid out as the argument that
    ``outputs`` names for it (:func:`like`): ``(y, final_state)`` as ``(x, initial_state)``, or
    one output for one name.
    """
    out = fn(**(args if impl.manual_sharding else batch_only(args, BATCHED)))
    if len(outputs) == 1:
        return like(out, args[outputs[0]])
    return tuple(like(o, args.get(ref)) for o, ref in zip(out, outputs))


def reshape(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``x.reshape(shape)`` for an ``x`` split on dimension 0 at most (after :func:`batch_only`),
    keeping dimension 0 (same size) split: JAX does not infer the output sharding of a reshape
    that splits or merges several dimensions at once under an Explicit mesh."""
    if not explicit_mesh():
        return x.reshape(shape)
    spec = _spec(x)
    lead = spec[0] if spec is not None and len(spec) and shape[:1] == x.shape[:1] else None
    return jax.lax.reshape(x, tuple(shape), out_sharding=P(lead))


def like(y: jax.Array | None, ref: Any) -> jax.Array | None:
    """``y`` resharded to ``ref``'s sharding (same shape) under an Explicit mesh: an op's output
    keeps its input's sharding after :func:`batch_only` (a local slice, no communication)."""
    if y is None or ref is None or not explicit_mesh():
        return y
    want = _spec(ref)
    return y if want is None or _spec(y) == want else jax.sharding.reshard(y, want)


def batch_zeros(shape: tuple[int, ...], dtype, ref: jax.Array) -> jax.Array:
    """Zeros of ``shape`` whose dimension 0 (the batch) is split as ``ref``'s is: an initial state
    that enters a ``custom_vjp`` must have the type its cotangent will have."""
    zeros = jnp.zeros(shape, dtype)
    if not explicit_mesh():
        return zeros
    spec = _spec(ref)
    lead = spec[0] if spec is not None and len(spec) else None
    return zeros if lead is None else jax.sharding.reshard(zeros, P(lead))


def gather_rows(table: jax.Array, ids: jax.Array, *, fill_value) -> jax.Array:
    """``table[ids]`` (rows; out-of-range ids give ``fill_value``), split like ``ids`` under an
    Explicit mesh, where JAX asks the gather's output sharding to be named."""
    if not explicit_mesh():
        return jnp.take(table, ids, axis=0, mode="fill", fill_value=fill_value)
    spec = tuple(_spec(ids) or ()) + (None,) * (ids.ndim - len(_spec(ids) or ()))
    return table.at[ids].get(mode="fill", fill_value=fill_value, out_sharding=P(*spec, None))
