"""Float64 NumPy oracles for SSD (Mamba-2) and Hydra, written from the papers' equations.

Plain loops over time and explicit sums: slow, obvious, and independent of ``ssm_jax.ops``.
"""

from __future__ import annotations

import numpy as np


def _f64(v):
    return None if v is None else np.asarray(v, dtype=np.float64)


def softplus(v):
    return np.logaddexp(0.0, v)


def discretize_dt(dt, dt_bias=None, dt_softplus=False):
    dt = _f64(dt)
    if dt_bias is not None:
        dt = dt + _f64(dt_bias)
    return softplus(dt) if dt_softplus else dt


def segments(segment_ids, l):
    """[(start, stop), ...]: maximal runs of equal ids (the whole row when ids are None)."""
    if segment_ids is None:
        return [(0, l)]
    ids = np.asarray(segment_ids)
    starts = [0] + [t for t in range(1, l) if ids[t] != ids[t - 1]]
    return list(zip(starts, starts[1:] + [l]))


def ssd_oracle(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False,
               initial_state=None, segment_ids=None):
    """Mamba-2 eq. (1), step by step. x (b, l, h, p), dt (b, l, h), A (h,), B/C (b, l, g, n).

    Returns ``(y (b, l, h, p), final_state (b, h, p, n))`` in float64.
    """
    x, A, B, C = map(_f64, (x, A, B, C))
    dt = discretize_dt(dt, dt_bias, dt_softplus)
    if B.ndim == 3:
        B, C = B[:, :, None], C[:, :, None]
    b, l, h, p = x.shape
    g, n = B.shape[2:]
    y = np.zeros_like(x)
    final = np.zeros((b, h, p, n))
    for bi in range(b):
        for hi in range(h):
            gi = hi // (h // g)
            state = np.zeros((p, n)) if initial_state is None else _f64(initial_state)[bi, hi].copy()
            for t in range(l):
                if segment_ids is not None and t > 0 and segment_ids[bi][t] != segment_ids[bi][t - 1]:
                    state = np.zeros((p, n))
                state = np.exp(dt[bi, t, hi] * A[hi]) * state + dt[bi, t, hi] * np.outer(x[bi, t, hi], B[bi, t, gi])
                y[bi, t, hi] = state @ C[bi, t, gi]
            final[bi, hi] = state
    if D is not None:
        D = _f64(D)
        y = y + (D[:, None] if D.ndim == 1 else D) * x
    if z is not None:
        z = _f64(z)
        y = y * z / (1.0 + np.exp(-z))
    return y, final


def hydra_oracle(x, dt, A, B, C, *, D=None, dt_bias=None, dt_softplus=False, segment_ids=None):
    """Hydra's mixer as its reference module computes it, on each segment separately::

        QS(X) = shift(SSD_f(X)) + flip(shift(SSD_b(flip(X)))) + D X

    ``shift`` moves outputs one step later and zero-fills the first; dt (b, l, 2, h),
    B/C (b, l, 2, g, n) hold the [forward, backward] parameters in original time order.
    """
    x = _f64(x)
    dt, B, C = _f64(dt), _f64(B), _f64(C)
    b, l, h, p = x.shape
    y = np.zeros_like(x)

    def shift(v):
        return np.concatenate([np.zeros_like(v[:, :1]), v[:, :-1]], axis=1)

    for bi in range(b):
        for s0, s1 in segments(None if segment_ids is None else segment_ids[bi], l):
            seg = slice(s0, s1)
            xs = x[bi : bi + 1, seg]
            fw, _ = ssd_oracle(xs, dt[bi : bi + 1, seg, 0], A, B[bi : bi + 1, seg, 0], C[bi : bi + 1, seg, 0],
                               dt_bias=dt_bias, dt_softplus=dt_softplus)
            flip = lambda v: v[:, ::-1]
            bw, _ = ssd_oracle(flip(xs), flip(dt[bi : bi + 1, seg, 1]), A, flip(B[bi : bi + 1, seg, 1]),
                               flip(C[bi : bi + 1, seg, 1]), dt_bias=dt_bias, dt_softplus=dt_softplus)
            y[bi, seg] = (shift(fw) + flip(shift(bw)))[0]
    if D is not None:
        D = _f64(D)
        y = y + (D[:, None] if D.ndim == 1 else D) * x
    return y


def hydra_matrix_oracle(dt, A, B, C, *, D=None, dt_bias=None, dt_softplus=False, segment_ids=None):
    """The quasiseparable matrix entry by entry, (b, h, l, l), from the closed form of the above:

    * ``i > j``: ``C_f[i-1] . B_f[j] dt_f[j] prod_{k=j+1..i-1} exp(dt_f[k] A)``
    * ``i < j``: ``C_b[i+1] . B_b[j] dt_b[j] prod_{k=i+1..j-1} exp(dt_b[k] A)``
    * ``i == j``: ``D`` (per head), and zero across segment boundaries.
    """
    dt = discretize_dt(dt, dt_bias, dt_softplus)
    A, B, C = _f64(A), _f64(B), _f64(C)
    b, l, _, h = dt.shape
    g = B.shape[3]
    M = np.zeros((b, h, l, l))
    for bi in range(b):
        seg_of = np.zeros(l, int)
        for si, (s0, s1) in enumerate(segments(None if segment_ids is None else segment_ids[bi], l)):
            seg_of[s0:s1] = si
        for hi in range(h):
            gi = hi // (h // g)
            for i in range(l):
                for j in range(l):
                    if seg_of[i] != seg_of[j]:
                        continue
                    if i > j:
                        decay = np.exp(A[hi] * dt[bi, j + 1 : i, 0, hi].sum())
                        M[bi, hi, i, j] = C[bi, i - 1, 0, gi] @ B[bi, j, 0, gi] * dt[bi, j, 0, hi] * decay
                    elif i < j:
                        decay = np.exp(A[hi] * dt[bi, i + 1 : j, 1, hi].sum())
                        M[bi, hi, i, j] = C[bi, i + 1, 1, gi] @ B[bi, j, 1, gi] * dt[bi, j, 1, hi] * decay
                    elif D is not None:
                        M[bi, hi, i, j] = _f64(D)[hi]
    return M
