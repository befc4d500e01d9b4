"""``python -m experiments.run`` with TinyLM installed: the subprocess entry of the runner tests."""

from absl import app

from experiments import run
from tests.experiments import tiny_model

if __name__ == "__main__":
    tiny_model.install()
    app.run(run.main)
