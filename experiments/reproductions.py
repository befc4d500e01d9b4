r"""The figures of ``docs/reproductions.md``, drawn from the runs' own ``metrics.jsonl``.

    python -m experiments.reproductions docs/reproductions

reads ``<dir>/runs/<task>/<run>/metrics.jsonl`` (the files the GPU runs wrote, kept beside the
page) and writes one PNG per task into ``<dir>``:

* ``induction_heads_lengths.png``: test accuracy against test length (the Mamba paper's Fig. 3
  axes), one line per run, from the ``len_<L>`` evaluations; runs that differ only in their seed
  (``mamba_s0``, ``mamba_s1``, ...) are one line, their mean, with a band from the lowest to the
  highest seed;
* ``<task>_curves.png`` for every task: training-batch and validation accuracy against the
  training step, one colour per run;
* ``mqar_width.png`` (when ``runs/mqar`` exists): the best test accuracy over the learning-rate
  sweep against d_model, one line per mixer, every finished run a dot, one panel per test length
  from 128 to 1024 (Zoology's axes).

* ``lra_<task>_curves.png`` for the Long Range Arena tasks (``runs/lra_<task>``) instead of the
  step curves: validation and test accuracy against the epoch, with state-spaces/s4's notes for
  that task (its S4 run's accuracy by an epoch and its final accuracy) and the papers' S4 / S4D
  test accuracy, to compare the curve and not only the end.

LRA: ``python -m experiments.reproductions --lra=docs/reproductions/runs/lra_<task>`` prints per
run the epochs trained, the validation accuracy at the s4 notes' epoch, the best validation
accuracy and the test accuracy of that evaluation, beside the published numbers.

Seeds: ``python -m experiments.reproductions --seeds=docs/reproductions/runs/<task>
[--split=validation]`` prints, per run name without its ``_s<seed>`` part, the number of seeds,
the mean, the sample standard deviation and the range of the last ``<split>`` accuracy: the
"mean and spread" rows of the tables.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import statistics
from collections import defaultdict

from matplotlib.figure import Figure

from experiments.metrics import read_metrics

__all__ = ["learning_curves", "length_curves", "length_table", "lra_curves", "lra_markdown", "lra_table", "main",
           "mqar_table", "mqar_width", "seed_groups", "seed_markdown", "seed_summary", "unfinished"]


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


_SEEDED = re.compile(r"(.+?)_s(\d+)(_.*)?")  # <config>_s<seed>[_<tag>]: mamba_s0, mamba_s0_h100


def _seed_key(name: str) -> tuple[str, int | None]:
    """``(group, seed)``: the run name without its ``_s<seed>`` part, and the seed (None if it has none)."""
    m = _SEEDED.fullmatch(name)
    return (m.group(1) + (m.group(3) or ""), int(m.group(2))) if m else (name, None)


def seed_groups(names) -> dict[str, dict[int | None, str]]:
    """``{group: {seed: run name}}``: runs that differ only in their ``_s<seed>`` part together."""
    out: dict[str, dict[int | None, str]] = defaultdict(dict)
    for name in sorted(names):
        group, seed = _seed_key(name)
        out[group][seed] = name
    return dict(out)


def unfinished(task_dir: str, name: str, records: list[dict]) -> bool:
    """Whether run ``name`` stopped before its schedule's end without an early stop (cut off):
    its last step is below ``total_steps`` of its ``config.json`` and its last evaluation of the
    ``early_stop`` metric (if any) misses the threshold. False when there is no ``config.json``."""
    path = os.path.join(task_dir, name, "config.json")
    if not os.path.isfile(path) or not records:
        return False
    with open(path) as f:
        config = json.load(f)
    if max(int(r["step"]) for r in records) >= int(config["total_steps"]):
        return False
    rule = config.get("early_stop") or {}
    if rule.get("metric"):
        split, _, metric = rule["metric"].partition("/")
        value = _last(records, split, metric)
        threshold = float(rule["threshold"])
        if value is not None and (value <= threshold if rule.get("mode") == "min" else value >= threshold):
            return False  # stopped early by its rule: finished
    return True


def seed_summary(task_dir: str, split: str = "validation", key: str = "accuracy") -> dict[str, dict]:
    """Per group of seeds (:func:`seed_groups`), the last ``<split>/<key>`` of each seed and their
    ``n``, ``mean``, ``std`` (sample standard deviation; None for one seed), ``min``, ``max``.
    Runs without that evaluation (cut off before it) are left out of those and listed in
    ``missing``; a group none of whose runs has it keeps a row with ``n`` = 0. Runs counted whose
    schedule was cut off (:func:`unfinished`: their value is not a final one) are listed in
    ``unfinished``."""
    runs = _runs(task_dir)
    out = {}
    for group, by_seed in seed_groups(runs).items():
        values = {seed: _last(runs[name], split, key) for seed, name in by_seed.items()}
        have = {seed: v for seed, v in values.items() if v is not None}
        missing = sorted(by_seed[seed] for seed, v in values.items() if v is None)
        cut = sorted(by_seed[seed] for seed in have if unfinished(task_dir, by_seed[seed], runs[by_seed[seed]]))
        if not have:  # every seed cut off before this evaluation: a row that says so
            out[group] = dict(seeds=[], values=[], n=0, mean=None, std=None, min=None, max=None, missing=missing,
                              unfinished=[])
            continue
        xs = list(have.values())
        out[group] = dict(seeds=sorted(have, key=lambda s: -1 if s is None else s), values=xs, n=len(xs),
                          mean=statistics.mean(xs), std=statistics.stdev(xs) if len(xs) > 1 else None,
                          min=min(xs), max=max(xs), missing=missing, unfinished=cut)
    if not any(r["n"] for r in out.values()):
        raise ValueError(f"reproductions: no run under {task_dir} has a {split!r} {key!r} evaluation")
    return out


def seed_markdown(summary: dict[str, dict], *, percent: bool = True) -> str:
    """:func:`seed_summary` as a markdown table (values in %, unless ``percent`` is False)."""
    f = lambda v: "—" if v is None else f"{100 * v:.1f}" if percent else f"{v:.4g}"
    lines = ["| run | seeds | mean | std | min - max |", "|---|---|---|---|---|"]
    for group, r in summary.items():
        seeds = ", ".join("-" if s is None else str(s) for s in r["seeds"])
        count = f"{r['n']}: {seeds}" if seeds else f"{r['n']}"
        if r["missing"]:
            count += f" (no evaluation: {', '.join(r['missing'])})"
        if r.get("unfinished"):
            count += f" (cut off before the end of its schedule: {', '.join(r['unfinished'])})"
        spread = "—" if r["n"] == 0 else f"{f(r['min'])} - {f(r['max'])}"
        lines.append(f"| {group} | {count} | {f(r['mean'])} | {f(r['std'])} | {spread} |")
    return "\n".join(lines)


def _length_series(task_dir: str) -> dict[str, tuple[list[int], list[float], list[float], list[float], int]]:
    """``{label: (lengths, mean, low, high, seeds)}`` of the ``len_<L>`` accuracies, seeds of one
    config pooled at the lengths every one of them was tested at."""
    table = length_table(task_dir)
    out = {}
    for group, by_seed in seed_groups(table).items():
        curves = [table[name] for name in by_seed.values()]
        lengths = sorted(set.intersection(*(set(c) for c in curves)))
        per_length = [[c[L] for c in curves] for L in lengths]
        label = group if len(curves) == 1 else f"{group} ({len(curves)} seeds: mean, min-max band)"
        out[label] = (lengths, [sum(v) / len(v) for v in per_length], [min(v) for v in per_length],
                      [max(v) for v in per_length], len(curves))
    return out


def length_curves(task_dir: str, out: str, *, train_length: int | None = None) -> str:
    """Accuracy at each ``len_<L>`` evaluation (the last one of each run) against ``L``; several
    seeds of one config as their mean with a min-max band."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for i, (label, (lengths, mean, low, high, seeds)) in enumerate(_length_series(task_dir).items()):
        color = f"C{i % 10}"
        ax.plot(lengths, [100 * v for v in mean], marker="o", markersize=3, color=color, label=label)
        if seeds > 1:
            ax.fill_between(lengths, [100 * v for v in low], [100 * v for v in high], color=color, alpha=0.2)
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


MQAR_PANELS = ("L128_kv32", "L256_kv64", "L512_kv128", "L1024_kv256")  # Zoology Fig. 2: one panel per length


def mqar_width(task_dir: str, out: str, *, splits: tuple[str, ...] = MQAR_PANELS) -> str:
    """Per test setting (a panel each), the best (over the sweep) accuracy against d_model per
    mixer as a line, each finished run as a dot.

    Only runs that reached their test evaluation are drawn: an unfinished run has no point, so
    the dots say how much of the learning-rate sweep each width holds."""
    fig = Figure(figsize=(3.2 * len(splits), 3.6))
    axes = fig.subplots(1, len(splits), sharey=True, squeeze=False)[0]
    for ax, split in zip(axes, splits):
        for i, (mixer, by_width) in enumerate(sorted(mqar_table(task_dir, split).items())):
            widths = sorted(by_width)
            color = f"C{i}"
            ax.plot(widths, [100 * max(by_width[w]) for w in widths], marker="o", color=color,
                    label=f"{mixer} (best finished run)")
            xs = [w * (1 + 0.03 * (i - 1)) for w in widths for _ in by_width[w]]  # side by side per mixer
            ax.scatter(xs, [100 * v for w in widths for v in by_width[w]], s=12, color=color, alpha=0.45)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("d_model")
        ax.set_ylim(-2, 102)
        length, pairs = re.fullmatch(r"L(\d+)_kv(\d+)", split).groups()
        ax.set_title(f"length {length}, {pairs} pairs", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("MQAR: best finished run per width (lines), every finished run (dots)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out


# --------------------------------------------------------------------------------------------
# Long Range Arena: accuracy against the epoch, beside the published checkpoints


def _run_config(task_dir: str, name: str) -> dict:
    path = os.path.join(task_dir, name, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reproductions: {path} is missing (the trainer writes it beside metrics.jsonl)")
    with open(path) as f:
        return json.load(f)


def _lra_epochs(config: dict, where: str) -> tuple[str | None, float]:
    """``(task, examples per epoch)`` of an LRA run's config: the task from its dataset, the epoch
    from its recipe (a run with another batch size still counts epochs of training examples).
    Pathfinder at another size than 32 counts by Pathfinder's recipe and has no task (no notes).
    A run of another dataset is refused: it has no epochs of an LRA recipe."""
    from experiments.configs.lra import base

    name = config["data"]["name"]
    task = base.task_of_dataset(name)
    if task is None and not name.startswith(base.DATASETS["pathfinder"].rstrip("0123456789")):
        raise ValueError(f"reproductions: {where} is not an LRA run (its data.name is {name!r}; LRA datasets: "
                         f"{sorted(base.DATASETS.values())} and the other Pathfinder sizes)")
    recipe = task or "pathfinder"
    return task, base.steps_per_epoch(recipe) * base.S4_PUBLISHED[recipe]["batch_size"]


def lra_table(task_dir: str) -> dict[str, dict]:
    """Per LRA run: ``epochs`` trained (at its last evaluation); ``at_checkpoint`` the validation
    accuracy at the epoch state-spaces/s4's notes give one for (None before it);
    ``best_validation``, its ``best_epoch`` and ``test_at_best`` (the test accuracy of that
    evaluation: the number the papers report); ``last_test``; and ``notes``, the s4 repository's
    (``base.S4_REPO_NOTES``, None for a task it has none for)."""
    from experiments.configs.lra import base

    out = {}
    for name, records in _runs(task_dir).items():
        config = _run_config(task_dir, name)
        task, per_epoch = _lra_epochs(config, os.path.join(task_dir, name))
        epoch = lambda step: step * config["data"]["batch_size"] / per_epoch
        val = {r["step"]: r["accuracy"] for r in records if r["split"] == "validation" and "accuracy" in r}
        test = {r["step"]: r["accuracy"] for r in records if r["split"] == "test" and "accuracy" in r}
        notes = base.S4_REPO_NOTES.get(task) if task else None
        row = dict(task=task, epochs=epoch(max(val)) if val else 0.0, at_checkpoint=None, best_validation=None,
                   best_epoch=None, test_at_best=None, last_test=test[max(test)] if test else None, notes=notes)
        if val:
            best = max(val, key=lambda s: (val[s], -s))  # the first evaluation reaching the best
            row.update(best_validation=val[best], best_epoch=epoch(best), test_at_best=test.get(best))
            if notes:
                reached = [s for s in val if epoch(s) <= notes["at_epoch"][0] + 1e-9]
                if epoch(max(val)) >= notes["at_epoch"][0] - 1e-9 and reached:
                    row["at_checkpoint"] = val[max(reached)]
        out[name] = row
    return out


def lra_markdown(table: dict[str, dict]) -> str:
    """:func:`lra_table` as markdown: ours against the s4 repository's notes and the papers."""
    from experiments.configs.lra import base

    f = lambda v: "—" if v is None else f"{100 * v:.1f}"
    lines = ["| run | epochs | val. at the s4 checkpoint (s4) | best val. (epoch) | test at best val. | "
             "published test (S4 / S4D) |", "|---|---|---|---|---|---|"]
    for name, r in table.items():
        notes, published = r["notes"], base.ACCURACY.get(r["task"] or "")
        check = "—" if not notes else (f"{f(r['at_checkpoint'])} at epoch {notes['at_epoch'][0]} "
                                       f"({notes['at_epoch'][1]:g})")
        best = "—" if r["best_validation"] is None else f"{f(r['best_validation'])} ({r['best_epoch']:.0f})"
        paper = "—" if not published else f"{published['s4']:.2f} / {published['s4d']:.2f}"
        lines.append(f"| {name} | {r['epochs']:.1f} | {check} | {best} | {f(r['test_at_best'])} | {paper} |")
    return "\n".join(lines)


def lra_curves(task_dir: str, out: str) -> str:
    """Validation (line) and test (hollow markers) accuracy against the epoch, one colour per run,
    with state-spaces/s4's notes for the task (its S4 run's accuracy at an epoch, a star, and its
    final accuracy, a dotted line) and the papers' S4 / S4D test accuracy (dashed)."""
    from experiments.configs.lra import base

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    tasks = set()
    for i, (name, records) in enumerate(_runs(task_dir).items()):
        config = _run_config(task_dir, name)
        task, per_epoch = _lra_epochs(config, os.path.join(task_dir, name))
        tasks.add(task)
        scale = config["data"]["batch_size"] / per_epoch
        color = f"C{i % 10}"
        for split, style in (("validation", dict(marker="o", markersize=3)),
                             ("test", dict(marker="o", markersize=4, linestyle="none", fillstyle="none"))):
            pts = sorted((r["step"] * scale, 100 * r["accuracy"]) for r in records
                         if r["split"] == split and "accuracy" in r)
            if pts:
                ax.plot(*zip(*pts), color=color, label=f"{name} ({split})", **style)
    for task in sorted(t for t in tasks if t):
        notes, published = base.S4_REPO_NOTES[task], base.ACCURACY[task]
        ax.plot(*notes["at_epoch"], marker="*", markersize=11, color="black", linestyle="none",
                label=f"state-spaces/s4 notes: ~{notes['at_epoch'][1]:g}% by epoch {notes['at_epoch'][0]}")
        ax.axhline(notes["final"], color="black", linestyle=":", linewidth=1,
                   label=f"state-spaces/s4 notes: final ~{notes['final']:g}%")
        for mixer, style in (("s4", "--"), ("s4d", "-.")):
            ax.axhline(published[mixer], color="gray", linestyle=style, linewidth=1,
                       label=f"published {mixer.upper()} test {published[mixer]:.2f}%")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    return _save(fig, ax, out, f"{os.path.basename(os.path.normpath(task_dir))}: validation (lines), test (circles)",
                 legend_outside=True)


# Plots beyond the learning curves, per task directory name: (file suffix, plot function).
TASK_PLOTS = {
    "induction_heads": (("lengths", functools.partial(length_curves, train_length=256)),),
    "mqar": (("width", mqar_width),),
}
LRA_PREFIX = "lra_"  # runs/lra_<task>/<run>: an LRA task's runs, drawn by :func:`lra_curves`


def main(argv=None) -> list[str]:
    p = argparse.ArgumentParser(prog="python -m experiments.reproductions", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", nargs="?",
                   help="the directory holding runs/<task>/<run>/metrics.jsonl; PNGs are written there")
    p.add_argument("--seeds", metavar="TASK_DIR", help="print the mean and spread over seeds of the runs in TASK_DIR")
    p.add_argument("--split", default="validation", help="with --seeds: the evaluation (e.g. L256_kv64, len_4096)")
    p.add_argument("--lra", metavar="TASK_DIR",
                   help="print the LRA table of the runs in TASK_DIR (epochs, the s4 checkpoint, best validation, test)")
    a = p.parse_args(argv)
    if a.lra:
        try:
            table = lra_table(a.lra)
        except (FileNotFoundError, ValueError, KeyError) as e:
            p.error(f"--lra={a.lra}: {e}")
        print(lra_markdown(table))
        return []
    if a.seeds:
        try:
            summary = seed_summary(a.seeds, a.split)
        except (FileNotFoundError, ValueError) as e:
            p.error(f"--seeds={a.seeds} --split={a.split}: {e}")
        print(seed_markdown(summary))
        return []
    if not a.dir:
        p.error("give the figures' directory (e.g. docs/reproductions), or --seeds=TASK_DIR")
    runs = os.path.join(a.dir, "runs")
    if not os.path.isdir(runs):
        raise SystemExit(f"reproductions: no {runs!r}")
    written = []
    for task in sorted(os.listdir(runs)):
        task_dir = os.path.join(runs, task)
        if task.startswith(LRA_PREFIX):  # epochs, not steps, against the s4 repository's notes
            written.append(lra_curves(task_dir, os.path.join(a.dir, f"{task}_curves.png")))
            continue
        written.append(learning_curves(task_dir, os.path.join(a.dir, f"{task}_curves.png")))
        for suffix, plot in TASK_PLOTS.get(task, ()):
            written.append(plot(task_dir, os.path.join(a.dir, f"{task}_{suffix}.png")))
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
