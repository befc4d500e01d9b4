"""Tiling of the Mosaic TPU SSD kernels, their VMEM footprint, and the rule picking them.

One grid step owns ``heads_per_block`` heads of one batch row over one chunk of ``chunk``
positions; the heads' states ``(n, p)`` float32 stay in VMEM scratch from chunk to chunk (the
"arbitrary" grid axis). ``x``/``y``/``z`` are read as ``(chunk, heads_per_block * p)`` slabs of the
``(b, l, h * p)`` view of the input (no transpose in HBM), so ``heads_per_block * p`` must be a
multiple of the 128 lanes -- or cover all heads.
"""

from __future__ import annotations

import dataclasses

__all__ = ["SSDTPUBlocks", "backward_vmem_bytes", "choose_heads_per_block", "forward_vmem_bytes"]

LANES = 128
SUBLANES = 8


def pad8(v: int) -> int:
    return -(-v // SUBLANES) * SUBLANES


def pad128(v: int) -> int:
    return -(-v // LANES) * LANES


@dataclasses.dataclass(frozen=True)
class SSDTPUBlocks:
    """Tile sizes of the SSD kernels.

    ================  ==============================================================================
    field             meaning
    ================  ==============================================================================
    chunk             the kernel's chunk ``q`` (a multiple of 128: positions are the lane axis of
                      the ``(q, q)`` intra-chunk matrices and of the per-position dt rows). The
                      result does not depend on it (Mamba-2 Sec. 6), so the caller's
                      ``chunk_size`` is not used. Sequences shorter than ``chunk`` run as one
                      chunk of ``l`` rounded up to 8.
    heads_per_block   heads per grid step, all from one group of ``B``/``C`` so ``C B^T`` is
                      computed once for them; ``None``: the fewest whose ``x`` columns fill
                      whole 128-lane tiles (all heads when none does).
    ================  ==============================================================================
    """

    chunk: int = 128
    heads_per_block: int | None = None

    def __post_init__(self):
        if not isinstance(self.chunk, int) or self.chunk < LANES or self.chunk % LANES:
            raise ValueError(f"SSDTPUBlocks: `chunk` must be a positive multiple of {LANES}; got {self.chunk!r}")
        hb = self.heads_per_block
        if hb is not None and (not isinstance(hb, int) or hb < 1):
            raise ValueError(f"SSDTPUBlocks: `heads_per_block` must be None or a positive int; got {hb!r}")


def choose_heads_per_block(h: int, g: int, p: int, requested: int | None = None) -> int | None:
    """Heads per grid step: divides ``h // g`` (one group) with ``hb * p % 128 == 0``, else ``h``.

    Returns None when ``requested`` is not a legal value (the caller reports why).
    """
    legal = [k for k in range(1, h // g + 1) if (h // g) % k == 0 and (k * p) % LANES == 0] + [h]
    if requested is not None:
        return requested if requested in legal else None
    return legal[0]


def forward_vmem_bytes(q: int, hb: int, p: int, n: int, gb: int, *, x_bytes: int = 2, has_z: bool = True) -> int:
    """VMEM of one forward grid step: double-buffered blocks plus the state scratch and the
    ``(q, q)`` float32 temporaries of one head (scores, decays, masks) that Mosaic keeps in VMEM."""
    f32 = 4
    cols = pad128(hb * p)
    seq = (2 + has_z) * q * cols * x_bytes  # x, y, z
    bc = 2 * gb * q * pad128(n) * x_bytes
    dt_cs = hb * q * LANES * f32 + hb * SUBLANES * q * f32  # (q, 2) columns, (2, q) rows
    seg = q * LANES * f32 + SUBLANES * q * f32
    state = hb * pad8(n) * pad128(p) * f32
    blocks = 2 * (seq + bc + dt_cs + seg + SUBLANES * cols * f32 + 3 * state)
    temps = 6 * q * q * f32 + 4 * q * pad128(p) * f32
    return blocks + state + temps


def backward_vmem_bytes(q: int, hb: int, p: int, n: int, gb: int, *, x_bytes: int = 2, has_z: bool = True) -> int:
    """VMEM of one backward grid step: the forward's inputs, dy, the states, the gradient blocks
    (dx, dz, float32 dB/dC and the dt/cumsum gradient columns and rows) and the temporaries."""
    f32 = 4
    cols = pad128(hb * p)
    seq = (4 + 2 * has_z) * q * cols * x_bytes  # x, z, dy in; dx, dz out
    bc = 2 * gb * q * pad128(n) * (x_bytes + f32)
    dt_cs = 2 * (hb * q * LANES * f32 + hb * SUBLANES * q * f32)
    seg = q * LANES * f32 + SUBLANES * q * f32
    state = hb * pad8(n) * pad128(p) * f32
    blocks = 2 * (seq + bc + dt_cs + seg + 2 * SUBLANES * cols * f32 + 3 * state)
    temps = 10 * q * q * f32 + 8 * q * pad128(p) * f32 + 4 * q * pad128(n) * f32
    return blocks + state + temps
