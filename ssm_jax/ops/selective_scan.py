"""Mamba-1 selective scan (S6): the public op, its decoding step and its references.

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023), Sec. 3.2,
Algorithm 2. Per channel ``i`` and state index ``j``, with ``dt`` already passed through
``tau_dt = softplus`` and the ``dt_bias`` parameter of Alg. 2 line 3::

    h_t[i, j] = exp(dt_t[i] * A[i, j]) * h_{t-1}[i, j] + dt_t[i] * x_t[i] * B_t[j]     (eq. 2a, 4)
    y_t[i]    = sum_j h_t[i, j] * C_t[j] + D[i] * x_t[i]                               (eq. 2b)
    y_t[i]   <- y_t[i] * silu(z_t[i])                                      (Mamba block, Fig. 3)

``A`` is discretized by zero-order hold (eq. 4, ``A_bar = exp(dt A)``) and ``B`` by
``B_bar = dt B``, the first-order form of eq. 4's ``(dt A)^-1 (exp(dt A) - I) dt B`` that the
paper's reference kernels use. With ``g > 1`` groups the ``d`` channels are split into ``g`` contiguous groups and channel
``i`` reads ``B[..., i // (d // g), :]`` (and likewise ``C``).

Implementations (``impl=``), registered in :data:`REGISTRY`:

* ``"scan"`` — sequential :func:`jax.lax.scan`, one step per position; the ground truth
  (:func:`selective_scan_ref`). Never chosen by ``"auto"``.
* ``"xla"`` — :func:`jax.lax.associative_scan` over the ``(decay, input)`` pairs of eq. 2a, inside
  chunks of :data:`XLA_CHUNK_SIZE` positions, with a ``lax.scan`` carrying the state from chunk to
  chunk. Its backward pass is the adjoint recurrence (a reverse associative scan per chunk, the
  forward chunk recomputed from the saved chunk-entry states) under :func:`jax.custom_vjp`, so
  memory stays ``O(b * chunk * d * n + l * (d + n))`` for any length, forward and backward.
* ``"pallas_gpu"`` — the Mosaic GPU kernels of ``pallas_kernels/selective_scan`` (Hopper), forward
  and backward; auto on GPUs, Mosaic GPU interpret mode when named on CPU.
* ``"pallas_tpu"`` — the Mosaic TPU kernels (``pallas_kernels/selective_scan/api_tpu.py``); auto
  on TPUs, TPU interpret mode when named on CPU. ``"pallas"`` is the one of the backend.

Numerics: the state, the discretization and every reduction run in float32 (float64 if an input
is float64, under ``jax.enable_x64``); ``x, dt, B, C, z`` may be float32, bfloat16 or float16; ``y``
comes back in ``x.dtype`` and the final state in float32.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from ssm_jax.ops._checks import Dims, check_bool, check_float, check_segment_ids
from ssm_jax.ops._prepare import effective_dt, segment_starts
from ssm_jax.ops._explicit import batch_zeros, call, scan
from ssm_jax.ops.registry import Registry
from ssm_jax.typing import Array, Float, Int

__all__ = [
    "REGISTRY",
    "XLA_CHUNK_SIZE",
    "canonicalize",
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_step",
]

REGISTRY = Registry("selective_scan")

# Positions per associative-scan chunk in impl="xla". The working set of one chunk is a few
# (b, XLA_CHUNK_SIZE, d, n) float32 arrays. On an H100 (2026-11, jax 0.11.2) 128 and 256 tie at
# l = 4096 and 256 is 20% faster at l = 65536 (fewer trips of the chunk loop).
XLA_CHUNK_SIZE = 256


# --------------------------------------------------------------------------------------------
# Validation and canonical form (docs/architecture.md, "Canonical arguments")
# --------------------------------------------------------------------------------------------


def canonicalize(
    x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None, segment_ids=None,
    return_final_state=False, op: str = "selective_scan",
) -> dict[str, Any]:
    """Validate the arguments of :func:`selective_scan`; return the keyword arguments every
    implementation takes (see :func:`_canonicalize` for the canonical form)."""
    canonical = _canonicalize(
        op, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, state=initial_state,
        state_name="initial_state", segment_ids=segment_ids, step=False,
    )
    canonical["dt_softplus"] = check_bool(op, "dt_softplus", dt_softplus)
    canonical["return_final_state"] = check_bool(op, "return_final_state", return_final_state)
    return canonical


def _canonicalize(
    op: str, *, x, dt, A, B, C, D, z, dt_bias, state, state_name: str, segment_ids, step: bool,
    names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Check every array argument and return the canonical keyword arguments.

    Canonical: ``B, C`` are ``(b, [l,] g, n)``; ``A, D, dt_bias, initial_state`` are in the
    compute dtype (float32, or float64 if any input is float64); ``x, dt, B, C, z`` keep their
    dtypes; ``segment_ids`` is int32. With ``step`` the ``l`` axis is absent everywhere.
    """
    names = names or {}
    nm = lambda k: names.get(k, k)  # noqa: E731  (argument names differ in the step form)
    spec = (lambda s: s.replace("l ", "")) if step else (lambda s: s)
    dims = Dims(op)

    def floating(key, v, *specs):
        return dims.array(nm(key), v, *specs, check=check_float)

    x = floating("x", x, spec("b l d"))
    dt = floating("dt", dt, spec("b l d"))
    A = dims.array("A", A, "d n")
    B = floating("B", B, spec("b l n"), spec("b l g n"))
    C = floating("C", C, spec("b l n"), spec("b l g n"))
    # A B or C without a group axis is shared by every channel; the other may still have g.
    g = dims.sizes.setdefault("g", 1)
    B, C = (
        v if v.ndim == x.ndim + 1 else jnp.broadcast_to(v[..., None, :], (*v.shape[:-1], g, v.shape[-1]))
        for v in (B, C)
    )
    for letter, what in (("b", nm("x")), ("l", nm("x")), ("d", nm("x")), ("n", "A")):
        if letter in dims.sizes and dims[letter] == 0:
            raise ValueError(f"{op}: `{what}` must have a non-empty {letter!r} axis; got size 0")
    d = dims["d"]
    if g == 0 or d % g:
        raise ValueError(
            f"{op}: `{nm('B')}` and `{nm('C')}` have g={g} groups, which must divide the "
            f"d={d} channels of `{nm('x')}` (channel i uses group i // (d // g))"
        )
    D = None if D is None else floating("D", D, "d")
    z = None if z is None else floating("z", z, spec("b l d"))
    dt_bias = None if dt_bias is None else floating("dt_bias", dt_bias, "d")
    if state is None and step:
        raise TypeError(f"{op}: `{state_name}` must be an array of shape {dims.expected('b d n')}; got None")
    state = None if state is None else dims.array(state_name, state, "b d n", check=check_float)
    segment_ids = check_segment_ids(op, dims, segment_ids)

    present = [v for v in (x, dt, A, B, C, D, z, dt_bias, state) if v is not None]
    f = jnp.promote_types(jnp.float32, jnp.result_type(*present))
    cast = lambda v: None if v is None else v.astype(f)  # noqa: E731
    return dict(
        x=x, dt=dt, A=A.astype(f), B=B, C=C, D=cast(D), z=z, dt_bias=cast(dt_bias),
        initial_state=cast(state), segment_ids=segment_ids,
    )


# --------------------------------------------------------------------------------------------
# Shared math. Channels are viewed as (g, r = d // g) so B and C broadcast over a group without
# being repeated d // g times.
# --------------------------------------------------------------------------------------------


def _split_groups(v: jax.Array, g: int) -> jax.Array:
    """``(..., d) -> (..., g, d // g)``: contiguous channel groups."""
    return v.reshape(*v.shape[:-1], g, v.shape[-1] // g)


def _discretize(x, dt, B, A):
    """Eq. 4 with ``B_bar = dt B``: the (decay, input) pair of eq. 2a.

    Shapes (grouped, any leading axes): ``x, dt (..., g, r)``, ``B (..., g, n)``, ``A (g, r, n)``
    -> two ``(..., g, r, n)`` arrays. ``dt * A <= 0`` for valid inputs, so ``exp`` cannot overflow
    and its gradient is finite; nothing here is masked after the exp.
    """
    decay = jnp.exp(dt[..., None] * A)
    inp = (dt * x)[..., None] * B[..., None, :]
    return decay, inp


def _readout(h, C):
    """Eq. 2b without D: ``sum_n h * C``. An elementwise product and sum, not a dot: on GPU/TPU a
    float32 ``einsum`` may run at TF32/bf16 precision by default, which the reference must not."""
    return jnp.sum(h * C[..., None, :], axis=-1)


def _finish(y, x, D, z, out_dtype):
    """``y + D x``, then the gate ``y * silu(z)`` (Mamba block), in the compute dtype."""
    f = y.dtype
    if D is not None:
        y = y + D * x.astype(f)
    if z is not None:
        y = y * jax.nn.silu(z.astype(f))
    return y.astype(out_dtype)


# --------------------------------------------------------------------------------------------
# Implementations. Each takes the canonical arguments and returns (y, final_state or None).
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("dt_softplus",))
def _step_impl(x, dt, A, B, C, D, z, dt_bias, dt_softplus, state):
    f = A.dtype
    g = B.shape[-2]
    r = x.shape[-1] // g
    dt = effective_dt(dt, dt_bias, dt_softplus, f)
    h = state.reshape(*state.shape[:-2], g, r, state.shape[-1])
    x_g, dt_g = _split_groups(x.astype(f), g), _split_groups(dt, g)
    decay, inp = _discretize(x_g, dt_g, B.astype(f), A.reshape(g, r, -1))
    h = decay * h + inp
    y = _readout(h, C.astype(f)).reshape(x.shape)
    return _finish(y, x, D, z, x.dtype), h.reshape(state.shape)


@functools.partial(jax.jit, static_argnames=("dt_softplus", "return_final_state"))
def _scan_impl(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, segment_ids, return_final_state):
    """Sequential reference: eq. 2a/2b one position at a time under ``lax.scan``."""
    b, l, d = x.shape
    g, n = B.shape[-2:]
    f = A.dtype
    dt = effective_dt(dt, dt_bias, dt_softplus, f)
    A_g = A.reshape(g, d // g, n)
    h0 = jnp.zeros((b, g, d // g, n), f) if initial_state is None else initial_state.reshape(b, g, d // g, n)
    reset = None if segment_ids is None else segment_starts(segment_ids)  # the state restarts from zero

    def body(h, inputs):
        x_t, dt_t, B_t, C_t, reset_t = inputs
        if reset_t is not None:
            h = jnp.where(reset_t[:, None, None, None], 0.0, h)
        decay, inp = _discretize(_split_groups(x_t.astype(f), g), _split_groups(dt_t, g), B_t.astype(f), A_g)
        h = decay * h + inp
        return h, _readout(h, C_t.astype(f))

    time_major = lambda v: None if v is None else jnp.swapaxes(v, 0, 1)  # noqa: E731
    h, y = scan(body, h0, tuple(map(time_major, (x, dt, B, C, reset))))
    y = jnp.swapaxes(y, 0, 1).reshape(b, l, d)
    return _finish(y, x, D, z, x.dtype), (h.reshape(b, d, n) if return_final_state else None)


def _combine(earlier, later):
    """Composition of two affine maps ``h -> a h + u`` (eq. 2a), ``earlier`` applied first."""
    a1, u1 = earlier
    a2, u2 = later
    return a2 * a1, a2 * u1 + u2


def _chunk_states(h0, x, dt, B, keep, A_g):
    """Eq. 2a over one chunk by an associative scan: ``h (b, q, g, r, n)`` and the decays.

    ``x, dt (b, q, g, r)``, ``B (b, q, g, n)`` in the compute dtype, ``keep (b, q)`` is 0 where a
    segment starts (the state forgets ``h_{t-1}``: decay 0) and 1 elsewhere, ``h0 (b, g, r, n)``.
    """
    decay, inp = _discretize(x, dt, B, A_g)
    if keep is not None:
        decay = decay * keep[:, :, None, None, None]
    decay_cum, h_local = jax.lax.associative_scan(_combine, (decay, inp), axis=1)
    return decay_cum * h0[:, None] + h_local, decay


def _as_f(f, *vs):
    return tuple(None if v is None else v.astype(f) for v in vs)


@jax.custom_vjp
def _chunked_scan(A_g, x, dt, B, C, keep, h0):
    """``(y (c, b, q, g, r), h_last (b, g, r, n))`` of eq. 2a/2b over ``c`` chunks of ``q``.

    Chunk-major inputs: ``x, dt (c, b, q, g, r)``, ``B, C (c, b, q, g, n)``, ``keep (c, b, q)`` or
    None. The backward pass (below) is the adjoint recurrence, not autodiff of the scan.
    """
    return _chunked_scan_fwd(A_g, x, dt, B, C, keep, h0)[0]


def _chunked_scan_fwd(A_g, x, dt, B, C, keep, h0):
    f = A_g.dtype

    def body(h_start, chunk):
        x, dt, B, C, keep = chunk
        x, dt, B, C = _as_f(f, x, dt, B, C)
        h, _ = _chunk_states(h_start, x, dt, B, keep, A_g)
        return h[:, -1], (_readout(h, C), h_start)

    h_last, (y, h_starts) = scan(body, h0, (x, dt, B, C, keep))
    # Saved: the inputs and the state entering each chunk, (c, b, g, r, n) -- l/q times smaller
    # than the states at every position, which the backward pass recomputes chunk by chunk.
    return (y, h_last), (A_g, x, dt, B, C, keep, h_starts)


def _chunked_scan_bwd(res, cotangents):
    """Reverse-time adjoint of eq. 2a, one chunk at a time, last chunk first.

    With ``lam_t = dL/dh_t`` (total), eq. 2a/2b give ``lam_t = C_t dy_t + a_{t+1} lam_{t+1}``: the
    same kind of linear recurrence run backwards, so an associative scan with ``reverse=True``.
    Then ``dL/d(input_t) = lam_t`` and ``dL/da_t = lam_t h_{t-1}``, pulled back through the
    discretization (eq. 4) to ``x, dt, B, A``; ``dL/dC_t = sum_r h_t dy_t``. ``mu`` carries
    ``dL/dh`` at the end of the chunk from the chunks after it (``dh_last`` for the last one).
    """
    A_g, x, dt, B, C, keep, h_starts = res
    dy, dh_last = cotangents
    f = A_g.dtype

    def body(carry, chunk):
        mu, dA = carry
        x_, dt_, B_, C_, keep_, h_start, dy_ = chunk
        xf, dtf, Bf, Cf, dyf = _as_f(f, x_, dt_, B_, C_, dy_)
        h, decay = _chunk_states(h_start, xf, dtf, Bf, keep_, A_g)
        src = dyf[..., None] * Cf[:, :, :, None, :]
        src = src.at[:, -1].add(mu)
        decay_next = jnp.concatenate([decay[:, 1:], jnp.zeros_like(decay[:, :1])], axis=1)
        _, lam = jax.lax.associative_scan(_combine, (decay_next, src), reverse=True, axis=1)
        h_prev = jnp.concatenate([h_start[:, None], h[:, :-1]], axis=1)
        d_decay = lam * h_prev
        if keep_ is not None:
            d_decay = d_decay * keep_[:, :, None, None, None]
        _, pullback = jax.vjp(_discretize, xf, dtf, Bf, A_g)
        dx, ddt, dB, dA_chunk = pullback((d_decay, lam))
        dC = jnp.sum(h * dyf[..., None], axis=-2)
        mu = decay[:, 0] * lam[:, 0]
        grads = (dx.astype(x_.dtype), ddt.astype(dt_.dtype), dB.astype(B_.dtype), dC.astype(C_.dtype))
        return (mu, dA + dA_chunk), grads

    (dh0, dA), (dx, ddt, dB, dC) = scan(
        body, (dh_last.astype(f), jnp.zeros_like(A_g)), (x, dt, B, C, keep, h_starts, dy), reverse=True
    )
    dkeep = None if keep is None else jnp.zeros_like(keep)  # keep is data (segment starts)
    return dA, dx, ddt, dB, dC, dkeep, dh0


_chunked_scan.defvjp(_chunked_scan_fwd, _chunked_scan_bwd)


@functools.partial(jax.jit, static_argnames=("dt_softplus", "return_final_state", "chunk_size"))
def _xla_impl(
    x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, segment_ids, return_final_state,
    chunk_size: int = XLA_CHUNK_SIZE,
):
    """Chunked associative scan: parallel within a chunk, sequential across chunks."""
    b, l, d = x.shape
    g, n = B.shape[-2:]
    r = d // g
    f = A.dtype
    q = min(chunk_size, l)
    num_chunks = -(-l // q)
    pad = num_chunks * q - l

    # Padding sits after position l-1 with dt = 0, i.e. decay 1 and input 0: the state passes
    # through unchanged, so the last chunk's final state is the state at position l-1.
    dt = effective_dt(dt, dt_bias, dt_softplus, f)
    keep = None if segment_ids is None else (~segment_starts(segment_ids)).astype(f)

    def chunked(v, grouped: bool = False, fill=0):
        if v is None:
            return None
        v = jnp.pad(v, ((0, 0), (0, pad)) + ((0, 0),) * (v.ndim - 2), constant_values=fill)
        if grouped:
            v = _split_groups(v, g)
        v = v.reshape(b, num_chunks, q, *v.shape[2:])
        return jnp.moveaxis(v, 1, 0)  # (num_chunks, b, q, ...)

    h0 = batch_zeros((b, g, r, n), f, x) if initial_state is None else initial_state.reshape(b, g, r, n)
    y, h = _chunked_scan(
        A.reshape(g, r, n), chunked(x, True), chunked(dt, True), chunked(B), chunked(C), chunked(keep, fill=1), h0
    )
    y = jnp.moveaxis(y, 0, 1).reshape(b, num_chunks * q, d)[:, :l]
    return _finish(y, x, D, z, x.dtype), (h.reshape(b, d, n) if return_final_state else None)


REGISTRY.register("scan", _scan_impl, auto_backends=())
REGISTRY.register("xla", _xla_impl)
# The kernels: lazy "module:attr" targets, so that importing ssm_jax.ops imports no kernel module.
REGISTRY.register("pallas_gpu", "pallas_kernels.selective_scan.api:selective_scan",
                  check="pallas_kernels.selective_scan.api:why_not", auto_backends=("gpu",), priority=10,
                  manual_sharding=True)
REGISTRY.register("pallas_tpu", "pallas_kernels.selective_scan.api_tpu:selective_scan",
                  check="pallas_kernels.selective_scan.api_tpu:why_not", auto_backends=("tpu",), priority=10,
                  manual_sharding=True)
REGISTRY.alias("pallas", {"gpu": "pallas_gpu", "tpu": "pallas_tpu"})


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def selective_scan(
    x: Float[Array, "b l d"],
    dt: Float[Array, "b l d"],
    A: Float[Array, "d n"],
    B: Float[Array, "b l n"] | Float[Array, "b l g n"],
    C: Float[Array, "b l n"] | Float[Array, "b l g n"],
    *,
    D: Float[Array, "d"] | None = None,
    z: Float[Array, "b l d"] | None = None,
    dt_bias: Float[Array, "d"] | None = None,
    dt_softplus: bool = False,
    initial_state: Float[Array, "b d n"] | None = None,
    segment_ids: Int[Array, "b l"] | None = None,
    return_final_state: bool = False,
    impl: str = "auto",
):
    """Mamba-1 selective scan (S6), Mamba paper Sec. 3.2 / Algorithm 2.

    ==================  ===========================  ==========================================
    argument            shape                        meaning
    ==================  ===========================  ==========================================
    ``x``               ``(b, l, d)``                input sequence
    ``dt``              ``(b, l, d)``                step size Delta (before bias/softplus)
    ``A``               ``(d, n)`` real              state matrix (diagonal per channel); keep
                                                     it negative, as Mamba's ``-exp(A_log)``
    ``B``, ``C``        ``(b, l, n)``/``(b, l, g, n)``  input/output projections; ``g`` groups
                                                     of ``d // g`` contiguous channels
    ``D``               ``(d,)``                     skip connection
    ``z``               ``(b, l, d)``                gate: ``y <- y * silu(z)``
    ``dt_bias``         ``(d,)``                     added to ``dt`` (before softplus)
    ``dt_softplus``     bool                         ``dt <- softplus(dt + dt_bias)``
    ``initial_state``   ``(b, d, n)``                state before position 0
    ``segment_ids``     ``(b, l)`` integer           packed sequences (see below)
    ``return_final_state``  bool                     also return the state after position l-1
    ``impl``            str                          ``"auto"``, ``"xla"``, ``"scan"``, ...
    ==================  ===========================  ==========================================

    ``dt_bias`` is added whenever given, with or without ``dt_softplus`` (Alg. 2 line 3 with
    ``tau_dt`` the identity when ``dt_softplus=False``).

    ``segment_ids`` packs several sequences in one row: the state resets to zero (not to
    ``initial_state``, which applies at position 0 only) wherever the id differs from the
    previous position's, so each segment is scanned as if it were alone. With
    ``return_final_state`` the final state is that of the last segment.

    Returns ``y`` of shape ``(b, l, d)`` and dtype ``x.dtype``, or ``(y, final_state)`` with
    ``final_state (b, d, n)`` float32 when ``return_final_state``.

    Raises ``ValueError``/``TypeError`` naming the argument on bad shapes or dtypes, and
    :class:`~ssm_jax.ops.registry.ImplementationUnavailableError` when ``impl`` names an
    implementation that cannot run here.
    """
    canonical = canonicalize(
        x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, initial_state=initial_state,
        segment_ids=segment_ids, return_final_state=return_final_state,
    )
    name, fn = REGISTRY.resolve(impl, canonical)
    y, final_state = call(REGISTRY[name], fn, canonical)
    return (y, final_state) if canonical["return_final_state"] else y


def selective_scan_step(
    x_t: Float[Array, "b d"],
    dt_t: Float[Array, "b d"],
    A: Float[Array, "d n"],
    B_t: Float[Array, "b n"] | Float[Array, "b g n"],
    C_t: Float[Array, "b n"] | Float[Array, "b g n"],
    state: Float[Array, "b d n"],
    *,
    D: Float[Array, "d"] | None = None,
    z_t: Float[Array, "b d"] | None = None,
    dt_bias: Float[Array, "d"] | None = None,
    dt_softplus: bool = False,
):
    """One position of :func:`selective_scan`, for decoding: ``(y_t, new_state)``.

    ============  ============================  ====================================
    argument      shape                         meaning
    ============  ============================  ====================================
    ``x_t``       ``(b, d)``                    input at this position
    ``dt_t``      ``(b, d)``                    step size (before bias/softplus)
    ``A``         ``(d, n)`` real               as in :func:`selective_scan`
    ``B_t, C_t``  ``(b, n)`` or ``(b, g, n)``   projections at this position
    ``state``     ``(b, d, n)``                 state after the previous position
    ``D``         ``(d,)``                      skip connection
    ``z_t``       ``(b, d)``                    gate
    ``dt_bias``   ``(d,)``                      added to ``dt_t``
    ============  ============================  ====================================

    Folding this over positions ``0..l-1`` from ``initial_state`` reproduces
    ``selective_scan(..., return_final_state=True)``. There are no ``segment_ids``: to start a
    new sequence, pass a zero ``state``. ``y_t`` has ``x_t.dtype``; ``new_state`` is float32.
    """
    op = "selective_scan_step"
    canonical = _canonicalize(
        op,
        x=x_t, dt=dt_t, A=A, B=B_t, C=C_t, D=D, z=z_t, dt_bias=dt_bias, state=state,
        state_name="state", segment_ids=None, step=True,
        names={"x": "x_t", "dt": "dt_t", "B": "B_t", "C": "C_t", "z": "z_t"},
    )
    del canonical["segment_ids"]
    canonical["state"] = canonical.pop("initial_state")
    canonical["dt_softplus"] = check_bool(op, "dt_softplus", dt_softplus)
    return _step_impl(**canonical)


def selective_scan_ref(
    x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None, segment_ids=None,
    return_final_state=False,
):
    """:func:`selective_scan` with ``impl="scan"``: the sequential ``lax.scan`` ground truth."""
    return selective_scan(
        x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, initial_state=initial_state,
        segment_ids=segment_ids, return_final_state=return_final_state, impl="scan",
    )
