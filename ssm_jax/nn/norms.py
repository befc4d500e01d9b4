"""RMSNorm, LayerNorm, a padding-aware BatchNorm and the gated RMSNorm of Mamba-2 / Hydra.

Statistics are computed in float32 (or float64 for float64 inputs), whatever the compute dtype.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ssm_jax.nn.params import canonical_dtype, param

__all__ = ["BatchNorm", "GatedRMSNorm", "LayerNorm", "RMSNorm"]


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


class LayerNorm(nnx.Module):
    """``y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias`` over the last axis (Ba et al.,
    2016), with the biased variance, as PyTorch's ``nn.LayerNorm``.

    ``x (..., dim)`` -> ``y (..., dim)`` in ``dtype``; ``weight (dim,)`` ones, ``bias (dim,)`` zeros.
    """

    def __init__(self, dim: int, *, eps: float = 1e-5, names: Sequence[str | None] = ("embed",), dtype="float32"):
        self.dim = dim
        self.eps = eps
        self.dtype = canonical_dtype("LayerNorm", dtype)
        self.weight = param(jnp.ones((dim,), jnp.float32), names)
        self.bias = param(jnp.zeros((dim,), jnp.float32), names)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(_stat_dtype(x))
        centered = x - jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(centered), axis=-1, keepdims=True)
        y = centered * jax.lax.rsqrt(var + self.eps) * self.weight[...] + self.bias[...]
        return y.astype(self.dtype)


class BatchNorm(nnx.Module):
    """Batch normalization (Ioffe & Szegedy, 2015) over every axis but the last, blind to padding.

    ``x (..., dim)``, e.g. ``(b, l, e)``; ``mask`` of shape ``x.shape[:-1]`` (True = valid, e.g. the
    classifier's ``(b, l)``) leaves the padded positions out of the statistics; ``None``: all valid.

    * Train mode (``use_running_average=False``; nnx's ``model.train()``): ``x`` is normalized
      with the mean and biased variance of its valid positions, and the running averages move
      toward them, ``r <- momentum * r + (1 - momentum) * s``, the variance made unbiased by
      ``n / (n - 1)`` over the ``n`` valid positions (PyTorch ``BatchNorm1d``'s rule; its
      ``momentum=0.1`` is our ``momentum=0.9``, the weight of the old value as in
      ``nnx.BatchNorm``). A batch with no valid position leaves them unchanged.
    * Eval mode (``use_running_average=True``; ``model.eval()``): normalized with the running
      averages, a fixed affine map per channel, so no position depends on another.

    Not ``nnx.BatchNorm`` (flax 0.12.10), though it takes a ``mask`` too: there a batch without
    valid positions averages to NaN, the running variance is the biased one, the default variance
    is the one-pass ``E[x²] - E[x]²`` and the parameters carry no logical axis names. This module
    keeps its switch (``use_running_average`` attribute and call argument, ``nnx.view``) and its
    variable names ``mean``, ``var`` (``nnx.BatchStat``, float32).

    ============ ====== =========================================
    weight       (dim,) ``nnx.Param``, ones
    bias         (dim,) ``nnx.Param``, zeros
    mean, var    (dim,) ``nnx.BatchStat`` running averages (0, 1)
    ============ ====== =========================================
    """

    def __init__(
        self,
        dim: int,
        *,
        eps: float = 1e-5,
        momentum: float = 0.9,
        names: Sequence[str | None] = ("embed",),
        dtype="float32",
        use_running_average: bool = False,
    ):
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"BatchNorm: `momentum` must be a float in [0, 1); got {momentum!r}")
        if not isinstance(use_running_average, bool):
            raise TypeError(f"BatchNorm: `use_running_average` must be a bool; got {use_running_average!r}")
        self.dim = dim
        self.eps = eps
        self.momentum = float(momentum)
        self.dtype = canonical_dtype("BatchNorm", dtype)
        self.use_running_average = use_running_average
        self.weight = param(jnp.ones((dim,), jnp.float32), names)
        self.bias = param(jnp.zeros((dim,), jnp.float32), names)
        # No logical names: the statistics are per-channel vectors every device keeps whole.
        self.mean = nnx.BatchStat(jnp.zeros((dim,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((dim,), jnp.float32))

    def set_view(self, use_running_average: bool | None = None):
        """``nnx.view(model, use_running_average=...)``."""
        if use_running_average is not None:
            self.use_running_average = use_running_average

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None, use_running_average: bool | None = None) -> jax.Array:
        """``x (..., dim)`` -> ``y (..., dim)`` in ``dtype``; updates ``mean``/``var`` in train mode."""
        if x.ndim < 2 or x.shape[-1] != self.dim:
            raise ValueError(f"BatchNorm: `x` must have shape (..., {self.dim}) with at least one axis to average "
                             f"over; got {x.shape}")
        if mask is not None and tuple(mask.shape) != tuple(x.shape[:-1]):
            raise ValueError(f"BatchNorm: `mask` must have shape x.shape[:-1] = {tuple(x.shape[:-1])}; got {tuple(mask.shape)}")
        running = self.use_running_average if use_running_average is None else use_running_average
        x = x.astype(_stat_dtype(x))
        if running:
            mean, var = self.mean[...].astype(x.dtype), self.var[...].astype(x.dtype)
        else:
            mean, var, n = _masked_moments(x, mask)
            unbiased = var * (n / jnp.maximum(n - 1.0, 1.0))
            m, seen = self.momentum, n > 0
            # The averages are statistics, not functions to differentiate (the loss sees the batch's own).
            new_mean = jnp.where(seen, m * self.mean[...] + (1.0 - m) * mean, self.mean[...])
            new_var = jnp.where(seen, m * self.var[...] + (1.0 - m) * unbiased, self.var[...])
            self.mean[...] = jax.lax.stop_gradient(new_mean.astype(jnp.float32))
            self.var[...] = jax.lax.stop_gradient(new_var.astype(jnp.float32))
        y = (x - mean) * jax.lax.rsqrt(var + self.eps) * self.weight[...] + self.bias[...]
        return y.astype(self.dtype)


def _masked_moments(x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-channel ``(mean (dim,), biased var (dim,), n ())`` over the valid positions of ``x (..., dim)``.

    Two passes (mean, then the mean square deviation) rather than ``E[x²] - E[x]²``, which
    cancels catastrophically when ``|mean| >> std``. Padded positions are selected away, not
    multiplied by zero, so a NaN or inf there cannot reach the statistics.
    """
    axes = tuple(range(x.ndim - 1))
    if mask is None:
        n = jnp.asarray(math.prod(x.shape[:-1]), x.dtype)
        mean = jnp.mean(x, axis=axes)
        return mean, jnp.mean(jnp.square(x - mean), axis=axes), n
    valid = mask.astype(bool)[..., None]
    n = jnp.sum(valid, dtype=x.dtype)
    denom = jnp.maximum(n, 1.0)
    mean = jnp.sum(jnp.where(valid, x, 0.0), axis=axes) / denom
    var = jnp.sum(jnp.where(valid, jnp.square(x - mean), 0.0), axis=axes) / denom
    return mean, var, n


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
