"""The trainer: ``train_and_evaluate(config, workdir)`` (importable from notebooks).

One linear function in banner sections: setup -> mesh -> model shapes -> data -> shardings ->
init on devices -> restore -> train steps -> loop. What differs between tasks is the task
object's (:mod:`experiments.tasks`); the step is :mod:`experiments.steps`, evaluation
:mod:`experiments.evaluator`; the state goes into each call and comes back from it. The keys it
reads are documented in :mod:`experiments.configs.common`.

Train state (a pytree; what a checkpoint holds)::

    step       ()    int32
    params     {"ssm": nnx.State of ssm_jax.nn.SSMParam, "other": nnx.State of other nnx.Param}
    opt_state  optax state over params
    rest       nnx.State of the model's other non-RNG variables (steps.REST): BatchNorm's
               running statistics (nnx.BatchStat; empty for models without BatchNorm). Each
               step stores what its train-mode forward left in the model; evaluation runs the
               model in eval mode, which reads them; replicated over the mesh; checkpointed.

The model's RNG streams are not trained or saved: every step re-derives them from
``(seed, step, microbatch)``, so dropout is reproducible across resumption.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from experiments import checkpointing, config_checks, mesh as mesh_lib, metrics as metrics_lib, optim as optim_lib
from experiments import evaluator as evaluator_lib, profiling, steps as steps_lib, stopping, tasks
from experiments.data import registry
from experiments.metrics import METRICS_FILE, MetricWriter, ProgressBar, read_metrics
from ssm_jax import parallel
from ssm_jax.nn import SSMParam

__all__ = ["call_batches", "load_model", "train_and_evaluate"]



# config.deterministic on a GPU: XLA orders its reductions (scatter-adds, e.g. an embedding's
# gradient) the same way every run. XLA reads its flags once, when the backend starts, so
# experiments.run sets this before that; a caller that started JAX itself must have set it.
DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Train ``config`` in ``workdir`` (resuming from its latest checkpoint) and evaluate.

    Returns the final metrics: ``{"step": ..., "train/loss": ..., "<split>/<metric>": ...}``.
    """
    # ------------------------------------------------------------------------------------------
    # Setup: config, task, model config, workdir.
    # ------------------------------------------------------------------------------------------
    config = ml_collections.ConfigDict(config.to_dict())  # a private copy
    config.lock()
    workdir = os.path.abspath(workdir)
    pid, nproc = jax.process_index(), jax.process_count()
    # Every section is checked now, before anything is built or written: a bad evaluation
    # setting must not surface only after the last step.
    task = config_checks.check_experiment(config)
    if (config.get("deterministic", False) and jax.default_backend() == "gpu"
            and DETERMINISTIC_FLAG not in os.environ.get("XLA_FLAGS", "")):
        raise ValueError(f"config.deterministic=True needs XLA_FLAGS={DETERMINISTIC_FLAG} before JAX starts its GPU "
                         "backend: run through `python -m experiments.run` (it sets the flag), or set the "
                         "environment variable before importing jax")
    try:
        model_cfg = task.model_config(config.model.to_dict())
    except (TypeError, ValueError) as e:
        raise type(e)(f"config.model: {e}") from None
    num_classes, vocab_size = task.num_classes(model_cfg), model_cfg.vocab_size
    total_steps = int(config.total_steps)
    accum = int(config.optim.grad_accum_steps)
    batch_size = int(config.data.batch_size)
    if batch_size % accum:
        raise ValueError(f"train: data.batch_size={batch_size} is not divisible by optim.grad_accum_steps={accum}")
    # Compared with the workdir's config.json now; recorded once the resume step is known (a
    # changed schedule is refused then, and must not overwrite the record).
    recorded_config = checkpointing.check_config(workdir, config.to_dict())
    config_record = config.to_dict()
    # config.json keeps "{workdir}" as written; the data sees this run's directory.
    config = expand_workdir(config, workdir)

    # ------------------------------------------------------------------------------------------
    # Mesh.
    # ------------------------------------------------------------------------------------------
    mesh = mesh_lib.mesh_from_config(config.mesh)
    rules = tuple((name, tuple(a) if isinstance(a, list) else a) for name, a in config.sharding_rules)
    batch_axes = mesh_lib.batch_axes(rules)
    n_batch_shards = mesh_lib.batch_shards(mesh, batch_axes)
    if (batch_size // accum) % n_batch_shards:
        raise ValueError(
            f"train: the microbatch data.batch_size / optim.grad_accum_steps = {batch_size // accum} must divide "
            f"over the batch's mesh axes {' x '.join(batch_axes) or '(none)'} = {n_batch_shards} devices"
        )
    replicated = NamedSharding(mesh, P())
    logging.info("mesh: %s", mesh_lib.describe(mesh))

    # ------------------------------------------------------------------------------------------
    # Model shapes (no memory). Outside the mesh context: nnx.eval_shape would read the logical
    # names as mesh axes (flax 0.12.10).
    # ------------------------------------------------------------------------------------------
    # A fresh Rngs per build: eval_shape and the jitted init must draw the same initial values.
    make_model = lambda: task.build_model(model_cfg, nnx.Rngs(config.seed))  # noqa: E731
    abstract_model = nnx.eval_shape(make_model)
    abstract_model.eval()
    graphdef_eval = nnx.graphdef(abstract_model)
    abstract_model.train()
    graphdef, abs_ssm, abs_other, abs_rngs, abs_rest = nnx.split(abstract_model, SSMParam, nnx.Param, nnx.RngState, ...)
    abs_params = {"ssm": abs_ssm, "other": abs_other}

    with jax.set_mesh(mesh), parallel.use_rules(rules), contextlib.ExitStack() as cleanup:
        # SIGTERM / Ctrl-C from here on: save after the current call and return (stopping.py).
        signals = stopping.StopSignals(multiprocess=nproc > 1)
        cleanup.callback(signals.restore)

        # --------------------------------------------------------------------------------------
        # Data.
        # --------------------------------------------------------------------------------------
        train_iter = iter(
            registry.build(
                config.data, split="train", seed=config.seed, global_batch_size=batch_size, process_index=pid, process_count=nproc
            )
        )
        evaluator = evaluator_lib.Evaluator(evaluator_lib.evaluations(config), graphdef=graphdef_eval,
                                            num_classes=num_classes, vocab_size=vocab_size, mesh=mesh, batch_axes=batch_axes, seed=config.seed)
        evaluator.check_datasets()

        # --------------------------------------------------------------------------------------
        # Shardings: parameters from their logical axis names through the config's rules table;
        # optimizer moments like their parameters; everything else replicated.
        # --------------------------------------------------------------------------------------
        param_shardings = {
            "ssm": parallel.logical_to_sharding(abs_ssm, mesh, rules),
            "other": parallel.logical_to_sharding(abs_other, mesh, rules),
        }
        rngs_shardings = jax.tree.map(lambda _: replicated, abs_rngs)
        # Running statistics are small per-channel vectors that every device updates from the
        # same (GSPMD-reduced) global batch statistics: replicated.
        rest_shardings = jax.tree.map(lambda _: replicated, abs_rest)
        tx, schedules = optim_lib.make_optimizer(_with_ssm_lr(config.optim, _ssm_lr(config, model_cfg)), total_steps)
        abs_opt = jax.eval_shape(tx.init, abs_params)
        opt_shardings = optim_lib.opt_state_shardings(abs_opt, abs_params, param_shardings, replicated)
        state_shardings = {"step": replicated, "params": param_shardings, "opt_state": opt_shardings, "rest": rest_shardings}
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abs_params))
        logging.info("model: %s, %d parameters", type(abstract_model).__name__, n_params)
        if pid == 0:
            _write_run_info(workdir, mesh, type(abstract_model).__name__, n_params, param_shardings)

        # --------------------------------------------------------------------------------------
        # Initialize directly on the devices, in the sharded layout.
        # --------------------------------------------------------------------------------------
        init = jax.jit(functools.partial(_init_state, make_model, tx), out_shardings=(state_shardings, rngs_shardings))
        state, rngs = init()

        # --------------------------------------------------------------------------------------
        # Restore (the same command on the same workdir resumes).
        # --------------------------------------------------------------------------------------
        ckpt = checkpointing.Checkpointer(
            workdir,
            keep=int(config.checkpoint.keep),
            best_metric=config.checkpoint.best_metric,
            best_mode=config.checkpoint.best_mode,
            async_save=bool(config.checkpoint.async_save),
        )
        cleanup.callback(ckpt.close)
        start = ckpt.latest_step() or 0
        if start > total_steps:
            # A run extended earlier and rerun with its old length: "finished step 8 of 4", and
            # config.json rewritten to say 4.
            raise checkpointing.IncompatibleConfigError(
                f"{workdir} holds a checkpoint at step {start}, past total_steps={total_steps}: rerun with "
                f"--config.total_steps={start} or more, or use a new --workdir")
        if start and recorded_config is not None:
            _check_schedule(recorded_config, config, start, workdir, say=pid == 0)
        if pid == 0:
            checkpointing.write_config(workdir, config_record)
        if start:
            state = ckpt.restore(start, checkpointing.abstract_like(state, state_shardings), train_iter)
            if int(state["step"]) != start:
                raise RuntimeError(f"checkpoint {start} holds step {int(state['step'])}")
            if pid == 0:  # printed, not logged: absl hides INFO, and a resume should never go unnoticed
                what = "it is finished: nothing to train" if start >= total_steps else f"training to step {total_steps}"
                print(f"Resuming {workdir} from its checkpoint at step {start} ({what})", flush=True)

        # --------------------------------------------------------------------------------------
        # Train steps: one step, or a scan of n steps per call (config.steps_per_call).
        # --------------------------------------------------------------------------------------
        spec = steps_lib.StepSpec(graphdef=graphdef, task=task, num_classes=num_classes, tx=tx, lr=schedules["other"],
                                  accum=accum, seed=int(config.seed), mesh=mesh, batch_axes=batch_axes)
        train_step, train_steps = steps_lib.make_train_steps(spec, state_shardings, rngs_shardings)
        batch_sharding = NamedSharding(mesh, P(batch_axes))
        stacked_sharding = NamedSharding(mesh, P(None, batch_axes))

        # --------------------------------------------------------------------------------------
        # Loop.
        # --------------------------------------------------------------------------------------
        writer = MetricWriter(workdir, enabled=pid == 0, resume_step=start)
        cleanup.callback(writer.close)
        bar = ProgressBar(total_steps, start, enabled=pid == 0 and bool(config.progress_bar))
        cleanup.callback(bar.close)
        profiler = profiling.StepProfiler(config.get("profile"), workdir, enabled=pid == 0)
        cleanup.callback(profiler.close)
        run_evals = functools.partial(_run_evals, evaluator, writer, bar)

        splits = list(config.eval.splits)
        every_eval = [n for n, e in config.eval.extra.items() if e.every_eval]
        at_end = [n for n, e in config.eval.extra.items() if not e.every_eval]  # after the last step only

        step = start
        window = _Window()
        final: dict[str, float] = {}
        last_train: dict[str, float] = {}
        preempted = False
        per_call = int(config.steps_per_call)
        cadences = (int(config.log_every), int(config.eval_every), int(config.checkpoint_every))
        flops_per_token = None  # from the first batch's length
        stop = stopping.EarlyStop(workdir, config.early_stop)
        stopped = stop.stopped_at(start)

        def log_window():
            """Write the train row of the steps since the last one; returns it and a new window."""
            row = _train_row(window, task, flops_per_token)
            if not all(math.isfinite(v) for v in row.values()):
                logging.error("non-finite train metrics at step %d: %s", step, row)
            writer.write(step, "train", row)
            bar.update(0, loss=row["loss"], tok_s=row["tokens_per_sec"],
                       **({"mfu_pct": 100 * row["mfu"]} if "mfu" in row else {}))
            return row, _Window()

        while step < total_steps and not stopped:
            if nproc == 1 and signals.requested and step == start:
                preempted = True  # the signal came during setup: nothing trained, nothing to save
                break
            # Run up to the next step at which something is logged, evaluated or saved.
            n = min([per_call, total_steps - step] + [c - step % c for c in cadences])
            host_batches, stacked = call_batches(train_iter, n, task, vocab_size, num_classes, step)
            window.tokens += sum(task.tokens_in(b) for b in host_batches) * nproc
            profiler.before_call(step, state)
            if n == 1:
                state, metrics = train_step(state, rngs, evaluator_lib.put_batch(host_batches[0], batch_sharding))
                metrics = jax.tree.map(lambda x: x[None], metrics)
            else:
                state, metrics = train_steps(state, rngs, evaluator_lib.put_batch(stacked, stacked_sharding))
            step += n
            profiler.after_call(step, state, last=step == total_steps)
            window.metrics.append(metrics)
            bar.update(n)
            if flops_per_token is None:
                flops_per_token = _flops_per_token(model_cfg, task.seq_len(host_batches[0]))
            if step % int(config.log_every) == 0 or step == total_steps:
                last_train, window = log_window()
            if step == total_steps:
                # Saved, and written to disk, before the final evaluation: however long it takes
                # or however it fails, the trained state is kept and a rerun only evaluates.
                ckpt.save(step, state, train_iter)
                ckpt.wait()
                final.update(run_evals(step, splits + every_eval + at_end, state, rngs))
                break
            eval_metrics = {}
            if step % int(config.eval_every) == 0:
                eval_metrics = run_evals(step, splits + every_eval, state, rngs)
                stopped = stop.reached(eval_metrics)
                final.update(eval_metrics)
            preempted = signals.reached(step) and not stopped
            if (preempted or stopped) and window.metrics:
                # The steps since the last train row: logged now, or the resumed run's first row
                # would average fewer steps and these would appear in no row.
                last_train, window = log_window()
            if step % int(config.checkpoint_every) == 0 or preempted or stopped:
                ckpt.save(step, state, train_iter, metrics=eval_metrics or None)
            if preempted:
                logging.warning("preempted: saved step %d of %d; rerun the same command to resume", step, total_steps)
                break
            if stopped:
                # Stopping early ends the run: saved above, the end-of-training evaluations now.
                stop.record(step, eval_metrics)
                ckpt.wait()
                final.update(run_evals(step, at_end, state, rngs))
        if step == start and not preempted and (start >= total_steps or stopped):
            # Rerunning a finished (or early-stopped) run: report what it recorded, and evaluate
            # only what is missing (a final evaluation that failed), so no row is written twice.
            done, last_train = _recorded_rows(workdir, step, splits + every_eval + at_end, process_count=nproc)
            missing = [n for n in splits + every_eval + at_end if n not in done]
            if pid == 0:
                print(f"{workdir}: the run ended at step {step}; reporting its recorded evaluation"
                      + (f", evaluating what was not recorded: {missing}" if missing else ""), flush=True)
            final = {f"{n}/{k}": v for n, row in done.items() for k, v in row.items()}
            final.update(run_evals(step, missing, state, rngs))
        ckpt.wait()
        out = {"step": step, "preempted": preempted, "stop_signal": signals.requested if preempted else None,
               "stopped_early": bool(stopped), "checkpoint_step": ckpt.latest_step()}
        out.update({f"train/{k}": v for k, v in last_train.items()})
        out.update(final)
        return out


# ----------------------------------------------------------------------------------------------
# The pieces the sections call.
# ----------------------------------------------------------------------------------------------


def call_batches(train_iter, n: int, task, vocab_size: int, num_classes: int, step: int):
    """The host work of one train call of ``n`` steps from ``step``: ``n`` batches from
    ``train_iter``, each checked against the task, and (``n > 1``) stacked along a new leading axis.
    Returns ``(batches, stacked or None)``; ``benchmarks.input_pipeline`` times this function."""
    batches = [next(train_iter) for _ in range(n)]
    for i, b in enumerate(batches):
        task.check_batch(b, vocab_size, num_classes, f"train batch of step {step + i + 1}")
    stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]} if n > 1 else None
    return batches, stacked


def _init_state(make_model, tx) -> tuple[dict, nnx.State]:
    """``(train state, RNG streams)`` of a freshly built model (jitted onto the devices)."""
    model = make_model()
    model.train()
    _, ssm, other, rngs, rest = nnx.split(model, SSMParam, nnx.Param, nnx.RngState, ...)
    params = {"ssm": ssm, "other": other}
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params), "rest": rest}, rngs


def _run_evals(evaluator, writer, bar, step: int, names, state, rngs) -> dict[str, float]:
    """Evaluate ``names`` (eval.splits and eval.extra entries) on ``state`` and write their rows."""
    out = {}
    for name in names:
        m = evaluator(name, state, rngs)
        writer.write(step, name, m)
        out.update({f"{name}/{k}": v for k, v in m.items()})
    if out:
        bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in out.items() if k.endswith(("loss", "accuracy"))))
    return out


@dataclasses.dataclass
class _Window:
    """The train calls since the last train row: their metrics (device arrays), tokens, start time."""

    metrics: list = dataclasses.field(default_factory=list)
    tokens: int = 0
    start: float = dataclasses.field(default_factory=time.perf_counter)


def _train_row(window: _Window, task, flops_per_token: float) -> dict[str, float]:
    """The train row of ``window``: the task's metrics over its steps, grad norm, lr, throughput,
    MFU (where the chip's peak is known) and the devices' peak memory."""
    fetched = jax.device_get(window.metrics)
    # Each entry holds a call's metrics stacked over its steps: (n,) per key.
    per_step = {k: np.concatenate([np.asarray(m[k]) for m in fetched]) for k in fetched[0]}
    sums = {k: v.sum() for k, v in per_step.items() if k not in ("grad_norm", "lr")}
    elapsed = time.perf_counter() - window.start
    row = task.finalize(sums)
    row.update(
        grad_norm=float(np.mean(per_step["grad_norm"])),
        lr=float(per_step["lr"][-1]),
        steps_per_sec=len(per_step["lr"]) / elapsed,
        tokens_per_sec=window.tokens / elapsed,
    )
    peak = metrics_lib.device_peak_flops(jax.devices()[0])
    if peak and flops_per_token:
        # Model FLOPs (ssm_jax.models.counting) over every device's bf16 peak.
        row["mfu"] = flops_per_token * row["tokens_per_sec"] / (peak * jax.device_count())
    memory = metrics_lib.device_memory(jax.local_devices())
    if memory is not None:
        row["peak_memory_bytes"] = memory
    return row


def _flops_per_token(model_cfg, seq_len: int) -> float:
    """Training FLOPs per input token of the model at ``seq_len``; 0 for a model
    ``ssm_jax.models.counting`` does not know (a test model), which then logs no MFU."""
    from ssm_jax import models
    from ssm_jax.models import counting

    if not isinstance(model_cfg, (models.LanguageModelConfig, models.SequenceClassifierConfig)):
        return 0.0
    return counting.flops_per_token(model_cfg, seq_len)


def _ssm_lr(config, model_cfg) -> float | None:
    """``optim.ssm_lr``, else the S4/S4D config's ``lr`` when every S4-family layer agrees."""
    if config.optim.ssm_lr is not None:
        return float(config.optim.ssm_lr)
    lrs = {getattr(model_cfg, m).lr for m in set(getattr(model_cfg, "mixers", ())) if m in ("s4", "s4d")}
    lrs.discard(None)
    if len(lrs) > 1:
        raise ValueError(f"train: S4/S4D layers ask for different lr {sorted(lrs)}; set optim.ssm_lr")
    return lrs.pop() if lrs else None


def _write_run_info(workdir: str, mesh, model_name: str, n_params: int, param_shardings) -> None:
    """``DIR/run_info.json``: the mesh, the processes, the model size and each parameter's sharding."""
    flat = jax.tree_util.tree_flatten_with_path(param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))[0]
    info = {
        "mesh": dict(mesh.shape),
        "devices": int(np.asarray(mesh.devices).size),
        "process_count": jax.process_count(),
        "backend": jax.default_backend(),
        "model": model_name,
        "parameters": n_params,
        "partition_specs": {jax.tree_util.keystr(path): [a if a is None or isinstance(a, str) else list(a) for a in s.spec]
                            for path, s in flat},
    }
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "run_info.json"), "w") as f:
        json.dump(info, f, indent=2)


def _recorded_rows(workdir: str, step: int, names, *, process_count: int) -> tuple[dict[str, dict], dict]:
    """``({evaluation: metrics}, train metrics)`` recorded in ``metrics.jsonl`` at ``step`` (the
    last row of each name). Process 0's reading decides which evaluations count as recorded, so
    every process runs the same evaluations."""
    rows: dict[str, dict] = {}
    if jax.process_index() == 0 and os.path.exists(os.path.join(workdir, METRICS_FILE)):
        for r in read_metrics(workdir):
            if r["step"] == step:
                rows[r["split"]] = {k: float(v) for k, v in r.items() if k not in ("step", "split")}
    have = np.array([n in rows for n in names], bool)
    if process_count > 1:
        from jax.experimental import multihost_utils

        have = np.asarray(multihost_utils.broadcast_one_to_all(have))
    done = {n: rows.get(n, {}) for n, h in zip(names, have) if h}
    return done, rows.get("train", {})


def _check_schedule(recorded: dict, config, start: int, workdir: str, *, say: bool) -> None:
    """Refuse to resume at ``start`` when ``total_steps`` differs from the recorded run's and that
    changes the learning rate of a remaining step, unless ``config.allow_schedule_change``."""
    old_total, new_total = int(recorded["total_steps"]), int(config.total_steps)
    change = optim_lib.schedule_change(config.optim, old_total, new_total, start)
    if change is None:
        return
    what = f"total_steps changed from {old_total} (recorded in {workdir}/config.json) to {new_total}: {change}"
    if not config.allow_schedule_change:
        raise checkpointing.IncompatibleConfigError(
            f"{what}. Resuming at step {start} would continue with a schedule the run did not start with. "
            f"Rerun with --config.total_steps={old_total}, or pass --config.allow_schedule_change=True to resume "
            "with the new schedule, or use a new --workdir."
        )
    if say:
        print(f"allow_schedule_change=True: resuming at step {start} with the new schedule; {what}", flush=True)


def load_model(workdir: str, *, step: int | None = None) -> tuple[nnx.Module, ml_collections.ConfigDict, int]:
    """The model a run trained: ``(model, config, step)``, rebuilt from ``workdir/config.json`` with
    the parameters and running statistics (BatchNorm's, when it has any) of checkpoint ``step``
    (default: the latest), in eval mode, on the default device."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    task = tasks.of(config.data)
    model = task.build_model(task.model_config(config.model.to_dict()), nnx.Rngs(config.seed))
    _, ssm, other, _ = nnx.split(model, SSMParam, nnx.Param, ...)
    # A sharding in the target makes Orbax restore device arrays; without one it returns NumPy
    # arrays, which a scanned model then bakes into its compiled scan as constants.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {"params": {"ssm": ssm, "other": other}, "rest": steps_lib.rest_of(model)}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), target)
    restored, step = checkpointing.restore_model_state(workdir, abstract, step=step)
    nnx.update(model, restored["params"]["ssm"], restored["params"]["other"], restored["rest"])
    model.eval()
    return model, config, step


WORKDIR_TOKEN = "{workdir}"


def expand_workdir(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """``config`` with ``"{workdir}"`` in the string values of ``data`` and of the evaluations'
    ``data`` overrides replaced by ``workdir`` (e.g. LRA smoke runs prepare their data inside
    the run's directory, not at a fixed shared path)."""

    def expand(node):
        for k, v in node.items():
            if isinstance(v, ml_collections.ConfigDict):
                expand(v)
            elif isinstance(v, str) and WORKDIR_TOKEN in v:
                node[k] = v.replace(WORKDIR_TOKEN, workdir)

    out = ml_collections.ConfigDict(config.to_dict())
    expand(out.data)
    for extra in out.eval.extra.values():
        expand(extra.data)
    out.lock()
    return out


def _with_ssm_lr(optim_config, ssm_lr: float | None):
    c = ml_collections.ConfigDict(optim_config.to_dict())
    c.ssm_lr = ssm_lr
    return c
