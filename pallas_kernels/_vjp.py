"""The ``custom_vjp`` every kernel family wraps around its forward and backward kernels.

Each forward kernel can also store what its backward restarts from (the state entering every
chunk or block); only the forward of a differentiated call pays for those stores.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax

__all__ = ["forward_saving_vjp"]


def forward_saving_vjp(run_forward: Callable, backward: Callable, *, num_static: int) -> Callable:
    """``core(*static, *operands) -> outputs``, a ``jax.custom_vjp`` over two kernels.

    ``run_forward(*static, save, *operands) -> (*outputs, saved)`` runs the forward kernel; with
    ``save`` it also returns the states the backward needs (``saved``, None otherwise). The primal
    runs it with ``save=False``; the VJP's forward with ``save=True``, keeping
    ``(operands, saved)``. ``backward(*static, (operands, saved), cotangents)`` returns one
    cotangent (or None) per operand. The first ``num_static`` arguments are static: hashable,
    not differentiated.
    """

    @functools.partial(jax.custom_vjp, nondiff_argnums=tuple(range(num_static)))
    def core(*args):
        *outputs, _ = run_forward(*args[:num_static], False, *args[num_static:])
        return tuple(outputs)

    def core_fwd(*args):
        *outputs, saved = run_forward(*args[:num_static], True, *args[num_static:])
        return tuple(outputs), (args[num_static:], saved)

    core.defvjp(core_fwd, backward)
    return core
