"""Random token sequences in a task's batch format: data of the real shapes for speed benchmarks.

Not a benchmark of learning: labels are independent of the inputs. ``data.*`` keys: ``seq_len``,
``vocab_size``, ``num_classes`` (classification / retrieval) and ``eval_examples``. Every
position is real (``mask`` all True), as in LRA's padded-to-length worst case.

* ``random_classification`` -- ``inputs (l,)``, ``mask``, ``label``, ``weights``;
* ``random_retrieval`` -- two sequences per example (``inputs1``/``inputs2``, ``mask1``/``mask2``).
"""

from __future__ import annotations

import numpy as np

from experiments.data import registry
from experiments.data.pipeline import Example, example_rng, generated_builder, num_examples, require_keys

__all__ = ["random_example"]

_KEYS = ("seq_len", "vocab_size", "num_classes", "eval_examples")


def random_example(rng: np.random.Generator, *, seq_len: int, vocab_size: int, num_classes: int, pairs: bool) -> Example:
    if seq_len < 1 or vocab_size < 1 or num_classes < 1:
        raise ValueError(f"random tokens: seq_len, vocab_size and num_classes must be >= 1; got {seq_len}, "
                         f"{vocab_size}, {num_classes}")
    out: Example = {"label": np.int32(rng.integers(num_classes)), "weights": np.float32(1.0)}
    for suffix in ("1", "2") if pairs else ("",):
        out[f"inputs{suffix}"] = rng.integers(0, vocab_size, size=seq_len).astype(np.int32)
        out[f"mask{suffix}"] = np.ones(seq_len, bool)
    return out


def _build(pairs: bool):
    @generated_builder
    def build(data_config, split, seed):
        require_keys("random tokens", data_config, _KEYS)
        kw = dict(seq_len=int(data_config.seq_len), vocab_size=int(data_config.vocab_size),
                  num_classes=int(data_config.num_classes), pairs=pairs)
        return (lambda i: random_example(example_rng(seed, split, i), **kw)), num_examples(data_config, split)

    return build


registry.register("random_classification", task="classification")(_build(False))
registry.register("random_retrieval", task="retrieval")(_build(True))
