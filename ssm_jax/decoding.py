"""Autoregressive decoding: prefill with the parallel forward, then one jit-compiled loop of steps.

The cache is the model's pytree of per-layer caches (``model.init_cache``): constant-size conv
and SSM states for Mamba/Mamba-2/S4/S4D layers — memory does not grow with the number of
generated tokens — and a KV cache sized for prompt + new tokens for attention layers.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from ssm_jax.ops._checks import Dims, check_int_array, to_array

__all__ = ["generate", "sample_logits"]


def sample_logits(
    logits: jax.Array,
    key: jax.Array | None,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> jax.Array:
    """Next token ids ``(b,)`` from ``logits (b, v)``.

    ``temperature == 0``: greedy (argmax). Otherwise logits are divided by ``temperature``, cut
    to the ``top_k`` largest and/or to the smallest set whose probability reaches ``top_p``
    (nucleus sampling, Holtzman et al. 2020), and sampled with ``key``.
    """
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    neg_inf = jnp.finfo(jnp.float32).min
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg_inf, logits)
    if top_p is not None and top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep a token while the mass strictly before it is < top_p (the top token always stays).
        keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, neg_inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k", "top_p", "eos_id", "pad_id", "cache_dtype"),
)
def _generate(state, prompt_ids, rng, *, graphdef, max_new_tokens, temperature, top_k, top_p, eos_id, pad_id, cache_dtype):
    model = nnx.merge(graphdef, state)
    model.eval()
    b, lp = prompt_ids.shape
    sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
    key_at = lambda i: None if rng is None else jax.random.fold_in(rng, i)  # noqa: E731

    cache = model.init_cache(b, lp + max_new_tokens, cache_dtype)
    logits, cache = model.prefill(prompt_ids, cache)
    token = sample(logits[:, -1], key_at(0))
    out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token)
    done = (token == eos_id) if eos_id is not None else jnp.zeros((b,), bool)

    def cond(carry):
        i, _, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, token, cache, done, out = carry
        logits, cache = model.step(token, cache)
        nxt = sample(logits, key_at(i))
        nxt = jnp.where(done, pad_id, nxt)  # a finished row keeps emitting pad (= eos by default)
        out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, i))
        if eos_id is not None:
            done = done | (nxt == eos_id)
        return i + 1, nxt, cache, done, out

    _, _, _, _, out = jax.lax.while_loop(cond, body, (jnp.int32(1), token, cache, done, out))
    return jnp.concatenate([prompt_ids.astype(jnp.int32), out], axis=1)


def generate(
    model,
    prompt_ids,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: jax.Array | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    cache_dtype=None,
) -> jax.Array:
    """Continue ``prompt_ids (b, l)`` by ``max_new_tokens`` tokens: ids ``(b, l + max_new_tokens)``.

    ============== ==============================================================================
    model          a :class:`ssm_jax.models.LanguageModel` (anything with ``init_cache``,
                   ``prefill`` and ``step``); run in eval mode (dropout off) on a copy
    prompt_ids     ``(b, l)`` int, ``l >= 1``; every row has the same length (no left padding)
    temperature    0 (default): greedy; > 0: sample from ``softmax(logits / temperature)``
    top_k, top_p   restrict sampling to the ``top_k`` most likely tokens / the nucleus ``top_p``
    rng            a ``jax.random.key``; required when ``temperature > 0``. Step ``i`` uses
                   ``fold_in(rng, i)``, so results are reproducible for a given key
    eos_id         a row that emits ``eos_id`` is finished: afterwards it emits ``pad_id``; the
                   loop stops early once every row is finished
    pad_id         filler after ``eos_id`` (default ``eos_id``; 0 when ``eos_id`` is None)
    cache_dtype    dtype of conv/KV caches (default: the model's compute dtype; SSM states fp32)
    ============== ==============================================================================

    Prefill runs the parallel forward over the prompt and hands its states to the step form;
    everything (prefill + ``lax.while_loop`` over steps) is one ``jax.jit`` computation,
    compiled once per model structure, shapes and sampling settings.
    """
    op = "generate"
    prompt_ids = to_array(op, "prompt_ids", prompt_ids)
    dims = Dims(op)
    dims.bind("prompt_ids", prompt_ids, "b l")
    check_int_array(op, "prompt_ids", prompt_ids)
    if prompt_ids.shape[1] < 1:
        raise ValueError(f"{op}: `prompt_ids` must hold at least one token per row; got shape {tuple(prompt_ids.shape)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"{op}: `max_new_tokens` must be an int >= 0; got {max_new_tokens!r}")
    for name in ("init_cache", "prefill", "step"):
        if not callable(getattr(model, name, None)):
            raise TypeError(f"{op}: `model` must have init_cache/prefill/step (e.g. a LanguageModel); {type(model).__name__} lacks {name}")
    temperature = float(temperature)
    if temperature < 0:
        raise ValueError(f"{op}: `temperature` must be >= 0; got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"{op}: `top_k` must be None or a positive int; got {top_k!r}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if top_k is not None and vocab is not None and top_k > vocab:
        raise ValueError(f"{op}: `top_k`={top_k} exceeds the vocabulary size {vocab}")
    if top_p is not None:
        top_p = float(top_p)
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"{op}: `top_p` must be in (0, 1]; got {top_p}")
    if temperature > 0 and rng is None:
        raise ValueError(f"{op}: sampling (temperature={temperature} > 0) needs `rng`, e.g. jax.random.key(0)")
    if temperature == 0:
        rng = None  # greedy ignores rng; keep the compiled function independent of it
    if pad_id is None:
        pad_id = eos_id if eos_id is not None else 0
    if max_new_tokens == 0:
        return prompt_ids.astype(jnp.int32)
    graphdef, state = nnx.split(model)
    return _generate(
        state, prompt_ids, rng, graphdef=graphdef, max_new_tokens=max_new_tokens, temperature=temperature,
        top_k=top_k, top_p=top_p, eos_id=None if eos_id is None else int(eos_id), pad_id=int(pad_id),
        cache_dtype=None if cache_dtype is None else jnp.dtype(cache_dtype).name,
    )
