"""Turn "example i of a split" into this process's batches, as the registry contract asks.

Used by datasets that can produce any example from its index (the synthetic tasks, and any
source with random access). Example ``i`` of the global order goes to process ``i % process_count``,
so global batch ``k`` is examples ``[k * B, (k + 1) * B)`` whatever the number of processes: a run
on one host and on many sees the same data at every step.
"""

from __future__ import annotations

from typing import Any, Callable

import grain
import numpy as np

__all__ = ["batched", "example_rng"]

Example = dict[str, np.ndarray]

_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


def example_rng(seed: int, split: str, index: int, *extra: int) -> np.random.Generator:
    """The generator for one example: independent across (seed, split, index), no shared state."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"example_rng: split must be one of {tuple(_SPLIT_IDS)}; got {split!r}")
    return np.random.default_rng([seed, _SPLIT_IDS[split], index, *extra])


def _zero_weights(example: Example) -> Example:
    out = dict(example)
    out["weights"] = np.zeros_like(example["weights"])
    return out


def batched(
    make_example: Callable[[int], Example],
    *,
    num_examples: int | None,
    global_batch_size: int,
    process_index: int,
    process_count: int,
    prefetch: int = 2,
) -> grain.IterDataset:
    """This process's batches of ``make_example(0), make_example(1), ...``.

    ``num_examples=None`` is an endless stream (train). A finite split makes one pass; it is
    padded to whole global batches with copies of real examples whose ``weights`` are zero, so
    every process gets the same number of full batches (collectives in evaluation line up).
    """
    if global_batch_size % process_count:
        raise ValueError(
            f"batched: global_batch_size={global_batch_size} is not divisible by process_count={process_count}"
        )
    if num_examples is None:
        total = 2**62
        fn = make_example
    else:
        if num_examples <= 0:
            raise ValueError(f"batched: num_examples must be positive; got {num_examples}")
        total = -(-num_examples // global_batch_size) * global_batch_size

        def fn(i: int) -> Example:
            return make_example(i) if i < num_examples else _zero_weights(make_example(i % num_examples))

    ds = grain.MapDataset.range(total).map(fn)
    ds = ds[process_index::process_count].batch(global_batch_size // process_count, drop_remainder=True)
    # One reader thread: generation is cheap, and the CPU is shared with the training step.
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch))


def require_keys(where: str, config: Any, keys: tuple[str, ...]) -> None:
    """Raise naming the missing ``data.*`` keys a builder needs."""
    missing = [k for k in keys if k not in config]
    if missing:
        raise ValueError(f"{where}: data config is missing keys {missing}; it has {sorted(config.keys())}")
