"""Per-mixer settings of the small (d_model 64, 2 layer) models the synthetic tasks use.

Each entry is the ``model_config`` keyword for that mixer's sub-config. Hydra is absent on
purpose: it is bidirectional, so on these causal tasks it would read the answer it must
predict; use it on classification (LRA) instead.
"""

from __future__ import annotations

CAUSAL = ("mamba", "mamba2", "s4", "s4d", "attention")

SMALL = {
    "mamba": dict(mamba=dict(d_state=16, expand=2)),  # Mamba paper's synthetic-task block
    # mamba_ssm's default head dim (64): two heads at d_model 64, and the SSD kernel's tile size.
    "mamba2": dict(mamba2=dict(d_state=64, headdim=64, expand=2, chunk_size=64)),
    "s4": dict(s4=dict(d_state=64)),
    "s4d": dict(s4d=dict(d_state=64)),
    "attention": dict(attention=dict(num_heads=4)),
}


def shrink_model(c, mixer: str, d_model: int = 16) -> None:
    """A smoke run's model: width ``d_model`` (Mamba-2 heads of 16 so that they divide it)."""
    c.model.d_model = d_model
    if mixer == "mamba2":
        c.model.mamba2.headdim = 16


def paper_optimizer(c, *, lr: float) -> None:
    """The Mamba paper's synthetic-task optimizer (App. E.1): Adam at a constant ``lr`` with no
    weight decay; no warmup or clipping is mentioned, so there is none (in place on config ``c``)."""
    c.optim.lr = lr
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.0
    c.optim.ssm_weight_decay = 0.0
    c.optim.clip_norm = 0.0


def mixer_sweep(arg, *, mixers: str, args: dict[str, str] | None = None) -> list:
    """``get_sweep`` of a synthetic task: one run per (mixer, seed). ``arg``: ``mixers=``
    (``+``-separated) and ``seeds=`` (``+``-separated, default 0); ``args`` adds a config arg to a
    mixer's runs (e.g. a shorter test range for attention)."""
    from experiments.configs import common

    a = common.parse_arg(arg, mixers=mixers, seeds="0")
    out = []
    for mixer in common.plus_list(a, "mixers"):
        for seed in common.plus_list(a, "seeds", int):
            extra = (args or {}).get(mixer)
            out.append((f"{mixer}_s{seed}", f"mixer={mixer}" + (f",{extra}" if extra else ""), {"seed": seed}))
    return out


def check(mixer: str, task: str) -> None:
    if mixer == "hydra":
        raise ValueError(
            f"{task}: mixer 'hydra' is bidirectional; on a causal task it sees the tokens it must predict. "
            f"Use one of {CAUSAL} (Hydra runs on the LRA classification configs)."
        )
    if mixer not in CAUSAL:
        raise ValueError(f"{task}: mixer must be one of {CAUSAL}; got {mixer!r}")
