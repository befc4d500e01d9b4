"""Frozen config dataclasses of the mixer layers (re-exported by :mod:`ssm_jax.models.config`).

``Config.from_dict(mapping)`` builds a config from a plain dict: nested dicts become nested
configs, lists become tuples, and an unknown key raises a ``ValueError`` listing the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Mapping

__all__ = [
    "Config",
    "MambaConfig",
    "Mamba2Config",
    "HydraConfig",
    "S4Config",
    "S4DConfig",
    "AttentionConfig",
]


def _fail(cls, msg: str):
    raise ValueError(f"{cls.__name__}: {msg}")


class Config:
    """``from_dict`` / ``to_dict`` for frozen dataclasses, with nested configs."""

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]):
        if isinstance(mapping, cls):
            return mapping
        if not isinstance(mapping, Mapping):
            raise TypeError(f"{cls.__name__}.from_dict: expected a mapping; got {type(mapping).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - set(fields))
        if unknown:
            raise ValueError(
                f"{cls.__name__}.from_dict: unknown key(s) {unknown}; valid keys are {sorted(fields)}"
            )
        missing = [f.name for f in fields.values() if f.name not in mapping
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"{cls.__name__}.from_dict: missing required key(s) {missing}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in mapping.items():
            sub = _nested_config_type(hints[name])
            if sub is not None and isinstance(value, Mapping):
                value = sub.from_dict(value)
            kwargs[name] = _to_tuples(value)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, Config) else v
        return out

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _nested_config_type(hint) -> type | None:
    if isinstance(hint, type) and issubclass(hint, Config):
        return hint
    for arg in typing.get_args(hint):
        if isinstance(arg, type) and issubclass(arg, Config):
            return arg
    return None


def _to_tuples(value):
    if isinstance(value, (list, tuple)):
        return tuple(_to_tuples(v) for v in value)
    return value


def _check_A_init_range(cls, c) -> None:
    if len(c.A_init_range) != 2 or not 0 < c.A_init_range[0] <= c.A_init_range[1]:
        _fail(cls, f"`A_init_range` must be (lo, hi) with 0 < lo <= hi; got {c.A_init_range}")


def head_geometry(layer: str, d_model: int, c) -> tuple[int, int]:
    """``(d_inner, heads)`` of a Mamba-2-style block: ``d = expand * d_model`` in heads of ``headdim``."""
    d = c.expand * d_model
    if d % c.headdim:
        raise ValueError(f"{layer}: `headdim`={c.headdim} must divide d_inner = expand * d_model = {d}")
    h = d // c.headdim
    if h % c.ngroups:
        raise ValueError(f"{layer}: `ngroups`={c.ngroups} must divide the number of heads {h}")
    return d, h


def _check_dt(cls, c) -> None:
    if not 0 < c.dt_min <= c.dt_max:
        _fail(cls, f"need 0 < dt_min <= dt_max; got dt_min={c.dt_min}, dt_max={c.dt_max}")


def _check_choice(cls, name: str, value, choices) -> None:
    if value not in choices:
        _fail(cls, f"`{name}` must be one of {choices}; got {value!r}")


@dataclasses.dataclass(frozen=True)
class MambaConfig(Config):
    """Mamba-1 block (Gu & Dao, 2023). ``dt_rank="auto"`` is ``ceil(d_model / 16)``."""

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    impl: str = "auto"

    def __post_init__(self):
        _check_dt(type(self), self)
        if self.dt_rank != "auto" and not (isinstance(self.dt_rank, int) and self.dt_rank > 0):
            _fail(type(self), f"`dt_rank` must be 'auto' or a positive int; got {self.dt_rank!r}")

    def resolved_dt_rank(self, d_model: int) -> int:
        return math.ceil(d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)


@dataclasses.dataclass(frozen=True)
class Mamba2Config(Config):
    """Mamba-2 block (Dao & Gu, 2024): ``d_inner = expand * d_model`` split in heads of ``headdim``."""

    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    A_init_range: tuple[float, float] = (1.0, 16.0)
    conv_bias: bool = True
    bias: bool = False
    norm_before_gate: bool = False
    D_has_hdim: bool = False
    norm_eps: float = 1e-5  # eps of the gated RMSNorm (transformers: layer_norm_epsilon)
    impl: str = "auto"

    def __post_init__(self):
        _check_dt(type(self), self)
        if not (isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0):
            _fail(type(self), f"`norm_eps` must be a positive float; got {self.norm_eps!r}")
        _check_A_init_range(type(self), self)


@dataclasses.dataclass(frozen=True)
class HydraConfig(Config):
    """Hydra block (Hwang et al., 2024): bidirectional quasiseparable mixer with a non-causal conv.

    ``A_init_range=(1, 1)``: the reference implementation (goombalab/hydra) starts every head at
    ``A = -1`` (``A_log = 0``); a wider range draws ``A = -U(lo, hi)`` per head as Mamba-2 does.
    """

    d_state: int = 64
    d_conv: int = 7
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    A_init_range: tuple[float, float] = (1.0, 1.0)
    conv_bias: bool = True
    bias: bool = False
    impl: str = "auto"

    def __post_init__(self):
        _check_dt(type(self), self)
        if self.d_conv % 2 != 1:
            _fail(type(self), f"`d_conv` must be odd (a centred non-causal convolution); got {self.d_conv}")
        _check_A_init_range(type(self), self)


@dataclasses.dataclass(frozen=True)
class S4Config(Config):
    """S4 layer (Gu et al., 2022): DPLR HiPPO-LegS kernel; ``d_state`` is N (N/2 complex modes kept).

    ``lr``: the learning rate S4 gives A, B (P) and dt (0.001 in the paper's LRA runs); read by
    the trainer, which selects those parameters by type (:class:`ssm_jax.nn.SSMParam`).
    """

    d_state: int = 64
    dt_min: float = 1e-3
    dt_max: float = 0.1
    bidirectional: bool = False
    activation: str = "gelu"
    postact: str | None = "glu"
    dropout: float = 0.0
    lr: float | None = None

    def __post_init__(self):
        _check_dt(type(self), self)
        if self.d_state < 2 or self.d_state % 2:
            _fail(type(self), f"`d_state` must be even and >= 2 (conjugate pairs); got {self.d_state}")
        _check_choice(type(self), "activation", self.activation, ("gelu", "silu", "relu", "tanh", "identity"))
        _check_choice(type(self), "postact", self.postact, ("glu", None))
        if not 0.0 <= self.dropout < 1.0:
            _fail(type(self), f"`dropout` must be in [0, 1); got {self.dropout}")


@dataclasses.dataclass(frozen=True)
class S4DConfig(S4Config):
    """S4D layer (Gu et al., 2022b): diagonal A from ``init`` ("legs", "lin", "inv"), ZOH or bilinear."""

    init: str = "legs"
    discretization: str = "zoh"

    def __post_init__(self):
        super().__post_init__()
        _check_choice(type(self), "init", self.init, ("legs", "lin", "inv"))
        _check_choice(type(self), "discretization", self.discretization, ("zoh", "bilinear"))


@dataclasses.dataclass(frozen=True)
class AttentionConfig(Config):
    """Multi-head attention with RoPE. ``head_dim=None``: ``d_model // num_heads``."""

    num_heads: int = 8
    head_dim: int | None = None
    rope_theta: float = 10000.0
    causal: bool = True
