"""Kernels under shard_map on every backend (pallas_kernels/_sharding.py).

The mesh-axis choice is tested on abstract meshes (no devices needed); the sharded kernel calls
run in subprocesses with 4 or 8 simulated CPU devices, the kernels in interpret mode (see
:mod:`tests.pallas_kernels.sharding_check` for what each run asserts).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import AxisType as T
from jax.sharding import PartitionSpec as P

from pallas_kernels import _sharding
from tests import xla_flags

ROOT = Path(__file__).resolve().parents[2]
X = np.zeros((4, 5, 8), np.float32)  # (b, l, d)
B2 = np.zeros((4, 5, 2, 3), np.float32)  # two groups
DIMS = {"batch": (0, 4), "inner": (2, 8)}


def _under(sizes, names, kinds):
    return jax.sharding.use_abstract_mesh(AbstractMesh(sizes, names, axis_types=kinds))


def test_no_mesh_no_split():
    assert _sharding.split_axes(X, DIMS) is None
    assert _sharding.selective_scan_specs(X, B2) is None


def test_auto_default_is_data_parallel_over_every_axis_that_divides():
    with _under((2, 2), ("rows", "cols"), (T.Auto, T.Auto)):
        assert _sharding.split_axes(X, DIMS) == {"batch": ("rows", "cols"), "inner": ()}
    with _under((2, 3), ("rows", "cols"), (T.Auto, T.Auto)):  # 3 does not divide b = 4
        assert _sharding.split_axes(X, DIMS) == {"batch": ("rows",), "inner": ()}


def test_auto_axes_come_from_the_rules_table():
    """The table comes from ``ssm_jax.parallel.use_rules`` (the trainer's one table), which
    validates it and hands it to the kernel layer."""
    from ssm_jax import parallel

    rules = [("batch", ["data", "fsdp"]), ("batch", "rows"), ("inner", "cols"), ("heads", None)]
    with _under((2, 2), ("rows", "cols"), (T.Auto, T.Auto)), parallel.use_rules(rules):
        assert _sharding.current_rules()[0] == ("batch", ("data", "fsdp"))  # validated: list -> tuple
        assert _sharding.split_axes(X, DIMS) == {"batch": ("rows",), "inner": ("cols",)}
        specs = _sharding.selective_scan_specs(X, B2)
        assert specs["x"] == P("rows", None, "cols") and specs["A"] == P("cols", None)
        assert specs["B"] == P("rows", None, "cols", None)  # one group per `cols` shard
        # Four channel shards would split a group of B/C: channels stay whole, batch still splits.
        assert _sharding.split_axes(X, DIMS, also_divides={"inner": (1,)}) == {"batch": ("rows",), "inner": ()}
    assert _sharding.current_rules() is None
    with pytest.raises(ValueError, match=r"`rules\[0\]` must be \(logical_name, mesh_axes\)"):
        with parallel.use_rules([("batch",)]):
            pass
    assert _sharding.current_rules() is None


def test_manual_axes_are_left_alone():
    """Inside a caller's shard_map (a context-parallel wrapper, say) the manual axes already
    hold shards: the helper splits only what is still Auto, and is a no-op when nothing is."""
    with _under((2, 2), ("rows", "cols"), (T.Manual, T.Auto)):
        assert _sharding.split_axes(X, DIMS) == {"batch": ("cols",), "inner": ()}
    with _under((2, 2), ("rows", "cols"), (T.Manual, T.Manual)):
        assert _sharding.split_axes(X, DIMS) is None


def _run(op: str, impl: str, mesh: str, devices: int, *extra: str):
    env = dict(os.environ, XLA_FLAGS=xla_flags.flags(devices), JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "tests.pallas_kernels.sharding_check", op, impl, mesh, *extra],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout[-3000:] + proc.stderr[-5000:]


KERNELS = [("ssd", "pallas_gpu"), ("selective_scan", "pallas_gpu"), ("ssd", "pallas_tpu"), ("selective_scan", "pallas_tpu")]


# make test runs each backend's kernels on one four-device mesh (Mosaic GPU: Auto rows; TPU: the
# 2 x 2 Explicit mesh); the other pairing of each runs with the slow tests.
_SLOW_FOUR_DEVICE = {("pallas_gpu", "explicit_2x2"), ("pallas_tpu", "auto_rows4")}
FOUR_DEVICE = [pytest.param(op, impl, mesh, marks=[pytest.mark.slow] if (impl, mesh) in _SLOW_FOUR_DEVICE else [])
               for mesh in ("auto_rows4", "explicit_2x2") for op, impl in KERNELS]


@pytest.mark.slow
def test_padded_ssd_kernel_stays_sharded_four_devices():
    """SSD at p = n = 16 (zero-padded to the GPU kernel's tiles inside each shard): the same
    checks as the tiled shapes -- values and gradients equal one device, no all-gather."""
    _run("ssd", "pallas_gpu", "auto_rows4", 4, "grad", "padded")


@pytest.mark.parametrize("op,impl,mesh", FOUR_DEVICE)
def test_sharded_kernel_equals_one_device_four_devices(op, impl, mesh):
    """4 devices: batch over a 1-D Auto mesh (default rules), or batch and heads/channels over a
    2 x 2 Explicit mesh (axes from the types). Values and gradients equal one device (1e-5),
    the compiled forward and gradient have no all-gather and no collective on a length axis,
    and y keeps x's sharding."""
    _run(op, impl, mesh, 4)


@pytest.mark.slow
@pytest.mark.parametrize("op,impl", KERNELS)
@pytest.mark.parametrize("mesh", ["explicit_rows4", "auto_2x2_rules", "auto_8", "explicit_8"])
def test_sharded_kernel_equals_one_device_more_meshes(op, impl, mesh):
    """The other meshes of sharding_check.MESHES: Explicit 1-D, Auto 2 x 2 by a rules table, and
    8 devices (batch over two axes; heads/channels over a third under Explicit)."""
    _run(op, impl, mesh, 8)


def _run_module(module: str, *args: str, devices: int = 4):
    env = dict(os.environ, XLA_FLAGS=xla_flags.flags(devices), JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout[-3000:] + proc.stderr[-5000:]


# make test keeps one mixer's kernel-forced training step (Mamba-2 on the TPU kernels); the
# selective-scan kernels' sharding is covered there by the four-device kernel cases.
@pytest.mark.parametrize("mixer,impl", [pytest.param("mamba", "pallas_tpu", marks=pytest.mark.slow), ("mamba2", "pallas_tpu"),
                                        pytest.param("mamba", "pallas_gpu", marks=pytest.mark.slow),
                                        pytest.param("mamba2", "pallas_gpu", marks=pytest.mark.slow)])
def test_sharded_training_step_with_kernels_equals_one_device(mixer, impl):
    """A 2-layer LM with the mixers' impl forced to a kernel: one AdamW step batch-sharded over 4
    devices equals the step on one device (loss, gradients, parameters), with no all-gather."""
    _run_module("tests.pallas_kernels.model_step_check", mixer, impl)
