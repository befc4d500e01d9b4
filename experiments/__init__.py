"""Experiment harness: config modules, the trainer, data pipelines and checkpointing."""
