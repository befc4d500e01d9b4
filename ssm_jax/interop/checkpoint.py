"""Load and save checkpoint directories of the PyTorch reference models.

A directory holds ``config.json`` and the weights: ``model.safetensors``, ``pytorch_model.bin``,
or shards listed by ``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``
(searched in that order). Both formats are read without torch: ``.safetensors`` through
``np.memmap`` (any dtype, bfloat16 included, nothing copied until conversion), ``.bin`` with the
restricted unpickler of :mod:`.torch_zip`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from ssm_jax.interop import hf_config
from ssm_jax.interop.torch_zip import read_torch_state_dict
from ssm_jax.interop.weights import to_model_params, to_reference_tensors
from ssm_jax.models.language_model import LanguageModel
from ssm_jax.models.stack import stack_layers, unstack_layers

__all__ = ["load_hf_checkpoint", "read_state_dict", "save_hf_checkpoint"]

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _read_json(fn: str, path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{fn}: {path} is not valid JSON ({e})") from None


# safetensors dtype names (https://github.com/huggingface/safetensors, format section).
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def _read_safetensors(path: str, *, fn: str = "read_state_dict") -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file as NumPy arrays mapped from the file.

    The format is an 8-byte little-endian header size, a JSON header ``{name: {dtype, shape,
    data_offsets}}`` and the little-endian data. Read here with ``np.memmap`` because the
    safetensors package (0.8) refuses bfloat16 in its NumPy reader and its flax reader puts every
    tensor on the default (accelerator) device.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n <= size - 8:
            raise ValueError(f"{fn}: {path} is not a safetensors file (header size {n}, file size {size})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{fn}: {path} has an unreadable safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{fn}: {path} has a safetensors header that is not a JSON object")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not (isinstance(info, dict) and {"dtype", "shape", "data_offsets"} <= set(info)):
            raise ValueError(f"{fn}: tensor `{name}` of {path} has a malformed header entry {info!r}")
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{fn}: tensor `{name}` of {path} has dtype {info.get('dtype')!r}; "
                             f"supported: {sorted(_SAFETENSORS_DTYPES)}")
        dtype = np.dtype(dtype).newbyteorder("<")
        shape = tuple(info["shape"])
        begin, end = info["data_offsets"]
        if end - begin != math.prod(shape) * dtype.itemsize or not 0 <= begin <= end <= size - 8 - n:
            raise ValueError(f"{fn}: tensor `{name}` of {path} has data_offsets {[begin, end]} that do not fit "
                             f"shape {list(shape)} of {info['dtype']} in the file")
        if math.prod(shape) == 0:
            out[name] = np.zeros(shape, dtype)
        else:
            out[name] = np.memmap(path, dtype, "r", offset=8 + n + begin, shape=shape)
    return out


def _read_file(path: str, fn: str) -> dict[str, np.ndarray]:
    return _read_safetensors(path, fn=fn) if path.endswith(".safetensors") else read_torch_state_dict(path)


def read_state_dict(directory: str | os.PathLike, *, fn: str = "read_state_dict") -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint in ``directory``, by reference name, in its stored dtype."""
    directory = os.fspath(directory)
    for name in _WEIGHT_FILES:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        if not name.endswith(".index.json"):
            return _read_file(path, fn)
        index = _read_json(fn, path)
        weight_map = index.get("weight_map") if isinstance(index, Mapping) else None
        if not isinstance(weight_map, Mapping):
            raise ValueError(f"{fn}: {path} has no `weight_map` object (name -> shard file)")
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(_read_file(os.path.join(directory, shard), fn))
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise ValueError(f"{fn}: {path} lists tensors that no shard holds: {missing[:8]}")
        return tensors
    raise FileNotFoundError(f"{fn}: no weights in {directory}; expected one of {list(_WEIGHT_FILES)}")


def load_hf_checkpoint(
    path: str | os.PathLike,
    *,
    dtype: str | None = None,
    pad_vocab_size_multiple: int | None = None,
    impl: str | None = None,
    scan_layers: bool | None = None,
    remat: str | None = None,
) -> LanguageModel:
    """A :class:`LanguageModel` with the weights of a PyTorch reference checkpoint directory.

    ``path`` holds ``config.json`` and the weights of a transformers ``MambaForCausalLM`` or
    ``Mamba2ForCausalLM``, or of a mamba_ssm ``MambaLMHeadModel`` (layout detected from
    ``config.json``; see :mod:`ssm_jax.interop.hf_config` for every field). Parameters are
    float32 whatever the stored dtype; ``dtype`` is the compute dtype. The logits cover the
    config's ``vocab_size``; ``pad_vocab_size_multiple`` pads the embedding table (default: as
    the checkpoint). ``impl`` selects the scan implementation of the mixers. ``scan_layers`` and
    ``remat`` (default: as saved, else off) set those config fields: a scanned model gets the
    per-layer tensors stacked (:mod:`ssm_jax.models.stack`).

    A directory written by :func:`save_hf_checkpoint` also holds, under ``config.json``'s
    ``"ssm_jax"`` key, the config fields transformers has no key for; they are restored, so the
    round trip gives an equal config. ``dtype`` (default: as saved, else ``"float32"``),
    ``impl`` (default: as saved, else ``"auto"``) and ``pad_vocab_size_multiple``, when given,
    override them.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the field or tensor
    for anything ssm_jax would not compute exactly as the reference does.
    """
    fn = "load_hf_checkpoint"
    directory = os.fspath(path)
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{fn}: no config.json in {directory!r}")
    file_config = _read_json(fn, config_path)
    saved_fields = None
    if isinstance(file_config, Mapping) and hf_config.SSM_JAX_KEY in file_config and "model_type" in file_config:
        file_config = dict(file_config)
        saved_fields = file_config.pop(hf_config.SSM_JAX_KEY)
    ref = hf_config.from_reference_config(
        file_config, dtype=dtype or "float32", pad_vocab_size_multiple=pad_vocab_size_multiple, impl=impl or "auto", fn=fn
    )
    if saved_fields is not None:
        ref = hf_config.apply_ssm_jax_fields(ref, saved_fields, dtype=dtype, impl=impl,
                                             pad_vocab_size_multiple=pad_vocab_size_multiple, fn=fn)
    layout = {k: v for k, v in (("scan_layers", scan_layers), ("remat", remat)) if v is not None}
    if layout:
        try:
            ref = dataclasses.replace(ref, model_config=dataclasses.replace(ref.model_config, **layout))
        except ValueError as e:
            raise ValueError(f"{fn}: {e}") from None
    config = ref.model_config
    tensors = read_state_dict(directory, fn=fn)

    try:
        abstract = nnx.eval_shape(lambda: LanguageModel(config, rngs=nnx.Rngs(0)))
    except ValueError as e:  # the layers' own checks, e.g. ngroups must divide the heads
        raise ValueError(f"{fn}: config.json describes a model ssm_jax cannot build: {e}") from None
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    if len(nnx.to_flat_state(rest)):
        raise RuntimeError(f"{fn}: LanguageModel has state other than parameters; the loader does not know how to fill it")
    # The reference tensors are per layer: convert in the unscanned layout, then stack.
    flat = list(nnx.to_flat_state(unstack_layers(params, config) if config.scan_layers else params))
    values = to_model_params(
        config, tensors, {p: v.shape for p, v in flat}, embedding_key=ref.embedding_key, vocab_rows=ref.vocab_rows, fn=fn,
    )
    filled = nnx.from_flat_state([(p, v.replace(jnp.asarray(values[p]))) for p, v in flat])
    if config.scan_layers:
        filled = stack_layers(filled, config)
    return nnx.merge(graphdef, filled, rest)


def save_hf_checkpoint(
    model: LanguageModel, path: str | os.PathLike, *, extra_config: Mapping[str, Any] | None = None
) -> None:
    """Write ``model`` as a transformers checkpoint: ``config.json`` + ``model.safetensors``.

    All-Mamba models become ``MambaForCausalLM``, all-Mamba-2 ones ``Mamba2ForCausalLM``
    (``transformers.AutoModelForCausalLM.from_pretrained(path)`` loads them); anything else raises
    a ``ValueError`` naming the config field transformers cannot express. The vocabulary is cut to
    ``vocab_size`` rows; tied models store no ``lm_head.weight``. ``extra_config`` adds keys that
    do not affect the forward pass, e.g. ``{"eos_token_id": 0}``. The config fields transformers
    cannot express go under ``config.json``'s ``"ssm_jax"`` key (which transformers keeps as an
    attribute), so :func:`load_hf_checkpoint` returns a model with an equal config.
    """
    fn = "save_hf_checkpoint"
    if not isinstance(model, LanguageModel):
        raise TypeError(f"{fn}: `model` must be an ssm_jax LanguageModel; got {type(model).__name__}")
    config = hf_config.to_transformers_config(model.config, fn=fn)
    extra = dict(extra_config or {})
    allowed = sorted(hf_config._HF_GENERIC - set(config))
    bad = sorted(k for k in extra if k not in allowed)
    if bad:
        raise ValueError(f"{fn}: `extra_config` keys {bad} are not allowed; they may only add keys that do not affect "
                         f"the forward pass: {allowed}")
    hf_config.check_token_id_fields(extra, model.config.vocab_size, fn=f"{fn}: extra_config")
    config.update(extra)
    # What transformers has no key for (pad_vocab_size_multiple, dt_rank="auto", impl, ...), so
    # that load_hf_checkpoint rebuilds an equal config; absent when there is nothing to keep.
    fields = hf_config.ssm_jax_fields(model.config, config, fn=fn)
    if fields:
        config[hf_config.SSM_JAX_KEY] = fields
    params = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    if model.config.scan_layers:
        params = unstack_layers(params, model.config)
    tensors = to_reference_tensors(model.config, params)
    directory = os.fspath(path)
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
