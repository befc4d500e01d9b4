"""Turn "example i of a split" into this process's batches, as the registry contract asks.

Used by datasets that can produce any example from its index (the synthetic tasks, and any
source with random access). Example ``i`` of the global order goes to process ``i % process_count``,
so global batch ``k`` is examples ``[k * B, (k + 1) * B)`` whatever the number of processes: a run
on one host and on many sees the same data at every step.

Two entry points:

* :func:`batched` -- examples *generated* from their index (synthetic tasks); with
  :class:`blockwise`, generated a block of consecutive indices at a time (vectorized NumPy, one
  generator per block), for tasks whose per-example Python would be slower than the training step;
* :func:`source_batches` -- examples *read* from a random-access source (a ``tfds.data_source``
  split, a list, :class:`experiments.data.text.PackedTokens`): the train split is
  ``MapDataset.shuffle().repeat()``, a fresh permutation each epoch that is a function of
  ``seed`` and the epoch only; evaluation splits make one pass padded with a ``pad_example``.

Both deal the global index stream round-robin to processes (no example is read twice), and both
iterators checkpoint as "the next global index": ``get_state()``/``set_state()`` resume mid-epoch
exactly, whatever the number of reader threads.

A dataset module registers a builder made by :func:`generated_builder` or :func:`source_builder`:
it says what its examples are, and the factory hands the registry's batching arguments (split,
seed, global batch size, this process's index and count) to :func:`batched` /
:func:`source_batches`.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any, Callable

import grain
import numpy as np

__all__ = [
    "batched",
    "blockwise",
    "cfg_get",
    "default_threads",
    "example_rng",
    "generated_builder",
    "num_examples",
    "pad_or_truncate",
    "source_batches",
    "source_builder",
]

Example = dict[str, np.ndarray]

_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


def example_rng(seed: int, split: str, index: int, *extra: int) -> np.random.Generator:
    """The generator for one example: independent across (seed, split, index), no shared state."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"example_rng: split must be one of {tuple(_SPLIT_IDS)}; got {split!r}")
    return np.random.default_rng([seed, _SPLIT_IDS[split], index, *extra])


class blockwise:
    """Examples made ``block_size`` at a time: example ``i`` is row ``i % block_size`` of
    ``make_block(i // block_size)``.

    ``make_block(k)`` returns examples ``[k * block_size, (k + 1) * block_size)`` as arrays with a
    leading ``block_size`` axis, drawn from its own generator (``example_rng(seed, split, k)``), so
    the data stay a function of (seed, split, index) alone, whatever the batch size or the number
    of processes (each process builds the blocks it reads from and keeps its own rows).
    :func:`batched` gathers a whole batch's rows at once (:meth:`rows`). The blocks last built
    are cached: readers walk the indices in order.
    """

    def __init__(self, make_block: Callable[[int], Example], block_size: int):
        if block_size < 1:
            raise ValueError(f"blockwise: block_size must be >= 1; got {block_size}")
        self.make_block = make_block
        self.block_size = int(block_size)
        self._lock = threading.Lock()  # guards the cache only, not a block's drawing
        self._cache: dict[int, _Pending] = {}

    def _block(self, k: int) -> Example:
        # Reader threads draw different blocks at once (NumPy releases the GIL in its kernels);
        # a thread that needs a block another is drawing waits for that one draw.
        with self._lock:
            entry = self._cache.get(k)
            mine = entry is None
            if mine:
                entry = self._cache[k] = _Pending()
                while len(self._cache) > _BLOCK_CACHE:
                    self._cache.pop(next(iter(self._cache)))  # the oldest; a waiter keeps its entry
        if mine:
            try:
                entry.value = self.make_block(k)
            except BaseException as e:
                entry.error = e
                with self._lock:
                    if self._cache.get(k) is entry:
                        del self._cache[k]
                raise
            finally:
                entry.done.set()
        entry.done.wait()
        if entry.error is not None:
            raise entry.error
        return entry.value

    def rows(self, indices: np.ndarray) -> Example:
        """Examples ``indices`` (increasing), stacked: arrays ``(len(indices), ...)``."""
        blocks, rows = np.divmod(np.asarray(indices, np.int64), self.block_size)
        parts = [{name: v[rows[blocks == k]] for name, v in self._block(int(k)).items()} for k in np.unique(blocks)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


# Blocks kept: enough for every reader thread's batch and the ones prefetched behind it.
_BLOCK_CACHE = 16


class _Pending:
    """A block being drawn by one thread, or drawn: ``done`` is set once ``value`` (or ``error``) is."""

    def __init__(self):
        self.done = threading.Event()
        self.value: Example | None = None
        self.error: BaseException | None = None


def default_threads() -> int:
    """Reader threads for generated data when ``data.num_threads`` is 0 (auto): one per four CPU
    cores, 1 to 4 -- one on a laptop or CI box, where the CPU also runs the training step; four on
    an accelerator host, where one thread could not draw MQAR's batches as fast as an H200 trains."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


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
    num_threads: int = 1,
) -> grain.IterDataset:
    """This process's batches of ``make_example(0), make_example(1), ...``.

    A :class:`blockwise` ``make_example`` is read a batch at a time (its rows gathered from
    whole blocks), any other callable an example at a time; both give the same batches.

    ``num_examples=None`` is an endless stream (train). A finite split makes one pass; it is
    padded to whole global batches with copies of real examples whose ``weights`` are zero, so
    every process gets the same number of full batches (collectives in evaluation line up).
    ``num_threads`` grain reader threads make batches ahead, in order (the batches do not depend
    on it).
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"batched: num_threads must be an int >= 1; got {num_threads!r}")
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

    per_process = global_batch_size // process_count
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(prefetch, num_threads))
    if isinstance(make_example, blockwise):
        # A batch at a time: this process's rows of global batch k, gathered from whole blocks.
        def batch(k: int) -> Example:
            idx = k * global_batch_size + process_index + process_count * np.arange(per_process)
            if num_examples is None or idx[-1] < num_examples:
                return make_example.rows(idx)
            real = idx < num_examples
            order = np.argsort(idx % num_examples, kind="stable")  # rows() wants increasing indices
            got = make_example.rows((idx % num_examples)[order])
            out = {name: np.empty_like(v) for name, v in got.items()}
            for name, v in got.items():
                out[name][order] = v
            out["weights"] = out["weights"] * real.reshape((-1,) + (1,) * (out["weights"].ndim - 1))
            return out

        return grain.MapDataset.range(total // global_batch_size).map(batch).to_iter_dataset(options)
    ds = grain.MapDataset.range(total).map(fn)
    ds = ds[process_index::process_count].batch(per_process, drop_remainder=True)
    return ds.to_iter_dataset(options)


def generated_builder(examples: Callable) -> Callable:
    """A registry builder (``experiments.data.registry``) of examples generated from their index:
    ``examples(data_config, split, seed) -> (make_example, num_examples)``, as :func:`batched`
    takes them."""

    @functools.wraps(examples)
    def build(data_config, *, split, seed, global_batch_size, process_index, process_count):
        if split not in _SPLIT_IDS:
            raise ValueError(f"{examples.__name__}: split must be one of {tuple(_SPLIT_IDS)}; got {split!r}")
        make_example, count = examples(data_config, split, seed)
        # One example now: the generator's own checks (lengths, sizes) fail when the dataset is
        # built (at setup), not at its first batch (after training, for an evaluation).
        make_example.rows(np.arange(1)) if isinstance(make_example, blockwise) else make_example(0)
        threads = cfg_get(data_config, "num_threads", 0)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ValueError(f"data.num_threads must be an int >= 0 (0: auto, {default_threads()} here); got {threads!r}")
        return batched(make_example, num_examples=count, global_batch_size=global_batch_size,
                       process_index=process_index, process_count=process_count,
                       num_threads=threads or default_threads())

    return build


def source_builder(records: Callable) -> Callable:
    """A registry builder (``experiments.data.registry``) of examples read from a random-access
    source: ``records(data_config, split) -> (source, transform, pad_example, num_threads)``, as
    :func:`source_batches` takes them."""

    @functools.wraps(records)
    def build(data_config, *, split, seed, global_batch_size, process_index, process_count):
        source, transform, pad_example, num_threads = records(data_config, split)
        return source_batches(source, transform=transform, pad_example=pad_example, split=split, seed=seed,
                              global_batch_size=global_batch_size, process_index=process_index,
                              process_count=process_count, num_threads=num_threads)

    return build


def num_examples(data_config, split: str) -> int | None:
    """How many examples a generated split has: endless (None) for "train", ``data.eval_examples``
    for the evaluation splits."""
    return None if split == "train" else int(data_config.eval_examples)


def require_keys(where: str, config: Any, keys: tuple[str, ...]) -> None:
    """Raise naming the missing ``data.*`` keys a builder needs."""
    missing = [k for k in keys if k not in config]
    if missing:
        raise ValueError(f"{where}: data config is missing keys {missing}; it has {sorted(config.keys())}")


def cfg_get(config: Any, key: str, default: Any = None) -> Any:
    """``config.key`` for a ConfigDict or dict; ``default`` when absent."""
    getter = getattr(config, "get", None)
    if callable(getter):
        return getter(key, default)
    return getattr(config, key, default)


def pad_or_truncate(tokens: np.ndarray, length: int, *, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``tokens (n,)`` -> ``ids (length,) int32``, ``mask (length,) bool``; keeps the first ``length``."""
    tokens = np.asarray(tokens)
    n = min(tokens.shape[0], length)
    ids = np.full((length,), pad_id, np.int32)
    ids[:n] = tokens[:n]
    mask = np.zeros((length,), bool)
    mask[:n] = True
    return ids, mask


_PAD = "<pad example>"  # not None: grain treats None elements as filtered out


class _PaddedSource:
    """``source`` followed by ``_PAD`` markers up to ``length`` items (the evaluation padding)."""

    def __init__(self, source, length: int):
        self._source = source
        self._n = len(source)
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int):
        return self._source[index] if index < self._n else _PAD


def source_batches(
    source,
    *,
    transform: Callable[[Any], Example],
    pad_example: Example,
    split: str,
    seed: int,
    global_batch_size: int,
    process_index: int,
    process_count: int,
    num_threads: int = 4,
    prefetch: int = 8,
) -> grain.IterDataset:
    """This process's batches of the records of ``source`` (see the module docstring).

    ``transform(record)`` makes one fixed-shape example (a dict of NumPy arrays with ``weights``);
    ``pad_example`` has the same structure with ``weights`` zero and fills the last evaluation
    batch. ``split == "train"`` repeats forever with a new shuffle each epoch.
    """
    if split not in _SPLIT_IDS:
        raise ValueError(f"source_batches: split must be one of {tuple(_SPLIT_IDS)}; got {split!r}")
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"source_batches: global_batch_size={global_batch_size} must be a positive multiple of "
            f"process_count={process_count}"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"source_batches: process_index={process_index} must be in [0, {process_count})")
    n = len(source)
    if n == 0:
        raise ValueError(f"source_batches: the {split!r} split has no examples")
    if split == "train":
        ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None).map(transform)
    else:
        pad = {k: np.asarray(v) for k, v in pad_example.items()}
        if float(np.sum(pad["weights"])) != 0.0:
            raise ValueError("source_batches: pad_example must have all-zero weights")

        def transform_or_pad(record):
            return {k: v.copy() for k, v in pad.items()} if isinstance(record, str) and record == _PAD else transform(record)

        total = -(-n // global_batch_size) * global_batch_size
        ds = grain.MapDataset.source(_PaddedSource(source, total)).map(transform_or_pad)
    ds = ds[process_index::process_count].batch(global_batch_size // process_count, drop_remainder=True)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
