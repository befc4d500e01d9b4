"""The end-to-end benchmarks run (CPU smoke sizes) and their derived columns follow their inputs."""

from __future__ import annotations

import numpy as np

from benchmarks import decode, train


def test_train_benchmark_times_the_trainers_step(tmp_path):
    out = tmp_path / "rows.jsonl"
    (row,) = train.main(["--smoke", "--arch", "mamba2", "--no_peer", "--json", str(out)])
    assert row["impl"] == "ssm_jax" and row["arch"] == "mamba2" and row["tokens_per_sec"] > 0
    np.testing.assert_allclose(row["step_ms"] * row["tokens_per_sec"] / 1e3, row["batch"] * row["seq_len"], rtol=0.05)
    np.testing.assert_allclose(row["mfu"], row["flops_per_token"] * row["tokens_per_sec"] / 989e12, rtol=1e-9)
    assert row["compile_s"] > 0 and np.isfinite(row["final_loss"])
    assert out.read_text().count("\n") == 1


def test_decode_benchmark_rows():
    rows = decode.main(["--smoke", "--arch", "mamba", "--batch", "2", "--no_peer"])
    (row,) = rows
    assert row["batch"] == 2 and row["new"] == 8 and row["generate_ms"] > 0
    np.testing.assert_allclose(row["tokens_per_sec"], 2 * 8 / (row["generate_ms"] / 1e3))
