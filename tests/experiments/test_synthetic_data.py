"""Synthetic datasets: the task definitions, determinism, process sharding, padding, resume."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from experiments.data import registry, synthetic


def _cfg(**kw):
    return ml_collections.ConfigDict(kw)


COPY = _cfg(name="selective_copying", seq_len=40, vocab_size=8, num_tokens=5, eval_examples=10)
INDUCTION = _cfg(name="induction_heads", seq_len=32, vocab_size=16, eval_examples=10)
MQAR = _cfg(name="mqar", vocab_size=64, train_settings=((24, 3), (32, 4)), eval_settings=((32, 8),), eval_examples=6, power_a=0.01)


def _batches(cfg, split="train", n=2, seed=0, batch=4, process_index=0, process_count=1):
    it = iter(registry.build(cfg, split=split, seed=seed, global_batch_size=batch, process_index=process_index, process_count=process_count))
    return [next(it) for _ in range(n)]


def test_lazy_registration():
    assert {"selective_copying", "induction_heads", "mqar"} <= set(registry.names())
    assert registry.get("mqar").TASK == "lm"
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*selective_copying"):
        registry.get("nope")


def test_selective_copying_targets_are_the_data_tokens_in_order():
    for b in _batches(COPY, n=3):
        for x, y, w in zip(b["inputs"], b["targets"], b["weights"]):
            region = 40 - 5
            data = x[:region][x[:region] != 0]  # the non-noise tokens, in order
            assert len(data) == 5 and np.all((1 <= data) & (data <= 6))
            assert np.all(x[region:] == 7)  # markers
            np.testing.assert_array_equal(y[region:], data)
            np.testing.assert_array_equal(w, np.r_[np.zeros(region), np.ones(5)])
            assert np.all(y[:region] == 0)


def test_induction_heads_answer_follows_the_first_trigger():
    for b in _batches(INDUCTION, n=3):
        for x, y, w in zip(b["inputs"], b["targets"], b["weights"]):
            triggers = np.flatnonzero(x == 15)
            assert len(triggers) == 2 and triggers[1] == 31 and triggers[0] <= 29
            assert y[31] == x[triggers[0] + 1] and np.all(x[:31][x[:31] != 15] < 15)
            np.testing.assert_array_equal(w, np.eye(32)[31])


def test_mqar_queries_recall_the_value_of_their_key():
    for split, lengths in (("train", {24, 32}), ("test", {32})):
        seen = set()
        for b in _batches(MQAR, split=split, n=4 if split == "train" else 2):
            for x, y, w in zip(b["inputs"], b["targets"], b["weights"]):
                assert x.shape == (32,)
                # The context: key/value pairs at the start, as many as there are queries.
                n = int(w.sum())
                if n == 0:  # padding of the last eval batch
                    continue
                keys, values = x[0 : 2 * n : 2], x[1 : 2 * n : 2]
                assert np.all((1 <= keys) & (keys < 32)) and np.all((32 <= values) & (values < 64))
                assert len(set(keys)) == n
                kv = dict(zip(keys, values))
                q = np.flatnonzero(w)
                assert np.all(q >= 2 * n)
                assert sorted(x[q]) == sorted(keys)  # every key queried once
                for pos in q:
                    assert y[pos] == kv[x[pos]]
                seen.add(n)
        assert seen == ({3, 4} if split == "train" else {8})


def test_mqar_follows_zoology_fill_and_mix():
    rng = np.random.default_rng(0)
    ex = synthetic.mqar_example(rng, seq_len=256, num_pairs=16, vocab_size=8192)
    q = np.flatnonzero(ex["weights"])
    assert len(q) == 16 and np.all((q - 32) % 2 == 0)
    rest = np.setdiff1d(np.arange(32, 256), q)
    assert len(np.unique(ex["inputs"][rest])) > 150  # random tokens, not a constant fill
    plain = synthetic.mqar_example(np.random.default_rng(0), seq_len=64, num_pairs=4, vocab_size=64, random_non_queries=False)
    qp = np.flatnonzero(plain["weights"])
    assert np.all(np.delete(plain["inputs"][8:], qp - 8) == 0)
    # train_weights: the (24, 3) setting drawn 4x as often as (32, 4).
    cfg = ml_collections.ConfigDict(MQAR.to_dict())
    cfg.train_weights = (4, 1)
    counts = {3: 0, 4: 0}
    for b in _batches(cfg, n=25, batch=8):
        for w in b["weights"]:
            counts[int(w.sum())] += 1
    assert 0.7 < counts[3] / 200 < 0.9, counts
    cfg.train_weights = (1, 2, 3)
    with pytest.raises(ValueError, match="train_weights must give one non-negative weight per train setting"):
        _batches(cfg, n=1)


def test_deterministic_and_split_dependent():
    a, b = _batches(COPY), _batches(COPY)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    c = _batches(COPY, seed=1)
    v = _batches(COPY, split="validation")
    assert not np.array_equal(a[0]["inputs"], c[0]["inputs"])
    assert not np.array_equal(a[0]["inputs"], v[0]["inputs"])
    assert not np.array_equal(a[0]["inputs"], a[1]["inputs"])


def test_processes_split_each_global_batch():
    whole = _batches(COPY, n=2, batch=4)
    parts = [_batches(COPY, n=2, batch=4, process_index=p, process_count=2) for p in range(2)]
    for step in range(2):
        got = np.concatenate([parts[0][step]["inputs"], parts[1][step]["inputs"]])
        assert got.shape == (4, 40)
        # Same examples in the global batch, whatever the number of processes.
        assert sorted(map(tuple, got)) == sorted(map(tuple, whole[step]["inputs"]))


def test_eval_split_is_one_pass_padded_with_zero_weights():
    # 10 examples, global batch 4 -> 3 batches, the last with 2 real rows.
    for pc in (1, 2):
        per_proc = [list(registry.build(COPY, split="validation", seed=0, global_batch_size=4, process_index=p, process_count=pc)) for p in range(pc)]
        assert all(len(b) == 3 for b in per_proc)
        real_rows = sum(int((b["weights"].sum(-1) > 0).sum()) for batches in per_proc for b in batches)
        assert real_rows == 10
    rows = np.concatenate([b["inputs"] for b in per_proc[0]] + [b["inputs"] for b in per_proc[1]])
    assert len({tuple(r) for r in rows}) == 10  # padding repeats real examples


def test_iterator_resumes_mid_stream():
    ds = registry.build(MQAR, split="train", seed=3, global_batch_size=2)
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    it2 = iter(registry.build(MQAR, split="train", seed=3, global_batch_size=2))
    it2.set_state(state)
    for e in expected:
        got = next(it2)
        for k in e:
            np.testing.assert_array_equal(got[k], e[k])


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="num_pairs"):
        synthetic.mqar_example(np.random.default_rng(0), seq_len=16, num_pairs=8, vocab_size=64)
    for count in (-1, 2.5):
        with pytest.raises(ValueError, match=r"`count` must be an int >= 0"):
            synthetic.mqar_examples(np.random.default_rng(0), count=count, seq_len=64, num_pairs=4, vocab_size=64)
    with pytest.raises(ValueError, match="num_tokens"):
        synthetic.selective_copying_example(np.random.default_rng(0), seq_len=8, vocab_size=8, num_tokens=5)
    with pytest.raises(ValueError, match="missing keys.*seq_len"):
        registry.build(_cfg(name="induction_heads", vocab_size=16, eval_examples=1), split="train", seed=0, global_batch_size=1)


def test_mqar_gaps_follow_zoologys_draw_without_replacement():
    """The vectorized draw (top-k of log p + Gumbel noise) has the law of Zoology's
    ``np.random.choice(space, num_pairs, replace=False, p=p)``: per-slot frequencies agree."""
    n, space, draws = 4, 28, 20000
    ex = synthetic.mqar_examples(np.random.default_rng(1), count=draws, seq_len=64, num_pairs=n, vocab_size=8192)
    slots = (np.argwhere(ex["weights"])[:, 1] - 2 * n) // 2
    ours = np.bincount(slots, minlength=space) / slots.size
    p = np.arange(1, space + 1, dtype=np.float64) ** (0.01 - 1)
    rng = np.random.default_rng(2)
    theirs = np.bincount(np.concatenate([rng.choice(space, n, replace=False, p=p / p.sum()) for _ in range(draws)]),
                         minlength=space) / (n * draws)
    assert np.abs(ours - theirs).max() < 0.01, (ours[:5], theirs[:5])
    assert ours[0] > 2 * ours[10]  # near gaps dominate (a = 0.01)
    # Keys and values distinct per row, also when they fill most of their range (the dense draw).
    dense = synthetic.mqar_examples(np.random.default_rng(3), count=50, seq_len=64, num_pairs=14, vocab_size=32)
    for x in dense["inputs"]:
        assert len(set(x[0:28:2])) == 14 and len(set(x[1:28:2])) == 14


def test_mqar_data_do_not_depend_on_the_batch_size():
    """Examples are drawn a block at a time, so the stream is a function of (seed, split, index):
    two batches of 4 are one batch of 8, and an evaluation pass covers the same rows."""
    small = _batches(MQAR, n=2, batch=4)
    big = _batches(MQAR, n=1, batch=8)
    for k in ("inputs", "targets", "weights"):
        np.testing.assert_array_equal(np.concatenate([small[0][k], small[1][k]]), big[0][k])
    evals = [list(registry.build(MQAR, split="test", seed=0, global_batch_size=bs)) for bs in (4, 6)]
    rows = [np.concatenate([b["inputs"][b["weights"].sum(1) > 0] for b in e]) for e in evals]
    np.testing.assert_array_equal(rows[0], rows[1])


class _CountingRng:
    """A numpy Generator that counts its draws."""

    def __init__(self, seed):
        self.rng, self.calls = np.random.default_rng(seed), 0

    def __getattr__(self, name):
        fn = getattr(self.rng, name)

        def counted(*a, **k):
            self.calls += 1
            return fn(*a, **k)

        return counted


@pytest.mark.parametrize("n", [4, 64, 128, 256, 1000, 4095])
def test_distinct_draws_take_few_rounds_at_every_density(n):
    # 256 keys of 4095 (MQAR's (1024, 256) test setting): a row of 256 independent draws is
    # repeat-free 1 time in ~3000, and redrawing such rows until clean took thousands of rounds
    # (37 s for the 1000 test sequences); every density must take a handful of draws.
    rng = _CountingRng(0)
    out = synthetic._distinct(rng, 1, 4096, (512, n))
    assert out.shape == (512, n) and out.min() >= 1 and out.max() < 4096
    assert all(len(set(row)) == n for row in out)
    assert rng.calls <= 20, rng.calls


@pytest.mark.parametrize("pool,n", [(8, 6), (64, 2), (40, 10)])  # a permutation, redraws, the n smallest keys
def test_distinct_draws_are_uniform_in_every_position(pool, n):
    many = synthetic._distinct(np.random.default_rng(1), 0, pool, (40000, n))
    assert all(len(set(row)) == n for row in many[:2000])
    freq = np.stack([np.bincount(many[:, j], minlength=pool) for j in range(n)]) / len(many)
    np.testing.assert_allclose(freq, 1 / pool, atol=0.012)
    # A random order, not a sorted one: the first of two positions is the smaller half the time.
    assert abs(np.mean(many[:, 0] < many[:, 1]) - 0.5) < 0.01
