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
    fwd_nbuf, bwd_nbuf: shared-memory slots per input stream (2: the next chunk's TMA loads run
             behind the current chunk; 1: loads follow the chunk, and the smaller footprint may
             let more CTAs share an SM). None: 2 when it fits in shared memory.
    """

    chunk: int = 64
    block_p: int = 64
    fwd_nbuf: int | None = None
    bwd_nbuf: int | None = None

    def __post_init__(self):
        if self.chunk != _WGMMA_M:
            raise ValueError(f"SSDBlocks: `chunk` must be {_WGMMA_M} (one wgmma M group); got {self.chunk}")
        if self.block_p != _SWIZZLE_ELEMS_16BIT:
            raise ValueError(
                f"SSDBlocks: `block_p` must be {_SWIZZLE_ELEMS_16BIT} (one 128-byte swizzled row of "
                f"16-bit elements); got {self.block_p}"
            )
        for name in ("fwd_nbuf", "bwd_nbuf"):
            v = getattr(self, name)
            if v not in (None, 1, 2):
                raise ValueError(f"SSDBlocks: `{name}` must be None, 1 or 2; got {v!r}")


DEFAULT_BLOCKS = SSDBlocks()
