"""Checkpoints of a run: the only module that talks to Orbax.

``DIR/checkpoints/<step>/`` holds two items: ``state`` (the train state pytree: step, parameters,
optimizer state, the model's other state such as BatchNorm statistics; restored straight onto the target shardings, so a run may resume on another
mesh) and ``data`` (each process's grain iterator position, one file per process). Saves are
asynchronous; the newest ``keep`` checkpoints are kept, plus the best one by
``checkpoint.best_metric``.

``DIR/config.json`` records the config of the run. Resuming with a config that differs in a key
that changes the computation (model, data, optimizer, seed) raises :class:`IncompatibleConfigError`
naming the keys; keys that only change logging, evaluation, checkpointing or the mesh may
differ; a key added to the configs since the run was recorded (``ADDED_KEYS``) resumes only at
the value that means what the code did before. ``total_steps`` may differ too, but the trainer refuses a change that moves the learning
rate schedule of the remaining steps unless ``allow_schedule_change=True``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

__all__ = [
    "Checkpointer", "IncompatibleConfigError", "abstract_like", "check_config", "config_diff", "restore_model_state",
    "restore_params", "write_config",
]

# Keys (dotted prefixes) that may change between a run and its resumption.
RESUMABLE_KEYS = (
    "log_every",
    "eval_every",
    "checkpoint_every",
    "steps_per_call",
    "early_stop",
    "progress_bar",
    "deterministic",  # how reductions are ordered, not what is trained
    "profile",
    "total_steps",  # a change that moves the lr schedule is refused in train.py (allow_schedule_change)
    "allow_schedule_change",
    "mesh",
    "sharding_rules",
    "eval",
    "checkpoint",
    "data.num_threads",  # reader threads: the batches do not depend on them
)


class IncompatibleConfigError(ValueError):
    """The workdir holds a run whose config differs in keys that matter."""


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _jsonable(value: Any) -> Any:
    # tuples -> lists, so a config compares equal to its JSON round trip.
    return json.loads(json.dumps(value, default=str))


# Keys added to the configs after runs were recorded without them, with the value that computes
# what the code did before the key existed: a recorded run lacking the key resumes under this
# value, and only under it.
ADDED_KEYS = {
    "model.norm": "rms",  # the blocks' norm choice (pre-norm RMSNorm was the only one)
    "model.prenorm": True,
}


def config_diff(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """Keys outside RESUMABLE_KEYS whose values differ: ``{key: (old, new)}``. A key of
    :data:`ADDED_KEYS` absent from ``old`` counts as its listed value."""
    a, b = _flatten(_jsonable(old)), _flatten(_jsonable(new))
    a = {**{k: v for k, v in ADDED_KEYS.items() if k not in a and k in b}, **a}
    out = {}
    for key in sorted(set(a) | set(b)):
        if any(key == p or key.startswith(p + ".") for p in RESUMABLE_KEYS):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            out[key] = (a.get(key, "<absent>"), b.get(key, "<absent>"))
    return out


def has_checkpoint(workdir: str) -> bool:
    """Whether ``workdir/checkpoints`` holds a saved step (a directory named by its number)."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    return os.path.isdir(ckpt_dir) and any(name.isdigit() for name in os.listdir(ckpt_dir))


def check_config(workdir: str, config_dict: dict) -> dict | None:
    """Compare with ``workdir/config.json`` if the workdir holds a checkpoint (raise if
    incompatible); return the recorded config (None for a new workdir, or one whose run saved
    nothing: a run that failed before its first checkpoint may be rerun with a corrected
    config). :func:`write_config` records the new one."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path) or not has_checkpoint(workdir):
        return None
    with open(path) as f:
        old = json.load(f)
    diff = config_diff(old, config_dict)
    if diff:
        lines = "\n".join(f"  {k}: {o!r} (workdir) != {n!r} (now)" for k, n_o in diff.items() for o, n in [n_o])
        raise IncompatibleConfigError(
            f"{workdir} holds a run with a different config; resuming would mix two experiments. "
            f"Differing keys:\n{lines}\nUse a new --workdir, or the original config."
        )
    return old


def write_config(workdir: str, config_dict: dict) -> None:
    """Record ``config_dict`` as ``workdir/config.json`` (atomically)."""
    path = os.path.join(workdir, "config.json")
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_jsonable(config_dict), f, indent=2, sort_keys=True)
    os.replace(tmp, path)


class Checkpointer:
    """Save / restore ``(state, data iterator)`` under ``workdir/checkpoints``.

    ``best_metric`` is a key of the metrics dict passed to :meth:`save` (e.g.
    ``"validation/accuracy"``); checkpoints saved without it are kept only while among the newest
    ``keep``.
    """

    def __init__(self, workdir: str, *, keep: int, best_metric: str = "", best_mode: str = "max", async_save: bool = True):
        if keep < 1:
            raise ValueError(f"Checkpointer: checkpoint.keep must be >= 1; got {keep}")
        if best_mode not in ("max", "min"):
            raise ValueError(f"Checkpointer: checkpoint.best_mode must be 'max' or 'min'; got {best_mode!r}")
        policies = [checkpoint_managers.LatestN(n=keep)]
        if best_metric:
            policies.append(
                checkpoint_managers.BestN(
                    get_metric_fn=lambda m: m[best_metric],
                    reverse=best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        self._best_metric = best_metric
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iter: grain.DatasetIterator, metrics: dict[str, float] | None = None) -> None:
        """Start an asynchronous save (returns once the arrays are copied off the devices)."""
        if metrics is not None and self._best_metric not in metrics:
            metrics = None
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter)),
            metrics=metrics,
            force=True,
        )

    def restore(self, step: int, abstract_state: Any, data_iter: grain.DatasetIterator) -> Any:
        """The state saved at ``step``, placed as ``abstract_state``'s shardings; ``data_iter`` repositioned."""
        logging.info("restoring checkpoint %d from %s", step, self.directory)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(data_iter)
            ),
        )
        return restored["state"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def restore_params(workdir: str, abstract_params: Any, *, step: int | None = None) -> tuple[Any, int]:
    """``(params, step)``: only the parameters of checkpoint ``step`` (default: the latest) of a run,
    as ``abstract_params`` (the ``{"ssm": ..., "other": ...}`` tree of abstract arrays, shardings
    optional) describes them; the optimizer state is not read."""
    restored, step = restore_model_state(workdir, {"params": abstract_params}, step=step)
    return restored["params"], step


def restore_model_state(workdir: str, abstract: dict[str, Any], *, step: int | None = None) -> tuple[dict[str, Any], int]:
    """``(state, step)``: the entries of the train state named by ``abstract`` -- ``"params"`` and,
    for a model with running statistics, ``"rest"`` -- of checkpoint ``step`` (default: the
    latest), as ``abstract``'s abstract arrays describe them (shardings optional). The optimizer
    state is not read. An entry without arrays (the ``rest`` of a model without BatchNorm) is
    returned as given."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    try:
        step = manager.latest_step() if step is None else step
        if step is None or step not in manager.all_steps():
            raise FileNotFoundError(f"restore_model_state: no checkpoint {step if step is not None else ''} in "
                                    f"{directory}; there are {list(manager.all_steps())}")
        # Orbax has nothing to match an empty subtree against: ask only for entries with arrays.
        target = {k: v for k, v in abstract.items() if jax.tree.leaves(v)}
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
                )
            ),
        )
    finally:
        manager.close()
    return {k: restored["state"][k] if k in target else v for k, v in abstract.items()}, step


def abstract_like(tree: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct``s of ``tree`` carrying ``shardings`` (the restore target)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
