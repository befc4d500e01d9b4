"""Time every registered implementation of each op, forward and forward+backward.

    python -m benchmarks.ops                                  # small shapes, every op
    python -m benchmarks.ops --shapes paper --ops ssd,selective_scan --json results.json

Each implementation is ``jax.jit``-compiled, warmed up, then timed as the median of repeated
calls ending in ``block_until_ready``. Forward+backward is ``jax.grad`` of ``Σ y·ct`` (a fixed
random cotangent) with respect to the op's main inputs. Achieved bandwidth is the *compulsory*
traffic divided by the time: forward reads every input and writes the output once; the backward
additionally reads the cotangent and the inputs again and writes one gradient per
differentiated input. It is a floor on traffic, so GB/s is a lower bound on what moved.

Skipped, with a note: Pallas implementations off their chip (interpret mode measures the
interpreter), references too large for ``--shapes paper`` (O(l²) matrices, the SSD sequential scan
whose backward keeps every step's state) unless ``--all-impls``, and implementations that
cannot run here (their reason is printed).

Adding an op is one entry in ``BENCHES``: its module, the function to call, how to make inputs
for a shape, the shapes, and which inputs to differentiate.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ssm_jax.ops.registry import get_registry

# --------------------------------------------------------------------------------------------
# The table of ops
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bench:
    """One op to time.

    ``make(shape, dtype, rng) -> (arrays, static)``: ``arrays`` are passed as keyword arguments
    (and may be differentiated), ``static`` are the other keyword arguments. ``call(fn, impl,
    arrays, static)`` runs it (default: ``fn(**arrays, **static, impl=impl)``).
    """

    name: str
    module: str  # imported first; it creates the registry
    fn: str  # attribute of `module`
    registry: str  # whose implementations are enumerated
    make: Callable[[dict, Any, np.random.Generator], tuple[dict, dict]]
    shapes: dict[str, dict]  # "small" / "paper" -> shape dict
    grad: tuple[str, ...]  # arrays to differentiate
    # impls skipped at "paper" unless --all-impls: O(l^2) matrices, and sequential references
    # whose backward keeps every step's state (SSD "scan": 32 GiB at the paper shape)
    heavy: frozenset = frozenset()
    needs: tuple[str, ...] = ()  # further modules imported before the run (they register implementations)


def _normal(rng, shape, dtype, scale=1.0):
    return jnp.asarray(scale * rng.standard_normal(shape), dtype)


def _make_selective_scan(s, dtype, rng):
    b, l, d, n = s["b"], s["l"], s["d"], s["n"]
    arrays = dict(
        x=_normal(rng, (b, l, d), dtype),
        dt=_normal(rng, (b, l, d), dtype, 0.5),
        A=-jnp.asarray(np.exp(rng.normal(0, 0.5, (d, n))), jnp.float32),
        B=_normal(rng, (b, l, n), dtype),
        C=_normal(rng, (b, l, n), dtype),
        D=_normal(rng, (d,), jnp.float32),
        z=_normal(rng, (b, l, d), dtype),
        dt_bias=_normal(rng, (d,), jnp.float32, 0.1),
    )
    return arrays, dict(dt_softplus=True)


def _make_ssd(s, dtype, rng, directions=None):
    b, l, h, p, n, g = s["b"], s["l"], s["h"], s["p"], s["n"], s["g"]
    dirs = () if directions is None else (directions,)
    arrays = dict(
        x=_normal(rng, (b, l, h, p), dtype),
        dt=_normal(rng, (b, l, *dirs, h), dtype, 0.5),
        A=-jnp.asarray(np.exp(rng.normal(0, 0.5, h)), jnp.float32),
        B=_normal(rng, (b, l, *dirs, g, n), dtype),
        C=_normal(rng, (b, l, *dirs, g, n), dtype),
        D=_normal(rng, (h,), jnp.float32),
        dt_bias=_normal(rng, (h,), jnp.float32, 0.1),
    )
    if directions is None:
        arrays["z"] = _normal(rng, (b, l, h, p), dtype)
    return arrays, dict(dt_softplus=True, chunk_size=s["q"])


def _make_hydra(s, dtype, rng):
    return _make_ssd(s, dtype, rng, directions=2)


def _make_s4d(s, dtype, rng):
    from ssm_jax.ops.s4d import s4d_init

    b, l, h, n = s["b"], s["l"], s["h"], s["n"]
    A, _ = s4d_init(h, n, "legs")
    C = jnp.asarray((rng.standard_normal((h, n)) + 1j * rng.standard_normal((h, n))) / np.sqrt(2 * n), jnp.complex64)
    arrays = dict(u=_normal(rng, (b, l, h), dtype), log_dt=jnp.asarray(rng.uniform(-6.9, -2.3, h), jnp.float32),
                  A=A, C=C, D=_normal(rng, (h,), jnp.float32))  # fmt: skip
    return arrays, {}


def _make_s4(s, dtype, rng):
    from ssm_jax.ops.s4 import s4_init

    arrays, _ = _make_s4d(s, dtype, rng)
    Lambda, P, B = s4_init(s["h"], s["n"])
    del arrays["A"]
    return {**arrays, "Lambda": Lambda, "P": P, "B": B}, {}


def _make_fft_conv(s, dtype, rng):
    b, l, h = s["b"], s["l"], s["h"]
    K = jnp.asarray(rng.standard_normal((h, l)) * np.exp(-np.arange(l) / 64.0), jnp.float32)
    return dict(u=_normal(rng, (b, l, h), dtype), K=K, D=_normal(rng, (h,), jnp.float32)), {}


def _make_causal_conv1d(s, dtype, rng):
    b, l, d, k = s["b"], s["l"], s["d"], s["k"]
    arrays = dict(x=_normal(rng, (b, l, d), dtype), weight=_normal(rng, (d, k), jnp.float32, 0.5),
                  bias=_normal(rng, (d,), jnp.float32))  # fmt: skip
    return arrays, dict(activation="silu")


# S4D / S4 layers as used by a model: the kernel for this length, then the long convolution.
# The implementation being timed is the kernel's; fft_conv is its own entry.


def s4d_layer(u, log_dt, A, C, D, *, impl):
    from ssm_jax.ops import fft_conv, s4d_kernel

    return fft_conv(u, s4d_kernel(log_dt, A, C, u.shape[1], impl=impl), D=D)


def s4_layer(u, log_dt, Lambda, P, B, C, D, *, impl):
    from ssm_jax.ops import fft_conv, s4_kernel

    return fft_conv(u, s4_kernel(log_dt, Lambda, P, B, C, u.shape[1], impl=impl), D=D)


_SSD_SMALL = dict(b=1, l=256, h=4, p=16, n=16, g=1, q=64)
_SSD_PAPER = dict(b=4, l=4096, h=64, p=64, n=128, g=1, q=256)  # the Mamba-2 shape of the kernel benchmarks
_S4_SMALL = dict(b=2, l=256, h=32, n=16)
_S4_PAPER = dict(b=16, l=4096, h=256, n=32)  # LRA-scale S4/S4D layer (N = 64 real states)

BENCHES: tuple[Bench, ...] = (
    Bench("selective_scan", "ssm_jax.ops.selective_scan", "selective_scan", "selective_scan", _make_selective_scan,
          {"small": dict(b=1, l=256, d=64, n=8), "paper": dict(b=4, l=4096, d=2048, n=16)},
          grad=("x", "dt", "A", "B", "C", "D", "z")),
    Bench("ssd", "ssm_jax.ops.ssd", "ssd", "ssd", _make_ssd, {"small": _SSD_SMALL, "paper": _SSD_PAPER},
          grad=("x", "dt", "A", "B", "C", "D", "z"), heavy=frozenset({"quadratic", "scan"})),
    Bench("hydra", "ssm_jax.ops.hydra", "hydra", "hydra", _make_hydra, {"small": _SSD_SMALL, "paper": _SSD_PAPER},
          grad=("x", "dt", "A", "B", "C", "D"), heavy=frozenset({"matrix"})),
    Bench("s4d", "benchmarks.ops", "s4d_layer", "s4d_kernel", _make_s4d, {"small": _S4_SMALL, "paper": _S4_PAPER},
          grad=("u", "log_dt", "A", "C", "D"), needs=("ssm_jax.ops.s4d", "ssm_jax.ops.conv")),
    Bench("s4", "benchmarks.ops", "s4_layer", "s4_kernel", _make_s4, {"small": _S4_SMALL, "paper": _S4_PAPER},
          grad=("u", "log_dt", "Lambda", "P", "B", "C", "D"), needs=("ssm_jax.ops.s4", "ssm_jax.ops.conv")),
    Bench("fft_conv", "ssm_jax.ops.conv", "fft_conv", "fft_conv", _make_fft_conv,
          {"small": dict(b=2, l=256, h=32), "paper": dict(b=16, l=4096, h=256)}, grad=("u", "K", "D")),
    Bench("causal_conv1d", "ssm_jax.ops.conv", "causal_conv1d", "causal_conv1d", _make_causal_conv1d,
          {"small": dict(b=2, l=256, d=64, k=4), "paper": dict(b=4, l=4096, d=2048, k=4)},
          grad=("x", "weight", "bias")),
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def _nbytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _median_ms(f, args, warmup: int, iters: int) -> float:
    jax.block_until_ready(f(*args))  # compile
    for _ in range(warmup):
        jax.block_until_ready(f(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _first(y):
    return y[0] if isinstance(y, tuple) else y


def run_one(bench: Bench, impl: str, shape: dict, dtype, *, warmup: int, iters: int, bwd: bool, seed: int = 0) -> dict:
    fn = getattr(importlib.import_module(bench.module), bench.fn)
    arrays, static = bench.make(shape, dtype, np.random.default_rng(seed))

    def call(a):
        return _first(fn(**a, **static, impl=impl))

    fwd = jax.jit(call)
    y = jax.eval_shape(fwd, arrays)
    rec: dict[str, Any] = {}
    ms = _median_ms(fwd, (arrays,), warmup, iters)
    fwd_bytes = _nbytes(arrays) + _nbytes(y)
    rec.update(fwd_ms=ms, fwd_gbps=fwd_bytes / ms / 1e6)
    if bwd:
        diff = {k: arrays[k] for k in bench.grad}
        rest = {k: v for k, v in arrays.items() if k not in diff}
        ct = jnp.asarray(np.random.default_rng(seed + 1).standard_normal(y.shape), jnp.float32)

        def loss(d, r, c):
            return jnp.sum(call({**d, **r}).astype(jnp.float32) * c)

        grad = jax.jit(jax.grad(loss))
        ms = _median_ms(grad, (diff, rest, ct), warmup, iters)
        total = fwd_bytes + _nbytes(y) + _nbytes(arrays) + _nbytes(diff)
        rec.update(fwdbwd_ms=ms, fwdbwd_gbps=total / ms / 1e6)
    return rec


def _impls(bench: Bench) -> list[str]:
    reg = get_registry(bench.registry)
    return [name for name in reg.names() if name in reg]  # concrete implementations, no aliases


def _skip_reason(bench: Bench, impl: str, shapes: str, backend: str, all_impls: bool) -> str | None:
    if impl.startswith("pallas") and backend == "cpu":
        return "Pallas in interpret mode on CPU: not a timing"
    if impl in ("pallas_gpu", "pallas_tpu") and impl != f"pallas_{backend}":
        return f"{impl} would run in interpret mode on {backend}: not a timing"
    if shapes == "paper" and impl in bench.heavy and not all_impls:
        return "reference too large at paper shapes (O(l^2) matrix or per-step states; pass --all-impls)"
    return None


def _shape_str(shape: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", choices=("small", "paper"), default="small")
    parser.add_argument("--ops", default="", help="comma-separated subset of: " + ",".join(b.name for b in BENCHES))
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--dtype", default="", help="input dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=0, help="timed calls (default 5 small, 20 paper)")
    parser.add_argument("--no-bwd", action="store_true", help="forward only")
    parser.add_argument("--all-impls", action="store_true", help="also time O(l^2) references at paper shapes")
    args = parser.parse_args(argv)

    backend = jax.default_backend()
    dtype = jnp.dtype(args.dtype or ("float32" if backend == "cpu" else "bfloat16"))
    iters = args.iters or (5 if args.shapes == "small" else 20)
    wanted = [s for s in args.ops.split(",") if s]
    unknown = sorted(set(wanted) - {b.name for b in BENCHES})
    if unknown:
        parser.error(f"unknown op(s) {unknown}; choose from {[b.name for b in BENCHES]}")
    benches = [b for b in BENCHES if not wanted or b.name in wanted]

    device = str(jax.devices()[0].device_kind)
    print(f"backend={backend} device={device} jax={jax.__version__} dtype={dtype.name} shapes={args.shapes} iters={iters}")
    header = f"{'op':<15}{'impl':<12}{'fwd ms':>10}{'GB/s':>9}{'fwd+bwd ms':>12}{'GB/s':>9}  shape / note"
    print(header)
    print("-" * len(header))
    results = []
    for bench in benches:
        shape = bench.shapes[args.shapes]
        base = dict(op=bench.name, shape=shape, dtype=dtype.name, backend=backend, device=device)
        importlib.import_module(bench.module)
        for m in bench.needs:
            importlib.import_module(m)
        for impl in _impls(bench):
            rec = {**base, "impl": impl}
            reason = _skip_reason(bench, impl, args.shapes, backend, args.all_impls)
            if reason is None:
                try:
                    rec.update(run_one(bench, impl, shape, dtype, warmup=args.warmup, iters=iters, bwd=not args.no_bwd))
                except Exception as e:  # noqa: BLE001 — a benchmark reports a failing impl and goes on
                    reason = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            if reason is not None:
                rec["skipped"] = reason
                print(f"{bench.name:<15}{impl:<12}{'':>40}  {reason}")
            else:
                bwd_ms = f"{rec['fwdbwd_ms']:12.3f}{rec['fwdbwd_gbps']:9.1f}" if "fwdbwd_ms" in rec else f"{'-':>12}{'-':>9}"
                print(f"{bench.name:<15}{impl:<12}{rec['fwd_ms']:10.3f}{rec['fwd_gbps']:9.1f}{bwd_ms}  {_shape_str(shape)}")
            sys.stdout.flush()
            results.append(rec)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": backend, "device": device, "jax": jax.__version__, "results": results}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
