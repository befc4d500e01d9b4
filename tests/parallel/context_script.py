"""Context-parallel ops against the single-device ops, run by test_context.py in a subprocess.

``python tests/parallel/context_script.py N CASE...`` with ``N`` simulated CPU devices. Each case
prints ``PASS <case> ...`` or raises; the last line is ``OK``. Checked per op (fp32): values and
gradients of every float input against the single-device op (1e-5 relative), that the
uncorrected per-shard run is *wrong* (so the comparison can fail), that the compiled forward
and backward have no collective with a length-sized axis, and that the output keeps the input's
sharding.
"""

from __future__ import annotations

import os
import re
import sys

from tests import xla_flags

N = int(sys.argv[1])
os.environ["XLA_FLAGS"] = xla_flags.flags(N)  # the inherited flags plus N simulated devices
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from ssm_jax import ops, parallel  # noqa: E402
from ssm_jax.parallel import context as cp  # noqa: E402

assert jax.device_count() == N, jax.devices()
# Sizes chosen so no other dimension equals l or l / shards (the HLO check looks for those).
b, l, d, n, g, h, p, k = 2, 48, 4, 3, 2, 4, 2, 4
TOL = 1e-5
rng = np.random.default_rng(0)


def normal(*shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def complex_normal(*shape):
    return jnp.asarray(rng.standard_normal(shape) + 1j * rng.standard_normal(shape), jnp.complex64)


def segments():
    starts = rng.random((b, l)) < 0.08
    starts[:, 12] = True  # a segment starting exactly at a shard boundary (l/4 and l/8 divide 12)
    return jnp.asarray(np.cumsum(starts, axis=1), jnp.int32)


def max_err(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def scale(a):
    return max(1.0, max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(a)))


COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter", "collective-broadcast")


def length_collectives(hlo: str, shards: int) -> list[str]:
    """Collectives in compiled HLO text whose result shape has an ``l`` or ``l / shards`` axis."""
    bad = []
    for line in hlo.splitlines():
        m = re.search(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start|-done)?\(", line)
        if not m:
            continue
        for dims in re.findall(r"\[([\d,]*)\]", m.group(1)):
            sizes = {int(s) for s in dims.split(",") if s}
            if sizes & {l, l // shards}:
                bad.append(line.strip()[:200])
    return bad


def check(name, mesh, x_spec, single, sharded, args, *, uncorrected=None, tol=TOL):
    """``single(*args)`` vs ``sharded(*args)`` under ``mesh``: values, grads, HLO, sharding
    (``tol`` relative; looser only for a kernel whose matmuls run at reduced precision)."""
    axis = "context"
    shards = mesh.shape[axis]

    def loss(fn):
        w = jax.tree.map(lambda v: jnp.cos(jnp.arange(v.size, dtype=jnp.float32).reshape(v.shape)), jax.eval_shape(single, *args))

        def f(*a):
            out = fn(*a)
            return sum(jnp.sum(jnp.real(o) * wi) + jnp.sum(jnp.imag(o) * wi) for o, wi in zip(jax.tree.leaves(out), jax.tree.leaves(w)))

        return f

    float_args = tuple(i for i, a in enumerate(args) if jnp.issubdtype(a.dtype, jnp.floating))

    def both(fn):
        # Values and gradients from one compiled function (half the compiles of two).
        return jax.jit(lambda *a: (fn(*a), jax.grad(loss(fn), argnums=float_args)(*a)))

    ref, ref_grads = both(single)(*args)
    put = [jax.device_put(a, NamedSharding(mesh, x_spec if a.ndim >= 2 and a.shape[1] == l and a.shape[0] == b else P()))
           for a in args]
    with jax.set_mesh(mesh):
        # The forward and the backward in one program: its HLO holds both passes' collectives.
        step = both(sharded).lower(*put).compile()
        out, grads = step(*put)
        hlo = step.as_text()
    err, gerr = max_err(ref, out), max_err(ref_grads, grads)
    assert err <= tol * scale(ref), f"{name}: max abs error {err:.3e} (scale {scale(ref):.3e})"
    assert gerr <= tol * scale(ref_grads), f"{name}: grad max abs error {gerr:.3e} (scale {scale(ref_grads):.3e})"
    bad = length_collectives(hlo, shards)
    assert not bad, f"{name}: collectives with a length axis:\n" + "\n".join(bad)
    assert "collective-permute" in hlo or "all-gather" in hlo, f"{name}: no exchange at all in the HLO"
    y = jax.tree.leaves(out)[0]
    assert y.sharding.is_equivalent_to(put[0].sharding, y.ndim), f"{name}: output {y.sharding} vs input {put[0].sharding}"
    msg = f"PASS {name} err={err:.2e} grad_err={gerr:.2e}"
    if uncorrected is not None:
        # The same shards without the exchange must be far off: the comparison above can fail.
        with jax.set_mesh(mesh):
            wrong = jax.jit(uncorrected)(*put)
        werr = max_err(jax.tree.leaves(ref)[0], jax.tree.leaves(wrong)[0])
        assert werr > max(1e3 * TOL, 10 * tol) * scale(ref), f"{name}: uncorrected shards agree ({werr:.2e}); the test is blind"
        msg += f" uncorrected_err={werr:.2e}"
    print(msg, flush=True)


def no_exchange(op, **kw):
    """``op`` on each shard from a zero state (no correction): the known-wrong answer."""

    def fn(x, *rest):
        def body(x, *rest):
            return jax.tree.leaves(op(x, *rest, **kw))[0]

        specs = (P(None, "context"),) + tuple(P(None, "context") if r.ndim >= 2 and r.shape[1] == l and r.shape[0] == b else P()
                                              for r in rest)
        return jax.shard_map(body, in_specs=specs, out_specs=P(None, "context"), axis_names={"context"}, check_vma=False)(x, *rest)

    return fn


def _scan_case(name, mesh, spec, ref_op, cp_op, args, base_kw, impl, ref_impl, tol=TOL):
    """``ref_op`` on one device vs ``cp_op`` split over ``spec``, for the selective scan and SSD
    (same argument layout), with and without segments; without segments also the uncorrected
    per-shard run, which must differ (no initial state: each shard from zero)."""
    for seg in (None, segments()):
        kw = dict(base_kw, segment_ids=seg, return_final_state=True)
        tag = "" if seg is None else "+segments"

        def call(op, impl_, with_h0=True):
            return lambda x, dt, z, A, B, C, bias, h0: op(
                x, dt, A, B, C, z=z, dt_bias=bias, impl=impl_, **kw, **({"initial_state": h0} if with_h0 else {}))

        check(f"{name}[{impl}]{tag}", mesh, spec, call(ref_op, ref_impl), call(cp_op, impl), args,
              uncorrected=no_exchange(call(ref_op, impl, with_h0=False)) if seg is None else None, tol=tol)


def case_selective_scan(mesh, spec, impl="xla", ref_impl="scan"):
    x, dt, z = normal(b, l, d), normal(b, l, d), normal(b, l, d)
    A, B, C = -jnp.exp(normal(d, n)), normal(b, l, g, n), normal(b, l, g, n)
    D, bias, h0 = normal(d), normal(d), normal(b, d, n)
    _scan_case("selective_scan", mesh, spec, ops.selective_scan, cp.selective_scan, (x, dt, z, A, B, C, bias, h0),
               dict(D=D, dt_softplus=True), impl, ref_impl)


def case_ssd(mesh, spec, impl="xla", ref_impl="scan", head_dim=p, state=n, tol=TOL):
    p, n = head_dim, state
    x, dt, z = normal(b, l, h, p), normal(b, l, h), normal(b, l, h, p)
    A, B, C = -jnp.exp(normal(h)), normal(b, l, g, n), normal(b, l, g, n)
    D, bias, h0 = normal(h), normal(h), normal(b, h, p, n)
    _scan_case("ssd", mesh, spec, ops.ssd, cp.ssd, (x, dt, z, A, B, C, bias, h0),
               dict(chunk_size=4, D=D, dt_softplus=True), impl, ref_impl, tol=tol)


def case_hydra(mesh, spec, impl="xla"):
    x, dt = normal(b, l, h, p), normal(b, l, 2, h)
    A, B, C, D, bias = -jnp.exp(normal(h)), normal(b, l, 2, g, n), normal(b, l, 2, g, n), normal(h), normal(h)
    for seg in (None, segments()):
        kw = dict(chunk_size=4, D=D, dt_softplus=True, segment_ids=seg)
        tag = "" if seg is None else "+segments"
        check(f"hydra[{impl}]{tag}", mesh, spec,
              lambda x, dt, A, B, C, bias: ops.hydra(x, dt, A, B, C, dt_bias=bias, impl="matrix", **kw),
              lambda x, dt, A, B, C, bias: cp.hydra(x, dt, A, B, C, dt_bias=bias, impl=impl, **kw),
              (x, dt, A, B, C, bias),
              uncorrected=no_exchange(lambda x, dt, A, B, C, bias: ops.hydra(x, dt, A, B, C, dt_bias=bias, impl=impl, **kw))
              if seg is None else None)


def case_conv(mesh, spec):
    x, w, bias = normal(b, l, d), normal(d, k), normal(d)
    for seg in (None, segments()):
        tag = "" if seg is None else "+segments"
        for name, single, sharded in (("causal_conv1d", ops.causal_conv1d, cp.causal_conv1d), ("conv1d", ops.conv1d, cp.conv1d)):
            kw = dict(segment_ids=seg, activation="silu")
            check(f"{name}{tag}", mesh, spec, lambda x, w, bias: single(x, w, bias, **kw), lambda x, w, bias: sharded(x, w, bias, **kw),
                  (x, w, bias), uncorrected=no_exchange(lambda x, w, bias: single(x, w, bias, **kw)) if seg is None else None)


def case_s4(mesh, spec):
    hh, nn = 3, 4
    u = normal(b, l, hh)
    D = normal(hh)
    A, B = ops.s4d_init(hh, nn)
    dA, dB = ops.s4d_discretize(jnp.full((hh,), -1.5), A, B)
    C = complex_normal(hh, nn)
    Lam, P_, B4 = ops.s4_init(hh, nn)
    dA4, dB4 = ops.s4_discretize(jnp.full((hh,), -1.5), Lam, P_, B4)
    x0 = complex_normal(b, hh, nn)
    for seg in (None, segments()):
        tag = "" if seg is None else "+segments"
        for name, single, sharded, dA_ in (("s4d_scan", ops.s4d_scan, cp.s4d_scan, dA), ("s4_scan", ops.s4_scan, cp.s4_scan, dA4)):
            dB_ = dB if name == "s4d_scan" else dB4
            for chunk in (None, 4):
                kw = dict(D=D, segment_ids=seg, initial_state=x0)
                check(f"{name}[chunk={chunk}]{tag}", mesh, spec,
                      lambda u, D: single(u, dA_, dB_, C, **{**kw, "D": D}),
                      lambda u, D: sharded(u, dA_, dB_, C, chunk_size=chunk, **{**kw, "D": D}), (u, D),
                      uncorrected=no_exchange(lambda u, D: single(u, dA_, dB_, C, D=D, chunk_size=chunk))
                      if seg is None else None)


def case_kernels(mesh, spec):
    # The Mosaic TPU kernels in TPU interpret mode, inside the context shard_map.
    case_selective_scan(mesh, spec, impl="pallas_tpu", ref_impl="xla")
    case_ssd(mesh, spec, impl="pallas_tpu", ref_impl="xla")


def case_gpu_kernels(mesh, spec):
    # The Mosaic GPU kernels in Mosaic GPU interpret mode, inside the context shard_map.
    from tests.pallas_kernels import gpu_interpret

    gpu_interpret.per_device_state()
    case_selective_scan(mesh, spec, impl="pallas_gpu", ref_impl="xla")
    # The SSD kernel takes head dims that are multiples of 64 and states of 64/128/256, and its
    # matmuls run at reduced precision in fp32 (2e-2, as the kernel's own sharded test).
    case_ssd(mesh, spec, impl="pallas_gpu", ref_impl="xla", head_dim=64, state=64, tol=2e-2)


def case_models(mesh, spec):
    """The layers pick the context-parallel ops by themselves under a mesh with `context`."""
    from flax import nnx

    from ssm_jax.models import (HydraConfig, LanguageModel, LanguageModelConfig, Mamba2Config, MambaConfig,
                                SequenceClassifier, SequenceClassifierConfig)

    lm = LanguageModelConfig(vocab_size=32, d_model=8, n_layers=2, layer_mixers=("mamba", "mamba2"),
                             mamba=MambaConfig(d_state=3), mamba2=Mamba2Config(d_state=4, headdim=4, chunk_size=4),
                             d_intermediate=16)
    clf = SequenceClassifierConfig(vocab_size=32, num_classes=3, d_model=8, n_layers=1, mixer="hydra",
                                   hydra=HydraConfig(d_state=4, headdim=4, chunk_size=4, d_conv=3))
    ids = jnp.asarray(rng.integers(0, 32, (b, l)), jnp.int32)
    for name, model, call in (
        ("LanguageModel[mamba,mamba2]", LanguageModel(lm, rngs=nnx.Rngs(0)), lambda m, x, s: m(x, segment_ids=s)),
        ("SequenceClassifier[hydra]", SequenceClassifier(clf, rngs=nnx.Rngs(0)), lambda m, x, s: m(x)),
    ):
        graphdef, params = nnx.split(model)
        seg = segments()

        def loss(params, x, s):
            out = call(nnx.merge(graphdef, params), x, s)
            return jnp.sum(out * jnp.cos(jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape))), out

        (_, ref), ref_g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, ids, seg)
        x_put = jax.device_put(ids, NamedSharding(mesh, spec))
        s_put = jax.device_put(seg, NamedSharding(mesh, spec))
        with jax.set_mesh(mesh):
            assert parallel.context_axis() == "context"
            step = jax.jit(jax.value_and_grad(loss, has_aux=True))
            (_, out), g = step(params, x_put, s_put)
            hlo = step.lower(params, x_put, s_put).compile().as_text()
        assert "collective-permute" in hlo, f"{name}: no context exchange: the layers did not take the context path"
        err, gerr = max_err(ref, out), max_err(ref_g, g)
        assert err <= TOL * scale(ref), f"{name}: max abs error {err:.3e}"
        assert gerr <= TOL * scale(ref_g), f"{name}: grad max abs error {gerr:.3e}"
        print(f"PASS {name} err={err:.2e} grad_err={gerr:.2e}", flush=True)


def case_explicit(mesh, spec):
    """The same checks on a mesh whose axes are Explicit (sharding in types)."""
    explicit = jax.make_mesh(tuple(mesh.shape.values()), tuple(mesh.shape), axis_types=(jax.sharding.AxisType.Explicit,) * len(mesh.shape))
    case_ssd(explicit, spec)
    case_conv(explicit, spec)


def case_errors(mesh, spec):
    x = normal(b, l + 1, d)
    with jax.set_mesh(mesh):
        try:
            cp.causal_conv1d(x, normal(d, k), axis="context")
        except ValueError as e:
            assert "does not split" in str(e), e
        else:
            raise AssertionError("an uneven length must be refused with axis='context'")
        try:
            cp.selective_scan(normal(b, l, d), normal(b, l, d), normal(d, n), normal(b, l, n), normal(b, l + 2, n))
        except ValueError as e:
            assert "`C`" in str(e), e
        else:
            raise AssertionError("a bad shape must name the argument")
        # No rule maps `length` to the mesh: the plain op runs (no shard_map, no exchange).
        with parallel.use_rules([("length", None)]):
            assert parallel.context_axis() is None
    assert parallel.context_axis() is None  # no mesh
    # The HLO check itself sees a length-sized gather.
    assert length_collectives(f"%ag = f32[{b},{l},{d}]{{2,1,0}} all-gather(f32[{b},{l // 4},{d}] %x)", 4)
    assert not length_collectives(f"%ag = f32[4,{b},{d},{n}]{{2,1,0}} all-gather(f32[1,{b},{d},{n}] %x)", 4)
    print("PASS errors", flush=True)


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}

if __name__ == "__main__":
    mesh_arg, *cases = sys.argv[2:]
    sizes = dict(item.split("=") for item in mesh_arg.split(","))
    mesh = parallel.make_mesh([int(v) for v in sizes.values()], list(sizes))
    spec = P("data" if "data" in sizes else None, "context")
    for c in cases:
        CASES[c](mesh, spec)
    print("OK")
