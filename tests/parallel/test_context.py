"""Context (sequence) parallelism: sharded ops equal the single-device ops on 4 and 8 CPU devices.

Each test runs ``context_script.py`` in a subprocess with simulated CPU devices (the device count
is fixed when jax starts). The script checks values and gradients (fp32, 1e-5 relative), that
the uncorrected shards are wrong, that the compiled HLO has no collective with a length-sized
axis and that the output keeps the input's sharding.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("context_script.py")
OPS = ("selective_scan", "ssd", "hydra", "conv", "s4", "models")


def run(devices: int, mesh: str, *cases: str) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(SCRIPT), str(devices), mesh, *cases], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr[-4000:]
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("OK"), out
    return proc.stdout


@pytest.mark.parametrize("case", OPS + ("errors",))
def test_four_devices(case):
    out = run(4, "context=4", case)
    assert out.count("PASS") >= 1, out


@pytest.mark.slow
@pytest.mark.parametrize("case", OPS)
def test_eight_devices(case):
    run(8, "context=8", case)


def test_eight_devices_data_and_context():
    # batch over `data`, length over `context`: the output keeps both.
    run(8, "data=2,context=4", "ssd")


@pytest.mark.slow
def test_kernels_in_interpret_mode():
    # The Mosaic TPU kernels (TPU interpret mode on CPU) as the per-shard op.
    out = run(4, "context=4", "kernels")
    assert "selective_scan[pallas_tpu]" in out and "ssd[pallas_tpu]" in out, out


def test_explicit_mesh_axes():
    # Sharding in types (jax.make_mesh's default axis type): inputs are resharded onto `context`
    # before the shard_map and the final state is gathered before its last row is taken.
    run(4, "context=4", "explicit")


@pytest.mark.slow
def test_mosaic_gpu_kernels_in_interpret_mode():
    # jax 0.11.2's Mosaic GPU interpreter needs tests.pallas_kernels.gpu_interpret's repair to run
    # under a multi-device shard_map (its state is one global shared by the simulated devices).
    run(4, "context=4", "gpu_kernels")
