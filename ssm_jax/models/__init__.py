"""Models built from :mod:`ssm_jax.nn` layers: a causal language model and a sequence classifier."""

from ssm_jax.models.blocks import Block, make_mixer, make_norm
from ssm_jax.models.classifier import SequenceClassifier, pool
from ssm_jax.models.config import (
    MIXERS,
    NORMS,
    REMAT_POLICIES,
    AttentionConfig,
    HydraConfig,
    LanguageModelConfig,
    Mamba2Config,
    MambaConfig,
    S4Config,
    S4DConfig,
    SequenceClassifierConfig,
)
from ssm_jax.models.counting import flops_per_token, param_count
from ssm_jax.models.language_model import LanguageModel
from ssm_jax.models.stack import stack_layers, unstack_layers, with_scan_layers

__all__ = [
    "MIXERS",
    "NORMS",
    "REMAT_POLICIES",
    "AttentionConfig",
    "Block",
    "HydraConfig",
    "LanguageModel",
    "LanguageModelConfig",
    "Mamba2Config",
    "MambaConfig",
    "S4Config",
    "S4DConfig",
    "SequenceClassifier",
    "SequenceClassifierConfig",
    "flops_per_token",
    "make_mixer",
    "make_norm",
    "param_count",
    "pool",
    "stack_layers",
    "unstack_layers",
    "with_scan_layers",
]
