"""Parameter counts and FLOPs-per-token estimates, computed from a config alone (no model built).

The counts are written out per layer from the layer definitions in :mod:`ssm_jax.nn`; the tests
check them against the parameters of constructed models.
"""

from __future__ import annotations

import math

from ssm_jax.models.config import LanguageModelConfig, SequenceClassifierConfig

__all__ = ["param_count", "flops_per_token", "mixer_params"]


def _mixer_params(kind: str, c) -> tuple[int, int]:
    """``(parameters, of which matmul weights)`` of one mixer in the stack config ``c``."""
    e = c.d_model
    if kind == "mamba":
        m = c.mamba
        d, n, k, r = m.expand * e, m.d_state, m.d_conv, m.resolved_dt_rank(e)
        matmul = e * 2 * d + d * (r + 2 * n) + r * d + d * e
        other = d * k + (d if m.conv_bias else 0) + d + d * n + d  # conv, dt bias, A_log, D
        other += (2 * d + e) if m.bias else 0
        return matmul + other, matmul
    if kind in ("mamba2", "hydra"):
        m = c.mamba2 if kind == "mamba2" else c.hydra
        d, n, g, k = m.expand * e, m.d_state, m.ngroups, m.d_conv
        h = d // m.headdim
        ways = 1 if kind == "mamba2" else 2  # Hydra: forward and backward B, C, dt
        in_out = 2 * d + ways * 2 * g * n + ways * h
        conv = d + ways * 2 * g * n
        matmul = e * in_out + d * e + (d * h if kind == "hydra" else 0)  # + fc_D
        D = d if (kind == "mamba2" and m.D_has_hdim) else h
        other = conv * k + (conv if m.conv_bias else 0) + h + h + D + d  # conv, dt_bias, A_log, D, norm
        other += (in_out + e) if m.bias else 0
        return matmul + other, matmul
    if kind == "attention":
        a = c.attention
        inner = a.num_heads * (a.head_dim or e // a.num_heads)
        matmul = 4 * e * inner
        return matmul, matmul
    if kind in ("s4", "s4d"):
        s = c.s4 if kind == "s4" else c.s4d
        n = s.d_state // 2
        channels = 2 if s.bidirectional else 1
        out = 2 * e if s.postact == "glu" else e
        matmul = e * out
        copies = e if s.n_ssm is None else s.n_ssm  # A, B, P tiled over the channels
        kernel = e + 2 * copies * n + 2 * copies * n + channels * 2 * e * n  # dt, A (re, im), B, C
        if kind == "s4":
            kernel += 2 * copies * n  # P
        return matmul + out + kernel + e, matmul  # + output bias, D
    raise ValueError(f"mixer_params: unknown mixer {kind!r}")


def mixer_params(kind: str, config) -> int:
    """Parameters of one ``kind`` mixer layer of the model ``config``."""
    return _mixer_params(kind, config)[0]


def _norm_params(c) -> int:
    """Parameters of one norm: RMSNorm's weight; LayerNorm's and BatchNorm's weight and bias (a
    BatchNorm's running statistics are not parameters)."""
    return c.d_model if c.norm == "rms" else 2 * c.d_model


def _block_params(kind: str, c) -> tuple[int, int]:
    total, matmul = _mixer_params(kind, c)
    total += _norm_params(c)
    if c.d_intermediate > 0:
        mlp = 3 * c.d_model * c.d_intermediate
        total += _norm_params(c) + mlp
        matmul += mlp
    return total, matmul


def _counts(config) -> tuple[int, int]:
    """``(total parameters, matmul weights used per token incl. the output head)``."""
    c = config
    e, v = c.d_model, c.padded_vocab_size
    encoder = 2 * e if getattr(c, "encoder", "embed") == "linear" else v * e  # Linear(1, e) or the embedding
    total, matmul = encoder + (_norm_params(c) if c.prenorm else 0), 0  # norm_f: none in post-norm
    for kind in c.mixers:
        t, m = _block_params(kind, c)
        total += t
        matmul += m
    if isinstance(c, LanguageModelConfig):
        matmul += e * v
        if not c.tie_embeddings:
            total += e * v
    elif isinstance(c, SequenceClassifierConfig):
        head = e * c.num_classes + c.num_classes
        if c.dual_encoder:
            head += 4 * e * e + e
        total += head
    else:
        raise TypeError(f"param_count: expected a LanguageModelConfig or SequenceClassifierConfig; got {type(c).__name__}")
    return total, matmul


def param_count(config) -> int:
    """Number of parameters (every ``nnx.Param``, embeddings included) of the model ``config`` builds."""
    return _counts(config)[0]


def _mixer_extra_flops(kind: str, c, seq_len: int) -> float:
    """Forward FLOPs per token of a mixer beyond its projections (scans, convs, attention scores)."""
    e = c.d_model
    if kind == "mamba":
        m = c.mamba
        d = m.expand * e
        # conv: 2 d k; selective scan: ~9 d n (discretize, update, readout; Mamba paper app. D).
        return 2 * d * m.d_conv + 9 * d * m.d_state
    if kind in ("mamba2", "hydra"):
        m = c.mamba2 if kind == "mamba2" else c.hydra
        d, n, g = m.expand * e, m.d_state, m.ngroups
        h, p = d // m.headdim, m.headdim
        q = min(m.chunk_size, seq_len)
        ways = 1 if kind == "mamba2" else 2
        conv = 2 * (d + ways * 2 * g * n) * m.d_conv
        # Chunked SSD per token: C B^T within the chunk (2 q g n), its product with x (2 q h p),
        # chunk states and their readout (2 h p n each) — Mamba-2 paper section 6.
        ssd = 2 * q * g * n + 2 * q * h * p + 4 * h * p * n
        return conv + ways * ssd
    if kind == "attention":
        a = c.attention
        inner = a.num_heads * (a.head_dim or e // a.num_heads)
        return 4 * seq_len * inner  # QK^T and AV over the full context (PaLM's convention)
    if kind in ("s4", "s4d"):
        s = c.s4 if kind == "s4" else c.s4d
        n = s.d_state // 2
        ways = 2 if s.bidirectional else 1
        # rfft of u and irfft of the product at length 2l (~5 N log2 N real FLOPs each, halved
        # for real transforms) plus the kernel's complex Vandermonde/Cauchy sums (8 per mode).
        fft = 2 * 5 * math.log2(2 * seq_len)
        return e * (fft + ways * 8 * n)
    raise ValueError(f"flops_per_token: unknown mixer {kind!r}")


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward) at sequence length ``seq_len``.

    Forward = 2 x (matmul weights, the output head included) + each mixer's own work
    (:func:`_mixer_extra_flops`). Embedding lookups, norms and elementwise ops are not counted.
    Use for MFU: ``flops_per_token * tokens_per_second / peak_flops``.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"flops_per_token: `seq_len` must be a positive int; got {seq_len!r}")
    _, matmul = _counts(config)
    forward = 2.0 * matmul + sum(_mixer_extra_flops(kind, config, seq_len) for kind in config.mixers)
    return 3.0 * forward
