"""XLA flags that must be in ``XLA_FLAGS`` before JAX starts a backend (XLA reads them once).

Every command-line entry point that trains (``experiments.run``, ``benchmarks.lra``,
``benchmarks.train``, ``benchmarks.decode``) calls :func:`set_cpu_fft_flag` first thing;
a caller training in-process sets ``XLA_FLAGS`` itself before importing jax.
"""

from __future__ import annotations

import os

__all__ = ["CPU_FFT_FLAG", "set_cpu_fft_flag", "with_flag", "xla_flags_without_cpu_fft_deadlock"]

# jaxlib 0.11.2's CPU FFT (ducc0) fans out into the XLA intra-op thread pool it is running on: two
# FFTs executing at once (S4/S4D's FFT convolutions, forward and backward) can hold every worker
# while each waits for the other's tasks, forever -- the ListOps S4D config hung at its first step
# on a 2-core CPU. Single-threaded Eigen on the CPU backend avoids it (~10% slower CPU tests);
# accelerators are unaffected. A setting of the flag in XLA_FLAGS is kept.
CPU_FFT_FLAG = "--xla_cpu_multi_thread_eigen=false"


def with_flag(xla_flags: str, flag: str) -> str:
    """``xla_flags`` with ``flag`` (``--name=value``) added, unless it already sets ``name``."""
    name = flag.lstrip("-").split("=")[0]
    return xla_flags if name in xla_flags else f"{xla_flags} {flag}".strip()


def xla_flags_without_cpu_fft_deadlock(xla_flags: str) -> str:
    """``xla_flags`` with :data:`CPU_FFT_FLAG` added, unless it already sets the flag."""
    return with_flag(xla_flags, CPU_FFT_FLAG)


def set_cpu_fft_flag() -> None:
    """Add :data:`CPU_FFT_FLAG` to this process's ``XLA_FLAGS`` (call before jax starts a backend)."""
    os.environ["XLA_FLAGS"] = xla_flags_without_cpu_fft_deadlock(os.environ.get("XLA_FLAGS", ""))
