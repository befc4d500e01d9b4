"""benchmarks.input_pipeline: one row per thread count, and bad counts named."""

import json

import pytest

from benchmarks import input_pipeline


def test_smoke_rows_and_json(tmp_path):
    out = tmp_path / "rows.jsonl"
    rows = input_pipeline.main(["--smoke", "--json", str(out)])
    assert [r["threads"] for r in rows] == [1, 2]
    for r in rows:
        assert r["config"].endswith("mqar.py:smoke") and r["steps_per_call"] >= 1
        assert r["ms_per_call"] > 0 and r["batches_per_s"] == pytest.approx(1e3 * r["steps_per_call"] / r["ms_per_call"])
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows


def test_bad_counts_are_named():
    from experiments import configs

    config = configs.load(input_pipeline.os.path.join(input_pipeline.REPO, "experiments/configs/synthetic/mqar.py:smoke"))
    with pytest.raises(ValueError, match="calls and threads must be >= 1"):
        input_pipeline.time_calls(config, threads=0, calls=3)
    with pytest.raises(FileNotFoundError, match="no config module at"):
        configs.load("nowhere.py:x")
