"""Sharded kernel calls against one device, run in a subprocess with simulated CPU devices.

``python -m tests.pallas_kernels.sharding_check OP IMPL MESH`` (from the repository root, with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``) checks, for ``OP`` in ``ssd`` /
``selective_scan``, ``IMPL`` a kernel implementation (interpret mode on CPU) and ``MESH`` one of
:data:`MESHES`:

* the jitted forward and the jitted gradient, with the inputs batch-sharded by ``NamedSharding``,
  equal the same implementation on one device without a mesh (1e-5) and the sequential reference
  (the kernel's tolerance);
* their compiled HLO has no all-gather, and no collective whose result has a length axis;
* ``y`` keeps the input's sharding.

The Mosaic TPU kernels run in strict TPU interpret mode (:mod:`tests.pallas_kernels.tpu_interpret`,
one simulated core per device): a race between grid steps or a read of unwritten memory fails.

It prints ``OK`` at the end; :mod:`tests.pallas_kernels.test_sharding` runs it.
"""

from __future__ import annotations

import contextlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from pallas_kernels import _sharding
from ssm_jax import ops
from tests.numerics import assert_close
from tests.pallas_kernels import gpu_interpret
from tests.pallas_kernels.tpu_interpret import STRICT_1, strict_interpret

# name -> (axis sizes, axis names, axis type, rules table for use_rules, how x is sharded). The
# axis names are deliberately not the trainer's: the kernels must take them from the types or
# the rules, never from a list of their own.
MESHES = {
    "auto_rows4": ((4,), ("rows",), AxisType.Auto, None, P("rows")),
    "explicit_rows4": ((4,), ("rows",), AxisType.Explicit, None, P("rows")),
    # batch over `rows`, heads/channels over `cols` by the rules table (Auto) or by the types.
    "auto_2x2_rules": ((2, 2), ("rows", "cols"), AxisType.Auto,
                       (("batch", "rows"), ("inner", "cols"), ("heads", "cols")), P("rows", None, "cols")),
    "explicit_2x2": ((2, 2), ("rows", "cols"), AxisType.Explicit, None, P("rows", None, "cols")),
    # 8 devices: batch over two axes.
    "auto_8": ((2, 4), ("a", "b"), AxisType.Auto, None, P(("a", "b"))),
    "explicit_8": ((2, 2, 2), ("a", "b", "c"), AxisType.Explicit, None, P(("a", "b"), None, "c")),
}

_COLLECTIVE = re.compile(r"=\s*(\S+)\s+(all-reduce|all-to-all|collective-permute|reduce-scatter|all-gather)(-start)?\(")


def _inputs(op: str, b: int, shape: str = "tile"):
    rng = np.random.default_rng(0)
    if op == "ssd":
        from tests.ops.test_ssd import make_inputs

        # "padded": a head dim and state size off the GPU kernel's tiles (run zero-padded per shard).
        p, n = (16, 16) if shape == "padded" else (64, 64)
        kw = make_inputs(rng, b=b, l=21, h=4, p=p, g=2, n=n, options=("all",))
        kw.pop("segment_ids")
        kw["segment_ids"] = np.asarray(np.cumsum(rng.random((b, 21)) < 0.2, axis=1), np.int32)
        arrays = {k: kw.pop(k) for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")}
        return arrays, kw, dict(l=21), ops.ssd
    from tests.ops.test_selective_scan import make_inputs

    args, kw = make_inputs(rng, b=b, l=21, d=8, n=4, g=2)
    arrays = {**args, **{k: kw.pop(k) for k in ("D", "z", "dt_bias", "initial_state")}}
    return arrays, kw, dict(l=21), ops.selective_scan


def _spec_for(name: str, v, x_spec: P, op: str) -> P:
    """The sharding the caller gives each argument: x's batch axes on every batch dimension, its
    channel/head axes on the channel/head dimension (of the parameters too, as the rules table
    shards them: a replicated parameter's gradient is gathered from the channel shards)."""
    batch = x_spec[0] if len(x_spec) > 0 else None
    ch = x_spec[2] if len(x_spec) > 2 else None
    if name in ("A", "D", "dt_bias"):
        return P(ch)
    if name == "segment_ids":
        return P(batch)
    if name in ("B", "C"):
        return P(batch, None, ch)  # g = 2 groups: one per `ch` shard
    if name == "initial_state":
        return P(batch, ch)
    if name == "dt" and op == "ssd":
        return P(batch, None, ch)
    return x_spec


def check_hlo(text: str, l: int, what: str) -> None:
    """No all-gather; no collective with a result of length ``l`` or its padded chunk multiple."""
    gathers = [line.strip()[:300] for line in text.splitlines() if "all-gather" in line]
    assert not gathers, f"{what}: the compiled HLO has all-gathers:\n" + "\n".join(gathers)
    lengths = {l, -(-l // 64) * 64, -(-l // 8) * 8, -(-l // 128) * 128}
    for m in _COLLECTIVE.finditer(text):
        dims = [int(d) for d in re.findall(r"\d+", m.group(1).split("{")[0])]
        assert not lengths & set(dims[1:] if m.group(1).startswith("(") else dims), (
            f"{what}: collective on a length axis: {m.group(0)}")


def main(op: str, impl: str, mesh_name: str, values: str = "grad", shape: str = "tile") -> None:
    """``values="forward"``: the gradient's HLO is checked but its values are not compared.
    ``shape="padded"``: SSD at p = n = 16."""
    if impl == "pallas_gpu":
        gpu_interpret.per_device_state()
    # One simulated TensorCore per device: two would run each device's grid on threads that
    # compile and execute nested XLA computations inside a callback, which deadlocks across the
    # simulated CPU devices (jax 0.11.2).
    with strict_interpret(STRICT_1) if impl == "pallas_tpu" else contextlib.nullcontext():
        _check(op, impl, mesh_name, values, shape)
    print("OK")


def _check(op: str, impl: str, mesh_name: str, values: str, shape: str = "tile") -> None:
    sizes, names, kind, rules, x_spec = MESHES[mesh_name]
    assert jax.device_count() >= int(np.prod(sizes)), jax.devices()
    mesh = jax.make_mesh(sizes, names, axis_types=(kind,) * len(names))
    b = 8 if int(np.prod(sizes)) == 8 else 4
    arrays, static, dims, fn = _inputs(op, b, shape)
    seg = static.pop("segment_ids")
    run = lambda a, s, impl: fn(**a, **static, segment_ids=s, return_final_state=True, impl=impl)  # noqa: E731

    def loss(a, s, impl):
        y, f = run(a, s, impl)
        return jnp.sum(jnp.sin(y)) + jnp.sum(f * f)

    sharded = {k: jax.device_put(v, NamedSharding(mesh, _spec_for(k, v, x_spec, op))) for k, v in arrays.items()}
    seg_sh = jax.device_put(seg, NamedSharding(mesh, P(x_spec[0])))
    # Values and gradients from one compiled program (half the compiles of two); its HLO holds
    # both the forward's and the gradient's collectives.
    step = jax.jit(lambda a, s: (run(a, s, impl), jax.grad(lambda a, s: loss(a, s, impl))(a, s)))
    with jax.set_mesh(mesh), _sharding.use_rules(rules):
        compiled = step.lower(sharded, seg_sh).compile()
        check_hlo(compiled.as_text(), dims["l"], "forward and gradient")
        (y, f), g = compiled(sharded, seg_sh)
    norm = lambda s, n: tuple(s) + (None,) * (n - len(s))  # noqa: E731
    assert norm(y.sharding.spec, y.ndim) == norm(sharded["x"].sharding.spec, y.ndim), (y.sharding, sharded["x"].sharding)
    assert f.sharding.spec[0] == x_spec[0], f.sharding

    one = {k: jnp.asarray(v) for k, v in arrays.items()}
    (y1, f1), g1 = step(one, jnp.asarray(seg))
    assert_close(y, y1, tol=1e-5, name="y sharded vs one device")
    assert_close(f, f1, tol=1e-5, name="final_state sharded vs one device")
    if values == "grad":
        for k in arrays:
            assert_close(g[k], g1[k], tol=1e-5, name=f"d{k} sharded vs one device")
    # And the reference, at the kernel's tolerance (the GPU SSD kernel computes in bf16).
    yr, fr = run(one, jnp.asarray(seg), "scan")
    tol = 2e-2 if (op, impl) == ("ssd", "pallas_gpu") else 1e-4
    assert_close(y, yr, tol=tol, name="y vs reference")
    assert_close(f, fr, tol=tol, name="final_state vs reference")


if __name__ == "__main__":
    main(*sys.argv[1:6])
