"""Parameters of the short depthwise convolution inside Mamba, Mamba-2 and Hydra blocks.

The computation is :func:`ssm_jax.ops.conv.causal_conv1d` (Mamba, Mamba-2) or
:func:`ssm_jax.ops.conv.conv1d` (Hydra's centred convolution); this module only holds
``weight (d, k)`` — PyTorch's depthwise ``Conv1d.weight (d, 1, k)`` squeezed — and ``bias (d,)``.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from ssm_jax.nn.params import fan_in_uniform, param

__all__ = ["ShortConv"]


class ShortConv(nnx.Module):
    """``weight (d, k)`` (logical ``("inner", "conv")``) and optional ``bias (d,)``.

    Initialized as PyTorch's ``Conv1d`` (uniform in ``±1/sqrt(k)``, fan-in of a depthwise filter).
    """

    def __init__(self, channels: int, width: int, *, use_bias: bool = True, rngs: nnx.Rngs):
        self.channels = channels
        self.width = width
        self.weight = param(fan_in_uniform(rngs.params(), (channels, width), width), ("inner", "conv"))
        self.bias = param(fan_in_uniform(rngs.params(), (channels,), width), ("inner",)) if use_bias else None

    def bias_value(self):
        return None if self.bias is None else self.bias[...]

    def zeros_state(self, batch_size: int, dtype) -> jnp.ndarray:
        """The conv state before the first step: ``(b, d, k-1)`` zeros (the previous k-1 inputs)."""
        return jnp.zeros((batch_size, self.channels, self.width - 1), dtype)
