"""Tiling of the SSD Mosaic GPU kernels: one frozen spec, validated on construction."""

from __future__ import annotations

import dataclasses

__all__ = ["SSDBlocks", "DEFAULT_BLOCKS"]

# wgmma on Hopper: M is issued in groups of 64 rows; a 128-byte swizzled bf16 tile row holds 64
# elements, which is also the contraction (K) granule. Both tiles below are therefore 64.
_WGMMA_M = 64
_SWIZZLE_ELEMS_16BIT = 64


@dataclasses.dataclass(frozen=True)
class SSDBlocks:
    """Tile sizes of the fused SSD kernels.

    chunk:   positions per step of the sequential chunk loop (the kernel's own ``q``). The SSD
             output does not depend on the chunk size mathematically (Mamba-2 paper, Sec. 6), so
             the kernel picks the size that fits the chip rather than the caller's
             ``chunk_size``. 64: the ``(q, q)`` semiseparable block fits in one warpgroup's
             registers next to the ``(block_p, n)`` fp32 state.
    block_p: head-dim rows of the state owned by one CTA (heads with ``p > block_p`` are split
             over the grid; the recurrence is independent per row of ``p``).
    """

    chunk: int = 64
    block_p: int = 64

    def __post_init__(self):
        if self.chunk != _WGMMA_M:
            raise ValueError(f"SSDBlocks: `chunk` must be {_WGMMA_M} (one wgmma M group); got {self.chunk}")
        if self.block_p != _SWIZZLE_ELEMS_16BIT:
            raise ValueError(
                f"SSDBlocks: `block_p` must be {_SWIZZLE_ELEMS_16BIT} (one 128-byte swizzled row of "
                f"16-bit elements); got {self.block_p}"
            )


DEFAULT_BLOCKS = SSDBlocks()
