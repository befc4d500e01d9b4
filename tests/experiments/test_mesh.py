"""Mesh shapes (-1 fills), the one rules table and make_mesh, and the distributed start-up's checks."""

from __future__ import annotations

import jax
import ml_collections
import pytest

from experiments import mesh
from experiments.configs import common
from ssm_jax import parallel
from tests import xla_flags


def _m(data, fsdp, tensor, context=None):
    sizes = dict(data=data, fsdp=fsdp, tensor=tensor)
    if context is not None:
        sizes["context"] = context
    return ml_collections.ConfigDict(sizes)


def test_minus_one_fills_the_remaining_devices():
    assert mesh.resolve_mesh_shape(_m(-1, 1, 1), 8) == (8, 1, 1, 1)  # no `context` key: 1
    assert mesh.resolve_mesh_shape(_m(2, -1, 2), 8) == (2, 2, 2, 1)
    assert mesh.resolve_mesh_shape(_m(1, 2, -1), 8) == (1, 2, 4, 1)
    assert mesh.resolve_mesh_shape(_m(2, 2, 2), 8) == (2, 2, 2, 1)
    assert mesh.resolve_mesh_shape(_m(2, 1, 1, -1), 8) == (2, 1, 1, 4)
    assert mesh.resolve_mesh_shape(_m(-1, 1, 1, 4), 8) == (2, 1, 1, 4)


def test_one_rules_table():
    # The experiments' rules are the library's: `length` -> context, batch over (data, fsdp)
    # with the data-only fallback, and the trainer's batch axes come from the same table.
    assert common.DEFAULT_SHARDING_RULES is parallel.DEFAULT_RULES
    assert common.base_config().sharding_rules == parallel.DEFAULT_RULES
    assert ("length", "context") in parallel.DEFAULT_RULES
    assert mesh.batch_axes() == ("data", "fsdp") == parallel.logical_spec(("batch",), parallel.DEFAULT_RULES)[0]
    assert not hasattr(mesh, "make_mesh")  # one make_mesh: ssm_jax.parallel.make_mesh


def test_batch_axes_follow_the_config_rules():
    # The trainer splits the batch over the first `batch` rule of the config's own table.
    assert mesh.batch_axes([("embed", "fsdp"), ("batch", "data"), ("batch", ("data", "fsdp"))]) == ("data",)
    assert mesh.batch_axes([("batch", ["data", "context"])]) == ("data", "context")
    assert mesh.batch_axes([("batch", None)]) == ()
    assert mesh.batch_axes([("length", "context")]) == ()
    with pytest.raises(ValueError, match=r"batch rule names mesh axes \['rows'\]"):
        mesh.batch_axes([("batch", ("rows", "data"))])
    m = jax.make_mesh((1, 1, 1, 1), mesh.AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)
    assert mesh.batch_shards(m, ()) == 1 and mesh.batch_shards(m, ("data", "fsdp")) == 1


def test_base_config_has_a_context_axis():
    c = common.base_config()
    assert c.mesh.context == 1
    assert mesh.resolve_mesh_shape(c.mesh, 4) == (4, 1, 1, 1)


@pytest.mark.parametrize(
    "sizes, match",
    [((-1, -1, 1), "at most one -1"), ((3, -1, 1), "does not divide 8"), ((2, 2, 1), "uses 4 devices; there are 8"), ((0, 1, 1), "positive")],
)
def test_bad_mesh_shapes_raise(sizes, match):
    with pytest.raises(ValueError, match=match):
        mesh.resolve_mesh_shape(_m(*sizes), 8)


def test_mesh_from_config_on_this_host():
    m = mesh.mesh_from_config(_m(-1, 1, 1))
    assert m.axis_names == ("data", "fsdp", "tensor", "context") and m.shape["data"] >= 1
    assert m.shape["context"] == 1
    assert all(t == jax.sharding.AxisType.Auto for t in m.axis_types)
    # A context axis of 1 never switches the layers to the context-parallel ops.
    with jax.set_mesh(m):
        assert parallel.context_axis() is None


def test_distributed_needs_all_three_settings(monkeypatch):
    for var in (mesh.ENV_COORDINATOR, mesh.ENV_NUM_PROCESSES, mesh.ENV_PROCESS_ID):
        monkeypatch.delenv(var, raising=False)
    assert mesh.initialize_distributed() is False  # a single-process run
    assert mesh.initialize_distributed("localhost:1", 1, 0) is False  # one process: nothing to start
    with pytest.raises(ValueError, match="give all of.*num_processes=None"):
        mesh.initialize_distributed("localhost:1234")
    monkeypatch.setenv(mesh.ENV_NUM_PROCESSES, "2")
    with pytest.raises(ValueError, match="process_id=None"):
        mesh.initialize_distributed("localhost:1234")


@pytest.mark.slow
def test_lm_smoke_with_context_parallelism_equals_data_parallelism(tmp_path):
    """The LM config's ``context=2`` on 2 CPU devices trains like ``mesh.data=2``: the same losses."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np

    from experiments.metrics import read_metrics

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(root),
               XLA_FLAGS=xla_flags.flags(2))
    runs = {}
    for name, arg in (("data", "arch=mamba2,smoke"), ("context", "arch=mamba2,smoke,context=2")):
        w = tmp_path / name
        cmd = [sys.executable, "-m", "experiments.run", f"--config=experiments/configs/lm/gpt2_small.py:{arg}",
               f"--workdir={w}", "--config.progress_bar=False"]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        runs[name] = {r["step"]: r["loss"] for r in read_metrics(str(w), "train")}
        info = json.load(open(w / "run_info.json"))
        assert info["mesh"]["context"] == (2 if name == "context" else 1), info["mesh"]
    assert sorted(runs["context"]) == sorted(runs["data"]) and runs["data"]
    steps = sorted(runs["data"])
    np.testing.assert_allclose([runs["context"][s] for s in steps], [runs["data"][s] for s in steps], rtol=1e-5)
