r"""Run a config module's sweep and collect the runs' final metrics into one table.

    python -m experiments.sweep --config=experiments/configs/synthetic/mqar.py[:sweep arg] \
        --workdir=runs/mqar [--parallel=4] [--mem_fraction=0.9] [--mps] [--only=mamba2] \
        [--set=total_steps=2000 ...]
    python -m experiments.sweep --collect --workdir=runs/mqar       # the table only

A sweep is named in its config module, as big_vision's ``get_hyper``: ``get_sweep(arg)`` returns
``[(name, config_arg, overrides), ...]``. Each entry runs as ``python -m experiments.run
--config=<module>:<config_arg> --workdir=<workdir>/<name> --config.<key>=<value> ...`` in its own
process, ``--parallel`` at a time. A run resumes from its checkpoint like any other, so rerunning
the sweep finishes what an earlier one left. ``--set`` applies an override to every run; ``--only``
keeps the entries whose name contains it, or any of its comma-separated parts
(``--only=d256,mamba2_d128``: the runs a machine lost, not the finished ones, whose directories it
may not have).

Before it starts anything the sweep builds every selected run's config in its own process, as the
run will (``get_config(<config_arg>)``, then the run's overrides and ``--set`` parsed by
``ml_collections.config_flags``, as ``experiments.run``'s ``--config.<key>=<value>``; no JAX
computation), and checks that no ``<workdir>/<name>`` is a file. A bad config arg, an override
naming no key of the config or a value its key cannot take, or such a file, refuses the whole sweep
with one error naming the run and the cause: exit status 2, nothing started or written.
``--dry_run`` checks the same, prints the commands, and writes nothing.

Memory: JAX reserves a fixed share of each accelerator's memory per process when it starts, so
runs side by side must split it. ``--mem_fraction`` (default 0.9 with ``--parallel`` > 1) is the
share of each accelerator the sweep's concurrent runs take together: each run gets
``XLA_PYTHON_CLIENT_MEM_FRACTION=<mem_fraction / parallel>``. With ``--parallel=1`` the sweep
sets it only when ``--mem_fraction`` is given (else a run takes JAX's default, 75%), and a value
already in the environment always wins. Where the sweep sets it and ``nvidia-smi`` is on PATH, it
first checks that every GPU the runs may use (``CUDA_VISIBLE_DEVICES`` when it lists indices) has
``mem_fraction`` of its memory free, give or take 2% for the driver, and refuses to start
otherwise, naming the GPU and suggesting the ``--mem_fraction`` that still fits: a second sweep,
or any other process holding memory, would make its runs die at start, out of memory. Two sweeps
on one GPU each take their part, e.g. ``--mem_fraction=0.45``.

``--mps`` (NVIDIA GPUs): the runs share the GPU through CUDA MPS, one server for the sweep, which
lets kernels of different runs execute at once instead of time-slicing the GPU between
processes: four MQAR runs (d_model 64) on one H100 made 261 steps/s in all under MPS against 217
without. The sweep starts its own control daemon (``nvidia-cuda-mps-control -d``) with pipe and
log directories of its own, so other CUDA processes on the machine are not routed through it,
and quits it when the runs end.

Stopping: SIGTERM or Ctrl-C (SIGINT) to the sweep starts no further run and passes one SIGTERM to
each running one, which saves a checkpoint and exits as ``experiments.run`` does; the sweep waits
for them and writes the table. The runs are in their own process group, so a terminal's Ctrl-C
reaches them only through the sweep. A run that the forwarded SIGTERM ends (it saves and exits 0, or
130 after a SIGINT of its own, or -15 when the signal came before it had set up its handler) is
reported "stopped", not "done" or failed, unless it had reached the end of its schedule.

Exit status: 2 if the sweep was refused before it started anything (see above). Else, after the
table is written: 1 if any run failed (exited non-zero, or was killed by a signal the sweep did not
send), whether or not the sweep was stopped; otherwise 0, and 0 after SIGTERM, as a run does; 130
after SIGINT (the shell's 128 + SIGINT, so ``&&`` chains stop), failed runs or not. ``--collect``
and ``--dry_run`` exit 0.

The table (``<workdir>/sweep.json`` and ``sweep.md``) has one row per run: its name, arg and
overrides (the entry's and ``--set``'s together: every ``--config.<key>`` the run got, ``--set``'s
as the run parsed them), the last step it reached (marked "early stop", or "of N (unfinished)" for
a run cut off before its ``total_steps``, "(not started)" for one a stop left unstarted (no run
directory), "(failed: exit N, see <name>/sweep.log)" for a run that failed in this sweep:
sweep.json keeps its exit code as ``failed``), and the latest value of every evaluation metric in
its ``metrics.jsonl`` (``--metrics`` picks columns by suffix, default ``accuracy``). Columns whose
metric name (after ``<split>/``) contains "accuracy" hold fractions of 1 and are shown in percent,
their header marked "(%)"; every other metric (loss, perplexity, ...) is shown as recorded, to 4
significant digits. The table covers every run in the workdir, not only this sweep's slice
(``--only``): this sweep's rows, and those of the other run directories there as ``--collect``
builds them. ``--collect`` rebuilds the rows from the run directories alone, so it cannot mark
failed runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from typing import Any, Sequence

from experiments import configs
from experiments.metrics import METRICS_FILE, read_metrics

__all__ = ["MPSServer", "Run", "SweepRefused", "SweepStopped", "collect", "is_fraction", "load_sweep", "main",
           "markdown", "run_sweep"]

Run = tuple[str, str, dict[str, Any]]

EXIT_REFUSED = 2  # the sweep refused to start (a bad config, override or run path): nothing ran
EXIT_INTERRUPTED = 130  # what experiments.run exits with after a SIGINT, once it has saved


class SweepRefused(ValueError):
    """Something the sweep checks before it starts any run is wrong; nothing was started or written."""


def load_sweep(spec: str) -> tuple[str, list[Run]]:
    """``(module path, runs)`` from ``path.py[:arg]``; the module must define ``get_sweep``."""
    path, _, arg = spec.partition(":")
    module = configs.load_module(path, "sweep")
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"sweep: {path} defines no get_sweep(arg); it has get_config only")
    runs = list(module.get_sweep(arg or None))
    names = [r[0] for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"sweep: {path}'s get_sweep gives repeated run names: {sorted(names)}")
    for r in runs:
        if len(r) != 3 or not isinstance(r[0], str) or not isinstance(r[2], dict) or "/" in r[0]:
            raise ValueError(f"sweep: each entry must be (name without '/', config arg, overrides dict); got {r!r}")
    return path, runs


def _config_args(path: str, run: Run, extra: Sequence[str]) -> list[str]:
    """The run's ``--config=<module>[:arg]`` and ``--config.<key>=<value>`` flags, in order."""
    _, arg, overrides = run
    return ([f"--config={path}" + (f":{arg}" if arg else "")] + [f"--config.{k}={v}" for k, v in overrides.items()]
            + [f"--config.{kv}" for kv in extra])


def _command(path: str, run: Run, workdir: str, extra: Sequence[str]) -> list[str]:
    config, *overrides = _config_args(path, run, extra)
    return [sys.executable, "-m", "experiments.run", config, f"--workdir={os.path.join(workdir, run[0])}", *overrides]


def _set_keys(extra: Sequence[str]) -> list[str]:
    """The config keys ``--set`` overrides (``key=value``, or a bare ``key`` for a bool: True)."""
    return [kv.split("=", 1)[0] for kv in extra]


def _check_configs(path: str, runs: Sequence[Run], extra: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Build each run's config as ``experiments.run`` will: ``config_flags`` loads ``<module>:<arg>``
    (``get_config``) and applies the ``--config.<key>=<value>`` flags of :func:`_command`, parsing
    each value by its key's type. Configs only: nothing is trained, traced or written.

    Returns ``{name: {key: value}}``: the value each override took in the run's config. Raises
    :class:`SweepRefused` naming the first run whose config cannot be built, and why."""
    from absl import flags  # absl and ml_collections only: experiments.run pulls in the trainer
    from ml_collections import config_flags

    parsed = {}
    for run in runs:
        argv = ["experiments.run", *_config_args(path, run, extra)]
        values = flags.FlagValues()
        holder = config_flags.DEFINE_config_file("config", None, "config module", flag_values=values,
                                                 lock_config=True, sys_argv=argv)
        had_module = "config_config" in sys.modules  # where config_flags imports the module
        try:
            with warnings.catch_warnings():  # config_flags imports the module by the deprecated load_module
                warnings.filterwarnings("ignore", "the load_module", DeprecationWarning)
                values(argv)
            parsed[run[0]] = dict(config_flags.get_override_values(values[holder.name]))
        except Exception as e:  # whatever building the config raised: the run would fail the same way
            raise SweepRefused(f"sweep: run {run[0]!r} would fail at start, so no run was started: "
                               f"{_config_problem(path, run, extra, e)}") from e
        finally:
            if not had_module:
                sys.modules.pop("config_config", None)
    return parsed


def _config_problem(path: str, run: Run, extra: Sequence[str], error: Exception) -> str:
    """What is wrong with ``run``'s config, in a line: its config arg (``get_config``'s own error), an
    override naming no key of the config (and the keys there are), or ``error``'s first line."""
    name, arg, overrides = run
    spec = path + (f":{arg}" if arg else "")
    try:
        config = configs.load(spec)
    except Exception as e:
        return f"--config={spec}: {type(e).__name__}: {e}"
    sets = dict(zip(_set_keys(extra), extra))
    for key in list(overrides) + list(sets):
        miss = configs.missing_key(config, key)
        if miss:
            where, part, keys, close = miss
            origin = f"--set={sets[key]}" if key in sets else f"its override {key}={overrides[key]!r} (get_sweep)"
            parent = ".".join(where) or "the config"
            hint = f" Did you mean {'.'.join(where + [close])}?" if close else ""
            listed = f" Keys of {parent}: {', '.join(sorted(keys))}." if keys else ""
            return f"{origin}: {parent} has no key {part!r}.{hint}{listed}"
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else repr(error)}"


def run_sweep(spec: str, workdir: str, *, parallel: int = 1, only: str = "", extra: Sequence[str] = (),
              dry_run: bool = False, mps: bool = False, mem_fraction: float | None = None) -> list[dict[str, Any]]:
    """Run every entry of the sweep (those whose name contains a comma-separated part of ``only``);
    return :func:`collect`'s rows, with ``row["failed"]`` = the exit code of each run that failed.

    ``mps``: run them through a CUDA MPS server of the sweep's own (:class:`MPSServer`).
    ``mem_fraction``: the share of each accelerator's memory the concurrent runs take together
    (None: 0.9 when ``parallel`` > 1, JAX's own default for a single run); see the module docstring.
    Raises :class:`SweepStopped` (carrying the rows) when a stop signal ended the sweep."""
    if parallel < 1:
        raise ValueError(f"sweep: --parallel must be >= 1; got {parallel}")
    if mem_fraction is not None and not 0 < mem_fraction <= 1:
        raise ValueError(f"sweep: --mem_fraction must be in (0, 1], a share of each accelerator's memory; "
                         f"got {mem_fraction}")
    path, runs = load_sweep(spec)
    patterns = [o for o in only.split(",") if o] or [""]
    runs = [r for r in runs if any(o in r[0] for o in patterns)]
    if not runs:
        raise ValueError(f"sweep: no run of {spec} has any of --only={only!r} (comma-separated parts) in its name")
    # Everything that would make a run fail at once, checked before any starts (SweepRefused).
    for name, _, _ in runs:
        run_dir = os.path.join(workdir, name)
        if os.path.lexists(run_dir) and not os.path.isdir(run_dir):
            raise SweepRefused(f"sweep: {run_dir} is a file (or a broken link), not a directory: run {name!r} "
                               f"needs a directory there; move it away. No run was started.")
    parsed = _check_configs(path, runs, extra)
    pending = [(r, _command(path, r, workdir, extra)) for r in runs]
    if dry_run:  # writes nothing, not even the workdir
        for _, cmd in pending:
            print(" ".join(cmd))
        return []
    os.makedirs(workdir, exist_ok=True)
    env = dict(os.environ)
    sets_fraction = _run_memory_fraction(env, parallel, mem_fraction)
    if sets_fraction:
        _check_gpu_memory(DEFAULT_MEM_FRACTION if mem_fraction is None else mem_fraction)
    running: list[tuple[Run, subprocess.Popen, Any, float]] = []
    failed: dict[str, int] = {}
    server = MPSServer() if mps else None
    if server is not None:
        env.update(server.env)
        print(f"[sweep] CUDA MPS server started (pipe directory {server.env['CUDA_MPS_PIPE_DIRECTORY']})", flush=True)
    stop = _StopForwarder(running)
    try:
        while pending or running:
            if stop.requested and pending:
                print(f"[sweep] {stop.requested}: not starting {[r[0] for r, _ in pending]}", flush=True)
                pending = []
            _start_and_reap(pending, running, parallel, workdir, env, failed, stop)
    finally:
        stop.restore()
        if server is not None:
            server.stop()
    # Each row records every override its run got: the entry's, then --set's (the later wins, as in
    # the run), as the run parsed them (the raw text where the configs were not checked).
    sets = dict(zip(_set_keys(extra), extra))
    runs = [(name, arg, {**overrides, **{k: parsed.get(name, {}).get(k, kv.partition("=")[2] if "=" in kv else True)
                                         for k, kv in sets.items()}}) for name, arg, overrides in runs]
    rows = collect(workdir, runs=runs, failed=failed)
    if failed:
        listed = ", ".join(f"{name} (exit {code})" for name, code in failed.items())
        print(f"[sweep] failed runs (see <run>/sweep.log): {listed}", flush=True)
    if stop.requested:
        raise SweepStopped(stop.requested, rows)
    return rows


DEFAULT_MEM_FRACTION = 0.9  # of each accelerator, for the runs together, when --parallel > 1
DRIVER_SLACK = 0.02  # of a GPU's memory that nvidia-smi shows in use with no process on it


def _run_memory_fraction(env: dict[str, str], parallel: int, mem_fraction: float | None) -> bool:
    """Set each run's XLA_PYTHON_CLIENT_MEM_FRACTION in ``env``; True where the sweep set it."""
    if "XLA_PYTHON_CLIENT_MEM_FRACTION" in env:
        if mem_fraction is not None:  # asked for, but not applied: say so rather than drop it quietly
            print(f"[sweep] XLA_PYTHON_CLIENT_MEM_FRACTION={env['XLA_PYTHON_CLIENT_MEM_FRACTION']} from the "
                  f"environment: each run takes that, not --mem_fraction={mem_fraction} / {parallel}", flush=True)
        return False
    if mem_fraction is None:
        if parallel == 1:
            return False  # one run at a time: JAX's own default, as a run started by hand
        mem_fraction = DEFAULT_MEM_FRACTION
    # JAX reserves this share of each device's memory per process when it starts: the sweep's
    # processes side by side must split what the sweep may take.
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{mem_fraction / parallel:.3f}"
    return True


def _gpu_memory_mib() -> list[tuple[int, int]] | None:
    """``[(MiB in use, MiB in all)]`` of each NVIDIA GPU by index, or None where nvidia-smi is absent,
    fails or prints what this does not read (e.g. "[N/A]" on MIG): then nothing is checked."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        gpus = [tuple(int(v) for v in line.split(",")) for line in out.stdout.splitlines() if line.strip()]
    except ValueError:
        return None
    return gpus if gpus and all(len(g) == 2 for g in gpus) else None


def _visible_gpus(count: int) -> list[int]:
    """Indices of the GPUs the runs may use: CUDA_VISIBLE_DEVICES's where it lists indices, else all
    (UUIDs or MIG names are not matched to nvidia-smi's rows: every GPU is checked then)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    parts = [p.strip() for p in visible.split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):
        return list(range(count))
    return [i for i in map(int, parts) if i < count]


def _check_gpu_memory(mem_fraction: float) -> None:
    """Refuse to start runs that together take ``mem_fraction`` of a GPU others already hold part of:
    they would die at start, out of memory (a second sweep beside this one, a notebook, ...)."""
    gpus = _gpu_memory_mib()
    if gpus is None:
        return
    for i in _visible_gpus(len(gpus)):
        used, total = gpus[i]
        if total <= 0 or used / total + mem_fraction <= 1.0 + DRIVER_SLACK:
            continue
        fits = math.floor(100 * (1.0 - used / total - DRIVER_SLACK)) / 100  # a little under what is free
        instead = f"pass --mem_fraction={fits:.2f} or stop them" if fits >= 0.01 else "stop them"
        raise ValueError(
            f"sweep: GPU {i} has {used} MiB of {total} MiB in use already, held by other processes (nvidia-smi "
            f"lists them): the runs' share --mem_fraction={mem_fraction} does not fit beside them, and they would "
            f"fail at start, out of memory; {instead}.")


class MPSServer:
    """A CUDA MPS control daemon with pipe and log directories of its own: processes started with
    :attr:`env` share the GPU through it; :meth:`stop` quits it (and removes the directories)."""

    def __init__(self):
        self.exe = shutil.which("nvidia-cuda-mps-control")
        if self.exe is None:
            raise ValueError("sweep: --mps needs nvidia-cuda-mps-control (the NVIDIA driver's utilities) on PATH; "
                             "it is not there: run without --mps")
        self.root = tempfile.mkdtemp(prefix="ssm_jax_mps_")
        self.env = {"CUDA_MPS_PIPE_DIRECTORY": os.path.join(self.root, "pipe"),
                    "CUDA_MPS_LOG_DIRECTORY": os.path.join(self.root, "log")}
        for d in self.env.values():
            os.makedirs(d)
        started = subprocess.run([self.exe, "-d"], env=dict(os.environ, **self.env), stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True)
        if started.returncode != 0:
            shutil.rmtree(self.root, ignore_errors=True)
            raise RuntimeError(f"sweep: nvidia-cuda-mps-control -d failed (exit {started.returncode}): "
                               f"{(started.stdout + started.stderr).strip() or 'no output'}")

    def stop(self) -> None:
        try:
            subprocess.run([self.exe], input="quit\n", env=dict(os.environ, **self.env), capture_output=True,
                           text=True, timeout=60)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class SweepStopped(Exception):
    """A stop signal ended the sweep early: ``signal`` names it, ``rows`` is the table so far."""

    def __init__(self, signal_name: str, rows: list[dict[str, Any]]):
        super().__init__(f"sweep stopped by {signal_name}; rerun the same command to finish it")
        self.signal = signal_name
        self.rows = rows


class _StopForwarder:
    """SIGTERM / SIGINT to the sweep: remember it and pass one SIGTERM to every running run."""

    def __init__(self, running):
        self.running = running
        self.requested: str | None = None
        self.signalled: set[int] = set()  # pids of the runs the sweep sent its SIGTERM
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame):
        first = self.requested is None
        self.requested = self.requested or signal.Signals(signum).name
        if first:
            for run, proc, _, _ in list(self.running):
                if proc.poll() is None:
                    self.term(proc)
            os.write(2, f"[sweep] {self.requested}: asked {len(self.running)} running run(s) to save and stop\n".encode())

    def term(self, proc: subprocess.Popen) -> None:
        """Pass the stop on to a run (SIGTERM: it saves a checkpoint and exits)."""
        self.signalled.add(proc.pid)
        proc.send_signal(signal.SIGTERM)

    def restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _start_and_reap(pending, running, parallel, workdir, env, failed: dict[str, int], stop) -> None:
    """One turn of the scheduler: start runs up to ``parallel``, wait a moment, reap the finished
    (those that failed into ``failed``: name -> exit code)."""
    while pending and len(running) < parallel and not stop.requested:
        run, cmd = pending.pop(0)
        os.makedirs(os.path.join(workdir, run[0]), exist_ok=True)
        log = open(os.path.join(workdir, run[0], "sweep.log"), "a")
        # Its own process group: a terminal's Ctrl-C reaches the run only through the sweep.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, process_group=0)
        running.append((run, proc, log, time.perf_counter()))
        print(f"[sweep] started {run[0]}", flush=True)
        if stop.requested:  # arrived while starting it
            stop.term(proc)
    time.sleep(0.5)
    for item in list(running):
        run, proc, log, t0 = item
        if proc.poll() is None:
            continue
        log.close()
        running.remove(item)
        code = proc.returncode
        if proc.pid in stop.signalled and code in (0, EXIT_INTERRUPTED) and not (
                code == 0 and _reached_end(os.path.join(workdir, run[0]))):
            # It saved a checkpoint and exited on the sweep's SIGTERM (0, as experiments.run does;
            # 130 had a SIGINT reached it too): cut off, not done and not failed.
            status = "stopped" + (f" (exit {code})" if code else "")
        elif code == 0:
            status = "done"
        elif stop.requested and code == -signal.SIGTERM:
            # The sweep's own SIGTERM reached it before it set up its handler (still starting):
            # stopped as asked, with nothing to save; its row reads "unfinished", not failed.
            status = f"stopped before it could save (exit {code})"
        else:
            status = f"failed (exit {code})"
            failed[run[0]] = code
        print(f"[sweep] {run[0]}: {status} in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)


def _final_metrics(run_dir: str) -> tuple[int, dict[str, float]]:
    """The last step reached and the latest value of each ``<split>/<metric>`` that is not train."""
    if not os.path.exists(os.path.join(run_dir, METRICS_FILE)):
        return 0, {}
    step, out = 0, {}
    for r in read_metrics(run_dir):
        step = max(step, int(r["step"]))
        if r["split"] == "train":
            continue
        for k, v in r.items():
            if k not in ("step", "split"):
                out[f"{r['split']}/{k}"] = v
    return step, out


def _reached_end(run_dir: str) -> bool:
    """Whether the run reached its ``total_steps`` or stopped early (as far as its files tell)."""
    total = _total_steps(run_dir)
    return os.path.exists(os.path.join(run_dir, "early_stop.json")) or (
        total is not None and _final_metrics(run_dir)[0] >= total)


def _total_steps(run_dir: str) -> int | None:
    """The run's ``total_steps`` from the config.json it wrote (None where it has none)."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            return int(json.load(f)["total_steps"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def collect(workdir: str, runs: Sequence[Run] | None = None,
            failed: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """One row per run directory under ``workdir`` (or per entry of ``runs``); writes sweep.json.

    ``failed`` (name -> exit code, what only the sweep that ran them knows) marks those rows
    ``row["failed"] = code``.

    Several sweeps may share a workdir (a grid run a slice at a time): sweep.json also holds a row
    for every other run directory with metrics there, rebuilt from its files as ``--collect``
    builds it, with the config arg and overrides the previous sweep.json gave it. The rows returned
    are those of ``runs`` (every run directory's if None); sweep.json has them all, by name.
    """
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"sweep: no sweep directory {workdir!r}")
    previous: dict[str, dict[str, Any]] = {}
    if os.path.exists(os.path.join(workdir, "sweep.json")):
        with open(os.path.join(workdir, "sweep.json")) as f:
            previous = {r["name"]: r for r in json.load(f)}
    on_disk = sorted(d for d in os.listdir(workdir) if os.path.isfile(os.path.join(workdir, d, METRICS_FILE)))
    if runs is None:
        runs = [(n, previous.get(n, {}).get("arg", ""), previous.get(n, {}).get("overrides", {})) for n in on_disk]
    rows = [_row(workdir, name, arg, overrides, (failed or {}).get(name)) for name, arg, overrides in runs]
    mine = {r["name"] for r in rows}
    others = [_row(workdir, n, previous.get(n, {}).get("arg", ""), previous.get(n, {}).get("overrides", {}))
              for n in on_disk if n not in mine]  # other sweeps' runs, as --collect rebuilds them
    # Written whole and then renamed: the next sweep reads it back, so a sweep killed mid-write
    # must leave the previous file, not half of one.
    tmp = os.path.join(workdir, "sweep.json.tmp")
    with open(tmp, "w") as f:
        json.dump(sorted(others + rows, key=lambda r: r["name"]), f, indent=1, default=_jsonable)
    os.replace(tmp, os.path.join(workdir, "sweep.json"))
    return rows


def _row(workdir: str, name: str, arg: str, overrides: dict[str, Any], failed: int | None = None) -> dict[str, Any]:
    """The table row of the run in ``<workdir>/<name>``, from its files."""
    run_dir = os.path.join(workdir, name)
    step, metrics = _final_metrics(run_dir)
    row = dict(name=name, arg=arg, overrides=overrides, step=step, total_steps=_total_steps(run_dir),
               stopped_early=os.path.exists(os.path.join(run_dir, "early_stop.json")), metrics=metrics)
    if not os.path.isdir(run_dir):
        row["not_started"] = True  # the sweep makes the directory as it starts the run
    if failed is not None:
        row["failed"] = failed
    return row


def _jsonable(value: Any) -> Any:
    """An override value JSON has no type for (a ConfigDict, ...): its dict, or its text."""
    return value.to_dict() if hasattr(value, "to_dict") else str(value)


def _merged_rows(workdir: str) -> list[dict[str, Any]]:
    """Every row of ``<workdir>/sweep.json`` (every run there; written by :func:`collect`)."""
    with open(os.path.join(workdir, "sweep.json")) as f:
        return json.load(f)


def is_fraction(column: str) -> bool:
    """Whether a metric column holds fractions of 1, shown in percent: its metric name (after
    ``<split>/``) contains "accuracy" (accuracy, seq_accuracy, ...). Others (loss, perplexity)
    are shown as recorded."""
    return "accuracy" in column.rpartition("/")[2]


def _cell(column: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—"
    return f"{100 * value:.1f}" if is_fraction(column) else f"{value:.4g}"


def markdown(rows: Sequence[dict[str, Any]], suffix: str = "accuracy") -> str:
    """The rows as a markdown table with the metric columns ending in ``suffix``: those of
    fractions (:func:`is_fraction`) in percent, headed "<column> (%)"; the others to 4 digits."""
    cols = sorted({k for r in rows for k in r["metrics"] if k.endswith(suffix)})
    heads = ["run", "step"] + [f"{c} (%)" if is_fraction(c) else c for c in cols]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [r["name"], _step_cell(r)] + [_cell(c, r["metrics"].get(c)) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _step_cell(r: dict[str, Any]) -> str:
    """The step a run reached, and why it is not its schedule's end where it is not."""
    step = f"{r['step']}"
    short = r.get("total_steps") and r["step"] < r["total_steps"]
    if r.get("failed") is not None:
        # A crash (out of memory at start, an exception), not a stop signal: its log says why.
        reached = step + (f" of {r['total_steps']}" if short else "")
        return f"{reached} (failed: exit {r['failed']}, see {r['name']}/sweep.log)"
    if r.get("not_started"):
        return step + " (not started)"
    if r.get("stopped_early"):
        return step + " (early stop)"
    if short:
        # Cut off (a stop signal, the machine taken back, a crash --collect cannot tell): not a
        # result of the schedule.
        return step + f" of {r['total_steps']} (unfinished)"
    return step


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="config module with get_sweep: path.py[:arg]")
    p.add_argument("--workdir", required=True, help="each run goes to <workdir>/<name>")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time")
    p.add_argument("--only", default="", help="run only entries whose name contains this (or any of a,b,...)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--metrics", default="accuracy", help="table columns: metrics ending in this")
    p.add_argument("--collect", action="store_true", help="only collect the table of existing runs")
    p.add_argument("--dry_run", "--dry-run", action="store_true", help="print the commands")
    p.add_argument("--mps", action="store_true", help="share the GPU through a CUDA MPS server of the sweep's own")
    p.add_argument("--mem_fraction", "--mem-fraction", type=float, default=None,
                   help=f"share of each accelerator's memory the concurrent runs take together, split equally "
                        f"(default {DEFAULT_MEM_FRACTION} with --parallel > 1; a single run: JAX's own)")
    a = p.parse_args(argv)
    if a.collect:
        _write_table(collect(a.workdir), a.workdir, a.metrics)
        return
    if not a.config:
        p.error("--config is required unless --collect")
    try:
        rows = run_sweep(a.config, a.workdir, parallel=a.parallel, only=a.only, extra=a.set, dry_run=a.dry_run,
                         mps=a.mps, mem_fraction=a.mem_fraction)
    except SweepRefused as e:
        print(e, file=sys.stderr, flush=True)
        sys.exit(EXIT_REFUSED)
    except SweepStopped as e:
        _write_table(e.rows, a.workdir, a.metrics)
        print(f"[sweep] {e}", flush=True)
        if e.signal == "SIGINT":
            sys.exit(EXIT_INTERRUPTED)  # as experiments.run exits after Ctrl-C, failed runs or not
        _exit_if_failed(e.rows)
        sys.exit(0)  # as experiments.run exits after SIGTERM
    _write_table(rows, a.workdir, a.metrics)
    _exit_if_failed(rows)


def _exit_if_failed(rows: Sequence[dict[str, Any]]) -> None:
    """Exit with status 1 where a run failed, so a script driving the sweep does not log success."""
    failed = [r["name"] for r in rows if r.get("failed") is not None]
    if failed:
        print(f"[sweep] {len(failed)} of {len(rows)} runs failed: {', '.join(failed)}; exiting with status 1",
              flush=True)
        sys.exit(1)


def _write_table(rows, workdir: str, suffix: str) -> None:
    """sweep.md and the printout: every run of the workdir (sweep.json, which ``rows`` were merged
    into), not only this sweep's ``rows``, as ``--collect`` shows them."""
    if rows:
        table = markdown(_merged_rows(workdir), suffix)
        with open(os.path.join(workdir, "sweep.md"), "w") as f:
            f.write(table + "\n")
        print(table)


if __name__ == "__main__":
    main()
