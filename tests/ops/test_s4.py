"""ssm_jax.ops.s4 against float64 NumPy oracles: HiPPO-LegS and its NPLR form; the DPLR kernel
(Cauchy + Woodbury at the roots of unity) equals the kernel from powers of the densely
discretized matrix (in the original HiPPO basis for LegS, in the eigenbasis for random DPLR
parameters) equals the recurrence; step/scan; gradients; bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.ops import fft_conv, hippo_legs, nplr_legs, s4_discretize, s4_init, s4_kernel, s4_scan, s4_step
from tests.numerics import assert_close, fd_grad

# --------------------------------------------------------------------------------------------
# Oracles
# --------------------------------------------------------------------------------------------


def full(x):
    return np.concatenate([x, np.conj(x)], axis=-1)


def bilinear_oracle(dt, A, B):
    I = np.eye(A.shape[0])
    return np.linalg.solve(I - dt / 2 * A, I + dt / 2 * A), np.linalg.solve(I - dt / 2 * A, dt * B)


def dplr_system(Lambda, P, Q, B, C):
    """One channel's full 2n-state system in the eigenbasis: A = diag(Λ) − P Q*."""
    Af = np.diag(full(Lambda)) - np.outer(full(P), full(Q).conj())
    return Af, full(B), full(C)


def kernel_oracle(log_dt, Lambda, P, Q, B, C, L):
    """K[c, k] = C dA^k dB from the dense bilinear discretization, (h, L)."""
    K = np.zeros((len(log_dt), L))
    for c in range(len(log_dt)):
        A, Bf, Cf = dplr_system(Lambda[c], P[c], Q[c], B[c], C[c])
        dA, dB = bilinear_oracle(np.exp(log_dt[c]), A, Bf)
        v = dB
        for k in range(L):
            out = Cf @ v
            assert abs(out.imag) <= 1e-9 * max(1.0, abs(out.real))
            K[c, k] = out.real
            v = dA @ v
    return K


def recurrence_oracle(u, log_dt, Lambda, P, Q, B, C, D):
    u = np.asarray(u, np.float64)
    b, L, h = u.shape
    y = np.zeros((b, L, h))
    for c in range(h):
        A, Bf, Cf = dplr_system(Lambda[c], P[c], Q[c], B[c], C[c])
        dA, dB = bilinear_oracle(np.exp(log_dt[c]), A, Bf)
        x = np.zeros((b, A.shape[0]), np.complex128)
        for t in range(L):
            x = x @ dA.T + u[:, t, c, None] * dB
            y[:, t, c] = (x @ Cf).real + D[c] * u[:, t, c]
    return y


def cplx(rng, *shape, scale=1.0):
    return scale * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2)


def random_dplr(rng, h=2, n=3):
    """Random DPLR parameters (Re Λ < 0, Q ≠ P) and random log_dt."""
    Lambda = -np.exp(rng.normal(-0.5, 0.3, (h, n))) + 1j * rng.uniform(0, 6, (h, n))
    return dict(
        log_dt=rng.uniform(np.log(1e-2), np.log(2e-1), h),
        Lambda=Lambda,
        P=cplx(rng, h, n, scale=0.5),
        Q=cplx(rng, h, n, scale=0.5),
        B=cplx(rng, h, n),
        C=cplx(rng, h, n, scale=1 / np.sqrt(n)),
    )


def legs_params(rng, h=2, n=4):
    """S4-LegS parameters with C = cᵀV for a random real c in the original HiPPO basis."""
    with jax.enable_x64(True):
        Lambda, P, B = (np.array(v) for v in s4_init(h, n, dtype=jnp.complex128))
    V = nplr_legs(n)[3]
    c = rng.standard_normal((h, 2 * n)) / np.sqrt(2 * n)
    log_dt = rng.uniform(np.log(1e-2), np.log(2e-1), h)
    return dict(log_dt=log_dt, Lambda=Lambda, P=P, Q=P, B=B, C=c @ V), c


# --------------------------------------------------------------------------------------------
# HiPPO-LegS and NPLR
# --------------------------------------------------------------------------------------------


def test_hippo_legs_values():
    A, B = hippo_legs(3)
    r3, r5, r15 = np.sqrt(3), np.sqrt(5), np.sqrt(15)
    np.testing.assert_allclose(A, [[-1, 0, 0], [-r3, -2, 0], [-r5, -r15, -3]], rtol=1e-15)
    np.testing.assert_allclose(B, [1, r3, r5], rtol=1e-15)


def test_nplr_legs_reconstructs_hippo_legs():
    n = 6
    Lambda, P, B, V = nplr_legs(n)
    A_hippo, B_hippo = hippo_legs(2 * n)
    Vf = np.concatenate([V, V.conj()], axis=1)
    assert_close(Vf.conj().T @ Vf, np.eye(2 * n), tol=1e-12, name="V unitary")
    assert_close(Lambda.real, np.full(n, -0.5), tol=1e-12, name="Re Λ = -1/2")
    assert np.all(np.diff(Lambda.imag) > 0) and Lambda.imag[0] > 0
    A_rec = Vf @ (np.diag(full(Lambda)) - np.outer(full(P), full(P).conj())) @ Vf.conj().T
    assert_close(A_rec, A_hippo, tol=1e-12, name="A = V (Λ - P P*) V*")
    assert_close(Vf @ full(B), B_hippo, tol=1e-12, name="B = V B~")


# --------------------------------------------------------------------------------------------
# Kernel
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("L", [16, 15])
def test_legs_kernel_equals_original_basis_powers(rng, L):
    params, c = legs_params(rng)
    A_hippo, B_hippo = hippo_legs(8)
    want = np.zeros((2, L))
    for ch in range(2):  # y = cᵀ x in the original real basis: no eigenvectors involved
        dA, dB = bilinear_oracle(np.exp(params["log_dt"][ch]), A_hippo, B_hippo)
        v = dB
        for k in range(L):
            want[ch, k] = c[ch] @ v
            v = dA @ v
    with jax.enable_x64(True):
        for impl in ("xla", "dense"):
            got = s4_kernel(**{k: v for k, v in params.items() if k != "Q"}, length=L, impl=impl)
            assert got.dtype == jnp.float64 and got.shape == (2, L)
            assert_close(got, want, tol=1e-11, name=f"s4_kernel[{impl}]")


@pytest.mark.parametrize("L", [1, 2, 12, 13])
def test_random_dplr_kernel_equals_dense_powers(rng, L):
    p = random_dplr(rng)
    want = kernel_oracle(p["log_dt"], p["Lambda"], p["P"], p["Q"], p["B"], p["C"], L)
    with jax.enable_x64(True):
        for impl in ("xla", "dense"):
            assert_close(s4_kernel(**p, length=L, impl=impl), want, tol=1e-11, name=f"s4_kernel[{impl}] float64")
    p32 = {k: np.asarray(v, np.float32 if k == "log_dt" else np.complex64) for k, v in p.items()}
    got = s4_kernel(**p32, length=L)
    assert got.dtype == jnp.float32
    assert_close(got, want, tol=2e-5, name="s4_kernel[xla] float32")


def test_long_legs_kernel_float32(rng):
    # The Cauchy/Woodbury path in fp32 at a realistic length, against float64 dense powers.
    params, _ = legs_params(rng, h=2, n=16)
    L = 2048
    with jax.enable_x64(True):
        want = np.asarray(s4_kernel(**params, length=L, impl="dense"))
    p32 = {k: np.asarray(v, np.float32 if k == "log_dt" else np.complex64) for k, v in params.items()}
    got = s4_kernel(**p32, length=L)
    assert_close(got, want, tol=1e-4, name="L=2048 float32")


# --------------------------------------------------------------------------------------------
# Recurrence
# --------------------------------------------------------------------------------------------


def test_cnn_equals_rnn_and_step(rng):
    b, L, h, n = 2, 10, 2, 3
    p = random_dplr(rng, h=h, n=n)
    D = rng.standard_normal(h)
    u = rng.standard_normal((b, L, h))
    want = recurrence_oracle(u, **p, D=D)
    with jax.enable_x64(True):
        K = s4_kernel(**p, length=L)
        assert_close(fft_conv(u, K, D=D), want, tol=1e-11, name="convolution")
        dA, dB = s4_discretize(p["log_dt"], p["Lambda"], p["P"], p["B"], Q=p["Q"])
        assert dA.shape == (h, n, 2 * n) and dB.shape == (h, n)
        y_scan, x_final = s4_scan(u, dA, dB, p["C"], D=D)
        assert_close(y_scan, want, tol=1e-11, name="s4_scan")
        state = jnp.zeros((b, h, n), jnp.complex128)
        ys = []
        for t in range(L):
            y_t, state = s4_step(u[:, t], state, dA, dB, p["C"], D=D)
            ys.append(y_t)
        assert_close(jnp.stack(ys, 1), want, tol=1e-11, name="s4_step folded")
        assert_close(state, x_final, tol=1e-11, name="final state")
        _, state = s4_scan(u[:, :6], dA, dB, p["C"], D=D)  # prefill, then decode
        for t in range(6, L):
            y_t, state = s4_step(u[:, t], state, dA, dB, p["C"], D=D)
            assert_close(y_t, want[:, t], tol=1e-11, name=f"step after prefill, t={t}")
    p32 = {k: np.asarray(v, np.float32 if k == "log_dt" else np.complex64) for k, v in p.items()}
    dA, dB = s4_discretize(p32["log_dt"], p32["Lambda"], p32["P"], p32["B"], Q=p32["Q"])
    y32, _ = s4_scan(np.float32(u), dA, dB, p32["C"], D=np.float32(D))
    assert y32.dtype == jnp.float32
    assert_close(y32, want, name="s4_scan float32")


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------

NAMES = ("Lambda", "P", "Q", "B", "C")


@pytest.mark.parametrize("chunk_size", [None, 1, 8, 64])
def test_scan_segments_and_chunked_form(rng, chunk_size):
    """segment_ids: every segment equals running it alone (the initial state reaches only the
    first); the chunked form equals the scan for values, final state and gradients."""
    b, L, h, n = 2, 29, 2, 3
    p = random_dplr(rng, h=h, n=n)
    D = rng.standard_normal(h)
    u = rng.standard_normal((b, L, h))
    x0 = cplx(rng, b, h, n)
    seg = np.sort(rng.integers(0, 4, (b, L)), axis=1)
    seg[0] = 0
    with jax.enable_x64(True):
        dA, dB = s4_discretize(p["log_dt"], p["Lambda"], p["P"], p["B"], Q=p["Q"])
        y, x = s4_scan(u, dA, dB, p["C"], D=D, initial_state=x0, segment_ids=seg, chunk_size=chunk_size)
        for row in range(b):
            bounds = np.flatnonzero(np.diff(seg[row])) + 1
            for i, (s0, s1) in enumerate(zip(np.r_[0, bounds], np.r_[bounds, L])):
                init = x0[row : row + 1] if i == 0 else None
                y1, x1 = s4_scan(u[row : row + 1, s0:s1], dA, dB, p["C"], D=D, initial_state=init)
                assert_close(y[row : row + 1, s0:s1], y1, tol=1e-11, name=f"row {row} segment {i}")
            assert_close(x[row : row + 1], x1, tol=1e-11, name=f"row {row} final state")
        if chunk_size is None:
            return
        w, wx = rng.standard_normal(u.shape), rng.standard_normal(x0.shape)

        def loss(q):
            def f(u, dA, dB, C, x0):
                y, x = s4_scan(u, dA, dB, C, D=D, initial_state=x0, segment_ids=seg, chunk_size=q)
                return jnp.sum(w * y) + jnp.sum(wx * jnp.real(x)) + jnp.sum(wx * jnp.imag(x))

            return f

        args = (jnp.asarray(u), dA, dB, jnp.asarray(p["C"]), jnp.asarray(x0))
        got = jax.grad(loss(chunk_size), argnums=range(5))(*args)
        want = jax.grad(loss(None), argnums=range(5))(*args)
        for name, g, g_ref in zip(("u", "dA", "dB", "C", "x0"), got, want):
            assert_close(g, g_ref, tol=1e-9, name=f"d/d{name}")


def _to_real(p):
    return [p["log_dt"]] + [part for k in NAMES for part in (p[k].real, p[k].imag)]


def _from_real(args):
    p = {"log_dt": args[0]}
    for i, k in enumerate(NAMES):
        p[k] = args[1 + 2 * i] + 1j * args[2 + 2 * i]
    return p


def test_kernel_gradients(rng):
    L = 6
    p = random_dplr(rng, h=2, n=2)
    w = rng.standard_normal((2, L))
    args = _to_real(p)
    labels = ["log_dt"] + [f"{k}.{part}" for k in NAMES for part in ("real", "imag")]

    def loss(impl, ww):
        return lambda *a: jnp.sum(ww * s4_kernel(**_from_real(a), length=L, impl=impl))

    def oracle_loss(i, v):
        a = list(args)
        a[i] = v
        q = _from_real(a)
        return float(np.sum(w * kernel_oracle(q["log_dt"], q["Lambda"], q["P"], q["Q"], q["B"], q["C"], L)))

    argnums = tuple(range(len(args)))
    with jax.enable_x64(True):
        g_xla = jax.grad(loss("xla", w), argnums)(*args)
    g32 = jax.grad(loss("xla", np.float32(w)), argnums)(*(np.float32(a) for a in args))
    for i, name in enumerate(labels):
        fd = fd_grad(lambda v: oracle_loss(i, v), args[i])
        assert_close(g_xla[i], fd, tol=1e-7, name=f"xla d/d{name}")
        assert g32[i].dtype == jnp.float32
        # fp32 loses ~1e-4 relative through the solve, dA^L and the Woodbury subtraction.
        assert_close(g32[i], g_xla[i], tol=1e-3, name=f"fp32 xla d/d{name}")


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_bad_input(rng):
    p = random_dplr(rng, h=2, n=3)
    with pytest.raises(ValueError, match=r"s4_kernel: `P` must have shape \(h, n\) = \(2, 3\); got \(2, 4\)"):
        s4_kernel(**{**p, "P": np.ones((2, 4), np.complex64)}, length=8)
    with pytest.raises(ValueError, match=r"s4_kernel: `Lambda` must have shape \(h, n\) = \(2, 3\); got \(3,\)"):
        s4_kernel(**{**p, "Lambda": np.ones(3, np.complex64)}, length=8)
    with pytest.raises(ValueError, match=r"s4_kernel: `log_dt` must have shape \(h\) = \(2\); got \(3,\)"):
        s4_kernel(**{**p, "log_dt": np.zeros(3)}, length=8)
    with pytest.raises(TypeError, match="s4_kernel: `log_dt` must be real"):
        s4_kernel(**{**p, "log_dt": p["log_dt"] + 0j}, length=8)
    with pytest.raises(ValueError, match="s4_kernel: `length` must be a positive int; got 2.0"):
        s4_kernel(**p, length=2.0)
    with pytest.raises(ValueError, match="s4_kernel: unknown impl='cauchy'"):
        s4_kernel(**p, length=8, impl="cauchy")
    dA, dB = s4_discretize(p["log_dt"], p["Lambda"], p["P"], p["B"])
    with pytest.raises(ValueError, match=r"s4_step: `dA` must have shape \(h, n, 2n\) = \(2, 3, 6\)"):
        s4_step(np.ones((1, 2)), np.zeros((1, 2, 3), np.complex64), dA[:, :, :3], dB, p["C"])
    with pytest.raises(ValueError, match=r"s4_step: `u_t` must have shape \(b, h\)"):
        s4_step(np.ones((1, 2, 1)), np.zeros((1, 2, 3), np.complex64), dA, dB, p["C"])
    with pytest.raises(ValueError, match=r"s4_scan: `initial_state` must have shape \(b, h, n\) = \(1, 2, 3\)"):
        s4_scan(np.ones((1, 4, 2)), dA, dB, p["C"], initial_state=np.zeros((2, 2, 3), np.complex64))
    with pytest.raises(ValueError, match="nplr_legs: `n` must be a positive int"):
        nplr_legs(0)
