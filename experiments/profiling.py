r"""Where a training step's device time goes: a ``jax.profiler`` trace of a few steps, per-op table.

The trainer traces ``config.profile.num_steps`` steps (0: never) from the first call that starts
at or after ``config.profile.start_step`` -- choose it past the first call, which compiles -- into
``<workdir>/profile/``, then writes the per-op table of that trace beside it (``ops.json``,
``ops.md``) and logs its head. The trace itself opens in TensorBoard's profile plugin or XProf.

    python -m experiments.run --config=... --workdir=runs/x --config.profile.start_step=100 \
        --config.profile.num_steps=20
    python -m experiments.profiling runs/x/profile [--top 30]     # the table of a trace

The table is read from the trace's XSpace (``jax.profiler.ProfileData``, no TensorFlow): every
event that names the HLO instruction it ran (its ``hlo_op`` stat), summed per instruction --
on a GPU the kernels on the device's stream lines, on a CPU the XLA thunks on the host plane
(self time: a ``while`` thunk's row leaves out its body's ops, which have their own rows). A
Pallas kernel is its custom call's row (``custom-call.N``); a fusion that launches several
kernels is one row. An evaluation inside the window is in the table too (its own ``module``).
``category`` strips the instruction's ``.N`` suffix (fusion, custom-call,
copy, ...), so the category sums say what kind of work dominates.

On a GPU, XLA runs sequences of ops as CUDA graphs (command buffers), and a kernel launched from
a graph names the graph (``command_buffer_N``) as its HLO op; its row is then the kernel's own
name (a fusion's kernel is the fusion's name with ``_N`` for ``.N``, a Pallas kernel its kernel
name, a cuBLAS call its library kernel).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import warnings
from collections import defaultdict
from typing import Any, Sequence

import jax

__all__ = ["StepProfiler", "category", "latest_trace", "markdown", "op_table", "write_table"]

PROFILE_DIR = "profile"


def latest_trace(trace_dir: str) -> str:
    """The newest ``*.xplane.pb`` under ``trace_dir`` (``jax.profiler`` writes one per trace)."""
    paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"profiling: no *.xplane.pb under {trace_dir!r} (a jax.profiler trace directory)")
    return max(paths, key=os.path.getmtime)


def category(op: str) -> str:
    """``fusion.12`` -> ``fusion``; ``custom-call.3`` -> ``custom-call``; a kernel named after its
    fusion, ``input_reduce_fusion_45`` -> ``input_reduce_fusion``."""
    return re.sub(r"((\.\d+)+|_\d+)$", "", op)


def _stats(event) -> dict[str, Any]:
    with warnings.catch_warnings():  # jaxlib's stats iterator type warns on every read (0.11.2)
        warnings.simplefilter("ignore", DeprecationWarning)
        return {k: v for k, v in event.stats}


def _op_events(lines) -> list[tuple[str, str, float]]:
    """``(op, hlo_module, self_ns)`` of the events on ``lines`` that name an HLO instruction (``op``:
    that instruction, or the kernel's name where it ran inside a CUDA graph).

    Self time: an event's duration less that of the op events nested in it on the same line (a
    CPU ``while`` thunk holds its body's thunks), so nothing is counted twice."""
    out = []
    for line in lines:
        ops = []
        for event in line.events:
            s = _stats(event)
            if s.get("hlo_op"):
                op, kernel = str(s["hlo_op"]), str(getattr(event, "name", "") or "")
                if op.startswith("command_buffer") and kernel:
                    op = kernel  # a kernel launched from a CUDA graph: the graph is its HLO op
                ops.append((float(event.start_ns), float(event.end_ns), op, str(s.get("hlo_module", ""))))
        ops.sort(key=lambda e: (e[0], -e[1]))
        self_ns = [e[1] - e[0] for e in ops]
        stack: list[int] = []  # indices of the open enclosing events
        for i, (start, end, _, _) in enumerate(ops):
            while stack and ops[stack[-1]][1] <= start:
                stack.pop()
            if stack:
                self_ns[stack[-1]] -= end - start  # the direct parent loses its child's time
            stack.append(i)
        out += [(op, module, max(t, 0.0)) for (_, _, op, module), t in zip(ops, self_ns)]
    return out


def op_table(path: str) -> dict[str, Any]:
    """Per-op device time of the trace at ``path`` (a ``.xplane.pb`` file or a trace directory).

    Returns ``{"source": plane/lines read, "total_ms", "ops": [rows], "categories": [rows]}``;
    an op row: ``op``, ``category``, ``module``, ``count``, ``total_ms``, ``mean_us``, ``pct``
    (of the total), largest first.
    """
    from jax.profiler import ProfileData

    if os.path.isdir(path):
        path = latest_trace(path)
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"profiling: no trace at {path!r} (a jax.profiler trace directory or .xplane.pb file)")
    data = ProfileData.from_file(path)
    planes = list(data.planes)
    # Accelerators: the kernels on the device planes' stream lines (derived lines such as
    # "XLA Ops", where a converter added them, would count each op twice). CPU: the host plane.
    events, source = [], ""
    for plane in planes:
        if plane.name.startswith("/device:"):
            lines = list(plane.lines)
            streams = [ln for ln in lines if ln.name.startswith("Stream")]
            got = _op_events(streams or lines)
            if got:
                events += got
                source += f"{plane.name} ({'stream lines' if streams else 'all lines'}) "
    if not events:
        for plane in planes:
            if plane.name.startswith("/host:CPU"):
                events += _op_events(plane.lines)
                source = f"{plane.name} (XLA thunks)"
    if not events:
        raise ValueError(f"profiling: the trace {path!r} has no event naming an HLO op (did the traced window run a step?)")
    by_op: dict[tuple[str, str], list[float]] = defaultdict(list)
    for op, module, ns in events:
        by_op[(op, module)].append(ns)
    total_ns = sum(ns for _, _, ns in events)
    rows = [
        dict(op=op, category=category(op), module=module, count=len(d), total_ms=sum(d) / 1e6,
             mean_us=sum(d) / len(d) / 1e3, pct=100 * sum(d) / total_ns)
        for (op, module), d in by_op.items()
    ]
    rows.sort(key=lambda r: -r["total_ms"])
    cats: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        cats[r["category"]].append(r["total_ms"])
    categories = sorted(
        (dict(category=c, ops=len(v), total_ms=sum(v), pct=100 * sum(v) * 1e6 / total_ns) for c, v in cats.items()),
        key=lambda r: -r["total_ms"],
    )
    return dict(source=source.strip(), trace=path, total_ms=total_ns / 1e6, ops=rows, categories=categories)


def markdown(table: dict[str, Any], top: int = 30, steps: int | None = None) -> str:
    """The table's categories and its ``top`` ops as markdown; per step where ``steps`` is given."""
    per = f" per step ({steps} steps traced)" if steps else ""
    div = steps or 1
    lines = [f"Device time by op, from {table['source']}: {table['total_ms'] / div:.3f} ms{per}.", "",
             "| category | ops | ms | % |", "|---|---|---|---|"]
    lines += [f"| {c['category']} | {c['ops']} | {c['total_ms'] / div:.3f} | {c['pct']:.1f} |" for c in table["categories"]]
    lines += ["", "| op | module | count | ms | mean us | % |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['op']} | {r['module']} | {r['count']} | {r['total_ms'] / div:.3f} | {r['mean_us']:.1f} | {r['pct']:.1f} |"
              for r in table["ops"][:top]]
    if len(table["ops"]) > top:
        lines.append(f"| ... {len(table['ops']) - top} more ops | | | | | |")
    return "\n".join(lines)


def write_table(trace_dir: str, *, steps: int | None = None, top: int = 30) -> dict[str, Any]:
    """:func:`op_table` of the newest trace under ``trace_dir``, written to ``ops.json`` / ``ops.md`` there."""
    table = op_table(trace_dir)
    table["steps"] = steps
    with open(os.path.join(trace_dir, "ops.json"), "w") as f:
        json.dump(table, f, indent=1)
    with open(os.path.join(trace_dir, "ops.md"), "w") as f:
        f.write(markdown(table, top, steps) + "\n")
    return table


class StepProfiler:
    """The trainer's trace window: :meth:`before_call` starts the trace at the first call from
    ``start_step`` on, :meth:`after_call` stops it once ``num_steps`` steps ran and writes the
    table. The device is synchronized on both edges, so the window holds exactly its steps."""

    def __init__(self, profile_config, workdir: str, *, enabled: bool = True):
        self.num_steps = int(profile_config.get("num_steps", 0)) if profile_config else 0
        self.start_step = int(profile_config.get("start_step", 0)) if profile_config else 0
        self.trace_dir = os.path.join(workdir, PROFILE_DIR)
        self.enabled = enabled and self.num_steps > 0
        self.started_at: int | None = None
        self.done = False

    def before_call(self, step: int, state) -> None:
        if self.enabled and not self.done and self.started_at is None and step >= self.start_step:
            jax.block_until_ready(state)
            os.makedirs(self.trace_dir, exist_ok=True)
            jax.profiler.start_trace(self.trace_dir)
            self.started_at = step

    def after_call(self, step: int, state, *, last: bool = False) -> dict[str, Any] | None:
        """Stop at ``num_steps`` steps (or at the last call); return the table once written."""
        if self.started_at is None or self.done or (step - self.started_at < self.num_steps and not last):
            return None
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        self.done = True
        steps = step - self.started_at
        table = write_table(self.trace_dir, steps=steps)
        head = ", ".join(f"{c['category']} {c['pct']:.0f}%" for c in table["categories"][:5])
        print(f"profile of steps {self.started_at + 1}-{step}: {table['total_ms'] / steps:.3f} ms of device time per "
              f"step ({head}); table: {os.path.join(self.trace_dir, 'ops.md')}", flush=True)
        return table

    def close(self) -> None:
        """Stop a trace left running (the run ended inside its window); no table then."""
        if self.started_at is not None and not self.done:
            jax.profiler.stop_trace()
            self.done = True


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.profiling", description=__doc__.split("\n\n")[0])
    p.add_argument("trace", help="a jax.profiler trace directory (e.g. <workdir>/profile) or .xplane.pb file")
    p.add_argument("--top", type=int, default=30, help="ops listed")
    p.add_argument("--steps", type=int, default=None, help="steps in the trace: times per step")
    a = p.parse_args(argv)
    if a.top < 1 or (a.steps is not None and a.steps < 1):
        p.error(f"--top and --steps must be >= 1; got --top={a.top}, --steps={a.steps}")
    print(markdown(op_table(a.trace), a.top, a.steps))


if __name__ == "__main__":
    main()
