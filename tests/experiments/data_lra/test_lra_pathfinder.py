"""Pathfinder: generated labels checked by flood fill on the image; release PNGs -> TFDS."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from scipy import ndimage

from experiments.data import lra
from experiments.data.lra import pathfinder, pathfinder_gen

tfds.disable_progress_bar()


def markers_connected(image: np.ndarray, markers, link_radius: int) -> bool:
    """Flood fill on the rendered image alone: ink dilated by a (2k+1)-square, 8-connectivity."""
    ink = image > 0
    if link_radius:
        ink = ndimage.binary_dilation(ink, structure=np.ones((2 * link_radius + 1,) * 2, bool))
    labels, _ = ndimage.label(ink, structure=np.ones((3, 3), bool))
    (ay, ax), (by, bx) = markers
    la, lb = labels[int(ay), int(ax)], labels[int(by), int(bx)]
    assert la > 0 and lb > 0, "a marker center is not on ink"
    return la == lb


@pytest.mark.parametrize("size,n", [(32, 12), (64, 6), (128, 4), (256, 2)])
def test_generated_labels_are_connectivity(size, n):
    p = pathfinder_gen.params_for(size, "hard")
    rng = np.random.default_rng(size)
    for i in range(n):
        label = i % 2
        s = pathfinder_gen.generate(p, rng, label=label)
        assert s.image.shape == (size, size) and s.image.dtype == np.uint8
        assert s.label == label
        assert markers_connected(s.image, s.markers, p.link_radius) == bool(label)
        # Markers are drawn (full-intensity disks) and distractors are present: the dilated ink
        # has more pieces than the two target paths.
        for y, x in s.markers:
            assert s.image[int(y), int(x)] == 255
        ink = ndimage.binary_dilation(s.image > 0, np.ones((2 * p.link_radius + 1,) * 2, bool))
        assert ndimage.label(ink, np.ones((3, 3), bool))[1] >= 3


def test_difficulty_levels_change_path_length():
    rng = np.random.default_rng(0)
    ink = {}
    for level in ("easy", "hard"):
        p = pathfinder_gen.params_for(64, level, num_distractors=0)
        s = pathfinder_gen.generate(p, rng, label=1)
        ink[level] = int((s.image > 0).sum())
    assert pathfinder_gen.DIFFICULTY == {"easy": 6, "intermediate": 9, "hard": 14}
    assert ink["hard"] > 1.5 * ink["easy"]


def test_generator_deterministic_per_rng():
    p = pathfinder_gen.params_for(32)
    a = pathfinder_gen.generate(p, np.random.default_rng(5))
    b = pathfinder_gen.generate(p, np.random.default_rng(5))
    c = pathfinder_gen.generate(p, np.random.default_rng(6))
    assert np.array_equal(a.image, b.image) and a.label == b.label
    assert not np.array_equal(a.image, c.image)


def write_release(root, size=32, n=20, empty=(7,)):
    folder = root / "lra_release" / "lra_release" / f"pathfinder{size}" / "curv_contour_length_14"
    (folder / "imgs" / "0").mkdir(parents=True)
    (folder / "imgs" / "1").mkdir(parents=True)
    (folder / "metadata").mkdir()
    rng = np.random.default_rng(0)
    truth = {}
    for batch in (0, 1):
        lines = []
        for i in range(n // 2):
            img = rng.integers(0, 256, (size, size), dtype=np.uint8)
            path = folder / "imgs" / str(batch) / f"sample_{i}.png"
            label = int(rng.integers(2))
            if batch == 0 and i in empty:
                path.write_bytes(b"")  # the release has such empty files
            else:
                Image.fromarray(img).save(path)
                truth[(batch, i)] = (img, label)
            # Published metadata columns: subpath filename index label continuity contour_length
            # distractor_length paddle_length paddle_thickness margin n_contrasts.
            lines.append(f"imgs/{batch} sample_{i}.png {i} {label} 1.0 14 4 2 0.5 1 1")
        (folder / "metadata" / f"{batch}.npy").write_text("\n".join(lines) + "\n")
    return truth


def test_release_files_build(tmp_path):
    truth = write_release(tmp_path / "manual")
    cfg = dict(tfds_config="release", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "manual"))
    builder = lra.load_builder("lra_pathfinder32", cfg)
    seen = []
    images = sorted(truth)  # (batch, i) order == the builder's sorted image list, minus the empty one
    for split, expected in [("train", 16), ("validation", 2), ("test", 2)]:
        src = builder.as_data_source(split=split)
        idx = pathfinder.split_order(20, split)
        assert len(src) == sum(1 for j in idx if j != 7)  # index 7 is the empty PNG
        assert expected - 1 <= len(src) <= expected
        for k in range(len(src)):
            ex = src[k]
            j = int(ex["index"])
            key = (j // 10, j % 10)
            img, label = truth[key]
            assert np.array_equal(ex["image"], img) and ex["label"] == label
            seen.append(key)
    assert sorted(seen) == images  # every non-empty image in exactly one split


def test_pathx_reads_pathfinder128(tmp_path):
    truth = write_release(tmp_path / "manual", size=128, n=10, empty=())
    cfg = dict(name="lra_pathx", tfds_config="release", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "manual"))
    builder = lra.load_builder("lra_pathx", cfg)
    total = sum(len(builder.as_data_source(split=s)) for s in ("train", "validation", "test"))
    assert total == len(truth) == 10
    from experiments.data import registry
    import ml_collections

    b = next(iter(registry.build(ml_collections.ConfigDict(cfg), split="test", seed=0, global_batch_size=2)))
    assert len(builder.as_data_source(split="test")) == 1  # 10% of 10; the batch is padded
    assert b["inputs"].shape == (2, 16384) and b["weights"].tolist() == [1.0, 0.0]
    assert b["mask"][0].all() and not b["mask"][1].any()  # every pixel is a real token
    ex = builder.as_data_source(split="test")[0]
    assert np.array_equal(b["inputs"][0], ex["image"].reshape(-1).astype(np.int32))


def test_generated_config_builds(tmp_path):
    cfg = dict(tfds_config="generated", data_dir=str(tmp_path / "tfds"), num_examples=(6, 2, 2))
    builder = lra.load_builder("lra_pathfinder32", cfg)
    src = builder.as_data_source(split="train")
    assert len(src) == 6
    p = pathfinder_gen.params_for(32)
    for k in range(len(src)):
        ex = src[k]
        # Rebuild example `index` from its seed: the stored image is exactly that sample.
        s = pathfinder_gen.generate(p, np.random.default_rng([0, 0, int(ex["index"])]))
        assert np.array_equal(ex["image"], s.image) and ex["label"] == s.label


def test_missing_release_files(tmp_path):
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "unrelated.txt").write_text("x")
    cfg = dict(tfds_config="release", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "manual"))
    with pytest.raises(FileNotFoundError, match="pathfinder64/curv_contour_length_14/metadata"):
        lra.load_builder("lra_pathfinder64", cfg)
