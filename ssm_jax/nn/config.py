"""Frozen config dataclasses of the mixer layers (re-exported by :mod:`ssm_jax.models.config`).

``Config.from_dict(mapping)`` builds a config from a plain dict: nested dicts become nested
configs, lists become tuples, and an unknown key raises a ``ValueError`` listing the valid ones.
Every field is checked when a config is constructed (directly, by ``from_dict`` or by
``replace``): a bad value raises a ``ValueError`` naming the class, the field, the value and what
is allowed, e.g. ``MambaConfig: `d_state` must be a positive int; got -4``.
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


# Field checks. Each names the config class, the field, the value given and what is allowed, and
# runs in ``__post_init__``: a config that exists is one the layers can build (a negative
# d_state used to surface as an MLIRError or a broadcasting error at the first call).


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive_int(cls, c, *names: str) -> None:
    for name in names:
        v = getattr(c, name)
        if not (_is_int(v) and v >= 1):
            _fail(cls, f"`{name}` must be a positive int; got {v!r}")


def _positive_float(cls, c, *names: str) -> None:
    for name in names:
        v = getattr(c, name)
        if not (_is_number(v) and v > 0):
            _fail(cls, f"`{name}` must be a positive float; got {v!r}")


def _bool(cls, c, *names: str) -> None:
    for name in names:
        v = getattr(c, name)
        if not isinstance(v, bool):
            _fail(cls, f"`{name}` must be a bool (True or False); got {v!r}")


def _impl(cls, c, op: str) -> None:
    """``impl`` must be a name the op's registry knows (on any backend: configs travel)."""
    from ssm_jax import ops  # the op modules register their implementations on import

    names = ops.available_impls(op)
    if c.impl not in names:
        _fail(cls, f"`impl` must be one of {names} (the implementations of ops.{op}); got {c.impl!r}")


def _check_A_init_range(cls, c) -> None:
    r = c.A_init_range
    if not (isinstance(r, tuple) and len(r) == 2 and all(_is_number(x) for x in r) and 0 < r[0] <= r[1]):
        _fail(cls, f"`A_init_range` must be (lo, hi) with 0 < lo <= hi; got {r!r}")


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
    _positive_float(cls, c, "dt_min", "dt_max")
    if not c.dt_min <= c.dt_max:
        _fail(cls, f"need 0 < dt_min <= dt_max; got dt_min={c.dt_min}, dt_max={c.dt_max}")
    if hasattr(c, "dt_init_floor"):
        _positive_float(cls, c, "dt_init_floor")


def _check_choice(cls, name: str, value, choices) -> None:
    if value not in choices:
        _fail(cls, f"`{name}` must be one of {choices}; got {value!r}")


def check_dropout(cls, value, name: str = "dropout") -> None:
    if not (_is_number(value) and 0.0 <= value < 1.0):
        _fail(cls, f"`{name}` must be a float in [0, 1); got {value!r}")


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
        cls = type(self)
        _positive_int(cls, self, "d_state", "d_conv", "expand")
        _check_dt(cls, self)
        if self.dt_rank != "auto" and not (_is_int(self.dt_rank) and self.dt_rank > 0):
            _fail(cls, f"`dt_rank` must be 'auto' or a positive int; got {self.dt_rank!r}")
        _bool(cls, self, "conv_bias", "bias")
        _impl(cls, self, "selective_scan")

    def resolved_dt_rank(self, d_model: int) -> int:
        return math.ceil(d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)


@dataclasses.dataclass(frozen=True)
class _HeadsConfig(Config):
    """The fields and checks of the blocks built on SSD heads (Mamba-2, Hydra):
    ``d_inner = expand * d_model`` split in heads of ``headdim``, ``ngroups`` groups of B/C."""

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

    def __post_init__(self):
        cls = type(self)
        _positive_int(cls, self, "d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size")
        _check_dt(cls, self)
        _check_A_init_range(cls, self)
        _bool(cls, self, "conv_bias", "bias")


@dataclasses.dataclass(frozen=True)
class Mamba2Config(_HeadsConfig):
    """Mamba-2 block (Dao & Gu, 2024): ``d_inner = expand * d_model`` split in heads of ``headdim``."""

    norm_before_gate: bool = False
    D_has_hdim: bool = False
    norm_eps: float = 1e-5  # eps of the gated RMSNorm (transformers: layer_norm_epsilon)
    impl: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        cls = type(self)
        _positive_float(cls, self, "norm_eps")
        _bool(cls, self, "norm_before_gate", "D_has_hdim")
        _impl(cls, self, "ssd")


@dataclasses.dataclass(frozen=True)
class HydraConfig(_HeadsConfig):
    """Hydra block (Hwang et al., 2024): bidirectional quasiseparable mixer with a non-causal conv.

    ``A_init_range=(1, 1)``: the reference implementation (goombalab/hydra) starts every head at
    ``A = -1`` (``A_log = 0``); a wider range draws ``A = -U(lo, hi)`` per head as Mamba-2 does.
    """

    d_state: int = 64
    d_conv: int = 7
    A_init_range: tuple[float, float] = (1.0, 1.0)
    impl: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        if self.d_conv % 2 != 1:
            _fail(type(self), f"`d_conv` must be odd (a centred non-causal convolution); got {self.d_conv}")
        _impl(type(self), self, "hydra")


@dataclasses.dataclass(frozen=True)
class S4Config(Config):
    """S4 layer (Gu et al., 2022): DPLR HiPPO-LegS kernel; ``d_state`` is N (N/2 complex modes kept).

    ``lr``: the learning rate S4 gives A, B (P) and dt (0.001 in the paper's LRA runs); read by
    the trainer, which selects those parameters by type (:class:`ssm_jax.nn.SSMParam`).

    ``dt_transform``: how the trained parameter gives the step size: ``"exp"`` (``log_dt``, the
    original S4/S4D runs) or ``"softplus"`` (``inv_dt``, state-spaces/s4's current default).
    ``n_ssm``: independent copies of (A, B, P), tiled over the ``d_model`` channels (``1`` ties them,
    as state-spaces/s4's ``n_ssm: 1``); None: one per channel. dt, C and D stay per channel.
    ``tie_dropout``: one dropout mask per (example, channel) for the whole sequence.
    """

    d_state: int = 64
    dt_min: float = 1e-3
    dt_max: float = 0.1
    bidirectional: bool = False
    activation: str = "gelu"
    postact: str | None = "glu"
    dropout: float = 0.0
    lr: float | None = None
    dt_transform: str = "exp"
    n_ssm: int | None = None
    tie_dropout: bool = False

    def __post_init__(self):
        cls = type(self)
        if not (_is_int(self.d_state) and self.d_state >= 2 and self.d_state % 2 == 0):
            _fail(cls, f"`d_state` must be an even int >= 2 (conjugate pairs); got {self.d_state!r}")
        _check_dt(cls, self)
        _bool(cls, self, "bidirectional")
        _check_choice(cls, "activation", self.activation, ("gelu", "silu", "relu", "tanh", "identity"))
        _check_choice(cls, "postact", self.postact, ("glu", None))
        check_dropout(cls, self.dropout)
        if self.lr is not None and not (_is_number(self.lr) and self.lr > 0):
            _fail(cls, f"`lr` must be None (the optimizer's) or a positive float; got {self.lr!r}")
        _check_choice(cls, "dt_transform", self.dt_transform, ("exp", "softplus"))
        _bool(cls, self, "tie_dropout")
        if self.n_ssm is not None and not (_is_int(self.n_ssm) and self.n_ssm >= 1):
            _fail(cls, f"`n_ssm` must be None (one per channel) or a positive int dividing d_model; got {self.n_ssm!r}")


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

    def __post_init__(self):
        cls = type(self)
        _positive_int(cls, self, "num_heads")
        h = self.head_dim
        if h is not None and not (_is_int(h) and h >= 2 and h % 2 == 0):
            _fail(cls, f"`head_dim` must be None (d_model // num_heads) or an even int >= 2 (RoPE rotates pairs); got {h!r}")
        _positive_float(cls, self, "rope_theta")
        _bool(cls, self, "causal")
