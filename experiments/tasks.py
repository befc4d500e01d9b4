"""Task types: which model a task trains, its forward on a batch, its loss and metrics.

The task ("lm" | "classification" | "retrieval") is the dataset's (``registry.get(name).TASK``);
batch keys per task are in :mod:`experiments.data.registry`.

Losses and metrics are computed as *sums* over the batch (``loss_sum``, ``weight_sum``,
``correct_sum``, ...) so that microbatches, devices and evaluation batches add up exactly;
:func:`finalize` divides at the end.

=============== =========================================================================
lm              loss = weighted mean token cross entropy; accuracy = argmax == target on
                weighted positions; seq_accuracy = fraction of sequences (with any weight)
                whose weighted positions are all right; perplexity = exp(loss);
                bits_per_token = loss / ln 2
classification  loss = weighted mean cross entropy over classes; accuracy
retrieval       same as classification, the model a dual encoder over (inputs1, inputs2)
=============== =========================================================================
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.data import registry

__all__ = [
    "build_model", "check_batch", "finalize", "forward", "lm_rows", "loss_sums", "metric_names", "model_config", "task_of",
    "tokens_in",
]


def task_of(data_config) -> str:
    return registry.get(data_config.name).TASK


def model_config(task: str, model: Mapping[str, Any]):
    """The frozen model config for ``task`` from the plain ``config.model`` mapping."""
    from ssm_jax import models

    if task == "lm":
        return models.LanguageModelConfig.from_dict(dict(model))
    if task in ("classification", "retrieval"):
        model = dict(model)
        if task == "retrieval":
            model.setdefault("dual_encoder", True)
            if not model["dual_encoder"]:
                raise ValueError("task 'retrieval' needs model.dual_encoder=True")
        return models.SequenceClassifierConfig.from_dict(model)
    raise ValueError(f"unknown task {task!r}; expected one of {registry.TASKS}")


def build_model(task: str, cfg, rngs):
    from ssm_jax import models

    return models.LanguageModel(cfg, rngs=rngs) if task == "lm" else models.SequenceClassifier(cfg, rngs=rngs)


def forward(model, batch: Mapping[str, jax.Array], task: str) -> jax.Array:
    if task == "lm":
        return model(batch["inputs"], segment_ids=batch.get("segment_ids"))
    if task == "classification":
        return model(batch["inputs"], mask=batch["mask"])
    return model(batch["inputs1"], batch["inputs2"], mask1=batch["mask1"], mask2=batch["mask2"])


def loss_sums(logits: jax.Array, batch: Mapping[str, jax.Array], task: str, num_classes: int) -> dict[str, jax.Array]:
    """Summed loss and metric counts over a batch (fp32 scalars).

    ``logits`` may cover a padded vocabulary; only the first ``num_classes`` entries count.
    """
    logits = logits[..., :num_classes].astype(jnp.float32)
    if task == "lm":
        targets, weights = batch["targets"], batch["weights"].astype(jnp.float32)
    else:
        targets, weights = batch["label"], batch["weights"].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    out = {
        "loss_sum": jnp.sum(ce * weights),
        "weight_sum": jnp.sum(weights),
        "correct_sum": jnp.sum(correct * weights),
    }
    if task == "lm":
        all_right, has_any = lm_rows(logits, batch)
        out["seq_correct_sum"] = jnp.sum((all_right & has_any).astype(jnp.float32))
        out["seq_count"] = jnp.sum(has_any.astype(jnp.float32))
    return out


def lm_rows(logits: jax.Array, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Per sequence ``(b,)`` bools: every weighted position right; any position weighted."""
    scored = batch["weights"] > 0
    correct = jnp.argmax(logits, axis=-1) == batch["targets"]
    return jnp.all(jnp.where(scored, correct, True), axis=-1), jnp.any(scored, axis=-1)


def finalize(sums: Mapping[str, Any], task: str) -> dict[str, float]:
    """Metrics from accumulated sums (host floats)."""
    sums = {k: float(np.asarray(v)) for k, v in sums.items()}
    w = max(sums["weight_sum"], 1e-9)
    loss = sums["loss_sum"] / w
    out = {"loss": loss, "accuracy": sums["correct_sum"] / w}
    if task == "lm":
        out["seq_accuracy"] = sums["seq_correct_sum"] / max(sums["seq_count"], 1e-9)
        out["perplexity"] = math.exp(min(loss, 80.0))
        out["bits_per_token"] = loss / math.log(2.0)
    return out


def metric_names(task: str, dataset: str) -> tuple[str, ...]:
    """The metrics an evaluation of ``task`` on ``dataset`` reports (:func:`finalize`, plus the
    trainer's ``bits_per_byte`` on the ``text`` dataset)."""
    names = ("loss", "accuracy") + (("seq_accuracy", "perplexity", "bits_per_token") if task == "lm" else ())
    return names + (("bits_per_byte",) if dataset == "text" else ())


# Batch keys holding token ids (checked against the vocabulary) and class labels, per task.
_ID_KEYS = {"lm": ("inputs", "targets"), "classification": ("inputs",), "retrieval": ("inputs1", "inputs2")}
_LABEL_KEYS = {"lm": (), "classification": ("label",), "retrieval": ("label",)}


def check_batch(batch: Mapping[str, np.ndarray], task: str, vocab_size: int, num_classes: int, where: str) -> None:
    """A host batch's ids must lie in ``[0, vocab_size)`` and labels in ``[0, num_classes)``: an
    id past the embedding table gives NaN (or, before that was refused, a clamped row) on device.

    ``where`` names the batch in the error (e.g. "train batch at step 3")."""
    for keys, n, what in ((_ID_KEYS[task], vocab_size, "token ids"), (_LABEL_KEYS[task], num_classes, "labels")):
        for k in keys:
            a = np.asarray(batch[k])
            bad = (a < 0) | (a >= n)
            if bad.any():
                values = sorted({int(v) for v in a[bad]})
                raise ValueError(f"{where}: `{k}` holds {what} outside [0, {n}) (the model's "
                                 f"{'vocab_size' if what == 'token ids' else 'num_classes'}): {values[:8]}"
                                 f"{' ...' if len(values) > 8 else ''} at {int(bad.sum())} positions; check the "
                                 "dataset's vocabulary against config.model")


def tokens_in(batch: Mapping[str, np.ndarray], task: str) -> int:
    """Input tokens in a (host) batch, for throughput."""
    if task == "retrieval":
        return int(batch["inputs1"].size + batch["inputs2"].size)
    return int(batch["inputs"].size)
