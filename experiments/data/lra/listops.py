"""LRA ListOps: the generator, its vocabulary, and the ``lra_listops`` TFDS builder.

The task (Nangia & Bowman 2018, as generated for LRA by Tay et al. 2021, App. A.1): a
bracketed prefix expression over digits with operators ``MAX``, ``MIN``, ``MED`` (median) and
``SM`` (sum modulo 10), e.g. ``[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]``; the label is its
value, one of 10 classes. The generator follows the published procedure
(``lra_benchmarks/data/listops.py``): below depth ``max_depth`` a node is an operator with
probability 0.25 (else a digit), an operator takes 2..``max_args`` arguments, all choices
uniform; a tree is kept when its token count (digits, operators and closing brackets) lies
strictly between ``min_length`` and ``max_length``; duplicates are dropped; the pool of
96,000 + 2,000 + 2,000 trees is split train/validation/test in generation order. Trees are drawn
in blocks of 1,000, each from its own seeded stream, in parallel over the CPU cores (the pool does
not depend on how many).

Release files are TSVs with a ``Source\\tTarget`` header; ``Source`` wraps the expression in
binary parentheses, ``( ( ( [MAX 2 ) 9 ) ] )`` for ``[MAX 2 9 ]``. The published tokenizer
(``listops/input_pipeline.py`` after the bracket fix) drops the parentheses and splits on
whitespace. Our vocabulary is that token set with fixed ids: 0 pad, 1..10 the digits,
11..14 ``[MIN [MAX [MED [SM``, 15 ``]`` (16 ids; LRA's own encoder numbered the same 15 tokens
in set-iteration order).
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import multiprocessing
import os
import random
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from experiments.data.lra import _release

__all__ = [
    "LraListops",
    "ListOpsConfig",
    "OPERATORS",
    "VOCAB",
    "VOCAB_SIZE",
    "detokenize",
    "evaluate",
    "generate",
    "generate_tree",
    "to_source",
    "tokenize",
]

MIN, MAX, MED, SUM_MOD, END = "[MIN", "[MAX", "[MED", "[SM", "]"
OPERATORS = (MIN, MAX, MED, SUM_MOD)
PAD_ID = 0
VOCAB = ("<pad>", *(str(d) for d in range(10)), MIN, MAX, MED, SUM_MOD, END)
VOCAB_SIZE = len(VOCAB)
_TOKEN_ID = {t: i for i, t in enumerate(VOCAB)}
_VALUE_P = 0.25  # probability that a node above max_depth is an operator

SPLITS = {"train": "basic_train.tsv", "validation": "basic_val.tsv", "test": "basic_test.tsv"}
RELEASE_SUBDIR = "listops-1000"

# A tree is an int (a digit) or (operator, (child, ...)).
Tree = int | tuple[str, tuple["Tree", ...]]


def generate_tree(
    rng: random.Random, *, depth: int = 1, max_depth: int = 10, max_args: int = 10, budget: int | None = None
) -> tuple[Tree | None, int]:
    """One random tree by the published recursion; returns ``(tree, token_count)``.

    With ``budget``, generation stops as soon as the count exceeds it and returns
    ``(None, count)``: such a tree would be rejected anyway, so the accepted trees keep the
    published distribution while the (rare, huge) rejected ones cost nothing.
    """
    if depth < max_depth and rng.random() <= _VALUE_P:
        n_args = rng.randint(2, max_args)
        children, length = [], 2  # the operator token and the closing bracket
        for _ in range(n_args):
            left = None if budget is None else budget - length
            child, child_len = generate_tree(rng, depth=depth + 1, max_depth=max_depth, max_args=max_args, budget=left)
            length += child_len
            if child is None or (budget is not None and length > budget):
                return None, length
            children.append(child)
        return (rng.choice(OPERATORS), tuple(children)), length
    return rng.randrange(10), 1


def evaluate(tree: Tree) -> int:
    """The value of ``tree`` (MED of an even count: the mean of the middle two, rounded down)."""
    if isinstance(tree, int):
        return tree
    op, children = tree
    values = [evaluate(c) for c in children]
    if op == MIN:
        return min(values)
    if op == MAX:
        return max(values)
    if op == MED:
        return int(np.median(values))
    return sum(values) % 10


def to_source(tree: Tree) -> str:
    """The release's ``Source`` string: the expression in the published binary parenthesization."""
    if isinstance(tree, int):
        return str(tree)
    op, children = tree
    s = f"( {op} {to_source(children[0])} )"
    for child in children[1:]:
        s = f"( {s} {to_source(child)} )"
    return f"( {s} {END} )"


def tokenize(source: str) -> np.ndarray:
    """A ``Source`` string -> token ids ``(n,) uint8`` (parentheses dropped, published vocabulary)."""
    ids = []
    for tok in source.split():
        if tok in ("(", ")"):
            continue
        try:
            ids.append(_TOKEN_ID[tok])
        except KeyError:
            raise ValueError(f"listops.tokenize: token {tok!r} is not in the ListOps vocabulary {VOCAB[1:]}") from None
    return np.asarray(ids, np.uint8)


def detokenize(ids: Sequence[int]) -> str:
    return " ".join(VOCAB[int(i)] for i in ids if int(i) != PAD_ID)


# Trees are drawn in blocks of this many accepted trees, block k from its own stream
# ("listops:<seed>:<k>"), so blocks can be drawn in parallel and the pool does not depend on how.
BLOCK = 1000


def _draw_block(seed: int, k: int, count: int, max_depth: int, max_args: int, min_length: int,
                max_length: int) -> list[Tree]:
    rng = random.Random(f"listops:{seed}:{k}")  # Python's generator, as published: ~10x faster per draw than NumPy's
    out = []
    while len(out) < count:
        tree, length = generate_tree(rng, max_depth=max_depth, max_args=max_args, budget=max_length)
        if tree is not None and min_length < length < max_length:
            out.append(tree)
    return out


def generate(
    num_examples: int, *, seed: int, max_depth: int = 10, max_args: int = 10, min_length: int = 500,
    max_length: int = 2000, workers: int = 1,
) -> list[tuple[Tree, int]]:
    """``num_examples`` distinct trees whose token count is in ``(min_length, max_length)``, with labels.

    Drawn in blocks of :data:`BLOCK` trees (block ``k`` from the stream ``listops:<seed>:<k>``),
    concatenated in block order and deduplicated keeping first occurrences (the published
    generator deduplicates with an unordered ``set``); more blocks are drawn while duplicates
    leave the pool short. ``workers > 1`` draws the blocks in that many processes: the same pool.
    """
    sizes = dict(max_depth=max_depth, max_args=max_args, min_length=min_length, max_length=max_length)
    pool: dict[str, Tree] = {}  # insertion-ordered dedup: deterministic
    k = 0
    while len(pool) < num_examples:
        missing = num_examples - len(pool)
        counts = [min(BLOCK, missing - i * BLOCK) for i in range(-(-missing // BLOCK))]
        jobs = [(seed, k + i, n) for i, n in enumerate(counts)]
        k += len(jobs)
        if workers > 1 and len(jobs) > 1:
            # spawn: the caller may hold threads (JAX, TFDS) that a forked child would inherit.
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as ex:
                blocks = list(ex.map(_draw_block_job, [(*j, sizes) for j in jobs]))
        else:
            blocks = [_draw_block(*j, **sizes) for j in jobs]
        for block in blocks:
            for tree in block:
                pool.setdefault(to_source(tree), tree)
    trees = list(pool.values())[:num_examples]
    return [(tree, evaluate(tree)) for tree in trees]


def _draw_block_job(job) -> list[Tree]:
    seed, k, count, sizes = job
    return _draw_block(seed, k, count, **sizes)


def read_release_tsv(path) -> Iterator[tuple[str, int]]:
    """``(Source, Target)`` rows of a release TSV."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if reader.fieldnames is None or not {"Source", "Target"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a header with columns Source and Target; got {reader.fieldnames}")
        for row in reader:
            yield row["Source"], int(row["Target"])


def write_release_tsv(path, rows: Sequence[tuple[str, int]]) -> None:
    """Write ``(Source, Target)`` rows in the release's format (used to export generated data)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["Source", "Target"])
        writer.writerows(rows)


@dataclasses.dataclass(eq=False)
class ListOpsConfig(tfds.core.BuilderConfig):
    """``generated=False``: read the release TSVs; else run :func:`generate` with these settings."""

    generated: bool = False
    num_train: int = 96_000
    num_validation: int = 2_000
    num_test: int = 2_000
    seed: int = 0
    max_depth: int = 10
    max_args: int = 10
    min_length: int = 500
    max_length: int = 2000


class LraListops(_release.ArrayRecordBuilder):
    """LRA ListOps: ``inputs (n,) uint8`` token ids (:data:`VOCAB`), ``label`` in 0..9."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Generated trees drawn from one stream.",
        "1.1.0": "Generated trees drawn in blocks of 1,000 from per-block streams, in parallel (other draws than 1.0.0).",
    }

    BUILDER_CONFIGS = [
        ListOpsConfig(name="release", description="basic_{train,val,test}.tsv of lra_release/listops-1000"),
        ListOpsConfig(name="generated", generated=True, description="our generator, published settings, seed 0"),
    ]

    def _info(self):
        return _release.info(
            self,
            {
                "inputs": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10),
            },
            "ListOps from the Long Range Arena: evaluate a nested MAX/MIN/MED/SM expression.",
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        if c.generated:
            sizes = {"train": c.num_train, "validation": c.num_validation, "test": c.num_test}
            pool = generate(
                sum(sizes.values()),
                seed=c.seed,
                max_depth=c.max_depth,
                max_args=c.max_args,
                min_length=c.min_length,
                max_length=c.max_length,
                workers=os.cpu_count() or 1,
            )
            rows, start = {}, 0
            for split, n in sizes.items():
                rows[split] = [(to_source(t), y) for t, y in pool[start : start + n]]
                start += n
            return {split: self._generate_examples(r) for split, r in rows.items()}
        folder = _release.find_release_dir(
            _release.manual_root(dl_manager), RELEASE_SUBDIR, list(SPLITS.values()), dataset="lra_listops"
        )
        return {split: self._generate_examples(read_release_tsv(folder / f)) for split, f in SPLITS.items()}

    def _generate_examples(self, rows):
        for i, (source, target) in enumerate(rows):
            yield i, {"inputs": tokenize(source), "label": target, "index": i}
