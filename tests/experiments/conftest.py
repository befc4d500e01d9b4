"""Fixtures of the runner tests: a TinyLM reference run, and helpers to run the CLI in a subprocess."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from experiments.metrics import read_metrics
from tests import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_CONFIG = os.path.join(REPO, "tests", "experiments", "tiny_config.py")


def tiny_config(arg=None, **overrides):
    spec = importlib.util.spec_from_file_location("tiny_config", TINY_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def losses(workdir: str, split: str = "train") -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(workdir, split)}


def run_tiny_cli(workdir, *flags, env=None, wait=True, devices=1):
    """``python -m tests.experiments.tiny_run --config=tiny_config.py --workdir=...`` in a subprocess."""
    full_env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    full_env["XLA_FLAGS"] = xla_flags.flags(devices)
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "tests.experiments.tiny_run", f"--config={TINY_CONFIG}", f"--workdir={workdir}", *flags]
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{out[-4000:]}"
    return out


@pytest.fixture
def tiny(monkeypatch):
    """Make the trainer build TinyLM for this test."""
    from tests.experiments import tiny_model

    tiny_model.install(monkeypatch)


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory):
    """An uninterrupted in-process run of the tiny config (6 steps) on one device: its workdir."""
    from experiments import train
    from tests.experiments import tiny_model

    workdir = str(tmp_path_factory.mktemp("tiny_reference"))
    with pytest.MonkeyPatch.context() as mp:
        tiny_model.install(mp)
        metrics = train.train_and_evaluate(tiny_config(), workdir)
    assert metrics["step"] == 6
    return workdir
