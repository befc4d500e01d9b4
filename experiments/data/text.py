"""Language-modeling text: documents -> tokens -> packed fixed-length sequences with segment_ids.

Registered dataset ``text`` (task ``"lm"``). ``data.*`` keys::

    corpus               str    "stdlib" (default: the Python standard library's .py files, no
                                download), a file, a directory (every text file below it), a
                                glob ("data/**/*.txt"; the text files it matches), or
                                "tfds:<name>[/<config>]" (a TFDS catalog dataset, prepared in
                                data_dir)
    tokenizer            str    "byte" (UTF-8 bytes, 258 ids) or a SentencePiece .model path
    seq_len              int    tokens per packed sequence
    validation_fraction  float  share of files held out for "validation" (file corpora)
    text_key             str    the TFDS feature holding the text ("text")
    data_dir             str    TFDS data dir for tfds: corpora ("" = TFDS's default)
    max_documents        int    keep the first N documents of each split (0 = all; smoke runs)
    cache_dir            str    where SentencePiece token arrays are cached ("" = ~/.cache/ssm_jax)
    num_threads          int    grain reader threads

Text files: a directory or glob corpus skips every file that is not text -- a NUL byte or bytes
that are not UTF-8 in its first 8 KiB (checkpoints, TensorBoard event files, archives) -- with
one warning giving the count and an example; none left is an error. A file named directly, and
the stdlib corpus, are taken as they are.

Splitting: a file's key is ``crc32(relative path) % 10_000``, the path taken relative to a root
that does not depend on which files exist: the directory of a directory corpus, the pattern's
leading folders without glob characters for a glob (``data/`` for ``data/**/*.txt``), the
standard library's folder for stdlib. A file belongs to validation when its key is below
``round(validation_fraction * 10_000)``, to train otherwise; no file is in both. Stable: adding
or removing files never moves another file between the splits -- except that when no file's key
is below the threshold (a few files, a small fraction), the one file with the lowest key (ties:
its relative path) is validation instead, so that file can return to train when a file is added.
A corpus of one file is split by position instead (its last ``validation_fraction`` of lines).
TFDS corpora use their own ``train`` and ``validation`` (or ``test``) splits. ``test`` is the
validation split for file corpora.

Packing (concatenate, then split): each document becomes ``[BOS] + tokens``; documents are
concatenated in order and cut into windows of ``seq_len + 1`` tokens overlapping by one, so
``inputs = window[:-1]``, ``targets = window[1:]``. ``segment_ids`` number the documents inside a
sequence from 1 (0 = padding), so a packed document never attends to or carries state from its
neighbour; ``weights`` are 0 where the target is the next document's BOS and on padding. Every
token of every document is an input exactly once, and every non-BOS token is a weighted target
exactly once: nothing is dropped, the last sequence is padded.

Metrics: :func:`perplexity` and :func:`bits_per_byte` turn the mean token loss into the
reported numbers; :func:`dataset_info` gives ``vocab_size`` and the corpus's tokens-per-byte.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import itertools
import json
import logging
import math
import os
import sysconfig
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from experiments.data import registry
from experiments.data.pipeline import cfg_get, source_builder
from experiments.data.tokenizers import get_tokenizer

__all__ = [
    "PackedTokens",
    "TokenStream",
    "bits_per_byte",
    "dataset_info",
    "documents",
    "perplexity",
    "token_stream",
]

_SPLITS = ("train", "validation", "test")


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def perplexity(mean_nll: float) -> float:
    """``exp`` of the mean negative log-likelihood per token (nats)."""
    return float(math.exp(mean_nll))


def bits_per_byte(mean_nll: float, tokens_per_byte: float = 1.0) -> float:
    """Bits per UTF-8 byte from the mean NLL per token (nats): ``mean_nll * tokens/byte / ln 2``.

    Exact for a whole split when ``tokens_per_byte`` is that split's count of scored tokens over
    its bytes (:func:`dataset_info`); 1 for the byte tokenizer.
    """
    return float(mean_nll * tokens_per_byte / math.log(2.0))


# ----------------------------------------------------------------------------------------------
# Documents
# ----------------------------------------------------------------------------------------------


def _stdlib_files() -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
    return root, files


def _corpus_files(corpus: str) -> tuple[Path, list[Path]]:
    """``(root, files)``: the corpus's files, sorted, and the root their split keys are relative to."""
    if corpus == "stdlib":
        return _stdlib_files()
    path = Path(corpus).expanduser()
    if path.is_file():
        return path.parent, [path]
    if path.is_dir():
        return path, _text_files(corpus, sorted(p for p in path.rglob("*") if p.is_file()))
    pattern = os.path.expanduser(corpus)
    matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    return _glob_root(pattern), _text_files(corpus, matches)


def _glob_root(pattern: str) -> Path:
    """The pattern's leading folders without glob characters: fixed by the pattern alone, so the
    split key of a matched file does not change when another file starts or stops matching."""
    literal = itertools.takewhile(lambda part: not any(c in part for c in "*?["), Path(pattern).parts[:-1])
    return Path(*literal)  # Path() is ".", the folder relative matches are relative to


_SNIFF_BYTES = 8192
_warned_skips: set[str] = set()


def _is_text(path: Path) -> bool:
    """No NUL byte and valid UTF-8 in the first 8 KiB (a character cut at 8 KiB is allowed)."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES + 1)
    if b"\0" in head[:_SNIFF_BYTES]:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head[:_SNIFF_BYTES], final=len(head) <= _SNIFF_BYTES)
    except UnicodeDecodeError:
        return False
    return True


def _text_files(corpus: str, files: list[Path]) -> list[Path]:
    """``files`` without the binary ones: a corpus pointed at a run directory must not train on
    its checkpoints and event files. Warns once per corpus per process (every split lists them)."""
    if not files:
        raise FileNotFoundError(
            f"text: data.corpus {corpus!r} is not 'stdlib', 'tfds:<name>', a file, a directory with files or a glob matching files"
        )
    is_text = [_is_text(p) for p in files]
    kept = [p for p, t in zip(files, is_text) if t]
    skipped = [p for p, t in zip(files, is_text) if not t]
    if not kept:
        raise ValueError(f"text: data.corpus {corpus!r} has no text files: all {len(files)} are binary or not UTF-8 (e.g. {skipped[0]})")
    if skipped and corpus not in _warned_skips:
        _warned_skips.add(corpus)
        logging.warning("text: data.corpus %r: skipped %d files that are not UTF-8 text (e.g. %s)", corpus, len(skipped), skipped[0])
    return kept


def _split_key(path: Path, root: Path) -> tuple[int, str]:
    """``(crc32(relative path) % 10_000, relative path)``; the path breaks ties in the fallback."""
    relpath = Path(os.path.relpath(path, root)).as_posix()  # relpath: a glob match may hold ".."
    return zlib.crc32(relpath.encode()) % 10_000, relpath


def _validation_files(root: Path, files: list[Path], fraction: float) -> set[Path]:
    """The files held out for validation (module docstring, "Splitting"); the rest are train."""
    keys = {p: _split_key(p, root) for p in files}
    held = {p for p in files if keys[p][0] < round(fraction * 10_000)}
    # too few files for the fraction: hold out the one closest to the threshold rather than nothing
    return held or {min(files, key=keys.__getitem__)}


def documents(data_config, split: str) -> Iterator[bytes]:
    """The documents (UTF-8 bytes) of ``split`` of the configured corpus, in a fixed order."""
    if split not in _SPLITS:
        raise ValueError(f"text: split must be one of {_SPLITS}; got {split!r}")
    corpus = str(cfg_get(data_config, "corpus", "stdlib"))
    fraction = float(cfg_get(data_config, "validation_fraction", 0.05))
    limit = int(cfg_get(data_config, "max_documents", 0))
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"text: validation_fraction must be in (0, 1); got {fraction}")
    docs = _tfds_documents(data_config, corpus, split) if corpus.startswith("tfds:") else _file_documents(corpus, split, fraction)
    for i, doc in enumerate(docs):
        if limit and i >= limit:
            return
        yield doc


def _file_documents(corpus: str, split: str, fraction: float) -> Iterator[bytes]:
    """One document per file of ``split`` (module docstring, "Splitting"); one file: its lines."""
    want_validation = split != "train"
    root, files = _corpus_files(corpus)
    if len(files) == 1:
        lines = files[0].read_bytes().splitlines(keepends=True)
        cut = len(lines) - max(1, round(fraction * len(lines)))
        if cut <= 0:
            raise ValueError(
                f"text: data.corpus {corpus!r} is one file, {files[0]}, split by lines, and its {len(lines)} line(s) "
                "are too few to split off a validation part; give a longer file or several files"
            )
        yield b"".join(lines[cut:] if want_validation else lines[:cut])
        return
    held = _validation_files(root, files, fraction)
    for p in files:
        if (p in held) != want_validation:
            continue
        data = p.read_bytes()
        if data:
            yield data


def _tfds_documents(data_config, corpus: str, split: str) -> Iterator[bytes]:
    import tensorflow_datasets as tfds  # heavy; only for tfds: corpora

    name = corpus[len("tfds:") :]
    key = str(cfg_get(data_config, "text_key", "text"))
    data_dir = cfg_get(data_config, "data_dir", "") or None
    splits = tfds.data_source(name, data_dir=data_dir)
    if split == "train":
        tfds_split = "train"
    else:
        tfds_split = next((s for s in ("validation", "test") if s in splits), None)
        if tfds_split is None:
            raise ValueError(f"text: {name} has no validation or test split; it has {sorted(splits)}")
    source = splits[tfds_split]
    for i in range(len(source)):
        text = source[i][key]
        yield text.encode("utf-8") if isinstance(text, str) else bytes(text)


# ----------------------------------------------------------------------------------------------
# Token stream and packing
# ----------------------------------------------------------------------------------------------


class TokenStream:
    """All documents of a split, ``[BOS] + tokens`` each, concatenated: ``tokens (N,)``, ``doc_starts (D,)``."""

    def __init__(self, tokens: np.ndarray, doc_starts: np.ndarray, num_bytes: int):
        self.tokens = tokens
        self.doc_starts = np.asarray(doc_starts, np.int64)
        self.num_bytes = int(num_bytes)

    @property
    def num_scored(self) -> int:
        """Targets with weight 1: every token but the documents' BOS."""
        return len(self.tokens) - len(self.doc_starts)

    @property
    def tokens_per_byte(self) -> float:
        return self.num_scored / max(self.num_bytes, 1)


def _stream_from_docs(docs, tokenizer) -> TokenStream:
    pieces, starts, pos, nbytes = [], [], 0, 0
    bos = np.array([tokenizer.bos_id], np.int32)
    for doc in docs:
        ids = tokenizer.encode(doc)
        if ids.size == 0:
            continue
        starts.append(pos)
        pieces += [bos, ids]
        pos += 1 + ids.size
        nbytes += len(doc)
    if not starts:
        raise ValueError("text: the split has no non-empty documents")
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    return TokenStream(np.concatenate(pieces).astype(dtype), np.array(starts), nbytes)


def token_stream(data_config, split: str, tokenizer=None) -> TokenStream:
    """The split's :class:`TokenStream`; SentencePiece streams are cached on disk."""
    tokenizer = tokenizer or get_tokenizer(str(cfg_get(data_config, "tokenizer", "byte")))
    if tokenizer.fingerprint().startswith("byte"):
        return _stream_from_docs(documents(data_config, split), tokenizer)
    cache_root = Path(cfg_get(data_config, "cache_dir", "") or Path.home() / ".cache" / "ssm_jax" / "text")
    key = _cache_key(data_config, split, tokenizer)
    folder = cache_root / key
    if (folder / "meta.json").exists():
        meta = json.loads((folder / "meta.json").read_text())
        return TokenStream(np.load(folder / "tokens.npy", mmap_mode="r"), np.load(folder / "doc_starts.npy"), meta["num_bytes"])
    stream = _stream_from_docs(documents(data_config, split), tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"tmp{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    np.save(tmp / "tokens.npy", stream.tokens)
    np.save(tmp / "doc_starts.npy", stream.doc_starts)
    for f in ("tokens.npy", "doc_starts.npy"):
        os.replace(tmp / f, folder / f)
    tmp.rmdir()
    (folder / "meta.json").write_text(json.dumps({"num_bytes": stream.num_bytes, "key": key}))
    return stream


def _cache_key(data_config, split: str, tokenizer) -> str:
    corpus = str(cfg_get(data_config, "corpus", "stdlib"))
    parts = [
        corpus,
        split,
        tokenizer.fingerprint(),
        str(cfg_get(data_config, "validation_fraction", 0.05)),
        str(cfg_get(data_config, "max_documents", 0)),
        str(cfg_get(data_config, "text_key", "text")),
        "split-rule:2",  # bumped when the file -> split rule changes, so a cache never holds the old split
    ]
    if not corpus.startswith("tfds:"):
        _, files = _corpus_files(corpus)
        parts += [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


class PackedTokens:
    """Random access to the packed sequences of a :class:`TokenStream` (see module docstring).

    Item ``i`` is a dict of ``(seq_len,)`` arrays: ``inputs``, ``targets`` int32,
    ``weights`` float32, ``segment_ids`` int32.
    """

    def __init__(self, stream: TokenStream, seq_len: int, *, pad_id: int = 0):
        if seq_len < 1:
            raise ValueError(f"PackedTokens: seq_len must be >= 1; got {seq_len}")
        self.stream = stream
        self.seq_len = seq_len
        self.pad_id = pad_id
        self._n = max(1, -(-(len(stream.tokens) - 1) // seq_len))

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < self._n:
            raise IndexError(f"PackedTokens: index {i} out of range [0, {self._n})")
        L, toks, starts = self.seq_len, self.stream.tokens, self.stream.doc_starts
        s = i * L
        window = np.asarray(toks[s : s + L + 1], np.int32)
        n = window.size - 1  # positions with a target
        pos = np.arange(s, s + n + 1)
        doc = np.searchsorted(starts, pos, side="right") - 1  # document of each window token
        out = {
            "inputs": np.full(L, self.pad_id, np.int32),
            "targets": np.full(L, self.pad_id, np.int32),
            "weights": np.zeros(L, np.float32),
            "segment_ids": np.zeros(L, np.int32),
        }
        out["inputs"][:n] = window[:-1]
        out["targets"][:n] = window[1:]
        out["weights"][:n] = doc[1:] == doc[:-1]  # the target is in the input's document
        out["segment_ids"][:n] = doc[:-1] - doc[0] + 1
        return out


def dataset_info(data_config) -> dict:
    """``vocab_size``, ``pad_id``, ``bos_id`` and ``tokens_per_byte`` (validation split) for the config."""
    tokenizer = get_tokenizer(str(cfg_get(data_config, "tokenizer", "byte")))
    stream = token_stream(data_config, "validation", tokenizer)
    return {
        "vocab_size": tokenizer.vocab_size,
        "pad_id": tokenizer.pad_id,
        "bos_id": tokenizer.bos_id,
        "tokens_per_byte": stream.tokens_per_byte,
    }


@registry.register("text", task="lm")
@source_builder
def text(data_config, split):
    """Packed language-modeling sequences of ``data.corpus`` (see module docstring)."""
    tokenizer = get_tokenizer(str(cfg_get(data_config, "tokenizer", "byte")))
    seq_len = int(cfg_get(data_config, "seq_len", 1024))
    source = PackedTokens(token_stream(data_config, split, tokenizer), seq_len, pad_id=tokenizer.pad_id)
    z = np.zeros(seq_len, np.int32)
    pad = {"inputs": z + tokenizer.pad_id, "targets": z + tokenizer.pad_id, "weights": z.astype(np.float32), "segment_ids": z}
    return source, (lambda x: x), pad, int(cfg_get(data_config, "num_threads", 2))

