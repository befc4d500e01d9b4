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

Grid ``(b, h / hb, L / q)``: ``("parallel", "parallel", "arbitrary")``; the ``hb`` heads' states
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
    """Static description of one call (hashable). ``L`` is a multiple of ``q``."""

    b: int
    L: int
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
        return self.L // self.q

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


def _specs(p: Problem, *, reverse: bool):
    blk = (lambda c: p.nc - 1 - c) if reverse else (lambda c: c)
    heads_per_group_blocks = (p.h // p.g) // p.hb if p.gb == 1 else 1
    cols = p.hb * p.p
    return dict(
        seq=pl.BlockSpec((None, p.q, cols), lambda b, j, c: (b, blk(c), j)),
        bc=pl.BlockSpec((None, p.gb, p.q, p.n), lambda b, j, c: (b, j // heads_per_group_blocks, blk(c), 0)),
        col=pl.BlockSpec((None, p.hb, p.q, 2), lambda b, j, c: (b, j, blk(c), 0)),
        row=pl.BlockSpec((None, p.hb, 2, p.q), lambda b, j, c: (b, j, 0, blk(c))),
        rcol=pl.BlockSpec((None, p.q, 1), lambda b, j, c: (b, blk(c), 0)),
        rrow=pl.BlockSpec((None, 1, p.q), lambda b, j, c: (b, 0, blk(c))),
        D=pl.BlockSpec((1, cols), lambda b, j, c: (0, j)),
        state=pl.BlockSpec((None, p.hb, p.n, p.p), lambda b, j, c: (b, j, 0, 0)),
        saved=pl.BlockSpec((None, p.hb, None, p.n, p.p), lambda b, j, c: (b, j, blk(c), 0, 0)),
        dbc=pl.BlockSpec((None, None, p.gb, p.q, p.n), lambda b, j, c: (b, j, 0, blk(c), 0)),
        dD=pl.BlockSpec((None, 1, cols), lambda b, j, c: (b, 0, j)),
    )


def _dot(p: Problem, a, b, *, ta: bool = False, tb: bool = False):
    """``a @ b`` (``a^T``/``b^T`` with ``ta``/``tb``) on the MXU, accumulated in ``p.acc``."""
    mm = jnp.dtype(p.mm)
    precision = lax.Precision.HIGHEST if mm.itemsize >= 4 else None
    dims = (((0 if ta else 1,), (1 if tb else 0,)), ((), ()))
    return lax.dot_general(a.astype(mm), b.astype(mm), dims, preferred_element_type=jnp.dtype(p.acc),
                           precision=precision)


class _Chunk:
    """The per-chunk quantities of one head shared by forward and backward."""

    def __init__(self, p: Problem, col_ref, row_ref, masks, hh: int):
        f = jnp.dtype(p.acc)
        self.cs_c = col_ref[hh, :, 0:1].astype(f)  # (q, 1)
        self.dt_c = col_ref[hh, :, 1:2].astype(f)
        self.cs_r = row_ref[hh, 0:1, :].astype(f)  # (1, q)
        self.dt_r = row_ref[hh, 1:2, :].astype(f)
        self.cs_last = self.cs_r[:, p.q - 1 : p.q]  # (1, 1)
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


def _masks(p: Problem, rcol_ref, rrow_ref):
    q = p.q
    causal = lax.broadcasted_iota(jnp.int32, (q, q), 0) >= lax.broadcasted_iota(jnp.int32, (q, q), 1)
    if not p.has_seg:
        return causal, None, None, None
    rc, rr = rcol_ref[...], rrow_ref[...]  # (q, 1), (1, q)
    r_last = rr[:, q - 1 : q]
    return causal & (rc == rr), rc == 0.0, rc == r_last, r_last == 0.0


def _head_cols(p: Problem, hh: int):
    return slice(hh * p.p, (hh + 1) * p.p)


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


def _forward_kernel(*refs, p: Problem, save_states: bool, want_final: bool):
    take = tpu_common.Taker(refs)
    x_ref, B_ref, C_ref, col_ref, row_ref = take(), take(), take(), take(), take()
    rcol_ref, rrow_ref = take(p.has_seg), take(p.has_seg)
    D_ref, z_ref, h0_ref = take(p.has_D), take(p.has_z), take(p.has_h0)
    y_ref, hT_ref, st_ref = take(), take(want_final), take(save_states)
    (S_scr,) = take.rest()
    f = jnp.dtype(p.acc)
    c = pl.program_id(2)
    tpu_common.enter_block(S_scr, h0_ref, c, f, saved_ref=st_ref)

    masks = _masks(p, rcol_ref, rrow_ref)
    G = [_dot(p, C_ref[gg], B_ref[gg], tb=True) for gg in range(p.gb)]  # (q, q) per group
    for hh in range(p.hb):
        gg = p.group_of(hh)
        cols = _head_cols(p, hh)
        ch = _Chunk(p, col_ref, row_ref, masks, hh)
        x = x_ref[:, cols]
        S = S_scr[hh]
        M = G[gg] * ch.Lm * ch.dt_r
        y = _dot(p, M, x) + _dot(p, C_ref[gg], S) * ch.e_in
        xf = x.astype(f)
        if p.has_D:
            y = y + D_ref[:, cols].astype(f) * xf
        if p.has_z:
            z = z_ref[:, cols].astype(f)
            y = y * (z * jax.nn.sigmoid(z))
        y_ref[:, cols] = y.astype(y_ref.dtype)
        S_scr[hh] = ch.E * S + _dot(p, B_ref[gg], ch.w * xf, ta=True)

    if want_final:
        @pl.when(c == pl.num_programs(2) - 1)
        def _():
            hT_ref[...] = S_scr[...]


def forward(p: Problem, *, save_states: bool, want_final: bool):
    """``pallas_call`` taking ``x, B, C, col, row, [rcol, rrow], [D], [z], [h0]`` and returning
    ``y, [h_final (b, h, n, p)], [states (b, h, nc, n, p)]``."""
    s = _specs(p, reverse=False)
    f = jnp.dtype(p.acc)
    in_specs = [s["seq"], s["bc"], s["bc"], s["col"], s["row"]] + [s["rcol"], s["rrow"]] * p.has_seg
    in_specs += [s["D"]] * p.has_D + [s["seq"]] * p.has_z + [s["state"]] * p.has_h0
    out = [(s["seq"], jax.ShapeDtypeStruct((p.b, p.L, p.h * p.p), p.x_dtype))]
    if want_final:
        out.append((s["state"], jax.ShapeDtypeStruct((p.b, p.h, p.n, p.p), f)))
    if save_states:
        out.append((s["saved"], jax.ShapeDtypeStruct((p.b, p.h, p.nc, p.n, p.p), f)))
    xb = jnp.dtype(p.x_dtype).itemsize
    return tpu_common.sequence_call(
        functools.partial(_forward_kernel, p=p, save_states=save_states, want_final=want_final),
        grid=p.grid,
        in_specs=in_specs,
        outs=out,
        scratch=[pltpu.VMEM((p.hb, p.n, p.p), f)],
        vmem_bytes=blocks_tpu.forward_vmem_bytes(p.q, p.hb, p.p, p.n, p.gb, x_bytes=xb, has_z=p.has_z),
        cost=forward_cost(p, save_states),
        interpret=p.interpret,
        name="ssd_fwd_tpu",
    )


def forward_cost(p: Problem, save_states: bool = False) -> pl.CostEstimate:
    """FLOPs of the chunked algorithm (Listing 1's four einsums per chunk), its exps, and the
    bytes of every block the pipeline moves (B/C once per head block)."""
    chunks = p.b * p.nc
    per_head = 2 * p.q * p.q * p.p + 4 * p.q * p.n * p.p + 6 * p.q * p.q + 6 * p.q * p.p
    flops = chunks * (p.h * per_head + p.nhb * p.gb * 2 * p.q * p.q * p.n)
    transcendentals = chunks * p.h * (p.q * p.q + 2 * p.q + 1 + p.has_z * p.q * p.p)
    xb = jnp.dtype(p.x_dtype).itemsize
    mb = jnp.dtype(p.mm).itemsize
    nbytes = p.b * p.L * p.h * p.p * xb * (2 + p.has_z) + p.b * p.nhb * p.gb * p.L * p.n * mb * 2
    nbytes += p.b * p.h * p.L * 4 * 4 + save_states * p.b * p.h * p.nc * p.n * p.p * 4
    return pl.CostEstimate(flops=int(flops), transcendentals=int(transcendentals), bytes_accessed=int(nbytes))


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------


def _backward_kernel(*refs, p: Problem, has_dfinal: bool):
    take = tpu_common.Taker(refs)
    x_ref, B_ref, C_ref, col_ref, row_ref = take(), take(), take(), take(), take()
    rcol_ref, rrow_ref = take(p.has_seg), take(p.has_seg)
    D_ref, z_ref = take(p.has_D), take(p.has_z)
    st_ref, dy_ref, dhT_ref = take(), take(), take(has_dfinal)
    dx_ref, dz_ref, dB_ref, dC_ref, dcol_ref, drow_ref = take(), take(p.has_z), take(), take(), take(), take()
    dD_ref, dh0_ref = take(p.has_D), take(p.has_h0)
    (dS_scr,) = take.rest()
    f = jnp.dtype(p.acc)
    i = pl.program_id(2)
    q = p.q

    @pl.when(i == 0)
    def _():
        dS_scr[...] = dhT_ref[...].astype(f) if has_dfinal else jnp.zeros(dS_scr.shape, f)
        if p.has_D:
            dD_ref[...] = jnp.zeros(dD_ref.shape, dD_ref.dtype)

    masks = _masks(p, rcol_ref, rrow_ref)
    last_row = lax.broadcasted_iota(jnp.int32, (q, 1), 0) == q - 1
    G = [_dot(p, C_ref[gg], B_ref[gg], tb=True) for gg in range(p.gb)]
    dB = [jnp.zeros((q, p.n), f) for _ in range(p.gb)]
    dC = [jnp.zeros((q, p.n), f) for _ in range(p.gb)]
    for hh in range(p.hb):
        gg = p.group_of(hh)
        cols = _head_cols(p, hh)
        ch = _Chunk(p, col_ref, row_ref, masks, hh)
        Bg, Cg = B_ref[gg], C_ref[gg]
        x = x_ref[:, cols]
        xf = x.astype(f)
        S = st_ref[hh]  # state entering this chunk (saved by the forward)
        dSn = dS_scr[hh]  # dL/d(state leaving this chunk)
        dy = dy_ref[:, cols].astype(f)
        M = G[gg] * ch.Lm * ch.dt_r

        # Epilogue: y = (y_pre + D x) silu(z). g = dL/d(y_pre + D x).
        if p.has_z:
            z = z_ref[:, cols].astype(f)
            sz = jax.nn.sigmoid(z)
            g = dy * (z * sz)
        else:
            g = dy
        CS = _dot(p, Cg, S)  # (q, p)
        dxf = _dot(p, M, g, ta=True)  # M^T g: the intra-chunk term
        if p.has_D:
            Dh = D_ref[:, cols].astype(f)
            dxf = dxf + g * Dh
            dD_ref[:, cols] += jnp.sum(g * xf, axis=0, keepdims=True)
        if p.has_z:
            y_pre = _dot(p, M, x) + CS * ch.e_in + (Dh * xf if p.has_D else 0.0)
            dz_ref[:, cols] = (dy * y_pre * sz * (1.0 + z * (1.0 - sz))).astype(dz_ref.dtype)

        # State -> output: y += e_in (C S).
        gE = g * ch.e_in
        dC[gg] = dC[gg] + _dot(p, gE, S, tb=True)
        de_in = jnp.sum(g * CS, axis=1, keepdims=True)  # (q, 1)
        dS_prev = _dot(p, Cg, gE, ta=True)  # (n, p)

        # State passing: S_next = E S + B^T (w x).
        BdS = _dot(p, Bg, dSn)  # (q, p)
        dxf = dxf + ch.w * BdS
        dw = jnp.sum(xf * BdS, axis=1, keepdims=True)  # (q, 1)
        dB[gg] = dB[gg] + _dot(p, ch.w * xf, dSn, tb=True)
        dE = jnp.sum(jnp.sum(S * dSn, axis=1, keepdims=True), axis=0, keepdims=True)  # (1, 1)
        dS_scr[hh] = ch.E * dSn + dS_prev

        # Intra-chunk: y += M x with M = G o Lm o dt_s.
        dM = _dot(p, g, x, tb=True)  # (q, q)
        dG = dM * ch.Lm * ch.dt_r
        dC[gg] = dC[gg] + _dot(p, dG, Bg)
        dB[gg] = dB[gg] + _dot(p, dG, Cg, ta=True)
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

    for gg in range(p.gb):
        dB_ref[gg] = dB[gg]
        dC_ref[gg] = dC[gg]

    if p.has_h0:
        @pl.when(i == pl.num_programs(2) - 1)
        def _():
            dh0_ref[...] = dS_scr[...]


def backward(p: Problem, *, has_dfinal: bool):
    """``pallas_call`` taking ``x, B, C, col, row, [rcol, rrow], [D], [z], states, dy, [dh_final]``
    and returning ``dx, [dz], dB, dC (b, h / hb, gb, L, n), dcol (b, h, L, 2), drow (b, h, 2, L),
    [dD (b, 1, h * p)], [dh0 (b, h, n, p)]`` (dB, dC, dD: partial sums the caller reduces)."""
    s = _specs(p, reverse=True)
    f = jnp.dtype(p.acc)
    in_specs = [s["seq"], s["bc"], s["bc"], s["col"], s["row"]] + [s["rcol"], s["rrow"]] * p.has_seg
    in_specs += [s["D"]] * p.has_D + [s["seq"]] * p.has_z + [s["saved"], s["seq"]] + [s["state"]] * has_dfinal
    seq = jax.ShapeDtypeStruct((p.b, p.L, p.h * p.p), p.x_dtype)
    out = [(s["seq"], seq)] + [(s["seq"], seq)] * p.has_z
    out += [(s["dbc"], jax.ShapeDtypeStruct((p.b, p.nhb, p.gb, p.L, p.n), f))] * 2
    out += [(s["col"], jax.ShapeDtypeStruct((p.b, p.h, p.L, 2), f)), (s["row"], jax.ShapeDtypeStruct((p.b, p.h, 2, p.L), f))]
    if p.has_D:
        out.append((s["dD"], jax.ShapeDtypeStruct((p.b, 1, p.h * p.p), f)))
    if p.has_h0:
        out.append((s["state"], jax.ShapeDtypeStruct((p.b, p.h, p.n, p.p), f)))
    xb = jnp.dtype(p.x_dtype).itemsize
    return tpu_common.sequence_call(
        functools.partial(_backward_kernel, p=p, has_dfinal=has_dfinal),
        grid=p.grid,
        in_specs=in_specs,
        outs=out,
        scratch=[pltpu.VMEM((p.hb, p.n, p.p), f)],
        vmem_bytes=blocks_tpu.backward_vmem_bytes(p.q, p.hb, p.p, p.n, p.gb, x_bytes=xb, has_z=p.has_z),
        cost=backward_cost(p),
        interpret=p.interpret,
        name="ssd_bwd_tpu",
    )


def backward_cost(p: Problem) -> pl.CostEstimate:
    """The forward's products again (recomputed) plus the backward's: per head 3 more (q, q, p)
    and 5 more (q, n, p) matmuls, 2 (q, q, n) per group; reads dy and the saved states."""
    fwd = forward_cost(p)
    chunks = p.b * p.nc
    flops = fwd.flops + chunks * (p.h * (6 * p.q * p.q * p.p + 10 * p.q * p.n * p.p + 10 * p.q * p.q)
                                  + p.nhb * p.gb * 4 * p.q * p.q * p.n)
    xb = jnp.dtype(p.x_dtype).itemsize
    nbytes = fwd.bytes_accessed + p.b * p.L * p.h * p.p * xb * (2 + p.has_z) + p.b * p.h * p.nc * p.n * p.p * 4
    nbytes += 2 * p.b * p.nhb * p.gb * p.L * p.n * 4 + p.b * p.h * p.L * 4 * 4
    return pl.CostEstimate(flops=int(flops), transcendentals=int(fwd.transcendentals), bytes_accessed=int(nbytes))
