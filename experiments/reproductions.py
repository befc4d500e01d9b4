r"""The figures of ``docs/reproductions.md``, drawn from the runs' own ``metrics.jsonl``.

    python -m experiments.reproductions docs/reproductions

reads ``<dir>/runs/<task>/<run>/metrics.jsonl`` (the files the GPU runs wrote, kept beside the
page) and writes one PNG per task into ``<dir>``:

* ``induction_heads_lengths.png``: test accuracy against test length (the Mamba paper's Fig. 3
  axes), one line per run, from the ``len_<L>`` evaluations;
* ``<task>_curves.png`` for every task: training-batch and validation accuracy against the
  training step, one colour per run;
* ``mqar_width.png`` (when ``runs/mqar`` exists): the best test accuracy over the learning-rate
  sweep against d_model, one line per mixer, every finished run a dot (Zoology's axes).
"""

from __future__ import annotations

import argparse
import functools
import os
import re
from collections import defaultdict

from matplotlib.figure import Figure

from experiments.metrics import read_metrics

__all__ = ["learning_curves", "length_curves", "length_table", "main", "mqar_table", "mqar_width"]


def _runs(task_dir: str) -> dict[str, list[dict]]:
    if not os.path.isdir(task_dir):
        raise FileNotFoundError(f"reproductions: no runs directory {task_dir!r}")
    out = {}
    for name in sorted(os.listdir(task_dir)):
        if os.path.isfile(os.path.join(task_dir, name, "metrics.jsonl")):
            out[name] = read_metrics(os.path.join(task_dir, name))
    if not out:
        raise ValueError(f"reproductions: {task_dir} holds no run with a metrics.jsonl")
    return out


def _save(fig, ax, out: str, title: str = "", *, legend_outside: bool = False) -> str:
    ax.grid(alpha=0.3)
    if legend_outside:  # many runs: a legend inside would cover the curves
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out


def _last(records: list[dict], split: str, key: str = "accuracy"):
    values = [r[key] for r in records if r["split"] == split and key in r]
    return values[-1] if values else None


def length_table(task_dir: str) -> dict[str, dict[int, float]]:
    """``{run: {L: accuracy}}`` from each run's last ``len_<L>`` evaluations."""
    out = {}
    for name, records in _runs(task_dir).items():
        lengths = sorted({int(m.group(1)) for r in records if (m := re.fullmatch(r"len_(\d+)", r["split"]))})
        if lengths:
            out[name] = {L: _last(records, f"len_{L}") for L in lengths}
    return out


def length_curves(task_dir: str, out: str, *, train_length: int | None = None) -> str:
    """Accuracy at each ``len_<L>`` evaluation (the last one of each run) against ``L``."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for name, by_length in length_table(task_dir).items():
        ax.plot(list(by_length), [100 * v for v in by_length.values()], marker="o", markersize=3, label=name)
    if train_length:
        ax.axvline(train_length, color="gray", linestyle=":", label=f"trained at {train_length}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("test sequence length")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    return _save(fig, ax, out, os.path.basename(os.path.normpath(task_dir)))


def learning_curves(task_dir: str, out: str, *, key: str = "accuracy") -> str:
    """Training-batch ``key`` (a line; every synthetic batch is fresh data) and validation ``key``
    (markers) against the training step, one colour per run (one legend entry per run)."""
    runs = _runs(task_dir)
    many = len(runs) > 6
    fig = Figure(figsize=(9.6 if many else 6.4, 4.0))
    ax = fig.subplots()
    for i, (name, records) in enumerate(runs.items()):
        color, labelled = f"C{i % 10}", False
        marker = "osD^v<>"[i // 10 % 7]  # colours repeat after ten runs; the markers tell those apart
        for split, style in (("validation", dict(marker=marker, markersize=4, linestyle="none")),
                             ("train", dict(linewidth=1, alpha=0.6))):
            pts = sorted({r["step"]: 100 * r[key] for r in records if r["split"] == split and key in r}.items())
            if pts:
                ax.plot(*zip(*pts), color=color, label=None if labelled else name, **style)
                labelled = True
    ax.set_xlabel("step")
    ax.set_ylabel(f"{key} (%)")
    title = f"{os.path.basename(os.path.normpath(task_dir))} (lines: training batches; markers: validation)"
    return _save(fig, ax, out, title, legend_outside=many)


def mqar_table(task_dir: str, split: str = "L256_kv64") -> dict[str, dict[int, list[float]]]:
    """``{mixer: {d_model: [<split>/accuracy of each learning rate / seed]}}`` of an MQAR sweep
    (runs named ``<mixer>_d<width>_lr<lr>_s<seed>``, as ``mqar.get_sweep`` names them)."""
    acc: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for name, records in _runs(task_dir).items():
        m = re.fullmatch(r"(\w+?)_d(\d+)_lr[^_]+_s\d+", name)
        value = _last(records, split)
        if m and value is not None:
            acc[m.group(1)][int(m.group(2))].append(value)
    if not acc:
        raise ValueError(f"reproductions: no run under {task_dir} has a {split!r} evaluation")
    return {k: dict(v) for k, v in acc.items()}


def mqar_width(task_dir: str, out: str, *, split: str = "L256_kv64") -> str:
    """Best (over the sweep) ``<split>/accuracy`` against d_model per mixer, each run as a dot.

    Only runs that reached their test evaluation are drawn: an unfinished run has no point, so
    the dots say how much of the learning-rate sweep each width holds."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for i, (mixer, by_width) in enumerate(sorted(mqar_table(task_dir, split).items())):
        widths = sorted(by_width)
        color = f"C{i}"
        ax.plot(widths, [100 * max(by_width[w]) for w in widths], marker="o", color=color, label=f"{mixer} (best finished run)")
        xs = [w * (1 + 0.03 * (i - 1)) for w in widths for _ in by_width[w]]  # side by side per mixer
        ax.scatter(xs, [100 * v for w in widths for v in by_width[w]], s=12, color=color, alpha=0.45)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("d_model")
    ax.set_ylabel(f"{split} accuracy (%)")
    ax.set_ylim(-2, 102)
    return _save(fig, ax, out, "MQAR: best finished run per width (line), every finished run (dots)")


# Plots beyond the learning curves, per task directory name: (file suffix, plot function).
TASK_PLOTS = {
    "induction_heads": (("lengths", functools.partial(length_curves, train_length=256)),),
    "mqar": (("width", mqar_width),),
}


def main(argv=None) -> list[str]:
    p = argparse.ArgumentParser(prog="python -m experiments.reproductions", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="the directory holding runs/<task>/<run>/metrics.jsonl; PNGs are written there")
    a = p.parse_args(argv)
    runs = os.path.join(a.dir, "runs")
    if not os.path.isdir(runs):
        raise SystemExit(f"reproductions: no {runs!r}")
    written = []
    for task in sorted(os.listdir(runs)):
        task_dir = os.path.join(runs, task)
        written.append(learning_curves(task_dir, os.path.join(a.dir, f"{task}_curves.png")))
        for suffix, plot in TASK_PLOTS.get(task, ()):
            written.append(plot(task_dir, os.path.join(a.dir, f"{task}_{suffix}.png")))
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
