"""LayerNorm and the padding-aware BatchNorm against float64 NumPy oracles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm_jax import nn
from tests.numerics import assert_close, check_directional_derivative

E = 6
EPS = 1e-5


def layer_norm_oracle(x, w, b, eps=EPS):
    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def batch_stats_oracle(x, mask):
    """Per-channel mean, biased and unbiased variance over the valid positions, in float64."""
    valid = np.asarray(x, np.float64)[np.asarray(mask, bool)]  # (n, e)
    n = valid.shape[0]
    mean = valid.mean(0)
    var = ((valid - mean) ** 2).mean(0)
    return mean, var, var * n / (n - 1)


def _randomized(norm, rng):
    """``norm`` with weight and bias moved off their ones / zeros init, so their use is tested."""
    norm.weight[...] = jnp.asarray(rng.uniform(0.5, 1.5, E), jnp.float32)
    norm.bias[...] = jnp.asarray(rng.standard_normal(E), jnp.float32)
    return norm


def _example(rng, b=3, l=7, lengths=(7, 4, 2)):
    # A large common offset: a one-pass E[x^2] - E[x]^2 variance would lose most digits here.
    x = 50.0 + rng.standard_normal((b, l, E)) * rng.uniform(0.5, 3.0, E)
    mask = np.arange(l)[None, :] < np.asarray(lengths)[:, None]
    return x.astype(np.float32), mask


def test_layer_norm_matches_oracle(rng):
    norm = _randomized(nn.LayerNorm(E), rng)
    x = (rng.standard_normal((2, 5, E)) * 3 + 1).astype(np.float32)
    assert_close(norm(jnp.asarray(x)), layer_norm_oracle(x, norm.weight[...], norm.bias[...]), name="layer norm")
    assert norm(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.float32  # the output dtype is the layer's


def test_batch_norm_train_mode_uses_the_valid_positions_only(rng):
    norm = _randomized(nn.BatchNorm(E), rng)
    x, mask = _example(rng)
    x_pad = x.copy()
    x_pad[~mask] = np.nan  # padding that reached the statistics would poison every output
    y = np.asarray(norm(jnp.asarray(x_pad), mask=jnp.asarray(mask)))
    mean, var, unbiased = batch_stats_oracle(x, mask)
    w, b = np.asarray(norm.weight[...]), np.asarray(norm.bias[...])
    expected = (x - mean) / np.sqrt(var + EPS) * w + b
    assert_close(y[mask], expected[mask], name="valid outputs")
    # Running averages: r <- 0.9 r + 0.1 s from (0, 1), with the unbiased variance.
    assert_close(norm.mean[...], 0.1 * mean, name="running mean")
    assert_close(norm.var[...], 0.9 + 0.1 * unbiased, name="running var")
    assert norm.mean[...].dtype == norm.var[...].dtype == jnp.float32


def test_batch_norm_without_mask_averages_every_position(rng):
    norm = nn.BatchNorm(E, momentum=0.5)
    x, _ = _example(rng)
    y = norm(jnp.asarray(x))
    mean, var, unbiased = batch_stats_oracle(x, np.ones(x.shape[:-1], bool))
    assert_close(y, (x - mean) / np.sqrt(var + EPS), name="output")
    assert_close(norm.var[...], 0.5 + 0.5 * unbiased, name="running var")


def test_batch_norm_eval_mode_uses_the_running_averages_and_keeps_them(rng):
    norm = _randomized(nn.BatchNorm(E), rng)
    norm.mean[...] = jnp.asarray(rng.standard_normal(E), jnp.float32)
    norm.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, E), jnp.float32)
    before = (np.asarray(norm.mean[...]), np.asarray(norm.var[...]))
    norm.eval()
    assert norm.use_running_average
    x, mask = _example(rng)
    y = norm(jnp.asarray(x), mask=jnp.asarray(mask))
    w, b = np.asarray(norm.weight[...]), np.asarray(norm.bias[...])
    assert_close(y, (x - before[0]) / np.sqrt(before[1] + EPS) * w + b, name="eval output")
    np.testing.assert_array_equal(norm.mean[...], before[0])
    np.testing.assert_array_equal(norm.var[...], before[1])
    # The call argument overrides the mode, as nnx.BatchNorm's does.
    norm(jnp.asarray(x), mask=jnp.asarray(mask), use_running_average=False)
    assert not np.array_equal(norm.mean[...], before[0])


def test_train_and_eval_reach_a_nested_batch_norm():
    class Net(nnx.Module):
        def __init__(self):
            self.inner = nnx.List([nn.BatchNorm(E)])

    net = Net()
    assert not net.inner[0].use_running_average
    net.eval()
    assert net.inner[0].use_running_average
    net.train()
    assert not net.inner[0].use_running_average
    assert nnx.view(net, use_running_average=True).inner[0].use_running_average


def test_batch_norm_of_a_batch_without_valid_positions_keeps_its_averages(rng):
    norm = nn.BatchNorm(E)
    x, _ = _example(rng)
    norm(jnp.asarray(x), mask=jnp.zeros(x.shape[:-1], bool))
    np.testing.assert_array_equal(norm.mean[...], np.zeros(E))
    np.testing.assert_array_equal(norm.var[...], np.ones(E))


def test_batch_norm_statistics_are_float32_for_bfloat16_inputs(rng):
    norm = nn.BatchNorm(E, dtype="bfloat16")
    x, mask = _example(rng)
    xb = jnp.asarray(x, jnp.bfloat16)
    y = norm(xb, mask=jnp.asarray(mask))
    assert y.dtype == jnp.bfloat16
    # The oracle over the bf16-rounded inputs: only the output's rounding separates them (bf16
    # statistics of values near 50 would be off by whole units).
    x_rounded = np.asarray(xb, np.float64)
    mean, var, _ = batch_stats_oracle(x_rounded, mask)
    assert_close(np.asarray(y, np.float32)[mask], ((x_rounded - mean) / np.sqrt(var + EPS))[mask], tol=1e-2, name="bf16")
    assert_close(norm.mean[...], 0.1 * mean, name="running mean from bf16 inputs")


def test_batch_norm_bad_arguments_name_them():
    norm = nn.BatchNorm(E)
    with pytest.raises(ValueError, match=r"BatchNorm: `mask` must have shape x.shape\[:-1\] = \(2, 3\); got \(2, 4\)"):
        norm(jnp.ones((2, 3, E)), mask=jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match=r"BatchNorm: `x` must have shape \(\.\.\., 6\)"):
        norm(jnp.ones((2, 3, E + 1)))
    with pytest.raises(ValueError, match=r"BatchNorm: `momentum` must be a float in \[0, 1\); got 1.0"):
        nn.BatchNorm(E, momentum=1.0)


def test_batch_norm_gradients_match_finite_differences(rng):
    """Train mode: the gradient flows through the batch statistics (masked) as well as ``x``."""
    with jax.enable_x64(True):
        norm = _randomized(nn.BatchNorm(E, dtype="float64"), rng)
        graphdef, params, stats = nnx.split(norm, nnx.Param, nnx.BatchStat)
        params = jax.tree.map(lambda v: v.astype(jnp.float64), params)
        x, mask = _example(rng, b=2, l=4, lengths=(4, 2))
        x, mask = jnp.asarray(x, jnp.float64), jnp.asarray(mask)
        w = jnp.asarray(rng.standard_normal(x.shape)) * mask[..., None]

        def loss(p, x):
            return jnp.sum(nnx.merge(graphdef, p, stats, copy=True)(x, mask=mask) * w)

        _, g_x = check_directional_derivative(loss, params, x, rng, x_mask=mask)
        # Padded inputs have no influence: their gradient is exactly zero.
        assert float(jnp.max(jnp.abs(g_x[~mask]))) == 0.0
