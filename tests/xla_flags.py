"""XLA flags for the test processes (this one, and the subprocesses tests start).

The suite's programs are small, so most of its time goes to compiling them, and most of a CPU
compile to LLVM's optimization passes. Tests check results, not speed, and these flags change
neither the operations nor their order (no fast-math: LLVM keeps IEEE semantics at -O0), only
how fast the generated code runs: ~20% less wall time for the suite on 2 cores.
"""

from __future__ import annotations

import os

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def flags(devices: int | None = None) -> str:
    """This process's ``XLA_FLAGS`` (the fast-compile flags included), with ``devices`` simulated
    host devices if given: the value for a subprocess's environment."""
    out = os.environ.get("XLA_FLAGS", "")
    if devices is not None:
        out += f" --xla_force_host_platform_device_count={devices}"
    return out.strip()


def use_fast_compile() -> None:
    """Add :data:`FAST_COMPILE` to this process's ``XLA_FLAGS`` (before JAX starts its backend),
    unless the caller set an optimization level of their own."""
    current = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in current:
        os.environ["XLA_FLAGS"] = f"{current} {FAST_COMPILE}".strip()
