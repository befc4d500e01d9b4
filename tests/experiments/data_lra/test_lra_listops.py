"""ListOps: generator vs an independent evaluator, the published vocabulary, release TSVs -> TFDS."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.data import lra, registry
from experiments.data.lra import listops

tfds.disable_progress_bar()

# --- an evaluator written independently of the generator: a stack machine over the tokens ------


def _apply(op: str, args: list[int]) -> int:
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[SM":
        return sum(args) % 10
    assert op == "[MED"
    s = sorted(args)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2


def stack_eval(source: str) -> tuple[int, int, int]:
    """-> (value, depth, widest argument count), reading the release's Source string."""
    stack: list[tuple[str, list[int]]] = []
    result, depth, widest = None, 0, 0
    for tok in source.split():
        if tok in "()":
            continue
        if tok.startswith("["):
            stack.append((tok, []))
            depth = max(depth, len(stack))
        elif tok == "]":
            op, args = stack.pop()
            widest = max(widest, len(args))
            value = _apply(op, args)
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        else:
            if stack:
                stack[-1][1].append(int(tok))
            else:
                result = int(tok)
    assert not stack
    return result, depth, widest


def test_generator_labels_match_independent_evaluator():
    pool = listops.generate(40, seed=7, min_length=20, max_length=400)
    assert len(pool) == 40
    assert len({listops.to_source(t) for t, _ in pool}) == 40  # deduplicated
    labels = []
    for tree, label in pool:
        source = listops.to_source(tree)
        value, depth, widest = stack_eval(source)
        assert label == value
        n_tokens = sum(tok not in "()" for tok in source.split())
        assert 20 < n_tokens < 400
        assert depth <= 10 - 1 + 1 and widest <= 10  # operators only above max_depth
        labels.append(label)
    assert len(set(labels)) >= 4  # not a degenerate generator


def test_generator_published_settings():
    pool = listops.generate(8, seed=0)  # depth <= 10, <= 10 args, 500 < tokens < 2000
    for tree, label in pool:
        source = listops.to_source(tree)
        value, depth, widest = stack_eval(source)
        assert value == label
        assert depth <= 9 and widest <= 10  # depth counts operators: leaves sit at depth <= 10
        assert 500 < len(listops.tokenize(source)) < 2000


def test_generator_is_deterministic():
    a = [listops.to_source(t) for t, _ in listops.generate(5, seed=3, min_length=10, max_length=200)]
    b = [listops.to_source(t) for t, _ in listops.generate(5, seed=3, min_length=10, max_length=200)]
    c = [listops.to_source(t) for t, _ in listops.generate(5, seed=4, min_length=10, max_length=200)]
    assert a == b and a != c


def test_generator_blocks_in_parallel_give_the_same_pool(monkeypatch):
    # Blocks of 3 trees: 7 examples span 3 blocks; 2 worker processes draw the same pool as 1.
    monkeypatch.setattr(listops, "BLOCK", 3)
    kw = dict(seed=5, min_length=10, max_length=120)
    one = [listops.to_source(t) for t, _ in listops.generate(7, **kw)]
    assert len(set(one)) == 7
    assert [listops.to_source(t) for t, _ in listops.generate(7, workers=2, **kw)] == one
    # A prefix property: the first blocks do not depend on how many examples are asked for.
    assert [listops.to_source(t) for t, _ in listops.generate(4, **kw)] == one[:4]


def test_release_parenthesization_and_tokenizer():
    tree = ("[MAX", (2, ("[MIN", (4, 3)), 9))
    assert listops.to_source(tree) == "( ( ( ( [MAX 2 ) ( ( ( [MIN 4 ) 3 ) ] ) ) 9 ) ] )"
    ids = listops.tokenize(listops.to_source(tree))
    # Published token set with our fixed ids: digits d -> d + 1, [MIN 11, [MAX 12, [MED 13, [SM 14, ] 15.
    assert ids.tolist() == [12, 3, 11, 5, 4, 15, 10, 15]
    assert listops.detokenize(ids) == "[MAX 2 [MIN 4 3 ] 9 ]"
    assert listops.evaluate(tree) == 9
    with pytest.raises(ValueError, match="FIRST"):
        listops.tokenize("( [FIRST 1 ] )")


ROWS = {
    "basic_train.tsv": [("( ( ( [MAX 2 ) 9 ) ] )", 9), ("( ( ( [SM 7 ) 5 ) ] )", 2), ("( ( ( [MED 1 ) 4 ) ] )", 2)],
    "basic_val.tsv": [("( ( ( [MIN 6 ) 3 ) ] )", 3), ("8", 8)],
    "basic_test.tsv": [("( ( ( ( [MED 1 ) 5 ) 8 ) ] )", 5)],
}


def write_release(root):
    folder = root / "lra_release" / "lra_release" / "listops-1000"
    folder.mkdir(parents=True)
    for name, rows in ROWS.items():
        with open(folder / name, "w", newline="") as f:  # exactly the published writer's format
            w = csv.writer(f, delimiter="\t")
            w.writerow(["Source", "Target"])
            w.writerows(rows)
    return folder


def test_release_files_build(tmp_path):
    write_release(tmp_path / "manual")
    cfg = dict(tfds_config="release", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "manual"))
    builder = lra.load_builder("lra_listops", cfg)
    for split, fname in [("train", "basic_train.tsv"), ("validation", "basic_val.tsv"), ("test", "basic_test.tsv")]:
        src = builder.as_data_source(split=split)
        assert len(src) == len(ROWS[fname])
        got = {int(src[i]["index"]): src[i] for i in range(len(src))}
        for i, (source, target) in enumerate(ROWS[fname]):
            assert got[i]["label"] == target
            assert listops.detokenize(got[i]["inputs"]) == " ".join(t for t in source.split() if t not in "()")
    # tfds.data_source finds the registered builder by name.
    ds = tfds.data_source("lra_listops/release", data_dir=str(tmp_path / "tfds"))
    assert len(ds["train"]) == 3


def test_release_pipeline_batches(tmp_path):
    write_release(tmp_path / "manual")
    cfg = dict(name="lra_listops", tfds_config="release", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "manual"), seq_len=16)
    batches = list(registry.build(cfg_dict(cfg), split="validation", seed=0, global_batch_size=4))
    assert len(batches) == 1
    b = batches[0]
    assert b["inputs"].shape == (4, 16) and b["inputs"].dtype == np.int32
    assert b["weights"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert sorted(b["label"][:2].tolist()) == [3, 8]
    lengths = sorted(b["mask"][:2].sum(1).tolist())
    assert lengths == [1, 4]  # "8" and "[MIN 6 3 ]"
    assert np.all(b["inputs"][~b["mask"]] == 0)


def cfg_dict(d):
    import ml_collections

    return ml_collections.ConfigDict(d)


def test_generated_config_builds(tmp_path):
    cfg = dict(tfds_config="generated", data_dir=str(tmp_path / "tfds"), num_examples=(4, 2, 2))
    builder = lra.load_builder("lra_listops", cfg)
    src = builder.as_data_source(split="train")
    assert len(src) == 4
    for i in range(4):
        ex = src[i]
        value, _, _ = stack_eval(listops.detokenize(ex["inputs"]))
        assert value == ex["label"]
        assert 500 < len(ex["inputs"]) < 2000


def test_missing_release_files_error_names_them(tmp_path):
    (tmp_path / "manual" / "lra_release" / "lra_release" / "listops-1000").mkdir(parents=True)
    (tmp_path / "manual" / "lra_release" / "lra_release" / "listops-1000" / "basic_train.tsv").write_text("Source\tTarget\n")
    cfg = dict(tfds_config="release", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "manual"))
    with pytest.raises(FileNotFoundError) as err:
        lra.load_builder("lra_listops", cfg)
    msg = str(err.value)
    for f in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv", "listops-1000", str(tmp_path / "manual")):
        assert f in msg
    assert "lra_release.gz" in msg


def test_bad_config_name():
    with pytest.raises(ValueError, match="tfds_config must be one of"):
        lra.load_builder("lra_listops", dict(tfds_config="nope"))


def test_builders_default_to_array_record_the_plain_tfds_way(tmp_path):
    """Issue 19: tfds.builder(...).download_and_prepare() with no file_format wrote tfrecord,
    which needs TensorFlow (not a dependency). Every LRA builder now defaults to array_record."""
    for name, cls in lra.BUILDERS.items():
        assert issubclass(cls, lra._release.ArrayRecordBuilder), name
    config = lra._builder_config(listops.LraListops, "generated", (8, 4, 4))
    builder = tfds.builder("lra_listops", config=config, data_dir=str(tmp_path))
    assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    builder.download_and_prepare()
    files = sorted(p.name for p in tmp_path.rglob("*-train.*"))
    assert files and all(".array_record" in f for f in files), files
    source = tfds.data_source("lra_listops/" + config.name, data_dir=str(tmp_path), split="train")
    assert len(source) == 8 and 0 <= int(source[0]["label"]) < 10
    explicit = tfds.builder("lra_listops", config=config, data_dir=str(tmp_path / "other"), file_format="tfrecord")
    assert explicit.info.file_format == tfds.core.FileFormat.TFRECORD  # an explicit format still chooses
