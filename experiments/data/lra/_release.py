"""Finding the public LRA release files under TFDS's ``manual_dir``, and the shared builder bits.

``lra_release.gz`` (https://github.com/google-research/long-range-arena, 7.7 GB) extracts to
``lra_release/lra_release/{listops-1000, tsv_data, pathfinder32, pathfinder64, pathfinder128,
pathfinder256}``. ``manual_dir`` may point at the folder holding the archive's top
``lra_release``, at either ``lra_release`` level, or straight at a task folder's parent; the
builders look in all of these and, when the files are missing, raise an error that lists every
file expected and every folder searched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

RELEASE_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
# The archive nests lra_release twice; users also point manual_dir at the inner folder.
_ROOTS = ("lra_release/lra_release", "lra_release", ".")

MANUAL_INSTRUCTIONS = f"""\
Download the Long Range Arena release ({RELEASE_URL}, 7.7 GB), extract it with
`tar -xzf lra_release.gz`, and pass the folder that holds the extracted `lra_release` as the
TFDS manual_dir (data.manual_dir in the experiment configs). The generated configs
(`.../generated`) need no files.
"""


def manual_root(dl_manager) -> Path | None:
    """The manual_dir TFDS was given, or None when it does not exist (or is empty)."""
    try:
        return Path(dl_manager.manual_dir)
    except AssertionError:
        # tfds 4.9.10 raises AssertionError for a missing/empty manual_dir; we want our own
        # message listing the files, so fall back to the configured path (private attribute).
        path = getattr(dl_manager, "_manual_dir", None)
        return Path(path) if path else None


def find_release_dir(root: Path | None, subdir: str, files: Sequence[str], *, dataset: str) -> Path:
    """The folder ``<root>/<one of _ROOTS>/<subdir>`` that holds all of ``files``."""
    return find_manual_folder(root, [f"{r}/{subdir}" for r in _ROOTS], subdir, files, dataset=dataset,
                              what="the LRA release files", instructions=MANUAL_INSTRUCTIONS)


def find_manual_folder(root: Path | None, folders: Sequence[str], shown: str, files: Sequence[str], *, dataset: str,
                       what: str, instructions: str, is_there: Callable[[Path], bool] = Path.exists) -> Path:
    """The first ``<root>/<folder>`` of ``folders`` in which every one of ``files`` ``is_there``.

    Otherwise a FileNotFoundError says ``what`` is missing, lists the files expected (as
    ``<shown>/<file>``) and every folder searched, and gives the ``instructions``.
    """
    candidates = [] if root is None else [(root / f).resolve() for f in folders]
    for folder in candidates:
        if all(is_there(folder / f) for f in files):
            return folder
    looked = "\n".join(f"  {c}" for c in candidates) or "  (no manual_dir was given)"
    expected = "\n".join(f"  {shown}/{f}" for f in files)
    raise FileNotFoundError(
        f"{dataset}: {what} are missing. Expected\n{expected}\n"
        f"under manual_dir={root} in one of:\n{looked}\n{instructions}"
    )


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The LRA builders' base: files default to array_record. TFDS's own default, tfrecord, needs
    TensorFlow to write (``tfds.builder("lra_listops").download_and_prepare()`` failed without
    it) and cannot be read by random access, which grain needs; ``file_format=`` still chooses.
    Every builder is at version 1.0.0 and, unless it says otherwise, reads the LRA release."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS

    def __init__(self, *, file_format=None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)


def info(builder, features: dict, description: str) -> tfds.core.DatasetInfo:
    """The builder's ``DatasetInfo``: ``features`` and, as in every LRA record, its ``index`` in
    its split; the LRA homepage and citation."""
    return tfds.core.DatasetInfo(
        builder=builder,
        description=description,
        features=tfds.features.FeaturesDict({**features, "index": tfds.features.Scalar(dtype=np.int64)}),
        homepage="https://github.com/google-research/long-range-arena",
        citation=LRA_CITATION,
    )


@dataclasses.dataclass(eq=False)
class SourceConfig(tfds.core.BuilderConfig):
    """The config of a task read from its original files or from TFDS: ``source`` is "release"
    (the files under manual_dir), "tfds" (the TFDS catalog dataset, kept in ``tfds_data_dir``;
    None: TFDS's default) or "placeholder"."""

    source: str = "release"
    tfds_data_dir: str | None = None


def source_configs(files: str, tfds_dataset: str) -> list[SourceConfig]:
    """A :class:`SourceConfig` builder's three configs: ``files`` describes the release files,
    ``tfds_dataset`` names the TFDS dataset."""
    return [
        SourceConfig(name="release", description=files),
        SourceConfig(name="tfds", source="tfds", description=f"TFDS {tfds_dataset}"),
        SourceConfig(name="placeholder", source="placeholder", description=PLACEHOLDER_DESCRIPTION),
    ]


LRA_CITATION = """@inproceedings{tay2021long,
  title={Long Range Arena: A Benchmark for Efficient Transformers},
  author={Tay, Yi and Dehghani, Mostafa and Abnar, Samira and Shen, Yikang and Bahri, Dara and
          Pham, Philip and Rao, Jinfeng and Yang, Liu and Ruder, Sebastian and Metzler, Donald},
  booktitle={ICLR}, year={2021}}"""


# Sizes of the `placeholder` configs: random data in a task's format, for smoke runs and CI
# where the real files are absent. Not a benchmark: labels are independent of the inputs.
PLACEHOLDER_SIZES = {"train": 64, "validation": 16, "test": 16}
PLACEHOLDER_DESCRIPTION = "random examples in the task's format (smoke runs; labels are noise)"


def placeholder_rng(dataset: str, split: str) -> np.random.Generator:
    return np.random.default_rng([sum(map(ord, dataset)), sum(map(ord, split))])


def random_text(rng: np.random.Generator, max_len: int) -> np.ndarray:
    """Printable ASCII bytes of a random length in [1, max_len]."""
    return rng.integers(32, 127, int(rng.integers(1, max_len + 1))).astype(np.uint8)
