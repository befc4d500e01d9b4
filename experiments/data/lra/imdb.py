"""LRA Text (``lra_text``): IMDB reviews as byte sequences, from the Stanford files or TFDS.

LRA (Tay et al. 2021, Sec. 3.3) classifies IMDB movie reviews (positive/negative) from their
bytes, truncated to 4,096 (``text_classification/input_pipeline.py``: TFDS ``imdb_reviews``,
``ByteTextEncoder``). The LRA release does not ship IMDB; this builder reads either

* ``release``: the Stanford release ``aclImdb_v1.tar.gz`` extracted under ``manual_dir``
  (``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt``), or
* ``tfds``: the TFDS catalog dataset ``imdb_reviews/plain_text`` (prepared, or downloaded by
  TFDS on first use).

Examples store the whole review (``inputs (n,) uint8``, the UTF-8 bytes); truncation to the
configured length happens in the pipeline. Splits: ``train`` and ``test`` (25,000 each); like
LRA, the pipeline evaluates "validation" on ``test``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from experiments.data.lra import _release

__all__ = ["ImdbConfig", "LraText"]

LABELS = {"neg": 0, "pos": 1}  # as TFDS imdb_reviews


ImdbConfig = _release.SourceConfig  # "release": the aclImdb files; "tfds": TFDS imdb_reviews


class LraText(_release.ArrayRecordBuilder):
    """IMDB for LRA: ``inputs (n,) uint8`` review bytes, ``label`` (1 = positive)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz, extract it "
        "(`tar -xzf aclImdb_v1.tar.gz`) and pass the folder holding `aclImdb` as manual_dir; or use "
        "the `tfds` config, which reads TFDS's imdb_reviews."
    )
    BUILDER_CONFIGS = _release.source_configs("aclImdb/{train,test}/{pos,neg}/*.txt under manual_dir",
                                              "imdb_reviews/plain_text")

    def _info(self):
        return _release.info(
            self,
            {
                "inputs": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=["neg", "pos"]),
            },
            "IMDB reviews as bytes, for the Long Range Arena text task.",
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        if c.source == "tfds":
            sources = {
                s: tfds.data_source("imdb_reviews/plain_text", split=s, data_dir=c.tfds_data_dir, download=True)
                for s in ("train", "test")
            }
            return {s: self._from_tfds(src) for s, src in sources.items()}
        if c.source == "placeholder":
            return {s: self._placeholder(s) for s in ("train", "test")}
        if c.source != "release":
            raise ValueError(f"lra_text: source must be 'release', 'tfds' or 'placeholder'; got {c.source!r}")
        folder = _release.find_manual_folder(
            _release.manual_root(dl_manager), ["aclImdb", "."], "aclImdb",
            [f"{s}/{lab}" for s in ("train", "test") for lab in LABELS], dataset="lra_text",
            what="the IMDB folders of *.txt reviews", instructions=self.MANUAL_DOWNLOAD_INSTRUCTIONS, is_there=Path.is_dir,
        )
        return {s: self._from_files(folder / s) for s in ("train", "test")}

    def _generate_examples(self, examples):  # the split generators above already yield (key, example)
        yield from examples

    def _from_files(self, folder: Path):
        files = [(p, LABELS[lab]) for lab in sorted(LABELS) for p in sorted((folder / lab).glob("*.txt"))]
        for i, (path, label) in enumerate(files):
            yield i, {"inputs": np.frombuffer(path.read_bytes(), np.uint8), "label": label, "index": i}

    def _placeholder(self, split):
        rng = _release.placeholder_rng(self.name, split)
        for i in range(_release.PLACEHOLDER_SIZES[split]):
            yield i, {"inputs": _release.random_text(rng, 6000), "label": int(rng.integers(2)), "index": i}

    def _from_tfds(self, source):
        for i in range(len(source)):
            ex = source[i]
            text = ex["text"]
            text = text.encode("utf-8") if isinstance(text, str) else bytes(text)
            yield i, {"inputs": np.frombuffer(text, np.uint8), "label": int(ex["label"]), "index": i}
