"""Float64 NumPy forward passes of the layers, written from the papers / reference modules.

Each takes the layer's parameters as NumPy arrays (``params(layer)``) and loops over time
explicitly; nothing here calls ssm_jax.
"""

from __future__ import annotations

import math

import numpy as np
from flax import nnx


def params(layer) -> dict:
    """Flat ``{"a.b.c": float64 array}`` of a layer's parameters."""
    flat = nnx.to_flat_state(nnx.state(layer, nnx.Param))
    return {".".join(str(k) for k in path): np.asarray(v.get_value(), np.float64) for path, v in flat}


def silu(x):
    return x / (1 + np.exp(-x))


def softplus(x):
    return np.logaddexp(0.0, x)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def dense(p, name, x):
    y = x @ p[f"{name}.kernel"]
    return y + p[f"{name}.bias"] if f"{name}.bias" in p else y


def depthwise_conv(x, w, bias, left):
    """``y[t] = bias + sum_i w[:, i] x[t + i - left]`` with zeros outside ``[0, l)``."""
    b, l, d = x.shape
    k = w.shape[1]
    y = np.zeros_like(x) + (0 if bias is None else bias)
    for t in range(l):
        for i in range(k):
            s = t + i - left
            if 0 <= s < l:
                y[:, t] += w[:, i] * x[:, s]
    return y


def rms(x, eps):
    return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps)


def rmsnorm(x, w, eps=1e-5):
    return rms(x, eps) * w


def gated_rmsnorm(x, z, w, group_size, norm_before_gate, eps=1e-5):
    if not norm_before_gate:
        x = x * silu(z)
    shp = x.shape
    y = rms(x.reshape(*shp[:-1], -1, group_size), eps).reshape(shp) * w
    return y * silu(z) if norm_before_gate else y


def mamba(p, x, *, d_state, dt_rank):
    """Mamba-1 block (Gu & Dao 2023, Alg. 2 inside fig. 3's block)."""
    b, l, _ = x.shape
    xz = dense(p, "in_proj", x)
    d = xz.shape[-1] // 2
    xs, z = xz[..., :d], xz[..., d:]
    k = p["conv1d.weight"].shape[1]
    xs = silu(depthwise_conv(xs, p["conv1d.weight"], p.get("conv1d.bias"), left=k - 1))
    x_dbl = xs @ p["x_proj.kernel"]
    dt_low, B, C = x_dbl[..., :dt_rank], x_dbl[..., dt_rank : dt_rank + d_state], x_dbl[..., dt_rank + d_state :]
    dt = softplus(dt_low @ p["dt_proj.kernel"] + p["dt_proj.bias"])
    A = -np.exp(p["A_log"])
    h = np.zeros((b, d, d_state))
    y = np.zeros((b, l, d))
    for t in range(l):
        h = np.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * xs[:, t])[:, :, None] * B[:, t, None, :]
        y[:, t] = np.einsum("bdn,bn->bd", h, C[:, t]) + p["D"] * xs[:, t]
    return dense(p, "out_proj", y * silu(z))


def _ssd_scan(xs, dt, A, B, C):
    """``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T``, ``y_t = h_t C_t``; heads share groups."""
    b, l, h, pdim = xs.shape
    g, n = B.shape[2], B.shape[3]
    Bh = np.repeat(B, h // g, axis=2)
    Ch = np.repeat(C, h // g, axis=2)
    s = np.zeros((b, h, pdim, n))
    y = np.zeros_like(xs)
    for t in range(l):
        s = np.exp(dt[:, t] * A)[:, :, None, None] * s + (dt[:, t, :, None] * xs[:, t])[..., None] * Bh[:, t, :, None, :]
        y[:, t] = np.einsum("bhpn,bhn->bhp", s, Ch[:, t])
    return y


def mamba2(p, x, *, d_state, headdim, ngroups, norm_before_gate, D_has_hdim):
    """Mamba-2 block (Dao & Gu 2024, section 7, fig. 6)."""
    b, l, _ = x.shape
    h = p["A_log"].shape[0]
    d = h * headdim
    gn = ngroups * d_state
    zxbcdt = dense(p, "in_proj", x)
    z, xbc, dt = zxbcdt[..., :d], zxbcdt[..., d : 2 * d + 2 * gn], zxbcdt[..., 2 * d + 2 * gn :]
    k = p["conv1d.weight"].shape[1]
    xbc = silu(depthwise_conv(xbc, p["conv1d.weight"], p.get("conv1d.bias"), left=k - 1))
    xs = xbc[..., :d].reshape(b, l, h, headdim)
    B = xbc[..., d : d + gn].reshape(b, l, ngroups, d_state)
    C = xbc[..., d + gn :].reshape(b, l, ngroups, d_state)
    dt = softplus(dt + p["dt_bias"])
    y = _ssd_scan(xs, dt, -np.exp(p["A_log"]), B, C)
    D = p["D"].reshape(h, headdim) if D_has_hdim else p["D"][:, None]
    y = (y + D * xs).reshape(b, l, d)
    y = gated_rmsnorm(y, z, p["norm.weight"], d // ngroups, norm_before_gate)
    return dense(p, "out_proj", y)


def hydra(p, x, *, d_state, headdim, ngroups):
    """Hydra block as goombalab/hydra computes it: forward SSD and SSD of the flipped sequence,
    each shifted one step later, plus ``x * (fc_D(x) + D)``, then gated RMSNorm (norm first)."""
    b, l, _ = x.shape
    h = p["A_log"].shape[0]
    d = h * headdim
    gn = ngroups * d_state
    zxbcdt = dense(p, "in_proj", x)
    z = zxbcdt[..., :d]
    xbc = zxbcdt[..., d : 2 * d + 4 * gn]
    dt = zxbcdt[..., 2 * d + 4 * gn :]
    k = p["conv1d.weight"].shape[1]
    xbc = silu(depthwise_conv(xbc, p["conv1d.weight"], p.get("conv1d.bias"), left=(k - 1) // 2))
    xs = xbc[..., :d]
    Bf, Cf = xbc[..., d : d + gn], xbc[..., d + gn : d + 2 * gn]
    Bb, Cb = xbc[..., d + 2 * gn : d + 3 * gn], xbc[..., d + 3 * gn :]
    A = -np.exp(p["A_log"])
    dtf = softplus(dt[..., :h] + p["dt_bias"])
    dtb = softplus(dt[..., h:] + p["dt_bias"])
    r = lambda v: v.reshape(b, l, ngroups, d_state)  # noqa: E731
    xh = xs.reshape(b, l, h, headdim)
    yf = _ssd_scan(xh, dtf, A, r(Bf), r(Cf))
    yb = _ssd_scan(xh[:, ::-1], dtb[:, ::-1], A, r(Bb)[:, ::-1], r(Cb)[:, ::-1])
    shift = lambda v: np.concatenate([np.zeros_like(v[:, :1]), v[:, :-1]], axis=1)  # noqa: E731
    y = shift(yf) + shift(yb)[:, ::-1]
    diag = xs @ p["fc_D.kernel"] + p["D"]  # (b, l, h)
    y = (y + xh * diag[..., None]).reshape(b, l, d)
    y = gated_rmsnorm(y, z, p["norm.weight"], d, norm_before_gate=True)
    return dense(p, "out_proj", y)


def _lti_post(p, y, activation, glu):
    act = {"gelu": gelu, "silu": silu, "relu": lambda v: np.maximum(v, 0), "tanh": np.tanh, "identity": lambda v: v}[activation]
    y = dense(p, "output_linear", act(y))
    if glu:
        a, g = np.split(y, 2, axis=-1)
        y = a * sigmoid(g)
    return y


def _conv_with_kernels(u, Ks, D):
    """``y[t] = sum_{j>=0} K0[:, j] u[t-j] + sum_{j>=0} K1[:, j] u[t+1+j] + D u[t]``."""
    b, l, h = u.shape
    y = D * u
    for t in range(l):
        for s in range(l):
            if s <= t:
                y[:, t] += Ks[0][:, t - s] * u[:, s]
            elif len(Ks) == 2:
                y[:, t] += Ks[1][:, s - t - 1] * u[:, s]
    return y


def _complex(p, name):
    return p[name][..., 0] + 1j * p[name][..., 1]


def s4d(p, u, *, discretization, activation="gelu", glu=True):
    """S4D (Gu et al. 2022b, eqs. for ZOH / bilinear): Vandermonde kernel, direct convolution."""
    l = u.shape[1]
    dt = np.exp(p["log_dt"])[:, None]
    A = -np.exp(p["log_A_real"]) + 1j * p["A_imag"]
    B = _complex(p, "B")
    if discretization == "zoh":
        dA = np.exp(dt * A)
        dB = (dA - 1) / A * B
    else:
        dA = (1 + dt * A / 2) / (1 - dt * A / 2)
        dB = dt * B / (1 - dt * A / 2)
    C = _complex(p, "C")  # (c, h, n)
    powers = dA[:, :, None] ** np.arange(l)  # (h, n, l)
    Ks = [2 * np.real(np.einsum("hn,hnl->hl", C[i] * dB, powers)) for i in range(C.shape[0])]
    return _lti_post(p, _conv_with_kernels(u, Ks, p["D"]), activation, glu)


def s4(p, u, *, activation="gelu", glu=True):
    """S4 (Gu et al. 2022): full 2n-state DPLR system ``A = diag(Λ) - P P*`` in the conjugate-
    completed basis, bilinear discretization, run as a dense recurrence (causal kernel only)."""
    b, l, h = u.shape
    Lam = -np.exp(p["log_A_real"]) + 1j * p["A_imag"]
    full = lambda v: np.concatenate([v, np.conj(v)], axis=-1)  # noqa: E731
    Lf, Pf, Bf = full(Lam), full(_complex(p, "P")), full(_complex(p, "B"))
    C = _complex(p, "C")
    N = Lf.shape[-1]
    y = np.zeros((b, l, h))
    for c in range(h):
        A = np.diag(Lf[c]) - np.outer(Pf[c], np.conj(Pf[c]))
        dt = np.exp(p["log_dt"][c])
        inv = np.linalg.inv(np.eye(N) - dt / 2 * A)
        dA, dB = inv @ (np.eye(N) + dt / 2 * A), inv @ (dt * Bf[c])
        Cf = full(C[0, c])
        x = np.zeros((b, N), complex)
        for t in range(l):
            x = x @ dA.T + u[:, t, c, None] * dB
            y[:, t, c] = np.real(x @ Cf)
    y = y + p["D"] * u
    return _lti_post(p, y, activation, glu)


def rope(x, pos, theta):
    """Rotate-half RoPE on ``x (b, l, h, p)`` at integer positions ``pos (l,)``."""
    pdim = x.shape[-1]
    inv = theta ** (-np.arange(0, pdim, 2) / pdim)
    ang = pos[:, None] * inv  # (l, p/2)
    cos, sin = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    x1, x2 = x[..., : pdim // 2], x[..., pdim // 2 :]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attention(p, x, *, num_heads, causal, theta=10000.0):
    b, l, _ = x.shape
    q, k, v = (dense(p, f"{n}_proj", x).reshape(b, l, num_heads, -1) for n in "qkv")
    pos = np.arange(l, dtype=np.float64)
    q, k = rope(q, pos, theta), rope(k, pos, theta)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if causal:
        s = np.where(np.tril(np.ones((l, l), bool)), s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    y = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, l, -1)
    return dense(p, "out_proj", y)
