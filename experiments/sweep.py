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
reaches them only through the sweep. A run that the forwarded SIGTERM ends before it has set up its
own handler (exit -15) was stopped, not failed.

Exit status, after the table is written: 1 if any run failed (exited non-zero, or was killed by a
signal the sweep did not send), whether or not the sweep was stopped; otherwise 0, and 0 after
SIGTERM, as a run does; 130 after SIGINT (the shell's 128 + SIGINT, so ``&&`` chains stop), failed
runs or not. ``--collect`` and ``--dry_run`` exit 0.

The table (``<workdir>/sweep.json`` and ``sweep.md``) has one row per run: its name, arg and
overrides, the last step it reached (marked "early stop", or "of N (unfinished)" for a run cut off
before its ``total_steps``, "(failed: exit N, see <name>/sweep.log)" for a run that failed in this
sweep: sweep.json keeps its exit code as ``failed``), and the latest value of every evaluation
metric in its ``metrics.jsonl`` (``--metrics`` picks columns by suffix, default ``accuracy``).
``--collect`` rebuilds the rows from the run directories alone, so it cannot mark failed runs.
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
from typing import Any, Sequence

from experiments import configs
from experiments.metrics import METRICS_FILE, read_metrics

__all__ = ["MPSServer", "Run", "SweepStopped", "collect", "load_sweep", "main", "markdown", "run_sweep"]

Run = tuple[str, str, dict[str, Any]]


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


def _command(path: str, run: Run, workdir: str, extra: Sequence[str]) -> list[str]:
    name, arg, overrides = run
    cmd = [sys.executable, "-m", "experiments.run", f"--config={path}" + (f":{arg}" if arg else ""),
           f"--workdir={os.path.join(workdir, name)}"]
    cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
    cmd += [f"--config.{kv}" for kv in extra]
    return cmd


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
    os.makedirs(workdir, exist_ok=True)
    env = dict(os.environ)
    sets_fraction = _run_memory_fraction(env, parallel, mem_fraction)
    pending = [(r, _command(path, r, workdir, extra)) for r in runs]
    if dry_run:
        for _, cmd in pending:
            print(" ".join(cmd))
        return []
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
                    proc.send_signal(signal.SIGTERM)
            os.write(2, f"[sweep] {self.requested}: asked {len(self.running)} running run(s) to save and stop\n".encode())

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
            proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    for item in list(running):
        run, proc, log, t0 = item
        if proc.poll() is None:
            continue
        log.close()
        running.remove(item)
        code = proc.returncode
        if code == 0:
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

    Several sweeps may share a workdir (a grid run a slice at a time): sweep.json keeps the rows of
    the other runs still on disk, with their config arg and overrides, refreshed by the next
    ``--collect``. The rows returned are those of ``runs`` (every run directory's if None).
    """
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"sweep: no sweep directory {workdir!r}")
    previous: dict[str, dict[str, Any]] = {}
    if os.path.exists(os.path.join(workdir, "sweep.json")):
        with open(os.path.join(workdir, "sweep.json")) as f:
            previous = {r["name"]: r for r in json.load(f)}
    if runs is None:
        names = sorted(d for d in os.listdir(workdir) if os.path.isfile(os.path.join(workdir, d, METRICS_FILE)))
        runs = [(n, previous.get(n, {}).get("arg", ""), previous.get(n, {}).get("overrides", {})) for n in names]
    rows = []
    for name, arg, overrides in runs:
        run_dir = os.path.join(workdir, name)
        step, metrics = _final_metrics(run_dir)
        stopped = os.path.exists(os.path.join(run_dir, "early_stop.json"))
        rows.append(dict(name=name, arg=arg, overrides=overrides, step=step, total_steps=_total_steps(run_dir),
                         stopped_early=stopped, metrics=metrics))
        if failed and name in failed:
            rows[-1]["failed"] = failed[name]
    mine = {r["name"] for r in rows}
    kept = [r for n, r in previous.items()  # other sweeps' runs that are still on disk
            if n not in mine and os.path.isfile(os.path.join(workdir, n, METRICS_FILE))]
    # Written whole and then renamed: the next sweep reads it back, so a sweep killed mid-write
    # must leave the previous file, not half of one.
    tmp = os.path.join(workdir, "sweep.json.tmp")
    with open(tmp, "w") as f:
        json.dump(sorted(kept + rows, key=lambda r: r["name"]), f, indent=1)
    os.replace(tmp, os.path.join(workdir, "sweep.json"))
    return rows


def markdown(rows: Sequence[dict[str, Any]], suffix: str = "accuracy") -> str:
    """The rows as a markdown table with the metric columns ending in ``suffix``."""
    cols = sorted({k for r in rows for k in r["metrics"] if k.endswith(suffix)})
    head = "| run | step | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for r in rows:
        vals = [r["metrics"].get(c) for c in cols]
        cells = [f"{100 * v:.1f}" if isinstance(v, (int, float)) else "—" for v in vals]
        lines.append(f"| {r['name']} | {_step_cell(r)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _step_cell(r: dict[str, Any]) -> str:
    """The step a run reached, and why it is not its schedule's end where it is not."""
    step = f"{r['step']}"
    short = r.get("total_steps") and r["step"] < r["total_steps"]
    if r.get("failed") is not None:
        # A crash (out of memory at start, an exception), not a stop signal: its log says why.
        reached = step + (f" of {r['total_steps']}" if short else "")
        return f"{reached} (failed: exit {r['failed']}, see {r['name']}/sweep.log)"
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
    except SweepStopped as e:
        _write_table(e.rows, a.workdir, a.metrics)
        print(f"[sweep] {e}", flush=True)
        if e.signal == "SIGINT":
            sys.exit(130)  # as experiments.run exits after Ctrl-C, failed runs or not
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
    if rows:
        table = markdown(rows, suffix)
        with open(os.path.join(workdir, "sweep.md"), "w") as f:
            f.write(table + "\n")
        print(table)


if __name__ == "__main__":
    main()
