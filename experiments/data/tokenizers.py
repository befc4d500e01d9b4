"""Tokenizers for the language-modeling data: raw bytes, or a SentencePiece model.

Both give ``encode(text) -> (n,) int array`` without BOS, ``decode(ids) -> str``, and the ids
``pad_id`` and ``bos_id`` the packer uses. ``get_tokenizer("byte")`` or
``get_tokenizer("/path/to/model.model")``; :func:`train_sentencepiece` makes a model from local
text (no download).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import sentencepiece as spm

__all__ = ["ByteTokenizer", "SentencePieceTokenizer", "get_tokenizer", "train_sentencepiece"]


class ByteTokenizer:
    """UTF-8 bytes: id = byte + 2; 0 = pad, 1 = BOS (258 ids)."""

    pad_id = 0
    bos_id = 1
    offset = 2
    vocab_size = 256 + offset
    name = "byte"

    def encode(self, text: str | bytes) -> np.ndarray:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(data, np.uint8).astype(np.int32) + self.offset

    def decode(self, ids) -> str:
        ids = np.asarray(ids)
        return (ids[ids >= self.offset] - self.offset).astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        return "byte-v1"


class SentencePieceTokenizer:
    """A SentencePiece model file. Pads with the model's pad id (or unk, when it has none)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePieceTokenizer: no model file at {path}")
        self.path = path
        self._sp = spm.SentencePieceProcessor(model_file=str(path))
        self.vocab_size = int(self._sp.get_piece_size())
        if self._sp.bos_id() < 0:
            raise ValueError(f"SentencePieceTokenizer: {path} has no BOS piece; train it with bos_id >= 0")
        self.bos_id = int(self._sp.bos_id())
        self.pad_id = int(self._sp.pad_id()) if self._sp.pad_id() >= 0 else int(self._sp.unk_id())
        self.name = f"sentencepiece:{path.name}"

    def encode(self, text: str | bytes) -> np.ndarray:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return np.asarray(self._sp.encode(text), np.int32)

    def decode(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids])

    def fingerprint(self) -> str:
        return "spm-" + hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]


def get_tokenizer(spec: str):
    """``"byte"`` or the path of a SentencePiece ``.model`` file."""
    if spec == "byte":
        return ByteTokenizer()
    if spec.endswith(".model") or Path(spec).is_file():
        return SentencePieceTokenizer(spec)
    raise ValueError(f"get_tokenizer: tokenizer must be 'byte' or a SentencePiece .model path; got {spec!r}")


def train_sentencepiece(texts: Iterable[str], *, vocab_size: int, model_path: str | Path, model_type: str = "bpe") -> Path:
    """Train a SentencePiece model on ``texts`` and write it to ``model_path`` (``.model``)."""
    model_path = Path(model_path)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        byte_fallback=True,  # every byte is representable: no <unk> on code or odd text
        # Lossless: keep newlines, indentation and runs of spaces (the defaults fold them).
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        max_sentence_length=1 << 16,
        minloglevel=2,
    )
    model_path.write_bytes(buf.getvalue())
    return model_path
