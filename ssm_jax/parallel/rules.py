"""Logical axis names -> mesh axes: ``PartitionSpec`` / ``NamedSharding`` trees for a model state.

Parameters carry logical names in their ``out_sharding`` metadata (:func:`ssm_jax.nn.param`). A
rules table ``[(logical_name, mesh_axes), ...]`` maps them to mesh axes, where ``mesh_axes`` is a
mesh axis name, a tuple of names (sharded over their product) or ``None`` (replicated). For each
dimension the first rule for its name is used whose mesh axes are (a) not already used by another
dimension of the same array and, when a mesh is known, (b) present in the mesh and (c) of a total
size dividing the dimension; otherwise that dimension is replicated. Names with no rule are
replicated.

The trainer's sequence (big_vision's): shapes with :func:`abstract_state` (``nnx.eval_shape``),
shardings with :func:`logical_to_sharding`, then :func:`init_sharded` creates the parameters
directly on the devices with ``jax.jit(..., out_shardings=...)``.

:func:`use_rules` makes a table the one the ops read under a mesh (:func:`context_axis`: which axis
splits ``length``; the Pallas kernels' shard_map: which axes split batch and heads).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DEFAULT_RULES",
    "Rules",
    "abstract_state",
    "active_rules",
    "context_axis",
    "init_sharded",
    "logical_spec",
    "logical_to_mesh",
    "logical_to_sharding",
    "make_mesh",
    "use_rules",
]

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]

# The mesh axes ssm_jax uses: data (pure data parallel), fsdp (data parallel with sharded weights),
# tensor (Megatron-style model parallel), context (sequence parallel).
DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    ("batch", "data"),
    ("length", "context"),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("inner", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("state", None),
    ("conv", None),
    ("kv", None),
    ("layers", None),
)


def make_mesh(axis_sizes: Sequence[int], axis_names: Sequence[str], *, devices=None) -> Mesh:
    """``jax.make_mesh`` with ``AxisType.Auto`` axes: shardings propagate through the model (GSPMD).

    jax 0.11's ``jax.make_mesh`` defaults to ``Explicit`` axes (sharding in types), under which
    every op with an ambiguous output sharding (a gather from a vocab-sharded table, a matmul
    over an fsdp-sharded contraction) must be annotated; the models here are not, so build
    their meshes with this function (or pass ``axis_types=(AxisType.Auto,) * n`` yourself).
    """
    axis_types = (jax.sharding.AxisType.Auto,) * len(axis_names)
    return jax.make_mesh(tuple(axis_sizes), tuple(axis_names), axis_types=axis_types, devices=devices)


def _check_rules(rules: Rules) -> tuple[tuple[str, MeshAxes], ...]:
    out = []
    for i, rule in enumerate(rules):
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
            raise ValueError(f"logical_to_mesh: `rules[{i}]` must be (logical_name, mesh_axes); got {rule!r}")
        name, axes = rule
        if isinstance(axes, list):
            axes = tuple(axes)
        if not (axes is None or isinstance(axes, str) or (isinstance(axes, tuple) and all(isinstance(a, str) for a in axes))):
            raise ValueError(f"logical_to_mesh: mesh axes of rule {name!r} must be a name, a tuple of names or None; got {axes!r}")
        out.append((name, axes))
    return tuple(out)


def logical_spec(
    names: Sequence[str | None],
    rules: Rules = DEFAULT_RULES,
    *,
    mesh: Mesh | None = None,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """The ``PartitionSpec`` of an array whose dimensions have logical ``names``.

    With ``mesh`` (and ``shape``), mesh axes absent from the mesh or not dividing the dimension
    are skipped, so the result is always a valid sharding for that mesh.
    """
    rules = _check_rules(rules)
    if shape is not None and len(shape) != len(names):
        raise ValueError(f"logical_spec: `names` {tuple(names)} and `shape` {tuple(shape)} differ in rank")
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for dim, name in enumerate(names):
        chosen: MeshAxes = None
        for rule_name, axes in rules:
            if name is None or rule_name != name:
                continue
            if axes is None:
                break  # explicitly replicated
            tup = (axes,) if isinstance(axes, str) else axes
            if any(a in used for a in tup):
                continue
            if mesh is not None:
                if any(a not in mesh.shape for a in tup):
                    continue
                size = 1
                for a in tup:
                    size *= mesh.shape[a]
                if shape is not None and shape[dim] % size:
                    continue
            chosen = axes
            used.update(tup)
            break
        spec.append(chosen)
    return PartitionSpec(*spec)


def _logical_names(x: nnx.Variable) -> tuple | None:
    names = x.get_metadata().get("out_sharding")
    return tuple(names) if names else None


def _state_of(tree: Any) -> Any:
    return nnx.state(tree) if isinstance(tree, nnx.Module) else tree


def logical_to_mesh(tree: Any, rules: Rules = DEFAULT_RULES, *, mesh: Mesh | None = None) -> Any:
    """``PartitionSpec`` for every Variable of a model or state (abstract or concrete).

    Returns the structure of ``nnx.get_partition_spec``: the same tree with each Variable's value
    replaced by its ``PartitionSpec`` (``P()`` for Variables without logical names, e.g. RNG
    state), usable as ``out_shardings``/``in_shardings`` for the matching ``nnx.State``.
    """
    state = _state_of(tree)

    def spec(x):
        if isinstance(x, nnx.Variable):
            names = _logical_names(x)
            value = x.get_value()
            shape = getattr(value, "shape", None)
            if names is None:
                return x.replace(PartitionSpec())
            return x.replace(logical_spec(names, rules, mesh=mesh, shape=shape))
        return PartitionSpec()

    return jax.tree.map(spec, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def logical_to_sharding(tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """Like :func:`logical_to_mesh`, with ``NamedSharding(mesh, spec)`` leaves."""
    specs = logical_to_mesh(tree, rules, mesh=mesh)
    return jax.tree.map(lambda p: NamedSharding(mesh, p), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def abstract_state(model_fn: Callable[[], nnx.Module]) -> tuple[nnx.GraphDef, nnx.State]:
    """``(graphdef, state)`` of ``model_fn()`` with ``jax.ShapeDtypeStruct`` values (no FLOPs, no memory)."""
    return nnx.split(nnx.eval_shape(model_fn))


def init_sharded(model_fn: Callable[[], nnx.Module], mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.Module:
    """Build ``model_fn()`` with every parameter created directly in its sharded layout on ``mesh``."""
    graphdef, abstract = abstract_state(model_fn)
    shardings = logical_to_sharding(abstract, mesh, rules)

    def init():
        return nnx.split(model_fn())[1]

    state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


# The table the ops read under a mesh: the trainer enters its own; the default otherwise.
_RULES: list[Rules] = [DEFAULT_RULES]


@contextlib.contextmanager
def use_rules(rules: Rules) -> Iterator[None]:
    """Make ``rules`` the table the ops read under a mesh (the trainer enters it with its mesh):
    :func:`context_axis` (which mesh axis splits ``length``) and the Pallas kernels' shard_map
    (which Auto mesh axes split ``batch`` and ``inner``/``heads``: ``pallas_kernels._sharding``,
    handed the same validated table, since the kernel layer does not import ``ssm_jax``)."""
    from pallas_kernels import _sharding  # a small JAX-only module: no kernel is imported

    checked = _check_rules(rules)  # the same validation and list -> tuple as logical_to_mesh
    _RULES.append(checked)
    try:
        with _sharding.use_rules(checked):
            yield
    finally:
        _RULES.pop()


def active_rules() -> Rules:
    return _RULES[-1]


def context_axis(rules: Rules | None = None) -> str | None:
    """The mesh axis ``length`` is split over: the first rule for ``length`` whose (single) mesh
    axis is in the ambient mesh (``jax.set_mesh``), not already manual, with size > 1; else None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    types = dict(zip(mesh.axis_names, mesh.axis_types))
    for name, axes in active_rules() if rules is None else rules:
        if name != "length":
            continue
        if axes is None:
            return None
        tup = (axes,) if isinstance(axes, str) else tuple(axes)
        if any(a not in mesh.shape for a in tup):
            continue
        if len(tup) != 1:
            raise ValueError(f"context parallelism: `length` must map to one mesh axis; the rules give {axes!r}")
        (a,) = tup
        if types[a] == jax.sharding.AxisType.Manual or mesh.shape[a] <= 1:
            return None
        return a
    return None
