"""S4 and S4D layers: a long convolution with an SSM kernel, activation, dropout, GLU output.

The layer of state-spaces/s4 (``S4Block`` with ``FFTConv``): ``y = K * u + D u`` over the ``h``
channels with the kernel from :func:`ssm_jax.ops.s4_kernel` (DPLR, S4) or
:func:`ssm_jax.ops.s4d_kernel` (diagonal, S4D), computed by :func:`ssm_jax.ops.fft_conv`; then the
activation, dropout and ``output_linear`` (GLU by default). ``bidirectional`` adds a second,
anti-causal kernel (a second ``C``) as state-spaces/s4 does.

Packed sequences (``segment_ids``) run the recurrence instead, state zeroed where a segment
starts, in the chunked form of :func:`ssm_jax.ops.s4d_scan` / :func:`ssm_jax.ops.s4_scan`
(parallel inside chunks of :data:`PACKED_CHUNK`; prefill uses it too). Padding
alone needs no ``segment_ids``: zero the padded inputs (the convolution is linear and has no
bias, so zeros contribute nothing) — :class:`ssm_jax.models.SequenceClassifier` does that.

Complex parameters are stored as float32 ``(..., 2)`` arrays [real, imag] (state-spaces/s4's
``_c2r`` layout); ``A``'s real part as ``log_A_real`` (``Re A = -exp(log_A_real)`` stays < 0).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ssm_jax.nn._common import check_layer_args, check_sequence, check_step
from ssm_jax.nn.config import S4Config, S4DConfig
from ssm_jax.nn.linear import Dense
from ssm_jax.nn.params import SSMParam, canonical_dtype, param
from ssm_jax.ops._prepare import segment_starts
from ssm_jax.ops.conv import fft_conv
from ssm_jax.ops.s4 import s4_discretize, s4_init, s4_kernel, s4_scan, s4_step
from ssm_jax.ops.s4d import s4d_discretize, s4d_init, s4d_kernel, s4d_scan, s4d_step

__all__ = ["S4", "S4D", "S4Cache", "SSMKernelParam"]

# Chunk of the S4/S4D packed-sequence and prefill paths (the ops' chunked form): the (q, q)
# masked Toeplitz work per position grows with q, the sequential depth l / q shrinks.
PACKED_CHUNK = 64


class SSMKernelParam(SSMParam):
    """The S4/S4D kernel parameters that state-spaces/s4 trains with its own learning rate
    (``S4Config.lr``): ``log_dt`` (or ``inv_dt``), ``log_A_real``, ``A_imag``, ``B``, ``P``. An :class:`SSMParam`."""


def kernel_param(value: jax.Array, names) -> nnx.Param:
    return param(value, names, cls=SSMKernelParam)


class S4Cache(NamedTuple):
    """Decoding state of an S4/S4D layer: ``state (b, h, n)`` complex64 (one of each conjugate pair)."""

    state: jax.Array


def _c2r(z: jax.Array) -> jax.Array:
    return jnp.stack([jnp.real(z), jnp.imag(z)], axis=-1).astype(jnp.float32)


def _r2c(x: jax.Array) -> jax.Array:
    return jax.lax.complex(x[..., 0], x[..., 1])


_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "identity": lambda x: x,
}


class _LTILayer(nnx.Module):
    """Shared body of :class:`S4` and :class:`S4D`; subclasses define the kernel and step."""

    name = "S4"

    def _init_common(self, d_model: int, config: S4Config, dtype, rngs: nnx.Rngs):
        d_model = check_layer_args(self.name, d_model, config, S4DConfig if self.name == "S4D" else S4Config)
        c = config
        self.config = c
        self.d_model = h = d_model
        self.n = c.d_state // 2  # complex modes kept (one of each conjugate pair)
        self.dtype = canonical_dtype(self.name, dtype)
        self.bidirectional = c.bidirectional
        self.n_ssm = h if c.n_ssm is None else c.n_ssm
        if h % self.n_ssm:
            raise ValueError(f"{self.name}: config.n_ssm={c.n_ssm} must divide d_model={h} (A, B, P are tiled over the channels)")
        # log dt ~ U[log dt_min, log dt_max] (S4 paper, appendix C.3; S4D section 4).
        u = jax.random.uniform(rngs.params(), (h,), jnp.float32)
        log_dt = u * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min)
        if c.dt_transform == "exp":
            self.log_dt = kernel_param(log_dt, ("heads",))
        else:  # dt = softplus(inv_dt): inv_dt = log(expm1(dt))
            self.inv_dt = kernel_param(jnp.log(jnp.expm1(jnp.exp(log_dt))), ("heads",))
        # C ~ complex normal with unit variance; a second C for the anti-causal kernel.
        channels = 2 if c.bidirectional else 1
        C = jax.random.normal(rngs.params(), (channels, h, self.n, 2), jnp.float32) * math.sqrt(0.5)
        self.C = param(C, (None, "heads", "state", None), ssm=True)
        self.D = param(jax.random.normal(rngs.params(), (h,), jnp.float32), ("heads",), ssm=True)
        # (b, l, h) activations: a tied mask is shared along the length axis.
        self.dropout = nnx.Dropout(c.dropout, broadcast_dims=(1,) if c.tie_dropout else (), rngs=rngs) if c.dropout > 0 else None
        glu = c.postact == "glu"
        self.output_linear = Dense(h, 2 * h if glu else h, names=("heads", "embed"), dtype=dtype, rngs=rngs)

    def _log_dt(self) -> jax.Array:
        """``log dt (h,)``, whichever ``dt_transform`` parametrizes it (the ops take log dt)."""
        if self.config.dt_transform == "exp":
            return self.log_dt[...]
        return jnp.log(jax.nn.softplus(self.inv_dt[...]))

    def _ssm_param(self, value: jax.Array) -> nnx.Param:
        """A kernel parameter of ``n_ssm`` copies: the first rows of a per-channel ``(h, ...)`` init
        (identical rows: the HiPPO inits are deterministic)."""
        names = ("heads" if self.n_ssm == self.d_model else None, "state") + (None,) * (value.ndim - 2)
        return kernel_param(value[: self.n_ssm], names)

    def _tiled(self, p: nnx.Param) -> jax.Array:
        """``(n_ssm, ...) -> (h, ...)``: channel ``c`` uses copy ``c % n_ssm`` (state-spaces/s4's order)."""
        v = p[...]
        return v if self.n_ssm == self.d_model else jnp.tile(v, (self.d_model // self.n_ssm,) + (1,) * (v.ndim - 1))

    def _store_A(self, A: jax.Array) -> None:
        self.log_A_real = self._ssm_param(jnp.log(-jnp.real(A)).astype(jnp.float32))
        self.A_imag = self._ssm_param(jnp.imag(A).astype(jnp.float32))

    def _A(self) -> jax.Array:
        return jax.lax.complex(-jnp.exp(self._tiled(self.log_A_real)), self._tiled(self.A_imag))

    def _Cs(self) -> list[jax.Array]:
        C = _r2c(self.C[...])
        return [C[i] for i in range(C.shape[0])]

    # subclass hooks (and `_scan_op`: the family's s4_scan / s4d_scan)
    def _kernel(self, C: jax.Array, length: int) -> jax.Array:
        raise NotImplementedError

    def _discretize(self) -> tuple[jax.Array, jax.Array]:
        raise NotImplementedError

    def _step_fn(self, u_t, state, dA, dB, C, D=None):
        raise NotImplementedError

    def _post(self, y: jax.Array) -> jax.Array:
        y = _ACTIVATIONS[self.config.activation](y)
        if self.dropout is not None:
            y = self.dropout(y)
        y = self.output_linear(y)
        if self.config.postact == "glu":
            a, g = jnp.split(y, 2, axis=-1)
            y = a * jax.nn.sigmoid(g)
        return y

    def _recurrent_segments(self, u: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """``K * u + D u`` restarted at every segment: the op's chunked form per direction."""
        dA, dB = self._discretize()

        def run(u_seq, ids, C):
            y, _ = self._scan_op(u_seq, dA, dB, C, segment_ids=ids, chunk_size=PACKED_CHUNK)
            return y

        Cs = self._Cs()
        uf = u.astype(jnp.promote_types(u.dtype, jnp.float32))
        y = run(uf, segment_ids, Cs[0]) + uf * self.D[...]
        if self.bidirectional:
            # z[t] = sum_j K1[j] u[t+j] within the segment (a causal pass over the reversed
            # sequence); the backward term sum_j K1[j] u[t+1+j] is z[t+1] when t+1 is in t's segment.
            ends = segment_starts(segment_ids[:, ::-1], first=True)[:, ::-1]  # last position of a segment
            z = run(uf[:, ::-1], segment_ids[:, ::-1], Cs[1])[:, ::-1]
            z_next = jnp.concatenate([z[:, 1:], jnp.zeros_like(z[:, :1])], axis=1)
            y = y + jnp.where(ends[..., None], 0.0, z_next)
        return y.astype(u.dtype)

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        x, segment_ids = check_sequence(self.name, x, self.d_model, segment_ids)
        l = x.shape[1]
        if segment_ids is not None:
            y = self._recurrent_segments(x, segment_ids)
        else:
            Ks = [self._kernel(C, l) for C in self._Cs()]
            K = jnp.stack(Ks) if self.bidirectional else Ks[0]
            y = fft_conv(x, K, D=self.D[...], bidirectional=self.bidirectional)
        return self._post(y)

    # -- decoding ---------------------------------------------------------------------------

    def _check_causal(self, what: str) -> None:
        if self.bidirectional:
            raise ValueError(f"{self.name}.{what}: a bidirectional layer cannot decode step by step")

    def init_cache(self, batch_size: int, dtype=None, *, max_length: int | None = None) -> S4Cache:
        """Zero complex state ``(b, h, n)`` (complex64 whatever ``dtype``; ``max_length`` unused)."""
        del dtype, max_length
        self._check_causal("init_cache")
        return S4Cache(jnp.zeros((batch_size, self.d_model, self.n), jnp.complex64))

    def prefill(self, x: jax.Array, cache: S4Cache) -> tuple[jax.Array, S4Cache]:
        """``x (b, l, e)`` continuing ``cache`` -> ``(y, cache)``: the recurrence from the cached
        state in the op's parallel chunked form."""
        self._check_causal("prefill")
        x, _ = check_sequence(f"{self.name}.prefill", x, self.d_model)
        dA, dB = self._discretize()
        y, state = self._run_from(x, cache.state, dA, dB, self._Cs()[0], self.D[...])
        return self._post(y), S4Cache(state)

    def _run_from(self, u, state, dA, dB, C, D):
        """``(y (b, l, h), final state)`` of the recurrence from ``state``, with the ``D`` skip."""
        return self._scan_op(u, dA, dB, C, D=D, initial_state=state, chunk_size=PACKED_CHUNK)

    def step(self, x: jax.Array, cache: S4Cache) -> tuple[jax.Array, S4Cache]:
        """One token ``x (b, e)`` -> ``(y (b, e), cache)``; O(h n) per token (O(h n²) for S4's dense dA)."""
        self._check_causal("step")
        x = check_step(f"{self.name}.step", x, self.d_model)
        dA, dB = self._discretize()
        y, state = self._step_fn(x, cache.state, dA, dB, self._Cs()[0], D=self.D[...])
        return self._post(y), S4Cache(state)


class S4D(_LTILayer):
    """S4D (Gu, Gupta, Goel & Ré, 2022): diagonal ``A`` from ``init`` ("legs", "lin", "inv").

    ============== ================= ==================================================
    parameter      shape             notes
    ============== ================= ==================================================
    log_dt         (h,)              SSMKernelParam; log U[dt_min, dt_max] (``inv_dt``,
                                     softplus^-1 of it, with ``dt_transform="softplus"``)
    log_A_real     (s, n)            SSMKernelParam; ``Re A = -exp(.)`` (-1/2 at init)
    A_imag         (s, n)            SSMKernelParam
    B              (s, n, 2)         SSMKernelParam; complex as [re, im]
    C              (c, h, n, 2)      SSMParam; c = 2 if bidirectional else 1
    D              (h,)              SSMParam; N(0, 1) as state-spaces/s4
    output_linear  (h, 2h) / (h, h)  GLU / no post-activation
    ============== ================= ==================================================

    ``n = d_state / 2`` complex modes; ``h = d_model``; ``s = n_ssm`` (default ``h``): A and B are
    tiled over the channels. ``x (b, l, e) -> y (b, l, e)``.
    """

    name = "S4D"

    def __init__(self, d_model: int, config: S4DConfig = S4DConfig(), *, dtype="float32", rngs: nnx.Rngs):
        self._init_common(d_model, config, dtype, rngs)
        A, B = s4d_init(d_model, self.n, config.init)
        self._store_A(A)
        self.B = self._ssm_param(_c2r(B))

    def _kernel(self, C, length):
        return s4d_kernel(self._log_dt(), self._A(), C, length, B=_r2c(self._tiled(self.B)), discretization=self.config.discretization)

    def _discretize(self):
        return s4d_discretize(self._log_dt(), self._A(), _r2c(self._tiled(self.B)), discretization=self.config.discretization)

    def _step_fn(self, u_t, state, dA, dB, C, D=None):
        return s4d_step(u_t, state, dA, dB, C, D=D)

    _scan_op = staticmethod(s4d_scan)


class S4(_LTILayer):
    """S4 (Gu, Goel & Ré, 2022): HiPPO-LegS in DPLR form ``A = Λ - P P*``, bilinear discretization.

    ============== ================= ==================================================
    parameter      shape             notes
    ============== ================= ==================================================
    log_dt         (h,)              SSMKernelParam; log U[dt_min, dt_max] (or ``inv_dt``)
    log_A_real     (s, n)            SSMKernelParam; ``Re Λ = -exp(.)`` (-1/2 at init)
    A_imag         (s, n)            SSMKernelParam; ``Im Λ``
    P              (s, n, 2)         SSMKernelParam; low-rank term (Q = P)
    B              (s, n, 2)         SSMKernelParam; ``s = n_ssm`` (default h), tiled
    C              (c, h, n, 2)      SSMParam; untilded C
    D              (h,)              SSMParam
    output_linear  (h, 2h) / (h, h)
    ============== ================= ==================================================
    """

    name = "S4"

    def __init__(self, d_model: int, config: S4Config = S4Config(), *, dtype="float32", rngs: nnx.Rngs):
        self._init_common(d_model, config, dtype, rngs)
        Lambda, P, B = s4_init(d_model, self.n)
        self._store_A(Lambda)
        self.P = self._ssm_param(_c2r(P))
        self.B = self._ssm_param(_c2r(B))

    def _kernel(self, C, length):
        return s4_kernel(self._log_dt(), self._A(), _r2c(self._tiled(self.P)), _r2c(self._tiled(self.B)), C, length)

    def _discretize(self):
        return s4_discretize(self._log_dt(), self._A(), _r2c(self._tiled(self.P)), _r2c(self._tiled(self.B)))

    def _step_fn(self, u_t, state, dA, dB, C, D=None):
        return s4_step(u_t, state, dA, dB, C, D=D)

    _scan_op = staticmethod(s4_scan)
