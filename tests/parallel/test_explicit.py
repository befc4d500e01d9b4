"""Every op and layer under meshes whose axes are ``AxisType.Explicit`` (sharding in types).

Each test runs ``explicit_script.py`` in a subprocess with simulated CPU devices (a ``data x
tensor`` mesh). The script checks values and gradients against the same call without a mesh
(fp32, 1e-5 relative) and that the output keeps the input's sharding; see its docstring.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("explicit_script.py")
CASES = ("selective_scan", "ssd", "hydra", "conv", "s4", "layers", "models")
# The models case (every LM mixer, loop and scanned: ~90 s on two cores) runs with the slow tests;
# the layers it is built from run in CI.
FAST = [c if c != "models" else pytest.param(c, marks=pytest.mark.slow) for c in CASES]


def run(devices: int, *cases: str) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(SCRIPT), str(devices), *cases], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("OK"), proc.stdout + proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.parametrize("case", FAST)
def test_four_devices(case):
    out = run(4, case)
    assert out.count("PASS") >= 1, out


@pytest.mark.slow
def test_eight_devices():
    # data x tensor = 2 x 4: channels / heads split four ways.
    run(8, *CASES)
