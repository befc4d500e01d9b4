"""The Mosaic TPU selective-scan kernels (pallas_kernels/selective_scan, impl="pallas_tpu").

Every test runs the kernels in TPU interpret mode with the race detector on, two simulated
TensorCores and NaN-filled fresh memory (``tests/pallas_kernels/tpu_interpret.py``); a race, a
read of memory the kernel never wrote (NaN in the result) or an out-of-bounds read fails it.
Interpret mode costs a few seconds per compiled kernel, so the shared contract runs on a reduced
grid here (the rest of it is marked ``slow``), and the TPU-specific tests use small shapes at and
around the tile boundaries (one block, several sequence blocks, channel tiles, padded groups).

On a TPU backend the same tests compile the kernels with Mosaic.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import tpu_common
from pallas_kernels.selective_scan import api_tpu, blocks_tpu
from pallas_kernels.selective_scan.blocks_tpu import SelectiveScanTPUBlocks
from ssm_jax.ops.selective_scan import REGISTRY, selective_scan
from tests.numerics import assert_close
from tests.ops.test_selective_scan import (
    OPTION_ROWS,
    SelectiveScanContract,
    canonical,
    kernel_op,
    make_inputs,
    values_and_grads,
)
from tests.pallas_kernels.tpu_interpret import (
    ON_TPU,
    global_x64,
    pallas_tpu_backends,
    slow_off_tpu,
    slow_off_tpu_inherited,
    strict_interpret,
)

pytestmark = pallas_tpu_backends
# Contract rows run in CI: all options off (l = 1, n = 1), all on (g = 2, l = 9, n = 4), and a
# mixed row (z, dt_bias without softplus, initial_state, segment_ids; l = 5); the other thirteen
# are `slow` off TPU.
CI_ROWS = (0, 15, 6)


# Slow off TPU: the initial/final state gradients are test_gradients_match_reference; bfloat16 in
# CI is test_bf16_several_blocks_channel_tiles_and_padding.
@slow_off_tpu_inherited("test_segments_equal_separate_runs", "test_jit_and_vmap",
                        "test_chaining_two_halves_equals_one_call", "test_low_precision_inputs")
@pytest.mark.usefixtures("strict")
class TestSelectiveScanMosaicTPU(SelectiveScanContract):
    impl = "pallas_tpu"
    reference_impl = "scan"

    @pytest.mark.parametrize(
        "row", [r if r in CI_ROWS else pytest.param(r, marks=slow_off_tpu) for r in range(len(OPTION_ROWS))]
    )
    def test_options_match_oracle(self, rng, row):
        super().test_options_match_oracle(rng, row)

    def test_gradients_match_float64_finite_differences(self, rng):
        # float64 runs in interpret mode only (why_not refuses it on a TPU): the kernels' own
        # backward against central differences of their own forward.
        with global_x64():
            super().test_gradients_match_float64_finite_differences(rng)

    @pytest.mark.parametrize(
        "case",
        [c if c in ("dt_to_zero", "large_dt_negative_A") else pytest.param(c, marks=slow_off_tpu)
         for c in sorted(SelectiveScanContract.EXTREMES)],
    )
    def test_extreme_inputs_are_finite_and_correct(self, rng, case):
        super().test_extreme_inputs_are_finite_and_correct(rng, case)


# --------------------------------------------------------------------------------------------
# Tile boundaries: several sequence blocks, channel tiles, per-group padding
# --------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("strict")
def test_bf16_several_blocks_channel_tiles_and_padding(rng):
    """bf16 inputs; l = 272 over blocks of 128 (three blocks, the last mostly padding); d = 200 in
    one group, padded to two 128-lane tiles; every option; values and every gradient."""
    op = kernel_op(api_tpu.selective_scan, blocks=SelectiveScanTPUBlocks(block_l=128))
    values_and_grads(rng, dict(b=1, l=272, d=200, n=3, g=None), op, dtype=jnp.bfloat16, tol=1e-2, grad_tol=2e-2)


@slow_off_tpu
@pytest.mark.usefixtures("strict")
def test_groups_spanning_tiles(rng):
    """Two groups of 130 channels (each padded to two tiles: B/C picked per tile), three blocks."""
    op = kernel_op(api_tpu.selective_scan, blocks=SelectiveScanTPUBlocks(block_l=128, unroll=2))
    values_and_grads(rng, dict(b=2, l=300, d=260, n=5, g=2), op, tol=2e-5, grad_tol=1e-4)


# --------------------------------------------------------------------------------------------
# Registry, tiling, lowering (sharded calls: tests/pallas_kernels/test_sharding.py)
# --------------------------------------------------------------------------------------------


def test_interpret_harness_catches_races_and_unwritten_memory():
    """The strict interpreter these tests rely on fails a kernel whose parallel grid steps write
    the same block, and hands NaN to a kernel that reads scratch it never wrote."""
    from jax.experimental import pallas as pl

    x = jnp.ones((2, 8, 128), jnp.float32)

    def call(kernel, out_block, scratch=()):
        return pl.pallas_call(
            kernel, grid=(2,), in_specs=[pl.BlockSpec((None, 8, 128), lambda i: (i, 0, 0))],
            out_specs=pl.BlockSpec(*out_block), out_shape=jax.ShapeDtypeStruct((2, 8, 128), jnp.float32),
            scratch_shapes=scratch, compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
            interpret=pltpu.InterpretParams(),
        )(x)

    def double(x_ref, o_ref):
        o_ref[...] = 2 * x_ref[...]

    with pytest.raises(AssertionError, match="race detector reported races"):
        with strict_interpret():
            call(double, ((None, 8, 128), lambda i: (0, 0, 0)))  # both steps write block 0

    def add_scratch(x_ref, o_ref, s_ref):
        o_ref[...] = x_ref[...] + s_ref[...]

    with strict_interpret():
        y = call(add_scratch, ((None, 8, 128), lambda i: (i, 0, 0)), [pltpu.VMEM((8, 128), jnp.float32)])
        assert bool(jnp.all(jnp.isnan(y)))
        assert_close(call(double, ((None, 8, 128), lambda i: (i, 0, 0))), 2 * x)


def test_why_not_and_registry(rng):
    args, kw = make_inputs(rng, b=1, l=4, d=4, n=2)
    ctx = {**canonical({**args, **kw}), "backend": "gpu"}
    assert re.search(r"runs on TPUs .* backend is 'gpu'", api_tpu.why_not(ctx))
    assert api_tpu.why_not({**ctx, "backend": "tpu"}) is None
    assert REGISTRY["pallas_tpu"].auto_backends == ("tpu",)
    name, _ = REGISTRY.resolve("auto", canonical({**args, **kw}))
    assert (name == "pallas_tpu") == ON_TPU
    with jax.enable_x64(True):
        args64 = {k: np.asarray(v, np.float64) for k, v in args.items()}
        ctx64 = {**canonical(args64), "backend": "tpu"}
        assert "float64" in api_tpu.why_not(ctx64)
    big = {**ctx, "backend": "tpu", "A": jnp.zeros((4, 4096), jnp.float32)}
    assert "VMEM" in api_tpu.why_not(big)
    if not ON_TPU:
        with pytest.raises(ValueError, match="'pallas' has no target on backend 'cpu'"):
            selective_scan(**args, impl="pallas")


def test_blocks_fit_vmem():
    # Mamba-1's n = 16: the widest tile and longest block; larger states trade them for VMEM.
    assert blocks_tpu.choose_blocks(4096, 2048, 1, 16) == SelectiveScanTPUBlocks(block_l=256, block_d=512)
    assert blocks_tpu.choose_blocks(4096, 2048, 1, 64) == SelectiveScanTPUBlocks(block_l=128, block_d=256)
    assert blocks_tpu.choose_blocks(4096, 2048, 1, 256) == SelectiveScanTPUBlocks(block_l=128, block_d=128)
    assert blocks_tpu.choose_blocks(12, 6, 3, 16).block_d == 128  # groups of 2 channels pad to 128
    for n in (16, 64, 128):
        blk = blocks_tpu.choose_blocks(4096, 2048, 1, n)
        assert blocks_tpu.backward_vmem_bytes(blk.block_l, blk.block_d, n) <= blocks_tpu.VMEM_BUDGET
        assert blocks_tpu.forward_vmem_bytes(blk.block_l, blk.block_d, n) < blocks_tpu.backward_vmem_bytes(
            blk.block_l, blk.block_d, n)
    # The budget leaves room on every chip the README covers (VMEM per TensorCore from jax).
    for chip in (pltpu.ChipVersion.TPU_V5E, pltpu.ChipVersion.TPU_V5P, pltpu.ChipVersion.TPU_V6E):
        assert tpu_common.MAX_VMEM_LIMIT <= pltpu.get_tpu_info_for_chip(chip, 1).vmem_capacity_bytes // 1.3


@pytest.mark.parametrize("chip,blocks", [("TPU v5 lite", SelectiveScanTPUBlocks(block_l=128)), ("TPU v6 lite", None)],
                         ids=["v5e-128x128", "v6e-default-256x512"])
def test_kernels_lower_to_mosaic(chip, blocks, monkeypatch):
    """Forward and backward lower to Mosaic TPU custom calls for a real chip (bf16, every option,
    several sequence blocks and channel tiles; 128 x 128 tiles and the default 256 x 512): the
    Python half of TPU compilation, which checks block shapes against the (8, 128) tiling and every
    op against Mosaic's lowering rules. The layout passes run in libtpu, on a TPU."""
    from jax._src import mesh as mesh_lib

    monkeypatch.setattr(tpu_common, "interpret_params", lambda: False)
    S = jax.ShapeDtypeStruct
    b, l, d, n = 2, 600, 1024, 16
    shapes = dict(x=S((b, l, d), jnp.bfloat16), dt=S((b, l, d), jnp.bfloat16), A=S((d, n), jnp.float32),
                  B=S((b, l, 1, n), jnp.bfloat16), C=S((b, l, 1, n), jnp.bfloat16), D=S((d,), jnp.float32),
                  z=S((b, l, d), jnp.bfloat16), dt_bias=S((d,), jnp.float32), initial_state=S((b, d, n), jnp.float32),
                  segment_ids=S((b, l), jnp.int32))

    def loss(a, seg):
        y, h = api_tpu.selective_scan(**a, segment_ids=seg, dt_softplus=True, return_final_state=True, blocks=blocks)
        return jnp.sum(y.astype(jnp.float32)) + jnp.sum(h)

    def grads(a, seg):
        return jax.grad(loss)(a, seg)

    device = mesh_lib.AbstractDevice(chip, 1, "tpu")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=device)):
        seg = shapes.pop("segment_ids")
        exported = jax.export.export(jax.jit(grads), platforms=["tpu"])(shapes, seg)
    text = exported.mlir_module()
    assert text.count("tpu_custom_call") == 2  # forward (saving block states) and backward
