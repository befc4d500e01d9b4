"""The Mamba-2 block (Dao & Gu, 2024, section 7 and figure 6) over :func:`ssm_jax.ops.ssd`."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ssm_jax.nn._common import check_layer_args, check_sequence, check_step
from ssm_jax.nn.config import Mamba2Config, head_geometry
from ssm_jax.nn.conv import ShortConv
from ssm_jax.nn.linear import Dense
from ssm_jax.nn.norms import GatedRMSNorm
from ssm_jax.nn.params import A_log_init_uniform, canonical_dtype, dt_bias_init, param
from ssm_jax.ops.conv import causal_conv1d, causal_conv1d_init_state, causal_conv1d_step
from ssm_jax.ops.ssd import ssd, ssd_step
from ssm_jax.parallel import context  # the ops with `length` split over a mesh axis, when one is set

__all__ = ["Mamba2", "Mamba2Cache"]


class Mamba2Cache(NamedTuple):
    """Decoding state of a :class:`Mamba2` layer (constant size).

    ========== =========================================================
    conv_state ``(b, d + 2 g n, k-1)`` last k-1 inputs of the conv over [x | B | C]
    ssm_state  ``(b, h, p, n)`` float32
    ========== =========================================================
    """

    conv_state: jax.Array
    ssm_state: jax.Array


class HeadsBlock(nnx.Module):
    """The trunk of the blocks on SSD heads (:class:`Mamba2`, :class:`~ssm_jax.nn.Hydra`):
    ``in_proj -> [z | x | bc_streams groups of B/C | dt_streams x h]``, the short convolution over
    ``x`` and the B/C streams (``conv_dim`` channels), and per head ``dt_bias`` (inverse softplus
    of dt ~ logU[dt_min, dt_max]) and ``A_log`` (``-A ~ U(A_init_range)``). ``d = expand * e``,
    ``h = d / headdim``, ``g = ngroups``; the subclass adds D, the norm and ``out_proj``."""

    def __init__(self, name: str, d_model: int, config, config_cls: type, *, bc_streams: int, dt_streams: int,
                 dtype, rngs: nnx.Rngs):
        d_model = check_layer_args(name, d_model, config, config_cls)
        c = config
        self.config = c
        self.d_model = d_model
        self.d_inner, self.nheads = d, h = head_geometry(name, d_model, c)
        self.headdim, self.ngroups, self.d_state = c.headdim, c.ngroups, c.d_state
        self.conv_dim = d + bc_streams * c.ngroups * c.d_state
        self.dtype = canonical_dtype(name, dtype)
        self.in_proj = Dense(d_model, d + self.conv_dim + dt_streams * h, names=("embed", "inner"), use_bias=c.bias,
                             dtype=dtype, rngs=rngs)
        self.conv1d = ShortConv(self.conv_dim, c.d_conv, use_bias=c.conv_bias, rngs=rngs)
        self.dt_bias = param(
            dt_bias_init(rngs.params(), (h,), dt_min=c.dt_min, dt_max=c.dt_max, dt_init_floor=c.dt_init_floor),
            ("heads",), ssm=True,
        )
        self.A_log = param(A_log_init_uniform(rngs.params(), h, c.A_init_range), ("heads",), ssm=True)


class Mamba2(HeadsBlock):
    """Mamba-2: ``in_proj -> [z | x B C | dt]``; causal conv + silu over ``x B C``;
    ``y = ssd(x, dt, A, B, C, D)``; ``out_proj(gated_rmsnorm(y, z))``.

    ================== =========================== ===========================================
    parameter          shape                       notes
    ================== =========================== ===========================================
    in_proj.kernel     (e, 2 d + 2 g n + h)        [z | x | B | C | dt] (mamba_ssm order)
    conv1d.weight/bias (d + 2 g n, k)              over [x | B | C]; PyTorch ``(c, 1, k)`` squeezed
    dt_bias            (h,)                        SSMParam; inverse softplus of dt ~ logU[dt_min, dt_max]
    A_log              (h,)                        SSMParam; ``A = -exp(A_log)``, ``-A ~ U(A_init_range)``
    D                  (h,) or (d,) (D_has_hdim)   SSMParam; ones
    norm.weight        (d,)                        gated RMSNorm, groups of ``d / g`` channels
    out_proj.kernel    (d, e)
    ================== =========================== ===========================================

    ``d = expand * e``, ``h = d / headdim``, ``g = ngroups``. ``x (b, l, e) -> y (b, l, e)``.
    """

    def __init__(self, d_model: int, config: Mamba2Config = Mamba2Config(), *, dtype="float32", rngs: nnx.Rngs):
        super().__init__("Mamba2", d_model, config, Mamba2Config, bc_streams=2, dt_streams=1, dtype=dtype, rngs=rngs)
        c, d, h, g = config, self.d_inner, self.nheads, self.ngroups
        self.D = param(jnp.ones((d if c.D_has_hdim else h,), jnp.float32), ("inner" if c.D_has_hdim else "heads",), ssm=True)
        self.norm = GatedRMSNorm(d, eps=c.norm_eps, group_size=d // g, norm_before_gate=c.norm_before_gate, dtype=dtype)
        self.out_proj = Dense(d, self.d_model, names=("inner", "embed"), use_bias=c.bias, dtype=dtype, rngs=rngs)

    def _split_in(self, zxbcdt: jax.Array):
        d = self.d_inner
        return jnp.split(zxbcdt, [d, d + self.conv_dim], axis=-1)  # z, xBC, dt

    def _split_xbc(self, xbc: jax.Array):
        d, gn = self.d_inner, self.ngroups * self.d_state
        x, B, C = jnp.split(xbc, [d, d + gn], axis=-1)
        lead = x.shape[:-1]
        return (
            x.reshape(*lead, self.nheads, self.headdim),
            B.reshape(*lead, self.ngroups, self.d_state),
            C.reshape(*lead, self.ngroups, self.d_state),
        )

    def _D(self) -> jax.Array:
        D = self.D[...]
        return D.reshape(self.nheads, self.headdim) if self.config.D_has_hdim else D

    def _out(self, y: jax.Array, z: jax.Array) -> jax.Array:
        y = y.reshape(*y.shape[:-2], self.d_inner)
        return self.out_proj(self.norm(y, z))

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        x, segment_ids = check_sequence("Mamba2", x, self.d_model, segment_ids)
        z, xbc, dt = self._split_in(self.in_proj(x))
        xbc = context.causal_conv1d(xbc, self.conv1d.weight[...], self.conv1d.bias_value(), segment_ids=segment_ids, activation="silu")
        xs, B, C = self._split_xbc(xbc)
        y = context.ssd(
            xs, dt, -jnp.exp(self.A_log[...]), B, C, chunk_size=self.config.chunk_size, D=self._D(),
            dt_bias=self.dt_bias[...], dt_softplus=True, segment_ids=segment_ids, impl=self.config.impl,
        )
        return self._out(y, z)

    # -- decoding ---------------------------------------------------------------------------

    def init_cache(self, batch_size: int, dtype=None, *, max_length: int | None = None) -> Mamba2Cache:
        """Zero state; ``conv_state`` in ``dtype`` (default: compute dtype), ``ssm_state`` fp32."""
        del max_length  # the state does not grow with the sequence
        dtype = self.dtype if dtype is None else canonical_dtype("Mamba2.init_cache", dtype)
        return Mamba2Cache(
            self.conv1d.zeros_state(batch_size, dtype),
            jnp.zeros((batch_size, self.nheads, self.headdim, self.d_state), jnp.float32),
        )

    def prefill(self, x: jax.Array, cache: Mamba2Cache) -> tuple[jax.Array, Mamba2Cache]:
        """The parallel (chunked SSD) forward of ``x (b, l, e)`` continuing ``cache``; ``(y, cache)``."""
        x, _ = check_sequence("Mamba2.prefill", x, self.d_model)
        k = self.conv1d.width
        z, xbc, dt = self._split_in(self.in_proj(x))
        xp = jnp.concatenate([jnp.swapaxes(cache.conv_state, 1, 2).astype(xbc.dtype), xbc], axis=1)
        conv_state = causal_conv1d_init_state(xp, k).astype(cache.conv_state.dtype)
        xbc = causal_conv1d(xp, self.conv1d.weight[...], self.conv1d.bias_value(), activation="silu")[:, k - 1 :]
        xs, B, C = self._split_xbc(xbc)
        y, ssm_state = ssd(
            xs, dt, -jnp.exp(self.A_log[...]), B, C, chunk_size=self.config.chunk_size, D=self._D(),
            dt_bias=self.dt_bias[...], dt_softplus=True, initial_state=cache.ssm_state,
            return_final_state=True, impl=self.config.impl,
        )
        return self._out(y, z), Mamba2Cache(conv_state, ssm_state)

    def step(self, x: jax.Array, cache: Mamba2Cache) -> tuple[jax.Array, Mamba2Cache]:
        """One token ``x (b, e)`` -> ``(y (b, e), cache)``."""
        x = check_step("Mamba2.step", x, self.d_model)
        z, xbc, dt = self._split_in(self.in_proj(x))
        xbc, conv_state = causal_conv1d_step(
            xbc, cache.conv_state.astype(xbc.dtype), self.conv1d.weight[...], self.conv1d.bias_value(), activation="silu"
        )
        xs, B, C = self._split_xbc(xbc)
        y, ssm_state = ssd_step(
            xs, dt, -jnp.exp(self.A_log[...]), B, C, cache.ssm_state, D=self._D(),
            dt_bias=self.dt_bias[...], dt_softplus=True,
        )
        return self._out(y, z), Mamba2Cache(conv_state.astype(cache.conv_state.dtype), ssm_state)
