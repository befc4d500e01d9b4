"""Hydra on the SSD kernels (``impl="pallas_gpu"`` / ``"pallas_tpu"``): two SSD directions as one
kernel call over a doubled batch, run through the op's :class:`HydraContract`.

On CPU the kernels run in interpret mode -- Mosaic GPU's, and Mosaic TPU's under the strict
interpreter (races, unwritten memory; ``tests/pallas_kernels/tpu_interpret.py``). Interpret mode
costs seconds per kernel, so off the kernels' own backend ``make test`` runs the Hydra-specific
paths (segments, whose flipped half restarts per segment, and every gradient) and the rest of the
contract is ``slow``; the SSD kernel tests cover the kernels themselves.
"""

import jax
import numpy as np
import pytest

from ssm_jax.ops import ImplementationUnavailableError, hydra
from tests.ops.test_hydra import HydraContract, make_inputs
from tests.pallas_kernels.tpu_interpret import (
    global_x64,
    mark_inherited,
    pallas_tpu_backends,
    slow_off_tpu,
    slow_off_tpu_inherited,
)

ON_GPU = jax.default_backend() == "gpu"
slow_off_gpu = pytest.mark.slow if not ON_GPU else (lambda f: f)
MATCHES_ORACLE_IN_CI = ("segment_ids",)


def variants(slow):
    """test_matches_oracle's variants, those not in MATCHES_ORACLE_IN_CI marked ``slow``."""
    return [v if v in MATCHES_ORACLE_IN_CI else pytest.param(v, marks=slow) for v in ("plain", "D_channel", "g1", "segment_ids")]


@mark_inherited(slow_off_gpu, "test_chunk_sizes", "test_segments_equal_per_segment_runs", "test_bf16_inputs",
                "test_jit_and_vmap")
@pytest.mark.skipif(jax.default_backend() not in ("cpu", "gpu"), reason="pallas_gpu runs on a GPU or in interpret mode on CPU")
class TestHydraPallasGPU(HydraContract):
    impl = "pallas_gpu"
    # l = 70: two 64-step kernel chunks, the second mostly padding; p = 16 and n = 16 run
    # zero-padded to the kernel's tiles.
    dims = dict(b=2, l=70, h=2, p=16, g=2, n=16)
    chunk_sizes = (64, 7)  # the kernel's result does not depend on chunk_size
    # bf16 tensor-core operands, fp32 accumulation (tests/pallas_kernels/test_ssd_mosaic_gpu.py)
    tol = 2e-2
    grad_tol = 3e-2

    @pytest.mark.parametrize("variant", variants(slow_off_gpu))
    def test_matches_oracle(self, rng, variant):
        super().test_matches_oracle(rng, variant)

    @pytest.mark.parametrize("p", [16, pytest.param(64, marks=slow_off_gpu)])  # zero-padded to 64 columns; a whole tile
    def test_gradients_match_reference(self, rng, p):
        self.dims = {**self.dims, "p": p}
        super().test_gradients_match_reference(rng)

    def test_gradients_finite_differences_float64(self, rng):
        """float64 is outside the kernel's domain: an explicit request says so (the kernel's
        gradients are checked against impl="matrix" in test_gradients_match_reference)."""
        with jax.enable_x64(True):
            kw = make_inputs(rng, b=1, l=5, h=2, p=16, g=1, n=16, dtype=np.float64)
            with pytest.raises(ImplementationUnavailableError, match=r"has dtype float64"):
                hydra(**kw, impl=self.impl)


@slow_off_tpu_inherited("test_chunk_sizes", "test_segments_equal_per_segment_runs", "test_bf16_inputs", "test_jit_and_vmap")
@pallas_tpu_backends
@pytest.mark.usefixtures("strict")
class TestHydraPallasTPU(HydraContract):
    impl = "pallas_tpu"
    # l = 140: two 128-step kernel chunks, the second mostly padding; p = 64: two heads per
    # 128-lane block, each head its own group of B/C.
    dims = dict(b=2, l=140, h=2, p=64, g=2, n=16)
    chunk_sizes = (5, 256)  # the kernels' chunk is their own

    @pytest.mark.parametrize("variant", variants(slow_off_tpu))
    def test_matches_oracle(self, rng, variant):
        super().test_matches_oracle(rng, variant)

    @slow_off_tpu
    def test_gradients_finite_differences_float64(self, rng):
        # float64 runs in interpret mode only: the kernels' own backward against central
        # differences of their own forward.
        with global_x64():
            super().test_gradients_finite_differences_float64(rng)


def test_hydra_kernel_refusal_names_the_constraint(rng):
    kw = make_inputs(rng, b=1, l=8, h=2, p=64, g=1, n=512)
    with pytest.raises(ImplementationUnavailableError, match="state size n must be at most 256"):
        hydra(**kw, impl="pallas_gpu")
