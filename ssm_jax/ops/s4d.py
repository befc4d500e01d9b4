"""S4D: diagonal state space kernels (Gu, Gupta, Goel, Ré 2022, "On the Parameterization and
Initialization of Diagonal State Space Models").

Conventions. ``A, B, C`` are ``(h, n)`` complex and hold one of each conjugate pair: the real
system has ``2n`` states and its kernel is ``K = 2·Re(...)`` of the half (S4D paper, Sec. 3.2).
``log_dt (h,)`` is the log step size of each channel. ``B`` defaults to ones (the reference
implementation folds ``B`` into ``C``).

The convolution kernel (S4D paper, Alg. 1, "Vandermonde" form) is, for ``ℓ = 0..l-1``,
``K[:, ℓ] = 2·Re(Σ_n C_n dB_n dA_n^ℓ)`` with

* ZOH (Sec. 3.1): ``dA = exp(dt·A)``, ``dB = (exp(dt·A) − 1)/A · B``;
* bilinear: ``dA = (1 + dt·A/2)/(1 − dt·A/2)``, ``dB = dt·B/(1 − dt·A/2)``,

which equals running the recurrence ``x_t = dA∘x_{t-1} + dB·u_t``, ``y_t = 2·Re(C·x_t)``
(:func:`s4d_step`, :func:`s4d_scan`) from a zero state.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ssm_jax.ops._checks import Dims, check_positive_int, check_segment_ids, to_array
from ssm_jax.ops._prepare import segment_starts
from ssm_jax.ops._lti_chunked import chunked_scan
from ssm_jax.ops._explicit import scan
from ssm_jax.ops.registry import Registry
from ssm_jax.typing import Array

__all__ = ["REGISTRY", "canonicalize", "s4d_discretize", "s4d_init", "s4d_kernel", "s4d_scan", "s4d_step"]

REGISTRY = Registry("s4d_kernel")

DISCRETIZATIONS = ("zoh", "bilinear")
INITS = ("lin", "inv", "legs")


# --------------------------------------------------------------------------------------------
# Shared validation (also used by ssm_jax.ops.s4)
# --------------------------------------------------------------------------------------------


def complex_dtype(*arrays) -> jnp.dtype:
    """complex128 if any input is double precision, else complex64."""
    double = any(jnp.dtype(a.dtype) in (jnp.dtype(jnp.float64), jnp.dtype(jnp.complex128)) for a in arrays)
    return jnp.dtype(jnp.complex128 if double else jnp.complex64)


def check_float_or_complex(op: str, name: str, x: jax.Array) -> None:
    ok = (jnp.float32, jnp.float64, jnp.complex64, jnp.complex128, jnp.bfloat16, jnp.float16)
    if x.dtype not in [jnp.dtype(d) for d in ok]:
        raise TypeError(f"{op}: `{name}` must be a complex or real floating array; got dtype {x.dtype}")


def as_param(op: str, dims: Dims, name: str, x, spec: str = "h n") -> Array:
    return dims.array(name, x, spec, check=check_float_or_complex)


def check_log_dt(op: str, dims: Dims, log_dt) -> Array:
    return dims.array("log_dt", log_dt, "h")


def check_discretization(op: str, discretization) -> str:
    if discretization not in DISCRETIZATIONS:
        raise ValueError(f"{op}: `discretization` must be one of {DISCRETIZATIONS}; got {discretization!r}")
    return discretization


# --------------------------------------------------------------------------------------------
# Initializers
# --------------------------------------------------------------------------------------------


def s4d_init(h: int, n: int, method: str = "legs", *, dtype=jnp.complex64) -> tuple[Array, Array]:
    """Deterministic S4D initializations of ``A`` and ``B`` (S4D paper, Sec. 4).

    ``n`` is the number of complex modes kept (the real state size is ``N = 2n``).

    ======== ===================================================== ============================
    method   A_k, k = 0..n-1                                       B
    ======== ===================================================== ============================
    "lin"    −1/2 + iπk                                            1
    "inv"    −1/2 + i·(N/π)·(N/(2k+1) − 1)                         1
    "legs"   eigenvalues of the normal part of HiPPO-LegS          ½·V*B_LegS (the rotated HiPPO
             (:func:`ssm_jax.ops.s4.nplr_legs`; real part −1/2)    B, halved as in the S4D
                                                                   paper's approximation theorem)
    ======== ===================================================== ============================

    Returns ``A, B``, each ``(h, n)`` of ``dtype``.
    """
    op = "s4d_init"
    h = check_positive_int(op, "h", h)
    n = check_positive_int(op, "n", n)
    N = 2 * n
    k = np.arange(n, dtype=np.float64)
    if method == "lin":
        A = -0.5 + 1j * np.pi * k
        B = np.ones(n, np.complex128)
    elif method == "inv":
        A = -0.5 + 1j * (N / np.pi) * (N / (2 * k + 1) - 1)
        B = np.ones(n, np.complex128)
    elif method == "legs":
        from ssm_jax.ops.s4 import nplr_legs

        A, _, B_legs, _ = nplr_legs(n)
        B = 0.5 * B_legs
    else:
        raise ValueError(f"{op}: `method` must be one of {INITS}; got {method!r}")
    tile = lambda v: jnp.asarray(np.broadcast_to(v, (h, n)), dtype=dtype)  # noqa: E731
    return tile(A), tile(B)


# --------------------------------------------------------------------------------------------
# Discretization
# --------------------------------------------------------------------------------------------


def _phi1(z: Array) -> Array:
    """``(exp(z) − 1)/z``, finite (→ 1) and with finite gradients at z = 0."""
    small = jnp.abs(z) < 1e-6
    z_safe = jnp.where(small, jnp.ones_like(z), z)
    return jnp.where(small, 1 + z / 2, jnp.expm1(z_safe) / z_safe)


def _discretize(log_dt: Array, A: Array, B: Array, discretization: str) -> tuple[Array, Array, Array]:
    """``(dA, dB, log dA)``; all ``(h, n)`` complex."""
    dt = jnp.exp(log_dt)[:, None]
    dtA = dt * A
    if discretization == "zoh":
        return jnp.exp(dtA), dt * _phi1(dtA) * B, dtA
    denom = 1 - dtA / 2
    dA = (1 + dtA / 2) / denom
    return dA, dt * B / denom, jnp.log(dA)


def canonicalize(log_dt, A, B=None, C=None, *, op: str = "s4d_kernel") -> dict[str, Array | None]:
    """Validate the parameters of :func:`s4d_kernel` / :func:`s4d_discretize`; return them canonical.

    Canonical: ``log_dt (h,)`` real; ``A, B, C (h, n)`` in one complex dtype (complex128 when any
    is 64-bit, else complex64); ``B`` defaults to ones; ``C`` may be None.
    """
    dims = Dims(op)
    named = (("log_dt", log_dt), ("A", A), ("B", B), ("C", C))
    log_dt, A, B, C = (None if x is None else to_array(op, name, x) for name, x in named)
    dims.agree((A, "h n"), (log_dt, "h"), (B, "h n"), (C, "h n"))
    log_dt = check_log_dt(op, dims, log_dt)
    A = as_param(op, dims, "A", A)
    if B is not None:
        B = as_param(op, dims, "B", B)
    if C is not None:
        C = as_param(op, dims, "C", C)
    ctype = complex_dtype(*(x for x in (log_dt, A, B, C) if x is not None))
    rtype = jnp.finfo(ctype).dtype
    A = A.astype(ctype)
    B = jnp.ones(A.shape, ctype) if B is None else B.astype(ctype)
    C = None if C is None else C.astype(ctype)
    return dict(log_dt=log_dt.astype(rtype), A=A, B=B, C=C)


def s4d_discretize(log_dt, A, B=None, *, discretization: str = "zoh") -> tuple[Array, Array]:
    """Discretize once for decoding: ``dA, dB`` (each ``(h, n)`` complex) for :func:`s4d_step`.

    ========= ======= ================================================
    log_dt    (h,)    log step size
    A, B      (h, n)  complex (real is accepted and cast); B optional
    ========= ======= ================================================
    """
    op = "s4d_discretize"
    check_discretization(op, discretization)
    c = canonicalize(log_dt, A, B, op=op)
    dA, dB, _ = _discretize(c["log_dt"], c["A"], c["B"], discretization)
    return dA, dB


# --------------------------------------------------------------------------------------------
# Convolution kernel
# --------------------------------------------------------------------------------------------


def s4d_kernel(log_dt, A, C, length: int, *, B=None, discretization: str = "zoh", impl: str = "auto") -> Array:
    """The length-``l`` convolution kernel of a diagonal SSM (S4D paper, Alg. 1).

    ============ ========= =====================================================
    argument     shape     meaning
    ============ ========= =====================================================
    log_dt       (h,)      log step size per channel
    A            (h, n)    complex diagonal state matrix (one of each conj. pair)
    C            (h, n)    complex output matrix
    length       int       l
    B            (h, n)    complex input matrix (default ones)
    returns      (h, l)    real kernel ``K[:, ℓ] = 2·Re(Σ_n C dB dA^ℓ)``
    ============ ========= =====================================================

    Parameters in float64/complex128 give a float64 kernel, otherwise float32.
    """
    op = "s4d_kernel"
    check_discretization(op, discretization)
    length = check_positive_int(op, "length", length)
    args = {**canonicalize(log_dt, A, B, C, op=op), "length": length, "discretization": discretization}
    _, fn = REGISTRY.resolve(impl, args)
    return fn(**args)


# Above this many (h, n, l) Vandermonde entries the kernel is computed KERNEL_CHUNK entries at a
# time (a rematerialized loop over pieces of l): autodiff of the one-shot sum stores the whole
# (h, n, l) matrix for the backward pass -- 480 GB at h 768, n 32, l 2^20.
KERNEL_CHUNK = 1 << 26


def _vandermonde(coef, log_dA, ell):
    # Σ_n coef·exp(ℓ·log dA): elementwise + reduce, which XLA fuses without materializing the
    # (h, n, l) Vandermonde matrix in the forward pass. exp(ℓ·log dA) = dA^ℓ for any branch of the log.
    return 2 * jnp.real(jnp.sum(coef[:, :, None] * jnp.exp(log_dA[:, :, None] * ell), axis=1))


@functools.partial(jax.jit, static_argnames=("length", "discretization"))
def _s4d_kernel_vandermonde(*, log_dt, A, B, C, length, discretization):
    _, dB, log_dA = _discretize(log_dt, A, B, discretization)
    coef = C * dB  # (h, n)
    h, n = coef.shape
    q = max(1, KERNEL_CHUNK // (h * n))
    if length <= q:
        return _vandermonde(coef, log_dA, jnp.arange(length, dtype=log_dt.dtype))
    c = -(-length // q)
    ells = jnp.arange(c * q, dtype=log_dt.dtype).reshape(c, q)
    K = lax.map(jax.checkpoint(lambda ell: _vandermonde(coef, log_dA, ell)), ells)  # (c, h, q)
    return jnp.moveaxis(K, 0, 1).reshape(h, c * q)[:, :length]


REGISTRY.register("xla", _s4d_kernel_vandermonde, priority=10)  # Vandermonde sum, fused by XLA


# --------------------------------------------------------------------------------------------
# Recurrent form
# --------------------------------------------------------------------------------------------


def check_step_args(op, u, state, dA, dB, C, D, *, step: bool, dense_dA: bool = False):
    """Validate a step (``u_t (b, h)``, ``state``) or a scan (``u (b, l, h)``, ``initial_state``).

    ``dA`` is diagonal ``(h, n)`` (S4D), or with ``dense_dA`` the ``(h, n, 2n)`` rows of S4's
    bilinear matrix (:func:`ssm_jax.ops.s4.s4_discretize`).
    """
    u_name, u_spec, x_name = ("u_t", "b h", "state") if step else ("u", "b l h", "initial_state")
    dims = Dims(op)
    u = dims.array(u_name, u, u_spec)
    if not dense_dA:
        dA = as_param(op, dims, "dA", dA)
    dB = as_param(op, dims, "dB", dB)
    C = as_param(op, dims, "C", C)
    if dense_dA:
        dA = to_array(op, "dA", dA)
        check_float_or_complex(op, "dA", dA)
        h, n = dims["h"], dims["n"]
        if dA.shape != (h, n, 2 * n):
            raise ValueError(f"{op}: `dA` must have shape (h, n, 2n) = ({h}, {n}, {2 * n}) (from s4_discretize); "
                             f"got {tuple(dA.shape)}")
    if step and state is None:
        raise TypeError(f"{op}: `state` must be a (b, h, n) complex array (zeros before the first step); got None")
    state = None if state is None else dims.array(x_name, state, "b h n", check=check_float_or_complex)
    D = None if D is None else dims.array("D", D, "h")
    ctype = complex_dtype(dA, dB, C)
    return u, state, dA.astype(ctype), dB.astype(ctype), C.astype(ctype), D, ctype


def readout(x, C, D, u_t):
    """``y_t = 2·Re(C·x) + D·u_t`` from the kept half of the state (its conjugate half doubles the
    real part): the output of S4D's and S4's recurrences."""
    y = 2 * jnp.real(jnp.sum(C * x, axis=-1))
    if D is not None:
        y = y + D.astype(y.dtype) * u_t.astype(y.dtype)
    return y


@jax.jit
def _step(u_t, x, dA, dB, C, D):
    x = dA * x + dB * u_t[..., None].astype(x.dtype)
    return readout(x, C, D, u_t), x


def s4d_step(u_t, state, dA, dB, C, *, D=None) -> tuple[Array, Array]:
    """One recurrent step ``x = dA∘x + dB·u_t``, ``y_t = 2·Re(C·x) + D·u_t``.

    ============ ========== ==============================================
    u_t          (b, h)     input at this step
    state        (b, h, n)  complex state (zeros before the first step)
    dA, dB       (h, n)     from :func:`s4d_discretize`
    C            (h, n)     complex output matrix
    D            (h,)       skip (optional)
    returns      y_t (b, h) in ``u_t.dtype``, new state (b, h, n) complex
    ============ ========== ==============================================
    """
    u_t, state, dA, dB, C, D, ctype = check_step_args("s4d_step", u_t, state, dA, dB, C, D, step=True)
    y, x = _step(u_t, state.astype(ctype), dA, dB, C, D)
    return y.astype(u_t.dtype), x


def s4d_scan(u, dA, dB, C, *, D=None, initial_state=None, segment_ids=None, chunk_size=None) -> tuple[Array, Array]:
    """The recurrence ``x_t = dA∘x_{t-1} + dB·u_t``, ``y_t = 2·Re(C·x_t) + D·u_t`` over a sequence.

    ============== =========== ==========================================================
    u              (b, l, h)   real input
    dA, dB, C      (h, n)      complex (from :func:`s4d_discretize`)
    D              (h,)        skip (optional)
    initial_state  (b, h, n)   complex state before position 0 (default zeros)
    segment_ids    (b, l) int  packed sequences: the state restarts from zero where the id
                               changes (nothing crosses a boundary)
    chunk_size     int | None  None: ``lax.scan`` position by position (the reference, and
                               prefill for decoding). An int ``q``: the parallel chunked form,
                               exact up to rounding (below)
    returns        y (b, l, h) in ``u.dtype``; final state (b, h, n) complex
    ============== =========== ==========================================================

    The chunked form (the SSD paper's chunked algorithm, Mamba-2 Sec. 6, with a diagonal complex
    decay): inside chunks of ``q`` positions the output is the convolution with the masked
    Toeplitz matrix of ``K[ℓ] = 2·Re(Σ_n C dB dA^ℓ)`` (same-segment pairs only); each chunk's
    end state comes from its own inputs plus the previous chunk's state when no segment starts
    inside; the state entering a chunk reaches its positions up to the first segment start. Work
    ``O(b·l·h·(q + n))``, depth ``O(l/q)`` steps of an ``O(b·h·n)`` carry.
    """
    op = "s4d_scan"
    u, x0, dA, dB, C, D, ctype = check_step_args(op, u, initial_state, dA, dB, C, D, step=False)
    return run_scan(op, (_scan, _chunked), u, x0, dA, dB, C, D, ctype, segment_ids, chunk_size)


def run_scan(op, impls, u, x0, dA, dB, C, D, ctype, segment_ids, chunk_size):
    """The body of :func:`s4d_scan` / :func:`ssm_jax.ops.s4.s4_scan` on checked arguments:
    ``impls = (sequential scan, chunked form)`` of the family, both taking segment starts."""
    scan, chunked = impls
    b, l, h = u.shape
    segment_ids = check_segment_ids(op, Dims(op, b=b, l=l), segment_ids)
    starts = jnp.zeros((b, l), bool) if segment_ids is None else segment_starts(segment_ids)
    if chunk_size is not None:
        check_positive_int(op, "chunk_size", chunk_size)
        y, x = chunked(u, starts, None if x0 is None else x0.astype(ctype), dA, dB, C, D, q=int(chunk_size))
    else:
        x0 = jnp.zeros((b, h, dB.shape[-1]), ctype) if x0 is None else x0.astype(ctype)
        y, x = scan(u, starts, x0, dA, dB, C, D)
    return y.astype(u.dtype), x


def scan_with_resets(step, u, starts, x0, dA, dB, C, D):
    """``step`` folded over ``u (b, l, h)`` with ``lax.scan``, the state zeroed where ``starts``."""

    def body(x, inp):
        u_t, r_t = inp
        y, x = step(u_t, jnp.where(r_t[:, None, None], 0, x), dA, dB, C, D)
        return x, y

    x, y = scan(body, x0, (jnp.swapaxes(u, 0, 1), jnp.swapaxes(starts, 0, 1)))
    return jnp.swapaxes(y, 0, 1), x


_scan = jax.jit(functools.partial(scan_with_resets, _step))


@functools.partial(jax.jit, static_argnames=("q",))
def _chunked(u, starts, x0, dA, dB, C, D, *, q):
    q = min(q, u.shape[1])
    powers = _powers(dA, q + 1)  # dA^k, (h, n, q + 1)
    return chunked_scan(u, starts, x0, D, q=q, c=C, impulse=powers * dB[:, :, None],
                        rows=C[:, :, None] * powers[:, :, 1:], advance=lambda x, k: powers[:, :, k] * x, scale=2.0)


def _powers(dA, count):
    """``dA^k`` for ``k = 0..count-1``, ``(h, n, count)``: products, not ``exp(k log dA)``, which
    is NaN at k = 0 when a decay underflowed to 0."""
    reps = jnp.broadcast_to(dA[:, :, None], (*dA.shape, count - 1))
    return jnp.concatenate([jnp.ones_like(dA)[:, :, None], jnp.cumprod(reps, axis=-1)], axis=-1)

