"""Mamba-1 selective scan as Pallas Mosaic GPU kernels (Hopper), forward and backward.

Every function here takes arrays already padded and laid out by :mod:`.api`; ``spt`` is the
tiling's states per thread and the state axis is passed split as ``(n/spt, spt)`` (a free reshape):

==============  ==============================  ==================================================
array           shape                           notes
==============  ==============================  ==================================================
``x, dt, z``    ``(b, l, d)``                   input dtypes; ``l`` a multiple of the chunk,
                                                each channel group padded to a multiple of ``ch``
``B, C``        ``(b, l, g, n)``                one dtype, ``n`` zero-padded to a power of 2 >= 8
``A2``          ``(d, n/spt, spt)`` float32     ``A * log2(e)``: the kernels use ``exp2``
``bias``        ``(d / ch, q, ch)`` f32         ``dt_bias`` repeated over the chunk (optional)
``Dt``          ``(d / ch, q, ch)`` f32         ``D`` repeated over the chunk (optional)
``keep``        ``(b, l + 32)`` float32         0 where ``segment_ids`` changes, else 1 (optional)
``h0``          ``(b, d, n/spt, spt)`` float32  initial state (optional)
==============  ==============================  ==================================================

The algorithm, the roofline and the measurements are in README.md; :func:`forward` and
:func:`backward` say what each phase of a chunk does.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.mosaic import gpu as mgpu
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import gpu_common
from pallas_kernels.selective_scan.blocks import (
    F32,
    KEEP_MIN,
    WARPGROUP,
    SelectiveScanBlocks,
    backward_buffers,
    forward_buffers,
)

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class Problem:
    """Static description of one (padded) call: shapes, which optional inputs exist, modes."""

    b: int
    l: int  # padded length (multiple of blocks.chunk and blocks.save_interval)
    d: int  # padded channels (each group padded to a multiple of blocks.channels)
    g: int
    l_valid: int  # true length: positions >= l_valid are padding (delta forced to 0)
    blocks: SelectiveScanBlocks
    x_dtype: str  # x and y
    dt_dtype: str
    z_dtype: str
    bc_dtype: str  # B, C
    has_D: bool
    has_z: bool
    has_bias: bool
    softplus: bool
    has_h0: bool
    has_keep: bool
    interpret: bool

    @property
    def n(self) -> int:
        return self.blocks.n

    @property
    def ch(self) -> int:
        return self.blocks.channels

    @property
    def channel_blocks(self) -> int:
        return self.d // self.ch

    @property
    def blocks_per_group(self) -> int:
        return (self.d // self.g) // self.ch

    @property
    def num_saved(self) -> int:
        return self.l // self.blocks.save_interval


# --------------------------------------------------------------------------------------------
# Operands by name: the one place that fixes their order (the api module passes and receives
# them through these names; the kernels unpack their refs with them)
# --------------------------------------------------------------------------------------------


def _present(*named: tuple[str, bool]) -> tuple[str, ...]:
    return tuple(name for name, here in named if here)


def forward_operands(p: Problem) -> tuple[str, ...]:
    """The forward kernel's inputs, in call order (the optional ones only when present)."""
    return _present(("x", True), ("dt", True), ("z", p.has_z), ("B", True), ("C", True), ("A2", True),
                    ("bias", p.has_bias), ("D", p.has_D), ("keep", p.has_keep), ("h0", p.has_h0))


def forward_results(*, save_states: bool, want_final: bool) -> tuple[str, ...]:
    return _present(("y", True), ("final_state", want_final), ("saved", save_states))


def backward_operands(p: Problem, *, has_dfinal: bool) -> tuple[str, ...]:
    """The backward kernel's inputs: the forward's but ``h0``, the output cotangent ``g``, the
    forward's ``saved`` states and the final state's cotangent ``dfinal``."""
    return _present(("x", True), ("dt", True), ("z", p.has_z), ("g", True), ("B", True), ("C", True),
                    ("A2", True), ("bias", p.has_bias), ("D", p.has_D), ("keep", p.has_keep), ("saved", True),
                    ("dfinal", has_dfinal))


def backward_results(p: Problem) -> tuple[str, ...]:
    return _present(("dx", True), ("ddt", True), ("dz", p.has_z), ("dB", True), ("dC", True), ("dA", True),
                    ("dD", p.has_D), ("dbias", p.has_bias), ("dh0", p.has_h0))


# --------------------------------------------------------------------------------------------
# Register layouts (jax 0.11.2 Mosaic GPU TiledLayout; Lane lowering semantics)
# --------------------------------------------------------------------------------------------


def _tiled(layout: mgpu.TiledLayout):
    return plgpu.Layout.TILED(
        layout.tiling, warp_dims=layout.warp_dims, lane_dims=layout.lane_dims, vector_dim=layout.vector_dim
    )


def _canonical(tiles, warp_dims, lane_dims):
    return mgpu.TiledLayout(
        plgpu.Tiling(tiles), warp_dims=warp_dims, lane_dims=lane_dims, vector_dim=-1, _check_canonical=False
    ).canonicalize()


@dataclasses.dataclass(frozen=True)
class Layouts:
    """Register layouts of one tiling.

    The state is held as ``(ch, n/spt, spt)``: thread ``w * 32 + lane`` of the warpgroup owns channel
    ``w * ch/4 + lane // (n/spt)`` and the ``spt`` state indices ``(lane % (n/spt)) * spt ...`` as one
    vector. ``row`` is a per-channel ``(ch,)`` vector (replicated over the ``n/spt`` threads of a
    channel), ``col`` a per-state ``(n/spt, spt)`` vector (replicated over channels), ``part`` the
    ``(ch, n/spt)`` in-thread partial sums over ``spt`` (one value per thread, no replication).
    ``tile3``/``tile`` lay out ``(q, ch, n/spt)``/``(q, ch)`` chunk tiles so that a sum over the
    ``n/spt`` partials of a position is in-thread.
    """

    state: object
    row: object
    col: object
    part: object
    tile3: object
    tile: object


@functools.lru_cache(maxsize=None)
def layouts(q: int, ch: int, n: int, spt: int) -> Layouts:
    nl = n // spt
    st = _canonical(((ch, nl, spt), (ch // 4, nl, spt)), (-6,), (-3, -2))
    if ch >= 32:  # a warp per position, lanes over 32 channels
        t3 = _canonical(((4, ch, nl), (1, 32, nl)), (-6,), (-2,))
    else:  # a warp per 32 / ch positions
        r = 32 // ch
        t3 = _canonical(((4 * r, ch, nl), (r, ch, nl)), (-6,), (-3, -2))
    return Layouts(
        state=_tiled(st), row=_tiled(st.reduce([1, 2])), col=_tiled(st.reduce([0])), part=_tiled(st.reduce([2])),
        tile3=_tiled(t3), tile=_tiled(t3.reduce([2])),
    )


def _bcast(v, shape, dims, layout):
    """Broadcast a row/col of :class:`Layouts` to the state layout (no data movement)."""
    return plgpu.layout_cast(lax.broadcast_in_dim(v, shape, dims), layout)


def _softplus(u):
    # log(1 + e^u) = max(u, 0) + log(1 + e^-|u|): no overflow, and log's argument is in [1, 2].
    # Below u = -15, log(1 + e^u) rounds to 0 in fp32 (1 + e^u == 1 past ~-16.6) while softplus
    # is e^u to fp32 precision (relative error e^u / 2 < 2e-7): there e = e^-|u| = e^u itself.
    e = jnp.exp(-jnp.abs(u))
    return jnp.maximum(u, 0.0) + jnp.where(u < -15.0, e, jnp.log(1.0 + e))


def _sigmoid(z):
    return 1.0 / (1.0 + jnp.exp(-z))


def _compiler_params():
    # Lane semantics: FragmentedArrays with explicit layouts (the custom state layout above).
    # No automatic barriers around every shared-memory store: the kernels synchronize the
    # warpgroup once per phase (commit_smem), not once per position. approx_math: exp/exp2/log
    # map to ex2.approx/lg2.approx (2 ulp), a single SFU instruction each.
    return plgpu.CompilerParams(
        lowering_semantics=plgpu.LoweringSemantics.Lane,
        unsafe_no_auto_barriers=True,
        approx_math=True,
    )


def _kernel(body, p: Problem, out_types, scratch):
    """``plgpu.kernel`` of one warpgroup per (batch row, block of ``ch`` channels)."""
    return plgpu.kernel(
        body,
        out_type=tuple(out_types),
        scratch_types=scratch,
        grid=(p.b, p.channel_blocks),
        grid_names=("b", "c"),
        compiler_params=_compiler_params(),
        interpret=gpu_common.interpret_params(p.interpret),
    )


def _kernel_refs(names, buffers, refs):
    """A kernel's refs by name: its operands and results (``names``), its shared-memory
    ``buffers``, and the stage barriers (the last scratch)."""
    return dict(zip(names, refs)), dict(zip(buffers, refs[len(names):])), refs[-1]


def _block_position(p: Problem):
    """Where this warpgroup works: batch row ``bi``, channel block ``cb`` (channels from
    ``c0``) and the B/C group ``gi`` of that block."""
    bi = lax.axis_index("b")
    cb = lax.axis_index("c")
    c0 = cb * p.ch
    gi = cb // p.blocks_per_group
    return bi, cb, c0, gi


def _copy_inputs(io, smem, names, bi, t, cols, gi, slot, bar):
    """TMA copies of the rows ``t`` of the named per-chunk inputs into their stage ``slot``:
    ``B``, ``C`` of group ``gi``, the others' channels ``cols``."""
    for name in names:
        src = io[name].at[bi, t, gi] if name in ("B", "C") else io[name].at[bi, t, cols]
        plgpu.copy_gmem_to_smem(src, smem[name].at[slot], bar)


class _Setup(NamedTuple):
    """What both kernels derive from a :class:`Problem` at trace time."""

    q: int  # chunk
    ch: int  # channels per block
    n: int  # padded state size
    spt: int  # states per thread
    nl: int  # threads per channel, n / spt
    U: int  # positions per unrolled group
    num_chunks: int  # l / q
    groups: int  # unrolled groups per chunk, q / U
    lay: Layouts
    S3: tuple[int, int, int]  # the state's register shape (ch, nl, spt)
    lay_bc: object  # a (q, n) B or C tile as loaded from shared memory
    tail: bool  # the last chunk has padding positions
    dtypes: dict  # x_dtype, dt_dtype, z_dtype, bc_dtype (the keywords of forward/backward_buffers)


def _setup(p: Problem) -> _Setup:
    blk = p.blocks
    q, ch, n, spt = blk.chunk, p.ch, p.n, blk.states_per_thread
    return _Setup(
        q=q, ch=ch, n=n, spt=spt, nl=n // spt, U=blk.unroll, num_chunks=p.l // q, groups=q // blk.unroll,
        lay=layouts(q, ch, n, spt), S3=(ch, n // spt, spt),
        lay_bc=plgpu.Layout.WG_STRIDED((q, n), vec_size=min(4, q * n // WARPGROUP)), tail=p.l_valid < p.l,
        dtypes={k: jnp.dtype(getattr(p, k)) for k in ("x_dtype", "dt_dtype", "z_dtype", "bc_dtype")},
    )


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


def forward(p: Problem, *, save_states: bool, want_final: bool):
    """Build the forward kernel.

    Operands :func:`forward_operands` ``(x, dt, [z], B, C, A2, [bias], [D], [keep], [h0])``,
    results :func:`forward_results` ``(y, [final_state], [saved])``, with ``B, C (b, l, g, n)``,
    ``A2 (d, n/spt, spt)``, ``h0``/``final_state (b, d, n/spt, spt)`` and
    ``saved (b, l / save_interval, d, n/spt, spt)``: the state axis split as the registers hold it
    (a free reshape of ``(.., n)``).

    Mamba paper eq. 2a/2b, Alg. 2. One warpgroup per (batch row, block of ``ch`` channels) walks
    the sequence in chunks of ``q`` positions, the state ``h (ch, n)`` in registers. Per chunk:
    a thread issues the TMA copies of the next chunk (two stages); (1) element-wise
    ``delta = softplus(dt + dt_bias)``, ``u = delta x``; (2) the recurrence
    ``h = exp2(delta A2) h + u B`` position by position, each thread storing its in-thread
    partial of ``h . C``; (3) element-wise ``(sum of partials + D x) * silu(z)``, TMA-stored.
    With ``save_states`` the state entering every ``save_interval``-th position is stored for
    :func:`backward`.
    """
    blk = p.blocks
    q, ch, n, spt, nl, U, num_chunks, groups, lay, S3, lay_bc, tail, dtypes = _setup(p)
    lay_strided = plgpu.Layout.WG_STRIDED((q, ch), vec_size=blk.tile_vector)
    saves_per_chunk = q // blk.save_interval  # 0 when states are saved less than once a chunk
    chunks_per_save = max(1, blk.save_interval // q)
    if groups % 2:
        raise ValueError(f"selective_scan forward: chunk/unroll = {q}/{U} must be even")

    names = forward_operands(p) + forward_results(save_states=save_states, want_final=want_final)
    buffers = forward_buffers(q, ch, n, spt, U, **dtypes, has_z=p.has_z, has_keep=p.has_keep)
    streams = ("x", "dt") + ("z",) * p.has_z + ("B", "C")

    def selective_scan_fwd(*refs):
        io, smem, bars = _kernel_refs(names, buffers, refs)
        A2_ref, bias_ref, D_ref, keep_ref, h0_ref = (io.get(k) for k in ("A2", "bias", "D", "keep", "h0"))
        y_ref, hT_ref, hs_ref = (io.get(k) for k in ("y", "final_state", "saved"))
        x_s, dt_s, z_s, B_s, C_s, keep_s = (smem[k] for k in ("x", "dt", "z", "B", "C", "keep"))
        delta_s, u_s, part_s, Bf_s, Cf_s, out_s = (smem[k] for k in ("delta", "u", "part", "Bf", "Cf", "y"))
        bi, cb, c0, gi = _block_position(p)
        rows_q = pl.ds(0, q)

        def issue(k, slot):
            bar = bars.at[slot]
            _copy_inputs(io, smem, streams, bi, pl.ds(k * q, q), pl.ds(c0, ch), gi, slot, bar)
            if p.has_keep:
                kq = max(q, KEEP_MIN)
                plgpu.copy_gmem_to_smem(keep_ref.at[bi, pl.ds(k * q, kq)], keep_s.at[slot, pl.ds(0, kq)], bar)

        issue(0, 0)
        A2 = plgpu.load(A2_ref.at[pl.ds(c0, ch)], layout=lay.state, optimized=False)
        if p.has_h0:
            h = plgpu.load(h0_ref.at[bi, pl.ds(c0, ch)], layout=lay.state, optimized=False)
        else:
            h = plgpu.layout_cast(jnp.zeros(S3, F32), lay.state)
        bias = plgpu.load(bias_ref.at[cb], layout=lay_strided, optimized=False) if p.has_bias else None
        Dt = plgpu.load(D_ref.at[cb], layout=lay.tile, optimized=False) if p.has_D else None

        def save(h, index):
            hs_ref[bi, index, pl.ds(c0, ch)] = h

        def chunk(k, h):
            slot = lax.rem(k, 2)
            plgpu.barrier_wait(bars.at[slot])

            @pl.when(k + 1 < num_chunks)
            def _():
                issue(k + 1, 1 - slot)

            # 1. Discretization inputs for the whole chunk (Alg. 2 line 3), element-wise.
            delta = plgpu.load(dt_s.at[slot], layout=lay_strided, optimized=False).astype(F32)
            if p.has_bias:
                delta = delta + bias
            if p.softplus:
                delta = _softplus(delta)
            if tail:
                row = plgpu.broadcasted_iota(jnp.int32, (q, ch), 0, layout=lay_strided)
                # Padding positions: delta = 0 is decay 1 and input 0, the state passes through.
                delta = jnp.where(row < p.l_valid - k * q, delta, 0.0)
            xv = plgpu.load(x_s.at[slot], layout=lay_strided, optimized=False).astype(F32)
            delta_s[rows_q] = delta
            u_s[rows_q] = delta * xv
            # B, C in float32 and with the state axis split as the registers hold it, (q, n/spt, spt)
            # (jax 0.11.2 interpret mode cannot reshape a ref, so the row loads cannot view the
            # (q, n) TMA tile that way).
            split = lambda a: a.astype(F32).reshape(q, nl, spt)  # noqa: E731
            Bf_s[rows_q] = split(plgpu.load(B_s.at[slot], layout=lay_bc, optimized=False))
            Cf_s[rows_q] = split(plgpu.load(C_s.at[slot], layout=lay_bc, optimized=False))
            plgpu.commit_smem()  # fence + warpgroup barrier: the rows are visible to every thread

            # 2. The recurrence (eq. 2a), in groups of `unroll` positions. A group's rows are
            # loaded one group ahead: all shared-memory buffers are views of one allocation, so
            # the compiler may not hoist a load above an earlier store, which would put
            # load -> exp -> FMA -> store on the critical path of every position. Groups come in
            # pairs so that the look-ahead registers alternate without copies. Each thread
            # stores its in-thread partial of h . C (eq. 2b); the sum over the n/spt threads of a
            # channel happens in step 3, vectorized, instead of warp shuffles per position.
            # Rows past the chunk (the last look-ahead) read the buffers' padding.
            def load_rows(t0):
                rows = []
                for i in range(U):
                    t = t0 + i
                    row = (
                        plgpu.load(delta_s.at[t], layout=lay.row, optimized=False),
                        plgpu.load(u_s.at[t], layout=lay.row, optimized=False),
                        plgpu.load(Bf_s.at[t], layout=lay.col, optimized=False),
                        plgpu.load(Cf_s.at[t], layout=lay.col, optimized=False),
                    )
                    if p.has_keep:
                        row = row + (keep_s[slot, t],)
                    rows.append(row)
                return rows

            def group(j, h, rows):
                nxt = load_rows((j + 1) * U)
                for i, row in enumerate(rows):
                    d_t, u_t, B_t, C_t = row[:4]
                    decay = jnp.exp2(_bcast(d_t, S3, (0,), lay.state) * A2)
                    if p.has_keep:
                        decay = decay * row[4]
                    h = decay * h + _bcast(u_t, S3, (0,), lay.state) * _bcast(B_t, S3, (1, 2), lay.state)
                    part_s[j * U + i] = jnp.sum(h * _bcast(C_t, S3, (1, 2), lay.state), axis=2)
                if save_states and saves_per_chunk:
                    end = (j + 1) * U

                    @pl.when(jnp.logical_and(lax.rem(end, blk.save_interval) == 0, k * q + end < p.l))
                    def _():
                        save(h, (k * q + end) // blk.save_interval)

                return h, nxt

            def pair(j, carry):
                h, rows = carry
                h, rows = group(2 * j, h, rows)
                return group(2 * j + 1, h, rows)

            h, _ = lax.fori_loop(0, groups // 2, pair, (h, load_rows(0)))
            if save_states and not saves_per_chunk:
                @pl.when(jnp.logical_and(lax.rem(k + 1, chunks_per_save) == 0, k + 1 < num_chunks))
                def _():
                    save(h, (k + 1) // chunks_per_save)
            plgpu.commit_smem()

            # 3. y = (h C + D x) * silu(z), stored by TMA while the next chunk runs.
            y = jnp.sum(plgpu.load(part_s, layout=lay.tile3, optimized=False), axis=2)
            if p.has_D:
                y = y + Dt * plgpu.load(x_s.at[slot], layout=lay.tile, optimized=False).astype(F32)
            if p.has_z:
                zv = plgpu.load(z_s.at[slot], layout=lay.tile, optimized=False).astype(F32)
                y = y * (zv * _sigmoid(zv))
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the previous chunk's store has read out_s
            out_s[...] = y.astype(out_s.dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(out_s, y_ref.at[bi, pl.ds(k * q, q), pl.ds(c0, ch)])
            return h

        if save_states:
            save(h, 0)
        h = lax.fori_loop(0, num_chunks, chunk, h)
        if want_final:
            hT_ref[bi, pl.ds(c0, ch)] = h
        plgpu.wait_smem_to_gmem(0)

    result_types = dict(y=jax.ShapeDtypeStruct((p.b, p.l, p.d), dtypes["x_dtype"]),
                        final_state=jax.ShapeDtypeStruct((p.b, p.d, nl, spt), F32),
                        saved=jax.ShapeDtypeStruct((p.b, p.num_saved, p.d, nl, spt), F32))
    out_types = [result_types[k] for k in forward_results(save_states=save_states, want_final=want_final)]
    # One barrier arrival per TMA copy of a stage: x, dt, B, C, and z, keep when present.
    scratch = [*buffers.values(), plgpu.Barrier(num_arrivals=4 + p.has_z + p.has_keep, num_barriers=2)]
    return _kernel(selective_scan_fwd, p, out_types, scratch)


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def channel_sum_layout(q: int, ch: int, n: int, spt: int):
    """Layout of a ``(q, ch, n/spt, spt)`` block whose sum over ``ch`` is in-thread.

    Warps split ``q``; lanes cover ``t_sub`` positions by ``n`` states; each thread holds all
    ``ch`` channels of its (position, state) pairs in registers. Returns ``(layout, rows)``:
    ``rows`` is the smallest ``q`` the layout tiles (sum a larger buffer in blocks of it).
    """
    nl = n // spt
    t_sub = max(1, 32 // n)
    lanes_n = 32 // t_sub
    vr = n // lanes_n
    rows = 4 * t_sub
    tiles = ((rows, ch, nl, spt), (t_sub, ch, nl, spt), (t_sub, 1, nl, spt), (1, 1, 1, vr))
    lay = mgpu.TiledLayout(
        plgpu.Tiling(tiles), warp_dims=(-16,), lane_dims=(-8, -6, -5), vector_dim=-1, _check_canonical=False
    ).canonicalize()
    return _tiled(lay), rows


def backward(p: Problem, *, has_dfinal: bool):
    """Build the backward kernel (reverse-mode of :func:`forward`).

    Operands :func:`backward_operands` ``(x, dt, [z], g, B, C, A2, [bias], [D], [keep], saved,
    [dfinal])``, results :func:`backward_results` ``(dx, ddt, [dz], dB, dC, dA, [dD], [dbias],
    [dh0])``, where ``g`` is the cotangent of ``y`` and ``dfinal`` that of the final state.
    ``p.blocks.chunk`` must equal the forward's ``save_interval``: chunk ``k`` restarts from
    ``saved[:, k]``.

    Per-block partial results, summed by the caller: ``dB, dC (b, l, d/ch, n/spt, spt)`` (summed
    over the channel blocks of each group), ``dA (b, d, n/spt, spt)`` (over the batch rows),
    ``dD, dbias (b, d/ch, q, ch)``.

    With ``lam_t = dL/dh_t`` (eq. 2a run backwards) and ``a_t = keep_t exp(delta_t A)``::

        lam_t   = a_{t+1} lam_{t+1} + C_t dy_t        (lam after the last position: dfinal)
        dC_t    = sum_c dy_t h_t        dB_t = sum_c lam_t delta_t x_t
        dx_t    = delta_t sum_n lam_t B_t + D dy_t
        ddelta_t = x_t sum_n lam_t B_t + sum_n lam_t A a_t h_{t-1}
        dA      = sum_t lam_t delta_t a_t h_{t-1}      dh0 = a_0 lam_0

    Chunks run last to first. Per chunk: (A) recompute the chunk's states forward from the
    stored one, keeping ``h_{t-1}`` per position in shared memory (and the partials of
    ``h_t . C_t`` for the gate's derivative); (B) walk back through the chunk carrying
    ``lam``; (C) element-wise: finish the per-channel sums, the softplus and silu derivatives,
    and sum the ``dB``/``dC`` products over the block's channels.
    """
    q, ch, n, spt, nl, U, K, groups, lay, S3, lay_bc, tail, dtypes = _setup(p)
    R, rows_r = channel_sum_layout(q, ch, n, spt)
    if groups % 2 or q % rows_r:
        raise ValueError(f"selective_scan backward: chunk {q} must be a multiple of 2 x unroll and of {rows_r}")

    names = backward_operands(p, has_dfinal=has_dfinal) + backward_results(p)
    buffers = backward_buffers(q, ch, n, spt, **dtypes, has_z=p.has_z, has_keep=p.has_keep)
    streams = ("x", "dt") + ("z",) * p.has_z + ("g", "B", "C")

    def selective_scan_bwd(*refs):
        io, smem, bars = _kernel_refs(names, buffers, refs)
        A2_ref, bias_ref, D_ref, keep_ref, hs_ref, dfinal_ref = (io.get(k) for k in ("A2", "bias", "D", "keep", "saved", "dfinal"))
        dx_ref, ddt_ref, dz_ref, dB_ref, dC_ref, dA_ref = (io.get(k) for k in ("dx", "ddt", "dz", "dB", "dC", "dA"))
        dD_ref, dbias_ref, dh0_ref = (io.get(k) for k in ("dD", "dbias", "dh0"))
        x_s, dt_s, z_s, g_s, B_s, C_s, keep_s = (smem[k] for k in ("x", "dt", "z", "g", "B", "C", "keep"))
        delta_s, u_s, dy_s, Bf_s, Cf_s, h_s, dBp_s = (smem[k] for k in ("delta", "u", "dy", "Bf", "Cf", "h", "dBp"))
        s1_s, s2_s, yp_s, dx_o, ddt_o, dz_o = (smem[k] for k in ("s1", "s2", "yp", "dx", "ddt", "dz"))
        bi, cb, c0, gi = _block_position(p)
        cols = pl.ds(c0, ch)

        def issue(k, slot):
            bar = bars.at[slot]
            _copy_inputs(io, smem, streams, bi, pl.ds(k * q, q), cols, gi, slot, bar)
            if p.has_keep:
                plgpu.copy_gmem_to_smem(keep_ref.at[bi, pl.ds(k * q, max(q, KEEP_MIN))], keep_s.at[slot], bar)

        issue(K - 1, (K - 1) % 2)
        A2 = plgpu.load(A2_ref.at[cols], layout=lay.state, optimized=False)
        zeros = plgpu.layout_cast(jnp.zeros(S3, F32), lay.state)
        lam = plgpu.load(dfinal_ref.at[bi, cols], layout=lay.state, optimized=False) if has_dfinal else zeros
        a_next = plgpu.layout_cast(jnp.ones(S3, F32), lay.state)
        zeros_tile = plgpu.layout_cast(jnp.zeros((q, ch), F32), lay.tile)
        bias = plgpu.load(bias_ref.at[cb], layout=lay.tile, optimized=False) if p.has_bias else None
        Dt = plgpu.load(D_ref.at[cb], layout=lay.tile, optimized=False) if p.has_D else None

        def rows_at(t, slot, with_h):
            row = (
                plgpu.load(delta_s.at[t], layout=lay.row, optimized=False),
                plgpu.load(u_s.at[t], layout=lay.row, optimized=False),
                plgpu.load(Bf_s.at[t], layout=lay.col, optimized=False),
                plgpu.load(Cf_s.at[t], layout=lay.col, optimized=False),
                keep_s[slot, t] if p.has_keep else None,
            )
            if with_h:
                row = row + (
                    plgpu.load(dy_s.at[t], layout=lay.row, optimized=False),
                    plgpu.load(h_s.at[t], layout=lay.state, optimized=False),
                )
            return row

        def decay_of(row):
            a = jnp.exp2(_bcast(row[0], S3, (0,), lay.state) * A2)
            return a if row[4] is None else a * row[4]

        row_b = lambda r: _bcast(r, S3, (0,), lay.state)  # noqa: E731
        col_b = lambda c: _bcast(c, S3, (1, 2), lay.state)  # noqa: E731

        def chunk(i, carry):
            lam, a_next, dA, dD, dbias = carry
            k = K - 1 - i
            slot = lax.rem(k, 2)
            plgpu.barrier_wait(bars.at[slot])

            @pl.when(k > 0)
            def _():
                issue(k - 1, 1 - slot)

            # Element-wise inputs of the chunk (as in the forward), and dy = g silu(z).
            ld = lambda ref: plgpu.load(ref, layout=lay.tile, optimized=False).astype(F32)  # noqa: E731
            raw = ld(dt_s.at[slot])
            if p.has_bias:
                raw = raw + bias
            delta = _softplus(raw) if p.softplus else raw
            if tail:
                row = plgpu.broadcasted_iota(jnp.int32, (q, ch), 0, layout=lay.tile)
                delta = jnp.where(row < p.l_valid - k * q, delta, 0.0)
            xv = ld(x_s.at[slot])
            gv = ld(g_s.at[slot])
            if p.has_z:
                zv = ld(z_s.at[slot])
                sz = _sigmoid(zv)
                dy = gv * (zv * sz)
            else:
                dy = gv
            delta_s[...] = delta
            u_s[...] = delta * xv
            dy_s[...] = dy
            split = lambda a: a.astype(F32).reshape(q, nl, spt)  # noqa: E731
            Bf_s[...] = split(plgpu.load(B_s.at[slot], layout=lay_bc, optimized=False))
            Cf_s[...] = split(plgpu.load(C_s.at[slot], layout=lay_bc, optimized=False))
            plgpu.commit_smem()

            # (A) States of the chunk, forward from the stored one; h_s[t] = h_{t-1}.
            h = plgpu.load(hs_ref.at[bi, k, cols], layout=lay.state, optimized=False)

            def fwd_rows(j):
                return [rows_at(jnp.minimum(j * U + i_, q - 1), slot, False) for i_ in range(U)]

            def fwd_group(j, h, rows):
                nxt = fwd_rows(j + 1)
                for i_, row in enumerate(rows):
                    t = j * U + i_
                    h_s[t] = h
                    h = decay_of(row) * h + row_b(row[1]) * col_b(row[2])
                    if p.has_z:
                        yp_s[t] = jnp.sum(h * col_b(row[3]), axis=2)
                return h, nxt

            def fwd_pair(j, c):
                h, rows = fwd_group(2 * j, *c)
                return fwd_group(2 * j + 1, h, rows)

            lax.fori_loop(0, groups // 2, fwd_pair, (h, fwd_rows(0)))
            plgpu.commit_smem()

            # (B) Back through the chunk, last position first.
            def bwd_rows(j):
                return [rows_at(jnp.maximum(q - 1 - (j * U + i_), 0), slot, True) for i_ in range(U)]

            def bwd_group(j, c, rows):
                lam, a_next, dA = c
                nxt = bwd_rows(j + 1)
                for i_, row in enumerate(rows):
                    t = q - 1 - (j * U + i_)
                    d_t, u_t, B_t, C_t, _, dy_t, hp = row
                    a = decay_of(row)
                    Bb, Cb = col_b(B_t), col_b(C_t)
                    h = a * hp + row_b(u_t) * Bb
                    lam = a_next * lam + row_b(dy_t) * Cb
                    h_s[t] = row_b(dy_t) * h  # dC products (h_{t-1} is no longer needed)
                    dBp_s[t] = lam * row_b(u_t)
                    s1_s[t] = jnp.sum(lam * Bb, axis=2)
                    w = lam * a * hp
                    s2_s[t] = jnp.sum(w * A2, axis=2)
                    dA = dA + w * row_b(d_t)
                    a_next = a
                return (lam, a_next, dA), nxt

            def bwd_pair(j, c):
                c, rows = bwd_group(2 * j, *c)
                return bwd_group(2 * j + 1, c, rows)

            (lam, a_next, dA), _ = lax.fori_loop(0, groups // 2, bwd_pair, ((lam, a_next, dA), bwd_rows(0)))
            plgpu.commit_smem()

            # (C) Per-channel results of the chunk.
            s1 = jnp.sum(plgpu.load(s1_s, layout=lay.tile3, optimized=False), axis=2)
            s2 = jnp.sum(plgpu.load(s2_s, layout=lay.tile3, optimized=False), axis=2) * LN2
            dx = delta * s1
            ddelta = xv * s1 + s2
            if p.has_D:
                dx = dx + Dt * dy
                dD = dD + dy * xv
            ddt = ddelta * _sigmoid(raw) if p.softplus else ddelta
            if tail:
                ddt = jnp.where(row < p.l_valid - k * q, ddt, 0.0)
            if p.has_bias:
                dbias = dbias + ddt
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # last chunk's stores have read the tiles
            dx_o[...] = dx.astype(dx_o.dtype)
            ddt_o[...] = ddt.astype(ddt_o.dtype)
            if p.has_z:
                y = jnp.sum(plgpu.load(yp_s, layout=lay.tile3, optimized=False), axis=2)
                if p.has_D:
                    y = y + Dt * xv
                dz_o[...] = (gv * y * (sz * (1.0 + zv * (1.0 - sz)))).astype(dz_o.dtype)
            # dB_t, dC_t: the products summed over the block's channels, rows_r positions at a time.
            for r0 in range(0, q, rows_r):
                rr = pl.ds(r0, rows_r)
                dst = pl.ds(k * q + r0, rows_r)
                dB_ref[bi, dst, cb] = jnp.sum(plgpu.load(dBp_s.at[rr], layout=R, optimized=False), axis=1)
                dC_ref[bi, dst, cb] = jnp.sum(plgpu.load(h_s.at[rr], layout=R, optimized=False), axis=1)
            plgpu.commit_smem()
            t = pl.ds(k * q, q)
            plgpu.copy_smem_to_gmem(dx_o, dx_ref.at[bi, t, cols])
            plgpu.copy_smem_to_gmem(ddt_o, ddt_ref.at[bi, t, cols])
            if p.has_z:
                plgpu.copy_smem_to_gmem(dz_o, dz_ref.at[bi, t, cols])
            return lam, a_next, dA, dD, dbias

        carry = (lam, a_next, zeros, zeros_tile, zeros_tile)
        lam, a_next, dA, dD, dbias = lax.fori_loop(0, K, chunk, carry)
        dA_ref[bi, cols] = dA
        if p.has_D:
            dD_ref[bi, cb] = dD
        if p.has_bias:
            dbias_ref[bi, cb] = dbias
        if p.has_h0:
            dh0_ref[bi, cols] = a_next * lam
        plgpu.wait_smem_to_gmem(0)

    nb = p.channel_blocks
    per_block = jax.ShapeDtypeStruct((p.b, nb, q, ch), F32)  # partial sums per channel block
    result_types = dict(dx=jax.ShapeDtypeStruct((p.b, p.l, p.d), dtypes["x_dtype"]),
                        ddt=jax.ShapeDtypeStruct((p.b, p.l, p.d), dtypes["dt_dtype"]),
                        dz=jax.ShapeDtypeStruct((p.b, p.l, p.d), dtypes["z_dtype"]),
                        dB=jax.ShapeDtypeStruct((p.b, p.l, nb, nl, spt), F32),
                        dC=jax.ShapeDtypeStruct((p.b, p.l, nb, nl, spt), F32),
                        dA=jax.ShapeDtypeStruct((p.b, p.d, nl, spt), F32), dD=per_block, dbias=per_block,
                        dh0=jax.ShapeDtypeStruct((p.b, p.d, nl, spt), F32))
    out_types = [result_types[k] for k in backward_results(p)]
    # One barrier arrival per TMA copy of a stage: x, dt, g, B, C, and z, keep when present.
    scratch = [*buffers.values(), plgpu.Barrier(num_arrivals=5 + p.has_z + p.has_keep, num_barriers=2)]
    return _kernel(selective_scan_bwd, p, out_types, scratch)
