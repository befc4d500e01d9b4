"""Float64 NumPy oracle for the Mamba-1 selective scan, written from the paper, not from ssm_jax.

Mamba paper (Gu & Dao 2023) Sec. 3.2, Alg. 2, with Delta passed through softplus and the
first-order ``B_bar = Delta B``; an explicit loop over time, channel groups by index arithmetic.
"""

from __future__ import annotations

import numpy as np


def _f64(v):
    return None if v is None else np.asarray(v, dtype=np.float64)


def selective_scan_oracle(
    x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None,
    segment_ids=None,
):
    """Returns ``(y (b, l, d), final_state (b, d, n))`` in float64.

    Shapes as in ``ssm_jax.ops.selective_scan``; ``B``/``C`` may be ``(b, l, n)`` (shared by all
    channels) or ``(b, l, g, n)`` (channel ``i`` reads group ``i // (d // g)``).
    """
    x, dt, A, B, C, D, z, dt_bias, initial_state = map(_f64, (x, dt, A, B, C, D, z, dt_bias, initial_state))
    b, l, d = x.shape
    n = A.shape[1]

    def per_channel(M):  # (b, l, [g,] n) -> (b, l, d, n)
        if M.ndim == 3:
            return np.repeat(M[:, :, None, :], d, axis=2)
        g = M.shape[2]
        group_of_channel = np.arange(d) // (d // g)
        return M[:, :, group_of_channel, :]

    Bd, Cd = per_channel(B), per_channel(C)
    delta = dt + (0.0 if dt_bias is None else dt_bias)
    if dt_softplus:
        delta = np.logaddexp(0.0, delta)

    h = np.zeros((b, d, n)) if initial_state is None else initial_state.copy()
    y = np.zeros((b, l, d))
    for t in range(l):
        if segment_ids is not None and t > 0:
            new_segment = np.asarray(segment_ids)[:, t] != np.asarray(segment_ids)[:, t - 1]
            h[new_segment] = 0.0
        A_bar = np.exp(delta[:, t, :, None] * A[None, :, :])
        B_bar_x = (delta[:, t, :] * x[:, t, :])[:, :, None] * Bd[:, t]
        h = A_bar * h + B_bar_x
        y[:, t] = np.einsum("bdn,bdn->bd", h, Cd[:, t])
        if D is not None:
            y[:, t] += D * x[:, t]
    if z is not None:
        y = y * z / (1.0 + np.exp(-z))
    return y, h
