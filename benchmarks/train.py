r"""End-to-end training speed: the trainer's own step on the LM configs, and mamba_ssm beside it.

For each ``--arch`` of ``experiments/configs/lm/gpt2_small.py`` this runs
``experiments.train.train_and_evaluate`` itself (the jitted step the trainer runs, its real data
pipeline: the stdlib corpus packed into ``--seq_len`` sequences) for ``--warmup + --steps``
steps, logging twice: the first window holds the compilation, the second is the steady state.
Rows (JSON lines, and a table at the end):

* ``tokens_per_sec``, ``step_ms`` -- the steady window;
* ``compile_s`` -- the first window's time minus its steps at the steady rate (compilation and
  the first step's dispatch);
* ``mfu`` -- ``flops_per_token`` (``ssm_jax.models.counting``: 6 x matmul parameters + the
  mixers' own FLOPs) x tokens/s / ``--peak_tflops`` (default 989: the H100/H200 dense bf16
  datasheet rate; 784 is what a bf16 8192^3 matmul reaches on the lent H200);
* ``peak_memory_bytes`` -- the device's ``peak_bytes_in_use`` (GPU/TPU; absent on CPU);
* ``scan_layers``, ``remat`` -- the model's layer loop: ``--scan_layers both`` times every arch
  twice, one compiled block scanned over the layers and the Python loop of blocks (compile time
  grows with depth only in the latter); ``--remat`` sets the rematerialization policy.

When ``mamba_ssm`` imports (built from source with its CUDA extensions), the same model
in PyTorch (``MambaLMHeadModel``, random tokens, bf16 autocast, fused AdamW) is timed in the same
process for ``mamba`` and ``mamba2``: ``peer_tokens_per_sec`` and ``speedup``.

    PYTHONPATH=$PWD python3 benchmarks/train.py --arch mamba2 --arch mamba --dtype bfloat16 \
        --scan_layers both --json $OUT/train.json
    python -m benchmarks.train --smoke      # seconds on a CPU: 2-layer models, 4 + 4 steps

Not yet run on a GPU: no numbers are recorded from it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import jax

from benchmarks.peers import add_rows, mamba_lm, write_jsonl
from benchmarks.timing import trainer_speed
from ssm_jax.models.config import REMAT_POLICIES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "configs", "lm", "gpt2_small.py")


def _config(arch: str, *, smoke: bool, batch: int, seq_len: int, dtype: str, scan_layers: bool | None = None,
            remat: str | None = None):
    spec = importlib.util.spec_from_file_location("gpt2_small", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(f"arch={arch}" + (",smoke" if smoke else ""))
    c.unlock()
    c.data.batch_size = batch
    c.data.seq_len = seq_len
    c.model.dtype = dtype
    if scan_layers is not None:
        c.model.scan_layers = scan_layers
    if remat is not None:
        c.model.remat = remat
    return c.lock()


def ours(arch: str, args, scan_layers: bool | None = None) -> dict:
    from experiments import tasks
    from ssm_jax.models import counting

    c = _config(arch, smoke=args.smoke, batch=args.batch, seq_len=args.seq_len, dtype=args.dtype,
                scan_layers=scan_layers, remat=args.remat)
    speed = trainer_speed(c, warmup=args.warmup, steps=args.steps)
    model_cfg = tasks.LanguageModeling().model_config(c.model.to_dict())
    fpt = counting.flops_per_token(model_cfg, int(c.data.seq_len))
    return dict(
        impl="ssm_jax", arch=arch, batch=args.batch, seq_len=args.seq_len, dtype=args.dtype,
        scan_layers=bool(c.model.scan_layers), remat=str(c.model.remat), parameters=counting.param_count(model_cfg), flops_per_token=fpt,
        mfu=fpt * speed["tokens_per_sec"] / (args.peak_tflops * 1e12), peak_tflops=args.peak_tflops,
        backend=jax.default_backend(), device=str(jax.devices()[0].device_kind), **speed,
    )


def mamba_ssm_row(arch: str, args, config) -> dict | None:
    """The same model in mamba_ssm, timed in this process; None (with the reason printed) if it
    cannot run here."""
    from experiments import tasks

    peer = mamba_lm(tasks.LanguageModeling().model_config(config.model.to_dict()), dtype="float32", who="benchmarks.train")
    if peer is None:
        return None
    torch, model = peer
    m = config.model
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    ids = torch.randint(0, m.vocab_size, (args.batch, args.seq_len + 1), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / args.steps
    row = dict(impl="mamba_ssm", arch=arch, batch=args.batch, seq_len=args.seq_len, dtype="bf16 autocast",
               tokens_per_sec=args.batch * args.seq_len / dt, step_ms=1e3 * dt,
               peak_memory_bytes=int(torch.cuda.max_memory_allocated()))
    del model, opt
    torch.cuda.empty_cache()
    return row


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(prog="benchmarks.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", action="append", help="gpt2_small arch (repeatable; default mamba2, mamba)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="steps before timing (compile included)")
    p.add_argument("--peak_tflops", type=float, default=989.0)
    p.add_argument("--scan_layers", choices=("config", "on", "off", "both"), default="config",
                   help="scan the layers (one compiled block) or loop over them; both: a row each (default: as the config)")
    p.add_argument("--remat", choices=REMAT_POLICIES, default=None, help="rematerialization policy (default: as the config)")
    p.add_argument("--no_peer", action="store_true", help="skip mamba_ssm")
    p.add_argument("--smoke", action="store_true", help="tiny models, a few steps: a CPU check")
    p.add_argument("--json", default=None, help="write the rows here (JSON lines)")
    a = p.parse_args(argv)
    if a.smoke:
        a.batch, a.seq_len, a.steps, a.warmup, a.dtype = 2, 64, 4, 4, "float32"
    archs = a.arch or ["mamba2", "mamba"]
    rows = []
    for arch in archs:
        config = _config(arch, smoke=a.smoke, batch=a.batch, seq_len=a.seq_len, dtype=a.dtype)
        scans = {"config": [None], "on": [True], "off": [False], "both": [True, False]}[a.scan_layers]
        for i, scan in enumerate(scans):
            peer = None if (a.no_peer or i) else mamba_ssm_row(arch, a, config)
            add_rows(rows, ours(arch, a, scan), peer)
    write_jsonl(a.json, rows)
    print("\n| impl | arch | layers | batch x len | tokens/s | step ms | MFU | compile s | peak mem GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mem = r.get("peak_memory_bytes")
        layers = ("scan" if r["scan_layers"] else "loop") + (f", remat {r['remat']}" if r["remat"] != "none" else "") \
            if "scan_layers" in r else "—"
        cells = [r["impl"], r["arch"], layers, f"{r['batch']} x {r['seq_len']}", f"{r['tokens_per_sec']:.4g}", f"{r['step_ms']:.3g}",
                 f"{100 * r['mfu']:.1f}%" if "mfu" in r else "—", f"{r['compile_s']:.1f}" if "compile_s" in r else "—",
                 f"{mem / 2**30:.1f}" if mem else "—"]
        print("| " + " | ".join(cells) + " |")
    return rows


if __name__ == "__main__":
    from experiments.backend_flags import set_cpu_fft_flag

    set_cpu_fft_flag()  # before jax starts its backend: S4/S4D's FFTs can deadlock the CPU pool
    main()
