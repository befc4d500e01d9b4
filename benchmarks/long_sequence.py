"""Million-token sequences: one mixer layer over a 1,048,576-token sequence at d_model 768.

One row per mixer (Mamba, Mamba-2, Hydra, S4D): the time and the memory footprint of one forward
and, where it fits, one forward+backward of the layer (``ssm_jax.nn``, ``impl="auto"``: the
Pallas kernels on a GPU/TPU) on a batch of one sequence. ``--context N`` runs the same layers
with the sequence split over ``N`` devices (``mesh.context``, :mod:`ssm_jax.parallel.context`)
and reports the largest difference from the one-device output, so the context-parallel path is
checked at the benchmark's own shapes. An allocation failure is recorded as ``"oom"``, not raised.

    python -m benchmarks.long_sequence --json $OUT/long_sequence.jsonl          # one H200
    python -m benchmarks.long_sequence --context 8 --json $OUT/long_sequence_cp8.jsonl
    python -m benchmarks.long_sequence --smoke     # seconds on a CPU (context over its devices)

Measured (one NVIDIA H100 80GB, bf16, ``python -m benchmarks.long_sequence --json ...``;
``benchmarks/results/long_sequence_h100.jsonl``, the last four rows), one layer, one
1,048,576-token sequence, 2026-12-07; footprint = the compiled call's arguments, outputs and
temporaries (``memory_analysis``), so each row is its own call's:

    mixer     forward ms   forward footprint   fwd+bwd ms   fwd+bwd footprint
    Mamba        53.2          16.2 GB             289           51.7 GB
    Mamba-2      51.1          19.9 GB             288           41.6 GB
    Hydra        56.3          27.1 GB             222           59.1 GB
    S4D         538            25.8 GB             993           37.1 GB

Every row fits one 80 GB card, forward+backward included (the times of the 2026-12-06 run agree
within 1%). An H200 has not run it; its 141 GB would change which rows fit only for longer
sequences. Hydra's forward+backward (two scan directions) takes less time than Mamba-2's: not
investigated yet. An earlier run (2026-12-06) read memory from the
device's process-wide high-water mark, which carried each row into the next; and S4D's backward
asked for 483 GB there: autodiff of its Vandermonde kernel kept the (h, n, l) matrix.
``ssm_jax.ops.s4d`` now builds long kernels in rematerialized pieces. S4D's layer is an FFT
convolution of the whole sequence, ten times the selective scans' forward time at this length.

``--smoke`` shrinks the sequence to 512 tokens and the width to 32; with several CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``) it also runs the context-parallel
check. S4D's layer is an FFT convolution: under ``--context`` GSPMD partitions it (its
recurrent form, ``ssm_jax.parallel.context.s4d_scan``, is the context-parallel op).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.peers import write_jsonl
from benchmarks.timing import time_ms

__all__ = ["MIXERS", "main", "run_mixer"]

MIXERS = ("mamba", "mamba2", "hydra", "s4d")
LENGTH = 1 << 20
D_MODEL = 768


def _layer(mixer: str, d_model: int, *, smoke: bool, dtype: str):
    from ssm_jax import nn

    rngs = nnx.Rngs(0)
    if mixer == "mamba":
        return nn.Mamba(d_model, nn.MambaConfig(d_state=4 if smoke else 16), dtype=dtype, rngs=rngs)
    if mixer == "mamba2":
        cfg = nn.Mamba2Config(d_state=8, headdim=16, chunk_size=32) if smoke else nn.Mamba2Config(d_state=128, headdim=64)
        return nn.Mamba2(d_model, cfg, dtype=dtype, rngs=rngs)
    if mixer == "hydra":
        cfg = nn.HydraConfig(d_state=8, headdim=16, chunk_size=32) if smoke else nn.HydraConfig(d_state=64, headdim=64)
        return nn.Hydra(d_model, cfg, dtype=dtype, rngs=rngs)
    if mixer == "s4d":
        return nn.S4D(d_model, nn.S4DConfig(d_state=8 if smoke else 64), dtype=dtype, rngs=rngs)
    raise ValueError(f"long_sequence: mixer must be one of {MIXERS}; got {mixer!r}")


def _footprint_bytes(compiled) -> int | None:
    """Arguments + outputs + XLA's temporaries of one compiled call (its own footprint: the
    device's ``peak_bytes_in_use`` is a high-water mark over the whole process, so it would carry
    one row's peak into the next)."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def _is_oom(e: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower()


def _timed(f, *args, reps: int):
    """``(ms, footprint_bytes)`` of the jitted ``f`` or ``("oom", footprint_bytes)``."""
    compiled = f.lower(*args).compile()
    footprint = _footprint_bytes(compiled)
    try:
        ms, _ = time_ms(compiled, *args, reps=reps, inner=1)
    except Exception as e:  # noqa: BLE001 -- only allocation failures are results
        if _is_oom(e):
            return "oom", footprint
        raise
    return ms, footprint


def run_mixer(mixer: str, *, length: int, d_model: int, dtype: str, context: int, smoke: bool, reps: int,
              backward: bool = True) -> dict:
    layer = _layer(mixer, d_model, smoke=smoke, dtype=dtype)
    graphdef, params = nnx.split(layer)
    x = jax.random.normal(jax.random.key(1), (1, length, d_model), jnp.float32).astype(dtype)

    def fwd(params, x):
        return nnx.merge(graphdef, params)(x)

    def loss(params, x):
        return jnp.sum(fwd(params, x).astype(jnp.float32) ** 2)

    grad = jax.grad(loss, argnums=(0, 1))
    row = dict(mixer=mixer, length=length, d_model=d_model, dtype=dtype, batch=1, context=context,
               backend=jax.default_backend(), device=jax.devices()[0].device_kind)
    if context > 1:
        from ssm_jax import parallel

        mesh = parallel.make_mesh((context,), ("context",), devices=jax.devices()[:context])
        x_in = jax.device_put(x, jax.NamedSharding(mesh, jax.P(None, "context")))
        with jax.set_mesh(mesh):
            f_fwd, f_grad = jax.jit(fwd), jax.jit(grad)
            row["forward_ms"], row["forward_bytes"] = _timed(f_fwd, params, x_in, reps=reps)
            if backward:
                row["fwd_bwd_ms"], row["fwd_bwd_bytes"] = _timed(f_grad, params, x_in, reps=reps)
            y_cp = f_fwd(params, x_in) if row["forward_ms"] != "oom" else None
        if y_cp is not None and smoke:
            # Correctness of the split at the benchmark's shapes: the one-device layer (small sizes only).
            y_one = jax.jit(fwd)(params, x)
            row["max_err_vs_one_device"] = float(jnp.max(jnp.abs(jax.device_get(y_cp).astype(np.float32) -
                                                                 np.asarray(y_one, np.float32))))
        return row
    row["forward_ms"], row["forward_bytes"] = _timed(jax.jit(fwd), params, x, reps=reps)
    if backward:
        row["fwd_bwd_ms"], row["fwd_bwd_bytes"] = _timed(jax.jit(grad), params, x, reps=reps)
    return row


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mixer", action="append", choices=MIXERS, help="repeatable; default: all")
    p.add_argument("--length", type=int, default=None, help=f"tokens (default {LENGTH}; smoke 512)")
    p.add_argument("--d_model", type=int, default=None, help=f"width (default {D_MODEL}; smoke 32)")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--context", type=int, default=1, help="devices the sequence is split over")
    p.add_argument("--no_backward", action="store_true", help="forward only")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="small sizes; context over the CPU devices")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    length = a.length or (512 if a.smoke else LENGTH)
    d_model = a.d_model or (32 if a.smoke else D_MODEL)
    dtype = "float32" if a.smoke else a.dtype
    contexts = [a.context]
    if a.smoke and a.context == 1 and jax.device_count() > 1:
        contexts.append(jax.device_count())
    if max(contexts) > jax.device_count():
        p.error(f"--context {max(contexts)} needs that many devices; there are {jax.device_count()}")
    rows = []
    for mixer in a.mixer or MIXERS:
        for context in contexts:
            t0 = time.perf_counter()
            row = run_mixer(mixer, length=length, d_model=d_model, dtype=dtype, context=context, smoke=a.smoke,
                            reps=1 if a.smoke else a.reps, backward=not a.no_backward)
            row["wall_s"] = time.perf_counter() - t0
            rows.append(row)
            print("  ".join(f"{k}={_fmt(row.get(k))}" for k in ("mixer", "length", "context", "forward_ms",
                                                                 "forward_bytes", "fwd_bwd_ms", "fwd_bwd_bytes",
                                                                 "max_err_vs_one_device")), flush=True)
    write_jsonl(a.json, rows)
    return rows


if __name__ == "__main__":
    main()
