"""LRA Retrieval (``lra_retrieval``): do two ACL Anthology papers cite one another?

Release files (``lra_release/lra_release/tsv_data``): ``new_aan_pairs.{train,eval,test}.tsv``,
no header, five tab-separated columns ``label id1 id2 text1 text2`` with ``label`` written as a
float (``1.0``/``0.0``) and no quoting (LRA reads them with ``use_quote_delim=False``).
Texts are kept as raw bytes (LRA: byte-level, 4,000 per document; truncation happens in the
pipeline). Splits: train / validation (``eval``) / test.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from experiments.data.lra import _release

__all__ = ["LraRetrieval", "read_release_tsv"]

SPLITS = {"train": "new_aan_pairs.train.tsv", "validation": "new_aan_pairs.eval.tsv", "test": "new_aan_pairs.test.tsv"}
RELEASE_SUBDIR = "tsv_data"


def read_release_tsv(path):
    """``(label, id1, id2, text1 bytes, text2 bytes)`` per line."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            fields = line.split(b"\t")
            if len(fields) != 5:
                raise ValueError(f"{path}:{lineno}: expected 5 tab-separated fields (label id1 id2 text1 text2); got {len(fields)}")
            label = int(float(fields[0]))
            if label not in (0, 1):
                raise ValueError(f"{path}:{lineno}: label must be 0 or 1; got {fields[0]!r}")
            yield label, fields[1].decode(), fields[2].decode(), fields[3], fields[4]


class LraRetrieval(_release.ArrayRecordBuilder):
    """AAN pairs: ``inputs1``, ``inputs2 (n,) uint8`` document bytes, ``label`` (1 = linked)."""

    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="release", description="lra_release/tsv_data/new_aan_pairs.*.tsv"),
        tfds.core.BuilderConfig(name="placeholder", description=_release.PLACEHOLDER_DESCRIPTION),
    ]

    def _info(self):
        return _release.info(
            self,
            {
                "inputs1": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
                "inputs2": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=2),
                "id1": tfds.features.Text(),
                "id2": tfds.features.Text(),
            },
            "ACL Anthology Network document pairs from the Long Range Arena retrieval task.",
        )

    def _split_generators(self, dl_manager):
        if self.builder_config.name == "placeholder":
            return {split: self._placeholder(split) for split in SPLITS}
        folder = _release.find_release_dir(
            _release.manual_root(dl_manager), RELEASE_SUBDIR, list(SPLITS.values()), dataset="lra_retrieval"
        )
        return {split: self._generate_examples(folder / f) for split, f in SPLITS.items()}

    def _placeholder(self, split):
        rng = _release.placeholder_rng(self.name, split)
        for i in range(_release.PLACEHOLDER_SIZES[split]):
            t1, t2 = _release.random_text(rng, 5000), _release.random_text(rng, 5000)
            yield i, {"inputs1": t1, "inputs2": t2, "label": int(rng.integers(2)), "id1": f"A{i}", "id2": f"B{i}", "index": i}

    def _generate_examples(self, path):
        for i, (label, id1, id2, text1, text2) in enumerate(read_release_tsv(path)):
            yield i, {
                "inputs1": np.frombuffer(text1, np.uint8),
                "inputs2": np.frombuffer(text2, np.uint8),
                "label": label,
                "id1": id1,
                "id2": id2,
                "index": i,
            }
