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

__all__ = ["SelectiveScanTPUBlocks", "backward_vmem_bytes", "choose_blocks", "forward_vmem_bytes"]

LANES = 128
SUBLANES = 8
# What choose_blocks lets one kernel use: a quarter of v5p's 64 MiB VMEM per core, so two grid
# steps' buffers and Mosaic's own scratch fit with room to spare on every chip from v5e on.
VMEM_BUDGET = 16 * 1024 * 1024


def pad8(v: int) -> int:
    return -(-v // SUBLANES) * SUBLANES


def pad128(v: int) -> int:
    return -(-v // LANES) * LANES


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
    """The longest ``block_l`` (256, then 128) whose backward fits ``budget``; 128 channels."""
    del l, d, g
    for tl in (256, 128):
        if backward_vmem_bytes(tl, LANES, n, x_bytes=x_bytes) <= budget:
            return SelectiveScanTPUBlocks(block_l=tl)
    return SelectiveScanTPUBlocks(block_l=128)
