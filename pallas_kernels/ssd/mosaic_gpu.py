"""Fused chunked SSD (Mamba-2) kernels for Hopper, written in Pallas Mosaic GPU.

One CTA (a single warpgroup) owns one ``(batch, head, head-dim tile)`` and walks the sequence in
chunks of ``q`` positions, keeping the ``(block_p, n)`` fp32 state in registers: the chunk-state,
state-passing and chunk-scan stages of the Mamba-2 paper's Sec. 6 algorithm (Listing 1) are fused
into one sequential loop with no HBM round trip of the chunk states. Per chunk, with
``cs = cumsum(dt * A)`` inside the chunk and ``h`` the state entering it:

    y   = (C B^T ∘ L ∘ dt) x  +  exp(cs) ∘ (C h^T)  +  D ∘ x         (diagonal + off-diagonal blocks)
    h'  = exp(cs_q) h  +  x^T (exp(cs_q - cs) ∘ dt ∘ B)                (chunk state + state passing)

where ``L[t, s] = exp(cs_t - cs_s)`` for ``s <= t`` (masked *before* the exp). The backward kernel
walks the chunks in reverse carrying ``dh`` (the gradient of the state) the same way.

Mosaic GPU constraints that shape this file (jax 0.11.2):
- ``wgmma`` operands live in shared memory (TMA-copied or written by the warpgroup and fenced with
  ``commit_smem``); the left operand could live in registers on the GPU, but the Mosaic GPU
  interpreter only takes shared-memory operands, so every operand goes through SMEM here and the
  same code runs compiled and interpreted. See README.md.
- 16-bit operands only (transposed views of SMEM tiles need 16-bit types): fp32 inputs are rounded
  to bf16 before the kernel; accumulation and the state are fp32.
- TMA reductions (``reduction_op="add"``) do not run in the interpreter: the head-group sums of
  ``dB``/``dC`` use them compiled, and per-head partial sums reduced by XLA when interpreted.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu

from pallas_kernels import gpu_common

__all__ = ["FwdSpec", "BwdSpec", "ssd_fwd_call", "ssd_bwd_call"]

_SWIZZLE = 128
_ROW = plgpu.Layout.WGMMA.reduce(1)  # a (q,) vector indexed by the row of a WGMMA tile
_COL = plgpu.Layout.WGMMA.reduce(0)  # indexed by the column


@dataclasses.dataclass(frozen=True)
class _Call:
    """The shapes both kernels' calls share: grid ``(b, h, npt)``, ``nc`` chunks of ``q``."""

    b: int
    nc: int  # chunks (the sequence is padded to nc * q)
    h: int
    g: int
    p: int
    n: int
    q: int
    block_p: int
    dtype: str  # compute (operand) dtype: bfloat16 or float16

    @property
    def npt(self):
        """Head-dim tiles per head."""
        return self.p // self.block_p


def _tiled(shape, dtype):
    """SMEM tile laid out for TMA + wgmma: (8, 128 bytes) tiles, 128-byte swizzle."""
    elems = _SWIZZLE // jnp.dtype(dtype).itemsize
    return plgpu.SMEM(
        shape, dtype, transforms=(plgpu.TilingTransform((8, elems)), plgpu.SwizzleTransform(_SWIZZLE))
    )


def _compiler_params():
    return plgpu.CompilerParams(approx_math=True, lowering_semantics=plgpu.LoweringSemantics.Lane)


def _mm(interpret: bool, *pairs):
    """Issue wgmmas ``acc += a @ b`` for each ``(init, [(a_ref, b_ref), ...])``; wait; return
    the accumulators. ``init`` is an fp32 WGMMA-layout array, or a shape for a zero start.

    Compiled, an initial value seeds the accumulator registers (``ACC.init``), so the product
    adds into them in place; the Mosaic GPU interpreter (jax 0.11.2) cannot seed accumulators,
    so there the initial value is added after the product.
    """
    if not interpret:
        inits = tuple(
            plgpu.ACC.init(plgpu.layout_cast(jnp.zeros(init, jnp.float32), plgpu.Layout.WGMMA))
            if isinstance(init, tuple) else plgpu.ACC.init(init)
            for init, _ in pairs
        )

        def seeded(accs):
            for acc, (_, terms) in zip(accs, pairs):
                for a, b in terms:
                    plgpu.wgmma(acc, a, b)

        return pl.run_state(seeded)(inits)

    shapes = [init if isinstance(init, tuple) else init.shape for init, _ in pairs]

    def body(*accs):
        for acc, (_, terms) in zip(accs, pairs):
            for a, b in terms:
                plgpu.wgmma(acc, a, b)
        return tuple(acc[...] for acc in accs)

    outs = pl.run_scoped(body, *[plgpu.ACC(shape, jnp.float32) for shape in shapes])
    return tuple(o if isinstance(init, tuple) else o + init for o, (init, _) in zip(outs, pairs))


def _cut_at_segment_starts(r, slot, q, mask, e_in, e_out, e_tot):
    """A chunk's causal ``mask`` and decays cut where a segment starts, from the within-chunk reset
    counts (see api.py) in stage ``slot`` of the shared-memory ``r``: pairs in one segment only;
    ``e_in`` (from the chunk start) only before the chunk's first start; ``e_out`` (to the chunk
    end; the forward's has dt folded in) only in the chunk's last segment; ``e_tot`` only without
    a start in the chunk."""
    r_row = plgpu.load(r.at[slot], layout=_ROW)
    r_col = plgpu.load(r.at[slot], layout=_COL)
    r_last = r[slot, q - 1]
    same = lax.broadcast_in_dim(r_row, _sq(r_row), [0]) == lax.broadcast_in_dim(r_col, _sq(r_row), [1])
    open_in, open_tot = r_row == 0.0, r_last == 0.0  # open to the previous chunk / the whole chunk
    mask = mask & same
    e_in = jnp.where(open_in, e_in, 0.0)
    open_out = r_row == r_last  # open to the chunk end
    e_out = jnp.where(open_out, e_out, 0.0)
    e_tot = jnp.where(open_tot, e_tot, 0.0)
    return mask, e_in, e_out, e_tot


def _sq(v):
    return (v.shape[0], v.shape[0])


def _cta_position(spec):
    """This CTA's batch row ``bi``, head ``hi``, head-dim tile ``pti`` (rows from ``p0``) and the
    head's group ``gi`` of B/C."""
    bi, hi, pti = lax.axis_index("b"), lax.axis_index("h"), lax.axis_index("pt")
    gi = lax.div(hi, jnp.int32(spec.h // spec.g))
    p0 = pti * spec.block_p
    return bi, hi, pti, gi, p0


def _stream_src(ref, name, bi, hi, gi, t0, q, p0, bp):
    """The GMEM tile of one per-chunk input stream."""
    if name in ("x", "z", "dout"):  # (b, l, h, p)
        return ref.at[bi, pl.ds(t0, q), hi, pl.ds(p0, bp)]
    if name in ("B", "C"):  # (b, l, g, n)
        return ref.at[bi, pl.ds(t0, q), gi]
    if name in ("dt", "cs"):  # (b, h, l) fp32
        return ref.at[bi, hi, pl.ds(t0, q)]
    if name == "r":  # (b, l) fp32
        return ref.at[bi, pl.ds(t0, q)]
    raise AssertionError(name)


def _copy_streams(ins, s, streams, bars, stride, c, slot, pos):
    """TMA copies of chunk ``c`` of each per-chunk input stream into its stage ``slot``; stream
    ``k`` arrives on barrier ``slot * stride + k``. ``pos``: ``(bi, hi, gi, p0, q, bp)``."""
    bi, hi, gi, p0, q, bp = pos
    t0 = c * q
    for k, name in enumerate(streams):
        src = _stream_src(ins[name], name, bi, hi, gi, t0, q, p0, bp)
        plgpu.copy_gmem_to_smem(src, s[name].at[slot], bars.at[slot * stride + k])


def _wait_stage(bars, slot, count):
    """Wait for the ``count`` copies of stage ``slot``."""
    for k in range(count):
        plgpu.barrier_wait(bars.at[slot * count + k])


def _load_tile(src, dst, bar, layout):
    """A per-CTA tile (D, an initial state or its cotangent): copied to shared memory, waited
    for, loaded in ``layout``."""
    plgpu.copy_gmem_to_smem(src, dst, bar)
    plgpu.barrier_wait(bar)
    return plgpu.load(dst, layout=layout)


def _kernel(body, spec, out_type, scratch, grid):
    """``plgpu.kernel`` of one warpgroup per ``(batch, head, head-dim tile)`` of ``grid``."""
    return plgpu.kernel(
        functools.partial(body, spec),
        out_type=out_type,
        scratch_types=scratch,
        grid=grid,
        grid_names=("b", "h", "pt"),
        compiler_params=_compiler_params(),
        interpret=gpu_common.interpret_params(spec.interpret),
    )


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FwdSpec(_Call):
    """Static description of one forward call."""

    y_dtype: str
    has_seg: bool
    has_D: bool
    has_z: bool
    has_h0: bool
    want_final: bool  # emit the final state
    save_states: bool  # emit the bf16 state entering each chunk (residual for the backward)
    nbuf: int  # 2: prefetch the next chunk behind the current one; 1: load after the chunk
    interpret: bool

    @property
    def in_names(self):
        names = ["x", "dt", "cs", "B", "C"]
        names += ["r"] * self.has_seg + ["D"] * self.has_D + ["z"] * self.has_z + ["h0"] * self.has_h0
        return names

    @property
    def out_names(self):
        return ["y"] + ["final_state"] * self.want_final + ["states"] * self.save_states


def _fwd_streams(spec: FwdSpec):
    return ["x", "B", "C", "dt", "cs"] + ["r"] * spec.has_seg + ["z"] * spec.has_z


def fwd_smem_bytes(spec: FwdSpec) -> int:
    """Shared memory of the forward kernel's buffers (:func:`_fwd_scratch`) for ``spec``."""
    return gpu_common.smem_bytes(_fwd_scratch(spec))


def _fwd_scratch(spec: FwdSpec) -> dict:
    """The forward kernel's shared-memory buffers and barriers, by name."""
    q, bp, n, cdt = spec.q, spec.block_p, spec.n, jnp.dtype(spec.dtype)
    nb = spec.nbuf
    streams = _fwd_streams(spec)
    scratch = dict(
        x=_tiled((nb, q, bp), cdt),
        B=_tiled((nb, q, n), cdt),
        C=_tiled((nb, q, n), cdt),
        dt=plgpu.SMEM((nb, q), jnp.float32),
        cs=plgpu.SMEM((nb, q), jnp.float32),
        m=_tiled((q, q), cdt),
        xw=_tiled((q, bp), cdt),
        hb=_tiled((bp, n), cdt),
        y=_tiled((q, bp), jnp.dtype(spec.y_dtype)),
        bars=plgpu.Barrier(num_barriers=nb * len(streams)),
        one_bar=plgpu.Barrier(num_barriers=2),
    )
    if spec.has_seg:
        scratch["r"] = plgpu.SMEM((nb, q), jnp.float32)
    if spec.has_z:
        scratch["z"] = _tiled((nb, q, bp), cdt)
    if spec.has_D:
        scratch["d"] = plgpu.SMEM((bp,), jnp.float32)
    if spec.has_h0 or spec.want_final:
        # Swizzled fp32 tiles: a WGMMA-layout register array loads/stores them without bank
        # conflicts (an unswizzled (64, n) fp32 tile has no conflict-free transfer plan).
        scratch["h32"] = _tiled((bp, n), jnp.float32)
    return scratch


def _fwd_body(spec: FwdSpec, *refs, **s):
    q, bp, n = spec.q, spec.block_p, spec.n
    cdt = jnp.dtype(spec.dtype)
    ni = len(spec.in_names)
    ins = dict(zip(spec.in_names, refs[:ni]))
    outs = dict(zip(spec.out_names, refs[ni:]))
    bi, hi, pti, gi, p0 = _cta_position(spec)
    bars = s["bars"]
    streams = _fwd_streams(spec)

    def issue(c, slot):
        _copy_streams(ins, s, streams, bars, len(streams), c, slot, (bi, hi, gi, p0, q, bp))

    def wait(slot):
        _wait_stage(bars, slot, len(streams))

    issue(0, 0)

    # Per-CTA constants: D for this head-dim tile, the initial state.
    one_bar = s["one_bar"]
    if spec.has_D:
        d_col = _load_tile(ins["D"].at[hi, pl.ds(p0, bp)], s["d"], one_bar.at[0], _COL)
    if spec.has_h0:
        h = _load_tile(ins["h0"].at[bi, hi, pl.ds(p0, bp)], s["h32"], one_bar.at[1], plgpu.Layout.WGMMA)
    else:
        h = plgpu.layout_cast(jnp.zeros((bp, n), jnp.float32), plgpu.Layout.WGMMA)
    s["hb"][...] = h.astype(cdt)
    plgpu.commit_smem()

    ti = plgpu.broadcasted_iota(jnp.int32, (q, q), 0, layout=plgpu.Layout.WGMMA)
    si = plgpu.broadcasted_iota(jnp.int32, (q, q), 1, layout=plgpu.Layout.WGMMA)
    causal = si <= ti

    nb = spec.nbuf

    def step(c, h):
        slot = lax.rem(c, nb) if nb > 1 else 0
        wait(slot)
        if nb > 1:
            @pl.when(c + 1 < spec.nc)
            def _():
                issue(c + 1, 1 - slot)

        x_s, b_s, c_s = s["x"].at[slot], s["B"].at[slot], s["C"].at[slot]
        if spec.save_states:
            # The state entering chunk c (bf16, as the chunk's C h^T product uses it).
            plgpu.copy_smem_to_gmem(s["hb"], outs["states"].at[bi, hi, c, pl.ds(p0, bp)])

        # C B^T (q, q) and C h^T (q, bp), both contracting n.
        S, Ch = _mm(spec.interpret, ((q, q), [(c_s, b_s.T)]), ((q, bp), [(c_s, s["hb"].T)]))

        cs_row = plgpu.load(s["cs"].at[slot], layout=_ROW)
        cs_col = plgpu.load(s["cs"].at[slot], layout=_COL)
        dt_row = plgpu.load(s["dt"].at[slot], layout=_ROW)
        dt_col = plgpu.load(s["dt"].at[slot], layout=_COL)
        cs_last = s["cs"][slot, q - 1]
        mask = causal
        e_in = jnp.exp(cs_row)  # decay from the chunk start to t
        w = jnp.exp(cs_last - cs_row) * dt_row  # decay from t to the chunk end, times dt_t
        e_tot = jnp.exp(cs_last)
        if spec.has_seg:
            mask, e_in, w, e_tot = _cut_at_segment_starts(s["r"], slot, q, mask, e_in, w, e_tot)
        # Mask before the exp: exp(-inf) = 0 above the diagonal, never exp(+large).
        seg = jnp.where(mask, lax.broadcast_in_dim(cs_row, (q, q), [0]) - lax.broadcast_in_dim(cs_col, (q, q), [1]), -jnp.inf)
        M = S * jnp.exp(seg) * lax.broadcast_in_dim(dt_col, (q, q), [1])
        s["m"][...] = M.astype(cdt)
        x = plgpu.load(x_s, layout=plgpu.Layout.WGMMA).astype(jnp.float32)
        s["xw"][...] = (x * lax.broadcast_in_dim(w, (q, bp), [0])).astype(cdt)
        plgpu.commit_smem()

        y_init = Ch * lax.broadcast_in_dim(e_in, (q, bp), [0])
        y, h = _mm(spec.interpret, (y_init, [(s["m"], x_s)]), (h * e_tot, [(s["xw"].T, b_s)]))

        if spec.has_D:
            y = y + x * lax.broadcast_in_dim(d_col, (q, bp), [1])
        if spec.has_z:
            z = plgpu.load(s["z"].at[slot], layout=plgpu.Layout.WGMMA).astype(jnp.float32)
            y = y * z * jax.nn.sigmoid(z)
        # The previous chunk's y and state stores must have read their SMEM before we overwrite.
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)
        s["y"][...] = y.astype(s["y"].dtype)
        s["hb"][...] = h.astype(cdt)
        plgpu.commit_smem()
        if nb == 1:
            # Single-buffered: the next chunk's copies overwrite tiles every thread reads (x, z by
            # plain loads). Issued after commit_smem's warpgroup barrier, no warp can still be
            # reading them (interpret mode runs the threads in lockstep, so it cannot show a race).
            @pl.when(c + 1 < spec.nc)
            def _():
                issue(c + 1, 0)
        plgpu.copy_smem_to_gmem(s["y"], outs["y"].at[bi, pl.ds(c * q, q), hi, pl.ds(p0, bp)])
        return h

    h = lax.fori_loop(0, spec.nc, step, h)
    if spec.want_final:
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)
        s["h32"][...] = h
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(s["h32"], outs["final_state"].at[bi, hi, pl.ds(p0, bp)])
    plgpu.wait_smem_to_gmem(0)


def ssd_fwd_call(spec: FwdSpec, *args):
    """Run the forward kernel on the prepared operands (see api.py for their layouts)."""
    n, cdt = spec.n, jnp.dtype(spec.dtype)
    l_pad = spec.nc * spec.q
    out_type = [jax.ShapeDtypeStruct((spec.b, l_pad, spec.h, spec.p), jnp.dtype(spec.y_dtype))]
    if spec.want_final:
        out_type.append(jax.ShapeDtypeStruct((spec.b, spec.h, spec.p, n), jnp.float32))
    if spec.save_states:
        out_type.append(jax.ShapeDtypeStruct((spec.b, spec.h, spec.nc, spec.p, n), cdt))
    kernel = _kernel(_fwd_body, spec, tuple(out_type), _fwd_scratch(spec), (spec.b, spec.h, spec.npt))
    return kernel(*args)


# ---------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BwdSpec(_Call):
    """Static description of one backward call."""

    has_seg: bool
    has_D: bool
    has_z: bool
    has_h0: bool  # emit d initial_state
    has_dfinal: bool  # a cotangent for the final state seeds dh
    reduce_bc: bool  # sum dB/dC over the heads of a group with TMA reductions (compiled only)
    nbuf: int  # 2: prefetch the next (earlier) chunk behind the current one; 1: no prefetch
    interpret: bool

    @property
    def in_names(self):
        names = ["x", "dout", "dt", "cs", "B", "C", "states"]
        names += ["r"] * self.has_seg + ["D"] * self.has_D + ["z"] * self.has_z + ["dfinal"] * self.has_dfinal
        # With in-kernel reductions dB/dC are zero-initialized refs passed in, added into in place.
        names += ["dB", "dC"] * self.reduce_bc
        return names

    @property
    def out_names(self):
        names = ["dx", "ddt", "dcs_a", "dcs_b"]
        names += ["dB", "dC"] * (not self.reduce_bc)
        names += ["dz"] * self.has_z + ["dD"] * self.has_D + ["dh0"] * self.has_h0
        return names


def _bwd_streams(spec: BwdSpec):
    return ["x", "dout", "B", "C", "dt", "cs"] + ["r"] * spec.has_seg + ["z"] * spec.has_z


def bwd_smem_bytes(spec: BwdSpec) -> int:
    """Shared memory of the backward kernel's buffers (:func:`_bwd_scratch`) for ``spec``."""
    return gpu_common.smem_bytes(_bwd_scratch(spec))


def _bwd_scratch(spec: BwdSpec) -> dict:
    """The backward kernel's shared-memory buffers and barriers, by name."""
    q, bp, n, cdt, nb = spec.q, spec.block_p, spec.n, jnp.dtype(spec.dtype), spec.nbuf
    streams = _bwd_streams(spec)
    f32 = jnp.float32
    scratch = dict(
        x=_tiled((nb, q, bp), cdt),
        dout=_tiled((nb, q, bp), cdt),
        B=_tiled((nb, q, n), cdt),
        C=_tiled((nb, q, n), cdt),
        hp=_tiled((nb, bp, n), cdt),
        dt=plgpu.SMEM((nb, q), f32),
        cs=plgpu.SMEM((nb, q), f32),
        m=_tiled((q, q), cdt),
        ge=_tiled((q, bp), cdt),
        xw=_tiled((q, bp), cdt),
        dhb=_tiled((bp, n), cdt),
        dx=_tiled((q, bp), cdt),
        st32=_tiled((q, n), f32),
        v_ddt=plgpu.SMEM((q,), f32),
        v_a=plgpu.SMEM((q,), f32),
        v_b=plgpu.SMEM((q,), f32),
        bars=plgpu.Barrier(num_barriers=nb * (len(streams) + 1)),
        one_bar=plgpu.Barrier(num_barriers=2),
    )
    if spec.has_seg:
        scratch["r"] = plgpu.SMEM((nb, q), f32)
    if spec.has_z:
        scratch["z"] = _tiled((nb, q, bp), cdt)
        scratch["g"] = _tiled((q, bp), cdt)
        scratch["dz"] = _tiled((q, bp), cdt)
    if spec.has_D:
        scratch["d"] = plgpu.SMEM((bp,), f32)
    return scratch


def _bwd_body(spec: BwdSpec, *refs, **s):
    q, bp, n = spec.q, spec.block_p, spec.n
    cdt = jnp.dtype(spec.dtype)
    f32 = jnp.float32
    WG = plgpu.Layout.WGMMA
    ni = len(spec.in_names)
    ins = dict(zip(spec.in_names, refs[:ni]))
    outs = dict(zip(spec.out_names, refs[ni:]))
    if spec.reduce_bc:
        outs["dB"], outs["dC"] = ins["dB"], ins["dC"]
    bi, hi, pti, gi, p0 = _cta_position(spec)
    row_out = hi * spec.npt + pti  # this CTA's row in the per-(head, p-tile) outputs
    bc_col = gi if spec.reduce_bc else row_out
    bars = s["bars"]
    streams = _bwd_streams(spec)
    nb = spec.nbuf
    ns = len(streams) + 1  # + the state entering the chunk

    def issue(c, slot):
        _copy_streams(ins, s, streams, bars, ns, c, slot, (bi, hi, gi, p0, q, bp))
        plgpu.copy_gmem_to_smem(
            ins["states"].at[bi, hi, c, pl.ds(p0, bp)], s["hp"].at[slot], bars.at[slot * ns + ns - 1]
        )

    def wait(slot):
        _wait_stage(bars, slot, ns)

    issue(spec.nc - 1, 0)

    one_bar = s["one_bar"]
    if spec.has_D:
        d_col = _load_tile(ins["D"].at[hi, pl.ds(p0, bp)], s["d"], one_bar.at[0], _COL)
    if spec.has_dfinal:
        # st32 is (q, n) fp32 staging; q == block_p, so it also holds a state tile.
        dh = _load_tile(ins["dfinal"].at[bi, hi, pl.ds(p0, bp)], s["st32"], one_bar.at[1], WG)
    else:
        dh = plgpu.layout_cast(jnp.zeros((bp, n), f32), WG)
    dD = plgpu.layout_cast(jnp.zeros((bp,), f32), _COL)

    # (s, t) orientation throughout: rows are the source position s, columns the target t.
    si = plgpu.broadcasted_iota(jnp.int32, (q, q), 0, layout=WG)
    ti = plgpu.broadcasted_iota(jnp.int32, (q, q), 1, layout=WG)
    causal_T = si <= ti
    last_row = plgpu.broadcasted_iota(jnp.int32, (q,), 0, layout=_ROW) == q - 1
    row_b = lambda v, cols: lax.broadcast_in_dim(v, (q, cols), [0])

    def step(k, carry):
        dh, dD = carry
        c = spec.nc - 1 - k
        slot = lax.rem(k, nb) if nb > 1 else 0
        t0 = c * q
        wait(slot)
        if nb > 1:
            @pl.when(c > 0)
            def _():
                issue(c - 1, 1 - slot)

        x_s, do_s, b_s, c_s, hp_s = (s[nm].at[slot] for nm in ("x", "dout", "B", "C", "hp"))
        cs_row = plgpu.load(s["cs"].at[slot], layout=_ROW)
        cs_col = plgpu.load(s["cs"].at[slot], layout=_COL)
        dt_row = plgpu.load(s["dt"].at[slot], layout=_ROW)
        cs_last = s["cs"][slot, q - 1]
        mask = causal_T
        e_in = jnp.exp(cs_row)
        e_out = jnp.exp(cs_last - cs_row)
        e_tot = jnp.exp(cs_last)
        if spec.has_seg:
            mask, e_in, e_out, e_tot = _cut_at_segment_starts(s["r"], slot, q, mask, e_in, e_out, e_tot)
        w = e_out * dt_row

        # 1. S^T = B C^T (s, t) and the state's output term C h^T (t, p).
        ST, Yin = _mm(spec.interpret, ((q, q), [(b_s, c_s.T)]), ((q, bp), [(c_s, hp_s.T)]))
        LT = jnp.exp(jnp.where(mask, lax.broadcast_in_dim(cs_col, (q, q), [1]) - row_b(cs_row, q), -jnp.inf))
        Pn = ST * LT  # (C_t . B_s) L[t, s], transposed
        P1 = Pn * row_b(dt_row, q)  # the forward's M, transposed
        s["m"][...] = P1.astype(cdt)
        x = plgpu.load(x_s, layout=WG).astype(f32)
        dout = plgpu.load(do_s, layout=WG).astype(f32)
        Yin = Yin * row_b(e_in, bp)  # exp(cs_t) C_t h^T
        if spec.has_z:
            plgpu.commit_smem()
            (Yd,) = _mm(spec.interpret, ((q, bp), [(s["m"].T, x_s)]))
            y = Yd + Yin
            if spec.has_D:
                y = y + x * lax.broadcast_in_dim(d_col, (q, bp), [1])
            zz = plgpu.load(s["z"].at[slot], layout=WG).astype(f32)
            sig = jax.nn.sigmoid(zz)
            G = dout * zz * sig
            dz = dout * y * (sig * (1.0 + zz * (1.0 - sig)))
            s["g"][...] = G.astype(cdt)
            g_s = s["g"]
        else:
            G = dout
            g_s = do_s
        s["ge"][...] = (G * row_b(e_in, bp)).astype(cdt)
        s["xw"][...] = (x * row_b(w, bp)).astype(cdt)
        s["dhb"][...] = dh.astype(cdt)
        plgpu.commit_smem()

        # 2. (x G^T) (s, t), the intra-chunk dx term M^T G, and B dh^T for the state's dx term.
        DYXT, dx1, dx2 = _mm(
            spec.interpret,
            ((q, q), [(x_s, g_s.T)]),
            ((q, bp), [(s["m"], g_s)]),
            ((q, bp), [(b_s, s["dhb"].T)]),
        )
        WTn = Pn * DYXT
        ddt1 = jnp.sum(WTn, axis=1)  # (s,)
        WT = WTn * row_b(dt_row, q)
        u = jnp.sum(x * dx2, axis=1)  # x_s . (dh B_s)
        V = w * u
        ddt = ddt1 + e_out * u
        dcs_a = jnp.sum(G * Yin, axis=1) - jnp.sum(WT, axis=1) - V  # Yin holds exp(cs_t) already
        hp = plgpu.load(hp_s, layout=WG).astype(f32)
        tail = e_tot * jnp.sum(jnp.sum(dh * hp, axis=1), axis=0) + jnp.sum(V, axis=0)
        dcs_a = dcs_a + jnp.where(last_row, tail, 0.0)
        dcs_b = jnp.sum(WT, axis=0)  # (t,), column layout
        dx = dx1 + dx2 * row_b(w, bp)
        if spec.has_D:
            dx = dx + G * lax.broadcast_in_dim(d_col, (q, bp), [1])
        if spec.has_D:
            dD = dD + jnp.sum(G * x, axis=0)

        # Previous chunk's stores must have read their SMEM before it is overwritten.
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)
        s["dx"][...] = dx.astype(cdt)
        if spec.has_z:
            s["dz"][...] = dz.astype(cdt)
        s["v_ddt"][...] = ddt
        s["v_a"][...] = dcs_a
        s["v_b"][...] = dcs_b
        M2 = DYXT * LT * row_b(dt_row, q)  # d(C_t . B_s) weights, transposed
        s["m"][...] = M2.astype(cdt)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(s["dx"], outs["dx"].at[bi, pl.ds(t0, q), hi, pl.ds(p0, bp)])
        if spec.has_z:
            plgpu.copy_smem_to_gmem(s["dz"], outs["dz"].at[bi, pl.ds(t0, q), hi, pl.ds(p0, bp)])
        plgpu.copy_smem_to_gmem(s["v_ddt"], outs["ddt"].at[bi, row_out, pl.ds(t0, q)])
        plgpu.copy_smem_to_gmem(s["v_a"], outs["dcs_a"].at[bi, row_out, pl.ds(t0, q)])
        plgpu.copy_smem_to_gmem(s["v_b"], outs["dcs_b"].at[bi, row_out, pl.ds(t0, q)])

        # 3. dB = M2 C + (w x) dh, and the state gradient entering the chunk.
        dB, dh = _mm(
            spec.interpret,
            ((q, n), [(s["m"], c_s), (s["xw"], s["dhb"])]),
            (dh * e_tot, [(s["ge"].T, c_s)]),
        )
        _store_bc(spec, s, dB, outs["dB"].at[bi, pl.ds(t0, q), bc_col])
        # 4. dC = M2^T B + (exp(cs) G) h^T.
        (dC,) = _mm(spec.interpret, ((q, n), [(s["m"].T, b_s), (s["ge"], hp_s)]))
        _store_bc(spec, s, dC, outs["dC"].at[bi, pl.ds(t0, q), bc_col])
        if nb == 1:
            @pl.when(c > 0)
            def _():
                issue(c - 1, 0)
        return dh, dD

    dh, dD = lax.fori_loop(0, spec.nc, step, (dh, dD))
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)
    if spec.has_D:
        s["d"][...] = dD
    if spec.has_h0:
        s["st32"][...] = dh
    plgpu.commit_smem()
    if spec.has_D:
        plgpu.copy_smem_to_gmem(s["d"], outs["dD"].at[bi, hi, pl.ds(p0, bp)])
    if spec.has_h0:
        plgpu.copy_smem_to_gmem(s["st32"], outs["dh0"].at[bi, hi, pl.ds(p0, bp)])
    plgpu.wait_smem_to_gmem(0)


def _store_bc(spec: BwdSpec, s, val, dst):
    """Write a (q, n) fp32 dB/dC tile: added into the group's sum (compiled) or stored per head."""
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)
    s["st32"][...] = val
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(s["st32"], dst, reduction_op="add" if spec.reduce_bc else None)


def ssd_bwd_call(spec: BwdSpec, *args):
    """Run the backward kernel; ``args`` in ``spec.in_names`` order (dB/dC refs last if reducing)."""
    n, cdt, f32 = spec.n, jnp.dtype(spec.dtype), jnp.float32
    l_pad = spec.nc * spec.q
    rows = spec.h * spec.npt
    out_type = dict(
        dx=jax.ShapeDtypeStruct((spec.b, l_pad, spec.h, spec.p), cdt),
        ddt=jax.ShapeDtypeStruct((spec.b, rows, l_pad), f32),
        dcs_a=jax.ShapeDtypeStruct((spec.b, rows, l_pad), f32),
        dcs_b=jax.ShapeDtypeStruct((spec.b, rows, l_pad), f32),
        dB=jax.ShapeDtypeStruct((spec.b, l_pad, rows, n), f32),
        dC=jax.ShapeDtypeStruct((spec.b, l_pad, rows, n), f32),
        dz=jax.ShapeDtypeStruct((spec.b, l_pad, spec.h, spec.p), cdt),
        dD=jax.ShapeDtypeStruct((spec.b, spec.h, spec.p), f32),
        dh0=jax.ShapeDtypeStruct((spec.b, spec.h, spec.p, n), f32),
    )
    kernel = _kernel(_bwd_body, spec, tuple(out_type[k] for k in spec.out_names), _bwd_scratch(spec),
                     (spec.b, spec.h, spec.npt))
    return kernel(*args)
