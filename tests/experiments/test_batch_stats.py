"""The trainer and a model with running statistics (BatchNorm): the train step stores them,
microbatches thread them, evaluation reads them in eval mode, checkpoints keep them.

Runs the LRA ListOps smoke config with S4 and its recipe's post-norm BatchNorm."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import tasks, train
from experiments.configs.lra import listops
from experiments.data import registry
from tests.experiments.conftest import REPO, losses
from tests.numerics import assert_close
from tests import xla_flags


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One prepared copy of the smoke data for every run of this module."""
    return str(tmp_path_factory.mktemp("lra_data"))


def _config(data_dir, **overrides):
    c = listops.get_config("mixer=s4,smoke").unlock()
    c.model.norm, c.model.prenorm = "batch", False  # state-spaces/s4's s4-listops.yaml
    c.data.data_dir = data_dir
    c.progress_bar = False
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c.lock()


def _stats(model) -> dict:
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.BatchStat))}


def _fresh_model(c):
    """The model the trainer initializes (same seed), in train mode."""
    task = tasks.of(c.data)
    model = task.build_model(task.model_config(c.model.to_dict()), nnx.Rngs(c.seed))
    model.train()
    return task, model


def _first_batch(c, split="train"):
    batch = next(iter(registry.build(c.data, split=split, seed=c.seed, global_batch_size=c.data.batch_size)))
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _assert_stats_close(got: dict, want: dict, what: str):
    assert want and got.keys() == want.keys()
    for path in want:
        assert_close(got[path], want[path], name=f"{what} {'/'.join(map(str, path))}")


def test_a_train_step_stores_the_forwards_statistics_and_evaluation_reads_them(data_dir, tmp_path):
    c = _config(data_dir, total_steps=1)
    w = str(tmp_path / "run")
    metrics = train.train_and_evaluate(c, w)

    # What the step's forward leaves in the model: the initial model's train-mode forward on batch 1.
    task, model = _fresh_model(c)
    init = _stats(model)
    sums = nnx.jit(task.sums, static_argnums=2)(model, _first_batch(c), c.model.num_classes)
    expected = _stats(model)
    assert all(not np.allclose(expected[p], init[p]) for p in init)
    np.testing.assert_allclose(losses(w)[1], float(sums["loss_sum"] / sums["weight_sum"]), rtol=1e-5)

    # The checkpoint holds them, and load_model restores them with the parameters.
    restored, _, step = train.load_model(w)
    assert step == 1 and restored.layers[0].norm.use_running_average  # eval mode
    _assert_stats_close(_stats(restored), expected, "restored statistics")

    # Evaluation ran the model in eval mode on those statistics (smoke: one validation batch).
    val = _first_batch(c, "validation")
    sums = nnx.jit(task.sums, static_argnums=2)(restored, val, c.model.num_classes)
    np.testing.assert_allclose(metrics["validation/loss"], float(sums["loss_sum"] / sums["weight_sum"]), rtol=1e-5)
    restored.train()  # the same parameters with the batch's own statistics give another loss
    sums = nnx.jit(task.sums, static_argnums=2)(restored, val, c.model.num_classes)
    assert abs(metrics["validation/loss"] - float(sums["loss_sum"] / sums["weight_sum"])) > 1e-4


def _expected_first_step_stats(c) -> dict:
    """The statistics the initial model's train-mode forward on the first batch leaves (one device)."""
    task, model = _fresh_model(c)
    nnx.jit(task.sums, static_argnums=2)(model, _first_batch(c), c.model.num_classes)
    return _stats(model)


@pytest.mark.slow
def test_a_data_parallel_step_averages_over_the_global_batch(data_dir, tmp_path):
    """On 2 devices (the batch split over `data`) the statistics are those of the whole batch, as
    on one device, not of each device's half: GSPMD reduces them, and `rest` stays replicated."""
    w = str(tmp_path / "run")
    config = os.path.join(REPO, "experiments", "configs", "lra", "listops.py")
    cmd = [sys.executable, "-m", "experiments.run", f"--config={config}:mixer=s4,smoke", f"--workdir={w}",
           "--config.mesh.data=2", f"--config.data.data_dir={data_dir}", "--config.total_steps=1",
           "--config.progress_bar=False"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, XLA_FLAGS=xla_flags.flags(2))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert json.load(open(os.path.join(w, "run_info.json")))["mesh"]["data"] == 2
    c = _config(data_dir, total_steps=1)
    restored, _, _ = train.load_model(w)
    _assert_stats_close(_stats(restored), _expected_first_step_stats(c), "statistics on 2 devices")


def test_microbatches_update_the_statistics_one_after_the_other(data_dir, tmp_path):
    c = _config(data_dir, total_steps=1, **{"optim.grad_accum_steps": 2})
    w = str(tmp_path / "run")
    train.train_and_evaluate(c, w)
    task, model = _fresh_model(c)
    batch = _first_batch(c)
    whole = nnx.clone(model)
    sums = nnx.jit(task.sums, static_argnums=2)
    for m in range(2):  # microbatch m = rows m, m + 2 (experiments.steps)
        sums(model, jax.tree.map(lambda x: x[m::2], batch), c.model.num_classes)
    sums(whole, batch, c.model.num_classes)
    restored, _, _ = train.load_model(w)
    _assert_stats_close(_stats(restored), _stats(model), "statistics after two microbatches")
    # One forward over the whole batch would have given other statistics: the test can tell.
    assert any(not np.allclose(_stats(whole)[p], v, rtol=1e-3) for p, v in _stats(model).items())


@pytest.mark.slow
def test_a_resumed_run_continues_from_the_checkpointed_statistics(data_dir, tmp_path):
    """1 step, then resumed to 2, equals 2 steps in one go: the restored train state carries the
    statistics (a constant lr keeps the schedule independent of total_steps)."""
    const = {"optim.schedule": "constant", "checkpoint_every": 1}
    train.train_and_evaluate(_config(data_dir, total_steps=2, **const), str(tmp_path / "whole"))
    split = str(tmp_path / "split")
    train.train_and_evaluate(_config(data_dir, total_steps=1, **const), split)
    train.train_and_evaluate(_config(data_dir, total_steps=2, **const), split)
    (a, _, step_a), (b, _, step_b) = train.load_model(str(tmp_path / "whole")), train.load_model(split)
    assert step_a == step_b == 2
    _assert_stats_close(_stats(b), _stats(a), "statistics after resuming")
    init = _stats(_fresh_model(_config(data_dir))[1])
    assert all(not np.allclose(_stats(a)[p], v) for p, v in init.items())  # two updates happened
    np.testing.assert_allclose(losses(split)[2], losses(str(tmp_path / "whole"))[2], rtol=1e-5)
