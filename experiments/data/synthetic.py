"""Synthetic capability tasks, generated on the fly from (seed, split, index): no download.

All three are task ``"lm"``: ``inputs``, ``targets``, ``weights`` of shape ``(l,)`` per example
(batched to ``(b, l)``); ``targets[t]`` is what a causal model should output after reading
``inputs[: t + 1]``, and ``weights`` is 1 exactly at the positions the task scores. Each
registers how many positions a row scores at most (``scored_positions``), so the loss runs the LM
head only there (:class:`experiments.tasks.LanguageModeling`).

* ``selective_copying`` (Mamba paper, Sec. 4.1.1 / App. E.1): ``num_tokens`` data tokens at random
  positions among noise, then ``num_tokens`` marker tokens; at the i-th marker the model must
  output the i-th data token. Vocabulary: 0 = noise, ``vocab_size - 1`` = marker, data tokens
  ``1 .. vocab_size - 2``. Paper: ``seq_len`` 4096 (total), ``vocab_size`` 16, 16 tokens.
* ``induction_heads`` (Mamba paper, Sec. 4.1.2): random tokens with one trigger token followed by
  an answer token somewhere; the last input is the trigger again and the model must output the
  answer. Vocabulary: trigger = ``vocab_size - 1``, all other tokens ``0 .. vocab_size - 2``.
  Paper: vocab 16, trained at length 256, tested at lengths up to 2^20.
* ``mqar`` (Zoology, Arora et al. 2023, multi-query associative recall; ``multiquery_ar.py``):
  ``n`` key-value pairs, then the keys queried again in random order at power-law-distributed
  gaps among random tokens; at every query key the model must output its value. Keys
  ``1 .. V/2 - 1``, values ``V/2 .. V - 1``. Each split draws its (length, pairs) setting per
  example from ``train_settings`` (weighted by ``train_weights``, e.g. Zoology's example counts)
  / ``eval_settings`` and pads (weights 0) to the longest length among them.
"""

from __future__ import annotations

import numpy as np

from experiments.data import registry
from experiments.data.pipeline import Example, blockwise, example_rng, generated_builder, num_examples, require_keys

__all__ = ["induction_heads_example", "mqar_example", "mqar_examples", "selective_copying_example"]


# ----------------------------------------------------------------------------------------------
# Selective copying
# ----------------------------------------------------------------------------------------------


def selective_copying_example(rng: np.random.Generator, *, seq_len: int, vocab_size: int, num_tokens: int) -> Example:
    if vocab_size < 3:
        raise ValueError(f"selective_copying: vocab_size must be >= 3 (noise, marker, data); got {vocab_size}")
    region = seq_len - num_tokens  # where the data tokens hide among noise
    if num_tokens < 1 or region < num_tokens:
        raise ValueError(
            f"selective_copying: need 1 <= num_tokens <= seq_len / 2; got num_tokens={num_tokens}, seq_len={seq_len}"
        )
    marker = vocab_size - 1
    tokens = rng.integers(1, marker, size=num_tokens)
    positions = np.sort(rng.choice(region, size=num_tokens, replace=False))
    inputs = np.zeros(seq_len, np.int32)
    inputs[positions] = tokens
    inputs[region:] = marker
    targets = np.zeros(seq_len, np.int32)
    targets[region:] = tokens
    weights = np.zeros(seq_len, np.float32)
    weights[region:] = 1.0
    return {"inputs": inputs, "targets": targets, "weights": weights}


# Scored: the num_tokens markers at the end of every row.
@registry.register("selective_copying", task="lm", scored_positions=lambda c, split: int(c.num_tokens))
@generated_builder
def selective_copying(data_config, split, seed):
    require_keys("selective_copying", data_config, ("seq_len", "vocab_size", "num_tokens", "eval_examples"))
    kw = dict(seq_len=int(data_config.seq_len), vocab_size=int(data_config.vocab_size), num_tokens=int(data_config.num_tokens))
    return (lambda i: selective_copying_example(example_rng(seed, split, i), **kw)), num_examples(data_config, split)


# ----------------------------------------------------------------------------------------------
# Induction heads
# ----------------------------------------------------------------------------------------------


def induction_heads_example(rng: np.random.Generator, *, seq_len: int, vocab_size: int) -> Example:
    if vocab_size < 3 or seq_len < 4:
        raise ValueError(f"induction_heads: need vocab_size >= 3 and seq_len >= 4; got {vocab_size}, {seq_len}")
    trigger = vocab_size - 1
    inputs = rng.integers(0, trigger, size=seq_len).astype(np.int32)
    p = rng.integers(0, seq_len - 2)  # trigger at p, answer at p + 1 <= seq_len - 2
    answer = rng.integers(0, trigger)
    inputs[p] = trigger
    inputs[p + 1] = answer
    inputs[-1] = trigger
    targets = np.zeros(seq_len, np.int32)
    targets[-1] = answer
    weights = np.zeros(seq_len, np.float32)
    weights[-1] = 1.0
    return {"inputs": inputs, "targets": targets, "weights": weights}


# Scored: the last token of every row.
@registry.register("induction_heads", task="lm", scored_positions=lambda c, split: 1)
@generated_builder
def induction_heads(data_config, split, seed):
    require_keys("induction_heads", data_config, ("seq_len", "vocab_size", "eval_examples"))
    kw = dict(seq_len=int(data_config.seq_len), vocab_size=int(data_config.vocab_size))
    return (lambda i: induction_heads_example(example_rng(seed, split, i), **kw)), num_examples(data_config, split)


# ----------------------------------------------------------------------------------------------
# Multi-query associative recall (Zoology)
# ----------------------------------------------------------------------------------------------


def _distinct(rng: np.random.Generator, low: int, high: int, shape: tuple[int, int]) -> np.ndarray:
    """``(m, n)`` integers from ``[low, high)``, distinct within each row, each row a uniform draw
    without replacement in random order."""
    m, n = shape
    pool = high - low
    # Redrawing rows with a repeat pays only while most rows have none: a row of n draws holds
    # n (n - 1) / (2 pool) repeated pairs on average, and is repeat-free with probability about
    # exp(-that). Past one pair per row (n = 256 of 4095 keys: 8 pairs, 1 row in 3000 clean) the
    # redraw loop ran thousands of times; there each row takes the n smallest of pool uniform keys.
    if 4 * n > pool or n * (n - 1) > 2 * pool:
        keys = rng.random((m, pool))
        first = np.argpartition(keys, n - 1, axis=1)[:, :n]  # the n smallest, unordered
        order = np.argsort(np.take_along_axis(keys, first, axis=1), axis=1)
        return low + np.take_along_axis(first, order, axis=1)  # = argsort(keys)[:, :n]
    out = rng.integers(low, high, size=shape)
    while True:  # redraw the rows with a repeat (at most one pair per row on average: few rounds)
        s = np.sort(out, axis=1)
        bad = np.flatnonzero(np.any(s[:, 1:] == s[:, :-1], axis=1))
        if bad.size == 0:
            return out
        out[bad] = rng.integers(low, high, size=(bad.size, n))


def mqar_examples(
    rng: np.random.Generator,
    *,
    count: int,
    seq_len: int,
    num_pairs: int,
    vocab_size: int,
    power_a: float = 0.01,
    random_non_queries: bool = True,
    pad_to: int | None = None,
) -> Example:
    """``count`` MQAR sequences as Zoology's ``multiquery_ar`` draws them, arrays ``(count, l)``.

    ``num_pairs`` distinct keys (from ``[1, V/2)``) with distinct values (from ``[V/2, V)``) fill
    the first ``2 * num_pairs`` positions as ``k v k v ...``. In the rest, key ``i`` is queried at
    ``2 * num_pairs + 2 * g_i``, the gaps ``g`` drawn without replacement with probability
    proportional to ``g^(a - 1)`` (``a = power_a``, so near gaps dominate; drawn as the top
    ``num_pairs`` of ``log p + Gumbel noise``, which is the same distribution as drawing one gap
    at a time); the target at a query is its value, and only queries are scored. Values never
    appear after their query. ``random_non_queries`` fills every other query-region position with
    a token uniform over the vocabulary (Zoology's default), else 0. Vectorized over ``count``:
    Zoology's per-example draw, in NumPy, is slower than a GPU training step.
    """
    context = 2 * num_pairs
    space = (seq_len - context) // 2  # query slots
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"mqar: `count` must be an int >= 0 (how many sequences); got {count!r}")
    if num_pairs < 1 or vocab_size // 2 - 1 < num_pairs or space < num_pairs:
        raise ValueError(
            f"mqar: (seq_len={seq_len}, num_pairs={num_pairs}, vocab_size={vocab_size}) leaves no room: "
            f"need 1 <= num_pairs <= vocab_size/2 - 1 and num_pairs <= (seq_len - 2*num_pairs)/2"
        )
    pad = (pad_to or seq_len) - seq_len
    if pad < 0:
        raise ValueError(f"mqar: pad_to={pad_to} is shorter than seq_len={seq_len}")
    half = vocab_size // 2
    keys = _distinct(rng, 1, half, (count, num_pairs))
    values = _distinct(rng, half, vocab_size, (count, num_pairs))
    log_p = (power_a - 1) * np.log(np.arange(1, space + 1, dtype=np.float64))
    scores = log_p + rng.gumbel(size=(count, space))
    gaps = np.argpartition(-scores, num_pairs - 1, axis=1)[:, :num_pairs] if num_pairs < space else \
        np.argsort(-scores, axis=1)
    query = context + 2 * gaps
    rows = np.arange(count)[:, None]
    inputs = np.zeros((count, seq_len + pad), np.int32)
    if random_non_queries:
        inputs[:, context:seq_len] = rng.integers(0, vocab_size, size=(count, seq_len - context))
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    inputs[rows, query] = keys
    targets = np.zeros_like(inputs)
    targets[rows, query] = values
    weights = np.zeros(inputs.shape, np.float32)
    weights[rows, query] = 1.0
    return {"inputs": inputs, "targets": targets, "weights": weights}


def mqar_example(rng: np.random.Generator, **kwargs) -> Example:
    """One MQAR sequence (:func:`mqar_examples` with ``count=1``), arrays ``(l,)``."""
    return {k: v[0] for k, v in mqar_examples(rng, count=1, **kwargs).items()}


# Examples drawn together (one generator per block of this many consecutive indices).
MQAR_BLOCK = 512


def _settings(value, name: str) -> list[tuple[int, int]]:
    out = [(int(l), int(n)) for l, n in value]
    if not out:
        raise ValueError(f"mqar: data.{name} must list (seq_len, num_pairs) settings; got {value!r}")
    return out


def _mix(weights, settings) -> np.ndarray | None:
    """Probabilities of the train settings from ``data.train_weights`` (None: uniform)."""
    if weights is None:
        return None
    w = np.asarray(weights, np.float64)
    if w.shape != (len(settings),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(
            f"mqar: data.train_weights must give one non-negative weight per train setting ({len(settings)}), "
            f"not all zero; got {weights!r}"
        )
    return w / w.sum()


def _mqar_scored(data_config, split: str) -> int:
    """The most queries of a row of ``split``: the largest num_pairs among its settings."""
    name = "train_settings" if split == "train" else "eval_settings"
    return max(n for _, n in _settings(data_config[name], name))


@registry.register("mqar", task="lm", scored_positions=_mqar_scored)
@generated_builder
def mqar(data_config, split, seed):
    require_keys("mqar", data_config, ("vocab_size", "train_settings", "eval_settings", "eval_examples", "power_a"))
    name = "train_settings" if split == "train" else "eval_settings"
    settings = _settings(data_config[name], name)
    mix = _mix(data_config.get("train_weights") if split == "train" else None, settings)
    pad_to = max(l for l, _ in settings)
    vocab_size, power_a = int(data_config.vocab_size), float(data_config.power_a)
    random_non_queries = bool(data_config.get("random_non_queries", True))

    def make_block(k: int) -> Example:
        rng = example_rng(seed, split, k)
        which = rng.choice(len(settings), size=MQAR_BLOCK, p=mix)
        block = {key: np.zeros((MQAR_BLOCK, pad_to), dtype) for key, dtype in
                 (("inputs", np.int32), ("targets", np.int32), ("weights", np.float32))}
        for j, (seq_len, num_pairs) in enumerate(settings):
            rows = np.flatnonzero(which == j)
            if rows.size:
                part = mqar_examples(rng, count=rows.size, seq_len=seq_len, num_pairs=num_pairs, vocab_size=vocab_size,
                                     power_a=power_a, random_non_queries=random_non_queries, pad_to=pad_to)
                for key in block:
                    block[key][rows] = part[key]
        return block

    return blockwise(make_block, MQAR_BLOCK), num_examples(data_config, split)
