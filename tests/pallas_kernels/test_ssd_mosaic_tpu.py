"""The Mosaic TPU SSD kernels (pallas_kernels/ssd, impl="pallas_tpu").

Every kernel test runs in TPU interpret mode with the race detector on, two simulated
TensorCores and NaN-filled fresh memory (``tests/pallas_kernels/tpu_interpret.py``): a race, a
read of memory the kernels never wrote, or an out-of-bounds read fails it. The contract runs at
``l = 140`` -- two kernel chunks of 128, the second mostly padding -- with four heads of ``p = 3``
in one head block spanning both groups; a second shape has ``p = 64`` (two heads per 128-lane
block, one group per block). Interpret mode costs seconds per compiled kernel, so part of the
contract is ``slow`` here.

On a TPU backend the same tests compile the kernels with Mosaic.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import tpu_common
from pallas_kernels.ssd import api_tpu, blocks_tpu
from pallas_kernels.ssd.blocks_tpu import SSDTPUBlocks
from ssm_jax.ops.ssd import REGISTRY, canonicalize, ssd
from tests.ops.test_ssd import SSDContract, make_inputs, values_and_grads
from tests.pallas_kernels.tpu_interpret import ON_TPU, global_x64, pallas_tpu_backends, slow_off_tpu, slow_off_tpu_inherited

pytestmark = pallas_tpu_backends


# Slow off TPU: every gradient, initial/final state included, is test_gradients_all_options;
# bfloat16 in CI is test_bf16_two_heads_per_block_one_group_each.
@slow_off_tpu_inherited("test_chaining_halves_and_gradients", "test_segments_equal_per_segment_runs",
                        "test_jit_and_vmap", "test_bf16_inputs")
@pytest.mark.usefixtures("strict")
class TestSSDMosaicTPU(SSDContract):
    impl = "pallas_tpu"
    dims = dict(b=2, l=140, h=4, p=3, g=2, n=5)
    chunk_sizes = (5, 256)  # the kernels' chunk is their own: the result must not depend on it
    default_chunk = 64
    tol = 2e-5
    grad_tol = 1e-4

    @pytest.mark.parametrize(
        "options",
        [(), ("all",)] + [pytest.param(o, marks=slow_off_tpu)
                          for o in (("D_head", "z", "flat_bc", "dt_bias"), ("initial_state",), ("segment_ids",))],
        ids=lambda o: "+".join(o) or "plain",
    )
    def test_matches_oracle(self, rng, options):
        super().test_matches_oracle(rng, options)

    def test_gradients_finite_differences_float64(self, rng):
        # float64 runs in interpret mode only (why_not refuses it on a TPU): the kernels' own
        # backward against central differences of their own forward.
        with global_x64():
            super().test_gradients_finite_differences_float64(rng)


def kernel(blocks=None):
    """impl="pallas_tpu", or the kernels with an explicit tiling, with :func:`ssd`'s signature."""
    if blocks is None:
        return functools.partial(ssd, impl="pallas_tpu")
    return lambda **kw: api_tpu.ssd(**canonicalize(**kw), blocks=blocks)


@pytest.mark.usefixtures("strict")
def test_bf16_two_heads_per_block_one_group_each(rng):
    """bf16 (bf16 MXU operands), p = 64: two heads fill a 128-lane block, so the four heads run
    as two head blocks, each reading only its own group of B/C; l = 300 = three chunks of 128,
    segments crossing chunk boundaries; every option, values and every gradient."""
    dims = dict(b=1, l=300, h=4, p=64, g=2, n=16)
    values_and_grads(rng, dims, kernel(), dtype=jnp.bfloat16, tol=2e-2, grad_tol=3e-2)


@slow_off_tpu
@pytest.mark.usefixtures("strict")
def test_fp16_and_chunk_256(rng):
    """fp16 inputs (float32 MXU operands: v5e's MXU has no fp16), chunk 256, n = 128."""
    dims = dict(b=1, l=300, h=2, p=64, g=1, n=128)
    values_and_grads(rng, dims, kernel(SSDTPUBlocks(chunk=256)), dtype=np.float16, tol=4e-3, grad_tol=1e-2)


# --------------------------------------------------------------------------------------------
# Registry, tiling, lowering (sharded calls: tests/pallas_kernels/test_sharding.py)
# --------------------------------------------------------------------------------------------


def test_why_not_and_registry(rng):
    kw = make_inputs(rng, b=1, l=4, h=4, p=64, g=1, n=16, options=())
    ctx = {**canonicalize(**kw), "backend": "gpu"}
    assert re.search(r"runs on TPUs .* backend is 'gpu'", api_tpu.why_not(ctx))
    assert api_tpu.why_not({**ctx, "backend": "tpu"}) is None
    assert REGISTRY["pallas_tpu"].auto_backends == ("tpu",)
    name, _ = REGISTRY.resolve("auto", canonicalize(**kw))
    assert (name == "pallas_tpu") == ON_TPU
    reason = api_tpu.why_not({**ctx, "backend": "tpu"}, SSDTPUBlocks(heads_per_block=3))
    assert "heads_per_block=3 must divide h // g = 4" in reason
    with jax.enable_x64(True):
        kw64 = {k: (np.asarray(v, np.float64) if getattr(v, "dtype", None) == np.float32 else v) for k, v in kw.items()}
        assert "float64" in api_tpu.why_not({**canonicalize(**kw64), "backend": "tpu"})
    if not ON_TPU:
        with pytest.raises(ValueError, match="'pallas' has no target on backend 'cpu'"):
            ssd(**kw, impl="pallas")


def test_tiling_rules():
    assert blocks_tpu.choose_heads_per_block(h=64, g=1, p=64) == 4  # Mamba-2: four heads, 256 lanes
    assert blocks_tpu.choose_heads_per_block(h=8, g=2, p=128) == 2
    assert blocks_tpu.choose_heads_per_block(h=4, g=2, p=64) == 2  # a group holds only two heads
    assert blocks_tpu.choose_heads_per_block(h=4, g=2, p=3) == 4  # no 128-lane multiple: all heads
    assert blocks_tpu.choose_heads_per_block(h=8, g=4, p=64, requested=4) is None  # spans groups
    # The Mamba-2 benchmark shape fits the budget at the default tiling, with room on every chip.
    need = blocks_tpu.backward_vmem_bytes(128, 4, 64, 128, 1)
    assert need < tpu_common.MAX_VMEM_LIMIT
    for chip in (pltpu.ChipVersion.TPU_V5E, pltpu.ChipVersion.TPU_V5P, pltpu.ChipVersion.TPU_V6E):
        assert tpu_common.MAX_VMEM_LIMIT <= pltpu.get_tpu_info_for_chip(chip, 1).vmem_capacity_bytes // 1.3


@pytest.mark.parametrize("chip", ["TPU v5 lite", "TPU v6 lite"])
def test_kernels_lower_to_mosaic(chip, monkeypatch):
    """Forward and backward lower to Mosaic TPU custom calls for a real chip (bf16, every option,
    Mamba-2's p = 64 and n = 128, three chunks): the Python half of TPU compilation, which checks
    block shapes against the (8, 128) tiling and every op against Mosaic's lowering rules. The
    layout passes run in libtpu, on a TPU."""
    from jax._src import mesh as mesh_lib

    monkeypatch.setattr(tpu_common, "interpret_params", lambda: False)
    S = jax.ShapeDtypeStruct
    b, l, h, p, g, n = 2, 300, 4, 64, 1, 128
    shapes = dict(x=S((b, l, h, p), jnp.bfloat16), dt=S((b, l, h), jnp.bfloat16), A=S((h,), jnp.float32),
                  B=S((b, l, g, n), jnp.bfloat16), C=S((b, l, g, n), jnp.bfloat16), D=S((h, p), jnp.float32),
                  z=S((b, l, h, p), jnp.bfloat16), dt_bias=S((h,), jnp.float32),
                  initial_state=S((b, h, p, n), jnp.float32))

    def loss(a, seg):
        y, f = api_tpu.ssd(**a, segment_ids=seg, dt_softplus=True, return_final_state=True)
        return jnp.sum(y.astype(jnp.float32)) + jnp.sum(f)

    device = mesh_lib.AbstractDevice(chip, 1, "tpu")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=device)):
        exported = jax.export.export(jax.jit(jax.grad(loss)), platforms=["tpu"])(shapes, S((b, l), jnp.int32))
    assert exported.mlir_module().count("tpu_custom_call") == 2  # forward (saving states) and backward
