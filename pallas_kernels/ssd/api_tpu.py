"""``impl="pallas_tpu"`` for :func:`ssm_jax.ops.ssd`: operand preparation, custom VJP, shard_map.

:func:`ssd` takes the op's canonical arguments (``docs/architecture.md``) and returns
``(y, final_state | None)``. Like the GPU api next to it, it prepares with plain differentiable
JAX what is cheap and per position or per head -- ``dt`` through bias and softplus (padding gets
``dt = 0``: decay 1, no input), the cumulative log-decay ``cs`` inside each kernel chunk, the
segment reset counts -- and hands the rest to :func:`_core`, a ``jax.custom_vjp`` around the
Mosaic TPU kernels of :mod:`.mosaic_tpu`. The core returns the gradient with respect to ``dt``
holding ``cs`` fixed and the gradient with respect to ``cs``; JAX's autodiff of the preparation
turns them into the gradients of ``dt``, ``A`` and ``dt_bias``.

``x``, ``z`` and ``y`` keep their ``(b, l, h, p)`` HBM layout (viewed as ``(b, l, h * p)``);
``B``, ``C`` become ``(b, g, l_pad, n)``, the states ``(b, h, n, p)``.

On a TPU backend the kernels compile with Mosaic; on CPU they run in TPU interpret mode. Under
a mesh the call runs inside ``jax.shard_map`` (see ``pallas_kernels._sharding``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels import _prepare, _sharding, tpu_common
from pallas_kernels._vjp import forward_saving_vjp
from pallas_kernels.ssd import blocks_tpu, mosaic_tpu
from pallas_kernels.ssd.blocks_tpu import SSDTPUBlocks

__all__ = ["ssd", "why_not"]

DEFAULT_BLOCKS = SSDTPUBlocks()


# --------------------------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------------------------


def why_not(ctx, blocks: SSDTPUBlocks | None = None) -> str | None:
    """None if the kernels can run on ``ctx`` (canonical arguments + "backend"), else the reason."""
    reason = tpu_common.backend_reason(ctx) or tpu_common.dtype_reason(
        ctx, ("x", "dt", "B", "C", "z", "A", "D", "dt_bias", "initial_state")
    )
    if reason:
        return reason
    blocks = blocks or DEFAULT_BLOCKS
    _, l, h, p = ctx["x"].shape
    g, n = ctx["B"].shape[-2:]
    hb = blocks_tpu.choose_heads_per_block(h, g, p, blocks.heads_per_block)
    if hb is None:
        return (f"heads_per_block={blocks.heads_per_block} must divide h // g = {h // g} with "
                f"heads_per_block * p a multiple of 128 (p={p}), or equal h={h}")
    q = blocks.chunk if l > blocks.chunk else tpu_common.pad8(l)
    xb = jnp.dtype(ctx["x"].dtype).itemsize
    gb = g if hb == h else 1
    need = blocks_tpu.backward_vmem_bytes(q, hb, p, n, gb, x_bytes=xb)
    if need > tpu_common.MAX_VMEM_LIMIT:
        return (f"a backward grid step needs {need / 2**20:.0f} MiB of VMEM (chunk {q}, {hb} heads of "
                f"p={p}, n={n}); the limit is {tpu_common.MAX_VMEM_LIMIT / 2**20:.0f} MiB: use fewer "
                "heads per block or a smaller chunk")
    return None


def ssd(*, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None, segment_ids=None,
        chunk_size=256, return_final_state=False, blocks: SSDTPUBlocks | None = None):
    """Mamba-2 SSD with the Mosaic TPU kernels; returns ``(y, final_state | None)``.

    ====================  =================  ===========================================
    argument              shape              notes
    ====================  =================  ===========================================
    x, z                  (b, l, h, p)       y has x's dtype
    dt                    (b, l, h)          softplus(dt + dt_bias) when ``dt_softplus``
    A, dt_bias            (h,)               float32 (float64 in interpret mode only)
    B, C                  (b, l, g, n)       heads split into g contiguous groups
    D                     (h, p)             float32
    initial_state         (b, h, p, n)       float32; final_state likewise
    segment_ids           (b, l)             the state resets where the id changes
    blocks                SSDTPUBlocks | None
    ====================  =================  ===========================================

    ``chunk_size`` does not change the result (the chunked algorithm is exact for any chunk);
    the kernels step through the sequence in chunks of ``blocks.chunk`` positions.
    """
    del chunk_size
    blocks = blocks or DEFAULT_BLOCKS
    args = dict(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_state=initial_state,
                segment_ids=segment_ids)
    static = dict(dt_softplus=bool(dt_softplus), return_final_state=bool(return_final_state), blocks=blocks,
                  interpret=tpu_common.interpret_params())
    return _sharding.run(_ssd, args, static, _sharding.ssd_specs(x, B))


@functools.partial(jax.jit, static_argnames=("dt_softplus", "return_final_state", "blocks", "interpret"))
def _ssd(x, dt, A, B, C, D, z, dt_bias, initial_state, segment_ids, *, dt_softplus, return_final_state, blocks,
         interpret):
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    q = blocks.chunk if l > blocks.chunk else tpu_common.pad8(l)
    l_pad = -(-l // q) * q
    f = jnp.promote_types(A.dtype, jnp.float32)
    mm = jnp.bfloat16 if x.dtype == jnp.bfloat16 else f
    hb = blocks_tpu.choose_heads_per_block(h, g, p, blocks.heads_per_block)
    prob = mosaic_tpu.Problem(
        b=b, l_pad=l_pad, h=h, p=p, g=g, n=n, q=q, hb=hb, acc=jnp.dtype(f).name, mm=jnp.dtype(mm).name,
        x_dtype=jnp.dtype(x.dtype).name, has_seg=segment_ids is not None, has_D=D is not None, has_z=z is not None,
        has_h0=initial_state is not None, interpret=interpret,
    )

    pad_len = functools.partial(_prepare.pad_axis, length=l_pad)

    # dt after bias and softplus, (b, h, l_pad); the padding gets dt = 0 *after* the softplus.
    dtp = pad_len(jnp.swapaxes(_prepare.effective_dt(dt, dt_bias, dt_softplus, f), 1, 2), axis=2)
    # Cumulative log-decay inside each kernel chunk (Listing 1's segsum, as a cumsum).
    cs = jnp.cumsum((dtp * A.astype(f)[None, :, None]).reshape(b, h, l_pad // q, q), axis=-1).reshape(b, h, l_pad)
    seq = lambda v: None if v is None else pad_len(v).reshape(b, l_pad, h * p)  # noqa: E731
    bc = lambda v: jnp.swapaxes(pad_len(v.astype(mm)), 1, 2)  # (b, g, l_pad, n)  # noqa: E731
    r = None if segment_ids is None else _prepare.reset_counts(segment_ids, l_pad, q, f)
    Dv = None if D is None else D.astype(f).reshape(1, h * p)
    h0 = None if initial_state is None else jnp.swapaxes(initial_state.astype(f), 2, 3)  # (b, h, n, p)
    operands = dict(x=seq(x), dtp=dtp, cs=cs, Bt=bc(B), Ct=bc(C), r=r, D=Dv, z=seq(z), h0=h0)
    y, final_state = _core(prob, bool(return_final_state), *(operands[k] for k in _core_operands(prob)))
    y = y.reshape(b, l_pad, h, p)[:, :l]
    if final_state is not None:
        final_state = jnp.swapaxes(final_state, 2, 3)
    return y, final_state


# --------------------------------------------------------------------------------------------
# custom_vjp around the kernels
# --------------------------------------------------------------------------------------------


def _core_operands(prob) -> tuple[str, ...]:
    """The custom_vjp's operands, in order: ``x``, ``z`` as the kernels take them, ``dtp`` (dt
    after bias and softplus) and ``cs`` (the cumulative log-decay) ``(b, h, l_pad)``, ``Bt``,
    ``Ct``, the reset counts ``r (b, l_pad)``, ``D (1, h * p)``, ``h0 (b, h, n, p)``."""
    return tpu_common.present(("x", True), ("dtp", True), ("cs", True), ("Bt", True), ("Ct", True),
                              ("r", prob.has_seg), ("D", prob.has_D), ("z", prob.has_z), ("h0", prob.has_h0))


def _kernel_operands(operands) -> dict:
    """The operands both kernels take, by name, from the core's: ``dtp`` and ``cs`` as columns
    ``col (b, h, l_pad, 2)`` and rows ``row (b, h, 2, l_pad)``, the reset counts likewise."""
    ins = dict(x=operands["x"], Bt=operands["Bt"], Ct=operands["Ct"],
               col=jnp.stack([operands["cs"], operands["dtp"]], axis=-1),
               row=jnp.stack([operands["cs"], operands["dtp"]], axis=2))
    if "r" in operands:
        ins.update(rcol=operands["r"][:, :, None], rrow=operands["r"][:, None, :])
    ins.update({k: operands[k] for k in ("D", "z", "h0") if k in operands})
    return ins


def _run_forward(prob, want_final, save, *operands):
    ins = _kernel_operands(dict(zip(_core_operands(prob), operands)))
    outs = mosaic_tpu.forward(prob, save_states=save, want_final=want_final)(ins)
    return outs["y"], outs.get("final_state"), outs.get("saved")  # saved: the states entering each chunk


def _core_bwd(prob, want_final, res, cts):
    names = _core_operands(prob)
    operands, saved = res
    operands = dict(zip(names, operands))
    dy, dfinal = cts
    has_dfinal = want_final and dfinal is not None
    ins = _kernel_operands(operands)
    ins.pop("h0", None)  # the backward starts from `saved`
    ins.update(saved=saved, dy=dy.astype(operands["x"].dtype))
    if has_dfinal:
        ins["dfinal"] = dfinal.astype(saved.dtype)
    outs = mosaic_tpu.backward(prob, has_dfinal=has_dfinal)(ins)
    Bt = operands["Bt"]
    b, g, l_pad, n = Bt.shape

    def per_group(v):  # (b, h / hb, gb, l_pad, n) partial sums -> (b, g, l_pad, n)
        if prob.gb == g:
            return v.sum(1)
        return v[:, :, 0].reshape(b, g, prob.nhb // g, l_pad, n).sum(2)

    dcol, drow = outs["dcol"], outs["drow"]
    grads = dict(x=outs["dx"], dtp=dcol[..., 1] + drow[:, :, 1], cs=dcol[..., 0] + drow[:, :, 0],
                 Bt=per_group(outs["dBt"]).astype(Bt.dtype), Ct=per_group(outs["dCt"]).astype(operands["Ct"].dtype))
    if prob.has_seg:
        grads["r"] = jnp.zeros_like(operands["r"])  # reset counts are data
    if prob.has_D:
        grads["D"] = outs["dD"].sum(0).astype(operands["D"].dtype)
    if prob.has_z:
        grads["z"] = outs["dz"]
    if prob.has_h0:
        grads["h0"] = outs["dh0"]
    return tuple(grads[k] for k in names)


# _core(prob, want_final, *operands) -> (y, final_state | None), operands in _core_operands(prob) order
_core = forward_saving_vjp(_run_forward, _core_bwd, num_static=2)
