"""``impl="pallas_gpu"`` for :func:`ssm_jax.ops.selective_scan`: padding, dispatch, custom VJP.

:func:`selective_scan` takes the op's canonical arguments (``docs/architecture.md``), pads them
to what the kernels need (state size to a power of two >= 8, each channel group to a multiple of
the block's channels, the length to a multiple of the chunk), runs the Mosaic GPU kernels of
:mod:`.mosaic_gpu` and slices the padding off. On a CPU backend the same kernels run in Mosaic
GPU interpret mode. :func:`why_not` says when they cannot run. Under a mesh the call (forward and
backward) runs inside ``jax.shard_map`` (see ``pallas_kernels._sharding``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels import _prepare, _sharding, gpu_common, target
from pallas_kernels._vjp import forward_saving_vjp
from pallas_kernels.selective_scan import mosaic_gpu
from pallas_kernels.selective_scan.blocks import (
    SelectiveScanBlocks,
    backward_fits,
    choose_backward_blocks,
    choose_blocks,
)

__all__ = ["selective_scan", "why_not", "MAX_STATE"]

MAX_STATE = 256
# The largest (padded) state the backward kernel takes in one block; larger states run it per slice.
SLICE_N = 128


def why_not(ctx) -> str | None:
    """None if the kernels can run on these canonical arguments and backend, else the reason."""
    reason = gpu_common.backend_reason(ctx)
    if reason:
        return reason
    n = ctx["A"].shape[-1]
    if n > MAX_STATE:
        return f"state size n={n} exceeds {MAX_STATE} (the state lives in registers)"
    reason = gpu_common.dtype_reason(ctx, ("x", "dt", "B", "C", "z"))
    if reason:
        return reason
    if jnp.dtype(ctx["A"].dtype) != jnp.float32:
        return f"parameters are {jnp.dtype(ctx['A'].dtype).name}; the kernel computes in float32 (float64 inputs are not supported)"
    return None


# --------------------------------------------------------------------------------------------
# Settings and padding
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Static:
    b: int
    l: int
    d: int
    g: int
    n: int
    blocks: SelectiveScanBlocks  # forward
    bwd: SelectiveScanBlocks  # backward
    softplus: bool
    interpret: bool

    @property
    def r(self) -> int:  # channels per group
        return self.d // self.g

    @property
    def r_pad(self) -> int:
        ch = max(self.blocks.channels, self.bwd.channels)  # powers of two: a multiple of both
        return -(-self.r // ch) * ch

    @property
    def l_pad(self) -> int:
        quantum = max(self.blocks.chunk, self.blocks.save_interval, self.bwd.chunk)
        return -(-self.l // quantum) * quantum

    def problem(self, blocks, *, x_dtype, dt_dtype, z_dtype, bc_dtype, has_D, has_z, has_bias, has_h0,
                has_keep) -> mosaic_gpu.Problem:
        name = lambda t: jnp.dtype(t).name  # noqa: E731
        return mosaic_gpu.Problem(
            b=self.b, l=self.l_pad, d=self.g * self.r_pad, g=self.g, l_valid=self.l, blocks=blocks,
            x_dtype=name(x_dtype), dt_dtype=name(dt_dtype), z_dtype=name(z_dtype), bc_dtype=name(bc_dtype),
            has_D=has_D, has_z=has_z,
            has_bias=has_bias, softplus=self.softplus, has_h0=has_h0, has_keep=has_keep, interpret=self.interpret,
        )


def _pad_channels(s: _Static, v, axis: int):
    """Pad the channel ``axis`` (size d = g * r) of ``v`` to ``g * r_pad`` with zeros, per group."""
    return _prepare.pad_groups(v, axis, s.g, s.r_pad)


def _unpad_channels(s: _Static, v, axis: int):
    return _prepare.unpad_groups(v, axis, s.g, s.r)


def _pad_length(s: _Static, v, axis: int = 1, value=0):
    return _prepare.pad_axis(v, s.l_pad, axis, value)


def _pad_state(s: _Static, v, axis: int = -1):
    return _prepare.pad_axis(v, s.blocks.n, axis)


def _per_chunk_tile(s: _Static, blocks, v):
    """``(d,)`` -> ``(d_pad / ch, chunk, ch)`` float32: a per-channel vector repeated per position."""
    ch, q = blocks.channels, blocks.chunk
    v = _pad_channels(s, v.astype(jnp.float32), 0)
    v = v.reshape(-1, 1, ch)
    return jnp.broadcast_to(v, (v.shape[0], q, ch))


def _kernel_inputs(s: _Static, blocks, x, dt, A, B, C, D, z, dt_bias, h0, keep, g=None) -> dict:
    """The padded kernel operands by name (``mosaic_gpu.forward_operands`` / ``backward_operands``
    order them); absent optional ones are left out."""
    seq = lambda v: _pad_channels(s, _pad_length(s, v), 2)  # noqa: E731
    split = functools.partial(_split_state, blocks.states_per_thread)
    ins = dict(x=seq(x), dt=seq(dt), B=_pad_state(s, _pad_length(s, B)), C=_pad_state(s, _pad_length(s, C)),
               A2=split(_pad_state(s, _pad_channels(s, A.astype(jnp.float32) * mosaic_gpu.LOG2E, 0))))
    if z is not None:
        ins["z"] = seq(z)
    if g is not None:
        ins["g"] = seq(g)
    if dt_bias is not None:
        ins["bias"] = _per_chunk_tile(s, blocks, dt_bias)
    if D is not None:
        ins["D"] = _per_chunk_tile(s, blocks, D)
    if keep is not None:
        # Padding positions keep the state (1); KEEP_MIN more so every TMA copy is in bounds.
        keep = _pad_length(s, keep, value=1.0)
        ins["keep"] = jnp.pad(keep, ((0, 0), (0, mosaic_gpu.KEEP_MIN)), constant_values=1.0)
    if h0 is not None:
        ins["h0"] = split(_pad_state(s, _pad_channels(s, h0.astype(jnp.float32), 1)))
    return ins


def _split_state(spt: int, v):
    """``(..., n_pad) -> (..., n_pad / spt, spt)``: the state axis as a thread's registers hold it."""
    return v.reshape(*v.shape[:-1], v.shape[-1] // spt, spt)


def _merge_state(v):
    return v.reshape(*v.shape[:-2], v.shape[-2] * v.shape[-1])


def _problem(s: _Static, blocks, x, dt, B, D, z, dt_bias, h0, keep):
    return s.problem(blocks, x_dtype=x.dtype, dt_dtype=dt.dtype, z_dtype=x.dtype if z is None else z.dtype,
                     bc_dtype=B.dtype, has_D=D is not None, has_z=z is not None, has_bias=dt_bias is not None,
                     has_h0=h0 is not None, has_keep=keep is not None)


def _same_bc_dtype(B, C):
    bc_dtype = jnp.promote_types(B.dtype, C.dtype)
    return B.astype(bc_dtype), C.astype(bc_dtype)


# --------------------------------------------------------------------------------------------
# The kernels' calls
# --------------------------------------------------------------------------------------------


def _forward(s: _Static, want_final: bool, save_states: bool, x, dt, A, B, C, D, z, dt_bias, h0, keep):
    B, C = _same_bc_dtype(B, C)
    p = _problem(s, s.blocks, x, dt, B, D, z, dt_bias, h0, keep)
    ins = _kernel_inputs(s, s.blocks, x, dt, A, B, C, D, z, dt_bias, h0, keep)
    outs = mosaic_gpu.forward(p, save_states=save_states, want_final=want_final)(
        *(ins[k] for k in mosaic_gpu.forward_operands(p)))
    outs = dict(zip(mosaic_gpu.forward_results(save_states=save_states, want_final=want_final), outs))
    y = _unpad_channels(s, outs["y"][:, : s.l], 2)
    h_final = outs.get("final_state")
    if h_final is not None:
        h_final = _unpad_channels(s, _merge_state(h_final)[..., : s.n], 1)
    return y, h_final, outs.get("saved")


def _backward(s: _Static, res, gy, dfinal):
    """Cotangents of ``(x, dt, A, B, C, D, z, dt_bias, h0, keep)``."""
    (x, dt, A, B, C, D, z, dt_bias, h0, keep), saved = res
    B_in, C_in = B, C
    B, C = _same_bc_dtype(B, C)
    p = _problem(s, s.bwd, x, dt, B, D, z, dt_bias, h0, keep)
    ins = _kernel_inputs(s, s.bwd, x, dt, A, B, C, D, z, dt_bias, None, keep, g=gy.astype(x.dtype))
    # `saved` holds float32 states as (b, l_pad / save_interval, d_pad, n_pad / spt_fwd, spt_fwd):
    # the same memory as (..., n_pad), re-split as the backward's threads hold the state.
    ins["saved"] = _split_state(s.bwd.states_per_thread, _merge_state(saved))
    if dfinal is not None:
        ins["dfinal"] = _split_state(s.bwd.states_per_thread, _pad_state(s, _pad_channels(s, dfinal.astype(jnp.float32), 1)))
    outs = mosaic_gpu.backward(p, has_dfinal=dfinal is not None)(
        *(ins[k] for k in mosaic_gpu.backward_operands(p, has_dfinal=dfinal is not None)))
    outs = dict(zip(mosaic_gpu.backward_results(p), outs))
    dx, ddt, dz, dB, dC, dA = (outs.get(k) for k in ("dx", "ddt", "dz", "dB", "dC", "dA"))
    dD, dbias, dh0 = (outs.get(k) for k in ("dD", "dbias", "dh0"))

    unseq = lambda v: _unpad_channels(s, v[:, : s.l], 2)  # noqa: E731
    dx, ddt = unseq(dx), unseq(ddt)
    dz = None if dz is None else unseq(dz)

    def per_group(v, like):
        # (b, l_pad, d_pad / ch, n_pad / spt, spt): sum the channel blocks of each group.
        b, lp, nb = v.shape[:3]
        v = v.reshape(b, lp, s.g, nb // s.g, -1).sum(axis=3)
        return v[:, : s.l, :, : s.n].astype(like.dtype)

    dB, dC = per_group(dB, B_in), per_group(dC, C_in)
    dA = _unpad_channels(s, _merge_state(dA).sum(axis=0)[:, : s.n], 0).astype(A.dtype)

    def per_channel(v, like):
        # (b, d_pad / ch, q, ch): partial sums over batch rows and chunk positions.
        return _unpad_channels(s, v.sum(axis=(0, 2)).reshape(-1), 0).astype(like.dtype)

    dD = None if D is None else per_channel(dD, D)
    dbias = None if dt_bias is None else per_channel(dbias, dt_bias)
    if dh0 is not None:
        dh0 = _unpad_channels(s, _merge_state(dh0)[..., : s.n], 1).astype(h0.dtype)
    dkeep = None if keep is None else jnp.zeros_like(keep)
    return dx, ddt, dA, dB, dC, dD, dz, dbias, dh0, dkeep


# For a padded state size above 128 the backward kernel's per-position shared memory does not fit
# an H100 block. Every state channel evolves on its own (h_n <- exp(delta A_n) h_n + delta B_n x),
# and y, hence every gradient of x, dt, z and dt_bias, is a sum over n; so the backward kernel
# runs on each half of the (padded) state with D in one half only, and the halves' gradients of
# x, dt, z, dt_bias add while those of A, B, C and the initial state sit side by side
# (gpu_common.backward_by_state_slices). The z-gate gradient is linear in the pre-gate output, so
# it splits the same way.


def _backward_by_state_slices(s: _Static, res, gy, dfinal):
    """:func:`_backward` once per ``SLICE_N`` states, for a backward that does not fit one block."""
    (x, dt, A, B, C, D, z, dt_bias, h0, keep), saved = res
    n_p = s.blocks.n
    # Pad the state to the forward's n_p (zero A, B, C, h0 contribute nothing), then cut it.
    pad = lambda v: None if v is None else _pad_state(s, v)  # noqa: E731
    A_p, B_p, C_p, h0_p, dfinal_p = pad(A), pad(B), pad(C), pad(h0), pad(dfinal)
    saved = _merge_state(saved)  # (b, l_pad / save_interval, d_pad, n_p)
    m = SLICE_N
    fwd_half = dataclasses.replace(s.blocks, n=m, states_per_thread=s.blocks.states_per_thread * m // n_p)
    bwd_half = choose_backward_blocks(s.b, s.d, s.g, m)
    half = dataclasses.replace(s, n=m, blocks=fwd_half, bwd=bwd_half)
    if (half.r_pad, half.l_pad) != (s.r_pad, s.l_pad) or not backward_fits(bwd_half):
        raise AssertionError(f"selective_scan: state slices of {m} change the padding ({half} vs {s})")
    # How each operand's cotangent combines over the slices, in _backward's order.
    how = dict(x="sum", dt="sum", A="concat", B="concat", C="concat", D="first", z="sum", dt_bias="sum",
               h0="concat", keep="first")

    def backward(k, cut):
        res_k = ((x, dt, cut(A_p), cut(B_p), cut(C_p), D if k == 0 else None, z, dt_bias, cut(h0_p), keep),
                 _split_state(1, cut(saved)))
        return dict(zip(how, _backward(half, res_k, gy, cut(dfinal_p))))

    cts = gpu_common.backward_by_state_slices(backward, how, n=n_p, slice_n=m, n_valid=s.n)
    return tuple(cts[name] for name in how)


# --------------------------------------------------------------------------------------------
# Wrapper
# --------------------------------------------------------------------------------------------


def selective_scan(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, segment_ids, return_final_state,
                   *, blocks: SelectiveScanBlocks | None = None, backward_blocks: SelectiveScanBlocks | None = None):
    """Canonical arguments in, ``(y, final_state | None)`` out (see ``ssm_jax.ops.selective_scan``).

    ``blocks``/``backward_blocks`` override the tiling rules of :mod:`.blocks` (benchmarks).
    """
    args = dict(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_state=initial_state,
                segment_ids=segment_ids)
    static = dict(dt_softplus=bool(dt_softplus), return_final_state=bool(return_final_state), blocks=blocks,
                  backward_blocks=backward_blocks)
    return _sharding.run(_selective_scan, args, static, _sharding.selective_scan_specs(x, B))


def _selective_scan(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, segment_ids, return_final_state,
                    blocks, backward_blocks):
    """:func:`selective_scan` on one device's shard (the tiling is chosen for the shard)."""
    b, l, d = x.shape
    g, n = B.shape[-2:]
    if backward_blocks is None:
        backward_blocks = choose_backward_blocks(b, d, g, n)
    if blocks is None:
        itemsize = max(jnp.dtype(v.dtype).itemsize for v in (x, dt, z, B, C) if v is not None)
        blocks = choose_blocks(b, d, g, n, l=l, save_interval=backward_blocks.chunk, itemsize=itemsize)
    if blocks.save_interval != backward_blocks.chunk:
        raise ValueError(
            f"selective_scan (pallas_gpu): the forward's save_interval ({blocks.save_interval}) must equal "
            f"the backward chunk ({backward_blocks.chunk})"
        )
    keep = _prepare.keep_mask(segment_ids)
    static = _Static(b=b, l=l, d=d, g=g, n=n, blocks=blocks, bwd=backward_blocks, softplus=bool(dt_softplus),
                     interpret=target.backend() != "gpu")
    y, h_final = _scan(static, bool(return_final_state), x, dt, A, B, C, D, z, dt_bias, initial_state, keep)
    return y, (h_final if return_final_state else None)


# --------------------------------------------------------------------------------------------
# custom_vjp
# --------------------------------------------------------------------------------------------


def _scan_bwd(s, want_final, res, cts):
    gy, dfinal = cts
    dfinal = dfinal if want_final else None
    if not backward_fits(s.bwd):
        return _backward_by_state_slices(s, res, gy, dfinal)
    return _backward(s, res, gy, dfinal)


# _scan(s, want_final, x, dt, A, B, C, D, z, dt_bias, h0, keep) -> (y, h_final)
_scan = forward_saving_vjp(_forward, _scan_bwd, num_static=2)
