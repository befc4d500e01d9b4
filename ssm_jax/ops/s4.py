"""S4: the diagonal-plus-low-rank (DPLR) state space kernel (Gu, Goel, Ré 2021, "Efficiently
Modeling Long Sequences with Structured State Spaces"; "the S4 paper" below).

HiPPO-LegS is normal plus low rank (NPLR, S4 paper Thm. 1): ``A = V (Λ − P Q*) V*`` with ``V``
unitary, ``Λ`` diagonal, and ``Q = P`` for LegS. In the eigenbasis the parameters are ``Λ, P, Q,
B, C`` (each ``(h, n)`` complex), keeping one of each conjugate pair as S4D does: the real system
has ``2n`` states and the kernel is real.

The kernel (S4 paper, Alg. 1) is the length-``l`` truncated generating function of the bilinear
discretization, evaluated at the roots of unity ``z_j = exp(−2πij/l)`` and inverted by an FFT.
Truncation becomes the correction ``C̃ = C (I − dA^l)`` (Lemma C.2), and the resolvent of a DPLR
matrix is four Cauchy sums through the Woodbury identity (Lemma C.3).

Recurrent form: :func:`s4_discretize` returns the dense bilinear ``dA, dB`` (S4 paper, Sec. 3.4 /
Eq. 3), and :func:`s4_step` runs ``x = dA x + dB u``, ``y = 2·Re(C x)``. Both the kernel and the
step take the *untilded* ``C``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ssm_jax.ops._checks import Dims, check_positive_int, to_array
from ssm_jax.ops.registry import Registry
from ssm_jax.ops._lti_chunked import chunked_scan, last_chunk_length
from ssm_jax.ops.s4d import as_param, check_log_dt, check_step_args, complex_dtype, readout, run_scan, scan_with_resets
from ssm_jax.typing import Array

__all__ = ["REGISTRY", "canonicalize", "hippo_legs", "nplr_legs", "s4_discretize", "s4_init", "s4_kernel", "s4_scan", "s4_step"]

REGISTRY = Registry("s4_kernel")

_HI = lax.Precision.HIGHEST


# --------------------------------------------------------------------------------------------
# HiPPO-LegS and its NPLR form (host-side float64; these are initializers)
# --------------------------------------------------------------------------------------------


def hippo_legs(N: int) -> tuple[np.ndarray, np.ndarray]:
    """The HiPPO-LegS matrices (HiPPO paper, Gu et al. 2020, Thm. 2; S4 paper Eq. 2), float64.

    ``A[i, j] = −√(2i+1)√(2j+1)`` for ``i > j``, ``−(i+1)`` for ``i = j``, 0 above the
    diagonal; ``B[i] = √(2i+1)``. Returns ``A (N, N), B (N,)`` as NumPy arrays.
    """
    N = check_positive_int("hippo_legs", "N", N)
    q = np.arange(N, dtype=np.float64)
    r = np.sqrt(2 * q + 1)
    A = -np.tril(np.outer(r, r), -1) - np.diag(q + 1)
    return A, r.copy()


def nplr_legs(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """HiPPO-LegS of size ``N = 2n`` in NPLR form, keeping one of each conjugate pair.

    ``A + P Pᵀ`` (with ``P[i] = √(i+½)``) is ``−½I`` plus a skew-symmetric matrix, so it is
    unitarily diagonalizable with eigenvalues ``−½ ± iω``. With ``V (2n, n)`` the eigenvectors
    of the ``+iω`` half (ascending ``ω``), the full basis is ``[V, conj(V)]`` and::

        A = [V, V̄] (diag(Λ, Λ̄) − [P̃; P̃̄][P̃; P̃̄]*) [V, V̄]*,   B = [V, V̄] [B̃; B̃̄]

    Returns ``Λ, P̃ = V*P, B̃ = V*B`` (each ``(n,)`` complex128) and ``V``.
    """
    n = check_positive_int("nplr_legs", "n", n)
    N = 2 * n
    A, B = hippo_legs(N)
    P = np.sqrt(np.arange(N, dtype=np.float64) + 0.5)
    S = A + np.outer(P, P)
    skew = 0.5 * (S - S.T)  # S = −½I + skew up to rounding; the symmetric part is exactly −½I.
    # -i·skew is Hermitian: eigh gives real ω (ascending, in ± pairs) and a unitary basis.
    omega, V = np.linalg.eigh(-1j * skew)
    omega, V = omega[n:], V[:, n:]
    Lambda = -0.5 + 1j * omega
    Vh = V.conj().T
    return Lambda, Vh @ P, Vh @ B, V


def s4_init(h: int, n: int, *, dtype=jnp.complex64) -> tuple[Array, Array, Array]:
    """S4-LegS parameters ``Λ, P, B`` (each ``(h, n)`` of ``dtype``) from :func:`nplr_legs`."""
    h = check_positive_int("s4_init", "h", h)
    Lambda, P, B, _ = nplr_legs(n)
    tile = lambda v: jnp.asarray(np.broadcast_to(v, (h, n)), dtype=dtype)  # noqa: E731
    return tile(Lambda), tile(P), tile(B)


# --------------------------------------------------------------------------------------------
# Validation and the dense discretization
# --------------------------------------------------------------------------------------------


def canonicalize(log_dt, Lambda, P, B, C=None, *, Q=None, op: str = "s4_kernel") -> dict[str, Array | None]:
    """Validate the parameters of :func:`s4_kernel` / :func:`s4_discretize`; return them canonical.

    Canonical: ``log_dt (h,)`` real; ``Lambda, P, B, C, Q (h, n)`` in one complex dtype
    (complex128 when any is 64-bit, else complex64); ``Q`` defaults to ``P``; ``C`` may be None.
    """
    dims = Dims(op)
    named = (("log_dt", log_dt), ("Lambda", Lambda), ("P", P), ("B", B), ("C", C), ("Q", Q))
    log_dt, Lambda, P, B, C, Q = (None if x is None else to_array(op, name, x) for name, x in named)
    dims.agree((Lambda, "h n"), (log_dt, "h"), (P, "h n"), (B, "h n"), (C, "h n"), (Q, "h n"))
    log_dt = check_log_dt(op, dims, log_dt)
    Lambda = as_param(op, dims, "Lambda", Lambda)
    P = as_param(op, dims, "P", P)
    B = as_param(op, dims, "B", B)
    if C is not None:
        C = as_param(op, dims, "C", C)
    if Q is not None:
        Q = as_param(op, dims, "Q", Q)
    ctype = complex_dtype(*(x for x in (log_dt, Lambda, P, B, C, Q) if x is not None))
    rtype = jnp.finfo(ctype).dtype
    cast = lambda x: None if x is None else x.astype(ctype)  # noqa: E731
    Q = P if Q is None else Q
    return dict(log_dt=log_dt.astype(rtype), Lambda=cast(Lambda), P=cast(P), B=cast(B), C=cast(C), Q=cast(Q))


def _full(x: Array) -> Array:
    """``(..., n)`` → ``(..., 2n)``: append the conjugate half."""
    return jnp.concatenate([x, jnp.conj(x)], axis=-1)


@jax.jit
def _dense_bilinear(log_dt, Lambda, P, Q, B) -> tuple[Array, Array]:
    """Full-system bilinear discretization (S4 paper Eq. 3): ``dA (h, 2n, 2n)``, ``dB (h, 2n)``.

    ``dA = (I − dt/2·A)⁻¹(I + dt/2·A)``, ``dB = (I − dt/2·A)⁻¹ dt·B`` with ``A = Λ − P Q*``.
    """
    dt = jnp.exp(log_dt).astype(Lambda.dtype)  # (h,)
    Lf, Pf, Qf_bar, Bf = _full(Lambda), _full(P), jnp.conj(_full(Q)), _full(B)
    N = Lf.shape[-1]
    eye = jnp.eye(N, dtype=Lf.dtype)
    half_dt = (dt / 2)[:, None]
    # (I − dt/2·A)⁻¹ = (diag(1 − dt/2·Λ) + (dt/2·P) Q*)⁻¹ by Sherman–Morrison: no LU, O(n²)
    # (the S4 paper's A₁, App. C.2). A dense complex solve is slow on CPU and TPU.
    d_inv = 1 / (1 - half_dt * Lf)  # (h, N)
    left = d_inv * (half_dt * Pf)  # D⁻¹u
    right = Qf_bar * d_inv  # vᵀD⁻¹
    denom = 1 + jnp.sum(Qf_bar * left, axis=-1)  # 1 + vᵀD⁻¹u
    A1 = eye * d_inv[:, None, :] - left[:, :, None] * right[:, None, :] / denom[:, None, None]
    A0 = eye * (1 + half_dt * Lf)[:, None, :] - (half_dt * Pf)[:, :, None] * Qf_bar[:, None, :]  # I + dt/2·A
    dA = jnp.matmul(A1, A0, precision=_HI)
    dB = jnp.einsum("hij,hj->hi", A1, dt[:, None] * Bf, precision=_HI)
    return dA, dB


def _matrix_power(M: Array, L: int) -> Array:
    """``M^L`` by repeated squaring (L static): log₂L batched matmuls."""
    result, base = None, M
    while True:
        if L & 1:
            result = base if result is None else jnp.matmul(result, base, precision=_HI)
        L >>= 1
        if not L:
            return result
        base = jnp.matmul(base, base, precision=_HI)


# --------------------------------------------------------------------------------------------
# Convolution kernel
# --------------------------------------------------------------------------------------------


def s4_kernel(log_dt, Lambda, P, B, C, length: int, *, Q=None, impl: str = "auto") -> Array:
    """The length-``l`` convolution kernel of the DPLR SSM ``(Λ − P Q*, B, C)`` (S4 paper, Alg. 1).

    ============ ========= =========================================================
    argument     shape     meaning
    ============ ========= =========================================================
    log_dt       (h,)      log step size per channel
    Lambda       (h, n)    complex diagonal part (one of each conjugate pair)
    P            (h, n)    complex rank-1 correction
    B, C         (h, n)    complex input / output matrices (``C`` untilded)
    length       int       l
    Q            (h, n)    complex; defaults to ``P`` (HiPPO-LegS)
    returns      (h, l)    real kernel ``K[:, ℓ] = C dA^ℓ dB`` of the full system
    ============ ========= =========================================================

    ``impl``: ``"xla"`` (Cauchy sums + Woodbury at the roots of unity, then an inverse FFT) or
    ``"dense"`` (powers of the dense discretized matrix, O(l n²); a reference).
    """
    op = "s4_kernel"
    length = check_positive_int(op, "length", length)
    args = {**canonicalize(log_dt, Lambda, P, B, C, Q=Q, op=op), "length": length}
    _, fn = REGISTRY.resolve(impl, args)
    return fn(**args)


@functools.partial(jax.jit, static_argnames=("length",))
def _s4_kernel_cauchy(*, log_dt, Lambda, P, Q, B, C, length):
    L = length
    n = Lambda.shape[-1]
    ctype, rtype = Lambda.dtype, log_dt.dtype
    dA, _ = _dense_bilinear(log_dt, Lambda, P, Q, B)
    # C̃ = C (I − dA^L) (Lemma C.2): at z^L = 1 the truncated sum Σ_{k<L} C dA^k dB z^k
    # equals C̃ (I − dA z)⁻¹ dB.
    Cf = _full(C)
    Ct = (Cf - jnp.einsum("hi,hij->hj", Cf, _matrix_power(dA, L), precision=_HI))[:, :n]

    # With the bilinear dA, dB, C̃(I − dA z)⁻¹dB = 2 C̃ (a − b·A)⁻¹ B, where a = (2/dt)(1−z),
    # b = 1+z. (The paper writes 2/(1+z) · C̃ (g − A)⁻¹ B with g = (2/dt)(1−z)/(1+z), which is
    # 0·∞ at z = −1, a root of unity for even L.) Scaling a, b by 1/(2e^{−iθ/2}) makes
    # a = (2/dt)·i·sin(θ/2), b = cos(θ/2) and the result e^{iθ/2} C̃ (a − b·A)⁻¹ B.
    theta = 2 * np.pi * np.arange(L // 2 + 1) / L  # rfft bins; the kernel is real
    sin_h = jnp.asarray(np.sin(theta / 2), rtype)
    b = jnp.asarray(np.cos(theta / 2), rtype)  # (F,)
    phase = jnp.asarray(np.exp(0.5j * theta), ctype)
    dt = jnp.exp(log_dt)
    a = 1j * (2 / dt)[:, None] * sin_h  # (h, F)

    # Woodbury (Lemma C.3) for (a − b·Λ + b·P Q*)⁻¹ over the full system: with the Cauchy sums
    # r(x, y) = Σ_{2n} x·y / (a − b·λ), C̃ (…)⁻¹ B = r(C̃, B) − b·r(C̃, P)·r(Q̄, B) / (1 + b·r(Q̄, P)).
    v = jnp.stack([Ct * B, Ct * P, jnp.conj(Q) * B, jnp.conj(Q) * P])  # (4, h, n)
    den = a[:, :, None] - b[:, None] * Lambda[:, None, :]  # (h, F, n)
    den_c = a[:, :, None] - b[:, None] * jnp.conj(Lambda)[:, None, :]
    # The conjugate half contributes conj(x·y) / (a − b·λ̄). Elementwise + reduce over n: XLA
    # fuses it without materializing (4, h, F, n).
    r = jnp.sum(v[:, :, None, :] / den + jnp.conj(v)[:, :, None, :] / den_c, axis=-1)  # (4, h, F)
    k_hat = phase * (r[0] - b * r[1] * r[2] / (1 + b * r[3]))
    return jnp.fft.irfft(k_hat, n=L, axis=-1).astype(rtype)


@functools.partial(jax.jit, static_argnames=("length",))
def _s4_kernel_dense(*, log_dt, Lambda, P, Q, B, C, length):
    dA, dB = _dense_bilinear(log_dt, Lambda, P, Q, B)
    Cf = _full(C)

    def body(v, _):
        k = jnp.real(jnp.sum(Cf * v, axis=-1))
        return jnp.einsum("hij,hj->hi", dA, v, precision=_HI), k

    _, K = lax.scan(body, dB, None, length=length)
    return K.T.astype(log_dt.dtype)


REGISTRY.register("xla", _s4_kernel_cauchy, priority=10)  # Cauchy + Woodbury at roots of unity, iFFT
REGISTRY.register("dense", _s4_kernel_dense, auto_backends=())  # dense matrix powers, O(l n^2) reference


# --------------------------------------------------------------------------------------------
# Recurrent form
# --------------------------------------------------------------------------------------------


def s4_discretize(log_dt, Lambda, P, B, *, Q=None) -> tuple[Array, Array]:
    """Discretize once for decoding: ``dA (h, n, 2n)``, ``dB (h, n)`` for :func:`s4_step`.

    ``dA`` holds the rows of the full ``2n × 2n`` bilinear matrix that update the kept half of
    the state; it acts on ``[x, conj(x)]``.
    """
    c = canonicalize(log_dt, Lambda, P, B, Q=Q, op="s4_discretize")
    n = c["Lambda"].shape[-1]
    dA, dB = _dense_bilinear(c["log_dt"], c["Lambda"], c["P"], c["Q"], c["B"])
    return dA[:, :n, :], dB[:, :n]


@jax.jit
def _step(u_t, x, dA, dB, C, D):
    x = jnp.einsum("hij,bhj->bhi", dA, _full(x), precision=_HI) + dB * u_t[..., None].astype(x.dtype)
    return readout(x, C, D, u_t), x


def s4_step(u_t, state, dA, dB, C, *, D=None) -> tuple[Array, Array]:
    """One recurrent step ``x = dA [x, x̄] + dB·u_t``, ``y_t = 2·Re(C x) + D·u_t``.

    ============ =========== =============================================
    u_t          (b, h)      input at this step
    state        (b, h, n)   complex state (zeros before the first step)
    dA           (h, n, 2n)  from :func:`s4_discretize`
    dB           (h, n)      from :func:`s4_discretize`
    C            (h, n)      complex output matrix (untilded)
    D            (h,)        skip (optional)
    returns      y_t (b, h) in ``u_t.dtype``, new state (b, h, n) complex
    ============ =========== =============================================
    """
    u_t, state, dA, dB, C, D, ctype = check_step_args("s4_step", u_t, state, dA, dB, C, D, step=True, dense_dA=True)
    y, x = _step(u_t, state.astype(ctype), dA, dB, C, D)
    return y.astype(u_t.dtype), x


def s4_scan(u, dA, dB, C, *, D=None, initial_state=None, segment_ids=None, chunk_size=None) -> tuple[Array, Array]:
    """:func:`s4_step` over a sequence: ``(y (b, l, h), final state (b, h, n))``.

    ============== =========== ==========================================================
    u              (b, l, h)   real input
    dA             (h, n, 2n)  from :func:`s4_discretize` (acts on ``[x, x̄]``)
    dB, C          (h, n)      complex
    D              (h,)        skip (optional)
    initial_state  (b, h, n)   complex state before position 0 (default zeros)
    segment_ids    (b, l) int  packed sequences: the state restarts from zero where the id
                               changes
    chunk_size     int | None  None: ``lax.scan`` position by position (the reference). An
                               int ``q``: the chunked form (``ssm_jax.ops._lti_chunked``) on
                               the full ``2n`` system; ``l/q`` sequential steps instead of ``l``
    ============== =========== ==========================================================
    """
    op = "s4_scan"
    u, x0, dA, dB, C, D, ctype = check_step_args(op, u, initial_state, dA, dB, C, D, step=False, dense_dA=True)
    return run_scan(op, (_scan, _chunked), u, x0, dA, dB, C, D, ctype, segment_ids, chunk_size)


_scan = jax.jit(functools.partial(scan_with_resets, _step))


@functools.partial(jax.jit, static_argnames=("q",))
def _chunked(u, starts, x0, dA, dB, C, D, *, q):
    """The chunked form on the full system ``X = [x, x̄]``: ``X' = T X + [dB, d̄B] u`` with the
    dense ``T`` (its conjugate rows are ``dA``'s with the halves of ``X`` swapped) and
    ``y = Re([C, C̄]·X)`` (= 2 Re(C x))."""
    n = dB.shape[-1]
    q = min(q, u.shape[1])
    T = jnp.concatenate([dA, jnp.conj(jnp.roll(dA, n, axis=-1))], axis=1)  # (h, 2n, 2n)

    def right(v, _):  # T^k b, k = 0..q
        return jnp.einsum("hij,hj->hi", T, v, precision=_HI), v

    _, impulse = lax.scan(right, _full(dB), None, length=q + 1)

    def left(r, _):  # c T^(t+1), t = 0..q-1
        r = jnp.einsum("hi,hij->hj", r, T, precision=_HI)
        return r, r

    _, rows = lax.scan(left, _full(C), None, length=q)
    # T^q for the carry between chunks, T^(last chunk's length) for the final state.
    powers = {k: _matrix_power(T, k) for k in {q, last_chunk_length(u.shape[1], q)}}
    y, X = chunked_scan(
        u, starts, None if x0 is None else _full(x0), D, q=q, c=_full(C),
        impulse=jnp.moveaxis(impulse, 0, -1), rows=jnp.moveaxis(rows, 0, -1),
        advance=lambda x, k: jnp.einsum("hij,bhj->bhi", powers[k], x, precision=_HI), scale=1.0,
    )
    return y, X[..., :n]

