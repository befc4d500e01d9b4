"""The preparation every mixer shares: packed-sequence boundaries and the effective step size.

A *segment* is a maximal run of equal ``segment_ids`` along the sequence (an id that comes back
later starts a new segment). Every op and layer derives what it needs from one comparison,
``segment_ids[:, 1:] != segment_ids[:, :-1]``, made here:

* :func:`segment_starts` -- ``(b, l)`` bool, True where a segment starts (position 0 as asked);
  its negation is the "keep the state" mask of the scans;
* :func:`segment_runs` -- ``(b, l)`` int32 index of the segment each position belongs to, so that
  "same segment" is an equality of run indices (chunked forms, matrices, short convolutions).

:func:`effective_dt` is the step size of Mamba-1 Alg. 2 line 3 and of Mamba-2/Hydra:
``dt <- softplus(dt + dt_bias)`` (or the identity instead of the softplus).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssm_jax.typing import Array, Bool, Float, Int

__all__ = ["effective_dt", "segment_runs", "segment_starts"]


def segment_starts(segment_ids: Int[Array, "b l"], *, first: bool | Bool[Array, "b 1"] = False) -> Bool[Array, "b l"]:
    """True where the id differs from the previous position's; position 0 is ``first``.

    ``first`` is a bool for every row, or a ``(b, 1)`` array (a context-parallel shard's start
    depends on the id its neighbour ends with).
    """
    changed = segment_ids[:, 1:] != segment_ids[:, :-1]
    # A pad, not a concatenate with a new column: under an Explicit mesh the column would be
    # replicated and the ids batch-sharded, and concatenate refuses mixed shardings.
    if isinstance(first, bool):
        return jnp.pad(changed, ((0, 0), (1, 0)), constant_values=first)
    return jnp.pad(changed, ((0, 0), (1, 0))).at[:, :1].set(first)


def segment_runs(segment_ids: Int[Array, "b l"]) -> Int[Array, "b l"]:
    """Index ``0, 1, ...`` of the segment (maximal run of equal ids) each position belongs to."""
    return jnp.cumsum(segment_starts(segment_ids).astype(jnp.int32), axis=1)


def effective_dt(dt: Float[Array, "..."], dt_bias: Float[Array, "..."] | None, dt_softplus: bool,
                 dtype) -> jax.Array:
    """``tau(dt + dt_bias)`` in ``dtype``, ``tau`` = softplus if ``dt_softplus`` else the identity.

    ``dt_bias`` is added whenever given (Mamba Alg. 2 line 3). ``jax.nn.softplus`` is
    ``logaddexp(dt, 0)``: no overflow for large ``dt``.
    """
    dt = dt.astype(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.astype(dtype)
    return jax.nn.softplus(dt) if dt_softplus else dt
