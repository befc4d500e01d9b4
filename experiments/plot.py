"""Draw a run's curves: ``python -m experiments.plot DIR [--out FILE]`` -> ``DIR/curves.png``.

One panel per metric found in ``DIR/metrics.jsonl`` (loss first, then accuracy, the other task
metrics and throughput), one line per split, against the training step; a split has the same
colour in every panel.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

# A bare Figure (no pyplot) renders to files without a display and leaves the caller's
# backend alone, e.g. a notebook's inline one.
from matplotlib.figure import Figure

from experiments.metrics import METRICS_FILE, read_metrics

__all__ = ["figure", "plot"]

_FIRST = ("loss", "accuracy", "seq_accuracy")
_SKIP = ("step", "split")


def plot(workdir: str, out: str | None = None) -> str:
    """Write the curves of ``workdir`` to ``out`` (default ``workdir/curves.png``); return the path."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.isfile(path):
        why = "does not exist" if not os.path.exists(workdir) else f"has no {METRICS_FILE}"
        raise FileNotFoundError(f"plot: {workdir} {why}; expected the --workdir of a run (python -m experiments.run)")
    records = read_metrics(workdir)
    if not records:
        raise ValueError(f"plot: {workdir}/metrics.jsonl has no records")
    fig = figure(records, title=os.path.basename(os.path.abspath(workdir)))
    out = out or os.path.join(workdir, "curves.png")
    fig.savefig(out, dpi=100)
    return out


def figure(records: list[dict], title: str = "") -> Figure:
    """The panels of :func:`plot` for ``records`` (rows of ``metrics.jsonl``)."""
    # series[metric][split] = ([steps], [values])
    series: dict[str, dict[str, tuple[list, list]]] = defaultdict(lambda: defaultdict(lambda: ([], [])))
    for r in records:
        for k, v in r.items():
            if k in _SKIP or not isinstance(v, (int, float)):
                continue
            steps, values = series[k][r["split"]]
            steps.append(r["step"])
            values.append(v)
    # One colour per split for the whole figure: a panel's own order would recolour a split
    # whenever another split is missing from that panel (train alone has grad_norm).
    splits = sorted({r["split"] for r in records}, key=lambda s: (s != "train", s))
    colour = {s: f"C{i % 10}" for i, s in enumerate(splits)}
    names = [n for n in _FIRST if n in series] + sorted(n for n in series if n not in _FIRST)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(5 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, name in zip(axes.flat, names):
        for split in (s for s in splits if s in series[name]):
            steps, values = series[name][split]
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=split, color=colour[split])
        ax.set_title(name)
        ax.set_xlabel("step")
        positive = [v for _, vals in series[name].values() for v in vals if v > 0]
        if name in ("loss", "perplexity") and positive and max(positive) > 20 * min(positive):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--out", default=None, help="PNG path (default: WORKDIR/curves.png)")
    args = parser.parse_args(argv)
    try:
        print(plot(args.workdir, args.out))
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))  # the message and exit status 2, no traceback


if __name__ == "__main__":
    main()
