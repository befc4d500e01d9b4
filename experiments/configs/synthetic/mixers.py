"""Per-mixer settings of the small (d_model 64, 2 layer) models the synthetic tasks use.

Each entry is the ``model_config`` keyword for that mixer's sub-config. Hydra is absent on
purpose: it is bidirectional, so on these causal tasks it would read the answer it must
predict; use it on classification (LRA) instead.
"""

from __future__ import annotations

CAUSAL = ("mamba", "mamba2", "s4", "s4d", "attention")

SMALL = {
    "mamba": dict(mamba=dict(d_state=16, expand=2)),  # Mamba paper's synthetic-task block
    "mamba2": dict(mamba2=dict(d_state=64, headdim=16, expand=2, chunk_size=64)),
    "s4": dict(s4=dict(d_state=64)),
    "s4d": dict(s4d=dict(d_state=64)),
    "attention": dict(attention=dict(num_heads=4)),
}


def check(mixer: str, task: str) -> None:
    if mixer == "hydra":
        raise ValueError(
            f"{task}: mixer 'hydra' is bidirectional; on a causal task it sees the tokens it must predict. "
            f"Use one of {CAUSAL} (Hydra runs on the LRA classification configs)."
        )
    if mixer not in CAUSAL:
        raise ValueError(f"{task}: mixer must be one of {CAUSAL}; got {mixer!r}")
