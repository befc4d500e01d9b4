"""The chunked form of a linear time-invariant state space recurrence, with segment restarts.

``x_t = T x_{t-1} + b u_t``, ``y_t = scale·Re(c·x_t)`` per channel, ``T`` fixed: S4D (``T``
diagonal, the kept half of each conjugate pair, ``scale = 2``) and S4 (``T`` the dense
``2n × 2n`` bilinear matrix acting on ``[x, x̄]``, ``scale = 1``). The SSD paper's chunked
algorithm (Mamba-2 Sec. 6) with a fixed transition: inside chunks of ``q`` positions the output
is the masked Toeplitz convolution with ``K[ℓ] = scale·Re(c T^ℓ b)`` (same-segment pairs only);
each chunk's end state comes from its own inputs after its last segment start, plus ``T^q`` times
the entering state when no segment starts inside; the entering state reaches a chunk's positions
up to its first segment start. Work ``O(b·l·h·(q + N))``; ``l/q`` sequential steps of the
``O(b·h·N)`` (diagonal) or ``O(b·h·N²)`` (dense) carry.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jax import lax

from ssm_jax.ops._explicit import scan

_HI = lax.Precision.HIGHEST


def last_chunk_length(l: int, q: int) -> int:
    """Positions of the sequence in its last chunk of ``q``."""
    return (l - 1) % q + 1


def chunked_scan(u, starts, x0, D, *, q: int, c, impulse, rows, advance: Callable, scale: float):
    """``(y (b, l, h) real, final state (b, h, N))``.

    ============ ============== ==================================================================
    u            (b, l, h)      real input
    starts       (b, l) bool    the state is zero before these positions (position 0: ignored,
                                the initial state enters there)
    x0           (b, h, N)|None initial state
    D            (h,) | None    skip
    c            (h, N)         output vector
    impulse      (h, N, q + 1)  ``T^k b``, k = 0..q
    rows         (h, N, q)      ``c T^(t+1)``, t = 0..q-1
    advance      (x, k) -> T^k x for a (b, h, N) state and a static k in 1..q
    ============ ============== ==================================================================
    """
    b, l, h = u.shape
    nc = -(-l // q)
    lv = last_chunk_length(l, q)
    ctype = impulse.dtype
    # Padding at the end (u = 0, no segment start) would only decay the state after position
    # l - 1: the final state is taken at the last valid position instead.
    uc = jnp.pad(u.astype(jnp.finfo(ctype).dtype), ((0, 0), (0, nc * q - l), (0, 0))).reshape(b, nc, q, h)
    st = jnp.pad(starts.at[:, 0].set(False), ((0, 0), (0, nc * q - l)))
    # Starts counted from each chunk's start (inclusive): t and s share a segment iff their counts
    # are equal; t sees the state entering its chunk iff its count is 0.
    cnt = jnp.cumsum(st.reshape(b, nc, q).astype(jnp.int32), axis=-1)
    K = scale * jnp.real(jnp.einsum("hN,hNk->hk", c, impulse[:, :, :q], precision=_HI))  # (h, q)
    t, s = jnp.arange(q)[:, None], jnp.arange(q)[None, :]
    toeplitz = jnp.where(t >= s, K[:, jnp.clip(t - s, 0, q - 1)], 0.0)  # (h, t, s)
    same = (cnt[:, :, :, None] == cnt[:, :, None, :]).astype(toeplitz.dtype)  # (b, c, t, s)
    y = jnp.einsum("hts,bcts,bcsh->bcth", toeplitz, same, uc, precision=_HI)

    def own_state(end, upto):
        """State after position ``end - 1`` of each chunk from its own inputs after its last
        segment start (``upto``: the count there), ``(b, c, h, N)``."""
        live = (cnt == upto[..., None]) & (jnp.arange(q) < end)
        w = impulse[:, :, jnp.clip(end - 1 - jnp.arange(q), 0, q)]  # T^(end-1-s) b, (h, N, s)
        return jnp.einsum("hNs,bcsh->bchN", w, (uc * live[..., None]).astype(ctype), precision=_HI)

    own = own_state(q, cnt[:, :, -1])
    closed = cnt[:, :, -1] > 0  # a segment starts inside the chunk: the entering state stops there

    def carry(x, inp):
        own_c, closed_c = inp
        nxt = jnp.where(closed_c[:, None, None], 0, advance(x, q)) + own_c
        return nxt, x

    first = jnp.zeros(own.shape[:1] + own.shape[2:], ctype) if x0 is None else x0.astype(ctype)
    _, entering = scan(carry, first, (jnp.moveaxis(own, 1, 0), jnp.moveaxis(closed, 1, 0)))
    entering = jnp.moveaxis(entering, 0, 1)  # (b, c, h, N): the state before each chunk
    inter = scale * jnp.real(jnp.einsum("hNt,bchN->bcth", rows, entering, precision=_HI))
    y = (y + jnp.where((cnt == 0)[..., None], inter, 0.0)).reshape(b, nc * q, h)[:, :l]
    last_cnt = cnt[:, -1:, lv - 1]
    x = own_state(lv, last_cnt)[:, -1] + jnp.where((last_cnt == 0)[:, :, None], advance(entering[:, -1], lv), 0)
    if D is not None:
        y = y + D.astype(y.dtype) * u.astype(y.dtype)
    return y, x

