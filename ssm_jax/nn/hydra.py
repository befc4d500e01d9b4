"""The Hydra block (Hwang, Lahoti, Dao & Gu, 2024, section 3.3) over :func:`ssm_jax.ops.hydra`.

Bidirectional, so there is no step form: Hydra belongs in encoders (:class:`SequenceClassifier`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ssm_jax.nn._common import check_sequence
from ssm_jax.nn.config import HydraConfig
from ssm_jax.nn.linear import Dense
from ssm_jax.nn.mamba2 import HeadsBlock
from ssm_jax.nn.norms import GatedRMSNorm
from ssm_jax.nn.params import param
from ssm_jax.parallel import context  # the ops with `length` split over a mesh axis, when one is set

__all__ = ["Hydra"]


class Hydra(HeadsBlock):
    """Hydra: ``in_proj -> [z | x B_f C_f B_b C_b | dt_f dt_b]``; centred conv + silu over the middle;
    ``y = QS(x) + x * (fc_D(x) + D)``; ``out_proj(gated_rmsnorm(y, z))``.

    ``QS`` is the quasiseparable mixer :func:`ssm_jax.ops.hydra` (shifted forward and backward SSD
    passes sharing ``A``); ``fc_D(x) + D`` is the paper's data-dependent diagonal (eq. 9).

    ================== ============================== =========================================
    parameter          shape                          notes
    ================== ============================== =========================================
    in_proj.kernel     (e, 2 d + 4 g n + 2 h)         [z | x | B_f C_f | B_b C_b | dt_f | dt_b]
    conv1d.weight/bias (d + 4 g n, k)                 centred (``padding = k // 2``), k odd
    dt_bias            (h,)                           SSMParam, shared by both directions
    A_log              (h,)                           SSMParam; reference init ``A = -1``
    D                  (h,)                           SSMParam; ones
    fc_D.kernel        (d, h)                         data-dependent part of the diagonal
    norm.weight        (d,)                           gated RMSNorm, ``norm_before_gate=True``
    out_proj.kernel    (d, e)
    ================== ============================== =========================================

    Names and order follow goombalab/hydra's ``Hydra`` module. ``x (b, l, e) -> y (b, l, e)``.
    """

    def __init__(self, d_model: int, config: HydraConfig = HydraConfig(), *, dtype="float32", rngs: nnx.Rngs):
        super().__init__("Hydra", d_model, config, HydraConfig, bc_streams=4, dt_streams=2, dtype=dtype, rngs=rngs)
        c, d, h = config, self.d_inner, self.nheads
        self.D = param(jnp.ones((h,), jnp.float32), ("heads",), ssm=True)
        self.fc_D = Dense(d, h, names=("inner", "heads"), use_bias=False, dtype=dtype, rngs=rngs)
        self.norm = GatedRMSNorm(d, eps=1e-5, norm_before_gate=True, dtype=dtype)
        self.out_proj = Dense(d, self.d_model, names=("inner", "embed"), use_bias=c.bias, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        x, segment_ids = check_sequence("Hydra", x, self.d_model, segment_ids)
        b, l, _ = x.shape
        d, h, p, g, n = self.d_inner, self.nheads, self.headdim, self.ngroups, self.d_state
        z, xbc, dt = jnp.split(self.in_proj(x), [d, d + self.conv_dim], axis=-1)
        xbc = context.conv1d(xbc, self.conv1d.weight[...], self.conv1d.bias_value(), segment_ids=segment_ids, activation="silu")
        xs, bc = jnp.split(xbc, [d], axis=-1)
        # [B_f C_f | B_b C_b] -> B, C (b, l, 2, g, n) with axis 2 = [forward, backward].
        bc = bc.reshape(b, l, 2, 2, g, n)
        B, C = bc[:, :, :, 0], bc[:, :, :, 1]
        xh = xs.reshape(b, l, h, p)
        y = context.hydra(
            xh, dt.reshape(b, l, 2, h), -jnp.exp(self.A_log[...]), B, C, chunk_size=self.config.chunk_size,
            dt_bias=self.dt_bias[...], dt_softplus=True, segment_ids=segment_ids, impl=self.config.impl,
        )
        diag = self.fc_D(xs) + self.D[...].astype(self.dtype)  # (b, l, h)
        y = y + xh * diag[..., None]
        return self.out_proj(self.norm(y.reshape(b, l, d), z))
