"""LRA Pathfinder and Path-X TFDS builders: the release's PNGs, or our generator.

Release layout (``lra_release/lra_release/pathfinder{32,64,128,256}``): one folder per difficulty,
``curv_baseline`` (easy, 6 dashes), ``curv_contour_length_9`` (intermediate) and
``curv_contour_length_14`` (hard, the LRA task), each with ``imgs/<batch>/sample_<i>.png`` and
``metadata/<batch>.npy``. Despite the suffix the metadata files are text, one image per line:
``imgs/<batch> sample_<i>.png <i> <label> ...`` (label in the fourth column), as both the LRA
TFDS builder and the S4 loader read them. Images are grayscale PNGs; a few release files are
empty (e.g. ``pathfinder32/curv_baseline/imgs/0/sample_172.png``) and are skipped.

Splits: LRA cuts each difficulty 80/10/10 into train/validation/test; we do the same on a fixed
permutation (seed 0) of the images sorted by (batch, line), so the split does not depend on
file-system order.

``lra_pathx`` is Pathfinder at 128 x 128 (sequences of 16,384 pixels), hard level.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import logging
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from experiments.data.lra import _release
from experiments.data.lra import pathfinder_gen

__all__ = ["LraPathfinder32", "LraPathfinder64", "LraPathfinder128", "LraPathfinder256", "LraPathx", "PathfinderConfig"]

LEVEL_DIRS = {"easy": "curv_baseline", "intermediate": "curv_contour_length_9", "hard": "curv_contour_length_14"}
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass(eq=False)
class PathfinderConfig(tfds.core.BuilderConfig):
    """``generated=False``: the release's images of ``difficulty``; else our generator."""

    difficulty: str = "hard"
    generated: bool = False
    num_train: int = 160_000  # 80/10/10 of the release's 200,000 images per difficulty
    num_validation: int = 20_000
    num_test: int = 20_000
    seed: int = 0


def _configs():
    out = []
    for level in ("hard", "intermediate", "easy"):
        suffix = "" if level == "hard" else f"_{level}"
        out.append(PathfinderConfig(name=f"release{suffix}", difficulty=level, description=f"release images, {LEVEL_DIRS[level]}"))
        out.append(
            PathfinderConfig(name=f"generated{suffix}", difficulty=level, generated=True, description=f"our generator, {level}")
        )
    return out


def read_metadata(path: Path) -> list[tuple[str, str, int]]:
    """``(subdir, filename, label)`` per line of a release metadata file (text, or a real .npy)."""
    raw = path.read_bytes()
    if raw.startswith(b"\x93NUMPY"):  # tolerate metadata saved with np.save (string array)
        rows = np.load(io.BytesIO(raw), allow_pickle=False).tolist()
    else:
        rows = [line.split() for line in raw.decode("utf-8").splitlines() if line.strip()]
    out = []
    for i, row in enumerate(rows):
        if len(row) < 4:
            raise ValueError(f"{path}:{i + 1}: expected '<subdir> <file> <index> <label> ...'; got {row!r}")
        out.append((str(row[0]), str(row[1]), int(float(row[3]))))
    return out


def split_order(n: int, split: str) -> np.ndarray:
    """Indices (into the sorted image list) of ``split`` under the fixed 80/10/10 permutation."""
    perm = np.random.default_rng(0).permutation(n)
    n_train = int(round(SPLIT_FRACTIONS["train"] * n))
    n_val = int(round(SPLIT_FRACTIONS["validation"] * n))
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
    lo, hi = bounds[split]
    return np.sort(perm[lo:hi])


def _generate_one(args):
    params, seed, split, index = args
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    sample = pathfinder_gen.generate(params, rng)
    return index, sample.image, sample.label


class _PathfinderBase(_release.ArrayRecordBuilder, skip_registration=True):
    """Pathfinder at ``SIZE`` pixels: ``image (SIZE, SIZE) uint8``, ``label`` (1 = connected)."""

    SIZE = 32
    RELEASE_SUBDIR = "pathfinder32"
    BUILDER_CONFIGS = _configs()
    # Processes used by the generated configs (0: all cores); set on the instance before
    # download_and_prepare. Examples depend on (seed, split, index) only, not on this.
    num_workers = 0

    def __init_subclass__(cls, **kwargs):
        # A builder is its SIZE: the release folder follows from it, and every builder gets its
        # own config objects (all six configs unless it lists its own).
        cls.RELEASE_SUBDIR = f"pathfinder{cls.SIZE}"
        if "BUILDER_CONFIGS" not in vars(cls):
            cls.BUILDER_CONFIGS = _configs()
        super().__init_subclass__(**kwargs)

    def _info(self):
        return _release.info(
            self,
            {
                # zlib: the images are mostly black, ~10x smaller on disk.
                "image": tfds.features.Tensor(shape=(self.SIZE, self.SIZE), dtype=np.uint8, encoding="zlib"),
                "label": tfds.features.ClassLabel(num_classes=2),
            },
            f"Pathfinder at {self.SIZE}x{self.SIZE} from the Long Range Arena: are the two marked "
            "endpoints connected by a path of dashes?",
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        if c.difficulty not in LEVEL_DIRS:
            raise ValueError(f"{self.name}: difficulty must be one of {sorted(LEVEL_DIRS)}; got {c.difficulty!r}")
        if c.generated:
            params = pathfinder_gen.params_for(self.SIZE, c.difficulty)
            sizes = {"train": c.num_train, "validation": c.num_validation, "test": c.num_test}
            return {s: self._generate_synthetic(params, c.seed, s, n) for s, n in sizes.items()}
        level = LEVEL_DIRS[c.difficulty]
        folder = _release.find_release_dir(
            _release.manual_root(dl_manager), f"{self.RELEASE_SUBDIR}/{level}", ["metadata"], dataset=self.name
        )
        meta_files = sorted((folder / "metadata").glob("*.npy"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
        if not meta_files:
            raise FileNotFoundError(
                f"{self.name}: no metadata files {folder}/metadata/<batch>.npy\n{_release.MANUAL_INSTRUCTIONS}"
            )
        images = [(folder / sub / name, label) for m in meta_files for sub, name, label in read_metadata(m)]
        return {s: self._read_release(images, split_order(len(images), s)) for s in SPLIT_FRACTIONS}

    def _generate_examples(self, examples):  # the split generators above already yield (key, example)
        yield from examples

    def _read_release(self, images, order):
        skipped = 0
        for i in order:
            path, label = images[i]
            if not path.exists() or path.stat().st_size == 0:
                skipped += 1
                continue
            with Image.open(path) as im:
                image = np.asarray(im.convert("L"), np.uint8)
            if image.shape != (self.SIZE, self.SIZE):
                raise ValueError(f"{path}: expected a {self.SIZE}x{self.SIZE} image; got {image.shape}")
            yield int(i), {"image": image, "label": label, "index": int(i)}
        if skipped:
            logging.warning("%s: skipped %d missing or empty release images", self.name, skipped)

    def _generate_synthetic(self, params, seed, split, n):
        jobs = ((params, seed, split, i) for i in range(n))
        workers = self.num_workers or os.cpu_count() or 1
        if workers == 1 or n < 64:
            results = map(_generate_one, jobs)
            for i, image, label in results:
                yield i, {"image": image, "label": label, "index": i}
            return
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            for i, image, label in pool.map(_generate_one, jobs, chunksize=32):
                yield i, {"image": image, "label": label, "index": i}


class LraPathfinder32(_PathfinderBase):
    SIZE = 32


class LraPathfinder64(_PathfinderBase):
    SIZE = 64


class LraPathfinder128(_PathfinderBase):
    SIZE = 128


class LraPathfinder256(_PathfinderBase):
    SIZE = 256


class LraPathx(_PathfinderBase):
    """Path-X: Pathfinder at 128 x 128, hard level (LRA's 16,384-step task)."""

    SIZE = 128
    BUILDER_CONFIGS = [c for c in _configs() if c.difficulty == "hard"]  # the one LRA task
