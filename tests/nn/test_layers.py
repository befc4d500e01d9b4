"""The mixer layers against float64 NumPy oracles; step/prefill against the parallel forward;
packed sequences against separate runs; dtypes; parameter metadata."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm_jax import nn
from tests.nn import oracles
from tests.numerics import assert_close, check_directional_derivative

E = 8  # d_model

# Calls go through one jitted wrapper: compiling a small graph once per shape is several times
# cheaper on CPU than dispatching (and compiling) every op eagerly.
call = nnx.jit(lambda layer, x, **kw: layer(x, **kw))


def make(kind: str, *, dtype="float32", seed=0, **overrides):
    """Tiny layers; sizes chosen so every code path (groups, chunks, heads) is exercised."""
    rngs = nnx.Rngs(seed)
    if kind == "mamba":
        return nn.Mamba(E, nn.MambaConfig(d_state=4, d_conv=3, **overrides), dtype=dtype, rngs=rngs)
    if kind == "mamba2":
        cfg = dict(d_state=4, d_conv=3, headdim=4, ngroups=2, chunk_size=3)
        return nn.Mamba2(E, nn.Mamba2Config(**{**cfg, **overrides}), dtype=dtype, rngs=rngs)
    if kind == "hydra":
        cfg = dict(d_state=4, d_conv=3, headdim=4, ngroups=2, chunk_size=3, A_init_range=(1.0, 4.0))
        return nn.Hydra(E, nn.HydraConfig(**{**cfg, **overrides}), dtype=dtype, rngs=rngs)
    if kind == "s4":
        return nn.S4(E, nn.S4Config(d_state=6, **overrides), dtype=dtype, rngs=rngs)
    if kind == "s4d":
        return nn.S4D(E, nn.S4DConfig(d_state=6, **overrides), dtype=dtype, rngs=rngs)
    if kind == "attention":
        return nn.MultiHeadAttention(E, nn.AttentionConfig(num_heads=2, **overrides), dtype=dtype, rngs=rngs)
    raise ValueError(kind)


CAUSAL = ["mamba", "mamba2", "s4", "s4d", "attention"]
ALL = CAUSAL + ["hydra"]


def _x(rng, b=2, l=7):
    return rng.standard_normal((b, l, E)).astype(np.float32)


def _randomize(layer, rng, scale=0.3):
    """Perturb parameters that start as constants (norm weights, D), so the oracle sees them used."""
    for path, v in nnx.to_flat_state(nnx.state(layer, nnx.Param)):
        if (path[-2:] == ("norm", "weight")) or path[-1] == "D":
            v[...] = v[...] + scale * jnp.asarray(rng.standard_normal(v.shape), jnp.float32)


# --------------------------------------------------------------------------------------------
# Parallel forward = float64 oracle
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, overrides",
    [
        ("mamba", {}),
        ("mamba", {"bias": True, "conv_bias": False, "dt_rank": 3}),
        ("mamba2", {}),
        ("mamba2", {"ngroups": 1, "norm_before_gate": True, "D_has_hdim": True, "bias": True}),
        ("hydra", {}),
        ("s4d", {}),
        ("s4d", {"init": "lin", "discretization": "bilinear", "bidirectional": True, "activation": "silu"}),
        ("s4d", {"init": "inv", "postact": None}),
        ("s4", {}),
        ("attention", {}),
        ("attention", {"causal": False}),
    ],
)
def test_forward_matches_oracle(kind, overrides, rng):
    layer = make(kind, **overrides)
    _randomize(layer, rng)
    x = _x(rng)
    y = call(layer, jnp.asarray(x))
    p = oracles.params(layer)
    x64 = x.astype(np.float64)
    if kind == "mamba":
        c = layer.config
        expected = oracles.mamba(p, x64, d_state=c.d_state, dt_rank=layer.dt_rank)
    elif kind == "mamba2":
        c = layer.config
        expected = oracles.mamba2(p, x64, d_state=c.d_state, headdim=c.headdim, ngroups=c.ngroups,
                                  norm_before_gate=c.norm_before_gate, D_has_hdim=c.D_has_hdim)
    elif kind == "hydra":
        c = layer.config
        expected = oracles.hydra(p, x64, d_state=c.d_state, headdim=c.headdim, ngroups=c.ngroups)
    elif kind == "s4d":
        c = layer.config
        expected = oracles.s4d(p, x64, discretization=c.discretization, activation=c.activation, glu=c.postact == "glu")
    elif kind == "s4":
        expected = oracles.s4(p, x64)
    else:
        expected = oracles.attention(p, x64, num_heads=2, causal=layer.causal)
    assert_close(y, expected, tol=1e-5, name=f"{kind} forward")


# --------------------------------------------------------------------------------------------
# Decoding forms = parallel forward
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CAUSAL)
def test_step_and_prefill_match_parallel(kind, rng):
    layer = make(kind)
    x = jnp.asarray(_x(rng, l=7))
    y = call(layer, x)
    kw = {"max_length": 7} if kind == "attention" else {}
    cache = layer.init_cache(2, **kw)
    step = nnx.jit(lambda m, xt, c: m.step(xt, c))
    ys = []
    for t in range(7):
        yt, cache = step(layer, x[:, t], cache)
        ys.append(yt)
    assert_close(jnp.stack(ys, 1), y, name=f"{kind} step folded")
    # Prefill in two chunks hands the same state to the step as folding the step does.
    prefill = nnx.jit(lambda m, x, c: m.prefill(x, c))
    y1, c1 = prefill(layer, x[:, :3], layer.init_cache(2, **kw))
    y2, c2 = prefill(layer, x[:, 3:], c1)
    assert_close(jnp.concatenate([y1, y2], 1), y, name=f"{kind} chunked prefill")
    for a, b in zip(jax.tree.leaves(c2), jax.tree.leaves(cache)):
        if jnp.issubdtype(a.dtype, jnp.inexact):
            assert_close(a, b, tol=1e-5, name=f"{kind} cache")
        else:
            np.testing.assert_array_equal(a, b)


def test_every_mixer_has_one_constructor_and_cache_api(rng):
    """Issue 19: MultiHeadAttention took keywords where the others take a config, and its
    init_cache required max_length. Every mixer: Layer(d_model, config, *, dtype, rngs), and
    every causal one init_cache(batch_size, dtype=None, *, max_length=None)."""
    import inspect

    for cls in (nn.Mamba, nn.Mamba2, nn.Hydra, nn.S4, nn.S4D, nn.MultiHeadAttention):
        params = inspect.signature(cls.__init__).parameters
        assert list(params) == ["self", "d_model", "config", "dtype", "rngs"], (cls.__name__, list(params))
        assert params["dtype"].kind is inspect.Parameter.KEYWORD_ONLY and params["rngs"].kind is inspect.Parameter.KEYWORD_ONLY
    attn = nn.MultiHeadAttention(32, nn.AttentionConfig(num_heads=4, rope_theta=500.0), rngs=nnx.Rngs(0))
    assert (attn.num_heads, attn.head_dim, attn.rope_theta, attn.config.num_heads) == (4, 8, 500.0, 4)
    for kind in CAUSAL:
        layer = make(kind)
        params = inspect.signature(layer.init_cache).parameters
        assert list(params) == ["batch_size", "dtype", "max_length"] and params["max_length"].default is None, kind
        cache = layer.init_cache(2, "float32")  # positionally, as notebook 03 calls it
        y, _ = layer.step(jnp.asarray(_x(rng, l=1))[:, 0], cache)
        assert y.shape == (2, E) and bool(jnp.all(jnp.isfinite(y))), kind
    k = make("attention").init_cache(1).k
    assert k.shape == (1, nn.DEFAULT_CACHE_LENGTH, 2, E // 2)


def test_attention_refuses_to_decode_past_its_cache(rng):
    """Issue 19: 8 steps into a 4-position cache used to give outputs 0.19-0.28 off the
    parallel forward, silently (dynamic_update_slice clamps the write)."""
    layer = make("attention")
    x = jnp.asarray(_x(rng, b=1, l=8))
    y = call(layer, x)
    cache = layer.init_cache(1, max_length=4)
    for t in range(4):
        yt, cache = layer.step(x[:, t], cache)
        assert_close(yt, y[:, t], name=f"step {t}")
    with pytest.raises(ValueError, match=r"MultiHeadAttention.step: the KV cache holds max_length=4 positions and 4 "
                                         r"are written; 1 more \(positions 4..4\) do not fit"):
        layer.step(x[:, 4], cache)
    with pytest.raises(ValueError, match=r"positions 2..5\) do not fit"):
        layer.prefill(x[:, :4], layer.prefill(x[:, :2], layer.init_cache(1, max_length=4))[1])
    # Under jit the position is traced: the steps past the end come out NaN, not wrong.
    step = nnx.jit(lambda m, xt, c: m.step(xt, c))
    cache, ys = layer.init_cache(1, max_length=4), []
    for t in range(8):
        yt, cache = step(layer, x[:, t], cache)
        ys.append(np.asarray(yt))
    assert_close(np.stack(ys[:4], 1), y[:, :4], name="steps inside the cache")
    assert np.all(np.isnan(np.stack(ys[4:]))), "steps past the cache must be NaN"


def test_bidirectional_layers_refuse_to_decode():
    for layer in (make("s4d", bidirectional=True), make("attention", causal=False)):
        with pytest.raises(ValueError, match="cannot decode"):
            layer.init_cache(1, max_length=4)
    assert not hasattr(make("hydra"), "step")


# --------------------------------------------------------------------------------------------
# Packed sequences
# --------------------------------------------------------------------------------------------


def _assert_packed_equals_separate(layer, rng, lengths, ids, name, tol=None):
    """One packed row of segments ``lengths`` (ids ``ids``) equals running each segment alone."""
    x = jnp.asarray(_x(rng, b=1, l=sum(lengths)))
    seg = jnp.asarray(np.repeat(ids, lengths)[None].astype(np.int32))
    y = call(layer, x, segment_ids=seg)
    start = 0
    for n in lengths:
        alone = call(layer, x[:, start : start + n])
        assert_close(y[:, start : start + n], alone, tol=tol, name=f"{name} segment at {start}")
        start += n


@pytest.mark.parametrize("kind", ALL + ["s4d_bidirectional", "attention_bidirectional"])
def test_packed_equals_separate(kind, rng):
    if kind == "s4d_bidirectional":
        layer = make("s4d", bidirectional=True)
    elif kind == "attention_bidirectional":
        layer = make("attention", causal=False)
    else:
        layer = make(kind)
    # lengths 1 and 3 < the conv width / chunk size are edge cases
    _assert_packed_equals_separate(layer, rng, [3, 1, 4], [7, 2, 9], kind)


@pytest.mark.parametrize("kind", ["s4", "s4d"])
def test_s4_long_prefill_across_chunks(kind, rng):
    """S4/S4D prefill is the op's chunked form from the cached state: two prefills of 70 and
    75 positions (several 64-position chunks, a non-zero entering state) equal the parallel
    forward, and hand the step the state the folded step reaches."""
    layer = make(kind)
    x = jnp.asarray(_x(rng, b=2, l=146))
    y = call(layer, x)
    prefill = nnx.jit(lambda m, x, c: m.prefill(x, c))
    y1, c1 = prefill(layer, x[:, :70], layer.init_cache(2))
    y2, c2 = prefill(layer, x[:, 70:145], c1)
    assert_close(jnp.concatenate([y1, y2], 1), y[:, :145], tol=1e-4, name="prefill")
    y3, _ = nnx.jit(lambda m, xt, c: m.step(xt, c))(layer, x[:, 145], c2)
    assert_close(y3, y[:, 145], tol=1e-4, name="step after prefill")


@pytest.mark.parametrize("kind,bidirectional", [("s4d", False), ("s4d", True), ("s4", False)])
def test_s4_packed_segments_across_chunks(kind, bidirectional, rng):
    """The S4/S4D packed path is the op's chunked form (nn.s4.PACKED_CHUNK = 64): segments that
    start, end and span several chunks still equal separate runs."""
    _assert_packed_equals_separate(make(kind, bidirectional=bidirectional), rng, [70, 3, 60], [0, 1, 2], kind, tol=1e-4)


# --------------------------------------------------------------------------------------------
# Dtypes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL)
def test_bf16_compute_close_to_fp32(kind, rng):
    layer32 = make(kind)
    layer16 = make(kind, dtype="bfloat16")
    x = jnp.asarray(_x(rng))
    y32 = call(layer32, x)
    y16 = call(layer16, x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(layer16, nnx.Param)))
    assert_close(y16.astype(jnp.float32), y32, tol=5e-2, name=f"{kind} bf16")


@pytest.mark.parametrize("kind", ALL)
def test_fp16_compute_under_jit_close_to_fp32(kind, rng):
    """float16 layers compiled on every backend: XLA:CPU refused attention's float16 products
    under jit (the eager call worked), so ``generate`` failed for float16 attention models."""
    x = jnp.asarray(_x(rng))
    y32 = call(make(kind), x)
    y16 = nnx.jit(lambda m, x: m(x))(make(kind, dtype="float16"), x.astype(jnp.float16))
    assert y16.dtype == jnp.float16
    assert_close(y16.astype(jnp.float32), y32, tol=1e-2, name=f"{kind} fp16")


# --------------------------------------------------------------------------------------------
# Initialization (Mamba sec. 3.6 / app. E; Mamba-2 sec. 7; S4D sec. 4; S4 app. C)
# --------------------------------------------------------------------------------------------


def test_mamba_init():
    layer = nn.Mamba(64, nn.MambaConfig(d_state=16, dt_min=1e-3, dt_max=0.1), rngs=nnx.Rngs(0))
    A = -np.exp(np.asarray(layer.A_log[...]))
    np.testing.assert_allclose(A, -np.broadcast_to(np.arange(1, 17), (128, 16)), rtol=1e-6)  # S4D-Real
    np.testing.assert_array_equal(np.asarray(layer.D[...]), 1.0)
    dt = np.log1p(np.exp(np.asarray(layer.dt_proj.bias[...], np.float64)))
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    # log-uniform: log dt uniform on [log 1e-3, log 0.1] -> mean of log dt at the midpoint
    assert abs(np.mean(np.log(dt)) - 0.5 * (np.log(1e-3) + np.log(0.1))) < 0.25
    r = layer.dt_rank
    assert r == 4 and np.abs(np.asarray(layer.dt_proj.kernel[...])).max() <= r**-0.5


def test_mamba2_init():
    c = nn.Mamba2Config(d_state=8, headdim=4, A_init_range=(1.0, 16.0), dt_min=1e-3, dt_max=1e-1, dt_init_floor=1e-2)
    layer = nn.Mamba2(128, c, rngs=nnx.Rngs(1))
    a = np.exp(np.asarray(layer.A_log[...]))
    assert layer.A_log.shape == (64,) and a.min() >= 1.0 and a.max() <= 16.0 and a.std() > 2.0
    dt = np.log1p(np.exp(np.asarray(layer.dt_bias[...], np.float64)))
    assert dt.min() >= 1e-2 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert np.any(np.isclose(dt, 1e-2, rtol=1e-5))  # the floor is hit: log-uniform mass below 1e-2
    np.testing.assert_array_equal(np.asarray(layer.D[...]), 1.0)


def test_hydra_init_matches_reference():
    layer = nn.Hydra(16, nn.HydraConfig(d_state=4, headdim=4), rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(layer.A_log[...]), 0.0)  # A = -1 in goombalab/hydra


def test_s4d_inits():
    n = 4  # d_state = 8
    lin = nn.S4D(3, nn.S4DConfig(d_state=8, init="lin"), rngs=nnx.Rngs(0))
    A = -np.exp(np.asarray(lin.log_A_real[...])) + 1j * np.asarray(lin.A_imag[...])
    np.testing.assert_allclose(A, np.broadcast_to(-0.5 + 1j * np.pi * np.arange(n), (3, n)), rtol=1e-6, atol=1e-6)
    inv = nn.S4D(3, nn.S4DConfig(d_state=8, init="inv"), rngs=nnx.Rngs(0))
    A = -np.exp(np.asarray(inv.log_A_real[...])) + 1j * np.asarray(inv.A_imag[...])
    N = 2 * n
    expected = -0.5 + 1j * (N / np.pi) * (N / (2 * np.arange(n) + 1) - 1)
    np.testing.assert_allclose(A, np.broadcast_to(expected, (3, n)), rtol=1e-6)
    legs = nn.S4D(3, nn.S4DConfig(d_state=8, init="legs", dt_min=1e-3, dt_max=1e-1), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(-np.exp(np.asarray(legs.log_A_real[...])), -0.5, rtol=1e-5)
    dt = np.exp(np.asarray(legs.log_dt[...]))
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)


def test_s4_init_is_hippo_legs():
    """The DPLR parameters reproduce HiPPO-LegS: V diag(Λ) V* - (V P)(V P)* = A_LegS with the
    conjugate-completed basis (S4 paper, Thm. 1), checked through the layer's stored parameters."""
    layer = nn.S4(2, nn.S4Config(d_state=8), rngs=nnx.Rngs(0))
    Lam = -np.exp(np.asarray(layer.log_A_real[0], np.float64)) + 1j * np.asarray(layer.A_imag[0], np.float64)
    P = np.asarray(layer.P[0, ..., 0], np.float64) + 1j * np.asarray(layer.P[0, ..., 1], np.float64)
    # Eigenvalues of the full 2n-state DPLR matrix equal those of HiPPO-LegS (N = 8).
    full = lambda v: np.concatenate([v, np.conj(v)])  # noqa: E731
    A_dplr = np.diag(full(Lam)) - np.outer(full(P), np.conj(full(P)))
    q = np.arange(8)
    legs = -np.where(q[:, None] > q[None, :], np.sqrt(2 * q[:, None] + 1) * np.sqrt(2 * q[None, :] + 1), 0.0)
    legs -= np.diag(q + 1.0)
    ev = np.sort_complex(np.round(np.linalg.eigvals(A_dplr), 3))
    ev_legs = np.sort_complex(np.round(np.linalg.eigvals(legs).astype(complex), 3))
    np.testing.assert_allclose(ev, ev_legs, atol=2e-2)


# --------------------------------------------------------------------------------------------
# Parameter metadata
# --------------------------------------------------------------------------------------------

SSM_PARAMS = {
    "mamba": {"A_log", "D", "dt_proj.bias"},
    "mamba2": {"A_log", "D", "dt_bias"},
    "hydra": {"A_log", "D", "dt_bias"},
    "s4": {"log_dt", "log_A_real", "A_imag", "P", "B", "C", "D"},
    "s4d": {"log_dt", "log_A_real", "A_imag", "B", "C", "D"},
    "attention": set(),
}


@pytest.mark.parametrize("kind", ALL)
def test_param_metadata(kind):
    layer = make(kind)
    flat = nnx.to_flat_state(nnx.state(layer, nnx.Param))
    assert flat, "no parameters"
    tagged = set()
    for path, v in flat:
        name = ".".join(map(str, path))
        names = v.get_metadata().get("out_sharding")
        assert names is not None and len(names) == v.ndim, f"{name}: logical names {names} for shape {v.shape}"
        assert all(n is None or n in nn.LOGICAL_AXES for n in names), f"{name}: {names}"
        assert v.get_value().dtype == jnp.float32, name
        if isinstance(v, nn.SSMParam):
            tagged.add(name)
    assert tagged == SSM_PARAMS[kind]
    # S4's own learning-rate group: A, B, P, dt but not C or D.
    if kind in ("s4", "s4d"):
        group = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(layer, nn.SSMKernelParam))}
        assert group == SSM_PARAMS[kind] - {"C", "D"}


def test_layers_build_under_a_mesh_without_sharding_eagerly():
    mesh = jax.make_mesh((1,), ("tensor",))
    with jax.set_mesh(mesh):
        layer = make("mamba2")
    assert layer.in_proj.kernel.get_metadata()["out_sharding"] == ("embed", "inner")


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_bad_inputs():
    layer = make("mamba")
    with pytest.raises(ValueError, match=r"Mamba: `x` must have shape \(b, l, e\) = \(\?, \?, 8\); got \(2, 5, 3\)"):
        layer(jnp.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match="segment_ids"):
        layer(jnp.zeros((2, 5, E)), segment_ids=jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(TypeError, match="segment_ids"):
        layer(jnp.zeros((2, 5, E)), segment_ids=jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"Mamba.step: `x` must have shape \(b, e\)"):
        layer.step(jnp.zeros((2, 1, E)), layer.init_cache(2))
    with pytest.raises(ValueError, match="headdim"):
        nn.Mamba2(8, nn.Mamba2Config(headdim=5), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="ngroups"):
        nn.Mamba2(8, nn.Mamba2Config(headdim=4, ngroups=3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="head_dim"):
        nn.MultiHeadAttention(6, nn.AttentionConfig(num_heads=2), rngs=nnx.Rngs(0))
    attn = make("attention")
    with pytest.raises(ValueError, match="max_length"):
        attn.prefill(jnp.zeros((1, 5, E)), attn.init_cache(1, max_length=4))


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


# Not attention: jax.nn.dot_product_attention takes its softmax in float32 even for float64
# inputs (jax 0.11.2, _dot_product_attention_core), too coarse for float64 finite differences.
@pytest.mark.parametrize("kind", ["mamba", "mamba2", "hydra", "s4d"])
def test_gradients_match_finite_differences(kind, rng):
    """Float64 directional derivatives of a scalar loss w.r.t. all parameters and the input."""
    with jax.enable_x64(True):
        layer = make(kind, dtype="float64")
        graphdef, state = nnx.split(layer, nnx.Param)
        state = jax.tree.map(lambda v: v.astype(jnp.float64), state)
        x = jnp.asarray(rng.standard_normal((1, 5, E)))
        w = jnp.asarray(rng.standard_normal((1, 5, E)))

        def loss(s, x):
            return jnp.sum(nnx.merge(graphdef, s)(x) * w)

        check_directional_derivative(loss, state, x, rng)


def test_param_stores_strongly_typed_float32():
    # A weak-typed initial value would turn strong after the first optimizer update and make a
    # jitted train step compile twice.
    from ssm_jax.nn.params import param

    p = param(jnp.full((3,), 0.5), ("embed",))
    assert p[...].dtype == jnp.float32 and not p[...].aval.weak_type
