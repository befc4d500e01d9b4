"""impl="pallas_gpu": the Mosaic GPU selective-scan kernels (pallas_kernels/selective_scan).

On CPU every test runs the kernels in Mosaic GPU interpret mode; tests marked ``gpu`` compile them
for the chip. :class:`TestMosaicGPU` is the op's shared contract (values against the float64
oracle, gradients against ``impl="scan"``, every option combination); the rest covers what is
particular to the kernels: several tilings (states per thread, chunk, padding of n, channels and
length), state sizes 1..256, the backward by state slices above n = 128, and the reasons given when they
cannot run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.selective_scan import api
from pallas_kernels.selective_scan.blocks import (
    SelectiveScanBlocks,
    backward_fits,
    choose_backward_blocks,
    choose_blocks,
)
from ssm_jax.ops import ImplementationUnavailableError, selective_scan
from ssm_jax.ops.selective_scan import REGISTRY
from tests.numerics import assert_close
from tests.ops.test_selective_scan import (
    ARRAY_ARGS,
    SelectiveScanContract,
    canonical,
    kernel_op,
    make_inputs,
    oracle,
    split_kw,
    values_and_grads,
)


# Interpret mode runs one position at a time (~5 ms each on CPU, plus tracing per signature), so
# the contract costs minutes. `make test` keeps every option combination (the 16-row grid), the
# all-options gradient check (segment ids included), bfloat16 and the decay-underflow extreme; the other
# repetitions of the same kernel paths are `slow` here (the GPU run executes them compiled).
FAST_EXTREMES = ("large_dt_negative_A", "dt_underflows_log1p")


class TestMosaicGPU(SelectiveScanContract):
    impl = "pallas_gpu"
    # The 4096-position extreme case is shortened in interpret mode; test_long_sequence_on_gpu
    # runs 20000 positions on the chip.
    EXTREMES = {
        **SelectiveScanContract.EXTREMES,
        "long_sequence": dict(l=300, d=2, n=2, A_fn=lambda A: A * 1e-3),
    }

    @pytest.mark.slow
    def test_chaining_two_halves_equals_one_call(self, rng):
        super().test_chaining_two_halves_equals_one_call(rng)

    @pytest.mark.slow
    def test_jit_and_vmap(self, rng):
        super().test_jit_and_vmap(rng)

    @pytest.mark.slow
    def test_segments_equal_separate_runs(self, rng):
        super().test_segments_equal_separate_runs(rng)

    @pytest.mark.parametrize("dtype", ["bfloat16", pytest.param("float16", marks=pytest.mark.slow)])
    def test_low_precision_inputs(self, rng, dtype):
        super().test_low_precision_inputs(rng, dtype)

    @pytest.mark.parametrize(
        "case",
        [pytest.param(c, marks=() if c in FAST_EXTREMES else pytest.mark.slow) for c in sorted(SelectiveScanContract.EXTREMES)],
    )
    def test_extreme_inputs_are_finite_and_correct(self, rng, case):
        super().test_extreme_inputs_are_finite_and_correct(rng, case)

    def test_gradients_match_float64_finite_differences(self, rng):
        # The kernels compute in float32; float64 inputs are refused with the reason (their
        # float32 gradients are checked against impl="scan", itself checked by finite differences).
        args, kw = make_inputs(rng, b=1, l=5, d=4, n=2, g=2, segment_ids=False)
        with jax.enable_x64(True):
            a64 = {k: np.asarray(v, np.float64) for k, v in args.items()}
            with pytest.raises(ImplementationUnavailableError, match="float32"):
                self.op(**a64)


# --------------------------------------------------------------------------------------------
# Kernel specifics
# --------------------------------------------------------------------------------------------


# (fwd states_per_thread, fwd chunk, bwd states_per_thread) at n = 16: 8, 16 and 32 channels per
# block, one or several chunks, and a length that is not a multiple of either chunk.
TILINGS = [pytest.param((1, 32, 1), marks=pytest.mark.slow), pytest.param((2, 64, 4), marks=pytest.mark.slow), (4, 32, 2)]


@pytest.mark.parametrize("tiling", TILINGS, ids=["v1q32bv1", "v2q64bv4", "v4q32bv2"])
def test_tilings_values_and_gradients(rng, tiling):
    spt, q, spt_bwd = tiling
    b, l, d, n, g = 1, 45, 24, 16, 2  # 12 channels per group: padded to a multiple of ch
    bwd = choose_backward_blocks(b, d, g, n, states_per_thread=spt_bwd)
    fwd = choose_blocks(b, d, g, n, states_per_thread=spt, chunk=q, save_interval=bwd.chunk)
    op = kernel_op(api.selective_scan, blocks=fwd, backward_blocks=bwd)
    values_and_grads(rng, dict(b=b, l=l, d=d, n=n, g=g), op, tol=2e-5, grad_tol=1e-4)


@pytest.mark.parametrize("n", [1, pytest.param(5, marks=pytest.mark.slow), 33, pytest.param(128, marks=pytest.mark.slow), 256])
def test_state_sizes(rng, n):
    # n is padded to a power of two >= 8 with zero A, B, C; 256 is the largest state.
    args, kw = make_inputs(rng, b=1, l=9, d=2, n=n, g=None)
    y_ref, h_ref = oracle(args, kw)
    y, h = selective_scan(**args, **kw, return_final_state=True, impl="pallas_gpu")
    assert_close(y, y_ref, name="y")
    assert_close(h, h_ref, name="final_state")


@pytest.mark.parametrize("n", [64, 200])
def test_large_state_gradients(rng, n):
    # n = 64 runs the backward kernel once; n = 200 (padded to 256) once per 128-state slice.
    args, kw = make_inputs(rng, b=1, l=7, d=2, n=n, g=None)
    assert backward_fits(choose_backward_blocks(1, 2, 1, n)) == (n <= 128)
    arrays, static = split_kw(args, kw)
    w = rng.standard_normal(args["x"].shape)

    def loss(impl):
        return lambda a: (lambda y, h: jnp.sum(y * w) + jnp.sum(jnp.sin(h)))(
            *selective_scan(**a, **static, return_final_state=True, impl=impl))

    got = jax.grad(loss("pallas_gpu"))(arrays)
    ref = jax.grad(loss("scan"))(arrays)
    for k in ARRAY_ARGS:
        assert_close(got[k], ref[k], tol=1e-4, name=f"d loss / d {k}")


def test_shared_memory_counts_are_the_declared_buffers(monkeypatch):
    """forward_smem_bytes / backward_smem_bytes, which the tiling rules compare with the limits,
    are the bytes of the shared-memory buffers the kernels declare (barriers apart) at their
    widest: every input ``itemsize`` bytes, z and segment ids present. Narrower calls declare no
    more."""
    from pallas_kernels.selective_scan import blocks as blocks_mod
    from pallas_kernels.selective_scan import mosaic_gpu

    declared = []
    monkeypatch.setattr(mosaic_gpu.plgpu, "kernel", lambda body, **kw: declared.append(kw["scratch_types"]))

    def buffer_bytes(scratch):
        buffers = [t for t in scratch if not isinstance(t, mosaic_gpu.plgpu.Barrier)]
        assert len(buffers) == len(scratch) - 1
        return sum(int(np.prod(t.shape)) * jnp.dtype(t.dtype).itemsize for t in buffers)

    def problem(blk, dtype, widest):
        return mosaic_gpu.Problem(b=1, l=4 * blk.chunk, d=blk.channels, g=1, l_valid=4 * blk.chunk, blocks=blk,
                                  x_dtype=dtype, dt_dtype=dtype, z_dtype=dtype, bc_dtype=dtype, has_D=True,
                                  has_z=widest, has_bias=True, softplus=True, has_h0=True, has_keep=widest,
                                  interpret=True)

    for itemsize, dtype in ((2, "bfloat16"), (4, "float32")):
        for n, spt, chunk, unroll in ((16, 1, 64, 4), (16, 4, 32, 2), (64, 4, 16, 2), (128, 8, 16, 2), (256, 16, 16, 2)):
            blk = SelectiveScanBlocks(n=n, states_per_thread=spt, chunk=chunk, unroll=unroll, save_interval=chunk)
            mosaic_gpu.forward(problem(blk, dtype, True), save_states=True, want_final=True)
            used = blocks_mod.forward_smem_bytes(chunk, blk.channels, n, spt, unroll=unroll, itemsize=itemsize)
            assert used == buffer_bytes(declared.pop()), blk
            mosaic_gpu.forward(problem(blk, dtype, False), save_states=True, want_final=True)
            assert buffer_bytes(declared.pop()) < used
            mosaic_gpu.backward(problem(blk, dtype, True), has_dfinal=True)
            used = blocks_mod.backward_smem_bytes(blk, itemsize)
            assert used == buffer_bytes(declared.pop()), blk
            mosaic_gpu.backward(problem(blk, dtype, False), has_dfinal=True)
            assert buffer_bytes(declared.pop()) < used


@pytest.mark.parametrize("itemsize", [2, 4])
def test_forward_tiling_fits_shared_memory(itemsize):
    """choose_blocks counts the forward's shared memory for the input width (n = 256 with float32
    B, C needs 16-position chunks; 32 overflowed an H100 block)."""
    from pallas_kernels.gpu_common import SMEM_LIMIT
    from pallas_kernels.selective_scan.blocks import forward_smem_bytes

    for n in (1, 16, 64, 128, 200, 256):
        for b, d in ((1, 2), (4, 2048)):
            blk = choose_blocks(b, d, 1, n, l=4096, itemsize=itemsize)
            used = forward_smem_bytes(blk.chunk, blk.channels, blk.n, blk.states_per_thread, unroll=blk.unroll,
                                      itemsize=itemsize)
            assert used <= SMEM_LIMIT, (n, b, d, blk, used)
    assert choose_blocks(1, 2, 1, 256, itemsize=4).chunk == 16


def test_why_not_names_the_constraint():
    S = jax.ShapeDtypeStruct
    ctx = dict(x=S((1, 8, 4), jnp.float32), dt=S((1, 8, 4), jnp.float32), A=S((4, 16), jnp.float32),
               B=S((1, 8, 1, 16), jnp.float32), C=S((1, 8, 1, 16), jnp.float32), z=None)
    assert api.why_not({**ctx, "backend": "cpu"}) is None
    assert "Hopper" in api.why_not({**ctx, "backend": "tpu"})
    assert "n=300 exceeds 256" in api.why_not({**ctx, "A": S((4, 300), jnp.float32), "backend": "cpu"})
    assert "float64" in api.why_not({**ctx, "A": S((4, 16), jnp.float64), "backend": "cpu"})
    assert "int8" in api.why_not({**ctx, "x": S((1, 8, 4), jnp.int8), "backend": "cpu"})


def test_registry():
    assert "pallas_gpu" in REGISTRY.names()
    assert REGISTRY["pallas_gpu"].auto_backends == ("gpu",)
    args, _ = make_inputs(np.random.default_rng(0), l=3)
    c = canonical(args)
    if jax.default_backend() == "cpu":
        # "auto" never picks interpret mode; an explicit request runs it.
        assert REGISTRY.resolve("auto", c)[0] != "pallas_gpu"
        assert REGISTRY.resolve("pallas_gpu", c)[0] == "pallas_gpu"


# --------------------------------------------------------------------------------------------
# On the chip
# --------------------------------------------------------------------------------------------


def _gpu_case(rng, b, l, d, n, g, dtype, **flags):
    args, kw = make_inputs(rng, b=b, l=l, d=d, n=n, g=g, **flags)
    low = lambda v: jnp.asarray(v, dtype)  # noqa: E731
    args = {k: v if k == "A" else low(v) for k, v in args.items()}
    if "z" in kw:
        kw["z"] = low(kw["z"])
    return args, kw


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compiled_matches_xla_on_gpu(rng, dtype):
    # Every option at once, a length that is not a multiple of any chunk, groups, d = 384.
    args, kw = _gpu_case(rng, 2, 1000, 384, 16, 2, jnp.dtype(dtype))
    assert "segment_ids" in kw
    arrays, static = split_kw(args, kw)
    tol = 2e-5 if dtype == "float32" else 2e-2
    outs = {impl: selective_scan(**arrays, **static, return_final_state=True, impl=impl) for impl in ("pallas_gpu", "xla")}
    assert_close(outs["pallas_gpu"][0], outs["xla"][0].astype(jnp.float32), tol=tol, name="y")
    assert_close(outs["pallas_gpu"][1], outs["xla"][1], tol=2e-4, name="final_state")
    w = jnp.asarray(rng.standard_normal(args["x"].shape), jnp.float32)

    def loss(impl):
        return lambda a: (lambda y, h: jnp.sum(y.astype(jnp.float32) * w) + jnp.sum(h))(
            *selective_scan(**a, **static, return_final_state=True, impl=impl))

    got = jax.jit(jax.grad(loss("pallas_gpu")))(arrays)
    ref = jax.jit(jax.grad(loss("xla")))(arrays)
    for k in ARRAY_ARGS:
        assert_close(jnp.asarray(got[k], jnp.float32), jnp.asarray(ref[k], jnp.float32),
                     tol=1e-4 if dtype == "float32" else 3e-2, name=f"d loss / d {k}")


@pytest.mark.gpu
def test_long_sequence_on_gpu(rng):
    args, kw = _gpu_case(rng, 1, 20000, 64, 16, None, jnp.float32, segment_ids=False)
    args["A"] = args["A"] * 1e-3  # a memory of thousands of positions
    y_ref, h_ref = oracle(args, kw)
    y, h = selective_scan(**args, **kw, return_final_state=True, impl="pallas_gpu")
    assert_close(y, y_ref, tol=1e-4, name="y")
    assert_close(h, h_ref, tol=1e-4, name="final_state")


@pytest.mark.gpu
def test_auto_picks_the_kernel_on_hopper():
    args, _ = make_inputs(np.random.default_rng(0), l=3)
    if api.why_not({**canonical(args), "backend": "gpu"}) is None:
        assert REGISTRY.resolve("auto", canonical(args))[0] == "pallas_gpu"
