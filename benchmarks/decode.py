r"""Decoding throughput of ``ssm_jax.generate`` on the 125M LMs, and mamba_ssm's ``generate`` beside it.

For each ``--arch`` of ``experiments/configs/lm/gpt2_small.py`` (randomly initialized: speed does
not depend on the weights) and each ``--batch``: a ``--prompt``-token prompt, ``--new`` greedy
tokens. Timed after a compiling call, median of ``--reps``:

* ``prefill_ms`` -- ``model.prefill`` of the prompt alone (jitted);
* ``generate_ms`` -- the whole ``ssm_jax.generate`` call (prefill + the compiled step loop);
* ``tokens_per_sec`` -- ``batch * new / generate``; ``step_ms`` -- ``(generate - prefill) / new``.

When ``mamba_ssm`` imports (built with its CUDA extensions), the same model in PyTorch generates with
``cg=True`` (CUDA graphs) in the same process, for ``mamba`` and ``mamba2``.

    PYTHONPATH=$PWD python3 benchmarks/decode.py --json $OUT/decode.json
    python -m benchmarks.decode --smoke      # seconds on a CPU

Not yet run on a GPU: no numbers are recorded from it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.peers import add_rows, mamba_lm, write_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "configs", "lm", "gpt2_small.py")


def _model_config(arch: str, *, smoke: bool, dtype: str):
    from ssm_jax import models

    spec = importlib.util.spec_from_file_location("gpt2_small", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(f"arch={arch}" + (",smoke" if smoke else ""))
    fields = c.model.to_dict()
    fields["dtype"] = dtype
    return models.LanguageModelConfig.from_dict(fields)


def _median_ms(fn, reps: int) -> float:
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def ours(arch: str, batch: int, args) -> dict:
    import ssm_jax
    from ssm_jax import models

    cfg = _model_config(arch, smoke=args.smoke, dtype=args.dtype)
    model = models.LanguageModel(cfg, rngs=nnx.Rngs(0))
    prompt = jax.random.randint(jax.random.key(1), (batch, args.prompt), 0, cfg.vocab_size, jnp.int32)

    graphdef, state = nnx.split(model)

    @jax.jit
    def prefill(state, ids):
        m = nnx.merge(graphdef, state)
        return m.prefill(ids, m.init_cache(ids.shape[0], args.prompt + args.new))[0][:, -1]

    prefill_ms = _median_ms(lambda: prefill(state, prompt), args.reps)
    generate_ms = _median_ms(lambda: ssm_jax.generate(model, prompt, args.new), args.reps)
    return dict(impl="ssm_jax", arch=arch, batch=batch, prompt=args.prompt, new=args.new, dtype=args.dtype,
                prefill_ms=prefill_ms, generate_ms=generate_ms, tokens_per_sec=batch * args.new / (generate_ms / 1e3),
                step_ms=(generate_ms - prefill_ms) / args.new, backend=jax.default_backend())


def mamba_ssm_row(arch: str, batch: int, args) -> dict | None:
    """mamba_ssm's ``generate(cg=True)`` on the same model shape; None if it cannot run here."""
    peer = mamba_lm(_model_config(arch, smoke=args.smoke, dtype=args.dtype), dtype=args.dtype, who="benchmarks.decode")
    if peer is None:
        return None
    torch, model = peer
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (batch, args.prompt), device="cuda")
    run = lambda: model.generate(ids, max_length=args.prompt + args.new, cg=True, top_k=1)  # noqa: E731
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.reps):
        t = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t))
    ms = statistics.median(times)
    del model
    torch.cuda.empty_cache()
    return dict(impl="mamba_ssm (cg=True)", arch=arch, batch=batch, prompt=args.prompt, new=args.new, dtype=args.dtype,
                generate_ms=ms, tokens_per_sec=batch * args.new / (ms / 1e3))


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(prog="benchmarks.decode", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", action="append", help="gpt2_small arch (repeatable; default mamba, mamba2, hybrid)")
    p.add_argument("--batch", type=int, action="append", help="batch sizes (repeatable; default 1, 16, 64)")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=512)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--no_peer", action="store_true", help="skip mamba_ssm")
    p.add_argument("--smoke", action="store_true", help="tiny models, short prompts: a CPU check")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.smoke:
        a.prompt, a.new, a.reps, a.dtype = 8, 8, 2, "float32"
        a.batch = a.batch or [1, 2]
    archs = a.arch or ["mamba", "mamba2", "hybrid"]
    rows = []
    for arch in archs:
        for batch in a.batch or [1, 16, 64]:
            add_rows(rows, ours(arch, batch, a), None if a.no_peer else mamba_ssm_row(arch, batch, a))
    write_jsonl(a.json, rows)
    print("\n| impl | arch | batch | prefill ms | generate ms | tokens/s | ms/token |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        pre = f"{r['prefill_ms']:.3g}" if "prefill_ms" in r else "—"
        step = f"{r['step_ms']:.3g}" if "step_ms" in r else "—"
        print(f"| {r['impl']} | {r['arch']} | {r['batch']} | {pre} | {r['generate_ms']:.4g} | {r['tokens_per_sec']:.4g} | {step} |")
    return rows


if __name__ == "__main__":
    from experiments.backend_flags import set_cpu_fft_flag

    set_cpu_fft_flag()  # before jax starts its backend: S4/S4D's FFTs can deadlock the CPU pool
    main()
