"""``impl="pallas_gpu"`` for :func:`ssm_jax.ops.selective_scan`: padding, dispatch, custom VJP.

:func:`selective_scan` takes the op's canonical arguments (``docs/architecture.md``), pads them
to what the kernels need (state size to a power of two >= 8, each channel group to a multiple of
the block's channels, the length to a multiple of the chunk), runs the Mosaic GPU kernels of
:mod:`.mosaic_gpu` and slices the padding off. On a CPU backend the same kernels run in Mosaic
GPU interpret mode. :func:`why_not` says when they cannot run.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from pallas_kernels.selective_scan import mosaic_gpu
from pallas_kernels.selective_scan.blocks import SelectiveScanBlocks, choose_blocks

__all__ = ["selective_scan", "why_not", "MAX_STATE"]

MAX_STATE = 256
_SUPPORTED = ("float32", "bfloat16", "float16")


def why_not(ctx) -> str | None:
    """None if the kernels can run on these canonical arguments and backend, else the reason."""
    backend = ctx.get("backend", jax.default_backend())
    if backend == "gpu":
        kinds = {getattr(dev, "compute_capability", None) for dev in jax.local_devices(backend="gpu")}
        if not all(k is not None and str(k).startswith("9") for k in kinds):
            return f"Mosaic GPU kernel is written for Hopper (compute capability 9.x); devices have {sorted(map(str, kinds))}"
    elif backend != "cpu":
        return f"needs an NVIDIA Hopper GPU (or the CPU backend, for interpret mode); backend is {backend!r}"
    n = ctx["A"].shape[-1]
    if n > MAX_STATE:
        return f"state size n={n} exceeds {MAX_STATE} (the state lives in registers)"
    for name in ("x", "dt", "B", "C", "z"):
        v = ctx.get(name)
        if v is not None and jnp.dtype(v.dtype).name not in _SUPPORTED:
            return f"`{name}` has dtype {jnp.dtype(v.dtype).name}; the kernel takes {', '.join(_SUPPORTED)} (state in float32)"
    if jnp.dtype(ctx["A"].dtype) != jnp.float32:
        return f"parameters are {jnp.dtype(ctx['A'].dtype).name}; the kernel computes in float32 (float64 inputs are not supported)"
    return None


def selective_scan(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, segment_ids, return_final_state,
                   *, blocks: SelectiveScanBlocks | None = None):
    """Canonical arguments in, ``(y, final_state | None)`` out (see ``ssm_jax.ops.selective_scan``)."""
    b, l, d = x.shape
    g, n = B.shape[-2:]
    if blocks is None:
        blocks = choose_blocks(b, d, g, n)
    keep = None
    if segment_ids is not None:
        # keep[t] = 0 where a new segment starts: the state restarts from zero there.
        changed = segment_ids[:, 1:] != segment_ids[:, :-1]
        keep = jnp.pad(1.0 - changed.astype(jnp.float32), ((0, 0), (1, 0)), constant_values=1.0)
    static = _Static(b=b, l=l, d=d, g=g, n=n, blocks=blocks, softplus=bool(dt_softplus),
                     interpret=jax.default_backend() != "gpu")
    y, h_final = _scan(static, bool(return_final_state), x, dt, A, B, C, D, z, dt_bias, initial_state, keep)
    return y, (h_final if return_final_state else None)


# --------------------------------------------------------------------------------------------
# Padding
# --------------------------------------------------------------------------------------------


import dataclasses  # noqa: E402


@dataclasses.dataclass(frozen=True)
class _Static:
    b: int
    l: int
    d: int
    g: int
    n: int
    blocks: SelectiveScanBlocks
    softplus: bool
    interpret: bool

    @property
    def r(self) -> int:  # channels per group
        return self.d // self.g

    @property
    def r_pad(self) -> int:
        ch = self.blocks.channels
        return -(-self.r // ch) * ch

    @property
    def l_pad(self) -> int:
        quantum = max(self.blocks.chunk, self.blocks.save_interval)
        return -(-self.l // quantum) * quantum

    def problem(self, *, x_dtype, dt_dtype, z_dtype, bc_dtype, has_D, has_z, has_bias, has_h0,
                has_keep) -> mosaic_gpu.Problem:
        name = lambda t: jnp.dtype(t).name  # noqa: E731
        return mosaic_gpu.Problem(
            b=self.b, l=self.l_pad, d=self.g * self.r_pad, g=self.g, l_valid=self.l, blocks=self.blocks,
            x_dtype=name(x_dtype), dt_dtype=name(dt_dtype), z_dtype=name(z_dtype), bc_dtype=name(bc_dtype),
            has_D=has_D, has_z=has_z,
            has_bias=has_bias, softplus=self.softplus, has_h0=has_h0, has_keep=has_keep, interpret=self.interpret,
        )


def _pad_channels(s: _Static, v, axis: int):
    """Pad the channel ``axis`` (size d = g * r) of ``v`` to ``g * r_pad`` with zeros, per group."""
    if s.r_pad == s.r:
        return v
    shape = v.shape
    v = v.reshape(*shape[:axis], s.g, s.r, *shape[axis + 1 :])
    pads = [(0, 0)] * v.ndim
    pads[axis + 1] = (0, s.r_pad - s.r)
    return jnp.pad(v, pads).reshape(*shape[:axis], s.g * s.r_pad, *shape[axis + 1 :])


def _unpad_channels(s: _Static, v, axis: int):
    if s.r_pad == s.r:
        return v
    shape = v.shape
    v = v.reshape(*shape[:axis], s.g, s.r_pad, *shape[axis + 1 :])
    v = jax.lax.slice_in_dim(v, 0, s.r, axis=axis + 1)
    return v.reshape(*shape[:axis], s.d, *shape[axis + 1 :])


def _pad_length(s: _Static, v, axis: int = 1, value=0):
    if s.l_pad == s.l:
        return v
    pads = [(0, 0)] * v.ndim
    pads[axis] = (0, s.l_pad - s.l)
    return jnp.pad(v, pads, constant_values=value)


def _pad_state(s: _Static, v, axis: int = -1):
    n_p = s.blocks.n
    if n_p == s.n:
        return v
    pads = [(0, 0)] * v.ndim
    pads[axis] = (0, n_p - s.n)
    return jnp.pad(v, pads)


def _per_chunk_tile(s: _Static, v):
    """``(d,)`` -> ``(d_pad / ch, chunk, ch)`` float32: a per-channel vector repeated per position."""
    ch, q = s.blocks.channels, s.blocks.chunk
    v = _pad_channels(s, v.astype(jnp.float32), 0)
    v = v.reshape(-1, 1, ch)
    return jnp.broadcast_to(v, (v.shape[0], q, ch))


def _prepare(s: _Static, x, dt, A, B, C, D, z, dt_bias, h0, keep):
    """Padded kernel inputs in the order of ``mosaic_gpu.forward``."""
    seq = lambda v: _pad_channels(s, _pad_length(s, v), 2)  # noqa: E731
    ins = [seq(x), seq(dt)]
    if z is not None:
        ins.append(seq(z))
    ins += [_pad_state(s, _pad_length(s, B)), _pad_state(s, _pad_length(s, C))]
    ins.append(_split_state(s, _pad_state(s, _pad_channels(s, A.astype(jnp.float32) * mosaic_gpu.LOG2E, 0))))
    if dt_bias is not None:
        ins.append(_per_chunk_tile(s, dt_bias))
    if D is not None:
        ins.append(_per_chunk_tile(s, D))
    if keep is not None:
        ins.append(_pad_length(s, keep, value=1.0))
    if h0 is not None:
        ins.append(_split_state(s, _pad_state(s, _pad_channels(s, h0.astype(jnp.float32), 1))))
    return ins


def _split_state(s: _Static, v):
    """``(..., n_pad) -> (..., n_pad / v, v)``: the state axis as a thread's registers hold it."""
    k = s.blocks.states_per_thread
    return v.reshape(*v.shape[:-1], v.shape[-1] // k, k)


def _merge_state(v):
    return v.reshape(*v.shape[:-2], v.shape[-2] * v.shape[-1])


def _forward(s: _Static, want_final: bool, save_states: bool, x, dt, A, B, C, D, z, dt_bias, h0, keep):
    bc_dtype = jnp.promote_types(B.dtype, C.dtype)
    B, C = B.astype(bc_dtype), C.astype(bc_dtype)
    p = s.problem(x_dtype=x.dtype, dt_dtype=dt.dtype, z_dtype=x.dtype if z is None else z.dtype, bc_dtype=bc_dtype,
                  has_D=D is not None, has_z=z is not None, has_bias=dt_bias is not None, has_h0=h0 is not None,
                  has_keep=keep is not None)
    outs = mosaic_gpu.forward(p, save_states=save_states, want_final=want_final)(
        *_prepare(s, x, dt, A, B, C, D, z, dt_bias, h0, keep)
    )
    outs = list(outs)
    y = outs.pop(0)
    y = _unpad_channels(s, y[:, : s.l], 2)
    h_final = outs.pop(0) if want_final else None
    if h_final is not None:
        h_final = _unpad_channels(s, _merge_state(h_final)[..., : s.n], 1)
    saved = outs.pop(0) if save_states else None
    return y, h_final, saved


# --------------------------------------------------------------------------------------------
# custom_vjp
# --------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _scan(s, want_final, x, dt, A, B, C, D, z, dt_bias, h0, keep):
    y, h_final, _ = _forward(s, want_final, False, x, dt, A, B, C, D, z, dt_bias, h0, keep)
    return y, h_final


def _scan_fwd(s, want_final, x, dt, A, B, C, D, z, dt_bias, h0, keep):
    y, h_final, saved = _forward(s, want_final, True, x, dt, A, B, C, D, z, dt_bias, h0, keep)
    return (y, h_final), (x, dt, A, B, C, D, z, dt_bias, h0, keep, saved)


def _scan_bwd(s, want_final, res, cts):
    raise NotImplementedError


_scan.defvjp(_scan_fwd, _scan_bwd)
