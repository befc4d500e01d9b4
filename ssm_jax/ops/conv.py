"""Convolutions of the SSM blocks: the long (FFT) convolution of S4/S4D and the short depthwise
convolutions of Mamba (causal) and Hydra (centered), with step forms for decoding.

Ordering conventions (so that PyTorch checkpoints load without surprises):

* ``fft_conv``: ``y[t] = sum_{j>=0} K[:, j] u[t-j]`` (lag 0 included). With
  ``bidirectional=True`` the kernel is ``(2, h, l)`` = [forward, backward] and the backward
  kernel adds ``sum_{j>=0} K[1, :, j] u[t+1+j]``: strictly future inputs, so ``u[t]`` is counted
  once. This is what state-spaces/s4 computes (``pad(k0, (0, L)) + pad(k1.flip(-1), (L, 0))``).
* ``causal_conv1d``: ``weight (d, k)`` is PyTorch's depthwise ``Conv1d`` weight ``(d, 1, k)``
  squeezed; ``y[t] = bias + sum_i weight[:, i] x[t-k+1+i]``, i.e. ``weight[:, -1]`` multiplies
  ``x[t]`` — as mamba_ssm's ``causal_conv1d_fn``.
* ``conv1d`` (centered, "same"): ``y[t] = bias + sum_i weight[:, i] x[t+i-(k-1)//2]``, which is
  PyTorch ``Conv1d(padding=k//2)`` for odd ``k`` (Hydra uses k = 7); for even ``k`` the extra tap
  goes to the future, like ``padding="SAME"`` in ``lax.conv``.

All accumulate in float32 (float64 under x64 when the inputs are float64) and return ``x.dtype``.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ssm_jax.ops._checks import Dims, check_bool, check_int_array, check_positive_int, check_real, check_segment_ids, to_array
from ssm_jax.ops._prepare import segment_runs
from ssm_jax.ops.registry import Registry
from ssm_jax.typing import Array

__all__ = [
    "CAUSAL_CONV1D_REGISTRY",
    "CONV1D_REGISTRY",
    "FFT_CONV_REGISTRY",
    "canonicalize",
    "causal_conv1d",
    "causal_conv1d_init_state",
    "causal_conv1d_step",
    "conv1d",
    "fft_conv",
]

# One registry per op of this module, named <OP>_REGISTRY (a module with one op calls it REGISTRY).
FFT_CONV_REGISTRY = Registry("fft_conv")
CAUSAL_CONV1D_REGISTRY = Registry("causal_conv1d")
CONV1D_REGISTRY = Registry("conv1d")

_ACTIVATIONS = (None, "silu", "swish")


def _acc_dtype(*dtypes) -> jnp.dtype:
    return jnp.float64 if any(jnp.dtype(d) == jnp.float64 for d in dtypes) else jnp.float32


def _activate(y: Array, activation: str | None) -> Array:
    return jax.nn.silu(y) if activation in ("silu", "swish") else y


def _check_activation(op: str, activation) -> None:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{op}: `activation` must be one of {_ACTIVATIONS}; got {activation!r}")


# --------------------------------------------------------------------------------------------
# fft_conv: long convolution with a kernel as long as the sequence (S4, S4D)
# --------------------------------------------------------------------------------------------


def fft_conv(u, K, *, D=None, bidirectional: bool = False, impl: str = "auto") -> Array:
    """Depthwise convolution of ``u`` with a kernel as long as the sequence, plus ``D∘u``.

    ============ ================ ===========================================================
    argument     shape            meaning
    ============ ================ ===========================================================
    u            (b, l, h)        input (fp32/bf16/fp16)
    K            (h, l)           causal kernel, ``K[:, j]`` multiplies ``u[t-j]``
                 (2, h, l)        with ``bidirectional``: [forward, backward]; the backward
                                  kernel's ``K[1, :, j]`` multiplies ``u[t+1+j]``
    D            (h,)             skip connection (optional)
    returns      (b, l, h)        ``u.dtype``
    ============ ================ ===========================================================

    ``impl``: ``"xla"`` (real FFTs of length 2l, so no circular wrap-around) or ``"direct"``
    (``lax.conv``, O(l²), a reference for tests).
    """
    op = "fft_conv"
    u = to_array(op, "u", u)
    K = to_array(op, "K", K)
    check_real(op, "u", u)
    check_real(op, "K", K)
    bidirectional = check_bool(op, "bidirectional", bidirectional)
    dims = Dims(op)
    _check_transposed(op, u, K, D, 3 if bidirectional else 2)
    dims.bind("u", u, "b l h")
    if not bidirectional:
        dims.bind("K", K, "h l")
    elif K.shape != (2, dims["h"], dims["l"]):
        raise ValueError(
            f"{op}: with bidirectional=True `K` must have shape (2, h, l) = (2, {dims['h']}, {dims['l']}) "
            f"([forward, backward] kernels); got {tuple(K.shape)}"
        )
    D = None if D is None else dims.array("D", D, "h")
    _, fn = FFT_CONV_REGISTRY.resolve(impl, {"u": u, "K": K, "D": D, "bidirectional": bidirectional})
    return fn(u=u, K=K, D=D, bidirectional=bidirectional)


def _check_transposed(op: str, u: Array, K: Array, D, kernel_rank: int) -> None:
    """``u (b, X, Y)`` with ``K (..., X, Y)``: one of them has (l, h) swapped. Binding ``u`` first
    would blame ``K``; name the swap instead, and which argument has it when ``D (h,)`` tells."""
    if not (u.ndim == 3 and K.ndim == kernel_rank and u.shape[1] != u.shape[2] and u.shape[1:] == K.shape[-2:]):
        return
    x, y = u.shape[1:]
    b = u.shape[0]
    d = None if D is None else np.shape(D)
    if d == (x,):  # D says h = x: `u` is (b, h, l)
        raise ValueError(f"{op}: `u` must have shape (b, l, h) = ({b}, {y}, {x}) (channels last; `K` and `D` give "
                         f"h={x}, l={y}); got {tuple(u.shape)}, which is (b, h, l)")
    if d == (y,):  # D says h = y: `K` is (l, h)
        raise ValueError(f"{op}: `K` must have shape (h, l) = ({y}, {x}) (`u` and `D` give l={x}, h={y}); "
                         f"got {tuple(K.shape)}, which is (l, h)")
    raise ValueError(
        f"{op}: `u` {tuple(u.shape)} and `K` {tuple(K.shape)} disagree: `u` read as (b, l, h) has l={x}, h={y}, "
        f"`K` read as (h, l) has h={x}, l={y}. Either `u` is (b, h, l) (the ops are channels last: transpose it "
        f"to ({b}, {y}, {x})) or `K` is (l, h)"
    )


def _bidirectional_kernel(K: Array, l: int) -> Array:
    """The length-2l circular kernel: forward taps at lags 0..l-1, backward at lags -1..-l."""
    k0, k1 = K[0], K[1]
    zeros = jnp.zeros_like(k0)
    # Index l + i holds k1[l-1-i]: lag l+i ≡ -(l-i) (mod 2l), i.e. k1[j] sits at lag -(1+j).
    return jnp.concatenate([k0, zeros], axis=-1) + jnp.concatenate([zeros, k1[:, ::-1]], axis=-1)


@functools.partial(jax.jit, static_argnames=("bidirectional",))
def _fft_conv_xla(*, u, K, D, bidirectional):
    b, l, h = u.shape
    acc = _acc_dtype(u.dtype, K.dtype)
    uf = u.astype(acc)
    Kf = K.astype(acc)
    n_fft = 2 * l  # >= 2l-1: the causal product never wraps; the bidirectional kernel fills it.
    if bidirectional:
        Kf = _bidirectional_kernel(Kf, l)
    k_hat = jnp.fft.rfft(Kf, n=n_fft, axis=-1)  # (h, l+1)
    u_hat = jnp.fft.rfft(uf, n=n_fft, axis=1)  # (b, l+1, h)
    y = jnp.fft.irfft(u_hat * k_hat.T[None], n=n_fft, axis=1)[:, :l]
    if D is not None:
        y = y + uf * D.astype(acc)
    return y.astype(u.dtype)


@functools.partial(jax.jit, static_argnames=("bidirectional",))
def _fft_conv_direct(*, u, K, D, bidirectional):
    """O(l²) depthwise ``lax.conv`` (cross-correlation with a flipped kernel)."""
    b, l, h = u.shape
    acc = _acc_dtype(u.dtype, K.dtype)
    uf = u.astype(acc)
    if bidirectional:
        # Offsets s = t - τ from -(l-1) to l-1: w[s] = K0[s] (s >= 0), K1[-s-1] (s < 0).
        # K1[l-1] would reach u[t+l], always outside the sequence.
        w = jnp.concatenate([K[1, :, : l - 1][:, ::-1], K[0]], axis=-1).astype(acc)
        pad = (l - 1, l - 1)
    else:
        w = K.astype(acc)
        pad = (l - 1, 0)
    # y[t] = sum_s w[s] u[t-s]: lax.conv correlates, so reverse the taps.
    rhs = w[:, ::-1].T[:, None, :]  # (taps, 1, h) in "WIO" layout
    y = lax.conv_general_dilated(
        uf,
        rhs,
        window_strides=(1,),
        padding=[pad],
        dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=h,
        precision=lax.Precision.HIGHEST,
    )
    if D is not None:
        y = y + uf * D.astype(acc)
    return y.astype(u.dtype)


FFT_CONV_REGISTRY.register("xla", _fft_conv_xla, priority=10)  # real FFTs of length 2l
FFT_CONV_REGISTRY.register("direct", _fft_conv_direct, auto_backends=())  # O(l^2) lax.conv reference


# --------------------------------------------------------------------------------------------
# Short depthwise convolutions (Mamba: causal; Hydra: centered)
# --------------------------------------------------------------------------------------------


def canonicalize(x, weight, bias=None, *, segment_ids=None, activation=None, op: str = "causal_conv1d") -> dict:
    """Validate the arguments of the short convolutions (:func:`causal_conv1d`, :func:`conv1d`);
    return the keyword arguments their implementations take.

    Canonical: ``x (b, l, d)`` and ``weight (d, k)`` real, dtypes kept; ``bias (d,)`` or None;
    ``segment_ids (b, l)`` int32 or None; ``activation`` checked. :func:`fft_conv` checks its
    own (transposed, per-channel kernel) arguments.
    """
    x = to_array(op, "x", x)
    weight = to_array(op, "weight", weight)
    check_real(op, "x", x)
    check_real(op, "weight", weight)
    _check_activation(op, activation)
    dims = Dims(op)
    dims.bind("x", x, "b l d")
    if weight.ndim == 3 and weight.shape[1] == 1:
        raise ValueError(
            f"{op}: `weight` must have shape (d, k) = ({dims['d']}, ?); got {tuple(weight.shape)} — "
            "squeeze PyTorch's depthwise (d, 1, k) layout to (d, k)"
        )
    dims.bind("weight", weight, "d k")
    bias = None if bias is None else dims.array("bias", bias, "d")
    return dict(x=x, weight=weight, bias=bias, segment_ids=check_segment_ids(op, dims, segment_ids), activation=activation)


def _shifted_taps(x, weight, bias, segment_ids, left: int):
    """``y[t] = bias + sum_i weight[:, i] x[t+i-left]``, taps masked across segment boundaries.

    k shifted reads of a padded copy; XLA fuses them into one elementwise pass (k is small).
    """
    b, l, d = x.shape
    k = weight.shape[-1]
    acc = _acc_dtype(x.dtype, weight.dtype)
    right = k - 1 - left
    xp = jnp.pad(x.astype(acc), ((0, 0), (left, right), (0, 0)))
    if segment_ids is not None:
        # A segment is a run of equal ids (an id that comes back later starts a new segment, as
        # in the scans): number the runs and compare run numbers. Padding reads zeros from xp,
        # so its run number does not matter.
        run = segment_runs(segment_ids)
        sp = jnp.pad(run, ((0, 0), (left, right)))
    w = weight.astype(acc)
    y = jnp.zeros((b, l, d), acc) if bias is None else jnp.broadcast_to(bias.astype(acc), (b, l, d))
    for i in range(k):
        tap = xp[:, i : i + l] * w[:, i]
        if segment_ids is not None and i != left:
            tap = jnp.where((sp[:, i : i + l] == run)[..., None], tap, 0)
        y = y + tap
    return y


def causal_conv1d(x, weight, bias=None, *, segment_ids=None, activation=None, impl: str = "auto") -> Array:
    """Depthwise causal convolution of width ``k`` (Mamba's short convolution).

    ============ ================ ===========================================================
    argument     shape            meaning
    ============ ================ ===========================================================
    x            (b, l, d)        input
    weight       (d, k)           ``weight[:, -1]`` multiplies ``x[t]``, ``weight[:, 0]``
                                  multiplies ``x[t-k+1]`` (PyTorch ``(d, 1, k)`` squeezed)
    bias         (d,)             optional
    segment_ids  (b, l) int       packed sequences: no tap reaches into an earlier segment
                                  (a segment is a run of equal ids)
    activation   None | "silu"    applied after the bias ("swish" is accepted as an alias)
    returns      (b, l, d)        ``x.dtype``
    ============ ================ ===========================================================
    """
    return _short_conv(CAUSAL_CONV1D_REGISTRY, x, weight, bias, segment_ids, activation, impl)


def conv1d(x, weight, bias=None, *, segment_ids=None, activation=None, impl: str = "auto") -> Array:
    """Depthwise centered ("same") convolution of width ``k`` (Hydra's short convolution).

    ============ ================ ===========================================================
    argument     shape            meaning
    ============ ================ ===========================================================
    x            (b, l, d)        input
    weight       (d, k)           ``weight[:, i]`` multiplies ``x[t+i-(k-1)//2]``
    bias         (d,)             optional
    segment_ids  (b, l) int       packed sequences: no tap crosses a segment boundary
                                  (a segment is a run of equal ids)
    activation   None | "silu"    applied after the bias
    returns      (b, l, d)        ``x.dtype``
    ============ ================ ===========================================================
    """
    return _short_conv(CONV1D_REGISTRY, x, weight, bias, segment_ids, activation, impl)


def _short_conv(registry: Registry, x, weight, bias, segment_ids, activation, impl: str) -> Array:
    """A short convolution op: check the arguments, resolve ``impl`` in the op's ``registry``, run."""
    args = canonicalize(x, weight, bias, segment_ids=segment_ids, activation=activation, op=registry.op)
    _, fn = registry.resolve(impl, {k: v for k, v in args.items() if k != "activation"})
    return fn(**args)


def _taps_impl(left: Callable[[int], int]) -> Callable:
    """The ``"xla"`` implementation of a short convolution whose tap ``weight[:, left(k)]``
    multiplies ``x[t]``: k fused shifted multiply-adds."""

    @functools.partial(jax.jit, static_argnames=("activation",))
    def impl(*, x, weight, bias, segment_ids, activation):
        y = _shifted_taps(x, weight, bias, segment_ids, left=left(weight.shape[-1]))
        return _activate(y, activation).astype(x.dtype)

    return impl


CAUSAL_CONV1D_REGISTRY.register("xla", _taps_impl(lambda k: k - 1), priority=10)
CONV1D_REGISTRY.register("xla", _taps_impl(lambda k: (k - 1) // 2), priority=10)


# --------------------------------------------------------------------------------------------
# Step form of the causal convolution (decoding)
# --------------------------------------------------------------------------------------------


def causal_conv1d_step(x_t, conv_state, weight, bias=None, *, activation=None) -> tuple[Array, Array]:
    """One decoding step of :func:`causal_conv1d`.

    ============ ================ ===========================================================
    argument     shape            meaning
    ============ ================ ===========================================================
    x_t          (b, d)           input at this step
    conv_state   (b, d, k-1)      the previous k-1 inputs, oldest first; or ``(b, d, k)``
                                  (mamba_ssm's layout, whose oldest entry is shifted out)
    weight       (d, k)           as in :func:`causal_conv1d`
    bias         (d,)             optional
    returns      y_t (b, d), new conv_state (same shape as ``conv_state``)
    ============ ================ ===========================================================

    Folding this over a sequence from a zero state equals :func:`causal_conv1d`.
    """
    op = "causal_conv1d_step"
    x_t = to_array(op, "x_t", x_t)
    conv_state = to_array(op, "conv_state", conv_state)
    weight = to_array(op, "weight", weight)
    check_real(op, "x_t", x_t)
    check_real(op, "conv_state", conv_state)
    check_real(op, "weight", weight)
    _check_activation(op, activation)
    dims = Dims(op)
    dims.bind("x_t", x_t, "b d")
    dims.bind("weight", weight, "d k")
    b, d, k = dims["b"], dims["d"], dims["k"]
    if conv_state.shape not in ((b, d, k - 1), (b, d, k)):
        raise ValueError(
            f"{op}: `conv_state` must have shape (b, d, k-1) = ({b}, {d}, {k - 1}) or (b, d, k) = "
            f"({b}, {d}, {k}); got {tuple(conv_state.shape)}"
        )
    bias = None if bias is None else dims.array("bias", bias, "d")
    acc = _acc_dtype(x_t.dtype, weight.dtype)
    full = conv_state.shape[-1] == k
    window = jnp.concatenate([conv_state[..., 1:] if full else conv_state, x_t[..., None].astype(conv_state.dtype)], axis=-1)
    y = jnp.sum(window.astype(acc) * weight.astype(acc), axis=-1)
    if bias is not None:
        y = y + bias.astype(acc)
    y = _activate(y, activation).astype(x_t.dtype)
    new_state = window if full else window[..., 1:]
    return y, new_state


def causal_conv1d_init_state(x, width: int, *, lengths=None, state_len: int | None = None) -> Array:
    """The ``conv_state`` after reading a prefix ``x``, so prefill can hand off to the step.

    ============ ================ ===========================================================
    argument     shape            meaning
    ============ ================ ===========================================================
    x            (b, l, d)        the prefix (its inputs to the convolution)
    width        int              the convolution width k
    lengths      (b,) int         valid length of each row when right-padded (default l)
    state_len    k-1 or k         state layout, see :func:`causal_conv1d_step` (default k-1)
    returns      (b, d, state_len) the last ``state_len`` inputs, oldest first, zero-filled
                                  where the prefix is shorter
    ============ ================ ===========================================================
    """
    op = "causal_conv1d_init_state"
    x = to_array(op, "x", x)
    check_real(op, "x", x)
    k = check_positive_int(op, "width", width)
    dims = Dims(op)
    dims.bind("x", x, "b l d")
    s = k - 1 if state_len is None else state_len
    if s not in (k - 1, k):
        raise ValueError(f"{op}: `state_len` must be width-1 = {k - 1} or width = {k}; got {state_len!r}")
    b, l, d = x.shape
    xp = jnp.pad(x, ((0, 0), (s, 0), (0, 0)))  # zero history before the prefix
    if lengths is None:
        window = xp[:, l : l + s]
    else:
        lengths = dims.array("lengths", lengths, "b", check=check_int_array)
        # Row r's last s inputs are x[r, len-s : len], i.e. xp[r, len : len+s].
        idx = lengths[:, None] + jnp.arange(s)[None, :]
        window = jnp.take_along_axis(xp, idx[..., None], axis=1)
    return jnp.swapaxes(window, 1, 2)
