"""Tests of experiments.data.text and tokenizers (LM corpora, packing, metrics)."""
