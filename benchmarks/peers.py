"""The same models in mamba_ssm (PyTorch), for the end-to-end benchmarks' same-run baselines.

mamba_ssm is not a dependency: build it (and causal_conv1d) from source with their CUDA extensions on
the GPU machine and put it on ``PYTHONPATH``. :func:`mamba_lm` returns ``None`` and prints the reason when it cannot run here.
"""

from __future__ import annotations

import json
import sys

__all__ = ["add_rows", "mamba_lm", "write_jsonl"]


def mamba_lm(model_config, *, dtype: str, who: str):
    """``(torch, MambaLMHeadModel)`` with the shape of our ``LanguageModelConfig`` (a Mamba or
    Mamba-2 stack, tied embeddings, no MLP), on CUDA; ``None`` if torch/mamba_ssm/CUDA is missing
    or the config has another mixer."""
    arch = model_config.mixer
    if arch not in ("mamba", "mamba2") or model_config.layer_mixers is not None or model_config.d_intermediate:
        return None
    try:
        import torch
        from mamba_ssm.models.config_mamba import MambaConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    except Exception as e:  # noqa: BLE001 -- report whatever stops the import, then go on
        print(f"[{who}] mamba_ssm rows skipped: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    if not torch.cuda.is_available():
        print(f"[{who}] mamba_ssm rows skipped: no CUDA device for torch", file=sys.stderr)
        return None
    sub = getattr(model_config, arch)
    ssm_cfg = dict(layer="Mamba1" if arch == "mamba" else "Mamba2", d_state=sub.d_state, expand=sub.expand,
                   d_conv=sub.d_conv)
    if arch == "mamba2":
        ssm_cfg.update(headdim=sub.headdim, chunk_size=sub.chunk_size, ngroups=sub.ngroups)
    cfg = MambaConfig(d_model=model_config.d_model, n_layer=model_config.n_layers, vocab_size=model_config.vocab_size,
                      ssm_cfg=ssm_cfg, rms_norm=True, residual_in_fp32=True, fused_add_norm=True,
                      pad_vocab_size_multiple=model_config.pad_vocab_size_multiple, tie_embeddings=True, d_intermediate=0)
    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype, torch.float32)
    return torch, MambaLMHeadModel(cfg, device="cuda", dtype=torch_dtype)


def add_rows(rows: list, ours: dict, peer: dict | None) -> None:
    """Append (and print as JSON) our row and the peer's from the same run; ours gets
    ``peer_tokens_per_sec`` and ``speedup`` when there is a peer."""
    if peer:
        ours["peer_tokens_per_sec"] = peer["tokens_per_sec"]
        ours["speedup"] = ours["tokens_per_sec"] / peer["tokens_per_sec"]
    for r in (ours, peer):
        if r:
            rows.append(r)
            print(json.dumps(r), flush=True)


def write_jsonl(path: str | None, rows: list) -> None:
    if path:
        with open(path, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
