"""Tiling of the Mosaic TPU selective-scan kernels, their VMEM footprint, and the rule picking them.

One grid step owns ``block_d`` channels (the 128-wide lane axis of a vreg) of one batch row over
``block_l`` positions. The state of those channels is an ``(n, block_d)`` float32 array -- ``n`` on
sublanes, channels on lanes -- carried in VMEM scratch from one sequence block to the next (the
"arbitrary" grid axis).

Inside a block the recurrence steps through 8 positions per loop iteration: their rows of every
``(tl, td)`` input are one aligned sublane-tile load, their outputs one store.

VMEM per grid step (``pad8``/``pad128`` round up to the sublane/lane tile; every input and output
block is double-buffered by the Pallas pipeline) -- see :func:`forward_vmem_bytes` and
:func:`backward_vmem_bytes`, the numbers README.md tabulates.
"""

from __future__ import annotations

import dataclasses

from pallas_kernels.tpu_common import LANES, SUBLANES, pad8, pad128

__all__ = ["SelectiveScanTPUBlocks", "backward_vmem_bytes", "choose_blocks", "forward_vmem_bytes"]

# What choose_blocks lets one kernel use: a quarter of v5p's 64 MiB VMEM per core, so two grid
# steps' buffers and Mosaic's own scratch fit with room to spare on every chip from v5e on.
VMEM_BUDGET = 16 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class SelectiveScanTPUBlocks:
    """Tile sizes of one kernel launch.

    ===========  =================================================================================
    field        meaning
    ===========  =================================================================================
    block_l      positions per grid step (a multiple of 128: the backward writes ``dB``/``dC``
                 transposed, positions on lanes). Shorter sequences run as one block of
                 ``l`` rounded up to 8.
    block_d      channels per grid step, a multiple of 128 (lanes). Narrower channel groups are
                 padded to 128 per group; ``d < 128`` with one group runs as one full-width block.
    unroll       iterations of the position loop unrolled (``lax.fori_loop(unroll=...)``); one
                 iteration steps through 8 positions (a sublane tile of every row block), themselves
                 unrolled. More independent work for the scheduler, longer kernels.
    ===========  =================================================================================
    """

    block_l: int = 256
    block_d: int = 128
    unroll: int = 1

    def __post_init__(self):
        for name in ("block_l", "block_d"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < LANES or v % LANES:
                raise ValueError(f"SelectiveScanTPUBlocks: `{name}` must be a positive multiple of {LANES}; got {v!r}")
        if not isinstance(self.unroll, int) or self.unroll < 1:
            raise ValueError(f"SelectiveScanTPUBlocks: `unroll` must be a positive int; got {self.unroll!r}")


def forward_vmem_bytes(tl: int, td: int, n: int, *, x_bytes: int = 2, has_z: bool = True, save_states: bool = True) -> int:
    """Bytes of VMEM the forward kernel holds for one grid step (inputs/outputs double-buffered).

    x, dt, (z), y: ``(tl, td)`` in the input dtype; B, C: ``(tl, n)`` float32 (``n`` padded to the
    128 lanes); A and the state blocks ``(n, td)`` float32; scratch: the carry ``(n, td)`` and three
    ``(tl, td)`` float32 rows (effective dt, dt * x, y before the gate).
    """
    f32 = 4
    seq = (3 + has_z) * tl * td * x_bytes
    bc = 2 * tl * pad128(n) * f32
    state = pad8(n) * td * f32
    small = 2 * SUBLANES * td * f32 + tl * LANES * f32  # dt_bias, D rows; segment keep column
    blocks = 2 * (seq + bc + state + small + (2 + save_states) * state)
    scratch = state + 3 * tl * td * f32
    return blocks + scratch


def backward_vmem_bytes(tl: int, td: int, n: int, *, x_bytes: int = 2, has_z: bool = True) -> int:
    """Bytes of VMEM the backward kernel holds for one grid step.

    Adds to the forward's inputs: dy; outputs dx, d(dt), (dz) ``(tl, td)``, dB and dC transposed
    ``(n, tl)`` float32, dA and the state gradients ``(n, td)``; scratch: the states of the block
    ``(tl + 1, n, td)`` float32 (recomputed from the saved block-entry state) and six ``(tl, td)``
    float32 rows.
    """
    f32 = 4
    seq_in = (3 + has_z) * tl * td * x_bytes  # x, dt, z, dy
    seq_out = (2 + has_z) * tl * td * x_bytes  # dx, ddt, dz
    bc = 2 * tl * pad128(n) * f32 + 2 * pad8(n) * tl * f32
    state = pad8(n) * td * f32
    small = 4 * SUBLANES * td * f32 + tl * LANES * f32
    blocks = 2 * (seq_in + seq_out + bc + small + 5 * state)
    scratch = state + (tl + 1) * state + 6 * tl * td * f32
    return blocks + scratch


def choose_blocks(l: int, d: int, g: int, n: int, *, x_bytes: int = 2, budget: int = VMEM_BUDGET) -> SelectiveScanTPUBlocks:
    """The widest channel tile, then the longest block, whose backward fits ``budget``.

    Width first: one grid step's recurrence is a chain of dependent per-position updates of
    ``n * block_d / 1024`` vregs (2 at n = 16, 128 lanes), too little independent work to cover
    the VPU/EUP latencies; wider tiles put more independent vregs in each step. (Reasoned from
    the hardware, not yet measured on a TPU: README.md.)
    """
    del l
    r_pad = pad128(d // g)
    for tl, td in ((256, 512), (256, 256), (128, 512), (128, 256), (256, 128), (128, 128)):
        if r_pad % td == 0 and backward_vmem_bytes(tl, td, n, x_bytes=x_bytes) <= budget:
            return SelectiveScanTPUBlocks(block_l=tl, block_d=td)
    return SelectiveScanTPUBlocks(block_l=128, block_d=128)


# --------------------------------------------------------------------------------------------
# Roofline of one grid step (README.md's TPU tables: `python -m pallas_kernels.selective_scan.blocks_tpu`)
# --------------------------------------------------------------------------------------------


def step_cost(tl: int, td: int, n: int, *, x_bytes: int = 2, has_z: bool = True, backward: bool = False) -> dict:
    """HBM bytes, vector element-operations and exps of one grid step (all options on).

    Forward, per (position, channel, state): ``exp(dt A)`` (1 exp), ``dt * A``, ``a * h``,
    ``B * u``, the add, ``h * C`` and its sum (6 VPU ops); per (position, channel) about 12
    (bias, softplus, ``dt x``, ``D x``, gate) and 3 exps (softplus, sigmoid). The backward
    recomputes the forward and adds ~14 VPU ops and one exp per (position, channel, state), plus
    the ``(n, tl)`` selects that place dB/dC. The state, A and the per-block saved state are
    read/written once per step.
    """
    f32 = 4
    elems = tl * td
    seq = (3 + has_z) * elems * x_bytes  # x, dt, z in; y out
    bc = 2 * tl * n * f32
    state = n * td * f32
    hbm = seq + bc + 2 * state
    vpu = elems * (6 * n + 12)
    exps = elems * (n + 3)
    if backward:
        hbm += (3 + has_z) * elems * x_bytes + 2 * n * tl * f32  # dy in; dx, ddt, dz out; dB, dC
        vpu += elems * (14 * n + 12) + 2 * n * tl * tl
        exps += elems * (n + 1)
    return dict(hbm_bytes=hbm, vpu_ops=vpu, exps=exps)


def budget_report(b: int = 4, l: int = 4096, d: int = 2048, n: int = 16) -> str:
    """Markdown: VMEM per grid step against v5e/v5p/v6e, and the HBM roofline on v5e."""
    from jax.experimental.pallas import tpu as pltpu

    chips = {"v5e": pltpu.ChipVersion.TPU_V5E, "v5p": pltpu.ChipVersion.TPU_V5P, "v6e": pltpu.ChipVersion.TPU_V6E}
    info = {k: pltpu.get_tpu_info_for_chip(v, 1) for k, v in chips.items()}
    mib = lambda v: f"{v / 2**20:.1f} MiB"  # noqa: E731
    lines = ["| block_l x block_d | fwd VMEM | bwd VMEM | bwd share of VMEM v5e / v5p / v6e |", "|---|---|---|---|"]
    for tl, td in ((256, 512), (256, 256), (128, 128)):
        fwd, bwd = forward_vmem_bytes(tl, td, n), backward_vmem_bytes(tl, td, n)
        share = " / ".join(f"{100 * bwd / i.vmem_capacity_bytes:.0f}%" for i in info.values())
        lines.append(f"| {tl} x {td} | {mib(fwd)} | {mib(bwd)} | {share} |")
    v5e = info["v5e"]
    blk = choose_blocks(l, d, 1, n)
    steps = b * (d // blk.block_d) * (l // blk.block_l)
    lines += ["", f"Shape b={b}, l={l}, d={d}, n={n} (bf16, D, z, softplus), tiling {blk.block_l} x {blk.block_d}: "
              f"{steps} grid steps.", "",
              "| pass | HBM / step | exps / step | VPU ops / step | HBM time (v5e) | total HBM floor (v5e) |",
              "|---|---|---|---|---|---|"]
    for name, bwd in (("forward", False), ("backward", True)):
        c = step_cost(blk.block_l, blk.block_d, n, backward=bwd)
        t = c["hbm_bytes"] / v5e.mem_bw_bytes_per_second
        lines.append(f"| {name} | {c['hbm_bytes'] / 2**10:.0f} KiB | {c['exps'] / 1e6:.2f} M | {c['vpu_ops'] / 1e6:.1f} M | "
                     f"{t * 1e6:.2f} us | {steps * t * 1e3:.2f} ms |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(budget_report())
