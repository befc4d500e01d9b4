"""source_batches: deterministic epochs, exact mid-epoch resume, disjoint per-process shards."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.data.pipeline import source_batches

N = 23


def transform(i):
    return {"x": np.int64(i), "weights": np.float32(1.0)}


PAD = {"x": np.int64(-1), "weights": np.float32(0.0)}


def batches(split="train", seed=0, gbs=4, pi=0, pc=1, n=N):
    return source_batches(
        list(range(n)), transform=transform, pad_example=PAD, split=split, seed=seed,
        global_batch_size=gbs, process_index=pi, process_count=pc, num_threads=2,
    )


def take(ds, k, state=None):
    it = iter(ds)
    if state is not None:
        it.set_state(state)
    return [next(it)["x"].tolist() for _ in range(k)], it


def test_train_epochs_are_permutations_reshuffled():
    stream = sum(take(batches(gbs=1), 3 * N)[0], [])
    epochs = [stream[e * N : (e + 1) * N] for e in range(3)]
    for ep in epochs:
        assert sorted(ep) == list(range(N))
    assert epochs[0] != epochs[1] != epochs[2]


def test_deterministic_per_seed():
    a, _ = take(batches(seed=1), 10)
    b, _ = take(batches(seed=1), 10)
    c, _ = take(batches(seed=2), 10)
    assert a == b and a != c


def test_resume_mid_epoch():
    full, _ = take(batches(seed=3), 12)
    first, it = take(batches(seed=3), 4)
    state = it.get_state()
    rest, _ = take(batches(seed=3), 8, state=state)  # a fresh pipeline, restored
    assert first + rest == full


@pytest.mark.parametrize("pc", [2, 4])
def test_shards_partition_the_global_batches(pc):
    glob_batches, _ = take(batches(seed=4, gbs=8), 6)
    local = [take(batches(seed=4, gbs=8, pi=p, pc=pc), 6)[0] for p in range(pc)]
    for k in range(6):
        parts = [local[p][k] for p in range(pc)]
        assert all(len(x) == 8 // pc for x in parts)
        merged = sorted(sum(parts, []))
        assert merged == sorted(glob_batches[k])  # the same global batch, split without overlap


@pytest.mark.parametrize("pc", [1, 2])
def test_eval_one_padded_pass(pc):
    got, weights = [], []
    counts = []
    for p in range(pc):
        it = iter(batches(split="validation", gbs=6, pi=p, pc=pc))
        bs = list(it)
        counts.append(len(bs))
        for b in bs:
            assert b["x"].shape == (6 // pc,)
            got += b["x"].tolist()
            weights += b["weights"].tolist()
    assert len(set(counts)) == 1  # every process runs the same number of batches
    real = [x for x, w in zip(got, weights) if w > 0]
    assert sorted(real) == list(range(N))
    assert all(x == -1 for x, w in zip(got, weights) if w == 0)
    assert len(got) == 24  # 23 rounded up to whole global batches of 6


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive multiple"):
        batches(gbs=5, pc=2)
    with pytest.raises(ValueError, match="split must be one of"):
        batches(split="dev")
    with pytest.raises(ValueError, match="has no examples"):
        batches(n=0)
