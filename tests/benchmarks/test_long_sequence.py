"""benchmarks/long_sequence.py --smoke: rows per mixer, and the context-parallel split on 4 CPU devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests import xla_flags

ROOT = Path(__file__).resolve().parents[2]


def test_long_sequence_smoke_rows_and_context_check(tmp_path):
    out = tmp_path / "rows.jsonl"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS=xla_flags.flags(4))
    cmd = [sys.executable, "-m", "benchmarks.long_sequence", "--smoke", "--mixer", "mamba2", "--mixer", "hydra",
           "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["mixer"], r["context"]) for r in rows] == [("mamba2", 1), ("mamba2", 4), ("hydra", 1), ("hydra", 4)]
    for r in rows:
        assert r["length"] == 512 and r["forward_ms"] > 0 and r["fwd_bwd_ms"] > 0, r
        # The compiled call's own footprint: the backward keeps more than the forward.
        assert 0 < r["forward_bytes"] < r["fwd_bwd_bytes"], r
        if r["context"] > 1:
            # The split layer equals the one-device layer (fp32).
            assert r["max_err_vs_one_device"] < 1e-5, r
