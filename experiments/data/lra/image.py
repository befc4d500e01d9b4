"""LRA Image (``lra_image``): CIFAR-10 as grayscale sequences of 1,024 pixels.

LRA (``image/input_pipeline.py``) takes TFDS ``cifar10``, converts with
``tf.image.rgb_to_grayscale`` and casts to int32: pixel tokens 0..255. The conversion is
``gray = Y * 255.5`` truncated, with ``Y = 0.2989 R + 0.5870 G + 0.1140 B`` on [0, 1] channels
(TF's ``convert_image_dtype`` float->uint8 scales by ``max + 0.5`` and truncates); we reproduce
it in NumPy. Splits as LRA: ``train`` the first 45,000 training images, ``validation`` the last
5,000, ``test`` the 10,000 test images. Sources:

* ``release``: the CIFAR-10 python files ``cifar-10-batches-py/{data_batch_1..5,test_batch}``
  (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extracted under ``manual_dir``);
* ``tfds``: the TFDS catalog dataset ``cifar10``.
"""

from __future__ import annotations

import pickle

import numpy as np
import tensorflow_datasets as tfds

from experiments.data.lra import _release

__all__ = ["CifarConfig", "LraImage", "rgb_to_grayscale"]

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
NUM_TRAIN = 45_000  # LRA: train[:90%] / train[90%:]
_GRAY = np.array([0.2989, 0.5870, 0.1140], np.float32)  # tf.image.rgb_to_grayscale's weights


def rgb_to_grayscale(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3) uint8`` -> ``(...) uint8`` by the formula of ``tf.image.rgb_to_grayscale`` (no TF needed)."""
    y = (rgb.astype(np.float32) / 255.0) @ _GRAY
    return np.clip(y * 255.5, 0, 255).astype(np.uint8)


def read_cifar_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR-10 python batch -> ``images (n, 32, 32, 3) uint8``, ``labels (n,) int64``."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    data = np.asarray(d[b"data"], np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: expected data of shape (n, 3072); got {data.shape}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # stored as R, G, B planes
    return images, np.asarray(d[b"labels"], np.int64)


CifarConfig = _release.SourceConfig  # "release": the python files; "tfds": TFDS cifar10


class LraImage(_release.ArrayRecordBuilder):
    """CIFAR-10 grayscale: ``image (32, 32) uint8``, ``label`` in 0..9."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extract it and pass the "
        "folder holding `cifar-10-batches-py` as manual_dir; or use the `tfds` config (TFDS cifar10)."
    )
    BUILDER_CONFIGS = _release.source_configs("cifar-10-batches-py under manual_dir", "cifar10")

    def _info(self):
        return _release.info(
            self,
            {
                "image": tfds.features.Tensor(shape=(32, 32), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10),
            },
            "CIFAR-10 in grayscale for the Long Range Arena image task.",
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        if c.source == "placeholder":
            out = {}
            for split, n in _release.PLACEHOLDER_SIZES.items():
                rng = _release.placeholder_rng(self.name, split)
                out[split] = self._generate_examples(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n))
            return out
        if c.source == "tfds":
            train = tfds.data_source("cifar10", split="train", data_dir=c.tfds_data_dir, download=True)
            test = tfds.data_source("cifar10", split="test", data_dir=c.tfds_data_dir, download=True)

            def arrays(src):
                ex = [src[i] for i in range(len(src))]
                return np.stack([e["image"] for e in ex]), np.array([e["label"] for e in ex])

            (tr_x, tr_y), (te_x, te_y) = arrays(train), arrays(test)
        elif c.source == "release":
            folder = _release.find_manual_folder(
                _release.manual_root(dl_manager), ["cifar-10-batches-py", "."], "cifar-10-batches-py",
                TRAIN_FILES + TEST_FILES, dataset="lra_image", what="the CIFAR-10 files",
                instructions=self.MANUAL_DOWNLOAD_INSTRUCTIONS,
            )
            parts = [read_cifar_batch(folder / f) for f in TRAIN_FILES]
            tr_x, tr_y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            te_x, te_y = read_cifar_batch(folder / TEST_FILES[0])
        else:
            raise ValueError(f"lra_image: source must be 'release', 'tfds' or 'placeholder'; got {c.source!r}")
        n_train = min(NUM_TRAIN, int(round(0.9 * len(tr_x))))
        return {
            "train": self._generate_examples(tr_x[:n_train], tr_y[:n_train]),
            "validation": self._generate_examples(tr_x[n_train:], tr_y[n_train:]),
            "test": self._generate_examples(te_x, te_y),
        }

    def _generate_examples(self, images, labels):
        gray = rgb_to_grayscale(images)
        for i in range(len(gray)):
            yield i, {"image": gray[i], "label": int(labels[i]), "index": i}
