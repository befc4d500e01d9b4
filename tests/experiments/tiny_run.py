"""``python -m experiments.run`` with TinyLM installed: the subprocess entry of the runner tests.

``TINY_SIGTERM_AT_EXAMPLE=n`` makes the process send itself SIGTERM when the data pipeline
generates train example ``n`` (a preemption arriving mid-run, at a reproducible point).
"""

import os
import signal

from absl import app

from experiments import run
from experiments.data import pipeline, synthetic
from tests.experiments import tiny_model


def _sigterm_at(n: int):
    def example_rng(seed, split, index, *extra):
        if split == "train" and index == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return pipeline.example_rng(seed, split, index, *extra)

    synthetic.example_rng = example_rng


if __name__ == "__main__":
    tiny_model.install()
    if os.environ.get("TINY_SIGTERM_AT_EXAMPLE"):
        _sigterm_at(int(os.environ["TINY_SIGTERM_AT_EXAMPLE"]))
    app.run(run.main, flags_parser=run._parse_flags)
