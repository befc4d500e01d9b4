"""Pallas kernels under ``jax.shard_map`` on every backend: which mesh axes split which argument.

XLA's SPMD partitioner cannot split a Mosaic custom call (GPU or TPU): left alone under a mesh,
it gathers every operand onto every device and runs the whole batch there. Each kernel family's
api therefore calls :func:`over_mesh`, which runs the kernel inside ``jax.shard_map`` over the
mesh axes that split its batch (and its channel or head axis, where the op allows), so that every
device runs the kernel, forward and backward, on its own shard, with no all-gather of activations.
The length axis is never split (a sequence-sharded scan needs the carry passed between shards).

Which mesh axes split a dimension (:func:`split_axes`), for each axis of the ambient mesh
(``jax.set_mesh``, or the mesh in the arguments' types):

* **Manual** axes (inside a caller's ``shard_map``, e.g. a context-parallel wrapper) are left
  alone: the arrays are already shards along them.
* **Explicit** axes (sharding in types): the axes the reference argument's type puts on that
  dimension (``jax.typeof(x).sharding``). Other arguments are resharded to match first.
* **Auto** axes: the types say nothing inside ``jax.jit``, so the axes come from the rules table
  set with ``ssm_jax.parallel.use_rules`` (which enters :func:`use_rules` here) -- the
  ``(logical_name, mesh_axes)`` table of ``ssm_jax.parallel`` (read for ``batch``, ``inner`` and ``heads``: the
  first rule whose axes are Auto axes of the mesh and divide the dimension wins). Without a table
  the batch is split over every Auto axis (in mesh order) that divides it and the channels are
  not split: plain data parallelism, whatever the axes are called.

The kernel layer knows no mesh axis names; the caller's rules table (or the inputs' types) does.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

__all__ = [
    "current_rules",
    "mesh_axes_for",
    "over_mesh",
    "run",
    "selective_scan_specs",
    "spec",
    "split_axes",
    "ssd_specs",
    "use_rules",
]

MeshAxes = str | tuple[str, ...] | None

_RULES: contextvars.ContextVar[tuple[tuple[str, MeshAxes], ...] | None] = contextvars.ContextVar(
    "pallas_kernels_sharding_rules", default=None
)


@contextlib.contextmanager
def use_rules(rules: Sequence[tuple[str, MeshAxes]] | None) -> Iterator[None]:
    """Kernels traced in this context split their Auto mesh axes by ``rules``.

    ``rules`` is a logical-axis table ``[(logical_name, mesh_axes), ...]`` (``mesh_axes`` a name,
    a tuple of names or None), already validated by its owner: ``ssm_jax.parallel.use_rules``
    checks it and enters this context with it. None restores the default (batch over every Auto
    axis). The table is read when a kernel call is traced, so the context must be active around
    ``jax.jit``'s tracing (the first call, or ``.lower``).
    """
    token = _RULES.set(None if rules is None else tuple((name, axes) for name, axes in rules))
    try:
        yield
    finally:
        _RULES.reset(token)


def current_rules() -> tuple[tuple[str, MeshAxes], ...] | None:
    """The table set by the innermost :func:`use_rules`, or None."""
    return _RULES.get()


def mesh_axes_for(size: int, candidates, mesh_shape: Mapping[str, int], *, also_divides=()) -> tuple[str, ...]:
    """The candidate mesh axes (size > 1) whose running product divides ``size`` (and ``also_divides``)."""
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


def _mesh_of(ref) -> Any:
    """The ambient abstract mesh, else the mesh of ``ref``'s type (Explicit arrays outside
    ``jax.set_mesh``), else None."""
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        return mesh
    sharding = getattr(jax.typeof(ref), "sharding", None) if ref is not None else None
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty:
        return None
    return getattr(mesh, "abstract_mesh", mesh)


def _axis_kinds(mesh) -> dict[str, tuple[int, AxisType]]:
    return {name: (size, kind) for (name, size), kind in zip(mesh.shape.items(), mesh.axis_types)}


def _dim_axes(ref, dim: int) -> tuple[str, ...]:
    """The mesh axes ``ref``'s type puts on dimension ``dim`` (Explicit axes only appear there)."""
    sharding = getattr(jax.typeof(ref), "sharding", None)
    spec_ = getattr(sharding, "spec", None)
    if spec_ is None or dim >= len(spec_) or spec_[dim] is None:
        return ()
    part = spec_[dim]
    return tuple(part) if isinstance(part, tuple) else (part,)


def _rule_candidates(name: str, rules) -> list[tuple[str, ...]]:
    out = []
    for rule_name, axes in rules:
        if rule_name != name:
            continue
        if axes is None:
            break  # explicitly replicated
        out.append((axes,) if isinstance(axes, str) else tuple(axes))
    return out


def _product(axes, sizes) -> int:
    total = 1
    for a in axes:
        total *= sizes[a]
    return total


def split_axes(ref, dims: Mapping[str, tuple[int, int]], *, also_divides: Mapping[str, Sequence[int]] | None = None
               ) -> dict[str, tuple[str, ...]] | None:
    """Mesh axes splitting each named dimension of the reference argument ``ref``.

    ``dims`` maps a logical name (``"batch"``, ``"inner"``, ``"heads"``) to ``(dimension of ref,
    its size)``; ``also_divides[name]`` lists sizes the axes' product must divide too (the groups
    of ``B``/``C``, so that each device holds whole groups). Returns ``{name: axes}`` (every
    name present; an empty tuple where nothing splits it), or None when there is no mesh or no
    axis splits anything -- the caller then runs the kernel as it is.
    """
    mesh = _mesh_of(ref)
    if mesh is None:
        return None
    kinds = _axis_kinds(mesh)
    auto = {a: s for a, (s, k) in kinds.items() if k == AxisType.Auto and s > 1}
    explicit = {a: s for a, (s, k) in kinds.items() if k == AxisType.Explicit and s > 1}
    rules = current_rules()
    also_divides = also_divides or {}
    used: set[str] = set()
    out: dict[str, tuple[str, ...]] = {}
    for name, (dim, size) in dims.items():
        extra = tuple(also_divides.get(name, ()))
        # Explicit axes: as the type says (kept while they divide the groups too).
        typed = tuple(a for a in _dim_axes(ref, dim) if a in explicit and a not in used)
        chosen = mesh_axes_for(size, typed, explicit, also_divides=extra)
        k = _product(chosen, explicit)
        rest, rest_extra = size // k, tuple(o // k for o in extra)
        free = {a: s for a, s in auto.items() if a not in used}
        if rules is None:
            # The default: data parallelism over every Auto axis that divides the batch.
            if name == "batch":
                chosen += mesh_axes_for(rest, tuple(free), free, also_divides=rest_extra)
        else:
            for cand in _rule_candidates(name, rules):
                axes = tuple(a for a in cand if a in free)
                m = _product(axes, free)
                if axes and rest % m == 0 and all(o % m == 0 for o in rest_extra):
                    chosen += axes
                    break
        used.update(chosen)
        out[name] = chosen
    if not any(out.values()):
        return None
    return out


def spec(*axes) -> P:
    """A ``PartitionSpec`` from per-dimension axis tuples (empty tuple = not split)."""
    return P(*[(a if len(a) > 1 else a[0]) if a else None for a in axes])


def _explicit_part(s: P, explicit: set[str], ndim: int) -> P:
    parts = []
    for part in tuple(s) + (None,) * (ndim - len(s)):
        tup = () if part is None else (part if isinstance(part, tuple) else (part,))
        parts.append(tuple(a for a in tup if a in explicit))
    return spec(*parts)


def _conform(v, s: P, explicit: set[str]):
    """``v`` resharded so that its Explicit axes are those of ``s`` (shard_map insists)."""
    if not explicit:
        return v
    want = _explicit_part(s, explicit, v.ndim)
    have = _explicit_part(getattr(jax.typeof(v).sharding, "spec", P()), explicit, v.ndim)
    if tuple(want) == tuple(have):
        return v
    return jax.sharding.reshard(v, want)


def over_mesh(fn: Callable, args: Mapping[str, Any], specs: Mapping[str, P], out_specs) -> Any:
    """``fn(**args)`` under ``jax.shard_map`` with these partition specs.

    ``specs`` maps each array argument to a ``PartitionSpec`` (None arguments are skipped);
    arguments not in ``specs`` are static and closed over. The shard_map is manual over every
    axis of the mesh that is not manual already (an axis a spec does not name is replicated:
    each device runs the kernel on the whole of that dimension), so the kernel never sees an
    Auto or Explicit axis inside.
    """
    arrays = {k: v for k, v in args.items() if k in specs and v is not None}
    static = {k: v for k, v in args.items() if k not in arrays}
    mesh = _mesh_of(next(iter(arrays.values())))
    kinds = _axis_kinds(mesh)
    explicit = {a for a, (_, k) in kinds.items() if k == AxisType.Explicit}
    free = frozenset(a for a, (_, k) in kinds.items() if k != AxisType.Manual)
    arrays = {k: _conform(v, specs[k], explicit) for k, v in arrays.items()}
    in_specs = ({k: specs[k] for k in arrays},)
    body = lambda a: fn(**a, **static)  # noqa: E731
    # check_vma=False: pallas_call outputs carry no varying-manual-axes type (jax 0.11.2 asks for
    # one on every out_shape under check_vma). Each output is per-shard data, as out_specs say;
    # the transpose sums the cotangents of arguments a spec leaves unsplit (A, D, dt_bias).
    return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs, axis_names=free,
                         check_vma=False)(arrays)


def run(fn: Callable, args: Mapping[str, Any], static: Mapping[str, Any], specs: Mapping[str, P] | None):
    """``fn(**args, **static)`` -> ``(y, final_state)``: on each device's shard under
    :func:`over_mesh` when ``specs`` (a family's ``*_specs``) splits anything, else as it is. ``y``
    is laid out as ``x`` and ``final_state`` as ``initial_state``."""
    if specs is None:
        return fn(**args, **static)
    out_specs = (specs["x"], specs["initial_state"] if static["return_final_state"] else None)
    return over_mesh(fn, {**args, **static}, specs, out_specs)


# --------------------------------------------------------------------------------------------
# The argument layouts of the kernel families (the same for their GPU and TPU kernels)
# --------------------------------------------------------------------------------------------


def _batch_and_channel_axes(x, B, channel: str):
    """Mesh axes of ``x``'s batch (dim 0) and channel/head axis (dim 2, logical name ``channel``),
    and those of ``B``/``C``'s group axis: the channel axes when there are several groups (each
    device then holds whole groups), none for one shared group. None when nothing splits."""
    g = B.shape[-2]
    axes = split_axes(x, {"batch": (0, x.shape[0]), channel: (2, x.shape[2])},
                      also_divides={channel: (g,) if g > 1 else ()})
    if axes is None:
        return None
    return axes["batch"], axes[channel], axes[channel] if g > 1 else ()


def selective_scan_specs(x, B) -> dict[str, P] | None:
    """Specs of the canonical selective-scan arguments: batch split, channels (``inner``) split
    when whole groups of ``B``/``C`` land on each device; None when nothing splits."""
    axes = _batch_and_channel_axes(x, B, "inner")
    if axes is None:
        return None
    ba, ca, ga = axes
    seq = spec(ba, (), ca)
    bc = spec(ba, (), ga, ())
    return dict(x=seq, dt=seq, z=seq, A=spec(ca, ()), D=spec(ca), dt_bias=spec(ca), B=bc, C=bc,
                initial_state=spec(ba, ca, ()), segment_ids=spec(ba, ()))


def ssd_specs(x, B) -> dict[str, P] | None:
    """Specs of the canonical SSD arguments: batch split, heads split when whole groups of
    ``B``/``C`` land on each device; None when nothing splits."""
    axes = _batch_and_channel_axes(x, B, "heads")
    if axes is None:
        return None
    ba, ha, ga = axes
    seq = spec(ba, (), ha, ())
    bc = spec(ba, (), ga, ())
    return dict(x=seq, z=seq, dt=spec(ba, (), ha), A=spec(ha), dt_bias=spec(ha), D=spec(ha, ()), B=bc, C=bc,
                initial_state=spec(ba, ha, (), ()), segment_ids=spec(ba, ()))
