"""The norm choice of the models: ``norm`` in {"rms", "layer", "batch"} and ``prenorm``."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm_jax.models import (
    Block,
    LanguageModel,
    LanguageModelConfig,
    S4Config,
    S4DConfig,
    SequenceClassifier,
    SequenceClassifierConfig,
    unstack_layers,
)
from ssm_jax.nn import BatchNorm, LayerNorm, RMSNorm
from tests.models.test_models import SMALL, build, call
from tests.nn import oracles
from tests.nn.test_norms import batch_stats_oracle, layer_norm_oracle
from tests.numerics import assert_close

V, E = 11, 8
EPS = 1e-5


def _clf(**kw) -> SequenceClassifierConfig:
    return SequenceClassifierConfig(**{"vocab_size": V, "d_model": E, "n_layers": 2, "num_classes": 3, **SMALL, **kw})


def _ids(rng, b=2, l=8):
    return jnp.asarray(rng.integers(0, V, (b, l)), jnp.int32)


def _stats(model) -> dict:
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.BatchStat))}


def _randomize_norms(module, rng):
    """Move every norm's weight (and bias) off its init, so a test sees whether it is applied."""
    for _, norm in nnx.iter_graph(module):
        if isinstance(norm, (RMSNorm, LayerNorm, BatchNorm)):
            norm.weight[...] = jnp.asarray(rng.uniform(0.5, 1.5, norm.weight.shape), jnp.float32)
            if not isinstance(norm, RMSNorm):
                norm.bias[...] = jnp.asarray(rng.standard_normal(norm.bias.shape), jnp.float32)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, match", [
    (lambda: _clf(norm="group"), r"SequenceClassifierConfig: `norm` must be one of \('rms', 'layer', 'batch'\); got 'group'"),
    (lambda: _clf(prenorm=1), r"SequenceClassifierConfig: `prenorm` must be a bool \(True or False\); got 1"),
    (lambda: LanguageModelConfig(vocab_size=V, d_model=E, n_layers=1, norm="batch"),
     r"LanguageModelConfig: `norm='batch'` is not causal: .*later tokens"),
])
def test_norm_fields_are_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_from_dict_round_trips_the_norm_fields():
    cfg = SequenceClassifierConfig.from_dict({**_clf().to_dict(), "norm": "batch", "prenorm": False})
    assert (cfg.norm, cfg.prenorm) == ("batch", False)
    assert SequenceClassifierConfig.from_dict(cfg.to_dict()) == cfg
    default = _clf()
    assert (default.norm, default.prenorm) == ("rms", True)


# --------------------------------------------------------------------------------------------
# Block: pre-norm and post-norm compositions
# --------------------------------------------------------------------------------------------


def test_default_block_is_the_prenorm_rms_composition_bit_for_bit(rng):
    """``norm="rms", prenorm=True`` (the default) is ``h + mixer(norm(h))`` then
    ``h + mlp(norm2(h))``: the same operations in the same order, so the same bits."""
    cfg = _clf(mixer="mamba2", d_intermediate=8)
    block = Block("mamba2", cfg, dtype="float32", rngs=nnx.Rngs(0))
    assert isinstance(block.norm, RMSNorm) and isinstance(block.norm2, RMSNorm) and block.prenorm
    _randomize_norms(block, rng)
    h = jnp.asarray(rng.standard_normal((2, 6, E)), jnp.float32)
    h1 = h + block.mixer(block.norm(h)).astype(h.dtype)
    want = h1 + block.mlp(block.norm2(h1)).astype(h.dtype)
    np.testing.assert_array_equal(block(h), want)
    assert isinstance(build(SequenceClassifier, cfg).norm_f, RMSNorm)


def _norm_oracle(kind, norm, x, mask):
    x = np.asarray(x, np.float64)
    w = np.asarray(norm.weight[...])
    if kind == "rms":
        return oracles.rmsnorm(x, w, EPS)
    b = np.asarray(norm.bias[...])
    if kind == "layer":
        return layer_norm_oracle(x, w, b)
    mean, var, _ = batch_stats_oracle(x, mask)
    return (x - mean) / np.sqrt(var + EPS) * w + b


@pytest.mark.parametrize("kind, norm", [("s4d", "batch"), ("mamba2", "layer"), ("hydra", "rms")])
def test_post_norm_block_equals_its_hand_written_composition(kind, norm, rng):
    """``h1 = norm(h + mixer(h))``, ``h2 = norm2(h1 + mlp(h1))`` with float64 NumPy norms (the
    mixer and MLP are the block's own), with padding: LTI mixers see zeroed padding, the others a
    segment of its own; BatchNorm averages over valid positions (train mode)."""
    cfg = _clf(mixer=kind, norm=norm, prenorm=False, d_intermediate=8, s4d=S4DConfig(d_state=4, bidirectional=True))
    block = Block(kind, cfg, dtype="float32", rngs=nnx.Rngs(1))
    _randomize_norms(block, rng)
    h = rng.standard_normal((2, 7, E)).astype(np.float32) * 2 + 1
    mask = np.arange(7)[None, :] < np.asarray([[7], [4]])
    if kind == "s4d":
        y = block.mixer(jnp.asarray(h * mask[..., None]))
    else:
        y = block.mixer(jnp.asarray(h), segment_ids=jnp.asarray(mask, jnp.int32))
    h1 = _norm_oracle(norm, block.norm, h + np.asarray(y, np.float64), mask)
    h2 = _norm_oracle(norm, block.norm2, h1 + np.asarray(block.mlp(jnp.asarray(h1, jnp.float32)), np.float64), mask)
    out = np.asarray(block(jnp.asarray(h), mask=jnp.asarray(mask)))
    assert out.dtype == np.float32  # post-norm output is the float32 residual stream
    assert_close(out[mask], h2[mask], tol=1e-5, name=f"{kind}/{norm} post-norm block")


def test_post_norm_models_have_no_final_norm():
    clf = build(SequenceClassifier, _clf(mixer="s4", norm="batch", prenorm=False))
    lm = build(LanguageModel, LanguageModelConfig(vocab_size=V, d_model=E, n_layers=1, mixer="mamba", norm="layer",
                                                  prenorm=False, **SMALL))
    assert clf.norm_f is None and lm.norm_f is None
    assert isinstance(clf.layers[0].norm, BatchNorm) and isinstance(lm.layers[0].norm, LayerNorm)


# --------------------------------------------------------------------------------------------
# SequenceClassifier with BatchNorm: padding, modes, dual encoder, scanned stacks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mixers, prenorm", [(("s4", "mamba2"), False), (("hydra", "s4d"), True)])
def test_classifier_batch_norm_is_blind_to_padding(mixers, prenorm, rng):
    """Train mode: more padding (with other tokens in it) changes neither the logits nor the
    running statistics. Eval mode: each row equals that row alone, unpadded."""
    cfg = _clf(layer_mixers=mixers, norm="batch", prenorm=prenorm, d_intermediate=8, pooling="mean",
               s4=S4Config(d_state=4, bidirectional=True))
    model = build(SequenceClassifier, cfg)
    _randomize_norms(model, rng)
    other = nnx.clone(model)
    lengths = [6, 3]
    ids = _ids(rng)
    mask = jnp.arange(8)[None, :] < jnp.asarray(lengths)[:, None]
    longer = jnp.concatenate([jnp.where(mask, ids, (ids + 1) % V), _ids(rng, l=3)], axis=1)
    longer_mask = jnp.pad(mask, ((0, 0), (0, 3)))
    train = call(model, ids, mask=mask)
    assert_close(call(other, longer, mask=longer_mask), train, name="train-mode logits, more padding")
    got, want = _stats(other), _stats(model)
    assert want and got.keys() == want.keys()
    for path in want:
        assert_close(got[path], want[path], name=f"running statistics {path}")
        assert not np.allclose(want[path], 0.0 if path[-1] == "mean" else 1.0), path  # they did move
    model.eval()
    padded = call(model, ids, mask=mask)
    for row, n in enumerate(lengths):
        assert_close(padded[row : row + 1], call(model, ids[row : row + 1, :n]), name=f"eval row {row} alone")
    assert_close(call(model, longer, mask=longer_mask), padded, name="eval logits, more padding")


def test_batch_norm_train_mode_updates_statistics_and_eval_mode_reads_them(rng):
    model = build(SequenceClassifier, _clf(mixer="s4d", norm="batch"))
    ids, mask = _ids(rng), jnp.ones((2, 8), bool)
    init = _stats(model)
    first = call(model, ids, mask=mask)
    after_one = _stats(model)
    assert all(not np.array_equal(after_one[p], init[p]) for p in init)
    # Train-mode logits use the batch's own statistics: a second call gives the same logits
    # while the running averages move on.
    assert_close(call(model, ids, mask=mask), first, name="train logits, second call")
    after_two = _stats(model)
    assert all(not np.array_equal(after_two[p], after_one[p]) for p in init)
    model.eval()
    evaluated = call(model, ids, mask=mask)
    assert all(np.array_equal(_stats(model)[p], after_two[p]) for p in init)  # eval leaves them alone
    assert not np.allclose(evaluated, first)  # running averages are not this batch's statistics
    # ... and they are what eval mode reads: back at their init, the logits change.
    nnx.update(model, nnx.from_flat_state([(p, nnx.BatchStat(jnp.asarray(v))) for p, v in init.items()]))
    assert not np.allclose(call(model, ids, mask=mask), evaluated)


def test_dual_encoder_with_batch_norm_encodes_both_documents_as_one_batch(rng):
    """As state-spaces/s4 concatenates the two documents: one set of statistics over 2b rows,
    one update of the running averages per call."""
    cfg = _clf(mixer="mamba2", norm="batch", dual_encoder=True, n_layers=1, num_classes=2)
    model = build(SequenceClassifier, cfg)
    ref = nnx.clone(model)
    a, b = _ids(rng, l=6), _ids(rng, l=4)
    mask2 = jnp.asarray([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    logits = call(model, a, b, mask2=mask2)
    both = jnp.concatenate([a, jnp.pad(b, ((0, 0), (0, 2)))])
    both_mask = jnp.concatenate([jnp.ones((2, 6), bool), jnp.pad(mask2, ((0, 0), (0, 2)))])
    features = nnx.jit(lambda m, x, k: m.encode(x, k))(ref, both, both_mask)
    u, v = features[:2], features[2:]
    hidden = jax.nn.gelu(ref.head_hidden(jnp.concatenate([u, v, u * v, u - v], -1)), approximate=False)
    assert_close(logits, ref.head(hidden), name="dual-encoder logits")
    for path, want in _stats(ref).items():
        assert_close(_stats(model)[path], want, name=f"statistics {path}")
    with pytest.raises(ValueError, match=r"`inputs` and `inputs2` must have the same batch size; got 2 and 1"):
        model(a, b[:1])


def test_scanned_and_rematerialized_stacks_update_statistics_as_the_loop(rng):
    cfg = _clf(layer_mixers=("s4d", "mamba2") * 2, n_layers=4, norm="batch", prenorm=False, d_intermediate=8)
    loop = build(SequenceClassifier, cfg)
    variants = {"scan": dataclasses.replace(cfg, scan_layers=True, remat="dots"),
                "remat": dataclasses.replace(cfg, remat="full")}
    ids, mask = _ids(rng), jnp.asarray([[1] * 8, [1] * 5 + [0] * 3], bool)
    want = call(loop, ids, mask=mask)
    for name, c in variants.items():
        model = build(SequenceClassifier, c)
        assert_close(call(model, ids, mask=mask), want, name=f"{name} train logits")
        got = nnx.state(model, nnx.BatchStat)
        got = unstack_layers(got, c) if c.scan_layers else got
        got = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(got)}
        assert got.keys() == _stats(loop).keys(), name
        for path, value in _stats(loop).items():
            assert_close(got[path], value, name=f"{name} statistics {path}")


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def test_post_norm_layer_norm_language_model_decodes_as_its_parallel_forward(rng):
    cfg = LanguageModelConfig(vocab_size=V, d_model=E, n_layers=2, layer_mixers=("mamba", "s4d"), d_intermediate=8,
                              norm="layer", prenorm=False, **SMALL)
    model = build(LanguageModel, cfg)
    _randomize_norms(model, rng)
    ids = _ids(rng, l=7)
    want = call(model, ids)
    logits, cache = nnx.jit(lambda m, x, c: m.prefill(x, c))(model, ids[:, :4], model.init_cache(2, 7))
    got = [logits]
    step = nnx.jit(lambda m, t, c: m.step(t, c))
    for t in range(4, 7):
        out, cache = step(model, ids[:, t], cache)
        got.append(out[:, None])
    assert_close(jnp.concatenate(got, axis=1), want, name="prefill + step logits")


def test_block_with_batch_norm_decodes_in_eval_mode_only(rng):
    cfg = _clf(mixer="s4d", norm="batch", prenorm=False, d_intermediate=8)  # a causal S4D
    block = Block("s4d", cfg, dtype="float32", rngs=nnx.Rngs(2))
    h = jnp.asarray(rng.standard_normal((2, 6, E)), jnp.float32)
    with pytest.raises(ValueError, match=r"Block.prefill: norm='batch' in train mode .* call model.eval\(\) first"):
        block.prefill(h, block.init_cache(2, 6))
    with pytest.raises(ValueError, match=r"Block.step: norm='batch' in train mode"):
        block.step(h[:, 0], block.init_cache(2, 6))
    block(h)  # move the running averages off their init
    block.eval()
    want = block(h)
    y, cache = block.prefill(h[:, :3], block.init_cache(2, 6))
    got = [y]
    for t in range(3, 6):
        y_t, cache = block.step(h[:, t], cache)
        got.append(y_t[:, None])
    assert_close(jnp.concatenate(got, axis=1), want, name="eval-mode prefill + step")
