"""Frozen config dataclasses of the models, and (re-exported) those of the mixers.

The trainer builds them from plain dicts with ``Config.from_dict(mapping)`` (``config.model.to_dict()``
of an ml_collections config): nested dicts become nested configs, lists become tuples, and an
unknown key raises a ``ValueError`` that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import math

from ssm_jax.nn.config import (
    AttentionConfig,
    Config,
    HydraConfig,
    Mamba2Config,
    MambaConfig,
    S4Config,
    S4DConfig,
    _bool,
    _check_choice,
    _fail,
    _positive_float,
    check_dropout,
)

__all__ = [
    "MIXERS",
    "NORMS",
    "MambaConfig",
    "Mamba2Config",
    "HydraConfig",
    "S4Config",
    "S4DConfig",
    "AttentionConfig",
    "LanguageModelConfig",
    "SequenceClassifierConfig",
]

MIXERS = ("mamba", "mamba2", "hydra", "s4", "s4d", "attention")

# ``norm`` choices: RMSNorm (Mamba's blocks), LayerNorm and BatchNorm (state-spaces/s4's
# ``model.norm``: "layer" its default, "batch" its LRA recipes).
NORMS = ("rms", "layer", "batch")

# ``remat`` choices -> what the backward may keep from the forward of a block (the rest is
# recomputed): "full" keeps only the block's input, "dots" every matmul output,
# "dots_no_batch" matmul outputs without batch dimensions (jax.checkpoint_policies).
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class _StackConfig(Config):
    """Embedding + ``n_layers`` residual blocks + a final norm.

    ``norm`` picks the normalization of every block and of the final norm (``NORMS``: "rms",
    "layer", "batch"; BatchNorm's statistics skip padding, see :class:`ssm_jax.nn.BatchNorm`).
    ``prenorm=True``: ``h = h + drop(mixer(norm(h)))`` and a final norm after the last block;
    ``prenorm=False`` (post-norm): ``h = norm(h + drop(mixer(h)))`` and no final norm, the last
    block's norm being the last operation (state-spaces/s4's ``SequenceResidualBlock`` and
    ``SequenceModel``, which make the final norm an identity when ``prenorm`` is false).
    The MLP branch (``d_intermediate > 0``) follows the same placement with ``norm2``.

    ``scan_layers=True`` runs the blocks as one ``jax.lax.scan`` over parameters stacked along a
    leading ``layers`` axis, so one block is compiled whatever the depth. A hybrid stack scans
    ``n_layers // layer_period`` times over a group of ``layer_period`` different blocks
    (attention every 6th layer: 4 repeats of 6); a stack that does not repeat is still scanned,
    once, and gains nothing (the model logs that). ``remat`` recomputes each block's activations
    in the backward pass instead of keeping them (``REMAT_POLICIES``), scanned or not. Neither
    changes the values computed; see :mod:`ssm_jax.models.stack`. On a CPU backend, a mixer whose
    ``impl`` names a Pallas kernel (interpret mode, which ``jax.checkpoint`` cannot differentiate)
    runs without remat, with a warning (:func:`ssm_jax.models.stack.effective_remat`).
    """

    vocab_size: int
    d_model: int
    n_layers: int
    mixer: str = "mamba2"
    layer_mixers: tuple[str, ...] | None = None
    mamba: MambaConfig = MambaConfig()
    mamba2: Mamba2Config = Mamba2Config()
    hydra: HydraConfig = HydraConfig()
    s4: S4Config = S4Config()
    s4d: S4DConfig = S4DConfig()
    attention: AttentionConfig = AttentionConfig()
    d_intermediate: int = 0
    norm: str = "rms"
    prenorm: bool = True
    norm_eps: float = 1e-5
    pad_vocab_size_multiple: int = 8
    dtype: str = "float32"
    scan_layers: bool = False
    remat: str = "none"

    def __post_init__(self):
        cls = type(self)
        for name in ("vocab_size", "d_model", "n_layers", "pad_vocab_size_multiple"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                _fail(cls, f"`{name}` must be a positive int; got {v!r}")
        if isinstance(self.d_intermediate, bool) or not isinstance(self.d_intermediate, int) or self.d_intermediate < 0:
            _fail(cls, f"`d_intermediate` must be an int >= 0; got {self.d_intermediate!r}")
        _check_choice(cls, "mixer", self.mixer, MIXERS)
        if self.layer_mixers is not None:
            if not isinstance(self.layer_mixers, tuple):
                _fail(cls, f"`layer_mixers` must be None or a tuple of mixer names (one per layer); got {self.layer_mixers!r}")
            if len(self.layer_mixers) != self.n_layers:
                _fail(cls, f"`layer_mixers` must have n_layers={self.n_layers} entries; got {len(self.layer_mixers)}")
            for m in self.layer_mixers:
                _check_choice(cls, "layer_mixers[...]", m, MIXERS)
        _check_choice(cls, "norm", self.norm, NORMS)
        _bool(cls, self, "prenorm")
        _positive_float(cls, self, "norm_eps")
        _check_choice(cls, "dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _bool(cls, self, "scan_layers")
        _check_choice(cls, "remat", self.remat, REMAT_POLICIES)
        for name, sub in (("mamba", MambaConfig), ("mamba2", Mamba2Config), ("hydra", HydraConfig),
                          ("s4", S4Config), ("s4d", S4DConfig), ("attention", AttentionConfig)):
            if not isinstance(getattr(self, name), sub):
                _fail(cls, f"`{name}` must be a {sub.__name__} (or a dict for from_dict); got {type(getattr(self, name)).__name__}")

    @property
    def mixers(self) -> tuple[str, ...]:
        """The mixer of each layer."""
        return tuple(self.layer_mixers) if self.layer_mixers is not None else (self.mixer,) * self.n_layers

    @property
    def layer_period(self) -> int:
        """The shortest ``p`` dividing ``n_layers`` with ``mixers[i] == mixers[i % p]``: 1 for a
        homogeneous stack, 6 for attention every 6th layer, ``n_layers`` when nothing repeats.

        With ``scan_layers`` the model scans ``n_layers // p`` times over a group of ``p`` blocks."""
        kinds, n = self.mixers, self.n_layers
        return next(p for p in range(1, n + 1) if n % p == 0 and all(kinds[i] == kinds[i % p] for i in range(n)))

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return -(-self.vocab_size // m) * m

    def mixer_config(self, mixer: str):
        return getattr(self, mixer)


@dataclasses.dataclass(frozen=True)
class LanguageModelConfig(_StackConfig):
    """A causal language model. ``hydra``, bidirectional S4/S4D, non-causal attention and
    ``norm="batch"`` are refused: each would let a position see later tokens (BatchNorm through
    training statistics taken over the whole sequence)."""

    tie_embeddings: bool = True

    def __post_init__(self):
        super().__post_init__()
        _bool(type(self), self, "tie_embeddings")
        if self.norm == "batch":
            _fail(type(self), "`norm='batch'` is not causal: in training its statistics average over every position "
                              "of the batch, later tokens included; a language model needs 'rms' or 'layer'")
        for m in set(self.mixers):
            if m == "hydra":
                _fail(type(self), "mixer 'hydra' is bidirectional; a language model needs causal mixers")
            if m in ("s4", "s4d") and self.mixer_config(m).bidirectional:
                _fail(type(self), f"`{m}.bidirectional=True` is not causal; a language model needs causal mixers")
            if m == "attention" and not self.attention.causal:
                _fail(type(self), "`attention.causal=False` is not causal; a language model needs causal mixers")


@dataclasses.dataclass(frozen=True)
class SequenceClassifierConfig(_StackConfig):
    """A sequence classifier (LRA): pooled features -> logits; ``dual_encoder`` for retrieval.

    ``tie_dropout``: the residual branches' dropout draws one mask per (example, channel) for the
    whole sequence (state-spaces/s4's ``tie_dropout``) instead of one per element.

    ``encoder``: ``"embed"`` looks each input id up (a token vocabulary); ``"linear"`` reads the ids
    as pixel intensities ``0..255``, normalizes them to ``(id / 255 - pixel_mean) / pixel_std`` and
    maps that one real number to ``d_model`` by a linear layer (state-spaces/s4's real-valued
    image inputs: torchvision's ``Normalize(pixel_mean, pixel_std)`` and a ``Linear(1, d_model)``).
    """

    num_classes: int = dataclasses.field(kw_only=True)
    pooling: str = "mean"
    dual_encoder: bool = False
    dropout: float = 0.0
    tie_dropout: bool = False
    encoder: str = "embed"
    pixel_mean: float = 0.5
    pixel_std: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            _fail(type(self), f"`num_classes` must be a positive int; got {self.num_classes!r}")
        _check_choice(type(self), "pooling", self.pooling, ("mean", "last", "first"))
        _bool(type(self), self, "dual_encoder")
        check_dropout(type(self), self.dropout)
        _bool(type(self), self, "tie_dropout")
        _check_choice(type(self), "encoder", self.encoder, ("embed", "linear"))
        if self.encoder == "linear" and self.vocab_size != 256:
            _fail(type(self), f"encoder='linear' reads pixel intensities 0..255: `vocab_size` must be 256; got {self.vocab_size}")
        for name in ("pixel_mean", "pixel_std"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (name == "pixel_std" and v <= 0):
                _fail(type(self), f"`{name}` must be a finite float{' > 0' if name == 'pixel_std' else ''}; got {v!r}")
