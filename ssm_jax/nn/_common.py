"""Input checks and small helpers shared by the layers of :mod:`ssm_jax.nn`."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ssm_jax.ops._checks import Dims, check_float, check_segment_ids, to_array
from ssm_jax.ops._prepare import segment_starts

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
    """``x (b, l, e)`` floating with ``e == d_model``; ``segment_ids (b, l)`` int32 or None."""
    x = to_array(op, "x", x)
    dims = Dims(op, e=d_model)
    dims.bind("x", x, "b l e")
    check_float(op, "x", x)
    return x, check_segment_ids(op, dims, segment_ids)


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
    starts = segment_starts(segment_ids, first=True)
    return idx - jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
