"""The blocks of a model, run as a Python loop or as one ``jax.lax.scan`` (``scan_layers``).

XLA compiles the body of a loop once, while a Python loop over the blocks unrolls into one copy
per layer (Pallas kernels included), so compile time grows with depth. Scanned, it does not.

Parameter layouts (``model.layers``, an ``nnx.List`` either way):

=============== ================================= ==========================================
                unscanned                         scanned (``p = layer_period``, ``r = n // p``)
=============== ================================= ==========================================
entries         ``n_layers`` blocks               ``p`` blocks, every variable with a leading
                                                  axis of ``r`` (logical name ``layers``)
layer ``i``     ``layers[i]``                     ``layers[i % p]`` at index ``i // p``
path            ``("layers", i, "mixer", ...)``   ``("layers", i % p, "mixer", ...)``
=============== ================================= ==========================================

A scanned model is built from the per-layer initialization of the unscanned one (the blocks are
created one by one, then stacked), so for one seed both hold the same weights and compute the
same values. :func:`stack_layers` / :func:`unstack_layers` convert a state (an Orbax checkpoint,
a converted PyTorch state dict) between the layouts; :func:`with_scan_layers` converts a model.

Decoding caches follow the layout: one cache per layer unscanned, ``p`` caches with a leading
axis of ``r`` scanned.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections import defaultdict
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm_jax.models.config import REMAT_POLICIES

__all__ = ["make_layers", "run_layers", "stack_layers", "stacked_init_cache", "unstack_layers", "with_scan_layers"]

log = logging.getLogger(__name__)

def _real_only(policy, name: str):
    """``policy``, but never saving a complex product. jax 0.11.2's remat puts a
    ``reduce_precision`` on every saved residual, which refuses complex dtypes: S4's discretization
    (complex matmuls of ``(h, 2n, 2n)`` matrices, on the packed-sequence path) failed under
    ``remat="dots"``. Those products are small and recomputed instead."""

    def saveable(prim, *avals, **params):
        if any(jnp.issubdtype(getattr(a, "dtype", jnp.float32), jnp.complexfloating) for a in avals):
            return False
        return policy(prim, *avals, **params)

    saveable.__qualname__ = saveable.__name__ = name  # what a jaxpr prints for the policy
    return saveable


# config.remat -> jax.checkpoint policy (what the backward keeps of a block's forward).
_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": _real_only(jax.checkpoint_policies.checkpoint_dots, "real_dots_saveable"),
    "dots_no_batch": _real_only(jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                                "real_dots_with_no_batch_dims_saveable"),
}
assert set(REMAT_POLICIES) == {"none", *_POLICIES}

AXIS = "layers"  # logical axis name of the stacked dimension (replicated by the default rules)


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def _stack_values(values: Sequence[Any]) -> Any:
    first = values[0]
    if isinstance(first, jax.ShapeDtypeStruct):  # an abstract state (nnx.eval_shape)
        return jax.ShapeDtypeStruct((len(values), *first.shape), first.dtype)
    return np.stack(values) if all(isinstance(x, np.ndarray) for x in values) else jnp.stack(values)


def _slice(value: Any, k: int) -> Any:
    if isinstance(value, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(value.shape[1:], value.dtype)
    return value[k]


def _stack_leaf(leaves: Sequence[Any]) -> Any:
    """One variable (or array) with a leading axis over ``leaves``; logical name ``layers`` prepended."""
    first = leaves[0]
    if not _is_var(first):
        return _stack_values(leaves)
    value = _stack_values([v.get_value() for v in leaves])
    names = first.get_metadata().get("out_sharding")
    return first.replace(value, **({"out_sharding": (AXIS, *names)} if names else {}))


def _unstack_leaf(leaf: Any, r: int, path) -> list[Any]:
    value = leaf.get_value() if _is_var(leaf) else leaf
    if getattr(value, "ndim", 0) < 1 or value.shape[0] != r:
        raise ValueError(f"unstack_layers: `{'/'.join(map(str, path))}` has shape {getattr(value, 'shape', None)}; "
                         f"expected a leading layers axis of {r}")
    if not _is_var(leaf):
        return [_slice(value, k) for k in range(r)]
    names = leaf.get_metadata().get("out_sharding")
    kw = {}
    if names:
        if names[0] != AXIS:
            raise ValueError(f"unstack_layers: `{'/'.join(map(str, path))}` has logical axes {tuple(names)}; "
                             f"expected {AXIS!r} first (a stacked variable)")
        kw = {"out_sharding": tuple(names[1:])}
    return [leaf.replace(_slice(value, k), **kw) for k in range(r)]


@functools.cache
def _say_no_period(mixers: tuple[str, ...]) -> None:
    log.warning("scan_layers=True, but layer_mixers %s does not repeat (layer_period = n_layers): the scan runs "
                "once over all %d blocks, each compiled on its own, as without scan_layers", mixers, len(mixers))


def make_layers(config, make_block: Callable[[str], nnx.Module]) -> nnx.List:
    """``model.layers`` for ``config``: ``make_block(kind)`` for every layer, stacked when scanned."""
    blocks = [make_block(kind) for kind in config.mixers]
    if not config.scan_layers:
        return nnx.List(blocks)
    p = config.layer_period
    if p == config.n_layers > 1:
        _say_no_period(config.mixers)
    return nnx.List([_stack_module(blocks[j::p]) for j in range(p)])


def _stack_module(blocks: list[nnx.Module]) -> nnx.Module:
    graphdef, state = nnx.split(blocks[0])
    states = [state] + [nnx.state(b) for b in blocks[1:]]
    return nnx.merge(graphdef, jax.tree.map(lambda *vs: _stack_leaf(vs), *states, is_leaf=_is_var))


_WARNED: set[tuple[str, ...]] = set()


def _interpreted_kernels(config) -> list[str]:
    """The ``<mixer>.impl`` settings that run a Pallas kernel in interpret mode here: a kernel
    named explicitly on a CPU backend ("auto" never picks interpret mode)."""
    if jax.default_backend() != "cpu":
        return []
    found = []
    for mixer in dict.fromkeys(config.mixers):
        impl = getattr(getattr(config, mixer, None), "impl", "")
        if isinstance(impl, str) and impl.startswith("pallas"):
            found.append(f"{mixer}.impl={impl!r}")
    return found


def effective_remat(config, remat: str) -> str:
    """``remat``, or "none" where jax cannot differentiate it: a kernel in interpret mode calls
    back into Python (an IO effect), and ``jax.checkpoint`` refuses effects in its backward
    (jax 0.11.2: "Effects not supported in AD of checkpoint/remat"). Remat changes no value,
    only the memory the backward keeps, so the blocks run without it, with a warning."""
    interpreted = _interpreted_kernels(config) if remat != "none" else []
    if interpreted:
        if (remat, *interpreted) not in _WARNED:  # once per setting, not once per call
            _WARNED.add((remat, *interpreted))
            log.warning("remat=%r is off for this model on the CPU backend: %s runs the Pallas kernel in "
                        "interpret mode, which jax.checkpoint cannot differentiate. Values are the same; the "
                        "backward keeps every activation.", remat, ", ".join(interpreted))
        return "none"
    return remat


def _checkpoint(fn: Callable, remat: str, *, in_scan: bool) -> Callable:
    if remat == "none":
        return fn
    # Inside a scan the loop already keeps XLA from merging the recomputation with the forward.
    return jax.checkpoint(fn, policy=_POLICIES[remat], prevent_cse=not in_scan)


def run_layers(
    layers: nnx.List,
    config,
    h: jax.Array,
    fn: Callable[[nnx.Module, jax.Array, Any], tuple[jax.Array, Any]],
    xs: Sequence[Any] | None = None,
    *,
    remat: str = "none",
) -> tuple[jax.Array, tuple]:
    """Thread ``h`` through the blocks: ``h, y = fn(block, h, x)`` per layer; returns ``(h, ys)``.

    ``xs`` / ``ys``: one entry per entry of ``layers`` (per layer unscanned; per group position,
    with the leading ``layers`` axis, scanned), e.g. decoding caches; ``None`` for nothing.
    ``remat`` wraps each block (scanned: each scan step) in ``jax.checkpoint`` with that policy.
    """
    remat = effective_remat(config, remat)
    xs = (None,) * len(layers) if xs is None else tuple(xs)
    if len(xs) != len(layers):
        raise ValueError(f"run_layers: got {len(xs)} inputs (e.g. caches) for {len(layers)} layer entries")
    if not config.scan_layers:
        ys = []
        for block, x in zip(layers, xs):
            if remat == "none":
                h, y = fn(block, h, x)
            else:
                graphdef, params, rest = nnx.split(block, nnx.Param, ...)

                def apply(params, rest, h, x, graphdef=graphdef):
                    b = nnx.merge(graphdef, params, rest)
                    h, y = fn(b, h, x)
                    return h, y, nnx.state(b, nnx.Not(nnx.Param))

                h, y, rest = _checkpoint(apply, remat, in_scan=False)(params, rest, h, x)
                nnx.update(block, rest)
            ys.append(y)
        return h, tuple(ys)

    # Parameters go in as scanned inputs only; the rest of the state (dropout RNG streams) is
    # scanned in and out, so its updates survive, and parameters are never copied into outputs.
    splits = [nnx.split(block, nnx.Param, ...) for block in layers]
    graphdefs = [g for g, _, _ in splits]

    def body(h, step):
        params, rests, xs_step = step
        blocks = [nnx.merge(g, p, r) for g, p, r in zip(graphdefs, params, rests)]
        ys = []
        for block, x in zip(blocks, xs_step):
            h, y = fn(block, h, x)
            ys.append(y)
        return h, ([nnx.state(b, nnx.Not(nnx.Param)) for b in blocks], ys)

    body = _checkpoint(body, remat, in_scan=True)
    params = [p for _, p, _ in splits]
    rests = [r for _, _, r in splits]
    h, (rests, ys) = jax.lax.scan(body, h, (params, rests, list(xs)))
    for block, rest in zip(layers, rests):
        nnx.update(block, rest)
    return h, tuple(ys)


def stacked_init_cache(layers: nnx.List, config, init: Callable[[nnx.Module], Any]) -> tuple:
    """Per-entry caches: ``init(block)`` (shapes only depend on the config), broadcast over the
    leading ``layers`` axis when scanned."""
    if not config.scan_layers:
        return tuple(init(block) for block in layers)
    r = config.n_layers // config.layer_period
    return tuple(jax.tree.map(lambda x: jnp.broadcast_to(x, (r, *x.shape)), init(block)) for block in layers)


# -- layout conversion ---------------------------------------------------------------------------


def _items(state) -> tuple[list[tuple[tuple, Any]], bool]:
    if isinstance(state, nnx.State):
        return list(nnx.to_flat_state(state)), True
    if isinstance(state, Mapping) and all(isinstance(k, tuple) for k in state):
        return list(state.items()), False
    raise TypeError("stack_layers/unstack_layers: `state` must be an nnx.State (nnx.state(model), an Orbax-restored "
                    f"state) or a flat mapping {{path tuple: value}}; got {type(state).__name__}")


def _build(items: list[tuple[tuple, Any]], as_state: bool):
    return nnx.from_flat_state(items) if as_state else dict(items)


def _check_config(fn: str, config):
    if not hasattr(config, "layer_period"):
        raise TypeError(f"{fn}: `config` must be a LanguageModelConfig or SequenceClassifierConfig; got {type(config).__name__}")
    return config.layer_period, config.n_layers // config.layer_period


def stack_layers(state, config):
    """An unscanned state (paths ``("layers", i, ...)``) in the scanned layout of ``config``.

    ``state``: an ``nnx.State`` or a flat ``{path: array}`` mapping; returns the same kind.
    Everything outside ``layers`` is unchanged.
    """
    p, r = _check_config("stack_layers", config)
    out, groups = [], defaultdict(dict)
    items, as_state = _items(state)
    for path, leaf in items:
        if path[:1] == (AXIS,):
            i = path[1]
            if not (isinstance(i, int) and 0 <= i < config.n_layers):
                raise ValueError(f"stack_layers: layer index {i!r} in {path}; the config has n_layers={config.n_layers}")
            groups[(i % p, path[2:])][i // p] = leaf
        else:
            out.append((path, leaf))
    for (j, rest), members in groups.items():
        if len(members) != r:
            raise ValueError(f"stack_layers: `layers/{j}/{'/'.join(map(str, rest))}` exists in {len(members)} of the "
                             f"layers {list(range(j, config.n_layers, p))} of its group (layer_period {p}); is the "
                             "state of a model with other layer_mixers?")
        out.append(((AXIS, j, *rest), _stack_leaf([members[k] for k in range(r)])))
    return _build(out, as_state)


def unstack_layers(state, config):
    """A scanned state of ``config`` in the unscanned layout (paths ``("layers", i, ...)``)."""
    p, r = _check_config("unstack_layers", config)
    out = []
    items, as_state = _items(state)
    for path, leaf in items:
        if path[:1] == (AXIS,):
            j = path[1]
            if not (isinstance(j, int) and 0 <= j < p):
                raise ValueError(f"unstack_layers: entry {j!r} in {path}; the config has layer_period={p}")
            for k, piece in enumerate(_unstack_leaf(leaf, r, path)):
                out.append(((AXIS, k * p + j, *path[2:]), piece))
        else:
            out.append((path, leaf))
    out.sort(key=lambda kv: (kv[0][:1] == (AXIS,), kv[0][1] if kv[0][:1] == (AXIS,) else 0))
    return _build(out, as_state)


def with_scan_layers(model: nnx.Module, scan_layers: bool = True) -> nnx.Module:
    """``model`` (a LanguageModel or SequenceClassifier) with ``config.scan_layers`` set and its
    state converted: the same function, the other parameter layout. ``model`` is not changed."""
    config = getattr(model, "config", None)
    if not hasattr(config, "scan_layers"):
        raise TypeError(f"with_scan_layers: `model` must be a LanguageModel or SequenceClassifier; got {type(model).__name__}")
    if not isinstance(scan_layers, bool):
        raise TypeError(f"with_scan_layers: `scan_layers` must be a bool; got {scan_layers!r}")
    new_config = dataclasses.replace(config, scan_layers=scan_layers)
    state = nnx.state(model)
    if scan_layers != config.scan_layers:
        state = stack_layers(state, new_config) if scan_layers else unstack_layers(state, config)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: type(model)(new_config, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, jax.tree.map(lambda v: v.replace(v.get_value()), state, is_leaf=_is_var))
