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

Implementations (``impl=``): ``"xla"`` -- :func:`hydra_two_pass`, both directions in one batched
:func:`~ssm_jax.ops.ssd.ssd` call; ``"matrix"`` -- :func:`hydra_matrix_ref`, the (l x l) matrix;
``"pallas_gpu"`` / ``"pallas_tpu"`` (``"pallas"``) -- the same two passes on the SSD kernels
(``two_pass(ssd_impl)``), checked by the SSD kernel's own check on the doubled batch.

Hydra is built on :mod:`ssm_jax.ops.ssd`'s public surface only: its ``canonicalize`` checks each
direction, ``ssd`` runs the passes and ``ssd_matrix`` gives the two triangles of the matrix.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ssm_jax.ops import _checks
from ssm_jax.ops._explicit import call
from ssm_jax.ops._prepare import segment_starts
from ssm_jax.ops.registry import Registry

# Names, not the module: `ssm_jax.ops.ssd` is the function once the package exports it.
from ssm_jax.ops.ssd import REGISTRY as SSD_REGISTRY
from ssm_jax.ops.ssd import canonicalize as ssd_canonicalize
from ssm_jax.ops.ssd import ssd, ssd_matrix

__all__ = ["REGISTRY", "canonicalize", "hydra", "hydra_matrix", "hydra_matrix_ref", "hydra_two_pass", "two_pass"]

REGISTRY = Registry("hydra")


def _directions(op: str, dims: _checks.Dims, dt, B, C) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``dt (b, l, 2, h)``, ``B, C (b, l, 2, g, n)``: [forward, backward] stacked on axis 2."""
    return dims.array("dt", dt, "b l 2 h"), dims.array("B", B, "b l 2 g n"), dims.array("C", C, "b l 2 g n")


def canonicalize(x, dt, A, B, C, *, D=None, chunk_size=256, dt_bias=None, dt_softplus=False,
                 segment_ids=None, op: str = "hydra") -> dict:
    """Validate :func:`hydra`'s arguments. Canonical: ``B, C (b, l, 2, g, n)``, ``D (h, p)`` fp32
    or None, ``A``/``dt_bias`` fp32, ``segment_ids`` int32; the rest as given.

    The direction axis is checked here; everything else is :func:`ssd.canonicalize`'s check of one
    direction (each direction is an SSD call with the same ``A``, groups, ``dt_bias``, ids).
    """
    dims = _checks.Dims(op, **{"2": 2})
    x = dims.array("x", x, "b l h p")
    dt, B, C = _directions(op, dims, dt, B, C)
    args = ssd_canonicalize(x, dt[:, :, 0], A, B[:, :, 0], C[:, :, 0], chunk_size=chunk_size, D=D, dt_bias=dt_bias,
                            dt_softplus=dt_softplus, segment_ids=segment_ids, op=op)
    keys = ("x", "A", "D", "dt_bias", "dt_softplus", "segment_ids", "chunk_size")
    return dict(dt=dt, B=B, C=C, **{k: args[k] for k in keys})


def _continues(segment_ids):
    """(b, l) bool: position i continues the segment of i - 1 (False at 0 and at boundaries)."""
    return None if segment_ids is None else ~segment_starts(segment_ids, first=True)


def _shift(y, keep):
    """Each output one step later, zero-filled where a (segment) start is: y[i] <- y[i-1]."""
    y = jnp.concatenate([jnp.zeros_like(y[:, :1]), y[:, :-1]], axis=1)
    if keep is None:
        return y
    return jnp.where(keep[:, :, None, None], y, jnp.zeros_like(y))


def _ssd_arguments(*, x, dt, A, B, C, dt_bias, dt_softplus, segment_ids, chunk_size) -> dict:
    """The arguments of the one :func:`ssd` call that runs both directions: the batch doubled to
    [forward; time-flipped backward] (a flipped row runs each of its segments reversed)."""
    flip = lambda t: jnp.flip(t, axis=1)  # noqa: E731
    both = lambda fw, bw: jnp.concatenate([fw, flip(bw)], axis=0)  # noqa: E731
    return dict(
        x=both(x, x), dt=both(dt[:, :, 0], dt[:, :, 1]), A=A, B=both(B[:, :, 0], B[:, :, 1]),
        C=both(C[:, :, 0], C[:, :, 1]), chunk_size=chunk_size, dt_bias=dt_bias, dt_softplus=dt_softplus,
        segment_ids=None if segment_ids is None else both(segment_ids, segment_ids),
    )


def hydra_two_pass(*, x, dt, A, B, C, D, dt_bias, dt_softplus, segment_ids, chunk_size, ssd_impl="xla"):
    """Both SSD directions as one SSD call over a doubled batch [forward; time-flipped backward]."""
    b = x.shape[0]
    args = _ssd_arguments(x=x, dt=dt, A=A, B=B, C=C, dt_bias=dt_bias, dt_softplus=dt_softplus,
                          segment_ids=segment_ids, chunk_size=chunk_size)
    y = ssd(**args, impl=ssd_impl)
    # In the flipped half, the flipped ids' continuation mask zero-fills each segment's last position.
    y = _shift(y, _continues(args["segment_ids"]))
    f = jnp.promote_types(x.dtype, jnp.float32)
    out = y[:b].astype(f) + jnp.flip(y[b:], axis=1).astype(f)
    if D is not None:
        out = out + D.astype(f) * x.astype(f)
    return out.astype(x.dtype)


def two_pass(ssd_impl: str):
    """A Hydra implementation running :func:`hydra_two_pass` on SSD implementation ``ssd_impl``."""
    fn = functools.partial(hydra_two_pass, ssd_impl=ssd_impl)
    return jax.jit(fn, static_argnames=("dt_softplus", "chunk_size"))


def _matrix(dt, A, B, C, *, dt_bias, dt_softplus, segment_ids, op="hydra_matrix"):
    """(b, h, l, l) from raw dt (b, l, 2, h), as two :func:`ssd_matrix` calls; the diagonal is zero."""
    flip = lambda t: jnp.flip(t, axis=1)  # noqa: E731
    kw = dict(dt_bias=dt_bias, dt_softplus=dt_softplus, op=op)
    fw = ssd_matrix(dt[:, :, 0], A, B[:, :, 0], C[:, :, 0], segment_ids=segment_ids, **kw)
    flipped_ids = None if segment_ids is None else flip(segment_ids)
    bw = ssd_matrix(flip(dt[:, :, 1]), A, flip(B[:, :, 1]), flip(C[:, :, 1]), segment_ids=flipped_ids, **kw)

    def shift_rows(M, keep):  # (b, h, l, l): row i <- row i - 1
        M = jnp.concatenate([jnp.zeros_like(M[:, :, :1]), M[:, :, :-1]], axis=2)
        return M if keep is None else jnp.where(keep[:, None, :, None], M, 0.0)

    bw = shift_rows(bw, _continues(flipped_ids))
    return shift_rows(fw, _continues(segment_ids)) + jnp.flip(bw, axis=(2, 3))


@functools.partial(jax.jit, static_argnames=("dt_softplus", "chunk_size"))
def _matrix_impl(*, x, dt, A, B, C, D, dt_bias, dt_softplus, segment_ids, chunk_size):
    """``y = M x + D x`` with the quasiseparable matrix materialized (quadratic memory)."""
    del chunk_size
    f = jnp.promote_types(x.dtype, jnp.float32)
    M = _matrix(dt, A, B, C, dt_bias=dt_bias, dt_softplus=dt_softplus, segment_ids=segment_ids, op="hydra")
    y = jnp.einsum("bhij,bjhp->bihp", M, x.astype(f), precision=jax.lax.Precision.HIGHEST)
    if D is not None:
        y = y + D.astype(f) * x.astype(f)
    return y.astype(x.dtype)


REGISTRY.register("xla", two_pass("xla"))
REGISTRY.register("matrix", _matrix_impl, auto_backends=())


def _ssd_kernel_check(ssd_impl: str):
    """Hydra's check for ``two_pass(ssd_impl)``: the SSD kernel's own check, on the canonical form
    (shapes only, by :func:`jax.eval_shape`) of the SSD call that :func:`hydra_two_pass` makes."""

    def check(ctx) -> str | None:
        arrays = {k: ctx[k] for k in ("x", "dt", "A", "B", "C", "dt_bias", "segment_ids")}
        static = {k: ctx[k] for k in ("dt_softplus", "chunk_size")}
        plain = {}

        def canonical(arrays):
            args = ssd_canonicalize(**_ssd_arguments(**arrays, **static))
            plain.update({k: v for k, v in args.items() if not isinstance(v, jax.Array)})
            return {k: v for k, v in args.items() if isinstance(v, jax.Array)}

        shapes = jax.eval_shape(canonical, arrays)
        return SSD_REGISTRY[ssd_impl].why_not({**shapes, **plain, "backend": ctx["backend"]})

    return check


# The fused kernels run Hydra as one SSD kernel call over [forward; flipped backward].
REGISTRY.register("pallas_gpu", two_pass("pallas_gpu"), check=_ssd_kernel_check("pallas_gpu"),
                  auto_backends=("gpu",), priority=10, auto_check="pallas_kernels.ssd.api:why_not_auto",
                  manual_sharding=True)
REGISTRY.register("pallas_tpu", two_pass("pallas_tpu"), check=_ssd_kernel_check("pallas_tpu"),
                  auto_backends=("tpu",), priority=10, manual_sharding=True)
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
    name, fn = REGISTRY.resolve(impl, args)
    return call(REGISTRY[name], fn, args, outputs=("x",))


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
    dt, B, C = _directions(op, dims, dt, B, C)
    M = _matrix(dt, A, B, C, dt_bias=dt_bias, dt_softplus=dt_softplus, segment_ids=segment_ids, op=op)
    if D is not None:
        D = dims.array("D", D, "h")
        M = M + D.astype(M.dtype)[:, None, None] * jnp.eye(M.shape[-1], dtype=M.dtype)
    return M


def hydra_matrix_ref(x, dt, A, B, C, *, D=None, chunk_size=256, dt_bias=None, dt_softplus=False, segment_ids=None):
    """:func:`hydra` with ``impl="matrix"``: ``y = M x + D x`` with :func:`hydra_matrix`'s ``M``
    materialized (quadratic memory; ``chunk_size`` is validated and ignored)."""
    return hydra(x, dt, A, B, C, D=D, chunk_size=chunk_size, dt_bias=dt_bias, dt_softplus=dt_softplus,
                 segment_ids=segment_ids, impl="matrix")
