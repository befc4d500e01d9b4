"""Every kernel family lowers to its chip's Mosaic custom calls on a machine without the chip.

Interpret mode, which the other kernel tests run on CPUs, never lowers a kernel to Mosaic: these
tests do, through ``pallas_kernels.target.compiled_for`` and ``benchmarks.kernel_lowering``'s
cases (forward and gradient, every option), so a change that breaks the Mosaic GPU or Mosaic TPU
lowering fails in CI. Nothing is executed. The fingerprints that compare two commits' kernels
are checked to ignore source locations and to see a change of the kernel.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks import kernel_lowering
from pallas_kernels import target
from ssm_jax import nn
from ssm_jax.ops.selective_scan import REGISTRY as SCAN_REGISTRY, canonicalize


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
@pytest.mark.parametrize("case", kernel_lowering.CASES, ids=lambda c: c.name)
def test_every_case_lowers_to_its_chips_kernels(case, platform):
    rows = {kind: kernel_lowering.fingerprint(lowered, platform)
            for kind, lowered in kernel_lowering.lower(case, platform).items()}
    (_, forward_calls), (_, gradient_calls) = rows["forward"], rows["gradient"]
    # Forward: one kernel call (Hydra's two directions share one). Gradient: the forward saving
    # its states, then the backward (once per state slice when the state is wider than its tile).
    assert forward_calls == 1, rows
    assert gradient_calls >= 2, rows


def test_fingerprints_are_deterministic_and_see_a_change():
    case = kernel_lowering.CASES[0]
    first = kernel_lowering.fingerprint(kernel_lowering.lower(case, "gpu")["forward"], "gpu")
    again = kernel_lowering.fingerprint(kernel_lowering.lower(case, "gpu")["forward"], "gpu")
    assert first == again
    gated = dataclasses.replace(case, options=("z",))
    assert kernel_lowering.fingerprint(kernel_lowering.lower(gated, "gpu")["forward"], "gpu")[0] != first[0]


def test_kernel_text_has_no_source_locations():
    lowered = kernel_lowering.lower(kernel_lowering.CASES[4], "gpu")["forward"]
    (call,) = kernel_lowering._custom_calls(lowered.compiler_ir("stablehlo"), "mosaic_gpu_v2")
    bytecode = kernel_lowering._kernel_bytecode(call, "gpu")
    text = kernel_lowering._kernel_text(bytecode)
    assert "gpu.launch" in text or "gpu.func" in text or "func.func" in text
    # The source file is in the bytecode (its locations), not in the text the fingerprint hashes.
    assert b"mosaic_gpu.py" in bytecode and "mosaic_gpu.py" not in text


def test_compare_names_changed_and_missing_lowerings():
    before = {"gpu:a:forward": dict(fingerprint="1", custom_calls=1), "gpu:b:forward": dict(fingerprint="2", custom_calls=1)}
    after = {"gpu:a:forward": dict(fingerprint="1", custom_calls=1), "gpu:b:forward": dict(fingerprint="3", custom_calls=2),
             "gpu:c:forward": dict(fingerprint="4", custom_calls=1)}
    assert kernel_lowering.compare(before, after) == ["gpu:b:forward: changed (1 -> 2 kernel calls)",
                                                      "gpu:c:forward: only in after"]
    assert kernel_lowering.compare(after, after) == []


def test_compiled_for_sets_the_backend_for_its_block_only():
    default = jax.default_backend()
    assert target.backend() == default and not target.lowering_only()
    with target.compiled_for("tpu") as lowering_platform:
        assert lowering_platform == "tpu" and target.backend() == "tpu"
        with target.compiled_for("gpu") as inner:
            assert inner == "cuda" and target.backend() == "gpu"
        assert target.backend() == "tpu"
    assert target.backend() == default
    with pytest.raises(ValueError, match="platform must be one of"):
        with target.compiled_for("cuda"):
            pass


def test_auto_picks_what_the_chip_would():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 64, 128)), jnp.bfloat16)
    A = -jnp.ones((128, 16), jnp.float32)
    B = jnp.asarray(rng.standard_normal((2, 64, 16)), jnp.bfloat16)
    args = canonicalize(x, x, A, B, B)
    with target.compiled_for("gpu"):
        assert SCAN_REGISTRY.resolve("auto", args)[0] == "pallas_gpu"
    with target.compiled_for("tpu"):
        assert SCAN_REGISTRY.resolve("auto", args)[0] == "pallas_tpu"
    assert SCAN_REGISTRY.resolve("auto", args)[0] == "xla"  # the CPU's own choice, outside


def test_a_layer_lowers_with_the_kernels_auto_picks_for_a_gpu():
    # bf16 compute: auto keeps float32 SSD inputs on the exact XLA path (the kernel multiplies in bf16).
    layer = nn.Mamba2(64, nn.Mamba2Config(d_state=64, headdim=64, chunk_size=64), dtype="bfloat16", rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(layer)
    x = jax.ShapeDtypeStruct((2, 128, 64), jnp.bfloat16)

    def loss(params, x):
        return jnp.sum(nnx.merge(graphdef, params)(x).astype(jnp.float32))

    with target.compiled_for("gpu") as lowering_platform:
        text = jax.jit(jax.grad(loss)).trace(params, x).lower(lowering_platforms=(lowering_platform,)).as_text()
    assert text.count("@mosaic_gpu_v2") >= 2
