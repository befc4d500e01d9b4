"""How far each implementation is from the exact result for float32 inputs, values and gradients.

For ``ssd`` and ``selective_scan``: the relative (Frobenius) error of ``y`` and of the gradients
(one fixed random cotangent) for float32 inputs, per implementation, against the float64 ``"scan"``
reference. The kernels run compiled on a Hopper GPU and in Mosaic GPU interpret mode on a CPU (the
interpreter computes ``exp`` exactly, so only a GPU run measures the kernels' ``ex2.approx``).

The SSD kernel's tensor-core products take 16-bit operands, so float32 ``x``, ``B``, ``C`` are
rounded to bfloat16: this is why ``impl="auto"`` keeps float32 SSD/Hydra inputs on ``"xla"``.

    python -m benchmarks.precision [--json out.jsonl]

Measured (``y`` / gradients, seed 0, 2026-12-07). One NVIDIA H100 80GB, compiled
(``benchmarks/results/precision_h100.jsonl``): ssd b2 l256 h2 p64 n64: kernel 3.3e-3 / 1.1e-2, XLA
1.9e-7 / 4.3e-7; selective_scan b2 l256 d64 n16: kernel 3.5e-7 / 8.0e-7, XLA 1.2e-7 / 2.1e-7.
CPU, interpret mode:
ssd b2 l256 h2 p64 n64: kernel 3.3e-3 / 1.1e-2, XLA 1.8e-7 / 5.5e-7; selective_scan b2 l256 d64 n16:
kernel 1.8e-7 / 4.5e-7, XLA 1.1e-7 / 1.8e-7.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from ssm_jax import ops


def _rel(a, ref) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def _ssd_problem(rng, b, l, h, p, g, n):
    args = (rng.standard_normal((b, l, h, p)), rng.standard_normal((b, l, h)) - 2, -rng.uniform(0.5, 2, h),
            rng.standard_normal((b, l, g, n)), rng.standard_normal((b, l, g, n)))
    return ops.ssd, args, dict(dt_softplus=True, chunk_size=64), (b, l, h, p)


def _selective_scan_problem(rng, b, l, d, n):
    args = (rng.standard_normal((b, l, d)), rng.standard_normal((b, l, d)) - 2, -rng.uniform(0.5, 8, (d, n)),
            rng.standard_normal((b, l, n)), rng.standard_normal((b, l, n)))
    return ops.selective_scan, args, dict(dt_softplus=True), (b, l, d)


def _errors(op, args, kw, y_shape, impls, seed):
    cot = np.random.default_rng(seed + 1).standard_normal(y_shape)

    def value_and_grads(dtype, impl):
        xs = [jnp.asarray(v, dtype) for v in args]
        y, vjp = jax.vjp(lambda *a: op(*a, impl=impl, **kw), *xs)
        return y, vjp(jnp.asarray(cot, y.dtype))

    with jax.enable_x64(True):
        y64, g64 = value_and_grads(jnp.float64, "scan")
        y64, g64 = np.asarray(y64), [np.asarray(g) for g in g64]
    out = {}
    for impl in impls:
        y, grads = value_and_grads(jnp.float32, impl)
        out[impl] = {"y": _rel(y, y64), "grad": max(_rel(g, r) for g, r in zip(grads, g64))}
    return out


def main(shapes: dict | None = None, seed: int = 0, impls=("pallas_gpu", "xla")) -> list[dict]:
    """One row per (op, impl): ``{"op", "impl", "shape", "backend", "y", "grad"}`` relative errors."""
    shapes = shapes or {"ssd": dict(b=2, l=256, h=2, p=64, g=1, n=64), "selective_scan": dict(b=2, l=256, d=64, n=16)}
    make = {"ssd": _ssd_problem, "selective_scan": _selective_scan_problem}
    rows = []
    for name, shape in shapes.items():
        op, args, kw, y_shape = make[name](np.random.default_rng(seed), **shape)
        for impl, err in _errors(op, args, kw, y_shape, impls, seed).items():
            row = dict(op=name, impl=impl, shape=shape, backend=jax.default_backend(), device=jax.devices()[0].device_kind, **err)
            print(f"{name} {shape} {impl}: y {err['y']:.1e}, grad {err['grad']:.1e}  ({row['device']})")
            rows.append(row)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="append one JSON row per (op, impl) to this file")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rows = main(seed=a.seed)
    if a.json:
        with open(a.json, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
