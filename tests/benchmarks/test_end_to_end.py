"""The end-to-end benchmarks run (CPU smoke sizes) and their derived columns follow their inputs."""

from __future__ import annotations

import numpy as np

from benchmarks import decode, train


def test_train_benchmark_times_the_trainers_step(tmp_path):
    out = tmp_path / "rows.jsonl"
    rows = train.main(["--smoke", "--arch", "mamba2", "--no_peer", "--scan_layers", "both", "--json", str(out)])
    assert [(r["scan_layers"], r["remat"]) for r in rows] == [(True, "none"), (False, "none")]
    for row in rows:
        assert row["impl"] == "ssm_jax" and row["arch"] == "mamba2" and row["tokens_per_sec"] > 0
        np.testing.assert_allclose(row["step_ms"] * row["tokens_per_sec"] / 1e3, row["batch"] * row["seq_len"], rtol=0.05)
        np.testing.assert_allclose(row["mfu"], row["flops_per_token"] * row["tokens_per_sec"] / 989e12, rtol=1e-9)
        assert row["compile_s"] > 0 and np.isfinite(row["final_loss"])
    # The scanned and the looped model train alike: same init, same steps, same loss.
    np.testing.assert_allclose(rows[0]["final_loss"], rows[1]["final_loss"], rtol=1e-4)
    assert out.read_text().count("\n") == 2


def test_decode_benchmark_rows():
    rows = decode.main(["--smoke", "--arch", "mamba", "--batch", "2", "--no_peer"])
    (row,) = rows
    assert row["batch"] == 2 and row["new"] == 8 and row["generate_ms"] > 0
    np.testing.assert_allclose(row["tokens_per_sec"], 2 * 8 / (row["generate_ms"] / 1e3))


def test_lra_benchmark_epoch_time_follows_the_step_rate():
    from benchmarks import lra

    (row,) = lra.main(["--smoke", "--task", "listops", "--mixer", "s4d"])
    assert (row["task"], row["mixer"], row["seq_len"]) == ("listops", "s4d", 256)
    np.testing.assert_allclose(row["epoch_s"], 96_000 / row["examples_per_sec"])
    assert "vs_s4_repo" not in row  # a 1-layer model at length 256 is no epoch of the task
    # a full row's ratio: the s4 repository's 15 min (T4) over the epoch
    assert lra.vs_s4_repo("listops", row["epoch_s"]) == dict(s4_repo_epoch_s=900.0, s4_repo_device="T4",
                                                             vs_s4_repo=900.0 / row["epoch_s"])
    np.testing.assert_allclose(row["examples_per_sec"] * row["step_ms"] / 1e3, row["batch"], rtol=1e-6)


def test_random_token_datasets_have_the_task_shapes():
    import ml_collections

    from experiments.data import registry

    cfg = ml_collections.ConfigDict(dict(name="random_retrieval", seq_len=12, vocab_size=7, num_classes=3, eval_examples=5))
    assert registry.get("random_retrieval").TASK == "retrieval"
    b = next(iter(registry.build(cfg, split="train", seed=0, global_batch_size=4)))
    assert b["inputs1"].shape == b["inputs2"].shape == (4, 12) and b["mask1"].all() and b["inputs1"].max() < 7
    assert b["label"].shape == (4,) and b["label"].max() < 3 and not np.array_equal(b["inputs1"], b["inputs2"])
    cfg.name = "random_classification"
    evals = list(registry.build(cfg, split="validation", seed=0, global_batch_size=4))
    assert len(evals) == 2 and evals[1]["weights"].tolist() == [1, 0, 0, 0]  # 5 examples, padded
