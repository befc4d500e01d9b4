"""RMSNorm and the gated RMSNorm of Mamba-2 / Hydra. Statistics are computed in float32 (or
float64 for float64 inputs), whatever the compute dtype."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ssm_jax.nn.params import canonical_dtype, param

__all__ = ["RMSNorm", "GatedRMSNorm"]


def _stat_dtype(x: jax.Array) -> jnp.dtype:
    return jnp.promote_types(x.dtype, jnp.float32)


def _rms_normalize(x: jax.Array, eps: float) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


class RMSNorm(nnx.Module):
    """``y = x / sqrt(mean(x**2) + eps) * weight`` over the last axis (Zhang & Sennrich, 2019).

    ``x (..., dim)`` -> ``y (..., dim)`` in ``dtype``; ``weight (dim,)`` initialized to ones.
    """

    def __init__(self, dim: int, *, eps: float = 1e-5, names: Sequence[str | None] = ("embed",), dtype="float32"):
        self.dim = dim
        self.eps = eps
        self.dtype = canonical_dtype("RMSNorm", dtype)
        self.weight = param(jnp.ones((dim,), jnp.float32), names)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = _rms_normalize(x.astype(_stat_dtype(x)), self.eps) * self.weight[...]
        return y.astype(self.dtype)


class GatedRMSNorm(nnx.Module):
    """RMSNorm with a SiLU gate ``z``, normalized per group of ``group_size`` channels (Mamba-2 §7.3).

    ``norm_before_gate=False`` (Mamba-2): ``norm(x * silu(z)) * weight``;
    ``norm_before_gate=True``: ``norm(x) * weight * silu(z)``. With ``ngroups > 1`` the statistics
    are taken per group so that a tensor-parallel split along groups needs no communication.

    ====== ===========================
    x, z   ``(..., d)``
    weight ``(d,)``
    y      ``(..., d)`` in ``dtype``
    ====== ===========================
    """

    def __init__(
        self,
        dim: int,
        *,
        eps: float = 1e-5,
        group_size: int | None = None,
        norm_before_gate: bool = False,
        names: Sequence[str | None] = ("inner",),
        dtype="float32",
    ):
        group_size = dim if group_size is None else group_size
        if dim % group_size:
            raise ValueError(f"GatedRMSNorm: `group_size` must divide dim={dim}; got {group_size}")
        self.dim = dim
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.dtype = canonical_dtype("GatedRMSNorm", dtype)
        self.weight = param(jnp.ones((dim,), jnp.float32), names)

    def __call__(self, x: jax.Array, z: jax.Array | None = None) -> jax.Array:
        x = x.astype(_stat_dtype(x))
        if z is not None:
            gate = jax.nn.silu(z.astype(x.dtype))
            if not self.norm_before_gate:
                x = x * gate
        shape = x.shape
        x = _rms_normalize(x.reshape(*shape[:-1], shape[-1] // self.group_size, self.group_size), self.eps)
        y = x.reshape(shape) * self.weight[...]
        if z is not None and self.norm_before_gate:
            y = y * gate
        return y.astype(self.dtype)
