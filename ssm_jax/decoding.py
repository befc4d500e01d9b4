"""Autoregressive decoding: prefill with the parallel forward, then one jit-compiled loop of steps.

The cache is the model's pytree of per-layer caches (``model.init_cache``): constant-size conv
and SSM states for Mamba/Mamba-2/S4/S4D layers — memory does not grow with the number of
generated tokens — and a KV cache sized for prompt + new tokens for attention layers.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm_jax.ops._checks import Dims, check_int_array, check_token_ids, to_array

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
    static_argnames=("graphdef", "shortest", "max_new_tokens", "temperature", "top_k", "top_p", "eos_id", "pad_id",
                     "cache_dtype"),
)
def _generate(state, prompt_ids, lengths, rng, *, graphdef, shortest, max_new_tokens, temperature, top_k, top_p, eos_id,
              pad_id, cache_dtype):
    """Prefill the first ``shortest`` tokens of every row in parallel, then step position by
    position: a row still inside its prompt feeds its next prompt token (the sample is dropped),
    a row past it feeds what it sampled. With equal lengths the loop only generates."""
    model = nnx.merge(graphdef, state)
    model.eval()
    b, lp = prompt_ids.shape
    width = lp + max_new_tokens
    sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
    # Step i of the loop (i = 0 right after the prefill) samples with fold_in(rng, i).
    key_at = lambda i: None if rng is None else jax.random.fold_in(rng, i)  # noqa: E731
    ends = lengths + max_new_tokens  # each row's final width
    cols = jnp.arange(width)[None, :]
    seq = jnp.where(cols < lengths[:, None], jnp.pad(prompt_ids.astype(jnp.int32), ((0, 0), (0, max_new_tokens))), pad_id)

    cache = model.init_cache(b, width, cache_dtype)
    logits, cache = model.prefill(prompt_ids[:, :shortest], cache)
    logits = logits[:, -1]

    def emit(pos, logits, seq, done):
        """Position ``pos`` of every row: its prompt token, or a sample (pad once finished)."""
        in_prompt = pos < lengths
        sampled = sample(logits, key_at(pos - shortest))
        token = jnp.where(in_prompt, seq[:, pos], jnp.where(done, pad_id, sampled))
        finished = done | (pos + 1 >= ends)
        if eos_id is not None:
            finished = finished | (~in_prompt & (token == eos_id))
        written = jnp.where(pos < ends, token, pad_id)
        seq = jax.lax.dynamic_update_slice(seq, written[:, None], (0, pos))
        return token, seq, finished

    token, seq, done = emit(shortest, logits, seq, jnp.zeros((b,), bool))

    def cond(carry):
        pos, _, _, done, _ = carry
        return (pos < width) & ~jnp.all(done)

    def body(carry):
        pos, token, cache, done, seq = carry
        logits, cache = model.step(token, cache)
        token, seq, done = emit(pos, logits, seq, done)
        return pos + 1, token, cache, done, seq

    _, _, _, _, seq = jax.lax.while_loop(cond, body, (jnp.int32(shortest + 1), token, cache, done, seq))
    return seq


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
    prompt_lengths=None,
) -> jax.Array:
    """Continue ``prompt_ids (b, l)`` by ``max_new_tokens`` tokens: ids ``(b, l + max_new_tokens)``.

    ============== ==============================================================================
    model          a :class:`ssm_jax.models.LanguageModel` (anything with ``init_cache``,
                   ``prefill`` and ``step``); run in eval mode (dropout off) on a copy
    prompt_ids     ``(b, l)`` int, ``l >= 1``, ids in ``[0, vocab_size)`` (others raise,
                   named); prompts of different lengths are right-padded (any filler) and
                   their lengths given in ``prompt_lengths``
    temperature    0 (default): greedy; > 0: sample from ``softmax(logits / temperature)``
    top_k, top_p   restrict sampling to the ``top_k`` most likely tokens / the nucleus ``top_p``
    rng            a ``jax.random.key``; required when ``temperature > 0``. Step ``i`` uses
                   ``fold_in(rng, i)``, so results are reproducible for a given key
    eos_id         a row that emits ``eos_id`` is finished: afterwards it emits ``pad_id``; the
                   loop stops early once every row is finished
    pad_id         filler after ``eos_id`` (default ``eos_id``; 0 when ``eos_id`` is None)
    cache_dtype    dtype of conv/KV caches (default: the model's compute dtype; SSM states fp32)
    prompt_lengths ``(b,)`` ints in ``1..l`` (default: all ``l``). Row ``i`` of the result is its
                   ``prompt_lengths[i]`` prompt tokens, its ``max_new_tokens`` new tokens, then
                   ``pad_id`` up to width ``l + max_new_tokens``. Must be concrete (not traced):
                   the shortest length sets the prefill's shape
    ============== ==============================================================================

    Prefill runs the parallel forward over the prompt (over the shortest prompt's length when
    lengths differ: the longer rows feed their remaining prompt tokens through the step form, so
    each row's result equals generating it alone); everything (prefill + ``lax.while_loop`` over
    steps) is one ``jax.jit`` computation, compiled once per model structure, shapes, shortest
    prompt length and sampling settings.
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
    if vocab is not None and eos_id is not None and not (isinstance(eos_id, (int, np.integer)) and 0 <= eos_id < vocab):
        raise ValueError(f"{op}: `eos_id` must be None or a token id in [0, {vocab}); got {eos_id!r}")
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
    b, l = prompt_ids.shape
    lengths = _check_lengths(op, prompt_lengths, b, l)
    if vocab is not None and not isinstance(prompt_ids, jax.core.Tracer):
        # An id past the vocabulary used to embed as NaN and decode to a row of zeros. Only the
        # prompt tokens are read; the filler after a shorter prompt may be anything.
        check_token_ids(op, "prompt_ids", np.where(np.arange(l)[None, :] < lengths[:, None], np.asarray(prompt_ids), 0), vocab)
    if max_new_tokens == 0:
        cols = np.arange(l)[None, :]
        return jnp.where(cols < lengths[:, None], prompt_ids.astype(jnp.int32), jnp.int32(pad_id))
    graphdef, state = nnx.split(model)
    return _generate(
        state, prompt_ids, jnp.asarray(lengths, jnp.int32), rng, graphdef=graphdef, shortest=int(lengths.min()),
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        eos_id=None if eos_id is None else int(eos_id), pad_id=int(pad_id),
        cache_dtype=None if cache_dtype is None else jnp.dtype(cache_dtype).name,
    )


def _check_lengths(op: str, prompt_lengths, b: int, l: int) -> np.ndarray:
    """``prompt_lengths`` as a concrete ``(b,)`` int array in ``1..l`` (all ``l`` when None)."""
    if prompt_lengths is None:
        return np.full((b,), l, np.int64)
    if isinstance(prompt_lengths, jax.core.Tracer):
        raise ValueError(f"{op}: `prompt_lengths` must be concrete (a NumPy/JAX array outside jit): the "
                         "shortest prompt sets the prefill's shape")
    lengths = np.asarray(prompt_lengths)
    if lengths.shape != (b,):
        raise ValueError(f"{op}: `prompt_lengths` must have shape (b,) = ({b},); got {lengths.shape}")
    if not np.issubdtype(lengths.dtype, np.integer):
        raise TypeError(f"{op}: `prompt_lengths` must hold integers; got dtype {lengths.dtype}")
    if lengths.min() < 1 or lengths.max() > l:
        raise ValueError(f"{op}: `prompt_lengths` must be in 1..{l} (the width of `prompt_ids`); "
                         f"got min {int(lengths.min())}, max {int(lengths.max())}")
    return lengths.astype(np.int64)
