"""Mamba-2's structured state space duality (SSD) mixer, its step form and its references.

The recurrence (Dao & Gu 2024, "Transformers are SSMs", Sec. 3 and eq. (1)), per head ``i`` with
scalar decay ``A_i`` and B/C shared by the heads of one group::

    dt    <- softplus(dt + dt_bias)                 (when dt_softplus)
    h_t    = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T   h: (p, n) per head
    y_t    = h_t C_t + D x_t,   then y <- y * silu(z)

Unrolled, ``y = M x`` with the (l x l) lower-triangular semiseparable matrix (Sec. 3.2)
``M[i, j] = C_i . B_j * dt_j * exp(sum_{k=j+1..i} dt_k A)`` for ``j <= i`` (:func:`ssd_matrix`).

Implementations (``impl=``):

* ``"xla"`` -- :func:`ssd_chunked`, the chunked SSD algorithm of Sec. 6 / Listing 1: the
  quadratic (attention-like) form inside chunks of ``q`` steps, the chunk-end states, a
  sequential pass of states between chunks, and the states' contribution to the outputs.
  Matmul operands stay in the input dtype (bf16/fp16 feed tensor cores), products accumulate
  in fp32.
* ``"scan"`` -- :func:`ssd_scan_ref`, the recurrence with ``lax.scan``: the ground truth.
* ``"quadratic"`` -- :func:`ssd_quadratic_ref`, ``y = M x`` with ``M`` materialized.
* ``"pallas_gpu"`` -- the fused chunked kernels of ``pallas_kernels/ssd`` (Mosaic GPU, Hopper);
  ``"pallas_tpu"`` -- the Mosaic TPU kernels (``pallas_kernels/ssd/api_tpu.py``); ``"pallas"`` is
  the one of the backend. Auto on their chip; named on CPU they run in interpret mode. The
  Mosaic GPU kernels multiply in bfloat16: ``auto`` picks them for 16-bit inputs only and keeps
  float32 inputs on ``"xla"`` (exact); naming ``impl="pallas_gpu"`` accepts the rounding.

The references take :func:`ssd`'s own arguments; the registered implementations take the
canonical keyword arguments of :func:`canonicalize`.

``segment_ids`` packs several sequences into one row: the state restarts from zero wherever the
id changes between neighbouring positions (a segment is a maximal run of equal ids).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ssm_jax.ops import _checks
from ssm_jax.ops._prepare import effective_dt, segment_runs, segment_starts
from ssm_jax.ops._explicit import call, reshape, scan
from ssm_jax.ops.registry import Registry

__all__ = [
    "REGISTRY",
    "canonicalize",
    "segsum",
    "ssd",
    "ssd_chunked",
    "ssd_matrix",
    "ssd_quadratic_ref",
    "ssd_scan_ref",
    "ssd_step",
]

REGISTRY = Registry("ssd")

_STATIC = ("chunk_size", "dt_softplus", "return_final_state")

# fp32 products in full fp32 on every backend (GPUs would otherwise use TF32).
_exact_einsum = functools.partial(jnp.einsum, precision=lax.Precision.HIGHEST)


# --------------------------------------------------------------------------------------------
# Validation and canonical arguments


def _compute_dtype(dtype) -> jnp.dtype:
    """fp32 for fp32 and 16-bit inputs; float64 stays float64 (finite-difference tests)."""
    return jnp.promote_types(dtype, jnp.float32)


def _param(dims: _checks.Dims, name: str, v, *specs: str):
    """A real floating argument bound to ``specs`` (:meth:`Dims.array`), cast to fp32 (float64
    stays float64): parameters and states."""
    v = dims.array(name, v, *specs)
    return v.astype(_compute_dtype(v.dtype))


def _canonical_core(op, dims, dt, A, B, C, dt_bias, dt_softplus, segment_ids, *, step=False):
    """dt, A, B, C, dt_bias, dt_softplus, segment_ids: shared by ssd, ssd_matrix, ssd_step, hydra."""
    seq = "b h" if step else "b l h"
    dt = dims.array("dt_t" if step else "dt", dt, seq)
    A = _param(dims, "A", A, "h")
    BC = {}
    for name, v in (("B", B), ("C", C)):
        name_t = name + "_t" if step else name
        grouped, flat = ("b g n", "b n") if step else ("b l g n", "b l n")
        v = dims.array(name_t, v, grouped, flat)
        if v.ndim == len(flat.split()):
            if dims.sizes.setdefault("g", 1) != 1:
                raise ValueError(f"{op}: `{name_t}` must have shape {dims.expected(grouped)}; got {tuple(v.shape)}")
            v = v[..., None, :]
        BC[name] = v
    h, g = dims["h"], dims["g"]
    if h % g:
        raise ValueError(
            f"{op}: the h={h} heads must split evenly into the g={g} groups of `B`/`C` "
            f"(h % g == 0); got `B` of shape {tuple(BC['B'].shape)} for h={h}"
        )
    if dt_bias is not None:
        dt_bias = _param(dims, "dt_bias", dt_bias, "h")
    segment_ids = _checks.check_segment_ids(op, dims, segment_ids)
    return dict(
        dt=dt, A=A, B=BC["B"], C=BC["C"], dt_bias=dt_bias,
        dt_softplus=_checks.check_bool(op, "dt_softplus", dt_softplus), segment_ids=segment_ids,
    )


def _canonical_D(op, dims, D):
    if D is None:
        return None
    D = _param(dims, "D", D, "h", "h p")
    return jnp.broadcast_to(D[:, None], (dims["h"], dims["p"])) if D.ndim == 1 else D


def canonicalize(
    x, dt, A, B, C, *, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
    initial_state=None, segment_ids=None, return_final_state=False, op: str = "ssd",
) -> dict:
    """Validate the arguments of :func:`ssd` and return them in canonical form.

    Canonical: ``B, C (b, l, g, n)``; ``A, dt_bias`` fp32 (float64 if given float64);
    ``D (h, p)`` fp32 or None; ``initial_state (b, h, p, n)`` fp32 or None; ``segment_ids (b, l)``
    int32 or None. ``x``, ``dt``, ``B``, ``C``, ``z`` keep their dtypes.
    """
    dims = _checks.Dims(op)
    x = dims.array("x", x, "b l h p")
    if dims["l"] < 1:
        raise ValueError(f"{op}: `x` must have at least one time step; got shape {tuple(x.shape)}")
    args = _canonical_core(op, dims, dt, A, B, C, dt_bias, dt_softplus, segment_ids)
    z = None if z is None else dims.array("z", z, "b l h p")
    if initial_state is not None:
        initial_state = _param(dims, "initial_state", initial_state, "b h p n")
    return dict(
        x=x, **args, D=_canonical_D(op, dims, D), z=z, initial_state=initial_state,
        chunk_size=_checks.check_positive_int(op, "chunk_size", chunk_size),
        return_final_state=_checks.check_bool(op, "return_final_state", return_final_state),
    )


# --------------------------------------------------------------------------------------------
# Shared numerics


def _masked_exp(s, mask):
    """exp(s) where mask, exactly 0 elsewhere. Masks *before* exp as well as after, so neither
    the value nor the gradient ever sees exp of an unmasked (possibly huge) entry."""
    return jnp.where(mask, jnp.exp(jnp.where(mask, s, 0.0)), 0.0)


def segsum(a):
    """Stable segment sums: ``(..., q) -> (..., q, q)`` with ``S[..., i, j] = sum_{k=j+1..i} a_k``.

    Valid for ``j <= i`` (0 above the diagonal; mask it). Computed as a cumulative sum of the
    masked repeated input rather than as ``cumsum_i - cumsum_j``, which cancels catastrophically
    once the running sum is large (Mamba-2 paper, Listing 1 ``segsum``).
    """
    q = a.shape[-1]
    rep = jnp.broadcast_to(a[..., :, None], a.shape + (q,))  # rep[..., i, j] = a_i
    strictly_lower = jnp.tril(jnp.ones((q, q), dtype=bool), -1)
    return jnp.cumsum(jnp.where(strictly_lower, rep, 0.0), axis=-2)


def _finish(y, x, D, z):
    """``y + D x``, then the ``silu(z)`` gate; back to x's dtype."""
    if D is not None:
        y = y + D.astype(y.dtype) * x.astype(y.dtype)
    if z is not None:
        zf = z.astype(y.dtype)
        y = y * zf * jax.nn.sigmoid(zf)
    return y.astype(x.dtype)


def _discretize(x, dt, dt_bias, dt_softplus):
    """The compute dtype of ``x``, and ``dt`` after ``dt_bias`` and softplus, in it."""
    f = _compute_dtype(x.dtype)
    return f, effective_dt(dt, dt_bias, dt_softplus, f)


def _per_head(B, C, h: int, f, axis: int):
    """``B``, ``C`` repeated from their groups (on ``axis``) to the ``h`` heads, in dtype ``f``."""
    return tuple(jnp.repeat(v.astype(f), h // v.shape[axis], axis=axis) for v in (B, C))


def _matmul_dtype(x_dtype, compute):
    # 16-bit inputs stay 16-bit as matmul operands (tensor cores, half the traffic); the einsums
    # accumulate in `compute` through preferred_element_type.
    return x_dtype if jnp.dtype(x_dtype).itemsize < 4 else compute


# --------------------------------------------------------------------------------------------
# "xla": the chunked SSD algorithm


@functools.partial(jax.jit, static_argnames=_STATIC)
def ssd_chunked(*, x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, segment_ids,
                chunk_size, return_final_state):
    """Chunked SSD (Mamba-2 paper Sec. 6, Listing 1) on canonical arguments.

    Segments: with run indices ``r`` (:func:`~ssm_jax.ops._prepare.segment_runs`), a contribution from position ``j``
    to position ``i`` survives only if ``r_i == r_j``. Inside a chunk that masks the decay matrix;
    the chunk-end state keeps the positions of the chunk's last run; the state entering a chunk
    reaches position ``i`` only while ``r_i`` equals the run of the position before the chunk.
    """
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    hpg = h // g  # heads per group (einsum letter r)
    f, dt = _discretize(x, dt, dt_bias, dt_softplus)
    mm = _matmul_dtype(x.dtype, f)
    # fp32 operands get full fp32 products (GPUs would use TF32 by default: ~4e-4 relative error
    # measured on an H100); 16-bit operands are exact in the fp32 accumulator anyway.
    precision = lax.Precision.HIGHEST if mm == f else None
    ein = functools.partial(jnp.einsum, preferred_element_type=f, precision=precision)

    run = None if segment_ids is None else segment_runs(segment_ids)
    q = min(chunk_size, l)
    c = -(-l // q)
    pad = c * q - l
    if pad:
        # Padded steps have dt = 0 *after* softplus: decay exp(0) = 1 and no input, so the final
        # state is carried through unchanged; they extend the last segment (no reset).
        zpad = lambda t: jnp.pad(t, [(0, 0), (0, pad)] + [(0, 0)] * (t.ndim - 2))
        x, B, C, dt = zpad(x), zpad(B), zpad(C), zpad(dt)
        if run is not None:
            run = jnp.pad(run, [(0, 0), (0, pad)], mode="edge")

    xc = reshape(x, (b, c, q, g, hpg, p)).astype(mm)
    Bc = reshape(B, (b, c, q, g, n)).astype(mm)
    Cc = reshape(C, (b, c, q, g, n)).astype(mm)
    dtc = jnp.moveaxis(reshape(dt, (b, c, q, g, hpg)), 2, -1)  # (b, c, g, hpg, q)
    a = dtc * A.reshape(g, hpg)[:, :, None].astype(f)  # log-decay per step

    # 1. Intra-chunk outputs: the quadratic form Y = (L o C B^T) (dt x) on each chunk.
    S = segsum(a)  # (b, c, g, hpg, q, q)
    causal = jnp.tril(jnp.ones((q, q), dtype=bool))
    if run is None:
        same = causal
        last_same = jnp.ones((q,), dtype=bool)
        into = jnp.ones((q,), dtype=bool)
    else:
        rc = reshape(run, (b, c, q))
        same = (rc[:, :, :, None] == rc[:, :, None, :]) & causal  # (b, c, q, q)
        last_same = same[:, :, -1, :][:, :, None, None, :]  # j is in the chunk's last run
        prev = jnp.concatenate([rc[:, :1, 0], rc[:, :-1, -1]], axis=1)  # run before each chunk
        into = (rc == prev[:, :, None])[:, :, None, None, :]  # incoming state reaches i
        same = same[:, :, None, None]
    L = _masked_exp(S, same)
    CB = ein("bcign,bcjgn->bcgij", Cc, Bc)
    scores = CB[:, :, :, None] * L * dtc[..., None, :]
    y = ein("bcgrij,bcjgrp->bcigrp", scores.astype(mm), xc)

    # 2. Chunk-end states from each chunk's own inputs. The decay from j to the chunk end is the
    # last row of the segment sums (stable; no cumsum difference).
    w = _masked_exp(S[..., -1, :], last_same) * dtc  # (b, c, g, hpg, q)
    xw = (xc.astype(f) * jnp.moveaxis(w, -1, 2)[..., None]).astype(mm)
    states = ein("bcjgn,bcjgrp->bcgrpn", Bc, xw)  # (b, c, g, hpg, p, n)

    # 3. Pass states between chunks (sequential over the l/q chunks, linear in length).
    decay_in = _masked_exp(jnp.cumsum(a, axis=-1), into)  # chunk start -> i, (b, c, g, hpg, q)
    decay_chunk = decay_in[..., -1]
    if initial_state is None:
        h0 = jnp.zeros((b, g, hpg, p, n), f)
    else:
        h0 = reshape(initial_state, (b, g, hpg, p, n)).astype(f)

    def pass_state(carry, inp):
        dec, st = inp
        return dec[..., None, None] * carry + st, carry

    final, h_in = scan(pass_state, h0, (jnp.moveaxis(decay_chunk, 1, 0), jnp.moveaxis(states.astype(f), 1, 0)))

    # 4. Outputs from the state entering each chunk.
    y_off = ein("bcign,cbgrpn->bcigrp", Cc, h_in.astype(mm))
    y = y + y_off * jnp.moveaxis(decay_in, -1, 2)[..., None]

    y = _finish(reshape(y, (b, c * q, h, p))[:, :l], x[:, :l], D, z)
    return y, (reshape(final, (b, h, p, n)) if return_final_state else None)


# --------------------------------------------------------------------------------------------
# "scan": the recurrence, one step at a time


def _recurrence_step(state, x_t, dt_t, A, B_t, C_t, keep_t=None):
    """One step of eq. (1) with discretized ``dt_t``; B_t/C_t already per head (b, h, n)."""
    decay = jnp.exp(dt_t * A)  # (b, h)
    if keep_t is not None:
        decay = jnp.where(keep_t[:, None], decay, 0.0)
    state = decay[..., None, None] * state + (dt_t[..., None] * x_t)[..., None] * B_t[:, :, None, :]
    return state, _exact_einsum("bhpn,bhn->bhp", state, C_t)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _scan_impl(*, x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, segment_ids,
               chunk_size, return_final_state):
    """Sequential ``lax.scan`` over time: the ground truth (``chunk_size`` is ignored)."""
    del chunk_size
    b, l, h, p = x.shape
    n = B.shape[-1]
    f, dt = _discretize(x, dt, dt_bias, dt_softplus)
    Bh, Ch = _per_head(B, C, h, f, axis=2)
    if segment_ids is None:
        keep = jnp.ones((b, l), dtype=bool)
    else:
        keep = ~segment_starts(segment_ids)
    h0 = jnp.zeros((b, h, p, n), f) if initial_state is None else initial_state.astype(f)

    def step(state, inp):
        x_t, dt_t, B_t, C_t, keep_t = inp
        return _recurrence_step(state, x_t.astype(f), dt_t, A.astype(f), B_t, C_t, keep_t)

    time_major = lambda t: jnp.moveaxis(t, 1, 0)
    final, y = scan(step, h0, tuple(map(time_major, (x, dt, Bh, Ch, keep))))
    y = _finish(jnp.moveaxis(y, 0, 1), x, D, z)
    return y, (final if return_final_state else None)


# --------------------------------------------------------------------------------------------
# "quadratic": the materialized semiseparable matrix


@jax.jit
def _ssd_matrix(dt, A, B, C, run):
    """(b, h, l, l) matrix of eq. (3) from discretized dt (b, l, h) and run indices or None."""
    b, l, h = dt.shape
    g = B.shape[2]
    f = dt.dtype
    a = jnp.moveaxis(dt * A.astype(f), 1, -1)  # (b, h, l)
    mask = jnp.tril(jnp.ones((l, l), dtype=bool))
    if run is not None:
        mask = (mask & (run[:, :, None] == run[:, None, :]))[:, None]
    L = _masked_exp(segsum(a), mask)
    CB = _exact_einsum("bign,bjgn->bgij", C.astype(f), B.astype(f))
    CB = jnp.repeat(CB, h // g, axis=1)
    return CB * L * jnp.moveaxis(dt, 1, -1)[:, :, None, :]


@functools.partial(jax.jit, static_argnames=_STATIC)
def _quadratic_impl(*, x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, segment_ids,
                    chunk_size, return_final_state):
    """``y = M x`` with the (l x l) semiseparable matrix materialized (quadratic memory)."""
    del chunk_size
    b, l, h, p = x.shape
    f, dt = _discretize(x, dt, dt_bias, dt_softplus)
    run = None if segment_ids is None else segment_runs(segment_ids)
    M = _ssd_matrix(dt, A, B, C, run)
    y = _exact_einsum("bhij,bjhp->bihp", M, x.astype(f))
    a = dt * A.astype(f)  # (b, l, h)
    # Exclusive suffix sums sum_{k>j} a_k as a plain (stable) cumulative sum from the end.
    suffix = jnp.cumsum(a[:, ::-1], axis=1)[:, ::-1]
    after = jnp.concatenate([suffix[:, 1:], jnp.zeros_like(a[:, :1])], axis=1)
    first_run = jnp.ones((b, l), bool) if run is None else run == 0
    last_run = jnp.ones((b, l), bool) if run is None else run == run[:, -1:]
    Bh, Ch = _per_head(B, C, h, f, axis=2)
    if initial_state is not None:
        from_start = _masked_exp(jnp.cumsum(a, axis=1), first_run[:, :, None])
        y = y + _exact_einsum("blhn,bhpn->blhp", Ch, initial_state.astype(f)) * from_start[..., None]
    final = None
    if return_final_state:
        to_end = _masked_exp(after, last_run[:, :, None]) * dt  # (b, l, h)
        final = _exact_einsum("blhn,blhp->bhpn", Bh, x.astype(f) * to_end[..., None])
        if initial_state is not None:
            through = _masked_exp(suffix[:, 0], last_run[:, :1])  # (b, h)
            final = final + through[:, :, None, None] * initial_state.astype(f)
    return _finish(y, x, D, z), final


REGISTRY.register("xla", ssd_chunked)
REGISTRY.register("scan", _scan_impl, auto_backends=())
REGISTRY.register("quadratic", _quadratic_impl, auto_backends=())
# The kernels (pallas_kernels/ssd): lazy "module:attr" targets, so that importing ssm_jax.ops imports
# no kernel module. Auto on their chip; named explicitly on CPU they run in interpret mode.
# The Mosaic GPU kernels multiply in 16 bits: auto leaves float32 operands to the exact XLA path.
REGISTRY.register("pallas_gpu", "pallas_kernels.ssd.api:ssd", check="pallas_kernels.ssd.api:why_not",
                  auto_backends=("gpu",), priority=10, auto_check="pallas_kernels.ssd.api:why_not_auto",
                  manual_sharding=True)
REGISTRY.register("pallas_tpu", "pallas_kernels.ssd.api_tpu:ssd", check="pallas_kernels.ssd.api_tpu:why_not",
                  auto_backends=("tpu",), priority=10, manual_sharding=True)
REGISTRY.alias("pallas", {"gpu": "pallas_gpu", "tpu": "pallas_tpu"})


# --------------------------------------------------------------------------------------------
# Public API


def ssd(x, dt, A, B, C, *, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
        initial_state=None, segment_ids=None, return_final_state=False, impl="auto"):
    """Mamba-2's SSD mixer: ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T``, ``y_t = h_t C_t + D x_t``.

    ==================  ==================  =================================================
    argument            shape               meaning
    ==================  ==================  =================================================
    x                   (b, l, h, p)        input, per head (fp32/bf16/fp16)
    dt                  (b, l, h)           step size (raw if ``dt_softplus``)
    A                   (h,)                scalar decay per head (negative for stability)
    B, C                (b, l, g, n)        input/output projections; head i uses group
                        or (b, l, n)        ``i // (h // g)`` (contiguous groups)
    chunk_size          int                 chunk length q of ``"xla"``; any l works (padded)
    D                   (h,) or (h, p)      skip connection
    z                   (b, l, h, p)        gate: ``y <- y * silu(z)``
    dt_bias             (h,)                added to dt before the softplus
    dt_softplus         bool                ``dt <- softplus(dt + dt_bias)``
    initial_state       (b, h, p, n)        state before step 0 (first segment only)
    segment_ids         (b, l) int          packed sequences: the state restarts from zero
                                            where the id changes
    return_final_state  bool                also return the state after step l - 1
    impl                str                 ``"auto"``, ``"xla"``, ``"scan"``, ``"quadratic"``,
                                            or a registered kernel (``REGISTRY.names()``)
    ==================  ==================  =================================================

    Returns ``y (b, l, h, p)`` in x's dtype, or ``(y, final_state (b, h, p, n) float32)``.
    """
    args = canonicalize(
        x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
        initial_state=initial_state, segment_ids=segment_ids, return_final_state=return_final_state,
    )
    name, fn = REGISTRY.resolve(impl, args)
    y, final_state = call(REGISTRY[name], fn, args)
    return (y, final_state) if args["return_final_state"] else y


def ssd_scan_ref(x, dt, A, B, C, *, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
                 initial_state=None, segment_ids=None, return_final_state=False):
    """:func:`ssd` with ``impl="scan"``: the recurrence, one ``lax.scan`` step per position (the
    ground truth; ``chunk_size`` is validated and ignored)."""
    return ssd(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
               initial_state=initial_state, segment_ids=segment_ids, return_final_state=return_final_state,
               impl="scan")


def ssd_quadratic_ref(x, dt, A, B, C, *, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
                      initial_state=None, segment_ids=None, return_final_state=False):
    """:func:`ssd` with ``impl="quadratic"``: ``y = M x`` with the ``(l x l)`` matrix of
    :func:`ssd_matrix` materialized, and closed forms for the states (``chunk_size`` is ignored)."""
    return ssd(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
               initial_state=initial_state, segment_ids=segment_ids, return_final_state=return_final_state,
               impl="quadratic")


def ssd_matrix(dt, A, B, C, *, dt_bias=None, dt_softplus=False, segment_ids=None, op: str = "ssd_matrix"):
    """The semiseparable matrix ``M`` of SSD (Mamba-2 paper eq. (3)), so that ``y = M x`` (no D/z).

    ===========  ============  ==========================================================
    argument     shape         meaning
    ===========  ============  ==========================================================
    dt           (b, l, h)     step size (raw if ``dt_softplus``)
    A            (h,)          scalar decay per head
    B, C         (b, l, g, n)  or (b, l, n)
    segment_ids  (b, l) int    entries across a segment boundary are zero
    returns      (b, h, l, l)  ``M[b, h, i, j] = C_i . B_j dt_j exp(sum_{k=j+1..i} dt_k A)``,
                               j <= i; fp32
    ===========  ============  ==========================================================

    ``op`` names the caller in error messages (:func:`~ssm_jax.ops.hydra.hydra_matrix` builds on this).
    """
    args = _canonical_core(op, _checks.Dims(op), dt, A, B, C, dt_bias, dt_softplus, segment_ids)
    dt = effective_dt(args["dt"], args["dt_bias"], args["dt_softplus"], _compute_dtype(args["dt"].dtype))
    run = None if args["segment_ids"] is None else segment_runs(args["segment_ids"])
    return _ssd_matrix(dt, args["A"], args["B"], args["C"], run)


def ssd_step(x_t, dt_t, A, B_t, C_t, state, *, D=None, z_t=None, dt_bias=None, dt_softplus=False):
    """One decoding step of :func:`ssd`: ``(inputs at t, state) -> (y_t, new_state)``.

    ==========  ============  =====================================
    argument    shape         meaning
    ==========  ============  =====================================
    x_t         (b, h, p)     input at step t
    dt_t        (b, h)        step size (raw if ``dt_softplus``)
    A           (h,)          scalar decay per head
    B_t, C_t    (b, g, n)     or (b, n)
    state       (b, h, p, n)  state after step t - 1 (fp32)
    D           (h,)/(h, p)   skip connection
    z_t         (b, h, p)     gate
    dt_bias     (h,)          added before the softplus
    returns     y_t (b, h, p) in x_t's dtype, new_state (b, h, p, n) fp32
    ==========  ============  =====================================
    """
    op = "ssd_step"
    dims = _checks.Dims(op)
    x_t = dims.array("x_t", x_t, "b h p")
    args = _canonical_core(op, dims, dt_t, A, B_t, C_t, dt_bias, dt_softplus, None, step=True)
    z_t = None if z_t is None else dims.array("z_t", z_t, "b h p")
    state = dims.array("state", state, "b h p n")
    return _step(x_t, args["dt"], args["A"], args["B"], args["C"], _canonical_D(op, dims, D), z_t,
                 args["dt_bias"], args["dt_softplus"], state)


@functools.partial(jax.jit, static_argnames=("dt_softplus",))
def _step(x, dt, A, B, C, D, z, dt_bias, dt_softplus, state):
    f, dt = _discretize(x, dt, dt_bias, dt_softplus)
    Bh, Ch = _per_head(B, C, x.shape[1], f, axis=1)
    state, y = _recurrence_step(state.astype(_compute_dtype(state.dtype)), x.astype(f), dt, A.astype(f), Bh, Ch)
    return _finish(y, x, D, z), state
