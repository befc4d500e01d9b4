"""The kernels' computation in plain JAX, on the same prepared operands (api.py's layouts).

Chunk-for-chunk what the Mosaic GPU kernels compute (same chunk ``q``, same cumulative sums, same
segment masks), in fp32 einsums. The tests use it as a second, independent check of the kernels
on the operands ``api.py`` prepares.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["core_reference"]


def core_reference(q: int, want_final: bool, y_dtype, arrays):
    """``(y (b, l_pad, h, p) in y_dtype, final_state (b, h, p, n) fp32 | None)`` from prepared operands.

    ``arrays``: x (b, l_pad, h, p); dt, cs (b, h, l_pad) fp32 (``cs`` the within-chunk cumulative sum of
    ``dt * A``); B, C (b, l_pad, g, n); r (b, l_pad) within-chunk reset counts or None; D (h, p) | None;
    z (b, l_pad, h, p) | None; h0 (b, h, p, n) | None. ``l_pad`` is a multiple of ``q``.
    """
    f32 = jnp.float32
    x = arrays["x"].astype(f32)
    b, l_pad, h, p = x.shape
    g, n = arrays["B"].shape[2:]
    nc = l_pad // q
    rep = lambda v: jnp.repeat(v.astype(f32), h // g, axis=2).reshape(b, nc, q, h, n)  # noqa: E731
    Bh, Ch = rep(arrays["B"]), rep(arrays["C"])
    xc = x.reshape(b, nc, q, h, p)
    cs = arrays["cs"].reshape(b, h, nc, q)
    dt = arrays["dt"].reshape(b, h, nc, q)
    last = cs[..., -1:]
    causal = jnp.tril(jnp.ones((q, q), bool))
    mask = causal[None, None, None]
    open_in = open_out = open_tot = True
    if arrays.get("r") is not None:
        r = arrays["r"].reshape(b, 1, nc, q)
        mask = mask & (r[..., :, None] == r[..., None, :])
        open_in = r == 0
        open_out = r == r[..., -1:]
        open_tot = r[..., -1] == 0
    # Mask before the exp (never exp of a large positive difference).
    Lm = jnp.exp(jnp.where(mask, cs[..., :, None] - cs[..., None, :], -jnp.inf))  # (b, h, c, t, s)
    e_in = jnp.where(open_in, jnp.exp(cs), 0.0)
    w = jnp.where(open_out, jnp.exp(last - cs), 0.0) * dt
    e_tot = jnp.where(open_tot, jnp.exp(last[..., 0]), 0.0)  # (b, h, c)

    S = jnp.einsum("bcthn,bcshn->bhcts", Ch, Bh)
    y = jnp.einsum("bhcts,bcshp->bcthp", S * Lm * dt[..., None, :], xc)
    chunk_states = jnp.einsum("bhcs,bcshp,bcshn->cbhpn", w, xc, Bh)

    def pass_state(hs, inp):
        dec, st = inp
        return dec[..., None, None] * hs + st, hs

    h0 = arrays.get("h0")
    h0 = jnp.zeros((b, h, p, n), f32) if h0 is None else h0.astype(f32)
    final_state, h_in = lax.scan(pass_state, h0, (jnp.moveaxis(e_tot, 2, 0), chunk_states))
    y = y + jnp.einsum("bcthn,cbhpn->bcthp", Ch, h_in) * jnp.moveaxis(e_in, (1, 2, 3), (3, 1, 2))[..., None]
    y = y.reshape(b, l_pad, h, p)
    if arrays.get("D") is not None:
        y = y + arrays["D"].astype(f32) * x
    if arrays.get("z") is not None:
        z = arrays["z"].astype(f32)
        y = y * z * jax.nn.sigmoid(z)
    return y.astype(y_dtype), (final_state if want_final else None)
