"""Shared pytest setup: markers for accelerator-only tests, deterministic RNG helpers."""

from __future__ import annotations

import zlib

from tests import xla_flags

xla_flags.use_fast_compile()  # before JAX starts its backend; subprocesses inherit it

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    backend = jax.default_backend()
    for item in items:
        if "gpu" in item.keywords and backend != "gpu":
            item.add_marker(pytest.mark.skip(reason=f"needs a GPU; backend is {backend}"))
        if "tpu" in item.keywords and backend != "tpu":
            item.add_marker(pytest.mark.skip(reason=f"needs a TPU; backend is {backend}"))


@pytest.fixture
def rng(request):
    """A NumPy Generator seeded from the test's name: fresh data per test, reproducible."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)
