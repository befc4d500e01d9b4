"""Regenerate the PyTorch parity fixtures of tests/interop (needs torch and transformers).

Run with a Python that has torch, transformers, safetensors and numpy (not the project's JAX
environment), giving the JAX environment's Python for the second step::

    python3.11 -m venv /tmp/parity && /tmp/parity/bin/pip install torch==2.13.0 transformers safetensors numpy
    /tmp/parity/bin/python tests/interop/make_fixtures.py --jax-python .venv/bin/python

1. Tiny random checkpoints, each in ``fixtures/<name>/`` with ``expected.npz`` (``input_ids``
   and the reference's float32 ``logits`` on them):

   - transformers ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` (``save_pretrained``: config.json +
     model.safetensors), tied and untied, Mamba-2 with ``n_groups > 1``; one Mamba checkpoint as
     ``pytorch_model.bin`` written by ``torch.save``;
   - the mamba_ssm layout (``MambaLMHeadModel``: ``backbone.embedding``, padded vocabulary,
     config.json with ``d_model``/``n_layer``/``ssm_cfg``, ``pytorch_model.bin``): a Mamba-1 one
     renamed from a transformers model, and a Mamba-2 one with MLP blocks from
     ``MambaSSMReference`` below (mamba_ssm's ``Block``/``GatedMLP`` around transformers' mixer).

   The logits are the transformers torch path on the CPU (no CUDA kernels), in float32. Every
   parameter is perturbed away from its initial value, so that a mapping that mixed up two
   parameters with equal inits (ones, zeros, ``log(1..n)``) would fail the tests.
2. ``--resave``, run by step 1 in the JAX environment: every checkpoint that transformers can
   express is loaded with ``ssm_jax.interop.load_hf_checkpoint`` and written back with
   ``save_hf_checkpoint`` into ``fixtures/saved/<name>/``.
3. transformers loads each ``fixtures/saved/<name>`` (``AutoModelForCausalLM``; no missing,
   unexpected or mismatched tensor) and must reproduce the reference logits of step 1.

The tests check that ``save_hf_checkpoint`` still writes exactly those verified files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
SAVED = FIXTURES / "saved"
BATCH, LENGTH = 2, 11
VOCAB = 37  # not a multiple of 8: padding paths are exercised

# Checkpoints transformers can express, so --resave writes them back (the MLP one cannot be).
RESAVED = ("hf_mamba", "hf_mamba_tied_bin", "hf_mamba2", "hf_mamba2_tied", "mamba_ssm_mamba1")


# ---------------------------------------------------------------------------------------------
# Step 1 (torch)
# ---------------------------------------------------------------------------------------------


def _perturb(model, seed: int) -> None:
    """Move every parameter off its init: ``p + 0.2 * max(std(p), 0.5) * N(0, 1)``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            scale = 0.2 * max(float(p.float().std()) if p.numel() > 1 else 0.0, 0.5)
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _logits(model, input_ids: np.ndarray) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        out = model(torch.as_tensor(input_ids, dtype=torch.long))
    return (out.logits if hasattr(out, "logits") else out).float().numpy()


def _write_expected(directory: Path, input_ids: np.ndarray, logits: np.ndarray) -> None:
    np.savez(directory / "expected.npz", input_ids=input_ids.astype(np.int32), logits=logits.astype(np.float32))


def _fresh(name: str) -> Path:
    d = FIXTURES / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def _hf_pretrained(name, model, input_ids, *, bin_file: bool = False) -> None:
    import torch

    d = _fresh(name)
    if bin_file:
        model.config.save_pretrained(d)  # config.json only
        torch.save(model.state_dict(), d / "pytorch_model.bin")
    else:
        model.save_pretrained(d)
        (d / "generation_config.json").unlink(missing_ok=True)
    _write_expected(d, input_ids, _logits(model, input_ids))


def make_transformers_fixtures(input_ids: np.ndarray) -> None:
    import torch
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    m = MambaForCausalLM(MambaConfig(
        vocab_size=VOCAB, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2, conv_kernel=4,
        time_step_rank=3, tie_word_embeddings=False,
    ))
    _perturb(m, 1)
    _hf_pretrained("hf_mamba", m, input_ids)

    torch.manual_seed(1)
    m = MambaForCausalLM(MambaConfig(
        vocab_size=VOCAB, hidden_size=16, state_size=6, num_hidden_layers=2, expand=2, conv_kernel=3,
        use_bias=True, use_conv_bias=False, layer_norm_epsilon=1e-6, tie_word_embeddings=True,
    ))
    _perturb(m, 2)
    _hf_pretrained("hf_mamba_tied_bin", m, input_ids, bin_file=True)

    torch.manual_seed(2)
    m = Mamba2ForCausalLM(Mamba2Config(
        vocab_size=VOCAB, hidden_size=16, state_size=8, num_hidden_layers=2, expand=2, num_heads=4, head_dim=8,
        n_groups=2, conv_kernel=4, chunk_size=4, tie_word_embeddings=False,
    ))
    _perturb(m, 3)
    _hf_pretrained("hf_mamba2", m, input_ids)

    torch.manual_seed(3)
    m = Mamba2ForCausalLM(Mamba2Config(
        vocab_size=VOCAB, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2, num_heads=4, head_dim=8,
        n_groups=4, conv_kernel=3, chunk_size=8, use_bias=True, use_conv_bias=False, tie_word_embeddings=True,
    ))
    _perturb(m, 4)
    _hf_pretrained("hf_mamba2_tied", m, input_ids)


def _mamba_ssm_bin(name: str, state_dict, config: dict, input_ids, logits) -> None:
    import torch

    d = _fresh(name)
    torch.save(state_dict, d / "pytorch_model.bin")
    (d / "config.json").write_text(json.dumps(config, indent=4) + "\n")
    _write_expected(d, input_ids, logits[..., : config["vocab_size"]])


def make_mamba_ssm_mamba1(input_ids: np.ndarray) -> None:
    """A transformers Mamba with a padded vocabulary, renamed into mamba_ssm's names.

    The config is the original mamba_ssm format (state-spaces/mamba-130m): no d_intermediate,
    attn_layer_idx or tie_embeddings (tied).
    """
    import torch
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(4)
    padded = -(-VOCAB // 8) * 8
    m = MambaForCausalLM(MambaConfig(
        vocab_size=padded, hidden_size=16, state_size=16, num_hidden_layers=2, expand=2, conv_kernel=4,
        time_step_rank="auto", tie_word_embeddings=True,  # mamba_ssm's defaults: d_state 16, dt_rank "auto"
    ))
    _perturb(m, 5)
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in m.state_dict().items()}
    assert sd["lm_head.weight"].data_ptr() == sd["backbone.embedding.weight"].data_ptr()  # one shared storage
    config = {
        "d_model": 16, "n_layer": 2, "vocab_size": VOCAB, "ssm_cfg": {}, "rms_norm": True,
        "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8,
    }
    _mamba_ssm_bin("mamba_ssm_mamba1", sd, config, input_ids, _logits(m, input_ids))


def _mamba_ssm_reference_class():
    from torch import nn
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    class GatedMLP(nn.Module):
        """mamba_ssm.modules.mlp.GatedMLP: ``fc2(y * silu(gate))``, ``[y, gate] = fc1(x)``."""

        def __init__(self, d_model, hidden):
            super().__init__()
            self.fc1 = nn.Linear(d_model, 2 * hidden, bias=False)
            self.fc2 = nn.Linear(hidden, d_model, bias=False)

        def forward(self, x):
            y, gate = self.fc1(x).chunk(2, dim=-1)
            return self.fc2(y * nn.functional.silu(gate))

    class Block(nn.Module):
        """mamba_ssm.modules.block.Block, unfused path: Add -> norm -> mixer [-> Add -> norm2 -> mlp]."""

        def __init__(self, mixer_config, layer_idx, d_model, hidden):
            super().__init__()
            self.norm = nn.RMSNorm(d_model, eps=1e-5)
            self.mixer = Mamba2Mixer(mixer_config, layer_idx=layer_idx)
            self.norm2 = nn.RMSNorm(d_model, eps=1e-5)
            self.mlp = GatedMLP(d_model, hidden)

        def forward(self, hidden_states, residual):
            residual = hidden_states + residual if residual is not None else hidden_states
            hidden_states = self.mixer(self.norm(residual))
            residual = hidden_states + residual
            return self.mlp(self.norm2(residual)), residual

    class Backbone(nn.Module):
        def __init__(self, cfg, mixer_config, vocab_rows, hidden):
            super().__init__()
            self.embedding = nn.Embedding(vocab_rows, cfg["d_model"])
            self.layers = nn.ModuleList(
                [Block(mixer_config, i, cfg["d_model"], hidden) for i in range(cfg["n_layer"])]
            )
            self.norm_f = nn.RMSNorm(cfg["d_model"], eps=1e-5)

        def forward(self, input_ids):
            hidden_states, residual = self.embedding(input_ids), None
            for layer in self.layers:
                hidden_states, residual = layer(hidden_states, residual)
            return self.norm_f(hidden_states + residual)

    class MambaSSMReference(nn.Module):
        """mamba_ssm's MambaLMHeadModel (names and block structure) with transformers' Mamba2Mixer."""

        def __init__(self, cfg):
            super().__init__()
            ssm = cfg["ssm_cfg"]
            mixer_config = Mamba2Config(
                hidden_size=cfg["d_model"], expand=ssm["expand"], num_heads=ssm["expand"] * cfg["d_model"] // ssm["headdim"],
                head_dim=ssm["headdim"], n_groups=ssm["ngroups"], state_size=ssm["d_state"], conv_kernel=ssm["d_conv"],
                chunk_size=ssm["chunk_size"], use_bias=ssm["bias"], use_conv_bias=ssm["conv_bias"],
                layer_norm_epsilon=1e-5, num_hidden_layers=cfg["n_layer"],  # mamba_ssm's RMSNormGated eps
            )
            m = cfg["pad_vocab_size_multiple"]
            vocab_rows = -(-cfg["vocab_size"] // m) * m
            hidden = -(-cfg["d_intermediate"] // 128) * 128  # GatedMLP(multiple_of=128)
            self.backbone = Backbone(cfg, mixer_config, vocab_rows, hidden)
            self.lm_head = nn.Linear(cfg["d_model"], vocab_rows, bias=False)

        def forward(self, input_ids):
            return self.lm_head(self.backbone(input_ids))

    return MambaSSMReference


def make_mamba_ssm_mamba2_mlp(input_ids: np.ndarray) -> None:
    import torch

    config = {
        "d_model": 16, "d_intermediate": 100, "n_layer": 2, "vocab_size": VOCAB,
        "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "d_conv": 4, "expand": 2, "headdim": 8, "ngroups": 2,
                    "chunk_size": 4, "bias": False, "conv_bias": True},
        "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "pad_vocab_size_multiple": 8, "tie_embeddings": False,
    }
    torch.manual_seed(5)
    m = _mamba_ssm_reference_class()(config)
    _perturb(m, 6)
    _mamba_ssm_bin("mamba_ssm_mamba2_mlp", m.state_dict(), config, input_ids, _logits(m, input_ids))


def make_torch_zip_fixture() -> None:
    """``torch_zip/tensors.bin`` (torch.save of tensors in every layout the reader must handle) and
    ``torch_zip/tensors.npz``, the same tensors through torch's own ``.numpy()``."""
    import torch

    torch.manual_seed(6)
    w = torch.randn(5, 6)
    tensors = {
        "matrix": w,
        "transposed": w.t(),  # shares w's storage, strides (1, 6)
        "window": w[1:4, 2:],  # storage offset 8, non-contiguous
        "strided": w[::2, ::3],
        "parameter": torch.nn.Parameter(torch.randn(3, 2)),
        "bfloat16": torch.randn(4, 3).to(torch.bfloat16),
        "float16": torch.randn(7).half(),
        "float64": torch.randn(2, 2, dtype=torch.float64),
        "int64": torch.arange(-3, 9).reshape(3, 4),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    d = _fresh("torch_zip")
    torch.save(tensors, d / "tensors.bin")
    np.savez(d / "tensors.npz", **{
        k: (v.detach().float() if v.dtype == torch.bfloat16 else v.detach()).numpy() for k, v in tensors.items()
    })


# ---------------------------------------------------------------------------------------------
# Step 2 (JAX): --resave
# ---------------------------------------------------------------------------------------------


def resave() -> None:
    sys.path.insert(0, str(HERE.parents[1]))
    from ssm_jax.interop import load_hf_checkpoint, save_hf_checkpoint

    if SAVED.exists():
        shutil.rmtree(SAVED)
    for name in RESAVED:
        save_hf_checkpoint(load_hf_checkpoint(FIXTURES / name), SAVED / name)
        print(f"resaved {name}")


# ---------------------------------------------------------------------------------------------
# Step 3 (torch): transformers loads what ssm_jax saved
# ---------------------------------------------------------------------------------------------


def check_saved() -> None:
    from transformers import AutoModelForCausalLM

    for name in RESAVED:
        model, info = AutoModelForCausalLM.from_pretrained(SAVED / name, output_loading_info=True)
        problems = {k: v for k, v in info.items() if v}
        assert not problems, f"{name}: transformers reported {problems}"
        expected = np.load(FIXTURES / name / "expected.npz")
        got = _logits(model, expected["input_ids"])
        err = np.abs(got - expected["logits"]).max() / np.abs(expected["logits"]).max()
        assert err < 1e-5, f"{name}: transformers' logits on the re-saved checkpoint differ by {err:.2e} (relative)"
        print(f"transformers loads saved/{name} as {type(model).__name__}: max relative logit error {err:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jax-python", default=str(HERE.parents[1] / ".venv" / "bin" / "python"),
                        help="Python of the JAX environment, for step 2")
    parser.add_argument("--resave", action="store_true", help="step 2 only (run in the JAX environment)")
    args = parser.parse_args()
    if args.resave:
        resave()
        return
    import torch
    import transformers

    from transformers.models.mamba2 import modeling_mamba2

    # transformers 4.46's torch path normalized Mamba-2's gated RMSNorm over all of d_inner even
    # with n_groups > 1 (mamba_ssm normalizes per group); such fixtures would be wrong.
    if "group_size" not in modeling_mamba2.MambaRMSNormGated.__init__.__code__.co_varnames:
        sys.exit(f"transformers {transformers.__version__} computes Mamba-2's gated RMSNorm without groups; use >= 5.23")
    torch.set_default_dtype(torch.float32)
    rng = np.random.default_rng(0)
    input_ids = rng.integers(0, VOCAB, size=(BATCH, LENGTH))
    make_transformers_fixtures(input_ids)
    make_mamba_ssm_mamba1(input_ids)
    make_mamba_ssm_mamba2_mlp(input_ids)
    make_torch_zip_fixture()
    (FIXTURES / "VERSIONS").write_text(f"torch {torch.__version__}\ntransformers {transformers.__version__}\n")
    subprocess.run([args.jax_python, str(Path(__file__).resolve()), "--resave"], check=True,
                   env={**os.environ, "JAX_PLATFORMS": "cpu"})
    check_saved()
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    print(f"fixtures: {total / 1024:.0f} KiB in {FIXTURES}")


if __name__ == "__main__":
    main()
