"""Multi-head softmax attention with rotary position embeddings and a KV cache.

The baseline the SSMs are compared with, and the attention layers of hybrid stacks. The kernel is
``jax.nn.dot_product_attention`` (XLA or cuDNN as JAX chooses).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ssm_jax.nn._common import check_layer_args, check_sequence, check_step, segment_positions
from ssm_jax.nn.config import AttentionConfig
from ssm_jax.nn.linear import Dense
from ssm_jax.nn.params import canonical_dtype
from ssm_jax.ops._checks import check_positive_int

__all__ = ["DEFAULT_CACHE_LENGTH", "AttentionCache", "MultiHeadAttention", "apply_rope"]

# Positions of a KV cache made without max_length: the layer then shares the other mixers'
# init_cache(batch_size, dtype) signature; sequences longer than this need max_length.
DEFAULT_CACHE_LENGTH = 2048


class AttentionCache(NamedTuple):
    """KV cache of one attention layer.

    ===== ===================================================
    k, v  ``(b, max_length, h, head_dim)`` in the compute dtype
    index ``()`` int32: number of positions written (the next position)
    ===== ===================================================
    """

    k: jax.Array
    v: jax.Array
    index: jax.Array


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding (Su et al., 2021, eq. 34) in the rotate-half layout of GPT-NeoX / Llama.

    ``x (b, l, h, p)`` with ``p`` even, ``positions (b, l)`` -> ``(b, l, h, p)`` in ``x.dtype``.
    Pairs are (i, i + p/2); frequencies ``theta ** (-2i / p)``.
    """
    p = x.shape[-1]
    f = jnp.promote_types(x.dtype, jnp.float32)  # angles in float32 at least: bf16 positions are coarse
    inv_freq = theta ** (-jnp.arange(0, p, 2, dtype=f) / p)
    angles = positions.astype(f)[..., None] * inv_freq  # (b, l, p/2)
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
    xf = x.astype(f)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)


def _attend(q, k, v, *, mask=None, is_causal=False):
    """``jax.nn.dot_product_attention``; float16 on a CPU backend computed in float32 (XLA:CPU
    rejects its float16 x float16 -> float32 products under jit), the result back in float16."""
    if q.dtype == jnp.float16 and jax.default_backend() == "cpu":
        f32 = lambda t: t.astype(jnp.float32)
        return jax.nn.dot_product_attention(f32(q), f32(k), f32(v), mask=mask, is_causal=is_causal).astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)


class MultiHeadAttention(nnx.Module):
    """Multi-head attention with RoPE; causal or bidirectional; packed sequences via ``segment_ids``.

    ======================= =====================================================
    x                       ``(b, l, e)``
    q/k/v_proj.kernel       ``(e, h * head_dim)``
    out_proj.kernel         ``(h * head_dim, e)``
    y                       ``(b, l, e)`` in ``dtype``
    ======================= =====================================================

    Built like every mixer: ``MultiHeadAttention(d_model, AttentionConfig(...), dtype=, rngs=)``.
    With ``segment_ids`` a token attends only within its segment, and RoPE positions restart at
    each segment, so a packed row equals running each segment alone.

    Decoding keeps every key and value: the cache holds ``max_length`` positions
    (:data:`DEFAULT_CACHE_LENGTH` unless given to :meth:`init_cache`), and writing past its end is
    refused — a ``ValueError`` when the cache position is concrete (eager calls), NaN outputs for
    the positions past the end under ``jit``, where the position is traced — because a clamped
    write would silently attend to the wrong keys.
    """

    def __init__(self, d_model: int, config: AttentionConfig = AttentionConfig(), *, dtype="float32", rngs: nnx.Rngs):
        d_model = check_layer_args("MultiHeadAttention", d_model, config, AttentionConfig)
        c = config
        head_dim = d_model // c.num_heads if c.head_dim is None else c.head_dim
        if head_dim < 2 or head_dim % 2:
            raise ValueError(f"MultiHeadAttention: `head_dim` = d_model // num_heads must be even and >= 2 (RoPE); "
                             f"got {head_dim} (d_model={d_model}, num_heads={c.num_heads}); set AttentionConfig.head_dim")
        self.config = c
        self.d_model = d_model
        self.num_heads = c.num_heads
        self.head_dim = head_dim
        self.rope_theta = float(c.rope_theta)
        self.causal = c.causal
        self.dtype = canonical_dtype("MultiHeadAttention", dtype)
        inner = c.num_heads * head_dim
        kw = dict(use_bias=False, dtype=dtype, rngs=rngs)
        self.q_proj = Dense(d_model, inner, names=("embed", "heads"), **kw)
        self.k_proj = Dense(d_model, inner, names=("embed", "heads"), **kw)
        self.v_proj = Dense(d_model, inner, names=("embed", "heads"), **kw)
        self.out_proj = Dense(inner, d_model, names=("heads", "embed"), **kw)

    def _qkv(self, x: jax.Array, positions: jax.Array):
        b, l, _ = x.shape
        shape = (b, l, self.num_heads, self.head_dim)
        q = apply_rope(self.q_proj(x).reshape(shape), positions, self.rope_theta)
        k = apply_rope(self.k_proj(x).reshape(shape), positions, self.rope_theta)
        v = self.v_proj(x).reshape(shape)
        return q, k, v

    def _out(self, y: jax.Array) -> jax.Array:
        b, l = y.shape[:2]
        return self.out_proj(y.reshape(b, l, self.num_heads * self.head_dim))

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        x, segment_ids = check_sequence("MultiHeadAttention", x, self.d_model, segment_ids)
        b, l, _ = x.shape
        if segment_ids is None:
            positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
            mask = None
        else:
            positions = segment_positions(segment_ids)
            mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]  # (b, 1, l, l)
        q, k, v = self._qkv(x, positions)
        return self._out(_attend(q, k, v, mask=mask, is_causal=self.causal))

    # -- decoding ---------------------------------------------------------------------------

    def init_cache(self, batch_size: int, dtype=None, *, max_length: int | None = None) -> AttentionCache:
        """An empty KV cache holding ``max_length`` positions (default :data:`DEFAULT_CACHE_LENGTH`).

        Size it for the whole sequence (prompt + generated tokens; ``generate`` does): decoding
        past ``max_length`` is refused (see the class docstring)."""
        op = "MultiHeadAttention.init_cache"
        if not self.causal:
            raise ValueError(f"{op}: a bidirectional (causal=False) layer cannot decode step by step")
        batch_size = check_positive_int(op, "batch_size", batch_size)
        max_length = DEFAULT_CACHE_LENGTH if max_length is None else check_positive_int(op, "max_length", max_length)
        dtype = self.dtype if dtype is None else canonical_dtype(op, dtype)
        shape = (batch_size, max_length, self.num_heads, self.head_dim)
        return AttentionCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))

    def prefill(self, x: jax.Array, cache: AttentionCache, *, op: str = "MultiHeadAttention.prefill"
                ) -> tuple[jax.Array, AttentionCache]:
        """Causal forward of ``x (b, l, e)`` continuing ``cache``; returns ``(y, cache)``.

        Attends over the whole cache buffer, masked to positions ``<=`` each query's, so it also
        serves chunked prefill. Positions ``index .. index + l - 1`` must fit in the cache.
        ``op`` names the caller in errors.
        """
        x, _ = check_sequence(op, x, self.d_model)
        b, l, _ = x.shape
        max_length = cache.k.shape[1]
        if l > max_length:
            raise ValueError(f"{op}: `x` has length {l} > the cache's max_length {max_length}; size the cache with "
                             "init_cache(batch_size, max_length=...)")
        if not isinstance(cache.index, jax.core.Tracer) and int(cache.index) + l > max_length:
            i = int(cache.index)
            raise ValueError(f"{op}: the KV cache holds max_length={max_length} positions and {i} are written; "
                             f"{l} more (positions {i}..{i + l - 1}) do not fit. Size the cache for the whole "
                             "sequence: init_cache(batch_size, max_length=...)")
        positions = cache.index + jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
        q, k, v = self._qkv(x, positions)
        k_all = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), (0, cache.index, 0, 0))
        v_all = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), (0, cache.index, 0, 0))
        mask = jnp.arange(max_length)[None, :] <= positions[0][:, None]  # (l, max_length)
        y = self._out(_attend(q, k_all.astype(q.dtype), v_all.astype(q.dtype), mask=mask[None, None]))
        # Under jit the index is traced and the check above cannot run: dynamic_update_slice would
        # clamp the write onto the last slots. Poison those positions' outputs instead.
        past_end = positions[0] >= max_length  # (l,)
        y = jnp.where(past_end[None, :, None], jnp.asarray(jnp.nan, y.dtype), y)
        return y, AttentionCache(k_all, v_all, cache.index + l)

    def step(self, x: jax.Array, cache: AttentionCache) -> tuple[jax.Array, AttentionCache]:
        """One token ``x (b, e)`` -> ``(y (b, e), cache)``; writes position ``cache.index``, which
        must be below the cache's ``max_length``."""
        x = check_step("MultiHeadAttention.step", x, self.d_model)
        y, cache = self.prefill(x[:, None, :], cache, op="MultiHeadAttention.step")
        return y[:, 0], cache
