"""The Mamba-1 block (Gu & Dao, 2023, section 3.4 and figure 3) over :func:`ssm_jax.ops.selective_scan`."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ssm_jax.nn.config import MambaConfig
from ssm_jax.nn._common import check_layer_args, check_sequence, check_step
from ssm_jax.nn.conv import ShortConv
from ssm_jax.nn.linear import Dense
from ssm_jax.nn.params import A_log_init_real, canonical_dtype, dt_bias_init, param
from ssm_jax.ops.conv import causal_conv1d, causal_conv1d_init_state, causal_conv1d_step
from ssm_jax.ops.selective_scan import selective_scan, selective_scan_step
from ssm_jax.parallel import context  # the ops with `length` split over a mesh axis, when one is set

__all__ = ["Mamba", "MambaCache"]


class MambaCache(NamedTuple):
    """Decoding state of a :class:`Mamba` layer; its size does not grow with the sequence.

    ========== ======================================================
    conv_state ``(b, d, k-1)`` the last k-1 conv inputs, oldest first
    ssm_state  ``(b, d, n)`` float32
    ========== ======================================================
    """

    conv_state: jax.Array
    ssm_state: jax.Array


class Mamba(nnx.Module):
    """Mamba-1: ``in_proj -> [x, z]``; ``x -> causal conv -> silu -> x_proj -> (dt, B, C)``;
    ``y = selective_scan(x, dt_proj(dt), A, B, C, D, z)``; ``out_proj(y)``.

    =================== ======================== =============================================
    parameter           shape                    logical axes / notes
    =================== ======================== =============================================
    in_proj.kernel      (e, 2 d)                 [x | z]
    conv1d.weight/bias  (d, k) / (d,)            mamba_ssm ``conv1d.weight (d, 1, k)`` squeezed
    x_proj.kernel       (d, r + 2 n)             [dt | B | C], r = dt_rank
    dt_proj.kernel      (r, d)
    dt_proj.bias        (d,)                     SSMParam; inverse softplus of dt ~ logU[dt_min, dt_max]
    A_log               (d, n)                   SSMParam; S4D-Real ``A = -exp(A_log) = -(1..n)``
    D                   (d,)                     SSMParam; ones
    out_proj.kernel     (d, e)
    =================== ======================== =============================================

    ``d = expand * e``. Kernels are PyTorch ``weight.T``. ``x (b, l, e) -> y (b, l, e)``.
    """

    def __init__(self, d_model: int, config: MambaConfig = MambaConfig(), *, dtype="float32", rngs: nnx.Rngs):
        d_model = check_layer_args("Mamba", d_model, config, MambaConfig)
        c = config
        self.config = c
        self.d_model = d_model
        self.d_inner = d_inner = c.expand * d_model
        self.dt_rank = r = c.resolved_dt_rank(d_model)
        self.d_state = n = c.d_state
        self.dtype = canonical_dtype("Mamba", dtype)
        self.in_proj = Dense(d_model, 2 * d_inner, names=("embed", "inner"), use_bias=c.bias, dtype=dtype, rngs=rngs)
        self.conv1d = ShortConv(d_inner, c.d_conv, use_bias=c.conv_bias, rngs=rngs)
        self.x_proj = Dense(d_inner, r + 2 * n, names=("inner", None), use_bias=False, dtype=dtype, rngs=rngs)
        # Mamba appendix: dt_proj weights U(±r^-1/2); the bias sets softplus(bias) = dt at init.
        self.dt_proj = Dense(
            r, d_inner, names=(None, "inner"), bias_ssm=True, dtype=dtype, rngs=rngs,
            kernel_init=lambda k, s: jax.random.uniform(k, s, jnp.float32, -(r ** -0.5), r ** -0.5),
            bias_init=lambda k, s: dt_bias_init(k, s, dt_min=c.dt_min, dt_max=c.dt_max, dt_init_floor=c.dt_init_floor),
        )
        self.A_log = param(A_log_init_real(d_inner, n), ("inner", "state"), ssm=True)
        self.D = param(jnp.ones((d_inner,), jnp.float32), ("inner",), ssm=True)
        self.out_proj = Dense(d_inner, d_model, names=("inner", "embed"), use_bias=c.bias, dtype=dtype, rngs=rngs)

    def _ssm_inputs(self, x: jax.Array):
        """``x`` after the conv -> ``(dt, B, C)`` (dt before bias/softplus)."""
        r, n = self.dt_rank, self.d_state
        x_dbl = self.x_proj(x)
        dt, B, C = jnp.split(x_dbl, [r, r + n], axis=-1)
        # dt_proj without its bias: the bias enters the scan as dt_bias (inside the softplus).
        dt = jnp.dot(dt, self.dt_proj.kernel[...].astype(self.dtype))
        return dt, B, C

    def _A(self) -> jax.Array:
        return -jnp.exp(self.A_log[...])

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        x, segment_ids = check_sequence("Mamba", x, self.d_model, segment_ids)
        xs, z = jnp.split(self.in_proj(x), 2, axis=-1)
        xs = context.causal_conv1d(xs, self.conv1d.weight[...], self.conv1d.bias_value(), segment_ids=segment_ids, activation="silu")
        dt, B, C = self._ssm_inputs(xs)
        y = context.selective_scan(
            xs, dt, self._A(), B, C, D=self.D[...], z=z, dt_bias=self.dt_proj.bias[...], dt_softplus=True,
            segment_ids=segment_ids, impl=self.config.impl,
        )
        return self.out_proj(y)

    # -- decoding ---------------------------------------------------------------------------

    def init_cache(self, batch_size: int, dtype=None, *, max_length: int | None = None) -> MambaCache:
        """Zero state: ``conv_state (b, d, k-1)`` in ``dtype`` (default: compute dtype), ``ssm_state`` fp32."""
        del max_length  # the state does not grow with the sequence
        dtype = self.dtype if dtype is None else canonical_dtype("Mamba.init_cache", dtype)
        return MambaCache(
            self.conv1d.zeros_state(batch_size, dtype),
            jnp.zeros((batch_size, self.d_inner, self.d_state), jnp.float32),
        )

    def prefill(self, x: jax.Array, cache: MambaCache) -> tuple[jax.Array, MambaCache]:
        """The parallel forward of ``x (b, l, e)`` continuing from ``cache``; returns ``(y, cache)``."""
        x, _ = check_sequence("Mamba.prefill", x, self.d_model)
        k = self.conv1d.width
        xs, z = jnp.split(self.in_proj(x), 2, axis=-1)
        # Prepending the cached k-1 inputs continues the convolution exactly (zeros when fresh).
        xp = jnp.concatenate([jnp.swapaxes(cache.conv_state, 1, 2).astype(xs.dtype), xs], axis=1)
        conv_state = causal_conv1d_init_state(xp, k).astype(cache.conv_state.dtype)
        xs = causal_conv1d(xp, self.conv1d.weight[...], self.conv1d.bias_value(), activation="silu")[:, k - 1 :]
        dt, B, C = self._ssm_inputs(xs)
        y, ssm_state = selective_scan(
            xs, dt, self._A(), B, C, D=self.D[...], z=z, dt_bias=self.dt_proj.bias[...], dt_softplus=True,
            initial_state=cache.ssm_state, return_final_state=True, impl=self.config.impl,
        )
        return self.out_proj(y), MambaCache(conv_state, ssm_state)

    def step(self, x: jax.Array, cache: MambaCache) -> tuple[jax.Array, MambaCache]:
        """One token ``x (b, e)`` -> ``(y (b, e), cache)``; O(d n) work and memory per token."""
        x = check_step("Mamba.step", x, self.d_model)
        xs, z = jnp.split(self.in_proj(x), 2, axis=-1)
        xs, conv_state = causal_conv1d_step(
            xs, cache.conv_state.astype(xs.dtype), self.conv1d.weight[...], self.conv1d.bias_value(), activation="silu"
        )
        dt, B, C = self._ssm_inputs(xs)
        y, ssm_state = selective_scan_step(
            xs, dt, self._A(), B, C, cache.ssm_state, D=self.D[...], z_t=z, dt_bias=self.dt_proj.bias[...], dt_softplus=True
        )
        return self.out_proj(y), MambaCache(conv_state.astype(cache.conv_state.dtype), ssm_state)
