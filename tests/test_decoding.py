"""generate: greedy decoding equals the argmax of the parallel forward, sampling, eos handling."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ssm_jax
from ssm_jax.decoding import sample_logits
from ssm_jax.models import LanguageModel, LanguageModelConfig, Mamba2Config
from tests.small_models import SMALL

V = 13
# Chunks of 2 under the 3-token prompts: prefill ends inside a chunk.
SMALL = {**SMALL, "mamba2": Mamba2Config(d_state=4, headdim=4, ngroups=2, chunk_size=2)}


call = nnx.jit(lambda model, ids: model(ids))


@functools.cache
def lm(name: str) -> LanguageModel:
    if name == "hybrid":
        cfg = LanguageModelConfig(vocab_size=V, d_model=8, n_layers=3, layer_mixers=("mamba2", "attention", "mamba2"),
                                  d_intermediate=16, **SMALL)
    else:
        cfg = LanguageModelConfig(vocab_size=V, d_model=8, n_layers=2, mixer=name, **SMALL)
    return LanguageModel(cfg, rngs=nnx.Rngs(3))


def _prompt(b=2, l=3, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, (b, l)), jnp.int32)


@pytest.mark.parametrize("name", ["mamba", "mamba2", "s4", "s4d", "attention", "hybrid"])
def test_greedy_equals_argmax_of_parallel_forward(name):
    model = lm(name)
    prompt = _prompt()
    out = ssm_jax.generate(model, prompt, 5)
    assert out.shape == (2, 8) and out.dtype == jnp.int32
    np.testing.assert_array_equal(out[:, :3], prompt)
    # The model is causal, so logits[:, t] of the finished sequence are those of out[:, :t+1]:
    # each generated token must be the argmax at the previous position.
    logits = call(model, out)
    expected = jnp.argmax(logits[:, 2:-1], axis=-1)
    np.testing.assert_array_equal(out[:, 3:], expected)


def test_growing_sequence_literally():
    """The same check without relying on causality: re-run the forward on each prefix."""
    model = lm("hybrid")
    prompt = _prompt(seed=1)
    out = ssm_jax.generate(model, prompt, 3)
    seq = prompt
    for _ in range(3):
        nxt = jnp.argmax(call(model, seq)[:, -1], axis=-1).astype(jnp.int32)
        seq = jnp.concatenate([seq, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(out, seq)


def test_top_k_1_is_greedy_and_sampling_is_reproducible():
    model = lm("hybrid")
    prompt = _prompt()
    greedy = ssm_jax.generate(model, prompt, 5)
    top1 = ssm_jax.generate(model, prompt, 5, temperature=0.7, top_k=1, rng=jax.random.key(5))
    np.testing.assert_array_equal(top1, greedy)
    a = ssm_jax.generate(model, prompt, 5, temperature=1.0, rng=jax.random.key(1))
    b = ssm_jax.generate(model, prompt, 5, temperature=1.0, rng=jax.random.key(1))
    c = ssm_jax.generate(model, prompt, 5, temperature=1.0, rng=jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < V  # padded vocabulary rows never sampled


def test_eos_then_padding():
    model = lm("mamba2")
    prompt = _prompt(b=2)
    free = np.asarray(ssm_jax.generate(model, prompt, 6))
    eos = int(free[0, 4])  # the token row 0 emits at its 2nd generated step
    out = np.asarray(ssm_jax.generate(model, prompt, 6, eos_id=eos))
    for row in range(2):
        gen = free[row, 3:]
        hits = np.flatnonzero(gen == eos)
        stop = hits[0] if hits.size else len(gen)
        np.testing.assert_array_equal(out[row, 3 : 3 + stop + 1], free[row, 3 : 3 + stop + 1])
        np.testing.assert_array_equal(out[row, 3 + stop + 1 :], eos)  # keeps emitting eos
    padded = np.asarray(ssm_jax.generate(model, prompt, 6, eos_id=eos, pad_id=0))
    first = np.flatnonzero(free[0, 3:] == eos)[0]
    np.testing.assert_array_equal(padded[0, 3 + first + 1 :], 0)


def test_ssm_cache_is_constant_size():
    model = lm("hybrid")
    small = model.init_cache(2, 16)
    large = model.init_cache(2, 4096)
    for kind, a, b in zip(model.config.mixers, small, large):
        sizes = lambda c: sum(x.size for x in jax.tree.leaves(c))  # noqa: E731
        if kind == "attention":
            assert sizes(b) > sizes(a)
        else:
            assert sizes(a) == sizes(b)


def test_sample_logits_distribution():
    """Frequencies match softmax(logits / T), restricted to the top-k / the nucleus."""
    logits = jnp.log(jnp.asarray([[0.5, 0.25, 0.15, 0.1]]))
    keys = jax.random.split(jax.random.key(0), 20000)

    def freq(**kw):
        draws = jax.vmap(lambda k: sample_logits(logits, k, **kw))(keys)[:, 0]
        return np.bincount(np.asarray(draws), minlength=4) / len(keys)

    p = np.array([0.5, 0.25, 0.15, 0.1])
    np.testing.assert_allclose(freq(temperature=1.0), p, atol=0.015)
    pt = p**2 / np.sum(p**2)  # temperature 0.5 squares the probabilities
    np.testing.assert_allclose(freq(temperature=0.5), pt, atol=0.015)
    np.testing.assert_allclose(freq(temperature=1.0, top_k=2), [2 / 3, 1 / 3, 0, 0], atol=0.015)
    # nucleus 0.8: 0.5 + 0.25 < 0.8, so the third token is needed; the fourth is cut
    np.testing.assert_allclose(freq(temperature=1.0, top_p=0.8), [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0], atol=0.015)
    np.testing.assert_allclose(freq(temperature=1.0, top_p=0.5), [1, 0, 0, 0], atol=0)
    assert sample_logits(logits, None)[0] == 0  # greedy


def test_bad_arguments():
    model = lm("mamba")
    prompt = _prompt()
    with pytest.raises(ValueError, match="needs `rng`"):
        ssm_jax.generate(model, prompt, 2, temperature=1.0)
    with pytest.raises(ValueError, match="top_p"):
        ssm_jax.generate(model, prompt, 2, temperature=1.0, top_p=0.0, rng=jax.random.key(0))
    with pytest.raises(ValueError, match="top_k"):
        ssm_jax.generate(model, prompt, 2, temperature=1.0, top_k=V + 1, rng=jax.random.key(0))
    with pytest.raises(TypeError, match="prompt_ids"):
        ssm_jax.generate(model, prompt.astype(jnp.float32), 2)
    with pytest.raises(ValueError, match=r"prompt_ids` must have shape \(b, l\)"):
        ssm_jax.generate(model, prompt[0], 2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        ssm_jax.generate(model, prompt, -1)
    np.testing.assert_array_equal(ssm_jax.generate(model, prompt, 0), prompt)
    # Ids past the vocabulary (issue 19: generate emitted zeros) and negative ids are named.
    with pytest.raises(ValueError, match=rf"generate: `prompt_ids` must hold token ids in \[0, {V}\) .*got \[-2, 200\]"):
        ssm_jax.generate(model, prompt.at[0, 0].set(200).at[1, 2].set(-2), 2)
    with pytest.raises(ValueError, match=rf"generate: `eos_id` must be None or a token id in \[0, {V}\); got {V}"):
        ssm_jax.generate(model, prompt, 2, eos_id=V)
    # The filler after a shorter prompt is never read, so it may be anything.
    out = ssm_jax.generate(model, prompt.at[0, 2].set(-1), 2, prompt_lengths=[2, 3])
    assert out.shape == (2, 5) and np.all(np.asarray(out) >= 0)


RAGGED = np.array([2, 5, 3])


@pytest.mark.parametrize(
    "name", ["mamba", "hybrid", *(pytest.param(n, marks=pytest.mark.slow) for n in ("mamba2", "s4d", "attention"))]
)
def test_ragged_prompts_equal_generating_each_row_alone(name):
    # hybrid = Mamba-2 + attention layers: every cache kind; the single-mixer models are `slow`.
    model = lm(name)
    prompt = np.asarray(_prompt(b=3, l=5, seed=2))
    out = np.asarray(ssm_jax.generate(model, prompt, 4, prompt_lengths=RAGGED, pad_id=0))
    assert out.shape == (3, 9)
    for row, n in enumerate(RAGGED):
        alone = np.asarray(ssm_jax.generate(model, prompt[row : row + 1, :n], 4))[0]
        np.testing.assert_array_equal(out[row, : n + 4], alone)
        np.testing.assert_array_equal(out[row, n + 4 :], 0)
    # What follows a row's length is never read.
    refilled = np.where(np.arange(5)[None, :] < RAGGED[:, None], prompt, (prompt + 7) % V)
    np.testing.assert_array_equal(ssm_jax.generate(model, refilled, 4, prompt_lengths=RAGGED, pad_id=0), out)


def test_ragged_prompts_with_eos_and_sampling():
    model = lm("mamba2")
    prompt = np.asarray(_prompt(b=3, l=5, seed=3))
    free = np.asarray(ssm_jax.generate(model, prompt, 6, prompt_lengths=RAGGED, pad_id=0))
    eos = int(free[1, 5 + 1])  # row 1's 2nd generated token
    out = np.asarray(ssm_jax.generate(model, prompt, 6, prompt_lengths=RAGGED, eos_id=eos, pad_id=0))
    for row, n in enumerate(RAGGED):
        gen = free[row, n : n + 6]
        hits = np.flatnonzero(gen == eos)
        stop = hits[0] + 1 if hits.size else 6
        np.testing.assert_array_equal(out[row, : n + stop], free[row, : n + stop])
        np.testing.assert_array_equal(out[row, n + stop :], 0)
    kw = dict(temperature=1.0, rng=jax.random.key(4), prompt_lengths=RAGGED)
    a, b = (np.asarray(ssm_jax.generate(model, prompt, 6, **kw)) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    for row, n in enumerate(RAGGED):
        np.testing.assert_array_equal(a[row, :n], prompt[row, :n])
    # Equal lengths given explicitly: the same as not giving them.
    full = np.full(3, 5)
    np.testing.assert_array_equal(ssm_jax.generate(model, prompt, 3, prompt_lengths=full), ssm_jax.generate(model, prompt, 3))


def test_ragged_prompt_lengths_are_checked():
    model = lm("mamba")
    prompt = _prompt(b=2, l=4)
    with pytest.raises(ValueError, match=r"`prompt_lengths` must have shape \(b,\) = \(2,\); got \(3,\)"):
        ssm_jax.generate(model, prompt, 2, prompt_lengths=[1, 2, 3])
    with pytest.raises(ValueError, match=r"`prompt_lengths` must be in 1..4"):
        ssm_jax.generate(model, prompt, 2, prompt_lengths=[0, 2])
    with pytest.raises(ValueError, match=r"`prompt_lengths` must be in 1..4"):
        ssm_jax.generate(model, prompt, 2, prompt_lengths=[5, 2])
    with pytest.raises(TypeError, match="`prompt_lengths` must hold integers"):
        ssm_jax.generate(model, prompt, 2, prompt_lengths=[1.5, 2.0])
    with pytest.raises(ValueError, match="`prompt_lengths` must be concrete"):
        jax.jit(lambda n: ssm_jax.generate(model, prompt, 2, prompt_lengths=n))(jnp.array([1, 2]))
    np.testing.assert_array_equal(ssm_jax.generate(model, prompt, 0, prompt_lengths=[1, 4], pad_id=9),
                                  np.where(np.arange(4)[None, :] < np.array([[1], [4]]), prompt, 9))


def test_hybrid_model_refuses_to_step_past_its_attention_cache():
    """Issue 19: LanguageModel.step on a hybrid past the KV cache was silently off by ~0.12."""
    model = lm("hybrid")
    ids = _prompt(b=1, l=6)
    logits = call(model, ids)
    cache = model.init_cache(1, 4)
    for t in range(4):
        out, cache = model.step(ids[:, t], cache)
        np.testing.assert_allclose(out, logits[:, t], rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="the KV cache holds max_length=4 positions"):
        model.step(ids[:, 4], cache)
    step = nnx.jit(lambda m, t, c: m.step(t, c))
    out, _ = step(model, ids[:, 4], cache)
    assert np.all(np.isnan(np.asarray(out)))  # under jit: poisoned, not wrong


@pytest.mark.parametrize("name", ["mamba", "s4", "attention", "hybrid"])
def test_scanned_model_decodes_as_the_loop(name):
    """``scan_layers=True``: caches are stacked on a leading ``layers`` axis (one per entry of
    ``model.layers``); prefill, step and generate give what the unscanned model gives."""
    loop = lm(name)
    scan = ssm_jax.models.with_scan_layers(loop)
    p = scan.config.layer_period
    r = scan.config.n_layers // p
    cache = scan.init_cache(2, 8)
    assert len(cache) == p
    loop_cache = loop.init_cache(2, 8)
    for j in range(p):
        for got, want in zip(jax.tree.leaves(cache[j]), jax.tree.leaves(loop_cache[j])):
            assert got.shape == (r, *want.shape) and got.dtype == want.dtype
    prompt = _prompt(l=4, seed=3)
    prefill = nnx.jit(lambda m, ids, c: m.prefill(ids, c))
    step = nnx.jit(lambda m, ids, c: m.step(ids, c))
    (a, ca), (b, cb) = prefill(loop, prompt, loop_cache), prefill(scan, prompt, cache)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    (a, _), (b, _) = step(loop, prompt[:, 0], ca), step(scan, prompt[:, 0], cb)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    lengths = np.array([4, 2])
    np.testing.assert_array_equal(ssm_jax.generate(scan, prompt, 4, prompt_lengths=lengths),
                                  ssm_jax.generate(loop, prompt, 4, prompt_lengths=lengths))
