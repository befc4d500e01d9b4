"""Every op and layer under a mesh whose axes are ``AxisType.Explicit``, run by test_explicit.py.

``python tests/parallel/explicit_script.py N CASE...`` with ``N`` simulated CPU devices (a
``data x tensor`` mesh, 2 x N/2). Sharding is part of an array's type under Explicit axes: the
inputs are put batch-sharded over ``data`` and channels/heads over ``tensor``; each op and
layer must trace, give the values and gradients of the same call without a mesh (fp32, 1e-5
relative), and return an output whose type keeps the input's sharding. Each case prints
``PASS <name>`` or raises; the last line is ``OK``.
"""

from __future__ import annotations

import os
import sys

from tests import xla_flags

N = int(sys.argv[1])
os.environ["XLA_FLAGS"] = xla_flags.flags(N)  # the inherited flags plus N simulated devices
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from ssm_jax import models, nn, ops  # noqa: E402

assert jax.device_count() == N, jax.devices()
MESH = jax.make_mesh((2, N // 2), ("data", "tensor"), axis_types=(AxisType.Explicit,) * 2)
b, l, h, p, g, n, k = 4, 24, 4, 2, 2, 3, 4
d = h * p
TOL = 1e-5
rng = np.random.default_rng(0)


def normal(*shape, dtype=jnp.float32):
    return jnp.asarray(rng.standard_normal(shape), dtype)


def segments():
    starts = rng.random((b, l)) < 0.15
    return jnp.asarray(np.cumsum(starts, axis=1), jnp.int32)


def put(x, spec):
    return jax.device_put(x, NamedSharding(MESH, spec))


def rel_err(a, b):
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(a) == len(b)
    scale = max(1.0, max(float(jnp.max(jnp.abs(y))) for y in b))
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(a, b)) / scale


def check(name, fn, args, specs, *, out_spec=None, argnums=None):
    """``fn(*args)`` on sharded inputs under the Explicit mesh equals ``fn(*args)`` without one
    (values and gradients w.r.t. ``argnums``, default every float argument), and the first
    output keeps ``out_spec`` (default the first argument's spec)."""
    argnums = tuple(i for i, a in enumerate(args) if a is not None and jnp.issubdtype(a.dtype, jnp.floating)) \
        if argnums is None else argnums

    def loss(*a):
        out = fn(*a)
        return sum(jnp.sum(jnp.real(o) * jnp.cos(jnp.arange(o.size).reshape(o.shape)))
                   for o in jax.tree.leaves(out))

    # Values and gradients from one compiled function (half the compiles of two).
    both = lambda *a: (fn(*a), jax.grad(loss, argnums=argnums)(*a))  # noqa: E731
    want, want_grads = jax.jit(both)(*args)
    with jax.set_mesh(MESH):
        sharded = [None if a is None else put(a, s) for a, s in zip(args, specs)]
        got, got_grads = jax.jit(both)(*sharded)
    err = max(rel_err(got, want), rel_err(got_grads, want_grads))
    assert err <= TOL, f"{name}: relative error {err:.2e} > {TOL}"
    first = jax.tree.leaves(got)[0]
    expect = specs[0] if out_spec is None else out_spec
    have = tuple(first.sharding.spec) + (None,) * (first.ndim - len(first.sharding.spec))
    expect = tuple(expect) + (None,) * (first.ndim - len(expect))
    assert have == expect, f"{name}: output sharding {first.sharding.spec}, expected {expect}"
    print(f"PASS {name} err={err:.1e} out={first.sharding.spec}", flush=True)


BLD = P("data", None, "tensor")  # (b, l, d) / (b, l, h, ...): batch and channels split
BL = P("data", None)


def case_selective_scan():
    x, dt, z = normal(b, l, d), normal(b, l, d), normal(b, l, d)
    A = -jnp.exp(normal(d, n))
    B, C = normal(b, l, g, n), normal(b, l, g, n)
    D, bias, h0 = normal(d), normal(d), normal(b, d, n)
    seg = segments()
    specs = (BLD, BLD, P("tensor", None), BL, BL, P("tensor"), BLD, P("tensor"), P("data", "tensor"), BL)
    for impl in ("xla", "scan"):
        def fn(x, dt, A, B, C, D, z, bias, h0, seg, impl=impl):
            return ops.selective_scan(x, dt, A, B, C, D=D, z=z, dt_bias=bias, dt_softplus=True, initial_state=h0,
                                      segment_ids=seg, return_final_state=True, impl=impl)
        check(f"selective_scan[{impl}]", fn, (x, dt, A, B, C, D, z, bias, h0, seg), specs)


def case_ssd():
    x, z = normal(b, l, h, p), normal(b, l, h, p)
    dt, A = normal(b, l, h), -jnp.exp(normal(h))
    B, C = normal(b, l, g, n), normal(b, l, g, n)
    D, bias, h0 = normal(h), normal(h), normal(b, h, p, n)
    seg = segments()
    specs = (BLD, BLD, P("tensor"), BL, BL, P("tensor"), BLD, P("tensor"), P("data", "tensor"), BL)
    for impl in ("xla", "scan", "quadratic"):
        def fn(x, dt, A, B, C, D, z, bias, h0, seg, impl=impl):
            return ops.ssd(x, dt, A, B, C, D=D, z=z, dt_bias=bias, dt_softplus=True, initial_state=h0,
                           segment_ids=seg, chunk_size=8, return_final_state=True, impl=impl)
        check(f"ssd[{impl}]", fn, (x, dt, A, B, C, D, z, bias, h0, seg), specs)


def case_hydra():
    x = normal(b, l, h, p)
    dt, A = normal(b, l, 2, h), -jnp.exp(normal(h))
    B, C = normal(b, l, 2, g, n), normal(b, l, 2, g, n)
    D, bias, seg = normal(h), normal(h), segments()
    specs = (BLD, P("data", None, None, "tensor"), P("tensor"), BL, BL, P("tensor"), P("tensor"), BL)
    for impl in ("xla", "matrix"):
        def fn(x, dt, A, B, C, D, bias, seg, impl=impl):
            return ops.hydra(x, dt, A, B, C, D=D, dt_bias=bias, dt_softplus=True, segment_ids=seg, chunk_size=8,
                             impl=impl)
        check(f"hydra[{impl}]", fn, (x, dt, A, B, C, D, bias, seg), specs)


def case_conv():
    x, w, bias, seg = normal(b, l, d), normal(d, k), normal(d), segments()
    specs = (BLD, P("tensor", None), P("tensor"), BL)
    check("causal_conv1d", lambda x, w, bias, seg: ops.causal_conv1d(x, w, bias, segment_ids=seg, activation="silu"),
          (x, w, bias, seg), specs)
    check("conv1d", lambda x, w, bias, seg: ops.conv1d(x, w, bias, segment_ids=seg), (x, w, bias, seg), specs)
    check("fft_conv", lambda u, K, D: ops.fft_conv(u, K, D=D), (x, normal(d, l), normal(d)),
          (BLD, P("tensor", None), P("tensor")))


def case_s4():
    u, seg = normal(b, l, h), segments()
    dA = jnp.asarray(0.9 * np.exp(1j * rng.uniform(0, 1, (h, n))), jnp.complex64)
    dB = jnp.asarray(rng.standard_normal((h, n)) + 1j * rng.standard_normal((h, n)), jnp.complex64)
    Cc = jnp.asarray(rng.standard_normal((h, n)) + 1j * rng.standard_normal((h, n)), jnp.complex64)
    D = normal(h)
    specs = (BLD, P("tensor", None), P("tensor", None), P("tensor", None), P("tensor"), BL)
    for chunk in (None, 8):
        def fn(u, dA, dB, C, D, seg, chunk=chunk):
            return ops.s4d_scan(u, dA, dB, C, D=D, segment_ids=seg, chunk_size=chunk)
        check(f"s4d_scan[chunk={chunk}]", fn, (u, dA, dB, Cc, D, seg), specs, argnums=(0, 4))


def _layer(name, make, x_shape, *, seg=True):
    """A layer's forward and its parameters' gradients, its parameters sharded by the mesh."""
    layer = make()
    graphdef, params = nnx.split(layer)
    x, ids = normal(*x_shape), segments() if seg else None

    def fn(x, ids, params):
        return nnx.merge(graphdef, params)(x, segment_ids=ids) if seg else nnx.merge(graphdef, params)(x)

    loss = lambda x, ids, params: jnp.sum(fn(x, ids, params) ** 2)  # noqa: E731
    both = lambda *a: (fn(*a), jax.grad(loss, argnums=(0, 2))(*a))  # noqa: E731
    want, want_grads = jax.jit(both)(x, ids, params)
    with jax.set_mesh(MESH):
        xs = put(x, P("data"))
        ids_s = None if ids is None else put(ids, BL)
        got, got_grads = jax.jit(both)(xs, ids_s, params)
    err = max(rel_err(got, want), rel_err(got_grads, want_grads))
    assert err <= TOL, f"{name}: relative error {err:.2e} > {TOL}"
    assert tuple(got.sharding.spec)[:1] == ("data",), f"{name}: output sharding {got.sharding.spec}"
    print(f"PASS {name} err={err:.1e} out={got.sharding.spec}", flush=True)


def case_layers():
    e = 8
    rngs = lambda: nnx.Rngs(0)  # noqa: E731
    _layer("nn.Mamba", lambda: nn.Mamba(e, nn.MambaConfig(d_state=n, expand=2), rngs=rngs()), (b, l, e))
    _layer("nn.Mamba2", lambda: nn.Mamba2(e, nn.Mamba2Config(d_state=n, headdim=4, chunk_size=8), rngs=rngs()),
           (b, l, e))
    _layer("nn.Hydra", lambda: nn.Hydra(e, nn.HydraConfig(d_state=n, headdim=4, chunk_size=8), rngs=rngs()),
           (b, l, e))
    _layer("nn.S4D", lambda: nn.S4D(e, nn.S4DConfig(d_state=4), rngs=rngs()), (b, l, e))
    _layer("nn.S4", lambda: nn.S4(e, nn.S4Config(d_state=4), rngs=rngs()), (b, l, e))
    _layer("nn.MultiHeadAttention", lambda: nn.MultiHeadAttention(e, nn.AttentionConfig(num_heads=2), rngs=rngs()),
           (b, l, e))


def case_models():
    for mixer in ("mamba", "mamba2", "s4d", "s4", "attention"):
        sub = {"mamba2": dict(mamba2=models.Mamba2Config(d_state=n, headdim=4, chunk_size=8)),
               "s4d": dict(s4d=models.S4DConfig(d_state=4)), "s4": dict(s4=models.S4Config(d_state=4)),
               "attention": dict(attention=models.AttentionConfig(num_heads=2))}.get(mixer, {})
        for scan_layers in (False, True):
            cfg = models.LanguageModelConfig(vocab_size=16, d_model=8, n_layers=2, mixer=mixer, scan_layers=scan_layers,
                                             **sub)
            graphdef, params = nnx.split(models.LanguageModel(cfg, rngs=nnx.Rngs(0)))
            tokens = jnp.asarray(rng.integers(0, 16, (b, l)), jnp.int32)

            def loss(params, tokens):
                logits = nnx.merge(graphdef, params)(tokens)
                return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, tokens[..., None], -1)[..., 0])

            want = jax.jit(jax.value_and_grad(loss))(params, tokens)
            with jax.set_mesh(MESH):
                got = jax.jit(jax.value_and_grad(loss))(params, put(tokens, BL))
            err = rel_err(got, want)
            assert err <= TOL, f"LanguageModel[{mixer}, scan_layers={scan_layers}]: relative error {err:.2e}"
            print(f"PASS LanguageModel[{mixer}, scan_layers={scan_layers}] loss+grads err={err:.1e}", flush=True)


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}

if __name__ == "__main__":
    for case in sys.argv[2:]:
        CASES[case]()
    print("OK")
