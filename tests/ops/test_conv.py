"""ssm_jax.ops.conv against float64 NumPy oracles: fft_conv (causal, bidirectional, D), the
causal depthwise conv with its step and prefill hand-off, the centered conv, segment ids,
gradients (finite differences in float64, fp32 against the float64 reference), bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.ops import causal_conv1d, causal_conv1d_init_state, causal_conv1d_step, conv1d, fft_conv
from tests.numerics import assert_close, fd_grad

# --------------------------------------------------------------------------------------------
# Oracles (float64 NumPy, straight from the definitions)
# --------------------------------------------------------------------------------------------


def fft_conv_oracle(u, K, D=None, bidirectional=False):
    """O(l²) loops: y[t] = Σ_j K0[j] u[t-j] (+ Σ_j K1[j] u[t+1+j]) + D u[t]."""
    u = np.asarray(u, np.float64)
    K = np.asarray(K, np.float64)
    b, l, h = u.shape
    K0 = K[0] if bidirectional else K
    y = np.zeros((b, l, h))
    for t in range(l):
        for j in range(t + 1):
            y[:, t] += K0[:, j] * u[:, t - j]
        if bidirectional:
            for j in range(l - 1 - t):
                y[:, t] += K[1][:, j] * u[:, t + 1 + j]
    if D is not None:
        y += np.asarray(D, np.float64) * u
    return y


def _runs(segment_ids, b, l):
    if segment_ids is None:
        return np.zeros((b, l), int)
    s = np.asarray(segment_ids)
    return np.concatenate([np.zeros((b, 1), int), np.cumsum(s[:, 1:] != s[:, :-1], axis=1)], axis=1)


def short_conv_oracle(x, weight, bias=None, segment_ids=None, activation=None, *, centered=False):
    """PyTorch Conv1d semantics per channel: cross-correlation of the zero-padded input with
    ``weight`` (left padding k-1 for causal, (k-1)//2 for centered), restricted to the segment."""
    x = np.asarray(x, np.float64)
    w = np.asarray(weight, np.float64)
    b, l, d = x.shape
    k = w.shape[1]
    left = (k - 1) // 2 if centered else k - 1
    runs = _runs(segment_ids, b, l)
    y = np.zeros((b, l, d))
    for bi in range(b):
        for t in range(l):
            for i in range(k):
                s = t + i - left
                if 0 <= s < l and runs[bi, s] == runs[bi, t]:
                    y[bi, t] += w[:, i] * x[bi, s]
    if bias is not None:
        y += np.asarray(bias, np.float64)
    if activation == "silu":
        y = y / (1 + np.exp(-y))
    return y


# --------------------------------------------------------------------------------------------
# fft_conv
# --------------------------------------------------------------------------------------------


def _fft_inputs(rng, b=2, l=11, h=3, bidirectional=False):
    u = rng.standard_normal((b, l, h))
    K = rng.standard_normal((2, h, l) if bidirectional else (h, l)) * np.exp(-0.2 * np.arange(l))
    D = rng.standard_normal(h)
    return u, K, D


@pytest.mark.parametrize("impl", ["xla", "direct"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_D", [False, True])
def test_fft_conv_matches_oracle(rng, impl, bidirectional, with_D):
    u, K, D = _fft_inputs(rng, bidirectional=bidirectional)
    D = D if with_D else None
    want = fft_conv_oracle(u, K, D, bidirectional)
    with jax.enable_x64(True):
        got = fft_conv(u, K, D=D, bidirectional=bidirectional, impl=impl)
        assert got.dtype == jnp.float64
        assert_close(got, want, name=f"fft_conv[{impl}] float64")
    f32 = lambda a: None if a is None else np.asarray(a, np.float32)  # noqa: E731
    got32 = fft_conv(f32(u), f32(K), D=f32(D), bidirectional=bidirectional, impl=impl)
    assert got32.dtype == jnp.float32
    assert_close(got32, want, tol=1e-5, name=f"fft_conv[{impl}] float32")


def test_fft_conv_long_is_not_circular(rng):
    # An impulse at the last step with a kernel of all ones: a length-l circular convolution
    # would wrap it onto every earlier output; the linear one only reaches y[-1].
    l, h = 64, 2
    u = np.zeros((1, l, h), np.float32)
    u[0, -1] = 1.0  # the last input may only reach y[-1] causally
    K = np.ones((h, l), np.float32)
    y = np.asarray(fft_conv(u, K))
    want = np.zeros((l, h))
    want[-1] = 1.0
    assert_close(y[0], want, tol=1e-6, name="no wrap-around")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_fft_conv_low_precision_inputs(rng, dtype):
    u, K, D = _fft_inputs(rng, l=32, h=4)
    u_lp = jnp.asarray(u, dtype)
    got = fft_conv(u_lp, np.float32(K), D=np.float32(D))
    assert got.dtype == dtype
    want = fft_conv_oracle(np.asarray(u_lp, np.float64), K, D)
    assert_close(got, want, name=f"fft_conv {jnp.dtype(dtype).name}")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_fft_conv_gradients(rng, bidirectional):
    u, K, D = _fft_inputs(rng, b=1, l=6, h=2, bidirectional=bidirectional)
    w = rng.standard_normal(u.shape)  # a random cotangent
    oracle_loss = lambda u_, K_, D_: float(np.sum(w * fft_conv_oracle(u_, K_, D_, bidirectional)))  # noqa: E731

    def loss(impl, u_, K_, D_):
        return jnp.sum(w * fft_conv(u_, K_, D=D_, bidirectional=bidirectional, impl=impl))

    with jax.enable_x64(True):
        g = jax.grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2))(u, K, D)
        g_ref = jax.grad(lambda *a: loss("direct", *a), argnums=(0, 1, 2))(u, K, D)
    fd = (
        fd_grad(lambda v: oracle_loss(v, K, D), u),
        fd_grad(lambda v: oracle_loss(u, v, D), K),
        fd_grad(lambda v: oracle_loss(u, K, v), D),
    )
    for name, gi, gr, gf in zip(("u", "K", "D"), g, g_ref, fd):
        assert_close(gi, gf, tol=1e-8, name=f"d/d{name} xla vs finite differences")
        assert_close(gr, gf, tol=1e-8, name=f"d/d{name} direct vs finite differences")
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    g32 = jax.grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2))(f32(u), f32(K), f32(D))
    for name, gi, gr in zip(("u", "K", "D"), g32, g_ref):
        assert_close(gi, gr, tol=1e-5, name=f"d/d{name} fp32 xla vs float64 direct")


def test_fft_conv_bad_input(rng):
    u, K, D = _fft_inputs(rng)
    with pytest.raises(ValueError, match=r"fft_conv: `K` must have shape \(h, l\) = \(3, 11\); got \(3, 10\)"):
        fft_conv(u, K[:, :10])
    with pytest.raises(ValueError, match=r"fft_conv: with bidirectional=True `K` must have shape \(2, h, l\)"):
        fft_conv(u, K, bidirectional=True)
    with pytest.raises(ValueError, match=r"fft_conv: `u` must have shape \(b, l, h\)"):
        fft_conv(u[0], K)
    # A transposed `u` (b, h, l): named as such, not blamed on `K` (issue 19).
    with pytest.raises(ValueError, match=r"fft_conv: `u` must have shape \(b, l, h\) = \(2, 11, 3\) .*got \(2, 3, 11\), which is \(b, h, l\)"):
        fft_conv(np.swapaxes(u, 1, 2), K, D=D)
    with pytest.raises(ValueError, match=r"fft_conv: `K` must have shape \(h, l\) = \(3, 11\) .*got \(11, 3\), which is \(l, h\)"):
        fft_conv(u, K.T, D=D)
    with pytest.raises(ValueError, match=r"fft_conv: `u` \(2, 3, 11\) and `K` \(3, 11\) disagree.*Either `u` is \(b, h, l\)"):
        fft_conv(np.swapaxes(u, 1, 2), K)
    with pytest.raises(ValueError, match=r"fft_conv: `D` must have shape \(h\) = \(3\)"):
        fft_conv(u, K, D=np.ones(4))
    with pytest.raises(TypeError, match="fft_conv: `u` must be real"):
        fft_conv(u.astype(np.complex64), K)
    with pytest.raises(TypeError, match="fft_conv: `bidirectional` must be a bool"):
        fft_conv(u, K, bidirectional=1)
    with pytest.raises(ValueError, match="fft_conv: unknown impl='fast'"):
        fft_conv(u, K, impl="fast")


# --------------------------------------------------------------------------------------------
# causal_conv1d and conv1d
# --------------------------------------------------------------------------------------------


def _short_inputs(rng, b=2, l=13, d=3, k=4):
    x = rng.standard_normal((b, l, d))
    w = rng.standard_normal((d, k))
    bias = rng.standard_normal(d)
    # Random boundaries; ids are not monotone (an id that comes back is a new segment).
    seg = (np.cumsum(rng.random((b, l)) < 0.3, axis=1) % 2).astype(np.int32)
    return x, w, bias, seg


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("centered,k", [(False, 4), (False, 1), (True, 7), (True, 4)])
def test_short_conv_matches_oracle(rng, activation, with_bias, centered, k):
    x, w, bias, _ = _short_inputs(rng, k=k)
    bias = bias if with_bias else None
    fn = conv1d if centered else causal_conv1d
    want = short_conv_oracle(x, w, bias, activation=activation, centered=centered)
    with jax.enable_x64(True):
        assert_close(fn(x, w, bias, activation=activation), want, name=f"{fn.__name__} float64")
    f32 = lambda a: None if a is None else np.asarray(a, np.float32)  # noqa: E731
    got = fn(f32(x), f32(w), f32(bias), activation=activation)
    assert got.dtype == jnp.float32
    assert_close(got, want, name=f"{fn.__name__} float32")


def test_causal_conv1d_ordering_is_mamba_ssm():
    # weight[:, -1] multiplies x[t], weight[:, 0] multiplies x[t-k+1].
    x = np.zeros((1, 5, 1), np.float32)
    x[0, 2, 0] = 1.0
    w = np.array([[1.0, 2.0, 3.0]], np.float32)
    y = np.asarray(causal_conv1d(x, w))[0, :, 0]
    np.testing.assert_array_equal(y, [0, 0, 3, 2, 1])
    y = np.asarray(conv1d(x, w))[0, :, 0]  # centered: weight[:, 1] on x[t]
    np.testing.assert_array_equal(y, [0, 3, 2, 1, 0])


@pytest.mark.parametrize("centered", [False, True])
def test_segment_ids_equal_per_segment_runs(rng, centered):
    x, w, bias, seg = _short_inputs(rng, k=5)
    fn = conv1d if centered else causal_conv1d
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    got = np.asarray(fn(f32(x), f32(w), f32(bias), segment_ids=seg, activation="silu"))
    assert_close(got, short_conv_oracle(x, w, bias, seg, "silu", centered=centered), name="vs oracle")
    # Each run of equal ids convolved on its own (as a sequence of its own, zero-padded to l so
    # that all of them go in one batch) gives the same values.
    runs = _runs(seg, *seg.shape)
    pieces = [(bi, np.flatnonzero(runs[bi] == r)) for bi in range(x.shape[0]) for r in np.unique(runs[bi])]
    alone = np.zeros((len(pieces), *x.shape[1:]), np.float32)
    for i, (bi, idx) in enumerate(pieces):
        alone[i, : len(idx)] = x[bi, idx]
    alone = np.asarray(fn(alone, f32(w), f32(bias), activation="silu"))
    for i, (bi, idx) in enumerate(pieces):
        assert_close(got[bi, idx], alone[i, : len(idx)], name=f"row {bi} positions {idx.tolist()}")


@pytest.mark.parametrize("full_state", [False, True])
def test_step_folded_equals_parallel_and_prefill_hands_off(rng, full_state):
    x, w, bias, _ = _short_inputs(rng, k=4)
    x, w, bias = (np.asarray(a, np.float32) for a in (x, w, bias))
    b, l, d = x.shape
    k = w.shape[1]
    want = np.asarray(causal_conv1d(x, w, bias, activation="silu"))
    state = np.zeros((b, d, k if full_state else k - 1), np.float32)
    step = jax.jit(lambda xt, s: causal_conv1d_step(xt, s, w, bias, activation="silu"))
    ys = []
    for t in range(l):
        y_t, state = step(x[:, t], state)
        ys.append(y_t)
    assert_close(np.stack(ys, 1), want, name="step folded vs parallel")
    # Prefill the first m inputs, then step: the suffix equals the parallel output's suffix.
    for m in (2, 7):  # shorter and longer than k-1
        state = causal_conv1d_init_state(x[:, :m], k, state_len=k if full_state else None)
        assert state.shape == (b, d, k if full_state else k - 1)
        for t in range(m, l):
            y_t, state = step(x[:, t], state)
            assert_close(y_t, want[:, t], name=f"prefill {m} then step at t={t}")


def test_init_state_with_lengths(rng):
    x, *_ = _short_inputs(rng, k=4)
    lengths = np.array([5, 2], np.int32)
    state = np.asarray(causal_conv1d_init_state(x, 4, lengths=lengths))
    np.testing.assert_array_equal(state[0], x[0, 2:5].T.astype(state.dtype))
    np.testing.assert_array_equal(state[1], np.concatenate([np.zeros((3, 1)), x[1, :2].T], axis=1).astype(state.dtype))


@pytest.mark.parametrize("centered", [False, True])
def test_short_conv_gradients(rng, centered):
    x, w, bias, seg = _short_inputs(rng, b=1, l=7, d=2, k=3)
    fn = conv1d if centered else causal_conv1d
    ct = rng.standard_normal(x.shape)

    def oracle_loss(x_, w_, b_):
        return float(np.sum(ct * short_conv_oracle(x_, w_, b_, seg, "silu", centered=centered)))

    def loss(x_, w_, b_):
        return jnp.sum(ct * fn(x_, w_, b_, segment_ids=seg, activation="silu"))

    with jax.enable_x64(True):
        g64 = jax.grad(loss, argnums=(0, 1, 2))(x, w, bias)
    fd = (fd_grad(lambda v: oracle_loss(v, w, bias), x), fd_grad(lambda v: oracle_loss(x, v, bias), w),
          fd_grad(lambda v: oracle_loss(x, w, v), bias))  # fmt: skip
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    g32 = jax.grad(loss, argnums=(0, 1, 2))(f32(x), f32(w), f32(bias))
    for name, a, b_, c in zip(("x", "weight", "bias"), g64, fd, g32):
        assert_close(a, b_, tol=1e-8, name=f"d/d{name} vs finite differences")
        assert_close(c, a, tol=1e-5, name=f"d/d{name} fp32 vs float64")


def test_short_conv_low_precision(rng):
    x, w, bias, seg = _short_inputs(rng, l=32, d=8)
    xb = jnp.asarray(x, jnp.bfloat16)
    got = causal_conv1d(xb, np.float32(w), np.float32(bias), segment_ids=seg, activation="silu")
    assert got.dtype == jnp.bfloat16
    assert_close(got, short_conv_oracle(np.asarray(xb, np.float64), w, bias, seg, "silu"), name="bf16")


def test_short_conv_bad_input(rng):
    x, w, bias, seg = _short_inputs(rng)
    with pytest.raises(ValueError, match=r"causal_conv1d: `weight` must have shape \(d, k\) = \(3, \?\); got \(3, 1, 4\) — squeeze"):
        causal_conv1d(x, w[:, None, :])
    with pytest.raises(ValueError, match=r"conv1d: `weight` must have shape \(d, k\) = \(3, \?\); got \(2, 4\)"):
        conv1d(x, w[:2])
    with pytest.raises(ValueError, match=r"causal_conv1d: `bias` must have shape \(d\) = \(3\)"):
        causal_conv1d(x, w, bias[:2])
    with pytest.raises(ValueError, match=r"causal_conv1d: `segment_ids` must have shape \(b, l\) = \(2, 13\)"):
        causal_conv1d(x, w, segment_ids=seg[:, :5])
    with pytest.raises(TypeError, match="causal_conv1d: `segment_ids` must have an integer dtype"):
        causal_conv1d(x, w, segment_ids=seg.astype(np.float32))
    with pytest.raises(ValueError, match="causal_conv1d: `activation` must be one of"):
        causal_conv1d(x, w, activation="relu")
    with pytest.raises(ValueError, match=r"causal_conv1d_step: `conv_state` must have shape \(b, d, k-1\) = \(2, 3, 3\) or \(b, d, k\) = \(2, 3, 4\); got \(2, 3, 2\)"):
        causal_conv1d_step(x[:, 0], np.zeros((2, 3, 2)), w)
    with pytest.raises(ValueError, match=r"causal_conv1d_init_state: `state_len` must be width-1 = 3 or width = 4; got 2"):
        causal_conv1d_init_state(x, 4, state_len=2)
    with pytest.raises(ValueError, match="causal_conv1d_init_state: `width` must be a positive int; got 0"):
        causal_conv1d_init_state(x, 0)
