"""Flax NNX layers over :mod:`ssm_jax.ops`: the five mixers, attention, norms and the MLP.

Every mixer is built as ``Layer(d_model, LayerConfig(...), *, dtype="float32", rngs)`` (``Mamba`` /
``MambaConfig``, ``Mamba2``, ``Hydra``, ``S4``, ``S4D``, ``MultiHeadAttention`` / ``AttentionConfig``)
and called as ``layer(x (b, l, e), *, segment_ids=None) -> (b, l, e)``. Causal layers (``Mamba``,
``Mamba2``, ``MultiHeadAttention`` with ``causal=True``, ``S4``/``S4D`` unless bidirectional) also
have ``init_cache(batch_size, dtype=None, *, max_length=None)``, ``prefill(x, cache) -> (y, cache)``
and ``step(x_t (b, e), cache) -> (y_t, cache)``; ``max_length`` sizes attention's KV cache (SSM
states do not grow; attention defaults to ``DEFAULT_CACHE_LENGTH`` positions and refuses to decode
past them). Norms: ``RMSNorm``, ``LayerNorm``, ``BatchNorm`` (statistics over valid positions
only, running averages in ``nnx.BatchStat``), ``GatedRMSNorm``. Parameters are fp32 with logical
axis names; SSM-specific ones are :class:`SSMParam`.
"""

from ssm_jax.nn.attention import DEFAULT_CACHE_LENGTH, AttentionCache, MultiHeadAttention, apply_rope
from ssm_jax.nn.config import AttentionConfig, Config, HydraConfig, Mamba2Config, MambaConfig, S4Config, S4DConfig
from ssm_jax.nn.conv import ShortConv
from ssm_jax.nn.hydra import Hydra
from ssm_jax.nn.linear import Dense, Embed
from ssm_jax.nn.mamba import Mamba, MambaCache
from ssm_jax.nn.mamba2 import Mamba2, Mamba2Cache
from ssm_jax.nn.mlp import MLP
from ssm_jax.nn.norms import BatchNorm, GatedRMSNorm, LayerNorm, RMSNorm
from ssm_jax.nn.params import LOGICAL_AXES, SSMParam, param
from ssm_jax.nn.s4 import S4, S4D, S4Cache, SSMKernelParam

__all__ = [
    "DEFAULT_CACHE_LENGTH",
    "LOGICAL_AXES",
    "AttentionCache",
    "AttentionConfig",
    "BatchNorm",
    "Config",
    "Dense",
    "Embed",
    "GatedRMSNorm",
    "Hydra",
    "HydraConfig",
    "LayerNorm",
    "MLP",
    "Mamba",
    "Mamba2",
    "Mamba2Cache",
    "Mamba2Config",
    "MambaCache",
    "MambaConfig",
    "MultiHeadAttention",
    "RMSNorm",
    "S4",
    "S4Cache",
    "S4Config",
    "S4D",
    "S4DConfig",
    "SSMKernelParam",
    "SSMParam",
    "ShortConv",
    "apply_rope",
    "param",
]
