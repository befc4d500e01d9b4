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

import functools

import jax
import jax.numpy as jnp

from pallas_kernels import _prepare, _sharding, tpu_common
from pallas_kernels._vjp import forward_saving_vjp
from pallas_kernels.selective_scan import blocks_tpu, mosaic_tpu
from pallas_kernels.selective_scan.blocks_tpu import SelectiveScanTPUBlocks

__all__ = ["selective_scan", "why_not"]


# --------------------------------------------------------------------------------------------
# Settings: how the channels are padded and tiled (the rest is the kernels' Problem)
# --------------------------------------------------------------------------------------------


def _channel_tiles(d: int, g: int, blocks: SelectiveScanTPUBlocks) -> tuple[int, int]:
    """``(r_pad, td)``: each of the ``g`` groups of ``d / g`` channels is zero-padded to ``r_pad``
    channels (``mosaic_tpu.Problem.dp = g * r_pad``), run in tiles of ``td``."""
    if g == 1 and d <= tpu_common.LANES:
        return d, d  # one full-width block: any width is a legal block
    r_pad = tpu_common.pad128(d // g)
    return r_pad, next(w for w in (blocks.block_d, 256, 128) if r_pad % w == 0)


# --------------------------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------------------------


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


@functools.partial(jax.jit, static_argnames=("dt_softplus", "return_final_state", "blocks", "interpret"))
def _selective_scan(x, dt, A, B, C, D, z, dt_bias, initial_state, segment_ids, *, dt_softplus, return_final_state,
                    blocks, interpret):
    b, l, d = x.shape
    g, n = B.shape[-2:]
    r_pad, td = _channel_tiles(d, g, blocks)
    pad = functools.partial(_prepare.pad_groups, groups=g, size=r_pad)  # (.., d, ..) -> (.., g * r_pad, ..)
    unpad = functools.partial(_prepare.unpad_groups, groups=g, size=d // g)
    tl = blocks.block_l if l > blocks.block_l else tpu_common.pad8(l)
    l_pad = -(-l // tl) * tl
    f = jnp.promote_types(A.dtype, jnp.float32)  # float32; float64 only under x64 (interpret mode)
    p = mosaic_tpu.Problem(
        b=b, l_pad=l_pad, dp=g * r_pad, g=g, n=n, tl=tl, td=td, l_valid=l, acc=jnp.dtype(f).name,
        x_dtype=jnp.dtype(x.dtype).name, dt_dtype=jnp.dtype(dt.dtype).name, has_z=z is not None,
        has_bias=dt_bias is not None, has_D=D is not None, has_keep=segment_ids is not None,
        has_h0=initial_state is not None, softplus=dt_softplus, unroll=blocks.unroll, interpret=interpret,
    )
    seq = lambda v: None if v is None else pad(_prepare.pad_axis(v, l_pad), 2)  # noqa: E731
    row = lambda v: None if v is None else pad(v.astype(f), 0)[None, :]  # noqa: E731
    bc = lambda v: jnp.swapaxes(_prepare.pad_axis(v.astype(f), l_pad), 1, 2)  # (b, g, l_pad, n)  # noqa: E731
    keep = None
    if segment_ids is not None:
        # 0 where a new segment starts: the state forgets h_{t-1} there (a reused id is new too).
        keep = _prepare.pad_axis(_prepare.keep_mask(segment_ids, f), l_pad, value=1.0)[..., None]
    h0 = None
    if initial_state is not None:
        h0 = jnp.swapaxes(pad(initial_state.astype(f), 1), 1, 2)  # (b, n, dp)
    At = jnp.swapaxes(pad(A.astype(f), 0), 0, 1)  # (n, dp)
    operands = dict(x=seq(x), dt=seq(dt), z=seq(z), Bt=bc(B), Ct=bc(C), At=At, bias=row(dt_bias), D=row(D), keep=keep,
                    h0=h0)
    y, final_state = _core(p, bool(return_final_state), *(operands[k] for k in mosaic_tpu.forward_operands(p)))
    y = unpad(y[:, :l], 2)
    if final_state is not None:
        final_state = unpad(jnp.swapaxes(final_state, 1, 2), 1)
    return y, final_state


# --------------------------------------------------------------------------------------------
# custom_vjp around the kernels
# --------------------------------------------------------------------------------------------


def _run_forward(p, want_final, save, *operands):
    operands = dict(zip(mosaic_tpu.forward_operands(p), operands))
    outs = mosaic_tpu.forward(p, save_states=save, want_final=want_final)(operands)
    return outs["y"], outs.get("final_state"), outs.get("saved")  # saved: the states entering each block


def _core_bwd(p, want_final, res, cts):
    names = mosaic_tpu.forward_operands(p)
    operands, saved = res
    operands = dict(zip(names, operands))
    dy, dfinal = cts
    has_dfinal = want_final and dfinal is not None
    ins = {k: v for k, v in operands.items() if k != "h0"}
    ins.update(saved=saved, dy=dy.astype(operands["x"].dtype))
    if has_dfinal:
        ins["dfinal"] = dfinal.astype(saved.dtype)
    outs = mosaic_tpu.backward(p, has_dfinal=has_dfinal)(ins)
    # Per channel tile -> per group (tiles of one group are consecutive), (b, g, l_pad, n) like Bt.
    per_group = lambda v: jnp.swapaxes(v.reshape(p.b, p.g, p.tiles_per_group, p.n, p.l_pad).sum(2), 2, 3)  # noqa: E731
    per_batch_row = lambda v: v.sum(0)  # noqa: E731
    reduce = dict(Bt=per_group, Ct=per_group, At=per_batch_row, bias=per_batch_row, D=per_batch_row)
    grads = []
    for name in names:  # the backward's result "d" + name is the gradient of operand `name`
        v = operands[name]
        if name == "keep":
            grads.append(jnp.zeros_like(v))  # segment starts are data
        elif name in reduce:
            grads.append(reduce[name](outs["d" + name]).astype(v.dtype))
        else:
            grads.append(outs["d" + name])
    return tuple(grads)


# _core(p, want_final, *operands) -> (y, final_state | None), operands in mosaic_tpu.forward_operands(p) order
_core = forward_saving_vjp(_run_forward, _core_bwd, num_static=2)
