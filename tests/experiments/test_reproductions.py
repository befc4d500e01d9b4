"""The reproduction figures and the sweep helper, on recorded and on made-up runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from benchmarks import lra as benchmarks_lra
from experiments import reproductions, sweep
from experiments.configs.lra import base as lra_base
from experiments.metrics import read_metrics
from tests.experiments.conftest import REPO

RUNS = os.path.join(REPO, "docs", "reproductions", "runs")


def _write_run(root, name, rows):
    os.makedirs(os.path.join(root, name))
    with open(os.path.join(root, name, "metrics.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _doc_table_rows(start: str, end: str | None = None) -> list[list[str]]:
    """The cells of every table line of docs/reproductions.md between the headings ``start`` and ``end``."""
    with open(os.path.join(REPO, "docs", "reproductions.md")) as f:
        text = f.read()
    section = text[text.index(start):text.index(end) if end else None]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines() if line.startswith("|")]


def test_recorded_induction_heads_runs_back_the_documented_claims():
    # docs/reproductions.md: Mamba 100% at every length 2^6 .. 2^20 after training at 256.
    table = reproductions.length_table(os.path.join(RUNS, "induction_heads"))
    assert sorted(table["mamba_s0"]) == [2**k for k in range(6, 21)]
    assert all(v == 1.0 for v in table["mamba_s0"].values())
    assert max(table["s4d_s0"].values()) < 0.2
    assert table["attention_s0"][2**12] < 0.6 < table["attention_s0"][256]


def test_figures_are_written_from_the_recorded_runs(tmp_path):
    os.symlink(RUNS, tmp_path / "runs")
    written = reproductions.main([str(tmp_path)])
    assert {os.path.basename(p) for p in written} >= {"induction_heads_lengths.png", "selective_copying_curves.png"}
    for p in written:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_mqar_table_takes_each_runs_last_evaluation(tmp_path):
    root = str(tmp_path)
    for name, acc in (("mamba_d64_lr0.001_s0", 0.2), ("mamba_d64_lr0.01_s0", 0.6), ("mamba2_d128_lr0.001_s0", 0.9)):
        _write_run(root, name, [{"step": 1, "split": "L256_kv64", "accuracy": 0.0},
                                {"step": 2, "split": "L256_kv64", "accuracy": acc}])
    _write_run(root, "notes", [{"step": 1, "split": "train", "accuracy": 1.0}])  # not a sweep name: ignored
    assert reproductions.mqar_table(root) == {"mamba": {64: [0.2, 0.6]}, "mamba2": {128: [0.9]}}
    with pytest.raises(ValueError, match="has a 'L64_kv4' evaluation"):
        reproductions.mqar_table(root, "L64_kv4")
    with pytest.raises(FileNotFoundError, match="no runs directory"):
        reproductions.length_table(str(tmp_path / "missing"))


def _grid_module(tmp_path, runs: str):
    """A config module: the demo config, and ``get_sweep`` returning the expression ``runs``."""
    module = tmp_path / "grid.py"
    demo = os.path.join(REPO, "experiments", "configs", "synthetic", "demo.py")
    module.write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('demo', {demo!r})\n"
        "demo = importlib.util.module_from_spec(spec); spec.loader.exec_module(demo)\n"
        "get_config = demo.get_config\n"
        f"def get_sweep(arg=None):\n    return {runs}\n"
    )
    return module


def test_sweep_runs_a_modules_grid_and_collects_the_table(tmp_path, monkeypatch):
    module = _grid_module(tmp_path, "[(f'lr{lr}', 'smoke', {'optim.lr': lr, 'total_steps': 3, 'eval_every': 3}) "
                                    "for lr in (0.01, 0.03)]")
    monkeypatch.setenv("PYTHONPATH", REPO)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    rows = sweep.run_sweep(str(module), str(tmp_path / "w"), parallel=2)
    assert [r["name"] for r in rows] == ["lr0.01", "lr0.03"]
    for r in rows:
        assert r["step"] == 3 and 0 <= r["metrics"]["validation/accuracy"] <= 1
    a, b = (r["metrics"]["validation/loss"] for r in rows)
    assert a != b  # the override reached each run
    again = sweep.collect(str(tmp_path / "w"))
    assert [(r["name"], r["overrides"]) for r in again] == [(r["name"], r["overrides"]) for r in rows]
    table = sweep.markdown(rows)
    assert "| lr0.01 | 3 |" in table and "validation/accuracy" in table
    with pytest.raises(ValueError, match="defines no get_sweep"):
        sweep.load_sweep(os.path.join(REPO, "tests", "experiments", "tiny_config.py"))
    np.testing.assert_equal(len(sweep.load_sweep(os.path.join(REPO, "experiments/configs/synthetic/mqar.py"))[1]), 36)


def test_sigterm_to_a_sweep_stops_its_runs_with_a_checkpoint_and_starts_no_more(tmp_path):
    module = _grid_module(tmp_path, "[(f'r{i}', 'smoke', {'seed': i, 'total_steps': 1_000_000, 'log_every': 1, "
                                    "'eval_every': 1_000_000, 'checkpoint_every': 1_000_000}) for i in range(3)]")
    work = tmp_path / "w"
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    sweep_proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.sweep", f"--config={module}", f"--workdir={work}", "--parallel=2"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        # Both running runs are training (they have written a train row) before the signal; a
        # signal during setup stops a run with nothing to save, as it should.
        def training(i):
            path = work / f"r{i}" / "metrics.jsonl"
            return path.exists() and '"split": "train"' in path.read_text()

        while not all(training(i) for i in range(2)):
            assert sweep_proc.poll() is None and time.time() < deadline, sweep_proc.stdout.read()
            time.sleep(0.5)
        sweep_proc.send_signal(signal.SIGTERM)
        out, _ = sweep_proc.communicate(timeout=180)
    finally:
        if sweep_proc.poll() is None:
            sweep_proc.kill()
    assert sweep_proc.returncode == 0, out
    assert "not starting ['r2']" in out and not (work / "r2").exists()
    for i in range(2):
        log = (work / f"r{i}" / "sweep.log").read_text()
        assert "SIGTERM: saving a checkpoint" in log, log
        saved = os.listdir(work / f"r{i}" / "checkpoints")
        steps = [int(d) for d in saved if d.isdigit()]
        assert steps and 0 < max(steps) < 1_000_000, (saved, log[-3000:])  # saved where the signal stopped it
    assert (work / "sweep.md").exists()


def test_sweeps_sharing_a_workdir_keep_each_others_rows(tmp_path):
    # A grid run a slice at a time: each slice's collect must keep the other slices' rows
    # (before, sweep.json held only the last slice, and --collect lost the others' overrides).
    root = str(tmp_path)
    for name in ("a_lr1", "b_lr1"):
        _write_run(root, name, [{"step": 5, "split": "validation", "accuracy": 0.5}])
    sweep.collect(root, runs=[("a_lr1", "mixer=a", {"optim.lr": 1})])
    sweep.collect(root, runs=[("b_lr1", "mixer=b", {"optim.lr": 1})])
    with open(os.path.join(root, "sweep.json")) as f:
        assert [(r["name"], r["arg"]) for r in json.load(f)] == [("a_lr1", "mixer=a"), ("b_lr1", "mixer=b")]
    rows = sweep.collect(root)
    assert [(r["name"], r["arg"], r["overrides"], r["step"]) for r in rows] == [
        ("a_lr1", "mixer=a", {"optim.lr": 1}, 5), ("b_lr1", "mixer=b", {"optim.lr": 1}, 5)]


def test_the_sweep_table_marks_runs_cut_off_before_their_schedule_ends(tmp_path):
    root = str(tmp_path)
    for name, total in (("done", 5), ("cut", 20), ("stopped", 20), ("no_config", None)):
        _write_run(root, name, [{"step": 5, "split": "validation", "accuracy": 0.5}])
        if total:
            with open(os.path.join(root, name, "config.json"), "w") as f:
                json.dump({"total_steps": total}, f)
    with open(os.path.join(root, "stopped", "early_stop.json"), "w") as f:
        json.dump({"step": 5}, f)
    steps = {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in sweep.markdown(sweep.collect(root)).splitlines()[2:]}
    assert steps == {"cut": "5 of 20 (unfinished)", "done": "5", "no_config": "5", "stopped": "5 (early stop)"}


def test_recorded_mqar_runs_back_the_documented_claims():
    # docs/reproductions.md: attention solves (256, 64) at every width run; at d_model 64 Mamba-2
    # beats Mamba at equal state size, best learning rate and at each one; at 128 see below.
    table = reproductions.mqar_table(os.path.join(RUNS, "mqar"))
    assert sorted(table["attention"]) == [64, 128, 256]
    assert all(max(v) > 0.99 for v in table["attention"].values())
    recorded = reproductions._runs(os.path.join(RUNS, "mqar"))
    runs = {n: reproductions._last(r, "L256_kv64") for n, r in recorded.items()}
    for lr in ("0.001", "0.0032", "0.01", "0.032"):
        assert runs[f"mamba2_d64_lr{lr}_s0"] > runs[f"mamba_d64_lr{lr}_s0"]
    assert max(table["mamba2"][64]) > 0.9 and max(table["mamba"][64]) < 0.8  # 91.8% and 77.2%
    # d_model 128 (the two middle rates finished): a tie at (256, 64), Mamba-2 ahead at (512, 128).
    assert abs(max(table["mamba2"][128]) - max(table["mamba"][128])) < 0.005  # 98.1% each
    for lr in ("0.0032", "0.01"):
        longer = {m: reproductions._last(recorded[f"{m}_d128_lr{lr}_s0"], "L512_kv128") for m in ("mamba", "mamba2")}
        assert longer["mamba2"] > longer["mamba"] + 0.15
    assert runs["mamba_d128_lr0.032_s0"] < 0.01  # did not learn over the whole schedule
    # d_model 256 (the two middle rates finished): Mamba-2 ahead on the training settings (98.4%
    # against 87.2%) and at (512, 128) at 3.2e-3; Mamba ahead at (1024, 256) there (45.4 / 36.4%).
    assert max(table["mamba2"][256]) > max(table["mamba"][256]) + 0.1
    at = {(m, s): reproductions._last(recorded[f"{m}_d256_lr0.0032_s0"], s)
          for m in ("mamba", "mamba2") for s in ("L512_kv128", "L1024_kv256")}
    assert at["mamba2", "L512_kv128"] > at["mamba", "L512_kv128"] + 0.05
    assert at["mamba", "L1024_kv256"] > at["mamba2", "L1024_kv256"] + 0.05


def _fake_mps_control(tmp_path, exit_code=0):
    """A stand-in ``nvidia-cuda-mps-control`` on PATH that logs its arguments, pipe directory and stdin."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "mps.log"
    exe = bin_dir / "nvidia-cuda-mps-control"
    exe.write_text(f"#!/bin/sh\necho \"args=$* pipe=$CUDA_MPS_PIPE_DIRECTORY stdin=$(cat)\" >> {log}\n"
                   f"echo 'cannot start' >&2\nexit {exit_code}\n")
    exe.chmod(0o755)
    return str(bin_dir), log


def test_sweep_with_mps_runs_through_a_server_of_its_own_and_quits_it(tmp_path, monkeypatch):
    bin_dir, log = _fake_mps_control(tmp_path)
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("PYTHONPATH", REPO)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    seen = []
    popen = subprocess.Popen

    def recording_popen(cmd, *args, **kwargs):
        if "experiments.run" in cmd:
            seen.append(kwargs["env"].get("CUDA_MPS_PIPE_DIRECTORY"))
        return popen(cmd, *args, **kwargs)

    monkeypatch.setattr(sweep.subprocess, "Popen", recording_popen)
    module = _grid_module(tmp_path, "[('one', 'smoke', {'total_steps': 1, 'eval_every': 1})]")
    rows = sweep.run_sweep(str(module), str(tmp_path / "w"), mps=True)
    assert rows[0]["step"] == 1
    start, quit_ = log.read_text().splitlines()
    pipe = start.split("pipe=")[1].split(" ")[0]
    assert start.startswith("args=-d ") and pipe.startswith(tempfile.gettempdir())
    assert seen == [pipe]  # the run was routed through this sweep's server
    assert quit_ == f"args= pipe={pipe} stdin=quit" and not os.path.exists(pipe)


def test_sweep_mps_errors_name_the_cause(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-cuda-mps-control
    with pytest.raises(ValueError, match="--mps needs nvidia-cuda-mps-control"):
        sweep.MPSServer()
    bin_dir, _ = _fake_mps_control(tmp_path, exit_code=1)
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + "/usr/bin:/bin")
    with pytest.raises(RuntimeError, match=r"mps-control -d failed \(exit 1\): cannot start"):
        sweep.MPSServer()


def _mqar_doc_rows():
    """The MQAR table of docs/reproductions.md: ``[(run name, steps cell, validation, [test accuracies])]``."""
    rows = []
    for cells in _doc_table_rows("### MQAR", "## Long Range Arena"):
        cells = [c.strip("*") for c in cells]
        if len(cells) != 6 or not cells[1].isdigit() or cells[3] == "not run":
            continue
        mixer = {"attention": "attention", "mamba": "mamba", "mamba-2": "mamba2"}[cells[0].split(" ")[0].lower()]
        lr = f"{float(cells[2]):g}"
        tests = [float(v.strip().strip("*")) for v in cells[5].split(",")] if cells[5] != "—" else []
        rows.append((f"{mixer}_d{cells[1]}_lr{lr}_s0", cells[3], float(cells[4]), tests))
    return rows


def test_the_mqar_table_in_the_docs_is_the_recorded_runs():
    # Every number of the table was copied from a run's metrics.jsonl: check each against it.
    rows = _mqar_doc_rows()
    assert len(rows) >= 36
    runs = reproductions._runs(os.path.join(RUNS, "mqar"))
    settings = ["L64_kv4", "L64_kv8", "L64_kv16", "L128_kv32", "L256_kv64", "L512_kv128", "L1024_kv256"]
    for name, steps, validation, tests in rows:
        records = runs[name]
        assert round(100 * reproductions._last(records, "validation"), 1) == validation, name
        assert steps.replace(",", "").split(" ")[0] == str(max(r["step"] for r in records)), name
        if tests:
            assert [round(100 * reproductions._last(records, s), 1) for s in settings] == tests, name


def test_the_induction_heads_table_in_the_docs_is_the_recorded_runs():
    table = reproductions.length_table(os.path.join(RUNS, "induction_heads"))
    names = {"mamba": "mamba_s0", "mamba-2": "mamba2_s0", "s4d": "s4d_s0", "attention": "attention_s0"}
    checked = 0
    for cells in _doc_table_rows("### Induction heads", "### Selective copying"):
        if len(cells) != 6 or cells[0].split(" ")[0].lower() not in names:
            continue
        run = table[names[cells[0].split(" ")[0].lower()]]
        doc = [v.strip().strip("*") for v in cells[4].split("(")[0].replace("*", "").split(",")]
        for k, v in zip(range(6, 21, 2), doc):
            assert (v == "—" and 2**k not in run) or round(100 * run[2**k], 1) == float(v), (cells[0], 2**k)
        checked += 1
    assert checked == 4


def test_the_selective_copying_table_in_the_docs_is_the_recorded_runs():
    # Each "a / b / c% at 10K / 20K / 40K" and "**x%** (y%) at 90K" of the table against the run's
    # validation rows, to the digits the table shows (the row's run named by its GPU, date and lr).
    row_runs = {("Mamba", "H100, 2026-12-07 (run 3)"): "mamba_s0_h100_92k", ("Mamba-2", "H100, 2026-12-07"): "mamba2_s0_h100",
                ("Mamba", "H100, 2026-12-07 (run 2)"): "mamba_s0_h100", ("Mamba", "H200, 2026-12-02"): "mamba_s0_h200"}
    evaluated_afterwards = {("mamba_s0_h100", 83860)}  # experiments.evaluate of a later checkpoint, not a logged row
    checked = set()
    for cells in _doc_table_rows("### Selective copying", "### MQAR"):
        if len(cells) != 8 or (cells[0].split(" ")[0], cells[3]) not in row_runs:
            continue
        run = row_runs[(cells[0].split(" ")[0], cells[3])]
        rows = {r["step"]: r for r in read_metrics(os.path.join(RUNS, "selective_copying", run), "validation")}
        for part in cells[6].replace("*", "").split(";"):
            m = re.fullmatch(r"\s*([\d. /]+)% (?:\(([\d.]+)%\) )?(?:\(a spike\) )?at ([\dK,. /]+?)(?: \(.*\))?\s*", part)
            if m is None:
                continue
            values = [v.strip() for v in m.group(1).split("/")]
            steps = [int(float(s.strip().replace(",", "").rstrip("K")) * (1000 if "K" in s else 1)) for s in m.group(3).split("/")]
            assert len(values) == len(steps), part
            for v, s in zip(values, steps):
                if (run, s) in evaluated_afterwards:
                    continue
                digits = len(v.split(".")[1]) if "." in v else 0
                assert round(100 * rows[s]["accuracy"], digits) == float(v), (run, s)
                checked.add((run, s))
            if m.group(2) and (run, steps[-1]) not in evaluated_afterwards:
                assert round(100 * rows[steps[-1]]["seq_accuracy"], 1) == float(m.group(2)), (run, steps[-1])
    assert {r for r, _ in checked} == set(row_runs.values()) and len(checked) >= 20


def test_the_lra_epoch_time_table_in_the_docs_is_the_recorded_rows():
    with open(os.path.join(REPO, "benchmarks", "results", "lra_h100.jsonl")) as f:
        recorded = {(r["task"], r["mixer"]): r for r in map(json.loads, f)}
    mixers = {"S4": "s4", "S4D": "s4d", "Mamba": "mamba", "Mamba-2": "mamba2", "Hydra": "hydra"}
    checked = 0
    for cells in _doc_table_rows("### Epoch times"):
        if len(cells) != 11 or cells[1] not in mixers:
            continue
        r = recorded[(cells[0].lower().replace("-", ""), mixers[cells[1]])]
        assert int(cells[3]) == round(r["examples_per_sec"]), cells[:2]
        assert float(cells[4].rstrip("M")) == round(r["tokens_per_sec"] / 1e6, 2), cells[:2]
        assert float(cells[5]) == round(r["step_ms"], 1) and int(cells[6]) == round(r["epoch_s"]), cells[:2]
        if cells[7]:
            assert float(cells[7]) == round(r["peak_memory_bytes"] / 1e9, 1), cells[:2]
            assert int(cells[8]) == round(r["compile_s"]), cells[:2]
        # every row against the s4 repository's epoch time (one table of them: base.S4_REPO_NOTES)
        notes = lra_base.S4_REPO_NOTES[r["task"]]
        vs = benchmarks_lra.vs_s4_repo(r["task"], r["epoch_s"])["vs_s4_repo"]
        assert cells[9] == f"{vs:.1f}x ({notes['epoch_minutes']:g} min, {notes['device']})", cells[:2]
        if "vs_s4_repo" in r:  # rows recorded with the ratio: the same one
            assert r["vs_s4_repo"] == pytest.approx(vs), cells[:2]
        checked += 1
    assert checked == len(recorded) == 27


def test_seeds_of_one_config_pool_into_mean_and_spread(tmp_path):
    root = str(tmp_path)
    # three seeds of mamba (0.5, 0.7, 0.9 at the end; an earlier evaluation must not count), one of
    # s4d, a seed tag after the seed (mamba2_s0_h100), and a run cut off before its evaluation
    for seed, acc in ((0, 0.5), (1, 0.7), (2, 0.9)):
        _write_run(root, f"mamba_s{seed}", [{"step": 1, "split": "validation", "accuracy": 0.0},
                                            {"step": 2, "split": "validation", "accuracy": acc}])
    _write_run(root, "s4d_s0", [{"step": 2, "split": "validation", "accuracy": 0.25}])
    _write_run(root, "mamba2_s0_h100", [{"step": 2, "split": "validation", "accuracy": 0.75}])
    _write_run(root, "mamba2_s1_h100", [{"step": 2, "split": "train", "accuracy": 0.1}])
    summary = reproductions.seed_summary(root)
    assert set(summary) == {"mamba", "s4d", "mamba2_h100"}
    m = summary["mamba"]
    assert m["seeds"] == [0, 1, 2] and m["n"] == 3
    np.testing.assert_allclose([m["mean"], m["std"], m["min"], m["max"]], [0.7, 0.2, 0.5, 0.9])
    assert summary["s4d"]["std"] is None and summary["s4d"]["mean"] == 0.25
    assert summary["mamba2_h100"]["n"] == 1 and summary["mamba2_h100"]["missing"] == ["mamba2_s1_h100"]
    table = reproductions.seed_markdown(summary)
    assert "| mamba | 3: 0, 1, 2 | 70.0 | 20.0 | 50.0 - 90.0 |" in table
    assert "| s4d | 1: 0 | 25.0 | — | 25.0 - 25.0 |" in table
    assert "no evaluation: mamba2_s1_h100" in table
    with pytest.raises(ValueError, match="has a 'L64_kv4'"):
        reproductions.seed_summary(root, "L64_kv4")


def test_length_curves_draw_seeds_of_one_config_as_a_mean_with_a_band(tmp_path):
    root = str(tmp_path)
    for seed, accs in ((0, (1.0, 0.5, 0.2)), (1, (1.0, 0.7, 0.0))):
        _write_run(root, f"mamba_s{seed}", [{"step": 9, "split": f"len_{L}", "accuracy": a}
                                            for L, a in zip((64, 128, 256), accs)])
    _write_run(root, "s4d_s0", [{"step": 9, "split": "len_64", "accuracy": 0.3}])
    series = reproductions._length_series(root)
    lengths, mean, low, high, seeds = series["mamba (2 seeds: mean, min-max band)"]
    assert lengths == [64, 128, 256] and seeds == 2
    np.testing.assert_allclose(mean, [1.0, 0.6, 0.1])
    np.testing.assert_allclose(low, [1.0, 0.5, 0.0])
    np.testing.assert_allclose(high, [1.0, 0.7, 0.2])
    assert series["s4d"] == ([64], [0.3], [0.3], [0.3], 1)
    out = reproductions.length_curves(root, str(tmp_path / "l.png"))
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_seeds_cli_names_the_argument_on_bad_input(tmp_path, capsys):
    _write_run(str(tmp_path), "mamba_s0", [{"step": 2, "split": "validation", "accuracy": 0.5}])
    for argv, match in (([f"--seeds={tmp_path / 'none'}"], "no runs directory"),
                        ([f"--seeds={tmp_path}", "--split=len_64"], "has a 'len_64'")):
        with pytest.raises(SystemExit) as e:
            reproductions.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "--seeds=" in err and match in err
    assert reproductions.main([f"--seeds={tmp_path}"]) == []
    assert "| mamba | 1: 0 | 50.0 |" in capsys.readouterr().out


def _write_lra_run(root, name, *, dataset, batch_size, rows):
    _write_run(root, name, rows)
    with open(os.path.join(root, name, "config.json"), "w") as f:
        json.dump({"data": {"name": dataset, "batch_size": batch_size}}, f)


def test_lra_table_counts_epochs_and_reads_the_checkpoint_and_the_best_evaluation(tmp_path):
    root = str(tmp_path / "lra_listops")
    per_epoch = lra_base.steps_per_epoch("listops")  # 3,000 steps of 32: the s4 notes' "50 @ 10" is step 30,000
    assert per_epoch * lra_base.S4_PUBLISHED["listops"]["batch_size"] == 96_000
    val = {1: 0.20, 5: 0.40, 10: 0.51, 11: 0.58, 12: 0.58, 13: 0.55}  # epoch -> validation accuracy
    rows = []
    for e, acc in val.items():
        rows += [{"step": e * per_epoch, "split": "validation", "accuracy": acc},
                 {"step": e * per_epoch, "split": "test", "accuracy": acc - 0.01 * e}]
    _write_lra_run(root, "s4d_s0", dataset="lra_listops", batch_size=32, rows=rows)
    # batch 64: an epoch is half the steps; cut off at epoch 8, before the checkpoint epoch
    _write_lra_run(root, "s4_s0", dataset="lra_listops", batch_size=64,
                   rows=[{"step": 8 * per_epoch // 2, "split": "validation", "accuracy": 0.3}])
    table = reproductions.lra_table(root)
    r = table["s4d_s0"]
    assert r["task"] == "listops" and r["epochs"] == 13 and r["at_checkpoint"] == 0.51
    assert r["best_validation"] == 0.58 and r["best_epoch"] == 11  # the first evaluation at the best
    assert r["test_at_best"] == pytest.approx(0.58 - 0.11) and r["last_test"] == pytest.approx(0.55 - 0.13)
    assert r["notes"] == lra_base.S4_REPO_NOTES["listops"]
    cut = table["s4_s0"]
    assert cut["epochs"] == 8 and cut["at_checkpoint"] is None and cut["test_at_best"] is None
    md = reproductions.lra_markdown(table)
    assert "| s4d_s0 | 13.0 | 51.0 at epoch 10 (50) | 58.0 (11) | 47.0 | 59.60 / 60.47 |" in md
    assert "| s4_s0 | 8.0 | — at epoch 10 (50) | 30.0 (8) | — | 59.60 / 60.47 |" in md
    with open(reproductions.lra_curves(root, str(tmp_path / "c.png")), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_lra_runs_are_drawn_by_epoch_and_the_lra_cli_names_its_argument(tmp_path, capsys):
    runs = tmp_path / "runs"
    _write_lra_run(str(runs / "lra_pathfinder"), "s4d_s0", dataset="lra_pathfinder32", batch_size=64,
                   rows=[{"step": 2500, "split": "validation", "accuracy": 0.6}])
    _write_run(str(runs / "induction_heads"), "mamba_s0", [{"step": 9, "split": "len_64", "accuracy": 1.0}])
    written = reproductions.main([str(tmp_path)])
    assert sorted(os.path.basename(p) for p in written) == ["induction_heads_curves.png", "induction_heads_lengths.png",
                                                            "lra_pathfinder_curves.png"]
    assert reproductions.main([f"--lra={runs / 'lra_pathfinder'}"]) == []
    assert "| s4d_s0 | 1.0 | — at epoch 20 (90) | 60.0 (1) | — | 94.20 / 93.06 |" in capsys.readouterr().out
    _write_run(str(runs / "lra_text"), "s4_s0", [{"step": 1, "split": "validation", "accuracy": 0.5}])  # no config.json
    with pytest.raises(SystemExit) as e:
        reproductions.main([f"--lra={runs / 'lra_text'}"])
    assert e.value.code == 2 and "--lra=" in (err := capsys.readouterr().err) and "config.json is missing" in err


def test_seed_rows_say_which_runs_were_cut_off(tmp_path):
    """A run cut off mid-schedule has a last evaluation that is not its final one: the seeds table
    says so (one that stopped early by its own rule finished)."""
    root = str(tmp_path)
    config = {"total_steps": 10, "early_stop": {"metric": "validation/accuracy", "threshold": 0.99, "mode": "max"}}
    runs = {"mamba_s0": (10, 0.5), "mamba_s1": (4, 0.6), "mamba_s2": (6, 0.995)}  # finished, cut off, early stop
    for name, (step, acc) in runs.items():
        _write_run(root, name, [{"step": step, "split": "validation", "accuracy": acc}])
        with open(os.path.join(root, name, "config.json"), "w") as f:
            json.dump(config, f)
    _write_run(root, "s4d_s0", [{"step": 1, "split": "validation", "accuracy": 0.1}])  # no config.json: unknown
    summary = reproductions.seed_summary(root)
    assert summary["mamba"]["unfinished"] == ["mamba_s1"] and summary["s4d"]["unfinished"] == []
    assert "| mamba | 3: 0, 1, 2 (cut off before the end of its schedule: mamba_s1) |" in reproductions.seed_markdown(summary)


def test_the_lra_table_refuses_runs_of_other_datasets(tmp_path, capsys):
    """An MQAR directory passed to --lra was tabled as if it were Pathfinder (epochs of its recipe)."""
    root = tmp_path / "mqar"
    _write_lra_run(str(root), "mamba_s0", dataset="mqar", batch_size=256,
                   rows=[{"step": 500, "split": "validation", "accuracy": 0.5}])
    with pytest.raises(SystemExit) as e:
        reproductions.main([f"--lra={root}"])
    assert e.value.code == 2 and "mamba_s0 is not an LRA run (its data.name is 'mqar'" in capsys.readouterr().err
    _write_lra_run(str(tmp_path / "pf64"), "s4d_s0", dataset="lra_pathfinder64", batch_size=64,
                   rows=[{"step": 2500, "split": "validation", "accuracy": 0.6}])
    assert reproductions.lra_table(str(tmp_path / "pf64"))["s4d_s0"]["epochs"] == 1.0  # Pathfinder's recipe, no notes
