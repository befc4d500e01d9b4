"""The ``pallas_gpu`` implementation of ``ssm_jax.ops.ssd``: canonical arguments -> kernels.

``ssd(**canonical)`` prepares the operands with plain (differentiable) JAX — ``dt`` through bias and
softplus, ``a = dt * A`` and its cumulative sum inside each kernel chunk, the within-chunk reset
counts of ``segment_ids``, padding to whole chunks, 16-bit operands — and hands them to
:func:`_ssd_core`, a ``jax.custom_vjp`` around the forward and backward Mosaic GPU kernels. The
core's backward returns the gradient with respect to ``dt`` *holding the cumulative sum fixed*
and the gradient with respect to the cumulative sum; JAX's autodiff of the preparation turns
those into the gradients of ``dt``, ``A`` and ``dt_bias``.

On a CPU backend the same kernels run in Mosaic GPU interpret mode. Under a mesh the call (forward
and backward) runs inside ``jax.shard_map`` (see ``pallas_kernels._sharding``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels import _prepare, _sharding, gpu_common, target
from pallas_kernels._vjp import forward_saving_vjp
from pallas_kernels.ssd import mosaic_gpu
from pallas_kernels.ssd.blocks import DEFAULT_BLOCKS, SSDBlocks

__all__ = ["BWD_KERNEL_MAX_N", "ssd", "why_not", "why_not_auto"]

# The backward kernel keeps the (block_p, n) fp32 state gradient and a (q, n) fp32 dB/dC tile in
# one warpgroup's registers; past n = 128 that exceeds the register file. Larger states run the
# backward kernel once per slice of BWD_KERNEL_MAX_N state channels: the state's columns evolve
# independently (the decay is a scalar per head and step), and y, the intra-chunk C B^T and every
# dx/dz/d(dt)/d(cs) term are sums over n, so the slices' gradients add (D counted once) while
# dB, dC and d initial_state are the slices side by side.
BWD_KERNEL_MAX_N = 128

_COMPUTE_DTYPES = {jnp.dtype(jnp.bfloat16): jnp.bfloat16, jnp.dtype(jnp.float16): jnp.float16}
_SUPPORTED_N = (64, 128, 256)


def why_not(ctx) -> str | None:
    """None if the kernel can run on ``ctx`` (canonical arguments + "backend"), else the reason."""
    reason = gpu_common.backend_reason(ctx)
    if reason:
        return reason
    n = ctx["B"].shape[-1]
    if n > _SUPPORTED_N[-1]:
        return f"state size n must be at most {_SUPPORTED_N[-1]} (tiles {_SUPPORTED_N}, smaller n zero-padded); got n={n}"
    return gpu_common.dtype_reason(ctx, ("x", "B", "C", "z", "dt", "A", "D", "dt_bias", "initial_state"))


def why_not_auto(ctx) -> str | None:
    """Why ``impl="auto"`` leaves these operands to the XLA path (None: it may pick the kernel).

    The kernels' tensor-core products take 16-bit operands: float32 ``x``, ``B``, ``C`` or ``z``
    are rounded to bfloat16 (``python -m benchmarks.precision``: y 3.3e-3 from the exact result). ``auto`` does not
    trade float32 precision away; ``impl="pallas_gpu"`` named explicitly accepts it.
    """
    for name in ("x", "B", "C", "z"):
        v = ctx.get(name)
        if v is not None and jnp.dtype(v.dtype) == jnp.float32:
            return (f"`{name}` is float32 and the kernel multiplies in bfloat16 (~3e-3 relative error); "
                    "impl='auto' keeps float32 inputs exact. Pass 16-bit inputs, or impl='pallas_gpu' "
                    "to accept the reduced precision")
    p, bp = ctx["x"].shape[-1], DEFAULT_BLOCKS.block_p
    if p % bp:
        return (f"head dim p={p} is not a multiple of {bp}: the kernel would run on x zero-padded to "
                f"{-(-p // bp) * bp} columns, not yet timed against XLA; impl='pallas_gpu' runs it")
    n = ctx["B"].shape[-1]
    if n not in _SUPPORTED_N:
        return (f"state size n={n} is not one of {_SUPPORTED_N}: the kernel would run on B, C zero-padded to "
                f"n={_padded_n(n)}, not yet timed against XLA; impl='pallas_gpu' runs it")
    return None


def _padded_n(n: int) -> int:
    return next(t for t in _SUPPORTED_N if t >= n)


@dataclasses.dataclass(frozen=True)
class _Config:
    q: int
    block_p: int
    fwd_nbuf: int | None
    bwd_nbuf: int | None
    cdtype: str
    y_dtype: str
    has_seg: bool
    has_D: bool
    has_z: bool
    has_h0: bool
    want_final: bool
    interpret: bool


# ---------------------------------------------------------------------------------------------
# The kernels' calls
# ---------------------------------------------------------------------------------------------


def _fwd_spec(cfg: _Config, arrays, save_states: bool) -> mosaic_gpu.FwdSpec:
    b, l_pad, h, p = arrays["x"].shape
    g, n = arrays["B"].shape[2:]
    spec = mosaic_gpu.FwdSpec(
        b=b, nc=l_pad // cfg.q, h=h, g=g, p=p, n=n, q=cfg.q, block_p=cfg.block_p, dtype=cfg.cdtype,
        y_dtype=cfg.y_dtype, has_seg=cfg.has_seg, has_D=cfg.has_D, has_z=cfg.has_z, has_h0=cfg.has_h0,
        want_final=cfg.want_final, save_states=save_states, nbuf=cfg.fwd_nbuf or 2, interpret=cfg.interpret,
    )
    return _buffering(spec, cfg.fwd_nbuf, mosaic_gpu.fwd_smem_bytes)


def _buffering(spec, nbuf: int | None, smem_bytes):
    """``spec`` with ``nbuf`` slots per input stream; None: two (the next chunk's loads run behind
    the current chunk) when its buffers fit in shared memory, else one."""
    if nbuf is None and smem_bytes(spec) > gpu_common.SMEM_LIMIT:
        return dataclasses.replace(spec, nbuf=1)
    return spec


def _run_fwd(cfg: _Config, save_states: bool, arrays):
    spec = _fwd_spec(cfg, arrays, save_states)
    outs = mosaic_gpu.ssd_fwd_call(spec, *[arrays[k] for k in spec.in_names])
    outs = dict(zip(spec.out_names, outs))
    return outs["y"], outs.get("final_state"), outs.get("states")


def _run_bwd(cfg: _Config, arrays, states, dy, dfinal):
    """The backward kernel, then the (small) reductions it leaves to XLA."""
    b, l_pad, h, p = arrays["x"].shape
    g, n = arrays["B"].shape[2:]
    cdt = jnp.dtype(cfg.cdtype)
    reduce_bc = not cfg.interpret
    spec = _buffering(mosaic_gpu.BwdSpec(
        b=b, nc=l_pad // cfg.q, h=h, g=g, p=p, n=n, q=cfg.q, block_p=cfg.block_p, dtype=cfg.cdtype,
        has_seg=cfg.has_seg, has_D=cfg.has_D, has_z=cfg.has_z, has_h0=cfg.has_h0,
        has_dfinal=cfg.want_final, reduce_bc=reduce_bc, nbuf=cfg.bwd_nbuf or 2, interpret=cfg.interpret,
    ), cfg.bwd_nbuf, mosaic_gpu.bwd_smem_bytes)
    operands = dict(arrays, dout=dy.astype(cdt), states=states, dfinal=dfinal)
    args = [operands[k] for k in spec.in_names if k not in ("dB", "dC")]
    if reduce_bc:
        # Zero-initialized accumulators the kernel adds each head's tile into (TMA reductions).
        dB_ref = jax.new_ref(jnp.zeros((b, l_pad, g, n), jnp.float32))
        dC_ref = jax.new_ref(jnp.zeros((b, l_pad, g, n), jnp.float32))
        outs = mosaic_gpu.ssd_bwd_call(spec, *args, dB_ref, dC_ref)
        outs = dict(zip(spec.out_names, outs))
        dB, dC = dB_ref[...], dC_ref[...]
    else:
        outs = dict(zip(spec.out_names, mosaic_gpu.ssd_bwd_call(spec, *args)))
        npt = spec.npt
        # Per (head, p-tile) partial sums -> per group.
        dB = outs["dB"].reshape(b, l_pad, g, (h // g) * npt, n).sum(axis=3)
        dC = outs["dC"].reshape(b, l_pad, g, (h // g) * npt, n).sum(axis=3)
    npt = spec.npt
    per_head = lambda v: v.reshape(b, h, npt, l_pad).sum(axis=2)
    grads = dict(
        x=outs["dx"],
        dt=per_head(outs["ddt"]),
        cs=per_head(outs["dcs_a"] + outs["dcs_b"]),
        B=dB.astype(cdt),
        C=dC.astype(cdt),
        r=None,
        D=outs["dD"].sum(axis=0) if cfg.has_D else None,
        z=outs["dz"] if cfg.has_z else None,
        h0=outs["dh0"] if cfg.has_h0 else None,
    )
    return grads


def _run_bwd_state_slices(cfg: _Config, arrays, states, dy, dfinal):
    """The backward kernel on each slice of ``BWD_KERNEL_MAX_N`` state channels (see the note at
    BWD_KERNEL_MAX_N): summed gradients of x, z, dt, cs; concatenated gradients of B, C, h0."""

    def backward(k, cut):
        part = dict(arrays, B=cut(arrays["B"]), C=cut(arrays["C"]), h0=cut(arrays["h0"]),
                    D=arrays["D"] if k == 0 else None)
        part_cfg = dataclasses.replace(cfg, has_D=cfg.has_D and k == 0)
        return _run_bwd(part_cfg, part, cut(states), dy, cut(dfinal) if cfg.want_final else dfinal)

    how = dict(x="sum", dt="sum", cs="sum", z="sum", B="concat", C="concat", h0="concat", D="first", r="first")
    return gpu_common.backward_by_state_slices(backward, how, n=arrays["B"].shape[-1], slice_n=BWD_KERNEL_MAX_N)


# ---------------------------------------------------------------------------------------------
# Wrapper
# ---------------------------------------------------------------------------------------------


def ssd(
    *,
    x,
    dt,
    A,
    B,
    C,
    D=None,
    z=None,
    dt_bias=None,
    dt_softplus=False,
    initial_state=None,
    segment_ids=None,
    chunk_size=256,
    return_final_state=False,
    blocks: SSDBlocks | None = None,
    interpret: bool | None = None,
):
    """Mamba-2 SSD with the fused Mosaic GPU kernels; returns ``(y, final_state | None)``.

    ====================  =================  ===========================================
    argument              shape              notes
    ====================  =================  ===========================================
    x, z                  (b, l, h, p)       y has x's dtype
    dt                    (b, l, h)          softplus(dt + dt_bias) when ``dt_softplus``
    A, dt_bias            (h,)               float32
    B, C                  (b, l, g, n)       heads split into g contiguous groups
    D                     (h, p)             float32
    initial_state         (b, h, p, n)       float32
    segment_ids           (b, l)             the state resets where the id changes
    ====================  =================  ===========================================

    ``chunk_size`` does not change the result (the chunked algorithm is exact for any chunk);
    the kernels step through the sequence in chunks of ``blocks.chunk`` positions.
    """
    del chunk_size
    args = dict(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_state=initial_state,
                segment_ids=segment_ids)
    # Decided here, not inside the jitted _ssd: its traces are cached by the static arguments, and
    # a target.compiled_for block must not reuse an interpret-mode trace.
    if interpret is None:
        interpret = target.backend() != "gpu"
    static = dict(dt_softplus=bool(dt_softplus), return_final_state=bool(return_final_state), blocks=blocks,
                  interpret=bool(interpret))
    return _sharding.run(_ssd, args, static, _sharding.ssd_specs(x, B))


@functools.partial(jax.jit, static_argnames=("dt_softplus", "return_final_state", "blocks", "interpret"))
def _ssd(*, x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, segment_ids, return_final_state, blocks,
         interpret):
    """:func:`ssd` on one device's shard."""
    blocks = blocks or DEFAULT_BLOCKS
    b, l, h, p = x.shape
    # Head dims that are not a multiple of the kernels' tile run zero-padded: the p columns of a
    # head are independent scans sharing dt, B and C, so zero columns of x (and of z, D, the
    # initial state) leave the others unchanged and contribute nothing to dt/B/C's gradients.
    # Likewise state sizes below a tile: zero columns of B and C (and of the initial state) are
    # states that receive no input and are never read.
    P = -(-p // blocks.block_p) * blocks.block_p
    n = B.shape[-1]
    N = _padded_n(n)
    if (P, N) != (p, n):
        pad_p = functools.partial(_prepare.pad_axis, length=P)
        pad_n = functools.partial(_prepare.pad_axis, length=N, axis=3)
        h0 = None if initial_state is None else pad_n(pad_p(initial_state, axis=2))
        y, final_state = _ssd(x=pad_p(x, axis=3), dt=dt, A=A, B=pad_n(B), C=pad_n(C), D=None if D is None else pad_p(D, axis=1),
                        z=None if z is None else pad_p(z, axis=3), dt_bias=dt_bias, dt_softplus=dt_softplus,
                        initial_state=h0, segment_ids=segment_ids, return_final_state=return_final_state,
                        blocks=blocks, interpret=interpret)
        return y[..., :p], (None if final_state is None else final_state[:, :, :p, :n])
    q = blocks.chunk
    nc = -(-l // q)
    l_pad = nc * q
    cdtype = _COMPUTE_DTYPES.get(jnp.dtype(x.dtype), jnp.bfloat16)
    cfg = _Config(
        q=q,
        block_p=blocks.block_p,
        fwd_nbuf=blocks.fwd_nbuf,
        bwd_nbuf=blocks.bwd_nbuf,
        cdtype=jnp.dtype(cdtype).name,
        y_dtype=jnp.dtype(x.dtype).name,
        has_seg=segment_ids is not None,
        has_D=D is not None,
        has_z=z is not None,
        has_h0=initial_state is not None,
        want_final=bool(return_final_state),
        interpret=bool(interpret),
    )

    pad_len = functools.partial(_prepare.pad_axis, length=l_pad)

    # dt after bias and softplus, (b, h, l_pad) fp32; padded steps have dt = 0: no decay, no input,
    # so the state passes through the padding unchanged.
    dtp = pad_len(jnp.swapaxes(_prepare.effective_dt(dt, dt_bias, dt_softplus), 1, 2), axis=2)
    # Cumulative log-decay inside each kernel chunk (Mamba-2 Sec. 6, the segsum's cumsum).
    a = dtp * A.astype(jnp.float32)[None, :, None]
    cs = jnp.cumsum(a.reshape(b, h, nc, q), axis=-1).reshape(b, h, l_pad)

    arrays = dict(
        x=pad_len(x.astype(cdtype)),
        dt=dtp,
        cs=cs,
        B=pad_len(B.astype(cdtype)),
        C=pad_len(C.astype(cdtype)),
        r=None if segment_ids is None else _prepare.reset_counts(segment_ids, l_pad, q),
        D=None if D is None else D.astype(jnp.float32),
        z=None if z is None else pad_len(z.astype(cdtype)),
        h0=None if initial_state is None else initial_state.astype(jnp.float32),
    )
    y, final_state = _ssd_core(cfg, arrays)
    y = y[:, :l]
    return y, (final_state if return_final_state else None)


# ---------------------------------------------------------------------------------------------
# custom_vjp
# ---------------------------------------------------------------------------------------------


def _ssd_core_bwd(cfg: _Config, res, cts):
    (arrays,), states = res
    dy, dfinal = cts
    n = arrays["B"].shape[-1]
    if n <= BWD_KERNEL_MAX_N:
        return (_run_bwd(cfg, arrays, states, dy, dfinal),)
    return (_run_bwd_state_slices(cfg, arrays, states, dy, dfinal),)


# _ssd_core(cfg, arrays) -> (y, final_state)
_ssd_core = forward_saving_vjp(_run_fwd, _ssd_core_bwd, num_static=1)
