r"""Long Range Arena training speed: every ``experiments/configs/lra`` config x mixer, the trainer's step.

Each config is built as committed (model, batch, optimizer) with its data swapped for random
tokens of the task's real shape (``experiments.data.random_tokens``: same length, vocabulary,
classes, two sequences for Retrieval), then ``benchmarks.timing.trainer_speed`` runs the trainer
itself for ``--warmup + --steps`` steps. Rows: examples/s, tokens/s, seconds per epoch (the
published train split over the batch), peak memory, compile time; and the epoch time against the
state-spaces/s4 repository's reported minutes per epoch of S4 (``base.S4_REPO_NOTES``: ListOps
15 min and Text 17 min on a T4; Retrieval 23 min, CIFAR 2 min, Pathfinder 7 min, Path-X 56 min on
an A100; the goal is 5x faster than those).

    PYTHONPATH=$PWD python3 benchmarks/lra.py --json $OUT/lra.json [--task listops --mixer s4d ...]
    python -m benchmarks.lra --smoke     # a CPU check: 1-layer models at length <= 256

Measured (one H100, 2026-12-06 and 07; every task x mixer but Path-X with Mamba, Mamba-2 and
Hydra): ``docs/reproductions.md`` (Long Range Arena), raw rows in
``benchmarks/results/lra_h100.jsonl``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys

import jax

from benchmarks.timing import trainer_speed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "experiments", "configs", "lra")
TASKS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
# Published train split sizes (LRA release; Image = CIFAR-10's 45K after a 5K validation split,
# Pathfinder / Path-X = 80% of 200K).
TRAIN_EXAMPLES = dict(listops=96_000, text=25_000, retrieval=147_086, image=45_000, pathfinder=160_000, pathx=160_000)


def _config(task: str, mixer: str, *, smoke: bool, dtype: str):
    spec = importlib.util.spec_from_file_location(f"lra_{task}", os.path.join(CONFIGS, f"{task}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(f"mixer={mixer}" + (",smoke" if smoke else ""))
    c.unlock()
    retrieval = bool(c.model.dual_encoder)
    c.data = dict(
        name="random_retrieval" if retrieval else "random_classification", batch_size=int(c.data.batch_size),
        seq_len=int(c.data.seq_len), vocab_size=int(c.model.vocab_size), num_classes=int(c.model.num_classes),
        eval_examples=int(c.data.batch_size),
    )
    c.model.dtype = dtype
    return c.lock()


def row(task: str, mixer: str, args) -> dict:
    c = _config(task, mixer, smoke=args.smoke, dtype=args.dtype)
    speed = trainer_speed(c, warmup=args.warmup, steps=args.steps)
    epoch_s = TRAIN_EXAMPLES[task] / speed["examples_per_sec"]
    out = dict(task=task, mixer=mixer, batch=int(c.data.batch_size), seq_len=int(c.data.seq_len), dtype=args.dtype,
               n_layers=int(c.model.n_layers), d_model=int(c.model.d_model), epoch_s=epoch_s,
               backend=jax.default_backend(), device=str(jax.devices()[0].device_kind), **speed)
    # A smoke row (a 1-layer model at a short length) is no epoch of the task: no ratio for it.
    return out if args.smoke else {**out, **vs_s4_repo(task, epoch_s)}


def vs_s4_repo(task: str, epoch_s: float) -> dict:
    """The state-spaces/s4 repository's S4 epoch time on ``task`` (seconds, its GPU) and how many
    times faster an epoch of ``epoch_s`` seconds is."""
    from experiments.configs.lra import base

    notes = base.S4_REPO_NOTES[task]
    return dict(s4_repo_epoch_s=60 * notes["epoch_minutes"], s4_repo_device=notes["device"],
                vs_s4_repo=60 * notes["epoch_minutes"] / epoch_s)


def _row_in_child(task: str, mixer: str, a) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.lra", "--task", task, "--mixer", mixer, "--dtype", a.dtype,
           "--steps", str(a.steps), "--warmup", str(a.warmup)] + (["--smoke"] if a.smoke else [])
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"benchmarks.lra: the {task}/{mixer} row failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))


def main(argv=None) -> list[dict]:
    from experiments.configs.lra import base

    p = argparse.ArgumentParser(prog="benchmarks.lra", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", action="append", choices=TASKS, help="repeatable; default all")
    p.add_argument("--mixer", action="append", choices=base.MIXERS, help="repeatable; default all")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.smoke:
        a.steps, a.warmup, a.dtype = 2, 2, "float32"
    pairs = [(task, mixer) for task in a.task or TASKS for mixer in a.mixer or base.MIXERS]
    rows = []
    for task, mixer in pairs:
        # Several rows: each in a fresh process, so peak memory and compile time are the row's own
        # (the device's peak_bytes_in_use is a high-water mark over the process).
        r = row(task, mixer, a) if len(pairs) == 1 else _row_in_child(task, mixer, a)
        rows.append(r)
        print(json.dumps(r), flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(r) + "\n")
    print("\n| task | mixer | batch x len | examples/s | tokens/s | s / epoch | vs s4 repo | peak mem GB | compile s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mem = r.get("peak_memory_bytes")
        vs = f"{r['vs_s4_repo']:.1f}x ({r['s4_repo_device']})" if "vs_s4_repo" in r else "— (smoke)"
        print(f"| {r['task']} | {r['mixer']} | {r['batch']} x {r['seq_len']} | {r['examples_per_sec']:.4g} | "
              f"{r['tokens_per_sec']:.4g} | {r['epoch_s']:.4g} | {vs} | {f'{mem / 2**30:.1f}' if mem else '—'} | "
              f"{r['compile_s']:.1f} |")
    return rows


if __name__ == "__main__":
    from experiments.backend_flags import set_cpu_fft_flag

    set_cpu_fft_flag()  # before jax starts its backend: S4/S4D's FFTs can deadlock the CPU pool
    main()
