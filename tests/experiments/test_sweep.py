"""experiments.sweep: the exit status and table of a sweep whose runs fail, and the share of each
accelerator's memory its runs take (checked against what other processes hold).

Most runs here are stand-ins (``_fake_runs``): a few lines of Python per run that write what a run
writes and exit as told, so a sweep takes about a second and needs no accelerator. One test runs
``experiments.run`` itself, to see a real failure reach the exit status.
"""

from __future__ import annotations

import itertools
import json
import os
import sys

import pytest

from experiments import sweep
from tests.experiments.conftest import REPO
from tests.experiments.test_reproductions import _grid_module

# A stand-in for ``python -m experiments.run``: argv is the run's directory and its behaviour (the
# sweep entry's overrides, as JSON). No core file for the aborting ones.
_FAKE_RUN = r"""
import json, os, resource, signal, sys, time
run_dir, how = sys.argv[1], json.loads(sys.argv[2])
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
os.makedirs(run_dir, exist_ok=True)
with open(os.path.join(run_dir, "env.json"), "w") as f:
    json.dump({"XLA_PYTHON_CLIENT_MEM_FRACTION": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")}, f)
with open(os.path.join(run_dir, "config.json"), "w") as f:
    json.dump({"total_steps": how.get("total_steps", 5)}, f)
with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
    for step in range(1, how.get("steps", 5) + 1):
        f.write(json.dumps({"step": step, "split": "validation", "accuracy": 0.5}) + "\n")
if how.get("trap_sigterm"):  # as experiments.run once training: SIGTERM saves and exits 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
if "signal_sweep" in how:  # a stop signal to the sweep, arriving while this run is still starting
    time.sleep(how.get("delay", 0))
    os.kill(os.getppid(), getattr(signal, how["signal_sweep"]))
    time.sleep(60)  # the SIGTERM the sweep passes on ends it (exit -15 without trap_sigterm)
if how.get("abort"):  # as a CUDA out-of-memory at start ends a run: SIGABRT, exit -6
    os.abort()
sys.exit(how.get("exit", 0))
"""


def _fake_runs(tmp_path, monkeypatch, entries: dict[str, dict]) -> str:
    """A sweep module of ``entries`` (name -> how its stand-in run behaves); the sweep runs stand-ins.
    The module has no get_config: the sweep's check of the runs' configs is skipped."""
    module = tmp_path / "fake_sweep.py"
    module.write_text(f"def get_sweep(arg=None):\n    return [(n, '', how) for n, how in {entries!r}.items()]\n")
    _fake_command(monkeypatch)
    monkeypatch.setattr(sweep, "_check_configs", lambda path, runs, extra: {})
    return str(module)


def _fake_command(monkeypatch) -> None:
    """The sweep starts stand-ins for its runs (each entry's overrides say how it behaves)."""
    def command(path, run, workdir, extra):
        name, _, how = run
        return [sys.executable, "-c", _FAKE_RUN, os.path.join(workdir, name), json.dumps(how)]

    monkeypatch.setattr(sweep, "_command", command)
    # The memory check reads no real GPU here; tests of the check patch it themselves.
    monkeypatch.setattr(sweep, "_gpu_memory_mib", lambda: None)
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)


def _table(workdir) -> list[list[str]]:
    """The cells of each line of the sweep.md the sweep wrote (header and separator included)."""
    lines = (workdir / "sweep.md").read_text().splitlines()
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]


def _step_cells(workdir) -> dict[str, str]:
    """``{run: step cell}`` of the sweep.md the sweep wrote."""
    return {cells[0]: cells[1] for cells in _table(workdir)[2:]}


def _exit_status(argv) -> int:
    """``sweep.main(argv)``'s exit status: 0 where it returns."""
    try:
        sweep.main(argv)
    except SystemExit as e:
        return e.code
    return 0


def _mem_fraction_seen(workdir, name: str) -> str | None:
    with open(workdir / name / "env.json") as f:
        return json.load(f)["XLA_PYTHON_CLIENT_MEM_FRACTION"]


def test_a_sweep_with_a_failed_run_exits_1_and_its_row_says_so(tmp_path, monkeypatch):
    module = _fake_runs(tmp_path, monkeypatch, {
        "ok": {}, "oom": {"abort": True, "steps": 0, "total_steps": 22496}, "raised": {"exit": 1, "steps": 2}})
    work = tmp_path / "w"
    assert _exit_status([f"--config={module}", f"--workdir={work}", "--parallel=3"]) == 1
    assert _step_cells(work) == {"ok": "5", "oom": "0 of 22496 (failed: exit -6, see oom/sweep.log)",
                                 "raised": "2 of 5 (failed: exit 1, see raised/sweep.log)"}
    with open(work / "sweep.json") as f:
        assert {r["name"]: r.get("failed") for r in json.load(f)} == {"ok": None, "oom": -6, "raised": 1}
    # --collect knows only the run directories: it cannot tell a crash, and does not fail.
    assert _exit_status(["--collect", f"--workdir={work}"]) == 0
    assert _step_cells(work)["oom"] == "0 of 22496 (unfinished)"


def test_a_sweep_whose_runs_all_finish_exits_0(tmp_path, monkeypatch):
    module = _fake_runs(tmp_path, monkeypatch, {"a": {}, "b": {"steps": 3, "total_steps": 3}})
    work = tmp_path / "w"
    assert _exit_status([f"--config={module}", f"--workdir={work}", "--parallel=2"]) == 0
    assert _step_cells(work) == {"a": "5", "b": "3"}
    rows = sweep.run_sweep(module, str(work))
    assert all("failed" not in r for r in rows)


def test_a_real_run_that_fails_fails_the_sweep(tmp_path, monkeypatch):
    # experiments.run itself, refusing a value its trainer's checks reject (exit 1); the config
    # builds, so the sweep's own check lets it start.
    module = _grid_module(tmp_path, "[('one', 'smoke', {'total_steps': 1})]")
    monkeypatch.setenv("PYTHONPATH", REPO)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    work = tmp_path / "w"
    assert _exit_status([f"--config={module}", f"--workdir={work}", "--set=total_steps=0"]) == 1
    assert _step_cells(work) == {"one": "0 (failed: exit 1, see one/sweep.log)"}
    assert "config.total_steps must be a positive int; got 0" in (work / "one" / "sweep.log").read_text()


@pytest.mark.parametrize("signal_name, other_run_exit, status", [
    ("SIGTERM", 0, 0),  # the stopped run is not a failure: it was asked to stop
    ("SIGTERM", 3, 1),
    ("SIGINT", 3, 130),  # Ctrl-C: 130, failed runs or not
])
def test_a_stopped_sweep_exits_1_only_for_runs_that_failed(tmp_path, monkeypatch, signal_name, other_run_exit, status):
    # "stopped" signals the sweep once "other" has ended (it takes ~0.1 s); the sweep passes a
    # SIGTERM on to "stopped", which has no handler yet, as a run still starting: exit -15.
    module = _fake_runs(tmp_path, monkeypatch, {
        "other": {"exit": other_run_exit}, "stopped": {"signal_sweep": signal_name, "delay": 1.0, "steps": 0}})
    work = tmp_path / "w"
    assert _exit_status([f"--config={module}", f"--workdir={work}", "--parallel=2"]) == status
    cells = _step_cells(work)
    assert cells["stopped"] == "0 of 5 (unfinished)"
    assert cells["other"] == ("5" if other_run_exit == 0 else "5 (failed: exit 3, see other/sweep.log)")


@pytest.mark.parametrize("value", ["0", "-0.1", "1.5", "nan"])
def test_mem_fraction_out_of_range_is_refused_naming_the_flag(tmp_path, monkeypatch, value):
    module = _fake_runs(tmp_path, monkeypatch, {"a": {}})
    with pytest.raises(ValueError, match=rf"--mem_fraction must be in \(0, 1\].*got {float(value)}"):
        sweep.main([f"--config={module}", f"--workdir={tmp_path / 'w'}", f"--mem-fraction={value}"])
    assert not (tmp_path / "w" / "a").exists()


def test_each_run_takes_mem_fraction_over_parallel_of_the_accelerator(tmp_path, monkeypatch):
    module = _fake_runs(tmp_path, monkeypatch, {"a": {}, "b": {}})
    sweeps = itertools.count()

    def seen(*flags) -> set:
        work = tmp_path / f"w{next(sweeps)}"
        assert _exit_status([f"--config={module}", f"--workdir={work}", *flags]) == 0
        return {_mem_fraction_seen(work, n) for n in ("a", "b")}

    assert seen("--parallel=2", "--mem_fraction=0.5") == {"0.250"}
    assert seen("--parallel=2") == {"0.450"}  # 0.9 of the accelerator by default
    assert seen("--parallel=1", "--mem-fraction=0.3") == {"0.300"}
    assert seen("--parallel=1") == {None}  # one run at a time, nothing asked: JAX's own default
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.2")
    assert seen("--parallel=2", "--mem_fraction=0.5") == {"0.2"}  # the environment's wins


def _gpus(monkeypatch, *used_total):
    """nvidia-smi, as the sweep reads it, reports these ``(MiB in use, MiB in all)``; the calls are counted."""
    calls = []
    monkeypatch.setattr(sweep, "_gpu_memory_mib", lambda: calls.append(1) or list(used_total))
    return calls


def test_the_gpu_memory_check_refuses_a_share_other_processes_hold(tmp_path, monkeypatch):
    module = _fake_runs(tmp_path, monkeypatch, {"a": {}, "b": {}})
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _gpus(monkeypatch, (600, 81559), (40000, 81559))  # another sweep holds about half of GPU 1
    work = tmp_path / "w"
    with pytest.raises(ValueError) as e:
        sweep.main([f"--config={module}", f"--workdir={work}", "--parallel=2"])
    message = str(e.value)
    assert "GPU 1 has 40000 MiB of 81559 MiB in use" in message and "other processes" in message
    assert "--mem_fraction=0.9" in message and "--mem_fraction=0.48 or stop them" in message, message
    assert not (work / "a").exists() and not (work / "b").exists()  # no run started
    # What it suggests passes the check; so does a GPU the runs may not use being busy.
    assert _exit_status([f"--config={module}", f"--workdir={tmp_path / 'w2'}", "--parallel=2",
                         "--mem_fraction=0.48"]) == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert _exit_status([f"--config={module}", f"--workdir={tmp_path / 'w3'}", "--parallel=2"]) == 0


def test_the_gpu_memory_check_passes_with_room_and_runs_only_when_the_sweep_sets_the_share(tmp_path, monkeypatch):
    module = _fake_runs(tmp_path, monkeypatch, {"a": {}})
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # The driver's own use of an idle GPU (under 2%) leaves room for the whole of it.
    calls = _gpus(monkeypatch, (600, 81559), (1500, 81559))
    assert _exit_status([f"--config={module}", f"--workdir={tmp_path / 'w'}", "--parallel=2",
                         "--mem_fraction=1"]) == 0
    assert len(calls) == 1
    calls = _gpus(monkeypatch, (81000, 81559))  # a full GPU: any check would refuse
    assert _exit_status([f"--config={module}", f"--workdir={tmp_path / 'w2'}", "--parallel=2", "--dry_run"]) == 0
    assert _exit_status([f"--config={module}", f"--workdir={tmp_path / 'w3'}", "--parallel=1"]) == 0
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.1")  # set by the user: theirs to judge
    assert _exit_status([f"--config={module}", f"--workdir={tmp_path / 'w4'}", "--parallel=2"]) == 0
    assert calls == []
    assert _exit_status(["--collect", f"--workdir={tmp_path / 'w4'}"]) == 0 and calls == []


def _fake_nvidia_smi(tmp_path, monkeypatch, script: str):
    """An ``nvidia-smi`` alone on PATH that logs its arguments and then runs ``script`` (sh)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\necho \"$*\" > {tmp_path / 'args'}\n{script}\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_gpu_memory_is_read_from_nvidia_smi_and_is_none_where_it_cannot_be(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, monkeypatch, "printf '600, 81559\\n40000, 81559\\n'")
    assert sweep._gpu_memory_mib() == [(600, 81559), (40000, 81559)]
    assert (tmp_path / "args").read_text().split() == [
        "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"]
    _fake_nvidia_smi(tmp_path, monkeypatch, "echo 'NVIDIA-SMI has failed'; exit 9")
    assert sweep._gpu_memory_mib() is None
    _fake_nvidia_smi(tmp_path, monkeypatch, "echo '[N/A], [N/A]'")  # e.g. a MIG GPU
    assert sweep._gpu_memory_mib() is None
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert sweep._gpu_memory_mib() is None


def test_only_keeps_the_runs_matching_any_comma_separated_part(tmp_path, capsys):
    module = _grid_module(tmp_path, "[(f'{m}_d{d}', 'smoke', {}) for d in (128, 256) for m in ('mamba', 'mamba2')]")
    workdir = str(tmp_path / "w")
    sweep.run_sweep(str(module), workdir, only="d256,mamba2_d128", dry_run=True)
    printed = [line.split("--workdir=")[1].split(" ")[0] for line in capsys.readouterr().out.splitlines()]
    assert [os.path.basename(p) for p in printed] == ["mamba2_d128", "mamba_d256", "mamba2_d256"]
    with pytest.raises(ValueError, match=r"any of --only='d512,attention'"):
        sweep.run_sweep(str(module), workdir, only="d512,attention", dry_run=True)


def _no_run_starts(monkeypatch) -> list:
    """Record (and refuse) every process the sweep would start."""
    started = []
    monkeypatch.setattr(sweep.subprocess, "Popen", lambda cmd, *a, **k: started.append(cmd) or 1 / 0)
    return started


def test_the_table_shows_accuracies_in_percent_and_other_metrics_as_recorded(tmp_path, monkeypatch, capsys):
    # Before, every column was 100 * value: a loss of 2.858 read 285.8, a perplexity of 17.32 1731.8.
    metrics = {"validation/loss": 2.858449935913086, "validation/perplexity": 17.31764, "validation/accuracy": 0.5,
               "validation/seq_accuracy": 0.0625, "test/accuracy": 0.98765}
    rows = [dict(name="a", step=4, total_steps=4, metrics=metrics)]
    assert sweep.markdown(rows, "loss").splitlines() == ["| run | step | validation/loss |", "|---|---|---|",
                                                         "| a | 4 | 2.858 |"]
    assert sweep.markdown(rows, "perplexity").splitlines()[2] == "| a | 4 | 17.32 |"
    assert sweep.markdown(rows).splitlines() == [
        "| run | step | test/accuracy (%) | validation/accuracy (%) | validation/seq_accuracy (%) |",
        "|---|---|---|---|---|", "| a | 4 | 98.8 | 50.0 | 6.2 |"]
    assert [sweep.is_fraction(c) for c in ("validation/accuracy", "L256_kv64/seq_accuracy", "accuracy",
                                           "validation/loss", "accuracy_run/loss")] == [True, True, True, False, False]
    # And as --collect prints and writes it.
    module = _fake_runs(tmp_path, monkeypatch, {"a": {}})
    work = tmp_path / "w"
    assert _exit_status([f"--config={module}", f"--workdir={work}"]) == 0
    with open(work / "a" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 5, "split": "validation", "loss": 2.858449935913086}) + "\n")
    capsys.readouterr()
    assert _exit_status(["--collect", f"--workdir={work}", "--metrics=loss"]) == 0
    assert capsys.readouterr().out.splitlines()[2] == "| a | 5 | 2.858 |"
    assert _table(work)[0] == ["run", "step", "validation/loss"]


def test_a_sweep_of_a_slice_writes_and_prints_the_table_of_every_run_in_the_workdir(tmp_path, monkeypatch, capsys):
    # Before, sweep.json held every run but sweep.md and the printout only the --only slice.
    module = _fake_runs(tmp_path, monkeypatch, {"a_lr1": {"exit": 1, "steps": 2}, "b_lr1": {"steps": 3}, "c_lr1": {}})
    work = tmp_path / "w"
    assert _exit_status([f"--config={module}", f"--workdir={work}", "--only=b_,c_"]) == 0
    capsys.readouterr()
    assert _exit_status([f"--config={module}", f"--workdir={work}", "--only=a_"]) == 1
    expected = {"a_lr1": "2 of 5 (failed: exit 1, see a_lr1/sweep.log)", "b_lr1": "3 of 5 (unfinished)", "c_lr1": "5"}
    assert _step_cells(work) == expected
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert printed == (work / "sweep.md").read_text().splitlines()[:1] + (work / "sweep.md").read_text().splitlines()[2:]
    with open(work / "sweep.json") as f:
        assert [r["name"] for r in json.load(f)] == ["a_lr1", "b_lr1", "c_lr1"]
    # --collect gives the same table (it cannot know that a_lr1 failed).
    assert _exit_status(["--collect", f"--workdir={work}"]) == 0
    assert _step_cells(work) == dict(expected, a_lr1="2 of 5 (unfinished)")


@pytest.mark.parametrize("runs, flag, expected", [
    # an override naming no key, through --set: every run would fail at start
    ("[('one', 'smoke', {}), ('two', 'smoke', {})]", "--set=optim.lrr=1",
     "run 'one' would fail at start, so no run was started: --set=optim.lrr=1: optim has no key 'lrr'. "
     "Did you mean optim.lr?"),
    # a config arg get_config refuses, in the second run of the sweep
    ("[('one', 'smoke', {}), ('bad', 'smoke,mixer=mambaa', {})]", "--set=total_steps=2",
     "run 'bad' would fail at start, so no run was started: --config={module}:smoke,mixer=mambaa: ValueError: "
     "config arg 'mixer' is not one of ['smoke']"),
    # a value its key cannot take, in a run's own overrides
    ("[('one', 'smoke', {'total_steps': 'many'})]", "--set=seed=1",
     "run 'one' would fail at start, so no run was started: IllegalFlagValueError: flag --config.total_steps=many: "
     "invalid literal for int()"),
    ("[('one', 'smoke', {'optim.lr.x': 1})]", "--set=seed=1",
     "run 'one' would fail at start, so no run was started: its override optim.lr.x=1 (get_sweep): "
     "optim.lr has no key 'x'."),
])
def test_a_sweep_whose_run_configs_do_not_build_refuses_with_status_2_and_starts_nothing(
        tmp_path, monkeypatch, capsys, runs, flag, expected):
    # Before, every run was started, and each failed on the same bad key or value.
    module = _grid_module(tmp_path, runs)
    started = _no_run_starts(monkeypatch)
    work = tmp_path / "w"
    for dry_run in ([], ["--dry_run"]):
        assert _exit_status([f"--config={module}", f"--workdir={work}", flag, *dry_run]) == 2
        err = capsys.readouterr().err
        assert expected.format(module=module) in err, err
    assert started == [] and not work.exists()


def test_a_sweep_of_a_config_module_checks_its_arg_before_starting(tmp_path, monkeypatch, capsys):
    # The selective copying sweep with a misspelt mixer: its run "mambaa_s0" cannot build its config.
    started = _no_run_starts(monkeypatch)
    config = os.path.join(REPO, "experiments/configs/synthetic/selective_copying.py")
    work = tmp_path / "w"
    assert _exit_status([f"--config={config}:mixers=mambaa", f"--workdir={work}"]) == 2
    err = capsys.readouterr().err
    assert "run 'mambaa_s0'" in err and "mixer must be one of" in err and "got 'mambaa'" in err, err
    assert started == [] and not work.exists()
    # The sweeps as committed build: the check refuses none of their runs.
    for name in ("selective_copying", "mqar", "induction_heads"):
        assert _exit_status([f"--config={REPO}/experiments/configs/synthetic/{name}.py", f"--workdir={work}",
                             "--set=total_steps=10", "--dry_run"]) == 0
    assert started == [] and not work.exists()


def test_a_file_where_a_run_directory_goes_refuses_the_sweep_before_any_run_starts(tmp_path, monkeypatch, capsys):
    # Before, the sweep started "a" and then crashed with FileExistsError at "b".
    module = _fake_runs(tmp_path, monkeypatch, {"a": {}, "b": {}})
    work = tmp_path / "w"
    work.mkdir()
    (work / "b").write_text("")
    assert _exit_status([f"--config={module}", f"--workdir={work}", "--parallel=1"]) == 2
    assert f"{work / 'b'} is a file" in capsys.readouterr().err
    assert sorted(os.listdir(work)) == ["b"]


def test_a_stopped_sweeps_table_and_log_tell_stopped_and_unstarted_runs(tmp_path, monkeypatch, capsys):
    # "worker" saves and exits 0 on the SIGTERM the sweep passes on (as experiments.run does once
    # training); "later" never starts. Before: "worker: done", "later" read step "0" and the table's
    # header (no evaluation yet: no metric column) had 3 cells against the separator's 2.
    module = _fake_runs(tmp_path, monkeypatch, {
        "worker": {"trap_sigterm": True, "signal_sweep": "SIGTERM", "delay": 0.5, "steps": 0}, "later": {}})
    work = tmp_path / "w"
    assert _exit_status([f"--config={module}", f"--workdir={work}", "--parallel=1"]) == 0
    out = capsys.readouterr().out
    assert "[sweep] worker: stopped in" in out and "worker: done" not in out, out
    assert _table(work) == [["run", "step"], ["---", "---"], ["later", "0 (not started)"],
                            ["worker", "0 of 5 (unfinished)"]]
    with open(work / "sweep.json") as f:
        assert {r["name"]: r.get("not_started", False) for r in json.load(f)} == {"later": True, "worker": False}


def test_a_run_that_reached_its_end_when_the_sweep_was_stopped_is_done(tmp_path, monkeypatch, capsys):
    module = _fake_runs(tmp_path, monkeypatch, {
        "worker": {"trap_sigterm": True, "signal_sweep": "SIGTERM", "steps": 5, "total_steps": 5}})
    assert _exit_status([f"--config={module}", f"--workdir={tmp_path / 'w'}"]) == 0
    assert "[sweep] worker: done in" in capsys.readouterr().out


def test_a_dry_run_writes_nothing(tmp_path, capsys):
    # Before, --dry_run made the sweep's workdir.
    module = _grid_module(tmp_path, "[('a', 'smoke', {}), ('b', 'smoke', {})]")
    work = tmp_path / "new" / "w"
    assert _exit_status([f"--config={module}", f"--workdir={work}", "--dry_run", "--parallel=2"]) == 0
    assert not (tmp_path / "new").exists()
    printed = capsys.readouterr().out.splitlines()
    assert [line.split("--workdir=")[1].split(" ")[0] for line in printed] == [str(work / "a"), str(work / "b")]


def test_sweep_json_records_every_override_a_run_got_set_included(tmp_path, monkeypatch):
    # Before, the --set values were missing from each row's overrides. They are recorded as the run
    # parses them (by their key's type), and --set wins over the entry's own value, as in the run.
    module = _grid_module(tmp_path, "[('one', 'smoke', {'seed': 1, 'total_steps': 5}), ('two', 'smoke', {})]")
    _fake_command(monkeypatch)
    work = tmp_path / "w"
    assert _exit_status([f"--config={module}", f"--workdir={work}", "--set=total_steps=7", "--set=optim.lr=1",
                         "--set=progress_bar=False", "--set=eval.splits=('validation',)"]) == 0
    sets = {"total_steps": 7, "optim.lr": 1.0, "progress_bar": False, "eval.splits": ["validation"]}
    with open(work / "sweep.json") as f:
        recorded = {r["name"]: r["overrides"] for r in json.load(f)}
    assert recorded == {"one": {"seed": 1, **sets}, "two": sets}
    assert isinstance(recorded["one"]["optim.lr"], float)
    assert _exit_status(["--collect", f"--workdir={work}"]) == 0  # --collect keeps them
    with open(work / "sweep.json") as f:
        assert {r["name"]: r["overrides"] for r in json.load(f)} == recorded
