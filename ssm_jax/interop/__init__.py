"""Checkpoint conversion to and from the PyTorch reference formats.

* :func:`load_hf_checkpoint` — a transformers ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` or a
  mamba_ssm ``MambaLMHeadModel`` directory -> :class:`ssm_jax.models.LanguageModel`.
* :func:`save_hf_checkpoint` — a Mamba or Mamba-2 ``LanguageModel`` -> a transformers directory.
* :func:`read_torch_state_dict` — the tensors of a ``torch.save`` file, without torch.
"""

from ssm_jax.interop.checkpoint import load_hf_checkpoint, read_state_dict, save_hf_checkpoint
from ssm_jax.interop.hf_config import LAYOUTS, ReferenceConfig, detect_layout, from_reference_config, to_transformers_config
from ssm_jax.interop.torch_zip import read_torch_state_dict

__all__ = [
    "LAYOUTS",
    "ReferenceConfig",
    "detect_layout",
    "from_reference_config",
    "load_hf_checkpoint",
    "read_state_dict",
    "read_torch_state_dict",
    "save_hf_checkpoint",
    "to_transformers_config",
]
