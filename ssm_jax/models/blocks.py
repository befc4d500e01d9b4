"""The residual block shared by the models: ``h += mixer(norm(h))`` then ``h += mlp(norm2(h))``.

The residual stream ``h`` stays float32 whatever the compute dtype (mamba_ssm's
``residual_in_fp32``); each branch runs in the compute dtype and is added back in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ssm_jax.models.config import MIXERS
from ssm_jax.nn.attention import MultiHeadAttention
from ssm_jax.nn.hydra import Hydra
from ssm_jax.nn.mamba import Mamba
from ssm_jax.nn.mamba2 import Mamba2
from ssm_jax.nn.mlp import MLP
from ssm_jax.nn.norms import RMSNorm
from ssm_jax.nn.s4 import S4, S4D, _LTILayer

__all__ = ["Block", "make_mixer"]


def make_mixer(kind: str, d_model: int, stack_config, *, dtype, rngs: nnx.Rngs) -> nnx.Module:
    """The mixer layer ``kind`` (one of ``MIXERS``) configured from a model config's sub-config."""
    if kind == "mamba":
        return Mamba(d_model, stack_config.mamba, dtype=dtype, rngs=rngs)
    if kind == "mamba2":
        return Mamba2(d_model, stack_config.mamba2, dtype=dtype, rngs=rngs)
    if kind == "hydra":
        return Hydra(d_model, stack_config.hydra, dtype=dtype, rngs=rngs)
    if kind == "s4":
        return S4(d_model, stack_config.s4, dtype=dtype, rngs=rngs)
    if kind == "s4d":
        return S4D(d_model, stack_config.s4d, dtype=dtype, rngs=rngs)
    if kind == "attention":
        return MultiHeadAttention(d_model, stack_config.attention, dtype=dtype, rngs=rngs)
    raise ValueError(f"make_mixer: `kind` must be one of {MIXERS}; got {kind!r}")


def _mask_segments(segment_ids: jax.Array | None, mask: jax.Array) -> jax.Array:
    """Segment ids that put padding (``mask == False``) in segments of its own."""
    m = mask.astype(jnp.int32)
    return m if segment_ids is None else segment_ids.astype(jnp.int32) * 2 + m


class Block(nnx.Module):
    """Pre-norm residual block: ``norm -> mixer`` and, with ``d_intermediate > 0``, ``norm2 -> mlp``.

    ``out_proj`` of the mixer and ``fc2`` of the MLP are scaled by ``1/sqrt(r * n_layers)`` at
    init (r residual branches per block; GPT-2's scheme, as mamba_ssm's ``_init_weights``).
    """

    def __init__(self, kind: str, stack_config, *, dropout: float = 0.0, dtype, rngs: nnx.Rngs):
        c = stack_config
        e = c.d_model
        self.kind = kind
        self.norm = RMSNorm(e, eps=c.norm_eps, dtype=dtype)
        self.mixer = make_mixer(kind, e, c, dtype=dtype, rngs=rngs)
        if c.d_intermediate > 0:
            self.norm2 = RMSNorm(e, eps=c.norm_eps, dtype=dtype)
            self.mlp = MLP(e, c.d_intermediate, dtype=dtype, rngs=rngs)
        else:
            self.norm2 = self.mlp = None
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        scale = 1.0 / math.sqrt((2 if self.mlp is not None else 1) * c.n_layers)
        out_proj = getattr(self.mixer, "out_proj", None)
        for dense in (out_proj, self.mlp.fc2 if self.mlp is not None else None):
            if dense is not None:
                dense.kernel[...] = dense.kernel[...] * scale

    def _drop(self, y: jax.Array) -> jax.Array:
        return y if self.dropout is None else self.dropout(y)

    def _mlp(self, h: jax.Array) -> jax.Array:
        if self.mlp is not None:
            h = h + self._drop(self.mlp(self.norm2(h))).astype(h.dtype)
        return h

    def __call__(self, h: jax.Array, *, segment_ids: jax.Array | None = None, mask: jax.Array | None = None) -> jax.Array:
        """``h (b, l, e)`` float32 residual stream -> same.

        ``mask (b, l)`` marks valid positions; padding then cannot influence valid positions: LTI
        mixers (S4, S4D) get zeroed inputs there, the others a segment of its own.
        """
        x = self.norm(h)
        if mask is not None:
            if isinstance(self.mixer, _LTILayer):
                x = x * mask[..., None].astype(x.dtype)
            else:
                segment_ids = _mask_segments(segment_ids, mask)
        h = h + self._drop(self.mixer(x, segment_ids=segment_ids)).astype(h.dtype)
        return self._mlp(h)

    def init_cache(self, batch_size: int, max_length: int, dtype=None):
        return self.mixer.init_cache(batch_size, dtype, max_length=max_length)

    def prefill(self, h: jax.Array, cache):
        y, cache = self.mixer.prefill(self.norm(h), cache)
        return self._mlp(h + y.astype(h.dtype)), cache

    def step(self, h: jax.Array, cache):
        y, cache = self.mixer.step(self.norm(h), cache)
        return self._mlp(h + y.astype(h.dtype)), cache
