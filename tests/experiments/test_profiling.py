"""The trainer's profile window and the per-op table read from a jax.profiler trace."""

from __future__ import annotations

import glob
import json
import os

import jax
import jax.numpy as jnp
import pytest

from experiments import profiling, run, train
from tests.experiments.conftest import losses, tiny_config


@pytest.mark.parametrize("start, num, window", [(2, 2, (3, 4)), (4, 10, (5, 6))])
def test_a_profiled_run_trains_as_without_and_writes_its_op_table(tiny, tiny_reference, tmp_path, capsys, start, num, window):
    """The window opens at the first call from ``start_step`` and closes after ``num_steps`` steps,
    or at the last step when the run ends inside it; training is unchanged."""
    w = str(tmp_path)
    m = train.train_and_evaluate(tiny_config(**{"profile.start_step": start, "profile.num_steps": num}), w)
    assert losses(w) == losses(tiny_reference)
    assert losses(w, "validation") == losses(tiny_reference, "validation")
    trace_dir = os.path.join(w, "profile")
    assert glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    table = json.load(open(os.path.join(trace_dir, "ops.json")))
    steps = window[1] - window[0] + 1
    assert table["steps"] == steps
    assert table["ops"] and table["total_ms"] > 0
    assert sum(r["total_ms"] for r in table["ops"]) == pytest.approx(table["total_ms"], rel=1e-9)
    assert sum(c["pct"] for c in table["categories"]) == pytest.approx(100.0)
    # The traced steps ran the training step's module, once per step.
    modules = {r["module"] for r in table["ops"]}
    assert any("train_step" in m for m in modules), modules
    assert f"profile of steps {window[0]}-{window[1]}:" in capsys.readouterr().out
    assert open(os.path.join(trace_dir, "ops.md")).read().startswith("Device time by op")
    assert f"profile: {os.path.join(trace_dir, 'ops.md')}" in run._summary(m, w, 60.0, 6)


def test_no_profile_by_default(tiny, tiny_reference):
    assert not os.path.exists(os.path.join(tiny_reference, "profile"))
    assert "profile:" not in run._summary({"step": 6}, tiny_reference, 60.0, 6)


def test_op_table_counts_each_op_once_per_call(tmp_path):
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=0))
    x = jnp.ones((256, 256))
    f(x).block_until_ready()
    jax.profiler.start_trace(str(tmp_path))
    for _ in range(3):
        f(x).block_until_ready()
    jax.profiler.stop_trace()
    table = profiling.op_table(str(tmp_path))
    mine = [r for r in table["ops"] if "lambda" in r["module"]]
    assert mine, table["ops"]
    assert all(r["count"] % 3 == 0 for r in mine), mine
    text = profiling.markdown(table, top=2, steps=3)
    assert "per step (3 steps traced)" in text


def test_category_strips_the_instruction_number():
    assert profiling.category("fusion.12") == "fusion"
    assert profiling.category("custom-call.3") == "custom-call"
    assert profiling.category("loop_add_fusion") == "loop_add_fusion"
    assert profiling.category("input_reduce_fusion_45") == "input_reduce_fusion"  # a fusion's kernel


def test_bad_profile_settings_and_paths_are_named(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"config.profile.num_steps must be an int >= 0; got -1"):
        train.train_and_evaluate(tiny_config(**{"profile.num_steps": -1}), str(tmp_path / "w"))
    with pytest.raises(FileNotFoundError, match="no \\*.xplane.pb under"):
        profiling.op_table(str(tmp_path))


def test_nested_op_events_count_their_self_time():
    """A loop's event holds its body's events on the same line: each is counted once."""

    class Event:
        def __init__(self, start, end, op):
            self.start_ns, self.end_ns, self.duration_ns = start, end, end - start
            self.stats = [("hlo_op", op), ("hlo_module", "m")] if op else [("other", 1)]

    class Line:
        def __init__(self, *events):
            self.events = events

    line = Line(Event(0, 100, "while.1"), Event(10, 30, "fusion.1"), Event(40, 70, "fusion.2"),
                Event(45, 50, "fusion.3"), Event(80, 90, None), Event(120, 130, "fusion.1"))
    got = profiling._op_events([line])
    assert sorted(got) == sorted([("while.1", "m", 50.0), ("fusion.1", "m", 20.0), ("fusion.2", "m", 25.0),
                                  ("fusion.3", "m", 5.0), ("fusion.1", "m", 10.0)])


def test_a_missing_trace_and_bad_counts_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trace at"):
        profiling.op_table(str(tmp_path / "nowhere.xplane.pb"))
    with pytest.raises(SystemExit):
        profiling.main([str(tmp_path), "--top", "0"])


def test_kernels_inside_a_cuda_graph_get_their_own_rows():
    """On a GPU a kernel launched from a command buffer names the buffer as its HLO op."""

    class Event:
        def __init__(self, start, end, name, op):
            self.start_ns, self.end_ns, self.name = start, end, name
            self.stats = [("hlo_op", op), ("hlo_module", "jit_step")]

    class Line:
        def __init__(self, *events):
            self.events = events

    line = Line(Event(0, 50, "selective_scan_bwd_mosaic_gpu_kernel", "command_buffer_5"),
                Event(60, 70, "loop_add_fusion_2", "command_buffer_5"), Event(80, 90, "fusion_3", "fusion.3"))
    assert sorted(profiling._op_events([line])) == sorted([
        ("selective_scan_bwd_mosaic_gpu_kernel", "jit_step", 50.0), ("loop_add_fusion_2", "jit_step", 10.0),
        ("fusion.3", "jit_step", 10.0)])
