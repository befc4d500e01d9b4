"""S4/S4D options of state-spaces/s4's LRA recipes: ``dt_transform="softplus"`` and tied SSMs
(``n_ssm``), against the float64 oracles (the parameters re-expressed in their per-channel,
log-dt form by NumPy) and through their gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm_jax import nn
from tests.nn import oracles
from tests.nn.test_layers import E, _x, call
from tests.numerics import assert_close

KERNEL = ("log_A_real", "A_imag", "B", "P")


def _layer(kind, **overrides):
    cls, cfg = (nn.S4, nn.S4Config) if kind == "s4" else (nn.S4D, nn.S4DConfig)
    return cls(E, cfg(d_state=6, **overrides), rngs=nnx.Rngs(0))


def _per_channel(p: dict, *, softplus: bool) -> dict:
    """The oracle's parameters: ``log_dt`` and one (A, B, P) row per channel."""
    out = dict(p)
    if softplus:
        out["log_dt"] = np.log(oracles.softplus(out.pop("inv_dt")))
    for name in KERNEL:
        if name in out:
            out[name] = np.tile(out[name], (E // out[name].shape[0],) + (1,) * (out[name].ndim - 1))
    return out


@pytest.mark.parametrize("kind", ["s4", "s4d"])
@pytest.mark.parametrize("n_ssm", [None, 1, 2])
def test_softplus_dt_and_tied_ssms_match_the_oracle(kind, n_ssm, rng):
    layer = _layer(kind, dt_transform="softplus", n_ssm=n_ssm)
    # Perturb the tied rows apart (they start equal), so that the tiling order is checked.
    for name in KERNEL:
        if hasattr(layer, name):
            v = getattr(layer, name)
            v[...] = v[...] * (1 + 0.2 * jnp.asarray(rng.standard_normal(v.shape), jnp.float32))
    copies = E if n_ssm is None else n_ssm
    assert layer.log_A_real.shape == (copies, 3) and layer.B.shape == (copies, 3, 2)
    assert layer.inv_dt.shape == (E,) and not hasattr(layer, "log_dt")
    x = _x(rng)
    p = _per_channel(oracles.params(layer), softplus=True)
    expected = oracles.s4(p, x.astype(np.float64)) if kind == "s4" else oracles.s4d(p, x.astype(np.float64), discretization="zoh")
    assert_close(call(layer, jnp.asarray(x)), expected, tol=1e-5, name=f"{kind} n_ssm={n_ssm}")


def test_softplus_dt_draws_the_same_step_sizes_as_exp():
    a, b = _layer("s4d"), _layer("s4d", dt_transform="softplus")
    dt_exp = np.exp(np.asarray(a.log_dt[...], np.float64))
    dt_softplus = oracles.softplus(np.asarray(b.inv_dt[...], np.float64))
    np.testing.assert_allclose(dt_softplus, dt_exp, rtol=1e-5)
    assert dt_exp.min() >= 1e-3 * (1 - 1e-5) and dt_exp.max() <= 0.1 * (1 + 1e-5)


def test_a_tied_ssm_gets_the_sum_of_its_channels_gradients(rng):
    # Tying is a reparametrization: the loss of the tied layer equals that of the untied one with
    # its rows copied, and the tied gradient is the sum of the untied rows' gradients.
    tied, free = _layer("s4d", n_ssm=1), _layer("s4d")
    for name in ("log_A_real", "A_imag", "B"):
        getattr(free, name)[...] = jnp.tile(getattr(tied, name)[...], (E,) + (1,) * (getattr(tied, name).ndim - 1))
    x = jnp.asarray(_x(rng))
    loss = lambda m: jnp.sum(m(x) ** 2)  # noqa: E731
    assert_close(loss(tied), loss(free), tol=1e-6, name="loss")
    g_tied, g_free = nnx.grad(loss)(tied), nnx.grad(loss)(free)
    for name in ("log_A_real", "A_imag", "B"):
        want = np.asarray(getattr(g_free, name)[...], np.float64).sum(axis=0, keepdims=True)
        assert_close(getattr(g_tied, name)[...], want, tol=1e-5, name=name)


def test_bad_options_name_the_field():
    with pytest.raises(ValueError, match=r"S4DConfig.*`dt_transform` must be one of"):
        nn.S4DConfig(dt_transform="sigmoid")
    with pytest.raises(ValueError, match=r"`n_ssm` must be None .* or a positive int"):
        nn.S4Config(n_ssm=0)
    with pytest.raises(ValueError, match=r"S4D: config.n_ssm=3 must divide d_model=8"):
        _layer("s4d", n_ssm=3)


def test_param_count_follows_n_ssm():
    from ssm_jax.models.counting import mixer_params
    from ssm_jax.models.config import LanguageModelConfig

    for kind in ("s4", "s4d"):
        for n_ssm in (None, 1, 4):
            sub = (nn.S4Config if kind == "s4" else nn.S4DConfig)(d_state=6, n_ssm=n_ssm)
            cfg = LanguageModelConfig(vocab_size=16, d_model=E, n_layers=1, mixer=kind, **{kind: sub})
            layer = _layer(kind, n_ssm=n_ssm)
            counted = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(layer, nnx.Param)))
            assert mixer_params(kind, cfg) == counted, (kind, n_ssm)


def test_tied_dropout_keeps_one_mask_along_the_sequence(rng):
    # Identity output map and no GLU: y = dropout(gelu(conv)), whose zeros are the mask's.
    for tie in (True, False):
        layer = nn.S4D(E, nn.S4DConfig(d_state=6, dropout=0.5, tie_dropout=tie, postact=None), rngs=nnx.Rngs(0))
        layer.output_linear.kernel[...] = jnp.eye(E)
        layer.output_linear.bias[...] = jnp.zeros((E,))
        zeros = np.asarray(layer(jnp.asarray(_x(rng, b=4, l=16)))) == 0.0  # (b, l, h)
        per_channel = zeros.all(axis=1) | ~zeros.any(axis=1)  # all or none of a channel's positions
        assert zeros.any() and per_channel.all() == tie, tie
