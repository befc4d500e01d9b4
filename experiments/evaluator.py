"""Evaluations: ``config.eval.splits`` and ``config.eval.extra``, one function per kind.

* :func:`parallel_sums`: one parallel forward of the batch (every split, and ``eval.extra``
  entries with ``forward="parallel"``);
* :func:`chunked_sums`: ``chunk_size`` tokens at a time through the language model's recurrent
  cache, so memory is that of one chunk (``forward="chunked"``; the Mamba paper, Sec. 4.1.2,
  tests induction heads to length 2^20).

:class:`Evaluator` holds the jitted functions and runs an evaluation by name over its dataset,
summing the task's loss sums over batches and finalizing them into metrics (plus bits per UTF-8
byte on the ``text`` dataset). The train state comes in as an argument of every call.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from experiments import tasks as tasks_lib
from experiments.data import registry
from experiments.mesh import batch_shards

__all__ = ["Evaluation", "Evaluator", "batch_sharding", "chunked_sums", "evaluations", "parallel_sums", "put_batch"]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One evaluation: ``split`` of ``data`` (config.data with the entry's overrides)."""

    split: str
    data: ml_collections.ConfigDict
    batch_size: int
    num_batches: int  # -1: the whole split
    chunk: int  # tokens per chunk of a chunked (recurrent-cache) evaluation; 0: the parallel forward
    task: tasks_lib.Task  # of this split of this data (its sparse targets may differ from training's)
    key: str = "eval.splits"  # the config entry that asks for it (named in errors)


def evaluations(config) -> dict[str, Evaluation]:
    """``config.eval.splits`` and ``config.eval.extra`` by name."""
    out = {s: Evaluation(s, config.data, int(config.eval.batch_size), int(config.eval.num_batches), 0,
                         tasks_lib.of(config.data, s))
           for s in config.eval.splits}
    for name, extra in config.eval.extra.items():
        data = ml_collections.ConfigDict(config.data.to_dict())
        data.update(extra.data.to_dict())
        chunk = int(extra.chunk_size) if extra.forward == "chunked" else 0
        out[name] = Evaluation(extra.split, data, int(extra.batch_size), int(extra.num_batches), chunk,
                               tasks_lib.of(data, extra.split), key=f"eval.extra.{name}")
    return out


def batch_sharding(mesh: Mesh, batch_size: int, axes: tuple[str, ...]) -> tuple[NamedSharding, bool]:
    """Shard an eval batch over the batch ``axes`` when it divides; else replicate (e.g. batch 1)."""
    if batch_size % batch_shards(mesh, axes) == 0 and batch_size % jax.process_count() == 0:
        return NamedSharding(mesh, P(axes)), True
    return NamedSharding(mesh, P()), False


def put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def dataset(e: Evaluation, *, seed: int, mesh: Mesh, axes: tuple[str, ...]):
    """The evaluation's batches; a replicated batch is read whole by every process."""
    _, sharded = batch_sharding(mesh, e.batch_size, axes)
    pid, nproc = jax.process_index(), jax.process_count()
    return registry.build(e.data, split=e.split, seed=seed, global_batch_size=e.batch_size,
                          process_index=pid if sharded else 0, process_count=nproc if sharded else 1)


# ----------------------------------------------------------------------------------------------
# Jitted pieces (pure functions of the parameters).
# ----------------------------------------------------------------------------------------------


def _model(graphdef, params, rest, rngs):
    return nnx.merge(graphdef, params["ssm"], params["other"], rngs, rest)


def _eval_sums(params, rest, rngs, batch, *, graphdef, task, num_classes):
    return task.sums(_model(graphdef, params, rest, rngs), batch, num_classes)


def _cache_init(params, rest, rngs, batch_size, max_length, *, graphdef):
    return _model(graphdef, params, rest, rngs).init_cache(batch_size, max_length)


def _chunk_sums(params, rest, rngs, cache, batch, *, graphdef, task, num_classes):
    logits, cache = _model(graphdef, params, rest, rngs).prefill(batch["inputs"], cache)
    sums = task.sums_of_logits(logits, batch, num_classes)
    all_right, has_any = tasks_lib.lm_rows(logits[..., :num_classes], batch)
    return sums, all_right, has_any, cache


# ----------------------------------------------------------------------------------------------
# One function per evaluation kind: a host batch -> its summed loss and metric counts.
# ----------------------------------------------------------------------------------------------


def parallel_sums(ev: "Evaluator", e: Evaluation, state, rngs, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    sharding, _ = batch_sharding(ev.mesh, e.batch_size, ev.batch_axes)
    return ev.sums_fn(e.task)(state["params"], state["rest"], rngs, put_batch(batch, sharding))


def chunked_sums(ev: "Evaluator", e: Evaluation, state, rngs, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Chunks of ``e.chunk`` tokens through the cache; a sequence is right when all its chunks are."""
    if not e.task.chunked_evaluation:
        raise ValueError(f"forward='chunked' evaluation needs task 'lm'; this dataset's task is {e.task.name!r}")
    sharding, sharded = batch_sharding(ev.mesh, e.batch_size, ev.batch_axes)
    b, length = batch["inputs"].shape
    cache = ev.cache_init(state["params"], state["rest"], rngs, b * (jax.process_count() if sharded else 1), length)
    total, rows_right, rows_scored = None, None, None
    for start in range(0, length, e.chunk):
        part = put_batch({k: v[:, start : start + e.chunk] for k, v in batch.items()}, sharding)
        sums, right, scored, cache = ev.chunk_sums(state["params"], state["rest"], rngs, cache, part)
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        rows_right = right if rows_right is None else rows_right & right
        rows_scored = scored if rows_scored is None else rows_scored | scored
    total = dict(total)
    total["seq_correct_sum"] = jnp.sum((rows_right & rows_scored).astype(jnp.float32))
    total["seq_count"] = jnp.sum(rows_scored.astype(jnp.float32))
    return total


class Evaluator:
    """Runs the evaluations of one training run on the state it is given."""

    def __init__(self, evals: dict[str, Evaluation], *, graphdef, num_classes: int, vocab_size: int, mesh: Mesh,
                 batch_axes: tuple[str, ...], seed: int):
        self.evaluations = evals
        self.batch_axes = batch_axes
        self.graphdef, self.num_classes, self.vocab_size, self.mesh, self.seed = graphdef, num_classes, vocab_size, mesh, seed
        self._sums: dict[tasks_lib.Task, object] = {}  # the jitted parallel forward of each distinct task
        self._replicated = NamedSharding(mesh, P())
        self.cache_init = jax.jit(functools.partial(_cache_init, graphdef=graphdef), static_argnums=(3, 4))
        # The chunked kind needs the dense task (prefill gives every position's logits).
        self.chunk_sums = jax.jit(functools.partial(_chunk_sums, graphdef=graphdef, task=tasks_lib.LanguageModeling(),
                                                    num_classes=num_classes), donate_argnums=(3,))
        self._tokens_per_byte: dict[str, float] = {}

    def sums_fn(self, task: tasks_lib.Task):
        """The jitted parallel forward + loss sums of ``task`` (one per distinct task)."""
        if task not in self._sums:
            self._sums[task] = jax.jit(functools.partial(_eval_sums, graphdef=self.graphdef, task=task,
                                                         num_classes=self.num_classes), out_shardings=self._replicated)
        return self._sums[task]

    def check_datasets(self) -> None:
        """Build every evaluation's dataset once (not iterated): its data settings are the dataset's
        to check, and a bad one must fail at setup, not after the last step. The error names the
        config entry (``config.eval.splits`` or ``config.eval.extra.<name>``)."""
        for name, e in self.evaluations.items():
            try:
                dataset(e, seed=self.seed, mesh=self.mesh, axes=self.batch_axes)
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"config.{e.key}: evaluation {name!r} (split {e.split!r} of {e.data.name!r}): "
                                 f"{err}") from err

    def __call__(self, name: str, state, rngs) -> dict[str, float]:
        """The metrics of evaluation ``name`` of ``state``."""
        e = self.evaluations[name]
        kind = chunked_sums if e.chunk else parallel_sums
        total = None
        for i, batch in enumerate(dataset(e, seed=self.seed, mesh=self.mesh, axes=self.batch_axes)):
            if 0 <= e.num_batches <= i:
                break
            e.task.check_batch(batch, self.vocab_size, self.num_classes, f"evaluation {name!r}, batch {i}")
            sums = kind(self, e, state, rngs, batch)
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        if total is None:
            raise ValueError(f"evaluation {name!r}: split {e.split!r} of {e.data.name!r} gave no batches")
        metrics = e.task.finalize(jax.device_get(total))
        if e.data.name == "text":
            # Bits per UTF-8 byte: comparable across tokenizers (exact when the evaluation covers
            # the whole split, since tokens/byte is the split's ratio).
            from experiments.data import text as text_data  # only text runs pay for its imports

            metrics["bits_per_byte"] = text_data.bits_per_byte(metrics["loss"], self.tokens_per_byte(name))
        return metrics

    def tokens_per_byte(self, name: str) -> float:
        """Scored tokens per UTF-8 byte of the text dataset's validation split, read once per
        evaluation of this run."""
        if name not in self._tokens_per_byte:
            from experiments.data import text as text_data

            self._tokens_per_byte[name] = float(text_data.dataset_info(self.evaluations[name].data)["tokens_per_byte"])
        return self._tokens_per_byte[name]
