r"""Evaluate a run's checkpoint on its config's evaluations, without training.

    python -m experiments.evaluate --workdir=runs/selective_copying/mamba_s0_h100 [--step=80000] \
      [--eval=validation --eval=L1024_kv256] [--num_batches=16] [--json=eval.json]
    # an evaluation at a setting the run never tested (induction heads at 2^21 tokens):
    python -m experiments.evaluate --workdir=runs/induction_heads/mamba_s0 --eval=len_1048576 \
      --data=seq_len=2097152

The model, data and evaluations are those of ``<workdir>/config.json`` (the run's own record), the
parameters and running statistics those of checkpoint ``--step`` (default: the latest). Each
evaluation runs as it does during training (:mod:`experiments.evaluator`: the parallel forward, or
the chunked one through the recurrent cache), over the local devices on the batch axis.
``--data=<key>=<value>`` (repeatable) changes a ``data`` key of every selected evaluation (the
value parsed as the key's type; a key the evaluation's data lacks is refused, naming them), so a
trained model is tested at new lengths or sizes without editing its config. Rows go to standard
output and, with ``--json``, to a file; ``metrics.jsonl`` is not touched.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

import jax
import ml_collections
from flax import nnx

from experiments import evaluator as evaluator_lib
from experiments import mesh as mesh_lib
from experiments import tasks
from experiments.configs import common
from experiments.train import expand_workdir, load_model
from ssm_jax import parallel
from ssm_jax.nn import SSMParam

__all__ = ["evaluate_checkpoint"]


def _with_data(e: evaluator_lib.Evaluation, data: Mapping[str, str]) -> evaluator_lib.Evaluation:
    """``e`` with ``data`` (``{key: text}``) set in its data config, each text parsed as its key's
    current type (bools from true/false/1/0)."""
    cfg = e.data.to_dict()
    for key, text in data.items():
        if key not in cfg:
            raise ValueError(f"evaluate: --data={key}=...: the evaluation's data has no key {key!r}; its keys: "
                             f"{sorted(cfg)}")
        old = cfg[key]
        try:  # scalars as a config arg is parsed; tuples / lists (e.g. MQAR's eval_settings) as literals
            cfg[key] = common.cast_like(old, text) if isinstance(old, (int, float, str)) else ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"evaluate: --data={key}={text}: not a {type(old).__name__} (the key's type; "
                             f"recorded value {old!r})") from None
    data = ml_collections.ConfigDict(cfg)
    return dataclasses.replace(e, data=data, task=tasks.of(data, e.split))


def evaluate_checkpoint(workdir: str, *, step: int | None = None, names: Sequence[str] = (),
                        num_batches: int | None = None, data: Mapping[str, str] | None = None
                        ) -> tuple[int, dict[str, dict[str, float]]]:
    """``(step, {evaluation name: metrics})`` of checkpoint ``step`` of the run in ``workdir``.

    ``names``: evaluations of the config (``eval.splits`` and ``eval.extra``; default all);
    ``num_batches``: overrides each one's batch count (-1: the whole split); ``data``: ``{key:
    text}`` set in the data config of every selected evaluation (:func:`_with_data`).
    """
    workdir = os.path.abspath(workdir)
    model, config, step = load_model(workdir, step=step)
    config = expand_workdir(config, workdir)
    evals = evaluator_lib.evaluations(config)
    unknown = [n for n in names if n not in evals]
    if unknown:
        raise ValueError(f"evaluate: --eval {unknown} not among the run's evaluations {sorted(evals)}")
    if num_batches is not None:
        if num_batches == 0 or num_batches < -1:
            raise ValueError(f"evaluate: --num_batches must be -1 (the whole split) or >= 1; got {num_batches}")
        evals = {k: dataclasses.replace(e, num_batches=num_batches) for k, e in evals.items()}
    if data:
        evals = {k: _with_data(e, data) if not names or k in names else e for k, e in evals.items()}
    task = tasks.of(config.data)
    model_cfg = task.model_config(config.model.to_dict())
    graphdef, ssm, other, rngs, rest = nnx.split(model, SSMParam, nnx.Param, nnx.RngState, ...)
    state = {"params": {"ssm": ssm, "other": other}, "rest": rest}
    # Every local device on `data`: the batch is split when it divides, replicated when not.
    mesh = parallel.make_mesh((jax.device_count(), 1, 1, 1), mesh_lib.AXES)
    axes = mesh_lib.batch_axes(config.sharding_rules)
    ev = evaluator_lib.Evaluator(evals, graphdef=graphdef, num_classes=task.num_classes(model_cfg),
                                 vocab_size=model_cfg.vocab_size, mesh=mesh, batch_axes=axes, seed=int(config.seed))
    if data:
        ev.check_datasets()  # a value the dataset refuses fails before the model runs
    out = {}
    with jax.set_mesh(mesh), parallel.use_rules(tuple(tuple(r) for r in config.sharding_rules)):
        for name in names or list(evals):
            out[name] = ev(name, state, rngs)
    return step, out


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="the run's directory (config.json, checkpoints/)")
    p.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the latest)")
    p.add_argument("--eval", action="append", default=[], help="an evaluation name (eval.splits, eval.extra); "
                   "repeatable; default all")
    p.add_argument("--num_batches", type=int, default=None, help="batches per evaluation (-1: the whole split)")
    p.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                   help="set a data key of every selected evaluation (e.g. seq_len=8192); repeatable")
    p.add_argument("--json", default=None, help="also write {step, evaluation: metrics} here")
    a = p.parse_args(argv)
    bad = [kv for kv in a.data if "=" not in kv or not kv.partition("=")[0]]
    if bad:
        p.error(f"--data takes KEY=VALUE; got {bad}")
    data = dict(kv.split("=", 1) for kv in a.data)
    step, out = evaluate_checkpoint(a.workdir, step=a.step, names=a.eval, num_batches=a.num_batches, data=data)
    for name, metrics in out.items():
        print(f"step {step} {name}: " + ", ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items())), flush=True)
    row = {"step": step, **({"data": data} if data else {}), **out}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(row, f, indent=1)
    return row


if __name__ == "__main__":
    main()
