"""LRA Text (IMDB), Retrieval (AAN) and Image (CIFAR-10): small files in the release formats."""

from __future__ import annotations

import pickle

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.data import lra, registry

tfds.disable_progress_bar()

# --- IMDB (aclImdb layout) ------------------------------------------------------------------

REVIEWS = {
    ("train", "pos"): ["Great film, loved it.", "Caf\u00e9 scenes were wonderful!"],
    ("train", "neg"): ["Dull.", "Two hours I will never get back.", "Meh"],
    ("test", "pos"): ["A delight"],
    ("test", "neg"): ["Awful acting", "No."],
}


def write_imdb(root):
    for (split, lab), texts in REVIEWS.items():
        d = root / "aclImdb" / split / lab
        d.mkdir(parents=True)
        for i, t in enumerate(texts):
            (d / f"{i}_{7 if lab == 'pos' else 2}.txt").write_bytes(t.encode("utf-8"))


def test_imdb_files_build_and_batch(tmp_path):
    write_imdb(tmp_path / "manual")
    cfg = dict(name="lra_text", tfds_config="release", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "manual"), seq_len=12)
    builder = lra.load_builder("lra_text", cfg)
    for split in ("train", "test"):
        src = builder.as_data_source(split=split)
        got = sorted((bytes(src[i]["inputs"]).decode("utf-8"), int(src[i]["label"])) for i in range(len(src)))
        want = sorted((t, int(lab == "pos")) for (s, lab), ts in REVIEWS.items() if s == split for t in ts)
        assert got == want
    # "validation" reads IMDB's test split (as LRA does); byte ids are byte + 1, truncated.
    batches = list(registry.build(ml_collections.ConfigDict(cfg), split="validation", seed=0, global_batch_size=2))
    assert len(batches) == 2
    rows = [(b["inputs"][i], b["mask"][i], b["label"][i]) for b in batches for i in range(2) if b["weights"][i] > 0]
    assert len(rows) == 3
    decoded = sorted((bytes((ids[m] - 1).astype(np.uint8)).decode(), int(y)) for ids, m, y in rows)
    assert decoded == sorted([("A delight", 1), ("Awful acting", 0), ("No.", 0)])  # all <= 12 bytes


def test_imdb_truncates_to_seq_len(tmp_path):
    write_imdb(tmp_path / "manual")
    cfg = dict(name="lra_text", tfds_config="release", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "manual"), seq_len=5)
    seen = set()
    for b in registry.build(ml_collections.ConfigDict(cfg), split="test", seed=0, global_batch_size=3):
        for i in range(3):
            if b["weights"][i]:
                seen.add(bytes((b["inputs"][i][b["mask"][i]] - 1).astype(np.uint8)))
    assert seen == {b"A del", b"Awful", b"No."}


def test_imdb_missing(tmp_path):
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "x").write_text("x")
    with pytest.raises(FileNotFoundError, match="aclImdb/train/pos"):
        lra.load_builder("lra_text", dict(tfds_config="release", data_dir=str(tmp_path / "t"), manual_dir=str(tmp_path / "manual")))


# --- AAN (tsv_data) -----------------------------------------------------------------------------

AAN = {
    "new_aan_pairs.train.tsv": [(1, "P01", "P02", b"alpha beta", b"gamma \"quoted\" delta"), (0, "P03", "P04", b"x", b"y z")],
    "new_aan_pairs.eval.tsv": [(0, "P05", "P06", b"eval one", b"eval two")],
    "new_aan_pairs.test.tsv": [(1, "P07", "P08", b"t" * 30, b"u" * 3), (1, "P09", "P10", b"v", b"w")],
}


def write_aan(root):
    d = root / "lra_release" / "tsv_data"  # the single-level layout is accepted too
    d.mkdir(parents=True)
    for name, rows in AAN.items():
        lines = [b"\t".join([f"{float(y)}".encode(), a.encode(), b.encode(), t1, t2]) for y, a, b, t1, t2 in rows]
        (d / name).write_bytes(b"\n".join(lines) + b"\n")


def test_aan_files_build_and_batch(tmp_path):
    write_aan(tmp_path / "manual")
    cfg = dict(name="lra_retrieval", tfds_config="release", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "manual"), seq_len=8)
    builder = lra.load_builder("lra_retrieval", cfg)
    for split, name in [("train", "new_aan_pairs.train.tsv"), ("validation", "new_aan_pairs.eval.tsv"), ("test", "new_aan_pairs.test.tsv")]:
        src = builder.as_data_source(split=split)
        got = sorted((int(src[i]["label"]), bytes(src[i]["inputs1"]), bytes(src[i]["inputs2"])) for i in range(len(src)))
        assert got == sorted((y, t1, t2) for y, _, _, t1, t2 in AAN[name])
    (b,) = list(registry.build(ml_collections.ConfigDict(cfg), split="test", seed=0, global_batch_size=2))
    assert set(b) == {"inputs1", "inputs2", "mask1", "mask2", "label", "weights"}
    i = int(np.argmax(b["mask1"].sum(1)))  # the 30-byte document, truncated to 8
    assert b["mask1"][i].sum() == 8 and np.all(b["inputs1"][i] == ord("t") + 1)
    assert b["mask2"][i].sum() == 3 and np.all(b["inputs2"][i][:3] == ord("u") + 1) and np.all(b["inputs2"][i][3:] == 0)
    assert b["label"].tolist() == [1, 1]


def test_aan_bad_line(tmp_path):
    write_aan(tmp_path / "manual")
    (tmp_path / "manual" / "lra_release" / "tsv_data" / "new_aan_pairs.eval.tsv").write_bytes(b"1.0\tP1\tP2\tonly four\n")
    with pytest.raises(ValueError, match="expected 5 tab-separated fields"):
        lra.load_builder("lra_retrieval", dict(tfds_config="release", data_dir=str(tmp_path / "t"), manual_dir=str(tmp_path / "manual")))


# --- CIFAR-10 (python batches) -----------------------------------------------------------------


def gray_reference(r: int, g: int, b: int) -> int:
    # tf.image.rgb_to_grayscale on uint8: channels to [0, 1], weights (0.2989, 0.5870, 0.1140),
    # back to uint8 by x * 255.5 truncated (convert_image_dtype).
    y = 0.2989 * (r / 255.0) + 0.5870 * (g / 255.0) + 0.1140 * (b / 255.0)
    return min(255, int(y * 255.5))


def write_cifar(root, per_batch=4):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    files = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(d / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
        files[name] = (data, labels)
    return files


def test_cifar_files_build(tmp_path):
    files = write_cifar(tmp_path / "manual")
    cfg = dict(name="lra_image", tfds_config="release", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "manual"))
    builder = lra.load_builder("lra_image", cfg)
    train = [(files[f"data_batch_{i}"][0][j], files[f"data_batch_{i}"][1][j]) for i in range(1, 6) for j in range(4)]
    expect = {"train": train[:18], "validation": train[18:], "test": list(zip(*files["test_batch"]))}  # 90% / 10%
    for split, rows in expect.items():
        src = builder.as_data_source(split=split)
        assert len(src) == len(rows)
        by_index = {int(src[i]["index"]): src[i] for i in range(len(src))}
        for k, (flat, label) in enumerate(rows):
            ex = by_index[k]
            assert ex["label"] == label
            r, g, b = flat[:1024], flat[1024:2048], flat[2048:]  # CIFAR stores R, G, B planes
            want = np.array([gray_reference(int(r[p]), int(g[p]), int(b[p])) for p in range(1024)]).reshape(32, 32)
            assert np.array_equal(ex["image"], want)
    (b,) = list(registry.build(ml_collections.ConfigDict(cfg), split="validation", seed=0, global_batch_size=2))
    assert b["inputs"].shape == (2, 1024) and b["mask"].all() and b["weights"].tolist() == [1.0, 1.0]


def test_cifar_missing(tmp_path):
    (tmp_path / "manual" / "cifar-10-batches-py").mkdir(parents=True)
    (tmp_path / "manual" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="test_batch"):
        lra.load_builder("lra_image", dict(tfds_config="release", data_dir=str(tmp_path / "t"), manual_dir=str(tmp_path / "manual")))


def test_imdb_from_tfds_catalog(tmp_path, monkeypatch):
    # The `tfds` config converts TFDS imdb_reviews records; stand in for the catalog dataset
    # (which would download) with records of its structure.
    records = {"train": [{"text": b"good", "label": 1}, {"text": b"bad", "label": 0}], "test": [{"text": b"fine", "label": 1}]}
    calls = []

    def fake_data_source(name, *, split, data_dir=None, download=True):
        calls.append((name, split))
        return records[split]

    monkeypatch.setattr(tfds, "data_source", fake_data_source)
    builder = lra.load_builder("lra_text", dict(tfds_config="tfds", data_dir=str(tmp_path / "tfds")))
    src = builder.as_data_source(split="train")
    assert sorted((bytes(src[i]["inputs"]), int(src[i]["label"])) for i in range(2)) == [(b"bad", 0), (b"good", 1)]
    assert ("imdb_reviews/plain_text", "train") in calls
