"""``impl="pallas_tpu"`` for :func:`ssm_jax.ops.selective_scan`: layout, padding, custom VJP, shard_map.

:func:`selective_scan` takes the op's canonical arguments (``docs/architecture.md``) and returns
``(y, final_state | None)``. It lays them out for :mod:`.mosaic_tpu` -- channels padded per group
to the 128-lane tile, the length to whole blocks, ``B``/``C`` as ``(b, g, l_pad, n)`` float32, ``A``
and the states transposed to ``(n, d)`` -- and runs the forward kernel inside a
``jax.custom_vjp`` whose backward is the backward kernel. Every gradient (``x, dt, A, B, C, D, z,
dt_bias, initial_state``, and through ``final_state``) comes from the kernels; the layout
changes around them are plain JAX, differentiated by JAX.

On a TPU backend the kernels compile with Mosaic; on CPU they run in TPU interpret mode. Under
a mesh the call runs inside ``jax.shard_map`` (see ``pallas_kernels._sharding``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels import _prepare, _sharding, tpu_common
from pallas_kernels._vjp import forward_saving_vjp
from pallas_kernels.selective_scan import blocks_tpu, mosaic_tpu
from pallas_kernels.selective_scan.blocks_tpu import SelectiveScanTPUBlocks

__all__ = ["selective_scan", "why_not"]

_ARRAYS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state", "segment_ids")


def why_not(ctx) -> str | None:
    """None if the kernels can run on these canonical arguments and backend, else the reason."""
    reason = tpu_common.backend_reason(ctx) or tpu_common.dtype_reason(
        ctx, ("x", "dt", "B", "C", "z", "A", "D", "dt_bias", "initial_state")
    )
    if reason:
        return reason
    n = ctx["A"].shape[-1]
    itemsize = jnp.dtype(ctx["x"].dtype).itemsize
    need = blocks_tpu.backward_vmem_bytes(128, 128, n, x_bytes=itemsize)
    if need > tpu_common.MAX_VMEM_LIMIT:
        return (f"state size n={n} needs {need / 2**20:.0f} MiB of VMEM per backward block at the smallest "
                f"tiling (128 x 128); the limit is {tpu_common.MAX_VMEM_LIMIT / 2**20:.0f} MiB")
    return None


def selective_scan(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, segment_ids, return_final_state,
                   *, blocks: SelectiveScanTPUBlocks | None = None):
    """Mamba-1 selective scan with the Mosaic TPU kernels; returns ``(y, final_state | None)``.

    ====================  =================  ===========================================
    argument              shape              notes
    ====================  =================  ===========================================
    x, dt, z              (b, l, d)          y has x's dtype
    A                     (d, n)             float32 (float64 in interpret mode only)
    B, C                  (b, l, g, n)       channels split into g contiguous groups
    D, dt_bias            (d,)               dt <- softplus(dt + dt_bias) if dt_softplus
    initial_state         (b, d, n)          float32; final_state likewise
    segment_ids           (b, l)             the state resets where the id changes
    blocks                SelectiveScanTPUBlocks | None (``blocks_tpu.choose_blocks``)
    ====================  =================  ===========================================
    """
    args = dict(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_state=initial_state,
                segment_ids=segment_ids)
    b, l, d = x.shape
    g, n = B.shape[-2:]
    if blocks is None:
        blocks = blocks_tpu.choose_blocks(l, d, g, n, x_bytes=jnp.dtype(x.dtype).itemsize)
    static = dict(dt_softplus=bool(dt_softplus), return_final_state=bool(return_final_state), blocks=blocks,
                  interpret=tpu_common.interpret_params())
    return _sharding.run(_selective_scan, args, static, _sharding.selective_scan_specs(x, B))


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Channel padding: ``g`` groups of ``r`` channels, each padded to ``r_pad``; tile ``td``."""

    d: int
    g: int
    r_pad: int
    td: int

    @property
    def r(self) -> int:
        return self.d // self.g

    @property
    def dp(self) -> int:
        return self.g * self.r_pad

    def pad(self, v, axis: int):
        """``(..., d, ...)`` -> ``(..., g * r_pad, ...)`` with zeros after each group's channels."""
        return _prepare.pad_groups(v, axis, self.g, self.r_pad)

    def unpad(self, v, axis: int):
        return _prepare.unpad_groups(v, axis, self.g, self.r)


def _layout(d: int, g: int, blocks: SelectiveScanTPUBlocks) -> _Layout:
    r = d // g
    if g == 1 and d <= tpu_common.LANES:
        return _Layout(d, g, d, d)  # one full-width block: any width is a legal block
    r_pad = tpu_common.pad128(r)
    td = next(w for w in (blocks.block_d, 256, 128) if r_pad % w == 0)
    return _Layout(d, g, r_pad, td)


@functools.partial(jax.jit, static_argnames=("dt_softplus", "return_final_state", "blocks", "interpret"))
def _selective_scan(x, dt, A, B, C, D, z, dt_bias, initial_state, segment_ids, *, dt_softplus, return_final_state,
                    blocks, interpret):
    b, l, d = x.shape
    g, n = B.shape[-2:]
    lay = _layout(d, g, blocks)
    tl = blocks.block_l if l > blocks.block_l else tpu_common.pad8(l)
    l_pad = -(-l // tl) * tl
    f = jnp.promote_types(A.dtype, jnp.float32)  # float32; float64 only under x64 (interpret mode)
    p = mosaic_tpu.Problem(
        b=b, l_pad=l_pad, dp=lay.dp, g=g, n=n, tl=tl, td=lay.td, l_valid=l, acc=jnp.dtype(f).name,
        x_dtype=jnp.dtype(x.dtype).name, dt_dtype=jnp.dtype(dt.dtype).name, has_z=z is not None,
        has_bias=dt_bias is not None, has_D=D is not None, has_keep=segment_ids is not None,
        has_h0=initial_state is not None, softplus=dt_softplus, unroll=blocks.unroll, interpret=interpret,
    )
    seq = lambda v: None if v is None else lay.pad(_prepare.pad_axis(v, l_pad), 2)  # noqa: E731
    row = lambda v: None if v is None else lay.pad(v.astype(f), 0)[None, :]  # noqa: E731
    bc = lambda v: jnp.swapaxes(_prepare.pad_axis(v.astype(f), l_pad), 1, 2)  # (b, g, l_pad, n)  # noqa: E731
    keep = None
    if segment_ids is not None:
        # 0 where a new segment starts: the state forgets h_{t-1} there (a reused id is new too).
        keep = _prepare.pad_axis(_prepare.keep_mask(segment_ids, f), l_pad, value=1.0)[..., None]
    h0 = None
    if initial_state is not None:
        h0 = jnp.swapaxes(lay.pad(initial_state.astype(f), 1), 1, 2)  # (b, n, dp)
    At = jnp.swapaxes(lay.pad(A.astype(f), 0), 0, 1)  # (n, dp)
    y, final_state = _core(p, bool(return_final_state), seq(x), seq(dt), seq(z), bc(B), bc(C), At, row(dt_bias), row(D),
                  keep, h0)
    y = lay.unpad(y[:, :l], 2)
    if final_state is not None:
        final_state = lay.unpad(jnp.swapaxes(final_state, 1, 2), 1)
    return y, final_state


# --------------------------------------------------------------------------------------------
# custom_vjp around the kernels
# --------------------------------------------------------------------------------------------


def _run_forward(p, want_final, save, x, dt, z, Bt, Ct, At, bias, D, keep, h0):
    ins = [v for v in (x, dt, z, Bt, Ct, At, bias, D, keep, h0) if v is not None]
    take = tpu_common.Taker(mosaic_tpu.forward(p, save_states=save, want_final=want_final)(*ins))
    return take(), take(want_final), take(save)  # y, h_final, the states entering each block


def _core_bwd(p, want_final, res, cts):
    (x, dt, z, Bt, Ct, At, bias, D, keep, _), hs = res
    dy, dfinal = cts
    has_dfinal = want_final and dfinal is not None
    ins = [v for v in (x, dt, z, Bt, Ct, At, bias, D, keep) if v is not None]
    ins += [hs, dy.astype(x.dtype)] + ([dfinal.astype(hs.dtype)] if has_dfinal else [])
    take = tpu_common.Taker(mosaic_tpu.backward(p, has_dfinal=has_dfinal)(*ins))
    dx, ddt, dz = take(), take(), take(p.has_z)
    dBt, dCt, dA = take(), take(), take()
    dbias, dD, dh0 = take(p.has_bias), take(p.has_D), take(p.has_h0)
    # Per channel tile -> per group (tiles of one group are consecutive), (b, g, l_pad, n) like Bt.
    per_group = lambda v: jnp.swapaxes(v.reshape(p.b, p.g, p.tiles_per_group, p.n, p.l_pad).sum(2), 2, 3)  # noqa: E731
    grads = (
        dx,
        ddt,
        dz,
        per_group(dBt).astype(Bt.dtype),
        per_group(dCt).astype(Ct.dtype),
        dA.sum(0).astype(At.dtype),
        None if dbias is None else dbias.sum(0).astype(bias.dtype),
        None if dD is None else dD.sum(0).astype(D.dtype),
        None if keep is None else jnp.zeros_like(keep),  # segment starts are data
        dh0,
    )
    return grads


# _core(p, want_final, x, dt, z, Bt, Ct, At, bias, D, keep, h0) -> (y, h_final)
_core = forward_saving_vjp(_run_forward, _core_bwd, num_static=2)
