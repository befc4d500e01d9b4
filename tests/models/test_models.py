"""Configs, parameter counts, LanguageModel and SequenceClassifier behaviour."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm_jax.models import (
    AttentionConfig,
    LanguageModel,
    LanguageModelConfig,
    Mamba2Config,
    MambaConfig,
    S4Config,
    S4DConfig,
    SequenceClassifier,
    SequenceClassifierConfig,
    flops_per_token,
    param_count,
    pool,
)
from tests.numerics import assert_close
from tests.small_models import SMALL

# Calls go through jit: on CPU one compile per shape is cheaper than dispatching every op eagerly.
# Models are built eagerly: XLA:CPU compiles a whole init program (dozens of threefry calls)
# slowly, while eager inits share compiled random ops across models with the same shapes.
call = nnx.jit(lambda model, *args, **kw: model(*args, **kw))


def build(cls, cfg, seed=0):
    return cls(cfg, rngs=nnx.Rngs(seed))



# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def test_from_dict_builds_nested_configs():
    cfg = LanguageModelConfig.from_dict({
        "vocab_size": 50, "d_model": 16, "n_layers": 3,
        "layer_mixers": ["mamba2", "attention", "mamba2"],
        "mamba2": {"d_state": 8, "A_init_range": [1, 4]},
        "attention": {"num_heads": 4},
        "dtype": "bfloat16",
    })
    assert cfg.layer_mixers == ("mamba2", "attention", "mamba2")
    assert isinstance(cfg.mamba2, Mamba2Config) and cfg.mamba2.d_state == 8 and cfg.mamba2.A_init_range == (1, 4)
    assert cfg.attention.num_heads == 4 and cfg.mamba == MambaConfig()
    assert cfg.padded_vocab_size == 56
    assert LanguageModelConfig.from_dict(cfg.to_dict()) == cfg  # round trip
    clf = SequenceClassifierConfig.from_dict({"vocab_size": 5, "d_model": 8, "n_layers": 1, "num_classes": 2,
                                              "mixer": "hydra", "dual_encoder": True})
    assert clf.dual_encoder and clf.mixers == ("hydra",)


def test_from_dict_errors():
    base = {"vocab_size": 50, "d_model": 16, "n_layers": 2}
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['n_layer'\]; valid keys are \[.*'n_layers'.*\]"):
        LanguageModelConfig.from_dict({**base, "n_layer": 2})
    with pytest.raises(ValueError, match=r"Mamba2Config.from_dict: unknown key\(s\) \['dstate'\]; valid keys are \[.*'d_state'"):
        LanguageModelConfig.from_dict({**base, "mamba2": {"dstate": 8}})
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['num_classes'\]"):
        SequenceClassifierConfig.from_dict(base)
    with pytest.raises(ValueError, match="`mixer` must be one of"):
        LanguageModelConfig.from_dict({**base, "mixer": "mamba3"})
    with pytest.raises(ValueError, match="layer_mixers"):
        LanguageModelConfig.from_dict({**base, "layer_mixers": ["mamba"]})
    with pytest.raises(ValueError, match="bidirectional"):
        LanguageModelConfig.from_dict({**base, "mixer": "hydra"})
    with pytest.raises(ValueError, match="not causal"):
        LanguageModelConfig.from_dict({**base, "mixer": "s4d", "s4d": {"bidirectional": True}})
    with pytest.raises(ValueError, match="dt_min"):
        MambaConfig(dt_min=0.2, dt_max=0.1)
    with pytest.raises(ValueError, match="pooling"):
        SequenceClassifierConfig(5, 8, 1, num_classes=2, pooling="max")
    with pytest.raises(TypeError, match="mapping"):
        LanguageModelConfig.from_dict([("vocab_size", 3)])


# --------------------------------------------------------------------------------------------
# Parameter counts and FLOPs
# --------------------------------------------------------------------------------------------

COUNT_CASES = [
    LanguageModelConfig(vocab_size=50, d_model=8, n_layers=2, mixer="mamba", **SMALL),
    LanguageModelConfig(vocab_size=50, d_model=8, n_layers=2, mixer="mamba", tie_embeddings=False, d_intermediate=12,
                        **{**SMALL, "mamba": MambaConfig(d_state=4, bias=True, conv_bias=False, dt_rank=3)}),
    LanguageModelConfig(vocab_size=50, d_model=8, n_layers=2, mixer="mamba2", **SMALL),
    LanguageModelConfig(vocab_size=50, d_model=8, n_layers=1, mixer="mamba2",
                        **{**SMALL, "mamba2": Mamba2Config(d_state=4, headdim=4, D_has_hdim=True, bias=True)}),
    LanguageModelConfig(vocab_size=50, d_model=8, n_layers=3, layer_mixers=("s4", "s4d", "attention"), **SMALL),
    LanguageModelConfig(vocab_size=50, d_model=8, n_layers=1, mixer="s4d", **{**SMALL, "s4d": S4DConfig(d_state=4, postact=None)}),
    SequenceClassifierConfig(vocab_size=50, d_model=8, n_layers=2, mixer="hydra", num_classes=3, **SMALL),
    SequenceClassifierConfig(vocab_size=50, d_model=8, n_layers=2, layer_mixers=("s4", "attention"), num_classes=3,
                             dual_encoder=True, d_intermediate=8,
                             **{**SMALL, "s4": S4Config(d_state=4, bidirectional=True)}),
    # LayerNorm / BatchNorm have a bias; post-norm has no final norm; running statistics are not parameters.
    LanguageModelConfig(vocab_size=50, d_model=8, n_layers=2, mixer="mamba", d_intermediate=8, norm="layer", **SMALL),
    SequenceClassifierConfig(vocab_size=50, d_model=8, n_layers=2, mixer="s4d", num_classes=3, d_intermediate=8,
                             norm="batch", prenorm=False, **SMALL),
    SequenceClassifierConfig(vocab_size=50, d_model=8, n_layers=1, mixer="s4d", num_classes=3, norm="batch", **SMALL),
    # A linear pixel encoder (2e) instead of the embedding; tied SSMs.
    SequenceClassifierConfig(vocab_size=256, d_model=8, n_layers=1, mixer="s4", num_classes=3, encoder="linear",
                             **{**SMALL, "s4": S4Config(d_state=4, n_ssm=1)}),
]


@pytest.mark.parametrize("cfg", COUNT_CASES, ids=lambda c: f"{type(c).__name__}-{'-'.join(c.mixers)}-{c.norm}-{c.prenorm}")
def test_param_count_equals_model(cfg):
    cls = LanguageModel if isinstance(cfg, LanguageModelConfig) else SequenceClassifier
    abstract = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
    actual = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert param_count(cfg) == actual


def test_flops_per_token_by_hand():
    # One attention layer: 4 e^2 projection weights (e = 8, 2 heads of 4) + tied head e x v_pad
    # (v_pad = 16). Forward: 2 * (256 + 128) matmul FLOPs + 4 * L * inner for QK^T and AV.
    cfg = LanguageModelConfig(vocab_size=13, d_model=8, n_layers=1, mixer="attention", attention=AttentionConfig(num_heads=2))
    assert flops_per_token(cfg, 32) == 3 * (2 * (4 * 8 * 8 + 8 * 16) + 4 * 32 * 8)
    mamba = LanguageModelConfig(vocab_size=13, d_model=8, n_layers=1, mixer="mamba", mamba=MambaConfig(d_state=4, d_conv=4))
    # d = 16, r = 1: in_proj 8*32, x_proj 16*9, dt_proj 1*16, out_proj 16*8, head 8*16; conv 2*16*4; scan 9*16*4
    matmul = 8 * 32 + 16 * 9 + 16 + 16 * 8 + 8 * 16
    assert flops_per_token(mamba, 32) == 3 * (2 * matmul + 2 * 16 * 4 + 9 * 16 * 4)
    assert flops_per_token(mamba, 32) == flops_per_token(mamba, 4096)  # linear time: no length term
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(cfg, 0)


# --------------------------------------------------------------------------------------------
# LanguageModel
# --------------------------------------------------------------------------------------------


def _hybrid(dtype="float32", **kw):
    cfg = LanguageModelConfig(vocab_size=13, d_model=8, n_layers=4, layer_mixers=("mamba", "mamba2", "attention", "s4d"),
                              d_intermediate=8, dtype=dtype, **SMALL, **kw)
    return build(LanguageModel, cfg)


def test_language_model_logits_causal_and_packed(rng):
    model = _hybrid()
    ids = jnp.asarray(rng.integers(0, 13, (2, 9)), jnp.int32)
    logits = call(model, ids)
    assert logits.shape == (2, 9, 13) and logits.dtype == jnp.float32  # true vocab, not padded (16)
    first = call(model, ids[:, :4])
    assert_close(first, logits[:, :4], name="prefix logits")  # causal
    seg = jnp.asarray(np.repeat([[1, 2]], [4, 5], axis=1), jnp.int32)
    packed = call(model, ids, segment_ids=jnp.broadcast_to(seg, (2, 9)))
    assert_close(packed[:, :4], first, name="segment 1")
    assert_close(packed[:, 4:], call(model, ids[:, 4:]), name="segment 2")
    with pytest.raises(TypeError, match="input_ids"):
        model(ids.astype(jnp.float32))


def test_tied_and_untied_heads(rng):
    ids = jnp.asarray(rng.integers(0, 13, (1, 4)), jnp.int32)
    tied = _hybrid()
    assert tied.lm_head is None
    emb = np.asarray(tied.embedding.embedding[...])
    h = np.asarray(tied.norm_f(jnp.ones((1, 8))))
    assert_close(tied._logits(jnp.ones((1, 8))), (h @ emb.T)[:, :13], name="tied head")
    untied = _hybrid(tie_embeddings=False)
    assert untied.lm_head.kernel.shape == (8, 16)
    assert call(untied, ids).shape == (1, 4, 13)


def test_bf16_model_close_to_fp32(rng):
    ids = jnp.asarray(rng.integers(0, 13, (2, 8)), jnp.int32)
    y32 = call(_hybrid(), ids)
    y16 = call(_hybrid(dtype="bfloat16"), ids)
    assert y16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y16)))
    assert_close(y16, y32, tol=5e-2, name="bf16 logits")


# --------------------------------------------------------------------------------------------
# SequenceClassifier
# --------------------------------------------------------------------------------------------


def test_pool_oracle():
    h = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    mask = np.array([[1, 1, 0, 0], [0, 1, 1, 1]], bool)
    np.testing.assert_allclose(pool(jnp.asarray(h), jnp.asarray(mask), "mean"), [h[0, :2].mean(0), h[1, 1:].mean(0)])
    np.testing.assert_allclose(pool(jnp.asarray(h), jnp.asarray(mask), "last"), [h[0, 1], h[1, 3]])
    np.testing.assert_allclose(pool(jnp.asarray(h), jnp.asarray(mask), "first"), [h[0, 0], h[1, 1]])
    np.testing.assert_allclose(pool(jnp.asarray(h), None, "mean"), h.mean(1))


@pytest.mark.parametrize(
    "mixers, pooling, s4_bidirectional",
    [
        (("hydra", "attention"), "mean", False),
        (("mamba2", "s4"), "last", True),
        (("mamba", "s4d"), "first", False),
    ],
)
def test_classifier_padding_does_not_change_output(mixers, pooling, s4_bidirectional, rng):
    small = {**SMALL, "attention": AttentionConfig(num_heads=2, causal=False),
             "s4": S4Config(d_state=4, bidirectional=s4_bidirectional)}
    cfg = SequenceClassifierConfig(vocab_size=11, d_model=8, n_layers=2, layer_mixers=mixers, num_classes=3,
                                   pooling=pooling, **small)
    model = build(SequenceClassifier, cfg)
    lengths = [5, 3]
    ids = jnp.asarray(rng.integers(0, 11, (2, 8)), jnp.int32)  # pad positions hold random tokens
    mask = jnp.arange(8)[None, :] < jnp.asarray(lengths)[:, None]
    padded = call(model, ids, mask=mask)
    assert padded.shape == (2, 3)
    for row, n in enumerate(lengths):
        alone = call(model, ids[row : row + 1, :n])
        assert_close(padded[row : row + 1], alone, name=f"row {row}")
    other = jnp.where(mask, ids, (ids + 1) % 11)  # different padding tokens, same result
    assert_close(call(model, other, mask=mask), padded, name="other padding")


def test_dual_encoder(rng):
    cfg = SequenceClassifierConfig(vocab_size=11, d_model=8, n_layers=1, mixer="mamba2", num_classes=2,
                                   dual_encoder=True, **SMALL)
    model = build(SequenceClassifier, cfg)
    a = jnp.asarray(rng.integers(0, 11, (2, 6)), jnp.int32)
    b = jnp.asarray(rng.integers(0, 11, (2, 4)), jnp.int32)
    logits = call(model, a, b)
    u, v = np.asarray(model.encode(a)), np.asarray(model.encode(b))
    feats = np.concatenate([u, v, u * v, u - v], -1)
    hidden = np.asarray(jax.nn.gelu(model.head_hidden(jnp.asarray(feats)), approximate=False))
    assert_close(logits, np.asarray(model.head(jnp.asarray(hidden))), name="dual head")
    mask2 = jnp.asarray([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    masked = call(model, a, b, mask2=mask2)
    assert_close(masked[0], call(model, a[:1], b[:1, :3])[0], name="masked second input")
    with pytest.raises(ValueError, match="inputs2"):
        model(a)


def test_dropout_train_eval(rng):
    cfg = SequenceClassifierConfig(vocab_size=11, d_model=8, n_layers=1, mixer="s4d", num_classes=2, dropout=0.5,
                                   **{**SMALL, "s4d": S4DConfig(d_state=4, dropout=0.3)})
    model = build(SequenceClassifier, cfg)
    ids = jnp.asarray(rng.integers(0, 11, (2, 6)), jnp.int32)
    model.train()
    assert not np.allclose(call(model, ids), call(model, ids))
    model.eval()
    np.testing.assert_array_equal(call(model, ids), call(model, ids))


def test_every_model_param_has_logical_names_and_builds_with_eager_sharding_on():
    cfg = SequenceClassifierConfig(vocab_size=11, d_model=8, n_layers=2, layer_mixers=("hydra", "s4"), num_classes=2,
                                   dual_encoder=True, d_intermediate=8, **SMALL)
    with nnx.use_eager_sharding(True):  # flax 0.12's default; no mesh is set
        model = nnx.eval_shape(lambda: SequenceClassifier(cfg, rngs=nnx.Rngs(0)))
    lm = nnx.eval_shape(lambda: LanguageModel(LanguageModelConfig(vocab_size=11, d_model=8, n_layers=1, mixer="mamba",
                                                                  tie_embeddings=False, **SMALL), rngs=nnx.Rngs(0)))
    for m in (model, lm):
        for path, v in nnx.to_flat_state(nnx.state(m, nnx.Param)):
            names = v.get_metadata().get("out_sharding")
            assert names is not None and len(names) == len(v.shape), (path, names)


@pytest.mark.parametrize("kwargs, match", [
    ({"norm_eps": 0.0}, r"Mamba2Config: `norm_eps` must be a positive float; got 0.0"),
    ({"norm_eps": "1e-5"}, r"`norm_eps` must be a positive float; got '1e-5'"),
    ({"A_init_range": (4.0, 1.0)}, r"Mamba2Config: `A_init_range` must be \(lo, hi\) with 0 < lo <= hi"),
])
def test_mamba2_config_bad_values_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Mamba2Config(**kwargs)


@pytest.mark.parametrize("make, match", [
    # The cases of issue 19: each used to fail late (MLIRError, broadcasting, reshape, index
    # errors, ZeroDivisionError) or not at all until the first call.
    (lambda nn: nn.MambaConfig(d_state=-4), r"MambaConfig: `d_state` must be a positive int; got -4"),
    (lambda nn: nn.MambaConfig(d_state=0), r"MambaConfig: `d_state` must be a positive int; got 0"),
    (lambda nn: nn.MambaConfig(d_conv=0), r"MambaConfig: `d_conv` must be a positive int; got 0"),
    (lambda nn: nn.MambaConfig(expand=0), r"MambaConfig: `expand` must be a positive int; got 0"),
    (lambda nn: nn.MambaConfig(impl="nope"), r"MambaConfig: `impl` must be one of \['auto', 'scan', 'xla', .*\] .*; got 'nope'"),
    (lambda nn: nn.MambaConfig(dt_rank=0), r"MambaConfig: `dt_rank` must be 'auto' or a positive int; got 0"),
    (lambda nn: nn.MambaConfig(bias=1), r"MambaConfig: `bias` must be a bool \(True or False\); got 1"),
    (lambda nn: nn.MambaConfig(dt_init_floor=0.0), r"MambaConfig: `dt_init_floor` must be a positive float; got 0.0"),
    (lambda nn: nn.Mamba2Config(d_state=-1), r"Mamba2Config: `d_state` must be a positive int; got -1"),
    (lambda nn: nn.Mamba2Config(chunk_size=0), r"Mamba2Config: `chunk_size` must be a positive int; got 0"),
    (lambda nn: nn.Mamba2Config(impl="cuda"), r"Mamba2Config: `impl` must be one of .*'quadratic'.*; got 'cuda'"),
    (lambda nn: nn.HydraConfig(headdim=0), r"HydraConfig: `headdim` must be a positive int; got 0"),
    (lambda nn: nn.HydraConfig(impl="scan"), r"HydraConfig: `impl` must be one of .*'matrix'.*; got 'scan'"),
    (lambda nn: nn.S4Config(d_state=3), r"S4Config: `d_state` must be an even int >= 2 \(conjugate pairs\); got 3"),
    (lambda nn: nn.S4Config(lr=0.0), r"S4Config: `lr` must be None \(the optimizer's\) or a positive float; got 0.0"),
    (lambda nn: nn.S4DConfig(dropout=1.0), r"S4DConfig: `dropout` must be a float in \[0, 1\); got 1.0"),
    (lambda nn: nn.S4DConfig(bidirectional="yes"), r"S4DConfig: `bidirectional` must be a bool \(True or False\); got 'yes'"),
    (lambda nn: nn.AttentionConfig(num_heads=0), r"AttentionConfig: `num_heads` must be a positive int; got 0"),
    (lambda nn: nn.AttentionConfig(head_dim=3), r"AttentionConfig: `head_dim` must be None .* or an even int >= 2 .*; got 3"),
    (lambda nn: nn.AttentionConfig(rope_theta=-1.0), r"AttentionConfig: `rope_theta` must be a positive float; got -1.0"),
    (lambda nn: LanguageModelConfig(vocab_size=8, d_model=8, n_layers=1, norm_eps=0.0),
     r"LanguageModelConfig: `norm_eps` must be a positive float; got 0.0"),
    (lambda nn: LanguageModelConfig(vocab_size=8, d_model=8, n_layers=1, tie_embeddings=None),
     r"LanguageModelConfig: `tie_embeddings` must be a bool \(True or False\); got None"),
    (lambda nn: LanguageModelConfig(vocab_size=8, d_model=8, n_layers=2, layer_mixers="ma"),
     r"LanguageModelConfig: `layer_mixers` must be None or a tuple of mixer names .*; got 'ma'"),
    (lambda nn: SequenceClassifierConfig(vocab_size=8, d_model=8, n_layers=1, num_classes=2, dual_encoder=0),
     r"SequenceClassifierConfig: `dual_encoder` must be a bool \(True or False\); got 0"),
    (lambda nn: nn.Mamba(0, nn.MambaConfig(), rngs=nnx.Rngs(0)), r"Mamba: `d_model` must be a positive int; got 0"),
    (lambda nn: nn.Mamba2(-8, nn.Mamba2Config(), rngs=nnx.Rngs(0)), r"Mamba2: `d_model` must be a positive int; got -8"),
    (lambda nn: nn.S4D(2.5, nn.S4DConfig(), rngs=nnx.Rngs(0)), r"S4D: `d_model` must be a positive int; got 2.5"),
])
def test_every_config_field_is_checked_at_construction(make, match):
    from ssm_jax import nn

    with pytest.raises(ValueError, match=match):
        make(nn)


def test_layers_refuse_a_config_of_another_type():
    from ssm_jax import nn

    with pytest.raises(TypeError, match=r"Mamba: `config` must be a MambaConfig \(from a dict: MambaConfig.from_dict\(...\)\); got dict"):
        nn.Mamba(8, {"d_state": 4}, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"S4D: `config` must be a S4DConfig; got S4Config"):
        nn.S4D(8, nn.S4Config(), rngs=nnx.Rngs(0))
    # replace() re-checks: a frozen config cannot be made invalid after construction either.
    with pytest.raises(ValueError, match=r"MambaConfig: `d_state` must be a positive int; got 0"):
        nn.MambaConfig().replace(d_state=0)


def test_head_geometry_errors_name_the_layer_and_field():
    from ssm_jax import nn

    with pytest.raises(ValueError, match=r"Hydra: `headdim`=5 must divide d_inner = expand \* d_model = 16"):
        nn.Hydra(8, nn.HydraConfig(headdim=5, d_state=4), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"Mamba2: `ngroups`=3 must divide the number of heads 4"):
        nn.Mamba2(8, nn.Mamba2Config(headdim=4, ngroups=3, d_state=4), rngs=nnx.Rngs(0))


def test_token_ids_outside_the_vocabulary_are_refused_or_poisoned():
    """Issue 19: id 200 with vocab_size 64 gave NaN logits silently, and negative ids wrapped
    around to the last rows. Concrete ids raise, naming them; traced ids give NaN from there."""
    cfg = LanguageModelConfig(vocab_size=13, d_model=8, n_layers=1, mixer="mamba", **SMALL)
    model = build(LanguageModel, cfg)
    ok = jnp.asarray([[1, 2, 3, 4]])
    for bad, shown in ((200, r"\[200\]"), (-1, r"\[-1\]"), (13, r"\[13\]"), (15, r"\[15\]")):  # 15 < padded 16
        ids = ok.at[0, 2].set(bad)
        with pytest.raises(ValueError, match=rf"LanguageModel: `input_ids` must hold token ids in \[0, 13\) .*got {shown} "
                                             r"\(1 positions, first at index \[\(0, 2\)\]\)"):
            model(ids)
        logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, ids))
        assert np.all(np.isfinite(logits[:, :2])) and np.all(np.isnan(logits[:, 2:])), bad
    with pytest.raises(ValueError, match=r"LanguageModel.step: `token_ids` must hold token ids in \[0, 13\)"):
        model.step(jnp.asarray([13]), model.init_cache(1, 4))
    clf = build(SequenceClassifier, SequenceClassifierConfig(vocab_size=13, d_model=8, n_layers=1, mixer="mamba",
                                                             num_classes=2, **SMALL))
    with pytest.raises(ValueError, match=r"SequenceClassifier: `inputs` must hold token ids in \[0, 13\) .*got \[-3\]"):
        clf(ok.at[0, 0].set(-3))
