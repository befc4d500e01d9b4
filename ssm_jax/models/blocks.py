"""The residual block shared by the models: a mixer branch and, optionally, an MLP branch, each
with its norm before (pre-norm) or after (post-norm) the residual addition.

The residual stream ``h`` stays float32 whatever the compute dtype (mamba_ssm's
``residual_in_fp32``); each branch runs in the compute dtype and is added back in float32. In
post-norm the norm's output *is* the residual stream, so post-norm norms return float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ssm_jax.models.config import MIXERS, NORMS
from ssm_jax.nn.attention import MultiHeadAttention
from ssm_jax.nn.hydra import Hydra
from ssm_jax.nn.mamba import Mamba
from ssm_jax.nn.mamba2 import Mamba2
from ssm_jax.nn.mlp import MLP
from ssm_jax.nn.norms import BatchNorm, LayerNorm, RMSNorm
from ssm_jax.nn.params import canonical_dtype
from ssm_jax.nn.s4 import S4, S4D, _LTILayer

__all__ = ["BATCH_NORM_MOMENTUM", "Block", "apply_norm", "make_mixer", "make_norm"]

# Weight of the old running average per update: PyTorch BatchNorm1d's default momentum 0.1, the
# norm state-spaces/s4's LRA recipes use (``nn.BatchNorm1d`` with its defaults).
BATCH_NORM_MOMENTUM = 0.9


def make_norm(kind: str, dim: int, *, eps: float, dtype) -> nnx.Module:
    """The norm ``kind`` (one of ``NORMS``) over the last axis of size ``dim``, output in ``dtype``."""
    if kind == "rms":
        return RMSNorm(dim, eps=eps, dtype=dtype)
    if kind == "layer":
        return LayerNorm(dim, eps=eps, dtype=dtype)
    if kind == "batch":
        return BatchNorm(dim, eps=eps, momentum=BATCH_NORM_MOMENTUM, dtype=dtype)
    raise ValueError(f"make_norm: `kind` must be one of {NORMS}; got {kind!r}")


def apply_norm(norm: nnx.Module, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """``norm(x)``; a BatchNorm also gets ``mask (b, l)`` so that padding stays out of its statistics
    (the per-position norms need no mask: padding cannot reach a valid position through them)."""
    return norm(x, mask=mask) if isinstance(norm, BatchNorm) else norm(x)


def make_mixer(kind: str, d_model: int, stack_config, *, dtype, rngs: nnx.Rngs) -> nnx.Module:
    """The mixer layer ``kind`` (one of ``MIXERS``) configured from a model config's sub-config."""
    if kind == "mamba":
        return Mamba(d_model, stack_config.mamba, dtype=dtype, rngs=rngs)
    if kind == "mamba2":
        return Mamba2(d_model, stack_config.mamba2, dtype=dtype, rngs=rngs)
    if kind == "hydra":
        return Hydra(d_model, stack_config.hydra, dtype=dtype, rngs=rngs)
    if kind == "s4":
        return S4(d_model, stack_config.s4, dtype=dtype, rngs=rngs)
    if kind == "s4d":
        return S4D(d_model, stack_config.s4d, dtype=dtype, rngs=rngs)
    if kind == "attention":
        return MultiHeadAttention(d_model, stack_config.attention, dtype=dtype, rngs=rngs)
    raise ValueError(f"make_mixer: `kind` must be one of {MIXERS}; got {kind!r}")


def _mask_segments(segment_ids: jax.Array | None, mask: jax.Array) -> jax.Array:
    """Segment ids that put padding (``mask == False``) in segments of its own."""
    m = mask.astype(jnp.int32)
    return m if segment_ids is None else segment_ids.astype(jnp.int32) * 2 + m


class Block(nnx.Module):
    """Residual block: a mixer branch and, with ``d_intermediate > 0``, an MLP branch.

    Pre-norm (``prenorm=True``): ``h = h + drop(mixer(norm(h)))``, then ``h = h + drop(mlp(norm2(h)))``.
    Post-norm: ``h = norm(h + drop(mixer(h)))``, then ``h = norm2(h + drop(mlp(h)))``. ``norm`` and
    ``norm2`` are the config's ``norm`` (:func:`make_norm`).

    ``out_proj`` of the mixer and ``fc2`` of the MLP are scaled by ``1/sqrt(r * n_layers)`` at
    init (r residual branches per block; GPT-2's scheme, as mamba_ssm's ``_init_weights``).
    """

    def __init__(self, kind: str, stack_config, *, dropout: float = 0.0, tie_dropout: bool = False, dtype, rngs: nnx.Rngs):
        c = stack_config
        e = c.d_model
        self.kind = kind
        self.prenorm = c.prenorm
        self.compute_dtype = canonical_dtype("Block", dtype)
        # Pre-norm: the norm feeds a branch, in the compute dtype. Post-norm: its output is the
        # float32 residual stream.
        norm_dtype = dtype if c.prenorm else "float32"
        self.norm = make_norm(c.norm, e, eps=c.norm_eps, dtype=norm_dtype)
        self.mixer = make_mixer(kind, e, c, dtype=dtype, rngs=rngs)
        if c.d_intermediate > 0:
            self.norm2 = make_norm(c.norm, e, eps=c.norm_eps, dtype=norm_dtype)
            self.mlp = MLP(e, c.d_intermediate, dtype=dtype, rngs=rngs)
        else:
            self.norm2 = self.mlp = None
        # tie_dropout: one mask per (example, channel), shared along the length axis of (b, l, e).
        self.dropout = nnx.Dropout(dropout, broadcast_dims=(1,) if tie_dropout else (), rngs=rngs) if dropout > 0 else None
        scale = 1.0 / math.sqrt((2 if self.mlp is not None else 1) * c.n_layers)
        out_proj = getattr(self.mixer, "out_proj", None)
        for dense in (out_proj, self.mlp.fc2 if self.mlp is not None else None):
            if dense is not None:
                dense.kernel[...] = dense.kernel[...] * scale

    def _drop(self, y: jax.Array) -> jax.Array:
        return y if self.dropout is None else self.dropout(y)

    def _branch_input(self, norm: nnx.Module, h: jax.Array, mask: jax.Array | None) -> jax.Array:
        return apply_norm(norm, h, mask) if self.prenorm else h.astype(self.compute_dtype)

    def _add(self, norm: nnx.Module, h: jax.Array, y: jax.Array, mask: jax.Array | None) -> jax.Array:
        """The residual addition ``h + y`` (in float32), normalized after it in post-norm."""
        h = h + y.astype(h.dtype)
        return h if self.prenorm else apply_norm(norm, h, mask)

    def _mlp(self, h: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        if self.mlp is not None:
            h = self._add(self.norm2, h, self._drop(self.mlp(self._branch_input(self.norm2, h, mask))), mask)
        return h

    def __call__(self, h: jax.Array, *, segment_ids: jax.Array | None = None, mask: jax.Array | None = None) -> jax.Array:
        """``h (b, l, e)`` float32 residual stream -> same.

        ``mask (b, l)`` marks valid positions; padding then cannot influence valid positions: LTI
        mixers (S4, S4D) get zeroed inputs there, the others a segment of its own, and a BatchNorm
        leaves it out of its statistics.
        """
        x = self._branch_input(self.norm, h, mask)
        if mask is not None:
            if isinstance(self.mixer, _LTILayer):
                x = x * mask[..., None].astype(x.dtype)
            else:
                segment_ids = _mask_segments(segment_ids, mask)
        h = self._add(self.norm, h, self._drop(self.mixer(x, segment_ids=segment_ids)), mask)
        return self._mlp(h, mask)

    # -- decoding ---------------------------------------------------------------------------
    # Exact for every norm that acts on each position alone: RMSNorm, LayerNorm, and BatchNorm in
    # eval mode (a fixed affine map). A BatchNorm in train mode would take its statistics from
    # the one chunk or token it is given, not from the batch of whole sequences, so it is refused.

    def _check_decodable(self, what: str) -> None:
        for norm in (self.norm, self.norm2):
            if isinstance(norm, BatchNorm) and not norm.use_running_average:
                raise ValueError(
                    f"Block.{what}: norm='batch' in train mode normalizes with the statistics of the positions it is "
                    "given, so decoding a chunk or a token at a time cannot equal the parallel forward; call "
                    "model.eval() first (the running averages)"
                )

    def init_cache(self, batch_size: int, max_length: int, dtype=None):
        return self.mixer.init_cache(batch_size, dtype, max_length=max_length)

    def prefill(self, h: jax.Array, cache):
        self._check_decodable("prefill")
        y, cache = self.mixer.prefill(self._branch_input(self.norm, h, None), cache)
        return self._mlp(self._add(self.norm, h, y, None)), cache

    def step(self, h: jax.Array, cache):
        self._check_decodable("step")
        y, cache = self.mixer.step(self._branch_input(self.norm, h, None), cache)
        return self._mlp(self._add(self.norm, h, y, None)), cache
