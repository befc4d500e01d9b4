"""experiments.data.pipeline: reader threads change nothing but speed; blocks drawn concurrently."""

from __future__ import annotations

import threading

import ml_collections
import numpy as np
import pytest

from experiments.data import pipeline, registry

MQAR = dict(name="mqar", vocab_size=64, train_settings=((24, 3), (32, 4)), eval_settings=((32, 8),), eval_examples=600,
            power_a=0.01)
COPY = dict(name="selective_copying", seq_len=40, vocab_size=8, num_tokens=5, eval_examples=30)


def _stream(cfg, split, threads, n, batch=64):
    data = ml_collections.ConfigDict(dict(cfg, num_threads=threads))
    it = iter(registry.build(data, split=split, seed=0, global_batch_size=batch, process_index=0, process_count=1))
    return [b for _, b in zip(range(n), it)]


@pytest.mark.parametrize("cfg", [MQAR, COPY], ids=["blockwise", "per_example"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_reader_threads_give_the_same_batches(cfg, split):
    if split == "test" and cfg is COPY:
        split = "validation"
    one = _stream(cfg, split, 1, 12)
    for threads in (0, 3):  # 0: auto
        many = _stream(cfg, split, threads, 12)
        assert len(many) == len(one)
        for a, b in zip(one, many):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])


def test_bad_thread_counts_are_named():
    with pytest.raises(ValueError, match=r"data.num_threads must be an int >= 0 \(0: auto"):
        _stream(MQAR, "train", -1, 1)
    with pytest.raises(ValueError, match="num_threads must be an int >= 1; got 0"):
        pipeline.batched(lambda i: {"x": np.zeros(2)}, num_examples=None, global_batch_size=2, process_index=0,
                         process_count=1, num_threads=0)
    assert 1 <= pipeline.default_threads() <= 4


def test_threads_draw_different_blocks_at_once_and_the_same_block_once():
    # Two blocks drawn concurrently meet at a barrier: drawing one at a time would time out.
    barrier = threading.Barrier(2, timeout=20)
    calls = []

    def make_block(k):
        calls.append(k)
        if k in (0, 1):
            barrier.wait()
        return {"x": np.full((4, 1), k)}

    blocks = pipeline.blockwise(make_block, 4)
    out = {}
    _run_threads([lambda k=k: out.__setitem__(k, blocks.rows(np.array([4 * k]))) for k in (0, 1)])
    assert {k: int(v["x"][0, 0]) for k, v in out.items()} == {0: 0, 1: 1}
    # Eight threads asking for one new block: it is drawn once, all get it.
    got = []
    _run_threads([lambda: got.append(int(blocks.rows(np.array([9]))["x"][0, 0]))] * 8)
    assert got == [2] * 8 and calls.count(2) == 1


def test_a_failed_block_raises_to_every_reader_and_is_drawn_again_next_time():
    attempts = []

    def make_block(k):
        attempts.append(k)
        if len(attempts) == 1:
            raise RuntimeError("disk full")
        return {"x": np.arange(4)[:, None]}

    blocks = pipeline.blockwise(make_block, 4)
    with pytest.raises(RuntimeError, match="disk full"):
        blocks.rows(np.array([1]))
    np.testing.assert_array_equal(blocks.rows(np.array([1, 2]))["x"][:, 0], [1, 2])
    assert attempts == [0, 0]


def _run_threads(targets) -> None:
    """Run each callable in its own thread, all at once, and wait for them."""
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
