"""Causal language model: embedding, residual blocks of any causal mixer, final norm, head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ssm_jax.models.blocks import Block, make_norm
from ssm_jax.models.config import LanguageModelConfig
from ssm_jax.models.stack import make_layers, run_layers, stacked_init_cache
from ssm_jax.nn.linear import Dense, Embed
from ssm_jax.nn.params import canonical_dtype
from ssm_jax.ops._checks import Dims, check_int_array, check_token_ids, to_array

__all__ = ["LanguageModel"]


class LanguageModel(nnx.Module):
    """``input_ids (b, l) -> logits (b, l, vocab_size)`` float32.

    Logits cover the *true* ``vocab_size``: the embedding table (and an untied ``lm_head``) has
    ``padded_vocab_size`` rows (a multiple of ``pad_vocab_size_multiple``, as mamba_ssm pads),
    and the padding rows are sliced off, so the trainer never sees them.

    ============== ========================= =====================================
    parameter      shape                     notes
    ============== ========================= =====================================
    embedding      (v_pad, e)                N(0, 0.02)
    layers[i]      :class:`Block`            ``norm``, ``mixer``, [``norm2``, ``mlp``];
                                             with ``scan_layers``, ``layer_period`` blocks
                                             stacked on a leading ``layers`` axis
                                             (:mod:`ssm_jax.models.stack`)
    norm_f         (e,)                      final norm (``config.norm``); None in
                                             post-norm (``prenorm=False``)
    lm_head        (e, v_pad)                only when ``tie_embeddings=False``
    ============== ========================= =====================================

    Token ids must lie in ``[0, vocab_size)``. Concrete ids outside it (eager calls) raise a
    ``ValueError`` naming them; traced ids (under ``jit``, where their values are unknown) embed
    as NaN, so the logits are NaN from that position on — never a silently clamped or
    wrapped-around row (negative ids included).

    Decoding: :meth:`init_cache`, :meth:`prefill`, :meth:`step`; see :func:`ssm_jax.generate`.
    """

    def __init__(self, config: LanguageModelConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, LanguageModelConfig):
            raise TypeError(f"LanguageModel: `config` must be a LanguageModelConfig; got {type(config).__name__}")
        c = config
        self.config = c
        self.dtype = canonical_dtype("LanguageModel", c.dtype)
        self.embedding = Embed(c.padded_vocab_size, c.d_model, dtype=c.dtype, rngs=rngs)
        self.layers = make_layers(c, lambda kind: Block(kind, c, dtype=c.dtype, rngs=rngs))
        # Post-norm ends with the last block's norm (state-spaces/s4's SequenceModel: no final norm).
        self.norm_f = make_norm(c.norm, c.d_model, eps=c.norm_eps, dtype=c.dtype) if c.prenorm else None
        if c.tie_embeddings:
            self.lm_head = None
        else:
            self.lm_head = Dense(
                c.d_model, c.padded_vocab_size, names=("embed", "vocab"), use_bias=False, dtype=c.dtype, rngs=rngs,
                kernel_init=lambda k, s: 0.02 * jax.random.normal(k, s, jnp.float32),
            )

    def _check_ids(self, op: str, ids, spec: str, name: str = "input_ids") -> jax.Array:
        ids = to_array(op, name, ids)
        Dims(op).bind(name, ids, spec)
        check_int_array(op, name, ids)
        check_token_ids(op, name, ids, self.config.vocab_size)
        return ids

    def _embed(self, ids: jax.Array) -> jax.Array:
        return self.embedding(ids, num_valid=self.config.vocab_size).astype(jnp.float32)

    def head(self, h: jax.Array) -> jax.Array:
        """Final norm and LM head: hidden states ``(..., e)`` -> ``logits (..., vocab_size)`` float32.

        With :meth:`features`, ``head(features(ids))`` is ``self(ids)``; apart, a loss on a few
        positions gathers their hidden states and pays for the vocabulary projection only there.
        """
        x = h.astype(self.dtype) if self.norm_f is None else self.norm_f(h)
        # Logits accumulate and come back in float32 even when the compute dtype is bf16.
        f32 = jnp.float32
        logits = self.embedding.attend(x, preferred_element_type=f32) if self.lm_head is None else self.lm_head(x, preferred_element_type=f32)
        return logits[..., : self.config.vocab_size].astype(f32)

    _logits = head  # the name prefill and step call it by

    def __call__(self, input_ids: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        """``input_ids (b, l)`` int -> ``logits (b, l, vocab_size)`` float32.

        ``segment_ids (b, l)``: packed documents; no information crosses a change of id.
        """
        return self.head(self.features(input_ids, segment_ids=segment_ids))

    def features(self, input_ids: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        """``input_ids (b, l)`` int -> the last block's output ``(b, l, e)`` float32, before the
        final norm (:meth:`head` applies it)."""
        input_ids = self._check_ids("LanguageModel", input_ids, "b l")
        h = self._embed(input_ids)
        h, _ = run_layers(self.layers, self.config, h, lambda block, h, _: (block(h, segment_ids=segment_ids), None),
                          remat=self.config.remat)
        return h

    # -- decoding ---------------------------------------------------------------------------

    def init_cache(self, batch_size: int, max_length: int, dtype=None) -> tuple:
        """One cache per entry of ``layers`` (a tuple pytree; stacked on a leading ``layers`` axis
        with ``scan_layers``). ``max_length`` sizes attention KV caches only; SSM caches are
        constant-size. ``dtype``: cache dtype (default: the compute dtype)."""
        return stacked_init_cache(self.layers, self.config, lambda block: block.init_cache(batch_size, max_length, dtype))

    def prefill(self, input_ids: jax.Array, cache: tuple) -> tuple[jax.Array, tuple]:
        """Parallel forward of ``input_ids (b, l)`` continuing ``cache``: ``(logits (b, l, v), cache)``."""
        input_ids = self._check_ids("LanguageModel.prefill", input_ids, "b l")
        h = self._embed(input_ids)
        h, cache = run_layers(self.layers, self.config, h, lambda block, h, c: block.prefill(h, c), cache)
        return self._logits(h), cache

    def step(self, token_ids: jax.Array, cache: tuple) -> tuple[jax.Array, tuple]:
        """One token per row, ``token_ids (b,)`` -> ``(logits (b, v), cache)``."""
        token_ids = self._check_ids("LanguageModel.step", token_ids, "b", "token_ids")
        h = self._embed(token_ids)
        h, cache = run_layers(self.layers, self.config, h, lambda block, h, c: block.step(h, c), cache)
        return self._logits(h), cache
