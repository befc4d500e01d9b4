"""Input checks and small helpers shared by the layers of :mod:`ssm_jax.nn`."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ssm_jax.ops._checks import Dims, check_float, check_int_array, to_array

__all__ = ["check_layer_args", "check_sequence", "check_step", "segment_positions"]


def check_layer_args(layer: str, d_model, config, config_cls: type) -> int:
    """A layer's ``d_model`` (a positive int) and ``config`` (a ``config_cls``), checked at construction."""
    if isinstance(d_model, (bool, np.bool_)) or not isinstance(d_model, (int, np.integer)) or d_model < 1:
        raise ValueError(f"{layer}: `d_model` must be a positive int; got {d_model!r}")
    if not isinstance(config, config_cls):
        hint = f" (from a dict: {config_cls.__name__}.from_dict(...))" if isinstance(config, Mapping) else ""
        raise TypeError(f"{layer}: `config` must be a {config_cls.__name__}{hint}; got {type(config).__name__}")
    return int(d_model)


def check_sequence(op: str, x, d_model: int, segment_ids=None) -> tuple[jax.Array, jax.Array | None]:
    """``x (b, l, e)`` floating with ``e == d_model``; ``segment_ids (b, l)`` integer or None."""
    x = to_array(op, "x", x)
    dims = Dims(op, e=d_model)
    dims.bind("x", x, "b l e")
    check_float(op, "x", x)
    if segment_ids is not None:
        segment_ids = to_array(op, "segment_ids", segment_ids)
        dims.bind("segment_ids", segment_ids, "b l")
        check_int_array(op, "segment_ids", segment_ids)
    return x, segment_ids


def check_step(op: str, x, d_model: int) -> jax.Array:
    """One time step ``x_t (b, e)`` with ``e == d_model``."""
    x = to_array(op, "x", x)
    Dims(op, e=d_model).bind("x", x, "b e")
    check_float(op, "x", x)
    return x


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Position of each token within its segment, ``(b, l)`` int32 (0 where a segment starts).

    A segment starts wherever ``segment_ids`` changes value along the sequence.
    """
    b, l = segment_ids.shape
    idx = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    starts = jnp.concatenate([jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    return idx - jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
