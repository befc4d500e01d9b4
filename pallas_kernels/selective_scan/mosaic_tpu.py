"""Mamba-1 selective scan as Mosaic TPU kernels: a forward and a backward ``pallas_call``.

Mamba paper (Gu & Dao 2023), Sec. 3.2 / Alg. 2; per channel ``d`` and state index ``n``::

    dt  <- softplus(dt + dt_bias)                  (or dt + dt_bias)
    h_t  = exp(dt_t A) * h_{t-1} + dt_t x_t B_t     eq. 2a with ZOH A, B_bar = dt B
    y_t  = sum_n h_t C_t + D x_t,   y <- y * silu(z)                            eq. 2b, Fig. 3

Layout (the api module pads and transposes to it): channels on lanes, the state ``(n, td)`` with
``n`` on sublanes. Grid ``(b, d / td, l_pad / tl)``: batch rows and channel tiles are independent
("parallel", split across the TensorCores of a megacore chip), the sequence axis is "arbitrary"
and runs in order, the state carried in VMEM scratch between its steps.

Per grid step the element-wise work is vectorized over the ``(tl, td)`` block -- dt bias and
softplus, ``dt * x``, and after the recurrence ``D x`` and the gate -- and only the recurrence
itself steps through positions: per position an ``(n, td)`` exp, multiply-add and a sublane sum.
``B_t``, ``C_t`` are read as rows of their ``(tl, n)`` block and turned into ``(n, 1)`` columns
(the dynamic row load + ``expand_dims`` that apple/axlearn's TPU Mamba kernel also uses).

The forward optionally stores the state entering every sequence block (``saved``), the only
residual of the backward besides the inputs: the backward re-runs each block's recurrence from it
into VMEM, then runs the adjoint recurrence (``lam_t = C_t dy_t + a_{t+1} lam_{t+1}``, as
``ssm_jax.ops.selective_scan``'s XLA backward) from the last position to the first.
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
from pallas_kernels.selective_scan import blocks_tpu

__all__ = ["Problem", "backward", "backward_operands", "backward_results", "forward", "forward_operands",
           "forward_results"]


@dataclasses.dataclass(frozen=True)
class Problem:
    """Static description of one call (hashable: a jit static argument).

    Shapes are the kernel layout's: ``l_pad`` positions (a multiple of ``tl``), ``dp`` channels
    (``g`` groups of ``r_pad``, each a multiple of ``td`` unless ``td == dp``), ``n`` states.
    ``l_valid`` positions are real; the rest are padding the kernels treat as ``dt = 0``.
    """

    b: int
    l_pad: int
    dp: int
    g: int
    n: int
    tl: int
    td: int
    l_valid: int
    acc: str  # state/accumulation dtype: float32 (float64 only in interpret mode)
    x_dtype: str
    dt_dtype: str
    has_z: bool
    has_bias: bool
    has_D: bool
    has_keep: bool
    has_h0: bool
    softplus: bool
    unroll: int  # iterations of the 8-position loop unrolled
    interpret: object  # pltpu.InterpretParams | False

    @property
    def grid(self):
        return (self.b, self.dp // self.td, self.l_pad // self.tl)

    @property
    def tiles_per_group(self) -> int:
        return self.dp // self.g // self.td

    def x_bytes(self) -> int:
        return jnp.dtype(self.x_dtype).itemsize


# --------------------------------------------------------------------------------------------
# Operands by name: the one place that fixes their order (the api module passes and receives
# them by these names; the wrappers build their specs and the kernels get their refs by them)
# --------------------------------------------------------------------------------------------


def forward_operands(p: Problem) -> tuple[str, ...]:
    """The forward kernel's inputs in kernel layout, in call order (the optional ones only when
    present): ``x, dt, z (b, l_pad, dp)``, ``Bt, Ct (b, g, l_pad, n)``, ``At (n, dp)``, ``bias, D
    (1, dp)``, ``keep (b, l_pad, 1)`` (0 where a segment starts), ``h0 (b, n, dp)``."""
    return tpu_common.present(("x", True), ("dt", True), ("z", p.has_z), ("Bt", True), ("Ct", True), ("At", True),
                              ("bias", p.has_bias), ("D", p.has_D), ("keep", p.has_keep), ("h0", p.has_h0))


def forward_results(*, save_states: bool, want_final: bool) -> tuple[str, ...]:
    """``y (b, l_pad, dp)``, ``final_state (b, n, dp)``, ``saved (b, l_pad / tl, n, dp)``: the
    state entering every sequence block."""
    return tpu_common.present(("y", True), ("final_state", want_final), ("saved", save_states))


def backward_operands(p: Problem, *, has_dfinal: bool) -> tuple[str, ...]:
    """The forward's inputs but ``h0``, then the forward's ``saved`` states, the output cotangent
    ``dy`` and the final state's cotangent ``dfinal``."""
    return tpu_common.present(("x", True), ("dt", True), ("z", p.has_z), ("Bt", True), ("Ct", True), ("At", True),
                              ("bias", p.has_bias), ("D", p.has_D), ("keep", p.has_keep), ("saved", True),
                              ("dy", True), ("dfinal", has_dfinal))


def backward_results(p: Problem) -> tuple[str, ...]:
    """``dBt, dCt (b, dp / td, n, l_pad)`` are per-channel-tile partial sums, positions on lanes;
    ``dAt (b, n, dp)``, ``dbias, dD (b, 1, dp)`` per batch row (the caller sums them)."""
    return tpu_common.present(("dx", True), ("ddt", True), ("dz", p.has_z), ("dBt", True), ("dCt", True),
                              ("dAt", True), ("dbias", p.has_bias), ("dD", p.has_D), ("dh0", p.has_h0))


# --------------------------------------------------------------------------------------------
# Block specs by operand and result name (grid indices: b, channel tile j, sequence block i)
# --------------------------------------------------------------------------------------------


def _specs(p: Problem, *, reverse: bool) -> dict[str, pl.BlockSpec]:
    nl = p.l_pad // p.tl
    blk = (lambda i: nl - 1 - i) if reverse else (lambda i: i)
    tpg = p.tiles_per_group
    seq = pl.BlockSpec((None, p.tl, p.td), lambda b, j, i: (b, blk(i), j))
    bc = pl.BlockSpec((None, None, p.tl, p.n), lambda b, j, i: (b, j // tpg, blk(i), 0))
    row = pl.BlockSpec((1, p.td), lambda b, j, i: (0, j))
    state = pl.BlockSpec((None, p.n, p.td), lambda b, j, i: (b, 0, j))
    per_b_row = pl.BlockSpec((None, 1, p.td), lambda b, j, i: (b, 0, j))
    bc_t = pl.BlockSpec((None, None, p.n, p.tl), lambda b, j, i: (b, j, 0, blk(i)))
    return dict(
        x=seq, dt=seq, z=seq, y=seq, dy=seq, dx=seq, ddt=seq, dz=seq,
        Bt=bc, Ct=bc, dBt=bc_t, dCt=bc_t,
        At=pl.BlockSpec((p.n, p.td), lambda b, j, i: (0, j)),
        bias=row, D=row, dbias=per_b_row, dD=per_b_row,
        keep=pl.BlockSpec((None, p.tl, 1), lambda b, j, i: (b, blk(i), 0)),
        h0=state, final_state=state, dfinal=state, dAt=state, dh0=state,
        saved=pl.BlockSpec((None, None, p.n, p.td), lambda b, j, i: (b, blk(i), 0, j)),
    )


# --------------------------------------------------------------------------------------------
# Shared pieces of both kernels
# --------------------------------------------------------------------------------------------


def _effective_dt(p: Problem, dt_raw, bias_ref, block):
    """Alg. 2 line 3 on a ``(tl, td)`` block; padded positions get ``dt = 0`` (state unchanged)."""
    f = jnp.dtype(p.acc)
    v = dt_raw.astype(f)
    if p.has_bias:
        v = v + bias_ref[...].astype(f)
    dt = _softplus(v) if p.softplus else v
    if p.l_valid < p.l_pad:
        pos = lax.broadcasted_iota(jnp.int32, dt.shape, 0) + block * p.tl
        dt = jnp.where(pos < p.l_valid, dt, 0.0)
    return v, dt


def _softplus(v):
    # log(1 + e^v) without overflow; spelled out because jax.nn.softplus lowers through `sign`,
    # whose Mosaic rule asks which TPU generation it targets.
    return jnp.maximum(v, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(v)))


GROUP = 8  # positions per loop iteration: one sublane tile of every (tl, td) row block


def _rows(ref, k):
    """Rows ``8k .. 8k + 7`` of a ``(tl, ...)`` ref: one aligned sublane-tile load."""
    return ref[pl.ds(pl.multiple_of(k * GROUP, GROUP), GROUP)]


def _put_rows(ref, k, value):
    ref[pl.ds(pl.multiple_of(k * GROUP, GROUP), GROUP)] = value


def _col(rows, j):
    """Row ``j`` of an ``(8, n)`` value as an ``(n, 1)`` column (n on sublanes, like the state)."""
    return jnp.expand_dims(rows[j], -1)


def _set_row(block, j, row):
    """``block`` ``(8, td)`` with row ``j`` replaced by ``row`` ``(1, td)`` (a select, no relayout)."""
    return jnp.where(lax.broadcasted_iota(jnp.int32, block.shape, 0) == j, row, block)


class _Group:
    """The inputs of positions ``8k .. 8k + 7``, loaded once per loop iteration."""

    def __init__(self, p: Problem, k, dt_scr, u_scr, refs, A):
        f = jnp.dtype(p.acc)
        self.dt = _rows(dt_scr, k)  # (8, td)
        self.u = _rows(u_scr, k)
        self.B = _rows(refs["Bt"], k).astype(f)  # (8, n)
        self.C = _rows(refs["Ct"], k).astype(f)
        self.keep = _rows(refs["keep"], k).astype(f) if p.has_keep else None  # (8, 1)
        self.A = A

    def decay(self, j):
        """``exp(dt_t A)`` ``(n, td)``, times 0 where a segment starts (the state forgets h_{t-1})."""
        a = jnp.exp(self.dt[j : j + 1] * self.A)
        if self.keep is not None:
            a = a * self.keep[j : j + 1]
        return a

    def step(self, j, h):
        """Eq. 2a at position ``j`` of the group."""
        return self.decay(j) * h + _col(self.B, j) * self.u[j : j + 1]

    def readout(self, j, h):
        """Eq. 2b without D: ``sum_n h C_t`` ``(1, td)``."""
        return jnp.sum(h * _col(self.C, j), axis=0, keepdims=True)


def _silu_parts(z):
    s = jax.nn.sigmoid(z)
    return z * s, s


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


def _forward_kernel(refs, h_scr, dt_scr, u_scr, y_scr, *, p: Problem, want_final: bool):
    """``refs``: the refs of :func:`forward_operands` and :func:`forward_results` by name."""
    f = jnp.dtype(p.acc)
    i = pl.program_id(2)
    tpu_common.enter_block(h_scr, refs.get("h0"), i, f, saved_ref=refs.get("saved"))

    x = refs["x"][...].astype(f)
    _, dt = _effective_dt(p, refs["dt"][...], refs.get("bias"), i)
    dt_scr[...] = dt
    u_scr[...] = dt * x
    A = refs["At"][...].astype(f)

    def group(k, h):
        grp = _Group(p, k, dt_scr, u_scr, refs, A)
        ys = jnp.zeros((GROUP, p.td), f)
        for j in range(GROUP):  # unrolled: static row indices
            h = grp.step(j, h)
            ys = _set_row(ys, j, grp.readout(j, h))
        _put_rows(y_scr, k, ys)
        return h

    ngroups = p.tl // GROUP
    h = lax.fori_loop(0, ngroups, group, h_scr[...], unroll=min(p.unroll, ngroups))
    h_scr[...] = h

    y = y_scr[...]
    if p.has_D:
        y = y + refs["D"][...].astype(f) * x
    if p.has_z:
        y = y * _silu_parts(refs["z"][...].astype(f))[0]
    refs["y"][...] = y.astype(refs["y"].dtype)

    if want_final:
        @pl.when(i == pl.num_programs(2) - 1)
        def _():
            refs["final_state"][...] = h


def forward(p: Problem, *, save_states: bool, want_final: bool):
    """The forward ``pallas_call``: takes a dict of :func:`forward_operands` and returns one of
    :func:`forward_results`."""
    f = jnp.dtype(p.acc)
    nl = p.l_pad // p.tl
    return tpu_common.sequence_call(
        functools.partial(_forward_kernel, p=p, want_final=want_final),
        p,
        operands=forward_operands(p),
        results=forward_results(save_states=save_states, want_final=want_final),
        specs=_specs(p, reverse=False),
        shapes=dict(y=jax.ShapeDtypeStruct((p.b, p.l_pad, p.dp), p.x_dtype),
                    final_state=jax.ShapeDtypeStruct((p.b, p.n, p.dp), f),
                    saved=jax.ShapeDtypeStruct((p.b, nl, p.n, p.dp), f)),
        scratch=[pltpu.VMEM((p.n, p.td), f)] + [pltpu.VMEM((p.tl, p.td), f)] * 3,
        vmem_bytes=blocks_tpu.forward_vmem_bytes(p.tl, p.td, p.n, x_bytes=p.x_bytes(), has_z=p.has_z,
                                                 save_states=save_states),
        cost=forward_cost(p),
        name="selective_scan_fwd_tpu",
    )


def forward_cost(p: Problem) -> pl.CostEstimate:
    """From the reference arithmetic: per (position, channel, state) an exp, the decay multiply,
    the input multiply-add and the readout multiply-add; per (position, channel) the bias,
    softplus (exp + log), dt * x, D x and the gate (one sigmoid)."""
    elems = p.b * p.l_pad * p.dp
    xb = p.x_bytes()
    nbytes = elems * xb * (3 + p.has_z) + 2 * p.b * p.l_pad * p.g * p.n * 4 + p.n * p.dp * 4
    return pl.CostEstimate(
        flops=int(elems * (6 * p.n + 8)),
        transcendentals=int(elems * (p.n + 2 * p.softplus + p.has_z)),
        bytes_accessed=int(nbytes),
    )


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------


def _backward_kernel(refs, lam_scr, H_scr, dt_scr, u_scr, g_scr, yp_scr, gdt_scr, gu_scr, *, p: Problem,
                     has_dfinal: bool):
    """``refs``: the refs of :func:`backward_operands` and :func:`backward_results` by name."""
    dA_ref, dbias_ref, dD_ref = refs["dAt"], refs.get("dbias"), refs.get("dD")
    f = jnp.dtype(p.acc)
    i = pl.program_id(2)
    block = pl.num_programs(2) - 1 - i  # sequence block of this step: last first

    @pl.when(i == 0)
    def _():
        lam_scr[...] = refs["dfinal"][...].astype(f) if has_dfinal else jnp.zeros(lam_scr.shape, f)
        dA_ref[...] = jnp.zeros(dA_ref.shape, dA_ref.dtype)
        if p.has_bias:
            dbias_ref[...] = jnp.zeros(dbias_ref.shape, dbias_ref.dtype)
        if p.has_D:
            dD_ref[...] = jnp.zeros(dD_ref.shape, dD_ref.dtype)

    x = refs["x"][...].astype(f)
    v, dt = _effective_dt(p, refs["dt"][...], refs.get("bias"), block)
    dt_scr[...] = dt
    u_scr[...] = dt * x
    dy = refs["dy"][...].astype(f)
    if p.has_z:
        z = refs["z"][...].astype(f)
        silu_z, sig_z = _silu_parts(z)
        g_scr[...] = dy * silu_z  # dL/d(y before the gate)
    else:
        g_scr[...] = dy
    A = refs["At"][...].astype(f)

    # 1. The block's states again, from the state that entered it: H[t + 1] = h_t, H[0] = entry.
    H_scr[0] = refs["saved"][...]
    ngroups = p.tl // GROUP

    def recompute(k, h):
        grp = _Group(p, k, dt_scr, u_scr, refs, A)
        hs, ys = [], jnp.zeros((GROUP, p.td), f)
        for j in range(GROUP):
            h = grp.step(j, h)
            hs.append(h[None])
            ys = _set_row(ys, j, grp.readout(j, h))
        H_scr[pl.ds(pl.multiple_of(k * GROUP, GROUP) + 1, GROUP)] = jnp.concatenate(hs, axis=0)
        if p.has_z:
            _put_rows(yp_scr, k, ys)
        return h

    lax.fori_loop(0, ngroups, recompute, refs["saved"][...].astype(f), unroll=min(p.unroll, ngroups))

    # 2. The adjoint recurrence, last position first. lam = dL/dh_t; dB_t, dC_t are (n, 1) lane
    # sums written into column t of the transposed (n, tl) tiles.
    lane = lax.broadcasted_iota(jnp.int32, (1, p.tl), 1)

    def adjoint(i_rev, carry):
        lam, dA, dBt, dCt = carry
        k = ngroups - 1 - i_rev
        grp = _Group(p, k, dt_scr, u_scr, refs, A)
        g = _rows(g_scr, k)
        states = H_scr[pl.ds(pl.multiple_of(k * GROUP, GROUP), GROUP + 1)]  # h_{t-1}, h_t of the group
        gus = gdts = jnp.zeros((GROUP, p.td), f)
        for j in reversed(range(GROUP)):
            t = k * GROUP + j
            g_t, u_t = g[j : j + 1], grp.u[j : j + 1]
            h_t, h_prev = states[j + 1], states[j]
            lam = lam + _col(grp.C, j) * g_t  # eq. 2b's readout feeds dL/dh_t
            onehot = lane == t
            dCt = jnp.where(onehot, jnp.sum(h_t * g_t, axis=1, keepdims=True), dCt)
            dBt = jnp.where(onehot, jnp.sum(lam * u_t, axis=1, keepdims=True), dBt)
            gus = _set_row(gus, j, jnp.sum(lam * _col(grp.B, j), axis=0, keepdims=True))  # dL/d(dt x)
            a = grp.decay(j)
            da = lam * h_prev * a  # dL/d(dt A) through a = exp(dt A)
            gdts = _set_row(gdts, j, jnp.sum(da * A, axis=0, keepdims=True))
            dA = dA + da * grp.dt[j : j + 1]
            lam = lam * a
        _put_rows(gu_scr, k, gus)
        _put_rows(gdt_scr, k, gdts)
        return lam, dA, dBt, dCt

    zeros_t = jnp.zeros((p.n, p.tl), f)
    lam, dA, dBt, dCt = lax.fori_loop(
        0, ngroups, adjoint, (lam_scr[...], jnp.zeros((p.n, p.td), f), zeros_t, zeros_t),
        unroll=min(p.unroll, ngroups),
    )
    lam_scr[...] = lam
    refs["dBt"][...] = dBt
    refs["dCt"][...] = dCt
    dA_ref[...] += dA

    # 3. Element-wise pullbacks on the whole block.
    g = g_scr[...]
    gu = gu_scr[...]
    gdt = gdt_scr[...] + gu * x  # dL/d(dt) after softplus
    dx = gu * dt
    if p.has_D:
        D = refs["D"][...].astype(f)
        dx = dx + g * D
        dD_ref[...] += jnp.sum(g * x, axis=0, keepdims=True)
    if p.has_z:
        y_pre = yp_scr[...] + (D * x if p.has_D else 0.0)
        refs["dz"][...] = (dy * y_pre * sig_z * (1.0 + z * (1.0 - sig_z))).astype(refs["dz"].dtype)
    if p.softplus:
        gdt = gdt * jax.nn.sigmoid(v)
    if p.l_valid < p.l_pad:
        pos = lax.broadcasted_iota(jnp.int32, gdt.shape, 0) + block * p.tl
        gdt = jnp.where(pos < p.l_valid, gdt, 0.0)
    if p.has_bias:
        dbias_ref[...] += jnp.sum(gdt, axis=0, keepdims=True)
    refs["dx"][...] = dx.astype(refs["dx"].dtype)
    refs["ddt"][...] = gdt.astype(refs["ddt"].dtype)

    if p.has_h0:
        @pl.when(i == pl.num_programs(2) - 1)
        def _():
            refs["dh0"][...] = lam


def backward(p: Problem, *, has_dfinal: bool):
    """The backward ``pallas_call``: takes a dict of :func:`backward_operands` and returns one of
    :func:`backward_results`."""
    f = jnp.dtype(p.acc)
    nd = p.dp // p.td
    seq = lambda dtype: jax.ShapeDtypeStruct((p.b, p.l_pad, p.dp), dtype)  # noqa: E731
    bc_t = jax.ShapeDtypeStruct((p.b, nd, p.n, p.l_pad), f)
    state = jax.ShapeDtypeStruct((p.b, p.n, p.dp), f)
    per_b_row = jax.ShapeDtypeStruct((p.b, 1, p.dp), f)
    return tpu_common.sequence_call(
        functools.partial(_backward_kernel, p=p, has_dfinal=has_dfinal),
        p,
        operands=backward_operands(p, has_dfinal=has_dfinal),
        results=backward_results(p),
        specs=_specs(p, reverse=True),
        shapes=dict(dx=seq(p.x_dtype), ddt=seq(p.dt_dtype), dz=seq(p.x_dtype), dBt=bc_t, dCt=bc_t, dAt=state,
                    dbias=per_b_row, dD=per_b_row, dh0=state),
        scratch=[pltpu.VMEM((p.n, p.td), f), pltpu.VMEM((p.tl + 1, p.n, p.td), f)] + [pltpu.VMEM((p.tl, p.td), f)] * 6,
        vmem_bytes=blocks_tpu.backward_vmem_bytes(p.tl, p.td, p.n, x_bytes=p.x_bytes(), has_z=p.has_z),
        cost=backward_cost(p),
        name="selective_scan_bwd_tpu",
    )


def backward_cost(p: Problem) -> pl.CostEstimate:
    """The recomputed forward plus the adjoint step: per (position, channel, state) the decay
    exp again, ~14 multiply-adds (lam update, dA, d(dt), dB, dC, d(dt x)) and the transposed
    dB/dC selects; reads the forward's inputs and dy, writes dx, d(dt), dz."""
    fwd = forward_cost(p)
    elems = p.b * p.l_pad * p.dp
    xb = p.x_bytes()
    extra = elems * xb * (3 + p.has_z) + 2 * p.b * (p.dp // p.td) * p.n * p.l_pad * 4
    return pl.CostEstimate(
        flops=int(fwd.flops + elems * (16 * p.n + 12)),
        transcendentals=int(fwd.transcendentals + elems * (p.n + 1)),
        bytes_accessed=int(fwd.bytes_accessed + extra),
    )
