"""Fixtures of the kernel tests."""

from __future__ import annotations

import pytest

from tests.pallas_kernels.tpu_interpret import strict_interpret


@pytest.fixture
def strict():
    """Run the test under strict TPU interpret mode; fail on a race or if no kernel ran."""
    with strict_interpret():
        yield
