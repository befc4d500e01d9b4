"""Long Range Arena: TFDS builders (array_record, no TensorFlow) and grain pipelines.

Importing this package registers the TFDS builders ``lra_listops``, ``lra_text``,
``lra_retrieval``, ``lra_image``, ``lra_pathfinder{32,64,128,256}`` and ``lra_pathx`` (so
``tfds.data_source("lra_listops/generated", data_dir=...)`` works once prepared) and the datasets
of the same names in :mod:`experiments.data.registry`. The builders write array_record unless
given another ``file_format`` (TFDS's default, tfrecord, would need TensorFlow), so
``tfds.builder("lra_listops/generated").download_and_prepare()`` works as is.

``data.*`` keys read by every LRA dataset::

    tfds_config   str    builder config: "release" (the public files under manual_dir),
                         "generated" (ListOps / Pathfinder from our generators), "tfds" (text,
                         image: TFDS imdb_reviews / cifar10), "release_easy", ... (Pathfinder),
                         "placeholder" (text, retrieval, image: random examples in the task's
                         format, for smoke runs without the files -- not a benchmark)
    data_dir      str    TFDS data dir ("" = TFDS's default, $TFDS_DATA_DIR or ~/tensorflow_datasets)
    manual_dir    str    folder holding the extracted release ("" = <data_dir>/downloads/manual)
    seq_len       int    inputs are truncated / padded to this length
    num_examples  tuple  (train, validation, test) sizes for a generated config (() = published)
    num_threads   int    grain reader threads

The dataset is prepared (``download_and_prepare``) on first use and read with
``builder.as_data_source`` from then on; with several processes, prepare it once beforehand
(``python -m experiments.data.lra --dataset=... --tfds_config=...``).

Token ids: ListOps uses :data:`listops.VOCAB` (16 ids, 0 = pad); Text and Retrieval use
``byte + 1`` (257 ids, 0 = pad); Image and Pathfinder use the pixel value (256 ids; every
position is real, ``mask`` all True).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from experiments.data import registry
from experiments.data.lra import _release, image, imdb, listops, pathfinder, retrieval
from experiments.data.pipeline import cfg_get, pad_or_truncate, source_builder

__all__ = ["BUILDERS", "TASK_INFO", "load_builder", "prepare"]

BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "lra_listops": listops.LraListops,
    "lra_text": imdb.LraText,
    "lra_retrieval": retrieval.LraRetrieval,
    "lra_image": image.LraImage,
    "lra_pathfinder32": pathfinder.LraPathfinder32,
    "lra_pathfinder64": pathfinder.LraPathfinder64,
    "lra_pathfinder128": pathfinder.LraPathfinder128,
    "lra_pathfinder256": pathfinder.LraPathfinder256,
    "lra_pathx": pathfinder.LraPathx,
}

# What a model config needs from each task: vocabulary, classes, the LRA sequence length.
TASK_INFO: dict[str, dict[str, int]] = {
    "lra_listops": dict(vocab_size=listops.VOCAB_SIZE, num_classes=10, seq_len=2048),
    "lra_text": dict(vocab_size=257, num_classes=2, seq_len=4096),
    "lra_retrieval": dict(vocab_size=257, num_classes=2, seq_len=4000),
    "lra_image": dict(vocab_size=256, num_classes=10, seq_len=1024),
    "lra_pathfinder32": dict(vocab_size=256, num_classes=2, seq_len=32 * 32),
    "lra_pathfinder64": dict(vocab_size=256, num_classes=2, seq_len=64 * 64),
    "lra_pathfinder128": dict(vocab_size=256, num_classes=2, seq_len=128 * 128),
    "lra_pathfinder256": dict(vocab_size=256, num_classes=2, seq_len=256 * 256),
    "lra_pathx": dict(vocab_size=256, num_classes=2, seq_len=128 * 128),
}


def _builder_config(cls, name: str, num_examples) -> Any:
    configs = {c.name: c for c in cls.BUILDER_CONFIGS}
    if name not in configs:
        raise ValueError(f"{cls.name}: data.tfds_config must be one of {sorted(configs)}; got {name!r}")
    config = configs[name]
    if num_examples:
        if not getattr(config, "generated", False):
            raise ValueError(f"{cls.name}: data.num_examples only applies to generated configs; tfds_config={name!r}")
        n_train, n_val, n_test = (int(n) for n in num_examples)
        seed = config.seed
        # A distinct name per size, so TFDS caches each size separately.
        config = dataclasses.replace(
            config,
            name=f"{name}_n{n_train}_{n_val}_{n_test}",
            num_train=n_train,
            num_validation=n_val,
            num_test=n_test,
            seed=seed,
        )
    return config


def load_builder(name: str, data_config, *, prepare_if_missing: bool = True) -> tfds.core.DatasetBuilder:
    """The TFDS builder of LRA dataset ``name`` for ``data_config``, prepared on first use."""
    if name not in BUILDERS:
        raise ValueError(f"unknown LRA dataset {name!r}; expected one of {sorted(BUILDERS)}")
    cls = BUILDERS[name]
    config = _builder_config(cls, cfg_get(data_config, "tfds_config", "release"), cfg_get(data_config, "num_examples", ()))
    data_dir = cfg_get(data_config, "data_dir", "") or None
    for key in ("data_dir", "manual_dir"):
        if "{workdir}" in str(cfg_get(data_config, key, "")):
            # Only the trainer knows the run's directory; a literal "{workdir}" folder is never meant.
            raise ValueError(f"{name}: data.{key}={cfg_get(data_config, key, '')!r} holds '{{workdir}}', which "
                             "experiments.train replaces with the run's workdir; outside the trainer set a path")
    builder = cls(config=config, data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        if not prepare_if_missing:
            raise FileNotFoundError(f"{name}/{config.name} is not prepared in {builder.data_dir}")
        manual_dir = cfg_get(data_config, "manual_dir", "") or None
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def prepare(name: str, data_config) -> tfds.core.DatasetBuilder:
    return load_builder(name, data_config, prepare_if_missing=True)


# ----------------------------------------------------------------------------------------------
# Examples in the registry's batch format
# ----------------------------------------------------------------------------------------------


def _classification(ids_fn, seq_len: int):
    def transform(record):
        inputs, mask = pad_or_truncate(ids_fn(record), seq_len)
        return {"inputs": inputs, "mask": mask, "label": np.int32(record["label"]), "weights": np.float32(1.0)}

    pad = {
        "inputs": np.zeros(seq_len, np.int32),
        "mask": np.zeros(seq_len, bool),
        "label": np.int32(0),
        "weights": np.float32(0.0),
    }
    return transform, pad


def _bytes_to_ids(data: np.ndarray) -> np.ndarray:
    return np.asarray(data, np.int32) + 1  # 0 stays the pad id


def _pixels(record) -> np.ndarray:
    return np.asarray(record["image"], np.int32).reshape(-1)  # row-major raster scan


_IDS = {
    "lra_listops": lambda r: r["inputs"],
    "lra_text": lambda r: _bytes_to_ids(r["inputs"]),
    "lra_image": _pixels,
}

# TFDS split read for each pipeline split. IMDB has no validation split; LRA (and S4's default)
# evaluate on test.
_SPLIT_MAP = {"lra_text": {"train": "train", "validation": "test", "test": "test"}}


def _make(name: str):
    task = "retrieval" if name == "lra_retrieval" else "classification"

    @registry.register(name, task=task)
    @source_builder
    def build(data_config, split):
        seq_len = int(cfg_get(data_config, "seq_len", TASK_INFO[name]["seq_len"]))
        builder = load_builder(name, data_config)
        tfds_split = _SPLIT_MAP.get(name, {}).get(split, split)
        source = builder.as_data_source(split=tfds_split)
        if name == "lra_retrieval":
            transform, pad = _retrieval(seq_len)
        else:
            transform, pad = _classification(_IDS.get(name, _pixels), seq_len)
        return source, transform, pad, int(cfg_get(data_config, "num_threads", 4))

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"Batches of {name} (task {task!r}); see experiments.data.lra."
    return build


def _retrieval(seq_len: int):
    def transform(record):
        in1, m1 = pad_or_truncate(_bytes_to_ids(record["inputs1"]), seq_len)
        in2, m2 = pad_or_truncate(_bytes_to_ids(record["inputs2"]), seq_len)
        return {
            "inputs1": in1,
            "inputs2": in2,
            "mask1": m1,
            "mask2": m2,
            "label": np.int32(record["label"]),
            "weights": np.float32(1.0),
        }

    z = np.zeros(seq_len, np.int32)
    pad = {"inputs1": z, "inputs2": z, "mask1": z.astype(bool), "mask2": z.astype(bool), "label": np.int32(0), "weights": np.float32(0.0)}
    return transform, pad


for _name in BUILDERS:
    _make(_name)

MANUAL_INSTRUCTIONS = _release.MANUAL_INSTRUCTIONS
