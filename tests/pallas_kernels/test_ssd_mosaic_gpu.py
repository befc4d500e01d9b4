"""The fused SSD Mosaic GPU kernels (pallas_kernels/ssd) against the op's contract and references.

On CPU every test runs the kernels in Mosaic GPU interpret mode (slow: small shapes, few distinct
compilations; the larger sweeps are marked ``slow``). On a Hopper GPU the same tests run the
compiled kernels, and the ``gpu``-marked ones add larger shapes.

Tolerances: the kernels feed the tensor cores 16-bit operands (fp32 inputs are rounded to bf16,
and the state enters the ``C h^T`` product and the backward as bf16), accumulating in fp32, so
fp32 inputs are checked at bf16-level tolerances.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import gpu_common
from pallas_kernels.ssd import api as ssd_api
from pallas_kernels.ssd import mosaic_gpu
from pallas_kernels.ssd.blocks import SSDBlocks
from pallas_kernels.ssd.reference import core_reference
from ssm_jax.ops.registry import ImplementationUnavailableError
from ssm_jax.ops.ssd import canonicalize, ssd
from tests.numerics import assert_close
from tests.ops.test_ssd import SSDContract, make_inputs, values_and_grads

ON_GPU = jax.default_backend() == "gpu"
slow_on_cpu = pytest.mark.slow if not ON_GPU else (lambda f: f)


class TestSSDMosaicGPU(SSDContract):
    impl = "pallas_gpu"
    # p and n at the kernel's granules; l = 70 spans two 64-step kernel chunks with padding.
    dims = dict(b=2, l=70, h=4, p=64, g=2, n=64)
    chunk_sizes = (64, 7)  # the kernel's result does not depend on chunk_size
    default_chunk = 64
    tol = 1e-2
    grad_tol = 3e-2
    low_precision_tol = {"bfloat16": 3e-2}

    @slow_on_cpu
    def test_chaining_halves_and_gradients(self, rng):
        super().test_chaining_halves_and_gradients(rng)

    def test_gradients_finite_differences_float64(self, rng):
        """float64 is outside the kernel's domain (16-bit tensor-core operands): an explicit
        request says so instead of silently computing in lower precision. Gradients are checked
        against the scan reference (test_gradients_all_options, test_chaining_halves_and_gradients)."""
        with jax.enable_x64(True):
            kw = make_inputs(rng, b=1, l=5, h=2, p=64, g=1, n=64, dtype=np.float64, options=("D",))
            with pytest.raises(ImplementationUnavailableError, match=r"has dtype float64; the kernels take float32, bfloat16, float16"):
                ssd(**kw, impl="pallas_gpu")


kernel = functools.partial(ssd, impl="pallas_gpu")


def test_head_dim_tiles_groups_and_fp16(rng):
    """p = 128 (two head-dim tiles per head, their partial dB/dC/dt sums), n = 128, two heads per
    group of B/C, fp16 operands; every option; values and gradients."""
    dims = dict(b=1, l=70, h=2, p=128, g=1, n=128)
    values_and_grads(rng, dims, kernel, dtype=np.float16, tol=4e-3, grad_tol=1e-2)


def test_state_256_backward_by_state_slices(rng):
    """n = 256: the backward kernel runs once per 128 state channels (BWD_KERNEL_MAX_N) and the
    slices' gradients are summed or concatenated; every option, every gradient."""
    assert ssd_api.BWD_KERNEL_MAX_N == 128
    dims = dict(b=1, l=70, h=2, p=64, g=1, n=256)
    values_and_grads(rng, dims, kernel, dtype=jnp.bfloat16, tol=3e-2, grad_tol=3e-2)


@pytest.mark.parametrize("nbuf", [1, 2])
def test_single_and_double_buffered_pipelines(rng, nbuf):
    """Both pipelines (1: load the next chunk after this one; 2: prefetch), forward and backward,
    every option. The shapes `auto` picks single buffering for are large (n = 256 with z in the
    forward, z in the backward), so the small shapes here force it."""
    blocks = SSDBlocks(fwd_nbuf=nbuf, bwd_nbuf=nbuf)
    op = lambda **kw: ssd_api.ssd(**canonicalize(**kw), blocks=blocks)  # noqa: E731
    values_and_grads(rng, dict(b=1, l=150, h=2, p=64, g=1, n=64), op, dtype=jnp.bfloat16, tol=3e-2, grad_tol=3e-2)


def test_kernel_equals_core_reference_on_prepared_operands(rng):
    """The forward kernel and the plain-JAX transcription of it agree on the same operands (bf16
    products vs fp32 einsums): a check of the kernel alone, independent of the preparation."""
    b, l, h, p, g, n, q = 2, 128, 2, 64, 1, 64, 64
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    dt = jax.nn.softplus(f(b, h, l) - 1.0)
    cs = jnp.cumsum((dt * -jnp.exp(f(h))[None, :, None]).reshape(b, h, l // q, q), -1).reshape(b, h, l)
    r = np.zeros((b, l), np.float32)
    r[0, 20:] = 1.0  # a reset at 20 inside chunk 0, counted from the chunk start
    r[0, 100:] = 1.0  # and one at 100 inside chunk 1
    arrays = dict(x=f(b, l, h, p).astype(jnp.bfloat16), dt=dt, cs=cs, B=f(b, l, g, n).astype(jnp.bfloat16) * 0.3,
                  C=f(b, l, g, n).astype(jnp.bfloat16) * 0.3, r=jnp.asarray(r), D=f(h, p), z=None, h0=f(b, h, p, n))
    cfg = ssd_api._Config(q=q, block_p=64, fwd_nbuf=None, bwd_nbuf=None, cdtype="bfloat16", y_dtype="float32",
                          has_seg=True, has_D=True, has_z=False, has_h0=True, want_final=True, interpret=not ON_GPU)
    y, final_state, _ = ssd_api._run_fwd(cfg, False, arrays)
    y_ref, final_ref = core_reference(q, True, jnp.float32, arrays)
    assert_close(y, y_ref, tol=1e-2, name="y")
    assert_close(final_state, final_ref, tol=1e-2, name="final_state")


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(n=512), r"state size n must be at most 256 \(tiles \(64, 128, 256\), smaller n zero-padded\); got n=512"),
        (dict(backend="tpu"), r"backend is 'tpu'"),
    ],
)
def test_why_not_names_the_constraint(rng, change, match):
    dims = dict(b=1, l=4, h=2, p=64, g=1, n=64)
    backend = change.pop("backend", "cpu")
    kw = make_inputs(rng, **{**dims, **change}, options=())
    ctx = {**canonicalize(**kw), "backend": backend}
    reason = ssd_api.why_not(ctx)
    assert reason is not None and re.search(match, reason), reason
    if backend == "cpu" and jax.default_backend() == "cpu":
        with pytest.raises(ImplementationUnavailableError, match=match):
            ssd(**kw, impl="pallas_gpu")


@pytest.mark.parametrize("p, n", [(16, 64), (48, 64), (64, 16), (16, 96)])
def test_head_dims_and_states_off_the_tile_run_zero_padded(rng, p, n):
    """p not a multiple of 64 (the synthetic configs' Mamba-2 uses 16) or n not a tile (MQAR's
    Mamba-2 uses 16): the kernels run on x, z, D, B, C and the initial state zero-padded; values
    and every gradient (the final state's included), every option."""
    values_and_grads(rng, dict(b=1, l=70, h=2, p=p, g=1, n=n), kernel, dtype=np.float16, tol=4e-3, grad_tol=1e-2)


def test_auto_leaves_untimed_padded_shapes_to_xla(rng):
    kw = make_inputs(rng, b=1, l=4, h=2, p=16, g=1, n=64, dtype=jnp.bfloat16)
    reason = ssd_api.why_not_auto(canonicalize(**kw))
    assert reason is not None and "head dim p=16 is not a multiple of 64" in reason, reason
    reason = ssd_api.why_not_auto(canonicalize(**make_inputs(rng, b=1, l=4, h=2, p=64, g=1, n=16, dtype=jnp.bfloat16)))
    assert reason is not None and "state size n=16 is not one of (64, 128, 256)" in reason, reason
    assert ssd_api.why_not_auto(canonicalize(**make_inputs(rng, b=1, l=4, h=2, p=128, g=1, n=64, dtype=jnp.bfloat16))) is None


def test_supported_shapes_pass_why_not(rng):
    for p, n in ((64, 64), (128, 128), (64, 256), (16, 64), (3, 128), (64, 16), (64, 1)):
        kw = make_inputs(rng, b=1, l=4, h=2, p=p, g=1, n=n, dtype=jnp.bfloat16, options=("all",))
        assert ssd_api.why_not({**canonicalize(**kw), "backend": "cpu"}) is None


def test_auto_uses_the_kernel_only_on_hopper_and_for_16_bit_inputs(rng):
    registry = importlib.import_module("ssm_jax.ops.ssd").REGISTRY
    bf16 = canonicalize(**make_inputs(rng, b=1, l=4, h=2, p=64, g=1, n=64, dtype=jnp.bfloat16))
    fp32 = canonicalize(**make_inputs(rng, b=1, l=4, h=2, p=64, g=1, n=64))
    hopper = jax.default_backend() == "gpu" and str(getattr(jax.devices()[0], "compute_capability", "")).startswith("9.")
    assert (registry.resolve("auto", bf16)[0] == "pallas_gpu") == hopper
    assert registry.resolve("auto", fp32)[0] != "pallas_gpu"  # its products would round float32


def test_shared_memory_count_is_the_declared_buffers(monkeypatch):
    """fwd_smem_bytes / bwd_smem_bytes, which decide double buffering, are the bytes of the
    shared-memory buffers each kernel declares (barriers apart), for every option; and the rule
    double-buffers exactly where that fits under SMEM_LIMIT."""
    declared = []
    monkeypatch.setattr(mosaic_gpu.plgpu, "kernel", lambda body, **kw: declared.append(kw["scratch_types"]) or (lambda *a: None))

    def buffer_bytes(scratch):
        buffers = [t for t in scratch.values() if not isinstance(t, mosaic_gpu.plgpu.Barrier)]
        return sum(math.prod(t.shape) * jnp.dtype(t.dtype).itemsize for t in buffers)

    common = dict(b=1, nc=2, h=2, g=1, p=64, q=64, block_p=64, interpret=True)
    for n, nbuf, dtype, seg, D, z, h0, want_final in itertools.product(
            (64, 128, 256), (1, 2), ("bfloat16", "float16"), *[(False, True)] * 5):
        fwd = mosaic_gpu.FwdSpec(**common, n=n, dtype=dtype, y_dtype="float32" if want_final else dtype, has_seg=seg,
                                 has_D=D, has_z=z, has_h0=h0, want_final=want_final, save_states=True, nbuf=nbuf)
        mosaic_gpu.ssd_fwd_call(fwd)
        assert mosaic_gpu.fwd_smem_bytes(fwd) == buffer_bytes(declared.pop()), fwd
        bwd = mosaic_gpu.BwdSpec(**common, n=n, dtype=dtype, has_seg=seg, has_D=D, has_z=z, has_h0=h0,
                                 has_dfinal=want_final, reduce_bc=False, nbuf=nbuf)
        mosaic_gpu.ssd_bwd_call(bwd)
        assert mosaic_gpu.bwd_smem_bytes(bwd) == buffer_bytes(declared.pop()), bwd
        if nbuf == 2:
            fits = mosaic_gpu.fwd_smem_bytes(fwd) <= gpu_common.SMEM_LIMIT
            assert ssd_api._buffering(fwd, None, mosaic_gpu.fwd_smem_bytes).nbuf == (2 if fits else 1)
            assert ssd_api._buffering(fwd, 2, mosaic_gpu.fwd_smem_bytes).nbuf == 2  # SSDBlocks(fwd_nbuf=2) wins
    # The double-buffered forward fits up to n = 256 (not with the fp32 state tile for h0 / the
    # final state there); the double-buffered backward up to n = 128 without z.
    spec = lambda **kw: mosaic_gpu.FwdSpec(**{**common, "n": 256, "dtype": "bfloat16", "y_dtype": "bfloat16",  # noqa: E731
                                              "has_seg": True, "has_D": True, "has_z": True, "has_h0": False,
                                              "want_final": False, "save_states": True, "nbuf": 2, **kw})
    assert mosaic_gpu.fwd_smem_bytes(spec()) <= gpu_common.SMEM_LIMIT < mosaic_gpu.fwd_smem_bytes(spec(want_final=True))
    bwd = lambda z: mosaic_gpu.BwdSpec(**{**common, "n": 128, "dtype": "bfloat16", "has_seg": True, "has_D": True,  # noqa: E731
                                          "has_z": z, "has_h0": True, "has_dfinal": True, "reduce_bc": True, "nbuf": 2})
    assert mosaic_gpu.bwd_smem_bytes(bwd(False)) <= gpu_common.SMEM_LIMIT < mosaic_gpu.bwd_smem_bytes(bwd(True))


@pytest.mark.gpu
@pytest.mark.parametrize("n", [64, 128, 256])
def test_gpu_larger_shapes_every_option(rng, n):
    """Compiled kernels at a few hundred steps, every option: y and the final state against the
    float64 oracle, every gradient against the scan reference. (Compared as arrays, not through
    a scalar loss: a sum over the 262144 mixed-sign final-state entries at n = 256 cancels, and
    its relative error amplified bf16 rounding past any sensible tolerance.)"""
    dims = dict(b=2, l=777, h=4, p=128, g=2, n=n)
    values_and_grads(rng, dims, kernel, dtype=jnp.bfloat16, tol=3e-2, grad_tol=5e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("p, n", [(16, 16), (48, 96)])
def test_gpu_zero_padded_head_dims_and_state_sizes(rng, p, n):
    """Head dims off the 64-column tile and state sizes off the 64/128/256 tiles, compiled: the
    zero-padded path (the synthetic configs' head dim 16 among them), values and every gradient."""
    values_and_grads(rng, dict(b=2, l=300, h=4, p=p, g=2, n=n), kernel, dtype=jnp.bfloat16, tol=3e-2, grad_tol=5e-2)
