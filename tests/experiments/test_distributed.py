"""The CLI in subprocesses: SIGTERM, Ctrl-C, 8 simulated devices, and 2 processes training together.

Each compares its losses with the single-device in-process reference run of the tiny config.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time

import numpy as np
import pytest

from experiments import run, stopping, train
from experiments.metrics import read_metrics
from tests.experiments.conftest import losses, run_tiny_cli, tiny_config


def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes_exactly(tiny, tiny_reference, tmp_path):
    w = str(tmp_path)
    # Batch 1 holds train examples 8..15: the signal arrives while the first steps run.
    out = run_tiny_cli(w, "--config.checkpoint_every=1000", env={"TINY_SIGTERM_AT_EXAMPLE": "9"})
    assert "Stopped by SIGTERM at step" in out and "checkpoint saved" in out, out[-2000:]
    stopped = losses(w)
    last = max(stopped)
    assert 1 <= last < 6
    assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == [str(last)]
    # The same run again (in-process this time) resumes from there and ends like the reference.
    metrics = train.train_and_evaluate(tiny_config(**{"checkpoint_every": 1000}), w)
    assert metrics["step"] == 6
    ref, got = losses(tiny_reference), losses(w)
    assert sorted(got) == list(range(1, 7))
    for step in range(1, 7):
        assert got[step] == ref[step], (step, got[step], ref[step])


def test_ctrl_c_saves_a_checkpoint_stops_cleanly_and_the_rerun_resumes(tiny, tiny_reference, tmp_path):
    """Issue 19: Ctrl-C aborted the process (exit 134, 'terminate called without an active
    exception') and saved nothing. A real training process gets SIGINT mid-run."""
    w = str(tmp_path)
    far = "--config.total_steps=1000000"
    proc = run_tiny_cli(w, far, "--config.eval_every=1000000", "--config.checkpoint_every=1000000", wait=False)
    metrics_file = os.path.join(w, "metrics.jsonl")
    deadline = time.monotonic() + 180
    while not (os.path.exists(metrics_file) and '"split": "train"' in open(metrics_file).read()):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no training step within 180 s"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == run.EXIT_INTERRUPTED, (proc.returncode, out[-3000:])
    assert "Fatal Python error" not in out and "terminate called" not in out and "Traceback" not in out, out[-3000:]
    assert "Ctrl-C: saving a checkpoint and stopping after this step" in out
    last = max(losses(w))
    assert f"Stopped by Ctrl-C (SIGINT) at step {last} of 1000000; checkpoint saved" in out, out[-2000:]
    assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == [str(last)]
    # The rerun (constant learning rate: total_steps may change) resumes at `last`, says so, and
    # its steps are the reference's (for the steps the reference has).
    metrics = train.train_and_evaluate(tiny_config(total_steps=last + 2, eval_every=1000000, checkpoint_every=1000000), w)
    assert metrics["step"] == last + 2
    got, ref = losses(w), losses(tiny_reference)
    assert [r["step"] for r in read_metrics(w, "train")] == list(range(1, last + 3))  # each step once
    for step in range(1, min(6, last + 2) + 1):
        assert got[step] == ref[step], (step, got[step], ref[step])


def test_a_second_ctrl_c_stops_at_once():
    previous = signal.getsignal(signal.SIGINT)
    signals = stopping.StopSignals(multiprocess=False)
    try:
        assert signal.getsignal(signal.SIGINT) != previous
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs in the main thread between bytecodes
        assert signals.requested == "SIGINT" and signals.reached(3)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        assert signal.getsignal(signal.SIGINT) == previous  # handed back before raising
    finally:
        signals.restore()


def test_8_devices_data_fsdp_tensor_sharded_equals_one_device(tiny_reference, tmp_path):
    """Resume the 1-device reference from its step-3 checkpoint on a (2, 2, 2) mesh: the restore
    lands on the sharded layout, and steps 4-6 and the evaluations match the 1-device run."""
    w = str(tmp_path)
    os.makedirs(os.path.join(w, "checkpoints"))
    shutil.copy(os.path.join(tiny_reference, "config.json"), w)
    shutil.copytree(os.path.join(tiny_reference, "checkpoints", "3"), os.path.join(w, "checkpoints", "3"))
    run_tiny_cli(w, "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2", devices=8)
    info = json.load(open(os.path.join(w, "run_info.json")))
    assert info["devices"] == 8 and info["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2, "context": 1}
    specs = info["partition_specs"]
    assert specs["['other']['embed'].value"] == ["tensor", "fsdp"]  # (vocab, embed)
    assert specs["['other']['w_in'].value"] == ["fsdp", "tensor"]  # (embed, inner)
    assert specs["['ssm']['a_logit'].value"] == ["fsdp"]  # (embed,)
    assert sorted(losses(w)) == [4, 5, 6]
    _assert_same_run(w, tiny_reference, train_steps=(4, 5, 6), validation_steps=(6,))


def _assert_same_run(w, ref_dir, train_steps=range(1, 7), validation_steps=(3, 6)):
    """Train losses, validation losses and the replicated-batch evaluation match the reference."""
    for split, steps in (("train", train_steps), ("validation", validation_steps), ("odd_batch", (6,))):
        ref, got = losses(ref_dir, split), losses(w, split)
        np.testing.assert_allclose([got[s] for s in steps], [ref[s] for s in steps], rtol=2e-5, err_msg=split)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_together(tiny_reference, tmp_path):
    w = str(tmp_path)
    port = _free_port()
    procs = [
        run_tiny_cli(w, f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
                     wait=False)
        for i in range(2)
    ]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out[-4000:]
        outs.append(out)
    info = json.load(open(os.path.join(w, "run_info.json")))
    assert info["process_count"] == 2 and info["devices"] == 2
    _assert_same_run(w, tiny_reference)
    # Process 1 reports the same final loss as process 0 logged.
    line = next(l for l in outs[1].splitlines() if l.startswith("process 1 of 2"))
    assert f"train loss {losses(w)[6]:.6f}" in line, line


def test_ctrl_c_on_one_of_two_processes_stops_both_at_one_step(tmp_path):
    """Ctrl-C reaches one process of a jax.distributed run: it is forwarded to JAX's preemption
    notifier, so both processes save the same step and stop."""
    w = str(tmp_path)
    port = _free_port()
    far = ("--config.total_steps=1000000", "--config.eval_every=1000000", "--config.checkpoint_every=1000000")
    procs = [run_tiny_cli(w, *far, f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
                          wait=False) for i in range(2)]
    metrics_file = os.path.join(w, "metrics.jsonl")
    deadline = time.monotonic() + 180
    while not (os.path.exists(metrics_file) and '"split": "train"' in open(metrics_file).read()):
        assert all(p.poll() is None for p in procs), [p.communicate()[0][-2000:] for p in procs]
        assert time.monotonic() < deadline, "no training step within 180 s"
        time.sleep(0.1)
    procs[0].send_signal(signal.SIGINT)
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [run.EXIT_INTERRUPTED, 0], outs
    (saved,) = os.listdir(os.path.join(w, "checkpoints"))
    assert f"Stopped by Ctrl-C (SIGINT) at step {saved} of 1000000; checkpoint saved" in outs[0], outs[0][-2000:]
    assert f"process 1 of 2: stopped by a stop signal (checkpoint saved) at step {saved}," in outs[1], outs[1][-2000:]
