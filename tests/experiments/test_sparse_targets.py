"""Sparse targets: the LM head only at the scored positions gives the full computation's loss
sums, metrics and gradients (fp32), for every synthetic task; dense datasets keep the full logits."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from experiments import steps, tasks
from experiments.data import registry
from ssm_jax.models import LanguageModel, LanguageModelConfig
from ssm_jax.nn import SSMParam
from tests.numerics import assert_close


def _smoke(module: str) -> ml_collections.ConfigDict:
    return importlib.import_module(f"experiments.configs.synthetic.{module}").get_config("mixer=mamba2,smoke")


def _model(vocab_size: int) -> LanguageModel:
    cfg = LanguageModelConfig.from_dict(dict(
        vocab_size=vocab_size, d_model=32, n_layers=2, mixer="mamba2", tie_embeddings=False,
        mamba2=dict(d_state=8, headdim=16, chunk_size=8)))
    model = LanguageModel(cfg, rngs=nnx.Rngs(0))
    model.eval()
    return model


def _sums_and_grads(task, model, batch, num_classes):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        m = nnx.merge(graphdef, p, rest)
        s = task.sums(m, batch, num_classes)
        return s["loss_sum"], s

    grads, sums = jax.grad(loss, has_aux=True)(params)
    return jax.device_get(sums), grads


@pytest.mark.parametrize("module,k", [("mqar", 4), ("selective_copying", None), ("induction_heads", 1)])
def test_sparse_head_gives_the_full_computations_sums_and_gradients(module, k):
    c = _smoke(module)
    sparse = tasks.of(c.data, "train")
    assert sparse.scored_positions == (k or int(c.data.num_tokens)) and sparse.scored_positions < c.data.get("seq_len", 32)
    batch = jax.tree.map(jnp.asarray, next(iter(registry.build(c.data, split="train", seed=0, global_batch_size=8))))
    sparse.check_batch(jax.device_get(batch), c.model.vocab_size, c.model.vocab_size, "test batch")
    model = _model(c.model.vocab_size)
    with jax.default_matmul_precision("float32"):
        want, want_g = _sums_and_grads(tasks.LanguageModeling(), model, batch, c.model.vocab_size)
        got, got_g = _sums_and_grads(sparse, model, batch, c.model.vocab_size)
    assert set(got) == set(want) == {"loss_sum", "weight_sum", "correct_sum", "seq_correct_sum", "seq_count"}
    assert want["weight_sum"] == float(np.sum(np.asarray(batch["weights"]) > 0)) > 0
    for key in ("weight_sum", "correct_sum", "seq_correct_sum", "seq_count"):
        assert got[key] == want[key], key
    assert_close(got["loss_sum"], want["loss_sum"], tol=1e-6, name="loss_sum")
    assert sparse.finalize(got).keys() == sparse.finalize(want).keys()
    head_grad = np.asarray(want_g["lm_head"]["kernel"][...])
    assert np.abs(head_grad).max() > 0  # the comparison below is not of zeros
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got_g), jax.tree.leaves(want_g), strict=True):
        assert_close(g, w, tol=1e-5, name=jax.tree_util.keystr(path))


def test_sparse_train_step_matches_the_dense_one():
    """Through the trainer's step (AdamW update, grad norm), sparse and dense agree after a step."""
    from experiments import optim
    from experiments.configs import common

    c = _smoke("mqar")
    batch = jax.tree.map(jnp.asarray, next(iter(registry.build(c.data, split="train", seed=0, global_batch_size=8))))
    model = _model(c.model.vocab_size)
    model.train()
    graphdef, ssm, other, rngs, rest = nnx.split(model, SSMParam, nnx.Param, nnx.RngState, ...)
    params = {"ssm": ssm, "other": other}
    tx, schedules = optim.make_optimizer(common.base_config().optim, 10)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params), "rest": rest}
    mesh = jax.make_mesh((1, 1), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)  # as experiments.mesh
    out = {}
    with jax.default_matmul_precision("float32"), jax.set_mesh(mesh):
        for name, task in (("dense", tasks.LanguageModeling()), ("sparse", tasks.of(c.data, "train"))):
            spec = steps.StepSpec(graphdef=graphdef, task=task, num_classes=c.model.vocab_size, tx=tx,
                                  lr=schedules["other"], accum=2, seed=0, mesh=mesh,
                                  batch_axes=("data", "fsdp"))
            out[name] = jax.jit(lambda s, r, b, spec=spec: steps.train_step(s, r, b, spec=spec))(state, rngs, batch)
    (dense_state, dense_m), (sparse_state, sparse_m) = out["dense"], out["sparse"]
    assert_close(sparse_m["loss_sum"], dense_m["loss_sum"], tol=1e-6, name="loss_sum")
    assert_close(sparse_m["grad_norm"], dense_m["grad_norm"], tol=1e-5, name="grad_norm")
    for a, b in zip(jax.tree.leaves(sparse_state["params"]), jax.tree.leaves(dense_state["params"]), strict=True):
        assert_close(a, b, tol=1e-5, name="updated params")


def test_dense_datasets_keep_the_full_logits():
    from experiments.configs.lm import gpt2_small

    c = gpt2_small.get_config("arch=mamba2,smoke")
    assert tasks.of(c.data, "train") == tasks.LanguageModeling(scored_positions=None)
    assert tasks.of(ml_collections.ConfigDict(dict(name="random_classification")), "train") == tasks.Classification()


def test_scored_positions_follow_each_split():
    c = _smoke("mqar").unlock()
    c.data.eval_settings = ((32, 8), (64, 3))
    assert tasks.of(c.data, "train").scored_positions == 4  # train_settings (16, 2), (32, 4)
    assert tasks.of(c.data, "test").scored_positions == 8  # the most pairs of eval_settings
    assert tasks.of(_smoke("induction_heads").data, "validation").scored_positions == 1


def test_a_row_with_more_scored_positions_than_declared_is_refused():
    task = tasks.LanguageModeling(scored_positions=2)
    weights = np.zeros((2, 8), np.float32)
    weights[1, [1, 4, 6]] = 1.0
    batch = {"inputs": np.zeros((2, 8), np.int32), "targets": np.zeros((2, 8), np.int32), "weights": weights}
    with pytest.raises(ValueError, match=r"batch 0: a row has 3 weighted positions, .* scored_positions=2"):
        task.check_batch(batch, 4, 4, "batch 0")
    with pytest.raises(ValueError, match=r"scored_positions must be None or an int >= 1; got 0"):
        tasks.LanguageModeling(scored_positions=0)


def test_scored_positions_gathers_every_weighted_position():
    weights = jnp.asarray([[0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]], jnp.float32)
    pos = np.asarray(tasks.scored_positions(weights, 2))
    assert pos.shape == (3, 2) and pos.dtype == np.int32
    assert sorted(pos[0]) == [1, 4] and 5 in pos[1] and len(set(pos[2])) == 2
    assert np.take_along_axis(np.asarray(weights), pos, 1).sum() == np.asarray(weights).sum()


def test_language_model_is_its_head_over_its_features():
    model = _model(64)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, size=(2, 16)), jnp.int32)
    h = model.features(ids)
    assert h.shape == (2, 16, 32) and h.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(model.head(h)), np.asarray(model(ids)))
    # The head is per position: a gathered position's logits are the full logits' row.
    np.testing.assert_array_equal(np.asarray(model.head(h[:, 5])), np.asarray(model(ids))[:, 5])
