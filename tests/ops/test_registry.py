"""The implementation registry: auto selection, explicit requests, aliases, errors."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.ops.registry import ImplementationUnavailableError, Registry


def _make():
    reg = Registry("toy_op_for_tests")
    reg.register("ref", lambda: "ref", auto_backends=())
    reg.register("slow", lambda: "slow", priority=0)
    reg.register("fast", lambda: "fast", priority=10, check=lambda ctx: None if ctx["n"] <= 4 else f"n={ctx['n']} > 4")
    reg.alias("pallas", {"gpu": "fast", "tpu": "fast"})
    return reg


def test_auto_prefers_priority_and_falls_back_with_one_log(caplog):
    reg = _make()
    assert reg.resolve("auto", {"n": 2})[0] == "fast"
    with caplog.at_level(logging.WARNING, logger="ssm_jax"):
        assert reg.resolve("auto", {"n": 8})[0] == "slow"
        assert reg.resolve("auto", {"n": 8})[0] == "slow"
    msgs = [r.getMessage() for r in caplog.records if "n=8 > 4" in r.getMessage()]
    assert len(msgs) == 1, msgs


def test_explicit_request_that_cannot_run_says_why():
    reg = _make()
    with pytest.raises(ImplementationUnavailableError, match="n=8 > 4"):
        reg.resolve("fast", {"n": 8})
    assert reg.resolve("ref", {"n": 8})[1]() == "ref"  # never auto-picked, but runs on request


def test_auto_check_binds_auto_only(caplog):
    """An ``auto_check`` (what auto will not trade away) skips the implementation under auto, with
    the reason logged, but an explicit request still runs it."""
    reg = Registry("toy_op_precision")
    reg.register("exact", lambda: "exact")
    reg.register("fast", lambda: "fast", priority=10,
                 auto_check=lambda ctx: "float32 would be rounded" if ctx["dtype"] == "float32" else None)
    assert reg.resolve("auto", {"dtype": "bfloat16"})[0] == "fast"
    with caplog.at_level(logging.WARNING, logger="ssm_jax"):
        assert reg.resolve("auto", {"dtype": "float32"})[0] == "exact"
    assert any("float32 would be rounded" in r.getMessage() for r in caplog.records)
    assert reg.resolve("fast", {"dtype": "float32"})[0] == "fast"


@pytest.mark.parametrize("op", ["ssd", "hydra"])
def test_auto_keeps_float32_off_the_16_bit_ssd_kernel(monkeypatch, op):
    """On a Hopper GPU, auto picks the Mosaic GPU SSD kernel for 16-bit inputs only: it rounds
    float32 operands to bfloat16 (~3e-3), so float32 goes to the exact XLA path; naming
    impl="pallas_gpu" still runs the kernel. (The GPU and its device check are simulated.)"""
    import jax.numpy as jnp

    from pallas_kernels import gpu_common
    from ssm_jax import ops
    from ssm_jax.ops import registry

    monkeypatch.setattr(registry.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(gpu_common, "backend_reason", lambda ctx: None)
    b, l, h, p, n = 1, 64, 2, 64, 64
    S = jax.ShapeDtypeStruct

    def ctx(dtype):
        if op == "ssd":
            x, dt, B = S((b, l, h, p), dtype), S((b, l, h), dtype), S((b, l, 1, n), dtype)
        else:  # hydra: (b, l, 2, ...) directions stacked
            x, dt, B = S((b, l, h, p), dtype), S((b, l, 2, h), dtype), S((b, l, 2, 1, n), dtype)
        args = dict(x=x, dt=dt, A=S((h,), jnp.float32), B=B, C=B, D=None, z=None, dt_bias=None, dt_softplus=True,
                    initial_state=None, segment_ids=None, chunk_size=64, return_final_state=False)
        if op == "hydra":
            for k in ("z", "initial_state", "return_final_state"):
                args.pop(k)
        return args

    reg = registry.get_registry(op)
    assert reg.resolve("auto", ctx(jnp.bfloat16))[0] == "pallas_gpu"
    assert reg.resolve("auto", ctx(jnp.float32))[0] == "xla"
    assert reg.resolve("pallas_gpu", ctx(jnp.float32))[0] == "pallas_gpu"
    assert "float32" in reg["pallas_gpu"].why_not_auto({**ctx(jnp.float32), "backend": "gpu"})


def test_unknown_and_non_string_impl():
    reg = _make()
    with pytest.raises(ValueError, match="unknown impl='nope'.*'auto'"):
        reg.resolve("nope", {"n": 1})
    with pytest.raises(TypeError, match="`impl` must be a string"):
        reg.resolve(3, {"n": 1})


def test_alias_resolves_by_backend():
    reg = _make()
    if jax.default_backend() in ("gpu", "tpu"):
        assert reg.resolve("pallas", {"n": 1})[0] == "fast"
    else:
        with pytest.raises(ImplementationUnavailableError, match="no target on backend"):
            reg.resolve("pallas", {"n": 1})


def test_lazy_target_is_imported_on_use():
    reg = Registry("toy_lazy_for_tests")
    reg.register("lazy", "math:sqrt")
    assert reg.resolve("lazy", {})[1](9.0) == 3.0


def test_every_op_module_has_a_public_canonicalize():
    # The canonical keyword arguments each op module's implementations receive, from one public
    # function per module (the op's signature plus `op=` for messages).
    import importlib

    s4d, s4, conv = (importlib.import_module(f"ssm_jax.ops.{m}") for m in ("s4d", "s4", "conv"))
    h, n = 3, 2
    c = s4d.canonicalize(np.zeros(h, np.float32), np.full((h, n), -0.5, np.float32))
    assert c["A"].dtype == jnp.complex64 and c["C"] is None
    np.testing.assert_array_equal(c["B"], np.ones((h, n), np.complex64))
    with pytest.raises(ValueError, match=r"^s4d_discretize: "):
        s4d.canonicalize(np.zeros(h), np.zeros((h + 1, n)), op="s4d_discretize")
    lam, P, B = (np.ones((h, n), np.complex64) for _ in range(3))
    c = s4.canonicalize(np.zeros(h, np.float32), lam, P, B)
    assert c["Q"] is c["P"] and c["C"] is None and c["log_dt"].dtype == jnp.float32
    c = conv.canonicalize(np.zeros((2, 5, h), np.float32), np.zeros((h, 4), np.float32),
                          segment_ids=np.zeros((2, 5), np.int64), activation="silu", op="conv1d")
    assert c["segment_ids"].dtype == jnp.int32 and c["bias"] is None and c["activation"] == "silu"
    with pytest.raises(ValueError, match=r"conv1d: `weight` must have shape \(d, k\) = \(3, \?\)"):
        conv.canonicalize(np.zeros((2, 5, h)), np.zeros((h, 1, 4)), op="conv1d")
