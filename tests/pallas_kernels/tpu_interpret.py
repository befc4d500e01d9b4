"""TPU interpret mode for the Mosaic TPU kernel tests: race detection, NaN-filled memory, a proof
that the kernels ran.

:func:`strict_interpret` runs its body under ``pltpu.force_tpu_interpret_mode`` with

* ``detect_races=True`` and two simulated TensorCores (``num_cores_or_threads=2``): the grid's
  "parallel" dimensions are split between two threads, so a kernel whose parallel steps touch the
  same memory (or whose "arbitrary" carry leaks across parallel steps) is reported;
* ``uninitialized_memory="nan"``: every VMEM scratch buffer and output starts as NaN, so a read of
  memory the kernel never wrote turns the result into NaN, which ``assert_close`` rejects;
* out-of-bounds reads raise (the default).

jax 0.11.2 keeps the race detector's state in a module global that each ``pallas_call`` replaces
when it starts; :func:`strict_interpret` records every instance so the verdict covers every kernel
the test ran, forward and backward, and fails if a race was seen -- or if no kernel ran at all.
On a TPU backend it does nothing: the kernels compile with Mosaic there.

Both kernel families' test modules share the rest: :data:`pallas_tpu_backends` (their module
mark), :data:`slow_off_tpu` and :func:`slow_off_tpu_inherited` (interpret mode costs seconds per
kernel, so part of each op's contract is ``slow`` off a TPU), and the ``strict`` fixture
(``tests/pallas_kernels/conftest.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import pytest
from jax._src.pallas.mosaic.interpret import interpret_pallas_call as _ipc  # jax 0.11.2 internals
from jax.experimental.pallas import tpu as pltpu

STRICT = pltpu.InterpretParams(detect_races=True, num_cores_or_threads=2, uninitialized_memory="nan")
# One simulated TensorCore, for multi-device runs: per-core threads that compile and run nested
# XLA computations inside a callback deadlock across simulated CPU devices (jax 0.11.2).
STRICT_1 = dataclasses.replace(STRICT, num_cores_or_threads=1)

ON_TPU = jax.default_backend() == "tpu"
# Mosaic TPU kernels run compiled on a TPU and in TPU interpret mode on the CPU backend only; on a
# GPU backend `pallas_tpu` refuses (tested in test_why_not_*), so a module has nothing to run.
pallas_tpu_backends = pytest.mark.skipif(
    jax.default_backend() not in ("cpu", "tpu"), reason="pallas_tpu runs on a TPU or in interpret mode on CPU"
)
slow_off_tpu = pytest.mark.slow if not ON_TPU else (lambda f: f)


def mark_inherited(mark, *names: str):
    """Class decorator: the named tests the class inherits (from an op's contract) get ``mark``
    (e.g. ``slow`` off the kernel's backend); the contract's own class keeps them as they are."""

    def decorate(cls):
        for name in names:
            inherited = getattr(cls, name)

            @functools.wraps(inherited)
            def test(self, *args, _inherited=inherited, **kwargs):
                return _inherited(self, *args, **kwargs)

            setattr(cls, name, mark(test))
        return cls

    return decorate


def slow_off_tpu_inherited(*names: str):
    """:func:`mark_inherited` with :data:`slow_off_tpu`."""
    return mark_inherited(slow_off_tpu, *names)


@contextlib.contextmanager
def global_x64():
    """Turn on float64 process-wide for the duration. ``jax.enable_x64`` is thread-local, and
    TPU interpret mode (jax 0.11.2) moves values through callbacks on XLA's threads, where it
    does not reach: float64 buffers come back float32."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@contextlib.contextmanager
def strict_interpret(params: pltpu.InterpretParams = STRICT, *, expect_kernels: bool = True):
    if jax.default_backend() == "tpu":
        yield []  # on a TPU the tests compile the kernels with Mosaic instead
        return
    seen: list = []
    base = _ipc.RaceDetectionState

    class Recorded(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self)

    _ipc.RaceDetectionState = Recorded
    try:
        with pltpu.force_tpu_interpret_mode(params):
            yield seen
    except BaseException:
        # After a failure inside a kernel the interpreter keeps its simulated memory for
        # inspection; the next test needs it cleared.
        pltpu.reset_tpu_interpret_mode_state()
        raise
    finally:
        _ipc.RaceDetectionState = base
    if expect_kernels:
        assert seen, "no Pallas TPU kernel ran in interpret mode"
    races = sum(s.races_found for s in seen)
    assert not races, f"the race detector reported races in {races} of {len(seen)} kernel runs"
