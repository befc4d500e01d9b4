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

__all__ = ["Problem", "backward", "backward_operands", "backward_results", "forward", "forward_operands",
           "forward_results"]


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


# --------------------------------------------------------------------------------------------
# Operands by name: the one place that fixes their order (the api module passes and receives
# them by these names; the wrappers build their specs and the kernels get their refs by them)
# --------------------------------------------------------------------------------------------


def forward_operands(prob: Problem) -> tuple[str, ...]:
    """The forward kernel's inputs, in call order (the optional ones only when present): ``x, z
    (b, l_pad, h * p)``, ``Bt, Ct (b, g, l_pad, n)``, the cumulative log-decay and dt as columns
    ``col (b, h, l_pad, 2)`` and rows ``row (b, h, 2, l_pad)``, the reset counts likewise ``rcol (b,
    l_pad, 1)``, ``rrow (b, 1, l_pad)``, ``D (1, h * p)``, ``h0 (b, h, n, p)``."""
    return tpu_common.present(("x", True), ("Bt", True), ("Ct", True), ("col", True), ("row", True),
                              ("rcol", prob.has_seg), ("rrow", prob.has_seg), ("D", prob.has_D), ("z", prob.has_z),
                              ("h0", prob.has_h0))


def forward_results(*, save_states: bool, want_final: bool) -> tuple[str, ...]:
    """``y (b, l_pad, h * p)``, ``final_state (b, h, n, p)``, ``saved (b, h, nc, n, p)``: the state
    entering every chunk."""
    return tpu_common.present(("y", True), ("final_state", want_final), ("saved", save_states))


def backward_operands(prob: Problem, *, has_dfinal: bool) -> tuple[str, ...]:
    """The forward's inputs but ``h0``, then the forward's ``saved`` states, the output cotangent
    ``dy`` and the final state's cotangent ``dfinal``."""
    return tpu_common.present(("x", True), ("Bt", True), ("Ct", True), ("col", True), ("row", True),
                              ("rcol", prob.has_seg), ("rrow", prob.has_seg), ("D", prob.has_D), ("z", prob.has_z),
                              ("saved", True), ("dy", True), ("dfinal", has_dfinal))


def backward_results(prob: Problem) -> tuple[str, ...]:
    """``dx, dz`` like ``x``; ``dBt, dCt (b, h / hb, gb, l_pad, n)``, ``dD (b, 1, h * p)``: partial
    sums the caller reduces; ``dcol, drow`` like ``col, row``; ``dh0 (b, h, n, p)``."""
    return tpu_common.present(("dx", True), ("dz", prob.has_z), ("dBt", True), ("dCt", True), ("dcol", True),
                              ("drow", True), ("dD", prob.has_D), ("dh0", prob.has_h0))


# --------------------------------------------------------------------------------------------
# Block specs by operand and result name (grid indices: b, head block j, chunk c)
# --------------------------------------------------------------------------------------------


def _specs(prob: Problem, *, reverse: bool) -> dict[str, pl.BlockSpec]:
    blk = (lambda c: prob.nc - 1 - c) if reverse else (lambda c: c)
    heads_per_group_blocks = (prob.h // prob.g) // prob.hb if prob.gb == 1 else 1
    cols = prob.hb * prob.p
    seq = pl.BlockSpec((None, prob.q, cols), lambda b, j, c: (b, blk(c), j))
    bc = pl.BlockSpec((None, prob.gb, prob.q, prob.n), lambda b, j, c: (b, j // heads_per_group_blocks, blk(c), 0))
    col = pl.BlockSpec((None, prob.hb, prob.q, 2), lambda b, j, c: (b, j, blk(c), 0))
    row = pl.BlockSpec((None, prob.hb, 2, prob.q), lambda b, j, c: (b, j, 0, blk(c)))
    state = pl.BlockSpec((None, prob.hb, prob.n, prob.p), lambda b, j, c: (b, j, 0, 0))
    dbc = pl.BlockSpec((None, None, prob.gb, prob.q, prob.n), lambda b, j, c: (b, j, 0, blk(c), 0))
    return dict(
        x=seq, z=seq, y=seq, dy=seq, dx=seq, dz=seq,
        Bt=bc, Ct=bc, dBt=dbc, dCt=dbc,
        col=col, dcol=col, row=row, drow=row,
        rcol=pl.BlockSpec((None, prob.q, 1), lambda b, j, c: (b, blk(c), 0)),
        rrow=pl.BlockSpec((None, 1, prob.q), lambda b, j, c: (b, 0, blk(c))),
        D=pl.BlockSpec((1, cols), lambda b, j, c: (0, j)),
        dD=pl.BlockSpec((None, 1, cols), lambda b, j, c: (b, 0, j)),
        h0=state, final_state=state, dfinal=state, dh0=state,
        saved=pl.BlockSpec((None, prob.hb, None, prob.n, prob.p), lambda b, j, c: (b, j, blk(c), 0, 0)),
    )


# --------------------------------------------------------------------------------------------
# Shared pieces of both kernels
# --------------------------------------------------------------------------------------------


def _dot(prob: Problem, a, b, *, ta: bool = False, tb: bool = False):
    """``a @ b`` (``a^T``/``b^T`` with ``ta``/``tb``) on the MXU, accumulated in ``prob.acc``."""
    mm = jnp.dtype(prob.mm)
    precision = lax.Precision.HIGHEST if mm.itemsize >= 4 else None
    dims = (((0 if ta else 1,), (1 if tb else 0,)), ((), ()))
    return lax.dot_general(a.astype(mm), b.astype(mm), dims, preferred_element_type=jnp.dtype(prob.acc),
                           precision=precision)


class _Chunk:
    """The per-chunk quantities of one head shared by forward and backward."""

    def __init__(self, prob: Problem, refs, masks, hh: int):
        f = jnp.dtype(prob.acc)
        self.cs_c = refs["col"][hh, :, 0:1].astype(f)  # (q, 1)
        self.dt_c = refs["col"][hh, :, 1:2].astype(f)
        self.cs_r = refs["row"][hh, 0:1, :].astype(f)  # (1, q)
        self.dt_r = refs["row"][hh, 1:2, :].astype(f)
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


def _masks(prob: Problem, refs):
    q = prob.q
    causal = lax.broadcasted_iota(jnp.int32, (q, q), 0) >= lax.broadcasted_iota(jnp.int32, (q, q), 1)
    if not prob.has_seg:
        return causal, None, None, None
    rc, rr = refs["rcol"][...], refs["rrow"][...]  # (q, 1), (1, q)
    r_last = rr[:, q - 1 : q]
    return causal & (rc == rr), rc == 0.0, rc == r_last, r_last == 0.0


def _head_cols(prob: Problem, hh: int):
    return slice(hh * prob.p, (hh + 1) * prob.p)


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


def _forward_kernel(refs, S_scr, *, prob: Problem, want_final: bool):
    """``refs``: the refs of :func:`forward_operands` and :func:`forward_results` by name."""
    f = jnp.dtype(prob.acc)
    c = pl.program_id(2)
    tpu_common.enter_block(S_scr, refs.get("h0"), c, f, saved_ref=refs.get("saved"))

    masks = _masks(prob, refs)
    B_ref, C_ref, y_ref = refs["Bt"], refs["Ct"], refs["y"]
    G = [_dot(prob, C_ref[gg], B_ref[gg], tb=True) for gg in range(prob.gb)]  # (q, q) per group
    for hh in range(prob.hb):
        gg = prob.group_of(hh)
        cols = _head_cols(prob, hh)
        ch = _Chunk(prob, refs, masks, hh)
        x = refs["x"][:, cols]
        S = S_scr[hh]
        M = G[gg] * ch.Lm * ch.dt_r
        y = _dot(prob, M, x) + _dot(prob, C_ref[gg], S) * ch.e_in
        xf = x.astype(f)
        if prob.has_D:
            y = y + refs["D"][:, cols].astype(f) * xf
        if prob.has_z:
            z = refs["z"][:, cols].astype(f)
            y = y * (z * jax.nn.sigmoid(z))
        y_ref[:, cols] = y.astype(y_ref.dtype)
        S_scr[hh] = ch.E * S + _dot(prob, B_ref[gg], ch.w * xf, ta=True)

    if want_final:
        @pl.when(c == pl.num_programs(2) - 1)
        def _():
            refs["final_state"][...] = S_scr[...]


def forward(prob: Problem, *, save_states: bool, want_final: bool):
    """The forward ``pallas_call``: takes a dict of :func:`forward_operands` and returns one of
    :func:`forward_results`."""
    f = jnp.dtype(prob.acc)
    xb = jnp.dtype(prob.x_dtype).itemsize
    return tpu_common.sequence_call(
        functools.partial(_forward_kernel, prob=prob, want_final=want_final),
        prob,
        operands=forward_operands(prob),
        results=forward_results(save_states=save_states, want_final=want_final),
        specs=_specs(prob, reverse=False),
        shapes=dict(y=jax.ShapeDtypeStruct((prob.b, prob.l_pad, prob.h * prob.p), prob.x_dtype),
                    final_state=jax.ShapeDtypeStruct((prob.b, prob.h, prob.n, prob.p), f),
                    saved=jax.ShapeDtypeStruct((prob.b, prob.h, prob.nc, prob.n, prob.p), f)),
        scratch=[pltpu.VMEM((prob.hb, prob.n, prob.p), f)],
        vmem_bytes=blocks_tpu.forward_vmem_bytes(prob.q, prob.hb, prob.p, prob.n, prob.gb, x_bytes=xb, has_z=prob.has_z),
        cost=forward_cost(prob, save_states),
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


def _backward_kernel(refs, dS_scr, *, prob: Problem, has_dfinal: bool):
    """``refs``: the refs of :func:`backward_operands` and :func:`backward_results` by name."""
    B_ref, C_ref, dD_ref = refs["Bt"], refs["Ct"], refs.get("dD")
    f = jnp.dtype(prob.acc)
    i = pl.program_id(2)
    q = prob.q

    @pl.when(i == 0)
    def _():
        dS_scr[...] = refs["dfinal"][...].astype(f) if has_dfinal else jnp.zeros(dS_scr.shape, f)
        if prob.has_D:
            dD_ref[...] = jnp.zeros(dD_ref.shape, dD_ref.dtype)

    masks = _masks(prob, refs)
    last_row = lax.broadcasted_iota(jnp.int32, (q, 1), 0) == q - 1
    G = [_dot(prob, C_ref[gg], B_ref[gg], tb=True) for gg in range(prob.gb)]
    dB = [jnp.zeros((q, prob.n), f) for _ in range(prob.gb)]
    dC = [jnp.zeros((q, prob.n), f) for _ in range(prob.gb)]
    for hh in range(prob.hb):
        gg = prob.group_of(hh)
        cols = _head_cols(prob, hh)
        ch = _Chunk(prob, refs, masks, hh)
        Bg, Cg = B_ref[gg], C_ref[gg]
        x = refs["x"][:, cols]
        xf = x.astype(f)
        S = refs["saved"][hh]  # state entering this chunk (saved by the forward)
        dSn = dS_scr[hh]  # dL/d(state leaving this chunk)
        dy = refs["dy"][:, cols].astype(f)
        M = G[gg] * ch.Lm * ch.dt_r

        # Epilogue: y = (y_pre + D x) silu(z). g = dL/d(y_pre + D x).
        if prob.has_z:
            z = refs["z"][:, cols].astype(f)
            sz = jax.nn.sigmoid(z)
            g = dy * (z * sz)
        else:
            g = dy
        CS = _dot(prob, Cg, S)  # (q, p)
        dxf = _dot(prob, M, g, ta=True)  # M^T g: the intra-chunk term
        if prob.has_D:
            Dh = refs["D"][:, cols].astype(f)
            dxf = dxf + g * Dh
            dD_ref[:, cols] += jnp.sum(g * xf, axis=0, keepdims=True)
        if prob.has_z:
            y_pre = _dot(prob, M, x) + CS * ch.e_in + (Dh * xf if prob.has_D else 0.0)
            refs["dz"][:, cols] = (dy * y_pre * sz * (1.0 + z * (1.0 - sz))).astype(refs["dz"].dtype)

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

        refs["dx"][:, cols] = dxf.astype(refs["dx"].dtype)
        refs["dcol"][hh, :, 0:1] = dcs_c
        refs["dcol"][hh, :, 1:2] = ddt_c
        refs["drow"][hh, 0:1, :] = dcs_r
        refs["drow"][hh, 1:2, :] = ddt_r

    for gg in range(prob.gb):
        refs["dBt"][gg] = dB[gg]
        refs["dCt"][gg] = dC[gg]

    if prob.has_h0:
        @pl.when(i == pl.num_programs(2) - 1)
        def _():
            refs["dh0"][...] = dS_scr[...]


def backward(prob: Problem, *, has_dfinal: bool):
    """The backward ``pallas_call``: takes a dict of :func:`backward_operands` and returns one of
    :func:`backward_results`."""
    f = jnp.dtype(prob.acc)
    seq = jax.ShapeDtypeStruct((prob.b, prob.l_pad, prob.h * prob.p), prob.x_dtype)
    dbc = jax.ShapeDtypeStruct((prob.b, prob.nhb, prob.gb, prob.l_pad, prob.n), f)
    xb = jnp.dtype(prob.x_dtype).itemsize
    return tpu_common.sequence_call(
        functools.partial(_backward_kernel, prob=prob, has_dfinal=has_dfinal),
        prob,
        operands=backward_operands(prob, has_dfinal=has_dfinal),
        results=backward_results(prob),
        specs=_specs(prob, reverse=True),
        shapes=dict(dx=seq, dz=seq, dBt=dbc, dCt=dbc, dcol=jax.ShapeDtypeStruct((prob.b, prob.h, prob.l_pad, 2), f),
                    drow=jax.ShapeDtypeStruct((prob.b, prob.h, 2, prob.l_pad), f),
                    dD=jax.ShapeDtypeStruct((prob.b, 1, prob.h * prob.p), f),
                    dh0=jax.ShapeDtypeStruct((prob.b, prob.h, prob.n, prob.p), f)),
        scratch=[pltpu.VMEM((prob.hb, prob.n, prob.p), f)],
        vmem_bytes=blocks_tpu.backward_vmem_bytes(prob.q, prob.hb, prob.p, prob.n, prob.gb, x_bytes=xb, has_z=prob.has_z),
        cost=backward_cost(prob),
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
