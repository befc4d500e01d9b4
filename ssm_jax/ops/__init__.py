"""The mixers as pure, jit-able, differentiable, vmap-able functions (channels-last).

Every op takes ``impl=`` ("auto", a named implementation, or an alias such as "pallas"),
resolved by :mod:`ssm_jax.ops.registry`. ``available_impls(op)`` lists what an op accepts.
"""

from ssm_jax.ops.registry import ImplementationUnavailableError, available_impls

__all__ = ["ImplementationUnavailableError", "available_impls"]
