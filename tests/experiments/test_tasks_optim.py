"""Task losses/metrics against NumPy, and the optimizer's parameter groups and schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from experiments import optim, tasks
from experiments.configs import common
from ssm_jax.nn import SSMParam
from tests.numerics import assert_close


def _np_ce(logits, targets):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, targets[..., None], -1)[..., 0]


def test_lm_sums_and_metrics_match_numpy(rng):
    b, l, v, v_pad = 3, 7, 5, 8
    logits = rng.normal(size=(b, l, v_pad)).astype(np.float32) * 3
    logits[..., v:] = 50.0  # padded vocabulary entries must be ignored
    targets = rng.integers(0, v, size=(b, l)).astype(np.int32)
    weights = (rng.random((b, l)) < 0.5).astype(np.float32)
    weights[2] = 0.0  # a row with nothing scored: not counted in sequence accuracy
    # Make row 0 entirely right on its scored positions.
    logits[0, np.arange(l), targets[0]] = 40.0
    batch = {"inputs": targets, "targets": targets, "weights": weights}
    sums = jax.device_get(tasks.LanguageModeling().sums_of_logits(jnp.asarray(logits), batch, v))

    ce = _np_ce(logits[..., :v].astype(np.float64), targets)
    correct = logits[..., :v].argmax(-1) == targets
    assert_close(sums["loss_sum"], np.sum(ce * weights), name="loss_sum")
    assert sums["weight_sum"] == weights.sum()
    assert sums["correct_sum"] == np.sum(correct * weights)
    scored = weights > 0
    rows_right = [np.all(correct[i][scored[i]]) for i in range(2)]
    assert rows_right[0]
    assert sums["seq_count"] == 2 and sums["seq_correct_sum"] == sum(rows_right)

    m = tasks.LanguageModeling().finalize(sums)
    assert np.isclose(m["loss"], np.sum(ce * weights) / weights.sum(), rtol=1e-6)
    assert np.isclose(m["perplexity"], np.exp(m["loss"])) and np.isclose(m["bits_per_token"], m["loss"] / np.log(2))
    assert m["seq_accuracy"] == sum(rows_right) / 2


def test_classification_sums_match_numpy(rng):
    logits = rng.normal(size=(6, 4)).astype(np.float32)
    label = rng.integers(0, 4, size=6).astype(np.int32)
    weights = np.array([1, 1, 1, 1, 0, 0], np.float32)  # two padding rows
    batch = {"label": label, "weights": weights}
    sums = jax.device_get(tasks.Classification().sums_of_logits(jnp.asarray(logits), batch, 4))
    assert_close(sums["loss_sum"], np.sum(_np_ce(logits.astype(np.float64), label) * weights), name="loss_sum")
    assert sums["correct_sum"] == np.sum((logits.argmax(-1) == label) * weights)
    assert set(tasks.Classification().finalize(sums)) == {"loss", "accuracy"}


class _Toy(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.ones((2, 3)))
        self.b = nnx.Param(jnp.ones((3,)))
        self.A_log = SSMParam(jnp.ones((3,)))
        self.D = SSMParam(jnp.ones((2, 3)))


def _optim(**kw):
    c = common.base_config().optim
    c.update(dict(warmup_steps=0, min_lr_ratio=1.0, clip_norm=0.0, **kw))
    return c


def _one_update(cfg, grad_value=0.0):
    _, ssm, other = nnx.split(_Toy(), SSMParam, nnx.Param)
    params = {"ssm": ssm, "other": other}
    tx, _ = optim.make_optimizer(cfg, total_steps=10)
    grads = jax.tree.map(lambda p: jnp.full_like(p, grad_value), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return {k: {n: np.asarray(v) for n, v in jax.tree_util.tree_flatten_with_path(u)[0]} for k, u in updates.items()}


def test_ssm_parameters_get_their_own_lr_and_no_weight_decay():
    # Zero gradients: the update is weight decay alone, -lr * wd * p, on matrices only.
    up = _one_update(_optim(lr=0.1, weight_decay=0.5, ssm_lr=0.01, ssm_weight_decay=0.0))
    (w,) = [v for k, v in up["other"].items() if "'w'" in str(k)]
    (b,) = [v for k, v in up["other"].items() if "'b'" in str(k)]
    np.testing.assert_allclose(w, -0.1 * 0.5 * np.ones((2, 3)), rtol=1e-6)
    np.testing.assert_allclose(b, 0.0)  # vectors are not decayed
    for v in up["ssm"].values():
        np.testing.assert_allclose(v, 0.0)  # SSM parameters: no decay by default
    # A unit gradient: Adam's first step moves every parameter by its group's lr.
    up = _one_update(_optim(lr=0.1, weight_decay=0.0, ssm_lr=0.01), grad_value=1.0)
    for v in up["other"].values():
        np.testing.assert_allclose(v, -0.1, rtol=1e-4)
    for v in up["ssm"].values():
        np.testing.assert_allclose(v, -0.01, rtol=1e-4)


class _S4Toy(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.ones((2, 3)))
        self.log_dt = SSMParam(jnp.ones((3,)))
        self.log_A_real = SSMParam(jnp.ones((2, 3)))
        self.B = SSMParam(jnp.ones((2, 3)))
        self.C = SSMParam(jnp.ones((2, 3)))
        self.D = SSMParam(jnp.ones((3,)))


def test_ssm_param_groups_give_each_role_its_lr_and_weight_decay():
    # A unit gradient on unit parameters: Adam's first step is -lr * (1 + wd) on decayed matrices,
    # -lr elsewhere. Listed roles take their own values (None: the global ones); B is unlisted and
    # keeps ssm_lr / ssm_weight_decay.
    cfg = _optim(lr=0.1, weight_decay=0.5, ssm_lr=0.01, ssm_weight_decay=0.0)
    cfg.ssm_param_groups = dict(dt=dict(lr=0.5, weight_decay=0.0), A=dict(lr=0.2, weight_decay=0.0),
                                C=dict(lr=None, weight_decay=None), D=dict(lr=None, weight_decay=None))
    _, ssm, other = nnx.split(_S4Toy(), SSMParam, nnx.Param)
    params = {"ssm": ssm, "other": other}
    tx, schedules = optim.make_optimizer(cfg, total_steps=10)
    assert set(schedules) == {"other", "ssm", "ssm_dt", "ssm_A", "ssm_C", "ssm_D"}
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    want = {"w": -0.15, "log_dt": -0.5, "log_A_real": -0.2, "B": -0.01, "C": -0.15, "D": -0.1}
    got = {str(path[-2].key): np.asarray(v) for group in updates.values()
           for path, v in jax.tree_util.tree_flatten_with_path(group)[0]}
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, err_msg=name)
    # decay_vectors: the D vector is decayed too (state-spaces/s4's plain D parameter).
    cfg.ssm_param_groups.D.decay_vectors = True
    tx, _ = optim.make_optimizer(cfg, total_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["ssm"]["D"].value, -0.15, rtol=1e-4)
    np.testing.assert_allclose(updates["ssm"]["log_dt"].value, -0.5, rtol=1e-4)  # other groups unchanged


def test_ssm_param_groups_refuse_a_parameter_without_a_role():
    class Odd(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones((2, 3)))
            self.theta = SSMParam(jnp.ones((3,)))

    cfg = _optim()
    cfg.ssm_param_groups = dict(A=dict(lr=0.2, weight_decay=0.0))
    _, ssm, other = nnx.split(Odd(), SSMParam, nnx.Param)
    tx, _ = optim.make_optimizer(cfg, total_steps=10)
    with pytest.raises(ValueError, match=r"SSM parameter 'theta' has no role"):
        tx.init({"ssm": ssm, "other": other})


def test_schedule_warmup_then_cosine():
    cfg = ml_collections.ConfigDict(dict(warmup_steps=10, min_lr_ratio=0.1))
    s = optim.make_schedule(cfg, total_steps=110, peak=2.0)
    np.testing.assert_allclose([s(0), s(5), s(10)], [0.0, 1.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(s(60), 0.2 + (2.0 - 0.2) * 0.5, rtol=1e-5)  # half way down the cosine
    np.testing.assert_allclose(s(110), 0.2, rtol=1e-5)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.make_schedule(ml_collections.ConfigDict(dict(warmup_steps=-1, min_lr_ratio=0.0)), 10, 1.0)


def test_schedule_warmup_then_constant():
    cfg = ml_collections.ConfigDict(dict(warmup_steps=10, min_lr_ratio=0.0, schedule="constant"))
    s = optim.make_schedule(cfg, total_steps=100, peak=2.0)
    np.testing.assert_allclose([s(0), s(5), s(10), s(50), s(100), s(10_000)], [0.0, 1.0, 2.0, 2.0, 2.0, 2.0], rtol=1e-6)
    s = optim.make_schedule(ml_collections.ConfigDict(dict(warmup_steps=0, schedule="constant")), 100, 3e-4)
    np.testing.assert_allclose([s(0), s(99)], [3e-4, 3e-4], rtol=1e-6)
    with pytest.raises(ValueError, match=r"optim.schedule must be one of \('cosine', 'constant'\); got 'linear'"):
        optim.make_schedule(ml_collections.ConfigDict(dict(warmup_steps=0, schedule="linear")), 10, 1.0)


def test_adam_moments_take_their_parameters_sharding():
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    params = {"ssm": {"A_log": jnp.ones((3,))}, "other": {"w": jnp.ones((4, 3)), "b": jnp.ones((3,))}}
    shardings = {"ssm": {"A_log": NamedSharding(mesh, P("data"))},
                 "other": {"w": NamedSharding(mesh, P(None, "data")), "b": NamedSharding(mesh, P())}}
    c = common.base_config()
    c.optim.clip_norm = 1.0
    tx, _ = optim.make_optimizer(c.optim, 10)
    default = NamedSharding(mesh, P())
    out = optim.opt_state_shardings(jax.eval_shape(tx.init, params), params, shardings, default)
    specs = {jax.tree_util.keystr(k): s.spec for k, s in jax.tree_util.tree_leaves_with_path(
        out, is_leaf=lambda x: isinstance(x, NamedSharding))}
    mu_w = [s for k, s in specs.items() if k.endswith("mu['other']['w']")]
    nu_a = [s for k, s in specs.items() if k.endswith("nu['ssm']['A_log']")]
    assert mu_w == [P(None, "data")] and nu_a == [P("data")], specs
    counts = [s for k, s in specs.items() if "count" in k]
    assert counts and all(s == P() for s in counts)


def test_check_batch_names_ids_and_labels_out_of_range_on_either_side():
    lm, clf = tasks.LanguageModeling(), tasks.Classification()
    ok = {"inputs": np.array([[0, 5]]), "targets": np.array([[5, 0]]), "weights": np.ones((1, 2))}
    lm.check_batch(ok, 6, 6, "b")
    for bad, value in (({"inputs": np.array([[-1, 5]])}, -1), ({"targets": np.array([[6, 0]])}, 6)):
        with pytest.raises(ValueError, match=rf"b: `{next(iter(bad))}` holds token ids outside \[0, 6\).*\[{value}\] at 1 positions"):
            lm.check_batch({**ok, **bad}, 6, 6, "b")
    with pytest.raises(ValueError, match=r"`label` holds labels outside \[0, 3\).*\[-2\]"):
        clf.check_batch({"inputs": np.zeros((2, 4), int), "label": np.array([1, -2])}, 6, 3, "b")
    lm.check_batch({k: v[:0] for k, v in ok.items()}, 6, 6, "empty")  # no rows: nothing to refuse
