"""``config.json`` of the PyTorch reference checkpoints <-> :class:`LanguageModelConfig`.

Three layouts are read (``LAYOUTS``):

* ``"transformers-mamba"`` — ``MambaForCausalLM`` (``model_type: "mamba"``);
* ``"transformers-mamba2"`` — ``Mamba2ForCausalLM`` (``model_type: "mamba2"``);
* ``"mamba_ssm"`` — ``mamba_ssm.models.mixer_seq_simple.MambaLMHeadModel`` (``d_model``,
  ``n_layer``, ``ssm_cfg``, ... and no ``model_type``).

Every key of the file is classified, and a key in no class is an error (a field we do not know
could change the forward pass). The classes, per layout, are the module constants below:

* ``*_FORWARD`` — shapes or math of the forward pass; mapped onto the model config, or checked
  against the only value(s) ssm_jax computes (e.g. ``hidden_act`` must be SiLU,
  ``time_step_limit``/``dt_limit`` must be ``(0, inf)``), with an error naming the field and the
  supported values otherwise.
* ``*_INIT`` — initialization only (``time_step_min/max/floor`` are kept as ``dt_min/max`` and
  ``dt_init_floor`` so that re-initialized layers match; the others are dropped).
* ``*_IGNORED`` — not read by the reference forward pass: generation/runtime switches, token ids,
  bookkeeping, kernel choices (``fused_add_norm``, ``use_fast_path``: the same math), and keys
  that transformers' configs carry but its modeling code never reads (leftovers of the
  mamba_ssm conversion such as ``d_model``/``n_layer``/``rms_norm`` in ``state-spaces/*-hf``
  configs, and ``norm_before_gate``/``rms_norm``/``time_step_rank`` in ``Mamba2Config``:
  transformers' Mamba-2 always computes ``norm(y * silu(z))``).

``residual_in_fp32``: the ssm_jax residual stream is always float32. With ``dtype="float32"``
(the default) both values of the field give the same forward pass; with a lower compute dtype
``residual_in_fp32=False`` (a residual rounded to that dtype) is refused.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from ssm_jax.models.config import LanguageModelConfig
from ssm_jax.nn.config import Mamba2Config, MambaConfig

__all__ = [
    "LAYOUTS",
    "ReferenceConfig",
    "SSM_JAX_KEY",
    "apply_ssm_jax_fields",
    "check_token_id_fields",
    "detect_layout",
    "from_reference_config",
    "ssm_jax_fields",
    "to_transformers_config",
]

LAYOUTS = ("transformers-mamba", "transformers-mamba2", "mamba_ssm")

# Keys every transformers config.json may hold that no forward pass reads.
_HF_GENERIC = frozenset({
    "architectures", "model_type", "dtype", "torch_dtype", "transformers_version", "_name_or_path",
    "name_or_path", "_from_model_config", "_commit_hash", "_attn_implementation_autoset",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "use_cache", "output_hidden_states", "output_attentions", "return_dict", "id2label", "label2id",
    "tokenizer_class", "problem_type", "task_specific_params", "prefix", "is_decoder",
    "is_encoder_decoder", "add_cross_attention", "tie_encoder_decoder", "chunk_size_feed_forward",
})

MAMBA_FORWARD = frozenset({
    "vocab_size", "hidden_size", "state_size", "num_hidden_layers", "layer_norm_epsilon", "expand",
    "conv_kernel", "use_bias", "use_conv_bias", "hidden_act", "time_step_rank", "residual_in_fp32",
    "tie_word_embeddings",
})
MAMBA_INIT = frozenset({
    "time_step_min", "time_step_max", "time_step_floor", "time_step_scale", "time_step_init_scheme",
    "initializer_range", "rescale_prenorm_residual",
})
MAMBA_IGNORED = _HF_GENERIC | {
    "use_mambapy", "use_associative_scan",
    # Recomputed by transformers from expand * hidden_size; leftovers of the mamba_ssm conversion.
    "intermediate_size", "d_model", "d_inner", "n_layer", "fused_add_norm", "rms_norm", "ssm_cfg",
    "pad_vocab_size_multiple",
}

MAMBA2_FORWARD = frozenset({
    "vocab_size", "hidden_size", "state_size", "num_hidden_layers", "layer_norm_epsilon", "expand",
    "conv_kernel", "n_groups", "num_heads", "head_dim", "use_bias", "use_conv_bias", "hidden_act",
    "time_step_limit", "chunk_size", "residual_in_fp32", "tie_word_embeddings",
})
MAMBA2_INIT = MAMBA_INIT
MAMBA2_IGNORED = _HF_GENERIC | {"time_step_rank", "rms_norm", "norm_before_gate", "intermediate_size"}

MAMBA_SSM_FORWARD = frozenset({
    "d_model", "n_layer", "vocab_size", "ssm_cfg", "d_intermediate", "attn_layer_idx", "rms_norm",
    "residual_in_fp32", "pad_vocab_size_multiple", "tie_embeddings",
})
MAMBA_SSM_IGNORED = frozenset({"fused_add_norm", "attn_cfg"})  # attn_cfg: only with attention layers
SSM_CFG_MAMBA1_FORWARD = frozenset({"layer", "d_state", "d_conv", "expand", "dt_rank", "conv_bias", "bias"})
SSM_CFG_MAMBA1_INIT = frozenset({"dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor"})
SSM_CFG_MAMBA2_FORWARD = frozenset({
    "layer", "d_state", "d_conv", "expand", "headdim", "d_ssm", "ngroups", "D_has_hdim", "rmsnorm",
    "norm_before_gate", "dt_limit", "bias", "conv_bias", "chunk_size",
})
SSM_CFG_MAMBA2_INIT = frozenset({"conv_init", "A_init_range", "dt_min", "dt_max", "dt_init_floor"})
SSM_CFG_IGNORED = frozenset({"use_fast_path", "use_mem_eff_path", "sequence_parallel"})  # kernel / TP choices


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
    """What a reference ``config.json`` says: the layout, our model config, and checkpoint facts.

    ``vocab_rows``: rows of the checkpoint's embedding (mamba_ssm pads the vocabulary, transformers
    does not). ``embedding_key``: its name in the state dict.
    """

    layout: str
    model_config: LanguageModelConfig
    vocab_rows: int
    embedding_key: str


class _Fields:
    """Reads keys of one config mapping, remembering which were classified."""

    def __init__(self, fn: str, where: str, mapping: Mapping[str, Any]):
        if not isinstance(mapping, Mapping):
            raise TypeError(f"{fn}: {where} must be a JSON object; got {type(mapping).__name__}")
        self.fn, self.where, self.mapping = fn, where, mapping
        self.known: set[str] = set()

    def fail(self, key: str, value, expected: str):
        raise ValueError(f"{self.fn}: {self.where} field `{key}`={value!r} is not supported; {expected}")

    def get(self, key: str, default):
        self.known.add(key)
        return self.mapping.get(key, default)

    def int(self, key: str, default, *, minimum: int = 1) -> int:
        v = self.get(key, default)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            self.fail(key, v, f"expected an int >= {minimum}")
        return v

    def float(self, key: str, default) -> float:
        v = _json_float(self.get(key, default))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self.fail(key, v, "expected a finite number")
        return float(v)

    def bool(self, key: str, default) -> bool:
        v = self.get(key, default)
        if not isinstance(v, bool):
            self.fail(key, v, "expected true or false")
        return v

    def choice(self, key: str, default, allowed: tuple, why: str):
        v = self.get(key, default)
        if v not in allowed:
            self.fail(key, v, f"supported: {' or '.join(repr(a) for a in allowed)} ({why})")
        return v

    def ignore(self, keys) -> None:
        self.known.update(keys)

    def finish(self, forward, init, ignored) -> None:
        unknown = sorted(set(self.mapping) - self.known - set(ignored))
        if unknown:
            raise ValueError(
                f"{self.fn}: unknown {self.where} field(s) {unknown}; they might change the forward pass, so "
                f"they are refused. Known fields: forward pass {sorted(forward)}; initialization only "
                f"{sorted(init)}; ignored {sorted(ignored)}"
            )


def _json_float(v):
    """JSON spellings of non-finite floats: ``Infinity`` (Python's json) or transformers 5's
    ``{"__float__": "Infinity"}``."""
    if isinstance(v, Mapping) and set(v) == {"__float__"}:
        return float(v["__float__"])
    if isinstance(v, str) and v.lower() in ("inf", "infinity", "-inf", "-infinity", "nan"):
        return float(v)
    return v


def _dt_limit(f: _Fields, key: str, default) -> None:
    v = f.get(key, default)
    ok = isinstance(v, (list, tuple)) and len(v) == 2
    if ok:
        lo, hi = (_json_float(x) for x in v)
        ok = isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo == 0 and hi == math.inf
    if not ok:
        f.fail(key, v, "supported: [0.0, inf] (ssm_jax does not clamp dt after the softplus)")


def _residual(f: _Fields, key: str, dtype: str) -> None:
    if not f.bool(key, True) and dtype != "float32":
        f.fail(key, False, f"with dtype={dtype!r} only true is supported (the ssm_jax residual stream is "
               "float32); load with dtype='float32', which computes the same forward pass either way")


TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id")


def check_token_id_fields(config: Mapping[str, Any], vocab_size: int, *, fn: str) -> None:
    """The special token ids of ``config`` (null, an id or a list of ids) must lie in
    ``[0, vocab_size)``: generation would feed them to the embedding (ids past the table embed as
    NaN), and an ``eos_token_id`` the model cannot emit would never stop it."""
    for key in TOKEN_ID_KEYS:
        value = config.get(key)
        ids = value if isinstance(value, (list, tuple)) else [value]
        bad = [i for i in ids if i is not None and not (isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size)]
        if bad:
            raise ValueError(f"{fn}: config.json `{key}`={value!r} is not a token id of this model: {bad} outside "
                             f"[0, vocab_size={vocab_size}) (supported: null, an id, or a list of ids in range)")


def detect_layout(config: Mapping[str, Any], *, fn: str = "detect_layout") -> str:
    """The layout (one of ``LAYOUTS``) a ``config.json`` mapping describes."""
    if not isinstance(config, Mapping):
        raise TypeError(f"{fn}: config.json must be a JSON object; got {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type is not None:
        layouts = {"mamba": "transformers-mamba", "mamba2": "transformers-mamba2"}
        if model_type not in layouts:
            raise ValueError(f"{fn}: config.json `model_type`={model_type!r} is not supported; supported: 'mamba', 'mamba2' "
                             "(transformers), or a mamba_ssm config (d_model, n_layer, ssm_cfg, no model_type)")
        layout = layouts[model_type]
        head = {"transformers-mamba": "MambaForCausalLM", "transformers-mamba2": "Mamba2ForCausalLM"}[layout]
        archs = config.get("architectures")
        if archs is not None and list(archs) != [head]:
            raise ValueError(f"{fn}: config.json `architectures`={archs!r} is not supported; supported: [{head!r}] "
                             "(a causal LM with its lm_head)")
        return layout
    if "d_model" in config and "n_layer" in config:
        return "mamba_ssm"
    raise ValueError(f"{fn}: config.json is neither a transformers Mamba/Mamba-2 config (no `model_type`) nor a "
                     "mamba_ssm config (needs `d_model` and `n_layer`)")


def from_reference_config(config: Mapping[str, Any], *, dtype: str = "float32",
                          pad_vocab_size_multiple: int | None = None, impl: str = "auto",
                          fn: str = "from_reference_config") -> ReferenceConfig:
    """Translate a reference ``config.json`` (a mapping) into a :class:`ReferenceConfig`.

    ``pad_vocab_size_multiple``: rows of our embedding table are padded to this multiple (the
    logits stay over the true vocabulary); ``None`` keeps the checkpoint's (1 for transformers,
    the config's for mamba_ssm). ``impl`` goes to the mixers' configs.
    """
    layout = detect_layout(config, fn=fn)
    reader = {"transformers-mamba": _transformers_mamba, "transformers-mamba2": _transformers_mamba2,
              "mamba_ssm": _mamba_ssm}[layout]
    try:
        stack, vocab_rows, native_multiple, emb_key = reader(fn, config, dtype, impl)
    except ValueError as e:  # the mixer configs' own checks (e.g. dt_min <= dt_max)
        if str(e).startswith(f"{fn}:"):
            raise
        raise ValueError(f"{fn}: config.json describes a model ssm_jax cannot build: {e}") from None
    check_token_id_fields(config, stack["vocab_size"], fn=fn)
    multiple = native_multiple if pad_vocab_size_multiple is None else pad_vocab_size_multiple
    try:
        model_config = LanguageModelConfig(**stack, pad_vocab_size_multiple=multiple, dtype=dtype)
    except ValueError as e:
        raise ValueError(f"{fn}: config.json describes a model ssm_jax cannot build: {e}") from None
    return ReferenceConfig(layout, model_config, vocab_rows, emb_key)


def _transformers_mamba(fn, config, dtype, impl):
    f = _Fields(fn, "config.json (transformers MambaConfig)", config)
    e = f.int("hidden_size", 768)
    rank = f.get("time_step_rank", "auto")
    if rank != "auto":
        rank = f.int("time_step_rank", "auto")
    mamba = MambaConfig(
        d_state=f.int("state_size", 16), d_conv=f.int("conv_kernel", 4), expand=f.int("expand", 2),
        dt_rank=rank, dt_min=f.float("time_step_min", 1e-3), dt_max=f.float("time_step_max", 0.1),
        dt_init_floor=f.float("time_step_floor", 1e-4), conv_bias=f.bool("use_conv_bias", True),
        bias=f.bool("use_bias", False), impl=impl,
    )
    f.choice("hidden_act", "silu", ("silu", "swish"), "the conv activation of ssm_jax.nn.Mamba")
    _residual(f, "residual_in_fp32", dtype)
    vocab = f.int("vocab_size", 50280)
    stack = dict(
        vocab_size=vocab, d_model=e, n_layers=f.int("num_hidden_layers", 32), mixer="mamba", mamba=mamba,
        norm_eps=f.float("layer_norm_epsilon", 1e-5), tie_embeddings=f.bool("tie_word_embeddings", True),
    )
    f.ignore(MAMBA_INIT)
    f.finish(MAMBA_FORWARD, MAMBA_INIT, MAMBA_IGNORED)
    return stack, vocab, 1, "backbone.embeddings.weight"


def _transformers_mamba2(fn, config, dtype, impl):
    f = _Fields(fn, "config.json (transformers Mamba2Config)", config)
    e = f.int("hidden_size", 4096)
    expand = f.int("expand", 2)
    heads, headdim = f.int("num_heads", 128), f.int("head_dim", 64)
    if heads * headdim != expand * e:
        f.fail("num_heads", heads, f"num_heads * head_dim = {heads} * {headdim} must equal expand * hidden_size = {expand * e}")
    # transformers uses layer_norm_epsilon for the block norms and the mixers' gated RMSNorm alike.
    eps = f.float("layer_norm_epsilon", 1e-5)
    mamba2 = Mamba2Config(
        d_state=f.int("state_size", 128), d_conv=f.int("conv_kernel", 4), expand=expand, headdim=headdim,
        ngroups=f.int("n_groups", 8), chunk_size=f.int("chunk_size", 256),
        dt_min=f.float("time_step_min", 1e-3), dt_max=f.float("time_step_max", 0.1),
        dt_init_floor=f.float("time_step_floor", 1e-4), conv_bias=f.bool("use_conv_bias", True),
        bias=f.bool("use_bias", False), norm_before_gate=False, D_has_hdim=False, norm_eps=eps, impl=impl,
    )
    f.choice("hidden_act", "silu", ("silu", "swish"), "the conv activation of ssm_jax.nn.Mamba2")
    _dt_limit(f, "time_step_limit", (0.0, math.inf))
    _residual(f, "residual_in_fp32", dtype)
    vocab = f.int("vocab_size", 32768)
    stack = dict(
        vocab_size=vocab, d_model=e, n_layers=f.int("num_hidden_layers", 64), mixer="mamba2", mamba2=mamba2,
        norm_eps=eps, tie_embeddings=f.bool("tie_word_embeddings", False),
    )
    f.ignore(MAMBA2_INIT)
    f.finish(MAMBA2_FORWARD, MAMBA2_INIT, MAMBA2_IGNORED)
    return stack, vocab, 1, "backbone.embeddings.weight"


def _mamba_ssm(fn, config, dtype, impl):
    f = _Fields(fn, "config.json (mamba_ssm MambaConfig)", config)
    e = f.int("d_model", 2560)
    attn = f.get("attn_layer_idx", [])
    if attn:
        f.fail("attn_layer_idx", attn, "supported: [] (mamba_ssm's MHA layers are not converted)")
    if not f.bool("rms_norm", True):
        f.fail("rms_norm", False, "supported: true (ssm_jax blocks use RMSNorm, not LayerNorm)")
    _residual(f, "residual_in_fp32", dtype)
    d_mlp = f.int("d_intermediate", 0, minimum=0)
    # mamba_ssm's GatedMLP rounds its hidden width up to a multiple of 128 (multiple_of=128).
    d_mlp = -(-d_mlp // 128) * 128
    ssm = _Fields(fn, "config.json ssm_cfg", f.get("ssm_cfg", {}) or {})  # null means {} in mamba_ssm
    layer = ssm.choice("layer", "Mamba1", ("Mamba1", "Mamba2"), "Mamba3 has no ssm_jax layer")
    if layer == "Mamba1":
        rank = ssm.get("dt_rank", "auto")
        if rank != "auto":
            rank = ssm.int("dt_rank", "auto")
        mixer, sub = "mamba", MambaConfig(
            d_state=ssm.int("d_state", 16), d_conv=ssm.int("d_conv", 4), expand=ssm.int("expand", 2), dt_rank=rank,
            dt_min=ssm.float("dt_min", 1e-3), dt_max=ssm.float("dt_max", 0.1),
            dt_init_floor=ssm.float("dt_init_floor", 1e-4), conv_bias=ssm.bool("conv_bias", True),
            bias=ssm.bool("bias", False), impl=impl,
        )
        ssm.ignore(SSM_CFG_MAMBA1_INIT)
        ssm.finish(SSM_CFG_MAMBA1_FORWARD, SSM_CFG_MAMBA1_INIT, SSM_CFG_IGNORED)
    else:
        expand = ssm.int("expand", 2)
        d_ssm = ssm.get("d_ssm", None)
        if d_ssm is not None and d_ssm != expand * e:
            ssm.fail("d_ssm", d_ssm, f"supported: null or expand * d_model = {expand * e} (no extra gated-MLP channels)")
        if not ssm.bool("rmsnorm", True):
            ssm.fail("rmsnorm", False, "supported: true (ssm_jax.nn.Mamba2 always has the gated RMSNorm)")
        _dt_limit(ssm, "dt_limit", (0.0, math.inf))
        A_range = ssm.get("A_init_range", (1, 16))
        if not (isinstance(A_range, (list, tuple)) and len(A_range) == 2
                and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in A_range)):
            ssm.fail("A_init_range", A_range, "expected [lo, hi]")
        lo, hi = A_range
        mixer, sub = "mamba2", Mamba2Config(
            d_state=ssm.int("d_state", 128), d_conv=ssm.int("d_conv", 4), expand=expand,
            headdim=ssm.int("headdim", 64), ngroups=ssm.int("ngroups", 1), chunk_size=ssm.int("chunk_size", 256),
            dt_min=ssm.float("dt_min", 1e-3), dt_max=ssm.float("dt_max", 0.1),
            dt_init_floor=ssm.float("dt_init_floor", 1e-4), A_init_range=(float(lo), float(hi)),
            conv_bias=ssm.bool("conv_bias", True), bias=ssm.bool("bias", False),
            norm_before_gate=ssm.bool("norm_before_gate", False), D_has_hdim=ssm.bool("D_has_hdim", False), impl=impl,
        )
        ssm.ignore(SSM_CFG_MAMBA2_INIT)
        ssm.finish(SSM_CFG_MAMBA2_FORWARD, SSM_CFG_MAMBA2_INIT, SSM_CFG_IGNORED)
    vocab = f.int("vocab_size", 50277)
    multiple = f.int("pad_vocab_size_multiple", 8)
    stack = {
        "vocab_size": vocab, "d_model": e, "n_layers": f.int("n_layer", 64), "mixer": mixer, mixer: sub,
        "d_intermediate": d_mlp, "norm_eps": 1e-5,  # MixerModel's norm_epsilon, not in the config
        "tie_embeddings": f.bool("tie_embeddings", True),
    }
    f.finish(MAMBA_SSM_FORWARD, (), MAMBA_SSM_IGNORED)
    return stack, -(-vocab // multiple) * multiple, multiple, "backbone.embedding.weight"


def to_transformers_config(config: LanguageModelConfig, *, fn: str = "to_transformers_config") -> dict[str, Any]:
    """The transformers ``config.json`` (``MambaForCausalLM`` or ``Mamba2ForCausalLM``) of ``config``.

    Raises a ``ValueError`` naming the field when transformers has no equivalent: mixed or
    non-Mamba mixers, MLP blocks (``d_intermediate``), a block norm other than pre-norm RMSNorm
    (``norm``, ``prenorm``), Mamba-2 ``norm_before_gate`` or ``D_has_hdim``, or a Mamba-2
    gated-norm eps (``mamba2.norm_eps``) other than ``norm_eps``.
    """
    if not isinstance(config, LanguageModelConfig):
        raise TypeError(f"{fn}: expected a LanguageModelConfig; got {type(config).__name__}")
    c = config
    kinds = set(c.mixers)
    if kinds not in ({"mamba"}, {"mamba2"}):
        raise ValueError(f"{fn}: mixers {sorted(kinds)} have no transformers model; supported: all 'mamba' "
                         "(MambaForCausalLM) or all 'mamba2' (Mamba2ForCausalLM)")
    if c.d_intermediate:
        raise ValueError(f"{fn}: `d_intermediate`={c.d_intermediate} is not supported; transformers' Mamba models "
                         "have no MLP blocks (supported: 0)")
    if c.norm != "rms" or not c.prenorm:
        raise ValueError(f"{fn}: `norm`={c.norm!r}, `prenorm`={c.prenorm} is not supported; transformers' Mamba "
                         "blocks are pre-norm RMSNorm (supported: norm='rms', prenorm=True)")
    common = {
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "num_hidden_layers": c.n_layers,
        "layer_norm_epsilon": c.norm_eps, "tie_word_embeddings": c.tie_embeddings, "hidden_act": "silu",
        "residual_in_fp32": True, "dtype": "float32",
    }
    if kinds == {"mamba"}:
        m = c.mamba
        return {
            "architectures": ["MambaForCausalLM"], "model_type": "mamba", **common,
            "state_size": m.d_state, "expand": m.expand, "conv_kernel": m.d_conv,
            "intermediate_size": m.expand * c.d_model, "time_step_rank": m.resolved_dt_rank(c.d_model),
            "use_bias": m.bias, "use_conv_bias": m.conv_bias, "time_step_min": m.dt_min,
            "time_step_max": m.dt_max, "time_step_floor": m.dt_init_floor,
        }
    m = c.mamba2
    for name, value in (("norm_before_gate", m.norm_before_gate), ("D_has_hdim", m.D_has_hdim)):
        if value:
            raise ValueError(f"{fn}: `mamba2.{name}`=True is not supported; transformers' Mamba2 has no such "
                             "option (supported: False)")
    if m.norm_eps != c.norm_eps:
        raise ValueError(f"{fn}: `mamba2.norm_eps`={m.norm_eps} differs from `norm_eps`={c.norm_eps}; transformers has "
                         "one layer_norm_epsilon for the block norms and the mixers' gated RMSNorm (supported: equal)")
    d = m.expand * c.d_model
    return {
        "architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", **common,
        "state_size": m.d_state, "expand": m.expand, "conv_kernel": m.d_conv, "n_groups": m.ngroups,
        "num_heads": d // m.headdim, "head_dim": m.headdim, "chunk_size": m.chunk_size,
        "use_bias": m.bias, "use_conv_bias": m.conv_bias, "time_step_min": m.dt_min,
        "time_step_max": m.dt_max, "time_step_floor": m.dt_init_floor,
    }


# ----------------------------------------------------------------------------------------------
# Fields transformers cannot express, kept beside its keys so save -> load gives an equal config
# ----------------------------------------------------------------------------------------------

# The key of a saved config.json holding them (transformers keeps unknown keys as attributes).
SSM_JAX_KEY = "ssm_jax"


def _plain(value: Any) -> Any:
    """A config dict as JSON writes and reads it (tuples as lists)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _diff(derived: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in wanted.items():
        if isinstance(v, Mapping) and isinstance(derived.get(k), Mapping):
            sub = _diff(derived[k], v)
            if sub:
                out[k] = sub
        elif derived.get(k) != v:
            out[k] = v
    return out


def ssm_jax_fields(config: LanguageModelConfig, transformers_config: Mapping[str, Any], *, fn: str) -> dict[str, Any]:
    """The fields of ``config`` that reading ``transformers_config`` back would not give (e.g.
    ``pad_vocab_size_multiple``, ``dt_rank="auto"``, ``impl``, the compute ``dtype``, the
    initialization of the unused mixers), as a nested dict; empty when there are none."""
    derived = from_reference_config(transformers_config, fn=fn).model_config
    return _diff(_plain(derived.to_dict()), _plain(config.to_dict()))


def _merge(base: dict[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in fields.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def apply_ssm_jax_fields(ref: ReferenceConfig, fields: Any, *, dtype: str | None, impl: str | None,
                         pad_vocab_size_multiple: int | None, fn: str) -> ReferenceConfig:
    """``ref`` with the saved ``fields`` (``config.json[SSM_JAX_KEY]``) applied; the loader's own
    arguments, when given, still win. The result must write the same transformers keys as the
    file holds: a file edited after saving (say ``hidden_size``) contradicts its fields, and is
    refused naming the keys rather than loaded as a mixture."""
    if not isinstance(fields, Mapping):
        raise ValueError(f"{fn}: config.json `{SSM_JAX_KEY}` must be an object of LanguageModelConfig fields; got {fields!r}")
    merged = _merge(_plain(ref.model_config.to_dict()), fields)
    if dtype is not None:
        merged["dtype"] = dtype
    if pad_vocab_size_multiple is not None:
        merged["pad_vocab_size_multiple"] = pad_vocab_size_multiple
    if impl is not None:
        for mixer in set(ref.model_config.mixers):
            merged[mixer] = {**merged[mixer], "impl": impl}
    try:
        config = LanguageModelConfig.from_dict(merged)
        written = to_transformers_config(config, fn=fn)
    except ValueError as e:
        raise ValueError(f"{fn}: config.json `{SSM_JAX_KEY}` describes a model ssm_jax cannot build or save: {e}") from None
    expected = to_transformers_config(ref.model_config, fn=fn)
    differ = sorted(k for k in set(written) | set(expected) if written.get(k) != expected.get(k))
    if differ:
        raise ValueError(f"{fn}: config.json `{SSM_JAX_KEY}` contradicts the file's transformers fields {differ} "
                         f"(e.g. {differ[0]}: {expected.get(differ[0])!r} in the file, {written.get(differ[0])!r} from "
                         f"`{SSM_JAX_KEY}`); was config.json edited after save_hf_checkpoint? Remove `{SSM_JAX_KEY}` "
                         "to load what the transformers fields say")
    return dataclasses.replace(ref, model_config=config)
