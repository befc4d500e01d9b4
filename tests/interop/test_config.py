"""config.json translation: every layout, the fields that are refused, the ones that are ignored."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ssm_jax.interop import detect_layout, from_reference_config, to_transformers_config
from ssm_jax.models import LanguageModelConfig, Mamba2Config, MambaConfig

FIXTURES = Path(__file__).parent / "fixtures"

# config.json of state-spaces/mamba-130m-hf (transformers 4.39 conversion of mamba_ssm), with the
# mamba_ssm leftovers (d_model, n_layer, fused_add_norm, rms_norm, ssm_cfg, ...) that
# transformers never reads.
MAMBA_130M_HF = {
    "architectures": ["MambaForCausalLM"], "bos_token_id": 0, "conv_kernel": 4, "d_inner": 1536, "d_model": 768,
    "eos_token_id": 0, "expand": 2, "fused_add_norm": True, "hidden_act": "silu", "hidden_size": 768,
    "initializer_range": 0.1, "intermediate_size": 1536, "layer_norm_epsilon": 1e-05, "model_type": "mamba",
    "n_layer": 24, "num_hidden_layers": 24, "pad_token_id": 0, "pad_vocab_size_multiple": 8,
    "rescale_prenorm_residual": False, "residual_in_fp32": True, "rms_norm": True, "ssm_cfg": {}, "state_size": 16,
    "time_step_floor": 0.0001, "time_step_init_scheme": "random", "time_step_max": 0.1, "time_step_min": 0.001,
    "time_step_rank": 48, "time_step_scale": 1.0, "torch_dtype": "float32", "transformers_version": "4.39.0.dev0",
    "use_bias": False, "use_cache": True, "use_conv_bias": True, "vocab_size": 50280,
}

# A transformers 4.44 Mamba2 config (Codestral-style): rms_norm / norm_before_gate / time_step_rank
# are carried by Mamba2Config but never read by its modeling code.
MAMBA2_HF_444 = {
    "architectures": ["Mamba2ForCausalLM"], "bos_token_id": 0, "chunk_size": 256, "conv_kernel": 4, "eos_token_id": 0,
    "expand": 2, "head_dim": 64, "hidden_act": "silu", "hidden_size": 256, "initializer_range": 0.1,
    "layer_norm_epsilon": 1e-05, "model_type": "mamba2", "n_groups": 8, "norm_before_gate": True, "num_heads": 8,
    "num_hidden_layers": 4, "pad_token_id": 0, "rescale_prenorm_residual": False, "residual_in_fp32": True,
    "rms_norm": True, "state_size": 128, "tie_word_embeddings": False, "time_step_floor": 0.0001,
    "time_step_limit": [0.0, math.inf], "time_step_max": 0.1, "time_step_min": 0.001, "time_step_rank": 16,
    "torch_dtype": "bfloat16", "transformers_version": "4.44.0.dev0", "use_bias": False, "use_cache": True,
    "use_conv_bias": True, "vocab_size": 32768,
}

# mamba_ssm's MambaConfig as its save_pretrained writes it (state-spaces/mamba2-130m).
MAMBA2_SSM = {
    "d_model": 768, "d_intermediate": 0, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {"layer": "Mamba2"},
    "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
    "pad_vocab_size_multiple": 16, "tie_embeddings": True,
}


def _fixture_config(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())


def test_mamba_130m_hf():
    ref = from_reference_config(MAMBA_130M_HF)
    assert ref.layout == "transformers-mamba"
    assert ref.embedding_key == "backbone.embeddings.weight"
    assert ref.vocab_rows == 50280
    assert ref.model_config == LanguageModelConfig(
        vocab_size=50280, d_model=768, n_layers=24, mixer="mamba",
        mamba=MambaConfig(d_state=16, d_conv=4, expand=2, dt_rank=48, conv_bias=True, bias=False),
        norm_eps=1e-5, tie_embeddings=True, pad_vocab_size_multiple=1,
    )


def test_mamba2_transformers_444():
    ref = from_reference_config(MAMBA2_HF_444, pad_vocab_size_multiple=16, impl="xla")
    assert ref.layout == "transformers-mamba2"
    c = ref.model_config
    assert (c.vocab_size, c.d_model, c.n_layers, c.mixer, c.tie_embeddings, c.padded_vocab_size) == (
        32768, 256, 4, "mamba2", False, 32768)
    assert c.mamba2 == Mamba2Config(d_state=128, d_conv=4, expand=2, headdim=64, ngroups=8, chunk_size=256,
                                    conv_bias=True, bias=False, norm_before_gate=False, impl="xla")


def test_mamba2_ssm():
    ref = from_reference_config(MAMBA2_SSM)
    assert ref.layout == "mamba_ssm"
    assert ref.embedding_key == "backbone.embedding.weight"
    assert ref.vocab_rows == 50288  # 50277 padded to a multiple of 16
    c = ref.model_config
    assert (c.vocab_size, c.pad_vocab_size_multiple, c.padded_vocab_size, c.n_layers, c.tie_embeddings) == (
        50277, 16, 50288, 24, True)
    assert c.mamba2 == Mamba2Config()  # mamba_ssm's Mamba2 defaults are ours


@pytest.mark.parametrize("d_intermediate, width", [(0, 0), (100, 128), (256, 256), (257, 384)])
def test_mamba_ssm_mlp_width_rounds_to_128(d_intermediate, width):
    ref = from_reference_config({**MAMBA2_SSM, "d_intermediate": d_intermediate})
    assert ref.model_config.d_intermediate == width


def test_fixture_configs():
    """The configs transformers 5 and the fixture script wrote (including {"__float__": "Infinity"})."""
    c = from_reference_config(_fixture_config("hf_mamba2")).model_config
    assert (c.mamba2.ngroups, c.mamba2.headdim, c.mamba2.chunk_size, c.tie_embeddings) == (2, 8, 4, False)
    c = from_reference_config(_fixture_config("hf_mamba_tied_bin")).model_config
    assert (c.norm_eps, c.mamba.bias, c.mamba.conv_bias, c.mamba.d_conv, c.tie_embeddings) == (1e-6, True, False, 3, True)
    ref = from_reference_config(_fixture_config("mamba_ssm_mamba1"))  # original mamba_ssm format
    assert (ref.layout, ref.vocab_rows, ref.model_config.tie_embeddings, ref.model_config.mamba) == (
        "mamba_ssm", 40, True, MambaConfig())


def test_ssm_cfg_null_is_empty():
    cfg = {**MAMBA2_SSM, "ssm_cfg": None}
    assert from_reference_config(cfg).model_config.mixer == "mamba"  # mamba_ssm's default layer


def test_time_step_limit_spellings():
    # JSON has no infinity: writers spell it "Infinity" or {"__float__": "Infinity"}; each must
    # read as (0, inf) and give the model of the canonical spelling, and a finite bound stays refused.
    want = from_reference_config({**MAMBA2_HF_444, "time_step_limit": [0.0, math.inf]}).model_config
    for limit in ([0, {"__float__": "Infinity"}], [0.0, "Infinity"], (0, math.inf)):
        got = from_reference_config({**MAMBA2_HF_444, "time_step_limit": limit}).model_config
        assert got == want, limit
    with pytest.raises(ValueError, match=r"`time_step_limit`=\[0.0, \{'__float__': '1e3'\}\] is not supported"):
        from_reference_config({**MAMBA2_HF_444, "time_step_limit": [0.0, {"__float__": "1e3"}]})


def test_residual_in_fp32_false_is_exact_in_float32_only():
    cfg = {**MAMBA_130M_HF, "residual_in_fp32": False}
    assert from_reference_config(cfg).model_config.dtype == "float32"
    with pytest.raises(ValueError, match=r"`residual_in_fp32`=False is not supported.*dtype='float32'"):
        from_reference_config(cfg, dtype="bfloat16")
    assert from_reference_config(MAMBA_130M_HF, dtype="bfloat16").model_config.dtype == "bfloat16"


BAD_CONFIGS = [
    (MAMBA_130M_HF, {"hidden_act": "gelu"}, r"`hidden_act`='gelu' is not supported; supported: 'silu' or 'swish'"),
    (MAMBA_130M_HF, {"mixer_rms_eps": 1e-6}, r"unknown config.json \(transformers MambaConfig\) field\(s\) \['mixer_rms_eps'\]"),
    (MAMBA_130M_HF, {"use_conv_bias": "yes"}, r"`use_conv_bias`='yes' is not supported; expected true or false"),
    (MAMBA_130M_HF, {"state_size": 0}, r"`state_size`=0 is not supported; expected an int >= 1"),
    (MAMBA_130M_HF, {"model_type": "falcon_mamba"}, r"`model_type`='falcon_mamba' is not supported"),
    (MAMBA_130M_HF, {"architectures": ["MambaModel"]}, r"`architectures`=\['MambaModel'\] is not supported"),
    (MAMBA_130M_HF, {"time_step_min": 0.5}, r"cannot build: MambaConfig: need 0 < dt_min <= dt_max"),
    (MAMBA2_HF_444, {"time_step_limit": [0.0, 1.0]}, r"`time_step_limit`=\[0.0, 1.0\] is not supported; supported: \[0.0, inf\]"),
    (MAMBA2_HF_444, {"num_heads": 4}, r"num_heads \* head_dim = 4 \* 64 must equal expand \* hidden_size = 512"),
    (MAMBA2_SSM, {"attn_layer_idx": [3]}, r"`attn_layer_idx`=\[3\] is not supported; supported: \[\]"),
    (MAMBA2_SSM, {"rms_norm": False}, r"`rms_norm`=False is not supported; supported: true"),
    (MAMBA2_SSM, {"ssm_cfg": {"layer": "Mamba3"}}, r"ssm_cfg field `layer`='Mamba3' is not supported"),
    (MAMBA2_SSM, {"ssm_cfg": {"layer": "Mamba2", "rmsnorm": False}}, r"ssm_cfg field `rmsnorm`=False"),
    (MAMBA2_SSM, {"ssm_cfg": {"layer": "Mamba2", "d_ssm": 512}}, r"`d_ssm`=512 is not supported; supported: null or"),
    (MAMBA2_SSM, {"ssm_cfg": {"layer": "Mamba2", "dt_limit": [0.0, 0.1]}}, r"ssm_cfg field `dt_limit`"),
    (MAMBA2_SSM, {"ssm_cfg": {"layer": "Mamba2", "learnable_init_states": True}}, r"unknown config.json ssm_cfg field\(s\) \['learnable_init_states'\]"),
    (MAMBA2_SSM, {"ssm_cfg": {"dt_rank": 0}}, r"ssm_cfg field `dt_rank`=0"),
    (MAMBA2_SSM, {"norm_epsilon": 1e-6}, r"unknown config.json \(mamba_ssm MambaConfig\) field\(s\) \['norm_epsilon'\]"),
]


@pytest.mark.parametrize("base, change, message", BAD_CONFIGS, ids=[m[:40] for _, _, m in BAD_CONFIGS])
def test_unsupported_fields_are_named(base, change, message):
    with pytest.raises(ValueError, match=message):
        from_reference_config({**base, **change}, fn="load_hf_checkpoint")


def test_mamba2_layer_norm_epsilon_sets_both_norms():
    # transformers' Mamba2 uses layer_norm_epsilon in the block norms and the gated RMSNorm.
    c = from_reference_config({**MAMBA2_HF_444, "layer_norm_epsilon": 1e-6}).model_config
    assert (c.norm_eps, c.mamba2.norm_eps) == (1e-6, 1e-6)


def test_detect_layout():
    assert detect_layout(MAMBA_130M_HF) == "transformers-mamba"
    assert detect_layout(MAMBA2_HF_444) == "transformers-mamba2"
    assert detect_layout(MAMBA2_SSM) == "mamba_ssm"
    with pytest.raises(ValueError, match="neither a transformers"):
        detect_layout({"hidden_size": 16})
    with pytest.raises(TypeError, match="must be a JSON object"):
        detect_layout([1])


def _lm(**kw) -> LanguageModelConfig:
    return LanguageModelConfig(**{"vocab_size": 50, "d_model": 16, "n_layers": 2, **kw})


def test_to_transformers_config_round_trips():
    for c in (_lm(mixer="mamba", mamba=MambaConfig(d_state=4, dt_rank=3, bias=True), tie_embeddings=False, norm_eps=1e-6),
              _lm(mixer="mamba2", mamba2=Mamba2Config(d_state=8, headdim=8, ngroups=2, chunk_size=4, conv_bias=False)),
              _lm(mixer="mamba2", mamba2=Mamba2Config(headdim=8, norm_eps=1e-6), norm_eps=1e-6)):
        back = from_reference_config(to_transformers_config(c), pad_vocab_size_multiple=c.pad_vocab_size_multiple)
        assert back.model_config == c


@pytest.mark.parametrize("config, message", [
    (_lm(mixer="s4d"), r"mixers \['s4d'\] have no transformers model"),
    (_lm(layer_mixers=("mamba2", "attention")), r"mixers \['attention', 'mamba2'\] have no transformers model"),
    (_lm(mixer="mamba", d_intermediate=32), r"`d_intermediate`=32 is not supported"),
    (_lm(mixer="mamba", norm="layer"), r"`norm`='layer', `prenorm`=True is not supported; .*pre-norm RMSNorm"),
    (_lm(mixer="mamba2", mamba2=Mamba2Config(headdim=8), prenorm=False), r"`norm`='rms', `prenorm`=False is not supported"),
    (_lm(mamba2=Mamba2Config(headdim=8, norm_before_gate=True)), r"`mamba2.norm_before_gate`=True is not supported"),
    (_lm(mamba2=Mamba2Config(headdim=8, D_has_hdim=True)), r"`mamba2.D_has_hdim`=True is not supported"),
    (_lm(mamba2=Mamba2Config(headdim=8), norm_eps=1e-6), r"`mamba2.norm_eps`=1e-05 differs from `norm_eps`=1e-06"),
])
def test_to_transformers_config_refuses(config, message):
    with pytest.raises(ValueError, match=message):
        to_transformers_config(config)
