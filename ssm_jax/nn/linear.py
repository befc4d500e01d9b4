"""Dense projection and token embedding with logical axis names and a compute dtype.

Layouts follow PyTorch transposed: ``Dense.kernel`` is ``(in, out)`` (``nn.Linear.weight`` is
``(out, in)``), ``Embed.embedding`` is ``(v, e)`` as ``nn.Embedding.weight``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ssm_jax.nn.params import canonical_dtype, fan_in_uniform, param
from ssm_jax.ops._explicit import gather_rows

__all__ = ["Dense", "Embed"]


class Dense(nnx.Module):
    """``y = x @ kernel + bias`` computed in ``dtype``.

    ====== =====================
    x      ``(..., in_features)``
    kernel ``(in_features, out_features)``, logical ``names``
    bias   ``(out_features,)``
    y      ``(..., out_features)`` in ``dtype``
    ====== =====================
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        names: Sequence[str | None],
        use_bias: bool = True,
        bias_ssm: bool = False,
        kernel_init: Callable[[jax.Array, tuple[int, ...]], jax.Array] | None = None,
        bias_init: Callable[[jax.Array, tuple[int, ...]], jax.Array] | None = None,
        dtype="float32",
        rngs: nnx.Rngs,
    ):
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = canonical_dtype("Dense", dtype)
        kernel_init = kernel_init or (lambda k, s: fan_in_uniform(k, s, in_features))
        self.kernel = param(kernel_init(rngs.params(), (in_features, out_features)), names)
        if use_bias:
            bias_init = bias_init or (lambda k, s: jnp.zeros(s, jnp.float32))
            self.bias = param(bias_init(rngs.params(), (out_features,)), names[-1:], ssm=bias_ssm)
        else:
            self.bias = None

    def __call__(self, x: jax.Array, *, preferred_element_type=None) -> jax.Array:
        """``preferred_element_type``: accumulate/return in this dtype (e.g. float32 logits)."""
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype), preferred_element_type=preferred_element_type)
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y


class Embed(nnx.Module):
    """Token embedding ``(v, e)``; :meth:`attend` is the tied output head ``x @ embedding.T``."""

    def __init__(self, num_embeddings: int, features: int, *, init_std: float = 0.02, dtype="float32", rngs: nnx.Rngs):
        self.num_embeddings = num_embeddings
        self.features = features
        self.dtype = canonical_dtype("Embed", dtype)
        table = init_std * jax.random.normal(rngs.params(), (num_embeddings, features), jnp.float32)
        self.embedding = param(table, ("vocab", "embed"))

    def __call__(self, ids: jax.Array, *, num_valid: int | None = None) -> jax.Array:
        """Rows of ``ids``; an id outside ``[0, num_valid)`` (default: the table's rows), negative
        ones included, gives a NaN row rather than a clamped or wrapped-around one."""
        n = self.num_embeddings if num_valid is None else num_valid
        ids = jnp.where((ids >= 0) & (ids < n), ids, self.num_embeddings)  # past the table: filled
        return gather_rows(self.embedding[...], ids, fill_value=jnp.nan).astype(self.dtype)

    def attend(self, x: jax.Array, *, preferred_element_type=None) -> jax.Array:
        """``x (..., e) @ embedding.T -> (..., v)``, the tied output head."""
        table = self.embedding[...].astype(self.dtype)
        return jnp.dot(x.astype(self.dtype), table.T, preferred_element_type=preferred_element_type)
