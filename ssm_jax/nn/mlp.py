"""The gated MLP placed after a mixer when ``d_intermediate > 0`` (mamba_ssm's ``GatedMLP``)."""

from __future__ import annotations

import jax
from flax import nnx

from ssm_jax.nn.linear import Dense

__all__ = ["MLP"]


class MLP(nnx.Module):
    """``fc2(y * silu(gate))`` with ``[y, gate] = fc1(x)`` (SwiGLU, Shazeer 2020).

    ====== ===================================
    x      ``(b, l, e)``
    fc1    kernel ``(e, 2 * d_intermediate)`` — first half ``y``, second half ``gate``
    fc2    kernel ``(d_intermediate, e)``
    ====== ===================================
    """

    def __init__(self, d_model: int, d_intermediate: int, *, use_bias: bool = False, dtype="float32", rngs: nnx.Rngs):
        self.d_intermediate = d_intermediate
        self.fc1 = Dense(d_model, 2 * d_intermediate, names=("embed", "mlp"), use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.fc2 = Dense(d_intermediate, d_model, names=("mlp", "embed"), use_bias=use_bias, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y, gate = jax.numpy.split(self.fc1(x), 2, axis=-1)
        return self.fc2(y * jax.nn.silu(gate))
