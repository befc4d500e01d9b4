"""The chip the kernels are built for: JAX's backend, or one named for lowering only.

Every choice that depends on the chip -- compiled kernel or interpret mode, which implementation
``impl="auto"`` picks (``ssm_jax.ops.registry``), the Mosaic TPU compile parameters -- reads
:func:`backend`, which is ``jax.default_backend()`` unless :func:`compiled_for` names another
platform. That lets a machine without the chip lower a call exactly as the chip would run it::

    with target.compiled_for("gpu"):
        text = jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",)).as_text()

so CI, on CPUs, checks that every kernel still lowers to its Mosaic custom call (interpret mode
does not lower them), and ``benchmarks/kernel_lowering.py`` fingerprints the lowered kernels to
show that a trace-time change left them as they were. Nothing can run under a target the
process has no device for: lower, do not call. The choice is made when a function is traced, so
lower a function that has not been traced for the other target (a fresh ``jax.jit``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax

__all__ = ["PLATFORMS", "backend", "compiled_for", "lowering_only"]

# JAX backend name -> the name `lowering_platforms=` takes for it.
PLATFORMS = {"gpu": "cuda", "tpu": "tpu", "cpu": "cpu"}

_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("pallas_kernels_target", default=None)


def backend() -> str:
    """The backend the kernels are built for: the :func:`compiled_for` target, else JAX's."""
    return _TARGET.get() or jax.default_backend()


def lowering_only() -> bool:
    """True under a :func:`compiled_for` target that is not JAX's backend: there is no such device
    to inspect (e.g. a GPU's compute capability), only code to lower."""
    target = _TARGET.get()
    return target is not None and target != jax.default_backend()


@contextlib.contextmanager
def compiled_for(platform: str) -> Iterator[str]:
    """Build the kernels for ``platform`` ("gpu", "tpu" or "cpu") inside the block; yields the
    name to pass as ``lowering_platforms=``."""
    if platform not in PLATFORMS:
        raise ValueError(f"compiled_for: platform must be one of {tuple(PLATFORMS)}; got {platform!r}")
    token = _TARGET.set(platform)
    try:
        yield PLATFORMS[platform]
    finally:
        _TARGET.reset(token)
