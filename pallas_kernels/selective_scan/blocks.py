"""Tiling of the Mosaic GPU selective-scan kernels, and the rule that picks it for a shape.

One CUDA block is one warpgroup (128 threads). It owns ``channels`` channels of one batch row and
scans them over the whole sequence, ``chunk`` positions at a time. Inside the warpgroup each
thread owns one channel and ``states_per_thread`` consecutive state indices, so

    channels = 128 * states_per_thread / n_padded

and the ``n_padded / states_per_thread`` threads of a channel each hold a part of ``h . C`` (summed
once per chunk). Fewer states per thread means more blocks (parallelism over ``b * d``) and more
per-element overhead; more states per thread means fewer, fuller blocks.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import gpu_common

WARPGROUP = 128
# The rule in `choose_blocks` (measured on H100, README.md): the most states per thread (>= 2)
# that still launches FULL_BLOCKS blocks; failing that, the most (>= 2) that launches HALF_BLOCKS
# (about one per SM: one state per thread has the most overhead per element and only pays when
# nothing else fills the GPU); failing that, the fewest.
FULL_BLOCKS = 192
HALF_BLOCKS = 96


# Shared memory one block may use so that two blocks fit an H100 SM (228 KB).
SMEM_PER_BLOCK = 110 * 1024
# TMA copies move multiples of 128 bytes: `keep` is copied KEEP_MIN positions at a time (the
# wrapper pads it so the last copy stays in bounds).
KEEP_MIN = 32
F32 = jnp.float32


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


# --------------------------------------------------------------------------------------------
# The kernels' shared-memory buffers: what they declare, and what the tiling rules count
# --------------------------------------------------------------------------------------------


def forward_buffers(q: int, ch: int, n: int, spt: int, unroll: int, *, x_dtype, dt_dtype, z_dtype, bc_dtype,
                    has_z: bool, has_keep: bool) -> dict:
    """The forward kernel's shared-memory buffers by name, in allocation order (``q`` = chunk,
    ``ch`` channels, ``n`` padded states, ``spt`` states per thread). Absent inputs keep a small
    placeholder."""
    nl = n // spt
    return dict(
        # Two TMA stages of each per-chunk input.
        x=plgpu.SMEM((2, q, ch), x_dtype),
        dt=plgpu.SMEM((2, q, ch), dt_dtype),
        z=plgpu.SMEM((2, q, ch) if has_z else (1, 8, 8), z_dtype),
        B=plgpu.SMEM((2, q, n), bc_dtype),
        C=plgpu.SMEM((2, q, n), bc_dtype),
        # Buffers read by the recurrence have `unroll` rows of padding: the last look-ahead.
        # Each slot's row is a multiple of 32 float32 (128 bytes): TMA writes shared memory at
        # 128-byte-aligned addresses, and slot 1 starts one row in. Interpret mode does not check
        # this; on the H100 a 68-float row (q=64, unroll 4) faulted with a misaligned address.
        keep=plgpu.SMEM((2, _round_up(max(q, KEEP_MIN) + unroll, KEEP_MIN)) if has_keep else (1, 8), F32),
        delta=plgpu.SMEM((q + unroll, ch), F32),
        u=plgpu.SMEM((q + unroll, ch), F32),  # delta x
        part=plgpu.SMEM((q, ch, nl), F32),  # in-thread partial sums of h C
        Bf=plgpu.SMEM((q + unroll, nl, spt), F32),  # B in float32
        Cf=plgpu.SMEM((q + unroll, nl, spt), F32),  # C in float32
        y=plgpu.SMEM((q, ch), x_dtype),  # y tile for the TMA store
    )


def backward_buffers(q: int, ch: int, n: int, spt: int, *, x_dtype, dt_dtype, z_dtype, bc_dtype, has_z: bool,
                     has_keep: bool) -> dict:
    """The backward kernel's shared-memory buffers by name, in allocation order (``q`` = the
    backward chunk)."""
    nl = n // spt
    small = (1, 8)
    return dict(
        # Two TMA stages of each per-chunk input.
        x=plgpu.SMEM((2, q, ch), x_dtype),
        dt=plgpu.SMEM((2, q, ch), dt_dtype),
        z=plgpu.SMEM((2, q, ch) if has_z else (1, 8, 8), z_dtype),
        g=plgpu.SMEM((2, q, ch), x_dtype),  # dL/dy
        B=plgpu.SMEM((2, q, n), bc_dtype),
        C=plgpu.SMEM((2, q, n), bc_dtype),
        keep=plgpu.SMEM((2, max(q, KEEP_MIN)) if has_keep else small, F32),
        delta=plgpu.SMEM((q, ch), F32),
        u=plgpu.SMEM((q, ch), F32),  # delta x
        dy=plgpu.SMEM((q, ch), F32),
        Bf=plgpu.SMEM((q, nl, spt), F32),  # B in float32
        Cf=plgpu.SMEM((q, nl, spt), F32),  # C in float32
        h=plgpu.SMEM((q, ch, nl, spt), F32),  # h_{t-1}, then the dC products dy h
        dBp=plgpu.SMEM((q, ch, nl, spt), F32),  # dB products lam delta x
        s1=plgpu.SMEM((q, ch, nl), F32),  # partials of sum_n lam B
        s2=plgpu.SMEM((q, ch, nl), F32),  # partials of sum_n lam A a h
        yp=plgpu.SMEM((q, ch, nl) if has_z else small, F32),  # partials of h C
        dx=plgpu.SMEM((q, ch), x_dtype),  # dx tile
        ddt=plgpu.SMEM((q, ch), dt_dtype),  # ddt tile
        dz=plgpu.SMEM((q, ch) if has_z else small, z_dtype),  # dz tile
    )


def _widest(itemsize: int) -> dict:
    """The buffers' options at their largest: every input ``itemsize`` bytes, z and segment ids."""
    dtype = jnp.dtype(f"float{8 * itemsize}")
    return dict(x_dtype=dtype, dt_dtype=dtype, z_dtype=dtype, bc_dtype=dtype, has_z=True, has_keep=True)


def forward_smem_bytes(chunk: int, ch: int, n: int, states_per_thread: int, *, unroll: int = 4,
                       itemsize: int = 2) -> int:
    """Shared memory of the forward kernel's buffers (:func:`forward_buffers`) for inputs of
    ``itemsize`` bytes, with z and segment ids."""
    return gpu_common.smem_bytes(forward_buffers(chunk, ch, n, states_per_thread, unroll, **_widest(itemsize)))


def pow2_at_least(v: int, floor: int = 1) -> int:
    p = floor
    while p < v:
        p *= 2
    return p


def padded_state_size(n: int) -> int:
    """State sizes run as a power of two >= 8 (16-byte TMA rows of bf16 B/C); pads are zero."""
    return pow2_at_least(n, 8)


@dataclasses.dataclass(frozen=True)
class SelectiveScanBlocks:
    """Tiling of one kernel launch.

    ==================== ========================================================================
    field                meaning
    ==================== ========================================================================
    ``n``                padded state size (power of two, 8..256)
    ``states_per_thread`` state elements per thread (power of two); ``channels`` follows
    ``chunk``            positions per pipeline stage (TMA tile height), a multiple of 8
    ``unroll``           unrolling of the per-position loop (divides ``chunk``)
    ``save_interval``    positions between the states the forward stores for the backward (a
                         power of two that divides ``chunk`` or is a multiple of it); the
                         backward recomputes each interval from its stored start state
    ==================== ========================================================================
    """

    n: int
    states_per_thread: int
    chunk: int = 64
    unroll: int = 4
    save_interval: int = 32

    def __post_init__(self):
        def power_of_two(name, v):
            if not isinstance(v, int) or v < 1 or v & (v - 1):
                raise ValueError(f"SelectiveScanBlocks: `{name}` must be a power of two; got {v!r}")

        power_of_two("n", self.n)
        power_of_two("states_per_thread", self.states_per_thread)
        if not 8 <= self.n <= 256:
            raise ValueError(f"SelectiveScanBlocks: padded `n` must be in 8..256; got {self.n}")
        if self.states_per_thread > self.n:
            raise ValueError(
                f"SelectiveScanBlocks: `states_per_thread`={self.states_per_thread} exceeds n={self.n}"
            )
        # 4 warps x (channels / 4 rows x n / states_per_thread lanes) = 128 threads, and at least
        # 8 channels: a TMA row of 8 bf16 channels is the 16-byte minimum.
        if self.channels < 8 or self.channels > WARPGROUP:
            raise ValueError(
                f"SelectiveScanBlocks: n={self.n}, states_per_thread={self.states_per_thread} gives "
                f"{self.channels} channels per block; need 8..128 (states_per_thread >= n / 16)"
            )
        if not isinstance(self.chunk, int) or self.chunk < 8 or self.chunk % 8:
            raise ValueError(f"SelectiveScanBlocks: `chunk` must be a positive multiple of 8; got {self.chunk!r}")
        if (self.chunk * self.channels) % WARPGROUP:
            raise ValueError(
                f"SelectiveScanBlocks: chunk x channels = {self.chunk} x {self.channels} must be a "
                f"multiple of {WARPGROUP} (one element per thread at least)"
            )
        if not isinstance(self.unroll, int) or self.unroll < 1 or self.chunk % (2 * self.unroll):
            # The forward runs groups of `unroll` positions in pairs.
            raise ValueError(f"SelectiveScanBlocks: 2 x `unroll` must divide chunk={self.chunk}; got {self.unroll!r}")
        power_of_two("save_interval", self.save_interval)
        if self.save_interval < 8 or (self.chunk % self.save_interval and self.save_interval % self.chunk):
            raise ValueError(
                f"SelectiveScanBlocks: `save_interval`={self.save_interval} must be >= 8 and divide "
                f"chunk={self.chunk} or be a multiple of it"
            )

    @property
    def channels(self) -> int:
        return WARPGROUP * self.states_per_thread // self.n

    @property
    def tile_vector(self) -> int:
        """Elements per thread and vector access in the (chunk, channels) element-wise passes."""
        per_thread = self.chunk * self.channels // WARPGROUP
        return min(4, per_thread)


def backward_smem_bytes(blocks: SelectiveScanBlocks, itemsize: int = 2) -> int:
    """Shared memory of the backward kernel's buffers (:func:`backward_buffers`) for inputs of
    ``itemsize`` bytes, with z and segment ids."""
    return gpu_common.smem_bytes(backward_buffers(blocks.chunk, blocks.channels, blocks.n, blocks.states_per_thread,
                                                  **_widest(itemsize)))


# Positions per backward chunk = the forward's save interval in training. Each position of a
# chunk holds two (ch, n) float32 arrays in shared memory, which bounds it; 16 is also the
# smallest chunk the (chunk, ch) element-wise tiles allow at ch = 8.
BACKWARD_CHUNK = 16
BACKWARD_MAX_STATES_PER_THREAD = 4


def backward_fits(blocks: SelectiveScanBlocks) -> bool:
    """Whether the backward kernel's shared memory fits one H100 block (padded n <= 128)."""
    return backward_smem_bytes(blocks) <= gpu_common.SMEM_LIMIT


def choose_backward_blocks(b: int, d: int, g: int, n: int, *, states_per_thread: int | None = None,
                           chunk: int | None = None, unroll: int = 2) -> SelectiveScanBlocks:
    """Tiling of the backward kernel: at most 4 states per thread where n allows (the channel sums
    of dB and dC hold a thread's channels in registers); chunk = the forward's save interval."""
    n_p = padded_state_size(n)
    if states_per_thread is None:
        states_per_thread = max(n_p // 16, min(BACKWARD_MAX_STATES_PER_THREAD, _rule(b, d, g, n_p)))
    if chunk is None:
        chunk = BACKWARD_CHUNK
    return SelectiveScanBlocks(n=n_p, states_per_thread=states_per_thread, chunk=chunk, unroll=unroll,
                               save_interval=chunk)


def choose_blocks(b: int, d: int, g: int, n: int, *, l: int | None = None, states_per_thread: int | None = None,
                  chunk: int | None = None, unroll: int = 4, save_interval: int = BACKWARD_CHUNK,
                  itemsize: int = 2) -> SelectiveScanBlocks:
    """The tiling for ``b`` rows of length ``l``, ``d`` channels in ``g`` groups, state size ``n``.

    States per thread by the rule above (:data:`FULL_BLOCKS`, :data:`HALF_BLOCKS`; measured on
    H100, README.md), and the largest chunk whose shared memory lets two blocks share an SM
    (``itemsize``: the widest input dtype's bytes).
    """
    n_p = padded_state_size(n)
    if states_per_thread is None:
        states_per_thread = _rule(b, d, g, n_p)
    if chunk is None:
        # The largest chunk (64 or 32) whose shared memory lets two blocks share an SM, and not
        # twice the sequence (padding positions cost as much as real ones); failing that, the
        # largest (32 or 16) that fits one block (n = 256 with float32 B, C).
        ch = WARPGROUP * states_per_thread // n_p
        smem = lambda q: forward_smem_bytes(q, ch, n_p, states_per_thread, unroll=unroll, itemsize=itemsize)  # noqa: E731
        chunk = 64
        while chunk > 32 and (smem(chunk) > SMEM_PER_BLOCK or (l and l <= chunk // 2)):
            chunk //= 2
        while chunk > 16 and smem(chunk) > gpu_common.SMEM_LIMIT:
            chunk //= 2
        if smem(chunk) > gpu_common.SMEM_LIMIT:
            raise ValueError(
                f"selective_scan (pallas_gpu): no forward chunk fits shared memory for n={n}, "
                f"{states_per_thread} states per thread, {itemsize}-byte inputs"
            )
    return SelectiveScanBlocks(n=n_p, states_per_thread=states_per_thread, chunk=chunk, unroll=unroll,
                               save_interval=save_interval)


def _rule(b: int, d: int, g: int, n_p: int) -> int:
    lo = max(1, n_p // 16)
    valid = [spt for spt in (16, 8, 4, 2, 1) if lo <= spt <= n_p]

    def blocks(spt):
        return b * g * -(-(d // g) // (WARPGROUP * spt // n_p))

    for threshold, candidates in ((FULL_BLOCKS, [spt for spt in valid if spt > 1]),
                                  (HALF_BLOCKS, [spt for spt in valid if spt > 1])):
        for spt in candidates:
            if blocks(spt) >= threshold:
                return spt
    return valid[-1]
