"""How far the Mosaic GPU SSD kernel is from the exact result for float32 inputs.

The kernel's tensor-core products take 16-bit operands, so float32 ``x``, ``B``, ``C`` are rounded
to bfloat16; this is why ``impl="auto"`` keeps float32 SSD/Hydra inputs on ``"xla"``. Prints the
relative (Frobenius) error of ``y`` for float32 inputs: the kernel (Mosaic GPU interpret mode on a
CPU, compiled on a Hopper GPU) and the XLA path, each against the float64 ``"scan"`` reference.

    python -m benchmarks.ssd_precision

Measured (CPU, interpret mode, b=2 l=256 h=2 p=64 g=1 n=64, seed 0, 2026-12-07): kernel 3.3e-3,
XLA 1.8e-7.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ssm_jax import ops


def _rel(a, ref) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def main(b=2, l=256, h=2, p=64, g=1, n=64, seed=0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    args = (rng.standard_normal((b, l, h, p)), rng.standard_normal((b, l, h)) - 2, -rng.uniform(0.5, 2, h),
            rng.standard_normal((b, l, g, n)), rng.standard_normal((b, l, g, n)))
    kw = dict(dt_softplus=True, chunk_size=64)
    with jax.enable_x64(True):
        exact = ops.ssd(*(jnp.asarray(v, jnp.float64) for v in args), impl="scan", **kw)
    fp32 = [jnp.asarray(v, jnp.float32) for v in args]
    out = {impl: _rel(ops.ssd(*fp32, impl=impl, **kw), exact) for impl in ("pallas_gpu", "xla")}
    print(f"float32 inputs, relative error of y against float64 (b={b} l={l} h={h} p={p} g={g} n={n}, "
          f"{jax.default_backend()}): " + ", ".join(f"{k} {v:.1e}" for k, v in out.items()))
    return out


if __name__ == "__main__":
    main()
