"""Operand preparation every kernel family shares, in plain (differentiable) JAX.

The ``api`` modules turn the op's canonical arguments into kernel operands. What is the same for
the Mosaic GPU and Mosaic TPU kernels of both families lives here, once:

* :func:`effective_dt` -- ``tau(dt + dt_bias)``, ``tau`` the softplus or the identity;
* :func:`keep_mask` -- ``(b, l)`` float, 0 where a segment starts (the state forgets ``h_{t-1}``
  there), the selective scans' form of ``segment_ids``;
* :func:`reset_counts` -- ``(b, l_pad)`` segment starts counted from the start of each kernel chunk,
  the chunked (SSD) kernels' form;
* :func:`pad_axis` -- zero (or ``value``) padding of one axis to a length;
* :func:`pad_groups`, :func:`unpad_groups` -- a channel axis of contiguous groups, each group
  zero-padded to a tile multiple (the selective scans' kernels tile channels within a group), and
  back.

A *segment* is a maximal run of equal ids: an id that comes back later starts a new segment. This
package does not import ``ssm_jax`` (dependencies point one way), so the comparison
``segment_ids[:, 1:] != segment_ids[:, :-1]`` is made here for the kernels as
``ssm_jax.ops._prepare`` makes it for the references.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["effective_dt", "keep_mask", "pad_axis", "pad_groups", "reset_counts", "unpad_groups"]


def _starts(segment_ids) -> jax.Array:
    """``(b, l)`` bool: True where the id differs from the previous position's (False at 0)."""
    changed = segment_ids[:, 1:] != segment_ids[:, :-1]
    # A pad, not a concatenate with a new column: under an Explicit mesh the new column would be
    # replicated while the ids are batch-sharded, and concatenate refuses mixed shardings.
    return jnp.pad(changed, ((0, 0), (1, 0)), constant_values=False)


def effective_dt(dt, dt_bias, dt_softplus: bool, dtype=jnp.float32) -> jax.Array:
    """``softplus(dt + dt_bias)`` (or ``dt + dt_bias``) in ``dtype``; ``dt_bias`` may be None."""
    dt = dt.astype(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.astype(dtype)
    return jax.nn.softplus(dt) if dt_softplus else dt


def keep_mask(segment_ids, dtype=jnp.float32) -> jax.Array | None:
    """``(b, l)``: 0 where a new segment starts, else 1; None without ``segment_ids``."""
    if segment_ids is None:
        return None
    return 1 - _starts(segment_ids).astype(dtype)


def reset_counts(segment_ids, l_pad: int, q: int, dtype=jnp.float32) -> jax.Array:
    """``(b, l_pad)``: segment starts counted from the start of each ``q``-long chunk, inclusive.

    Within a chunk, positions ``s <= t`` are in one segment iff their counts agree; ``t`` still
    sees the state entering the chunk iff its count is 0; ``s`` reaches the chunk end iff its count
    equals the last position's. The padding up to ``l_pad`` continues the last segment. Integer-valued:
    no gradient flows through it.
    """
    b, _ = segment_ids.shape
    starts = pad_axis(_starts(segment_ids).astype(jnp.int32), l_pad, axis=1)
    counts = jnp.cumsum(starts.reshape(b, l_pad // q, q), axis=-1).reshape(b, l_pad)
    return jax.lax.stop_gradient(counts.astype(dtype))


def pad_axis(v, length: int, axis: int = 1, value=0) -> jax.Array:
    """``v`` padded at the end of ``axis`` to ``length`` with ``value`` (unchanged if long enough)."""
    if v.shape[axis] >= length:
        return v
    widths = [(0, 0)] * v.ndim
    widths[axis] = (0, length - v.shape[axis])
    return jnp.pad(v, widths, constant_values=value)


def pad_groups(v, axis: int, groups: int, size: int) -> jax.Array:
    """``axis`` of ``v`` holds ``groups`` contiguous groups of channels; each is zero-padded at
    its end to ``size`` channels: ``(..., g * r, ...) -> (..., g * size, ...)``."""
    axis %= v.ndim
    shape = v.shape
    r = shape[axis] // groups
    if r == size:
        return v
    v = pad_axis(v.reshape(*shape[:axis], groups, r, *shape[axis + 1 :]), size, axis + 1)
    return v.reshape(*shape[:axis], groups * size, *shape[axis + 1 :])


def unpad_groups(v, axis: int, groups: int, size: int) -> jax.Array:
    """The inverse of :func:`pad_groups`: each of the ``groups`` groups on ``axis`` cut back to
    its first ``size`` channels."""
    axis %= v.ndim
    shape = v.shape
    padded = shape[axis] // groups
    if padded == size:
        return v
    v = v.reshape(*shape[:axis], groups, padded, *shape[axis + 1 :])
    v = jax.lax.slice_in_dim(v, 0, size, axis=axis + 1)
    return v.reshape(*shape[:axis], groups * size, *shape[axis + 1 :])
