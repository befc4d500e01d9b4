"""Timing helpers shared by the kernel benchmarks (``benchmarks/selective_scan.py``, ``ssd.py``)."""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

__all__ = ["fwd_bwd", "time_ms"]


def fwd_bwd(fn):
    """``(args, w) -> (Σ fn(**args)·w, grads)``: one forward and one backward per call."""

    def loss(args, w):
        return jnp.sum(fn(**args).astype(jnp.float32) * w)

    return jax.value_and_grad(loss)


def time_ms(f, *args, reps=10, inner=5):
    """Median over ``reps`` of the mean time of ``inner`` back-to-back calls (device-synchronized)."""
    jax.block_until_ready(f(*args))
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = None
        for _ in range(inner):
            out = f(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t) / inner * 1e3)
    return statistics.median(times), times
