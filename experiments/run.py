r"""Train an experiment config: the command-line entry point.

    python -m experiments.run --config=experiments/configs/<suite>/<name>.py[:arg] \
        --workdir=DIR [--config.key=value ...]

Rerunning the same command on the same ``--workdir`` resumes from its latest checkpoint (and says
so); rerunning a finished run reports its recorded evaluation.

Stopping: SIGTERM (a preemption) or Ctrl-C (SIGINT) saves a checkpoint at the end of the current
step (or call of ``steps_per_call`` steps) and exits cleanly: status 0 after SIGTERM, 130 after
Ctrl-C (the shell's 128 + SIGINT, so ``&&`` chains stop). A second Ctrl-C stops at once without
saving.
Several processes (one per host) train together when given ``--coordinator_address``,
``--num_processes`` and ``--process_id`` (or ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES``
/ ``JAX_PROCESS_ID``); ``--distributed_auto`` lets JAX detect a TPU pod / Slurm / Open MPI job.
"""

from __future__ import annotations

import os
import shlex
import sys
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import configs, mesh as mesh_lib, train
from experiments.backend_flags import set_cpu_fft_flag, with_flag

EXIT_INTERRUPTED = 130  # after Ctrl-C, once the checkpoint is saved (128 + SIGINT, as shells report it)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config module (experiments/configs/<suite>/<name>.py[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and TensorBoard files go.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
_AUTO = flags.DEFINE_bool("distributed_auto", False, "Let JAX detect the cluster (TPU pod, Slurm, Open MPI).")
flags.mark_flags_as_required(["config", "workdir"])


def check_overrides(argv: list[str]) -> None:
    """Raise ``flags.IllegalFlagValueError`` for a ``--config.<key>`` naming no key of the config,
    listing the keys there are (config_flags' own message only says "Did you mean")."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None:
        return
    config = configs.load(spec)
    for a in argv:
        if not a.startswith("--config."):
            continue
        key = a[len("--config.") :].split("=", 1)[0]
        miss = configs.missing_key(config, key)
        if miss:
            path, part, keys, close = miss
            where = ".".join(path) or "the config"
            hint = f" Did you mean --config.{'.'.join(path + [close])}?" if close else ""
            raise flags.IllegalFlagValueError(
                f"--config.{key}: {where} has no key {part!r}.{hint} Valid keys of {where}: {', '.join(sorted(keys))}"
            )


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        try:
            return flags.FLAGS(argv)
        except (AttributeError, KeyError, flags.Error):
            check_overrides(argv)  # the clearer error, when a key is the cause
            raise
    except flags.Error as e:  # as absl's own parser reports it
        sys.stderr.write(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.\n")
        sys.exit(1)


# What an accelerator's allocator or BLAS library says when the device has no memory left; cuBLASLt
# reports it as "BlasLt is unavailable" when its workspace cannot be allocated.
_OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "out of memory", "BlasLt is unavailable", "Failed to allocate")


def device_memory_hint(message: str, environ=None) -> str | None:
    """The note added to a device error that means the accelerator ran out of memory, or ``None``.

    The common cause on a shared GPU is not the model: JAX reserves 75% of the device's memory per
    process when it starts, so a second JAX process on the same GPU (a test run, a notebook, a
    second training run) fails at its first allocation, often inside cuBLAS.
    """
    if not any(k in message for k in _OUT_OF_MEMORY):
        return None
    env = os.environ if environ is None else environ
    shared = [f"{k}={env[k]}" for k in ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION") if k in env]
    return (
        "The accelerator ran out of memory. If another JAX process uses the same device (JAX reserves "
        "75% of its memory per process), give each process a share: XLA_PYTHON_CLIENT_MEM_FRACTION=0.4 "
        "(or XLA_PYTHON_CLIENT_PREALLOCATE=false), as `python -m experiments.sweep --parallel=N` does"
        + (f" (set here: {', '.join(shared)}; two sweeps on one GPU each need their part: --mem_fraction)"
           if shared else "")
        + ". Otherwise the step does not fit: lower --config.data.batch_size, or recompute the blocks' "
        "activations in the backward (--config.model.remat=full)."
    )


def train_explained(config, workdir: str) -> dict:
    """``train.train_and_evaluate``, with :func:`device_memory_hint`'s note on a device error."""
    try:
        return train.train_and_evaluate(config, workdir)
    except jax.errors.JaxRuntimeError as e:
        hint = device_memory_hint(str(e))
        if hint:
            e.add_note(hint)
        raise


def _summary(metrics: dict, workdir: str, seconds: float, total_steps: int) -> str:
    lines = []
    if metrics.get("preempted"):
        by = {"SIGINT": "Ctrl-C (SIGINT)"}.get(metrics.get("stop_signal"), metrics.get("stop_signal") or "a stop signal")
        saved = "checkpoint saved" if metrics.get("checkpoint_step") == metrics["step"] else "nothing new to save"
        lines.append(f"Stopped by {by} at step {metrics['step']} of {total_steps}; {saved}. "
                     "Rerun the same command to resume.")
    elif metrics.get("stopped_early"):
        lines.append(f"Stopped early at step {metrics['step']} of {total_steps} (config.early_stop reached) "
                     f"in {seconds / 60:.1f} min.")
    else:
        lines.append(f"Finished step {metrics['step']} of {total_steps} in {seconds / 60:.1f} min.")
    evals: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        split, _, name = key.partition("/")
        if name and split != "train":
            evals.setdefault(split, {})[name] = value
    for split, m in evals.items():
        parts = [f"{n} {100 * m[n]:.1f}%" for n in ("accuracy", "seq_accuracy") if n in m]
        parts.append(f"loss {m['loss']:.4f}")
        if "perplexity" in m:
            parts.append(f"perplexity {m['perplexity']:.4g}")
        lines.append(f"  held-out {split}: " + ", ".join(parts))
    lines.append(f"Outputs in {workdir}: metrics.jsonl, tensorboard/, checkpoints/, config.json")
    # Quoted, so a path with spaces pastes; TensorBoard itself is not a dependency (tensorboardX writes).
    q = shlex.quote
    lines.append(f"  curves: python -m experiments.plot {q(workdir)}    "
                 f"tensorboard --logdir {q(os.path.join(workdir, 'tensorboard'))} (pip install tensorboard)")
    ops = os.path.join(workdir, "profile", "ops.md")
    if os.path.exists(ops):
        lines.append(f"  profile: {ops} (device time per op; the trace beside it opens in XProf / TensorBoard)")
    return "\n".join(lines)


def xla_flags_for(config, xla_flags: str) -> str:
    """``xla_flags`` with what ``config`` needs set before JAX starts its backend."""
    return with_flag(xla_flags, train.DETERMINISTIC_FLAG) if config.get("deterministic", False) else xla_flags


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    os.environ["XLA_FLAGS"] = xla_flags_for(_CONFIG.value, os.environ.get("XLA_FLAGS", ""))
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep the terminal to the progress bar and results
    mesh_lib.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_AUTO.value)

    config = _CONFIG.value
    start = time.perf_counter()
    metrics = train_explained(config, _WORKDIR.value)
    if jax.process_index() == 0:
        print(_summary(metrics, _WORKDIR.value, time.perf_counter() - start, config.total_steps), flush=True)
    else:
        how = "stopped by a stop signal (checkpoint saved) at" if metrics.get("preempted") else "finished"
        print(f"process {jax.process_index()} of {jax.process_count()}: {how} step {metrics['step']}, "
              f"train loss {metrics.get('train/loss', float('nan')):.6f}", flush=True)
    if metrics.get("stop_signal") == "SIGINT":
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    # Before anything initializes a backend (XLA reads the flags then).
    set_cpu_fft_flag()
    app.run(main, flags_parser=_parse_flags)
