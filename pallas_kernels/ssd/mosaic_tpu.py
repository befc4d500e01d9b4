"""Mamba-2 SSD as Mosaic TPU kernels: the chunked matmul algorithm, forward and backward.

Dao & Gu 2024, Sec. 6 / Listing 1. Per head, per chunk of ``q`` positions with cumulative
log-decay ``cs_t = sum_{k <= t} dt_k A`` inside the chunk and state ``S`` ``(n, p)`` entering it::

    G   = C B^T                                  (q, q)  MXU, shared by the heads of a group
    M   = G o exp(cs_t - cs_s)[s <= t] o dt_s    the chunk's block of the semiseparable matrix
    y   = M x + exp(cs_t) (C S)                  intra-chunk + state -> output       (MXU)
    S  <- exp(cs_last) S + B^T (exp(cs_last - cs_s) dt_s x_s)   state passing       (MXU)
    y  <- (y + D x) silu(z)

Matmul operands are bfloat16 for bfloat16 inputs (the state is rounded to bfloat16 where it
enters ``C S``, as in the Triton kernels), float32 otherwise with ``Precision.HIGHEST``; every
product accumulates in float32 (``preferred_element_type``). Masks are applied before the
``exp`` and after it, so no exponential of a positive exponent is ever formed.

Grid ``(b, h / hb, l_pad / q)``: ``("parallel", "parallel", "arbitrary")``; the ``hb`` heads' states
live in VMEM scratch across the chunk axis. Segment resets enter as ``r``, the number of resets
since the chunk start (inclusive): ``s`` reaches ``t`` iff ``r_s == r_t``; the incoming state
reaches ``t`` iff ``r_t == 0``; ``s`` reaches the chunk end iff ``r_s == r_last``.

The forward can store the state entering each chunk; the backward walks the chunks last to first
with ``dS = dL/dS`` in VMEM scratch, recomputes the chunk's forward quantities and writes every
gradient of the chunk -- ``dx, dz, dB, dC`` and ``d(dt), d(cs)`` as a column and a row part (the
caller adds them and differentiates the cumulative sum and softplus with JAX).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import tpu_common
from pallas_kernels.ssd import blocks_tpu

__all__ = ["Problem", "backward", "forward"]


@dataclasses.dataclass(frozen=True)
class Problem:
    """Static description of one call (hashable). ``l_pad`` is a multiple of ``q``."""

    b: int
    l_pad: int
    h: int
    p: int
    g: int
    n: int
    q: int
    hb: int
    acc: str  # float32 (float64 only in interpret mode)
    mm: str  # matmul operand dtype
    x_dtype: str
    has_seg: bool
    has_D: bool
    has_z: bool
    has_h0: bool
    interpret: object

    @property
    def nc(self) -> int:
        return self.l_pad // self.q

    @property
    def nhb(self) -> int:
        return self.h // self.hb

    @property
    def gb(self) -> int:
        """Groups per head block: all of them when one block holds every head, else one."""
        return self.g if self.hb == self.h else 1

    @property
    def grid(self):
        return (self.b, self.nhb, self.nc)

    def group_of(self, hh: int) -> int:
        """Index into the block's groups of its ``hh``-th head."""
        return hh // (self.h // self.g) if self.gb > 1 else 0


def _specs(prob: Problem, *, reverse: bool):
    blk = (lambda c: prob.nc - 1 - c) if reverse else (lambda c: c)
    heads_per_group_blocks = (prob.h // prob.g) // prob.hb if prob.gb == 1 else 1
    cols = prob.hb * prob.p
    return dict(
        seq=pl.BlockSpec((None, prob.q, cols), lambda b, j, c: (b, blk(c), j)),
        bc=pl.BlockSpec((None, prob.gb, prob.q, prob.n), lambda b, j, c: (b, j // heads_per_group_blocks, blk(c), 0)),
        col=pl.BlockSpec((None, prob.hb, prob.q, 2), lambda b, j, c: (b, j, blk(c), 0)),
        row=pl.BlockSpec((None, prob.hb, 2, prob.q), lambda b, j, c: (b, j, 0, blk(c))),
        rcol=pl.BlockSpec((None, prob.q, 1), lambda b, j, c: (b, blk(c), 0)),
        rrow=pl.BlockSpec((None, 1, prob.q), lambda b, j, c: (b, 0, blk(c))),
        D=pl.BlockSpec((1, cols), lambda b, j, c: (0, j)),
        state=pl.BlockSpec((None, prob.hb, prob.n, prob.p), lambda b, j, c: (b, j, 0, 0)),
        saved=pl.BlockSpec((None, prob.hb, None, prob.n, prob.p), lambda b, j, c: (b, j, blk(c), 0, 0)),
        dbc=pl.BlockSpec((None, None, prob.gb, prob.q, prob.n), lambda b, j, c: (b, j, 0, blk(c), 0)),
        dD=pl.BlockSpec((None, 1, cols), lambda b, j, c: (b, 0, j)),
    )


def _dot(prob: Problem, a, b, *, ta: bool = False, tb: bool = False):
    """``a @ b`` (``a^T``/``b^T`` with ``ta``/``tb``) on the MXU, accumulated in ``prob.acc``."""
    mm = jnp.dtype(prob.mm)
    precision = lax.Precision.HIGHEST if mm.itemsize >= 4 else None
    dims = (((0 if ta else 1,), (1 if tb else 0,)), ((), ()))
    return lax.dot_general(a.astype(mm), b.astype(mm), dims, preferred_element_type=jnp.dtype(prob.acc),
                           precision=precision)


class _Chunk:
    """The per-chunk quantities of one head shared by forward and backward."""

    def __init__(self, prob: Problem, col_ref, row_ref, masks, hh: int):
        f = jnp.dtype(prob.acc)
        self.cs_c = col_ref[hh, :, 0:1].astype(f)  # (q, 1)
        self.dt_c = col_ref[hh, :, 1:2].astype(f)
        self.cs_r = row_ref[hh, 0:1, :].astype(f)  # (1, q)
        self.dt_r = row_ref[hh, 1:2, :].astype(f)
        self.cs_last = self.cs_r[:, prob.q - 1 : prob.q]  # (1, 1)
        same, open_in, open_out, open_tot = masks
        # exp of the masked difference only: entries with s > t (or across segments) would be
        # exp of a positive number, possibly inf, before the mask.
        self.Lm = jnp.where(same, jnp.exp(jnp.where(same, self.cs_c - self.cs_r, 0.0)), 0.0)  # (q, q)
        self.e_in = jnp.exp(self.cs_c)
        self.w_decay = jnp.exp(self.cs_last - self.cs_c)  # cs_last <= cs_s: <= 1
        self.E = jnp.exp(self.cs_last)
        if open_in is not None:
            self.e_in = jnp.where(open_in, self.e_in, 0.0)
            self.w_decay = jnp.where(open_out, self.w_decay, 0.0)
            self.E = jnp.where(open_tot, self.E, 0.0)
        self.w = self.w_decay * self.dt_c  # (q, 1): weight of x_s in the chunk-end state


def _masks(prob: Problem, rcol_ref, rrow_ref):
    q = prob.q
    causal = lax.broadcasted_iota(jnp.int32, (q, q), 0) >= lax.broadcasted_iota(jnp.int32, (q, q), 1)
    if not prob.has_seg:
        return causal, None, None, None
    rc, rr = rcol_ref[...], rrow_ref[...]  # (q, 1), (1, q)
    r_last = rr[:, q - 1 : q]
    return causal & (rc == rr), rc == 0.0, rc == r_last, r_last == 0.0


def _head_cols(prob: Problem, hh: int):
    return slice(hh * prob.p, (hh + 1) * prob.p)


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


def _forward_kernel(*refs, prob: Problem, save_states: bool, want_final: bool):
    take = tpu_common.Taker(refs)
    x_ref, B_ref, C_ref, col_ref, row_ref = take(), take(), take(), take(), take()
    rcol_ref, rrow_ref = take(prob.has_seg), take(prob.has_seg)
    D_ref, z_ref, h0_ref = take(prob.has_D), take(prob.has_z), take(prob.has_h0)
    y_ref, hT_ref, st_ref = take(), take(want_final), take(save_states)
    (S_scr,) = take.rest()
    f = jnp.dtype(prob.acc)
    c = pl.program_id(2)
    tpu_common.enter_block(S_scr, h0_ref, c, f, saved_ref=st_ref)

    masks = _masks(prob, rcol_ref, rrow_ref)
    G = [_dot(prob, C_ref[gg], B_ref[gg], tb=True) for gg in range(prob.gb)]  # (q, q) per group
    for hh in range(prob.hb):
        gg = prob.group_of(hh)
        cols = _head_cols(prob, hh)
        ch = _Chunk(prob, col_ref, row_ref, masks, hh)
        x = x_ref[:, cols]
        S = S_scr[hh]
        M = G[gg] * ch.Lm * ch.dt_r
        y = _dot(prob, M, x) + _dot(prob, C_ref[gg], S) * ch.e_in
        xf = x.astype(f)
        if prob.has_D:
            y = y + D_ref[:, cols].astype(f) * xf
        if prob.has_z:
            z = z_ref[:, cols].astype(f)
            y = y * (z * jax.nn.sigmoid(z))
        y_ref[:, cols] = y.astype(y_ref.dtype)
        S_scr[hh] = ch.E * S + _dot(prob, B_ref[gg], ch.w * xf, ta=True)

    if want_final:
        @pl.when(c == pl.num_programs(2) - 1)
        def _():
            hT_ref[...] = S_scr[...]


def forward(prob: Problem, *, save_states: bool, want_final: bool):
    """``pallas_call`` taking ``x, B, C, col, row, [rcol, rrow], [D], [z], [h0]`` and returning
    ``y, [h_final (b, h, n, p)], [states (b, h, nc, n, p)]``."""
    s = _specs(prob, reverse=False)
    f = jnp.dtype(prob.acc)
    in_specs = [s["seq"], s["bc"], s["bc"], s["col"], s["row"]] + [s["rcol"], s["rrow"]] * prob.has_seg
    in_specs += [s["D"]] * prob.has_D + [s["seq"]] * prob.has_z + [s["state"]] * prob.has_h0
    out = [(s["seq"], jax.ShapeDtypeStruct((prob.b, prob.l_pad, prob.h * prob.p), prob.x_dtype))]
    if want_final:
        out.append((s["state"], jax.ShapeDtypeStruct((prob.b, prob.h, prob.n, prob.p), f)))
    if save_states:
        out.append((s["saved"], jax.ShapeDtypeStruct((prob.b, prob.h, prob.nc, prob.n, prob.p), f)))
    xb = jnp.dtype(prob.x_dtype).itemsize
    return tpu_common.sequence_call(
        functools.partial(_forward_kernel, prob=prob, save_states=save_states, want_final=want_final),
        grid=prob.grid,
        in_specs=in_specs,
        outs=out,
        scratch=[pltpu.VMEM((prob.hb, prob.n, prob.p), f)],
        vmem_bytes=blocks_tpu.forward_vmem_bytes(prob.q, prob.hb, prob.p, prob.n, prob.gb, x_bytes=xb, has_z=prob.has_z),
        cost=forward_cost(prob, save_states),
        interpret=prob.interpret,
        name="ssd_fwd_tpu",
    )


def forward_cost(prob: Problem, save_states: bool = False) -> pl.CostEstimate:
    """FLOPs of the chunked algorithm (Listing 1's four einsums per chunk), its exps, and the
    bytes of every block the pipeline moves (B/C once per head block)."""
    chunks = prob.b * prob.nc
    per_head = 2 * prob.q * prob.q * prob.p + 4 * prob.q * prob.n * prob.p + 6 * prob.q * prob.q + 6 * prob.q * prob.p
    flops = chunks * (prob.h * per_head + prob.nhb * prob.gb * 2 * prob.q * prob.q * prob.n)
    transcendentals = chunks * prob.h * (prob.q * prob.q + 2 * prob.q + 1 + prob.has_z * prob.q * prob.p)
    xb = jnp.dtype(prob.x_dtype).itemsize
    mb = jnp.dtype(prob.mm).itemsize
    nbytes = (prob.b * prob.l_pad * prob.h * prob.p * xb * (2 + prob.has_z)
              + prob.b * prob.nhb * prob.gb * prob.l_pad * prob.n * mb * 2)
    nbytes += prob.b * prob.h * prob.l_pad * 4 * 4 + save_states * prob.b * prob.h * prob.nc * prob.n * prob.p * 4
    return pl.CostEstimate(flops=int(flops), transcendentals=int(transcendentals), bytes_accessed=int(nbytes))


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------


def _backward_kernel(*refs, prob: Problem, has_dfinal: bool):
    take = tpu_common.Taker(refs)
    x_ref, B_ref, C_ref, col_ref, row_ref = take(), take(), take(), take(), take()
    rcol_ref, rrow_ref = take(prob.has_seg), take(prob.has_seg)
    D_ref, z_ref = take(prob.has_D), take(prob.has_z)
    st_ref, dy_ref, dhT_ref = take(), take(), take(has_dfinal)
    dx_ref, dz_ref, dB_ref, dC_ref, dcol_ref, drow_ref = take(), take(prob.has_z), take(), take(), take(), take()
    dD_ref, dh0_ref = take(prob.has_D), take(prob.has_h0)
    (dS_scr,) = take.rest()
    f = jnp.dtype(prob.acc)
    i = pl.program_id(2)
    q = prob.q

    @pl.when(i == 0)
    def _():
        dS_scr[...] = dhT_ref[...].astype(f) if has_dfinal else jnp.zeros(dS_scr.shape, f)
        if prob.has_D:
            dD_ref[...] = jnp.zeros(dD_ref.shape, dD_ref.dtype)

    masks = _masks(prob, rcol_ref, rrow_ref)
    last_row = lax.broadcasted_iota(jnp.int32, (q, 1), 0) == q - 1
    G = [_dot(prob, C_ref[gg], B_ref[gg], tb=True) for gg in range(prob.gb)]
    dB = [jnp.zeros((q, prob.n), f) for _ in range(prob.gb)]
    dC = [jnp.zeros((q, prob.n), f) for _ in range(prob.gb)]
    for hh in range(prob.hb):
        gg = prob.group_of(hh)
        cols = _head_cols(prob, hh)
        ch = _Chunk(prob, col_ref, row_ref, masks, hh)
        Bg, Cg = B_ref[gg], C_ref[gg]
        x = x_ref[:, cols]
        xf = x.astype(f)
        S = st_ref[hh]  # state entering this chunk (saved by the forward)
        dSn = dS_scr[hh]  # dL/d(state leaving this chunk)
        dy = dy_ref[:, cols].astype(f)
        M = G[gg] * ch.Lm * ch.dt_r

        # Epilogue: y = (y_pre + D x) silu(z). g = dL/d(y_pre + D x).
        if prob.has_z:
            z = z_ref[:, cols].astype(f)
            sz = jax.nn.sigmoid(z)
            g = dy * (z * sz)
        else:
            g = dy
        CS = _dot(prob, Cg, S)  # (q, p)
        dxf = _dot(prob, M, g, ta=True)  # M^T g: the intra-chunk term
        if prob.has_D:
            Dh = D_ref[:, cols].astype(f)
            dxf = dxf + g * Dh
            dD_ref[:, cols] += jnp.sum(g * xf, axis=0, keepdims=True)
        if prob.has_z:
            y_pre = _dot(prob, M, x) + CS * ch.e_in + (Dh * xf if prob.has_D else 0.0)
            dz_ref[:, cols] = (dy * y_pre * sz * (1.0 + z * (1.0 - sz))).astype(dz_ref.dtype)

        # State -> output: y += e_in (C S).
        gE = g * ch.e_in
        dC[gg] = dC[gg] + _dot(prob, gE, S, tb=True)
        de_in = jnp.sum(g * CS, axis=1, keepdims=True)  # (q, 1)
        dS_prev = _dot(prob, Cg, gE, ta=True)  # (n, p)

        # State passing: S_next = E S + B^T (w x).
        BdS = _dot(prob, Bg, dSn)  # (q, p)
        dxf = dxf + ch.w * BdS
        dw = jnp.sum(xf * BdS, axis=1, keepdims=True)  # (q, 1)
        dB[gg] = dB[gg] + _dot(prob, ch.w * xf, dSn, tb=True)
        dE = jnp.sum(jnp.sum(S * dSn, axis=1, keepdims=True), axis=0, keepdims=True)  # (1, 1)
        dS_scr[hh] = ch.E * dSn + dS_prev

        # Intra-chunk: y += M x with M = G o Lm o dt_s.
        dM = _dot(prob, g, x, tb=True)  # (q, q)
        dG = dM * ch.Lm * ch.dt_r
        dC[gg] = dC[gg] + _dot(prob, dG, Bg)
        dB[gg] = dB[gg] + _dot(prob, dG, Cg, ta=True)
        GL = dM * G[gg] * ch.Lm
        ddt_r = jnp.sum(GL, axis=0, keepdims=True)  # (1, q)
        dLL = GL * ch.dt_r  # dL/d(cs_t - cs_s)
        dcs_c = jnp.sum(dLL, axis=1, keepdims=True) + de_in * ch.e_in - dw * ch.w
        dcs_r = -jnp.sum(dLL, axis=0, keepdims=True)
        ddt_c = dw * ch.w_decay
        # cs_last (the chunk's last position) enters w and E.
        dcs_last = jnp.sum(dw * ch.w, axis=0, keepdims=True) + dE * ch.E
        dcs_c = dcs_c + jnp.where(last_row, dcs_last, 0.0)

        dx_ref[:, cols] = dxf.astype(dx_ref.dtype)
        dcol_ref[hh, :, 0:1] = dcs_c
        dcol_ref[hh, :, 1:2] = ddt_c
        drow_ref[hh, 0:1, :] = dcs_r
        drow_ref[hh, 1:2, :] = ddt_r

    for gg in range(prob.gb):
        dB_ref[gg] = dB[gg]
        dC_ref[gg] = dC[gg]

    if prob.has_h0:
        @pl.when(i == pl.num_programs(2) - 1)
        def _():
            dh0_ref[...] = dS_scr[...]


def backward(prob: Problem, *, has_dfinal: bool):
    """``pallas_call`` taking ``x, B, C, col, row, [rcol, rrow], [D], [z], states, dy, [dh_final]``
    and returning ``dx, [dz], dB, dC (b, h / hb, gb, l_pad, n), dcol (b, h, l_pad, 2), drow (b, h, 2, l_pad),
    [dD (b, 1, h * p)], [dh0 (b, h, n, p)]`` (dB, dC, dD: partial sums the caller reduces)."""
    s = _specs(prob, reverse=True)
    f = jnp.dtype(prob.acc)
    in_specs = [s["seq"], s["bc"], s["bc"], s["col"], s["row"]] + [s["rcol"], s["rrow"]] * prob.has_seg
    in_specs += [s["D"]] * prob.has_D + [s["seq"]] * prob.has_z + [s["saved"], s["seq"]] + [s["state"]] * has_dfinal
    seq = jax.ShapeDtypeStruct((prob.b, prob.l_pad, prob.h * prob.p), prob.x_dtype)
    out = [(s["seq"], seq)] + [(s["seq"], seq)] * prob.has_z
    out += [(s["dbc"], jax.ShapeDtypeStruct((prob.b, prob.nhb, prob.gb, prob.l_pad, prob.n), f))] * 2
    out += [(s["col"], jax.ShapeDtypeStruct((prob.b, prob.h, prob.l_pad, 2), f)),
            (s["row"], jax.ShapeDtypeStruct((prob.b, prob.h, 2, prob.l_pad), f))]
    if prob.has_D:
        out.append((s["dD"], jax.ShapeDtypeStruct((prob.b, 1, prob.h * prob.p), f)))
    if prob.has_h0:
        out.append((s["state"], jax.ShapeDtypeStruct((prob.b, prob.h, prob.n, prob.p), f)))
    xb = jnp.dtype(prob.x_dtype).itemsize
    return tpu_common.sequence_call(
        functools.partial(_backward_kernel, prob=prob, has_dfinal=has_dfinal),
        grid=prob.grid,
        in_specs=in_specs,
        outs=out,
        scratch=[pltpu.VMEM((prob.hb, prob.n, prob.p), f)],
        vmem_bytes=blocks_tpu.backward_vmem_bytes(prob.q, prob.hb, prob.p, prob.n, prob.gb, x_bytes=xb, has_z=prob.has_z),
        cost=backward_cost(prob),
        interpret=prob.interpret,
        name="ssd_bwd_tpu",
    )


def backward_cost(prob: Problem) -> pl.CostEstimate:
    """The forward's products again (recomputed) plus the backward's: per head 3 more (q, q, p)
    and 5 more (q, n, p) matmuls, 2 (q, q, n) per group; reads dy and the saved states."""
    fwd = forward_cost(prob)
    chunks = prob.b * prob.nc
    flops = fwd.flops + chunks * (prob.h * (6 * prob.q * prob.q * prob.p + 10 * prob.q * prob.n * prob.p
                                            + 10 * prob.q * prob.q)
                                  + prob.nhb * prob.gb * 4 * prob.q * prob.q * prob.n)
    xb = jnp.dtype(prob.x_dtype).itemsize
    nbytes = (fwd.bytes_accessed + prob.b * prob.l_pad * prob.h * prob.p * xb * (2 + prob.has_z)
              + prob.b * prob.h * prob.nc * prob.n * prob.p * 4)
    nbytes += 2 * prob.b * prob.nhb * prob.gb * prob.l_pad * prob.n * 4 + prob.b * prob.h * prob.l_pad * 4 * 4
    return pl.CostEstimate(flops=int(flops), transcendentals=int(fwd.transcendentals), bytes_accessed=int(nbytes))
