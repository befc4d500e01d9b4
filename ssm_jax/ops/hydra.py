"""Hydra's bidirectional quasiseparable mixer (Hwang et al. 2024, "Hydra: Bidirectional State
Space Models Through Generalized Matrix Mixers", Sec. 3), as its reference module computes it::

    QS(X) = shift(SSD_f(X)) + flip(shift(SSD_b(flip(X)))) + D X

``SSD_f``/``SSD_b`` are two SSD (Mamba-2) passes sharing ``A`` and ``dt_bias`` with their own
``dt``, ``B``, ``C``; ``shift`` moves each output one step later and zero-fills the first;
``flip`` reverses time. In matrix form (:func:`hydra_matrix`), for positions ``i, j``::

    i > j:  C_f[i-1] . B_f[j] dt_f[j] exp(A sum_{k=j+1..i-1} dt_f[k])
    i < j:  C_b[i+1] . B_b[j] dt_b[j] exp(A sum_{k=i+1..j-1} dt_b[k])
    i = j:  D

so position ``i`` sees the strict past through the forward SSD and the strict future through the
backward one. (The reference module also adds a data-dependent ``x * fc_D(x)`` skip; that is a
layer's job: pass only the static ``D`` here and add the rest in the layer.)

``segment_ids`` packs sequences: each maximal run of equal ids is mixed exactly as if it were a
sequence of its own. The forward pass resets its state at each segment start, the backward pass
(the whole row flipped, so each segment runs reversed within itself) at each segment end, and the
shift zero-fills the first step of every segment in its direction; no entry of the matrix couples
two segments.

Implementations: ``"xla"`` -- :func:`hydra_two_pass`, both directions in one batched
:func:`~ssm_jax.ops.ssd.ssd` call; ``"matrix"`` -- :func:`hydra_matrix_ref`, the (l x l) matrix.
A kernel author runs the two passes on their SSD kernel with
``REGISTRY.register("pallas_gpu", two_pass(ssd_impl="pallas_gpu"), ...)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ssm_jax.ops import _checks
# Names, not the module: `ssm_jax.ops.ssd` is the function once the package exports it.
from ssm_jax.ops.ssd import (
    _array,
    _canonical_core,
    _canonical_D,
    _compute_dtype,
    _discretize_dt,
    _exact_einsum,
    _finish,
    _param,
    _run_index,
    _ssd_matrix,
    ssd,
)
from ssm_jax.ops.ssd import REGISTRY as SSD_REGISTRY
from ssm_jax.ops.registry import Registry

__all__ = ["REGISTRY", "canonicalize", "hydra", "hydra_matrix", "hydra_matrix_ref", "hydra_two_pass", "two_pass"]

REGISTRY = Registry("hydra")


def canonicalize(x, dt, A, B, C, *, D=None, chunk_size=256, dt_bias=None, dt_softplus=False,
                 segment_ids=None, op: str = "hydra") -> dict:
    """Validate :func:`hydra`'s arguments. Canonical: ``B, C (b, l, 2, g, n)``, ``D (h, p)`` fp32
    or None, ``A``/``dt_bias`` fp32, ``segment_ids`` int32; the rest as given."""
    dims = _checks.Dims(op, **{"2": 2})
    x, _ = _array(op, "x", x, dims, "b l h p")
    if dims["l"] < 1:
        raise ValueError(f"{op}: `x` must have at least one time step; got shape {tuple(x.shape)}")
    dt, _ = _array(op, "dt", dt, dims, "b l 2 h")
    B, _ = _array(op, "B", B, dims, "b l 2 g n")
    C, _ = _array(op, "C", C, dims, "b l 2 g n")
    # The per-direction checks (A, groups, dt_bias, segment_ids) are SSD's.
    args = _canonical_core(op, dims, dt[:, :, 0], A, B[:, :, 0], C[:, :, 0], dt_bias, dt_softplus, segment_ids)
    return dict(
        x=x, dt=dt, A=args["A"], B=B, C=C, D=_canonical_D(op, dims, D), dt_bias=args["dt_bias"],
        dt_softplus=args["dt_softplus"], segment_ids=args["segment_ids"],
        chunk_size=_checks.check_positive_int(op, "chunk_size", chunk_size),
    )


def _shift(y, keep):
    """Each output one step later, zero-filled where a (segment) start is: y[i] <- y[i-1]."""
    y = jnp.concatenate([jnp.zeros_like(y[:, :1]), y[:, :-1]], axis=1)
    if keep is None:
        return y
    return jnp.where(keep[:, :, None, None], y, jnp.zeros_like(y))


def _keep(segment_ids):
    """(b, l) bool: position i continues the segment of i - 1 (False at 0 and at boundaries)."""
    if segment_ids is None:
        return None
    same = segment_ids[:, 1:] == segment_ids[:, :-1]
    return jnp.concatenate([jnp.zeros_like(same[:, :1]), same], axis=1)


def hydra_two_pass(*, x, dt, A, B, C, D, dt_bias, dt_softplus, segment_ids, chunk_size, ssd_impl="xla"):
    """Both SSD directions as one SSD call over a doubled batch [forward; time-flipped backward]."""
    b = x.shape[0]
    flip = lambda t: jnp.flip(t, axis=1)
    seg = None if segment_ids is None else jnp.concatenate([segment_ids, flip(segment_ids)], axis=0)
    y = ssd(
        jnp.concatenate([x, flip(x)], axis=0),
        jnp.concatenate([dt[:, :, 0], flip(dt[:, :, 1])], axis=0),
        A,
        jnp.concatenate([B[:, :, 0], flip(B[:, :, 1])], axis=0),
        jnp.concatenate([C[:, :, 0], flip(C[:, :, 1])], axis=0),
        chunk_size=chunk_size, dt_bias=dt_bias, dt_softplus=dt_softplus, segment_ids=seg, impl=ssd_impl,
    )
    # In the flipped half, _keep of the flipped ids zero-fills each segment's last position.
    y = _shift(y, _keep(seg))
    f = _compute_dtype(x.dtype)
    out = y[:b].astype(f) + flip(y[b:]).astype(f)
    return _finish(out, x, D, None)


def two_pass(ssd_impl: str):
    """A Hydra implementation running :func:`hydra_two_pass` on SSD implementation ``ssd_impl``."""
    fn = functools.partial(hydra_two_pass, ssd_impl=ssd_impl)
    return jax.jit(fn, static_argnames=("dt_softplus", "chunk_size"))


@jax.jit
def _hydra_matrix(dt, A, B, C, segment_ids):
    """(b, h, l, l) from discretized dt (b, l, 2, h); the diagonal is left zero."""
    flip = lambda t: jnp.flip(t, axis=1)
    run = None if segment_ids is None else _run_index(segment_ids)
    fw = _ssd_matrix(dt[:, :, 0], A, B[:, :, 0], C[:, :, 0], run)
    bw = _ssd_matrix(flip(dt[:, :, 1]), A, flip(B[:, :, 1]), flip(C[:, :, 1]), None if run is None else flip(run))

    def shift_rows(M, keep):  # (b, h, l, l): row i <- row i - 1
        M = jnp.concatenate([jnp.zeros_like(M[:, :, :1]), M[:, :, :-1]], axis=2)
        return M if keep is None else jnp.where(keep[:, None, :, None], M, 0.0)

    bw = shift_rows(bw, None if segment_ids is None else _keep(flip(segment_ids)))
    return shift_rows(fw, _keep(segment_ids)) + jnp.flip(bw, axis=(2, 3))


@functools.partial(jax.jit, static_argnames=("dt_softplus", "chunk_size"))
def hydra_matrix_ref(*, x, dt, A, B, C, D, dt_bias, dt_softplus, segment_ids, chunk_size):
    """``y = M x + D x`` with the quasiseparable matrix materialized (quadratic memory)."""
    del chunk_size
    f = _compute_dtype(x.dtype)
    dt = _discretize_dt(dt, dt_bias, dt_softplus, f)
    M = _hydra_matrix(dt, A, B, C, segment_ids)
    y = _exact_einsum("bhij,bjhp->bihp", M, x.astype(f))
    return _finish(y, x, D, None)


REGISTRY.register("xla", two_pass("xla"), doc="two SSD passes (chunked XLA SSD), batched")
REGISTRY.register("matrix", hydra_matrix_ref, auto_backends=(), doc="materialized (l x l) quasiseparable matrix")


def _ssd_kernel_check(ssd_impl: str):
    """Hydra's check for ``two_pass(ssd_impl)``: the SSD kernel's own check on the doubled batch."""

    def check(ctx) -> str | None:
        b, l, h, p = ctx["x"].shape
        g, n = ctx["B"].shape[-2:]
        sds = jax.ShapeDtypeStruct
        seg = ctx.get("segment_ids")
        ssd_ctx = {
            "x": sds((2 * b, l, h, p), ctx["x"].dtype), "dt": sds((2 * b, l, h), ctx["dt"].dtype),
            "A": ctx["A"], "B": sds((2 * b, l, g, n), ctx["B"].dtype), "C": sds((2 * b, l, g, n), ctx["C"].dtype),
            "D": None, "z": None, "dt_bias": ctx.get("dt_bias"), "dt_softplus": ctx["dt_softplus"],
            "initial_state": None, "segment_ids": None if seg is None else sds((2 * b, l), seg.dtype),
            "chunk_size": ctx["chunk_size"], "return_final_state": False, "backend": ctx["backend"],
        }
        return SSD_REGISTRY[ssd_impl].why_not(ssd_ctx)

    return check


# The fused kernels run Hydra as one SSD kernel call over [forward; flipped backward].
REGISTRY.register("pallas_gpu", two_pass("pallas_gpu"), check=_ssd_kernel_check("pallas_gpu"),
                  auto_backends=("gpu",), priority=10, doc="two SSD passes on the Mosaic GPU SSD kernel")
REGISTRY.register("pallas_tpu", two_pass("pallas_tpu"), check=_ssd_kernel_check("pallas_tpu"),
                  auto_backends=("tpu",), priority=10, doc="two SSD passes on the Mosaic TPU SSD kernel")
REGISTRY.alias("pallas", {"gpu": "pallas_gpu", "tpu": "pallas_tpu"})


def hydra(x, dt, A, B, C, *, D=None, chunk_size=256, dt_bias=None, dt_softplus=False,
          segment_ids=None, impl="auto"):
    """Hydra's quasiseparable mixer: ``shift(SSD_f(x)) + flip(shift(SSD_b(flip(x)))) + D x``.

    ===========  =================  ======================================================
    argument     shape              meaning
    ===========  =================  ======================================================
    x            (b, l, h, p)       input, per head
    dt           (b, l, 2, h)       step sizes [forward, backward], in original time order
    A            (h,)               scalar decay per head, shared by both directions
    B, C         (b, l, 2, g, n)    [forward, backward] projections, in original time
                                    order; head i uses group ``i // (h // g)``
    D            (h,) or (h, p)     diagonal (skip) term
    chunk_size   int                chunk length of the SSD passes
    dt_bias      (h,)               shared by both directions
    dt_softplus  bool               ``dt <- softplus(dt + dt_bias)``
    segment_ids  (b, l) int         packed sequences, each mixed on its own
    impl         str                ``"auto"``, ``"xla"``, ``"matrix"``, or a registered kernel
    returns      (b, l, h, p)       in x's dtype
    ===========  =================  ======================================================
    """
    args = canonicalize(x, dt, A, B, C, D=D, chunk_size=chunk_size, dt_bias=dt_bias,
                        dt_softplus=dt_softplus, segment_ids=segment_ids)
    _, fn = REGISTRY.resolve(impl, args)
    return fn(**args)


def hydra_matrix(dt, A, B, C, *, D=None, dt_bias=None, dt_softplus=False, segment_ids=None):
    """The quasiseparable matrix ``M`` of :func:`hydra`: ``y[:, i, h] = sum_j M[:, h, i, j] x[:, j, h]``.

    ===========  =================  ==================================================
    argument     shape              meaning
    ===========  =================  ==================================================
    dt           (b, l, 2, h)       step sizes [forward, backward]
    A            (h,)               scalar decay per head
    B, C         (b, l, 2, g, n)    [forward, backward] projections
    D            (h,)               put on the diagonal (per-channel ``(h, p)`` D has no
                                    place in a per-head matrix)
    segment_ids  (b, l) int         entries coupling two segments are zero
    returns      (b, h, l, l)       fp32
    ===========  =================  ==================================================
    """
    op = "hydra_matrix"
    dims = _checks.Dims(op, **{"2": 2})
    dt, _ = _array(op, "dt", dt, dims, "b l 2 h")
    B, _ = _array(op, "B", B, dims, "b l 2 g n")
    C, _ = _array(op, "C", C, dims, "b l 2 g n")
    args = _canonical_core(op, dims, dt[:, :, 0], A, B[:, :, 0], C[:, :, 0], dt_bias, dt_softplus, segment_ids)
    f = _compute_dtype(dt.dtype)
    dt = _discretize_dt(dt, args["dt_bias"], args["dt_softplus"], f)
    M = _hydra_matrix(dt, args["A"], B, C, args["segment_ids"])
    if D is not None:
        D, _ = _param(op, "D", D, dims, "h")
        M = M + D[:, None, None] * jnp.eye(M.shape[-1], dtype=M.dtype)
    return M
