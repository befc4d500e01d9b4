"""Checks of an experiment config, run by the trainer before anything is built or written.

Every key the trainer reads (the schema of :mod:`experiments.configs.common`) is checked here, so
a bad value fails at setup with a ``ValueError`` naming the key, the value and what is allowed,
instead of hours later at the evaluation that reads it (an ``eval.extra`` entry is only used
after the last step). ``model.*`` is checked by the model config dataclasses
(``Task.model_config``), the dataset's own keys by the dataset, ``mesh`` by
:mod:`experiments.mesh`.
"""

from __future__ import annotations

import math
from typing import Any

from experiments import optim as optim_lib, tasks

__all__ = ["check_experiment"]

_EXTRA_KEYS = ("split", "data", "batch_size", "num_batches", "forward", "chunk_size", "every_eval")


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"config.{key} must be {allowed}; got {value!r}")


def _int(key: str, value: Any, *, minimum: int, allowed: str | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(key, value, allowed or f"an int >= {minimum}")


def _float(key: str, value: Any, *, lo: float = 0.0, hi: float = math.inf, lo_open: bool = False, hi_open: bool = True,
           allowed: str | None = None) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        _fail(key, value, allowed or f"a float in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")


def _bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(key, value, "True or False")


def _choice(key: str, value: Any, choices) -> None:
    if value not in choices:
        _fail(key, value, f"one of {tuple(choices)}")


def _metric(key: str, value: Any, evaluated: dict[str, tuple[str, ...]]) -> None:
    """``value`` is "" or "<evaluation>/<metric>" of an evaluation that runs at every evaluation."""
    if value == "":
        return
    name, _, metric = str(value).partition("/")
    options = [f"{e}/{m}" for e, ms in evaluated.items() for m in ms]
    if not isinstance(value, str) or name not in evaluated or metric not in evaluated[name]:
        _fail(key, value, f'"" or one of {options}')


def check_experiment(config) -> tasks.Task:
    """Check the trainer's keys of ``config`` (a ConfigDict); return the train split's task. Raises ValueError."""
    for key in ("seed",):
        _int(key, config[key], minimum=0)
    for key in ("total_steps", "log_every", "eval_every", "checkpoint_every", "steps_per_call"):
        _int(key, config[key], minimum=1, allowed="a positive int")
    _bool("progress_bar", config.progress_bar)
    _bool("deterministic", config.get("deterministic", False))
    profile = config.get("profile") or {}
    for key in ("start_step", "num_steps"):
        _int(f"profile.{key}", profile.get(key, 0), minimum=0)
    if profile.get("num_steps", 0) and profile.get("start_step", 0) >= config.total_steps:
        # the trace would never start: nothing profiled and no word of it
        _fail("profile.start_step", profile.get("start_step"), f"a step before total_steps={config.total_steps}")
    _bool("allow_schedule_change", config.get("allow_schedule_change", False))

    data = config.data
    if not isinstance(data.get("name"), str) or not data.name:
        _fail("data.name", data.get("name"), "the name of a registered dataset (experiments.data.registry.names())")
    task = tasks.of(data, "train")  # unknown names raise, listing the registered ones
    _int("data.batch_size", data.batch_size, minimum=1, allowed="a positive int")

    o = config.optim
    _float("optim.lr", o.lr, lo_open=True)
    if o.ssm_lr is not None:
        _float("optim.ssm_lr", o.ssm_lr, lo_open=True, allowed="None (optim.lr) or a positive float")
    _choice("optim.schedule", o.get("schedule", "cosine"), optim_lib.SCHEDULES)
    _int("optim.warmup_steps", o.warmup_steps, minimum=0)
    _float("optim.min_lr_ratio", o.min_lr_ratio, hi=1.0, hi_open=False)
    for key in ("b1", "b2"):
        _float(f"optim.{key}", o[key], hi=1.0)
    _float("optim.eps", o.eps, lo_open=True)
    for key in ("weight_decay", "ssm_weight_decay", "clip_norm"):
        _float(f"optim.{key}", o[key], allowed="a float >= 0" + (" (0: no clipping)" if key == "clip_norm" else ""))
    _int("optim.grad_accum_steps", o.grad_accum_steps, minimum=1, allowed="a positive int")
    roles = sorted(set(optim_lib.SSM_ROLES.values()))
    for role, hp in (o.get("ssm_param_groups") or {}).items():
        k = f"optim.ssm_param_groups.{role}"
        if role not in roles:
            _fail("optim.ssm_param_groups", role, f"keyed by roles among {roles}")
        if not hasattr(hp, "keys") or set(hp.keys()) - {"lr", "weight_decay", "decay_vectors"}:
            _fail(k, hp, "a dict with keys lr, weight_decay and/or decay_vectors")
        if not isinstance(hp.get("decay_vectors", False), bool):
            _fail(f"{k}.decay_vectors", hp["decay_vectors"], "a bool")
        if hp.get("lr") is not None:
            _float(f"{k}.lr", hp["lr"], lo_open=True, allowed="None (optim.lr) or a positive float")
        if hp.get("weight_decay") is not None:
            _float(f"{k}.weight_decay", hp["weight_decay"], allowed="None (optim.weight_decay) or a float >= 0")

    e = config.eval
    splits = tuple(e.splits)
    if not all(isinstance(s, str) and s for s in splits):
        _fail("eval.splits", e.splits, "a tuple of split names (str)")
    _int("eval.batch_size", e.batch_size, minimum=1, allowed="a positive int")
    if isinstance(e.num_batches, bool) or not isinstance(e.num_batches, int) or not (e.num_batches == -1 or e.num_batches >= 1):
        _fail("eval.num_batches", e.num_batches, "-1 (the whole split) or a positive int")
    metrics = task.metric_names(data.name)
    every_eval = {s: metrics for s in splits}
    for name, extra in e.extra.items():
        k = f"eval.extra.{name}"
        if name in splits:
            _fail(k, name, f"a name other than the eval.splits {splits} (its metrics would be written under the same name)")
        unknown = sorted(set(extra.keys()) - set(_EXTRA_KEYS))
        missing = sorted(set(_EXTRA_KEYS) - set(extra.keys()))
        if unknown or missing:
            _fail(k, sorted(extra.keys()), f"an entry with the keys {list(_EXTRA_KEYS)} (experiments.configs.common.extra_eval)")
        if not isinstance(extra.split, str) or not extra.split:
            _fail(f"{k}.split", extra.split, "a split name (str)")
        not_data = sorted(set(extra.data.keys()) - set(data.keys()))
        if not_data:
            # ConfigDict.update would add them and the dataset would never read them.
            _fail(f"{k}.data", dict(extra.data), f"overrides of existing config.data keys {sorted(data.keys())}; "
                  f"{not_data} are not keys of config.data")
        _int(f"{k}.batch_size", extra.batch_size, minimum=1, allowed="a positive int")
        if isinstance(extra.num_batches, bool) or not isinstance(extra.num_batches, int) or not (
                extra.num_batches == -1 or extra.num_batches >= 1):
            _fail(f"{k}.num_batches", extra.num_batches, "-1 (the whole split) or a positive int")
        _choice(f"{k}.forward", extra.forward, ("parallel", "chunked"))
        if extra.forward == "chunked" and not task.chunked_evaluation:
            _fail(f"{k}.forward", extra.forward, f"'parallel' for task {task.name!r} (chunked evaluation runs a language model's cache)")
        _int(f"{k}.chunk_size", extra.chunk_size, minimum=1, allowed="a positive int")
        _bool(f"{k}.every_eval", extra.every_eval)
        if extra.every_eval:
            every_eval[name] = task.metric_names(extra.data.get("name", data.name))

    s = config.early_stop
    _metric("early_stop.metric", s.metric, every_eval)
    _float("early_stop.threshold", s.threshold, lo=-math.inf, allowed="a finite float")
    _choice("early_stop.mode", s.mode, ("max", "min"))

    c = config.checkpoint
    _int("checkpoint.keep", c.keep, minimum=1, allowed="a positive int")
    _metric("checkpoint.best_metric", c.best_metric, every_eval)
    _choice("checkpoint.best_mode", c.best_mode, ("max", "min"))
    _bool("checkpoint.async_save", c.async_save)
    return task
