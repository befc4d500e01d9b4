"""ssm_jax.ops.s4d against float64 NumPy oracles: the Vandermonde kernel equals the impulse
response of the explicitly discretized full (2n-state) system (CNN = RNN) for ZOH and bilinear
and every init; the step/scan forms; gradients (finite differences in float64, fp32 against
float64); extreme step sizes; bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from ssm_jax.ops import fft_conv, hippo_legs, s4d_discretize, s4d_init, s4d_kernel, s4d_scan, s4d_step
from tests.numerics import assert_close, fd_grad

# --------------------------------------------------------------------------------------------
# Oracle: the full complex system with both halves of each conjugate pair, discretized with
# dense matrix functions (Van Loan's block exponential for ZOH), run as a loop.
# --------------------------------------------------------------------------------------------


def discretize_oracle(dt, A, B, discretization):
    """One channel: A, B (n,) complex → dense dA (2n, 2n), dB (2n,) of the full system."""
    Af = np.diag(np.concatenate([A, A.conj()]))
    Bf = np.concatenate([B, B.conj()])
    N = Af.shape[0]
    if discretization == "zoh":
        M = np.zeros((N + 1, N + 1), np.complex128)
        M[:N, :N] = Af
        M[:N, N] = Bf
        E = scipy.linalg.expm(dt * M)  # [[e^{dtA}, ∫_0^dt e^{sA} ds B], [0, 1]]
        return E[:N, :N], E[:N, N]
    I = np.eye(N)
    return np.linalg.solve(I - dt / 2 * Af, I + dt / 2 * Af), np.linalg.solve(I - dt / 2 * Af, dt * Bf)


def recurrence_oracle(u, log_dt, A, B, C, D=None, discretization="zoh"):
    """u (b, l, h) → y (b, l, h): x_t = dA x_{t-1} + dB u_t, y_t = C_full x_t (+ D u_t)."""
    u = np.asarray(u, np.float64)
    b, l, h = u.shape
    y = np.zeros((b, l, h))
    for c in range(h):
        dA, dB = discretize_oracle(np.exp(log_dt[c]), A[c], B[c], discretization)
        Cf = np.concatenate([C[c], C[c].conj()])
        x = np.zeros((b, dA.shape[0]), np.complex128)
        for t in range(l):
            x = x @ dA.T + u[:, t, c, None] * dB
            out = x @ Cf
            assert np.abs(out.imag).max() <= 1e-9 * max(1.0, np.abs(out.real).max())  # a real system
            y[:, t, c] = out.real
    if D is not None:
        y += np.asarray(D, np.float64) * u
    return y


def kernel_oracle(log_dt, A, B, C, length, discretization):
    """The impulse response of the recurrence: (h, l)."""
    h = len(log_dt)
    u = np.zeros((h, length, h))
    u[np.arange(h), 0, np.arange(h)] = 1.0
    y = recurrence_oracle(u, log_dt, A, B, C, discretization=discretization)
    return y[np.arange(h), :, np.arange(h)]


def make_params(rng, h=3, n=4, method="lin", *, random_B=True):
    with jax.enable_x64(True):
        A, B = (np.array(v, np.complex128) for v in s4d_init(h, n, method, dtype=jnp.complex128))
    if random_B:
        B = B * (1 + 0.3 * (rng.standard_normal((h, n)) + 1j * rng.standard_normal((h, n))))
    C = (rng.standard_normal((h, n)) + 1j * rng.standard_normal((h, n))) / np.sqrt(2 * n)
    log_dt = rng.uniform(np.log(1e-2), np.log(2e-1), h)
    return log_dt, A, B, C


# --------------------------------------------------------------------------------------------
# Initializers
# --------------------------------------------------------------------------------------------


def test_init_values():
    A, B = s4d_init(2, 3, "lin")
    assert A.shape == B.shape == (2, 3) and A.dtype == jnp.complex64
    assert_close(A[1], np.array([-0.5, -0.5 + np.pi * 1j, -0.5 + 2 * np.pi * 1j]), name="S4D-Lin A")
    assert_close(B, np.ones((2, 3)), name="S4D-Lin B")
    A, _ = s4d_init(1, 2, "inv")  # N = 4: (4/π)(4/1 − 1) and (4/π)(4/3 − 1)
    assert_close(A[0], np.array([-0.5 + 12j / np.pi, -0.5 + 4j / (3 * np.pi)]), name="S4D-Inv A")


def test_init_legs_is_the_diagonal_part_of_hippo_legs():
    n = 5
    with jax.enable_x64(True):
        A, B = (np.asarray(v[0], np.complex128) for v in s4d_init(1, n, "legs", dtype=jnp.complex128))
    H, b = hippo_legs(2 * n)
    P = np.sqrt(np.arange(2 * n) + 0.5)
    w, V = np.linalg.eig(H + np.outer(P, P))  # the normal part, diagonalized independently
    keep = w.imag > 0
    w, V = w[keep], V[:, keep]
    order = np.argsort(w.imag)
    assert_close(A, w[order], tol=1e-10, name="A = eigenvalues of the normal part")
    # |v*B| does not depend on the phase of each eigenvector; S4D-LegS halves B.
    assert_close(np.abs(2 * B), np.abs(V[:, order].conj().T @ b), tol=1e-10, name="|2B| = |V*B|")


# --------------------------------------------------------------------------------------------
# Kernel = recurrence
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lin", "inv", "legs"])
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_kernel_equals_impulse_response(rng, method, discretization):
    L = 12
    log_dt, A, B, C = make_params(rng, method=method)
    want = kernel_oracle(log_dt, A, B, C, L, discretization)
    with jax.enable_x64(True):
        got = s4d_kernel(log_dt, A, C, L, B=B, discretization=discretization)
        assert got.dtype == jnp.float64 and got.shape == (3, L)
        assert_close(got, want, tol=1e-11, name="kernel float64")
    got32 = s4d_kernel(np.float32(log_dt), A.astype(np.complex64), C.astype(np.complex64), L, B=B.astype(np.complex64),
                       discretization=discretization)  # fmt: skip
    assert got32.dtype == jnp.float32
    assert_close(got32, want, tol=1e-5, name="kernel float32")


def test_default_B_is_ones(rng):
    log_dt, A, _, C = make_params(rng, random_B=False)
    want = kernel_oracle(log_dt, A, np.ones_like(A), C, 9, "zoh")
    with jax.enable_x64(True):
        assert_close(s4d_kernel(log_dt, A, C, 9), want, tol=1e-11, name="B=None")


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_cnn_equals_rnn_and_step(rng, discretization):
    b, L, h = 2, 10, 3
    log_dt, A, B, C = make_params(rng, h=h, method="legs")
    D = rng.standard_normal(h)
    u = rng.standard_normal((b, L, h))
    want = recurrence_oracle(u, log_dt, A, B, C, D, discretization)
    with jax.enable_x64(True):
        K = s4d_kernel(log_dt, A, C, L, B=B, discretization=discretization)
        assert_close(fft_conv(u, K, D=D), want, tol=1e-11, name="convolution")
        dA, dB = s4d_discretize(log_dt, A, B, discretization=discretization)
        y_scan, x_final = s4d_scan(u, dA, dB, C, D=D)
        assert_close(y_scan, want, tol=1e-11, name="s4d_scan")
        state = jnp.zeros((b, h, A.shape[1]), jnp.complex128)
        ys = []
        for t in range(L):
            y_t, state = s4d_step(u[:, t], state, dA, dB, C, D=D)
            ys.append(y_t)
        assert_close(jnp.stack(ys, 1), want, tol=1e-11, name="s4d_step folded")
        assert_close(state, x_final, tol=1e-11, name="final state")
        # Prefill the first 4 steps with the scan, continue with steps.
        _, state = s4d_scan(u[:, :4], dA, dB, C, D=D)
        for t in range(4, L):
            y_t, state = s4d_step(u[:, t], state, dA, dB, C, D=D)
            assert_close(y_t, want[:, t], tol=1e-11, name=f"step after prefill, t={t}")
        # Chaining two scans through initial_state equals one.
        y1, x1 = s4d_scan(u[:, :3], dA, dB, C, D=D)
        y2, x2 = s4d_scan(u[:, 3:], dA, dB, C, D=D, initial_state=x1)
        assert_close(jnp.concatenate([y1, y2], 1), want, tol=1e-11, name="chained scans")
    # fp32 and bf16 inputs
    f32 = lambda a: np.asarray(a, np.complex64 if np.iscomplexobj(a) else np.float32)  # noqa: E731
    dA32, dB32 = s4d_discretize(f32(log_dt), f32(A), f32(B), discretization=discretization)
    y32, _ = s4d_scan(f32(u), dA32, dB32, f32(C), D=f32(D))
    assert y32.dtype == jnp.float32
    assert_close(y32, want, name="s4d_scan float32")
    K32 = s4d_kernel(f32(log_dt), f32(A), f32(C), L, B=f32(B), discretization=discretization)
    ub = jnp.asarray(u, jnp.bfloat16)
    yb = fft_conv(ub, K32, D=f32(D))
    assert yb.dtype == jnp.bfloat16
    assert_close(yb, recurrence_oracle(np.asarray(ub, np.float64), log_dt, A, B, C, D, discretization), name="bf16 conv")


# --------------------------------------------------------------------------------------------
# Packed sequences and the chunked form
# --------------------------------------------------------------------------------------------


def _scan_inputs(rng, b=2, L=37, h=3, n=4):
    log_dt, A, B, C = make_params(rng, h=h, n=n, method="legs")
    u = rng.standard_normal((b, L, h))
    D = rng.standard_normal(h)
    x0 = rng.standard_normal((b, h, n)) + 1j * rng.standard_normal((b, h, n))
    seg = np.sort(rng.integers(0, 5, (b, L)), axis=1)
    seg[0, :] = 0  # one row without boundaries
    seg[1, 1] = seg[1, 0] + 7  # a segment of length 1 at the start
    return log_dt, A, B, C, u, D, x0, seg


@pytest.mark.parametrize("chunk_size", [None, 1, 8, 37, 64])
def test_segments_equal_separate_runs(rng, chunk_size):
    """With segment_ids every segment runs as if alone (the initial state reaches only the first)."""
    log_dt, A, B, C, u, D, x0, seg = _scan_inputs(rng)
    with jax.enable_x64(True):
        dA, dB = s4d_discretize(log_dt, A, B)
        y, x = s4d_scan(u, dA, dB, C, D=D, initial_state=x0, segment_ids=seg, chunk_size=chunk_size)
        for row in range(u.shape[0]):
            bounds = np.flatnonzero(np.diff(seg[row])) + 1
            for i, (s0, s1) in enumerate(zip(np.r_[0, bounds], np.r_[bounds, u.shape[1]])):
                init = x0[row : row + 1] if i == 0 else None
                y_alone, x_alone = s4d_scan(u[row : row + 1, s0:s1], dA, dB, C, D=D, initial_state=init)
                assert_close(y[row : row + 1, s0:s1], y_alone, tol=1e-12, name=f"row {row} segment {i}")
            assert_close(x[row : row + 1], x_alone, tol=1e-12, name=f"row {row} final state")


@pytest.mark.parametrize("options", [(), ("segments",), ("state",), ("segments", "state")])
def test_chunked_equals_scan_with_gradients(rng, options):
    log_dt, A, B, C, u, D, x0, seg = _scan_inputs(rng, L=21)
    kw = dict(D=D, segment_ids=seg if "segments" in options else None)
    with jax.enable_x64(True):
        dA, dB = s4d_discretize(log_dt, A, B)
        w = rng.standard_normal(u.shape)
        wx = rng.standard_normal(x0.shape)

        def loss(chunk_size):
            def f(u, dA, dB, C, x0):
                y, x = s4d_scan(u, dA, dB, C, initial_state=x0 if "state" in options else None, chunk_size=chunk_size, **kw)
                return jnp.sum(w * y) + jnp.sum(wx * jnp.real(x)) + jnp.sum(wx * jnp.imag(x))

            return f

        args = (jnp.asarray(u), dA, dB, jnp.asarray(C), jnp.asarray(x0))
        want = jax.grad(loss(None), argnums=range(5))(*args)
        for q in (4, 21, 32):
            assert_close(loss(q)(*args), loss(None)(*args), tol=1e-12, name=f"loss q={q}")
            got = jax.grad(loss(q), argnums=range(5))(*args)
            for name, g, g_ref in zip(("u", "dA", "dB", "C", "x0"), got, want):
                assert_close(g, g_ref, tol=1e-10, name=f"d/d{name} q={q}")
    # float32: the chunked form against the float64 scan
    f32 = lambda a: np.asarray(a, np.complex64 if np.iscomplexobj(a) else np.float32)  # noqa: E731
    dA32, dB32 = s4d_discretize(f32(log_dt), f32(A), f32(B))
    y32, _ = s4d_scan(f32(u), dA32, dB32, f32(C), D=f32(D), segment_ids=kw["segment_ids"], chunk_size=8)
    assert y32.dtype == jnp.float32
    with jax.enable_x64(True):
        dA, dB = s4d_discretize(log_dt, A, B)
        y64, _ = s4d_scan(u, dA, dB, C, **kw)
    assert_close(y32, y64, name="float32 chunked")


def test_chunked_survives_decay_underflow(rng):
    """dA = 0 (a decay that underflowed): powers are products, so no exp(0 * log 0) = NaN."""
    log_dt, A, B, C, u, D, x0, seg = _scan_inputs(rng, L=10)
    dA, dB = s4d_discretize(np.float32(log_dt), np.complex64(A), np.complex64(B))
    dA = dA.at[0, 0].set(0.0)
    y_ref, x_ref = s4d_scan(np.float32(u), dA, dB, np.complex64(C), segment_ids=seg)
    y, x = s4d_scan(np.float32(u), dA, dB, np.complex64(C), segment_ids=seg, chunk_size=4)
    assert_close(y, y_ref, name="y")
    assert_close(x, x_ref, name="final state")


def test_scan_bad_segments_and_chunk_size(rng):
    log_dt, A, B, C, u, D, x0, seg = _scan_inputs(rng, L=6)
    dA, dB = s4d_discretize(np.float32(log_dt), np.complex64(A), np.complex64(B))
    with pytest.raises(ValueError, match=r"s4d_scan: `segment_ids` must have shape \(b, l\) = \(2, 6\); got \(2, 5\)"):
        s4d_scan(u, dA, dB, C, segment_ids=seg[:, :5])
    with pytest.raises(TypeError, match="s4d_scan: `segment_ids` must have an integer dtype"):
        s4d_scan(u, dA, dB, C, segment_ids=seg.astype(np.float32))
    with pytest.raises(ValueError, match="s4d_scan: `chunk_size` must be a positive int; got 0"):
        s4d_scan(u, dA, dB, C, chunk_size=0)


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


def _split(log_dt, A, B, C):
    return [log_dt, A.real, A.imag, B.real, B.imag, C.real, C.imag]


def _kernel_loss(w, L, discretization):
    def loss(log_dt, Ar, Ai, Br, Bi, Cr, Ci):
        K = s4d_kernel(log_dt, Ar + 1j * Ai, Cr + 1j * Ci, L, B=Br + 1j * Bi, discretization=discretization)
        return jnp.sum(w * K)

    return loss


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_kernel_gradients_finite_differences(rng, discretization):
    L, h, n = 9, 2, 3
    log_dt, A, B, C = make_params(rng, h=h, n=n, method="legs")
    w = rng.standard_normal((h, L))
    params = _split(log_dt, A, B, C)
    names = ["log_dt", "A.real", "A.imag", "B.real", "B.imag", "C.real", "C.imag"]

    def oracle_loss(i, v):
        p = list(params)
        p[i] = v
        return float(np.sum(w * kernel_oracle(p[0], p[1] + 1j * p[2], p[3] + 1j * p[4], p[5] + 1j * p[6], L, discretization)))

    with jax.enable_x64(True):
        grads = jax.grad(_kernel_loss(w, L, discretization), argnums=tuple(range(7)))(*params)
    grads32 = jax.grad(_kernel_loss(np.float32(w), L, discretization), argnums=tuple(range(7)))(*(np.float32(p) for p in params))
    for i, (name, g, g32) in enumerate(zip(names, grads, grads32)):
        assert_close(g, fd_grad(lambda v: oracle_loss(i, v), params[i]), tol=1e-7, name=f"d/d{name}")
        assert g32.dtype == jnp.float32
        assert_close(g32, g, tol=1e-5, name=f"fp32 d/d{name} vs float64")


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_extreme_step_sizes_and_A_near_zero(rng, discretization):
    h, n, L = 4, 3, 16
    _, A, B, C = make_params(rng, h=h, n=n)
    log_dt = np.array([-18.0, -6.0, 2.0, 6.0])  # dt from 1.5e-8 to 400
    A[0, 0] = A[1, 0] = -1e-9  # a (nearly) marginal mode
    A[2, 0] = 0.0
    want = kernel_oracle(log_dt, A, B, C, L, discretization)
    w = rng.standard_normal((h, L))
    with jax.enable_x64(True):
        assert_close(s4d_kernel(log_dt, A, C, L, B=B, discretization=discretization), want, tol=1e-9, name="float64")
    p32 = [np.float32(p) for p in _split(log_dt, A, B, C)]
    K32 = s4d_kernel(p32[0], p32[1] + 1j * p32[2], p32[5] + 1j * p32[6], L, B=p32[3] + 1j * p32[4], discretization=discretization)
    assert_close(K32, want, tol=1e-4, name="float32")
    grads = jax.grad(_kernel_loss(np.float32(w), L, discretization), argnums=tuple(range(7)))(*p32)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_bad_input(rng):
    log_dt, A, B, C = make_params(rng)
    with pytest.raises(ValueError, match=r"s4d_kernel: `A` must have shape \(h, n\) = \(3, 4\); got \(2, 4\)"):
        s4d_kernel(log_dt, A[:2], C, 8)
    # The argument that disagrees with the others is the one named (issue 19).
    with pytest.raises(ValueError, match=r"s4d_kernel: `log_dt` must have shape \(h\) = \(3\); got \(4,\)"):
        s4d_kernel(np.zeros(4), A, C, 8)
    with pytest.raises(ValueError, match=r"s4d_discretize: `log_dt` must have shape \(h\) = \(3\); got \(4,\)"):
        s4d_discretize(np.zeros(4), A, B)
    with pytest.raises(ValueError, match=r"s4d_kernel: `C` must have shape \(h, n\) = \(3, 4\); got \(3, 5\)"):
        s4d_kernel(log_dt, A, np.ones((3, 5), np.complex64), 8)
    with pytest.raises(ValueError, match=r"s4d_kernel: `log_dt` must have shape \(h\)"):
        s4d_kernel(log_dt[:, None], A, C, 8)
    with pytest.raises(TypeError, match="s4d_kernel: `log_dt` must be real"):
        s4d_kernel(log_dt + 0j, A, C, 8)
    with pytest.raises(TypeError, match="s4d_kernel: `A` must be a complex or real floating array; got dtype int32"):
        s4d_kernel(log_dt, np.ones((3, 4), np.int32), C, 8)
    with pytest.raises(ValueError, match="s4d_kernel: `length` must be a positive int; got 0"):
        s4d_kernel(log_dt, A, C, 0)
    with pytest.raises(ValueError, match="s4d_kernel: `discretization` must be one of"):
        s4d_kernel(log_dt, A, C, 8, discretization="euler")
    with pytest.raises(ValueError, match="s4d_init: `method` must be one of"):
        s4d_init(2, 4, "random")
    dA, dB = s4d_discretize(log_dt, A, B)
    with pytest.raises(TypeError, match="s4d_step: `state` must be a"):
        s4d_step(np.ones((2, 3)), None, dA, dB, C)
    with pytest.raises(ValueError, match=r"s4d_step: `state` must have shape \(b, h, n\) = \(2, 3, 4\); got \(2, 3, 5\)"):
        s4d_step(np.ones((2, 3)), np.zeros((2, 3, 5), np.complex64), dA, dB, C)
    with pytest.raises(ValueError, match=r"s4d_scan: `u` must have shape \(b, l, h\)"):
        s4d_scan(np.ones((2, 3)), dA, dB, C)


def test_long_kernel_is_computed_in_pieces_with_the_same_values_and_gradients(rng, monkeypatch):
    """Past KERNEL_CHUNK Vandermonde entries the kernel is a rematerialized loop over pieces of
    l (autodiff of the one-shot sum would store the (h, n, l) matrix): same kernel as the float64
    oracle, same gradients as the one-shot form, a piece boundary inside the sequence."""
    from ssm_jax.ops import s4d as s4d_module

    L, h, n = 23, 2, 3
    log_dt, A, B, C = make_params(rng, h=h, n=n, method="legs")
    w = rng.standard_normal((h, L))
    params = _split(log_dt, A, B, C)
    with jax.enable_x64(True):
        one_shot = jax.grad(_kernel_loss(w, L, "zoh"), argnums=tuple(range(7)))(*params)
        monkeypatch.setattr(s4d_module, "KERNEL_CHUNK", h * n * 5)  # pieces of 5 positions: 23 = 4 x 5 + 3
        s4d_module._s4d_kernel_vandermonde.clear_cache()
        got = s4d_kernel(log_dt, A, C, L, B=B)
        assert_close(got, kernel_oracle(log_dt, A, B, C, L, "zoh"), tol=1e-11, name="kernel in pieces")
        pieces = jax.grad(_kernel_loss(w, L, "zoh"), argnums=tuple(range(7)))(*params)
        jaxpr = str(jax.make_jaxpr(lambda *p: s4d_kernel(p[0], p[1], p[2], L, B=p[3]))(log_dt, A, C, B))
    s4d_module._s4d_kernel_vandermonde.clear_cache()
    assert "scan" in jaxpr  # the loop over pieces ran
    for g, want in zip(pieces, one_shot):
        assert_close(g, want, tol=1e-11, name="gradients in pieces")
