"""ssm_jax: structured state space models in JAX.

Public API: :mod:`ssm_jax.ops` (pure functions), :mod:`ssm_jax.nn` (Flax NNX layers),
:mod:`ssm_jax.models` (language and classification models), :func:`ssm_jax.generate`
(decoding) and :mod:`ssm_jax.interop` (PyTorch checkpoint conversion).
"""

from ssm_jax import ops

__version__ = "0.1.0"
__all__ = ["ops"]

# Layers, models, decoding and sharding helpers (ssm_jax.nn, .models, .decoding, .parallel).
from ssm_jax import models, nn, parallel  # noqa: E402
from ssm_jax.decoding import generate  # noqa: E402

__all__ += ["generate", "models", "nn", "parallel"]

# Checkpoint conversion to/from the PyTorch reference formats (ssm_jax.interop).
from ssm_jax import interop  # noqa: E402

__all__ += ["interop"]
