"""LM text: packing keeps documents apart and loses nothing; corpora, splits, tokenizers, metrics."""

from __future__ import annotations

import logging
import math
import zlib

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.data import registry, text
from experiments.data.tokenizers import ByteTokenizer, SentencePieceTokenizer, get_tokenizer, train_sentencepiece

tfds.disable_progress_bar()


def cfg(**kw):
    base = dict(name="text", tokenizer="byte", seq_len=16, validation_fraction=0.3)
    return ml_collections.ConfigDict({**base, **kw})


def unpack(packed: text.PackedTokens, bos: int) -> list[list[int]]:
    """Rebuild the documents from the packed sequences using only segment_ids and weights."""
    docs: list[list[int]] = []
    for i in range(len(packed)):
        ex = packed[i]
        seg, w = ex["segment_ids"], ex["weights"]
        for t in range(len(seg)):
            if seg[t] == 0:
                assert w[t] == 0
                continue
            if ex["inputs"][t] == bos:
                # a BOS input opens a document; its segment id differs from the previous position's
                assert t == 0 or seg[t] != seg[t - 1]
                docs.append([])
            elif t > 0:
                assert seg[t] == seg[t - 1] or seg[t - 1] == 0  # no segment change inside a document
            if w[t] > 0:
                docs[-1].append(int(ex["targets"][t]))
            elif t + 1 < len(seg) and seg[t + 1] != 0:
                assert seg[t + 1] != seg[t]  # weight 0 only where the next document starts
    return docs


@pytest.mark.parametrize("seq_len", [1, 3, 7, 64])
def test_packing_keeps_documents_and_loses_nothing(seq_len):
    rng = np.random.default_rng(seq_len)
    tok = ByteTokenizer()
    docs = [rng.integers(0, 256, rng.integers(1, 20)).astype(np.uint8).tobytes() for _ in range(9)]
    stream = text._stream_from_docs(docs, tok)
    packed = text.PackedTokens(stream, seq_len, pad_id=tok.pad_id)
    rebuilt = unpack(packed, tok.bos_id)
    assert rebuilt == [list(tok.encode(d)) for d in docs]
    total_weight = sum(packed[i]["weights"].sum() for i in range(len(packed)))
    assert total_weight == sum(len(d) for d in docs) == stream.num_scored
    # every token is an input exactly once (the stream's last token has no target: not an input)
    inputs = np.concatenate([packed[i]["inputs"][packed[i]["segment_ids"] > 0] for i in range(len(packed))])
    assert np.array_equal(inputs, np.asarray(stream.tokens[:-1], np.int32))


def test_segment_ids_restart_per_sequence():
    tok = ByteTokenizer()
    stream = text._stream_from_docs([b"ab", b"cde", b"f"], tok)  # [B a b B c d e B f]
    ex = text.PackedTokens(stream, 4)[1]  # inputs: c d e B ; targets: d e B f
    assert ex["inputs"].tolist() == [ord(c) + 2 for c in "cde"] + [1]
    assert ex["targets"].tolist() == [ord(c) + 2 for c in "de"] + [1, ord("f") + 2]
    assert ex["segment_ids"].tolist() == [1, 1, 1, 2]
    assert ex["weights"].tolist() == [1, 1, 0, 1]
    assert len(text.PackedTokens(stream, 4)) == 2  # 8 targets fill exactly two sequences
    last = text.PackedTokens(stream, 3)[2]  # 8 targets in threes: the third sequence is padded
    assert last["inputs"].tolist() == [ord("e") + 2, 1, 0] and last["targets"].tolist() == [1, ord("f") + 2, 0]
    assert last["weights"].tolist() == [0, 1, 0] and last["segment_ids"].tolist() == [1, 2, 0]


def write_corpus(root, n=12):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        (sub / f"doc{i:02d}.txt").write_text(f"document {i}\n" * (i + 1))
    return root


def test_directory_corpus_split_by_file(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    c = cfg(corpus=str(root))
    train = list(text.documents(c, "train"))
    val = list(text.documents(c, "validation"))
    assert train and val
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(p.read_bytes() for p in root.rglob("*.txt"))
    assert list(text.documents(c, "validation")) == val  # deterministic
    # a glob picks the same files
    g = cfg(corpus=str(root / "**" / "*.txt"))
    assert sorted(text.documents(g, "train")) + sorted(text.documents(g, "validation")) != []
    assert sorted(list(text.documents(g, "train")) + list(text.documents(g, "validation"))) == sorted(train + val)


def test_small_directory_fallback_file_is_not_in_train(tmp_path):
    # three files at 5%: no key falls below 500, so one file is held out -- and must leave train
    root = tmp_path / "corpus"
    root.mkdir()
    files = {"a.txt": b"alpha doc one\n", "b.txt": b"beta doc two\n", "c.txt": b"gamma doc three\n"}
    for name, data in files.items():
        (root / name).write_bytes(data)
    keys = {name: zlib.crc32(name.encode()) % 10_000 for name in files}
    assert min(keys.values()) >= 500  # the fallback is what this test exercises
    c = cfg(corpus=str(root), validation_fraction=0.05)
    train, val = list(text.documents(c, "train")), list(text.documents(c, "validation"))
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(files.values())
    assert val == [files[min(keys, key=keys.get)]]  # deterministic: the file with the lowest key


def test_glob_split_stable_when_files_are_added(tmp_path):
    root = tmp_path / "corpus"
    (root / "a").mkdir(parents=True)
    for i in range(200):
        (root / "a" / f"f{i}.txt").write_text(f"document {i}\n")
    g = cfg(corpus=str(root / "**" / "*.txt"), validation_fraction=0.05)
    val, train = set(text.documents(g, "validation")), set(text.documents(g, "train"))
    assert val and train
    (root / "b").mkdir()  # a sibling folder moved commonpath(matches), and with it every key
    (root / "b" / "new.txt").write_text("new document\n")
    assert val <= set(text.documents(g, "validation"))
    assert train <= set(text.documents(g, "train"))
    # the glob's keys are relative to its literal root: the same split as the directory corpus there
    assert set(text.documents(g, "validation")) == set(text.documents(cfg(corpus=str(root), validation_fraction=0.05), "validation"))


def test_directory_corpus_skips_binary_files(tmp_path, caplog):
    root = write_corpus(tmp_path / "run")
    texts = sorted(p.read_bytes() for p in root.rglob("*.txt"))
    straddle = root / "long.txt"  # a UTF-8 character cut by the 8 KiB sniff is still text
    straddle.write_bytes(b"x" * 8191 + "\u00e9".encode() + b"tail\n")
    (root / "ckpt").mkdir()
    (root / "ckpt" / "params.msgpack").write_bytes(b"\x81\xa6params\x00\x01\x02" * 10)  # NUL bytes
    (root / "events.out.tfevents.1").write_bytes(b"\xff\xfe\xfdnot utf-8\n")  # no NUL, not UTF-8
    c = cfg(corpus=str(root))
    with caplog.at_level(logging.WARNING):
        docs = list(text.documents(c, "train")) + list(text.documents(c, "validation"))
    assert sorted(docs) == sorted(texts + [straddle.read_bytes()])
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1 and "skipped 2 files" in warnings[0] and "data.corpus" in warnings[0]
    assert "params.msgpack" in warnings[0] or "events.out.tfevents.1" in warnings[0]


def test_corpus_without_text_files(tmp_path):
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "a.ckpt").write_bytes(b"\x00\x01" * 100)
    with pytest.raises(ValueError, match="data.corpus.*no text files"):
        list(text.documents(cfg(corpus=str(binary)), "train"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="data.corpus"):
        list(text.documents(cfg(corpus=str(tmp_path / "empty")), "train"))


def test_single_file_split_by_lines(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("".join(f"line {i}\n" for i in range(20)))
    c = cfg(corpus=str(f), validation_fraction=0.25)
    (train,) = text.documents(c, "train")
    (val,) = text.documents(c, "validation")
    assert train + val == f.read_bytes()
    assert val == "".join(f"line {i}\n" for i in range(15, 20)).encode()


def test_missing_corpus():
    with pytest.raises(FileNotFoundError, match="corpus"):
        list(text.documents(cfg(corpus="/nonexistent/dir/*.txt"), "train"))


def test_stdlib_default_corpus_batches():
    c = cfg(corpus="stdlib", max_documents=30, seq_len=64)
    val = list(text.documents(c, "validation"))
    train = list(text.documents(c, "train"))
    assert len(val) == 30 and len(train) == 30 and not set(val) & set(train)
    it = iter(registry.build(c, split="train", seed=0, global_batch_size=4))
    b = next(it)
    assert set(b) == {"inputs", "targets", "weights", "segment_ids"}
    assert b["inputs"].shape == (4, 64) and b["inputs"].dtype == np.int32
    assert np.array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])  # targets are inputs shifted
    state = it.get_state()
    nxt = next(it)
    it2 = iter(registry.build(c, split="train", seed=0, global_batch_size=4))
    it2.set_state(state)
    resumed = next(it2)
    assert all(np.array_equal(nxt[k], resumed[k]) for k in nxt)


def test_eval_split_covers_every_scored_token(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    c = cfg(corpus=str(root), seq_len=8)
    stream = text.token_stream(c, "validation")
    total = 0.0
    for b in registry.build(c, split="validation", seed=0, global_batch_size=3):
        total += b["weights"].sum()
    assert total == stream.num_scored == sum(len(d) for d in text.documents(c, "validation"))


def test_sentencepiece_tokenized_corpus(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    texts = [p.read_text() for p in sorted(root.rglob("*.txt"))] * 5
    model = train_sentencepiece(texts, vocab_size=300, model_path=tmp_path / "sp.model")
    tok = get_tokenizer(str(model))
    assert isinstance(tok, SentencePieceTokenizer) and tok.vocab_size == 300
    c = cfg(corpus=str(root), tokenizer=str(model), seq_len=8, cache_dir=str(tmp_path / "cache"))
    docs = list(text.documents(c, "validation"))
    stream = text.token_stream(c, "validation")
    packed = text.PackedTokens(stream, 8, pad_id=tok.pad_id)
    rebuilt = unpack(packed, tok.bos_id)
    assert [tok.decode(d) for d in rebuilt] == [d.decode() for d in docs]  # lossless round trip
    assert 0 < stream.tokens_per_byte < 1  # subwords: fewer tokens than bytes
    # cached: a second call reads the same arrays from disk
    assert any((tmp_path / "cache").iterdir())
    again = text.token_stream(c, "validation")
    assert np.array_equal(np.asarray(again.tokens), np.asarray(stream.tokens))
    info = text.dataset_info(c)
    assert info["vocab_size"] == 300 and info["tokens_per_byte"] == pytest.approx(stream.tokens_per_byte)


class TinyLmCorpus(tfds.core.GeneratorBasedBuilder):
    """A two-split text dataset standing in for a TFDS catalog corpus (no download)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(["alpha", "beta gamma"]), "validation": self._generate_examples(["delta"])}

    def _generate_examples(self, texts):
        for i, t in enumerate(texts):
            yield i, {"text": t}


def test_tfds_catalog_corpus(tmp_path):
    TinyLmCorpus(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    c = cfg(corpus="tfds:tiny_lm_corpus", data_dir=str(tmp_path))
    assert sorted(text.documents(c, "train")) == [b"alpha", b"beta gamma"]
    assert list(text.documents(c, "validation")) == [b"delta"]
    (b,) = list(registry.build(c, split="validation", seed=0, global_batch_size=1))
    assert b["weights"].sum() == 5  # "delta" after BOS


def test_metrics():
    assert text.perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert text.bits_per_byte(3 * math.log(2.0)) == pytest.approx(3.0)
    # 2 nats/token at 0.25 tokens per byte: 0.5 nats per byte = 0.7213 bits per byte
    assert text.bits_per_byte(2.0, 0.25) == pytest.approx(0.5 / math.log(2.0))
