"""The trainer: ``train_and_evaluate(config, workdir)`` (importable from notebooks).

One linear function in sections: setup -> mesh -> data -> model shapes -> shardings -> init on
devices -> restore -> train/eval steps -> loop. The keys it reads are documented in
:mod:`experiments.configs.common`.

Train state (a pytree; what a checkpoint holds)::

    step       ()    int32
    params     {"ssm": nnx.State of ssm_jax.nn.SSMParam, "other": nnx.State of other nnx.Param}
    opt_state  optax state over params
    rest       nnx.State of the model's other non-RNG variables, carried unchanged (empty for
               every ssm_jax model: none keeps running statistics)

The model's RNG streams are not trained or saved: every step re-derives them from
``(seed, step, microbatch)``, so dropout is reproducible across resumption.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from experiments import checkpointing, config_checks, mesh as mesh_lib, metrics as metrics_lib, optim as optim_lib
from experiments import stopping, tasks
from experiments.data import registry
from experiments.metrics import METRICS_FILE, MetricWriter, ProgressBar, read_metrics
from ssm_jax import parallel
from ssm_jax.nn import SSMParam

__all__ = ["load_model", "train_and_evaluate"]

BATCH_AXES = mesh_lib.BATCH_AXES


def _reseed(rngs: nnx.State, key: jax.Array) -> nnx.State:
    """The model's RNG streams keyed from ``key`` (each stream its own fold-in), counts reset."""
    leaves, treedef = jax.tree.flatten(rngs, is_leaf=lambda x: isinstance(x, nnx.Variable))
    out = []
    for i, v in enumerate(leaves):
        if isinstance(v, nnx.RngKey):
            out.append(v.replace(jax.random.fold_in(key, i)))
        elif isinstance(v, nnx.RngCount):
            out.append(v.replace(jnp.zeros_like(v.get_value())))
        else:
            out.append(v)
    return jax.tree.unflatten(treedef, out)


def _flops_per_token(model_cfg, batch: dict[str, np.ndarray], task: str) -> float:
    """Training FLOPs per input token of the model at this batch's sequence length; 0 for a model
    ``ssm_jax.models.counting`` does not know (a test model), which then logs no MFU."""
    from ssm_jax import models
    from ssm_jax.models import counting

    if not isinstance(model_cfg, (models.LanguageModelConfig, models.SequenceClassifierConfig)):
        return 0.0
    return counting.flops_per_token(model_cfg, int(batch["inputs1" if task == "retrieval" else "inputs"].shape[1]))


def _put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def _ssm_lr(config, model_cfg) -> float | None:
    """``optim.ssm_lr``, else the S4/S4D config's ``lr`` when every S4-family layer agrees."""
    if config.optim.ssm_lr is not None:
        return float(config.optim.ssm_lr)
    lrs = {getattr(model_cfg, m).lr for m in set(getattr(model_cfg, "mixers", ())) if m in ("s4", "s4d")}
    lrs.discard(None)
    if len(lrs) > 1:
        raise ValueError(f"train: S4/S4D layers ask for different lr {sorted(lrs)}; set optim.ssm_lr")
    return lrs.pop() if lrs else None


def _like_params(opt_state, params, param_shardings, default):
    """Shardings for ``opt_state``: a leaf whose key path ends with a parameter's path (Adam's
    ``mu`` / ``nu`` of that parameter, however the transforms nest them) and has its shape gets
    its sharding; other leaves (counts, masked-out groups) get ``default``."""
    keystr = jax.tree_util.keystr
    flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_s = jax.tree.leaves(param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    by_path = {keystr(path): (leaf.shape, s) for (path, leaf), s in zip(flat_p, flat_s, strict=True)}

    def pick(path, leaf):
        k = keystr(path)
        for p, (shape, s) in by_path.items():
            if k.endswith(p) and tuple(leaf.shape) == tuple(shape):
                return s
        return default

    return jax.tree_util.tree_map_with_path(pick, opt_state)


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


_TOKENS_PER_BYTE: dict[str, float] = {}


def _tokens_per_byte(data_config) -> float:
    """Scored tokens per UTF-8 byte of a text dataset's validation split (computed once per config)."""
    key = json.dumps(data_config.to_dict(), sort_keys=True, default=str)
    if key not in _TOKENS_PER_BYTE:
        from experiments.data import text as text_data

        _TOKENS_PER_BYTE[key] = float(text_data.dataset_info(data_config)["tokens_per_byte"])
    return _TOKENS_PER_BYTE[key]


def _eval_batch_sharding(mesh, batch_size: int) -> tuple[NamedSharding, bool]:
    """Shard an eval batch over (data, fsdp) when it divides; else replicate (e.g. batch 1)."""
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % n == 0 and batch_size % jax.process_count() == 0:
        return NamedSharding(mesh, P(BATCH_AXES)), True
    return NamedSharding(mesh, P()), False


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
    try:
        model_cfg = tasks.model_config(task, config.model.to_dict())
    except (TypeError, ValueError) as e:
        raise type(e)(f"config.model: {e}") from None
    num_classes = model_cfg.vocab_size if task == "lm" else model_cfg.num_classes
    vocab_size = model_cfg.vocab_size
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
    config = _expand_workdir(config, workdir)

    # ------------------------------------------------------------------------------------------
    # Mesh.
    # ------------------------------------------------------------------------------------------
    mesh = mesh_lib.mesh_from_config(config.mesh)
    n_batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if (batch_size // accum) % n_batch_shards:
        raise ValueError(
            f"train: the microbatch data.batch_size / optim.grad_accum_steps = {batch_size // accum} must divide "
            f"over mesh data x fsdp = {n_batch_shards} devices"
        )
    rules = tuple((name, tuple(a) if isinstance(a, list) else a) for name, a in config.sharding_rules)
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(BATCH_AXES))
    logging.info("mesh: %s", mesh_lib.describe(mesh))

    # --------------------------------------------------------------------------------------
    # Model shapes (no memory). Outside the mesh context: nnx.eval_shape would read the logical
    # names as mesh axes (flax 0.12.10).
    # --------------------------------------------------------------------------------------
    def make_model():
        return tasks.build_model(task, model_cfg, nnx.Rngs(config.seed))

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
        evaluations = _evaluations(config)

        def build_eval(e: _Evaluation):
            _, sharded = _eval_batch_sharding(mesh, e.batch_size)
            return registry.build(e.data, split=e.split, seed=config.seed, global_batch_size=e.batch_size,
                                  process_index=pid if sharded else 0, process_count=nproc if sharded else 1)

        # Every evaluation's dataset is built once now (not iterated): its data settings are the
        # dataset's to check, and a bad one must fail here, not after the last step.
        for e in evaluations.values():
            build_eval(e)

        # --------------------------------------------------------------------------------------
        # Shardings: parameters from their logical axis names through the config's rules table;
        # optimizer moments like their parameters; everything else replicated.
        # --------------------------------------------------------------------------------------
        param_shardings = {
            "ssm": parallel.logical_to_sharding(abs_ssm, mesh, rules),
            "other": parallel.logical_to_sharding(abs_other, mesh, rules),
        }
        rngs_shardings = jax.tree.map(lambda _: replicated, abs_rngs)
        rest_shardings = jax.tree.map(lambda _: replicated, abs_rest)

        tx, schedules = optim_lib.make_optimizer(
            _with_ssm_lr(config.optim, _ssm_lr(config, model_cfg)), total_steps
        )
        abs_opt = jax.eval_shape(tx.init, abs_params)
        opt_shardings = _like_params(abs_opt, abs_params, param_shardings, replicated)
        state_shardings = {"step": replicated, "params": param_shardings, "opt_state": opt_shardings, "rest": rest_shardings}
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abs_params))
        logging.info("model: %s, %d parameters", type(abstract_model).__name__, n_params)
        if pid == 0:
            _write_run_info(workdir, mesh, type(abstract_model).__name__, n_params, param_shardings)

        # --------------------------------------------------------------------------------------
        # Initialize directly on the devices, in the sharded layout.
        # --------------------------------------------------------------------------------------
        def init():
            model = make_model()
            model.train()
            _, ssm, other, rngs, rest = nnx.split(model, SSMParam, nnx.Param, nnx.RngState, ...)
            params = {"ssm": ssm, "other": other}
            state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params), "rest": rest}
            return state, rngs

        init = jax.jit(init, out_shardings=(state_shardings, rngs_shardings))
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
        # Steps.
        # --------------------------------------------------------------------------------------
        base_key = jax.random.key(config.seed)
        metric_shardings = replicated

        def loss_fn(params, rest, rngs, batch, key):
            model = nnx.merge(graphdef, params["ssm"], params["other"], _reseed(rngs, key), rest)
            logits = tasks.forward(model, batch, task)
            sums = tasks.loss_sums(logits, batch, task, num_classes)
            return sums["loss_sum"], sums

        grad_fn = jax.grad(loss_fn, has_aux=True)

        def one_step(state, rngs, batch):
            params, step = state["params"], state["step"]
            key = jax.random.fold_in(base_key, step)
            if accum == 1:
                grads, sums = grad_fn(params, state["rest"], rngs, batch, key)
            else:
                # Microbatch m = rows m, m + accum, ...: every device keeps a share of each one.
                micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), batch)
                micro = jax.lax.with_sharding_constraint(micro, jax.tree.map(lambda _: NamedSharding(mesh, P(None, BATCH_AXES)), micro))

                def body(carry, xs):
                    g, s = grad_fn(params, state["rest"], rngs, xs[0], jax.random.fold_in(key, xs[1]))
                    return jax.tree.map(jnp.add, carry, (g, s)), None

                zeros = jax.eval_shape(lambda: grad_fn(params, state["rest"], rngs, jax.tree.map(lambda x: x[0], micro), key))
                zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), zeros)
                (grads, sums), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
            # Mean over every weighted position of the global batch (independent of accum / devices).
            grads = jax.tree.map(lambda g: g / jnp.maximum(sums["weight_sum"], 1.0), grads)
            updates, opt_state = tx.update(grads, state["opt_state"], params)
            new = {"step": step + 1, "params": optax.apply_updates(params, updates), "opt_state": opt_state, "rest": state["rest"]}
            metrics = dict(sums, grad_norm=optax.tree.norm(grads), lr=schedules["other"](step))
            return new, metrics

        train_step = jax.jit(
            one_step,
            in_shardings=(state_shardings, rngs_shardings, batch_sharding),
            out_shardings=(state_shardings, metric_shardings),
            donate_argnums=(0,),
        )

        # Several optimizer steps in one compiled call (config.steps_per_call): a small model's
        # step is a few microseconds of device work behind milliseconds of dispatch, so a scan
        # over `n` stacked batches runs it at the device's pace. Same steps, same result.
        def train_steps(state, rngs, batches):
            def body(state, batch):
                return one_step(state, rngs, batch)

            return jax.lax.scan(body, state, batches)

        stacked_sharding = NamedSharding(mesh, P(None, BATCH_AXES))
        train_steps = jax.jit(
            train_steps,
            in_shardings=(state_shardings, rngs_shardings, stacked_sharding),
            out_shardings=(state_shardings, metric_shardings),
            donate_argnums=(0,),
        )

        def eval_step(params, rest, rngs, batch):
            model = nnx.merge(graphdef_eval, params["ssm"], params["other"], rngs, rest)
            return tasks.loss_sums(tasks.forward(model, batch, task), batch, task, num_classes)

        eval_step = jax.jit(eval_step, out_shardings=metric_shardings)

        # Long sequences: feed `chunk` tokens at a time through the model's recurrent cache, so
        # memory is that of one chunk (Mamba paper Sec. 4.1.2 tests induction heads to 2^20).
        def cache_init(params, rest, rngs, batch_size, max_length):
            model = nnx.merge(graphdef_eval, params["ssm"], params["other"], rngs, rest)
            return model.init_cache(batch_size, max_length)

        cache_init = jax.jit(cache_init, static_argnums=(3, 4))

        def chunk_step(params, rest, rngs, cache, batch):
            model = nnx.merge(graphdef_eval, params["ssm"], params["other"], rngs, rest)
            logits, cache = model.prefill(batch["inputs"], cache)
            sums = tasks.loss_sums(logits, batch, task, num_classes)
            all_right, has_any = tasks.lm_rows(logits[..., :num_classes], batch)
            return sums, all_right, has_any, cache

        chunk_step = jax.jit(chunk_step, donate_argnums=(3,))

        def chunked_sums(batch: dict[str, np.ndarray], sharding, sharded: bool, chunk: int) -> dict[str, jax.Array]:
            if task != "lm":
                raise ValueError(f"forward='chunked' evaluation needs task 'lm'; this dataset's task is {task!r}")
            b, length = batch["inputs"].shape
            cache = cache_init(state["params"], state["rest"], rngs, b * (nproc if sharded else 1), length)
            total, rows_right, rows_scored = None, None, None
            for start in range(0, length, chunk):
                part = _put_batch({k: v[:, start : start + chunk] for k, v in batch.items()}, sharding)
                sums, right, scored, cache = chunk_step(state["params"], state["rest"], rngs, cache, part)
                total = sums if total is None else jax.tree.map(jnp.add, total, sums)
                rows_right = right if rows_right is None else rows_right & right
                rows_scored = scored if rows_scored is None else rows_scored | scored
            total = dict(total)
            total["seq_correct_sum"] = jnp.sum((rows_right & rows_scored).astype(jnp.float32))
            total["seq_count"] = jnp.sum(rows_scored.astype(jnp.float32))
            return total

        def evaluate(name: str) -> dict[str, float]:
            e = evaluations[name]
            data_config, batch_size, num_batches, chunk = e.data, e.batch_size, e.num_batches, e.chunk
            sharding, sharded = _eval_batch_sharding(mesh, batch_size)
            it = iter(build_eval(e))
            total = None
            for i, batch in enumerate(it):
                if 0 <= num_batches <= i:
                    break
                tasks.check_batch(batch, task, vocab_size, num_classes, f"evaluation {name!r}, batch {i}")
                if chunk:
                    sums = chunked_sums(batch, sharding, sharded, chunk)
                else:
                    sums = eval_step(state["params"], state["rest"], rngs, _put_batch(batch, sharding))
                total = sums if total is None else jax.tree.map(jnp.add, total, sums)
            if total is None:
                raise ValueError(f"evaluation {name!r}: split {e.split!r} of {data_config.name!r} gave no batches")
            metrics = tasks.finalize(jax.device_get(total), task)
            if data_config.name == "text":
                # Bits per UTF-8 byte: comparable across tokenizers (exact when the evaluation covers
                # the whole split, since tokens/byte is the split's ratio).
                from experiments.data import text as text_data  # only text runs pay for its imports

                metrics["bits_per_byte"] = text_data.bits_per_byte(metrics["loss"], _tokens_per_byte(data_config))
            return metrics

        # --------------------------------------------------------------------------------------
        # Loop.
        # --------------------------------------------------------------------------------------
        writer = MetricWriter(workdir, enabled=pid == 0)
        cleanup.callback(writer.close)
        bar = ProgressBar(total_steps, start, enabled=pid == 0 and bool(config.progress_bar))
        cleanup.callback(bar.close)

        def run_evals(step: int, names) -> dict[str, float]:
            """Evaluate ``names`` (eval.splits and eval.extra entries) and write their rows."""
            out = {}
            for name in names:
                m = evaluate(name)
                writer.write(step, name, m)
                out.update({f"{name}/{k}": v for k, v in m.items()})
            if out:
                bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in out.items() if k.endswith(("loss", "accuracy"))))
            return out

        splits = list(config.eval.splits)
        every_eval = [n for n, e in config.eval.extra.items() if e.every_eval]
        at_end = [n for n, e in config.eval.extra.items() if not e.every_eval]  # after the last step only

        step = start
        window: list[dict[str, jax.Array]] = []
        window_tokens, window_start = 0, time.perf_counter()
        final: dict[str, float] = {}
        last_train: dict[str, float] = {}
        preempted = False
        per_call = int(config.steps_per_call)
        cadences = (int(config.log_every), int(config.eval_every), int(config.checkpoint_every))
        flops_per_token = None  # from the first batch's length
        stop = stopping.EarlyStop(workdir, config.early_stop)
        stopped = stop.stopped_at(start)
        while step < total_steps and not stopped:
            if nproc == 1 and signals.requested and step == start:
                preempted = True  # the signal came during setup: nothing trained, nothing to save
                break
            # Run up to the next step at which something is logged, evaluated or saved.
            n = min([per_call, total_steps - step] + [c - step % c for c in cadences])
            host_batches = [next(train_iter) for _ in range(n)]
            for i, b in enumerate(host_batches):
                tasks.check_batch(b, task, vocab_size, num_classes, f"train batch of step {step + i + 1}")
            window_tokens += sum(tasks.tokens_in(b, task) for b in host_batches) * nproc
            if n == 1:
                state, metrics = train_step(state, rngs, _put_batch(host_batches[0], batch_sharding))
                metrics = jax.tree.map(lambda x: x[None], metrics)
            else:
                stacked = {k: np.stack([b[k] for b in host_batches]) for k in host_batches[0]}
                state, metrics = train_steps(state, rngs, _put_batch(stacked, stacked_sharding))
            step += n
            window.append(metrics)
            bar.update(n)
            if step % int(config.log_every) == 0 or step == total_steps:
                fetched = jax.device_get(window)
                # Each entry holds a call's metrics stacked over its steps: (n,) per key.
                per_step = {k: np.concatenate([np.asarray(m[k]) for m in fetched]) for k in fetched[0]}
                sums = {k: v.sum() for k, v in per_step.items() if k not in ("grad_norm", "lr")}
                elapsed = time.perf_counter() - window_start
                last_train = tasks.finalize(sums, task)
                last_train.update(
                    grad_norm=float(np.mean(per_step["grad_norm"])),
                    lr=float(per_step["lr"][-1]),
                    steps_per_sec=len(per_step["lr"]) / elapsed,
                    tokens_per_sec=window_tokens / elapsed,
                )
                if flops_per_token is None:
                    flops_per_token = _flops_per_token(model_cfg, host_batches[0], task)
                peak = metrics_lib.device_peak_flops(jax.devices()[0])
                if peak and flops_per_token:
                    # Model FLOPs (ssm_jax.models.counting) over every device's bf16 peak.
                    last_train["mfu"] = flops_per_token * last_train["tokens_per_sec"] / (peak * jax.device_count())
                memory = metrics_lib.device_memory(jax.local_devices())
                if memory is not None:
                    last_train["peak_memory_bytes"] = memory
                if not all(math.isfinite(v) for v in last_train.values()):
                    logging.error("non-finite train metrics at step %d: %s", step, last_train)
                writer.write(step, "train", last_train)
                bar.update(0, loss=last_train["loss"], tok_s=last_train["tokens_per_sec"],
                           **({"mfu_pct": 100 * last_train["mfu"]} if "mfu" in last_train else {}))
                window, window_tokens, window_start = [], 0, time.perf_counter()
            if step == total_steps:
                # Saved, and written to disk, before the final evaluation: however long it takes
                # or however it fails, the trained state is kept and a rerun only evaluates.
                ckpt.save(step, state, train_iter)
                ckpt.wait()
                final.update(run_evals(step, splits + every_eval + at_end))
                break
            eval_metrics = {}
            if step % int(config.eval_every) == 0:
                eval_metrics = run_evals(step, splits + every_eval)
                stopped = stop.reached(eval_metrics)
                final.update(eval_metrics)
            preempted = signals.reached(step) and not stopped
            if step % int(config.checkpoint_every) == 0 or preempted or stopped:
                ckpt.save(step, state, train_iter, metrics=eval_metrics or None)
            if preempted:
                logging.warning("preempted: saved step %d of %d; rerun the same command to resume", step, total_steps)
                break
            if stopped:
                # Stopping early ends the run: saved above, the end-of-training evaluations now.
                stop.record(step, eval_metrics)
                ckpt.wait()
                final.update(run_evals(step, at_end))
        if step == start and not preempted and (start >= total_steps or stopped):
            # Rerunning a finished (or early-stopped) run: report what it recorded, and evaluate
            # only what is missing (a final evaluation that failed), so no row is written twice.
            done, last_train = _recorded_rows(workdir, step, splits + every_eval + at_end, process_count=nproc)
            missing = [n for n in splits + every_eval + at_end if n not in done]
            if pid == 0:
                print(f"{workdir}: the run ended at step {step}; reporting its recorded evaluation"
                      + (f", evaluating what was not recorded: {missing}" if missing else ""), flush=True)
            final = {f"{n}/{k}": v for n, row in done.items() for k, v in row.items()}
            final.update(run_evals(step, missing))
        ckpt.wait()
        out = {"step": step, "preempted": preempted, "stop_signal": signals.requested if preempted else None,
               "stopped_early": bool(stopped), "checkpoint_step": ckpt.latest_step()}
        out.update({f"train/{k}": v for k, v in last_train.items()})
        out.update(final)
        return out


@dataclasses.dataclass(frozen=True)
class _Evaluation:
    """One evaluation: ``split`` of ``data`` (config.data with the entry's overrides)."""

    split: str
    data: ml_collections.ConfigDict
    batch_size: int
    num_batches: int
    chunk: int  # tokens per chunk of a chunked (recurrent-cache) evaluation; 0: the parallel forward


def _evaluations(config) -> dict[str, _Evaluation]:
    """``config.eval.splits`` and ``config.eval.extra`` by name."""
    out = {s: _Evaluation(s, config.data, int(config.eval.batch_size), int(config.eval.num_batches), 0)
           for s in config.eval.splits}
    for name, extra in config.eval.extra.items():
        data = ml_collections.ConfigDict(config.data.to_dict())
        data.update(extra.data.to_dict())
        chunk = int(extra.chunk_size) if extra.forward == "chunked" else 0
        out[name] = _Evaluation(extra.split, data, int(extra.batch_size), int(extra.num_batches), chunk)
    return out


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
    the parameters of checkpoint ``step`` (default: the latest), in eval mode, on the default device."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    task = tasks.task_of(config.data)
    model = tasks.build_model(task, tasks.model_config(task, config.model.to_dict()), nnx.Rngs(config.seed))
    _, ssm, other, _ = nnx.split(model, SSMParam, nnx.Param, ...)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), {"ssm": ssm, "other": other})
    params, step = checkpointing.restore_params(workdir, abstract, step=step)
    nnx.update(model, params["ssm"], params["other"])
    model.eval()
    return model, config, step


WORKDIR_TOKEN = "{workdir}"


def _expand_workdir(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
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
