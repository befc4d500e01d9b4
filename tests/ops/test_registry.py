"""The implementation registry: auto selection, explicit requests, aliases, errors."""

import logging

import jax
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
