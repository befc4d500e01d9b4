r"""Input pipeline speed: the host work the trainer does per call, for a config's training data.

Per call of ``steps_per_call`` steps ``experiments.train`` takes that many batches from the
data iterator, checks each against the task (``Task.check_batch``) and stacks them; the device
runs the previous call meanwhile, so where this host work takes longer than a call's device
time, the accelerator waits. This times exactly that work, for each reader-thread count
(``data.num_threads``), on whatever CPU it runs on: compare ``ms_per_call`` with the device
time of a call (``steps_per_call`` x a step's device time from ``config.profile``).

    python -m benchmarks.input_pipeline \
        --config=experiments/configs/synthetic/mqar.py:mixer=mamba,d_model=64 [--threads 1 2 4] \
        [--calls 30] [--json rows.jsonl]
    python -m benchmarks.input_pipeline --smoke        # seconds on a CPU

Rows: ``config``, ``threads``, ``steps_per_call``, ``ms_per_call`` (median over the timed calls,
after two warm-up calls), ``batches_per_s``, ``examples_per_s``, ``cpu_count``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Sequence

import ml_collections

from experiments import configs, tasks, train
from experiments.data import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join("experiments", "configs", "synthetic", "mqar.py") + ":mixer=mamba,d_model=64"


def time_calls(config, threads: int, calls: int, warmup: int = 2) -> dict:
    """Time ``calls`` trainer calls' host work (``experiments.train.call_batches``) at ``threads`` readers."""
    if calls < 1 or threads < 1:
        raise ValueError(f"input_pipeline: calls and threads must be >= 1; got calls={calls}, threads={threads}")
    data = config.data.to_dict()
    data["num_threads"] = threads
    task = tasks.of(config.data, "train")
    model_cfg = task.model_config(config.model.to_dict())
    num_classes, vocab_size = task.num_classes(model_cfg), model_cfg.vocab_size
    batch_size = int(config.data.batch_size)
    per_call = int(config.steps_per_call)
    it = iter(registry.build(ml_collections.ConfigDict(data), split="train", seed=0, global_batch_size=batch_size,
                             process_index=0, process_count=1))
    times = []
    for i in range(warmup + calls):
        t = time.perf_counter()
        train.call_batches(it, per_call, task, vocab_size, num_classes, i * per_call)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    ms = 1e3 * statistics.median(times)
    return dict(threads=threads, steps_per_call=per_call, ms_per_call=ms, batches_per_s=1e3 * per_call / ms,
                examples_per_s=1e3 * per_call * batch_size / ms, cpu_count=os.cpu_count())


def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.input_pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT, help="config module path.py[:arg]")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4], help="reader-thread counts to time")
    p.add_argument("--calls", type=int, default=30, help="timed calls per thread count")
    p.add_argument("--json", default="", help="append the rows to this JSON-lines file")
    p.add_argument("--smoke", action="store_true", help="the MQAR smoke config, 3 calls, 1 and 2 threads")
    a = p.parse_args(argv)
    spec = a.config
    if a.smoke:
        spec, a.threads, a.calls = os.path.join(REPO, "experiments", "configs", "synthetic", "mqar.py") + ":smoke", [1, 2], 3
    config = configs.load(spec if os.path.isabs(spec.partition(":")[0]) else os.path.join(REPO, spec))
    rows = []
    for threads in a.threads:
        row = dict(config=spec.replace(REPO + os.sep, ""), **time_calls(config, threads, a.calls))
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.json:
        with open(a.json, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


if __name__ == "__main__":
    main()
