"""Tiling of the Mosaic TPU SSD kernels, their VMEM footprint, and the rule picking them.

One grid step owns ``heads_per_block`` heads of one batch row over one chunk of ``chunk``
positions; the heads' states ``(n, p)`` float32 stay in VMEM scratch from chunk to chunk (the
"arbitrary" grid axis). ``x``/``y``/``z`` are read as ``(chunk, heads_per_block * p)`` slabs of the
``(b, l, h * p)`` view of the input (no transpose in HBM), so ``heads_per_block * p`` must be a
multiple of the 128 lanes -- or cover all heads.
"""

from __future__ import annotations

import dataclasses

from pallas_kernels.tpu_common import LANES, SUBLANES, pad8, pad128

__all__ = ["SSDTPUBlocks", "backward_vmem_bytes", "choose_heads_per_block", "forward_vmem_bytes"]


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
                      computed once for them; their ``x`` columns must fill whole 128-lane tiles
                      (or be all heads). ``None``: the fewest filling two tiles, else the most
                      filling whole tiles, else all heads.
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
    legal = [k for k in range(1, h // g + 1) if (h // g) % k == 0 and (k * p) % LANES == 0]
    if requested is not None:
        return requested if requested in legal + [h] else None
    if not legal:
        return h
    # At least two lane tiles of x per step when a group allows it: C B^T and the B/C blocks are
    # shared by more heads (README.md's table: fewer HBM bytes per head than one tile's worth).
    wide = [k for k in legal if k * p >= 2 * LANES]
    return wide[0] if wide else legal[-1]


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


# --------------------------------------------------------------------------------------------
# Roofline of one grid step (README.md's TPU tables: `python -m pallas_kernels.ssd.blocks_tpu`)
# --------------------------------------------------------------------------------------------


def step_cost(q: int, hb: int, p: int, n: int, gb: int = 1, *, x_bytes: int = 2, has_z: bool = True,
              save_states: bool = False, backward: bool = False) -> dict:
    """HBM bytes, MXU FLOPs, exps and vector element-operations of one grid step (all options).

    Forward MXU work: ``C B^T`` once per group (2 q^2 n), then per head ``M x`` (2 q^2 p), ``C S``
    and ``B^T (w x)`` (2 q n p each). Element-wise per head: the ``(q, q)`` mask, difference, exp
    and the two scalings (~8 ops and one exp per entry) and ~8 ops per ``(q, p)`` entry. The
    backward recomputes ``C B^T``, ``M`` and ``y`` and adds per head 3 (q, q, p)-, 5 (q, n, p)- and
    per group 2 (q, q, n)-shaped products, ~12 ops per ``(q, q)`` entry; it reads the state the
    forward saved (``save_states``: the training forward writes it, float32) and ``dy``, and
    writes dx, dz and float32 dB/dC.
    """
    f32 = 4
    seq = (2 + has_z) * q * hb * p * x_bytes  # x, z in; y out
    bc = 2 * gb * q * n * x_bytes
    dtcs = 4 * hb * q * f32
    state = hb * n * p * f32
    hbm = seq + bc + dtcs + (save_states or backward) * state
    flops = gb * 2 * q * q * n + hb * (2 * q * q * p + 4 * q * n * p)
    vpu = hb * (8 * q * q + 8 * q * p)
    exps = hb * (q * q + 2 * q)
    if backward:
        hbm += (1 + 1 + has_z) * q * hb * p * x_bytes + 2 * gb * q * n * f32 + dtcs  # dy; dx, dz; dB, dC; d(dt, cs)
        flops += gb * 4 * q * q * n + hb * (6 * q * q * p + 10 * q * n * p)
        vpu += hb * (12 * q * q + 16 * q * p)
        exps += hb * (q * q + 2 * q)
    return dict(hbm_bytes=hbm, flops=flops, vpu_ops=vpu, exps=exps)


def budget_report(b: int = 4, l: int = 4096, h: int = 64, p: int = 64, n: int = 128, g: int = 1) -> str:
    """Markdown: VMEM per grid step against v5e/v5p/v6e, and the roofline on v5e."""
    from jax.experimental.pallas import tpu as pltpu

    chips = {"v5e": pltpu.ChipVersion.TPU_V5E, "v5p": pltpu.ChipVersion.TPU_V5P, "v6e": pltpu.ChipVersion.TPU_V6E}
    info = {k: pltpu.get_tpu_info_for_chip(v, 1) for k, v in chips.items()}
    mib = lambda v: f"{v / 2**20:.1f} MiB"  # noqa: E731
    lines = ["| chunk x heads per block | fwd VMEM | bwd VMEM | bwd share of VMEM v5e / v5p / v6e |",
             "|---|---|---|---|"]
    configs = ((128, 2), (128, 4), (256, 2), (256, 4))
    for q, hb in configs:
        fwd, bwd = forward_vmem_bytes(q, hb, p, n, 1), backward_vmem_bytes(q, hb, p, n, 1)
        share = " / ".join(f"{100 * bwd / i.vmem_capacity_bytes:.0f}%" for i in info.values())
        lines.append(f"| {q} x {hb} | {mib(fwd)} | {mib(bwd)} | {share} |")
    v5e = info["v5e"]
    lines += ["", f"Shape b={b}, l={l}, h={h}, p={p}, n={n}, g={g} (bf16, D, z), on v5e "
              f"({v5e.mem_bw_bytes_per_second / 1e9:.0f} GB/s, {v5e.bf16_ops_per_second / 1e12:.0f} TFLOP/s bf16):", "",
              "| chunk x heads | pass | HBM / step | MXU FLOP / step | exps / step | HBM time | MXU time | grid steps | "
              "HBM floor | MXU floor |", "|---|---|---|---|---|---|---|---|---|---|"]
    for q, hb in configs:
        steps = b * (h // hb) * (l // q)
        for name, save, bwd in (("fwd", False, False), ("fwd (train)", True, False), ("bwd", False, True)):
            c = step_cost(q, hb, p, n, 1, save_states=save, backward=bwd)
            th = c["hbm_bytes"] / v5e.mem_bw_bytes_per_second
            tf = c["flops"] / v5e.bf16_ops_per_second
            lines.append(f"| {q} x {hb} | {name} | {c['hbm_bytes'] / 2**10:.0f} KiB | {c['flops'] / 1e6:.1f} M | "
                         f"{c['exps'] / 1e3:.0f} K | {th * 1e6:.2f} us | {tf * 1e6:.2f} us | {steps} | "
                         f"{steps * th * 1e3:.2f} ms | {steps * tf * 1e3:.2f} ms |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(budget_report())
