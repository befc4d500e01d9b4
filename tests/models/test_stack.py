"""scan_layers / remat: the scanned stack computes what the loop computes, layouts convert both ways."""

from __future__ import annotations

import dataclasses
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm_jax.models import (
    LanguageModel,
    LanguageModelConfig,
    SequenceClassifier,
    SequenceClassifierConfig,
    param_count,
    stack_layers,
    unstack_layers,
    with_scan_layers,
)
from ssm_jax.parallel import logical_to_mesh
from tests.numerics import assert_close
from tests.small_models import SMALL

V = 11

# name -> (layer_mixers, d_intermediate); 'hybrid' repeats (mamba2, mamba2, attention) twice.
STACKS = {
    "mamba": (("mamba",) * 3, 0),
    "mamba2": (("mamba2",) * 3, 0),
    "s4d_mlp": (("s4d",) * 2, 8),
    "attention": (("attention",) * 2, 8),
    "hybrid": (("mamba2", "mamba2", "attention") * 2, 0),
}


def lm_config(name: str, **kw) -> LanguageModelConfig:
    mixers, d_mlp = STACKS[name]
    return LanguageModelConfig(vocab_size=V, d_model=8, n_layers=len(mixers), layer_mixers=mixers, d_intermediate=d_mlp,
                               **SMALL, **kw)


def _ids(b=2, l=7, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, (b, l)), jnp.int32)


def _loss(model, ids, segment_ids=None):
    logits = model(ids, segment_ids=segment_ids)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0]) + 1e-2 * jnp.mean(logits**2)


value_and_grad = nnx.jit(nnx.value_and_grad(_loss))


def _flat(state) -> dict:
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def _assert_states_close(got, want, what):
    got, want = _flat(got), _flat(want)
    assert got.keys() == want.keys()
    for path in want:
        assert_close(got[path], want[path], name=f"{what} {'/'.join(map(str, path))}")


def test_layer_period():
    assert lm_config("mamba").layer_period == 1
    assert lm_config("hybrid").layer_period == 3
    attention_every_6th = tuple("attention" if (i + 1) % 6 == 0 else "mamba2" for i in range(24))
    assert dataclasses.replace(lm_config("mamba"), n_layers=24, layer_mixers=attention_every_6th).layer_period == 6
    odd = dataclasses.replace(lm_config("mamba"), n_layers=3, layer_mixers=("mamba2", "attention", "mamba2"))
    assert odd.layer_period == 3
    with pytest.raises(ValueError, match=r"`remat` must be one of \('none', 'full', 'dots', 'dots_no_batch'\)"):
        lm_config("mamba", remat="everything")
    with pytest.raises(ValueError, match="`scan_layers` must be a bool"):
        lm_config("mamba", scan_layers=1)


def test_stack_that_does_not_repeat_is_scanned_once_and_says_so(caplog):
    cfg = dataclasses.replace(lm_config("mamba"), n_layers=2, layer_mixers=("mamba", "attention"), scan_layers=True)
    with caplog.at_level(logging.WARNING, logger="ssm_jax.models.stack"):
        model = LanguageModel(cfg, rngs=nnx.Rngs(0))
    assert "does not repeat" in caplog.text
    assert model.layers[0].mixer.in_proj.kernel.shape[0] == 1


@pytest.mark.parametrize("name", list(STACKS))
def test_scanned_equals_loop_values_and_gradients(name):
    """Same seed -> same weights (the scanned model stacks the loop's per-layer init), then the
    same logits and gradients in fp32, packed segments included."""
    loop = LanguageModel(lm_config(name), rngs=nnx.Rngs(1))
    scan = LanguageModel(lm_config(name, scan_layers=True), rngs=nnx.Rngs(1))
    p, r = scan.config.layer_period, scan.config.n_layers // scan.config.layer_period
    assert len(scan.layers) == p
    for path, v in nnx.to_flat_state(nnx.state(scan.layers, nnx.Param)):
        assert v.shape[0] == r and v.get_metadata()["out_sharding"][0] == "layers", path
    _assert_states_close(nnx.state(scan), stack_layers(nnx.state(loop), scan.config), "weights")
    ids = _ids()
    seg = jnp.asarray([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0]], jnp.int32)
    (l0, g0), (l1, g1) = value_and_grad(loop, ids, seg), value_and_grad(scan, ids, seg)
    assert_close(l1, l0, name="loss")
    _assert_states_close(unstack_layers(g1, scan.config), g0, "gradient")


@pytest.mark.parametrize("remat", ["full", "dots", "dots_no_batch"])
@pytest.mark.parametrize("scan_layers", [False, True])
def test_remat_changes_nothing_but_memory(remat, scan_layers):
    base = LanguageModel(lm_config("hybrid", scan_layers=scan_layers), rngs=nnx.Rngs(2))
    remat_model = LanguageModel(lm_config("hybrid", scan_layers=scan_layers, remat=remat), rngs=nnx.Rngs(2))
    ids = _ids(seed=1)
    (l0, g0), (l1, g1) = value_and_grad(base, ids), value_and_grad(remat_model, ids)
    assert_close(l1, l0, name="loss")
    _assert_states_close(g1, g0, f"gradient, remat={remat}")
    # Each block (scanned: each scan step) is a jax.checkpoint with the policy asked for.
    jaxpr = str(jax.make_jaxpr(lambda s: _loss(nnx.merge(nnx.graphdef(remat_model), s), ids))(nnx.state(remat_model)))
    policies = re.findall(r"remat2\[[^\]]*?policy=([^\n]*)", jaxpr, flags=re.S)
    assert len(policies) == (1 if scan_layers else remat_model.config.n_layers), jaxpr
    want = {"full": "nothing_saveable", "dots": "real_dots_saveable", "dots_no_batch": "real_dots_with_no_batch_dims_saveable"}
    assert all(re.match(rf"<function {want[remat]}\b", p) for p in policies), policies


def test_remat_policies_save_real_products_only():
    """"dots" saves every real matmul, "dots_no_batch" those without batch dimensions; neither a
    complex one (jax's remat puts reduce_precision, which refuses complex, on saved residuals)."""
    from ssm_jax.models.stack import _POLICIES

    def saves(remat, dtype, batched):
        x = jnp.ones((2, 3, 3) if batched else (3, 3), dtype)
        eqn = jax.make_jaxpr(lambda a: jnp.matmul(a, a))(x).jaxpr.eqns[-1]
        assert eqn.primitive is jax.lax.dot_general_p
        return _POLICIES[remat](eqn.primitive, *(v.aval for v in eqn.invars), **eqn.params)

    assert saves("dots", jnp.float32, True) and saves("dots", jnp.float32, False)
    assert saves("dots_no_batch", jnp.float32, False) and not saves("dots_no_batch", jnp.float32, True)
    for remat in ("dots", "dots_no_batch"):
        assert not saves(remat, jnp.complex64, False), remat
    assert not _POLICIES["full"](jax.lax.dot_general_p)


@pytest.mark.parametrize("remat", ["dots", "dots_no_batch"])
def test_s4_packed_sequences_train_under_every_remat_policy(remat):
    """S4's packed-sequence path discretizes with complex matmuls: under remat="dots" their
    products were saved and jax's remat refused them (TypeError from reduce_precision)."""
    def cfg(**kw):
        return LanguageModelConfig(vocab_size=V, d_model=8, n_layers=2, mixer="s4", **SMALL, **kw)

    base, remat_model = (LanguageModel(cfg(**kw), rngs=nnx.Rngs(3)) for kw in ({}, {"remat": remat}))
    ids, seg = _ids(), jnp.asarray([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 2, 2]], jnp.int32)
    (l0, g0), (l1, g1) = value_and_grad(base, ids, seg), value_and_grad(remat_model, ids, seg)
    assert_close(l1, l0, name="loss")
    _assert_states_close(g1, g0, f"gradient, remat={remat}")


def test_classifier_scanned_with_dropout_equals_loop():
    """The dropout RNG streams are stacked with the rest: in training mode the scanned classifier
    draws the loop's masks, call after call, and gets the same gradients."""
    cfg = SequenceClassifierConfig(vocab_size=V, d_model=8, n_layers=4, layer_mixers=("hydra", "s4") * 2,
                                   num_classes=3, dropout=0.3, d_intermediate=8, **SMALL)
    loop = SequenceClassifier(cfg, rngs=nnx.Rngs(4))
    scan = SequenceClassifier(dataclasses.replace(cfg, scan_layers=True, remat="dots"), rngs=nnx.Rngs(4))
    ids, mask = _ids(l=6), jnp.asarray([[1] * 6, [1] * 4 + [0] * 2], bool)

    def loss(m, ids, mask):
        logits = m(ids, mask=mask)
        return jnp.sum(logits**2), logits

    # Train-mode logits and gradients from one compiled call per model (half the compiles of two).
    grad = nnx.jit(nnx.grad(loss, has_aux=True))
    for _ in range(2):
        (scan_grads, scan_logits), (loop_grads, loop_logits) = grad(scan, ids, mask), grad(loop, ids, mask)
        assert_close(scan_logits, loop_logits, name="train-mode logits")
        _assert_states_close(unstack_layers(nnx.state(scan_grads), scan.config), nnx.state(loop_grads), "gradient")
    call = nnx.jit(lambda m, ids, mask: m(ids, mask=mask))
    loop.eval(), scan.eval()
    assert_close(call(scan, ids, mask), call(loop, ids, mask), name="eval logits")


def test_layout_conversions_round_trip_exactly():
    loop = LanguageModel(lm_config("hybrid"), rngs=nnx.Rngs(5))
    scan = with_scan_layers(loop)
    assert scan.config == dataclasses.replace(loop.config, scan_layers=True)
    _assert_states_close(nnx.state(scan), stack_layers(nnx.state(loop), scan.config), "with_scan_layers")
    back = with_scan_layers(scan, False)
    for path, v in _flat(nnx.state(loop)).items():
        np.testing.assert_array_equal(_flat(nnx.state(back))[path], v, err_msg=str(path))
    # Flat {path: array} mappings (a converted state dict) and abstract states convert too.
    flat = _flat(nnx.state(loop))
    stacked = stack_layers(flat, scan.config)
    assert stacked[("layers", 2, "mixer", "q_proj", "kernel")].shape[0] == 2
    assert unstack_layers(stacked, scan.config).keys() == flat.keys()
    abstract = nnx.state(nnx.eval_shape(lambda: LanguageModel(scan.config, rngs=nnx.Rngs(0))))
    assert jax.tree.map(jnp.shape, unstack_layers(abstract, scan.config)) == jax.tree.map(jnp.shape, nnx.state(loop))
    # The converted model is a copy: training one leaves the other alone.
    scan.embedding.embedding[...] = 0.0
    assert np.abs(np.asarray(loop.embedding.embedding[...])).sum() > 0


def test_layout_conversion_errors():
    scan_cfg = lm_config("hybrid", scan_layers=True)
    loop = nnx.state(LanguageModel(lm_config("mamba"), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"stack_layers: `layers/0/mixer/A_log` exists in 1 of the layers \[0, 3\] of its group"):
        stack_layers(loop, scan_cfg)
    with pytest.raises(ValueError, match=r"`layers/0/mixer/A_log` has shape \(16, 4\); expected a leading layers axis of 6"):
        unstack_layers(loop, dataclasses.replace(lm_config("mamba"), n_layers=6, layer_mixers=("mamba",) * 6,
                                                 scan_layers=True))
    with pytest.raises(TypeError, match="must be an nnx.State .* or a flat mapping"):
        stack_layers([1, 2], scan_cfg)
    with pytest.raises(TypeError, match="with_scan_layers: `model` must be a LanguageModel or SequenceClassifier"):
        with_scan_layers(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))


def test_param_count_and_sharding_of_a_scanned_model():
    for name in STACKS:
        cfg = lm_config(name, scan_layers=True)
        model = nnx.eval_shape(lambda: LanguageModel(cfg, rngs=nnx.Rngs(0)))
        n = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
        assert n == param_count(cfg), name
    specs = logical_to_mesh(nnx.state(model, nnx.Param))
    flat = dict(nnx.to_flat_state(specs))
    # The stacked axis ('layers') is replicated by the default rules; the others keep their rules.
    assert flat[("layers", 0, "mixer", "in_proj", "kernel")].get_value() == jax.sharding.PartitionSpec(None, "fsdp", "tensor")


def test_orbax_round_trip_of_a_scanned_state(tmp_path):
    """An Orbax checkpoint of a scanned model restores into it, and (unstacked) into the loop."""
    import orbax.checkpoint as ocp

    scan = LanguageModel(lm_config("hybrid", scan_layers=True), rngs=nnx.Rngs(6))
    graphdef, state = nnx.split(scan)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "ckpt", nnx.to_pure_dict(state))
        ckpt.wait_until_finished()
        abstract = nnx.state(nnx.eval_shape(lambda: LanguageModel(scan.config, rngs=nnx.Rngs(0))))
        restored = ckpt.restore(tmp_path / "ckpt", nnx.to_pure_dict(abstract))
    nnx.replace_by_pure_dict(abstract, restored)
    again = nnx.merge(graphdef, abstract)
    ids = _ids()
    np.testing.assert_array_equal(np.asarray(again(ids)), np.asarray(scan(ids)))
    loop_cfg = dataclasses.replace(scan.config, scan_layers=False)
    loop = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: LanguageModel(loop_cfg, rngs=nnx.Rngs(0)))),
                     unstack_layers(abstract, scan.config))
    assert_close(loop(ids), scan(ids), name="restored into the loop")


def test_scanned_program_does_not_grow_with_depth():
    """What keeps compile time flat: the lowered program of the scanned model is (nearly) the same
    size at 2 and 8 layers, the loop's grows with the depth. (Compile times: docs/architecture.md.)"""
    def size(n, scan_layers):
        cfg = dataclasses.replace(lm_config("mamba2"), n_layers=n, layer_mixers=None, mixer="mamba2",
                                  scan_layers=scan_layers)
        model = nnx.eval_shape(lambda: LanguageModel(cfg, rngs=nnx.Rngs(0)))
        graphdef, state = nnx.split(model)
        fn = jax.jit(jax.grad(lambda s, ids: _loss(nnx.merge(graphdef, s), ids)))
        return len(fn.lower(state, jax.ShapeDtypeStruct((2, 7), jnp.int32)).as_text())

    assert size(8, True) < 1.1 * size(2, True)
    assert size(8, False) > 1.5 * size(2, False)


def test_remat_is_off_for_interpreted_kernels_on_cpu(monkeypatch):
    """A Pallas kernel named explicitly runs in interpret mode on a CPU, which jax.checkpoint
    cannot differentiate (an IO effect): the model trains without remat there, and says so once."""
    from ssm_jax.models import stack

    def cfg(**kw):
        return LanguageModelConfig(vocab_size=V, d_model=8, n_layers=2, mixer="mamba2",
                                   mamba2=dataclasses.replace(SMALL["mamba2"], impl="pallas_tpu"), **kw)

    warnings = []
    monkeypatch.setattr(stack, "_WARNED", set())
    monkeypatch.setattr(stack.log, "warning", lambda msg, *args: warnings.append(msg % args))
    base, remat_model = LanguageModel(cfg(), rngs=nnx.Rngs(5)), LanguageModel(cfg(remat="full"), rngs=nnx.Rngs(5))
    assert stack.effective_remat(lm_config("mamba2"), "full") == "full"  # impl "auto": XLA on a CPU
    ids = _ids()
    (l0, g0), (l1, g1) = value_and_grad(base, ids), value_and_grad(remat_model, ids)
    assert stack.effective_remat(remat_model.config, "full") == "none"
    assert_close(l1, l0, name="loss")
    _assert_states_close(g1, g0, "gradient")
    assert len(warnings) == 1 and "remat='full'" in warnings[0] and "mamba2.impl='pallas_tpu'" in warnings[0], warnings
