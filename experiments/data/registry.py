"""Datasets by name. The trainer looks up ``config.data.name`` here; data modules register.

A builder has the signature::

    builder(data_config, *, split, seed, global_batch_size, process_index, process_count)
        -> grain.IterDataset

(data modules make theirs with :func:`experiments.data.pipeline.generated_builder` or
:func:`~experiments.data.pipeline.source_builder`) and returns this process's share of the
batches of ``split`` ("train", "validation", "test"):
``global_batch_size // process_count`` examples per batch, disjoint across processes,
deterministic given ``seed``; its iterator's ``get_state()``/``set_state()`` resume exactly.
The train split repeats forever (a fresh shuffle per epoch); evaluation splits make one pass,
the last batch padded to full size with ``weights``/``mask`` zero so every batch has one shape.

Batches are dicts of NumPy arrays. Keys by ``task`` (the builder's ``TASK`` attribute):

* ``"lm"`` (language modeling and the synthetic tasks): ``inputs (b, l) int32``,
  ``targets (b, l) int32``, ``weights (b, l) float32`` (1 where the target counts), and
  optionally ``segment_ids (b, l) int32`` for packed sequences.
* ``"classification"``: ``inputs (b, l) int32``, ``mask (b, l) bool`` (True on real tokens),
  ``label (b,) int32``, ``weights (b,) float32``.
* ``"retrieval"`` (dual encoder): ``inputs1, inputs2 (b, l) int32``, ``mask1, mask2 (b, l) bool``,
  ``label (b,) int32``, ``weights (b,) float32``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["TASKS", "build", "get", "names", "register", "register_lazy"]

TASKS = ("lm", "classification", "retrieval")

_BUILDERS: dict[str, Callable[..., Any]] = {}
# name -> module that registers it when imported (filled by experiments/data/__init__.py), so
# get(name) works without the caller importing the data module first.
_LAZY: dict[str, str] = {}


def register(name: str, *, task: str, scored_positions: Callable[[Any, str], int] | None = None):
    """Decorator registering a dataset builder under ``name`` for ``task``.

    ``scored_positions(data_config, split)``: the most weighted positions a row of that split
    has (task "lm" with sparse targets), so the loss computes logits only there
    (:class:`experiments.tasks.LanguageModeling`); None: every position may be weighted.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    if scored_positions is not None and (task != "lm" or not callable(scored_positions)):
        raise ValueError(f"scored_positions must be a function (data_config, split) -> int of a task 'lm' dataset; "
                         f"got {scored_positions!r} for task {task!r}")

    def add(fn):
        if name in _BUILDERS and _BUILDERS[name] is not fn:
            raise ValueError(f"dataset {name!r} is already registered by {_BUILDERS[name].__module__}")
        fn.TASK = task
        fn.SCORED_POSITIONS = scored_positions
        _BUILDERS[name] = fn
        return fn

    return add


def register_lazy(name: str, module: str) -> None:
    """Declare that importing ``module`` registers dataset ``name`` (imported on first ``get``)."""
    _LAZY[name] = module


def names() -> list[str]:
    return sorted(set(_BUILDERS) | set(_LAZY))


def get(name: str) -> Callable[..., Any]:
    if name not in _BUILDERS and name in _LAZY:
        importlib.import_module(_LAZY[name])
        if name not in _BUILDERS:
            raise ValueError(f"module {_LAZY[name]!r} was expected to register dataset {name!r} but did not")
    try:
        return _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; registered: {names()}") from None


def build(data_config, *, split: str, seed: int, global_batch_size: int, process_index: int = 0, process_count: int = 1):
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} is not divisible by process_count={process_count}")
    return get(data_config.name)(
        data_config,
        split=split,
        seed=seed,
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
    )
