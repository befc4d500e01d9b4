"""Tasks: one small object per task type, holding what differs between them.

:func:`of` gives the task of a dataset split (the builder's ``TASK``, see
:mod:`experiments.data.registry`, where the batch keys of each task are listed). A task builds
its model from ``config.model``, computes the summed loss and metric counts of a batch, turns
accumulated sums into metrics and checks host batches. Nothing else in the trainer asks which
task it runs.

Losses and metrics are computed as *sums* over the batch (``loss_sum``, ``weight_sum``,
``correct_sum``, ...) so that microbatches, devices and evaluation batches add up exactly;
:meth:`Task.finalize` divides at the end.

=============== =========================================================================
lm              loss = weighted mean token cross entropy; accuracy = argmax == target on
                weighted positions; seq_accuracy = fraction of sequences (with any weight)
                whose weighted positions are all right; perplexity = exp(loss);
                bits_per_token = loss / ln 2
classification  loss = weighted mean cross entropy over classes; accuracy
retrieval       same as classification, the model a dual encoder over (inputs1, inputs2)
=============== =========================================================================

Sparse targets: a dataset whose rows score at most ``k`` positions (the synthetic tasks: MQAR's
queries, selective copying's markers, induction heads' last token) declares ``k`` when it
registers (``scored_positions``). Its :class:`LanguageModeling` task then runs the final norm and
the LM head only at the scored positions of each row (gathered from ``weights``): the same sums
as the full ``(b, l, vocab)`` logits, which dominate the step at MQAR's 8,192 vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.data import registry

__all__ = ["Classification", "LanguageModeling", "Retrieval", "Task", "lm_rows", "of", "scored_positions"]


@dataclasses.dataclass(frozen=True)
class Task:
    """What the trainer needs of a task; subclasses set the class attributes. Frozen, so a task is
    a static argument of a jitted function (equal tasks share a compilation)."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]] = ("loss", "accuracy")
    input_keys: ClassVar[tuple[str, ...]] = ("inputs",)  # the model's token inputs
    id_keys: ClassVar[tuple[str, ...]] = ("inputs",)  # batch keys holding token ids (checked against the vocabulary)
    label_keys: ClassVar[tuple[str, ...]] = ("label",)  # batch keys holding class labels
    target_key: ClassVar[str] = "label"
    chunked_evaluation: ClassVar[bool] = False  # whether forward="chunked" (a recurrent cache) applies

    def model_config(self, model: Mapping[str, Any]):
        """The frozen model config from the plain ``config.model`` mapping."""
        from ssm_jax import models

        return models.SequenceClassifierConfig.from_dict(dict(model))

    def build_model(self, cfg, rngs):
        from ssm_jax import models

        return models.SequenceClassifier(cfg, rngs=rngs)

    def num_classes(self, cfg) -> int:
        return cfg.num_classes

    def forward(self, model, batch: Mapping[str, jax.Array]) -> jax.Array:
        return model(batch["inputs"], mask=batch["mask"])

    def sums(self, model, batch: Mapping[str, jax.Array], num_classes: int) -> dict[str, jax.Array]:
        """The model's summed loss and metric counts over ``batch`` (fp32 scalars)."""
        return self.sums_of_logits(self.forward(model, batch), batch, num_classes)

    def sums_of_logits(self, logits: jax.Array, batch: Mapping[str, jax.Array], num_classes: int) -> dict[str, jax.Array]:
        """Summed loss and metric counts of ``logits`` over ``batch`` (fp32 scalars).

        ``logits`` may cover a padded vocabulary; only the first ``num_classes`` entries count.
        """
        logits = logits[..., :num_classes].astype(jnp.float32)
        targets, weights = batch[self.target_key], batch["weights"].astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
        return {
            "loss_sum": jnp.sum(ce * weights),
            "weight_sum": jnp.sum(weights),
            "correct_sum": jnp.sum(correct * weights),
        }

    def finalize(self, sums: Mapping[str, Any]) -> dict[str, float]:
        """Metrics from accumulated sums (host floats)."""
        sums = {k: float(np.asarray(v)) for k, v in sums.items()}
        w = max(sums["weight_sum"], 1e-9)
        return {"loss": sums["loss_sum"] / w, "accuracy": sums["correct_sum"] / w}

    def metric_names(self, dataset: str) -> tuple[str, ...]:
        """The metrics an evaluation on ``dataset`` reports (:meth:`finalize`, plus the
        evaluator's ``bits_per_byte`` on the ``text`` dataset)."""
        return self.metrics + (("bits_per_byte",) if dataset == "text" else ())

    def check_batch(self, batch: Mapping[str, np.ndarray], vocab_size: int, num_classes: int, where: str) -> None:
        """A host batch's ids must lie in ``[0, vocab_size)`` and labels in ``[0, num_classes)``: an
        id past the embedding table gives NaN (or, before that was refused, a clamped row) on device.

        ``where`` names the batch in the error (e.g. "train batch at step 3")."""
        for keys, n, what in ((self.id_keys, vocab_size, "token ids"), (self.label_keys, num_classes, "labels")):
            for k in keys:
                a = np.asarray(batch[k])
                if a.size and (a.min() < 0 or a.max() >= n):  # two reductions; the mask only to report
                    bad = (a < 0) | (a >= n)
                    values = sorted({int(v) for v in a[bad]})
                    raise ValueError(f"{where}: `{k}` holds {what} outside [0, {n}) (the model's "
                                     f"{'vocab_size' if what == 'token ids' else 'num_classes'}): {values[:8]}"
                                     f"{' ...' if len(values) > 8 else ''} at {int(bad.sum())} positions; check the "
                                     "dataset's vocabulary against config.model")

    def tokens_in(self, batch: Mapping[str, np.ndarray]) -> int:
        """Input tokens in a (host) batch, for throughput."""
        return sum(int(batch[k].size) for k in self.input_keys)

    def seq_len(self, batch: Mapping[str, np.ndarray]) -> int:
        """The model's input length (for its FLOPs per token)."""
        return int(batch[self.input_keys[0]].shape[1])


@dataclasses.dataclass(frozen=True)
class LanguageModeling(Task):
    """Next-token prediction on ``inputs``/``targets``/``weights``; ``scored_positions``: at most
    that many weighted positions per row (sparse targets; None: dense, the full logits)."""

    scored_positions: int | None = None

    name: ClassVar[str] = "lm"
    metrics: ClassVar[tuple[str, ...]] = ("loss", "accuracy", "seq_accuracy", "perplexity", "bits_per_token")
    id_keys: ClassVar[tuple[str, ...]] = ("inputs", "targets")
    label_keys: ClassVar[tuple[str, ...]] = ()
    target_key: ClassVar[str] = "targets"
    chunked_evaluation: ClassVar[bool] = True

    def __post_init__(self):
        k = self.scored_positions
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"LanguageModeling: scored_positions must be None or an int >= 1; got {k!r}")

    def model_config(self, model: Mapping[str, Any]):
        from ssm_jax import models

        return models.LanguageModelConfig.from_dict(dict(model))

    def build_model(self, cfg, rngs):
        from ssm_jax import models

        return models.LanguageModel(cfg, rngs=rngs)

    def num_classes(self, cfg) -> int:
        return cfg.vocab_size

    def forward(self, model, batch: Mapping[str, jax.Array]) -> jax.Array:
        return model(batch["inputs"], segment_ids=batch.get("segment_ids"))

    def sums(self, model, batch: Mapping[str, jax.Array], num_classes: int) -> dict[str, jax.Array]:
        k = self.scored_positions
        if k is None or k >= batch["inputs"].shape[1]:
            return self.sums_of_logits(self.forward(model, batch), batch, num_classes)
        if not (hasattr(model, "features") and hasattr(model, "head")):
            raise TypeError(f"task 'lm' with scored_positions={k} needs a model with features(inputs, segment_ids=) "
                            f"and head(hidden) (as ssm_jax.models.LanguageModel); {type(model).__name__} has not")
        h = model.features(batch["inputs"], segment_ids=batch.get("segment_ids"))
        pos = scored_positions(batch["weights"], k)
        take = lambda x: jnp.take_along_axis(x, pos.reshape(pos.shape + (1,) * (x.ndim - 2)), axis=1)
        # Every weighted position is among the k gathered (check_batch refuses rows with more);
        # the others gathered carry weight 0, so every sum equals the full computation's.
        scored = {"targets": take(batch["targets"]), "weights": take(batch["weights"])}
        return self.sums_of_logits(model.head(take(h)), scored, num_classes)

    def sums_of_logits(self, logits, batch, num_classes):
        out = super().sums_of_logits(logits, batch, num_classes)
        all_right, has_any = lm_rows(logits[..., :num_classes], batch)
        out["seq_correct_sum"] = jnp.sum((all_right & has_any).astype(jnp.float32))
        out["seq_count"] = jnp.sum(has_any.astype(jnp.float32))
        return out

    def finalize(self, sums):
        out = super().finalize(sums)
        sums = {k: float(np.asarray(v)) for k, v in sums.items()}
        out["seq_accuracy"] = sums["seq_correct_sum"] / max(sums["seq_count"], 1e-9)
        out["perplexity"] = math.exp(min(out["loss"], 80.0))
        out["bits_per_token"] = out["loss"] / math.log(2.0)
        return out

    def check_batch(self, batch, vocab_size, num_classes, where):
        super().check_batch(batch, vocab_size, num_classes, where)
        k = self.scored_positions
        if k is not None:
            n = int(np.max(np.sum(np.asarray(batch["weights"]) > 0, axis=-1), initial=0))
            if n > k:
                raise ValueError(f"{where}: a row has {n} weighted positions, but the dataset declares at most "
                                 f"scored_positions={k} (experiments.data.registry.register); the loss would miss some")


@dataclasses.dataclass(frozen=True)
class Classification(Task):
    """One label per sequence: ``inputs``, ``mask``, ``label``, ``weights``."""

    name: ClassVar[str] = "classification"


@dataclasses.dataclass(frozen=True)
class Retrieval(Task):
    """A dual encoder over ``(inputs1, inputs2)`` with ``mask1``/``mask2``, one label per pair."""

    name: ClassVar[str] = "retrieval"
    input_keys: ClassVar[tuple[str, ...]] = ("inputs1", "inputs2")
    id_keys: ClassVar[tuple[str, ...]] = ("inputs1", "inputs2")

    def model_config(self, model):
        model = dict(model)
        model.setdefault("dual_encoder", True)
        if not model["dual_encoder"]:
            raise ValueError("task 'retrieval' needs model.dual_encoder=True")
        return super().model_config(model)

    def forward(self, model, batch):
        return model(batch["inputs1"], batch["inputs2"], mask1=batch["mask1"], mask2=batch["mask2"])


_BY_NAME = {t.name: t for t in (LanguageModeling, Classification, Retrieval)}


def of(data_config, split: str = "train") -> Task:
    """The task of ``split`` of the dataset ``data_config`` describes (unknown names raise,
    listing the registered datasets)."""
    builder = registry.get(data_config.name)
    cls = _BY_NAME[builder.TASK]
    if cls is LanguageModeling:
        k = builder.SCORED_POSITIONS
        return LanguageModeling(scored_positions=None if k is None else int(k(data_config, split)))
    return cls()


def scored_positions(weights: jax.Array, k: int) -> jax.Array:
    """``(b, k)`` int32 positions of each row of ``weights (b, l)``: its weighted ones first, then
    unweighted ones (ties among equal flags in no particular order)."""
    return jax.lax.top_k((weights > 0).astype(jnp.float32), k)[1].astype(jnp.int32)


def lm_rows(logits: jax.Array, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Per sequence ``(b,)`` bools: every weighted position right; any position weighted."""
    scored = batch["weights"] > 0
    correct = jnp.argmax(logits, axis=-1) == batch["targets"]
    return jnp.all(jnp.where(scored, correct, True), axis=-1), jnp.any(scored, axis=-1)
