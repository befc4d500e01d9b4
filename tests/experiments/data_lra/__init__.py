"""Tests of experiments.data.lra (TFDS builders from small release-format files, generators, pipelines)."""
