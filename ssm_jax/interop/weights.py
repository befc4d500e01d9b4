"""Parameter names and layouts: reference (PyTorch) state dicts <-> :class:`LanguageModel` params.

The layers of :mod:`ssm_jax.nn` store every tensor in the reference order, so a conversion is a
rename plus one of three layout changes (``Transform``):

========== ============================== =====================================================
transform  PyTorch                        ssm_jax
========== ============================== =====================================================
``same``   ``A_log (d, n)``, ``D``, norms the same array
``linear`` ``nn.Linear.weight (out, in)`` ``Dense.kernel (in, out)`` (transpose)
``conv``   ``Conv1d.weight (c, 1, k)``    ``ShortConv.weight (c, k)`` (depthwise axis dropped)
``vocab``  ``(v_ckpt, e)`` rows           ``(v_pad, e)``; rows past ``vocab_size`` are padding
``head``   ``lm_head.weight (v_ckpt, e)`` ``lm_head.kernel (e, v_pad)``
========== ============================== =====================================================

Orders that matter and already agree (so no permutation is needed): Mamba ``in_proj`` output
``[x | z]`` and ``x_proj`` output ``[dt | B | C]`` (mamba_ssm ``Mamba.forward``); Mamba-2
``in_proj`` output ``[z | x | B | C | dt]`` with the conv over ``[x | B | C]``
(mamba_ssm ``Mamba2``, transformers ``Mamba2Mixer``); mamba_ssm ``GatedMLP.fc1`` output
``[y | gate]``. ``dt_proj.bias`` / ``dt_bias`` are stored before the softplus (the inverse
softplus of dt) in both worlds. Padding rows of the vocabulary are never read by the logits
(sliced to ``vocab_size``); when our table is longer than the checkpoint's they are zeros.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ssm_jax.models.config import LanguageModelConfig

__all__ = ["Entry", "param_table", "to_model_params", "to_reference_tensors"]

Path = tuple  # a path in the model's nnx state, e.g. ("layers", 0, "mixer", "in_proj", "kernel")
Entry = tuple[str, Path, str]  # (reference name, our path, transform)


def _mixer_entries(kind: str, c: LanguageModelConfig) -> list[tuple[str, Path, str]]:
    if kind == "mamba":
        m = c.mamba
        out = [
            ("in_proj.weight", ("in_proj", "kernel"), "linear"),
            ("conv1d.weight", ("conv1d", "weight"), "conv"),
            ("x_proj.weight", ("x_proj", "kernel"), "linear"),
            ("dt_proj.weight", ("dt_proj", "kernel"), "linear"),
            ("dt_proj.bias", ("dt_proj", "bias"), "same"),
            ("A_log", ("A_log",), "same"),
            ("D", ("D",), "same"),
            ("out_proj.weight", ("out_proj", "kernel"), "linear"),
        ]
    elif kind == "mamba2":
        m = c.mamba2
        out = [
            ("in_proj.weight", ("in_proj", "kernel"), "linear"),
            ("conv1d.weight", ("conv1d", "weight"), "conv"),
            ("dt_bias", ("dt_bias",), "same"),
            ("A_log", ("A_log",), "same"),
            ("D", ("D",), "same"),
            ("norm.weight", ("norm", "weight"), "same"),
            ("out_proj.weight", ("out_proj", "kernel"), "linear"),
        ]
    else:
        raise ValueError(f"param_table: mixer {kind!r} has no reference checkpoint layout; supported: 'mamba', 'mamba2'")
    if m.conv_bias:
        out.append(("conv1d.bias", ("conv1d", "bias"), "same"))
    if m.bias:
        out += [("in_proj.bias", ("in_proj", "bias"), "same"), ("out_proj.bias", ("out_proj", "bias"), "same")]
    return [(f"mixer.{name}", ("mixer", *path), t) for name, path, t in out]


def param_table(config: LanguageModelConfig, embedding_key: str = "backbone.embeddings.weight") -> list[Entry]:
    """Every parameter of ``LanguageModel(config)`` with its reference name and transform.

    ``embedding_key``: ``backbone.embeddings.weight`` (transformers) or
    ``backbone.embedding.weight`` (mamba_ssm); every other name is shared by both.
    """
    c = config
    table: list[Entry] = [(embedding_key, ("embedding", "embedding"), "vocab")]
    for i, kind in enumerate(c.mixers):
        block = [("norm.weight", ("norm", "weight"), "same"), *_mixer_entries(kind, c)]
        if c.d_intermediate > 0:
            block += [
                ("norm2.weight", ("norm2", "weight"), "same"),
                ("mlp.fc1.weight", ("mlp", "fc1", "kernel"), "linear"),
                ("mlp.fc2.weight", ("mlp", "fc2", "kernel"), "linear"),
            ]
        table += [(f"backbone.layers.{i}.{name}", ("layers", i, *path), t) for name, path, t in block]
    table.append(("backbone.norm_f.weight", ("norm_f", "weight"), "same"))
    if not c.tie_embeddings:
        table.append(("lm_head.weight", ("lm_head", "kernel"), "head"))
    return table


def _vocab_rows(fn: str, name: str, w: np.ndarray, vocab_size: int, rows: int) -> np.ndarray:
    """``w (v_ckpt, e)`` -> ``(rows, e)``: keep the true vocabulary, pad with zeros."""
    if w.shape[0] < vocab_size:
        raise ValueError(f"{fn}: `{name}` has {w.shape[0]} rows; the config's vocab_size is {vocab_size}")
    w = w[: min(rows, w.shape[0])]
    return np.concatenate([w, np.zeros((rows - w.shape[0], *w.shape[1:]), w.dtype)]) if w.shape[0] < rows else w


def to_model_params(
    config: LanguageModelConfig,
    tensors: Mapping[str, np.ndarray],
    shapes: Mapping[Path, tuple[int, ...]],
    *,
    embedding_key: str,
    vocab_rows: int,
    fn: str = "to_model_params",
) -> dict[Path, np.ndarray]:
    """Reference ``tensors`` -> float32 arrays keyed by our parameter paths.

    ``shapes``: the shape of every parameter of the model being built (from ``nnx.eval_shape``).
    ``vocab_rows``: rows of the checkpoint's embedding that the config implies. Missing or
    unexpected tensors, and any shape that does not fit, raise a ``ValueError`` naming them.
    """
    table = param_table(config, embedding_key)
    ours = {path for _, path, _ in table}
    if ours != set(shapes):
        raise RuntimeError(
            f"{fn}: the interop name table is out of date with ssm_jax.nn: parameters without a reference "
            f"name {sorted(map(str, set(shapes) - ours))}, names without a parameter {sorted(map(str, ours - set(shapes)))}"
        )
    names = {name for name, _, _ in table}
    tensors = dict(tensors)
    if config.tie_embeddings and "lm_head.weight" in tensors:
        # Tied checkpoints may still store the head (torch.save keeps both names of a shared tensor).
        head, emb = tensors.pop("lm_head.weight"), tensors.get(embedding_key)
        if emb is not None and not (head.shape == emb.shape and np.array_equal(head, emb)):
            raise ValueError(f"{fn}: the config ties the embeddings, but `lm_head.weight` differs from `{embedding_key}`")
    missing = sorted(names - set(tensors))
    unexpected = sorted(set(tensors) - names)
    if missing or unexpected:
        raise ValueError(f"{fn}: the checkpoint does not match its config.json: missing tensors {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected tensors {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''}")
    out: dict[Path, np.ndarray] = {}
    for name, path, transform in table:
        w = np.asarray(tensors[name])
        if not (np.issubdtype(w.dtype, np.floating) or w.dtype.name == "bfloat16"):
            raise ValueError(f"{fn}: `{name}` has dtype {w.dtype}; expected a floating dtype")
        w = w.astype(np.float32)
        want = tuple(shapes[path])
        if transform in ("vocab", "head"):
            if w.ndim != 2 or w.shape[0] != vocab_rows:
                raise ValueError(f"{fn}: `{name}` has shape {w.shape}; expected ({vocab_rows}, {config.d_model}) "
                                 "from config.json (vocab_size, padded as the layout pads it)")
            rows = want[0] if transform == "vocab" else want[1]
            w = _vocab_rows(fn, name, w, config.vocab_size, rows)
            if transform == "head":
                w = w.T
        elif transform == "linear":
            w = w.T if w.ndim == 2 else w
        elif transform == "conv":
            if w.ndim != 3 or w.shape[1] != 1:
                raise ValueError(f"{fn}: `{name}` has shape {w.shape}; expected a depthwise Conv1d weight (c, 1, k)")
            w = w[:, 0, :]
        if w.shape != want:
            raise ValueError(f"{fn}: `{name}` has shape {tuple(tensors[name].shape)}; config.json implies "
                             f"{_reference_shape(want, transform)}")
        out[path] = np.ascontiguousarray(w)
    return out


def _reference_shape(ours: tuple[int, ...], transform: str) -> tuple[int, ...]:
    if transform == "linear" and len(ours) == 2:
        return ours[::-1]
    if transform == "conv":
        return (ours[0], 1, ours[1])
    return ours


def to_reference_tensors(
    config: LanguageModelConfig, params: Mapping[Path, np.ndarray], *, embedding_key: str = "backbone.embeddings.weight"
) -> dict[str, np.ndarray]:
    """Our parameters -> reference tensors (float32), vocabulary rows cut to ``vocab_size``.

    Tied models get no ``lm_head.weight`` (transformers re-ties it on load).
    """
    out = {}
    for name, path, transform in param_table(config, embedding_key):
        w = np.asarray(params[path], np.float32)
        if transform == "linear":
            w = w.T
        elif transform == "conv":
            w = w[:, None, :]
        elif transform == "vocab":
            w = w[: config.vocab_size]
        elif transform == "head":
            w = w.T[: config.vocab_size]
        out[name] = np.ascontiguousarray(w)
    return out
