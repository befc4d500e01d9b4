"""Parameter types, logical axis names and the initializers the SSM papers prescribe.

Every parameter of :mod:`ssm_jax.nn` is created by :func:`param`: an fp32 ``nnx.Param`` (or
:class:`SSMParam`) whose metadata ``out_sharding`` holds one logical axis name per dimension
(``embed``, ``inner``, ``heads``, ``head_dim``, ``state``, ``vocab``, ``conv``, ``mlp``, ``kv``,
``layers`` or ``None``). :mod:`ssm_jax.parallel` maps those names to mesh axes with a rules table.

Flax 0.12 shards a Variable eagerly when it has ``out_sharding`` metadata and eager sharding is
on (the default), which fails outside a mesh and would treat our *logical* names as mesh axes
inside one. Parameters here are therefore created with ``eager_sharding=False`` (flax 0.12.10):
models build anywhere, and the trainer places them with ``jax.jit(..., out_shardings=...)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = [
    "LOGICAL_AXES",
    "SSMParam",
    "param",
    "canonical_dtype",
    "dt_bias_init",
    "A_log_init_real",
    "A_log_init_uniform",
    "inverse_softplus",
    "fan_in_uniform",
]

LOGICAL_AXES = ("embed", "inner", "heads", "head_dim", "state", "vocab", "conv", "mlp", "kv", "layers")


class SSMParam(nnx.Param):
    """An SSM-specific parameter (A / A_log, dt bias / log_dt, D, S4's B, C, P).

    A subclass of ``nnx.Param``, so ``nnx.Param`` filters still see it, while optimizers can
    select it by type to give it its own learning rate and no weight decay (S4 section 4, Mamba
    appendix E: A, dt and D are kept out of weight decay).
    """


def param(value: jax.Array, names: Sequence[str | None], *, ssm: bool = False, cls: type[nnx.Param] | None = None) -> nnx.Param:
    """An fp32 parameter carrying logical axis ``names`` (one per dimension).

    ``ssm=True`` makes it an :class:`SSMParam`; ``cls`` picks another ``nnx.Param`` subclass.
    """
    names = tuple(names)
    if len(names) != value.ndim:
        raise ValueError(f"param: `names` must have one entry per dimension of a {value.shape} array; got {names}")
    for n in names:
        if n is not None and n not in LOGICAL_AXES:
            raise ValueError(f"param: unknown logical axis {n!r}; expected one of {LOGICAL_AXES} or None")
    if value.dtype != jnp.float32:
        raise TypeError(f"param: parameters are float32; got {value.dtype}")
    cls = cls or (SSMParam if ssm else nnx.Param)
    # A weak-typed value (e.g. jnp.full(s, 0.5)) would become strong after the first optimizer
    # update, changing the state's type and recompiling a jitted train step: store it strong.
    value = jnp.asarray(value, jnp.float32)  # asarray with a dtype drops weak typing
    return cls(value, out_sharding=names, eager_sharding=False)


def canonical_dtype(name: str, dtype) -> jnp.dtype:
    """``dtype`` (a string such as "bfloat16" or a dtype) as a floating ``jnp.dtype``."""
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name}: `dtype` must be a floating dtype name such as 'float32' or 'bfloat16'; got {dtype!r}") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"{name}: `dtype` must be a floating dtype; got {dt}")
    return dt


def inverse_softplus(y: jax.Array) -> jax.Array:
    """``x`` with ``softplus(x) = y`` for ``y > 0``: ``y + log(-expm1(-y))``."""
    return y + jnp.log(-jnp.expm1(-y))


def dt_bias_init(key: jax.Array, shape: tuple[int, ...], *, dt_min: float, dt_max: float, dt_init_floor: float) -> jax.Array:
    """Bias whose softplus is ``dt`` log-uniform in ``[dt_min, dt_max]`` (Mamba section 3.6, appendix).

    ``dt`` is floored at ``dt_init_floor``; the bias is its inverse softplus, so that
    ``softplus(dt_proj(x) + bias)`` starts in the intended range.
    """
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"dt_bias_init: need 0 < dt_min <= dt_max; got dt_min={dt_min}, dt_max={dt_max}")
    u = jax.random.uniform(key, shape, jnp.float32)
    dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = jnp.maximum(dt, dt_init_floor)
    return inverse_softplus(dt).astype(jnp.float32)


def A_log_init_real(d: int, n: int) -> jax.Array:
    """S4D-Real: ``A[:, i] = -(i + 1)``, stored as ``A_log = log(-A)`` with shape ``(d, n)``.

    The Mamba paper's default (section 3.6, following S4D section 4.1).
    """
    return jnp.broadcast_to(jnp.log(jnp.arange(1, n + 1, dtype=jnp.float32)), (d, n)).astype(jnp.float32)


def A_log_init_uniform(key: jax.Array, h: int, A_init_range: tuple[float, float]) -> jax.Array:
    """Mamba-2: one scalar ``A = -a`` per head, ``a ~ U(A_init_range)``; returns ``log a``, ``(h,)``."""
    lo, hi = A_init_range
    if not 0 < lo <= hi:
        raise ValueError(f"A_log_init_uniform: `A_init_range` must satisfy 0 < lo <= hi; got {A_init_range}")
    a = jax.random.uniform(key, (h,), jnp.float32, minval=lo, maxval=hi)
    return jnp.log(a).astype(jnp.float32)


def fan_in_uniform(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    """PyTorch ``nn.Linear``'s default, so that converted and native models start alike."""
    # PyTorch nn.Linear's default (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)

