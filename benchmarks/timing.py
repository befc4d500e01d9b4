"""Timing helpers shared by the benchmarks: kernels (``selective_scan.py``, ``ssd.py``) and the
trainer's own step (``train.py``, ``lra.py``)."""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

__all__ = ["fwd_bwd", "time_ms", "trainer_speed"]


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


def trainer_speed(config, *, warmup: int, steps: int) -> dict:
    """Run ``experiments.train.train_and_evaluate`` on ``config`` for ``warmup + steps`` steps in a
    scratch workdir, logging twice (no evaluation, no checkpoint before the end): the first window
    holds the compilation, the second is the steady state.

    Returns ``tokens_per_sec``, ``examples_per_sec``, ``step_ms`` (steady), ``compile_s`` (the first
    window's time minus its steps at the steady rate), ``final_loss``, ``wall_s`` and, where the
    device reports it, ``peak_memory_bytes``.
    """
    import tempfile

    import ml_collections

    from experiments import train
    from experiments.metrics import read_metrics

    if warmup < 1 or steps < 1:
        raise ValueError(f"trainer_speed: warmup and steps must be >= 1; got {warmup}, {steps}")
    c = ml_collections.ConfigDict(config.to_dict())
    c.total_steps = warmup + steps
    c.log_every = warmup
    c.eval_every = c.checkpoint_every = 10**9  # neither runs before the last step ...
    c.eval.splits = ()  # ... and the last step evaluates nothing
    c.eval.extra = ml_collections.ConfigDict()
    c.steps_per_call = 1
    c.checkpoint.async_save = False
    c.checkpoint.best_metric = ""
    c.early_stop.metric = ""
    c.progress_bar = False
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        train.train_and_evaluate(c.lock(), workdir)
        wall = time.perf_counter() - t0
        rows = read_metrics(workdir, "train")
    first, steady = rows[0], rows[-1]
    step_s = 1.0 / steady["steps_per_sec"]
    out = dict(
        tokens_per_sec=steady["tokens_per_sec"],
        examples_per_sec=int(c.data.batch_size) * steady["steps_per_sec"],
        step_ms=1e3 * step_s,
        compile_s=warmup / first["steps_per_sec"] - warmup * step_s,
        final_loss=steady["loss"],
        wall_s=wall,
    )
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["peak_memory_bytes"] = int(stats["peak_bytes_in_use"])
    return out
